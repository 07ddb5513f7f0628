//! `ssegate reload -c FILE` with the real binary: an edit that adds a route
//! is served by a new daemon while the old process drains and exits;
//! event streams across the reload lose nothing (clients reconnect with
//! Last-Event-ID); a broken file, a new process that cannot start and a
//! missing running process are refused, leaving the old process serving
//! and no new process behind.
//!
//! The running process is `tests/common`'s foreground `ssegate run`, which
//! writes its pid to `server.pid_file`; the new one is a daemon, found
//! through the same file and killed at the end of each test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const EXIT_CONFIG: i32 = 64;

/// How long an old process may take to exit after SIGQUIT: pingora keeps
/// accepting for 5 s after the hand-over, then the test config's 2 s grace
/// period and 1 s shutdown timeout.
const OLD_EXIT: Duration = Duration::from_secs(20);

struct ReloadRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ssegate reload -c FILE` to completion. Its output goes to files in
/// `dir`: the new daemon inherits reload's stderr, and a pipe would stay
/// open for the daemon's life.
async fn reload(file: &Path, dir: &Path) -> ReloadRun {
    let out = dir.join("reload.out");
    let err = dir.join("reload.err");
    let status = within(
        "ssegate reload to exit",
        tokio::process::Command::new(bin())
            .arg("reload")
            .arg("-c")
            .arg(file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .unwrap();
    ReloadRun {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

fn pid_path(proxy: &Proxy) -> PathBuf {
    proxy.dir.0.join("ssegate.pid")
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid file {path:?} holds {text:?}"))
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Kills, when dropped, whatever process other than `old` the pid file
/// names: the daemon a reload started, however the test ends.
struct NewDaemon {
    pid_file: PathBuf,
    old: u32,
}

impl Drop for NewDaemon {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.pid_file) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != self.old {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Pids of the processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts that the old process is all there is: the pid file names it,
/// nothing waits on the upgrade socket, no other process runs the config.
fn assert_only_old(proxy: &Proxy) {
    let old = proxy.child.id();
    assert_eq!(
        read_pid(&pid_path(proxy)),
        old,
        "the pid file still names the old process"
    );
    assert!(
        !proxy.dir.0.join("upgrade.sock").exists(),
        "nothing waits on the upgrade socket"
    );
    let config = proxy.dir.0.join("ssegate.toml");
    assert_eq!(
        processes_mentioning(&config.display().to_string()),
        vec![old],
        "no new process left behind"
    );
}

/// A route section to `app` at `path`.
fn route(path: &str) -> String {
    format!("\n[[route]]\npath = \"{path}\"\nupstream = \"app\"\n")
}

fn app_config(upstream: std::net::SocketAddr, routes: &str) -> String {
    config_with(
        "2s",
        "",
        &format!("[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n{routes}"),
    )
}

/// `GET path` through `proxy` answered by `up` with 200 "ok"; the status.
async fn get_ok(proxy: std::net::SocketAddr, up: &mut Upstream, path: &str) -> u16 {
    let mut client = H1Client::connect(proxy).await;
    client.get(path, &[]).await;
    let mut conn = up.next().await;
    assert_eq!(conn.req.target, path);
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let head = client.response_head().await;
    assert_eq!(&client.body(&head).await[..], b"ok");
    head.status
}

/// `GET path` through `proxy`, for a path no route has: the status.
async fn get_unrouted(proxy: std::net::SocketAddr, path: &str) -> u16 {
    let mut client = H1Client::connect(proxy).await;
    client.get(path, &[]).await;
    client.response_head().await.status
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_an_added_route_in_a_new_daemon() {
    let mut up = Upstream::start().await;
    let mut old = Proxy::start(ProxyConfig::new(app_config(up.addr, &route("/a/")))).await;
    let old_pid = old.child.id();
    assert_eq!(
        read_pid(&pid_path(&old)),
        old_pid,
        "run writes its pid in the foreground"
    );
    let _reap = NewDaemon {
        pid_file: pid_path(&old),
        old: old_pid,
    };
    assert_eq!(
        get_unrouted(old.addr, "/b/x").await,
        404,
        "no /b/ route yet"
    );

    let file = old.dir.0.join("ssegate.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&route("/b/"));
    std::fs::write(&file, text).unwrap();
    let run = reload(&file, &old.dir.0).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);

    let new_pid = read_pid(&pid_path(&old));
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        run.stdout,
        format!(
            "reloaded: pid {old_pid} -> {new_pid} ({})\n",
            file.display()
        )
    );
    assert!(alive(new_pid), "the new daemon outlives reload");
    old.wait_exit_within(OLD_EXIT).await;

    // Only the new process is left to answer, reload long gone.
    assert_eq!(
        get_ok(old.addr, &mut up, "/b/x").await,
        200,
        "the added route"
    );
    assert_eq!(
        get_ok(old.addr, &mut up, "/a/x").await,
        200,
        "the old route"
    );
    assert!(alive(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_across_a_reload_lose_no_event() {
    const STREAMS: u64 = 20;
    let mut origin = BenchUpstream::start("20").await;
    let cfg = basic_config(
        origin.addr,
        "heartbeat = \"off\"\nshutdown_retry = \"200ms\"\nshutdown_retry_jitter = \"200ms\"",
    );
    let mut old = Proxy::start(ProxyConfig::new(cfg)).await;
    let _reap = NewDaemon {
        pid_file: pid_path(&old),
        old: old.child.id(),
    };

    // EventSource-like clients: on each end they come back with Last-Event-ID.
    let bench = tokio::process::Command::new(bin())
        .args(["bench", "--reconnect", "--json", "--streams"])
        .arg(STREAMS.to_string())
        .args(["--duration", "12s", "--url"])
        .arg(format!("http://{}/s", old.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    within("every stream to open at the origin", async {
        while origin_open_streams(&origin).await < STREAMS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let run = reload(&old.dir.0.join("ssegate.toml"), &old.dir.0).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    old.wait_exit_within(OLD_EXIT).await;

    let out = tokio::time::timeout(Duration::from_secs(30), bench.wait_with_output())
        .await
        .expect("the bench to end")
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let n = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert_eq!(n("streams_opened"), STREAMS, "{report}");
    assert_eq!(n("streams_failed"), 0, "{report}");
    assert_eq!((n("gaps"), n("duplicates")), (0, 0), "{report}");
    assert!(
        n("reconnections") >= STREAMS,
        "every stream moved to the new process: {report}"
    );
    assert_eq!(n("streams_open_at_end"), STREAMS, "{report}");
    assert!(n("events") > 0, "{report}");
    origin.kill().await;
}

/// Event streams the bench origin has open now (its `/_stats`).
async fn origin_open_streams(origin: &BenchUpstream) -> u64 {
    let mut client = H1Client::connect(origin.addr).await;
    client.get("/_stats", &[]).await;
    let head = client.response_head().await;
    let body = client.body(&head).await;
    let stats: Value = serde_json::from_slice(&body).unwrap();
    stats["streams"]["open"].as_u64().unwrap()
}

/// 1-based line and column of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_and_nothing_changes() {
    let mut up = Upstream::start().await;
    let mut cfg = ProxyConfig::new(app_config(up.addr, &route("/")));
    cfg.log = Some("info".into());
    let old = Proxy::start(cfg).await;

    let file = old.dir.0.join("ssegate.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n[limits]\nshed_retry = \"5 parsecs\"\n");
    text.push_str("\n[[route]]\npath = \"/b/\"\nupstream = \"nope\"\n");
    std::fs::write(&file, &text).unwrap();
    let run = reload(&file, &old.dir.0).await;
    assert_eq!(run.code, Some(EXIT_CONFIG), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "", "no success line");

    let name = file.display().to_string();
    let expected = [
        (position_of(&text, "\"5 parsecs\""), "limits.shed_retry"),
        (position_of(&text, "\"nope\""), "route[1].upstream"),
    ];
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "one line per error and a count:\n{}",
        run.stderr
    );
    for (line, ((l, c), key)) in lines.iter().zip(expected) {
        let prefix = format!("{name}:{l}:{c}: `{key}`: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
    }
    assert!(
        lines[2].starts_with(&format!("{name}: 2 error(s)")),
        "{}",
        lines[2]
    );

    assert_only_old(&old);
    assert_eq!(
        get_ok(old.addr, &mut up, "/x").await,
        200,
        "the old process serves"
    );
    assert!(
        !old.log_text().contains("SIGQUIT"),
        "the old process got no SIGQUIT:\n{}",
        old.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_serving() {
    let mut up = Upstream::start().await;
    let mut cfg = ProxyConfig::new(app_config(up.addr, &route("/")));
    cfg.log = Some("info".into());
    let old = Proxy::start(cfg).await;
    let _reap = NewDaemon {
        pid_file: pid_path(&old),
        old: old.child.id(),
    };

    // PEM that `check` accepts and rustls does not: the new process fails
    // while building its server, before it would take the sockets.
    let dir = &old.dir.0;
    std::fs::write(
        dir.join("bad-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let file = dir.join("ssegate.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.insert_str(
        0,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:{}\"\ntls = {{ cert = \"bad-cert.pem\", key = \"bad-key.pem\" }}\n\n",
            free_port()
        ),
    );
    std::fs::write(&file, text).unwrap();
    let check = std::process::Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "check accepts the file");

    let run = reload(&file, dir).await;
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "");
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ssegate reload: the new process exited")
            && last.ends_with("the running process was not signalled and serves on"),
        "{last:?}"
    );
    assert_only_old(&old);
    assert_eq!(
        get_ok(old.addr, &mut up, "/x").await,
        200,
        "the old process serves"
    );
    assert!(!old.log_text().contains("SIGQUIT"), "{}", old.log_text());
}

#[tokio::test]
async fn reload_without_a_running_process_says_so() {
    let dir = TempDir::new("reload-none");
    let pid = dir.0.join("ssegate.pid");
    let file = dir.0.join("ssegate.toml");
    let server = format!(
        "[server]\npid_file = {:?}\nupgrade_sock = {:?}",
        pid.display().to_string(),
        dir.0.join("upgrade.sock").display().to_string(),
    );
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:{}\"\n{}",
        free_port(),
        app_config("127.0.0.1:9".parse().unwrap(), &route("/")).replace("[server]", &server),
    );
    std::fs::write(&file, text).unwrap();
    let run = reload(&file, &dir.0).await;
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "cannot read the running process's pid from {}",
            pid.display()
        )),
        "{}",
        run.stderr
    );
    assert!(processes_mentioning(&file.display().to_string()).is_empty());

    // A pid file naming a process that is gone.
    std::fs::write(&pid, "999999999\n").unwrap();
    let run = reload(&file, &dir.0).await;
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("is not running"), "{}", run.stderr);
}

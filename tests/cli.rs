//! The command line as a user meets it: `ssegate check` on the shipped and on
//! broken configurations, `ssegate run` refusing a bad one without binding,
//! `--help` of every subcommand, and `ssegate demo` serving what its banner
//! promises, directly and behind a second proxy speaking h2c to it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const EXIT_CONFIG: i32 = 64;
const SSE: &str = "text/event-stream";

/// What the demo's `POST /chat` streams, token by token.
const CHAT_REPLY: &str = "Server-Sent Events pass through ssegate one chunk at a time, \
so every token reaches you the moment the upstream writes it.";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `ssegate ARGS` from the crate folder to completion, bounded by `WAIT`.
async fn ssegate(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(manifest_dir())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ssegate");
    within(
        &format!("ssegate {args:?} to exit"),
        child.wait_with_output(),
    )
    .await
    .expect("ssegate output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// 1-based line and column of the first `needle` at or after byte `from`.
fn position_of(haystack: &str, needle: &str, from: usize) -> (usize, usize) {
    let at = from + haystack[from..].find(needle).expect("needle in text");
    let before = &haystack[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

fn nothing_listens(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

// ---------------------------------------------------------------------------
// ssegate check

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_every_shipped_config_and_lists_its_listeners() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("conf"))
        .expect("conf/ folder")
        .map(|e| e.expect("conf/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected at least 2 conf/*.toml, found {files:?}"
    );
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let arg = format!("conf/{name}");
        let out = ssegate(&["check", "-c", &arg]).await;
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check {arg}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.starts_with(&format!("{arg}: OK\n")),
            "check {arg}: verdict line missing:\n{stdout}"
        );
        assert!(stderr.is_empty(), "check {arg} wrote to stderr:\n{stderr}");

        // Every [[listener]] address of the file, in the summary's listeners block.
        let table: toml::Table = std::fs::read_to_string(path)
            .unwrap()
            .parse()
            .expect("shipped config is TOML");
        let addresses: Vec<SocketAddr> = table["listener"]
            .as_array()
            .expect("[[listener]] array")
            .iter()
            .map(|l| l["address"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(!addresses.is_empty(), "{arg} has no listener");
        let block: Vec<&str> = stdout
            .lines()
            .skip_while(|l| *l != "listeners:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert_eq!(
            block.len(),
            addresses.len(),
            "check {arg}: listeners block {block:?} vs {addresses:?}"
        );
        for (line, address) in block.iter().zip(&addresses) {
            assert!(
                line.starts_with(&format!("  {address}  ")),
                "check {arg}: {line:?} should list {address}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_error_with_file_line_column_and_key() {
    let dir = TempDir::new("cli-check");
    let path = dir.0.join("bad.toml");
    let config = r#"[[listener]]
address = "127.0.0.1:18080"

[[listener]]
address = "127.0.0.1:18080"

[stream]
heartbeat = "5 parsecs"

[[upstream]]
name = "app"
servers = ["127.0.0.1:3000"]

[[route]]
path = "/"
upstream = "nope"
"#;
    std::fs::write(&path, config).unwrap();
    let file = path.display().to_string();
    let out = ssegate(&["check", "-c", &file]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(
        !text(&out.stdout).contains("OK"),
        "a bad config must not be called OK: {:?}",
        text(&out.stdout)
    );

    let second_listener = config.rfind("[[listener]]").unwrap();
    let duplicate = position_of(config, "\"127.0.0.1:18080\"", second_listener);
    let heartbeat = position_of(config, "\"5 parsecs\"", 0);
    let upstream = position_of(config, "\"nope\"", 0);
    let expected = [
        (
            duplicate,
            "listener[1].address",
            "127.0.0.1:18080 is already used by listener[0]",
        ),
        (
            heartbeat,
            "stream.heartbeat",
            "invalid duration \"5 parsecs\"",
        ),
        (upstream, "route[0].upstream", "unknown upstream \"nope\""),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len() + 1,
        "one line per error plus a count:\n{stderr}"
    );
    for (line, ((l, c), key, message)) in lines.iter().zip(expected) {
        let prefix = format!("{file}:{l}:{c}: `{key}`: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.contains(message), "{line:?} lacks {message:?}");
    }
    assert_eq!(lines[3], format!("{file}: 3 error(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_missing_file_names_it() {
    let dir = TempDir::new("cli-missing");
    let path = dir.0.join("absent.toml");
    let file = path.display().to_string();
    let out = ssegate(&["check", "-c", &file]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(text(&out.stdout).is_empty(), "{:?}", text(&out.stdout));
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("{file}: cannot read config file")),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some(format!("{file}: 1 error(s)").as_str())
    );
}

// ---------------------------------------------------------------------------
// ssegate run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_config_exits_64_without_binding() {
    let dir = TempDir::new("cli-run");
    for daemon in [false, true] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let path = dir.0.join(format!("bad-{daemon}.toml"));
        let config = format!(
            r#"[server]
pid_file = "{pid}"
upgrade_sock = "{sock}"

[[listener]]
address = "{addr}"

[[upstream]]
name = "app"
servers = ["127.0.0.1:3000"]

[[route]]
path = "/"
upstream = "missing"
"#,
            pid = dir.0.join("ssegate.pid").display(),
            sock = dir.0.join("upgrade.sock").display(),
        );
        std::fs::write(&path, &config).unwrap();
        let file = path.display().to_string();
        let mut args = vec!["run", "-c", &file];
        if daemon {
            args.push("--daemon");
        }
        let out = ssegate(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_CONFIG),
            "{args:?}\nstderr:\n{stderr}"
        );
        let (l, c) = position_of(&config, "\"missing\"", 0);
        assert!(
            stderr.contains(&format!("{file}:{l}:{c}: `route[0].upstream`: ")),
            "{args:?}\nstderr:\n{stderr}"
        );
        assert!(
            nothing_listens(addr),
            "{args:?}: something listens on {addr}"
        );
        assert!(
            !dir.0.join("ssegate.pid").exists(),
            "{args:?} wrote a pid file"
        );
    }

    let missing = dir.0.join("absent.toml").display().to_string();
    let out = ssegate(&["run", "-c", &missing]).await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    assert!(text(&out.stderr).contains(&missing), "{:?}", out.stderr);
}

// ---------------------------------------------------------------------------
// --help

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_of_every_subcommand_lists_its_flags() {
    let cases: [(&[&str], &[&str], &[&str]); 5] = [
        (&["--help"], &["run", "check", "reload", "demo"], &[]),
        (
            &["run", "--help"],
            &["-c, --config", "-d, --daemon", "-u, --upgrade"],
            &["--listen", "--tick-ms"],
        ),
        (
            &["check", "--help"],
            &["-c, --config"],
            &["--daemon", "--upgrade", "--listen"],
        ),
        (
            &["reload", "--help"],
            &[
                "-c, --config",
                "--timeout",
                "server.pid_file",
                "reloaded: pid OLD -> NEW (FILE)",
            ],
            &["--listen", "--tick-ms"],
        ),
        (
            &["demo", "--help"],
            &["--listen", "--upstream-listen", "--tick-ms"],
            &["--config", "--daemon", "--upgrade"],
        ),
    ];
    for (args, present, absent) in cases {
        let out = ssegate(args).await;
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let usage = match args {
            [sub, "--help"] => format!("Usage: ssegate {sub} "),
            _ => "Usage: ssegate ".to_string(),
        };
        assert!(
            stdout.contains(&usage),
            "{args:?} lacks {usage:?}:\n{stdout}"
        );
        for flag in present {
            assert!(stdout.contains(flag), "{args:?} lacks {flag:?}:\n{stdout}");
        }
        for flag in absent {
            assert!(
                !stdout.contains(flag),
                "{args:?} mentions {flag:?}:\n{stdout}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// ssegate demo

/// A running `ssegate demo`, killed on drop; its stdout lines arrive on a channel.
struct Demo {
    child: Child,
    listen: SocketAddr,
    tls: SocketAddr,
    upstream: SocketAddr,
    stdout: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    async fn start(tick_ms: u64) -> Demo {
        for _attempt in 0..5 {
            if let Some(demo) = Self::try_start(tick_ms).await {
                return demo;
            }
        }
        panic!("ssegate demo did not start");
    }

    /// `None` when the process exited early (a port taken meanwhile).
    async fn try_start(tick_ms: u64) -> Option<Demo> {
        let p1 = free_port();
        let p2 = loop {
            let p = free_port();
            if p != p1 {
                break p;
            }
        };
        let p3 = loop {
            let p = free_port();
            if p != p1 && p != p2 {
                break p;
            }
        };
        let listen: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
        let upstream: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{p3}").parse().unwrap();
        let mut child = Command::new(bin())
            .arg("demo")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--tls-listen")
            .arg(tls.to_string())
            .arg("--upstream-listen")
            .arg(upstream.to_string())
            .arg("--tick-ms")
            .arg(tick_ms.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ssegate demo");
        let (tx, rx) = mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        // Drains stdout to the end so the demo never blocks writing it.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut demo = Demo {
            child,
            listen,
            tls,
            upstream,
            stdout: rx,
            seen: Vec::new(),
        };
        let ready = within("ssegate demo to listen", async {
            loop {
                if let Ok(Some(_)) = demo.child.try_wait() {
                    return false;
                }
                if TcpStream::connect(listen).await.is_ok()
                    && TcpStream::connect(upstream).await.is_ok()
                    && TcpStream::connect(tls).await.is_ok()
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        ready.then_some(demo)
    }

    /// The first stdout line containing `needle`, waiting for it if need be.
    async fn stdout_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let Demo { stdout, seen, .. } = self;
        within(&format!("demo stdout line with {needle:?}"), async {
            loop {
                let Some(line) = stdout.recv().await else {
                    panic!("demo stdout closed; lines so far: {seen:#?}");
                };
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
    }
}

#[derive(Debug, Default)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

/// The complete events in `body` (blocks ended by a blank line); blocks of
/// comments only (heartbeats, the chat's intro) are left out.
fn events(body: &[u8]) -> Vec<SseEvent> {
    let text = std::str::from_utf8(body).expect("UTF-8 event stream");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        let mut event = SseEvent::default();
        let mut fields = 0;
        for line in block.split('\n').filter(|l| !l.starts_with(':')) {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            fields += 1;
            match field {
                "id" => event.id = Some(value),
                "event" => event.event = Some(value),
                "data" => event.data.push(value),
                other => panic!("unexpected field {other:?} in {block:?}"),
            }
        }
        if fields > 0 {
            out.push(event);
        }
    }
    out
}

/// Reads chunks until `body` holds at least `n` events; returns them.
async fn read_events<S>(client: &mut H1Client<S>, body: &mut Vec<u8>, n: usize) -> Vec<SseEvent>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let got = events(body);
        if got.len() >= n {
            return got;
        }
        match client.next_chunk().await {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => panic!(
                "stream ended after {} events: {:?}",
                got.len(),
                String::from_utf8_lossy(body)
            ),
        }
    }
}

/// Asserts that `events` are demo ticks numbered `first`, `first + 1`, ...
#[track_caller]
fn assert_ticks(events: &[SseEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        let n = first + i as u64;
        assert_eq!(e.id.as_deref(), Some(n.to_string().as_str()), "{e:?}");
        assert_eq!(e.event.as_deref(), Some("tick"), "{e:?}");
        assert_eq!(e.data.len(), 1, "{e:?}");
        let prefix = format!("{{\"n\":{n},\"unix_ms\":");
        let millis = e.data[0]
            .strip_prefix(&prefix)
            .and_then(|d| d.strip_suffix('}'))
            .unwrap_or_else(|| panic!("tick data {:?}", e.data[0]));
        assert!(millis.parse::<u128>().is_ok(), "tick data {:?}", e.data[0]);
    }
}

#[track_caller]
fn assert_event_stream_head(head: &H1Response) {
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some(SSE), "{head:?}");
    assert_eq!(head.header("cache-control"), Some("no-cache"), "{head:?}");
    assert_eq!(head.header("x-accel-buffering"), Some("no"), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_what_its_banner_promises() {
    let mut demo = Demo::start(50).await;
    let base = format!("http://{}", demo.listen);

    // The banner: the proxy URL and a curl line to try.
    let first = demo.stdout_line("proxy on").await;
    assert!(
        first.contains(&format!("proxy on {base},")),
        "banner {first:?} lacks {base}"
    );
    assert!(
        first.contains(&format!("http://{}", demo.upstream)),
        "banner {first:?} lacks the upstream"
    );
    let curl = demo.stdout_line("curl -N").await;
    assert!(
        curl.contains(&format!("curl -N {base}/ticks")),
        "curl line {curl:?}"
    );

    // The TLS listener, with the repository's certificate: the page over
    // HTTP/2, and the ticks.
    let h2 = demo.stdout_line("over HTTP/2").await;
    assert!(h2.contains(&format!("https://{}/", demo.tls)), "{h2:?}");
    let cert = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/certs/cert.pem"))
        .unwrap();
    let mut h2 = h2_tls_connect(demo.tls, &cert).await;
    let (parts, mut stream) = h2_get(&mut h2, "127.0.0.1", "/ticks").await;
    assert_eq!(parts.status, 200);
    let mut got = Vec::new();
    h2_read_until(&mut stream, &mut got, b"id: 2\n").await;
    assert!(got.starts_with(b"id: 1\nevent: tick\n"), "{got:?}");

    // GET /ticks: ids 1, 2, 3 in order, the first event byte for byte.
    let mut client = H1Client::connect(demo.listen).await;
    client.get("/ticks", &[("accept", SSE)]).await;
    let head = client.response_head().await;
    assert_event_stream_head(&head);
    let mut body = Vec::new();
    let got = read_events(&mut client, &mut body, 3).await;
    assert!(
        body.starts_with(b"id: 1\nevent: tick\ndata: {\"n\":1,\"unix_ms\":"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert_ticks(&got[..3], 1);
    drop(client);

    // Resuming: Last-Event-ID 41 starts at 42.
    let mut client = H1Client::connect(demo.listen).await;
    client
        .get("/ticks", &[("accept", SSE), ("last-event-id", "41")])
        .await;
    assert_event_stream_head(&client.response_head().await);
    let mut body = Vec::new();
    let got = read_events(&mut client, &mut body, 2).await;
    assert_ticks(&got[..2], 42);
    drop(client);

    // POST /chat: the prompt arrives, tokens stream, [DONE], then the last chunk.
    let prompt = br#"{"prompt":"hi there"}"#;
    let mut client = H1Client::connect(demo.listen).await;
    let mut request = format!(
        "POST /chat HTTP/1.1\r\nhost: test\r\naccept: {SSE}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        prompt.len()
    )
    .into_bytes();
    request.extend_from_slice(prompt);
    client.send(&request).await;
    let head = client.response_head().await;
    assert_event_stream_head(&head);
    let mut body = Vec::new();
    client.read_until(&mut body, b"data: [DONE]\n\n").await;
    assert_eq!(client.next_chunk().await, None, "no terminating chunk");
    let intro = format!(": prompt of {} bytes received\n\n", prompt.len());
    assert!(
        body.starts_with(intro.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let got = events(&body);
    let (done, tokens) = got.split_last().unwrap();
    assert_eq!(done.data, ["[DONE]"]);
    assert!(tokens.len() >= 5, "only {} tokens", tokens.len());
    let reply: String = tokens
        .iter()
        .map(|e| {
            assert_eq!(e.data.len(), 1, "{e:?}");
            e.data[0]
                .strip_prefix("{\"token\":\"")
                .and_then(|d| d.strip_suffix("\"}"))
                .unwrap_or_else(|| panic!("token event {e:?}"))
                .replace("\\\"", "\"")
        })
        .collect();
    assert_eq!(reply, CHAT_REPLY);
    drop(client);

    // GET /idle: the event-stream head arrives before any event does.
    let mut client = H1Client::connect(demo.listen).await;
    client.get("/idle", &[("accept", SSE)]).await;
    assert_event_stream_head(&client.response_head().await);
    drop(client);

    // The banner's h2c line: the same ticks over HTTP/2 prior knowledge.
    let mut h2 = h2c_connect(demo.listen).await;
    let (parts, mut stream) = h2_get(&mut h2, &demo.listen.to_string(), "/ticks").await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], SSE);
    let mut got = Vec::new();
    h2_read_until(&mut stream, &mut got, b"id: 2\n").await;
    assert!(got.starts_with(b"id: 1\nevent: tick\n"), "{got:?}");
}

/// A TCP relay to `target` that records the first bytes of every connection.
async fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let mut first = vec![0u8; 24];
                let mut n = 0;
                while n < first.len() {
                    match inbound.read(&mut first[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(m) => n += m,
                    }
                }
                first.truncate(n);
                record.lock().unwrap().push(first.clone());
                if outbound.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, seen)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `ssegate demo`, and a second proxy in front of its upstream with
/// `protocol = "h2c"`, through a relay that records what the proxy sends.
async fn h2c_chain() -> (Demo, Proxy, Arc<Mutex<Vec<Vec<u8>>>>) {
    let demo = Demo::start(50).await;
    let (relay, first_bytes) = recording_relay(demo.upstream).await;
    let plain = basic_config(relay, "");
    let servers = format!("servers = [\"{relay}\"]");
    assert!(plain.contains(&servers), "basic_config format changed");
    let config = plain.replace(&servers, &format!("{servers}\nprotocol = \"h2c\""));
    let proxy = Proxy::start(ProxyConfig::new(config)).await;
    (demo, proxy, first_bytes)
}

/// Every upstream connection the relay saw began with the HTTP/2 preface.
#[track_caller]
fn assert_h2_preface(first_bytes: &Mutex<Vec<Vec<u8>>>) {
    let seen = first_bytes.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "no upstream connection went through the relay"
    );
    for first in &seen {
        assert_eq!(
            first.as_slice(),
            H2_PREFACE,
            "upstream connection did not start with the h2 preface"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_through_h2c_upstream() {
    let (_demo, proxy, first_bytes) = h2c_chain().await;

    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/ticks", &[("accept", SSE)]).await;
    let head = client.response_head().await;
    assert_event_stream_head(&head);
    let mut body = Vec::new();
    let got = read_events(&mut client, &mut body, 2).await;
    assert_ticks(&got[..2], 1);
    drop(client);

    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/", &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    let index = client.body(&head).await;
    assert!(
        index.starts_with(b"ssegate demo upstream\nGET  /ticks"),
        "{:?}",
        String::from_utf8_lossy(&index)
    );
    assert_h2_preface(&first_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_through_h2c_upstream() {
    let (_demo, proxy, first_bytes) = h2c_chain().await;
    let authority = proxy.addr.to_string();
    let mut h2 = h2c_connect(proxy.addr).await;

    let (parts, mut stream) = h2_get(&mut h2, &authority, "/ticks").await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], SSE);
    assert_eq!(parts.headers["cache-control"], "no-cache");
    assert_eq!(parts.headers["x-accel-buffering"], "no");
    let mut body = Vec::new();
    h2_read_until(&mut stream, &mut body, b"id: 2\n").await;
    h2_read_until(&mut stream, &mut body, b"\n\nid: 3\n").await;
    assert_ticks(&events(&body)[..2], 1);
    drop(stream);

    let (parts, mut stream) = h2_get(&mut h2, &authority, "/").await;
    assert_eq!(parts.status, 200);
    let mut index = Vec::new();
    h2_read_until(&mut stream, &mut index, b"POST /chat").await;
    assert!(
        index.starts_with(b"ssegate demo upstream\nGET  /ticks"),
        "{:?}",
        String::from_utf8_lossy(&index)
    );
    assert_h2_preface(&first_bytes);
}

//! The two pages a person opens, in a real browser: headless Chromium
//! (Debian's `chromium`) driven by playwright-core from the scripts in
//! `tests/browser/` (`./dev setup` installs all three).
//!
//! - the admin status page follows the number of open streams the test
//!   holds, without a reload;
//! - the demo page, through `ssegate demo` itself and through a TLS
//!   listener (HTTP/2), shows its streams at work.
//!
//! Each driver fails on any console error of the page and saves a
//! screenshot under `target/screenshots/`; its last stdout line is a JSON
//! result, which is asserted here. A missing Node.js, Chromium or
//! playwright-core fails the test with what to run, never skips it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// One browser at a time: two cores shared by everything.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound for one driver run (its own waits are bounded at 15 s each).
const DRIVER_WAIT: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// Node.js, Chromium and playwright-core, or a panic saying how to get them.
/// `npm ci` runs here when only node_modules is missing.
async fn prerequisites() {
    let node = Command::new("node").arg("--version").output().await;
    if !node.is_ok_and(|o| o.status.success()) {
        panic!("browser tests need Node.js (`node`): run ./dev setup (apt-get install nodejs npm)");
    }
    if !chromium().exists() {
        panic!(
            "browser tests need Chromium at {} (or $CHROMIUM): run ./dev setup (apt-get install chromium)",
            chromium().display()
        );
    }
    let dir = browser_dir();
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .await;
        assert!(
            status.is_ok_and(|s| s.success()),
            "npm ci in {} failed: run ./dev setup",
            dir.display()
        );
    }
}

/// Where a test's screenshot goes; an old one is removed first.
fn screenshot(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    path
}

#[track_caller]
fn assert_screenshot(path: &Path) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank 1280x900 page compresses to a few KiB; a drawn one does not.
    assert!(png.len() > 20_000, "{} bytes: a blank page?", png.len());
}

/// A running driver: its JSON lines as they come.
struct Driver {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Driver {
    fn start(script: &str, args: &[&str]) -> Driver {
        let mut child = Command::new("node")
            .arg(browser_dir().join(script))
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("piped stdout");
        Driver {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next JSON line; a driver's `{"error": ...}` fails the test.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(DRIVER_WAIT, self.lines.next_line())
            .await
            .expect("the browser driver hung")
            .expect("driver stdout")
            .expect("the driver exited without a result");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if let Some(e) = v.get("error") {
            panic!("browser driver failed: {e}; {v}");
        }
        v
    }

    /// The final line, and a successful exit.
    async fn result(mut self) -> Value {
        let v = self.next().await;
        let status = tokio::time::timeout(DRIVER_WAIT, self.child.wait())
            .await
            .expect("the driver did not exit")
            .expect("driver status");
        assert!(status.success(), "driver exited {status}: {v}");
        assert_eq!(v["ok"], true, "{v}");
        v
    }
}

/// An event stream through the proxy, its head read.
async fn open_stream(addr: SocketAddr) -> H1Client<tokio::net::TcpStream> {
    let mut client = H1Client::connect(addr).await;
    client.get("/", &[("accept", "text/event-stream")]).await;
    assert_eq!(client.response_head().await.status, 200);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_follows_the_open_streams() {
    let _one = BROWSER.lock().await;
    prerequisites().await;
    let upstream = BenchUpstream::start("5").await;
    let mut cfg = ProxyConfig::new(basic_config(upstream.addr, ""));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let url = format!("http://{}/", proxy.admin_addr.expect("admin"));

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(open_stream(proxy.addr).await);
    }
    let shot = screenshot("status");
    let mut driver = Driver::start("status.mjs", &[&url, shot.to_str().unwrap(), "3", "1", "0"]);
    assert_eq!(driver.next().await["seen"], 3);
    clients.truncate(1);
    assert_eq!(driver.next().await["seen"], 1);
    clients.clear();
    assert_eq!(driver.next().await["seen"], 0);
    let result = driver.result().await;
    assert_eq!(result["streams"], 0, "{result}");
    assert_eq!(result["routes"], 1, "{result}");
    assert_eq!(result["charts"], 2, "two sparklines a route: {result}");
    assert_eq!(result["upstreams"], 1, "{result}");
    assert_eq!(
        result["listeners"], 2,
        "the proxy's and the admin's: {result}"
    );
    assert_screenshot(&shot);
}

/// `ssegate demo` on free ports, its stdout read line by line.
struct Demo {
    _child: Child,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Demo {
    async fn start() -> Demo {
        for _attempt in 0..5 {
            let listen = format!("127.0.0.1:{}", free_port());
            let tls = format!("127.0.0.1:{}", free_port());
            let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut child = Command::new(bin())
                .args([
                    "demo",
                    "--listen",
                    &listen,
                    "--tls-listen",
                    &tls,
                    "--upstream-listen",
                ])
                .arg(upstream.to_string())
                .args(["--tick-ms", "300"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn ssegate demo");
            let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
            let up = within("ssegate demo to listen", async {
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        return false;
                    }
                    if tokio::net::TcpStream::connect(&listen).await.is_ok()
                        && tokio::net::TcpStream::connect(&tls).await.is_ok()
                        && tokio::net::TcpStream::connect(upstream).await.is_ok()
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if up {
                return Demo {
                    _child: child,
                    stdout,
                };
            }
        }
        panic!("ssegate demo did not start");
    }

    /// The HTTP/2 URL the demo's banner gives (its TLS listener).
    async fn h2_url(&mut self) -> String {
        within("the demo's HTTP/2 line", async {
            loop {
                let line = self
                    .stdout
                    .next_line()
                    .await
                    .unwrap()
                    .expect("demo stdout closed");
                if let Some(rest) = line.trim().strip_prefix("over HTTP/2:") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    return url.to_string();
                }
            }
        })
        .await
    }

    /// The URL the demo tells a person to open in a browser.
    async fn browser_url(&mut self) -> String {
        within("the demo's browser line", async {
            loop {
                let line = self
                    .stdout
                    .next_line()
                    .await
                    .unwrap()
                    .expect("demo stdout closed");
                if let Some(url) = line.trim().strip_prefix("open in a browser: ") {
                    return url.to_string();
                }
            }
        })
        .await
    }
}

/// The whole reply of the demo's `/chat`, as its tokens add up.
const REPLY: &str = "Server-Sent Events pass through ssegate one chunk at a time, \
so every token reaches you the moment the upstream writes it.";

#[track_caller]
fn assert_demo_result(result: &Value) {
    let (first, later) = (&result["first_id"], &result["later_id"]);
    assert!(first.as_u64() >= Some(1), "{result}");
    assert!(later.as_u64() > first.as_u64(), "the id changes: {result}");
    let heartbeat = result["heartbeat"].as_str().unwrap_or_default();
    assert!(heartbeat.contains("\":"), "a comment line: {result}");
    assert_eq!(result["reply"], REPLY, "{result}");
    let partial = result["partial_reply"].as_str().unwrap_or_default();
    assert!(
        !partial.is_empty() && partial.len() < REPLY.len(),
        "seen before the reply was whole: {result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_chromium_through_ssegate_demo() {
    let _one = BROWSER.lock().await;
    prerequisites().await;
    let mut demo = Demo::start().await;
    let url = demo.browser_url().await;
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );

    let shot = screenshot("demo");
    // HTTP/1.1: the browser's six connections a host bound the 50.
    let result = Driver::start("demo.mjs", &[&url, shot.to_str().unwrap(), "1"])
        .result()
        .await;
    assert_demo_result(&result);
    assert_eq!(result["protocol"], "http/1.1", "{result}");
    let live = result["many_live"].as_u64().unwrap_or(0);
    assert!((1..=6).contains(&live), "{result}");
    assert_screenshot(&shot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_on_a_tls_listener_opens_50_event_sources_over_http2() {
    let _one = BROWSER.lock().await;
    prerequisites().await;
    // The demo's own TLS listener, as its banner tells a person to open it.
    let mut demo = Demo::start().await;
    let url = demo.h2_url().await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let shot = screenshot("demo-h2");
    let result = Driver::start("demo.mjs", &[&url, shot.to_str().unwrap(), "50"])
        .result()
        .await;
    assert_demo_result(&result);
    assert_eq!(result["protocol"], "h2", "{result}");
    assert_eq!(result["many_live"], 50, "{result}");
    assert_screenshot(&shot);
}

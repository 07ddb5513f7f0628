//! The status page's endpoints on the admin listener, end to end: the real
//! binary in front of `ssegate bench upstream`, streams opened and closed by
//! the test, and `/status.json`, `/status/events` and `/` read over raw
//! HTTP/1.1.
//!
//! The sampler publishes once a second, so "the number follows" is a poll
//! of `/status.json` (bounded by `WAIT`) until it shows what the test did;
//! the browser's view of the same is `tests/browser.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A GET on the admin listener: status, content type and body.
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    let mut client = H1Client::connect(addr).await;
    client.get(path, &[]).await;
    let head = client.response_head().await;
    let body = client.body(&head).await;
    let content_type = head.header("content-type").map(str::to_string);
    (
        head.status,
        content_type,
        String::from_utf8(body.to_vec()).expect("utf-8 body"),
    )
}

async fn status_json(admin: SocketAddr) -> Value {
    let (status, content_type, body) = admin_get(admin, "/status.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    serde_json::from_str(&body).expect("status.json is JSON")
}

/// Polls `/status.json` until `done` holds, failing with the last one after `WAIT`.
async fn status_until(admin: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status_json(admin).await;
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; last status:\n{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_streams(s: &Value) -> i64 {
    s["routes"][0]["streams_open"]
        .as_i64()
        .expect("streams_open")
}

/// A proxy with an admin listener in front of a bench upstream sending
/// `rate` events a second on each stream.
async fn proxy_and_upstream(rate: &str) -> (Proxy, BenchUpstream) {
    let upstream = BenchUpstream::start(rate).await;
    let mut cfg = ProxyConfig::new(basic_config(upstream.addr, ""));
    cfg.admin = true;
    (Proxy::start(cfg).await, upstream)
}

/// An event stream through the proxy, its head and first event read.
async fn open_stream(proxy: &Proxy) -> H1Client<tokio::net::TcpStream> {
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/", &[("accept", "text/event-stream")]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    client.read_until(&mut body, b"\n\n").await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_open_streams_and_follows_a_close() {
    let (proxy, upstream) = proxy_and_upstream("20").await;
    let admin = proxy.admin_addr.expect("admin");

    let idle = status_json(admin).await;
    assert_eq!(open_streams(&idle), 0);
    assert_eq!(idle["routes"][0]["route"], "/");
    assert_eq!(idle["routes"][0]["upstream"], "app");
    assert_eq!(idle["listeners"][0]["address"], proxy.addr.to_string());
    assert_eq!(idle["listeners"][0]["scheme"], "http");
    assert_eq!(idle["admin"], admin.to_string());
    let server = &idle["upstreams"][0]["servers"][0];
    assert_eq!(server["address"], upstream.addr.to_string());
    // Every server has a health state (passive checks are on by default).
    assert_eq!(server["up"], true, "{server}");
    assert_eq!(server["open_connections"], 0, "{server}");
    assert!(idle["process"]["rss_bytes"].as_u64().unwrap_or(0) > 1 << 20);
    assert!(idle["process"]["open_fds"].as_u64().unwrap_or(0) >= 3);
    assert_eq!(idle["process"]["pid"], proxy.child.id());
    assert!(idle["history"]["unix_ms"]
        .as_array()
        .is_some_and(|h| !h.is_empty()));

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(open_stream(&proxy).await);
    }
    // Events are counted as they pass, not when the streams end: the
    // rate shows while all three are still open.
    let live = status_until(admin, "3 open streams with events/s", |s| {
        open_streams(s) == 3 && s["routes"][0]["events_per_second"].as_f64() > Some(0.0)
    })
    .await;
    let route = &live["routes"][0];
    assert!(route["events_total"].as_u64() > Some(0), "{route}");
    assert!(route["bytes_per_second"].as_f64() > Some(0.0), "{route}");
    // Each stream holds its own upstream connection.
    let server = &live["upstreams"][0]["servers"][0];
    assert_eq!(server["open_connections"], 3, "{server}");
    let chart = &live["history"]["routes"]["/"]["streams_open"];
    assert_eq!(
        chart.as_array().and_then(|c| c.last()),
        Some(&Value::from(3))
    );

    drop(clients.pop());
    let after = status_until(admin, "2 open streams", |s| open_streams(s) == 2).await;
    assert_eq!(after["routes"][0]["ends"]["client_gone"], 1, "{after:#}");
    drop(clients);
    status_until(
        admin,
        "no open stream and no upstream connection in use",
        |s| open_streams(s) == 0 && s["upstreams"][0]["servers"][0]["open_connections"] == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_push_a_snapshot_every_second() {
    let (proxy, _upstream) = proxy_and_upstream("5").await;
    let admin = proxy.admin_addr.expect("admin");
    let _stream = open_stream(&proxy).await;

    let mut client = H1Client::connect(admin).await;
    client.get("/status/events", &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-store"));

    let mut body = Vec::new();
    let mut snapshots = Vec::new();
    let start = Instant::now();
    while snapshots.len() < 3 {
        client.read_until(&mut body, b"\n\n").await;
        let end = find(&body, b"\n\n").expect("an event") + 2;
        let event = String::from_utf8(body.drain(..end).collect()).expect("utf-8");
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data line in {event:?}"));
        assert!(event.contains("event: snapshot\n"), "{event:?}");
        assert_eq!(
            event.starts_with("retry: 2000\n"),
            snapshots.is_empty(),
            "retry: on the first event only: {event:?}"
        );
        snapshots.push(serde_json::from_str::<Value>(data).expect("JSON data"));
    }
    // One a second: three events take about two seconds, not none.
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert!(
        snapshots[0]["history"].is_object(),
        "the first carries history"
    );
    assert!(snapshots[1].get("history").is_none());
    let times: Vec<u64> = snapshots
        .iter()
        .map(|s| s["unix_ms"].as_u64().expect("unix_ms"))
        .collect();
    assert!(times[0] < times[1] && times[1] < times[2], "{times:?}");
    // The first may predate the stream (it is the latest sample when the
    // request came); the last is a second later.
    assert_eq!(open_streams(&snapshots[2]), 1, "{:#}", snapshots[2]);
    assert_eq!(snapshots[2]["routes"][0]["ends"]["client_gone"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_one_self_contained_html_file() {
    let (proxy, _upstream) = proxy_and_upstream("1").await;
    let admin = proxy.admin_addr.expect("admin");
    let (status, content_type, page) = admin_get(admin, "/").await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
    assert!(page.starts_with("<!doctype html>"), "{page:.60}");
    assert!(page.contains("new EventSource(\"status/events\")"));
    let lower = page.to_ascii_lowercase();
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "url(http",
        "@import",
        "<script src",
        "rel=\"stylesheet\"",
    ] {
        assert!(!lower.contains(external), "the page loads {external:?}");
    }
    // Read-only: the page sends nothing back.
    assert!(!lower.contains("method: \"post\"") && !lower.contains("<form"));
    let (status, _, _) = admin_get(admin, "/nothing-here").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_streams_are_capped_at_sixteen() {
    let (proxy, _upstream) = proxy_and_upstream("1").await;
    let admin = proxy.admin_addr.expect("admin");
    let mut viewers = Vec::new();
    for _ in 0..16 {
        let mut client = H1Client::connect(admin).await;
        client.get("/status/events", &[]).await;
        let head = client.response_head().await;
        assert_eq!(head.status, 200);
        viewers.push(client);
    }
    let (status, _, body) = admin_get(admin, "/status/events").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "too many status streams\n");
    // The other admin endpoints are not held up by the cap.
    let (status, _, _) = admin_get(admin, "/status.json").await;
    assert_eq!(status, 200);

    drop(viewers.pop());
    // The closed stream's place is freed once the admin notices the close.
    within("a freed place for a status stream", async {
        loop {
            let mut client = H1Client::connect(admin).await;
            client.get("/status/events", &[]).await;
            if client.response_head().await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

//! Metrics end to end: the real binary with an `[admin]` listener, known
//! traffic through the proxy, and the `/metrics` scrape before and after,
//! parsed from the Prometheus text format and compared by exact deltas.
//!
//! Counters are recorded when an exchange is over, which can be just after
//! the client has its last byte; so "after" is a scrape polled (bounded by
//! `WAIT`) until the open-streams gauge is back to zero and every expected
//! response is counted, then every series is checked exactly on one final
//! scrape.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::scrape::{series, Scrape};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SSE: &str = "text/event-stream";
const HEARTBEAT: &[u8] = b": hb\n\n";
const EVENTS: &str = "/events/";
const API: &str = "api.example.com/api/";

// ---------------------------------------------------------------------------
// Scraping

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

async fn scrape(proxy: &Proxy) -> Scrape {
    let addr = proxy.admin_addr.expect("admin listener configured");
    let (status, content_type, body) = admin_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    Scrape::parse(&body)
}

/// Scrapes until `done` holds, failing with the last scrape after `WAIT`.
async fn scrape_until(proxy: &Proxy, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let every = Duration::from_millis(20);
    poll_until(what, WAIT, every, || scrape(proxy), done).await
}

/// A series (name and labels) and how much it is expected to have moved.
type Delta<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Asserts that each series moved by exactly its delta.
#[track_caller]
fn assert_deltas(before: &Scrape, after: &Scrape, expected: &[Delta]) {
    for (name, labels, delta) in expected {
        let got = after.get(name, labels) - before.get(name, labels);
        assert_eq!(
            got,
            *delta,
            "{} moved by {got}, expected {delta}",
            series(name, labels)
        );
    }
}

// ---------------------------------------------------------------------------
// Traffic helpers

/// A free loopback address with nothing listening on it.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// An upstream answering every request `200 ok` and closing the connection.
async fn ok_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&got, b"\r\n\r\n").is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// One request on a fresh connection; returns the status.
async fn request(proxy: &Proxy, path: &str, host: &str) -> u16 {
    let mut client = H1Client::connect(proxy.addr).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await;
    let head = client.response_head().await;
    client.body(&head).await;
    head.status
}

/// Removes every `HEARTBEAT` from `body`, returning the rest and how many there were.
fn strip_heartbeats(body: &[u8]) -> (Vec<u8>, usize) {
    let mut rest = Vec::new();
    let mut count = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(HEARTBEAT) {
            count += 1;
            i += HEARTBEAT.len();
        } else {
            rest.push(body[i]);
            i += 1;
        }
    }
    (rest, count)
}

fn config(ok: SocketAddr, streams: SocketAddr, dead: SocketAddr, slow: SocketAddr) -> String {
    config_with(
        "1s",
        "heartbeat = \"100ms\"\nheartbeat_text = \": hb\\n\\n\"",
        &format!(
            r#"
[[upstream]]
name = "app"
servers = ["{ok}"]

[[upstream]]
name = "streams"
servers = ["{streams}"]

[[upstream]]
name = "dead"
servers = ["{dead}"]

[[upstream]]
name = "slow"
servers = ["{slow}"]

[[route]]
host = "api.example.com"
path = "/api/"
upstream = "app"

[[route]]
path = "/events/"
upstream = "streams"

[[route]]
path = "/dead/"
upstream = "dead"

[[route]]
path = "/slow/"
upstream = "slow"
"#
        ),
    )
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic_sent() {
    const K: usize = 3; // events per stream
    const H: usize = 2; // heartbeats each stream gets before its first event
    let ok = ok_upstream().await;
    let mut streams = Upstream::start().await;
    let mut slow = Upstream::start().await;
    let mut cfg = ProxyConfig::new(config(ok, streams.addr, dead_addr(), slow.addr));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let admin = proxy.admin_addr.expect("admin");

    let (status, _, body) = admin_get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let before = scrape(&proxy).await;
    // Children resolved at startup are exposed before any traffic.
    assert!(
        before
            .0
            .contains_key(&series("ssegate_streams_open", &[("route", EVENTS)])),
        "{before:#?}"
    );

    // Ordinary traffic: 3 × 200, 2 × 404, 1 × 502, 1 × 504.
    for i in 0..3 {
        assert_eq!(
            request(&proxy, &format!("/api/{i}"), "api.example.com").await,
            200
        );
    }
    assert_eq!(request(&proxy, "/nowhere", "test").await, 404);
    // The /api/ route is for api.example.com only.
    assert_eq!(request(&proxy, "/api/0", "test").await, 404);
    assert_eq!(request(&proxy, "/dead/x", "test").await, 502);
    let slow_request = tokio::spawn({
        let addr = proxy.addr;
        async move {
            let mut client = H1Client::connect(addr).await;
            client.get("/slow/x", &[]).await;
            client.response_head().await.status
        }
    });
    let held = slow.next().await; // read, never answered
    assert_eq!(within("the 504", slow_request).await.unwrap(), 504);
    drop(held);

    // Two event streams, open at the same time.
    let mut open = Vec::new();
    for name in ["a", "b"] {
        let mut client = H1Client::connect(proxy.addr).await;
        client.get(&format!("/events/{name}"), &[]).await;
        let mut conn = streams.next().await;
        conn.head_chunked(SSE, &[]).await;
        assert_eq!(client.response_head().await.status, 200);
        open.push((name, client, conn, Vec::new()));
    }
    let during = scrape(&proxy).await;
    assert_eq!(
        during.get("ssegate_streams_open", &[("route", EVENTS)]),
        2.0,
        "both streams are open"
    );

    let mut sent_bytes = 0;
    let mut heartbeats = 0;
    for (name, client, conn, got) in &mut open {
        // At least H heartbeats of upstream silence, then K events in lock-step.
        while strip_heartbeats(got).1 < H {
            let chunk = client.next_chunk().await.expect("a heartbeat");
            got.extend_from_slice(&chunk);
        }
        for i in 0..K {
            let event = format!("id: {i}\ndata: {name} {i}\n\n");
            conn.chunk(event.as_bytes()).await;
            sent_bytes += event.len();
            client.read_until(got, event.as_bytes()).await;
        }
        conn.end_chunks().await;
        while let Some(chunk) = client.next_chunk().await {
            got.extend_from_slice(&chunk);
        }
        // Exactly what was sent, plus heartbeats: count those the client saw.
        let (events, n) = strip_heartbeats(got);
        let want: String = (0..K)
            .map(|i| format!("id: {i}\ndata: {name} {i}\n\n"))
            .collect();
        assert_eq!(String::from_utf8_lossy(&events), want);
        assert!(n >= H, "stream {name}: {n} heartbeats");
        heartbeats += n;
    }

    // 3 + 2 + 1 + 1 ordinary responses and 2 streams.
    let after = scrape_until(&proxy, "streams closed and 9 responses counted", |s| {
        s.get("ssegate_streams_open", &[("route", EVENTS)]) == 0.0
            && s.total("ssegate_requests_total") - before.total("ssegate_requests_total") >= 9.0
    })
    .await;
    let r = |route: &'static str| ("route", route);
    let reasons_other_than_done = [
        "upstream_error",
        "client_gone",
        "client_write_error",
        "idle_timeout",
        "shutdown",
        "shutdown_aborted",
    ];
    assert_deltas(
        &before,
        &after,
        &[
            ("ssegate_requests_total", &[r(API), ("status", "200")], 3.0),
            (
                "ssegate_requests_total",
                &[r("none"), ("status", "404")],
                2.0,
            ),
            (
                "ssegate_requests_total",
                &[r("/dead/"), ("status", "502")],
                1.0,
            ),
            (
                "ssegate_requests_total",
                &[r("/slow/"), ("status", "504")],
                1.0,
            ),
            (
                "ssegate_requests_total",
                &[r(EVENTS), ("status", "200")],
                2.0,
            ),
            (
                "ssegate_upstream_connect_errors_total",
                &[("upstream", "dead")],
                1.0,
            ),
            (
                "ssegate_upstream_connect_errors_total",
                &[("upstream", "app")],
                0.0,
            ),
            (
                "ssegate_upstream_timeouts_total",
                &[("upstream", "slow")],
                1.0,
            ),
            (
                "ssegate_upstream_timeouts_total",
                &[("upstream", "app")],
                0.0,
            ),
            (
                "ssegate_stream_ends_total",
                &[r(EVENTS), ("reason", "upstream_done")],
                2.0,
            ),
            ("ssegate_stream_events_total", &[r(EVENTS)], (2 * K) as f64),
            (
                "ssegate_stream_bytes_total",
                &[r(EVENTS)],
                sent_bytes as f64,
            ),
            ("ssegate_heartbeats_total", &[r(EVENTS)], heartbeats as f64),
            ("ssegate_stream_duration_seconds_count", &[r(EVENTS)], 2.0),
            ("ssegate_client_disconnects_total", &[r(EVENTS)], 0.0),
        ],
    );
    for reason in reasons_other_than_done {
        assert_deltas(
            &before,
            &after,
            &[(
                "ssegate_stream_ends_total",
                &[r(EVENTS), ("reason", reason)],
                0.0,
            )],
        );
    }
    // Nothing else was counted anywhere.
    assert_eq!(
        after.total("ssegate_requests_total") - before.total("ssegate_requests_total"),
        9.0
    );
    assert_eq!(after.get("ssegate_streams_open", &[r(EVENTS)]), 0.0);
    // Each stream lasted at least its H heartbeat intervals of 100 ms.
    let duration_sum = after.get("ssegate_stream_duration_seconds_sum", &[r(EVENTS)])
        - before.get("ssegate_stream_duration_seconds_sum", &[r(EVENTS)]);
    assert!(duration_sum >= 2.0 * H as f64 * 0.1, "{duration_sum}");
    // Every upstream chunk was relayed by at least one read-and-write.
    let relayed = after.get("ssegate_relay_delay_seconds_count", &[])
        - before.get("ssegate_relay_delay_seconds_count", &[]);
    assert!(relayed >= (2 * K) as f64, "{relayed} relay observations");
    assert!(
        after.get("ssegate_relay_delay_seconds_bucket", &[("le", "+Inf")])
            == after.get("ssegate_relay_delay_seconds_count", &[])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_is_a_client_disconnect() {
    let mut streams = Upstream::start().await;
    let mut cfg = ProxyConfig::new(config(dead_addr(), streams.addr, dead_addr(), dead_addr()));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let before = scrape(&proxy).await;

    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/events/x", &[]).await;
    let mut conn = streams.next().await;
    conn.head_chunked(SSE, &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    conn.chunk(b"data: one\n\n").await;
    let mut got = Vec::new();
    client.read_until(&mut got, b"data: one\n\n").await;
    let during = scrape(&proxy).await;
    assert_eq!(
        during.get("ssegate_streams_open", &[("route", EVENTS)]),
        1.0
    );
    drop(client);
    within("the upstream close", conn.closed()).await;

    let after = scrape_until(&proxy, "the stream to be closed and counted", |s| {
        s.get("ssegate_streams_open", &[("route", EVENTS)]) == 0.0
            && s.total("ssegate_requests_total") > before.total("ssegate_requests_total")
    })
    .await;
    let ends = |s: &Scrape, reason| {
        s.get(
            "ssegate_stream_ends_total",
            &[("route", EVENTS), ("reason", reason)],
        )
    };
    // Whether the proxy noticed the close on a read or on a write is a race.
    let client_ends = ends(&after, "client_gone") + ends(&after, "client_write_error")
        - ends(&before, "client_gone")
        - ends(&before, "client_write_error");
    assert_eq!(client_ends, 1.0);
    assert_deltas(
        &before,
        &after,
        &[
            (
                "ssegate_client_disconnects_total",
                &[("route", EVENTS)],
                1.0,
            ),
            (
                "ssegate_stream_ends_total",
                &[("route", EVENTS), ("reason", "upstream_done")],
                0.0,
            ),
            ("ssegate_stream_events_total", &[("route", EVENTS)], 1.0),
            ("ssegate_stream_bytes_total", &[("route", EVENTS)], 11.0),
            (
                "ssegate_requests_total",
                &[("route", EVENTS), ("status", "200")],
                1.0,
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_and_healthz_only() {
    let mut cfg = ProxyConfig::new(basic_config(dead_addr(), ""));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let admin = proxy.admin_addr.expect("admin");
    let (status, content_type, body) = admin_get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(content_type.as_deref(), Some("text/plain"));
    let (status, content_type, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    for family in [
        "# TYPE ssegate_streams_open gauge",
        "# TYPE ssegate_stream_duration_seconds histogram",
        "# TYPE ssegate_relay_delay_seconds histogram",
        "# TYPE ssegate_upstream_connect_errors_total counter",
    ] {
        assert!(body.contains(family), "lacks {family:?}:\n{body}");
    }
    // `/` is the status page (tests/status.rs).
    for path in ["/metrics/", "/health", "/metricsx", "/status"] {
        assert_eq!(admin_get(admin, path).await.0, 404, "{path}");
    }
    // Only GET (and HEAD) are served.
    let mut client = H1Client::connect(admin).await;
    client
        .send(b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(client.response_head().await.status, 404);
    // The admin port does not proxy, and the proxy port does not serve metrics.
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/metrics", &[]).await;
    assert_eq!(client.response_head().await.status, 502);
    // Keep-alive: two scrapes on one connection.
    let mut client = H1Client::connect(admin).await;
    for _ in 0..2 {
        client.get("/healthz", &[]).await;
        let head = client.response_head().await;
        assert_eq!(head.status, 200);
        assert_eq!(&client.body(&head).await[..], b"ok\n");
    }
}

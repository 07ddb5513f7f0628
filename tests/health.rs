//! Health checks, active and passive (issue 13): the real binary against
//! small origins of our own on port 0, whose `/healthz` answer can be
//! changed (or made to hang) while the test runs. Checks tick every 100 ms.
//!
//! Everything synchronises on what the proxy reports (its
//! `ssegate_upstream_server_up` gauge) or what an origin saw; the bounded
//! waits only turn a server that never goes down into a failure.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scrape::Scrape;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Harness

/// `/healthz` answers with this status; `HANG` never answers.
const HANG: u16 = 0;

/// An origin: `/healthz` answers `health`; `/events...` is an endless
/// event stream (an event every 30 ms, naming the origin); anything else
/// is `200` with the origin's name, keep-alive.
struct Origin {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    /// Requests other than health checks and event streams get no answer.
    silent: Arc<AtomicBool>,
    /// Requests other than health checks, event streams included.
    requests: Arc<AtomicUsize>,
    /// Health checks answered (or, hanging, received).
    checks: Arc<AtomicUsize>,
    /// Event-stream responses whose connection has since been closed.
    streams_closed: Arc<AtomicUsize>,
    /// The `Host` of the last request that was a health check.
    check_host: Arc<std::sync::Mutex<String>>,
}

impl Origin {
    async fn start(name: &'static str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let o = Origin {
            addr: listener.local_addr().unwrap(),
            health: Arc::new(AtomicU16::new(200)),
            silent: Arc::default(),
            requests: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(AtomicUsize::new(0)),
            streams_closed: Arc::new(AtomicUsize::new(0)),
            check_host: Arc::default(),
        };
        let shared = o.handles();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(name, stream, shared.clone()));
            }
        });
        o
    }

    fn handles(&self) -> Handles {
        Handles {
            health: self.health.clone(),
            silent: self.silent.clone(),
            requests: self.requests.clone(),
            checks: self.checks.clone(),
            streams_closed: self.streams_closed.clone(),
            check_host: self.check_host.clone(),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Handles {
    health: Arc<AtomicU16>,
    silent: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    streams_closed: Arc<AtomicUsize>,
    check_host: Arc<std::sync::Mutex<String>>,
}

/// Serves one connection's requests (HTTP/1.1, no request bodies).
async fn serve(name: &'static str, mut s: TcpStream, h: Handles) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                break head;
            }
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if path == "/healthz" {
            let host = head
                .lines()
                .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                .unwrap_or("")
                .to_string();
            *h.check_host.lock().unwrap() = host;
            let status = h.health.load(Ordering::SeqCst);
            if status == HANG {
                h.checks.fetch_add(1, Ordering::SeqCst);
                // Accept, read the request, never answer.
                let _ = s.read(&mut [0u8; 1]).await;
                return;
            }
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(reply.as_bytes()).await;
            h.checks.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if path.starts_with("/events") {
            let is_check = path.contains("check");
            if is_check {
                h.checks.fetch_add(1, Ordering::SeqCst);
            } else {
                h.requests.fetch_add(1, Ordering::SeqCst);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                h.streams_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            for n in 0u64.. {
                let event = format!("data: {name} {n}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            h.streams_closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        h.requests.fetch_add(1, Ordering::SeqCst);
        if h.silent.load(Ordering::SeqCst) {
            let _ = s.read(&mut [0u8; 1]).await;
            return;
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A config of one upstream `app` over `servers` with `keys`, route `/`.
fn config(servers: &[SocketAddr], keys: &str) -> ProxyConfig {
    config_read(servers, keys, "2s")
}

/// Like `config`, with `timeouts.read` at `read`.
fn config_read(servers: &[SocketAddr], keys: &str, read: &str) -> ProxyConfig {
    let servers: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let body = config_with(
        read,
        "",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [{}]\n{keys}\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
            servers.join(", ")
        ),
    );
    let mut cfg = ProxyConfig::new(body);
    cfg.admin = true;
    cfg.log = Some("info".into());
    cfg
}

/// A health check of `/healthz` every 100 ms, and `extra` keys.
fn checked(fall: u32, rise: u32, extra: &str) -> String {
    format!(
        "health_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", fall = {fall}, rise = {rise} }}\n{extra}"
    )
}

async fn scrape(proxy: &Proxy) -> Scrape {
    let admin = proxy.admin_addr.expect("admin listener");
    let mut client = H1Client::connect(admin).await;
    client.get("/metrics", &[]).await;
    let head = client.response_head().await;
    let body = client.body(&head).await;
    Scrape::parse(&String::from_utf8_lossy(&body))
}

fn up_of(s: &Scrape, server: SocketAddr) -> f64 {
    let server = server.to_string();
    s.get(
        "ssegate_upstream_server_up",
        &[("upstream", "app"), ("server", &server)],
    )
}

fn transitions(s: &Scrape, server: SocketAddr, to: &str) -> f64 {
    let server = server.to_string();
    s.get(
        "ssegate_upstream_server_transitions_total",
        &[("upstream", "app"), ("server", &server), ("to", to)],
    )
}

/// Waits until the proxy reports `server` up (1) or down (0); returns how
/// long that took. Fails after `WAIT`.
async fn until_up_is(proxy: &Proxy, server: SocketAddr, want: f64) -> Duration {
    let start = Instant::now();
    loop {
        if up_of(&scrape(proxy).await, server) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "{server} never became {want}; log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` requests for `/`, each on a new client connection; their statuses.
async fn requests(proxy: &Proxy, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = H1Client::connect(proxy.addr).await;
        client.get("/", &[]).await;
        let head = client.response_head().await;
        let _ = client.body(&head).await;
        statuses.push(head.status);
    }
    statuses
}

// ---------------------------------------------------------------------------
// Active checks

/// A server whose `/healthz` turns 503 gets no new request once `fall`
/// checks have failed (fall × interval), and gets them again after `rise`
/// passed checks; each change is logged once and counted.
#[tokio::test]
async fn a_server_failing_its_checks_gets_no_requests_until_it_passes_again() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let proxy = Proxy::start(config(&[a.addr, b.addr], &checked(2, 2, "max_fails = 0"))).await;
    assert_eq!(requests(&proxy, 4).await, [200; 4]);
    assert_eq!(
        (a.requests(), b.requests()),
        (2, 2),
        "round robin while both are up"
    );

    b.set_health(503);
    let took = until_up_is(&proxy, b.addr, 0.0).await;
    // fall × interval is 200 ms; the bound is loose for a busy machine.
    assert!(took < Duration::from_secs(2), "down after {took:?}");
    let before = b.requests();
    assert_eq!(requests(&proxy, 6).await, [200; 6]);
    assert_eq!(b.requests(), before, "a server that is down got a request");
    assert_eq!(a.requests(), 2 + 6);

    b.set_health(200);
    let took = until_up_is(&proxy, b.addr, 1.0).await;
    assert!(took < Duration::from_secs(2), "up after {took:?}");
    assert_eq!(requests(&proxy, 6).await, [200; 6]);
    assert_eq!(
        b.requests(),
        before + 3,
        "round robin again once it is back"
    );

    let s = scrape(&proxy).await;
    assert_eq!(transitions(&s, b.addr, "down"), 1.0);
    assert_eq!(transitions(&s, b.addr, "up"), 1.0);
    assert_eq!(transitions(&s, a.addr, "down"), 0.0);
    assert_eq!(up_of(&s, a.addr), 1.0);
    let log = proxy.log_text();
    let down = format!("server {} is down", b.addr);
    let up = format!("server {} is up", b.addr);
    assert_eq!(log.matches(&down).count(), 1, "{log}");
    assert_eq!(log.matches(&up).count(), 1, "{log}");
    // The check's Host is the upstream's.
    assert_eq!(*b.check_host.lock().unwrap(), "app");
}

/// A server that accepts the check and never answers is down within
/// timeout × fall: (fall - 1) intervals, then one timeout.
#[tokio::test]
async fn a_server_that_never_answers_its_check_is_down_within_timeout_times_fall() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    b.set_health(HANG);
    let proxy = Proxy::start(config(&[a.addr, b.addr], &checked(2, 2, "max_fails = 0"))).await;
    // The checks began while the proxy was starting, so this is an upper bound.
    let took = until_up_is(&proxy, b.addr, 0.0).await;
    assert!(
        took < Duration::from_millis(200 + 400),
        "timeout × fall is 200 ms; down after {took:?}"
    );
    assert!(b.checks.load(Ordering::SeqCst) >= 2);
    assert_eq!(requests(&proxy, 4).await, [200; 4]);
    assert_eq!((a.requests(), b.requests()), (4, 0));
}

/// A check pointed at an event stream passes on its response header alone
/// and closes its connection: the server stays up, no check connection is
/// left open behind.
#[tokio::test]
async fn a_check_pointed_at_an_event_stream_passes_and_lets_it_go() {
    let a = Origin::start("a").await;
    let keys = "health_check = { path = \"/events/check\", interval = \"100ms\", timeout = \"100ms\", fall = 1, rise = 1 }";
    let proxy = Proxy::start(config(&[a.addr], keys)).await;
    within("five checks of the stream", async {
        while a.checks.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let s = scrape(&proxy).await;
    assert_eq!(up_of(&s, a.addr), 1.0);
    assert_eq!(transitions(&s, a.addr, "down"), 0.0, "{}", proxy.log_text());
    // Every check but the one under way has closed its stream.
    let (checks, closed) = within("the checks' streams to close", async {
        loop {
            let checks = a.checks.load(Ordering::SeqCst);
            let closed = a.streams_closed.load(Ordering::SeqCst);
            if closed + 1 >= checks {
                return (checks, closed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed >= 4, "{closed} of {checks} check streams closed");
}

// ---------------------------------------------------------------------------
// Passive checks

/// A server that refuses is marked down by its first failed attempt
/// (max_fails 1) and not tried again for fail_timeout, then tried again.
#[tokio::test]
async fn a_refusing_server_is_avoided_for_fail_timeout() {
    let a = Origin::start("a").await;
    let refusing = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(config(
        &[a.addr, refusing],
        "max_fails = 1\nfail_timeout = \"1s\"",
    ))
    .await;
    let errors = |s: &Scrape| {
        s.get(
            "ssegate_upstream_connect_errors_total",
            &[("upstream", "app")],
        )
    };
    assert_eq!(requests(&proxy, 8).await, [200; 8]);
    let s = scrape(&proxy).await;
    assert_eq!(errors(&s), 1.0, "the refusing server was tried again");
    assert_eq!(up_of(&s, refusing), 0.0);
    assert_eq!(a.requests(), 8);
    // It comes back once fail_timeout has passed since it was marked, and
    // not before (the gauge was 0 at the scrape above).
    let took = until_up_is(&proxy, refusing, 1.0).await;
    assert!(took > Duration::from_millis(500), "back after {took:?}");
    assert_eq!(requests(&proxy, 4).await, [200; 4]);
    let s = scrape(&proxy).await;
    assert_eq!(errors(&s), 2.0, "tried once more, then avoided again");
    assert_eq!(transitions(&s, refusing, "down"), 2.0);
    assert_eq!(transitions(&s, refusing, "up"), 1.0);
}

/// A server that leaves a request unanswered costs that request a 504,
/// made by us, which counts as a failed attempt: with max_fails 1 the
/// server gets no further request.
#[tokio::test]
async fn a_504_of_ours_counts_against_the_server() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    b.silent.store(true, Ordering::SeqCst);
    let proxy = Proxy::start(config_read(
        &[a.addr, b.addr],
        "max_fails = 1\nfail_timeout = \"10s\"",
        "300ms",
    ))
    .await;
    let mut statuses = requests(&proxy, 6).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 504]);
    assert_eq!((a.requests(), b.requests()), (5, 1));
    let s = scrape(&proxy).await;
    assert_eq!(up_of(&s, b.addr), 0.0);
    assert_eq!(transitions(&s, b.addr, "down"), 1.0);
}

// ---------------------------------------------------------------------------
// Selection

/// A stream open on a server that turns unhealthy keeps flowing; only new
/// requests avoid the server.
#[tokio::test]
async fn an_open_stream_keeps_flowing_on_a_server_that_goes_down() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let proxy = Proxy::start(config(&[a.addr, b.addr], &checked(1, 1, ""))).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client
        .get("/events", &[("accept", "text/event-stream")])
        .await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    client.read_until(&mut body, b"\n\n").await;
    let text = String::from_utf8_lossy(&body).to_string();
    let (name, server, other) = if text.starts_with("data: a ") {
        ("a", &a, &b)
    } else {
        ("b", &b, &a)
    };

    server.set_health(503);
    until_up_is(&proxy, server.addr, 0.0).await;
    // Ten more events from the same server, on the same stream.
    let mut events = 0;
    while events < 10 {
        let chunk = client.next_chunk().await.expect("the stream went on");
        let chunk = String::from_utf8_lossy(&chunk).to_string();
        assert!(chunk.starts_with(&format!("data: {name} ")), "{chunk}");
        events += chunk.matches("\n\n").count();
    }
    assert_eq!(server.streams_closed.load(Ordering::SeqCst), 0);
    let before = other.requests();
    assert_eq!(requests(&proxy, 3).await, [200; 3]);
    assert_eq!(
        other.requests(),
        before + 3,
        "new requests avoid the server"
    );
}

/// With every server down, requests are still tried (round robin over all)
/// rather than answered 502.
#[tokio::test]
async fn with_every_server_down_requests_are_still_tried() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_health(503);
    b.set_health(503);
    let proxy = Proxy::start(config(&[a.addr, b.addr], &checked(1, 1, ""))).await;
    until_up_is(&proxy, a.addr, 0.0).await;
    until_up_is(&proxy, b.addr, 0.0).await;
    assert_eq!(requests(&proxy, 6).await, [200; 6]);
    assert_eq!((a.requests(), b.requests()), (3, 3));
}

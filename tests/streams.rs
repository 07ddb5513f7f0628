//! Event-stream behaviour end to end: the real binary between a scripted
//! upstream and real HTTP/1.1, h2c and TLS h2 clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::Rng;

const SSE: &str = "text/event-stream";

async fn proxy_for(up: &Upstream, stream_extra: &str) -> Proxy {
    Proxy::start(ProxyConfig::new(basic_config(up.addr, stream_extra))).await
}

/// Opens an event stream through the proxy: the client's GET, the upstream's
/// `text/event-stream` head, and the head received by the client.
async fn open_stream(
    proxy: &Proxy,
    up: &mut Upstream,
    path: &str,
) -> (H1Client<tokio::net::TcpStream>, UpConn) {
    let mut client = H1Client::connect(proxy.addr).await;
    client.get(path, &[]).await;
    let mut conn = up.next().await;
    conn.head_chunked(SSE, &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    (client, conn)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_each_event_is_delivered_before_the_next_is_sent() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/s", &[("accept", SSE)]).await;
    let mut conn = up.next().await;
    conn.head_chunked(SSE, &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let mut got = Vec::new();
    for i in 1..=3 {
        let event = format!("id: {i}\ndata: event {i}\n\n");
        conn.chunk(event.as_bytes()).await;
        // The upstream sends nothing more until the client holds this event:
        // a buffering proxy never gets here.
        client.read_until(&mut got, event.as_bytes()).await;
    }
    assert_eq!(
        got,
        b"id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\nid: 3\ndata: event 3\n\n"
    );
}

/// Opens an h2 stream while the upstream answers concurrently (the h2 client
/// only yields the response once the proxy has the upstream's head).
async fn h2_unbuffered_run(send: H2Sender, mut up: Upstream) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<UpConn>(1);
    // Feed the next upstream connection through a task so the h2 request can
    // wait for its response head.
    let mut conns = std::mem::replace(&mut up.conns, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        if let Some(c) = conns.recv().await {
            let _ = tx.send(c).await;
        }
    });
    let req = http::Request::builder()
        .method("GET")
        .uri("http://test/s")
        .body(())
        .unwrap();
    let mut ready = within("h2 ready", send.clone().ready()).await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let mut conn = within("upstream request", rx.recv()).await.unwrap();
    conn.head_chunked(SSE, &[]).await;
    let resp = within("h2 response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for i in 1..=3 {
        let event = format!("id: {i}\ndata: event {i}\n\n");
        conn.chunk(event.as_bytes()).await;
        h2_read_until(&mut body, &mut got, event.as_bytes()).await;
    }
    assert_eq!(
        got,
        b"id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\nid: 3\ndata: event 3\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_each_event_is_delivered_before_the_next_is_sent() {
    let up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let send = h2c_connect(proxy.addr).await;
    h2_unbuffered_run(send, up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_each_event_is_delivered_before_the_next_is_sent() {
    let up = Upstream::start().await;
    let dir = TempDir::new("tls");
    let cert = make_cert(&dir);
    let mut cfg = ProxyConfig::new(basic_config(up.addr, "heartbeat = \"off\""));
    cfg.tls = Some((cert.cert_path.clone(), cert.key_path.clone()));
    let proxy = Proxy::start(cfg).await;
    let send = h2_tls_connect(proxy.tls_addr.unwrap(), &cert.cert_pem).await;
    h2_unbuffered_run(send, up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_also_speaks_http1() {
    let mut up = Upstream::start().await;
    let dir = TempDir::new("tls1");
    let cert = make_cert(&dir);
    let mut cfg = ProxyConfig::new(basic_config(up.addr, "heartbeat = \"off\""));
    cfg.tls = Some((cert.cert_path.clone(), cert.key_path.clone()));
    let proxy = Proxy::start(cfg).await;
    let tls = tls_connect(proxy.tls_addr.unwrap(), &cert.cert_pem, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut client = H1Client::over(tls);
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    assert_eq!(conn.req.header("x-forwarded-proto"), Some("https"));
    conn.head_chunked(SSE, &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    let mut got = Vec::new();
    conn.chunk(b"data: over tls\n\n").await;
    client.read_until(&mut got, b"data: over tls\n\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_are_rewritten_and_sent_before_the_first_event() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    // An upstream that gets caching wrong, and declares a length.
    conn.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\n\
content-length: 100000\r\ncache-control: public, max-age=600\r\netag: \"v1\"\r\n\
last-modified: Sat, 21 Nov 2026 00:00:00 GMT\r\nx-app: kept\r\n\r\n",
    )
    .await;
    // No event has been sent: the head must arrive on its own.
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("etag"), None);
    assert_eq!(head.header("last-modified"), None);
    assert_eq!(head.header("x-app"), Some("kept"));
    conn.write(b"data: first\n\n").await;
    let mut got = Vec::new();
    client.read_until(&mut got, b"data: first\n\n").await;
    assert_eq!(got, b"data: first\n\n");
}

/// Slack for the clocks of two processes and timer rounding when a lower
/// bound on elapsed time is checked.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(5);

/// Writes `bytes` as a chunk from the upstream side and returns the moment
/// just before: the proxy cannot have received them earlier, so any timer it
/// starts on them runs from this moment or later.
async fn chunk_at(conn: &mut UpConn, bytes: &[u8]) -> Instant {
    let at = Instant::now();
    conn.chunk(bytes).await;
    at
}

/// Heartbeats come after `heartbeat` of upstream silence, never sooner, and
/// keep coming while the upstream stays silent.
///
/// The bounds are lower bounds on the moment the client sees a heartbeat,
/// which load can only delay: the k-th heartbeat after an upstream write
/// cannot be sent before k intervals have passed since that write, so it is
/// seen no earlier than that. (The gap between two heartbeats as seen by the
/// client is no bound: a late read of the first shortens it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_gets_heartbeat_comments() {
    const INTERVAL: Duration = Duration::from_millis(250);
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"250ms\"").await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/idle").await;
    let written = chunk_at(&mut conn, b"data: first\n\n").await;
    // Heartbeats before the first upstream byte (load may delay the write)
    // are whole ones; then the event.
    let mut got = Vec::new();
    client.read_until(&mut got, b"data: first\n\n").await;
    assert_eq!(
        got.len(),
        count(&got, b":\n\n") * 3 + b"data: first\n\n".len(),
        "only whole heartbeats before the event: {:?}",
        String::from_utf8_lossy(&got)
    );
    for k in 1..=4u32 {
        assert_eq!(client.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
        let seen = written.elapsed();
        assert!(
            seen + CLOCK_TOLERANCE >= INTERVAL * k,
            "heartbeat {k} seen {seen:?} after the last upstream byte: more than one per {INTERVAL:?}"
        );
    }
    // Upstream bytes still pass between heartbeats, and restart the silence.
    let written = chunk_at(&mut conn, b"data: after\n\n").await;
    let mut got = Vec::new();
    client.read_until(&mut got, b"data: after\n\n").await;
    assert!(got.ends_with(b"data: after\n\n"));
    assert_eq!(
        got.len(),
        count(&got, b":\n\n") * 3 + b"data: after\n\n".len(),
        "only whole heartbeats before the event: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(client.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
    let seen = written.elapsed();
    assert!(
        seen + CLOCK_TOLERANCE >= INTERVAL,
        "heartbeat seen {seen:?} after an upstream event, before {INTERVAL:?} of silence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_heartbeat_text_is_used() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat_text = \": ping\\n\\n\"").await;
    let (mut client, conn) = open_stream(&proxy, &mut up, "/idle").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b": ping\n\n"[..])
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_while_upstream_pauses_mid_event() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "").await;

    // Stream A is idle: its heartbeats are the clock of this test.
    let (mut a, a_up) = open_stream(&proxy, &mut up, "/a").await;

    // Stream B stalls in the middle of an event.
    let (mut b, mut b_up) = open_stream(&proxy, &mut up, "/b").await;
    b_up.chunk(b"id: 7\ndata: partial\n").await;

    // Once A has had three heartbeats, B has been silent mid-event for longer
    // than three heartbeat intervals.
    for _ in 0..3 {
        assert_eq!(a.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
    }
    b_up.chunk(b"\n").await;
    let mut got = Vec::new();
    b.read_until(&mut got, b"\n\n:\n\n").await;
    assert_eq!(
        got, b"id: 7\ndata: partial\n\n:\n\n",
        "a heartbeat went into the middle of an event"
    );
    drop(a_up);
}

/// Random SSE-ish bytes: fields, comments, blank lines, all three line ends,
/// a BOM at the start sometimes, and raw non-UTF-8 bytes.
fn random_sse(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.gen_range(0..4) == 0 {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let lines = 4 + rng.gen_range(0..20);
    for _ in 0..lines {
        match rng.gen_range(0..8) {
            0 => out.extend_from_slice(b""),
            1 => out.extend_from_slice(b": a comment"),
            2 => out.extend_from_slice(format!("id: {}", rng.gen_range(0..1000)).as_bytes()),
            3 => out.extend_from_slice(b"event: tick"),
            4 => out.extend_from_slice(b"retry: 1500"),
            5 => out.extend_from_slice(b"data:\xFF\xFE raw"),
            _ => out.extend_from_slice(format!("data: {}", rng.gen_range(0..1 << 20)).as_bytes()),
        }
        let eol: &[u8] = match rng.gen_range(0..3) {
            0 => b"\n",
            1 => b"\r\n",
            _ => b"\r",
        };
        out.extend_from_slice(eol);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_streams_and_chunkings_keep_upstream_bytes_exactly() {
    const HB: &[u8] = b": ssegate-test-hb\n\n";
    let mut up = Upstream::start().await;
    let proxy = proxy_for(
        &up,
        "heartbeat = \"40ms\"\nheartbeat_text = \": ssegate-test-hb\\n\\n\"",
    )
    .await;
    let mut total_heartbeats = 0;
    for seed in 1..=12u64 {
        let mut rng = seeded_rng(seed);
        let input = random_sse(&mut rng);
        let mut client = H1Client::connect(proxy.addr).await;
        client.get("/r", &[]).await;
        let mut conn = up.next().await;
        conn.head_chunked(SSE, &[]).await;
        client.response_head().await;
        // Offsets at which the upstream bytes stand at an event boundary.
        let mut boundaries = Vec::new();
        let mut framer = ssegate::sse::Framer::new();
        for (i, b) in input.iter().enumerate() {
            framer.feed(std::slice::from_ref(b));
            if framer.at_event_boundary() {
                boundaries.push(i + 1);
            }
        }
        let mut pos = 0;
        while pos < input.len() {
            // Half the cuts land on a boundary, half anywhere (mid-line, between CR and LF…).
            let next_boundary = boundaries.iter().copied().find(|&b| b > pos);
            let end = match next_boundary {
                Some(b) if rng.gen_range(0..2) == 0 => b,
                _ => (pos + 1 + rng.gen_range(0..40usize)).min(input.len()),
            };
            conn.chunk(&input[pos..end]).await;
            pos = end;
            if rng.gen_range(0..2) == 0 {
                // Longer than two heartbeat intervals: a heartbeat is due if,
                // and only if, the stream is at a boundary.
                tokio::time::sleep(Duration::from_millis(90)).await;
            }
        }
        conn.end_chunks().await;
        let mut got = Vec::new();
        while let Some(c) = client.next_chunk().await {
            got.extend_from_slice(&c);
        }
        // Remove the heartbeats, checking each sat at an event boundary of
        // the upstream bytes before it.
        let mut stripped = Vec::new();
        let mut i = 0;
        while i < got.len() {
            if got[i..].starts_with(HB) {
                let mut framer = ssegate::sse::Framer::new();
                framer.feed(&stripped);
                // Before the first upstream byte the proxy injects too (see
                // src/proxy/stream.rs); nothing has been sent that it could split.
                assert!(
                    stripped.is_empty() || framer.at_event_boundary(),
                    "seed {seed}: heartbeat after {:?}",
                    String::from_utf8_lossy(&stripped)
                );
                total_heartbeats += 1;
                i += HB.len();
            } else {
                stripped.push(got[i]);
                i += 1;
            }
        }
        assert_eq!(stripped, input, "seed {seed}: upstream bytes altered");
    }
    assert!(total_heartbeats > 0, "no heartbeat was exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_outlives_the_ordinary_read_timeout() {
    let mut up = Upstream::start().await;
    let cfg =
        basic_config(up.addr, "heartbeat = \"100ms\"").replace("read = \"2s\"", "read = \"300ms\"");
    let proxy = Proxy::start(ProxyConfig::new(cfg)).await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/s").await;
    let start = Instant::now();
    // Eight heartbeats: at least 800 ms of upstream silence, over twice the read timeout.
    for _ in 0..8 {
        assert_eq!(client.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
    }
    assert!(start.elapsed() > Duration::from_millis(600));
    conn.chunk(b"data: still here\n\n").await;
    let mut got = Vec::new();
    client.read_until(&mut got, b"data: still here\n\n").await;
}

/// After `idle_timeout` of upstream silence, not before, the stream ends
/// cleanly; on a loaded machine it may take longer, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_a_silent_stream_cleanly() {
    const IDLE: Duration = Duration::from_millis(300);
    const SLACK: Duration = Duration::from_secs(5);
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"\nidle_timeout = \"300ms\"").await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/s").await;
    let written = chunk_at(&mut conn, b"data: one\n\n").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"data: one\n\n"[..])
    );
    // Then silence: the terminating chunk comes, and the upstream is closed.
    let end = tokio::time::timeout(
        (IDLE + SLACK).saturating_sub(written.elapsed()),
        client.next_chunk(),
    )
    .await;
    let ended_after = written.elapsed();
    assert_eq!(
        end,
        Ok(None),
        "no clean end within {:?} of the last upstream byte",
        IDLE + SLACK
    );
    assert!(
        ended_after + CLOCK_TOLERANCE >= IDLE,
        "ended {ended_after:?} after the last upstream byte, before idle_timeout ({IDLE:?})"
    );
    within("upstream close", conn.closed()).await;
}

async fn multiplex(mut send: H2Sender, mut up: Upstream, n: usize) {
    // Upstream: answer every stream with one event and keep it open.
    let mut conns = std::mem::replace(&mut up.conns, tokio::sync::mpsc::channel(1).1);
    let served = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < n {
            let Some(mut c) = conns.recv().await else {
                break;
            };
            let id = c.req.target.clone();
            c.head_chunked(SSE, &[]).await;
            c.chunk(format!("data: hello {id}\n\n").as_bytes()).await;
            held.push(c);
        }
        held
    });
    let mut tasks = Vec::new();
    for i in 0..n {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut send = send;
            let path = format!("/m{i}");
            let (parts, mut body) = h2_get(&mut send, "test", &path).await;
            assert_eq!(parts.status, 200);
            let mut got = Vec::new();
            let want = format!("data: hello {path}\n\n");
            h2_read_until(&mut body, &mut got, want.as_bytes()).await;
            assert_eq!(got, want.as_bytes());
            body
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(within("a multiplexed stream", t).await.unwrap());
    }
    assert_eq!(bodies.len(), n);
    let held = within("upstream side", served).await.unwrap();
    assert_eq!(held.len(), n);
    let _ = &mut send;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_on_one_h2c_connection() {
    let up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let send = h2c_connect(proxy.addr).await;
    multiplex(send, up, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_on_one_tls_h2_connection() {
    let up = Upstream::start().await;
    let dir = TempDir::new("tlsmux");
    let cert = make_cert(&dir);
    let mut cfg = ProxyConfig::new(basic_config(up.addr, "heartbeat = \"off\""));
    cfg.tls = Some((cert.cert_path.clone(), cert.key_path.clone()));
    let proxy = Proxy::start(cfg).await;
    let send = h2_tls_connect(proxy.tls_addr.unwrap(), &cert.cert_pem).await;
    multiplex(send, up, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_json_body_streams_reply_token_by_token() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let mut client = H1Client::connect(proxy.addr).await;
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let req = format!(
        "POST /v1/chat HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.send(req.as_bytes()).await;
    client.send(body).await;
    let mut conn = up.next().await;
    assert_eq!(conn.req.method, "POST");
    assert_eq!(&conn.req.body[..], &body[..]);
    conn.head_chunked(SSE, &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    let mut got = Vec::new();
    for token in ["Hel", "lo", ",", " wor", "ld"] {
        let event = format!("data: {{\"token\":\"{token}\"}}\n\n");
        conn.chunk(event.as_bytes()).await;
        // Lock-step: the next token is written only once this one arrived.
        client.read_until(&mut got, event.as_bytes()).await;
    }
    conn.chunk(b"data: [DONE]\n\n").await;
    conn.end_chunks().await;
    client.read_until(&mut got, b"data: [DONE]\n\n").await;
    assert_eq!(client.next_chunk().await, None);
}

/// A proxy in front of `up` with heartbeats off and every timer of 30 s or
/// more, so that nothing but the client going away can end a stream within
/// `NO_TIMER`.
async fn proxy_without_short_timers(up: &Upstream) -> Proxy {
    let cfg = basic_config(up.addr, "heartbeat = \"off\"")
        .replace("connect = \"2s\"", "connect = \"30s\"")
        .replace("read = \"2s\"", "read = \"30s\"")
        .replace("write = \"5s\"", "write = \"30s\"");
    for timer in ["connect", "read", "write"] {
        assert!(cfg.contains(&format!("{timer} = \"30s\"")), "{cfg}");
    }
    Proxy::start(ProxyConfig::new(cfg)).await
}

/// Well under every timer of `proxy_without_short_timers`, and seconds
/// above what a loaded machine takes to notice a closed connection.
const NO_TIMER: Duration = Duration::from_secs(5);

/// The client closing its connection closes the upstream one at once, not
/// at some timer: the upstream is silent, heartbeats are off, and every
/// timeout is 30 s or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_closes_the_upstream_promptly() {
    let mut up = Upstream::start().await;
    let proxy = proxy_without_short_timers(&up).await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/s").await;
    conn.chunk(b"data: one\n\n").await;
    assert!(client.next_chunk().await.is_some());
    drop(client);
    let start = Instant::now();
    within("upstream close", conn.closed()).await;
    assert!(
        start.elapsed() < NO_TIMER,
        "upstream closed after {:?}",
        start.elapsed()
    );
}

/// Like `client_disconnect_closes_the_upstream_promptly`, for an HTTP/2
/// stream reset by its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_reset_closes_the_upstream() {
    let mut up = Upstream::start().await;
    let proxy = proxy_without_short_timers(&up).await;
    let mut send = h2c_connect(proxy.addr).await;
    let mut conns = std::mem::replace(&mut up.conns, tokio::sync::mpsc::channel(1).1);
    let upstream = tokio::spawn(async move {
        let mut c = conns.recv().await.unwrap();
        c.head_chunked(SSE, &[]).await;
        c.chunk(b"data: one\n\n").await;
        c
    });
    let (parts, mut body) = h2_get(&mut send, "test", "/s").await;
    assert_eq!(parts.status, 200);
    let mut got = Vec::new();
    h2_read_until(&mut body, &mut got, b"data: one\n\n").await;
    let mut conn = upstream.await.unwrap();
    drop(body); // dropping the receive half resets the stream
    let start = Instant::now();
    within("upstream close", conn.closed()).await;
    assert!(
        start.elapsed() < NO_TIMER,
        "upstream closed after {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_end_ends_the_client_stream_cleanly() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/s").await;
    conn.chunk(b"data: last\n\n").await;
    conn.end_chunks().await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"data: last\n\n"[..])
    );
    assert_eq!(client.next_chunk().await, None, "no terminating chunk");
    // Both connections stay usable: the client's for another request, and the
    // fully read upstream one goes back to the pool and carries it.
    client.get("/again", &[]).await;
    conn.next_request().await;
    assert_eq!(conn.req.target, "/again");
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(&client.body(&head).await[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_mid_stream_is_not_a_clean_end() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let (mut client, mut conn) = open_stream(&proxy, &mut up, "/s").await;
    conn.chunk(b"data: one\n\n").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"data: one\n\n"[..])
    );
    // A chunk header promising more than is sent, then the connection drops.
    conn.write(b"20\r\ndata: trunc").await;
    drop(conn);
    let rest = client.until_closed().await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a truncated upstream must not look like a finished stream: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_stream_passes_through_without_heartbeats() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "").await;
    // A: an idle plain stream, the clock.
    let (mut a, a_up) = open_stream(&proxy, &mut up, "/a").await;
    // B: a gzip-encoded stream (the bytes are opaque to the proxy).
    let mut b = H1Client::connect(proxy.addr).await;
    b.get("/b", &[("accept-encoding", "gzip")]).await;
    let mut b_up = up.next().await;
    b_up.head_chunked(SSE, &[("content-encoding", "gzip")])
        .await;
    let head = b.response_head().await;
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    let opaque = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03opaque";
    b_up.chunk(opaque).await;
    for _ in 0..3 {
        assert_eq!(a.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
    }
    b_up.end_chunks().await;
    let mut got = Vec::new();
    while let Some(c) = b.next_chunk().await {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, opaque, "bytes changed or heartbeats injected");
    drop(a_up);
}

fn parse_retry(bytes: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(bytes);
    let at = text.find("retry: ").expect("no retry field");
    text[at + 7..]
        .split('\n')
        .next()
        .unwrap()
        .parse()
        .expect("retry value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_retry_and_ends_streams_at_a_boundary() {
    let mut up = Upstream::start().await;
    let mut proxy = proxy_for(
        &up,
        "heartbeat = \"off\"\nshutdown_retry = \"3s\"\nshutdown_retry_jitter = \"500ms\"",
    )
    .await;
    // A: at an event boundary.
    let (mut a, mut a_up) = open_stream(&proxy, &mut up, "/a").await;
    a_up.chunk(b"id: 1\ndata: a\n\n").await;
    assert_eq!(
        a.next_chunk().await.as_deref(),
        Some(&b"id: 1\ndata: a\n\n"[..])
    );
    // B: in the middle of an event.
    let (mut b, mut b_up) = open_stream(&proxy, &mut up, "/b").await;
    b_up.chunk(b"id: 2\ndata: b").await;
    let mut b_got = Vec::new();
    b.read_until(&mut b_got, b"data: b").await;

    proxy.signal("TERM");

    // A ends at once with a retry hint and a clean end.
    let mut a_got = Vec::new();
    a.read_until(&mut a_got, b"\n\n").await;
    let retry = parse_retry(&a_got);
    assert!((3000..=3500).contains(&retry), "retry {retry}");
    assert_eq!(a_got, format!("retry: {retry}\n\n").as_bytes());
    assert_eq!(a.next_chunk().await, None);

    // B waits for its event to complete, then gets the hint.
    b_up.chunk(b"\n\n").await;
    b.read_until(&mut b_got, b"retry: ").await;
    b.read_until(&mut b_got, b"\n\n").await;
    let retry_b = parse_retry(&b_got);
    assert_eq!(
        b_got,
        format!("id: 2\ndata: b\n\nretry: {retry_b}\n\n").as_bytes()
    );
    assert_eq!(b.next_chunk().await, None);

    // New connections are refused while draining, and the process exits.
    let status = proxy.wait_exit().await;
    assert!(status.success() || status.code().is_none(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_heartbeat_overrides_the_stream_default() {
    let mut up = Upstream::start().await;
    let cfg = basic_config(up.addr, "heartbeat = \"off\"").replace(
        "[[route]]\npath = \"/\"",
        "[[route]]\npath = \"/fast/\"\nupstream = \"app\"\nheartbeat = \"100ms\"\n\n[[route]]\npath = \"/\"",
    );
    assert!(cfg.contains("/fast/"));
    let proxy = Proxy::start(ProxyConfig::new(cfg)).await;
    // A stream on the default route: heartbeats off.
    let (mut quiet, mut quiet_up) = open_stream(&proxy, &mut up, "/quiet").await;
    // A stream on the overriding route: heartbeats every 100 ms.
    let (mut fast, fast_up) = open_stream(&proxy, &mut up, "/fast/x").await;
    for _ in 0..3 {
        assert_eq!(fast.next_chunk().await.as_deref(), Some(&b":\n\n"[..]));
    }
    // Meanwhile the quiet stream got nothing: its next bytes are the event.
    quiet_up.chunk(b"data: q\n\n").await;
    assert_eq!(
        quiet.next_chunk().await.as_deref(),
        Some(&b"data: q\n\n"[..])
    );
    drop(fast_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_post_body_reaches_the_upstream_chunked_and_streams_back() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up, "heartbeat = \"off\"").await;
    let send = h2c_connect(proxy.addr).await;
    let mut conns = std::mem::replace(&mut up.conns, tokio::sync::mpsc::channel(1).1);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://test/v1/chat")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut ready = within("h2 ready", send.ready()).await.unwrap();
    let (resp, mut body_tx) = ready.send_request(req, false).unwrap();
    body_tx
        .send_data(bytes::Bytes::from_static(b"{\"prompt\":"), false)
        .unwrap();
    body_tx
        .send_data(bytes::Bytes::from_static(b"\"hi\"}"), true)
        .unwrap();
    let mut conn = within("upstream request", conns.recv()).await.unwrap();
    assert_eq!(conn.req.method, "POST");
    assert_eq!(conn.req.target, "/v1/chat");
    assert_eq!(conn.req.header("transfer-encoding"), Some("chunked"));
    assert_eq!(conn.req.header("host"), Some("test"));
    assert_eq!(&conn.req.body[..], b"{\"prompt\":\"hi\"}");
    conn.head_chunked(SSE, &[]).await;
    let resp = within("h2 response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for token in ["a", "b", "c"] {
        let event = format!("data: {token}\n\n");
        conn.chunk(event.as_bytes()).await;
        h2_read_until(&mut body, &mut got, event.as_bytes()).await;
    }
    conn.end_chunks().await;
    // The end: END_STREAM (possibly on an empty DATA frame), not a reset.
    within("h2 end", async {
        while let Some(frame) = body.data().await {
            let data = frame.expect("stream reset instead of ended");
            assert!(data.is_empty(), "unexpected data {data:?}");
        }
    })
    .await;
    assert_eq!(got, b"data: a\n\ndata: b\n\ndata: c\n\n");
}

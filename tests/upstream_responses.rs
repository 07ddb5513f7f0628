//! Broken and hostile upstream responses, through the real binary: each
//! gives the client a 502, or a stream end the client can tell from a
//! finished one, and never a hang, a reused bad connection or unbounded
//! memory.

mod common;

use common::{basic_config, rss_kib, within, H1Client, Proxy, ProxyConfig, Upstream};

async fn proxy_for(up: &Upstream) -> Proxy {
    Proxy::start(ProxyConfig::new(basic_config(
        up.addr,
        "heartbeat = \"off\"",
    )))
    .await
}

/// What a hostile upstream does before its response header is complete.
enum Answer {
    /// Writes these bytes and keeps the connection open.
    Bytes(Vec<u8>),
    /// Writes these bytes, then closes.
    BytesThenClose(Vec<u8>),
    /// Accepts the request and never answers.
    Nothing,
}

/// The table of hostile upstream response heads: each case, what the
/// upstream does, and the status the client must get. The body-phase cases
/// (broken chunked body, both framings, a 100 MB event, non-UTF-8 bytes)
/// are the tests below it; the client-side table is `tests/hostile.rs`.
fn upstream_head_cases() -> Vec<(&'static str, Answer, u16)> {
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n");
    vec![
        (
            "status code of 4 digits",
            Answer::Bytes(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
            502,
        ),
        (
            "not HTTP at all",
            Answer::Bytes(b"ICY 200 OK\r\n\r\n".to_vec()),
            502,
        ),
        (
            "header line without a colon",
            Answer::Bytes(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec()),
            502,
        ),
        (
            "binary garbage",
            Answer::Bytes(b"\x00\x01\x02garbage\r\n\r\n".to_vec()),
            502,
        ),
        (
            "header section over 64 KiB",
            Answer::Bytes(big.into_bytes()),
            502,
        ),
        ("300 header fields", Answer::Bytes(many.into_bytes()), 502),
        (
            "close in the middle of the header",
            Answer::BytesThenClose(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()),
            502,
        ),
        (
            "accepts and never answers (timeouts.read = 2s)",
            Answer::Nothing,
            504,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_heads_get_502_or_504() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    for (name, answer, want) in upstream_head_cases() {
        let mut client = H1Client::connect(proxy.addr).await;
        client.get("/x", &[]).await;
        let mut conn = up.next().await;
        let started = std::time::Instant::now();
        match &answer {
            Answer::Bytes(raw) | Answer::BytesThenClose(raw) => conn.write(raw).await,
            Answer::Nothing => {}
        }
        if let Answer::BytesThenClose(_) = answer {
            drop(conn);
            let got = client.response_head().await.status;
            println!("hostile upstream | {name:<48} | expect {want} | got {got}");
            assert_eq!(got, want, "{name}");
            continue;
        }
        let got = client.response_head().await.status;
        println!(
            "hostile upstream | {name:<48} | expect {want} | got {got} | {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(got, want, "{name}");
        // The bad upstream connection is never kept for another request.
        within("the bad upstream connection to be closed", conn.closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_body_is_not_a_complete_response() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/x", &[]).await;
    let mut conn = up.next().await;
    conn.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await;
    assert_eq!(client.response_head().await.status, 200);
    let rest = client.until_closed().await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a broken body must not be terminated as complete: {:?}",
        String::from_utf8_lossy(&rest)
    );
    within("the upstream connection to be closed", conn.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_with_both_framings_is_read_chunked_and_not_reused() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/one", &[]).await;
    let mut conn = up.next().await;
    // Content-Length would end the body after "5\r\nh"; chunked framing wins.
    conn.write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(&client.body(&head).await[..], b"hello");
    // That connection is never trusted again: the next request opens a new one.
    within(
        "the ambiguous upstream connection to be closed",
        conn.closed(),
    )
    .await;
    client.get("/two", &[]).await;
    let mut fresh = up.next().await;
    assert_eq!(fresh.req.target, "/two");
    fresh
        .write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await;
    let head = client.response_head().await;
    assert_eq!(&client.body(&head).await[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_event_stream_passes_and_ends_cleanly() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: a\n\n")
        .await;
    let head = client.response_head().await;
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"data: a\n\n"[..])
    );
    conn.write(b"data: b\n\n").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"data: b\n\n"[..])
    );
    drop(conn);
    // The upstream's close is the end of its body: a clean, terminated stream.
    assert_eq!(client.next_chunk().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_bytes_pass_through_untouched() {
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    conn.head_chunked("text/event-stream", &[]).await;
    client.response_head().await;
    let event: &[u8] = b"data: \xff\xfe\xc3\x28 \x80\n\n";
    conn.chunk(event).await;
    assert_eq!(client.next_chunk().await.as_deref(), Some(event));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_event_without_newline_passes_with_bounded_memory() {
    use tokio::io::AsyncReadExt;
    let mut up = Upstream::start().await;
    let proxy = proxy_for(&up).await;
    let pid = proxy.child.id();
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    conn.head_chunked("text/event-stream", &[]).await;
    client.response_head().await;
    let before = rss_kib(pid);

    const TOTAL: usize = 100 * 1024 * 1024;
    let piece = vec![b'x'; 256 * 1024];
    let writer = tokio::spawn(async move {
        conn.chunk(b"data: ").await;
        let mut sent = 0;
        while sent < TOTAL {
            conn.chunk(&piece).await;
            sent += piece.len();
        }
        conn.chunk(b"\n\n").await;
        conn
    });
    // Read the client side raw (chunk framing included) and count payload
    // bytes by scanning for the event's end; peak RSS is sampled meanwhile.
    let mut seen = 0usize;
    let mut peak = before;
    let mut buf = vec![0u8; 1 << 16];
    let mut tail: Vec<u8> = Vec::new();
    within("the 100 MB event to arrive", async {
        loop {
            let n = client.stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "client connection closed early");
            seen += buf[..n].iter().filter(|b| **b == b'x').count();
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 64 {
                tail.drain(..tail.len() - 64);
            }
            peak = peak.max(rss_kib(pid));
            if seen >= TOTAL && tail.windows(4).any(|w| w == b"\n\n\r\n") {
                break;
            }
        }
    })
    .await;
    let _conn = writer.await.expect("writer");
    assert_eq!(seen, TOTAL);
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "proxy RSS grew by {growth} KiB while relaying a 100 MB event"
    );
}

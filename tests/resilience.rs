//! Streams that survive: upstream failover with `Last-Event-ID`
//! (`resume = "on-error"`), the drain window, the connection limit, and a
//! stuck client among healthy ones. The real binary, real sockets; the
//! resume test uses two `ssegate bench upstream` processes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------
// Harness

/// What one SSE block (up to a blank line) was.
#[derive(Debug, PartialEq, Eq)]
enum Block {
    Event(u64),
    Comment,
    Retry(u64),
}

/// Reads an HTTP/1.1 chunked event stream block by block.
struct SseStream {
    client: H1Client<TcpStream>,
    pending: Vec<u8>,
}

impl SseStream {
    async fn open(proxy: SocketAddr, path: &str) -> SseStream {
        let mut client = H1Client::connect(proxy).await;
        client.get(path, &[("accept", "text/event-stream")]).await;
        SseStream::on(client).await
    }

    /// The stream on `client`, whose request is sent: reads the head.
    async fn on(mut client: H1Client<TcpStream>) -> SseStream {
        let head = client.response_head().await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        SseStream {
            client,
            pending: Vec::new(),
        }
    }

    /// The next block, or `None` at the stream's clean end (last chunk).
    async fn next(&mut self) -> Option<Block> {
        loop {
            if let Some(end) = find(&self.pending, b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            let chunk = self.client.next_chunk().await?;
            self.pending.extend_from_slice(&chunk);
        }
    }

    /// The next event's id, counting comments skipped on the way.
    async fn next_id(&mut self, comments: &mut usize) -> u64 {
        loop {
            match self.next().await {
                Some(Block::Event(id)) => return id,
                Some(Block::Comment) => *comments += 1,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }
}

fn parse_block(block: &[u8]) -> Block {
    let text = std::str::from_utf8(block).expect("utf-8 block");
    if let Some(ms) = text.strip_prefix("retry: ") {
        return Block::Retry(ms.trim().parse().expect("retry value"));
    }
    if text.starts_with(':') {
        return Block::Comment;
    }
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("block without id: {text:?}"));
    Block::Event(id.parse().expect("numeric id"))
}

/// The value of the sample `name` (with its labels, as exposed) on the admin listener.
async fn metric(proxy: &Proxy, sample: &str) -> f64 {
    let admin = proxy.admin_addr.expect("admin listener");
    let mut client = H1Client::connect(admin).await;
    client.get("/metrics", &[]).await;
    let head = client.response_head().await;
    let body = client.body(&head).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits until the sample reaches `want`, failing after `WAIT`.
async fn metric_reaches(proxy: &Proxy, sample: &str, want: f64) {
    let start = Instant::now();
    loop {
        let v = metric(proxy, sample).await;
        if v >= want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{sample} stayed at {v}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn resume_config(servers: &[SocketAddr], route_extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    config_with(
        "2s",
        "heartbeat = \"100ms\"",
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [{}]\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\nresume = \"on-error\"\n{route_extra}\n",
            servers.join(", ")
        ),
    )
}

// ---------------------------------------------------------------------------
// Resume

/// A proxy with a resumable route (`route_extra` added) in front of the
/// scripted upstream `up`, and an event stream through it whose upstream
/// connection has sent `first` (one event, id included).
async fn resumable_stream(
    up: &mut Upstream,
    route_extra: &str,
    first: &[u8],
) -> (Proxy, SseStream, UpConn) {
    let mut cfg = ProxyConfig::new(resume_config(&[up.addr], route_extra));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/", &[("accept", "text/event-stream")]).await;
    let mut conn = up.next().await;
    conn.head_chunked("text/event-stream", &[]).await;
    conn.chunk(first).await;
    (proxy, SseStream::on(client).await, conn)
}

/// Two bench upstreams; the first is killed mid-stream. The client's one
/// connection carries consecutive ids across the failover, with heartbeats
/// while no upstream was there.
#[tokio::test]
async fn a_killed_upstream_is_resumed_on_the_other_without_gap_or_duplicate() {
    let mut first = BenchUpstream::start("50").await;
    // The second server's port, not listening yet: the stream starts on the first.
    let second_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cfg = ProxyConfig::new(resume_config(
        &[first.addr, second_addr],
        "resume_backoff = \"200ms\"\nresume_attempts = 5",
    ));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;

    let mut sse = SseStream::open(proxy.addr, "/events").await;
    let mut comments = 0;
    let mut last = sse.next_id(&mut comments).await;
    for _ in 0..10 {
        let id = sse.next_id(&mut comments).await;
        assert_eq!(id, last + 1, "before the failover");
        last = id;
    }
    let second = BenchUpstream::start_with("50", &["--listen", &second_addr.to_string()]).await;
    assert_eq!(second.addr, second_addr);
    first.kill().await;
    let killed_after = last;

    // Every id from here on follows the previous one, whichever server sent it.
    comments = 0;
    let mut heartbeats_in_outage = None;
    while last < killed_after + 40 {
        let id = within("the stream to continue", sse.next_id(&mut comments)).await;
        assert_eq!(
            id,
            last + 1,
            "gap or duplicate across the failover (killed after {killed_after})"
        );
        if heartbeats_in_outage.is_none() && comments > 0 {
            heartbeats_in_outage = Some(comments);
        }
        last = id;
    }
    assert!(
        heartbeats_in_outage.is_some(),
        "no heartbeat while the upstream was away"
    );
    assert_eq!(
        metric(
            &proxy,
            "ssegate_resumes_total{result=\"succeeded\",route=\"/\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            "ssegate_resumes_total{result=\"failed\",route=\"/\"}"
        )
        .await,
        0.0
    );
    let attempts = metric(&proxy, "ssegate_resume_attempts_total{route=\"/\"}").await;
    assert!(attempts >= 1.0, "{attempts}");
    assert_eq!(
        metric(&proxy, "ssegate_streams_open{route=\"/\"}").await,
        1.0,
        "the client's stream is still the one open stream"
    );
}

/// No server left: after `resume_attempts` the client's stream ends cleanly
/// with a `retry:` hint at an event boundary.
#[tokio::test]
async fn resume_gives_up_with_a_retry_hint() {
    let mut up = Upstream::start().await;
    let (proxy, mut sse, conn) = resumable_stream(
        &mut up,
        "resume_backoff = \"100ms\"\nresume_attempts = 2",
        b"id: 7\ndata: a\n\n",
    )
    .await;
    let mut comments = 0;
    assert_eq!(sse.next_id(&mut comments).await, 7);
    // The upstream goes away mid-stream (a truncated chunked body); each
    // reconnection finds the server answering 503.
    drop(conn);
    for _ in 0..2 {
        let mut again = up.next().await;
        assert_eq!(again.req.header("last-event-id"), Some("7"));
        again
            .write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .await;
    }
    let retry = loop {
        match within("the retry hint", sse.next()).await {
            Some(Block::Comment) => continue,
            Some(Block::Retry(ms)) => break ms,
            other => panic!("expected retry:, got {other:?}"),
        }
    };
    // resume_backoff with up to half of it as jitter.
    assert!((100..=150).contains(&retry), "{retry}");
    assert_eq!(sse.next().await, None, "a clean end after the hint");
    metric_reaches(
        &proxy,
        "ssegate_resumes_total{result=\"failed\",route=\"/\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&proxy, "ssegate_resume_attempts_total{route=\"/\"}").await,
        2.0
    );
    assert_eq!(
        metric(
            &proxy,
            "ssegate_stream_ends_total{reason=\"resume_failed\",route=\"/\"}"
        )
        .await,
        1.0
    );
}

/// A POST is never repeated: its upstream failing aborts the client's stream.
#[tokio::test]
async fn a_post_stream_is_not_resumed() {
    let mut up = Upstream::start().await;
    let mut cfg = ProxyConfig::new(resume_config(&[up.addr], "resume_backoff = \"100ms\""));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client
        .send(b"POST /chat HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\ncontent-length: 2\r\n\r\nhi")
        .await;
    let mut conn = up.next().await;
    assert_eq!(conn.req.method, "POST");
    conn.head_chunked("text/event-stream", &[]).await;
    conn.chunk(b"id: 1\ndata: token\n\n").await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let first = client.next_chunk().await.expect("the first event");
    assert_eq!(&first[..], b"id: 1\ndata: token\n\n");
    drop(conn);
    // The client's connection is closed without the last chunk.
    let rest = client.until_closed().await;
    assert!(!rest.ends_with(b"0\r\n\r\n"), "{rest:?}");
    metric_reaches(
        &proxy,
        "ssegate_stream_ends_total{reason=\"upstream_error\",route=\"/\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&proxy, "ssegate_resume_attempts_total{route=\"/\"}").await,
        0.0
    );
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Events without ids cannot be resumed without repeating them.
#[tokio::test]
async fn a_stream_without_ids_is_not_resumed() {
    let mut up = Upstream::start().await;
    let mut cfg = ProxyConfig::new(resume_config(&[up.addr], "resume_backoff = \"100ms\""));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/", &[("accept", "text/event-stream")]).await;
    let mut conn = up.next().await;
    conn.head_chunked("text/event-stream", &[]).await;
    conn.chunk(b"data: no id\n\n").await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(
        &client.next_chunk().await.expect("the event")[..],
        b"data: no id\n\n"
    );
    drop(conn);
    let rest = client.until_closed().await;
    assert!(!rest.ends_with(b"0\r\n\r\n"), "{rest:?}");
    assert_eq!(
        metric(&proxy, "ssegate_resume_attempts_total{route=\"/\"}").await,
        0.0
    );
}

// ---------------------------------------------------------------------------
// Drain window

/// On SIGTERM, streams end at moments spread over `drain_window`, each with
/// a `retry:` hint and a clean end.
///
/// The end moments are taken when the client reads them, so load can only
/// delay them: the upper bound is the window plus a generous slack, which
/// `grace_period` (whose end cuts whatever is left) is made longer than.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spreads_stream_ends_over_the_drain_window() {
    const DRAIN_WINDOW: Duration = Duration::from_secs(2);
    // Well before the end of the grace period (8 s, less 250 ms).
    const LATEST: Duration = Duration::from_secs(6);
    let up = BenchUpstream::start("50").await;
    let cfg = config_with(
        "2s",
        &format!(
            "drain_window = \"{}s\"\nshutdown_retry = \"1s\"\nshutdown_retry_jitter = \"0s\"",
            DRAIN_WINDOW.as_secs()
        ),
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
            up.addr
        ),
    )
    .replace("grace_period = \"2s\"", "grace_period = \"8s\"");
    let mut proxy = Proxy::start(ProxyConfig::new(cfg)).await;
    const STREAMS: usize = 20;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut sse = SseStream::open(proxy.addr, "/").await;
        let mut comments = 0;
        sse.next_id(&mut comments).await;
        streams.push(sse);
    }
    let signalled = Instant::now();
    proxy.signal("TERM");
    let ends = futures_join(streams.into_iter().map(|mut sse| async move {
        loop {
            match sse.next().await {
                Some(Block::Retry(ms)) => {
                    let at = signalled.elapsed();
                    assert_eq!(ms, 1000);
                    assert_eq!(sse.next().await, None, "clean end after retry:");
                    return at;
                }
                Some(_) => continue,
                None => panic!("ended without retry:"),
            }
        }
    }))
    .await;
    let first = ends.iter().min().unwrap();
    let last = ends.iter().max().unwrap();
    assert!(
        *last < LATEST,
        "all within the window ({DRAIN_WINDOW:?}, read by {LATEST:?}): {ends:?}"
    );
    assert!(
        *last - *first >= Duration::from_millis(500),
        "ends not spread: {ends:?}"
    );
    // The process exits after the grace period.
    proxy.wait_exit_within(Duration::from_secs(15)).await;
}

/// Awaits all futures concurrently, in order of the input.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(within("every stream to end", h).await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------
// Connection limit

/// Past `max_connections` a new connection is closed at once; a place
/// freed is a place usable again. Streams hold their connection's place.
#[tokio::test]
async fn connections_past_the_limit_are_closed() {
    let up = BenchUpstream::start("20").await;
    let mut cfg = ProxyConfig::new(
        basic_config(up.addr, "").replace("[stream]", "[limits]\nmax_connections = 2\n\n[stream]"),
    );
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    // One event stream and one idle keep-alive connection fill it.
    let mut sse = SseStream::open(proxy.addr, "/").await;
    let mut comments = 0;
    sse.next_id(&mut comments).await;
    let mut idle = H1Client::connect(proxy.addr).await;
    idle.get("/?count=1", &[]).await;
    let head = idle.response_head().await;
    assert_eq!(head.status, 200);
    idle.body(&head).await;
    metric_reaches(&proxy, "ssegate_connections_open", 2.0).await;

    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /?count=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = within("the third connection to be closed", third.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(
        metric(&proxy, "ssegate_connections_rejected_total").await,
        1.0
    );

    // The stream's connection closing gives its place back.
    drop(sse);
    let start = Instant::now();
    while metric(&proxy, "ssegate_connections_open").await > 1.0 {
        assert!(start.elapsed() < WAIT, "the stream's place never came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/?count=1", &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    assert_eq!(
        metric(&proxy, "ssegate_connections_rejected_total").await,
        1.0
    );
}

// ---------------------------------------------------------------------------
// Slow and stuck clients

/// A proxy with `stream_extra` in `[stream]` and two routes: `/stuck` to
/// the bench upstream `stuck` and everything else to `healthy`.
async fn two_route_proxy(healthy: SocketAddr, stuck: SocketAddr, stream_extra: &str) -> Proxy {
    let mut cfg = ProxyConfig::new(config_with(
        "2s",
        stream_extra,
        &format!(
            "[[upstream]]\nname = \"healthy\"\nservers = [\"{healthy}\"]\n\n\
             [[upstream]]\nname = \"stuck\"\nservers = [\"{stuck}\"]\n\n\
             [[route]]\npath = \"/stuck\"\nupstream = \"stuck\"\n\n\
             [[route]]\npath = \"/\"\nupstream = \"healthy\"\n"
        ),
    ));
    cfg.admin = true;
    Proxy::start(cfg).await
}

/// The id of the next event `ssegate bench upstream` at `origin` publishes,
/// read on a stream of its own: an event the proxy's streams of that
/// upstream can only have received after this call began.
async fn origin_current_id(origin: SocketAddr) -> u64 {
    let mut sse = SseStream::open(origin, "/").await;
    let mut comments = 0;
    sse.next_id(&mut comments).await
}

/// Reads `sse` from just after `last`, each id following the previous one,
/// until it has read the id that `target` eventually names. Returns the
/// number of events read.
async fn read_consecutively_until(
    sse: &mut SseStream,
    mut last: u64,
    mut target: tokio::sync::watch::Receiver<Option<u64>>,
) -> u64 {
    let mut comments = 0;
    let mut received = 0u64;
    loop {
        let id = sse.next_id(&mut comments).await;
        assert_eq!(id, last + 1, "a healthy stream lost an event");
        last = id;
        received += 1;
        if target.borrow_and_update().is_some_and(|t| last >= t) {
            return received;
        }
    }
}

/// A connection to the proxy that sends `GET path` for an event stream,
/// reads the response head and then nothing, with a small receive buffer.
async fn stuck_client(proxy: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("the stuck client's head", stream.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    stream
}

/// One client stops reading among 100 that read: the 100 keep receiving
/// every event, the stuck one holds at most its budget, and after
/// `client_write_timeout` without progress its stream is ended and counted,
/// once; none of the 100 is.
///
/// The stuck client reads 2 KiB events at 100/s, so its budget fills within
/// a second. The healthy ones read 100-byte events at 100/s from another
/// upstream (another route): about 15 KB/s, so the proxy's send buffer and
/// the client's receive buffer hold several seconds of their events, and a
/// reader starved by a loaded machine is never `client_write_timeout`
/// behind. Nothing is measured as a rate: each healthy reader checks that
/// every id follows the previous one, from before the stuck client came
/// until an event published after the stuck stream was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_bounded_and_cut_while_100_others_flow() {
    let stuck_origin = BenchUpstream::start_with("100", &["--payload", "2048"]).await;
    let healthy_origin = BenchUpstream::start("100").await;
    let proxy = two_route_proxy(
        healthy_origin.addr,
        stuck_origin.addr,
        "client_write_timeout = \"2s\"\nclient_buffer = \"64KiB\"",
    )
    .await;

    let mut healthy = Vec::new();
    for _ in 0..100 {
        let mut sse = SseStream::open(proxy.addr, "/").await;
        let mut comments = 0;
        let first = sse.next_id(&mut comments).await;
        healthy.push((sse, first));
    }
    let baseline_rss = rss_kib(proxy.child.id());
    let mut stuck = stuck_client(proxy.addr, "/stuck").await;
    let stuck_since = Instant::now();

    // The healthy ones read on, each checking it misses nothing, until they
    // hold an event published after the stuck stream was cut.
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|(mut sse, first)| {
            let target = target_rx.clone();
            tokio::spawn(async move {
                let received = read_consecutively_until(&mut sse, first, target).await;
                // The stream is kept open: the metrics below count it.
                (sse, first, received)
            })
        })
        .collect();
    let mut peak_rss = baseline_rss;
    let cut = Instant::now();
    loop {
        peak_rss = peak_rss.max(rss_kib(proxy.child.id()));
        if metric(
            &proxy,
            "ssegate_client_write_timeouts_total{route=\"/stuck\"}",
        )
        .await
            >= 1.0
        {
            break;
        }
        assert!(cut.elapsed() < WAIT, "the stuck stream was never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_after = stuck_since.elapsed();
    assert!(
        cut_after >= Duration::from_secs(2),
        "cut before client_write_timeout: {cut_after:?}"
    );
    let target = origin_current_id(healthy_origin.addr).await;
    target_tx.send(Some(target)).unwrap();
    let mut still_open = Vec::new();
    for r in readers {
        let (sse, first, received) = within("a healthy reader to reach the target", r)
            .await
            .unwrap();
        still_open.push(sse);
        // Every event from the one read before the stuck client came to
        // one published after it was cut, none missing.
        assert!(
            first + received >= target,
            "a healthy stream stopped at {} before {target}",
            first + received
        );
    }
    // What the stuck client can still read is what was queued for it: its
    // own receive buffer plus the proxy's bounded send buffer and one chunk.
    let mut queued = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        match within("the stuck connection to close", stuck.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => queued += n,
        }
    }
    assert!(
        queued < 200 * 1024,
        "{queued} bytes were queued for a client that read nothing"
    );
    assert!(
        queued > 8 * 1024,
        "the stuck client got only {queued} bytes"
    );
    let growth = peak_rss.saturating_sub(baseline_rss);
    assert!(
        growth < 4 * 1024,
        "proxy RSS grew by {growth} KiB while a client was stuck"
    );
    metric_reaches(
        &proxy,
        "ssegate_stream_ends_total{reason=\"client_write_timeout\",route=\"/stuck\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &proxy,
            "ssegate_stream_ends_total{reason=\"client_write_timeout\",route=\"/stuck\"}"
        )
        .await,
        1.0,
        "the stuck stream is ended once"
    );
    assert_eq!(
        metric(
            &proxy,
            "ssegate_client_write_timeouts_total{route=\"/stuck\"}"
        )
        .await,
        1.0
    );
    // None of the 100 was cut: all still open, no timeout on their route.
    assert_eq!(
        metric(
            &proxy,
            "ssegate_stream_ends_total{reason=\"client_write_timeout\",route=\"/\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(&proxy, "ssegate_client_write_timeouts_total{route=\"/\"}").await,
        0.0
    );
    assert_eq!(
        metric(&proxy, "ssegate_streams_open{route=\"/\"}").await,
        100.0
    );
    drop(still_open);
}

/// HTTP/2: one stream left unread on a connection whose other stream is
/// read. The unread one stalls on its flow-control window and is reset
/// after `client_write_timeout`; its neighbour misses nothing.
///
/// The unread stream (`/stuck`) carries 2 KiB events at 100/s and fills
/// its 16 KiB window at once; the read one carries 100-byte events at 20/s,
/// seconds of events per window, so a reader starved by a loaded machine
/// is not cut as stuck. The read stream is read without gap until an event
/// published after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_h2_stream_is_cut_and_its_neighbour_flows() {
    let stuck_origin = BenchUpstream::start_with("100", &["--payload", "2048"]).await;
    let healthy_origin = BenchUpstream::start("20").await;
    let proxy = two_route_proxy(
        healthy_origin.addr,
        stuck_origin.addr,
        "client_write_timeout = \"1s\"\nheartbeat = \"off\"",
    )
    .await;
    // A connection window far larger than the stream windows, so that the
    // unread stream exhausts only its own.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_connection_window_size(16 << 20)
        .initial_window_size(16 * 1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = proxy.addr.to_string();
    let (head, mut unread) = h2_get(&mut send.clone(), &authority, "/stuck").await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    let (head, mut read) = h2_get(&mut send.clone(), &authority, "/").await;
    assert_eq!(head.status, 200);

    let (target_tx, mut target_rx) = tokio::sync::watch::channel(None::<u64>);
    let reader = tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut last: Option<u64> = None;
        let mut events = 0u64;
        loop {
            let data = within("h2 data on the read stream", read.data())
                .await
                .expect("the read stream ended")
                .expect("the read stream failed");
            let _ = read.flow_control().release_capacity(data.len());
            pending.extend_from_slice(&data);
            while let Some(end) = find(&pending, b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                if let Block::Event(id) = parse_block(&block) {
                    if let Some(prev) = last {
                        assert_eq!(id, prev + 1, "the read stream lost an event");
                    }
                    last = Some(id);
                    events += 1;
                }
            }
            if let (Some(t), Some(l)) = (*target_rx.borrow_and_update(), last) {
                if l >= t {
                    return events;
                }
            }
        }
    });
    loop {
        if metric(
            &proxy,
            "ssegate_client_write_timeouts_total{route=\"/stuck\"}",
        )
        .await
            >= 1.0
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "the unread stream was never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = started.elapsed();
    assert!(cut >= Duration::from_secs(1), "cut too early: {cut:?}");
    target_tx
        .send(Some(origin_current_id(healthy_origin.addr).await))
        .unwrap();
    // The unread stream holds what its window let through, then its reset.
    let mut buffered = 0;
    let end = loop {
        match within("the unread stream's end", unread.data()).await {
            Some(Ok(d)) => buffered += d.len(),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(end.is_some(), "the unread stream ended cleanly");
    assert!(
        buffered <= 16 * 1024,
        "{buffered} bytes beyond the stream window"
    );
    let events = within("the read stream to pass the cut", reader)
        .await
        .unwrap();
    assert!(events >= 1, "the read stream got no event");
    assert_eq!(
        metric(
            &proxy,
            "ssegate_stream_ends_total{reason=\"client_write_timeout\",route=\"/\"}"
        )
        .await,
        0.0,
        "the read stream was cut as stuck"
    );
}

/// An upstream that stays silent for the route's `idle_timeout` is
/// replaced like a failed one: the old connection is dropped and the
/// stream continues from a new one with `Last-Event-ID`.
#[tokio::test]
async fn an_idle_upstream_is_resumed_on_a_new_connection() {
    let mut up = Upstream::start().await;
    let (proxy, mut sse, mut first) = resumable_stream(
        &mut up,
        "idle_timeout = \"300ms\"\nresume_backoff = \"100ms\"",
        b"id: 1\ndata: a\n\n",
    )
    .await;
    let mut comments = 0;
    assert_eq!(sse.next_id(&mut comments).await, 1);
    // Silence: after 300 ms the proxy gives this connection up and asks again.
    let mut second = up.next().await;
    assert_eq!(second.req.header("last-event-id"), Some("1"));
    within("the silent connection to be closed", first.closed()).await;
    second.head_chunked("text/event-stream", &[]).await;
    second.chunk(b"id: 2\ndata: b\n\n").await;
    assert_eq!(sse.next_id(&mut comments).await, 2);
    assert_eq!(
        metric(
            &proxy,
            "ssegate_resumes_total{result=\"succeeded\",route=\"/\"}"
        )
        .await,
        1.0
    );
}

/// No upstream server reachable: an `EventSource` (GET, `Accept:
/// text/event-stream`) gets the shed answer, 200 with only `retry:`, which
/// it retries, where a 502 would end it for good; anything else gets 502.
#[tokio::test]
async fn an_eventsource_is_told_to_retry_when_no_upstream_is_reachable() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cfg = ProxyConfig::new(basic_config(dead, "").replace(
        "[stream]",
        "[limits]\nshed_retry = \"2s\"\nshed_retry_jitter = \"0s\"\n\n[stream]",
    ));
    cfg.admin = true;
    let proxy = Proxy::start(cfg).await;
    let mut client = H1Client::connect(proxy.addr).await;
    client
        .get("/events", &[("accept", "text/event-stream")])
        .await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(&client.body(&head).await[..], b"retry: 2000\n\n");
    let mut plain = H1Client::connect(proxy.addr).await;
    plain.get("/events", &[]).await;
    assert_eq!(plain.response_head().await.status, 502);
    assert_eq!(
        metric(
            &proxy,
            "ssegate_streams_shed_total{limit=\"upstream\",route=\"/\"}"
        )
        .await,
        1.0
    );
}

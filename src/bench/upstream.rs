//! The benchmark origin (`ssegate bench upstream`): one ticker broadcasts
//! every event to all subscribers, over HTTP/1.1 and h2c on one port.
//!
//! ```text
//!  ticker ──Frame (built once: SSE bytes + HTTP/1.1 chunk)──▶ Hub
//!                                                             │ ring: the last 4096, for Last-Event-ID
//!                                                             │ broadcast: to every live subscriber
//!  accept ─▶ sniff preface ─┬─ "PRI * HTTP/2.0" ─▶ h2 server ─┤
//!                           └─ else ─▶ HTTP/1.1 loop ─────────┘ (keep-alive)
//! ```
//!
//! Events are `id: <n>\ndata: {"seq":n,"ts_us":<unix µs>,"pad":"xxx…"}\n\n`:
//! one global sequence, the clock read once per tick, the data padded to
//! `--payload` bytes. A subscriber that falls [`KEEP`] events behind has its
//! stream ended without a clean end (logged). `?count=N` ends a stream
//! cleanly after N events, `?idle=1` sends only the head, `Last-Event-ID: K`
//! replays the kept events after K under the same lock that publishes, so
//! the replay and the live events meet without gap or duplicate. POST reads
//! the body and streams 20 (or `?count=N`) token events 20 ms apart.
//!
//! `GET /_stats` answers a JSON object of what the origin has served
//! ([`STATS_PATH`], [`Served`]): the connections that carried an event
//! stream and the event streams themselves, each accepted in total, open
//! now and at most open at once, and the events published. A benchmark
//! reads it to count the upstream connections a proxy opened;
//! `?reset_max=1` then restarts the high-water marks from what is open.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;

use super::args::BenchUpstreamArgs;
use super::http1::{self, BodyDecoder, Framing, HttpError, RequestHead};
use super::stats::unix_micros;
use super::{sys, EXIT_USAGE};
use crate::chunked::{encode_chunk, LAST_CHUNK};

/// Events kept for `Last-Event-ID`, and how far a subscriber may lag.
pub const KEEP: usize = 4096;

/// Token events a POST gets unless `?count=N` says otherwise, and their pace.
const TOKENS: u64 = 20;
const TOKEN_INTERVAL: Duration = Duration::from_millis(20);

/// Subscribers the open-files limit should allow for.
const TARGET_SUBSCRIBERS: u64 = 20_000;

/// Accept queue length asked for (Linux caps it at `net.core.somaxconn`).
const ACCEPT_BACKLOG: u32 = 65_535;

/// Highest `--rate` and `--payload` accepted.
const MAX_RATE: f64 = 1_000_000.0;
const MAX_PAYLOAD: usize = 1 << 20;

/// The path of the counters (`GET`): JSON, not an event stream.
pub const STATS_PATH: &str = "/_stats";

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const SSE_HEAD_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
/// For HTTP/1.0 clients: no chunked encoding, the body ends with the connection.
const SSE_HEAD_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nconnection: close\r\n\r\n";

/// Validated `bench upstream` settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub listen: String,
    pub period: Duration,
    pub payload: usize,
    /// The id of the first event published.
    pub first_id: u64,
}

impl UpstreamConfig {
    pub fn from_args(args: &BenchUpstreamArgs) -> Result<Self, String> {
        if !(args.rate > 0.0 && args.rate <= MAX_RATE) {
            return Err(format!(
                "--rate must be more than 0 and at most {MAX_RATE} events per second"
            ));
        }
        if args.first_id == 0 {
            return Err("--first-id must be at least 1".into());
        }
        if args.payload > MAX_PAYLOAD {
            return Err(format!("--payload must be at most {MAX_PAYLOAD} bytes"));
        }
        Ok(UpstreamConfig {
            listen: args.listen.clone(),
            period: Duration::from_secs_f64(1.0 / args.rate),
            payload: args.payload,
            first_id: args.first_id,
        })
    }
}

/// `ssegate bench upstream`: serves until killed.
pub fn main(args: BenchUpstreamArgs) -> ExitCode {
    let config = match UpstreamConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ssegate bench upstream: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let limit = sys::raise_nofile_limit(TARGET_SUBSCRIBERS + sys::SPARE_FDS);
    if !limit.is_enough() {
        eprintln!(
            "ssegate bench upstream: {limit}: it can hold about {} subscribers; \
             raise it with ulimit -n",
            limit.soft.saturating_sub(sys::SPARE_FDS)
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssegate bench upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssegate bench upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds, prints `listening on ADDR`, starts the ticker and serves.
pub async fn serve(config: UpstreamConfig) -> io::Result<()> {
    let listener = listen(&config.listen).await.map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    let addr = listener.local_addr()?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    let hub = Arc::new(Hub::new());
    tokio::spawn(tick(
        hub.clone(),
        config.period,
        config.payload,
        config.first_id,
    ));
    let mut accept_errors = 0u64;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_connection(hub.clone(), tcp));
            }
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning,
                // and say so at the first error and then every hundredth.
                if accept_errors.is_multiple_of(100) {
                    log::warn!("accept: {e} ({} so far)", accept_errors + 1);
                }
                accept_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A listener with a deep accept queue: thousands of clients connecting
/// within a second must not overflow it (the kernel caps it at somaxconn).
async fn listen(addr: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

// ---------------------------------------------------------------------------
// Events and their distribution

/// One event, encoded once for every subscriber.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// The event as SSE text (an HTTP/2 DATA frame).
    pub sse: Bytes,
    /// The same as an HTTP/1.1 chunk.
    pub chunk: Bytes,
}

impl Frame {
    fn new(sse: Vec<u8>, seq: u64) -> Self {
        Frame {
            seq,
            chunk: encode_chunk(&sse).freeze(),
            sse: Bytes::from(sse),
        }
    }
}

/// `id: n` and the JSON data, padded with `x` to `payload` bytes of data.
pub fn event_text(seq: u64, ts_us: u64, payload: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{seq},\"ts_us\":{ts_us},\"pad\":\"");
    let tail = "\"}";
    let pad = payload.saturating_sub(head.len() + tail.len());
    let mut out = Vec::with_capacity(head.len() + pad + 32);
    out.extend_from_slice(format!("id: {seq}\ndata: {head}").as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// A token event of a POST reply.
fn token_text(i: u64) -> Vec<u8> {
    format!(
        "data: {{\"token\":\"tok{i}\",\"i\":{i},\"ts_us\":{}}}\n\n",
        unix_micros()
    )
    .into_bytes()
}

/// The ticker's output: a ring for replays and a broadcast for live events;
/// and the counters of what was served.
struct Hub {
    ring: Mutex<VecDeque<Arc<Frame>>>,
    live: broadcast::Sender<Arc<Frame>>,
    served: Served,
}

/// Things that come and go: how many came in total, how many are here now,
/// and the most there were at once (since the start or the last reset).
#[derive(Debug, Default)]
struct Gauge {
    accepted: AtomicU64,
    open: AtomicU64,
    open_max: AtomicU64,
}

impl Gauge {
    /// One more, until the returned guard is dropped.
    fn enter(&self) -> Held<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_max.fetch_max(open, Ordering::Relaxed);
        Held(self)
    }

    /// The high-water mark starts again from what is open now.
    fn reset_max(&self) {
        self.open_max
            .store(self.open.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "open": self.open.load(Ordering::Relaxed),
            "open_max": self.open_max.load(Ordering::Relaxed),
        })
    }
}

/// One entry of a [`Gauge`], counted out when dropped.
struct Held<'a>(&'a Gauge);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the origin served, for `GET /_stats`. Only openings and endings
/// are counted, never an event per subscriber, so the counters cost the
/// origin nothing measurable.
#[derive(Debug)]
struct Served {
    started: Instant,
    /// Connections that carried at least one event stream (a connection
    /// that only asked for `/_stats` is not one).
    connections: Gauge,
    /// Event-stream responses: live, idle and token streams alike.
    streams: Gauge,
    http1_streams: AtomicU64,
    http2_streams: AtomicU64,
    /// Events the ticker published (each once, whatever the subscribers).
    published: AtomicU64,
    /// Subscribers whose stream was ended for falling [`KEEP`] events behind.
    lagged: AtomicU64,
}

impl Served {
    fn new() -> Self {
        Served {
            started: Instant::now(),
            connections: Gauge::default(),
            streams: Gauge::default(),
            http1_streams: AtomicU64::new(0),
            http2_streams: AtomicU64::new(0),
            published: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        }
    }

    /// An event stream begins on HTTP/1.1 (`http2` false) or HTTP/2.
    fn stream(&self, http2: bool) -> Held<'_> {
        let by = if http2 {
            &self.http2_streams
        } else {
            &self.http1_streams
        };
        by.fetch_add(1, Ordering::Relaxed);
        self.streams.enter()
    }

    /// The `/_stats` body; `reset_max` then restarts the high-water marks.
    fn json(&self, reset_max: bool) -> String {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let body = serde_json::json!({
            "uptime_s": (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            "connections": self.connections.json(),
            "streams": self.streams.json(),
            "http1_streams": load(&self.http1_streams),
            "http2_streams": load(&self.http2_streams),
            "events_published": load(&self.published),
            "lagged": load(&self.lagged),
        });
        if reset_max {
            self.connections.reset_max();
            self.streams.reset_max();
        }
        format!("{body}\n")
    }
}

/// The subscriber fell this many events behind and lost them.
#[derive(Debug)]
struct Lagged(u64);

impl Hub {
    fn new() -> Self {
        Hub {
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
            live: broadcast::channel(KEEP).0,
            served: Served::new(),
        }
    }

    fn publish(&self, frame: Arc<Frame>) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(frame.clone());
        self.served.published.fetch_add(1, Ordering::Relaxed);
        // Under the lock, so a subscriber sees each frame either in its replay or live.
        let _ = self.live.send(frame);
    }

    /// A subscription to live events, after replaying the kept ones with id > `after`.
    fn subscribe(&self, after: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.live.subscribe();
        let replay = match after {
            Some(k) => ring.iter().filter(|f| f.seq > k).cloned().collect(),
            None => VecDeque::new(),
        };
        if let (Some(k), Some(oldest)) = (after, ring.front()) {
            if k + 1 < oldest.seq {
                log::warn!(
                    "Last-Event-ID {k} is older than the {KEEP} events kept: resuming at {}",
                    oldest.seq
                );
            }
        }
        Subscription {
            replay,
            live,
            last: after.unwrap_or(0),
        }
    }
}

struct Subscription {
    replay: VecDeque<Arc<Frame>>,
    live: broadcast::Receiver<Arc<Frame>>,
    /// The last id sent (or the client's Last-Event-ID): nothing at or below it is sent.
    last: u64,
}

impl Subscription {
    async fn next(&mut self) -> Result<Arc<Frame>, Lagged> {
        if let Some(frame) = self.replay.pop_front() {
            self.last = frame.seq;
            return Ok(frame);
        }
        loop {
            match self.live.recv().await {
                Ok(frame) if frame.seq <= self.last => {}
                Ok(frame) => {
                    self.last = frame.seq;
                    return Ok(frame);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(Lagged(n)),
                // The hub lives as long as the process.
                Err(broadcast::error::RecvError::Closed) => return Err(Lagged(0)),
            }
        }
    }
}

fn log_lag(hub: &Hub, lag: &Lagged) {
    hub.served.lagged.fetch_add(1, Ordering::Relaxed);
    log::warn!(
        "a subscriber fell {} events behind (more than {KEEP}): its stream is ended",
        lag.0
    );
}

/// Publishes an event every `period`, reading the clock once per tick.
async fn tick(hub: Arc<Hub>, period: Duration, payload: usize, first_id: u64) {
    let mut ticks = tokio::time::interval(period);
    // Fast rates fire several events per timer wake-up, keeping the average.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = first_id.saturating_sub(1);
    loop {
        ticks.tick().await;
        seq += 1;
        let frame = Frame::new(event_text(seq, unix_micros(), payload), seq);
        hub.publish(Arc::new(frame));
    }
}

// ---------------------------------------------------------------------------
// Requests

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Idle,
    Tokens,
    /// `GET /_stats`: the counters as JSON.
    Stats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: Kind,
    count: Option<u64>,
    last_event_id: Option<u64>,
    /// `?reset_max=1` on `/_stats`.
    reset_max: bool,
}

impl Request {
    fn new(method: &str, target: &str, last_event_id: Option<&str>) -> Self {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        let yes = |name: &str| param(name).is_some_and(|v| v != "0" && v != "false");
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let kind = if method.eq_ignore_ascii_case("POST") {
            Kind::Tokens
        } else if path == STATS_PATH {
            Kind::Stats
        } else if yes("idle") {
            Kind::Idle
        } else {
            Kind::Stream
        };
        Request {
            kind,
            count: param("count").and_then(|v| v.parse().ok()),
            last_event_id: last_event_id.and_then(|v| v.trim().parse().ok()),
            reset_max: yes("reset_max"),
        }
    }

    fn tokens(&self) -> u64 {
        self.count.unwrap_or(TOKENS)
    }
}

// ---------------------------------------------------------------------------
// Connections

async fn serve_connection(hub: Arc<Hub>, mut tcp: TcpStream) {
    let mut buf = BytesMut::with_capacity(512);
    match is_h2_preface(&mut tcp, &mut buf).await {
        // Boxed: an HTTP/1.1 subscriber, the common case, should not carry
        // the HTTP/2 connection's state inline.
        Ok(true) => Box::pin(serve_h2(hub, Prefixed::new(buf.freeze(), tcp))).await,
        Ok(false) => serve_h1(hub, tcp, buf).await,
        Err(e) => log::debug!("connection closed before a request: {e}"),
    }
}

/// Reads just enough to tell an HTTP/2 prior-knowledge preface from HTTP/1.1.
async fn is_h2_preface(tcp: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        if tcp.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// An I/O object that yields `prefix` before reading from `inner` (the
/// bytes read while sniffing the protocol).
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1

/// Serves requests on one connection until it closes or a response cannot
/// be followed by another.
async fn serve_h1(hub: Arc<Hub>, mut tcp: TcpStream, mut buf: BytesMut) {
    // Counted among the connections once it carries an event stream.
    let mut counted = None;
    loop {
        let head = match read_request_head(&mut tcp, &mut buf).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                let _ = write_bad_request(&mut tcp, &e).await;
                return;
            }
        };
        match serve_h1_request(&hub, &mut tcp, &mut buf, &head, &mut counted).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::debug!("HTTP/1.1 connection: {e}");
                return;
            }
        }
    }
}

/// Reads the next request head; `None` when the client closed in between.
async fn read_request_head(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<RequestHead>, String> {
    loop {
        // Blank lines before a request line are allowed (RFC 9112 §2.2).
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.advance(blank);
        match RequestHead::parse(buf) {
            Ok(Some((head, len))) => {
                buf.advance(len);
                return Ok(Some(head));
            }
            Ok(None) => {}
            Err(HttpError::HeadTooLarge) => return Err("request head too large".into()),
            Err(e) => return Err(e.to_string()),
        }
        match tcp.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn write_bad_request(tcp: &mut TcpStream, reason: &str) -> io::Result<()> {
    let body = format!("bad request: {reason}\n");
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await
}

/// Answers one request; `Ok(true)` when the connection can carry another.
async fn serve_h1_request<'h>(
    hub: &'h Hub,
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    connection: &mut Option<Held<'h>>,
) -> io::Result<bool> {
    let framing = match head.framing() {
        Ok(framing) => framing,
        Err(e) => {
            write_bad_request(tcp, &e.to_string()).await?;
            return Ok(false);
        }
    };
    let request = Request::new(
        &head.method,
        &head.target,
        head.headers.get("last-event-id"),
    );
    let minor = head.minor;
    let body_bytes = read_request_body(tcp, buf, framing).await?;
    log::debug!("{:?} with a body of {body_bytes} bytes", request.kind);
    let chunked = minor == 1;
    if request.kind == Kind::Stats {
        let body = hub.served.json(request.reset_max);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-cache\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(response.as_bytes()).await?;
        return Ok(chunked && !head.wants_close());
    }
    if connection.is_none() {
        *connection = Some(hub.served.connections.enter());
    }
    let _stream = hub.served.stream(false);
    let reusable = match request.kind {
        Kind::Stream => stream_h1(hub, tcp, buf, &request, chunked).await?,
        Kind::Idle => {
            tcp.write_all(sse_head(chunked)).await?;
            until_client_leaves(tcp, buf).await;
            false
        }
        Kind::Tokens => tokens_h1(tcp, request.tokens(), chunked).await?,
        // Answered above.
        Kind::Stats => true,
    };
    Ok(reusable && chunked && !head.wants_close())
}

fn sse_head(chunked: bool) -> &'static [u8] {
    if chunked {
        SSE_HEAD_CHUNKED
    } else {
        SSE_HEAD_CLOSE
    }
}

/// Reads (and counts) a request body framed by `framing`.
async fn read_request_body(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
) -> io::Result<u64> {
    let mut decoder = BodyDecoder::new(framing);
    let mut total = 0u64;
    while !decoder.is_done() {
        if !buf.is_empty() {
            let progress = decoder
                .decode(&buf[..], |piece| total += piece.len() as u64)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if progress.done {
                buf.advance(progress.consumed);
                return Ok(total);
            }
            buf.clear();
        }
        if tcp.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(total)
}

/// Streams live events; `Ok(true)` after a clean end (`?count=N`).
async fn stream_h1(
    hub: &Hub,
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    request: &Request,
    chunked: bool,
) -> io::Result<bool> {
    tcp.write_all(sse_head(chunked)).await?;
    let mut subscription = hub.subscribe(request.last_event_id);
    let (mut reader, mut writer) = tcp.split();
    let mut sent = 0u64;
    while request.count.is_none_or(|count| sent < count) {
        let next = tokio::select! {
            next = subscription.next() => next,
            () = until_client_leaves(&mut reader, buf) => return Ok(false),
        };
        match next {
            Ok(frame) => {
                let bytes = if chunked { &frame.chunk } else { &frame.sse };
                writer.write_all(bytes).await?;
            }
            Err(lag) => {
                log_lag(hub, &lag);
                return Ok(false);
            }
        }
        sent += 1;
    }
    if chunked {
        writer.write_all(LAST_CHUNK).await?;
    }
    Ok(chunked)
}

/// Streams a POST's token events, then ends cleanly.
async fn tokens_h1(tcp: &mut TcpStream, count: u64, chunked: bool) -> io::Result<bool> {
    tcp.write_all(sse_head(chunked)).await?;
    for i in 1..=count {
        tokio::time::sleep(TOKEN_INTERVAL).await;
        let token = token_text(i);
        if chunked {
            tcp.write_all(&encode_chunk(&token)).await?;
        } else {
            tcp.write_all(&token).await?;
        }
    }
    if chunked {
        tcp.write_all(LAST_CHUNK).await?;
    }
    Ok(chunked)
}

/// Resolves when the client closes (or errs). Bytes it sends meanwhile, a
/// pipelined request, are kept in `buf`; a flood past [`http1::MAX_HEAD`]
/// counts as leaving.
async fn until_client_leaves<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) {
    loop {
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) if buf.len() > http1::MAX_HEAD => return,
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 (h2c)

async fn serve_h2<S>(hub: Arc<Hub>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // No SETTINGS_MAX_CONCURRENT_STREAMS: as many streams per connection as
    // the client opens.
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(io)
        .await;
    let mut connection = match handshake {
        Ok(c) => c,
        Err(e) => {
            log::debug!("HTTP/2 handshake: {e}");
            return;
        }
    };
    // Counted among the connections once it carries an event stream.
    let mut counted = None;
    while let Some(accepted) = connection.accept().await {
        match accepted {
            Ok((request, respond)) => {
                if counted.is_none() && request.uri().path() != STATS_PATH {
                    counted = Some(hub.served.connections.enter());
                }
                tokio::spawn(serve_h2_stream(hub.clone(), request, respond));
            }
            Err(e) => {
                log::debug!("HTTP/2 connection: {e}");
                return;
            }
        }
    }
}

async fn serve_h2_stream(
    hub: Arc<Hub>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, mut body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let request = Request::new(parts.method.as_str(), target, last_event_id);
    let result = async {
        let body_bytes = drain_h2_body(&mut body).await?;
        log::debug!("{:?} with a body of {body_bytes} bytes", request.kind);
        let content_type = match request.kind {
            Kind::Stats => "application/json",
            _ => "text/event-stream",
        };
        let head = http::Response::builder()
            .status(200)
            .header("content-type", content_type)
            .header("cache-control", "no-cache")
            .body(())
            .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
        let mut send = respond.send_response(head, false)?;
        if request.kind == Kind::Stats {
            let stats = Bytes::from(hub.served.json(request.reset_max));
            return send.send_data(stats, true);
        }
        let _stream = hub.served.stream(true);
        match request.kind {
            Kind::Stream => stream_h2(&hub, &mut send, &request).await,
            Kind::Idle => poll_fn(|cx| send.poll_reset(cx)).await.map(drop),
            Kind::Tokens => tokens_h2(&mut send, request.tokens()).await,
            // Answered above.
            Kind::Stats => Ok(()),
        }
    };
    if let Err(e) = result.await {
        log::debug!("HTTP/2 stream: {e}");
    }
}

async fn drain_h2_body(body: &mut RecvStream) -> Result<u64, h2::Error> {
    let mut total = 0u64;
    while let Some(data) = body.data().await {
        let data = data?;
        total += data.len() as u64;
        let _ = body.flow_control().release_capacity(data.len());
    }
    Ok(total)
}

async fn stream_h2(
    hub: &Hub,
    send: &mut SendStream<Bytes>,
    request: &Request,
) -> Result<(), h2::Error> {
    let mut subscription = hub.subscribe(request.last_event_id);
    let mut sent = 0u64;
    while request.count.is_none_or(|count| sent < count) {
        let next = tokio::select! {
            next = subscription.next() => next,
            reset = poll_fn(|cx| send.poll_reset(cx)) => return reset.map(drop),
        };
        match next {
            Ok(frame) => send_when_allowed(send, frame.sse.clone()).await?,
            Err(lag) => {
                log_lag(hub, &lag);
                send.send_reset(h2::Reason::CANCEL);
                return Ok(());
            }
        }
        sent += 1;
    }
    send.send_data(Bytes::new(), true)
}

async fn tokens_h2(send: &mut SendStream<Bytes>, count: u64) -> Result<(), h2::Error> {
    for i in 1..=count {
        tokio::time::sleep(TOKEN_INTERVAL).await;
        send_when_allowed(send, Bytes::from(token_text(i))).await?;
    }
    send.send_data(Bytes::new(), true)
}

/// Sends `data` once flow control allows it all, so a slow client holds up
/// only its own stream (and lags) instead of piling data up in memory.
async fn send_when_allowed(send: &mut SendStream<Bytes>, data: Bytes) -> Result<(), h2::Error> {
    send.reserve_capacity(data.len());
    while send.capacity() < data.len() {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Reason::CANCEL.into()),
        }
    }
    send.send_data(data, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_padded_to_the_payload() {
        let text = event_text(7, 1_700_000_000_000_000, 100);
        let text = String::from_utf8(text).unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        assert!(text.starts_with("id: 7\ndata: {\"seq\":7,\"ts_us\":1700000000000000,\"pad\":\"x"));
        assert!(text.ends_with("xx\"}\n\n"));
        assert_eq!(data.len(), 100);
        // Smaller than the fixed part: no padding, still valid.
        let small = String::from_utf8(event_text(1, 2, 0)).unwrap();
        assert_eq!(
            small,
            "id: 1\ndata: {\"seq\":1,\"ts_us\":2,\"pad\":\"\"}\n\n"
        );
    }

    #[test]
    fn requests_from_method_query_and_headers() {
        let r = Request::new("GET", "/a?count=5&x", Some(" 41 "));
        assert_eq!(
            r,
            Request {
                kind: Kind::Stream,
                count: Some(5),
                last_event_id: Some(41),
                reset_max: false,
            }
        );
        assert_eq!(Request::new("GET", "/?idle=1", None).kind, Kind::Idle);
        assert_eq!(Request::new("GET", "/?idle=0", None).kind, Kind::Stream);
        assert_eq!(Request::new("GET", "/?idle", None).kind, Kind::Idle);
        let post = Request::new("POST", "/chat", Some("x"));
        assert_eq!(
            (post.kind, post.tokens(), post.last_event_id),
            (Kind::Tokens, 20, None)
        );
        assert_eq!(Request::new("POST", "/?count=3", None).tokens(), 3);
        let stats = Request::new("GET", "/_stats?reset_max=1", None);
        assert_eq!((stats.kind, stats.reset_max), (Kind::Stats, true));
        assert!(!Request::new("GET", "/_stats", None).reset_max);
        assert_eq!(Request::new("GET", "/_stats/x", None).kind, Kind::Stream);
        assert_eq!(Request::new("POST", "/_stats", None).kind, Kind::Tokens);
    }

    #[test]
    fn served_counts_openings_endings_and_the_high_water_mark() {
        let served = Served::new();
        let conn = served.connections.enter();
        let a = served.stream(false);
        let b = served.stream(true);
        let c = served.stream(true);
        drop((a, b));
        let v: serde_json::Value = serde_json::from_str(&served.json(true)).unwrap();
        assert_eq!(v["connections"]["accepted"], 1);
        assert_eq!(v["connections"]["open"], 1);
        assert_eq!(v["streams"]["accepted"], 3);
        assert_eq!(v["streams"]["open"], 1);
        assert_eq!(
            v["streams"]["open_max"], 3,
            "the mark from before the reset"
        );
        assert_eq!(
            (v["http1_streams"].clone(), v["http2_streams"].clone()),
            (1.into(), 2.into())
        );
        drop((c, conn));
        let v: serde_json::Value = serde_json::from_str(&served.json(false)).unwrap();
        assert_eq!(v["streams"]["open"], 0);
        assert_eq!(v["streams"]["open_max"], 1, "reset to the one then open");
        assert_eq!(v["connections"]["open"], 0);
        assert_eq!(v["events_published"], 0);
    }

    fn frame(seq: u64) -> Arc<Frame> {
        Arc::new(Frame::new(event_text(seq, 0, 0), seq))
    }

    #[tokio::test]
    async fn resume_replays_then_goes_live_without_gap_or_duplicate() {
        let hub = Hub::new();
        for seq in 1..=10 {
            hub.publish(frame(seq));
        }
        let mut resumed = hub.subscribe(Some(7));
        let mut fresh = hub.subscribe(None);
        hub.publish(frame(11));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(resumed.next().await.unwrap().seq);
        }
        assert_eq!(got, [8, 9, 10, 11]);
        assert_eq!(fresh.next().await.unwrap().seq, 11);
        // An id from the future: nothing until the sequence passes it.
        let mut ahead = hub.subscribe(Some(12));
        hub.publish(frame(12));
        hub.publish(frame(13));
        assert_eq!(ahead.next().await.unwrap().seq, 13);
    }

    #[tokio::test]
    async fn the_ring_keeps_the_last_events_only() {
        let hub = Hub::new();
        for seq in 1..=(KEEP as u64 + 5) {
            hub.publish(frame(seq));
        }
        let mut old = hub.subscribe(Some(0));
        assert_eq!(old.next().await.unwrap().seq, 6);
        assert_eq!(old.replay.len(), KEEP - 1);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told() {
        let hub = Hub::new();
        let mut slow = hub.subscribe(None);
        for seq in 1..=(KEEP as u64 + 1) {
            hub.publish(frame(seq));
        }
        assert!(matches!(slow.next().await, Err(Lagged(1))));
    }
}

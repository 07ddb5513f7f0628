//! The WebSocket load client and echo origin of `benches/compare.sh`'s
//! `websocket` scenario (cells `ws-h1` and `ws-h2`).
//!
//! Run with:
//!
//! ```sh
//! cargo bench --bench ws_load -- echo --listen 127.0.0.1:0
//! cargo bench --bench ws_load -- load --url ws://127.0.0.1:PORT/ws \
//!     --tunnels 1000 --rate 10 --ramp 2 --duration 20 --idle 5
//! cargo bench --bench ws_load -- load --url ws://127.0.0.1:PORT/ws --h2 --connections 10 ...
//! ```
//!
//! (`compare.sh --scenarios websocket` builds it with `cargo bench --no-run`
//! and runs the binary itself, pinned.) It is a bench target with
//! `harness = false` so that tokio-tungstenite stays a dev-dependency.
//!
//! - **`echo`** listens on `--listen` (port 0 for any), prints `listening on
//!   HOST:PORT` on stdout, and answers every WebSocket (HTTP/1.1 Upgrade) by
//!   sending each text or binary message back. One thread: compare.sh pins
//!   it to core 1 with the load client.
//! - **`load`** opens `--tunnels` WebSockets evenly over `--ramp` seconds,
//!   over HTTP/1.1 (one TCP connection each) or, with `--h2`, as RFC 8441
//!   extended CONNECT streams (`:protocol websocket`) spread over
//!   `--connections` h2c connections (prior knowledge). Each tunnel sends
//!   `--rate` text messages a second of `--payload` bytes that start with
//!   its send time; the echo's round-trip time goes into an HDR histogram.
//!   At `--duration` seconds from the start (the ramp included) every tunnel
//!   stops sending; once the last echoes are in it prints `idle phase: open
//!   N/M` on stderr and holds the tunnels open and silent for `--idle`
//!   seconds (compare.sh samples the proxy's memory then), then closes them
//!   and prints one JSON object on stdout. Progress goes to stderr once a
//!   second (`   5 s  open 999/1000  failed 0 ...`). It exits 1 when no
//!   tunnel opened, with the first error on stderr.
//!
//! Measured with it (BENCHMARKS.md, "WebSocket tunnels", for the machine
//! and the whole table): 1,000 HTTP/1.1 tunnels x 10 echoes/s, proxy on one
//! pinned core, CPU-s per million echoes and KiB per idle tunnel: nginx
//! 1.22 24.3 and 17.6, HAProxy 2.6 22.2 and 4.67, Caddy 2.6 31.6 and 76.4;
//! HAProxy over RFC 8441 (10 h2c connections) 24.7 and 4.01. The client and
//! the echo origin together used under a quarter of their core.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(about = "WebSocket echo origin and load client for benches/compare.sh")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A WebSocket echo server (HTTP/1.1 Upgrade).
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Tunnels that send, and time the echoes.
    Load(LoadArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// ws://HOST:PORT/PATH (with --h2 the same URL is asked for by extended CONNECT).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    tunnels: u64,
    /// Messages per second per tunnel.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Bytes per message (the send time fills the first 20).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds over which the tunnels open, part of --duration.
    #[arg(long, default_value_t = 1.0)]
    ramp: f64,
    /// Seconds from the start to the end of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds the open tunnels are then held silent.
    #[arg(long, default_value_t = 0.0)]
    idle: f64,
    /// RFC 8441: WebSockets as streams of h2c connections.
    #[arg(long)]
    h2: bool,
    /// h2c connections the tunnels are spread over (with --h2).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Seconds one tunnel may take to open.
    #[arg(long, default_value_t = 10.0)]
    open_timeout: f64,
    /// No progress lines on stderr (the JSON report only).
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; the binary run directly does not.
    let args = std::env::args().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = match cli.mode {
        Mode::Echo { listen } => rt.block_on(echo(listen)),
        Mode::Load(args) => rt.block_on(load(args)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws_load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Small frames: a 4 KiB read buffer instead of tungstenite's 128 KiB, so
/// that neither side's memory grows with buffers the messages never fill.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

// ---------------------------------------------------------------------------
// echo

async fn echo(listen: String) -> Res<()> {
    let listener = TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
            else {
                return;
            };
            // tungstenite answers pings and close frames by itself.
            while let Some(Ok(msg)) = ws.next().await {
                let echoed = match msg {
                    Message::Text(_) | Message::Binary(_) => ws.send(msg).await.is_ok(),
                    Message::Close(_) => false,
                    _ => true,
                };
                if !echoed {
                    return;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------
// load

/// What the tunnels are told to do, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Send,
    Idle,
    Close,
}

/// Counters shared by the tunnels (one thread: the mutexes are never contended).
struct Stats {
    start: Instant,
    opened: AtomicU64,
    failed: AtomicU64,
    open_now: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    closed_early: AtomicU64,
    rtt_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, kind: &str, detail: impl std::fmt::Display) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default() += 1;
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(format!("{kind}: {detail}"));
        }
    }

    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

async fn load(args: LoadArgs) -> Res<()> {
    let (authority, path) = split_url(&args.url)?;
    let stats = Arc::new(Stats {
        start: Instant::now(),
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        open_now: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        rtt_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        first_error: Mutex::new(None),
    });
    let h2 = if args.h2 {
        let mut conns = Vec::new();
        for _ in 0..args.connections.max(1) {
            conns.push(h2_connect(&authority).await?);
        }
        Some(conns)
    } else {
        None
    };

    let (phase_tx, phase_rx) = watch::channel(Phase::Send);
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let open_timeout = Duration::from_secs_f64(args.open_timeout);
    let progress = (!args.quiet).then(|| tokio::spawn(progress(stats.clone(), args.tunnels)));
    let mut tasks = Vec::new();
    for i in 0..args.tunnels {
        let at = start + Duration::from_secs_f64(args.ramp * i as f64 / args.tunnels as f64);
        tokio::time::sleep_until(at).await;
        if start.elapsed().as_secs_f64() >= args.duration {
            break;
        }
        let opening = match &h2 {
            Some(conns) => {
                let conn = conns[i as usize % conns.len()].clone();
                let (authority, path) = (authority.clone(), path.clone());
                Opening::H2(Box::pin(h2_websocket(conn, authority, path)))
            }
            None => Opening::H1(Box::pin(h1_websocket(authority.clone(), path.clone()))),
        };
        let tunnel = Tunnel {
            stats: stats.clone(),
            phase: phase_rx.clone(),
            period,
            payload: args.payload,
        };
        tasks.push(tokio::spawn(tunnel.run(opening, open_timeout)));
    }

    tokio::time::sleep_until(start + Duration::from_secs_f64(args.duration)).await;
    phase_tx.send_replace(Phase::Idle);
    // The echoes of the last messages: up to 2 s, less once all are in.
    let drain_end = Instant::now() + Duration::from_secs(2);
    while stats.received.load(Relaxed) < stats.sent.load(Relaxed) && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_at_idle = stats.open_now.load(Relaxed);
    if args.idle > 0.0 {
        eprintln!("idle phase: open {open_at_idle}/{}", args.tunnels);
        tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
    }
    phase_tx.send_replace(Phase::Close);
    let close_end = Instant::now() + Duration::from_secs(5);
    for t in tasks {
        if tokio::time::timeout_at(close_end, t).await.is_err() {
            stats.error("close_timeout", "a tunnel did not close within 5 s");
        }
    }
    if let Some(p) = progress {
        p.abort();
    }

    let report = report(&args, &stats, open_at_idle)?;
    println!("{report}");
    if stats.opened.load(Relaxed) == 0 {
        let first = stats.first_error.lock().unwrap().clone();
        return Err(format!("no tunnel opened ({})", first.unwrap_or_default()).into());
    }
    Ok(())
}

/// `ws://HOST:PORT/PATH` -> ("HOST:PORT", "/PATH").
fn split_url(url: &str) -> Res<(String, String)> {
    let uri: http::Uri = url.parse()?;
    if !matches!(uri.scheme_str(), Some("ws") | Some("http")) {
        return Err(format!("{url}: ws:// only (no TLS here)").into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?;
    let port = authority.port_u16().ok_or("the URL has no port")?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((format!("{}:{port}", authority.host()), path))
}

fn report(args: &LoadArgs, stats: &Stats, open_at_idle: u64) -> Res<String> {
    let h = stats.rtt_us.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let sent = stats.sent.load(Relaxed);
    let received = stats.received.load(Relaxed);
    let usage = rusage_self();
    let doc = serde_json::json!({
        "protocol": if args.h2 { "h2" } else { "h1" },
        "url": args.url,
        "tunnels": args.tunnels,
        "connections": if args.h2 { args.connections } else { args.tunnels as usize },
        "rate": args.rate,
        "payload": args.payload,
        "ramp_s": args.ramp,
        "duration_s": args.duration,
        "idle_s": args.idle,
        "tunnels_opened": stats.opened.load(Relaxed),
        "tunnels_failed": stats.failed.load(Relaxed),
        "open_at_idle": open_at_idle,
        "closed_early": stats.closed_early.load(Relaxed),
        "messages_sent": sent,
        "messages_received": received,
        "lost": sent.saturating_sub(received),
        "echoes_per_s": (received as f64 / args.duration * 10.0).round() / 10.0,
        "rtt_ms": if h.is_empty() { serde_json::Value::Null } else { serde_json::json!({
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": h.max() as f64 / 1000.0, "count": h.len(),
        })},
        "errors": *stats.errors.lock().unwrap(),
        "first_error": *stats.first_error.lock().unwrap(),
        "cpu_s": usage,
        "peak_rss_kib": peak_rss_kib(),
    });
    Ok(serde_json::to_string(&doc)?)
}

/// This process's user + system CPU seconds.
fn rusage_self() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // utime and stime: fields 14 and 15, counted after the command name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts in USER_HZ, 100 a second on Linux.
    ((ticks(11) + ticks(12)) / 100.0 * 1000.0).round() / 1000.0
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn progress(stats: Arc<Stats>, want: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        eprintln!(
            "{:4} s  open {}/{want}  failed {}  sent {}  echoed {}",
            stats.start.elapsed().as_secs(),
            stats.open_now.load(Relaxed),
            stats.failed.load(Relaxed),
            stats.sent.load(Relaxed),
            stats.received.load(Relaxed),
        );
    }
}

type Boxed<T> = Pin<Box<dyn std::future::Future<Output = Res<T>> + Send>>;

/// A tunnel being opened, over either protocol.
enum Opening {
    H1(Boxed<WebSocketStream<TcpStream>>),
    H2(Boxed<WebSocketStream<H2Io>>),
}

struct Tunnel {
    stats: Arc<Stats>,
    phase: watch::Receiver<Phase>,
    period: Duration,
    payload: usize,
}

impl Tunnel {
    async fn run(self, opening: Opening, open_timeout: Duration) {
        let stats = self.stats.clone();
        let res = match opening {
            Opening::H1(f) => match tokio::time::timeout(open_timeout, f).await {
                Ok(Ok(ws)) => self.talk(ws).await,
                Ok(Err(e)) => Err(("open", e.to_string())),
                Err(_) => Err(("open_timeout", format!("no tunnel after {open_timeout:?}"))),
            },
            Opening::H2(f) => match tokio::time::timeout(open_timeout, f).await {
                Ok(Ok(ws)) => self.talk(ws).await,
                Ok(Err(e)) => Err(("open", e.to_string())),
                Err(_) => Err(("open_timeout", format!("no tunnel after {open_timeout:?}"))),
            },
        };
        if let Err((kind, detail)) = res {
            if kind.starts_with("open") {
                stats.failed.fetch_add(1, Relaxed);
            }
            stats.error(kind, detail);
        }
    }

    /// Sends on a ticker while the phase is Send and times every echo; stops
    /// sending at Idle and closes at Close.
    async fn talk<S>(mut self, mut ws: WebSocketStream<S>) -> Result<(), (&'static str, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stats = self.stats.clone();
        stats.opened.fetch_add(1, Relaxed);
        stats.open_now.fetch_add(1, Relaxed);
        let res = self.exchange(&mut ws).await;
        stats.open_now.fetch_sub(1, Relaxed);
        if res.is_ok() {
            // A close frame, flushed; the peer's answer is not awaited.
            let _ = ws.close(None).await;
        }
        res
    }

    async fn exchange<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
    ) -> Result<(), (&'static str, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stats = self.stats.clone();
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut sending = true;
        loop {
            tokio::select! {
                _ = tick.tick(), if sending => {
                    let mut text = format!("{:020}", stats.micros());
                    while text.len() < self.payload {
                        text.push('x');
                    }
                    ws.send(Message::text(text)).await.map_err(|e| ("send", e.to_string()))?;
                    stats.sent.fetch_add(1, Relaxed);
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let sent: u64 = t.get(..20).and_then(|s| s.parse().ok())
                            .ok_or(("bad_echo", format!("{:.40?}", t.as_str())))?;
                        let rtt = stats.micros().saturating_sub(sent).max(1);
                        let _ = stats.rtt_us.lock().unwrap().record(rtt);
                        stats.received.fetch_add(1, Relaxed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(("recv", e.to_string())),
                    None => {
                        stats.closed_early.fetch_add(1, Relaxed);
                        return Err(("closed_early", "the tunnel ended before the run".into()));
                    }
                },
                changed = self.phase.changed() => {
                    let phase = *self.phase.borrow_and_update();
                    if changed.is_err() || phase == Phase::Close {
                        return Ok(());
                    }
                    sending = phase == Phase::Send;
                }
            }
        }
    }
}

async fn h1_websocket(authority: String, path: String) -> Res<WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{authority}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
    Ok(ws)
}

// ---------------------------------------------------------------------------
// RFC 8441 over h2c

type H2Conn = h2::client::SendRequest<Bytes>;

/// One h2c connection (prior knowledge) whose server advertises
/// SETTINGS_ENABLE_CONNECT_PROTOCOL; fails at once when it does not.
async fn h2_connect(authority: &str) -> Res<H2Conn> {
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let (conn, driver) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = driver.await {
            eprintln!("ws_load: h2 connection: {e}");
        }
    });
    let mut conn = conn.ready().await?;
    // The server's SETTINGS come right after the preface; give them 1 s.
    let until = Instant::now() + Duration::from_secs(1);
    while !conn.is_extended_connect_protocol_enabled() {
        if Instant::now() >= until {
            return Err(format!(
                "{authority} does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL on h2c: no RFC 8441 WebSockets there"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        conn = conn.ready().await?;
    }
    Ok(conn)
}

async fn h2_websocket(conn: H2Conn, authority: String, path: String) -> Res<WebSocketStream<H2Io>> {
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{authority}{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())?;
    let mut conn = conn.ready().await?;
    let (resp, send) = conn.send_request(req, false)?;
    let resp = resp.await?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("extended CONNECT answered {}", resp.status()).into());
    }
    let io = H2Io {
        send,
        recv: resp.into_body(),
        buf: Bytes::new(),
    };
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(ws_config())).await)
}

/// An h2 stream as a byte stream: DATA frames in, DATA frames out, END_STREAM
/// on shutdown.
struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Bytes,
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        // Capacity already assigned is used at once: poll_capacity only
        // reports capacity that grew since it was last asked.
        let mut n = self.send.capacity();
        if n == 0 {
            n = match ready!(self.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(n)) => n,
            };
        }
        let n = n.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

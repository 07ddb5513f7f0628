//! The load generator (`ssegate bench`): opens the streams over the ramp,
//! stops at the deadline, and turns what [`Stats`] gathered into a report.
//!
//! ```text
//!  main ── setup (resolve, TLS config) ── spawner ──▶ stream task × N ──┐
//!   │                                     (ramp)      open: connect, TLS,│
//!   ├── progress line every second                    request, head      │
//!   │                                                 read: framer,      │
//!   └── wait: every stream settled, or the deadline        StreamMeter ──┤
//!        ──▶ snapshot ──▶ table or JSON                                  │
//!                                          settle: opened/failed/error ◀─┘
//! ```
//!
//! Each stream's I/O future runs under the run's deadline; its
//! [`StreamMeter`] lives outside that future, so a stream cut off by the
//! deadline is still accounted for (its last silence included). HTTP/1.1
//! streams are in `client_h1`, HTTP/2 ones in `client_h2`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IsTerminal, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::args::BenchClientArgs;
use super::chart::{self, ChartData};
use super::plan::Plan;
use super::report::{self, RunResult};
use super::stats::{ErrorKind, Snapshot, Stats, StreamMeter};
use super::timeline::Timeline;
use super::{client_h1, client_h2, sys, tls, EXIT_USAGE};

/// Longest wait for a stream to open: connect, TLS and response head.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stream tasks get after the deadline to settle their accounts.
const SETTLE_GRACE: Duration = Duration::from_secs(2);

/// Bytes read from a socket at once, in a buffer shared per worker thread.
const READ_BUF: usize = 16 * 1024;

/// Wait before reconnecting a stream that sent no `retry:` (`--reconnect`);
/// browsers use a few seconds at most, the HTML standard leaves it open.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// Why a stream failed or ended, as counted under `errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StreamError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StreamError {
            kind,
            message: message.into(),
        }
    }

    /// An I/O error on an established connection: a reset or an unexpected
    /// end is the peer closing; anything else is "other".
    pub fn io(e: &io::Error) -> Self {
        use io::ErrorKind as K;
        let kind = match e.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                ErrorKind::Closed
            }
            _ => ErrorKind::Other,
        };
        Self::new(kind, e.to_string())
    }

    pub fn open_timeout() -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("not open after {} s", OPEN_TIMEOUT.as_secs()),
        )
    }
}

/// Checks a response's status and type: only `200 text/event-stream` opens a stream.
pub fn check_response(status: u16, content_type: Option<&str>) -> Result<(), StreamError> {
    let is_sse = content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
    });
    match (status, is_sse) {
        (200, true) => Ok(()),
        (200, false) => Err(StreamError::new(
            ErrorKind::Status,
            format!(
                "200 but Content-Type {:?}, not text/event-stream",
                content_type.unwrap_or("(none)")
            ),
        )),
        (status, _) => Err(StreamError::new(
            ErrorKind::Status,
            format!("status {status}"),
        )),
    }
}

/// Everything the stream tasks share.
pub struct Ctx {
    pub plan: Plan,
    pub addr: SocketAddr,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub stats: Stats,
    pub start: Instant,
    pub deadline: Instant,
    pub h1_request: Vec<u8>,
    pub h2: client_h2::Pool,
    /// The server's HTTP/2 stream limit was found too low (warn once).
    pub h2_limit_warned: AtomicBool,
    /// The run second by second, recorded by the progress task (`--chart`).
    timeline: Mutex<Timeline>,
    /// Streams started by the spawner so far.
    spawned: AtomicUsize,
    settled: AtomicUsize,
    all_settled: Notify,
}

impl Ctx {
    /// When stream `index` may start.
    fn start_of(&self, index: usize) -> Instant {
        self.start + self.plan.start_offset(index)
    }

    /// Adds the second that ends `at` to the timeline.
    fn record_timeline(&self, at: Instant, snapshot: &Snapshot) {
        self.timeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(at.saturating_duration_since(self.start), snapshot);
    }

    /// Resolves when every stream has settled.
    async fn all_settled(&self) {
        while self.settled.load(Ordering::Acquire) < self.plan.streams {
            self.all_settled.notified().await;
        }
    }

    /// Counts a stream as opened, failed or errored; see [`settle`].
    fn settle(&self, meter: &StreamMeter, result: Option<Result<(), StreamError>>) {
        settle(&self.stats, meter, result, self.deadline);
        self.count_settled(1);
    }

    /// Counts the streams the spawner never started (it fell behind the
    /// ramp on a starved machine) as failed by timeout.
    fn settle_unstarted(&self) {
        let unstarted = self
            .plan
            .streams
            .saturating_sub(self.spawned.load(Ordering::Acquire));
        for _ in 0..unstarted {
            self.stats.stream_failed();
            self.stats
                .error(ErrorKind::Timeout, "not started when the run ended");
        }
        self.count_settled(unstarted);
    }

    fn count_settled(&self, n: usize) {
        if n > 0 && self.settled.fetch_add(n, Ordering::AcqRel) + n == self.plan.streams {
            self.all_settled.notify_one();
        }
    }
}

/// Accounts for one stream. `result` is `None` when the deadline stopped it.
/// A reconnecting stream accounts for each connection that ended on its
/// own ([`reconnecting`]); here only for how the run found it at the end.
fn settle(
    stats: &Stats,
    meter: &StreamMeter,
    result: Option<Result<(), StreamError>>,
    deadline: Instant,
) {
    let open = meter.is_open();
    match result {
        None if open => {
            meter.cut_off(stats, deadline);
            stats.stream_open_at_end();
        }
        // Waiting to reconnect when the run ended: not a failure.
        None if meter.ever_opened() => meter.cut_off(stats, deadline),
        None => {
            stats.stream_failed();
            stats.error(ErrorKind::Timeout, "not open when the run ended");
        }
        Some(Ok(())) => {
            stats.stream_closed_cleanly();
            stats.error(
                ErrorKind::Closed,
                "the server ended the stream before the run ended",
            );
        }
        Some(Err(e)) => {
            if !meter.ever_opened() {
                stats.stream_failed();
            }
            stats.error(e.kind, &e.message);
        }
    }
    if open {
        stats.stream_gone();
    }
}

/// Descriptors the plan needs: one socket per connection, plus spares.
fn needed_fds(plan: &Plan) -> u64 {
    let sockets = if plan.http2 {
        plan.connections.min(plan.streams)
    } else {
        plan.streams
    };
    sockets as u64 + sys::SPARE_FDS
}

/// `ssegate bench`: runs the plan and prints the report.
pub fn main(args: BenchClientArgs) -> ExitCode {
    let plan = match Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("ssegate bench: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let limit = sys::raise_nofile_limit(needed_fds(&plan));
    if !limit.is_enough() {
        eprintln!(
            "ssegate bench: {limit}; {} streams need about {}: raise it with ulimit -n \
             (running anyway: streams past the limit will fail to connect)",
            plan.streams, limit.needed
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssegate bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (snapshot, elapsed, timeline) = runtime.block_on(run(&plan));
    // Anything still running (HTTP/2 connection tasks) is dropped, not awaited.
    runtime.shutdown_background();
    let result = RunResult {
        snapshot,
        elapsed,
        cpu_s: sys::cpu_seconds().unwrap_or(0.0),
        peak_rss_bytes: sys::peak_rss_bytes(),
    };
    let code = print_report(&plan, &result);
    match &plan.chart {
        Some(path) => match draw_chart(path, &plan, &result, &timeline) {
            Ok(()) => code,
            Err(e) => {
                eprintln!("ssegate bench: {e}");
                ExitCode::FAILURE
            }
        },
        None => code,
    }
}

/// `--chart`: the run in a PNG at `path`; stderr says where (stdout may be
/// the one JSON object).
fn draw_chart(
    path: &std::path::Path,
    plan: &Plan,
    result: &RunResult,
    timeline: &Timeline,
) -> Result<(), String> {
    let text = match chart::load_font() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("ssegate bench: {e}; the chart has no text");
            false
        }
    };
    let protocol = match (plan.http2, plan.target.tls) {
        (false, false) => "HTTP/1.1".to_string(),
        (false, true) => "HTTP/1.1 over TLS".to_string(),
        (true, _) => format!("HTTP/2 over {} connection(s)", plan.connections),
    };
    let data = ChartData {
        title: format!("ssegate bench {} {}", plan.method, plan.url),
        subtitle: format!(
            "{} streams, {protocol}, ramp {:.1} s, measured over {:.1} s; {} events, {} opened, {} failed{}",
            plan.streams,
            plan.ramp.as_secs_f64(),
            result.elapsed.as_secs_f64(),
            result.snapshot.counters.events,
            result.snapshot.opened,
            result.snapshot.failed,
            if plan.reconnect { ", --reconnect" } else { "" },
        ),
        duration_s: result.elapsed.as_secs_f64(),
        samples: timeline.samples(),
        latency: &result.snapshot.latency,
    };
    chart::draw(path, &data, text)?;
    eprintln!("ssegate bench: chart written to {}", path.display());
    Ok(())
}

/// Prints the table or the JSON and picks the exit code.
fn print_report(plan: &Plan, result: &RunResult) -> ExitCode {
    let text = if plan.json {
        report::json(plan, result)
    } else {
        report::table(plan, result)
    };
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    if result.snapshot.opened == 0 {
        eprintln!(
            "ssegate bench: no stream opened ({})",
            report::error_summary(&result.snapshot)
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs the whole measurement; returns what was measured and how long the
/// window really was (shorter than `--duration` if every stream ended).
async fn run(plan: &Plan) -> (Snapshot, Duration, Timeline) {
    let start = Instant::now();
    let ctx = match setup(plan, start).await {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            return (
                failed_everywhere(plan, &e),
                start.elapsed(),
                Timeline::new(),
            )
        }
    };
    let spawner = tokio::spawn(spawn_streams(ctx.clone()));
    let progress = tokio::spawn(show_progress(ctx.clone()));
    tokio::select! {
        () = ctx.all_settled() => {}
        () = tokio::time::sleep_until(ctx.deadline.into()) => {}
    }
    let end = Instant::now().min(ctx.deadline);
    spawner.abort();
    let _ = spawner.await;
    ctx.settle_unstarted();
    // Streams stop themselves at the deadline; let them record their last numbers.
    let _ = tokio::time::timeout(SETTLE_GRACE, ctx.all_settled()).await;
    progress.abort();
    let _ = progress.await;
    end_progress_line();
    let mut snapshot = Snapshot::new();
    ctx.stats.snapshot(&mut snapshot);
    // The last interval ends with the window; the streams open then were
    // settled (and counted gone) after it, so they count as open here.
    let open_now = snapshot.open_now;
    snapshot.open_now = i64::try_from(snapshot.open_at_end).unwrap_or(i64::MAX);
    ctx.record_timeline(end, &snapshot);
    snapshot.open_now = open_now;
    let timeline =
        std::mem::take(&mut *ctx.timeline.lock().unwrap_or_else(PoisonError::into_inner));
    (snapshot, end.saturating_duration_since(start), timeline)
}

/// A snapshot where all streams failed for the same reason, for a run that
/// could not even start (name not resolved, no TLS roots).
fn failed_everywhere(plan: &Plan, e: &StreamError) -> Snapshot {
    let stats = Stats::new();
    for _ in 0..plan.streams {
        stats.stream_failed();
        stats.error(e.kind, &e.message);
    }
    let mut snapshot = Snapshot::new();
    stats.snapshot(&mut snapshot);
    snapshot
}

/// Resolves the host and prepares TLS and the request, once for all streams.
async fn setup(plan: &Plan, start: Instant) -> Result<Ctx, StreamError> {
    let target = &plan.target;
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            StreamError::new(
                ErrorKind::Connect,
                format!("cannot resolve {}", target.host),
            )
        })?;
    let tls = if target.tls {
        let alpn = if plan.http2 {
            tls::ALPN_H2
        } else {
            tls::ALPN_HTTP1
        };
        let tls_err = |e: String| StreamError::new(ErrorKind::Tls, e);
        let connector = tls::connector(plan.insecure, alpn).map_err(tls_err)?;
        Some((connector, tls::server_name(&target.host).map_err(tls_err)?))
    } else {
        None
    };
    Ok(Ctx {
        addr,
        tls,
        stats: Stats::new(),
        start,
        deadline: start + plan.duration,
        h1_request: client_h1::request(plan),
        h2: client_h2::Pool::new(if plan.http2 { plan.connections } else { 0 }),
        h2_limit_warned: AtomicBool::new(false),
        timeline: Mutex::new(Timeline::new()),
        spawned: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
        all_settled: Notify::new(),
        plan: plan.clone(),
    })
}

/// Starts the streams, evenly spread over the ramp.
async fn spawn_streams(ctx: Arc<Ctx>) {
    for index in 0..ctx.plan.streams {
        let at = ctx.start_of(index);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        ctx.spawned.fetch_add(1, Ordering::AcqRel);
        if ctx.plan.http2 {
            tokio::spawn(h2_stream_task(ctx.clone(), index));
        } else {
            tokio::spawn(stream_task(ctx.clone(), index));
        }
    }
}

/// One HTTP/1.1 stream from opening to settling.
async fn stream_task(ctx: Arc<Ctx>, index: usize) {
    let mut meter = StreamMeter::new(index, Instant::now());
    let io = async {
        if ctx.plan.reconnect {
            reconnecting(&ctx, index, &mut meter).await
        } else {
            client_h1::stream(&ctx, index, &ctx.h1_request, &mut meter).await
        }
    };
    let result = tokio::time::timeout_at(ctx.deadline.into(), io).await.ok();
    ctx.settle(&meter, result);
}

/// One HTTP/2 stream from opening to settling. A task of its own, so that
/// each of 100,000 multiplexed streams carries neither the HTTP/1.1 future
/// nor, once open, anything of its opening ([`client_h2::stream`]).
async fn h2_stream_task(ctx: Arc<Ctx>, index: usize) {
    let mut meter = StreamMeter::new(index, Instant::now());
    let io = async {
        if ctx.plan.reconnect {
            // Boxed: the reconnecting loop also holds the HTTP/1.1 future.
            Box::pin(reconnecting(&ctx, index, &mut meter)).await
        } else {
            client_h2::stream(&ctx, index, None, &mut meter).await
        }
    };
    let result = tokio::time::timeout_at(ctx.deadline.into(), io).await.ok();
    ctx.settle(&meter, result);
}

/// One stream with `--reconnect`, as `EventSource` does it: whenever its
/// connection (over HTTP/2: its stream) ends, cleanly or not, wait the last `retry:` received
/// ([`DEFAULT_RETRY`] if none) and open it again with `Last-Event-ID`; an
/// attempt that does not open is retried after the same wait. Runs until the
/// deadline drops it; returns only if the very first opening fails, which
/// [`settle`] counts as usual. Each connection's end is accounted here.
async fn reconnecting(ctx: &Ctx, index: usize, meter: &mut StreamMeter) -> Result<(), StreamError> {
    loop {
        let result = if ctx.plan.http2 {
            // A new stream on the stream's HTTP/2 connection (opened again if gone).
            let last_event_id = meter.last_event_id().map(<[u8]>::to_vec);
            client_h2::stream(ctx, index, last_event_id.as_deref(), meter).await
        } else {
            let resuming = client_h1::resuming_request(&ctx.plan, meter.last_event_id());
            let request = resuming.as_deref().unwrap_or(&ctx.h1_request);
            client_h1::stream(ctx, index, request, meter).await
        };
        let now = Instant::now();
        if meter.is_open() {
            meter.closed(&ctx.stats, now);
            match &result {
                Ok(()) => {
                    ctx.stats.stream_closed_cleanly();
                    ctx.stats.error(
                        ErrorKind::Closed,
                        "the server ended the stream before the run ended",
                    );
                }
                Err(e) => ctx.stats.error(e.kind, &e.message),
            }
        } else if !meter.ever_opened() {
            return result;
        } else {
            ctx.stats.reconnect_failed();
            if let Err(e) = &result {
                ctx.stats.error(e.kind, &e.message);
            }
        }
        let wait = meter
            .retry_ms()
            .map_or(DEFAULT_RETRY, Duration::from_millis);
        // The deadline drops this future; never sleep past it (nor overflow).
        let at = now
            .checked_add(wait)
            .map_or(ctx.deadline, |t| t.min(ctx.deadline));
        tokio::time::sleep_until(at.into()).await;
        meter.new_connection();
    }
}

/// Source addresses a loopback target is connected from, in turn.
const LOOPBACK_SOURCES: u8 = 16;

/// TCP connect to the target, with `TCP_NODELAY`; `nth` numbers the
/// connections of the run.
///
/// A loopback target is connected to from 127.0.0.1 to 127.0.0.16 in turn,
/// each source bound explicitly. From one source address, 20,000
/// connections to one port fill most of the ephemeral port range, and the
/// kernel's `connect()` then scans it for a free port on every call (it
/// measured at 40% of the bench's CPU and stalled its threads for seconds).
/// A socket bound first is checked for its one 4-tuple instead. If the bind
/// fails, the connection is made the usual way.
pub async fn connect_tcp(ctx: &Ctx, nth: usize) -> Result<tokio::net::TcpStream, StreamError> {
    let failed = |e: io::Error| StreamError::new(ErrorKind::Connect, format!("{}: {e}", ctx.addr));
    let socket = match ctx.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(failed)?;
    if let Some(source) = loopback_source(ctx.addr, nth) {
        // Ports in TIME_WAIT from an earlier run may be reused.
        let _ = socket.set_reuseaddr(true);
        let _ = socket.bind(source);
    }
    let tcp = socket.connect(ctx.addr).await.map_err(failed)?;
    // Latency is what is measured: never let Nagle hold a request back.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The source address for connection `nth` to an IPv4 loopback `target`.
fn loopback_source(target: SocketAddr, nth: usize) -> Option<SocketAddr> {
    match target {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => {
            let host = 1 + (nth % usize::from(LOOPBACK_SOURCES)) as u8;
            Some(SocketAddr::from(([127, 0, 0, host], 0)))
        }
        _ => None,
    }
}

thread_local! {
    /// The read buffer of this worker thread, shared by all its streams.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// Reads once from `io` into this thread's scratch buffer and hands the
/// bytes to `on_bytes` before returning: a stream owns no read buffer while
/// it waits. `Ok(None)` is end of stream.
pub async fn read_scratch<S, R>(
    io: &mut S,
    mut on_bytes: impl FnMut(&[u8]) -> R,
) -> io::Result<Option<R>>
where
    S: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Poll::Ready(Err(io::Error::other("read buffer already in use")));
            };
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(on_bytes(buf.filled())))),
            }
        })
    })
    .await
}

/// Prints the progress line on stderr every second until aborted.
async fn show_progress(ctx: Arc<Ctx>) {
    let terminal = io::stderr().is_terminal();
    let mut snapshot = Snapshot::new();
    let mut ticks = tokio::time::interval_at(
        (ctx.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = (ctx.start, 0u64);
    loop {
        ticks.tick().await;
        ctx.stats.snapshot(&mut snapshot);
        let now = Instant::now();
        // The run's end is recorded by `run`, with the streams open then
        // (by now, a tick at the deadline may find them being settled).
        if now < ctx.deadline {
            ctx.record_timeline(now, &snapshot);
        }
        let events = snapshot.counters.events;
        let rate = (events - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, events);
        let mut line = report::progress_line(now - ctx.start, ctx.plan.streams, rate, &snapshot);
        if ctx.plan.reconnect {
            line.push_str(&format!("  reconnected {}", snapshot.reconnections));
        }
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Clears the progress line on a terminal, so the report starts clean.
fn end_progress_line() {
    if io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_event_streams_open() {
        assert!(check_response(200, Some("text/event-stream")).is_ok());
        assert!(check_response(200, Some("Text/Event-Stream; charset=utf-8")).is_ok());
        let kinds: Vec<_> = [
            (404, Some("text/event-stream")),
            (200, Some("text/plain")),
            (200, None),
            (204, None),
        ]
        .iter()
        .map(|(s, ct)| check_response(*s, *ct).unwrap_err().kind)
        .collect();
        assert_eq!(kinds, [ErrorKind::Status; 4]);
    }

    #[test]
    fn loopback_connections_spread_over_sources() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let sources: Vec<_> = [0, 1, 15, 16]
            .iter()
            .map(|n| loopback_source(local, *n).map(|a| a.to_string()))
            .collect();
        assert_eq!(
            sources,
            ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.16:0", "127.0.0.1:0"]
                .map(|s| Some(s.to_string()))
        );
        assert_eq!(loopback_source("10.0.0.1:80".parse().unwrap(), 0), None);
        assert_eq!(loopback_source("[::1]:80".parse().unwrap(), 0), None);
    }

    #[test]
    fn io_errors_are_classified() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(StreamError::io(&reset).kind, ErrorKind::Closed);
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(StreamError::io(&other).kind, ErrorKind::Other);
    }

    #[tokio::test]
    async fn streams_never_started_count_as_timeouts() {
        let argv = [
            "bench",
            "--url",
            "http://127.0.0.1:9/",
            "--streams",
            "5",
            "--duration",
            "1s",
        ];
        let args = crate::bench::BenchArgs::try_parse_from(&argv).unwrap();
        let plan = Plan::from_args(&args.client).unwrap();
        let ctx = setup(&plan, Instant::now()).await.unwrap();
        ctx.spawned.store(2, Ordering::Release);
        ctx.settle_unstarted();
        let mut snap = Snapshot::new();
        ctx.stats.snapshot(&mut snap);
        assert_eq!((snap.failed, snap.errors_of(ErrorKind::Timeout)), (3, 3));
        assert_eq!(ctx.settled.load(Ordering::Acquire), 3);
    }

    #[tokio::test]
    async fn an_open_h2_stream_holds_little() {
        // 100,000 of these are held at once: the opening (the connection's
        // handshake, the request, the wait for the head) must stay boxed
        // outside the task (it was about 5 KB inline).
        let argv = [
            "bench",
            "--url",
            "http://127.0.0.1:9/",
            "--streams",
            "1",
            "--http2",
            "--duration",
            "1s",
        ];
        let args = crate::bench::BenchArgs::try_parse_from(&argv).unwrap();
        let plan = Plan::from_args(&args.client).unwrap();
        let ctx = Arc::new(setup(&plan, Instant::now()).await.unwrap());
        let task = h2_stream_task(ctx.clone(), 0);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "an HTTP/2 stream task is {size} bytes");
        let mut meter = StreamMeter::new(0, Instant::now());
        let stream = client_h2::stream(&ctx, 0, None, &mut meter);
        let size = std::mem::size_of_val(&stream);
        assert!(size <= 256, "an HTTP/2 stream's I/O future is {size} bytes");
    }

    #[test]
    fn settling_counts_each_outcome_once() {
        let stats = Stats::new();
        let now = Instant::now();
        let open = || {
            let mut meter = StreamMeter::new(0, now);
            meter.opened(&stats, now);
            meter
        };
        settle(&stats, &open(), None, now);
        settle(&stats, &open(), Some(Ok(())), now);
        settle(
            &stats,
            &open(),
            Some(Err(StreamError::new(ErrorKind::Closed, "reset"))),
            now,
        );
        let never = StreamMeter::new(0, now);
        settle(&stats, &never, None, now);
        settle(
            &stats,
            &never,
            Some(Err(StreamError::new(ErrorKind::Connect, "refused"))),
            now,
        );
        let mut snap = Snapshot::new();
        stats.snapshot(&mut snap);
        assert_eq!((snap.opened, snap.failed, snap.open_now), (3, 2, 0));
        assert_eq!(snap.errors_of(ErrorKind::Closed), 2);
        assert_eq!(snap.errors_of(ErrorKind::Timeout), 1);
        assert_eq!(snap.errors_of(ErrorKind::Connect), 1);
        assert_eq!(snap.closed_cleanly, 1);
    }
}

//! Upstream server health: active checks (`health_check`: a GET of `path`,
//! or a TCP connect, every `interval`) and passive ones (failed attempts,
//! as nginx's `max_fails` / `fail_timeout`), combined into one verdict per
//! server that [`Pool::connect_by`](super::Pool) filters on.
//!
//! ```text
//!  every interval ──► Probe (pingora's HealthCheck) ──► Streak: fall failed in a row: down,
//!                                                        rise passed in a row: up
//!  connect refused / timed out, reset before the
//!  response header, our 502 / 504 ──► FailWindow: max_fails within fail_timeout:
//!                                     down for fail_timeout
//!        up = Streak up and FailWindow not down
//!        a change: one log line, ssegate_upstream_server_up, ..._transitions_total
//!  Pool::connect_by: servers that are up; when none is, all of them (as nginx)
//! ```
//!
//! The check is pingora-load-balancing's [`HealthCheck`] trait, run by a
//! pingora background service ([`ActiveChecks`]), but the fall/rise counting
//! is ours ([`Streak`]) rather than its `LoadBalancer`'s: its pass starts
//! `interval` after the previous pass *ended*, so a server that hangs would
//! stretch every period by `timeout`; it logs each flip itself, while a
//! server's state here also depends on the passive count, and is logged once
//! per change of the combined verdict. Only new requests, resumes and
//! shared-stream openings consult it: connections already open are never cut.
//!
//! [`Streak`], [`FailWindow`] and [`Verdict`] are pure (time is passed in)
//! and tested below, the check loop with a paused clock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use tokio::time::{Instant, MissedTickBehavior};

use super::h1::H1Conn;
use crate::config::{format_duration, ActiveCheck, Upstream};
use crate::metrics::{Held, ServerMetrics, UpstreamMetrics};

/// The active verdict on one server: `fall` failed checks in a row take it
/// down, `rise` passed checks in a row bring it back. Servers start up.
#[derive(Debug, Clone)]
pub struct Streak {
    fall: u32,
    rise: u32,
    up: bool,
    /// Checks in a row that disagreed with `up`.
    run: u32,
}

impl Streak {
    pub fn new(fall: u32, rise: u32) -> Streak {
        Streak {
            fall,
            rise,
            up: true,
            run: 0,
        }
    }

    pub fn up(&self) -> bool {
        self.up
    }

    /// Records one check; `true` when it flipped the verdict.
    pub fn observe(&mut self, passed: bool) -> bool {
        if passed == self.up {
            self.run = 0;
            return false;
        }
        self.run += 1;
        let needed = if passed { self.rise } else { self.fall };
        if self.run < needed {
            return false;
        }
        self.up = passed;
        self.run = 0;
        true
    }
}

/// The passive verdict on one server, as nginx's: `max_fails` failed
/// attempts within `fail_timeout` of the first of them mark it down for
/// `fail_timeout`. `max_fails` 0: never.
#[derive(Debug, Clone)]
pub struct FailWindow {
    max_fails: u32,
    fail_timeout: Duration,
    /// Failures counted in the window that started at `since`.
    fails: u32,
    since: Option<Instant>,
    down_until: Option<Instant>,
}

impl FailWindow {
    pub fn new(max_fails: u32, fail_timeout: Duration) -> FailWindow {
        FailWindow {
            max_fails,
            fail_timeout,
            fails: 0,
            since: None,
            down_until: None,
        }
    }

    /// Records one failed attempt at `now`; `true` when it marked the server down.
    pub fn failed(&mut self, now: Instant) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        if self.down(now) {
            // Tried anyway (every server was down, or the attempt began
            // before it went down) and failed again: avoid it for longer.
            self.down_until = Some(now + self.fail_timeout);
            return false;
        }
        match self.since {
            Some(since) if now.duration_since(since) < self.fail_timeout => self.fails += 1,
            _ => {
                self.since = Some(now);
                self.fails = 1;
            }
        }
        if self.fails < self.max_fails {
            return false;
        }
        self.fails = 0;
        self.since = None;
        self.down_until = Some(now + self.fail_timeout);
        true
    }

    pub fn down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| now < until)
    }

    /// When the last mark ends (possibly in the past).
    pub fn down_until(&self) -> Option<Instant> {
        self.down_until
    }
}

/// Both verdicts on one server, and the combined one last reported.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub active: Streak,
    pub passive: FailWindow,
    up: bool,
}

impl Verdict {
    pub fn new(active: Streak, passive: FailWindow) -> Verdict {
        Verdict {
            active,
            passive,
            up: true,
        }
    }

    /// Up at `now`: down if either verdict says so.
    pub fn up(&self, now: Instant) -> bool {
        self.active.up() && !self.passive.down(now)
    }

    /// Brings the reported verdict up to date; `Some(up)` when it changed.
    pub fn settle(&mut self, now: Instant) -> Option<bool> {
        let up = self.up(now);
        (up != self.up).then(|| {
            self.up = up;
            up
        })
    }
}

/// One server of a pool: its verdict, reported as it changes.
pub struct ServerHealth {
    upstream: String,
    addr: SocketAddr,
    fall: u32,
    rise: u32,
    fail_timeout: Duration,
    state: Mutex<Verdict>,
    metrics: ServerMetrics,
}

impl ServerHealth {
    fn new(upstream: &Upstream, addr: SocketAddr, metrics: ServerMetrics) -> ServerHealth {
        let (fall, rise) = upstream
            .health_check
            .as_ref()
            .map_or((1, 1), |c| (c.fall, c.rise));
        ServerHealth {
            upstream: upstream.name.clone(),
            addr,
            fall,
            rise,
            fail_timeout: upstream.fail_timeout,
            state: Mutex::new(Verdict::new(
                Streak::new(fall, rise),
                FailWindow::new(upstream.max_fails, upstream.fail_timeout),
            )),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Verdict> {
        // The verdict is consistent after any statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether new requests may go to this server now.
    pub fn is_up(&self) -> bool {
        let now = Instant::now();
        let (up, change) = {
            let mut v = self.lock();
            (v.up(now), v.settle(now))
        };
        // Only time changes a verdict between events: a passive mark ended
        // and its timer has not run yet.
        if let Some(up) = change {
            self.report(up, &self.expired());
        }
        up
    }

    /// One active check's result.
    pub fn checked(&self, result: std::result::Result<(), String>) {
        let now = Instant::now();
        let (flipped, change) = {
            let mut v = self.lock();
            (v.active.observe(result.is_ok()), v.settle(now))
        };
        match (change, result) {
            (Some(false), Err(e)) => {
                self.report(false, &format!("{} health checks failed in a row ({e})", self.fall));
            }
            (Some(true), _) => self.report(true, &format!("{} health checks passed in a row", self.rise)),
            (None, Ok(())) if flipped => log::info!(
                "upstream {}: server {} passes its health checks again, but stays down for its failed attempts",
                self.upstream,
                self.addr
            ),
            _ => {}
        }
    }

    /// One failed attempt (passive).
    pub fn failed(self: &Arc<Self>) {
        let now = Instant::now();
        let (marked, change) = {
            let mut v = self.lock();
            (v.passive.failed(now), v.settle(now))
        };
        if change == Some(false) {
            let why = format!(
                "failed attempts reached max_fails within {}; avoided for that long",
                format_duration(self.fail_timeout)
            );
            self.report(false, &why);
        }
        if marked {
            self.settle_when_expired();
        }
    }

    /// Reports the end of a passive mark when it comes, so that the gauge
    /// does not wait for the next request to this upstream.
    fn settle_when_expired(self: &Arc<Self>) {
        // Outside a runtime (never on the request path) `is_up` settles it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let server = Arc::clone(self);
        runtime.spawn(async move {
            // A failure while down pushes the end further: sleep until the last one.
            loop {
                let until = server.lock().passive.down_until();
                match until {
                    Some(until) if Instant::now() < until => tokio::time::sleep_until(until).await,
                    _ => break,
                }
            }
            server.is_up();
        });
    }

    fn expired(&self) -> String {
        format!(
            "fail_timeout ({}) has passed",
            format_duration(self.fail_timeout)
        )
    }

    /// One change of the combined verdict: logged once, counted.
    fn report(&self, up: bool, why: &str) {
        self.metrics.went(up);
        if up {
            log::info!(
                "upstream {}: server {} is up: {why}",
                self.upstream,
                self.addr
            );
        } else {
            log::warn!(
                "upstream {}: server {} is down: {why}; new requests avoid it, open ones go on",
                self.upstream,
                self.addr
            );
        }
    }
}

/// Every server of one pool, and the pool's active check if it has one.
pub struct PoolHealth {
    servers: Vec<Arc<ServerHealth>>,
    probe: Option<(Arc<Probe>, Duration)>,
}

impl PoolHealth {
    /// Resolves each server's metrics (all start up).
    pub fn new(upstream: &Upstream, metrics: &UpstreamMetrics) -> prometheus::Result<PoolHealth> {
        let servers = upstream
            .servers
            .iter()
            .map(|&addr| {
                let m = metrics.server(&addr.to_string())?;
                Ok(Arc::new(ServerHealth::new(upstream, addr, m)))
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        let probe = upstream
            .health_check
            .as_ref()
            .map(|c| (Arc::new(Probe::new(&upstream.name, c)), c.interval));
        Ok(PoolHealth { servers, probe })
    }

    fn server(&self, addr: &SocketAddr) -> Option<&Arc<ServerHealth>> {
        self.servers.iter().find(|s| s.addr == *addr)
    }

    /// Whether new requests may go to `addr`.
    pub fn is_up(&self, addr: &SocketAddr) -> bool {
        self.server(addr).is_none_or(|s| s.is_up())
    }

    /// Whether a server other than those in `except` is up.
    pub fn any_up(&self, except: &[SocketAddr]) -> bool {
        self.servers
            .iter()
            .any(|s| !except.contains(&s.addr) && s.is_up())
    }

    /// One failed attempt on `addr`.
    pub fn failed(&self, addr: &SocketAddr) {
        if let Some(s) = self.server(addr) {
            s.failed();
        }
    }

    /// One connection to `addr` in use, in `ssegate_upstream_connections_open`
    /// until dropped.
    pub fn connection(&self, addr: &SocketAddr) -> Option<Held> {
        self.server(addr).map(|s| Held::new(&s.metrics.connections))
    }
}

/// The active check of one pool's servers: a TCP connect, or a GET of
/// `path` whose response header (only) must come within `timeout` with a
/// 2xx or 3xx status. Only the header is read, so a `path` that serves an
/// event stream passes as soon as its header is in.
pub struct Probe {
    path: Option<String>,
    /// The `Host` of the GET: the upstream's name, as nginx sends for
    /// `proxy_pass http://<upstream>`; `None` when the name is no host
    /// name, and then each server's address.
    host: Option<String>,
    timeout: Duration,
    fall: u32,
    rise: u32,
    /// A connection per check, never pooled: a pooled one could hide a
    /// server that no longer accepts.
    connector: TransportConnector,
}

impl Probe {
    pub fn new(upstream: &str, check: &ActiveCheck) -> Probe {
        let is_host = !upstream.is_empty()
            && upstream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        Probe {
            path: check.path.clone(),
            host: is_host.then(|| upstream.to_string()),
            timeout: check.timeout,
            fall: check.fall,
            rise: check.rise,
            connector: TransportConnector::new(None),
        }
    }

    async fn probe(&self, addr: SocketAddr) -> Result<()> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.total_connection_timeout = Some(self.timeout);
        let stream = self.connector.new_stream(&peer).await?;
        let Some(path) = &self.path else {
            // Connected: that was the check. Dropping the stream closes it.
            return Ok(());
        };
        let mut conn = H1Conn::new(stream);
        conn.set_read_timeout(Some(self.timeout));
        conn.set_write_timeout(Some(self.timeout));
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        req.insert_header(header::HOST, host)?;
        req.insert_header(header::USER_AGENT, "ssegate-health-check")?;
        req.insert_header(header::CONNECTION, "close")?;
        let answer = async {
            conn.write_request_header(&req).await?;
            conn.finish_request_body().await?;
            conn.read_response_header().await
        }
        .await;
        let status = conn.response_header().map(|h| h.status);
        // The body (an event stream, perhaps) is never read: close now.
        conn.shutdown().await;
        answer?;
        match status {
            Some(s) if s.is_success() || s.is_redirection() => Ok(()),
            Some(s) => Error::e_explain(ErrorType::HTTPStatus(s.as_u16()), format!("answered {s}")),
            None => Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header"),
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(&addr) = target.addr.as_inet() else {
            return Error::e_explain(ErrorType::InternalError, "not an IP server");
        };
        match tokio::time::timeout(self.timeout, self.probe(addr)).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!("no answer within {}", format_duration(self.timeout)),
            ),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        let n = if success { self.rise } else { self.fall };
        n as usize
    }
}

/// Checks one server every `interval`, until dropped. The ticks are
/// `interval` apart from start to start, as HAProxy's `inter`: a check
/// never outlives `timeout`, which is at most `interval`.
async fn run_checks(
    check: Arc<dyn HealthCheck + Send + Sync>,
    server: Arc<ServerHealth>,
    interval: Duration,
) {
    let backend = Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(server.addr),
        weight: 1,
        ext: pingora_load_balancing::Extensions::new(),
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = check.check(&backend).await;
        server.checked(result.map_err(|e| e.to_string()));
    }
}

/// The pingora background service that runs every pool's active checks.
///
/// A background service rather than tokio tasks spawned where the pools
/// are built: the pools are built in `server::build_after`, before
/// `Server::run_forever` has made any runtime, and a service gets both a
/// runtime and the shutdown signal from pingora.
pub struct ActiveChecks {
    jobs: Vec<(Arc<Probe>, Arc<ServerHealth>, Duration)>,
}

impl ActiveChecks {
    /// The checks of `pools`; `None` when no upstream has `health_check`.
    pub fn new<'a>(pools: impl IntoIterator<Item = &'a PoolHealth>) -> Option<ActiveChecks> {
        let mut jobs = Vec::new();
        for pool in pools {
            if let Some((probe, interval)) = &pool.probe {
                for server in &pool.servers {
                    jobs.push((Arc::clone(probe), Arc::clone(server), *interval));
                }
            }
        }
        (!jobs.is_empty()).then_some(ActiveChecks { jobs })
    }
}

#[async_trait]
impl BackgroundService for ActiveChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // One task per server, so that a server that hangs delays no other's checks.
        let mut tasks = tokio::task::JoinSet::new();
        for (probe, server, interval) in &self.jobs {
            let check: Arc<dyn HealthCheck + Send + Sync> = probe.clone();
            tasks.spawn(run_checks(check, Arc::clone(server), *interval));
        }
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            // No sender left: no shutdown will ever be signalled, so check on.
            std::future::pending::<()>().await;
        }
        // Dropping `tasks` aborts the checks.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamProtocol;
    use crate::metrics::Metrics;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn streak_counts_fall_and_rise_in_a_row() {
        let mut s = Streak::new(3, 2);
        assert!(s.up(), "servers start up");
        // Two failures, then a pass: the count starts over.
        assert!(!s.observe(false));
        assert!(!s.observe(false));
        assert!(!s.observe(true));
        assert!(!s.observe(false));
        assert!(!s.observe(false));
        assert!(s.up());
        assert!(s.observe(false), "the third failure in a row");
        assert!(!s.up());
        assert!(!s.observe(false));
        // One pass, a failure, then two passes.
        assert!(!s.observe(true));
        assert!(!s.observe(false));
        assert!(!s.observe(true));
        assert!(!s.up());
        assert!(s.observe(true), "the second pass in a row");
        assert!(s.up());
        let mut once = Streak::new(1, 1);
        assert!(once.observe(false) && !once.up());
        assert!(once.observe(true) && once.up());
    }

    #[test]
    fn fail_window_is_nginx_max_fails() {
        let t0 = Instant::now();
        let mut w = FailWindow::new(3, ms(10_000));
        assert!(!w.failed(t0));
        assert!(!w.failed(t0 + ms(4_000)));
        // The window started at the first failure: 10 s later it starts over.
        assert!(!w.failed(t0 + ms(10_000)));
        assert!(!w.down(t0 + ms(10_000)));
        assert!(!w.failed(t0 + ms(11_000)));
        assert!(w.failed(t0 + ms(12_000)), "3 within 10 s of the first");
        assert!(w.down(t0 + ms(12_000)));
        assert!(w.down(t0 + ms(21_999)));
        assert!(!w.down(t0 + ms(22_000)), "down for fail_timeout");
        // Then a fresh count: one failure is not enough.
        assert!(!w.failed(t0 + ms(22_000)));
        assert!(!w.down(t0 + ms(22_000)));

        // A failure while down (tried anyway) pushes the end.
        let mut w = FailWindow::new(1, ms(1_000));
        assert!(w.failed(t0));
        assert!(!w.failed(t0 + ms(500)));
        assert_eq!(w.down_until(), Some(t0 + ms(1_500)));
        assert!(w.down(t0 + ms(1_200)));

        let mut off = FailWindow::new(0, ms(1_000));
        for i in 0..10 {
            assert!(!off.failed(t0 + ms(i)));
        }
        assert!(!off.down(t0 + ms(10)));
    }

    #[test]
    fn verdict_is_down_if_either_says_so() {
        let t0 = Instant::now();
        let mut v = Verdict::new(Streak::new(1, 1), FailWindow::new(1, ms(1_000)));
        assert_eq!(v.settle(t0), None);
        assert!(v.passive.failed(t0));
        assert_eq!(v.settle(t0), Some(false));
        // Active down too: the passive mark's end changes nothing.
        v.active.observe(false);
        assert_eq!(v.settle(t0 + ms(2_000)), None);
        assert!(!v.up(t0 + ms(2_000)));
        v.active.observe(true);
        assert_eq!(v.settle(t0 + ms(2_000)), Some(true));
        assert_eq!(v.settle(t0 + ms(3_000)), None);
    }

    fn upstream(check: Option<ActiveCheck>, max_fails: u32) -> Upstream {
        Upstream {
            name: "app".into(),
            servers: vec!["127.0.0.1:1".parse().expect("addr")],
            protocol: UpstreamProtocol::Http1,
            health_check: check,
            max_fails,
            fail_timeout: ms(1_000),
        }
    }

    fn gauge(m: &Metrics) -> String {
        let text = String::from_utf8(m.encode().expect("encodes")).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.starts_with("ssegate_upstream_server_up{"))
            .expect("the gauge");
        line.rsplit(' ').next().expect("value").to_string()
    }

    /// Answers from a script, one per check; the last answer repeats.
    struct Scripted(Mutex<Vec<bool>>);

    #[async_trait]
    impl HealthCheck for Scripted {
        async fn check(&self, _: &Backend) -> Result<()> {
            let mut script = self.0.lock().expect("not poisoned");
            let passed = if script.len() > 1 {
                script.remove(0)
            } else {
                script[0]
            };
            if passed {
                Ok(())
            } else {
                Error::e_explain(ErrorType::HTTPStatus(503), "answered 503")
            }
        }

        fn health_threshold(&self, _: bool) -> usize {
            1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn checks_tick_every_interval_and_flip_after_fall_and_rise() {
        let m = Metrics::new().expect("registers");
        let check = ActiveCheck {
            path: Some("/healthz".into()),
            interval: ms(100),
            timeout: ms(100),
            fall: 3,
            rise: 2,
        };
        let up = upstream(Some(check), 0);
        let pool = PoolHealth::new(&up, &m.upstream("app").expect("children")).expect("pool");
        let server = Arc::clone(&pool.servers[0]);
        // Ticks at 0, 100, 200, ...: pass, then three failures (down at
        // 300 ms), then passes (up again at 500 ms).
        let script = Scripted(Mutex::new(vec![true, false, false, false, true, true]));
        let task = tokio::spawn(run_checks(Arc::new(script), Arc::clone(&server), ms(100)));
        let addr = up.servers[0];
        let start = Instant::now();
        for (at, want) in [(250, "1"), (350, "0"), (450, "0"), (550, "1")] {
            tokio::time::sleep_until(start + ms(at)).await;
            assert_eq!(gauge(&m), want, "at {at} ms");
            assert_eq!(pool.is_up(&addr), want == "1", "at {at} ms");
        }
        task.abort();
        let text = String::from_utf8(m.encode().expect("encodes")).expect("utf-8");
        for to in ["up", "down"] {
            let line = format!("ssegate_upstream_server_transitions_total{{server=\"{addr}\",to=\"{to}\",upstream=\"app\"}} 1");
            assert!(text.contains(&line), "lacks {line:?}:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_passive_mark_ends_by_itself_after_fail_timeout() {
        let m = Metrics::new().expect("registers");
        let up = upstream(None, 2);
        let pool = PoolHealth::new(&up, &m.upstream("app").expect("children")).expect("pool");
        let addr = up.servers[0];
        pool.failed(&addr);
        assert!(pool.is_up(&addr), "one failure of max_fails 2");
        pool.failed(&addr);
        assert!(!pool.is_up(&addr));
        assert_eq!(gauge(&m), "0");
        tokio::time::sleep(ms(990)).await;
        assert_eq!(gauge(&m), "0");
        // No request asks: the mark's own timer reports its end.
        tokio::time::sleep(ms(20)).await;
        assert_eq!(gauge(&m), "1");
        assert!(pool.is_up(&addr));
    }

    #[test]
    fn the_check_host_is_the_upstream_name_when_it_is_one() {
        let check = ActiveCheck {
            path: None,
            interval: ms(100),
            timeout: ms(100),
            fall: 1,
            rise: 1,
        };
        assert_eq!(
            Probe::new("app-1.internal", &check).host.as_deref(),
            Some("app-1.internal")
        );
        assert_eq!(Probe::new("my app", &check).host, None);
    }
}

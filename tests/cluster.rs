//! Shared streams across instances (`[cluster]`, issue 14), end to end:
//! real `ssegate` processes, a real `redis-server` on a free loopback port
//! (`common::redis`), and for failover HAProxy in `mode tcp` in front of two
//! instances (`common::haproxy`).
//!
//! Two origins: `SseOrigin` (every event written by the test, so counts are
//! exact) for the tests of sharing, replay, metrics and keys; and `Ticker`,
//! which makes events itself (ids 1, 2, 3 … at a steady rate) and resumes
//! after a `Last-Event-ID`, for the tests that kill, stop or flush something
//! while events flow. Their clients (`EsClients`) behave like EventSource:
//! on any end they reconnect with their `Last-Event-ID`, and they record
//! every gap, duplicate or non-200 answer.
//!
//! Waits poll metrics, Redis or the origin with a bound; nothing sleeps to
//! synchronise. The heavy tests (hundreds of clients, several processes)
//! take `HEAVY` so that they do not run at once on a small machine.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broadcast::*;
use common::haproxy::Haproxy;
use common::redis::RedisServer;
use common::scrape::{series, Scrape};
use common::*;
use ssegate::config::{self, ConfigError, ConfigErrors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The sharing route, and its metric label.
const ROUTE: &str = "/feeds/";
const FEED: &str = "/feeds/news";
/// An unshared path (the catch-all route `/`).
const PLAIN: &str = "/plain/news";

/// Lease and timeout of the tests' instances: failover within ~1.3 s, and a
/// Redis command may take half a second on a busy machine before it counts
/// as a failure.
const LEASE: &str = "1s";
const TIMEOUT: &str = "500ms";

/// Held by the tests that run hundreds of clients or kill processes.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Instances

/// Config of one instance: `[cluster]` on `redis` as `name`, the upstream
/// `app` at `origin`, the sharing route `/feeds/` with `route_extra`, and
/// the catch-all route `/`, which does not share. Heartbeats off.
fn instance_config(origin: SocketAddr, redis: &str, name: &str, route_extra: &str) -> String {
    let sections = format!(
        "[cluster]\nredis = \"{redis}\"\nname = \"{name}\"\nlease = \"{LEASE}\"\ntimeout = \"{TIMEOUT}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n\
         [[route]]\npath = \"{ROUTE}\"\nupstream = \"app\"\nshare = true\n{route_extra}\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n"
    );
    config_with("5s", "heartbeat = \"off\"", &sections)
}

/// A running instance: the process, its cluster name. Prints the tail of
/// its log when the test fails.
struct Instance {
    proxy: Proxy,
    name: String,
}

impl Instance {
    async fn start(origin: SocketAddr, redis: &RedisServer, name: &str, route_extra: &str) -> Self {
        Self::start_url(origin, &redis.url(), name, route_extra).await
    }

    /// Like `start`, with Redis at `url`.
    async fn start_url(origin: SocketAddr, url: &str, name: &str, route_extra: &str) -> Self {
        let mut cfg = ProxyConfig::new(instance_config(origin, url, name, route_extra));
        cfg.admin = true;
        cfg.log = Some("warn,ssegate=info,ssegate::access=warn".into());
        Instance {
            proxy: Proxy::start(cfg).await,
            name: name.to_string(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// SIGKILL, and waits for the process to be gone.
    async fn kill(&mut self) {
        self.proxy.signal("KILL");
        self.proxy.wait_exit().await;
    }

    async fn scrape(&self) -> Scrape {
        let mut client = H1Client::connect(self.proxy.admin_addr.expect("admin listener")).await;
        client.get("/metrics", &[]).await;
        let head = client.response_head().await;
        assert_eq!(head.status, 200, "{}: /metrics", self.name);
        let text = String::from_utf8(client.body(&head).await.to_vec()).expect("utf-8");
        Scrape::parse(&text)
    }

    /// A series' value now (0 when absent).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape().await.get(name, labels)
    }

    /// Scrapes until the series satisfies `ok`, for at most `limit`.
    async fn metric_until(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
        limit: Duration,
    ) -> f64 {
        let what = format!("{}: {}", self.name, series(name, labels));
        let every = Duration::from_millis(20);
        let fetch = || self.metric(name, labels);
        poll_until(&what, limit, every, fetch, |v| ok(*v)).await
    }

    /// Whether the unlabelled gauge `name` reads `want` within `limit`.
    async fn gauge_becomes(&self, name: &str, want: f64, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.metric(name, &[]).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// `ssegate_cluster_streams{route="/feeds/",role}`.
    async fn streams(&self, role: &str) -> f64 {
        self.metric(
            "ssegate_cluster_streams",
            &[("route", ROUTE), ("role", role)],
        )
        .await
    }

    /// Waits until this instance has the shared stream of `/feeds/` as `role`.
    async fn role_until(&self, role: &str, limit: Duration) {
        self.metric_until(
            "ssegate_cluster_streams",
            &[("route", ROUTE), ("role", role)],
            |v| v == 1.0,
            limit,
        )
        .await;
    }

    /// `ssegate_cluster_events_total{route="/feeds/",op}`.
    async fn events(&self, op: &str) -> f64 {
        self.metric(
            "ssegate_cluster_events_total",
            &[("route", ROUTE), ("op", op)],
        )
        .await
    }

    /// A counter of `/feeds/` (`ssegate_cluster_fallbacks_total` …).
    async fn counter(&self, name: &str) -> f64 {
        self.metric(name, &[("route", ROUTE)]).await
    }

    async fn subscribers_until(&self, n: usize) {
        self.metric_until(
            "ssegate_shared_subscribers",
            &[("route", ROUTE)],
            |v| v == n as f64,
            WAIT,
        )
        .await;
    }

    async fn replays(&self, result: &str) -> f64 {
        self.metric(
            "ssegate_replays_total",
            &[("route", ROUTE), ("result", result)],
        )
        .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.proxy.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} (last lines of its log)", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Polls `cond` every 20 ms until it holds, for at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_some(what, limit, move || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` every 20 ms until it gives a value, for at most `limit`.
async fn until_some<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let every = Duration::from_millis(20);
    let found = poll_until(what, limit, every, f, Option::is_some).await;
    found.expect("poll_until returns what `done` accepted")
}

/// The Redis keys of shared streams, split: `(H, suffix)` for every key,
/// each asserted to be `ssegate:{H}:suffix` with `H` 16 lowercase hex digits.
async fn cluster_keys(redis: &RedisServer) -> Vec<(String, String)> {
    redis
        .keys("ssegate:*")
        .await
        .into_iter()
        .map(|k| {
            let rest = k
                .strip_prefix("ssegate:{")
                .unwrap_or_else(|| panic!("key {k:?} is not ssegate:{{H}}:…"));
            let (h, suffix) = rest
                .split_once("}:")
                .unwrap_or_else(|| panic!("key {k:?} has no hash tag"));
            assert!(
                h.len() == 16
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "hash tag of {k:?} is not 16 lowercase hex digits"
            );
            (h.to_string(), suffix.to_string())
        })
        .collect()
}

/// The one hash tag `H` in Redis, once its keys exist (bounded by `WAIT`).
async fn the_hash_tag(redis: &RedisServer) -> String {
    until_some(
        "the shared stream's keys in Redis",
        WAIT,
        move || async move {
            let keys = cluster_keys(redis).await;
            let tags: std::collections::BTreeSet<_> = keys.iter().map(|(h, _)| h.clone()).collect();
            assert!(
                tags.len() <= 1,
                "more than one stream key in Redis: {keys:?}"
            );
            tags.into_iter().next()
        },
    )
    .await
}

fn events_key(h: &str) -> String {
    format!("ssegate:{{{h}}}:events")
}

fn meta_key(h: &str) -> String {
    format!("ssegate:{{{h}}}:meta")
}

fn lease_key(h: &str) -> String {
    format!("ssegate:{{{h}}}:lease")
}

/// Awaits every task, in order, each bounded by `WAIT`.
async fn join_all<T: Send + 'static>(what: &str, tasks: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(within(what, t).await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------
// The ticking origin

/// An SSE origin on 127.0.0.1:0 that makes one event per `period` (ids 1,
/// 2, 3 …, `id: N\ndata: N\n\n`) and streams them to every request: from
/// the next one made, or after its `Last-Event-ID`. It logs each request's
/// `Last-Event-ID` and counts the streams open.
struct Ticker {
    addr: SocketAddr,
    st: Arc<TickerState>,
    tasks: Vec<JoinHandle<()>>,
}

struct TickerState {
    head: watch::Sender<u64>,
    /// The `Last-Event-ID` of every request, in arrival order.
    log: Mutex<Vec<Option<u64>>>,
    open: AtomicUsize,
}

/// Counts a stream open while it lives.
struct OpenGuard(Arc<TickerState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    async fn start(period: Duration) -> Ticker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = Arc::new(TickerState {
            head: watch::channel(0).0,
            log: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
        });
        let s = st.clone();
        let clock = tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                s.head.send_modify(|h| *h += 1);
            }
        });
        let s = st.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(ticker_serve(conn, s.clone()));
            }
        });
        Ticker {
            addr,
            st,
            tasks: vec![clock, accept],
        }
    }

    /// The newest id made.
    fn head(&self) -> u64 {
        *self.st.head.borrow()
    }

    fn open(&self) -> usize {
        self.st.open.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Option<u64>> {
        self.st.log.lock().unwrap().clone()
    }

    /// Waits until exactly `n` streams are open, for at most `limit`.
    async fn open_until(&self, n: usize, limit: Duration) {
        until(
            &format!("{n} open origin streams"),
            limit,
            move || async move { self.open() == n },
        )
        .await;
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn ticker_serve(mut conn: TcpStream, st: Arc<TickerState>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        let mut tmp = [0u8; 4096];
        match conn.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let last_id: Option<u64> = text.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim().eq_ignore_ascii_case("last-event-id") {
            Some(
                v.trim()
                    .parse()
                    .expect("a numeric Last-Event-ID at the origin"),
            )
        } else {
            None
        }
    });
    let mut rx = st.head.subscribe();
    let mut next = match last_id {
        Some(n) => n + 1,
        None => *rx.borrow_and_update() + 1,
    };
    st.log.lock().unwrap().push(last_id);
    st.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(st.clone());
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                transfer-encoding: chunked\r\nx-origin: ticker\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = conn.into_split();
    let mut sink = [0u8; 1024];
    loop {
        let newest = *rx.borrow_and_update();
        if next <= newest {
            let body = events(next..=newest);
            let mut chunk = format!("{:x}\r\n", body.len()).into_bytes();
            chunk.extend_from_slice(&body);
            chunk.extend_from_slice(b"\r\n");
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            next = newest + 1;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            n = rd.read(&mut sink) => if matches!(n, Ok(0) | Err(_)) { return },
        }
    }
}

// ---------------------------------------------------------------------------
// A slow network

/// A TCP forwarder on 127.0.0.1:0 to `target` that delivers every byte
/// `delay` after it came, each way: a Redis with a round trip of twice
/// `delay`, without limiting its throughput.
struct DelayProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    async fn start(target: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (crd, cwr) = client.into_split();
                let (srd, swr) = server.into_split();
                tokio::spawn(delayed_pump(crd, swr, delay));
                tokio::spawn(delayed_pump(srd, cwr, delay));
            }
        });
        DelayProxy { addr, accept }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn delayed_pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((due, data)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if wr.write_all(&data).await.is_err() {
            break;
        }
    }
    reader.abort();
    let _ = wr.shutdown().await;
}

// ---------------------------------------------------------------------------
// EventSource-like clients

/// One client's record.
#[derive(Default)]
struct EsState {
    /// The newest id received (0: none yet; ids start at 1).
    last: AtomicU64,
    /// Event-stream responses received (1 + reconnections that got one).
    streams: AtomicUsize,
    events: AtomicUsize,
    /// Every gap, duplicate and non-200 or non-SSE answer.
    errors: Mutex<Vec<String>>,
}

impl EsState {
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

/// `n` clients of `path`, client `i` connecting to `addrs[i % len]`, each
/// reconnecting 100 ms after any end with `Last-Event-ID` set to the newest
/// id it has.
struct EsClients {
    states: Vec<Arc<EsState>>,
    progress: Arc<Progress>,
    tasks: Vec<JoinHandle<()>>,
}

impl EsClients {
    fn spawn(addrs: &[SocketAddr], n: usize, path: &'static str) -> EsClients {
        let progress = Progress::new(n);
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..n {
            let st = Arc::new(EsState::default());
            states.push(st.clone());
            let addr = addrs[i % addrs.len()];
            let progress = progress.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    es_session(addr, path, i, &st, &progress).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        EsClients {
            states,
            progress,
            tasks,
        }
    }

    /// Waits until every client has received `id` (or a later one), for at
    /// most `limit`; fails early on a recorded error.
    async fn all_reached(&self, id: u64, limit: Duration, what: &str) {
        let waited = tokio::time::timeout(limit, self.progress.all_reached(id)).await;
        self.assert_clean();
        if waited.is_err() {
            let behind: Vec<(usize, u64)> = (0..self.states.len())
                .map(|i| (i, self.progress.get(i)))
                .filter(|(_, last)| *last < id)
                .take(10)
                .collect();
            panic!(
                "timed out ({limit:?}) waiting for every client to reach id {id} ({what}); \
                 behind (client, last id): {behind:?}"
            );
        }
    }

    /// No gap, no duplicate, no failed answer, for any client.
    fn assert_clean(&self) {
        let mut all = Vec::new();
        for (i, st) in self.states.iter().enumerate() {
            for e in st.errors.lock().unwrap().iter() {
                all.push(format!("client {i}: {e}"));
            }
        }
        assert!(
            all.is_empty(),
            "{} errors, the first ones: {:#?}",
            all.len(),
            &all[..all.len().min(20)]
        );
    }

    fn streams(&self, i: usize) -> usize {
        self.states[i].streams.load(Ordering::SeqCst)
    }

    fn len(&self) -> usize {
        self.states.len()
    }
}

impl Drop for EsClients {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One connection of an EventSource-like client: the request (with the
/// newest id as `Last-Event-ID`), the head, then events until the body ends
/// or fails.
async fn es_session(addr: SocketAddr, path: &str, me: usize, st: &EsState, progress: &Progress) {
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return;
    };
    let last = st.last.load(Ordering::SeqCst);
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n");
    if last > 0 {
        req.push_str(&format!("last-event-id: {last}\r\n"));
    }
    req.push_str("\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        if !fill(&mut conn, &mut buf).await {
            // Closed before a head (a balancer whose server died): retry.
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    buf.drain(..head_end + 4);
    let status = head.split(' ').nth(1).unwrap_or_default().to_string();
    if status != "200" || !head.contains("content-type: text/event-stream") {
        st.error(format!(
            "answered {status} (after id {last}): {:?}",
            head.lines().next()
        ));
        return;
    }
    st.streams.fetch_add(1, Ordering::SeqCst);
    let chunked = head.contains("transfer-encoding: chunked");
    let mut pending = Vec::new();
    let mut on_data = |data: &[u8]| {
        pending.extend_from_slice(data);
        while let Some(end) = find(&pending, b"\n\n") {
            let block: Vec<u8> = pending.drain(..end + 2).collect();
            on_block(&block, me, st, progress);
        }
    };
    loop {
        if chunked {
            let line_end = loop {
                if let Some(p) = find(&buf, b"\r\n") {
                    break p;
                }
                if !fill(&mut conn, &mut buf).await {
                    return;
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            else {
                st.error(format!("bad chunk size line {size_text:?}"));
                return;
            };
            while buf.len() < line_end + 2 + size + 2 {
                if !fill(&mut conn, &mut buf).await {
                    return;
                }
            }
            if size == 0 {
                return;
            }
            on_data(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
        } else {
            if !buf.is_empty() {
                on_data(&buf);
                buf.clear();
            }
            if !fill(&mut conn, &mut buf).await {
                return;
            }
        }
    }
}

async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16384];
    match conn.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

/// One SSE block: comments and `retry:` pass; an event must carry the id
/// after the client's newest one, with `data: <id>`.
fn on_block(block: &[u8], me: usize, st: &EsState, progress: &Progress) {
    let text = String::from_utf8_lossy(block);
    if text.starts_with(':') || text.starts_with("retry:") {
        return;
    }
    let Some(id) = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        st.error(format!("a block without a numeric id: {text:?}"));
        return;
    };
    if !text.lines().any(|l| l == format!("data: {id}")) {
        st.error(format!("event {id} with another data: {text:?}"));
    }
    let prev = st.last.load(Ordering::SeqCst);
    if prev != 0 && id != prev + 1 {
        let what = if id <= prev { "duplicate" } else { "gap" };
        st.error(format!("{what}: {id} after {prev}"));
    }
    if id > prev {
        st.last.store(id, Ordering::SeqCst);
        progress.set(me, id);
    }
    st.events.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// 1. Config: [cluster] errors, and `ssegate check`

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n";
const UPSTREAM: &str = "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\n";
const ROUTE_CONF: &str =
    "[[route]]\npath = \"/feeds/\"\nupstream = \"app\"\nshare = true\n[[route]]\npath = \"/\"\nupstream = \"app\"\n";

/// `head` (a `[cluster]` section from line 1) and the required sections.
fn cluster_doc(head: &str) -> String {
    format!("{head}{LISTENER}{UPSTREAM}{ROUTE_CONF}")
}

fn parse_errors(text: &str) -> Vec<ConfigError> {
    match config::parse(text, "test.toml", Path::new(".")) {
        Ok(_) => panic!("should be rejected:\n{text}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// Exactly one error, at `line`:`column` of test.toml, about `key`, its
/// reason containing `fragment`.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, key: &str, fragment: &str) {
    let errors = parse_errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error for:\n{text}\ngot: {errors:#?}"
    );
    let e = &errors[0];
    assert_eq!(e.file, "test.toml", "{e}");
    assert_eq!(
        e.line.zip(e.column),
        Some((line, column)),
        "position of {e}"
    );
    assert_eq!(e.key, key, "{e}");
    assert!(e.message.contains(fragment), "{e}\n  lacks {fragment:?}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("test.toml:{line}:{column}")) && shown.contains(key),
        "the error as shown lacks file:line:col or key: {shown}"
    );
}

#[test]
fn cluster_config_errors_name_file_line_column_key_and_reason() {
    // `redis` is required, and must be a redis:// or rediss:// URL.
    assert_error(
        &cluster_doc("[cluster]\nname = \"a\"\n"),
        1,
        1,
        "cluster.redis",
        "missing",
    );
    for bad in ["http://127.0.0.1:6379", "127.0.0.1:6379", "", "redis//x"] {
        assert_error(
            &cluster_doc(&format!("[cluster]\nredis = \"{bad}\"\n")),
            2,
            9,
            "cluster.redis",
            "redis://",
        );
    }
    let redis = "[cluster]\nredis = \"redis://127.0.0.1:6379\"\n";
    // `name`: not empty, at most 64 bytes, no whitespace or control characters.
    assert_error(
        &cluster_doc(&format!("{redis}name = \"\"\n")),
        3,
        8,
        "cluster.name",
        "empty",
    );
    assert_error(
        &cluster_doc(&format!("{redis}name = \"{}\"\n", "n".repeat(65))),
        3,
        8,
        "cluster.name",
        "64",
    );
    assert_error(
        &cluster_doc(&format!("{redis}name = \"ssegate a\"\n")),
        3,
        8,
        "cluster.name",
        "whitespace",
    );
    assert_error(
        &cluster_doc(&format!("{redis}name = \"ssegate\\u0007a\"\n")),
        3,
        8,
        "cluster.name",
        "control",
    );
    // `lease` at least 200ms (with a timeout below it, so only one error).
    assert_error(
        &cluster_doc(&format!("{redis}lease = \"150ms\"\ntimeout = \"50ms\"\n")),
        3,
        9,
        "cluster.lease",
        "200ms",
    );
    // `timeout` below `lease`: the default lease is 3s.
    assert_error(
        &cluster_doc(&format!("{redis}timeout = \"3s\"\n")),
        3,
        11,
        "cluster.timeout",
        "lease",
    );
    assert_error(
        &cluster_doc(&format!("{redis}lease = \"1s\"\ntimeout = \"2s\"\n")),
        4,
        11,
        "cluster.timeout",
        "lease",
    );
    // Unknown keys are named.
    assert_error(
        &cluster_doc(&format!("{redis}leese = \"1s\"\n")),
        3,
        1,
        "cluster.leese",
        "leese",
    );

    // The limits themselves are accepted.
    for ok in [
        format!(
            "{redis}name = \"{}\"\nlease = \"200ms\"\ntimeout = \"199ms\"\n",
            "n".repeat(64)
        ),
        "[cluster]\nredis = \"rediss://cache.example:6380/2\"\nname = \"a-1.b_c\"\n".to_string(),
        redis.to_string(),
    ] {
        let text = cluster_doc(&ok);
        if let Err(ConfigErrors(errors)) = config::parse(&text, "test.toml", Path::new(".")) {
            panic!("rejected:\n{text}\n{errors:#?}");
        }
    }
}

/// Runs `ssegate check -c <file with text>`; returns its stdout.
async fn check(text: &str) -> String {
    let dir = TempDir::new("cluster-check");
    let path = dir.0.join("ssegate.toml");
    std::fs::write(&path, text).unwrap();
    let out = within(
        "ssegate check",
        tokio::process::Command::new(bin())
            .arg("check")
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "ssegate check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cluster_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("cluster"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssegate_check_prints_the_cluster_line() {
    let out = check(&cluster_doc(
        "[cluster]\nredis = \"redis://127.0.0.1:6379\"\nname = \"ssegate-a\"\nlease = \"2s\"\ntimeout = \"500ms\"\n",
    ))
    .await;
    assert_eq!(
        cluster_lines(&out),
        ["cluster: redis://127.0.0.1:6379 as ssegate-a (lease 2s, timeout 500ms)"],
        "{out}"
    );

    // Defaults: name = host name + "-" + pid, lease 3s, timeout 1s.
    let out = check(&cluster_doc(
        "[cluster]\nredis = \"redis://127.0.0.1:6379\"\n",
    ))
    .await;
    let lines = cluster_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let rest = lines[0]
        .strip_prefix(&format!("cluster: redis://127.0.0.1:6379 as {host}-"))
        .unwrap_or_else(|| panic!("{:?}: not the default name {host}-<pid>", lines[0]));
    let (pid, tail) = rest.split_once(' ').unwrap();
    assert!(
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
        "{:?}",
        lines[0]
    );
    assert_eq!(tail, "(lease 3s, timeout 1s)");

    // A password in the URL is not printed.
    let out = check(&cluster_doc(
        "[cluster]\nredis = \"redis://user:s3cr3t@127.0.0.1:6379\"\nname = \"a\"\n",
    ))
    .await;
    let lines = cluster_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("cluster: redis://") && !lines[0].contains("s3cr3t"),
        "{:?}",
        lines[0]
    );

    // Without [cluster], the line says the cluster is off.
    let out = check(&cluster_doc("")).await;
    let lines = cluster_lines(&out);
    assert!(
        lines.len() == 1 && lines[0].starts_with("cluster: off"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------
// 2. Sharing across instances

/// Two instances, 200 subscribers each, one URL: the origin serves one
/// stream (to the holder, A), and every subscriber of both gets every event
/// whole and in order, with the origin's response head. Redis holds the
/// events under one hash tag, with the holder's name as the lease; the
/// metrics count appended on A and read on B, both equal to the events sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_with_200_subscribers_each_share_one_origin_stream() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start().await;
    let mut origin = SseOrigin::start_with(|_| Reply::stream_with(&[("x-origin", "one")])).await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    let b = Instance::start(origin.addr, &redis, "ssegate-b", "").await;
    const N: usize = 200;
    const EVENTS: u64 = 50;

    // A's first subscriber opens the stream: A holds it.
    let first = Sub::h1(a.addr(), FEED, &[ACCEPT_SSE]).await;
    first.assert_event_stream();
    let upstream = origin.next_stream().await;
    assert_eq!(upstream.req.target, FEED);
    a.role_until("holder", WAIT).await;

    let mut tasks = Vec::new();
    for i in 1..2 * N {
        let addr = if i < N { a.addr() } else { b.addr() };
        tasks.push(tokio::spawn(async move {
            Sub::h1(addr, FEED, &[ACCEPT_SSE]).await
        }));
    }
    let mut subs = vec![first];
    subs.extend(join_all("a subscriber's head", tasks).await);
    for (i, s) in subs.iter().enumerate() {
        s.assert_event_stream();
        assert_eq!(
            s.head.header("x-origin"),
            Some("one"),
            "subscriber {i} (of {}) lacks the origin's header: {:?}",
            if i < N { "A" } else { "B" },
            s.head
        );
    }
    a.subscribers_until(N).await;
    b.subscribers_until(N).await;
    b.role_until("follower", WAIT).await;
    assert_eq!(origin.stream_count(), 1, "B opened its own origin stream");

    upstream.send_events(1..=EVENTS);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.read_consecutive(0, EVENTS).await.len() }))
        .collect();
    let counts = join_all("a subscriber to read every event", readers).await;
    assert!(counts.iter().all(|n| *n == EVENTS as usize));
    assert_eq!(origin.stream_count(), 1);
    assert!(!upstream.is_closed());

    // Metrics: appended by the holder, read by the follower, each exactly once.
    a.metric_until(
        "ssegate_cluster_events_total",
        &[("route", ROUTE), ("op", "appended")],
        |v| v == EVENTS as f64,
        WAIT,
    )
    .await;
    assert_eq!(b.events("read").await, EVENTS as f64);
    assert_eq!(a.events("read").await, 0.0);
    assert_eq!(b.events("appended").await, 0.0);
    let (sa, sb) = (a.scrape().await, b.scrape().await);
    for (s, role) in [(&sa, "holder"), (&sb, "follower")] {
        for r in ["holder", "follower", "local"] {
            let want = if r == role { 1.0 } else { 0.0 };
            assert_eq!(
                s.get("ssegate_cluster_streams", &[("route", ROUTE), ("role", r)]),
                want,
                "ssegate_cluster_streams role {r} on the {role}"
            );
        }
        assert_eq!(s.get("ssegate_cluster_redis_up", &[]), 1.0);
    }
    assert_eq!(
        sa.get("ssegate_shared_upstream_opens_total", &[("route", ROUTE)]),
        1.0
    );
    assert_eq!(
        sb.get("ssegate_shared_upstream_opens_total", &[("route", ROUTE)]),
        0.0
    );
    for (s, op) in [
        (&sa, "lease"),
        (&sa, "append"),
        (&sb, "lease"),
        (&sb, "history"),
    ] {
        assert!(
            s.get("ssegate_cluster_redis_seconds_count", &[("op", op)]) >= 1.0,
            "no ssegate_cluster_redis_seconds{{op=\"{op}\"}} observation"
        );
    }

    // Redis: three keys with one hash tag, named in the role series.
    let h = the_hash_tag(&redis).await;
    let keys: Vec<String> = cluster_keys(&redis)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(keys, ["events", "lease", "meta"]);
    for (s, role) in [(&sa, "holder"), (&sb, "follower")] {
        assert_eq!(
            s.get(
                "ssegate_cluster_role",
                &[("route", ROUTE), ("key", &h), ("role", role)]
            ),
            1.0,
            "no ssegate_cluster_role series for key {h} as {role}: {:?}",
            s.0.keys()
                .filter(|k| k.starts_with("ssegate_cluster_role"))
                .collect::<Vec<_>>()
        );
        assert_eq!(s.total("ssegate_cluster_role"), 1.0);
    }
    assert_eq!(redis.key_type(&events_key(&h)).await, "stream");
    assert_eq!(redis.key_type(&meta_key(&h)).await, "hash");
    assert_eq!(
        redis.get(&lease_key(&h)).await.as_deref(),
        Some("ssegate-a")
    );
    let lease_ttl = redis.pttl(&lease_key(&h)).await;
    assert!(lease_ttl > 0 && lease_ttl <= 1000, "lease PTTL {lease_ttl}");
    let meta = redis.hgetall(&meta_key(&h)).await;
    let epoch = String::from_utf8(meta.get("e").expect("meta e").clone()).unwrap();
    assert!(epoch.parse::<u64>().is_ok(), "epoch {epoch:?}");
    assert_eq!(meta.get("s").map(|v| v.as_slice()), Some(&b"50"[..]));
    let head = String::from_utf8_lossy(meta.get("h").expect("meta h")).to_ascii_lowercase();
    assert!(head.contains("text/event-stream"), "meta h {head:?}");
    let entries = redis.xrange(&events_key(&h)).await;
    assert_eq!(entries.len(), EVENTS as usize);
    for (n, (id, fields)) in entries.iter().enumerate() {
        let seq = n as u64 + 1;
        assert_eq!(id, &format!("{epoch}-{seq}"));
        assert_eq!(
            fields.get("d").map(|v| v.as_slice()),
            Some(event(seq).as_bytes())
        );
        let i = fields
            .get("i")
            .map(|v| String::from_utf8_lossy(v).to_string());
        assert_eq!(
            i.as_deref(),
            Some(seq.to_string().as_str()),
            "entry {id}: the spec's field i is the event's SSE id"
        );
    }
}

/// A subscriber of A leaves after event 10 and comes back to C, which has
/// no subscriber for the URL, with `Last-Event-ID: 10`: C replays 11–20
/// from what Redis retained, then serves live events, and the origin still
/// serves one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_to_another_instance_gets_the_missed_events_from_redis() {
    let redis = RedisServer::start().await;
    let mut origin = SseOrigin::start().await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    let c = Instance::start(origin.addr, &redis, "ssegate-c", "").await;

    let mut witness = Sub::h1(a.addr(), FEED, &[ACCEPT_SSE]).await;
    let upstream = origin.next_stream().await;
    let mut client = Sub::h1(a.addr(), FEED, &[ACCEPT_SSE]).await;
    a.subscribers_until(2).await;
    upstream.send_events(1..=10);
    client.read_consecutive(0, 10).await;
    drop(client);
    a.subscribers_until(1).await;
    upstream.send_events(11..=20);
    witness.read_consecutive(0, 20).await;
    a.metric_until(
        "ssegate_cluster_events_total",
        &[("route", ROUTE), ("op", "appended")],
        |v| v == 20.0,
        WAIT,
    )
    .await;
    assert_eq!(c.counter("ssegate_shared_subscribers").await, 0.0);

    let mut back = Sub::h1(c.addr(), FEED, &[ACCEPT_SSE, ("last-event-id", "10")]).await;
    back.assert_event_stream();
    back.read_consecutive(10, 20).await;
    c.subscribers_until(1).await;
    upstream.send_events(21..=25);
    back.read_consecutive(20, 25).await;
    witness.read_consecutive(20, 25).await;

    assert_eq!(origin.stream_count(), 1, "{:#?}", origin.log());
    assert_eq!(c.replays("hit").await, 1.0);
    assert_eq!(c.replays("miss").await, 0.0);
    c.role_until("follower", WAIT).await;
    c.metric_until(
        "ssegate_cluster_events_total",
        &[("route", ROUTE), ("op", "read")],
        |v| v == 25.0,
        WAIT,
    )
    .await;
    assert_eq!(
        c.metric("ssegate_shared_upstream_opens_total", &[("route", ROUTE)])
            .await,
        0.0
    );
}

/// Redis keys of a shared stream: one hash tag; while a subscriber is on,
/// `events` and `meta` expire within `share_linger`, refreshed, and the
/// lease within `lease`; after the last subscriber left they are gone about
/// `share_linger` later, and so is the role series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_share_linger_after_the_last_subscriber() {
    let redis = RedisServer::start().await;
    let mut origin = SseOrigin::start().await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "share_linger = \"1s\"").await;

    let mut sub = Sub::h1(a.addr(), FEED, &[ACCEPT_SSE]).await;
    let upstream = origin.next_stream().await;
    upstream.send_events(1..=3);
    sub.read_consecutive(0, 3).await;
    let h = the_hash_tag(&redis).await;
    let r = &redis;
    until(
        "events, lease and meta in Redis",
        WAIT,
        move || async move { cluster_keys(r).await.len() == 3 },
    )
    .await;
    // Over two refresh periods (lease/3 each), the TTLs are those of a
    // live stream: refreshed (never gone), within share_linger (events,
    // meta) and the lease. The bounds are asserted last, so that a wrong
    // TTL does not hide the expiry's behaviour.
    let mut too_long: BTreeMap<String, i64> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        for key in [events_key(&h), meta_key(&h), lease_key(&h)] {
            let ttl = redis.pttl(&key).await;
            assert!(ttl > 0, "{key}: PTTL {ttl} with a subscriber on");
            if ttl > 1000 {
                let max = too_long.entry(key.clone()).or_default();
                *max = (*max).max(ttl);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = a.scrape().await;
    assert_eq!(
        s.get(
            "ssegate_cluster_role",
            &[("route", ROUTE), ("key", &h), ("role", "holder")]
        ),
        1.0
    );

    drop(sub);
    a.subscribers_until(0).await;
    let left = Instant::now();
    assert!(
        redis.pttl(&events_key(&h)).await > 0,
        "the events went as the last subscriber left"
    );
    until(
        "the keys to expire",
        Duration::from_secs(8),
        move || async move { r.keys("ssegate:*").await.is_empty() },
    )
    .await;
    let after = left.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "the keys went {after:?} after the last subscriber left, share_linger is 1s"
    );
    let a = &a;
    until("the role series to go", WAIT, move || async move {
        a.scrape().await.total("ssegate_cluster_role") == 0.0
    })
    .await;
    assert_eq!(a.streams("holder").await, 0.0);
    assert!(
        too_long.is_empty(),
        "the longest PTTLs (ms) over share_linger (1s) / lease (1s) with a subscriber on: {too_long:?}"
    );
}

/// With `[cluster]` on, a route without `share = true` sends no command to
/// Redis: its stream works, no key appears, and Redis's command statistics
/// show nothing but connection housekeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_share_never_touches_redis() {
    let redis = RedisServer::start().await;
    let mut origin = SseOrigin::start().await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    redis.reset_stats().await;

    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(Sub::h1(a.addr(), PLAIN, &[ACCEPT_SSE]).await);
    }
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(origin.next_stream().await);
    }
    for u in &ups {
        assert_eq!(u.req.target, PLAIN);
        u.send_events(1..=5);
    }
    for s in &mut subs {
        s.assert_event_stream();
        s.read_consecutive(0, 5).await;
    }
    drop(subs);
    for u in &ups {
        u.closed().await;
    }

    // The statistics first: the test's own KEYS below counts in them.
    let housekeeping = [
        "info", "config", "client", "hello", "ping", "select", "auth",
    ];
    let calls = redis.command_calls().await;
    let touched: BTreeMap<&String, &u64> = calls
        .iter()
        .filter(|(name, _)| !housekeeping.contains(&name.split('|').next().unwrap()))
        .collect();
    assert!(
        touched.is_empty(),
        "commands an unshared route sent: {touched:?}"
    );
    assert!(redis.keys("*").await.is_empty());
    let s = a.scrape().await;
    assert_eq!(s.total("ssegate_cluster_streams"), 0.0);
    assert_eq!(s.total("ssegate_cluster_events_total"), 0.0);
    assert_eq!(s.total("ssegate_cluster_role"), 0.0);
}

// ---------------------------------------------------------------------------
// 3. Failures: the holder killed, Redis stopped, Redis flushed

/// 200 clients behind HAProxy (`mode tcp`, round robin) over A and B, with
/// events at 50/s. SIGKILL on the holder: its clients reconnect through the
/// balancer to the other instance, which takes the lease and resumes the
/// origin after the newest id in Redis. Every client: no gap, no duplicate,
/// no failed answer; the origin ends with one stream, the survivor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_on_the_holder_behind_a_balancer_loses_and_repeats_nothing() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start().await;
    let origin = Ticker::start(Duration::from_millis(20)).await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    let b = Instance::start(origin.addr, &redis, "ssegate-b", "").await;
    let lb = Haproxy::start(&[a.addr(), b.addr()]).await;
    let mut instances = [a, b];
    const N: usize = 200;

    let clients = EsClients::spawn(&[lb.addr], N, FEED);
    let h0 = origin.head() + 10;
    clients
        .all_reached(h0, Duration::from_secs(20), "every client streaming")
        .await;
    for i in &instances {
        i.metric_until(
            "ssegate_shared_subscribers",
            &[("route", ROUTE)],
            |v| v > 0.0,
            WAIT,
        )
        .await;
    }
    let total: f64 = {
        let mut t = 0.0;
        for i in &instances {
            t += i.counter("ssegate_shared_subscribers").await;
        }
        t
    };
    assert_eq!(total, N as f64, "subscribers over both instances");
    assert_eq!(origin.open(), 1, "{:?}", origin.requests());
    let mut holder = None;
    for (n, i) in instances.iter().enumerate() {
        if i.streams("holder").await == 1.0 {
            assert!(holder.is_none(), "two holders");
            holder = Some(n);
        }
    }
    let holder = holder.expect("no holder");
    let survivor = 1 - holder;
    instances[survivor].role_until("follower", WAIT).await;
    let requests_before = origin.requests().len();

    instances[holder].kill().await;
    let at_kill = origin.head();
    clients
        .all_reached(
            at_kill + 150,
            Duration::from_secs(25),
            "every client resumed",
        )
        .await;
    clients.assert_clean();

    let s = &instances[survivor];
    s.role_until("holder", WAIT).await;
    assert_eq!(
        s.counter("ssegate_cluster_lease_takeovers_total").await,
        1.0
    );
    s.subscribers_until(N).await;
    origin.open_until(1, WAIT).await;
    let h = the_hash_tag(&redis).await;
    assert_eq!(
        redis.get(&lease_key(&h)).await.as_deref(),
        Some(s.name.as_str())
    );
    // Every request after the kill resumed: the takeover after the newest id
    // in Redis, any replay miss after its client's id.
    let after: Vec<Option<u64>> = origin.requests()[requests_before..].to_vec();
    assert!(!after.is_empty(), "the survivor never opened the origin");
    assert!(
        after.iter().all(|l| l.is_some_and(|id| id + 100 > at_kill)),
        "requests after the kill at {at_kill}: {after:?}"
    );
    let reconnected = (0..clients.len())
        .filter(|i| clients.streams(*i) > 1)
        .count();
    assert!(
        reconnected > 0,
        "no client reconnected: were they all on the survivor?"
    );
    assert!(clients
        .states
        .iter()
        .all(|s| s.events.load(Ordering::SeqCst) > 150));
}

/// How a test takes Redis away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// SIGTERM, then a restart on the same port: connections refused, then
    /// an empty Redis.
    Stopped,
    /// SIGSTOP, then SIGCONT: every command takes longer than `timeout`,
    /// then Redis answers again with what it had.
    Frozen,
}

/// Redis taken away while events flow to clients of A (the holder) and B:
/// both go local (B opens its own origin stream after its newest id), the
/// clients keep their connections without a gap or a duplicate; Redis
/// back, the cluster re-forms: one holder, one follower, one origin stream,
/// still the same client connections.
async fn clients_keep_their_streams_through(outage: Outage) {
    let _heavy = HEAVY.lock().await;
    let mut redis = RedisServer::start().await;
    let origin = Ticker::start(Duration::from_millis(20)).await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    let b = Instance::start(origin.addr, &redis, "ssegate-b", "").await;
    const N: usize = 60;

    let first = EsClients::spawn(&[a.addr()], 1, FEED);
    first
        .all_reached(origin.head() + 1, WAIT, "A's first client")
        .await;
    a.role_until("holder", WAIT).await;
    let clients = EsClients::spawn(&[a.addr(), b.addr()], N, FEED);
    clients
        .all_reached(origin.head() + 10, WAIT, "every client streaming")
        .await;
    b.role_until("follower", WAIT).await;
    assert_eq!(origin.open(), 1);
    let requests_before = origin.requests().len();
    let mut late = Vec::new();

    match outage {
        Outage::Stopped => redis.stop().await,
        Outage::Frozen => redis.freeze(),
    }
    for i in [&a, &b] {
        i.role_until("local", Duration::from_secs(5)).await;
        assert_eq!(
            i.counter("ssegate_cluster_fallbacks_total").await,
            1.0,
            "{}: fallbacks ({outage:?})",
            i.name
        );
    }
    origin.open_until(2, WAIT).await;
    let during: Vec<Option<u64>> = origin.requests()[requests_before..].to_vec();
    assert!(
        during.len() == 1 && during[0].is_some(),
        "B's own origin request must resume after its newest id: {during:?}"
    );
    clients
        .all_reached(origin.head() + 50, WAIT, "events while Redis is away")
        .await;
    for i in [&a, &b] {
        assert_eq!(i.counter("ssegate_cluster_fallbacks_total").await, 1.0);
        // Checked now, failed at the end: what follows still runs.
        let lease_ops = [("op", "lease")];
        let before = i
            .metric("ssegate_cluster_redis_seconds_count", &lease_ops)
            .await;
        if !i.gauge_becomes("ssegate_cluster_redis_up", 0.0, WAIT).await {
            let after = i
                .metric("ssegate_cluster_redis_seconds_count", &lease_ops)
                .await;
            late.push(format!(
                "{}: ssegate_cluster_redis_up stayed 1 for {WAIT:?} with Redis {outage:?} \
                 (lease commands observed meanwhile: {})",
                i.name,
                after - before
            ));
        }
    }

    match outage {
        Outage::Stopped => redis.restart().await,
        Outage::Frozen => redis.thaw(),
    }
    for i in [&a, &b] {
        i.metric_until("ssegate_cluster_redis_up", &[], |v| v == 1.0, WAIT)
            .await;
        i.metric_until(
            "ssegate_cluster_rejoins_total",
            &[("route", ROUTE)],
            |v| v >= 1.0,
            WAIT,
        )
        .await;
    }
    origin.open_until(1, Duration::from_secs(15)).await;
    let roles = (
        a.streams("holder").await + b.streams("holder").await,
        a.streams("follower").await + b.streams("follower").await,
        a.streams("local").await + b.streams("local").await,
    );
    assert_eq!(roles, (1.0, 1.0, 0.0), "(holders, followers, local)");
    clients
        .all_reached(origin.head() + 50, WAIT, "events after the rejoin")
        .await;
    clients.assert_clean();
    first.assert_clean();
    for i in 0..N {
        assert_eq!(clients.streams(i), 1, "client {i} had to reconnect");
    }
    assert_eq!(first.streams(0), 1);
    origin.open_until(1, WAIT).await;
    assert!(late.is_empty(), "{late:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_run_clients_keep_their_streams_and_the_cluster_reforms() {
    clients_keep_their_streams_through(Outage::Stopped).await
}

/// A Redis that stops answering is slow, not refused: each command fails
/// after `timeout`, and the instances behave as when it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_mid_run_counts_as_down_after_the_timeout() {
    clients_keep_their_streams_through(Outage::Frozen).await
}

/// Redis flushed while events flow: history is lost, and nobody jumps.
/// The holder's next append opens a new epoch; B, a follower, reads it,
/// counts the loss and lines up again by event id (serving its clients from
/// an origin request of its own after its newest id until Redis has it):
/// its clients keep their streams and miss nothing. A client that
/// left A before the flush comes back to C with an id no ring and no Redis
/// has: a replay miss, served by its own origin request after that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushed_redis_is_a_replay_miss_never_a_silent_jump() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start().await;
    let origin = Ticker::start(Duration::from_millis(20)).await;
    let a = Instance::start(origin.addr, &redis, "ssegate-a", "").await;
    let b = Instance::start(origin.addr, &redis, "ssegate-b", "").await;
    let c = Instance::start(origin.addr, &redis, "ssegate-c", "").await;
    const N: usize = 20;

    let on_a = EsClients::spawn(&[a.addr()], N, FEED);
    on_a.all_reached(origin.head() + 1, WAIT, "A's clients")
        .await;
    a.role_until("holder", WAIT).await;
    let on_b = EsClients::spawn(&[b.addr()], N, FEED);
    on_b.all_reached(origin.head() + 5, WAIT, "B's clients")
        .await;
    b.role_until("follower", WAIT).await;

    // A client of A reads a few events and leaves with the last id, L.
    let mut leaver = Sub::h1(a.addr(), FEED, &[ACCEPT_SSE]).await;
    let first = leaver.next_id().await;
    let l = leaver.read_consecutive(first, first + 5).await[4];
    drop(leaver);
    let h = the_hash_tag(&redis).await;
    let (r, events_h, meta_h) = (&redis, &events_key(&h), &meta_key(&h));
    until(&format!("event {l} in Redis"), WAIT, move || async move {
        r.xrange(events_h)
            .await
            .iter()
            .any(|(_, f)| f.get("d").map(|v| v.as_slice()) == Some(event(l).as_bytes()))
    })
    .await;
    let old_epoch: u64 = String::from_utf8(redis.hgetall(&meta_key(&h)).await["e"].clone())
        .unwrap()
        .parse()
        .unwrap();
    let requests_before = origin.requests().len();

    redis.flushall().await;
    // The next append starts a new epoch, larger than the old one, its
    // entries from seq 1 (the meta hash may show it first: the head goes
    // with a new epoch before any event).
    let first: String = until_some("an entry after the flush", WAIT, move || async move {
        r.xrange(events_h).await.first().map(|(id, _)| id.clone())
    })
    .await;
    let (epoch, seq) = first.split_once('-').expect("<epoch>-<seq>");
    let epoch: u64 = epoch.parse().expect("a numeric epoch");
    assert!(epoch > old_epoch, "epoch {epoch} after {old_epoch}");
    assert_eq!(seq, "1", "the first entry after the flush: {first}");
    let meta_epoch: u64 = String::from_utf8(redis.hgetall(meta_h).await["e"].clone())
        .unwrap()
        .parse()
        .unwrap();
    assert!(meta_epoch >= epoch, "meta e {meta_epoch} < {epoch}");
    b.metric_until(
        "ssegate_cluster_history_lost_total",
        &[("route", ROUTE)],
        |v| v >= 1.0,
        WAIT,
    )
    .await;

    // L is in no ring of C and no longer in Redis: a miss, resumed at the origin.
    let mut back = Sub::h1(
        c.addr(),
        FEED,
        &[ACCEPT_SSE, ("last-event-id", &l.to_string())],
    )
    .await;
    back.assert_event_stream();
    back.read_consecutive(l, l + 20).await;
    assert_eq!(c.replays("miss").await, 1.0);
    assert_eq!(c.replays("hit").await, 0.0);
    assert!(
        origin.requests()[requests_before..].contains(&Some(l)),
        "no origin request after {l}: {:?}",
        &origin.requests()[requests_before..]
    );

    let target = origin.head() + 50;
    on_a.all_reached(
        target,
        Duration::from_secs(15),
        "A's clients after the flush",
    )
    .await;
    on_b.all_reached(
        target,
        Duration::from_secs(15),
        "B's clients after the flush",
    )
    .await;
    on_a.assert_clean();
    on_b.assert_clean();
    for i in 0..N {
        assert_eq!(
            on_a.streams(i),
            1,
            "A's client {i} was ended: A holds the stream"
        );
    }
    drop(back);
    origin.open_until(1, Duration::from_secs(15)).await;
    // A follower that reads an entry of a new epoch never jumps: it lines
    // up by event id, so its clients keep their streams (assert_clean above
    // found no gap and no duplicate).
    for i in 0..N {
        assert_eq!(
            on_b.streams(i),
            1,
            "B's client {i} was ended: B lines up again instead"
        );
    }
}

/// A Redis slower than the gap between events (a 120 ms round trip, events
/// every 20 ms) but well within `timeout` (500 ms) is not a failure: the
/// holder keeps renewing its lease, nobody takes it over or falls back,
/// and the origin serves one stream all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_slower_than_the_events_but_within_the_timeout_keeps_one_holder() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start().await;
    let slow = DelayProxy::start(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        Duration::from_millis(60),
    )
    .await;
    let url = format!("redis://{}", slow.addr);
    let origin = Ticker::start(Duration::from_millis(20)).await;
    let a = Instance::start_url(origin.addr, &url, "ssegate-a", "").await;
    let b = Instance::start_url(origin.addr, &url, "ssegate-b", "").await;

    let first = EsClients::spawn(&[a.addr()], 1, FEED);
    first
        .all_reached(origin.head() + 1, WAIT, "A's first client")
        .await;
    a.role_until("holder", WAIT).await;
    let clients = EsClients::spawn(&[a.addr(), b.addr()], 20, FEED);
    clients
        .all_reached(origin.head() + 10, WAIT, "every client streaming")
        .await;
    let lease_ops = [("op", "lease")];
    let renewals = a
        .metric("ssegate_cluster_redis_seconds_count", &lease_ops)
        .await;

    // Four leases long.
    clients
        .all_reached(
            origin.head() + 200,
            Duration::from_secs(15),
            "four leases of events",
        )
        .await;
    clients.assert_clean();
    first.assert_clean();
    let renewed = a
        .metric("ssegate_cluster_redis_seconds_count", &lease_ops)
        .await
        - renewals;
    let takeovers = a.counter("ssegate_cluster_lease_takeovers_total").await
        + b.counter("ssegate_cluster_lease_takeovers_total").await;
    let fallbacks = a.counter("ssegate_cluster_fallbacks_total").await
        + b.counter("ssegate_cluster_fallbacks_total").await;
    let roles = (
        a.streams("holder").await,
        a.streams("follower").await,
        b.streams("holder").await,
        b.streams("follower").await,
    );
    assert_eq!(
        (roles, takeovers, fallbacks, origin.open()),
        ((1.0, 0.0, 0.0, 1.0), 0.0, 0.0, 1),
        "((A holder, A follower, B holder, B follower), takeovers, fallbacks, origin streams open); \
         A's lease commands in 4 s: {renewed}; origin requests: {:?}",
        origin.requests()
    );
    assert_eq!(origin.requests(), [None], "one origin request, ever");
    assert!(
        renewed >= 6.0,
        "A renewed its lease {renewed} times in 4 s (tick 333 ms)"
    );
}

// ---------------------------------------------------------------------------
// The store itself (`ssegate::cluster::Cluster`), its scripts against a real
// Redis: leases, epochs, trimming, catch-up and blocking reads.

fn store(redis: &RedisServer, name: &str) -> ssegate::cluster::Cluster {
    let settings = ssegate::config::ClusterSettings {
        redis: redis.url(),
        name: name.to_string(),
        lease: Duration::from_secs(2),
        timeout: Duration::from_millis(500),
    };
    let registry = prometheus::Registry::new();
    let metrics = ssegate::cluster::ClusterMetrics::register(&registry).expect("metrics");
    ssegate::cluster::Cluster::new(&settings, metrics).expect("a cluster")
}

fn appendable(n: u64) -> ssegate::cluster::Appendable {
    ssegate::cluster::Appendable {
        data: bytes::Bytes::from(event(n)),
        flags: b"d=",
        sse_id: Some(Arc::from(n.to_string().as_bytes())),
    }
}

#[tokio::test]
async fn the_store_keeps_one_writer_ordered_entries_and_epochs_that_only_grow() {
    use ssegate::cluster::{Appended, Claim, Epoch, StreamKeys, What};
    let redis = RedisServer::start().await;
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    let keys = StreamKeys::new("/feeds/", b"one stream");
    let ttl = Duration::from_secs(30);
    let head = b"200\ncontent-type: text/event-stream\n".as_slice();

    // One lease: a takes it, b cannot, a renews it; b may not append.
    assert_eq!(
        a.claim(&keys, Some(ttl)).await.unwrap(),
        Claim::Ours { fresh: true }
    );
    assert_eq!(b.claim(&keys, None).await.unwrap(), Claim::Theirs);
    assert_eq!(
        a.claim(&keys, None).await.unwrap(),
        Claim::Ours { fresh: false }
    );
    let refused = b
        .append(&keys, Epoch::Any, None, &[appendable(1)], 100, ttl)
        .await;
    assert_eq!(refused.unwrap(), Appended::NotHolder);
    assert!(redis.xrange(&keys.events).await.is_empty());

    // a appends 1..=250 in batches, trimmed to about 100 entries.
    let mut epoch = String::new();
    for batch in (1..=250).collect::<Vec<u64>>().chunks(10) {
        let entries: Vec<_> = batch.iter().map(|n| appendable(*n)).collect();
        let e = if epoch.is_empty() {
            Epoch::Any
        } else {
            Epoch::Continue(&epoch)
        };
        match a
            .append(&keys, e, Some(head), &entries, 100, ttl)
            .await
            .unwrap()
        {
            Appended::Done { epoch: now, seq } => {
                assert_eq!(seq, batch[batch.len() - 1], "seq counts entries");
                epoch = now;
            }
            other => panic!("append: {other:?}"),
        }
    }
    let history = b.history(&keys, 1000).await.unwrap();
    assert_eq!(history.epoch.as_deref(), Some(epoch.as_str()));
    assert_eq!(history.head.as_deref(), Some(head));
    let n = history.entries.len();
    assert!((100..250).contains(&n), "MAXLEN ~ 100 kept {n}");
    for (i, e) in history.entries.iter().enumerate() {
        let seq = 250 - (n - 1 - i) as u64;
        assert_eq!(e.id.to_string(), format!("{epoch}-{seq}"));
        match &e.what {
            What::Event {
                bytes,
                last_id,
                dispatched,
            } => {
                assert_eq!(bytes.as_ref(), event(seq).as_bytes());
                assert_eq!(last_id.as_deref(), Some(seq.to_string().as_bytes()));
                assert!(dispatched);
            }
            other => panic!("{other:?}"),
        }
    }
    let after = history.entries[n - 3].id;
    let rest = b.entries_after(&keys, after, 100).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        [249, 250]
    );

    // A blocking read wakes for the next append, and only for entries after.
    let mut reader = b.reader(Duration::from_secs(5)).await.unwrap();
    let last = history.entries[n - 1].id;
    let read = tokio::spawn({
        let keys = keys.clone();
        async move { reader.read(&keys, last, 10).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = Epoch::Continue(&epoch);
    a.append(&keys, e, None, &[appendable(251)], 100, ttl)
        .await
        .unwrap();
    let got = within("the blocked read", read).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id.seq, 251);

    // History lost: the old epoch is refused, a new one is above it and
    // above the newest entry's, and starts at seq 1.
    redis.cmd::<()>(&["DEL", &keys.meta]).await;
    let gone = a
        .append(
            &keys,
            Epoch::Continue(&epoch),
            None,
            &[appendable(252)],
            100,
            ttl,
        )
        .await;
    assert_eq!(gone.unwrap(), Appended::EpochGone);
    let new = match a
        .append(&keys, Epoch::New, Some(head), &[appendable(252)], 100, ttl)
        .await
    {
        Ok(Appended::Done { epoch, seq }) => {
            assert_eq!(seq, 1);
            epoch
        }
        other => panic!("{other:?}"),
    };
    assert!(new.parse::<u64>().unwrap() > epoch.parse::<u64>().unwrap());
    // A follower blocked after the old epoch's last entry is woken by it.
    let rest = b
        .entries_after(&keys, entry_id(&epoch, 251), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id.to_string(), format!("{new}-1"));

    // The lease goes when released, and b can take it then.
    a.release(&keys).await.unwrap();
    assert_eq!(
        b.claim(&keys, None).await.unwrap(),
        Claim::Ours { fresh: true }
    );
    // An end entry carries no bytes and no id.
    let end = ssegate::cluster::Appendable {
        data: bytes::Bytes::new(),
        flags: b"xc",
        sse_id: None,
    };
    b.append(&keys, Epoch::Continue(&new), None, &[end], 100, ttl)
        .await
        .unwrap();
    let last = b.history(&keys, 1).await.unwrap().entries;
    assert_eq!(last[0].what, What::End { clean: true });
    let ttl_ms = redis.pttl(&keys.events).await;
    assert!(ttl_ms > 0 && ttl_ms <= 30_000, "TTL {ttl_ms}");
}

/// The entry id `<epoch>-<seq>`.
fn entry_id(epoch: &str, seq: u64) -> ssegate::cluster::EntryId {
    ssegate::cluster::EntryId {
        epoch: epoch.parse().unwrap(),
        seq,
    }
}

/// An instance that took a stream's lease and could not open its upstream
/// (here: nothing listens at the origin's address, a 502) gives the lease
/// back at once, so that another instance need not wait for it to expire.
#[tokio::test]
async fn a_failed_opening_gives_its_lease_back() {
    let redis = RedisServer::start().await;
    let nothing = free_port();
    let origin: SocketAddr = format!("127.0.0.1:{nothing}").parse().unwrap();
    let a = Instance::start(origin, &redis, "ssegate-a", "").await;
    let mut client = H1Client::connect(a.addr()).await;
    // Not an EventSource (which would get the shed answer, a 200): a 502.
    client.get(FEED, &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 502);
    let keys = redis.keys("ssegate:*").await;
    let opened = Instant::now();
    // Released at once: gone well before the lease (1 s) would expire.
    loop {
        let leases = redis.keys("ssegate:*:lease").await;
        if leases.is_empty() {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_millis(600),
            "lease still held {:?} after the failed opening (keys {keys:?}, pttl {})",
            opened.elapsed(),
            redis.pttl(&leases[0]).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The lease was taken for the opening, and given back: two lease
    // commands (without the release, the key stays until it expires).
    // The release's answer is counted just after Redis ran it: wait for it.
    let lease_ops = [("op", "lease")];
    let name = "ssegate_cluster_redis_seconds_count";
    let ops = a.metric_until(name, &lease_ops, |v| v >= 2.0, WAIT).await;
    assert_eq!(ops, 2.0, "lease commands: the claim and the release");
}

//! The validated runtime configuration: what the rest of ssegate reads.
//!
//! Nothing here is deserialised directly. `config::file` parses the TOML
//! schema and `TryFrom` in `config::mod` turns it into these types, which is
//! where every check lives. Once a `Config` exists it is known to be usable:
//! addresses parse, routes name existing upstreams, certificates are readable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::compress::Coding;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages), or `<embedded>`.
    pub source: String,
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub timeouts: Timeouts,
    pub stream: StreamSettings,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// `[admin]`; `None` (the section is absent): no admin listener.
    pub admin: Option<Admin>,
    /// `[limits]`: open-stream limits, all off by default.
    pub limits: LimitSettings,
    /// `[websocket]`: defaults for WebSocket tunnels.
    pub websocket: WebSocketSettings,
    /// `[cluster]`: shared streams across instances through Redis; `None`
    /// (no section): sharing stays within this process.
    pub cluster: Option<ClusterSettings>,
}

/// `[cluster]`: where the cluster's Redis is and who this instance is.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://` or `rediss://` URL of Redis 6.2 or later.
    pub redis: String,
    /// This instance's name in the cluster: the value of the leases it
    /// holds. Default: host name and pid.
    pub name: String,
    /// How long a stream's lease lasts without renewal (renewed every
    /// third of it). Default 3 s.
    pub lease: Duration,
    /// A Redis command slower than this counts as a failure. Default 1 s.
    pub timeout: Duration,
}

/// `[websocket]`: defaults for WebSocket tunnels; routes may override the timeout.
#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// Close a tunnel with no byte in either direction for this long.
    /// `None` = off. Default 10 min.
    pub idle_timeout: Option<Duration>,
    /// Offer WebSockets over HTTP/2 (RFC 8441 extended CONNECT) on every
    /// listener, where some route allows WebSockets. Default true.
    pub h2: bool,
}

impl Config {
    /// Whether listeners advertise SETTINGS_ENABLE_CONNECT_PROTOCOL: only
    /// where a WebSocket can be served, since browsers take the setting as
    /// a promise (golang/go#53208).
    pub fn websocket_over_h2(&self) -> bool {
        self.websocket.h2 && self.routes.iter().any(|r| r.websocket)
    }
}

/// `[server]`: process-wide settings, mostly handed to pingora.
#[derive(Debug, Clone)]
pub struct Server {
    /// Worker threads (pingora `threads`). Default 2.
    pub threads: usize,
    /// pingora's pid file, used with `--daemon`. Default `/tmp/ssegate.pid`.
    pub pid_file: PathBuf,
    /// pingora's listener hand-over socket for `--upgrade`. Default `/tmp/ssegate_upgrade.sock`.
    pub upgrade_sock: PathBuf,
    /// Error log file when daemonised; `None` logs to stderr.
    pub error_log: Option<PathBuf>,
    /// Time between the shutdown signal and the end of open streams
    /// (pingora `grace_period_seconds`). Default 10 s.
    pub grace_period: Duration,
    /// Time after the grace period before the runtimes are dropped
    /// (pingora `graceful_shutdown_timeout_seconds`). Default 5 s.
    pub shutdown_timeout: Duration,
    /// `false` (default): each worker thread runs its own scheduler and keeps
    /// the connections it accepted, as nginx's workers do; `true`: idle
    /// threads steal tasks from busy ones (pingora `work_stealing`).
    pub work_stealing: bool,
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    /// `None`: plain TCP serving HTTP/1.1 and h2c. `Some`: rustls with ALPN h2 + http/1.1.
    pub tls: Option<Tls>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS for HTTP/2 connections. Default 1000.
    pub h2_max_streams: u32,
}

/// `[admin]`: a plain HTTP/1.1 listener serving `GET /metrics` and `GET /healthz`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Bound exactly as written; never shares a port with a `[[listener]]`.
    pub address: SocketAddr,
}

/// Certificate chain and key, both PEM, paths resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[timeouts]`: ordinary (non-stream) request timing.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect to an upstream server. Default 5 s.
    pub connect: Duration,
    /// Wait for the upstream response header, and between body reads of an
    /// ordinary response. Never applies to event streams. Default 60 s.
    pub read: Duration,
    /// Each write to the client or the upstream. Default 60 s.
    pub write: Duration,
    /// How long an idle upstream keep-alive connection stays pooled. Default 60 s.
    pub upstream_keepalive: Duration,
}

/// `[stream]`: defaults for event streams; routes may override some.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Comment written after this much upstream silence, at an event boundary. `None` = off. Default 15 s.
    pub heartbeat: Option<Duration>,
    /// Exact bytes of a heartbeat. Default `":\n\n"`. Validated: only comment lines, ends with a blank line.
    pub heartbeat_text: String,
    /// End the stream after this much upstream silence. `None` = off. Default 1 h.
    pub idle_timeout: Option<Duration>,
    /// Value of the `Cache-Control` header set on event streams. Default `no-cache`.
    pub cache_control: String,
    /// `retry:` value sent to clients when a stream is ended by a graceful shutdown. Default 1 s.
    pub shutdown_retry: Duration,
    /// Random extra added to `shutdown_retry`, uniform in [0, jitter]. Default 1 s.
    pub shutdown_retry_jitter: Duration,
    /// On a graceful shutdown or upgrade, each stream ends at its first event
    /// boundary after a random moment in [0, drain_window], so that the
    /// reconnections are spread out. Default 5 s; less than `grace_period`.
    pub drain_window: Duration,
    /// End a stream whose client accepts no byte for this long. Default 60 s.
    pub client_write_timeout: Duration,
    /// Bytes one stream may hold queued towards a client that does not read
    /// (its socket send buffer plus the chunk in hand); past it the
    /// upstream is not read. Default 256 KiB.
    pub client_buffer: usize,
    /// Event streams compressed at once across the process (route
    /// `compression`); past it, streams go out uncompressed. Default 1000;
    /// 0 compresses none.
    pub compression_max_streams: usize,
}

/// `[limits]`: how many event streams may be open at once, and the backoff
/// a shed client is told to wait. `None` = unlimited.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Open event streams across the whole process.
    pub max_streams: Option<usize>,
    /// Open event streams per client IP address.
    pub max_streams_per_client: Option<usize>,
    /// Client connections open at once across all listeners; past it a new
    /// connection is closed at once.
    pub max_connections: Option<usize>,
    /// Backoff for a shed client: the `retry:` of the 200 given to an
    /// `EventSource`, or `Retry-After` of a 503. Default 5 s, > 0.
    pub shed_retry: Duration,
    /// Random extra added to `shed_retry`, uniform in [0, jitter]. Default 5 s.
    pub shed_retry_jitter: Duration,
}

/// One `[[upstream]]` pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// At least one; tried round robin.
    pub servers: Vec<SocketAddr>,
    /// Protocol spoken to the servers.
    pub protocol: UpstreamProtocol,
    /// `health_check`: active checks of every server. `None` (the key is
    /// absent): none; servers are then judged by passive checks only.
    pub health_check: Option<ActiveCheck>,
    /// `max_fails`: failed attempts within `fail_timeout` that mark a
    /// server down for `fail_timeout` (passive checks, as nginx's). Default
    /// 1; 0 turns passive checks off.
    pub max_fails: u32,
    /// `fail_timeout`: the window failures are counted in, and how long a
    /// server they marked down is avoided. Default 10 s.
    pub fail_timeout: Duration,
}

/// An upstream's `health_check = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// `path`: a GET of this target; a 2xx or 3xx response header within
    /// `timeout` passes. `None`: a TCP connect is the check.
    pub path: Option<String>,
    /// Time between the starts of two checks of a server. Default 5 s.
    pub interval: Duration,
    /// A check that has not passed within this fails. Default 2 s, at most `interval`.
    pub timeout: Duration,
    /// Consecutive failed checks that mark a server down. Default 3.
    pub fall: u32,
    /// Consecutive passed checks that bring a down server back. Default 2.
    pub rise: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool (`"http1"`, the default).
    Http1,
    /// HTTP/2 over cleartext, prior knowledge (`"h2c"`).
    H2c,
}

/// One `[[route]]`, in file order.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None` matches any host. Lowercase, no port.
    pub host: Option<HostMatch>,
    /// Path prefix, starts with `/`.
    pub path: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub strip_prefix: bool,
    /// Per-route overrides; `None` = use `[stream]`.
    pub heartbeat: Option<Option<Duration>>,
    pub idle_timeout: Option<Option<Duration>>,
    /// Open event streams on this route; `None` = unlimited.
    pub max_streams: Option<usize>,
    /// What to do when the upstream of an event stream fails mid-stream.
    pub resume: Resume,
    /// Reconnection attempts before a resume gives up. Default 3.
    pub resume_attempts: u32,
    /// Wait before a reconnection when the upstream sent no `retry:`. Default 1 s.
    pub resume_backoff: Duration,
    /// `share = true`: identical subscribers share one upstream stream.
    /// `None` when the route does not share (the default).
    pub share: Option<Share>,
    /// `websocket`: WebSocket upgrades pass through (the default), or are
    /// refused with 403. Always false towards an h2c upstream.
    pub websocket: bool,
    /// `websocket_idle_timeout`: overrides `[websocket] idle_timeout`.
    pub websocket_idle_timeout: Option<Option<Duration>>,
    /// `compression`: the content codings offered to the route's event
    /// streams, most preferred first. Empty (the default): none.
    pub compression: Vec<Coding>,
}

/// A sharing route's settings (`share = true` and the `share_*`,
/// `replay_*` and `overflow` keys of its `[[route]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// `share_key`: request header names, lowercase, whose values select a
    /// different stream beyond host, path and query. Default empty.
    pub key_headers: Vec<String>,
    /// `share_public`: requests with `Cookie` or `Authorization` may share
    /// even when those headers are not in `key_headers`. Default false.
    pub public: bool,
    /// `share_linger`: how long a shared stream stays open after its last
    /// subscriber left. Default 30 s.
    pub linger: Duration,
    /// `replay_events`: events kept per shared stream for reconnecting
    /// subscribers. Default 1000; 0 keeps only what delivery needs.
    pub replay_events: usize,
    /// `replay_bytes`: and at most this many bytes. Default 1 MiB.
    pub replay_bytes: usize,
    /// `overflow`: what happens to a subscriber that falls behind the ring.
    pub overflow: Overflow,
    /// `share_auth`: a path on the route's upstream that authorises each
    /// subscriber (a GET subrequest, as nginx's `auth_request`). Starts with `/`.
    pub auth: Option<String>,
    /// `share_auth_cache`: how long an authorisation answer is reused for the
    /// same credentials. `None` = off (the default).
    pub auth_cache: Option<Duration>,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            key_headers: Vec::new(),
            public: false,
            linger: Duration::from_secs(30),
            replay_events: 1000,
            replay_bytes: 1024 * 1024,
            overflow: Overflow::Disconnect,
            auth: None,
            auth_cache: None,
        }
    }
}

/// A sharing route's `overflow` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `"disconnect"` (the default): the subscriber's stream ends at an event
    /// boundary with a jittered `retry:`; it comes back with Last-Event-ID.
    Disconnect,
    /// `"skip"`: the subscriber jumps to the newest event; skips are counted.
    Skip,
}

/// A route's `resume` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// `"off"` (the default): an upstream failure aborts the client's stream.
    Off,
    /// `"on-error"`: a GET stream whose upstream fails (reset, truncated
    /// body, idle timeout) is continued from another connection with
    /// `Last-Event-ID`, the client's stream staying open.
    OnError,
}

#[cfg(test)]
impl Route {
    /// A route to upstream 0 with every option at its default, for unit tests.
    pub(crate) fn for_test(host: Option<HostMatch>, path: &str) -> Route {
        Route {
            host,
            path: path.to_string(),
            upstream: 0,
            strip_prefix: false,
            heartbeat: None,
            idle_timeout: None,
            max_streams: None,
            resume: Resume::Off,
            resume_attempts: 3,
            resume_backoff: Duration::from_secs(1),
            share: None,
            websocket: true,
            websocket_idle_timeout: None,
            compression: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

//! The validating conversion from the file schema (`config::file`) to the
//! runtime model (`config::model`): every default, check and cross-reference
//! lives here, and every problem is collected rather than stopping at the
//! first, so one run of `ssegate check` lists all of them.
//!
//! Apart from reading TLS certificate and key files (a listener that cannot
//! load them is as broken as a bad address, and it is better to learn that
//! before any port is bound), this is pure.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::duration::{format_duration, parse_duration, UNIT_HELP};
use super::error::{ConfigError, ConfigErrors};
use super::file::{self, DurationValue, SizeValue};
use super::model::{
    ActiveCheck, Admin, ClusterSettings, Coding, Config, HostMatch, LimitSettings, Listener,
    Overflow, Resume, Route, Server, Share, StreamSettings, Timeouts, Tls, Upstream,
    UpstreamProtocol, WebSocketSettings,
};

// Defaults, as documented in `config::model` and `conf/ssegate.toml`.
const THREADS: usize = 2;
const PID_FILE: &str = "/tmp/ssegate.pid";
const UPGRADE_SOCK: &str = "/tmp/ssegate_upgrade.sock";
const GRACE_PERIOD: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const H2_MAX_STREAMS: u32 = 1000;
const H2_MAX_STREAMS_LIMIT: i64 = 1_000_000;
const CONNECT: Duration = Duration::from_secs(5);
const READ: Duration = Duration::from_secs(60);
const WRITE: Duration = Duration::from_secs(60);
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
const HEARTBEAT: Duration = Duration::from_secs(15);
const HEARTBEAT_TEXT: &str = ":\n\n";
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const CACHE_CONTROL: &str = "no-cache";
const SHUTDOWN_RETRY: Duration = Duration::from_secs(1);
const SHUTDOWN_RETRY_JITTER: Duration = Duration::from_secs(1);
const SHED_RETRY: Duration = Duration::from_secs(5);
const SHED_RETRY_JITTER: Duration = Duration::from_secs(5);
const DRAIN_WINDOW: Duration = Duration::from_secs(5);
const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_BUFFER: usize = 256 * 1024;
/// Compressed event streams at once: at the measured 175–315 KiB of
/// encoder state each (BENCHMARKS.md, "Compression"), a bounded share of
/// memory however many streams are open.
const COMPRESSION_MAX_STREAMS: usize = 1000;
/// At least one upstream read (16 KiB) plus its chunk framing must fit.
const CLIENT_BUFFER_MIN: usize = 32 * 1024;
const CLIENT_BUFFER_MAX: usize = 64 * 1024 * 1024;
const RESUME_ATTEMPTS: u32 = 3;
const RESUME_ATTEMPTS_MAX: i64 = 100;
const RESUME_BACKOFF: Duration = Duration::from_secs(1);
// Active checks default to HAProxy's fall and rise; passive to nginx's.
const CLUSTER_LEASE: Duration = Duration::from_secs(3);
const MIN_CLUSTER_LEASE: Duration = Duration::from_millis(200);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(1);
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const CHECK_FALL: u32 = 3;
const CHECK_RISE: u32 = 2;
const CHECK_COUNT_MAX: i64 = 1000;
const MAX_FAILS: u32 = 1;
const MAX_FAILS_MAX: i64 = 1000;
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
// A sharing route's defaults are `Share::default()`; these are its bounds.
const REPLAY_EVENTS_MAX: i64 = 1_000_000;
const REPLAY_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Hop-by-hop fields (RFC 9110 §7.6.1) that the proxy always removes, in
/// both directions (`proxy::headers`); every `proxy-*` field is removed too.
/// So none of them can select a shared stream (`share_key`).
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A parsed file plus what validation needs to phrase its errors.
pub struct Document<'a> {
    pub schema: file::File,
    /// The original text, to turn spans into line and column.
    pub text: &'a str,
    /// File name for messages.
    pub source: &'a str,
    /// Folder that relative certificate and key paths are resolved against.
    pub base_dir: &'a Path,
}

impl TryFrom<Document<'_>> for Config {
    type Error = ConfigErrors;

    fn try_from(doc: Document<'_>) -> Result<Config, ConfigErrors> {
        let mut check = Checker {
            text: doc.text,
            source: doc.source,
            errors: Vec::new(),
        };
        let file = doc.schema;
        let listeners = check.listeners(&file.listener, doc.base_dir);
        let server = check.server(&file.server);
        let upstreams = check.upstreams(&file.upstream);
        let mut routes = check.routes(&file.route, &file.upstream);
        check.websocket_upstreams(&mut routes, &file.route, &upstreams);
        let config = Config {
            source: doc.source.to_string(),
            stream: check.stream(&file.stream, &file.server, server.grace_period),
            server,
            admin: file.admin.as_ref().and_then(|a| check.admin(a, &listeners)),
            listeners,
            timeouts: check.timeouts(&file.timeouts),
            upstreams,
            routes,
            limits: check.limits(&file.limits),
            websocket: WebSocketSettings {
                idle_timeout: check.switch(
                    "websocket.idle_timeout",
                    file.websocket.idle_timeout.as_ref(),
                    Some(WEBSOCKET_IDLE_TIMEOUT),
                ),
                h2: file.websocket.h2.unwrap_or(true),
            },
            cluster: file.cluster.as_ref().and_then(|c| check.cluster(c)),
        };
        check.finish(config)
    }
}

/// `cluster.name`'s default: the host name and the pid, unique on a host
/// and readable in Redis.
fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_whitespace))
        .unwrap_or_else(|| "ssegate".to_string());
    format!("{host}-{}", std::process::id())
}

/// What a duration key accepts besides a plain positive duration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// Zero means "do not wait", which is a meaningful choice.
    ZeroToo,
    /// A timeout of zero would fail everything.
    PositiveOnly,
    /// `"off"` disables the feature; zero is rejected in favour of `"off"`.
    PositiveOrOff,
    /// Handed to pingora as whole seconds, so a fraction would be silently lost.
    WholeSeconds,
}

/// Collects errors while building the model; on error, fields get a
/// placeholder so the remaining checks can still run.
struct Checker<'a> {
    text: &'a str,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(self.source, self.text, span, key, message));
    }

    fn finish(mut self, config: Config) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(config);
        }
        // File order reads best; errors without a place (a missing section) go last.
        self.errors
            .sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        Err(ConfigErrors(self.errors))
    }

    fn server(&mut self, s: &file::ServerSection) -> Server {
        let threads = match &s.threads {
            None => THREADS,
            Some(t) => match usize::try_from(*t.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    let message = format!("must be at least 1, got {}", t.get_ref());
                    self.error(Some(t.span()), "server.threads", message);
                    THREADS
                }
            },
        };
        let pid_file = self.path("server.pid_file", s.pid_file.as_ref());
        let upgrade_sock = self.path("server.upgrade_sock", s.upgrade_sock.as_ref());
        Server {
            threads,
            pid_file: pid_file.unwrap_or_else(|| PathBuf::from(PID_FILE)),
            upgrade_sock: upgrade_sock.unwrap_or_else(|| PathBuf::from(UPGRADE_SOCK)),
            error_log: self.path("server.error_log", s.error_log.as_ref()),
            grace_period: self.duration(
                "server.grace_period",
                s.grace_period.as_ref(),
                GRACE_PERIOD,
                Accept::WholeSeconds,
            ),
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                s.shutdown_timeout.as_ref(),
                SHUTDOWN_TIMEOUT,
                Accept::WholeSeconds,
            ),
            work_stealing: s.work_stealing.unwrap_or(false),
        }
    }

    /// A file path setting; `None` when absent or invalid.
    fn path(&mut self, key: &str, value: Option<&Spanned<String>>) -> Option<PathBuf> {
        let value = value?;
        if value.get_ref().is_empty() {
            self.error(Some(value.span()), key, "must not be empty");
            return None;
        }
        Some(PathBuf::from(value.get_ref()))
    }

    fn listeners(&mut self, entries: &[file::ListenerEntry], base_dir: &Path) -> Vec<Listener> {
        if entries.is_empty() {
            self.error(
                None,
                "listener",
                "at least one [[listener]] is required, e.g. `[[listener]]` with `address = \"127.0.0.1:8080\"`",
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut listeners = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("listener[{i}]");
            let address_key = format!("{key}.address");
            let address = self.socket_addr(&address_key, &entry.address, "127.0.0.1:8080");
            if let Some(address) = address {
                if let Some(first) = seen.get(&address) {
                    let message = format!("{address} is already used by listener[{first}]");
                    self.error(Some(entry.address.span()), &address_key, message);
                } else {
                    seen.insert(address, i);
                }
            }
            listeners.push(Listener {
                address: address.unwrap_or_else(placeholder_addr),
                tls: entry.tls.as_ref().map(|t| self.tls(&key, t, base_dir)),
                h2_max_streams: self.h2_max_streams(&key, entry.h2_max_streams.as_ref()),
            });
        }
        listeners
    }

    /// `[admin]`: `None` when its address is unusable (the error is recorded).
    /// A listener whose own address did not parse holds a port-0 placeholder,
    /// which cannot clash because port 0 is refused here.
    fn admin(&mut self, section: &file::AdminSection, listeners: &[Listener]) -> Option<Admin> {
        let key = "admin.address";
        let address = self.socket_addr(key, &section.address, "127.0.0.1:9090")?;
        let span = Some(section.address.span());
        if address.port() == 0 {
            let message = "port 0 would bind a random port nobody can scrape; give a fixed one, e.g. \"127.0.0.1:9090\"";
            self.error(span, key, message);
            return None;
        }
        let clash = listeners
            .iter()
            .position(|l| bind_conflict(l.address, address));
        if let Some(i) = clash {
            let message = if listeners[i].address == address {
                format!("{address} is already used by listener[{i}]; the admin listener needs a port of its own")
            } else {
                format!(
                    "{address} overlaps listener[{i}] ({}): same port, and one of them binds every address; the admin listener needs a port of its own",
                    listeners[i].address
                )
            };
            self.error(span, key, message);
            return None;
        }
        Some(Admin { address })
    }

    /// `[cluster]`: `None` when its URL is unusable (the error is recorded).
    fn cluster(&mut self, section: &file::ClusterSection) -> Option<ClusterSettings> {
        let url = section.redis.get_ref();
        let span = Some(section.redis.span());
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        let parsed = if scheme_ok {
            redis::Client::open(url.as_str()).map_err(|e| e.to_string())
        } else {
            Err("not a Redis URL: write redis://HOST:PORT (or rediss:// for TLS)".to_string())
        };
        let redis_ok = match parsed {
            Ok(_) => true,
            Err(why) => {
                self.error(span, "cluster.redis", why);
                false
            }
        };
        let name = match &section.name {
            None => default_instance_name(),
            Some(n) => {
                let name = n.get_ref();
                let bad = if name.is_empty() {
                    Some("is empty; give this instance a name, e.g. \"ssegate-a\"")
                } else if name.len() > 64 {
                    Some("is longer than 64 bytes")
                } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    Some("has whitespace or control characters")
                } else {
                    None
                };
                if let Some(why) = bad {
                    self.error(Some(n.span()), "cluster.name", why);
                }
                name.clone()
            }
        };
        let lease = self.duration(
            "cluster.lease",
            section.lease.as_ref(),
            CLUSTER_LEASE,
            Accept::PositiveOnly,
        );
        if let Some(l) = section.lease.as_ref().filter(|_| lease < MIN_CLUSTER_LEASE) {
            let message = format!(
                "a lease under {} ms would be lost to any pause; give at least \"200ms\"",
                MIN_CLUSTER_LEASE.as_millis()
            );
            self.error(Some(l.span()), "cluster.lease", message);
        }
        let timeout = self.duration(
            "cluster.timeout",
            section.timeout.as_ref(),
            CLUSTER_TIMEOUT.min(lease / 2),
            Accept::PositiveOnly,
        );
        if timeout >= lease {
            let span = section
                .timeout
                .as_ref()
                .or(section.lease.as_ref())
                .map(|s| s.span());
            let message = format!(
                "must be shorter than cluster.lease ({lease:?}): a holder whose renewal may take longer than its lease loses it"
            );
            self.error(span, "cluster.timeout", message);
        }
        redis_ok.then(|| ClusterSettings {
            redis: url.clone(),
            name,
            lease,
            timeout,
        })
    }

    fn h2_max_streams(&mut self, listener: &str, value: Option<&Spanned<i64>>) -> u32 {
        let Some(value) = value else {
            return H2_MAX_STREAMS;
        };
        let n = *value.get_ref();
        match u32::try_from(n) {
            Ok(streams) if (1..=H2_MAX_STREAMS_LIMIT).contains(&n) => streams,
            _ => {
                let message = format!("must be between 1 and {H2_MAX_STREAMS_LIMIT}, got {n}");
                self.error(
                    Some(value.span()),
                    &format!("{listener}.h2_max_streams"),
                    message,
                );
                H2_MAX_STREAMS
            }
        }
    }

    fn socket_addr(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        example: &str,
    ) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                let message = format!(
                    "{:?} is not an IP:port address; write e.g. {example:?} (host names are not resolved)",
                    value.get_ref()
                );
                self.error(Some(value.span()), key, message);
                None
            }
        }
    }

    fn tls(&mut self, listener: &str, tls: &file::TlsEntry, base_dir: &Path) -> Tls {
        Tls {
            cert: self.pem_file(
                &format!("{listener}.tls.cert"),
                &tls.cert,
                base_dir,
                Pem::Cert,
            ),
            key: self.pem_file(&format!("{listener}.tls.key"), &tls.key, base_dir, Pem::Key),
        }
    }

    /// Resolves a certificate or key path and checks that it reads as PEM of
    /// the right kind (catches swapped or missing files before startup; rustls
    /// still does the real parsing).
    fn pem_file(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        base_dir: &Path,
        kind: Pem,
    ) -> PathBuf {
        let span = Some(value.span());
        if value.get_ref().is_empty() {
            self.error(
                span,
                key,
                format!("must not be empty; give the path of a PEM {}", kind.what()),
            );
            return PathBuf::new();
        }
        // `join` keeps an absolute path as it is.
        let path = base_dir.join(value.get_ref());
        match std::fs::read(&path) {
            Err(e) => {
                let message = format!("cannot read {} file {}: {e}", kind.what(), path.display());
                self.error(span, key, message);
            }
            Ok(bytes) if !kind.looks_like(&String::from_utf8_lossy(&bytes)) => {
                let message = format!(
                    "{} is not a PEM {}: no {} block found",
                    path.display(),
                    kind.what(),
                    kind.marker()
                );
                self.error(span, key, message);
            }
            Ok(_) => {}
        }
        path
    }

    fn timeouts(&mut self, t: &file::TimeoutsSection) -> Timeouts {
        use Accept::PositiveOnly;
        Timeouts {
            connect: self.duration(
                "timeouts.connect",
                t.connect.as_ref(),
                CONNECT,
                PositiveOnly,
            ),
            read: self.duration("timeouts.read", t.read.as_ref(), READ, PositiveOnly),
            write: self.duration("timeouts.write", t.write.as_ref(), WRITE, PositiveOnly),
            upstream_keepalive: self.duration(
                "timeouts.upstream_keepalive",
                t.upstream_keepalive.as_ref(),
                UPSTREAM_KEEPALIVE,
                PositiveOnly,
            ),
        }
    }

    fn stream(
        &mut self,
        s: &file::StreamSection,
        server: &file::ServerSection,
        grace_period: Duration,
    ) -> StreamSettings {
        let drain_window = match &s.drain_window {
            // The default fits inside any grace period: at most half of it.
            None => DRAIN_WINDOW.min(grace_period / 2),
            Some(value) => {
                let window = self.duration(
                    "stream.drain_window",
                    Some(value),
                    DRAIN_WINDOW,
                    Accept::ZeroToo,
                );
                if !window.is_zero() && window >= grace_period {
                    let from = if server.grace_period.is_some() {
                        ""
                    } else {
                        " (its default)"
                    };
                    let message = format!(
                        "must be shorter than server.grace_period{from}, {grace_period:?}: streams still open when the grace period ends are cut without a `retry:` hint"
                    );
                    self.error(Some(value.span()), "stream.drain_window", message);
                }
                window
            }
        };
        StreamSettings {
            drain_window,
            client_write_timeout: self.duration(
                "stream.client_write_timeout",
                s.client_write_timeout.as_ref(),
                CLIENT_WRITE_TIMEOUT,
                Accept::PositiveOnly,
            ),
            client_buffer: self.size(
                "stream.client_buffer",
                s.client_buffer.as_ref(),
                CLIENT_BUFFER,
                CLIENT_BUFFER_MIN..=CLIENT_BUFFER_MAX,
            ),
            compression_max_streams: self
                .compression_max_streams(s.compression_max_streams.as_ref()),
            heartbeat: self.switch("stream.heartbeat", s.heartbeat.as_ref(), Some(HEARTBEAT)),
            heartbeat_text: self.text_value(
                "stream.heartbeat_text",
                s.heartbeat_text.as_ref(),
                HEARTBEAT_TEXT,
                check_heartbeat_text,
            ),
            idle_timeout: self.switch(
                "stream.idle_timeout",
                s.idle_timeout.as_ref(),
                Some(IDLE_TIMEOUT),
            ),
            cache_control: self.text_value(
                "stream.cache_control",
                s.cache_control.as_ref(),
                CACHE_CONTROL,
                check_cache_control,
            ),
            shutdown_retry: self.duration(
                "stream.shutdown_retry",
                s.shutdown_retry.as_ref(),
                SHUTDOWN_RETRY,
                Accept::ZeroToo,
            ),
            shutdown_retry_jitter: self.duration(
                "stream.shutdown_retry_jitter",
                s.shutdown_retry_jitter.as_ref(),
                SHUTDOWN_RETRY_JITTER,
                Accept::ZeroToo,
            ),
        }
    }

    fn limits(&mut self, l: &file::LimitsSection) -> LimitSettings {
        LimitSettings {
            max_streams: self.stream_limit("limits.max_streams", l.max_streams.as_ref()),
            max_streams_per_client: self.stream_limit(
                "limits.max_streams_per_client",
                l.max_streams_per_client.as_ref(),
            ),
            max_connections: self.positive_count(
                "limits.max_connections",
                l.max_connections.as_ref(),
                "connections",
            ),
            // A zero backoff would turn every shed EventSource into a
            // reconnect loop against a proxy that is already full.
            shed_retry: self.duration(
                "limits.shed_retry",
                l.shed_retry.as_ref(),
                SHED_RETRY,
                Accept::PositiveOnly,
            ),
            shed_retry_jitter: self.duration(
                "limits.shed_retry_jitter",
                l.shed_retry_jitter.as_ref(),
                SHED_RETRY_JITTER,
                Accept::ZeroToo,
            ),
        }
    }

    /// `stream.compression_max_streams`: a count, 0 allowed (compress none).
    fn compression_max_streams(&mut self, value: Option<&Spanned<i64>>) -> usize {
        let Some(value) = value else {
            return COMPRESSION_MAX_STREAMS;
        };
        let n = *value.get_ref();
        usize::try_from(n).unwrap_or_else(|_| {
            let message = format!(
                "must be a whole number of streams, 0 or more, got {n}; 0 compresses no stream"
            );
            self.error(
                Some(value.span()),
                "stream.compression_max_streams",
                message,
            );
            COMPRESSION_MAX_STREAMS
        })
    }

    /// A route's `compression`: coding names, each once, in preference order.
    fn compression(&mut self, key: &str, value: Option<&Vec<Spanned<String>>>) -> Vec<Coding> {
        let mut codings: Vec<(Coding, usize)> = Vec::new();
        for (j, raw) in value.into_iter().flatten().enumerate() {
            let item = format!("{key}.compression[{j}]");
            let name = raw.get_ref();
            match Coding::from_name(name) {
                Some(c) => {
                    if let Some((_, first)) = codings.iter().find(|(k, _)| *k == c) {
                        let message =
                            format!("duplicate coding {name:?} (already compression[{first}])");
                        self.error(Some(raw.span()), &item, message);
                    } else {
                        codings.push((c, j));
                    }
                }
                None => {
                    let known: Vec<String> = Coding::ALL
                        .iter()
                        .map(|c| format!("{:?}", c.name()))
                        .collect();
                    let message = format!(
                        "unknown coding {name:?}; expected {} (lowercase), most preferred first",
                        known.join(", ")
                    );
                    self.error(Some(raw.span()), &item, message);
                }
            }
        }
        codings.into_iter().map(|(c, _)| c).collect()
    }

    /// A `max_streams`-style limit: absent is unlimited, else at least 1.
    fn stream_limit(&mut self, key: &str, value: Option<&Spanned<i64>>) -> Option<usize> {
        self.positive_count(key, value, "streams")
    }

    /// A limit counting `what`: absent is unlimited, else at least 1.
    fn positive_count(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        what: &str,
    ) -> Option<usize> {
        let value = value?;
        let n = *value.get_ref();
        match usize::try_from(n) {
            Ok(limit) if limit >= 1 => Some(limit),
            _ => {
                let message = format!(
                    "must be a positive whole number of {what}, got {n}; leave the key out for no limit"
                );
                self.error(Some(value.span()), key, message);
                None
            }
        }
    }

    /// A string setting with a default and a check returning the reason it is bad.
    fn text_value(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> String {
        let Some(value) = value else {
            return default.to_string();
        };
        if let Err(reason) = check(value.get_ref()) {
            self.error(Some(value.span()), key, reason);
        }
        value.get_ref().clone()
    }

    fn upstreams(&mut self, entries: &[file::UpstreamEntry]) -> Vec<Upstream> {
        if entries.is_empty() {
            self.error(
                None,
                "upstream",
                "at least one [[upstream]] is required, e.g. `[[upstream]]` with `name = \"app\"` and `servers = [\"127.0.0.1:3000\"]`",
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut upstreams = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("upstream[{i}]");
            let name = entry.name.get_ref();
            let name_span = Some(entry.name.span());
            if name.is_empty() {
                self.error(name_span, &format!("{key}.name"), "must not be empty");
            } else if let Some(first) = seen.get(name.as_str()) {
                let message =
                    format!("duplicate upstream name {name:?} (already used by upstream[{first}])");
                self.error(name_span, &format!("{key}.name"), message);
            } else {
                seen.insert(name, i);
            }
            let protocol = self.protocol(&key, entry.protocol.as_ref());
            // The HTTP check speaks HTTP/1.1, which an h2c (prior knowledge)
            // server does not: there, only the TCP connect check is offered.
            let h2c_path = entry
                .health_check
                .as_ref()
                .and_then(|h| h.path.as_ref())
                .filter(|_| protocol == UpstreamProtocol::H2c);
            if let Some(path) = h2c_path {
                self.error(
                    Some(path.span()),
                    &format!("{key}.health_check.path"),
                    "an HTTP check speaks HTTP/1.1, which this h2c upstream does not: leave `path` out for a TCP connect check",
                );
            }
            upstreams.push(Upstream {
                name: name.clone(),
                servers: self.servers(&key, &entry.servers),
                protocol,
                health_check: entry
                    .health_check
                    .as_ref()
                    .map(|h| self.health_check(&key, h)),
                max_fails: self
                    .count(
                        &format!("{key}.max_fails"),
                        entry.max_fails.as_ref(),
                        0..=MAX_FAILS_MAX,
                        "; 0 turns passive checks off",
                    )
                    .unwrap_or(MAX_FAILS),
                fail_timeout: self.duration(
                    &format!("{key}.fail_timeout"),
                    entry.fail_timeout.as_ref(),
                    FAIL_TIMEOUT,
                    Accept::PositiveOnly,
                ),
            });
        }
        upstreams
    }

    fn servers(
        &mut self,
        upstream: &str,
        servers: &Spanned<Vec<Spanned<String>>>,
    ) -> Vec<SocketAddr> {
        if servers.get_ref().is_empty() {
            let message = "at least one server is required, e.g. [\"127.0.0.1:3000\"]";
            self.error(
                Some(servers.span()),
                &format!("{upstream}.servers"),
                message,
            );
        }
        let mut addresses = Vec::with_capacity(servers.get_ref().len());
        for (j, server) in servers.get_ref().iter().enumerate() {
            let key = format!("{upstream}.servers[{j}]");
            if let Some(address) = self.socket_addr(&key, server, "127.0.0.1:3000") {
                addresses.push(address);
            }
        }
        addresses
    }

    /// An upstream's `health_check = { ... }`: every key has a default,
    /// and a check must end before the next one starts.
    fn health_check(&mut self, upstream: &str, h: &file::HealthCheckEntry) -> ActiveCheck {
        let key = format!("{upstream}.health_check");
        let path = h
            .path
            .as_ref()
            .and_then(|p| match check_health_path(p.get_ref()) {
                Ok(()) => Some(p.get_ref().clone()),
                Err(reason) => {
                    let message = format!("{:?} {reason}", p.get_ref());
                    self.error(Some(p.span()), &format!("{key}.path"), message);
                    None
                }
            });
        let interval = self.duration(
            &format!("{key}.interval"),
            h.interval.as_ref(),
            CHECK_INTERVAL,
            Accept::PositiveOnly,
        );
        let timeout = self.duration(
            &format!("{key}.timeout"),
            h.timeout.as_ref(),
            CHECK_TIMEOUT,
            Accept::PositiveOnly,
        );
        if timeout > interval {
            // Point at what was written: the timeout, or else the interval
            // that is shorter than the default timeout.
            let (name, span) = match (&h.timeout, &h.interval) {
                (Some(t), _) => ("timeout", Some(t.span())),
                (None, Some(i)) => ("interval", Some(i.span())),
                (None, None) => ("timeout", None),
            };
            let message = format!(
                "timeout ({}) must not exceed interval ({}): a check ends before the next one starts",
                format_duration(timeout),
                format_duration(interval)
            );
            self.error(span, &format!("{key}.{name}"), message);
        }
        let count = |check: &mut Self, name: &str, value: Option<&Spanned<i64>>, default| {
            check
                .count(&format!("{key}.{name}"), value, 1..=CHECK_COUNT_MAX, "")
                .unwrap_or(default)
        };
        ActiveCheck {
            path,
            interval,
            timeout,
            fall: count(self, "fall", h.fall.as_ref(), CHECK_FALL),
            rise: count(self, "rise", h.rise.as_ref(), CHECK_RISE),
        }
    }

    /// A whole number within `range`; `None` when absent or invalid (the
    /// error is recorded). `hint` ends the message.
    fn count(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        hint: &str,
    ) -> Option<u32> {
        let value = value?;
        let n = *value.get_ref();
        if range.contains(&n) {
            return u32::try_from(n).ok();
        }
        let message = format!(
            "must be a whole number from {} to {}, got {n}{hint}",
            range.start(),
            range.end()
        );
        self.error(Some(value.span()), key, message);
        None
    }

    fn protocol(&mut self, upstream: &str, value: Option<&Spanned<String>>) -> UpstreamProtocol {
        match value.map(|v| v.get_ref().as_str()) {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                let message = format!("unknown protocol {other:?}; expected \"http1\" or \"h2c\"");
                self.error(
                    value.map(Spanned::span),
                    &format!("{upstream}.protocol"),
                    message,
                );
                UpstreamProtocol::Http1
            }
        }
    }

    fn routes(
        &mut self,
        entries: &[file::RouteEntry],
        upstreams: &[file::UpstreamEntry],
    ) -> Vec<Route> {
        if entries.is_empty() {
            self.error(
                None,
                "route",
                "at least one [[route]] is required, e.g. `[[route]]` with `path = \"/\"` and `upstream = \"app\"`",
            );
        }
        // Keyed on the lowercased host as written, so an invalid host still
        // takes part and "*.A.com" collides with "*.a.com".
        let mut seen: HashMap<(Option<String>, &str), usize> = HashMap::new();
        let mut routes = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("route[{i}]");
            let path = entry.path.get_ref();
            if !path.starts_with('/') {
                let message = format!(
                    "{path:?} must start with \"/\", e.g. {:?}",
                    format!("/{path}")
                );
                self.error(Some(entry.path.span()), &format!("{key}.path"), message);
            }
            let host = entry.host.as_ref().map(|h| h.get_ref().to_lowercase());
            if let Some(first) = seen.get(&(host.clone(), path.as_str())) {
                let message = format!(
                    "duplicate route: route[{first}] already has {} and path {path:?}",
                    host.as_ref()
                        .map_or("any host".to_string(), |h| format!("host {h:?}"))
                );
                self.error(Some(entry.path.span()), &format!("{key}.path"), message);
            } else {
                seen.insert((host, path), i);
            }
            routes.push(self.route(&key, entry, upstreams));
        }
        routes
    }

    /// The per-route checks that need no other route.
    fn route(
        &mut self,
        key: &str,
        entry: &file::RouteEntry,
        upstreams: &[file::UpstreamEntry],
    ) -> Route {
        let host = entry
            .host
            .as_ref()
            .and_then(|h| match host_pattern(h.get_ref()) {
                Ok(host) => Some(host),
                Err(reason) => {
                    let message = format!("invalid host pattern {:?}: {reason}", h.get_ref());
                    self.error(Some(h.span()), &format!("{key}.host"), message);
                    None
                }
            });
        let override_of = |check: &mut Self, name: &str, value: Option<&Spanned<DurationValue>>| {
            value.and_then(|v| {
                check.parse_duration(&format!("{key}.{name}"), v, Accept::PositiveOrOff)
            })
        };
        Route {
            host,
            path: entry.path.get_ref().clone(),
            upstream: self.upstream_index(key, &entry.upstream, upstreams),
            strip_prefix: entry.strip_prefix.unwrap_or(false),
            heartbeat: override_of(self, "heartbeat", entry.heartbeat.as_ref()),
            idle_timeout: override_of(self, "idle_timeout", entry.idle_timeout.as_ref()),
            max_streams: self
                .stream_limit(&format!("{key}.max_streams"), entry.max_streams.as_ref()),
            resume: self.resume(&format!("{key}.resume"), entry.resume.as_ref()),
            resume_attempts: self.resume_attempts(
                &format!("{key}.resume_attempts"),
                entry.resume_attempts.as_ref(),
            ),
            resume_backoff: self.duration(
                &format!("{key}.resume_backoff"),
                entry.resume_backoff.as_ref(),
                RESUME_BACKOFF,
                Accept::PositiveOnly,
            ),
            share: self.share(key, entry),
            websocket: self.websocket(key, entry),
            websocket_idle_timeout: override_of(
                self,
                "websocket_idle_timeout",
                entry.websocket_idle_timeout.as_ref(),
            ),
            compression: self.compression(key, entry.compression.as_ref()),
        }
    }

    /// `websocket`, default true; a timeout for tunnels the route refuses
    /// would be a setting that does nothing, so it is an error.
    fn websocket(&mut self, key: &str, entry: &file::RouteEntry) -> bool {
        let on = entry.websocket.as_ref().is_none_or(|w| *w.get_ref());
        if let (false, Some(timeout)) = (on, &entry.websocket_idle_timeout) {
            self.error(
                Some(timeout.span()),
                &format!("{key}.websocket_idle_timeout"),
                "has no effect: this route refuses WebSockets (`websocket = false`)",
            );
        }
        on
    }

    /// Tunnels speak HTTP/1.1 Upgrade to the upstream, which an h2c
    /// (prior knowledge) server does not: such routes refuse WebSockets,
    /// and saying `websocket = true` on one is an error.
    fn websocket_upstreams(
        &mut self,
        routes: &mut [Route],
        entries: &[file::RouteEntry],
        upstreams: &[Upstream],
    ) {
        for (i, (route, entry)) in routes.iter_mut().zip(entries).enumerate() {
            let h2c = upstreams
                .get(route.upstream)
                .is_some_and(|u| u.protocol == UpstreamProtocol::H2c);
            if !h2c {
                continue;
            }
            if let Some(w) = entry.websocket.as_ref().filter(|w| *w.get_ref()) {
                self.error(
                    Some(w.span()),
                    &format!("route[{i}].websocket"),
                    "WebSockets need an HTTP/1.1 upstream: this route's upstream speaks h2c",
                );
            }
            route.websocket = false;
        }
    }

    /// `share = true` and the keys that only mean something with it: `None`
    /// when the route does not share, after an error for each such key set.
    fn share(&mut self, route: &str, entry: &file::RouteEntry) -> Option<Share> {
        if !entry.share.as_ref().is_some_and(|s| *s.get_ref()) {
            let hint = if entry.share.is_some() {
                "this route has `share = false`"
            } else {
                "add `share = true` to this route, or remove the key"
            };
            for (name, span) in sharing_keys_set(entry) {
                let message = format!("`{name}` has no effect without `share = true`; {hint}");
                self.error(Some(span), &format!("{route}.{name}"), message);
            }
            return None;
        }
        let defaults = Share::default();
        let key = |name: &str| format!("{route}.{name}");
        let auth = self.share_auth(&key("share_auth"), entry.share_auth.as_ref());
        let auth_cache = match &entry.share_auth_cache {
            Some(value) if entry.share_auth.is_none() => {
                let message =
                    "`share_auth_cache` has no effect without `share_auth`: it is how long an authorisation answer is reused";
                self.error(Some(value.span()), &key("share_auth_cache"), message);
                None
            }
            value => self.switch(
                &key("share_auth_cache"),
                value.as_ref(),
                defaults.auth_cache,
            ),
        };
        Some(Share {
            key_headers: self.share_key(&key("share_key"), entry.share_key.as_ref()),
            public: entry
                .share_public
                .as_ref()
                .map_or(defaults.public, |p| *p.get_ref()),
            linger: self.duration(
                &key("share_linger"),
                entry.share_linger.as_ref(),
                defaults.linger,
                Accept::ZeroToo,
            ),
            replay_events: self.replay_events(
                &key("replay_events"),
                entry.replay_events.as_ref(),
                defaults.replay_events,
            ),
            replay_bytes: self.size(
                &key("replay_bytes"),
                entry.replay_bytes.as_ref(),
                defaults.replay_bytes,
                0..=REPLAY_BYTES_MAX,
            ),
            overflow: self.overflow(&key("overflow"), entry.overflow.as_ref(), defaults.overflow),
            auth,
            auth_cache,
        })
    }

    /// `share_key`: header names, lowercase, each once.
    fn share_key(
        &mut self,
        key: &str,
        value: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Vec<String> {
        let Some(value) = value else {
            return Vec::new();
        };
        // Each valid name with the index it was first written at.
        let mut names: Vec<(String, usize)> = Vec::new();
        for (j, raw) in value.get_ref().iter().enumerate() {
            let item = format!("{key}[{j}]");
            match share_key_name(raw.get_ref()) {
                Ok(name) => {
                    if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                        let message = format!(
                            "duplicate header {name:?} (already share_key[{first}]); header names are case-insensitive"
                        );
                        self.error(Some(raw.span()), &item, message);
                    } else {
                        names.push((name, j));
                    }
                }
                Err(reason) => {
                    let message = format!("{:?} {reason}", raw.get_ref());
                    self.error(Some(raw.span()), &item, message);
                }
            }
        }
        names.into_iter().map(|(name, _)| name).collect()
    }

    fn replay_events(&mut self, key: &str, value: Option<&Spanned<i64>>, default: usize) -> usize {
        let Some(value) = value else {
            return default;
        };
        let n = *value.get_ref();
        match usize::try_from(n) {
            Ok(events) if (0..=REPLAY_EVENTS_MAX).contains(&n) => events,
            _ => {
                let message = format!(
                    "must be a whole number from 0 to {REPLAY_EVENTS_MAX}, got {n}; 0 keeps no events for replay"
                );
                self.error(Some(value.span()), key, message);
                default
            }
        }
    }

    fn overflow(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Overflow,
    ) -> Overflow {
        let Some(value) = value else {
            return default;
        };
        match value.get_ref().as_str() {
            "disconnect" => Overflow::Disconnect,
            "skip" => Overflow::Skip,
            other => {
                let message =
                    format!("unknown value {other:?}; expected \"disconnect\" or \"skip\"");
                self.error(Some(value.span()), key, message);
                default
            }
        }
    }

    /// `share_auth`: a path (and query) on the route's upstream.
    fn share_auth(&mut self, key: &str, value: Option<&Spanned<String>>) -> Option<String> {
        let value = value?;
        match check_share_auth(value.get_ref()) {
            Ok(()) => Some(value.get_ref().clone()),
            Err(reason) => {
                let message = format!("{:?} {reason}", value.get_ref());
                self.error(Some(value.span()), key, message);
                None
            }
        }
    }

    fn resume(&mut self, key: &str, value: Option<&Spanned<String>>) -> Resume {
        let Some(value) = value else {
            return Resume::Off;
        };
        match value.get_ref().as_str() {
            "off" => Resume::Off,
            "on-error" => Resume::OnError,
            other => {
                let message = format!("unknown value {other:?}; expected \"off\" or \"on-error\"");
                self.error(Some(value.span()), key, message);
                Resume::Off
            }
        }
    }

    fn resume_attempts(&mut self, key: &str, value: Option<&Spanned<i64>>) -> u32 {
        let Some(value) = value else {
            return RESUME_ATTEMPTS;
        };
        let n = *value.get_ref();
        if (1..=RESUME_ATTEMPTS_MAX).contains(&n) {
            return n as u32;
        }
        let message = format!("must be a whole number from 1 to {RESUME_ATTEMPTS_MAX}, got {n}; use resume = \"off\" for none");
        self.error(Some(value.span()), key, message);
        RESUME_ATTEMPTS
    }

    /// A byte size: a whole number of bytes or a string such as `"256KiB"`.
    fn size(
        &mut self,
        key: &str,
        value: Option<&Spanned<SizeValue>>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> usize {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            SizeValue::Integer(n) => usize::try_from(*n).map_err(|_| format!("{n} is negative")),
            SizeValue::Float(f) => Err(format!("{f} is not a whole number of bytes")),
            SizeValue::Text(t) => parse_size(t),
        };
        let result = parsed.and_then(|n| {
            if range.contains(&n) {
                Ok(n)
            } else {
                Err(format!(
                    "{n} bytes is out of range: from {} to {} bytes",
                    range.start(),
                    range.end()
                ))
            }
        });
        match result {
            Ok(n) => n,
            Err(reason) => {
                let message = format!(
                    "{reason}; write a size such as \"256KiB\", \"1MiB\" or 262144 (bytes)"
                );
                self.error(Some(value.span()), key, message);
                default
            }
        }
    }

    fn upstream_index(
        &mut self,
        route: &str,
        name: &Spanned<String>,
        upstreams: &[file::UpstreamEntry],
    ) -> usize {
        if let Some(index) = upstreams
            .iter()
            .position(|u| u.name.get_ref() == name.get_ref())
        {
            return index;
        }
        let known = if upstreams.is_empty() {
            "no [[upstream]] is defined".to_string()
        } else {
            let names: Vec<String> = upstreams
                .iter()
                .map(|u| format!("{:?}", u.name.get_ref()))
                .collect();
            format!("known upstreams: {}", names.join(", "))
        };
        let message = format!("unknown upstream {:?}; {known}", name.get_ref());
        self.error(Some(name.span()), &format!("{route}.upstream"), message);
        0
    }

    /// A duration that must be present in the model: absent or invalid gives the default.
    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<DurationValue>>,
        default: Duration,
        accept: Accept,
    ) -> Duration {
        value
            .and_then(|v| self.parse_duration(key, v, accept))
            .flatten()
            .unwrap_or(default)
    }

    /// A duration that `"off"` can disable (`None`).
    fn switch(
        &mut self,
        key: &str,
        value: Option<&Spanned<DurationValue>>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        value
            .and_then(|v| self.parse_duration(key, v, Accept::PositiveOrOff))
            .unwrap_or(default)
    }

    /// `Some(None)` is "off", `None` an error (already recorded).
    fn parse_duration(
        &mut self,
        key: &str,
        value: &Spanned<DurationValue>,
        accept: Accept,
    ) -> Option<Option<Duration>> {
        let span = Some(value.span());
        let text = match value.get_ref() {
            DurationValue::Text(text) => text,
            DurationValue::Integer(n) if *n >= 0 => {
                let message = format!("a duration is a string with a unit: write \"{n}s\" for {n} seconds ({UNIT_HELP})");
                self.error(span, key, message);
                return None;
            }
            DurationValue::Integer(_) | DurationValue::Float(_) => {
                let message = format!(
                    "a duration is a string with a unit, e.g. \"15s\" or \"1500ms\" ({UNIT_HELP})"
                );
                self.error(span, key, message);
                return None;
            }
        };
        if text == "off" {
            if accept == Accept::PositiveOrOff {
                return Some(None);
            }
            self.error(
                span,
                key,
                "\"off\" is not allowed here; give a duration such as \"5s\"",
            );
            return None;
        }
        let duration = match parse_duration(text) {
            Ok(duration) => duration,
            Err(reason) => {
                let or_off = if accept == Accept::PositiveOrOff {
                    " or \"off\""
                } else {
                    ""
                };
                let message = format!("invalid duration {text:?}: {reason}{or_off}");
                self.error(span, key, message);
                return None;
            }
        };
        if let Err(reason) = accept.check(duration) {
            self.error(span, key, reason);
            return None;
        }
        Some(Some(duration))
    }
}

impl Accept {
    fn check(self, duration: Duration) -> Result<(), &'static str> {
        match self {
            Accept::PositiveOnly if duration.is_zero() => Err("must be greater than zero"),
            Accept::PositiveOrOff if duration.is_zero() => {
                Err("zero is not allowed; write \"off\" to disable it")
            }
            Accept::WholeSeconds if duration.subsec_nanos() != 0 => {
                Err("must be whole seconds (pingora counts seconds), e.g. \"10s\"")
            }
            _ => Ok(()),
        }
    }
}

/// `"262144"`, `"256KiB"`, `"1MiB"`, `"64KB"`: binary units (KiB, MiB,
/// GiB) and, as their everyday aliases, K/KB, M/MB and G/GB, all powers of 1024.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid size {text:?}: no number"));
    }
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" | "kB" => 1024,
        "M" | "MB" | "MiB" => 1024 * 1024,
        "G" | "GB" | "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Would binding both fail? Same port, and the same IP or a wildcard that
/// covers the other: `0.0.0.0:P` covers every IPv4 `:P`, and `[::]:P` every
/// `:P` because pingora leaves sockets dual-stack (the Linux default).
fn bind_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// Stands in for an address that failed to parse; never reaches a `Config`.
fn placeholder_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

#[derive(Clone, Copy)]
enum Pem {
    Cert,
    Key,
}

impl Pem {
    fn what(self) -> &'static str {
        match self {
            Pem::Cert => "certificate",
            Pem::Key => "private key",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Pem::Cert => "\"-----BEGIN CERTIFICATE-----\"",
            Pem::Key => "\"-----BEGIN ... PRIVATE KEY-----\"",
        }
    }

    fn looks_like(self, text: &str) -> bool {
        match self {
            Pem::Cert => {
                text.contains("-----BEGIN CERTIFICATE-----")
                    && text.contains("-----END CERTIFICATE-----")
            }
            // PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY").
            Pem::Key => {
                text.lines().any(|line| {
                    let line = line.trim_end();
                    line.starts_with("-----BEGIN ") && line.ends_with("PRIVATE KEY-----")
                }) && text.contains("-----END ")
            }
        }
    }
}

/// `example.com` -> `Exact`, `*.example.com` -> `Suffix(".example.com")`,
/// lowercased because host names compare case-insensitively.
pub(crate) fn host_pattern(raw: &str) -> Result<HostMatch, String> {
    let host = raw.to_lowercase();
    if host.is_empty() {
        return Err("must not be empty; leave `host` out to match any host".into());
    }
    if host.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    if host.contains('/') {
        return Err(
            "must be a host name only, without scheme or path, e.g. \"example.com\"".into(),
        );
    }
    if host.contains(':') {
        return Err("must not contain a port (\":\"); routes match the host name only".into());
    }
    let wildcard = "\"*\" is only allowed as a leading \"*.\", e.g. \"*.example.com\"";
    match host.strip_prefix("*.") {
        Some("") => Err("\"*.\" must be followed by a domain, e.g. \"*.example.com\"".into()),
        Some(rest) if rest.contains('*') => Err(wildcard.into()),
        Some(rest) => Ok(HostMatch::Suffix(format!(".{rest}"))),
        None if host.contains('*') => Err(wildcard.into()),
        None => Ok(HostMatch::Exact(host)),
    }
}

/// A heartbeat must be invisible to `EventSource`: comment lines only,
/// terminated by a blank line so it cannot merge with the next event.
pub(crate) fn check_heartbeat_text(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(
            "must not be empty; to disable heartbeats set `stream.heartbeat = \"off\"`".into(),
        );
    }
    if text.contains('\r') {
        return Err("must not contain \"\\r\"; end lines with \"\\n\"".into());
    }
    let Some(body) = text.strip_suffix("\n\n") else {
        return Err(format!(
            "{text:?} must end with a blank line (\"\\n\\n\"), e.g. \":\\n\\n\""
        ));
    };
    for (n, line) in body.split('\n').enumerate() {
        if !line.starts_with(':') {
            return Err(format!(
                "line {} ({line:?}) is not an SSE comment; every line must start with \":\", e.g. \":\\n\\n\"",
                n + 1
            ));
        }
    }
    Ok(())
}

/// Must be a valid header value; control characters would break the response head.
pub(crate) fn check_cache_control(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty, e.g. \"no-cache\"".into());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// The sharing keys other than `share` that `entry` sets, with the span of each value.
fn sharing_keys_set(entry: &file::RouteEntry) -> Vec<(&'static str, Range<usize>)> {
    [
        ("share_key", entry.share_key.as_ref().map(Spanned::span)),
        (
            "share_public",
            entry.share_public.as_ref().map(Spanned::span),
        ),
        (
            "share_linger",
            entry.share_linger.as_ref().map(Spanned::span),
        ),
        (
            "replay_events",
            entry.replay_events.as_ref().map(Spanned::span),
        ),
        (
            "replay_bytes",
            entry.replay_bytes.as_ref().map(Spanned::span),
        ),
        ("overflow", entry.overflow.as_ref().map(Spanned::span)),
        ("share_auth", entry.share_auth.as_ref().map(Spanned::span)),
        (
            "share_auth_cache",
            entry.share_auth_cache.as_ref().map(Spanned::span),
        ),
    ]
    .into_iter()
    .filter_map(|(name, span)| Some((name, span?)))
    .collect()
}

/// A `share_key` entry as the lowercase header name it selects on, or the
/// reason it cannot select a shared stream.
pub(crate) fn share_key_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("is empty; give a request header name, e.g. \"accept-language\"".into());
    }
    let name = http::HeaderName::from_bytes(raw.as_bytes())
        .map_err(|_| {
            "is not a header name (letters, digits and !#$%&'*+-.^_`|~ only), e.g. \"accept-language\"".to_string()
        })?
        .as_str()
        .to_string();
    if name == "host" {
        return Err(
            "is redundant: host, path and query always select the stream; leave it out".into(),
        );
    }
    if name == "last-event-id" {
        return Err(
            "selects where a subscriber resumes in a stream's replay, not which stream it joins; leave it out".into(),
        );
    }
    if HOP_BY_HOP.contains(&name.as_str()) || name.starts_with("proxy-") {
        return Err(
            "is a hop-by-hop header, removed before the upstream, so it cannot select a stream"
                .into(),
        );
    }
    Ok(name)
}

/// `share_auth` must be an origin-form request target: a path, maybe a query.
/// A health check's `path`: a request target on the upstream's servers,
/// held to the same rules as `share_auth`'s.
pub(crate) fn check_health_path(target: &str) -> Result<(), String> {
    if !target.starts_with('/') {
        return Err("must be a path starting with \"/\", e.g. \"/healthz\"".into());
    }
    check_share_auth(target)
}

pub(crate) fn check_share_auth(target: &str) -> Result<(), String> {
    if !target.starts_with('/') {
        return Err(
            "must be a path on the route's upstream starting with \"/\", e.g. \"/auth/check\""
                .into(),
        );
    }
    if target.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace; percent-encode it (%20)".into());
    }
    if target.contains('#') {
        return Err("must not contain \"#\": a fragment is never sent to a server".into());
    }
    if target.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(
            "is not a valid path and query; percent-encode characters outside the URI syntax"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const REST: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n\
        [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\n\
        [[upstream]]\nname = \"push\"\nservers = [\"127.0.0.1:3100\"]\nprotocol = \"h2c\"\n\
        [[route]]\npath = \"/\"\nupstream = \"app\"\n";

    fn config(head: &str) -> Config {
        let text = format!("{head}\n{REST}");
        match parse(&text, "t.toml", Path::new(".")) {
            Ok(config) => config,
            Err(e) => panic!("should be valid:\n{text}\n{e}"),
        }
    }

    /// The keys and messages of all errors for `head` + a valid rest.
    fn errors(head: &str) -> Vec<(String, String)> {
        let text = format!("{head}\n{REST}");
        match parse(&text, "t.toml", Path::new(".")) {
            Ok(_) => panic!("should be invalid:\n{text}"),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        }
    }

    fn assert_one_error(head: &str, key: &str, fragment: &str) {
        let errors = errors(head);
        assert_eq!(errors.len(), 1, "{head}: {errors:?}");
        assert_eq!(errors[0].0, key, "{head}");
        assert!(
            errors[0].1.contains(fragment),
            "{head}: {:?} lacks {fragment:?}",
            errors[0].1
        );
    }

    /// An extra upstream `hc` with `keys`, for the health-check tests.
    fn hc(keys: &str) -> String {
        format!("[[upstream]]\nname = \"hc\"\nservers = [\"127.0.0.1:3200\"]\n{keys}")
    }

    #[test]
    fn health_check_settings() {
        let c = config("");
        let app = &c.upstreams[0];
        assert_eq!(app.health_check, None);
        assert_eq!(
            (app.max_fails, app.fail_timeout),
            (1, Duration::from_secs(10))
        );
        // Every key of the table has a default.
        let c = config(&hc("health_check = {}"));
        assert_eq!(
            c.upstreams[0].health_check,
            Some(ActiveCheck {
                path: None,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                fall: 3,
                rise: 2,
            })
        );
        let c = config(&hc(
            "health_check = { path = \"/healthz?deep=1\", interval = \"100ms\", timeout = \"100ms\", fall = 1, rise = 5 }\n\
             max_fails = 0\nfail_timeout = \"1m\"",
        ));
        let u = &c.upstreams[0];
        assert_eq!(
            u.health_check,
            Some(ActiveCheck {
                path: Some("/healthz?deep=1".into()),
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(100),
                fall: 1,
                rise: 5,
            })
        );
        assert_eq!((u.max_fails, u.fail_timeout), (0, Duration::from_secs(60)));
    }

    #[test]
    fn an_h2c_upstream_gets_only_a_tcp_check() {
        assert_one_error(
            "[[upstream]]\nname = \"h2\"\nservers = [\"127.0.0.1:3200\"]\nprotocol = \"h2c\"\n\
             health_check = { path = \"/healthz\" }",
            "upstream[0].health_check.path",
            "h2c",
        );
        let c = config(
            "[[upstream]]\nname = \"h2\"\nservers = [\"127.0.0.1:3200\"]\nprotocol = \"h2c\"\n\
             health_check = { interval = \"5s\" }",
        );
        assert!(c.upstreams[0].health_check.is_some());
    }

    #[test]
    fn health_check_errors() {
        let key = |k: &str| format!("upstream[0].{k}");
        for (keys, at, fragment) in [
            (
                "health_check = { path = \"healthz\" }",
                "health_check.path",
                "starting with \"/\"",
            ),
            (
                "health_check = { path = \"/a b\" }",
                "health_check.path",
                "whitespace",
            ),
            (
                "health_check = { interval = \"0s\" }",
                "health_check.interval",
                "greater than zero",
            ),
            (
                "health_check = { timeout = 2 }",
                "health_check.timeout",
                "write \"2s\"",
            ),
            (
                "health_check = { interval = \"1s\", timeout = \"3s\" }",
                "health_check.timeout",
                "timeout (3s) must not exceed interval (1s)",
            ),
            // The default timeout (2s) is longer than this interval.
            (
                "health_check = { interval = \"1s\" }",
                "health_check.interval",
                "timeout (2s)",
            ),
            (
                "health_check = { fall = 0 }",
                "health_check.fall",
                "from 1 to 1000, got 0",
            ),
            (
                "health_check = { rise = -1 }",
                "health_check.rise",
                "got -1",
            ),
            ("max_fails = -1", "max_fails", "0 turns passive checks off"),
            ("fail_timeout = \"0s\"", "fail_timeout", "greater than zero"),
        ] {
            assert_one_error(&hc(keys), &key(at), fragment);
        }
    }

    #[test]
    fn websocket_settings() {
        let c = config("");
        assert_eq!(c.websocket.idle_timeout, Some(Duration::from_secs(600)));
        assert!(c.websocket.h2);
        assert!(c.routes[0].websocket);
        assert_eq!(c.routes[0].websocket_idle_timeout, None);
        assert!(c.websocket_over_h2());

        let c = config(
            "[websocket]\nidle_timeout = \"off\"\nh2 = false\n\
             [[route]]\npath = \"/ws/\"\nupstream = \"app\"\nwebsocket_idle_timeout = \"1h\"\n\
             [[route]]\npath = \"/no/\"\nupstream = \"app\"\nwebsocket = false\n\
             [[route]]\npath = \"/push/\"\nupstream = \"push\"\n",
        );
        assert_eq!(c.websocket.idle_timeout, None);
        assert!(!c.websocket_over_h2());
        assert_eq!(
            c.routes[0].websocket_idle_timeout,
            Some(Some(Duration::from_secs(3600)))
        );
        assert!(!c.routes[1].websocket);
        // An h2c upstream's routes refuse WebSockets.
        assert!(!c.routes[2].websocket);

        // The setting is advertised only where a route allows WebSockets.
        let only_refusing = "[[listener]]\naddress = \"127.0.0.1:8080\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\nwebsocket = false\n";
        let c = parse(only_refusing, "t.toml", Path::new(".")).expect("valid");
        assert!(c.websocket.h2 && !c.websocket_over_h2());
    }

    #[test]
    fn cluster_section() {
        assert!(config("").cluster.is_none(), "no [cluster]: one machine");
        let c = config("[cluster]\nredis = \"redis://127.0.0.1:6379\"\nname = \"ssegate-a\"");
        let cluster = c.cluster.expect("[cluster] kept");
        assert_eq!(cluster.redis, "redis://127.0.0.1:6379");
        assert_eq!(cluster.name, "ssegate-a");
        assert_eq!(cluster.lease, Duration::from_secs(3));
        assert_eq!(cluster.timeout, Duration::from_secs(1));
        let c = config("[cluster]\nredis = \"rediss://r.example:6380/2\"\nlease = \"1s\"");
        let cluster = c.cluster.expect("[cluster] kept");
        assert_eq!(
            cluster.timeout,
            Duration::from_millis(500),
            "half the lease"
        );
        assert!(cluster.name.ends_with(&format!("-{}", std::process::id())));
        assert!(!cluster.name.contains(char::is_whitespace));
    }

    #[test]
    fn cluster_errors() {
        let rows = [
            (
                "redis = \"http://r:6379\"",
                "cluster.redis",
                "not a Redis URL",
            ),
            ("redis = \"redis://r:notaport\"", "cluster.redis", ""),
            (
                "redis = \"redis://r\"\nname = \"\"",
                "cluster.name",
                "empty",
            ),
            (
                "redis = \"redis://r\"\nname = \"a b\"",
                "cluster.name",
                "whitespace",
            ),
            (
                "redis = \"redis://r\"\nlease = \"100ms\"",
                "cluster.lease",
                "200ms",
            ),
            (
                "redis = \"redis://r\"\nlease = \"2s\"\ntimeout = \"2s\"",
                "cluster.timeout",
                "shorter",
            ),
            (
                "redis = \"redis://r\"\ntimeout = 1",
                "cluster.timeout",
                "\"1s\"",
            ),
            (
                "redis = \"redis://r\"\nleas = \"1s\"",
                "cluster.leas",
                "lease",
            ),
        ];
        for (keys, key, fragment) in rows {
            assert_one_error(&format!("[cluster]\n{keys}"), key, fragment);
        }
        let long = "n".repeat(65);
        assert_one_error(
            &format!("[cluster]\nredis = \"redis://r\"\nname = \"{long}\""),
            "cluster.name",
            "64",
        );
    }

    #[test]
    fn websocket_errors() {
        assert_one_error(
            "[websocket]\nidle_timeout = 5",
            "websocket.idle_timeout",
            "\"5s\"",
        );
        assert_one_error(
            "[[route]]\npath = \"/ws/\"\nupstream = \"app\"\nwebsocket_idle_timeout = \"abc\"",
            "route[0].websocket_idle_timeout",
            "abc",
        );
        assert_one_error(
            "[[route]]\npath = \"/ws/\"\nupstream = \"app\"\nwebsocket = false\nwebsocket_idle_timeout = \"1h\"",
            "route[0].websocket_idle_timeout",
            "websocket = false",
        );
        assert_one_error(
            "[[route]]\npath = \"/push/\"\nupstream = \"push\"\nwebsocket = true",
            "route[0].websocket",
            "h2c",
        );
    }

    #[test]
    fn defaults_fill_everything_left_out() {
        let c = config("");
        assert_eq!(c.source, "t.toml");
        assert_eq!(c.server.threads, 2);
        assert!(
            !c.server.work_stealing,
            "one scheduler per thread by default"
        );
        assert_eq!(c.server.pid_file, PathBuf::from("/tmp/ssegate.pid"));
        assert_eq!(
            c.server.upgrade_sock,
            PathBuf::from("/tmp/ssegate_upgrade.sock")
        );
        assert_eq!(c.server.error_log, None);
        assert_eq!(c.server.grace_period, Duration::from_secs(10));
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.listeners[0].h2_max_streams, 1000);
        assert!(c.listeners[0].tls.is_none());
        assert_eq!(c.timeouts.connect, Duration::from_secs(5));
        assert_eq!(c.timeouts.read, Duration::from_secs(60));
        assert_eq!(c.timeouts.write, Duration::from_secs(60));
        assert_eq!(c.timeouts.upstream_keepalive, Duration::from_secs(60));
        assert_eq!(c.stream.heartbeat, Some(Duration::from_secs(15)));
        assert_eq!(c.stream.heartbeat_text, ":\n\n");
        assert_eq!(c.stream.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.stream.cache_control, "no-cache");
        assert_eq!(c.stream.shutdown_retry, Duration::from_secs(1));
        assert_eq!(c.stream.shutdown_retry_jitter, Duration::from_secs(1));
        assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::Http1);
        assert_eq!(c.upstreams[1].protocol, UpstreamProtocol::H2c);
        let r = &c.routes[0];
        assert_eq!(
            (r.host.clone(), r.path.as_str(), r.upstream),
            (None, "/", 0)
        );
        assert!(!r.strip_prefix);
        assert_eq!((r.heartbeat, r.idle_timeout), (None, None));
        assert!(c.admin.is_none(), "no [admin]: no admin listener");
        assert_eq!(c.limits.max_streams, None);
        assert_eq!(c.limits.max_streams_per_client, None);
        assert_eq!(c.limits.shed_retry, Duration::from_secs(5));
        assert_eq!(c.limits.shed_retry_jitter, Duration::from_secs(5));
        assert_eq!(r.max_streams, None);
    }

    #[test]
    fn limits_section() {
        let c = config(
            "[limits]\nmax_streams = 100\nmax_streams_per_client = 3\n\
             shed_retry = \"2s\"\nshed_retry_jitter = \"0s\"\n\
             [[route]]\npath = \"/e/\"\nupstream = \"app\"\nmax_streams = 7\n",
        );
        assert_eq!(c.limits.max_streams, Some(100));
        assert_eq!(c.limits.max_streams_per_client, Some(3));
        assert_eq!(c.limits.shed_retry, Duration::from_secs(2));
        assert_eq!(c.limits.shed_retry_jitter, Duration::ZERO);
        assert_eq!(c.routes[0].max_streams, Some(7));
        assert_eq!(c.routes[1].max_streams, None);
        assert_one_error(
            "[limits]\nmax_streams = 0",
            "limits.max_streams",
            "positive whole number of streams, got 0",
        );
        assert_one_error(
            "[limits]\nmax_streams_per_client = -2",
            "limits.max_streams_per_client",
            "got -2",
        );
        assert_one_error(
            "[limits]\nshed_retry = \"0s\"",
            "limits.shed_retry",
            "greater than zero",
        );
        assert_one_error(
            "[[route]]\npath = \"/e/\"\nupstream = \"app\"\nmax_streams = 0",
            "route[0].max_streams",
            "leave the key out for no limit",
        );
    }

    #[test]
    fn stream_robustness_keys() {
        let c = config("");
        assert_eq!(c.stream.drain_window, Duration::from_secs(5));
        assert_eq!(c.stream.client_write_timeout, Duration::from_secs(60));
        assert_eq!(c.stream.client_buffer, 256 * 1024);
        assert_eq!(c.limits.max_connections, None);
        let r = &c.routes[0];
        assert_eq!(
            (r.resume, r.resume_attempts, r.resume_backoff),
            (Resume::Off, 3, Duration::from_secs(1))
        );
        // The default window shrinks to half of a short grace period.
        let c = config("[server]\ngrace_period = \"2s\"");
        assert_eq!(c.stream.drain_window, Duration::from_secs(1));
        let c = config(
            "[stream]\ndrain_window = \"0s\"\nclient_write_timeout = \"5s\"\nclient_buffer = \"1MiB\"\n\
             [limits]\nmax_connections = 10\n\
             [[route]]\npath = \"/e/\"\nupstream = \"app\"\nresume = \"on-error\"\n\
             resume_attempts = 7\nresume_backoff = \"250ms\"\n",
        );
        assert_eq!(c.stream.drain_window, Duration::ZERO);
        assert_eq!(c.stream.client_write_timeout, Duration::from_secs(5));
        assert_eq!(c.stream.client_buffer, 1024 * 1024);
        assert_eq!(c.limits.max_connections, Some(10));
        let r = &c.routes[0];
        assert_eq!(
            (r.resume, r.resume_attempts, r.resume_backoff),
            (Resume::OnError, 7, Duration::from_millis(250))
        );
        assert_eq!(
            config("[stream]\nclient_buffer = 65536")
                .stream
                .client_buffer,
            65536
        );
        assert_one_error(
            "[stream]\ndrain_window = \"10s\"",
            "stream.drain_window",
            "shorter than server.grace_period (its default)",
        );
        assert_one_error(
            "[stream]\nclient_write_timeout = \"0s\"",
            "stream.client_write_timeout",
            "greater than zero",
        );
        assert_one_error(
            "[stream]\nclient_buffer = \"1KiB\"",
            "stream.client_buffer",
            "out of range",
        );
        assert_one_error(
            "[stream]\nclient_buffer = \"256 parsecs\"",
            "stream.client_buffer",
            "unknown unit",
        );
        assert_one_error(
            "[limits]\nmax_connections = 0",
            "limits.max_connections",
            "positive whole number of connections",
        );
        assert_one_error(
            "[[route]]\npath = \"/e/\"\nupstream = \"app\"\nresume = \"always\"",
            "route[0].resume",
            "expected \"off\" or \"on-error\"",
        );
        assert_one_error(
            "[[route]]\npath = \"/e/\"\nupstream = \"app\"\nresume_attempts = 0",
            "route[0].resume_attempts",
            "from 1 to 100",
        );
    }

    /// A `[[route]]` on `/feeds/` with `keys` added, before the default route.
    fn feeds(keys: &str) -> String {
        format!("[[route]]\npath = \"/feeds/\"\nupstream = \"app\"\n{keys}")
    }

    fn share_of(keys: &str) -> Option<Share> {
        config(&feeds(keys)).routes[0].share.clone()
    }

    #[test]
    fn compression_keys() {
        let c = config("");
        assert!(c.routes[0].compression.is_empty());
        assert_eq!(c.stream.compression_max_streams, 1000);
        let c = config(&format!(
            "[stream]\ncompression_max_streams = 0\n{}",
            feeds("compression = [\"zstd\", \"br\", \"gzip\"]")
        ));
        assert_eq!(c.stream.compression_max_streams, 0);
        assert_eq!(
            c.routes[0].compression,
            [Coding::Zstd, Coding::Br, Coding::Gzip]
        );
        assert_eq!(
            config(&feeds("compression = [\"gzip\"]")).routes[0].compression,
            [Coding::Gzip]
        );
        let errors = errors(&feeds(
            "compression = [\"gzip\", \"deflate\", \"\", \"GZIP\", \"gzip\"]",
        ));
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[0].compression[1]",
                "route[0].compression[2]",
                "route[0].compression[3]",
                "route[0].compression[4]"
            ]
        );
        assert!(
            errors[0]
                .1
                .contains("unknown coding \"deflate\"; expected \"zstd\", \"br\", \"gzip\""),
            "{errors:?}"
        );
        assert!(errors[1].1.contains("unknown coding \"\""), "{errors:?}");
        assert!(
            errors[3]
                .1
                .contains("duplicate coding \"gzip\" (already compression[0])"),
            "{errors:?}"
        );
        assert_one_error(
            "[stream]\ncompression_max_streams = -1",
            "stream.compression_max_streams",
            "0 or more, got -1",
        );
    }

    #[test]
    fn share_is_off_unless_true() {
        assert_eq!(config("").routes[0].share, None);
        assert_eq!(share_of(""), None);
        assert_eq!(share_of("share = false"), None);
        assert_eq!(share_of("share = true"), Some(Share::default()));
        let d = Share::default();
        assert_eq!(d.key_headers, Vec::<String>::new());
        assert!(!d.public);
        assert_eq!(d.linger, Duration::from_secs(30));
        assert_eq!((d.replay_events, d.replay_bytes), (1000, 1024 * 1024));
        assert_eq!(d.overflow, Overflow::Disconnect);
        assert_eq!((d.auth, d.auth_cache), (None, None));
    }

    #[test]
    fn share_keys_are_kept() {
        let s = share_of(
            "share = true\nshare_key = [\"Accept-Language\", \"x-tenant\", \"cookie\"]\n\
             share_public = true\nshare_linger = \"0s\"\nreplay_events = 0\nreplay_bytes = \"1GiB\"\n\
             overflow = \"skip\"\nshare_auth = \"/auth/check?scope=feeds\"\nshare_auth_cache = \"1m30s\"\n",
        )
        .expect("shares");
        assert_eq!(s.key_headers, ["accept-language", "x-tenant", "cookie"]);
        assert!(s.public);
        assert_eq!(s.linger, Duration::ZERO);
        assert_eq!((s.replay_events, s.replay_bytes), (0, 1 << 30));
        assert_eq!(s.overflow, Overflow::Skip);
        assert_eq!(s.auth.as_deref(), Some("/auth/check?scope=feeds"));
        assert_eq!(s.auth_cache, Some(Duration::from_secs(90)));

        let s = share_of(
            "share = true\nshare_key = []\nshare_public = false\nshare_linger = \"2m\"\n\
             replay_events = 1000000\nreplay_bytes = 0\noverflow = \"disconnect\"\n\
             share_auth = \"/auth\"\nshare_auth_cache = \"off\"\n",
        )
        .expect("shares");
        assert!(s.key_headers.is_empty());
        assert!(!s.public);
        assert_eq!(s.linger, Duration::from_secs(120));
        assert_eq!((s.replay_events, s.replay_bytes), (1_000_000, 0));
        assert_eq!(s.overflow, Overflow::Disconnect);
        assert_eq!(s.auth.as_deref(), Some("/auth"));
        assert_eq!(s.auth_cache, None);
        assert_eq!(
            share_of("share = true\nreplay_bytes = 65536").map(|s| s.replay_bytes),
            Some(65536)
        );
        // The size grammar, shared with stream.client_buffer.
        assert_eq!(
            share_of("share = true\nreplay_bytes = \"256KiB\"").map(|s| s.replay_bytes),
            Some(256 * 1024)
        );
    }

    #[test]
    fn sharing_keys_need_share_true() {
        for (line, name) in [
            ("share_key = [\"accept-language\"]", "share_key"),
            ("share_public = true", "share_public"),
            ("share_linger = \"30s\"", "share_linger"),
            ("replay_events = 10", "replay_events"),
            ("replay_bytes = \"1MiB\"", "replay_bytes"),
            ("overflow = \"skip\"", "overflow"),
            ("share_auth = \"/auth\"", "share_auth"),
            ("share_auth_cache = \"10s\"", "share_auth_cache"),
        ] {
            let key = format!("route[0].{name}");
            let fragment =
                format!("`{name}` has no effect without `share = true`; add `share = true`");
            assert_one_error(&feeds(line), &key, &fragment);
            let off = format!("share = false\n{line}");
            assert_one_error(&feeds(&off), &key, "this route has `share = false`");
        }
        // One error per key, in file order; values are not checked as well.
        let errors = errors(&feeds("share_linger = \"nonsense\"\noverflow = \"skip\""));
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["route[0].share_linger", "route[0].overflow"]);
    }

    #[test]
    fn share_key_errors() {
        let one = |names: &str, key: &str, fragment: &str| {
            let keys = format!("share = true\nshare_key = [{names}]");
            assert_one_error(&feeds(&keys), key, fragment);
        };
        one(
            "\"\"",
            "route[0].share_key[0]",
            "\"\" is empty; give a request header name",
        );
        one(
            "\"accept language\"",
            "route[0].share_key[0]",
            "\"accept language\" is not a header name",
        );
        one("\"x:y\"", "route[0].share_key[0]", "is not a header name");
        one(
            "\"x-a\", \"Host\"",
            "route[0].share_key[1]",
            "\"Host\" is redundant: host, path and query always select the stream",
        );
        one(
            "\"Last-Event-ID\"",
            "route[0].share_key[0]",
            "selects where a subscriber resumes in a stream's replay, not which stream it joins",
        );
        for hop in [
            "connection",
            "Keep-Alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            one(
                &format!("\"{hop}\""),
                "route[0].share_key[0]",
                "is a hop-by-hop header",
            );
        }
        one(
            "\"x-a\", \"x-b\", \"X-A\"",
            "route[0].share_key[2]",
            "duplicate header \"x-a\" (already share_key[0])",
        );
        // An invalid name before a duplicate does not shift the index named.
        let keys = "share = true\nshare_key = [\"\", \"x-a\", \"x-a\"]";
        let errors = errors(&feeds(keys));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[1].0, "route[0].share_key[2]");
        assert!(errors[1].1.contains("already share_key[1]"), "{errors:?}");
    }

    #[test]
    fn share_value_errors() {
        let one = |line: &str, name: &str, fragment: &str| {
            let keys = format!("share = true\n{line}");
            assert_one_error(&feeds(&keys), &format!("route[0].{name}"), fragment);
        };
        one(
            "share_linger = \"off\"",
            "share_linger",
            "\"off\" is not allowed",
        );
        one("share_linger = 30", "share_linger", "write \"30s\"");
        one("share_linger = \"30\"", "share_linger", "missing unit");
        one(
            "replay_events = -1",
            "replay_events",
            "from 0 to 1000000, got -1",
        );
        one("replay_events = 1000001", "replay_events", "got 1000001");
        one(
            "replay_bytes = \"1025MiB\"",
            "replay_bytes",
            "out of range: from 0 to 1073741824 bytes",
        );
        one("replay_bytes = -1", "replay_bytes", "-1 is negative");
        one("replay_bytes = \"1TiB\"", "replay_bytes", "unknown unit");
        one(
            "overflow = \"drop\"",
            "overflow",
            "unknown value \"drop\"; expected \"disconnect\" or \"skip\"",
        );
        one(
            "share_auth = \"auth/check\"",
            "share_auth",
            "starting with \"/\"",
        );
        one("share_auth = \"\"", "share_auth", "starting with \"/\"");
        one("share_auth = \"/auth check\"", "share_auth", "whitespace");
        one("share_auth = \"/auth\\tcheck\"", "share_auth", "whitespace");
        one(
            "share_auth = \"/auth#x\"",
            "share_auth",
            "must not contain \"#\"",
        );
        one(
            "share_auth = \"/auth\\u0001\"",
            "share_auth",
            "not a valid path and query",
        );
        one(
            "share_auth_cache = \"10s\"",
            "share_auth_cache",
            "`share_auth_cache` has no effect without `share_auth`",
        );
        one(
            "share_auth = \"/a\"\nshare_auth_cache = \"0s\"",
            "share_auth_cache",
            "write \"off\"",
        );
        one(
            "share_auth = \"/a\"\nshare_auth_cache = \"soon\"",
            "share_auth_cache",
            "or \"off\"",
        );
    }

    #[test]
    fn share_auth_targets() {
        assert_eq!(check_share_auth("/auth/check"), Ok(()));
        assert_eq!(check_share_auth("/auth/check?scope=feeds&x=%20"), Ok(()));
        assert_eq!(check_share_auth("/"), Ok(()));
        assert!(check_share_auth("http://a/auth").is_err());
        assert!(check_share_auth("/a\u{7f}").is_err());
        assert!(check_share_auth("/a\u{0}").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144"), Ok(262144));
        assert_eq!(parse_size("256KiB"), Ok(262144));
        assert_eq!(parse_size("256 KB"), Ok(262144));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
    }

    #[test]
    fn admin_section() {
        let c = config("[admin]\naddress = \"127.0.0.1:9090\"");
        let admin = c.admin.expect("[admin] kept");
        assert_eq!(admin.address, "127.0.0.1:9090".parse().expect("addr"));
        assert_one_error(
            "[admin]\naddress = \"127.0.0.1:8080\"",
            "admin.address",
            "already used by listener[0]",
        );
        assert_one_error(
            "[admin]\naddress = \"0.0.0.0:8080\"",
            "admin.address",
            "overlaps listener[0] (127.0.0.1:8080)",
        );
        assert_one_error(
            "[admin]\naddress = \"127.0.0.1:0\"",
            "admin.address",
            "port 0",
        );
        assert_one_error(
            "[admin]\naddress = \":9090\"",
            "admin.address",
            "e.g. \"127.0.0.1:9090\"",
        );
    }

    #[test]
    fn bind_conflicts() {
        let conflict = |a: &str, b: &str| {
            let (a, b) = (a.parse().expect(a), b.parse().expect(b));
            assert_eq!(bind_conflict(a, b), bind_conflict(b, a), "{a} {b}");
            bind_conflict(a, b)
        };
        assert!(conflict("127.0.0.1:80", "127.0.0.1:80"));
        assert!(conflict("0.0.0.0:80", "127.0.0.1:80"));
        assert!(conflict("[::]:80", "127.0.0.1:80"), "dual-stack wildcard");
        assert!(conflict("[::]:80", "[::1]:80"));
        assert!(!conflict("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!conflict("127.0.0.1:80", "127.0.0.2:80"));
        assert!(
            !conflict("0.0.0.0:80", "[::1]:80"),
            "IPv4 wildcard leaves IPv6 alone"
        );
    }

    #[test]
    fn explicit_values_are_kept() {
        let c = config(
            "[server]\nthreads = 8\nerror_log = \"/var/log/s.log\"\ngrace_period = \"0s\"\nwork_stealing = true\n\
             [stream]\nheartbeat = \"off\"\nidle_timeout = \"1h30m\"\nheartbeat_text = \": ping\\n\\n\"\n\
             shutdown_retry = \"0s\"\nshutdown_retry_jitter = \"250ms\"\ncache_control = \"no-store\"\n\
             [timeouts]\nconnect = \"500ms\"\n\
             [[route]]\nhost = \"*.Example.COM\"\npath = \"/e/\"\nupstream = \"push\"\nstrip_prefix = true\n\
             heartbeat = \"5s\"\nidle_timeout = \"off\"\n",
        );
        assert_eq!(c.server.threads, 8);
        assert!(c.server.work_stealing);
        assert_eq!(c.server.error_log, Some(PathBuf::from("/var/log/s.log")));
        assert_eq!(c.server.grace_period, Duration::ZERO);
        assert_eq!(c.stream.heartbeat, None);
        assert_eq!(c.stream.idle_timeout, Some(Duration::from_secs(5400)));
        assert_eq!(c.stream.heartbeat_text, ": ping\n\n");
        assert_eq!(c.stream.shutdown_retry, Duration::ZERO);
        assert_eq!(c.stream.shutdown_retry_jitter, Duration::from_millis(250));
        assert_eq!(c.stream.cache_control, "no-store");
        assert_eq!(c.timeouts.connect, Duration::from_millis(500));
        let r = &c.routes[0];
        assert_eq!(r.host, Some(HostMatch::Suffix(".example.com".into())));
        assert_eq!(r.upstream, 1);
        assert!(r.strip_prefix);
        assert_eq!(r.heartbeat, Some(Some(Duration::from_secs(5))));
        assert_eq!(r.idle_timeout, Some(None));
    }

    #[test]
    fn duration_rules_depend_on_the_key() {
        assert_one_error(
            "[timeouts]\nread = \"0s\"",
            "timeouts.read",
            "greater than zero",
        );
        assert_one_error(
            "[timeouts]\nread = \"off\"",
            "timeouts.read",
            "\"off\" is not allowed",
        );
        assert_one_error(
            "[stream]\nheartbeat = \"0s\"",
            "stream.heartbeat",
            "write \"off\"",
        );
        assert_one_error(
            "[stream]\nidle_timeout = \"0ms\"",
            "stream.idle_timeout",
            "write \"off\"",
        );
        assert_one_error(
            "[stream]\nheartbeat = 15",
            "stream.heartbeat",
            "write \"15s\"",
        );
        assert_one_error(
            "[stream]\nheartbeat = 1.5",
            "stream.heartbeat",
            "\"1500ms\"",
        );
        assert_one_error(
            "[stream]\nheartbeat = -3",
            "stream.heartbeat",
            "string with a unit",
        );
        assert_one_error(
            "[stream]\nheartbeat = \"15\"",
            "stream.heartbeat",
            "missing unit",
        );
        assert_one_error(
            "[stream]\nheartbeat = \"soon\"",
            "stream.heartbeat",
            "or \"off\"",
        );
        assert_one_error(
            "[stream]\nshutdown_retry = \"off\"",
            "stream.shutdown_retry",
            "not allowed",
        );
        assert_one_error(
            "[server]\ngrace_period = \"1500ms\"",
            "server.grace_period",
            "whole seconds",
        );
        assert_one_error(
            "[server]\nshutdown_timeout = \"2x\"",
            "server.shutdown_timeout",
            "unknown unit",
        );
        assert_one_error(
            "[[route]]\npath = \"/a\"\nupstream = \"app\"\nheartbeat = \"0s\"",
            "route[0].heartbeat",
            "write \"off\"",
        );
    }

    #[test]
    fn server_checks() {
        assert_one_error(
            "[server]\nthreads = 0",
            "server.threads",
            "at least 1, got 0",
        );
        assert_one_error(
            "[server]\nthreads = -1",
            "server.threads",
            "at least 1, got -1",
        );
        assert_one_error(
            "[server]\npid_file = \"\"",
            "server.pid_file",
            "must not be empty",
        );
    }

    #[test]
    fn host_patterns() {
        let exact = |h: &str| Ok(HostMatch::Exact(h.to_string()));
        assert_eq!(host_pattern("Example.COM"), exact("example.com"));
        assert_eq!(host_pattern("*.a.b"), Ok(HostMatch::Suffix(".a.b".into())));
        let reason = |h: &str| host_pattern(h).expect_err(h);
        assert!(reason("").contains("must not be empty"));
        assert!(reason("a b.com").contains("whitespace"));
        assert!(reason("a.com/x").contains("without scheme or path"));
        assert!(reason("https://a.com").contains("without scheme or path"));
        assert!(reason("a.com:8080").contains("port"));
        assert!(reason("*").contains("only allowed as a leading"));
        assert!(reason("*.").contains("must be followed by a domain"));
        assert!(reason("a.*.com").contains("only allowed as a leading"));
        assert!(reason("*a.com").contains("only allowed as a leading"));
        assert!(reason("*.*.com").contains("only allowed as a leading"));
    }

    #[test]
    fn heartbeat_text_must_be_comments_ending_in_a_blank_line() {
        assert_eq!(check_heartbeat_text(":\n\n"), Ok(()));
        assert_eq!(check_heartbeat_text(": keep-alive\n:x\n\n"), Ok(()));
        let reason = |t: &str| check_heartbeat_text(t).expect_err(t);
        assert!(reason("").contains("`stream.heartbeat = \"off\"`"));
        assert!(reason(":\r\n\r\n").contains("\\r"));
        assert!(reason(":\n").contains("blank line"));
        assert!(reason("\n\n").contains("line 1"));
        assert!(reason(":a\ndata: x\n\n").contains("line 2 (\"data: x\")"));
        assert!(reason(":a\n\n\n").contains("line 2"));
    }

    #[test]
    fn cache_control_must_be_a_plain_header_value() {
        assert_eq!(check_cache_control("no-cache, no-transform"), Ok(()));
        assert!(check_cache_control("").is_err());
        assert!(check_cache_control("  ").is_err());
        let reason = check_cache_control("no-cache\nX-Evil: 1").expect_err("newline");
        assert!(reason.contains("U+000A"), "{reason}");
        assert!(check_cache_control("a\u{7f}").is_err());
    }

    #[test]
    fn pem_kinds_are_told_apart() {
        let cert = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n";
        assert!(Pem::Cert.looks_like(cert));
        assert!(!Pem::Cert.looks_like(key));
        assert!(Pem::Key.looks_like(key));
        assert!(Pem::Key.looks_like(&key.replace("EC ", "")));
        assert!(!Pem::Key.looks_like(cert));
        assert!(!Pem::Key.looks_like("not pem"));
    }

    #[test]
    fn tls_paths_resolve_against_base_dir() {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = {{ cert = \"certs/cert.pem\", key = \"certs/key.pem\" }}\n{}",
            REST.replace("8080", "8081")
        );
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let config = match parse(&text, "t.toml", &base) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let tls = config.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.cert, base.join("certs/cert.pem"));
        assert_eq!(tls.key, base.join("certs/key.pem"));
    }
}

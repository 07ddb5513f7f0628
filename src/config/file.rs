//! The TOML file schema: what `ssegate.toml` may contain, exactly as written.
//!
//! These types only describe shape. serde ignores keys they do not name, but
//! `config::unknown` reports each of them beside every other error (so a typo
//! is an error, never a silently ignored setting). They leave every value check,
//! default and cross-reference to `config::validate`, which turns them into
//! `config::model`. Values that can be wrong in a way serde cannot see are
//! wrapped in [`Spanned`] so an error can name their line and column, and
//! are kept loosely typed (`String`, `i64`, [`DurationValue`]) so that, for
//! example, `threads = 0` or `protocol = "http2"` are reported together with
//! every other problem instead of stopping at the first one.
//!
//! See `conf/ssegate.toml` for every key with its default and meaning.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file. Only `[[listener]]`, `[[upstream]]` and `[[route]]` are
/// required, and even their absence is reported by validation, not here.
/// `[admin]` is optional as a whole: absent, no admin listener is started.
#[derive(Debug, Default, Deserialize)]
pub struct File {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listener: Vec<ListenerEntry>,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub stream: StreamSection,
    #[serde(default)]
    pub upstream: Vec<UpstreamEntry>,
    #[serde(default)]
    pub route: Vec<RouteEntry>,
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub websocket: WebSocketSection,
    pub cluster: Option<ClusterSection>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
pub struct ServerSection {
    /// `i64`, not `usize`, so `0` and `-1` reach validation and get a real message.
    pub threads: Option<Spanned<i64>>,
    pub pid_file: Option<Spanned<String>>,
    pub upgrade_sock: Option<Spanned<String>>,
    pub error_log: Option<Spanned<String>>,
    pub grace_period: Option<Spanned<DurationValue>>,
    pub shutdown_timeout: Option<Spanned<DurationValue>>,
    pub work_stealing: Option<bool>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
pub struct ListenerEntry {
    pub address: Spanned<String>,
    pub tls: Option<TlsEntry>,
    pub h2_max_streams: Option<Spanned<i64>>,
}

/// `tls = { cert = "...", key = "..." }` inside a listener.
#[derive(Debug, Deserialize)]
pub struct TlsEntry {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[timeouts]`
#[derive(Debug, Default, Deserialize)]
pub struct TimeoutsSection {
    pub connect: Option<Spanned<DurationValue>>,
    pub read: Option<Spanned<DurationValue>>,
    pub write: Option<Spanned<DurationValue>>,
    pub upstream_keepalive: Option<Spanned<DurationValue>>,
}

/// `[stream]`
#[derive(Debug, Default, Deserialize)]
pub struct StreamSection {
    pub heartbeat: Option<Spanned<DurationValue>>,
    pub heartbeat_text: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub cache_control: Option<Spanned<String>>,
    pub shutdown_retry: Option<Spanned<DurationValue>>,
    pub shutdown_retry_jitter: Option<Spanned<DurationValue>>,
    pub drain_window: Option<Spanned<DurationValue>>,
    pub client_write_timeout: Option<Spanned<DurationValue>>,
    pub client_buffer: Option<Spanned<SizeValue>>,
    /// `i64` so a negative count reaches validation.
    pub compression_max_streams: Option<Spanned<i64>>,
}

/// `[limits]`: open-stream limits and the backoff given to shed clients.
#[derive(Debug, Default, Deserialize)]
pub struct LimitsSection {
    /// `i64` so `0` and `-1` reach validation, as for `server.threads`.
    pub max_streams: Option<Spanned<i64>>,
    pub max_streams_per_client: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub shed_retry: Option<Spanned<DurationValue>>,
    pub shed_retry_jitter: Option<Spanned<DurationValue>>,
}

/// `[websocket]`: defaults for WebSocket tunnels.
#[derive(Debug, Default, Deserialize)]
pub struct WebSocketSection {
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub h2: Option<bool>,
}

/// `[cluster]`: shared streams across instances through Redis.
#[derive(Debug, Deserialize)]
pub struct ClusterSection {
    pub redis: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub lease: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
}

/// One `[[upstream]]`.
#[derive(Debug, Deserialize)]
pub struct UpstreamEntry {
    pub name: Spanned<String>,
    /// Spanned as a whole too, so an empty list can be pointed at.
    pub servers: Spanned<Vec<Spanned<String>>>,
    /// A string rather than an enum so an unknown protocol is one error among many.
    pub protocol: Option<Spanned<String>>,
    /// `health_check = { path, interval, timeout, fall, rise }`: active checks.
    pub health_check: Option<HealthCheckEntry>,
    /// `i64` so a negative count reaches validation, as for `max_streams`.
    pub max_fails: Option<Spanned<i64>>,
    pub fail_timeout: Option<Spanned<DurationValue>>,
}

/// `health_check = { ... }` inside an upstream; every key optional.
#[derive(Debug, Deserialize)]
pub struct HealthCheckEntry {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    /// `i64` so `0` and `-1` reach validation and get a real message.
    pub fall: Option<Spanned<i64>>,
    pub rise: Option<Spanned<i64>>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
pub struct RouteEntry {
    pub host: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub upstream: Spanned<String>,
    pub strip_prefix: Option<bool>,
    pub heartbeat: Option<Spanned<DurationValue>>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub max_streams: Option<Spanned<i64>>,
    /// A string rather than an enum so an unknown value is one error among many.
    pub resume: Option<Spanned<String>>,
    pub resume_attempts: Option<Spanned<i64>>,
    pub resume_backoff: Option<Spanned<DurationValue>>,
    /// Spanned so that an explicit `share = false` can be named when a
    /// sharing key is set without it.
    pub share: Option<Spanned<bool>>,
    /// Spanned as a whole and per name, as `servers` is.
    pub share_key: Option<Spanned<Vec<Spanned<String>>>>,
    pub share_public: Option<Spanned<bool>>,
    pub share_linger: Option<Spanned<DurationValue>>,
    /// `i64` so a negative count reaches validation, as for `max_streams`.
    pub replay_events: Option<Spanned<i64>>,
    pub replay_bytes: Option<Spanned<SizeValue>>,
    /// A string rather than an enum so an unknown value is one error among many.
    pub overflow: Option<Spanned<String>>,
    pub share_auth: Option<Spanned<String>>,
    pub share_auth_cache: Option<Spanned<DurationValue>>,
    /// Spanned so that `websocket = true` towards an h2c upstream can be named.
    pub websocket: Option<Spanned<bool>>,
    pub websocket_idle_timeout: Option<Spanned<DurationValue>>,
    /// Spanned per name, so an unknown or repeated coding can be pointed at.
    pub compression: Option<Vec<Spanned<String>>>,
}

/// `[admin]`: the listener for `/metrics` and `/healthz`.
#[derive(Debug, Deserialize)]
pub struct AdminSection {
    pub address: Spanned<String>,
}

/// A duration as written: normally a string (`"15s"`, `"off"`), but numbers
/// are accepted here so validation can answer `heartbeat = 15` with
/// "write \"15s\"" rather than serde's bare "expected a string".
#[derive(Debug, Clone, PartialEq)]
pub enum DurationValue {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration string such as \"15s\", \"500ms\" or \"1h30m\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
        Ok(DurationValue::Text(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
        Ok(DurationValue::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
        // TOML integers are i64; saturate rather than fail, the message is the same.
        Ok(DurationValue::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationValue, E> {
        Ok(DurationValue::Float(v))
    }
}

/// A size as written: a whole number of bytes, or a string with a unit
/// (`"256KiB"`); kept loose so validation phrases every mistake.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeValue {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The duration visitor accepts exactly the same shapes.
        Ok(match deserializer.deserialize_any(DurationVisitor)? {
            DurationValue::Text(t) => SizeValue::Text(t),
            DurationValue::Integer(n) => SizeValue::Integer(n),
            DurationValue::Float(f) => SizeValue::Float(f),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_a_valid_shape() {
        let file: Result<File, _> = toml::from_str("");
        assert!(file.is_ok());
    }

    #[test]
    fn durations_keep_what_was_written() {
        #[derive(Deserialize)]
        struct T {
            a: DurationValue,
            b: DurationValue,
            c: DurationValue,
        }
        let t: T = toml::from_str("a = \"15s\"\nb = 15\nc = 1.5").expect("parses");
        assert_eq!(t.a, DurationValue::Text("15s".into()));
        assert_eq!(t.b, DurationValue::Integer(15));
        assert_eq!(t.c, DurationValue::Float(1.5));
    }
}

//! The config loader over generated TOML documents: structure-aware, so it
//! reaches validation and the error-locating code with well-formed files
//! instead of stopping at syntax errors as random text mostly does.
//!
//! A [`Doc`] from `arbitrary` is a valid configuration by construction: every
//! section and key of the schema, values from pools of valid ones (`[server]`,
//! `[timeouts]`, `[stream]`, TLS and every optional key may be absent). Then a
//! list of [`Fault`]s edits it: a key removed, a value replaced by an
//! arbitrary string, by a value of the wrong type, or by a duration at an
//! edge (`"off"`, `"0s"`, milliseconds), and maybe an unknown key added.
//! Checks, beyond those of the `config` target:
//! 1. the document is valid TOML (else the generator is wrong), so no error
//!    may call it "invalid TOML";
//! 2. a document whose edits are all known to keep it valid (no edits, an
//!    optional key removed, a duration edge the key accepts), with unique
//!    addresses, upstream names and routes and no TLS (its files never
//!    exist), is accepted;
//! 3. an accepted document has the listeners, upstream names and route
//!    paths that were written, in order.
#![no_main]

use std::collections::HashSet;
use std::fmt::Write;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ssegate_fuzz::config_check::parse_and_check;

/// Entries of each array table kept beyond the first; more add only time.
const MORE_ENTRIES: usize = 3;

const ADDRESSES: [&str; 4] = [
    "127.0.0.1:8080",
    "127.0.0.1:8443",
    "0.0.0.0:9000",
    "[::1]:8080",
];
const SERVERS: [&str; 3] = ["127.0.0.1:3000", "[::1]:3001", "10.0.0.2:80"];
const NAMES: [&str; 4] = ["app", "api", "chat", "a-b"];
const PATHS: [&str; 4] = ["/", "/events/", "/chat", "/a/b"];
const HOSTS: [&str; 4] = [
    "example.com",
    "*.example.com",
    "api.example.com",
    "EXAMPLE.org",
];
const PROTOCOLS: [&str; 2] = ["http1", "h2c"];
const FILES: [&str; 3] = ["/tmp/ssegate-fuzz.pid", "run/ssegate.sock", "log/error.log"];
const PEMS: [&str; 2] = ["certs/cert.pem", "certs/key.pem"];
const HEARTBEAT_TEXTS: [&str; 3] = [":\n\n", ": ping\n\n", ":a\n:b\n\n"];
const CACHE_CONTROLS: [&str; 3] = ["no-cache", "no-store, no-transform", "private"];
/// Positive whole seconds: valid for every duration key.
const DURATIONS: [&str; 7] = ["1s", "15s", "2m", "1h", "1h30m", "1d", "1d2h3m4s"];

fn pick(pool: &[&str], i: u8) -> String {
    pool[usize::from(i) % pool.len()].to_string()
}

#[derive(Arbitrary, Debug)]
struct Doc {
    server: Option<Server>,
    listener: Listener,
    more_listeners: Vec<Listener>,
    timeouts: Option<[Option<u8>; 4]>,
    stream: Option<Stream>,
    upstream: Upstream,
    more_upstreams: Vec<Upstream>,
    route: Route,
    more_routes: Vec<Route>,
    faults: Vec<Fault>,
    unknown: Option<Unknown>,
}

#[derive(Arbitrary, Debug)]
struct Server {
    threads: Option<u8>,
    pid_file: Option<u8>,
    upgrade_sock: Option<u8>,
    error_log: Option<u8>,
    grace_period: Option<u8>,
    shutdown_timeout: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Listener {
    address: u8,
    h2_max_streams: Option<u16>,
    /// cert, key, and `[listener.tls]` rather than `tls = { ... }`.
    tls: Option<(u8, u8, bool)>,
}

#[derive(Arbitrary, Debug)]
struct Stream {
    heartbeat: Option<u8>,
    heartbeat_text: Option<u8>,
    idle_timeout: Option<u8>,
    cache_control: Option<u8>,
    shutdown_retry: Option<u8>,
    shutdown_retry_jitter: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Upstream {
    name: u8,
    servers: (u8, Vec<u8>),
    protocol: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Route {
    host: Option<u8>,
    path: u8,
    /// Index into the upstreams written, so the reference is right.
    upstream: u8,
    strip_prefix: Option<bool>,
    heartbeat: Option<u8>,
    idle_timeout: Option<u8>,
}

/// An edit of the key at `at` (modulo the number of keys written).
#[derive(Arbitrary, Debug)]
struct Fault {
    at: u16,
    kind: FaultKind,
}

#[derive(Arbitrary, Debug)]
enum FaultKind {
    Remove,
    Any(String),
    Wrong(Wrong),
    Off,
    Zero,
    Millis(u16),
}

#[derive(Arbitrary, Debug)]
enum Wrong {
    Int(i64),
    Bool(bool),
    Float(f64),
    Array,
    Table,
    Date,
}

/// A key the schema does not know, in one of the tables written.
#[derive(Arbitrary, Debug)]
struct Unknown {
    table: u8,
    name: String,
}

/// What a duration key accepts, as `config::validate` documents it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accept {
    ZeroToo,
    PositiveOnly,
    PositiveOrOff,
    WholeSeconds,
}

/// One `key = value` line.
struct Entry {
    key: &'static str,
    /// Already TOML; empty once removed.
    value: String,
    /// The string `value` stands for, if it is one.
    text: Option<String>,
    required: bool,
    /// For duration keys, what the key accepts.
    duration: Option<Accept>,
}

/// A table header (none for the top level) and its keys.
struct Table {
    header: &'static str,
    entries: Vec<Entry>,
}

impl Table {
    fn new(header: &'static str) -> Self {
        Table {
            header,
            entries: Vec::new(),
        }
    }

    fn text(&mut self, key: &'static str, value: String, required: bool) {
        self.entries.push(Entry {
            key,
            value: quote(&value),
            text: Some(value),
            required,
            duration: None,
        });
    }

    fn opt_text(&mut self, key: &'static str, pool: &[&str], i: Option<u8>) {
        if let Some(i) = i {
            self.text(key, pick(pool, i), false);
        }
    }

    fn duration(&mut self, key: &'static str, i: Option<u8>, accept: Accept) {
        if let Some(i) = i {
            let value = pick(&DURATIONS, i);
            self.entries.push(Entry {
                key,
                value: quote(&value),
                text: Some(value),
                required: false,
                duration: Some(accept),
            });
        }
    }

    fn raw(&mut self, key: &'static str, value: String, required: bool) {
        self.entries.push(Entry {
            key,
            value,
            text: None,
            required,
            duration: None,
        });
    }
}

/// The document as tables; `false` when it needs a TLS file, which never
/// exists under the fuzz base folder.
fn plan(doc: &Doc) -> (Vec<Table>, bool) {
    let mut tables = Vec::new();
    let mut valid = true;

    if let Some(s) = &doc.server {
        let mut t = Table::new("[server]");
        if let Some(n) = s.threads {
            t.raw("threads", (1 + n % 16).to_string(), false);
        }
        t.opt_text("pid_file", &FILES, s.pid_file);
        t.opt_text("upgrade_sock", &FILES, s.upgrade_sock);
        t.opt_text("error_log", &FILES, s.error_log);
        t.duration("grace_period", s.grace_period, Accept::WholeSeconds);
        t.duration("shutdown_timeout", s.shutdown_timeout, Accept::WholeSeconds);
        tables.push(t);
    }

    for l in std::iter::once(&doc.listener).chain(doc.more_listeners.iter().take(MORE_ENTRIES)) {
        let mut t = Table::new("[[listener]]");
        t.text("address", pick(&ADDRESSES, l.address), true);
        if let Some(n) = l.h2_max_streams {
            t.raw("h2_max_streams", (1 + u32::from(n)).to_string(), false);
        }
        if let Some((cert, key, as_header)) = l.tls {
            valid = false;
            let (cert, key) = (quote(&pick(&PEMS, cert)), quote(&pick(&PEMS, key)));
            if as_header {
                tables.push(t);
                t = Table::new("[listener.tls]");
                t.raw("cert", cert, true);
                t.raw("key", key, true);
            } else {
                t.raw("tls", format!("{{ cert = {cert}, key = {key} }}"), false);
            }
        }
        tables.push(t);
    }

    if let Some(keys) = &doc.timeouts {
        let mut t = Table::new("[timeouts]");
        let names = ["connect", "read", "write", "upstream_keepalive"];
        for (name, i) in names.into_iter().zip(keys) {
            t.duration(name, *i, Accept::PositiveOnly);
        }
        tables.push(t);
    }

    if let Some(s) = &doc.stream {
        let mut t = Table::new("[stream]");
        t.duration("heartbeat", s.heartbeat, Accept::PositiveOrOff);
        t.opt_text("heartbeat_text", &HEARTBEAT_TEXTS, s.heartbeat_text);
        t.duration("idle_timeout", s.idle_timeout, Accept::PositiveOrOff);
        t.opt_text("cache_control", &CACHE_CONTROLS, s.cache_control);
        t.duration("shutdown_retry", s.shutdown_retry, Accept::ZeroToo);
        t.duration(
            "shutdown_retry_jitter",
            s.shutdown_retry_jitter,
            Accept::ZeroToo,
        );
        tables.push(t);
    }

    let mut upstream_names = Vec::new();
    for u in std::iter::once(&doc.upstream).chain(doc.more_upstreams.iter().take(MORE_ENTRIES)) {
        let mut t = Table::new("[[upstream]]");
        let name = pick(&NAMES, u.name);
        upstream_names.push(name.clone());
        t.text("name", name, true);
        let servers: Vec<String> = std::iter::once(&u.servers.0)
            .chain(u.servers.1.iter().take(MORE_ENTRIES))
            .map(|&i| quote(&pick(&SERVERS, i)))
            .collect();
        t.raw("servers", format!("[{}]", servers.join(", ")), true);
        t.opt_text("protocol", &PROTOCOLS, u.protocol);
        tables.push(t);
    }

    for r in std::iter::once(&doc.route).chain(doc.more_routes.iter().take(MORE_ENTRIES)) {
        let mut t = Table::new("[[route]]");
        t.opt_text("host", &HOSTS, r.host);
        t.text("path", pick(&PATHS, r.path), true);
        let upstream = upstream_names[usize::from(r.upstream) % upstream_names.len()].clone();
        t.text("upstream", upstream, true);
        if let Some(b) = r.strip_prefix {
            t.raw("strip_prefix", b.to_string(), false);
        }
        t.duration("heartbeat", r.heartbeat, Accept::PositiveOrOff);
        t.duration("idle_timeout", r.idle_timeout, Accept::PositiveOrOff);
        tables.push(t);
    }

    (tables, valid)
}

/// What the document says after the faults, for the cross-reference checks
/// and for comparing with an accepted config.
#[derive(Default)]
struct Written {
    listeners: usize,
    addresses: Vec<Option<String>>,
    upstream_names: Vec<Option<String>>,
    /// (host, path, upstream)
    routes: Vec<(Option<String>, Option<String>, Option<String>)>,
}

fn written(tables: &[Table]) -> Written {
    let mut w = Written::default();
    for table in tables {
        let text = |key: &str| {
            table
                .entries
                .iter()
                .find(|e| e.key == key)
                .and_then(|e| e.text.clone())
        };
        match table.header {
            "[[listener]]" => {
                w.listeners += 1;
                w.addresses.push(text("address"));
            }
            "[[upstream]]" => w.upstream_names.push(text("name")),
            "[[route]]" => w
                .routes
                .push((text("host"), text("path"), text("upstream"))),
            _ => {}
        }
    }
    w
}

impl Written {
    /// Unique addresses, upstream names and (host, path) pairs, and every
    /// route naming an upstream: what validation checks across entries.
    fn cross_references_hold(&self) -> bool {
        let mut addresses = HashSet::new();
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        self.addresses.iter().all(|a| addresses.insert(a))
            && self.upstream_names.iter().all(|n| names.insert(n))
            && self.routes.iter().all(|(host, path, upstream)| {
                routes.insert((host.as_ref().map(|h| h.to_lowercase()), path))
                    && names.contains(upstream)
            })
    }
}

/// Applies the faults; returns whether the document surely stays valid.
fn apply(tables: &mut [Table], faults: &[Fault]) -> bool {
    let mut valid = true;
    let count: usize = tables.iter().map(|t| t.entries.len()).sum();
    if count == 0 {
        return valid;
    }
    for fault in faults {
        let mut at = usize::from(fault.at) % count;
        let Some(entry) = tables
            .iter_mut()
            .flat_map(|t| t.entries.iter_mut())
            .find(|_| {
                let here = at == 0;
                at = at.wrapping_sub(1);
                here
            })
        else {
            continue;
        };
        // A removed key is written as nothing; its key stays so that `at` is stable.
        let (text, keeps_valid) = match &fault.kind {
            FaultKind::Remove => {
                entry.value.clear();
                entry.text = None;
                valid &= !entry.required;
                continue;
            }
            FaultKind::Wrong(wrong) => {
                entry.value = wrong.render();
                entry.text = None;
                valid = false;
                continue;
            }
            FaultKind::Any(text) => (text.clone(), false),
            FaultKind::Off => (
                "off".to_string(),
                entry.duration == Some(Accept::PositiveOrOff),
            ),
            FaultKind::Zero => (
                "0s".to_string(),
                matches!(entry.duration, Some(Accept::ZeroToo | Accept::WholeSeconds)),
            ),
            FaultKind::Millis(ms) => {
                let keeps = match entry.duration {
                    None => false,
                    Some(Accept::ZeroToo) => true,
                    Some(Accept::PositiveOnly | Accept::PositiveOrOff) => *ms > 0,
                    Some(Accept::WholeSeconds) => ms % 1000 == 0,
                };
                (format!("{ms}ms"), keeps)
            }
        };
        entry.value = quote(&text);
        entry.text = Some(text);
        valid &= keeps_valid;
    }
    valid
}

fn render(tables: &[Table], unknown: Option<&Unknown>) -> String {
    let mut out = String::new();
    // Named so that it can never repeat a known key.
    let unknown = unknown.map(|u| {
        let name: String = u
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(16)
            .collect();
        // Table 0 of `tables.len() + 1` is the top level.
        (
            usize::from(u.table) % (tables.len() + 1),
            format!("x_{name}"),
        )
    });
    if let Some((0, name)) = &unknown {
        let _ = writeln!(out, "{name} = 1");
    }
    for (i, table) in tables.iter().enumerate() {
        let _ = writeln!(out, "{}", table.header);
        if let Some((at, name)) = &unknown {
            if *at == i + 1 {
                let _ = writeln!(out, "{name} = \"x\"");
            }
        }
        for entry in table.entries.iter().filter(|e| !e.value.is_empty()) {
            let _ = writeln!(out, "{} = {}", entry.key, entry.value);
        }
    }
    out
}

impl Wrong {
    fn render(&self) -> String {
        match self {
            Wrong::Int(n) => n.to_string(),
            Wrong::Bool(b) => b.to_string(),
            Wrong::Float(f) => float(*f),
            Wrong::Array => "[]".to_string(),
            Wrong::Table => "{}".to_string(),
            // Datetimes once defeated the key index that named the key of a
            // TOML shape error (now serde_path_to_error, `config::error`).
            Wrong::Date => "1979-05-27".to_string(),
        }
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() && c != '\t' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML float: Rust's `Debug` form is valid TOML except for the specials.
fn float(f: f64) -> String {
    if f.is_nan() {
        "nan".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{f:?}")
    }
}

fuzz_target!(|doc: Doc| {
    let (mut tables, no_tls) = plan(&doc);
    let faults_keep_valid = apply(&mut tables, &doc.faults);
    let written = written(&tables);
    let must_accept =
        no_tls && faults_keep_valid && doc.unknown.is_none() && written.cross_references_hold();
    let text = render(&tables, doc.unknown.as_ref());
    if let Err(e) = text.parse::<toml::Table>() {
        panic!("generator wrote invalid TOML ({e}):\n{text}");
    }
    let Some(result) = parse_and_check(&text) else {
        return;
    };
    match result {
        Ok(config) => {
            assert_eq!(config.listeners.len(), written.listeners, "{text}");
            let names: Vec<Option<String>> = config
                .upstreams
                .iter()
                .map(|u| Some(u.name.clone()))
                .collect();
            assert_eq!(names, written.upstream_names, "{text}");
            let paths: Vec<Option<String>> =
                config.routes.iter().map(|r| Some(r.path.clone())).collect();
            let written_paths: Vec<Option<String>> = written
                .routes
                .iter()
                .map(|(_, path, _)| path.clone())
                .collect();
            assert_eq!(paths, written_paths, "{text}");
        }
        Err(errors) => {
            assert!(!must_accept, "rejected a valid document:\n{text}\n{errors}");
            for error in &errors.0 {
                assert!(
                    !error.message.starts_with("invalid TOML"),
                    "valid TOML called invalid: {error}\n{text}"
                );
            }
        }
    }
});

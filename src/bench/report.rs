//! What `ssegate bench` prints: the live progress line, the final table and
//! the `--json` object, whose keys other tools parse, so they are fixed:
//!
//! ```json
//! {"url":"…","http2":false,"connections":1,"streams_requested":100,"duration_s":10.0,
//!  "streams_opened":100,"streams_failed":0,
//!  "errors":{"connect":0,"tls":0,"status":0,"closed":0,"timeout":0,"other":0},
//!  "connect_ms":{"p50":0.1,"p90":0.2,"p99":0.3,"max":0.4},
//!  "first_event_ms":{"p50":0,"p90":0,"p99":0,"max":0},
//!  "events":1000,"events_per_s":100.0,"bytes":12345,"bytes_per_s":1234.5,"comments":0,
//!  "max_silence_ms":1000.0,"gaps":0,"duplicates":0,
//!  "latency_ms":{"count":1000,"p50":0.2,"p90":0.3,"p99":0.5,"p999":0.9,"max":1.2},
//!  "reconnect":false,"reconnections":0,"reconnect_failures":0,"max_disconnected_ms":0.0,
//!  "streams_open_at_end":100,"cpu_s":0.42,"peak_rss_kib":51234}
//! ```
//!
//! - `connections` is the `--connections` value (1 unless given; HTTP/1.1
//!   always uses one connection per stream).
//! - `duration_s` is the measured window: `--duration`, or less when every
//!   stream ended or failed before it.
//! - `streams_failed` counts streams that never opened; `errors` counts every
//!   failure by kind, including open streams that were closed early, so its
//!   sum can exceed `streams_failed`.
//! - `connect_ms` has one sample per connection (TCP plus TLS);
//!   `first_event_ms` is from the start of a stream's opening to its first
//!   event; `bytes` is event-stream body after HTTP framing.
//! - `max_silence_ms` is the longest time on any stream between two received
//!   chunks, from the response head to the first one, or from the last one to
//!   the end of the run.
//! - `latency_ms` is `null` when no event carried `"ts_us":`.
//! - `reconnect` is the `--reconnect` flag. With it, `reconnections` counts
//!   streams opened again after a connection ended, `reconnect_failures` the
//!   attempts that did not open, and `max_disconnected_ms` the longest time
//!   any stream had no open connection, from a connection's end to the next
//!   opening (or to the end of the run); all three are 0 without it.
//!   `errors` then counts every ended connection and every failed attempt.
//! - `streams_open_at_end` counts the streams with an open connection when
//!   the run ended.
//! - `cpu_s` is the bench process's user plus system CPU time.
//! - `peak_rss_kib` is the bench process's peak resident memory (`VmHWM`),
//!   `null` where `/proc` is not there.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::plan::Plan;
use super::stats::{to_ms, ErrorKind, Percentiles, Snapshot};

/// The outcome of a run, ready to print.
pub struct RunResult {
    pub snapshot: Snapshot,
    /// The measurement window.
    pub elapsed: Duration,
    pub cpu_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    url: &'a str,
    http2: bool,
    connections: usize,
    streams_requested: usize,
    duration_s: f64,
    streams_opened: u64,
    streams_failed: u64,
    errors: Errors,
    connect_ms: Spread,
    first_event_ms: Spread,
    events: u64,
    events_per_s: f64,
    bytes: u64,
    bytes_per_s: f64,
    comments: u64,
    max_silence_ms: f64,
    gaps: u64,
    duplicates: u64,
    latency_ms: Option<Latency>,
    reconnect: bool,
    reconnections: u64,
    reconnect_failures: u64,
    max_disconnected_ms: f64,
    streams_open_at_end: u64,
    cpu_s: f64,
    peak_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Errors {
    connect: u64,
    tls: u64,
    status: u64,
    closed: u64,
    timeout: u64,
    other: u64,
}

#[derive(Debug, Serialize)]
struct Spread {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl From<Percentiles> for Spread {
    fn from(p: Percentiles) -> Self {
        Spread {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

impl From<Percentiles> for Latency {
    fn from(p: Percentiles) -> Self {
        Latency {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

/// Rounds to 3 decimals, so the JSON shows no float noise.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn per_second(count: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        round3(count as f64 / secs)
    } else {
        0.0
    }
}

fn build<'a>(plan: &'a Plan, result: &RunResult) -> Report<'a> {
    let snap = &result.snapshot;
    let errors = |kind| snap.errors_of(kind);
    let latency = Percentiles::of(&snap.latency);
    Report {
        url: &plan.url,
        http2: plan.http2,
        connections: plan.connections,
        streams_requested: plan.streams,
        duration_s: round3(result.elapsed.as_secs_f64()),
        streams_opened: snap.opened,
        streams_failed: snap.failed,
        errors: Errors {
            connect: errors(ErrorKind::Connect),
            tls: errors(ErrorKind::Tls),
            status: errors(ErrorKind::Status),
            closed: errors(ErrorKind::Closed),
            timeout: errors(ErrorKind::Timeout),
            other: errors(ErrorKind::Other),
        },
        connect_ms: Percentiles::of(&snap.connect).into(),
        first_event_ms: Percentiles::of(&snap.first_event).into(),
        events: snap.counters.events,
        events_per_s: per_second(snap.counters.events, result.elapsed),
        bytes: snap.counters.bytes,
        bytes_per_s: per_second(snap.counters.bytes, result.elapsed),
        comments: snap.counters.comments,
        max_silence_ms: to_ms(snap.max_silence_us),
        gaps: snap.counters.gaps,
        duplicates: snap.counters.duplicates,
        latency_ms: (latency.count > 0).then(|| latency.into()),
        reconnect: plan.reconnect,
        reconnections: snap.reconnections,
        reconnect_failures: snap.reconnect_failures,
        max_disconnected_ms: to_ms(snap.max_disconnected_us),
        streams_open_at_end: snap.open_at_end,
        cpu_s: round3(result.cpu_s),
        peak_rss_kib: result.peak_rss_bytes.map(|b| b / 1024),
    }
}

/// The `--json` object, on one line.
pub fn json(plan: &Plan, result: &RunResult) -> String {
    serde_json::to_string(&build(plan, result))
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the report: {e}\"}}"))
}

/// The human-readable report.
pub fn table(plan: &Plan, result: &RunResult) -> String {
    let report = build(plan, result);
    let mut out = String::new();
    write_title(&mut out, plan, &report);
    write_counts(&mut out, &report, &result.snapshot);
    write_percentiles(&mut out, &result.snapshot);
    write_resources(&mut out, &report, result);
    out
}

fn write_title(out: &mut String, plan: &Plan, report: &Report<'_>) {
    let protocol = match (plan.http2, plan.target.tls) {
        (false, false) => "HTTP/1.1".to_string(),
        (false, true) => "HTTP/1.1 over TLS".to_string(),
        (true, false) => format!("h2c over {} connection(s)", plan.connections),
        (true, true) => format!("HTTP/2 over TLS, {} connection(s)", plan.connections),
    };
    let _ = writeln!(
        out,
        "ssegate bench {} {} ({protocol})",
        plan.method, plan.url
    );
    let _ = writeln!(
        out,
        "  {} streams, ramp {:.1} s, measured over {:.1} s\n",
        plan.streams,
        plan.ramp.as_secs_f64(),
        report.duration_s
    );
}

fn write_counts(out: &mut String, r: &Report<'_>, snap: &Snapshot) {
    let _ = writeln!(
        out,
        "streams     {} opened, {} failed",
        r.streams_opened, r.streams_failed
    );
    let e = &r.errors;
    let _ = writeln!(
        out,
        "errors      connect {}  tls {}  status {}  closed {} ({} cleanly)  timeout {}  other {}",
        e.connect, e.tls, e.status, e.closed, snap.closed_cleanly, e.timeout, e.other
    );
    for (kind, message) in ErrorKind::ALL.iter().zip(&snap.first_errors) {
        if let Some(message) = message {
            let _ = writeln!(out, "  first {}: {message}", kind.name());
        }
    }
    let _ = writeln!(
        out,
        "events      {} ({}/s), {} comments",
        r.events, r.events_per_s, r.comments
    );
    let _ = writeln!(
        out,
        "bytes       {} ({}/s)",
        human_bytes(r.bytes as f64),
        human_bytes(r.bytes_per_s)
    );
    let _ = writeln!(
        out,
        "ids         {} gaps, {} duplicates",
        r.gaps, r.duplicates
    );
    let _ = writeln!(out, "silence     longest {:.1} ms", r.max_silence_ms);
    if r.reconnect {
        let _ = writeln!(
            out,
            "reconnects  {} ({} failed attempts), longest without a connection {:.1} ms",
            r.reconnections, r.reconnect_failures, r.max_disconnected_ms
        );
    }
    let _ = writeln!(out, "at the end  {} streams open\n", r.streams_open_at_end);
}

fn write_percentiles(out: &mut String, snap: &Snapshot) {
    let _ = writeln!(
        out,
        "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "ms", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, histogram) in [
        ("connect", &snap.connect),
        ("first event", &snap.first_event),
        ("latency", &snap.latency),
    ] {
        let p = Percentiles::of(histogram);
        let label = format!("{name} (n={})", p.count);
        let _ = writeln!(
            out,
            "{label:<22}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
            p.p50, p.p90, p.p99, p.p999, p.max
        );
    }
}

fn write_resources(out: &mut String, report: &Report<'_>, result: &RunResult) {
    let window = result.elapsed.as_secs_f64().max(1e-3);
    let rss = result
        .peak_rss_bytes
        .map_or_else(|| "unknown".to_string(), |b| human_bytes(b as f64));
    let _ = write!(
        out,
        "\nbench cpu   {:.2} s ({:.0}% of one core), peak RSS {rss}",
        report.cpu_s,
        100.0 * report.cpu_s / window
    );
}

/// `12.3 MB` style.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The line shown once a second while running.
pub fn progress_line(elapsed: Duration, requested: usize, rate: f64, snap: &Snapshot) -> String {
    let p99 = Percentiles::of(&snap.latency).p99;
    let failed = snap.failed;
    format!(
        "{:>5.0} s  open {}/{requested}  failed {failed}  {:.0} events/s  p99 {p99:.2} ms",
        elapsed.as_secs_f64(),
        snap.open_now,
        rate,
    )
}

/// `connect 3 (first: …), status 1 (first: …)` for the errors seen.
pub fn error_summary(snap: &Snapshot) -> String {
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .zip(&snap.first_errors)
        .filter(|(kind, _)| snap.errors_of(**kind) > 0)
        .map(|(kind, first)| {
            format!(
                "{} {}: {}",
                kind.name(),
                snap.errors_of(*kind),
                first.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if parts.is_empty() {
        "no error recorded".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Stats;

    fn plan() -> Plan {
        let args = crate::bench::BenchArgs::try_parse_from(&[
            "bench",
            "--url",
            "http://h/",
            "--streams",
            "2",
            "--duration",
            "1s",
        ])
        .unwrap();
        Plan::from_args(&args.client).unwrap()
    }

    #[test]
    fn json_has_exactly_the_agreed_keys() {
        let stats = Stats::new();
        stats.error(ErrorKind::Connect, "refused");
        let mut snapshot = Snapshot::new();
        stats.snapshot(&mut snapshot);
        let result = RunResult {
            snapshot,
            elapsed: Duration::from_millis(1500),
            cpu_s: 0.1234,
            peak_rss_bytes: Some(1 << 20),
        };
        let v: serde_json::Value = serde_json::from_str(&json(&plan(), &result)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "url",
            "http2",
            "connections",
            "streams_requested",
            "duration_s",
            "streams_opened",
            "streams_failed",
            "errors",
            "connect_ms",
            "first_event_ms",
            "events",
            "events_per_s",
            "bytes",
            "bytes_per_s",
            "comments",
            "max_silence_ms",
            "gaps",
            "duplicates",
            "latency_ms",
            "reconnect",
            "reconnections",
            "reconnect_failures",
            "max_disconnected_ms",
            "streams_open_at_end",
            "cpu_s",
            "peak_rss_kib",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["errors"]["connect"], 1);
        assert_eq!(v["latency_ms"], serde_json::Value::Null);
        assert_eq!(v["duration_s"], 1.5);
        assert_eq!(v["cpu_s"], 0.123);
        assert_eq!(v["peak_rss_kib"], 1024);
        assert_eq!(v["connect_ms"]["p50"], 0.0);
        let table = table(&plan(), &result);
        assert!(table.contains("first connect: refused"), "{table}");
        assert_eq!(error_summary(&result.snapshot), "connect 1: refused");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(12_345_678.0), "12.3 MB");
    }
}

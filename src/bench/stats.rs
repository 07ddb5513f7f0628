//! What the bench client measures, and how it adds up across 20,000 streams
//! without a global lock per event.
//!
//! - [`StreamMeter`] is one stream's state: the SSE framer, the last numeric
//!   id (gaps, duplicates), when the last chunk arrived (silences) and whether
//!   the first event has been seen.
//! - [`Stats`] is shared. Rare things (a stream opened, failed, an error)
//!   are atomics. Per-event numbers go to one of [`SHARDS`] [`Shard`]s,
//!   picked by stream index and locked once per received chunk, never per
//!   event; the progress line and the final report merge the shards.
//!   Connect and first-event times, one sample per stream or connection,
//!   share one lock.
//! - Latency, connect and first-event times are HDR histograms in
//!   microseconds (1 µs to 1 h, 3 significant digits): constant memory
//!   whatever the number of samples.
//!
//! One-way latency needs the sender's clock in the event: the data must
//! contain `"ts_us":<unix time in microseconds at send>` within its first
//! [`CAPTURE_BYTES`] bytes, as `ssegate bench upstream` writes it. Latency is
//! the wall clock at receipt minus that value (clamped at zero), so sender
//! and receiver clocks must agree: same machine, or synchronised clocks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::sse::{Event, Framer};

/// Data bytes of each event the framer keeps, where `"ts_us":` is looked for.
pub const CAPTURE_BYTES: usize = 512;

/// Highest value a histogram holds, in µs (one hour); larger ones saturate.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Shards of per-event counters; enough that a few cores rarely meet on one,
/// few enough that their histograms (about 190 kB each) stay small.
pub const SHARDS: usize = 16;

/// The ways a stream can fail, as reported under `errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed (refused, unreachable, name not resolved).
    Connect,
    /// TLS handshake failed, certificate rejected, or ALPN did not give h2.
    Tls,
    /// The response was not `200` with `Content-Type: text/event-stream`.
    Status,
    /// The stream ended (cleanly or not) or was reset before the run ended.
    Closed,
    /// No response in time, or not open yet when the run ended.
    Timeout,
    /// Anything else: malformed HTTP, protocol errors, local I/O errors.
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        Self::Connect,
        Self::Tls,
        Self::Status,
        Self::Closed,
        Self::Timeout,
        Self::Other,
    ];

    /// The key under `errors` in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Status => "status",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A histogram for microsecond samples.
pub fn new_histogram() -> Histogram<u64> {
    // Fails only for invalid bounds; these are constants, checked by the tests.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid constant histogram bounds")
}

/// Whole microseconds in `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Wall-clock time as microseconds since the Unix epoch (0 before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, micros)
}

/// Per-event numbers, summed over streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    /// Event-stream body bytes (after HTTP framing).
    pub bytes: u64,
    /// Comment lines (`:` first), i.e. heartbeats.
    pub comments: u64,
    pub gaps: u64,
    pub duplicates: u64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.events += other.events;
        self.bytes += other.bytes;
        self.comments += other.comments;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
    }
}

/// One shard of per-event measurements.
pub struct Shard {
    pub counters: Counters,
    pub max_silence_us: u64,
    /// Longest time a stream had no open connection between two (`--reconnect`).
    pub max_disconnected_us: u64,
    pub latency: Histogram<u64>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            counters: Counters::default(),
            max_silence_us: 0,
            max_disconnected_us: 0,
            latency: new_histogram(),
        }
    }
}

/// Times measured once per stream or connection.
struct Openings {
    connect: Histogram<u64>,
    first_event: Histogram<u64>,
}

/// Everything measured so far, merged from the shards and atomics.
pub struct Snapshot {
    pub counters: Counters,
    pub max_silence_us: u64,
    pub max_disconnected_us: u64,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub first_event: Histogram<u64>,
    pub opened: u64,
    pub failed: u64,
    pub open_now: i64,
    pub closed_cleanly: u64,
    /// Streams opened again after a connection ended (`--reconnect`).
    pub reconnections: u64,
    /// Reconnection attempts that did not open (`--reconnect`).
    pub reconnect_failures: u64,
    /// Streams with an open connection when the run ended.
    pub open_at_end: u64,
    pub errors: [u64; 6],
    /// The first message seen for each error kind, for the reader.
    pub first_errors: [Option<String>; 6],
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot {
            counters: Counters::default(),
            max_silence_us: 0,
            max_disconnected_us: 0,
            latency: new_histogram(),
            connect: new_histogram(),
            first_event: new_histogram(),
            opened: 0,
            failed: 0,
            open_now: 0,
            closed_cleanly: 0,
            reconnections: 0,
            reconnect_failures: 0,
            open_at_end: 0,
            errors: [0; 6],
            first_errors: Default::default(),
        }
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared measurements of one run.
pub struct Stats {
    shards: Box<[Mutex<Shard>]>,
    openings: Mutex<Openings>,
    opened: AtomicU64,
    failed: AtomicU64,
    open_now: AtomicI64,
    closed_cleanly: AtomicU64,
    reconnections: AtomicU64,
    reconnect_failures: AtomicU64,
    open_at_end: AtomicU64,
    errors: [AtomicU64; 6],
    first_errors: Mutex<[Option<String>; 6]>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            openings: Mutex::new(Openings {
                connect: new_histogram(),
                first_event: new_histogram(),
            }),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            open_now: AtomicI64::new(0),
            closed_cleanly: AtomicU64::new(0),
            reconnections: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            open_at_end: AtomicU64::new(0),
            errors: Default::default(),
            first_errors: Mutex::default(),
        }
    }

    /// The shard for stream (or connection) number `index`.
    pub fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic elsewhere cannot leave a shard half-updated in a way that
        // matters for counters, so a poisoned lock is still used.
        self.shards[index % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stream_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open_now.fetch_add(1, Ordering::Relaxed);
    }

    /// An opened stream is no longer open (ended, failed or run over).
    pub fn stream_gone(&self) {
        self.open_now.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn stream_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed_cleanly(&self) {
        self.closed_cleanly.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream that had been open and lost its connection opened again.
    fn stream_reopened(&self) {
        self.reconnections.fetch_add(1, Ordering::Relaxed);
        self.open_now.fetch_add(1, Ordering::Relaxed);
    }

    /// A reconnection attempt did not open.
    pub fn reconnect_failed(&self) {
        self.reconnect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream was open when the run ended.
    pub fn stream_open_at_end(&self) {
        self.open_at_end.fetch_add(1, Ordering::Relaxed);
    }

    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn openings(&self) -> MutexGuard<'_, Openings> {
        self.openings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection took `took` to set up (TCP, plus TLS for https).
    pub fn record_connect(&self, took: Duration) {
        record(&mut self.openings().connect, micros(took));
    }

    /// A stream's first event came `took` after it began opening.
    fn record_first_event(&self, took: Duration) {
        record(&mut self.openings().first_event, micros(took));
    }

    /// Counts an error of `kind`, keeping the first message of each kind.
    pub fn error(&self, kind: ErrorKind, message: &str) {
        let i = kind.index();
        if self.errors[i].fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self
                .first_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            first[i].get_or_insert_with(|| message.to_string());
        }
    }

    /// Merges everything into `into`, reusing its histograms.
    pub fn snapshot(&self, into: &mut Snapshot) {
        into.counters = Counters::default();
        into.max_silence_us = 0;
        into.max_disconnected_us = 0;
        into.latency.reset();
        into.connect.reset();
        into.first_event.reset();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            into.counters.add(&shard.counters);
            into.max_silence_us = into.max_silence_us.max(shard.max_silence_us);
            into.max_disconnected_us = into.max_disconnected_us.max(shard.max_disconnected_us);
            // Same bounds everywhere, so adding cannot fail.
            let _ = into.latency.add(&shard.latency);
        }
        {
            let openings = self.openings();
            let _ = into.connect.add(&openings.connect);
            let _ = into.first_event.add(&openings.first_event);
        }
        into.opened = self.opened.load(Ordering::Relaxed);
        into.failed = self.failed.load(Ordering::Relaxed);
        into.open_now = self.open_now.load(Ordering::Relaxed);
        into.closed_cleanly = self.closed_cleanly.load(Ordering::Relaxed);
        into.reconnections = self.reconnections.load(Ordering::Relaxed);
        into.reconnect_failures = self.reconnect_failures.load(Ordering::Relaxed);
        into.open_at_end = self.open_at_end.load(Ordering::Relaxed);
        for (out, count) in into.errors.iter_mut().zip(&self.errors) {
            *out = count.load(Ordering::Relaxed);
        }
        into.first_errors = self
            .first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
    }
}

/// What a numeric id says about the stream so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdCheck {
    /// The first id, or the one after the last.
    InOrder,
    /// `n` ids were skipped.
    Gap(u64),
    /// At or below the last id.
    Duplicate,
    /// Not a decimal number (or no id yet): not tracked.
    Untracked,
}

/// Gap and duplicate detection on numeric ids, per stream.
///
/// The framer reports the last event ID string, which an event without an
/// `id:` field inherits from the one before; such events therefore count as
/// duplicates. Streams whose events all carry ids (the bench upstream's do)
/// are measured exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdTracker {
    last: Option<u64>,
}

impl IdTracker {
    pub fn observe(&mut self, id: &[u8]) -> IdCheck {
        let Some(id) = parse_decimal(id) else {
            return IdCheck::Untracked;
        };
        let check = match self.last {
            None => IdCheck::InOrder,
            Some(last) if id == last.saturating_add(1) => IdCheck::InOrder,
            Some(last) if id <= last => IdCheck::Duplicate,
            Some(last) => IdCheck::Gap(id - last - 1),
        };
        if check != IdCheck::Duplicate {
            self.last = Some(id);
        }
        check
    }
}

/// A plain decimal `u64` (no sign, no spaces), or `None`.
fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The send time in an event's data: the digits after `"ts_us":`.
pub fn send_timestamp_us(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts_us\":";
    let at = data.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &data[at + KEY.len()..];
    let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    parse_decimal(&rest[..digits])
}

/// One stream's measuring state. It lives outside the stream's I/O future so
/// that a stream cut off by the end of the run can still be accounted for.
///
/// With `--reconnect` one meter follows a stream across its connections:
/// ids are checked across them, and what a browser keeps between
/// connections (the last event ID and the `retry:` time) is kept here when
/// a connection ends ([`StreamMeter::closed`]), each new connection getting a
/// fresh framer ([`StreamMeter::new_connection`]).
pub struct StreamMeter {
    shard: usize,
    /// When this stream began opening (before connect).
    started: Instant,
    framer: Framer,
    ids: IdTracker,
    /// When the current connection's response head arrived; `None` while
    /// no connection is open.
    opened_at: Option<Instant>,
    /// Some connection of this stream opened once.
    ever_opened: bool,
    /// When the last open connection ended, while none is open.
    disconnected_since: Option<Instant>,
    last_chunk: Option<Instant>,
    seen_event: bool,
    /// The last event ID string of the connections that ended.
    last_event_id: Option<Vec<u8>>,
    /// The last `retry:` of the connections that ended, in ms.
    retry_ms: Option<u64>,
}

impl StreamMeter {
    pub fn new(shard: usize, started: Instant) -> Self {
        StreamMeter {
            shard,
            started,
            framer: Framer::with_data_capture(CAPTURE_BYTES),
            ids: IdTracker::default(),
            opened_at: None,
            ever_opened: false,
            disconnected_since: None,
            last_chunk: None,
            seen_event: false,
            last_event_id: None,
            retry_ms: None,
        }
    }

    /// A connection of this stream is open now.
    pub fn is_open(&self) -> bool {
        self.opened_at.is_some()
    }

    /// A connection of this stream was open at some point.
    pub fn ever_opened(&self) -> bool {
        self.ever_opened
    }

    /// The response head arrived: silences are measured from here. A stream
    /// opening again counts as a reconnection, and the time it had no open
    /// connection is measured.
    pub fn opened(&mut self, stats: &Stats, at: Instant) {
        self.opened_at = Some(at);
        if self.ever_opened {
            stats.stream_reopened();
            if let Some(since) = self.disconnected_since.take() {
                self.record_disconnected(stats, at.saturating_duration_since(since));
            }
        } else {
            self.ever_opened = true;
            stats.stream_opened();
        }
    }

    /// The open connection ended at `at` (`--reconnect`): what the next
    /// connection resumes from is kept, and the disconnected time starts.
    pub fn closed(&mut self, stats: &Stats, at: Instant) {
        if self.opened_at.take().is_none() {
            return;
        }
        stats.stream_gone();
        self.disconnected_since = Some(at);
        if let Some(id) = self.framer.last_event_id() {
            self.last_event_id = Some(id.to_vec());
        }
        if let Some(ms) = self.framer.retry() {
            self.retry_ms = Some(ms);
        }
    }

    /// Starts a new connection's body: a fresh framer (an event cut short
    /// by the previous connection's end is dropped, as browsers do).
    pub fn new_connection(&mut self) {
        self.framer = Framer::with_data_capture(CAPTURE_BYTES);
    }

    /// The last event ID received on an ended connection, for `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&[u8]> {
        self.last_event_id.as_deref()
    }

    /// The last `retry:` (ms) received on an ended connection.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    fn record_disconnected(&self, stats: &Stats, took: Duration) {
        let mut shard = stats.shard(self.shard);
        shard.max_disconnected_us = shard.max_disconnected_us.max(micros(took));
    }

    /// This stream's own connection (HTTP/1.1) took `took` to set up.
    pub fn connected(&self, stats: &Stats, took: Duration) {
        stats.record_connect(took);
    }

    /// Since when the open connection has been silent: its last chunk, or
    /// its opening if nothing came since.
    fn silent_since(&self) -> Option<Instant> {
        match (self.last_chunk, self.opened_at) {
            (Some(chunk), Some(opened)) => Some(chunk.max(opened)),
            (chunk, opened) => chunk.or(opened),
        }
    }

    /// Starts taking in what one read from the network brought at `now`:
    /// the shard is locked once for all the pieces of body it holds.
    pub fn receive<'m>(&'m mut self, stats: &'m Stats, now: Instant) -> Receiving<'m> {
        let since = self.silent_since().unwrap_or(now);
        self.last_chunk = Some(now);
        let mut shard = stats.shard(self.shard);
        shard.max_silence_us = shard
            .max_silence_us
            .max(micros(now.saturating_duration_since(since)));
        Receiving {
            comments_before: self.framer.comments(),
            had_event: self.seen_event,
            meter: self,
            stats,
            shard,
            now,
            wall_us: unix_micros(),
        }
    }

    /// Takes in one chunk of event-stream body received at `now`.
    pub fn on_chunk(&mut self, stats: &Stats, data: &[u8], now: Instant) {
        self.receive(stats, now).data(data);
    }

    /// The run ended at `end`: an open stream's silence since its last
    /// chunk counts too, and so does the time a stream waiting to reconnect
    /// has been without a connection.
    pub fn cut_off(&self, stats: &Stats, end: Instant) {
        if self.is_open() {
            if let Some(since) = self.silent_since() {
                let silence = micros(end.saturating_duration_since(since));
                let mut shard = stats.shard(self.shard);
                shard.max_silence_us = shard.max_silence_us.max(silence);
            }
        } else if let Some(since) = self.disconnected_since {
            self.record_disconnected(stats, end.saturating_duration_since(since));
        }
    }
}

/// One read's worth of body being fed to a stream's framer; see
/// [`StreamMeter::receive`].
pub struct Receiving<'m> {
    meter: &'m mut StreamMeter,
    stats: &'m Stats,
    shard: MutexGuard<'m, Shard>,
    now: Instant,
    wall_us: u64,
    comments_before: u64,
    had_event: bool,
}

impl Receiving<'_> {
    /// Feeds a piece of event-stream body.
    pub fn data(&mut self, bytes: &[u8]) {
        let shard = &mut *self.shard;
        let meter = &mut *self.meter;
        let wall_us = self.wall_us;
        let seen_event = &mut meter.seen_event;
        let ids = &mut meter.ids;
        shard.counters.bytes += bytes.len() as u64;
        meter.framer.feed_with(bytes, |event| {
            *seen_event = true;
            on_event(shard, ids, event, wall_us);
        });
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.shard.counters.comments += self.meter.framer.comments() - self.comments_before;
        if self.meter.seen_event && !self.had_event {
            let took = self.now.saturating_duration_since(self.meter.started);
            self.stats.record_first_event(took);
        }
    }
}

fn on_event(shard: &mut Shard, ids: &mut IdTracker, event: &Event<'_>, wall_us: u64) {
    shard.counters.events += 1;
    match ids.observe(event.id) {
        IdCheck::Gap(n) => shard.counters.gaps += n,
        IdCheck::Duplicate => shard.counters.duplicates += 1,
        IdCheck::InOrder | IdCheck::Untracked => {}
    }
    if let Some(sent) = send_timestamp_us(event.data) {
        record(&mut shard.latency, wall_us.saturating_sub(sent));
    }
}

/// Records `us`, clamped into the histogram's range.
fn record(histogram: &mut Histogram<u64>, us: u64) {
    histogram.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
}

/// Percentiles of a histogram of µs, in milliseconds; zeros when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |q: f64| to_ms(histogram.value_at_quantile(q));
        Percentiles {
            count: histogram.len(),
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: to_ms(histogram.max()),
        }
    }
}

/// µs to ms, rounded to the µs.
pub fn to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            record(&mut h, ms * 1000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p90, 900.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert!(close(p.max, 1000.0), "{p:?}");
    }

    #[test]
    fn percentiles_of_nothing_are_zero_and_extremes_saturate() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 2);
        assert!(p.p50 <= 0.002, "{p:?}");
        assert!((p.max - 3_600_000.0).abs() < 3_600.0, "{p:?}");
    }

    #[test]
    fn snapshot_merges_shards() {
        let stats = Stats::new();
        for i in 0..SHARDS * 2 {
            let mut shard = stats.shard(i);
            shard.counters.events += 1;
            record(&mut shard.latency, 1000 * (i as u64 + 1));
            shard.max_silence_us = shard.max_silence_us.max(i as u64);
        }
        stats.error(ErrorKind::Status, "404");
        stats.error(ErrorKind::Status, "500");
        let mut snap = Snapshot::new();
        stats.snapshot(&mut snap);
        assert_eq!(snap.counters.events, 2 * SHARDS as u64);
        assert_eq!(snap.latency.len(), 2 * SHARDS as u64);
        assert_eq!(snap.max_silence_us, 2 * SHARDS as u64 - 1);
        assert_eq!(snap.errors_of(ErrorKind::Status), 2);
        assert_eq!(snap.first_errors[2].as_deref(), Some("404"));
        // A second snapshot starts over rather than adding up.
        stats.snapshot(&mut snap);
        assert_eq!(snap.latency.len(), 2 * SHARDS as u64);
    }

    #[test]
    fn ids_in_order_gaps_and_duplicates() {
        let mut ids = IdTracker::default();
        let seq: Vec<IdCheck> = ["5", "6", "8", "8", "7", "9", "x", "13"]
            .iter()
            .map(|id| ids.observe(id.as_bytes()))
            .collect();
        assert_eq!(
            seq,
            [
                IdCheck::InOrder,
                IdCheck::InOrder,
                IdCheck::Gap(1),
                IdCheck::Duplicate,
                IdCheck::Duplicate,
                IdCheck::InOrder,
                IdCheck::Untracked,
                IdCheck::Gap(3),
            ]
        );
        assert_eq!(IdTracker::default().observe(b""), IdCheck::Untracked);
        assert_eq!(IdTracker::default().observe(b"-1"), IdCheck::Untracked);
        assert_eq!(
            IdTracker::default().observe(b"99999999999999999999999"),
            IdCheck::Untracked
        );
    }

    #[test]
    fn finds_send_timestamps() {
        assert_eq!(
            send_timestamp_us(br#"{"seq":1,"ts_us":1700000000123456,"pad":"x"}"#),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(send_timestamp_us(br#"{"ts_us": 42}"#), Some(42));
        assert_eq!(send_timestamp_us(br#"{"ts_us":"42"}"#), None);
        assert_eq!(send_timestamp_us(br#"{"ts":42}"#), None);
        assert_eq!(send_timestamp_us(b""), None);
    }

    #[test]
    fn meter_counts_events_comments_and_latency() {
        let stats = Stats::new();
        let start = Instant::now();
        let mut meter = StreamMeter::new(3, start);
        meter.opened(&stats, start);
        let sent = unix_micros();
        let body = format!(
            ": hb\n\nid: 1\ndata: {{\"ts_us\":{sent}}}\n\nid: 3\ndata: x\n\nid: 3\ndata: y\n\n"
        );
        let (a, b) = body.as_bytes().split_at(17);
        meter.on_chunk(&stats, a, start);
        meter.on_chunk(&stats, b, start + Duration::from_millis(40));
        meter.cut_off(&stats, start + Duration::from_millis(100));
        let mut snap = Snapshot::new();
        stats.snapshot(&mut snap);
        assert_eq!(snap.counters.events, 3);
        assert_eq!(snap.counters.comments, 1);
        assert_eq!(snap.counters.gaps, 1);
        assert_eq!(snap.counters.duplicates, 1);
        assert_eq!(snap.counters.bytes, body.len() as u64);
        assert_eq!(snap.latency.len(), 1);
        assert_eq!(snap.first_event.len(), 1);
        assert_eq!(
            snap.max_silence_us, 60_000,
            "cut off 60 ms after the last chunk"
        );
        assert_eq!((snap.opened, snap.open_now), (1, 1));
    }

    #[test]
    fn meter_follows_a_stream_across_connections() {
        let stats = Stats::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut meter = StreamMeter::new(0, t0);
        meter.opened(&stats, t0);
        meter.on_chunk(
            &stats,
            b"retry: 250\n\nid: 1\ndata: a\n\nid: 2\ndata: cut",
            ms(10),
        );
        meter.closed(&stats, ms(20));
        assert!(!meter.is_open() && meter.ever_opened());
        assert_eq!(
            (meter.last_event_id(), meter.retry_ms()),
            (Some(&b"1"[..]), Some(250))
        );
        meter.new_connection();
        meter.opened(&stats, ms(320));
        meter.on_chunk(&stats, b"id: 2\ndata: b\n\nid: 3\ndata: c\n\n", ms(330));
        meter.closed(&stats, ms(340));
        meter.new_connection();
        meter.cut_off(&stats, ms(1340));
        let mut snap = Snapshot::new();
        stats.snapshot(&mut snap);
        assert_eq!((snap.opened, snap.open_now, snap.reconnections), (1, 0, 1));
        assert_eq!(snap.counters.events, 3);
        assert_eq!((snap.counters.gaps, snap.counters.duplicates), (0, 0));
        assert_eq!(snap.max_disconnected_us, 1_000_000, "cut off while away");
        assert_eq!(snap.max_silence_us, 10_000, "silence within a connection");
        assert_eq!(meter.last_event_id(), Some(&b"3"[..]));
    }
}

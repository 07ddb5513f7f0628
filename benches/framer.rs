//! Throughput of the SSE framer (`ssegate::sse::Framer`), in bytes of stream
//! observed per second, over realistic and adversarial inputs.
//!
//! Run with:
//!
//! ```sh
//! cargo bench --bench framer                  # every case, about 1 s each
//! cargo bench --bench framer -- --quick       # CI smoke, a couple of seconds in all
//! cargo bench --bench framer -- crlf tiny     # only cases whose name contains a word
//! ```
//!
//! `FRAMER_BENCH_QUICK=1` is the same as `--quick`.
//!
//! Each case feeds the same input, cut into the same chunks, again and again
//! for its time budget; the figure is the median pass. Two modes:
//! - `proxy`: [`Framer::new`] + `feed`, what ssegate runs on every upstream chunk;
//! - `client`: [`Framer::with_data_capture`] + `feed_with`, what the load
//!   generator runs, keeping 256 bytes of each event's data.
//!
//! Every pass is checked against the expected event and comment counts, so a
//! broken framer cannot post a good figure.
//!
//! Inputs:
//! - `json`: `id:`, `event:` and one `data:` line of JSON, 100–1000 bytes, LF;
//! - `json-crlf`, `json-cr`: the same events with CRLF and CR-only line ends;
//! - `long-line`: one event whose data line is 1 MiB;
//! - `comments`: nine `: keep-alive` comment lines for every event.
//!
//! Sizes, text and the `tiny` chunk lengths come from `rand`'s `StdRng` with
//! fixed seeds, so every run feeds the same bytes in the same chunks (for as
//! long as Cargo.lock keeps the same `rand`, whose `StdRng` algorithm may
//! change between versions).
//!
//! Chunkings: `16k` (socket reads of a busy stream), `event` (one event per
//! chunk, as a quiet upstream writes them), `tiny` (1 to 3 bytes, the worst a
//! network can do), `cr/lf split` (CRLF line ends always split between chunks,
//! which forces the pending-CR path on every line).
//!
//! The results on the development machine and what they mean are in
//! BENCHMARKS.md ("Framer").

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssegate::sse::Framer;

/// Data bytes the client mode keeps per event (the load generator's setting).
const CAPTURE: usize = 256;

/// Roughly how much stream each pass of the event-based inputs carries.
const PASS_BYTES: usize = 4 << 20;

struct Config {
    budget: Duration,
    min_passes: usize,
    filters: Vec<String>,
}

/// One input and how it was cut.
struct Case {
    input: &'static str,
    chunking: &'static str,
    bytes: Vec<u8>,
    /// Chunk boundaries: `bytes[ends[i-1]..ends[i]]` is chunk `i`.
    ends: Vec<usize>,
    events: u64,
    comments: u64,
}

impl Case {
    fn new(input: &'static str, chunking: &'static str, gen: &Generated, cut: Cut) -> Self {
        Case {
            input,
            chunking,
            ends: cut.ends(gen),
            bytes: gen.bytes.clone(),
            events: gen.events,
            comments: gen.comments,
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.input, self.chunking)
    }

    fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let chunk = &self.bytes[start..end];
            start = end;
            chunk
        })
    }
}

/// A generated stream and where its events end.
struct Generated {
    bytes: Vec<u8>,
    /// Offset just past each event's blank line.
    event_ends: Vec<usize>,
    events: u64,
    comments: u64,
}

#[derive(Clone, Copy)]
enum Cut {
    Fixed(usize),
    PerEvent,
    /// Pseudo-random lengths from 1 to 3 bytes, from a seeded generator.
    Tiny,
    /// After every CR, so each CRLF's LF starts the next chunk.
    AfterCr,
}

impl Cut {
    fn ends(self, gen: &Generated) -> Vec<usize> {
        let len = gen.bytes.len();
        let mut ends = match self {
            Cut::Fixed(size) => (1..=len.div_ceil(size))
                .map(|i| (i * size).min(len))
                .collect(),
            Cut::PerEvent => gen.event_ends.clone(),
            Cut::Tiny => {
                let mut rng = StdRng::seed_from_u64(0x5eed);
                let mut ends = Vec::with_capacity(len / 2 + 1);
                let mut at = 0;
                while at < len {
                    at = (at + rng.gen_range(1..=3)).min(len);
                    ends.push(at);
                }
                ends
            }
            Cut::AfterCr => gen
                .bytes
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\r')
                .map(|(i, _)| i + 1)
                .collect(),
        };
        if ends.last() != Some(&len) {
            ends.push(len);
        }
        ends
    }
}

/// Typical JSON events of 100 to 1000 data bytes with the given line end.
fn json_events(eol: &str, comments_per_event: usize) -> Generated {
    let mut rng = StdRng::seed_from_u64(42);
    let mut bytes = Vec::with_capacity(PASS_BYTES + 4096);
    let mut event_ends = Vec::new();
    let mut events = 0;
    let mut comments = 0;
    while bytes.len() < PASS_BYTES {
        for _ in 0..comments_per_event {
            bytes.extend_from_slice(format!(": keep-alive{eol}").as_bytes());
            comments += 1;
        }
        let target: usize = rng.gen_range(100..=1000);
        let mut data = format!(
            r#"{{"id":{events},"type":"price","symbol":"ACME","ts_us":1732185600{:06},"tags":["a","b"],"text":""#,
            rng.gen_range(0..1_000_000u32)
        );
        while data.len() + 2 < target {
            data.push(char::from(rng.gen_range(b'a'..=b'z')));
        }
        data.push_str("\"}");
        let event = format!("id: {events}{eol}event: update{eol}data: {data}{eol}{eol}");
        bytes.extend_from_slice(event.as_bytes());
        event_ends.push(bytes.len());
        events += 1;
    }
    Generated {
        bytes,
        event_ends,
        events,
        comments,
    }
}

/// One event whose data line is 1 MiB of JSON-ish text.
fn long_line() -> Generated {
    let mut bytes = b"id: big\ndata: ".to_vec();
    bytes.extend((0..1 << 20).map(|i| b"{\"k\":\"value\"},"[i % 14]));
    bytes.extend_from_slice(b"\n\n");
    Generated {
        event_ends: vec![bytes.len()],
        bytes,
        events: 1,
        comments: 0,
    }
}

fn cases() -> Vec<Case> {
    let lf = json_events("\n", 0);
    let crlf = json_events("\r\n", 0);
    let cr = json_events("\r", 0);
    let comments = json_events("\n", 9);
    let long = long_line();
    vec![
        Case::new("json", "16k", &lf, Cut::Fixed(16 << 10)),
        Case::new("json", "event", &lf, Cut::PerEvent),
        Case::new("json", "tiny", &lf, Cut::Tiny),
        Case::new("json-crlf", "16k", &crlf, Cut::Fixed(16 << 10)),
        Case::new("json-crlf", "cr/lf split", &crlf, Cut::AfterCr),
        Case::new("json-cr", "16k", &cr, Cut::Fixed(16 << 10)),
        Case::new("json-cr", "tiny", &cr, Cut::Tiny),
        Case::new("long-line", "1 chunk", &long, Cut::Fixed(usize::MAX)),
        Case::new("long-line", "16k", &long, Cut::Fixed(16 << 10)),
        Case::new("long-line", "tiny", &long, Cut::Tiny),
        Case::new("comments", "16k", &comments, Cut::Fixed(16 << 10)),
        Case::new("comments", "tiny", &comments, Cut::Tiny),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Proxy,
    Client,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Client => "client",
        }
    }
}

/// One pass over the case; returns (events, comments) for the check.
fn pass(case: &Case, mode: Mode) -> (u64, u64) {
    match mode {
        Mode::Proxy => {
            let mut framer = Framer::new();
            for chunk in case.chunks() {
                framer.feed(black_box(chunk));
            }
            black_box(framer.at_event_boundary());
            (framer.events(), framer.comments())
        }
        Mode::Client => {
            let mut framer = Framer::with_data_capture(CAPTURE);
            let mut seen = 0u64;
            for chunk in case.chunks() {
                framer.feed_with(black_box(chunk), |event| {
                    seen = seen.wrapping_add(event.data_len);
                    black_box(event.data);
                });
            }
            black_box(seen);
            (framer.events(), framer.comments())
        }
    }
}

/// Median throughput in bytes per second.
fn measure(case: &Case, mode: Mode, cfg: &Config) -> f64 {
    let expected = (case.events, case.comments);
    let got = pass(case, mode);
    assert_eq!(
        got,
        expected,
        "{} {}: wrong counts",
        case.name(),
        mode.name()
    );
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < cfg.min_passes || start.elapsed() < cfg.budget {
        let t = Instant::now();
        let got = pass(case, mode);
        samples.push(t.elapsed().as_secs_f64());
        assert_eq!(got, expected);
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2].max(1e-9);
    case.bytes.len() as f64 / median
}

fn config() -> Config {
    let mut quick = std::env::var("FRAMER_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut filters = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // cargo bench passes --bench to harness = false targets.
            a if a.starts_with("--") => {}
            a => filters.push(a.to_string()),
        }
    }
    if quick {
        Config {
            budget: Duration::from_millis(40),
            min_passes: 1,
            filters,
        }
    } else {
        Config {
            budget: Duration::from_millis(500),
            min_passes: 5,
            filters,
        }
    }
}

fn main() {
    let cfg = config();
    let started = Instant::now();
    println!(
        "| input | chunking | chunks | bytes | MB/s proxy | MB/s client |\n|---|---|---:|---:|---:|---:|"
    );
    for case in cases() {
        let name = case.name();
        if !cfg.filters.is_empty() && !cfg.filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let proxy = measure(&case, Mode::Proxy, &cfg);
        let client = measure(&case, Mode::Client, &cfg);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} |",
            case.input,
            case.chunking,
            case.ends.len(),
            case.bytes.len(),
            proxy / 1e6,
            client / 1e6
        );
    }
    eprintln!(
        "framer bench: done in {:.1} s (MB = 10^6 bytes; median pass)",
        started.elapsed().as_secs_f64()
    );
}

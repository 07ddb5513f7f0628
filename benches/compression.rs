//! Compression of event streams (`ssegate::compress::StreamEncoder`, route
//! `compression`): ratio and CPU per event on a JSON feed, memory per
//! compressed stream, and the cost of a shared stream's fan-out with an
//! encoder per subscriber.
//!
//! Run with:
//!
//! ```sh
//! cargo bench --bench compression              # about 20 s
//! cargo bench --bench compression -- --quick   # a smoke run, a few seconds
//! ```
//!
//! `COMPRESSION_BENCH_QUICK=1` is the same as `--quick`. The figures in
//! BENCHMARKS.md ("Compression") were taken with the release profile's
//! fat LTO turned off to spare a shared build machine (the codecs are C or
//! plain Rust and do not gain from it):
//! `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --bench compression`.
//!
//! The feed: `id:`, `event:` and one `data:` line of JSON per event, about
//! 200 bytes, whose keys and most values repeat from event to event (a
//! price ticker / presence feed), from a seeded `StdRng`.
//!
//! Cases:
//! - `ratio`: one encoder per coding over the whole feed, one write per
//!   event, each flushed (what a compressed stream does): bytes out, ratio,
//!   CPU per event; and each event coded on its own (a fresh context per
//!   event) for comparison.
//! - `memory`: N streams of one coding, each after 50 events, held at
//!   once; the process's resident memory before and after, per stream. Each
//!   coding runs in a child process of its own, so that memory freed by one
//!   coding cannot be reused by the next.
//! - `fanout`: a shared stream with 100 subscribers. Per delivered event:
//!   the encode with one encoder per subscriber (what ssegate does), with one
//!   encoder for all (the alternative), and the client write it adds to (a
//!   write of the event's bytes to a Unix socket whose other end is drained).
//!
//! Every pass checks its output decodes back (`ratio`) or is non-empty, so
//! a broken encoder cannot post a good figure.
//!
//! Results (2 shared cores, load average 4–5; BENCHMARKS.md has all):
//! ratio 4.03× zstd, 3.37× br, 4.50× gzip (each event alone: 0.97–1.15×);
//! CPU per event 1.6 µs zstd, 9.3 µs br, 3.3 µs gzip; resident memory per
//! stream 310 KiB zstd, 289 KiB br, 172 KiB gzip; with 100 subscribers
//! 3.7 / 12.4 / 8.0 µs per delivered event with an encoder each, against
//! 3.1 µs for the client write. What it means: the stream-long context is
//! the whole gain, windows cut to these sizes keep 1,000 streams near
//! 300 MiB, and a compressed fan-out costs a few times the writes' CPU.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssegate::compress::{Coding, StreamEncoder};

const SUBSCRIBERS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let coding = args.get(i + 1).and_then(|n| Coding::from_name(n));
        let streams = args.get(i + 2).and_then(|n| n.parse().ok());
        if let (Some(coding), Some(streams)) = (coding, streams) {
            memory_child(coding, streams);
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var_os("COMPRESSION_BENCH_QUICK").is_some();
    let events = feed(if quick { 2_000 } else { 20_000 }, 7);
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!(
        "feed: {} events, {} bytes, {:.0} bytes per event",
        events.len(),
        bytes,
        bytes as f64 / events.len() as f64
    );
    ratio(&events);
    memory(if quick { 200 } else { 1000 });
    fanout(&events[..if quick { 200 } else { 2_000 }]);
}

/// `n` events of the JSON feed.
fn feed(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let symbols = ["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK"];
    let states = ["open", "halted", "auction"];
    (0..n)
        .map(|i| {
            let sym = symbols[rng.gen_range(0..symbols.len())];
            let price = rng.gen_range(10_000..99_999) as f64 / 100.0;
            let volume: u32 = rng.gen_range(1..50_000);
            let state = states[rng.gen_range(0..states.len())];
            format!(
                "id: {i}\nevent: quote\ndata: {{\"seq\":{i},\"symbol\":\"{sym}\",\"price\":{price},\"volume\":{volume},\"state\":\"{state}\",\"exchange\":\"XNAS\",\"currency\":\"USD\",\"ts\":{}}}\n\n",
                1_767_000_000_000u64 + i as u64 * 137
            )
            .into_bytes()
        })
        .collect()
}

fn ratio(events: &[Vec<u8>]) {
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!("\nratio and CPU, one write per event, each flushed:");
    println!(
        "{:<6} {:>10} {:>7} {:>10} {:>12}   {:>14}",
        "coding", "bytes out", "ratio", "ns/event", "MB/s in", "alone: ratio"
    );
    for coding in Coding::ALL {
        // The best of three passes.
        let mut best = Duration::MAX;
        let mut out = 0;
        for _ in 0..3 {
            let mut e = StreamEncoder::new(coding).expect("encoder");
            let mut wire = Vec::new();
            let start = Instant::now();
            for ev in events {
                wire.extend_from_slice(&e.encode(ev).expect("encode"));
            }
            best = best.min(start.elapsed());
            wire.extend_from_slice(&e.finish().expect("finish"));
            assert_eq!(decode(coding, &wire).len(), bytes, "{coding:?} round trip");
            out = wire.len();
        }
        let alone: usize = events
            .iter()
            .map(|ev| {
                let mut e = StreamEncoder::new(coding).expect("encoder");
                e.encode(ev).expect("encode").len() + e.finish().expect("finish").len()
            })
            .sum();
        println!(
            "{:<6} {:>10} {:>6.2}x {:>10.0} {:>12.1}   {:>13.2}x",
            coding.name(),
            out,
            bytes as f64 / out as f64,
            best.as_nanos() as f64 / events.len() as f64,
            bytes as f64 / best.as_secs_f64() / 1e6,
            bytes as f64 / alone as f64,
        );
    }
}

fn decode(coding: Coding, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ok = match coding {
        Coding::Gzip => flate2::read::GzDecoder::new(wire).read_to_end(&mut out),
        Coding::Br => brotli::Decompressor::new(wire, 4096).read_to_end(&mut out),
        Coding::Zstd => {
            zstd::stream::read::Decoder::new(wire).and_then(|mut d| d.read_to_end(&mut out))
        }
    };
    ok.expect("decodes");
    out
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn memory(streams: usize) {
    println!("\nmemory per compressed stream ({streams} streams, each after 50 events):");
    let exe = std::env::current_exe().expect("own path");
    for coding in Coding::ALL {
        let out = Command::new(&exe)
            .args(["--memory-child", coding.name(), &streams.to_string()])
            .output()
            .expect("child runs");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn memory_child(coding: Coding, streams: usize) {
    let events = feed(50, 11);
    let before = rss_kib();
    let mut held = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut e = StreamEncoder::new(coding).expect("encoder");
        for ev in &events {
            black_box(e.encode(ev).expect("encode"));
        }
        held.push(e);
    }
    let after = rss_kib();
    println!(
        "{:<6} {:>8} KiB resident for {streams} streams: {:>6.1} KiB per stream",
        coding.name(),
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / streams as f64
    );
    drop(held);
}

fn fanout(events: &[Vec<u8>]) {
    println!("\nshared stream, {SUBSCRIBERS} subscribers; CPU per delivered event:");
    let (mut tx, rx) = UnixStream::pair().expect("socket pair");
    let drain = std::thread::spawn(move || {
        let mut rx = rx;
        let mut buf = vec![0u8; 1 << 16];
        while matches!(rx.read(&mut buf), Ok(n) if n > 0) {}
    });
    let delivered = (events.len() * SUBSCRIBERS) as f64;
    // The client write every delivery costs anyway, uncompressed.
    let start = Instant::now();
    for ev in events {
        for _ in 0..SUBSCRIBERS {
            tx.write_all(ev).expect("write");
        }
    }
    let write_ns = start.elapsed().as_nanos() as f64 / delivered;
    println!("identity: client write {write_ns:.0} ns");
    for coding in Coding::ALL {
        let mut each: Vec<StreamEncoder> = (0..SUBSCRIBERS)
            .map(|_| StreamEncoder::new(coding).expect("encoder"))
            .collect();
        let mut out = 0;
        let start = Instant::now();
        for ev in events {
            for e in &mut each {
                out += e.encode(ev).expect("encode").len();
            }
        }
        let per_sub = start.elapsed().as_nanos() as f64 / delivered;
        let mut one = StreamEncoder::new(coding).expect("encoder");
        let start = Instant::now();
        for ev in events {
            out += one.encode(ev).expect("encode").len();
        }
        let shared = start.elapsed().as_nanos() as f64 / delivered;
        assert!(out > 0);
        println!(
            "{:<6}: encoder per subscriber {per_sub:.0} ns, one shared encoder {shared:.0} ns (+ the client write)",
            coding.name()
        );
    }
    drop(tx);
    let _ = drain.join();
}

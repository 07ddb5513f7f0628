//! `ssegate bench`: a load generator for event-stream endpoints, and
//! `ssegate bench upstream`, the origin to run it against.
//!
//! ```sh
//! ssegate bench upstream --listen 127.0.0.1:0 --rate 10 --payload 100
//! ssegate bench --url http://127.0.0.1:PORT/ --streams 20000 --ramp 5s --duration 30s
//! ssegate bench --url https://host/events --http2 --connections 4 --streams 1000 --duration 1m --json
//! ```
//!
//! The client parses every byte with the proxy's own framer ([`crate::sse`]).
//! One-way latency comes from the events themselves: data containing
//! `"ts_us":<unix time in microseconds at send>` gives a sample of receive
//! wall-clock time minus `ts_us`, which the bench upstream writes into every
//! event. Gaps and duplicates are counted among numeric ids.
//!
//! | module | owns |
//! |---|---|
//! | `args` | the flags and their help, embedded by `crate::cli` as `ssegate bench` |
//! | `plan` | flags → validated [`plan::Plan`]: URL, method, body, headers |
//! | `client` | the run: ramp, deadline, progress line, settling each stream |
//! | `client_h1` | one stream on its own HTTP/1.1 connection (TLS for https) |
//! | `client_h2` | streams multiplexed on HTTP/2 connections (h2c or TLS + ALPN) |
//! | `http1` | HTTP/1.1 heads (parsed by httparse), body framing over [`crate::chunked`] |
//! | `stats` | per-stream meter, sharded counters, HDR histograms, percentiles |
//! | `report` | the table, the progress line and the `--json` object |
//! | `timeline` | the run second by second: open streams, latency percentiles |
//! | `chart` | `--chart`: the timeline and the latency histogram in a PNG |
//! | `tls` | rustls client configs, `--insecure` |
//! | `sys` | open-files limit, CPU seconds, peak RSS |
//! | `upstream` | the benchmark origin |

mod args;
pub mod chart;
mod client;
mod client_h1;
mod client_h2;
pub mod http1;
pub mod plan;
mod report;
pub mod stats;
mod sys;
mod timeline;
mod tls;
pub mod upstream;

use std::process::ExitCode;

pub use args::{BenchArgs, BenchClientArgs, BenchCommand, BenchUpstreamArgs};

/// Exit code for unusable flags (EX_USAGE), as for configuration errors.
const EXIT_USAGE: u8 = 64;

/// Runs `ssegate bench` or `ssegate bench upstream`.
pub fn main(args: BenchArgs) -> ExitCode {
    match args.command {
        Some(BenchCommand::Upstream(upstream)) => upstream::main(upstream),
        None => client::main(args.client),
    }
}

//! The command line: `ssegate run`, `ssegate check`, `ssegate demo`,
//! `ssegate bench` and `ssegate bench upstream`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// ssegate: a reverse proxy for Server-Sent Events.
///
/// Event streams (`text/event-stream`) pass through unbuffered, get
/// heartbeats at event boundaries when the upstream is idle, long idle
/// timeouts, and HTTP/2 to the client; everything else is proxied as usual.
#[derive(Debug, Parser)]
#[command(name = "ssegate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy from a configuration file.
    ///
    /// Signals: SIGTERM drains (streams end at an event boundary after a
    /// `retry:` hint, within `server.grace_period`), SIGINT stops at once,
    /// SIGQUIT hands the listening sockets to a new process started with
    /// `--upgrade`, then drains.
    Run(RunArgs),
    /// Validate a configuration file, like `nginx -t`.
    ///
    /// Prints a summary and exits 0, or prints every error (file, line,
    /// column, key, reason) and exits 64.
    Check(ConfigArg),
    /// Run a demo SSE upstream and the proxy in front of it, in one process.
    ///
    /// No configuration file needed: an embedded one routes everything on
    /// `--listen` to the demo upstream on `--upstream-listen`.
    Demo(DemoArgs),
    /// Load-test an event-stream endpoint; `bench upstream` runs the benchmark origin.
    ///
    /// Opens --streams event streams to --url (HTTP/1.1: one connection
    /// each; --http2: multiplexed over --connections), reads them for
    /// --duration, parses every byte with ssegate's own SSE framer and
    /// reports: streams opened and failed, errors by kind, connect time and
    /// time to first event, events and bytes per second, comments
    /// (heartbeats), the longest silence on any stream, gaps and duplicates
    /// among numeric ids, one-way latency, and the bench's own CPU time.
    ///
    /// Error kinds: connect (TCP), tls (handshake, certificate, no ALPN h2),
    /// status (not 200 with Content-Type text/event-stream), closed (an open
    /// stream ended, cleanly or not, or was reset before the run ended),
    /// timeout (no response within 10 s, or not open when the run ended),
    /// other (malformed HTTP, protocol errors).
    ///
    /// Latency: an event whose data contains "ts_us":<unix time in
    /// microseconds at send> (within its first 512 bytes) gives one sample,
    /// receive wall-clock time minus ts_us; `ssegate bench upstream` writes
    /// it. Sender and receiver clocks must agree (same machine, or synced).
    ///
    /// Gaps and duplicates: per stream, among events whose id is a decimal
    /// number: id = last+1 is in order, id <= last is a duplicate, id > last+1
    /// adds id-last-1 gaps. An event without an id field repeats the last id,
    /// so it counts as a duplicate.
    ///
    /// Reconnections (--reconnect): every ended connection and every failed
    /// attempt also counts under errors; the report adds reconnections, failed
    /// reconnection attempts, the longest time a stream had no open
    /// connection, and the streams open when the run ended.
    ///
    /// Output: a progress line on stderr each second (overwritten with \r on
    /// a terminal), then a table on stdout, or with --json exactly one JSON
    /// object. Exit code 0, or 1 when no stream opened at all.
    ///
    /// Example, with PORT from the upstream's `listening on` line:
    ///
    ///   ssegate bench upstream --listen 127.0.0.1:0 --rate 10 &
    ///
    ///   ssegate bench --url http://127.0.0.1:PORT/ --streams 1000 --ramp 5s --duration 30s
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Bench(BenchArgs),
}

/// `ssegate bench [upstream]`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub client: BenchClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Run the benchmark SSE origin: one ticker broadcasting to every subscriber.
    ///
    /// Any GET path is an event stream. Each event is
    /// `id: <n>` (one global sequence) and
    /// `data: {"seq":n,"ts_us":<unix µs at send>,"pad":"xxx…"}`, the data
    /// padded to about --payload bytes, sent to all subscribers --rate times
    /// a second (the clock is read once per tick). A subscriber that falls
    /// 4096 events behind has its stream ended (logged).
    ///
    /// Query and headers: `?count=N` ends the stream cleanly after N events;
    /// `?idle=1` sends the response head and then nothing until the client
    /// leaves; `Last-Event-ID: K` replays the kept events after K (the last
    /// 4096) and then goes on live, without gap or duplicate.
    /// POST (any path) reads the request body, then streams 20 token events
    /// (`data: {"token":"tok<i>","i":<i>,"ts_us":…}`) 20 ms apart and ends
    /// (`?count=N` changes the number).
    ///
    /// HTTP/1.1 (keep-alive, chunked) and h2c (prior knowledge) on the same
    /// port. Prints `listening on ADDR` on stdout once bound.
    Upstream(BenchUpstreamArgs),
}

#[derive(Debug, Args)]
pub struct BenchClientArgs {
    /// The event-stream URL, http:// or https:// (TLS; HTTP/1.1 unless --http2).
    #[arg(long, value_name = "URL", required = true)]
    pub url: Option<String>,
    /// Number of concurrent event streams to open.
    #[arg(long, value_name = "N", required = true)]
    pub streams: Option<u64>,
    /// Use HTTP/2: h2c (prior knowledge) for http://, TLS with ALPN h2 for https://.
    #[arg(long)]
    pub http2: bool,
    /// With --http2: spread the streams over this many connections (stream i
    /// goes on connection i mod K).
    #[arg(long, value_name = "K", default_value_t = 1, requires = "http2")]
    pub connections: u64,
    /// Do not verify the server's TLS certificate (like curl -k).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Spread the stream openings evenly over this time (part of --duration).
    /// Durations: 500ms, 5s, 2m, 1h, 1m30s.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = crate::bench::parse_duration)]
    pub ramp: Duration,
    /// How long to measure, from the first opening; then every stream is
    /// closed and the report printed. The run ends earlier if every stream
    /// has ended or failed.
    #[arg(long, value_name = "DURATION", required = true, value_parser = crate::bench::parse_duration)]
    pub duration: Option<Duration>,
    /// Request method (default GET, or POST with -d).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// Request body, sent with Content-Length; @FILE reads it from FILE.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,
    /// Extra request header, repeatable. `Accept: text/event-stream` is always
    /// sent unless you give an Accept; a Host header replaces the URL's.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Reconnect like a browser's EventSource (HTTP/1.1 only): when an open
    /// stream ends before the run does (cleanly, by a reset or an error),
    /// wait the last `retry:` the stream sent (1 s if none), then request
    /// the same URL again with `Last-Event-ID: <last id received>`. Gaps and
    /// duplicates are counted across the reconnections of each stream. A
    /// failed reconnection attempt (refused, not a 200 event stream, no
    /// response in 10 s) is retried after the same wait until the run ends;
    /// a stream whose very first opening fails is not retried.
    #[arg(long)]
    pub reconnect: bool,
}

#[derive(Debug, Args)]
pub struct BenchUpstreamArgs {
    /// Address to listen on; port 0 picks a free one (see the `listening on` line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Events per second sent to every subscriber; fractions allowed (0.5).
    #[arg(long, value_name = "R", default_value_t = 10.0)]
    pub rate: f64,
    /// Size in bytes of each event's data (the JSON, padded with x; at least
    /// about 50 bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub payload: usize,
    /// The id of the first event. A restarted origin given the last id its
    /// predecessor sent plus one continues the same sequence, so clients
    /// resuming with Last-Event-ID see no gap.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub first_id: u64,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML). Relative paths inside it resolve against its folder.
    #[arg(short = 'c', long = "config", default_value = "conf/ssegate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Fork into the background; the pid goes to `server.pid_file`.
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Take over the listening sockets of a running ssegate through
    /// `server.upgrade_sock`; then send SIGQUIT to the old process.
    #[arg(short = 'u', long)]
    pub upgrade: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the proxy listens (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the demo upstream listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub upstream_listen: String,
    /// Milliseconds between events on `/ticks`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub tick_ms: u64,
}

//! The command line of `ssegate bench` and `ssegate bench upstream`: the
//! flags, their help, and the parsing clap does (durations in the
//! configuration file's grammar, [`crate::config::parse_duration`]). The
//! top-level command line (`crate::cli`) embeds [`BenchArgs`] as the
//! `bench` subcommand; checks that need more than one flag are
//! [`super::plan`]'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::parse_duration;

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
/// object. With --chart FILE.png, also a picture of the same run. Exit
/// code 0, or 1 when no stream opened at all or the chart could not be
/// written.
///
/// Example, with PORT from the upstream's `listening on` line:
///
///   ssegate bench upstream --listen 127.0.0.1:0 --rate 10 &
///
///   ssegate bench --url http://127.0.0.1:PORT/ --streams 1000 --ramp 5s --duration 30s
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
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
    /// Any GET path (but `/_stats`, below) is an event stream. Each event is
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
    /// `GET /_stats` is not a stream: a JSON object of what was served so
    /// far, for benchmarks that count a proxy's upstream connections:
    /// `connections` (those that carried an event stream) and `streams`
    /// (event-stream responses), each with `accepted` (in total), `open`
    /// (now) and `open_max` (most open at once); `http1_streams`,
    /// `http2_streams`, `events_published`, `lagged` (streams ended for
    /// falling behind) and `uptime_s`. `?reset_max=1` restarts both
    /// `open_max` from what is open, after answering.
    ///
    /// HTTP/1.1 (keep-alive, chunked) and h2c (prior knowledge) on the same
    /// port. Prints `listening on ADDR` on stdout once bound.
    Upstream(BenchUpstreamArgs),
}

// No doc comment on the flattened structs: it would replace the help above.
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
    /// Durations as in the configuration file: 500ms, 5s, 2m, 1h, 1d, 1m30s.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// How long to measure, from the first opening; then every stream is
    /// closed and the report printed. The run ends earlier if every stream
    /// has ended or failed.
    #[arg(long, value_name = "DURATION", required = true, value_parser = parse_duration)]
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
    /// Reconnect like a browser's EventSource: when an open stream ends
    /// before the run does (cleanly, by a reset or an error),
    /// wait the last `retry:` the stream sent (1 s if none), then request
    /// the same URL again with `Last-Event-ID: <last id received>`. Gaps and
    /// duplicates are counted across the reconnections of each stream. A
    /// failed reconnection attempt (refused, not a 200 event stream, no
    /// response in 10 s) is retried after the same wait until the run ends;
    /// a stream whose very first opening fails is not retried. With
    /// --http2 the stream is opened again on its connection, which is
    /// opened again if it is gone.
    #[arg(long)]
    pub reconnect: bool,
    /// Also draw the run into this PNG (1600 x 1000): latency p50, p99 and
    /// p99.9 per second, the latency histogram of the whole run, and the
    /// open streams over time. Its folder must exist. Text needs a
    /// TrueType font: $SSEGATE_CHART_FONT, else DejaVu Sans
    /// (fonts-dejavu-core); without one the chart has no text.
    #[arg(long, value_name = "FILE.png")]
    pub chart: Option<PathBuf>,
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

#[cfg(test)]
impl BenchArgs {
    /// Parses `args` (starting with the subcommand name, `bench`) as the
    /// `ssegate bench` subcommand would, for tests.
    pub(crate) fn try_parse_from(args: &[&str]) -> Result<BenchArgs, String> {
        use clap::FromArgMatches;
        let command = BenchArgs::augment_args(clap::Command::new("bench"));
        let matches = command
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        BenchArgs::from_arg_matches(&matches).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(extra: &[&str]) -> Result<BenchClientArgs, String> {
        let mut argv = vec!["bench", "--url", "http://h/", "--streams", "1"];
        argv.extend_from_slice(extra);
        BenchArgs::try_parse_from(&argv).map(|a| a.client)
    }

    fn duration(text: &str) -> Result<Duration, String> {
        client(&["--duration", text]).map(|a| a.duration.unwrap_or_default())
    }

    #[test]
    fn durations_use_the_configuration_grammar() {
        for (text, ms) in [
            ("500ms", 500),
            ("5s", 5_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1s500ms", 1_500),
            ("0s", 0),
        ] {
            assert_eq!(duration(text), Ok(Duration::from_millis(ms)), "{text:?}");
        }
        let args = client(&["--duration", "1m30s"]).unwrap();
        assert_eq!(args.ramp, Duration::ZERO, "--ramp defaults to 0s");
        let args = client(&["--duration", "1d", "--ramp", "1h500ms"]).unwrap();
        assert_eq!(args.duration, Some(Duration::from_secs(86_400)));
        assert_eq!(args.ramp, Duration::from_millis(3_600_500));
        assert_eq!(
            client(&["--duration", "0s"]).unwrap().duration,
            Some(Duration::ZERO),
            "zero parses; the plan refuses it"
        );
        // A bare number has no unit, zero included, as in the file.
        for bad in [
            "0", "", "5", "s", "5x", "1.5s", "-1s", "1m1m", "30s1m", "5 s", "ms5",
        ] {
            let err = duration(bad).unwrap_err();
            assert!(err.contains("--duration"), "{bad:?}: {err}");
        }
        let err = duration("99999999999999999999h").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = client(&["--duration", "1s", "--ramp", "0"]).unwrap_err();
        assert!(err.contains("missing unit after 0"), "{err}");
    }

    #[test]
    fn upstream_is_a_subcommand_without_the_client_flags() {
        let args = BenchArgs::try_parse_from(&["bench", "upstream", "--rate", "0.5"]).unwrap();
        match args.command {
            Some(BenchCommand::Upstream(up)) => assert_eq!(up.rate, 0.5),
            None => panic!("not the upstream"),
        }
        assert!(BenchArgs::try_parse_from(&["bench", "upstream", "--streams", "1"]).is_err());
        assert!(
            BenchArgs::try_parse_from(&["bench"]).is_err(),
            "--url is required"
        );
    }
}

//! The command line: `ssegate run`, `ssegate check`, `ssegate reload`,
//! `ssegate demo`, and `ssegate bench`, whose flags and help the bench owns
//! ([`crate::bench::BenchArgs`]).

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
    /// Apply an edited configuration file without refusing a connection,
    /// like `nginx -s reload`.
    ///
    /// 1. Validates FILE; if it is invalid, prints every error (file, line,
    ///    column, key, reason), exits 64 and changes nothing.
    /// 2. Starts `ssegate run -c FILE --upgrade --daemon`, which waits on
    ///    `server.upgrade_sock` for the listening sockets.
    /// 3. Sends SIGQUIT to the running process, whose pid is in
    ///    `server.pid_file`: it hands its sockets over and drains its
    ///    streams (clients reconnect with Last-Event-ID).
    /// 4. Waits until the new process has written its pid there and every
    ///    listener accepts, then prints `reloaded: pid OLD -> NEW (FILE)`.
    ///
    /// Any other failure exits 1 with the reason; a failure before step 3
    /// leaves the running process untouched (a new process that started
    /// is stopped). The new process logs where reload's stderr goes, unless
    /// `server.error_log` is set.
    Reload(ReloadArgs),
    /// Run a demo SSE upstream and the proxy in front of it, in one process.
    ///
    /// No configuration file needed: an embedded one routes everything on
    /// `--listen` to the demo upstream on `--upstream-listen`.
    Demo(DemoArgs),
    // No doc comment here: it would replace the help that `bench::args`
    // writes beside the bench's flags.
    Bench(crate::bench::BenchArgs),
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
pub struct ReloadArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Give up when the new process does not serve within this time (steps
    /// 2 to 4). Durations as in the configuration file: 500ms, 30s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the proxy listens (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the proxy listens with TLS (ALPN h2 and http/1.1), with the
    /// repository's self-signed certificate for localhost and 127.0.0.1;
    /// "off" for none.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub tls_listen: String,
    /// Where the demo upstream listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub upstream_listen: String,
    /// Milliseconds between events on `/ticks`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub tick_ms: u64,
}

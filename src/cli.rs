//! The command line: `ssegate run`, `ssegate check`, `ssegate demo`, and
//! `ssegate bench`, whose flags and help the bench owns ([`crate::bench::BenchArgs`]).

use std::path::PathBuf;

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

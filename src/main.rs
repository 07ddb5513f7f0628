//! The `ssegate` binary: parse the command line, load the configuration,
//! hand over to pingora. Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ssegate::cli::{Cli, Command, DemoArgs};
use ssegate::{bench, config, demo, pid_file, reload, server};

/// Exit code for an unusable configuration (EX_USAGE), as linkerd and others use.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::main(args),
        Command::Reload(args) => reload::main(args),
        Command::Check(args) => match config::load(&args.config) {
            Ok(cfg) => {
                // A closed stdout (`ssegate check | head -1`) is not an error of the config.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}: OK", args.config.display())
                    .and_then(|()| writeln!(out, "{}", config::summary(&cfg)));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", args.config.display(), errors.0.len());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run(args) => {
            let cfg = match config::load(&args.config.config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let opts = server::ProcessOptions {
                daemon: args.daemon,
                upgrade: args.upgrade,
            };
            let pid_path = cfg.server.pid_file.clone();
            match server::build(cfg, opts) {
                Ok(s) => {
                    // A daemon's pid file is pingora's; in the foreground
                    // we write it, once the sockets are ours (with --upgrade,
                    // build waited for them), so `ssegate reload` finds us.
                    if !args.daemon {
                        if let Err(e) = pid_file::write(&pid_path, std::process::id()) {
                            log::warn!("cannot write {} (server.pid_file): {e}; `ssegate reload` will not find this process", pid_path.display());
                        }
                    }
                    s.run_forever()
                }
                Err(e) => {
                    eprintln!("ssegate: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Demo(args) => demo(args),
    }
}

/// `ssegate demo`: the demo upstream and the proxy in front of it, in one
/// process, on the embedded configuration.
fn demo(args: DemoArgs) -> ExitCode {
    // The TLS listener's certificate goes to files, as a config names it.
    let tls = match args.tls_listen.as_str() {
        "off" => None,
        address => match demo_cert_files() {
            Ok((cert, key)) => Some((address.to_string(), cert, key)),
            Err(e) => {
                eprintln!("ssegate: cannot write the demo's certificate: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let text = demo::config_text(
        &args.listen,
        tls.as_ref()
            .map(|(a, c, k)| (a.as_str(), c.as_path(), k.as_path())),
        &args.upstream_listen,
    );
    let cfg = match config::parse(&text, "<demo>", std::path::Path::new(".")) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let upstream = demo::DemoUpstream::new(Duration::from_millis(args.tick_ms));
    let upstream_listen = args.upstream_listen.clone();
    let add_upstream = move |s: &mut pingora_core::server::Server| {
        vec![server::add_service(
            s,
            "demo upstream",
            &upstream_listen,
            upstream,
        )]
    };
    let opts = server::ProcessOptions::default();
    let s = match server::build_after(cfg, opts, add_upstream) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ssegate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let base = format!("http://{}", args.listen);
    println!(
        "ssegate demo: proxy on {base}, demo upstream on http://{}",
        args.upstream_listen
    );
    println!("  open in a browser: {base}/");
    if let Some((address, _, _)) = &tls {
        println!(
            "  over HTTP/2:       https://{address}/   (self-signed certificate for localhost: accept the browser's warning; curl -k)"
        );
    }
    println!("  ticking stream:  curl -N {base}/ticks");
    println!("  idle stream:     curl -N {base}/idle        (a heartbeat every 5 s)");
    println!("  resume:          curl -N -H 'Last-Event-ID: 41' {base}/ticks");
    println!("  LLM-style POST:  curl -N -X POST -H 'content-type: application/json' -d '{{\"prompt\":\"hi\"}}' {base}/chat");
    println!("  HTTP/2 (h2c):    curl -N --http2-prior-knowledge {base}/ticks");
    println!("Ctrl-C to stop.");
    s.run_forever()
}

/// Writes the demo's certificate and key (`demo::DEMO_CERT`) into a folder
/// of this process under the temporary directory.
fn demo_cert_files() -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("ssegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, demo::DEMO_CERT)?;
    std::fs::write(&key, demo::DEMO_KEY)?;
    Ok((cert, key))
}

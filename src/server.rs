//! Turns a validated `Config` into a running pingora `Server`: one
//! listening service per `[[listener]]`, all sharing one router, one set of
//! upstream pools and one metrics registry, plus the admin listener when
//! `[admin]` is configured.

use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::background::GenBackgroundService;
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceHandle;

use crate::admin::AdminApp;
use crate::config::{Config, Listener};
use crate::metrics::Metrics;
use crate::proxy::connections::Limited;
use crate::proxy::{ProxyApp, Shared};
pub use crate::start_error::StartError;
use crate::status::{Sampler, Status};
use crate::upstream::health::ActiveChecks;
use crate::upstream::tcp_keepalive;

/// pingora's process options that stay reachable from our command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessOptions {
    /// Fork into the background (pingora `--daemon`).
    pub daemon: bool,
    /// Take the listening sockets over from a running instance (pingora `--upgrade`).
    pub upgrade: bool,
}

/// The pingora server configuration derived from `[server]`.
fn server_conf(config: &Config, opts: ProcessOptions) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        daemon: opts.daemon,
        threads: s.threads,
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        error_log: s.error_log.as_ref().map(|p| p.display().to_string()),
        // pingora counts whole seconds; round up so a grace of 1.5 s is not cut to 1 s.
        grace_period_seconds: Some(ceil_secs(s.grace_period)),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(s.shutdown_timeout)),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 1024;
    conf.work_stealing = s.work_stealing;
    // Every pingora timeout of a second or more (all of ssegate's) on
    // tokio's timer wheel, not pingora's fast-timeout clock: that clock is
    // a thread of its own that wakes every 10 ms on the proxy's core for
    // the life of the process, timer or no timer. Measured with
    // benches/latency_tail.sh (100 streams x 10 events/s, 3 alternating
    // rounds): context switches per event 0.109-0.115 -> 0.011-0.017,
    // process CPU per event 19.1-21.0 -> 16.7-18.5 us.
    conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    conf
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Checks that rustls accepts a listener's certificate and key, so that a bad
/// pair is a clear startup error (pingora's own loader would panic).
fn check_tls(listener: &Listener) -> Result<(), StartError> {
    let Some(tls) = &listener.tls else {
        return Ok(());
    };
    let err = |reason: String| StartError::Tls {
        address: listener.address.to_string(),
        reason,
    };
    let cert = tls.cert.display().to_string();
    let key = tls.key.display().to_string();
    let loaded =
        pingora_rustls::load_certs_and_key_files(&cert, &key).map_err(|e| err(e.to_string()))?;
    let Some((certs, key)) = loaded else {
        return Err(err(format!("no certificate in {cert} or no key in {key}")));
    };
    pingora_rustls::install_default_crypto_provider();
    pingora_rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn listener_config(listener: &Listener) -> Result<ListenerConfig, StartError> {
    let address = listener.address.to_string();
    let mut socket = TcpSocketOptions::default();
    socket.tcp_keepalive = Some(tcp_keepalive());
    // No L4 buffers. Reading: HTTP parsing keeps its own, and an idle
    // stream should not hold a 64 KiB buffer it never uses. Writing: a
    // stream's writes are whole (one vectored write per chunk, then a
    // flush), so pingora's 1,460-byte write buffer would only be copied
    // through; it was a third of an idle shared subscriber's memory.
    let mut config = ListenerConfig::tcp(address.clone())
        .tcp_socket_options(socket)
        .l4_buffer(L4BufferSettings::unbuffered());
    if let Some(tls) = &listener.tls {
        check_tls(listener)?;
        let mut settings = TlsSettings::intermediate(
            &tls.cert.display().to_string(),
            &tls.key.display().to_string(),
        )
        .map_err(|e| StartError::Tls {
            address: address.clone(),
            reason: e.to_string(),
        })?;
        settings.enable_h2();
        config = config.tls(settings);
    }
    Ok(config)
}

/// Builds (but does not run) the proxy server. `Server::run_forever` starts it.
pub fn build(config: Config, opts: ProcessOptions) -> Result<Server, StartError> {
    build_after(config, opts, |_| Vec::new())
}

/// Like `build`, but `first` adds services (the demo upstream) that the proxy
/// listeners wait for: they start accepting only once those are listening.
pub fn build_after(
    config: Config,
    opts: ProcessOptions,
    first: impl FnOnce(&mut Server) -> Vec<ServiceHandle>,
) -> Result<Server, StartError> {
    let conf = server_conf(&config, opts);
    let listeners = config.listeners.clone();
    let admin = config.admin.clone();
    let read_timeout = config.timeouts.read;
    let metrics = Arc::new(Metrics::new()?);
    // The status page's first sample is taken when it is made: after the
    // pools, whose per-server metrics it shows.
    let status_config = admin.is_some().then(|| config.clone());
    let shared = Shared::new(config, metrics.clone())?;
    let status = status_config.map(|c| Status::new(&c, metrics.clone()));
    // Everything that can fail comes before bootstrap: with --upgrade,
    // bootstrap takes the listening sockets from the running process, which
    // then drains and exits, so a failure after it would leave nothing
    // serving (`ssegate reload` counts on this).
    let listener_configs = listeners
        .iter()
        .map(listener_config)
        .collect::<Result<Vec<_>, _>>()?;
    let pingora_opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(pingora_opt, conf);
    server.bootstrap();
    let prerequisites = first(&mut server);
    for (listener, listener_config) in listeners.iter().zip(listener_configs) {
        let app = ProxyApp::new(
            shared.clone(),
            listener.tls.is_some(),
            listener.h2_max_streams,
        );
        // A plain listener's first bytes are waited for under timeouts.read.
        let first_bytes = listener.tls.is_none().then_some(read_timeout);
        let app = Limited::new(app, shared.connection_limit(), first_bytes, read_timeout);
        let mut service = Service::new(format!("ssegate {}", listener.address), app);
        service.add_listener(listener_config);
        server.add_service(service).add_dependencies(&prerequisites);
    }
    // Active health checks: a pingora background service, not tokio tasks
    // spawned where the pools are built, since no runtime exists yet (see
    // `ActiveChecks`). They wait for the demo upstream like the listeners.
    if let Some(checks) = ActiveChecks::new(shared.pools().iter().map(|p| &p.health)) {
        let service = GenBackgroundService::new("ssegate health checks".into(), Arc::new(checks));
        server.add_service(service).add_dependencies(&prerequisites);
    }
    if let (Some(admin), Some(status)) = (admin, status) {
        // Binds exactly the configured address; plain HTTP/1.1, no TLS.
        let address = admin.address.to_string();
        add_service(
            &mut server,
            &format!("ssegate admin {address}"),
            &address,
            AdminApp::new(metrics, status.clone()),
        );
        // The status page's sampler runs only where the page can be seen.
        server.add_service(background_service("ssegate status", Sampler(status)));
    }
    Ok(server)
}

/// Adds a plain TCP listening service (the demo upstream) to `server`.
pub fn add_service<A>(server: &mut Server, name: &str, address: &str, app: A) -> ServiceHandle
where
    A: pingora_core::apps::ServerApp + Send + Sync + 'static,
{
    let mut service = Service::new(name.to_string(), app);
    service.add_tcp(address);
    server.add_service(service)
}

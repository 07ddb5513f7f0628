//! The request loop: one HTTP request from accept to finish.
//!
//! pingora-core's `HttpServerApp` hands us each request's `ServerSession`
//! (HTTP/1.1, h2c or TLS h2 alike). `ProxyApp::handle` decides what the
//! request is and hands it from phase to phase, each in a module of its own:
//!
//! ```text
//!  read request ─► CONNECT? ─► 405
//!        │
//!  route (router.rs: one RouteEntry, route.rs) ──(none)──► 404
//!        │
//!  prepare.rs: limit pre-check (shed), target, forwarding headers
//!        │
//!  WebSocket handshake? ─► tunnel/: a fresh upstream connection, the
//!        │                  handshake checked, then a task that copies
//!        │                  both ways (tunnel/splice.rs) ──► 403/400/502
//!        │
//!  share = true? ─► shared_stream.rs: join the key's shared stream (share/),
//!        │          or open it; a subscriber is an event stream fed from
//!        │          the stream's ring ──► event_stream.rs below
//!        │  (not shared: POST, credentials, an answer that cannot be shared)
//!        │
//!  exchange.rs: connect + retry, request out, response header in ──► 502/504
//!        │
//!  ResponseKind ──event stream──► event_stream.rs: admission (limits.rs),
//!        │                         header out, then a task of its own that
//!        │                         runs the relay (stream.rs) from a Source
//!        │                         (one upstream, or resume.rs's resuming
//!        │                         one) to a Sink (the client: downstream.rs,
//!        │                         coded by compressed.rs when negotiated)
//!        ordinary
//!        ▼
//!  ordinary.rs: body relayed, read timeout per read
//!        │
//!  finish: upstream back to pool only if fully read; client kept alive if clean
//! ```
//!
//! A phase that gives up returns a [`reply::Reply`] (an error status, or the
//! shed answer), which `handle` sends.

pub mod compressed;
pub mod connections;
pub mod downstream;
pub mod event_stream;
pub mod exchange;
pub mod headers;
pub mod limits;
pub mod ordinary;
pub mod prepare;
pub mod reply;
pub mod resume;
pub mod route;
pub mod share;
pub mod shared_stream;
pub mod stream;
pub mod tunnel;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::start_error::StartError;
use crate::upstream::Pools;
use event_stream::StreamJob;
use exchange::{Exchanged, ResponseKind};
use limits::Limits;
use prepare::Prepared;
use reply::{respond, respond_or_abort, Outcome};
use route::RouteEntry;

/// What every listener's app shares: routing, pools, metrics and the settings derived from config.
pub struct Shared {
    config: Config,
    router: Router<Arc<RouteEntry>>,
    pools: Pools,
    metrics: Arc<Metrics>,
    limits: Limits,
    connections: Arc<connections::ConnectionLimit>,
}

impl Shared {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, StartError> {
        let upstream_metrics = config
            .upstreams
            .iter()
            .map(|u| metrics.upstream(&u.name))
            .collect::<prometheus::Result<Vec<_>>>()?;
        let pools = Pools::new(&config, upstream_metrics)?;
        let cluster = match &config.cluster {
            Some(settings) => {
                let cluster_metrics = crate::cluster::ClusterMetrics::register(metrics.registry())?;
                Some(Arc::new(crate::cluster::Cluster::new(
                    settings,
                    cluster_metrics,
                )?))
            }
            None => None,
        };
        let router = route::routes(&config, &pools, &metrics, cluster.as_ref())?;
        Ok(Arc::new(Shared {
            limits: Limits::new(&config),
            connections: Arc::new(connections::ConnectionLimit::new(
                config.limits.max_connections,
                metrics.connections().clone(),
            )),
            config,
            router,
            pools,
            metrics,
        }))
    }

    /// The upstream pools (for their health checks, run by `server`).
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The connection limit every listener's connections count against.
    pub fn connection_limit(&self) -> Arc<connections::ConnectionLimit> {
        self.connections.clone()
    }

    /// The route serving this request, if any.
    fn route_for(&self, session: &ServerSession) -> Option<&Arc<RouteEntry>> {
        let req = session.req_header();
        let host = headers::request_host(req);
        self.router.find(host.as_deref(), req.uri.path())
    }

    /// Counts the response written on `session`, if one was, under its route.
    fn count_response(&self, session: &ServerSession, route: Option<&RouteEntry>) {
        let Some(head) = session.response_written() else {
            return;
        };
        match route {
            Some(r) => r.metrics.responses().record(head.status),
            None => self.metrics.unrouted().record(head.status),
        }
    }
}

/// The `HttpServerApp` for one listener.
pub struct ProxyApp {
    shared: Arc<Shared>,
    tls: bool,
    h2_max_streams: u32,
    options: HttpServerOptions,
}

impl ProxyApp {
    pub fn new(shared: Arc<Shared>, tls: bool, h2_max_streams: u32) -> Self {
        let mut options = HttpServerOptions::default();
        // pingora only looks for the h2c preface on plain connections.
        options.h2c = true;
        ProxyApp {
            shared,
            tls,
            h2_max_streams,
            options,
        }
    }
}

/// What `handle` leaves to do once it returns.
enum Handled {
    /// The response is complete (or failed); `Outcome` says whether the
    /// client connection survives.
    Done(Outcome),
    /// An event stream whose response header is on the client's socket; its
    /// relay runs as a task of its own (`event_stream::spawn`).
    Stream(Box<StreamJob>),
    /// A WebSocket tunnel whose handshake answer is out; it runs as a task
    /// of its own (`tunnel::spawn`).
    Tunnel(Box<tunnel::TunnelJob>),
}

impl From<Outcome> for Handled {
    fn from(o: Outcome) -> Self {
        Handled::Done(o)
    }
}

#[async_trait]
impl HttpServerApp for ProxyApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let timeouts = &self.shared.config.timeouts;
        // An HTTP/2 request keeps its connection from counting as idle
        // until it is over, its event stream included (connections.rs).
        let activity = match &session {
            ServerSession::H2(_) => {
                connections::h2_request_started(connections::connection_key(session.digest()))
            }
            _ => None,
        };
        match tokio::time::timeout(timeouts.read, session.read_request()).await {
            Ok(Ok(true)) => {}
            // A clean close between keep-alive requests.
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                log::debug!("bad request: {e}");
                if e.etype() != &ErrorType::ConnectionClosed {
                    let _ = respond(&mut session, 400, "bad request\n").await;
                    self.shared.count_response(&session, None);
                }
                return None;
            }
            Err(_) => {
                log::debug!("request header not received within {:?}", timeouts.read);
                return None;
            }
        }
        // pingora reads request headers of up to 1 MiB; ssegate forwards
        // none over 64 KiB (its own limit for upstream responses).
        if headers::request_header_size(session.req_header()) > headers::MAX_REQUEST_HEADER_SIZE {
            log::debug!("request header section over 64 KiB");
            session.set_keepalive(None);
            let _ = respond(&mut session, 431, "request header fields too large\n").await;
            self.shared.count_response(&session, None);
            return None;
        }
        session.set_read_timeout(Some(timeouts.read));
        session.set_write_timeout(Some(timeouts.write));

        let route = self.shared.route_for(&session);
        let handled = self.handle(&mut session, route, shutdown).await;
        self.shared.count_response(&session, route.map(|r| &**r));
        let outcome = match handled {
            Handled::Done(outcome) => outcome,
            Handled::Stream(job) => {
                event_stream::spawn(self, session, job, activity, shutdown);
                return None;
            }
            Handled::Tunnel(job) => {
                tunnel::spawn(session, job, activity, shutdown);
                return None;
            }
        };

        if outcome == Outcome::Clean && !*shutdown.borrow() && session.is_body_done() {
            let settings = HttpPersistentSettings::for_session(&session);
            match session.finish().await {
                Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
                _ => None,
            }
        } else {
            if outcome == Outcome::Abort {
                session.shutdown().await;
            } else {
                session.set_keepalive(None);
                let _ = session.finish().await;
            }
            None
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        let mut builder = H2Options::new();
        builder
            .max_concurrent_streams(self.h2_max_streams)
            // Bounded header lists, as pingora's defaults.
            .max_header_list_size(64 * 1024)
            .max_send_buffer_size(64 * 1024)
            // Request bodies and WebSocket tunnels flow at more than one
            // 64 KiB window per round trip; the connection window bounds
            // what one client may have buffered here, whatever its streams.
            .initial_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024);
        if self.shared.config.websocket_over_h2() {
            builder.enable_connect_protocol();
        }
        Some(builder)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        if self.tls {
            None
        } else {
            Some(&self.options)
        }
    }
}

impl ProxyApp {
    /// Serves further requests on a kept-alive client connection.
    async fn serve_next(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let _ = ServerApp::process_new(self, stream, shutdown).await;
    }

    /// Everything between a parsed request and the end of its response:
    /// decides what the request is and hands it from phase to phase.
    async fn handle(
        &self,
        session: &mut ServerSession,
        route: Option<&Arc<RouteEntry>>,
        shutdown: &ShutdownWatch,
    ) -> Handled {
        let shared = &self.shared;
        // ssegate is never a forward proxy: CONNECT is refused whatever its
        // target, before routing, and an HTTP/1.1 connection that asked for a
        // tunnel is not kept (what follows would be tunnel bytes). An RFC 8441
        // extended CONNECT (with `:protocol`) is a WebSocket: tunnel.rs.
        let req = session.req_header();
        let extended = req.extensions.get::<h2::ext::Protocol>().is_some();
        if req.method == http::Method::CONNECT && !extended {
            if session.as_http1().is_some() {
                session.set_keepalive(None);
            }
            return respond_or_abort(session, 405, "CONNECT is not supported\n")
                .await
                .into();
        }
        let Some(route) = route else {
            return respond_or_abort(session, 404, "no route for this request\n")
                .await
                .into();
        };
        let limits = &shared.config.limits;
        let mut prepared = match prepare::prepare(session, route, &shared.limits, self.tls) {
            Ok(p) => p,
            Err(reply) => return reply.send(session, route, limits).await.into(),
        };
        match tunnel::wanted(session, route) {
            tunnel::Wanted::No => {}
            tunnel::Wanted::WebSocket => {
                return tunnel::serve(self, session, route, prepared).await;
            }
            tunnel::Wanted::Refused(reply) => {
                if session.as_http1().is_some() {
                    session.set_keepalive(None);
                }
                return reply.send(session, route, limits).await.into();
            }
        }
        if let Some(shares) = &route.shares {
            match shared_stream::serve(self, session, route, shares, prepared, shutdown).await {
                Ok(handled) => return handled,
                Err(not_shared) => prepared = not_shared,
            }
        }
        let x = match exchange::exchange(session, &shared.pools, &route.pool, &prepared).await {
            Ok(x) => x,
            Err(reply) => return reply.send(session, route, limits).await.into(),
        };
        self.serve_exchanged(session, route, prepared, x).await
    }

    /// Serves the upstream's answer `x` to `prepared` by its kind.
    async fn serve_exchanged(
        &self,
        session: &mut ServerSession,
        route: &Arc<RouteEntry>,
        prepared: Prepared,
        x: Exchanged,
    ) -> Handled {
        match x.kind {
            ResponseKind::EventStream => {
                event_stream::start(self, session, route, prepared, x).await
            }
            ResponseKind::Ordinary => {
                ordinary::serve(session, &self.shared.pools, x, &prepared.request.method)
                    .await
                    .into()
            }
        }
    }
}

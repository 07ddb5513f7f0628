//! The request loop: one HTTP request from accept to finish.
//!
//! pingora-core's `HttpServerApp` hands us each request's `ServerSession`
//! (HTTP/1.1, h2c or TLS h2 alike); everything after that is here, top to
//! bottom:
//!
//! ```text
//!  read request ─► route ──(none)──► 404
//!                    │
//!  Accept: text/event-stream and a stream limit full? ──► 200 `retry:` (shed)
//!                    │
//!                    ▼
//!  connect (round robin, skip refusing servers) ──(all fail)──► 502
//!                    │
//!  write request header + stream request body
//!                    │
//!  read response header ──(read timeout)──► 504, (error) ──► 502
//!                    │
//!        text/event-stream? ──yes──► admitted by the limits (limits.rs)?
//!                    │                no: upstream dropped, 200 `retry:` or 503
//!                    │                yes: header out, then the stream phase as a
//!                    │                task of its own (`run_stream`): pingora's
//!                    │                session is dropped, the task holds the two
//!                    │                connections (downstream.rs), the framer
//!                    │                and one timer (stream.rs)
//!                    no
//!                    ▼
//!  ordinary pass-through: body chunks relayed, read timeout per read
//!                    │
//!  finish: upstream back to pool only if fully read; client kept alive if clean
//! ```

pub mod connections;
pub mod downstream;
pub mod headers;
pub mod limits;
pub mod resume;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::StreamTally;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_error::{ErrorType, Result};

use crate::config::{Config, Resume, Route};
use crate::metrics::{self, Metrics, RouteMetrics};
use crate::outcome::{StreamEnd, StreamStats};
use crate::router::{self, Router};
use crate::start_error::StartError;
use crate::upstream::{Connected, Pools};
use downstream::{Downstream, H1Client, H2Client};
use headers::Forwarding;
use limits::{Limit, Limits, StreamPermit};
use stream::StreamPolicy;

/// What every listener's app shares: routing, pools, metrics and the settings derived from config.
pub struct Shared {
    config: Config,
    router: Router,
    pools: Pools,
    routes: Vec<RouteRuntime>,
    metrics: Arc<Metrics>,
    limits: Limits,
    connections: Arc<connections::ConnectionLimit>,
}

/// A route's effective stream settings and metric handles, computed once at startup.
struct RouteRuntime {
    policy: StreamPolicy,
    /// Set once a compressed event stream has been logged for this route.
    compressed_logged: AtomicBool,
    metrics: RouteMetrics,
}

impl Shared {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, StartError> {
        let router = Router::new(&config);
        let upstream_metrics = config
            .upstreams
            .iter()
            .map(|u| metrics.upstream(&u.name))
            .collect::<prometheus::Result<Vec<_>>>()?;
        let pools = Pools::new(&config, upstream_metrics)?;
        let s = &config.stream;
        // Leave the last part of the grace period for the process's own exit.
        let drain_limit = config
            .server
            .grace_period
            .saturating_sub(Duration::from_millis(250));
        let route_metrics = config
            .routes
            .iter()
            .map(|r| metrics.route(&metrics::route_label(r)))
            .collect::<prometheus::Result<Vec<_>>>()?;
        let routes = config
            .routes
            .iter()
            .zip(route_metrics)
            .map(|(r, m): (&Route, RouteMetrics)| RouteRuntime {
                policy: StreamPolicy {
                    heartbeat: r.heartbeat.unwrap_or(s.heartbeat),
                    heartbeat_text: Bytes::from(s.heartbeat_text.clone()),
                    idle_timeout: r.idle_timeout.unwrap_or(s.idle_timeout),
                    shutdown_retry: s.shutdown_retry,
                    shutdown_retry_jitter: s.shutdown_retry_jitter,
                    drain_limit,
                    drain_window: s.drain_window,
                },
                compressed_logged: AtomicBool::new(false),
                metrics: m,
            })
            .collect();
        Ok(Arc::new(Shared {
            limits: Limits::new(&config),
            connections: Arc::new(connections::ConnectionLimit::new(
                config.limits.max_connections,
                metrics.connections().clone(),
            )),
            config,
            router,
            pools,
            routes,
            metrics,
        }))
    }

    /// The connection limit every listener's connections count against.
    pub fn connection_limit(&self) -> Arc<connections::ConnectionLimit> {
        self.connections.clone()
    }

    /// The index of the route serving this request, if any.
    fn route_for(&self, session: &ServerSession) -> Option<usize> {
        let req = session.req_header();
        let host = headers::request_host(req);
        self.router.find(host.as_deref(), req.uri.path())
    }

    /// Counts the response written on `session`, if one was, under its route.
    fn count_response(&self, session: &ServerSession, route: Option<usize>) {
        let Some(head) = session.response_written() else {
            return;
        };
        match route.and_then(|i| self.routes.get(i)) {
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

/// How a request ended, which decides whether the client connection can be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The response was complete and the request body fully read.
    Clean,
    /// The connection must be closed (or the h2 stream reset).
    Abort,
}

/// What `handle` leaves to do once it returns.
enum Handled {
    /// The response is complete (or failed); `Outcome` says whether the
    /// client connection survives.
    Done(Outcome),
    /// An event stream whose response header is on the client's socket; its
    /// relay runs as a task of its own (see `ProxyApp::run_stream`).
    Stream(Box<StreamJob>),
}

impl From<Outcome> for Handled {
    fn from(o: Outcome) -> Self {
        Handled::Done(o)
    }
}

/// Everything an event stream needs after its response header went out.
struct StreamJob {
    up: Connected,
    route: usize,
    compressed: bool,
    /// Holds the route's open-streams gauge up until the stream is done.
    tally: StreamTally,
    /// Holds the stream's places under the stream limits until it is done.
    permit: StreamPermit,
    client: Option<std::net::SocketAddr>,
    /// The request as sent upstream, kept only when the stream may be
    /// resumed on another connection (route `resume = "on-error"`, GET).
    resume_request: Option<Box<pingora_http::RequestHeader>>,
    /// The client connection's place under `max_connections` (HTTP/1: the
    /// stream carries the connection; HTTP/2 streams leave it with theirs).
    connection: Option<connections::ConnectionGuard>,
    /// An HTTP/2 stream's mark on its connection's activity.
    activity: Option<connections::ActivityGuard>,
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
        let handled = self.handle(&mut session, route).await;
        self.shared.count_response(&session, route);
        let outcome = match handled {
            Handled::Done(outcome) => outcome,
            Handled::Stream(mut job) => {
                job.connection = connections::take_current();
                job.activity = activity;
                // The stream outlives this call: everything pingora holds for
                // the request (its session, buffers and this future) is freed
                // now, and the stream keeps only the two connections.
                let st = &self.shared.config.stream;
                let client = match session {
                    ServerSession::H1(s) => Downstream::H1(H1Client::new(
                        s.into_inner(),
                        st.client_write_timeout,
                        st.client_buffer,
                    )),
                    other => match H2Client::new(Box::new(other), st.client_write_timeout) {
                        Ok(c) => Downstream::H2(c),
                        Err(mut other) => {
                            other.set_write_timeout(Some(st.client_write_timeout));
                            Downstream::Session(other)
                        }
                    },
                };
                tokio::spawn(self.clone().run_stream(client, job, shutdown.clone()));
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
            .max_send_buffer_size(64 * 1024);
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
    /// The stream phase of one event stream, as its own task. While the
    /// stream lives, the task holds the relay's state and nothing else: the
    /// job stays boxed, and what happens after the relay is a boxed future
    /// of its own.
    async fn run_stream(
        self: Arc<Self>,
        mut client: Downstream,
        mut job: Box<StreamJob>,
        shutdown: ShutdownWatch,
    ) {
        let shared = &self.shared;
        let runtime = &shared.routes[job.route];
        let route = &shared.config.routes[job.route];
        let StreamJob {
            up,
            resume_request,
            compressed,
            ..
        } = &mut *job;
        let resumer = match (resume_request.as_deref(), shared.pools.get(route.upstream)) {
            (Some(request), Some(pool)) => Some(resume::Resumer {
                pools: &shared.pools,
                pool,
                request,
                attempts: route.resume_attempts,
                backoff: route.resume_backoff,
                metrics: runtime.metrics.resume(),
            }),
            _ => None,
        };
        let (policy, probe) = (&runtime.policy, runtime.metrics.relay());
        let rng = stream::LocalRng;
        let (end, st) = match resumer.as_ref() {
            Some(r) => {
                let mut source = resume::Resuming::new(up, r);
                stream::relay(
                    &mut client,
                    &mut source,
                    policy,
                    *compressed,
                    &shutdown,
                    probe,
                    rng,
                )
                .await
            }
            None => {
                let mut source = stream::Direct::new(up);
                stream::relay(
                    &mut client,
                    &mut source,
                    policy,
                    *compressed,
                    &shutdown,
                    probe,
                    rng,
                )
                .await
            }
        };
        Box::pin(self.end_stream(client, job, end, st, shutdown)).await;
    }

    /// Logs a finished stream, releases its upstream, and either closes the
    /// client connection or returns it to the keep-alive loop.
    async fn end_stream(
        self: &Arc<Self>,
        mut client: Downstream,
        mut job: Box<StreamJob>,
        end: StreamEnd,
        st: StreamStats,
        shutdown: ShutdownWatch,
    ) {
        let shared = &self.shared;
        let upstream_done = end == StreamEnd::UpstreamDone && job.up.session.response_done();
        let StreamJob {
            up,
            route,
            tally,
            permit,
            client: addr,
            connection,
            ..
        } = *job;
        let route_cfg = &shared.config.routes[route];
        let pool_name = shared.pools.get(route_cfg.upstream).map_or("", |p| &p.name);
        // Metrics and the access-log line; `streams_open` drops with `tally`.
        let addr = addr.as_ref().map(|a| a as &dyn std::fmt::Display);
        tally.finish(&shared.routes[route].metrics, end, &st, pool_name, addr);
        // Before the connection may carry further requests below.
        drop(permit);
        shared.pools.release(up, upstream_done).await;
        if !end.is_clean() {
            client.abort().await;
            return;
        }
        // A finished HTTP/1 stream leaves a connection that can carry the
        // client's next request: back to the keep-alive loop with it.
        if let Downstream::H1(c) = client {
            if let Some(stream) = c.into_reusable() {
                if !*shutdown.borrow() {
                    connections::holding(connection, self.serve_next(stream, &shutdown)).await;
                }
            }
        }
    }

    /// Turns a would-be event stream away because `limit` is reached, so that
    /// its client backs off: an `EventSource` (`event_source`) gets a complete
    /// 200 event stream holding only `retry:` (a 503 would make it give up
    /// for good), anything else a 503 with `Retry-After`.
    async fn shed(
        &self,
        session: &mut ServerSession,
        route: usize,
        limit: Limit,
        event_source: bool,
    ) -> Outcome {
        let shared = &self.shared;
        let label = shared.routes.get(route).map_or("?", |r| {
            r.metrics.shed(limit);
            r.metrics.label()
        });
        let l = &shared.config.limits;
        let ms = stream::backoff_ms(l.shed_retry, l.shed_retry_jitter);
        match limit {
            Limit::Upstream => log::debug!(
                "route {label}: no upstream for an EventSource; told to retry in {ms} ms"
            ),
            _ => log::debug!(
                "route {label}: {} stream limit reached; stream shed with a {ms} ms backoff",
                limit.label().1
            ),
        }
        let sent = if event_source {
            let body = stream::retry_field(ms);
            match headers::shed_stream_response(body.len()) {
                Ok(resp) => respond_with(session, resp, body).await,
                Err(e) => Err(e),
            }
        } else {
            const BODY: &str = "too many open event streams; retry later\n";
            match headers::shed_unavailable_response(ms.div_ceil(1000), BODY.len()) {
                Ok(resp) => respond_with(session, resp, Bytes::from_static(BODY.as_bytes())).await,
                Err(e) => Err(e),
            }
        };
        outcome_of(sent, session)
    }

    /// Answers a request no upstream server could serve with `status`
    /// (502 or 504), or, for an `EventSource` (`retry_later`: a GET whose
    /// `Accept` lists text/event-stream), with the shed response: the HTML
    /// spec makes EventSource give up for good on any status but 200.
    async fn unserved(
        &self,
        session: &mut ServerSession,
        route: usize,
        retry_later: bool,
        status: u16,
        body: &'static str,
    ) -> Outcome {
        if retry_later {
            self.shed(session, route, Limit::Upstream, true).await
        } else {
            respond_or_abort(session, status, body).await
        }
    }

    /// Serves further requests on a kept-alive client connection.
    async fn serve_next(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let _ = ServerApp::process_new(self, stream, shutdown).await;
    }

    /// Everything between a parsed request and the end of its response.
    /// `route` is the index of the matching route (`Shared::route_for`).
    async fn handle(&self, session: &mut ServerSession, route: Option<usize>) -> Handled {
        let shared = &self.shared;
        // ssegate is never a forward proxy: CONNECT is refused whatever its
        // target, before routing, and an HTTP/1.1 connection that asked for a
        // tunnel is not kept (what follows would be tunnel bytes).
        if session.req_header().method == http::Method::CONNECT {
            if session.as_http1().is_some() {
                session.set_keepalive(None);
            }
            return respond_or_abort(session, 405, "CONNECT is not supported\n")
                .await
                .into();
        }
        let has_body = !session.is_body_empty();
        let Some(route_index) = route else {
            return respond_or_abort(session, 404, "no route for this request\n")
                .await
                .into();
        };
        let route = &shared.config.routes[route_index];
        let Some(pool) = shared.pools.get(route.upstream) else {
            return respond_or_abort(session, 502, "upstream not configured\n")
                .await
                .into();
        };
        // An EventSource over a limit is shed before any upstream is contacted.
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let event_source = headers::accepts_event_stream(session.req_header());
        if event_source {
            if let Err(limit) = shared.limits.check(route_index, peer_ip) {
                return self.shed(session, route_index, limit, true).await.into();
            }
        }
        let req = session.req_header();

        // The request target in origin form; prefix stripping works on bytes so
        // that a non-UTF-8 path passes through as sent.
        let origin_form: Vec<u8> = if req.raw_path().starts_with(b"/") {
            req.raw_path().to_vec()
        } else {
            req.uri
                .path_and_query()
                .map_or(b"/".to_vec(), |pq| pq.as_str().as_bytes().to_vec())
        };
        let target = if route.strip_prefix {
            match std::str::from_utf8(&origin_form) {
                Ok(text) => router::strip_prefix(text, &route.path).into_bytes(),
                Err(_) => {
                    let rest = origin_form
                        .strip_prefix(route.path.as_bytes())
                        .unwrap_or(&origin_form);
                    let mut t = Vec::with_capacity(rest.len() + 1);
                    if !rest.starts_with(b"/") {
                        t.push(b'/');
                    }
                    t.extend_from_slice(rest);
                    t
                }
            }
        } else {
            origin_form
        };
        let chunked_body = has_body && req.headers.get(http::header::CONTENT_LENGTH).is_none();
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let fwd = Forwarding {
            client_ip,
            proto: if self.tls { "https" } else { "http" },
            target: &target,
            chunked_body,
        };
        let upstream_req = match headers::upstream_request(req, &fwd) {
            Ok(r) => r,
            Err(e) => {
                log::info!("cannot forward request: {e}");
                return respond_or_abort(session, 400, "bad request\n").await.into();
            }
        };
        let method = upstream_req.method.clone();
        // See `unserved`: an EventSource is told to retry, not given a 5xx.
        let retry_later = event_source && method == http::Method::GET && !has_body;

        // A pooled connection the upstream has just closed fails before any
        // response byte; such a request is sent once more on a fresh
        // connection, as long as no request body has been consumed.
        let mut retried = false;
        let mut up = loop {
            let mut up = match pool.connect(&shared.pools.connectors).await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("upstream {}: no server reachable: {e}", pool.name);
                    return self
                        .unserved(
                            session,
                            route_index,
                            retry_later,
                            502,
                            "upstream unreachable\n",
                        )
                        .await
                        .into();
                }
            };
            let failure = match exchange(session, &mut up, upstream_req.clone(), has_body).await {
                Ok(()) => break up,
                Err(f) => f,
            };
            let reused = up.reused;
            shared.pools.release(up, false).await;
            match failure {
                Failure::Client => return Outcome::Abort.into(),
                Failure::Timeout => {
                    pool.metrics.timed_out();
                    log::warn!("upstream {}: no response header in time", pool.name);
                    return self
                        .unserved(
                            session,
                            route_index,
                            retry_later,
                            504,
                            "upstream timed out\n",
                        )
                        .await
                        .into();
                }
                Failure::Upstream(e) if reused && !has_body && !retried => {
                    log::debug!(
                        "upstream {}: reused connection failed ({e}); retrying",
                        pool.name
                    );
                    retried = true;
                }
                Failure::Upstream(e) => {
                    log::warn!("upstream {}: request failed: {e}", pool.name);
                    return self
                        .unserved(
                            session,
                            route_index,
                            retry_later,
                            502,
                            "bad upstream response\n",
                        )
                        .await
                        .into();
                }
            }
        };
        let Some(upstream_resp) = up.session.response_header().cloned() else {
            shared.pools.release(up, false).await;
            return respond_or_abort(session, 502, "bad upstream response\n")
                .await
                .into();
        };
        let client_version = session.req_header().version;

        if headers::is_event_stream(&upstream_resp) {
            // The authoritative count: slots are taken here, so a stream over
            // a limit never reaches the stream phase, whatever the check above saw.
            let permit = match shared.limits.admit(route_index, peer_ip) {
                Ok(permit) => permit,
                Err(limit) => {
                    shared.pools.release(up, false).await;
                    return self
                        .shed(session, route_index, limit, event_source)
                        .await
                        .into();
                }
            };
            let runtime = &shared.routes[route_index];
            let compressed = headers::is_compressed(&upstream_resp);
            if compressed && !runtime.compressed_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "route {}: upstream sends a compressed event stream; it is passed through without heartbeats or drain hints",
                    route.path
                );
            }
            let resp = match headers::stream_response(
                &upstream_resp,
                client_version,
                &shared.config.stream.cache_control,
            ) {
                Ok(r) => r,
                Err(e) => {
                    shared.pools.release(up, false).await;
                    log::warn!("cannot build stream response: {e}");
                    return respond_or_abort(session, 502, "bad upstream response\n")
                        .await
                        .into();
                }
            };
            // Streams are cut by their own idle timeout, never by the ordinary read timeout.
            up.session.set_read_timeout(None);
            // Open from before the header goes out, so a client holding it is counted.
            let tally = runtime.metrics.stream_started();
            if let Err(e) = session.write_response_header(Box::new(resp)).await {
                log::info!("writing the response header to the client failed: {e}");
                shared.pools.release(up, false).await;
                return Outcome::Abort.into();
            }
            // Only what is safe to repeat: a GET, uncompressed, on a route that asks for it.
            let resume_request =
                (route.resume == Resume::OnError && method == http::Method::GET && !compressed)
                    .then(|| Box::new(upstream_req.clone()));
            return Handled::Stream(Box::new(StreamJob {
                up,
                route: route_index,
                compressed,
                tally,
                permit,
                client: session.client_addr().and_then(|a| a.as_inet()).copied(),
                resume_request,
                connection: None,
                activity: None,
            }));
        }

        let has_resp_body = headers::response_has_body(&method, upstream_resp.status);
        let resp = match headers::ordinary_response(&upstream_resp, client_version, has_resp_body) {
            Ok(r) => r,
            Err(e) => {
                shared.pools.release(up, false).await;
                log::warn!("cannot build response: {e}");
                return respond_or_abort(session, 502, "bad upstream response\n")
                    .await
                    .into();
            }
        };
        if let Err(e) = session.write_response_header(Box::new(resp)).await {
            log::info!("writing the response header to the client failed: {e}");
            shared.pools.release(up, false).await;
            return Outcome::Abort.into();
        }
        let outcome = if has_resp_body {
            relay_body(session, &mut up).await
        } else {
            Outcome::Clean
        };
        let outcome = if outcome == Outcome::Clean && session.finish_body().await.is_err() {
            Outcome::Abort
        } else {
            outcome
        };
        let reusable = outcome == Outcome::Clean && up.session.response_done();
        shared.pools.release(up, reusable).await;
        outcome.into()
    }
}

/// Why an upstream exchange produced no response header.
enum Failure {
    /// The client failed while its request body was being read.
    Client,
    /// No response header within the read timeout.
    Timeout,
    /// The upstream refused, reset, closed or answered garbage.
    Upstream(Box<pingora_error::Error>),
}

/// Sends the request and reads the final response header.
async fn exchange(
    client: &mut ServerSession,
    up: &mut Connected,
    req: pingora_http::RequestHeader,
    has_body: bool,
) -> std::result::Result<(), Failure> {
    if let Err(e) = send_request(client, up, req, has_body).await {
        let client_side = e.esource() == &pingora_error::ErrorSource::Downstream;
        return Err(if client_side {
            Failure::Client
        } else {
            Failure::Upstream(e)
        });
    }
    let header = async {
        up.session.read_response_header().await.map_err(|e| {
            if e.etype() == &ErrorType::ReadTimedout {
                Failure::Timeout
            } else {
                Failure::Upstream(e)
            }
        })
    };
    // An HTTP/2 client that resets its stream (RST_STREAM) while the
    // upstream thinks gives the upstream request up at once: h2 frees the
    // stream's concurrency slot on reset, so without this a client could
    // reset and reopen streams to hold any number of upstream requests.
    match client.watch_h2_stream_close() {
        Some(reset) => tokio::select! {
            r = header => r,
            _ = reset => Err(Failure::Client),
        },
        None => header.await,
    }
}

/// Writes the request header and streams the request body to the upstream.
async fn send_request(
    client: &mut ServerSession,
    up: &mut Connected,
    req: pingora_http::RequestHeader,
    has_body: bool,
) -> Result<()> {
    // Errors are tagged with their side so the caller can tell a client that
    // went away from an upstream that failed.
    up.session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| e.into_up())?;
    if has_body {
        while let Some(chunk) = client
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?
        {
            if !chunk.is_empty() {
                up.session
                    .write_request_body(chunk)
                    .await
                    .map_err(|e| e.into_up())?;
            }
        }
    }
    // Never an empty final body write on HTTP/1 (pingora #935): finish instead.
    up.session
        .finish_request_body()
        .await
        .map_err(|e| e.into_up())
}

/// Relays an ordinary response body, watching for the client going away.
async fn relay_body(client: &mut ServerSession, up: &mut Connected) -> Outcome {
    loop {
        let chunk = tokio::select! {
            biased;
            read = up.session.read_response_body() => read,
            _ = client.read_body_or_idle(true) => return Outcome::Abort,
        };
        match chunk {
            Ok(Some(data)) => {
                if data.is_empty() {
                    continue;
                }
                if client.write_response_body(data, false).await.is_err() {
                    return Outcome::Abort;
                }
            }
            Ok(None) => return Outcome::Clean,
            Err(e) => {
                log::info!("upstream body failed: {e}");
                return Outcome::Abort;
            }
        }
    }
}

/// Sends a small response made by the proxy itself.
async fn respond(session: &mut ServerSession, status: u16, body: &'static str) -> Result<()> {
    let resp = headers::error_response(status, body.len())?;
    respond_with(session, resp, Bytes::from_static(body.as_bytes())).await
}

/// Writes a whole small response: `resp`, then `body`, then the end.
async fn respond_with(
    session: &mut ServerSession,
    resp: pingora_http::ResponseHeader,
    body: Bytes,
) -> Result<()> {
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await?;
    session.finish_body().await
}

/// Responds, and decides whether the connection survives: only if the response
/// went out and the request body (if any) is fully read.
async fn respond_or_abort(session: &mut ServerSession, status: u16, body: &'static str) -> Outcome {
    let sent = respond(session, status, body).await;
    outcome_of(sent, session)
}

/// A response of our own leaves the connection usable only if it went out
/// and the request body (if any) is fully read.
fn outcome_of(sent: Result<()>, session: &mut ServerSession) -> Outcome {
    match sent {
        Ok(()) if session.is_body_done() => Outcome::Clean,
        _ => Outcome::Abort,
    }
}

//! The WebSocket tunnel phase: an HTTP/1.1 `Upgrade: websocket`, or an
//! RFC 8441 extended CONNECT over HTTP/2, becomes a tunnel to the upstream,
//! from the handshake to the access-log line.
//!
//! ```text
//!  `wanted`: is this a WebSocket handshake? ──(refused)──► 403, 400, 501
//!        │   (route `websocket = false`; bad key; other :protocol)
//!  HTTP/2: a place under max_connections ──(full)──► 503
//!        │
//!  a fresh HTTP/1.1 connection to the upstream (never a pooled one)
//!        │   GET + Upgrade; over HTTP/2 our own Sec-WebSocket-Key
//!  the upstream's answer ──(not 101)──► passed through as ordinary
//!        │   ──(101 without Upgrade: websocket or a wrong Accept)──► 502
//!  client gets 101 (HTTP/1.1) or 200 (HTTP/2) ─► Handled::Tunnel(job)
//!        │
//!  `spawn`: a task of its own holds the two ends; splice.rs copies
//!        │
//!  metrics and the access log; both connections closed
//! ```

pub mod splice;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Version};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

use super::connections;
use super::exchange::{Exchanged, ResponseKind};
use super::headers;
use super::ordinary;
use super::prepare::Prepared;
use super::reply::Reply;
use super::route::RouteEntry;
use super::{Handled, ProxyApp};
use crate::access_log::TunnelLine;
use crate::metrics::Held;
use crate::upstream::{Connected, UpstreamSession};
use crate::websocket::handshake::{accept_key, has_token, new_key, valid_key};
use splice::Client;

/// What a request asks for, as far as tunnels go.
pub enum Wanted {
    /// Nothing: an ordinary request or event stream.
    No,
    /// A WebSocket handshake this route serves.
    WebSocket,
    /// A tunnel that is refused with this reply.
    Refused(Reply),
}

/// Whether `session`'s request is a WebSocket handshake for `route`.
///
/// HTTP/1.1: `Upgrade: websocket` with `Connection: upgrade` (an `Upgrade`
/// naming anything else is an ordinary request, whose `Upgrade` is dropped
/// as hop-by-hop). HTTP/2: a CONNECT with `:protocol` (plain CONNECT never
/// gets here).
pub fn wanted(session: &ServerSession, route: &RouteEntry) -> Wanted {
    let req = session.req_header();
    let refused = Wanted::Refused(Reply::Status(403, "WebSocket is not allowed here\n"));
    if req.method == Method::CONNECT {
        return match req.extensions.get::<h2::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {
                if route.config.websocket {
                    Wanted::WebSocket
                } else {
                    refused
                }
            }
            Some(_) => Wanted::Refused(Reply::Status(501, "only WebSocket tunnels are served\n")),
            None => Wanted::No,
        };
    }
    let asks = has_token(&req.headers, header::UPGRADE, "websocket")
        && has_token(&req.headers, header::CONNECTION, "upgrade");
    if !asks {
        return Wanted::No;
    }
    if !route.config.websocket {
        return refused;
    }
    let key_ok = req
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| valid_key(k.as_bytes()));
    if req.method != Method::GET || !key_ok {
        return Wanted::Refused(Reply::Status(400, "bad WebSocket handshake\n"));
    }
    Wanted::WebSocket
}

/// Everything a tunnel needs once the client has its answer.
pub struct TunnelJob {
    route: Arc<RouteEntry>,
    upstream: Stream,
    /// Bytes the upstream sent right behind its `101`.
    upstream_first: Option<Bytes>,
    idle_timeout: Option<Duration>,
    client: Option<std::net::SocketAddr>,
    started: Instant,
    /// Holds `ssegate_websockets_open` up while the tunnel lives.
    _open: Held,
    /// Holds the upstream connection in `ssegate_upstream_connections_open`.
    _upstream_in_use: Option<Held>,
    /// The tunnel's place under `max_connections`: an HTTP/1.1 client's
    /// connection guard (taken in `spawn`), or one of its own over HTTP/2.
    connection: Option<connections::ConnectionGuard>,
}

/// Serves a WebSocket handshake on `route` (`wanted` said so).
pub(super) async fn serve(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &Arc<RouteEntry>,
    prepared: Prepared,
) -> Handled {
    // An HTTP/1.1 connection whose upgrade fails is not kept: frames the
    // client pipelined behind its handshake would be read as a request.
    if !session.is_http2() {
        session.set_keepalive(None);
    }
    match open(app, session, route, prepared).await {
        Ok(handled) => handled,
        Err(reply) => {
            let limits = &app.shared.config.limits;
            reply.send(session, route, limits).await.into()
        }
    }
}

/// The handshake with the upstream, then the client's answer: the tunnel's
/// job, the upstream's own refusal passed through, or our reply.
async fn open(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &Arc<RouteEntry>,
    prepared: Prepared,
) -> Result<Handled, Reply> {
    let shared = &app.shared;
    let h2 = session.is_http2();
    // Over HTTP/2 a tunnel takes a connection's place of its own; over
    // HTTP/1.1 its connection already holds one.
    let connection = match h2 {
        true => Some(
            shared
                .connections
                .try_acquire()
                .ok_or(Reply::Status(503, "too many connections\n"))?,
        ),
        false => None,
    };
    let (request, key) = upstream_request(session, prepared, h2)?;
    let up = handshake(&route.pool, &shared.pools, request).await?;
    let head = up
        .session
        .response_header()
        .cloned()
        .ok_or(Reply::Status(502, "bad upstream response\n"))?;
    if head.status.as_u16() != 101 {
        // A refusal (403, a redirect...) is the upstream's answer to give.
        let x = Exchanged {
            up,
            head,
            kind: ResponseKind::Ordinary,
        };
        return Ok(ordinary::serve(session, &shared.pools, x, &Method::GET)
            .await
            .into());
    }
    let Connected {
        session: UpstreamSession::H1(mut conn),
        in_use,
        ..
    } = up
    else {
        return Err(Reply::Status(502, "bad upstream response\n"));
    };
    if !accepted(&head, &key) {
        log::warn!(
            "upstream {}: WebSocket 101 without Upgrade: websocket or with a wrong Sec-WebSocket-Accept",
            route.pool.name
        );
        conn.shutdown().await;
        return Err(Reply::Status(502, "bad upstream WebSocket handshake\n"));
    }
    answer(session, &head, h2).await?;
    let (upstream, upstream_first) = conn.into_upgraded();
    let idle_timeout = route
        .config
        .websocket_idle_timeout
        .unwrap_or(shared.config.websocket.idle_timeout);
    Ok(Handled::Tunnel(Box::new(TunnelJob {
        upstream,
        upstream_first: upstream_first.map(|b| b.freeze()),
        idle_timeout,
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        started: Instant::now(),
        _open: route.metrics.tunnel().opened(),
        _upstream_in_use: in_use,
        connection,
        route: route.clone(),
    })))
}

/// The handshake as the upstream gets it, and the key its answer must
/// match: the client's own over HTTP/1.1, a fresh one of ours over HTTP/2
/// (RFC 8441 clients send none).
fn upstream_request(
    session: &ServerSession,
    prepared: Prepared,
    h2: bool,
) -> Result<(pingora_http::RequestHeader, Vec<u8>), Reply> {
    let (key, our_key) = match session.req_header().headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if !h2 => (k.as_bytes().trim_ascii().to_vec(), None),
        _ => {
            let k = new_key();
            (k.clone().into_bytes(), Some(k))
        }
    };
    match headers::websocket_request(prepared.request, our_key.as_deref()) {
        Ok(request) => Ok((request, key)),
        Err(e) => {
            log::info!("cannot forward WebSocket handshake: {e}");
            Err(Reply::Status(400, "bad request\n"))
        }
    }
}

/// Writes the client's answer to an accepted handshake: the upstream's
/// `101` over HTTP/1.1, `200` over HTTP/2.
async fn answer(session: &mut ServerSession, head: &ResponseHeader, h2: bool) -> Result<(), Reply> {
    let version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let answer = headers::websocket_response(head, version).map_err(|e| {
        log::warn!("cannot build the WebSocket answer: {e}");
        Reply::Status(502, "bad upstream response\n")
    })?;
    session
        .write_response_header(Box::new(answer))
        .await
        .map_err(|e| {
            log::debug!("writing the WebSocket answer to the client failed: {e}");
            Reply::Abort
        })
}

/// Sends the handshake over a fresh connection and reads the answer's header.
async fn handshake(
    pool: &crate::upstream::Pool,
    pools: &crate::upstream::Pools,
    request: pingora_http::RequestHeader,
) -> Result<Connected, Reply> {
    let mut up = match pool.connect_fresh_h1(&pools.connectors).await {
        Ok(up) => up,
        Err(e) => {
            log::warn!("upstream {}: no server reachable: {e}", pool.name);
            return Err(Reply::Status(502, "upstream unreachable\n"));
        }
    };
    let exchanged = async {
        up.session.write_request_header(Box::new(request)).await?;
        up.session.read_response_header().await
    };
    match exchanged.await {
        Ok(()) => Ok(up),
        Err(e) => {
            up.session.shutdown().await;
            pool.failed(up.server);
            if e.etype() == &pingora_error::ErrorType::ReadTimedout {
                pool.metrics.timed_out();
                log::warn!(
                    "upstream {}: no WebSocket handshake answer in time",
                    pool.name
                );
                return Err(Reply::Status(504, "upstream timed out\n"));
            }
            log::warn!("upstream {}: WebSocket handshake failed: {e}", pool.name);
            Err(Reply::Status(502, "bad upstream response\n"))
        }
    }
}

/// A `101` that really switches to WebSocket, answering `key`: an
/// `Upgrade: websocket` and the `Sec-WebSocket-Accept` RFC 6455 §4.2.2
/// derives from the key (pingora takes any 101 for an upgrade).
fn accepted(head: &ResponseHeader, key: &[u8]) -> bool {
    let upgrade = has_token(&head.headers, header::UPGRADE, "websocket");
    let accept = head
        .headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|a| a.as_bytes().trim_ascii() == accept_key(key).as_bytes());
    upgrade && accept
}

/// Runs the tunnel in `job` as a task of its own, taking the client's end
/// out of pingora's `session`.
pub(super) fn spawn(
    session: ServerSession,
    mut job: Box<TunnelJob>,
    activity: Option<connections::ActivityGuard>,
    shutdown: &ShutdownWatch,
) {
    let (client, client_first) = match session {
        ServerSession::H1(mut s) => {
            job.connection = connections::take_current();
            let first = pipelined(&mut s);
            (Client::H1(s.into_inner()), first)
        }
        mut other => {
            let send = match &mut other {
                ServerSession::H2(s) => s.take_response_body_writer(),
                _ => None,
            };
            let Some(send) = send else {
                log::warn!("a tunnel on a session that is not HTTP/1.1 or HTTP/2");
                return;
            };
            let session = Box::new(other);
            (Client::H2 { session, send }, None)
        }
    };
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _activity = activity;
        run(client, client_first, job, shutdown).await;
    });
}

/// Bytes the client sent right behind its handshake, which pingora read
/// along with the request header and holds in its body reader: after the
/// `101` they are the start of the (close-delimited) body. One poll takes
/// them, or whatever the socket already has; it never waits.
fn pipelined(s: &mut pingora_core::protocols::http::v1::server::HttpSession) -> Option<Bytes> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut read = std::pin::pin!(s.read_body_bytes());
    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(first)) => first,
        _ => None,
    }
}

/// The tunnel's task: the copy, then its metrics and access-log line.
async fn run(
    mut client: Client,
    client_first: Option<Bytes>,
    mut job: Box<TunnelJob>,
    shutdown: ShutdownWatch,
) {
    let route = job.route.clone();
    let metrics = route.metrics.tunnel();
    let settings = splice::Settings {
        idle_timeout: job.idle_timeout,
        drain_window: route.policy.drain_window,
        drain_limit: route.policy.drain_limit,
        to_upstream: &metrics.to_upstream,
        to_client: &metrics.to_client,
    };
    let upstream_first = job.upstream_first.take();
    let done = Box::pin(splice::run(
        &mut client,
        &mut job.upstream,
        client_first,
        upstream_first,
        &settings,
        &shutdown,
    ))
    .await;
    metrics.ended(done.end);
    let protocol = match client {
        Client::H1(_) => "http1",
        Client::H2 { .. } => "h2",
    };
    let addr = job.client.as_ref().map(|a| a as &dyn std::fmt::Display);
    log::info!(
        target: "ssegate::access",
        "{}",
        TunnelLine {
            route: route.metrics.label(),
            upstream: &route.pool.name,
            client: addr,
            protocol,
            elapsed: job.started.elapsed(),
            to_upstream: done.to_upstream,
            to_client: done.to_client,
            end: done.end,
        }
    );
}

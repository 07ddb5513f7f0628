//! The shared-stream phase (route `share = true`): a GET that may share
//! joins the one upstream stream of its stream key (`share/`), instead of
//! making an upstream request of its own.
//!
//! ```text
//!  GET, no body? ──no──► not shared (the ordinary phases)
//!        │
//!  share_auth? ─► subrequest: 2xx go on, 401/403 passed back, else 502/shed
//!        │
//!  credentials (Cookie, Authorization) not in share_key, not public,
//!  not authorised? ──► not shared
//!        │
//!  stream key: host, upstream path, query (sorted, without lastEventId),
//!  share_key headers
//!        │
//!  Shares::find ─┬─ live ─────► Last-Event-ID (or ?lastEventId) in the ring?
//!                │                 yes / none: subscribe there (replay / live)
//!                │                 no: own request with that id, moving to
//!                │                     the ring once an id it gets is there
//!                ├─ opening ──► wait for it, then as live (failed: not shared)
//!                └─ to open ──► this request opens it (upstream 200
//!                               text/event-stream, uncompressed: the hub's
//!                               task takes the upstream; anything else is
//!                               this request's own answer)
//! ```
//!
//! Subscribers are event streams like the others (`event_stream::begin`):
//! they count under the limits and run their own relay, from a
//! `share::Subscription` instead of an upstream connection.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};

use super::event_stream::{self, Feed};
use super::exchange::{self, Exchanged, ResponseKind};
use super::headers;
use super::prepare::Prepared;
use super::reply::{self, Reply};
use super::resume::Resumer;
use super::route::RouteEntry;
use super::share::auth::{self, Verdict};
use super::share::cluster::{self, Opened};
use super::share::hub::{self, HubJob};
use super::share::{
    Found, Membership, Opening, Position, Shares, Subscription, Switching, Upstream,
};
use super::{Handled, ProxyApp, Shared};
use crate::outcome::Join;
use crate::share::key;

const LAST_EVENT_ID: &str = "last-event-id";

/// A request on a sharing route, as this phase sees it.
struct Request {
    /// The request for the shared upstream stream: without the
    /// subscriber's Last-Event-ID or `lastEventId` parameter.
    shared: RequestHeader,
    /// Where the subscriber wants to resume: its Last-Event-ID, or the
    /// `lastEventId` query parameter when it sent no header.
    want: Option<Vec<u8>>,
}

/// What every step of this phase works with.
#[derive(Clone, Copy)]
struct Phase<'a> {
    app: &'a ProxyApp,
    route: &'a Arc<RouteEntry>,
    shares: &'a Arc<Shares>,
    shutdown: &'a ShutdownWatch,
}

/// Serves `prepared` from a shared stream of `shares`, or gives it back
/// (`Err`) when it is not to be shared: the ordinary phases serve it.
pub(super) async fn serve(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &Arc<RouteEntry>,
    shares: &Arc<Shares>,
    prepared: Prepared,
    shutdown: &ShutdownWatch,
) -> Result<Handled, Prepared> {
    let s = &shares.settings;
    if prepared.request.method != http::Method::GET || prepared.has_body {
        return Err(prepared);
    }
    let p = Phase {
        app,
        route,
        shares,
        shutdown,
    };
    let authorised = match authorise(p, session, &prepared).await {
        Ok(authorised) => authorised,
        Err(answered) => return Ok(answered),
    };
    let client = session.req_header();
    if !authorised && !key::may_share(&client.headers, &s.key_headers, s.public) {
        return Err(prepared);
    }
    let Some((key, request)) = stream_key(client, &prepared.request, &s.key_headers) else {
        return Err(prepared);
    };
    match shares.find(&key) {
        Found::Live(member) => join(p, session, prepared, member, request).await,
        Found::Opening(member) => match member.hub().opened().await {
            Some(_) => join(p, session, prepared, member, request).await,
            None => Err(prepared),
        },
        Found::Open(opening, member) => {
            let Some(opening) = open_in_cluster(p, opening, &member, &request).await else {
                // Following another instance's upstream now (or not shared).
                let live = member.hub().state().upstream == Upstream::Live;
                if live {
                    return join(p, session, prepared, member, request).await;
                }
                return Err(prepared);
            };
            let want = request.want.as_deref();
            if want.is_some() && member.hub().position(want).is_none() {
                // Its own request will carry its id; the shared one opens
                // beside it, for it and the others to move to.
                let task = open_detached(
                    app.shared.clone(),
                    route.clone(),
                    shares.clone(),
                    opening,
                    request.shared.clone(),
                    shutdown.clone(),
                );
                tokio::spawn(task);
                return miss(p, session, prepared, member, request).await;
            }
            open(p, session, prepared, opening, member, request).await
        }
    }
}

/// In a cluster, the lease decides who opens the stream's upstream: this
/// request (`Some`: open it as on one machine, after Redis's history) or
/// another instance, which this one then follows (`None`: the hub is live,
/// or, if its holder never answered, the request is not shared).
async fn open_in_cluster(
    p: Phase<'_>,
    opening: Opening,
    member: &Membership,
    request: &Request,
) -> Option<Opening> {
    let Some(link) = member.hub().cluster.clone() else {
        return Some(opening);
    };
    let config = &p.app.shared.config;
    let wait_head = config.timeouts.connect + link.cluster.lease;
    let mut opening = Some(opening);
    match cluster::open(&link, &mut opening, p.shares, wait_head).await {
        Opened::Upstream => opening,
        Opened::Following { at, generation } => {
            let job = HubJob {
                hub: member.hub().clone(),
                shares: p.shares.clone(),
                route: p.route.clone(),
                up: None,
                request: request.shared.clone(),
                generation,
            };
            let shared = p.app.shared.clone();
            tokio::spawn(hub::run_from(shared, job, p.shutdown.clone(), Some(at)));
            None
        }
        Opened::Failed => None,
    }
}

/// The `share_auth` subrequest, when the route has one: `Ok(true)` when it
/// allowed sharing, `Ok(false)` without one, `Err` when the request has
/// been answered (its 401 or 403 passed back, or a 502 / the shed answer).
async fn authorise(
    p: Phase<'_>,
    session: &mut ServerSession,
    prepared: &Prepared,
) -> Result<bool, Handled> {
    let Some(path) = &p.shares.settings.auth else {
        return Ok(false);
    };
    let shared = &p.app.shared;
    let read_timeout = shared.config.timeouts.read;
    let (pools, pool) = (&shared.pools, &p.route.pool);
    let cache = &p.shares.auth;
    match auth::authorize(cache, pools, pool, path, &prepared.request, read_timeout).await {
        Verdict::Allow => Ok(true),
        Verdict::Deny(head, body) => Err(deny(session, &head, body).await),
        Verdict::Error(why) => {
            log::warn!("route {}: share_auth {path}: {why}", p.route.config.path);
            let reply = Reply::unserved(prepared.retry_later, 502, "authorization failed\n");
            Err(reply
                .send(session, p.route, &shared.config.limits)
                .await
                .into())
        }
    }
}

/// The stream key of `client`'s request, and the request for the shared
/// stream; `None` when the target is not UTF-8 (never shared).
fn stream_key(
    client: &RequestHeader,
    prepared: &RequestHeader,
    key_headers: &[String],
) -> Option<(key::StreamKey, Request)> {
    let target = std::str::from_utf8(prepared.raw_path()).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let host = headers::request_host(client).unwrap_or_default();
    let key = key::stream_key(&host, path, query, &client.headers, key_headers);
    let want = match client.headers.get(LAST_EVENT_ID) {
        Some(v) => Some(v.as_bytes().to_vec()),
        None => key::last_event_id_param(query),
    };
    let mut shared = prepared.clone();
    shared.remove_header(LAST_EVENT_ID);
    let target = match key::without_last_event_id(query) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    shared.set_uri(http::Uri::try_from(target).ok()?);
    Some((key, Request { shared, want }))
}

/// The upstream's answer can be shared: 200 text/event-stream, not compressed.
fn shareable(x: &Exchanged) -> bool {
    x.kind == ResponseKind::EventStream
        && x.head.status == http::StatusCode::OK
        && !headers::is_compressed(&x.head)
}

/// Joins the live hub of `member`: after its Last-Event-ID if the ring
/// has it, at the next event without one; a miss goes its own way.
async fn join(
    p: Phase<'_>,
    session: &mut ServerSession,
    prepared: Prepared,
    member: Membership,
    request: Request,
) -> Result<Handled, Prepared> {
    let want = request.want.as_deref();
    let (Some(at), Some(head)) = (
        member.hub().position(want),
        member.hub().state().head.clone(),
    ) else {
        return miss(p, session, prepared, member, request).await;
    };
    let replay = want.is_some();
    Ok(subscribe(p, session, &prepared, member, at, replay, &head).await)
}

/// Subscribes the request at `at` in `member`'s hub (`replay`: after its
/// Last-Event-ID) and starts its stream, answered with `head`.
async fn subscribe(
    p: Phase<'_>,
    session: &mut ServerSession,
    prepared: &Prepared,
    member: Membership,
    at: Position,
    replay: bool,
    head: &ResponseHeader,
) -> Handled {
    let how = if replay {
        p.shares.metrics.replay_hits.inc();
        Join::Replay
    } else {
        Join::Live
    };
    let permit = match event_stream::admit(p.app, session, p.route, prepared).await {
        Ok(permit) => permit,
        Err(handled) => return handled,
    };
    let feed = Feed::Shared(Subscription::new(member, at, p.shares.settings.overflow));
    event_stream::begin(p.app, session, p.route, head, permit, feed, Some(how)).await
}

/// This request opens the hub: the shared request goes upstream (after the
/// ring's newest id, when a kept ring is re-opened). A shareable answer
/// goes to the hub's task and this request subscribes; any other answer is
/// this request's own.
async fn open(
    p: Phase<'_>,
    session: &mut ServerSession,
    prepared: Prepared,
    opening: Opening,
    member: Membership,
    request: Request,
) -> Result<Handled, Prepared> {
    let Phase { app, route, .. } = p;
    let mut upstream_request = request.shared.clone();
    if let Some(id) = &opening.resume_id {
        if let Ok(v) = HeaderValue::from_bytes(id) {
            let _ = upstream_request.insert_header(LAST_EVENT_ID, v);
        }
    }
    let shared_prepared = Prepared {
        request: upstream_request,
        has_body: false,
        event_source: prepared.event_source,
        peer_ip: prepared.peer_ip,
        retry_later: prepared.retry_later,
    };
    let pools = &app.shared.pools;
    let x = match exchange::exchange(session, pools, &route.pool, &shared_prepared).await {
        Ok(x) => x,
        Err(reply) => {
            drop((opening, member));
            let limits = &app.shared.config.limits;
            return Ok(reply.send(session, route, limits).await.into());
        }
    };
    if !shareable(&x) {
        drop((opening, member));
        if request.want.is_some() || shared_prepared.request.headers.contains_key(LAST_EVENT_ID) {
            // Answered for another resume point than this client's: it asks again.
            pools.release(x.up, false).await;
            return Err(prepared);
        }
        return Ok(app.serve_exchanged(session, route, prepared, x).await);
    }
    let Exchanged { mut up, head, .. } = x;
    // The hub's relay is cut by its idle timeout, never the read timeout.
    up.session.set_read_timeout(None);
    let generation = opening.generation;
    let hub = member.hub().clone();
    opening.opened(head.clone());
    // Taken before the hub's task pushes anything: nothing is missed.
    let want = request.want.as_deref();
    let at = hub.position(want);
    let job = HubJob {
        hub,
        shares: p.shares.clone(),
        route: route.clone(),
        up: Some(up),
        request: shared_prepared.request,
        generation,
    };
    tokio::spawn(hub::run(app.shared.clone(), job, p.shutdown.clone()));
    let Some(at) = at else {
        return Err(prepared);
    };
    // The opener's own answer: its Set-Cookie, if any, is its own.
    let replay = want.is_some();
    Ok(subscribe(p, session, &prepared, member, at, replay, &head).await)
}

/// Opens a hub without a client of its own (the request that found no hub
/// has a Last-Event-ID the new ring cannot have, and makes its own request).
async fn open_detached(
    shared: Arc<Shared>,
    route: Arc<RouteEntry>,
    shares: Arc<Shares>,
    opening: Opening,
    request: RequestHeader,
    shutdown: ShutdownWatch,
) {
    let resumer = Resumer {
        pools: &shared.pools,
        pool: &route.pool,
        request: &request,
        attempts: 1,
        backoff: route.config.resume_backoff,
        metrics: route.metrics.resume(),
    };
    let up = match resumer.reconnect(opening.resume_id.as_deref()).await {
        Ok(up) => up,
        Err(e) => {
            log::debug!("route {}: shared stream not opened: {e}", route.config.path);
            return;
        }
    };
    let Some(head) = up.session.response_header().cloned() else {
        return;
    };
    let generation = opening.generation;
    let hub = opening.hub.clone();
    opening.opened(head);
    let job = HubJob {
        hub,
        shares,
        route,
        up: Some(up),
        request,
        generation,
    };
    hub::run(shared, job, shutdown).await;
}

/// A Last-Event-ID the ring does not have: the subscriber's own request,
/// with that id, as an unshared stream would make; it moves to the ring
/// once an id it receives is there (`share::Switching`).
async fn miss(
    p: Phase<'_>,
    session: &mut ServerSession,
    mut prepared: Prepared,
    member: Membership,
    request: Request,
) -> Result<Handled, Prepared> {
    let Phase {
        app, route, shares, ..
    } = p;
    shares.metrics.replay_misses.inc();
    // The id may have come as the query parameter: it goes as the header.
    let mut own = request.shared;
    if let Some(v) = request
        .want
        .and_then(|id| HeaderValue::from_bytes(&id).ok())
    {
        let _ = own.insert_header(LAST_EVENT_ID, v);
    }
    prepared.request = own;
    let pools = &app.shared.pools;
    let x = match exchange::exchange(session, pools, &route.pool, &prepared).await {
        Ok(x) => x,
        Err(reply) => {
            drop(member);
            let limits = &app.shared.config.limits;
            return Ok(reply.send(session, route, limits).await.into());
        }
    };
    if !shareable(&x) {
        drop(member);
        return Ok(app.serve_exchanged(session, route, prepared, x).await);
    }
    let permit = match event_stream::admit(app, session, route, &prepared).await {
        Ok(permit) => permit,
        Err(handled) => {
            pools.release(x.up, false).await;
            return Ok(handled);
        }
    };
    let Exchanged { mut up, head, .. } = x;
    up.session.set_read_timeout(None);
    let overflow = shares.settings.overflow;
    let feed = Feed::Switching(Box::new(Switching::new(up, member, overflow)));
    Ok(event_stream::begin(app, session, route, &head, permit, feed, Some(Join::Own)).await)
}

/// The `share_auth` path's 401 or 403, passed to the client as it came.
async fn deny(session: &mut ServerSession, head: &ResponseHeader, body: Bytes) -> Handled {
    let version = session.req_header().version;
    let mut resp = match headers::ordinary_response(head, version, true) {
        Ok(r) => r,
        Err(_) => {
            return reply::respond_or_abort(session, 502, "bad upstream response\n")
                .await
                .into()
        }
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    reply::respond_whole(session, resp, body).await.into()
}

//! The event-stream phase around the relay: admission under the stream
//! limits, the response header, and the stream's own task, from the first
//! event to the access-log line.
//!
//! ```text
//!  upstream answered text/event-stream
//!        │
//!  Limits::admit ──(full)──► upstream dropped, Reply::Shed
//!        │
//!  response header out (`start`) ─► Handled::Stream(job)
//!        │
//!  `spawn`: pingora's session is dropped; the task holds the two
//!  connections (downstream.rs), and runs the relay (stream.rs)
//!        │
//!  `end`: metrics and access log, upstream released, client closed
//!         or back to the keep-alive loop (HTTP/1, clean end)
//! ```

use std::sync::Arc;

use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

use super::compressed::{Coder, Compressed};
use super::connections;
use super::downstream::{Downstream, H1Client, H2Client, Sink};
use super::exchange::Exchanged;
use super::headers;
use super::limits::StreamPermit;
use super::prepare::Prepared;
use super::reply::{Outcome, Reply};
use super::resume;
use super::route::RouteEntry;
use super::share::{Subscription, Switching};
use super::stream;
use super::{Handled, ProxyApp, Shared};
use crate::config::Resume;
use crate::metrics::StreamTally;
use crate::outcome::{Join, StreamEnd, StreamStats};
use crate::upstream::Connected;

/// Where an event stream's bytes come from.
pub enum Feed {
    /// Its own upstream connection (boxed: a subscriber's job stays small).
    Upstream {
        up: Box<Connected>,
        compressed: bool,
        /// The request as sent upstream, kept only when the stream may be
        /// resumed on another connection (route `resume = "on-error"`, GET).
        resume_request: Option<Box<pingora_http::RequestHeader>>,
    },
    /// A shared stream's ring (route `share = true`).
    Shared(Subscription),
    /// Its own upstream until an id it receives is in a shared stream's ring.
    Switching(Box<Switching>),
}

/// Everything an event stream needs after its response header went out.
pub struct StreamJob {
    feed: Feed,
    route: Arc<RouteEntry>,
    /// How it joined, for a shared stream's subscriber.
    join: Option<Join>,
    /// Holds the route's open-streams gauge up until the stream is done.
    tally: StreamTally,
    /// Holds the stream's places under the stream limits until it is done.
    permit: StreamPermit,
    client: Option<std::net::SocketAddr>,
    /// The client connection's place under `max_connections` (HTTP/1: the
    /// stream carries the connection; HTTP/2 streams leave it with theirs).
    connection: Option<connections::ConnectionGuard>,
    /// An HTTP/2 stream's mark on its connection's activity.
    activity: Option<connections::ActivityGuard>,
    /// The stream's encoder, when it is compressed (compressed.rs).
    coder: Option<Box<Coder>>,
}

/// The client of a stream's task: compressed or not, one type.
type Client = Compressed<Downstream>;

/// Admits the event stream in `x` and sends its response header.
pub(super) async fn start(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &Arc<RouteEntry>,
    prepared: Prepared,
    x: Exchanged,
) -> Handled {
    let shared = &app.shared;
    let Exchanged { mut up, head, .. } = x;
    let permit = match admit(app, session, route, &prepared).await {
        Ok(permit) => permit,
        Err(handled) => {
            shared.pools.release(up, false).await;
            return handled;
        }
    };
    let compressed = headers::is_compressed(&head);
    if compressed && route.first_compressed_stream() {
        log::warn!(
            "route {}: upstream sends a compressed event stream; it is passed through without heartbeats or drain hints",
            route.config.path
        );
    }
    // Streams are cut by their own idle timeout, never by the ordinary read timeout.
    up.session.set_read_timeout(None);
    // Only what is safe to repeat: a GET, uncompressed, on a route that asks for it.
    let request = prepared.request;
    let resume_request = (route.config.resume == Resume::OnError
        && request.method == http::Method::GET
        && !compressed)
        .then(|| Box::new(request));
    let feed = Feed::Upstream {
        up: Box::new(up),
        compressed,
        resume_request,
    };
    begin(app, session, route, &head, permit, feed, None).await
}

/// The authoritative count under the stream limits: slots are taken here,
/// so a stream over a limit never reaches the stream phase, whatever
/// `prepare` saw. `Err`: the request was shed (answered).
pub(super) async fn admit(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &RouteEntry,
    prepared: &Prepared,
) -> Result<StreamPermit, Handled> {
    let shared = &app.shared;
    match shared.limits.admit(&route.limit, prepared.peer_ip) {
        Ok(permit) => Ok(permit),
        Err(limit) => {
            let reply = Reply::Shed {
                limit,
                event_source: prepared.event_source,
            };
            Err(reply
                .send(session, route, &shared.config.limits)
                .await
                .into())
        }
    }
}

/// Sends the stream's response header, built from the upstream's `head`,
/// and hands the stream to its task: the part every event stream shares,
/// its own or a shared one.
pub(super) async fn begin(
    app: &ProxyApp,
    session: &mut ServerSession,
    route: &Arc<RouteEntry>,
    head: &ResponseHeader,
    permit: StreamPermit,
    feed: Feed,
    join: Option<Join>,
) -> Handled {
    let shared = &app.shared;
    let client_version = session.req_header().version;
    let cache_control = &shared.config.stream.cache_control;
    let built = headers::stream_response(head, client_version, cache_control).and_then(|mut r| {
        let coder = route
            .compression
            .start(session.req_header(), head, &mut r)?;
        Ok((r, coder))
    });
    let (resp, coder) = match built {
        Ok(built) => built,
        Err(e) => {
            release(shared, feed, false).await;
            log::warn!("cannot build stream response: {e}");
            let reply = Reply::Status(502, "bad upstream response\n");
            return reply
                .send(session, route, &shared.config.limits)
                .await
                .into();
        }
    };
    // Open from before the header goes out, so a client holding it is counted.
    let tally = route.metrics.stream_started();
    if let Err(e) = session.write_response_header(Box::new(resp)).await {
        log::info!("writing the response header to the client failed: {e}");
        release(shared, feed, false).await;
        return Outcome::Abort.into();
    }
    Handled::Stream(Box::new(StreamJob {
        feed,
        route: route.clone(),
        join,
        tally,
        permit,
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        connection: None,
        activity: None,
        coder,
    }))
}

/// Gives back the upstream connection `feed` holds, if any; `done`: the
/// stream ended with its upstream's end, so the connection may be pooled
/// if its response was read to the end.
async fn release(shared: &Shared, feed: Feed, done: bool) {
    let up = match feed {
        Feed::Upstream { up, .. } => Some(*up),
        Feed::Switching(mut s) => s.take_upstream(),
        Feed::Shared(_) => None,
    };
    if let Some(mut up) = up {
        let reusable = done && up.session.response_done();
        shared.pools.release(up, reusable).await;
    }
}

/// Runs the stream in `job` as a task of its own. The stream outlives the
/// request's call: everything pingora holds for the request (its session,
/// buffers and that future) is freed once this returns, and the stream
/// keeps only the two connections.
pub(super) fn spawn(
    app: &Arc<ProxyApp>,
    session: ServerSession,
    mut job: Box<StreamJob>,
    activity: Option<connections::ActivityGuard>,
    shutdown: &ShutdownWatch,
) {
    job.connection = connections::take_current();
    job.activity = activity;
    let st = &app.shared.config.stream;
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
    let client = Compressed::new(client, job.coder.take());
    let (app, shutdown) = (app.clone(), shutdown.clone());
    // A task's future is as large as its largest state: a shared stream's
    // subscriber (most of an idle fan-out's memory) gets a task of its own
    // kind, not one sized for the resuming relay it never runs.
    if matches!(job.feed, Feed::Shared(_)) {
        tokio::spawn(run_subscriber(app, client, job, shutdown));
    } else {
        tokio::spawn(run(app, client, job, shutdown));
    }
}

/// [`run`] for a shared stream's subscriber.
async fn run_subscriber(
    app: Arc<ProxyApp>,
    mut client: Client,
    mut job: Box<StreamJob>,
    shutdown: ShutdownWatch,
) {
    let StreamJob { feed, route, .. } = &mut *job;
    let (policy, probe) = (&route.policy, route.metrics.relay());
    let (end, mut st) = match feed {
        Feed::Shared(source) => {
            let rng = stream::LocalRng;
            stream::relay(&mut client, source, policy, false, &shutdown, probe, rng).await
        }
        // `spawn` sends no other feed here.
        _ => (StreamEnd::UpstreamError, StreamStats::default()),
    };
    st.join = job.join;
    if let Feed::Shared(s) = &job.feed {
        st.skipped = s.skipped();
    }
    Box::pin(finish(app, client, job, end, st, shutdown)).await;
}

/// The stream phase of one event stream, as its own task. While the
/// stream lives, the task holds the relay's state and nothing else: the
/// job stays boxed, and what happens after the relay is a boxed future
/// of its own.
async fn run(
    app: Arc<ProxyApp>,
    mut client: Client,
    mut job: Box<StreamJob>,
    shutdown: ShutdownWatch,
) {
    let shared = &app.shared;
    let StreamJob { feed, route, .. } = &mut *job;
    let (policy, probe) = (&route.policy, route.metrics.relay());
    let rng = stream::LocalRng;
    let (end, mut st) = match feed {
        Feed::Upstream {
            up,
            compressed,
            resume_request: Some(request),
        } => {
            let resumer = resume::Resumer::for_route(&shared.pools, route, request);
            let mut source = resume::Resuming::new(&mut **up, &resumer);
            let c = *compressed;
            stream::relay(&mut client, &mut source, policy, c, &shutdown, probe, rng).await
        }
        Feed::Upstream {
            up,
            compressed,
            resume_request: None,
        } => {
            let mut source = stream::Direct::new(up);
            let c = *compressed;
            stream::relay(&mut client, &mut source, policy, c, &shutdown, probe, rng).await
        }
        Feed::Shared(source) => {
            // Spawned as `run_subscriber` instead; kept for completeness.
            stream::relay(&mut client, source, policy, false, &shutdown, probe, rng).await
        }
        Feed::Switching(source) => {
            let source = &mut **source;
            stream::relay(&mut client, source, policy, false, &shutdown, probe, rng).await
        }
    };
    st.join = job.join;
    st.skipped = match &job.feed {
        Feed::Shared(s) => s.skipped(),
        Feed::Switching(s) => s.skipped(),
        Feed::Upstream { .. } => 0,
    };
    Box::pin(finish(app, client, job, end, st, shutdown)).await;
}

/// Logs a finished stream, releases its upstream, and either closes the
/// client connection or returns it to the keep-alive loop.
async fn finish(
    app: Arc<ProxyApp>,
    mut client: Client,
    job: Box<StreamJob>,
    end: StreamEnd,
    st: StreamStats,
    shutdown: ShutdownWatch,
) {
    let StreamJob {
        feed,
        route,
        tally,
        permit,
        client: addr,
        connection,
        ..
    } = *job;
    // Metrics and the access-log line; `streams_open` drops with `tally`.
    let addr = addr.as_ref().map(|a| a as &dyn std::fmt::Display);
    tally.finish(&route.metrics, end, &st, &route.pool.name, addr);
    // Before the connection may carry further requests below.
    drop(permit);
    release(&app.shared, feed, end == StreamEnd::UpstreamDone).await;
    if !end.is_clean() {
        client.abort().await;
        return;
    }
    // A finished HTTP/1 stream leaves a connection that can carry the
    // client's next request: back to the keep-alive loop with it.
    if let Downstream::H1(c) = client.into_inner() {
        if let Some(stream) = c.into_reusable() {
            if !*shutdown.borrow() {
                connections::holding(connection, app.serve_next(stream, &shutdown)).await;
            }
        }
    }
}

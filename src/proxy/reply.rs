//! Answers the proxy makes itself: small error responses, and the shed
//! response that tells a client over a limit (or an EventSource no upstream
//! could serve) to come back later. Each phase that gives up on a request
//! returns a [`Reply`]; `ProxyApp::handle` sends it.

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_error::Result;

use super::headers;
use super::route::RouteEntry;
use super::stream;
use crate::config::LimitSettings;
use crate::outcome::Limit;

/// How a request ended, which decides whether the client connection can be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was complete and the request body fully read.
    Clean,
    /// The connection must be closed (or the h2 stream reset).
    Abort,
}

/// What a phase that cannot go on answers instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A small response of our own: status and body.
    Status(u16, &'static str),
    /// The stream is turned away by `limit`; see [`shed`].
    Shed { limit: Limit, event_source: bool },
    /// Nothing can be sent: the connection is given up.
    Abort,
}

impl Reply {
    /// A request no upstream server could serve: `status` (502 or 504), or,
    /// for an `EventSource` (`retry_later`: a GET whose `Accept` lists
    /// text/event-stream), the shed response, since the HTML spec makes
    /// EventSource give up for good on any status but 200.
    pub fn unserved(retry_later: bool, status: u16, body: &'static str) -> Reply {
        if retry_later {
            Reply::Shed {
                limit: Limit::Upstream,
                event_source: true,
            }
        } else {
            Reply::Status(status, body)
        }
    }

    /// Sends the reply for a request on `route`.
    pub async fn send(
        self,
        session: &mut ServerSession,
        route: &RouteEntry,
        limits: &LimitSettings,
    ) -> Outcome {
        match self {
            Reply::Status(status, body) => respond_or_abort(session, status, body).await,
            Reply::Shed {
                limit,
                event_source,
            } => shed(session, route, limits, limit, event_source).await,
            Reply::Abort => Outcome::Abort,
        }
    }
}

/// Turns a would-be event stream away because `limit` is reached, so that
/// its client backs off: an `EventSource` (`event_source`) gets a complete
/// 200 event stream holding only `retry:` (a 503 would make it give up
/// for good), anything else a 503 with `Retry-After`.
async fn shed(
    session: &mut ServerSession,
    route: &RouteEntry,
    l: &LimitSettings,
    limit: Limit,
    event_source: bool,
) -> Outcome {
    route.metrics.shed(limit);
    let label = route.metrics.label();
    let ms = stream::jittered_ms(l.shed_retry, l.shed_retry_jitter, &mut stream::LocalRng);
    match limit {
        Limit::Upstream => {
            log::debug!("route {label}: no upstream for an EventSource; told to retry in {ms} ms")
        }
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

/// Sends a small response made by the proxy itself.
pub async fn respond(session: &mut ServerSession, status: u16, body: &'static str) -> Result<()> {
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

/// Sends a whole response made elsewhere (`resp` and all of `body`), and
/// decides whether the connection survives, as [`respond_or_abort`].
pub async fn respond_whole(
    session: &mut ServerSession,
    resp: pingora_http::ResponseHeader,
    body: Bytes,
) -> Outcome {
    let sent = respond_with(session, resp, body).await;
    outcome_of(sent, session)
}

/// Responds, and decides whether the connection survives: only if the response
/// went out and the request body (if any) is fully read.
pub async fn respond_or_abort(
    session: &mut ServerSession,
    status: u16,
    body: &'static str,
) -> Outcome {
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

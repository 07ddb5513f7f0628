//! The first phase of a routed request: what will be sent upstream, decided
//! before any upstream is contacted.
//!
//! ```text
//!  EventSource (Accept: text/event-stream) and a stream limit full? ─► Reply::Shed
//!  request target: origin form, route prefix stripped (on bytes)
//!  request header: hop-by-hop removed, forwarding headers added ──(bad)──► 400
//! ```

use std::net::IpAddr;

use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;

use super::headers::{self, Forwarding};
use super::limits::Limits;
use super::reply::Reply;
use super::route::RouteEntry;
use crate::router;

/// A request ready to go upstream.
pub struct Prepared {
    /// The request header as sent upstream.
    pub request: RequestHeader,
    /// The client sends a request body, to be streamed upstream.
    pub has_body: bool,
    /// The client's `Accept` lists text/event-stream.
    pub event_source: bool,
    /// The client's address, for the per-client stream limit.
    pub peer_ip: Option<IpAddr>,
    /// An EventSource GET without a body: one no upstream can serve is told
    /// to retry rather than given a 5xx (see [`Reply::unserved`]).
    pub retry_later: bool,
}

/// Prepares `session`'s request for `route`. `tls`: the client connection is TLS.
pub fn prepare(
    session: &mut ServerSession,
    route: &RouteEntry,
    limits: &Limits,
    tls: bool,
) -> Result<Prepared, Reply> {
    let has_body = !session.is_body_empty();
    let peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let req = session.req_header();
    // An EventSource over a limit is shed before any upstream is contacted.
    let event_source = headers::accepts_event_stream(req);
    if event_source {
        if let Err(limit) = limits.check(&route.limit, peer_ip) {
            return Err(Reply::Shed {
                limit,
                event_source: true,
            });
        }
    }
    let target = upstream_target(req, &route.config);
    let fwd = Forwarding {
        client_ip: peer_ip.map(|ip| ip.to_string()),
        proto: if tls { "https" } else { "http" },
        target: &target,
        chunked_body: has_body && req.headers.get(http::header::CONTENT_LENGTH).is_none(),
    };
    let request = headers::upstream_request(req, &fwd).map_err(|e| {
        log::info!("cannot forward request: {e}");
        Reply::Status(400, "bad request\n")
    })?;
    let retry_later = event_source && request.method == http::Method::GET && !has_body;
    Ok(Prepared {
        request,
        has_body,
        event_source,
        peer_ip,
        retry_later,
    })
}

/// The request target in origin form, with the route's prefix stripped if
/// it asks for that. Stripping works on bytes, so that a non-UTF-8 path
/// passes through as sent.
fn upstream_target(req: &RequestHeader, route: &crate::config::Route) -> Vec<u8> {
    let origin_form: Vec<u8> = if req.raw_path().starts_with(b"/") {
        req.raw_path().to_vec()
    } else {
        req.uri
            .path_and_query()
            .map_or(b"/".to_vec(), |pq| pq.as_str().as_bytes().to_vec())
    };
    if !route.strip_prefix {
        return origin_form;
    }
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
}

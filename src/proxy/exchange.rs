//! The upstream exchange: connect, send the request (header and streamed
//! body), read the final response header, and say what kind of response it
//! is, so that `ProxyApp::handle` can pick the phase that serves it.
//!
//! ```text
//!  connect (round robin, skip refusing servers) ──(all fail)──► 502
//!        │
//!  write request header + stream request body ──(client fails)──► abort,
//!        │                                      (bad chunk) ──► 400, close
//!        │
//!  read response header ──(read timeout)──► 504, (error) ──► 502,
//!        │   (client gone: HTTP/2 reset, HTTP/1 close) ──► abort
//!        │   (504, 502 and failed connects count against the server: Pool::failed)
//!        │   a pooled connection that fails before any response byte is
//!        │   tried once more on a fresh one, if no request body was read
//!        ▼
//!  ResponseKind: event stream, or ordinary
//! ```
//!
//! An EventSource no upstream could serve gets the shed response instead
//! of a 502 or 504 ([`Reply::unserved`]).

use pingora_core::protocols::http::ServerSession;
use pingora_error::{ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::headers;
use super::prepare::Prepared;
use super::reply::Reply;
use crate::upstream::{Connected, Pool, Pools};

/// What kind of response came back, which picks the phase that serves it.
/// (A WebSocket tunnel will be a third kind, with a phase of its own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// `text/event-stream`: the stream phase (`event_stream.rs`).
    EventStream,
    /// Anything else: passed through as it comes (`ordinary.rs`).
    Ordinary,
}

impl ResponseKind {
    pub fn of(head: &ResponseHeader) -> ResponseKind {
        if headers::is_event_stream(head) {
            ResponseKind::EventStream
        } else {
            ResponseKind::Ordinary
        }
    }
}

/// An upstream connection with its final response header read.
pub struct Exchanged {
    pub up: Connected,
    /// The final response header, as the upstream sent it.
    pub head: ResponseHeader,
    pub kind: ResponseKind,
}

/// Sends `prepared` to a server of `pool` and reads its response header.
pub async fn exchange(
    session: &mut ServerSession,
    pools: &Pools,
    pool: &Pool,
    prepared: &Prepared,
) -> Result<Exchanged, Reply> {
    let Prepared {
        request,
        has_body,
        retry_later,
        ..
    } = prepared;
    let (has_body, retry_later) = (*has_body, *retry_later);
    // A pooled connection the upstream has just closed fails before any
    // response byte; such a request is sent once more on a fresh
    // connection, as long as no request body has been consumed.
    let mut retried = false;
    let up = loop {
        let mut up = match pool.connect(&pools.connectors).await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("upstream {}: no server reachable: {e}", pool.name);
                return Err(Reply::unserved(retry_later, 502, "upstream unreachable\n"));
            }
        };
        let failure = match send_and_read(session, &mut up, request.clone(), has_body).await {
            Ok(()) => break up,
            Err(f) => f,
        };
        let (reused, server) = (up.reused, up.server);
        pools.release(up, false).await;
        match failure {
            Failure::Client => return Err(Reply::Abort),
            // Nothing has gone back yet, so the client can be told; the
            // body is unfinished, so its connection is closed after it.
            Failure::BadBody => return Err(Reply::Status(400, "bad request body\n")),
            Failure::Timeout => {
                pool.failed(server);
                pool.metrics.timed_out();
                log::warn!("upstream {}: no response header in time", pool.name);
                return Err(Reply::unserved(retry_later, 504, "upstream timed out\n"));
            }
            Failure::Upstream(e) if reused && !has_body && !retried => {
                log::debug!(
                    "upstream {}: reused connection failed ({e}); retrying",
                    pool.name
                );
                retried = true;
            }
            Failure::Upstream(e) => {
                pool.failed(server);
                log::warn!("upstream {}: request failed: {e}", pool.name);
                return Err(Reply::unserved(retry_later, 502, "bad upstream response\n"));
            }
        }
    };
    let Some(head) = up.session.response_header().cloned() else {
        pools.release(up, false).await;
        return Err(Reply::Status(502, "bad upstream response\n"));
    };
    Ok(Exchanged {
        kind: ResponseKind::of(&head),
        up,
        head,
    })
}

/// Why an upstream exchange produced no response header.
enum Failure {
    /// The client failed while its request body was being read.
    Client,
    /// The client's request body broke its framing (a bad chunk).
    BadBody,
    /// No response header within the read timeout.
    Timeout,
    /// The upstream refused, reset, closed or answered garbage.
    Upstream(Box<pingora_error::Error>),
}

/// Sends the request and reads the final response header.
async fn send_and_read(
    client: &mut ServerSession,
    up: &mut Connected,
    req: RequestHeader,
    has_body: bool,
) -> std::result::Result<(), Failure> {
    if let Err(e) = send_request(client, up, req, has_body).await {
        let client_side = e.esource() == &pingora_error::ErrorSource::Downstream;
        return Err(match client_side {
            true if is_bad_framing(&e) => Failure::BadBody,
            true => Failure::Client,
            false => Failure::Upstream(e),
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
    tokio::select! {
        r = header => r,
        () = client_gone(client) => Err(Failure::Client),
    }
}

/// Resolves when the client goes away while the upstream thinks, so that
/// the upstream request is given up at once rather than at the read timeout.
///
/// An HTTP/2 client's RST_STREAM: h2 frees the stream's concurrency slot on
/// reset, so without this a client could reset and reopen streams to hold
/// any number of upstream requests. An HTTP/1.1 client's close (FIN or
/// reset; its request body, if any, is all read by now): pingora's idle
/// read reports it. That read takes one byte of whatever the client sends
/// meanwhile (a pipelined request), which is then lost; the client is still
/// answered, and its connection closed after the response.
async fn client_gone(client: &mut ServerSession) {
    if let Some(reset) = client.watch_h2_stream_close() {
        let _ = reset.await;
        return;
    }
    if !matches!(client, ServerSession::H1(_)) {
        return std::future::pending().await;
    }
    match client.read_body_or_idle(true).await {
        Err(e)
            if matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError
            ) => {}
        // Bytes after the request: the client is still there.
        _ => {
            client.set_keepalive(None);
            std::future::pending().await
        }
    }
}

/// Is this a request body that broke HTTP/1.1 chunked framing? pingora's
/// body reader names these error types, but does not export them.
fn is_bad_framing(e: &pingora_error::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd")
    )
}

/// Writes the request header and streams the request body to the upstream.
async fn send_request(
    client: &mut ServerSession,
    up: &mut Connected,
    req: RequestHeader,
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

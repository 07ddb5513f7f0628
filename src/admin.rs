//! The admin listener (`[admin]`): a small plain HTTP/1.1 service, separate
//! from the proxy listeners, for operators and their scrapers.
//!
//! - `GET /metrics`: every `ssegate_*` metric in the Prometheus text format;
//! - `GET /healthz`: `200 ok` while the process serves;
//! - `GET /`: the status page (`status.html`, self-contained, read-only);
//! - `GET /status.json`: the page's snapshot, with a few minutes of history;
//! - `GET /status/events`: the page's `EventSource`, a snapshot event a
//!   second (at most `status::MAX_VIEWERS` at once, then `503`);
//! - anything else: `404`.
//!
//! `HEAD` is answered like `GET`, without the body. The service implements
//! `HttpServerApp` itself rather than pingora's `ServeHttp` so that it can
//! bound how long a client may take to send its request and always send a
//! `Content-Length` (keep-alive works, nothing is close-delimited), except
//! on the event stream, which is chunked and ends its connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

use crate::metrics::Metrics;
use crate::status::{Status, Viewer};

/// How long a client may take to send a request header, and each write to it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The status page: one HTML file, its CSS and script inline.
const STATUS_PAGE: &str = include_str!("status/status.html");

/// The path of the status event stream.
pub const STATUS_EVENTS: &str = "/status/events";

/// The admin `HttpServerApp`.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, status: Arc<Status>) -> Self {
        AdminApp { metrics, status }
    }

    /// `GET /status/events`: a snapshot event for every sample, until the
    /// client goes, a write fails (bounded by [`TIMEOUT`]) or shutdown.
    /// The connection is not reused.
    async fn stream_status(
        &self,
        mut session: ServerSession,
        _viewer: Viewer,
        shutdown: &ShutdownWatch,
    ) {
        let head = match event_stream_header() {
            Ok(h) => h,
            Err(e) => {
                log::warn!("admin: cannot build a response header: {e}");
                return;
            }
        };
        session.set_keepalive(None);
        if session.write_response_header(Box::new(head)).await.is_err() {
            return;
        }
        let mut samples = self.status.subscribe();
        // The first event carries the history the page's charts start from.
        let mut next = snapshot_event(&samples.borrow_and_update().full, true);
        let mut shutdown = shutdown.clone();
        loop {
            if session.write_response_body(next, false).await.is_err() {
                return;
            }
            tokio::select! {
                changed = samples.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = shutdown.changed() => break,
                // A status client sends nothing more: this returns when it goes.
                _ = session.read_body_or_idle(true) => return,
            }
            next = snapshot_event(&samples.borrow_and_update().snapshot, false);
        }
        let _ = session.finish_body().await;
    }

    /// Status, content type and body for a request.
    fn answer(&self, method: &Method, path: &str) -> (u16, &'static str, Bytes) {
        if method != Method::GET && method != Method::HEAD {
            return (404, "text/plain", Bytes::from_static(b"not found\n"));
        }
        match path {
            "/metrics" => match self.metrics.encode() {
                Ok(text) => (200, PROMETHEUS_TEXT, Bytes::from(text)),
                Err(e) => {
                    log::warn!("admin: encoding metrics failed: {e}");
                    (
                        500,
                        "text/plain",
                        Bytes::from_static(b"metrics unavailable\n"),
                    )
                }
            },
            "/healthz" => (200, "text/plain", Bytes::from_static(b"ok\n")),
            "/" => (
                200,
                "text/html; charset=utf-8",
                Bytes::from_static(STATUS_PAGE.as_bytes()),
            ),
            "/status.json" => (200, "application/json", self.status.latest().full.clone()),
            // HEAD: what a GET would start with, without holding a place.
            STATUS_EVENTS if method == Method::HEAD => (200, "text/event-stream", Bytes::new()),
            // A GET comes here only when every place is taken.
            STATUS_EVENTS => (
                503,
                "text/plain",
                Bytes::from_static(b"too many status streams\n"),
            ),
            _ => (404, "text/plain", Bytes::from_static(b"not found\n")),
        }
    }
}

/// One SSE event carrying `json`; `retry:` on the first, so that a page
/// whose stream broke (a restart) tries again every two seconds.
fn snapshot_event(json: &[u8], first: bool) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 40);
    if first {
        out.extend_from_slice(b"retry: 2000\n");
    }
    out.extend_from_slice(b"event: snapshot\ndata: ");
    // serde_json writes no raw newline, so the JSON is one data: line.
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn event_stream_header() -> pingora_error::Result<ResponseHeader> {
    let mut head = ResponseHeader::build(200, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    head.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    Ok(head)
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match tokio::time::timeout(TIMEOUT, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                log::debug!("admin: bad request: {e}");
                return None;
            }
            Err(_) => return None,
        }
        session.set_write_timeout(Some(TIMEOUT));
        let req = session.req_header();
        let head_only = req.method == Method::HEAD;
        if req.method == Method::GET && req.uri.path() == STATUS_EVENTS {
            if let Some(viewer) = self.status.try_view() {
                self.stream_status(session, viewer, shutdown).await;
                return None;
            }
        }
        let (status, content_type, body) = self.answer(&req.method, req.uri.path());
        let head = match response_header(status, content_type, body.len()) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("admin: cannot build a response header: {e}");
                return None;
            }
        };
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        if session.write_response_header(Box::new(head)).await.is_err() {
            return None;
        }
        let body_failed = !head_only && session.write_response_body(body, true).await.is_err();
        if body_failed || session.finish_body().await.is_err() {
            return None;
        }
        // A request body, which no admin request has, would be left unread.
        if !session.is_body_done() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

fn response_header(
    status: u16,
    content_type: &'static str,
    len: usize,
) -> pingora_error::Result<ResponseHeader> {
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, content_type)?;
    head.insert_header(http::header::CONTENT_LENGTH, len)?;
    head.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    Ok(head)
}

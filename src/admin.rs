//! The admin listener (`[admin]`): a small plain HTTP/1.1 service, separate
//! from the proxy listeners, for operators and their scrapers.
//!
//! - `GET /metrics`: every `ssegate_*` metric in the Prometheus text format;
//! - `GET /healthz`: `200 ok` while the process serves;
//! - anything else: `404`.
//!
//! `HEAD` is answered like `GET`, without the body. The service implements
//! `HttpServerApp` itself rather than pingora's `ServeHttp` so that it can
//! bound how long a client may take to send its request and always send a
//! `Content-Length` (keep-alive works, nothing is close-delimited).

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

/// How long a client may take to send a request header, and each write to it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The admin `HttpServerApp`.
pub struct AdminApp {
    metrics: Arc<Metrics>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AdminApp { metrics }
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
            _ => (404, "text/plain", Bytes::from_static(b"not found\n")),
        }
    }
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

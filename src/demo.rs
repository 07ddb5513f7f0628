//! The built-in demo: an SSE origin with three endpoints, and the embedded
//! configuration that puts the proxy in front of it (`ssegate demo`).
//!
//! - `GET /ticks`: one named event a second with numeric `id:`s; honours
//!   `Last-Event-ID` by resuming after it.
//! - `GET /idle`: headers, then silence, to watch the proxy's heartbeats.
//! - `POST /chat`: streams a reply token by token, as LLM APIs do.
//! - `GET /`: to a browser (`Accept: text/html`) the demo page
//!   (`demo.html`), which shows the three at work; to anything else a
//!   plain-text index.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

/// The demo SSE origin.
pub struct DemoUpstream {
    tick: Duration,
    options: HttpServerOptions,
}

impl DemoUpstream {
    pub fn new(tick: Duration) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        DemoUpstream { tick, options }
    }
}

const INDEX: &str = "ssegate demo upstream\n\
GET  /ticks  a named event every second, numeric ids, Last-Event-ID honoured\n\
GET  /idle   headers then silence (watch the proxy's heartbeats)\n\
POST /chat   a reply streamed token by token\n";

/// The demo page: one HTML file, its CSS and script inline.
const PAGE: &str = include_str!("demo.html");

const REPLY: &str = "Server-Sent Events pass through ssegate one chunk at a time, \
so every token reaches you the moment the upstream writes it.";

/// The self-signed certificate of `conf/certs` (localhost, 127.0.0.1), for
/// the demo's TLS listener: a browser opens the page there over HTTP/2.
/// Its key is public; it is for trying ssegate on one's own machine only.
pub const DEMO_CERT: &str = include_str!("../conf/certs/cert.pem");
/// The key of [`DEMO_CERT`].
pub const DEMO_KEY: &str = include_str!("../conf/certs/key.pem");

/// The embedded configuration for `ssegate demo`; `{listen}` and `{upstream}`
/// are filled in, and a TLS listener on `tls` with the certificate and key
/// files `tls` names, when given.
pub fn config_text(listen: &str, tls: Option<(&str, &Path, &Path)>, upstream: &str) -> String {
    let tls_listener = match tls {
        Some((address, cert, key)) => format!(
            "\n[[listener]]\naddress = \"{address}\"\ntls = {{ cert = {:?}, key = {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        None => String::new(),
    };
    format!(
        r#"# ssegate demo configuration (embedded)
[server]
threads = 2
grace_period = "2s"
shutdown_timeout = "1s"

[[listener]]
address = "{listen}"
{tls_listener}
[stream]
heartbeat = "5s"

[[upstream]]
name = "demo"
servers = ["{upstream}"]

[[route]]
path = "/"
upstream = "demo"
"#
    )
}

fn event_stream_header(h2: bool) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    if !h2 {
        resp.insert_header("transfer-encoding", "chunked")?;
    }
    Ok(resp)
}

/// Whether the request's `Accept` names `text/html`.
fn wants_html(s: &ServerSession) -> bool {
    s.get_header("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl DemoUpstream {
    async fn serve(&self, s: &mut ServerSession) -> pingora_error::Result<()> {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let h2 = s.is_http2();
        match (method, path.as_str()) {
            (Method::GET, "/ticks") => {
                let after: u64 = s
                    .get_header("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                s.write_response_header(Box::new(event_stream_header(h2)?))
                    .await?;
                let mut id = after;
                let mut interval = tokio::time::interval(self.tick);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = s.read_body_or_idle(true) => return Ok(()),
                    }
                    id += 1;
                    let event = format!(
                        "id: {id}\nevent: tick\ndata: {{\"n\":{id},\"unix_ms\":{}}}\n\n",
                        unix_millis()
                    );
                    s.write_response_body(Bytes::from(event), false).await?;
                }
            }
            (Method::GET, "/idle") => {
                s.write_response_header(Box::new(event_stream_header(h2)?))
                    .await?;
                // Ends only when the client goes.
                let _ = s.read_body_or_idle(true).await;
                Ok(())
            }
            (Method::POST, "/chat") => {
                let mut prompt_bytes = 0usize;
                while let Some(chunk) = s.read_request_body().await? {
                    prompt_bytes += chunk.len();
                }
                s.write_response_header(Box::new(event_stream_header(h2)?))
                    .await?;
                let intro = format!(": prompt of {prompt_bytes} bytes received\n\n");
                s.write_response_body(Bytes::from(intro), false).await?;
                for word in REPLY.split_inclusive(' ') {
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    let token = word.replace('"', "\\\"");
                    let event = format!("data: {{\"token\":\"{token}\"}}\n\n");
                    s.write_response_body(Bytes::from(event), false).await?;
                }
                s.write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), false)
                    .await?;
                s.finish_body().await
            }
            (_, "/") => {
                // Browsers ask for HTML first; curl gets the text it always got.
                let (content_type, body) = if wants_html(s) {
                    ("text/html; charset=utf-8", PAGE)
                } else {
                    ("text/plain; charset=utf-8", INDEX)
                };
                let mut resp = ResponseHeader::build(200, Some(3))?;
                resp.insert_header("content-type", content_type)?;
                resp.insert_header("content-length", body.len().to_string())?;
                resp.insert_header("vary", "accept")?;
                s.write_response_header(Box::new(resp)).await?;
                s.write_response_body(Bytes::from_static(body.as_bytes()), true)
                    .await?;
                s.finish_body().await
            }
            _ => {
                let body = "not found\n";
                let mut resp = ResponseHeader::build(404, Some(2))?;
                resp.insert_header("content-length", body.len().to_string())?;
                s.write_response_header(Box::new(resp)).await?;
                s.write_response_body(Bytes::from_static(body.as_bytes()), true)
                    .await?;
                s.finish_body().await
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for DemoUpstream {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        if let Err(e) = self.serve(&mut session).await {
            log::debug!("demo upstream: {e}");
            session.shutdown().await;
            return None;
        }
        // Keep-alive, as a real origin would.
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

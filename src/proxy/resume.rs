//! Upstream failover for event streams (route `resume = "on-error"`): when
//! a stream's upstream connection fails mid-stream, the stream phase
//! (`stream.rs`) keeps the client's stream open and asks this module for a
//! new upstream connection that continues it.
//!
//! ```text
//!  upstream fails (reset, truncated body, idle timeout) at an event boundary
//!        │  (the client's stream stays open; heartbeats go on)
//!        ▼
//!  wait: the upstream's last `retry:` (or resume_backoff) × 2^(attempt-1), + jitter
//!        ▼
//!  connect (round robin: the next server first) ── GET with Last-Event-ID: <last id>
//!        ▼
//!  200 text/event-stream, not compressed? ──yes──► continue relaying
//!        │ no
//!        └──► next attempt, up to resume_attempts; then end with `retry:`
//! ```
//!
//! Only what is safe to repeat is resumed: GET requests whose events carry
//! ids (or whose upstream failed before any event), uncompressed, failing
//! at an event boundary, so that the client never sees half an event
//! followed by another stream's bytes.

use std::time::Duration;

use http::header::HeaderValue;
use pingora_http::RequestHeader;
use rand::Rng;

use super::headers;
use crate::metrics::ResumeMetrics;
use crate::upstream::{Connected, Pool, Pools};

/// The longest wait between two reconnections, whatever `retry:` said.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// `Last-Event-ID`, as EventSource sends it.
const LAST_EVENT_ID: &str = "last-event-id";

/// What a stream needs to resume: where to reconnect, what to send, how often to try.
pub struct Resumer<'a> {
    pub pools: &'a Pools,
    pub pool: &'a Pool,
    /// The request as first sent upstream (a GET without a body).
    pub request: &'a RequestHeader,
    /// Reconnections before giving up (route `resume_attempts`).
    pub attempts: u32,
    /// Wait when the upstream sent no `retry:` (route `resume_backoff`).
    pub backoff: Duration,
    pub metrics: &'a ResumeMetrics,
}

impl Resumer<'_> {
    /// The base wait: the upstream's last `retry:` (ms), else `resume_backoff`.
    pub fn base(&self, retry_ms: Option<u64>) -> Duration {
        retry_ms.map_or(self.backoff, Duration::from_millis)
    }

    /// The wait before attempt `attempt` (1-based); see [`delay`].
    pub fn delay(&self, attempt: u32, retry_ms: Option<u64>) -> Duration {
        delay(self.base(retry_ms), attempt)
    }

    /// One reconnection: a connection from the pool (a server that refuses
    /// is skipped), the request again with `last_id` as `Last-Event-ID`,
    /// and a response header that continues the stream. `last_id`: `None`
    /// keeps the request's own header (nothing was dispatched since it was
    /// sent), `Some(b"")` removes it (the stream reset its id).
    pub async fn reconnect(&self, last_id: Option<&[u8]>) -> Result<Connected, String> {
        let mut req = self.request.clone();
        match last_id {
            None => {}
            Some([]) => {
                req.remove_header(LAST_EVENT_ID);
            }
            Some(id) => {
                let value = HeaderValue::from_bytes(id)
                    .map_err(|_| "the last event id is not a valid header value".to_string())?;
                req.insert_header(LAST_EVENT_ID, value)
                    .map_err(|e| format!("cannot set Last-Event-ID: {e}"))?;
            }
        }
        let mut up = self
            .pool
            .connect(&self.pools.connectors)
            .await
            .map_err(|e| format!("no server reachable: {e}"))?;
        match continue_on(&mut up, req).await {
            Ok(()) => {
                // Streams are cut by their own idle timeout, not the read timeout.
                up.session.set_read_timeout(None);
                Ok(up)
            }
            Err(reason) => {
                let peer = up.peer.to_string();
                self.pools.release(up, false).await;
                Err(format!("{peer}: {reason}"))
            }
        }
    }

    /// The id to resume after, if the stream can be resumed at all:
    /// `Some(None)` resumes with the request's own header (no event yet),
    /// `Some(Some(id))` with that id; `None` when events went out without
    /// ids, so a new stream could only repeat them.
    pub fn resume_point(last_id: Option<&[u8]>, events: u64) -> Option<Option<&[u8]>> {
        match (last_id, events) {
            (Some(id), _) => Some(Some(id)),
            (None, 0) => Some(None),
            (None, _) => None,
        }
    }
}

/// The wait before attempt `attempt` (1-based): `base` doubled per earlier
/// attempt, at most [`MAX_DELAY`] (or `base`, if larger), plus up to half
/// of that as jitter, so that streams cut by one upstream failure do not
/// all reconnect in the same instant.
pub fn delay(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let delay = doubled.min(MAX_DELAY.max(base));
    let jitter_ms = (delay.as_millis() / 2) as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=jitter_ms)
    };
    delay + Duration::from_millis(extra)
}

/// Sends `req` on `up` and reads a response header that can continue an
/// event stream: 200, `text/event-stream`, no content coding.
async fn continue_on(up: &mut Connected, req: RequestHeader) -> Result<(), String> {
    up.session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    up.session
        .finish_request_body()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    up.session
        .read_response_header()
        .await
        .map_err(|e| format!("no response header: {e}"))?;
    let Some(head) = up.session.response_header() else {
        return Err("no response header".into());
    };
    if head.status.as_u16() != 200 {
        return Err(format!("answered {}", head.status));
    }
    if !headers::is_event_stream(head) {
        return Err("answered something other than text/event-stream".into());
    }
    if headers::is_compressed(head) {
        return Err("answered a compressed stream".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_and_a_cap() {
        let ms = |d: Duration| d.as_millis();
        for _ in 0..50 {
            let base = Duration::from_millis(100);
            assert!((100..=150).contains(&ms(delay(base, 1))));
            assert!((200..=300).contains(&ms(delay(base, 2))));
            assert!((400..=600).contains(&ms(delay(base, 3))));
            assert!((30_000..=45_000).contains(&ms(delay(base, 40))));
            // A retry: above the cap is honoured as it is.
            let long = Duration::from_secs(60);
            assert!((60_000..=90_000).contains(&ms(delay(long, 3))));
        }
        assert_eq!(delay(Duration::ZERO, 1), Duration::ZERO);
    }

    #[test]
    fn resume_points() {
        assert_eq!(Resumer::resume_point(Some(b"7"), 3), Some(Some(&b"7"[..])));
        assert_eq!(Resumer::resume_point(Some(b""), 3), Some(Some(&b""[..])));
        assert_eq!(Resumer::resume_point(None, 0), Some(None));
        assert_eq!(Resumer::resume_point(None, 2), None);
    }
}

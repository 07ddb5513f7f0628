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
//! [`Resuming`] is the stream phase's [`Source`] for such a stream: live,
//! waiting out a backoff, or reconnecting; the relay keeps serving
//! heartbeats, the client watch and shutdown in every state.
//!
//! Only what is safe to repeat is resumed: GET requests whose events carry
//! ids (or whose upstream failed before any event), uncompressed, failing
//! at an event boundary, so that the client never sees half an event
//! followed by another stream's bytes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::header::HeaderValue;
use pingora_http::RequestHeader;
use rand::Rng;
use tokio::time::{sleep_until, Instant};

use super::headers;
use super::route::RouteEntry;
use super::stream::{body_event, retry_hint, Settled, Source, SourceEvent};
use crate::metrics::ResumeMetrics;
use crate::outcome::StreamEnd;
use crate::sse::Framer;
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

impl<'a> Resumer<'a> {
    /// Resumes `request` as `route` says (`resume_attempts`,
    /// `resume_backoff`), counted in its metrics.
    pub fn for_route(pools: &'a Pools, route: &'a RouteEntry, request: &'a RequestHeader) -> Self {
        Resumer {
            pools,
            pool: &route.pool,
            request,
            attempts: route.config.resume_attempts,
            backoff: route.config.resume_backoff,
            metrics: route.metrics.resume(),
        }
    }
}

impl Resumer<'_> {
    /// The base wait: the upstream's last `retry:` (ms), else `resume_backoff`.
    pub fn base(&self, retry_ms: Option<u64>) -> Duration {
        retry_ms.map_or(self.backoff, Duration::from_millis)
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
                // No header at all is the server failing (a reset, a
                // timeout); a header that cannot continue the stream is not.
                if up.session.response_header().is_none() {
                    self.pool.failed(up.server);
                }
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
/// all reconnect in the same instant. The jitter is drawn from `rng`.
pub fn delay(base: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let doubled = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let delay = doubled.min(MAX_DELAY.max(base));
    let jitter_ms = (delay.as_millis() / 2) as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        rng.gen_range(0..=jitter_ms)
    };
    delay + Duration::from_millis(extra)
}

/// What [`Resuming`] needs of the world: reads from the upstream
/// connection it holds, and new connections when that one fails.
/// [`Resumer`] is the real one (the route's pool, the request again with
/// `Last-Event-ID`); tests script one.
pub trait Reconnector: Sync {
    /// An upstream connection.
    type Up: Send;
    /// The next read of `up`'s response body. Cancel-safe.
    fn read(up: &mut Self::Up) -> impl Future<Output = SourceEvent> + Send;
    /// Lets a failed or silent `up` go.
    fn close(up: &mut Self::Up) -> impl Future<Output = ()> + Send;
    /// Who answers on `up`, for the log.
    fn peer(up: &Self::Up) -> &dyn fmt::Display;
    /// One reconnection that continues after `last_id` (see [`Resumer::reconnect`]).
    fn reconnect(
        &self,
        last_id: Option<&[u8]>,
    ) -> impl Future<Output = Result<Self::Up, String>> + Send;
    /// Gives back the connection a resume replaced.
    fn release(&self, old: Self::Up) -> impl Future<Output = ()> + Send;
    /// Reconnections before giving up.
    fn attempts(&self) -> u32;
    /// The base wait (see [`Resumer::base`]).
    fn base(&self, retry_ms: Option<u64>) -> Duration;
    fn metrics(&self) -> &ResumeMetrics;
}

impl Reconnector for Resumer<'_> {
    type Up = Connected;

    async fn read(up: &mut Connected) -> SourceEvent {
        body_event(up.session.read_response_body().await)
    }

    fn close(up: &mut Connected) -> impl Future<Output = ()> + Send {
        up.session.shutdown()
    }

    fn peer(up: &Connected) -> &dyn fmt::Display {
        &up.peer
    }

    fn reconnect(
        &self,
        last_id: Option<&[u8]>,
    ) -> impl Future<Output = Result<Connected, String>> + Send {
        Resumer::reconnect(self, last_id)
    }

    fn release(&self, old: Connected) -> impl Future<Output = ()> + Send {
        self.pools.release(old, false)
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn base(&self, retry_ms: Option<u64>) -> Duration {
        Resumer::base(self, retry_ms)
    }

    fn metrics(&self) -> &ResumeMetrics {
        self.metrics
    }
}

/// The reconnection under way, boxed: it is rare, and inline its state
/// would size every stream's task.
type Reconnecting<'a, U> = Pin<Box<dyn Future<Output = Result<Box<U>, String>> + Send + 'a>>;

/// Where a resumable stream's upstream bytes come from at the moment.
enum State<'a, U> {
    /// The upstream connection in `up`.
    Live,
    /// The upstream failed; waiting before reconnection `attempt`.
    Waiting { until: Instant, attempt: u32 },
    /// Reconnection `attempt` is under way.
    Connecting {
        attempt: u32,
        reconnect: Reconnecting<'a, U>,
    },
    /// Reconnection `attempt` is over; [`Source::settle`] takes it from here.
    Reconnected {
        attempt: u32,
        result: Result<Box<U>, String>,
    },
}

/// The [`Source`] of a stream that may be resumed: its upstream
/// connection, replaced (in place, in `up`) when it fails.
pub struct Resuming<'a, C: Reconnector> {
    up: &'a mut C::Up,
    resumer: &'a C,
    state: State<'a, C::Up>,
    /// The id a resume continues after, as decided when the upstream failed.
    resume_id: Option<Vec<u8>>,
    /// After a resume, the new response's body starts here: a BOM there is
    /// the new stream's, not an event's, and is not passed on.
    strip_bom: bool,
}

impl<'a, C: Reconnector> Resuming<'a, C> {
    pub fn new(up: &'a mut C::Up, resumer: &'a C) -> Self {
        Resuming {
            up,
            resumer,
            state: State::Live,
            resume_id: None,
            strip_bom: false,
        }
    }

    /// Starts reconnection `attempt`.
    fn connect(&mut self, attempt: u32) {
        let r = self.resumer;
        r.metrics().attempted();
        let id = self.resume_id.clone();
        self.state = State::Connecting {
            attempt,
            reconnect: Box::pin(async move { r.reconnect(id.as_deref()).await.map(Box::new) }),
        };
    }
}

impl<C: Reconnector> Source for Resuming<'_, C> {
    /// Cancel-safe: the read, the sleep and the boxed reconnection all
    /// survive being dropped half-way through the relay's turn.
    async fn next(&mut self) -> SourceEvent {
        loop {
            match &mut self.state {
                State::Live => {
                    let mut event = C::read(self.up).await;
                    if let SourceEvent::Chunk(chunk) = &mut event {
                        if self.strip_bom {
                            self.strip_bom = false;
                            if chunk.starts_with(b"\xEF\xBB\xBF") {
                                let _ = chunk.split_to(3);
                            }
                        }
                    }
                    return event;
                }
                State::Waiting { until, attempt } => {
                    let attempt = *attempt;
                    sleep_until(*until).await;
                    self.connect(attempt);
                }
                State::Connecting { attempt, reconnect } => {
                    let result = reconnect.as_mut().await;
                    let attempt = *attempt;
                    self.state = State::Reconnected { attempt, result };
                }
                State::Reconnected { .. } => return SourceEvent::Settle,
            }
        }
    }

    /// No idle timeout while a resume is under way: its attempts bound it.
    fn idle_applies(&self) -> bool {
        matches!(self.state, State::Live)
    }

    async fn recover<R: Rng + Send>(
        &mut self,
        why: &str,
        framer: &Framer,
        at_boundary: bool,
        rng: &mut R,
    ) -> bool {
        let Some((id, wait)) = start_resume(self.resumer, framer, at_boundary, rng) else {
            return false;
        };
        log::info!("{why}; resuming in {wait:?}");
        // A silent upstream may still be there: let it go now, not once a
        // new connection has been found. Boxed, as the other rare awaits
        // here: inline, their state would size every stream's task.
        Box::pin(C::close(self.up)).await;
        self.resume_id = id;
        self.state = State::Waiting {
            until: Instant::now() + wait,
            attempt: 1,
        };
        true
    }

    async fn settle<R: Rng + Send>(&mut self, framer: &Framer, rng: &mut R) -> Settled {
        let (attempt, result) = match std::mem::replace(&mut self.state, State::Live) {
            State::Reconnected { attempt, result } => (attempt, result),
            other => {
                self.state = other;
                return Settled::Continue;
            }
        };
        let r = self.resumer;
        match result {
            Ok(new) => {
                log::info!(
                    "stream resumed from {} after attempt {attempt}",
                    C::peer(&new)
                );
                let old = std::mem::replace(self.up, *new);
                Box::pin(r.release(old)).await;
                r.metrics().succeeded();
                self.strip_bom = true;
                Settled::Resumed
            }
            Err(reason) if attempt < r.attempts() => {
                let wait = delay(r.base(framer.retry()), attempt + 1, rng);
                log::info!("resume attempt {attempt} failed: {reason}; next in {wait:?}");
                self.state = State::Waiting {
                    until: Instant::now() + wait,
                    attempt: attempt + 1,
                };
                Settled::Continue
            }
            Err(reason) => {
                log::warn!("resume failed after {attempt} attempts ({reason}); ending the stream");
                r.metrics().failed();
                // Resumes start only at an event boundary, and only
                // heartbeats went out since.
                let base = r.base(framer.retry());
                Settled::End(retry_hint(base, base / 2, rng), StreamEnd::ResumeFailed)
            }
        }
    }
}

/// Whether a failed upstream can be replaced, and if so the id to resume
/// after (see `Resumer::reconnect`) and the wait before the first attempt.
fn start_resume(
    r: &impl Reconnector,
    framer: &Framer,
    at_boundary: bool,
    rng: &mut impl Rng,
) -> Option<(Option<Vec<u8>>, Duration)> {
    if !at_boundary {
        return None;
    }
    let point = Resumer::resume_point(framer.last_event_id(), framer.events())?;
    Some((
        point.map(<[u8]>::to_vec),
        delay(r.base(framer.retry()), 1, rng),
    ))
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
        let delay = |base, attempt| delay(base, attempt, &mut rand::thread_rng());
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

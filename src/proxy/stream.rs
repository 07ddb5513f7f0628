//! The stream phase: relaying an event stream once its response header is
//! on the client's socket.
//!
//! One `select!` per turn over four sources; the turn's action is taken
//! after the `select!` so that reads and writes never hold the session at
//! the same time:
//!
//! ```text
//!            ┌───────────── upstream chunk ──► feed framer, write + flush to client
//!            │
//!   loop ────┼───────────── client closed ───► drop upstream (never pooled)
//!            │
//!            ├───────────── silence ≥ heartbeat, at event boundary ─► write comment
//!            ├───────────── silence ≥ idle_timeout ─► end stream (or resume)
//!            ├───────────── upstream fails ─► abort (or resume: resume.rs)
//!            └───────────── shutdown ──► at a random moment in the drain window,
//!                                        at the next boundary: `retry: N`, end
//! ```
//!
//! With a resumer, the upstream side is a small state machine ([`Source`]):
//! live, waiting out a backoff, or reconnecting; the loop keeps serving
//! heartbeats, the client watch and shutdown in every state.
//!
//! Nothing is buffered: each upstream chunk is on the client's socket
//! before the next read. The framer watches the bytes but never changes
//! them, so the client receives the upstream's bytes plus whole comment
//! lines inserted only between events.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use rand::Rng;
use tokio::time::{sleep_until, Instant};

use super::downstream::{Downstream, WriteFailure};
use super::resume::Resumer;
use crate::metrics::RelayProbe;
use crate::outcome::{StreamEnd, StreamStats};
use crate::sse::Framer;
use crate::upstream::Connected;

/// The settings one stream runs with (the route's, over `[stream]`).
#[derive(Debug, Clone)]
pub struct StreamPolicy {
    pub heartbeat: Option<Duration>,
    pub heartbeat_text: Bytes,
    pub idle_timeout: Option<Duration>,
    pub shutdown_retry: Duration,
    pub shutdown_retry_jitter: Duration,
    /// How long after the shutdown signal a stream may wait for an event boundary.
    pub drain_limit: Duration,
    /// Each stream ends at a random moment in [0, drain_window] after the
    /// shutdown signal (at its next event boundary), spreading reconnections.
    pub drain_window: Duration,
}

/// What one turn of the loop decided to do.
enum Turn {
    Chunk(Bytes),
    UpstreamDone,
    UpstreamError(Box<pingora_error::Error>),
    ClientGone,
    HeartbeatDue,
    IdleDue,
    ShutdownStarted,
    /// The moment this stream picked in the drain window has come.
    DrainDue,
    DrainExpired,
    /// A resume's backoff is over: time for the next reconnection.
    BackoffOver,
    Reconnected(Result<Box<Connected>, String>),
}

/// Where the stream's upstream bytes come from at the moment.
enum Source<'r> {
    /// The upstream connection in `up`.
    Live,
    /// The upstream failed; waiting before reconnection `attempt`.
    Waiting { until: Instant, attempt: u32 },
    /// Reconnection `attempt` is under way.
    Connecting {
        attempt: u32,
        reconnect: Pin<Box<dyn Future<Output = Result<Box<Connected>, String>> + Send + 'r>>,
    },
}

/// The next thing the upstream side has for the loop. Cancel-safe: the
/// read, the sleep and the boxed reconnection all survive being dropped
/// half-way through a turn.
async fn next_upstream(source: &mut Source<'_>, up: &mut Connected) -> Turn {
    match source {
        Source::Live => match up.session.read_response_body().await {
            Ok(Some(chunk)) => Turn::Chunk(chunk),
            Ok(None) => Turn::UpstreamDone,
            Err(e) => Turn::UpstreamError(e),
        },
        Source::Waiting { until, .. } => {
            sleep_until(*until).await;
            Turn::BackoffOver
        }
        Source::Connecting { reconnect, .. } => Turn::Reconnected(reconnect.as_mut().await),
    }
}

/// A graceful shutdown in progress for this stream.
struct Drain {
    /// The moment picked in the drain window; `None` once it has passed,
    /// and the stream ends at its next event boundary.
    from: Option<Instant>,
    /// The stream is cut here even if mid-event.
    abort_at: Instant,
}

impl Drain {
    fn start(policy: &StreamPolicy) -> Drain {
        let now = Instant::now();
        let window = policy.drain_window.as_millis() as u64;
        let from = (window > 0)
            .then(|| now + Duration::from_millis(rand::thread_rng().gen_range(0..=window)));
        Drain {
            from,
            abort_at: now + policy.drain_limit,
        }
    }
}

fn write_end(failure: WriteFailure) -> StreamEnd {
    match failure {
        WriteFailure::Failed => StreamEnd::ClientWriteError,
        WriteFailure::Stalled => StreamEnd::ClientStalled,
    }
}

/// Relays the upstream body to the client until one side ends.
///
/// `compressed`: the upstream applied a content coding, so the framer cannot
/// see event boundaries; the bytes pass through untouched and no heartbeat
/// or `retry:` is ever injected. `probe` is told of every relayed chunk;
/// everything else is reported through the returned end and stats.
/// `resumer`: the stream may be resumed from a new upstream connection when
/// `up` fails (see `resume.rs`); `up` is then replaced.
pub async fn relay(
    client: &mut Downstream,
    up: &mut Connected,
    policy: &StreamPolicy,
    compressed: bool,
    shutdown: &ShutdownWatch,
    probe: &RelayProbe,
    resumer: Option<&Resumer<'_>>,
) -> (StreamEnd, StreamStats) {
    let mut framer = Framer::new();
    let mut stats = StreamStats::default();
    let heartbeat = if compressed { None } else { policy.heartbeat };
    let mut last_upstream = Instant::now();
    let mut last_heartbeat = last_upstream;
    let mut drain: Option<Drain> = None;
    if *shutdown.borrow() {
        drain = Some(Drain::start(policy));
    }
    let mut source = Source::Live;
    // After a resume, the new response's body starts here: a BOM there is
    // the new stream's, not an event's, and is not passed on.
    let mut strip_bom = false;
    // The id a resume continues after, as decided when the upstream failed.
    let mut resume_id: Option<Vec<u8>> = None;
    // Resolves once shutdown starts (or the server is torn down). Created
    // once, so its waker registration survives the loop's turns.
    let mut shutdown_rx = shutdown.clone();
    let shutdown_started = async move {
        while !*shutdown_rx.borrow_and_update() {
            if shutdown_rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(shutdown_started);
    // One timer for whichever deadline comes first. It is moved only when
    // the deadline comes earlier than where it is set, or after it fired:
    // every event pushes the heartbeat deadline later, and leaving the timer
    // in place (it then fires early and is re-set once) saves a timer update
    // per event.
    let timer = sleep_until(far_future());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;

    let end = loop {
        // Before the first upstream byte the framer cannot rule out a BOM to
        // come, so it answers "no"; but a stream whose upstream sends headers
        // and then nothing is exactly the one that needs heartbeats to survive
        // idle-cutting middleboxes. We inject there and accept that an upstream
        // that starts its body with a BOM only after a whole heartbeat interval
        // of silence loses that BOM's meaning (documented in README.md).
        let at_boundary = !compressed && (framer.at_event_boundary() || framer.bytes() == 0);
        if at_boundary && drain.as_ref().is_some_and(|d| d.from.is_none()) {
            let retry = retry_hint(policy.shutdown_retry, policy.shutdown_retry_jitter);
            if let Err(e) = client.write(retry).await {
                break write_end(e);
            }
            break StreamEnd::Shutdown;
        }
        let live = matches!(source, Source::Live);
        let heartbeat_at = heartbeat.map(|h| last_upstream.max(last_heartbeat) + h);
        // No idle timeout while a resume is under way: its attempts bound it.
        let idle_at = policy
            .idle_timeout
            .filter(|_| live)
            .map(|t| last_upstream + t);
        let (drain_from, drain_abort) = match &drain {
            Some(d) => (d.from, Some(d.abort_at)),
            None => (None, None),
        };
        let next_deadline = [heartbeat_at, idle_at, drain_from, drain_abort]
            .into_iter()
            .flatten()
            .min();
        match (next_deadline, armed) {
            (Some(due), Some(at)) if due >= at => {}
            (Some(due), _) => {
                timer.as_mut().reset(due);
                armed = Some(due);
            }
            (None, _) => armed = None,
        }

        let turn = tokio::select! {
            biased;
            turn = next_upstream(&mut source, up) => turn,
            _ = client.closed() => Turn::ClientGone,
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                let now = Instant::now();
                if drain_abort.is_some_and(|d| d <= now) {
                    Turn::DrainExpired
                } else if drain_from.is_some_and(|d| d <= now) {
                    Turn::DrainDue
                } else if idle_at.is_some_and(|d| d <= now) {
                    Turn::IdleDue
                } else if heartbeat_at.is_some_and(|d| d <= now) {
                    Turn::HeartbeatDue
                } else {
                    // Set for a deadline that has since moved later.
                    continue;
                }
            }
            _ = &mut shutdown_started, if drain.is_none() => Turn::ShutdownStarted,
        };

        match turn {
            Turn::Chunk(mut chunk) => {
                if strip_bom {
                    strip_bom = false;
                    if chunk.starts_with(b"\xEF\xBB\xBF") {
                        let _ = chunk.split_to(3);
                    }
                }
                if chunk.is_empty() {
                    continue;
                }
                last_upstream = Instant::now();
                if !compressed {
                    framer.feed(&chunk);
                }
                let len = chunk.len();
                stats.bytes += len as u64;
                if let Err(e) = client.write(chunk).await {
                    break write_end(e);
                }
                // `last_upstream` is when this chunk's read completed.
                probe.relayed(len, last_upstream.elapsed());
            }
            Turn::UpstreamDone => break StreamEnd::UpstreamDone,
            Turn::UpstreamError(_) | Turn::IdleDue => {
                let (why, end) = match turn {
                    Turn::UpstreamError(e) => (
                        format!("upstream failed mid-stream: {e}"),
                        StreamEnd::UpstreamError,
                    ),
                    _ => (
                        "upstream silent for the idle timeout".to_string(),
                        StreamEnd::IdleTimeout,
                    ),
                };
                let Some((id, wait)) = start_resume(resumer, &framer, at_boundary) else {
                    log::info!("{why}");
                    break end;
                };
                log::info!("{why}; resuming in {wait:?}");
                // A silent upstream may still be there: let it go now, not
                // once a new connection has been found.
                // Boxed, as the other rare awaits below: inline, their state
                // would size every stream's task.
                Box::pin(up.session.shutdown()).await;
                resume_id = id;
                source = Source::Waiting {
                    until: Instant::now() + wait,
                    attempt: 1,
                };
            }
            Turn::BackoffOver => {
                let (Some(r), Source::Waiting { attempt, .. }) = (resumer, &source) else {
                    continue;
                };
                let attempt = *attempt;
                r.metrics.attempted();
                let id = resume_id.clone();
                source = Source::Connecting {
                    attempt,
                    reconnect: Box::pin(
                        async move { r.reconnect(id.as_deref()).await.map(Box::new) },
                    ),
                };
            }
            Turn::Reconnected(result) => {
                let (Some(r), Source::Connecting { attempt, .. }) = (resumer, &source) else {
                    continue;
                };
                let attempt = *attempt;
                match result {
                    Ok(new) => {
                        log::info!("stream resumed from {} after attempt {attempt}", new.peer);
                        let old = std::mem::replace(up, *new);
                        Box::pin(r.pools.release(old, false)).await;
                        r.metrics.succeeded();
                        stats.resumes += 1;
                        source = Source::Live;
                        strip_bom = true;
                        last_upstream = Instant::now();
                    }
                    Err(reason) if attempt < r.attempts => {
                        let wait = r.delay(attempt + 1, framer.retry());
                        log::info!("resume attempt {attempt} failed: {reason}; next in {wait:?}");
                        source = Source::Waiting {
                            until: Instant::now() + wait,
                            attempt: attempt + 1,
                        };
                    }
                    Err(reason) => {
                        log::warn!(
                            "resume failed after {attempt} attempts ({reason}); ending the stream"
                        );
                        r.metrics.failed();
                        // Resumes start only at an event boundary, and only
                        // heartbeats went out since.
                        let base = r.base(framer.retry());
                        let retry = retry_hint(base, base / 2);
                        if let Err(e) = client.write(retry).await {
                            break write_end(e);
                        }
                        break StreamEnd::ResumeFailed;
                    }
                }
            }
            Turn::ClientGone => break StreamEnd::ClientGone,
            Turn::HeartbeatDue => {
                // Mid-event silence: injecting here would split the event, so
                // wait; the next upstream byte restarts the silence clock.
                last_heartbeat = Instant::now();
                if at_boundary {
                    stats.heartbeats += 1;
                    if let Err(e) = client.write(policy.heartbeat_text.clone()).await {
                        break write_end(e);
                    }
                }
            }
            Turn::ShutdownStarted => drain = Some(Drain::start(policy)),
            Turn::DrainDue => {
                if let Some(d) = drain.as_mut() {
                    d.from = None;
                }
            }
            Turn::DrainExpired => break StreamEnd::ShutdownAborted,
        }
    };
    stats.events = framer.events();
    if end.is_clean() {
        if let Err(e) = client.finish().await {
            return (write_end(e), stats);
        }
    }
    (end, stats)
}

/// Whether a failed upstream can be replaced, and if so the id to resume
/// after (see `Resumer::reconnect`) and the wait before the first attempt.
fn start_resume(
    resumer: Option<&Resumer<'_>>,
    framer: &Framer,
    at_boundary: bool,
) -> Option<(Option<Vec<u8>>, Duration)> {
    let r = resumer?;
    if !at_boundary {
        return None;
    }
    let point = Resumer::resume_point(framer.last_event_id(), framer.events())?;
    Some((point.map(<[u8]>::to_vec), r.delay(1, framer.retry())))
}

/// `retry: N` plus the blank line that closes it, N in milliseconds with jitter
/// so that a whole fleet of clients does not reconnect in the same instant.
pub fn retry_hint(base: Duration, jitter: Duration) -> Bytes {
    retry_field(backoff_ms(base, jitter))
}

/// `base` plus a uniform random extra in [0, jitter], in milliseconds.
pub fn backoff_ms(base: Duration, jitter: Duration) -> u64 {
    let jitter_ms = jitter.as_millis() as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=jitter_ms)
    };
    (base.as_millis() as u64).saturating_add(extra)
}

/// The `retry:` field for `ms` milliseconds, as a whole event.
pub fn retry_field(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hint_within_jitter() {
        for _ in 0..100 {
            let b = retry_hint(Duration::from_millis(1000), Duration::from_millis(500));
            let s = std::str::from_utf8(&b).unwrap();
            let ms: u64 = s
                .strip_prefix("retry: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap()
                .parse()
                .unwrap();
            assert!((1000..=1500).contains(&ms), "{ms}");
        }
        assert_eq!(
            &retry_hint(Duration::from_millis(250), Duration::ZERO)[..],
            b"retry: 250\n\n"
        );
    }
}

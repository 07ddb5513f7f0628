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
//!            ├───────────── silence ≥ idle_timeout ─► end stream
//!            └───────────── shutdown ──► at next boundary: `retry: N`, end
//! ```
//!
//! Nothing is buffered: each upstream chunk is on the client's socket
//! before the next read. The framer watches the bytes but never changes
//! them, so the client receives the upstream's bytes plus whole comment
//! lines inserted only between events.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use rand::Rng;
use tokio::time::{sleep_until, Instant};

use super::downstream::Downstream;
use crate::metrics::RelayProbe;
use crate::sse::Framer;
use crate::upstream::UpstreamSession;

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
}

/// How a stream ended, for the access log and metrics (`crate::metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished its response; the client's stream was ended cleanly.
    UpstreamDone,
    /// The upstream connection failed mid-stream; the client's stream was aborted
    /// so that it can tell a truncated stream from a finished one.
    UpstreamError,
    /// The client went away.
    ClientGone,
    /// A write to the client failed or timed out.
    ClientWriteError,
    /// No upstream byte for `idle_timeout`.
    IdleTimeout,
    /// Ended at an event boundary with a `retry:` hint for a graceful shutdown.
    Shutdown,
    /// Shutdown grace ran out before the stream reached an event boundary.
    ShutdownAborted,
}

impl StreamEnd {
    /// Did the client receive a properly terminated response?
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            StreamEnd::UpstreamDone | StreamEnd::IdleTimeout | StreamEnd::Shutdown
        )
    }
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
    DrainExpired,
}

/// Counters for one stream, reported in its end-of-stream log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamStats {
    pub bytes: u64,
    pub events: u64,
    pub heartbeats: u64,
}

/// Relays the upstream body to the client until one side ends.
///
/// `compressed`: the upstream applied a content coding, so the framer cannot
/// see event boundaries; the bytes pass through untouched and no heartbeat
/// or `retry:` is ever injected. `probe` is told of every relayed chunk;
/// everything else is reported through the returned end and stats.
pub async fn relay(
    client: &mut Downstream,
    upstream: &mut UpstreamSession,
    policy: &StreamPolicy,
    compressed: bool,
    shutdown: &ShutdownWatch,
    probe: &RelayProbe,
) -> (StreamEnd, StreamStats) {
    let mut framer = Framer::new();
    let mut stats = StreamStats::default();
    let heartbeat = if compressed { None } else { policy.heartbeat };
    let mut last_upstream = Instant::now();
    let mut last_heartbeat = last_upstream;
    let mut drain_deadline: Option<Instant> = None;
    if *shutdown.borrow() {
        drain_deadline = Some(Instant::now() + policy.drain_limit);
    }
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
        if drain_deadline.is_some() && at_boundary {
            let retry = retry_hint(policy.shutdown_retry, policy.shutdown_retry_jitter);
            if client.write(retry).await.is_err() {
                break StreamEnd::ClientWriteError;
            }
            break StreamEnd::Shutdown;
        }
        let heartbeat_at = heartbeat.map(|h| last_upstream.max(last_heartbeat) + h);
        let idle_at = policy.idle_timeout.map(|t| last_upstream + t);
        let next_deadline = [heartbeat_at, idle_at, drain_deadline]
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
            read = upstream.read_response_body() => match read {
                Ok(Some(chunk)) => Turn::Chunk(chunk),
                Ok(None) => Turn::UpstreamDone,
                Err(e) => Turn::UpstreamError(e),
            },
            _ = client.closed() => Turn::ClientGone,
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                let now = Instant::now();
                if drain_deadline.is_some_and(|d| d <= now) {
                    Turn::DrainExpired
                } else if idle_at.is_some_and(|d| d <= now) {
                    Turn::IdleDue
                } else if heartbeat_at.is_some_and(|d| d <= now) {
                    Turn::HeartbeatDue
                } else {
                    // Set for a deadline that has since moved later.
                    continue;
                }
            }
            _ = &mut shutdown_started, if drain_deadline.is_none() => Turn::ShutdownStarted,
        };

        match turn {
            Turn::Chunk(chunk) => {
                if chunk.is_empty() {
                    continue;
                }
                last_upstream = Instant::now();
                if !compressed {
                    framer.feed(&chunk);
                }
                let len = chunk.len();
                stats.bytes += len as u64;
                if client.write(chunk).await.is_err() {
                    break StreamEnd::ClientWriteError;
                }
                // `last_upstream` is when this chunk's read completed.
                probe.relayed(len, last_upstream.elapsed());
            }
            Turn::UpstreamDone => break StreamEnd::UpstreamDone,
            Turn::UpstreamError(e) => {
                log::info!("upstream failed mid-stream: {e}");
                break StreamEnd::UpstreamError;
            }
            Turn::ClientGone => break StreamEnd::ClientGone,
            Turn::HeartbeatDue => {
                // Mid-event silence: injecting here would split the event, so
                // wait; the next upstream byte restarts the silence clock.
                last_heartbeat = Instant::now();
                if at_boundary {
                    stats.heartbeats += 1;
                    if client.write(policy.heartbeat_text.clone()).await.is_err() {
                        break StreamEnd::ClientWriteError;
                    }
                }
            }
            Turn::IdleDue => break StreamEnd::IdleTimeout,
            Turn::ShutdownStarted => {
                drain_deadline = Some(Instant::now() + policy.drain_limit);
            }
            Turn::DrainExpired => break StreamEnd::ShutdownAborted,
        }
    };
    stats.events = framer.events();
    if end.is_clean() && client.finish().await.is_err() {
        return (StreamEnd::ClientWriteError, stats);
    }
    (end, stats)
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

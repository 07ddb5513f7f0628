//! The stream phase: relaying an event stream once its response header is
//! on the client's socket.
//!
//! [`relay`] is generic over where the bytes come from (a [`Source`]: one
//! upstream connection, or one that is resumed after failures, see
//! `resume.rs`) and where they go (a [`Sink`]: the client). One `select!`
//! per turn over four branches; the turn's action is taken after the
//! `select!`, so that reads and writes never hold the session at the same
//! time:
//!
//! ```text
//!   drain moment passed and at an event boundary? ──► `retry: N`, end
//!            │
//!            ▼   set the one timer to the first deadline (deadlines.rs), if earlier
//!            │
//!            ┌── source.next() ── Chunk ──► feed framer, write + flush to client
//!            │                    Done ───► end
//!            │                    Failed ─► source.recover(): resumes, or end
//!            │                    Settle ─► source.settle(): resumed, waits again,
//!   loop ────┤                              or gives up (`retry: N`, end)
//!            ├── client closed ───► end (upstream dropped, never pooled)
//!            ├── timer ── Deadlines::due(now):
//!            │              Heartbeat (at a boundary) ─► write comment
//!            │              Idle ─────► source.recover(): resumes, or end
//!            │              DrainMoment ─► end at the next boundary
//!            │              DrainLimit ──► cut, even mid-event
//!            └── shutdown ──► pick a moment in the drain window (injected RNG)
//! ```
//!
//! Nothing is buffered: each upstream chunk is on the client's socket
//! before the next read. The framer watches the bytes but never changes
//! them, so the client receives the upstream's bytes plus whole comment
//! lines inserted only between events.
//!
//! Randomness (the drain moment, `retry:` jitter, resume backoff) comes
//! from the RNG given to [`relay`]: [`LocalRng`] in production, a seeded
//! one in tests; the clock is tokio's, so tests run under a paused clock.

mod deadlines;
#[cfg(test)]
mod relay_tests;
mod source;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use rand::Rng;
use tokio::time::{sleep_until, Instant, Sleep};

pub use super::downstream::Sink;
use super::downstream::WriteFailure;
use crate::metrics::RelayProbe;
use crate::outcome::{StreamEnd, StreamStats};
use crate::sse::Framer;
pub use deadlines::{Alarm, Deadlines, Due};
pub use source::{body_event, Direct, LocalRng, Settled, Source, SourceEvent};

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
    Source(SourceEvent),
    ClientGone,
    /// A deadline has come, at the instant given.
    Due(Due, Instant),
    ShutdownStarted,
}

/// What a turn leaves for the end of the loop. Every client write of the
/// loop goes through [`Step::Write`], so the write's future (the largest
/// state of the stream's task) has one place in the relay's state.
enum Step {
    Continue,
    End(StreamEnd),
    /// Write these bytes to the client and flush them, then `Then`.
    Write(Bytes, Then),
}

/// What follows a client write that succeeded.
enum Then {
    /// An upstream chunk of `len` bytes, read at `read_at`, holding the
    /// end of `events` events, was relayed. `u32`s, so that the relay's
    /// future, which holds this across the write, is no larger than when
    /// it carried `len` alone (`relay_tests`: its size).
    Relayed {
        len: u32,
        read_at: Instant,
        events: u32,
    },
    /// A heartbeat comment was written.
    Heartbeat,
    End(StreamEnd),
}

/// What the relay knows of the stream it relays.
struct Relayed<'p> {
    policy: &'p StreamPolicy,
    compressed: bool,
    /// Made at the first chunk that is not whole events: a shared stream's
    /// subscriber never needs one, and 10,000 idle ones are spared its size.
    framer: Option<Box<Framer>>,
    stats: StreamStats,
    deadlines: Deadlines,
}

impl Relayed<'_> {
    /// What the client has received, as the framer saw it (a new framer
    /// when it has seen nothing).
    fn framer(&self) -> &Framer {
        static UNSEEN: std::sync::OnceLock<Framer> = std::sync::OnceLock::new();
        match &self.framer {
            Some(f) => f,
            None => UNSEEN.get_or_init(Framer::new),
        }
    }

    /// Whether a comment or `retry:` can be injected now without changing an event.
    fn at_boundary(&self) -> bool {
        // Before the first upstream byte the framer cannot rule out a BOM to
        // come, so it answers "no"; but a stream whose upstream sends headers
        // and then nothing is exactly the one that needs heartbeats to survive
        // idle-cutting middleboxes. We inject there and accept that an upstream
        // that starts its body with a BOM only after a whole heartbeat interval
        // of silence loses that BOM's meaning (documented in README.md).
        let Some(framer) = &self.framer else {
            return !self.compressed;
        };
        !self.compressed && (framer.at_event_boundary() || framer.bytes() == 0)
    }

    /// The shutdown signal came: this stream picks its moment in the drain window.
    fn start_drain(&mut self, rng: &mut impl Rng) -> Step {
        let window = self.policy.drain_window.as_millis() as u64;
        let picked = (window > 0).then(|| Duration::from_millis(rng.gen_range(0..=window)));
        let limit = self.policy.drain_limit;
        self.deadlines.start_drain(Instant::now(), picked, limit);
        Step::Continue
    }

    /// The stream drains and stands at an event boundary: `retry: N`, then the end.
    fn drained(&self, rng: &mut impl Rng) -> Step {
        let p = self.policy;
        let retry = retry_hint(p.shutdown_retry, p.shutdown_retry_jitter, rng);
        Step::Write(retry, Then::End(StreamEnd::Shutdown))
    }

    /// An upstream chunk, to be relayed to the client. `whole`: it holds
    /// only whole events, that many dispatched, so the framer need not see it.
    fn chunk(&mut self, chunk: Bytes, whole: Option<u64>) -> Step {
        if chunk.is_empty() {
            return Step::Continue;
        }
        let read_at = Instant::now();
        self.deadlines.on_upstream_bytes(read_at);
        // Events are counted per chunk (not only at the end) so that the
        // metrics, and the status page's events/s, move while streams live.
        let events = match whole {
            Some(events) => {
                self.stats.events += events;
                events
            }
            None if !self.compressed => {
                let framer = self.framer.get_or_insert_with(|| Box::new(Framer::new()));
                let before = framer.events();
                framer.feed(&chunk);
                framer.events() - before
            }
            None => 0,
        };
        let len = chunk.len();
        self.stats.bytes += len as u64;
        Step::Write(
            chunk,
            Then::Relayed {
                // A chunk is one read: far below 4 GiB, and so its events.
                len: u32::try_from(len).unwrap_or(u32::MAX),
                read_at,
                events: u32::try_from(events).unwrap_or(u32::MAX),
            },
        )
    }

    /// The heartbeat deadline came at `now`. Mid-event silence: injecting
    /// there would split the event, so wait; the next upstream byte
    /// restarts the silence clock.
    fn heartbeat(&mut self, now: Instant) -> Step {
        self.deadlines.on_heartbeat(now);
        if !self.at_boundary() {
            return Step::Continue;
        }
        self.stats.heartbeats += 1;
        Step::Write(self.policy.heartbeat_text.clone(), Then::Heartbeat)
    }

    /// What to do about one turn's `turn`.
    async fn take<R: Rng + Send>(
        &mut self,
        turn: Turn,
        source: &mut impl Source,
        rng: &mut R,
    ) -> Step {
        match turn {
            Turn::Source(SourceEvent::Chunk(chunk)) => self.chunk(chunk, None),
            Turn::Source(SourceEvent::Whole(chunk, events)) => self.chunk(chunk, Some(events)),
            Turn::Source(SourceEvent::Done) => Step::End(StreamEnd::UpstreamDone),
            Turn::Source(SourceEvent::Failed(e)) => {
                let why = format!("upstream failed mid-stream: {e}");
                self.lost_upstream(source, why, StreamEnd::UpstreamError, rng)
                    .await
            }
            Turn::Source(SourceEvent::Settle) => {
                let settled = source.settle(self.framer(), rng).await;
                self.settled(settled)
            }
            Turn::ClientGone => Step::End(StreamEnd::ClientGone),
            Turn::Due(Due::Heartbeat, now) => self.heartbeat(now),
            Turn::Due(Due::Idle, _) => {
                let why = "upstream silent for the idle timeout".to_string();
                self.lost_upstream(source, why, StreamEnd::IdleTimeout, rng)
                    .await
            }
            Turn::Due(Due::DrainMoment, _) => {
                self.deadlines.on_drain_moment();
                Step::Continue
            }
            Turn::Due(Due::DrainLimit, _) => Step::End(StreamEnd::ShutdownAborted),
            Turn::ShutdownStarted => self.start_drain(rng),
        }
    }

    /// The upstream failed or fell silent (`why`): the source resumes, or
    /// the stream ends as `end`.
    async fn lost_upstream<R: Rng + Send>(
        &self,
        source: &mut impl Source,
        why: String,
        end: StreamEnd,
        rng: &mut R,
    ) -> Step {
        if source
            .recover(&why, self.framer(), self.at_boundary(), rng)
            .await
        {
            return Step::Continue;
        }
        log::info!("{why}");
        Step::End(end)
    }

    /// What the source did in [`Source::settle`].
    fn settled(&mut self, settled: Settled) -> Step {
        match settled {
            Settled::Continue => Step::Continue,
            Settled::Resumed => {
                self.stats.resumes += 1;
                self.deadlines.on_upstream_bytes(Instant::now());
                Step::Continue
            }
            Settled::End(hint, end) => Step::Write(hint, Then::End(end)),
        }
    }
}

/// What wakes the loop besides its two sides.
struct Wakeups<'a, F> {
    /// One timer for whichever deadline comes first (see `Alarm`).
    timer: Pin<&'a mut Sleep>,
    alarm: Alarm,
    /// Resolves once shutdown starts. Created once, so its waker
    /// registration survives the loop's turns.
    shutdown: Pin<&'a mut F>,
}

impl<F: Future<Output = ()>> Wakeups<'_, F> {
    /// Waits for the next thing to act on: the source has something, the
    /// client left, a deadline came, or shutdown started.
    async fn next_turn(
        &mut self,
        source: &mut impl Source,
        client: &mut impl Sink,
        deadlines: &Deadlines,
    ) -> Turn {
        loop {
            let idle_applies = source.idle_applies();
            if let Some(at) = self.alarm.plan(deadlines.next_due(idle_applies)) {
                self.timer.as_mut().reset(at);
            }
            return tokio::select! {
                biased;
                event = source.next() => Turn::Source(event),
                _ = client.closed() => Turn::ClientGone,
                _ = self.timer.as_mut(), if self.alarm.is_armed() => {
                    self.alarm.fired();
                    let now = Instant::now();
                    match deadlines.due(now, idle_applies) {
                        Some(due) => Turn::Due(due, now),
                        // Set for a deadline that has since moved later.
                        None => continue,
                    }
                }
                _ = self.shutdown.as_mut(), if !deadlines.draining() => Turn::ShutdownStarted,
            };
        }
    }
}

/// Resolves once shutdown starts (or the server is torn down).
async fn shutdown_started(mut rx: ShutdownWatch) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn write_end(failure: WriteFailure) -> StreamEnd {
    match failure {
        WriteFailure::Failed => StreamEnd::ClientWriteError,
        WriteFailure::Stalled => StreamEnd::ClientStalled,
    }
}

/// Relays the upstream body from `source` to `client` until one side ends.
///
/// `compressed`: the upstream applied a content coding, so the framer cannot
/// see event boundaries; the bytes pass through untouched and no heartbeat
/// or `retry:` is ever injected. `probe` is told of every relayed chunk;
/// everything else is reported through the returned end and stats. `rng`
/// draws the drain moment and every jitter ([`LocalRng`] in production).
pub async fn relay<R: Rng + Send>(
    client: &mut impl Sink,
    source: &mut impl Source,
    policy: &StreamPolicy,
    compressed: bool,
    shutdown: &ShutdownWatch,
    probe: &RelayProbe,
    mut rng: R,
) -> (StreamEnd, StreamStats) {
    let heartbeat = if compressed { None } else { policy.heartbeat };
    let mut s = Relayed {
        policy,
        compressed,
        framer: None,
        stats: StreamStats::default(),
        deadlines: Deadlines::new(Instant::now(), heartbeat, policy.idle_timeout),
    };
    if *shutdown.borrow() {
        s.start_drain(&mut rng);
    }
    let shutdown_started = shutdown_started(shutdown.clone());
    tokio::pin!(shutdown_started);
    let timer = sleep_until(far_future());
    tokio::pin!(timer);
    let mut wake = Wakeups {
        timer,
        alarm: Alarm::default(),
        shutdown: shutdown_started,
    };

    let end = loop {
        let step = if s.deadlines.drain_ready() && s.at_boundary() {
            s.drained(&mut rng)
        } else {
            match wake.next_turn(source, client, &s.deadlines).await {
                // The hot path, without a detour through `take`'s future.
                Turn::Source(SourceEvent::Chunk(chunk)) => s.chunk(chunk, None),
                Turn::Source(SourceEvent::Whole(chunk, events)) => s.chunk(chunk, Some(events)),
                turn => s.take(turn, source, &mut rng).await,
            }
        };
        match step {
            Step::Continue => {}
            Step::End(end) => break end,
            Step::Write(bytes, then) => {
                if let Err(e) = client.write(bytes).await {
                    break write_end(e);
                }
                match then {
                    Then::Relayed {
                        len,
                        read_at,
                        events,
                    } => probe.relayed(len as usize, read_at.elapsed(), u64::from(events)),
                    Then::Heartbeat => probe.heartbeat(),
                    Then::End(end) => break end,
                }
            }
        }
    };
    s.stats.events += s.framer.as_ref().map_or(0, |f| f.events());
    if end.is_clean() {
        if let Err(e) = client.finish().await {
            return (write_end(e), s.stats);
        }
    }
    (end, s.stats)
}

/// `retry: N` plus the blank line that closes it, N in milliseconds with jitter
/// so that a whole fleet of clients does not reconnect in the same instant.
pub fn retry_hint(base: Duration, jitter: Duration, rng: &mut impl Rng) -> Bytes {
    retry_field(jittered_ms(base, jitter, rng))
}

/// `base` plus a uniform random extra in [0, jitter] drawn from `rng`, in milliseconds.
pub fn jittered_ms(base: Duration, jitter: Duration, rng: &mut impl Rng) -> u64 {
    let jitter_ms = jitter.as_millis() as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        rng.gen_range(0..=jitter_ms)
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
            let b = retry_hint(
                Duration::from_millis(1000),
                Duration::from_millis(500),
                &mut rand::thread_rng(),
            );
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
            &retry_hint(Duration::from_millis(250), Duration::ZERO, &mut LocalRng)[..],
            b"retry: 250\n\n"
        );
    }
}

//! `relay` in memory, under tokio's paused clock: a scripted source (chunks
//! at given virtual times, then silence, end or failure), or the real
//! `resume::Resuming` over scripted connections (`Answers`), and a sink
//! that records each write with its virtual time. Every assertion is exact:
//! times to the millisecond, bytes to the byte; the random draws come from
//! a seeded `StdRng` (rand 0.8's ChaCha12, pinned by Cargo.lock).

use std::collections::VecDeque;
use std::future::pending;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::{relay, Settled, Sink, Source, SourceEvent, StreamPolicy, WriteFailure};
use crate::metrics::{Metrics, ResumeMetrics};
use crate::outcome::{StreamEnd, StreamStats};
use crate::proxy::resume::{self, Reconnector, Resuming};
use crate::sse::Framer;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One step of an upstream's script, at a virtual time after the start.
enum Item {
    Chunk(&'static [u8]),
    Done,
    Fail,
}

/// A resumption that a scripted source plays: the wait is `resume::delay`
/// with the relay's RNG, as the real resumer draws it.
struct ScriptedResume {
    base: Duration,
    /// The reconnection fails for good: `settle` gives up.
    give_up: bool,
    waiting_until: Option<Instant>,
    /// When each recovery started (`recover`) and when it reconnected (`settle`).
    log: Vec<(&'static str, Instant)>,
}

/// An upstream that plays `script`, then stays silent.
struct Scripted {
    start: Instant,
    script: VecDeque<(Duration, Item)>,
    resume: Option<ScriptedResume>,
}

impl Scripted {
    fn new(start: Instant, script: Vec<(Duration, Item)>) -> Self {
        Scripted {
            start,
            script: script.into(),
            resume: None,
        }
    }

    fn resuming(mut self, base: Duration) -> Self {
        self.resume = Some(ScriptedResume {
            base,
            give_up: false,
            waiting_until: None,
            log: Vec::new(),
        });
        self
    }
}

/// The next step of `script` (times after `start`), at its time; then silence.
async fn play(start: Instant, script: &mut VecDeque<(Duration, Item)>) -> SourceEvent {
    let Some((at, _)) = script.front() else {
        return pending().await;
    };
    sleep_until(start + *at).await;
    match script.pop_front().map(|(_, item)| item) {
        Some(Item::Chunk(b)) => SourceEvent::Chunk(Bytes::from_static(b)),
        Some(Item::Done) => SourceEvent::Done,
        Some(Item::Fail) | None => {
            SourceEvent::Failed(Error::explain(ErrorType::ReadError, "scripted failure"))
        }
    }
}

impl Source for Scripted {
    async fn next(&mut self) -> SourceEvent {
        if let Some(until) = self.resume.as_ref().and_then(|r| r.waiting_until) {
            sleep_until(until).await;
            return SourceEvent::Settle;
        }
        play(self.start, &mut self.script).await
    }

    fn idle_applies(&self) -> bool {
        self.resume
            .as_ref()
            .is_none_or(|r| r.waiting_until.is_none())
    }

    async fn recover<R: Rng + Send>(
        &mut self,
        _why: &str,
        _framer: &Framer,
        at_boundary: bool,
        rng: &mut R,
    ) -> bool {
        let Some(r) = self.resume.as_mut() else {
            return false;
        };
        // One resumption per test, and only between events, as the real one.
        if !at_boundary || !r.log.is_empty() {
            return false;
        }
        let now = Instant::now();
        r.log.push(("recover", now));
        r.waiting_until = Some(now + resume::delay(r.base, 1, rng));
        true
    }

    async fn settle<R: Rng + Send>(&mut self, _framer: &Framer, rng: &mut R) -> Settled {
        let Some(r) = self.resume.as_mut() else {
            return Settled::Continue;
        };
        r.waiting_until = None;
        if r.give_up {
            r.log.push(("gave up", Instant::now()));
            // As `Resuming` does: the base wait plus up to half of it.
            return Settled::End(
                super::retry_hint(r.base, r.base / 2, rng),
                StreamEnd::ResumeFailed,
            );
        }
        r.log.push(("resumed", Instant::now()));
        Settled::Resumed
    }
}

/// A client in memory: records every write with its virtual time; goes
/// away at `close_at`; from `stall_at`, a write waits `write_timeout` and fails.
#[derive(Default)]
struct Memory {
    writes: Vec<(Instant, Bytes)>,
    finished: Option<Instant>,
    close_at: Option<Instant>,
    stall_at: Option<Instant>,
    write_timeout: Duration,
}

impl Sink for Memory {
    async fn write(&mut self, data: Bytes) -> Result<(), WriteFailure> {
        let now = Instant::now();
        if self.stall_at.is_some_and(|t| t <= now) {
            tokio::time::sleep(self.write_timeout).await;
            return Err(WriteFailure::Stalled);
        }
        if !data.is_empty() {
            self.writes.push((now, data));
        }
        Ok(())
    }

    async fn closed(&mut self) {
        match self.close_at {
            Some(t) => sleep_until(t).await,
            None => pending().await,
        }
    }

    async fn finish(&mut self) -> Result<(), WriteFailure> {
        self.finished = Some(Instant::now());
        Ok(())
    }

    async fn abort(&mut self) {}
}

impl Memory {
    /// The writes as (milliseconds after `start`, bytes).
    fn log(&self, start: Instant) -> Vec<(u128, &str)> {
        self.writes
            .iter()
            .map(|(t, b)| {
                let text = std::str::from_utf8(b).unwrap_or("<not utf-8>");
                ((*t - start).as_millis(), text)
            })
            .collect()
    }
}

fn policy() -> StreamPolicy {
    StreamPolicy {
        heartbeat: Some(secs(15)),
        heartbeat_text: Bytes::from_static(b":\n\n"),
        idle_timeout: None,
        shutdown_retry: secs(1),
        shutdown_retry_jitter: secs(1),
        drain_limit: secs(30),
        drain_window: secs(5),
    }
}

struct Run {
    end: StreamEnd,
    stats: StreamStats,
    /// Milliseconds from the start to the relay's return.
    ended_ms: u128,
}

/// Runs `relay` from `start` to its end; the shutdown signal comes at
/// `shutdown_at` (after the start) if given. The sender lives as long as
/// the relay: a dropped one means the server is torn down.
async fn run(
    start: Instant,
    source: &mut Scripted,
    client: &mut Memory,
    policy: &StreamPolicy,
    shutdown_at: Option<Duration>,
    seed: u64,
) -> Run {
    run_with(start, source, client, policy, shutdown_at, seed, false).await
}

/// [`run`], for a stream whose upstream compressed it if `compressed`.
async fn run_with(
    start: Instant,
    source: &mut Scripted,
    client: &mut Memory,
    policy: &StreamPolicy,
    shutdown_at: Option<Duration>,
    seed: u64,
    compressed: bool,
) -> Run {
    let metrics = Metrics::new().expect("metrics");
    let route = metrics.route("test").expect("route metrics");
    let (tx, rx) = watch::channel(false);
    let signal = async {
        if let Some(at) = shutdown_at {
            sleep_until(start + at).await;
            tx.send(true).expect("the relay watches");
        }
        pending::<()>().await
    };
    let rng = StdRng::seed_from_u64(seed);
    let relayed = relay(client, source, policy, compressed, &rx, route.relay(), rng);
    let (end, stats) = tokio::select! {
        r = relayed => r,
        _ = signal => unreachable!(),
    };
    Run {
        end,
        stats,
        ended_ms: (Instant::now() - start).as_millis(),
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_at_exact_intervals_of_silence() {
    let start = Instant::now();
    let mut source = Scripted::new(start, vec![(secs(1), Item::Chunk(b"data: a\n\n"))]);
    // 61 s of silence after the last byte.
    let mut client = Memory {
        close_at: Some(start + secs(62)),
        ..Memory::default()
    };
    let r = run(start, &mut source, &mut client, &policy(), None, 1).await;
    assert_eq!(r.end, StreamEnd::ClientGone);
    assert_eq!(r.ended_ms, 62_000);
    assert_eq!(
        client.log(start),
        [
            (1_000, "data: a\n\n"),
            (16_000, ":\n\n"),
            (31_000, ":\n\n"),
            (46_000, ":\n\n"),
            (61_000, ":\n\n"),
        ]
    );
    assert_eq!(
        (r.stats.heartbeats, r.stats.events, r.stats.bytes),
        (4, 1, 9)
    );
    assert_eq!(client.finished, None);
}

#[tokio::test(start_paused = true)]
async fn no_heartbeat_mid_event() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"data: a\n")),
            (secs(40), Item::Chunk(b"\n")),
        ],
    );
    let mut client = Memory {
        close_at: Some(start + secs(69)),
        ..Memory::default()
    };
    let r = run(start, &mut source, &mut client, &policy(), None, 1).await;
    assert_eq!(r.end, StreamEnd::ClientGone);
    // Due at 16 s and 31 s, mid-event: nothing. The event completes at
    // 40 s, and the next heartbeat is due 15 s after that byte.
    assert_eq!(
        client.log(start),
        [(1_000, "data: a\n"), (40_000, "\n"), (55_000, ":\n\n")]
    );
    assert_eq!(r.stats.heartbeats, 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_restarts_at_each_upstream_byte() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"data: a\n\n")),
            (secs(10), Item::Chunk(b"data: b\n\n")),
            (secs(24), Item::Chunk(b"data: c\n\n")),
            (secs(40), Item::Done),
        ],
    );
    let mut client = Memory::default();
    let r = run(start, &mut source, &mut client, &policy(), None, 1).await;
    assert_eq!(r.end, StreamEnd::UpstreamDone);
    assert_eq!(r.ended_ms, 40_000);
    assert_eq!(
        client.log(start),
        [
            (1_000, "data: a\n\n"),
            (10_000, "data: b\n\n"),
            (24_000, "data: c\n\n"),
            (39_000, ":\n\n"),
        ]
    );
    assert_eq!(client.finished, Some(start + secs(40)));
    assert_eq!((r.stats.heartbeats, r.stats.events), (1, 3));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_exactly_after_the_last_byte() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(5), Item::Chunk(b"data: a\n\n")),
            (secs(7), Item::Chunk(b"data: b\n\n")),
        ],
    );
    let mut client = Memory::default();
    let policy = StreamPolicy {
        idle_timeout: Some(secs(40)),
        ..policy()
    };
    let r = run(start, &mut source, &mut client, &policy, None, 1).await;
    assert_eq!(r.end, StreamEnd::IdleTimeout);
    // Not before 40 s after the last byte (at 7 s), and not after.
    assert_eq!(r.ended_ms, 47_000);
    assert_eq!(client.finished, Some(start + secs(47)));
    // Heartbeats do not count as upstream bytes.
    assert_eq!(
        client.log(start),
        [
            (5_000, "data: a\n\n"),
            (7_000, "data: b\n\n"),
            (22_000, ":\n\n"),
            (37_000, ":\n\n"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn drain_ends_at_the_seeded_moment_with_the_seeded_retry() {
    let start = Instant::now();
    let mut source = Scripted::new(start, vec![(secs(1), Item::Chunk(b"data: a\n\n"))]);
    let mut client = Memory::default();
    let policy = StreamPolicy {
        heartbeat: None,
        ..policy()
    };
    let r = run(start, &mut source, &mut client, &policy, Some(secs(10)), 7).await;
    // Seed 7 draws the moment first (0..=5000 ms after the signal), then
    // the retry's jitter (1000 ms + 0..=1000 ms).
    let mut mirror = StdRng::seed_from_u64(7);
    let (moment, jitter) = (mirror.gen_range(0..=5000u64), mirror.gen_range(0..=1000u64));
    assert_eq!((moment, jitter), (DRAIN_MOMENT_7, RETRY_JITTER_7));
    assert_eq!(r.end, StreamEnd::Shutdown);
    assert_eq!(r.ended_ms, 10_000 + u128::from(DRAIN_MOMENT_7));
    let retry = format!("retry: {}\n\n", 1000 + RETRY_JITTER_7);
    assert_eq!(
        client.log(start),
        [(1_000, "data: a\n\n"), (r.ended_ms, retry.as_str())]
    );
    assert_eq!(client.finished, Some(start + ms(r.ended_ms as u64)));
}

/// What `StdRng::seed_from_u64(7)` draws first for a 5 s drain window, then
/// for a 1 s retry jitter.
const DRAIN_MOMENT_7: u64 = 713;
const RETRY_JITTER_7: u64 = 543;

#[tokio::test(start_paused = true)]
async fn drain_waits_for_the_event_boundary() {
    let start = Instant::now();
    // The event started before the signal completes 9 s after it, past
    // any moment in the 5 s window.
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"data: a\n")),
            (secs(19), Item::Chunk(b"\n")),
        ],
    );
    let mut client = Memory::default();
    let policy = StreamPolicy {
        heartbeat: None,
        ..policy()
    };
    let r = run(start, &mut source, &mut client, &policy, Some(secs(10)), 7).await;
    assert_eq!(r.end, StreamEnd::Shutdown);
    assert_eq!(r.ended_ms, 19_000);
    let retry = format!("retry: {}\n\n", 1000 + RETRY_JITTER_7);
    assert_eq!(
        client.log(start),
        [
            (1_000, "data: a\n"),
            (19_000, "\n"),
            (19_000, retry.as_str())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn drain_cut_mid_event_at_the_drain_limit() {
    let start = Instant::now();
    let mut source = Scripted::new(start, vec![(secs(1), Item::Chunk(b"data: a\n"))]);
    let mut client = Memory::default();
    let r = run(
        start,
        &mut source,
        &mut client,
        &policy(),
        Some(secs(10)),
        7,
    )
    .await;
    assert_eq!(r.end, StreamEnd::ShutdownAborted);
    // The signal at 10 s plus `drain_limit` (30 s); no heartbeat and no
    // `retry:` mid-event, and no proper end of the body.
    assert_eq!(r.ended_ms, 40_000);
    assert_eq!(client.log(start), [(1_000, "data: a\n")]);
    assert_eq!(client.finished, None);
}

#[tokio::test(start_paused = true)]
async fn resume_waits_the_seeded_backoff_then_continues() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"id: 1\ndata: a\n\n")),
            (secs(5), Item::Fail),
            // Already due when the new upstream answers: relayed at once.
            (secs(0), Item::Chunk(b"id: 2\ndata: b\n\n")),
        ],
    )
    .resuming(secs(20));
    let mut client = Memory::default();
    let policy = StreamPolicy {
        idle_timeout: Some(secs(10)),
        ..policy()
    };
    let r = run(start, &mut source, &mut client, &policy, None, 3).await;
    // Seed 3's first draw: the jitter of the first attempt, 0..=10000 ms
    // over the 20 s base.
    let wait = 20_000 + RESUME_JITTER_3;
    assert_eq!(
        StdRng::seed_from_u64(3).gen_range(0..=10_000u64),
        RESUME_JITTER_3
    );
    let resumed = 5_000 + u128::from(wait);
    let log = source.resume.as_ref().map(|r| {
        r.log
            .iter()
            .map(|(what, t)| (*what, (*t - start).as_millis()))
            .collect::<Vec<_>>()
    });
    assert_eq!(log, Some(vec![("recover", 5_000), ("resumed", resumed)]));
    // Heartbeats go on while the stream waits; the idle timeout (10 s)
    // does not cut it meanwhile, and counts again from the resumption.
    assert_eq!(
        client.log(start),
        [
            (1_000, "id: 1\ndata: a\n\n"),
            (16_000, ":\n\n"),
            (resumed, "id: 2\ndata: b\n\n"),
        ]
    );
    assert_eq!(r.end, StreamEnd::IdleTimeout);
    assert_eq!(r.ended_ms, resumed + 10_000);
    assert_eq!((r.stats.resumes, r.stats.events), (1, 2));
}

/// What `StdRng::seed_from_u64(3)` draws first in 0..=10000.
const RESUME_JITTER_3: u64 = 952;

#[tokio::test(start_paused = true)]
async fn a_resume_that_gives_up_ends_with_the_seeded_retry() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"id: 1\ndata: a\n\n")),
            (secs(5), Item::Fail),
        ],
    )
    .resuming(secs(20));
    if let Some(r) = source.resume.as_mut() {
        r.give_up = true;
    }
    let mut client = Memory::default();
    let r = run(start, &mut source, &mut client, &policy(), None, 3).await;
    // Seed 3 draws the wait's jitter, then the hint's: 0..=10000 ms each.
    let mut mirror = StdRng::seed_from_u64(3);
    let draws = (
        mirror.gen_range(0..=10_000u64),
        mirror.gen_range(0..=10_000u64),
    );
    assert_eq!(draws, (RESUME_JITTER_3, GIVE_UP_JITTER_3));
    let gave_up = 5_000 + 20_000 + u128::from(RESUME_JITTER_3);
    let retry = format!("retry: {}\n\n", 20_000 + GIVE_UP_JITTER_3);
    assert_eq!(
        client.log(start),
        [
            (1_000, "id: 1\ndata: a\n\n"),
            (16_000, ":\n\n"),
            (gave_up, retry.as_str()),
        ]
    );
    assert_eq!(r.end, StreamEnd::ResumeFailed);
    assert_eq!(r.ended_ms, gave_up);
    // A clean end: the client can tell it from a cut stream.
    assert_eq!(client.finished, Some(start + ms(gave_up as u64)));
    assert_eq!(r.stats.resumes, 0);
}

/// What `StdRng::seed_from_u64(3)` draws second in 0..=10000.
const GIVE_UP_JITTER_3: u64 = 3525;

#[tokio::test(start_paused = true)]
async fn a_compressed_stream_gets_no_heartbeat_and_no_retry() {
    let start = Instant::now();
    let mut source = Scripted::new(start, vec![(secs(1), Item::Chunk(b"\x1f\x8b\x08"))]);
    let mut client = Memory::default();
    let r = run_with(
        start,
        &mut source,
        &mut client,
        &policy(),
        Some(secs(10)),
        7,
        true,
    )
    .await;
    // The framer cannot see boundaries in compressed bytes: nothing is
    // injected, and the drain can only cut the stream at its limit.
    assert_eq!(r.end, StreamEnd::ShutdownAborted);
    assert_eq!(r.ended_ms, 40_000);
    assert_eq!(client.writes.len(), 1);
    assert_eq!(
        client.writes[0],
        (start + secs(1), Bytes::from_static(b"\x1f\x8b\x08"))
    );
    assert_eq!((r.stats.heartbeats, r.stats.bytes), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn upstream_failure_mid_event_is_not_resumed() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"id: 1\ndata: a\n")),
            (secs(5), Item::Fail),
        ],
    )
    .resuming(secs(20));
    let mut client = Memory::default();
    let r = run(start, &mut source, &mut client, &policy(), None, 3).await;
    assert_eq!(r.end, StreamEnd::UpstreamError);
    assert_eq!(r.ended_ms, 5_000);
    assert_eq!(client.finished, None);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_ends_the_stream_after_the_write_timeout() {
    let start = Instant::now();
    let mut source = Scripted::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"data: a\n\n")),
            (secs(3), Item::Chunk(b"data: b\n\n")),
        ],
    );
    let mut client = Memory {
        stall_at: Some(start + secs(2)),
        write_timeout: secs(7),
        ..Memory::default()
    };
    let r = run(start, &mut source, &mut client, &policy(), None, 1).await;
    assert_eq!(r.end, StreamEnd::ClientStalled);
    assert_eq!(r.ended_ms, 10_000);
    assert_eq!(client.log(start), [(1_000, "data: a\n\n")]);
    // The stalled chunk was read and counted; the client never had it.
    assert_eq!(r.stats.bytes, 18);
}

/// The size of the future `f` returns, without calling it.
#[allow(clippy::type_complexity)]
fn future_size<A, B, C, D, E, G, H, F>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// The relay's future is most of an idle stream's task (BENCHMARKS.md:
/// 8.09 KiB per idle stream). 1720 bytes is what it was before it became
/// generic; 1312 since pingora's fallback session writes are boxed and
/// the framer is made at the first chunk (1128 for a shared stream's
/// subscriber, which never needs one). Past that, look for a rare await
/// that is not boxed.
#[test]
fn the_production_relay_future_is_no_larger_than_before() {
    use crate::proxy::downstream::Downstream;
    use crate::proxy::resume::Resuming;
    use pingora_core::server::ShutdownWatch;

    use super::{Direct, LocalRng};
    use crate::metrics::RelayProbe;

    let resuming = future_size::<
        &'static mut Downstream,
        &'static mut Resuming<'static, crate::proxy::resume::Resumer<'static>>,
        &'static StreamPolicy,
        bool,
        &'static ShutdownWatch,
        &'static RelayProbe,
        LocalRng,
        _,
    >(relay);
    let direct = future_size::<
        &'static mut Downstream,
        &'static mut Direct<'static>,
        &'static StreamPolicy,
        bool,
        &'static ShutdownWatch,
        &'static RelayProbe,
        LocalRng,
        _,
    >(relay);
    assert!(resuming <= 1312, "{resuming} bytes");
    assert!(direct <= 1312, "{direct} bytes");
    let shared = future_size::<
        &'static mut Downstream,
        &'static mut crate::proxy::share::Subscription,
        &'static StreamPolicy,
        bool,
        &'static ShutdownWatch,
        &'static RelayProbe,
        LocalRng,
        _,
    >(relay);
    // A shared stream's subscriber: what 10,000 idle ones are made of.
    assert!(shared <= 1128, "{shared} bytes");
}

/// An upstream connection in memory, playing its script.
struct Conn {
    start: Instant,
    script: VecDeque<(Duration, Item)>,
}

impl Conn {
    fn new(start: Instant, script: Vec<(Duration, Item)>) -> Self {
        Conn {
            start,
            script: script.into(),
        }
    }
}

/// Reconnections answered from a script, for the real `resume::Resuming`:
/// each attempt takes the next answer and is recorded with its time and
/// the id it resumes after.
struct Answers<'m> {
    start: Instant,
    answers: Mutex<VecDeque<Result<Conn, String>>>,
    calls: Mutex<Vec<(u128, Option<Vec<u8>>)>>,
    attempts: u32,
    backoff: Duration,
    metrics: &'m ResumeMetrics,
}

impl Reconnector for Answers<'_> {
    type Up = Conn;

    async fn read(up: &mut Conn) -> SourceEvent {
        play(up.start, &mut up.script).await
    }

    async fn close(up: &mut Conn) {
        up.script.clear();
    }

    fn peer(_: &Conn) -> &dyn std::fmt::Display {
        &"scripted"
    }

    async fn reconnect(&self, last_id: Option<&[u8]>) -> Result<Conn, String> {
        let at = (Instant::now() - self.start).as_millis();
        self.calls
            .lock()
            .unwrap()
            .push((at, last_id.map(<[u8]>::to_vec)));
        let answer = self.answers.lock().unwrap().pop_front();
        answer.unwrap_or_else(|| Err("no answer left".into()))
    }

    async fn release(&self, _old: Conn) {}

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn base(&self, retry_ms: Option<u64>) -> Duration {
        retry_ms.map_or(self.backoff, Duration::from_millis)
    }

    fn metrics(&self) -> &ResumeMetrics {
        self.metrics
    }
}

/// Runs `relay` over the real `Resuming`, with `up` first and `answers`
/// for each reconnection; no shutdown.
async fn run_resuming(
    start: Instant,
    up: &mut Conn,
    answers: &Answers<'_>,
    client: &mut Memory,
    policy: &StreamPolicy,
    seed: u64,
) -> Run {
    let metrics = Metrics::new().expect("metrics");
    let route = metrics.route("test").expect("route metrics");
    let (_tx, rx) = watch::channel(false);
    let mut source = Resuming::new(up, answers);
    let rng = StdRng::seed_from_u64(seed);
    let (end, stats) = relay(client, &mut source, policy, false, &rx, route.relay(), rng).await;
    Run {
        end,
        stats,
        ended_ms: (Instant::now() - start).as_millis(),
    }
}

#[tokio::test(start_paused = true)]
async fn resuming_retries_with_doubling_backoff_then_continues_without_the_new_bom() {
    let start = Instant::now();
    let metrics = Metrics::new().expect("metrics");
    let route = metrics.route("test").expect("route metrics");
    let mut up = Conn::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"id: 1\ndata: a\n\n")),
            (secs(5), Item::Fail),
        ],
    );
    let resumed = Conn::new(
        start,
        vec![
            // Due at once: the new response's body, opening with a BOM.
            (secs(0), Item::Chunk(b"\xEF\xBB\xBFid: 2\ndata: b\n\n")),
            (secs(40), Item::Done),
        ],
    );
    let answers = Answers {
        start,
        answers: Mutex::new(VecDeque::from([Err("refused".into()), Ok(resumed)])),
        calls: Mutex::new(Vec::new()),
        attempts: 3,
        backoff: secs(2),
        metrics: route.resume(),
    };
    let mut client = Memory::default();
    let r = run_resuming(start, &mut up, &answers, &mut client, &policy(), 11).await;
    // resume_backoff 2 s: attempt 1 after 2 s + 0..=1 s, attempt 2 after
    // 4 s + 0..=2 s, drawn in that order from seed 11.
    let mut mirror = StdRng::seed_from_u64(11);
    let first = 5_000 + 2_000 + u128::from(mirror.gen_range(0..=1_000u64));
    let second = first + 4_000 + u128::from(mirror.gen_range(0..=2_000u64));
    let calls = answers.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [(first, Some(b"1".to_vec())), (second, Some(b"1".to_vec()))]
    );
    // No heartbeat while waiting (the first would be due at 16 s); the
    // resumption restarts the silence clock.
    assert_eq!(
        client.log(start),
        [
            (1_000, "id: 1\ndata: a\n\n"),
            (second, "id: 2\ndata: b\n\n"),
            (second + 15_000, ":\n\n"),
        ]
    );
    assert_eq!(r.end, StreamEnd::UpstreamDone);
    assert_eq!(r.ended_ms, 40_000);
    assert_eq!((r.stats.resumes, r.stats.events), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn resuming_honours_the_upstream_retry_and_gives_up_after_its_attempts() {
    let start = Instant::now();
    let metrics = Metrics::new().expect("metrics");
    let route = metrics.route("test").expect("route metrics");
    let mut up = Conn::new(
        start,
        vec![
            (secs(1), Item::Chunk(b"retry: 500\nid: 7\ndata: a\n\n")),
            (secs(5), Item::Fail),
        ],
    );
    let answers = Answers {
        start,
        answers: Mutex::new(VecDeque::new()),
        calls: Mutex::new(Vec::new()),
        attempts: 3,
        backoff: secs(2),
        metrics: route.resume(),
    };
    let mut client = Memory::default();
    let r = run_resuming(start, &mut up, &answers, &mut client, &policy(), 5).await;
    // The upstream's `retry: 500` replaces resume_backoff: waits of
    // 500 ms, 1 s and 2 s, each plus up to half of it, then `retry:`
    // with 500 ms plus up to 250 ms, drawn in that order from seed 5.
    let mut mirror = StdRng::seed_from_u64(5);
    let mut at = 5_000;
    let mut expected = Vec::new();
    for wait in [500u64, 1_000, 2_000] {
        at += u128::from(wait + mirror.gen_range(0..=wait / 2));
        expected.push((at, Some(b"7".to_vec())));
    }
    let retry = format!("retry: {}\n\n", 500 + mirror.gen_range(0..=250u64));
    assert_eq!(*answers.calls.lock().unwrap(), expected);
    assert_eq!(
        client.log(start),
        [
            (1_000, "retry: 500\nid: 7\ndata: a\n\n"),
            (at, retry.as_str())
        ]
    );
    assert_eq!(r.end, StreamEnd::ResumeFailed);
    assert_eq!(r.ended_ms, at);
    assert_eq!(client.finished, Some(start + ms(at as u64)));
    assert_eq!(r.stats.resumes, 0);
}

//! Where a stream's bytes come from and where they go, as the relay sees
//! them: a [`Source`] of upstream chunks and a [`Sink`](super::Sink) for
//! the client. The relay is generic over both, so each stream runs with
//! static dispatch on its hot path, and tests run it in memory.
//!
//! Sources today: [`Direct`] (one upstream connection) and
//! `resume::Resuming` (an upstream connection replaced after a failure).
//! A source fed by another task (a shared subscription) fits the same
//! shape: `next` is a channel receive, `recover` and `settle` keep their
//! do-nothing defaults.

use std::future::Future;

use bytes::Bytes;
use rand::{Error, RngCore};

use crate::outcome::StreamEnd;
use crate::sse::Framer;
use crate::upstream::Connected;

/// What a source has for the relay.
#[derive(Debug)]
pub enum SourceEvent {
    /// The next upstream bytes, in order (possibly empty).
    Chunk(Bytes),
    /// Whole events, `.1` of them dispatched, cut at event boundaries by
    /// whoever read them (a shared stream's ring): relayed without being
    /// framed again, since the stream stands at an event boundary after them.
    Whole(Bytes, u64),
    /// The upstream finished its response.
    Done,
    /// The upstream failed.
    Failed(Box<pingora_error::Error>),
    /// The source changed state on its own (a reconnection finished) and
    /// has a step to take outside the relay's `select!`: call [`Source::settle`].
    Settle,
}

/// What [`Source::settle`] did.
#[derive(Debug)]
pub enum Settled {
    /// Nothing for the relay to do.
    Continue,
    /// A new upstream connection continues the stream from here.
    Resumed,
    /// The source ends the stream: write these bytes (a `retry:` hint, at
    /// an event boundary), then end it as given (`ResumeFailed` when a
    /// resume gave up, `Overflow` when a shared subscriber fell behind).
    End(Bytes, StreamEnd),
}

/// The upstream side of a stream.
pub trait Source {
    /// The next thing the upstream has. Must be cancel-safe: the relay
    /// drops it half-way whenever another branch of its `select!` wins.
    fn next(&mut self) -> impl Future<Output = SourceEvent> + Send;

    /// Whether the idle timeout counts now (a source busy reconnecting
    /// bounds its silence by its own attempts).
    fn idle_applies(&self) -> bool {
        true
    }

    /// The upstream failed or fell silent (`why`). Returns `true` when the
    /// source carries on from another upstream (it is then recovering, and
    /// has logged `why`), `false` when the stream ends. `framer`: what the
    /// client has received; `at_boundary`: whether it stands between events.
    fn recover<R: rand::Rng + Send>(
        &mut self,
        why: &str,
        framer: &Framer,
        at_boundary: bool,
        rng: &mut R,
    ) -> impl Future<Output = bool> + Send {
        let _ = (why, framer, at_boundary, rng);
        async { false }
    }

    /// Takes the step announced by [`SourceEvent::Settle`].
    fn settle<R: rand::Rng + Send>(
        &mut self,
        framer: &Framer,
        rng: &mut R,
    ) -> impl Future<Output = Settled> + Send {
        let _ = (framer, rng);
        async { Settled::Continue }
    }
}

/// One upstream connection, relayed until it ends.
pub struct Direct<'a> {
    up: &'a mut Connected,
}

impl<'a> Direct<'a> {
    pub fn new(up: &'a mut Connected) -> Self {
        Direct { up }
    }
}

impl Source for Direct<'_> {
    async fn next(&mut self) -> SourceEvent {
        body_event(self.up.session.read_response_body().await)
    }
}

/// One read of an upstream response body, as a [`SourceEvent`].
pub fn body_event(read: pingora_error::Result<Option<Bytes>>) -> SourceEvent {
    match read {
        Ok(Some(chunk)) => SourceEvent::Chunk(chunk),
        Ok(None) => SourceEvent::Done,
        Err(e) => SourceEvent::Failed(e),
    }
}

/// The thread's RNG (`rand::thread_rng`), fetched at each draw. Unlike
/// `ThreadRng` it is `Send` and zero-sized, so a stream's task holds it
/// across awaits for free; tests give the relay a seeded RNG instead.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRng;

impl RngCore for LocalRng {
    fn next_u32(&mut self) -> u32 {
        rand::thread_rng().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        rand::thread_rng().next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::thread_rng().fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        rand::thread_rng().try_fill_bytes(dest)
    }
}

//! A subscriber's side of a shared stream, as the relay's
//! [`Source`](super::super::stream::Source).
//!
//! [`Subscription`] is a position in the hub's ring: `next` reads every
//! whole event from there on (one write for all that are waiting), or
//! waits for the hub's wake-up. It holds no buffer of its own: the ring is
//! the only queue. A subscriber that falls more than half the ring behind
//! is ended with a `retry:` (`overflow = "disconnect"`), or moved to the
//! newest event (`overflow = "skip"`).
//!
//! [`Switching`] serves a subscriber whose Last-Event-ID was not in the
//! ring: its own upstream request, cut into whole events, until an id it
//! receives is found in the ring; from there it reads the ring, and its own
//! upstream connection is dropped.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora_error::{Error, ErrorType};
use rand::Rng;

use super::super::stream::{body_event, retry_hint, Settled, Source, SourceEvent};
use super::{Hub, Position, Upstream};
use crate::config::Overflow;
use crate::outcome::StreamEnd;
use crate::share::cut::{Cutter, Piece};
use crate::share::ring::Read;
use crate::sse::Framer;
use crate::upstream::Connected;

/// The most bytes one read from the ring hands to one client write.
const MAX_BATCH: usize = 64 * 1024;

/// A request counted on a hub (see `Shares::find`): uncounted when dropped.
pub struct Membership {
    pub(super) hub: Arc<Hub>,
}

impl Membership {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.unsubscribe();
    }
}

/// One subscriber's position in a shared stream.
pub struct Subscription {
    member: Membership,
    cursor: Cursor,
}

/// Where a subscriber stands in its hub's ring.
struct Cursor {
    /// The ring position of the next event to deliver.
    pos: u64,
    /// The generation of the hub's upstream this subscriber reads.
    generation: u64,
    overflow: Overflow,
    /// Events skipped with `overflow = "skip"`.
    skipped: u64,
    /// The hub's version when this subscriber last had everything.
    /// (`u64::MAX`: not yet.)
    seen: u64,
    /// Joined more than half the ring back (a replay from deep in it): not
    /// overflowed for that until it has caught up to within half the ring,
    /// only if the ring drops its position.
    catching_up: bool,
}

impl Subscription {
    /// Reads the hub of `member` from `at` (see [`Hub::position`]).
    pub fn new(member: Membership, at: Position, overflow: Overflow) -> Self {
        member.hub.metrics.subscribers.inc();
        let catching_up = member.hub.state().ring.overflowed(at.pos);
        Subscription {
            member,
            cursor: Cursor {
                pos: at.pos,
                generation: at.generation,
                overflow,
                skipped: 0,
                seen: u64::MAX,
                catching_up,
            },
        }
    }

    /// Events skipped so far (`overflow = "skip"`).
    pub fn skipped(&self) -> u64 {
        self.cursor.skipped
    }
}

impl Cursor {
    /// What `hub`'s ring has for this subscriber now; `None`: wait.
    fn poll(&mut self, hub: &Hub) -> Option<SourceEvent> {
        // Read before the lock: anything the hub does after moves it on.
        let version = hub.version();
        if self.seen == version {
            return None;
        }
        let st = hub.state();
        // Where this subscriber's generation ended, if it did.
        let end = match st.ended_at {
            Some((g, at, end)) if g == self.generation => Some((at, end)),
            // Ended, re-opened and ended again since: end here.
            Some((g, _, end)) if g > self.generation => Some((self.pos, end)),
            _ => None,
        };
        let until = end.map_or(u64::MAX, |(at, _)| at);
        let behind = self.pos < until && st.ring.overflowed(self.pos);
        self.catching_up &= behind;
        if behind && !self.catching_up || st.ring.tail() > self.pos {
            match self.overflow {
                Overflow::Disconnect => {
                    hub.metrics.overflow_disconnects.inc();
                    return Some(SourceEvent::Settle);
                }
                Overflow::Skip => {
                    let newest = st.ring.head().saturating_sub(1).max(st.ring.tail());
                    let skipped = newest.saturating_sub(self.pos);
                    self.skipped += skipped;
                    hub.metrics.overflow_skips.inc();
                    hub.metrics.skipped.inc_by(skipped);
                    self.pos = newest;
                }
            }
        }
        if self.pos < until {
            // Up to where this generation ended, one piece at a time (a read
            // of at most 0 bytes gives exactly one piece).
            let max = if end.is_some() { 0 } else { MAX_BATCH };
            if let Read::Data {
                bytes,
                next,
                events,
                ..
            } = st.ring.read(self.pos, max)
            {
                self.pos = next;
                self.catching_up &= st.ring.overflowed(next);
                if next == st.ring.head() {
                    self.seen = version;
                }
                return Some(SourceEvent::Whole(bytes, events));
            }
        }
        match end {
            Some((at, end)) if self.pos >= at => Some(ended(end)),
            _ => {
                self.seen = version;
                None
            }
        }
    }
}

/// What a subscriber gets when its hub's upstream ended as `end`.
fn ended(end: StreamEnd) -> SourceEvent {
    if end.is_clean() {
        SourceEvent::Done
    } else {
        SourceEvent::Failed(Error::explain(
            ErrorType::ReadError,
            "the shared stream's upstream failed",
        ))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.member.hub.metrics.subscribers.dec();
    }
}

impl Source for Subscription {
    /// Cancel-safe: the position moves only when bytes are returned. The
    /// ring is looked at without waiting first; only when it has nothing is
    /// the wake-up registered, and the ring looked at again (the hub may
    /// have pushed in between).
    async fn next(&mut self) -> SourceEvent {
        let hub = &self.member.hub;
        loop {
            if let Some(event) = self.cursor.poll(hub) {
                return event;
            }
            let woken = hub.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(event) = self.cursor.poll(hub) {
                return event;
            }
            woken.await;
        }
    }

    /// The hub's own relay watches the upstream's silence.
    fn idle_applies(&self) -> bool {
        false
    }

    /// Only an overflow with `overflow = "disconnect"` settles: the
    /// subscriber stands at an event boundary (it only ever received whole
    /// events), so it ends there with a jittered `retry:`.
    async fn settle<R: Rng + Send>(&mut self, _framer: &Framer, rng: &mut R) -> Settled {
        let (base, jitter) = self.member.hub.retry;
        Settled::End(retry_hint(base, jitter, rng), StreamEnd::Overflow)
    }
}

/// A subscriber whose Last-Event-ID missed the ring: its own upstream
/// request until it can move to the shared stream.
pub struct Switching {
    /// The subscriber's own upstream, until it switches.
    up: Option<Connected>,
    /// Its place on the hub, until it switches (then in `shared`).
    member: Option<Membership>,
    shared: Option<Subscription>,
    cutter: Cutter,
    pieces: Vec<Piece>,
    overflow: Overflow,
}

impl Switching {
    pub fn new(up: Connected, member: Membership, overflow: Overflow) -> Self {
        Switching {
            up: Some(up),
            member: Some(member),
            shared: None,
            cutter: Cutter::new(),
            pieces: Vec::new(),
            overflow,
        }
    }

    /// The subscriber's own upstream, if it has not switched: to be released.
    pub fn take_upstream(&mut self) -> Option<Connected> {
        self.up.take()
    }

    /// Events skipped after the switch (`overflow = "skip"`).
    pub fn skipped(&self) -> u64 {
        self.shared.as_ref().map_or(0, Subscription::skipped)
    }

    /// The whole events in `self.pieces`, up to the first whose id is in the
    /// ring of a live hub; then the switch to the ring, after that event.
    fn deliver(&mut self) -> Bytes {
        let mut switch = None;
        if let Some(member) = &self.member {
            let st = member.hub.state();
            if st.upstream == Upstream::Live {
                let mut checked: Option<&Arc<[u8]>> = None;
                for (i, piece) in self.pieces.iter().enumerate() {
                    let Some(id) = &piece.last_id else { continue };
                    if checked.is_some_and(|c| Arc::ptr_eq(c, id) || **c == **id) {
                        continue;
                    }
                    checked = Some(id);
                    if let Some(pos) = st.ring.find_after(id) {
                        let generation = st.generation;
                        switch = Some((i, Position { pos, generation }));
                        break;
                    }
                }
            }
        }
        let upto = switch.map_or(self.pieces.len(), |(i, _)| i + 1);
        let out = concat(&self.pieces[..upto]);
        self.pieces.clear();
        if let Some((_, at)) = switch {
            if let Some(member) = self.member.take() {
                self.shared = Some(Subscription::new(member, at, self.overflow));
                // What the own upstream would send next, the ring has.
                drop(self.up.take());
            }
        }
        out
    }
}

/// One buffer holding `pieces` in order (no copy for a single piece).
fn concat(pieces: &[Piece]) -> Bytes {
    match pieces {
        [] => Bytes::new(),
        [one] => one.bytes.clone(),
        many => {
            let len = many.iter().map(|p| p.bytes.len()).sum();
            let mut out = BytesMut::with_capacity(len);
            for p in many {
                out.extend_from_slice(&p.bytes);
            }
            out.freeze()
        }
    }
}

impl Source for Switching {
    /// Cancel-safe: a read that completed has been cut into `pieces`
    /// before the next await.
    async fn next(&mut self) -> SourceEvent {
        loop {
            if let Some(shared) = &mut self.shared {
                return shared.next().await;
            }
            let Some(up) = self.up.as_mut() else {
                return SourceEvent::Done;
            };
            match body_event(up.session.read_response_body().await) {
                SourceEvent::Chunk(chunk) => {
                    self.cutter.cut(&chunk, &mut self.pieces);
                    if self.pieces.is_empty() {
                        // Only part of an event so far.
                        continue;
                    }
                    return SourceEvent::Chunk(self.deliver());
                }
                other => return other,
            }
        }
    }

    fn idle_applies(&self) -> bool {
        self.shared.is_none()
    }

    async fn settle<R: Rng + Send>(&mut self, framer: &Framer, rng: &mut R) -> Settled {
        match &mut self.shared {
            Some(shared) => shared.settle(framer, rng).await,
            None => Settled::Continue,
        }
    }
}

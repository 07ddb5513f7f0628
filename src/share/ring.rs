//! One shared stream's recent pieces, and where its subscribers stand.
//!
//! This module owns the only queue of a shared stream: the [`Ring`] holds
//! each [`Piece`] once (its bytes reference counted), and a subscriber is no
//! more than a position in it, a `u64` sequence number (the first piece ever
//! pushed is 0). Delivery reads from a position ([`Ring::read`]), a
//! reconnecting subscriber finds its position from its Last-Event-ID
//! ([`Ring::find_after`]), and one that lags too far is told so
//! ([`Ring::overflowed`], [`Read::Behind`]). Pure: no I/O, no clock, no lock
//! (the caller holds the stream's lock around it).
//!
//! The ring keeps at least [`DELIVERY_EVENTS`] pieces and [`DELIVERY_BYTES`]
//! bytes for delivery, and more when the route's replay limits ask for more.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::cut::Piece;

/// The ring always holds at least this many pieces (the newest ones) for
/// delivery to subscribers, even with `replay_events = 0`...
pub const DELIVERY_EVENTS: usize = 64;

/// ...and at least this many bytes.
pub const DELIVERY_BYTES: usize = 64 * 1024;

/// How much of the stream reconnecting subscribers may replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// The newest pieces searched for a Last-Event-ID; 0 turns replay off.
    pub replay_events: usize,
    /// Bytes those pieces may take at most.
    pub replay_bytes: usize,
}

/// What [`Ring::read`] finds at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Pieces from `from` on, concatenated when more than one (one `Bytes`,
    /// so that the caller does one write), at most `max_bytes` unless the
    /// first piece alone is larger; `next` is the position after them;
    /// `events`: how many of them dispatched an event.
    Data {
        bytes: Bytes,
        next: u64,
        pieces: u64,
        events: u64,
    },
    /// Nothing newer than `from` yet.
    Empty,
    /// `from` was evicted: the subscriber fell behind the ring. `tail` is the
    /// oldest position held.
    Behind { tail: u64 },
}

/// A piece held, with where it starts in the stream's bytes.
#[derive(Debug, Clone)]
struct Slot {
    piece: Piece,
    /// Bytes pushed before this piece, since the ring was made.
    start: u64,
}

/// The recent pieces of one shared stream; see the module documentation.
#[derive(Debug, Clone)]
pub struct Ring {
    limits: RingLimits,
    /// Pieces held at most: `max(replay_events, DELIVERY_EVENTS)`.
    capacity_events: usize,
    /// Bytes held at most, but for a newest piece larger than that alone:
    /// `max(replay_bytes, DELIVERY_BYTES)`.
    capacity_bytes: usize,
    slots: VecDeque<Slot>,
    /// The position of the oldest piece held (of the next one pushed when
    /// none is).
    tail: u64,
    /// Bytes of the pieces held.
    bytes: usize,
    /// Bytes ever pushed.
    pushed_bytes: u64,
    /// The last event ID after the newest evicted piece: what a client that
    /// read up to the tail holds.
    before_tail: Option<Arc<[u8]>>,
}

impl Ring {
    /// An empty ring whose next push is position 0.
    pub fn new(limits: RingLimits) -> Ring {
        Ring {
            limits,
            capacity_events: limits.replay_events.max(DELIVERY_EVENTS),
            capacity_bytes: limits.replay_bytes.max(DELIVERY_BYTES),
            slots: VecDeque::new(),
            tail: 0,
            bytes: 0,
            pushed_bytes: 0,
            before_tail: None,
        }
    }

    /// Appends a piece, then evicts the oldest ones while the ring holds more
    /// than `max(replay_events, DELIVERY_EVENTS)` pieces or more than
    /// `max(replay_bytes, DELIVERY_BYTES)` bytes, but never the newest piece.
    /// Returns the piece's position.
    pub fn push(&mut self, piece: Piece) -> u64 {
        let len = piece.bytes.len();
        let position = self.head();
        self.slots.push_back(Slot {
            piece,
            start: self.pushed_bytes,
        });
        self.bytes = self.bytes.saturating_add(len);
        self.pushed_bytes = self.pushed_bytes.saturating_add(len as u64);
        while self.slots.len() > 1
            && (self.slots.len() > self.capacity_events || self.bytes > self.capacity_bytes)
        {
            let Some(old) = self.slots.pop_front() else {
                break;
            };
            self.bytes -= old.piece.bytes.len();
            self.before_tail = old.piece.last_id;
            self.tail += 1;
        }
        position
    }

    /// The position the next push gets, where live subscribers join.
    pub fn head(&self) -> u64 {
        self.tail + self.slots.len() as u64
    }

    /// The oldest position held (equal to [`Ring::head`] when empty).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Where a subscriber whose Last-Event-ID is `id` continues: the position
    /// just after the piece that set that id, or `None` (a miss).
    ///
    /// Ids are opaque bytes, matched exactly; `b""` matches a piece whose
    /// last id is `Some(b"")`, never one with none. Only the newest
    /// `replay_events` pieces that fit, all together, in `replay_bytes` bytes
    /// are searched, so `replay_events = 0` never hits. The piece that set
    /// the id is the oldest of the newest run of consecutive pieces whose
    /// last id is `id` (later ones only repeat it: heartbeats, or events
    /// without `id`, which the client may not have had). When that run
    /// reaches back to the oldest piece searched and the id before that piece
    /// (a piece not searched, or the last one evicted) is `id` too, the
    /// setting piece lies out of reach: a miss, never a guess. O(pieces
    /// searched).
    pub fn find_after(&self, id: &[u8]) -> Option<u64> {
        let mut bytes = 0usize;
        // The oldest piece, so far, of the newest run matching `id`.
        let mut run_start: Option<usize> = None;
        let window = self.slots.iter().enumerate().rev();
        for (index, slot) in window.take(self.limits.replay_events) {
            bytes = bytes.saturating_add(slot.piece.bytes.len());
            if bytes > self.limits.replay_bytes {
                break;
            }
            if slot.piece.last_id.as_deref() == Some(id) {
                run_start = Some(index);
            } else if let Some(start) = run_start {
                // This piece left another id: the one after it set `id`.
                return Some(self.tail + start as u64 + 1);
            }
        }
        let start = run_start?;
        let before = match start.checked_sub(1) {
            Some(previous) => self
                .slots
                .get(previous)
                .and_then(|slot| slot.piece.last_id.as_deref()),
            None => self.before_tail.as_deref(),
        };
        if before == Some(id) {
            None
        } else {
            Some(self.tail + start as u64 + 1)
        }
    }

    /// The pieces from position `from` on: see [`Read`]. O(pieces read).
    pub fn read(&self, from: u64, max_bytes: usize) -> Read {
        if from < self.tail {
            return Read::Behind { tail: self.tail };
        }
        let Some(first_index) = self.index(from) else {
            return Read::Empty;
        };
        let mut run = self.slots.range(first_index..);
        let Some(first) = run.next() else {
            return Read::Empty;
        };
        let mut total = first.piece.bytes.len();
        let mut pieces = 1usize;
        let mut events = u64::from(first.piece.dispatched);
        for slot in run {
            let len = slot.piece.bytes.len();
            match total.checked_add(len) {
                Some(sum) if sum <= max_bytes => total = sum,
                _ => break,
            }
            pieces += 1;
            events += u64::from(slot.piece.dispatched);
        }
        let bytes = if pieces == 1 {
            first.piece.bytes.clone()
        } else {
            let mut joined = BytesMut::with_capacity(total);
            for slot in self.slots.range(first_index..first_index + pieces) {
                joined.extend_from_slice(&slot.piece.bytes);
            }
            joined.freeze()
        };
        Read::Data {
            bytes,
            next: from + pieces as u64,
            pieces: pieces as u64,
            events,
        }
    }

    /// The last event ID after the newest piece: what a resumed upstream
    /// request sends as Last-Event-ID. `None` before any id (or after one
    /// longer than the framer keeps).
    pub fn newest_id(&self) -> Option<&Arc<[u8]>> {
        match self.slots.back() {
            Some(slot) => slot.piece.last_id.as_ref(),
            None => self.before_tail.as_ref(),
        }
    }

    /// Whether a subscriber at `pos` is more than half the ring behind: more
    /// than `capacity_events / 2` pieces, or more than `capacity_bytes / 2`
    /// bytes, between `pos` and the head (capacities as in [`Ring::push`]).
    /// True when `pos` was evicted already. O(1).
    pub fn overflowed(&self, pos: u64) -> bool {
        if pos < self.tail {
            return true;
        }
        let Some(slot) = self.index(pos).and_then(|index| self.slots.get(index)) else {
            return false;
        };
        let events = self.head() - pos;
        let bytes = self.pushed_bytes - slot.start;
        events > (self.capacity_events / 2) as u64 || bytes > (self.capacity_bytes / 2) as u64
    }

    /// Pieces held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of the pieces held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no piece is held (only before the first push).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The index in `slots` of position `pos`, if held.
    fn index(&self, pos: u64) -> Option<usize> {
        let offset = usize::try_from(pos.checked_sub(self.tail)?).ok()?;
        (offset < self.slots.len()).then_some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece(bytes: &[u8], id: Option<&[u8]>) -> Piece {
        Piece {
            bytes: Bytes::copy_from_slice(bytes),
            last_id: id.map(Arc::from),
            dispatched: true,
        }
    }

    fn sized(len: usize, id: Option<&[u8]>) -> Piece {
        piece(&vec![b'x'; len], id)
    }

    fn new_ring(replay_events: usize, replay_bytes: usize) -> Ring {
        Ring::new(RingLimits {
            replay_events,
            replay_bytes,
        })
    }

    /// A ring holding pieces with these ids, one byte each.
    fn with_ids(replay_events: usize, ids: &[Option<&[u8]>]) -> Ring {
        let mut ring = new_ring(replay_events, 1 << 20);
        for id in ids {
            ring.push(sized(1, *id));
        }
        ring
    }

    #[test]
    fn positions_start_at_zero() {
        let mut ring = new_ring(10, 1000);
        assert!(ring.is_empty());
        assert_eq!(
            (ring.tail(), ring.head(), ring.len(), ring.bytes()),
            (0, 0, 0, 0)
        );
        assert_eq!(ring.push(piece(b"a\n\n", None)), 0);
        assert_eq!(ring.push(piece(b"bb\n\n", None)), 1);
        assert_eq!(
            (ring.tail(), ring.head(), ring.len(), ring.bytes()),
            (0, 2, 2, 7)
        );
        assert!(!ring.is_empty());
    }

    #[test]
    fn evicts_by_count() {
        let mut ring = new_ring(0, 0);
        for i in 0..DELIVERY_EVENTS as u64 + 10 {
            assert_eq!(ring.push(sized(1, None)), i);
        }
        assert_eq!(ring.len(), DELIVERY_EVENTS);
        assert_eq!(ring.tail(), 10);
        assert_eq!(ring.head(), DELIVERY_EVENTS as u64 + 10);
        // replay_events above the delivery floor raises the count.
        let mut ring = new_ring(1000, 0);
        for _ in 0..1500 {
            ring.push(sized(1, None));
        }
        assert_eq!((ring.len(), ring.tail()), (1000, 500));
    }

    #[test]
    fn evicts_by_bytes() {
        let mut ring = new_ring(1000, 0);
        for _ in 0..5 {
            ring.push(sized(DELIVERY_BYTES / 4, None));
        }
        assert_eq!(
            (ring.len(), ring.bytes(), ring.tail()),
            (4, DELIVERY_BYTES, 1)
        );
        ring.push(sized(1, None));
        assert_eq!((ring.len(), ring.bytes()), (4, 3 * DELIVERY_BYTES / 4 + 1));
        // replay_bytes above the delivery floor raises the bytes.
        let mut ring = new_ring(1000, 4 * DELIVERY_BYTES);
        for _ in 0..20 {
            ring.push(sized(DELIVERY_BYTES / 4, None));
        }
        assert_eq!((ring.len(), ring.bytes()), (16, 4 * DELIVERY_BYTES));
    }

    #[test]
    fn never_evicts_the_newest() {
        let mut ring = new_ring(0, 0);
        ring.push(sized(10, Some(b"1")));
        assert_eq!(ring.push(sized(3 * DELIVERY_BYTES, Some(b"2"))), 1);
        assert_eq!(
            (ring.len(), ring.tail(), ring.bytes()),
            (1, 1, 3 * DELIVERY_BYTES)
        );
        assert_eq!(ring.newest_id().map(|id| &id[..]), Some(&b"2"[..]));
        assert!(matches!(
            ring.read(1, 10),
            Read::Data {
                pieces: 1,
                next: 2,
                ..
            }
        ));
        // The next push evicts it.
        ring.push(sized(1, None));
        assert_eq!((ring.len(), ring.tail(), ring.bytes()), (1, 2, 1));
        assert_eq!(ring.newest_id(), None);
    }

    #[test]
    fn find_after_hits() {
        let ring = with_ids(100, &[Some(b"1"), Some(b"2"), Some(b"3")]);
        assert_eq!(ring.find_after(b"1"), Some(1));
        assert_eq!(ring.find_after(b"2"), Some(2));
        assert_eq!(ring.find_after(b"3"), Some(3), "up to date: the head");
        assert_eq!(ring.find_after(b"4"), None, "unknown");
        assert_eq!(ring.find_after(b""), None);
        assert_eq!(ring.find_after(b"1 "), None, "matched exactly");
    }

    #[test]
    fn find_after_takes_the_oldest_of_the_newest_run() {
        // Pieces 1 and 2 only repeat id 5 (heartbeats, events without id):
        // a client holding 5 may have missed them, so it gets them again.
        let ring = with_ids(100, &[None, Some(b"5"), Some(b"5"), Some(b"5"), Some(b"6")]);
        assert_eq!(ring.find_after(b"5"), Some(2));
        // A repeated id: the newest run wins.
        let ring = with_ids(
            100,
            &[Some(b"a"), Some(b"b"), Some(b"a"), Some(b"a"), Some(b"c")],
        );
        assert_eq!(ring.find_after(b"a"), Some(3));
        assert_eq!(ring.find_after(b"b"), Some(2));
        // A run at the very start of the stream is held whole.
        let ring = with_ids(100, &[Some(b"a"), Some(b"a")]);
        assert_eq!(ring.find_after(b"a"), Some(1));
    }

    #[test]
    fn find_after_misses_an_evicted_run() {
        // Ids 0, 1, 1, ..., 1 (DELIVERY_EVENTS + 1 of them): piece 1 set id 1.
        let mut replay = new_ring(DELIVERY_EVENTS, 1 << 20);
        replay.push(sized(1, Some(b"0")));
        for _ in 0..=DELIVERY_EVENTS {
            replay.push(sized(1, Some(b"1")));
        }
        assert_eq!(replay.tail(), 2);
        assert_eq!(replay.find_after(b"1"), None, "piece 1 was evicted");
        replay.push(sized(1, Some(b"2")));
        assert_eq!(replay.find_after(b"1"), None);
        assert_eq!(replay.find_after(b"2"), Some(replay.head()));
        // A run reaching the tail is whole when the evicted piece had another id.
        let mut whole = new_ring(DELIVERY_EVENTS, 1 << 20);
        for _ in 0..DELIVERY_EVENTS {
            whole.push(sized(1, Some(b"0")));
        }
        whole.push(sized(1, Some(b"1")));
        assert_eq!(whole.tail(), 1);
        assert_eq!(whole.find_after(b"0"), None, "piece 0 set it, evicted");
        assert_eq!(whole.find_after(b"1"), Some(whole.head()));
        let mut changed = new_ring(DELIVERY_EVENTS, 1 << 20);
        changed.push(sized(1, Some(b"x")));
        for _ in 0..DELIVERY_EVENTS {
            changed.push(sized(1, Some(b"0")));
        }
        assert_eq!(changed.tail(), 1);
        assert_eq!(changed.find_after(b"0"), Some(2), "piece 1 set it, held");
        assert_eq!(changed.find_after(b"x"), None);
    }

    #[test]
    fn find_after_searches_only_the_replay_window() {
        // Five pieces, but only the newest three are searched.
        let ring = with_ids(
            3,
            &[Some(b"1"), Some(b"2"), Some(b"3"), Some(b"4"), Some(b"5")],
        );
        assert_eq!(ring.len(), 5, "held for delivery");
        assert_eq!(ring.find_after(b"3"), Some(3));
        assert_eq!(ring.find_after(b"2"), None);
        // The run reaching past the window: its setting piece is out of reach.
        let ring = with_ids(2, &[Some(b"1"), Some(b"2"), Some(b"2"), Some(b"2")]);
        assert_eq!(ring.find_after(b"2"), None);
        let ring = with_ids(3, &[Some(b"1"), Some(b"2"), Some(b"2"), Some(b"2")]);
        assert_eq!(ring.find_after(b"2"), Some(2));
        // By bytes: pieces of 10 bytes, 25 bytes searched = the newest two.
        let mut ring = new_ring(100, 25);
        for id in [&b"1"[..], b"2", b"3"] {
            ring.push(sized(10, Some(id)));
        }
        assert_eq!(ring.find_after(b"2"), Some(2));
        assert_eq!(ring.find_after(b"1"), None);
        // A newest piece larger than replay_bytes is out of the window.
        let mut ring = new_ring(100, 5);
        ring.push(sized(6, Some(b"1")));
        assert_eq!(ring.find_after(b"1"), None);
    }

    #[test]
    fn find_after_never_hits_without_replay() {
        let ring = with_ids(0, &[Some(b"1"), Some(b"2")]);
        assert_eq!(ring.find_after(b"2"), None);
        assert_eq!(ring.find_after(b"1"), None);
    }

    #[test]
    fn find_after_empty_ids() {
        let ring = with_ids(100, &[Some(b"1"), Some(b""), None, Some(b"")]);
        assert_eq!(ring.find_after(b""), Some(4));
        let ring = with_ids(100, &[Some(b"1"), Some(b""), Some(b""), None]);
        assert_eq!(ring.find_after(b""), Some(2));
        let ring = with_ids(100, &[None, None]);
        assert_eq!(ring.find_after(b""), None, "no id is not the empty id");
        assert_eq!(new_ring(100, 100).find_after(b""), None);
    }

    #[test]
    fn read_data_empty_behind() {
        let mut ring = new_ring(0, 0);
        assert_eq!(ring.read(0, 100), Read::Empty);
        ring.push(piece(b"a\n\n", None));
        ring.push(piece(b"bb\n\n", None));
        ring.push(piece(b"ccc\n\n", None));
        assert_eq!(
            ring.read(0, 100),
            Read::Data {
                bytes: Bytes::from_static(b"a\n\nbb\n\nccc\n\n"),
                next: 3,
                pieces: 3,
                events: 3,
            }
        );
        assert_eq!(
            ring.read(1, 100),
            Read::Data {
                bytes: Bytes::from_static(b"bb\n\nccc\n\n"),
                next: 3,
                pieces: 2,
                events: 2,
            }
        );
        assert_eq!(ring.read(3, 100), Read::Empty);
        assert_eq!(ring.read(u64::MAX, 100), Read::Empty);
        for _ in 0..DELIVERY_EVENTS {
            ring.push(piece(b"d\n\n", None));
        }
        assert_eq!(ring.read(2, 100), Read::Behind { tail: 3 });
        assert_eq!(ring.read(0, 100), Read::Behind { tail: 3 });
        assert!(matches!(ring.read(3, 100), Read::Data { .. }));
    }

    #[test]
    fn read_respects_max_bytes() {
        let mut ring = new_ring(0, 0);
        for text in [&b"a\n\n"[..], b"bb\n\n", b"ccc\n\n"] {
            ring.push(piece(text, None));
        }
        let take = |from, max| match ring.read(from, max) {
            Read::Data {
                bytes,
                next,
                pieces,
                ..
            } => (bytes, next, pieces),
            other => panic!("{other:?}"),
        };
        assert_eq!(take(0, 7), (Bytes::from_static(b"a\n\nbb\n\n"), 2, 2));
        assert_eq!(take(0, 6), (Bytes::from_static(b"a\n\n"), 1, 1));
        // The first piece comes whole even when larger than max_bytes.
        assert_eq!(take(1, 0), (Bytes::from_static(b"bb\n\n"), 2, 1));
        assert_eq!(
            take(1, usize::MAX),
            (Bytes::from_static(b"bb\n\nccc\n\n"), 3, 2)
        );
    }

    #[test]
    fn a_single_piece_is_read_without_a_copy() {
        let mut ring = new_ring(0, 0);
        let one = piece(b"data: x\n\n", None);
        let at = one.bytes.as_ptr();
        ring.push(one);
        match ring.read(0, 1 << 20) {
            Read::Data { bytes, .. } => assert_eq!(bytes.as_ptr(), at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn newest_id_follows_the_pieces() {
        let mut ring = new_ring(0, 0);
        assert_eq!(ring.newest_id(), None);
        ring.push(sized(1, Some(b"7")));
        assert_eq!(ring.newest_id().map(|id| &id[..]), Some(&b"7"[..]));
        ring.push(sized(1, Some(b"")));
        assert_eq!(ring.newest_id().map(|id| &id[..]), Some(&b""[..]));
        ring.push(sized(1, None));
        assert_eq!(ring.newest_id(), None);
    }

    #[test]
    fn overflowed_thresholds() {
        // By count: capacity 64, so more than 32 pieces behind.
        let mut ring = new_ring(0, 0);
        for _ in 0..40 {
            ring.push(sized(1, None));
        }
        let head = ring.head();
        assert!(!ring.overflowed(head));
        assert!(!ring.overflowed(head + 5), "ahead of the head");
        assert!(!ring.overflowed(head - 32));
        assert!(ring.overflowed(head - 33));
        // By bytes: capacity 64 KiB, so more than 32 KiB behind.
        let mut ring = new_ring(1000, 0);
        ring.push(sized(DELIVERY_BYTES / 2, None));
        assert!(!ring.overflowed(0), "exactly half");
        ring.push(sized(1, None));
        assert!(ring.overflowed(0));
        assert!(!ring.overflowed(1));
        // A larger replay raises both.
        let mut ring = new_ring(1000, 1 << 20);
        for _ in 0..500 {
            ring.push(sized(1000, None));
        }
        assert!(!ring.overflowed(0));
        ring.push(sized(1, None));
        assert!(ring.overflowed(0), "501 behind");
        assert!(!ring.overflowed(1));
        // Evicted positions have overflowed.
        let mut ring = new_ring(0, 0);
        for _ in 0..DELIVERY_EVENTS + 1 {
            ring.push(sized(1, None));
        }
        assert!(ring.overflowed(0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { len: usize, id: Option<u8> },
        Join,
        Read { subscriber: usize, max_bytes: usize },
        Find { id: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Few ids, so that runs of one id are long and windows cut them.
            6 => (prop_oneof![1..64usize, 1..20_000usize], proptest::option::weighted(0.8, 0..2u8))
                .prop_map(|(len, id)| Op::Push { len, id }),
            1 => Just(Op::Join),
            6 => (any::<usize>(), prop_oneof![0..100usize, 0..200_000usize])
                .prop_map(|(subscriber, max_bytes)| Op::Read { subscriber, max_bytes }),
            2 => (0..3u8).prop_map(|id| Op::Find { id }),
        ]
    }

    struct Subscriber {
        joined: u64,
        at: u64,
        got: Vec<u8>,
        behind: bool,
    }

    /// `find_after` over the whole history: the setting piece is the oldest
    /// of the newest run, found in all pieces ever pushed, and a hit only
    /// when it lies in the replay window.
    fn model_find(
        history: &[(usize, Option<u8>)],
        limits: RingLimits,
        ring: &Ring,
        id: u8,
    ) -> Option<u64> {
        let newest = history.iter().rposition(|(_, i)| *i == Some(id))?;
        let start = history[..=newest]
            .iter()
            .rposition(|(_, i)| *i != Some(id))
            .map_or(0, |before| before + 1);
        let mut bytes = 0usize;
        let mut window = 0u64;
        for (len, _) in history.iter().rev().take(limits.replay_events) {
            bytes += len;
            if bytes > limits.replay_bytes {
                break;
            }
            window += 1;
        }
        let oldest_searched = (history.len() as u64 - window).max(ring.tail());
        (start as u64 >= oldest_searched).then_some(start as u64 + 1)
    }

    /// Reads once for `sub` and checks what came; false when nothing did.
    fn read_into(
        ring: &Ring,
        sub: &mut Subscriber,
        max_bytes: usize,
        pushed: &[Bytes],
    ) -> Result<bool, TestCaseError> {
        match ring.read(sub.at, max_bytes) {
            Read::Data {
                bytes,
                next,
                pieces,
                events,
            } => {
                prop_assert_eq!(next, sub.at + pieces);
                prop_assert!(events <= pieces);
                prop_assert!(pieces >= 1);
                prop_assert!(pieces == 1 || bytes.len() <= max_bytes);
                let want: Vec<u8> = pushed[sub.at as usize..next as usize].concat();
                prop_assert_eq!(&bytes[..], &want[..]);
                sub.got.extend_from_slice(&bytes);
                sub.at = next;
                Ok(true)
            }
            Read::Empty => {
                prop_assert_eq!(sub.at, ring.head());
                Ok(false)
            }
            Read::Behind { tail } => {
                prop_assert!(sub.at < tail);
                prop_assert_eq!(tail, ring.tail());
                sub.behind = true;
                Ok(false)
            }
        }
    }

    fn run(limits: RingLimits, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut ring = Ring::new(limits);
        let mut pushed: Vec<Bytes> = Vec::new();
        let mut history: Vec<(usize, Option<u8>)> = Vec::new();
        let mut subscribers: Vec<Subscriber> = Vec::new();
        for op in ops {
            match op {
                Op::Push { len, id } => {
                    let fill = b'a' + (pushed.len() % 26) as u8;
                    let bytes = Bytes::from(vec![fill; len]);
                    pushed.push(bytes.clone());
                    history.push((len, id));
                    let last_id = id.map(|i| Arc::from(vec![b'0' + i]));
                    let at = ring.push(Piece {
                        bytes,
                        last_id,
                        dispatched: true,
                    });
                    prop_assert_eq!(at, pushed.len() as u64 - 1);
                    prop_assert_eq!(ring.head(), pushed.len() as u64);
                    prop_assert!(!ring.is_empty());
                    prop_assert!(ring.len() <= limits.replay_events.max(DELIVERY_EVENTS));
                    prop_assert!(
                        ring.len() == 1 || ring.bytes() <= limits.replay_bytes.max(DELIVERY_BYTES)
                    );
                    let held: usize = pushed[ring.tail() as usize..].iter().map(Bytes::len).sum();
                    prop_assert_eq!(ring.bytes(), held);
                    let newest = ring.newest_id().map(|id| id.to_vec());
                    prop_assert_eq!(newest, id.map(|i| vec![b'0' + i]));
                }
                Op::Join => {
                    let head = ring.head();
                    subscribers.push(Subscriber {
                        joined: head,
                        at: head,
                        got: Vec::new(),
                        behind: false,
                    });
                }
                Op::Read {
                    subscriber,
                    max_bytes,
                } => {
                    let count = subscribers.len();
                    let Some(sub) = subscribers.get_mut(subscriber % count.max(1)) else {
                        continue;
                    };
                    if !sub.behind {
                        let overflowed = ring.overflowed(sub.at);
                        read_into(&ring, sub, max_bytes, &pushed)?;
                        // Eviction never outruns the overflow signal.
                        prop_assert!(!sub.behind || overflowed);
                    }
                }
                Op::Find { id } => {
                    let want = model_find(&history, limits, &ring, id);
                    prop_assert_eq!(ring.find_after(&[b'0' + id]), want);
                }
            }
        }
        for sub in &mut subscribers {
            while !sub.behind && read_into(&ring, sub, 1 << 16, &pushed)? {}
            if !sub.behind {
                let want: Vec<u8> = pushed[sub.joined as usize..].concat();
                prop_assert_eq!(&sub.got, &want);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn subscribers_get_every_piece_once_in_order(
            replay_events in prop_oneof![Just(0usize), 1..8usize, 0..200usize],
            replay_bytes in prop_oneof![Just(0usize), 0..300_000usize],
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            run(RingLimits { replay_events, replay_bytes }, ops)?;
        }
    }

    #[test]
    fn a_read_counts_the_events_among_its_pieces() {
        let mut ring = new_ring(10, 1024);
        let event = |d| Piece {
            dispatched: d,
            ..piece(b"x\n\n", None)
        };
        for d in [true, false, true, true] {
            ring.push(event(d));
        }
        match ring.read(0, 1024) {
            Read::Data { pieces, events, .. } => assert_eq!((pieces, events), (4, 3)),
            other => panic!("{other:?}"),
        }
        match ring.read(1, 4) {
            Read::Data { pieces, events, .. } => assert_eq!((pieces, events), (1, 0)),
            other => panic!("{other:?}"),
        }
    }
}

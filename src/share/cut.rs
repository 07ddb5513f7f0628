//! Upstream chunks cut into whole pieces.
//!
//! This module owns the step between a shared stream's upstream reads and its
//! [ring](super::ring): a [`Cutter`] watches the upstream bytes with a
//! [`Framer`] and cuts them at every event boundary (the end of every blank
//! line, see "Boundaries" in [`crate::sse`]). Each [`Piece`] is a run of
//! whole lines ending in a blank line, in a fresh allocation of its own, with
//! the last event ID after it; bytes past the last boundary wait in the
//! cutter until the rest of their event arrives. Pure: no I/O, no clock.
//!
//! Concatenating the pieces gives the upstream's bytes exactly (the proxy
//! never rewrites them). The cutter sets no bound on the bytes it holds:
//! the caller reads [`Cutter::pending`] after each chunk and enforces its
//! own maximum event size.

use std::sync::Arc;

use bytes::Bytes;

use crate::sse::{Boundary, Framer};

/// A held partial event whose buffer grew past this is given back to the
/// allocator once its event is complete, rather than kept for the next one.
const PENDING_KEEP: usize = 64 * 1024;

/// One cut of a shared stream: whole lines ending at an event boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The bytes, in an allocation of their own (never a slice of a read
    /// buffer, which a long-lived ring would then keep whole).
    pub bytes: Bytes,
    /// The last event ID after this piece, as [`Framer::last_event_id`]
    /// reports it at its end: `None` when no id was ever set or the last one
    /// was longer than [`crate::sse::MAX_ID_LEN`], `Some(b"")` after an empty
    /// `id`. Consecutive pieces with the same id share one allocation.
    pub last_id: Option<Arc<[u8]>>,
    /// An event fired at the piece's blank line (as opposed to comments, a
    /// heartbeat, or fields without data).
    pub dispatched: bool,
}

/// Cuts a stream fed in arbitrary chunks into [`Piece`]s; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct Cutter {
    framer: Framer,
    /// Bytes fed after the last boundary.
    pending: Vec<u8>,
    /// The last piece's id, reused while the id does not change.
    last_id: Option<Arc<[u8]>>,
    /// Scratch for [`Framer::feed_boundaries`], kept to spare an allocation
    /// per chunk.
    boundaries: Vec<Boundary>,
}

impl Cutter {
    /// A cutter at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts `chunk` at every event boundary and appends each complete piece
    /// to `out`, in order (`out` is not cleared first). A piece runs from the
    /// previous boundary, including bytes held from earlier chunks, to this
    /// one; it is a fresh allocation, never a slice of `chunk`. Bytes after
    /// the last boundary are held until a later chunk completes them.
    pub fn cut(&mut self, chunk: &[u8], out: &mut Vec<Piece>) {
        let mut boundaries = std::mem::take(&mut self.boundaries);
        boundaries.clear();
        self.framer.feed_boundaries(chunk, &mut boundaries);
        let mut start = 0;
        for boundary in boundaries.drain(..) {
            let part = chunk.get(start..boundary.end).unwrap_or_default();
            start = boundary.end;
            let bytes = self.take_piece(part);
            let last_id = self.share_id(boundary.id);
            out.push(Piece {
                bytes,
                last_id,
                dispatched: boundary.dispatched,
            });
        }
        self.boundaries = boundaries;
        self.pending
            .extend_from_slice(chunk.get(start..).unwrap_or_default());
    }

    /// Bytes held that do not end at a boundary yet: the size, so far, of
    /// the event being received.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Throws away the held partial event, keeping the last event ID: the
    /// upstream failed mid-event, and the response that resumes it starts at
    /// a boundary. The framer then stands where the last piece ended (see
    /// [`Framer::discard_partial`]). A BOM opening the resumed response is
    /// the caller's to strip before [`Cutter::cut`], as `proxy::resume` does:
    /// after earlier pieces it would be read as content.
    pub fn discard_partial(&mut self) {
        if self.pending.is_empty() {
            // The last byte fed ended a piece (or none was fed): nothing to
            // drop, and a CR that ended the last piece was delivered, so an
            // LF next still belongs to it.
            return;
        }
        self.release_pending();
        self.framer.discard_partial();
    }

    /// The framer that watches the stream: last event ID, `retry`, counters.
    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    /// The held bytes followed by `tail`, in an allocation of exactly their
    /// size; empties the held bytes.
    fn take_piece(&mut self, tail: &[u8]) -> Bytes {
        if self.pending.is_empty() {
            return Bytes::copy_from_slice(tail);
        }
        let mut whole = Vec::with_capacity(self.pending.len() + tail.len());
        whole.extend_from_slice(&self.pending);
        whole.extend_from_slice(tail);
        self.release_pending();
        Bytes::from(whole)
    }

    fn release_pending(&mut self) {
        if self.pending.capacity() > PENDING_KEEP {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
    }

    /// `id` as the shared allocation of the previous piece when equal.
    fn share_id(&mut self, id: Option<Vec<u8>>) -> Option<Arc<[u8]>> {
        if id.as_deref() != self.last_id.as_deref() {
            self.last_id = id.map(Arc::from);
        }
        self.last_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut_all(chunks: &[&[u8]]) -> (Cutter, Vec<Piece>) {
        let mut cutter = Cutter::new();
        let mut out = Vec::new();
        for chunk in chunks {
            cutter.cut(chunk, &mut out);
        }
        (cutter, out)
    }

    fn texts(pieces: &[Piece]) -> Vec<&[u8]> {
        pieces.iter().map(|p| &p.bytes[..]).collect()
    }

    fn ids(pieces: &[Piece]) -> Vec<Option<&[u8]>> {
        pieces.iter().map(|p| p.last_id.as_deref()).collect()
    }

    #[test]
    fn cuts_at_every_blank_line() {
        let (cutter, pieces) = cut_all(&[b"id: 1\ndata: a\n\n: hb\n\nid\n\ndata: b\nevent: x"]);
        assert_eq!(
            texts(&pieces),
            [&b"id: 1\ndata: a\n\n"[..], b": hb\n\n", b"id\n\n"]
        );
        assert_eq!(ids(&pieces), [Some(&b"1"[..]), Some(b"1"), Some(b"")]);
        assert_eq!(
            pieces.iter().map(|p| p.dispatched).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(cutter.pending(), b"data: b\nevent: x".len());
        assert_eq!(cutter.framer().last_event_id(), Some(&b""[..]));
    }

    #[test]
    fn pending_bytes_join_the_next_piece() {
        let (cutter, pieces) = cut_all(&[b"data: a", b"bc\n", b"\ndata", b": d\n\nx"]);
        assert_eq!(texts(&pieces), [&b"data: abc\n\n"[..], b"data: d\n\n"]);
        assert_eq!(ids(&pieces), [None, None]);
        assert_eq!(cutter.pending(), 1);
        let (cutter, pieces) = cut_all(&[b"", b"data: a\n\n"]);
        assert_eq!(texts(&pieces), [b"data: a\n\n"]);
        assert_eq!(cutter.pending(), 0);
    }

    #[test]
    fn pieces_own_their_bytes() {
        let chunk = b"data: a\n\ndata: b\n\n".to_vec();
        let (_, pieces) = cut_all(&[&chunk]);
        let range = chunk.as_ptr_range();
        for piece in &pieces {
            assert!(!range.contains(&piece.bytes.as_ptr()));
        }
    }

    #[test]
    fn equal_ids_share_one_allocation() {
        let (_, pieces) = cut_all(&[
            b"id: 7\ndata: a\n\n: hb\n\n",
            b"data: b\n\nid: 8\n\nid: 8\n\n",
        ]);
        assert_eq!(
            ids(&pieces),
            [
                Some(&b"7"[..]),
                Some(b"7"),
                Some(b"7"),
                Some(b"8"),
                Some(b"8")
            ]
        );
        let arcs: Vec<_> = pieces.iter().filter_map(|p| p.last_id.clone()).collect();
        assert!(Arc::ptr_eq(&arcs[0], &arcs[1]) && Arc::ptr_eq(&arcs[1], &arcs[2]));
        assert!(Arc::ptr_eq(&arcs[3], &arcs[4]));
        assert!(!Arc::ptr_eq(&arcs[2], &arcs[3]));
    }

    #[test]
    fn split_crlf_leaves_the_lf_to_the_next_piece() {
        let (cutter, pieces) = cut_all(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(
            texts(&pieces),
            [&b"data: a\r\n\r"[..], b"\ndata: b\r\n\r\n"]
        );
        assert_eq!(cutter.pending(), 0);
    }

    #[test]
    fn a_bom_belongs_to_the_first_piece() {
        let (_, pieces) = cut_all(&[&[0xEF, 0xBB], &[0xBF], b"data: a\n\n"]);
        assert_eq!(texts(&pieces), [&b"\xEF\xBB\xBFdata: a\n\n"[..]]);
    }

    #[test]
    fn too_long_ids_are_none() {
        let long = [
            b"id: ".to_vec(),
            vec![b'x'; crate::sse::MAX_ID_LEN + 1],
            b"\n\n".to_vec(),
        ]
        .concat();
        let (_, pieces) = cut_all(&[b"id: 1\n\n", &long]);
        assert_eq!(ids(&pieces), [Some(&b"1"[..]), None]);
    }

    #[test]
    fn discard_partial_drops_the_half_event_and_keeps_the_id() {
        let mut cutter = Cutter::new();
        let mut out = Vec::new();
        cutter.cut(b"id: 1\ndata: a\n\nid: 2\ndata: b", &mut out);
        assert_eq!(cutter.pending(), 13);
        cutter.discard_partial();
        assert_eq!(cutter.pending(), 0);
        assert!(cutter.framer().at_event_boundary());
        cutter.cut(b"data: c\n\n", &mut out);
        assert_eq!(texts(&out), [&b"id: 1\ndata: a\n\n"[..], b"data: c\n\n"]);
        assert_eq!(ids(&out), [Some(&b"1"[..]), Some(b"1")]);
        assert!(Arc::ptr_eq(
            out[0].last_id.as_ref().expect("id"),
            out[1].last_id.as_ref().expect("id")
        ));
        // A CR at the end of the dropped bytes does not join the next LF.
        let mut cutter = Cutter::new();
        out.clear();
        cutter.cut(b": c\r", &mut out);
        cutter.discard_partial();
        cutter.cut(b"\ndata: x\n\n", &mut out);
        assert_eq!(texts(&out), [&b"\n"[..], b"data: x\n\n"]);
        // Nothing held: the CR that ended the last piece still joins an LF.
        let mut cutter = Cutter::new();
        out.clear();
        cutter.cut(b"data: a\r\r", &mut out);
        cutter.discard_partial();
        cutter.cut(b"\ndata: b\n\n", &mut out);
        assert_eq!(texts(&out), [&b"data: a\r\r"[..], b"\ndata: b\n\n"]);
        assert_eq!(cutter.framer().events(), 2);
    }

    #[test]
    fn a_big_pending_buffer_is_given_back() {
        let mut cutter = Cutter::new();
        let mut out = Vec::new();
        cutter.cut(b"data: ", &mut out);
        cutter.cut(&vec![b'x'; 4 * PENDING_KEEP], &mut out);
        cutter.cut(b"\n\n", &mut out);
        assert_eq!(out[0].bytes.len(), 4 * PENDING_KEEP + 8);
        assert_eq!(cutter.pending.capacity(), 0);
    }

    /// One line of an SSE-ish stream, without its line end.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => "[a-z ]{0,6}".prop_map(|s| format!("data: {s}").into_bytes()),
            2 => "[0-9a-c]{0,2}".prop_map(|s| format!("id: {s}").into_bytes()),
            1 => Just(b"id".to_vec()),
            1 => Just(b"id: x\0y".to_vec()),
            1 => "[a-z]{0,4}".prop_map(|s| format!(":{s}").into_bytes()),
            1 => Just(b"event: e".to_vec()),
            1 => Just(b"retry: 5".to_vec()),
            1 => Just(b"data".to_vec()),
            4 => Just(Vec::new()),
        ]
    }

    fn line_end() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])]
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            proptest::collection::vec((line(), line_end()), 0..40),
            proptest::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(bom, lines, tail)| {
                let mut out = if bom {
                    vec![0xEF, 0xBB, 0xBF]
                } else {
                    Vec::new()
                };
                for (text, end) in lines {
                    out.extend_from_slice(&text);
                    out.extend_from_slice(end);
                }
                out.extend_from_slice(&tail);
                out
            })
    }

    /// `input` split at the given cut points (taken modulo its length).
    fn chunked(input: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
        for cut in &mut cuts {
            *cut %= input.len() + 1;
        }
        cuts.push(0);
        cuts.push(input.len());
        cuts.sort_unstable();
        cuts.windows(2).map(|w| &input[w[0]..w[1]]).collect()
    }

    proptest! {
        #[test]
        fn pieces_are_whole_and_carry_the_id(
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let chunks = chunked(&input, cuts);
            let mut cutter = Cutter::new();
            let mut pieces = Vec::new();
            for chunk in &chunks {
                cutter.cut(chunk, &mut pieces);
            }
            let mut whole: Vec<u8> = pieces.iter().flat_map(|p| p.bytes.iter().copied()).collect();
            let cut_len = whole.len();
            whole.extend_from_slice(&input[cut_len..]);
            prop_assert_eq!(&whole, &input);
            prop_assert_eq!(cutter.pending(), input.len() - cut_len);

            let mut fresh = Framer::new();
            let mut offset = 0;
            for piece in &pieces {
                prop_assert!(!piece.bytes.is_empty());
                fresh.feed(&piece.bytes);
                offset += piece.bytes.len();
                prop_assert!(fresh.at_event_boundary(), "no boundary at {offset}");
                let mut prefix = Framer::new();
                prefix.feed(&input[..offset]);
                prop_assert_eq!(piece.last_id.as_deref(), prefix.last_event_id());
            }
            prop_assert_eq!(
                pieces.iter().filter(|p| p.dispatched).count() as u64,
                cutter.framer().events()
            );
        }

        #[test]
        fn discarding_equals_never_feeding(
            before in stream(),
            dropped in proptest::collection::vec((line(), line_end()), 0..6),
            after in stream(),
        ) {
            // The resumed response's own BOM is the caller's to strip (as
            // `proxy::resume` does): after other bytes it would be content.
            let after = after.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&after).to_vec();
            // `before` is cut down to its last boundary, `dropped` has no blank
            // line, so together they leave a held partial event or nothing.
            let mut cutter = Cutter::new();
            let mut pieces = Vec::new();
            cutter.cut(&before, &mut pieces);
            let held = cutter.pending();
            let mut partial = Vec::new();
            for (text, end) in dropped.iter().filter(|(t, _)| !t.is_empty()) {
                partial.extend_from_slice(text);
                partial.extend_from_slice(end);
            }
            cutter.cut(&partial, &mut pieces);
            prop_assume!(held + partial.len() == cutter.pending() && cutter.pending() > 0);
            let kept: Vec<u8> = pieces.iter().flat_map(|p| p.bytes.iter().copied()).collect();
            // The one difference from never feeding: when the kept bytes end
            // with a blank line's CR and the dropped ones started with its
            // LF, an LF opening `after` is read as one more blank line (a
            // piece of its own) instead of that CR's LF. Harmless, left out.
            prop_assume!(!(kept.ends_with(b"\r") && after.starts_with(b"\n")));
            cutter.discard_partial();
            prop_assert_eq!(cutter.pending(), 0);
            let id_before = cutter.framer().last_event_id().map(<[u8]>::to_vec);
            let mut rest = Vec::new();
            cutter.cut(&after, &mut rest);

            // The same as a cutter fed only the kept bytes and then `after`,
            // as the subscribers read it, but for a CR ending the dropped bytes.
            let mut plain = Cutter::new();
            let mut want = Vec::new();
            plain.cut(&kept, &mut want);
            plain.discard_partial();
            prop_assert_eq!(plain.framer().last_event_id().map(<[u8]>::to_vec), id_before);
            want.clear();
            plain.cut(&after, &mut want);
            prop_assert_eq!(texts(&rest), texts(&want));
            prop_assert_eq!(ids(&rest), ids(&want));
        }
    }
}

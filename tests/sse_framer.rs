//! Property tests of the SSE framer against a naive reference parser.
//!
//! The reference reads the whole input at once, straight from the WHATWG text
//! ("Parsing an event stream", "Interpreting an event stream"), with unbounded
//! buffers. Over random SSE-ish inputs (valid lines with every line ending,
//! comments, BOMs, NULs, invalid UTF-8, ids and types around the size caps,
//! junk) and random chunkings, the tests check that:
//! 1. any chunking gives what feeding everything at once gives;
//! 2. the framer agrees with the reference, up to its documented caps;
//! 3. heartbeats `:\n\n` injected wherever `at_event_boundary()` says so change
//!    nothing a client can observe, and can be removed to give the input back;
//! 4. the boundaries `feed_boundaries()` reports are the reference's blank
//!    lines, with the reference's last event ID after each, and cut the
//!    stream into pieces that put back together give the input, each firing
//!    exactly its one event (`sse_reference::check_cuts` says precisely).

use proptest::prelude::*;
use proptest::sample::Index;
use ssegate::compress::{Coding, StreamEncoder};
use ssegate::sse::{Framer, MAX_EVENT_TYPE_LEN, MAX_ID_LEN};

// What a client of a compressed stream does before its parser runs.
#[path = "common/decode.rs"]
mod decode;

const HEARTBEAT: &[u8] = b":\n\n";

// The reference parser and the framer observer, shared with the fuzz target
// `framer` so that the two oracles cannot drift apart.
#[path = "../fuzz/src/sse_reference.rs"]
#[allow(dead_code)]
mod sse_reference;
use sse_reference::{check_cuts, expected, reference, run, RefEvent, Seen, BOM};

/// Cuts `input` at the given points; repeated points make empty chunks.
fn chunk<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in at {
        chunks.push(&input[start..cut]);
        start = cut;
    }
    chunks.push(&input[start..]);
    chunks
}

fn line_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec())
    ]
}

/// Value bytes: mostly plain, with the troublemakers (NUL, colon, space,
/// digits, bytes of a BOM, invalid UTF-8) well represented. No CR/LF here;
/// the junk pieces bring those.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(&b"ab0159: \x00\xEF\xBB\xBF\xFF\xC3\x80\t-"[..]);
    prop_oneof![
        4 => prop::collection::vec(byte, 0..12),
        2 => prop::collection::vec(prop::sample::select(&b"0123456789"[..]), 0..24),
        // Around the id and event type caps.
        1 => (MAX_ID_LEN - 2..MAX_ID_LEN + 3, any::<bool>())
            .prop_map(|(n, nul)| {
                let mut v = vec![b'i'; n];
                if nul { v[n / 2] = 0; }
                v
            }),
        1 => (MAX_EVENT_TYPE_LEN - 2..MAX_EVENT_TYPE_LEN + 3).prop_map(|n| vec![b't'; n]),
    ]
}

fn field_line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        &b"data"[..],
        b"data",
        b"data",
        b"event",
        b"id",
        b"id",
        b"retry",
        b"dat",
        b"datas",
        b"Data",
        b"",
        b" data",
        b"ids",
        b"\xEF\xBB\xBFdata",
    ]);
    let sep = prop::sample::select(vec![&b""[..], b":", b": ", b": ", b":  ", b"::"]);
    (name, sep, value(), line_end())
        .prop_map(|(name, sep, value, end)| [name, sep, &value, &end].concat())
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => field_line(),
        2 => (value(), line_end()).prop_map(|(v, end)| [&b":"[..], &v, &end].concat()),
        6 => line_end(),
        1 => Just(BOM.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..6),
        1 => prop::collection::vec(prop::sample::select(&b"\r\n:ad"[..]), 0..6),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), prop::collection::vec(piece(), 0..40))
        .prop_map(|(bom, pieces)| [if bom { BOM } else { &b""[..] }, &pieces.concat()].concat())
}

/// Cuts `input` just after every CR, so that every CRLF is split.
fn after_every_cr(input: &[u8]) -> Vec<&[u8]> {
    input.split_inclusive(|&b| b == b'\r').collect()
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..24)
}

/// Feeds `chunks` and inserts a heartbeat after every chunk (and before the
/// first) that leaves the framer at an event boundary; returns the output and
/// where each heartbeat went.
fn inject(chunks: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
    let mut framer = Framer::new();
    let mut out = Vec::new();
    let mut at = Vec::new();
    if framer.at_event_boundary() {
        at.push(out.len());
        out.extend_from_slice(HEARTBEAT);
    }
    for chunk in chunks {
        framer.feed(chunk);
        out.extend_from_slice(chunk);
        if framer.at_event_boundary() {
            at.push(out.len());
            out.extend_from_slice(HEARTBEAT);
        }
    }
    (out, at)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn chunking_does_not_matter(input in stream(), cuts in cuts()) {
        let chunks = chunk(&input, &cuts);
        for make in [Framer::new as fn() -> Framer, || Framer::with_data_capture(5)] {
            prop_assert_eq!(run(make(), &chunks), run(make(), &[&input]));
        }
        // The boundary answer after every chunk is the reference's for that prefix.
        let mut framer = Framer::new();
        let mut fed = 0;
        for chunk in &chunks {
            framer.feed(chunk);
            fed += chunk.len();
            prop_assert_eq!(framer.at_event_boundary(), reference(&input[..fed]).at_boundary);
        }
    }

    #[test]
    fn agrees_with_reference(input in stream(), cuts in cuts(), max_data in 0usize..8) {
        let want = reference(&input);
        let chunks = chunk(&input, &cuts);
        for max in [usize::MAX, max_data] {
            let got = run(Framer::with_data_capture(max), &chunks);
            let events: Vec<Seen> = want.events.iter().map(|e| expected(e, max, MAX_EVENT_TYPE_LEN)).collect();
            prop_assert_eq!(&got.events, &events);
            prop_assert_eq!(got.count, want.events.len() as u64);
            let last_id = want.last_id.clone().filter(|id| id.len() <= MAX_ID_LEN);
            prop_assert_eq!(&got.last_id, &last_id);
            prop_assert_eq!(got.retry, want.retry);
            prop_assert_eq!(got.comments, want.comments);
            prop_assert_eq!(got.at_boundary, want.at_boundary);
            prop_assert_eq!(got.bytes, input.len() as u64);
        }
    }

    #[test]
    fn heartbeats_at_boundaries_change_nothing(input in stream(), cuts in cuts()) {
        let chunks = chunk(&input, &cuts);
        let (output, at) = inject(&chunks);
        let (before, after) = (reference(&input), reference(&output));
        prop_assert_eq!(&after.events, &before.events);
        prop_assert_eq!(&after.last_id, &before.last_id);
        prop_assert_eq!(after.retry, before.retry);
        // Taking the heartbeats out gives the upstream's bytes back exactly.
        let mut restored = Vec::with_capacity(input.len());
        let mut from = 0;
        for &offset in &at {
            prop_assert_eq!(&output[offset..offset + HEARTBEAT.len()], HEARTBEAT);
            restored.extend_from_slice(&output[from..offset]);
            from = offset + HEARTBEAT.len();
        }
        restored.extend_from_slice(&output[from..]);
        prop_assert_eq!(restored, input);
    }

    /// Property 3 through compression (route `compression`): every chunk
    /// and every heartbeat is one write, encoded and flushed as the proxy
    /// does; after each write the client decodes exactly what was written
    /// so far, and at the end what it decodes fires the input's events.
    #[test]
    fn heartbeats_at_boundaries_change_nothing_through_compression(input in stream(), cuts in cuts()) {
        let chunks = chunk(&input, &cuts);
        let (output, _) = inject(&chunks);
        // The relay's writes: each chunk, and each heartbeat after it (or
        // before the first) where the framer stands at an event boundary.
        let mut framer = Framer::new();
        let mut writes: Vec<&[u8]> = Vec::new();
        if framer.at_event_boundary() {
            writes.push(HEARTBEAT);
        }
        for c in &chunks {
            framer.feed(c);
            writes.push(c);
            if framer.at_event_boundary() {
                writes.push(HEARTBEAT);
            }
        }
        prop_assert_eq!(writes.concat(), output.clone());
        for coding in Coding::ALL {
            let name = coding.name();
            let mut encoder = StreamEncoder::new(coding).unwrap();
            let mut wire = Vec::new();
            let mut to = 0;
            for w in &writes {
                wire.extend_from_slice(&encoder.encode(w).unwrap());
                to += w.len();
                prop_assert_eq!(&decode::decode_prefix(Some(name), &wire)[..], &output[..to], "{}", name);
            }
            wire.extend_from_slice(&encoder.finish().unwrap());
            let decoded = decode::decode_prefix(Some(name), &wire);
            prop_assert_eq!(&decoded, &output);
            let (before, after) = (reference(&input), reference(&decoded));
            prop_assert_eq!(&after.events, &before.events);
            prop_assert_eq!(&after.last_id, &before.last_id);
            prop_assert_eq!(after.retry, before.retry);
        }
    }

    #[test]
    fn boundaries_cut_whole_events(input in stream(), cuts in cuts()) {
        let chunks = chunk(&input, &cuts);
        for make in [Framer::new as fn() -> Framer, || Framer::with_data_capture(5)] {
            check_cuts(make(), &chunks).map_err(TestCaseError::fail)?;
            check_cuts(make(), &[&input]).map_err(TestCaseError::fail)?;
            check_cuts(make(), &after_every_cr(&input)).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn boundaries_of_a_stream_cut_by_hand() {
    // Blank lines end at 15 (an event), 23 (a heartbeat) and 42 (an id-only
    // block with CRLF line ends); "data: c\n" is the tail.
    let stream: &[u8] = b"id: 7\ndata: a\n\n: ping\n\nid: 8\r\nevent: x\r\n\r\ndata: c\n";
    let id = |s: &[u8]| Some(s.to_vec());
    let whole = [
        (15, id(b"7"), true),
        (23, id(b"7"), false),
        (42, id(b"8"), false),
    ];
    assert_eq!(boundaries(&[stream]), [whole.to_vec()]);
    let ends: Vec<usize> = reference(stream).dispatches.iter().map(|d| d.end).collect();
    assert_eq!(ends, [15, 23, 42]);
    // Cut between the CR and the LF of the last blank line: the boundary
    // comes with the CR, at the chunk's end, and the LF is no boundary.
    let chunks: [&[u8]; 2] = [&stream[..41], &stream[41..]];
    assert_eq!(
        boundaries(&chunks),
        [
            vec![whole[0].clone(), whole[1].clone(), (41, id(b"8"), false)],
            vec![]
        ]
    );
    assert_eq!(check_cuts(Framer::new(), &chunks), Ok(()));
    // Offsets are per chunk.
    let chunks: [&[u8]; 2] = [&stream[..20], &stream[20..]];
    assert_eq!(
        boundaries(&chunks),
        [
            vec![whole[0].clone()],
            vec![(3, id(b"7"), false), (22, id(b"8"), false)]
        ]
    );
}

/// A reported boundary as (end, id, dispatched).
type Cut = (usize, Option<Vec<u8>>, bool);

/// The boundaries reported for each chunk.
fn boundaries(chunks: &[&[u8]]) -> Vec<Vec<Cut>> {
    let mut framer = Framer::new();
    chunks
        .iter()
        .map(|chunk| {
            let mut out = Vec::new();
            framer.feed_boundaries(chunk, &mut out);
            out.into_iter()
                .map(|b| (b.end, b.id, b.dispatched))
                .collect()
        })
        .collect()
}

#[test]
fn heartbeat_between_cr_and_lf() {
    // The upstream's CRLF straddles two chunks; the heartbeat lands between
    // the CR and the LF, which then reads as one more (harmless) blank line.
    let chunks: [&[u8]; 2] = [b"id: 1\ndata: a\r\n\r", b"\ndata: b\r\n\r\n"];
    let (output, at) = inject(&chunks);
    assert_eq!(output, b"id: 1\ndata: a\r\n\r:\n\n\ndata: b\r\n\r\n:\n\n");
    assert_eq!(at, [16, 31]);
    let (before, after) = (reference(&chunks.concat()), reference(&output));
    assert_eq!(before.events.len(), 2);
    assert_eq!(
        (after.events, after.last_id),
        (before.events, before.last_id)
    );
}

#[test]
fn no_heartbeat_before_a_possible_bom() {
    // Why the framer says "no" before the first byte: a heartbeat there would
    // move the upstream's BOM off the stream start and cost the first event.
    let upstream = [BOM, b"data: x\n\n"].concat();
    assert_eq!(reference(&upstream).events.len(), 1);
    assert!(reference(&[HEARTBEAT, &upstream].concat())
        .events
        .is_empty());
    let mut framer = Framer::new();
    assert!(!framer.at_event_boundary());
    framer.feed(&BOM[..2]);
    assert!(!framer.at_event_boundary());
    framer.feed(&BOM[2..]);
    assert!(framer.at_event_boundary());
}

#[test]
fn reference_sanity() {
    let parsed = reference(b"\xEF\xBB\xBFid: 1\r\ndata: a\rdata\n\n: c\nretry: 7\nid: 2\n");
    assert_eq!(
        parsed.events,
        [RefEvent {
            id: b"1".to_vec(),
            event_type: Vec::new(),
            data: b"a\n".to_vec()
        }]
    );
    assert_eq!(
        (parsed.last_id, parsed.retry, parsed.comments),
        (Some(b"1".to_vec()), Some(7), 1)
    );
    assert!(!parsed.at_boundary);
}

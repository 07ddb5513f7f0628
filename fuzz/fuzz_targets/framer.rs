//! The SSE framer over arbitrary bytes in arbitrary chunks.
//!
//! Input layout (so the seed corpus can be written by hand):
//!
//! ```text
//! byte 0      bits 0-2: N, how many chunk-length bytes follow (0..=7)
//!             bits 3-6: client-mode data cap: 0..=14 bytes, 15 = unlimited
//! bytes 1..=N chunk lengths, used in turn, cycling (0 = an empty chunk);
//!             none, or all zero: the whole stream in one chunk
//! the rest    the stream
//! ```
//!
//! Checks, for the proxy mode (`Framer::new`) and the client mode
//! (`Framer::with_data_capture`):
//! 1. no panic, and `bytes()` is what was fed;
//! 2. the fuzzed chunking and one single chunk give identical results: every
//!    event with all its fields, last id, retry, counts, boundary;
//! 3. both agree with the reference parser (`ssegate_fuzz::sse_reference`)
//!    up to the framer's documented caps;
//! 4. `at_event_boundary()` after each of the first chunks is the reference's
//!    answer for that prefix;
//! 5. heartbeats `:\n\n` injected wherever the framer says it is at a boundary
//!    change no event, last id or retry a client would see;
//! 6. `feed_boundaries` over the fuzzed chunking reports the reference's blank
//!    lines with the reference's last event ID after each, and cuts the stream
//!    into pieces that each fire exactly their event
//!    (`ssegate_fuzz::sse_reference::check_cuts`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate::sse::Framer;
use ssegate_fuzz::sse_reference::{
    check_cuts, expected_snapshot, reference, run, CLIENT_MAX_TYPE,
};

/// Prefix checks are quadratic; the first chunks are where the BOM and the
/// first lines are decided, and later ones differ only in position.
const PREFIX_CHECKS: usize = 32;

const HEARTBEAT: &[u8] = b":\n\n";

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let lens_count = usize::from(control & 0b111).min(rest.len());
    let (lens, stream) = rest.split_at(lens_count);
    let max_data = match (control >> 3) & 0b1111 {
        15 => usize::MAX,
        n => usize::from(n),
    };
    let chunks = chunk(stream, lens);
    let whole: [&[u8]; 1] = [stream];
    let want = reference(stream);

    // Proxy mode keeps no data and no type bytes, only their lengths.
    let proxy = run(Framer::new(), &chunks);
    assert_eq!(proxy, run(Framer::new(), &whole), "proxy: chunking matters");
    assert_eq!(
        proxy,
        expected_snapshot(&want, stream, 0, 0),
        "proxy vs reference"
    );

    let client = run(Framer::with_data_capture(max_data), &chunks);
    assert_eq!(
        client,
        run(Framer::with_data_capture(max_data), &whole),
        "client: chunking matters"
    );
    assert_eq!(
        client,
        expected_snapshot(&want, stream, max_data, CLIENT_MAX_TYPE),
        "client vs reference"
    );

    check_boundaries(stream, &chunks);

    for framer in [Framer::new(), Framer::with_data_capture(max_data)] {
        if let Err(why) = check_cuts(framer, &chunks) {
            panic!("feed_boundaries vs reference: {why}");
        }
    }
});

/// Cuts `stream` into chunks of the given lengths, cycling through them.
fn chunk<'a>(stream: &'a [u8], lens: &[u8]) -> Vec<&'a [u8]> {
    if lens.iter().all(|&len| len == 0) {
        return vec![stream];
    }
    let mut chunks = Vec::new();
    let mut rest = stream;
    for &len in lens.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(usize::from(len).min(rest.len()));
        chunks.push(head);
        rest = tail;
    }
    chunks
}

/// Checks 4 and 5: the boundary answer, and what injecting heartbeats there does.
fn check_boundaries(stream: &[u8], chunks: &[&[u8]]) {
    let mut framer = Framer::new();
    let mut fed = 0;
    let mut output = Vec::with_capacity(stream.len());
    // Before the first byte a BOM may still come: the framer must say no.
    assert!(!framer.at_event_boundary(), "boundary before any byte");
    for (i, chunk) in chunks.iter().enumerate() {
        framer.feed(chunk);
        fed += chunk.len();
        assert_eq!(framer.bytes(), fed as u64);
        output.extend_from_slice(chunk);
        let at_boundary = framer.at_event_boundary();
        if i < PREFIX_CHECKS {
            assert_eq!(
                at_boundary,
                reference(&stream[..fed]).at_boundary,
                "boundary after {fed} bytes"
            );
        }
        if at_boundary {
            output.extend_from_slice(HEARTBEAT);
        }
    }
    let (before, after) = (reference(stream), reference(&output));
    assert_eq!(
        after.events, before.events,
        "a heartbeat changed the events"
    );
    assert_eq!(
        after.last_id, before.last_id,
        "a heartbeat changed the last id"
    );
    assert_eq!(after.retry, before.retry, "a heartbeat changed retry");
}

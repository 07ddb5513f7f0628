//! Where WebSocket frames end in one direction of a tunnel, and the Close
//! frame the proxy writes when it shuts a tunnel down.
//!
//! A [`FrameTracker`] watches the raw bytes of one direction as they pass
//! through the proxy, in whatever chunks the network delivers, and answers
//! two questions: is the stream between two frames, so that a frame of our
//! own (a Close on shutdown) may be written without corrupting the one in
//! flight ([`FrameTracker::at_boundary`], [`FrameTracker::feed_to_boundary`]);
//! and has a Close frame already started, after which RFC 6455 §5.5.1 allows
//! no second one ([`FrameTracker::close_seen`]).
//!
//! It reads frame headers only (RFC 6455 §5.2): byte 0 is FIN, RSV1-3 and
//! the opcode; byte 1 the MASK bit and a 7-bit length, where 126 means a
//! 16-bit length follows and 127 a 64-bit one (most significant bit 0); then
//! a 4-byte masking key when MASK is set; then the payload. The payload is
//! skipped, never buffered or unmasked, and nothing is validated but what
//! would make the boundaries unknowable or a Close of ours illegal: a 64-bit
//! length with its top bit set, and a control frame that is fragmented or
//! longer than 125 bytes. RSV bits, unknown opcodes, lengths not in their
//! shortest form and the masking rule are the endpoints' business; the
//! proxy relays them untouched. A header split between chunks costs no
//! buffer: the tracker keeps the two fixed bytes and accumulates the
//! extended length as it arrives, so the whole state fits in 32 bytes.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Why a byte stream is not a sequence of WebSocket frames; once one is
/// found, the tracker no longer knows where frames end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A 64-bit payload length with its most significant bit set.
    LengthTooLarge,
    /// A control frame (opcode >= 8) with a payload over 125 bytes or without FIN.
    BadControlFrame,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::LengthTooLarge => f.write_str(
                "WebSocket frame length has its most significant bit set (RFC 6455 §5.2)",
            ),
            FrameError::BadControlFrame => {
                f.write_str("WebSocket control frame fragmented or over 125 bytes (RFC 6455 §5.5)")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The status code a proxy going away sends (RFC 6455 §7.4.1).
pub const GOING_AWAY: u16 = 1001;

/// The FIN bit of header byte 0.
const FIN: u8 = 0x80;
/// The MASK bit of header byte 1.
const MASK: u8 = 0x80;
/// Opcodes from this one on are control frames (§5.5).
const FIRST_CONTROL: u8 = 0x8;
/// The Close opcode (§5.5.1).
const CLOSE: u8 = 0x8;
/// The longest payload of a control frame (§5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest Close reason: the payload less the 2-byte status code.
const MAX_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Tracks the frame headers of one direction of a WebSocket connection; see
/// the module documentation.
///
/// The state is one of: at a boundary (`header_read == 0`, `remaining == 0`),
/// inside a header (`header_read > 0`, `remaining` accumulating the extended
/// length), or inside a payload (`header_read == 0`, `remaining > 0` bytes
/// left). A zero-length frame goes from its header straight to a boundary.
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    /// Payload bytes left in the current frame, or, inside a header, the
    /// payload length read so far.
    remaining: u64,
    /// Frames completed.
    frames: u64,
    /// Header byte 0 of the current frame, once read.
    first: u8,
    /// Header byte 1 of the current frame, once read.
    second: u8,
    /// Header bytes of the current frame read so far (at most 14).
    header_read: u8,
    close_seen: bool,
    /// The first error met; it poisons every later call.
    error: Option<FrameError>,
}

// The tunnel keeps two per connection; make sure they stay a few words.
const _: () = assert!(std::mem::size_of::<FrameTracker>() <= 32);

impl FrameTracker {
    /// At a boundary, before any frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes all of `input`. After an error the tracker is poisoned: every later call returns the same error.
    pub fn feed(&mut self, input: &[u8]) -> Result<(), FrameError> {
        self.check()?;
        let mut at = 0;
        while at < input.len() {
            at += self.step(&input[at..])?;
        }
        Ok(())
    }

    /// Consumes `input` only up to the next frame boundary: returns `n` such that after `input[..n]` the tracker is `at_boundary()`;
    /// `Ok(0)` when it is at a boundary already; `Ok(input.len())` when no boundary is reached within `input`
    /// (a zero-length frame's boundary comes right after its header).
    ///
    /// So at a boundary this consumes nothing: a caller that wants to move
    /// past it (after writing its own frame there, or not) feeds on with
    /// [`FrameTracker::feed`]; one byte is enough to leave the boundary,
    /// since no frame is shorter than two.
    pub fn feed_to_boundary(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        self.check()?;
        let mut at = 0;
        while at < input.len() && !self.at_boundary() {
            at += self.step(&input[at..])?;
        }
        Ok(at)
    }

    /// True between frames (and at the start): a frame of our own may be written here.
    ///
    /// False after an error, where nobody knows where frames end.
    pub fn at_boundary(&self) -> bool {
        self.header_read == 0 && self.remaining == 0 && self.error.is_none()
    }

    /// A Close frame (opcode 0x8) has started in this direction, so no close frame of our own may follow it.
    ///
    /// True from the Close frame's first header byte on: once that byte is
    /// out, the only frame the peer can receive next is that Close.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Frames completed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    fn check(&self) -> Result<(), FrameError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Consumes one header byte, or the longest run of payload bytes in
    /// `input`, without going past the end of the current frame. Returns how
    /// many bytes it consumed: at least one unless `input` is empty.
    fn step(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        let Some(&byte) = input.first() else {
            return Ok(0);
        };
        if self.header_read == 0 && self.remaining > 0 {
            // `min` with a usize, so the cast back cannot truncate.
            let take = self.remaining.min(input.len() as u64);
            self.remaining -= take;
            if self.remaining == 0 {
                self.frames += 1;
            }
            return Ok(take as usize);
        }
        if let Err(error) = self.header_byte(byte) {
            self.error = Some(error);
            return Err(error);
        }
        Ok(1)
    }

    /// Reads the next header byte of a frame (the first one at a boundary).
    fn header_byte(&mut self, byte: u8) -> Result<(), FrameError> {
        let index = self.header_read;
        self.header_read += 1;
        match index {
            0 => {
                self.first = byte;
                self.remaining = 0;
                let opcode = byte & 0x0F;
                if opcode >= FIRST_CONTROL && byte & FIN == 0 {
                    return Err(FrameError::BadControlFrame);
                }
                if opcode == CLOSE {
                    self.close_seen = true;
                }
            }
            1 => {
                self.second = byte;
                let short = byte & 0x7F;
                if self.first & 0x0F >= FIRST_CONTROL && usize::from(short) > MAX_CONTROL_PAYLOAD {
                    // 126 and 127 announce a longer length field: over 125
                    // bytes, or a length not in its shortest form (§5.2).
                    return Err(FrameError::BadControlFrame);
                }
                if short < 126 {
                    self.remaining = u64::from(short);
                }
            }
            _ if index < 2 + self.extended_len() => {
                if self.extended_len() == 8 && index == 2 && byte & 0x80 != 0 {
                    return Err(FrameError::LengthTooLarge);
                }
                // At most 8 bytes, the first below 0x80: this never drops a bit.
                self.remaining = self.remaining << 8 | u64::from(byte);
            }
            // The masking key, not needed to find the frame's end.
            _ => {}
        }
        if index >= 1 && self.header_read == self.header_len() {
            self.header_read = 0;
            if self.remaining == 0 {
                self.frames += 1;
            }
        }
        Ok(())
    }

    /// Bytes of extended payload length, once header byte 1 is read.
    fn extended_len(&self) -> u8 {
        match self.second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    /// The length of the current frame's header, once byte 1 is read.
    fn header_len(&self) -> u8 {
        let mask = if self.second & MASK != 0 { 4 } else { 0 };
        2 + self.extended_len() + mask
    }
}

/// A complete Close frame: FIN + opcode 8, payload = code (big-endian) + `reason` (UTF-8, truncated at a char boundary to at most 123 bytes).
/// `mask`: `Some(key)` for a frame written towards a server (client-to-server frames must be masked, §5.3), `None` towards a client.
///
/// The code is written as given: the caller picks one that may be sent
/// (not 1005, 1006 or 1015, §7.4.1), usually [`GOING_AWAY`].
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let payload_len = 2 + reason.len();
    let mut frame = BytesMut::with_capacity(2 + 4 + payload_len);
    frame.put_u8(FIN | CLOSE);
    // At most 125, so the 7-bit length form holds it.
    let short = payload_len as u8;
    match mask {
        None => {
            frame.put_u8(short);
            frame.put_u16(code);
            frame.put_slice(reason);
        }
        Some(key) => {
            frame.put_u8(MASK | short);
            frame.put_slice(&key);
            let payload = code.to_be_bytes().into_iter().chain(reason.iter().copied());
            for (i, byte) in payload.enumerate() {
                frame.put_u8(byte ^ key[i % 4]);
            }
        }
    }
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Feeds `bytes` whole, expecting no error.
    fn fed(bytes: &[u8]) -> FrameTracker {
        let mut tracker = FrameTracker::new();
        tracker.feed(bytes).expect("valid frames");
        tracker
    }

    /// A frame as the test encoder writes it: the 7-bit length form up to
    /// 125, the 16-bit one up to 65535, the 64-bit one beyond, or the 64-bit
    /// one whatever the length when `wide`.
    #[derive(Debug, Clone)]
    struct TestFrame {
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask: Option<[u8; 4]>,
        len: usize,
        wide: bool,
    }

    /// An encoder written apart from the tracker, straight from RFC 6455
    /// §5.2. The payload is pseudo-random bytes, so that it holds bytes that
    /// would read as headers if the tracker lost its place.
    fn encode(frame: &TestFrame, seed: u64, out: &mut Vec<u8>) {
        out.push(u8::from(frame.fin) << 7 | frame.rsv << 4 | frame.opcode);
        let mask_bit = if frame.mask.is_some() { 0x80 } else { 0 };
        if frame.len < 126 && !frame.wide {
            out.push(mask_bit | frame.len as u8);
        } else if frame.len <= 0xFFFF && !frame.wide {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(frame.len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(frame.len as u64).to_be_bytes());
        }
        if let Some(key) = frame.mask {
            out.extend_from_slice(&key);
        }
        let mut state = seed | 1;
        out.extend((0..frame.len).map(|_| {
            // xorshift64: cheap noise, 70 000 bytes a frame.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        }));
    }

    /// The stream, the offset where each frame ends, and where each Close
    /// frame starts.
    fn encode_all(frames: &[TestFrame], seed: u64) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let mut closes = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            if frame.opcode == CLOSE {
                closes.push(bytes.len());
            }
            encode(frame, seed.wrapping_add(i as u64), &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends, closes)
    }

    fn frame() -> impl Strategy<Value = TestFrame> {
        let len = prop_oneof![
            4 => 0..=125usize,
            1 => Just(0usize),
            2 => 126..=65_535usize,
            1 => 65_536..=70_000usize,
        ];
        let data = (
            any::<bool>(),
            0..8u8,
            0..8u8,
            proptest::option::of(any::<[u8; 4]>()),
            len,
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(fin, rsv, opcode, mask, len, wide)| TestFrame {
                fin,
                rsv,
                opcode,
                mask,
                len,
                wide,
            });
        // Control frames are final and short, or the stream is invalid.
        let control = (
            0..8u8,
            8..16u8,
            proptest::option::of(any::<[u8; 4]>()),
            0..=MAX_CONTROL_PAYLOAD,
        )
            .prop_map(|(rsv, opcode, mask, len)| TestFrame {
                fin: true,
                rsv,
                opcode,
                mask,
                len,
                wide: false,
            });
        prop_oneof![3 => data, 2 => control]
    }

    /// A stream of frames and where to cut it: near frame starts, so that
    /// headers are split, and anywhere. Repeated cuts make empty chunks.
    fn cut_stream() -> impl Strategy<Value = (Vec<TestFrame>, u64, Vec<usize>)> {
        (
            proptest::collection::vec(frame(), 0..12),
            any::<u64>(),
            proptest::collection::vec((any::<Index>(), 0..16usize), 0..40),
            proptest::collection::vec(any::<Index>(), 0..10),
        )
            .prop_map(|(frames, seed, near, anywhere)| {
                let (bytes, ends, _) = encode_all(&frames, seed);
                let mut starts = vec![0];
                starts.extend_from_slice(&ends);
                let mut cuts: Vec<usize> = near
                    .iter()
                    .map(|(i, offset)| (i.get(&starts) + offset).min(bytes.len()))
                    .chain(anywhere.iter().map(|i| i.index(bytes.len() + 1)))
                    .collect();
                cuts.sort_unstable();
                (frames, seed, cuts)
            })
    }

    /// `bytes` cut at `cuts` (sorted), the last chunk running to the end.
    fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            out.push(&bytes[from..cut]);
            from = cut;
        }
        out.push(&bytes[from..]);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// (a) After each chunk, at a boundary exactly at a frame end (or
        /// the start), and the Close frames started so far are seen.
        #[test]
        fn at_boundary_exactly_at_frame_ends((frames, seed, cuts) in cut_stream()) {
            let (bytes, ends, closes) = encode_all(&frames, seed);
            let mut tracker = FrameTracker::new();
            prop_assert!(tracker.at_boundary());
            let mut fed = 0;
            for chunk in chunks(&bytes, &cuts) {
                tracker.feed(chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
                fed += chunk.len();
                let want = fed == 0 || ends.binary_search(&fed).is_ok();
                prop_assert_eq!(tracker.at_boundary(), want, "after {} bytes", fed);
                let close = closes.first().is_some_and(|&start| start < fed);
                prop_assert_eq!(tracker.close_seen(), close, "after {} bytes", fed);
            }
            prop_assert_eq!(fed, bytes.len());
        }

        /// (b) `frames()` counts the frames ended so far.
        #[test]
        fn frames_counts_frame_ends((frames, seed, cuts) in cut_stream()) {
            let (bytes, ends, _) = encode_all(&frames, seed);
            let mut tracker = FrameTracker::new();
            let mut fed = 0;
            for chunk in chunks(&bytes, &cuts) {
                tracker.feed(chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
                fed += chunk.len();
                let want = ends.iter().filter(|&&end| end <= fed).count() as u64;
                prop_assert_eq!(tracker.frames(), want, "after {} bytes", fed);
            }
            prop_assert_eq!(tracker.frames(), frames.len() as u64);
        }

        /// (c) `feed_to_boundary`, called over and over on the chunks (and
        /// `feed` of one byte to step past a boundary), stops at exactly the
        /// frame ends, in order.
        #[test]
        fn feed_to_boundary_stops_at_each_frame_end((frames, seed, cuts) in cut_stream()) {
            let (bytes, ends, _) = encode_all(&frames, seed);
            let mut tracker = FrameTracker::new();
            let mut found = Vec::new();
            let mut fed = 0;
            for chunk in chunks(&bytes, &cuts) {
                let mut at = 0;
                while at < chunk.len() {
                    let rest = &chunk[at..];
                    let n = tracker
                        .feed_to_boundary(rest)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(n <= rest.len());
                    if n == 0 {
                        prop_assert!(tracker.at_boundary(), "0 away from a boundary at {}", fed + at);
                        tracker.feed(&rest[..1]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        at += 1;
                        continue;
                    }
                    at += n;
                    if tracker.at_boundary() {
                        found.push(fed + at);
                    } else {
                        prop_assert_eq!(at, chunk.len(), "stopped short of a boundary");
                    }
                }
                fed += chunk.len();
            }
            prop_assert_eq!(found, ends);
        }

        /// (d) A Close frame of ours is one whole Close frame, whose payload
        /// is the code and the longest prefix of the reason that fits.
        #[test]
        fn close_frame_is_one_close_frame(
            code in any::<u16>(),
            reason in ".{0,70}",
            mask in proptest::option::of(any::<[u8; 4]>()),
            cut in any::<Index>(),
        ) {
            let frame = close_frame(code, &reason, mask);
            let mut tracker = FrameTracker::new();
            let (head, tail) = frame.split_at(cut.index(frame.len() + 1));
            tracker.feed(head).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(tracker.close_seen() || head.is_empty());
            tracker.feed(tail).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(tracker.at_boundary());
            prop_assert_eq!(tracker.frames(), 1);
            prop_assert!(tracker.close_seen());

            prop_assert_eq!(frame[0], 0x88);
            prop_assert_eq!(frame[1] & 0x80 != 0, mask.is_some());
            let start = if mask.is_some() { 6 } else { 2 };
            let mut payload = frame[start..].to_vec();
            prop_assert_eq!(payload.len(), usize::from(frame[1] & 0x7F));
            if let Some(key) = mask {
                prop_assert_eq!(&frame[2..6], &key[..]);
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= key[i % 4];
                }
            }
            prop_assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
            let sent = std::str::from_utf8(&payload[2..])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(sent.len() <= 123);
            prop_assert!(reason.starts_with(sent));
            // Nothing more of the reason would have fitted.
            let next = reason[sent.len()..].chars().next();
            prop_assert!(next.is_none_or(|c| sent.len() + c.len_utf8() > 123));
        }
    }

    /// What a tracker tells of itself: its boundary, frames, Close and
    /// error (`feed(&[])` returns the error of a poisoned tracker).
    fn observe(tracker: &mut FrameTracker) -> (bool, u64, bool, Result<(), FrameError>) {
        let error = tracker.feed(&[]);
        (
            tracker.at_boundary(),
            tracker.frames(),
            tracker.close_seen(),
            error,
        )
    }

    proptest! {
        /// (e) Over any bytes, valid frames or not: however the input is
        /// cut, and whether fed whole, in chunks, a byte at a time or to each
        /// boundary in turn, the tracker ends in the same state, errors
        /// included, without panicking (debug builds check the arithmetic).
        #[test]
        fn any_bytes_any_chunking_same_state(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80..0x8Bu8, 0..4u8, Just(126u8), Just(127u8)],
                0..400,
            ),
            cuts in proptest::collection::vec(any::<Index>(), 0..12),
        ) {
            let mut whole = FrameTracker::new();
            let _ = whole.feed(&bytes);
            let want = observe(&mut whole);

            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunked = FrameTracker::new();
            for chunk in chunks(&bytes, &cuts) {
                if chunked.feed(chunk).is_err() {
                    break;
                }
            }
            prop_assert_eq!(observe(&mut chunked), want);

            let mut bytewise = FrameTracker::new();
            for byte in &bytes {
                if bytewise.feed(std::slice::from_ref(byte)).is_err() {
                    break;
                }
            }
            prop_assert_eq!(observe(&mut bytewise), want);

            let mut stepwise = FrameTracker::new();
            let mut at = 0;
            while at < bytes.len() {
                match stepwise.feed_to_boundary(&bytes[at..]) {
                    Ok(0) => {
                        prop_assert!(stepwise.at_boundary());
                        if stepwise.feed(&bytes[at..at + 1]).is_err() {
                            break;
                        }
                        at += 1;
                    }
                    Ok(n) => at += n,
                    Err(_) => break,
                }
            }
            prop_assert_eq!(observe(&mut stepwise), want);
        }
    }

    #[test]
    fn a_small_unmasked_text_frame() {
        // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
        let frame = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut tracker = FrameTracker::new();
        tracker.feed(&frame[..2]).expect("valid");
        assert!(!tracker.at_boundary());
        tracker.feed(&frame[2..6]).expect("valid");
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.frames(), 0);
        tracker.feed(&frame[6..]).expect("valid");
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 1);
        assert!(!tracker.close_seen());
    }

    #[test]
    fn masked_frames() {
        // RFC 6455 §5.7: a masked "Hello", then a masked one of "Hello" again
        // fragmented (a text frame without FIN and a continuation).
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut tracker = fed(&hello[..10]);
        assert!(!tracker.at_boundary());
        tracker.feed(&hello[10..]).expect("valid");
        assert!(tracker.at_boundary());
        let fragments = [
            0x01, 0x83, 1, 2, 3, 4, b'H', b'e', b'l', 0x80, 0x82, 5, 6, 7, 8, b'l', b'o',
        ];
        let mut tracker = fed(&fragments[..9]);
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 1);
        tracker.feed(&fragments[9..]).expect("valid");
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 2);
    }

    #[test]
    fn the_16_bit_length_form() {
        // RFC 6455 §5.7: 256 bytes of binary data in one unmasked frame.
        let mut frame = vec![0x82, 0x7E, 0x01, 0x00];
        frame.extend_from_slice(&[0x82; 256]);
        let mut tracker = fed(&frame[..frame.len() - 1]);
        assert!(!tracker.at_boundary());
        tracker.feed(&frame[frame.len() - 1..]).expect("valid");
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 1);
        // And masked, 65535 bytes, the longest of the form.
        let mut frame = vec![0x82, 0xFE, 0xFF, 0xFF, 9, 9, 9, 9];
        frame.resize(8 + 65_535, 0x7F);
        let mut tracker = fed(&frame[..frame.len() - 1]);
        assert!(!tracker.at_boundary());
        tracker.feed(&frame[frame.len() - 1..]).expect("valid");
        assert!(tracker.at_boundary());
    }

    #[test]
    fn the_64_bit_length_form() {
        // RFC 6455 §5.7: 64 KiB of binary data in one unmasked frame.
        let mut frame = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        frame.resize(10 + 65_536, 0xFF);
        let mut tracker = fed(&frame[..frame.len() - 1]);
        assert!(!tracker.at_boundary());
        tracker.feed(&frame[frame.len() - 1..]).expect("valid");
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 1);
        // The largest length allowed is tracked without overflow.
        let huge = [
            0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ];
        let mut tracker = fed(&huge);
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.feed_to_boundary(&[0; 1000]), Ok(1000));
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.frames(), 0);
    }

    #[test]
    fn zero_length_frames_end_with_their_header() {
        // An empty ping, an empty masked pong, an empty text frame in the
        // 16-bit form, an empty final continuation.
        let frames: [&[u8]; 4] = [
            &[0x89, 0x00],
            &[0x8A, 0x80, 1, 2, 3, 4],
            &[0x81, 0x7E, 0x00, 0x00],
            &[0x80, 0x00],
        ];
        let mut tracker = FrameTracker::new();
        for (i, frame) in frames.iter().enumerate() {
            let (last, head) = frame.split_last().expect("not empty");
            tracker.feed(head).expect("valid");
            assert!(!tracker.at_boundary());
            tracker.feed(&[*last]).expect("valid");
            assert!(tracker.at_boundary());
            assert_eq!(tracker.frames(), i as u64 + 1);
        }
        assert!(!tracker.close_seen());
    }

    #[test]
    fn a_close_frame_sets_close_seen_from_its_first_byte() {
        let close = [0x88, 0x02, 0x03, 0xE8];
        let mut tracker = fed(&[0x89, 0x00, 0x81, 0x01, b'x']);
        assert!(!tracker.close_seen());
        tracker.feed(&close[..1]).expect("valid");
        assert!(tracker.close_seen());
        assert!(!tracker.at_boundary());
        tracker.feed(&close[1..]).expect("valid");
        assert!(tracker.close_seen());
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 3);
        // A continuation or text frame is no Close, whatever its bits.
        assert!(!fed(&[0x70, 0x00]).close_seen());
        // A Close with RSV bits set is still a Close.
        assert!(fed(&[0xF8, 0x00]).close_seen());
    }

    #[test]
    fn a_header_split_at_every_position() {
        // The longest header (64-bit length, masked), three payload bytes,
        // then a zero-length frame: cut in three at every pair of places.
        let mut bytes = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 3, 0xA, 0xB, 0xC, 0xD];
        bytes.extend_from_slice(&[0x82, 0x7E, 0x81]);
        bytes.extend_from_slice(&[0x89, 0x00]);
        let ends = [17, 19];
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut tracker = FrameTracker::new();
                for (from, to) in [(0, i), (i, j), (j, bytes.len())] {
                    tracker.feed(&bytes[from..to]).expect("valid");
                    let boundary = to == 0 || ends.contains(&to);
                    assert_eq!(tracker.at_boundary(), boundary, "cut {i} {j}, at {to}");
                    let frames = ends.iter().filter(|&&end| end <= to).count() as u64;
                    assert_eq!(tracker.frames(), frames, "cut {i} {j}, at {to}");
                }
            }
        }
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_poisons() {
        let frame = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        let mut tracker = FrameTracker::new();
        tracker.feed(&frame[..2]).expect("not yet");
        assert_eq!(tracker.feed(&frame[2..]), Err(FrameError::LengthTooLarge));
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.feed(&[]), Err(FrameError::LengthTooLarge));
        assert_eq!(tracker.feed(&[0x89, 0x00]), Err(FrameError::LengthTooLarge));
        assert_eq!(
            tracker.feed_to_boundary(&[]),
            Err(FrameError::LengthTooLarge)
        );
        assert_eq!(tracker.frames(), 0);
        // Below the top bit, any length is fine.
        assert!(FrameTracker::new().feed(&[0x82, 0x7F, 0x7F]).is_ok());
    }

    #[test]
    fn bad_control_frames_poison() {
        let bad: [&[u8]; 5] = [
            // A ping without FIN: control frames are never fragmented.
            &[0x09, 0x00],
            // A Close without FIN.
            &[0x08, 0x02, 0x03, 0xE8],
            // 126 bytes of ping, in the 16-bit form.
            &[0x89, 0x7E, 0x00, 0x7E],
            // A short pong in a non-shortest form.
            &[0x8A, 0x7E, 0x00, 0x01, 0x00],
            // A reserved control opcode in the 64-bit form.
            &[0x8B, 0xFF],
        ];
        for frame in bad {
            let mut tracker = FrameTracker::new();
            assert_eq!(
                tracker.feed(frame),
                Err(FrameError::BadControlFrame),
                "{frame:x?}"
            );
            assert!(!tracker.at_boundary());
            assert_eq!(
                tracker.feed_to_boundary(&[0x81, 0x00]),
                Err(FrameError::BadControlFrame)
            );
            assert_eq!(tracker.feed(&[]), Err(FrameError::BadControlFrame));
        }
        // The longest ping allowed, and a 125-byte data frame without FIN.
        let mut ping = vec![0x89, 0x7D];
        ping.resize(2 + 125, 0);
        assert!(fed(&ping).at_boundary());
        let mut text = vec![0x01, 0x7D];
        text.resize(2 + 125, 0);
        assert!(fed(&text).at_boundary());
        // Feeding to a boundary stops before a bad frame after a good one,
        // and fails inside a bad header.
        let input = [0x81, 0x00, 0x89, 0x7E];
        let mut tracker = FrameTracker::new();
        tracker.feed(&input[..1]).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&input[1..]), Ok(1));
        assert_eq!(tracker.feed_to_boundary(&input[2..]), Ok(0));
        tracker.feed(&input[2..3]).expect("a ping's first byte");
        assert_eq!(
            tracker.feed_to_boundary(&input[3..]),
            Err(FrameError::BadControlFrame)
        );
        let mut tracker = FrameTracker::new();
        assert_eq!(tracker.feed(&input), Err(FrameError::BadControlFrame));
        assert_eq!(tracker.frames(), 1);
    }

    #[test]
    fn errors_display_what_is_wrong() {
        assert!(FrameError::LengthTooLarge.to_string().contains("length"));
        assert!(FrameError::BadControlFrame
            .to_string()
            .contains("control frame"));
    }

    #[test]
    fn feed_to_boundary_returns_0_at_a_boundary() {
        let mut tracker = FrameTracker::new();
        assert_eq!(tracker.feed_to_boundary(&[0x81, 0x00]), Ok(0));
        assert_eq!(tracker.feed_to_boundary(&[]), Ok(0));
        tracker.feed(&[0x81, 0x01, b'a']).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&[0x81, 0x00]), Ok(0));
        assert_eq!(tracker.frames(), 1);
    }

    #[test]
    fn feed_to_boundary_stops_after_the_last_payload_byte() {
        // A masked 3-byte frame, then a ping: the first call stops after the
        // frame's 'c', the second, from a 1-byte step, after the ping.
        let input = [
            0x82, 0x83, 1, 2, 3, 4, b'a', b'b', b'c', 0x89, 0x01, b'p', 0x81,
        ];
        let mut tracker = FrameTracker::new();
        tracker.feed(&input[..1]).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&input[1..]), Ok(8));
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 1);
        assert_eq!(tracker.feed_to_boundary(&input[9..]), Ok(0));
        tracker.feed(&input[9..10]).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&input[10..]), Ok(2));
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 2);
        // Mid-frame, with no end in the input: all of it, and no boundary.
        tracker.feed(&input[12..]).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&[0x05, b'h', b'e']), Ok(3));
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.feed_to_boundary(&[]), Ok(0));
        assert_eq!(tracker.feed_to_boundary(&[b'l', b'l', b'o', 0x81]), Ok(3));
        assert!(tracker.at_boundary());
        // A zero-length frame's boundary is right after its header.
        tracker.feed(&[0x89]).expect("valid");
        assert_eq!(tracker.feed_to_boundary(&[0x00, 0x81, 0x00]), Ok(1));
        assert!(tracker.at_boundary());
        assert_eq!(tracker.frames(), 4);
    }

    #[test]
    fn close_frames_byte_for_byte() {
        assert_eq!(
            close_frame(GOING_AWAY, "", None),
            Bytes::from_static(&[0x88, 0x02, 0x03, 0xE9])
        );
        assert_eq!(
            close_frame(1000, "ok", None),
            Bytes::from_static(&[0x88, 0x04, 0x03, 0xE8, b'o', b'k'])
        );
        // Masked: the mask bit, the key, then the payload XOR the key.
        assert_eq!(
            close_frame(GOING_AWAY, "bye", Some([0x01, 0x02, 0x03, 0x04])),
            Bytes::from_static(&[
                0x88,
                0x85,
                0x01,
                0x02,
                0x03,
                0x04,
                0x03 ^ 0x01,
                0xE9 ^ 0x02,
                b'b' ^ 0x03,
                b'y' ^ 0x04,
                b'e' ^ 0x01,
            ])
        );
        let mut tracker = FrameTracker::new();
        tracker
            .feed(&close_frame(GOING_AWAY, "", Some([0; 4])))
            .expect("valid");
        assert!(tracker.at_boundary() && tracker.close_seen());
    }

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let ascii = "x".repeat(200);
        let frame = close_frame(GOING_AWAY, &ascii, None);
        assert_eq!(frame.len(), 2 + 125);
        assert_eq!(frame[1], 125);
        assert_eq!(&frame[4..], &ascii.as_bytes()[..123]);
        // 'é' is two bytes: 61 of them fit in 123, the 62nd would not.
        let accents = "é".repeat(70);
        let frame = close_frame(GOING_AWAY, &accents, None);
        assert_eq!(frame[1], 2 + 122);
        assert_eq!(&frame[4..], "é".repeat(61).as_bytes());
        // Exactly 123 bytes is kept whole.
        let exact = format!("{}€", "x".repeat(120));
        assert_eq!(exact.len(), 123);
        assert_eq!(&close_frame(1000, &exact, None)[4..], exact.as_bytes());
    }
}

//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1): the encoder every
//! writer of a chunked body uses (the proxy toward its HTTP/1 clients and
//! upstreams, the bench origin), and an incremental decoder: pure, no I/O,
//! fed whatever bytes a read returned.
//!
//! The decoder keeps a few words of state between calls, never the bytes: data is
//! copied out as it is decoded, so a stream that is silent between reads
//! holds nothing. It is strict where leniency would let two parsers
//! disagree about where a body ends: CRLF line ends, hex sizes that fit in
//! 64 bits, bounded extensions and trailers.
//!
//! A client that only reads a body, and must not fail on a peer that ends
//! its lines with a bare LF (`ssegate bench`), uses the lenient decoder,
//! [`ChunkedDecoder::lenient`]: the same state machine, where an LF alone
//! also ends a size line, chunk data or a trailer line. The choice is a
//! const generic, so the strict decoder of the proxy's hot path is compiled
//! without it.

use std::ops::Range;

use bytes::BytesMut;

/// The last chunk with an empty trailer section: the end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One chunk of a chunked body: size line, data, CRLF. `data` must not be
/// empty (an empty chunk is the end of the body: see [`LAST_CHUNK`]).
pub fn encode_chunk(data: &[u8]) -> BytesMut {
    let head = ChunkHead::new(data.len());
    let mut frame = BytesMut::with_capacity(head.as_bytes().len() + data.len() + CHUNK_END.len());
    frame.extend_from_slice(head.as_bytes());
    frame.extend_from_slice(data);
    frame.extend_from_slice(CHUNK_END);
    frame
}

/// The size line of a chunk of `len` bytes (`"1A\r\n"`), built without
/// allocating: the stream phase writes it, the data and [`CHUNK_END`] as
/// one vectored write.
#[derive(Debug, Clone, Copy)]
pub struct ChunkHead {
    buf: [u8; 18],
    start: usize,
}

/// What follows a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

impl ChunkHead {
    pub fn new(len: usize) -> Self {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut buf = [0u8; 18];
        buf[16] = b'\r';
        buf[17] = b'\n';
        let mut start = 16;
        let mut n = len;
        loop {
            start -= 1;
            buf[start] = HEX[n & 0xF];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        ChunkHead { buf, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Longest chunk extension (the part after `;` on a size line) accepted.
const MAX_EXTENSION: usize = 4096;
/// Most bytes of trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` seen so far.
    Size { size: u64, digits: u8 },
    /// Inside a chunk extension, up to the CR that ends the size line.
    Extension { size: u64, len: usize },
    /// After the CR of a size line.
    SizeLf { size: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerLineStart { total: usize },
    /// Inside a trailer field line.
    TrailerLine { total: usize },
    /// After the CR of a trailer line; `empty` if the line was empty (the end).
    TrailerLf { total: usize, empty: bool },
    /// The body is complete.
    Done,
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size is not a hexadecimal number")]
    BadSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("bare CR or LF in a chunk size line")]
    BadLineEnd,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// What one `decode` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed; less than the input only when the body ended
    /// inside it (the rest belongs to no body: the connection is not reusable).
    pub consumed: usize,
    /// The last chunk and trailers are complete.
    pub done: bool,
}

/// Incremental chunked-body decoder: strict (`ChunkedDecoder`, from
/// [`ChunkedDecoder::new`]) unless `LENIENT`, where a bare LF also ends a
/// line ([`ChunkedDecoder::lenient`]).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder<const LENIENT: bool = false> {
    state: State,
}

/// The decoder that also accepts bare-LF line ends: see [`ChunkedDecoder::lenient`].
pub type LenientChunkedDecoder = ChunkedDecoder<true>;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// The strict decoder: every line ends with CRLF.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl LenientChunkedDecoder {
    /// A decoder that also takes a bare LF as the end of a size line, of
    /// chunk data or of a trailer line, as many clients do (RFC 9112 §2.2
    /// allows a recipient to). A CR must still be followed by an LF.
    pub fn lenient() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl<const LENIENT: bool> ChunkedDecoder<LENIENT> {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending chunk data to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<Progress, ChunkError> {
        self.decode_with(input, |data| out.extend_from_slice(data))
    }

    /// Decodes `input`, handing each run of chunk data to `on_data` as a
    /// slice of `input` (no copy), in order.
    pub fn decode_with<'a>(
        &mut self,
        input: &'a [u8],
        mut on_data: impl FnMut(&'a [u8]),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while let Some(run) = self.next_run(input, &mut i)? {
            on_data(&input[run]);
        }
        Ok(self.progress(i))
    }

    /// Decodes `buf` in place: the chunk data it holds is moved together
    /// and its range in `buf` returned; with one run of data (the usual
    /// read) nothing moves. Consumed bytes are counted as in
    /// [`Self::decode`].
    pub fn decode_in_place(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(Progress, Range<usize>), ChunkError> {
        let mut i = 0;
        // The data kept so far: buf[kept.start..kept.end].
        let mut kept: Option<Range<usize>> = None;
        while let Some(run) = self.next_run(buf, &mut i)? {
            kept = Some(match kept {
                None => run,
                Some(k) => {
                    let end = k.end + run.len();
                    if k.end != run.start {
                        buf.copy_within(run, k.end);
                    }
                    k.start..end
                }
            });
        }
        Ok((self.progress(i), kept.unwrap_or(0..0)))
    }

    /// Steps over framing bytes from `*at` and returns the next run of
    /// chunk data in `input`, moving `*at` past it; `None` once `input` is
    /// used up or the body has ended.
    fn next_run(
        &mut self,
        input: &[u8],
        at: &mut usize,
    ) -> Result<Option<Range<usize>>, ChunkError> {
        while *at < input.len() {
            if let State::Data { remaining } = self.state {
                let take =
                    (input.len() - *at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let run = *at..*at + take;
                *at += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                return Ok(Some(run));
            }
            if self.state == State::Done {
                break;
            }
            self.state = self.step(input[*at])?;
            *at += 1;
        }
        Ok(None)
    }

    fn progress(&self, consumed: usize) -> Progress {
        Progress {
            consumed,
            done: self.state == State::Done,
        }
    }

    /// One byte outside chunk data.
    fn step(&self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                    State::Size {
                        size: size << 4 | v,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(ChunkError::BadSize),
                b'\r' => State::SizeLf { size },
                // Extensions, with optional whitespace before the `;`.
                b';' | b' ' | b'\t' => State::Extension { size, len: 1 },
                b'\n' if LENIENT => after_size_line(size),
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => return Err(ChunkError::BadSize),
            },
            State::Extension { size, len } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' if LENIENT => after_size_line(size),
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ if len >= MAX_EXTENSION => return Err(ChunkError::ExtensionTooLong),
                _ => State::Extension { size, len: len + 1 },
            },
            State::SizeLf { size } => match b {
                b'\n' => after_size_line(size),
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::Data { .. } | State::Done => self.state,
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' if LENIENT => State::Size { size: 0, digits: 0 },
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::DataLf => match b {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::TrailerLineStart { total } => match b {
                b'\r' => State::TrailerLf { total, empty: true },
                b'\n' if LENIENT => State::Done,
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => State::TrailerLine {
                    total: trailer_total(total)?,
                },
            },
            State::TrailerLine { total } => match b {
                b'\r' => State::TrailerLf {
                    total,
                    empty: false,
                },
                b'\n' if LENIENT => State::TrailerLineStart {
                    total: trailer_total(total)?,
                },
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => State::TrailerLine {
                    total: trailer_total(total)?,
                },
            },
            State::TrailerLf { total, empty } => match b {
                b'\n' if empty => State::Done,
                b'\n' => State::TrailerLineStart {
                    total: trailer_total(total)?,
                },
                _ => return Err(ChunkError::BadLineEnd),
            },
        })
    }
}

/// What follows a complete size line: the chunk's data, or after the last
/// chunk (size 0) the trailer section.
#[inline]
fn after_size_line(size: u64) -> State {
    if size == 0 {
        State::TrailerLineStart { total: 0 }
    } else {
        State::Data { remaining: size }
    }
}

fn trailer_total(total: usize) -> Result<usize, ChunkError> {
    if total >= MAX_TRAILERS {
        Err(ChunkError::TrailersTooLarge)
    } else {
        Ok(total + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_head_is_the_uppercase_hex_size_line() {
        for n in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4096,
            0xABCDEF,
            usize::MAX,
        ] {
            assert_eq!(
                ChunkHead::new(n).as_bytes(),
                format!("{n:X}\r\n").as_bytes(),
                "{n}"
            );
        }
    }

    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        decode_all_with(ChunkedDecoder::new(), parts)
    }

    fn decode_lenient(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        decode_all_with(ChunkedDecoder::lenient(), parts)
    }

    fn decode_all_with<const LENIENT: bool>(
        mut d: ChunkedDecoder<LENIENT>,
        parts: &[&[u8]],
    ) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        let mut out = BytesMut::new();
        let mut leftover = 0;
        let mut done = false;
        for p in parts {
            let pr = d.decode(p, &mut out)?;
            leftover += p.len() - pr.consumed;
            done = pr.done;
        }
        Ok((out.to_vec(), done, leftover))
    }

    #[test]
    fn chunks_are_encoded_with_their_hex_size() {
        assert_eq!(&encode_chunk(b"hello")[..], b"5\r\nhello\r\n");
        let big = vec![b'x'; 300];
        let f = encode_chunk(&big);
        assert!(f.starts_with(b"12C\r\n"));
        assert!(f.ends_with(b"x\r\n"));
        assert_eq!(f.len(), 5 + 300 + 2);
        let mut wire = encode_chunk(b"hi");
        wire.extend_from_slice(LAST_CHUNK);
        let (out, done, left) = decode_all(&[&wire]).unwrap();
        assert_eq!((out.as_slice(), done, left), (&b"hi"[..], true, 0));
    }

    #[test]
    fn simple_body() {
        let (out, done, left) = decode_all(&[b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(left, 0);
    }

    #[test]
    fn extensions_and_trailers() {
        let (out, done, _) =
            decode_all(&[b"5;name=value\r\nhello\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n"]).unwrap();
        assert_eq!(out, b"hello");
        assert!(done);
    }

    #[test]
    fn bytes_after_the_end_are_not_consumed() {
        let (_, done, left) = decode_all(&[b"0\r\n\r\nHTTP/1.1"]).unwrap();
        assert!(done);
        assert_eq!(left, 8);
    }

    #[test]
    fn incomplete_is_not_done() {
        let (out, done, _) = decode_all(&[b"a\r\n01234"]).unwrap();
        assert_eq!(out, b"01234");
        assert!(!done);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"zz\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"5\nhello", ChunkError::BadLineEnd),
            (b"5\r\nhelloXX", ChunkError::MissingCrlf),
            (b"5\r\nhello\rX", ChunkError::MissingCrlf),
            (b"11111111111111111\r\n", ChunkError::SizeOverflow),
            (b"0\r\nX: 1\n", ChunkError::BadLineEnd),
            (b"-1\r\n", ChunkError::BadSize),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_all(&[input]).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'x'; MAX_EXTENSION + 1]].concat();
        assert_eq!(
            decode_all(&[&long_ext]).unwrap_err(),
            ChunkError::ExtensionTooLong
        );
        let trailers = [b"0\r\n".as_slice(), &[b'x'; MAX_TRAILERS + 1]].concat();
        assert_eq!(
            decode_all(&[&trailers]).unwrap_err(),
            ChunkError::TrailersTooLarge
        );
    }

    #[test]
    fn lenient_accepts_bare_lf_line_ends() {
        let wire = b"5\nhello\n6;ext\n world\r\nA \n0123456789\n0\nX-T: 1\nY: 2\r\n\n";
        let (out, done, left) = decode_lenient(&[wire]).unwrap();
        assert_eq!(out, b"hello world0123456789");
        assert!(done);
        assert_eq!(left, 0);
        let (out, done, left) = decode_lenient(&[b"3\nabc\n0\n\nHTTP/1.1"]).unwrap();
        assert_eq!((out.as_slice(), done, left), (&b"abc"[..], true, 8));
        // The strict decoder refuses every one of those line ends.
        assert_eq!(decode_all(&[wire]).unwrap_err(), ChunkError::BadLineEnd);
        assert_eq!(
            decode_all(&[b"3\r\nabc\n"]).unwrap_err(),
            ChunkError::MissingCrlf
        );
        assert_eq!(
            decode_all(&[b"0\r\n\n"]).unwrap_err(),
            ChunkError::BadLineEnd
        );
    }

    #[test]
    fn lenient_still_refuses_what_is_not_a_line_end() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"zz\n", ChunkError::BadSize),
            (b"\n", ChunkError::BadSize),
            (b"5\rX", ChunkError::BadLineEnd),
            (b"5\nhelloXX", ChunkError::MissingCrlf),
            (b"5\nhello\rX", ChunkError::MissingCrlf),
            (b"11111111111111111\n", ChunkError::SizeOverflow),
            (b"0\nX: 1\rY", ChunkError::BadLineEnd),
            (b"0\n\rY", ChunkError::BadLineEnd),
            (b"-1\n", ChunkError::BadSize),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_lenient(&[input]).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'x'; MAX_EXTENSION + 1]].concat();
        assert_eq!(
            decode_lenient(&[&long_ext]).unwrap_err(),
            ChunkError::ExtensionTooLong
        );
        let trailers = [b"0\n".as_slice(), &b"x\n".repeat(MAX_TRAILERS)].concat();
        assert_eq!(
            decode_lenient(&[&trailers]).unwrap_err(),
            ChunkError::TrailersTooLarge
        );
    }

    /// A chunked body whose every line ends as `ends` says (`true`: bare LF),
    /// cycling through it; with `trailers` after the last chunk.
    fn encode_with_line_ends(chunks: &[Vec<u8>], trailers: &[&str], ends: &[bool]) -> Vec<u8> {
        let mut ends = ends.iter().copied().cycle();
        let mut end = || {
            if ends.next() == Some(true) {
                "\n"
            } else {
                "\r\n"
            }
        };
        let mut v = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            v.extend_from_slice(format!("{:x}{}", c.len(), end()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(end().as_bytes());
        }
        v.extend_from_slice(format!("0{}", end()).as_bytes());
        for t in trailers {
            v.extend_from_slice(format!("{t}{}", end()).as_bytes());
        }
        v.extend_from_slice(end().as_bytes());
        v
    }

    /// `wire` cut at `cuts`.
    fn split<'a>(wire: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();
        points.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let wire = encode(&chunks);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            points.dedup();
            let parts: Vec<&[u8]> = points.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            let (out, done, left) = decode_all(&parts).unwrap();
            prop_assert_eq!(out, chunks.concat());
            prop_assert!(done);
            prop_assert_eq!(left, 0);

            // In place, over the same cuts, with bytes after the body.
            let mut d = ChunkedDecoder::new();
            let mut data = Vec::new();
            let mut consumed = 0;
            for (k, p) in parts.iter().enumerate() {
                let mut buf = p.to_vec();
                if k + 1 == parts.len() {
                    buf.extend_from_slice(b"junk");
                }
                let (pr, run) = d.decode_in_place(&mut buf).unwrap();
                consumed += pr.consumed;
                data.extend_from_slice(&buf[run]);
            }
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(consumed, wire.len());
        }

        #[test]
        fn in_place_matches_copying_decode(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut copying = ChunkedDecoder::new();
            let mut out = BytesMut::new();
            let expected = copying.decode(&input, &mut out);
            let mut in_place = ChunkedDecoder::new();
            let mut buf = input.clone();
            match (expected, in_place.decode_in_place(&mut buf)) {
                (Ok(a), Ok((b, run))) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(&buf[run], &out[..]);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "copying {:?} vs in place {:?}", a, b),
            }
        }

        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = ChunkedDecoder::new();
            let mut out = BytesMut::new();
            if let Ok(p) = d.decode(&input, &mut out) {
                prop_assert!(p.consumed <= input.len());
                prop_assert!(out.len() <= input.len());
            }
            let mut d = ChunkedDecoder::lenient();
            let mut out = BytesMut::new();
            if let Ok(p) = d.decode(&input, &mut out) {
                prop_assert!(p.consumed <= input.len());
                prop_assert!(out.len() <= input.len());
            }
        }

        /// Lenient: any mix of CRLF and bare LF, cut anywhere, decodes to
        /// the same data; the strict decoder accepts it only if every line
        /// end is a CRLF.
        #[test]
        fn lenient_any_line_ends_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            trailers in proptest::collection::vec(prop::sample::select(vec!["X-T: 1", "Y:", "a: b c"]), 0..3),
            ends in proptest::collection::vec(any::<bool>(), 1..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let wire = encode_with_line_ends(&chunks, &trailers, &ends);
            let parts = split(&wire, &cuts);
            let (out, done, left) = decode_lenient(&parts).unwrap();
            prop_assert_eq!(out, chunks.concat());
            prop_assert!(done);
            prop_assert_eq!(left, 0);
            let lines = 2 * chunks.iter().filter(|c| !c.is_empty()).count() + trailers.len() + 2;
            let all_crlf = ends.iter().cycle().take(lines).all(|bare_lf| !bare_lf);
            prop_assert_eq!(decode_all(&parts).is_ok(), all_crlf);

            // In place, with bytes after the body.
            let mut d = ChunkedDecoder::lenient();
            let mut data = Vec::new();
            let mut consumed = 0;
            for (k, p) in parts.iter().enumerate() {
                let mut buf = p.to_vec();
                if k + 1 == parts.len() {
                    buf.extend_from_slice(b"junk");
                }
                let (pr, run) = d.decode_in_place(&mut buf).unwrap();
                consumed += pr.consumed;
                data.extend_from_slice(&buf[run]);
            }
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(consumed, wire.len());
        }

        /// Lenient changes nothing where the strict decoder succeeds, and
        /// its in-place decoding matches its copying one. The alphabet is
        /// mostly framing bytes, so that bodies, complete or not, are common.
        #[test]
        fn lenient_agrees_with_strict_where_strict_accepts(
            input in proptest::collection::vec(prop::sample::select(b"01aF\r\n\r\n; x:".to_vec()), 0..200),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let parts = split(&input, &cuts);
            let lenient = decode_lenient(&parts);
            if let Ok(strict) = decode_all(&parts) {
                prop_assert_eq!(lenient.clone(), Ok(strict));
            }
            let mut copying = ChunkedDecoder::lenient();
            let mut out = BytesMut::new();
            let expected = copying.decode(&input, &mut out);
            let mut in_place = ChunkedDecoder::lenient();
            let mut buf = input.clone();
            match (expected, in_place.decode_in_place(&mut buf)) {
                (Ok(a), Ok((b, run))) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(&buf[run], &out[..]);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "copying {:?} vs in place {:?}", a, b),
            }
        }
    }
}

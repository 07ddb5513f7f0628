//! Content codings for event streams (route `compression`), with no I/O:
//! one [`StreamEncoder`] per client stream keeps its compression context
//! for the whole stream and ends every [`StreamEncoder::encode`] with a
//! sync flush, so that what it returns decodes, on its own and right
//! away, to every byte given so far. The proxy's sink around the client
//! (`proxy::compressed`) calls it once per write; `Accept-Encoding` is
//! read here too ([`accepted`]).
//!
//! Why one context per stream and a flush per write: SSE feeds are mostly
//! JSON that repeats from event to event, so the context is where the
//! gain is (3.5–4.4× on the bench's JSON feed, against 1.0–1.15× for each
//! event on its own); the flush is what keeps an event from waiting in the encoder
//! (the buffering that broke jetty#4317 and starlette#2753).
//!
//! Memory is bounded by modest windows, chosen for thousands of streams
//! (figures measured by `benches/compression.rs`, in BENCHMARKS.md):
//!
//! | coding | settings                                   | memory per stream |
//! |--------|--------------------------------------------|-------------------|
//! | gzip   | level 6, window 2^13 (8 KiB), zlib-ng      | about 175 KiB     |
//! | br     | quality 3, lgwin 16 (64 KiB)               | about 295 KiB     |
//! | zstd   | level 3, window 2^17, hash 2^15, chain 2^15 | about 315 KiB     |
//!
//! Each sync flush costs a few bytes (gzip: 5, an empty stored block), so
//! a write of one small event still gains where the context has seen
//! similar ones.

use std::io::{self, Write};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use zstd::stream::raw::{CParameter, Encoder as ZstdEncoder, InBuffer, Operation, OutBuffer};

/// A content coding ssegate can apply to an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Gzip,
    Br,
    Zstd,
}

impl Coding {
    /// Every coding, in the order of the default preference (best ratio first).
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    /// The coding's token, as in `Content-Encoding` and the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// The coding named `name` in the configuration (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Coding> {
        Coding::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// gzip: zlib's default level; a window of 2^13 instead of 2^15 (a JSON
/// feed's repetition is mostly within the last few events).
const GZIP_LEVEL: u32 = 6;
const GZIP_WINDOW_BITS: u8 = 13;
/// brotli: quality 3 and lgwin 16 instead of 11 and 22. In the `brotli`
/// crate quality 5 holds 3.5–5 MiB per stream and quality 4 about 550 KiB,
/// quality 3 about 300 KiB, for a ratio within 2% of quality 5's on a JSON
/// feed flushed per event (measured with 100 streams of 50 events each).
const BROTLI_QUALITY: u32 = 3;
const BROTLI_LGWIN: u32 = 16;
/// What brotli's writer hands on at a time (its own output buffer).
const BROTLI_BUFFER: usize = 4096;
/// zstd: level 3 (its default) with its tables and window cut down from
/// level 3's (window 2^21, hash 2^17, chain 2^16).
const ZSTD_LEVEL: i32 = 3;
const ZSTD_WINDOW_LOG: u32 = 17;
const ZSTD_HASH_LOG: u32 = 15;
const ZSTD_CHAIN_LOG: u32 = 15;

/// One stream's encoder: its compression context lives as long as the stream.
pub struct StreamEncoder {
    inner: Inner,
}

enum Inner {
    Gzip(Compress),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(Box<ZstdEncoder<'static>>),
}

impl StreamEncoder {
    /// A fresh encoder for `coding`, with the settings above.
    pub fn new(coding: Coding) -> io::Result<StreamEncoder> {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(Compress::new_gzip(
                Compression::new(GZIP_LEVEL),
                GZIP_WINDOW_BITS,
            )),
            Coding::Br => Inner::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Coding::Zstd => {
                let mut e = ZstdEncoder::new(ZSTD_LEVEL)?;
                e.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
                e.set_parameter(CParameter::HashLog(ZSTD_HASH_LOG))?;
                e.set_parameter(CParameter::ChainLog(ZSTD_CHAIN_LOG))?;
                Inner::Zstd(Box::new(e))
            }
        };
        Ok(StreamEncoder { inner })
    }

    /// Compresses `input` and flushes: the result, appended to what earlier
    /// calls returned, decodes to everything given so far, with nothing
    /// held back in the encoder.
    pub fn encode(&mut self, input: &[u8]) -> io::Result<Bytes> {
        let out = match &mut self.inner {
            Inner::Gzip(c) => deflate(c, input, FlushCompress::Sync)?,
            Inner::Br(w) => {
                w.write_all(input)?;
                // BROTLI_OPERATION_FLUSH: the output ends on a byte boundary
                // with every input byte decodable.
                w.flush()?;
                std::mem::take(w.get_mut())
            }
            Inner::Zstd(e) => {
                let mut out = Vec::with_capacity(input.len() / 2 + 64);
                let mut src = InBuffer::around(input);
                // `around_pos`: each call appends after what is there
                // (`around` would write over it from the start).
                while src.pos < input.len() {
                    reserve(&mut out);
                    let at = out.len();
                    e.run(&mut src, &mut OutBuffer::around_pos(&mut out, at))?;
                }
                // ZSTD_e_flush until it reports nothing left to flush.
                loop {
                    reserve(&mut out);
                    let at = out.len();
                    if e.flush(&mut OutBuffer::around_pos(&mut out, at))? == 0 {
                        break;
                    }
                }
                out
            }
        };
        Ok(Bytes::from(out))
    }

    /// Ends the coded stream (gzip's trailer, brotli's last block, zstd's
    /// frame end): the bytes to write before the response body ends.
    pub fn finish(self) -> io::Result<Bytes> {
        let out = match self.inner {
            Inner::Gzip(mut c) => deflate(&mut c, &[], FlushCompress::Finish)?,
            Inner::Br(w) => w.into_inner(),
            Inner::Zstd(mut e) => {
                let mut out = Vec::with_capacity(64);
                loop {
                    reserve(&mut out);
                    let at = out.len();
                    if e.finish(&mut OutBuffer::around_pos(&mut out, at), true)? == 0 {
                        break;
                    }
                }
                out
            }
        };
        Ok(Bytes::from(out))
    }
}

/// Room for at least 64 more bytes in `out`, growing it by half at least.
fn reserve(out: &mut Vec<u8>) {
    let spare = out.capacity() - out.len();
    if spare < 64 {
        out.reserve((out.capacity() / 2).max(256));
    }
}

/// Runs deflate over all of `input` with `flush`, until the flush is done:
/// zlib has finished a flush when it left output space unused (or, for
/// `Finish`, when the stream ended).
fn deflate(c: &mut Compress, input: &[u8], flush: FlushCompress) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        reserve(&mut out);
        let before = c.total_in();
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        consumed += (c.total_in() - before) as usize;
        let done = match (flush, status) {
            (FlushCompress::Finish, Status::StreamEnd) => true,
            (FlushCompress::Finish, _) => false,
            _ => consumed == input.len() && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
    }
}

/// The first of `offered` that an `Accept-Encoding` field, given as its
/// values, accepts (RFC 9110 §12.5.3): a coding listed with `q` above 0,
/// or not listed when `*` is, with `q` above 0; `x-gzip` is gzip. `None`:
/// identity, which is also the answer when the client sent no field at
/// all (RFC 9110 allows any coding then; browsers always send one, and
/// a client that sends none is best served plain). `identity;q=0` does
/// not make ssegate compress: identity stays the fallback.
pub fn accepted<'a>(
    values: impl IntoIterator<Item = &'a str>,
    offered: &[Coding],
) -> Option<Coding> {
    // (coding or None for `*`, q > 0) for every element understood.
    let mut listed: Vec<(Option<Coding>, bool)> = Vec::new();
    for value in values {
        for element in value.split(',') {
            let mut parts = element.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let coding = match token.as_str() {
                "*" => None,
                "x-gzip" => Some(Coding::Gzip),
                name => match Coding::from_name(name) {
                    Some(c) => Some(c),
                    None => continue,
                },
            };
            listed.push((coding, positive_q(parts)));
        }
    }
    offered.iter().copied().find(
        |&want| match listed.iter().find(|(c, _)| *c == Some(want)) {
            Some(&(_, ok)) => ok,
            None => listed.iter().any(|&(c, ok)| c.is_none() && ok),
        },
    )
}

/// Whether the parameters of one `Accept-Encoding` element leave its
/// weight above 0: no `q` is 1; a `q` that does not parse is taken as 0,
/// so a malformed element never turns compression on.
fn positive_q<'a>(params: impl Iterator<Item = &'a str>) -> bool {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            return value.trim().parse::<f32>().is_ok_and(|q| q > 0.0);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    /// Decodes a whole coded stream, or the prefix of one that ends where a
    /// flush left it (then every byte flushed must come out).
    pub(crate) fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                let mut d = flate2::Decompress::new_gzip(15);
                let mut buf = vec![0u8; 1 << 16];
                let mut pos = 0;
                loop {
                    let before = (d.total_in(), d.total_out());
                    let status = d
                        .decompress(&data[pos..], &mut buf, flate2::FlushDecompress::Sync)
                        .unwrap();
                    pos += (d.total_in() - before.0) as usize;
                    let n = (d.total_out() - before.1) as usize;
                    out.extend_from_slice(&buf[..n]);
                    if status == Status::StreamEnd || (n == 0 && pos == data.len()) {
                        break;
                    }
                }
            }
            Coding::Br => {
                let mut r = brotli::Decompressor::new(data, 4096);
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        // A prefix ends without the stream's last block.
                        Err(_) => break,
                    }
                }
            }
            Coding::Zstd => {
                let mut d = zstd::stream::raw::Decoder::new().unwrap();
                let mut src = InBuffer::around(data);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let mut dst = OutBuffer::around(&mut buf[..]);
                    d.run(&mut src, &mut dst).unwrap();
                    let n = dst.pos();
                    out.extend_from_slice(&buf[..n]);
                    if n == 0 && src.pos == data.len() {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn names_round_trip() {
        for c in Coding::ALL {
            assert_eq!(Coding::from_name(c.name()), Some(c));
        }
        assert_eq!(Coding::from_name("GZIP"), None);
        assert_eq!(Coding::from_name("deflate"), None);
    }

    #[test]
    fn each_write_decodes_at_once_and_the_end_is_proper() {
        for coding in Coding::ALL {
            let mut e = StreamEncoder::new(coding).unwrap();
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            for i in 0..50 {
                let event = format!("id: {i}\ndata: {{\"n\":{i},\"user\":\"alice\"}}\n\n");
                wire.extend_from_slice(&e.encode(event.as_bytes()).unwrap());
                sent.extend_from_slice(event.as_bytes());
                assert_eq!(decode(coding, &wire), sent, "{coding:?} after event {i}");
            }
            wire.extend_from_slice(&e.finish().unwrap());
            assert_eq!(decode(coding, &wire), sent, "{coding:?} finished");
            assert!(
                wire.len() * 2 < sent.len(),
                "{coding:?}: {} of {}",
                wire.len(),
                sent.len()
            );
        }
    }

    /// Writes large enough that the encoders emit blocks before the flush
    /// (zstd's output must be appended to, not written over), and events
    /// each coded on their own.
    #[test]
    fn large_writes_round_trip() {
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..300_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    (x % 251) as u8
                } else {
                    b'a' + (x % 7) as u8
                }
            })
            .collect();
        for coding in Coding::ALL {
            let mut e = StreamEncoder::new(coding).unwrap();
            let mut wire = Vec::new();
            for piece in [
                &noise[..200_000],
                &noise[200_000..200_100],
                &noise[200_100..],
            ] {
                wire.extend_from_slice(&e.encode(piece).unwrap());
            }
            assert_eq!(decode(coding, &wire), noise, "{coding:?}");
            for i in 0..20 {
                let ev = format!("id: {i}\nevent: quote\ndata: {{\"seq\":{i},\"price\":{}.5,\"currency\":\"USD\",\"ts\":{}}}\n\n", i * 3, 1_767_000_000_000u64 + i * 137);
                let mut e = StreamEncoder::new(coding).unwrap();
                let mut one = e.encode(ev.as_bytes()).unwrap().to_vec();
                one.extend_from_slice(&e.finish().unwrap());
                assert_eq!(decode(coding, &one), ev.as_bytes(), "{coding:?} event {i}");
            }
        }
    }

    #[test]
    fn negotiation() {
        let all = [Coding::Zstd, Coding::Br, Coding::Gzip];
        let pick = |v: &[&str]| accepted(v.iter().copied(), &all);
        assert_eq!(pick(&["gzip, deflate, br, zstd"]), Some(Coding::Zstd));
        assert_eq!(pick(&["gzip", "br"]), Some(Coding::Br));
        assert_eq!(pick(&["GZIP;Q=0.5"]), Some(Coding::Gzip));
        assert_eq!(pick(&["x-gzip"]), Some(Coding::Gzip));
        assert_eq!(
            pick(&["zstd;q=0, br;q=0.0, gzip;q=0.1"]),
            Some(Coding::Gzip)
        );
        assert_eq!(pick(&["zstd;q=0, br;q=0, gzip;q=0"]), None);
        assert_eq!(pick(&["identity"]), None);
        assert_eq!(pick(&["identity;q=0"]), None);
        assert_eq!(pick(&[""]), None);
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&["compress, deflate, snappy"]), None);
        assert_eq!(pick(&["*"]), Some(Coding::Zstd));
        assert_eq!(pick(&["*;q=0"]), None);
        assert_eq!(pick(&["*, zstd;q=0"]), Some(Coding::Br));
        assert_eq!(pick(&["gzip;q=nonsense"]), None);
        assert_eq!(pick(&["gzip ; foo=bar ; q=1"]), Some(Coding::Gzip));
        // The route's order wins over the client's weights.
        assert_eq!(
            accepted(["zstd;q=1, gzip;q=0.1"], &[Coding::Gzip, Coding::Zstd]),
            Some(Coding::Gzip)
        );
        assert_eq!(accepted(["gzip"], &[]), None);
    }

    fn events() -> impl Strategy<Value = Vec<u8>> {
        let event = (0u32..1000, "[a-z \\\\{}\":,0-9\r\n]{0,80}", any::<bool>()).prop_map(
            |(id, text, comment)| {
                let comment = if comment { ":\n\n" } else { "" };
                format!("{comment}id: {id}\ndata: {{\"n\":{id},\"t\":\"{text}\"}}\n\n").into_bytes()
            },
        );
        prop::collection::vec(event, 0..30).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random event streams in random chunks: after every chunk the
        /// coded bytes so far decode to exactly the input so far.
        #[test]
        fn decode_of_every_prefix_is_the_input(
            input in events(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.push(input.len());
            at.sort_unstable();
            for coding in Coding::ALL {
                let mut e = StreamEncoder::new(coding).unwrap();
                let mut wire = Vec::new();
                let mut from = 0;
                for &to in &at {
                    wire.extend_from_slice(&e.encode(&input[from..to]).unwrap());
                    from = to;
                    prop_assert_eq!(&decode(coding, &wire)[..], &input[..to]);
                }
                wire.extend_from_slice(&e.finish().unwrap());
                prop_assert_eq!(&decode(coding, &wire)[..], &input[..]);
            }
        }
    }
}

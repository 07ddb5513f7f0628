//! Hand-written HTTP/1.1 for the bench client and the bench upstream: request
//! and response heads (build and parse), body framing, and a pure incremental
//! chunked decoder.
//!
//! Nothing here owns a socket: the callers read whatever the network gives
//! and feed it in, so every piece is tested on byte strings split anywhere.
//! Parsing is strict where a mistake would corrupt the measurement (chunk
//! sizes, CRLF after chunk data) and lenient where real servers differ
//! harmlessly (a bare LF as a line end, chunk extensions, trailers).

use std::fmt::Write as _;

/// Longest head (start line plus headers) either side accepts.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers a head may carry.
const MAX_HEADERS: usize = 128;

/// Hex digits of the largest chunk size accepted (2^60 - 1; nobody sends more).
const MAX_SIZE_DIGITS: u8 = 15;

/// A malformed head or body; the text says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed start line {0:?}")]
    StartLine(String),
    #[error("malformed header line {0:?}")]
    HeaderLine(String),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("invalid content-length {0:?}")]
    ContentLength(String),
    #[error("unsupported transfer-encoding {0:?} (only chunked is understood)")]
    TransferEncoding(String),
    #[error("invalid chunk size byte {0:#04x}")]
    ChunkSize(u8),
    #[error("chunk size line without digits")]
    EmptyChunkSize,
    #[error("chunk size larger than 2^60")]
    ChunkTooLarge,
    #[error("chunk data not followed by CRLF (got {0:#04x})")]
    ChunkEnd(u8),
    #[error("CR not followed by LF in chunk framing (got {0:#04x})")]
    BareCr(u8),
}

/// Where the head in `buf` ends: the index just past its blank line
/// (`\r\n\r\n`, or `\n\n` from a lenient peer), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if byte != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

/// One header, its name lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed head: the start line and the headers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start_line: String,
    pub headers: Vec<Header>,
}

impl Head {
    /// Parses a complete head as delimited by [`head_end`].
    pub fn parse(bytes: &[u8]) -> Result<Head, HttpError> {
        if bytes.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .take_while(|l| !l.is_empty());
        let start_line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            if headers.len() == MAX_HEADERS {
                return Err(HttpError::TooManyHeaders);
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(HttpError::HeaderLine(line.to_string()));
            };
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(HttpError::HeaderLine(line.to_string()));
            }
            headers.push(Header {
                name: name.to_ascii_lowercase(),
                value: value.trim().to_string(),
            });
        }
        Ok(Head {
            start_line,
            headers,
        })
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// All values of header `name`, joined as a list would be.
    fn header_list(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|h| h.name == name)
            .map(|h| h.value.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// `(status, minor version)` of a response's status line.
    pub fn status(&self) -> Result<(u16, u8), HttpError> {
        let bad = || HttpError::StartLine(self.start_line.clone());
        let mut parts = self.start_line.splitn(3, ' ');
        let version = parts.next().ok_or_else(bad)?;
        let minor = http_minor(version).ok_or_else(bad)?;
        let code = parts.next().ok_or_else(bad)?;
        if code.len() != 3 {
            return Err(bad());
        }
        let status = code.parse().map_err(|_| bad())?;
        Ok((status, minor))
    }

    /// `(method, target, minor version)` of a request line.
    pub fn request_line(&self) -> Result<(&str, &str, u8), HttpError> {
        let bad = || HttpError::StartLine(self.start_line.clone());
        let mut parts = self.start_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let minor = http_minor(version).ok_or_else(bad)?;
        if method.is_empty() || target.is_empty() {
            return Err(bad());
        }
        Ok((method, target, minor))
    }

    /// How the body after this head is delimited. A response without
    /// `Transfer-Encoding` or `Content-Length` runs until the connection
    /// closes; a request without them has no body.
    pub fn framing(&self, is_response: bool) -> Result<Framing, HttpError> {
        if let Some(te) = self.header_list("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or_default().trim();
            return if last.eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(HttpError::TransferEncoding(te))
            };
        }
        if let Some(cl) = self.header_list("content-length") {
            let mut values = cl.split(',').map(str::trim);
            let first = values.next().unwrap_or_default();
            let len: u64 = first
                .parse()
                .map_err(|_| HttpError::ContentLength(cl.clone()))?;
            if values.any(|v| v != first) {
                return Err(HttpError::ContentLength(cl));
            }
            return Ok(Framing::Length(len));
        }
        Ok(if is_response {
            Framing::Close
        } else {
            Framing::Length(0)
        })
    }

    /// Whether the peer asked to close the connection after this message.
    pub fn wants_close(&self, minor: u8) -> bool {
        let tokens = self.header_list("connection").unwrap_or_default();
        let has = |t: &str| tokens.split(',').any(|v| v.trim().eq_ignore_ascii_case(t));
        if minor == 0 {
            !has("keep-alive")
        } else {
            has("close")
        }
    }
}

/// The minor version of `HTTP/1.x`.
fn http_minor(version: &str) -> Option<u8> {
    match version {
        "HTTP/1.1" => Some(1),
        "HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// Until the connection closes (responses only).
    Close,
}

/// What a feed of body bytes reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the body goes on.
    More,
    /// The body ended after `consumed` bytes of this input; the rest belongs
    /// to whatever follows on the connection.
    Done { consumed: usize },
}

/// Incremental body decoder for any [`Framing`].
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Chunked(ChunkedDecoder),
    Length { remaining: u64 },
    Close,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Chunked => Self::Chunked(ChunkedDecoder::default()),
            Framing::Length(remaining) => Self::Length { remaining },
            Framing::Close => Self::Close,
        }
    }

    /// Feeds wire bytes, handing each piece of body to `on_data` in order.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut on_data: impl FnMut(&'a [u8]),
    ) -> Result<Progress, HttpError> {
        match self {
            Self::Chunked(chunked) => chunked.decode(input, on_data),
            Self::Length { remaining } => {
                let take = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                let (body, _) = input.split_at(take);
                if !body.is_empty() {
                    on_data(body);
                }
                *remaining -= take as u64;
                Ok(if *remaining == 0 {
                    Progress::Done { consumed: take }
                } else {
                    Progress::More
                })
            }
            Self::Close => {
                if !input.is_empty() {
                    on_data(input);
                }
                Ok(Progress::More)
            }
        }
    }

    /// Whether the body is complete, e.g. a zero `Content-Length` before any byte.
    pub fn is_done(&self) -> bool {
        match self {
            Self::Chunked(chunked) => chunked.is_done(),
            Self::Length { remaining } => *remaining == 0,
            Self::Close => false,
        }
    }

    /// Whether the connection closing now ends the body cleanly.
    pub fn eof_is_clean(&self) -> bool {
        matches!(self, Self::Close) || self.is_done()
    }
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Chunk {
    /// Reading the hex size; `digits` so far.
    #[default]
    SizeStart,
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: whitespace or `;extension`, up to the line end.
    Extension {
        value: u64,
    },
    /// A CR ended the size line; an LF must follow.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    /// Chunk data ended; CRLF must follow.
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer field, skipped up to its LF.
    TrailerLine,
    /// A CR opened the final blank line.
    FinalLf,
    Done,
}

/// A pure incremental decoder of `Transfer-Encoding: chunked`: feed it bytes
/// split anywhere; it yields the body bytes without copying them and says
/// where the body ended. Chunk extensions and trailers are skipped.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Feeds wire bytes; `on_data` gets every piece of chunk data in order.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut on_data: impl FnMut(&'a [u8]),
    ) -> Result<Progress, HttpError> {
        let mut at = 0;
        while at < input.len() {
            if self.state == Chunk::Done {
                return Ok(Progress::Done { consumed: at });
            }
            if let Chunk::Data { remaining } = self.state {
                let rest = &input[at..];
                let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                on_data(&rest[..take]);
                at += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { remaining }
                };
                continue;
            }
            self.state = self.step(input[at])?;
            at += 1;
        }
        Ok(if self.state == Chunk::Done {
            Progress::Done { consumed: at }
        } else {
            Progress::More
        })
    }

    /// Advances the framing states (everything but chunk data) by one byte.
    fn step(&self, byte: u8) -> Result<Chunk, HttpError> {
        Ok(match self.state {
            Chunk::SizeStart => match hex_value(byte) {
                Some(v) => Chunk::Size {
                    value: u64::from(v),
                    digits: 1,
                },
                None => return Err(HttpError::EmptyChunkSize),
            },
            Chunk::Size { value, digits } => match (hex_value(byte), byte) {
                (Some(_), _) if digits == MAX_SIZE_DIGITS => return Err(HttpError::ChunkTooLarge),
                (Some(v), _) => Chunk::Size {
                    value: value << 4 | u64::from(v),
                    digits: digits + 1,
                },
                (None, b'\r') => Chunk::SizeLf { value },
                (None, b'\n') => Self::after_size_line(value),
                (None, b';' | b' ' | b'\t') => Chunk::Extension { value },
                (None, other) => return Err(HttpError::ChunkSize(other)),
            },
            Chunk::Extension { value } => match byte {
                b'\r' => Chunk::SizeLf { value },
                b'\n' => Self::after_size_line(value),
                _ => Chunk::Extension { value },
            },
            Chunk::SizeLf { value } => match byte {
                b'\n' => Self::after_size_line(value),
                other => return Err(HttpError::BareCr(other)),
            },
            Chunk::DataCr => match byte {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::SizeStart,
                other => return Err(HttpError::ChunkEnd(other)),
            },
            Chunk::DataLf => match byte {
                b'\n' => Chunk::SizeStart,
                other => return Err(HttpError::BareCr(other)),
            },
            Chunk::TrailerStart => match byte {
                b'\r' => Chunk::FinalLf,
                b'\n' => Chunk::Done,
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match byte {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::FinalLf => match byte {
                b'\n' => Chunk::Done,
                other => return Err(HttpError::BareCr(other)),
            },
            // Handled by the caller before stepping.
            state @ (Chunk::Data { .. } | Chunk::Done) => state,
        })
    }

    fn after_size_line(size: u64) -> Chunk {
        if size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data { remaining: size }
        }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A request head: `METHOD target HTTP/1.1`, `Host`, `Accept:
/// text/event-stream` unless `headers` has an Accept, `Content-Length` when a
/// body is sent, then `headers` as given.
pub fn request_head(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(String, String)],
    body_len: Option<usize>,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !has("host") {
        let _ = write!(head, "Host: {host}\r\n");
    }
    if !has("accept") {
        head.push_str("Accept: text/event-stream\r\n");
    }
    if let Some(len) = body_len {
        if !has("content-length") {
            let _ = write!(head, "Content-Length: {len}\r\n");
        }
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::{encode_chunk, LAST_CHUNK};
    use proptest::prelude::*;

    /// Decodes `input` fed in the pieces given by `cuts`; returns body, where
    /// the body ended within the whole input (if it did), and any error.
    fn decode_in_pieces(
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Option<usize>, Option<HttpError>) {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut offset = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.push(input.len());
        bounds.sort_unstable();
        for end in bounds {
            let piece = &input[offset..end];
            match decoder.decode(piece, |d| body.extend_from_slice(d)) {
                Ok(Progress::More) => offset = end,
                Ok(Progress::Done { consumed }) => return (body, Some(offset + consumed), None),
                Err(e) => return (body, None, Some(e)),
            }
        }
        (body, None, None)
    }

    fn chunked_of(parts: &[&[u8]]) -> Vec<u8> {
        let mut wire: Vec<u8> = parts.iter().flat_map(|p| encode_chunk(p)).collect();
        wire.extend_from_slice(LAST_CHUNK);
        wire
    }

    #[test]
    fn decodes_whole_body_and_stops_at_its_end() {
        let mut wire = chunked_of(&[b"hello ", b"world"]);
        let end = wire.len();
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (body, done, err) = decode_in_pieces(&wire, &[]);
        assert_eq!(body, b"hello world");
        assert_eq!(done, Some(end));
        assert_eq!(err, None);
    }

    #[test]
    fn extensions_trailers_uppercase_and_bare_lf() {
        let wire = b"5;name=value\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (body, done, _) = decode_in_pieces(wire, &[]);
        assert_eq!(body, b"hello0123456789");
        assert_eq!(done, Some(wire.len()));
        let lenient = b"3\nabc\n0\n\n";
        let (body, done, _) = decode_in_pieces(lenient, &[]);
        assert_eq!((body.as_slice(), done), (&b"abc"[..], Some(lenient.len())));
    }

    #[test]
    fn rejects_bad_framing() {
        let cases: [(&[u8], HttpError); 6] = [
            (b"zz\r\n", HttpError::EmptyChunkSize),
            (b"\r\n", HttpError::EmptyChunkSize),
            (b"5x\r\n", HttpError::ChunkSize(b'x')),
            (b"3\r\nabcX", HttpError::ChunkEnd(b'X')),
            (b"3\rX", HttpError::BareCr(b'X')),
            (b"1000000000000000\r\n", HttpError::ChunkTooLarge),
        ];
        for (wire, want) in cases {
            let (_, _, err) = decode_in_pieces(wire, &[]);
            assert_eq!(err, Some(want), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let wire = chunked_of(&[b"abc"]);
        let (body, done, err) = decode_in_pieces(&wire[..wire.len() - 1], &[]);
        assert_eq!((body.as_slice(), done, err), (&b"abc"[..], None, None));
        let decoder = BodyDecoder::new(Framing::Chunked);
        assert!(!decoder.eof_is_clean());
    }

    #[test]
    fn length_and_close_framing() {
        let mut length = BodyDecoder::new(Framing::Length(5));
        let mut body = Vec::new();
        assert_eq!(
            length.decode(b"abc", |d| body.extend_from_slice(d)),
            Ok(Progress::More)
        );
        assert!(!length.eof_is_clean());
        assert_eq!(
            length.decode(b"defgh", |d| body.extend_from_slice(d)),
            Ok(Progress::Done { consumed: 2 })
        );
        assert_eq!(body, b"abcde");
        assert!(length.eof_is_clean());
        let mut close = BodyDecoder::new(Framing::Close);
        assert_eq!(close.decode(b"xyz", |_| {}), Ok(Progress::More));
        assert!(close.eof_is_clean());
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_body(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let wire = chunked_of(&refs);
            let (body, done, err) = decode_in_pieces(&wire, &cuts);
            prop_assert_eq!(body, parts.concat());
            prop_assert_eq!(done, Some(wire.len()));
            prop_assert_eq!(err, None);
        }

        #[test]
        fn never_panics_on_garbage(
            wire in proptest::collection::vec(any::<u8>(), 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let _ = decode_in_pieces(&wire, &cuts);
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\n\nbody"), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
    }

    #[test]
    fn parses_response_heads() {
        let head =
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap();
        assert_eq!(head.status(), Ok((200, 1)));
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.framing(true), Ok(Framing::Chunked));
        let plain = Head::parse(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(plain.status(), Ok((404, 0)));
        assert_eq!(plain.framing(true), Ok(Framing::Close));
        assert!(plain.wants_close(0));
        let sized = Head::parse(b"HTTP/1.1 200\r\ncontent-length: 7, 7\r\n\r\n").unwrap();
        assert_eq!(sized.framing(true), Ok(Framing::Length(7)));
        for bad in [
            &b"HTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(Head::parse(bad).unwrap().status().is_err());
        }
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        let conflicting =
            Head::parse(b"HTTP/1.1 200\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").unwrap();
        assert!(conflicting.framing(true).is_err());
    }

    #[test]
    fn parses_request_heads() {
        let head = Head::parse(b"POST /x?count=3 HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(head.request_line(), Ok(("POST", "/x?count=3", 1)));
        assert!(head.wants_close(1));
        assert_eq!(head.framing(false), Ok(Framing::Length(0)));
        assert!(Head::parse(b"GET /\r\n\r\n")
            .unwrap()
            .request_line()
            .is_err());
    }

    #[test]
    fn builds_request_heads() {
        let head = request_head("GET", "/s?a=1", "h:1", &[], None);
        assert_eq!(
            head,
            b"GET /s?a=1 HTTP/1.1\r\nHost: h:1\r\nAccept: text/event-stream\r\n\r\n"
        );
        let custom = [("accept".to_string(), "*/*".to_string())];
        let head = String::from_utf8(request_head("POST", "/", "h", &custom, Some(3))).unwrap();
        assert_eq!(
            head,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\naccept: */*\r\n\r\n"
        );
    }
}

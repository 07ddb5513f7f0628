//! HTTP/1.1 for the bench client and the bench upstream, on the parsers the
//! crate already has: heads are parsed by `httparse` into owned
//! [`ResponseHead`]s and [`RequestHead`]s, chunked bodies are decoded by
//! [`crate::chunked`]. What this module owns is the rest: which body follows
//! a head ([`Framing`], [`BodyDecoder`]), whether the connection stays open,
//! and building request heads.
//!
//! Nothing here owns a socket: the callers read whatever the network gives
//! and feed it in, so every piece is tested on byte strings. Parsing is
//! strict where a mistake would corrupt the measurement (chunk sizes, a line
//! end after chunk data) and lenient where real servers differ harmlessly
//! (a bare LF as a line end, which `httparse` and the lenient chunked
//! decoder accept; chunk extensions; trailers).

use std::fmt::Write as _;

use crate::chunked::{ChunkError, LenientChunkedDecoder, Progress};

/// Longest head (start line plus headers) either side accepts.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers a head may carry.
const MAX_HEADERS: usize = 128;

/// A malformed head or body; the text says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed start line {0:?}")]
    StartLine(String),
    #[error("malformed header line ({0})")]
    HeaderLine(httparse::Error),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("invalid content-length {0:?}")]
    ContentLength(String),
    #[error("unsupported transfer-encoding {0:?} (only chunked is understood)")]
    TransferEncoding(String),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] ChunkError),
}

/// A response head: status, `HTTP/1.x` minor version, headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor: u8,
    pub headers: Headers,
}

impl ResponseHead {
    /// Parses the response head at the start of `buf`: the head and its
    /// length once complete, `None` while more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let Some(len) = head_len(parsed.parse(buf), buf)? else {
            return Ok(None);
        };
        let (Some(status), Some(minor)) = (parsed.code, parsed.version) else {
            return Err(HttpError::StartLine(first_line(buf)));
        };
        let head = ResponseHead {
            status,
            minor,
            headers: Headers::from_parsed(parsed.headers),
        };
        Ok(Some((head, len)))
    }

    /// How the body is delimited; without `Transfer-Encoding` or
    /// `Content-Length` it runs until the connection closes.
    pub fn framing(&self) -> Result<Framing, HttpError> {
        Ok(self.headers.framing()?.unwrap_or(Framing::Close))
    }
}

/// A request head: method, target, `HTTP/1.x` minor version, headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub minor: u8,
    pub headers: Headers,
}

impl RequestHead {
    /// Parses the request head at the start of `buf`, as
    /// [`ResponseHead::parse`] does.
    pub fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        let Some(len) = head_len(parsed.parse(buf), buf)? else {
            return Ok(None);
        };
        let (Some(method), Some(target), Some(minor)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return Err(HttpError::StartLine(first_line(buf)));
        };
        let head = RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            minor,
            headers: Headers::from_parsed(parsed.headers),
        };
        Ok(Some((head, len)))
    }

    /// How the body is delimited; without `Transfer-Encoding` or
    /// `Content-Length` there is none.
    pub fn framing(&self) -> Result<Framing, HttpError> {
        Ok(self.headers.framing()?.unwrap_or(Framing::Length(0)))
    }

    /// Whether the client asked to close the connection after this exchange.
    pub fn wants_close(&self) -> bool {
        let has = |token: &str| self.headers.has_token("connection", token);
        if self.minor == 0 {
            !has("keep-alive")
        } else {
            has("close")
        }
    }
}

/// What `httparse` made of `buf`: the head's length once complete, `None`
/// while it is incomplete and within [`MAX_HEAD`].
fn head_len(parsed: httparse::Result<usize>, buf: &[u8]) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
        Err(
            e @ (httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine),
        ) => Err(HttpError::HeaderLine(e)),
        Err(_) => Err(HttpError::StartLine(first_line(buf))),
    }
}

/// The first non-empty line of `buf`, for an error message.
fn first_line(buf: &[u8]) -> String {
    let line = buf
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// The header fields of a head, in order: names lowercased, values trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    fn from_parsed(fields: &[httparse::Header<'_>]) -> Self {
        Headers(
            fields
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value);
                    (h.name.to_ascii_lowercase(), value.trim().to_string())
                })
                .collect(),
        )
    }

    /// The first value of header `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`, joined as a list would be.
    fn list(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// Whether list header `name` has `token`, in any case.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.list(name)
            .unwrap_or_default()
            .split(',')
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    }

    /// The framing `Transfer-Encoding` or `Content-Length` set, if any.
    fn framing(&self) -> Result<Option<Framing>, HttpError> {
        if let Some(te) = self.list("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or_default().trim();
            return if last.eq_ignore_ascii_case("chunked") {
                Ok(Some(Framing::Chunked))
            } else {
                Err(HttpError::TransferEncoding(te))
            };
        }
        let Some(cl) = self.list("content-length") else {
            return Ok(None);
        };
        let mut values = cl.split(',').map(str::trim);
        let first = values.next().unwrap_or_default();
        let len: u64 = first
            .parse()
            .map_err(|_| HttpError::ContentLength(cl.clone()))?;
        if values.any(|v| v != first) {
            return Err(HttpError::ContentLength(cl));
        }
        Ok(Some(Framing::Length(len)))
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

/// The crate's chunked decoder in its lenient mode (a bare LF also ends a
/// line), handing out body bytes without copying them.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder(LenientChunkedDecoder);

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder(LenientChunkedDecoder::lenient())
    }
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// Feeds wire bytes; `on_data` gets every piece of chunk data in order.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        on_data: impl FnMut(&'a [u8]),
    ) -> Result<Progress, HttpError> {
        Ok(self.0.decode_with(input, on_data)?)
    }
}

/// Incremental body decoder for any [`Framing`]. Its [`Progress`] is
/// `done` once the body has ended; `consumed` is then where, and the rest
/// of the input belongs to whatever follows on the connection.
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
                Ok(Progress {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            Self::Close => {
                if !input.is_empty() {
                    on_data(input);
                }
                Ok(Progress {
                    consumed: input.len(),
                    done: false,
                })
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

    /// Decodes `input` fed in pieces cut at `cuts`; returns the body, where
    /// the body ended within the whole input (if it did), and any error.
    fn decode_in_pieces(
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Option<usize>, Option<HttpError>) {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut body = Vec::new();
        let mut offset = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.push(input.len());
        bounds.sort_unstable();
        for end in bounds {
            let piece = &input[offset..end];
            match decoder.decode(piece, |d| body.extend_from_slice(d)) {
                Ok(p) if p.done => return (body, Some(offset + p.consumed), None),
                Ok(_) => offset = end,
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

    fn response(text: &[u8]) -> ResponseHead {
        match ResponseHead::parse(text) {
            Ok(Some((head, len))) if len == text.len() => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    fn request(text: &[u8]) -> RequestHead {
        match RequestHead::parse(text) {
            Ok(Some((head, len))) if len == text.len() => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn decodes_whole_body_and_stops_at_its_end() {
        let mut wire = chunked_of(&[b"hello ", b"world"]);
        let end = wire.len();
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for cuts in [&[][..], &[1, 7, 13], &[end - 1, end]] {
            let (body, done, err) = decode_in_pieces(&wire, cuts);
            assert_eq!(body, b"hello world");
            assert_eq!(done, Some(end));
            assert_eq!(err, None);
        }
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
        let cases: [(&[u8], ChunkError); 6] = [
            (b"zz\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"5x\r\n", ChunkError::BadSize),
            (b"3\r\nabcX", ChunkError::MissingCrlf),
            (b"3\rX", ChunkError::BadLineEnd),
            (b"11111111111111111\r\n", ChunkError::SizeOverflow),
        ];
        for (wire, want) in cases {
            let (_, _, err) = decode_in_pieces(wire, &[]);
            assert_eq!(
                err,
                Some(HttpError::Chunked(want)),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
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
        let more = length.decode(b"abc", |d| body.extend_from_slice(d));
        assert_eq!(
            more,
            Ok(Progress {
                consumed: 3,
                done: false
            })
        );
        assert!(!length.eof_is_clean());
        let done = length.decode(b"defgh", |d| body.extend_from_slice(d));
        assert_eq!(
            done,
            Ok(Progress {
                consumed: 2,
                done: true
            })
        );
        assert_eq!(body, b"abcde");
        assert!(length.eof_is_clean());
        let mut close = BodyDecoder::new(Framing::Close);
        assert!(!close.decode(b"xyz", |_| {}).unwrap().done);
        assert!(close.eof_is_clean());
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
    }

    #[test]
    fn response_heads_are_complete_at_their_blank_line() {
        let wire = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        assert_eq!(
            ResponseHead::parse(wire).unwrap().map(|(_, len)| len),
            Some(25)
        );
        let lf = b"HTTP/1.1 200 OK\nA: b\n\nbody";
        assert_eq!(
            ResponseHead::parse(lf).unwrap().map(|(_, len)| len),
            Some(22)
        );
        assert_eq!(
            ResponseHead::parse(b"HTTP/1.1 200 OK\r\nA: b\r\n"),
            Ok(None)
        );
        let big = [b"HTTP/1.1 200 OK\r\nA: ".as_slice(), &[b'x'; MAX_HEAD]].concat();
        assert_eq!(ResponseHead::parse(&big), Err(HttpError::HeadTooLarge));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            ResponseHead::parse(many.as_bytes()),
            Err(HttpError::TooManyHeaders)
        );
    }

    #[test]
    fn parses_response_heads() {
        let head = response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        );
        assert_eq!((head.status, head.minor), (200, 1));
        assert_eq!(head.headers.get("content-type"), Some("text/event-stream"));
        assert_eq!(head.framing(), Ok(Framing::Chunked));
        let plain = response(b"HTTP/1.0 404 Not Found\r\n\r\n");
        assert_eq!((plain.status, plain.minor), (404, 0));
        assert_eq!(plain.framing(), Ok(Framing::Close));
        let sized = response(b"HTTP/1.1 200\r\ncontent-length: 7, 7\r\n\r\n");
        assert_eq!(sized.framing(), Ok(Framing::Length(7)));
        for bad in [&b"HTP/1.1 200 OK\r\n\r\n"[..], b"HTTP/1.1 2000\r\n\r\n"] {
            assert!(
                matches!(ResponseHead::parse(bad), Err(HttpError::StartLine(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            ResponseHead::parse(b"HTTP/1.1 2000\r\n\r\n")
                .unwrap_err()
                .to_string(),
            "malformed start line \"HTTP/1.1 2000\""
        );
        assert!(matches!(
            ResponseHead::parse(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            Err(HttpError::HeaderLine(_))
        ));
        let conflicting =
            response(b"HTTP/1.1 200\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n");
        assert!(conflicting.framing().is_err());
        let unknown = response(b"HTTP/1.1 200\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(unknown.framing().is_err());
    }

    #[test]
    fn parses_request_heads() {
        let head = request(b"POST /x?count=3 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(
            (head.method.as_str(), head.target.as_str(), head.minor),
            ("POST", "/x?count=3", 1)
        );
        assert!(head.wants_close());
        assert_eq!(head.framing(), Ok(Framing::Length(0)));
        let old = request(b"GET / HTTP/1.0\r\nLast-Event-ID: 41\r\n\r\n");
        assert!(old.wants_close());
        assert_eq!(old.headers.get("last-event-id"), Some("41"));
        assert!(!request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").wants_close());
        let chunked = request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.framing(), Ok(Framing::Chunked));
        assert!(!chunked.wants_close());
        assert!(matches!(
            RequestHead::parse(b"GET /\r\n\r\n"),
            Err(HttpError::StartLine(_))
        ));
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

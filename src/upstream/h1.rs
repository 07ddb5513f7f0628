//! Our HTTP/1.1 client side of an upstream connection: request out,
//! response header parsed, body decoded as it arrives.
//!
//! Owning this (rather than pingora's client session) is what lets an idle
//! event stream hold only its socket and a few words of framing state:
//! reads go through one per-thread scratch buffer, and only the bytes a
//! read returned are copied out. The same code serves ordinary responses.
//!
//! Body framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304;
//! chunked when Transfer-Encoding ends in chunked (Content-Length is then
//! ignored and the connection not reused); else Content-Length; else until
//! the connection closes. A connection goes back to the pool only when its
//! body was read to the end, nothing followed it, and both sides meant to
//! keep it alive.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Version};
use pingora_core::protocols::http::v1::client::http_req_header_to_wire;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::chunked::{ChunkHead, ChunkedDecoder, CHUNK_END, LAST_CHUNK};
use crate::write::{write_all_flush, WriteFailure};

/// Largest response header section accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one response.
const MAX_HEADERS: usize = 160;
/// Size of the per-thread buffer every upstream read goes through.
const SCRATCH_SIZE: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// How the response body is delimited.
#[derive(Debug)]
enum Body {
    /// Header not read yet.
    Unknown,
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// One HTTP/1.1 upstream connection and the exchange on it.
pub struct H1Conn {
    stream: Stream,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The request is a HEAD: the response has no body whatever it says.
    head_request: bool,
    /// The request body goes out chunked (else as is, its length announced).
    chunked_request: bool,
    /// The request asked for the connection to close.
    request_close: bool,
    response: Option<Box<ResponseHeader>>,
    /// Bytes read after the response header, not yet handed to the body decoder.
    preread: Option<BytesMut>,
    body: Body,
    /// Both sides allow reuse and the body framing is self-delimiting.
    keepalive: bool,
    /// Bytes arrived beyond the end of the body.
    overread: bool,
}

fn up_err(etype: ErrorType, context: &'static str) -> Box<Error> {
    let mut e = Error::explain(etype, context);
    e.as_up();
    e
}

/// Polls one read of `stream` into the per-thread scratch buffer and hands
/// the bytes read to `take`; `Ok(None)` at end of stream. Nothing is held
/// across a pending read, so an idle connection costs no buffer.
pub fn poll_read_scratch<T>(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
    take: impl FnOnce(&mut [u8]) -> T,
) -> Poll<std::io::Result<Option<T>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                Poll::Ready(Ok((n > 0).then(|| take(&mut scratch[..n]))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Reads whatever `stream` has into the per-thread scratch buffer and
/// hands the bytes read to `take`; `Ok(None)` at end of stream.
async fn read_scratch<T>(
    stream: &mut Stream,
    read_timeout: Option<Duration>,
    mut take: impl FnMut(&mut [u8]) -> T,
) -> Result<Option<T>> {
    let read = poll_fn(|cx| poll_read_scratch(stream, cx, &mut take));
    let res = match read_timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| up_err(ErrorType::ReadTimedout, "reading from upstream"))?,
        None => read.await,
    };
    res.or_err(ErrorType::ReadError, "reading from upstream")
}

/// Takes the body bytes out of `input` (bytes read after the response
/// header), decoding a chunked body in place, and advances `body`. `None`
/// when `input` held no body byte (only chunk framing). Bytes past the end
/// of the body set `overread`.
fn take_body(body: &mut Body, overread: &mut bool, input: &mut [u8]) -> Result<Option<Bytes>> {
    let (data, done) = match body {
        Body::Length { remaining } => {
            let take = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            if take < input.len() {
                *overread = true;
            }
            *remaining -= take as u64;
            (0..take, *remaining == 0)
        }
        Body::Chunked(decoder) => {
            let (progress, data) = decoder.decode_in_place(input).map_err(|e| {
                let mut err = Error::explain(ErrorType::InvalidHTTPHeader, e.to_string());
                err.as_up();
                err
            })?;
            if progress.consumed < input.len() {
                *overread = true;
            }
            (data, progress.done)
        }
        Body::UntilClose => (0..input.len(), false),
        Body::Done | Body::Unknown => return Ok(None),
    };
    if done {
        *body = Body::Done;
    }
    Ok(input
        .get(data)
        .filter(|d| !d.is_empty())
        .map(Bytes::copy_from_slice))
}

impl H1Conn {
    pub fn new(stream: Stream) -> Self {
        H1Conn {
            stream,
            read_timeout: None,
            write_timeout: None,
            head_request: false,
            chunked_request: false,
            request_close: false,
            response: None,
            preread: None,
            body: Body::Unknown,
            keepalive: false,
            overread: false,
        }
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    /// Writes and flushes `parts`; the write timeout bounds each step that
    /// makes no progress (the shared write of `crate::write`).
    async fn write_all<const N: usize>(&mut self, parts: [&[u8]; N]) -> Result<()> {
        let timeout = self.write_timeout.unwrap_or(Duration::MAX);
        write_all_flush(&mut self.stream, parts, timeout)
            .await
            .map_err(|f| match f {
                WriteFailure::Stalled => up_err(ErrorType::WriteTimedout, "writing to upstream"),
                WriteFailure::Failed => up_err(ErrorType::WriteError, "writing to upstream"),
            })
    }

    pub async fn write_request_header(&mut self, req: &RequestHeader) -> Result<()> {
        self.head_request = req.method == Method::HEAD;
        self.chunked_request = req
            .headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        self.request_close = has_token(req.headers.get_all(header::CONNECTION), "close");
        let wire = http_req_header_to_wire(req)
            .ok_or_else(|| up_err(ErrorType::InvalidHTTPHeader, "request not writable"))?;
        self.write_all([&wire]).await
    }

    /// Sends a piece of the request body, framed as the header announced.
    pub async fn write_request_body(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked_request {
            let head = ChunkHead::new(data.len());
            self.write_all([head.as_bytes(), data, CHUNK_END]).await
        } else {
            self.write_all([data]).await
        }
    }

    /// Ends the request body (the last chunk, when chunked).
    pub async fn finish_request_body(&mut self) -> Result<()> {
        if self.chunked_request {
            self.write_all([LAST_CHUNK]).await
        } else {
            Ok(())
        }
    }

    /// Reads whatever the socket has, through the per-thread scratch buffer,
    /// into a buffer of exactly that size. `Ok(None)` at end of stream.
    async fn read_some(&mut self) -> Result<Option<BytesMut>> {
        read_scratch(&mut self.stream, self.read_timeout, |read| {
            BytesMut::from(&*read)
        })
        .await
    }

    /// Reads the response header, skipping interim (1xx) responses other than 101.
    pub async fn read_response_header(&mut self) -> Result<()> {
        let mut buf = self.preread.take().unwrap_or_default();
        loop {
            match parse_head(&buf)? {
                Some((resp, len)) => {
                    let rest = buf.split_off(len);
                    buf = rest;
                    let status = resp.status.as_u16();
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    self.start_body(resp, buf);
                    return Ok(());
                }
                None if buf.len() >= MAX_HEADER_BYTES => {
                    return Err(up_err(
                        ErrorType::InvalidHTTPHeader,
                        "response header too large",
                    ));
                }
                None => {}
            }
            match self.read_some().await? {
                Some(more) => buf.extend_from_slice(&more),
                None if buf.is_empty() => {
                    return Err(up_err(
                        ErrorType::ConnectionClosed,
                        "closed before any response byte",
                    ))
                }
                None => {
                    return Err(up_err(
                        ErrorType::InvalidHTTPHeader,
                        "closed inside the response header",
                    ))
                }
            }
        }
    }

    fn start_body(&mut self, resp: ResponseHeader, rest: BytesMut) {
        let status = resp.status.as_u16();
        let te = resp.headers.get_all(header::TRANSFER_ENCODING);
        let has_te = te.iter().next().is_some();
        let chunked = has_te && last_coding_is_chunked(te);
        let length = content_length(&resp);
        self.keepalive = !self.request_close
            && match resp.version {
                Version::HTTP_11 => !has_token(resp.headers.get_all(header::CONNECTION), "close"),
                _ => has_token(resp.headers.get_all(header::CONNECTION), "keep-alive"),
            };
        self.body = if self.head_request || status == 204 || status == 304 {
            Body::Done
        } else if status == 101 {
            self.keepalive = false;
            Body::UntilClose
        } else if chunked {
            // Both framings present is a smuggling shape: honour chunked, never reuse.
            if length.is_some() || resp.version != Version::HTTP_11 {
                self.keepalive = false;
            }
            Body::Chunked(ChunkedDecoder::new())
        } else if has_te {
            self.keepalive = false;
            Body::UntilClose
        } else {
            match length {
                Some(Ok(0)) => Body::Done,
                Some(Ok(n)) => Body::Length { remaining: n },
                // An unusable length: read to the close, never reuse.
                Some(Err(())) | None => {
                    self.keepalive = false;
                    Body::UntilClose
                }
            }
        };
        if matches!(self.body, Body::Done) && !rest.is_empty() {
            self.overread = true;
        }
        self.preread = (!rest.is_empty()).then_some(rest);
        self.response = Some(Box::new(resp));
    }

    pub fn response_header(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    /// The next piece of the response body; `Ok(None)` once it is complete.
    ///
    /// Each read is decoded where it landed, in the per-thread scratch
    /// buffer, and only the body bytes it holds are copied out, into a
    /// buffer of exactly their size: one allocation and one copy per read.
    pub async fn read_response_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            if matches!(self.body, Body::Done | Body::Unknown) {
                return Ok(None);
            }
            if let Some(mut pre) = self.preread.take() {
                match take_body(&mut self.body, &mut self.overread, &mut pre)? {
                    Some(data) => return Ok(Some(data)),
                    None => continue,
                }
            }
            let H1Conn {
                stream,
                read_timeout,
                body,
                overread,
                ..
            } = self;
            match read_scratch(stream, *read_timeout, |read| {
                take_body(body, overread, read)
            })
            .await?
            {
                Some(Ok(Some(data))) => return Ok(Some(data)),
                Some(Ok(None)) => continue,
                Some(Err(e)) => return Err(e),
                None if matches!(self.body, Body::UntilClose) => {
                    self.body = Body::Done;
                    return Ok(None);
                }
                None => {
                    return Err(up_err(
                        ErrorType::ConnectionClosed,
                        "upstream closed inside the response body",
                    ))
                }
            }
        }
    }

    /// The response body was read to its end.
    pub fn response_done(&self) -> bool {
        matches!(self.body, Body::Done)
    }

    /// The connection can carry another request.
    pub fn reusable(&self) -> bool {
        self.response_done() && self.keepalive && !self.overread && self.preread.is_none()
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The connection after a `101`: its socket, and the bytes the upstream
    /// sent right behind the response header (already read, so they must
    /// go first).
    pub fn into_upgraded(self) -> (Stream, Option<BytesMut>) {
        (self.stream, self.preread)
    }
}

/// Parses a complete response header at the start of `buf`: the header and its length.
fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHeader, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(up_err(
                ErrorType::InvalidHTTPHeader,
                "too many response header fields",
            ))
        }
        Err(_) => {
            return Err(up_err(
                ErrorType::InvalidHTTPHeader,
                "malformed response header",
            ))
        }
    };
    let bad = || up_err(ErrorType::InvalidHTTPHeader, "malformed response header");
    let status = parsed.code.ok_or_else(bad)?;
    let mut resp = ResponseHeader::build(status, Some(parsed.headers.len())).map_err(|_| bad())?;
    resp.set_version(if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    });
    for h in parsed.headers.iter() {
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad())?;
        resp.append_header(h.name.to_string(), value)
            .map_err(|_| bad())?;
    }
    Ok(Some((resp, len)))
}

/// Does a comma-separated header (Connection) name `token`?
fn has_token(values: http::header::GetAll<'_, HeaderValue>, token: &str) -> bool {
    values.iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn last_coding_is_chunked(values: http::header::GetAll<'_, HeaderValue>) -> bool {
    values
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The Content-Length: `None` if absent, `Err` if unusable (invalid, or
/// several that disagree).
fn content_length(resp: &ResponseHeader) -> Option<std::result::Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for v in resp.headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Some(Err(()));
            }
            let n: u64 = match std::str::from_utf8(part).ok().and_then(|s| s.parse().ok()) {
                Some(n) => n,
                None => return Some(Err(())),
            };
            if found.is_some_and(|f| f != n) {
                return Some(Err(()));
            }
            found = Some(n);
        }
    }
    found.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHeader {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn parses_status_version_and_headers() {
        let raw = "HTTP/1.0 201 Created\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody";
        let (resp, len) = parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(resp.status.as_u16(), 201);
        assert_eq!(resp.version, Version::HTTP_10);
        assert_eq!(resp.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&raw[len..], "body");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: 1\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn rejects_malformed_heads() {
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTZ/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        ] {
            assert!(parse_head(raw.as_bytes()).is_err(), "{raw:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(parse_head(raw.as_bytes()).is_err());
    }

    #[test]
    fn content_length_rules() {
        let cl = |v: &str| {
            content_length(&head(&format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {v}\r\n\r\n"
            )))
        };
        assert_eq!(cl("10"), Some(Ok(10)));
        assert_eq!(cl("10, 10"), Some(Ok(10)));
        assert_eq!(cl("10, 11"), Some(Err(())));
        assert_eq!(cl("-1"), Some(Err(())));
        assert_eq!(cl("1e3"), Some(Err(())));
        assert_eq!(content_length(&head("HTTP/1.1 200 OK\r\n\r\n")), None);
    }

    #[test]
    fn chunked_must_be_the_last_coding() {
        let te = |v: &str| {
            let h = head(&format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {v}\r\n\r\n"
            ));
            last_coding_is_chunked(h.headers.get_all(header::TRANSFER_ENCODING))
        };
        assert!(te("chunked"));
        assert!(te("gzip, Chunked"));
        assert!(!te("chunked, gzip"));
        assert!(!te("identity"));
    }

    #[test]
    fn connection_tokens() {
        let h = head("HTTP/1.1 200 OK\r\nconnection: Upgrade, close\r\n\r\n");
        assert!(has_token(h.headers.get_all(header::CONNECTION), "close"));
        assert!(!has_token(
            h.headers.get_all(header::CONNECTION),
            "keep-alive"
        ));
    }
}

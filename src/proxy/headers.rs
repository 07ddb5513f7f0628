//! Header rewriting between client and upstream: hop-by-hop removal
//! (RFC 9110 §7.6.1), forwarding headers, HTTP/2 → HTTP/1.1 request
//! shaping, and the response changes that make an event stream safe
//! to pass through caches and buffering proxies.
//!
//! Pure functions over pingora's header types; no I/O.

use http::{header, HeaderName, HeaderValue, Method, StatusCode, Version};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

// The hop-by-hop fields always removed, whatever `Connection` says; the
// configuration's checks use the same list.
use crate::config::HOP_BY_HOP;

/// Names of the hop-by-hop fields present in `headers`: the fixed list, every
/// `proxy-*` field, and every token listed in `Connection`.
fn hop_by_hop_names(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                names.push(name);
            }
        }
    }
    names.extend(
        headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned(),
    );
    names
}

/// What the proxy knows about the client side when it builds the upstream request.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    /// The client's IP, for X-Forwarded-For.
    pub client_ip: Option<String>,
    /// `https` on a TLS listener, else `http`.
    pub proto: &'a str,
    /// The request target to send upstream, origin form (path and query).
    pub target: &'a [u8],
    /// Does the client request have a body of unknown length that must be sent chunked?
    pub chunked_body: bool,
}

/// The host the client asked for: HTTP/2 `:authority` or absolute-form
/// authority first, then the Host header.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    if let Some(authority) = req.uri.authority() {
        return Some(authority.as_str().to_string());
    }
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The largest request header section ssegate accepts (request line and
/// fields), as for upstream responses; HTTP/2's header list limit is the same.
pub const MAX_REQUEST_HEADER_SIZE: usize = 64 * 1024;

/// The size of a request's header section as HTTP/1.1 would write it: the
/// request line and every field with its `: ` and CRLF.
pub fn request_header_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + " HTTP/1.1\r\n ".len();
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Builds the HTTP/1.1 request header sent to the upstream from the client's.
pub fn upstream_request(client: &RequestHeader, fwd: &Forwarding<'_>) -> Result<RequestHeader> {
    let mut req = client.clone();
    req.set_version(Version::HTTP_11);
    req.set_raw_path(fwd.target)?;
    for name in hop_by_hop_names(&client.headers) {
        req.remove_header(&name);
    }
    let host = request_host(client);
    if let Some(host) = &host {
        // Host is preserved; an HTTP/2 client sent it as :authority.
        req.insert_header(header::HOST, host.as_str())?;
    }
    if let Some(ip) = &fwd.client_ip {
        let xff = match client.headers.get("x-forwarded-for").map(|v| v.to_str()) {
            Some(Ok(prior)) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip.clone(),
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    req.insert_header("x-forwarded-proto", fwd.proto)?;
    if let Some(host) = &host {
        req.insert_header("x-forwarded-host", host.as_str())?;
    }
    if let Some(len) = single_content_length(&client.headers)? {
        // One field with one value, whatever repetition the client used.
        req.insert_header(header::CONTENT_LENGTH, len)?;
    }
    if fwd.chunked_body {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(req)
}

/// The request's Content-Length as one value: repeated fields and lists of
/// the same number (`5, 5`) collapse to it (RFC 9110 §8.6); anything else
/// (differing values, non-digits) is an error, so that the upstream never
/// frames the body differently from us.
fn single_content_length(headers: &http::HeaderMap) -> Result<Option<String>> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().unwrap_or("!");
        for token in text.split(',').map(str::trim) {
            let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
            match found {
                _ if !digits => {
                    return Error::e_explain(ErrorType::InvalidHTTPHeader, "invalid Content-Length")
                }
                Some(prev) if prev.trim_start_matches('0') != token.trim_start_matches('0') => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "conflicting Content-Length",
                    )
                }
                Some(_) => {}
                None => found = Some(token),
            }
        }
    }
    Ok(found.map(str::to_string))
}

/// Is this response an event stream? `text/event-stream`, any case, parameters allowed.
pub fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Does the client ask for an event stream? `Accept` lists `text/event-stream`
/// (any case, parameters allowed), as `EventSource` always sends it.
pub fn accepts_event_stream(req: &RequestHeader) -> bool {
    req.headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|list| {
            list.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    })
}

/// Does the upstream's response carry a content coding other than identity?
pub fn is_compressed(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .map_or(true, |s| !s.trim().eq_ignore_ascii_case("identity"))
        })
}

/// Can a response with this status to this method carry a body at all?
pub fn response_has_body(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// A copy of the upstream's response header in the client's HTTP version:
/// an h2c upstream answers in HTTP/2, which an HTTP/1.1 status line cannot say.
fn for_client(upstream: &ResponseHeader, client_version: Version) -> ResponseHeader {
    let mut resp = upstream.clone();
    resp.set_version(if client_version == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    });
    resp
}

/// The response header for an ordinary (non-stream) response.
pub fn ordinary_response(
    upstream: &ResponseHeader,
    client_version: Version,
    has_body: bool,
) -> Result<ResponseHeader> {
    let mut resp = for_client(upstream, client_version);
    for name in hop_by_hop_names(&upstream.headers) {
        resp.remove_header(&name);
    }
    // A message with Transfer-Encoding is framed by it, never by a
    // Content-Length beside it (RFC 9112 §6.3): that length must not reach
    // the client, who would frame the body differently than we read it.
    if upstream.headers.contains_key(header::TRANSFER_ENCODING) {
        resp.remove_header(&header::CONTENT_LENGTH);
    }
    let unframed = resp.headers.get(header::CONTENT_LENGTH).is_none();
    if has_body && unframed && client_version != Version::HTTP_2 {
        // pingora writes an HTTP/1 response without a length close-delimited,
        // which would cost the client its keep-alive connection.
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(resp)
}

/// Response fields that make no sense on a live stream: a length, and
/// validators or freshness data that would let a cache replay it.
const STREAM_DROPPED: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::ETAG,
    header::LAST_MODIFIED,
    header::EXPIRES,
    header::ACCEPT_RANGES,
    header::AGE,
];

/// The response header for an event stream.
pub fn stream_response(
    upstream: &ResponseHeader,
    client_version: Version,
    cache_control: &str,
) -> Result<ResponseHeader> {
    let mut resp = for_client(upstream, client_version);
    for name in hop_by_hop_names(&upstream.headers) {
        resp.remove_header(&name);
    }
    for name in &STREAM_DROPPED {
        resp.remove_header(name);
    }
    resp.insert_header(header::CACHE_CONTROL, cache_control)?;
    resp.insert_header("x-accel-buffering", "no")?;
    if client_version != Version::HTTP_2 {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(resp)
}

/// The upstream request of a WebSocket handshake, from the forwarded
/// request `req` (hop-by-hop fields already gone): a bodiless `GET` that
/// asks for the upgrade again, since `Upgrade` and `Connection` are
/// hop-by-hop. `key` is the `Sec-WebSocket-Key` to send when the client
/// sent none (an RFC 8441 CONNECT over HTTP/2); the client's other
/// `Sec-WebSocket-*` fields pass unchanged.
pub fn websocket_request(mut req: RequestHeader, key: Option<&str>) -> Result<RequestHeader> {
    req.set_method(Method::GET);
    req.remove_header(&header::CONTENT_LENGTH);
    req.remove_header(&header::TRANSFER_ENCODING);
    req.insert_header(header::UPGRADE, "websocket")?;
    req.insert_header(header::CONNECTION, "Upgrade")?;
    if let Some(key) = key {
        req.insert_header(header::SEC_WEBSOCKET_KEY, key)?;
    }
    Ok(req)
}

/// The client's answer to an accepted WebSocket handshake, from the
/// upstream's `101`: the same `101` for an HTTP/1.1 client (its
/// `Sec-WebSocket-Accept` answers the client's own key), and `200` without
/// `Sec-WebSocket-Accept` for an RFC 8441 CONNECT over HTTP/2.
pub fn websocket_response(
    upstream: &ResponseHeader,
    client_version: Version,
) -> Result<ResponseHeader> {
    let mut resp = for_client(upstream, client_version);
    for name in hop_by_hop_names(&upstream.headers) {
        resp.remove_header(&name);
    }
    resp.remove_header(&header::CONTENT_LENGTH);
    if client_version == Version::HTTP_2 {
        resp.set_status(StatusCode::OK)?;
        resp.remove_header(&header::SEC_WEBSOCKET_ACCEPT);
    } else {
        resp.insert_header(header::UPGRADE, "websocket")?;
        resp.insert_header(header::CONNECTION, "Upgrade")?;
    }
    Ok(resp)
}

/// A small response generated by the proxy itself (404, 502, 504 …).
pub fn error_response(status: u16, body_len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    Ok(resp)
}

/// The header of a shed event stream: a complete `text/event-stream`
/// response of `body_len` bytes (only a `retry:` field), which `EventSource`
/// takes as a stream that ended, so it reconnects after that backoff.
pub fn shed_stream_response(body_len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
    Ok(resp)
}

/// A 503 for a shed request that is not an `EventSource`, with `Retry-After`.
pub fn shed_unavailable_response(retry_after_secs: u64, body_len: usize) -> Result<ResponseHeader> {
    let mut resp = error_response(503, body_len)?;
    resp.insert_header(header::RETRY_AFTER, retry_after_secs.to_string())?;
    Ok(resp)
}

/// Parses a header value as a `HeaderValue`, for callers building headers from config.
pub fn value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "invalid header value", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let client = req(
            "GET",
            "/a",
            &[
                ("host", "h.test"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("trailer", "x"),
                ("upgrade", "h2c"),
                ("proxy-authorization", "basic x"),
                ("x-kept", "yes"),
            ],
        );
        let fwd = Forwarding {
            client_ip: Some("10.0.0.9".into()),
            proto: "http",
            target: b"/a",
            chunked_body: false,
        };
        let up = upstream_request(&client, &fwd).unwrap();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(up.headers.get(gone).is_none(), "{gone} not stripped");
        }
        assert_eq!(up.headers["x-kept"], "yes");
        assert_eq!(up.headers["host"], "h.test");
        assert_eq!(up.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "http");
        assert_eq!(up.headers["x-forwarded-host"], "h.test");
    }

    #[test]
    fn appends_to_existing_forwarded_for() {
        let client = req("GET", "/", &[("host", "h"), ("x-forwarded-for", "1.2.3.4")]);
        let fwd = Forwarding {
            client_ip: Some("5.6.7.8".into()),
            proto: "https",
            target: b"/",
            chunked_body: true,
        };
        let up = upstream_request(&client, &fwd).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "1.2.3.4, 5.6.7.8");
        assert_eq!(up.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn repeated_content_length_is_forwarded_once() {
        let fwd = Forwarding {
            client_ip: None,
            proto: "http",
            target: b"/",
            chunked_body: false,
        };
        for lengths in [&["5", "5"][..], &["5, 5"], &["5"]] {
            let h: Vec<(&str, &str)> = lengths.iter().map(|v| ("content-length", *v)).collect();
            let up = upstream_request(&req("POST", "/", &h), &fwd).unwrap();
            let all: Vec<_> = up.headers.get_all("content-length").iter().collect();
            assert_eq!(all, ["5"], "{lengths:?}");
        }
        for bad in [&["5", "6"][..], &["5, 6"], &["+5"], &[""]] {
            let h: Vec<(&str, &str)> = bad.iter().map(|v| ("content-length", *v)).collect();
            assert!(
                upstream_request(&req("POST", "/", &h), &fwd).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn event_stream_detection() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        assert!(!is_event_stream(&r));
        r.insert_header("content-type", "Text/Event-Stream; charset=utf-8")
            .unwrap();
        assert!(is_event_stream(&r));
        r.insert_header("content-type", "text/event-streamx")
            .unwrap();
        assert!(!is_event_stream(&r));
    }

    #[test]
    fn stream_response_rewrites_caching() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("content-length", "100"),
            ("etag", "\"x\""),
            ("cache-control", "public, max-age=60"),
            ("connection", "close"),
        ] {
            r.insert_header(k, v).unwrap();
        }
        let s = stream_response(&r, Version::HTTP_11, "no-cache").unwrap();
        assert_eq!(s.headers["cache-control"], "no-cache");
        assert_eq!(s.headers["x-accel-buffering"], "no");
        assert_eq!(s.headers["transfer-encoding"], "chunked");
        assert!(s.headers.get("content-length").is_none());
        assert!(s.headers.get("etag").is_none());
        assert!(s.headers.get("connection").is_none());
        let s2 = stream_response(&r, Version::HTTP_2, "no-store").unwrap();
        assert!(s2.headers.get("transfer-encoding").is_none());
        assert_eq!(s2.headers["cache-control"], "no-store");
    }

    #[test]
    fn event_stream_accept_detection() {
        let accepts = |v: &[&str]| {
            let h: Vec<(&str, &str)> = v.iter().map(|v| ("accept", *v)).collect();
            accepts_event_stream(&req("GET", "/", &h))
        };
        assert!(accepts(&["text/event-stream"]));
        assert!(accepts(&["text/html, Text/Event-Stream;q=0.9"]));
        assert!(accepts(&["application/json", "text/event-stream"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["*/*"]));
        assert!(!accepts(&["text/event-streams, text/plain"]));
    }

    #[test]
    fn compressed_detection() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        assert!(!is_compressed(&r));
        r.insert_header("content-encoding", "identity").unwrap();
        assert!(!is_compressed(&r));
        r.insert_header("content-encoding", "gzip").unwrap();
        assert!(is_compressed(&r));
    }
}

//! Which requests are identical, and which may share at all.
//!
//! This module owns the identity of a shared stream: [`stream_key`] builds a
//! [`StreamKey`] from what selects the upstream's response (host, upstream
//! path, query in any order, and the route's key headers), and
//! [`may_share`] says whether a request carrying credentials may join a
//! stream opened for another. It also reads Mercure's `lastEventId` query
//! parameter, through which a browser's first EventSource request, which
//! cannot set headers, asks to resume ([`last_event_id_param`]), and drops it
//! from the query that the shared upstream request carries
//! ([`without_last_event_id`]). Pure: no I/O.
//!
//! Keys are exact and unambiguous: every part is length-prefixed, so no two
//! different requests (after the normalisation described at [`stream_key`])
//! can give equal keys, whatever bytes their parts hold. A key does not name
//! the route or its upstream, nor the key header names: compare keys of one
//! route only.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

/// The query parameter that carries a Last-Event-ID (Mercure's convention).
const LAST_EVENT_ID: &[u8] = b"lastEventId";

/// The identity of a shared stream: requests with equal keys get the same
/// upstream response. Built by [`stream_key`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct StreamKey(Box<[u8]>);

impl StreamKey {
    /// The key's bytes (for a cluster's Redis key names).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The key of a request to a sharing route.
///
/// - `host`: taken as given (the request host as routing sees it).
/// - `path`: the upstream path after prefix stripping, bytes as they are (no
///   normalisation).
/// - `query`: order-insensitive. Split on `&`, empty parts dropped, every
///   `lastEventId` parameter dropped (its name compared after
///   percent-decoding), the rest sorted bytewise; the parts themselves are
///   compared raw, so `a=%41` and `a=A` are different streams. `None` and a
///   query with no parts left are the same.
/// - the values of `key_headers` (lowercase names), in the order given: for
///   each, all its values in their order, an absent header distinct from an
///   empty value.
pub fn stream_key(
    host: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    key_headers: &[String],
) -> StreamKey {
    let mut parts: Vec<&[u8]> = query_parts(query)
        .filter(|part| !is_last_event_id(part))
        .collect();
    parts.sort_unstable();
    let mut key = Vec::with_capacity(
        host.len() + path.len() + query.map_or(0, str::len) + 8 * key_headers.len() + 16,
    );
    put_part(&mut key, host.as_bytes());
    put_part(&mut key, path.as_bytes());
    put_len(&mut key, parts.len());
    for part in parts {
        put_part(&mut key, part);
    }
    put_len(&mut key, key_headers.len());
    for name in key_headers {
        let values = headers.get_all(name.as_str());
        // 0 is an absent header; a header present has at least one value.
        put_len(&mut key, values.iter().count());
        for value in values {
            put_part(&mut key, value.as_bytes());
        }
    }
    StreamKey(key.into_boxed_slice())
}

/// The `lastEventId` query parameter's value, percent-decoded as
/// `URLSearchParams` does (`+` is a space, an invalid `%` escape stays as
/// written): the last one when repeated, `None` when absent or when that
/// value holds a NUL, LF or CR, which an SSE id cannot. The bytes are
/// returned as decoded, UTF-8 or not.
pub fn last_event_id_param(query: Option<&str>) -> Option<Vec<u8>> {
    let value = query_parts(query)
        .filter(|part| is_last_event_id(part))
        .last()?;
    let value = value
        .iter()
        .position(|&b| b == b'=')
        .and_then(|eq| value.get(eq + 1..))
        .unwrap_or_default();
    let value = percent_decode(value).into_owned();
    (!value.iter().any(|b| matches!(b, 0 | b'\n' | b'\r'))).then_some(value)
}

/// The query with every `lastEventId` parameter removed: what the shared
/// upstream request carries. A query without one comes back as it is; one
/// with it keeps its other non-empty parts in their order. `None` when
/// nothing is left.
pub fn without_last_event_id(query: Option<&str>) -> Option<String> {
    let query = query.filter(|q| !q.is_empty())?;
    if !query_parts(Some(query)).any(is_last_event_id) {
        return Some(query.to_owned());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|part| !part.is_empty() && !is_last_event_id(part.as_bytes()))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether the request carries credentials: a `Cookie` or an
/// `Authorization` header.
pub fn carries_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(COOKIE) || headers.contains_key(AUTHORIZATION)
}

/// Whether a request may join a stream opened for another: always when
/// `public`, and otherwise when every credential header it carries
/// (`Cookie`, `Authorization`) is one of `key_headers`, so that only
/// requests with the same credentials share.
pub fn may_share(headers: &HeaderMap, key_headers: &[String], public: bool) -> bool {
    public
        || [COOKIE, AUTHORIZATION].iter().all(|credential| {
            !headers.contains_key(credential)
                || key_headers
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(credential.as_str()))
        })
}

/// The non-empty `&`-separated parts of a query.
fn query_parts(query: Option<&str>) -> impl Iterator<Item = &[u8]> {
    query
        .unwrap_or_default()
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
}

/// Whether a query part is a `lastEventId` parameter (name percent-decoded).
fn is_last_event_id(part: &[u8]) -> bool {
    let name = part.split(|&b| b == b'=').next().unwrap_or_default();
    // Cheap reject: a decoded name of 11 bytes takes at least 11 raw ones.
    name.len() >= LAST_EVENT_ID.len() && percent_decode(name) == LAST_EVENT_ID
}

/// `application/x-www-form-urlencoded` decoding of a name or value: `+` is a
/// space, `%` and two hex digits a byte, anything else (a lone `%` too)
/// itself.
fn percent_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => out.push(b' '),
            b'%' => match tail {
                [high, low, after @ ..] => match (hex(*high), hex(*low)) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        rest = after;
                    }
                    _ => out.push(b'%'),
                },
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Appends `len` as a LEB128 varint: short for the usual short parts, and
/// self-delimiting, so the bytes after it are never read as part of it.
fn put_len(key: &mut Vec<u8>, mut len: usize) {
    loop {
        let low = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            key.push(low);
            return;
        }
        key.push(low | 0x80);
    }
}

fn put_part(key: &mut Vec<u8>, part: &[u8]) {
    put_len(key, part.len());
    key.extend_from_slice(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn key(path: &str, query: Option<&str>) -> StreamKey {
        stream_key("example.com", path, query, &HeaderMap::new(), &[])
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn query_order_does_not_matter() {
        assert_eq!(key("/s", Some("b=2&a=1")), key("/s", Some("a=1&b=2")));
        assert_eq!(key("/s", Some("a=1&a=2")), key("/s", Some("a=2&a=1")));
        assert_eq!(key("/s", Some("a=1&&b=2&")), key("/s", Some("b=2&a=1")));
        assert_eq!(key("/s", None), key("/s", Some("")));
        assert_eq!(key("/s", None), key("/s", Some("&&")));
        assert_ne!(key("/s", Some("a=1")), key("/s", Some("a=2")));
        assert_ne!(key("/s", Some("a=1&a=1")), key("/s", Some("a=1")));
        assert_ne!(
            key("/s", Some("a=%41")),
            key("/s", Some("a=A")),
            "raw parts"
        );
        assert_ne!(key("/s", Some("a=1&b=2")), key("/s", Some("a=1%26b=2")));
    }

    #[test]
    fn last_event_id_is_not_part_of_the_key() {
        let plain = key("/s", Some("topic=x"));
        for query in [
            "topic=x&lastEventId=5",
            "lastEventId=5&topic=x",
            "lastEventId&topic=x",
            "lastEventId=1&topic=x&lastEventId=2",
            "last%45ventId=5&topic=x",
            "%6c%61%73%74%45%76%65%6e%74%49%64=5&topic=x",
        ] {
            assert_eq!(key("/s", Some(query)), plain, "{query}");
        }
        // Names compared exactly.
        for query in [
            "topic=x&lasteventid=5",
            "topic=x&lastEventID=5",
            "topic=x&lastEventId+=5",
        ] {
            assert_ne!(key("/s", Some(query)), plain, "{query}");
        }
        assert_eq!(key("/s", Some("lastEventId=9")), key("/s", None));
    }

    #[test]
    fn host_and_path_are_exact() {
        let h = HeaderMap::new();
        assert_ne!(
            stream_key("a", "/x", None, &h, &[]),
            stream_key("b", "/x", None, &h, &[])
        );
        assert_ne!(key("/x", None), key("/x/", None));
        assert_ne!(key("/x", None), key("/X", None));
        assert_ne!(key("/a%2Fb", None), key("/a/b", None));
        // No split of the same bytes between parts collides.
        assert_ne!(
            stream_key("ab", "/c", None, &h, &[]),
            stream_key("a", "b/c", None, &h, &[])
        );
        assert_ne!(key("/s?a=1", None), key("/s", Some("a=1")));
        assert_ne!(key("/s", Some("a=1&b")), key("/s&a=1", Some("b")));
    }

    #[test]
    fn key_headers_absent_empty_and_repeated() {
        let keyed = names(&["x-tenant", "accept-language"]);
        let of = |h: &HeaderMap| stream_key("h", "/s", None, h, &keyed);
        let absent = of(&headers(&[]));
        let empty = of(&headers(&[("x-tenant", "")]));
        let one = of(&headers(&[("x-tenant", "a")]));
        let two = of(&headers(&[("x-tenant", "a"), ("x-tenant", "b")]));
        let joined = of(&headers(&[("x-tenant", "a,b")]));
        let swapped = of(&headers(&[("x-tenant", "b"), ("x-tenant", "a")]));
        let other = of(&headers(&[("accept-language", "a")]));
        let keys = [&absent, &empty, &one, &two, &joined, &swapped, &other];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Headers not in the key do not matter; names are case-insensitive.
        assert_eq!(of(&headers(&[("x-other", "1"), ("X-Tenant", "a")])), one);
        // Without key headers, headers do not matter at all.
        assert_eq!(
            stream_key("h", "/s", None, &headers(&[("x-tenant", "a")]), &[]),
            stream_key("h", "/s", None, &headers(&[]), &[])
        );
    }

    #[test]
    fn last_event_id_param_decodes() {
        let param = |q| last_event_id_param(Some(q));
        assert_eq!(param("lastEventId=42"), Some(b"42".to_vec()));
        assert_eq!(
            param("a=1&lastEventId=a%20b+c&b=2"),
            Some(b"a b c".to_vec())
        );
        assert_eq!(
            param("lastEventId=%E2%9C%93"),
            Some("✓".as_bytes().to_vec())
        );
        assert_eq!(
            param("lastEventId=%ff"),
            Some(vec![0xFF]),
            "bytes, not UTF-8"
        );
        assert_eq!(
            param("lastEventId=100%&x"),
            Some(b"100%".to_vec()),
            "invalid escape kept"
        );
        assert_eq!(param("lastEventId=%4"), Some(b"%4".to_vec()));
        assert_eq!(param("lastEventId=%zz1"), Some(b"%zz1".to_vec()));
        assert_eq!(param("lastEventId=a=b"), Some(b"a=b".to_vec()));
        assert_eq!(
            param("lastEventId=1&lastEventId=2"),
            Some(b"2".to_vec()),
            "last wins"
        );
        assert_eq!(param("last%45ventId=7"), Some(b"7".to_vec()));
        assert_eq!(param("lastEventId="), Some(Vec::new()));
        assert_eq!(param("lastEventId"), Some(Vec::new()));
        assert_eq!(param("lasteventid=1"), None);
        assert_eq!(param("a=1"), None);
        assert_eq!(param(""), None);
        assert_eq!(last_event_id_param(None), None);
        for bad in [
            "lastEventId=a%00b",
            "lastEventId=%0A",
            "lastEventId=%0d",
            "lastEventId=1&lastEventId=%0A",
        ] {
            assert_eq!(param(bad), None, "{bad}");
        }
        assert_eq!(param("lastEventId=%0A&lastEventId=3"), Some(b"3".to_vec()));
    }

    #[test]
    fn without_last_event_id_keeps_the_rest_in_order() {
        let strip = |q| without_last_event_id(Some(q));
        assert_eq!(strip("b=2&a=1"), Some("b=2&a=1".to_owned()));
        assert_eq!(
            strip("b=2&&a=1&"),
            Some("b=2&&a=1&".to_owned()),
            "untouched"
        );
        assert_eq!(strip("b=2&lastEventId=5&a=1"), Some("b=2&a=1".to_owned()));
        assert_eq!(
            strip("lastEventId=5&b=2&&last%45ventId=6"),
            Some("b=2".to_owned())
        );
        assert_eq!(strip("lastEventId=5"), None);
        assert_eq!(strip("lastEventId=5&&lastEventId"), None);
        assert_eq!(strip(""), None);
        assert_eq!(without_last_event_id(None), None);
        assert_eq!(strip("lastEventIds=1"), Some("lastEventIds=1".to_owned()));
    }

    #[test]
    fn credentials() {
        assert!(!carries_credentials(&headers(&[("x-api-key", "k")])));
        assert!(carries_credentials(&headers(&[("cookie", "s=1")])));
        assert!(carries_credentials(&headers(&[(
            "authorization",
            "Bearer t"
        )])));
        assert!(carries_credentials(&headers(&[("cookie", "")])));

        let none = headers(&[("accept", "text/event-stream")]);
        let cookie = headers(&[("cookie", "s=1")]);
        let both = headers(&[("cookie", "s=1"), ("authorization", "Bearer t")]);
        assert!(may_share(&none, &[], false));
        assert!(!may_share(&cookie, &[], false));
        assert!(may_share(&cookie, &[], true));
        assert!(may_share(&cookie, &names(&["cookie"]), false));
        assert!(!may_share(&cookie, &names(&["authorization"]), false));
        assert!(!may_share(&both, &names(&["cookie"]), false));
        assert!(may_share(
            &both,
            &names(&["x", "authorization", "cookie"]),
            false
        ));
        assert!(may_share(&both, &[], true));
    }

    /// A request as the key sees it: path, query, values of two key headers.
    type Request = (String, Option<String>, Vec<Vec<&'static str>>);

    fn request() -> impl Strategy<Value = Request> {
        let part = prop::sample::select(vec![
            "",
            "a",
            "a=",
            "a=1",
            "a=1&b",
            "b",
            "=",
            "&",
            "%",
            "lastEventId=1",
            "last%45ventId",
            "lastEventId",
        ]);
        let value = prop::sample::select(vec!["", "a", "a,b", ",", "b"]);
        (
            prop::sample::select(vec!["", "/", "/a", "/a&b", "a", "/a=1"]).prop_map(str::to_owned),
            proptest::option::of(proptest::collection::vec(part, 0..4).prop_map(|p| p.join("&"))),
            proptest::collection::vec(proptest::collection::vec(value, 0..3), 2),
        )
    }

    fn key_of((path, query, values): &Request) -> StreamKey {
        let mut map = HeaderMap::new();
        for (name, values) in ["x-a", "x-b"].iter().zip(values) {
            for value in values {
                map.append(*name, HeaderValue::from_static(value));
            }
        }
        stream_key("h", path, query.as_deref(), &map, &names(&["x-a", "x-b"]))
    }

    /// The normalisation `stream_key` promises, written plainly.
    fn normal((path, query, values): &Request) -> (String, Vec<String>, Vec<Vec<&'static str>>) {
        let mut parts: Vec<String> = query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                name != "lastEventId" && name != "last%45ventId"
            })
            .map(str::to_owned)
            .collect();
        parts.sort();
        (path.clone(), parts, values.clone())
    }

    /// Reads a key back into its parts: host, path, query parts, and per key
    /// header its values (`None`: absent). That this always succeeds and
    /// gives the normalised request back proves the encoding injective.
    #[allow(clippy::type_complexity)]
    fn decode(
        key: &StreamKey,
    ) -> Option<(Vec<u8>, Vec<u8>, Vec<Vec<u8>>, Vec<Option<Vec<Vec<u8>>>>)> {
        fn len(rest: &mut &[u8]) -> Option<usize> {
            let mut value = 0usize;
            for shift in (0..64).step_by(7) {
                let (&byte, tail) = rest.split_first()?;
                *rest = tail;
                value |= usize::from(byte & 0x7F) << shift;
                if byte & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }
        fn part(rest: &mut &[u8]) -> Option<Vec<u8>> {
            let n = len(rest)?;
            let (bytes, tail) = (rest.get(..n)?, rest.get(n..)?);
            *rest = tail;
            Some(bytes.to_vec())
        }
        let mut rest = &key.0[..];
        let host = part(&mut rest)?;
        let path = part(&mut rest)?;
        let query = (0..len(&mut rest)?)
            .map(|_| part(&mut rest))
            .collect::<Option<_>>()?;
        let mut headers = Vec::new();
        for _ in 0..len(&mut rest)? {
            let count = len(&mut rest)?;
            let values = (0..count)
                .map(|_| part(&mut rest))
                .collect::<Option<Vec<_>>>()?;
            headers.push((count > 0).then_some(values));
        }
        rest.is_empty().then_some((host, path, query, headers))
    }

    #[test]
    fn varint_lengths() {
        let long = "x".repeat(300);
        let k = stream_key(&long, "", None, &HeaderMap::new(), &[]);
        assert_eq!(&k.0[..3], &[0xAC, 0x02, b'x']);
        let (host, ..) = decode(&k).expect("decodes");
        assert_eq!(host, long.as_bytes());
    }

    /// Host, path and a query of at most one part (none when it would have
    /// more): the key of arbitrary bytes in each.
    fn raw_key(parts: &[String]) -> StreamKey {
        let (host, path, query) = raw_normal(parts);
        stream_key(&host, &path, query.as_deref(), &HeaderMap::new(), &[])
    }

    fn raw_normal(parts: &[String]) -> (String, String, Option<String>) {
        let query = Some(parts[2].clone()).filter(|q| !q.contains('&') && !q.is_empty());
        (parts[0].clone(), parts[1].clone(), query)
    }

    proptest! {
        #[test]
        fn keys_are_equal_exactly_when_the_requests_are(a in request(), b in request()) {
            prop_assert_eq!(key_of(&a) == key_of(&b), normal(&a) == normal(&b));
        }

        #[test]
        fn keys_decode_to_the_normalised_request(
            host in "[a\\x00-\\x03\\x7f-\\u{100}]{0,4}",
            request in request(),
        ) {
            let mut map = HeaderMap::new();
            for (name, values) in ["x-a", "x-b"].iter().zip(&request.2) {
                for value in values {
                    map.append(*name, HeaderValue::from_static(value));
                }
            }
            let keyed = names(&["x-a", "x-b"]);
            let key = stream_key(&host, &request.0, request.1.as_deref(), &map, &keyed);
            let (path, query, values) = normal(&request);
            let bytes = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
            let want = (
                host.into_bytes(),
                path.into_bytes(),
                query.into_iter().map(String::into_bytes).collect(),
                values.iter().map(|v| (!v.is_empty()).then(|| bytes(v))).collect(),
            );
            prop_assert_eq!(decode(&key), Some(want));
        }

        #[test]
        fn any_bytes_never_collide(
            a in proptest::collection::vec("[a&=%/\\x00-\\x03]{0,3}", 3),
            b in proptest::collection::vec("[a&=%/\\x00-\\x03]{0,3}", 3),
        ) {
            prop_assert_eq!(raw_key(&a) == raw_key(&b), raw_normal(&a) == raw_normal(&b));
        }

        #[test]
        fn stripping_then_keying_is_keying(
            query in proptest::option::of("[ab=&%]{0,12}(&lastEventId=[0-9]{0,2})?"),
        ) {
            let stripped = without_last_event_id(query.as_deref());
            prop_assert_eq!(key("/s", query.as_deref()), key("/s", stripped.as_deref()));
            prop_assert_eq!(last_event_id_param(stripped.as_deref()), None);
        }
    }
}

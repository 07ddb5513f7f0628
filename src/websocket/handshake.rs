//! The opening handshake's arithmetic (RFC 6455 §4): the key a client sends,
//! the accept value a server answers with, and the header token test that
//! tells an upgrade request from an ordinary one.
//!
//! The tunnel checks the client's `Sec-WebSocket-Key` ([`valid_key`]) and
//! the upstream's `Sec-WebSocket-Accept` against it ([`accept_key`]), so
//! that a response which is not the answer to this handshake is never
//! relayed as one; [`new_key`] is for the proxy's own handshakes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3's GUID.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bytes a key decodes to (§4.1).
const KEY_BYTES: usize = 16;

/// The base64 of 16 bytes, padded: 22 characters and "==".
const KEY_CHARS: usize = 24;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key ++ GUID)). `key` is the header value's bytes as sent (trimmed of surrounding whitespace by the caller).
///
/// The key is hashed as sent, not decoded: a server answers whatever
/// string it received (§4.2.2, item 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes (rand 0.8, already a dependency: `rand::random::<[u8;16]>()`), base64.
pub fn new_key() -> String {
    STANDARD.encode(rand::random::<[u8; KEY_BYTES]>())
}

/// Whether a `Sec-WebSocket-Key` value is valid: base64 (standard alphabet, padded) decoding to exactly 16 bytes.
///
/// Strict, as servers are (§4.2.1 item 5): no whitespace (the caller trims
/// the header value, as for [`accept_key`]), no URL-safe alphabet, and the
/// unused low bits of the last character must be zero, so each 16 bytes have
/// exactly one valid key.
pub fn valid_key(value: &[u8]) -> bool {
    // Checked first, so that a huge header is never decoded.
    if value.len() != KEY_CHARS {
        return false;
    }
    let mut decoded = [0u8; KEY_CHARS];
    matches!(STANDARD.decode_slice(value, &mut decoded), Ok(KEY_BYTES))
}

/// Whether any value of header `name` in `headers` lists `token` among its comma-separated elements, ASCII case-insensitively, ignoring surrounding whitespace (e.g. `Connection: keep-alive, Upgrade` has token "upgrade").
///
/// Values are compared as bytes, so a value that is not visible ASCII (which
/// `to_str` would refuse) still has its ASCII tokens found.
pub fn has_token(headers: &http::HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            // HTTP's optional whitespace is space and tab; the other ASCII
            // whitespace cannot be in a `HeaderValue`.
            .any(|element| element.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, UPGRADE};
    use http::{HeaderMap, HeaderValue};

    fn headers(lines: &[(http::header::HeaderName, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            let value = HeaderValue::from_bytes(value).expect("valid header value");
            map.append(name.clone(), value);
        }
        map
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // Hashed as sent: another spelling is another answer.
        assert_ne!(
            accept_key(b" dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn new_keys_are_valid_and_fresh() {
        let keys: Vec<String> = (0..8).map(|_| new_key()).collect();
        for key in &keys {
            assert!(valid_key(key.as_bytes()), "{key}");
            assert_eq!(accept_key(key.as_bytes()).len(), 28);
        }
        for (i, key) in keys.iter().enumerate() {
            assert!(!keys[i + 1..].contains(key), "{key} twice");
        }
    }

    #[test]
    fn valid_key_wants_16_bytes_in_padded_standard_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(valid_key(b"/////////////////////w=="));
        // Wrong lengths: 15 and 17 bytes, nothing, and a key with a suffix.
        assert!(!valid_key(b"AAAAAAAAAAAAAAAAAAAA"));
        assert!(!valid_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ==AAAA"));
        // The URL-safe alphabet, and bytes outside any alphabet.
        assert!(!valid_key(b"_____________________w=="));
        assert!(!valid_key(b"-AAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!valid_key(b"AAAAAAAAAA AAAAAAAAAAA=="));
        assert!(!valid_key(b"AAAAAAAAAA\xffAAAAAAAAAAA=="));
        // Padding missing, short, misplaced, or too much of it.
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQAA"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j=Q=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZ==="));
        // Surrounding whitespace is the caller's to trim.
        assert!(!valid_key(b" dGhlIHNhbXBsZSBub25jZQ=="));
        // Low bits set in the last character: not the encoding of any bytes.
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
    }

    #[test]
    fn has_token_finds_a_token_in_any_line() {
        let map = headers(&[(CONNECTION, b"keep-alive, Upgrade")]);
        assert!(has_token(&map, CONNECTION, "upgrade"));
        assert!(has_token(&map, CONNECTION, "KEEP-ALIVE"));
        assert!(!has_token(&map, UPGRADE, "upgrade"));
        // Several header lines: a token in the second one counts.
        let map = headers(&[(CONNECTION, b"keep-alive"), (CONNECTION, b"upgrade")]);
        assert!(has_token(&map, CONNECTION, "Upgrade"));
        // Spaces and tabs around elements, empty elements.
        let map = headers(&[(CONNECTION, b" ,\t UpGrAdE \t, ,close")]);
        assert!(has_token(&map, CONNECTION, "upgrade"));
        assert!(has_token(&map, CONNECTION, "close"));
        let map = headers(&[(UPGRADE, b"websocket")]);
        assert!(has_token(&map, UPGRADE, "WebSocket"));
    }

    #[test]
    fn has_token_matches_whole_elements_only() {
        let map = headers(&[
            (CONNECTION, b"upgrade2, xupgrade, up grade"),
            (CONNECTION, b"\"upgrade\""),
            (CONNECTION, b"upgrade;q=1"),
        ]);
        assert!(!has_token(&map, CONNECTION, "upgrade"));
        assert!(!has_token(&map, CONNECTION, "upgrad"));
        assert!(has_token(&map, CONNECTION, "up grade"));
        assert!(!has_token(&HeaderMap::new(), CONNECTION, "upgrade"));
        // An empty header value has no token.
        let map = headers(&[(CONNECTION, b"")]);
        assert!(!has_token(&map, CONNECTION, "upgrade"));
        // A value with a non-ASCII byte still has its ASCII tokens.
        let map = headers(&[(CONNECTION, b"caf\xe9, upgrade")]);
        assert!(has_token(&map, CONNECTION, "upgrade"));
    }
}

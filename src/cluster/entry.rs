//! What a shared stream looks like in Redis, without any I/O: the key names,
//! the Redis Stream entries and their ids, the response head kept for
//! followers, and how a follower tells that what it reads continues what
//! it has.
//!
//! ```text
//!  ssegate:{H}:events  a Redis Stream; entry id <epoch>-<seq>, fields
//!                        d  the event's bytes (whole lines up to its blank line)
//!                        i  the SSE id in effect after it, if one was set
//!                        f  `d` (an event fired) or `c` (comments only), then
//!                           `=` when `i` is there; `xc` / `xe`: the upstream
//!                           ended cleanly / failed (no `d`, no `i`)
//!  ssegate:{H}:lease   the holder's name (SET NX PX)
//!  ssegate:{H}:meta    hash: e = epoch, s = last seq, h = the response head
//! ```
//!
//! `H` is 16 hex digits of a hash of the route and the stream key: the one
//! `{hash tag}` puts all three keys of a stream on one Redis Cluster slot.
//! An epoch is Redis's clock in ms when the stream's history began; it is
//! new whenever that history was lost, and larger than the one before, so a
//! follower blocked after `<old epoch>-<seq>` is woken by the first entry
//! of the new one.

use std::sync::Arc;

use bytes::Bytes;
use sha1::{Digest, Sha1};

/// The Redis keys of one shared stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeys {
    /// The hash tag's content: 16 lowercase hex digits.
    pub tag: String,
    pub events: String,
    pub lease: String,
    pub meta: String,
}

impl StreamKeys {
    /// The keys of the stream `key` of the route at `route` (its path).
    pub fn new(route: &str, key: &[u8]) -> StreamKeys {
        let mut hash = Sha1::new();
        hash.update((route.len() as u64).to_be_bytes());
        hash.update(route.as_bytes());
        hash.update(key);
        let digest = hash.finalize();
        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        StreamKeys {
            events: format!("ssegate:{{{tag}}}:events"),
            lease: format!("ssegate:{{{tag}}}:lease"),
            meta: format!("ssegate:{{{tag}}}:meta"),
            tag,
        }
    }
}

/// A Redis Stream entry id as ssegate writes them: `<epoch>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub epoch: u64,
    pub seq: u64,
}

impl EntryId {
    pub fn parse(text: &[u8]) -> Option<EntryId> {
        let text = std::str::from_utf8(text).ok()?;
        let (epoch, seq) = text.split_once('-')?;
        Some(EntryId {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// One entry of a shared stream in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub what: What,
}

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A piece of the stream, as the ring holds it (see `share::cut::Piece`).
    Event {
        bytes: Bytes,
        last_id: Option<Arc<[u8]>>,
        dispatched: bool,
    },
    /// The holder's upstream ended; `clean`: on its own, not by a failure.
    End { clean: bool },
}

/// The `f` field of an event entry (`last_id`: its `i`, if any).
pub fn event_flags(last_id: Option<&[u8]>, dispatched: bool) -> &'static [u8] {
    match (dispatched, last_id.is_some()) {
        (true, true) => b"d=",
        (true, false) => b"d",
        (false, true) => b"c=",
        (false, false) => b"c",
    }
}

/// The `f` field of an end entry.
pub fn end_flags(clean: bool) -> &'static [u8] {
    if clean {
        b"xc"
    } else {
        b"xe"
    }
}

/// The entry with `id` and fields `d` = `data`, `f` = `flags`, `i` =
/// `sse_id`; `None` when the fields are not ssegate's.
pub fn decode(
    id: EntryId,
    data: Option<Bytes>,
    flags: &[u8],
    sse_id: Option<&[u8]>,
) -> Option<Entry> {
    let what = match flags {
        b"xc" => What::End { clean: true },
        b"xe" => What::End { clean: false },
        [f @ (b'd' | b'c'), rest @ ..] => {
            let last_id = match rest {
                [] => None,
                [b'='] => Some(Arc::from(sse_id?)),
                _ => return None,
            };
            What::Event {
                bytes: data?,
                last_id,
                dispatched: *f == b'd',
            }
        }
        _ => return None,
    };
    Some(Entry { id, what })
}

/// The upstream's response head as kept in the meta hash for followers:
/// the status line's code, then one `name: value` line per field.
pub fn encode_head(status: u16, headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = format!("{status}\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The status and fields of an encoded head; `None` if it is not one.
pub fn decode_head(text: &[u8]) -> Option<(u16, Vec<(http::HeaderName, http::HeaderValue)>)> {
    let mut lines = text.split(|b| *b == b'\n');
    let status = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let mut fields = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let at = line.windows(2).position(|w| w == b": ")?;
        let name = http::HeaderName::from_bytes(&line[..at]).ok()?;
        let value = http::HeaderValue::from_bytes(&line[at + 2..]).ok()?;
        fields.push((name, value));
    }
    Some((status, fields))
}

/// How an entry a follower read stands to the last one it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The very next one: take it.
    Next,
    /// Already taken (a repeated read): skip it.
    Seen,
    /// Something is missing in between, or the history was started again
    /// (a new epoch): what follows cannot be appended without a check.
    Broken,
}

/// Where `next` stands after `last` (`None`: nothing taken yet, so
/// anything is next).
pub fn continuity(last: Option<EntryId>, next: EntryId) -> Continuity {
    match last {
        None => Continuity::Next,
        Some(last) if next <= last => Continuity::Seen,
        Some(last) if next.epoch == last.epoch && next.seq == last.seq + 1 => Continuity::Next,
        Some(_) => Continuity::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = StreamKeys::new("/feeds/", b"host\0/feeds/a");
        assert_eq!(k.tag.len(), 16);
        assert!(k
            .tag
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        for key in [&k.events, &k.lease, &k.meta] {
            assert!(key.starts_with(&format!("ssegate:{{{}}}:", k.tag)), "{key}");
        }
        assert_ne!(k, StreamKeys::new("/feeds/", b"host\0/feeds/b"));
        // The route is part of it: the same key on two routes is two streams.
        assert_ne!(k.tag, StreamKeys::new("/other/", b"host\0/feeds/a").tag);
        assert_eq!(k, StreamKeys::new("/feeds/", b"host\0/feeds/a"));
    }

    #[test]
    fn entry_ids() {
        let id = EntryId::parse(b"1733400000123-42").expect("an id");
        assert_eq!(
            id,
            EntryId {
                epoch: 1733400000123,
                seq: 42
            }
        );
        assert_eq!(id.to_string(), "1733400000123-42");
        for bad in [&b"12"[..], b"a-1", b"1-", b"-1", b"1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entries_round_trip() {
        let id = EntryId { epoch: 7, seq: 1 };
        let data = Bytes::from_static(b"id: 5\ndata: x\n\n");
        for (last_id, dispatched) in [
            (None, true),
            (Some(&b"5"[..]), true),
            (Some(&b""[..]), false),
            (Some(&b"a=b"[..]), true),
        ] {
            let flags = event_flags(last_id, dispatched);
            let entry = decode(id, Some(data.clone()), flags, last_id).expect("decodes");
            assert_eq!(
                entry.what,
                What::Event {
                    bytes: data.clone(),
                    last_id: last_id.map(Arc::from),
                    dispatched
                }
            );
        }
        for clean in [true, false] {
            let entry = decode(id, None, end_flags(clean), None).expect("decodes");
            assert_eq!(entry.what, What::End { clean });
        }
        assert_eq!(decode(id, Some(data.clone()), b"q", None), None);
        assert_eq!(decode(id, Some(data.clone()), b"dx", None), None);
        assert_eq!(
            decode(id, Some(data), b"d=", None),
            None,
            "`=` needs an `i`"
        );
        assert_eq!(
            decode(id, None, b"d", None),
            None,
            "an event needs its bytes"
        );
    }

    #[test]
    fn heads_round_trip() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/event-stream".parse().expect("v"));
        headers.append("x-a", "1".parse().expect("v"));
        headers.append("x-a", "2: two".parse().expect("v"));
        let text = encode_head(200, &headers);
        let (status, fields) = decode_head(&text).expect("decodes");
        assert_eq!(status, 200);
        let names: Vec<_> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            names,
            [
                ("content-type", &b"text/event-stream"[..]),
                ("x-a", b"1"),
                ("x-a", b"2: two")
            ]
        );
        assert_eq!(decode_head(b"abc\n"), None);
        assert_eq!(decode_head(b"200\nno-colon\n"), None);
    }

    fn id(epoch: u64, seq: u64) -> EntryId {
        EntryId { epoch, seq }
    }

    #[test]
    fn continuity_rows() {
        assert_eq!(continuity(None, id(5, 9)), Continuity::Next);
        assert_eq!(continuity(Some(id(5, 9)), id(5, 10)), Continuity::Next);
        assert_eq!(continuity(Some(id(5, 9)), id(5, 9)), Continuity::Seen);
        assert_eq!(continuity(Some(id(5, 9)), id(5, 3)), Continuity::Seen);
        assert_eq!(continuity(Some(id(5, 9)), id(5, 11)), Continuity::Broken);
        assert_eq!(continuity(Some(id(5, 9)), id(6, 1)), Continuity::Broken);
        assert_eq!(continuity(Some(id(5, 9)), id(6, 10)), Continuity::Broken);
    }

    proptest! {
        /// Taking entries in order, whatever is delivered again or out of
        /// its place: a follower takes each seq once, in order, and
        /// reports a break exactly when one is missing.
        #[test]
        fn a_follower_takes_each_entry_once(
            missing in proptest::option::of(2u64..50),
            repeats in proptest::collection::vec(0usize..50, 0..10),
        ) {
            let mut delivered: Vec<u64> = (1..=50).filter(|s| Some(*s) != missing).collect();
            for r in repeats {
                let at = r.min(delivered.len());
                let again = delivered[..at].last().copied();
                if let Some(s) = again {
                    delivered.insert(at, s);
                }
            }
            let mut last = None;
            let mut taken = Vec::new();
            let mut broken = false;
            for s in delivered {
                match continuity(last, id(1, s)) {
                    Continuity::Next => {
                        taken.push(s);
                        last = Some(id(1, s));
                    }
                    Continuity::Seen => {}
                    Continuity::Broken => {
                        broken = true;
                        break;
                    }
                }
            }
            prop_assert_eq!(broken, missing.is_some());
            let want: Vec<u64> = (1..=missing.map_or(50, |m| m - 1)).collect();
            prop_assert_eq!(taken, want);
        }
    }
}

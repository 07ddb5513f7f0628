//! The oracle for the `framer` target: a naive whole-input SSE parser, read
//! straight from the WHATWG text ("Parsing an event stream", "Interpreting an
//! event stream") with unbounded buffers.
//!
//! `tests/sse_framer.rs` includes this same file (`#[path]`), so the property
//! tests and the fuzz target check the framer against one oracle. It is
//! deliberately simple rather than fast: every line is a slice of the whole
//! input.

use ssegate::sse::{Framer, MAX_EVENT_TYPE_LEN, MAX_ID_LEN};

pub const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// What the reference parser saw: dispatched events and the final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<RefEvent>,
    /// The last event ID string; `None` until an `id` was dispatched.
    pub last_id: Option<Vec<u8>>,
    pub retry: Option<u64>,
    pub comments: u64,
    pub at_boundary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub id: Vec<u8>,
    pub event_type: Vec<u8>,
    pub data: Vec<u8>,
}

/// Splits `body` into complete lines (CRLF, LF or CR) and the unterminated rest.
fn split_lines(body: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                lines.push(&body[start..i]);
                i += 2;
                start = i;
            }
            b'\r' | b'\n' => {
                lines.push(&body[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    (lines, &body[start..])
}

/// The standard's algorithm over a whole stream, with unbounded buffers.
pub fn reference(input: &[u8]) -> Parsed {
    // Until three bytes have arrived, a BOM prefix may still become a BOM.
    let bom_pending = input.len() < BOM.len() && BOM.starts_with(input);
    let body = input.strip_prefix(BOM).unwrap_or(input);
    let (lines, rest) = split_lines(body);
    let mut out = Parsed {
        events: Vec::new(),
        last_id: None,
        retry: None,
        comments: 0,
        at_boundary: false,
    };
    let (mut data, mut event_type) = (Vec::new(), Vec::new());
    let mut id_buffer: Option<Vec<u8>> = None;
    let mut in_event = false;
    for line in lines {
        if line.is_empty() {
            in_event = false;
            out.last_id.clone_from(&id_buffer);
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            data.pop();
            out.events.push(RefEvent {
                id: id_buffer.clone().unwrap_or_default(),
                event_type: std::mem::take(&mut event_type),
                data: std::mem::take(&mut data),
            });
            continue;
        }
        if line[0] == b':' {
            out.comments += 1;
            continue;
        }
        in_event = true;
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let value = &line[c + 1..];
                (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => event_type = value.to_vec(),
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"id" if !value.contains(&0) => id_buffer = Some(value.to_vec()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, &d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                out.retry = Some(ms);
            }
            _ => {}
        }
    }
    out.at_boundary = !bom_pending && rest.is_empty() && !in_event;
    out
}

/// One dispatched event as the framer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: Vec<u8>,
    pub event_type: Vec<u8>,
    pub data: Vec<u8>,
    pub data_truncated: bool,
    pub data_len: u64,
    pub event_type_truncated: bool,
    pub id_too_long: bool,
}

/// Everything observable about a framer after some input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub events: Vec<Seen>,
    pub last_id: Option<Vec<u8>>,
    pub retry: Option<u64>,
    pub count: u64,
    pub comments: u64,
    pub bytes: u64,
    pub at_boundary: bool,
}

/// Feeds `chunks` one after the other and reports everything observable.
pub fn run(mut framer: Framer, chunks: &[&[u8]]) -> Snapshot {
    let mut events = Vec::new();
    for chunk in chunks {
        framer.feed_with(chunk, |e| {
            events.push(Seen {
                id: e.id.to_vec(),
                event_type: e.event_type.to_vec(),
                data: e.data.to_vec(),
                data_truncated: e.data_truncated,
                data_len: e.data_len,
                event_type_truncated: e.event_type_truncated,
                id_too_long: e.id_too_long,
            })
        });
    }
    Snapshot {
        events,
        last_id: framer.last_event_id().map(<[u8]>::to_vec),
        retry: framer.retry(),
        count: framer.events(),
        comments: framer.comments(),
        bytes: framer.bytes(),
        at_boundary: framer.at_event_boundary(),
    }
}

/// What a framer keeping `max_data` data bytes and `max_type` type bytes must
/// report for a reference event. Proxy mode ([`Framer::new`]) keeps none of
/// either; client mode keeps [`MAX_EVENT_TYPE_LEN`] type bytes.
pub fn expected(event: &RefEvent, max_data: usize, max_type: usize) -> Seen {
    let id_too_long = event.id.len() > MAX_ID_LEN;
    Seen {
        id: if id_too_long {
            Vec::new()
        } else {
            event.id.clone()
        },
        event_type: event.event_type[..event.event_type.len().min(max_type)].to_vec(),
        data: event.data[..event.data.len().min(max_data)].to_vec(),
        data_truncated: event.data.len() > max_data,
        data_len: event.data.len() as u64,
        event_type_truncated: event.event_type.len() > max_type,
        id_too_long,
    }
}

/// The snapshot a framer with these caps must produce after all of `input`.
pub fn expected_snapshot(
    want: &Parsed,
    input: &[u8],
    max_data: usize,
    max_type: usize,
) -> Snapshot {
    Snapshot {
        events: want
            .events
            .iter()
            .map(|e| expected(e, max_data, max_type))
            .collect(),
        // An id longer than the cap is reported as no id at all.
        last_id: want.last_id.clone().filter(|id| id.len() <= MAX_ID_LEN),
        retry: want.retry,
        count: want.events.len() as u64,
        comments: want.comments,
        bytes: input.len() as u64,
        at_boundary: want.at_boundary,
    }
}

/// The type bytes client mode keeps, for callers of [`expected`].
pub const CLIENT_MAX_TYPE: usize = MAX_EVENT_TYPE_LEN;

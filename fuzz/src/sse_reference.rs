//! The oracle for the `framer` target: a naive whole-input SSE parser, read
//! straight from the WHATWG text ("Parsing an event stream", "Interpreting an
//! event stream") with unbounded buffers.
//!
//! `tests/sse_framer.rs` includes this same file (`#[path]`), so the property
//! tests and the fuzz target check the framer against one oracle, and its
//! boundaries with one checker ([`check_cuts`]). It is
//! deliberately simple rather than fast: every line is a slice of the whole
//! input.

use ssegate::sse::{Boundary, Framer, MAX_EVENT_TYPE_LEN, MAX_ID_LEN};

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
    /// Every blank line, in order.
    pub dispatches: Vec<Dispatch>,
}

/// A blank line, where the standard runs "dispatch the event".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Offset in the input just past the blank line's line end (CRLF included).
    pub end: usize,
    /// The last event ID string after it.
    pub last_id: Option<Vec<u8>>,
    /// The event fired there, if its data buffer was not empty.
    pub event: Option<RefEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub id: Vec<u8>,
    pub event_type: Vec<u8>,
    pub data: Vec<u8>,
}

/// Splits `body` into complete lines (CRLF, LF or CR), each with the offset
/// just past its line end, and the unterminated rest.
fn split_lines(body: &[u8]) -> (Vec<(&[u8], usize)>, &[u8]) {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                lines.push((&body[start..i], i + 2));
                i += 2;
                start = i;
            }
            b'\r' | b'\n' => {
                lines.push((&body[start..i], i + 1));
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
    let mut out = interpret(body, input.len() - body.len(), None);
    out.at_boundary &= !bom_pending;
    out
}

/// The standard's algorithm over a piece of a stream that starts at an event
/// boundary after the stream start (so a BOM is content, not dropped), where
/// the last event ID (buffer and string) is `last_id`.
pub fn reference_from(piece: &[u8], last_id: Option<Vec<u8>>) -> Parsed {
    interpret(piece, 0, last_id)
}

/// Interprets the lines of `body`, which starts `offset` bytes into the input
/// (the offset of [`Dispatch::end`]), from the given last event ID.
fn interpret(body: &[u8], offset: usize, last_id: Option<Vec<u8>>) -> Parsed {
    let (lines, rest) = split_lines(body);
    let mut out = Parsed {
        events: Vec::new(),
        last_id: last_id.clone(),
        retry: None,
        comments: 0,
        at_boundary: false,
        dispatches: Vec::new(),
    };
    let (mut data, mut event_type) = (Vec::new(), Vec::new());
    let mut id_buffer: Option<Vec<u8>> = last_id;
    let mut in_event = false;
    for (line, end) in lines {
        if line.is_empty() {
            in_event = false;
            out.last_id.clone_from(&id_buffer);
            let mut dispatch = Dispatch {
                end: offset + end,
                last_id: out.last_id.clone(),
                event: None,
            };
            if data.is_empty() {
                event_type.clear();
                out.dispatches.push(dispatch);
                continue;
            }
            data.pop();
            let event = RefEvent {
                id: id_buffer.clone().unwrap_or_default(),
                event_type: std::mem::take(&mut event_type),
                data: std::mem::take(&mut data),
            };
            dispatch.event = Some(event.clone());
            out.dispatches.push(dispatch);
            out.events.push(event);
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
    out.at_boundary = rest.is_empty() && !in_event;
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

/// Feeds `chunks` to `framer` through `Framer::feed_boundaries`, cuts them at
/// the reported boundaries as a shared stream would, and checks, against the
/// reference reading of the whole input, that:
/// - every boundary is inside its chunk, after the previous one, and leaves
///   the framer at an event boundary when it ends the chunk; `feed_boundaries`
///   leaves the framer in the state `feed` does;
/// - the boundaries are the ends of the reference's blank lines, in order,
///   with none missing: the same offsets, except one byte earlier for a blank
///   line whose CRLF is split between chunks; the same last event ID after
///   each (capped like [`Framer::last_event_id`]); `dispatched` exactly where
///   the reference fired an event;
/// - the pieces put back together are the input; each piece, read from the
///   last event ID of the boundary before it, fires exactly the event the
///   whole stream fires at its blank line, ends in that blank line (its only
///   one but for the LF of a split CRLF) and leaves the reported id; the tail
///   after the last boundary fires nothing.
pub fn check_cuts(mut framer: Framer, chunks: &[&[u8]]) -> Result<(), String> {
    let input = chunks.concat();
    let mut plain = framer.clone();
    let (mut got, mut pieces, mut piece) = (Vec::new(), Vec::new(), Vec::new());
    // Absolute offsets of the chunk ends, to recognise a CRLF split by a cut.
    let mut cuts = Vec::with_capacity(chunks.len());
    let (mut fed, mut out) = (0, Vec::new());
    for chunk in chunks {
        out.clear();
        framer.feed_boundaries(chunk, &mut out);
        plain.feed(chunk);
        let mut from = 0;
        for boundary in &out {
            let end = boundary.end;
            if end <= from || end > chunk.len() {
                return Err(format!(
                    "boundary at {end} after {from} in a chunk of {}",
                    chunk.len()
                ));
            }
            piece.extend_from_slice(&chunk[from..end]);
            pieces.push(std::mem::take(&mut piece));
            got.push(Boundary {
                end: fed + end,
                ..boundary.clone()
            });
            from = end;
        }
        if from == chunk.len() && from > 0 && !framer.at_event_boundary() {
            return Err(format!(
                "not at an event boundary after a boundary at {from}"
            ));
        }
        piece.extend_from_slice(&chunk[from..]);
        fed += chunk.len();
        cuts.push(fed);
    }
    if format!("{framer:?}") != format!("{plain:?}") {
        return Err("feed_boundaries and feed leave different states".to_string());
    }

    let want = reference(&input);
    let split_crlf = |end: usize| {
        end >= 2 && input[end - 2..end] == *b"\r\n" && cuts.binary_search(&(end - 1)).is_ok()
    };
    let expected: Vec<Boundary> = want
        .dispatches
        .iter()
        .map(|d| Boundary {
            end: d.end - usize::from(split_crlf(d.end)),
            id: d.last_id.clone().filter(|id| id.len() <= MAX_ID_LEN),
            id_too_long: d.last_id.as_ref().is_some_and(|id| id.len() > MAX_ID_LEN),
            dispatched: d.event.is_some(),
        })
        .collect();
    if got != expected {
        return Err(format!("boundaries\n got: {got:?}\nwant: {expected:?}"));
    }

    let whole = [pieces.concat(), piece.clone()].concat();
    if whole != input {
        return Err("the pieces put together are not the input".to_string());
    }
    let mut last_id = None;
    let mut after_cr = false;
    for (i, (piece, d)) in pieces.iter().zip(&want.dispatches).enumerate() {
        let read = if i == 0 {
            reference(piece)
        } else {
            reference_from(piece, last_id.clone())
        };
        let stray_lf = after_cr && piece.starts_with(b"\n");
        let ends: Vec<usize> = read.dispatches.iter().map(|d| d.end).collect();
        let want_ends = if stray_lf {
            vec![1, piece.len()]
        } else {
            vec![piece.len()]
        };
        let event: Vec<RefEvent> = d.event.iter().cloned().collect();
        if read.events != event || read.last_id != d.last_id || ends != want_ends {
            return Err(format!(
                "piece {i} {:?}: events {:?}, last id {:?}, blank lines ending at {ends:?}; \
                 the whole stream: {event:?}, {:?}, {want_ends:?}",
                String::from_utf8_lossy(piece),
                read.events,
                read.last_id,
                d.last_id
            ));
        }
        last_id.clone_from(&d.last_id);
        after_cr = piece.ends_with(b"\r");
    }
    let read = if pieces.is_empty() {
        reference(&piece)
    } else {
        reference_from(&piece, last_id.clone())
    };
    if !read.events.is_empty() || read.last_id != last_id || read.at_boundary != want.at_boundary {
        return Err(format!(
            "tail {:?}: events {:?}, last id {:?}",
            String::from_utf8_lossy(&piece),
            read.events,
            read.last_id
        ));
    }
    Ok(())
}

/// The type bytes client mode keeps, for callers of [`expected`].
pub const CLIENT_MAX_TYPE: usize = MAX_EVENT_TYPE_LEN;

//! Incremental Server-Sent Events framer.
//!
//! This module owns the reading of an upstream `text/event-stream`: where events
//! begin and end, which event id a client has fully received, and what `retry:`
//! the upstream asked for. It follows the WHATWG HTML standard, "Server-sent
//! events" § "Parsing an event stream" and § "Interpreting an event stream".
//!
//! The [`Framer`] only watches. It is fed the upstream bytes in whatever chunks
//! the network delivers, never rewrites them, owns no socket and no clock, and
//! keeps *state*, not bytes: a field name needs at most five bytes of memory, a
//! 100 MB line without a newline costs nothing, and the only buffers are the id
//! (at most [`MAX_ID_LEN`] bytes, three times over: the line being read,
//! the buffer and the committed string) and, when asked for, a capped
//! prefix of each event's data and type. It has two users:
//!
//! - the proxy ([`Framer::new`]) asks [`Framer::at_event_boundary`] before it
//!   injects a heartbeat comment `:\n\n`, and [`Framer::last_event_id`] /
//!   [`Framer::retry`] when it resumes a stream;
//! - the load-test client ([`Framer::with_data_capture`]) gets every dispatched
//!   [`Event`] through [`Framer::feed_with`];
//! - shared streams cut each chunk into whole events with
//!   [`Framer::feed_boundaries`], which reports where in the chunk every
//!   [`Boundary`] lies and the last event ID there.
//!
//! # Boundaries
//!
//! A boundary is the end of a blank line: the offset just past the line end
//! (CR, LF or CRLF) of every line that is empty. That is where the standard
//! runs "dispatch the event", and there the framer is always
//! [at an event boundary](Framer::at_event_boundary). *Every* blank line is
//! one, whether or not an event fires there: after an event with data, after
//! a block of only comments (a heartbeat `:\n\n`), after `id: 7\n\n` (which
//! fires nothing but moves the last event ID), after a discarded event (no
//! data), and after a blank line alone. Comment lines are not boundaries on
//! their own: they belong to the piece ending at the next blank line.
//!
//! So a stream cut at its boundaries is a run of pieces, each made of whole
//! lines and ending in its only blank line (but for the split CRLF below),
//! followed by a tail that has no blank line (a half-built event, comments,
//! or nothing). Each piece, read by a client that has read the pieces before
//! it, dispatches exactly the event (if any) that the whole stream
//! dispatches at its blank line, and leaves the last event ID that its
//! [`Boundary`] reports; the tail dispatches nothing. A BOM at the stream
//! start is part of the first piece. A later piece that opens with the
//! bytes of a BOM holds them as content (a field name starting with
//! U+FEFF); sent as the first bytes of another response, they would be
//! dropped as that stream's BOM.
//!
//! One case makes a cut depend on the chunking: a CRLF ending a blank line
//! whose CR is the last byte of a chunk. The CR has ended the line, so the
//! event is complete and the boundary is reported at the end of that chunk,
//! without waiting for the next one (with CR-only line ends, waiting would
//! hold every event back until the next arrives). The LF opening the next
//! chunk is then the first byte of the next piece. It belongs to the
//! previous line end and the framer reads it so; a parser that reads the
//! next piece apart from the one before reads it as one more blank line,
//! which dispatches nothing and sets the last event ID to the value it
//! already has (the argument of [`Framer::at_event_boundary`] for
//! heartbeats). When the CR and LF arrive in the same chunk, the boundary is
//! after the LF.
//!
//! The standard decodes the stream as UTF-8 first; the framer works on raw
//! bytes instead, which gives the same lines and fields: the decoder never
//! turns a byte into CR, LF, `:`, space or NUL, and never swallows an ASCII byte
//! into a replacement character. Invalid UTF-8 therefore reaches [`Event`] as
//! the upstream sent it (a browser would see U+FFFD); that is the upstream's
//! business, and the proxy must relay it untouched anyway.

/// The UTF-8 byte order mark, which the UTF-8 decode drops at the very start.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Longest id value the framer keeps. Real ids are short (counters, UUIDs,
/// offsets); a longer one is remembered as "too long" instead of held.
pub const MAX_ID_LEN: usize = 1024;

/// Longest event type kept in capture mode; the rest is flagged as truncated.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// Length of the longest field name we act on ("event", "retry"): anything
/// longer is an ignored field, so the name never needs more memory than this.
const NAME_CAP: usize = 5;

/// Bytes compared at once when looking for a line end; see [`find_line_end`].
const SCAN_BLOCK: usize = 32;

/// One dispatched event, borrowed from the framer for the duration of the
/// callback in [`Framer::feed_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last event ID string after this dispatch, as a browser would put in
    /// `MessageEvent.lastEventId`: empty when no id was ever set, and empty
    /// with [`Event::id_too_long`] when the id exceeded [`MAX_ID_LEN`].
    pub id: &'a [u8],
    /// The event type buffer; empty means the default type `message`. Always
    /// empty in proxy mode ([`Framer::new`]).
    pub event_type: &'a [u8],
    /// The event's data (trailing LF removed, as the standard says), or its
    /// first `max_data` bytes. Always empty in proxy mode.
    pub data: &'a [u8],
    /// `data` holds less than the whole data ([`Event::data_len`] bytes).
    pub data_truncated: bool,
    /// Length of the whole data, kept or not.
    pub data_len: u64,
    /// `event_type` holds less than the whole type.
    pub event_type_truncated: bool,
    /// The id was longer than [`MAX_ID_LEN`] and was not kept.
    pub id_too_long: bool,
}

/// The end of a blank line inside a chunk given to [`Framer::feed_boundaries`];
/// see "Boundaries" in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    /// Offset in the chunk just past the blank line's line end: where the next
    /// piece of the stream starts. Never 0, at most the chunk's length.
    pub end: usize,
    /// The last event ID string after this blank line, as
    /// [`Framer::last_event_id`] would return it there: `None` when no `id`
    /// was ever dispatched or when the last one was longer than
    /// [`MAX_ID_LEN`] ([`Boundary::id_too_long`] tells the two apart),
    /// `Some(b"")` after an empty `id`.
    pub id: Option<Vec<u8>>,
    /// The last event ID is an id longer than [`MAX_ID_LEN`], not kept.
    pub id_too_long: bool,
    /// An event fired at this blank line (its data buffer was not empty), as
    /// opposed to a block of comments, fields without data, or nothing.
    pub dispatched: bool,
}

/// The fields the standard gives a meaning to; every other name is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
}

impl Field {
    fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"data" => Some(Self::Data),
            b"event" => Some(Self::Event),
            b"id" => Some(Self::Id),
            b"retry" => Some(Self::Retry),
            _ => None,
        }
    }

    /// Whether more bytes could still make `name` one of ours: once this is
    /// false the rest of the line can be skipped without looking at it.
    fn could_start(name: &[u8]) -> bool {
        [&b"data"[..], b"event", b"id", b"retry"]
            .iter()
            .any(|known| known.starts_with(name))
    }
}

/// Where the framer stands inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// Nothing of the line seen yet (or the stream has not begun).
    #[default]
    Start,
    /// A line starting with `:`; skipped up to its end.
    Comment,
    /// Reading a field name that may still become one of ours.
    Name { buf: [u8; NAME_CAP], len: u8 },
    /// A field line whose outcome is already known to be "ignore".
    Ignored,
    /// Just after the colon, where one space is dropped.
    ValueStart(Field),
    /// Inside the value of a field we act on.
    Value(Field),
}

/// Whether an id is held, for both the id buffer and the last event ID string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum IdState {
    /// No `id` field was ever processed: the standard's value is "".
    #[default]
    Never,
    Known,
    TooLong,
}

/// The standard's last event ID buffer and last event ID string, plus the value
/// of the `id` line being read: a NUL anywhere in it voids the whole line, so
/// the buffer may only change once the line has ended.
#[derive(Debug, Clone, Default)]
struct IdTracker {
    line: Vec<u8>,
    line_too_long: bool,
    buffer: Vec<u8>,
    buffer_state: IdState,
    /// The buffer changed since it was last copied to the string; spares the
    /// copy at the blank line of events without `id`, i.e. nearly all of them.
    dirty: bool,
    string: Vec<u8>,
    string_state: IdState,
}

impl IdTracker {
    fn begin_line(&mut self) {
        self.line.clear();
        self.line_too_long = false;
    }

    fn push(&mut self, value: &[u8]) {
        if self.line_too_long {
            return;
        }
        if self.line.len().saturating_add(value.len()) > MAX_ID_LEN {
            self.line_too_long = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(value);
        }
    }

    fn finish_line(&mut self) {
        // Swapping instead of copying: the old buffer becomes the next scratch line.
        std::mem::swap(&mut self.line, &mut self.buffer);
        self.buffer_state = if self.line_too_long {
            IdState::TooLong
        } else {
            IdState::Known
        };
        self.dirty = true;
    }

    fn commit(&mut self) {
        if self.dirty {
            self.string.clone_from(&self.buffer);
            self.string_state = self.buffer_state;
            self.dirty = false;
        }
    }
}

/// A buffer of which only the first `cap` bytes are kept, and all are counted.
#[derive(Debug, Clone, Default)]
struct Capped {
    kept: Vec<u8>,
    len: u64,
}

impl Capped {
    fn push(&mut self, bytes: &[u8], cap: usize) {
        self.len = self.len.saturating_add(bytes.len() as u64);
        let room = cap.saturating_sub(self.kept.len());
        if room > 0 {
            let (keep, _) = bytes.split_at(room.min(bytes.len()));
            self.kept.extend_from_slice(keep);
        }
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.len = 0;
    }
}

/// Incremental event-stream framer; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    /// Data bytes kept per event (0 in proxy mode).
    max_data: usize,
    /// Event type bytes kept per event (0 in proxy mode).
    max_type: usize,
    /// BOM bytes matched at the stream start while undecided.
    bom_matched: u8,
    /// The first bytes showed whether the stream starts with a BOM.
    bom_decided: bool,
    line: Line,
    /// The last byte seen was a CR, so an LF next belongs to the same line end.
    pending_cr: bool,
    /// A field line was seen since the last blank line (or the stream start).
    in_event: bool,
    data: Capped,
    event_type: Capped,
    id: IdTracker,
    retry_value: u64,
    retry_has_digits: bool,
    retry: Option<u64>,
    events: u64,
    comments: u64,
    bytes: u64,
}

impl Framer {
    /// Proxy mode: tracks boundaries, ids and `retry`, and stores no data or
    /// event type bytes at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Client mode: as [`Framer::new`], and also keeps the first `max_data`
    /// bytes of each event's data and [`MAX_EVENT_TYPE_LEN`] of its type for
    /// [`Framer::feed_with`]; longer ones are counted and flagged truncated.
    pub fn with_data_capture(max_data: usize) -> Self {
        Self {
            max_data,
            max_type: MAX_EVENT_TYPE_LEN,
            ..Self::default()
        }
    }

    /// Observes the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_with(chunk, |_| {});
    }

    /// Observes the next bytes of the stream, calling `on_event` for every
    /// event dispatched by them, in order.
    pub fn feed_with(&mut self, chunk: &[u8], mut on_event: impl FnMut(&Event<'_>)) {
        self.observe(chunk, &mut on_event, &mut no_boundary);
    }

    /// Observes the next bytes of the stream, as [`Framer::feed`] does, and
    /// appends to `out` every [`Boundary`] (blank line end) inside `chunk`, in
    /// order; `out` is not cleared first. Cutting the stream at the reported
    /// offsets gives whole events: see "Boundaries" in the module
    /// documentation, also for the one case where an offset depends on the
    /// chunking (a blank line's CRLF split between two chunks).
    ///
    /// Allocates a copy of the last event ID for each boundary where one is
    /// kept; [`Framer::feed`] stays the cheaper call when the cuts are not
    /// needed.
    pub fn feed_boundaries(&mut self, chunk: &[u8], out: &mut Vec<Boundary>) {
        self.observe(chunk, &mut |_| {}, &mut |framer, remaining, dispatched| {
            out.push(Boundary {
                end: chunk.len() - remaining,
                id: framer.last_event_id().map(<[u8]>::to_vec),
                id_too_long: framer.id.string_state == IdState::TooLong,
                dispatched,
            });
        });
    }

    /// What every `feed*` call does: counts the bytes, skips a BOM, reads the
    /// lines. `on_boundary` gets the framer just after each blank line, the
    /// number of bytes of `chunk` after the line end, and whether an event
    /// fired. [`no_boundary`] compiles away, which keeps [`Framer::feed`] as
    /// fast as it was before boundaries could be reported.
    fn observe<E, B>(&mut self, chunk: &[u8], on_event: &mut E, on_boundary: &mut B)
    where
        E: FnMut(&Event<'_>),
        B: FnMut(&Self, usize, bool),
    {
        self.bytes = self.bytes.saturating_add(chunk.len() as u64);
        let rest = self.skip_bom(chunk, on_event);
        self.scan(rest, on_event, on_boundary);
    }

    /// Whether a comment plus blank line (`:\n\n`) inserted after the bytes fed
    /// so far leaves every client's reading of the stream unchanged: the same
    /// events, with the same ids, types and data, and the same last event ID.
    ///
    /// True at the start of a line when no field line has been seen since the
    /// last blank line. The blank line ending the heartbeat then dispatches
    /// empty buffers, which fires nothing and sets the last event ID string to
    /// the buffer it already equals. Comments do not count as fields: after a
    /// lone comment we are still at a boundary.
    ///
    /// A CR ending the bytes so far has already ended its line (CR alone is a
    /// line end), so after `data: x\r` this is false and after `data: x\r\n\r`
    /// it is true, even though the upstream's next byte may be an LF that would
    /// have joined that CR. After the heartbeat, such an LF is a line end of
    /// its own: one more blank line, at a boundary, dispatching empty buffers
    /// again, which changes nothing observable by the argument above.
    ///
    /// False before the first byte, and while the first bytes are still a
    /// possible BOM: clients drop a BOM only at the very start of the stream,
    /// so a heartbeat sent ahead of it would turn it into part of the first
    /// field's name (`\u{FEFF}data`) and lose the first event. The same holds
    /// for any injected bytes, `retry:` included. A proxy that would rather
    /// keep a silent new stream alive can test `bytes() == 0` itself, taking
    /// that risk knowingly.
    pub fn at_event_boundary(&self) -> bool {
        self.bom_decided && self.line == Line::Start && !self.in_event
    }

    /// The last event ID string as of the last dispatch (blank line): `None`
    /// if no `id` field was ever dispatched, or if the last one was longer than
    /// [`MAX_ID_LEN`]; `Some(b"")` after an empty `id`.
    pub fn last_event_id(&self) -> Option<&[u8]> {
        match self.id.string_state {
            IdState::Known => Some(&self.id.string),
            IdState::Never | IdState::TooLong => None,
        }
    }

    /// The last valid `retry` value in milliseconds (saturating at `u64::MAX`).
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Events dispatched: blank lines reached with a non-empty data buffer.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Complete comment lines (lines starting with `:`) seen.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Total bytes fed, BOM included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets the bytes fed since the last blank line, as if they had never
    /// been fed: the half-built event (its data, type and any complete or
    /// partial `id` line, which the last event ID buffer drops back to the
    /// last event ID string), the line being read and a trailing CR. For a
    /// stream whose upstream failed mid-event and is continued by another
    /// response that starts at a boundary. Afterwards the framer stands at an
    /// event boundary with the same [`Framer::last_event_id`], or, when no
    /// byte past a possible BOM was fed yet, back at the stream start, where
    /// a BOM may still come.
    ///
    /// Kept: the last event ID, the counters, and [`Framer::retry`], which
    /// the standard applies at the end of the `retry` line, so a valid one in
    /// the dropped part stays in force (it is the upstream's latest wish, for
    /// the reconnection that follows). Called right after a blank line, it
    /// only forgets a CR that ended it: an LF opening the next bytes is then
    /// one more blank line, which changes nothing (see
    /// [`Framer::at_event_boundary`]).
    pub fn discard_partial(&mut self) {
        if !self.bom_decided {
            self.bom_matched = 0;
        }
        self.line = Line::Start;
        self.pending_cr = false;
        self.in_event = false;
        self.data.clear();
        self.event_type.clear();
        self.id.line.clear();
        self.id.line_too_long = false;
        self.id.buffer.clone_from(&self.id.string);
        self.id.buffer_state = self.id.string_state;
        self.id.dirty = false;
    }

    /// Consumes a BOM at the stream start, which may arrive split over chunks,
    /// and returns what follows it.
    fn skip_bom<'c, F: FnMut(&Event<'_>)>(
        &mut self,
        chunk: &'c [u8],
        on_event: &mut F,
    ) -> &'c [u8] {
        let mut rest = chunk;
        while !self.bom_decided {
            let Some((&byte, tail)) = rest.split_first() else {
                break;
            };
            let matched = usize::from(self.bom_matched);
            if BOM.get(matched) == Some(&byte) {
                rest = tail;
                self.bom_matched += 1;
                self.bom_decided = usize::from(self.bom_matched) == BOM.len();
            } else {
                self.bom_decided = true;
                // What looked like the start of a BOM was line content after all.
                // It holds no line end, so no boundary can be reported from it.
                let replay = BOM.get(..matched).unwrap_or_default();
                self.scan(replay, on_event, &mut no_boundary);
            }
        }
        rest
    }

    /// Splits `rest` at line ends and feeds each piece to the line state;
    /// calls `on_boundary` after each blank line's end, with the length of
    /// what follows it in `rest`.
    fn scan<E, B>(&mut self, mut rest: &[u8], on_event: &mut E, on_boundary: &mut B)
    where
        E: FnMut(&Event<'_>),
        B: FnMut(&Self, usize, bool),
    {
        if self.pending_cr {
            match rest.split_first() {
                None => return,
                Some((&b'\n', after_lf)) => rest = after_lf,
                Some(_) => {}
            }
            self.pending_cr = false;
        }
        loop {
            let Some(end) = find_line_end(rest) else {
                self.consume(rest);
                return;
            };
            let (content, from_end) = rest.split_at(end);
            self.consume(content);
            let blank = matches!(self.line, Line::Start);
            let fires = blank && self.data.len > 0;
            self.end_line(on_event);
            let Some((&line_end, after)) = from_end.split_first() else {
                return;
            };
            rest = after;
            if line_end == b'\r' {
                match rest.split_first() {
                    // Remembered so that an LF opening the next chunk is not a blank line.
                    None => self.pending_cr = true,
                    Some((&b'\n', after_lf)) => rest = after_lf,
                    Some(_) => {}
                }
            }
            if blank {
                on_boundary(self, rest.len(), fires);
            }
        }
    }

    /// Takes in bytes of the current line; `content` holds no CR or LF.
    fn consume(&mut self, mut content: &[u8]) {
        while let Some((&first, tail)) = content.split_first() {
            match self.line {
                Line::Start if first == b':' => {
                    self.line = Line::Comment;
                    return;
                }
                Line::Start => {
                    self.in_event = true;
                    self.line = Line::Name {
                        buf: [0; NAME_CAP],
                        len: 0,
                    };
                }
                // Comments and ignored fields cost nothing past their first bytes.
                Line::Comment | Line::Ignored => return,
                Line::Name { buf, len } => content = self.consume_name(buf, len, content),
                Line::ValueStart(field) => {
                    if first == b' ' {
                        content = tail;
                    }
                    self.line = Line::Value(field);
                }
                Line::Value(field) => {
                    self.consume_value(field, content);
                    return;
                }
            }
        }
    }

    /// Reads field-name bytes and returns what follows the colon, if reached.
    fn consume_name<'c>(
        &mut self,
        mut buf: [u8; NAME_CAP],
        len: u8,
        content: &'c [u8],
    ) -> &'c [u8] {
        let colon = content.iter().position(|&b| b == b':');
        let (part, from_colon) = content.split_at(colon.unwrap_or(content.len()));
        let len = usize::from(len);
        let new_len = len + part.len();
        let Some(slot) = buf.get_mut(len..new_len) else {
            // Longer than any name we act on.
            self.line = Line::Ignored;
            return &[];
        };
        slot.copy_from_slice(part);
        let name = buf.get(..new_len).unwrap_or_default();
        match (from_colon.split_first(), Field::from_name(name)) {
            (None, _) if Field::could_start(name) => {
                self.line = Line::Name {
                    buf,
                    len: new_len as u8,
                };
                &[]
            }
            (Some((_colon, value)), Some(field)) => {
                self.begin_field(field);
                self.line = Line::ValueStart(field);
                value
            }
            _ => {
                self.line = Line::Ignored;
                &[]
            }
        }
    }

    /// Takes in bytes of a field value (one space after the colon already gone).
    fn consume_value(&mut self, field: Field, value: &[u8]) {
        match field {
            Field::Data => self.data.push(value, self.max_data),
            Field::Event => self.event_type.push(value, self.max_type),
            // The standard ignores an `id` line containing NUL outright.
            Field::Id if value.contains(&0) => self.line = Line::Ignored,
            Field::Id => self.id.push(value),
            Field::Retry => {
                for &byte in value {
                    if !byte.is_ascii_digit() {
                        self.line = Line::Ignored;
                        return;
                    }
                    self.retry_value = self
                        .retry_value
                        .saturating_mul(10)
                        .saturating_add(u64::from(byte - b'0'));
                    self.retry_has_digits = true;
                }
            }
        }
    }

    /// Resets what a field's value replaces, before its first value byte.
    fn begin_field(&mut self, field: Field) {
        match field {
            Field::Data => {}
            Field::Event => self.event_type.clear(),
            Field::Id => self.id.begin_line(),
            Field::Retry => {
                self.retry_value = 0;
                self.retry_has_digits = false;
            }
        }
    }

    /// Applies a field whose line has ended.
    fn finish_field(&mut self, field: Field) {
        match field {
            Field::Data => self.data.push(b"\n", self.max_data),
            Field::Event => {}
            Field::Id => self.id.finish_line(),
            // An empty value is not a number, whatever "consists of only ASCII
            // digits" says of the empty string; browsers do not apply it either.
            Field::Retry if self.retry_has_digits => self.retry = Some(self.retry_value),
            Field::Retry => {}
        }
    }

    fn end_line<F: FnMut(&Event<'_>)>(&mut self, on_event: &mut F) {
        match std::mem::take(&mut self.line) {
            Line::Start => self.dispatch(on_event),
            Line::Comment => self.comments = self.comments.saturating_add(1),
            Line::Ignored => {}
            // A known name without colon is that field with an empty value.
            Line::Name { buf, len } => {
                let name = buf.get(..usize::from(len)).unwrap_or_default();
                if let Some(field) = Field::from_name(name) {
                    self.begin_field(field);
                    self.finish_field(field);
                }
            }
            Line::ValueStart(field) | Line::Value(field) => self.finish_field(field),
        }
    }

    /// The standard's "dispatch the event" steps, run at every blank line.
    fn dispatch<F: FnMut(&Event<'_>)>(&mut self, on_event: &mut F) {
        self.in_event = false;
        // Step 1 happens even when nothing is dispatched: `id: 5\n\n` moves
        // the last event ID string without firing an event.
        self.id.commit();
        if self.data.len > 0 {
            self.events = self.events.saturating_add(1);
            // Each data line ends the buffer with LF; the standard drops the last one.
            let whole = self.data.len - 1;
            let mut data = &self.data.kept[..];
            if data.len() as u64 > whole {
                data = data.split_last().map_or(data, |(_, init)| init);
            }
            on_event(&Event {
                id: &self.id.string,
                event_type: &self.event_type.kept,
                data,
                data_truncated: (data.len() as u64) < whole,
                data_len: whole,
                event_type_truncated: (self.event_type.kept.len() as u64) < self.event_type.len,
                id_too_long: self.id.string_state == IdState::TooLong,
            });
        }
        self.data.clear();
        self.event_type.clear();
    }
}

/// The boundary callback of everything but [`Framer::feed_boundaries`].
///
/// One named function rather than a closure at each call site: `feed` and the
/// BOM replay then share one instance of [`Framer::scan`], called from two
/// places, which the compiler inlines no differently than before boundaries
/// existed; a closure per site made the main one a single-caller instance,
/// inlined into `feed`, and the bench 4 % slower on long lines and comments.
fn no_boundary(_: &Framer, _: usize, _: bool) {}

/// Position of the first CR or LF in `hay`.
///
/// A plain `position` stops to branch on every byte; testing a whole block
/// with a branch-free fold lets the compiler use vector compares, so long data
/// lines are skipped several bytes per cycle without an extra crate.
fn find_line_end(hay: &[u8]) -> Option<usize> {
    let is_line_end = |b: &u8| *b == b'\n' || *b == b'\r';
    let mut blocks = hay.chunks_exact(SCAN_BLOCK);
    let mut offset = 0;
    for block in &mut blocks {
        let hits = block.iter().fold(0u8, |acc, &b| {
            acc | u8::from(b == b'\n') | u8::from(b == b'\r')
        });
        if hits != 0 {
            return block.iter().position(is_line_end).map(|i| offset + i);
        }
        offset += SCAN_BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(is_line_end)
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an [`Event`], to collect them past the callback.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        id: Vec<u8>,
        event_type: Vec<u8>,
        data: Vec<u8>,
        data_truncated: bool,
        data_len: u64,
        event_type_truncated: bool,
        id_too_long: bool,
    }

    fn feed_all(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.feed_with(chunk, |e| {
                out.push(Owned {
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
        out
    }

    /// Data of the events dispatched by `chunks`, in client mode.
    fn data_of(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut framer = Framer::with_data_capture(1 << 20);
        feed_all(&mut framer, chunks)
            .into_iter()
            .map(|e| e.data)
            .collect()
    }

    fn ids_of(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut framer = Framer::with_data_capture(1 << 20);
        feed_all(&mut framer, chunks)
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    fn boundary_after(chunks: &[&[u8]]) -> bool {
        let mut framer = Framer::new();
        feed_all(&mut framer, chunks);
        framer.at_event_boundary()
    }

    #[test]
    fn every_line_ending() {
        let input: &[u8] = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\ndata: e\n\r";
        assert_eq!(data_of(&[input]), [&b"a"[..], b"b", b"c", b"d", b"e"]);
        // Mixed endings inside one event.
        assert_eq!(data_of(&[b"data: a\rdata: b\ndata: c\r\n\n"]), [b"a\nb\nc"]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // Were the LF a line end of its own, "a" would be dispatched alone.
        assert_eq!(
            data_of(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
            [b"a\nb"]
        );
        // A CR then something else: the CR ended the line by itself.
        assert_eq!(data_of(&[b"data: a\r", b"\r"]), [b"a"]);
        // Empty chunks in between do not forget the CR.
        assert_eq!(
            data_of(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]),
            [b"a\nb"]
        );
    }

    #[test]
    fn bom_skipped_at_start_even_when_split() {
        let mut framer = Framer::new();
        feed_all(&mut framer, &[&[0xEF], &[0xBB]]);
        assert!(!framer.at_event_boundary(), "a possible BOM is pending");
        feed_all(&mut framer, &[&[0xBF]]);
        assert!(framer.at_event_boundary());
        feed_all(&mut framer, &[b"data: x\n\n"]);
        assert_eq!(framer.events(), 1);
        assert_eq!(framer.bytes(), 12);
        assert_eq!(
            data_of(&[&[0xEF], &[0xBB, 0xBF, b'd'], b"ata: x\n\n"]),
            [b"x"]
        );
    }

    #[test]
    fn bom_not_at_start_is_content() {
        let bom_data = [&BOM[..], b"data: x\n\n"].concat();
        // A second BOM: the first line's field name is "\u{FEFF}data".
        assert!(data_of(&[&BOM, &bom_data]).is_empty());
        assert!(data_of(&[b"\n", &bom_data]).is_empty());
        // A BOM prefix that turns out not to be one is kept as line content.
        assert!(data_of(&[&[0xEF, 0xBB], b"data: x\n\n"]).is_empty());
        assert!(!boundary_after(&[&[0xEF, 0xBB], b"x"]));
        assert!(!boundary_after(&[&[0xEF], b":\n"]), "a field named \\xEF");
        let mut framer = Framer::new();
        feed_all(&mut framer, &[&[0xEF], b"\n\n"]);
        assert_eq!(framer.events(), 0);
    }

    #[test]
    fn comments_are_counted_and_ignored() {
        let mut framer = Framer::with_data_capture(64);
        let events = feed_all(
            &mut framer,
            &[b": hello\n:\r\ndata: a\n: in event\r", b"data: b\n\n:tail"],
        );
        assert_eq!(
            framer.comments(),
            3,
            "the unterminated comment is not counted yet"
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, b"a\nb");
        // A colon not at the start of a line is a field separator, not a comment.
        assert_eq!(data_of(&[b"data:: x\n\n"]), [b": x"]);
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        assert_eq!(data_of(&[b"data\n\n"]), [b""]);
        assert_eq!(data_of(&[b"data\ndata\n\n"]), [b"\n"]);
        assert_eq!(data_of(&[b"da", b"ta\rdata: x\r\r"]), [b"\nx"]);
        // Only one space is dropped, and only a space.
        assert_eq!(
            data_of(&[b"data:  x\n\ndata:\tx\n\n"]),
            [&b" x"[..], b"\tx"]
        );
        // Unknown and near-miss names are ignored fields.
        assert!(data_of(&[b"dat: x\ndatas: x\nData: x\n data: x\nx\n\n"]).is_empty());
    }

    #[test]
    fn event_type() {
        let mut framer = Framer::with_data_capture(64);
        let events = feed_all(
            &mut framer,
            &[b"event: a\nevent: add\ndata: 1\n\ndata: 2\n\nevent: x\nevent\ndata: 3\n\n"],
        );
        let types: Vec<_> = events.iter().map(|e| e.event_type.clone()).collect();
        assert_eq!(types, [&b"add"[..], b"", b""]);
        // A type without data dispatches nothing and does not leak into the next event.
        let events = feed_all(&mut framer, &[b"event: lost\n\ndata: 4\n\n"]);
        assert_eq!(events[0].event_type, b"");
        assert_eq!(framer.events(), 4);
    }

    #[test]
    fn id_rules() {
        // Persistence across events without `id`, and NUL voiding the line.
        let ids = ids_of(&[b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\n"]);
        assert_eq!(ids, [b"1", b"1", b"1"]);
        // An empty id, with or without colon, resets to "".
        assert_eq!(
            ids_of(&[b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\ndata: c\n\nid:\ndata: d\n\n"]),
            [&b"1"[..], b"", b"2", b""]
        );
        // Split across chunks, NUL in a later chunk.
        assert_eq!(
            ids_of(&[b"id: 7\ndata: a\n\nid: 8", b"\0", b"9\ndata: b\n\n"]),
            [b"7", b"7"]
        );
        assert_eq!(ids_of(&[b"i", b"d:", b" 4", b"2\ndata: a\n\n"]), [b"42"]);
    }

    #[test]
    fn last_event_id_moves_only_at_dispatch() {
        let mut framer = Framer::new();
        assert_eq!(framer.last_event_id(), None);
        framer.feed(b"data: a\n\n");
        assert_eq!(framer.last_event_id(), None, "never set");
        framer.feed(b"id: 5\ndata: b\n");
        assert_eq!(framer.last_event_id(), None, "event not complete");
        framer.feed(b"\n");
        assert_eq!(framer.last_event_id(), Some(&b"5"[..]));
        // An id with no data still sets the string, though nothing fires.
        framer.feed(b"id: 6\n\n");
        assert_eq!(framer.last_event_id(), Some(&b"6"[..]));
        assert_eq!(framer.events(), 2);
        framer.feed(b"id\n\n");
        assert_eq!(framer.last_event_id(), Some(&b""[..]));
        framer.feed(b"id: 7\ndata: half");
        assert_eq!(framer.last_event_id(), Some(&b""[..]));
    }

    #[test]
    fn long_ids_are_not_kept() {
        let mut framer = Framer::new();
        let exact = [b"id: ".to_vec(), vec![b'a'; MAX_ID_LEN], b"\n\n".to_vec()].concat();
        framer.feed(&exact);
        assert_eq!(framer.last_event_id().map(<[u8]>::len), Some(MAX_ID_LEN));
        let mut long = [
            b"id: ".to_vec(),
            vec![b'b'; MAX_ID_LEN + 1],
            b"\ndata: x\n\n".to_vec(),
        ]
        .concat();
        let events = feed_all(&mut framer, &long.chunks(100).collect::<Vec<_>>());
        assert_eq!(framer.last_event_id(), None);
        assert!(events[0].id_too_long && events[0].id.is_empty());
        // A too-long id that contains NUL is ignored like any other.
        long.insert(500, 0);
        framer.feed(b"id: 3\n\n");
        framer.feed(&long);
        assert_eq!(framer.last_event_id(), Some(&b"3"[..]));
        framer.feed(b"id: 4\n\n");
        assert_eq!(framer.last_event_id(), Some(&b"4"[..]));
        assert!(framer.id.string.capacity() <= 2 * MAX_ID_LEN);
    }

    #[test]
    fn retry_rules() {
        let mut framer = Framer::new();
        assert_eq!(framer.retry(), None);
        framer.feed(b"retry: 1500\n");
        assert_eq!(
            framer.retry(),
            Some(1500),
            "applied at the line end, not at dispatch"
        );
        for bad in [
            &b"retry: 15x\n"[..],
            b"retry:\n",
            b"retry\n",
            b"retry: -1\n",
            b"retry:  5\n",
            b"retry: 1 \n",
            b"retry: 0x1\n",
        ] {
            framer.feed(bad);
            assert_eq!(
                framer.retry(),
                Some(1500),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        framer.feed(b"retry:0\n");
        assert_eq!(framer.retry(), Some(0));
        framer.feed(b"retry: 99999999999999999999999999\n");
        assert_eq!(framer.retry(), Some(u64::MAX));
        framer.feed(b"re");
        framer.feed(b"try: 2");
        framer.feed(b"5\r");
        assert_eq!(framer.retry(), Some(25));
    }

    #[test]
    fn events_need_data() {
        let mut framer = Framer::new();
        framer.feed(b"\n\nid: 1\n\nevent: x\n\nretry: 5\n\n: c\n\nfoo: bar\n\n");
        assert_eq!(framer.events(), 0);
        framer.feed(b"data\n\ndata: a\n\n");
        assert_eq!(framer.events(), 2);
        framer.feed(b"data: unfinished\n");
        assert_eq!(framer.events(), 2, "no blank line yet");
    }

    #[test]
    fn boundary_after_each_kind_of_line() {
        assert!(!boundary_after(&[]), "a BOM may still come");
        assert!(boundary_after(&[&BOM]));
        assert!(boundary_after(&[b"\n"]));
        assert!(boundary_after(&[b"\r"]));
        assert!(boundary_after(&[b": comment\n"]));
        assert!(boundary_after(&[b": comment\r"]));
        assert!(boundary_after(&[b"data: x\n\n"]));
        assert!(
            boundary_after(&[b"data: x\r\n\r"]),
            "the CR ended the blank line"
        );
        assert!(boundary_after(&[b"data: x\r\r"]));
        assert!(boundary_after(&[b"data: x\n\n: c\n"]));
        assert!(!boundary_after(&[b"data: x\n"]));
        assert!(!boundary_after(&[b"data: x\r"]));
        assert!(!boundary_after(&[b"data: x\r\n"]));
        assert!(
            !boundary_after(&[b"data: x\n: c\n"]),
            "a comment inside an event"
        );
        assert!(!boundary_after(&[b"id: 1\n"]));
        assert!(!boundary_after(&[b"event: e\n"]));
        assert!(!boundary_after(&[b"retry: 5\n"]));
        assert!(!boundary_after(&[b"foo\n"]));
        assert!(!boundary_after(&[b"data: x"]), "mid-line");
        assert!(!boundary_after(&[b": x"]), "mid-comment");
        assert!(!boundary_after(&[b"\n\nd"]));
    }

    #[test]
    fn stall_mid_event() {
        let mut framer = Framer::with_data_capture(16);
        framer.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
        assert!(!framer.at_event_boundary());
        assert_eq!(framer.events(), 1);
        assert_eq!(framer.last_event_id(), Some(&b"1"[..]));
        framer.feed(b"\r\n");
        assert!(framer.at_event_boundary());
        assert_eq!(framer.last_event_id(), Some(&b"2"[..]));
    }

    #[test]
    fn data_and_type_truncation() {
        let mut framer = Framer::with_data_capture(4);
        let events = feed_all(&mut framer, &[b"data: abcdef\n\ndata: abcd\n\ndata: ab\ndata: c\n\ndata: ab\ndata: cd\n\ndata\n\n"]);
        let got: Vec<_> = events
            .iter()
            .map(|e| (&e.data[..], e.data_truncated, e.data_len))
            .collect();
        let want: [(&[u8], bool, u64); 5] = [
            (b"abcd", true, 6),
            (b"abcd", false, 4),
            (b"ab\nc", false, 4),
            (b"ab\nc", true, 5),
            (b"", false, 0),
        ];
        assert_eq!(got, want);

        let long_type = [
            b"event: ".to_vec(),
            vec![b't'; MAX_EVENT_TYPE_LEN + 1],
            b"\ndata: x\n\n".to_vec(),
        ]
        .concat();
        let events = feed_all(&mut framer, &[&long_type]);
        assert_eq!(events[0].event_type.len(), MAX_EVENT_TYPE_LEN);
        assert!(events[0].event_type_truncated);
        let exact_type = [
            b"event: ".to_vec(),
            vec![b't'; MAX_EVENT_TYPE_LEN],
            b"\ndata: x\n\n".to_vec(),
        ]
        .concat();
        assert!(!feed_all(&mut framer, &[&exact_type])[0].event_type_truncated);

        let mut none = Framer::with_data_capture(0);
        let events = feed_all(&mut none, &[b"data: a\n\ndata\n\n"]);
        assert_eq!(
            (events[0].data_truncated, events[1].data_truncated),
            (true, false)
        );
    }

    #[test]
    fn proxy_mode_stores_no_data() {
        let mut framer = Framer::new();
        let events = feed_all(&mut framer, &[b"id: 1\nevent: e\ndata: abc\n\n"]);
        assert_eq!(events[0].id, b"1");
        assert!(events[0].data.is_empty() && events[0].data_truncated && events[0].data_len == 3);
        assert!(events[0].event_type.is_empty() && events[0].event_type_truncated);
        assert_eq!(framer.data.kept.capacity(), 0);
        assert_eq!(framer.event_type.kept.capacity(), 0);
    }

    #[test]
    fn ten_megabyte_line_in_small_chunks() {
        const LINE: usize = 10 << 20;
        let payload = vec![b'x'; 4096];
        for (mut framer, cap) in [(Framer::new(), 0), (Framer::with_data_capture(1024), 1024)] {
            framer.feed(b"id: big\ndata: ");
            for _ in 0..LINE / payload.len() {
                framer.feed(&payload);
                assert!(!framer.at_event_boundary());
            }
            assert!(
                framer.data.kept.capacity() <= 2 * cap,
                "memory must not grow with the line"
            );
            let events = feed_all(&mut framer, &[b"\n\n"]);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].data_len, LINE as u64);
            assert_eq!(events[0].data.len(), cap);
            assert_eq!(events[0].id, b"big");
            assert!(framer.at_event_boundary());
        }
        // Long comments and ignored fields cost nothing either.
        let mut framer = Framer::new();
        for first in [&b":"[..], b"unknown: "] {
            framer.feed(first);
            for _ in 0..LINE / payload.len() {
                framer.feed(&payload);
            }
            framer.feed(b"\n");
        }
        assert_eq!(framer.comments(), 1);
        assert!(!framer.at_event_boundary());
        assert_eq!(framer.bytes(), 2 * LINE as u64 + 12);
    }

    /// The boundaries `feed_boundaries` reports for each chunk, in a proxy-mode
    /// framer that is then checked to be in the state `feed` leaves.
    fn boundaries_of(chunks: &[&[u8]]) -> Vec<Vec<Boundary>> {
        let (mut framer, mut plain) = (Framer::new(), Framer::new());
        let per_chunk = chunks
            .iter()
            .map(|chunk| {
                let mut out = Vec::new();
                framer.feed_boundaries(chunk, &mut out);
                plain.feed(chunk);
                out
            })
            .collect();
        assert_eq!(format!("{framer:?}"), format!("{plain:?}"));
        per_chunk
    }

    /// A boundary after an event (`fired`) or after a blank line that fired
    /// nothing, with the last event ID `id`.
    fn at(end: usize, id: Option<&[u8]>, fired: bool) -> Boundary {
        Boundary {
            end,
            id: id.map(<[u8]>::to_vec),
            id_too_long: false,
            dispatched: fired,
        }
    }

    #[test]
    fn boundaries_at_every_blank_line() {
        let stream: &[u8] = b"id: 1\ndata: a\n\n: hb\n\nid\n\ndata: b\nevent: x";
        let want = [
            at(15, Some(b"1"), true),
            at(21, Some(b"1"), false),
            at(25, Some(b""), false),
        ];
        assert_eq!(boundaries_of(&[stream]), [want.to_vec()]);
        // Offsets are within each chunk.
        let (head, tail) = stream.split_at(18);
        assert_eq!(
            boundaries_of(&[head, tail]),
            [
                vec![want[0].clone()],
                vec![at(3, Some(b"1"), false), at(7, Some(b""), false)]
            ]
        );
        // A comment line alone is not a boundary, though the framer is at one.
        let mut framer = Framer::new();
        let mut out = Vec::new();
        framer.feed_boundaries(b"data: a\n\n: hb\n", &mut out);
        assert_eq!(out, [at(9, None, true)]);
        assert!(framer.at_event_boundary());
        // Blank lines that fire nothing: alone, after a discarded event, after retry.
        assert_eq!(
            boundaries_of(&[b"\nevent: e\n\nretry: 5\n\n"]),
            [[at(1, None, false), at(11, None, false), at(21, None, false)]]
        );
    }

    #[test]
    fn boundaries_with_each_line_end() {
        assert_eq!(
            boundaries_of(&[b"data: a\r\n\r\n"]),
            [[at(11, None, true)]],
            "after the LF of a CRLF in the same chunk"
        );
        assert_eq!(
            boundaries_of(&[b"data: a\r\rdata: b\r\r"]),
            [[at(9, None, true), at(18, None, true)]]
        );
        // A blank line's CRLF split between chunks: the boundary comes with the
        // CR, and the LF opening the next chunk is no boundary of its own.
        assert_eq!(
            boundaries_of(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]),
            [[at(10, None, true)], [at(12, None, true)]]
        );
        assert_eq!(
            boundaries_of(&[b"data: a\r\r", b"data: b\n\n"]),
            [[at(9, None, true)], [at(9, None, true)]]
        );
        assert_eq!(
            boundaries_of(&[b"data: a\r\n\r", b"", b"\n", b"\n"]),
            [
                vec![at(10, None, true)],
                vec![],
                vec![],
                vec![at(1, None, false)]
            ]
        );
    }

    #[test]
    fn boundaries_count_the_bom() {
        let stream = [&BOM[..], b"data: a\n\n"].concat();
        assert_eq!(boundaries_of(&[&stream]), [[at(12, None, true)]]);
        assert_eq!(
            boundaries_of(&[&[0xEF], &[0xBB, 0xBF, b'\n']]),
            [vec![], vec![at(3, None, false)]]
        );
        // Not a BOM after all: its bytes start an ignored field's line.
        assert_eq!(
            boundaries_of(&[&[0xEF, 0xBB], b"\n\n"]),
            [vec![], vec![at(2, None, false)]]
        );
    }

    #[test]
    fn boundary_ids_follow_the_id_rules() {
        // A NUL voids the id line; the id persists.
        assert_eq!(
            boundaries_of(&[b"id: 1\n\nid: 2\0\ndata: x\n\n"]),
            [[at(7, Some(b"1"), false), at(23, Some(b"1"), true)]]
        );
        // An id that never reached a blank line does not count.
        assert_eq!(
            boundaries_of(&[b"id: 1\ndata: a\n\nid: 2\ndata: b\n", b"\n"]),
            [
                vec![at(15, Some(b"1"), true)],
                vec![at(1, Some(b"2"), true)]
            ]
        );
        let long = [
            b"id: ".to_vec(),
            vec![b'a'; MAX_ID_LEN + 1],
            b"\n\n".to_vec(),
        ]
        .concat();
        let mut too_long = at(MAX_ID_LEN + 7, None, false);
        too_long.id_too_long = true;
        assert_eq!(
            boundaries_of(&[&long, b"id\n\n"]),
            [[too_long], [at(4, Some(b""), false)]]
        );
    }

    #[test]
    fn discard_partial_returns_to_the_last_boundary() {
        // A half-built event with a complete `id` line, a data line and a
        // partial line: none of it counts, and the next event stands alone.
        let mut framer = Framer::with_data_capture(64);
        let mut events = feed_all(&mut framer, &[b"id: 1\ndata: a\n\nid: 2\ndata: b\nda"]);
        assert!(!framer.at_event_boundary());
        framer.discard_partial();
        assert!(framer.at_event_boundary());
        assert_eq!(framer.last_event_id(), Some(&b"1"[..]));
        events.extend(feed_all(&mut framer, &[b"data: c\n\n"]));
        let got: Vec<_> = events.iter().map(|e| (&e.id[..], &e.data[..])).collect();
        assert_eq!(got, [(&b"1"[..], &b"a"[..]), (b"1", b"c")]);
        // An id line cut short, and one too long, are dropped as well.
        for partial in [
            &b"id: 9"[..],
            &[&b"id: "[..], &[b'x'; MAX_ID_LEN + 1]].concat(),
        ] {
            let mut framer = Framer::new();
            framer.feed(b"id: 1\n\n");
            framer.feed(partial);
            framer.discard_partial();
            framer.feed(b"\n");
            assert_eq!(framer.last_event_id(), Some(&b"1"[..]));
        }
        // A trailing CR that was part of the dropped bytes does not swallow
        // the LF of the next response: that LF is a blank line.
        let mut framer = Framer::new();
        let mut out = Vec::new();
        framer.feed_boundaries(b"data: a\n\n: hb\r", &mut out);
        framer.discard_partial();
        out.clear();
        framer.feed_boundaries(b"\n", &mut out);
        assert_eq!(out, [at(1, None, false)]);
        // A retry applied in the dropped part stays; the counters stay.
        let mut framer = Framer::new();
        framer.feed(b"data: a\n\nretry: 700\ndata: b\n");
        framer.discard_partial();
        assert_eq!(
            (framer.retry(), framer.events(), framer.bytes()),
            (Some(700), 1, 28)
        );
        // Before anything past a possible BOM: back at the stream start.
        let mut framer = Framer::new();
        framer.feed(&[0xEF, 0xBB]);
        framer.discard_partial();
        assert!(!framer.at_event_boundary(), "a BOM may still come");
        framer.feed(&BOM);
        assert!(framer.at_event_boundary());
        framer.feed(b"data: x\n\n");
        assert_eq!(framer.events(), 1);
        // Where there is nothing to drop, nothing changes.
        let mut framer = Framer::new();
        framer.feed(b"id: 3\ndata: a\n\n: c\n");
        let before = format!("{framer:?}");
        framer.discard_partial();
        assert_eq!(format!("{framer:?}"), before);
    }

    #[test]
    fn boundaries_are_appended() {
        let mut framer = Framer::with_data_capture(16);
        let mut out = vec![at(99, None, false)];
        framer.feed_boundaries(b"data: a\n\n", &mut out);
        assert_eq!(out, [at(99, None, false), at(9, None, true)]);
        assert_eq!(framer.events(), 1);
        assert_eq!(framer.bytes(), 9);
    }

    #[test]
    fn line_end_search_agrees_with_position() {
        let mut hay = vec![b'a'; 100];
        assert_eq!(find_line_end(&hay), None);
        for at in [0, 1, 31, 32, 33, 63, 64, 95, 96, 99] {
            for byte in [b'\n', b'\r'] {
                hay[at] = byte;
                assert_eq!(find_line_end(&hay), Some(at));
                assert_eq!(find_line_end(&hay[..at]), None);
                hay[at] = b'a';
            }
        }
    }
}

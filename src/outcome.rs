//! What the request path reports about a stream: how it ended, what it
//! carried, and which limit turned it away. The metrics and the access log
//! name these, and so does the request path; this module depends on
//! nothing, so that both import it and neither imports the other.

/// How a stream ended, for the access log and metrics (`crate::metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished its response; the client's stream was ended cleanly.
    UpstreamDone,
    /// The upstream connection failed mid-stream; the client's stream was aborted
    /// so that it can tell a truncated stream from a finished one.
    UpstreamError,
    /// The client went away.
    ClientGone,
    /// A write to the client failed.
    ClientWriteError,
    /// The client accepted no byte for `client_write_timeout`.
    ClientStalled,
    /// No upstream byte for `idle_timeout`.
    IdleTimeout,
    /// Ended at an event boundary with a `retry:` hint for a graceful shutdown.
    Shutdown,
    /// Shutdown grace ran out before the stream reached an event boundary.
    ShutdownAborted,
    /// The upstream failed and every resume attempt failed; ended at an
    /// event boundary with a `retry:` hint.
    ResumeFailed,
    /// A shared stream's subscriber fell more than half its ring behind
    /// (route `overflow = "disconnect"`); ended at an event boundary with a
    /// `retry:` hint, to come back with its Last-Event-ID.
    Overflow,
}

impl StreamEnd {
    /// Did the client receive a properly terminated response?
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            StreamEnd::UpstreamDone
                | StreamEnd::IdleTimeout
                | StreamEnd::Shutdown
                | StreamEnd::ResumeFailed
                | StreamEnd::Overflow
        )
    }
}

/// Counters for one stream, reported in its end-of-stream log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamStats {
    pub bytes: u64,
    pub events: u64,
    pub heartbeats: u64,
    /// Upstream failures the stream was resumed across.
    pub resumes: u64,
    /// How a shared stream's subscriber joined; `None`: not shared.
    pub join: Option<Join>,
    /// Events a shared subscriber skipped (route `overflow = "skip"`).
    pub skipped: u64,
}

/// How a subscriber of a shared stream joined it (access-log `join=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// At the newest event: it receives what comes next.
    Live,
    /// After its Last-Event-ID, found in the replay ring.
    Replay,
    /// Its Last-Event-ID was not in the ring: it got its own upstream
    /// request, and moved to the shared stream if an id it received was.
    Own,
}

impl Join {
    pub fn label(self) -> &'static str {
        match self {
            Join::Live => "live",
            Join::Replay => "replay",
            Join::Own => "own",
        }
    }
}

/// Which limit turned a stream away; the `limit` label of
/// `ssegate_streams_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_streams`
    Global,
    /// the route's `max_streams`
    Route,
    /// `limits.max_streams_per_client`
    Client,
    /// Not a limit: no upstream server could serve the stream (unreachable,
    /// no response header in time, or a broken one); an `EventSource` is
    /// told to come back rather than given a 502 it would never retry.
    Upstream,
}

impl Limit {
    /// Every limit, in the order of [`Limit::index`].
    pub const ALL: [Limit; 4] = [Limit::Global, Limit::Route, Limit::Client, Limit::Upstream];

    /// The metric label, and the index in [`Limit::ALL`].
    pub fn label(self) -> (usize, &'static str) {
        match self {
            Limit::Global => (0, "global"),
            Limit::Route => (1, "route"),
            Limit::Client => (2, "client"),
            Limit::Upstream => (3, "upstream"),
        }
    }
}

/// Every way a stream can end, in the order of [`end_reason`]'s indexes.
pub const STREAM_ENDS: [StreamEnd; 10] = [
    StreamEnd::UpstreamDone,
    StreamEnd::UpstreamError,
    StreamEnd::ClientGone,
    StreamEnd::ClientWriteError,
    StreamEnd::IdleTimeout,
    StreamEnd::Shutdown,
    StreamEnd::ShutdownAborted,
    StreamEnd::ClientStalled,
    StreamEnd::ResumeFailed,
    StreamEnd::Overflow,
];

/// The `reason` label (and access-log `end=`) of a stream end, with its index
/// in [`STREAM_ENDS`]. Exhaustive, so a new `StreamEnd` cannot go unlabelled.
pub fn end_reason(end: StreamEnd) -> (usize, &'static str) {
    match end {
        StreamEnd::UpstreamDone => (0, "upstream_done"),
        StreamEnd::UpstreamError => (1, "upstream_error"),
        StreamEnd::ClientGone => (2, "client_gone"),
        StreamEnd::ClientWriteError => (3, "client_write_error"),
        StreamEnd::IdleTimeout => (4, "idle_timeout"),
        StreamEnd::Shutdown => (5, "shutdown"),
        StreamEnd::ShutdownAborted => (6, "shutdown_aborted"),
        StreamEnd::ClientStalled => (7, "client_write_timeout"),
        StreamEnd::ResumeFailed => (8, "resume_failed"),
        StreamEnd::Overflow => (9, "overflow"),
    }
}

/// How a WebSocket tunnel ended: the `reason` label of
/// `ssegate_websocket_ends_total` and the access log's `end=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client closed first (TCP FIN, or END_STREAM over HTTP/2), and
    /// the upstream's side was closed after it.
    ClientClosed,
    /// The upstream closed first.
    UpstreamClosed,
    /// No byte in either direction for the idle timeout.
    IdleTimeout,
    /// A graceful shutdown or upgrade closed the tunnel.
    Shutdown,
    /// The client's connection failed (a reset, RST_STREAM, a failed write).
    ClientError,
    /// The upstream's connection failed, or it broke WebSocket framing.
    UpstreamError,
}

impl TunnelEnd {
    /// Every end, in the order of [`TunnelEnd::label`]'s indexes.
    pub const ALL: [TunnelEnd; 6] = [
        TunnelEnd::ClientClosed,
        TunnelEnd::UpstreamClosed,
        TunnelEnd::IdleTimeout,
        TunnelEnd::Shutdown,
        TunnelEnd::ClientError,
        TunnelEnd::UpstreamError,
    ];

    /// The index in [`TunnelEnd::ALL`], and the label.
    pub fn label(self) -> (usize, &'static str) {
        match self {
            TunnelEnd::ClientClosed => (0, "client_closed"),
            TunnelEnd::UpstreamClosed => (1, "upstream_closed"),
            TunnelEnd::IdleTimeout => (2, "idle_timeout"),
            TunnelEnd::Shutdown => (3, "shutdown"),
            TunnelEnd::ClientError => (4, "client_error"),
            TunnelEnd::UpstreamError => (5, "upstream_error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_are_indexed_in_order_and_distinct() {
        for (i, end) in STREAM_ENDS.iter().enumerate() {
            assert_eq!(end_reason(*end).0, i, "{end:?}");
        }
        let mut names: Vec<&str> = STREAM_ENDS.iter().map(|e| end_reason(*e).1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STREAM_ENDS.len());
    }

    #[test]
    fn tunnel_end_indexes_follow_all() {
        for (i, end) in TunnelEnd::ALL.into_iter().enumerate() {
            assert_eq!(end.label().0, i, "{end:?}");
        }
    }
}

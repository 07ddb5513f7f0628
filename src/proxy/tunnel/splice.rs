//! The duplex copy of a WebSocket tunnel, once both handshakes are done:
//! bytes both ways, half-closes passed on, and a close frame of our own
//! written only where a frame ends.
//!
//! ```text
//!  client ──(flow "to_upstream": read, frame tracker, write)──► upstream
//!  client ◄──(flow "to_client":  read, frame tracker, write)─── upstream
//!
//!  a source ends (FIN / END_STREAM) ─► its sink is shut once its bytes are out
//!  both flows over ─► the tunnel ends
//!  either side fails ─► the tunnel ends at once (the other side is cut)
//!
//!  idle timeout, or the drain moment of a graceful shutdown:
//!    each flow, at its next frame boundary: Close 1001, then its sink is
//!    shut and whatever its source still sends is read and dropped;
//!    a flow still mid-frame when the close wait ends is cut
//! ```
//!
//! Each flow holds at most one chunk read and not yet written: while it
//! waits for its sink, its source is not read (TCP backpressure, or h2 flow
//! control for an HTTP/2 client). An idle tunnel holds no buffer: reads go
//! through the per-thread scratch buffer of the upstream client, and a
//! chunk is copied out only once read.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::SendStream;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use rand::Rng;
use tokio::io::AsyncWrite;

use crate::outcome::TunnelEnd;
use crate::upstream::h1::poll_read_scratch;
use crate::websocket::frames::{close_frame, FrameTracker, GOING_AWAY};

/// After an idle timeout, how long the close frames may take to get out
/// (a flow stuck mid-frame is cut then).
const IDLE_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The client's end of a tunnel.
pub enum Client {
    /// An HTTP/1.1 connection owned outright, after its `101`.
    H1(Stream),
    /// An RFC 8441 stream: DATA frames both ways. The session is kept for
    /// reading the request body; `send` is its response body.
    H2 {
        session: Box<ServerSession>,
        send: SendStream<Bytes>,
    },
}

/// What the copy needs besides the two ends.
pub struct Settings<'a> {
    pub idle_timeout: Option<Duration>,
    /// Each tunnel closes at a random moment in [0, drain_window] after
    /// the shutdown signal...
    pub drain_window: Duration,
    /// ...and is cut, if still open, this long after the signal.
    pub drain_limit: Duration,
    pub to_upstream: &'a IntCounter,
    pub to_client: &'a IntCounter,
}

/// How a tunnel went.
#[derive(Debug, Clone, Copy)]
pub struct Spliced {
    pub end: TunnelEnd,
    pub to_upstream: u64,
    pub to_client: u64,
}

/// One end of the tunnel as the flows see it.
trait Side {
    /// The next chunk the peer sent; `None` once it closed its side.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;
    /// Writes all of `data` (advancing it) and flushes.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>>;
    /// Closes our sending side (TCP FIN, or END_STREAM).
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

fn poll_stream_chunk(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
    poll_read_scratch(stream, cx, |read| Bytes::copy_from_slice(read))
}

fn poll_stream_send(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    data: &mut Bytes,
) -> Poll<io::Result<()>> {
    while !data.is_empty() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, data))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        data.advance(n);
    }
    Pin::new(stream).poll_flush(cx)
}

/// The upstream's socket.
struct Upstream<'a>(&'a mut Stream);

impl Side for Upstream<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        poll_stream_chunk(self.0, cx)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        poll_stream_send(self.0, cx, data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

impl Side for Client {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        match self {
            Client::H1(stream) => poll_stream_chunk(stream, cx),
            Client::H2 { session, .. } => match session.as_mut() {
                // Flow control is released as each DATA frame is taken.
                ServerSession::H2(s) => match ready!(s.poll_read_body_bytes(cx)) {
                    Some(Ok(data)) => Poll::Ready(Ok(Some(data))),
                    Some(Err(e)) => Poll::Ready(Err(h2_error(e))),
                    None => Poll::Ready(Ok(None)),
                },
                _ => Poll::Ready(Err(io::ErrorKind::Unsupported.into())),
            },
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        match self {
            Client::H1(stream) => poll_stream_send(stream, cx, data),
            Client::H2 { send, .. } => {
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    // `None`: the stream was reset or the connection is gone.
                    let granted = match ready!(send.poll_capacity(cx)) {
                        Some(Ok(n)) => n,
                        Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                        None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                    };
                    let part = data.split_to(granted.min(data.len()));
                    send.send_data(part, false).map_err(h2_error)?;
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Client::H1(stream) => Pin::new(stream).poll_shutdown(cx),
            Client::H2 { send, .. } => {
                Poll::Ready(send.send_data(Bytes::new(), true).map_err(h2_error))
            }
        }
    }
}

impl Client {
    /// Ready when an HTTP/2 client reset its stream (an HTTP/1.1 client's
    /// reset shows as a read error).
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Client::H1(_) => Poll::Pending,
            Client::H2 { send, .. } => send.poll_reset(cx).map(|_| ()),
        }
    }
}

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copying.
    Relay,
    /// Copying up to the next frame boundary, where our close frame goes.
    Closing,
    /// Our close frame is queued or out: the sink is shut once it is, and
    /// the source is read only to be dropped, until it ends.
    Closed,
}

/// Why a flow stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Its source failed or broke WebSocket framing.
    Source,
    /// Its sink failed.
    Sink,
}

/// One direction of the tunnel.
struct Flow {
    frames: FrameTracker,
    /// Read and not yet written.
    pending: Bytes,
    /// Our close frame, while `Closing`.
    close: Bytes,
    mode: Mode,
    /// The source ended.
    eof: bool,
    /// The sink is shut: the flow is over once the source has ended too.
    shut: bool,
    bytes: u64,
}

impl Flow {
    fn new() -> Self {
        Flow {
            frames: FrameTracker::new(),
            pending: Bytes::new(),
            close: Bytes::new(),
            mode: Mode::Relay,
            eof: false,
            shut: false,
            bytes: 0,
        }
    }

    fn done(&self) -> bool {
        self.eof && self.shut
    }

    /// Nothing more will be written this way but an end: our close frame
    /// is out, or the flow is over.
    fn close_out(&self) -> bool {
        self.done() || (self.mode == Mode::Closed && self.pending.is_empty())
    }

    /// Takes `chunk` from the source: only up to the next frame boundary
    /// while closing (the rest is dropped), all of it otherwise.
    fn take(&mut self, mut chunk: Bytes, counter: &IntCounter) -> Result<(), Failure> {
        let stop_at_boundary = self.mode == Mode::Closing && !self.frames.close_seen();
        let taken = if stop_at_boundary {
            self.frames
                .feed_to_boundary(&chunk)
                .map_err(|_| Failure::Source)?
        } else {
            self.frames.feed(&chunk).map_err(|_| Failure::Source)?;
            chunk.len()
        };
        chunk.truncate(taken);
        self.bytes += taken as u64;
        counter.inc_by(taken as u64);
        self.pending = chunk;
        Ok(())
    }

    /// Starts closing this flow with `frame` (unless its peer's own close
    /// already passed this way: then it is copied to its end as it is).
    fn close_with(&mut self, frame: Bytes) {
        if self.mode == Mode::Relay && !self.done() {
            self.mode = Mode::Closing;
            self.close = frame;
        }
    }

    /// Moves bytes from `src` to `dst` until either must wait; `Ready`
    /// once the flow is over.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut impl Side,
        dst: &mut impl Side,
        counter: &IntCounter,
        last_read: &mut Instant,
        both_closed: bool,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if !self.pending.is_empty() {
                ready!(dst.poll_send(cx, &mut self.pending)).map_err(|_| Failure::Sink)?;
            }
            let at_close = self.mode == Mode::Closing
                && self.frames.at_boundary()
                && !self.frames.close_seen();
            if at_close {
                self.pending = std::mem::take(&mut self.close);
                self.mode = Mode::Closed;
                continue;
            }
            // Our close frame out, the sink is shut only once the other
            // direction's is out too: a peer still finishing a frame of its
            // own must not see its connection end under it.
            if (self.eof || (self.mode == Mode::Closed && both_closed)) && !self.shut {
                ready!(dst.poll_finish(cx)).map_err(|_| Failure::Sink)?;
                self.shut = true;
            }
            if self.done() {
                return Poll::Ready(Ok(()));
            }
            match ready!(src.poll_chunk(cx)) {
                Ok(Some(chunk)) => {
                    *last_read = Instant::now();
                    if self.mode != Mode::Closed {
                        self.take(chunk, counter)?;
                    }
                }
                Ok(None) => self.eof = true,
                Err(_) => return Poll::Ready(Err(Failure::Source)),
            }
        }
    }
}

/// A flow's failure as the tunnel's end: `source` when its source failed,
/// `sink` when its sink did.
fn failed(
    polled: Poll<Result<(), Failure>>,
    source: TunnelEnd,
    sink: TunnelEnd,
) -> Result<(), TunnelEnd> {
    match polled {
        Poll::Ready(Err(Failure::Source)) => Err(source),
        Poll::Ready(Err(Failure::Sink)) => Err(sink),
        _ => Ok(()),
    }
}

/// Both flows of a tunnel.
struct Tunnel {
    /// Client to upstream.
    up: Flow,
    /// Upstream to client.
    down: Flow,
    /// Who started closing: the first Close frame seen, else the first end.
    first: Option<TunnelEnd>,
    last_read: Instant,
}

impl Tunnel {
    /// `Ready` when both flows are over (`Ok`) or a side failed.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Client,
        upstream: &mut Stream,
        s: &Settings<'_>,
    ) -> Poll<Result<(), TunnelEnd>> {
        // Twice at most: a flow whose close frame went out on the first
        // pass lets the other shut its sink on the second.
        for _ in 0..2 {
            let both_closed = self.up.close_out() && self.down.close_out();
            if let Err(end) = self.poll_flows(cx, client, upstream, s, both_closed) {
                return Poll::Ready(Err(end));
            }
            if self.first.is_none() {
                self.first = if self.up.frames.close_seen() || self.up.eof {
                    Some(TunnelEnd::ClientClosed)
                } else if self.down.frames.close_seen() || self.down.eof {
                    Some(TunnelEnd::UpstreamClosed)
                } else {
                    None
                };
            }
            if self.up.done() && self.down.done() {
                return Poll::Ready(Ok(()));
            }
            // A close handshake complete (a Close frame passed each way)
            // and one side gone: nothing is left to carry, and a peer that
            // waits for the other to close first must not wait for ever.
            let handshake_done = self.up.frames.close_seen() && self.down.frames.close_seen();
            if handshake_done && (self.up.done() || self.down.done()) {
                return Poll::Ready(Ok(()));
            }
            if both_closed || !(self.up.close_out() && self.down.close_out()) {
                break;
            }
        }
        // An HTTP/2 client's RST_STREAM fails the read pending on the client,
        // or the wait for send capacity when that read is held back; only a
        // client that has ended its side has neither, and is watched (the
        // watch takes h2's lock, so not on every poll).
        if self.up.eof && !self.down.shut && client.poll_reset(cx).is_ready() {
            return Poll::Ready(Err(TunnelEnd::ClientError));
        }
        Poll::Pending
    }

    /// Polls both flows once; `Err` with the end when a side failed.
    fn poll_flows(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Client,
        upstream: &mut Stream,
        s: &Settings<'_>,
        both_closed: bool,
    ) -> Result<(), TunnelEnd> {
        let mut up_side = Upstream(upstream);
        if !self.up.done() {
            let polled = self.up.poll(
                cx,
                client,
                &mut up_side,
                s.to_upstream,
                &mut self.last_read,
                both_closed,
            );
            failed(polled, TunnelEnd::ClientError, TunnelEnd::UpstreamError)?;
        }
        if !self.down.done() {
            let polled = self.down.poll(
                cx,
                &mut up_side,
                client,
                s.to_client,
                &mut self.last_read,
                both_closed,
            );
            failed(polled, TunnelEnd::UpstreamError, TunnelEnd::ClientError)?;
        }
        Ok(())
    }

    /// Both flows close at their next frame boundary with code 1001.
    fn close(&mut self, reason: &str) {
        let key: [u8; 4] = rand::random();
        // Frames towards a server are masked (RFC 6455 §5.3).
        self.up
            .close_with(close_frame(GOING_AWAY, reason, Some(key)));
        self.down.close_with(close_frame(GOING_AWAY, reason, None));
    }
}

/// What the tunnel waits for besides its sockets.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Open,
    /// Shutdown began: close at `moment`, and cut at `limit`.
    Draining {
        moment: Instant,
        limit: Instant,
    },
    /// Closing because of `cause`; cut at `limit`.
    Closing {
        cause: TunnelEnd,
        limit: Instant,
    },
}

/// Copies between `client` and `upstream` until the tunnel ends. `client_first`
/// and `upstream_first` are bytes each side sent right behind its handshake.
pub async fn run(
    client: &mut Client,
    upstream: &mut Stream,
    client_first: Option<Bytes>,
    upstream_first: Option<Bytes>,
    s: &Settings<'_>,
    shutdown: &ShutdownWatch,
) -> Spliced {
    let mut t = Tunnel {
        up: Flow::new(),
        down: Flow::new(),
        first: None,
        last_read: Instant::now(),
    };
    let early = [
        (
            &mut t.up,
            client_first,
            s.to_upstream,
            TunnelEnd::ClientError,
        ),
        (
            &mut t.down,
            upstream_first,
            s.to_client,
            TunnelEnd::UpstreamError,
        ),
    ];
    let mut broken = None;
    for (flow, first, counter, failure) in early {
        if let Some(chunk) = first.filter(|c| !c.is_empty()) {
            if flow.take(chunk, counter).is_err() {
                broken = Some(failure);
            }
        }
    }
    let end = match broken {
        Some(end) => end,
        None => copy(&mut t, client, upstream, s, shutdown).await,
    };
    Spliced {
        end,
        to_upstream: t.up.bytes,
        to_client: t.down.bytes,
    }
}

/// The copy's loop: the flows, the idle timeout, and the shutdown.
async fn copy(
    t: &mut Tunnel,
    client: &mut Client,
    upstream: &mut Stream,
    s: &Settings<'_>,
    shutdown: &ShutdownWatch,
) -> TunnelEnd {
    let mut shutdown = shutdown.clone();
    let mut phase = Phase::Open;
    if *shutdown.borrow() {
        phase = drain(s);
    }
    loop {
        let wake = match phase {
            Phase::Open => s.idle_timeout.map(|idle| t.last_read + idle),
            Phase::Draining { moment, .. } => Some(moment),
            Phase::Closing { limit, .. } => Some(limit),
        };
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let open = matches!(phase, Phase::Open);
        tokio::select! {
            done = poll_fn(|cx| t.poll(cx, client, upstream, s)) => {
                return match (done, phase) {
                    (Err(failure), _) => failure,
                    (Ok(()), Phase::Closing { cause, .. }) => cause,
                    (Ok(()), _) => t.first.unwrap_or(TunnelEnd::ClientClosed),
                };
            }
            changed = shutdown.changed(), if open => {
                if changed.is_err() || *shutdown.borrow() {
                    phase = drain(s);
                }
            }
            () = timer => match phase {
                Phase::Open => {
                    if t.last_read.elapsed() >= s.idle_timeout.unwrap_or(Duration::MAX) {
                        t.close("idle timeout");
                        phase = Phase::Closing {
                            cause: TunnelEnd::IdleTimeout,
                            limit: Instant::now() + IDLE_CLOSE_WAIT,
                        };
                    }
                }
                Phase::Draining { limit, .. } => {
                    t.close("going away");
                    phase = Phase::Closing { cause: TunnelEnd::Shutdown, limit };
                }
                Phase::Closing { cause, .. } => return cause,
            },
        }
    }
}

/// The shutdown signal came: this tunnel picks its moment in the drain window.
fn drain(s: &Settings<'_>) -> Phase {
    let now = Instant::now();
    let window = u64::try_from(s.drain_window.as_millis()).unwrap_or(u64::MAX);
    let picked = Duration::from_millis(rand::thread_rng().gen_range(0..=window));
    Phase::Draining {
        moment: now + picked.min(s.drain_limit),
        limit: now + s.drain_limit,
    }
}

//! The client side of an event stream once its response header is out.
//!
//! An HTTP/1.x client's connection is taken out of pingora's session
//! (`into_inner`): from then on the stream owns only the socket, and frames
//! each chunk itself (`Transfer-Encoding: chunked`, as announced in the
//! header pingora wrote). An HTTP/2 client's response body handle (h2's
//! `SendStream`) is taken out of pingora's session and driven directly;
//! h2 frames DATA itself. Either way the stream phase sees three
//! operations: write a chunk and flush it, notice the client leaving, and
//! end the body.
//!
//! A client that stops reading is bounded twice: its socket's send buffer
//! is sized to the stream's `client_buffer` (HTTP/1; an HTTP/2 stream is
//! bounded by its flow-control window and the per-stream send buffer set
//! in `h2_options`), and a write that makes no progress for
//! `client_write_timeout` fails as [`WriteFailure::Stalled`]. While a write
//! waits, the stream does not read its upstream: TCP backpressure.

use std::future::{poll_fn, Future};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chunked::{ChunkHead, CHUNK_END, LAST_CHUNK};
use crate::write::{timed, write_all_flush};

/// Where a stream's bytes go: the four operations the stream phase needs
/// of its client. [`Downstream`] is the real one; tests use one in memory.
pub trait Sink {
    /// Writes `data` and flushes it. Empty data is not written.
    fn write(&mut self, data: Bytes) -> impl Future<Output = Result<(), WriteFailure>> + Send;
    /// Resolves when the client has gone away. Cancel-safe.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the response body properly.
    fn finish(&mut self) -> impl Future<Output = Result<(), WriteFailure>> + Send;
    /// Ends the response so that the client can tell it was cut short.
    fn abort(&mut self) -> impl Future<Output = ()> + Send;
}

impl Sink for Downstream {
    fn write(&mut self, data: Bytes) -> impl Future<Output = Result<(), WriteFailure>> + Send {
        Downstream::write(self, data)
    }

    fn closed(&mut self) -> impl Future<Output = ()> + Send {
        Downstream::closed(self)
    }

    fn finish(&mut self) -> impl Future<Output = Result<(), WriteFailure>> + Send {
        Downstream::finish(self)
    }

    fn abort(&mut self) -> impl Future<Output = ()> + Send {
        Downstream::abort(self)
    }
}

/// Why a write to the client did not complete (the shared write's answer).
pub use crate::write::WriteFailure;

/// The client of one event stream.
pub enum Downstream {
    /// An HTTP/1.x connection owned outright; chunks are framed here.
    H1(H1Client),
    /// An HTTP/2 stream, written through its h2 send handle.
    H2(H2Client),
    /// Any other pingora session, written through pingora.
    Session(Box<ServerSession>),
}

/// An HTTP/2 stream in the stream phase. The response body's send handle
/// is taken out of pingora's session, so each event costs one capacity
/// request, one capacity poll and one `send_data`, with a timer only when
/// the flow-control window makes the write wait; pingora's `write_body`
/// adds two nested write timeouts to every call. The session stays with
/// the stream: it owns the request side, and dropping it would reset the
/// stream.
pub struct H2Client {
    _session: Box<ServerSession>,
    body: SendStream<Bytes>,
    write_timeout: Duration,
}

impl H2Client {
    /// Gives `session` back when it is not HTTP/2 or its response header is
    /// not out yet.
    pub fn new(
        mut session: Box<ServerSession>,
        write_timeout: Duration,
    ) -> Result<Self, Box<ServerSession>> {
        let body = match session.as_mut() {
            ServerSession::H2(s) => s.take_response_body_writer(),
            _ => None,
        };
        match body {
            Some(body) => Ok(H2Client {
                _session: session,
                body,
                write_timeout,
            }),
            None => Err(session),
        }
    }

    /// Sends `data` as DATA frames as flow control allows; a wait for
    /// window that gets no byte of it for the write timeout is a stall.
    async fn write(&mut self, mut data: Bytes, end: bool) -> Result<(), WriteFailure> {
        if data.is_empty() {
            return self
                .body
                .send_data(data, end)
                .map_err(|_| WriteFailure::Failed);
        }
        while !data.is_empty() {
            self.body.reserve_capacity(data.len());
            // `None`: the stream was reset or the connection is gone.
            let capacity = poll_fn(|cx| {
                self.body
                    .poll_capacity(cx)
                    .map(|c| c.ok_or(()).and_then(|r| r.map_err(|_| ())))
            });
            let granted = timed(self.write_timeout, capacity).await?;
            let part = data.split_to(granted.min(data.len()));
            self.body
                .send_data(part, end && data.is_empty())
                .map_err(|_| WriteFailure::Failed)?;
        }
        Ok(())
    }
}

/// An HTTP/1.x client connection in the stream phase.
pub struct H1Client {
    stream: Stream,
    write_timeout: Duration,
    /// The client sent bytes after its request (a pipelined request or
    /// garbage); the connection must not be reused after this stream.
    sent_extra: bool,
}

impl H1Client {
    /// `buffer`: the most bytes the kernel may hold queued for this client
    /// (0 leaves the socket's send buffer as it is).
    pub fn new(stream: Stream, write_timeout: Duration, buffer: usize) -> Self {
        if buffer > 0 {
            // Linux doubles the value for its own bookkeeping and counts
            // that against the buffer, so half of it is asked for.
            let fd = stream.id();
            if let Err(e) = pingora_core::protocols::l4::ext::set_snd_buf(fd, buffer / 2) {
                log::debug!("client send buffer not set: {e}");
            }
        }
        H1Client {
            stream,
            write_timeout,
            sent_extra: false,
        }
    }

    /// The connection, for the keep-alive loop, if it can serve another request.
    pub fn into_reusable(self) -> Option<Stream> {
        (!self.sent_extra).then_some(self.stream)
    }

    /// Writes all of `parts`, in order, and flushes them, with the client
    /// write timeout for any step that makes no progress
    /// ([`write_all_flush`]); one vectored write, so a chunk's size line,
    /// data and CRLF need not be copied into one frame first.
    /// Not an `async fn`: a layer of future of its own would add its
    /// arguments to every event stream's future.
    fn write_parts<'a, const N: usize>(
        &'a mut self,
        parts: [&'a [u8]; N],
    ) -> impl Future<Output = Result<(), WriteFailure>> + 'a {
        write_all_flush(&mut self.stream, parts, self.write_timeout)
    }
}

impl Downstream {
    /// Writes `data` and flushes it to the client's socket. Empty data is not written.
    pub async fn write(&mut self, data: Bytes) -> Result<(), WriteFailure> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Downstream::H1(c) => {
                let head = ChunkHead::new(data.len());
                c.write_parts([head.as_bytes(), &data, CHUNK_END]).await
            }
            Downstream::H2(c) => c.write(data, false).await,
            // Rare (see `spawn`), and pingora's write is large: boxed, so
            // that it does not size every stream's task.
            Downstream::Session(s) => Box::pin(s.write_response_body(data, false))
                .await
                .map_err(|e| session_failure(&e)),
        }
    }

    /// Resolves when the client has gone away (closed, reset, or its HTTP/2
    /// stream was cancelled). Bytes an HTTP/1 client sends meanwhile are
    /// discarded and mark its connection as not reusable.
    pub async fn closed(&mut self) {
        match self {
            Downstream::H1(c) => {
                let mut scratch = [0u8; 64];
                loop {
                    match c.stream.read(&mut scratch).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => c.sent_extra = true,
                    }
                }
            }
            Downstream::H2(c) => {
                let _ = poll_fn(|cx| c.body.poll_reset(cx)).await;
            }
            Downstream::Session(s) => {
                let _ = s.read_body_or_idle(true).await;
            }
        }
    }

    /// Ends the response body properly (last chunk, or END_STREAM).
    pub async fn finish(&mut self) -> Result<(), WriteFailure> {
        match self {
            Downstream::H1(c) => c.write_parts([LAST_CHUNK]).await,
            Downstream::H2(c) => c.write(Bytes::new(), true).await,
            Downstream::Session(s) => Box::pin(s.finish_body())
                .await
                .map_err(|e| session_failure(&e)),
        }
    }

    /// Closes the client's connection (HTTP/1) or resets its stream (HTTP/2),
    /// so that it can tell an aborted stream from a finished one.
    pub async fn abort(&mut self) {
        match self {
            Downstream::H1(c) => {
                let _ = c.stream.shutdown().await;
            }
            Downstream::H2(c) => c.body.send_reset(h2::Reason::INTERNAL_ERROR),
            Downstream::Session(s) => s.shutdown().await,
        }
    }
}

/// A pingora write error as a [`WriteFailure`]: its write timeout (the
/// session's, set to `client_write_timeout`) is the stall.
fn session_failure(e: &pingora_error::Error) -> WriteFailure {
    if e.etype() == &pingora_error::ErrorType::WriteTimedout {
        WriteFailure::Stalled
    } else {
        WriteFailure::Failed
    }
}

//! The client side of an event stream once its response header is out.
//!
//! An HTTP/1.x client's connection is taken out of pingora's session
//! (`into_inner`): from then on the stream owns only the socket, and frames
//! each chunk itself (`Transfer-Encoding: chunked`, as announced in the
//! header pingora wrote). An HTTP/2 client keeps pingora's stream handle,
//! which frames DATA itself. Either way the stream phase sees three
//! operations: write a chunk and flush it, notice the client leaving, and
//! end the body.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chunked::{encode_chunk, LAST_CHUNK};

/// A write to the client failed, timed out, or the client is gone.
#[derive(Debug)]
pub struct ClientWriteFailed;

/// The client of one event stream.
pub enum Downstream {
    /// An HTTP/1.x connection owned outright; chunks are framed here.
    H1(H1Client),
    /// A pingora session (an HTTP/2 stream), which frames its own DATA.
    Session(Box<ServerSession>),
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
    pub fn new(stream: Stream, write_timeout: Duration) -> Self {
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

    async fn write_frame(&mut self, frame: &[u8]) -> Result<(), ClientWriteFailed> {
        let io = async {
            self.stream.write_all(frame).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, io).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ClientWriteFailed),
        }
    }
}

impl Downstream {
    /// Writes `data` and flushes it to the client's socket. Empty data is not written.
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientWriteFailed> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Downstream::H1(c) => c.write_frame(&encode_chunk(&data)).await,
            Downstream::Session(s) => s
                .write_response_body(data, false)
                .await
                .map_err(|_| ClientWriteFailed),
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
            Downstream::Session(s) => {
                let _ = s.read_body_or_idle(true).await;
            }
        }
    }

    /// Ends the response body properly (last chunk, or END_STREAM).
    pub async fn finish(&mut self) -> Result<(), ClientWriteFailed> {
        match self {
            Downstream::H1(c) => c.write_frame(LAST_CHUNK).await,
            Downstream::Session(s) => s.finish_body().await.map_err(|_| ClientWriteFailed),
        }
    }

    /// Closes the client's connection (HTTP/1) or resets its stream (HTTP/2),
    /// so that it can tell an aborted stream from a finished one.
    pub async fn abort(&mut self) {
        match self {
            Downstream::H1(c) => {
                let _ = c.stream.shutdown().await;
            }
            Downstream::Session(s) => s.shutdown().await,
        }
    }
}

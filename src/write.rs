//! The one timed write-and-flush, for both ends of a proxied HTTP/1
//! connection: the client of an event stream (`proxy::downstream`) and an
//! HTTP/1.1 upstream (`upstream::h1`). It sits below both, so neither has
//! to import the other.
//!
//! The timeout bounds a step that makes no progress, not the whole write:
//! a slow peer that keeps accepting bytes is served, a stalled one fails
//! as [`WriteFailure::Stalled`]. A step is polled once without a timer,
//! since it nearly always completes at once, so the common case arms none.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The connection failed or the peer is gone.
    Failed,
    /// The peer accepted no byte for the write timeout.
    Stalled,
}

/// Writes all of `parts`, in order, and flushes them; each step that has
/// to wait gets `timeout` ([`Duration::MAX`]: it may wait for ever; tokio
/// saturates the deadline). The parts go out as
/// vectored writes, so a chunk's size line, data and CRLF need not be
/// copied into one frame first.
///
/// Not an `async fn`: its arguments would be kept for the whole write
/// beside the slices made of them, and this future is part of every event
/// stream's, whose size is what an idle stream costs.
pub fn write_all_flush<'a, W: AsyncWrite + Unpin, const N: usize>(
    w: &'a mut W,
    parts: [&'a [u8]; N],
    timeout: Duration,
) -> impl Future<Output = Result<(), WriteFailure>> + 'a {
    let mut slices = parts.map(IoSlice::new);
    async move {
        let mut rest = &mut slices[..];
        // Drops leading empty parts, so that a write of 0 bytes means failure.
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match timed(timeout, w.write_vectored(rest)).await? {
                0 => return Err(WriteFailure::Failed),
                written => IoSlice::advance_slices(&mut rest, written),
            }
        }
        // pingora's stream keeps a small write buffer (one segment); the
        // flush empties it.
        timed(timeout, w.flush()).await
    }
}

/// Runs one step of a write: polled once without a timer; only a step that
/// has to wait gets the timeout (`Stalled` when it runs out).
pub async fn timed<T, E>(
    timeout: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, WriteFailure> {
    let mut step = pin!(step);
    let first = poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(r) => r,
        Poll::Pending => match tokio::time::timeout(timeout, step).await {
            Ok(r) => r,
            Err(_) => return Err(WriteFailure::Stalled),
        },
    };
    result.map_err(|_| WriteFailure::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const T: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn writes_every_part_in_order() {
        let (mut w, mut r) = tokio::io::duplex(64);
        write_all_flush(&mut w, [b"", b"5\r\n", b"hello", b"\r\n"], T)
            .await
            .expect("written");
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"5\r\nhello\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_stalls_after_the_timeout() {
        let (mut w, _r) = tokio::io::duplex(4);
        let started = tokio::time::Instant::now();
        let res = write_all_flush(&mut w, [b"more than four bytes"], T).await;
        assert_eq!(res, Err(WriteFailure::Stalled));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_reading_is_served() {
        let (mut w, mut r) = tokio::io::duplex(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4];
            loop {
                // Less than the timeout per step, more than it in all.
                tokio::time::sleep(Duration::from_millis(600)).await;
                match r.read(&mut buf).await.expect("read") {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        write_all_flush(&mut w, [b"twelve bytes"], T)
            .await
            .expect("served");
        drop(w);
        assert_eq!(reader.await.expect("reader"), b"twelve bytes");
    }

    #[tokio::test]
    async fn a_closed_peer_fails() {
        let (mut w, r) = tokio::io::duplex(4);
        drop(r);
        assert_eq!(
            write_all_flush(&mut w, [b"x"], Duration::MAX).await,
            Err(WriteFailure::Failed)
        );
    }
}

//! The client connection limit (`[limits] max_connections`) and the
//! `ssegate_connections_open` gauge.
//!
//! Every accepted connection takes a [`ConnectionGuard`] before pingora's
//! HTTP handling sees it ([`Limited`] wraps the listener's app); past the
//! limit the connection is closed at once. The guard lives as long as the
//! connection:
//!
//! ```text
//!  accept ── Limited::process_new ── guard in a task-local ──┬── HTTP/1 requests, inline
//!                                                            │    an event stream takes the guard
//!                                                            │    into its own task, and back into
//!                                                            │    the keep-alive loop after it
//!                                                            └── HTTP/2: held until the
//!                                                                 connection's accept loop ends
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use crate::metrics::ConnectionMetrics;

tokio::task_local! {
    /// The guard of the connection the current task is serving, if it holds one.
    static CONNECTION: RefCell<Option<ConnectionGuard>>;
}

/// Counts open client connections against `max_connections`.
pub struct ConnectionLimit {
    max: Option<usize>,
    open: Arc<AtomicUsize>,
    metrics: ConnectionMetrics,
}

impl ConnectionLimit {
    pub fn new(max: Option<usize>, metrics: ConnectionMetrics) -> Self {
        ConnectionLimit {
            max,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// A place for one more connection, or `None` (counted) at the limit.
    pub fn try_acquire(&self) -> Option<ConnectionGuard> {
        let max = self.max.unwrap_or(usize::MAX);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.rejected.inc();
            return None;
        }
        self.metrics.open.inc();
        Some(ConnectionGuard {
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// One open client connection; its place is given back on drop.
pub struct ConnectionGuard {
    open: Arc<AtomicUsize>,
    metrics: ConnectionMetrics,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open.dec();
    }
}

/// Takes the current task's connection guard, for a task that will carry
/// the connection on (an HTTP/1 event stream). `None` outside a connection
/// task (an HTTP/2 stream's task: its connection keeps the guard).
pub fn take_current() -> Option<ConnectionGuard> {
    CONNECTION
        .try_with(|c| c.borrow_mut().take())
        .ok()
        .flatten()
}

/// Runs `f` (the serving of a connection) holding `guard`.
pub async fn holding<F: Future>(guard: Option<ConnectionGuard>, f: F) -> F::Output {
    CONNECTION.scope(RefCell::new(guard), f).await
}

/// A listener's app behind the connection limit.
pub struct Limited<A> {
    app: Arc<A>,
    limit: Arc<ConnectionLimit>,
}

impl<A> Limited<A> {
    pub fn new(app: A, limit: Arc<ConnectionLimit>) -> Self {
        Limited {
            app: Arc::new(app),
            limit,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(guard) = self.limit.try_acquire() else {
            log::debug!("connection limit reached: connection closed");
            drop(stream);
            return None;
        };
        holding(Some(guard), self.app.process_new(stream, shutdown)).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge};

    fn limit(max: Option<usize>) -> ConnectionLimit {
        ConnectionLimit::new(
            max,
            ConnectionMetrics {
                open: IntGauge::new("open", "h").expect("gauge"),
                rejected: IntCounter::new("rejected", "h").expect("counter"),
            },
        )
    }

    #[test]
    fn guards_count_up_to_the_limit_and_give_back_on_drop() {
        let l = limit(Some(2));
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none());
        assert_eq!((l.metrics.open.get(), l.metrics.rejected.get()), (2, 1));
        drop(a);
        let c = l.try_acquire().expect("a place again");
        drop((b, c));
        assert_eq!(l.metrics.open.get(), 0);
        assert!(limit(None).try_acquire().is_some());
    }

    #[tokio::test]
    async fn the_guard_follows_the_task_that_takes_it() {
        let l = limit(Some(1));
        let guard = l.try_acquire();
        let taken = holding(guard, async { take_current() }).await;
        assert!(taken.is_some(), "taken out of the scope");
        assert!(take_current().is_none(), "no scope, no guard");
        assert!(l.try_acquire().is_none(), "still held by `taken`");
        drop(taken);
        assert!(l.try_acquire().is_some());
    }
}

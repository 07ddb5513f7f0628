//! What every accepted client connection goes through before pingora's HTTP
//! handling sees it: the connection limit (`[limits] max_connections`, with
//! the `ssegate_connections_open` gauge), and on plain listeners a bound on
//! the wait for the first bytes (see [`Limited`]).
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
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{SocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;

use crate::metrics::ConnectionMetrics;

/// The HTTP/2 connection preface pingora looks for on plain connections.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

tokio::task_local! {
    /// The guard of the connection the current task is serving, if it holds one.
    static CONNECTION: RefCell<Option<ConnectionGuard>>;
}

/// Counts open client connections against `max_connections`.
pub struct ConnectionLimit {
    max: Option<usize>,
    open: Arc<AtomicUsize>,
    /// The most connections open at once since the memory trimmer last
    /// looked (`crate::memory`).
    high_water: Arc<AtomicUsize>,
    metrics: ConnectionMetrics,
}

impl ConnectionLimit {
    pub fn new(max: Option<usize>, metrics: ConnectionMetrics) -> Self {
        ConnectionLimit {
            max,
            open: Arc::new(AtomicUsize::new(0)),
            high_water: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// The connections open now, and their high-water mark.
    pub fn counts(&self) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (self.open.clone(), self.high_water.clone())
    }

    /// A place for one more connection, or `None` (counted) at the limit.
    pub fn try_acquire(&self) -> Option<ConnectionGuard> {
        let max = self.max.unwrap_or(usize::MAX);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        let Ok(before) = taken else {
            self.metrics.rejected.inc();
            return None;
        };
        self.high_water.fetch_max(before + 1, Ordering::Relaxed);
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

/// An HTTP/2 connection's requests in progress, event streams included, and
/// since when it has had none. pingora's own h2 idle timeout cannot serve
/// here: it counts an event stream only until its task is detached from
/// the request (`ProxyApp::run_stream`), so it would close connections that
/// carry nothing but streams.
struct Activity {
    open: AtomicUsize,
    /// Milliseconds since `epoch` when `open` last went to 0.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

/// A connection's two ends, as the key of [`ACTIVITY`].
type ConnKey = (SocketAddr, SocketAddr);

/// Every HTTP/2 connection being watched, by (local, peer) address: the
/// request tasks pingora spawns per stream find their connection's
/// [`Activity`] here.
static ACTIVITY: Mutex<Option<HashMap<ConnKey, Weak<Activity>>>> = Mutex::new(None);

/// One request (or event stream) in progress on an HTTP/2 connection.
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.epoch.elapsed().as_millis() as u64, Ordering::Release);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a request of the HTTP/2 connection `key` as in progress until the
/// guard drops; `None` if the connection is not watched.
pub fn h2_request_started(key: Option<ConnKey>) -> Option<ActivityGuard> {
    let key = key?;
    let registry = ACTIVITY.lock().ok()?;
    let activity = registry.as_ref()?.get(&key)?.upgrade()?;
    activity.open.fetch_add(1, Ordering::AcqRel);
    Some(ActivityGuard(activity))
}

/// The (local, peer) addresses of a session's connection.
pub fn connection_key(digest: Option<&pingora_core::protocols::Digest>) -> Option<ConnKey> {
    socket_key(digest?.socket_digest.as_ref()?)
}

/// The (local, peer) addresses of a connection's socket.
fn socket_key(socket: &SocketDigest) -> Option<ConnKey> {
    Some((
        *socket.local_addr()?.as_inet()?,
        *socket.peer_addr()?.as_inet()?,
    ))
}

/// Watches an HTTP/2 connection while it is registered.
struct Watched {
    key: Option<ConnKey>,
    activity: Arc<Activity>,
}

impl Watched {
    fn register(key: Option<ConnKey>) -> Watched {
        let activity = Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        if let (Some(key), Ok(mut registry)) = (key, ACTIVITY.lock()) {
            registry
                .get_or_insert_with(HashMap::new)
                .insert(key, Arc::downgrade(&activity));
        }
        Watched { key, activity }
    }

    /// Resolves once the connection has had no request in progress for
    /// `limit`: a connection that opens no stream, or only half a header
    /// block, is closed rather than held forever.
    async fn idle_for(&self, limit: Duration) {
        let a = &self.activity;
        loop {
            let idle_since =
                a.epoch + Duration::from_millis(a.idle_since_ms.load(Ordering::Acquire));
            if a.open.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
            } else if idle_since.elapsed() >= limit {
                return;
            } else {
                tokio::time::sleep_until((idle_since + limit).into()).await;
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut registry)) = (self.key, ACTIVITY.lock()) {
            if let Some(map) = registry.as_mut() {
                map.remove(&key);
            }
        }
    }
}

/// A listener's app behind the connection limit.
///
/// On a plain listener pingora first reads 24 bytes to tell an h2c preface
/// from HTTP/1, and that read has no timeout of its own: a client sending
/// fewer bytes, or none, would hold its connection (and its place under the
/// limit) forever. `first_bytes` bounds that wait; the bytes are peeked, so
/// pingora then finds them where it expects them.
pub struct Limited<A> {
    app: Arc<A>,
    limit: Arc<ConnectionLimit>,
    first_bytes: Option<Duration>,
    h2_idle: Duration,
}

impl<A> Limited<A> {
    /// `first_bytes`: for plain listeners, the longest wait for the first
    /// 24 bytes of a connection; `None` on TLS listeners, where the
    /// handshake has its own. `h2_idle`: how long an HTTP/2 connection may
    /// have no request in progress. Both are `timeouts.read`.
    pub fn new(
        app: A,
        limit: Arc<ConnectionLimit>,
        first_bytes: Option<Duration>,
        h2_idle: Duration,
    ) -> Self {
        Limited {
            app: Arc::new(app),
            limit,
            first_bytes,
            h2_idle,
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
        crate::memory::start_trimmer(self.limit.counts());
        let Some(guard) = self.limit.try_acquire() else {
            log::debug!("connection limit reached: connection closed");
            drop(stream);
            return None;
        };
        let mut stream = stream;
        let mut h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        if let Some(wait) = self
            .first_bytes
            .filter(|_| stream.get_ssl_digest().is_none())
        {
            let mut preface = [0u8; H2_PREFACE.len()];
            match tokio::time::timeout(wait, stream.try_peek(&mut preface)).await {
                Ok(Ok(_)) => h2 = preface == *H2_PREFACE,
                // Closed or failed before 24 bytes: pingora's own peek ends
                // the same way.
                Ok(Err(e)) => {
                    log::debug!("connection ended before its first request: {e}");
                    return None;
                }
                Err(_) => {
                    log::debug!("no request within {wait:?} of accepting: connection closed");
                    return None;
                }
            }
        }
        if !h2 {
            return holding(Some(guard), self.app.process_new(stream, shutdown)).await;
        }
        // An HTTP/2 connection without a request in progress for the idle
        // limit is dropped (pingora's accept loop with it).
        let limit = self.h2_idle;
        let key = stream.get_socket_digest().as_deref().and_then(socket_key);
        let watched = Watched::register(key);
        let serve = holding(Some(guard), self.app.process_new(stream, shutdown));
        tokio::select! {
            result = serve => result,
            _ = watched.idle_for(limit) => {
                log::debug!("HTTP/2 connection without a request for {limit:?}: closed");
                None
            }
        }
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

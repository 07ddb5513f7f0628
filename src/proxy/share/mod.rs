//! Shared event streams at run time (route `share = true`): one upstream
//! stream per stream key, whose events go into a replay ring that every
//! subscriber reads at its own position.
//!
//! ```text
//!  Shares (one per sharing route): stream key ──► Arc<Hub>
//!        │
//!  Hub: the ring (crate::share::ring) and the state of its upstream
//!        │    Opening ─► Live ─► Ended(end) ─(a subscriber comes back)─► Opening …
//!        │
//!  hub.rs: the hub's task. It runs the ordinary relay (stream.rs) from the
//!        │  upstream Source (Direct or Resuming) into a RingSink, which cuts
//!        │  chunks into whole events (crate::share::cut), pushes them into
//!        │  the ring and wakes the subscribers; its "client" goes away once
//!        │  the last subscriber left and `share_linger` passed
//!        │
//!  subscription.rs: a subscriber's Source: a position in the ring (or, on
//!                   a replay miss, its own upstream until an id it receives
//!                   is in the ring); each subscriber's own relay does its
//!                   heartbeats, timeouts and drain
//! ```
//!
//! Joining is atomic: the position is read under the hub's lock, the same
//! lock under which the hub task pushes, so a subscriber gets every event
//! after its join point exactly once. The registry's lock orders joins
//! against a lingering hub's removal.

pub mod auth;
pub mod cluster;
pub mod hub;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pingora_http::ResponseHeader;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Share;
use crate::metrics::ShareMetrics;
use crate::outcome::StreamEnd;
use crate::share::key::StreamKey;
use crate::share::ring::{Ring, RingLimits};

pub use subscription::{Membership, Subscription, Switching};

/// The shared streams of one route, by stream key.
pub struct Shares {
    hubs: Mutex<HashMap<StreamKey, Arc<Hub>>>,
    pub settings: Share,
    pub metrics: ShareMetrics,
    pub auth: auth::AuthCache,
    /// The route's `retry:` base and jitter (`[stream] shutdown_retry`,
    /// `shutdown_retry_jitter`), for subscribers ended by an overflow.
    pub retry: (Duration, Duration),
    /// `[cluster]`: the stream is shared across instances through Redis.
    pub cluster: Option<cluster::ShareCluster>,
}

/// What a request found when it looked for its stream.
/// Each holds the request's [`Membership`]: it is counted on the hub.
pub enum Found {
    /// The stream is live: join it now (see [`Hub::position`]).
    Live(Membership),
    /// Nobody holds the stream's upstream: this request opens it (a new
    /// hub, or an ended one whose ring is kept).
    Open(Opening, Membership),
    /// Another request is opening it: wait for [`Hub::opened`].
    Opening(Membership),
}

/// Where a subscriber starts reading a hub: a ring position, in the
/// generation of the hub's upstream that was live when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub pos: u64,
    pub generation: u64,
}

/// The right, and duty, to open a hub's upstream: exactly one request holds
/// it at a time. Dropped without [`Opening::opened`], the opening failed.
pub struct Opening {
    pub hub: Arc<Hub>,
    /// The ring's newest id, to resume after when the hub is re-opened.
    pub resume_id: Option<Arc<[u8]>>,
    /// Which opening this is: the hub task of another generation leaves it alone.
    pub generation: u64,
    done: bool,
}

impl Shares {
    pub fn new(
        settings: Share,
        metrics: ShareMetrics,
        retry: (Duration, Duration),
        cluster: Option<cluster::ShareCluster>,
    ) -> Shares {
        Shares {
            retry,
            cluster,
            hubs: Mutex::new(HashMap::new()),
            auth: auth::AuthCache::new(settings.auth_cache),
            settings,
            metrics,
        }
    }

    fn hubs(&self) -> MutexGuard<'_, HashMap<StreamKey, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hub for `key`, and what the caller must do with it. A new hub is
    /// created when there is none. The caller is counted on it now, under
    /// the registry's lock, so that a lingering hub cannot be removed under
    /// it; dropping the returned [`Membership`] uncounts it.
    pub fn find(self: &Arc<Self>, key: &StreamKey) -> Found {
        let mut hubs = self.hubs();
        let hub = match hubs.get(key) {
            Some(hub) => hub.clone(),
            None => {
                let hub = Arc::new(Hub::new(key.clone(), self));
                hubs.insert(key.clone(), hub.clone());
                self.metrics.streams_open.inc();
                hub
            }
        };
        hub.subscribers.fetch_add(1, Ordering::AcqRel);
        let member = Membership { hub: hub.clone() };
        let mut st = hub.state();
        match st.upstream {
            Upstream::Live => {
                drop(st);
                Found::Live(member)
            }
            Upstream::Opening => {
                drop(st);
                Found::Opening(member)
            }
            Upstream::Idle | Upstream::Ended(_) => {
                st.upstream = Upstream::Opening;
                st.generation += 1;
                let generation = st.generation;
                let resume_id = st.ring.newest_id().cloned();
                drop(st);
                Found::Open(
                    Opening {
                        hub: hub.clone(),
                        resume_id,
                        generation,
                        done: false,
                    },
                    member,
                )
            }
        }
    }

    /// Removes `hub` if nobody reads it, under the registry's lock, so that
    /// no request can join it meanwhile. `live`: the caller is the task of
    /// that generation of the hub's upstream, which then ends; `None`: the
    /// upstream has ended, and is removed only if nobody re-opened it since.
    fn remove_if_unused(&self, hub: &Arc<Hub>, live: Option<u64>) -> bool {
        let mut hubs = self.hubs();
        if hub.subscribers.load(Ordering::Acquire) != 0 {
            return false;
        }
        {
            let mut st = hub.state();
            match live {
                Some(generation) if st.generation == generation => {
                    st.upstream = Upstream::Ended(StreamEnd::ClientGone);
                }
                Some(_) => return false,
                None if matches!(st.upstream, Upstream::Opening | Upstream::Live) => return false,
                None => {}
            }
        }
        match hubs.get(&hub.key) {
            Some(h) if Arc::ptr_eq(h, hub) => {
                hubs.remove(&hub.key);
                self.metrics.streams_open.dec();
                true
            }
            _ => false,
        }
    }

    /// Shared streams held now.
    pub fn len(&self) -> usize {
        self.hubs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a hub's upstream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Created, nobody has tried to open it yet.
    Idle,
    /// A request is opening it.
    Opening,
    /// Its task relays it into the ring.
    Live,
    /// It ended (a failure, or the upstream's own end): subscribers end
    /// when they reach the ring's head; the ring stays for `share_linger`,
    /// and the next request re-opens it after the ring's newest id.
    Ended(StreamEnd),
}

/// One shared stream: the ring, and the state of its upstream.
pub struct Hub {
    pub key: StreamKey,
    state: Mutex<HubState>,
    /// Woken when events are pushed, the upstream changes state, or the hub ends.
    notify: Notify,
    /// Moved on at each of those, before `notify` wakes: a subscriber that
    /// saw this value has seen everything, and need not take the lock.
    version: AtomicU64,
    /// Woken when the last subscriber leaves.
    left: Notify,
    subscribers: AtomicUsize,
    shares: std::sync::Weak<Shares>,
    metrics: ShareMetrics,
    /// The `retry:` base and jitter of a subscriber ended for falling behind.
    retry: (Duration, Duration),
    /// Its place in the cluster (`[cluster]`), if any.
    pub cluster: Option<Arc<cluster::Link>>,
}

/// What the hub's lock guards.
pub struct HubState {
    pub ring: Ring,
    pub upstream: Upstream,
    /// Incremented at each opening; subscribers of an earlier generation end
    /// where it ended.
    pub generation: u64,
    /// Where the last ended generation ended: (generation, ring position, how).
    pub ended_at: Option<(u64, u64, StreamEnd)>,
    /// The upstream's response header, `Set-Cookie` removed, for joiners.
    pub head: Option<Arc<ResponseHeader>>,
    /// When the subscriber count last fell to zero.
    pub last_left: Option<Instant>,
}

impl Hub {
    fn new(key: StreamKey, shares: &Arc<Shares>) -> Hub {
        let s = &shares.settings;
        Hub {
            state: Mutex::new(HubState {
                ring: Ring::new(RingLimits {
                    replay_events: s.replay_events,
                    replay_bytes: s.replay_bytes,
                }),
                upstream: Upstream::Idle,
                generation: 0,
                ended_at: None,
                head: None,
                last_left: Some(Instant::now()),
            }),
            notify: Notify::new(),
            version: AtomicU64::new(0),
            left: Notify::new(),
            subscribers: AtomicUsize::new(0),
            shares: Arc::downgrade(shares),
            metrics: shares.metrics.clone(),
            retry: shares.retry,
            cluster: shares
                .cluster
                .as_ref()
                .map(|c| Arc::new(cluster::Link::new(c, key.as_bytes()))),
            key,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the hub is no longer being opened; returns its head if
    /// it is live (join it), `None` if the opening failed (go unshared).
    pub async fn opened(&self) -> Option<Arc<ResponseHeader>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                match st.upstream {
                    Upstream::Opening => {}
                    Upstream::Live => return st.head.clone(),
                    Upstream::Idle | Upstream::Ended(_) => return None,
                }
            }
            notified.await;
        }
    }

    /// Where a subscriber joins now: just after the event that set `want`
    /// (its Last-Event-ID), if the ring has it, or at the ring's head (the
    /// next event) without one. `None`: `want` is not in the ring (a miss).
    pub fn position(&self, want: Option<&[u8]>) -> Option<Position> {
        let st = self.state();
        let pos = match want {
            Some(id) => st.ring.find_after(id)?,
            None => st.ring.head(),
        };
        Some(Position {
            pos,
            generation: st.generation,
        })
    }

    /// One subscriber left (or a counted request did not subscribe after all).
    pub fn unsubscribe(&self) {
        if self.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state().last_left = Some(Instant::now());
            self.left.notify_one();
        }
    }

    /// Subscribers reading now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    fn wake_subscribers(&self) {
        self.version.fetch_add(1, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// See `version`.
    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

impl Opening {
    /// The upstream answered with a stream that can be shared, whose
    /// response header is `head`: the hub is live from the ring's head on.
    /// `head` is kept, without `Set-Cookie`, for the subscribers that join.
    pub fn opened(self, mut head: ResponseHeader) {
        head.remove_header(&http::header::SET_COOKIE);
        self.hub.metrics.opens.inc();
        self.live(head);
    }

    /// The hub follows another instance's upstream through Redis (see
    /// `cluster`), whose response header is `head`: live from now on, no
    /// upstream opened here.
    pub fn followed(self, head: ResponseHeader) {
        self.live(head);
    }

    /// The hub is live, answered with `head`: waiters join it.
    fn live(mut self, head: ResponseHeader) {
        self.done = true;
        let mut st = self.hub.state();
        st.head = Some(Arc::new(head));
        st.upstream = Upstream::Live;
        drop(st);
        self.hub.wake_subscribers();
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The opening failed: waiters go their own way; a hub with nothing
        // kept goes away at once, one with a ring stays ended until its linger.
        if let Some(link) = &self.hub.cluster {
            link.opening_failed();
        }
        let mut st = self.hub.state();
        let end = st.ended_at.map_or(StreamEnd::UpstreamError, |(_, _, e)| e);
        st.upstream = Upstream::Ended(end);
        let empty = st.ring.is_empty();
        drop(st);
        self.hub.wake_subscribers();
        if empty {
            if let Some(shares) = self.hub.shares.upgrade() {
                let mut hubs = shares.hubs();
                if matches!(hubs.get(&self.hub.key), Some(h) if Arc::ptr_eq(h, &self.hub)) {
                    hubs.remove(&self.hub.key);
                    shares.metrics.streams_open.dec();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

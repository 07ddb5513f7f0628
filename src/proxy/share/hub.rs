//! A shared stream's upstream side: the hub's task.
//!
//! It runs the same relay as every event stream (`stream::relay`), from the
//! upstream's [`Source`](super::super::stream::Source) (one connection, or a
//! resuming one with `resume = "on-error"`) into a [`RingSink`] instead of a
//! client: each write is cut into whole events, pushed into the ring under
//! the hub's lock, and the subscribers are woken once. The relay's idle
//! timeout and resume apply to the upstream as for any stream; heartbeats
//! and the drain are the subscribers' own, in their own relays.
//!
//! The sink's "client" goes away when the last subscriber has left and
//! `share_linger` has passed (at once when the process is shutting down):
//! the hub is then taken out of the registry and its upstream dropped. When
//! the upstream ends on its own, the hub stays as `Ended` for the linger, so
//! that subscribers coming back resume from its ring.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_http::RequestHeader;
use tokio::time::{sleep_until, Instant};

use super::super::downstream::{Sink, WriteFailure};
use super::super::resume;
use super::super::route::RouteEntry;
use super::super::stream::{self, Direct, Source, StreamPolicy};
use super::super::Shared;
use super::{Hub, Shares, Upstream};
use crate::config::Resume;
use crate::metrics::RelayProbe;
use crate::outcome::StreamEnd;
use crate::share::cut::{Cutter, Piece};
use crate::upstream::Connected;

/// The longest event a shared stream holds while waiting for its end: an
/// upstream that sends more without a blank line is given up.
const MAX_EVENT: usize = 1024 * 1024;

/// What a hub's task is given when its upstream has answered.
pub struct HubJob {
    pub hub: Arc<Hub>,
    pub shares: Arc<Shares>,
    pub route: Arc<RouteEntry>,
    pub up: Connected,
    /// The request as sent, for resumes (route `resume = "on-error"`).
    pub request: RequestHeader,
    pub generation: u64,
}

/// Runs the hub's upstream until it ends, then its linger.
pub async fn run(shared: Arc<Shared>, job: HubJob, shutdown: ShutdownWatch) {
    let HubJob {
        hub,
        shares,
        route,
        mut up,
        request,
        generation,
    } = job;
    let linger = shares.settings.linger;
    let mut sink = RingSink {
        hub: &hub,
        shares: &shares,
        cutter: Cutter::new(),
        pieces: Vec::new(),
        generation,
        linger,
        shutdown: shutdown.clone(),
    };
    // The hub never drains on its own: its subscribers do, and it goes
    // once they have left.
    let (_never, no_drain) = tokio::sync::watch::channel(false);
    let policy = StreamPolicy {
        heartbeat: None,
        ..route.policy.clone()
    };
    let probe = match RelayProbe::unregistered() {
        Ok(p) => p,
        Err(e) => {
            log::error!("shared stream: {e}");
            return;
        }
    };
    let end = if route.config.resume == Resume::OnError {
        let resumer = resume::Resumer {
            pools: &shared.pools,
            pool: &route.pool,
            request: &request,
            attempts: route.config.resume_attempts,
            backoff: route.config.resume_backoff,
            metrics: route.metrics.resume(),
        };
        let mut source = resume::Resuming::new(&mut up, &resumer);
        relay_into(&mut sink, &mut source, &policy, &no_drain, &probe).await
    } else {
        let mut source = Direct::new(&mut up);
        relay_into(&mut sink, &mut source, &policy, &no_drain, &probe).await
    };
    shared.pools.release(up, false).await;
    if end == StreamEnd::ClientGone {
        // Nobody left to read it; `closed` took it out of the registry.
        log::debug!(
            "shared stream on route {} closed after its linger",
            route.config.path
        );
        return;
    }
    log::info!(
        "shared stream on route {} ended: {}",
        route.config.path,
        crate::outcome::end_reason(end).1
    );
    {
        let mut st = hub.state();
        if st.generation == generation {
            st.upstream = Upstream::Ended(end);
            let at = st.ring.head();
            st.ended_at = Some((generation, at, end));
        }
    }
    hub.wake_subscribers();
    // The ring stays for the linger, for subscribers that come back.
    loop {
        wait_unused(&hub, linger, &shutdown).await;
        if shares.remove_if_unused(&hub, None) {
            return;
        }
        if hub.state().upstream == Upstream::Live {
            // Re-opened: that generation's task owns the hub now.
            return;
        }
        if hub.subscribers() == 0 {
            // Being re-opened: look again once that is decided.
            let _ = hub.opened().await;
        }
    }
}

/// The relay of every stream, from the hub's upstream `source` into its
/// ring: no heartbeats (`policy` has none) and no drain of its own.
async fn relay_into(
    sink: &mut RingSink<'_>,
    source: &mut impl Source,
    policy: &StreamPolicy,
    no_drain: &ShutdownWatch,
    probe: &RelayProbe,
) -> StreamEnd {
    let rng = stream::LocalRng;
    stream::relay(sink, source, policy, false, no_drain, probe, rng)
        .await
        .0
}

/// Waits until the hub has had no subscriber for `linger` (no wait once
/// shutdown has started).
async fn wait_unused(hub: &Hub, linger: Duration, shutdown: &ShutdownWatch) {
    let mut shutdown = shutdown.clone();
    loop {
        let left = hub.left.notified();
        tokio::pin!(left);
        left.as_mut().enable();
        let stopping = *shutdown.borrow_and_update();
        let deadline = if hub.subscribers() > 0 {
            None
        } else {
            let last_left = hub.state().last_left.unwrap_or_else(Instant::now);
            Some(if stopping {
                last_left
            } else {
                last_left + linger
            })
        };
        match deadline {
            Some(at) if at <= Instant::now() => return,
            Some(at) => tokio::select! {
                _ = sleep_until(at) => {}
                _ = left => {}
                _ = shutdown.changed(), if !stopping => {}
            },
            None => tokio::select! {
                _ = left => {}
                _ = shutdown.changed(), if !stopping => {}
            },
        }
    }
}

/// The relay's "client" on a hub: the ring.
struct RingSink<'a> {
    hub: &'a Arc<Hub>,
    shares: &'a Shares,
    cutter: Cutter,
    /// Scratch for the pieces of one write.
    pieces: Vec<Piece>,
    generation: u64,
    linger: Duration,
    shutdown: ShutdownWatch,
}

impl Sink for RingSink<'_> {
    async fn write(&mut self, data: Bytes) -> Result<(), WriteFailure> {
        self.cutter.cut(&data, &mut self.pieces);
        if self.cutter.pending() > MAX_EVENT.max(self.shares.settings.replay_bytes) {
            log::warn!("shared stream: an event over {MAX_EVENT} bytes; the stream is given up");
            return Err(WriteFailure::Failed);
        }
        if !self.pieces.is_empty() {
            let mut st = self.hub.state();
            for piece in self.pieces.drain(..) {
                st.ring.push(piece);
            }
            drop(st);
            self.hub.wake_subscribers();
        }
        Ok(())
    }

    /// Resolves once the last subscriber has been gone for the linger and
    /// the hub is out of the registry. Cancel-safe: the deadline lives in
    /// the hub, not in this future.
    async fn closed(&mut self) {
        loop {
            wait_unused(self.hub, self.linger, &self.shutdown).await;
            if self
                .shares
                .remove_if_unused(self.hub, Some(self.generation))
            {
                return;
            }
        }
    }

    async fn finish(&mut self) -> Result<(), WriteFailure> {
        Ok(())
    }

    async fn abort(&mut self) {}
}

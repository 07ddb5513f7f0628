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
use super::cluster::{self, Followed};
use super::{Hub, Shares, Upstream};
use crate::cluster::metrics::Role;
use crate::cluster::EntryId;
use crate::config::Resume;
use crate::metrics::RelayProbe;
use crate::outcome::StreamEnd;
use crate::share::cut::{Cutter, Piece};
use crate::upstream::Connected;

/// The longest event a shared stream holds while waiting for its end: an
/// upstream that sends more without a blank line is given up.
const MAX_EVENT: usize = 1024 * 1024;

/// What a hub's task is given when its upstream has answered (or, in a
/// cluster, when it follows another instance's upstream: `up` is `None`).
pub struct HubJob {
    pub hub: Arc<Hub>,
    pub shares: Arc<Shares>,
    pub route: Arc<RouteEntry>,
    pub up: Option<Connected>,
    /// The request as sent, for resumes (route `resume = "on-error"`) and
    /// for a cluster's takeovers.
    pub request: RequestHeader,
    pub generation: u64,
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a hub's task stands.
enum Mode {
    /// Relaying its upstream into the ring (boxed: a connection is large,
    /// and a hub changes mode rarely).
    Upstream(Box<Connected>),
    /// Following another instance's upstream through Redis, after this
    /// entry (`None`: after lining up by event id).
    Follow(Option<EntryId>),
}

/// Runs the hub's upstream until it ends, then its linger.
pub async fn run(shared: Arc<Shared>, job: HubJob, shutdown: ShutdownWatch) {
    run_from(shared, job, shutdown, None).await;
}

/// [`run`], for a hub of a cluster that starts as a follower after
/// `follow_at` when `job.up` is `None`.
pub async fn run_from(
    shared: Arc<Shared>,
    job: HubJob,
    shutdown: ShutdownWatch,
    follow_at: Option<EntryId>,
) {
    let HubJob {
        hub,
        shares,
        route,
        up,
        request,
        generation,
    } = job;
    let link = hub.cluster.clone();
    let mut mode = match up {
        Some(up) => Mode::Upstream(Box::new(up)),
        None => Mode::Follow(follow_at),
    };
    let end = loop {
        mode = match mode {
            Mode::Upstream(mut up) => {
                let upstream = link.as_deref().map(|l| cluster::Upstream::new(l, &shares));
                let ticks = link.as_ref().map(|l| {
                    let task = cluster::ticks(hub.clone(), l.clone(), shares.clone());
                    AbortOnDrop(tokio::spawn(task))
                });
                let (end, demoted) = relay_upstream(
                    &shared, &hub, &shares, &route, &mut up, &request, generation, &shutdown,
                    upstream,
                )
                .await;
                drop(ticks);
                shared.pools.release(*up, false).await;
                match (end, demoted, &link) {
                    (StreamEnd::ClientGone, Some(at), Some(_)) => Mode::Follow(at),
                    (StreamEnd::ClientGone, _, link) => {
                        if let Some(link) = link {
                            let _ = link.cluster.release(&link.keys).await;
                        }
                        // Nobody left to read it; `closed` took it out of the registry.
                        log::debug!(
                            "shared stream on route {} closed after its linger",
                            route.config.path
                        );
                        return;
                    }
                    (end, _, Some(link)) => {
                        cluster::Upstream::new(link, &shares).ended(end).await;
                        break end;
                    }
                    (end, _, None) => break end,
                }
            }
            Mode::Follow(at) => {
                let Some(link) = &link else {
                    break StreamEnd::UpstreamError;
                };
                match cluster::follow(&hub, link, &shares, at, generation, &shutdown).await {
                    Followed::Gone => return,
                    Followed::Ended(end) => break end,
                    Followed::Upstream { takeover } => {
                        match reconnect(&shared, &hub, &route, &request).await {
                            Some(up) => {
                                if takeover {
                                    link.set_role(Role::Holder);
                                }
                                Mode::Upstream(Box::new(up))
                            }
                            None => {
                                if takeover {
                                    let _ = link.cluster.release(&link.keys).await;
                                }
                                break StreamEnd::UpstreamError;
                            }
                        }
                    }
                }
            }
        };
    };
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
        wait_unused(&hub, shares.settings.linger, &shutdown).await;
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

/// A cluster's stream that must serve itself (a takeover, or Redis
/// failed): its upstream, resumed after the ring's newest id.
async fn reconnect(
    shared: &Shared,
    hub: &Hub,
    route: &RouteEntry,
    request: &RequestHeader,
) -> Option<Connected> {
    let resume_id = hub.state().ring.newest_id().cloned();
    let mut resumer = resume::Resumer::for_route(&shared.pools, route, request);
    resumer.attempts = resumer.attempts.max(1);
    match resumer.reconnect(resume_id.as_deref()).await {
        Ok(mut up) => {
            up.session.set_read_timeout(None);
            hub.metrics.opens.inc();
            Some(up)
        }
        Err(e) => {
            log::warn!(
                "shared stream on route {}: upstream not reopened: {e}",
                route.config.path
            );
            None
        }
    }
}

/// The relay from the hub's upstream `up` into its ring, until the
/// upstream ends, the linger passes, or (in a cluster) the stream must
/// follow Redis instead (then the entry to follow after is returned).
#[allow(clippy::too_many_arguments)]
async fn relay_upstream(
    shared: &Shared,
    hub: &Arc<Hub>,
    shares: &Shares,
    route: &RouteEntry,
    up: &mut Connected,
    request: &RequestHeader,
    generation: u64,
    shutdown: &ShutdownWatch,
    mut cluster: Option<cluster::Upstream<'_>>,
) -> (StreamEnd, Option<Option<EntryId>>) {
    if let Some(c) = &mut cluster {
        c.link.clear_demote();
        if let Some(head) = up.session.response_header() {
            c.link.keep_head(head);
        }
        c.publish().await;
    }
    let mut sink = RingSink {
        hub,
        shares,
        cutter: Cutter::new(),
        pieces: Vec::new(),
        generation,
        linger: shares.settings.linger,
        shutdown: shutdown.clone(),
        cluster,
        demoted: None,
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
            return (StreamEnd::UpstreamError, None);
        }
    };
    let end = if route.config.resume == Resume::OnError {
        let resumer = resume::Resumer::for_route(&shared.pools, route, request);
        let mut source = resume::Resuming::new(up, &resumer);
        relay_into(&mut sink, &mut source, &policy, &no_drain, &probe).await
    } else {
        let mut source = Direct::new(up);
        relay_into(&mut sink, &mut source, &policy, &no_drain, &probe).await
    };
    (end, sink.demoted)
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
pub(super) async fn wait_unused(hub: &Hub, linger: Duration, shutdown: &ShutdownWatch) {
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
    /// In a cluster: the holder's appends and lease, or a local stream's
    /// attempts to rejoin.
    cluster: Option<cluster::Upstream<'a>>,
    /// Set when `closed` resolved because the stream must follow Redis.
    demoted: Option<Option<EntryId>>,
}

impl Sink for RingSink<'_> {
    async fn write(&mut self, data: Bytes) -> Result<(), WriteFailure> {
        self.cutter.cut(&data, &mut self.pieces);
        if self.cutter.pending() > MAX_EVENT.max(self.shares.settings.replay_bytes) {
            log::warn!("shared stream: an event over {MAX_EVENT} bytes; the stream is given up");
            return Err(WriteFailure::Failed);
        }
        if !self.pieces.is_empty() {
            {
                let mut st = self.hub.state();
                if self.cluster.is_some() {
                    // Kept for the append below.
                    for piece in &self.pieces {
                        st.ring.push(piece.clone());
                    }
                } else {
                    for piece in self.pieces.drain(..) {
                        st.ring.push(piece);
                    }
                }
            }
            self.hub.wake_subscribers();
            if let Some(cluster) = &mut self.cluster {
                cluster.append(&self.pieces).await;
                self.pieces.clear();
            }
        }
        Ok(())
    }

    /// Resolves once the last subscriber has been gone for the linger and
    /// the hub is out of the registry. Cancel-safe: the deadline lives in
    /// the hub, not in this future.
    async fn closed(&mut self) {
        loop {
            let unused = wait_unused(self.hub, self.linger, &self.shutdown);
            match &mut self.cluster {
                None => unused.await,
                Some(cluster) => tokio::select! {
                    _ = unused => {}
                    at = cluster.demoted() => {
                        self.demoted = Some(at);
                        return;
                    }
                },
            }
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

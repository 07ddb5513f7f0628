//! A shared stream across instances (`[cluster]`): which instance holds
//! its upstream, and how the others follow it through Redis
//! (`crate::cluster` sends the commands).
//!
//! ```text
//!        claim at opening                     lease lost / lined up with Redis
//!  ┌──────────────────────┐  ┌──────────────────────────────────────────────┐
//!  ▼                      │  │                                              │
//!  Holder ──Redis fails──► Local ──lease free again (new epoch)──► Holder   │
//!  upstream → ring         upstream → ring                                  │
//!  + XADD each write       (no Redis)                                       ▼
//!  ▲                                                                    Follower
//!  └──────── the lease is free (its holder died): take it, catch up,    XREAD → ring
//!            resume the upstream after Redis's newest id ───────────────────┘
//! ```
//!
//! Every role fills the same local ring, so subscribers never see the role
//! change: a follower reads Redis's entries into the ring exactly once, in
//! order (`cluster::entry::continuity`); when the order breaks (a new epoch
//! after lost history, entries trimmed before it read them) it lines up
//! again by event id, the newest id in its ring, or goes local and serves
//! its subscribers from an upstream request of its own after that id.
//! Nothing is skipped silently and nothing delivered twice.
//!
//! Leases are renewed, and free ones looked for, every third of
//! `cluster.lease` (a tick); the keys of a stream with subscribers here get
//! their TTL (`share_linger` plus the lease) refreshed at each tick.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Hub, Opening, Shares};
use crate::cluster::metrics::{Role, RouteClusterMetrics};
use crate::cluster::{
    entry, Appendable, Appended, Claim, Cluster, Continuity, Entry, EntryId, Epoch, History,
    StreamKeys, What,
};
use crate::outcome::StreamEnd;
use crate::share::cut::Piece;

/// The most entries one blocking read takes.
const READ_BATCH: usize = 512;

/// A sharing route's cluster: its Redis handle and counters.
pub struct ShareCluster {
    pub cluster: Arc<Cluster>,
    pub metrics: RouteClusterMetrics,
    /// The route's path, part of every stream's Redis key names.
    pub route: String,
}

/// One shared stream's place in the cluster.
pub struct Link {
    pub cluster: Arc<Cluster>,
    pub keys: StreamKeys,
    pub metrics: RouteClusterMetrics,
    state: Mutex<LinkState>,
    /// Woken when the stream must leave its upstream (`demote`).
    changed: Notify,
}

#[derive(Default)]
struct LinkState {
    role: Option<Role>,
    /// The epoch a holder continues (`None`: whatever Redis has).
    epoch: Option<String>,
    /// What this holder appends does not continue Redis's entries (it was
    /// local for a while): its next append starts a new epoch.
    broken: bool,
    /// The upstream's response head, for Redis's meta hash.
    head: Option<Vec<u8>>,
    /// `head` is in Redis, in the epoch appended to.
    head_sent: bool,
    /// Set when the upstream must go and the stream follow Redis: after
    /// this entry, or (`None`) after lining up by event id.
    demote: Option<Option<EntryId>>,
    /// Said once per stream until it rejoins.
    fallback_logged: bool,
}

impl Link {
    pub fn new(c: &ShareCluster, key: &[u8]) -> Link {
        Link {
            cluster: c.cluster.clone(),
            keys: StreamKeys::new(&c.route, key),
            metrics: c.metrics.clone(),
            state: Mutex::new(LinkState::default()),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_role(&self, role: Role) {
        let mut st = self.state();
        let from = st.role.replace(role);
        drop(st);
        self.metrics.set_role(&self.keys.tag, from, Some(role));
    }

    pub fn role(&self) -> Option<Role> {
        self.state().role
    }

    /// Redis failed (`why`): the stream is served locally from now on.
    fn fall_back(&self, why: &dyn std::fmt::Display) {
        let mut st = self.state();
        st.broken = true;
        if st.role == Some(Role::Local) {
            // Already local (the relay's append and a tick may both fail).
            return;
        }
        let first = !std::mem::replace(&mut st.fallback_logged, true);
        drop(st);
        if first {
            log::warn!(
                "cluster: shared stream {{{}}} served locally: {why}",
                self.keys.tag
            );
        }
        self.metrics.fallbacks.inc();
        self.set_role(Role::Local);
    }

    fn demote(&self, after: Option<EntryId>) {
        self.state().demote = Some(after);
        self.changed.notify_waiters();
    }

    /// The keys' TTL: `share_linger` after the last tick that saw
    /// subscribers (at least two ticks, so that keys in use never lapse
    /// between them).
    fn ttl(&self, shares: &Shares) -> Duration {
        shares.settings.linger.max(self.cluster.tick() * 2)
    }

    /// Keeps the upstream's response head for followers (sent with the
    /// next append).
    pub fn keep_head(&self, head: &ResponseHeader) {
        let mut st = self.state();
        st.head = Some(entry::encode_head(head.status.as_u16(), &head.headers));
        st.head_sent = false;
    }

    /// This instance took the lease to open the stream, and the opening
    /// failed: the lease goes back at once (in a task: this runs in a
    /// drop), so that another instance need not wait for it to expire.
    pub fn opening_failed(&self) {
        if self.role() != Some(Role::Holder) {
            return;
        }
        let (cluster, keys) = (self.cluster.clone(), self.keys.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = cluster.release(&keys).await;
            });
        }
    }

    /// A new upstream mode starts: an earlier request to leave it is void.
    pub fn clear_demote(&self) {
        self.state().demote = None;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let role = self.state().role.take();
        self.metrics.set_role(&self.keys.tag, role, None);
    }
}

/// How an opening in a cluster goes on.
pub enum Opened {
    /// This instance holds the lease (or Redis failed: it is local): open
    /// the upstream, after `Opening::resume_id`.
    Upstream,
    /// Another instance holds it: the hub is live from Redis now, with the
    /// holder's head, and the ring has Redis's entries up to `at`: start
    /// the hub's task as a follower from there.
    Following { at: EntryId, generation: u64 },
    /// The holder never published its head: not shared.
    Failed,
}

/// The cluster's part of opening `opening`'s hub: claim the lease; as its
/// holder, take Redis's history into the ring and resume after it; else
/// follow the holder. `wait_head`: how long to wait for a new holder's head.
pub async fn open(
    link: &Arc<Link>,
    opening: &mut Option<Opening>,
    shares: &Arc<Shares>,
    wait_head: Duration,
) -> Opened {
    let Some(hub) = opening.as_ref().map(|o| o.hub.clone()) else {
        return Opened::Failed;
    };
    let until = Instant::now() + wait_head;
    loop {
        let claim = match link.cluster.claim(&link.keys, Some(link.ttl(shares))).await {
            Ok(claim) => claim,
            Err(e) => {
                link.fall_back(&e);
                return Opened::Upstream;
            }
        };
        let replay_events = shares.settings.replay_events;
        let history = match link.cluster.history(&link.keys, replay_events).await {
            Ok(history) => history,
            Err(e) => {
                link.fall_back(&e);
                if let Claim::Ours { .. } = claim {
                    let _ = link.cluster.release(&link.keys).await;
                }
                return Opened::Upstream;
            }
        };
        match claim {
            Claim::Ours { .. } => {
                let continues = take_history(&hub, link, &history);
                {
                    let mut st = link.state();
                    st.epoch = history.epoch.clone().filter(|_| continues);
                    st.broken = !continues && history.epoch.is_some();
                }
                if let Some(o) = opening.as_mut() {
                    o.resume_id = hub.state().ring.newest_id().cloned();
                }
                link.set_role(Role::Holder);
                return Opened::Upstream;
            }
            Claim::Theirs => {
                if let Some(head) = history.head.as_deref().and_then(response_head) {
                    let Some(at) = lined_up(&hub, link, &history) else {
                        // Nothing to line up with: this stream serves itself.
                        link.fall_back(&"the cluster's entries do not continue this stream's");
                        return Opened::Upstream;
                    };
                    link.set_role(Role::Follower);
                    let Some(o) = opening.take() else {
                        return Opened::Failed;
                    };
                    let generation = o.generation;
                    o.followed(head);
                    return Opened::Following { at, generation };
                }
                if Instant::now() >= until {
                    log::warn!(
                        "cluster: the holder of shared stream {{{}}} published no response head within {wait_head:?}",
                        link.keys.tag
                    );
                    return Opened::Failed;
                }
                // The holder is opening its upstream: its head comes with
                // its first append.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// The upstream's head as the holder kept it.
fn response_head(text: &[u8]) -> Option<ResponseHeader> {
    let (status, fields) = entry::decode_head(text)?;
    let mut head = ResponseHeader::build(status, Some(fields.len())).ok()?;
    for (name, value) in fields {
        head.append_header(name, value).ok()?;
    }
    Some(head)
}

/// The newest run of entries that follow each other (one epoch, seqs
/// without a hole), events only; end entries of an earlier holder are left
/// out.
fn contiguous_tail(entries: &[Entry]) -> &[Entry] {
    let mut start = entries.len();
    while start > 0 {
        let i = start - 1;
        if start < entries.len() {
            let next = entries[start].id;
            let id = entries[i].id;
            if !(id.epoch == next.epoch && id.seq + 1 == next.seq) {
                break;
            }
        }
        start = i;
    }
    &entries[start..]
}

fn piece_of(e: &Entry) -> Option<Piece> {
    match &e.what {
        What::Event {
            bytes,
            last_id,
            dispatched,
        } => Some(Piece {
            bytes: bytes.clone(),
            last_id: last_id.clone(),
            dispatched: *dispatched,
        }),
        What::End { .. } => None,
    }
}

/// Pushes `entries`' events into `hub`'s ring and wakes its subscribers.
fn push(hub: &Hub, link: &Link, entries: &[Entry]) {
    let mut pushed = 0;
    {
        let mut st = hub.state();
        for piece in entries.iter().filter_map(piece_of) {
            st.ring.push(piece);
            pushed += 1;
        }
    }
    if pushed > 0 {
        link.metrics.read.inc_by(pushed);
        hub.wake_subscribers();
    }
}

/// Into an empty ring, the history's newest contiguous entries. Whether
/// the ring now ends where Redis does (a holder then continues its epoch).
fn take_history(hub: &Hub, link: &Link, history: &History) -> bool {
    if !hub.state().ring.is_empty() {
        // A ring kept from an earlier upstream: what it has after Redis's
        // entries (or before) is not known to line up.
        return false;
    }
    // An empty ring always lines up.
    lined_up(hub, link, history).is_some()
}

/// Where a follower starts reading: after the history's newest entry once
/// the ring holds what comes before it. An empty ring takes the newest
/// contiguous entries; a ring with events takes those after its newest id
/// (found among them). `None`: the ring's newest id is not among them.
fn lined_up(hub: &Hub, link: &Link, history: &History) -> Option<EntryId> {
    let tail = contiguous_tail(&history.entries);
    let empty = hub.state().ring.is_empty();
    // After the last entry with the ring's newest id: the next one changed
    // it, or is further comments/events without an id of their own.
    let from = if empty { 0 } else { newest_in(hub, tail)? + 1 };
    push(hub, link, &tail[from..]);
    Some(match tail.last() {
        Some(e) => e.id,
        None => EntryId {
            epoch: history
                .epoch
                .as_deref()
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
            seq: 0,
        },
    })
}

/// The index in `tail` of the last entry carrying the ring's newest event
/// id; `None` when the ring has no id or `tail` does not have it.
fn newest_in(hub: &Hub, tail: &[Entry]) -> Option<usize> {
    let id = hub.state().ring.newest_id().cloned()?;
    tail.iter()
        .rposition(|e| matches!(&e.what, What::Event { last_id: Some(l), .. } if **l == *id))
}

/// How following ended.
pub enum Followed {
    /// Nobody read the stream for the linger: the hub is gone.
    Gone,
    /// The holder's upstream ended so: end the subscribers there.
    Ended(StreamEnd),
    /// Serve the stream from an upstream of this instance's own now, after
    /// the ring's newest id: as the holder (the lease was free and is
    /// ours, `takeover`) or locally (Redis failed).
    Upstream { takeover: bool },
}

/// Follows the holder through Redis from after `at` until one of [`Followed`].
pub async fn follow(
    hub: &Arc<Hub>,
    link: &Link,
    shares: &Shares,
    mut at: Option<EntryId>,
    generation: u64,
    shutdown: &ShutdownWatch,
) -> Followed {
    let c = &link.cluster;
    link.set_role(Role::Follower);
    let tick = c.tick();
    let mut reader = match c.reader(tick).await {
        Ok(r) => r,
        Err(e) => return go_local(link, &e),
    };
    let mut next_claim = Instant::now();
    loop {
        let last = match at {
            Some(last) => last,
            None => match line_up_again(hub, link, shares).await {
                Some(last) => last,
                None => return Followed::Upstream { takeover: false },
            },
        };
        at = Some(last);
        if Instant::now() >= next_claim {
            next_claim = Instant::now() + tick;
            let touch = (hub.subscribers() > 0).then(|| link.ttl(shares));
            match c.claim(&link.keys, touch).await {
                Ok(Claim::Theirs) => {}
                Ok(Claim::Ours { .. }) => return take_over(hub, link, last).await,
                Err(e) => return go_local(link, &e),
            }
        }
        let read = tokio::select! {
            read = reader.read(&link.keys, last, READ_BATCH) => read,
            _ = super::hub::wait_unused(hub, shares.settings.linger, shutdown) => {
                if shares.remove_if_unused(hub, Some(generation)) {
                    return Followed::Gone;
                }
                continue;
            }
        };
        match read {
            Err(e) => return go_local(link, &e),
            Ok(entries) => match take(hub, link, last, &entries) {
                Took::Upto(last) => at = Some(last),
                Took::Ended(end) => return Followed::Ended(end),
                Took::Broken => {
                    link.metrics.history_lost.inc();
                    log::info!(
                        "cluster: shared stream {{{}}}: Redis's entries broke off (lost history or a new epoch); lining up by event id",
                        link.keys.tag
                    );
                    at = None;
                }
            },
        }
    }
}

/// Redis failed (`why`): the stream serves itself from an upstream of its own.
fn go_local(link: &Link, why: &dyn std::fmt::Display) -> Followed {
    link.fall_back(why);
    Followed::Upstream { takeover: false }
}

/// The lease was free and is ours now (its holder went away): catch up
/// with what it appended last, then hold the stream.
async fn take_over(hub: &Hub, link: &Link, last: EntryId) -> Followed {
    let c = &link.cluster;
    let rest = match c.entries_after(&link.keys, last, usize::MAX / 2).await {
        Ok(rest) => rest,
        Err(e) => {
            let _ = c.release(&link.keys).await;
            return go_local(link, &e);
        }
    };
    match take(hub, link, last, &rest) {
        Took::Upto(newest) => {
            link.metrics.takeovers.inc();
            log::info!(
                "cluster: took over shared stream {{{}}} (its holder went away)",
                link.keys.tag
            );
            let mut st = link.state();
            st.epoch = Some(newest.epoch.to_string());
            st.broken = false;
        }
        Took::Ended(end) => {
            let _ = c.release(&link.keys).await;
            return Followed::Ended(end);
        }
        Took::Broken => {
            link.metrics.history_lost.inc();
            link.state().broken = true;
        }
    }
    Followed::Upstream { takeover: true }
}

/// What [`take`] did with a batch of entries.
enum Took {
    /// Took them, up to this one.
    Upto(EntryId),
    /// Took them up to the holder's end entry.
    Ended(StreamEnd),
    /// Took those that continued, then found a break.
    Broken,
}

/// Pushes the entries that continue `last` in order.
fn take(hub: &Hub, link: &Link, mut last: EntryId, entries: &[Entry]) -> Took {
    let mut run = Vec::new();
    let mut result = None;
    for e in entries {
        match entry::continuity(Some(last), e.id) {
            Continuity::Seen => continue,
            Continuity::Broken => {
                result = Some(Took::Broken);
                break;
            }
            Continuity::Next => {
                last = e.id;
                if let What::End { clean } = e.what {
                    let end = if clean {
                        StreamEnd::UpstreamDone
                    } else {
                        StreamEnd::UpstreamError
                    };
                    result = Some(Took::Ended(end));
                    break;
                }
                run.push(e.clone());
            }
        }
    }
    push(hub, link, &run);
    result.unwrap_or(Took::Upto(last))
}

/// Lines a follower up again after a break: `None` when Redis failed or
/// does not have the ring's newest id (the stream then goes local).
async fn line_up_again(hub: &Hub, link: &Link, shares: &Shares) -> Option<EntryId> {
    let history = match link
        .cluster
        .history(&link.keys, shares.settings.replay_events)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            link.fall_back(&e);
            return None;
        }
    };
    let at = lined_up(hub, link, &history);
    if at.is_none() {
        link.fall_back(&"Redis's entries do not have this stream's newest event id");
    }
    at
}

/// The holder's (or a local stream's) side of a hub's upstream: what its
/// relay's sink does with each write, and the ticks beside the relay.
pub struct Upstream<'a> {
    pub link: &'a Link,
    pub shares: &'a Shares,
    /// Scratch for one append's entries.
    entries: Vec<Appendable>,
}

impl<'a> Upstream<'a> {
    pub fn new(link: &'a Link, shares: &'a Shares) -> Self {
        Upstream {
            link,
            shares,
            entries: Vec::new(),
        }
    }

    /// Appends `pieces`, just pushed into the ring, as the holder; nothing
    /// while local. Redis failing makes the stream local.
    pub async fn append(&mut self, pieces: &[Piece]) {
        let link = self.link;
        if link.role() != Some(Role::Holder) {
            return;
        }
        self.entries.clear();
        for p in pieces {
            self.entries.push(Appendable {
                data: p.bytes.clone(),
                flags: entry::event_flags(p.last_id.as_deref(), p.dispatched),
                sse_id: p.last_id.clone(),
            });
        }
        self.send().await;
    }

    /// The holder's upstream ended as `end`: its followers end alike.
    pub async fn ended(&mut self, end: StreamEnd) {
        if self.link.role() == Some(Role::Holder) {
            self.entries.clear();
            self.entries.push(Appendable {
                data: Bytes::new(),
                flags: entry::end_flags(end.is_clean()),
                sse_id: None,
            });
            self.send().await;
        }
        let _ = self.link.cluster.release(&self.link.keys).await;
    }

    /// Publishes the head (and the epoch) at once, as the holder, so that
    /// followers waiting for it need not wait for the first event.
    pub async fn publish(&mut self) {
        if self.link.role() == Some(Role::Holder) {
            self.entries.clear();
            self.send().await;
        }
    }

    /// Sends `self.entries` (possibly none: the head and epoch alone).
    async fn send(&mut self) {
        let link = self.link;
        let (epoch, broken, head_sent, mut head) = {
            let st = link.state();
            (st.epoch.clone(), st.broken, st.head_sent, st.head.clone())
        };
        let mut epoch_arg = match (&epoch, broken) {
            (_, true) => Epoch::New,
            (Some(e), false) => Epoch::Continue(e.as_str()),
            (None, false) => Epoch::Any,
        };
        // A new epoch has no head yet; an old one has it once sent.
        if matches!(epoch_arg, Epoch::Continue(_)) && head_sent {
            head = None;
        }
        let maxlen = self.shares.settings.replay_events;
        let ttl = link.ttl(self.shares);
        for _ in 0..2 {
            let sent = link
                .cluster
                .append(
                    &link.keys,
                    epoch_arg,
                    head.as_deref(),
                    &self.entries,
                    maxlen,
                    ttl,
                )
                .await;
            match sent {
                Ok(Appended::Done { epoch, .. }) => {
                    let n = self.entries.iter().filter(|e| !e.data.is_empty()).count();
                    link.metrics.appended.inc_by(n as u64);
                    let mut st = link.state();
                    st.epoch = Some(epoch);
                    st.broken = false;
                    st.head_sent |= head.is_some();
                    return;
                }
                Ok(Appended::EpochGone) => {
                    // Lost history (a flushed Redis): a new epoch, so that
                    // followers notice.
                    log::warn!(
                        "cluster: shared stream {{{}}}: its history in Redis is gone; starting a new epoch",
                        link.keys.tag
                    );
                    link.metrics.history_lost.inc();
                    epoch_arg = Epoch::New;
                    head = link.state().head.clone();
                }
                Ok(Appended::NotHolder) => {
                    link.demote(None);
                    return;
                }
                Err(e) => {
                    link.fall_back(&e);
                    return;
                }
            }
        }
    }

    /// Resolves when the stream must leave its upstream and follow Redis
    /// (see [`ticks`]), with the entry to follow after. Cancel-safe.
    pub async fn demoted(&self) -> Option<EntryId> {
        let link = self.link;
        loop {
            let changed = link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(at) = link.state().demote.take() {
                return at;
            }
            changed.await;
        }
    }
}

/// Beside the relay of a stream's upstream, every tick: renews the lease
/// (holder), or tries to rejoin (local). A task of its own, so that a busy
/// upstream never cancels a Redis command half-way (the relay puts its
/// upstream first); aborted when the relay ends.
pub async fn ticks(hub: Arc<Hub>, link: Arc<Link>, shares: Arc<Shares>) {
    loop {
        tokio::time::sleep(link.cluster.tick()).await;
        tick(&hub, &link, &shares).await;
    }
}

async fn tick(hub: &Hub, link: &Link, shares: &Shares) {
    let c = &link.cluster;
    let touch = (hub.subscribers() > 0).then(|| link.ttl(shares));
    let local = link.role() == Some(Role::Local);
    match c.claim(&link.keys, touch).await {
        Ok(Claim::Ours { .. }) if local => {
            log::info!(
                "cluster: shared stream {{{}}} rejoined the cluster as its holder",
                link.keys.tag
            );
            {
                let mut st = link.state();
                st.broken = true;
                st.fallback_logged = false;
            }
            link.metrics.rejoins.inc();
            // The head and a new epoch go out with the relay's next write.
            link.set_role(Role::Holder);
        }
        Ok(Claim::Ours { fresh: true }) => {
            // Our lease had lapsed: another holder may have appended
            // in between, so what we append next starts a new epoch.
            link.state().broken = true;
        }
        Ok(Claim::Ours { fresh: false }) => {}
        Ok(Claim::Theirs) if local => {
            // Another instance holds it: follow it once its entries
            // have this stream's newest id.
            let Ok(history) = c.history(&link.keys, shares.settings.replay_events).await else {
                return;
            };
            if let Some(at) = find_newest(hub, &history) {
                log::info!(
                    "cluster: shared stream {{{}}} rejoined the cluster as a follower",
                    link.keys.tag
                );
                link.state().fallback_logged = false;
                link.metrics.rejoins.inc();
                link.demote(Some(at));
            }
        }
        Ok(Claim::Theirs) => {
            // Someone else holds our lease: follow, lining up by id.
            log::warn!(
                "cluster: shared stream {{{}}}: its lease was taken by another instance",
                link.keys.tag
            );
            link.demote(None);
        }
        Err(e) if !local => link.fall_back(&e),
        Err(_) => {}
    }
}

/// The entry of `history` holding the ring's newest event id (the last
/// such in its contiguous tail), so that a follower starting after it
/// delivers nothing twice and misses nothing.
fn find_newest(hub: &Hub, history: &History) -> Option<EntryId> {
    let tail = contiguous_tail(&history.entries);
    newest_in(hub, tail).map(|at| tail[at].id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(epoch: u64, seq: u64) -> Entry {
        Entry {
            id: EntryId { epoch, seq },
            what: What::Event {
                bytes: Bytes::from(format!("id: {seq}\ndata: x\n\n")),
                last_id: Some(Arc::from(seq.to_string().as_bytes())),
                dispatched: true,
            },
        }
    }

    #[test]
    fn the_contiguous_tail() {
        let none: Vec<Entry> = Vec::new();
        assert!(contiguous_tail(&none).is_empty());
        let run: Vec<Entry> = (1..=5).map(|s| ev(7, s)).collect();
        assert_eq!(contiguous_tail(&run).len(), 5);
        let mut holed = run.clone();
        holed.remove(2);
        let tail: Vec<u64> = contiguous_tail(&holed).iter().map(|e| e.id.seq).collect();
        assert_eq!(tail, [4, 5]);
        let mut epochs = run.clone();
        epochs.extend((1..=2).map(|s| ev(9, s)));
        let tail: Vec<_> = contiguous_tail(&epochs).iter().map(|e| e.id).collect();
        assert_eq!(
            tail,
            [EntryId { epoch: 9, seq: 1 }, EntryId { epoch: 9, seq: 2 }]
        );
    }

    #[test]
    fn heads_come_back_as_response_headers() {
        let mut h = ResponseHeader::build(200, None).expect("head");
        h.append_header("content-type", "text/event-stream")
            .expect("field");
        h.append_header("x-feed", "a").expect("field");
        let text = entry::encode_head(200, &h.headers);
        let back = response_head(&text).expect("decodes");
        assert_eq!(back.status.as_u16(), 200);
        assert_eq!(
            back.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        assert_eq!(
            back.headers.get("x-feed").map(|v| v.as_bytes()),
            Some(&b"a"[..])
        );
    }
}

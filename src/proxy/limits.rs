//! Open-stream counters and the limits on them (`[limits]`, route `max_streams`).
//!
//! Three counters, each with an optional maximum: every open event stream
//! of the process, of each route, and of each client IP address. A stream
//! is admitted with [`Limits::admit`], which takes a slot in all three at
//! once or none; the returned [`StreamPermit`] lives in the stream's job and
//! gives its slots back when it drops, so the counts stay exact on every
//! exit path (a failed header write, an aborted task, a clean end).
//!
//! ```text
//!  Accept: text/event-stream? ─► Limits::check (no slot taken)
//!        full ─► shed before any upstream is contacted
//!  upstream answered text/event-stream ─► Limits::admit ─► StreamPermit
//!        full ─► shed, upstream response dropped        (dropped at stream end)
//! ```
//!
//! A route's counter is a [`RouteLimit`], kept in the route's entry
//! (`route.rs`) with the rest of its runtime. Process and route counts
//! are atomics. Per-client counts are one map behind a mutex, kept only
//! when `max_streams_per_client` is set; an entry is removed when its
//! count returns to zero, so the map holds only the clients that have a
//! stream open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::config::Config;
pub use crate::outcome::Limit;

/// The process-wide and per-client counters: built once from the config,
/// shared by every listener. Each route's own counter is a [`RouteLimit`],
/// kept with the rest of the route's runtime (`proxy::route`).
pub struct Limits {
    global: Arc<Gate>,
    /// `None` when `max_streams_per_client` is not set: nothing to count.
    clients: Option<Arc<ClientGate>>,
}

/// One route's open-stream counter (its `max_streams`).
pub struct RouteLimit(Arc<Gate>);

impl RouteLimit {
    /// `max`: the route's `max_streams`; `None` counts without a maximum.
    pub fn new(max: Option<usize>) -> RouteLimit {
        RouteLimit(Gate::new(max))
    }
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            global: Gate::new(config.limits.max_streams),
            clients: config.limits.max_streams_per_client.map(ClientGate::new),
        }
    }

    /// Would a stream on `route` from `client` be turned away right now?
    /// Takes nothing; the answer can be stale by the time the stream starts,
    /// which [`Limits::admit`] settles.
    pub fn check(&self, route: &RouteLimit, client: Option<IpAddr>) -> Result<(), Limit> {
        if self.global.is_full() {
            return Err(Limit::Global);
        }
        if route.0.is_full() {
            return Err(Limit::Route);
        }
        match (&self.clients, client) {
            (Some(clients), Some(ip)) if clients.is_full(ip) => Err(Limit::Client),
            _ => Ok(()),
        }
    }

    /// Takes a slot for a stream on `route` from `client` in every counter,
    /// or in none and says which limit is reached (checked global, route,
    /// client). A client without an IP address (a Unix socket) has no
    /// per-client limit.
    pub fn admit(&self, route: &RouteLimit, client: Option<IpAddr>) -> Result<StreamPermit, Limit> {
        let global = self.global.acquire().ok_or(Limit::Global)?;
        let route = route.0.acquire().ok_or(Limit::Route)?;
        let client = match (&self.clients, client) {
            (Some(clients), Some(ip)) => Some(clients.acquire(ip).ok_or(Limit::Client)?),
            _ => None,
        };
        Ok(StreamPermit {
            _global: global,
            _route: route,
            _client: client,
        })
    }

    /// Streams open in the whole process.
    pub fn open(&self) -> usize {
        self.global.open.load(Ordering::Acquire)
    }
}

/// An admitted stream's slots; dropping it gives them back.
pub struct StreamPermit {
    _global: Slot,
    _route: Slot,
    _client: Option<ClientSlot>,
}

/// One counter with an optional maximum.
struct Gate {
    open: AtomicUsize,
    max: Option<usize>,
}

impl Gate {
    fn new(max: Option<usize>) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
        })
    }

    fn is_full(&self) -> bool {
        self.max
            .is_some_and(|max| self.open.load(Ordering::Acquire) >= max)
    }

    /// One more, unless that would pass the maximum.
    fn acquire(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match self.max {
                Some(max) if n >= max => None,
                _ => Some(n + 1),
            })
            .ok()?;
        Some(Slot { gate: self.clone() })
    }
}

/// A taken place in a [`Gate`].
struct Slot {
    gate: Arc<Gate>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open streams per client IP, at most `max` each.
struct ClientGate {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientGate {
    fn new(max: usize) -> Arc<ClientGate> {
        Arc::new(ClientGate {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The map; a panic elsewhere while it was held leaves counts that are
    /// still whole numbers, so a poisoned lock is used as it is.
    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_full(&self, ip: IpAddr) -> bool {
        self.map().get(&key(ip)).is_some_and(|n| *n >= self.max)
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = key(ip);
        let mut map = self.map();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(map);
        Some(ClientSlot {
            gate: self.clone(),
            ip,
        })
    }

    /// Clients with at least one stream open.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.map().len()
    }
}

/// The counting key: an IPv4 client seen on an IPv6 socket
/// (`::ffff:a.b.c.d`) is the same client as `a.b.c.d`.
fn key(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A taken place in a [`ClientGate`] for one address.
struct ClientSlot {
    gate: Arc<ClientGate>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.gate.map();
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn client_counts_are_per_address_and_removed_at_zero() {
        let gate = ClientGate::new(2);
        let a1 = gate.acquire(ip("10.0.0.1")).expect("first");
        let a2 = gate.acquire(ip("10.0.0.1")).expect("second");
        assert!(gate.acquire(ip("10.0.0.1")).is_none(), "third is over 2");
        assert!(gate.is_full(ip("10.0.0.1")));
        let b = gate.acquire(ip("2001:db8::1")).expect("other client");
        assert_eq!(gate.clients(), 2);
        drop(a1);
        assert!(!gate.is_full(ip("10.0.0.1")));
        let a3 = gate.acquire(ip("10.0.0.1")).expect("a slot was freed");
        drop(a2);
        drop(a3);
        assert_eq!(gate.clients(), 1, "10.0.0.1 removed at zero");
        drop(b);
        assert_eq!(gate.clients(), 0);
        assert!(gate.map().is_empty());
    }

    #[test]
    fn a_refused_client_leaves_no_entry_behind() {
        let gate = ClientGate::new(1);
        let a = gate.acquire(ip("10.0.0.1")).expect("first");
        assert!(gate.acquire(ip("10.0.0.1")).is_none());
        drop(a);
        assert_eq!(gate.clients(), 0);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client() {
        let gate = ClientGate::new(1);
        let _a = gate.acquire(ip("192.0.2.7")).expect("first");
        assert!(gate.acquire(ip("::ffff:192.0.2.7")).is_none());
        assert!(gate.is_full(ip("::ffff:192.0.2.7")));
    }

    fn limits(
        global: Option<usize>,
        routes: &[Option<usize>],
        client: Option<usize>,
    ) -> (Limits, Vec<RouteLimit>) {
        let l = Limits {
            global: Gate::new(global),
            clients: client.map(ClientGate::new),
        };
        (l, routes.iter().map(|m| RouteLimit::new(*m)).collect())
    }

    #[test]
    fn admission_takes_every_slot_or_none() {
        let (l, r) = limits(Some(3), &[Some(1), None], Some(2));
        let c = Some(ip("127.0.0.1"));
        let p1 = l.admit(&r[0], c).expect("route 0 has room");
        assert_eq!(l.check(&r[0], c), Err(Limit::Route));
        assert_eq!(l.admit(&r[0], c).err(), Some(Limit::Route));
        // The refused admission gave its global slot back.
        assert_eq!(l.open(), 1);
        let p2 = l.admit(&r[1], c).expect("route 1 is unlimited");
        assert_eq!(l.admit(&r[1], c).err(), Some(Limit::Client));
        assert_eq!(l.open(), 2);
        let p3 = l
            .admit(&r[1], Some(ip("127.0.0.2")))
            .expect("another client");
        assert_eq!(l.check(&r[1], Some(ip("127.0.0.3"))), Err(Limit::Global));
        assert_eq!(l.admit(&r[1], None).err(), Some(Limit::Global));
        drop((p1, p2, p3));
        assert_eq!(l.open(), 0);
        assert_eq!(l.check(&r[0], c), Ok(()));
        assert_eq!(l.clients.as_ref().map(|g| g.clients()), Some(0));
    }

    #[test]
    fn unlimited_counts_but_never_refuses() {
        let (l, r) = limits(None, &[None], None);
        let permits: Vec<_> = (0..100)
            .map(|_| l.admit(&r[0], Some(ip("::1"))).expect("unlimited"))
            .collect();
        assert_eq!(l.open(), 100);
        assert_eq!(l.check(&r[0], Some(ip("::1"))), Ok(()));
        drop(permits);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn labels_are_indexed_in_order() {
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(limit.label().0, i);
        }
    }
}

//! The stream phase's three deadlines (heartbeat, idle, drain) as plain
//! state: no clock is read and no timer is held here; every method is
//! given `now`. The relay asks which deadline comes first, sets its one
//! timer there, and when the timer fires asks which deadline is due.
//!
//! ```text
//!  heartbeat  = max(last upstream byte, last heartbeat) + heartbeat
//!  idle       = last upstream byte + idle_timeout   (only while it applies)
//!  drain      = the moment picked in the drain window, then "at the next boundary"
//!  drain cut  = shutdown signal + drain_limit
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// Which deadline has come, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The drain limit ran out: the stream is cut even mid-event.
    DrainLimit,
    /// The moment picked in the drain window has come: end the stream at
    /// its next event boundary.
    DrainMoment,
    /// No upstream byte for the idle timeout.
    Idle,
    /// No upstream byte nor heartbeat for the heartbeat interval.
    Heartbeat,
}

/// A graceful shutdown in progress for this stream.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// The moment picked in the drain window; `None` once it has passed,
    /// and the stream ends at its next event boundary.
    from: Option<Instant>,
    /// The stream is cut here even if mid-event.
    abort_at: Instant,
}

/// The heartbeat, idle and drain deadlines of one stream.
#[derive(Debug, Clone)]
pub struct Deadlines {
    heartbeat: Option<Duration>,
    idle_timeout: Option<Duration>,
    last_upstream: Instant,
    last_heartbeat: Instant,
    drain: Option<Drain>,
}

impl Deadlines {
    /// Deadlines counted from `now`; `None` disables a deadline.
    pub fn new(now: Instant, heartbeat: Option<Duration>, idle_timeout: Option<Duration>) -> Self {
        Deadlines {
            heartbeat,
            idle_timeout,
            last_upstream: now,
            last_heartbeat: now,
            drain: None,
        }
    }

    /// Upstream bytes arrived at `now` (or a new upstream connection took
    /// over): the silence that heartbeats and the idle timeout count starts again.
    pub fn on_upstream_bytes(&mut self, now: Instant) {
        self.last_upstream = now;
    }

    /// The heartbeat deadline was handled at `now`, whether a heartbeat
    /// went out or not (mid-event, none can): the next one is counted from here.
    pub fn on_heartbeat(&mut self, now: Instant) {
        self.last_heartbeat = now;
    }

    /// The shutdown signal came at `now`. `picked`: where in the drain
    /// window this stream ends (`None`: no window, at the next boundary);
    /// `limit`: when it is cut even mid-event.
    pub fn start_drain(&mut self, now: Instant, picked: Option<Duration>, limit: Duration) {
        self.drain = Some(Drain {
            from: picked.map(|p| now + p),
            abort_at: now + limit,
        });
    }

    /// The moment picked in the drain window has passed (see [`Due::DrainMoment`]).
    pub fn on_drain_moment(&mut self) {
        if let Some(d) = self.drain.as_mut() {
            d.from = None;
        }
    }

    /// A drain has started.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The stream is to end at its next event boundary.
    pub fn drain_ready(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| d.from.is_none())
    }

    fn heartbeat_at(&self) -> Option<Instant> {
        self.heartbeat
            .map(|h| self.last_upstream.max(self.last_heartbeat) + h)
    }

    fn idle_at(&self, idle_applies: bool) -> Option<Instant> {
        self.idle_timeout
            .filter(|_| idle_applies)
            .map(|t| self.last_upstream + t)
    }

    /// The earliest deadline, if any. `idle_applies`: whether the idle
    /// timeout counts now (not while a resume is under way).
    pub fn next_due(&self, idle_applies: bool) -> Option<Instant> {
        let (drain_from, drain_abort) = match &self.drain {
            Some(d) => (d.from, Some(d.abort_at)),
            None => (None, None),
        };
        [
            self.heartbeat_at(),
            self.idle_at(idle_applies),
            drain_from,
            drain_abort,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The most urgent deadline that has come by `now`, if any.
    pub fn due(&self, now: Instant, idle_applies: bool) -> Option<Due> {
        let reached = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if reached(self.drain.map(|d| d.abort_at)) {
            Some(Due::DrainLimit)
        } else if reached(self.drain.and_then(|d| d.from)) {
            Some(Due::DrainMoment)
        } else if reached(self.idle_at(idle_applies)) {
            Some(Due::Idle)
        } else if reached(self.heartbeat_at()) {
            Some(Due::Heartbeat)
        } else {
            None
        }
    }
}

/// Where the relay's one timer is set. Every event pushes the heartbeat
/// deadline later; leaving the timer where it is (it then fires early and
/// is set again once) saves a timer update per event. So the timer is
/// moved only when the next deadline comes earlier than where it is set,
/// or after it fired.
#[derive(Debug, Default, Clone, Copy)]
pub struct Alarm {
    armed: Option<Instant>,
}

impl Alarm {
    /// Given the next deadline, where to set the timer now, if it must move.
    pub fn plan(&mut self, next: Option<Instant>) -> Option<Instant> {
        match (next, self.armed) {
            (Some(due), Some(at)) if due >= at => None,
            (Some(due), _) => {
                self.armed = Some(due);
                Some(due)
            }
            (None, _) => {
                self.armed = None;
                None
            }
        }
    }

    /// Whether the timer is set for a deadline.
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// The timer fired.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn heartbeat_counts_from_the_last_byte_or_heartbeat() {
        let t = t0();
        let mut d = Deadlines::new(t, Some(secs(15)), None);
        assert_eq!(d.next_due(true), Some(t + secs(15)));
        assert_eq!(d.due(t + secs(15) - Duration::from_nanos(1), true), None);
        assert_eq!(d.due(t + secs(15), true), Some(Due::Heartbeat));
        d.on_heartbeat(t + secs(15));
        assert_eq!(d.next_due(true), Some(t + secs(30)));
        // A byte after the heartbeat restarts the count from the byte.
        d.on_upstream_bytes(t + secs(20));
        assert_eq!(d.next_due(true), Some(t + secs(35)));
        assert_eq!(d.due(t + secs(30), true), None);
    }

    #[test]
    fn idle_counts_from_the_last_byte_only_while_it_applies() {
        let t = t0();
        let mut d = Deadlines::new(t, Some(secs(15)), Some(secs(40)));
        d.on_heartbeat(t + secs(30));
        // Heartbeats do not push the idle deadline.
        assert_eq!(d.next_due(true), Some(t + secs(40)));
        assert_eq!(d.due(t + secs(40), true), Some(Due::Idle));
        // Not while a resume is under way: only the heartbeat is left.
        assert_eq!(d.next_due(false), Some(t + secs(45)));
        assert_eq!(d.due(t + secs(40), false), None);
        d.on_upstream_bytes(t + secs(41));
        assert_eq!(d.next_due(true), Some(t + secs(56)));
        d.on_heartbeat(t + secs(56));
        d.on_heartbeat(t + secs(71));
        assert_eq!(d.due(t + secs(80), true), None);
        assert_eq!(d.due(t + secs(81), true), Some(Due::Idle));
    }

    #[test]
    fn nothing_due_without_deadlines() {
        let t = t0();
        let d = Deadlines::new(t, None, None);
        assert_eq!(d.next_due(true), None);
        assert_eq!(d.due(t + secs(86400), true), None);
        assert!(!d.draining());
    }

    #[test]
    fn drain_moment_then_boundary_then_limit() {
        let t = t0();
        let mut d = Deadlines::new(t, Some(secs(15)), Some(secs(60)));
        d.start_drain(t + secs(1), Some(secs(2)), secs(10));
        assert!(d.draining());
        assert!(!d.drain_ready());
        assert_eq!(d.next_due(true), Some(t + secs(3)));
        assert_eq!(d.due(t + secs(3), true), Some(Due::DrainMoment));
        d.on_drain_moment();
        assert!(d.drain_ready());
        assert_eq!(d.next_due(true), Some(t + secs(11)));
        assert_eq!(d.due(t + secs(11), true), Some(Due::DrainLimit));
    }

    #[test]
    fn drain_without_window_is_ready_at_once() {
        let t = t0();
        let mut d = Deadlines::new(t, None, None);
        d.start_drain(t, None, secs(5));
        assert!(d.drain_ready());
        assert_eq!(d.next_due(true), Some(t + secs(5)));
    }

    #[test]
    fn most_urgent_first() {
        let t = t0();
        let mut d = Deadlines::new(t, Some(secs(1)), Some(secs(1)));
        d.start_drain(t, Some(secs(1)), secs(1));
        let late = t + secs(2);
        assert_eq!(d.due(late, true), Some(Due::DrainLimit));
        d.start_drain(t, Some(secs(1)), secs(9));
        assert_eq!(d.due(late, true), Some(Due::DrainMoment));
        d.on_drain_moment();
        assert_eq!(d.due(late, true), Some(Due::Idle));
        assert_eq!(d.due(late, false), Some(Due::Heartbeat));
    }

    #[test]
    fn alarm_moves_only_earlier_or_after_firing() {
        let t = t0();
        let mut a = Alarm::default();
        assert!(!a.is_armed());
        assert_eq!(a.plan(Some(t + secs(15))), Some(t + secs(15)));
        // A later deadline leaves the timer where it is.
        assert_eq!(a.plan(Some(t + secs(16))), None);
        assert_eq!(a.plan(Some(t + secs(15))), None);
        // An earlier one moves it.
        assert_eq!(a.plan(Some(t + secs(5))), Some(t + secs(5)));
        a.fired();
        assert!(!a.is_armed());
        assert_eq!(a.plan(Some(t + secs(16))), Some(t + secs(16)));
        assert_eq!(a.plan(None), None);
        assert!(!a.is_armed());
    }
}

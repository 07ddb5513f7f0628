//! The run second by second, for `--chart`: open streams, events and the
//! latency percentiles of each interval.
//!
//! The progress task already merges the shards into a [`Snapshot`] once a
//! second; [`Timeline::record`] keeps what changed since the one before. The
//! latency of an interval is the merged histogram minus the previous one
//! (HDR histograms subtract exactly), so the hot path records nothing more
//! than it did.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::stats::{new_histogram, to_ms, Snapshot};

/// One interval of the run, ending `at_s` seconds after its start.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at_s: f64,
    /// Streams open at its end.
    pub open: i64,
    /// Events received during it.
    pub events: u64,
    /// Latency of its events, when some carried `"ts_us":`.
    pub latency: Option<IntervalLatency>,
}

/// Latency percentiles of one interval, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalLatency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// The samples so far, and the totals the next one is measured against.
pub struct Timeline {
    previous: Histogram<u64>,
    previous_events: u64,
    samples: Vec<Sample>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Timeline {
            previous: new_histogram(),
            previous_events: 0,
            samples: Vec::new(),
        }
    }

    /// Adds the interval that ends `at` after the start, whose totals are in
    /// `snap`. An interval under 50 ms after the last one (the run's end
    /// right after a tick) is left out: its percentiles would say little.
    pub fn record(&mut self, at: Duration, snap: &Snapshot) {
        let at_s = at.as_secs_f64();
        if self.samples.last().is_some_and(|s| at_s - s.at_s < 0.05) {
            return;
        }
        let mut interval = snap.latency.clone();
        // Totals only grow, with the same bounds: this cannot fail, and
        // if it did the interval would show no latency, nothing worse.
        let latency = match interval.subtract(&self.previous) {
            Ok(()) if !interval.is_empty() => Some(IntervalLatency {
                count: interval.len(),
                p50: to_ms(interval.value_at_quantile(0.50)),
                p99: to_ms(interval.value_at_quantile(0.99)),
                p999: to_ms(interval.value_at_quantile(0.999)),
            }),
            _ => None,
        };
        self.samples.push(Sample {
            at_s,
            open: snap.open_now,
            events: snap.counters.events.saturating_sub(self.previous_events),
            latency,
        });
        self.previous.clone_from(&snap.latency);
        self.previous_events = snap.counters.events;
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(latencies_ms: &[u64], open: i64) -> Snapshot {
        let mut snap = Snapshot::new();
        for ms in latencies_ms {
            snap.latency.record(ms * 1000).unwrap();
        }
        snap.counters.events = latencies_ms.len() as u64;
        snap.open_now = open;
        snap
    }

    #[test]
    fn each_interval_has_its_own_percentiles() {
        let mut timeline = Timeline::new();
        // Totals: second 1 saw 1..=100 ms, second 2 added 100 events of 500 ms.
        let first: Vec<u64> = (1..=100).collect();
        timeline.record(Duration::from_secs(1), &snapshot(&first, 10));
        let mut both = first.clone();
        both.extend([500; 100]);
        timeline.record(Duration::from_secs(2), &snapshot(&both, 12));
        // Nothing new in the third second, and an end right after it.
        timeline.record(Duration::from_secs(3), &snapshot(&both, 0));
        timeline.record(Duration::from_millis(3_010), &snapshot(&both, 0));

        let s = timeline.samples();
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!((s[0].at_s, s[0].open, s[0].events), (1.0, 10, 100));
        let l = s[0].latency.unwrap();
        assert_eq!(l.count, 100);
        assert!(
            (l.p50 - 50.0).abs() < 0.1 && (l.p99 - 99.0).abs() < 0.1,
            "{l:?}"
        );
        let l = s[1].latency.unwrap();
        assert_eq!((s[1].open, s[1].events, l.count), (12, 100, 100));
        assert!(
            (l.p50 - 500.0).abs() < 0.5,
            "only this second's events: {l:?}"
        );
        assert_eq!((s[2].events, s[2].latency), (0, None));
    }
}

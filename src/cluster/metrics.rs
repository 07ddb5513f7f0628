//! The cluster's metrics (`ssegate_cluster_*`), registered in the process's
//! registry when `[cluster]` is configured.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every cluster metric family.
#[derive(Clone)]
pub struct ClusterMetrics {
    streams: IntGaugeVec,
    role: IntGaugeVec,
    events: IntCounterVec,
    redis_seconds: HistogramVec,
    fallbacks: IntCounterVec,
    rejoins: IntCounterVec,
    takeovers: IntCounterVec,
    history_lost: IntCounterVec,
    redis_up: IntGauge,
}

/// A shared stream's role in the cluster on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It holds the lease and the upstream stream, and appends to Redis.
    Holder,
    /// It reads the holder's entries from Redis.
    Follower,
    /// Redis failed: it serves its subscribers from an upstream of its own.
    Local,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Follower => "follower",
            Role::Local => "local",
        }
    }
}

/// One route's cluster counters.
#[derive(Clone)]
pub struct RouteClusterMetrics {
    pub appended: IntCounter,
    pub read: IntCounter,
    pub fallbacks: IntCounter,
    pub rejoins: IntCounter,
    pub takeovers: IntCounter,
    pub history_lost: IntCounter,
    label: String,
    all: ClusterMetrics,
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ClusterMetrics> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let family = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let redis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ssegate_cluster_redis_seconds",
                "Round trip of the cluster's Redis commands (blocking reads excluded), by op: lease (take, renew, release), append, history (catch-up reads).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["op"],
        )?;
        registry.register(Box::new(redis_seconds.clone()))?;
        let redis_up = IntGauge::new(
            "ssegate_cluster_redis_up",
            "1 when the last Redis command of the cluster worked, 0 when it failed or timed out.",
        )?;
        registry.register(Box::new(redis_up.clone()))?;
        Ok(ClusterMetrics {
            streams: gauge(
                "ssegate_cluster_streams",
                "Shared streams of this instance by cluster role: holder (holds the upstream, appends to Redis), follower (reads Redis), local (Redis failed: an upstream of its own).",
                &["route", "role"],
            )?,
            role: gauge(
                "ssegate_cluster_role",
                "1 for each shared stream of this instance, labelled with its Redis hash tag (key) and its role.",
                &["route", "key", "role"],
            )?,
            events: counter(
                "ssegate_cluster_events_total",
                "Stream entries this instance appended to Redis (op=appended, as a holder) or read from it (op=read, as a follower, history included).",
                &["route", "op"],
            )?,
            redis_seconds,
            fallbacks: counter(
                "ssegate_cluster_fallbacks_total",
                "Times a shared stream went local (an upstream of this instance's own) because Redis failed or was slower than cluster.timeout.",
                &["route"],
            )?,
            rejoins: counter(
                "ssegate_cluster_rejoins_total",
                "Times a local shared stream rejoined the cluster once Redis worked again.",
                &["route"],
            )?,
            takeovers: counter(
                "ssegate_cluster_lease_takeovers_total",
                "Leases this instance took over from a holder that went away (its lease expired).",
                &["route"],
            )?,
            history_lost: counter(
                "ssegate_cluster_history_lost_total",
                "Times this instance found a stream's history in Redis lost or broken: as a follower, a new epoch or missing entries (it lined up again by event id, or went local); as the holder, its epoch gone from Redis (it started a new one).",
                &["route"],
            )?,
            redis_up,
        })
    }

    /// The counters of the route labelled `label`.
    pub fn route(&self, label: &str) -> prometheus::Result<RouteClusterMetrics> {
        Ok(RouteClusterMetrics {
            appended: self
                .events
                .get_metric_with_label_values(&[label, "appended"])?,
            read: self.events.get_metric_with_label_values(&[label, "read"])?,
            fallbacks: self.fallbacks.get_metric_with_label_values(&[label])?,
            rejoins: self.rejoins.get_metric_with_label_values(&[label])?,
            takeovers: self.takeovers.get_metric_with_label_values(&[label])?,
            history_lost: self.history_lost.get_metric_with_label_values(&[label])?,
            label: label.to_string(),
            all: self.clone(),
        })
    }

    /// A command's round trip; `ok`: it worked.
    pub fn observe(&self, op: &str, took: Duration, ok: bool) {
        if let Ok(h) = self.redis_seconds.get_metric_with_label_values(&[op]) {
            h.observe(took.as_secs_f64());
        }
        self.redis_up.set(i64::from(ok));
    }
}

impl RouteClusterMetrics {
    /// The stream with hash tag `key` now has `role` (`None`: it has gone);
    /// `from` is the role it had.
    pub fn set_role(&self, key: &str, from: Option<Role>, to: Option<Role>) {
        if from == to {
            return;
        }
        let all = &self.all;
        if let Some(from) = from {
            if let Ok(g) = all
                .streams
                .get_metric_with_label_values(&[&self.label, from.label()])
            {
                g.dec();
            }
            let _ = all
                .role
                .remove_label_values(&[&self.label, key, from.label()]);
        }
        if let Some(to) = to {
            if let Ok(g) = all
                .streams
                .get_metric_with_label_values(&[&self.label, to.label()])
            {
                g.inc();
            }
            if let Ok(g) = all
                .role
                .get_metric_with_label_values(&[&self.label, key, to.label()])
            {
                g.set(1);
            }
        }
    }
}

//! One route's runtime: everything the request path needs once the router
//! has picked a route, resolved once at startup and handed out as one value
//! ([`RouteEntry`]) instead of lists that share an index.
//!
//! ```text
//!  [[route]] config ─┐
//!  its upstream pool ┤
//!  stream policy ────┼─► RouteEntry ─► Router<Arc<RouteEntry>> (router.rs)
//!  max_streams gate ─┤
//!  compression ──────┤
//!  metric handles ───┘
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::compressed::{RouteCompression, Slots};
use super::limits::RouteLimit;
use super::share::cluster::ShareCluster;
use super::share::Shares;
use super::stream::StreamPolicy;
use crate::cluster::Cluster;
use crate::config::{Config, Route};
use crate::metrics::{self, Metrics, RouteMetrics};
use crate::router::Router;
use crate::start_error::StartError;
use crate::upstream::{Pool, Pools};

/// A route and what serves it.
pub struct RouteEntry {
    /// The route as configured.
    pub config: Route,
    /// The upstream pool the route sends its requests to.
    pub pool: Arc<Pool>,
    /// The settings its event streams run with (the route's, over `[stream]`).
    pub policy: StreamPolicy,
    /// Its open-stream counter (`max_streams`).
    pub limit: RouteLimit,
    pub metrics: RouteMetrics,
    /// Its shared streams, when it shares (`share = true`).
    pub shares: Option<Arc<Shares>>,
    /// Its `compression`, and the process-wide cap on compressed streams.
    pub compression: RouteCompression,
    /// Set once a compressed event stream has been logged for this route.
    compressed_logged: AtomicBool,
}

impl AsRef<Route> for Arc<RouteEntry> {
    fn as_ref(&self) -> &Route {
        &self.config
    }
}

impl RouteEntry {
    /// True the first time it is asked: the route's first compressed event
    /// stream is logged, later ones are not.
    pub fn first_compressed_stream(&self) -> bool {
        !self.compressed_logged.swap(true, Ordering::Relaxed)
    }
}

/// Every route of `config` with its runtime, behind a router.
pub fn routes(
    config: &Config,
    pools: &Pools,
    metrics: &Metrics,
    cluster: Option<&Arc<Cluster>>,
) -> Result<Router<Arc<RouteEntry>>, StartError> {
    let s = &config.stream;
    // Leave the last part of the grace period for the process's own exit.
    let drain_limit = config
        .server
        .grace_period
        .saturating_sub(Duration::from_millis(250));
    let slots = Arc::new(Slots::new(s.compression_max_streams));
    let mut entries = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let pool = pools.get(r.upstream).cloned().ok_or_else(|| {
            StartError::Route(format!(
                "route {} names upstream #{}, which does not exist",
                r.path, r.upstream
            ))
        })?;
        let route_metrics = metrics.route(&metrics::route_label(r))?;
        let retry = (s.shutdown_retry, s.shutdown_retry_jitter);
        let share_cluster = match (cluster, &r.share) {
            (Some(c), Some(_)) => Some(ShareCluster {
                cluster: c.clone(),
                metrics: c.metrics.route(route_metrics.label())?,
                route: r.path.clone(),
            }),
            _ => None,
        };
        let shares = r.share.clone().map(|sh| {
            let metrics = route_metrics.share().clone();
            Arc::new(Shares::new(sh, metrics, retry, share_cluster))
        });
        entries.push(Arc::new(RouteEntry {
            config: r.clone(),
            pool,
            policy: StreamPolicy {
                heartbeat: r.heartbeat.unwrap_or(s.heartbeat),
                heartbeat_text: Bytes::from(s.heartbeat_text.clone()),
                idle_timeout: r.idle_timeout.unwrap_or(s.idle_timeout),
                shutdown_retry: s.shutdown_retry,
                shutdown_retry_jitter: s.shutdown_retry_jitter,
                drain_limit,
                drain_window: s.drain_window,
            },
            limit: RouteLimit::new(r.max_streams),
            compression: RouteCompression {
                codings: r.compression.clone(),
                slots: slots.clone(),
                metrics: route_metrics.compression().clone(),
            },
            metrics: route_metrics,
            shares,
            compressed_logged: AtomicBool::new(false),
        }));
    }
    Ok(Router::new(entries))
}

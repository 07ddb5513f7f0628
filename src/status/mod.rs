//! The status page's data (`[admin]` `GET /`, `/status.json`,
//! `/status/events`): a snapshot of what ssegate holds now, built from the
//! metrics registry once a second, and a few minutes of history for the
//! page's charts.
//!
//! ```text
//!  Sampler (a background service, added only with [admin])
//!     │ every second
//!     ▼
//!  Status::sample: registry.gather() ─► Index ─► Snapshot
//!     │   rates (events/s, bytes/s) = difference from the previous sample
//!     │   ring of the last HISTORY points (events/s, open streams per route)
//!     ▼
//!  watch channel: the latest Published (JSON with and without history)
//!     ├─► admin.rs GET /status.json     the latest, with history
//!     └─► admin.rs GET /status/events   one `event: snapshot` per sample,
//!                                       the first one with history
//! ```
//!
//! Arrows point down: this module reads `metrics` and `config`, never the
//! request path. "Recent errors" are counts, not log lines: per route the
//! responses with a 5xx and with a 4xx status since start, and the 5xx of
//! the last [`RECENT`] samples; a ring of log lines would need a hook at
//! every place the request path logs, for a page that mostly wants "are
//! errors happening now, and where".

mod process;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::{route_label, Metrics};

/// Time between samples.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Samples kept for the charts: five minutes at one a second.
pub const HISTORY: usize = 300;
/// Samples over which "recent" 5xx are counted: the last minute.
pub const RECENT: usize = 60;
/// Status event streams open at once; more are answered 503.
pub const MAX_VIEWERS: usize = 16;

/// The health-check family another part of ssegate registers; read when
/// present, so the page shows up/down once it exists and "—" until then.
const SERVER_UP: &str = "ssegate_upstream_server_up";

/// What the configuration says is there: fixed for the life of the process.
struct Layout {
    listeners: Vec<ListenerView>,
    admin: String,
    routes: Vec<RouteLayout>,
    upstreams: Vec<(String, Vec<String>)>,
}

struct RouteLayout {
    label: String,
    upstream: String,
    shared: bool,
}

/// One listener, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerView {
    pub address: String,
    /// `https` (TLS, HTTP/2 by ALPN) or `http` (HTTP/1.1 and h2c).
    pub scheme: &'static str,
}

/// Everything the page shows at one moment. Field names are the JSON's.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub unix_ms: u64,
    pub uptime_seconds: u64,
    pub process: ProcessView,
    pub connections_open: i64,
    pub listeners: Vec<ListenerView>,
    pub admin: String,
    pub routes: Vec<RouteView>,
    pub upstreams: Vec<UpstreamView>,
    /// The last few minutes, oldest first; only in `/status.json` and the
    /// first event of `/status/events` (later events add one point each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

/// The process itself, from `/proc/self`; `None` where it cannot be read.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// One route. Counters are totals since start; rates are per second over
/// the last sample period.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub route: String,
    pub upstream: String,
    pub streams_open: i64,
    pub events_per_second: f64,
    pub bytes_per_second: f64,
    pub events_total: u64,
    pub bytes_total: u64,
    pub heartbeats_total: u64,
    pub shed_total: u64,
    /// Sheds by limit: global, route, client, upstream.
    pub shed: BTreeMap<String, u64>,
    /// Upstream failures of resumable streams: succeeded, failed.
    pub resumes: BTreeMap<String, u64>,
    /// Stream ends by reason (the `reason` label of `ssegate_stream_ends_total`).
    pub ends: BTreeMap<String, u64>,
    pub errors: ErrorCounts,
    /// `Some` on routes with `share = true`.
    pub shared: Option<SharedView>,
    pub websockets_open: i64,
    /// Tunnels ended since start: the page shows WebSockets where this or
    /// `websockets_open` is not zero.
    pub websockets_total: u64,
}

/// A route's recent errors, as counts (see the module header).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorCounts {
    pub status_5xx: u64,
    pub status_4xx: u64,
    /// 5xx in the last minute.
    pub recent_5xx: u64,
}

/// A sharing route's shared streams.
#[derive(Debug, Clone, Serialize)]
pub struct SharedView {
    pub streams_open: i64,
    pub subscribers: i64,
    /// With `[cluster]`: the shared streams by role (holder, follower,
    /// local); empty without one.
    pub cluster: BTreeMap<String, u64>,
}

/// One upstream pool.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub servers: Vec<ServerView>,
    pub connect_errors: u64,
    pub timeouts: u64,
}

/// One upstream server; `None`: not known (shown as "—").
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub address: String,
    pub up: Option<bool>,
    /// Not counted per server yet.
    pub open_connections: Option<u64>,
}

/// The charts' data, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub unix_ms: Vec<u64>,
    /// By route label.
    pub routes: BTreeMap<String, RouteHistory>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteHistory {
    pub events_per_second: Vec<f64>,
    pub streams_open: Vec<i64>,
}

/// What one sample leaves for the next and for the charts.
struct Point {
    at: Instant,
    unix_ms: u64,
    /// Per route, in layout order.
    routes: Vec<PointRoute>,
}

#[derive(Clone, Copy)]
struct PointRoute {
    events_total: u64,
    bytes_total: u64,
    status_5xx: u64,
    events_per_second: f64,
    streams_open: i64,
}

/// One published sample, rendered once for every reader.
pub struct Published {
    /// The snapshot without history: one `/status/events` event.
    pub snapshot: Bytes,
    /// With history: `/status.json`, and the first event of a stream.
    pub full: Bytes,
}

/// The status source of one process.
pub struct Status {
    metrics: Arc<Metrics>,
    layout: Layout,
    started: Instant,
    ring: Mutex<VecDeque<Point>>,
    latest: watch::Sender<Arc<Published>>,
    viewers: Arc<AtomicUsize>,
}

impl Status {
    /// Reads the layout from `config` and takes a first sample, so that
    /// `/status.json` answers from the first request.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Status> {
        let upstream_name = |i: usize| {
            config
                .upstreams
                .get(i)
                .map_or_else(String::new, |u| u.name.clone())
        };
        let layout = Layout {
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerView {
                    address: l.address.to_string(),
                    scheme: if l.tls.is_some() { "https" } else { "http" },
                })
                .collect(),
            admin: config
                .admin
                .as_ref()
                .map_or_else(String::new, |a| a.address.to_string()),
            routes: config
                .routes
                .iter()
                .map(|r| RouteLayout {
                    label: route_label(r),
                    upstream: upstream_name(r.upstream),
                    shared: r.share.is_some(),
                })
                .collect(),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| {
                    let servers = u.servers.iter().map(|s| s.to_string()).collect();
                    (u.name.clone(), servers)
                })
                .collect(),
        };
        let empty = Arc::new(Published {
            snapshot: Bytes::new(),
            full: Bytes::new(),
        });
        let status = Arc::new(Status {
            metrics,
            layout,
            started: Instant::now(),
            ring: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: watch::channel(empty).0,
            viewers: Arc::new(AtomicUsize::new(0)),
        });
        status.sample();
        status
    }

    /// The latest sample.
    pub fn latest(&self) -> Arc<Published> {
        self.latest.borrow().clone()
    }

    /// A receiver that wakes on every new sample.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.latest.subscribe()
    }

    /// A place for one more status event stream, or `None` at [`MAX_VIEWERS`].
    pub fn try_view(&self) -> Option<Viewer> {
        self.viewers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_VIEWERS).then_some(n + 1)
            })
            .ok()?;
        Some(Viewer(self.viewers.clone()))
    }

    /// Takes one sample and publishes it.
    pub fn sample(&self) {
        let index = Index::new(self.metrics.gather());
        let now = Instant::now();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = match self.ring.lock() {
            Ok(ring) => ring,
            // A panic mid-sample left at worst a short ring.
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut routes = Vec::with_capacity(self.layout.routes.len());
        let mut points = Vec::with_capacity(self.layout.routes.len());
        for (i, layout) in self.layout.routes.iter().enumerate() {
            let previous = ring.back().and_then(|p| Some((p.at, *p.routes.get(i)?)));
            let recent_base = ring
                .len()
                .checked_sub(RECENT)
                .and_then(|k| ring.get(k))
                .or(ring.front())
                .and_then(|p| p.routes.get(i))
                .map(|r| r.status_5xx);
            let (view, point) = route_view(&index, layout, now, previous, recent_base);
            routes.push(view);
            points.push(point);
        }
        if ring.len() == HISTORY {
            ring.pop_front();
        }
        ring.push_back(Point {
            at: now,
            unix_ms,
            routes: points,
        });
        let mut snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            unix_ms,
            uptime_seconds: self.started.elapsed().as_secs(),
            process: process::view(),
            connections_open: index.sum("ssegate_connections_open", &[]) as i64,
            listeners: self.layout.listeners.clone(),
            admin: self.layout.admin.clone(),
            routes,
            upstreams: self.upstreams(&index),
            history: None,
        };
        let plain = to_json(&snapshot);
        snapshot.history = Some(history(&ring, &self.layout.routes));
        drop(ring);
        let full = to_json(&snapshot);
        self.latest.send_replace(Arc::new(Published {
            snapshot: plain,
            full,
        }));
    }

    fn upstreams(&self, index: &Index) -> Vec<UpstreamView> {
        self.layout
            .upstreams
            .iter()
            .map(|(name, servers)| {
                let pool = [("upstream", name.as_str())];
                UpstreamView {
                    name: name.clone(),
                    servers: servers
                        .iter()
                        .map(|address| ServerView {
                            address: address.clone(),
                            up: index
                                .find(SERVER_UP, &[("upstream", name), ("server", address)])
                                .map(|v| v > 0.0),
                            open_connections: index
                                .find(
                                    "ssegate_upstream_connections_open",
                                    &[("upstream", name), ("server", address)],
                                )
                                .map(|v| v as u64),
                        })
                        .collect(),
                    connect_errors: index.count("ssegate_upstream_connect_errors_total", &pool),
                    timeouts: index.count("ssegate_upstream_timeouts_total", &pool),
                }
            })
            .collect()
    }
}

/// One open status event stream, counted until dropped.
pub struct Viewer(Arc<AtomicUsize>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A route's view now, and its point for the ring. `previous`: the last
/// point's time and values; `recent_base`: the 5xx count [`RECENT`] samples ago.
fn route_view(
    index: &Index,
    layout: &RouteLayout,
    now: Instant,
    previous: Option<(Instant, PointRoute)>,
    recent_base: Option<u64>,
) -> (RouteView, PointRoute) {
    let route = [("route", layout.label.as_str())];
    let events_total = index.count("ssegate_stream_events_total", &route);
    let bytes_total = index.count("ssegate_stream_bytes_total", &route);
    let statuses = index.by("ssegate_requests_total", &route, "status");
    let class = |c: char| -> u64 {
        statuses
            .iter()
            .filter(|(s, _)| s.starts_with(c) && s.len() == 3)
            .map(|(_, v)| v)
            .sum()
    };
    let status_5xx = class('5');
    let streams_open = index.sum("ssegate_streams_open", &route) as i64;
    let (events_per_second, bytes_per_second) = match previous {
        Some((at, p)) if now > at => {
            let secs = (now - at).as_secs_f64();
            (
                events_total.saturating_sub(p.events_total) as f64 / secs,
                bytes_total.saturating_sub(p.bytes_total) as f64 / secs,
            )
        }
        _ => (0.0, 0.0),
    };
    let shed = index.by("ssegate_streams_shed_total", &route, "limit");
    let ws_ends = index.by("ssegate_websocket_ends_total", &route, "reason");
    let view = RouteView {
        route: layout.label.clone(),
        upstream: layout.upstream.clone(),
        streams_open,
        events_per_second: round2(events_per_second),
        bytes_per_second: round2(bytes_per_second),
        events_total,
        bytes_total,
        heartbeats_total: index.count("ssegate_heartbeats_total", &route),
        shed_total: shed.values().sum(),
        shed,
        resumes: index.by("ssegate_resumes_total", &route, "result"),
        ends: index.by("ssegate_stream_ends_total", &route, "reason"),
        errors: ErrorCounts {
            status_5xx,
            status_4xx: class('4'),
            recent_5xx: status_5xx.saturating_sub(recent_base.unwrap_or(status_5xx)),
        },
        shared: layout.shared.then(|| SharedView {
            streams_open: index.sum("ssegate_shared_streams_open", &route) as i64,
            subscribers: index.sum("ssegate_shared_subscribers", &route) as i64,
            cluster: index.by("ssegate_cluster_streams", &route, "role"),
        }),
        websockets_open: index.sum("ssegate_websockets_open", &route) as i64,
        websockets_total: ws_ends.values().sum(),
    };
    let point = PointRoute {
        events_total,
        bytes_total,
        status_5xx,
        events_per_second: view.events_per_second,
        streams_open,
    };
    (view, point)
}

/// The ring as the charts' series.
fn history(ring: &VecDeque<Point>, routes: &[RouteLayout]) -> History {
    let mut by_route: BTreeMap<String, RouteHistory> = BTreeMap::new();
    for (i, layout) in routes.iter().enumerate() {
        let h = by_route.entry(layout.label.clone()).or_default();
        for point in ring {
            let p = point.routes.get(i);
            h.events_per_second
                .push(p.map_or(0.0, |p| p.events_per_second));
            h.streams_open.push(p.map_or(0, |p| p.streams_open));
        }
    }
    History {
        unix_ms: ring.iter().map(|p| p.unix_ms).collect(),
        routes: by_route,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn to_json(snapshot: &Snapshot) -> Bytes {
    match serde_json::to_vec(snapshot) {
        Ok(v) => Bytes::from(v),
        // Plain structs of numbers and strings: cannot fail.
        Err(e) => {
            log::warn!("status: encoding a snapshot failed: {e}");
            Bytes::from_static(b"{}")
        }
    }
}

/// One series: its labels (name, value) and its value.
type Series = (Vec<(String, String)>, f64);

/// Counter and gauge values of one gather, by family name.
struct Index(HashMap<String, Vec<Series>>);

impl Index {
    fn new(families: Vec<MetricFamily>) -> Index {
        let mut map = HashMap::with_capacity(families.len());
        for family in families {
            let kind = family.type_();
            let series = family
                .get_metric()
                .iter()
                .filter_map(|m| {
                    let value = match kind {
                        MetricType::COUNTER => m.get_counter().value(),
                        MetricType::GAUGE => m.get_gauge().value(),
                        _ => return None,
                    };
                    let labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    Some((labels, value))
                })
                .collect();
            map.insert(family.name().to_string(), series);
        }
        Index(map)
    }

    /// The series of `name` carrying every label of `want`.
    fn matching<'a>(
        &'a self,
        name: &str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(labels, _)| {
                want.iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
    }

    /// The sum over the matching series (0 when there is none).
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|(_, v)| v).sum()
    }

    /// [`Index::sum`] of a counter, as a count.
    fn count(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        self.sum(name, want) as u64
    }

    /// The value of the first matching series, `None` without one.
    fn find(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, want).next().map(|(_, v)| *v)
    }

    /// The matching series' counts by the value of their label `key`.
    fn by(&self, name: &str, want: &[(&str, &str)], key: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (labels, value) in self.matching(name, want) {
            if let Some((_, k)) = labels.iter().find(|(lk, _)| lk == key) {
                *out.entry(k.clone()).or_insert(0) += *value as u64;
            }
        }
        out
    }
}

/// The background service that samples every [`PERIOD`] until shutdown.
pub struct Sampler(pub Arc<Status>);

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The first tick is immediate: it replaces the sample `Status::new`
        // took before the routes' metrics were resolved.
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.sample(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Limit;

    fn config() -> Config {
        let text = r#"
[[listener]]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:9090"

[[upstream]]
name = "app"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[route]]
path = "/events/"
upstream = "app"
share = true
"#;
        crate::config::parse(text, "test.toml", std::path::Path::new(".")).expect("valid config")
    }

    fn json(p: &Published, full: bool) -> serde_json::Value {
        let bytes = if full { &p.full } else { &p.snapshot };
        serde_json::from_slice(bytes).expect("json")
    }

    #[test]
    fn snapshots_count_what_the_registry_holds_and_rates_follow_differences() {
        let metrics = Arc::new(Metrics::new().expect("registers"));
        let route = metrics.route("/events/").expect("route");
        let status = Status::new(&config(), metrics.clone());
        let first = json(&status.latest(), true);
        assert_eq!(first["routes"][0]["route"], "/events/");
        assert_eq!(first["routes"][0]["streams_open"], 0);
        assert_eq!(first["routes"][0]["events_per_second"], 0.0);
        assert_eq!(first["listeners"][0]["scheme"], "http");
        assert_eq!(
            first["upstreams"][0]["servers"][1]["address"],
            "127.0.0.1:9002"
        );
        assert!(first["upstreams"][0]["servers"][0]["up"].is_null());
        assert_eq!(
            first["history"]["unix_ms"].as_array().map(Vec::len),
            Some(1)
        );

        let _a = route.stream_started();
        let _b = route.stream_started();
        route.relay().relayed(100, Duration::ZERO, 4);
        route.shed(Limit::Client);
        route.responses().record(http::StatusCode::BAD_GATEWAY);
        status.sample();
        let second = json(&status.latest(), false);
        let r = &second["routes"][0];
        assert_eq!(r["streams_open"], 2);
        assert_eq!(r["events_total"], 4);
        assert_eq!(r["bytes_total"], 100);
        assert!(r["events_per_second"].as_f64().expect("rate") > 0.0);
        assert_eq!(r["shed_total"], 1);
        assert_eq!(r["shed"]["client"], 1);
        assert_eq!(r["errors"]["status_5xx"], 1);
        assert_eq!(r["errors"]["recent_5xx"], 1);
        assert_eq!(r["shared"]["subscribers"], 0);
        assert_eq!(
            r["shared"]["cluster"],
            serde_json::json!({}),
            "no [cluster]"
        );
        assert!(second.get("history").is_none(), "events carry no history");
        let full = json(&status.latest(), true);
        let h = &full["history"]["routes"]["/events/"];
        assert_eq!(h["streams_open"], serde_json::json!([0, 2]));
    }

    #[test]
    fn the_ring_keeps_a_few_minutes_and_viewers_are_capped() {
        let metrics = Arc::new(Metrics::new().expect("registers"));
        let status = Status::new(&config(), metrics);
        for _ in 0..HISTORY + 5 {
            status.sample();
        }
        let full = json(&status.latest(), true);
        assert_eq!(
            full["history"]["unix_ms"].as_array().map(Vec::len),
            Some(HISTORY)
        );
        let held: Vec<Viewer> = (0..MAX_VIEWERS).filter_map(|_| status.try_view()).collect();
        assert_eq!(held.len(), MAX_VIEWERS);
        assert!(status.try_view().is_none());
        drop(held);
        assert!(status.try_view().is_some());
    }

    #[test]
    fn a_health_family_when_present_gives_up_and_down() {
        let metrics = Arc::new(Metrics::new().expect("registers"));
        let status = Status::new(&config(), metrics);
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(SERVER_UP, "test"),
            &["upstream", "server"],
        )
        .expect("family");
        gauge.with_label_values(&["app", "127.0.0.1:9001"]).set(1);
        gauge.with_label_values(&["app", "127.0.0.1:9002"]).set(0);
        let mut families = status.metrics.gather();
        families.extend(prometheus::core::Collector::collect(&gauge));
        let index = Index::new(families);
        let up = status.upstreams(&index);
        assert_eq!(up[0].servers[0].up, Some(true));
        assert_eq!(up[0].servers[1].up, Some(false));
    }
}

//! Prometheus metrics and the per-stream access-log line.
//!
//! One [`Registry`] (not prometheus' global default) is owned by [`Metrics`],
//! created once in `server::build_after`, shared with the proxy and exposed by
//! the admin listener (`src/admin.rs`). Every name is `ssegate_*` with its unit
//! in the name.
//!
//! The data path never looks a label up: every labelled child is resolved
//! once at startup into a handle ([`RouteMetrics`] per route, held by the
//! proxy's per-route runtime; [`UpstreamMetrics`] per upstream pool), so
//! recording is a few atomic operations. The one exception is the response status,
//! which is only known per response: each route keeps a table of children
//! indexed by status code, filled on first use, so a status is looked up in
//! the family once per route, not once per request.
//!
//! What the proxy records, and where:
//!
//! ```text
//!  every response written ──────────► Responses::record      (requests_total)
//!  connect attempt failed ──────────► UpstreamMetrics::connect_failed
//!  no response header in time (504) ► UpstreamMetrics::timed_out
//!  a server goes down or comes back ► ServerMetrics::went   (server_up,
//!                                      server_transitions_total)
//!  stream header about to go out ───► RouteMetrics::stream_started → StreamTally
//!      each chunk written + flushed ► RelayProbe::relayed   (relay delay, bytes,
//!                                                             events)
//!      each heartbeat written ──────► RelayProbe::heartbeat
//!  stream ends ─────────────────────► StreamTally::finish   (ends, duration,
//!                                      access-log line)
//!  StreamTally dropped (any exit) ──► streams_open - 1
//!  stream turned away by a limit ───► RouteMetrics::shed      (streams_shed_total)
//!  compressed stream, each write ───► CompressionMetrics      (bytes in, out)
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::access_log::AccessLine;
use crate::config::{HostMatch, Route};
use crate::outcome::{end_reason, Limit, StreamEnd, StreamStats, TunnelEnd, STREAM_ENDS};

/// The route label of a response no route matched.
pub const UNROUTED: &str = "none";

/// `ssegate_stream_duration_seconds` buckets: 0.1 s up to a day.
const STREAM_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];

/// `ssegate_relay_delay_seconds` buckets: 5 µs up to 1 s.
const RELAY_DELAY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The route label: the route's `host` and `path` as configured, e.g.
/// `/events/`, `api.example.com/events/` or `*.example.com/`.
pub fn route_label(route: &Route) -> String {
    match &route.host {
        None => route.path.clone(),
        Some(HostMatch::Exact(host)) => format!("{host}{}", route.path),
        Some(HostMatch::Suffix(suffix)) => format!("*{suffix}{}", route.path),
    }
}

/// The registry and every metric family of one ssegate process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    streams_open: IntGaugeVec,
    stream_duration: HistogramVec,
    stream_ends: IntCounterVec,
    stream_events: IntCounterVec,
    stream_bytes: IntCounterVec,
    heartbeats: IntCounterVec,
    client_disconnects: IntCounterVec,
    connect_errors: IntCounterVec,
    upstream_timeouts: IntCounterVec,
    server_up: IntGaugeVec,
    server_transitions: IntCounterVec,
    server_connections: IntGaugeVec,
    streams_shed: IntCounterVec,
    client_write_timeouts: IntCounterVec,
    resume_attempts: IntCounterVec,
    resumes: IntCounterVec,
    relay_delay: Histogram,
    unrouted: Responses,
    connections: ConnectionMetrics,
    shared_streams_open: IntGaugeVec,
    shared_subscribers: IntGaugeVec,
    shared_opens: IntCounterVec,
    replays: IntCounterVec,
    overflows: IntCounterVec,
    skipped: IntCounterVec,
    websockets_open: IntGaugeVec,
    websocket_bytes: IntCounterVec,
    websocket_ends: IntCounterVec,
    compressed_bytes: IntCounterVec,
    compressed_streams_open: IntGaugeVec,
}

/// Client connections, process-wide.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// `ssegate_connections_open`
    pub open: IntGauge,
    /// `ssegate_connections_rejected_total`
    pub rejected: IntCounter,
}

impl Metrics {
    /// Creates and registers every family. Fails only on a programming error
    /// (a duplicate or malformed name), reported at startup.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let requests = counter(
            "ssegate_requests_total",
            "Responses sent, by route and status, counted when the exchange is over (an event stream when it ends); includes the proxy's own 4xx/5xx; route \"none\" when no route matched.",
            &["route", "status"],
        )?;
        let stream_ends = counter(
            "ssegate_stream_ends_total",
            "Event streams ended, by how they ended.",
            &["route", "reason"],
        )?;
        let stream_events = counter(
            "ssegate_stream_events_total",
            "Upstream events relayed on event streams, added per chunk written.",
            &["route"],
        )?;
        let stream_bytes = counter(
            "ssegate_stream_bytes_total",
            "Upstream body bytes written to clients on event streams (heartbeats and retry hints excluded), added per chunk.",
            &["route"],
        )?;
        let heartbeats = counter(
            "ssegate_heartbeats_total",
            "Heartbeat comments injected into event streams, added as they are written.",
            &["route"],
        )?;
        let client_disconnects = counter(
            "ssegate_client_disconnects_total",
            "Event streams ended because the client went away or a write to it failed.",
            &["route"],
        )?;
        let connect_errors = counter(
            "ssegate_upstream_connect_errors_total",
            "Failed connection attempts to an upstream's servers (each server tried counts).",
            &["upstream"],
        )?;
        let upstream_timeouts = counter(
            "ssegate_upstream_timeouts_total",
            "Requests answered 504 because the upstream sent no response header within timeouts.read.",
            &["upstream"],
        )?;
        let server_transitions = counter(
            "ssegate_upstream_server_transitions_total",
            "Changes of an upstream server's state, by the state it went to: down (failed health checks, or max_fails failed attempts within fail_timeout) or up.",
            &["upstream", "server", "to"],
        )?;
        let streams_shed = counter(
            "ssegate_streams_shed_total",
            "Event streams turned away because a stream limit was reached, by the limit: global, route or client; or upstream: no upstream server could serve an EventSource, which was told to retry.",
            &["route", "limit"],
        )?;
        let client_write_timeouts = counter(
            "ssegate_client_write_timeouts_total",
            "Event streams ended because their client accepted no byte for stream.client_write_timeout.",
            &["route"],
        )?;
        let resume_attempts = counter(
            "ssegate_resume_attempts_total",
            "Reconnections to the upstream pool made to resume an event stream whose upstream failed (route resume = \"on-error\").",
            &["route"],
        )?;
        let resumes = counter(
            "ssegate_resumes_total",
            "Upstream failures of resumable event streams, by result: succeeded (the stream continued from a new upstream connection) or failed (it ended with a retry: hint).",
            &["route", "result"],
        )?;
        let shared_opens = counter(
            "ssegate_shared_upstream_opens_total",
            "Upstream streams opened for shared streams (route share = true): first openings and re-openings after a failure (resumes count in ssegate_resume_attempts_total).",
            &["route"],
        )?;
        let replays = counter(
            "ssegate_replays_total",
            "Subscribers of shared streams that asked to resume after a Last-Event-ID, by result: hit (found in the replay ring, replayed from it) or miss (not there: the subscriber got its own upstream request).",
            &["route", "result"],
        )?;
        let overflows = counter(
            "ssegate_subscriber_overflows_total",
            "Subscribers of shared streams that fell more than half the replay ring behind, by the route's overflow policy: disconnect (ended with retry:) or skip (moved to the newest event).",
            &["route", "policy"],
        )?;
        let skipped = counter(
            "ssegate_subscriber_skipped_events_total",
            "Events skipped by subscribers of shared streams with overflow = \"skip\".",
            &["route"],
        )?;
        let websocket_bytes = counter(
            "ssegate_websocket_bytes_total",
            "Bytes relayed through WebSocket tunnels, added as they pass, by direction: to_upstream (from the client) or to_client.",
            &["route", "direction"],
        )?;
        let websocket_ends = counter(
            "ssegate_websocket_ends_total",
            "WebSocket tunnels ended, by how: client_closed, upstream_closed (who closed first), idle_timeout, shutdown, client_error, upstream_error.",
            &["route", "reason"],
        )?;
        let compressed_bytes = counter(
            "ssegate_stream_compressed_bytes_total",
            "Bytes of event streams compressed for their clients (route compression), added per write: stage in (the stream's bytes, heartbeats and retry hints included) and out (what went to the client, coded).",
            &["route", "stage"],
        )?;
        let gauge = |name: &str, help: &str| {
            let family = IntGaugeVec::new(Opts::new(name, help), &["route"])?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let shared_streams_open = gauge(
            "ssegate_shared_streams_open",
            "Shared streams held now, each one upstream stream and its replay ring (lingering ones included).",
        )?;
        let shared_subscribers = gauge(
            "ssegate_shared_subscribers",
            "Client streams reading a shared stream now.",
        )?;
        let websockets_open = gauge("ssegate_websockets_open", "WebSocket tunnels open now.")?;
        let compressed_streams_open = gauge(
            "ssegate_compressed_streams_open",
            "Event streams being compressed now (at most stream.compression_max_streams across routes).",
        )?;
        let connections = ConnectionMetrics {
            open: IntGauge::new(
                "ssegate_connections_open",
                "Client connections open now, across all listeners.",
            )?,
            rejected: IntCounter::new(
                "ssegate_connections_rejected_total",
                "Client connections closed on accept because limits.max_connections was reached.",
            )?,
        };
        registry.register(Box::new(connections.open.clone()))?;
        registry.register(Box::new(connections.rejected.clone()))?;
        let server_up = IntGaugeVec::new(
            Opts::new(
                "ssegate_upstream_server_up",
                "1 while an upstream server is up (new requests may go to it), 0 while it is down by its health checks or its failed attempts.",
            ),
            &["upstream", "server"],
        )?;
        registry.register(Box::new(server_up.clone()))?;
        let server_connections = IntGaugeVec::new(
            Opts::new(
                "ssegate_upstream_connections_open",
                "Connections to an upstream server carrying a request, event stream or WebSocket tunnel now (idle pooled ones not counted).",
            ),
            &["upstream", "server"],
        )?;
        registry.register(Box::new(server_connections.clone()))?;
        let streams_open = IntGaugeVec::new(
            Opts::new("ssegate_streams_open", "Event streams open now."),
            &["route"],
        )?;
        registry.register(Box::new(streams_open.clone()))?;
        let stream_duration = HistogramVec::new(
            HistogramOpts::new(
                "ssegate_stream_duration_seconds",
                "Lifetime of event streams, from the response header to the end.",
            )
            .buckets(STREAM_DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(stream_duration.clone()))?;
        let relay_delay = Histogram::with_opts(
            HistogramOpts::new(
                "ssegate_relay_delay_seconds",
                "Time from an upstream chunk read completing to its client write (and flush) completing: what the proxy adds.",
            )
            .buckets(RELAY_DELAY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(relay_delay.clone()))?;
        let unrouted = Responses::new(&requests, UNROUTED);
        Ok(Metrics {
            registry,
            requests,
            streams_open,
            stream_duration,
            stream_ends,
            stream_events,
            stream_bytes,
            heartbeats,
            client_disconnects,
            connect_errors,
            upstream_timeouts,
            server_up,
            server_transitions,
            server_connections,
            streams_shed,
            client_write_timeouts,
            resume_attempts,
            resumes,
            relay_delay,
            unrouted,
            connections,
            shared_streams_open,
            shared_subscribers,
            shared_opens,
            replays,
            overflows,
            skipped,
            websockets_open,
            websocket_bytes,
            websocket_ends,
            compressed_bytes,
            compressed_streams_open,
        })
    }

    /// Resolves every per-route child for the route labelled `label`.
    pub fn route(&self, label: &str) -> prometheus::Result<RouteMetrics> {
        let one = [label];
        let mut ends = Vec::with_capacity(STREAM_ENDS.len());
        for end in STREAM_ENDS {
            let (_, reason) = end_reason(end);
            ends.push(
                self.stream_ends
                    .get_metric_with_label_values(&[label, reason])?,
            );
        }
        let mut shed = Vec::with_capacity(Limit::ALL.len());
        for limit in Limit::ALL {
            let (_, name) = limit.label();
            shed.push(
                self.streams_shed
                    .get_metric_with_label_values(&[label, name])?,
            );
        }
        Ok(RouteMetrics {
            label: label.to_string(),
            shed: shed.into_boxed_slice(),
            responses: Responses::new(&self.requests, label),
            streams_open: self.streams_open.get_metric_with_label_values(&one)?,
            duration: self.stream_duration.get_metric_with_label_values(&one)?,
            ends: ends.into_boxed_slice(),
            client_disconnects: self.client_disconnects.get_metric_with_label_values(&one)?,
            client_write_timeouts: self
                .client_write_timeouts
                .get_metric_with_label_values(&one)?,
            resume: ResumeMetrics {
                attempts: self.resume_attempts.get_metric_with_label_values(&one)?,
                succeeded: self
                    .resumes
                    .get_metric_with_label_values(&[label, "succeeded"])?,
                failed: self
                    .resumes
                    .get_metric_with_label_values(&[label, "failed"])?,
            },
            relay: RelayProbe {
                delay: self.relay_delay.clone(),
                bytes: self.stream_bytes.get_metric_with_label_values(&one)?,
                events: self.stream_events.get_metric_with_label_values(&one)?,
                heartbeats: self.heartbeats.get_metric_with_label_values(&one)?,
            },
            share: ShareMetrics {
                streams_open: self
                    .shared_streams_open
                    .get_metric_with_label_values(&one)?,
                subscribers: self.shared_subscribers.get_metric_with_label_values(&one)?,
                opens: self.shared_opens.get_metric_with_label_values(&one)?,
                replay_hits: self.replays.get_metric_with_label_values(&[label, "hit"])?,
                replay_misses: self
                    .replays
                    .get_metric_with_label_values(&[label, "miss"])?,
                overflow_disconnects: self
                    .overflows
                    .get_metric_with_label_values(&[label, "disconnect"])?,
                overflow_skips: self
                    .overflows
                    .get_metric_with_label_values(&[label, "skip"])?,
                skipped: self.skipped.get_metric_with_label_values(&one)?,
            },
            compression: CompressionMetrics {
                bytes_in: self
                    .compressed_bytes
                    .get_metric_with_label_values(&[label, "in"])?,
                bytes_out: self
                    .compressed_bytes
                    .get_metric_with_label_values(&[label, "out"])?,
                open: self
                    .compressed_streams_open
                    .get_metric_with_label_values(&one)?,
            },
            tunnel: TunnelMetrics {
                open: self.websockets_open.get_metric_with_label_values(&one)?,
                to_upstream: self
                    .websocket_bytes
                    .get_metric_with_label_values(&[label, "to_upstream"])?,
                to_client: self
                    .websocket_bytes
                    .get_metric_with_label_values(&[label, "to_client"])?,
                ends: TunnelEnd::ALL
                    .iter()
                    .map(|end| {
                        self.websocket_ends
                            .get_metric_with_label_values(&[label, end.label().1])
                    })
                    .collect::<prometheus::Result<Box<[IntCounter]>>>()?,
            },
        })
    }

    /// Resolves the per-upstream children for the pool named `name`.
    pub fn upstream(&self, name: &str) -> prometheus::Result<UpstreamMetrics> {
        Ok(UpstreamMetrics {
            connect_errors: self.connect_errors.get_metric_with_label_values(&[name])?,
            timeouts: self
                .upstream_timeouts
                .get_metric_with_label_values(&[name])?,
            name: name.to_string(),
            server_up: self.server_up.clone(),
            server_transitions: self.server_transitions.clone(),
            server_connections: self.server_connections.clone(),
        })
    }

    /// The process-wide client connection metrics.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The response counters of requests no route matched.
    pub fn unrouted(&self) -> &Responses {
        &self.unrouted
    }

    /// Every family and its current values, for readers other than the
    /// text format (the status page, `src/status/`).
    /// The registry, for families registered elsewhere (the cluster's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn encode(&self) -> prometheus::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// `ssegate_requests_total` for one route label.
pub struct Responses {
    label: String,
    family: IntCounterVec,
    /// Statuses 100..=599, indexed by `status - 100`; `None` only if the
    /// family refused the labels, which it cannot for two labels.
    by_status: Box<[OnceLock<Option<IntCounter>>]>,
}

impl Responses {
    fn new(family: &IntCounterVec, label: &str) -> Responses {
        Responses {
            label: label.to_string(),
            family: family.clone(),
            by_status: (100..=599).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one response with this status.
    pub fn record(&self, status: StatusCode) {
        let child = || {
            self.family
                .get_metric_with_label_values(&[self.label.as_str(), status.as_str()])
                .ok()
        };
        let slot = usize::from(status.as_u16())
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i));
        match slot {
            Some(slot) => {
                if let Some(counter) = slot.get_or_init(child) {
                    counter.inc();
                }
            }
            // 600..=999: legal on the wire, never seen in practice.
            None => {
                if let Some(counter) = child() {
                    counter.inc();
                }
            }
        }
    }
}

/// Pre-resolved children of one upstream pool.
pub struct UpstreamMetrics {
    connect_errors: IntCounter,
    timeouts: IntCounter,
    /// The upstream label, and the per-server families, whose children
    /// [`UpstreamMetrics::server`] resolves when the pool is built.
    name: String,
    server_up: IntGaugeVec,
    server_transitions: IntCounterVec,
    server_connections: IntGaugeVec,
}

impl UpstreamMetrics {
    /// Resolves the children of one of the pool's servers (`server` as
    /// configured, `ip:port`); the server starts up.
    pub fn server(&self, server: &str) -> prometheus::Result<ServerMetrics> {
        let labels = |to| [self.name.as_str(), server, to];
        let m = ServerMetrics {
            up: self
                .server_up
                .get_metric_with_label_values(&[self.name.as_str(), server])?,
            to_up: self
                .server_transitions
                .get_metric_with_label_values(&labels("up"))?,
            to_down: self
                .server_transitions
                .get_metric_with_label_values(&labels("down"))?,
            connections: self
                .server_connections
                .get_metric_with_label_values(&[self.name.as_str(), server])?,
        };
        m.up.set(1);
        Ok(m)
    }

    /// One connection attempt to one of the pool's servers failed.
    pub fn connect_failed(&self) {
        self.connect_errors.inc();
    }

    /// No response header within `timeouts.read`; the client got a 504.
    pub fn timed_out(&self) {
        self.timeouts.inc();
    }
}

/// Pre-resolved children of one upstream server.
pub struct ServerMetrics {
    /// `ssegate_upstream_server_up`
    up: IntGauge,
    /// `ssegate_upstream_server_transitions_total{to="up"}`
    to_up: IntCounter,
    /// `ssegate_upstream_server_transitions_total{to="down"}`
    to_down: IntCounter,
    /// `ssegate_upstream_connections_open`
    pub connections: IntGauge,
}

impl ServerMetrics {
    /// The server went up (`true`) or down.
    pub fn went(&self, up: bool) {
        self.up.set(i64::from(up));
        if up {
            self.to_up.inc();
        } else {
            self.to_down.inc();
        }
    }
}

/// Pre-resolved children of one route.
pub struct RouteMetrics {
    label: String,
    responses: Responses,
    streams_open: IntGauge,
    duration: Histogram,
    /// Indexed like [`STREAM_ENDS`].
    ends: Box<[IntCounter]>,
    client_disconnects: IntCounter,
    client_write_timeouts: IntCounter,
    resume: ResumeMetrics,
    relay: RelayProbe,
    /// Indexed like [`Limit::ALL`].
    shed: Box<[IntCounter]>,
    share: ShareMetrics,
    tunnel: TunnelMetrics,
    compression: CompressionMetrics,
}

/// A route's compression metrics (route `compression`).
#[derive(Clone)]
pub struct CompressionMetrics {
    /// `ssegate_stream_compressed_bytes_total{stage="in"}`
    pub bytes_in: IntCounter,
    /// `ssegate_stream_compressed_bytes_total{stage="out"}`
    pub bytes_out: IntCounter,
    /// `ssegate_compressed_streams_open`
    pub open: IntGauge,
}

/// A route's WebSocket tunnel metrics.
#[derive(Clone)]
pub struct TunnelMetrics {
    /// `ssegate_websockets_open`
    open: IntGauge,
    /// `ssegate_websocket_bytes_total{direction="to_upstream"}`
    pub to_upstream: IntCounter,
    /// `ssegate_websocket_bytes_total{direction="to_client"}`
    pub to_client: IntCounter,
    /// `ssegate_websocket_ends_total`, indexed like [`TunnelEnd::ALL`].
    ends: Box<[IntCounter]>,
}

impl TunnelMetrics {
    /// A tunnel opens: `ssegate_websockets_open` goes up until the
    /// returned guard is dropped, on every exit path.
    pub fn opened(&self) -> Held {
        Held::new(&self.open)
    }

    /// A tunnel ended as `end`.
    pub fn ended(&self, end: TunnelEnd) {
        if let Some(counter) = self.ends.get(end.label().0) {
            counter.inc();
        }
    }
}

/// One unit of a gauge (an open tunnel, an upstream connection in use),
/// held until dropped, so that every exit path gives it back.
pub struct Held(IntGauge);

impl Held {
    pub fn new(gauge: &IntGauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A route's shared-stream metrics (route `share = true`).
#[derive(Clone)]
pub struct ShareMetrics {
    /// `ssegate_shared_streams_open`
    pub streams_open: IntGauge,
    /// `ssegate_shared_subscribers`
    pub subscribers: IntGauge,
    /// `ssegate_shared_upstream_opens_total`
    pub opens: IntCounter,
    /// `ssegate_replays_total{result="hit"}`
    pub replay_hits: IntCounter,
    /// `ssegate_replays_total{result="miss"}`
    pub replay_misses: IntCounter,
    /// `ssegate_subscriber_overflows_total{policy="disconnect"}`
    pub overflow_disconnects: IntCounter,
    /// `ssegate_subscriber_overflows_total{policy="skip"}`
    pub overflow_skips: IntCounter,
    /// `ssegate_subscriber_skipped_events_total`
    pub skipped: IntCounter,
}

impl RouteMetrics {
    /// A stream of this route was turned away by `limit`.
    pub fn shed(&self, limit: Limit) {
        if let Some(counter) = self.shed.get(limit.label().0) {
            counter.inc();
        }
    }

    /// The route label, as in `ssegate_*{route="..."}` and the access log.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Response counters of this route.
    pub fn responses(&self) -> &Responses {
        &self.responses
    }

    /// The compression metrics of this route.
    pub fn compression(&self) -> &CompressionMetrics {
        &self.compression
    }

    /// The resume counters of this route.
    pub fn resume(&self) -> &ResumeMetrics {
        &self.resume
    }

    /// What the stream phase reports each relayed chunk to.
    pub fn relay(&self) -> &RelayProbe {
        &self.relay
    }

    /// The shared-stream metrics of this route.
    pub fn share(&self) -> &ShareMetrics {
        &self.share
    }

    /// The WebSocket tunnel metrics of this route.
    pub fn tunnel(&self) -> &TunnelMetrics {
        &self.tunnel
    }

    /// An event stream of this route starts (its response header is about to
    /// be written, so a client holding the header is already counted):
    /// `ssegate_streams_open` goes up until the returned tally is dropped,
    /// which happens on every exit path, a cancelled task included. A tally
    /// dropped without [`StreamTally::finish`] records nothing else.
    pub fn stream_started(&self) -> StreamTally {
        self.streams_open.inc();
        StreamTally {
            open: self.streams_open.clone(),
            started: Instant::now(),
        }
    }
}

/// A route's resume counters, moved as they happen.
pub struct ResumeMetrics {
    attempts: IntCounter,
    succeeded: IntCounter,
    failed: IntCounter,
}

impl ResumeMetrics {
    /// A reconnection to the pool is being made.
    pub fn attempted(&self) {
        self.attempts.inc();
    }

    /// The stream continued from a new upstream connection.
    pub fn succeeded(&self) {
        self.succeeded.inc();
    }

    /// Every attempt failed; the client's stream is being ended.
    pub fn failed(&self) {
        self.failed.inc();
    }
}

/// The per-chunk observation point of the stream phase.
#[derive(Clone)]
pub struct RelayProbe {
    delay: Histogram,
    bytes: IntCounter,
    events: IntCounter,
    heartbeats: IntCounter,
}

impl RelayProbe {
    /// A probe that reports to nothing: for a relay whose bytes reach
    /// clients through other relays (a shared stream's upstream side),
    /// which count them.
    pub fn unregistered() -> prometheus::Result<RelayProbe> {
        Ok(RelayProbe {
            delay: Histogram::with_opts(HistogramOpts::new("unregistered", "-"))?,
            bytes: IntCounter::new("unregistered", "-")?,
            events: IntCounter::new("unregistered", "-")?,
            heartbeats: IntCounter::new("unregistered", "-")?,
        })
    }

    /// A chunk of `len` upstream bytes, completing `events` events, is on
    /// the client's socket (written and flushed), `since_read` after the
    /// upstream read that produced it completed.
    #[inline]
    pub fn relayed(&self, len: usize, since_read: Duration, events: u64) {
        self.delay.observe(since_read.as_secs_f64());
        self.bytes.inc_by(len as u64);
        if events > 0 {
            self.events.inc_by(events);
        }
    }

    /// A heartbeat comment is on the client's socket.
    #[inline]
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }
}

/// One open event stream; see [`RouteMetrics::stream_started`]. It owns a
/// handle on its route's open-streams gauge, so it can live in the stream's
/// own task.
pub struct StreamTally {
    open: IntGauge,
    started: Instant,
}

impl StreamTally {
    /// When the stream started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records how the stream ended on `route` (the metrics it was started
    /// from) and writes its access-log line (target `ssegate::access`).
    /// `streams_open` goes down when `self` drops, here.
    pub fn finish(
        self,
        route: &RouteMetrics,
        end: StreamEnd,
        stats: &StreamStats,
        upstream: &str,
        client: Option<&dyn fmt::Display>,
    ) {
        let r = route;
        let elapsed = self.started.elapsed();
        let (index, _) = end_reason(end);
        if let Some(counter) = r.ends.get(index) {
            counter.inc();
        }
        if matches!(
            end,
            StreamEnd::ClientGone | StreamEnd::ClientWriteError | StreamEnd::ClientStalled
        ) {
            r.client_disconnects.inc();
        }
        if end == StreamEnd::ClientStalled {
            r.client_write_timeouts.inc();
        }
        r.duration.observe(elapsed.as_secs_f64());
        let line = AccessLine {
            route: &r.label,
            upstream,
            client,
            elapsed,
            end,
            stats,
        };
        log::info!(target: "ssegate::access", "{line}");
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode().expect("encodes")).expect("utf-8")
    }

    #[test]
    fn route_labels_are_host_and_path_as_configured() {
        let route = Route::for_test;
        assert_eq!(route_label(&route(None, "/events/")), "/events/");
        let exact = Some(HostMatch::Exact("api.example.com".into()));
        assert_eq!(
            route_label(&route(exact, "/events/")),
            "api.example.com/events/"
        );
        let wild = Some(HostMatch::Suffix(".example.com".into()));
        assert_eq!(route_label(&route(wild, "/")), "*.example.com/");
    }

    #[test]
    fn children_are_resolved_at_startup_and_counted_exactly() {
        let m = Metrics::new().expect("registers");
        let route = m.route("/e/").expect("route children");
        let up = m.upstream("app").expect("upstream children");
        // Resolved children are exposed at zero before anything happens.
        let t = text(&m);
        assert!(t.contains("ssegate_streams_open{route=\"/e/\"} 0"), "{t}");
        assert!(
            t.contains("ssegate_stream_ends_total{reason=\"shutdown_aborted\",route=\"/e/\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("ssegate_upstream_connect_errors_total{upstream=\"app\"} 0"),
            "{t}"
        );

        let server = up.server("127.0.0.1:3000").expect("server children");
        let t = text(&m);
        let up_line = "ssegate_upstream_server_up{server=\"127.0.0.1:3000\",upstream=\"app\"}";
        assert!(t.contains(&format!("{up_line} 1")), "{t}");
        server.went(false);
        server.went(true);
        server.went(false);
        let t = text(&m);
        assert!(t.contains(&format!("{up_line} 0")), "{t}");
        for (to, n) in [("down", 2), ("up", 1)] {
            let line = format!("ssegate_upstream_server_transitions_total{{server=\"127.0.0.1:3000\",to=\"{to}\",upstream=\"app\"}} {n}");
            assert!(t.contains(&line), "lacks {line:?}:\n{t}");
        }

        route.responses().record(StatusCode::OK);
        route.responses().record(StatusCode::OK);
        m.unrouted().record(StatusCode::NOT_FOUND);
        up.connect_failed();
        up.timed_out();
        up.timed_out();
        route.relay().relayed(10, Duration::from_micros(7), 2);
        route.relay().heartbeat();
        route.shed(Limit::Client);
        route.shed(Limit::Client);
        route.shed(Limit::Global);
        let t = text(&m);
        for line in [
            "ssegate_requests_total{route=\"/e/\",status=\"200\"} 2",
            "ssegate_requests_total{route=\"none\",status=\"404\"} 1",
            "ssegate_upstream_connect_errors_total{upstream=\"app\"} 1",
            "ssegate_upstream_timeouts_total{upstream=\"app\"} 2",
            "ssegate_stream_bytes_total{route=\"/e/\"} 10",
            "ssegate_stream_events_total{route=\"/e/\"} 2",
            "ssegate_heartbeats_total{route=\"/e/\"} 1",
            "ssegate_relay_delay_seconds_bucket{le=\"0.000005\"} 0",
            "ssegate_relay_delay_seconds_bucket{le=\"0.00001\"} 1",
            "ssegate_relay_delay_seconds_count 1",
            "ssegate_streams_shed_total{limit=\"client\",route=\"/e/\"} 2",
            "ssegate_streams_shed_total{limit=\"global\",route=\"/e/\"} 1",
            "ssegate_streams_shed_total{limit=\"route\",route=\"/e/\"} 0",
        ] {
            assert!(t.contains(line), "lacks {line:?}:\n{t}");
        }
    }

    #[test]
    fn odd_statuses_are_counted_too() {
        let m = Metrics::new().expect("registers");
        let route = m.route("/").expect("route children");
        for code in [100, 599, 600, 999] {
            route
                .responses()
                .record(StatusCode::from_u16(code).expect("valid"));
        }
        let t = text(&m);
        for code in [100, 599, 600, 999] {
            let line = format!("ssegate_requests_total{{route=\"/\",status=\"{code}\"}} 1");
            assert!(t.contains(&line), "lacks {line:?}:\n{t}");
        }
    }

    #[test]
    fn open_streams_gauge_follows_the_tally_on_every_exit() {
        let m = Metrics::new().expect("registers");
        let route = m.route("/s/").expect("route children");
        let a = route.stream_started();
        let b = route.stream_started();
        assert_eq!(route.streams_open.get(), 2);
        // A stream whose task is dropped mid-way never calls finish.
        drop(a);
        assert_eq!(route.streams_open.get(), 1);
        let stats = StreamStats {
            resumes: 0,
            bytes: 30,
            events: 3,
            heartbeats: 2,
            ..StreamStats::default()
        };
        b.finish(&route, StreamEnd::ClientGone, &stats, "app", None);
        assert_eq!(route.streams_open.get(), 0);
        let t = text(&m);
        for line in [
            "ssegate_stream_ends_total{reason=\"client_gone\",route=\"/s/\"} 1",
            "ssegate_client_disconnects_total{route=\"/s/\"} 1",
            "ssegate_stream_duration_seconds_count{route=\"/s/\"} 1",
        ] {
            assert!(t.contains(line), "lacks {line:?}:\n{t}");
        }
    }
}

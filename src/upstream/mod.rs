//! Upstream pools: server selection (round robin through
//! pingora-load-balancing), the peer settings each connection uses, and
//! connecting with a fall-through past servers that refuse, and past
//! servers that are down by their health checks (`health`).
//!
//! HTTP/1.1 upstreams are spoken by our own client (`h1`) over sockets from
//! pingora's `TransportConnector`, which also keeps their keep-alive pool;
//! h2c upstreams go through pingora's HTTP `Connector`. `UpstreamSession`
//! gives the proxy one interface to both.

pub mod h1;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::l4::ext::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::upstreams::peer::Peer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;

use crate::config::{Config, Timeouts, Upstream, UpstreamProtocol};
use crate::metrics::{Held, UpstreamMetrics};
use h1::H1Conn;
use health::PoolHealth;

/// TCP keepalive on upstream connections, so a silent but dead peer is noticed.
pub fn tcp_keepalive() -> TcpKeepalive {
    TcpKeepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        count: 6,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    }
}

/// One upstream pool, ready to hand out peers.
pub struct Pool {
    pub name: String,
    balancer: LoadBalancer<RoundRobin>,
    protocol: UpstreamProtocol,
    timeouts: Timeouts,
    servers: usize,
    pub metrics: UpstreamMetrics,
    /// Each server's verdict, active and passive.
    pub health: PoolHealth,
}

/// An upstream connection and where it goes.
pub struct Connected {
    pub session: UpstreamSession,
    pub peer: HttpPeer,
    /// The server `peer` goes to, as configured: what [`Pool::failed`] takes.
    pub server: SocketAddr,
    pub reused: bool,
    /// This connection in `ssegate_upstream_connections_open` while it is
    /// in use (a pooled idle connection is not counted).
    pub in_use: Option<Held>,
}

/// The request as an h2c upstream takes it. The proxy announces a body of
/// unknown length with `Transfer-Encoding: chunked`, which HTTP/1.1 needs
/// and HTTP/2 forbids (RFC 9113 §8.2.2: DATA frames and END_STREAM delimit
/// it): h2 refuses such a request as malformed, which made every body of
/// unknown length from an HTTP/2 client (one ending in trailers, say) a 502.
fn h2_request(mut req: Box<RequestHeader>) -> Box<RequestHeader> {
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req
}

/// One exchange on an upstream connection, HTTP/1.1 or h2c.
pub enum UpstreamSession {
    H1(Box<H1Conn>),
    H2(Box<HttpSession>),
}

impl UpstreamSession {
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        match self {
            UpstreamSession::H1(c) => c.set_read_timeout(t),
            UpstreamSession::H2(s) => s.set_read_timeout(t),
        }
    }

    pub async fn write_request_header(&mut self, req: Box<RequestHeader>) -> Result<()> {
        match self {
            UpstreamSession::H1(c) => c.write_request_header(&req).await,
            UpstreamSession::H2(s) => s.write_request_header(h2_request(req)).await,
        }
    }

    pub async fn write_request_body(&mut self, data: Bytes) -> Result<()> {
        match self {
            UpstreamSession::H1(c) => c.write_request_body(&data).await,
            UpstreamSession::H2(s) => s.write_request_body(data, false).await,
        }
    }

    pub async fn finish_request_body(&mut self) -> Result<()> {
        match self {
            UpstreamSession::H1(c) => c.finish_request_body().await,
            UpstreamSession::H2(s) => s.finish_request_body().await,
        }
    }

    /// Reads the final response header: interim (1xx) responses other than
    /// 101 are skipped, so `response_header` is then the one to act on.
    pub async fn read_response_header(&mut self) -> Result<()> {
        match self {
            // Our HTTP/1.1 client skips them itself.
            UpstreamSession::H1(c) => c.read_response_header().await,
            UpstreamSession::H2(s) => loop {
                s.read_response_header().await?;
                match s.response_header().map(|h| h.status) {
                    Some(st) if st.is_informational() && st.as_u16() != 101 => continue,
                    _ => return Ok(()),
                }
            },
        }
    }

    pub fn response_header(&self) -> Option<&ResponseHeader> {
        match self {
            UpstreamSession::H1(c) => c.response_header(),
            UpstreamSession::H2(s) => s.response_header(),
        }
    }

    pub async fn read_response_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            UpstreamSession::H1(c) => c.read_response_body().await,
            UpstreamSession::H2(s) => s.read_response_body().await,
        }
    }

    pub fn response_done(&mut self) -> bool {
        match self {
            UpstreamSession::H1(c) => c.response_done(),
            UpstreamSession::H2(s) => s.response_done(),
        }
    }

    /// Closes the connection (HTTP/1.1) or resets the stream (h2c) now,
    /// for a session given up on; it is never pooled afterwards.
    pub async fn shutdown(&mut self) {
        match self {
            UpstreamSession::H1(c) => c.shutdown().await,
            UpstreamSession::H2(s) => s.shutdown().await,
        }
    }
}

impl Pool {
    fn new(
        upstream: &Upstream,
        timeouts: &Timeouts,
        metrics: UpstreamMetrics,
    ) -> std::io::Result<Self> {
        let balancer = LoadBalancer::<RoundRobin>::try_from_iter(
            upstream.servers.iter().map(|s| s.to_string()),
        )?;
        let health = PoolHealth::new(upstream, &metrics).map_err(std::io::Error::other)?;
        Ok(Pool {
            name: upstream.name.clone(),
            balancer,
            protocol: upstream.protocol,
            timeouts: timeouts.clone(),
            servers: upstream.servers.len(),
            metrics,
            health,
        })
    }

    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect);
        o.idle_timeout = Some(self.timeouts.upstream_keepalive);
        o.tcp_keepalive = Some(tcp_keepalive());
        if self.protocol == UpstreamProtocol::H2c {
            o.set_http_version(2, 2);
        }
        peer
    }

    /// Connects to the next server in round-robin order that is up. A
    /// server that refuses or cannot be reached is skipped and the next one
    /// tried, each server at most once per call; servers that are down are
    /// tried only when no server that is up is left to try (as nginx does
    /// when all are down). The error is that of the last attempt.
    pub async fn connect(&self, connectors: &Connectors) -> Result<Connected> {
        self.connect_by(connectors, Connect::Pooled).await
    }

    /// Like [`Pool::connect`], but always a new HTTP/1.1 connection, never
    /// one from the keep-alive pool: for a WebSocket handshake, whose
    /// connection becomes a tunnel.
    pub async fn connect_fresh_h1(&self, connectors: &Connectors) -> Result<Connected> {
        self.connect_by(connectors, Connect::FreshH1).await
    }

    async fn connect_by(&self, connectors: &Connectors, how: Connect) -> Result<Connected> {
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(self.servers);
        let mut last_error = None;
        while tried.len() < self.servers {
            // Servers that are down only when no server that is up is left
            // to try. Decided before selecting, so that one round-robin
            // step is taken per attempt whatever the servers' states.
            // pingora's own health flag (the closure's second argument) is
            // always true here: our verdict (`health`) replaces it.
            let up_only = self.health.any_up(&tried);
            let backend = self.balancer.select_with(b"", self.servers * 2, |b, _| {
                b.addr
                    .as_inet()
                    .is_some_and(|a| !tried.contains(a) && (!up_only || self.health.is_up(a)))
            });
            let Some(addr) = backend.and_then(|b| b.addr.as_inet().copied()) else {
                break;
            };
            tried.push(addr);
            let peer = self.peer(addr);
            // Boxed so the connect future's state is freed once connected,
            // rather than living inside the request future for the whole stream.
            match self.connect_to(connectors, &peer, how).await {
                Ok((session, reused)) => {
                    return Ok(Connected {
                        session,
                        peer,
                        server: addr,
                        reused,
                        in_use: self.health.connection(&addr),
                    });
                }
                Err(e) => {
                    self.metrics.connect_failed();
                    self.failed(addr);
                    log::warn!("upstream {}: connect to {addr} failed: {e}", self.name);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "no upstream server to try")
        }))
    }

    /// One failed attempt on `server`, for its passive health check: a
    /// refused or timed-out connect, a reset before the response header,
    /// or a 502 or 504 of ours.
    pub fn failed(&self, server: SocketAddr) {
        self.health.failed(&server);
    }

    /// One connection to `peer`, pooled if one is idle. The connect futures
    /// are boxed so their state is freed once connected, rather than living
    /// inside the request future for the whole stream.
    async fn connect_to(
        &self,
        connectors: &Connectors,
        peer: &HttpPeer,
        how: Connect,
    ) -> Result<(UpstreamSession, bool)> {
        // The connectors do not carry the peer's read/write timeouts over to
        // the session; the proxy sets them.
        let (read, write) = (Some(self.timeouts.read), Some(self.timeouts.write));
        if how == Connect::FreshH1 {
            let stream = Box::pin(connectors.h1.new_stream(peer)).await?;
            let mut conn = H1Conn::new(stream);
            conn.set_read_timeout(read);
            conn.set_write_timeout(write);
            return Ok((UpstreamSession::H1(Box::new(conn)), false));
        }
        if self.protocol == UpstreamProtocol::H2c {
            let (mut session, reused) = Box::pin(connectors.h2.get_http_session(peer)).await?;
            session.set_read_timeout(read);
            session.set_write_timeout(write);
            return Ok((UpstreamSession::H2(Box::new(session)), reused));
        }
        let (stream, reused) = Box::pin(connectors.h1.get_stream(peer)).await?;
        let mut conn = H1Conn::new(stream);
        conn.set_read_timeout(read);
        conn.set_write_timeout(write);
        Ok((UpstreamSession::H1(Box::new(conn)), reused))
    }
}

/// How [`Pool::connect_by`] gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// An idle pooled connection if there is one, in the pool's protocol.
    Pooled,
    /// A new HTTP/1.1 connection.
    FreshH1,
}

/// The connectors (and so the keep-alive pools) all pools share.
pub struct Connectors {
    /// Sockets for HTTP/1.1 upstreams, and their keep-alive pool.
    h1: TransportConnector,
    /// h2c upstreams.
    h2: Connector,
}

/// Every pool of a configuration, indexed like `Config::upstreams`, and the shared connectors.
pub struct Pools {
    pools: Vec<Arc<Pool>>,
    pub connectors: Arc<Connectors>,
}

impl Pools {
    /// `metrics` holds each upstream's metric handles, indexed like `Config::upstreams`.
    pub fn new(config: &Config, metrics: Vec<UpstreamMetrics>) -> std::io::Result<Self> {
        let pools = config
            .upstreams
            .iter()
            .zip(metrics)
            .map(|(u, m)| Pool::new(u, &config.timeouts, m).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let connectors = Arc::new(Connectors {
            h1: TransportConnector::new(Some(ConnectorOptions::new(1024))),
            h2: Connector::new(Some(ConnectorOptions::new(1024))),
        });
        Ok(Pools { pools, connectors })
    }

    /// Every pool, in `Config::upstreams`' order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter()
    }

    /// The pool of upstream `index` (`Config::upstreams`' order).
    pub fn get(&self, index: usize) -> Option<&Arc<Pool>> {
        self.pools.get(index)
    }

    /// Returns a finished upstream session to the keep-alive pool, or closes it.
    pub async fn release(&self, connected: Connected, reusable: bool) {
        let Connected { session, peer, .. } = connected;
        let idle = peer.options.idle_timeout;
        match session {
            UpstreamSession::H1(mut conn) => {
                if reusable && conn.reusable() {
                    let stream = conn.into_stream();
                    self.connectors
                        .h1
                        .release_stream(stream, peer.reuse_hash(), idle);
                } else {
                    conn.shutdown().await;
                }
            }
            UpstreamSession::H2(mut session) => {
                if reusable {
                    self.connectors
                        .h2
                        .release_http_session(*session, &peer, idle)
                        .await;
                } else {
                    session.shutdown().await;
                }
            }
        }
    }
}

//! Upstream pools: server selection (round robin through
//! pingora-load-balancing), the peer settings each connection uses, and
//! connecting with a fall-through past servers that refuse.
//!
//! One pingora `Connector` is shared by all pools; it owns the HTTP/1.1
//! keep-alive pool and the h2c connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::l4::ext::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;

use crate::config::{Config, Timeouts, Upstream, UpstreamProtocol};
use crate::metrics::UpstreamMetrics;

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
}

/// An upstream connection and where it goes.
pub struct Connected {
    pub session: HttpSession,
    pub peer: HttpPeer,
    pub reused: bool,
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
        Ok(Pool {
            name: upstream.name.clone(),
            balancer,
            protocol: upstream.protocol,
            timeouts: timeouts.clone(),
            servers: upstream.servers.len(),
            metrics,
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

    /// Connects to the next server in round-robin order. A server that
    /// refuses or cannot be reached is skipped and the next one tried, each
    /// server at most once per call. The error is that of the last attempt.
    pub async fn connect(&self, connector: &Connector) -> Result<Connected> {
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(self.servers);
        let mut last_error = None;
        while tried.len() < self.servers {
            let backend = self.balancer.select_with(b"", self.servers * 2, |b, _| {
                b.addr.as_inet().is_some_and(|a| !tried.contains(a))
            });
            let Some(addr) = backend.and_then(|b| b.addr.as_inet().copied()) else {
                break;
            };
            tried.push(addr);
            let peer = self.peer(addr);
            // Boxed so the connect future's state is freed once connected,
            // rather than living inside the request future for the whole stream.
            match Box::pin(connector.get_http_session(&peer)).await {
                Ok((mut session, reused)) => {
                    // The connector does not carry the peer's read/write
                    // timeouts over to the session; the proxy sets them.
                    session.set_read_timeout(Some(self.timeouts.read));
                    session.set_write_timeout(Some(self.timeouts.write));
                    return Ok(Connected {
                        session,
                        peer,
                        reused,
                    });
                }
                Err(e) => {
                    self.metrics.connect_failed();
                    log::warn!("upstream {}: connect to {addr} failed: {e}", self.name);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "no upstream server to try")
        }))
    }
}

/// Every pool of a configuration, indexed like `Config::upstreams`, and the shared connector.
pub struct Pools {
    pools: Vec<Pool>,
    pub connector: Arc<Connector>,
}

impl Pools {
    /// `metrics` holds each upstream's metric handles, indexed like `Config::upstreams`.
    pub fn new(config: &Config, metrics: Vec<UpstreamMetrics>) -> std::io::Result<Self> {
        let pools = config
            .upstreams
            .iter()
            .zip(metrics)
            .map(|(u, m)| Pool::new(u, &config.timeouts, m))
            .collect::<std::io::Result<Vec<_>>>()?;
        let connector = Arc::new(Connector::new(Some(ConnectorOptions::new(1024))));
        Ok(Pools { pools, connector })
    }

    pub fn get(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index)
    }

    /// Returns a finished upstream session to the keep-alive pool, or closes it.
    pub async fn release(&self, connected: Connected, reusable: bool) {
        let Connected {
            mut session, peer, ..
        } = connected;
        if reusable {
            let idle = peer.options.idle_timeout;
            self.connector
                .release_http_session(session, &peer, idle)
                .await;
        } else {
            session.shutdown().await;
        }
    }
}

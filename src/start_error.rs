//! Why the server could not be built from a valid configuration: the
//! failures that only show when the process starts (unusable TLS files,
//! upstream pools, the metrics registry). Both `server` and the request
//! path's setup return it; it depends on neither.

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {address}: TLS certificate or key unusable: {reason}")]
    Tls { address: String, reason: String },
    #[error("upstream pools: {0}")]
    Pools(#[from] std::io::Error),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Route(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::RedisError),
}

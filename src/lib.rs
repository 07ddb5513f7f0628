//! ssegate: a reverse proxy for Server-Sent Events, built on pingora.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
pub mod chunked;
pub mod cli;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod server;
pub mod sse;
pub mod upstream;

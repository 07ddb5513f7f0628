//! ssegate: a reverse proxy for Server-Sent Events, built on pingora.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod proxy;
pub mod router;
pub mod server;
pub mod sse;
pub mod upstream;

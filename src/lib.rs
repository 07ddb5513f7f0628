//! ssegate: a reverse proxy for Server-Sent Events, built on pingora.
// No unsafe code, except the one call to glibc's malloc_trim (memory.rs).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod bench;
pub mod chunked;
pub mod cli;
pub mod cluster;
pub mod compress;
pub mod config;
pub mod demo;
pub mod memory;
pub mod metrics;
pub mod outcome;
pub mod pid_file;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod share;
pub mod sse;
pub mod start_error;
pub mod status;
pub mod upstream;
pub mod websocket;
pub mod write;

//! WebSocket facts the tunnel needs, without I/O (RFC 6455).
//!
//! This module owns what the WebSocket tunnel must know about the protocol
//! it relays but does not speak: where frames end in each direction
//! ([`frames::FrameTracker`]), so that the proxy's own frame never lands in
//! the middle of one; the Close frame written on shutdown
//! ([`frames::close_frame`]); and the handshake's key arithmetic
//! ([`handshake`]: `Sec-WebSocket-Key` and `Sec-WebSocket-Accept`, and the
//! `Connection: upgrade` token test). Pure: no socket, no clock; the tunnel
//! feeds it bytes and headers and acts on the answers.

pub mod frames;
pub mod handshake;

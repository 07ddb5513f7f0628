//! Shared event streams: one upstream stream for many identical
//! subscribers, kept in a replay ring (route `share = true`).
//!
//! Pure parts, no I/O: `ring` (the events of one shared stream, each stored
//! once, and the subscribers' positions in it), `cut` (upstream chunks cut
//! into whole events), `key` (which requests are identical).

pub mod cut;
pub mod key;
pub mod ring;

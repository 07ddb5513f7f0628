//! `ssegate bench`: a load generator for event-stream endpoints, and
//! `ssegate bench upstream`, the origin to run it against.
//!
//! | module | owns |
//! |---|---|
//! | `http1` | hand-written HTTP/1.1 heads and the incremental chunked decoder |

pub mod http1;

//! `ssegate bench`: a load generator for event-stream endpoints, and
//! `ssegate bench upstream`, the origin to run it against.
//!
//! | module | owns |
//! |---|---|
//! | `http1` | hand-written HTTP/1.1 heads and the incremental chunked decoder |
//! | `stats` | per-stream meter, sharded counters, HDR histograms, percentiles |
//! | `sys` | open-files limit, CPU seconds, peak RSS |

pub mod http1;
pub mod stats;
pub mod sys;

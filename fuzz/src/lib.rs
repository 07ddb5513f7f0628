//! Shared parts of ssegate's fuzz targets (see `fuzz/README.md`): the SSE
//! reference parser the `framer` target checks against, and the invariants
//! of the config loader checked by `config` and `config_toml`.

pub mod config_check;
pub mod sse_reference;

//! Configuration: from a TOML file to a validated [`Config`].
//!
//! Three layers, so the rest of ssegate never sees unchecked input:
//!
//! ```text
//!   text ──toml──▶ file::File ──validate (TryFrom)──▶ model::Config
//!                  (shape only;                        (what the proxy
//!                   unknown keys found by `unknown`)    reads)
//! ```
//!
//! [`parse`] works on a string and touches the disk only to check TLS
//! certificate and key files; [`load`] is a thin wrapper that reads a file.
//! Errors name file, line, column and a dotted key with 0-based indexes
//! (`listener[1].tls.cert`, `route[0].upstream`, `stream.heartbeat`), and
//! validation reports every problem at once. `conf/ssegate.toml` documents
//! every key.
//!
//! Modules: `file` (serde schema), `model` (runtime types), `validate`
//! (the conversion and all checks), `duration` (`"1h30m"` syntax), `error`
//! (error positions and key paths), `summary` (`ssegate check`), `unknown`
//! (unknown keys, with the nearest known one).

pub mod file;
pub mod model;

mod duration;
mod error;
mod summary;
mod unknown;
mod validate;

use std::path::Path;

pub(crate) use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use summary::summary;
pub use validate::{Document, HOP_BY_HOP};

/// Parses and validates configuration `text`. `source` names it in errors;
/// relative certificate and key paths are resolved against `base_dir`.
pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    // Unknown keys are found apart from the schema, so a typo is one error
    // among all the others instead of stopping the parse (none if not TOML).
    let unknown = unknown::unknown_keys(text, source);
    // A syntax or shape error leaves nothing reliable to validate, so it is
    // reported alone, but for the unknown keys.
    let result = match error::from_toml_str::<file::File>(text) {
        Err(e) => Err(ConfigErrors(vec![ConfigError::from_toml(&e, text, source)])),
        Ok(schema) => Config::try_from(Document {
            schema,
            text,
            source,
            base_dir,
        }),
    };
    if unknown.is_empty() {
        return result;
    }
    let mut errors = unknown;
    errors.extend(result.err().map(|e| e.0).unwrap_or_default());
    // File order, as validation sorts its own; errors without a place go last.
    errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    Err(ConfigErrors(errors))
}

/// Reads and parses the file at `path`; paths in it are relative to its folder.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: source.clone(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    // `Path::parent` of a bare file name is "", meaning the current folder.
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Absolute, so certificate paths in the model survive a later change of
    // working directory (daemonising) and errors name an unambiguous file.
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    parse(&text, &source, &base_dir)
}

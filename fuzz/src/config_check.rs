//! The invariants of `ssegate::config::parse` shared by the `config` and
//! `config_toml` targets. Every violation panics: that is how a fuzz target
//! reports a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ssegate::config::{self, file, summary, Config, ConfigError, ConfigErrors};

/// The `source` given to `parse`: no colon in it, so a displayed error can be
/// split on colons.
pub const SOURCE: &str = "fuzz.toml";

/// Keys whose error may carry no position: a required section that is absent
/// has nothing to point at (`config::validate`).
const SECTIONS_WITHOUT_POSITION: [&str; 3] = ["listener", "upstream", "route"];

/// A folder that does not exist, so that no relative certificate or key path
/// can resolve to a file, `..` included: the kernel stops at the missing
/// folder before it ever looks at `..`.
pub fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("ssegate-fuzz-missing-{}/conf", std::process::id()))
    })
}

/// Whether `parse` would read a file outside [`base_dir`]: an absolute
/// certificate or key path. Those are skipped, because `/dev/zero` or
/// `/dev/stdin` would hang the run on reading, which tells nothing about the
/// loader (an operator who points `cert` at `/dev/zero` gets what was asked).
pub fn reads_outside_base(text: &str) -> bool {
    let Ok(schema) = toml::from_str::<file::File>(text) else {
        return false;
    };
    schema.listener.iter().any(|listener| {
        listener.tls.as_ref().is_some_and(|tls| {
            Path::new(tls.cert.get_ref()).has_root() || Path::new(tls.key.get_ref()).has_root()
        })
    })
}

/// Parses `text` and checks every invariant of the result; returns it for
/// target-specific checks. `None` when the input was skipped.
pub fn parse_and_check(text: &str) -> Option<Result<Config, ConfigErrors>> {
    if reads_outside_base(text) {
        return None;
    }
    let result = config::parse(text, SOURCE, base_dir());
    match &result {
        Ok(config) => check_config(config),
        Err(errors) => check_errors(text, errors),
    }
    Some(result)
}

fn check_config(config: &Config) {
    assert_eq!(config.source, SOURCE);
    // Validation requires each of these; an empty one must have been an error.
    assert!(!config.listeners.is_empty(), "Ok without listeners");
    assert!(!config.upstreams.is_empty(), "Ok without upstreams");
    assert!(!config.routes.is_empty(), "Ok without routes");
    for (i, route) in config.routes.iter().enumerate() {
        assert!(
            route.upstream < config.upstreams.len(),
            "route[{i}] points at upstream {} of {}",
            route.upstream,
            config.upstreams.len()
        );
    }
    for upstream in &config.upstreams {
        assert!(!upstream.servers.is_empty(), "Ok with an empty upstream");
    }
    // `ssegate check` prints this for every valid file.
    let shown = summary(config);
    assert!(!shown.is_empty());
}

fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "Err with no error in it");
    for error in &errors.0 {
        check_error(text, error);
    }
    // "Every problem found in one configuration, in file order", unplaced last.
    let order: Vec<_> = errors
        .0
        .iter()
        .map(|e| (e.line.is_none(), e.line, e.column))
        .collect();
    assert!(order.is_sorted(), "errors out of file order: {errors}");
    // "Displays as one error per line."
    let shown = errors.to_string();
    assert_eq!(
        shown.split('\n').count(),
        errors.0.len(),
        "not one error per line: {shown:?}"
    );
}

/// One error: `FILE:LINE:COL: ...` with the position inside `text`, or, for
/// a missing required section only, `FILE: ...`.
fn check_error(text: &str, error: &ConfigError) {
    let shown = error.to_string();
    assert_eq!(error.file, SOURCE, "{shown}");
    assert!(!error.message.is_empty(), "empty message: {shown}");
    assert!(!shown.contains('\n'), "error spans lines: {shown:?}");
    match (error.line, error.column) {
        (Some(line), Some(column)) => {
            let prefix = format!("{SOURCE}:{line}:{column}: ");
            assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
            // `position` counts lines by LF and columns in characters, 1-based;
            // the end of the text is a valid place (a missing closing quote).
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(&line),
                "line {line} outside 1..={}: {shown}",
                lines.len()
            );
            let width = lines[line - 1].chars().count();
            assert!(
                (1..=width + 1).contains(&column),
                "column {column} outside 1..={} on line {line}: {shown}",
                width + 1
            );
        }
        (None, None) => {
            assert!(
                SECTIONS_WITHOUT_POSITION.contains(&error.key.as_str()),
                "error without a position: {shown:?}"
            );
            let prefix = format!("{SOURCE}: `{}`: ", error.key);
            assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
        }
        (line, column) => panic!("line {line:?} with column {column:?}: {shown}"),
    }
}

//! Configuration errors a person can act on: file, line, column, the dotted
//! key (`listener[1].tls.cert`, indexes 0-based) and what is wrong with it.
//!
//! Validation collects every problem it finds into [`ConfigErrors`]; only a
//! TOML syntax or shape error from the parser comes alone, because nothing
//! after it can be trusted.

use std::fmt;
use std::ops::Range;

use serde_path_to_error::{Path, Segment};

/// One problem in a configuration file.
///
/// Displays as `FILE:LINE:COL: `KEY`: MESSAGE`; line and column are left out
/// when unknown (the file could not be read, a required section is absent),
/// and the key part when the problem is not about one key (a syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to `load`, or the `source` given to `parse`.
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Dotted path with 0-based indexes, e.g. `route[0].upstream`; may be empty.
    pub key: String,
    /// What is wrong and, where possible, what would be valid. One line.
    pub message: String,
}

impl ConfigError {
    /// An error about the value at `span` (byte offsets into `text`).
    pub(crate) fn at(
        file: &str,
        text: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = position(text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError {
            file: file.to_string(),
            line,
            column,
            key: key.into(),
            message: one_line(&message.into()),
        }
    }

    /// Converts a parse error from `toml`, with the key path that
    /// `serde_path_to_error` recorded on the way down to it.
    pub(crate) fn from_toml(err: &TomlError, text: &str, file: &str) -> ConfigError {
        let path = err.path();
        let err = err.inner();
        let message = friendlier(&one_line(err.message()));
        let Some(span) = err.span() else {
            return ConfigError::at(file, text, None, "", message);
        };
        if text.parse::<toml::Table>().is_err() {
            // Not even valid TOML: a syntax error, not about any one key.
            let message = format!("invalid TOML: {message}");
            return ConfigError::at(file, text, Some(span), "", message);
        }
        // Valid TOML that does not fit the schema.
        let key = key_path(path, missing_field(&message));
        ConfigError::at(file, text, Some(span), key, message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration, in file order.
/// Displays as one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

/// What `config::parse` gets from deserialising the schema: toml's error
/// (message and span) with the path of the value it is about.
pub(crate) type TomlError = serde_path_to_error::Error<toml::de::Error>;

/// Deserialises `text` as TOML, keeping the key path of an error.
pub(crate) fn from_toml_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text))
}

/// The dotted key (`listener[1].tls.cert`) of a path from
/// `serde_path_to_error`. A [`toml::Spanned`] value is deserialised as a
/// struct with private fields, which show up in the path but are no keys.
/// A "missing field" error is about the table that lacks `missing_field`,
/// so that is where its path ends.
fn key_path(path: &Path, missing_field: Option<&str>) -> String {
    fn push_name(key: &mut String, name: &str) {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
    }
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !name.starts_with("$__serde_spanned_private_") {
                    push_name(&mut key, name);
                }
            }
            Segment::Unknown => push_name(&mut key, "?"),
        }
    }
    if let Some(field) = missing_field {
        push_name(&mut key, field);
    }
    key
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // Spans from toml are on char boundaries; be safe with any other input.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `ConfigErrors` promises one error per line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replaces serde's Rust-flavoured type names with TOML words.
fn friendlier(message: &str) -> String {
    let mut out = message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array");
    if let Some(at) = out.find("expected struct ") {
        out.replace_range(at.., "expected a table");
    }
    out
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let text = "ab\ncdé f\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 3), (2, 1));
        assert_eq!(position(text, text.find('f').expect("f")), (2, 5));
        assert_eq!(position(text, 1000), (3, 1));
        // Inside the two bytes of 'é': rounds down to its start.
        assert_eq!(position(text, 6), (2, 3));
    }

    #[test]
    fn display_omits_what_is_unknown() {
        let mut e = ConfigError {
            file: "a.toml".into(),
            line: Some(3),
            column: Some(7),
            key: "route[0].path".into(),
            message: "must start with \"/\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "a.toml:3:7: `route[0].path`: must start with \"/\""
        );
        e.line = None;
        e.column = None;
        e.key = String::new();
        assert_eq!(e.to_string(), "a.toml: must start with \"/\"");
    }

    #[test]
    fn errors_display_one_per_line() {
        let e = |m: &str| ConfigError::at("f", "", None, "k", m);
        let all = ConfigErrors(vec![e("one\ntwo"), e("three")]);
        assert_eq!(all.to_string(), "f: `k`: one; two\nf: `k`: three");
    }

    fn from_toml(text: &str) -> ConfigError {
        let err = from_toml_str::<crate::config::file::File>(text).expect_err(text);
        ConfigError::from_toml(&err, text, "f.toml")
    }

    #[test]
    fn toml_errors_get_position_and_key() {
        let e = from_toml("[server]\nthreads = 1\nthreads = 2\n");
        assert_eq!((e.line, e.column, e.key.as_str()), (Some(3), Some(1), ""));
        assert!(
            e.message
                .starts_with("invalid TOML: duplicate key `threads`"),
            "{e}"
        );

        // A datetime is valid TOML, so a schema error with a place.
        let e = from_toml("[server]\nthreads = 1979-05-27\n");
        assert_eq!((e.line, e.column), (Some(2), Some(11)));
        assert!(!e.message.starts_with("invalid TOML"), "{e}");
        assert!(e.message.contains("expected an integer"), "{e}");

        let e = from_toml("[[listener]]\naddress = \"a\"\ntls = {}\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "listener[0].tls.cert"));
    }

    fn key_of(text: &str) -> String {
        from_toml(text).key
    }

    #[test]
    fn keys_name_values_with_indexes() {
        // Inside `Spanned`, whose private fields are not keys.
        assert_eq!(key_of("[server]\nthreads = 1979-05-27\n"), "server.threads");
        let text = "[[listener]]\naddress = \"a\"\n[[listener]]\naddress = \"b\"\n\
                    tls = { cert = 5, key = \"k\" }\n";
        assert_eq!(key_of(text), "listener[1].tls.cert");
        let text = "[[upstream]]\nname = \"a\"\nservers = [\"x\", 5]\n";
        assert_eq!(key_of(text), "upstream[0].servers[1]");
        let text = "[[route]]\npath = \"/\"\nupstream = \"a\"\nstrip_prefix = 1\n";
        assert_eq!(key_of(text), "route[0].strip_prefix");
    }

    #[test]
    fn missing_field_names_the_table_that_lacks_it() {
        let text = "[[route]]\npath = \"/\"\n[[route]]\nupstream = \"a\"\n";
        assert_eq!(key_of(text), "route[0].upstream");
        let text = "[[route]]\npath = \"/\"\nupstream = \"a\"\n[[route]]\nupstream = \"a\"\n";
        assert_eq!(key_of(text), "route[1].path");
        let text = "[[listener]]\naddress = \"a\"\n[listener.tls]\ncert = \"x\"\n";
        assert_eq!(key_of(text), "listener[0].tls.key");
        // Empty tables, with a header or inline.
        let text = "[[route]]\npath = \"/\"\nupstream = \"a\"\n[[route]] # empty\n";
        assert_eq!(key_of(text), "route[1].path");
        assert_eq!(key_of("listener = [{ }]\n"), "listener[0].address");
    }

    #[test]
    fn serde_words_become_toml_words() {
        assert_eq!(
            friendlier("invalid type: integer `5`, expected struct ServerSection"),
            "invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            friendlier("invalid type: string \"x\", expected i64"),
            "invalid type: string \"x\", expected an integer"
        );
        assert_eq!(missing_field("missing field `path`"), Some("path"));
        assert_eq!(missing_field("unknown field `path`"), None);
    }
}

//! Unknown keys, found in a pass of their own over the document.
//!
//! serde's `deny_unknown_fields` stops the parse at the first unknown key, so
//! a typo hid every other mistake in the file until it was fixed. Instead the
//! schema (`config::file`) ignores unknown keys and this pass walks the TOML
//! document (with `toml_edit`, which keeps the span of every key) against the
//! field names of the schema's own types, so the two cannot drift apart. Each
//! unknown key becomes one [`ConfigError`] beside all the others, worded as
//! serde worded it, plus a "did you mean" when a known key is close.

use serde::de::{self, Deserialize, Visitor};
use toml_edit::{ImDocument, Item, TableLike};

use super::error::ConfigError;
use super::file;

/// Every unknown key in `text`, in file order. Text that is not valid TOML
/// yields none: its syntax error is reported alone, by the schema parse.
pub(crate) fn unknown_keys(text: &str, source: &str) -> Vec<ConfigError> {
    let Ok(doc) = ImDocument::parse(text) else {
        return Vec::new();
    };
    let mut walk = Walk {
        text,
        source,
        errors: Vec::new(),
    };
    walk.table(doc.as_table(), "", "");
    walk.errors
}

/// The field names of the schema table at `section` (a dotted path without
/// indexes: `""` is the file, `listener.tls` a listener's TLS table), or
/// `None` where the schema has a value rather than a table of known keys.
fn known(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "" => fields_of::<file::File>(),
        "server" => fields_of::<file::ServerSection>(),
        "listener" => fields_of::<file::ListenerEntry>(),
        "listener.tls" => fields_of::<file::TlsEntry>(),
        "timeouts" => fields_of::<file::TimeoutsSection>(),
        "stream" => fields_of::<file::StreamSection>(),
        "upstream" => fields_of::<file::UpstreamEntry>(),
        "upstream.health_check" => fields_of::<file::HealthCheckEntry>(),
        "route" => fields_of::<file::RouteEntry>(),
        "admin" => fields_of::<file::AdminSection>(),
        "limits" => fields_of::<file::LimitsSection>(),
        "websocket" => fields_of::<file::WebSocketSection>(),
        "cluster" => fields_of::<file::ClusterSection>(),
        _ => return None,
    })
}

struct Walk<'a> {
    text: &'a str,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Walk<'_> {
    /// Checks the keys of `table`, which is at `key` (dotted, with indexes,
    /// for messages) and has the schema of `section`.
    fn table(&mut self, table: &dyn TableLike, key: &str, section: &str) {
        let Some(fields) = known(section) else {
            return;
        };
        for (name, item) in table.iter() {
            let full = join(key, name);
            if !fields.contains(&name) {
                let span = table.key(name).and_then(|k| k.span());
                let message = unknown_message(name, fields);
                self.errors
                    .push(ConfigError::at(self.source, self.text, span, full, message));
                continue;
            }
            self.item(item, &full, &join(section, name));
        }
    }

    /// Descends into a table, an array of tables or an array of inline
    /// tables; anything else is a value, whose type serde checks.
    fn item(&mut self, item: &Item, key: &str, section: &str) {
        if known(section).is_none() {
            return;
        }
        if let Some(table) = item.as_table_like() {
            self.table(table, key, section);
        } else if let Some(tables) = item.as_array_of_tables() {
            for (i, table) in tables.iter().enumerate() {
                self.table(table, &format!("{key}[{i}]"), section);
            }
        } else if let Some(array) = item.as_array() {
            for (i, value) in array.iter().enumerate() {
                if let Some(table) = value.as_inline_table() {
                    self.table(table, &format!("{key}[{i}]"), section);
                }
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// serde's own wording (tests and users know it), then the nearest known key.
fn unknown_message(name: &str, fields: &[&str]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    let expected = match quoted.as_slice() {
        [] => "there are no fields".to_string(),
        [one] => format!("expected {one}"),
        [a, b] => format!("expected {a} or {b}"),
        all => format!("expected one of {}", all.join(", ")),
    };
    match nearest(name, fields) {
        Some(near) => format!("unknown field `{name}`, {expected}; did you mean `{near}`?"),
        None => format!("unknown field `{name}`, {expected}"),
    }
}

/// The known key closest to `name`, if it is close enough to be a typo:
/// at most one edit per three characters (at least one).
fn nearest<'f>(name: &str, fields: &[&'f str]) -> Option<&'f str> {
    let limit = name.chars().count().div_ceil(3).max(1);
    fields
        .iter()
        .map(|f| (edit_distance(name, f), *f))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The field names a `#[derive(Deserialize)]` struct passes to
/// `deserialize_struct`: asking the type itself keeps this pass in step
/// with the schema.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    // The probe always fails once it has seen the names; the error is expected.
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields.unwrap_or(&[])
}

struct FieldsProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs are probed"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(usize, usize, String)> {
        unknown_keys(text, "f.toml")
            .into_iter()
            .map(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0), e.key))
            .collect()
    }

    #[test]
    fn unknown_keys_are_found_everywhere() {
        for (text, key) in [
            ("bogus = 1", "bogus"),
            ("[server]\nbogus = 1", "server.bogus"),
            (
                "[[listener]]\naddress = \"a\"\nbogus = 1",
                "listener[0].bogus",
            ),
            (
                "[[listener]]\naddress = \"a\"\ntls = { cert = \"a\", key = \"b\", bogus = 1 }",
                "listener[0].tls.bogus",
            ),
            (
                "[[listener]]\naddress = \"a\"\n[listener.tls]\nbogus = 1",
                "listener[0].tls.bogus",
            ),
            (
                "listener = [{ address = \"a\", bogus = 1 }]",
                "listener[0].bogus",
            ),
            ("[timeouts]\nbogus = 1", "timeouts.bogus"),
            ("[stream]\nbogus = 1", "stream.bogus"),
            (
                "[[upstream]]\nname = \"a\"\nservers = []\nbogus = 1",
                "upstream[0].bogus",
            ),
            (
                "[[upstream]]\nname = \"a\"\nservers = []\nhealth_check = { path = \"/\", bogus = 1 }",
                "upstream[0].health_check.bogus",
            ),
            (
                "[[route]]\npath = \"/\"\nupstream = \"a\"\nbogus = 1",
                "route[0].bogus",
            ),
            (
                "[admin]\naddress = \"127.0.0.1:9090\"\nbogus = 1",
                "admin.bogus",
            ),
            ("[limits]\nbogus = 1", "limits.bogus"),
            ("[websocket]\nbogus = 1", "websocket.bogus"),
            ("server.bogus = 1", "server.bogus"),
        ] {
            let errors = unknown_keys(text, "f.toml");
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert_eq!(errors[0].key, key, "{text}");
            assert!(
                errors[0].message.contains("unknown field `bogus`"),
                "{text}"
            );
        }
    }

    #[test]
    fn known_keys_pass_and_positions_are_the_keys() {
        assert_eq!(
            keys("[server]\nthreads = 2\n[stream]\nheartbeat = \"1s\"\n"),
            []
        );
        assert_eq!(
            keys("[serer]\nthreads = 2\n[stream]\n  idle_timout = \"1s\"\n"),
            [(1, 2, "serer".into()), (4, 3, "stream.idle_timout".into())]
        );
        // Not TOML: left to the parse, which reports the syntax error alone.
        assert_eq!(keys("[server\nbogus = 1\n"), []);
    }

    #[test]
    fn messages_keep_serde_wording_and_suggest_near_keys() {
        let m = |name| unknown_message(name, fields_of::<file::StreamSection>());
        assert!(m("idle_timout").starts_with(
            "unknown field `idle_timout`, expected one of `heartbeat`, `heartbeat_text`, "
        ));
        assert!(m("idle_timout").ends_with("; did you mean `idle_timeout`?"));
        assert!(!m("colour").contains("did you mean"), "{}", m("colour"));
        assert_eq!(
            unknown_message("port", &["address"]),
            "unknown field `port`, expected `address`"
        );
        assert_eq!(
            unknown_message("zz", &["a", "b"]),
            "unknown field `zz`, expected `a` or `b`"
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("thred", "threads"), 2);
        assert_eq!(edit_distance("serer", "server"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(nearest("thred", &["pid_file", "threads"]), Some("threads"));
        assert_eq!(nearest("port", &["address"]), None);
    }
}

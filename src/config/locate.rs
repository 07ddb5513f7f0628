//! Finds the dotted key path (`listener[1].tls.cert`) for a byte offset in a
//! TOML document, so errors from serde, which carry only a span and a
//! message, can still name the key like every validation error does.
//!
//! It re-reads the document into a tree that keeps only keys and their spans
//! (toml 0.8 does not expose key paths in its errors). This costs a second
//! parse, but only on the error path.

use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Every key of a document with its full path, in document order.
pub(crate) struct KeyIndex {
    entries: Vec<(String, Range<usize>)>,
}

impl KeyIndex {
    /// `None` when the text is not valid TOML, or uses a construct the key
    /// tree cannot hold (datetimes); callers then report no key.
    pub(crate) fn of(text: &str) -> Option<KeyIndex> {
        let root: Node = toml::from_str(text).ok()?;
        let mut entries = Vec::new();
        flatten(&root, "", &mut entries);
        entries.sort_by_key(|(_, span)| span.start);
        Some(KeyIndex { entries })
    }

    /// The key an error at `span` is about. `missing_field` is the field named
    /// by a "missing field" error, whose span is the table that lacks it.
    pub(crate) fn key_for(
        &self,
        text: &str,
        span: &Range<usize>,
        missing_field: Option<&str>,
    ) -> Option<String> {
        if let Some(field) = missing_field {
            return Some(match self.table_at(text, span) {
                Some(table) if !table.is_empty() => format!("{table}.{field}"),
                _ => field.to_string(),
            });
        }
        // The error is about a key itself (unknown field), or about a value,
        // which follows its key: either way the last key starting at or
        // before the offset.
        self.key_before(span.start)
    }

    /// Path of the table spanning `span` (a `[header]` plus body, or an
    /// inline `{ ... }`), found from the first key of its body: the header's
    /// own keys are skipped because for `[[array]]` headers they do not carry
    /// the element index.
    fn table_at(&self, text: &str, span: &Range<usize>) -> Option<String> {
        let at = text.get(span.start..)?;
        let inline = at.starts_with('{');
        // A header occupies the rest of its line; the body follows.
        let header_len = if inline {
            0
        } else {
            at.find('\n').unwrap_or(at.len())
        };
        let body_start = span.start + header_len;
        let first_body_key = self
            .entries
            .iter()
            .find(|(_, s)| s.start > body_start && s.start < span.end);
        match first_body_key {
            Some((first, _)) => Some(parent(first).to_string()),
            // An empty inline table is the value of the key just before it.
            None if inline => self.key_before(span.start),
            None => header_path(text, span.start, &at[..header_len]),
        }
    }

    fn key_before(&self, offset: usize) -> Option<String> {
        self.entries
            .iter()
            .take_while(|(_, key_span)| key_span.start <= offset)
            .last()
            .map(|(path, _)| path.clone())
    }
}

/// The path of a table header with no keys under it, read from its text:
/// `[server]` -> `server`, the third `[[route]]` -> `route[2]`.
fn header_path(text: &str, start: usize, header: &str) -> Option<String> {
    let header = header.split('#').next()?.trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let same_header = |line: &str| line.split('#').next().map(str::trim) == Some(header);
        let index = text
            .get(..start)?
            .lines()
            .filter(|l| same_header(l))
            .count();
        return Some(format!("{}[{index}]", name.trim()));
    }
    let name = header.strip_prefix('[')?.strip_suffix(']')?;
    Some(name.trim().to_string())
}

/// `a.b[2].c` -> `a.b[2]`; `a[0]` stays whole because indexes are not keys.
fn parent(path: &str) -> &str {
    path.rfind('.').map_or("", |dot| &path[..dot])
}

/// A TOML value reduced to its keys; scalars are dropped.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
    Leaf,
}

fn flatten(node: &Node, prefix: &str, out: &mut Vec<(String, Range<usize>)>) {
    match node {
        Node::Table(entries) => {
            for (key, value) in entries {
                let path = if prefix.is_empty() {
                    key.get_ref().clone()
                } else {
                    format!("{prefix}.{}", key.get_ref())
                };
                out.push((path.clone(), key.span()));
                flatten(value, &path, out);
            }
        }
        Node::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten(item, &format!("{prefix}[{index}]"), out);
            }
        }
        Node::Leaf => {}
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, needle: &str, missing: Option<&str>) -> Option<String> {
        let start = text.find(needle).expect("needle in text");
        let index = KeyIndex::of(text).expect("valid TOML");
        index.key_for(text, &(start..start + needle.len()), missing)
    }

    #[test]
    fn names_keys_and_values_with_indexes() {
        let text =
            "[[listener]]\naddress = \"a\"\n[[listener]]\naddress = \"b\"\ntls = { cert = 5 }\n";
        assert_eq!(
            key(text, "\"b\"", None).as_deref(),
            Some("listener[1].address")
        );
        assert_eq!(
            key(text, "5", None).as_deref(),
            Some("listener[1].tls.cert")
        );
        assert_eq!(key(text, "tls", None).as_deref(), Some("listener[1].tls"));
    }

    #[test]
    fn missing_field_names_the_table_that_lacks_it() {
        let text = "[[route]]\npath = \"/\"\n[[route]]\nupstream = \"a\"\n";
        let second = text.rfind("[[route]]").expect("header");
        let index = KeyIndex::of(text).expect("valid");
        let span = second..text.len() - 1;
        assert_eq!(
            index.key_for(text, &span, Some("path")).as_deref(),
            Some("route[1].path")
        );

        let text = "[[listener]]\naddress = \"a\"\n[listener.tls]\ncert = \"x\"\n";
        let start = text.find("[listener.tls]").expect("header");
        let index = KeyIndex::of(text).expect("valid");
        assert_eq!(
            index
                .key_for(text, &(start..text.len() - 1), Some("key"))
                .as_deref(),
            Some("listener[0].tls.key")
        );
    }

    #[test]
    fn missing_field_in_an_empty_table() {
        let text = "[[route]]\npath = \"/\"\n[[route]] # empty\n[[route]]\npath = \"/b\"\n";
        let start = text.find("[[route]] #").expect("header");
        let index = KeyIndex::of(text).expect("valid");
        let span = start..start + "[[route]] # empty".len();
        assert_eq!(
            index.key_for(text, &span, Some("path")).as_deref(),
            Some("route[1].path")
        );

        let text = "[[listener]]\naddress = \"a\"\ntls = {}\n";
        let start = text.find('{').expect("brace");
        let index = KeyIndex::of(text).expect("valid");
        assert_eq!(
            index
                .key_for(text, &(start..start + 2), Some("cert"))
                .as_deref(),
            Some("listener[0].tls.cert")
        );
    }

    #[test]
    fn invalid_toml_has_no_index() {
        assert!(KeyIndex::of("[server").is_none());
    }
}

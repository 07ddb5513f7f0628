//! Prometheus text scraped from the admin listener, as a map the tests can ask.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// One scrape: series (`name{k="v",...}` with labels sorted) to value.
#[derive(Debug, Clone)]
pub struct Scrape(pub BTreeMap<String, f64>);

/// The canonical key of a series.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

impl Scrape {
    /// Parses the text exposition format (only what ssegate emits: no
    /// timestamps, label values without escapes).
    pub fn parse(text: &str) -> Scrape {
        let mut map = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line.rsplit_once(' ').expect("series and value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let key = match key.split_once('{') {
                None => key.to_string(),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels: Vec<(&str, &str)> = inner
                        .split("\",")
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                            (k, v.trim_end_matches('"'))
                        })
                        .collect();
                    series(name, &labels)
                }
            };
            assert!(map.insert(key, value).is_none(), "duplicate series: {line}");
        }
        Scrape(map)
    }

    /// A series' value; an absent series counts as 0 (counters appear on first use).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&series(name, labels)).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name`.
    pub fn total(&self, name: &str) -> f64 {
        let prefix = format!("{name}{{");
        self.0
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

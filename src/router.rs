//! Request routing: which route (and so which upstream pool and stream
//! settings) serves a request, from its Host and path.
//!
//! Rules, in order:
//! 1. A route's host must match: exact name, `*.suffix`, or no host (any).
//! 2. Among matching routes the longest path prefix wins.
//! 3. On equal prefixes the more specific host wins: exact, then the
//!    longest suffix, then host-less routes; then file order.
//!
//! Prefixes are plain byte prefixes of the path, like nginx's prefix
//! `location`: `/events` also matches `/events-old`; write `/events/` to
//! match only below the folder.

use crate::config::{HostMatch, Route};

/// The routes of a configuration, each with what the caller keeps for it
/// (`T`: the proxy keeps its pool, stream policy, limits and metrics),
/// ordered so that the first match is the best one.
#[derive(Debug, Clone)]
pub struct Router<T> {
    /// Indexes into `entries`, best candidates first.
    order: Vec<usize>,
    entries: Vec<T>,
}

/// Sort key: longer prefixes first, then more specific hosts, then file order.
fn rank(route: &Route) -> (std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>) {
    let (class, len) = match &route.host {
        Some(HostMatch::Exact(_)) => (0, 0),
        Some(HostMatch::Suffix(s)) => (1, s.len()),
        None => (2, 0),
    };
    (
        std::cmp::Reverse(route.path.len()),
        class,
        std::cmp::Reverse(len),
    )
}

impl<T: AsRef<Route>> Router<T> {
    /// `entries` in file order (`Config::routes`' order).
    pub fn new(entries: Vec<T>) -> Self {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        // A stable sort keeps file order among equals.
        order.sort_by_key(|&i| rank(entries[i].as_ref()));
        Router { order, entries }
    }

    /// The entry of the route serving `host` and `path`.
    /// `host` may carry a port and any case; `None` matches only host-less routes.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let host = host.map(normalise_host);
        let index = self.order.iter().copied().find(|&i| {
            let route = self.entries[i].as_ref();
            path.starts_with(route.path.as_str())
                && match (&route.host, host.as_deref()) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(HostMatch::Exact(name)), Some(h)) => name == h,
                    (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                        h.len() > suffix.len() && h.ends_with(suffix.as_str())
                    }
                }
        })?;
        self.entries.get(index)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[T] {
        &self.entries
    }
}

/// Lowercase, without a port and without a trailing dot.
fn normalise_host(host: &str) -> String {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The upstream path for `path` (path and query) under a route's `prefix`
/// with `strip_prefix` on. The result always starts with `/`.
pub fn strip_prefix(path_and_query: &str, prefix: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, path: &str) -> Route {
        Route::for_test(host, path)
    }

    /// A router over `routes` whose entries are their file-order indexes.
    struct Indexed(Route, usize);

    impl AsRef<Route> for Indexed {
        fn as_ref(&self) -> &Route {
            &self.0
        }
    }

    struct Found(Router<Indexed>);

    impl Found {
        fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
            self.0.find(host, path).map(|e| e.1)
        }
    }

    fn router(routes: Vec<Route>) -> Found {
        Found(Router::new(
            routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| Indexed(r, i))
                .collect(),
        ))
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router(vec![
            route(None, "/"),
            route(None, "/events/"),
            route(None, "/events/live/"),
        ]);
        assert_eq!(r.find(None, "/events/live/x"), Some(2));
        assert_eq!(r.find(None, "/events/x"), Some(1));
        assert_eq!(r.find(None, "/other"), Some(0));
    }

    #[test]
    fn no_route_is_none() {
        let r = router(vec![route(None, "/events/")]);
        assert_eq!(r.find(Some("a.example"), "/nothing"), None);
    }

    #[test]
    fn host_exact_beats_suffix_beats_any() {
        let r = router(vec![
            route(None, "/"),
            route(Some(HostMatch::Suffix(".example.com".into())), "/"),
            route(Some(HostMatch::Exact("api.example.com".into())), "/"),
        ]);
        assert_eq!(r.find(Some("API.example.com:8080"), "/x"), Some(2));
        assert_eq!(r.find(Some("www.example.com"), "/x"), Some(1));
        // `*.example.com` does not match the bare domain.
        assert_eq!(r.find(Some("example.com"), "/x"), Some(0));
        assert_eq!(r.find(None, "/x"), Some(0));
    }

    #[test]
    fn host_only_route_needs_a_host() {
        let r = router(vec![route(Some(HostMatch::Exact("a.test".into())), "/")]);
        assert_eq!(r.find(None, "/"), None);
        assert_eq!(r.find(Some("a.test."), "/"), Some(0));
        assert_eq!(r.find(Some("b.test"), "/"), None);
    }

    #[test]
    fn longer_path_beats_specific_host() {
        let r = router(vec![
            route(Some(HostMatch::Exact("a.test".into())), "/"),
            route(None, "/events/"),
        ]);
        assert_eq!(r.find(Some("a.test"), "/events/1"), Some(1));
    }

    #[test]
    fn ipv6_host_literal() {
        assert_eq!(normalise_host("[::1]:8080"), "::1");
        assert_eq!(normalise_host("Example.COM"), "example.com");
    }

    #[test]
    fn strip_prefix_keeps_leading_slash_and_query() {
        assert_eq!(strip_prefix("/events/a?x=1", "/events/"), "/a?x=1");
        assert_eq!(strip_prefix("/events/a", "/events"), "/a");
        assert_eq!(strip_prefix("/events/", "/events/"), "/");
        assert_eq!(strip_prefix("/events?x", "/events"), "/?x");
    }
}

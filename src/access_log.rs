//! The access-log lines of event streams and WebSocket tunnels (target
//! `ssegate::access`): `key=value` pairs on one line, written when the
//! stream or tunnel ends.

use std::fmt;
use std::time::Duration;

use crate::outcome::{end_reason, StreamEnd, StreamStats, TunnelEnd};

/// The access-log line of one event stream: `key=value` pairs, one line.
pub struct AccessLine<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    pub client: Option<&'a dyn fmt::Display>,
    pub elapsed: Duration,
    pub end: StreamEnd,
    pub stats: &'a StreamStats,
}

impl fmt::Display for AccessLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        head(f, "stream", self.route, self.upstream, self.client)?;
        write!(
            f,
            " duration={:.3}s events={} bytes={} heartbeats={} end={}",
            self.elapsed.as_secs_f64(),
            self.stats.events,
            self.stats.bytes,
            self.stats.heartbeats,
            end_reason(self.end).1,
        )?;
        // Only on streams that were resumed, so the usual line stays short.
        if self.stats.resumes > 0 {
            write!(f, " resumes={}", self.stats.resumes)?;
        }
        // Only on shared streams' subscribers.
        if let Some(join) = self.stats.join {
            write!(f, " shared=1 join={}", join.label())?;
            if self.stats.skipped > 0 {
                write!(f, " skipped={}", self.stats.skipped)?;
            }
        }
        Ok(())
    }
}

/// The access-log line of one WebSocket tunnel.
pub struct TunnelLine<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    pub client: Option<&'a dyn fmt::Display>,
    /// `http1` or `h2` (RFC 8441), as the client spoke.
    pub protocol: &'static str,
    pub elapsed: Duration,
    pub to_upstream: u64,
    pub to_client: u64,
    pub end: TunnelEnd,
}

impl fmt::Display for TunnelLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        head(f, "tunnel", self.route, self.upstream, self.client)?;
        write!(
            f,
            " protocol={} duration={:.3}s to_upstream={} to_client={} end={}",
            self.protocol,
            self.elapsed.as_secs_f64(),
            self.to_upstream,
            self.to_client,
            self.end.label().1,
        )
    }
}

/// What every line starts with: `KIND end route=R upstream=U client=C`
/// (`-` for a client without an address).
fn head(
    f: &mut fmt::Formatter<'_>,
    kind: &str,
    route: &str,
    upstream: &str,
    client: Option<&dyn fmt::Display>,
) -> fmt::Result {
    write!(
        f,
        "{kind} end route={} upstream={} client=",
        LogValue(route),
        LogValue(upstream)
    )?;
    match client {
        Some(client) => write!(f, "{}", LogValue(&client.to_string())),
        None => f.write_str("-"),
    }
}

/// A `key=value` value: bare when it is plain, quoted and escaped when it
/// holds a space, quote, `=` or control character, so the line stays parseable.
struct LogValue<'a>(&'a str);

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && !self
                .0
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_line_names_its_protocol_bytes_and_end() {
        let client = "127.0.0.1:5000";
        let line = TunnelLine {
            route: "/ws/",
            upstream: "app",
            client: Some(&client),
            protocol: "h2",
            elapsed: Duration::from_millis(1500),
            to_upstream: 10,
            to_client: 20,
            end: TunnelEnd::IdleTimeout,
        };
        assert_eq!(
            line.to_string(),
            "tunnel end route=/ws/ upstream=app client=127.0.0.1:5000 protocol=h2 duration=1.500s to_upstream=10 to_client=20 end=idle_timeout"
        );
    }

    #[test]
    fn a_shared_subscriber_says_how_it_joined() {
        let mut stats = StreamStats {
            events: 3,
            join: Some(crate::outcome::Join::Replay),
            ..StreamStats::default()
        };
        let line = |stats: &StreamStats| {
            AccessLine {
                route: "/feeds/",
                upstream: "app",
                client: None,
                elapsed: Duration::ZERO,
                end: StreamEnd::Overflow,
                stats,
            }
            .to_string()
        };
        assert!(
            line(&stats).ends_with(" end=overflow shared=1 join=replay"),
            "{}",
            line(&stats)
        );
        stats.join = Some(crate::outcome::Join::Own);
        stats.skipped = 7;
        assert!(line(&stats).ends_with(" shared=1 join=own skipped=7"));
        stats.join = None;
        assert!(!line(&stats).contains("shared"));
    }

    #[test]
    fn access_line_is_one_line_of_key_value_pairs() {
        let stats = StreamStats {
            resumes: 0,
            bytes: 1234,
            events: 5,
            heartbeats: 2,
            ..StreamStats::default()
        };
        let client: std::net::SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let line = AccessLine {
            route: "api.example.com/events/",
            upstream: "app",
            client: Some(&client),
            elapsed: Duration::from_millis(61_234),
            end: StreamEnd::ClientWriteError,
            stats: &stats,
        };
        assert_eq!(
            line.to_string(),
            "stream end route=api.example.com/events/ upstream=app client=127.0.0.1:50000 \
             duration=61.234s events=5 bytes=1234 heartbeats=2 end=client_write_error"
        );
        let line = AccessLine {
            route: "/a b/",
            upstream: "app",
            client: None,
            elapsed: Duration::ZERO,
            end: StreamEnd::UpstreamDone,
            stats: &stats,
        };
        assert_eq!(
            line.to_string(),
            "stream end route=\"/a b/\" upstream=app client=- duration=0.000s events=5 bytes=1234 heartbeats=2 end=upstream_done"
        );
    }

    #[test]
    fn log_values_are_quoted_only_when_needed() {
        assert_eq!(LogValue("/events/").to_string(), "/events/");
        assert_eq!(LogValue("a b").to_string(), "\"a b\"");
        assert_eq!(LogValue("x=1").to_string(), "\"x=1\"");
        assert_eq!(LogValue("").to_string(), "\"\"");
        assert_eq!(LogValue("q\"\n").to_string(), "\"q\\\"\\n\"");
    }
}

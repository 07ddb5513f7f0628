//! The one-screen description `ssegate check` prints for a valid config:
//! what will actually run, with every default and per-route override
//! resolved, so a reader does not have to work them out from the file.

use std::fmt::Write;
use std::time::Duration;

use super::duration::format_duration;
use super::model::{
    ActiveCheck, Config, HostMatch, Overflow, Resume, Route, Share, Upstream, UpstreamProtocol,
};

/// Renders `config` as plain text, one item per line, without a trailing newline.
/// It does not repeat the file name: the caller prints that with its verdict.
pub fn summary(config: &Config) -> String {
    // Writing to a String cannot fail, so `writeln!` results are ignored below.
    let mut out = String::new();
    listeners(&mut out, config);
    let _ = match &config.admin {
        Some(admin) => writeln!(
            out,
            "admin: {}  GET /metrics (Prometheus), GET /healthz",
            admin.address
        ),
        None => writeln!(out, "admin: off (no [admin] section)"),
    };
    let _ = match &config.cluster {
        Some(c) => writeln!(
            out,
            "cluster: {} as {} (lease {}, timeout {})",
            redacted(&c.redis),
            c.name,
            format_duration(c.lease),
            format_duration(c.timeout),
        ),
        None => writeln!(
            out,
            "cluster: off (no [cluster] section; sharing stays in this process)"
        ),
    };
    upstreams(&mut out, config);
    routes(&mut out, config);
    let s = &config.stream;
    let _ = writeln!(
        out,
        "stream defaults: heartbeat {} ({:?}), idle timeout {}, cache-control {:?}, shutdown retry {} + up to {} jitter, drain window {}, client write timeout {}, client buffer {} bytes, compressed streams at most {}",
        on_off(s.heartbeat),
        s.heartbeat_text,
        on_off(s.idle_timeout),
        s.cache_control,
        format_duration(s.shutdown_retry),
        format_duration(s.shutdown_retry_jitter),
        format_duration(s.drain_window),
        format_duration(s.client_write_timeout),
        s.client_buffer,
        s.compression_max_streams,
    );
    let _ = writeln!(
        out,
        "websocket defaults: idle timeout {}, over HTTP/2 (RFC 8441) {}",
        on_off(config.websocket.idle_timeout),
        if config.websocket_over_h2() {
            "advertised"
        } else if config.websocket.h2 {
            "not advertised (no route allows WebSockets)"
        } else {
            "off"
        },
    );
    let l = &config.limits;
    let _ = writeln!(
        out,
        "limits: max streams {}, per client {}, max connections {}, shed retry {} + up to {} jitter",
        limit(l.max_streams),
        limit(l.max_streams_per_client),
        limit(l.max_connections),
        format_duration(l.shed_retry),
        format_duration(l.shed_retry_jitter),
    );
    let t = &config.timeouts;
    let _ = writeln!(
        out,
        "timeouts: connect {}, read {}, write {}, upstream keepalive {}",
        format_duration(t.connect),
        format_duration(t.read),
        format_duration(t.write),
        format_duration(t.upstream_keepalive),
    );
    let v = &config.server;
    let _ = writeln!(
        out,
        "server: {} threads ({}), grace period {}, shutdown timeout {}, pid file {}, upgrade socket {}, error log {}",
        v.threads,
        if v.work_stealing {
            "work stealing"
        } else {
            "one scheduler each"
        },
        format_duration(v.grace_period),
        format_duration(v.shutdown_timeout),
        v.pid_file.display(),
        v.upgrade_sock.display(),
        v.error_log
            .as_ref()
            .map_or("stderr".to_string(), |p| p.display().to_string()),
    );
    // Callers print it with `println!`.
    out.truncate(out.trim_end().len());
    out
}

fn listeners(out: &mut String, config: &Config) {
    let _ = writeln!(out, "listeners:");
    for l in &config.listeners {
        let kind = match &l.tls {
            None => "plain, HTTP/1.1 + h2c".to_string(),
            Some(tls) => format!("TLS, ALPN h2 + http/1.1, cert {}", tls.cert.display()),
        };
        let _ = writeln!(
            out,
            "  {}  {kind}, h2 max streams {}",
            l.address, l.h2_max_streams
        );
    }
}

fn upstreams(out: &mut String, config: &Config) {
    let _ = writeln!(out, "upstreams:");
    for u in &config.upstreams {
        let protocol = match u.protocol {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        };
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {}  {protocol}  {}; {}",
            u.name,
            servers.join(", "),
            health(u)
        );
    }
}

fn routes(out: &mut String, config: &Config) {
    let _ = writeln!(out, "routes (in file order):");
    for r in &config.routes {
        let host = match &r.host {
            None => "*".to_string(),
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Suffix(s)) => format!("*{s}"),
        };
        let upstream = config
            .upstreams
            .get(r.upstream)
            .map_or("?", |u| u.name.as_str());
        let heartbeat = r.heartbeat.unwrap_or(config.stream.heartbeat);
        let idle = r.idle_timeout.unwrap_or(config.stream.idle_timeout);
        let _ = writeln!(
            out,
            "  {host} {} -> {upstream}{}, heartbeat {}, idle timeout {}, max streams {}, resume {}, {}{}",
            r.path,
            if r.strip_prefix {
                " (strip prefix)"
            } else {
                ""
            },
            on_off(heartbeat),
            on_off(idle),
            limit(r.max_streams),
            match r.resume {
                Resume::Off => "off".to_string(),
                Resume::OnError => format!(
                    "on-error ({} attempts, backoff {} without retry:)",
                    r.resume_attempts,
                    format_duration(r.resume_backoff)
                ),
            },
            compression(r),
            websocket(config, r),
        );
        if let Some(share) = &r.share {
            let _ = writeln!(out, "    {}", shared(share));
        }
    }
}

/// An upstream's health checks, at the end of its line.
fn health(u: &Upstream) -> String {
    let active = match &u.health_check {
        None => "off".to_string(),
        Some(ActiveCheck {
            path,
            interval,
            timeout,
            fall,
            rise,
        }) => format!(
            "{} every {}, timeout {}, fall {fall}, rise {rise}",
            path.as_ref()
                .map_or("TCP connect".to_string(), |p| format!("GET {p}")),
            format_duration(*interval),
            format_duration(*timeout),
        ),
    };
    let passive = match u.max_fails {
        0 => "off".to_string(),
        n => format!(
            "max_fails {n} within fail_timeout {}",
            format_duration(u.fail_timeout)
        ),
    };
    format!("active check {active}; passive check {passive}")
}

/// A route's compression list, before its WebSocket settings; nothing
/// when it is off, so that such a route's line reads as before.
fn compression(r: &Route) -> String {
    if r.compression.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = r.compression.iter().map(|c| c.name()).collect();
    format!("compression {}, ", names.join(" "))
}

/// A route's WebSocket settings, at the end of the route's line.
fn websocket(config: &Config, r: &Route) -> String {
    if !r.websocket {
        let why = match config.upstreams.get(r.upstream).map(|u| u.protocol) {
            Some(UpstreamProtocol::H2c) => " (h2c upstream)",
            _ => "",
        };
        return format!("websocket off{why}");
    }
    let idle = r
        .websocket_idle_timeout
        .unwrap_or(config.websocket.idle_timeout);
    format!(
        "websocket on (idle timeout {}, over HTTP/2 {})",
        on_off(idle),
        if config.websocket.h2 { "yes" } else { "no" }
    )
}

/// A sharing route's settings, on a line of their own under the route's.
fn shared(s: &Share) -> String {
    let mut key = String::from("host+path+query");
    for name in &s.key_headers {
        key.push('+');
        key.push_str(name);
    }
    format!(
        "shared: key {key}, public {}, linger {}, replay {} events / {} bytes, overflow {}, auth {}",
        if s.public { "yes" } else { "no" },
        format_duration(s.linger),
        s.replay_events,
        s.replay_bytes,
        match s.overflow {
            Overflow::Disconnect => "disconnect",
            Overflow::Skip => "skip",
        },
        match &s.auth {
            None => "off".to_string(),
            Some(path) => format!("{path} (cache {})", on_off(s.auth_cache)),
        },
    )
}

fn limit(value: Option<usize>) -> String {
    value.map_or("unlimited".to_string(), |n| n.to_string())
}

fn on_off(value: Option<Duration>) -> String {
    value.map_or("off".to_string(), format_duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_at_the_end_of_the_upstreams_line() {
        let mut u = Upstream {
            name: "app".into(),
            servers: vec![],
            protocol: UpstreamProtocol::Http1,
            health_check: None,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        };
        assert_eq!(
            health(&u),
            "active check off; passive check max_fails 1 within fail_timeout 10s"
        );
        let mut check = ActiveCheck {
            path: Some("/healthz".into()),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
        };
        u.health_check = Some(check.clone());
        u.max_fails = 0;
        assert_eq!(
            health(&u),
            "active check GET /healthz every 5s, timeout 2s, fall 3, rise 2; passive check off"
        );
        check.path = None;
        u.health_check = Some(check);
        assert!(health(&u).starts_with("active check TCP connect every 5s"));
    }

    #[test]
    fn sharing_settings_in_one_line() {
        assert_eq!(
            shared(&Share::default()),
            "shared: key host+path+query, public no, linger 30s, replay 1000 events / 1048576 bytes, overflow disconnect, auth off"
        );
        let s = Share {
            key_headers: vec!["accept-language".into(), "x-tenant".into()],
            public: true,
            linger: Duration::ZERO,
            replay_events: 0,
            replay_bytes: 0,
            overflow: Overflow::Skip,
            auth: Some("/auth/check?x=1".into()),
            auth_cache: Some(Duration::from_secs(90)),
        };
        assert_eq!(
            shared(&s),
            "shared: key host+path+query+accept-language+x-tenant, public yes, linger 0s, replay 0 events / 0 bytes, overflow skip, auth /auth/check?x=1 (cache 1m30s)"
        );
        let s = Share {
            auth: Some("/a".into()),
            ..Share::default()
        };
        assert!(
            shared(&s).ends_with("auth /a (cache off)"),
            "{}",
            shared(&s)
        );
    }
}

/// A Redis URL with its password, if any, masked: `check` output ends up
/// in logs and tickets.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let (user_info, host) = rest.split_at(at);
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let masked = if user_info.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod redaction {
    use super::redacted;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://:secret@r.example:6379/0"),
            "redis://:***@r.example:6379/0"
        );
        assert_eq!(
            redacted("rediss://app:s3cr@t@r.example/1"),
            "rediss://app:***@r.example/1"
        );
        assert_eq!(redacted("redis://token@r"), "redis://***@r");
    }
}

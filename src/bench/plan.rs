//! From `ssegate bench` flags to a validated [`Plan`]: the URL split into
//! what connecting needs, method, body and headers checked, the durations
//! (parsed by clap, see `args`) checked against each other. Everything here
//! works on strings, so it is tested without sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};

use super::args::BenchClientArgs;

/// Where and how to connect, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host for DNS and TLS server name, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for `Host` / `:authority`.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("URL {url:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "URL {url:?}: user info is not supported; send an Authorization header with -H"
            ));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Target {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Headers that describe one HTTP/1.1 connection and are illegal in HTTP/2.
const CONNECTION_HEADERS: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Parses one `-H 'Name: value'`.
pub fn parse_header(text: &str, http2: bool) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("header {text:?} must look like 'Name: value'"));
    };
    let name = name.trim();
    let value = value.trim();
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header {text:?}: {name:?} is not a valid header name"))?;
    HeaderValue::from_str(value)
        .map_err(|_| format!("header {text:?}: the value has characters not allowed"))?;
    if http2 && CONNECTION_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header {text:?} is connection-specific and not allowed over HTTP/2"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// A validated `ssegate bench` run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub target: Target,
    pub streams: usize,
    pub http2: bool,
    /// HTTP/2 connections (as given; unused ones are never opened).
    pub connections: usize,
    pub insecure: bool,
    pub ramp: Duration,
    pub duration: Duration,
    pub method: Method,
    pub body: Option<Bytes>,
    pub headers: Vec<(String, String)>,
    pub json: bool,
    /// Reconnect ended streams as `EventSource` does (`--reconnect`).
    pub reconnect: bool,
    /// Where to draw the run (`--chart`).
    pub chart: Option<PathBuf>,
}

impl Plan {
    pub fn from_args(args: &BenchClientArgs) -> Result<Plan, String> {
        let url = args.url.clone().ok_or("--url is required")?;
        let target = Target::parse(&url)?;
        let streams = args.streams.ok_or("--streams is required")?;
        let duration = args.duration.ok_or("--duration is required")?;
        if streams == 0 {
            return Err("--streams must be at least 1".into());
        }
        if args.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if args.ramp > duration {
            return Err(format!(
                "--ramp ({:?}) must not be longer than --duration ({:?}): the ramp is part of the run",
                args.ramp, duration
            ));
        }
        let chart = args.chart.as_deref().map(chart_path).transpose()?;
        let body = args.data.as_deref().map(read_body).transpose()?;
        let method = match &args.method {
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("-X {m:?} is not a valid method"))?,
            None if body.is_some() => Method::POST,
            None => Method::GET,
        };
        let headers = args
            .headers
            .iter()
            .map(|h| parse_header(h, args.http2))
            .collect::<Result<_, _>>()?;
        Ok(Plan {
            url,
            target,
            streams: usize::try_from(streams).map_err(|_| "--streams is too large")?,
            http2: args.http2,
            connections: usize::try_from(args.connections)
                .map_err(|_| "--connections is too large")?,
            insecure: args.insecure,
            ramp: args.ramp,
            duration,
            method,
            body,
            headers,
            json: args.json,
            reconnect: args.reconnect,
            chart,
        })
    }

    /// When stream `index` starts: spread evenly over the ramp.
    pub fn start_offset(&self, index: usize) -> Duration {
        if self.streams == 0 {
            return Duration::ZERO;
        }
        let nanos = self.ramp.as_nanos() * index as u128 / self.streams as u128;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The `Host` / `:authority` to send: a `-H 'Host: x'` wins over the URL's.
    pub fn authority(&self) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or(self.target.authority.as_str(), |(_, v)| v.as_str())
    }
}

/// Checks `--chart FILE.png` before the run, so that a typo does not cost a
/// whole run: a `.png` name in a folder that exists.
fn chart_path(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return Err(format!("--chart {shown}: the file name must end in .png"));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "--chart {shown}: the folder {} does not exist",
            folder.display()
        ));
    }
    Ok(path.to_path_buf())
}

/// `-d BODY`, or `-d @FILE` for a file's contents, as curl reads it.
fn read_body(data: &str) -> Result<Bytes, String> {
    match data.strip_prefix('@') {
        Some(path) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("-d @{path}: {e}")),
        None => Ok(Bytes::copy_from_slice(data.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::BenchArgs;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/events?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: "/events?x=1".into(),
            }
        );
        let t = Target::parse("https://[::1]").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "::1", 443, "/")
        );
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
        assert!(Target::parse("http://u:p@x/").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization:  Bearer x ", false).unwrap(),
            ("Authorization".into(), "Bearer x".into())
        );
        assert!(parse_header("no colon", false).is_err());
        assert!(parse_header("bad name: v", false).is_err());
        assert!(parse_header("Connection: close", false).is_ok());
        assert!(parse_header("Connection: close", true).is_err());
    }

    fn args(extra: &[&str]) -> Result<Plan, String> {
        let mut argv = vec![
            "bench",
            "--url",
            "http://h/",
            "--streams",
            "4",
            "--duration",
            "10s",
        ];
        argv.extend_from_slice(extra);
        Plan::from_args(&BenchArgs::try_parse_from(&argv)?.client)
    }

    #[test]
    fn plans() {
        let plan = args(&["--ramp", "2s", "-d", "{}", "-H", "Host: other"]).unwrap();
        assert_eq!(plan.method, Method::POST);
        assert_eq!(plan.authority(), "other");
        assert_eq!(plan.start_offset(0), Duration::ZERO);
        assert_eq!(plan.start_offset(2), Duration::from_secs(1));
        assert_eq!(plan.start_offset(3), Duration::from_millis(1500));
        assert_eq!(args(&["-X", "PUT"]).unwrap().method, Method::PUT);
        assert!(args(&["--ramp", "11s"]).unwrap_err().contains("--ramp"));
        assert!(args(&["--connections", "2"]).is_err(), "needs --http2");
        assert!(args(&["--reconnect"]).unwrap().reconnect);
        assert!(args(&["--reconnect", "--http2"]).unwrap().reconnect);
        assert!(args(&["--chart", "x.svg"]).unwrap_err().contains(".png"));
        let err = args(&["--chart", "/no/such/folder/x.png"]).unwrap_err();
        assert!(err.contains("/no/such/folder does not exist"), "{err}");
        let plan = args(&["--chart", "run.PNG"]).unwrap();
        assert_eq!(plan.chart, Some(PathBuf::from("run.PNG")));
        assert_eq!(
            args(&["--http2", "--connections", "2"])
                .unwrap()
                .connections,
            2
        );
    }
}

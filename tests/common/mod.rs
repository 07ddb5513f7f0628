//! Test harness: the real `ssegate` binary on a loopback port, a scripted
//! HTTP/1.1 upstream on port 0, and raw HTTP/1.1, h2c and TLS h2 clients.
//!
//! Everything synchronises on events (bytes seen, connections accepted);
//! the only timeouts are upper bounds that turn a hang into a failure.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub mod broadcast;
pub mod haproxy;
pub mod redis;
pub mod scrape;
pub mod ws;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test with `what` after `WAIT`.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The suite's one pseudo-random generator: `rand`'s `StdRng` from a fixed
/// seed, so a test draws the same values on every run and a failure
/// reproduces from the seed it prints.
/// Calls `fetch` every `period` until `done` holds of what it gives, and
/// returns that; fails with the last one after `limit`.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    limit: Duration,
    period: Duration,
    mut fetch: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let start = std::time::Instant::now();
    loop {
        let last = fetch().await;
        if done(&last) {
            return last;
        }
        assert!(
            start.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}; last:\n{last:#?}"
        );
        tokio::time::sleep(period).await;
    }
}

pub fn seeded_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A folder for one test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ssegate-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago (pingora binds by address, so the
/// proxy cannot report an ephemeral port back; `Proxy::start` retries on a
/// lost race).
/// A system binary: `$env` if set, else `debian` if it exists, else `name`
/// from `PATH`.
pub fn system_bin(env: &str, debian: &str, name: &str) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env) {
        return std::path::PathBuf::from(p);
    }
    let debian = std::path::PathBuf::from(debian);
    if debian.exists() {
        return debian;
    }
    std::path::PathBuf::from(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ssegate")
}

/// A self-signed certificate for 127.0.0.1/localhost, written as PEM files.
pub struct TestCert {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

pub fn make_cert(dir: &TempDir) -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    TestCert {
        cert_pem,
        cert_path,
        key_path,
    }
}

/// A running `ssegate run` process, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// The TLS listener, when one was asked for.
    pub tls_addr: Option<SocketAddr>,
    /// The `[admin]` listener, when one was asked for.
    pub admin_addr: Option<SocketAddr>,
    pub dir: TempDir,
}

/// Config pieces for `Proxy::start`: `{listeners}` is filled in by the harness.
pub struct ProxyConfig {
    /// Everything but `[[listener]]` sections.
    pub body: String,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub listener_extra: String,
    /// Add an `[admin]` section on a free loopback port (`Proxy::admin_addr`).
    pub admin: bool,
    /// `Some(filter)`: run with `RUST_LOG=filter` and the process's stderr
    /// in a file of its folder, read back with `Proxy::log_text` (the
    /// access log, target `ssegate::access`, is written there).
    pub log: Option<String>,
}

impl ProxyConfig {
    pub fn new(body: impl Into<String>) -> Self {
        ProxyConfig {
            body: body.into(),
            tls: None,
            listener_extra: String::new(),
            admin: false,
            log: None,
        }
    }
}

/// A test config without listeners (the harness adds those): short timeouts,
/// `read` as the ordinary read timeout, a 200 ms heartbeat unless
/// `stream_extra` sets one, `stream_extra` appended to `[stream]`, then the
/// upstream and route `sections`.
pub fn config_with(read: &str, stream_extra: &str, sections: &str) -> String {
    let heartbeat = if stream_extra.contains("heartbeat =") {
        ""
    } else {
        "heartbeat = \"200ms\""
    };
    format!(
        r#"
[server]
threads = 2
grace_period = "2s"
shutdown_timeout = "1s"

[timeouts]
connect = "2s"
read = "{read}"
write = "5s"

[stream]
{heartbeat}
{stream_extra}

{sections}
"#
    )
}

/// The usual test config: one upstream `app` at `upstream`, one route `/`;
/// `stream_extra` is appended to `[stream]`.
pub fn basic_config(upstream: SocketAddr, stream_extra: &str) -> String {
    config_with(
        "2s",
        stream_extra,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n"
        ),
    )
}

/// `ssegate run -c CONFIG [--upgrade]`, logging at `RUST_LOG` (default
/// warn), or at `log`'s filter into `log`'s file.
fn spawn_run(
    config: &std::path::Path,
    upgrade: bool,
    log: Option<(&str, &std::path::Path)>,
) -> Child {
    let mut cmd = Command::new(bin());
    cmd.arg("run");
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.arg("-c").arg(config).stdin(Stdio::null());
    match log {
        Some((filter, file)) => {
            cmd.env("RUST_LOG", filter)
                .stderr(std::fs::File::create(file).unwrap());
        }
        None => {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
    }
    cmd.spawn().unwrap()
}

impl Proxy {
    pub async fn start(cfg: ProxyConfig) -> Proxy {
        for _attempt in 0..5 {
            if let Some(p) = Self::try_start(&cfg).await {
                return p;
            }
        }
        panic!("ssegate did not start");
    }

    async fn try_start(cfg: &ProxyConfig) -> Option<Proxy> {
        let dir = TempDir::new("proxy");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut listeners = format!(
            "[[listener]]\naddress = \"{addr}\"\n{}\n",
            cfg.listener_extra
        );
        let mut tls_addr = None;
        if let Some((cert, key)) = &cfg.tls {
            let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            listeners.push_str(&format!(
                "[[listener]]\naddress = \"{a}\"\ntls = {{ cert = {:?}, key = {:?} }}\n{}\n",
                cert.display().to_string(),
                key.display().to_string(),
                cfg.listener_extra
            ));
            tls_addr = Some(a);
        }
        let admin_addr: Option<SocketAddr> = cfg
            .admin
            .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let pid = dir.0.join("ssegate.pid");
        let sock = dir.0.join("upgrade.sock");
        let mut text = format!(
            "{listeners}\n{}\n",
            cfg.body.replace(
                "[server]",
                &format!(
                    "[server]\npid_file = {:?}\nupgrade_sock = {:?}",
                    pid.display().to_string(),
                    sock.display().to_string()
                )
            )
        );
        if let Some(a) = admin_addr {
            text.push_str(&format!("\n[admin]\naddress = \"{a}\"\n"));
        }
        let path = dir.0.join("ssegate.toml");
        std::fs::write(&path, text).unwrap();
        let log_file = dir.0.join("stderr.log");
        let mut child = spawn_run(
            &path,
            false,
            cfg.log.as_deref().map(|f| (f, log_file.as_path())),
        );
        // Ready once every listener accepts; a process that exits lost a port race.
        let mut wanted = vec![addr];
        wanted.extend(tls_addr);
        wanted.extend(admin_addr);
        for _ in 0..500 {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            let mut all = true;
            for a in &wanted {
                if TcpStream::connect(a).await.is_err() {
                    all = false;
                }
            }
            if all {
                return Some(Proxy {
                    child,
                    addr,
                    tls_addr,
                    admin_addr,
                    dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        None
    }

    /// Starts a second process on this proxy's config with `--upgrade`: it
    /// waits on `server.upgrade_sock` for the listening sockets, which this
    /// process hands over on SIGQUIT. Returns once the new process is waiting.
    pub async fn start_upgrade(&self) -> Child {
        let sock = self.dir.0.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let mut child = spawn_run(&self.dir.0.join("ssegate.toml"), true, None);
        within("the upgrading process to wait on its socket", async {
            while !sock.exists() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the upgrading process exited: {status:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        child
    }

    /// What the process wrote to stderr so far, when started with
    /// `ProxyConfig::log`.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.wait_exit_within(WAIT).await
    }

    /// Like `wait_exit`, failing after `limit` rather than `WAIT` (for a
    /// grace period that takes a good part of `WAIT` by itself).
    pub async fn wait_exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let exited = async {
            loop {
                if let Some(s) = self.child.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(limit, exited).await {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for proxy exit"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Scripted HTTP/1.1 upstream

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One accepted upstream connection with its first request read.
pub struct UpConn {
    pub req: SeenRequest,
    pub stream: TcpStream,
}

impl UpConn {
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends a response head with `Transfer-Encoding: chunked` and the given extra headers.
    pub async fn head_chunked(&mut self, content_type: &str, extra: &[(&str, &str)]) {
        let mut h = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n"
        );
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        self.write(h.as_bytes()).await;
    }

    pub async fn chunk(&mut self, data: &[u8]) {
        let mut b = format!("{:x}\r\n", data.len()).into_bytes();
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
        self.write(&b).await;
    }

    pub async fn end_chunks(&mut self) {
        self.write(b"0\r\n\r\n").await;
    }

    /// Reads the next request on this (kept-alive) connection into `self.req`.
    pub async fn next_request(&mut self) {
        self.req = within(
            "a request on a reused upstream connection",
            read_request(&mut self.stream),
        )
        .await
        .expect("upstream connection closed instead of carrying a request");
    }

    /// Resolves when the proxy closes this connection (EOF or reset).
    pub async fn closed(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// An upstream on 127.0.0.1:0 that hands each accepted connection (with its
/// first request parsed) to the test through a channel.
pub struct Upstream {
    pub addr: SocketAddr,
    pub conns: mpsc::Receiver<UpConn>,
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(req) = read_request(&mut stream).await {
                        let _ = tx.send(UpConn { req, stream }).await;
                    }
                });
            }
        });
        Upstream {
            addr,
            conns: rx,
            accepted,
        }
    }

    pub async fn next(&mut self) -> UpConn {
        within("an upstream request", self.conns.recv())
            .await
            .expect("upstream channel closed")
    }
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<usize> {
    loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            return Some(pos + 4);
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_headers(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

/// Reads a body framed by `headers` from `s`, starting with `buf`'s bytes.
async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    headers: &[(String, String)],
    mut buf: BytesMut,
) -> Option<Bytes> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&buf, b"\r\n") {
                    break p;
                }
                fill(s, &mut buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            let _ = buf.split_to(line_end + 2);
            if size == 0 {
                // Trailer section ends with an empty line.
                while find(&buf, b"\r\n").is_none() {
                    fill(s, &mut buf).await?;
                }
                return Some(body.freeze());
            }
            while buf.len() < size + 2 {
                fill(s, &mut buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            let _ = buf.split_to(size + 2);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            fill(s, &mut buf).await?;
        }
        Some(buf.split_to(len).freeze())
    } else {
        Some(Bytes::new())
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<()> {
    let mut tmp = vec![0u8; 65536];
    let n = s.read(&mut tmp).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&tmp[..n]);
    Some(())
}

async fn read_request(s: &mut TcpStream) -> Option<SeenRequest> {
    let mut buf = BytesMut::new();
    let head_len = read_head(s, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let _ = buf.split_to(head_len);
    let (line, headers) = parse_headers(&head);
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let body = read_body(s, &headers, buf).await?;
    Some(SeenRequest {
        method,
        target,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client

/// A raw HTTP/1.1 client connection that reads a response incrementally.
pub struct H1Client<S> {
    pub stream: S,
    buf: BytesMut,
}

#[derive(Debug)]
pub struct H1Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl H1Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl H1Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        H1Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }
}

impl<S> H1Client<S> {
    /// A client over an already connected stream.
    pub fn over(stream: S) -> Self {
        H1Client {
            stream,
            buf: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1Client<S> {
    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    /// `GET path` with `Host: test`, plus extra header lines.
    pub async fn get(&mut self, path: &str, extra: &[(&str, &str)]) {
        let mut r = format!("GET {path} HTTP/1.1\r\nhost: test\r\n");
        for (k, v) in extra {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        self.send(r.as_bytes()).await;
    }

    pub async fn response_head(&mut self) -> H1Response {
        let n = within("response head", read_head(&mut self.stream, &mut self.buf))
            .await
            .expect("connection closed before response head");
        let head = String::from_utf8_lossy(&self.buf[..n]).to_string();
        let _ = self.buf.split_to(n);
        let (line, headers) = parse_headers(&head);
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        H1Response { status, headers }
    }

    /// The next chunk of a chunked body: `Some(data)`, or `None` at the terminating chunk.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        within("a response chunk", async {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                fill(&mut self.stream, &mut self.buf)
                    .await
                    .expect("connection closed mid-body");
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            let _ = self.buf.split_to(line_end + 2);
            while self.buf.len() < size + 2 {
                fill(&mut self.stream, &mut self.buf)
                    .await
                    .expect("connection closed mid-chunk");
            }
            let data = self.buf.split_to(size).freeze();
            assert_eq!(&self.buf[..2], b"\r\n", "chunk not followed by CRLF");
            let _ = self.buf.split_to(2);
            if size == 0 {
                None
            } else {
                Some(data)
            }
        })
        .await
    }

    /// Reads chunks until the collected body contains `needle`; returns all of it.
    pub async fn read_until(&mut self, body: &mut Vec<u8>, needle: &[u8]) {
        while find(body, needle).is_none() {
            match self.next_chunk().await {
                Some(c) => body.extend_from_slice(&c),
                None => panic!(
                    "stream ended before {:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(body)
                ),
            }
        }
    }

    /// Reads a whole body framed per `resp` (Content-Length or chunked).
    pub async fn body(&mut self, resp: &H1Response) -> Bytes {
        let buf = std::mem::take(&mut self.buf);
        within(
            "a response body",
            read_body(&mut self.stream, &resp.headers, buf),
        )
        .await
        .expect("body incomplete")
    }

    /// Resolves when the server closes the connection; returns bytes seen meanwhile.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        within("connection close", async {
            let mut tmp = [0u8; 4096];
            loop {
                match self.stream.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&tmp[..n]),
                }
            }
        })
        .await;
        all
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 clients

pub type H2Sender = h2::client::SendRequest<Bytes>;

/// The h2 client settings the tests use. h2 limits how many small DATA frames
/// may sit unread per connection (100 by default) and answers more with
/// GOAWAY; a test reading 200 event streams from one connection on a busy
/// machine can exceed that, so the budget is raised like a real multiplexing
/// SSE client would.
fn h2_client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.data_frame_budget(256 * 10_000);
    b
}

/// An h2c (prior knowledge) connection.
pub async fn h2c_connect(addr: SocketAddr) -> H2Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2_client_builder().handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A TLS connection negotiating `h2` through ALPN, trusting `cert_pem`.
pub async fn h2_tls_connect(addr: SocketAddr, cert_pem: &str) -> H2Sender {
    let tls = tls_connect(addr, cert_pem, &[b"h2"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN h2 not selected"
    );
    let (send, conn) = h2_client_builder().handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub async fn tls_connect(
    addr: SocketAddr,
    cert_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile_cert(cert_pem);
    roots.add(der).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn rustls_pemfile_cert(pem: &str) -> tokio_rustls::rustls::pki_types::CertificateDer<'static> {
    // A single certificate: base64 between the armour lines.
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    tokio_rustls::rustls::pki_types::CertificateDer::from(base64_decode(&b64))
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Sends a GET on an h2 connection and returns the response and its body stream.
pub async fn h2_get(
    send: &mut H2Sender,
    authority: &str,
    path: &str,
) -> (http::response::Parts, h2::RecvStream) {
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{authority}{path}"))
        .body(())
        .unwrap();
    let mut send = within("h2 ready", send.clone().ready()).await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = within("h2 response", resp).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts, body)
}

/// Reads h2 DATA until the collected body contains `needle`.
pub async fn h2_read_until(body: &mut h2::RecvStream, got: &mut Vec<u8>, needle: &[u8]) {
    within("h2 data", async {
        while find(got, needle).is_none() {
            let data = body
                .data()
                .await
                .expect("h2 stream ended")
                .expect("h2 stream error");
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
    })
    .await
}

/// The resident memory of process `pid` in KiB (`VmRSS`), 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A running `ssegate bench upstream` (the SSE origin of `ssegate bench`),
/// killed on drop.
pub struct BenchUpstream {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl BenchUpstream {
    /// On a free loopback port, `rate` events/s with a 100-byte payload.
    pub async fn start(rate: &str) -> BenchUpstream {
        Self::start_with(rate, &[]).await
    }

    /// Like `start`, plus `extra` flags; `--listen ADDR` and `--payload N`
    /// there replace the defaults.
    pub async fn start_with(rate: &str, extra: &[&str]) -> BenchUpstream {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["bench", "upstream", "--rate", rate]);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--payload") {
            cmd.args(["--payload", "100"]);
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = within("the bench upstream's address", async {
            tokio::io::BufReader::new(stdout).lines().next_line().await
        })
        .await
        .unwrap()
        .expect("bench upstream printed nothing");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        BenchUpstream { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: its connections close mid-stream, its port refuses.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

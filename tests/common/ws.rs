//! WebSocket test helpers:
//!
//! - `WsOrigin`: an origin on 127.0.0.1:0. In echo mode it completes each
//!   handshake with tokio-tungstenite's `accept_hdr_async`, echoes text and
//!   binary (binary over 1 MiB as 1 MiB fragments), answers pings
//!   (tungstenite does), echoes a Close's code and reason, and reports what
//!   it read (`WsSession`). Ordinary requests get `200 ok` on a kept-alive
//!   connection, or three events when they accept `text/event-stream`. In
//!   raw mode each connection goes to the test after its first request head
//!   (`RawConn`) and the test scripts the bytes. Every request head is
//!   recorded, and TCP connections accepted are counted.
//! - HTTP/1.1 clients over any stream (plain or TLS): `h1_handshake` writes
//!   the handshake and returns the response head and the bytes read past it,
//!   then `ws_client` makes a `WebSocketStream` that starts with those.
//! - RFC 8441 over HTTP/2: `h2_client` (waits for the server's SETTINGS),
//!   `h2_websocket` (extended CONNECT) and `H2Tunnel`, a tokio
//!   `AsyncRead + AsyncWrite` over one stream.
//! - Frames by hand (`frame`, `parse_frame`) for tests that look at bytes.
//!
//! Self-contained (nothing from `super`), so a benchmark can include it with
//! `#[path = "../tests/common/ws.rs"] mod ws;`.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Upper bound for anything these helpers wait for.
pub const WS_WAIT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WS_WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Messages and frames up to 64 MiB, so that a 16 MiB message passes whole
/// or in fragments.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Any byte stream a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

// ---------------------------------------------------------------------------
// Request heads

/// A request head as the origin read it (header names lowercased).
#[derive(Debug, Clone)]
pub struct WsRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl WsRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `Upgrade: websocket` among the headers.
    pub fn is_websocket(&self) -> bool {
        self.all("upgrade")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("websocket"))
    }
}

/// A `Sec-WebSocket-Key` as RFC 6455 wants it: 16 bytes in base64.
pub fn valid_key(key: &str) -> bool {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    key.len() == 24
        && key.ends_with("==")
        && key.as_bytes()[..22].iter().all(|c| B64.contains(c))
        // The last character before the padding carries 2 bits only.
        && b"AQgw".contains(&key.as_bytes()[21])
}

/// The `Sec-WebSocket-Accept` for `key`.
pub fn accept_for(key: &str) -> String {
    derive_accept_key(key.as_bytes())
}

/// Reads one request or response head into `buf` (which may hold bytes
/// already); returns its length. `None` on EOF first.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<usize> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        if s.read_buf(buf).await.map_or(true, |n| n == 0) {
            return None;
        }
    }
}

fn parse_request(head: &[u8]) -> Option<WsRequest> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => Some(WsRequest {
            method: req.method?.to_string(),
            target: req.path?.to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect(),
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The origin

/// How a `WsOrigin` behaves.
#[derive(Clone, Default)]
pub struct OriginOptions {
    /// Pick this subprotocol when the client offers it.
    pub protocol: Option<String>,
    /// Answer the handshake with this `Sec-WebSocket-Extensions` value.
    pub extensions: Option<String>,
    /// Sent right after the handshake.
    pub first_message: Option<Message>,
    /// Hand every connection to the test (`WsOrigin::raw_conn`) after its
    /// first request head instead of serving it.
    pub raw: bool,
}

/// What the origin read on one WebSocket.
#[derive(Debug, Clone)]
pub enum OriginEvent {
    Message(Message),
    /// The stream ended (after a close handshake, or a plain EOF).
    End,
    Error(String),
}

/// One WebSocket the echo origin accepted.
pub struct WsSession {
    pub request: WsRequest,
    /// What the origin read, in order, ending with `End` or `Error`.
    pub events: mpsc::UnboundedReceiver<OriginEvent>,
    /// Messages for the origin to send (besides its echoes).
    pub send: mpsc::UnboundedSender<Message>,
}

impl WsSession {
    pub async fn next_event(&mut self) -> OriginEvent {
        bounded("the origin to read something", self.events.recv())
            .await
            .unwrap_or(OriginEvent::End)
    }

    /// The next text, binary or close message (pings and pongs skipped).
    pub async fn next_message(&mut self) -> Message {
        loop {
            match self.next_event().await {
                OriginEvent::Message(Message::Ping(_) | Message::Pong(_)) => {}
                OriginEvent::Message(m) => return m,
                other => panic!("origin: expected a message, got {other:?}"),
            }
        }
    }

    /// Waits for the end of the origin's WebSocket; returns the messages
    /// read before it and how it ended.
    pub async fn ended(&mut self) -> (Vec<Message>, OriginEvent) {
        let mut seen = Vec::new();
        loop {
            match self.next_event().await {
                OriginEvent::Message(m) => seen.push(m),
                end => return (seen, end),
            }
        }
    }
}

/// A raw origin connection: the first request head read, the bytes read
/// past it, and the socket.
pub struct RawConn {
    pub request: WsRequest,
    pub stream: TcpStream,
    pub leftover: BytesMut,
}

impl RawConn {
    /// The correct `Sec-WebSocket-Accept` for this request's key.
    pub fn accept(&self) -> String {
        accept_for(self.request.header("sec-websocket-key").unwrap_or(""))
    }

    /// A valid `101` for this request, with extra header lines.
    pub fn switching(&self, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut h = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n",
            self.accept()
        );
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("origin write");
        self.stream.flush().await.expect("origin flush");
    }

    /// Reads until `n` bytes past the head have arrived (or EOF); returns
    /// all of them so far and keeps nothing back.
    pub async fn read_at_least(&mut self, n: usize) -> Vec<u8> {
        bounded("origin bytes", async {
            while self.leftover.len() < n {
                if self
                    .stream
                    .read_buf(&mut self.leftover)
                    .await
                    .map_or(true, |r| r == 0)
                {
                    break;
                }
            }
        })
        .await;
        self.leftover.split().to_vec()
    }

    /// Reads until the proxy closes (EOF or reset); returns what came.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        bounded("the proxy to close the origin connection", async {
            while self
                .stream
                .read_buf(&mut self.leftover)
                .await
                .is_ok_and(|r| r > 0)
            {}
        })
        .await;
        self.leftover.split().to_vec()
    }
}

/// An origin on 127.0.0.1:0; see the module header.
pub struct WsOrigin {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Every request head, in arrival order.
    pub requests: Arc<Mutex<Vec<WsRequest>>>,
    sessions: mpsc::UnboundedReceiver<WsSession>,
    raw: mpsc::UnboundedReceiver<RawConn>,
}

struct Shared {
    opts: OriginOptions,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<WsRequest>>>,
    sessions: mpsc::UnboundedSender<WsSession>,
    raw: mpsc::UnboundedSender<RawConn>,
}

impl WsOrigin {
    pub async fn start(opts: OriginOptions) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stx, sessions) = mpsc::unbounded_channel();
        let (rtx, raw) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            opts,
            accepted: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
            sessions: stx,
            raw: rtx,
        });
        let (accepted, requests) = (shared.accepted.clone(), shared.requests.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                // Small frames must not wait on Nagle and delayed ACKs.
                let _ = s.set_nodelay(true);
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, shared.clone()));
            }
        });
        WsOrigin {
            addr,
            accepted,
            requests,
            sessions,
            raw,
        }
    }

    /// Echo mode with the default options.
    pub async fn echo() -> WsOrigin {
        Self::start(OriginOptions::default()).await
    }

    /// Raw mode.
    pub async fn raw() -> WsOrigin {
        Self::start(OriginOptions {
            raw: true,
            ..OriginOptions::default()
        })
        .await
    }

    /// The next WebSocket the echo origin accepted.
    pub async fn session(&mut self) -> WsSession {
        bounded("the origin to accept a WebSocket", self.sessions.recv())
            .await
            .expect("origin gone")
    }

    /// The next connection in raw mode.
    pub async fn raw_conn(&mut self) -> RawConn {
        bounded("a connection at the raw origin", self.raw.recv())
            .await
            .expect("origin gone")
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<WsRequest> {
        self.requests.lock().expect("requests").clone()
    }

    /// Request heads whose target starts with `prefix`.
    pub fn requests_for(&self, prefix: &str) -> Vec<WsRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect()
    }
}

async fn serve(mut s: TcpStream, shared: Arc<Shared>) {
    let mut buf = BytesMut::new();
    loop {
        let Some(n) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let Some(req) = parse_request(&buf[..n]) else {
            return;
        };
        shared.requests.lock().expect("requests").push(req.clone());
        if shared.opts.raw {
            let _ = buf.split_to(n);
            let _ = shared.raw.send(RawConn {
                request: req,
                stream: s,
                leftover: buf,
            });
            return;
        }
        if req.is_websocket() {
            // tungstenite reads the head again, then (in a read of its own:
            // it calls bytes in the read that ends the head junk) whatever
            // followed it.
            let mut head = buf.freeze();
            let tail = head.split_off(n);
            let io = Prefixed {
                prefix: vec![head, tail].into(),
                inner: s,
            };
            echo(io, req, shared).await;
            return;
        }
        let _ = buf.split_to(n);
        let sse = req
            .header("accept")
            .is_some_and(|a| a.contains("text/event-stream"));
        let reply: Vec<u8> = if sse {
            let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for i in 1..=3 {
                let ev = format!("id: {i}\ndata: tick {i}\n\n");
                r.extend_from_slice(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

// The handshake callback's `Err` is tungstenite's `ErrorResponse` by its API.
#[allow(clippy::result_large_err)]
async fn echo(io: Prefixed<TcpStream>, req: WsRequest, shared: Arc<Shared>) {
    let opts = shared.opts.clone();
    let callback = move |r: &Request, mut resp: Response| {
        let offered = r
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect::<Vec<_>>();
        if let Some(p) = &opts.protocol {
            if offered.contains(p) {
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_str(p).expect("protocol"),
                );
            }
        }
        if let Some(e) = &opts.extensions {
            resp.headers_mut().insert(
                "sec-websocket-extensions",
                HeaderValue::from_str(e).expect("extensions"),
            );
        }
        Ok(resp)
    };
    let mut ws = match tokio_tungstenite::accept_hdr_async_with_config(
        io,
        callback,
        Some(ws_config()),
    )
    .await
    {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("origin: WebSocket handshake failed: {e}");
            return;
        }
    };
    let (etx, events) = mpsc::unbounded_channel();
    let (send, mut commands) = mpsc::unbounded_channel();
    let _ = shared.sessions.send(WsSession {
        request: req,
        events,
        send,
    });
    if let Some(m) = shared.opts.first_message.clone() {
        if ws.send(m).await.is_err() {
            return;
        }
    }
    let mut commands_open = true;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                None => {
                    let _ = etx.send(OriginEvent::End);
                    return;
                }
                Some(Err(e)) => {
                    let _ = etx.send(OriginEvent::Error(e.to_string()));
                    return;
                }
                Some(Ok(m)) => {
                    let _ = etx.send(OriginEvent::Message(m.clone()));
                    let sent = match m {
                        Message::Text(_) => ws.send(m).await,
                        Message::Binary(b) => send_binary(&mut ws, b, 1 << 20).await,
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        // The close handshake or the connection ended; the
                        // read side reports which.
                        continue;
                    }
                }
            },
            c = commands.recv(), if commands_open => match c {
                Some(m) => {
                    let _ = ws.send(m).await;
                }
                None => commands_open = false,
            },
        }
    }
}

/// Sends `data` as one binary message, in fragments of at most `piece`
/// bytes when it is longer.
pub async fn send_binary<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    data: Bytes,
    piece: usize,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    if data.len() <= piece {
        return ws.send(Message::Binary(data)).await;
    }
    let n = data.len().div_ceil(piece);
    for i in 0..n {
        let chunk = data.slice(i * piece..((i + 1) * piece).min(data.len()));
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        ws.feed(Message::Frame(Frame::message(chunk, opcode, i + 1 == n)))
            .await?;
    }
    ws.flush().await
}

/// A stream that first yields the `prefix` pieces, no read spanning two,
/// then reads from `inner`.
pub struct Prefixed<S> {
    pub prefix: std::collections::VecDeque<Bytes>,
    pub inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(piece) = self.prefix.front_mut() {
            if piece.is_empty() {
                self.prefix.pop_front();
                continue;
            }
            let n = piece.len().min(out.remaining());
            out.put_slice(&piece[..n]);
            piece.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 clients

/// A handshake response as the client read it.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The `Sec-WebSocket-Key` the client sent (empty if it sent none).
    pub key: String,
    /// Bytes read past the response head (frames, or a body).
    pub leftover: Vec<u8>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tokio_tungstenite::tungstenite::handshake::client::generate_key()
}

/// The handshake request: `GET path` with `Host`, `Upgrade: websocket`,
/// `Connection: Upgrade`, a fresh key (unless `extra` names
/// `sec-websocket-key`, or sets it to "" to send none) and version 13, then
/// `extra`. Returns the bytes and the key.
pub fn h1_request(host: &str, path: &str, extra: &[(&str, &str)]) -> (Vec<u8>, String) {
    let given = extra
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"));
    let key = match given {
        Some((_, v)) => v.to_string(),
        None => new_key(),
    };
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    );
    if given.is_none() {
        r.push_str(&format!("sec-websocket-key: {key}\r\n"));
    }
    if !extra
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-version"))
    {
        r.push_str("sec-websocket-version: 13\r\n");
    }
    for (k, v) in extra {
        if !(k.eq_ignore_ascii_case("sec-websocket-key") && v.is_empty()) {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    r.push_str("\r\n");
    (r.into_bytes(), key)
}

/// Writes the handshake (`h1_request`) and `pipelined` in one write, then
/// reads the response head.
pub async fn h1_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
    pipelined: &[u8],
) -> Handshake {
    let (mut bytes, key) = h1_request(host, path, extra);
    bytes.extend_from_slice(pipelined);
    stream.write_all(&bytes).await.expect("handshake write");
    stream.flush().await.expect("handshake flush");
    let mut buf = BytesMut::new();
    let n = bounded("the handshake response", read_head(stream, &mut buf))
        .await
        .expect("connection closed before a response head");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let _ = buf.split_to(n);
    Handshake {
        status,
        headers,
        key,
        leftover: buf.to_vec(),
    }
}

/// A client `WebSocketStream` over `stream`, starting with `leftover`.
pub async fn ws_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    leftover: Vec<u8>,
) -> WebSocketStream<S> {
    WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(ws_config())).await
}

// ---------------------------------------------------------------------------
// RFC 8441 over HTTP/2

pub type H2Send = h2::client::SendRequest<Bytes>;

/// An h2 client connection over `io` (h2c, or TLS with ALPN h2), returned
/// once the server's SETTINGS are known (one PING round trip, which comes
/// after them), so `is_extended_connect_protocol_enabled()` is final.
pub async fn h2_client<S: Io>(io: S) -> H2Send {
    let mut b = h2::client::Builder::new();
    b.data_frame_budget(256 * 10_000)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    let (send, mut conn) = bounded("the h2 handshake", b.handshake(io))
        .await
        .expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("ping_pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    bounded("an h2 PING round trip", pings.ping(h2::Ping::opaque()))
        .await
        .expect("h2 PING");
    send
}

/// An extended CONNECT with `:protocol protocol`, `:scheme scheme`,
/// `:path path`, `:authority authority`, `sec-websocket-version: 13` and
/// `extra`; `early` is sent as DATA before the response is awaited. The
/// response head and the stream, or the h2 error (a reset) it got instead.
pub async fn h2_extended_connect(
    send: &mut H2Send,
    scheme: &str,
    authority: &str,
    path: &str,
    protocol: &str,
    extra: &[(&str, &str)],
) -> Result<(http::response::Parts, H2Tunnel), h2::Error> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("{scheme}://{authority}{path}"))
        .header("sec-websocket-version", "13");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let mut req = req.body(()).expect("request");
    req.extensions_mut()
        .insert(h2::ext::Protocol::from(protocol));
    let mut ready = bounded("h2 ready", send.clone().ready()).await?;
    let (resp, stream) = ready.send_request(req, false)?;
    let resp = bounded("the extended CONNECT's response", resp).await?;
    let (parts, recv) = resp.into_parts();
    Ok((
        parts,
        H2Tunnel {
            send: stream,
            recv,
            buf: Bytes::new(),
            shut: false,
            _conn: Some(send.clone()),
        },
    ))
}

/// RFC 8441: a WebSocket over `send` (`:scheme http`). Fails the test when
/// the server did not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
pub async fn h2_websocket(
    send: &mut H2Send,
    authority: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (http::response::Parts, H2Tunnel) {
    h2_websocket_scheme(send, "http", authority, path, extra).await
}

/// `h2_websocket` with a `:scheme` of choice (`https` over TLS).
pub async fn h2_websocket_scheme(
    send: &mut H2Send,
    scheme: &str,
    authority: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (http::response::Parts, H2Tunnel) {
    assert!(
        send.is_extended_connect_protocol_enabled(),
        "the server did not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)"
    );
    h2_extended_connect(send, scheme, authority, path, "websocket", extra)
        .await
        .expect("extended CONNECT")
}

/// One h2 stream as a byte stream: reads DATA (releasing flow-control
/// capacity as bytes are read), writes DATA within the capacity h2 grants,
/// and shuts down with END_STREAM. Holds a handle of its connection, which
/// stays open while the tunnel lives.
pub struct H2Tunnel {
    pub send: h2::SendStream<Bytes>,
    pub recv: h2::RecvStream,
    buf: Bytes,
    shut: bool,
    _conn: Option<H2Send>,
}

impl H2Tunnel {
    /// A tunnel over a stream's two halves (a server's response stream and
    /// request body work too).
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> H2Tunnel {
        H2Tunnel {
            send,
            recv,
            buf: Bytes::new(),
            shut: false,
            _conn: None,
        }
    }

    /// RST_STREAM with `reason`.
    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => self.buf = data,
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e)))
                }
            }
        }
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "h2 stream closed",
                    )))
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)))
                }
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send
                .send_data(Bytes::new(), true)
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        }
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// Frames by hand

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// One frame's bytes; masked with `mask` when given (client to server).
pub fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A Close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame parsed from the front of a buffer (payload unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A Close frame's code, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The frame at the front of `buf` and its length in bytes, or `None`
/// while it is incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let body = buf.get(at..at + len)?;
    let payload = match mask {
        Some(k) => body.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => body.to_vec(),
    };
    Some((
        RawFrame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            masked,
            payload,
        },
        at + len,
    ))
}

/// Every whole frame in `buf`, and the bytes left over after them.
pub fn parse_frames(mut buf: &[u8]) -> (Vec<RawFrame>, Vec<u8>) {
    let mut out = Vec::new();
    while let Some((f, n)) = parse_frame(buf) {
        out.push(f);
        buf = &buf[n..];
    }
    (out, buf.to_vec())
}

/// Reads from `s` until `buf` holds a whole frame; takes it out. `None` on
/// EOF (or an error) first.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<RawFrame> {
    loop {
        if let Some((f, n)) = parse_frame(buf) {
            buf.advance(n);
            return Some(f);
        }
        if s.read_buf(buf).await.map_or(true, |r| r == 0) {
            return None;
        }
    }
}

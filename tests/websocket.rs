//! WebSocket pass-through, end to end through the real binary: the
//! handshake and what the origin sees, bytes both ways, close codes,
//! half-close, backpressure, RFC 8441 (WebSockets over HTTP/2), refusals,
//! timeouts, drain on SIGTERM, limits, multiplexing, metrics, the access
//! log and `ssegate check`.
//!
//! Protocol cases run over each client kind where they apply (HTTP/1.1
//! plain and TLS, RFC 8441 over h2c and TLS h2): `each_kind!` makes one
//! test per kind from one body, named `case::h1`, `case::h1_tls`, ….
//!
//! The origin is `common::ws::WsOrigin`: echo mode through tungstenite, or
//! raw mode where the test writes the bytes. Everything synchronises on
//! what was read; the only sleeps are the silences that timeout tests are
//! about, and those assert with bounds.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::scrape::Scrape;
use common::ws::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The authority (h2) and `Host` (HTTP/1.1) of every request.
const HOST: &str = "app.test";
/// The route that takes everything.
const ROUTE_ALL: &str = "[[route]]\npath = \"/\"\nupstream = \"app\"\n";

// ---------------------------------------------------------------------------
// Client kinds and the proxy

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    H1,
    H1Tls,
    H2c,
    H2Tls,
}

impl Kind {
    fn is_h2(self) -> bool {
        matches!(self, Kind::H2c | Kind::H2Tls)
    }
    fn is_tls(self) -> bool {
        matches!(self, Kind::H1Tls | Kind::H2Tls)
    }
    /// The status of an accepted WebSocket handshake.
    fn tunnel_status(self) -> u16 {
        if self.is_h2() {
            200
        } else {
            101
        }
    }
    /// The access log's `protocol=`.
    fn protocol(self) -> &'static str {
        if self.is_h2() {
            "h2"
        } else {
            "http1"
        }
    }
    fn scheme(self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }
}

/// One test per client kind from one `async fn body(kind: Kind)`.
macro_rules! each_kind {
    ($body:ident) => {
        each_kind!($body: h1 H1, h1_tls H1Tls, h2c H2c, h2_tls H2Tls);
    };
    ($body:ident: $($name:ident $kind:ident),+) => {
        mod $body {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$body(super::Kind::$kind).await
                }
            )+
        }
    };
}

/// A proxy with a plain and a TLS listener, and the certificate to trust.
struct Env {
    proxy: Proxy,
    cert: TestCert,
    _dir: TempDir,
}

impl Env {
    async fn start(body: String) -> Env {
        Self::start_with(ProxyConfig::new(body)).await
    }

    async fn start_with(mut cfg: ProxyConfig) -> Env {
        let dir = TempDir::new("ws-cert");
        let cert = make_cert(&dir);
        cfg.tls = Some((cert.cert_path.clone(), cert.key_path.clone()));
        Env {
            proxy: Proxy::start(cfg).await,
            cert,
            _dir: dir,
        }
    }

    /// A connection of `kind` (ALPN `http/1.1` or `h2` over TLS) and its local address.
    async fn connect(&self, kind: Kind) -> (BoxIo, SocketAddr) {
        let alpn: &[&[u8]] = if kind.is_h2() {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        };
        if kind.is_tls() {
            let tls = tls_connect(
                self.proxy.tls_addr.expect("TLS listener"),
                &self.cert.cert_pem,
                alpn,
            )
            .await;
            // Small frames (WINDOW_UPDATE, pongs) must not wait on Nagle.
            tls.get_ref().0.set_nodelay(true).unwrap();
            let local = tls.get_ref().0.local_addr().unwrap();
            (Box::new(tls), local)
        } else {
            let tcp = TcpStream::connect(self.proxy.addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let local = tcp.local_addr().unwrap();
            (Box::new(tcp), local)
        }
    }

    /// An h2 connection of `kind` (h2c or TLS h2), SETTINGS known.
    async fn h2(&self, kind: Kind) -> (H2Send, SocketAddr) {
        assert!(kind.is_h2());
        let (io, local) = self.connect(kind).await;
        (h2_client(io).await, local)
    }
}

/// A config: `read` as `[timeouts] read`, `stream_extra` in `[stream]`,
/// then `extra` (e.g. a `[websocket]` section), the upstream `app` at
/// `origin`, and `routes`.
fn config(origin: SocketAddr, read: &str, stream_extra: &str, extra: &str, routes: &str) -> String {
    config_with(
        read,
        stream_extra,
        &format!("{extra}\n[[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n{routes}"),
    )
}

/// One route `/` to `origin`, defaults otherwise.
fn basic(origin: SocketAddr) -> String {
    config(origin, "2s", "", "", ROUTE_ALL)
}

/// A WebSocket handshake's outcome, on any kind.
struct Opened {
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    /// HTTP/1.1: the key the client sent.
    key: String,
    io: BoxIo,
    /// Bytes read past the HTTP/1.1 response head.
    leftover: Vec<u8>,
    local: SocketAddr,
}

impl Opened {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A tunnel was made: `101` with the right `Sec-WebSocket-Accept` on
    /// HTTP/1.1, `:status 200` without one on h2.
    #[track_caller]
    fn assert_tunnel(&self) {
        assert_eq!(
            self.status,
            self.kind.tunnel_status(),
            "{:?} handshake answered {} {:?}",
            self.kind,
            self.status,
            self.headers
        );
        if self.kind.is_h2() {
            assert_eq!(self.header("sec-websocket-accept"), None, "h2: no accept");
        } else {
            assert_eq!(
                self.header("sec-websocket-accept"),
                Some(accept_for(&self.key).as_str())
            );
            assert!(self
                .header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
        }
    }

    async fn ws(self) -> WebSocketStream<BoxIo> {
        ws_client(self.io, self.leftover).await
    }

    /// The body of a non-tunnel answer: `Content-Length` bytes, or to EOF.
    async fn body(&mut self) -> Vec<u8> {
        let len: Option<usize> = self.header("content-length").and_then(|v| v.parse().ok());
        let mut got = std::mem::take(&mut self.leftover);
        within("a response body", async {
            let mut buf = vec![0u8; 8192];
            while len.is_none_or(|n| got.len() < n) {
                match self.io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        got
    }
}

/// A WebSocket handshake for `path` on a new connection of `kind`; on
/// HTTP/1.1 `pipelined` goes in the same write as the handshake. `extra`
/// headers go on the request (on h2, a `sec-websocket-key` among them is
/// left out: an h2 client sends none).
async fn open_with(
    env: &Env,
    kind: Kind,
    path: &str,
    extra: &[(&str, &str)],
    pipelined: &[u8],
) -> Opened {
    let (mut io, local) = env.connect(kind).await;
    if !kind.is_h2() {
        let hs = h1_handshake(&mut io, HOST, path, extra, pipelined).await;
        return Opened {
            kind,
            status: hs.status,
            headers: hs.headers,
            key: hs.key,
            io,
            leftover: hs.leftover,
            local,
        };
    }
    assert!(pipelined.is_empty(), "no pipelining over h2");
    let mut send = h2_client(io).await;
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("sec-websocket-key"))
        .copied()
        .collect();
    let (parts, tunnel) = h2_websocket_scheme(&mut send, kind.scheme(), HOST, path, &extra).await;
    Opened {
        kind,
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        key: String::new(),
        io: Box::new(tunnel),
        leftover: Vec::new(),
        local,
    }
}

async fn open(env: &Env, kind: Kind, path: &str) -> Opened {
    open_with(env, kind, path, &[], b"").await
}

/// A tunnel that must be made; its WebSocket.
async fn tunnel(env: &Env, kind: Kind, path: &str) -> WebSocketStream<BoxIo> {
    let opened = open(env, kind, path).await;
    opened.assert_tunnel();
    opened.ws().await
}

/// The next text, binary or close message the client reads (pings and
/// pongs skipped); `None` once the stream ended.
async fn next_msg(ws: &mut WebSocketStream<BoxIo>) -> Option<Message> {
    within("a message at the client", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// Reads until the client's stream ends (EOF, error or after the close
/// handshake); returns the messages read meanwhile.
async fn until_end(ws: &mut WebSocketStream<BoxIo>) -> Vec<Message> {
    let mut seen = Vec::new();
    within("the client's WebSocket to end", async {
        while let Some(Ok(m)) = ws.next().await {
            seen.push(m);
        }
    })
    .await;
    seen
}

/// Sends `text` and asserts it comes back.
async fn echo_text(ws: &mut WebSocketStream<BoxIo>, text: &str) {
    within("a send", ws.send(Message::text(text)))
        .await
        .unwrap();
    assert_eq!(next_msg(ws).await, Some(Message::text(text)));
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Deterministic bytes, different at every offset within a megabyte.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8) ^ ((i >> 8) as u8).wrapping_mul(31) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// A masked client frame.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(opcode, true, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// Reads one frame from a raw client connection.
async fn client_frame(io: &mut BoxIo, buf: &mut BytesMut) -> Option<RawFrame> {
    within("a frame at the client", read_frame(io, buf)).await
}

// ---------------------------------------------------------------------------
// 1–3. Handshake, forwarding, bytes both ways

/// The origin sees the handshake as the client sent it (key, version,
/// protocol, extensions on HTTP/1.1; a fresh valid key on h2) plus the
/// forwarding headers; the client gets the origin's accept, protocol and
/// extensions; text echoes in order, binary, ping/pong.
async fn handshake_and_echo(kind: Kind) {
    let mut origin = WsOrigin::start(OriginOptions {
        protocol: Some("superchat".into()),
        extensions: Some("x-origin-ext".into()),
        ..OriginOptions::default()
    })
    .await;
    let env = Env::start(basic(origin.addr)).await;
    let extra = [
        ("sec-websocket-protocol", "chat, superchat"),
        ("sec-websocket-extensions", "x-client-ext; a=1"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let opened = open_with(&env, kind, "/chat?room=1", &extra, b"").await;
    opened.assert_tunnel();
    assert_eq!(opened.header("sec-websocket-protocol"), Some("superchat"));
    if !kind.is_h2() {
        assert_eq!(
            opened.header("sec-websocket-extensions"),
            Some("x-origin-ext")
        );
    }
    let client_key = opened.key.clone();
    let mut session = origin.session().await;
    let req = session.request.clone();
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("GET", "/chat?room=1")
    );
    assert!(req.is_websocket(), "{req:?}");
    assert!(
        req.all("connection")
            .iter()
            .any(|c| c.to_ascii_lowercase().contains("upgrade")),
        "{req:?}"
    );
    let key = req.header("sec-websocket-key").expect("a key upstream");
    if kind.is_h2() {
        assert!(
            valid_key(key),
            "ssegate's key {key:?} is not 16 bytes of base64"
        );
    } else {
        assert_eq!(key, client_key, "the client's key unchanged");
    }
    assert_eq!(req.header("sec-websocket-version"), Some("13"));
    assert_eq!(
        req.header("sec-websocket-protocol"),
        Some("chat, superchat")
    );
    assert_eq!(
        req.header("sec-websocket-extensions"),
        Some("x-client-ext; a=1")
    );
    assert_eq!(
        req.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(req.header("x-forwarded-proto"), Some(kind.scheme()));
    assert_eq!(req.header("x-forwarded-host"), Some(HOST));
    assert_eq!(req.header("host"), Some(HOST));

    let mut ws = opened.ws().await;
    for i in 0..10 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let want = Message::text(format!("message {i}"));
        assert_eq!(next_msg(&mut ws).await, Some(want.clone()));
        assert_eq!(session.next_message().await, want);
    }
    let bin = pattern(1000, 7);
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::Binary(bin)));
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    let pong = within("a pong", ws.next()).await;
    assert_eq!(
        pong.map(|r| r.unwrap()),
        Some(Message::Pong(Bytes::from_static(b"p1")))
    );
}
each_kind!(handshake_and_echo);

/// A WebSocket goes to the origin over a new TCP connection, never over the
/// kept-alive one an ordinary request left in the pool.
async fn fresh_upstream_connection(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (io, _) = env.connect(kind).await;
    if kind.is_h2() {
        let mut send = h2_client(io).await;
        let (parts, mut body) = h2_get(&mut send, HOST, "/ordinary").await;
        assert_eq!(parts.status, 200);
        let mut got = Vec::new();
        h2_read_until(&mut body, &mut got, b"ok").await;
    } else {
        let mut c = H1Client::over(io);
        c.get("/ordinary", &[]).await;
        let head = c.response_head().await;
        assert_eq!(head.status, 200);
        assert_eq!(&c.body(&head).await[..], b"ok");
    }
    assert_eq!(
        origin.accepted(),
        1,
        "one connection for the ordinary request"
    );
    let mut ws = tunnel(&env, kind, "/ws").await;
    let session = origin.session().await;
    assert_eq!(session.request.target, "/ws");
    assert_eq!(
        origin.accepted(),
        2,
        "the WebSocket must get a fresh upstream connection"
    );
    echo_text(&mut ws, "on its own connection").await;
}
each_kind!(fresh_upstream_connection);

/// A 16 MiB binary message in 1 MiB fragments each way arrives whole and
/// intact, and text after it still in order.
async fn large_fragmented_messages(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let mut ws = tunnel(&env, kind, "/big").await;
    let mut session = origin.session().await;
    let big = pattern(16 << 20, 3);
    within(
        "16 MiB to the proxy",
        send_binary(&mut ws, big.clone(), 1 << 20),
    )
    .await
    .unwrap();
    ws.send(Message::text("after")).await.unwrap();
    match session.next_message().await {
        Message::Binary(b) => assert!(b == big, "origin got {} bytes, not the message", b.len()),
        other => panic!("origin got {other:?}"),
    }
    match next_msg(&mut ws).await {
        Some(Message::Binary(b)) => {
            assert!(b == big, "client got {} bytes, not the message", b.len())
        }
        other => panic!("client got {other:?}"),
    }
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("after")));
}
each_kind!(large_fragmented_messages);

/// A client-initiated close (1000, and 4000 with a reason) reaches the
/// origin with its code and reason, and the origin's echo reaches the
/// client; then both ends see the end.
async fn client_close_passes_both_ways(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    for (code, reason) in [(1000, "bye"), (4000, "custom reason")] {
        let mut ws = tunnel(&env, kind, "/close").await;
        let mut session = origin.session().await;
        echo_text(&mut ws, "before close").await;
        assert_eq!(session.next_message().await, Message::text("before close"));
        within("the close", ws.send(close_msg(code, reason)))
            .await
            .unwrap();
        assert_eq!(session.next_message().await, close_msg(code, reason));
        assert_eq!(next_msg(&mut ws).await, Some(close_msg(code, reason)));
        until_end(&mut ws).await;
        let (_, end) = session.ended().await;
        assert!(matches!(end, OriginEvent::End), "origin: {end:?}");
    }
}
each_kind!(client_close_passes_both_ways);

/// An origin-initiated close (1000, and 4000 with a reason) reaches the
/// client, and the client's reply reaches the origin.
async fn origin_close_passes_both_ways(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    for (code, reason) in [(1000, "done"), (4000, "origin says bye")] {
        let mut ws = tunnel(&env, kind, "/close").await;
        let mut session = origin.session().await;
        echo_text(&mut ws, "before close").await;
        assert_eq!(session.next_message().await, Message::text("before close"));
        session.send.send(close_msg(code, reason)).unwrap();
        assert_eq!(next_msg(&mut ws).await, Some(close_msg(code, reason)));
        // tungstenite answers with the same code and reason.
        until_end(&mut ws).await;
        assert_eq!(session.next_message().await, close_msg(code, reason));
    }
}
each_kind!(origin_close_passes_both_ways);

/// Frames the client wrote in the same write as its handshake arrive.
async fn client_frames_pipelined_with_handshake(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let mut early = masked(OP_TEXT, b"early");
    early.extend(masked(OP_BINARY, &pattern(3000, 1)));
    let opened = open_with(&env, kind, "/early", &[], &early).await;
    opened.assert_tunnel();
    let mut session = origin.session().await;
    assert_eq!(session.next_message().await, Message::text("early"));
    assert_eq!(
        session.next_message().await,
        Message::Binary(pattern(3000, 1))
    );
    let mut ws = opened.ws().await;
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("early")));
    assert_eq!(
        next_msg(&mut ws).await,
        Some(Message::Binary(pattern(3000, 1)))
    );
    echo_text(&mut ws, "later").await;
}
each_kind!(client_frames_pipelined_with_handshake: h1 H1, h1_tls H1Tls);

/// Frames the origin wrote in the same write as its 101 arrive.
async fn origin_frames_in_the_101_write(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let env = Env::start(basic(origin.addr)).await;
    let env_ref = &env;
    let client = async move { open(env_ref, kind, "/early").await };
    let server = async {
        let mut conn = origin.raw_conn().await;
        let mut bytes = conn.switching(&[]);
        bytes.extend(frame(OP_TEXT, true, b"hello from origin", None));
        bytes.extend(frame(OP_BINARY, true, &pattern(5000, 2), None));
        conn.write(&bytes).await;
        conn
    };
    let (opened, _conn) = tokio::join!(client, server);
    opened.assert_tunnel();
    let mut ws = opened.ws().await;
    assert_eq!(
        next_msg(&mut ws).await,
        Some(Message::text("hello from origin"))
    );
    assert_eq!(
        next_msg(&mut ws).await,
        Some(Message::Binary(pattern(5000, 2)))
    );
}
each_kind!(origin_frames_in_the_101_write);

// ---------------------------------------------------------------------------
// 2. Answers that are not a valid 101

/// Opens `path` while the raw origin answers with `answer(conn)`.
async fn against_raw(
    env: &Env,
    origin: &mut WsOrigin,
    kind: Kind,
    path: &str,
    answer: impl FnOnce(&RawConn) -> Vec<u8>,
) -> (Opened, RawConn) {
    let client = open(env, kind, path);
    let server = async {
        let mut conn = origin.raw_conn().await;
        let bytes = answer(&conn);
        conn.write(&bytes).await;
        conn
    };
    tokio::join!(client, server)
}

/// A 101 without `Upgrade`, or with a wrong `Sec-WebSocket-Accept`: 502.
async fn bad_101_gives_502(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let env = Env::start(basic(origin.addr)).await;
    let (opened, _c) = against_raw(&env, &mut origin, kind, "/no-upgrade", |c| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
            c.accept()
        )
        .into_bytes()
    })
    .await;
    assert_eq!(
        opened.status, 502,
        "101 without Upgrade: {:?}",
        opened.headers
    );
    let (opened, _c) = against_raw(&env, &mut origin, kind, "/wrong-accept", |_| {
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec()
    })
    .await;
    assert_eq!(opened.status, 502, "wrong accept: {:?}", opened.headers);
}
each_kind!(bad_101_gives_502);

/// A 403 with a body, a 404 and a redirect pass through as ordinary responses.
async fn other_answers_pass_through(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let env = Env::start(basic(origin.addr)).await;
    let answers: [(&str, u16, &[u8], Option<&str>); 3] = [
        (
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\ncontent-type: text/plain\r\n\r\nforbidden by origin",
            403,
            b"forbidden by origin",
            None,
        ),
        (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nno socket",
            404,
            b"no socket",
            None,
        ),
        (
            "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
            302,
            b"",
            Some("/elsewhere"),
        ),
    ];
    for (raw, status, body, location) in answers {
        let (mut opened, _c) = against_raw(&env, &mut origin, kind, "/answer", |_| {
            raw.as_bytes().to_vec()
        })
        .await;
        assert_eq!(opened.status, status, "{raw:?}: {:?}", opened.headers);
        assert_eq!(opened.header("location"), location);
        assert_eq!(opened.body().await, body, "{raw:?}");
    }
}
each_kind!(other_answers_pass_through);

// ---------------------------------------------------------------------------
// 4. Half-close

/// The client ends its side (TCP/TLS shutdown, or END_STREAM on h2): the
/// origin reads the client's last frame and then EOF, and what the origin
/// writes afterwards still reaches the client.
async fn half_close(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let env = Env::start(basic(origin.addr)).await;
    let (opened, mut conn) =
        against_raw(&env, &mut origin, kind, "/half", |c| c.switching(&[])).await;
    opened.assert_tunnel();
    let mut io = opened.io;
    let mut buf = BytesMut::from(&opened.leftover[..]);
    io.write_all(&masked(OP_TEXT, b"last words")).await.unwrap();
    within("the client's shutdown", io.shutdown())
        .await
        .unwrap();
    let got = conn.read_to_end().await;
    let (frames, rest) = parse_frames(&got);
    assert_eq!(rest, b"", "a cut frame at the origin");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0].opcode, frames[0].payload.as_slice()),
        (OP_TEXT, &b"last words"[..])
    );
    let mut reply = frame(OP_TEXT, true, b"reply after EOF", None);
    reply.extend(frame(OP_CLOSE, true, &close_payload(1000, ""), None));
    conn.write(&reply).await;
    let f = client_frame(&mut io, &mut buf).await.expect("the reply");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"reply after EOF"[..])
    );
    let f = client_frame(&mut io, &mut buf).await.expect("the close");
    assert_eq!(f.close_code(), Some(1000));
}
each_kind!(half_close);

// ---------------------------------------------------------------------------
// 5. Backpressure

/// A client that stops reading while the origin writes 1 MiB frames as
/// fast as it can (256 MiB in all): the origin's writes stall, ssegate's
/// memory stays bounded, and once the client reads, the frames arrive intact.
async fn backpressure(kind: Kind) {
    const FRAME: usize = 1 << 20;
    let mut origin = WsOrigin::raw().await;
    let env = Env::start(basic(origin.addr)).await;
    let (opened, mut conn) =
        against_raw(&env, &mut origin, kind, "/flood", |c| c.switching(&[])).await;
    opened.assert_tunnel();
    let pid = env.proxy.child.id();
    let rss_before = rss_kib(pid);
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        for i in 0..256u64 {
            let f = frame(OP_BINARY, true, &pattern(FRAME, i as u8), None);
            if conn.stream.write_all(&f).await.is_err() {
                return;
            }
            w.fetch_add(f.len() as u64, Ordering::SeqCst);
        }
    });
    // Stalled: the count has not moved for 500 ms (the stall is what is
    // tested, so it is watched over time; bounded by WAIT).
    let stalled_at = within("the origin's writes to stall", async {
        let mut last = written.load(Ordering::SeqCst);
        let mut still = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = written.load(Ordering::SeqCst);
            if now == last {
                still += 1;
                if still == 5 {
                    return now;
                }
            } else {
                (last, still) = (now, 0);
            }
        }
    })
    .await;
    let growth = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        stalled_at < 64 << 20,
        "the origin got {stalled_at} bytes accepted with a client that reads nothing"
    );
    assert!(
        growth < 32 * 1024,
        "ssegate grew by {growth} KiB while the client read nothing"
    );
    // Then the client reads: 8 whole frames, intact and in order.
    let mut io = opened.io;
    let mut buf = BytesMut::from(&opened.leftover[..]);
    for i in 0..8u8 {
        let f = client_frame(&mut io, &mut buf).await.expect("a frame");
        assert_eq!(f.opcode, OP_BINARY);
        assert!(f.payload == pattern(FRAME, i), "frame {i} corrupted");
    }
    writer.abort();
}
each_kind!(backpressure: h1 H1, h2c H2c);

// ---------------------------------------------------------------------------
// 6. RFC 8441

/// The listener's SETTINGS carry ENABLE_CONNECT_PROTOCOL by default, and
/// not with `[websocket] h2 = false` nor when no route allows WebSockets.
async fn extended_connect_advertised(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let nows = "[[route]]\npath = \"/\"\nupstream = \"app\"\nwebsocket = false\n";
    for (extra, routes, want) in [
        ("", ROUTE_ALL, true),
        ("[websocket]\nh2 = true\n", ROUTE_ALL, true),
        ("[websocket]\nh2 = false\n", ROUTE_ALL, false),
        ("", nows, false),
    ] {
        let env = Env::start(config(origin.addr, "2s", "", extra, routes)).await;
        let (send, _) = env.h2(kind).await;
        assert_eq!(
            send.is_extended_connect_protocol_enabled(),
            want,
            "ENABLE_CONNECT_PROTOCOL with {extra:?} and {routes:?}"
        );
    }
}
each_kind!(extended_connect_advertised: h2c H2c, h2_tls H2Tls);

/// RST_STREAM from the client closes the origin's connection.
async fn h2_reset_closes_the_origin(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (mut send, _) = env.h2(kind).await;
    let (parts, mut t) = h2_websocket_scheme(&mut send, kind.scheme(), HOST, "/rst", &[]).await;
    assert_eq!(parts.status, 200);
    let mut session = origin.session().await;
    {
        let mut ws = ws_client(&mut t, Vec::new()).await;
        ws.send(Message::text("x")).await.unwrap();
        let back = within("the echo", ws.next()).await;
        assert_eq!(back.map(|r| r.unwrap()), Some(Message::text("x")));
    }
    t.reset(h2::Reason::CANCEL);
    let (_, end) = session.ended().await;
    assert!(
        matches!(end, OriginEvent::End | OriginEvent::Error(_)),
        "{end:?}"
    );
    // The connection itself is fine: another tunnel on it works.
    let (parts, t2) = h2_websocket_scheme(&mut send, kind.scheme(), HOST, "/again", &[]).await;
    assert_eq!(parts.status, 200);
    let mut ws = ws_client(Box::new(t2) as BoxIo, Vec::new()).await;
    echo_text(&mut ws, "again").await;
}
each_kind!(h2_reset_closes_the_origin: h2c H2c, h2_tls H2Tls);

/// An origin 403 to an extended CONNECT passes through as `:status 403`
/// (covered for every kind by `other_answers_pass_through`); an extended
/// CONNECT whose `:protocol` is not websocket gets 501 and reaches nobody.
async fn h2_unknown_protocol_is_501(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (mut send, _) = env.h2(kind).await;
    assert!(
        send.is_extended_connect_protocol_enabled(),
        "ENABLE_CONNECT_PROTOCOL not advertised"
    );
    let (parts, _t) = h2_extended_connect(&mut send, kind.scheme(), HOST, "/x", "foo", &[])
        .await
        .expect("an answer, not a reset");
    assert_eq!(parts.status, 501);
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}
each_kind!(h2_unknown_protocol_is_501: h2c H2c, h2_tls H2Tls);

/// 1,000 extended CONNECTs on one h2c connection: each is answered (or
/// reset) within WAIT, the proxy stays up, and a fresh connection still
/// gets a WebSocket through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_flood_of_extended_connects() {
    let origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (send, _) = env.h2(Kind::H2c).await;
    assert!(send.is_extended_connect_protocol_enabled());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                WAIT,
                h2_extended_connect(
                    &mut send,
                    "http",
                    HOST,
                    &format!("/flood/{i}"),
                    "websocket",
                    &[],
                ),
            )
            .await;
            match r {
                Err(_) => None,
                Ok(Ok((parts, _t))) => Some(parts.status.as_u16()),
                Ok(Err(_)) => Some(0),
            }
        }));
    }
    let mut hung = 0;
    for t in tasks {
        if t.await.unwrap().is_none() {
            hung += 1;
        }
    }
    assert_eq!(hung, 0, "{hung} extended CONNECTs hung past WAIT");
    drop(send);
    let mut env = env;
    assert!(
        env.proxy.child.try_wait().unwrap().is_none(),
        "ssegate exited"
    );
    let mut ws = tunnel(&env, Kind::H2c, "/after-flood").await;
    echo_text(&mut ws, "still here").await;
}

// ---------------------------------------------------------------------------
// 7. Refusals

/// An upgrade (or extended CONNECT) on a route with `websocket = false`: 403,
/// and the origin sees nothing.
async fn refused_where_websocket_is_off(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let routes = format!(
        "[[route]]\npath = \"/nows/\"\nupstream = \"app\"\nwebsocket = false\n\n{ROUTE_ALL}"
    );
    let env = Env::start(config(origin.addr, "2s", "", "", &routes)).await;
    let opened = open(&env, kind, "/nows/chat").await;
    assert_eq!(opened.status, 403, "{:?}", opened.headers);
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}
each_kind!(refused_where_websocket_is_off);

/// HTTP/1.1 without a `Sec-WebSocket-Key`, or with one that is not 16
/// bytes of base64: 400, and the origin sees nothing.
async fn bad_key_is_400(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    for key in ["", "not-a-key", "dGhlIHNhbXBsZSBub25jZQ"] {
        let opened = open_with(&env, kind, "/key", &[("sec-websocket-key", key)], b"").await;
        assert_eq!(opened.status, 400, "key {key:?}: {:?}", opened.headers);
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}
each_kind!(bad_key_is_400: h1 H1, h1_tls H1Tls);

/// `Upgrade: foo` is an ordinary request: answered, and without `Upgrade`
/// at the origin.
async fn other_upgrade_is_ordinary(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (io, _) = env.connect(kind).await;
    let mut c = H1Client::over(io);
    c.get("/foo", &[("upgrade", "foo"), ("connection", "upgrade")])
        .await;
    let head = c.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(&c.body(&head).await[..], b"ok");
    let seen = origin.requests_for("/foo");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), None, "{:?}", seen[0]);
}
each_kind!(other_upgrade_is_ordinary: h1 H1, h1_tls H1Tls);

// ---------------------------------------------------------------------------
// 8. Timeouts

/// `[timeouts] read = "300ms"` never cuts a tunnel: silent for 1 s, it still echoes.
async fn read_timeout_never_cuts_a_tunnel(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let env = Env::start(config(origin.addr, "300ms", "", "", ROUTE_ALL)).await;
    let mut ws = tunnel(&env, kind, "/quiet").await;
    let _session = origin.session().await;
    echo_text(&mut ws, "before").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    echo_text(&mut ws, "after a silent second").await;
}
each_kind!(read_timeout_never_cuts_a_tunnel: h1 H1, h2c H2c);

/// Reads the proxy's Close 1001 on a tunnel left silent, then the end;
/// returns how long after `since` the Close came.
async fn closed_going_away(ws: &mut WebSocketStream<BoxIo>, since: Instant) -> Duration {
    let m = next_msg(ws).await;
    let at = since.elapsed();
    match m {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001, "{f:?}"),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    until_end(ws).await;
    at
}

/// `[websocket] idle_timeout = "300ms"`: a silent tunnel gets Close 1001,
/// then the connection ends, between 250 ms and 3 s after its last frame.
async fn idle_timeout_closes_a_silent_tunnel(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let cfg = config(
        origin.addr,
        "2s",
        "",
        "[websocket]\nidle_timeout = \"300ms\"\n",
        ROUTE_ALL,
    );
    let env = Env::start(cfg).await;
    let mut ws = tunnel(&env, kind, "/idle").await;
    let _session = origin.session().await;
    echo_text(&mut ws, "one").await;
    let at = closed_going_away(&mut ws, Instant::now()).await;
    assert!(
        at >= Duration::from_millis(250) && at < Duration::from_secs(3),
        "closed {at:?} after the last frame"
    );
}
each_kind!(idle_timeout_closes_a_silent_tunnel);

/// Traffic (a ping every 100 ms) keeps a tunnel with a 300 ms idle timeout
/// open past 1 s.
async fn traffic_keeps_a_tunnel_open(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let cfg = config(
        origin.addr,
        "2s",
        "",
        "[websocket]\nidle_timeout = \"300ms\"\n",
        ROUTE_ALL,
    );
    let env = Env::start(cfg).await;
    let mut ws = tunnel(&env, kind, "/busy").await;
    let _session = origin.session().await;
    for i in 0..12u8 {
        ws.send(Message::Ping(Bytes::from(vec![i]))).await.unwrap();
        let pong = within("a pong", ws.next()).await;
        assert_eq!(
            pong.map(|r| r.unwrap()),
            Some(Message::Pong(Bytes::from(vec![i]))),
            "ping {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo_text(&mut ws, "still open").await;
}
each_kind!(traffic_keeps_a_tunnel_open: h1 H1, h2c H2c);

/// `websocket_idle_timeout` on a route overrides `[websocket] idle_timeout`.
async fn route_idle_timeout_overrides(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let routes = format!(
        "[[route]]\npath = \"/long/\"\nupstream = \"app\"\nwebsocket_idle_timeout = \"1h\"\n\n{ROUTE_ALL}"
    );
    let cfg = config(
        origin.addr,
        "2s",
        "",
        "[websocket]\nidle_timeout = \"300ms\"\n",
        &routes,
    );
    let env = Env::start(cfg).await;
    let mut long = tunnel(&env, kind, "/long/a").await;
    let _s1 = origin.session().await;
    let mut short = tunnel(&env, kind, "/short").await;
    let _s2 = origin.session().await;
    let since = Instant::now();
    closed_going_away(&mut short, since).await;
    // The long one has been as silent, and then some.
    tokio::time::sleep(Duration::from_millis(400)).await;
    echo_text(&mut long, "overridden").await;
}
each_kind!(route_idle_timeout_overrides: h1 H1, h2c H2c);

// ---------------------------------------------------------------------------
// 9. Drain on SIGTERM

const DRAIN: &str = "drain_window = \"300ms\"";

/// SIGTERM while the client is mid-frame: the client gets Close 1001 (its
/// direction is at a boundary), finishes its frame, and the origin gets the
/// whole frame and then Close 1001, never a cut frame.
async fn drain_waits_for_the_clients_frame(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let mut env = Env::start(config(origin.addr, "2s", DRAIN, "", ROUTE_ALL)).await;
    let (opened, mut conn) =
        against_raw(&env, &mut origin, kind, "/drain", |c| c.switching(&[])).await;
    opened.assert_tunnel();
    let mut io = opened.io;
    let mut buf = BytesMut::from(&opened.leftover[..]);
    let payload = pattern(64 * 1024, 9);
    let whole = masked(OP_BINARY, &payload);
    let half = whole.len() / 2;
    io.write_all(&whole[..half]).await.unwrap();
    let mut at_origin = conn.read_at_least(half).await;
    assert_eq!(at_origin.len(), half);
    env.proxy.signal("TERM");
    let f = client_frame(&mut io, &mut buf)
        .await
        .expect("a Close at the client");
    assert_eq!(f.close_code(), Some(1001), "{f:?}");
    io.write_all(&whole[half..]).await.unwrap();
    let mut obuf = BytesMut::new();
    obuf.extend_from_slice(&at_origin.split_off(0));
    let f = within(
        "the whole frame at the origin",
        read_frame(&mut conn.stream, &mut obuf),
    )
    .await
    .expect("the frame");
    assert_eq!(f.opcode, OP_BINARY);
    assert!(
        f.fin && f.payload == payload,
        "the frame arrived cut or changed"
    );
    let f = within(
        "a Close at the origin",
        read_frame(&mut conn.stream, &mut obuf),
    )
    .await
    .expect("a Close");
    assert_eq!(f.close_code(), Some(1001), "{f:?}");
    env.proxy.wait_exit().await;
}
each_kind!(drain_waits_for_the_clients_frame: h1 H1, h2c H2c);

/// SIGTERM while the origin is mid-frame: the origin gets Close 1001, finishes
/// its frame, and the client gets the whole frame and then Close 1001.
async fn drain_waits_for_the_origins_frame(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let mut env = Env::start(config(origin.addr, "2s", DRAIN, "", ROUTE_ALL)).await;
    let (opened, mut conn) =
        against_raw(&env, &mut origin, kind, "/drain", |c| c.switching(&[])).await;
    opened.assert_tunnel();
    let mut io = opened.io;
    let payload = pattern(64 * 1024, 5);
    let whole = frame(OP_BINARY, true, &payload, None);
    let half = whole.len() / 2;
    conn.write(&whole[..half]).await;
    let mut cbuf = BytesMut::from(&opened.leftover[..]);
    within("half a frame at the client", async {
        while cbuf.len() < half {
            assert!(io.read_buf(&mut cbuf).await.unwrap() > 0, "closed");
        }
    })
    .await;
    env.proxy.signal("TERM");
    let mut obuf = conn.leftover.split();
    let f = within(
        "a Close at the origin",
        read_frame(&mut conn.stream, &mut obuf),
    )
    .await
    .expect("a Close");
    assert_eq!(f.close_code(), Some(1001), "{f:?}");
    conn.write(&whole[half..]).await;
    let f = client_frame(&mut io, &mut cbuf).await.expect("the frame");
    assert_eq!(f.opcode, OP_BINARY);
    assert!(
        f.fin && f.payload == payload,
        "the frame arrived cut or changed"
    );
    let f = client_frame(&mut io, &mut cbuf).await.expect("a Close");
    assert_eq!(f.close_code(), Some(1001), "{f:?}");
    env.proxy.wait_exit().await;
}
each_kind!(drain_waits_for_the_origins_frame: h1 H1, h2c H2c);

/// A tunnel still mid-frame at the end of the grace period (2 s) is cut:
/// both connections close, not before 1.5 s, and the origin never got
/// anything after the half frame.
async fn drain_cuts_a_tunnel_mid_frame_at_grace_end(kind: Kind) {
    let mut origin = WsOrigin::raw().await;
    let mut env = Env::start(config(origin.addr, "2s", DRAIN, "", ROUTE_ALL)).await;
    let (opened, mut conn) =
        against_raw(&env, &mut origin, kind, "/stuck", |c| c.switching(&[])).await;
    opened.assert_tunnel();
    let mut io = opened.io;
    let whole = masked(OP_BINARY, &pattern(64 * 1024, 4));
    let half = whole.len() / 2;
    io.write_all(&whole[..half]).await.unwrap();
    let mut at_origin = conn.read_at_least(half).await;
    let since = Instant::now();
    env.proxy.signal("TERM");
    within("the client connection to be cut", async {
        let mut sink = vec![0u8; 4096];
        while io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let cut_at = since.elapsed();
    at_origin.extend(conn.read_to_end().await);
    assert!(
        cut_at >= Duration::from_millis(1500) && cut_at < Duration::from_secs(6),
        "cut {cut_at:?} after SIGTERM (grace period 2s)"
    );
    assert_eq!(
        at_origin,
        whole[..half],
        "the origin got something after the half frame"
    );
    env.proxy.wait_exit().await;
}
each_kind!(drain_cuts_a_tunnel_mid_frame_at_grace_end: h1 H1, h2c H2c);

// ---------------------------------------------------------------------------
// 10. Limits

/// `[limits] max_connections = 3`: h2 tunnels count as connections; once
/// the limit is reached an extended CONNECT gets 503, and a tunnel that
/// ends frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_tunnels_count_against_max_connections() {
    let mut origin = WsOrigin::echo().await;
    let body = config(
        origin.addr,
        "2s",
        "",
        "[limits]\nmax_connections = 3\n",
        ROUTE_ALL,
    );
    let env = Env::start(body).await;
    let (mut send, _) = env.h2(Kind::H2c).await;
    assert!(send.is_extended_connect_protocol_enabled());
    let mut open_tunnels = Vec::new();
    let mut refused = None;
    for i in 0..4 {
        let (parts, t) = h2_extended_connect(
            &mut send,
            "http",
            HOST,
            &format!("/t/{i}"),
            "websocket",
            &[],
        )
        .await
        .expect("an answer");
        match parts.status.as_u16() {
            200 => {
                let session = origin.session().await;
                open_tunnels.push((t, session));
            }
            503 => {
                refused = Some(i);
                break;
            }
            s => panic!("tunnel {i}: {s}"),
        }
    }
    let refused = refused.expect("no 503 within 4 tunnels under max_connections = 3");
    assert!(refused >= 2, "refused already at tunnel {refused}");
    // One ends; a new one is let in.
    let (t, mut session) = open_tunnels.pop().unwrap();
    {
        let mut ws = ws_client(Box::new(t) as BoxIo, Vec::new()).await;
        ws.close(None).await.unwrap();
        until_end(&mut ws).await;
    }
    session.ended().await;
    within("a tunnel to be let in again", async {
        loop {
            let (parts, t) =
                h2_extended_connect(&mut send, "http", HOST, "/t/again", "websocket", &[])
                    .await
                    .expect("an answer");
            if parts.status == 200 {
                return t;
            }
            assert_eq!(parts.status, 503);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 11. Multiplexing

/// 100 WebSockets and 100 event streams at once on one h2 connection: every
/// WebSocket echoes and every stream gets its three events.
async fn multiplexing(kind: Kind) {
    let origin = WsOrigin::echo().await;
    let env = Env::start(basic(origin.addr)).await;
    let (send, _) = env.h2(kind).await;
    assert!(send.is_extended_connect_protocol_enabled());
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut s = send.clone();
        tasks.push(tokio::spawn(async move {
            let (parts, t) =
                h2_websocket_scheme(&mut s, kind.scheme(), HOST, &format!("/ws/{i}"), &[]).await;
            assert_eq!(parts.status, 200, "WebSocket {i}");
            let mut ws = ws_client(Box::new(t) as BoxIo, Vec::new()).await;
            echo_text(&mut ws, &format!("hello {i}")).await;
        }));
        let s = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("{}://{HOST}/events/{i}", kind.scheme()))
                .header("accept", "text/event-stream")
                .body(())
                .unwrap();
            let mut ready = within("h2 ready", s.ready()).await.unwrap();
            let (resp, _) = ready.send_request(req, true).unwrap();
            let resp = within("an event stream", resp).await.unwrap();
            assert_eq!(resp.status(), 200, "stream {i}");
            let mut body = resp.into_body();
            let mut got = Vec::new();
            h2_read_until(&mut body, &mut got, b"data: tick 3\n\n").await;
            assert!(find(&got, b"data: tick 1\n\n").is_some(), "{got:?}");
        }));
    }
    within("200 streams on one connection", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}
each_kind!(multiplexing: h2c H2c, h2_tls H2Tls);

// ---------------------------------------------------------------------------
// 12. Metrics

async fn scrape(proxy: &Proxy) -> Scrape {
    let mut c = H1Client::connect(proxy.admin_addr.expect("admin listener")).await;
    c.get("/metrics", &[]).await;
    let head = c.response_head().await;
    assert_eq!(head.status, 200);
    Scrape::parse(std::str::from_utf8(&c.body(&head).await).expect("UTF-8"))
}

/// Scrapes until `done` holds; fails with the last scrape after WAIT.
async fn scrape_until(proxy: &Proxy, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let every = Duration::from_millis(20);
    poll_until(what, WAIT, every, || scrape(proxy), done).await
}

const OPEN: &str = "ssegate_websockets_open";
const BYTES: &str = "ssegate_websocket_bytes_total";
const ENDS: &str = "ssegate_websocket_ends_total";

/// The open gauge while a tunnel lives, bytes per direction, and the end
/// reason of a client close, an origin close and an idle timeout.
async fn metrics(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let routes = "[[route]]\npath = \"/c/\"\nupstream = \"app\"\n\n\
                  [[route]]\npath = \"/o/\"\nupstream = \"app\"\n\n\
                  [[route]]\npath = \"/i/\"\nupstream = \"app\"\nwebsocket_idle_timeout = \"300ms\"\n";
    let mut cfg = ProxyConfig::new(config(origin.addr, "2s", "", "", routes));
    cfg.admin = true;
    let env = Env::start_with(cfg).await;
    let p = &env.proxy;
    let bin = pattern(1000, 8);

    // Client close on /c/.
    let mut ws = tunnel(&env, kind, "/c/x").await;
    let mut session = origin.session().await;
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::Binary(bin.clone())));
    scrape_until(p, "the open gauge at 1", |s| {
        s.get(OPEN, &[("route", "/c/")]) == 1.0
    })
    .await;
    ws.close(None).await.unwrap();
    until_end(&mut ws).await;
    session.ended().await;
    let s = scrape_until(p, "the client close counted", |s| {
        s.get(OPEN, &[("route", "/c/")]) == 0.0
            && s.get(ENDS, &[("route", "/c/"), ("reason", "client_closed")]) == 1.0
    })
    .await;
    for dir in ["to_upstream", "to_client"] {
        let b = s.get(BYTES, &[("route", "/c/"), ("direction", dir)]);
        assert!(b >= 1000.0, "{dir}: {b} bytes");
    }
    assert_eq!(s.total(ENDS), 1.0, "{s:#?}");

    // Origin close on /o/.
    let mut ws = tunnel(&env, kind, "/o/x").await;
    let session = origin.session().await;
    session.send.send(close_msg(1000, "")).unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(Message::Close(_))));
    until_end(&mut ws).await;
    scrape_until(p, "the origin close counted", |s| {
        s.get(OPEN, &[("route", "/o/")]) == 0.0
            && s.get(ENDS, &[("route", "/o/"), ("reason", "upstream_closed")]) == 1.0
    })
    .await;

    // Idle timeout on /i/.
    let mut ws = tunnel(&env, kind, "/i/x").await;
    let _session = origin.session().await;
    closed_going_away(&mut ws, Instant::now()).await;
    let s = scrape_until(p, "the idle timeout counted", |s| {
        s.get(OPEN, &[("route", "/i/")]) == 0.0
            && s.get(ENDS, &[("route", "/i/"), ("reason", "idle_timeout")]) == 1.0
    })
    .await;
    assert_eq!(s.total(ENDS), 3.0, "{s:#?}");
    assert_eq!(s.total(OPEN), 0.0);
}
each_kind!(metrics: h1 H1, h2c H2c);

// ---------------------------------------------------------------------------
// 13. Access log

/// One `tunnel end` line per tunnel, with every field.
async fn access_log(kind: Kind) {
    let mut origin = WsOrigin::echo().await;
    let mut cfg = ProxyConfig::new(basic(origin.addr));
    cfg.log = Some("warn,ssegate::access=info".into());
    let env = Env::start_with(cfg).await;
    let opened = open(&env, kind, "/logged").await;
    opened.assert_tunnel();
    let client = opened.local.to_string();
    let mut ws = opened.ws().await;
    let mut session = origin.session().await;
    let bin = pattern(1000, 6);
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::Binary(bin)));
    ws.close(None).await.unwrap();
    until_end(&mut ws).await;
    session.ended().await;
    let start = Instant::now();
    let line = loop {
        let text = env.proxy.log_text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("tunnel end") && l.contains(&format!("client={client} ")))
            .collect();
        if let [one] = lines.as_slice() {
            break one.to_string();
        }
        assert!(
            lines.len() < 2,
            "more than one line for the tunnel:\n{text}"
        );
        assert!(start.elapsed() < WAIT, "no `tunnel end` line:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fields: Vec<&str> = line
        .split_at(line.find("tunnel end").unwrap())
        .1
        .split_whitespace()
        .collect();
    let field = |k: &str| {
        fields
            .iter()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {line}"))
            .to_string()
    };
    assert_eq!(&fields[..2], ["tunnel", "end"], "{line}");
    assert_eq!(field("route"), "/", "{line}");
    assert_eq!(field("upstream"), "app", "{line}");
    assert_eq!(field("client"), client, "{line}");
    assert_eq!(field("protocol"), kind.protocol(), "{line}");
    let d = field("duration");
    let secs = d.strip_suffix('s').expect("duration in s");
    assert!(
        secs.split_once('.').is_some_and(|(_, f)| f.len() == 3) && secs.parse::<f64>().is_ok(),
        "duration={d} in {line}"
    );
    for k in ["to_upstream", "to_client"] {
        let n: u64 = field(k).parse().expect(k);
        assert!(n >= 1000, "{k}={n} in {line}");
    }
    assert_eq!(field("end"), "client_closed", "{line}");
}
each_kind!(access_log: h1 H1, h2c H2c);

// ---------------------------------------------------------------------------
// 14. ssegate check

async fn check(text: &str) -> (Option<i32>, String, String, String) {
    let dir = TempDir::new("ws-check");
    let path = dir.0.join("ws.toml");
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let out = within(
        "ssegate check",
        tokio::process::Command::new(bin())
            .args(["check", "-c", &file])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        file,
    )
}

/// The summary shows per route whether WebSockets are on and the effective
/// idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_summarises_websocket_routes() {
    let text = r#"[[listener]]
address = "127.0.0.1:18080"

[websocket]
idle_timeout = "10m"

[[upstream]]
name = "app"
servers = ["127.0.0.1:3000"]

[[route]]
path = "/long/"
upstream = "app"
websocket_idle_timeout = "45m"

[[route]]
path = "/nows/"
upstream = "app"
websocket = false

[[route]]
path = "/"
upstream = "app"
"#;
    let (code, stdout, stderr, _) = check(text).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let route = |path: &str| -> String {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("* {path} -> app")))
            .unwrap_or_else(|| panic!("no line for route {path}:\n{stdout}"));
        let at = line
            .find("websocket")
            .unwrap_or_else(|| panic!("route {path}: no websocket in {line:?}"));
        line[at..].to_string()
    };
    assert!(route("/long/").contains("45m"), "{}", route("/long/"));
    assert!(route("/").contains("10m"), "{}", route("/"));
    let nows = route("/nows/");
    assert!(
        nows[..nows.len().min(24)].contains("off"),
        "the refusing route should say off: {nows}"
    );
}

/// `websocket_idle_timeout = "abc"` and `[websocket] idle_timeout = 5` are
/// errors with file:line:col and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_websocket_config_errors() {
    let text = r#"[[listener]]
address = "127.0.0.1:18080"

[websocket]
idle_timeout = 5

[[upstream]]
name = "app"
servers = ["127.0.0.1:3000"]

[[route]]
path = "/"
upstream = "app"
websocket_idle_timeout = "abc"
"#;
    let (code, stdout, stderr, file) = check(text).await;
    assert_eq!(code, Some(64), "{stdout}\n{stderr}");
    let expected = [
        (5, 16, "websocket.idle_timeout", "write \"5s\""),
        (
            14,
            26,
            "route[0].websocket_idle_timeout",
            "invalid duration \"abc\"",
        ),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, (l, c, key, fragment)) in lines.iter().zip(expected) {
        let prefix = format!("{file}:{l}:{c}: `{key}`: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.contains(fragment), "{line:?} lacks {fragment:?}");
    }
}

// ---------------------------------------------------------------------------
// The helpers themselves, without ssegate

/// A stand-in for the proxy's RFC 8441 side: an h2c server advertising
/// ENABLE_CONNECT_PROTOCOL that turns each extended CONNECT into an
/// HTTP/1.1 handshake to `origin` and copies bytes both ways.
async fn h2_bridge(origin: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut b = h2::server::Builder::new();
                b.enable_connect_protocol();
                let Ok(mut conn) = b.handshake::<_, Bytes>(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body();
                        let mut up = TcpStream::connect(origin).await.unwrap();
                        let hs = h1_handshake(&mut up, HOST, &path, &[], b"").await;
                        let status = if hs.status == 101 { 200 } else { hs.status };
                        let resp = http::Response::builder().status(status).body(()).unwrap();
                        let send = respond.send_response(resp, false).unwrap();
                        let mut t = H2Tunnel::new(send, body);
                        t.write_all(&hs.leftover).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut t, &mut up).await;
                    });
                }
            });
        }
    });
    addr
}

/// The client helpers and the origin against each other, with no proxy in
/// between (HTTP/1.1 directly, RFC 8441 through `h2_bridge`): what the
/// suite relies on works, so a failure above is ssegate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_work_without_the_proxy() {
    let mut origin = WsOrigin::start(OriginOptions {
        protocol: Some("superchat".into()),
        ..OriginOptions::default()
    })
    .await;
    // HTTP/1.1, with pipelined frames, a protocol, and a 16 MiB message.
    let mut tcp: BoxIo = Box::new(TcpStream::connect(origin.addr).await.unwrap());
    let early = masked(OP_TEXT, b"early");
    let hs = h1_handshake(
        &mut tcp,
        HOST,
        "/direct",
        &[("sec-websocket-protocol", "chat, superchat")],
        &early,
    )
    .await;
    assert_eq!(hs.status, 101);
    assert_eq!(
        hs.header("sec-websocket-accept"),
        Some(accept_for(&hs.key).as_str())
    );
    assert_eq!(hs.header("sec-websocket-protocol"), Some("superchat"));
    let mut session = origin.session().await;
    assert_eq!(
        session.request.header("sec-websocket-key"),
        Some(hs.key.as_str())
    );
    assert!(valid_key(&hs.key));
    assert_eq!(session.next_message().await, Message::text("early"));
    let mut ws = ws_client(tcp, hs.leftover).await;
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("early")));
    let big = pattern(16 << 20, 1);
    send_binary(&mut ws, big.clone(), 1 << 20).await.unwrap();
    assert!(next_msg(&mut ws).await == Some(Message::Binary(big)));
    ws.send(close_msg(4000, "why")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(close_msg(4000, "why")));
    until_end(&mut ws).await;
    assert_eq!(
        session.next_message().await,
        Message::Binary(pattern(16 << 20, 1))
    );
    assert_eq!(session.next_message().await, close_msg(4000, "why"));

    // RFC 8441 through the bridge: the tunnel reads, writes and half-closes.
    let bridge = h2_bridge(origin.addr).await;
    let tcp = TcpStream::connect(bridge).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut send = h2_client(tcp).await;
    let (parts, t) = h2_websocket(&mut send, HOST, "/h2", &[]).await;
    assert_eq!(parts.status, 200);
    let _session = origin.session().await;
    let mut ws = ws_client(Box::new(t) as BoxIo, Vec::new()).await;
    echo_text(&mut ws, "over h2").await;
    let big = pattern(4 << 20, 2);
    send_binary(&mut ws, big.clone(), 1 << 20).await.unwrap();
    assert!(next_msg(&mut ws).await == Some(Message::Binary(big)));
    ws.close(None).await.unwrap();
    until_end(&mut ws).await;

    // Half-close over h2: END_STREAM reaches the origin as EOF, and the
    // origin's reply still comes back.
    let mut raw = WsOrigin::raw().await;
    let bridge = h2_bridge(raw.addr).await;
    let mut send = h2_client(TcpStream::connect(bridge).await.unwrap()).await;
    let client = h2_websocket(&mut send, HOST, "/half", &[]);
    let server = async {
        let mut c = raw.raw_conn().await;
        let b = c.switching(&[]);
        c.write(&b).await;
        c
    };
    let ((parts, mut t), mut conn) = tokio::join!(client, server);
    assert_eq!(parts.status, 200);
    t.write_all(&masked(OP_TEXT, b"bye")).await.unwrap();
    t.shutdown().await.unwrap();
    let (frames, rest) = parse_frames(&conn.read_to_end().await);
    assert_eq!((frames.len(), rest.len()), (1, 0));
    assert_eq!(frames[0].payload, b"bye");
    conn.write(&frame(OP_TEXT, true, b"after", None)).await;
    let mut buf = BytesMut::new();
    let f = within("the reply", read_frame(&mut t, &mut buf))
        .await
        .unwrap();
    assert_eq!(f.payload, b"after");
}

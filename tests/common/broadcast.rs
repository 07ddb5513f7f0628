//! Fixtures for shared event streams: a broadcasting SSE origin whose every
//! request is logged, event-stream subscribers over HTTP/1.1 and h2c that
//! read block by block, and a progress board that lets a writer wait for
//! its readers.
//!
//! The origin never answers on its own schedule: each event-stream response
//! is a handle (`OriginStream`) the test writes to, one stream or all of
//! them at once, and whose close by the proxy it can await.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use super::{find, parse_headers, read_body, read_head, within, H2Sender, SeenRequest};

pub const SSE: &str = "text/event-stream";
pub const ACCEPT_SSE: (&str, &str) = ("accept", SSE);

/// The event the tests' origins send for `id`: `id: N\ndata: N\n\n`.
pub fn event(id: u64) -> String {
    format!("id: {id}\ndata: {id}\n\n")
}

/// The bytes of `event(id)` for every id of `ids`, back to back.
pub fn events(ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(event(id).as_bytes());
    }
    out
}

/// An event whose data line is `size` bytes of a letter drawn from the id
/// (large events for the overflow tests).
pub fn big_event(id: u64, size: usize) -> String {
    let letter = (b'a' + (id % 26) as u8) as char;
    format!("id: {id}\ndata: {}\n\n", letter.to_string().repeat(size))
}

// ---------------------------------------------------------------------------
// The origin

/// How the origin answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200`, `content-type: text/event-stream`, chunked, plus these headers;
    /// the body is written by the test through an `OriginStream`.
    Stream(Vec<(String, String)>),
    /// A complete response with `content-length` on a kept-alive connection.
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Reply {
    pub fn stream() -> Reply {
        Reply::Stream(Vec::new())
    }

    pub fn stream_with(headers: &[(&str, &str)]) -> Reply {
        Reply::Stream(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn fixed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply::Fixed {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }
}

pub type Responder = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

/// One request as the origin saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub req: SeenRequest,
    /// `Some(index)` when it was answered with an event stream (`index`
    /// counts the origin's event streams from 0), else `None`.
    pub stream: Option<usize>,
    /// The status answered.
    pub status: u16,
}

enum Cmd {
    /// Bytes written as one chunk of the chunked body.
    Chunk(Bytes),
    /// The terminating chunk: a clean end.
    End,
    /// The connection closed with the body unfinished (a mid-stream failure).
    Fail,
}

/// The test's handle on one event-stream response of the origin.
#[derive(Clone)]
pub struct OriginStream {
    pub index: usize,
    pub req: SeenRequest,
    tx: mpsc::UnboundedSender<Cmd>,
    closed: watch::Receiver<bool>,
}

impl OriginStream {
    /// Writes `bytes` as one chunk (ignored once the connection is closed).
    pub fn send(&self, bytes: impl AsRef<[u8]>) {
        let _ = self
            .tx
            .send(Cmd::Chunk(Bytes::copy_from_slice(bytes.as_ref())));
    }

    /// Writes `event(id)` for each id, one chunk each.
    pub fn send_events(&self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.send(event(id));
        }
    }

    /// Ends the body cleanly (terminating chunk).
    pub fn end(&self) {
        let _ = self.tx.send(Cmd::End);
    }

    /// Closes the connection without the terminating chunk: a failure
    /// mid-stream (at an event boundary if the last chunk ended one).
    pub fn fail(&self) {
        let _ = self.tx.send(Cmd::Fail);
    }

    /// The `Last-Event-ID` the request carried.
    pub fn last_event_id(&self) -> Option<&str> {
        self.req.header("last-event-id")
    }

    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the connection is closed (the proxy closed it, or a
    /// write to it failed); bounded by `WAIT`.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        within("an origin stream to be closed", rx.wait_for(|c| *c))
            .await
            .expect("closed flag dropped");
    }
}

struct OriginState {
    log: Mutex<Vec<Logged>>,
    streams: Mutex<Vec<OriginStream>>,
    /// Bumped on every request and every stream close.
    changed: watch::Sender<u64>,
    responder: Responder,
}

impl OriginState {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// An SSE origin on 127.0.0.1:0. Every request is logged before it is
/// answered; the responder picks the answer (by default an event stream for
/// every request). Connections answered with fixed responses are kept alive
/// and read for further requests.
pub struct SseOrigin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    new_streams: mpsc::UnboundedReceiver<OriginStream>,
}

impl SseOrigin {
    /// Every request gets an event stream.
    pub async fn start() -> SseOrigin {
        Self::start_with(|_| Reply::stream()).await
    }

    pub async fn start_with(
        responder: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> SseOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, new_streams) = mpsc::unbounded_channel();
        let state = Arc::new(OriginState {
            log: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            responder: Arc::new(responder),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, st.clone(), tx.clone()));
            }
        });
        SseOrigin {
            addr,
            state,
            new_streams,
        }
    }

    /// The next event-stream response opened (in the order of requests),
    /// bounded by `WAIT`.
    pub async fn next_stream(&mut self) -> OriginStream {
        within(
            "an event-stream request at the origin",
            self.new_streams.recv(),
        )
        .await
        .expect("origin gone")
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Every request whose path (target before `?`) starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<SeenRequest> {
        self.log()
            .into_iter()
            .filter(|l| target_path(&l.req.target).starts_with(prefix))
            .map(|l| l.req)
            .collect()
    }

    /// How many requests were answered with an event stream.
    pub fn stream_count(&self) -> usize {
        self.state.streams.lock().unwrap().len()
    }

    /// Every event stream answered so far.
    pub fn streams(&self) -> Vec<OriginStream> {
        self.state.streams.lock().unwrap().clone()
    }

    /// Event streams whose connection is still open.
    pub fn open_streams(&self) -> Vec<OriginStream> {
        self.streams()
            .into_iter()
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// Writes `bytes` as one chunk on every open event stream.
    pub fn broadcast(&self, bytes: impl AsRef<[u8]>) {
        for s in self.open_streams() {
            s.send(bytes.as_ref());
        }
    }

    /// Waits until `cond` holds on the log (re-checked on every request and
    /// stream close), bounded by `WAIT`.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&[Logged]) -> bool) {
        let mut rx = self.state.changed.subscribe();
        within(what, async {
            loop {
                if cond(&self.state.log.lock().unwrap()) {
                    return;
                }
                rx.changed().await.expect("origin gone");
            }
        })
        .await
    }
}

/// The path of a request target, without its query.
pub fn target_path(target: &str) -> &str {
    target.split('?').next().unwrap_or_default()
}

/// The query of a request target, split into `name=value` pairs in order.
pub fn target_query(target: &str) -> Vec<&str> {
    target
        .split_once('?')
        .map(|(_, q)| q.split('&').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default()
}

async fn serve(
    mut conn: TcpStream,
    state: Arc<OriginState>,
    new_streams: mpsc::UnboundedSender<OriginStream>,
) {
    let mut buf = BytesMut::new();
    loop {
        let Some(head_len) = read_head(&mut conn, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
        let _ = buf.split_to(head_len);
        let (line, headers) = parse_headers(&head);
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        // The body, framed by the request's headers. `read_body` takes the
        // buffer; the proxy pipelines no request, so nothing follows it.
        let Some(body) = read_body(&mut conn, &headers, std::mem::take(&mut buf)).await else {
            return;
        };
        let req = SeenRequest {
            method,
            target,
            headers,
            body,
        };
        let reply = (state.responder)(&req);
        match reply {
            Reply::Fixed {
                status,
                headers,
                body,
            } => {
                state.log.lock().unwrap().push(Logged {
                    req,
                    stream: None,
                    status,
                });
                state.bump();
                let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                for (k, v) in &headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if conn.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::Stream(extra) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let (closed_tx, closed_rx) = watch::channel(false);
                let stream = {
                    // Logged and registered under one lock, so that the
                    // stream's index is its place among stream requests.
                    let mut streams = state.streams.lock().unwrap();
                    let stream = OriginStream {
                        index: streams.len(),
                        req: req.clone(),
                        tx,
                        closed: closed_rx,
                    };
                    streams.push(stream.clone());
                    state.log.lock().unwrap().push(Logged {
                        req,
                        stream: Some(stream.index),
                        status: 200,
                    });
                    stream
                };
                state.bump();
                let mut head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {SSE}\r\ntransfer-encoding: chunked\r\n"
                );
                for (k, v) in &extra {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    mark_closed(&closed_tx, &state);
                    return;
                }
                let _ = new_streams.send(stream);
                run_stream(conn, rx, closed_tx, state).await;
                return;
            }
        }
    }
}

fn mark_closed(closed: &watch::Sender<bool>, state: &OriginState) {
    if !*closed.borrow() {
        closed.send_replace(true);
        state.bump();
    }
}

/// Writes the test's chunks to one event-stream connection and watches it
/// for the proxy's close.
async fn run_stream(
    conn: TcpStream,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    closed: watch::Sender<bool>,
    state: Arc<OriginState>,
) {
    let (mut rd, mut wr) = conn.into_split();
    let mut reader = tokio::spawn(async move {
        let mut sink = [0u8; 1024];
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    loop {
        tokio::select! {
            _ = &mut reader => break,
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else {
                    // Every handle dropped: leave the connection open until the proxy closes it.
                    let _ = (&mut reader).await;
                    break;
                };
                let ok = match cmd {
                    Cmd::Chunk(data) => {
                        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                        wr.write_all(&out).await.is_ok()
                    }
                    Cmd::End => {
                        let _ = wr.write_all(b"0\r\n\r\n").await;
                        // The proxy may keep the connection for reuse: it
                        // counts as closed for the test from here on.
                        break;
                    }
                    Cmd::Fail => {
                        let _ = wr.shutdown().await;
                        break;
                    }
                };
                if !ok {
                    break;
                }
            }
        }
    }
    reader.abort();
    mark_closed(&closed, &state);
}

// ---------------------------------------------------------------------------
// Subscribers

/// One SSE block (up to a blank line), as the tests' events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// An event with a numeric `id:`, and its `data:` (the first data line).
    Event { id: u64, data: String },
    /// A comment (heartbeat).
    Comment,
    /// A block holding only `retry: N`.
    Retry(u64),
}

/// What a subscriber read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Block(Block),
    /// The clean end: terminating chunk (HTTP/1.1), END_STREAM (HTTP/2), or
    /// the end of a `content-length` body.
    End,
    /// The stream failed: the connection closed mid-body (HTTP/1.1), or a
    /// reset (HTTP/2).
    Aborted,
}

/// A response head, either protocol.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

enum Body {
    H1 {
        stream: TcpStream,
        buf: BytesMut,
        framing: Framing,
        done: bool,
    },
    H2 {
        body: h2::RecvStream,
        done: bool,
    },
}

/// Which protocol a subscriber speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// A request's response read incrementally: the head, then body data, cut
/// into SSE blocks on demand. `raw` keeps every body byte received.
pub struct Sub {
    pub head: Head,
    pub proto: Proto,
    /// The client side's address (HTTP/1.1), as the access log names it.
    pub local: Option<SocketAddr>,
    body: Body,
    pending: Vec<u8>,
    /// Every body byte received (while `keep_raw`).
    pub raw: Vec<u8>,
    /// Whether to keep `raw` (off for streams of megabytes).
    pub keep_raw: bool,
}

/// A raw HTTP/1.1 request: `METHOD target`, `host: test`, the given header
/// lines, and `body` with a `content-length` when there is one.
pub fn h1_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nhost: test\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

impl Sub {
    /// `GET target` over a new HTTP/1.1 connection with `headers`; returns
    /// once the response head is in.
    pub async fn h1(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sub {
        Self::h1_request(addr, "GET", target, headers, b"").await
    }

    /// Any request over a new HTTP/1.1 connection.
    pub async fn h1_request(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Sub {
        let stream = within("an HTTP/1.1 connection", TcpStream::connect(addr))
            .await
            .unwrap();
        Self::h1_over(stream, &h1_request(method, target, headers, body)).await
    }

    /// `GET target` over a connection whose receive buffer is `recv_buffer`
    /// bytes (a client that will stop reading).
    pub async fn h1_small_buffer(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        recv_buffer: u32,
    ) -> Sub {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer).unwrap();
        let stream = within("an HTTP/1.1 connection", socket.connect(addr))
            .await
            .unwrap();
        Self::h1_over(stream, &h1_request("GET", target, headers, b"")).await
    }

    async fn h1_over(mut stream: TcpStream, request: &[u8]) -> Sub {
        let local = stream.local_addr().ok();
        stream.write_all(request).await.unwrap();
        let mut buf = BytesMut::new();
        let n = within("a response head", read_head(&mut stream, &mut buf))
            .await
            .expect("connection closed before the response head");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let _ = buf.split_to(n);
        let (line, headers) = parse_headers(&text);
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let head = Head { status, headers };
        let framing = if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = head.header("content-length") {
            Framing::Length(n.parse().expect("content-length"))
        } else {
            Framing::UntilClose
        };
        Sub {
            head,
            proto: Proto::H1,
            local,
            body: Body::H1 {
                stream,
                buf,
                framing,
                done: false,
            },
            pending: Vec::new(),
            raw: Vec::new(),
            keep_raw: true,
        }
    }

    /// `GET target` as a new stream of the h2 connection `send`.
    pub async fn h2(send: &H2Sender, target: &str, headers: &[(&str, &str)]) -> Sub {
        let mut req = http::Request::builder()
            .method("GET")
            .uri(format!("http://test{target}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        let mut ready = within("h2 ready", send.clone().ready()).await.unwrap();
        let (resp, _) = ready.send_request(req, true).unwrap();
        let resp = within("an h2 response head", resp).await.unwrap();
        let (parts, body) = resp.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).to_string(),
                )
            })
            .collect();
        Sub {
            head: Head {
                status: parts.status.as_u16(),
                headers,
            },
            proto: Proto::H2,
            local: None,
            body: Body::H2 { body, done: false },
            pending: Vec::new(),
            raw: Vec::new(),
            keep_raw: true,
        }
    }

    /// Asserts a `200 text/event-stream` head.
    pub fn assert_event_stream(&self) {
        assert_eq!(self.head.status, 200, "{:?}", self.head);
        assert_eq!(
            self.head.header("content-type"),
            Some(SSE),
            "{:?}",
            self.head
        );
    }

    /// The next piece of body: `Ok(Some(data))`, `Ok(None)` at the clean
    /// end, `Err(())` when the stream failed. Not bounded: callers wrap it.
    async fn next_data(&mut self) -> Result<Option<Bytes>, ()> {
        match &mut self.body {
            Body::H2 { body, done } => {
                if *done {
                    return Ok(None);
                }
                match body.data().await {
                    None => {
                        *done = true;
                        Ok(None)
                    }
                    Some(Ok(d)) => {
                        let _ = body.flow_control().release_capacity(d.len());
                        Ok(Some(d))
                    }
                    Some(Err(_)) => {
                        *done = true;
                        Err(())
                    }
                }
            }
            Body::H1 {
                stream,
                buf,
                framing,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                let r = h1_next(stream, buf, framing).await;
                if !matches!(r, Ok(Some(_))) {
                    *done = true;
                }
                r
            }
        }
    }

    /// The next whole block, or the end; bounded by `WAIT`.
    pub async fn next(&mut self) -> Next {
        within("the next SSE block", self.next_unbounded()).await
    }

    async fn next_unbounded(&mut self) -> Next {
        loop {
            if let Some(end) = find(&self.pending, b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                return Next::Block(parse_block(&block));
            }
            match self.next_data().await {
                Ok(Some(d)) => {
                    if self.keep_raw {
                        self.raw.extend_from_slice(&d);
                    }
                    self.pending.extend_from_slice(&d);
                }
                Ok(None) => {
                    assert!(
                        self.pending.is_empty(),
                        "clean end after a partial block: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    );
                    return Next::End;
                }
                Err(()) => return Next::Aborted,
            }
        }
    }

    /// The next event (comments skipped), failing on anything else.
    pub async fn next_event(&mut self) -> (u64, String) {
        loop {
            match self.next().await {
                Next::Block(Block::Event { id, data }) => return (id, data),
                Next::Block(Block::Comment) => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// The next event's id.
    pub async fn next_id(&mut self) -> u64 {
        self.next_event().await.0
    }

    /// Reads events until `last`, asserting that the ids follow `after`
    /// one by one (no gap, no duplicate); returns the ids read.
    pub async fn read_consecutive(&mut self, after: u64, last: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut prev = after;
        while prev < last {
            let id = self.next_id().await;
            assert_eq!(
                id,
                prev + 1,
                "gap or duplicate after {prev} (read {ids:?} after {after})"
            );
            ids.push(id);
            prev = id;
        }
        ids
    }

    /// Everything until the end of the body (from the first byte not yet
    /// returned as a block): the bytes and how it ended.
    pub async fn rest(&mut self) -> (Vec<u8>, Next) {
        let mut out = std::mem::take(&mut self.pending);
        let end = within("the end of a body", async {
            loop {
                match self.next_data().await {
                    Ok(Some(d)) => {
                        if self.keep_raw {
                            self.raw.extend_from_slice(&d);
                        }
                        out.extend_from_slice(&d);
                    }
                    Ok(None) => return Next::End,
                    Err(()) => return Next::Aborted,
                }
            }
        })
        .await;
        (out, end)
    }
}

/// The next piece of an HTTP/1.1 body.
async fn h1_next(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    framing: &mut Framing,
) -> Result<Option<Bytes>, ()> {
    async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), ()> {
        let mut tmp = vec![0u8; 65536];
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => Err(()),
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
        }
    }
    match framing {
        Framing::Length(0) => Ok(None),
        Framing::Length(left) => {
            if buf.is_empty() {
                fill(stream, buf).await?;
            }
            let n = buf.len().min(*left);
            *left -= n;
            Ok(Some(buf.split_to(n).freeze()))
        }
        Framing::UntilClose => {
            if buf.is_empty() && fill(stream, buf).await.is_err() {
                return Ok(None);
            }
            Ok(Some(buf.split().freeze()))
        }
        Framing::Chunked => {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                fill(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[..line_end]).expect("chunk size line");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf).await?;
            }
            let _ = buf.split_to(line_end + 2);
            let data = buf.split_to(size).freeze();
            assert_eq!(&buf[..2], b"\r\n", "chunk not followed by CRLF");
            let _ = buf.split_to(2);
            if size == 0 {
                Ok(None)
            } else {
                Ok(Some(data))
            }
        }
    }
}

/// Parses one block of the tests' events.
pub fn parse_block(block: &[u8]) -> Block {
    let text = String::from_utf8_lossy(block);
    if text.starts_with(':') {
        return Block::Comment;
    }
    if let Some(ms) = text.strip_prefix("retry: ") {
        return Block::Retry(
            ms.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad retry block {text:?}")),
        );
    }
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("block without id: {text:?}"));
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_default()
        .to_string();
    Block::Event {
        id: id
            .parse()
            .unwrap_or_else(|_| panic!("non-numeric id {id:?}")),
        data,
    }
}

// ---------------------------------------------------------------------------
// Progress

/// The last id each of a set of readers has received, and a wake-up for
/// whoever waits on them (a publisher pacing itself by its slowest reader).
pub struct Progress {
    last: Vec<AtomicU64>,
    notify: Notify,
}

impl Progress {
    pub fn new(readers: usize) -> Arc<Progress> {
        Arc::new(Progress {
            last: (0..readers).map(|_| AtomicU64::new(0)).collect(),
            notify: Notify::new(),
        })
    }

    pub fn set(&self, reader: usize, id: u64) {
        self.last[reader].store(id, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn get(&self, reader: usize) -> u64 {
        self.last[reader].load(Ordering::SeqCst)
    }

    pub fn min(&self) -> u64 {
        self.last
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// Wakes whoever waits (after a change of some other condition they check).
    pub fn poke(&self) {
        self.notify.notify_waiters();
    }

    /// Waits until `cond` holds; it is re-checked on every `set` and `poke`.
    /// Not bounded: callers wrap it in `within`.
    pub async fn wait(&self, cond: impl Fn(&Progress) -> bool) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every reader has received `id`.
    pub async fn all_reached(&self, id: u64) {
        self.wait(|p| p.min() >= id).await
    }
}

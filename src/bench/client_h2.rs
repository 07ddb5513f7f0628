//! `ssegate bench` streams over HTTP/2: `--connections` shared connections
//! (h2c with prior knowledge for http://, TLS with ALPN h2 for https://),
//! each opened by the first stream that needs it; stream i rides on
//! connection i mod K. With `--reconnect`, a connection found gone (a
//! proxy that restarted, say) is opened again by the first stream that
//! reconnects on it, and the streams after it share the new one.
//!
//! The `h2` client is tuned for thousands of event streams per connection:
//! large windows so no stream waits on flow control, and a data-frame budget
//! sized for one small unread DATA frame per stream many times over. With
//! the default budget, `h2` closes a connection with `ENHANCE_YOUR_CALM` once
//! about a hundred small frames sit unread, which a tick of 20,000 events
//! does at once. Every stream task reads and releases its data at once.

use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio::time::timeout_at;

use super::client::{check_response, connect_tcp, Ctx, StreamError, OPEN_TIMEOUT};
use super::plan::Plan;
use super::stats::{ErrorKind, StreamMeter};
use super::tls::ALPN_H2;

/// Receive window of each stream.
const STREAM_WINDOW: u32 = 1 << 20;

/// Receive window share per stream on the connection, and its floor.
const CONNECTION_WINDOW_PER_STREAM: u64 = 64 * 1024;
const CONNECTION_WINDOW_MIN: u64 = 16 << 20;

/// Small unread DATA frames tolerated per stream (h2 charges up to 256
/// bytes of budget for each).
const BUDGET_FRAMES_PER_STREAM: usize = 64;
const BUDGET_PER_FRAME: usize = 256;

type Connection = Result<SendRequest<Bytes>, StreamError>;

/// The HTTP/2 connections of a run, opened lazily. Each slot holds its
/// connection (or the error opening it gave) with a generation, so that
/// of the streams that find one gone, only the first replaces it.
pub struct Pool {
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Default)]
struct Slot {
    generation: u64,
    connection: Option<Connection>,
}

impl Pool {
    pub fn new(connections: usize) -> Self {
        Pool {
            slots: (0..connections).map(|_| Mutex::default()).collect(),
        }
    }

    fn slot_of(&self, index: usize) -> usize {
        index % self.slots.len().max(1)
    }

    /// The connection for stream `index` and its generation, opening it if
    /// this is the first stream to need it.
    async fn for_stream(&self, ctx: &Ctx, index: usize) -> (u64, Connection) {
        let slot = self.slot_of(index);
        let Some(cell) = self.slots.get(slot) else {
            let none = StreamError::new(ErrorKind::Other, "no HTTP/2 connection");
            return (0, Err(none));
        };
        let mut cell = cell.lock().await;
        if cell.connection.is_none() {
            // Boxed: only the first stream of each connection runs the handshake.
            cell.connection = Some(Box::pin(connect(ctx, slot)).await);
        }
        let connection = cell
            .connection
            .clone()
            .unwrap_or_else(|| Err(StreamError::new(ErrorKind::Other, "no HTTP/2 connection")));
        (cell.generation, connection)
    }

    /// Forgets stream `index`'s connection, if it is still `generation`,
    /// so that the next stream to need it opens a new one.
    async fn forget(&self, index: usize, generation: u64) {
        if let Some(cell) = self.slots.get(self.slot_of(index)) {
            let mut cell = cell.lock().await;
            if cell.generation == generation {
                cell.generation += 1;
                cell.connection = None;
            }
        }
    }
}

/// Opens stream `index` and reads it until it ends or fails.
///
/// The opening (a connection's handshake for the first stream on it, the
/// request, the wait for the response head) runs boxed and is freed once
/// the stream is open: an open stream's task holds only its body handle and
/// the wait for the next DATA frame, a few hundred bytes with its meter.
///
/// `last_event_id`: a reconnecting stream's (`--reconnect`), sent as
/// `Last-Event-ID`.
pub async fn stream(
    ctx: &Ctx,
    index: usize,
    last_event_id: Option<&[u8]>,
    meter: &mut StreamMeter,
) -> Result<(), StreamError> {
    let mut body = Box::pin(open(ctx, index, last_event_id)).await?;
    meter.opened(&ctx.stats, Instant::now());
    while let Some(data) = body.data().await {
        let data = data.map_err(h2_error)?;
        meter.on_chunk(&ctx.stats, &data, Instant::now());
        // Cannot fail for data just received.
        let _ = body.flow_control().release_capacity(data.len());
    }
    Ok(())
}

/// Sends stream `index`'s request and waits for a `200 text/event-stream`
/// head; returns the body.
async fn open(
    ctx: &Ctx,
    index: usize,
    last_event_id: Option<&[u8]>,
) -> Result<RecvStream, StreamError> {
    let open_by = (Instant::now() + OPEN_TIMEOUT).into();
    let opening = async {
        let mut send = ready(ctx, index).await?;
        let end_of_request = ctx.plan.body.is_none();
        let (response, mut request_body) = send
            .send_request(request(&ctx.plan, last_event_id)?, end_of_request)
            .map_err(h2_error)?;
        if let Some(body) = &ctx.plan.body {
            request_body
                .send_data(body.clone(), true)
                .map_err(h2_error)?;
        }
        let response = response.await.map_err(h2_error)?;
        warn_if_stream_limited(ctx, &send);
        Ok(response)
    };
    let response = timeout_at(open_by, opening)
        .await
        .map_err(|_| StreamError::open_timeout())??;
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    check_response(response.status().as_u16(), content_type)?;
    Ok(response.into_body())
}

/// Stream `index`'s connection, ready for a new stream. With `--reconnect`
/// a connection that is gone (or could not be opened) is forgotten and
/// opened again, once per attempt; without, every stream on it fails, as
/// its first opening would.
async fn ready(ctx: &Ctx, index: usize) -> Result<SendRequest<Bytes>, StreamError> {
    let mut second_try = false;
    loop {
        let (generation, connection) = ctx.h2.for_stream(ctx, index).await;
        let ready = match connection {
            Ok(send) => send.ready().await.map_err(h2_error),
            Err(e) => Err(e),
        };
        match ready {
            Ok(send) => return Ok(send),
            Err(e) if !ctx.plan.reconnect || second_try => return Err(e),
            Err(_) => {
                ctx.h2.forget(index, generation).await;
                second_try = true;
            }
        }
    }
}

/// The request every stream sends; a `Host` header becomes the authority.
/// A reconnecting stream's `last_event_id` replaces any `Last-Event-ID`
/// given with -H; an empty one is not sent (browsers do not either).
fn request(plan: &Plan, last_event_id: Option<&[u8]>) -> Result<http::Request<()>, StreamError> {
    let last_event_id = last_event_id
        .filter(|id| !id.is_empty())
        .and_then(|id| http::HeaderValue::from_bytes(id).ok());
    let has = |name: &str| {
        plan.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let uri = format!(
        "{}://{}{}",
        plan.target.scheme(),
        plan.authority(),
        plan.target.path
    );
    let mut builder = http::Request::builder()
        .method(plan.method.clone())
        .uri(uri);
    if !has("accept") {
        builder = builder.header(ACCEPT, "text/event-stream");
    }
    if let Some(body) = plan.body.as_ref().filter(|_| !has("content-length")) {
        builder = builder.header(CONTENT_LENGTH, body.len());
    }
    // -H's `Host` becomes the authority; its `Last-Event-ID` gives way to a resumed one.
    let replaced = |k: &str| {
        k.eq_ignore_ascii_case("host")
            || (last_event_id.is_some() && k.eq_ignore_ascii_case("last-event-id"))
    };
    for (name, value) in plan.headers.iter().filter(|(k, _)| !replaced(k)) {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some(id) = last_event_id {
        builder = builder.header("last-event-id", id);
    }
    builder
        .body(())
        .map_err(|e| StreamError::new(ErrorKind::Other, format!("cannot build the request: {e}")))
}

/// Opens connection number `slot`: TCP, TLS with ALPN h2 if https, handshake.
async fn connect(ctx: &Ctx, slot: usize) -> Connection {
    let began = Instant::now();
    let tcp = connect_tcp(ctx, slot).await?;
    let send = match &ctx.tls {
        None => handshake(ctx, tcp).await?,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| StreamError::new(ErrorKind::Tls, e.to_string()))?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err(StreamError::new(
                    ErrorKind::Tls,
                    "the server did not agree to HTTP/2 (ALPN h2)",
                ));
            }
            handshake(ctx, tls).await?
        }
    };
    ctx.stats.record_connect(began.elapsed());
    Ok(send)
}

/// The HTTP/2 handshake; the connection is then driven by its own task.
async fn handshake<S>(ctx: &Ctx, io: S) -> Connection
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = builder(streams_per_connection(&ctx.plan))
        .handshake(io)
        .await
        .map_err(|e| StreamError::new(ErrorKind::Other, format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("HTTP/2 connection ended: {e}");
        }
    });
    Ok(send)
}

fn streams_per_connection(plan: &Plan) -> usize {
    plan.streams.div_ceil(plan.connections.max(1))
}

/// Client settings for `streams` event streams on one connection.
fn builder(streams: usize) -> h2::client::Builder {
    let connection_window = (streams as u64 * CONNECTION_WINDOW_PER_STREAM)
        .clamp(CONNECTION_WINDOW_MIN, i32::MAX as u64);
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(u32::try_from(connection_window).unwrap_or(u32::MAX >> 1))
        .data_frame_budget(streams.max(100) * BUDGET_FRAMES_PER_STREAM * BUDGET_PER_FRAME)
        // Every stream is cancelled at the end of the run: not an attack.
        .max_concurrent_reset_streams(streams.max(10));
    builder
}

/// Says once when the server's concurrent-stream limit is below what each
/// connection is asked to carry: the streams past it wait and time out.
fn warn_if_stream_limited(ctx: &Ctx, send: &SendRequest<Bytes>) {
    let limit = send.current_max_send_streams();
    let wanted = streams_per_connection(&ctx.plan);
    if limit >= wanted
        || ctx
            .h2_limit_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    eprintln!(
        "ssegate bench: the server allows {limit} concurrent streams per HTTP/2 connection \
         and {wanted} are planned on each: use --connections {} or more",
        ctx.plan.streams.div_ceil(limit.max(1))
    );
}

/// Classifies an `h2` error: resets and GOAWAY are the stream being closed.
fn h2_error(e: h2::Error) -> StreamError {
    if let Some(io) = e.get_io() {
        return StreamError::io(io);
    }
    let kind = if e.is_reset() || e.is_go_away() {
        ErrorKind::Closed
    } else {
        ErrorKind::Other
    };
    StreamError::new(kind, e.to_string())
}

//! Compressed event streams end to end (route `compression`): the real
//! binary between a scripted upstream and HTTP/1.1 and h2c clients that
//! decode what they receive with the same crates (flate2, brotli, zstd).
//!
//! The upstream sends event N only once the client has *decoded* it, so a
//! proxy that held an event in its encoder would hang the test (bounded
//! by `within`). Every test asserts on the decoded bytes, the headers, or
//! counts; heartbeats are off unless the test is about them.

mod common;
// Shared with tests/sse_framer.rs, which has no use for the rest of common/.
#[path = "common/decode.rs"]
mod decode;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::scrape::{series, Scrape};
use common::*;
use decode::decode_prefix;
use rand::Rng;

const SSE: &str = "text/event-stream";
const CODINGS: [&str; 3] = ["gzip", "br", "zstd"];

/// A proxy with one upstream `app` and a route `/` compressing with every
/// coding (`route_extra` added to it), heartbeats off unless `stream_extra` sets them.
async fn start(up: &Upstream, stream_extra: &str, route_extra: &str, admin: bool) -> Proxy {
    let stream = if stream_extra.contains("heartbeat") {
        stream_extra.to_string()
    } else {
        format!("heartbeat = \"off\"\n{stream_extra}")
    };
    let text = config_with(
        "2s",
        &stream,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n\
             compression = [\"zstd\", \"br\", \"gzip\"]\n{route_extra}\n",
            up.addr
        ),
    );
    let mut cfg = ProxyConfig::new(text);
    cfg.admin = admin;
    Proxy::start(cfg).await
}

/// What a client received, decoded as its `Content-Encoding` says.
struct Received {
    coding: Option<String>,
    wire: Vec<u8>,
}

impl Received {
    fn new(coding: Option<&str>) -> Self {
        Received {
            coding: coding.map(str::to_string),
            wire: Vec::new(),
        }
    }

    /// Everything the bytes so far decode to. A prefix that ends where the
    /// proxy flushed must give every byte it was sent.
    fn decoded(&self) -> Vec<u8> {
        decode_prefix(self.coding.as_deref(), &self.wire)
    }

    /// Decodes the whole body strictly: a coded stream that was not ended
    /// properly (gzip trailer, brotli last block, zstd frame end) fails.
    fn decoded_whole(&self) -> Vec<u8> {
        let w = &self.wire[..];
        let mut out = Vec::new();
        match self.coding.as_deref() {
            None => out.extend_from_slice(w),
            Some("gzip") => {
                flate2::read::GzDecoder::new(w)
                    .read_to_end(&mut out)
                    .expect("a whole gzip stream");
            }
            Some("br") => {
                brotli::Decompressor::new(w, 4096)
                    .read_to_end(&mut out)
                    .expect("a whole brotli stream");
            }
            Some("zstd") => out = zstd::stream::decode_all(w).expect("a whole zstd frame"),
            Some(other) => panic!("unexpected coding {other}"),
        }
        out
    }
}

/// Reads chunks until the decoded body contains `needle`.
async fn h1_decode_until(
    client: &mut H1Client<tokio::net::TcpStream>,
    got: &mut Received,
    needle: &[u8],
) -> Vec<u8> {
    loop {
        let decoded = got.decoded();
        if find(&decoded, needle).is_some() {
            return decoded;
        }
        match client.next_chunk().await {
            Some(c) => got.wire.extend_from_slice(&c),
            None => panic!(
                "stream ended before {:?}; decoded {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&decoded)
            ),
        }
    }
}

/// Reads h2 DATA until the decoded body contains `needle`.
async fn h2_decode_until(body: &mut h2::RecvStream, got: &mut Received, needle: &[u8]) {
    within("h2 data", async {
        while find(&got.decoded(), needle).is_none() {
            let data = body
                .data()
                .await
                .expect("h2 stream ended")
                .expect("h2 data");
            let _ = body.flow_control().release_capacity(data.len());
            got.wire.extend_from_slice(&data);
        }
    })
    .await
}

/// Opens an HTTP/1.1 event stream with these request headers; the
/// upstream answers with `up_extra` in its head.
async fn open_h1(
    proxy: &Proxy,
    up: &mut Upstream,
    req_extra: &[(&str, &str)],
    up_extra: &[(&str, &str)],
) -> (H1Client<tokio::net::TcpStream>, H1Response, UpConn) {
    let mut client = H1Client::connect(proxy.addr).await;
    let mut headers = vec![("accept", SSE)];
    headers.extend_from_slice(req_extra);
    client.get("/s", &headers).await;
    let mut conn = up.next().await;
    conn.head_chunked(SSE, up_extra).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    (client, head, conn)
}

fn vary(head: &H1Response) -> Vec<String> {
    head.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect()
}

fn event(i: usize) -> String {
    format!("id: {i}\ndata: {{\"seq\":{i},\"user\":\"alice\",\"status\":\"online\",\"tags\":[\"a\",\"b\"]}}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_each_event_is_decoded_before_the_next_is_sent() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "", "", false).await;
    for coding in CODINGS {
        let (mut client, head, mut conn) =
            open_h1(&proxy, &mut up, &[("accept-encoding", coding)], &[]).await;
        assert_eq!(head.header("content-encoding"), Some(coding));
        assert_eq!(vary(&head), ["accept-encoding"]);
        assert_eq!(head.header("content-length"), None);
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        let mut got = Received::new(Some(coding));
        let mut sent = String::new();
        for i in 1..=20 {
            conn.chunk(event(i).as_bytes()).await;
            sent.push_str(&event(i));
            // Nothing more is sent until the client has decoded this event.
            let decoded = h1_decode_until(&mut client, &mut got, event(i).as_bytes()).await;
            assert_eq!(decoded, sent.as_bytes(), "{coding}");
        }
        conn.end_chunks().await;
        assert_eq!(
            client
                .next_chunk()
                .await
                .map(|c| got.wire.extend_from_slice(&c)),
            Some(())
        );
        // The coded stream's end, then the last chunk.
        assert_eq!(client.next_chunk().await, None, "{coding}");
        assert_eq!(got.decoded_whole(), sent.as_bytes(), "{coding}");
        assert!(
            got.wire.len() * 2 < sent.len(),
            "{coding}: {} bytes for {}",
            got.wire.len(),
            sent.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_each_event_is_decoded_before_the_next_is_sent() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "", "", false).await;
    let send = h2c_connect(proxy.addr).await;
    for coding in CODINGS {
        let req = http::Request::builder()
            .method("GET")
            .uri("http://test/s")
            .header("accept", SSE)
            .header("accept-encoding", coding)
            .body(())
            .unwrap();
        let mut ready = within("h2 ready", send.clone().ready()).await.unwrap();
        let (resp, _) = ready.send_request(req, true).unwrap();
        let mut conn = up.next().await;
        conn.head_chunked(SSE, &[]).await;
        let resp = within("h2 response", resp).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], coding);
        assert_eq!(resp.headers()["vary"], "Accept-Encoding");
        assert!(resp.headers().get("content-length").is_none());
        let mut body = resp.into_body();
        let mut got = Received::new(Some(coding));
        let mut sent = String::new();
        for i in 1..=20 {
            conn.chunk(event(i).as_bytes()).await;
            sent.push_str(&event(i));
            h2_decode_until(&mut body, &mut got, event(i).as_bytes()).await;
            assert_eq!(got.decoded(), sent.as_bytes(), "{coding}");
        }
        conn.end_chunks().await;
        within("h2 end", async {
            while let Some(data) = body.data().await {
                got.wire.extend_from_slice(&data.expect("h2 data"));
            }
        })
        .await;
        assert_eq!(got.decoded_whole(), sent.as_bytes(), "{coding}");
    }
}

/// Accept-Encoding and the upstream's head decide; each row is one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "", "", false).await;
    type Row<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        bool,
    );
    let rows: &[Row] = &[
        // (request headers, upstream headers, coding, Vary)
        (
            &[("accept-encoding", "gzip, deflate, br, zstd")],
            &[],
            Some("zstd"),
            true,
        ),
        (
            &[("accept-encoding", "gzip;q=1, br;q=0.5")],
            &[],
            Some("br"),
            true,
        ),
        (
            &[("accept-encoding", "zstd;q=0, br;q=0, gzip;q=0.001")],
            &[],
            Some("gzip"),
            true,
        ),
        (
            &[("accept-encoding", "zstd;q=0, br;q=0, gzip;q=0")],
            &[],
            None,
            true,
        ),
        (&[("accept-encoding", "identity")], &[], None, true),
        (&[("accept-encoding", "identity;q=0")], &[], None, true),
        (
            &[("accept-encoding", "compress, deflate, snappy")],
            &[],
            None,
            true,
        ),
        (&[("accept-encoding", "*")], &[], Some("zstd"), true),
        (&[("accept-encoding", "*, zstd;q=0")], &[], Some("br"), true),
        (&[], &[], None, true),
        (
            &[("accept-encoding", "gzip")],
            &[("cache-control", "no-cache, no-transform")],
            None,
            false,
        ),
    ];
    for &(req, up_extra, coding, varies) in rows {
        let (mut client, head, mut conn) = open_h1(&proxy, &mut up, req, up_extra).await;
        assert_eq!(
            head.header("content-encoding"),
            coding,
            "{req:?} {up_extra:?}"
        );
        assert_eq!(!vary(&head).is_empty(), varies, "{req:?} {up_extra:?}");
        let mut got = Received::new(coding);
        conn.chunk(b"data: x\n\n").await;
        let decoded = h1_decode_until(&mut client, &mut got, b"data: x\n\n").await;
        assert_eq!(decoded, b"data: x\n\n");
    }

    // An upstream's own coding passes through, untouched and not re-coded.
    let (mut client, head, mut conn) = open_h1(
        &proxy,
        &mut up,
        &[("accept-encoding", "gzip, br")],
        &[("content-encoding", "br")],
    )
    .await;
    assert_eq!(head.header("content-encoding"), Some("br"));
    assert!(vary(&head).is_empty());
    conn.chunk(b"\x0b\x02\x80opaque").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"\x0b\x02\x80opaque"[..])
    );

    // An ordinary response on the same route is not compressed.
    let mut client = H1Client::connect(proxy.addr).await;
    client
        .get("/plain", &[("accept-encoding", "gzip, br, zstd")])
        .await;
    let mut conn = up.next().await;
    let body = "{\"a\":1,\"a\":1,\"a\":1,\"a\":1,\"a\":1}";
    conn.write(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let head = client.response_head().await;
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(client.body(&head).await, Bytes::from(body));
}

/// Random SSE streams in random chunks, through each coding: the decoded
/// body is the upstream's bytes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_bytes_are_the_upstreams_exactly() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "", "", false).await;
    for seed in 0..4u64 {
        let mut rng = seeded_rng(seed);
        let mut input = Vec::new();
        if rng.gen_bool(0.3) {
            input.extend_from_slice(b"\xEF\xBB\xBF");
        }
        for i in 0..rng.gen_range(10..60) {
            let end: &[u8] = [&b"\n"[..], b"\r\n", b"\r"][rng.gen_range(0..3)];
            match rng.gen_range(0..5) {
                0 => input.extend_from_slice(b":comment"),
                1 => input.extend((0..rng.gen_range(0..40)).map(|_| rng.gen::<u8>())),
                _ => input.extend_from_slice(format!("id: {i}\ndata: {{\"n\":{i}}}").as_bytes()),
            }
            input.extend_from_slice(end);
            input.extend_from_slice(end);
        }
        for coding in CODINGS {
            let (mut client, head, mut conn) =
                open_h1(&proxy, &mut up, &[("accept-encoding", coding)], &[]).await;
            assert_eq!(head.header("content-encoding"), Some(coding));
            let mut cuts: Vec<usize> = (0..rng.gen_range(0..12))
                .map(|_| rng.gen_range(0..=input.len()))
                .collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut from = 0;
            for &to in &cuts {
                if to > from {
                    conn.chunk(&input[from..to]).await;
                }
                from = to;
            }
            conn.end_chunks().await;
            let mut got = Received::new(Some(coding));
            while let Some(c) = client.next_chunk().await {
                got.wire.extend_from_slice(&c);
            }
            assert_eq!(got.decoded_whole(), input, "seed {seed} {coding}");
        }
    }
}

/// Heartbeats and the shutdown `retry:` go through the encoder too, each
/// flushed, and the coded stream ends properly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_shutdown_retry_are_compressed() {
    let mut up = Upstream::start().await;
    let proxy = start(
        &up,
        "heartbeat = \"200ms\"\nshutdown_retry = \"3s\"\nshutdown_retry_jitter = \"0s\"",
        "",
        false,
    )
    .await;
    let mut streams = Vec::new();
    for coding in CODINGS {
        let (mut client, head, mut conn) =
            open_h1(&proxy, &mut up, &[("accept-encoding", coding)], &[]).await;
        assert_eq!(head.header("content-encoding"), Some(coding));
        let mut got = Received::new(Some(coding));
        conn.chunk(b"id: 1\ndata: a\n\n").await;
        h1_decode_until(&mut client, &mut got, b"id: 1\ndata: a\n\n:\n\n").await;
        streams.push((client, got, conn));
    }
    proxy.signal("TERM");
    for (client, got, _conn) in &mut streams {
        let decoded = h1_decode_until(client, got, b"retry: 3000\n\n").await;
        assert!(
            decoded.ends_with(b":\n\nretry: 3000\n\n"),
            "{:?}",
            String::from_utf8_lossy(&decoded)
        );
        while let Some(c) = client.next_chunk().await {
            got.wire.extend_from_slice(&c);
        }
        let whole = got.decoded_whole();
        let without_heartbeats = String::from_utf8(whole).unwrap().replace(":\n\n", "");
        assert_eq!(without_heartbeats, "id: 1\ndata: a\n\nretry: 3000\n\n");
    }
}

/// A resumed stream carries on in the same coded stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_stays_one_coded_stream() {
    let mut up = Upstream::start().await;
    let proxy = start(
        &up,
        "",
        "resume = \"on-error\"\nresume_backoff = \"50ms\"",
        false,
    )
    .await;
    for coding in CODINGS {
        let (mut client, _, mut conn) =
            open_h1(&proxy, &mut up, &[("accept-encoding", coding)], &[]).await;
        let mut got = Received::new(Some(coding));
        conn.chunk(b"id: 1\ndata: a\n\n").await;
        h1_decode_until(&mut client, &mut got, b"data: a\n\n").await;
        drop(conn);
        let mut conn = up.next().await;
        assert_eq!(conn.req.header("last-event-id"), Some("1"));
        conn.head_chunked(SSE, &[]).await;
        conn.chunk(b"id: 2\ndata: b\n\n").await;
        let decoded = h1_decode_until(&mut client, &mut got, b"data: b\n\n").await;
        assert_eq!(decoded, b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", "{coding}");
    }
}

/// Subscribers of one shared stream each get their own coding of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_stream_subscribers_are_compressed_each_their_own_way() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "", "share = true", false).await;
    let mut first = H1Client::connect(proxy.addr).await;
    first
        .get("/s", &[("accept", SSE), ("accept-encoding", "gzip")])
        .await;
    let mut conn = up.next().await;
    conn.head_chunked(SSE, &[]).await;
    let head = first.response_head().await;
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    let mut clients = vec![(first, Received::new(Some("gzip")))];
    for coding in [Some("br"), Some("zstd"), None] {
        let mut c = H1Client::connect(proxy.addr).await;
        let ae = coding.unwrap_or("identity");
        c.get("/s", &[("accept", SSE), ("accept-encoding", ae)])
            .await;
        let head = c.response_head().await;
        assert_eq!(head.header("content-encoding"), coding);
        clients.push((c, Received::new(coding)));
    }
    let mut sent = String::new();
    for i in 1..=10 {
        conn.chunk(event(i).as_bytes()).await;
        sent.push_str(&event(i));
        for (c, got) in &mut clients {
            let decoded = h1_decode_until(c, got, event(i).as_bytes()).await;
            assert_eq!(decoded, sent.as_bytes(), "{:?}", got.coding);
        }
    }
}

async fn metrics(proxy: &Proxy) -> BTreeMap<String, f64> {
    let mut client = H1Client::connect(proxy.admin_addr.expect("admin listener")).await;
    client.get("/metrics", &[]).await;
    let head = client.response_head().await;
    let text = String::from_utf8(client.body(&head).await.to_vec()).expect("utf-8");
    Scrape::parse(&text).0
}

async fn metric_until(proxy: &Proxy, key: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let v = metrics(proxy).await.get(key).copied().unwrap_or(0.0);
        if ok(v) {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{key} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `compression_max_streams` caps the encoders; the metrics count them
/// and the bytes before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_and_the_metrics() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "compression_max_streams = 1", "", true).await;
    let ae = [("accept-encoding", "gzip")];
    let (mut a, head, mut a_up) = open_h1(&proxy, &mut up, &ae, &[]).await;
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    let open = series("ssegate_compressed_streams_open", &[("route", "/")]);
    assert_eq!(metric_until(&proxy, &open, |v| v == 1.0).await, 1.0);
    // Over the cap: identity, still with Vary.
    let (mut b, head, mut b_up) = open_h1(&proxy, &mut up, &ae, &[]).await;
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(vary(&head), ["accept-encoding"]);
    let mut a_got = Received::new(Some("gzip"));
    let mut sent = 0;
    for i in 1..=20 {
        a_up.chunk(event(i).as_bytes()).await;
        sent += event(i).len();
        h1_decode_until(&mut a, &mut a_got, event(i).as_bytes()).await;
    }
    b_up.chunk(b"data: plain\n\n").await;
    assert_eq!(
        b.next_chunk().await.as_deref(),
        Some(&b"data: plain\n\n"[..])
    );
    let m = metrics(&proxy).await;
    let stage = |s| {
        let key = series(
            "ssegate_stream_compressed_bytes_total",
            &[("route", "/"), ("stage", s)],
        );
        m.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(stage("in"), sent as f64);
    assert_eq!(stage("out"), a_got.wire.len() as f64);
    assert!(
        stage("out") * 2.0 < stage("in"),
        "{} of {}",
        stage("out"),
        stage("in")
    );
    // The first stream ends: its slot is free for the next one.
    a_up.end_chunks().await;
    while a.next_chunk().await.is_some() {}
    assert_eq!(metric_until(&proxy, &open, |v| v == 0.0).await, 0.0);
    // (The upstream connection was read to its end: it carries the next request.)
    let mut c = H1Client::connect(proxy.addr).await;
    c.get("/s", &[("accept", SSE), ("accept-encoding", "gzip")])
        .await;
    a_up.next_request().await;
    a_up.head_chunked(SSE, &[]).await;
    let head = c.response_head().await;
    assert_eq!(head.header("content-encoding"), Some("gzip"));
}

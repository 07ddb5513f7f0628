//! `ssegate bench` and `ssegate bench upstream` end to end: the real binary
//! against itself, against small scripted servers, and through the proxy
//! over TLS. Every run is bounded by `?count=N` or by its own streams
//! failing, so the bench ends as soon as the thing under test is done; the
//! `--duration` given is only an upper bound.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{
    basic_config, bin, find, free_port, make_cert, within, BenchUpstream, Proxy, ProxyConfig,
    TempDir,
};
use serde_json::Value;
use ssegate::sse::Framer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

// ---------------------------------------------------------------------------
// Harness

/// The outcome of one `ssegate bench … --json`.
struct Run {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

async fn bench(args: &[&str]) -> Run {
    let out = within(
        "ssegate bench to finish",
        Command::new(bin())
            .arg("bench")
            .args(args)
            .arg("--json")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        stdout.trim_end().lines().count(),
        1,
        "--json prints exactly one line; got {stdout:?}, stderr {stderr}"
    );
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}; stderr {stderr}"));
    Run {
        code: out.status.code(),
        json,
        stderr,
    }
}

/// `ssegate bench` with one stream on `http://ADDR/` for at most 8 s.
async fn one_stream(addr: impl std::fmt::Display) -> Run {
    bench(&[
        "--url",
        &format!("http://{addr}/"),
        "--streams",
        "1",
        "--duration",
        "8s",
    ])
    .await
}

/// Numbers under `errors`, in the schema's order.
fn errors(run: &Run) -> [u64; 6] {
    ["connect", "tls", "status", "closed", "timeout", "other"]
        .map(|k| run.json["errors"][k].as_u64().expect(k))
}

fn num(run: &Run, key: &str) -> u64 {
    run.json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {}", run.json))
}

/// Asserts a complete, gap-free run of `streams` streams of `per_stream`
/// events each, all ended cleanly by the server.
fn assert_complete(run: &Run, streams: u64, per_stream: u64) {
    let ctx = format!("{}\nstderr: {}", run.json, run.stderr);
    assert_eq!(run.code, Some(0), "{ctx}");
    assert_eq!(num(run, "streams_requested"), streams, "{ctx}");
    assert_eq!(num(run, "streams_opened"), streams, "{ctx}");
    assert_eq!(num(run, "streams_failed"), 0, "{ctx}");
    assert_eq!(num(run, "events"), streams * per_stream, "{ctx}");
    assert_eq!(num(run, "gaps"), 0, "{ctx}");
    assert_eq!(num(run, "duplicates"), 0, "{ctx}");
    assert_eq!(
        run.json["latency_ms"]["count"].as_u64(),
        Some(streams * per_stream),
        "every event carried ts_us: {ctx}"
    );
    // Only the clean ends asked for by ?count=N.
    assert_eq!(errors(run), [0, 0, 0, streams, 0, 0], "{ctx}");
}

/// A server that answers every connection's first request with `response`
/// (written in the given pieces), then closes.
async fn scripted(pieces: Vec<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while find(&head, b"\r\n\r\n").is_none() {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                for piece in pieces {
                    if tcp.write_all(piece).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `text` as one HTTP/1.1 chunk.
fn chunk(text: &str) -> &'static [u8] {
    let chunk = format!("{:x}\r\n{text}\r\n", text.len());
    Box::leak(chunk.into_bytes().into_boxed_slice())
}

fn chunked_sse(events: &[&str]) -> Vec<&'static [u8]> {
    let mut pieces: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    ];
    for event in events {
        pieces.push(chunk(event));
    }
    pieces.push(b"0\r\n\r\n");
    pieces
}

/// Reads a raw HTTP/1.1 response head; returns it and the bytes after it.
async fn read_head(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    within("a response head", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find(&got, b"\r\n\r\n") {
                let rest = got.split_off(end + 4);
                return (String::from_utf8_lossy(&got).to_lowercase(), rest);
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// Reads a chunked body to its end and returns each event's (id, data).
async fn read_events(tcp: &mut TcpStream, mut wire: Vec<u8>) -> Vec<(String, String)> {
    within("a complete chunked body", async {
        let mut buf = [0u8; 4096];
        while !wire.ends_with(b"0\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the last chunk");
            wire.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let mut decoder = ssegate::bench::http1::ChunkedDecoder::default();
    let mut framer = Framer::with_data_capture(4096);
    let mut events = Vec::new();
    decoder
        .decode(&wire, |piece| {
            framer.feed_with(piece, |e| {
                events.push((
                    String::from_utf8_lossy(e.id).to_string(),
                    String::from_utf8_lossy(e.data).to_string(),
                ))
            })
        })
        .unwrap();
    assert!(decoder.is_done());
    events
}

async fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut tcp).await;
    (tcp, head, rest)
}

fn ids(events: &[(String, String)]) -> Vec<u64> {
    events.iter().map(|(id, _)| id.parse().unwrap()).collect()
}

// ---------------------------------------------------------------------------
// The client against the bench upstream

#[tokio::test]
async fn http1_streams_get_every_event_once() {
    let up = BenchUpstream::start("200").await;
    let url = up.url("/any/path?count=20");
    let run = bench(&["--url", &url, "--streams", "50", "--duration", "8s"]).await;
    assert_complete(&run, 50, 20);
    assert_eq!(run.json["http2"], false);
    assert_eq!(run.json["url"], url.as_str());
    // id: N\ndata: <100 bytes>\n\n per event.
    let bytes = num(&run, "bytes");
    assert!((1000 * 110..=1000 * 122).contains(&bytes), "bytes {bytes}");
    assert!(
        run.json["duration_s"].as_f64().unwrap() < 8.0,
        "ends when the streams do"
    );
    assert!(run.json["connect_ms"]["max"].as_f64().unwrap() > 0.0);
    assert!(run.json["first_event_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(run.json["events_per_s"].as_f64().unwrap() > 0.0);
    assert!(run.json["cpu_s"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn h2c_streams_spread_over_two_connections() {
    let up = BenchUpstream::start("200").await;
    let url = up.url("/?count=20");
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "50",
        "--http2",
        "--connections",
        "2",
        "--duration",
        "8s",
    ])
    .await;
    assert_complete(&run, 50, 20);
    assert_eq!(run.json["http2"], true);
    assert_eq!(run.json["connections"], 2);
    assert_eq!(
        run.json["connect_ms"]["max"].as_f64().map(|m| m > 0.0),
        Some(true)
    );
}

#[tokio::test]
async fn post_streams_token_events() {
    let up = BenchUpstream::start("10").await;
    let url = up.url("/chat");
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "5",
        "-d",
        r#"{"prompt":"hi"}"#,
        "-H",
        "content-type: application/json",
        "--duration",
        "8s",
    ])
    .await;
    // No ids on tokens: nothing to call a gap; every token has ts_us.
    assert_complete(&run, 5, 20);
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "4",
        "--http2",
        "-X",
        "POST",
        "-d",
        "a body",
        "--duration",
        "8s",
    ])
    .await;
    assert_complete(&run, 4, 20);

    for (framing, body) in [
        ("content-length: 5", "hello"),
        ("transfer-encoding: chunked", "5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let request = format!("POST /chat?count=3 HTTP/1.1\r\nhost: t\r\n{framing}\r\n\r\n{body}");
        let (mut tcp, head, rest) = raw_request(up.addr, &request).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        let events = read_events(&mut tcp, rest).await;
        let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data.len(), 3, "{data:?}");
        for (i, d) in data.iter().enumerate() {
            assert!(
                d.starts_with(&format!("{{\"token\":\"tok{}\"", i + 1)),
                "{d}"
            );
        }
    }
}

#[tokio::test]
async fn bench_on_idle_streams_sees_silence_and_no_events() {
    let up = BenchUpstream::start("100").await;
    let url = up.url("/?idle=1");
    let run = bench(&["--url", &url, "--streams", "3", "--duration", "1s"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(num(&run, "streams_opened"), 3);
    assert_eq!((num(&run, "events"), num(&run, "bytes")), (0, 0));
    assert_eq!(run.json["latency_ms"], Value::Null);
    assert_eq!(
        errors(&run),
        [0; 6],
        "streams still open at the end are no error"
    );
    let silence = run.json["max_silence_ms"].as_f64().unwrap();
    assert!(silence >= 900.0, "the whole run was silent: {silence}");
}

// ---------------------------------------------------------------------------
// The upstream, with raw clients

#[tokio::test]
async fn last_event_id_resumes_right_after_it() {
    let up = BenchUpstream::start("100").await;
    let (mut first, _, rest) =
        raw_request(up.addr, "GET /?count=3 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let seen = ids(&read_events(&mut first, rest).await);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1], seen[0] + 1);
    // seen[0] + 1 and + 2 were sent already: they come from the replay ring.
    let resume = format!(
        "GET /?count=5 HTTP/1.1\r\nhost: t\r\nlast-event-id: {}\r\n\r\n",
        seen[0]
    );
    let (mut second, head, rest) = raw_request(up.addr, &resume).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let resumed = ids(&read_events(&mut second, rest).await);
    let want: Vec<u64> = (seen[0] + 1..=seen[0] + 5).collect();
    assert_eq!(resumed, want);

    // The same connection serves the next request (keep-alive).
    second
        .write_all(b"GET /?count=1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, rest) = read_head(&mut second).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(read_events(&mut second, rest).await.len(), 1);
}

#[tokio::test]
async fn first_id_starts_the_sequence_there() {
    let up = BenchUpstream::start_with("100", &["--first-id", "5000"]).await;
    let (mut tcp, _, rest) =
        raw_request(up.addr, "GET /?count=2 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let seen = ids(&read_events(&mut tcp, rest).await);
    assert!(seen[0] >= 5000 && seen[1] == seen[0] + 1, "{seen:?}");
    assert!(seen[0] < 5100, "{seen:?}");
}

#[tokio::test]
async fn idle_gives_headers_and_no_events() {
    let up = BenchUpstream::start("100").await;
    let (idle, head, rest) = raw_request(up.addr, "GET /?idle=1 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    // Three ticks on another stream prove time passed for the idle one too.
    let (mut ticking, _, ticking_rest) =
        raw_request(up.addr, "GET /?count=3 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(read_events(&mut ticking, ticking_rest).await.len(), 3);
    assert!(rest.is_empty(), "idle stream sent {rest:?}");
    let mut buf = [0u8; 64];
    match idle.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("idle stream should be silent and open, got {other:?}"),
    }
}

/// The bench upstream's `GET /_stats` (plus `query`), over HTTP/1.1.
async fn origin_stats(addr: SocketAddr, query: &str) -> Value {
    let request = format!("GET /_stats{query} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let (mut tcp, head, mut body) = raw_request(addr, &request).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    within("the stats body", tcp.read_to_end(&mut body))
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn stats_count_event_stream_connections_and_streams() {
    let up = BenchUpstream::start("200").await;
    let zero = origin_stats(up.addr, "").await;
    assert_eq!(
        zero["connections"]["accepted"], 0,
        "/_stats is not one: {zero}"
    );
    assert_eq!(zero["streams"]["accepted"], 0, "{zero}");
    let url = up.url("/?count=3");
    let h1_args = ["--url", &url, "--streams", "3", "--duration", "8s"];
    let h2_args = [
        "--url",
        &url,
        "--streams",
        "8",
        "--http2",
        "--connections",
        "2",
        "--duration",
        "8s",
    ];
    let (h1, h2) = tokio::join!(bench(&h1_args), bench(&h2_args));
    assert_complete(&h1, 3, 3);
    assert_complete(&h2, 8, 3);
    // The origin closes its side after the last event; wait for the gauges.
    let stats = within("every stream counted out", async {
        loop {
            let stats = origin_stats(up.addr, "?reset_max=1").await;
            if stats["streams"]["open"] == 0 && stats["connections"]["open"] == 0 {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(stats["connections"]["accepted"], 3 + 2, "{stats}");
    assert_eq!(stats["streams"]["accepted"], 3 + 8, "{stats}");
    assert_eq!(stats["http1_streams"], 3, "{stats}");
    assert_eq!(stats["http2_streams"], 8, "{stats}");
    let peak = stats["streams"]["open_max"].as_u64().unwrap();
    assert!((1..=11).contains(&peak), "{stats}");
    assert!(stats["events_published"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["lagged"], 0, "{stats}");
    let after = origin_stats(up.addr, "").await;
    assert_eq!(
        after["streams"]["open_max"], 0,
        "reset to what was open: {after}"
    );
    assert_eq!(after["connections"]["open_max"], 0, "{after}");
}

// ---------------------------------------------------------------------------
// Failures, gaps and duplicates against scripted servers

#[tokio::test]
async fn status_errors_count_and_exit_1_when_nothing_opened() {
    let not_found = scripted(vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"]).await;
    let run = bench(&[
        "--url",
        &format!("http://{not_found}/"),
        "--streams",
        "3",
        "--duration",
        "8s",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        (num(&run, "streams_opened"), num(&run, "streams_failed")),
        (0, 3)
    );
    assert_eq!(errors(&run), [0, 0, 3, 0, 0, 0]);
    assert!(run.stderr.contains("no stream opened"), "{}", run.stderr);
    assert!(run.stderr.contains("status 404"), "{}", run.stderr);

    let plain = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi",
    ])
    .await;
    let run = bench(&[
        "--url",
        &format!("http://{plain}/"),
        "--streams",
        "2",
        "--duration",
        "8s",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(errors(&run), [0, 0, 2, 0, 0, 0]);

    let closed_port = format!("127.0.0.1:{}", free_port());
    let run = bench(&[
        "--url",
        &format!("http://{closed_port}/"),
        "--streams",
        "4",
        "--duration",
        "8s",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(errors(&run), [4, 0, 0, 0, 0, 0]);
    assert!(run.stderr.contains("connect 4"), "{}", run.stderr);
}

#[tokio::test]
async fn gaps_and_duplicates_are_counted() {
    let gap = scripted(chunked_sse(&[
        "id: 1\ndata: a\n\n",
        "id: 2\ndata: b\n\n",
        "id: 4\ndata: c\n\n",
    ]))
    .await;
    let run = bench(&[
        "--url",
        &format!("http://{gap}/"),
        "--streams",
        "2",
        "--duration",
        "8s",
    ])
    .await;
    assert_eq!(
        (
            num(&run, "events"),
            num(&run, "gaps"),
            num(&run, "duplicates")
        ),
        (6, 2, 0)
    );
    assert_eq!(
        run.json["latency_ms"],
        Value::Null,
        "no ts_us in these events"
    );

    let dup = scripted(chunked_sse(&[
        "id: 1\ndata: a\n\n",
        ": heartbeat\n\n",
        "id: 2\ndata: b\n\n",
        "id: 2\ndata: b\n\n",
    ]))
    .await;
    let run = one_stream(dup).await;
    assert_eq!(
        (
            num(&run, "events"),
            num(&run, "gaps"),
            num(&run, "duplicates")
        ),
        (3, 0, 1)
    );
    assert_eq!(num(&run, "comments"), 1);
    assert_eq!(errors(&run), [0, 0, 0, 1, 0, 0], "ended cleanly, early");
}

#[tokio::test]
async fn length_and_close_delimited_bodies_and_truncation() {
    let sized = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 20\r\n\r\n",
        b"id: 7\ndata: x\n\n",
        b"id: 8\n",
    ])
    .await;
    let run = one_stream(sized).await;
    assert_eq!(
        (num(&run, "events"), num(&run, "bytes")),
        (1, 20),
        "{}",
        run.json
    );
    assert_eq!(errors(&run), [0, 0, 0, 1, 0, 0]);

    let until_close = scripted(vec![
        b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\r\n",
        b"data: one\n\ndata: two\n\n",
    ])
    .await;
    let run = one_stream(until_close).await;
    assert_eq!(num(&run, "events"), 2, "{}", run.json);

    let truncated = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"f\r\ndata: a\n\ndata: ",
    ])
    .await;
    let run = one_stream(truncated).await;
    assert_eq!(num(&run, "events"), 1, "{}", run.json);
    assert_eq!(errors(&run), [0, 0, 0, 1, 0, 0]);
    assert_eq!(run.code, Some(0), "the stream did open");

    let garbage = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"zz\r\n",
    ])
    .await;
    let run = one_stream(garbage).await;
    assert_eq!(errors(&run), [0, 0, 0, 0, 0, 1], "{}", run.json);
}

// ---------------------------------------------------------------------------
// --reconnect

/// A server that answers the n-th connection with `responses[n]` (written in
/// its pieces, then closed), and the connections past the list with the last
/// one, kept open until the client leaves. Records each request head (lower
/// case) and when it arrived.
async fn scripted_attempts(
    responses: Vec<Vec<&'static [u8]>>,
) -> (SocketAddr, Arc<Mutex<Vec<(Instant, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let last = n + 1 >= responses.len();
            let pieces = responses[n.min(responses.len() - 1)].clone();
            n += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while find(&head, b"\r\n\r\n").is_none() {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push((
                    Instant::now(),
                    String::from_utf8_lossy(&head).to_lowercase(),
                ));
                for piece in pieces {
                    if tcp.write_all(piece).await.is_err() {
                        return;
                    }
                }
                if last {
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, heads)
}

fn f64_of(run: &Run, key: &str) -> f64 {
    run.json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {}", run.json))
}

#[tokio::test]
async fn reconnect_resumes_the_ids_across_reconnections() {
    // 200 events/s: a stream that came back after its 1 s wait without
    // Last-Event-ID would start about 200 ids further on and count as gaps.
    let up = BenchUpstream::start("200").await;
    let url = up.url("/?count=5");
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "2",
        "--duration",
        "4500ms",
        "--reconnect",
    ])
    .await;
    let ctx = format!("{}\nstderr: {}", run.json, run.stderr);
    assert_eq!(run.code, Some(0), "{ctx}");
    assert_eq!(run.json["reconnect"], true, "{ctx}");
    assert_eq!(num(&run, "streams_opened"), 2, "{ctx}");
    let reconnections = num(&run, "reconnections");
    // Each stream: 5 events, 1 s wait (no retry: sent), again: 4 times in 4.5 s.
    assert!(
        (6..=8).contains(&reconnections),
        "at least 3 reconnections per stream: {ctx}"
    );
    assert_eq!(
        (num(&run, "gaps"), num(&run, "duplicates")),
        (0, 0),
        "{ctx}"
    );
    let events = num(&run, "events");
    assert!(
        events >= 5 * (reconnections + 1) && events <= 5 * (reconnections + 2),
        "five events a connection: {ctx}"
    );
    assert_eq!(num(&run, "reconnect_failures"), 0, "{ctx}");
    assert!(errors(&run)[3] >= reconnections, "every end counted: {ctx}");
    let away = f64_of(&run, "max_disconnected_ms");
    assert!(
        (1000.0..1900.0).contains(&away),
        "the default 1 s wait: {ctx}"
    );
    assert!(
        f64_of(&run, "max_silence_ms") < 900.0,
        "silence is measured per connection: {ctx}"
    );

    // Without the flag the same streams just end.
    let run = bench(&["--url", &url, "--streams", "2", "--duration", "4500ms"]).await;
    assert_eq!(run.json["reconnect"], false);
    assert_eq!(
        (num(&run, "reconnections"), num(&run, "events")),
        (0, 10),
        "{}",
        run.json
    );
}

/// `--reconnect --http2`: each stream ends after five events and is opened
/// again on its HTTP/2 connection with `Last-Event-ID`, as over HTTP/1.1.
#[tokio::test]
async fn reconnect_over_http2_resumes_the_ids() {
    let up = BenchUpstream::start("200").await;
    let url = up.url("/?count=5");
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "4",
        "--http2",
        "--connections",
        "2",
        "--duration",
        "3500ms",
        "--reconnect",
    ])
    .await;
    let ctx = format!("{}\nstderr: {}", run.json, run.stderr);
    assert_eq!(run.code, Some(0), "{ctx}");
    assert_eq!(run.json["reconnect"], true, "{ctx}");
    assert_eq!(num(&run, "streams_opened"), 4, "{ctx}");
    let reconnections = num(&run, "reconnections");
    // Each stream: 5 events, 1 s wait (no retry: sent), again: 3 times in 3.5 s.
    assert!(
        (8..=12).contains(&reconnections),
        "two or three reconnections per stream: {ctx}"
    );
    assert_eq!(
        (num(&run, "gaps"), num(&run, "duplicates")),
        (0, 0),
        "{ctx}"
    );
    let events = num(&run, "events");
    assert!(
        events >= 5 * reconnections && events <= 5 * (reconnections + 4),
        "five events a connection: {ctx}"
    );
    assert_eq!(num(&run, "reconnect_failures"), 0, "{ctx}");
    assert!(errors(&run)[3] >= reconnections, "every end counted: {ctx}");
}

/// `--reconnect --http2` when the HTTP/2 connection itself goes (a proxy
/// that restarted): the stream comes back on a new connection, with
/// `Last-Event-ID`, after the `retry:` it was given.
#[tokio::test]
async fn reconnect_over_http2_opens_a_gone_connection_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            let this_is_first = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                let Some(Ok((req, mut respond))) = conn.accept().await else {
                    return;
                };
                let id = req.headers().get("last-event-id");
                record
                    .lock()
                    .unwrap()
                    .push(id.map(|v| v.to_str().unwrap().to_string()));
                let head = http::Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(())
                    .unwrap();
                let mut body = respond.send_response(head, false).unwrap();
                let events: &'static [u8] = if this_is_first {
                    b"retry: 100\n\nid: 1\ndata: a\n\nid: 2\ndata: b\n\n"
                } else {
                    b"id: 3\ndata: c\n\n"
                };
                body.send_data(bytes::Bytes::from_static(events), false)
                    .unwrap();
                if this_is_first {
                    // Once a PING is answered, the client has all sent
                    // before it; then the whole connection goes, its
                    // stream unfinished.
                    let mut ping = conn.ping_pong().unwrap();
                    tokio::select! {
                        _ = ping.ping(h2::Ping::opaque()) => {}
                        _ = async { while let Some(Ok(_)) = conn.accept().await {} } => return,
                    }
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                }
                while let Some(Ok(_)) = conn.accept().await {}
            });
        }
    });
    let run = bench(&[
        "--url",
        &format!("http://{addr}/feed"),
        "--streams",
        "1",
        "--http2",
        "--duration",
        "1500ms",
        "--reconnect",
    ])
    .await;
    let ctx = format!("{}\nstderr: {}", run.json, run.stderr);
    assert_eq!(num(&run, "events"), 3, "{ctx}");
    assert_eq!(
        (num(&run, "gaps"), num(&run, "duplicates")),
        (0, 0),
        "{ctx}"
    );
    assert_eq!(num(&run, "reconnections"), 1, "{ctx}");
    assert_eq!(num(&run, "reconnect_failures"), 0, "{ctx}");
    assert_eq!(num(&run, "streams_open_at_end"), 1, "{ctx}");
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("2".to_string())],
        "{ctx}"
    );
}

#[tokio::test]
async fn reconnect_honours_retry_sends_last_event_id_and_retries_failures() {
    const SSE_CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let (addr, heads) = scripted_attempts(vec![
        // Two events and a retry time, then a clean end.
        vec![
            SSE_CHUNKED,
            chunk("retry: 200\n\nid: 1\ndata: a\n\nid: 2\n"),
            chunk("data: b\n\n"),
            b"0\r\n\r\n",
        ],
        // A shed response: 200, no event, only a longer retry time.
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 12\r\n\r\nretry: 300\n\n",
        ],
        // A failed attempt.
        vec![b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"],
        // An event, then half of one and a reset-like end (no last chunk).
        vec![SSE_CHUNKED, chunk("id: 3\ndata: c\n\nid: 4\nda")],
        // Open until the run ends: the cut event comes whole.
        vec![SSE_CHUNKED, chunk("id: 4\ndata: d\n\n")],
    ])
    .await;
    let run = bench(&[
        "--url",
        &format!("http://{addr}/feed"),
        "--streams",
        "1",
        "--duration",
        "2500ms",
        "--reconnect",
    ])
    .await;
    let ctx = format!("{}\nstderr: {}", run.json, run.stderr);
    assert_eq!(num(&run, "events"), 4, "{ctx}");
    assert_eq!(
        (num(&run, "gaps"), num(&run, "duplicates")),
        (0, 0),
        "{ctx}"
    );
    assert_eq!(num(&run, "reconnections"), 3, "{ctx}");
    assert_eq!(num(&run, "reconnect_failures"), 1, "{ctx}");
    assert_eq!(num(&run, "streams_open_at_end"), 1, "{ctx}");
    // Ends: clean, clean (the shed one), truncated; one 503.
    assert_eq!(errors(&run), [0, 0, 1, 3, 0, 0], "{ctx}");
    // From the shed response's end to the open after the 503: 300 ms twice.
    let away = f64_of(&run, "max_disconnected_ms");
    assert!((600.0..1000.0).contains(&away), "{ctx}");

    let heads = heads.lock().unwrap().clone();
    let resumed: Vec<Option<&str>> = heads
        .iter()
        .map(|(_, h)| {
            h.lines()
                .find_map(|l| l.strip_prefix("last-event-id: "))
                .map(str::trim)
        })
        .collect();
    assert_eq!(
        resumed,
        [None, Some("2"), Some("2"), Some("2"), Some("3")],
        "{heads:?}"
    );
    assert!(heads
        .iter()
        .all(|(_, h)| h.starts_with("get /feed http/1.1")));
    let waits: Vec<u128> = heads
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).as_millis())
        .collect();
    for (wait, at_least) in waits.iter().zip([200, 300, 300, 300]) {
        assert!(
            (at_least..at_least + 250).contains(wait),
            "waits {waits:?}, want retry: 200 then 300"
        );
    }
}

#[tokio::test]
async fn reconnect_does_not_retry_a_first_opening() {
    let closed_port = format!("127.0.0.1:{}", free_port());
    let run = bench(&[
        "--url",
        &format!("http://{closed_port}/"),
        "--streams",
        "3",
        "--duration",
        "8s",
        "--reconnect",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(errors(&run), [3, 0, 0, 0, 0, 0]);
    assert_eq!(num(&run, "reconnect_failures"), 0);
    assert!(
        f64_of(&run, "duration_s") < 8.0,
        "ends at once: {}",
        run.json
    );
}

// ---------------------------------------------------------------------------
// Through the proxy, over TLS

#[tokio::test]
async fn tls_http2_and_http1_through_the_proxy() {
    let up = BenchUpstream::start("200").await;
    let dir = TempDir::new("bench-tls");
    let cert = make_cert(&dir);
    let mut cfg = ProxyConfig::new(basic_config(up.addr, ""));
    cfg.tls = Some((cert.cert_path.clone(), cert.key_path.clone()));
    let proxy = Proxy::start(cfg).await;
    let url = format!(
        "https://127.0.0.1:{}/?count=10",
        proxy.tls_addr.unwrap().port()
    );

    // 100 streams multiplexed on one connection, each event a small DATA frame.
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "100",
        "--http2",
        "--insecure",
        "--duration",
        "8s",
    ])
    .await;
    assert_complete(&run, 100, 10);

    let run = bench(&["--url", &url, "--streams", "10", "-k", "--duration", "8s"]).await;
    assert_complete(&run, 10, 10);

    // Self-signed: without --insecure the certificate is refused.
    let run = bench(&[
        "--url",
        &url,
        "--streams",
        "3",
        "--http2",
        "--duration",
        "8s",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(errors(&run), [0, 3, 0, 0, 0, 0], "{}", run.json);
}

// ---------------------------------------------------------------------------
// --chart

/// The width and height of a PNG, after checking its signature and that
/// its first chunk is the header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24, "{} bytes is no PNG", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn chart_draws_the_run_into_a_png_with_or_without_a_font() {
    let origin = BenchUpstream::start("20").await;
    let dir = TempDir::new("bench-chart");
    let url = origin.url("/");
    let with_text = dir.0.join("run.png");
    let without = dir.0.join("plain.png");
    let args = |png: &std::path::Path| {
        let mut cmd = Command::new(bin());
        cmd.args([
            "bench",
            "--streams",
            "4",
            "--duration",
            "2s",
            "--json",
            "--url",
        ])
        .arg(&url)
        .arg("--chart")
        .arg(png)
        .kill_on_drop(true);
        cmd
    };
    let mut no_font = args(&without);
    no_font.env("SSEGATE_CHART_FONT", dir.0.join("no-such-font.ttf"));
    let (a, b) = within(
        "both runs",
        futures_util::future::join(args(&with_text).output(), no_font.output()),
    )
    .await;
    for (out, png) in [(a.unwrap(), &with_text), (b.unwrap(), &without)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON only");
        assert_eq!(report["streams_opened"], 4, "{report}");
        assert!(
            stderr.contains(&format!("chart written to {}", png.display())),
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("the chart has no text"),
            png == &without,
            "{stderr}"
        );
        let bytes = std::fs::read(png).expect("the chart file");
        assert_eq!(png_size(&bytes), (1600, 1000));
    }
}

#[tokio::test]
async fn chart_into_a_missing_folder_or_not_png_is_refused_before_the_run() {
    // Nothing listens on the URL's port: a run would fail with "connect".
    let url = format!("http://127.0.0.1:{}/", free_port());
    let dir = TempDir::new("bench-chart-bad");
    let missing = dir.0.join("no-such-folder").join("run.png");
    for (chart, reason) in [
        (
            missing.clone(),
            format!(
                "the folder {} does not exist",
                missing.parent().unwrap().display()
            ),
        ),
        (
            dir.0.join("run.svg"),
            "the file name must end in .png".to_string(),
        ),
    ] {
        let out = within(
            "bench to refuse its flags",
            Command::new(bin())
                .args([
                    "bench",
                    "--streams",
                    "1",
                    "--duration",
                    "5s",
                    "--url",
                    &url,
                    "--chart",
                ])
                .arg(&chart)
                .output(),
        )
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(out.stdout.is_empty(), "no run, no report");
        assert!(
            stderr.contains(&format!("--chart {}: {reason}", chart.display())),
            "{stderr}"
        );
        assert!(!chart.exists());
    }
}

// ---------------------------------------------------------------------------
// The command line

#[tokio::test]
async fn help_explains_every_flag() {
    let help = |args: &'static [&'static str]| async move {
        let out = Command::new(bin()).args(args).output().await.unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let text = help(&["bench", "--help"]).await;
    for flag in [
        "--url",
        "--streams",
        "--http2",
        "--connections",
        "--insecure",
        "--ramp",
        "--duration",
        "-X",
        "-d",
        "-H",
        "--json",
        "--reconnect",
        "--chart",
        "FILE.png",
        "Last-Event-ID",
        "ts_us",
        "upstream",
    ] {
        assert!(text.contains(flag), "bench --help lacks {flag}:\n{text}");
    }
    let text = help(&["bench", "upstream", "--help"]).await;
    for flag in [
        "--listen",
        "--rate",
        "--payload",
        "--first-id",
        "Last-Event-ID",
        "?count=N",
        "?idle=1",
        "POST",
        "/_stats",
        "?reset_max=1",
    ] {
        assert!(
            text.contains(flag),
            "bench upstream --help lacks {flag}:\n{text}"
        );
    }
}

#[tokio::test]
async fn bad_flags_are_refused_with_a_reason() {
    let run = |args: &'static [&'static str]| async move {
        Command::new(bin())
            .arg("bench")
            .args(args)
            .output()
            .await
            .unwrap()
    };
    let out = run(&[
        "--url",
        "http://x/",
        "--streams",
        "1",
        "--duration",
        "1s",
        "--ramp",
        "2s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ramp"));
    let out = run(&["--url", "ftp://x/", "--streams", "1", "--duration", "1s"]).await;
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["--url", "http://x/", "--streams", "1", "--duration", "1x"]).await;
    assert_eq!(out.status.code(), Some(2), "clap rejects the duration");
    let out = run(&[
        "--url",
        "http://x/",
        "--streams",
        "1",
        "--duration",
        "1s",
        "--connections",
        "2",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "--connections needs --http2");
}

//! Stream limits and load shedding end to end: the real binary with
//! `[limits]` / route `max_streams`, a scripted upstream whose accepted
//! connections are counted, and HTTP/1.1 clients.
//!
//! A stream is "open" once its client has the response header. A closed
//! stream's slot is given back before its upstream connection is closed
//! (`end_stream`), so a test waits for that close, never for time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::*;
use tokio::net::{TcpSocket, TcpStream};

const SSE: &str = "text/event-stream";
const ACCEPT_SSE: (&str, &str) = ("accept", SSE);
/// `shed_retry = "1s"`, `shed_retry_jitter = "1s"`: every backoff is in here.
const BACKOFF_MS: std::ops::RangeInclusive<u64> = 1000..=2000;

/// A config with `[limits]` holding `limits` (plus the shed backoff) and
/// one upstream `app` serving `routes` (`[[route]]` bodies without `upstream`).
fn config(upstream: SocketAddr, limits: &str, routes: &[&str]) -> String {
    let mut sections = format!(
        "[limits]\nshed_retry = \"1s\"\nshed_retry_jitter = \"1s\"\n{limits}\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n"
    );
    for r in routes {
        sections.push_str(&format!("\n[[route]]\n{r}\nupstream = \"app\"\n"));
    }
    config_with("2s", "", &sections)
}

async fn start(upstream: &Upstream, limits: &str, routes: &[&str]) -> Proxy {
    let mut cfg = ProxyConfig::new(config(upstream.addr, limits, routes));
    cfg.admin = true;
    Proxy::start(cfg).await
}

/// Opens an event stream on `path` from `client`: the upstream gets the
/// request and answers `text/event-stream`, the client has the header.
async fn open_stream(
    mut client: H1Client<TcpStream>,
    upstream: &mut Upstream,
    path: &str,
) -> (H1Client<TcpStream>, UpConn) {
    client.get(path, &[ACCEPT_SSE]).await;
    let mut conn = upstream.next().await;
    assert!(conn.req.target.starts_with(path), "{:?}", conn.req.target);
    conn.head_chunked(SSE, &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(SSE));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    (client, conn)
}

/// Asserts that `client`'s `Accept: text/event-stream` request on `path` is
/// shed the EventSource way: a complete 200 event stream of only
/// `retry: N\n\n`, N within the configured backoff. Returns N.
async fn assert_shed_as_event_stream(client: &mut H1Client<TcpStream>, path: &str) -> u64 {
    client.get(path, &[ACCEPT_SSE]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some(SSE));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    let body = client.body(&head).await;
    let text = std::str::from_utf8(&body).expect("utf-8");
    let ms: u64 = text
        .strip_prefix("retry: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a lone retry field: {text:?}"));
    assert!(
        BACKOFF_MS.contains(&ms),
        "retry {ms} outside {BACKOFF_MS:?}"
    );
    ms
}

/// `ssegate_streams_shed_total{route,limit}` from one scrape.
async fn shed_total(proxy: &Proxy, route: &str, limit: &str) -> u64 {
    let addr = proxy.admin_addr.expect("admin listener");
    let mut client = H1Client::connect(addr).await;
    client.get("/metrics", &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let body = client.body(&head).await;
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let series = format!("ssegate_streams_shed_total{{limit=\"{limit}\",route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series:?} in:\n{text}"))
        .parse()
        .expect("a count")
}

/// An HTTP/1.1 client connected to `proxy` from the loopback address `from`.
async fn connect_from(from: &str, proxy: SocketAddr) -> H1Client<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback source address");
    H1Client::over(socket.connect(proxy).await.unwrap())
}

#[tokio::test]
async fn global_limit_sheds_event_sources_without_touching_the_upstream() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "max_streams = 2", &["path = \"/\""]).await;
    let before = shed_total(&proxy, "/", "global").await;

    let (first, mut first_up) =
        open_stream(H1Client::connect(proxy.addr).await, &mut up, "/a").await;
    let (mut second, mut second_up) =
        open_stream(H1Client::connect(proxy.addr).await, &mut up, "/b").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

    let mut third = H1Client::connect(proxy.addr).await;
    assert_shed_as_event_stream(&mut third, "/c").await;
    // The shed response ended properly: the same connection carries another
    // request, shed again since nothing closed.
    assert_shed_as_event_stream(&mut third, "/c").await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "a shed request must not reach the upstream"
    );
    assert_eq!(shed_total(&proxy, "/", "global").await - before, 2);
    assert_eq!(shed_total(&proxy, "/", "client").await, 0);

    // The streams still work.
    second_up.chunk(b"data: x\n\n").await;
    let mut got = Vec::new();
    second.read_until(&mut got, b"data: x\n\n").await;

    // The first client goes away; once the proxy has closed its upstream
    // connection the slot is free again.
    drop(first);
    within("the first stream's upstream close", first_up.closed()).await;
    let (_fourth, _fourth_up) = open_stream(third, &mut up, "/d").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(shed_total(&proxy, "/", "global").await - before, 2);
}

#[tokio::test]
async fn a_plain_request_that_turns_into_a_stream_over_the_limit_gets_503() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "max_streams = 1", &["path = \"/\""]).await;
    let (_open, _open_up) = open_stream(H1Client::connect(proxy.addr).await, &mut up, "/a").await;

    // No Accept header: the proxy only learns it is a stream from the upstream.
    let mut client = H1Client::connect(proxy.addr).await;
    client.get("/b", &[]).await;
    let mut conn = up.next().await;
    assert_eq!(conn.req.target, "/b");
    conn.head_chunked(SSE, &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 503, "{head:?}");
    let secs: u64 = head
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {head:?}"));
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    let body = client.body(&head).await;
    assert!(
        find(&body, b"too many open event streams").is_some(),
        "{body:?}"
    );
    // That upstream response is dropped, its connection not reused.
    within("the shed upstream connection to close", conn.closed()).await;
    assert_eq!(shed_total(&proxy, "/", "global").await, 1);
}

#[tokio::test]
async fn ordinary_requests_pass_while_the_stream_limit_is_full() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "max_streams = 1", &["path = \"/\""]).await;
    let (_open, _open_up) = open_stream(H1Client::connect(proxy.addr).await, &mut up, "/s").await;

    let mut client = H1Client::connect(proxy.addr).await;
    for _ in 0..2 {
        client.get("/plain", &[("accept", "text/plain")]).await;
        let mut conn = up.next().await;
        conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let head = client.response_head().await;
        assert_eq!(head.status, 200);
        assert_eq!(&client.body(&head).await[..], b"ok");
    }
    assert_eq!(shed_total(&proxy, "/", "global").await, 0);
}

#[tokio::test]
async fn a_route_limit_leaves_other_routes_alone() {
    let mut up = Upstream::start().await;
    let proxy = start(
        &up,
        "",
        &["path = \"/a/\"\nmax_streams = 1", "path = \"/b/\""],
    )
    .await;
    let (_a, _a_up) = open_stream(H1Client::connect(proxy.addr).await, &mut up, "/a/1").await;

    let mut client = H1Client::connect(proxy.addr).await;
    assert_shed_as_event_stream(&mut client, "/a/2").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(shed_total(&proxy, "/a/", "route").await, 1);

    let (_b1, _b1_up) = open_stream(client, &mut up, "/b/1").await;
    let (_b2, _b2_up) = open_stream(H1Client::connect(proxy.addr).await, &mut up, "/b/2").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(shed_total(&proxy, "/b/", "route").await, 0);
    assert_eq!(shed_total(&proxy, "/a/", "route").await, 1);
}

#[tokio::test]
async fn a_client_limit_counts_per_ip_address() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "max_streams_per_client = 1", &["path = \"/\""]).await;
    let (_one, _one_up) =
        open_stream(connect_from("127.0.0.1", proxy.addr).await, &mut up, "/1").await;

    let mut same = connect_from("127.0.0.1", proxy.addr).await;
    assert_shed_as_event_stream(&mut same, "/2").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(shed_total(&proxy, "/", "client").await, 1);

    // Another address is another client.
    let (_other, _other_up) =
        open_stream(connect_from("127.0.0.2", proxy.addr).await, &mut up, "/3").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(shed_total(&proxy, "/", "client").await, 1);
    assert_eq!(shed_total(&proxy, "/", "global").await, 0);
}

#[tokio::test]
async fn an_h2c_event_source_is_shed_the_same_way() {
    let mut up = Upstream::start().await;
    let proxy = start(&up, "max_streams = 1", &["path = \"/\""]).await;
    let (_open, _open_up) = open_stream(H1Client::connect(proxy.addr).await, &mut up, "/a").await;

    let send = h2c_connect(proxy.addr).await;
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/b", proxy.addr))
        .header("accept", SSE)
        .body(())
        .unwrap();
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let (parts, mut body) = within("h2 response", resp).await.unwrap().into_parts();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers.get("content-type").unwrap(), SSE);
    let mut got = Vec::new();
    h2_read_until(&mut body, &mut got, b"\n\n").await;
    let text = String::from_utf8(got).unwrap();
    let ms: u64 = text
        .strip_prefix("retry: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a lone retry field: {text:?}"));
    assert!(BACKOFF_MS.contains(&ms), "retry {ms}");
    // The stream ends cleanly (END_STREAM), with nothing after the field.
    assert!(within("h2 end of stream", body.data()).await.is_none());
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(shed_total(&proxy, "/", "global").await, 1);
}

//! Shared event streams end to end (`[[route]] share = true`): the real
//! binary between a broadcasting origin (`common::broadcast::SseOrigin`,
//! every request logged, every event written by the test) and HTTP/1.1 and
//! h2c subscribers.
//!
//! Whether a subscriber shares is read from the origin's log: an unshared
//! subscriber's response head can only exist once the origin has answered
//! a request of its own, so once a head is in, the origin's count of
//! event-stream requests is exact. When a subscriber is registered on a
//! shared stream is read from `ssegate_shared_subscribers{route}` on the
//! admin listener, before events it must receive are sent. Waits are
//! bounded by `WAIT`; nothing sleeps to synchronise.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broadcast::*;
use common::scrape::{series, Scrape};
use common::*;
use rand::rngs::StdRng;
use rand::Rng;

/// The sharing route of most tests, and its metric label.
const ROUTE: &str = "/feeds/";
const FEED: &str = "/feeds/news";

// ---------------------------------------------------------------------------
// Harness

/// A config with heartbeats off plus `stream_extra` in `[stream]`, then
/// `sections` (e.g. `[limits]`), the upstream `app` at `origin`, one
/// `[[route]]` per entry of `routes` (its body without `upstream`), and a
/// catch-all route `/` that does not share.
fn config(origin: SocketAddr, stream_extra: &str, sections: &str, routes: &[String]) -> String {
    let mut s = format!("{sections}\n\n[[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n");
    for r in routes {
        s.push_str(&format!("\n[[route]]\n{r}\nupstream = \"app\"\n"));
    }
    s.push_str("\n[[route]]\npath = \"/\"\nupstream = \"app\"\n");
    config_with("2s", &format!("heartbeat = \"off\"\n{stream_extra}"), &s)
}

/// The body of a sharing route on `path` with `extra` keys.
fn share_route(path: &str, extra: &str) -> String {
    format!("path = \"{path}\"\nshare = true\n{extra}")
}

/// A proxy with an admin listener serving `config`.
async fn start_config(config: String) -> Proxy {
    let mut cfg = ProxyConfig::new(config);
    cfg.admin = true;
    Proxy::start(cfg).await
}

/// A proxy whose route `/feeds/` shares with `route_extra`.
async fn start(origin: &SseOrigin, stream_extra: &str, route_extra: &str) -> Proxy {
    start_config(config(
        origin.addr,
        stream_extra,
        "",
        &[share_route(ROUTE, route_extra)],
    ))
    .await
}

/// One scrape of `/metrics`: canonical series to value.
async fn scrape(proxy: &Proxy) -> BTreeMap<String, f64> {
    let mut client = H1Client::connect(proxy.admin_addr.expect("admin listener")).await;
    client.get("/metrics", &[]).await;
    let head = client.response_head().await;
    assert_eq!(head.status, 200);
    let text = String::from_utf8(client.body(&head).await.to_vec()).expect("utf-8");
    Scrape::parse(&text).0
}

/// A series' value now (0 when absent: counters appear on first use).
async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(proxy)
        .await
        .get(&series(name, labels))
        .copied()
        .unwrap_or(0.0)
}

/// Scrapes until the series satisfies `ok`; returns its value. Bounded by `WAIT`.
async fn metric_until(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let start = Instant::now();
    loop {
        let v = metric(proxy, name, labels).await;
        if ok(v) {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} stayed at {v}",
            series(name, labels)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `route` has exactly `n` shared subscribers.
async fn subscribers_on(proxy: &Proxy, route: &str, n: usize) {
    metric_until(
        proxy,
        "ssegate_shared_subscribers",
        &[("route", route)],
        |v| v == n as f64,
    )
    .await;
}

/// Waits until `/feeds/` has exactly `n` shared subscribers.
async fn subscribers(proxy: &Proxy, n: usize) {
    subscribers_on(proxy, ROUTE, n).await
}

async fn replays(proxy: &Proxy, result: &str) -> f64 {
    metric(
        proxy,
        "ssegate_replays_total",
        &[("route", ROUTE), ("result", result)],
    )
    .await
}

/// Writes `bytes` to `stream` in chunks cut at random places (mid-line,
/// mid-event): what a subscriber gets must not depend on the cuts.
fn send_cut(stream: &OriginStream, bytes: &[u8], rng: &mut StdRng) {
    let mut pos = 0;
    while pos < bytes.len() {
        let end = (pos + rng.gen_range(1..=64)).min(bytes.len());
        stream.send(&bytes[pos..end]);
        pos = end;
    }
}

/// Awaits every task, in order, each bounded by `WAIT`.
async fn join_all<T: Send + 'static>(what: &str, tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(within(what, t).await.unwrap());
    }
    out
}

/// `n` h2c connections to the proxy.
async fn h2c_connections(proxy: &Proxy, n: usize) -> Vec<H2Sender> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(h2c_connect(proxy.addr).await);
    }
    v
}

fn cookie(v: &str) -> (&'static str, &str) {
    ("cookie", v)
}

// ---------------------------------------------------------------------------
// 1. One upstream stream for many subscribers

/// 200 subscribers of one URL, 100 over HTTP/1.1 and 100 as streams of four
/// h2c connections, `threads = 2`: the origin gets one request, and every
/// subscriber gets the same bytes, whatever the origin's chunking. A late
/// subscriber without `Last-Event-ID` gets only what follows its join.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subscribers_over_h1_and_h2c_share_one_upstream_stream() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "").await;
    const URL: &str = "/feeds/news?topic=all";

    let first = Sub::h1(proxy.addr, URL, &[ACCEPT_SSE]).await;
    first.assert_event_stream();
    let upstream = origin.next_stream().await;
    assert_eq!(upstream.req.method, "GET");
    assert_eq!(upstream.req.target, URL);
    assert_eq!(upstream.last_event_id(), None);

    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for _ in 0..99 {
        tasks.push(tokio::spawn(async move {
            Sub::h1(addr, URL, &[ACCEPT_SSE]).await
        }));
    }
    let h2 = h2c_connections(&proxy, 4).await;
    for i in 0..100 {
        let send = h2[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            Sub::h2(&send, URL, &[ACCEPT_SSE]).await
        }));
    }
    let mut subs = vec![first];
    subs.extend(join_all("a subscriber's head", tasks).await);
    for s in &subs {
        s.assert_event_stream();
        assert_eq!(s.head.header("cache-control"), Some("no-cache"));
    }
    subscribers(&proxy, 200).await;
    assert_eq!(
        origin.log().len(),
        1,
        "200 subscribers of one URL made more than one upstream request: {:?}",
        origin
            .log()
            .iter()
            .map(|l| &l.req.target)
            .collect::<Vec<_>>()
    );

    let body = events(1..=50);
    send_cut(&upstream, &body, &mut seeded_rng(1));
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let want = body.clone();
            tokio::spawn(async move {
                s.read_consecutive(0, 50).await;
                assert!(
                    s.raw == want,
                    "subscriber {i} ({:?}) got other bytes: {:?}",
                    s.proto,
                    String::from_utf8_lossy(&s.raw)
                );
                s
            })
        })
        .collect();
    let mut subs = join_all("every subscriber to read 50 events", readers).await;
    assert_eq!(origin.stream_count(), 1);

    // A late subscriber joins live: no replay without Last-Event-ID.
    let mut late = Sub::h2(&h2[0], URL, &[ACCEPT_SSE]).await;
    late.assert_event_stream();
    subscribers(&proxy, 201).await;
    upstream.send_events(51..=60);
    late.read_consecutive(50, 60).await;
    assert_eq!(
        late.raw,
        events(51..=60),
        "the late subscriber got a replay"
    );
    for s in subs.iter_mut().step_by(20) {
        s.read_consecutive(50, 60).await;
    }
    assert_eq!(origin.log().len(), 1);
}

// ---------------------------------------------------------------------------
// 2. The sharing key

/// `?a=1&b=2` and `?b=2&a=1` share; another `Accept-Language` (in
/// `share_key`) gets its own upstream stream; `lastEventId` in the query
/// is no part of the key, and no request the origin sees carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_order_and_share_key_select_the_upstream_stream() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "share_key = [\"accept-language\"]").await;
    let en = ("accept-language", "en");
    let fr = ("accept-language", "fr");

    let mut a = Sub::h1(proxy.addr, "/feeds/q?a=1&b=2", &[ACCEPT_SSE, en]).await;
    a.assert_event_stream();
    let s_en = origin.next_stream().await;
    assert_eq!(target_path(&s_en.req.target), "/feeds/q");
    let mut query = target_query(&s_en.req.target);
    query.sort_unstable();
    assert_eq!(query, ["a=1", "b=2"], "{}", s_en.req.target);
    assert_eq!(s_en.req.header("accept-language"), Some("en"));
    subscribers(&proxy, 1).await;

    let h2 = h2c_connect(proxy.addr).await;
    let mut b = Sub::h2(&h2, "/feeds/q?b=2&a=1", &[ACCEPT_SSE, en]).await;
    b.assert_event_stream();
    assert_eq!(
        origin.stream_count(),
        1,
        "the same query in another order opened another upstream stream"
    );
    subscribers(&proxy, 2).await;

    let mut c = Sub::h1(proxy.addr, "/feeds/q?a=1&b=2", &[ACCEPT_SSE, fr]).await;
    c.assert_event_stream();
    let s_fr = origin.next_stream().await;
    assert_eq!(s_fr.req.header("accept-language"), Some("fr"));
    subscribers(&proxy, 3).await;

    s_en.send_events(1..=5);
    s_fr.send_events(101..=103);
    a.read_consecutive(0, 5).await;
    b.read_consecutive(0, 5).await;
    c.read_consecutive(100, 103).await;

    // `lastEventId=3`, first in the query: the same stream, resumed from
    // its ring (4 and 5), without a request to the origin.
    let mut d = Sub::h1(
        proxy.addr,
        "/feeds/q?lastEventId=3&b=2&a=1",
        &[ACCEPT_SSE, en],
    )
    .await;
    d.assert_event_stream();
    d.read_consecutive(3, 5).await;
    assert_eq!(
        origin.stream_count(),
        2,
        "lastEventId selected another stream"
    );
    s_en.send_events(6..=7);
    for s in [&mut a, &mut b, &mut d] {
        s.read_consecutive(5, 7).await;
    }
    assert_eq!(d.raw, events(4..=7));
    assert_eq!(
        c.raw,
        events(101..=103),
        "a French subscriber got English events"
    );
    for l in origin.log() {
        assert!(
            !l.req.target.contains("lastEventId"),
            "lastEventId reached the origin: {}",
            l.req.target
        );
    }
    assert_eq!(origin.log().len(), 2);
}

/// A first subscriber with `?lastEventId=9` on a stream nobody holds: the
/// new ring cannot have 9, so the subscriber's own request carries it (as
/// `Last-Event-ID`) while the shared stream opens beside it without it;
/// neither target carries the parameter. Once the subscriber's own events
/// meet the ring, it moves to the shared stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_parameter_is_never_sent_upstream() {
    let origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "").await;
    let mut first = Sub::h1(proxy.addr, "/feeds/q?a=1&lastEventId=9", &[ACCEPT_SSE]).await;
    first.assert_event_stream();
    origin
        .wait_until("the shared and the own request", |log| log.len() == 2)
        .await;
    let (own, shared): (Vec<_>, Vec<_>) = origin
        .streams()
        .into_iter()
        .partition(|s| s.last_event_id().is_some());
    let (own, shared) = (&own[0], &shared[0]);
    assert_eq!(own.last_event_id(), Some("9"));
    for s in [own, shared] {
        assert_eq!(target_path(&s.req.target), "/feeds/q");
        assert_eq!(target_query(&s.req.target), ["a=1"], "{}", s.req.target);
    }
    let mut live = Sub::h1(proxy.addr, "/feeds/q?a=1", &[ACCEPT_SSE]).await;
    live.assert_event_stream();
    subscribers(&proxy, 1).await;
    shared.send_events(10..=11);
    live.read_consecutive(9, 11).await;
    own.send_events([10]);
    within("the own request to be dropped", own.closed()).await;
    first.read_consecutive(9, 11).await;
    subscribers(&proxy, 2).await;
    shared.send_events([12]);
    first.read_consecutive(11, 12).await;
    live.read_consecutive(11, 12).await;
    assert_eq!(first.raw, events(10..=12));
    assert_eq!(origin.log().len(), 2);
}

// ---------------------------------------------------------------------------
// 3. Credentials

/// A request with `Cookie` or `Authorization` shares only with
/// `share_public = true` or when the header is in `share_key`; the
/// upstream's `Set-Cookie` never reaches a subscriber that joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_share_only_when_public_or_keyed() {
    let mut origin = SseOrigin::start_with(|req| {
        if req.target.starts_with("/pub/") {
            Reply::stream_with(&[("set-cookie", "session=first; Path=/")])
        } else {
            Reply::stream()
        }
    })
    .await;
    let proxy = start_config(config(
        origin.addr,
        "",
        "",
        &[
            share_route("/feeds/", ""),
            share_route("/pub/", "share_public = true"),
            share_route("/keyed/", "share_key = [\"cookie\"]"),
        ],
    ))
    .await;

    // Not public, not keyed: every credentialed request has its own stream,
    // even with the same credentials.
    let mut private = Vec::new();
    for (i, header) in [
        cookie("s=1"),
        cookie("s=1"),
        ("authorization", "Bearer t"),
        ("authorization", "Bearer t"),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = Sub::h1(proxy.addr, "/feeds/private", &[ACCEPT_SSE, header]).await;
        sub.assert_event_stream();
        let up = origin.next_stream().await;
        assert_eq!(up.req.header(header.0), Some(header.1));
        assert_eq!(origin.stream_count(), i + 1);
        private.push((sub, up));
    }
    for (i, (sub, up)) in private.iter_mut().enumerate() {
        let id = 10 * (i as u64 + 1);
        up.send_events([id]);
        assert_eq!(sub.next_id().await, id, "private stream {i} crossed");
    }

    // Public: different cookies share one stream; a joiner gets no Set-Cookie.
    let mut p1 = Sub::h1(proxy.addr, "/pub/x", &[ACCEPT_SSE, cookie("u=1")]).await;
    p1.assert_event_stream();
    let pub_up = origin.next_stream().await;
    subscribers_on(&proxy, "/pub/", 1).await;
    let h2 = h2c_connect(proxy.addr).await;
    let mut p2 = Sub::h1(proxy.addr, "/pub/x", &[ACCEPT_SSE, cookie("u=2")]).await;
    let mut p3 = Sub::h2(&h2, "/pub/x", &[ACCEPT_SSE, cookie("u=3")]).await;
    for joiner in [&p2, &p3] {
        joiner.assert_event_stream();
        assert!(
            !joiner.head.has("set-cookie"),
            "a joiner got the first subscriber's Set-Cookie: {:?}",
            joiner.head
        );
    }
    assert_eq!(origin.stream_count(), 5, "a public stream was not shared");
    subscribers_on(&proxy, "/pub/", 3).await;
    pub_up.send_events([1]);
    for s in [&mut p1, &mut p2, &mut p3] {
        assert_eq!(s.next_id().await, 1);
    }

    // Keyed by cookie: the same cookie shares, another cookie does not.
    let k1 = Sub::h1(proxy.addr, "/keyed/x", &[ACCEPT_SSE, cookie("k=1")]).await;
    k1.assert_event_stream();
    let k1_up = origin.next_stream().await;
    let before = origin.stream_count();
    let mut k1b = Sub::h1(proxy.addr, "/keyed/x", &[ACCEPT_SSE, cookie("k=1")]).await;
    k1b.assert_event_stream();
    assert_eq!(
        origin.stream_count(),
        before,
        "the same keyed cookie did not share"
    );
    let mut k2 = Sub::h1(proxy.addr, "/keyed/x", &[ACCEPT_SSE, cookie("k=2")]).await;
    k2.assert_event_stream();
    let k2_up = origin.next_stream().await;
    assert_eq!(k2_up.req.header("cookie"), Some("k=2"));
    subscribers_on(&proxy, "/keyed/", 3).await;
    k1_up.send_events([7]);
    k2_up.send_events([8]);
    assert_eq!(k1b.next_id().await, 7);
    assert_eq!(k2.next_id().await, 8, "k=2 got k=1's stream");
    drop(k1);
}

// ---------------------------------------------------------------------------
// 4. share_auth

/// The origin of the auth tests: `/auth/check` answers by the `Cookie`
/// (`c=deny` 403, `c=login` 401, `c=broken` 500, anything else 200),
/// everything else is an event stream.
async fn auth_origin() -> SseOrigin {
    SseOrigin::start_with(|req| {
        if target_path(&req.target) != "/auth/check" {
            return Reply::stream();
        }
        match req.header("cookie") {
            Some("c=deny") => {
                Reply::fixed(403, &[("content-type", "text/plain")], b"forbidden: deny")
            }
            Some("c=login") => Reply::fixed(
                401,
                &[("www-authenticate", "Cookie realm=\"feeds\"")],
                b"log in first",
            ),
            Some("c=broken") => Reply::fixed(500, &[], b"auth backend broke"),
            Some(_) => Reply::fixed(200, &[], b""),
            None => Reply::fixed(401, &[], b"no credentials"),
        }
    })
    .await
}

fn auth_config(origin: &SseOrigin, extra: &str) -> String {
    config(
        origin.addr,
        "",
        "[limits]\nshed_retry = \"1s\"\nshed_retry_jitter = \"1s\"",
        &[share_route(
            ROUTE,
            &format!("share_public = true\nshare_auth = \"/auth/check\"\n{extra}"),
        )],
    )
}

/// The `Cookie` of every request the origin's auth path saw, counted.
fn auth_cookies(origin: &SseOrigin) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for req in origin.requests_to("/auth/check") {
        assert_eq!(req.method, "GET", "{req:?}");
        *seen
            .entry(req.header("cookie").unwrap_or("-").to_string())
            .or_insert(0) += 1;
    }
    seen
}

/// 100 subscribers with 100 cookies share one upstream stream, each
/// authorised by one subrequest; the auth path's 403 and 401 reach their
/// subscriber as they are, its 500 is a 502 (for an `EventSource`, the
/// shed answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_auth_checks_each_subscriber_once_and_passes_refusals_through() {
    let mut origin = auth_origin().await;
    let proxy = start_config(auth_config(&origin, "")).await;

    let first = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=u0")]).await;
    first.assert_event_stream();
    let upstream = origin.next_stream().await;
    let h2 = h2c_connections(&proxy, 2).await;
    let mut tasks = Vec::new();
    for i in 1..100 {
        let addr = proxy.addr;
        let send = h2[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let c = format!("c=u{i}");
            if i % 2 == 0 {
                Sub::h1(addr, FEED, &[ACCEPT_SSE, cookie(&c)]).await
            } else {
                Sub::h2(&send, FEED, &[ACCEPT_SSE, cookie(&c)]).await
            }
        }));
    }
    let mut subs = vec![first];
    subs.extend(join_all("an authorised subscriber's head", tasks).await);
    for s in &subs {
        s.assert_event_stream();
    }
    subscribers(&proxy, 100).await;
    assert_eq!(
        origin.stream_count(),
        1,
        "authorised subscribers did not share"
    );
    upstream.send_events(1..=3);
    for s in &mut subs {
        s.read_consecutive(0, 3).await;
    }
    let seen = auth_cookies(&origin);
    assert_eq!(seen.len(), 100, "{seen:?}");
    for i in 0..100 {
        assert_eq!(seen.get(&format!("c=u{i}")), Some(&1), "c=u{i}: {seen:?}");
    }

    // 403: the auth answer's status and body, and no stream.
    let mut denied = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=deny")]).await;
    assert_eq!(denied.head.status, 403, "{:?}", denied.head);
    assert_eq!(
        denied.rest().await,
        (b"forbidden: deny".to_vec(), Next::End)
    );
    // 401: the same, with its challenge.
    let mut login = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=login")]).await;
    assert_eq!(login.head.status, 401, "{:?}", login.head);
    assert_eq!(
        login.head.header("www-authenticate"),
        Some("Cookie realm=\"feeds\"")
    );
    assert_eq!(login.rest().await, (b"log in first".to_vec(), Next::End));
    // 500: a 502 for a plain request…
    let mut broken = Sub::h1(proxy.addr, FEED, &[cookie("c=broken")]).await;
    assert_eq!(broken.head.status, 502, "{:?}", broken.head);
    let (body, _) = broken.rest().await;
    assert!(
        !String::from_utf8_lossy(&body).contains("auth backend broke"),
        "the auth path's 500 body leaked"
    );
    // …and the shed answer for an EventSource.
    let mut es = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=broken")]).await;
    assert_eq!(es.head.status, 200, "{:?}", es.head);
    assert_eq!(es.head.header("content-type"), Some(SSE));
    assert!(es.head.has("content-length"), "{:?}", es.head);
    let (body, end) = es.rest().await;
    assert_eq!(end, Next::End);
    let text = String::from_utf8(body).unwrap();
    let ms: u64 = text
        .strip_prefix("retry: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a lone retry field: {text:?}"));
    assert!((1000..=2000).contains(&ms), "retry {ms}");

    // None of them reached the stream; each was checked once per request.
    upstream.send_events([4]);
    assert_eq!(subs[0].next_id().await, 4);
    assert_eq!(origin.stream_count(), 1);
    assert_eq!(subscribers_now(&proxy).await, 100.0);
    let seen = auth_cookies(&origin);
    assert_eq!(seen.get("c=deny"), Some(&1));
    assert_eq!(seen.get("c=login"), Some(&1));
    assert_eq!(seen.get("c=broken"), Some(&2));
}

async fn subscribers_now(proxy: &Proxy) -> f64 {
    metric(proxy, "ssegate_shared_subscribers", &[("route", ROUTE)]).await
}

/// `share_auth_cache`: an answer is reused for the same credentials, a
/// refusal too; other credentials are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_auth_cache_reuses_an_answer_per_credentials() {
    let mut origin = auth_origin().await;
    let proxy = start_config(auth_config(&origin, "share_auth_cache = \"1m\"")).await;
    let mut x1 = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=x")]).await;
    x1.assert_event_stream();
    let upstream = origin.next_stream().await;
    let mut x2 = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=x")]).await;
    x2.assert_event_stream();
    let mut y = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=y")]).await;
    y.assert_event_stream();
    for _ in 0..2 {
        let mut denied = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, cookie("c=deny")]).await;
        assert_eq!(denied.head.status, 403);
        assert_eq!(denied.rest().await.0, b"forbidden: deny");
    }
    subscribers(&proxy, 3).await;
    upstream.send_events([1]);
    for s in [&mut x1, &mut x2, &mut y] {
        assert_eq!(s.next_id().await, 1);
    }
    let seen = auth_cookies(&origin);
    assert_eq!(seen.get("c=x"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("c=y"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("c=deny"), Some(&1), "{seen:?}");
}

// ---------------------------------------------------------------------------
// 5. Joining while events flow: no gap, no duplicate

/// The origin sends ids 1..=5000 as fast as its subscribers read them, cut
/// into chunks at random places. Meanwhile 60 subscribers join at random
/// moments (when a witness subscriber reaches a random id): 48 with a
/// `Last-Event-ID` (header or `?lastEventId=`, HTTP/1.1 or h2c) among the
/// last 250 ids the witness holds, which the ring (1000 events) has; each
/// gets exactly the ids after it, to the end, byte for byte. 12 join live
/// and get consecutive ids from one after the witness's id at their join.
///
/// The publisher stays at most 200 events ahead of every subscriber (of a
/// joiner from the moment it chose its id), so no joiner is ever more than
/// half the ring behind the newest event: none may be cut as too slow,
/// however slow the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_joining_at_random_moments_miss_nothing_and_repeat_nothing() {
    const LAST: u64 = 5000;
    const JOINERS: usize = 60;
    const AHEAD: u64 = 200;
    const SEED: u64 = 5;
    /// A progress slot of no subscriber (not joined yet, or done).
    const IDLE: u64 = u64::MAX / 2;
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "replay_events = 1000").await;
    let mut witness = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    witness.keep_raw = false;
    let upstream = origin.next_stream().await;
    subscribers(&proxy, 1).await;

    // Slot 0: the witness; slot 1 + j: joiner j.
    let progress = Progress::new(1 + JOINERS);
    for j in 0..JOINERS {
        progress.set(1 + j, IDLE);
    }
    // Joiners choose their id and take their slot under this lock.
    let choosing = Arc::new(Mutex::new(()));

    let witness_task = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while last < LAST {
                let id = witness.next_id().await;
                assert_eq!(id, last + 1, "the witness lost an event");
                last = id;
                progress.set(0, id);
            }
        })
    };
    let publisher = {
        let progress = progress.clone();
        let choosing = choosing.clone();
        tokio::spawn(async move {
            let mut rng = seeded_rng(SEED);
            let mut next = 1u64;
            while next <= LAST {
                let to = (next + rng.gen_range(0..8)).min(LAST);
                within(
                    "the subscribers to let the publisher on",
                    progress.wait(|p| {
                        let _chosen = choosing.lock().unwrap();
                        to <= p.min() + AHEAD
                    }),
                )
                .await;
                let bytes = events(next..=to);
                let cut = rng.gen_range(1..=bytes.len());
                upstream.send(&bytes[..cut]);
                if cut < bytes.len() {
                    upstream.send(&bytes[cut..]);
                }
                next = to + 1;
            }
            upstream
        })
    };

    let h2 = h2c_connections(&proxy, 2).await;
    let mut rng = seeded_rng(SEED + 1);
    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let trigger = rng.gen_range(100..LAST - 300);
        let back = rng.gen_range(0..250u64);
        let (progress, choosing, send, addr) = (
            progress.clone(),
            choosing.clone(),
            h2[j % 2].clone(),
            proxy.addr,
        );
        joiners.push(tokio::spawn(async move {
            // Not bounded by time: the witness gets there unless the run
            // stalls, which the publisher's bounded waits report.
            progress.wait(|p| p.get(0) >= trigger).await;
            let mode = j % 5;
            let (after, at_join) = {
                let _chosen = choosing.lock().unwrap();
                let at_join = progress.get(0);
                let after = (mode != 4).then(|| at_join.saturating_sub(back).max(1));
                // A live joiner starts at the ring's head, wherever the
                // publisher has got to by then: it holds the publisher back
                // only from its first event on (held at the witness's count,
                // a slow connect let the publisher reach its bound before
                // the joiner was in, and both then waited for each other).
                progress.set(1 + j, after.unwrap_or(IDLE));
                (after, at_join)
            };
            let (target, header) = match after {
                Some(id) if mode >= 2 => (format!("{FEED}?lastEventId={id}"), None),
                Some(id) => (FEED.to_string(), Some(id.to_string())),
                None => (FEED.to_string(), None),
            };
            let mut headers = vec![ACCEPT_SSE];
            if let Some(id) = &header {
                headers.push(("last-event-id", id.as_str()));
            }
            let mut sub = if j % 2 == 0 {
                Sub::h1(addr, &target, &headers).await
            } else {
                Sub::h2(&send, &target, &headers).await
            };
            sub.assert_event_stream();
            let first = sub.next_id().await;
            match after {
                Some(after) => assert_eq!(
                    first,
                    after + 1,
                    "joiner {j} (seed {SEED}, {:?}, {target:?}, header {header:?}) asked for after {after}",
                    sub.proto
                ),
                None => assert!(
                    first > at_join,
                    "live joiner {j} got {first}, which the witness had before it joined ({at_join}): a replay"
                ),
            }
            progress.set(1 + j, first);
            let mut last = first;
            while last < LAST {
                let id = sub.next_id().await;
                assert_eq!(
                    id,
                    last + 1,
                    "joiner {j} ({:?}, from {first}): gap or duplicate",
                    sub.proto
                );
                last = id;
                progress.set(1 + j, id);
            }
            progress.set(1 + j, IDLE);
            assert!(
                sub.raw == events(first..=LAST),
                "joiner {j}: bytes differ from the origin's"
            );
            after.is_some()
        }));
    }
    // Each step of the run is bounded (the publisher waits at most `WAIT`
    // for its slowest subscriber, each subscriber at most `WAIT` for its
    // next event), not the run as a whole, which a loaded machine slows.
    publisher.await.unwrap();
    within("the witness", witness_task).await.unwrap();
    let replayed = join_all("a joiner to read to the end", joiners)
        .await
        .into_iter()
        .filter(|r| *r)
        .count();
    assert_eq!(replayed, 48);
    assert_eq!(origin.log().len(), 1, "a joiner reached the origin");
    assert_eq!(replays(&proxy, "hit").await, replayed as f64);
    assert_eq!(replays(&proxy, "miss").await, 0.0);
    let (name, labels) = overflows_series("disconnect");
    assert_eq!(metric(&proxy, name, &labels).await, 0.0);
}

/// Every id the ring holds can be replayed, the oldest too: a subscriber
/// asking for one far back (90 of 100 events, more than half the ring)
/// gets all that follow, then the live ones, and is not taken for one that
/// fell behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_deep_in_the_ring_is_delivered_whole() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "replay_events = 100").await;
    let mut a = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    let shared = origin.next_stream().await;
    subscribers(&proxy, 1).await;
    // Ten at a time, so that `a` is never half the ring behind.
    for from in (1..=100).step_by(10) {
        shared.send_events(from..from + 10);
        a.read_consecutive(from - 1, from + 9).await;
    }
    // 10, then (once 101 has pushed 1 out) the oldest id held, 2.
    for (i, id) in ["10", "2"].into_iter().enumerate() {
        let mut deep = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", id)]).await;
        deep.assert_event_stream();
        let after: u64 = id.parse().unwrap();
        deep.read_consecutive(after, 100 + i as u64).await;
        subscribers(&proxy, 2).await;
        let live = 101 + i as u64;
        shared.send_events([live]);
        assert_eq!(deep.next_id().await, live);
        assert_eq!(a.next_id().await, live);
        assert_eq!(deep.raw, events(after + 1..=live));
    }
    assert_eq!(origin.log().len(), 1);
    assert_eq!(replays(&proxy, "hit").await, 2.0);
}

// ---------------------------------------------------------------------------
// 6. A miss

/// A `Last-Event-ID` the ring does not hold goes to the origin on a request
/// of its own; once that request delivers an id the ring holds, it is
/// dropped and the subscriber goes on from the ring, without gap or
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_served_by_its_own_request_until_it_meets_the_ring() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "replay_events = 1000").await;
    let mut a = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    let shared = origin.next_stream().await;
    subscribers(&proxy, 1).await;
    shared.send_events(100..=110);
    a.read_consecutive(99, 110).await;

    // 50 is older than the ring (100..=110).
    let mut b = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", "50")]).await;
    let own = origin.next_stream().await;
    b.assert_event_stream();
    assert_eq!(own.last_event_id(), Some("50"));
    assert_eq!(own.req.target, shared.req.target);
    assert_eq!(shared.last_event_id(), None);
    // The origin answers from 51, past the ring's 100.
    own.send_events(51..=105);
    within("the miss's own request to be dropped", own.closed()).await;
    b.read_consecutive(50, 110).await;
    shared.send_events(111..=120);
    b.read_consecutive(110, 120).await;
    a.read_consecutive(110, 120).await;
    assert_eq!(b.raw, events(51..=120));

    // An id the stream never had, on h2c: the origin restarts at 119, which
    // the ring has.
    let h2 = h2c_connect(proxy.addr).await;
    let mut c = Sub::h2(&h2, FEED, &[ACCEPT_SSE, ("last-event-id", "999999")]).await;
    let own2 = origin.next_stream().await;
    c.assert_event_stream();
    assert_eq!(own2.last_event_id(), Some("999999"));
    own2.send_events(119..=121);
    within("the second miss's request to be dropped", own2.closed()).await;
    c.read_consecutive(118, 120).await;
    subscribers(&proxy, 3).await;
    shared.send_events(121..=125);
    c.read_consecutive(120, 125).await;
    assert_eq!(c.raw, events(119..=125));
    assert_eq!(origin.stream_count(), 3);
    assert!(!shared.is_closed());
    assert_eq!(replays(&proxy, "miss").await, 2.0);
    assert_eq!(replays(&proxy, "hit").await, 0.0);
}

// ---------------------------------------------------------------------------
// 7. Overflow

const BIG: usize = 8 * 1024;

/// What a subscriber of big events read: ids, each event checked whole.
fn check_big(id: u64, data: &str) {
    assert_eq!(
        data,
        big_event(id, BIG)
            .strip_prefix(&format!("id: {id}\ndata: "))
            .unwrap()
            .trim_end(),
        "event {id} altered"
    );
}

/// 100 subscribers of 8 KiB events; one (`stuck`) reads its head and then
/// nothing, through a 4 KiB receive buffer and `client_buffer = 32KiB`.
/// The ring holds 50 events or 128 KiB, and `client_write_timeout` is far
/// away, so the stuck one falls far behind the ring (more than half of it,
/// the proxy's threshold, is 8 events). The origin sends each event once
/// the 99 readers are within 4 events of it, so they never fall behind.
/// The overflow may be noticed while the client is stuck or only when its
/// socket drains: the tests read the stuck client before they look at the
/// overflow counters. Returns the proxy, the origin's stream, the stuck subscriber,
/// the 99 readers' progress and their tasks (each reads to `until`, then
/// returns its subscriber, still open).
async fn overflow_setup(
    policy: &str,
    until: u64,
) -> (
    Proxy,
    SseOrigin,
    OriginStream,
    Sub,
    Arc<Progress>,
    Vec<tokio::task::JoinHandle<Sub>>,
) {
    let mut origin = SseOrigin::start().await;
    let proxy = start(
        &origin,
        "client_buffer = \"32KiB\"\nclient_write_timeout = \"30s\"",
        &format!("replay_events = 50\nreplay_bytes = \"128KiB\"\noverflow = \"{policy}\""),
    )
    .await;
    let first = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    first.assert_event_stream();
    let shared = origin.next_stream().await;
    let h2 = h2c_connections(&proxy, 3).await;
    let mut tasks = Vec::new();
    for i in 1..99 {
        let (addr, send) = (proxy.addr, h2[i % 3].clone());
        tasks.push(tokio::spawn(async move {
            if i < 69 {
                Sub::h1(addr, FEED, &[ACCEPT_SSE]).await
            } else {
                Sub::h2(&send, FEED, &[ACCEPT_SSE]).await
            }
        }));
    }
    let mut healthy = vec![first];
    healthy.extend(join_all("a reader's head", tasks).await);
    let stuck = Sub::h1_small_buffer(proxy.addr, FEED, &[ACCEPT_SSE], 4096).await;
    stuck.assert_event_stream();
    subscribers(&proxy, 100).await;
    assert_eq!(origin.stream_count(), 1);

    let progress = Progress::new(healthy.len());
    let readers = healthy
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            s.keep_raw = false;
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut last = 0;
                while last < until {
                    let (id, data) = s.next_event().await;
                    assert_eq!(id, last + 1, "reader {i} ({:?}) lost an event", s.proto);
                    check_big(id, &data);
                    last = id;
                    progress.set(i, id);
                }
                s
            })
        })
        .collect();
    (proxy, origin, shared, stuck, progress, readers)
}

/// Sends big events `ids`, each once every reader is within 4 events of it.
async fn publish_paced(
    shared: &OriginStream,
    progress: &Progress,
    ids: std::ops::RangeInclusive<u64>,
) {
    for id in ids {
        within(
            "the readers to keep up",
            progress.wait(|p| p.min() + 4 >= id),
        )
        .await;
        shared.send(big_event(id, BIG));
    }
}

fn overflows_series(policy: &str) -> (&'static str, [(&'static str, &str); 2]) {
    (
        "ssegate_subscriber_overflows_total",
        [("policy", policy), ("route", ROUTE)],
    )
}

/// `overflow = "disconnect"`: the stuck subscriber's stream ends; what it
/// finally reads is whole consecutive events, then `retry: N` and a clean
/// end, counted once as `policy="disconnect"`. The 99 others miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflow_disconnect_ends_a_stuck_subscriber_and_spares_the_others() {
    const LAST: u64 = 120;
    let (proxy, origin, shared, mut stuck, progress, readers) =
        overflow_setup("disconnect", LAST).await;
    publish_paced(&shared, &progress, 1..=LAST).await;
    let _readers = join_all("the readers to read every event", readers).await;

    // Now the stuck client reads what was queued for it.
    stuck.keep_raw = false;
    let mut last = 0;
    let retry = loop {
        match stuck.next().await {
            Next::Block(Block::Event { id, data }) => {
                assert_eq!(
                    id,
                    last + 1,
                    "the stuck subscriber's events are not consecutive"
                );
                check_big(id, &data);
                last = id;
            }
            Next::Block(Block::Retry(ms)) => break ms,
            other => panic!("after event {last}: expected an event or retry:, got {other:?}"),
        }
    };
    assert!(retry > 0);
    assert_eq!(stuck.next().await, Next::End, "no clean end after retry:");
    assert!(last < LAST, "the stuck subscriber was never behind");
    let (name, labels) = overflows_series("disconnect");
    assert_eq!(metric(&proxy, name, &labels).await, 1.0);
    let (skip, skip_labels) = overflows_series("skip");
    assert_eq!(metric(&proxy, skip, &skip_labels).await, 0.0);
    subscribers(&proxy, 99).await;
    assert_eq!(origin.stream_count(), 1);
}

/// `overflow = "skip"`: once the stuck subscriber reads again it gets what
/// was queued, then jumps ahead (increasing ids with a gap) and stays open
/// for the events after (sent once the skip is counted as
/// `policy="skip"`). The 99 others miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflow_skip_moves_a_stuck_subscriber_to_the_newest_event() {
    const PHASE1: u64 = 120;
    const LAST: u64 = 140;
    let (proxy, origin, shared, mut stuck, progress, readers) = overflow_setup("skip", LAST).await;
    publish_paced(&shared, &progress, 1..=PHASE1).await;

    // The stuck client reads again: what was queued, then the newest events.
    stuck.keep_raw = false;
    let stuck_reader = tokio::spawn(async move {
        let mut ids: Vec<u64> = Vec::new();
        while ids.last() != Some(&LAST) {
            let (id, data) = stuck.next_event().await;
            check_big(id, &data);
            if let Some(prev) = ids.last() {
                assert!(id > *prev, "went back from {prev} to {id}");
            }
            ids.push(id);
        }
        (ids, stuck)
    });
    let (name, labels) = overflows_series("skip");
    metric_until(&proxy, name, &labels, |v| v >= 1.0).await;
    publish_paced(&shared, &progress, PHASE1 + 1..=LAST).await;
    let _readers = join_all("the readers to read every event", readers).await;
    let (ids, _stuck) = within(
        "the stuck subscriber to reach the newest event",
        stuck_reader,
    )
    .await
    .unwrap();
    assert_eq!(ids[0], 1);
    let jumps: Vec<(u64, u64)> = ids
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(!jumps.is_empty(), "no skip: {ids:?}");
    assert!(metric(&proxy, name, &labels).await >= 1.0);
    let (disc, disc_labels) = overflows_series("disconnect");
    assert_eq!(metric(&proxy, disc, &disc_labels).await, 0.0);
    subscribers(&proxy, 100).await;
    assert_eq!(origin.stream_count(), 1);
}

// ---------------------------------------------------------------------------
// 8. Linger

/// `share_linger = "500ms"`: a subscriber arriving after the last one left
/// but within the linger reuses the upstream stream; once the last one has
/// left and the linger has passed, the upstream connection is closed, and
/// the next subscriber opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_stream_lingers_after_the_last_subscriber() {
    const LINGER: Duration = Duration::from_millis(500);
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "share_linger = \"500ms\"").await;
    let mut a = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    let shared = origin.next_stream().await;
    subscribers(&proxy, 1).await;
    shared.send_events([1]);
    assert_eq!(a.next_id().await, 1);
    drop(a);
    subscribers(&proxy, 0).await;

    let mut b = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    b.assert_event_stream();
    assert_eq!(
        origin.stream_count(),
        1,
        "the lingering stream was not reused"
    );
    assert!(!shared.is_closed());
    subscribers(&proxy, 1).await;
    shared.send_events([2]);
    assert_eq!(b.next_id().await, 2);

    let left = Instant::now();
    drop(b);
    within("the lingering stream to close", shared.closed()).await;
    let after = left.elapsed();
    assert!(
        after + Duration::from_millis(5) >= LINGER,
        "the upstream was closed {after:?} after the last subscriber left, within the linger"
    );
    metric_until(
        &proxy,
        "ssegate_shared_streams_open",
        &[("route", ROUTE)],
        |v| v == 0.0,
    )
    .await;

    let mut c = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    c.assert_event_stream();
    let again = origin.next_stream().await;
    assert_eq!(again.index, 1);
    subscribers(&proxy, 1).await;
    again.send_events([3]);
    assert_eq!(c.next_id().await, 3);
}

// ---------------------------------------------------------------------------
// 9. Upstream failures

/// Three HTTP/1.1 and three h2c subscribers of one shared stream, which has
/// sent events 1..=5 to all of them.
async fn six_subscribers(proxy: &Proxy, origin: &mut SseOrigin) -> (Vec<Sub>, OriginStream) {
    let mut subs = vec![Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await];
    let shared = origin.next_stream().await;
    let h2 = h2c_connect(proxy.addr).await;
    for i in 1..6 {
        subs.push(if i < 3 {
            Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await
        } else {
            Sub::h2(&h2, FEED, &[ACCEPT_SSE]).await
        });
    }
    subscribers(proxy, 6).await;
    assert_eq!(origin.stream_count(), 1);
    shared.send_events(1..=5);
    for s in &mut subs {
        s.read_consecutive(0, 5).await;
    }
    (subs, shared)
}

/// `resume = "on-error"`: the shared upstream failing at an event boundary
/// is hidden from every subscriber; the origin sees one reconnection with
/// `Last-Event-ID` of the newest id, and the events go on without gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_upstream_is_resumed_for_every_subscriber() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(
        &origin,
        "",
        "resume = \"on-error\"\nresume_backoff = \"100ms\"",
    )
    .await;
    let (mut subs, shared) = six_subscribers(&proxy, &mut origin).await;
    shared.fail();
    let again = origin.next_stream().await;
    assert_eq!(again.last_event_id(), Some("5"));
    assert_eq!(again.req.target, shared.req.target);
    again.send_events(6..=10);
    for s in &mut subs {
        s.read_consecutive(5, 10).await;
        assert_eq!(s.raw, events(1..=10), "{:?}", s.proto);
    }
    assert_eq!(
        origin.stream_count(),
        2,
        "one reconnection for all subscribers"
    );
    assert_eq!(subscribers_now(&proxy).await, 6.0);
}

/// Without resume, the shared upstream failing fails every subscriber's
/// stream as an unshared stream fails: HTTP/1.1 without the last chunk,
/// HTTP/2 reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_upstream_fails_every_subscriber() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "").await;
    let (mut subs, shared) = six_subscribers(&proxy, &mut origin).await;
    shared.fail();
    for s in &mut subs {
        assert_eq!(
            s.next().await,
            Next::Aborted,
            "a {:?} subscriber's stream did not fail",
            s.proto
        );
    }
    assert_eq!(origin.stream_count(), 1);
    subscribers(&proxy, 0).await;
}

/// A clean upstream end ends every subscriber's stream cleanly; the next
/// subscriber opens a new upstream stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_upstream_end_ends_every_subscriber_cleanly() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "").await;
    let (mut subs, shared) = six_subscribers(&proxy, &mut origin).await;
    shared.end();
    for s in &mut subs {
        assert_eq!(s.next().await, Next::End, "{:?}", s.proto);
    }
    let mut next = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    next.assert_event_stream();
    let fresh = origin.next_stream().await;
    fresh.send_events([6]);
    assert_eq!(next.next_id().await, 6);
}

// ---------------------------------------------------------------------------
// 10. Graceful shutdown

/// On SIGTERM shared subscribers get `retry:` at an event boundary and a
/// clean end, at moments spread over `drain_window`, while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spreads_shared_subscribers_over_the_drain_window() {
    const WINDOW: Duration = Duration::from_secs(2);
    const LATEST: Duration = Duration::from_secs(6);
    const SUBS: usize = 20;
    let mut origin = SseOrigin::start().await;
    let cfg = config(
        origin.addr,
        "drain_window = \"2s\"\nshutdown_retry = \"1s\"\nshutdown_retry_jitter = \"0s\"",
        "",
        &[share_route(ROUTE, "")],
    )
    .replace("grace_period = \"2s\"", "grace_period = \"8s\"");
    assert!(cfg.contains("grace_period = \"8s\""));
    let mut proxy = start_config(cfg).await;
    let mut subs = vec![Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await];
    let shared = origin.next_stream().await;
    for _ in 1..SUBS {
        subs.push(Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await);
    }
    subscribers(&proxy, SUBS).await;
    shared.send_events([1]);
    for s in &mut subs {
        assert_eq!(s.next_id().await, 1);
    }
    // Traffic through the drain (not a synchronisation): an event every 20 ms.
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut id = 2;
            while !shared.is_closed() {
                shared.send_events([id]);
                id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let signalled = Instant::now();
    proxy.signal("TERM");
    let tasks = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut last = 1;
                loop {
                    match s.next().await {
                        Next::Block(Block::Event { id, .. }) => {
                            assert_eq!(id, last + 1);
                            last = id;
                        }
                        Next::Block(Block::Retry(ms)) => {
                            let at = signalled.elapsed();
                            assert_eq!(ms, 1000);
                            assert_eq!(s.next().await, Next::End, "no clean end after retry:");
                            return at;
                        }
                        other => panic!("ended without retry: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let ends = join_all("every subscriber to be drained", tasks).await;
    let first = *ends.iter().min().unwrap();
    let last = *ends.iter().max().unwrap();
    assert!(
        last < LATEST,
        "not within the window ({WINDOW:?}): {ends:?}"
    );
    assert!(
        last - first >= WINDOW / 4,
        "ends not spread over the window: {ends:?}"
    );
    proxy.wait_exit_within(Duration::from_secs(15)).await;
    ticker.abort();
}

// ---------------------------------------------------------------------------
// 11. Metrics and the access log

/// The shared-stream gauges and the replay counters, through a live join,
/// a replay hit, a miss, and the linger's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_metrics_count_streams_subscribers_and_replays() {
    let mut origin = SseOrigin::start().await;
    let proxy = start(&origin, "", "share_linger = \"200ms\"").await;
    assert_eq!(shared_open(&proxy).await, 0.0);
    assert_eq!(subscribers_now(&proxy).await, 0.0);

    let mut a = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    let shared = origin.next_stream().await;
    subscribers(&proxy, 1).await;
    assert_eq!(shared_open(&proxy).await, 1.0);
    shared.send_events(1..=5);
    a.read_consecutive(0, 5).await;

    let mut b = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", "3")]).await;
    b.read_consecutive(3, 5).await;
    assert_eq!(replays(&proxy, "hit").await, 1.0);
    assert_eq!(replays(&proxy, "miss").await, 0.0);

    let mut c = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", "77")]).await;
    let own = origin.next_stream().await;
    own.send_events([5]);
    own.closed().await;
    assert_eq!(c.next_id().await, 5);
    subscribers(&proxy, 3).await;
    assert_eq!(
        shared_open(&proxy).await,
        1.0,
        "a miss's own request is no shared stream"
    );
    assert_eq!(replays(&proxy, "hit").await, 1.0);
    assert_eq!(replays(&proxy, "miss").await, 1.0);

    drop((a, b, c));
    subscribers(&proxy, 0).await;
    shared.closed().await;
    metric_until(
        &proxy,
        "ssegate_shared_streams_open",
        &[("route", ROUTE)],
        |v| v == 0.0,
    )
    .await;
}

async fn shared_open(proxy: &Proxy) -> f64 {
    metric(proxy, "ssegate_shared_streams_open", &[("route", ROUTE)]).await
}

/// Each subscriber's access-log line says `shared=1` and how it joined:
/// `join=live` without an id, `join=replay` from the ring, `join=own` for
/// a miss served by its own request. An unshared stream's line has no
/// `shared=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_marks_shared_subscribers_and_how_they_joined() {
    let mut origin = SseOrigin::start().await;
    let mut cfg = ProxyConfig::new(config(origin.addr, "", "", &[share_route(ROUTE, "")]));
    cfg.admin = true;
    cfg.log = Some("warn,ssegate::access=info".into());
    let proxy = Proxy::start(cfg).await;

    let mut live = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE]).await;
    let shared = origin.next_stream().await;
    subscribers(&proxy, 1).await;
    shared.send_events(1..=3);
    live.read_consecutive(0, 3).await;
    let mut replay = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", "1")]).await;
    replay.read_consecutive(1, 3).await;
    let mut own = Sub::h1(proxy.addr, FEED, &[ACCEPT_SSE, ("last-event-id", "x0")]).await;
    let own_up = origin.next_stream().await;
    own_up.send_events([3]);
    assert_eq!(own.next_id().await, 3);
    own_up.closed().await;
    let mut plain = Sub::h1(proxy.addr, "/plain", &[ACCEPT_SSE]).await;
    let plain_up = origin.next_stream().await;
    plain_up.send_events([1]);
    assert_eq!(plain.next_id().await, 1);

    let port = |s: &Sub| s.local.unwrap().to_string();
    let who = [
        (port(&live), Some("live")),
        (port(&replay), Some("replay")),
        (port(&own), Some("own")),
        (port(&plain), None),
    ];
    drop((live, replay, own, plain));
    let start = Instant::now();
    let lines: Vec<String> = loop {
        let text = proxy.log_text();
        let lines: Vec<String> = who
            .iter()
            .filter_map(|(client, _)| {
                text.lines()
                    .find(|l| l.contains("stream end") && l.contains(&format!("client={client}")))
                    .map(str::to_string)
            })
            .collect();
        if lines.len() == who.len() {
            break lines;
        }
        assert!(start.elapsed() < WAIT, "access-log lines missing:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for ((_, join), line) in who.iter().zip(&lines) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match join {
            Some(join) => {
                assert!(fields.contains(&"shared=1"), "{line}");
                assert!(fields.contains(&format!("join={join}").as_str()), "{line}");
            }
            None => {
                assert!(!fields.contains(&"shared=1"), "{line}");
                assert!(!fields.iter().any(|f| f.starts_with("join=")), "{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 12. What is never shared

/// A POST is never shared; nor is a response that is not a `200` event
/// stream, nor a compressed one: each such request reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_errors_and_compressed_streams_are_not_shared() {
    let mut origin = SseOrigin::start_with(|req| {
        let path = target_path(&req.target);
        if path.ends_with("/missing") {
            Reply::fixed(404, &[("content-type", "text/plain")], b"no such feed")
        } else if path.ends_with("/busy") {
            Reply::fixed(503, &[("retry-after", "1")], b"busy")
        } else if path.ends_with("/gz") {
            Reply::stream_with(&[("content-encoding", "gzip")])
        } else {
            Reply::stream()
        }
    })
    .await;
    let proxy = start(&origin, "", "").await;

    // POST: two streams.
    let mut posts = Vec::new();
    for i in 0..2u64 {
        let mut sub = Sub::h1_request(
            proxy.addr,
            "POST",
            "/feeds/chat",
            &[ACCEPT_SSE, ("content-type", "application/json")],
            b"{\"prompt\":\"hi\"}",
        )
        .await;
        sub.assert_event_stream();
        let up = origin.next_stream().await;
        assert_eq!(up.req.method, "POST");
        assert_eq!(&up.req.body[..], b"{\"prompt\":\"hi\"}");
        up.send_events([i + 1]);
        assert_eq!(sub.next_id().await, i + 1);
        posts.push((sub, up));
    }
    assert_eq!(origin.stream_count(), 2);

    // Not 200: each request reaches the origin and gets its answer.
    for (path, status, body) in [
        ("/feeds/missing", 404, &b"no such feed"[..]),
        ("/feeds/missing", 404, b"no such feed"),
        ("/feeds/busy", 503, b"busy"),
        ("/feeds/busy", 503, b"busy"),
    ] {
        let before = origin.requests_to(path).len();
        let mut sub = Sub::h1(proxy.addr, path, &[]).await;
        assert_eq!(sub.head.status, status, "{path}");
        assert_eq!(sub.rest().await.0, body);
        assert_eq!(origin.requests_to(path).len(), before + 1, "{path}");
    }

    // Compressed: each subscriber its own upstream stream, bytes untouched.
    let gz = [("accept-encoding", "gzip"), ACCEPT_SSE];
    let mut one = Sub::h1(proxy.addr, "/feeds/gz", &gz).await;
    assert_eq!(one.head.header("content-encoding"), Some("gzip"));
    let one_up = origin.next_stream().await;
    let mut two = Sub::h1(proxy.addr, "/feeds/gz", &gz).await;
    assert_eq!(two.head.header("content-encoding"), Some("gzip"));
    let two_up = origin.next_stream().await;
    assert_eq!(origin.requests_to("/feeds/gz").len(), 2);
    one_up.send(b"\x1f\x8b\x08one");
    two_up.send(b"\x1f\x8b\x08two");
    one_up.end();
    two_up.end();
    assert_eq!(one.rest().await, (b"\x1f\x8b\x08one".to_vec(), Next::End));
    assert_eq!(two.rest().await, (b"\x1f\x8b\x08two".to_vec(), Next::End));
    assert_eq!(subscribers_now(&proxy).await, 0.0);
}

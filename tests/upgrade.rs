//! The zero-downtime path: `ssegate run --upgrade` beside a running
//! process, then SIGQUIT to the old one. The new process takes the
//! listening sockets over; the old one sends its streams a `retry:` hint at
//! an event boundary and exits; no new connection is refused meanwhile.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_over_listeners_and_drains_streams() {
    let mut up = Upstream::start().await;
    let cfg = basic_config(
        up.addr,
        "heartbeat = \"off\"\nshutdown_retry = \"2s\"\nshutdown_retry_jitter = \"0s\"",
    );
    let mut old = Proxy::start(ProxyConfig::new(cfg)).await;

    // A stream on the old process, at an event boundary.
    let mut client = H1Client::connect(old.addr).await;
    client.get("/s", &[]).await;
    let mut conn = up.next().await;
    conn.head_chunked("text/event-stream", &[]).await;
    assert_eq!(client.response_head().await.status, 200);
    conn.chunk(b"id: 1\ndata: one\n\n").await;
    assert_eq!(
        client.next_chunk().await.as_deref(),
        Some(&b"id: 1\ndata: one\n\n"[..])
    );

    let mut new = old.start_upgrade().await;
    old.signal("QUIT");

    // Requests keep being answered throughout the hand-over (an upstream
    // task answers each with 200 "ok"), until the old process has exited.
    let answer = tokio::spawn(async move {
        let mut served = 0usize;
        while let Some(mut c) = up.conns.recv().await {
            c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            served += 1;
        }
        served
    });
    let mut requests = 0;
    let drained = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_until(&mut got, b"\n\n").await;
        let end = client.next_chunk().await;
        (got, end)
    });
    within("the old process to exit", async {
        loop {
            let mut c = H1Client::connect(old.addr).await;
            c.get("/ordinary", &[]).await;
            let head = c.response_head().await;
            assert_eq!(head.status, 200, "request {requests} during the upgrade");
            assert_eq!(&c.body(&head).await[..], b"ok");
            requests += 1;
            if let Ok(Some(_)) = old.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // And the new process serves on after the old one is gone.
    let mut c = H1Client::connect(old.addr).await;
    c.get("/after", &[]).await;
    assert_eq!(c.response_head().await.status, 200);
    assert!(
        requests >= 10,
        "only {requests} requests during the hand-over"
    );

    let (got, end) = drained.await.expect("drained stream");
    assert_eq!(
        got, b"retry: 2000\n\n",
        "the old process's stream got its hint"
    );
    assert_eq!(end, None, "and then a clean end");

    let _ = new.kill();
    let _ = new.wait();
    answer.abort();
}

//! The registry, the hub's state and the subscription source, in memory:
//! pieces pushed into a hub's ring as its task would, read back through
//! [`Subscription`] as a subscriber's relay would.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_http::ResponseHeader;
use rand::{Rng, SeedableRng};

use super::*;
use crate::config::{Overflow, Share};
use crate::metrics::Metrics;
use crate::proxy::stream::{Settled, Source, SourceEvent};
use crate::share::cut::Piece;
use crate::share::key::stream_key;
use crate::sse::Framer;

fn shares(settings: Share) -> (Arc<Shares>, Metrics) {
    let m = Metrics::new().expect("metrics");
    let route = m.route("/feeds/").expect("route");
    let retry = (Duration::from_millis(1000), Duration::ZERO);
    (
        Arc::new(Shares::new(settings, route.share().clone(), retry, None)),
        m,
    )
}

fn key(path: &str) -> StreamKey {
    stream_key("example.com", path, None, &http::HeaderMap::new(), &[])
}

fn head() -> ResponseHeader {
    let mut h = ResponseHeader::build(200, None).expect("head");
    h.insert_header("content-type", "text/event-stream")
        .expect("ct");
    h.insert_header("set-cookie", "session=opener")
        .expect("cookie");
    h
}

/// Event `n` with id `n`, as a piece.
fn event(n: u64) -> Piece {
    Piece {
        bytes: Bytes::from(format!("id: {n}\ndata: {n}\n\n")),
        last_id: Some(Arc::from(n.to_string().as_bytes())),
        dispatched: true,
    }
}

fn push(hub: &Hub, from: u64, to: u64) {
    let mut st = hub.state();
    for n in from..to {
        st.ring.push(event(n));
    }
    drop(st);
    hub.wake_subscribers();
}

/// Opens `key` on `shares` and returns the opener's membership.
fn open(shares: &Arc<Shares>, key: &StreamKey) -> Membership {
    match shares.find(key) {
        Found::Open(opening, member) => {
            opening.opened(head());
            member
        }
        _ => panic!("expected to open"),
    }
}

/// The ids in `bytes`, in order.
fn ids(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut framer = Framer::new();
    framer.feed_with(bytes, |e| {
        out.push(
            std::str::from_utf8(e.id)
                .expect("utf-8")
                .parse()
                .expect("n"),
        )
    });
    out
}

async fn next_bytes(sub: &mut Subscription) -> Bytes {
    match sub.next().await {
        SourceEvent::Whole(b, _) => b,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_request_opens_later_ones_join_and_joiners_lose_set_cookie() {
    let (shares, _m) = shares(Share::default());
    let k = key("/a");
    let opener = open(&shares, &k);
    let Found::Live(joiner) = shares.find(&k) else {
        panic!("expected live")
    };
    assert!(Arc::ptr_eq(opener.hub(), joiner.hub()));
    assert_eq!(opener.hub().subscribers(), 2);
    let kept = joiner.hub().state().head.clone().expect("head");
    assert!(kept.headers.get("set-cookie").is_none());
    // Another key, another hub.
    let other = shares.find(&key("/b"));
    assert!(matches!(other, Found::Open(..)));
    assert_eq!(shares.len(), 2);
    // Its opening given up with nothing kept: it is forgotten.
    drop(other);
    assert_eq!(shares.len(), 1);
    drop(joiner);
    assert_eq!(opener.hub().subscribers(), 1);
}

#[tokio::test]
async fn a_subscriber_reads_whole_events_from_its_join_point_once() {
    let (shares, _m) = shares(Share::default());
    let k = key("/a");
    let member = open(&shares, &k);
    let hub = member.hub().clone();
    push(&hub, 1, 4);
    // Live: from the next event on.
    let at = hub.position(None).expect("live");
    let mut live = Subscription::new(member, at, Overflow::Disconnect);
    // Replay: after the event that set id 2.
    let Found::Live(m2) = shares.find(&k) else {
        panic!()
    };
    let at = hub.position(Some(b"2")).expect("hit");
    let mut replay = Subscription::new(m2, at, Overflow::Disconnect);
    assert_eq!(hub.position(Some(b"99")), None, "a miss");
    push(&hub, 4, 6);
    assert_eq!(ids(&next_bytes(&mut live).await), [4, 5]);
    assert_eq!(ids(&next_bytes(&mut replay).await), [3, 4, 5]);
    // Nothing more: next() waits until the hub pushes.
    let waiting = tokio::time::timeout(Duration::from_millis(50), live.next()).await;
    assert!(waiting.is_err(), "no event, no chunk");
    let h = hub.clone();
    let pusher = tokio::spawn(async move { push(&h, 6, 7) });
    assert_eq!(ids(&next_bytes(&mut live).await), [6]);
    pusher.await.expect("pusher");
}

#[tokio::test]
async fn overflow_disconnect_ends_with_retry_and_skip_moves_to_the_newest() {
    for overflow in [Overflow::Disconnect, Overflow::Skip] {
        let settings = Share {
            replay_events: 100,
            overflow,
            ..Share::default()
        };
        let (shares, m) = shares(settings);
        let member = open(&shares, &key("/a"));
        let hub = member.hub().clone();
        let at = hub.position(None).expect("live");
        let mut sub = Subscription::new(member, at, overflow);
        push(&hub, 0, 51);
        // 51 behind a ring of 100: more than half.
        match overflow {
            Overflow::Disconnect => {
                assert!(matches!(sub.next().await, SourceEvent::Settle));
                let mut rng = rand::rngs::StdRng::seed_from_u64(1);
                let settled = sub.settle(&Framer::new(), &mut rng).await;
                match settled {
                    Settled::End(hint, end) => {
                        assert_eq!(&hint[..], b"retry: 1000\n\n");
                        assert_eq!(end, StreamEnd::Overflow);
                    }
                    other => panic!("{other:?}"),
                }
            }
            Overflow::Skip => {
                assert_eq!(ids(&next_bytes(&mut sub).await), [50]);
                assert_eq!(sub.skipped(), 50);
            }
        }
        let text = String::from_utf8(m.encode().expect("encode")).expect("utf-8");
        let policy = match overflow {
            Overflow::Disconnect => "disconnect",
            Overflow::Skip => "skip",
        };
        let line = format!(
            "ssegate_subscriber_overflows_total{{policy=\"{policy}\",route=\"/feeds/\"}} 1"
        );
        assert!(text.contains(&line), "{text}");
    }
}

#[tokio::test]
async fn a_replay_from_deep_in_the_ring_is_served_not_cut_as_overflowed() {
    let settings = Share {
        replay_events: 100,
        ..Share::default()
    };
    let (shares, _m) = shares(settings);
    let k = key("/a");
    let opener = open(&shares, &k);
    let hub = opener.hub().clone();
    push(&hub, 0, 90);
    let Found::Live(m) = shares.find(&k) else {
        panic!()
    };
    // 80 events back in a ring of 100: more than half.
    let at = hub.position(Some(b"9")).expect("hit");
    assert!(hub.state().ring.overflowed(at.pos));
    let mut sub = Subscription::new(m, at, Overflow::Disconnect);
    assert_eq!(
        ids(&next_bytes(&mut sub).await),
        (10..90).collect::<Vec<_>>()
    );
    // Caught up, it is held to the rule like any other: 51 behind is too many.
    push(&hub, 90, 141);
    assert!(matches!(sub.next().await, SourceEvent::Settle));
}

#[tokio::test]
async fn subscribers_end_where_their_generation_ended_even_after_a_reopen() {
    let (shares, _m) = shares(Share::default());
    let k = key("/a");
    let member = open(&shares, &k);
    let hub = member.hub().clone();
    let mut sub = Subscription::new(member, hub.position(None).expect("at"), Overflow::Skip);
    push(&hub, 0, 2);
    {
        let mut st = hub.state();
        let at = st.ring.head();
        st.ended_at = Some((st.generation, at, StreamEnd::UpstreamError));
        st.upstream = Upstream::Ended(StreamEnd::UpstreamError);
    }
    // A request comes back and re-opens the ring, which goes on.
    let Found::Open(opening, again) = shares.find(&k) else {
        panic!("expected a re-open")
    };
    assert_eq!(opening.resume_id.as_deref(), Some(&b"1"[..]));
    opening.opened(head());
    push(&hub, 2, 4);
    // The old subscriber gets its generation's events, one write each, then the failure.
    assert_eq!(ids(&next_bytes(&mut sub).await), [0]);
    assert_eq!(ids(&next_bytes(&mut sub).await), [1]);
    assert!(matches!(sub.next().await, SourceEvent::Failed(_)));
    // A new one reads on.
    let at = hub.position(Some(b"1")).expect("hit");
    let mut new = Subscription::new(again, at, Overflow::Skip);
    assert_eq!(ids(&next_bytes(&mut new).await), [2, 3]);
}

#[tokio::test]
async fn a_hub_is_removed_only_when_unused() {
    let (shares, _m) = shares(Share::default());
    let k = key("/a");
    let member = open(&shares, &k);
    let hub = member.hub().clone();
    let generation = hub.state().generation;
    assert!(
        !shares.remove_if_unused(&hub, Some(generation)),
        "a subscriber"
    );
    drop(member);
    assert_eq!(hub.subscribers(), 0);
    assert!(hub.state().last_left.is_some());
    assert!(!shares.remove_if_unused(&hub, None), "live, not ended");
    assert!(
        !shares.remove_if_unused(&hub, Some(generation + 1)),
        "not its generation"
    );
    assert!(shares.remove_if_unused(&hub, Some(generation)));
    assert!(shares.is_empty());
    assert!(matches!(shares.find(&k), Found::Open(..)), "a new hub");
}

#[tokio::test]
async fn a_failed_opening_lets_the_waiters_go_and_forgets_an_empty_hub() {
    let (shares, _m) = shares(Share::default());
    let k = key("/a");
    let Found::Open(opening, first) = shares.find(&k) else {
        panic!()
    };
    let Found::Opening(waiter) = shares.find(&k) else {
        panic!("expected to wait")
    };
    let hub = waiter.hub().clone();
    let waiting = tokio::spawn(async move { hub.opened().await.is_some() });
    drop(opening);
    assert!(!waiting.await.expect("join"), "the waiter goes unshared");
    drop((first, waiter));
    assert!(shares.is_empty());
}

/// Joins at random moments with random Last-Event-IDs while events are
/// pushed from another thread: every subscriber gets exactly the events
/// after its join point. A join that read its position outside the hub's
/// lock would see gaps or duplicates here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_while_events_flow_see_no_gap_and_no_duplicate() {
    const EVENTS: u64 = 5_000;
    // A ring that holds every event, so that no reader can fall behind:
    // what is tested is the join, not the overflow.
    let settings = Share {
        replay_events: 2 * EVENTS as usize + 2,
        replay_bytes: 64 * 1024 * 1024,
        ..Share::default()
    };
    let (shares, _m) = shares(settings);
    let k = key("/a");
    let member = open(&shares, &k);
    let hub = member.hub().clone();
    let h = hub.clone();
    let pusher = tokio::spawn(async move {
        for n in 0..EVENTS {
            push(&h, n, n + 1);
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut readers = Vec::new();
    for _ in 0..100 {
        let Found::Live(m) = shares.find(&k) else {
            panic!()
        };
        let head = hub.state().ring.head();
        let want = (head > 10 && rng.gen_bool(0.5)).then(|| rng.gen_range(head - 10..head));
        let id = want.map(|n| n.to_string());
        let at = hub
            .position(id.as_deref().map(str::as_bytes))
            .expect("in the ring");
        let sub = Subscription::new(m, at, Overflow::Disconnect);
        let read = tokio::time::timeout(Duration::from_secs(20), read_to(sub, want, EVENTS));
        readers.push(tokio::spawn(read));
        if rng.gen_bool(0.3) {
            tokio::task::yield_now().await;
        }
    }
    pusher.await.expect("pusher");
    for r in readers {
        r.await.expect("reader").expect("a reader missed a wake-up");
    }
    drop(member);
}

/// Reads `sub` until event `last - 1`, checking the ids follow on from `after`.
async fn read_to(mut sub: Subscription, after: Option<u64>, last: u64) {
    let mut expected: Option<u64> = after.map(|n| n + 1);
    loop {
        let got = match sub.next().await {
            SourceEvent::Whole(b, _) => ids(&b),
            other => panic!("{other:?}"),
        };
        for id in got {
            if let Some(e) = expected {
                assert_eq!(id, e, "gap or duplicate");
            }
            expected = Some(id + 1);
        }
        if expected == Some(last) {
            return;
        }
    }
}

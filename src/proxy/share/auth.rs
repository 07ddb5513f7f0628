//! Authorised sharing (route `share_auth`): before a request joins a
//! shared stream, a GET subrequest to the `share_auth` path on the route's
//! upstream carries its `Cookie`, `Authorization` and forwarding headers,
//! as nginx's `auth_request` does.
//!
//! ```text
//!  2xx ─────────► join the shared stream (whatever its credentials)
//!  401 / 403 ───► that answer goes back to the client as it came
//!  other, or no answer ─► 502 (an EventSource: the shed answer)
//! ```
//!
//! With `share_auth_cache`, an answer (2xx, 401 or 403) is reused for the
//! same credentials until it is that old; errors are never cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::time::Instant;

use crate::upstream::{Pool, Pools};

/// Answers kept at most; past it, expired ones are dropped, then all.
const MAX_CACHED: usize = 10_000;
/// Credentials longer than this, and refusals with a larger body, are not
/// cached: the cache stays within `MAX_CACHED` × 8 KiB.
const MAX_CACHED_SIZE: usize = 4 * 1024;
/// The body of a 401 or 403 passed to the client is read up to this size.
const MAX_DENIAL_BODY: usize = 64 * 1024;

/// What the authorisation said.
#[derive(Clone)]
pub enum Verdict {
    /// A 2xx: share.
    Allow,
    /// A 401 or 403: this response goes back to the client.
    Deny(Box<ResponseHeader>, Bytes),
    /// Anything else, or no answer in time: the reason, for the log.
    Error(String),
}

/// Answers reused per credentials (`share_auth_cache`).
pub struct AuthCache {
    ttl: Option<Duration>,
    answers: Mutex<HashMap<Vec<u8>, (Instant, Verdict)>>,
}

impl AuthCache {
    pub fn new(ttl: Option<Duration>) -> AuthCache {
        AuthCache {
            ttl,
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &[u8]) -> Option<Verdict> {
        let ttl = self.ttl?;
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        match answers.get(key) {
            Some((at, verdict)) if at.elapsed() < ttl => Some(verdict.clone()),
            _ => None,
        }
    }

    fn put(&self, key: Vec<u8>, verdict: &Verdict) {
        let Some(ttl) = self.ttl else { return };
        let cacheable = match verdict {
            Verdict::Allow => true,
            Verdict::Deny(_, body) => body.len() <= MAX_CACHED_SIZE,
            Verdict::Error(_) => false,
        };
        if !cacheable || key.len() > MAX_CACHED_SIZE {
            return;
        }
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= MAX_CACHED {
            answers.retain(|_, (at, _)| at.elapsed() < ttl);
            if answers.len() >= MAX_CACHED {
                answers.clear();
            }
        }
        answers.insert(key, (Instant::now(), verdict.clone()));
    }
}

/// The credentials a verdict is cached under: `Cookie` and
/// `Authorization`, each length-prefixed so that no two differ only in
/// where one ends.
fn credentials(req: &RequestHeader) -> Vec<u8> {
    let mut key = Vec::new();
    for name in [header::COOKIE, header::AUTHORIZATION] {
        for value in req.headers.get_all(&name) {
            key.extend_from_slice(&(value.len() as u32).to_be_bytes());
            key.extend_from_slice(value.as_bytes());
        }
        key.push(0xff);
    }
    key
}

/// Asks `path` on `pool` whether `request` (as prepared for the upstream)
/// may share. `read_timeout` bounds the wait for the answer.
pub async fn authorize(
    cache: &AuthCache,
    pools: &Pools,
    pool: &Pool,
    path: &str,
    request: &RequestHeader,
    read_timeout: Duration,
) -> Verdict {
    let key = credentials(request);
    if let Some(verdict) = cache.get(&key) {
        return verdict;
    }
    let verdict = match tokio::time::timeout(read_timeout, ask(pools, pool, path, request)).await {
        Ok(v) => v,
        Err(_) => Verdict::Error("no answer within timeouts.read".into()),
    };
    cache.put(key, &verdict);
    verdict
}

/// The subrequest: GET `path`, no body, with the request's credentials and
/// forwarding headers.
async fn ask(pools: &Pools, pool: &Pool, path: &str, request: &RequestHeader) -> Verdict {
    let mut sub = match RequestHeader::build("GET", path.as_bytes(), None) {
        Ok(r) => r,
        Err(e) => return Verdict::Error(format!("cannot build the subrequest: {e}")),
    };
    for (name, value) in request.headers.iter() {
        let forwarded = name == header::HOST
            || name == header::COOKIE
            || name == header::AUTHORIZATION
            || name == header::FORWARDED
            || name.as_str().starts_with("x-forwarded-");
        if forwarded {
            if let Err(e) = sub.append_header(name.clone(), value.clone()) {
                return Verdict::Error(format!("cannot build the subrequest: {e}"));
            }
        }
    }
    let mut up = match pool.connect(&pools.connectors).await {
        Ok(up) => up,
        Err(e) => return Verdict::Error(format!("no server reachable: {e}")),
    };
    let (verdict, reusable) = exchange(&mut up, sub).await;
    pools.release(up, reusable).await;
    verdict
}

/// Sends the subrequest on `up` and reads the answer; `true` with it when
/// the connection can carry another request.
async fn exchange(up: &mut crate::upstream::Connected, sub: RequestHeader) -> (Verdict, bool) {
    let sent = async {
        up.session.write_request_header(Box::new(sub)).await?;
        up.session.finish_request_body().await?;
        up.session.read_response_header().await
    };
    if let Err(e) = sent.await {
        return (Verdict::Error(format!("subrequest failed: {e}")), false);
    }
    let Some(head) = up.session.response_header().cloned() else {
        return (Verdict::Error("no response header".into()), false);
    };
    let status = head.status.as_u16();
    if head.status.is_success() {
        // Only the status counts; the body is not wanted.
        let done = up.session.response_done();
        return (Verdict::Allow, done);
    }
    if status != 401 && status != 403 {
        return (Verdict::Error(format!("answered {status}")), false);
    }
    let mut body = BytesMut::new();
    loop {
        match up.session.read_response_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_DENIAL_BODY {
                    return (
                        Verdict::Error(format!("a {status} with a body over 64 KiB")),
                        false,
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return (Verdict::Error(format!("reading the {status}: {e}")), false),
        }
    }
    (Verdict::Deny(Box::new(head), body.freeze()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(body: &'static [u8]) -> Verdict {
        let head = ResponseHeader::build(403, None).expect("head");
        Verdict::Deny(Box::new(head), Bytes::from_static(body))
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_for_their_time_and_errors_never() {
        let cache = AuthCache::new(Some(Duration::from_secs(10)));
        cache.put(b"alice".to_vec(), &Verdict::Allow);
        cache.put(b"bob".to_vec(), &deny(b"no"));
        cache.put(b"carol".to_vec(), &Verdict::Error("502".into()));
        assert!(matches!(cache.get(b"alice"), Some(Verdict::Allow)));
        assert!(matches!(cache.get(b"bob"), Some(Verdict::Deny(..))));
        assert!(cache.get(b"carol").is_none(), "errors are asked again");
        assert!(cache.get(b"dave").is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(cache.get(b"alice").is_none(), "expired");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_cached_when_off_or_too_large() {
        let off = AuthCache::new(None);
        off.put(b"alice".to_vec(), &Verdict::Allow);
        assert!(off.get(b"alice").is_none());
        let cache = AuthCache::new(Some(Duration::from_secs(10)));
        cache.put(vec![b'x'; MAX_CACHED_SIZE + 1], &Verdict::Allow);
        assert!(cache.get(&vec![b'x'; MAX_CACHED_SIZE + 1]).is_none());
        static BIG: [u8; MAX_CACHED_SIZE + 1] = [b'x'; MAX_CACHED_SIZE + 1];
        cache.put(b"bob".to_vec(), &deny(&BIG));
        assert!(cache.get(b"bob").is_none());
    }

    #[test]
    fn credentials_cannot_run_into_each_other() {
        let req = |cookie: &str, auth: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/", None).expect("req");
            r.insert_header("cookie", cookie).expect("cookie");
            if let Some(a) = auth {
                r.insert_header("authorization", a).expect("auth");
            }
            r
        };
        assert_ne!(
            credentials(&req("ab", None)),
            credentials(&req("a", Some("b")))
        );
        assert_eq!(
            credentials(&req("a", Some("b"))),
            credentials(&req("a", Some("b")))
        );
    }
}

//! The ordinary phase: any response that is not an event stream passes
//! through as it comes.
//!
//! ```text
//!  response header (hop-by-hop removed) ──(bad)──► 502
//!  body chunks relayed, read timeout per read; client gone ─► abort
//!  finish: upstream back to the pool only if fully read;
//!          client kept alive only if clean
//! ```

use pingora_core::protocols::http::ServerSession;

use super::exchange::Exchanged;
use super::headers;
use super::reply::{respond_or_abort, Outcome};
use crate::upstream::{Connected, Pools};

/// Serves the response in `x` to the client of `session`; `method` is the
/// request's, which decides whether the response has a body.
pub async fn serve(
    session: &mut ServerSession,
    pools: &Pools,
    x: Exchanged,
    method: &http::Method,
) -> Outcome {
    let Exchanged { mut up, head, .. } = x;
    let client_version = session.req_header().version;
    let has_body = headers::response_has_body(method, head.status);
    let resp = match headers::ordinary_response(&head, client_version, has_body) {
        Ok(r) => r,
        Err(e) => {
            pools.release(up, false).await;
            log::warn!("cannot build response: {e}");
            return respond_or_abort(session, 502, "bad upstream response\n").await;
        }
    };
    if let Err(e) = session.write_response_header(Box::new(resp)).await {
        log::info!("writing the response header to the client failed: {e}");
        pools.release(up, false).await;
        return Outcome::Abort;
    }
    let outcome = if has_body {
        relay_body(session, &mut up).await
    } else {
        Outcome::Clean
    };
    let outcome = if outcome == Outcome::Clean && session.finish_body().await.is_err() {
        Outcome::Abort
    } else {
        outcome
    };
    let reusable = outcome == Outcome::Clean && up.session.response_done();
    pools.release(up, reusable).await;
    outcome
}

/// Relays an ordinary response body, watching for the client going away.
async fn relay_body(client: &mut ServerSession, up: &mut Connected) -> Outcome {
    loop {
        let chunk = tokio::select! {
            biased;
            read = up.session.read_response_body() => read,
            _ = client.read_body_or_idle(true) => return Outcome::Abort,
        };
        match chunk {
            Ok(Some(data)) => {
                if data.is_empty() {
                    continue;
                }
                if client.write_response_body(data, false).await.is_err() {
                    return Outcome::Abort;
                }
            }
            Ok(None) => return Outcome::Clean,
            Err(e) => {
                log::info!("upstream body failed: {e}");
                return Outcome::Abort;
            }
        }
    }
}

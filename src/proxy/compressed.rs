//! Compression of event streams (route `compression`): which streams are
//! compressed, and the [`Sink`] that does it around the client.
//!
//! ```text
//!  event_stream::begin: response header built from the upstream's
//!        │
//!  negotiate: route lists codings? upstream sent no Content-Encoding and
//!        │    no `Cache-Control: no-transform`? ──no──► identity, untouched
//!        │    yes: `Vary: Accept-Encoding`; the first of the route's list
//!        │    the client's Accept-Encoding accepts, if any
//!        │
//!  a slot under `[stream] compression_max_streams`? ──no──► identity
//!        │
//!  Content-Encoding set, header out; the stream's task wraps its client in
//!  Compressed: every write is encoded and sync-flushed (compress.rs)
//! ```
//!
//! The relay writes each upstream chunk as it comes, and a chunk may end
//! mid-event (a large event, or a TCP read that split one). The encoder is
//! flushed after *every* write, not only at event boundaries: that costs a
//! few bytes per extra flush, and in return every byte the upstream sent is
//! decodable by the client as soon as it is written, which is what the
//! uncompressed relay promises (no event waits, however it was cut).
//! Heartbeats and `retry:` hints are writes like any other, so they are
//! flushed too.
//!
//! Shared streams: each subscriber's relay has its own client, so each
//! subscriber gets its own encoder over its own copy. One encoder shared
//! by subscribers that joined at the same point would save CPU, but they
//! drift apart at the first heartbeat, replay or slow write. Measured
//! (`benches/compression.rs`, 100 subscribers): 3.7 µs (zstd), 8 µs (gzip)
//! or 12 µs (br) of CPU per delivered event with an encoder each, against
//! under 0.1 µs with one shared and 3 µs for the client write itself;
//! `compression_max_streams` bounds that cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora_http::{RequestHeader, ResponseHeader};

use super::downstream::{Sink, WriteFailure};
use super::headers;
use crate::compress::{accepted, Coding, StreamEncoder};
use crate::metrics::CompressionMetrics;

/// What one route needs to compress its event streams.
pub struct RouteCompression {
    /// The route's `compression`, most preferred first; empty: off.
    pub codings: Vec<Coding>,
    /// The process-wide cap, shared by every route.
    pub slots: Arc<Slots>,
    pub metrics: CompressionMetrics,
}

/// `[stream] compression_max_streams`: how many streams may hold an
/// encoder at once, across the process.
pub struct Slots {
    max: usize,
    used: AtomicUsize,
}

/// One stream's place under [`Slots`], given back when dropped.
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// A slot, if fewer than `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What negotiation decided for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The response's coding depends on Accept-Encoding: `Vary` says so.
    pub varies: bool,
    /// The coding to apply; `None`: identity.
    pub coding: Option<Coding>,
}

/// Whether, and how, the event stream answering `req` with the upstream's
/// `upstream` head is compressed, for a route offering `codings`.
pub fn negotiate(codings: &[Coding], req: &RequestHeader, upstream: &ResponseHeader) -> Negotiated {
    let eligible =
        !codings.is_empty() && !headers::is_compressed(upstream) && !no_transform(upstream);
    if !eligible {
        return Negotiated {
            varies: false,
            coding: None,
        };
    }
    let values = req
        .headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok());
    Negotiated {
        varies: true,
        coding: accepted(values, codings),
    }
}

/// Does the upstream forbid transformations (`Cache-Control: no-transform`)?
fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

/// Adds `Accept-Encoding` to `resp`'s `Vary`, unless it is there already
/// (or `Vary: *` covers it).
fn add_vary(resp: &mut ResponseHeader) -> pingora_error::Result<()> {
    let covered = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("accept-encoding")
        });
    if !covered {
        resp.append_header(header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}

impl RouteCompression {
    /// Decides on compression for the event stream answering `req`, and
    /// marks the client's response header `resp` accordingly. `Some`: the
    /// encoder the stream's client is to be wrapped in.
    pub fn start(
        &self,
        req: &RequestHeader,
        upstream: &ResponseHeader,
        resp: &mut ResponseHeader,
    ) -> pingora_error::Result<Option<Box<Coder>>> {
        let n = negotiate(&self.codings, req, upstream);
        if n.varies {
            add_vary(resp)?;
        }
        let Some(coding) = n.coding else {
            return Ok(None);
        };
        // Past the cap the stream still works, uncompressed.
        let Some(slot) = self.slots.take() else {
            return Ok(None);
        };
        let encoder = match StreamEncoder::new(coding) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("cannot start a {} encoder: {e}", coding.name());
                return Ok(None);
            }
        };
        resp.insert_header(header::CONTENT_ENCODING, coding.name())?;
        resp.remove_header(&header::CONTENT_LENGTH);
        self.metrics.open.inc();
        Ok(Some(Box::new(Coder {
            encoder,
            metrics: self.metrics.clone(),
            _slot: slot,
            _open: OpenGauge(self.metrics.open.clone()),
        })))
    }
}

/// One compressed stream's encoder, its place under the cap and its counters.
pub struct Coder {
    encoder: StreamEncoder,
    metrics: CompressionMetrics,
    _slot: Slot,
    _open: OpenGauge,
}

/// Holds `ssegate_compressed_streams_open` up while the stream has its encoder.
struct OpenGauge(prometheus::IntGauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Coder {
    fn encode(&mut self, data: &[u8]) -> Result<Bytes, WriteFailure> {
        let out = self.encoder.encode(data).map_err(|e| {
            log::warn!("compressing an event stream failed: {e}");
            WriteFailure::Failed
        })?;
        self.metrics.bytes_in.inc_by(data.len() as u64);
        self.metrics.bytes_out.inc_by(out.len() as u64);
        Ok(out)
    }
}

/// A client, compressed or not: [`Sink`] writes go through the stream's
/// encoder when it has one. One type for both, so the relay is built once
/// and an identity stream pays one branch per write.
pub struct Compressed<S> {
    inner: S,
    coder: Option<Box<Coder>>,
}

impl<S: Sink + Send> Compressed<S> {
    pub fn new(inner: S, coder: Option<Box<Coder>>) -> Self {
        Compressed { inner, coder }
    }

    /// The client, for what follows the stream (keep-alive or close).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Sink + Send> Sink for Compressed<S> {
    async fn write(&mut self, data: Bytes) -> Result<(), WriteFailure> {
        if data.is_empty() {
            return Ok(());
        }
        let data = match &mut self.coder {
            None => data,
            Some(coder) => coder.encode(&data)?,
        };
        self.inner.write(data).await
    }

    fn closed(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.inner.closed()
    }

    async fn finish(&mut self) -> Result<(), WriteFailure> {
        if let Some(coder) = self.coder.take() {
            let Coder {
                encoder, metrics, ..
            } = *coder;
            let tail = encoder.finish().map_err(|e| {
                log::warn!("ending a compressed event stream failed: {e}");
                WriteFailure::Failed
            })?;
            metrics.bytes_out.inc_by(tail.len() as u64);
            self.inner.write(tail).await?;
        }
        self.inner.finish().await
    }

    fn abort(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.inner.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(accept_encoding: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in accept_encoding {
            r.append_header("accept-encoding", *v).unwrap();
        }
        r
    }

    fn upstream(extra: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", "text/event-stream")
            .unwrap();
        for (k, v) in extra {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    #[test]
    fn negotiation_over_headers() {
        let plain = upstream(&[]);
        let got =
            |codings: &[Coding], ae: &[&str], up: &ResponseHeader| negotiate(codings, &req(ae), up);
        let on = |c| Negotiated {
            varies: true,
            coding: c,
        };
        let off = Negotiated {
            varies: false,
            coding: None,
        };
        assert_eq!(got(&ALL, &["gzip, br"], &plain), on(Some(Coding::Br)));
        assert_eq!(
            got(&ALL, &["gzip", "zstd;q=0.1"], &plain),
            on(Some(Coding::Zstd))
        );
        // Eligible but nothing acceptable: identity, and still Vary.
        assert_eq!(got(&ALL, &["identity"], &plain), on(None));
        assert_eq!(got(&ALL, &[], &plain), on(None));
        assert_eq!(got(&ALL, &["gzip;q=0, br;q=0, zstd;q=0"], &plain), on(None));
        assert_eq!(got(&ALL, &["deflate, compress"], &plain), on(None));
        // Off for the route, or for this response.
        assert_eq!(got(&[], &["gzip"], &plain), off);
        let coded = upstream(&[("content-encoding", "gzip")]);
        assert_eq!(got(&ALL, &["gzip"], &coded), off);
        let ident = upstream(&[("content-encoding", "identity")]);
        assert_eq!(got(&ALL, &["gzip"], &ident), on(Some(Coding::Gzip)));
        for cc in [
            "no-transform",
            "no-cache, No-Transform",
            "private,no-transform",
        ] {
            let up = upstream(&[("cache-control", cc)]);
            assert_eq!(got(&ALL, &["gzip"], &up), off, "{cc}");
        }
        let up = upstream(&[
            ("cache-control", "no-cache"),
            ("cache-control", "no-transform"),
        ]);
        assert_eq!(got(&ALL, &["gzip"], &up), off);
    }

    fn route(max: usize, codings: &[Coding]) -> RouteCompression {
        let c = prometheus::IntCounter::new("c", "c").unwrap();
        RouteCompression {
            codings: codings.to_vec(),
            slots: Arc::new(Slots::new(max)),
            metrics: CompressionMetrics {
                bytes_in: c.clone(),
                bytes_out: c,
                open: prometheus::IntGauge::new("g", "g").unwrap(),
            },
        }
    }

    #[test]
    fn start_marks_the_header_and_respects_the_cap() {
        let rc = route(1, &ALL);
        let up = upstream(&[("content-length", "9"), ("vary", "Origin")]);
        let mut resp = up.clone();
        let first = rc.start(&req(&["gzip"]), &up, &mut resp).unwrap();
        assert!(first.is_some());
        assert_eq!(resp.headers["content-encoding"], "gzip");
        assert!(resp.headers.get("content-length").is_none());
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        assert_eq!(rc.metrics.open.get(), 1);
        // The cap is reached: identity, but the header still varies.
        let mut resp = up.clone();
        assert!(rc.start(&req(&["gzip"]), &up, &mut resp).unwrap().is_none());
        assert!(resp.headers.get("content-encoding").is_none());
        assert_eq!(resp.headers.get_all("vary").iter().count(), 2);
        drop(first);
        assert_eq!(rc.metrics.open.get(), 0);
        let mut resp = upstream(&[("vary", "accept-encoding")]);
        let up = resp.clone();
        assert!(rc.start(&req(&["br"]), &up, &mut resp).unwrap().is_some());
        assert_eq!(resp.headers["content-encoding"], "br");
        assert_eq!(resp.headers.get_all("vary").iter().count(), 1);
        // No slot at all.
        let none = route(0, &ALL);
        let mut resp = upstream(&[]);
        assert!(none
            .start(&req(&["gzip"]), &up, &mut resp)
            .unwrap()
            .is_none());
    }
}

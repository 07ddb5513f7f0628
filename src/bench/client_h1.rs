//! One `ssegate bench` stream over HTTP/1.1: its own TCP connection (TLS for
//! https), the request, the response head, then the body decoded
//! incrementally (chunked, `Content-Length` or until close) into the SSE
//! framer, read by read, with no buffer of its own between reads.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use super::client::{check_response, connect_tcp, read_scratch, Ctx, StreamError, OPEN_TIMEOUT};
use super::http1::{self, BodyDecoder, ResponseHead};
use super::plan::Plan;
use super::stats::{ErrorKind, StreamMeter};

/// The request bytes every stream sends.
pub fn request(plan: &Plan) -> Vec<u8> {
    let mut bytes = http1::request_head(
        plan.method.as_str(),
        &plan.target.path,
        &plan.target.authority,
        &plan.headers,
        plan.body.as_ref().map(|b| b.len()),
    );
    if let Some(body) = &plan.body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// The request of a stream reconnecting after `last_event_id`: the run's
/// request with `Last-Event-ID` set to it (replacing one given with -H).
/// `None` when there is nothing to resume from (no id yet, or an empty one,
/// which browsers do not send either) or the id cannot be a header value.
pub fn resuming_request(plan: &Plan, last_event_id: Option<&[u8]>) -> Option<Vec<u8>> {
    let id = std::str::from_utf8(last_event_id?).ok()?;
    if id.is_empty() || http::HeaderValue::from_str(id).is_err() {
        return None;
    }
    let mut headers: Vec<(String, String)> = plan
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("last-event-id"))
        .cloned()
        .collect();
    headers.push(("Last-Event-ID".to_string(), id.to_string()));
    let mut bytes = http1::request_head(
        plan.method.as_str(),
        &plan.target.path,
        &plan.target.authority,
        &headers,
        plan.body.as_ref().map(|b| b.len()),
    );
    if let Some(body) = &plan.body {
        bytes.extend_from_slice(body);
    }
    Some(bytes)
}

/// Opens stream `index` with the request bytes `request` and reads it
/// until it ends or fails.
pub async fn stream(
    ctx: &Ctx,
    index: usize,
    request: &[u8],
    meter: &mut StreamMeter,
) -> Result<(), StreamError> {
    let began = Instant::now();
    let open_by: tokio::time::Instant = (began + OPEN_TIMEOUT).into();
    let tcp = timeout_at(open_by, connect_tcp(ctx, index))
        .await
        .map_err(|_| StreamError::open_timeout())??;
    match &ctx.tls {
        None => {
            meter.connected(&ctx.stats, began.elapsed());
            exchange(ctx, tcp, request, meter, open_by).await
        }
        // Boxed: the TLS state is large, and plain streams should not carry it.
        Some((connector, name)) => {
            Box::pin(async {
                let tls = timeout_at(open_by, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| StreamError::open_timeout())?
                    .map_err(|e| StreamError::new(ErrorKind::Tls, e.to_string()))?;
                meter.connected(&ctx.stats, began.elapsed());
                exchange(ctx, tls, request, meter, open_by).await
            })
            .await
        }
    }
}

/// Sends the request, reads the head, then the body.
async fn exchange<S>(
    ctx: &Ctx,
    mut io: S,
    request: &[u8],
    meter: &mut StreamMeter,
    open_by: tokio::time::Instant,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let sent = async {
        io.write_all(request).await?;
        io.flush().await
    };
    timeout_at(open_by, sent)
        .await
        .map_err(|_| StreamError::open_timeout())?
        .map_err(|e| StreamError::io(&e))?;
    let (head, rest) = timeout_at(open_by, read_head(&mut io))
        .await
        .map_err(|_| StreamError::open_timeout())??;
    check_response(head.status, head.headers.get("content-type"))?;
    let mut decoder = BodyDecoder::new(head.framing().map_err(other)?);
    meter.opened(&ctx.stats, Instant::now());
    if !rest.is_empty() && feed(ctx, meter, &mut decoder, &rest)? {
        return Ok(());
    }
    drop(rest);
    if decoder.is_done() {
        return Ok(());
    }
    read_body(ctx, &mut io, meter, &mut decoder).await
}

/// Reads up to the end of the response head, skipping interim (1xx)
/// responses; returns the head and the body bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(ResponseHead, Vec<u8>), StreamError> {
    let mut buf = Vec::new();
    loop {
        let got = read_scratch(io, |bytes| buf.extend_from_slice(bytes))
            .await
            .map_err(|e| StreamError::io(&e))?;
        if got.is_none() {
            return Err(StreamError::new(
                ErrorKind::Closed,
                "connection closed before the response head",
            ));
        }
        while let Some((head, end)) = ResponseHead::parse(&buf).map_err(other)? {
            let rest = buf.split_off(end);
            if (100..200).contains(&head.status) && head.status != 101 {
                buf = rest;
                continue;
            }
            return Ok((head, rest));
        }
    }
}

/// Reads the body until it ends; `Ok` is a clean end.
async fn read_body<S: AsyncRead + Unpin>(
    ctx: &Ctx,
    io: &mut S,
    meter: &mut StreamMeter,
    decoder: &mut BodyDecoder,
) -> Result<(), StreamError> {
    loop {
        let got = read_scratch(io, |bytes| feed(ctx, meter, decoder, bytes))
            .await
            .map_err(|e| StreamError::io(&e))?;
        match got {
            Some(Ok(true)) => return Ok(()),
            Some(Ok(false)) => {}
            Some(Err(e)) => return Err(e),
            None if decoder.eof_is_clean() => return Ok(()),
            None => {
                return Err(StreamError::new(
                    ErrorKind::Closed,
                    "connection closed in the middle of the body",
                ))
            }
        }
    }
}

/// Decodes one read's bytes into the meter; `true` when the body ended.
fn feed(
    ctx: &Ctx,
    meter: &mut StreamMeter,
    decoder: &mut BodyDecoder,
    bytes: &[u8],
) -> Result<bool, StreamError> {
    let mut receiving = meter.receive(&ctx.stats, Instant::now());
    match decoder.decode(bytes, |piece| receiving.data(piece)) {
        Ok(progress) => Ok(progress.done),
        Err(e) => Err(other(e)),
    }
}

fn other(e: http1::HttpError) -> StreamError {
    StreamError::new(ErrorKind::Other, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &[&str]) -> Plan {
        let mut argv = vec![
            "bench",
            "--url",
            "http://h:1/e",
            "--streams",
            "1",
            "--duration",
            "1s",
        ];
        argv.extend_from_slice(extra);
        let args = crate::bench::BenchArgs::try_parse_from(&argv).unwrap();
        Plan::from_args(&args.client).unwrap()
    }

    #[test]
    fn resuming_requests_carry_the_last_event_id() {
        let p = plan(&["-H", "last-event-id: 0", "-d", "{}"]);
        let text = String::from_utf8(resuming_request(&p, Some(b"41")).unwrap()).unwrap();
        assert!(text.starts_with("POST /e HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nLast-Event-ID: 41\r\n"), "{text}");
        assert!(!text.contains("last-event-id: 0"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        assert_eq!(resuming_request(&p, None), None);
        assert_eq!(resuming_request(&p, Some(b"")), None);
        assert_eq!(resuming_request(&p, Some(b"a\x01b")), None);
    }
}

//! Answers served from the response cache: the stored bytes in the coding the client
//! accepts, with `Content-Length`, `Vary: Accept-Encoding`, `X-Cache: HIT` and, for JSON
//! pages, the `ETag` (and a 304 for a matching `If-None-Match`). Nothing is rendered or
//! compressed here; the compression layer leaves these responses alone ([`Precompressed`]).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};

use crate::{
    AppState,
    cache::Rendered,
    encoding::{Coding, negotiate},
    render,
};

/// Marks a response whose body is final as it is: the compression layer must not touch it.
#[derive(Debug, Clone, Copy)]
pub struct Precompressed;

pub static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
static VARY_AE: HeaderValue = HeaderValue::from_static("accept-encoding");
static NO_CACHE: HeaderValue = HeaderValue::from_static("private, no-cache");
static HIT: HeaderValue = HeaderValue::from_static("HIT");
static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// The stored answer `hit` (kept under `key`) for a request with headers `req`.
pub async fn reply(state: &AppState, key: &str, hit: &Arc<Rendered>, req: &HeaderMap) -> Response {
    // Room for all it will carry (these eight, the encoding or disposition, and the
    // RateLimit pair and request id the layers add): it never grows.
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert(header::VARY, VARY_AE.clone());
    headers.insert(X_CACHE.clone(), HIT.clone());
    headers.insert(header::CACHE_CONTROL, NO_CACHE.clone());
    // RFC 9211 and the answer's age: a hit, with the freshness it has left.
    let ttl = hit
        .fresh_until
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    let age = (jiff::Timestamp::now().as_millisecond() - hit.fetched_unix_ms).max(0) / 1000;
    // The String becomes the value's buffer (no second copy); no `format!` on a hit.
    let mut status = String::with_capacity(40);
    status.push_str("kore-gateway; hit; ttl=");
    status.push_str(itoa::Buffer::new().format(ttl));
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(status)) {
        headers.insert(CACHE_STATUS.clone(), v);
    }
    headers.insert(header::AGE, HeaderValue::from(age as u64));
    if let Some(etag) = &hit.etag {
        headers.insert(header::ETAG, etag.clone());
        if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
            && etag
                .to_str()
                .is_ok_and(|etag| render::if_none_match(inm, etag))
        {
            return finish(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
    }
    let wanted = negotiate(
        req.get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let (body, coding) = match hit.form(wanted) {
        Some(b) => (b.clone(), wanted),
        None => state.responses.encoded(key, hit, wanted).await,
    };
    headers.insert(header::CONTENT_TYPE, hit.content_type.clone());
    if coding != Coding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.token()),
        );
    }
    if let Some(d) = &hit.disposition {
        headers.insert(header::CONTENT_DISPOSITION, d.clone());
    }
    // No Content-Length made here: the router sets it from the body's exact length (before
    // it drops the body of a HEAD).
    finish(StatusCode::OK, headers, Body::from(body))
}

fn finish(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(Precompressed);
    resp
}

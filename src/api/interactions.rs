//! `GET /v1/interactions`: any range, every record, one request.
//!
//! JSON answers are paged by an opaque cursor and cached as rendered bytes; NDJSON and CSV
//! stream the whole range window by window, so memory stays bounded by the look-ahead.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Extension,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use crate::{
    AppState,
    api::{
        RequestId,
        auth::Caller,
        query::{Format, InteractionsQuery, RangeQuery, parse_interactions},
        range_fetch, stored, wants_refresh,
    },
    cache::{Rendered, Source, WindowOutcome},
    error::AppError,
    fetch::{Assessment, RangeFetch, assess},
    merge::merge_runs,
    plan::{PlanError, Window, plan},
    render::{self, CacheStatus, CursorError, MetaHead},
};

/// Windows fetched ahead of the one being streamed.
const STREAM_LOOKAHEAD: usize = 4;

/// Interaction records for a date range, merged from every upstream window.
#[utoipa::path(
    get,
    path = "/v1/interactions",
    tag = "interactions",
    params(crate::api::docs::InteractionsParams),
    responses(
        (status = 200, description = "Records of the range, oldest first", body = crate::api::docs::InteractionsResponse,
            headers(("X-Cache" = String, description = "HIT, MISS or PARTIAL"), ("ETag" = String), ("X-Request-Id" = String)),
            content_type = "application/json"),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)"),
        (status = 400, description = "Bad parameter", body = crate::api::docs::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key", body = crate::api::docs::Problem, content_type = "application/problem+json"),
        (status = 429, description = "This key's rate limit exceeded", body = crate::api::docs::Problem, content_type = "application/problem+json"),
        (status = 502, description = "Upstream failed after retries", body = crate::api::docs::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Upstream budget exhausted", body = crate::api::docs::Problem, content_type = "application/problem+json"),
        (status = 504, description = "Upstream timed out", body = crate::api::docs::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_interactions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let q = parse_interactions(raw.as_deref(), accept, state.settings.max_range_days)?;
    // A stored answer needs no plan, no fetch context: look it up first.
    let (key, offset) = match q.format {
        Format::Json => json_key(&q)?,
        Format::Ndjson | Format::Csv => (export_key(&q), 0),
    };
    if !(caller.admin && wants_refresh(&headers))
        && let Some(hit) = state.responses.get(&key)
    {
        state
            .counters
            .response_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(stored::reply(&state, &key, &hit, &headers).await);
    }
    let windows = plan_windows(&q.range)?;
    let range = range_fetch(
        &state,
        &caller,
        request_id,
        q.range.filters.clone(),
        &headers,
    );
    match q.format {
        Format::Json => json(&state, &q, &windows, &range, &headers, key, offset).await,
        Format::Ndjson | Format::Csv => streamed(&state, &q, windows, range, key).await,
    }
}

/// The response-cache key of a JSON page, and the record offset its cursor stands for.
///
/// # Errors
/// 400 for a cursor this gateway did not issue for this query.
fn json_key(q: &InteractionsQuery) -> Result<(String, usize), AppError> {
    let fingerprint = q.range.fingerprint();
    let offset = match &q.cursor {
        None => 0,
        Some(c) => render::decode_cursor(c, &fingerprint).map_err(|e| match e {
            CursorError::Malformed => {
                AppError::param("cursor", "the cursor is not one this gateway issued")
            }
            CursorError::OtherQuery => {
                AppError::param("cursor", "the cursor belongs to a different query")
            }
        })?,
    };
    Ok((format!("{fingerprint}|l={}|o={offset}", q.limit), offset))
}

/// The response-cache key of a whole CSV or NDJSON export.
fn export_key(q: &InteractionsQuery) -> String {
    let format = if q.format == Format::Csv {
        "csv"
    } else {
        "ndjson"
    };
    format!("{}|export={format}", q.range.fingerprint())
}

/// Plans the windows of a query, mapping planner refusals to 400s.
///
/// # Errors
/// 400 for an inverted range or an offset the vendor cannot express.
pub fn plan_windows(range: &RangeQuery) -> Result<Vec<Window>, AppError> {
    plan(range.from, range.to, &range.tz).map_err(|e| match e {
        PlanError::Inverted => AppError::param("from", "`from` is after `to`"),
        other => AppError::param("tz", other.to_string()),
    })
}

async fn json(
    state: &AppState,
    q: &InteractionsQuery,
    windows: &[Window],
    range: &RangeFetch,
    headers: &HeaderMap,
    key: String,
    offset: usize,
) -> Result<Response, AppError> {
    let fingerprint = q.range.fingerprint();
    let outcomes = range.all(windows).await?;
    let records = merge_runs(outcomes.iter().map(|o| o.data.records.as_slice()));
    let total = records.len();
    if offset > total {
        return Err(AppError::param(
            "cursor",
            "the cursor points past the end of the data (it changed since); start again",
        ));
    }
    let end = (offset + q.limit).min(total);
    let page = &records[offset..end];
    let Assessment {
        complete,
        stale,
        warnings,
        cache: status,
        calls,
    } = assess(&outcomes);
    let meta = MetaHead {
        from: q.range.local_rfc3339(q.range.from),
        to: q.range.local_rfc3339(q.range.to),
        tz: &q.range.tz_name,
        total,
        returned: page.len(),
        next_cursor: (end < total).then(|| render::encode_cursor(end, &fingerprint)),
        complete,
        stale,
        warnings: &warnings,
        windows: windows.len(),
    };
    let head = render::json_head(page, &meta);
    let etag = render::etag(&head);
    if complete && !stale {
        let fresh_until = outcomes
            .iter()
            .map(|o| o.data.fresh_until())
            .min()
            .unwrap_or_else(Instant::now);
        // A hit's body is fixed (0 calls, "HIT"), so it is stored whole and its compressed
        // forms can be made once; the ETag stays the head's, the same for hit and miss.
        let hit_tail = render::json_tail(0, CacheStatus::Hit);
        let mut body = BytesMut::with_capacity(head.len() + hit_tail.len());
        body.extend_from_slice(&head);
        body.extend_from_slice(&hit_tail);
        state.responses.insert(
            key,
            Arc::new(Rendered::new(
                body.freeze(),
                HeaderValue::from_static("application/json"),
                HeaderValue::from_str(&etag).ok(),
                fresh_until,
            )),
        );
    }
    Ok(json_reply(
        &head,
        &etag,
        render::json_tail(calls, status),
        status,
        headers,
    ))
}

fn json_reply(
    head: &Bytes,
    etag: &str,
    tail: Bytes,
    status: CacheStatus,
    req: &HeaderMap,
) -> Response {
    let etag_value =
        HeaderValue::from_str(etag).unwrap_or_else(|_| HeaderValue::from_static("W/\"0\""));
    let common = [
        (header::ETAG, etag_value),
        (
            header::HeaderName::from_static("x-cache"),
            HeaderValue::from_static(status.as_str()),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        ),
        // The body may be compressed on the way out: caches must key on Accept-Encoding,
        // on the 304 too (RFC 9110 §15.4.5).
        (header::VARY, HeaderValue::from_static("accept-encoding")),
    ];
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && render::if_none_match(inm, etag)
    {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let mut body = BytesMut::with_capacity(head.len() + tail.len());
    body.extend_from_slice(head);
    body.extend_from_slice(&tail);
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.freeze(),
    )
        .into_response()
}

/// NDJSON or CSV of the whole range, one window at a time. The first window is fetched
/// before the status line, so an early failure is a proper error status; a later failure,
/// or a window whose count did not check out, aborts the body, so a client never mistakes a
/// cut-short stream for a whole one.
///
/// A whole export of complete, fresh windows is also kept, up to
/// [`ResponseCache::max_entry_bytes`](crate::cache::ResponseCache::max_entry_bytes), so a
/// repeat is stored bytes (no merge, no render, no compression): see [`Export`].
async fn streamed(
    state: &AppState,
    q: &InteractionsQuery,
    windows: Vec<Window>,
    range: RangeFetch,
    key: String,
) -> Result<Response, AppError> {
    let format = q.format;
    let mut rest = range.stream(windows, STREAM_LOOKAHEAD);
    let first = match rest.next().await {
        Some(r) => r?,
        None => return Err(AppError::Internal("a range without windows".into())),
    };
    if !first.data.complete() {
        return Err(AppError::Upstream(first.data.warnings.join("; ")));
    }
    let mut seen: HashSet<(Box<str>, Option<Box<str>>)> = HashSet::new();
    let header_chunk = match format {
        Format::Csv => Some(render::csv_header()),
        _ => None,
    };
    let export = Arc::new(std::sync::Mutex::new(Some(Export {
        body: BytesMut::new(),
        fresh_until: None,
        cap: state.responses.max_entry_bytes(),
    })));
    if let Some(h) = &header_chunk {
        Export::add(&export, h, None);
    }
    let tee = Arc::clone(&export);
    let chunks = stream::iter(std::iter::once(Ok(first))).chain(rest).map(move |r| match r {
        Ok(o) if o.data.complete() => {
            let bytes = render_window(&o, format, &mut seen);
            let fresh = (o.source != Source::Stale).then(|| o.data.fresh_until());
            Export::add(&tee, &bytes, Some(fresh));
            Ok(bytes)
        }
        Ok(o) => {
            tracing::warn!(warnings = ?o.data.warnings, "aborting a stream: a window's count did not check out");
            Err(std::io::Error::other("incomplete window"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "aborting a stream: a window failed");
            Err(std::io::Error::other("upstream failed"))
        }
    });
    let (content_type, disposition) = match format {
        Format::Csv => (
            "text/csv; charset=utf-8",
            Some(format!(
                "attachment; filename=\"interactions-{}-{}.csv\"",
                q.range.from.as_second(),
                q.range.to.as_second()
            )),
        ),
        _ => ("application/x-ndjson", None),
    };
    let disposition = disposition.and_then(|d| HeaderValue::from_str(&d).ok());
    // After the last chunk, the whole export (if it stayed complete, fresh and small
    // enough) becomes a stored answer.
    let keep = {
        let (state, disposition) = (state.clone(), disposition.clone());
        stream::once(async move {
            let whole = export.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(Export {
                body,
                fresh_until: Some(fresh_until),
                ..
            }) = whole
            {
                let mut r = Rendered::new(
                    body.freeze(),
                    HeaderValue::from_static(content_type),
                    None,
                    fresh_until,
                );
                r.disposition = disposition;
                state.responses.insert(key, Arc::new(r));
            }
        })
        .filter_map(|()| std::future::ready(None::<Result<Bytes, std::io::Error>>))
    };
    let body = Body::from_stream(stream::iter(header_chunk.map(Ok)).chain(chunks).chain(keep));
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        body,
    )
        .into_response();
    if let Some(d) = disposition {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, d);
    }
    Ok(resp)
}

/// A streamed export being copied aside, to be stored whole once it ends.
struct Export {
    body: BytesMut,
    /// When the first window to expire does (`None` before the first window).
    fresh_until: Option<Instant>,
    /// Beyond this size the copy is dropped: the export is not stored.
    cap: usize,
}

impl Export {
    /// Appends a chunk. `fresh` is the chunk's window's freshness, or `Some(None)` for a
    /// stale window, which makes the export unfit to store.
    fn add(this: &std::sync::Mutex<Option<Export>>, bytes: &Bytes, fresh: Option<Option<Instant>>) {
        let mut guard = this.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = guard.as_mut() else {
            return;
        };
        let fresh_until = match fresh {
            None => e.fresh_until,
            Some(None) => None,
            Some(Some(t)) => Some(e.fresh_until.map_or(t, |f| f.min(t))),
        };
        if matches!(fresh, Some(None)) || e.body.len() + bytes.len() > e.cap {
            *guard = None;
            return;
        }
        e.fresh_until = fresh_until;
        e.body.extend_from_slice(bytes);
    }
}

fn render_window(
    o: &WindowOutcome,
    format: Format,
    seen: &mut HashSet<(Box<str>, Option<Box<str>>)>,
) -> Bytes {
    let fresh = o.data.records.iter().filter(|r| match &r.session_id {
        Some(s) => seen.insert((s.clone(), r.conversation_id.clone())),
        None => true,
    });
    match format {
        Format::Csv => render::csv_rows(fresh),
        _ => render::ndjson_lines(fresh),
    }
}

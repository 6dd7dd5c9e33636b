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
        range_fetch,
    },
    cache::{Rendered, WindowOutcome},
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
        (status = 200, description = "Records of the range, oldest first: one page as JSON, or the whole range streamed as NDJSON (one record per line, unchanged) or CSV (formula-looking text cells defused unless CSV_FORMULA_ESCAPE=false), by `format` or `Accept`",
            headers(("X-Cache" = String, description = "HIT, MISS or PARTIAL (JSON)"), ("ETag" = String, description = "JSON only"), ("X-Request-Id" = String)),
            content(
                (crate::api::docs::InteractionsResponse = "application/json"),
                (String = "application/x-ndjson", example = json!("{\"sessionId\":\"66f4f3aa205c5afb97d3xxxx\",\"channel\":\"voice\",\"sessionStartTime\":\"2024-09-26T11:09:54\"}\n")),
                (String = "text/csv", example = json!("sessionId,conversationId,channel,sessionStartTime\n66f4f3aa205c5afb97d3xxxx,,voice,2024-09-26T11:09:54\n")),
            )),
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
    let windows = plan_windows(&q.range)?;
    let range = range_fetch(
        &state,
        &caller,
        request_id,
        q.range.filters.clone(),
        &headers,
    );
    match q.format {
        Format::Json => json(&state, &q, &windows, &range, &headers).await,
        Format::Ndjson | Format::Csv => {
            streamed(&q, windows, range, state.settings.csv_formula_escape).await
        }
    }
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
) -> Result<Response, AppError> {
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
    let key = format!("{fingerprint}|l={}|o={offset}", q.limit);
    if !range.refresh
        && let Some(hit) = state.responses.get(&key)
    {
        state
            .counters
            .response_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(json_reply(
            &hit.head,
            &hit.etag,
            render::json_tail(0, CacheStatus::Hit),
            CacheStatus::Hit,
            headers,
        ));
    }

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
        state.responses.insert(
            key,
            Arc::new(Rendered {
                head: head.clone(),
                etag: etag.clone(),
                fresh_until,
            }),
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
async fn streamed(
    q: &InteractionsQuery,
    windows: Vec<Window>,
    range: RangeFetch,
    csv_formula_escape: bool,
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
        Format::Csv => Some(Ok(render::csv_header())),
        _ => None,
    };
    let chunks = stream::iter(std::iter::once(Ok(first))).chain(rest).map(move |r| match r {
        Ok(o) if o.data.complete() => Ok(render_window(&o, format, csv_formula_escape, &mut seen)),
        Ok(o) => {
            tracing::warn!(warnings = ?o.data.warnings, "aborting a stream: a window's count did not check out");
            Err(std::io::Error::other("incomplete window"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "aborting a stream: a window failed");
            Err(std::io::Error::other("upstream failed"))
        }
    });
    let body = Body::from_stream(stream::iter(header_chunk).chain(chunks));
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
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    if let Some(d) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, d);
    }
    Ok(resp)
}

fn render_window(
    o: &WindowOutcome,
    format: Format,
    csv_formula_escape: bool,
    seen: &mut HashSet<(Box<str>, Option<Box<str>>)>,
) -> Bytes {
    let fresh = o.data.records.iter().filter(|r| match &r.session_id {
        Some(s) => seen.insert((s.clone(), r.conversation_id.clone())),
        None => true,
    });
    match format {
        Format::Csv => render::csv_rows(fresh, csv_formula_escape),
        _ => render::ndjson_lines(fresh),
    }
}

//! `GET /v1/interactions`: any range, every record, one request.
//!
//! JSON answers are paged by a keyset cursor and cached as rendered bytes; NDJSON and CSV
//! carry the whole range, with headers that say before the first byte whether it is whole
//! (`X-Complete`) and fresh (`X-Stale`), rendered window by window.

use std::{collections::HashSet, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{
    AppState,
    account::Account,
    api::{
        DataRequest,
        query::{
            AccountParam, CsvEscape, CsvEscapeParam, Format, INTERACTIONS_FORMATS,
            InteractionsQuery, JsonFormatParam, PageParams, PreferParam, RangeParams, RangeQuery,
            parse_interactions,
        },
        range_fetch, stamp_cache_headers, stored, with_path_format,
    },
    cache::{KeyEncoder, Rendered, WindowOutcome, hex},
    error::{AppError, problems},
    fetch::RangeFetch,
    merge::{Position, merge_runs, resume_after},
    outcome::{Assessment, CacheStatus, assess},
    plan::{PlanError, Window, plan},
    render::{self, CursorError, MetaHead},
    spool::Spool,
};

/// Interaction records for a date range, merged from every upstream window, as JSON pages.
///
/// Any range up to MAX_RANGE_DAYS, every record, one page per call (follow
/// `meta.next_cursor`). The whole range as NDJSON or CSV is `/v1/interactions.ndjson` and
/// `/v1/interactions.csv` (this path also answers them for `format=ndjson|csv` or `Accept`).
/// With `Prefer: respond-async`, a range not already cached answers 202 with a job instead.
#[utoipa::path(
    get,
    path = "/v1/interactions",
    tag = "interactions",
    params(RangeParams, AccountParam, PageParams, JsonFormatParam, PreferParam),
    responses(
        (status = 200, description = "One page of the range's records, oldest first, with `meta` saying whether the range is whole (`complete`), fresh (`stale`) and where the next page starts (`next_cursor`).",
            headers(("X-Cache" = String, description = "HIT, MISS or PARTIAL"), ("ETag" = String), ("X-Request-Id" = String),
                ("Cache-Status" = String, description = "RFC 9211: `kore-gateway; hit; ttl=N` (negative once stale) or `kore-gateway; fwd=miss; stored` (`collapsed`, `fwd=request`), with a `detail` when partial or stale"),
                ("Age" = u64, description = "Seconds since the oldest data in the answer was fetched"),
                ("RateLimit-Policy" = String, description = "The key's limit (`\"key\"`, when GATEWAY_KEY_RATE_LIMIT is set) and the shared upstream budget (`\"upstream\"`), draft-ietf-httpapi-ratelimit-headers: `\"upstream\";q=60;w=60`"),
                ("RateLimit" = String, description = "What is left of each policy now and the seconds until a unit comes back: `\"upstream\";r=42;t=17`")),
            body = render::InteractionsResponse, content_type = "application/json"),
        (status = 202, description = "`Prefer: respond-async` and the range is not cached: a job fetches it. Poll `Location`; when done its `result` answers this request from the cache.", body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"), ("Retry-After" = u64, description = "Seconds before looking again"),
                ("Preference-Applied" = String, description = "`respond-async`"))),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)"),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden, problems::NotAcceptable,
        problems::RateLimited,
        problems::UpstreamFailed, problems::BudgetExhausted, problems::UpstreamTimeout,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_interactions(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, AppError> {
    let r = DataRequest::new(req)?;
    let (headers, raw, refresh) = (&r.headers, r.query(), r.refresh);
    // What `Accept` chooses among this route's formats (`None`: nothing it accepts, which
    // only a `format` parameter can make a 200).
    let chosen = r.accept.choose(&INTERACTIONS_FORMATS);
    // A query string answered before maps to its response-cache key without being parsed
    // again: what a stored hit needs is the key, and the key is a pure function of the query
    // string and `Accept` (only queries that parsed are remembered).
    if !refresh
        && let Some((key, format, accounts)) = state.query_keys.get(ROUTE, raw, chosen)
        && r.may_read_all(&state, &accounts)
        && let Some(hit) = state.responses.get(&key)
    {
        let mut resp = reply_stored(&state, &key, &hit, headers, format).await;
        tag(&mut resp, accounts.first().copied().unwrap_or(0));
        return Ok(resp);
    }
    let q = parse_interactions(raw, r.accept, state.settings.max_range_days)?;
    let account = state
        .accounts
        .resolve_one(&q.range.accounts, &r.caller.name, r.caller.admin)?;
    let escape = CsvEscape::resolve(q.csv_escape, state.settings.csv_formula_escape);
    // A stored answer needs no plan, no fetch context: look it up first.
    let (key, after) = match q.format {
        Format::Json => json_key(&account, &q)?,
        Format::Ndjson | Format::Csv => (export_key(account.ns.digest(), &q, escape), None),
    };
    state.query_keys.remember(
        ROUTE,
        raw,
        chosen,
        &key,
        q.format,
        Arc::from([account.index]),
    );
    if !refresh && let Some(hit) = state.responses.get(&key) {
        let mut resp = reply_stored(&state, &key, &hit, headers, q.format).await;
        tag(&mut resp, account.index);
        return Ok(resp);
    }
    let windows = plan_windows(&q.range)?;
    let request_id = r.request_id();
    let range = range_fetch(
        &state,
        &account,
        &r.caller,
        request_id,
        q.range.filters.clone(),
        headers,
    );
    // `Prefer: respond-async` on a range not already cached: 202 and a job.
    if let Some(accepted) = crate::api::jobs::respond_async(
        &state,
        &account,
        &r.caller,
        headers,
        "/v1/interactions",
        raw,
        &windows,
        &range,
    )
    .await?
    {
        return Ok(accepted);
    }
    // A range the budget cannot serve within KORE_MAX_WAIT is told so before it spends.
    crate::api::jobs::check_wait(&r.caller, &windows, &range).await?;
    // Boxed: the miss's futures are large, and unboxed they would make every hit's future
    // (moved and copied on each poll's way) as large.
    let mut resp = match q.format {
        Format::Json => {
            Box::pin(json(
                &state, &account, &q, &windows, &range, headers, key, after,
            ))
            .await
        }
        Format::Ndjson | Format::Csv => {
            Box::pin(streamed(&state, &q, escape, windows, range, key)).await
        }
    }?;
    tag(&mut resp, account.index);
    Ok(resp)
}

/// Says which account's budget the answer drew on (its `RateLimit` fields report that one).
fn tag(resp: &mut Response, account: usize) {
    resp.extensions_mut()
        .insert(crate::ratelimit_headers::AccountUsed(account));
}

/// Interaction records for a date range, the whole range as NDJSON.
///
/// One record per line, exactly as the upstream sent it, oldest first; the same records as
/// the JSON pages of `/v1/interactions` with the same parameters (it is that route with
/// `format=ndjson`). With `Prefer: respond-async`, a range not already cached answers 202
/// with a job instead.
#[utoipa::path(
    get,
    path = "/v1/interactions.ndjson",
    tag = "interactions",
    params(RangeParams, AccountParam, PreferParam),
    responses(
        answers::Ndjson,
        (status = 202, description = "`Prefer: respond-async` and the range is not cached: a job fetches it. Poll `Location`; when done its `result` answers this request from the cache.", body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"), ("Retry-After" = u64, description = "Seconds before looking again"),
                ("Preference-Applied" = String, description = "`respond-async`"))),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden, problems::RateLimited,
        problems::UpstreamFailed, problems::BudgetExhausted, problems::UpstreamTimeout,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_interactions_ndjson(
    state: State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, AppError> {
    get_interactions(state, with_path_format(req, Format::Ndjson)?).await
}

/// Interaction records for a date range, the whole range as CSV.
///
/// One row per record, oldest first, nested fields flattened to dotted columns; the same
/// records as `/v1/interactions` with the same parameters (it is that route with
/// `format=csv`). With `Prefer: respond-async`, a range not already cached answers 202 with
/// a job instead.
#[utoipa::path(
    get,
    path = "/v1/interactions.csv",
    tag = "interactions",
    params(RangeParams, AccountParam, CsvEscapeParam, PreferParam),
    responses(
        answers::Csv,
        (status = 202, description = "`Prefer: respond-async` and the range is not cached: a job fetches it. Poll `Location`; when done its `result` answers this request from the cache.", body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"), ("Retry-After" = u64, description = "Seconds before looking again"),
                ("Preference-Applied" = String, description = "`respond-async`"))),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden, problems::RateLimited,
        problems::UpstreamFailed, problems::BudgetExhausted, problems::UpstreamTimeout,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_interactions_csv(
    state: State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, AppError> {
    get_interactions(state, with_path_format(req, Format::Csv)?).await
}

/// A stored answer of this route, counted as a response hit.
async fn reply_stored(
    state: &AppState,
    key: &str,
    hit: &Arc<Rendered>,
    headers: &HeaderMap,
    format: Format,
) -> Response {
    state
        .counters
        .response_hits
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut resp = stored::reply(state, key, hit, headers).await;
    if format != Format::Json {
        // Only whole, fresh exports are stored.
        let h = resp.headers_mut();
        h.insert(X_COMPLETE.clone(), HeaderValue::from_static("true"));
        h.insert(X_STALE.clone(), HeaderValue::from_static("false"));
    }
    resp
}

/// This route, as the query-key memo tells routes apart.
const ROUTE: &str = "/v1/interactions";

static X_COMPLETE: header::HeaderName = header::HeaderName::from_static("x-complete");
static X_STALE: header::HeaderName = header::HeaderName::from_static("x-stale");

/// The response-cache key of a JSON page — the query's digest (whose records included), the
/// page size and the place it resumes after, each length-prefixed — and that place, from
/// its cursor.
///
/// # Errors
/// 400 for a cursor this gateway did not issue for this query on this account.
fn json_key(
    account: &Account,
    q: &InteractionsQuery,
) -> Result<(String, Option<Position>), AppError> {
    let binding = q.range.key("interactions", account.ns.digest()).digest();
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(
            render::decode_cursor(c, &binding, &account.cursor_key).map_err(|e| match e {
                CursorError::Malformed => {
                    AppError::param("cursor", "the cursor is not one this gateway issued")
                }
                CursorError::OtherQuery => {
                    AppError::param("cursor", "the cursor belongs to a different query")
                }
            })?,
        ),
    };
    let mut e = KeyEncoder::default();
    e.text("page");
    e.bytes(&binding);
    e.int(q.limit as i64);
    match &after {
        None => e.int(-1),
        Some(p) => {
            e.int(p.start);
            e.text(&p.session);
            e.text(&p.conversation);
            e.bytes(&p.tie);
        }
    }
    Ok((hex(&e.finish()), after))
}

/// The response-cache key of a whole CSV or NDJSON export of the account(s) whose
/// namespace digest is `ns`: the query's digest, the format and, for CSV, how its cells are
/// escaped (two escapings never share a stored answer).
fn export_key(ns: &[u8; 32], q: &InteractionsQuery, escape: CsvEscape) -> String {
    let mut e = KeyEncoder::default();
    e.text("export");
    e.bytes(&q.range.key("interactions", ns).digest());
    e.text(q.format.as_str());
    if q.format == Format::Csv {
        e.text(escape.as_str());
    }
    hex(&e.finish())
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

#[allow(clippy::too_many_arguments)]
async fn json(
    state: &AppState,
    account: &Account,
    q: &InteractionsQuery,
    windows: &[Window],
    range: &RangeFetch,
    headers: &HeaderMap,
    key: String,
    after: Option<Position>,
) -> Result<Response, AppError> {
    let binding = q.range.key("interactions", account.ns.digest()).digest();
    let outcomes = range.all(windows).await?;
    let mut records = merge_runs(outcomes.iter().map(|o| o.data.records.as_slice()));
    // The record filters: the windows (and their cache) hold every record, the answer, its
    // total and its cursors only those kept.
    if !q.range.select.is_empty() {
        records.retain(|r| q.range.select.matches(r));
    }
    let total = records.len();
    // Resume after the last record the previous page returned, wherever it now stands:
    // records that appeared or vanished since never shift the rest.
    let offset = after.as_ref().map_or(0, |p| resume_after(&records, p));
    let end = offset.saturating_add(q.limit).min(total);
    let page = &records[offset..end];
    let verdict = assess(&outcomes);
    let Assessment {
        complete,
        stale,
        ref warnings,
        cache: status,
        calls,
        ..
    } = verdict;
    let meta = MetaHead {
        from: q.range.local_rfc3339(q.range.from),
        to: q.range.local_rfc3339(q.range.to),
        tz: &q.range.tz_name,
        total,
        returned: page.len(),
        next_cursor: match page.last() {
            Some(last) if end < total => Some(render::encode_cursor(
                &last.position(),
                &binding,
                &account.cursor_key,
            )),
            _ => None,
        },
        complete,
        stale,
        warnings,
        windows: windows.len(),
    };
    let head = render::json_head(page, &meta);
    let etag = render::etag(&binding, &head);
    let stored = complete && !stale;
    // One copy of the page at a time: the stored body is the head with the hit's tail
    // appended in place (json_head leaves room for it), and this answer's head is then a
    // slice of that same buffer.
    let head = if stored {
        // A hit's body is fixed (0 calls, "HIT"), so it is stored whole and its compressed
        // forms can be made once; the ETag stays the head's, the same for hit and miss.
        let head_len = head.len();
        let hit_tail = render::json_tail(0, CacheStatus::Hit);
        let mut body = head
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        body.extend_from_slice(&hit_tail);
        let body = body.freeze();
        let mut r = Rendered::new(
            body.clone(),
            HeaderValue::from_static("application/json"),
            HeaderValue::from_str(&etag).ok(),
            fresh_until(&outcomes),
        );
        r.fetched_unix_ms = oldest_fetch(&outcomes);
        r.epoch = oldest_epoch(&outcomes);
        state.responses.insert(key, Arc::new(r));
        body.slice(..head_len)
    } else {
        head
    };
    let mut resp = json_reply(
        &head,
        &etag,
        render::json_tail(calls, status),
        status,
        headers,
    );
    stamp_cache_headers(
        &mut resp,
        &verdict.cache_status(range.refresh(), stored),
        verdict.age,
    );
    Ok(resp)
}

/// When the first of these windows expires.
fn fresh_until(outcomes: &[WindowOutcome]) -> Instant {
    outcomes
        .iter()
        .map(|o| o.data.fresh_until())
        .min()
        .unwrap_or_else(Instant::now)
}

/// The oldest purge epoch of these windows (a stored answer is no younger than its
/// oldest window).
pub fn oldest_epoch(outcomes: &[WindowOutcome]) -> u64 {
    outcomes.iter().map(|o| o.data.epoch).min().unwrap_or(0)
}

/// Wall-clock fetch time of the oldest of these windows (Unix ms).
fn oldest_fetch(outcomes: &[WindowOutcome]) -> i64 {
    outcomes
        .iter()
        .map(|o| o.data.fetched_unix_ms)
        .min()
        .unwrap_or(0)
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
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(HeadTail {
            head: Some(head.clone()),
            tail: Some(tail),
        }),
    )
        .into_response()
}

/// A body sent as two chunks, head then tail, without copying them into one: its exact
/// length is known, so it still goes out with `Content-Length` when not compressed.
struct HeadTail {
    head: Option<Bytes>,
    tail: Option<Bytes>,
}

impl http_body::Body for HeadTail {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.head.take().or_else(|| this.tail.take());
        std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
        http_body::SizeHint::with_exact(len(&self.head) + len(&self.tail))
    }
}

/// NDJSON or CSV of the whole range. Every window is resolved (from the cache or the
/// upstream) before the status line, so the headers can say whether the answer is whole:
/// `X-Complete: false` when any window's count did not check out and `X-Stale: true` when
/// any window is an expired copy, with the reasons in `X-Warning` headers, exactly as
/// `meta` says in JSON.
///
/// The windows are resolved in order, a few at a time ([`RangeFetch::in_order`]), and each
/// is rendered as soon as it is resolved and its records let go; the rendered bytes wait in a
/// [`Spool`] (memory up to [`ResponseCache::max_entry_bytes`](crate::cache::ResponseCache::max_entry_bytes),
/// then an unnamed temporary file), so what one export holds in memory is bounded whatever
/// its range. An export of complete, fresh windows that stayed in memory is also stored
/// whole, so a repeat is stored bytes (no merge, no render, no compression).
async fn streamed(
    state: &AppState,
    q: &InteractionsQuery,
    escape: CsvEscape,
    windows: Vec<Window>,
    range: RangeFetch,
    key: String,
) -> Result<Response, AppError> {
    let format = q.format;
    let ahead = windows_ahead(state.settings.budget.concurrency);
    let memory_cap = state.responses.max_entry_bytes().max(MIN_SPOOL_MEMORY);
    let dir = state
        .settings
        .disk
        .as_ref()
        .map_or_else(std::env::temp_dir, |d| d.dir.clone());
    let mut spool = Spool::new(memory_cap, dir);
    if format == Format::Csv {
        spool.push(render::csv_header()).await;
    }
    let mut seen: HashSet<(Arc<str>, Option<Arc<str>>)> = HashSet::new();
    // What judging the answer needs of each window, without its records.
    let mut outcomes = Vec::with_capacity(windows.len());
    let mut resolved = std::pin::pin!(range.in_order(windows, ahead));
    while let Some(o) = resolved.next().await {
        let o = o?;
        spool
            .push(render_window(
                &o,
                format,
                escape,
                &q.range.select,
                &mut seen,
            ))
            .await;
        outcomes.push(WindowOutcome {
            data: Arc::new(o.data.without_records()),
            ..o
        });
    }
    drop(seen);
    if spool.spilled_bytes() > 0 {
        metrics::counter!("gateway_export_spilled_bytes_total").increment(spool.spilled_bytes());
    }
    let verdict = assess(&outcomes);
    let storable = verdict.complete && !verdict.stale;
    let (fresh_until, fetched_unix_ms) = (fresh_until(&outcomes), oldest_fetch(&outcomes));
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
    let whole = (storable && spool.len() <= state.responses.max_entry_bytes() as u64)
        .then(|| spool.whole())
        .flatten();
    let body = match whole {
        Some(whole) => {
            // Kept whole: a repeat is these bytes.
            let mut r = Rendered::new(
                whole.clone(),
                HeaderValue::from_static(content_type),
                None,
                fresh_until,
            );
            r.disposition = disposition.clone();
            r.fetched_unix_ms = fetched_unix_ms;
            r.epoch = oldest_epoch(&outcomes);
            state.responses.insert(key, Arc::new(r));
            Body::from(whole)
        }
        None => Body::from_stream(spool.into_stream()),
    };
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        body,
    )
        .into_response();
    stamp_cache_headers(
        &mut resp,
        &verdict.cache_status(range.refresh(), storable),
        verdict.age,
    );
    let h = resp.headers_mut();
    if let Some(d) = disposition {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    h.insert(
        header::HeaderName::from_static("x-cache"),
        HeaderValue::from_static(verdict.cache.as_str()),
    );
    h.insert(
        X_COMPLETE.clone(),
        HeaderValue::from_static(if verdict.complete { "true" } else { "false" }),
    );
    h.insert(
        X_STALE.clone(),
        HeaderValue::from_static(if verdict.stale { "true" } else { "false" }),
    );
    for w in verdict.warnings.iter().take(MAX_WARNING_HEADERS) {
        if let Ok(v) = HeaderValue::from_str(&ascii_header_text(w)) {
            h.append(header::HeaderName::from_static("x-warning"), v);
        }
    }
    Ok(resp)
}

/// Windows an export resolves at once: enough to keep `concurrency` upstream calls busy (a
/// window that needs the upstream takes several calls: its pages, then its parts), few
/// enough that the records held meanwhile stay a handful of windows'.
fn windows_ahead(concurrency: u32) -> usize {
    usize::try_from(concurrency.div_ceil(8).clamp(2, 8)).unwrap_or(2)
}

/// Least memory an export's spool may use before it writes to a file (so a gateway with a
/// tiny or no response cache still answers small exports without touching the disk).
const MIN_SPOOL_MEMORY: usize = 256 * 1024;

/// Most `X-Warning` headers on a streamed answer (`X-Complete`/`X-Stale` say the rest).
const MAX_WARNING_HEADERS: usize = 20;

/// `text` as a header value: printable ASCII, anything else replaced, at most 512 bytes.
fn ascii_header_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}

/// The records of one window not already sent by an earlier one and kept by the record
/// filters, as NDJSON lines or CSV rows.
fn render_window(
    o: &WindowOutcome,
    format: Format,
    escape: CsvEscape,
    select: &crate::summary::RecordFilter,
    seen: &mut HashSet<(Arc<str>, Option<Arc<str>>)>,
) -> Bytes {
    let fresh = o
        .data
        .records
        .iter()
        .filter(|r| match &r.session_id {
            Some(s) => seen.insert((s.clone(), r.conversation_id.clone())),
            None => true,
        })
        .filter(|r| select.matches(r));
    match format {
        Format::Csv => render::csv_rows(fresh, escape.formula()),
        _ => render::ndjson_lines(fresh),
    }
}

/// The 200 answers of the export operations as the OpenAPI document tells them: one
/// representation each, with the headers that say, before the first byte, whether the
/// export is whole and fresh.
pub mod answers {
    use std::collections::BTreeMap;

    use utoipa::{
        IntoResponses, PartialSchema,
        openapi::{
            ContentBuilder, Header, HeaderBuilder, KnownFormat, ObjectBuilder, RefOr,
            ResponseBuilder, SchemaFormat, Type, response::Response,
        },
    };

    /// `/v1/interactions.ndjson`.
    pub struct Ndjson;

    impl IntoResponses for Ndjson {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            ok(export(
                "The whole range, one record per line exactly as the upstream sent it, oldest \
first. The gateway sends `application/x-ndjson`; `application/octet-stream` is listed too \
because generators that know no NDJSON (openapi-python-client) then hand the body over as \
bytes rather than dropping it.",
                &[
                    (
                        "application/x-ndjson",
                        Some(
                            "{\"sessionId\":\"66f4f3aa205c5afb97d3xxxx\",\"channel\":\"voice\",\"sessionStartTime\":\"2024-09-26T11:09:54\"}\n",
                        ),
                    ),
                    ("application/octet-stream", None),
                ],
            ))
        }
    }

    /// `/v1/interactions.csv`.
    pub struct Csv;

    impl IntoResponses for Csv {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            ok(export(
                "The whole range, one row per record, oldest first; nested fields are dotted \
columns, and text cells a spreadsheet would run as a formula are defused unless \
CSV_FORMULA_ESCAPE=false. Sent as an attachment.",
                &[(
                    "text/csv",
                    Some(
                        "sessionId,conversationId,channel,sessionStartTime\n66f4f3aa205c5afb97d3xxxx,,voice,2024-09-26T11:09:54\n",
                    ),
                )],
            )
            .header(
                "Content-Disposition",
                header("`attachment; filename=\"interactions-<from>-<to>.csv\"`"),
            ))
        }
    }

    /// A text header with its description.
    fn header(description: &str) -> Header {
        HeaderBuilder::new()
            .schema(String::schema())
            .description(Some(description))
            .build()
    }

    /// A 200 of an export: `description`, the media types with their examples, and the
    /// headers every export carries.
    fn export(description: &str, media: &[(&str, Option<&str>)]) -> ResponseBuilder {
        let mut response = ResponseBuilder::new()
            .description(description)
            .header("X-Cache", header("HIT, MISS or PARTIAL"))
            .header("X-Request-Id", header("This request's id, taken from the request or made"))
            .header(
                "X-Complete",
                header("`true` when every window's count checked out, else `false`"),
            )
            .header("X-Stale", header("`true` when a window is an expired copy"))
            .header(
                "X-Warning",
                header("One header per reason the answer is not whole or fresh"),
            )
            .header(
                "Cache-Status",
                header("RFC 9211, as on `/v1/interactions`"),
            )
            .header(
                "Age",
                HeaderBuilder::new()
                    .schema(u64::schema())
                    .description(Some(
                        "Seconds since the oldest data in the answer was fetched",
                    ))
                    .build(),
            )
            .header(
                "RateLimit-Policy",
                header("The key's limit and the shared upstream budget (draft-ietf-httpapi-ratelimit-headers)"),
            )
            .header(
                "RateLimit",
                header("What is left of each policy now, and the seconds until a unit comes back"),
            );
        for (media_type, example) in media {
            // Bytes as they come: a string, binary where no example shows its text.
            let mut schema = ObjectBuilder::new().schema_type(Type::String);
            if example.is_none() {
                schema = schema.format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)));
            }
            response = response.content(
                *media_type,
                ContentBuilder::new()
                    .schema(Some(schema))
                    .example(example.map(serde_json::Value::from))
                    .build(),
            );
        }
        response
    }

    /// The responses map of one 200.
    fn ok(response: ResponseBuilder) -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([("200".to_owned(), response.build().into())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::accept::Acceptable;

    fn q(query: &str) -> InteractionsQuery {
        parse_interactions(Some(query), Acceptable::default(), 92).unwrap()
    }

    #[test]
    fn csv_escapings_never_share_a_stored_export() {
        let csv = q("from=2024-09-01&to=2024-09-02&format=csv");
        assert_ne!(
            export_key(&[0; 32], &csv, CsvEscape::Formula),
            export_key(&[0; 32], &csv, CsvEscape::None)
        );
        let nd = q("from=2024-09-01&to=2024-09-02&format=ndjson");
        assert_eq!(
            export_key(&[0; 32], &nd, CsvEscape::Formula),
            export_key(&[0; 32], &nd, CsvEscape::None),
            "NDJSON has no cells to escape"
        );
        assert_ne!(
            export_key(&[0; 32], &csv, CsvEscape::Formula),
            export_key(&[0; 32], &nd, CsvEscape::Formula)
        );
        let filtered = q("from=2024-09-01&to=2024-09-02&format=csv&agent=u-1");
        assert_ne!(
            export_key(&[0; 32], &csv, CsvEscape::Formula),
            export_key(&[0; 32], &filtered, CsvEscape::Formula)
        );
    }
}

//! `GET /v1/interactions/summary`: counts and durations per group, for dashboards that
//! would otherwise download every record to count it.
//!
//! The same pipeline as `/v1/interactions` up to the merge — same parameters, same windows,
//! same window cache (a range already fetched costs no upstream call) — then
//! [`summary::summarise`](crate::summary::summarise) instead of the record renderer. The
//! answer is small, so it is built whole: JSON with the same `meta` (`complete`, `stale`,
//! `warnings`), or CSV with one row per group.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    api::{
        DataRequest,
        accept::Acceptable,
        interactions::plan_windows,
        query::{
            CsvEscape, CsvEscapeParam, Format, JsonFormatParam, Params, PreferParam, RANGE_PARAMS,
            RangeParams, RangeQuery, negotiated, pairs, parse_csv_escape, parse_range,
        },
        range_fetch, stored, with_path_format,
    },
    cache::{KeyEncoder, Rendered, hex},
    error::{AppError, PROBLEM_JSON, Problem, problems},
    merge::merge_runs,
    outcome::{Assessment, CacheStatus, assess},
    summary::{Dimension, GroupsJson, Metric, summarise, summarise_accounts, to_csv},
};

/// A parsed `GET /v1/interactions/summary`.
#[derive(Debug, Clone)]
pub struct SummaryQuery {
    pub range: RangeQuery,
    pub group_by: Vec<Dimension>,
    pub metrics: Vec<Metric>,
    /// JSON or CSV only: a summary is one small document, never a stream.
    pub format: Format,
    /// `csv_escape` as given (the default is the gateway's: [`CsvEscape::resolve`]).
    pub csv_escape: Option<CsvEscape>,
}

/// The formats a summary offers, in the server's order: it is one document, so no NDJSON.
pub const SUMMARY_FORMATS: [Format; 2] = [Format::Json, Format::Csv];

/// Parses the whole summary query: the range parameters of `/v1/interactions` (record
/// filters included), plus `group_by`, `metrics`, `format` and `csv_escape`; `accept` is
/// what the request's `Accept` accepts.
///
/// # Errors
/// 400 naming the parameter at fault; 406 when there is no `format` and `Accept` accepts
/// neither JSON nor CSV.
pub fn parse_summary(
    raw: Option<&str>,
    accept: Acceptable,
    max_range_days: u32,
) -> Result<SummaryQuery, AppError> {
    let mut allowed: Vec<&'static str> = RANGE_PARAMS.to_vec();
    allowed.extend(["group_by", "metrics", "format", "csv_escape"]);
    let p = Params::new(pairs(raw), &allowed)?;
    let range = parse_range(&p, max_range_days)?;
    let group_by =
        Dimension::parse_list(&p.list("group_by")?).map_err(|d| AppError::param("group_by", d))?;
    let metrics =
        Metric::parse_list(&p.list("metrics")?).map_err(|d| AppError::param("metrics", d))?;
    let format = match p.one("format")? {
        Some(f) => match f.trim().to_ascii_lowercase().as_str() {
            "json" => Format::Json,
            "csv" => Format::Csv,
            _ => {
                return Err(AppError::param(
                    "format",
                    "`format` must be json or csv for a summary",
                ));
            }
        },
        None => negotiated(accept, &SUMMARY_FORMATS)?,
    };
    let csv_escape = parse_csv_escape(&p)?;
    Ok(SummaryQuery {
        range,
        group_by,
        metrics,
        format,
        csv_escape,
    })
}

/// This route, as the query-key memo tells routes apart.
const ROUTE: &str = "/v1/interactions/summary";

/// The stored answer's key: the range's digest on the account(s) whose namespace digest is
/// `ns` (record filters included), then each dimension, metric and the format,
/// length-prefixed, and for CSV how cells are escaped (two escapings never share a stored
/// answer).
fn summary_key(ns: &[u8; 32], q: &SummaryQuery, escape: CsvEscape) -> String {
    let mut e = KeyEncoder::default();
    e.bytes(&q.range.key("summary", ns).digest());
    let dims: Vec<String> = q.group_by.iter().map(|d| format!("{d:?}")).collect();
    let metrics: Vec<String> = q.metrics.iter().map(|m| format!("{m:?}")).collect();
    e.list(&dims);
    e.list(&metrics);
    e.text(q.format.as_str());
    if q.format == Format::Csv {
        e.text(escape.as_str());
    }
    hex(&e.finish())
}

/// Counts and duration statistics of a date range, grouped, as JSON.
///
/// From the same cached windows as `/v1/interactions`; `Prefer: respond-async` works as
/// there. The same summary as CSV is `/v1/interactions/summary.csv` (this path also answers
/// it for `format=csv` or `Accept: text/csv`).
#[utoipa::path(
    get,
    path = "/v1/interactions/summary",
    tag = "interactions",
    params(RangeParams, SummaryParams, JsonFormatParam, PreferParam),
    responses(
        (status = 200, description = "One entry per group, sorted by key (time by instant, missing values last)",
            headers(("X-Cache" = String, description = "HIT, MISS or PARTIAL"), ("X-Request-Id" = String),
                ("RateLimit-Policy" = String, description = "The key's limit and the shared upstream budget (draft-ietf-httpapi-ratelimit-headers)"),
                ("RateLimit" = String, description = "What is left of each policy now, and the seconds until a unit comes back")),
            body = Body, content_type = "application/json"),
        (status = 202, description = "`Prefer: respond-async` and the range is not cached: a job fetches it; poll `Location`.", body = crate::jobs::JobView,
            headers(("Location" = String), ("Retry-After" = u64), ("Preference-Applied" = String))),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden, problems::NotAcceptable,
        problems::RateLimited,
        problems::UpstreamFailed, problems::BudgetExhausted, problems::UpstreamTimeout,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_summary(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, AppError> {
    let r = DataRequest::new(req)?;
    let (headers, raw, refresh) = (&r.headers, r.query(), r.refresh);
    // What `Accept` chooses among a summary's formats (`None`: nothing it accepts).
    let chosen = r.accept.choose(&SUMMARY_FORMATS);
    // A query string that parsed before: its key without parsing again (see KeyMemo).
    if !refresh
        && let Some((key, _, accounts)) = state.query_keys.get(ROUTE, raw, chosen)
        && r.may_read_all(&state, &accounts)
        && let Some(hit) = state.responses.get(&key)
    {
        state.counters.response_hits.fetch_add(1, Ordering::Relaxed);
        return Ok(stored::reply(&state, &key, &hit, headers).await);
    }
    let q = parse_summary(raw, r.accept, state.settings.max_range_days)?;
    let escape = CsvEscape::resolve(q.csv_escape, state.settings.csv_formula_escape);
    let accounts = state
        .accounts
        .resolve(&q.range.accounts, &r.caller.name, r.caller.admin)?;
    // Whose records: one account's namespace, or the digest of the list of them.
    let ns: [u8; 32] = match accounts.as_slice() {
        [one] => *one.ns.digest(),
        several => {
            let mut e = KeyEncoder::default();
            e.text("accounts");
            e.int(several.len() as i64);
            for a in several {
                e.bytes(a.ns.digest());
                e.text(&a.name);
            }
            e.finish()
        }
    };
    // A warm summary is stored bytes: no merge, no aggregation, no serialisation.
    let key = summary_key(&ns, &q, escape);
    state.query_keys.remember(
        ROUTE,
        raw,
        chosen,
        &key,
        Format::Json,
        accounts.iter().map(|a| a.index).collect(),
    );
    if !refresh && let Some(hit) = state.responses.get(&key) {
        state.counters.response_hits.fetch_add(1, Ordering::Relaxed);
        return Ok(stored::reply(&state, &key, &hit, headers).await);
    }
    let request_id = r.request_id();
    // The same planning and mapping of refusals as `/v1/interactions`, so both routes ask
    // for (and cache) the very same windows.
    let windows = plan_windows(&q.range)?;
    let ranges: Vec<_> = accounts
        .iter()
        .map(|a| {
            range_fetch(
                &state,
                a,
                &r.caller,
                Arc::clone(&request_id),
                q.range.filters.clone(),
                headers,
            )
        })
        .collect();
    // `Prefer: respond-async` on a range not already cached: 202 and a job per account
    // that is not warm (the answer points at the last one started; every job's result is
    // this summary).
    let mut accepted = None;
    for (a, range) in accounts.iter().zip(&ranges) {
        if let Some(resp) = crate::api::jobs::respond_async(
            &state,
            a,
            &r.caller,
            headers,
            "/v1/interactions/summary",
            raw,
            &windows,
            range,
        )
        .await?
        {
            accepted = Some(resp);
        }
    }
    if let Some(resp) = accepted {
        return Ok(resp);
    }
    // A range the budget cannot serve within KORE_MAX_WAIT is told so before it spends
    // (each account's budget serves its own part).
    for range in &ranges {
        crate::api::jobs::check_wait(&r.caller, &windows, range).await?;
    }
    // Every account at once: each waits only for its own budget.
    let per_account =
        futures_util::future::try_join_all(ranges.iter().map(|r| r.all(&windows))).await?;
    let summary = if accounts.len() == 1 && !q.group_by.contains(&Dimension::Account) {
        let mut records = merge_runs(per_account[0].iter().map(|o| o.data.records.as_slice()));
        keep_selected(&mut records, &q.range.select);
        summarise(&records, &q.range.tz, &q.group_by, &q.metrics)
    } else {
        let tagged: Vec<(&str, Vec<&crate::merge::Record>)> = accounts
            .iter()
            .zip(&per_account)
            .map(|(a, outcomes)| {
                let mut records = merge_runs(outcomes.iter().map(|o| o.data.records.as_slice()));
                keep_selected(&mut records, &q.range.select);
                (&*a.name, records)
            })
            .collect();
        summarise_accounts(&tagged, &q.range.tz, &q.group_by, &q.metrics)
    };
    let outcomes: Vec<crate::cache::WindowOutcome> =
        per_account.iter().flatten().cloned().collect();
    let verdict = assess(&outcomes);
    let Assessment {
        complete,
        stale,
        ref warnings,
        cache: status,
        calls,
        ..
    } = verdict;

    let storable = complete && !stale;
    let (content_type, body, hit_body) = match q.format {
        Format::Csv => {
            // CSV has no `meta` to say a part is missing, so, like the record stream, it is
            // refused rather than passed off as whole.
            if !complete {
                return Err(AppError::Upstream(warnings.join("; ")));
            }
            let body = Bytes::from(to_csv(&summary, escape.formula()));
            ("text/csv; charset=utf-8", body.clone(), body)
        }
        _ => {
            let json = |upstream_calls: u32, cache: CacheStatus| {
                let body = Body {
                    groups: GroupsJson(&summary),
                    meta: Meta {
                        from: q.range.local_rfc3339(q.range.from),
                        to: q.range.local_rfc3339(q.range.to),
                        tz: &q.range.tz_name,
                        total: summary.records,
                        groups: summary.groups.len(),
                        complete,
                        stale,
                        warnings,
                        windows: windows.len() * accounts.len(),
                        upstream_calls,
                        cache: cache.as_str(),
                    },
                };
                serde_json::to_vec(&body)
                    .map(Bytes::from)
                    .map_err(|e| AppError::Internal(format!("summary serialisation: {e}")))
            };
            let body = json(calls, status)?;
            // What a repeat says: no upstream call, a hit.
            let hit_body = if !storable || (calls == 0 && status == CacheStatus::Hit) {
                body.clone()
            } else {
                json(0, CacheStatus::Hit)?
            };
            ("application/json", body, hit_body)
        }
    };
    let disposition = (q.format == Format::Csv)
        .then(|| {
            HeaderValue::from_str(&format!(
                "attachment; filename=\"summary-{}-{}.csv\"",
                q.range.from.as_second(),
                q.range.to.as_second()
            ))
            .ok()
        })
        .flatten();
    if storable {
        let fresh_until = outcomes
            .iter()
            .map(|o| o.data.fresh_until())
            .min()
            .unwrap_or_else(Instant::now);
        let mut r = Rendered::new(
            hit_body,
            HeaderValue::from_static(content_type),
            None,
            fresh_until,
        );
        r.disposition = disposition.clone();
        r.epoch = crate::api::interactions::oldest_epoch(&outcomes);
        r.fetched_unix_ms = outcomes
            .iter()
            .map(|o| o.data.fetched_unix_ms)
            .min()
            .unwrap_or(0);
        state.responses.insert(key, Arc::new(r));
    }
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::HeaderName::from_static("x-cache"),
                HeaderValue::from_static(status.as_str()),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-cache"),
            ),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        body,
    )
        .into_response();
    crate::api::stamp_cache_headers(
        &mut resp,
        &verdict.cache_status(ranges.iter().any(|r| r.refresh()), storable),
        verdict.age,
    );
    if let Some(v) = disposition {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Counts and duration statistics of a date range, grouped, as CSV.
///
/// One row per group: the `group_by` columns, then each metric's columns. The same summary
/// as `/v1/interactions/summary` with the same parameters (it is that route with
/// `format=csv`); refused with a 502 rather than passed off as whole when part of the range
/// could not be cross-checked, since CSV has no `meta` to say so.
#[utoipa::path(
    get,
    path = "/v1/interactions/summary.csv",
    tag = "interactions",
    params(RangeParams, SummaryParams, CsvEscapeParam, PreferParam),
    responses(
        (status = 200, description = "One row per group, sorted by key (time by instant, missing values last); sent as an attachment",
            headers(("X-Cache" = String, description = "HIT, MISS or PARTIAL"), ("X-Request-Id" = String),
                ("Content-Disposition" = String, description = "`attachment; filename=\"summary-<from>-<to>.csv\"`"),
                ("RateLimit-Policy" = String, description = "The key's limit and the shared upstream budget (draft-ietf-httpapi-ratelimit-headers)"),
                ("RateLimit" = String, description = "What is left of each policy now, and the seconds until a unit comes back")),
            content((String = "text/csv", example = json!("day,channel,count,interactionDuration.count,interactionDuration.sum,interactionDuration.mean,interactionDuration.p50,interactionDuration.p90,interactionDuration.max\n2024-09-26,voice,12,7,3907,558.1428571428571,540,1023,1107\n2024-09-26,(none),1,0,0,,,,\n")))),
        (status = 202, description = "`Prefer: respond-async` and the range is not cached: a job fetches it; poll `Location`.", body = crate::jobs::JobView,
            headers(("Location" = String), ("Retry-After" = u64), ("Preference-Applied" = String))),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden, problems::RateLimited,
        (status = 502, description = "Upstream failed after retries, or part of the range could not be cross-checked", body = Problem, content_type = PROBLEM_JSON),
        problems::BudgetExhausted, problems::UpstreamTimeout,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn get_summary_csv(
    state: State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, AppError> {
    get_summary(state, with_path_format(req, Format::Csv)?).await
}

/// Keeps the records the record filters select (the windows hold every record).
fn keep_selected(records: &mut Vec<&crate::merge::Record>, select: &crate::summary::RecordFilter) {
    if !select.is_empty() {
        records.retain(|r| select.matches(r));
    }
}

/// `GET /v1/interactions/summary` answer (JSON).
#[derive(Serialize, ToSchema)]
#[schema(as = SummaryResponse, example = json!({
    "groups": [
        {"key": {"day": "2024-09-26", "channel": "voice"}, "count": 12,
         "interactionDuration": {"count": 7, "sum": 3907, "mean": 558.1428571428571, "p50": 540, "p90": 1023, "max": 1107}},
        {"key": {"day": "2024-09-26", "channel": null}, "count": 1,
         "interactionDuration": {"count": 0, "sum": 0, "mean": null, "p50": null, "p90": null, "max": null}}
    ],
    "meta": {"from": "2024-09-26T00:00:00-04:00", "to": "2024-09-26T23:59:59-04:00", "tz": "America/New_York",
             "total": 13, "groups": 2, "complete": true, "stale": false, "warnings": [],
             "windows": 1, "upstream_calls": 0, "cache": "HIT"}
}))]
struct Body<'s, 'a> {
    #[schema(inline)]
    groups: GroupsJson<'s, 'a>,
    meta: Meta<'s>,
}

/// About this summary.
#[derive(Serialize, ToSchema)]
#[schema(as = SummaryMeta)]
struct Meta<'s> {
    #[schema(example = "2024-09-26T00:00:00-04:00")]
    from: String,
    #[schema(example = "2024-09-26T23:59:59-04:00")]
    to: String,
    #[schema(example = "America/New_York")]
    tz: &'s str,
    /// Records summarised (the same as `/v1/interactions` would return in all).
    #[schema(value_type = u64)]
    total: usize,
    /// Groups in `groups`.
    #[schema(value_type = u64)]
    groups: usize,
    /// False whenever any part of the range could not be fetched and cross-checked (see `warnings`).
    complete: bool,
    /// True when part of the answer is an expired copy: served because the upstream failed, or
    /// while it is refreshed (see `warnings`).
    stale: bool,
    warnings: &'s [String],
    /// Upstream windows the range was split into, for every account summarised.
    #[schema(value_type = u64)]
    windows: usize,
    /// Upstream calls this request made (0 when every window was cached).
    #[schema(value_type = u64)]
    upstream_calls: u32,
    #[schema(example = "HIT", pattern = "^(HIT|MISS|PARTIAL)$")]
    cache: &'static str,
}

// ---------------------------------------------------------------------------------------
// OpenAPI: the parameters, read by hand in `parse_summary`, documented next to the handler.

/// The accounts, grouping and metrics of a summary, as the OpenAPI document describes them
/// (the range parameters are [`RangeParams`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SummaryParams {
    /// The vendor accounts to summarise, comma-separated (names of the gateway's accounts);
    /// several are counted together, or apart with `group_by=account`. Default: the
    /// gateway's default account.
    account: Option<String>,
    /// Up to three dimensions, comma-separated, each once. None: one group for the whole
    /// range. `hour` buckets carry their offset, so a 25-hour day has 25; `queue`, `agent`
    /// and `disposition` may put one record in several groups.
    #[param(style = Form, explode = false, max_items = 3, inline, example = json!(["day", "channel"]))]
    group_by: Option<Vec<Dimension>>,
    /// Metrics, comma-separated, each once. Default `count`. Durations are per agent
    /// segment, in seconds: count, sum, mean, p50, p90 (nearest rank), max.
    #[param(style = Form, explode = false, inline, example = json!(["count", "interactionDuration"]))]
    metrics: Option<Vec<Metric>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<SummaryQuery, AppError> {
        parse_summary(Some(s), Acceptable::default(), 92)
    }

    fn param_of(e: AppError) -> &'static str {
        match e {
            AppError::BadParam { param, .. } => param,
            other => panic!("not a parameter error: {other:?}"),
        }
    }

    #[test]
    fn parses_groupings_metrics_and_format() {
        let s = q("from=2024-09-01&to=2024-09-02&group_by=day,channel&group_by=queue&metrics=count,queueWait")
            .unwrap();
        assert_eq!(
            s.group_by,
            [Dimension::Day, Dimension::Channel, Dimension::Queue]
        );
        assert_eq!(s.metrics, [Metric::Count, Metric::QueueWait]);
        assert_eq!(s.format, Format::Json);
        let d = q("from=2024-09-01&to=2024-09-02").unwrap();
        assert!(d.group_by.is_empty());
        assert_eq!(d.metrics, [Metric::Count]);
        let with = |accept: &str| {
            parse_summary(
                Some("from=2024-09-01&to=2024-09-02"),
                Acceptable::parse([accept]),
                92,
            )
            .map(|s| s.format)
        };
        assert_eq!(with("text/csv").unwrap(), Format::Csv);
        assert_eq!(
            with("application/x-ndjson, */*;q=0.1").unwrap(),
            Format::Json
        );
        assert_eq!(
            with("application/json;q=0.5, text/csv").unwrap(),
            Format::Csv
        );
        assert!(
            matches!(
                with("application/x-ndjson"),
                Err(AppError::NotAcceptable { .. })
            ),
            "a summary is never NDJSON"
        );
    }

    #[test]
    fn csv_escapings_never_share_a_stored_summary() {
        let key = |query: &str, escape| summary_key(&[0; 32], &q(query).unwrap(), escape);
        let csv = "from=2024-09-01&to=2024-09-02&format=csv&group_by=disposition";
        assert_ne!(key(csv, CsvEscape::Formula), key(csv, CsvEscape::None));
        let json = "from=2024-09-01&to=2024-09-02&group_by=disposition";
        assert_eq!(key(json, CsvEscape::Formula), key(json, CsvEscape::None));
        assert_ne!(key(csv, CsvEscape::Formula), key(json, CsvEscape::Formula));
        // Record filters select what is summarised: part of the key.
        let filtered = "from=2024-09-01&to=2024-09-02&group_by=disposition&direction=Inbound";
        assert_ne!(
            key(json, CsvEscape::Formula),
            key(filtered, CsvEscape::Formula)
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let cases = [
            ("from=2024-09-01&to=2024-09-02&group_by=week", "group_by"),
            ("from=2024-09-01&to=2024-09-02&group_by=day,day", "group_by"),
            (
                "from=2024-09-01&to=2024-09-02&group_by=day&group_by=Day",
                "group_by",
            ),
            (
                "from=2024-09-01&to=2024-09-02&group_by=day,hour,channel,queue",
                "group_by",
            ),
            ("from=2024-09-01&to=2024-09-02&metrics=avg", "metrics"),
            (
                "from=2024-09-01&to=2024-09-02&metrics=count,count",
                "metrics",
            ),
            ("from=2024-09-01&to=2024-09-02&format=ndjson", "format"),
            (
                "from=2024-09-01&to=2024-09-02&format=csv&format=json",
                "format",
            ),
            ("from=2024-09-01&to=2024-09-02&limit=10", "query"),
            ("from=2024-09-01&to=2024-09-02&csv_escape=raw", "csv_escape"),
            ("from=2024-09-01&to=2024-12-02", "to"),
            ("to=2024-09-02&group_by=day", "from"),
            ("from=2024-09-03&to=2024-09-02", "from"),
        ];
        for (query, param) in cases {
            let err = q(query).expect_err(query);
            assert_eq!(param_of(err), param, "{query}");
        }
    }
}

//! The vendor's own endpoint, drop-in: existing scripts change only the host and the auth
//! header. The body and query string are the vendor's; the gateway validates them by the
//! vendor's rules, mints the JWT, and answers from the same window cache and budget as
//! `/v1/interactions`, in the vendor's shape (`numResults` + one page of `data`).

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, BytesMut};
use jiff::tz::Offset;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{
    AppState,
    api::{
        RequestId,
        auth::Caller,
        query::{Bound, FIELDS, Params, SelectedField, pairs, parse_local},
        range_fetch,
    },
    cache::Source,
    config::OffsetMode,
    error::{AppError, PROBLEM_JSON, Problem, problems},
    merge::Record,
    plan::{MAX_WINDOW_SECONDS, Window},
    upstream::{Filters, MAX_PAGE, PAGE_LIMIT},
};

/// The vendor's request body (drop-in route).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VendorRequest, example = json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": -330,
    "selectedFields": ["userleveltags", "sessionleveltags", "customerinfo", "skills"]}))]
struct VendorBody {
    /// `yyyy-mm-dd` or `yyyy-mm-dd HH:mm:ss`, local to the offset.
    #[serde(rename = "startDate")]
    start_date: String,
    #[serde(rename = "endDate")]
    end_date: String,
    /// Minutes, JavaScript sign: IST is -330.
    #[serde(rename = "timeZoneOffset")]
    time_zone_offset: i32,
    // The lists are nullable in the vendor's schema: `null` means the same as absent.
    /// Optional blocks to include; `null` or absent: none of them.
    #[serde(rename = "selectedFields", default)]
    #[schema(value_type = Option<Vec<SelectedField>>)]
    selected_fields: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    queues: Option<Vec<String>>,
    #[serde(default)]
    bots: Option<Vec<String>>,
}

// What `interaction_details` writes by hand (the records go out as raw bytes), as the
// OpenAPI document describes it.
/// The vendor's answer shape.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
struct VendorResponse {
    numResults: u64,
    data: Vec<Record>,
}

/// Vendor-compatible interaction details (one page), authenticated by API key.
///
/// The vendor's own request and answer, so an existing client changes only its host and sends an
/// API key instead of a JWT; the gateway mints the token, caches the window and spends the
/// shared budget for it.
#[utoipa::path(
    post,
    path = "/agentassist/api/public/analytics/account/{accountId}/v2/interactionDetails",
    tag = "vendor-compatible",
    params(
        ("accountId" = String, Path, description = "The vendor account id of one of the gateway's accounts"),
        ("account" = Option<String>, Query, description = "The gateway account's name, only needed when two accounts share this vendor account id (on different base URLs)"),
        ("offset" = Option<u32>, Query, minimum = 0, maximum = 10, description = "Page index 0..10 (with `KORE_OFFSET_MODE=record`, as the vendor's older docs read it: records to skip, 0..1000)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Records per page, 1..100 (default 100)"),
    ),
    request_body(content = VendorBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One page, in the vendor's shape", body = VendorResponse,
            headers(
                ("X-Cache" = String, description = "HIT, MISS, or STALE when an expired copy stands in for a failed upstream"),
                ("X-Gateway-Complete" = String, description = "false when the window's count could not be cross-checked"),
                ("X-Gateway-Stale" = String, description = "true when the page comes from an expired copy"),
            )),
        (status = 400, description = "Bad body or parameters", body = Problem, content_type = PROBLEM_JSON),
        problems::Unauthorized,
        (status = 403, description = "This key may not read that account (GATEWAY_KEY_ACCOUNTS)", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No account of the gateway has this account id", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = PROBLEM_JSON),
        problems::UpstreamFailed,
        problems::BudgetExhausted,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn interaction_details(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RequestId(request_id): RequestId,
    Path(account_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        _ => AppError::BadBody("the body could not be read".into()),
    })?;
    let p = Params::new(pairs(raw.as_deref()), &["offset", "limit", "account"])?;
    // The account whose vendor id is in the path; `account=` tells apart two gateway
    // accounts with one vendor id on different base URLs.
    let named = p.one("account")?;
    let mut matching = state
        .accounts
        .with_account_id(&account_id)
        .filter(|a| named.is_none_or(|n| *a.name == *n));
    let account = match (matching.next(), matching.next()) {
        (None, _) => return Err(AppError::NotFound),
        (Some(a), None) => std::sync::Arc::clone(a),
        (Some(_), Some(_)) => {
            return Err(AppError::param(
                "account",
                "several accounts have this account id: name one with `account`",
            ));
        }
    };
    if !state
        .accounts
        .may_read(&caller.name, caller.admin, account.index)
    {
        return Err(AppError::AccountForbidden {
            account: account.name.to_string(),
        });
    }
    let limit = number(&p, "limit", 1, PAGE_LIMIT)?.unwrap_or(PAGE_LIMIT);
    // Records to skip, read as the vendor reads `offset` (KORE_OFFSET_MODE): a page index
    // skips that many pages, a record offset that many records — never rounded to a page.
    let skip = match account.offset_mode {
        OffsetMode::Page => {
            number(&p, "offset", 0, MAX_PAGE)?.unwrap_or(0) as usize * limit as usize
        }
        OffsetMode::Record => number(&p, "offset", 0, MAX_PAGE * PAGE_LIMIT)?.unwrap_or(0) as usize,
    };
    let (window, filters) = parse_body(&body)?;
    let range = range_fetch(&state, &account, &caller, request_id, filters, &headers);
    let outcome = range.window(window).await?;
    let records = &outcome.data.records;
    let start = skip.min(records.len());
    let end = (start + limit as usize).min(records.len());
    let mut buf = BytesMut::with_capacity(
        64 + records[start..end]
            .iter()
            .map(|r| r.raw.get().len() + 1)
            .sum::<usize>(),
    );
    buf.put_slice(format!("{{\"numResults\":{},\"data\":[", records.len()).as_bytes());
    for (i, r) in records[start..end].iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(r.raw.get().as_bytes());
    }
    buf.put_slice(b"]}");
    // The vendor's shape has no `meta`: headers say how the page was produced. An expired
    // copy (standing in for a failed upstream, or served while it is refreshed) is STALE,
    // never a HIT.
    let (cache, stale) = match outcome.source {
        Source::Hit => ("HIT", "false"),
        Source::Miss => ("MISS", "false"),
        Source::Stale | Source::Revalidating => ("STALE", "true"),
    };
    let complete = if outcome.data.complete() {
        "true"
    } else {
        "false"
    };
    let verdict = crate::outcome::assess(std::slice::from_ref(&outcome));
    let mut resp = (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static("x-cache"),
                HeaderValue::from_static(cache),
            ),
            (
                header::HeaderName::from_static("x-gateway-complete"),
                HeaderValue::from_static(complete),
            ),
            (
                header::HeaderName::from_static("x-gateway-stale"),
                HeaderValue::from_static(stale),
            ),
        ],
        buf.freeze(),
    )
        .into_response();
    crate::api::stamp_cache_headers(
        &mut resp,
        &verdict.cache_status(range.refresh(), false),
        verdict.age,
    );
    Ok(resp)
}

fn number(p: &Params, name: &'static str, min: u32, max: u32) -> Result<Option<u32>, AppError> {
    p.one(name)?
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    AppError::param(
                        name,
                        format!("`{name}` must be a whole number from {min} to {max}"),
                    )
                })
        })
        .transpose()
}

/// The vendor's body → one window and its filters, by the vendor's rules.
///
/// # Errors
/// 400 for anything the vendor would refuse.
pub fn parse_body(body: &[u8]) -> Result<(Window, Filters), AppError> {
    let b: VendorBody = serde_json::from_slice(body).map_err(|e| {
        let msg: String = e.to_string().chars().take(200).collect();
        AppError::BadBody(msg)
    })?;
    if !(-840..=840).contains(&b.time_zone_offset) {
        return Err(AppError::BadBody(
            "timeZoneOffset must be minutes within ±840".into(),
        ));
    }
    let offset_seconds = -b.time_zone_offset * 60;
    let offset = Offset::from_seconds(offset_seconds)
        .map_err(|_| AppError::BadBody("timeZoneOffset is out of range".into()))?;
    let instant = |text: &str, bound: Bound, name: &str| {
        let ok_shape =
            text.len() == 10 || (text.len() == 19 && text.as_bytes().get(10) == Some(&b' '));
        let dt = parse_local(text, bound)
            .ok()
            .filter(|_| ok_shape)
            .ok_or_else(|| {
                AppError::BadBody(format!("{name} must be yyyy-mm-dd or yyyy-mm-dd HH:mm:ss"))
            })?;
        offset
            .to_timestamp(dt)
            .map_err(|_| AppError::BadBody(format!("{name} is out of range")))
    };
    let start = instant(&b.start_date, Bound::Start, "startDate")?;
    let end = instant(&b.end_date, Bound::End, "endDate")?;
    if end < start {
        return Err(AppError::BadBody("endDate is before startDate".into()));
    }
    if end.as_second() - start.as_second() > MAX_WINDOW_SECONDS {
        return Err(AppError::BadBody(
            "the range may not be longer than 7 days".into(),
        ));
    }
    let selected_fields = b.selected_fields.unwrap_or_default();
    if let Some(bad) = selected_fields
        .iter()
        .find(|f| !FIELDS.contains(&f.as_str()))
    {
        let shown: String = bad.chars().take(40).collect();
        return Err(AppError::BadBody(format!(
            "unknown selectedFields entry `{shown}`"
        )));
    }
    let filters = Filters {
        channels: b.channels.unwrap_or_default(),
        queues: b.queues.unwrap_or_default(),
        bots: b.bots.unwrap_or_default(),
        fields: selected_fields,
    }
    .normalized();
    Ok((
        Window {
            start,
            end,
            offset_seconds,
        },
        filters,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_body_rules() {
        let (w, f) = parse_body(br#"{"startDate":"2024-09-26","endDate":"2024-09-26","timeZoneOffset":-330,"selectedFields":["skills"]}"#).unwrap();
        assert_eq!(w.vendor_start(), "2024-09-26 00:00:00");
        assert_eq!(w.vendor_end(), "2024-09-26 23:59:59");
        assert_eq!(w.vendor_offset(), -330);
        assert_eq!(f.fields, ["skills"]);
        assert!(parse_body(br#"{"startDate":"2024-09-20 00:00:00","endDate":"2024-09-27 00:00:00","timeZoneOffset":0}"#).is_ok());
        // `null` lists are the schema's "absent".
        let absent =
            parse_body(br#"{"startDate":"2024-09-26","endDate":"2024-09-26","timeZoneOffset":0}"#)
                .unwrap();
        let nulls = parse_body(br#"{"startDate":"2024-09-26","endDate":"2024-09-26","timeZoneOffset":0,"selectedFields":null,"channels":null,"queues":null,"bots":null}"#).unwrap();
        assert_eq!(nulls.1, absent.1);
        assert!(nulls.1.channels.is_empty() && nulls.1.fields.is_empty());
        for bad in [
            &br#"{"startDate":"2024-09-20 00:00:00","endDate":"2024-09-27 00:00:01","timeZoneOffset":0}"#[..],
            br#"{"startDate":"2024-09-20T00:00:00","endDate":"2024-09-21","timeZoneOffset":0}"#,
            br#"{"startDate":"2024-09-21","endDate":"2024-09-20","timeZoneOffset":0}"#,
            br#"{"startDate":"2024-09-21","endDate":"2024-09-21"}"#,
            br#"{"startDate":"2024-09-21","endDate":"2024-09-21","timeZoneOffset":99999}"#,
            br#"{"startDate":"2024-09-21","endDate":"2024-09-21","timeZoneOffset":0,"selectedFields":["x"]}"#,
            br#"{"startDate":"2024-09-21","endDate":"2024-09-21","timeZoneOffset":0,"host":"evil.example"}"#,
            b"not json",
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

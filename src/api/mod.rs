//! The public HTTP surface (SPEC §3): routes, and the one middleware stack around them.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod changes;
pub mod docs;
pub mod dropin;
pub mod interactions;
pub mod jobs;
pub mod middleware;
pub mod ops;
pub mod query;
pub mod status;
pub mod stored;
pub mod summary;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequestParts, Request},
    http::{HeaderMap, HeaderName, HeaderValue, header, request::Parts},
    response::Response,
    routing::{get, post},
};

use crate::{AppState, error::AppError};

/// Header carrying the request id, taken from the caller or generated.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest request body accepted (only the drop-in POST has one).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    // Routes that need an API key; the admin ones also need an admin key.
    let admin = Router::new()
        .route(
            "/v1/cache",
            get(admin::cache_stats).delete(admin::cache_purge),
        )
        .route_layer(axum::middleware::from_fn(auth::require_admin));
    let keyed = Router::new()
        .route("/v1/interactions", get(interactions::get_interactions))
        // One path per representation, for clients generated from the OpenAPI document
        // (see `query::JsonFormatParam`): the same handlers, the format named by the path.
        .route(
            "/v1/interactions.ndjson",
            get(interactions::get_interactions_ndjson),
        )
        .route(
            "/v1/interactions.csv",
            get(interactions::get_interactions_csv),
        )
        .route("/v1/interactions/summary", get(summary::get_summary))
        .route(
            "/v1/interactions/summary.csv",
            get(summary::get_summary_csv),
        )
        // Bodies are small by nature here, and this is the one route that reads one: a big
        // one is refused before it is read.
        .route(
            crate::upstream::VENDOR_PATH,
            post(dropin::interaction_details).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route(
            "/v1/interactions/changes/tickets",
            post(changes::issue_ticket),
        )
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/status.json", get(status::status_json))
        .merge(admin)
        .route_layer(auth::RequireKeyLayer(state.clone()));
    let open = Router::new()
        // Keyed too, but by a header or a ticket in the URL (EventSource sends no header):
        // the handler checks whichever it is given.
        .route("/v1/interactions/changes", get(changes::subscribe))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/status", get(status::page))
        .merge(docs::routes());

    let routes = Router::new()
        .merge(keyed)
        .merge(open)
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed });
    middleware::with_middleware(routes, &state).with_state(state)
}

/// The id of this request (also sent upstream), as the edge layer set it.
#[derive(Debug, Clone)]
pub struct RequestId(pub std::sync::Arc<str>);

impl RequestId {
    /// The id in the request's headers, where the edge layer left it (always sane).
    pub fn of(headers: &HeaderMap) -> &str {
        headers
            .get(&X_REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(RequestId::of(&parts.headers).into()))
    }
}

/// A keyed data request (`/v1/interactions`, the summary) taken apart rather than extracted
/// piece by piece: a stored hit then copies neither the header map nor the query string nor
/// the request id.
pub struct DataRequest {
    pub caller: auth::Caller,
    pub headers: HeaderMap,
    uri: axum::http::Uri,
    /// What `Accept` accepts (a `format` parameter still overrides it): each route asks it
    /// for its choice among the formats it offers.
    pub accept: accept::Acceptable,
    /// An admin's `Cache-Control: no-cache`: stored answers and fresh windows are skipped.
    pub refresh: bool,
}

impl DataRequest {
    /// # Errors
    /// 401 when the key layer left no caller (a route mounted outside it).
    pub fn new(req: Request) -> Result<Self, AppError> {
        let (mut parts, _) = req.into_parts();
        let caller = parts
            .extensions
            .remove::<auth::Caller>()
            .ok_or(AppError::Unauthorized)?;
        let refresh = caller.admin && wants_refresh(&parts.headers);
        let accept = accept::Acceptable::parse(
            parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        Ok(DataRequest {
            caller,
            headers: parts.headers,
            uri: parts.uri,
            accept,
            refresh,
        })
    }

    /// The raw query string.
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    /// This request's id, as the edge layer set it.
    pub fn request_id(&self) -> std::sync::Arc<str> {
        RequestId::of(&self.headers).into()
    }

    /// Whether this caller may read every one of `accounts` (a stored answer is served only
    /// then; otherwise the request is parsed again and refused with the account named).
    pub fn may_read_all(&self, state: &AppState, accounts: &[usize]) -> bool {
        accounts.iter().all(|&i| {
            state
                .accounts
                .may_read(&self.caller.name, self.caller.admin, i)
        })
    }
}

/// A request to a path that names its representation (`/v1/interactions.csv`) as the same
/// request to the plain path with `format` added to its query: the plain path's handler
/// then answers it, and its stored answers, cursors and jobs are the very ones of
/// `/v1/interactions?…&format=csv` (the query string is what they are keyed by).
///
/// # Errors
/// 400 naming `format` when the query names one too: the path already did.
pub fn with_path_format(mut req: Request, format: query::Format) -> Result<Request, AppError> {
    let raw = req.uri().query().unwrap_or("");
    if query::pairs(Some(raw)).iter().any(|(k, _)| k == "format") {
        return Err(AppError::param(
            "format",
            format!(
                "this path answers {} only: leave `format` out",
                format.as_str()
            ),
        ));
    }
    let path_and_query = if raw.is_empty() {
        format!("{}?format={}", req.uri().path(), format.as_str())
    } else {
        format!("{}?{raw}&format={}", req.uri().path(), format.as_str())
    };
    *req.uri_mut() = axum::http::Uri::try_from(path_and_query)
        .map_err(|_| AppError::param("query", "the query string is not a valid URI part"))?;
    Ok(req)
}

/// The windows of one request on `account`, through the cache and that account's budget,
/// on behalf of its caller (fairness) and under its request id (tracing); an admin's
/// `no-cache` refreshes.
pub fn range_fetch(
    state: &AppState,
    account: &crate::account::Account,
    caller: &auth::Caller,
    request_id: std::sync::Arc<str>,
    filters: crate::upstream::Filters,
    headers: &axum::http::HeaderMap,
) -> crate::fetch::RangeFetch {
    crate::fetch::RangeFetch::new(
        std::sync::Arc::clone(&account.fetcher),
        std::sync::Arc::clone(&state.windows),
        account.ns.clone(),
        filters,
        std::sync::Arc::clone(&caller.name),
        request_id,
        account.allowance(state.settings.budget.max_calls_per_request),
        caller.admin && wants_refresh(headers),
    )
}

/// Sets `Cache-Status` (RFC 9211) and `Age` on a data answer.
pub fn stamp_cache_headers(resp: &mut Response, cache_status: &str, age_seconds: u64) {
    set_cache_headers(resp.headers_mut(), cache_status, age_seconds);
}

/// [`stamp_cache_headers`] on a header map being built.
pub fn set_cache_headers(h: &mut axum::http::HeaderMap, cache_status: &str, age_seconds: u64) {
    if let Ok(v) = HeaderValue::from_str(cache_status) {
        h.insert(HeaderName::from_static("cache-status"), v);
    }
    h.insert(header::AGE, HeaderValue::from(age_seconds));
}

/// Whether the request asks to bypass caches (`Cache-Control: no-cache` or `Pragma: no-cache`).
pub fn wants_refresh(headers: &axum::http::HeaderMap) -> bool {
    let has = |name: header::HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
    };
    has(header::CACHE_CONTROL) || has(header::PRAGMA)
}

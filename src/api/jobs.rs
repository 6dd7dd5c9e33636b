//! Asynchronous requests (RFC 7240 `Prefer: respond-async`) and the job resource.
//!
//! A range route asked with `Prefer: respond-async` whose windows are not all fresh in the
//! cache answers `202 Accepted` at once, with `Location: /v1/jobs/{id}`, `Retry-After` and
//! the job; a warm range answers 200 as usual (a preference is only a preference). The
//! job itself lives in [`crate::jobs`].

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    AppState,
    api::auth::Caller,
    error::{AppError, PROBLEM_JSON, Problem, problems},
    fetch::RangeFetch,
    jobs::JobView,
    plan::Window,
};

/// Whether the request prefers an asynchronous answer (`Prefer: respond-async`, any case,
/// among other preferences, with or without parameters).
pub fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.split(';').next())
        .any(|p| {
            p.split('=')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// For a range request that prefers an asynchronous answer and is not already warm: the
/// `202 Accepted` of the job that fetches it (an identical request of the same key shares
/// the job under way). `None` means: answer synchronously.
///
/// # Errors
/// 429 when the key has too many jobs under way.
#[allow(clippy::too_many_arguments)]
pub async fn respond_async(
    state: &AppState,
    account: &crate::account::Account,
    caller: &Caller,
    headers: &HeaderMap,
    path: &str,
    raw_query: Option<&str>,
    windows: &[Window],
    range: &RangeFetch,
) -> Result<Option<Response>, AppError> {
    if !wants_async(headers) || is_warm(windows, range).await {
        return Ok(None);
    }
    let result = match raw_query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    // Identity of the request: whose records (the account's namespace), its URL, and
    // whether it bypasses the cache.
    let identity = format!(
        "{} {}{result}",
        account.ns.label(),
        if range.refresh() { "refresh " } else { "" }
    );
    let job = state
        .jobs
        .start(
            std::sync::Arc::clone(&caller.name),
            identity,
            result,
            windows.to_vec(),
            range.clone(),
        )
        .map_err(|t| AppError::TooManyJobs { limit: t.limit })?;
    let view = state.jobs.view(&job, job.budget());
    let retry_after = view.eta_seconds.unwrap_or(1).clamp(1, 30);
    let mut resp = (StatusCode::ACCEPTED, Json(view)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    h.insert(
        header::HeaderName::from_static("preference-applied"),
        HeaderValue::from_static("respond-async"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Prefer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(Some(resp))
}

/// Every window of the range is fresh in the cache (an admin's refresh never is).
async fn is_warm(windows: &[Window], range: &RangeFetch) -> bool {
    !range.refresh() && range.all_fresh(windows).await
}

/// The jobs an API key can see.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// The jobs of this key, oldest first.
///
/// An admin key sees every key's jobs. Ended jobs are listed until JOB_TTL after they end.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, description = "Jobs this key can see", body = JobList),
              problems::Unauthorized),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let jobs = state
        .jobs
        .list(&caller.name, caller.admin)
        .iter()
        .map(|j| state.jobs.view(j, j.budget()))
        .collect();
    no_store(Json(JobList { jobs }).into_response())
}

/// A job's state, progress and ETA; when done, the URL of its result.
///
/// Counts never go down; `eta_seconds` comes from the shared budget's schedule. Only the key
/// that made the job (or an admin key) sees it.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id from `Location`")),
    responses((status = 200, description = "The job", body = JobView,
                headers(("Retry-After" = u64, description = "While queued or running: when to look again"))),
              problems::Unauthorized,
              (status = 404, description = "No such job for this key (or forgotten JOB_TTL after it ended)", body = Problem, content_type = PROBLEM_JSON)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let job = state
        .jobs
        .get(&id, &caller.name, caller.admin)
        .ok_or(AppError::NoSuchJob)?;
    let view = state.jobs.view(&job, job.budget());
    let pending = view.result.is_none() && view.error.is_none();
    let retry = view.eta_seconds.map(|e| e.clamp(1, 30));
    let mut resp = no_store(Json(view).into_response());
    if let (true, Some(r)) = (pending, retry) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(r));
    }
    Ok(resp)
}

/// Cancels a job and forgets it.
///
/// Windows it already fetched (or had under way) stay cached; windows it had not started are
/// not fetched.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id from `Location`")),
    responses((status = 204, description = "Cancelled and forgotten"),
              problems::Unauthorized,
              (status = 404, description = "No such job for this key", body = Problem, content_type = PROBLEM_JSON)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    if state.jobs.cancel(&id, &caller.name, caller.admin) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NoSuchJob)
    }
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_respond_async_among_other_preferences() {
        let mut h = HeaderMap::new();
        assert!(!wants_async(&h));
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, Respond-Async; x=1"),
        );
        assert!(wants_async(&h));
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static("respond-asynchronously"));
        assert!(!wants_async(&h));
        h.append("prefer", HeaderValue::from_static("wait=5"));
        h.append("prefer", HeaderValue::from_static("respond-async"));
        assert!(wants_async(&h));
    }
}

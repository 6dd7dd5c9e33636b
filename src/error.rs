//! One error type for the HTTP surface, and the only place a status code is chosen.
//!
//! Every failure leaves as `application/problem+json` (RFC 9457). Client mistakes carry a
//! `detail` that says exactly what to fix; 5xx bodies stay generic (the specifics are logged
//! with the request id) so nothing about the upstream or its credentials leaks.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::upstream::UpstreamError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A parameter is missing, malformed or out of range.
    #[error("invalid parameter `{param}`: {detail}")]
    BadParam { param: &'static str, detail: String },
    /// The body is not what the route takes.
    #[error("invalid request body: {0}")]
    BadBody(String),
    /// No API key, or one we do not know.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// A known key asked for something it may not do.
    #[error("this API key may not use this route")]
    Forbidden,
    /// A known key asked for an account it may not read (GATEWAY_KEY_ACCOUNTS).
    #[error("this API key may not read the account `{account}`")]
    AccountForbidden { account: String },
    #[error("no such route")]
    NotFound,
    /// The body is larger than the route accepts.
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No `format` was given and `Accept` accepts none of the media types the route offers.
    #[error(
        "`Accept` accepts none of the media types this route offers ({offered}); name one, or use the `format` parameter"
    )]
    NotAcceptable { offered: &'static str },
    /// The request target is longer than the gateway reads.
    #[error(
        "the request target is longer than the {limit} bytes this gateway reads; send fewer or shorter filter values"
    )]
    UriTooLong { limit: usize },
    /// This caller exceeded GATEWAY_KEY_RATE_LIMIT.
    #[error("rate limit of this API key exceeded")]
    KeyRateLimited { retry_after: Duration },
    /// The shared upstream budget cannot serve the call within KORE_MAX_WAIT.
    #[error("upstream budget exhausted")]
    BudgetExhausted { retry_after: Duration },
    /// The range needs more calls than the account's budget serves within KORE_MAX_WAIT:
    /// said before any is spent.
    #[error("the request needs about {calls} upstream calls, about {seconds} s of the budget")]
    TooLongToWait {
        /// Upstream calls the range is expected to need (at least, when not `informed`).
        calls: u64,
        /// Whether `calls` comes from the account's known volume (else it is a floor: one
        /// first page per window not cached).
        informed: bool,
        /// Seconds the budget needs to serve them now.
        seconds: u64,
        /// KORE_MAX_WAIT, in seconds.
        max_wait: u64,
        /// Whether even an idle budget could serve them within KORE_MAX_WAIT (else only a
        /// job, or a shorter range, gets the answer).
        servable_later: bool,
        retry_after: Duration,
    },
    /// The upstream failed after retries.
    #[error("the request needs about {estimate} upstream calls, more than the {limit} allowed")]
    TooMuchWork {
        estimate: u64,
        limit: u32,
        retry_after: Duration,
    },
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The whole request ran past GATEWAY_REQUEST_TIMEOUT.
    #[error("request timed out")]
    RequestTimeout,
    /// No job of that id for this key (or it was forgotten after JOB_TTL).
    #[error("no such job for this API key")]
    NoSuchJob,
    /// This key has as many jobs under way as it may.
    #[error(
        "this API key already has {limit} jobs queued or running; wait for one to end or cancel one"
    )]
    TooManyJobs { limit: usize },
    /// This key has as many change-feed streams open as it may (FEED_MAX_SUBSCRIBERS_PER_KEY).
    #[error(
        "this API key already has {limit} change-feed streams open; close one, or share one stream between screens"
    )]
    TooManyStreams { limit: usize },
    /// A bug of ours; never for anything a client sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// RFC 9457 problem details.
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-parameter")]
    kind: &'a str,
    #[schema(example = "Invalid parameter")]
    title: &'a str,
    #[schema(example = 400)]
    status: u16,
    #[schema(example = "`from` is after `to`")]
    detail: String,
    /// The parameter at fault, for 400s.
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    /// For a range refused before any call: the upstream calls it is expected to need.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_calls: Option<u64>,
    /// For a range refused before any call: the seconds the budget needs to serve it.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_seconds: Option<u64>,
    /// For a range refused before any call: KORE_MAX_WAIT, the longest a request waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait_seconds: Option<u64>,
}

impl AppError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadParam { .. } | AppError::BadBody(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::AccountForbidden { .. } => StatusCode::FORBIDDEN,
            AppError::NotFound | AppError::NoSuchJob => StatusCode::NOT_FOUND,
            AppError::TooManyJobs { .. } | AppError::TooManyStreams { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            AppError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            AppError::KeyRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::BudgetExhausted { .. }
            | AppError::TooMuchWork { .. }
            | AppError::TooLongToWait { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Upstream(_) => StatusCode::BAD_GATEWAY,
            AppError::UpstreamTimeout | AppError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_title(&self) -> (&'static str, &'static str) {
        match self {
            AppError::BadParam { .. } => ("/problems/invalid-parameter", "Invalid parameter"),
            AppError::BadBody(_) => ("/problems/invalid-body", "Invalid request body"),
            AppError::Unauthorized => ("/problems/unauthorized", "Missing or unknown API key"),
            AppError::Forbidden => ("/problems/forbidden", "Not allowed for this API key"),
            AppError::AccountForbidden { .. } => (
                "/problems/account-forbidden",
                "Account not allowed for this API key",
            ),
            AppError::NotFound => ("/problems/not-found", "Not found"),
            AppError::NoSuchJob => ("/problems/no-such-job", "No such job"),
            AppError::TooManyJobs { .. } => ("/problems/too-many-jobs", "Too many jobs"),
            AppError::TooManyStreams { .. } => ("/problems/too-many-streams", "Too many streams"),
            AppError::PayloadTooLarge => ("/problems/payload-too-large", "Request body too large"),
            AppError::MethodNotAllowed => ("/problems/method-not-allowed", "Method not allowed"),
            AppError::NotAcceptable { .. } => ("/problems/not-acceptable", "Not acceptable"),
            AppError::UriTooLong { .. } => ("/problems/uri-too-long", "Request target too long"),
            AppError::KeyRateLimited { .. } => ("/problems/rate-limited", "Too many requests"),
            AppError::BudgetExhausted { .. } => {
                ("/problems/budget-exhausted", "Upstream budget exhausted")
            }
            AppError::TooMuchWork { .. } => (
                "/problems/too-much-work",
                "Request needs more upstream calls than allowed",
            ),
            AppError::TooLongToWait { .. } => (
                "/problems/too-long-to-wait",
                "Request cannot be served within KORE_MAX_WAIT",
            ),
            AppError::Upstream(_) => ("/problems/upstream-failed", "Upstream failed"),
            AppError::UpstreamTimeout => ("/problems/upstream-timeout", "Upstream timed out"),
            AppError::RequestTimeout => ("/problems/request-timeout", "Request timed out"),
            AppError::Internal(_) => ("/problems/internal", "Internal error"),
        }
    }

    /// Shorthand for a 400 naming `param`.
    pub fn param(param: &'static str, detail: impl Into<String>) -> Self {
        AppError::BadParam {
            param,
            detail: detail.into(),
        }
    }
}

impl From<UpstreamError> for AppError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout => AppError::UpstreamTimeout,
            UpstreamError::Budget { retry_after } => AppError::BudgetExhausted { retry_after },
            UpstreamError::OverCallBudget {
                estimate,
                limit,
                retry_after,
            } => AppError::TooMuchWork {
                estimate,
                limit,
                retry_after,
            },
            other => AppError::Upstream(other.to_string()),
        }
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, title) = self.kind_and_title();
        let (detail, param) = match &self {
            AppError::BadParam { param, detail } => (detail.clone(), Some(*param)),
            AppError::AccountForbidden { .. } => (self.to_string(), Some("account")),
            AppError::BadBody(d) => (d.clone(), None),
            AppError::KeyRateLimited { retry_after } => (
                format!(
                    "this API key exceeded its request rate; retry in {} s",
                    retry_after_secs(*retry_after)
                ),
                None,
            ),
            AppError::BudgetExhausted { retry_after } => (
                format!(
                    "the shared upstream budget cannot serve this request now; retry in {} s",
                    retry_after_secs(*retry_after)
                ),
                None,
            ),
            AppError::TooMuchWork {
                estimate,
                limit,
                retry_after,
            } => (
                format!(
                    "this request needs an estimated {estimate} upstream calls, more than the {limit} one request may make (MAX_CALLS_PER_REQUEST); what was fetched is cached. Ask for a shorter range or narrower filters, or retry in {} s",
                    retry_after_secs(*retry_after)
                ),
                None,
            ),
            AppError::TooLongToWait {
                calls,
                informed,
                seconds,
                max_wait,
                servable_later,
                retry_after,
            } => (
                format!(
                    "this range needs {} {calls} upstream calls, which the account's budget serves in about {seconds} s, longer than the {max_wait} s a request may wait (KORE_MAX_WAIT); no call was made. Send `Prefer: respond-async` to run it as a job (202, then poll its Location), or ask for a shorter range{}",
                    if *informed { "about" } else { "at least" },
                    if *servable_later {
                        format!(", or retry in {} s", retry_after_secs(*retry_after))
                    } else {
                        String::new()
                    }
                ),
                None,
            ),
            AppError::Upstream(_) => (
                "the upstream API failed after retries; nothing partial was returned".into(),
                None,
            ),
            AppError::UpstreamTimeout => ("the upstream API did not answer in time".into(), None),
            AppError::Internal(_) => (
                "an internal error occurred; it has been logged".into(),
                None,
            ),
            other => (other.to_string(), None),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        }
        let estimate = match &self {
            AppError::TooLongToWait {
                calls,
                seconds,
                max_wait,
                ..
            } => Some((*calls, *seconds, *max_wait)),
            _ => None,
        };
        let body = serde_json::to_vec(&Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
            param,
            estimated_calls: estimate.map(|e| e.0),
            estimated_seconds: estimate.map(|e| e.1),
            max_wait_seconds: estimate.map(|e| e.2),
        })
        .unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let AppError::KeyRateLimited { retry_after }
        | AppError::BudgetExhausted { retry_after }
        | AppError::TooMuchWork { retry_after, .. }
        | AppError::TooLongToWait { retry_after, .. } = &self
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after).max(1)),
            );
        }
        if matches!(
            self,
            AppError::TooManyJobs { .. } | AppError::TooManyStreams { .. }
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
        }
        if matches!(self, AppError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The error answers as the OpenAPI document tells them, each described once and given the
/// status [`AppError::status`] chooses: a handler's `#[utoipa::path(responses(...))]` names
/// the ones it can give. Every body is a [`Problem`].
pub mod problems {
    use std::{collections::BTreeMap, time::Duration};

    use utoipa::{
        IntoResponses, PartialSchema, ToSchema,
        openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder, response::Response},
    };

    use super::{AppError, PROBLEM_JSON, Problem};

    /// One problem+json answer: `error`'s status, with `description`; `retry` adds the
    /// headers that say when to come back (`Retry-After`, and where the budgets stand).
    fn problem(
        error: AppError,
        description: &str,
        retry: bool,
    ) -> BTreeMap<String, RefOr<Response>> {
        let mut response = ResponseBuilder::new().description(description).content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(Problem::name())))
                .build(),
        );
        if retry {
            for (name, schema) in [
                ("Retry-After", u64::schema()),
                ("RateLimit-Policy", String::schema()),
                ("RateLimit", String::schema()),
            ] {
                response = response.header(name, HeaderBuilder::new().schema(schema).build());
            }
        }
        BTreeMap::from([(error.status().as_str().to_owned(), response.build().into())])
    }

    /// 400: a parameter is missing, malformed or out of range.
    pub struct BadParam;

    impl IntoResponses for BadParam {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(AppError::param("", ""), "Bad parameter", false)
        }
    }

    /// 401: no key, or one the gateway does not know.
    pub struct Unauthorized;

    impl IntoResponses for Unauthorized {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(AppError::Unauthorized, "Missing or unknown API key", false)
        }
    }

    /// 403: a key that is not an admin key on an admin route.
    pub struct Forbidden;

    impl IntoResponses for Forbidden {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(AppError::Forbidden, "Not an admin key", false)
        }
    }

    /// 403: the key may not read the account it names (GATEWAY_KEY_ACCOUNTS).
    pub struct AccountForbidden;

    impl IntoResponses for AccountForbidden {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(
                AppError::AccountForbidden {
                    account: String::new(),
                },
                "This key may not read the account named (GATEWAY_KEY_ACCOUNTS); the problem names it",
                false,
            )
        }
    }

    /// 429: the key's own rate limit, or its limit of jobs under way.
    pub struct RateLimited;

    impl IntoResponses for RateLimited {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(
                AppError::KeyRateLimited {
                    retry_after: Duration::ZERO,
                },
                "This key's rate limit exceeded, or it has too many jobs under way",
                true,
            )
        }
    }

    /// 406: no `format`, and `Accept` accepts none of the route's media types.
    pub struct NotAcceptable;

    impl IntoResponses for NotAcceptable {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(
                AppError::NotAcceptable { offered: "" },
                "No `format` was given and `Accept` accepts none of the media types the route offers (RFC 9110 §12.5.1: q-values, `q=0` excludes)",
                false,
            )
        }
    }

    /// 502: the upstream failed after retries.
    pub struct UpstreamFailed;

    impl IntoResponses for UpstreamFailed {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(
                AppError::Upstream(String::new()),
                "Upstream failed after retries",
                false,
            )
        }
    }

    /// 503: the shared budget cannot serve the request in time, or the request needs more
    /// calls than one request may make.
    pub struct BudgetExhausted;

    impl IntoResponses for BudgetExhausted {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(
                AppError::BudgetExhausted {
                    retry_after: Duration::ZERO,
                },
                "Upstream budget exhausted, the range needs more of the budget than KORE_MAX_WAIT allows (said before any call: `estimated_calls`, `estimated_seconds`, `max_wait_seconds`; `Prefer: respond-async` makes it a job), or the request needs more upstream calls than MAX_CALLS_PER_REQUEST (the detail names the estimate; what was fetched stays cached)",
                true,
            )
        }
    }

    /// 504: the upstream did not answer in time.
    pub struct UpstreamTimeout;

    impl IntoResponses for UpstreamTimeout {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            problem(AppError::UpstreamTimeout, "Upstream timed out", false)
        }
    }
}

//! The vendor client: one `reqwest::Client`, the request body and headers the vendor wants,
//! and the translation of whatever comes back into a [`Page`] or an [`UpstreamError`] that
//! says what it *means* (retry it, re-mint the token, give up). Budget and retries live in
//! `fetch`; this module makes exactly one HTTP call per method call.

pub mod jwt;

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    config::{OffsetMode, UpstreamSettings},
    plan::Window,
};

pub use jwt::JwtMinter;

/// Most records the vendor returns per page.
pub const PAGE_LIMIT: u32 = 100;
/// Highest page index the vendor accepts (so 11 pages a query).
pub const MAX_PAGE: u32 = 10;
/// Most records one window query can reach.
pub const MAX_REACH: u64 = (PAGE_LIMIT as u64) * (MAX_PAGE as u64 + 1);

/// The optional parts of an upstream query, normalised (sorted, de-duplicated) so that equal
/// meanings give equal cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Filters {
    pub channels: Vec<String>,
    pub queues: Vec<String>,
    pub bots: Vec<String>,
    /// `selectedFields`.
    pub fields: Vec<String>,
}

impl Filters {
    /// Sorts and de-duplicates every list.
    pub fn normalized(mut self) -> Self {
        for l in [
            &mut self.channels,
            &mut self.queues,
            &mut self.bots,
            &mut self.fields,
        ] {
            l.sort_unstable();
            l.dedup();
        }
        self
    }
}

/// What went wrong with one upstream call, by meaning.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// 400: our request was refused; retrying will not help.
    #[error("upstream refused the request (400): {0}")]
    BadRequest(String),
    /// 401/403: the token was refused.
    #[error("upstream refused the credentials ({0})")]
    Unauthorized(u16),
    /// 429: over the vendor's rate limit.
    #[error("upstream rate limit (429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, a reset connection, or a body that is not complete JSON.
    #[error("transient upstream failure: {0}")]
    Transient(String),
    /// No answer within KORE_TIMEOUT.
    #[error("upstream call timed out")]
    Timeout,
    /// Our own budget could not grant the call within KORE_MAX_WAIT.
    #[error("upstream budget exhausted")]
    Budget { retry_after: Duration },
    /// The request would need more upstream calls than MAX_CALLS_PER_REQUEST allows.
    #[error("the request needs about {estimate} upstream calls, more than the {limit} allowed")]
    OverCallBudget {
        estimate: u64,
        limit: u32,
        retry_after: Duration,
    },
    /// Anything else unexpected (an unknown status).
    #[error("unexpected upstream answer: {0}")]
    Unexpected(String),
}

impl UpstreamError {
    /// Worth another attempt after a pause.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::RateLimited { .. }
                | UpstreamError::Transient(_)
                | UpstreamError::Timeout
        )
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::BadRequest(_) => "400",
            UpstreamError::Unauthorized(_) => "401",
            UpstreamError::RateLimited { .. } => "429",
            UpstreamError::Transient(_) => "transient",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Budget { .. } => "budget",
            UpstreamError::OverCallBudget { .. } => "over_call_budget",
            UpstreamError::Unexpected(_) => "unexpected",
        }
    }
}

/// One page as the vendor returned it; records stay raw JSON, byte for byte.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(rename = "numResults")]
    pub num_results: Option<u64>,
    pub data: Vec<Box<RawValue>>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "startDate")]
    start_date: String,
    #[serde(rename = "endDate")]
    end_date: String,
    #[serde(rename = "timeZoneOffset")]
    time_zone_offset: i32,
    #[serde(rename = "selectedFields")]
    selected_fields: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    queues: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    bots: &'a [String],
}

/// The vendor endpoint, reached through one shared HTTP client.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    account_id: HeaderValue,
    iid: Option<HeaderValue>,
    jwt: JwtMinter,
    offset_mode: OffsetMode,
    max_body_bytes: usize,
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("endpoint", &self.inner.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// The vendor's route, in axum path syntax (the drop-in endpoint serves the same path).
pub const VENDOR_PATH: &str =
    "/agentassist/api/public/analytics/account/{accountId}/v2/interactionDetails";

/// [`VENDOR_PATH`] for one account.
fn vendor_path(account_id: &str) -> String {
    VENDOR_PATH.replace("{accountId}", account_id)
}

impl UpstreamClient {
    /// Builds the client for the configured endpoint.
    ///
    /// # Errors
    /// A base URL that cannot take the vendor path, or header values that are not valid.
    pub fn new(s: &UpstreamSettings) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let mut endpoint = s.base_url.clone();
        let base_path = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&format!("{base_path}{}", vendor_path(&s.account_id)));
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let account_id = HeaderValue::from_str(&s.account_id)
            .map_err(|_| "KORE_ACCOUNT_ID is not a valid header value")?;
        let iid = s
            .iid
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| "KORE_IID is not a valid header value")?;
        Ok(UpstreamClient {
            inner: Arc::new(Inner {
                http,
                endpoint,
                account_id,
                iid,
                jwt: JwtMinter::new(&s.client_id, &s.client_secret, s.jwt_ttl, s.jwt_jti),
                offset_mode: s.offset_mode,
                max_body_bytes: s.max_body_bytes,
            }),
        })
    }

    /// The configured offset interpretation.
    pub fn offset_mode(&self) -> OffsetMode {
        self.inner.offset_mode
    }

    /// Drops the shared token so the next call re-mints it.
    pub fn invalidate_token(&self) {
        self.inner.jwt.invalidate();
    }

    fn headers(&self, request_id: &str) -> Result<HeaderMap, UpstreamError> {
        let token = self
            .inner
            .jwt
            .token()
            .map_err(|_| UpstreamError::Unexpected("cannot sign the JWT".into()))?;
        let mut h = HeaderMap::new();
        let mut auth = HeaderValue::from_str(token.expose_secret())
            .map_err(|_| UpstreamError::Unexpected("minted token is not a header value".into()))?;
        auth.set_sensitive(true);
        h.insert("auth", auth);
        h.insert("accountId", self.inner.account_id.clone());
        if let Some(iid) = &self.inner.iid {
            h.insert("iId", iid.clone());
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-request-id", v);
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Ok(h)
    }

    /// Fetches page `page` (of `PAGE_LIMIT` records) of `window`.
    ///
    /// # Errors
    /// Any failure, classified by meaning.
    pub async fn fetch_page(
        &self,
        window: &Window,
        filters: &Filters,
        page: u32,
        request_id: &str,
    ) -> Result<Page, UpstreamError> {
        let body = Body {
            start_date: window.vendor_start(),
            end_date: window.vendor_end(),
            time_zone_offset: window.vendor_offset(),
            selected_fields: &filters.fields,
            channels: &filters.channels,
            queues: &filters.queues,
            bots: &filters.bots,
        };
        let body =
            serde_json::to_vec(&body).map_err(|e| UpstreamError::Unexpected(e.to_string()))?;
        let offset = self.inner.offset_mode.offset_param(page, PAGE_LIMIT);
        let query = format!("offset={offset}&limit={PAGE_LIMIT}");
        let (status, headers, bytes) = self.post(&query, Bytes::from(body), request_id).await?;
        classify(status, &headers)?;
        serde_json::from_slice::<Page>(&bytes)
            .map_err(|e| UpstreamError::Transient(format!("body is not a complete page ({e})")))
    }

    /// Sends a raw POST with `query` and `body` (the drop-in route). Returns status, headers
    /// and body as the vendor answered them.
    ///
    /// # Errors
    /// Connection failures and timeouts only; statuses are the caller's to judge.
    pub async fn post(
        &self,
        query: &str,
        body: Bytes,
        request_id: &str,
    ) -> Result<(StatusCode, HeaderMap, Bytes), UpstreamError> {
        let mut url = self.inner.endpoint.clone();
        url.set_query(Some(query));
        let mut headers = self.headers(request_id)?;
        // W3C trace context of the current span (nothing when tracing is off).
        crate::telemetry::inject_current(&mut headers);
        let resp = self
            .inner
            .http
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(map_reqwest)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_capped(resp, self.inner.max_body_bytes).await?;
        Ok((status, headers, bytes))
    }
}

/// The body of `resp`, refused as a transient failure once it passes `max` bytes — whatever
/// `Content-Length` claims — so a runaway answer costs at most `max` bytes of memory.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Bytes, UpstreamError> {
    let too_big = || UpstreamError::Transient(format!("body larger than {max} bytes"));
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Err(too_big());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
        if buf.len() + chunk.len() > max {
            return Err(too_big());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Turns a non-2xx status into its meaning.
///
/// # Errors
/// Every status but 2xx.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Result<(), UpstreamError> {
    match status.as_u16() {
        200..=299 => Ok(()),
        400 | 404 | 413 | 422 => Err(UpstreamError::BadRequest(status.to_string())),
        401 | 403 => Err(UpstreamError::Unauthorized(status.as_u16())),
        429 => Err(UpstreamError::RateLimited {
            retry_after: retry_after(headers),
        }),
        408 | 500..=599 => Err(UpstreamError::Transient(format!("status {status}"))),
        _ => Err(UpstreamError::Unexpected(format!("status {status}"))),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs and is ignored), capped.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(600)))
}

fn map_reqwest(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        // Connection refused/reset, a body cut short: all worth a retry. The URL is left out
        // of the message on purpose (it names the account).
        UpstreamError::Transient(if e.is_connect() {
            "connection failed".into()
        } else if e.is_body() || e.is_decode() {
            "body cut short".into()
        } else {
            "request failed".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_meanings() {
        let mut h = HeaderMap::new();
        assert!(classify(StatusCode::OK, &h).is_ok());
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h),
            Err(UpstreamError::BadRequest(_))
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &h),
            Err(UpstreamError::Unauthorized(401))
        ));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        match classify(StatusCode::TOO_MANY_REQUESTS, &h) {
            Err(UpstreamError::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
        let e = classify(StatusCode::BAD_GATEWAY, &h).unwrap_err();
        assert!(e.is_retryable());
        assert!(!UpstreamError::BadRequest(String::new()).is_retryable());
    }

    #[test]
    fn filters_normalize_to_one_key() {
        let a = Filters {
            channels: vec!["voice".into(), "chat".into(), "voice".into()],
            ..Default::default()
        };
        let b = Filters {
            channels: vec!["chat".into(), "voice".into()],
            ..Default::default()
        };
        assert_eq!(a.normalized(), b.normalized());
    }
}

//! API-key authentication. A presented key is looked up by a randomly keyed SipHash of its
//! bytes (std's `RandomState`, keyed afresh in each process, so a caller can neither predict
//! nor steer which bucket a guess lands in) and then compared in constant time with the
//! configured keys in that bucket: no plain `==` on a secret, and the time taken tells a
//! caller nothing about how close a guess was. Keys never reach `Debug` or the logs.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    hash::BuildHasher,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::{
    extract::Request,
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{AppState, config::ApiKey, error::AppError};

/// Who is calling, attached to the request by [`RequireKey`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub admin: bool,
}

/// One configured key.
struct Known {
    key: SecretString,
    caller: Caller,
}

/// The configured keys, in buckets by the keyed hash of their bytes.
pub struct KeyRing {
    buckets: HashMap<u64, Vec<Known>>,
    hasher: std::hash::RandomState,
    allow_anonymous: bool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self
            .buckets
            .values()
            .flatten()
            .map(|k| &*k.caller.name)
            .collect();
        names.sort_unstable();
        f.debug_struct("KeyRing")
            .field("names", &names)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// Constant-time equality of two byte strings (`subtle`): every byte is looked at whatever
/// differs (a length mismatch is known only to a caller who already hit the bucket, which
/// takes the process's secret hash key).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

impl KeyRing {
    pub fn new(keys: &[ApiKey], allow_anonymous: bool) -> Self {
        let hasher = std::hash::RandomState::new();
        let mut buckets: HashMap<u64, Vec<Known>> = HashMap::new();
        for k in keys {
            buckets
                .entry(hasher.hash_one(k.key.expose_secret().as_bytes()))
                .or_default()
                .push(Known {
                    key: k.key.clone(),
                    caller: Caller {
                        name: Arc::clone(&k.name),
                        admin: k.is_admin(),
                    },
                });
        }
        KeyRing {
            buckets,
            hasher,
            allow_anonymous,
        }
    }

    /// The caller a presented key belongs to.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let bucket = self
            .buckets
            .get(&self.hasher.hash_one(presented.as_bytes()))?;
        let mut found = None;
        // Every key of the bucket is compared, whatever matched.
        for k in bucket {
            if ct_eq(k.key.expose_secret().as_bytes(), presented.as_bytes()) {
                found = Some(k.caller.clone());
            }
        }
        found
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The 429 of a key over its limit, with where its budgets stand.
fn over_limit(state: &AppState, caller: &Arc<str>, retry_after: std::time::Duration) -> Response {
    let mut refused = AppError::KeyRateLimited { retry_after }.into_response();
    let account = state.accounts.default_account().map_or(0, |a| a.index);
    crate::ratelimit_headers::stamp(state, Some(caller), account, refused.headers_mut());
    refused
}

/// Who is calling: the caller, or the answer that refuses the request.
fn identify(state: &AppState, req: &Request) -> Result<Caller, Box<Response>> {
    Ok(match presented_key(req.headers()) {
        Some(k) if !k.is_empty() => state
            .keys
            .identify(k)
            .ok_or_else(|| Box::new(AppError::Unauthorized.into_response()))?,
        _ if state.keys.allow_anonymous => Caller {
            name: "anonymous".into(),
            admin: false,
        },
        _ => return Err(Box::new(AppError::Unauthorized.into_response())),
    })
}

/// What the key layer does, for a route that also takes another credential (the change
/// feed's ticket) and so sits outside it: the caller of the key in `headers`, with the
/// per-key rate limit applied (in Redis with replicas), or the answer that refuses it.
pub async fn admit_headers(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let caller = match presented_key(headers) {
        Some(k) if !k.is_empty() => state
            .keys
            .identify(k)
            .ok_or_else(|| AppError::Unauthorized.into_response())?,
        _ if state.keys.allow_anonymous => Caller {
            name: "anonymous".into(),
            admin: false,
        },
        _ => return Err(AppError::Unauthorized.into_response()),
    };
    if let Some(limiter) = &state.key_limiter {
        let checked = if limiter.is_shared() {
            limiter.check_shared(&caller.name).await
        } else {
            limiter.check(&caller.name)
        };
        if let Err(retry_after) = checked {
            return Err(over_limit(state, &caller.name, retry_after));
        }
    }
    Ok(caller)
}

/// Whether the request presents a key at all (in a header: never in a URL).
pub fn presents_key(headers: &HeaderMap) -> bool {
    presented_key(headers).is_some_and(|k| !k.is_empty())
}

/// Identifies the caller and applies the per-key rate limit kept in this process: the
/// caller, or the answer that refuses the request.
fn admit(state: &AppState, req: &mut Request) -> Result<Arc<str>, Box<Response>> {
    let caller = identify(state, req)?;
    if let Some(limiter) = &state.key_limiter
        && let Err(retry_after) = limiter.check(&caller.name)
    {
        return Err(Box::new(over_limit(state, &caller.name, retry_after)));
    }
    let name = Arc::clone(&caller.name);
    req.extensions_mut().insert(caller);
    Ok(name)
}

/// The layer of every keyed route: identifies the caller ([`Caller`] in the request's
/// extensions), applies the per-key rate limit, and stamps every keyed answer (429 and 503
/// included) with where the key and the upstream budget stand. 401 for no or an unknown
/// key, 429 over GATEWAY_KEY_RATE_LIMIT. Hand-written rather than `from_fn`: it runs on
/// every hit, and this way costs no boxed future and no clone of the inner service.
#[derive(Clone)]
pub struct RequireKeyLayer(pub AppState);

impl<S> tower::Layer<S> for RequireKeyLayer {
    type Service = RequireKey<S>;
    fn layer(&self, inner: S) -> RequireKey<S> {
        RequireKey {
            state: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`RequireKeyLayer`].
#[derive(Clone)]
pub struct RequireKey<S> {
    state: AppState,
    inner: S,
}

impl<S> tower::Service<Request> for RequireKey<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = KeyedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if self
            .state
            .key_limiter
            .as_ref()
            .is_some_and(|l| l.is_shared())
        {
            return self.call_shared(req);
        }
        match admit(&self.state, &mut req) {
            Ok(name) => KeyedFuture::Admitted {
                inner: self.inner.call(req),
                state: self.state.clone(),
                name,
            },
            Err(refused) => KeyedFuture::Refused {
                answer: Some(*refused),
            },
        }
    }
}

impl<S> RequireKey<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// With replicas, the key's limit is counted in Redis: the check awaits it before the
    /// inner service is called (a boxed future only in this configuration).
    fn call_shared(&mut self, mut req: Request) -> KeyedFuture<S::Future> {
        let caller = match identify(&self.state, &req) {
            Ok(c) => c,
            Err(refused) => {
                return KeyedFuture::Refused {
                    answer: Some(*refused),
                };
            }
        };
        let state = self.state.clone();
        // The service made ready goes with the request; a clone stays for the next call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        KeyedFuture::Checking {
            fut: Box::pin(async move {
                let name = Arc::clone(&caller.name);
                if let Some(limiter) = &state.key_limiter
                    && let Err(retry_after) = limiter.check_shared(&name).await
                {
                    return Ok(over_limit(&state, &name, retry_after));
                }
                req.extensions_mut().insert(caller);
                let Ok(mut resp) = inner.call(req).await;
                crate::ratelimit_headers::stamp_response(&state, Some(&name), &mut resp);
                Ok(resp)
            }),
        }
    }
}

/// A keyed answer that awaited the shared key limit.
type Checked = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// The answer of [`RequireKey`].
    #[project = KeyedProj]
    pub enum KeyedFuture<F> {
        Refused { answer: Option<Response> },
        Admitted { #[pin] inner: F, state: AppState, name: Arc<str> },
        Checking { fut: Checked },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for KeyedFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            KeyedProj::Refused { answer } => Poll::Ready(Ok(answer.take().unwrap_or_else(|| {
                AppError::Internal("polled after completion".into()).into_response()
            }))),
            KeyedProj::Admitted { inner, state, name } => {
                let Ok(mut resp) = ready!(inner.poll(cx));
                crate::ratelimit_headers::stamp_response(state, Some(name), &mut resp);
                Poll::Ready(Ok(resp))
            }
            KeyedProj::Checking { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// Middleware for admin routes (after [`RequireKeyLayer`]).
///
/// # Errors
/// 403 for a key whose name does not start with `admin`.
pub async fn require_admin(req: Request, next: Next) -> Result<Response, AppError> {
    match req.extensions().get::<Caller>() {
        Some(c) if c.admin => Ok(next.run(req).await),
        Some(_) => Err(AppError::Forbidden),
        None => Err(AppError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_api_keys;

    #[test]
    fn identifies_known_keys_only() {
        let ring = KeyRing::new(
            &parse_api_keys("team:team-key-1,admin-x:admin-key-1").unwrap(),
            false,
        );
        assert_eq!(&*ring.identify("team-key-1").unwrap().name, "team");
        assert!(ring.identify("admin-key-1").unwrap().admin);
        assert!(ring.identify("team-key-2").is_none());
        assert!(ring.identify("").is_none());
        assert!(!format!("{ring:?}").contains("team-key-1"));
    }

    #[test]
    fn reads_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }
}

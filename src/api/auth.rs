//! API-key authentication. Keys are compared as SHA-256 digests in constant time, against
//! every configured key, so neither timing nor length tells a caller how close a guess was.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::{AppState, config::ApiKey, error::AppError};

/// Who is calling, attached to the request by [`require_key`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub admin: bool,
}

/// The configured keys, as digests.
pub struct KeyRing {
    keys: Vec<(Arc<str>, [u8; 32], bool)>,
    allow_anonymous: bool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _, _)| &**n).collect();
        f.debug_struct("KeyRing")
            .field("names", &names)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl KeyRing {
    pub fn new(keys: &[ApiKey], allow_anonymous: bool) -> Self {
        KeyRing {
            keys: keys
                .iter()
                .map(|k| {
                    (
                        Arc::clone(&k.name),
                        digest(k.key.expose_secret()),
                        k.is_admin(),
                    )
                })
                .collect(),
            allow_anonymous,
        }
    }

    /// The caller a presented key belongs to.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented);
        let mut found = None;
        // Look at every key, whatever matched, so the time taken does not depend on which.
        for (name, kd, admin) in &self.keys {
            if ct_eq(&d, kd) {
                found = Some(Caller {
                    name: Arc::clone(name),
                    admin: *admin,
                });
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

/// Middleware for every keyed route: identifies the caller, applies the per-key rate limit.
///
/// # Errors
/// 401 for no or an unknown key, 429 over GATEWAY_KEY_RATE_LIMIT.
pub async fn require_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let caller = match presented_key(req.headers()) {
        Some(k) if !k.is_empty() => state.keys.identify(k).ok_or(AppError::Unauthorized)?,
        _ if state.keys.allow_anonymous => Caller {
            name: "anonymous".into(),
            admin: false,
        },
        _ => return Err(AppError::Unauthorized),
    };
    if let Some(limiter) = &state.key_limiter
        && let Err(retry_after) = limiter.check(&caller.name)
    {
        let mut refused = AppError::KeyRateLimited { retry_after }.into_response();
        crate::ratelimit_headers::stamp(&state, Some(&caller.name), refused.headers_mut());
        return Ok(refused);
    }
    let name = Arc::clone(&caller.name);
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    // Every keyed answer (429 and 503 included) says where the key and the upstream budget stand.
    crate::ratelimit_headers::stamp(&state, Some(&name), resp.headers_mut());
    Ok(resp)
}

/// Middleware for admin routes (after [`require_key`]).
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

//! JWT minting: HS256 over `{"appId", "iat", "exp"[, "jti"]}`, signed with the client secret.
//!
//! One token is shared by all calls and re-minted when less than a fifth of its lifetime is
//! left, so a call never leaves with a token about to expire. Accounts that enforce `jti`
//! (a token id that may not be reused) get a fresh token per call instead.
//! Neither the secret nor a token ever appears in `Debug` output or a log line.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(rename = "appId")]
    app_id: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// Mints and caches the upstream token.
pub struct JwtMinter {
    client_id: String,
    key: EncodingKey,
    ttl: Duration,
    per_call_jti: bool,
    current: Mutex<Option<(SecretString, u64)>>,
}

impl fmt::Debug for JwtMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtMinter")
            .field("client_id", &self.client_id)
            .field("key", &"[REDACTED]")
            .field("ttl", &self.ttl)
            .field("per_call_jti", &self.per_call_jti)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtMinter {
    pub fn new(client_id: &str, secret: &SecretString, ttl: Duration, per_call_jti: bool) -> Self {
        JwtMinter {
            client_id: client_id.to_owned(),
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            ttl,
            per_call_jti,
            current: Mutex::new(None),
        }
    }

    fn mint(&self, now: u64) -> Result<(SecretString, u64), jsonwebtoken::errors::Error> {
        let exp = now + self.ttl.as_secs();
        let jti = self
            .per_call_jti
            .then(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
        let claims = Claims {
            app_id: &self.client_id,
            iat: now,
            exp,
            jti,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)?;
        Ok((SecretString::from(token), exp))
    }

    /// A token valid for at least a fifth of its lifetime.
    ///
    /// # Errors
    /// Only if signing itself fails (it does not for HS256 with any key).
    pub fn token(&self) -> Result<SecretString, jsonwebtoken::errors::Error> {
        let now = unix_now();
        if self.per_call_jti {
            return Ok(self.mint(now)?.0);
        }
        let margin = (self.ttl.as_secs() / 5).max(5);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tok, exp)) = cur.as_ref()
            && *exp > now + margin
        {
            return Ok(tok.clone());
        }
        let (tok, exp) = self.mint(now)?;
        *cur = Some((tok.clone(), exp));
        Ok(tok)
    }

    /// Forgets the shared token (after the upstream refused it), so the next call re-mints.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn shared_token_is_reused_and_carries_app_id_and_expiry() {
        let m = JwtMinter::new(
            "cs-123",
            &SecretString::from("topsecret".to_owned()),
            Duration::from_secs(300),
            false,
        );
        let a = m.token().unwrap();
        let b = m.token().unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        let p = payload(a.expose_secret());
        assert_eq!(p["appId"], "cs-123");
        assert_eq!(p["exp"].as_u64().unwrap() - p["iat"].as_u64().unwrap(), 300);
        assert!(p.get("jti").is_none());
        m.invalidate();
        let c = m.token().unwrap();
        assert_eq!(payload(c.expose_secret())["appId"], "cs-123");
    }

    #[test]
    fn jti_mode_mints_unique_tokens() {
        let m = JwtMinter::new(
            "cs-1",
            &SecretString::from("k".to_owned()),
            Duration::from_secs(60),
            true,
        );
        let a = payload(m.token().unwrap().expose_secret());
        let b = payload(m.token().unwrap().expose_secret());
        assert_ne!(a["jti"], b["jti"]);
        assert!(a["jti"].as_str().is_some_and(|s| s.len() == 32));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let m = JwtMinter::new(
            "cs-1",
            &SecretString::from("hunter2-secret".to_owned()),
            Duration::from_secs(60),
            false,
        );
        let _ = m.token().unwrap();
        let dbg = format!("{m:?}");
        assert!(
            !dbg.contains("hunter2-secret") && !dbg.contains("eyJ"),
            "{dbg}"
        );
    }
}

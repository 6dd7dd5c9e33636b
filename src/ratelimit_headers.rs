//! The budgets in every keyed answer: `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers, the structured-field syntax of drafts 08–11).
//!
//! Two named policies: `"key"` — the caller's own `GATEWAY_KEY_RATE_LIMIT`, when set — and
//! `"upstream"` — the account's shared `KORE_RATE_LIMIT`, which every key draws on:
//!
//! ```text
//! RateLimit-Policy: "key";q=100;w=60, "upstream";q=60;w=60
//! RateLimit: "key";r=97;t=58, "upstream";r=42;t=17
//! ```
//!
//! `r` is what is left in the sliding window now (for the upstream, less the calls already
//! waiting), `t` the seconds until the oldest counted unit leaves the window, when `r`
//! grows again (0 when nothing is counted). Both windows slide, so `t` is the time to the
//! next unit back, never a fixed reset. The 429 and 503 answers carry the fields too.

use std::{sync::Arc, time::Duration};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::AppState;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One policy's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: &'static str,
    pub quota: u32,
    pub window: Duration,
    pub remaining: u32,
    pub reset: Duration,
}

/// Whole seconds, rounded up (a unit back in 0.2 s is back "in 1 s", never "in 0 s").
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-Policy` and `RateLimit` values for `policies`, each written once into its own
/// buffer (these headers are on every keyed answer, hits included).
pub fn render(policies: &[PolicyState]) -> (String, String) {
    let mut policy = String::with_capacity(48);
    let mut state = String::with_capacity(48);
    for p in policies {
        write_item(
            &mut policy,
            p.name,
            ("q", p.quota.into()),
            ("w", secs_up(p.window)),
        );
        write_state(&mut state, p);
    }
    (policy, state)
}

/// One policy's item of `RateLimit`: `"name";r=…;t=…`.
fn write_state(out: &mut String, p: &PolicyState) {
    write_item(
        out,
        p.name,
        ("r", p.remaining.into()),
        ("t", secs_up(p.reset)),
    );
}

/// `"name";a=…;b=…`, after a `, ` when `out` already holds an item. Pushed piece by piece:
/// this runs on every keyed answer, and `write!` cost more than the rest of it.
fn write_item(out: &mut String, name: &str, a: (&str, u64), b: (&str, u64)) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push('"');
    out.push_str(name);
    out.push('"');
    let mut digits = itoa::Buffer::new();
    for (k, v) in [a, b] {
        out.push(';');
        out.push_str(k);
        out.push('=');
        out.push_str(digits.format(v));
    }
}

/// Which account's budget an answer drew on, left in the response's extensions by the data
/// routes (the default account's budget is reported when absent).
#[derive(Debug, Clone, Copy)]
pub struct AccountUsed(pub usize);

/// The policies that apply to `caller` on the account at `account` now: the key's (when
/// GATEWAY_KEY_RATE_LIMIT is set), then that account's upstream budget.
pub fn policies(
    state: &AppState,
    caller: Option<&Arc<str>>,
    account: usize,
) -> impl Iterator<Item = PolicyState> {
    let key = match (&state.key_limiter, caller) {
        (Some(limiter), Some(caller)) => {
            let (remaining, reset) = limiter.remaining(caller);
            Some(PolicyState {
                name: "key",
                quota: limiter.rate().calls,
                window: limiter.rate().period,
                remaining,
                reset,
            })
        }
        _ => None,
    };
    let upstream = state
        .accounts
        .at(account)
        .or_else(|| state.accounts.default_account())
        .or_else(|| state.accounts.all().first())
        .map(|a| {
            let budget = a.fetcher.budget();
            let (remaining, reset) = budget.remaining();
            PolicyState {
                name: "upstream",
                quota: budget.rate().calls,
                window: budget.rate().period,
                remaining,
                reset,
            }
        });
    key.into_iter().chain(upstream)
}

/// The `RateLimit-Policy` values, which depend only on the configuration: made once, per
/// account (each has its own rate).
#[derive(Debug)]
pub struct PolicyValues {
    by_account: Vec<AccountPolicy>,
}

#[derive(Debug)]
struct AccountPolicy {
    /// For a keyed caller (the `"key"` policy first when GATEWAY_KEY_RATE_LIMIT is set).
    keyed: Option<HeaderValue>,
    /// Without a caller: the upstream budget alone.
    anonymous: Option<HeaderValue>,
}

impl PolicyValues {
    /// The values for a key limit `key` (if any) and each account's upstream budget, in
    /// account order.
    pub fn new(
        key: Option<crate::config::Rate>,
        upstreams: impl Iterator<Item = crate::config::Rate>,
    ) -> Self {
        PolicyValues {
            by_account: upstreams.map(|u| AccountPolicy::new(key, u)).collect(),
        }
    }
}

impl AccountPolicy {
    fn new(key: Option<crate::config::Rate>, upstream: crate::config::Rate) -> Self {
        let policy = |name, rate: crate::config::Rate| PolicyState {
            name,
            quota: rate.calls,
            window: rate.period,
            remaining: 0,
            reset: Duration::ZERO,
        };
        let value = |ps: &[PolicyState]| HeaderValue::from_str(&render(ps).0).ok();
        let upstream = policy("upstream", upstream);
        let keyed = match key {
            Some(k) => value(&[policy("key", k), upstream.clone()]),
            None => value(std::slice::from_ref(&upstream)),
        };
        AccountPolicy {
            keyed,
            anonymous: value(&[upstream]),
        }
    }
}

/// Sets both fields on a response for `caller`, for the account the response says it used
/// ([`AccountUsed`]) or the default one.
pub fn stamp_response(
    state: &AppState,
    caller: Option<&Arc<str>>,
    resp: &mut axum::response::Response,
) {
    let account = resp
        .extensions()
        .get::<AccountUsed>()
        .map(|a| a.0)
        .or_else(|| state.accounts.default_account().map(|a| a.index))
        .unwrap_or(0);
    stamp(state, caller, account, resp.headers_mut());
}

/// Sets both fields on `headers` for `caller` on the account at `account`.
pub fn stamp(state: &AppState, caller: Option<&Arc<str>>, account: usize, headers: &mut HeaderMap) {
    let mut now = String::with_capacity(48);
    for p in policies(state, caller, account) {
        write_state(&mut now, &p);
    }
    let Some(values) = state
        .ratelimit_policy
        .by_account
        .get(account)
        .or_else(|| state.ratelimit_policy.by_account.first())
    else {
        return;
    };
    let policy = if caller.is_some() {
        &values.keyed
    } else {
        &values.anonymous
    };
    // The String becomes the value's buffer (no second copy).
    if let (Some(p), Ok(n)) = (
        policy,
        HeaderValue::from_maybe_shared(bytes::Bytes::from(now)),
    ) {
        headers.insert(RATELIMIT_POLICY.clone(), p.clone());
        headers.insert(RATELIMIT.clone(), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_drafts_structured_fields() {
        let (policy, now) = render(&[
            PolicyState {
                name: "key",
                quota: 100,
                window: Duration::from_secs(60),
                remaining: 97,
                reset: Duration::from_millis(57_200),
            },
            PolicyState {
                name: "upstream",
                quota: 60,
                window: Duration::from_secs(60),
                remaining: 0,
                reset: Duration::ZERO,
            },
        ]);
        assert_eq!(policy, r#""key";q=100;w=60, "upstream";q=60;w=60"#);
        assert_eq!(now, r#""key";r=97;t=58, "upstream";r=0;t=0"#);
        let (policy, now) = render(&[PolicyState {
            name: "upstream",
            quota: u32::MAX,
            window: Duration::from_secs(86_400),
            remaining: 1_000_000,
            reset: Duration::from_millis(3_600_001),
        }]);
        assert_eq!(policy, format!(r#""upstream";q={};w=86400"#, u32::MAX));
        assert_eq!(now, r#""upstream";r=1000000;t=3601"#);
    }
}

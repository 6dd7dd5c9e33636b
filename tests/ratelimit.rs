//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the caller's
//! key limit and the shared upstream budget, counted down and restored as the sliding
//! windows move, on ordinary answers and on the 429 and 503 refusals.

mod common;

use std::time::Duration;

use common::*;
use kore_gateway::config::Rate;

/// (remaining, reset seconds) of policy `name` in a `RateLimit` value.
fn state_of(resp: &reqwest::Response, name: &str) -> (u64, u64) {
    let value = resp
        .headers()
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no RateLimit header on a {}", resp.status()));
    let member = value
        .split(',')
        .map(str::trim)
        .find(|m| m.starts_with(&format!("\"{name}\";")))
        .unwrap_or_else(|| panic!("no {name} policy in {value}"));
    let param = |p: &str| -> u64 {
        member
            .split(';')
            .find_map(|kv| kv.strip_prefix(&format!("{p}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {p} in {member}"))
    };
    (param("r"), param("t"))
}

fn policy(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .expect("RateLimit-Policy")
        .to_owned()
}

#[tokio::test]
async fn the_key_limit_counts_down_refuses_and_comes_back() {
    let h = Harness::start(Opts {
        key_rate_limit: Some(Rate {
            calls: 4,
            period: Duration::from_secs(3),
        }),
        ..Opts::default()
    })
    .await;
    // A cheap answer (one upstream call, then cached): the key limit counts every request.
    let path = "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=1";
    let first = h.get(path).await;
    assert_eq!(first.status(), 200);
    assert_eq!(policy(&first), r#""key";q=4;w=3, "upstream";q=10000;w=1"#);
    let mut seen = vec![state_of(&first, "key").0];
    for _ in 0..3 {
        seen.push(state_of(&h.get(path).await, "key").0);
    }
    assert_eq!(seen, [3, 2, 1, 0], "remaining counts down per request");
    let refused = h.get(path).await;
    assert_eq!(refused.status(), 429);
    let (r, t) = state_of(&refused, "key");
    assert_eq!(r, 0);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&t), "t={t}");
    assert_eq!(t, retry, "t says when a unit is back, as Retry-After does");
    // Another key has its own window.
    let other = h.get_with(path, Some(KEY_B)).await;
    assert_eq!(state_of(&other, "key").0, 3);
    // Once the window has slid past, the key's quota is back.
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(200)).await;
    let back = h.get(path).await;
    assert_eq!(back.status(), 200);
    assert_eq!(
        state_of(&back, "key").0,
        3,
        "a full window again, less this request"
    );
    h.finish();
}

#[tokio::test]
async fn the_upstream_budget_counts_down_with_calls_and_comes_back() {
    let period = Duration::from_secs(3);
    let h = Harness::start(Opts {
        rate: Rate { calls: 4, period },
        sim_rate_limit: Some((4, period)),
        max_wait: Duration::from_millis(200),
        ..Opts::default()
    })
    .await;
    // No key limit configured: only the upstream policy.
    let idle = h.get("/v1/jobs").await;
    assert_eq!(policy(&idle), r#""upstream";q=4;w=3"#);
    assert_eq!(state_of(&idle, "upstream"), (4, 0));
    // Three cold one-day ranges: one call each (a quiet day fits one page).
    let mut left = Vec::new();
    for day in ["2024-09-24", "2024-09-25", "2024-09-26"] {
        let resp = h
            .get(&format!("/v1/interactions?from={day}&to={day}&limit=1"))
            .await;
        assert_eq!(resp.status(), 200);
        left.push(state_of(&resp, "upstream").0);
    }
    assert_eq!(h.calls(), 3);
    assert_eq!(left, [3, 2, 1], "one call each");
    // A range needing more calls than are left within KORE_MAX_WAIT: 503, with the fields,
    // said before it spends (SPEC §6, 2026-12-04): the call left is still there.
    let refused = h
        .get("/v1/interactions?from=2024-07-01&to=2024-07-31&limit=1")
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(h.calls(), 3, "refused before any call");
    let (r, t) = state_of(&refused, "upstream");
    assert_eq!(r, 1, "the call left was not spent");
    // The oldest call leaves the window one period (plus the budget's margin of 1 %, at
    // least 5 ms) after it completed; refused at once, that can read as the 4th second.
    assert!((1..=4).contains(&t), "t={t}");
    // After one period without calls the whole budget is back.
    tokio::time::sleep(period + Duration::from_millis(300)).await;
    let back = h.get("/v1/jobs").await;
    assert_eq!(state_of(&back, "upstream"), (4, 0));
    h.finish();
}

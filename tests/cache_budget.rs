//! Cache, coalescing, shared budget and resilience, against the simulator over real HTTP.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::*;
use kore_gateway::config::Rate;
use kore_sim::{FaultKind, Faults};
use serde_json::Value;

const MONTH: &str = "/v1/interactions?from=2024-09-01&to=2024-09-30&limit=10000";

#[tokio::test]
async fn a_repeat_makes_no_upstream_call_and_revalidates_by_etag() {
    let h = Harness::start(Opts::default()).await;
    let first = h.get(MONTH).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    let calls = h.calls();
    assert!(calls > 0);

    let again = h.get(MONTH).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(
        again.headers()["etag"].to_str().unwrap(),
        etag,
        "same data, same ETag"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["data"], first["data"]);
    assert_eq!(again["meta"]["cache"], "HIT");
    assert_eq!(again["meta"]["upstream_calls"], 0);
    assert_eq!(h.calls(), calls, "the repeat made no upstream call");

    let not_modified = h
        .http
        .get(format!("{}{MONTH}", h.base))
        .bearer_auth(KEY)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(h.calls(), calls);

    // A different page of the same range is served from the window cache (no upstream call).
    let page = h
        .json("/v1/interactions?from=2024-09-01&to=2024-09-30&limit=50")
        .await;
    assert_eq!(page["meta"]["cache"], "HIT");
    assert_eq!(h.calls(), calls);

    // A team key's no-cache is ignored; an admin's forces a refetch.
    let team = h
        .http
        .get(format!("{}{MONTH}", h.base))
        .bearer_auth(KEY)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(team.headers()["x-cache"], "HIT");
    let admin = h
        .http
        .get(format!("{}{MONTH}", h.base))
        .bearer_auth(ADMIN_KEY)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.headers()["x-cache"], "MISS");
    assert_eq!(h.calls(), calls * 2);

    let stats: Value = h
        .get_with("/v1/cache", Some(ADMIN_KEY))
        .await
        .json()
        .await
        .unwrap();
    assert!(stats["window_entries"].as_u64().unwrap() >= 6, "{stats}");
    assert!(stats["window_bytes"].as_u64().unwrap() > 100_000, "{stats}");
    assert!(stats["hit_ratio"].as_f64().unwrap() > 0.0);
    let purge = h
        .http
        .delete(format!("{}/v1/cache", h.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    let purged: Value = purge.json().await.unwrap();
    assert_eq!(
        purged["memory"]["windows"], stats["window_entries"],
        "{purged}"
    );
    assert_eq!(purged["memory"]["responses"], stats["response_entries"]);
    assert!(purged["redis"].is_null(), "no Redis configured: {purged}");
    assert_eq!(
        h.get(MONTH).await.headers()["x-cache"],
        "MISS",
        "a purge empties both caches"
    );
    h.finish();
}

#[tokio::test]
async fn a_range_shifted_by_a_day_fetches_only_the_changed_windows() {
    let h = Harness::start(Opts::default()).await;
    h.json("/v1/interactions?from=2024-09-01&to=2024-09-30&limit=1")
        .await;
    h.sim.reset_log();
    let shifted = h
        .json("/v1/interactions?from=2024-09-02&to=2024-10-01&limit=1")
        .await;
    assert_eq!(shifted["meta"]["cache"], "PARTIAL");
    // Sep 2 starts a grid week (a Monday) and was fetched before; Sep 30 – Oct 1 is the only
    // new window. Every call made now must fall inside it (split into parts if dense).
    let (new_from, new_to) = (
        at("2024-09-30T00:00:00", "UTC"),
        at("2024-10-01T23:59:59", "UTC"),
    );
    let calls = h.sim.calls();
    assert!(!calls.is_empty());
    for c in &calls {
        let (s, e) = (c.start_utc.unwrap(), c.end_utc.unwrap());
        assert!(
            s >= new_from && e <= new_to,
            "refetched an unchanged window: {s} .. {e}"
        );
    }
    h.finish();
}

#[tokio::test]
async fn twenty_identical_cold_requests_make_the_calls_of_one() {
    let one = Harness::start(Opts {
        sim_latency: Duration::from_millis(30),
        ..Opts::default()
    })
    .await;
    one.json(MONTH).await;
    let single = one.calls();
    one.finish();

    let h = Arc::new(
        Harness::start(Opts {
            sim_latency: Duration::from_millis(30),
            ..Opts::default()
        })
        .await,
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move { h.json(MONTH).await }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert_eq!(bodies.len(), 20);
    assert!(
        !bodies[0]["data"].as_array().unwrap().is_empty(),
        "the month has records"
    );
    assert!(bodies.iter().all(|b| b["data"] == bodies[0]["data"]));
    assert_eq!(
        h.calls(),
        single,
        "20 concurrent cold requests made {} calls; one makes {single}",
        h.calls()
    );
    println!(
        "coalescing: 20 concurrent cold requests -> {} upstream calls (one request alone: {single})",
        h.calls()
    );
    Arc::try_unwrap(h).ok().expect("sole owner").finish();
}

#[tokio::test]
async fn with_20_percent_faults_every_answer_is_whole_and_true_or_an_explicit_error() {
    let faults = Faults {
        error_rate: 0.2,
        kinds: vec![
            FaultKind::Status500,
            FaultKind::Status502,
            FaultKind::Status503,
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
            },
            FaultKind::DropConnection,
            FaultKind::TruncatedBody,
        ],
        ..Faults::default()
    };
    let h = Harness::start(Opts {
        faults,
        retries: 4,
        ..Opts::default()
    })
    .await;
    let (mut whole, mut errors, mut wrong) = (0, 0, 0);
    for (from, to, tz) in [
        ("2024-08-01", "2024-08-20", "UTC"),
        ("2024-08-05", "2024-08-31", "Asia/Kolkata"),
        ("2024-09-01", "2024-09-30", "UTC"),
        ("2024-10-20", "2024-11-10", "America/New_York"),
        ("2024-07-01", "2024-07-09", "Europe/London"),
        ("2024-06-01", "2024-06-30", "UTC"),
        ("2024-05-10", "2024-05-12", "Australia/Sydney"),
        ("2024-04-01", "2024-04-28", "UTC"),
    ] {
        let resp = h
            .get(&format!(
                "/v1/interactions?from={from}&to={to}&tz={tz}&limit=10000"
            ))
            .await;
        let status = resp.status().as_u16();
        if status >= 500 {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            errors += 1;
            continue;
        }
        assert_eq!(status, 200);
        let body: Value = resp.json().await.unwrap();
        if body["meta"]["complete"] != true {
            // Said so: not silently wrong.
            errors += 1;
            continue;
        }
        // The simulator's truth, cut only where the zone's offset changes (not the planner's).
        let (f, t) = (
            at(&format!("{from}T00:00:00"), tz),
            at(&format!("{to}T23:59:59"), tz),
        );
        let truth = truth_in_zone(&h.sim, f, t, tz, &all_fields());
        assert!(!truth.is_empty(), "{from}..{to} {tz} holds records");
        let got = body["data"].as_array().unwrap();
        let got_ids: HashSet<_> = got.iter().map(id).collect();
        let truth_ids: HashSet<_> = truth.iter().map(id).collect();
        let same_values = truth.iter().all(|t| got.iter().any(|g| g == t));
        if got.len() == truth.len() && got_ids == truth_ids && same_values {
            whole += 1;
        } else {
            wrong += 1;
        }
    }
    let injected = h.sim.calls().iter().filter(|c| c.fault.is_some()).count();
    println!(
        "faults: {whole} whole and true, {errors} explicit errors, {wrong} silently wrong; {injected} faults injected over {} calls",
        h.calls()
    );
    assert_eq!(wrong, 0, "a response looked whole but was not");
    assert!(injected > 5, "faults were really injected ({injected})");
    assert!(whole >= 4, "retries make most answers whole ({whole} of 8)");
    h.finish();
}

#[tokio::test]
async fn the_gateway_never_exceeds_the_vendors_rate_limit() {
    // The simulator refuses (and records a violation for) any call beyond 10 in a second.
    let h = Harness::start(Opts {
        rate: Rate {
            calls: 10,
            period: Duration::from_secs(1),
        },
        sim_rate_limit: Some((10, Duration::from_secs(1))),
        concurrency: 32,
        ..Opts::default()
    })
    .await;
    let body = h
        .json("/v1/interactions?from=2024-08-01&to=2024-09-29&limit=1")
        .await;
    assert_eq!(body["meta"]["complete"], true);
    let calls = h.calls();
    assert!(calls > 20, "a cold 60-day query takes many calls ({calls})");
    assert_eq!(
        h.sim.count_status(429),
        0,
        "the simulator never had to refuse a call"
    );
    println!("budget: 60-day cold query, {calls} calls at 10/s, 0 answered 429");
    h.finish();
}

#[tokio::test]
async fn one_teams_big_cold_query_does_not_starve_anothers_small_one() {
    let h = Arc::new(
        Harness::start(Opts {
            rate: Rate {
                calls: 8,
                period: Duration::from_secs(1),
            },
            concurrency: 4,
            sim_latency: Duration::from_millis(20),
            ..Opts::default()
        })
        .await,
    );
    let big = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = h
                .get_with(
                    "/v1/interactions?from=2024-05-01&to=2024-07-30&limit=1",
                    Some(KEY),
                )
                .await;
            assert_eq!(r.status(), 200);
            t.elapsed()
        })
    };
    // Team A's calls are queued for the budget before team B asks.
    until("the big query has calls waiting for budget", || {
        h.state.accounts.all()[0].fetcher.budget().stats().waiting > 0
    })
    .await;
    let t = std::time::Instant::now();
    let small = h
        .get_with(
            "/v1/interactions?from=2024-09-10&to=2024-09-10&limit=1",
            Some(KEY_B),
        )
        .await;
    let small_latency = t.elapsed();
    assert_eq!(small.status(), 200);
    assert!(
        !big.is_finished(),
        "the small query finished while the big one was still running"
    );
    let big_latency = big.await.unwrap();
    println!(
        "fairness: 1-day query of team B took {small_latency:?} while team A's 90-day cold query took {big_latency:?}"
    );
    Arc::try_unwrap(h).ok().expect("sole owner").finish();
}

#[tokio::test]
async fn per_key_limit_answers_429_and_an_exhausted_budget_503() {
    let h = Harness::start(Opts {
        key_rate_limit: Some(Rate {
            calls: 3,
            period: Duration::from_secs(60),
        }),
        rate: Rate {
            calls: 1,
            period: Duration::from_secs(60),
        },
        max_wait: Duration::from_millis(300),
        ..Opts::default()
    })
    .await;
    // First request takes the only upstream call of the minute; the next needs more.
    let ok = h
        .get("/v1/interactions?from=2024-09-10T10:00&to=2024-09-10T10:05&limit=1")
        .await;
    assert_eq!(ok.status(), 200);
    let busy = h
        .get("/v1/interactions?from=2024-09-11&to=2024-09-11")
        .await;
    assert_eq!(busy.status(), 503);
    assert!(
        busy.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // The cached answer is still served: hits never wait for the budget.
    assert_eq!(
        h.get("/v1/interactions?from=2024-09-10T10:00&to=2024-09-10T10:05&limit=1")
            .await
            .status(),
        200
    );
    let limited = h
        .get("/v1/interactions?from=2024-09-10T10:00&to=2024-09-10T10:05&limit=1")
        .await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        h.get_with(
            "/v1/interactions?from=2024-09-10T10:00&to=2024-09-10T10:05&limit=1",
            Some(KEY_B)
        )
        .await
        .status(),
        200,
        "limits are per key"
    );
    h.finish();
}

#[tokio::test]
async fn parts_of_a_crowded_window_are_shared_by_overlapping_windows() {
    let h = Harness::start(Opts::default()).await;
    // A dense day that is not a Monday, and its grid week (Monday .. Sunday, UTC).
    let mut day = jiff::civil::Date::constant(2024, 8, 1);
    while !(kore_sim::is_dense_day(day) && day.weekday() != jiff::civil::Weekday::Monday) {
        day = day.tomorrow().unwrap();
    }
    let monday = day
        .checked_sub(jiff::Span::new().days(i64::from(day.weekday().to_monday_zero_offset())))
        .unwrap();
    let sunday = monday.checked_add(jiff::Span::new().days(6)).unwrap();
    let tuesday = monday.tomorrow().unwrap();
    // Containment reuse would answer the second window from the cached week without even
    // the probe (and, being on, lets the week replace its parts); it is off here so that
    // this test keeps proving the sharing of parts.
    h.state.windows.set_containment(false);
    let whole = h
        .json(&format!(
            "/v1/interactions?from={monday}&to={sunday}&limit=1"
        ))
        .await;
    assert!(
        whole["meta"]["total"].as_u64().unwrap() > 1100,
        "the week is too full for one query"
    );
    h.sim.reset_log();
    // Tuesday .. Sunday is another window (another cache key), cut into the same day parts.
    let edge = h
        .json(&format!(
            "/v1/interactions?from={tuesday}&to={sunday}&limit=1"
        ))
        .await;
    assert_eq!(edge["meta"]["complete"], true);
    let calls = h.sim.calls();
    assert_eq!(
        calls.len(),
        1,
        "only the probe of the new window; its day parts came from the cache: {:?}",
        calls
            .iter()
            .map(|c| (c.start_utc, c.end_utc, c.page))
            .collect::<Vec<_>>()
    );
    assert_eq!(edge["meta"]["upstream_calls"], 1);
    let truth = h.sim.truth(
        at(&format!("{tuesday}T00:00:00"), "UTC"),
        at(&format!("{sunday}T23:59:59"), "UTC"),
        0,
        &all_fields(),
    );
    assert_eq!(
        edge["meta"]["total"].as_u64().unwrap() as usize,
        truth.len()
    );
    h.finish();
}

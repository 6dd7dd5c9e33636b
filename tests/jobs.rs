//! `Prefer: respond-async` and `/v1/jobs`, over real loopback HTTP against the simulator,
//! with the budget scaled down (the simulator refuses more than N calls a second and the
//! gateway is set to N/s), so minutes of the real 60/min become seconds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kore_gateway::config::Rate;
use serde_json::Value;

/// A budget of `n` calls a second, enforced by the simulator too.
fn scaled(n: u32) -> Opts {
    Opts {
        rate: Rate {
            calls: n,
            period: Duration::from_secs(1),
        },
        sim_rate_limit: Some((n, Duration::from_secs(1))),
        sim_latency: Duration::from_millis(10),
        max_wait: Duration::from_secs(120),
        ..Opts::default()
    }
}

async fn prefer_async(h: &Harness, path: &str, key: &str) -> reqwest::Response {
    h.http
        .get(format!("{}{}", h.base, path))
        .bearer_auth(key)
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("gateway answers")
}

async fn job(h: &Harness, location: &str, key: &str) -> (u16, Value) {
    let resp = h.get_with(location, Some(key)).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn progress(v: &Value, name: &str) -> u64 {
    v["progress"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("progress.{name} in {v}"))
}

/// Polls a job until it ends (see [`follow_job`]).
async fn follow(h: &Harness, location: &str, key: &str, within: Duration) -> Value {
    follow_job(&h.http, &format!("{}{location}", h.base), key, within, None).await
}

#[tokio::test]
async fn a_cold_range_becomes_a_job_whose_result_is_the_truth_from_the_cache() {
    let h = Harness::start(scaled(5)).await;
    let path = "/v1/interactions?from=2024-08-01&to=2024-09-15&tz=Asia/Kolkata&limit=10000";

    let asked = Instant::now();
    let resp = prefer_async(&h, path, KEY).await;
    let took = asked.elapsed();
    assert_eq!(resp.status(), 202);
    assert!(took < Duration::from_secs(1), "202 took {took:?}");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header("location").expect("Location");
    assert!(location.starts_with("/v1/jobs/"), "{location}");
    assert_eq!(
        header("preference-applied").as_deref(),
        Some("respond-async")
    );
    let retry: u64 = header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1);
    let first: Value = resp.json().await.unwrap();
    assert!(
        matches!(first["state"].as_str(), Some("queued" | "running")),
        "{first}"
    );
    assert_eq!(first["result"], Value::Null);
    assert_eq!(
        format!("/v1/jobs/{}", first["id"].as_str().unwrap()),
        location
    );

    // An identical request shares the job.
    let again = prefer_async(&h, path, KEY).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        location,
        "identical requests share one job"
    );

    // Another team's key does not see it; an admin key does; each key lists its own.
    assert_eq!(job(&h, &location, KEY_B).await.0, 404);
    let foreign_delete = h
        .http
        .delete(format!("{}{}", h.base, location))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_delete.status(), 404);
    assert_eq!(job(&h, &location, ADMIN_KEY).await.0, 200);
    let mine = h.json("/v1/jobs").await;
    assert_eq!(mine["jobs"].as_array().unwrap().len(), 1);
    let theirs: Value = h
        .get_with("/v1/jobs", Some(KEY_B))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["jobs"].as_array().unwrap().len(), 0);
    let all: Value = h
        .get_with("/v1/jobs", Some(ADMIN_KEY))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);

    let done = follow(&h, &location, KEY, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["eta_seconds"], 0);
    assert_eq!(
        progress(&done, "windows_done"),
        progress(&done, "windows_total")
    );
    // Only this job called the upstream: its count of calls is the simulator's.
    assert_eq!(progress(&done, "calls_done") as usize, h.calls(), "{done}");
    assert!(progress(&done, "calls_estimated") >= progress(&done, "calls_done"));

    // The result answers the whole range from the cache: no further upstream call.
    let result = done["result"].as_str().expect("result URL").to_owned();
    let before = h.calls();
    let body = h.json(&result).await;
    assert_eq!(h.calls(), before, "the result made upstream calls");
    assert_eq!(body["meta"]["cache"], "HIT");
    assert_eq!(body["meta"]["complete"], true);
    let truth = h.sim.truth(
        at("2024-08-01T00:00:00", "Asia/Kolkata"),
        at("2024-09-15T23:59:59", "Asia/Kolkata"),
        -330,
        &all_fields(),
    );
    assert_same_records(body["data"].as_array().unwrap(), &truth);

    // A warm range answers 200 although async is preferred.
    let warm = prefer_async(&h, path, KEY).await;
    assert_eq!(warm.status(), 200);
    assert!(warm.headers().get("preference-applied").is_none());
    // The summary of the same range is warm too (same windows).
    let summary = prefer_async(
        &h,
        "/v1/interactions/summary?from=2024-08-01&to=2024-09-15&tz=Asia/Kolkata",
        KEY,
    )
    .await;
    assert_eq!(summary.status(), 200);
    assert_eq!(h.calls(), before);
    h.finish();
}

#[tokio::test]
async fn a_cancelled_job_stops_and_what_it_fetched_stays_cached() {
    let h = Harness::start(scaled(4)).await;
    let path = "/v1/interactions?from=2024-06-01&to=2024-08-31&limit=10000";
    let resp = prefer_async(&h, path, KEY).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = loop {
        let (_, v) = job(&h, &location, KEY).await;
        if progress(&v, "windows_done") >= 2 {
            break progress(&v, "windows_total");
        }
        assert!(Instant::now() < deadline, "no window done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(total >= 12, "92 days are 13 or more windows");
    let cancel = h
        .http
        .delete(format!("{}{}", h.base, location))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204);
    assert_eq!(
        job(&h, &location, KEY).await.0,
        404,
        "a cancelled job is gone"
    );

    // The range asked again synchronously: the windows the job finished are hits, the
    // ones it never started cost this request calls.
    let body = h.json(path).await;
    assert_eq!(body["meta"]["cache"], "PARTIAL", "{}", body["meta"]);
    assert!(body["meta"]["upstream_calls"].as_u64().unwrap() > 0);
    let mut records = body["data"].as_array().unwrap().clone();
    let mut cursor = body["meta"]["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let page = h.json(&format!("{path}&cursor={c}")).await;
        records.extend(page["data"].as_array().unwrap().iter().cloned());
        cursor = page["meta"]["next_cursor"].as_str().map(str::to_owned);
    }
    let truth = h.sim.truth(
        at("2024-06-01T00:00:00", "UTC"),
        at("2024-08-31T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert_same_records(&records, &truth);
    h.finish();
}

/// A job started behind another team's long job: its ETA, read once its first pages are
/// in, is within 30 % of when it really ends. (Its range holds no "campaign" day of the
/// simulator, so its first pages tell its size; a window that must be cut tells it only
/// once its parts answer — the ETA then follows the estimate as it grows.)
#[tokio::test]
async fn the_eta_of_a_job_behind_another_is_within_30_percent() {
    let h = Harness::start(scaled(1)).await;
    let big = prefer_async(
        &h,
        "/v1/interactions?from=2024-06-05&to=2024-08-31&limit=10000",
        KEY,
    )
    .await;
    assert_eq!(big.status(), 202);
    let big_location = big.headers()["location"].to_str().unwrap().to_owned();
    let small = prefer_async(
        &h,
        "/v1/interactions?from=2024-05-19&to=2024-06-03&limit=10000",
        KEY_B,
    )
    .await;
    assert_eq!(small.status(), 202);
    let location = small.headers()["location"].to_str().unwrap().to_owned();

    // Every window's first page is the first call of its window, so once as many calls as
    // windows are done, every window's size is known.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (measured_at, eta) = loop {
        let (_, v) = job(&h, &location, KEY_B).await;
        if progress(&v, "calls_done") >= progress(&v, "windows_total") {
            break (Instant::now(), v["eta_seconds"].as_u64().expect("eta"));
        }
        assert!(Instant::now() < deadline, "no progress: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ended = loop {
        let (_, v) = job(&h, &location, KEY_B).await;
        if v["state"] == "done" {
            break Instant::now();
        }
        assert_ne!(v["state"], "failed", "{v}");
        assert!(Instant::now() < deadline, "not done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let real = ended.duration_since(measured_at).as_secs_f64();
    let error = (eta as f64 - real).abs() / real;
    println!(
        "ETA {eta} s, really {real:.2} s: error {:.0} %",
        error * 100.0
    );
    assert!(
        real > 3.0,
        "the small job must wait behind the big one: {real:.2} s"
    );
    assert!(error <= 0.30, "ETA {eta} s, really {real:.2} s");

    let cancel = h
        .http
        .delete(format!("{}{}", h.base, big_location))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204, "an admin key may cancel any job");
    h.finish();
}

/// A key may have a bounded number of jobs under way (429 beyond, as a problem), another
/// key is not affected, and ended jobs are forgotten JOB_TTL after they end.
#[tokio::test]
async fn jobs_are_bounded_per_key_and_forgotten_after_job_ttl() {
    // One call a minute: the first job gets it at once and ends; the others wait.
    let minute = Duration::from_secs(60);
    let h = Harness::start(Opts {
        job_ttl: Duration::from_secs(1),
        rate: Rate {
            calls: 1,
            period: minute,
        },
        sim_rate_limit: Some((1, minute)),
        ..scaled(1)
    })
    .await;
    let day = |d: u32| format!("/v1/interactions?from=2024-03-{d:02}&to=2024-03-{d:02}");
    let mut locations = Vec::new();
    for d in 1..=8 {
        let resp = prefer_async(&h, &day(d), KEY).await;
        assert_eq!(resp.status(), 202, "job {d}");
        locations.push(resp.headers()["location"].to_str().unwrap().to_owned());
    }
    // Job 1 may have ended already: then a ninth still fits, and a tenth does not.
    let ninth = prefer_async(&h, &day(9), KEY).await;
    let ninth_accepted = ninth.status() == 202;
    let refused = if ninth_accepted {
        locations.push(ninth.headers()["location"].to_str().unwrap().to_owned());
        prefer_async(&h, &day(10), KEY).await
    } else {
        ninth
    };
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/too-many-jobs", "{problem}");
    // One listing, so what it says of job 1 and of the others is one moment's truth.
    let listing = h.json("/v1/jobs").await;
    let jobs = listing["jobs"].as_array().cloned().unwrap_or_default();
    let active = jobs.iter().filter(|j| j["state"] != "done").count();
    // Refused with 8 jobs under way; job 1 (the only one the budget could serve) may have
    // ended between the refusal and the listing.
    let first_id = locations[0].rsplit('/').next().unwrap_or_default();
    let first_done = jobs
        .iter()
        .any(|j| j["id"].as_str() == Some(first_id) && j["state"] == "done");
    let expected = if !ninth_accepted && first_done { 7 } else { 8 };
    assert_eq!(active, expected, "refused with 8 jobs under way");
    // The bound is per key.
    assert_eq!(prefer_async(&h, &day(9), KEY_B).await.status(), 202);

    // Cancel all but the first; it ends, and JOB_TTL after that it is gone.
    for l in &locations[1..] {
        let r = h
            .http
            .delete(format!("{}{}", h.base, l))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let done = follow(&h, &locations[0], KEY, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = job(&h, &locations[0], KEY).await;
        if status == 404 {
            break;
        }
        assert_eq!(v["state"], "done");
        assert!(Instant::now() < deadline, "never forgotten: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.finish();
}

/// Issue 21 point 10: the ETA a 202 gives for a cold 92-day job, against how long it really
/// takes — first with nothing known of the account's volume (a fresh gateway: the job
/// probes its first window), then for another quarter once the first taught the volume.
#[tokio::test]
async fn the_first_eta_of_a_cold_quarter_is_honest() {
    let h = Harness::start(scaled(10)).await;
    for (what, path) in [
        (
            "nothing known",
            "/v1/interactions?from=2024-01-01&to=2024-04-01&limit=10000",
        ),
        (
            "volume known",
            "/v1/interactions?from=2024-05-01&to=2024-07-31&limit=10000",
        ),
    ] {
        let asked = Instant::now();
        let resp = prefer_async(&h, path, KEY).await;
        let answered = asked.elapsed();
        assert_eq!(resp.status(), 202);
        // The probe (first pages) is brief: the 202 still comes at once.
        assert!(answered < Duration::from_secs(3), "202 took {answered:?}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let first: Value = resp.json().await.unwrap();
        let eta = first["eta_seconds"].as_u64().expect("eta");
        let done = follow(&h, &location, KEY, Duration::from_secs(180)).await;
        assert_eq!(done["state"], "done", "{done}");
        let real = asked.elapsed().as_secs_f64();
        let error = (eta as f64 - real).abs() / real;
        println!(
            "first ETA ({what}): {eta} s at the 202 (answered in {answered:?}), really {real:.1} s ({} calls): error {:.0} %",
            progress(&done, "calls_done"),
            error * 100.0
        );
        assert!(error <= 0.30, "{what}: ETA {eta} s, really {real:.1} s");
    }
    h.finish();
}

/// Waits until the simulator has seen no new call for a second (work going on in the
/// background has ended).
async fn quiet(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = h.calls();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = h.calls();
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "calls never stopped");
        last = now;
    }
}

/// Pages the simulator was asked for more than once (window bounds, offset, page).
fn pages_asked_twice(h: &Harness) -> usize {
    let mut seen = std::collections::HashSet::new();
    h.sim
        .calls()
        .iter()
        .filter(|c| c.status == 200)
        .filter(|c| !seen.insert((c.start_utc, c.end_utc, c.offset_minutes, c.page)))
        .count()
}

/// Issue 21 point 1: KORE_MAX_WAIT bounds a request's whole wait for budget. A range the
/// account's budget cannot serve within it is told so before it spends; one that starts (too
/// little was known to tell) and runs out of time ends within the wait plus one call, and
/// what it fetched stays cached.
#[tokio::test]
async fn a_range_the_budget_cannot_serve_in_time_is_told_so_before_it_spends() {
    // Ten calls a second and a 2 s wait: about 30 calls fit; a cold quarter needs ~200.
    let max_wait = Duration::from_secs(2);
    let h = Harness::start(Opts {
        max_wait,
        ..scaled(10)
    })
    .await;

    // Nothing known of the volume yet: what is certain (one first page per window) fits, so
    // the request starts — and runs out of time.
    let started = Instant::now();
    let resp = h
        .get("/v1/interactions?from=2024-01-01&to=2024-04-01&limit=10000")
        .await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/budget-exhausted", "{problem}");
    // The promise is a time bound: the wait plus one call (10 ms here), with room to spare.
    println!(
        "a cold quarter that ran out of time answered 503 after {took:?} (KORE_MAX_WAIT {max_wait:?})"
    );
    assert!(took < max_wait + Duration::from_secs(1), "{took:?}");
    // What it fetched stays cached: every window whose first page was in is finished in the
    // background, so the retry asks for nothing twice.
    quiet(&h).await;
    let spent = h.calls();
    let retry = prefer_async(
        &h,
        "/v1/interactions?from=2024-01-01&to=2024-04-01&limit=10000",
        KEY,
    )
    .await;
    if retry.status() == 202 {
        let location = retry.headers()["location"].to_str().unwrap().to_owned();
        let done = follow(&h, &location, KEY, Duration::from_secs(120)).await;
        assert_eq!(done["state"], "done", "{done}");
    } else {
        assert_eq!(retry.status(), 200);
    }
    assert_eq!(
        pages_asked_twice(&h),
        0,
        "a page fetched before was asked again"
    );
    println!(
        "the overrun request's calls: {spent}; its retry's: {}",
        h.calls() - spent
    );

    // Now the account's volume is known: another cold quarter is refused at once, before a
    // single call, with the estimate and the way out.
    let before = h.calls();
    let started = Instant::now();
    let resp = h
        .get("/v1/interactions?from=2024-05-01&to=2024-07-31&limit=10000")
        .await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/too-long-to-wait", "{problem}");
    let calls = problem["estimated_calls"]
        .as_u64()
        .expect("estimated_calls");
    let seconds = problem["estimated_seconds"]
        .as_u64()
        .expect("estimated_seconds");
    assert!(calls >= 100, "a cold quarter is ~200 calls: {problem}");
    assert!(seconds > max_wait.as_secs(), "{problem}");
    assert_eq!(problem["max_wait_seconds"], max_wait.as_secs());
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("Prefer: respond-async"), "{detail}");
    assert_eq!(h.calls(), before, "refused before any call");
    println!("refused at once ({took:?}): {detail}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // The way out works: the same range as a job.
    let job = prefer_async(
        &h,
        "/v1/interactions?from=2024-05-01&to=2024-07-31&limit=10000",
        KEY,
    )
    .await;
    assert_eq!(job.status(), 202);
    let location = job.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        h.http
            .delete(format!("{}{location}", h.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    h.finish();
}

/// Every job id and every key name `/status.json` mentions, as `key` sees it.
async fn status_names(h: &Harness, key: &str) -> (Value, Vec<String>, Vec<String>) {
    let resp = h.get_with("/status.json", Some(key)).await;
    assert_eq!(resp.status(), 200);
    let s: Value = resp.json().await.unwrap();
    let jobs = s["jobs"].as_array().expect("jobs").iter();
    let ids = jobs.clone().map(|j| j["id"].as_str().unwrap().to_owned());
    let owners = jobs.map(|j| j["owner"].as_str().unwrap().to_owned());
    let callers = s["budget"]["by_caller"]
        .as_array()
        .expect("by_caller")
        .iter()
        .map(|c| c["caller"].as_str().unwrap().to_owned());
    let mut names: Vec<String> = owners.chain(callers).collect();
    names.sort();
    names.dedup();
    let ids = ids.collect();
    (s, ids, names)
}

#[tokio::test]
async fn the_status_page_shows_a_team_its_own_jobs_and_calls_and_an_admin_everyone_s() {
    let h = Harness::start(scaled(50)).await;
    // Each team runs a job (to its end, so the budget's counts are final) and calls the
    // upstream under its own key.
    let mut ids = Vec::new();
    for (key, range) in [
        (KEY, "from=2024-09-01&to=2024-09-09"),
        (KEY_B, "from=2024-10-01&to=2024-10-09"),
    ] {
        let resp = prefer_async(&h, &format!("/v1/interactions?{range}&limit=5"), key).await;
        assert_eq!(resp.status(), 202);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let done = follow(&h, &location, key, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "done", "{done}");
        ids.push(done["id"].as_str().unwrap().to_owned());
    }
    let (a_job, b_job) = (&ids[0], &ids[1]);

    let (admin, admin_ids, admin_names) = status_names(&h, ADMIN_KEY).await;
    assert!(
        admin_ids.contains(a_job) && admin_ids.contains(b_job),
        "{admin}"
    );
    assert!(
        admin_names.contains(&"team-a".to_owned()) && admin_names.contains(&"team-b".to_owned()),
        "an admin key sees every team: {admin}"
    );

    for (key, own, own_job, other, other_job) in [
        (KEY, "team-a", a_job, "team-b", b_job),
        (KEY_B, "team-b", b_job, "team-a", a_job),
    ] {
        let (s, ids, names) = status_names(&h, key).await;
        assert_eq!(
            ids,
            std::slice::from_ref(own_job),
            "{own} sees its own job only: {s}"
        );
        assert_eq!(names, [own], "{own} sees its own name only: {s}");
        let text = s.to_string();
        assert!(
            !text.contains(other) && !text.contains(other_job.as_str()),
            "{own}'s view names neither {other} nor its job: {text}"
        );
        // The totals are the shared budget's, whoever reads them: every call the
        // simulator answered, both teams' included.
        assert_eq!(s["budget"]["granted"], admin["budget"]["granted"]);
        assert_eq!(s["budget"]["granted"].as_u64(), Some(h.calls() as u64));
        let own_calls = s["budget"]["by_caller"][0]["calls"].as_u64().unwrap();
        assert!(
            own_calls > 0 && own_calls < h.calls() as u64,
            "{own}'s row counts its own calls, not everyone's: {s}"
        );
    }
    h.finish();
}

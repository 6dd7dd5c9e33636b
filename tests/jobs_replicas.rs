//! Jobs across replicas sharing one Redis (issue 22 points 1 and 5): any replica reads,
//! lists and cancels any replica's job; an identical request on another replica joins it;
//! a job whose replica is killed (SIGKILL) is finished by another within its lease; a range
//! warm only in Redis answers 200 to `Prefer: respond-async`.
//!
//! A real redis-server is started on a free loopback port and stopped by its pid
//! (`common::redis_server`). Without one the tests are skipped locally and fail under CI.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    redis_server::{Redis, redis_or_skip},
    *,
};
use kore_gateway::{AppState, config::Rate};
use kore_sim::{SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::Value;

/// The Redis URL of a test's redis-server.
fn url(redis: &Redis) -> String {
    format!("redis://127.0.0.1:{}/", redis.port)
}

/// A budget of `n` calls a second, enforced by the simulator too.
async fn simulator(n: u32) -> (Simulator, SocketAddr) {
    let mut cfg = SimConfig::demo();
    cfg.latency = Duration::from_millis(10);
    cfg.rate_limit = Some((n, Duration::from_secs(1)));
    Simulator::spawn(cfg).await.expect("simulator starts")
}

/// A replica in this process on `redis`, in front of the simulator, at `n` calls a second.
async fn replica(
    sim: &Simulator,
    sim_addr: SocketAddr,
    redis: &Redis,
    n: u32,
) -> (AppState, String) {
    let opts = Opts {
        rate: Rate {
            calls: n,
            period: Duration::from_secs(1),
        },
        ..Opts::default()
    };
    let mut settings = settings_for(sim, sim_addr, &opts);
    settings.redis_url = Some(SecretString::from(url(redis)));
    settings.replicas = 2;
    let state = kore_gateway::build(settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = kore_gateway::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, base)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    prefer_async: bool,
) -> (u16, Option<String>, Value) {
    let mut req = http.request(method, url).bearer_auth(key);
    if prefer_async {
        req = req.header("Prefer", "respond-async");
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, location, resp.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let (s, _, v) = call(http, reqwest::Method::GET, url, key, false).await;
    (s, v)
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect()
}

// Several threads: the simulator must answer while the test waits for a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_on_one_replica_is_read_listed_joined_and_cancelled_on_another() {
    let Some(redis) = redis_or_skip() else { return };
    let (sim, sim_addr) = simulator(2).await;
    let (_a, base_a) = replica(&sim, sim_addr, &redis, 2).await;
    let (_b, base_b) = replica(&sim, sim_addr, &redis, 2).await;
    let http = client();
    let path = "/v1/interactions?from=2024-03-04&to=2024-05-26&limit=10000";

    let (status, location, first) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base_a}{path}"),
        KEY,
        true,
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let location = location.expect("Location");
    let id = first["id"].as_str().unwrap().to_owned();

    // B reads it, with progress from A; another team's key does not; an admin key does.
    let (status, on_b) = get(&http, &format!("{base_b}{location}"), KEY).await;
    assert_eq!(status, 200, "{on_b}");
    assert_eq!(on_b["id"], id.as_str());
    assert!(
        matches!(on_b["state"].as_str(), Some("queued" | "running")),
        "{on_b}"
    );
    assert!(on_b["eta_seconds"].as_u64().is_some(), "{on_b}");
    assert_eq!(
        get(&http, &format!("{base_b}{location}"), KEY_B).await.0,
        404
    );
    assert_eq!(
        get(&http, &format!("{base_b}{location}"), ADMIN_KEY)
            .await
            .0,
        200
    );
    // B lists it (for its key and for an admin key), not for another team.
    assert_eq!(
        ids(&get(&http, &format!("{base_b}/v1/jobs"), KEY).await.1),
        std::slice::from_ref(&id)
    );
    assert_eq!(
        ids(&get(&http, &format!("{base_b}/v1/jobs"), ADMIN_KEY).await.1),
        std::slice::from_ref(&id)
    );
    assert!(ids(&get(&http, &format!("{base_b}/v1/jobs"), KEY_B).await.1).is_empty());
    // The same request on B joins A's job.
    let (status, joined, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base_b}{path}"),
        KEY,
        true,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        joined.as_deref(),
        Some(location.as_str()),
        "one job for identical requests"
    );
    // Progress seen on B moves (A runs it and records it every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = get(&http, &format!("{base_b}{location}"), KEY).await;
        if v["progress"]["calls_done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress seen on B: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another team cannot cancel it; its owner does, on B; A stops calling the upstream.
    let (status, _, _) = call(
        &http,
        reqwest::Method::DELETE,
        &format!("{base_b}{location}"),
        KEY_B,
        false,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = call(
        &http,
        reqwest::Method::DELETE,
        &format!("{base_b}{location}"),
        KEY,
        false,
    )
    .await;
    assert_eq!(status, 204);
    let cancelled = Instant::now();
    assert_eq!(get(&http, &format!("{base_a}{location}"), KEY).await.0, 404);
    assert_eq!(get(&http, &format!("{base_b}{location}"), KEY).await.0, 404);
    // A stops at its next record write (every second): windows under way finish in their
    // own tasks and stay cached, but no other window of the job is started.
    let week = |t: jiff::Timestamp| {
        (t.as_second() - at("2024-03-04T00:00:00", "UTC").as_second()) / (7 * 86_400)
    };
    let calls = sim.calls();
    let started: std::collections::HashSet<i64> = calls
        .iter()
        .filter(|c| c.at <= cancelled)
        .filter_map(|c| c.start_utc.map(week))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = sim.call_count();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if sim.call_count() == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled job never stopped calling"
        );
        last = sim.call_count();
    }
    let new_windows: Vec<i64> = sim
        .calls()
        .iter()
        .filter(|c| c.at > cancelled)
        .filter_map(|c| c.start_utc.map(week))
        .filter(|w| !started.contains(w))
        .collect();
    assert!(
        new_windows.is_empty(),
        "windows started after the cancel: {new_windows:?}"
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

// Several threads: the simulator must answer while the test waits for a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_replica_is_killed_is_finished_by_another() {
    let Some(redis) = redis_or_skip() else { return };
    let (sim, sim_addr) = simulator(4).await;
    let url = url(&redis);
    let (mut a, base_a, _log) = spawn_gateway(
        &sim,
        sim_addr,
        &[
            ("REDIS_URL", url.as_str()),
            ("KORE_RATE_LIMIT", "4/s"),
            ("GATEWAY_REPLICAS", "2"),
        ],
    );
    let (b, base_b) = replica(&sim, sim_addr, &redis, 4).await;
    let http = client();
    let path = "/v1/interactions?from=2024-06-03&to=2024-07-28&limit=10000";
    let (status, location, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base_a}{path}"),
        KEY,
        true,
    )
    .await;
    assert_eq!(status, 202);
    let location = location.expect("Location");
    // Mid-job, as B sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let (_, v) = get(&http, &format!("{base_b}{location}"), KEY).await;
        if v["progress"]["windows_done"].as_u64().unwrap_or(0) >= 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "no window done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before["state"], "running", "{before}");
    assert_eq!(b.jobs.active(), 0, "A runs it");
    // Which windows were done (in the shared cache) when A died.
    let done_before: Vec<(i64, i64)> = {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let id = location.rsplit('/').next().unwrap();
        let label = b.accounts.all()[0].ns.label().to_owned();
        let rec: String = redis::cmd("HGET")
            .arg(format!("kore-gateway:{label}:job:{id}"))
            .arg("rec")
            .query_async(&mut conn)
            .await
            .unwrap();
        let rec: Value = serde_json::from_str(&rec).unwrap();
        let windows: Vec<[i64; 3]> = serde_json::from_value(rec["windows"].clone()).unwrap();
        let done: Vec<bool> = serde_json::from_value(rec["done"].clone()).unwrap();
        windows
            .iter()
            .zip(done)
            .filter(|(_, d)| *d)
            .map(|(w, _)| (w[0], w[1]))
            .collect()
    };
    a.kill().expect("SIGKILL the replica we started");
    let _ = a.wait();
    let killed = Instant::now();

    // B takes it over within the lease, and finishes it.
    until_async("B runs the job", Duration::from_secs(30), || {
        b.jobs.active() > 0
    })
    .await;
    let takeover = killed.elapsed();
    println!("takeover after SIGKILL: {takeover:?} (lease 10 s, sweep every 2 s)");
    assert!(takeover <= Duration::from_secs(15), "{takeover:?}");
    let end = follow_job(
        &http,
        &format!("{base_b}{location}"),
        KEY,
        Duration::from_secs(120),
        Some(&before),
    )
    .await;
    assert_eq!(end["state"], "done", "{end}");
    println!("finished on B {:?} after the kill: {end}", killed.elapsed());

    // What A fetched is not fetched again: no window done before the kill is asked after
    // it, and no page is asked twice after it.
    let after: Vec<_> = sim.calls().into_iter().filter(|c| c.at > killed).collect();
    let refetched = after
        .iter()
        .filter(|c| {
            let (Some(s), Some(e)) = (c.start_utc, c.end_utc) else {
                return false;
            };
            done_before
                .iter()
                .any(|(ws, we)| *ws <= s.as_second() && e.as_second() <= *we)
        })
        .count();
    assert_eq!(
        refetched, 0,
        "a window done before the kill was fetched again"
    );
    let mut seen = std::collections::HashSet::new();
    let twice = after
        .iter()
        .filter(|c| c.status == 200)
        .filter(|c| !seen.insert((c.start_utc, c.end_utc, c.offset_minutes, c.page)))
        .count();
    assert_eq!(twice, 0, "a page was asked twice after the kill");
    let before_kill: std::collections::HashSet<_> = sim
        .calls()
        .iter()
        .filter(|c| c.at <= killed && c.status == 200)
        .map(|c| (c.start_utc, c.end_utc, c.offset_minutes, c.page))
        .collect();
    let again = after
        .iter()
        .filter(|c| before_kill.contains(&(c.start_utc, c.end_utc, c.offset_minutes, c.page)))
        .count();
    println!("pages A had fetched in windows it had not finished, asked again by B: {again}");

    // The result, from the shared cache, is the truth.
    let result = end["result"].as_str().unwrap().to_owned();
    let calls = sim.call_count();
    let (status, body) = get(&http, &format!("{base_b}{result}"), KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.call_count(), calls, "the result made upstream calls");
    assert_eq!(body["meta"]["complete"], true);
    let truth = sim.truth(
        at("2024-06-03T00:00:00", "UTC"),
        at("2024-07-28T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    let mut records = body["data"].as_array().unwrap().clone();
    let mut cursor = body["meta"]["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, page) = get(&http, &format!("{base_b}{result}&cursor={c}"), KEY).await;
        records.extend(page["data"].as_array().unwrap().iter().cloned());
        cursor = page["meta"]["next_cursor"].as_str().map(str::to_owned);
    }
    assert_same_records(&records, &truth);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

// Several threads: the simulator must answer while the test waits for a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_warm_only_in_redis_answers_200_to_respond_async() {
    let Some(redis) = redis_or_skip() else { return };
    let (sim, sim_addr) = simulator(50).await;
    let (_a, base_a) = replica(&sim, sim_addr, &redis, 50).await;
    let (b, base_b) = replica(&sim, sim_addr, &redis, 50).await;
    let http = client();
    let path = "/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=10";
    let (status, warm) = get(&http, &format!("{base_a}{path}"), KEY).await;
    assert_eq!(status, 200, "{warm}");
    let calls = sim.call_count();
    // B holds nothing in memory; Redis holds every window.
    assert_eq!(b.windows.usage().await.0, 0);
    let (status, location, body) = call(
        &http,
        reqwest::Method::GET,
        &format!("{base_b}{path}"),
        KEY,
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(location.is_none());
    assert_eq!(body["meta"]["cache"], "HIT", "{}", body["meta"]);
    assert_eq!(body["data"], warm["data"]);
    assert_eq!(sim.call_count(), calls, "no upstream call");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// Waits (asynchronously) until `cond` holds, failing after `within`.
async fn until_async(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The process's life: jobs outlive a SIGTERM and a restart on the same `CACHE_DIR`, and the
//! drain after SIGTERM ends within `SHUTDOWN_GRACE` — driving the real binary against a
//! simulator in this test, over loopback. Only the pids started here are signalled.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kore_sim::{SimConfig, Simulator};
use serde_json::Value;

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kore-lifecycle-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A simulator refusing more than `n` calls a second, as the gateway is set to.
async fn simulator(n: u32) -> (Simulator, std::net::SocketAddr) {
    let mut cfg = SimConfig::demo();
    cfg.latency = Duration::from_millis(10);
    cfg.rate_limit = Some((n, Duration::from_secs(1)));
    Simulator::spawn(cfg).await.expect("simulator starts")
}

async fn get(http: &reqwest::Client, url: &str, prefer_async: bool) -> (u16, Value) {
    let mut req = http.get(url).bearer_auth(KEY);
    if prefer_async {
        req = req.header("Prefer", "respond-async");
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every record of a JSON answer, following its cursors.
async fn all_records(http: &reqwest::Client, base: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = format!("{base}{path}");
    loop {
        let (status, body) = get(http, &url, false).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["meta"]["complete"], true, "{body}");
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["meta"]["next_cursor"].as_str() {
            Some(c) => url = format!("{base}{path}&cursor={c}"),
            None => return out,
        }
    }
}

// Several threads: the simulator must answer while the test waits for a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_sigterm_and_a_restart_and_ends_with_the_truth() {
    let (sim, sim_addr) = simulator(4).await;
    let dir = scratch("restart");
    let dir_s = dir.to_str().unwrap().to_owned();
    let envs = [
        ("CACHE_DIR", dir_s.as_str()),
        ("KORE_RATE_LIMIT", "4/s"),
        ("SHUTDOWN_GRACE", "10s"),
    ];
    let http = client();
    let (mut first, base, _log) = spawn_gateway(&sim, sim_addr, &envs);
    let path = "/v1/interactions?from=2024-06-03&to=2024-07-28&limit=10000";
    let (status, accepted) = get(&http, &format!("{base}{path}"), true).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let location = format!("/v1/jobs/{id}");
    // Mid-job: some windows done, not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let (_, v) = get(&http, &format!("{base}{location}"), false).await;
        if v["progress"]["windows_done"].as_u64().unwrap_or(0) >= 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "no window done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before["state"], "running", "{before}");
    println!("before SIGTERM: {before}");
    terminate(&first);
    let took = exited_within(&mut first, Duration::from_secs(10)).await;
    println!("exited {took:?} after SIGTERM with a job running");
    let stopped_at = Instant::now();

    // The job is on disk, resumable, with the windows it finished.
    let rec: Value = serde_json::from_slice(
        &std::fs::read(dir.join("jobs").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["state"], "running", "{rec}");
    let done: Vec<bool> = serde_json::from_value(rec["done"].clone()).unwrap();
    let windows: Vec<[i64; 3]> = serde_json::from_value(rec["windows"].clone()).unwrap();
    assert!(done.iter().filter(|d| **d).count() >= 2, "{rec}");
    assert!(done.iter().any(|d| !d), "not all done: {rec}");

    // Restarted on the same CACHE_DIR: the same Location answers, and the job ends.
    let (mut second, base, _log) = spawn_gateway(&sim, sim_addr, &envs);
    let (status, v) = get(&http, &format!("{base}{location}"), false).await;
    assert_eq!(status, 200, "the job is found after the restart: {v}");
    let end = follow_job(
        &http,
        &format!("{base}{location}"),
        KEY,
        Duration::from_secs(120),
        Some(&before),
    )
    .await;
    assert_eq!(end["state"], "done", "{end}");
    // What was fetched before the restart was not fetched again.
    let refetched = sim
        .calls()
        .iter()
        .filter(|c| c.at > stopped_at)
        .filter(|c| {
            let (Some(s), Some(e)) = (c.start_utc, c.end_utc) else {
                return false;
            };
            windows
                .iter()
                .zip(&done)
                .any(|(w, d)| *d && w[0] <= s.as_second() && e.as_second() <= w[1])
        })
        .count();
    assert_eq!(
        refetched, 0,
        "windows done before the restart were fetched again"
    );
    // The result is the truth, from the cache.
    let result = end["result"].as_str().unwrap().to_owned();
    let calls = sim.call_count();
    let records = all_records(&http, &base, &result).await;
    let extra: Vec<_> = sim.calls()[calls..]
        .iter()
        .map(|c| (c.start_utc, c.end_utc, c.page))
        .collect();
    assert_eq!(
        sim.call_count(),
        calls,
        "the result made upstream calls: {extra:?}"
    );
    let truth = sim.truth(
        at("2024-06-03T00:00:00", "UTC"),
        at("2024-07-28T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert_same_records(&records, &truth);
    terminate(&second);
    exited_within(&mut second, Duration::from_secs(10)).await;
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    std::fs::remove_dir_all(&dir).ok();
}

// Several threads: the simulator must answer while the test waits for a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_job_and_an_export_running_exits_within_shutdown_grace() {
    let (sim, sim_addr) = simulator(2).await;
    let dir = scratch("grace");
    let dir_s = dir.to_str().unwrap().to_owned();
    let grace = Duration::from_secs(4);
    let envs = [
        ("CACHE_DIR", dir_s.as_str()),
        ("KORE_RATE_LIMIT", "2/s"),
        ("SHUTDOWN_GRACE", "4s"),
        // Long enough that only the drain can end the export's wait.
        ("KORE_MAX_WAIT", "600s"),
    ];
    let http = client();
    let (mut gw, base, _log) = spawn_gateway(&sim, sim_addr, &envs);
    let (status, accepted) = get(
        &http,
        &format!("{base}/v1/interactions?from=2024-03-04&to=2024-05-26&limit=10000"),
        true,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    // An export of another cold range, waiting for the budget behind the job.
    let export = {
        let http = http.clone();
        let url = format!("{base}/v1/interactions?from=2024-08-05&to=2024-09-29&format=csv");
        tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(KEY).send().await;
            match resp {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    let body = r.text().await;
                    (status, retry_after, body.is_ok())
                }
                Err(_) => (0, false, false),
            }
        })
    };
    // Both are under way: the export's first calls reached the simulator.
    until("the export called the upstream", || {
        sim.calls().iter().any(|c| {
            c.start_utc
                .is_some_and(|s| s >= at("2024-08-05T00:00:00", "UTC"))
        })
    })
    .await;
    terminate(&gw);
    let took = exited_within(&mut gw, grace + Duration::from_secs(2)).await;
    println!(
        "exited {took:?} after SIGTERM (SHUTDOWN_GRACE {grace:?}) with a job and an export running"
    );
    assert!(took <= grace + Duration::from_millis(500), "{took:?}");
    // The export got a status: a clean 503 with Retry-After (or, had it finished, 200).
    let (status, retry_after, read) = export.await.unwrap();
    assert!(read, "the export's body ended cleanly");
    assert!(
        status == 503 && retry_after || status == 200,
        "export answered {status}"
    );
    // The job is left resumable.
    let rec: Value = serde_json::from_slice(
        &std::fs::read(dir.join("jobs").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        matches!(rec["state"].as_str(), Some("running" | "queued")),
        "{rec}"
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    std::fs::remove_dir_all(&dir).ok();
}

//! The cache tiers in the field: restarts on the same `CACHE_DIR`, a process killed in the
//! middle of a cold fetch, stale-while-revalidate in front of a slow upstream, and the
//! `Cache-Status`/`Age` a client sees. Real HTTP on loopback; truth from the simulator.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use kore_sim::{SimConfig, Simulator};
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kore-tiers-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data(body: &Value) -> Vec<Value> {
    body["data"].as_array().cloned().unwrap_or_default()
}

fn range_truth(h: &Harness, from: &str, to: &str) -> Vec<Value> {
    h.sim.truth(
        at(&format!("{from}T00:00:00"), "UTC"),
        at(&format!("{to}T23:59:59"), "UTC"),
        0,
        &all_fields(),
    )
}

#[tokio::test]
async fn a_restart_on_the_same_cache_dir_answers_a_fetched_range_with_no_upstream_call() {
    let dir = temp_dir("restart");
    let path = "/v1/interactions?from=2024-09-01&to=2024-09-30&limit=10000";
    let first = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let cold = first.json(path).await;
    assert!(first.calls() > 0);
    // The store is one process's at a time: wait until this gateway is gone, as a
    // restart does.
    let gone = std::sync::Arc::downgrade(&first.state.0);
    let upstream = (first.sim.clone(), first.sim_addr);
    first.finish();
    upstream.0.reset_log();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gone.strong_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the first gateway never went away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The same upstream (base URL, account) behind the restarted gateway: what is on disk
    // is its own.
    let second = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        upstream: Some(upstream),
        ..Opts::default()
    })
    .await;
    let resp = second.get(path).await;
    assert_eq!(resp.status(), 200);
    let status = resp.headers()["cache-status"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(second.calls(), 0, "answered from the disk tier");
    assert!(status.contains("; hit; ttl="), "{status}");
    assert_eq!(body["meta"]["cache"], "HIT");
    assert_same_records(
        &data(&body),
        &range_truth(&second, "2024-09-01", "2024-09-30"),
    );
    assert_eq!(data(&body), data(&cold), "byte for byte the same records");
    second.finish();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_unusable_cache_dir_degrades_to_memory_and_says_so() {
    let dir = temp_dir("unusable");
    // A regular file where the folder should be: the store cannot be created.
    let file = dir.join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let h = Harness::start(Opts {
        cache_dir: Some(file.join("cache")),
        ..Opts::default()
    })
    .await;
    let body = h
        .json("/v1/interactions?from=2024-09-02&to=2024-09-03")
        .await;
    assert_eq!(body["meta"]["complete"], true);
    let ready: Value = h.get_with("/readyz", None).await.json().await.unwrap();
    let detail = ready["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("disk cache") && detail.contains("memory"),
        "{ready}"
    );
    h.finish();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_stale_window_is_answered_at_once_and_refreshed_once_behind() {
    let mut cache = Opts::default().cache;
    cache.ttl_past = Duration::from_secs(4);
    cache.swr = Duration::from_secs(600);
    let h = Harness::start(Opts {
        cache,
        ..Opts::default()
    })
    .await;
    // One day: one window, one page.
    let path = "/v1/interactions?from=2024-09-03&to=2024-09-03";
    let truth = range_truth(&h, "2024-09-03", "2024-09-03");
    let first = h.json(path).await;
    assert_same_records(&data(&first), &truth);
    let cold_calls = h.calls();
    assert_eq!(cold_calls, 1);
    tokio::time::sleep(Duration::from_millis(4200)).await;
    // The upstream is now slow: the stale copy must not wait for it.
    h.sim.set_latency(Duration::from_secs(3));
    let started = Instant::now();
    let resp = h.get(path).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    let status = resp.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(status.contains("hit; ttl=-"), "{status}");
    assert!(status.contains("detail=revalidating"), "{status}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["meta"]["stale"], true);
    assert_same_records(&data(&body), &truth);
    // The refresh is under way (the simulator has seen it arrive) while we hold the answer.
    assert_eq!(h.calls(), cold_calls + 1, "one refresh started");
    assert!(
        took < Duration::from_secs(3),
        "answered before the upstream could ({took:?})"
    );
    // Polled until fresh: the refresh is shared, never repeated.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = h.get(path).await;
        let status = resp.headers()["cache-status"].to_str().unwrap().to_owned();
        if !status.contains("ttl=-") {
            assert!(status.contains("; hit; ttl="), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.calls(), cold_calls + 1, "refreshed once");
    h.finish();
}

#[tokio::test]
async fn every_data_answer_says_cache_status_and_age() {
    let h = Harness::start(Opts {
        sim_latency: Duration::from_millis(300),
        ..Opts::default()
    })
    .await;
    let path = "/v1/interactions?from=2024-09-02&to=2024-09-08";
    // Two identical cold requests at once: one fetches, the other joins it.
    let (a, b) = tokio::join!(h.get(path), h.get(path));
    let statuses: Vec<String> = [&a, &b]
        .iter()
        .map(|r| r.headers()["cache-status"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| s.starts_with("kore-gateway; fwd=miss; stored")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.contains("collapsed")),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|s| !s.contains("collapsed")));
    assert_eq!(a.headers()["age"], "0");
    // A repeat is a hit with the freshness left.
    let hit = h.get(path).await;
    let s = hit.headers()["cache-status"].to_str().unwrap();
    let ttl: i64 = s
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(-1);
    assert!(s.starts_with("kore-gateway; hit; ttl=") && ttl > 0, "{s}");
    assert!(hit.headers().contains_key("age"));
    // An admin's no-cache goes to the upstream and says so.
    let forced = h
        .http
        .get(format!("{}{path}", h.base))
        .bearer_auth(ADMIN_KEY)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    let s = forced.headers()["cache-status"].to_str().unwrap();
    assert!(s.starts_with("kore-gateway; fwd=request"), "{s}");
    // The summary and the streams answer from the same windows: hits.
    for p in [
        "/v1/interactions/summary?from=2024-09-02&to=2024-09-08&group_by=channel",
        "/v1/interactions?from=2024-09-02&to=2024-09-08&format=ndjson",
    ] {
        let r = h.get(p).await;
        assert_eq!(r.status(), 200, "{p}");
        let s = r.headers()["cache-status"].to_str().unwrap();
        assert!(s.starts_with("kore-gateway; hit; ttl="), "{p}: {s}");
        assert!(r.headers().contains_key("age"), "{p}");
    }
    // The drop-in route too.
    let cfg = h.sim.config();
    let drop_in = h
        .http
        .post(format!(
            "{}/agentassist/api/public/analytics/account/{}/v2/interactionDetails?offset=0&limit=10",
            h.base, cfg.account_id
        ))
        .bearer_auth(KEY)
        .json(&serde_json::json!({
            "startDate": "2024-09-02 00:00:00",
            "endDate": "2024-09-02 23:59:59",
            "timeZoneOffset": 0
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(drop_in.status(), 200);
    assert!(
        drop_in.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("kore-gateway; fwd=miss"),
    );
    h.finish();
}

/// A gateway process of our own binary, on a free loopback port.
struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    fn spawn(sim: &SimConfig, sim_addr: std::net::SocketAddr, cache_dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_kore-gateway"))
            .env_clear()
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("KORE_BASE_URL", format!("http://{sim_addr}"))
            .env("KORE_ACCOUNT_ID", &sim.account_id)
            .env("KORE_CLIENT_ID", &sim.client_id)
            .env("KORE_CLIENT_SECRET", &sim.client_secret)
            .env("GATEWAY_API_KEYS", format!("team-a:{KEY}"))
            .env("KORE_RATE_LIMIT", "1000/s")
            .env("KORE_CONCURRENCY", "4")
            .env("CACHE_DIR", cache_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/healthz` answers; returns how long that took.
    async fn ready(&self, http: &reqwest::Client) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await
                && r.status() == 200
            {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_in_a_cold_fetch_the_next_start_answers_exactly() {
    let mut cfg = SimConfig::demo();
    cfg.latency = Duration::from_millis(150);
    let (sim, sim_addr) = Simulator::spawn(cfg.clone()).await.unwrap();
    let dir = temp_dir("sigkill");
    // reqwest is built without a crypto provider; this test builds its client before any
    // gateway in this process has installed one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let path = "/v1/interactions?from=2024-07-01&to=2024-09-29&limit=10000";

    let mut first = Gateway::spawn(&cfg, sim_addr, &dir);
    first.ready(&http).await;
    let url = format!("{}{path}", first.base);
    let pending = {
        let http = http.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(KEY).send().await })
    };
    // Kill -9 once part of the range is fetched, in the middle of the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.call_count() < 12 {
        assert!(Instant::now() < deadline, "the cold fetch never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        pending.await.unwrap().is_err(),
        "the request died with the process"
    );
    let calls_before = sim.call_count();

    let second = Gateway::spawn(&cfg, sim_addr, &dir);
    let up = second.ready(&http).await;
    println!("restarted after SIGKILL in {up:?}");
    assert!(up < Duration::from_secs(30), "came up in {up:?}");
    // Every page of the range, by cursor.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}{path}", second.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = http.get(url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["meta"]["complete"], true, "{}", body["meta"]);
        got.extend(data(&body));
        match body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let truth = sim.truth(
        at("2024-07-01T00:00:00", "UTC"),
        at("2024-09-29T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert_same_records(&got, &truth);
    println!(
        "calls before the kill {calls_before}, after the restart {}",
        sim.call_count() - calls_before
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    drop(second);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_revalidations_and_refresh_ahead_share_a_small_budget_without_a_429() {
    let mut cache = Opts::default().cache;
    cache.ttl_recent = Duration::from_secs(2);
    cache.swr = Duration::from_secs(600);
    cache.refresh_ahead_idle = Some(Duration::from_secs(60));
    let h = Harness::start(Opts {
        cache,
        rate: kore_gateway::config::Rate {
            calls: 4,
            period: Duration::from_secs(1),
        },
        sim_rate_limit: Some((4, Duration::from_secs(1))),
        concurrency: 4,
        ..Opts::default()
    })
    .await;
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let poll = format!("/v1/interactions?from={today}&to={today}&limit=1");
    assert_eq!(h.get(&poll).await.status(), 200);
    // A dashboard polls "today" (refresh-ahead and revalidations run behind it) while a
    // caller asks for a cold three weeks.
    let caller = async {
        let body = h
            .json("/v1/interactions?from=2024-09-02&to=2024-09-22&limit=10000")
            .await;
        assert_eq!(body["meta"]["complete"], true);
        assert_same_records(&data(&body), &range_truth(&h, "2024-09-02", "2024-09-22"));
    };
    let dashboard = async {
        for _ in 0..16 {
            let r = h.get(&poll).await;
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::join!(caller, dashboard);
    let c = &h.state.counters;
    let background = c.refresh_ahead.load(std::sync::atomic::Ordering::Relaxed)
        + c.revalidations.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        background > 0,
        "the dashboard's window was refreshed behind it"
    );
    assert_eq!(
        h.sim.count_status(429),
        0,
        "the vendor never refused a call"
    );
    h.finish();
}

/// An overlapping (rolling) deploy: a second process starts on the same CACHE_DIR while the
/// first still holds the store. It answers from memory meanwhile and says so in `/readyz`;
/// once the first lets the store go, it opens it and answers what the first fetched with
/// no upstream call — it does not run cold for its whole life (issue #22).
#[tokio::test]
async fn a_second_process_on_one_cache_dir_opens_the_store_once_the_first_lets_go() {
    let dir = temp_dir("overlap");
    let path = "/v1/interactions?from=2024-09-01&to=2024-09-14&limit=10000";
    let first = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let fetched = first.json(path).await;
    assert!(first.calls() > 0);
    let upstream = (first.sim.clone(), first.sim_addr);
    let second = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        upstream: Some(upstream),
        ..Opts::default()
    })
    .await;
    let ready: Value = second.get_with("/readyz", None).await.json().await.unwrap();
    let detail = ready["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("open in another process"), "{ready}");
    // It answers meanwhile, from memory and the upstream.
    let day = second
        .json("/v1/interactions?from=2024-09-20&to=2024-09-20&limit=10000")
        .await;
    assert_eq!(day["meta"]["complete"], true);

    let gone = std::sync::Arc::downgrade(&first.state.0);
    first.finish();
    until("the first gateway has let its store go", || {
        gone.strong_count() == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Value = second.get_with("/readyz", None).await.json().await.unwrap();
        if ready["detail"]
            .as_str()
            .is_some_and(|d| d.contains("disk cache: up"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the store never opened: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.sim.reset_log();
    let again = second.json(path).await;
    assert_eq!(
        second.calls(),
        0,
        "what the first fetched is read from disk"
    );
    assert_eq!(again["data"], fetched["data"]);
    second.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

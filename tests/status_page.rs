//! The operators' status page in a real browser: the built binary runs `--demo`, a job and
//! some cache hits give it something to show, headless Chromium (Debian's package, driven
//! by playwright-core from tests/browser) opens `/status#key=…`, and the numbers it draws
//! must be the ones `/metrics` reports. The screenshot is kept at artifacts/status.png.
//!
//! `.ci/run` installs Chromium and the npm package; without them this test is skipped
//! locally (with a message) and fails under CI.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

const KEY: &str = "demo-key-0001";
const ADMIN_KEY: &str = "admin-demo-key-0001";

/// Sum of every sample of `name` (any labels) whose label text contains `labels`.
fn metric(text: &str, names: &[&str], labels: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        if names.contains(&name) && series.contains(labels) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_what_metrics_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(chromium) = common::browser_tools("the status page test") else {
        return;
    };
    let (mut gateway, base) = common::spawn_demo(&[("KORE_RATE_LIMIT", "20/s")]);
    let outcome = std::panic::AssertUnwindSafe(exercise(root, &chromium, &base));
    let result = futures_util::FutureExt::catch_unwind(outcome).await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn exercise(root: &Path, chromium: &str, base: &str) {
    // reqwest is built without a default crypto provider (see src/upstream).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(format!("{base}{path}"))
            .bearer_auth(KEY)
            .header("Prefer", "respond-async")
            .send()
    };
    // A month as a job, followed to its end; then its result twice (hits).
    let accepted = get("/v1/interactions?from=2024-09-01&to=2024-09-30&limit=5".into())
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let result = loop {
        let v: Value = get(location.clone()).await.unwrap().json().await.unwrap();
        if v["state"] == "done" {
            break v["result"].as_str().unwrap().to_owned();
        }
        assert_ne!(v["state"], "failed", "{v}");
        assert!(Instant::now() < deadline, "job not done: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..2 {
        assert_eq!(get(result.clone()).await.unwrap().status(), 200);
    }
    // A second key's request, so the page has two teams to compare.
    let admin = http
        .get(format!(
            "{base}/v1/interactions?from=2024-10-01&to=2024-10-09&limit=5"
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    // A live screen follows the change feed from a day back: its backlog has come.
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24);
    let mut stream = http
        .get(format!("{base}/v1/interactions/changes?since={since}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    while !seen.contains("event: created") {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .expect("a backlog within the deadline")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Quiet: nothing in flight or waiting, so the page and /metrics read the same state.
    loop {
        let s: Value = get("/status.json".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["budget"]["in_flight"] == 0 && s["budget"]["waiting"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never quiet: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::create_dir_all(root.join("artifacts")).expect("artifacts dir");
    // The page as an admin sees it (every team) and as the team that made the job sees it
    // (its own row and job, the shared totals): /status.json is scoped by key.
    let shot = root.join("artifacts/status.png");
    let shown = page_shows(root, chromium, base, ADMIN_KEY, &shot).await;
    let team = page_shows(
        root,
        chromium,
        base,
        KEY,
        &root.join("artifacts/status-team.png"),
    )
    .await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = |names: &[&str], labels: &str| {
        metric(&metrics, names, labels).unwrap_or_else(|| panic!("{names:?} not in /metrics"))
    };
    assert_eq!(
        shown["upstream_calls"].as_f64(),
        Some(m(&["gateway_upstream_calls_total"], "")),
        "upstream calls"
    );
    assert_eq!(
        shown["window_entries"].as_f64(),
        Some(m(&["gateway_cache_entries"], "cache=\"windows\"")),
        "cached windows"
    );
    assert_eq!(
        shown["window_hits"].as_f64(),
        Some(m(
            &["gateway_cache_hits", "gateway_cache_hits_total"],
            "kind=\"window\""
        )),
        "window hits"
    );
    assert_eq!(
        shown["window_misses"].as_f64(),
        Some(m(
            &["gateway_cache_misses", "gateway_cache_misses_total"],
            ""
        )),
        "window misses"
    );
    assert_eq!(shown["budget_quota"], 20);
    assert_eq!(
        shown["callers"], 3,
        "two keys and the change feed (its own row) called the upstream"
    );
    assert_eq!(shown["jobs"], 1);
    assert_eq!(shown["job_states"][0], "done");
    assert_eq!(shown["chart_bars"], 30);
    assert_eq!(shown["feed_subscribers"], 1, "the one stream open");
    assert_eq!(shown["feed_topics"], 1);
    assert!(shown["feed_sent"].as_f64().unwrap() >= 1.0);
    assert_eq!(m(&["gateway_feed_subscribers"], ""), 1.0);
    drop(stream);
    assert!(shown["upstream_calls"].as_f64().unwrap() > 0.0);
    // The team key: the same totals, its own row and its own job, not the admin's row.
    for total in [
        "upstream_calls",
        "budget_quota",
        "window_entries",
        "chart_bars",
    ] {
        assert_eq!(
            team[total], shown[total],
            "{total} is a total, the same for every key"
        );
    }
    assert_eq!(team["callers"], 1, "a team key sees its own row only");
    assert_eq!(team["jobs"], 1, "the team's own job");
}

/// Opens `/status#key=…` in Chromium and returns the numbers the page draws.
async fn page_shows(root: &Path, chromium: &str, base: &str, key: &str, shot: &Path) -> Value {
    let script = root.join("tests/browser/status.mjs");
    let (node_base, node_key, node_shot, node_chromium) = (
        base.to_owned(),
        key.to_owned(),
        shot.to_owned(),
        chromium.to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["120", "node"])
            .arg(script)
            .args([node_base.as_str(), node_key.as_str()])
            .arg(&node_shot)
            .env("CHROMIUM", node_chromium)
            .output()
    })
    .await
    .expect("node task")
    .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{text}");
    let shown: Value = text
        .lines()
        .find_map(|l| l.strip_prefix("SHOWN "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no numbers from the page:\n{text}"));
    println!("the page shows {key:.5}…: {shown}");
    assert!(shot.exists(), "screenshot kept");
    shown
}

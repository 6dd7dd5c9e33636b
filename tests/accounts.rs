//! Several vendor accounts behind one gateway (issue #20), over real loopback HTTP against
//! two simulators with different data, account ids and credentials: each account answers
//! its own simulator's truth on every route, a cursor or a cache of one never serves the
//! other, keys read only the accounts they are given, and a flood on one account leaves the
//! other's budget alone.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::*;
use kore_gateway::config::{AccountSettings, Rate, Settings};
use kore_sim::{SimConfig, Simulator};
use serde_json::Value;

/// Two simulated vendor accounts and a gateway in front of both: `us` (the default, seed 1)
/// and `eu` (seed 2, another account id and secret, another base URL). Keys: `team-a` may
/// read `us` only, `team-b` both (not listed), `admin-ops` all.
struct Two {
    us: Simulator,
    eu: Simulator,
    base: String,
    http: reqwest::Client,
    state: kore_gateway::AppState,
    server: tokio::task::JoinHandle<()>,
}

fn eu_config() -> SimConfig {
    let mut cfg = SimConfig::demo();
    cfg.account_id = "66bc4a29bdaafdb08461e0e1".into();
    cfg.client_id = "cs-eu-test-client".into();
    cfg.client_secret = "eu-secret-for-tests-only-0123456789".into();
    cfg.seed = 2;
    cfg
}

/// Settings with the two accounts; `o` as for a one-account harness.
fn two_settings(us: (&Simulator, SocketAddr), eu: (&Simulator, SocketAddr), o: &Opts) -> Settings {
    let mut s = settings_for(us.0, us.1, o);
    s.accounts = vec![
        AccountSettings {
            name: "us".into(),
            upstream: upstream_for(us.0, us.1, o),
            rate: o.rate,
            default: true,
        },
        AccountSettings {
            name: "eu".into(),
            upstream: upstream_for(eu.0, eu.1, o),
            rate: o.rate,
            default: false,
        },
    ];
    s.key_accounts = Some(vec![(Arc::from("team-a"), vec![Arc::from("us")])]);
    s
}

impl Two {
    async fn start(o: Opts) -> Self {
        let mut us_cfg = SimConfig::demo();
        let mut eu_cfg = eu_config();
        for cfg in [&mut us_cfg, &mut eu_cfg] {
            cfg.latency = o.sim_latency;
            cfg.rate_limit = o.sim_rate_limit;
        }
        let (us, us_addr) = Simulator::spawn(us_cfg).await.expect("simulator us");
        let (eu, eu_addr) = Simulator::spawn(eu_cfg).await.expect("simulator eu");
        Self::start_on((us, us_addr), (eu, eu_addr), &o, |_| {}).await
    }

    async fn start_on(
        us: (Simulator, SocketAddr),
        eu: (Simulator, SocketAddr),
        o: &Opts,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = two_settings((&us.0, us.1), (&eu.0, eu.1), o);
        tweak(&mut settings);
        let state = kore_gateway::build(settings).expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = kore_gateway::app(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Two {
            us: us.0,
            eu: eu.0,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            state,
            server,
        }
    }

    async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("gateway answers")
    }

    async fn json(&self, path: &str, key: &str) -> Value {
        let resp = self.get(path, key).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Every record of a JSON query, page after page by cursor.
    async fn all_pages(&self, path: &str, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut url = path.to_owned();
        for _ in 0..100 {
            let body = self.json(&url, key).await;
            out.extend(body["data"].as_array().unwrap().iter().cloned());
            assert_eq!(body["meta"]["complete"], true, "{url}");
            match body["meta"]["next_cursor"].as_str() {
                Some(c) => url = format!("{path}&cursor={c}"),
                None => return out,
            }
        }
        panic!("more than 100 pages");
    }

    fn finish(self) {
        for (name, sim) in [("us", &self.us), ("eu", &self.eu)] {
            let v = sim.violations();
            assert!(v.is_empty(), "simulator {name}: {v:#?}");
        }
        self.server.abort();
    }
}

fn september(sim: &Simulator) -> Vec<Value> {
    sim.truth(
        at("2024-09-01T00:00:00", "UTC"),
        at("2024-09-30T23:59:59", "UTC"),
        0,
        &all_fields(),
    )
}

fn ids(records: &[Value]) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = records.iter().map(id).collect();
    v.sort();
    v
}

const SEPT: &str = "/v1/interactions?from=2024-09-01&to=2024-09-30";

#[tokio::test]
async fn each_account_answers_its_own_truth_on_every_route() {
    let t = Two::start(Opts::default()).await;
    let (us_truth, eu_truth) = (september(&t.us), september(&t.eu));
    assert!(us_truth.len() > 500 && eu_truth.len() > 500);
    // The two accounts hold different conversations: a mix-up could not go unnoticed.
    let shared = ids(&us_truth)
        .into_iter()
        .filter(|i| ids(&eu_truth).contains(i))
        .count();
    assert!(shared < us_truth.len() / 10, "{shared} records in common");

    // JSON, page by page (a cursor per page), default account and named.
    let us = t.all_pages(&format!("{SEPT}&limit=700"), KEY_B).await;
    assert_same_records(&us, &us_truth);
    let eu = t
        .all_pages(&format!("{SEPT}&limit=700&account=eu"), KEY_B)
        .await;
    assert_same_records(&eu, &eu_truth);
    let named_us = t
        .all_pages(&format!("{SEPT}&limit=700&account=us"), KEY_B)
        .await;
    assert_eq!(named_us, us);

    // NDJSON and CSV of the whole range.
    for (account, truth) in [("us", &us_truth), ("eu", &eu_truth)] {
        let nd = t
            .get(&format!("{SEPT}&format=ndjson&account={account}"), KEY_B)
            .await;
        assert_eq!(nd.status(), 200);
        assert_eq!(nd.headers()["x-complete"], "true");
        let lines: Vec<Value> = nd
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_same_records(&lines, truth);
        let csv = t
            .get(&format!("{SEPT}&format=csv&account={account}"), KEY_B)
            .await;
        assert_eq!(csv.status(), 200);
        let text = csv.text().await.unwrap();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let header = rows.headers().unwrap().clone();
        let sid = header.iter().position(|h| h == "sessionId").unwrap();
        let mut got: Vec<String> = rows.records().map(|r| r.unwrap()[sid].to_owned()).collect();
        let mut want: Vec<String> = truth
            .iter()
            .map(|v| v["sessionId"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{account}: CSV rows");
    }

    // The summary: each account alone, both together, and both apart.
    let total = |body: &Value| body["meta"]["total"].as_u64().unwrap() as usize;
    let s_us = t
        .json(
            "/v1/interactions/summary?from=2024-09-01&to=2024-09-30",
            KEY_B,
        )
        .await;
    assert_eq!(total(&s_us), us_truth.len());
    let s_eu = t
        .json(
            "/v1/interactions/summary?from=2024-09-01&to=2024-09-30&account=eu",
            KEY_B,
        )
        .await;
    assert_eq!(total(&s_eu), eu_truth.len());
    let both = t
        .json(
            "/v1/interactions/summary?from=2024-09-01&to=2024-09-30&account=us,eu",
            KEY_B,
        )
        .await;
    assert_eq!(total(&both), us_truth.len() + eu_truth.len());
    assert_eq!(
        both["meta"]["windows"].as_u64().unwrap(),
        2 * s_us["meta"]["windows"].as_u64().unwrap(),
        "each account's windows are counted"
    );
    let apart = t
        .json(
            "/v1/interactions/summary?from=2024-09-01&to=2024-09-30&account=us,eu&group_by=account",
            KEY_B,
        )
        .await;
    let groups = apart["groups"].as_array().unwrap();
    let count_of = |name: &str| {
        groups
            .iter()
            .find(|g| g["key"]["account"] == name)
            .and_then(|g| g["count"].as_u64())
            .unwrap_or_else(|| panic!("no group {name}: {groups:?}")) as usize
    };
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(count_of("us"), us_truth.len());
    assert_eq!(count_of("eu"), eu_truth.len());

    // The drop-in route: the account whose vendor id is in the path, one page as the vendor
    // gives it (a day, at IST's offset).
    for (sim, truth_sim) in [(&t.us, &t.us), (&t.eu, &t.eu)] {
        let account_id = &sim.config().account_id;
        let resp = t
            .http
            .post(format!(
                "{}/agentassist/api/public/analytics/account/{account_id}/v2/interactionDetails?offset=0&limit=100",
                t.base
            ))
            .bearer_auth(KEY_B)
            .json(&serde_json::json!({
                "startDate": "2024-09-26 00:00:00", "endDate": "2024-09-26 23:59:59",
                "timeZoneOffset": -330,
                "selectedFields": ["userleveltags", "sessionleveltags", "customerinfo", "skills"],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let truth = truth_sim.truth(
            at("2024-09-26T00:00:00", "Asia/Kolkata"),
            at("2024-09-26T23:59:59", "Asia/Kolkata"),
            -330,
            &all_fields(),
        );
        assert_eq!(body["numResults"].as_u64().unwrap() as usize, truth.len());
        let page = body["data"].as_array().unwrap();
        assert!(!page.is_empty());
        for r in page {
            assert!(
                truth.contains(r),
                "a record not of this account: {:?}",
                id(r)
            );
        }
    }
    let unknown = t
        .http
        .post(format!(
            "{}/agentassist/api/public/analytics/account/000000000000000000000000/v2/interactionDetails",
            t.base
        ))
        .bearer_auth(KEY_B)
        .json(&serde_json::json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    t.finish();
}

#[tokio::test]
async fn a_cursor_or_an_etag_of_one_account_never_serves_the_other() {
    let t = Two::start(Opts::default()).await;
    let page = t.json(&format!("{SEPT}&limit=50"), KEY_B).await;
    let cursor = page["meta"]["next_cursor"].as_str().unwrap().to_owned();
    // The same query on the other account, with the first account's cursor: refused.
    let resp = t
        .get(
            &format!("{SEPT}&limit=50&account=eu&cursor={cursor}"),
            KEY_B,
        )
        .await;
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["param"], "cursor", "{problem}");
    // An ETag of one account does not match the other's answer.
    let etag = t.get(&format!("{SEPT}&limit=50"), KEY_B).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let other = t
        .http
        .get(format!("{}{SEPT}&limit=50&account=eu", t.base))
        .bearer_auth(KEY_B)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_ne!(other.headers()["etag"].to_str().unwrap(), etag);
    t.finish();
}

#[tokio::test]
async fn keys_read_only_the_accounts_they_are_given() {
    let t = Two::start(Opts::default()).await;
    let day = "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=5";
    // team-a: `us` only (GATEWAY_KEY_ACCOUNTS), by default or by name.
    assert_eq!(t.get(day, KEY).await.status(), 200);
    assert_eq!(t.get(&format!("{day}&account=us"), KEY).await.status(), 200);
    let calls_before = t.eu.call_count();
    for path in [
        format!("{day}&account=eu"),
        "/v1/interactions/summary?from=2024-09-26&to=2024-09-26&account=us,eu".to_owned(),
    ] {
        let resp = t.get(&path, KEY).await;
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["param"], "account");
        assert!(p["detail"].as_str().unwrap().contains("`eu`"), "{p}");
    }
    // A stored answer of `eu` (made for team-b) is not served to team-a either.
    assert_eq!(
        t.get(&format!("{day}&account=eu"), KEY_B).await.status(),
        200
    );
    assert_eq!(t.get(&format!("{day}&account=eu"), KEY).await.status(), 403);
    // Nor is the drop-in route's `eu` account.
    let eu_id = t.eu.config().account_id.clone();
    let resp = t
        .http
        .post(format!(
            "{}/agentassist/api/public/analytics/account/{eu_id}/v2/interactionDetails",
            t.base
        ))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        t.eu.call_count(),
        calls_before + 1,
        "only team-b's request reached eu"
    );
    // Admin keys read every account; an unknown account or two on the records route is a
    // 400 naming `account`.
    assert_eq!(
        t.get(&format!("{day}&account=eu"), ADMIN_KEY)
            .await
            .status(),
        200
    );
    for bad in ["mars", "EU", "us,eu", "a%7Cb"] {
        let resp = t.get(&format!("{day}&account={bad}"), KEY_B).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["param"], "account", "{bad}: {p}");
    }
    t.finish();
}

/// Each account is its own upstream on the operators' surfaces: `/readyz` lists each,
/// `/status.json` has a block for each, and the upstream metrics carry an `account` label.
#[tokio::test]
async fn each_account_shows_on_readyz_status_and_metrics() {
    let t = Two::start(Opts::default()).await;
    t.json(
        "/v1/interactions?from=2024-09-26&to=2024-09-26&account=eu",
        KEY_B,
    )
    .await;
    let ready: Value = t
        .http
        .get(format!("{}/readyz", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let names: Vec<&str> = ready["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["us", "eu"]);
    assert!(
        ready["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "ready")
    );
    let status = t.json("/status.json", ADMIN_KEY).await;
    let blocks = status["accounts"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    let eu = blocks.iter().find(|b| b["name"] == "eu").unwrap();
    assert_eq!(eu["account_id"], t.eu.config().account_id.as_str());
    assert!(eu["budget"]["granted"].as_u64().unwrap() > 0);
    let us = blocks.iter().find(|b| b["name"] == "us").unwrap();
    assert_eq!(us["default"], true);
    // A key limited to `us` sees only its block.
    let team = t.json("/status.json", KEY).await;
    let names: Vec<&str> = team["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["us"]);
    assert!(!team.to_string().contains(&t.eu.config().account_id));
    let metrics = t
        .http
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let eu_calls = metrics
        .lines()
        .any(|l| l.starts_with("gateway_upstream_calls_total{") && l.contains("account=\"eu\""));
    assert!(eu_calls, "no eu-labelled upstream calls in\n{metrics}");
    // Nothing of the credentials on any of them.
    let all = format!("{ready}{status}{metrics}");
    for secret in [
        t.eu.config().client_secret.as_str(),
        t.us.config().client_secret.as_str(),
    ] {
        assert!(!all.contains(secret));
    }
    t.finish();
}

/// Without a default among several accounts, a request that names none is told to.
#[tokio::test]
async fn several_accounts_without_a_default_need_account() {
    let us = Simulator::spawn(SimConfig::demo()).await.unwrap();
    let eu = Simulator::spawn(eu_config()).await.unwrap();
    let t = Two::start_on(us, eu, &Opts::default(), |s| {
        s.accounts[0].default = false;
    })
    .await;
    let resp = t
        .get("/v1/interactions?from=2024-09-26&to=2024-09-26", KEY_B)
        .await;
    assert_eq!(resp.status(), 400);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["param"], "account");
    assert_eq!(t.us.call_count() + t.eu.call_count(), 0);
    t.finish();
}

/// A restart on the same CACHE_DIR with another account (another base URL, another id)
/// makes its own calls and answers its own records; switched back, the first account's
/// windows are still there.
#[tokio::test]
async fn a_restart_with_another_account_on_the_same_cache_dir_never_serves_the_first() {
    let dir = std::env::temp_dir().join(format!(
        "kore-accounts-restart-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = "/v1/interactions?from=2024-09-01&to=2024-09-30&limit=10000";
    let first = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let first_records = first.json(path).await;
    assert_eq!(first_records["meta"]["complete"], true);
    let first_upstream = (first.sim.clone(), first.sim_addr);
    let gone = Arc::downgrade(&first.state.0);
    first.finish();
    until("the first gateway has let its store go", || {
        gone.strong_count() == 0
    })
    .await;

    // Another account on another base URL, same folder (a staging → production switch).
    let (eu, eu_addr) = Simulator::spawn(eu_config()).await.unwrap();
    let opts = Opts {
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    };
    let state = kore_gateway::build(settings_for(&eu, eu_addr, &opts)).unwrap();
    let second = serve(state.clone()).await;
    let body: Value = get_json(&second, path).await;
    assert!(eu.call_count() > 0, "the other account made its own calls");
    assert_eq!(body["meta"]["cache"], "MISS");
    assert_same_records(body["data"].as_array().unwrap(), &september(&eu));
    assert!(eu.violations().is_empty());
    let gone = Arc::downgrade(&state.0);
    drop(state);
    second.1.abort();
    until("the second gateway has let its store go", || {
        gone.strong_count() == 0
    })
    .await;

    // Switched back: the first account's windows were kept, and answer with no call.
    first_upstream.0.reset_log();
    let back = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        upstream: Some(first_upstream),
        ..Opts::default()
    })
    .await;
    let again = back.json(path).await;
    assert_eq!(back.calls(), 0, "the first account's windows were kept");
    assert_eq!(again["data"], first_records["data"]);
    back.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written before keys named their account is set aside, never read.
#[tokio::test]
async fn a_cache_dir_of_the_previous_version_is_set_aside() {
    let dir = std::env::temp_dir().join(format!(
        "kore-accounts-old-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("windows.redb"),
        b"an unkeyed store of the previous version",
    )
    .unwrap();
    let h = Harness::start(Opts {
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "windows.redb"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("windows.redb.unkeyed-")),
        "{names:?}"
    );
    let body = h
        .json("/v1/interactions?from=2024-09-26&to=2024-09-26&limit=10000")
        .await;
    assert!(h.calls() > 0);
    assert_eq!(body["meta"]["complete"], true);
    h.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood of cold queries on one account does not delay the other: each account has its
/// own budget. Both simulators enforce the vendor's rate rule, scaled down.
#[tokio::test]
async fn a_flood_on_one_account_leaves_the_other_alone() {
    let rate = Rate {
        calls: 10,
        period: Duration::from_secs(1),
    };
    let t = Arc::new(
        Two::start(Opts {
            rate,
            sim_rate_limit: Some((10, Duration::from_secs(1))),
            sim_latency: Duration::from_millis(5),
            ..Opts::default()
        })
        .await,
    );
    // Cold months on `us`: far more calls than its budget serves in a second.
    let mut flood = Vec::new();
    for month in ["2024-03", "2024-04", "2024-05"] {
        let t = Arc::clone(&t);
        flood.push(tokio::spawn(async move {
            let path = format!("/v1/interactions?from={month}-01&to={month}-28&format=ndjson");
            t.get(&path, KEY_B).await.status()
        }));
    }
    let us_budget = || t.state.accounts.all()[0].fetcher.budget().stats();
    until("us has calls waiting for its budget", || {
        us_budget().waiting > 0
    })
    .await;
    // A small cold query on `eu` is answered while `us` still has calls queued: it waited
    // for none of them. (Meanwhile an export on `eu` runs too: both simulators enforce the
    // rate rule, and neither sees it broken.)
    let eu_export = {
        let t = Arc::clone(&t);
        tokio::spawn(async move {
            t.get(
                "/v1/interactions?from=2024-08-01&to=2024-08-20&format=ndjson&account=eu",
                ADMIN_KEY,
            )
            .await
            .status()
        })
    };
    let eu_day = t
        .json(
            "/v1/interactions?from=2024-09-26&to=2024-09-26&account=eu&limit=10000",
            KEY_B,
        )
        .await;
    assert!(
        us_budget().waiting > 0,
        "eu answered only after the us flood drained"
    );
    assert_eq!(eu_day["meta"]["complete"], true);
    assert_same_records(
        eu_day["data"].as_array().unwrap(),
        &t.eu.truth(
            at("2024-09-26T00:00:00", "UTC"),
            at("2024-09-26T23:59:59", "UTC"),
            0,
            &all_fields(),
        ),
    );
    assert_eq!(eu_export.await.unwrap(), 200);
    for f in flood {
        assert_eq!(f.await.unwrap(), 200);
    }
    for sim in [&t.us, &t.eu] {
        assert_eq!(sim.count_status(429), 0, "the vendor never had to refuse");
    }
    match Arc::try_unwrap(t) {
        Ok(t) => t.finish(),
        Err(_) => panic!("still shared"),
    }
}

/// A bad accounts file stops the binary with one line naming the account and the field,
/// never the secret.
#[test]
fn a_bad_accounts_file_stops_start_up_naming_its_error() {
    let dir = std::env::temp_dir().join(format!("kore-accounts-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("accounts.toml");
    std::fs::write(
        &file,
        "[accounts.us]\nbase_url = \"https://smartassist.kore.ai\"\naccount_id = \"66bc4a29bdaafdb08461abcd\"\nclient_id = \"cs-us\"\nclient_secret = \"top-secret-value-xyz\"\n\n[accounts.eu]\nbase_url = \"https://eu-platform.kore.ai\"\naccount_id = \"66bc4a29bdaafdb08461ef01\"\nclient_id = \"cs-eu\"\nclient_secret_file = \"/nonexistent/kore-eu\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kore-gateway"))
        .env_clear()
        .env("KORE_ACCOUNTS_FILE", &file)
        .env("GATEWAY_API_KEYS", "team:aaaaaaaaaaaa")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("KORE_ACCOUNTS_FILE"))
        .unwrap_or_default();
    assert!(
        line.contains("account `eu`") && line.contains("client_secret_file"),
        "{err}"
    );
    assert!(!err.contains("top-secret-value-xyz"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway on a loopback port 0, and the task serving it.
async fn serve(state: kore_gateway::AppState) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = kore_gateway::app(state);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), server)
}

async fn get_json(gw: &(String, tokio::task::JoinHandle<()>), path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", gw.0))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

//! Test harness: the built-in simulator and the gateway, each on a real loopback socket on
//! port 0, talking real HTTP. Every test ends with [`Harness::finish`], which fails the test
//! if the simulator recorded any breach of the vendor's rules.

#![allow(dead_code)]

pub mod redis_server;
pub mod sse;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};
use kore_gateway::{
    AppState,
    config::{
        AccountSettings, ApiKey, BudgetSettings, CacheSettings, OffsetMode, Rate, Settings,
        UpstreamSettings,
    },
};
use kore_sim::{Faults, OffsetMode as SimOffsetMode, SimConfig, SimFilter, Simulator};
use secrecy::SecretString;
use serde_json::Value;

pub const KEY: &str = "team-a-key-0001";
pub const KEY_B: &str = "team-b-key-0002";
pub const ADMIN_KEY: &str = "admin-key-0003";
pub const ALL_FIELDS: [&str; 4] = [
    "customerinfo",
    "sessionleveltags",
    "skills",
    "userleveltags",
];

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Opts {
    pub rate: Rate,
    pub concurrency: u32,
    pub max_wait: Duration,
    pub retries: u32,
    pub timeout: Duration,
    pub sim_latency: Duration,
    pub sim_rate_limit: Option<(u32, Duration)>,
    pub faults: Faults,
    pub key_rate_limit: Option<Rate>,
    pub cache: CacheSettings,
    pub jti: bool,
    pub max_calls_per_request: u32,
    pub max_body_bytes: usize,
    /// Simulator data volume (see `SimConfig::volume`).
    pub sim_volume: u32,
    /// CACHE_DIR (the disk tier), when set.
    pub cache_dir: Option<std::path::PathBuf>,
    /// How gateway and simulator both read `offset` (KORE_OFFSET_MODE).
    pub offset_mode: OffsetMode,
    /// CSV_FORMULA_ESCAPE.
    pub csv_formula_escape: bool,
    /// JOB_TTL.
    pub job_ttl: Duration,
    /// A simulator already running (and its address) to use instead of starting one: a
    /// restart of the gateway in front of the same upstream.
    pub upstream: Option<(Simulator, SocketAddr)>,
    /// FEED_* (the change feed).
    pub feed: kore_gateway::feed::FeedSettings,
    /// The simulator's live mode (records published late, revised as time passes).
    pub sim_live: Option<kore_sim::Live>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            rate: Rate {
                calls: 10_000,
                period: Duration::from_secs(1),
            },
            concurrency: 16,
            max_wait: Duration::from_secs(60),
            retries: 3,
            timeout: Duration::from_secs(10),
            sim_latency: Duration::ZERO,
            sim_rate_limit: None,
            faults: Faults::default(),
            key_rate_limit: None,
            cache: CacheSettings {
                max_bytes: 256 << 20,
                ttl_past: Duration::from_secs(86_400),
                ttl_recent: Duration::from_secs(30),
                settle: Duration::from_secs(3600),
                stale_grace: Duration::from_secs(86_400),
                swr: Duration::ZERO,
                refresh_ahead_idle: None,
            },
            jti: false,
            max_calls_per_request: 1000,
            max_body_bytes: 32 << 20,
            sim_volume: 1,
            cache_dir: None,
            offset_mode: OffsetMode::Page,
            csv_formula_escape: true,
            job_ttl: Duration::from_secs(3600),
            upstream: None,
            feed: Default::default(),
            sim_live: None,
        }
    }
}

pub struct Harness {
    pub sim: Simulator,
    pub sim_addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    server: tokio::task::JoinHandle<()>,
}

/// How the gateway reaches the simulator at `sim_addr` (its credentials, the test knobs).
pub fn upstream_for(sim: &Simulator, sim_addr: SocketAddr, o: &Opts) -> UpstreamSettings {
    let cfg = sim.config();
    UpstreamSettings {
        base_url: format!("http://{sim_addr}").parse().unwrap(),
        account_id: cfg.account_id.clone(),
        client_id: cfg.client_id.clone(),
        client_secret: SecretString::from(cfg.client_secret.clone()),
        iid: Some("st-iid-test".into()),
        timeout: o.timeout,
        jwt_ttl: Duration::from_secs(300),
        jwt_jti: o.jti,
        retries: o.retries,
        max_body_bytes: o.max_body_bytes,
        offset_mode: o.offset_mode,
    }
}

pub fn settings_for(sim: &Simulator, sim_addr: SocketAddr, o: &Opts) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        accounts: vec![AccountSettings::single(
            upstream_for(sim, sim_addr, o),
            o.rate,
        )],
        key_accounts: None,
        budget: BudgetSettings {
            rate: o.rate,
            max_wait: o.max_wait,
            concurrency: o.concurrency,
            max_calls_per_request: o.max_calls_per_request,
        },
        api_keys: vec![
            ApiKey {
                name: "team-a".into(),
                key: SecretString::from(KEY.to_owned()),
            },
            ApiKey {
                name: "team-b".into(),
                key: SecretString::from(KEY_B.to_owned()),
            },
            ApiKey {
                name: "admin-ops".into(),
                key: SecretString::from(ADMIN_KEY.to_owned()),
            },
        ],
        key_rate_limit: o.key_rate_limit,
        key_shares: Default::default(),
        allow_anonymous: false,
        cors_origins: vec!["https://dash.example".into()],
        request_timeout: Duration::from_secs(120),
        cache: o.cache,
        max_range_days: 92,
        redis_url: None,
        replicas: 1,
        disk: o
            .cache_dir
            .clone()
            .map(|dir| kore_gateway::config::DiskSettings {
                dir,
                max_bytes: 64 << 20,
            }),
        csv_formula_escape: o.csv_formula_escape,
        job_ttl: o.job_ttl,
        shutdown_grace: Duration::from_secs(25),
        feed: o.feed,
    }
}

impl Harness {
    pub async fn start(o: Opts) -> Self {
        let mut cfg = SimConfig::demo();
        cfg.latency = o.sim_latency;
        cfg.rate_limit = o.sim_rate_limit;
        cfg.faults = o.faults.clone();
        cfg.require_jti = o.jti;
        cfg.volume = o.sim_volume;
        cfg.live = o.sim_live.clone();
        cfg.offset_mode = match o.offset_mode {
            OffsetMode::Page => SimOffsetMode::Page,
            OffsetMode::Record => SimOffsetMode::Record,
        };
        let (sim, sim_addr) = match o.upstream.clone() {
            Some(running) => running,
            None => Simulator::spawn(cfg).await.expect("simulator starts"),
        };
        let state = kore_gateway::build(settings_for(&sim, sim_addr, &o)).expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = kore_gateway::app(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(
                kore_gateway::api::middleware::uri_limit::Guarded(listener),
                app,
            )
            .await;
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Harness {
            sim,
            sim_addr,
            base: format!("http://{addr}"),
            http,
            state,
            server,
        }
    }

    pub async fn get_with(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{}", self.base, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.expect("gateway answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_with(path, Some(KEY)).await
    }

    /// GET and decode a 200 JSON body.
    pub async fn json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Upstream calls the simulator saw.
    pub fn calls(&self) -> usize {
        self.sim.call_count()
    }

    /// Fails the test if the simulator saw any rule breach.
    pub fn finish(self) {
        let v = self.sim.violations();
        assert!(
            v.is_empty(),
            "the simulator recorded {} violation(s): {:#?}",
            v.len(),
            &v[..v.len().min(5)]
        );
        self.server.abort();
    }
}

/// Waits until `cond` holds, failing the test after 30 s: tests order their steps on an
/// observable event (a call the simulator logged, a call waiting for budget), never on a
/// guessed sleep.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Ground truth of a range in a time zone, computed without the gateway's planner: the
/// simulator's records between the two instants, each stretch rendered at the zone's UTC
/// offset in force there (the range is cut at every transition jiff knows, and nowhere
/// else — the vendor's records carry the offset of the request that fetched them).
pub fn truth_in_zone(
    sim: &Simulator,
    from: Timestamp,
    to: Timestamp,
    tz: &str,
    f: &SimFilter,
) -> Vec<Value> {
    let zone = TimeZone::get(tz).unwrap();
    let mut out = Vec::new();
    let mut start = from;
    loop {
        let change = zone
            .following(start)
            .next()
            .map(|t| t.timestamp())
            .filter(|t| *t <= to);
        let end = match change {
            Some(t) => t - jiff::SignedDuration::from_secs(1),
            None => to,
        };
        let offset_minutes = -zone.to_offset(start).seconds() / 60;
        out.extend(sim.truth(start, end, offset_minutes, f));
        match change {
            Some(t) => start = t,
            None => return out,
        }
    }
}

/// Instant of a local time in `tz`.
pub fn at(local: &str, tz: &str) -> Timestamp {
    let tz = TimeZone::get(tz).unwrap();
    let dt: DateTime = local.parse().unwrap();
    tz.to_ambiguous_timestamp(dt).compatible().unwrap()
}

pub fn filter(channels: &[&str], queues: &[&str], bots: &[&str], fields: &[&str]) -> SimFilter {
    SimFilter {
        channels: channels.iter().map(|s| (*s).to_owned()).collect(),
        queues: queues.iter().map(|s| (*s).to_owned()).collect(),
        bots: bots.iter().map(|s| (*s).to_owned()).collect(),
        selected_fields: Some(fields.iter().map(|s| (*s).to_owned()).collect()),
    }
}

pub fn all_fields() -> SimFilter {
    filter(&[], &[], &[], &ALL_FIELDS)
}

/// (sessionId, conversationId) identity of a record.
pub fn id(v: &Value) -> (String, Option<String>) {
    (
        v["sessionId"].as_str().unwrap_or_default().to_owned(),
        v.get("conversationId")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
}

/// Asserts `got` holds exactly the records of `truth`, each once, value for value.
pub fn assert_same_records(got: &[Value], truth: &[Value]) {
    let mut by_id: HashMap<(String, Option<String>), &Value> = HashMap::new();
    for v in got {
        assert!(
            by_id.insert(id(v), v).is_none(),
            "record {:?} returned twice",
            id(v)
        );
    }
    let missing: Vec<_> = truth
        .iter()
        .filter(|t| !by_id.contains_key(&id(t)))
        .map(id)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {:?}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(3)]
    );
    assert_eq!(got.len(), truth.len(), "extra records returned");
    for t in truth {
        assert_eq!(by_id[&id(t)], t, "record {:?} differs", id(t));
    }
}

/// Asserts records are in (start instant, sessionId) order given one offset for all.
pub fn assert_sorted_by_start(got: &[Value]) {
    for pair in got.windows(2) {
        let a = (
            pair[0]["sessionStartTime"].as_str().unwrap(),
            pair[0]["sessionId"].as_str().unwrap(),
        );
        let b = (
            pair[1]["sessionStartTime"].as_str().unwrap(),
            pair[1]["sessionId"].as_str().unwrap(),
        );
        assert!(a <= b, "out of order: {a:?} then {b:?}");
    }
}

/// Chromium's path when Chromium, Node and `tests/browser`'s playwright-core are all there.
/// When one is missing the test is skipped locally (with a message) and fails under CI (`CI`
/// set to anything but `false`/`0`; `.ci/run` sets `CI=true` and installs them): a missing
/// tool there is a broken setup, not a reason to pass.
pub fn browser_tools(test: &str) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let have_node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let have_pkg = root
        .join("tests/browser/node_modules/playwright-core")
        .exists();
    if std::path::Path::new(&chromium).exists() && have_node && have_pkg {
        return Some(chromium);
    }
    let msg = format!(
        "{test} needs chromium, node and `npm ci --prefix tests/browser` (.ci/run installs them)"
    );
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"));
    assert!(!ci, "{msg}");
    eprintln!("SKIPPED: {msg} (fails under CI=true)");
    None
}

/// Our binary with `--demo` on a free loopback port, `envs` added; returns the process and
/// the gateway's base URL as its banner prints it. Its stdout is drained for the whole run
/// (a closed pipe would kill the gateway's next print).
pub fn spawn_demo(envs: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kore-gateway"));
    cmd.arg("--demo")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SIM_LATENCY", "5ms")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut gateway = cmd.spawn().expect("the gateway starts");
    let stdout = gateway.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("gateway on ").nth(1) {
                let _ = tx.send(rest.split(',').next().unwrap_or_default().to_owned());
            }
        }
    });
    let started = std::time::Instant::now();
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(base) => (gateway, base),
        Err(_) => {
            let _ = gateway.kill();
            panic!(
                "the demo did not print its address within {:?}",
                started.elapsed()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The real binary, for what only a process shows (signals, restarts, a replica killed).

/// The gateway binary in front of the simulator at `sim_addr`, configured by KORE_* and
/// the test keys, with `envs` added (nothing else from this environment). Returns the
/// process, its base URL (from its `listening` log line) and its log lines, drained for the
/// whole run. The process is killed if the test ends (or fails) while it still runs.
pub fn spawn_gateway(
    sim: &Simulator,
    sim_addr: std::net::SocketAddr,
    envs: &[(&str, &str)],
) -> (
    KillOnDrop,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let cfg = sim.config();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kore-gateway"));
    cmd.env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("KORE_BASE_URL", format!("http://{sim_addr}"))
        .env("KORE_ACCOUNT_ID", &cfg.account_id)
        .env("KORE_CLIENT_ID", &cfg.client_id)
        .env("KORE_CLIENT_SECRET", &cfg.client_secret)
        .env(
            "GATEWAY_API_KEYS",
            format!("team-a:{KEY},admin-ops:{ADMIN_KEY}"),
        )
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the gateway starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "kore-gateway listening"
                    && let Some(local) = v["local"].as_str()
                {
                    let _ = tx.send(format!("http://{local}"));
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(base) => (KillOnDrop(child), base, log),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "the gateway did not say where it listens: {:?}",
                log.lock().unwrap()
            );
        }
    }
}

/// A process this test started, killed (by its pid) when dropped if it still runs: a
/// failing test leaves no gateway behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An HTTP client for a gateway process (the TLS crypto provider installed first).
pub fn client() -> reqwest::Client {
    kore_gateway::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// SIGTERM to the process we started (by its pid).
pub fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the process to exit; returns how long it took, failing after `within`. It
/// never blocks the runtime: a simulator in this test must go on answering meanwhile.
pub async fn exited_within(child: &mut std::process::Child, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            return started.elapsed();
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {within:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the job at `url` until it ends, checking on every look that its counts never go
/// down (from `since` on, when given: a view seen before a restart or a takeover) and that
/// its estimate covers what is done. Returns the final view.
pub async fn follow_job(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    within: Duration,
    since: Option<&Value>,
) -> Value {
    let progress = |v: &Value, name: &str| {
        v["progress"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("progress.{name} in {v}"))
    };
    let deadline = std::time::Instant::now() + within;
    let mut last: Option<Value> = since.cloned();
    loop {
        let resp = http
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .expect("answers");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{url}: {v}");
        if let Some(prev) = &last {
            for name in [
                "windows_done",
                "windows_total",
                "calls_done",
                "calls_estimated",
            ] {
                assert!(
                    progress(&v, name) >= progress(prev, name),
                    "{name} went down: {prev} then {v}"
                );
            }
        }
        assert!(
            progress(&v, "calls_estimated") >= progress(&v, "calls_done"),
            "estimate below what is done: {v}"
        );
        match v["state"].as_str() {
            Some("done") | Some("failed") => return v,
            Some("queued") | Some("running") => {}
            other => panic!("unknown state {other:?} in {v}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job not done in {within:?}: {v}"
        );
        last = Some(v);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A simulator volume for tests that read the last day: `v` on ordinary days, divided by the
/// campaign factor when today or yesterday (UTC) is one of the simulator's campaign days
/// (36 times the records), so the work a test causes does not depend on the date it runs.
pub fn last_day_volume(v: u32) -> u32 {
    let today = TimeZone::UTC.to_datetime(Timestamp::now()).date();
    let dense = [Some(today), today.yesterday().ok()]
        .into_iter()
        .flatten()
        .any(kore_sim::is_dense_day);
    if dense { (v / 36).max(1) } else { v }
}

//! GATEWAY_KEY_SHARES over loopback against the simulator with its rate rule on (20 calls
//! a second, scaled down from the vendor's 60 a minute so a test takes seconds): weights
//! split the budget while keys wait, a reservation holds against six flooding keys, a key
//! alone uses the whole budget, and with two replicas on a real Redis the shares hold for
//! the deployment, not per replica. Every test counts calls; none times a guess.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use kore_gateway::{
    AppState,
    config::{ApiKey, KeyShares, Rate},
};
use kore_sim::{SimConfig, Simulator};
use secrecy::SecretString;

const RATE: u32 = 20;

/// The keys of these tests: `name` with the key `name-key-000`.
fn key_of(name: &str) -> String {
    format!("{name}-key-000")
}

async fn sim() -> (Simulator, std::net::SocketAddr) {
    let mut cfg = SimConfig::demo();
    cfg.latency = Duration::from_millis(5);
    cfg.rate_limit = Some((RATE, Duration::from_secs(1)));
    Simulator::spawn(cfg).await.expect("simulator starts")
}

/// A gateway in front of `sim` with the keys `names` and the shares `shares`; on Redis when
/// `redis_port` is set.
async fn gateway(
    sim: &(Simulator, std::net::SocketAddr),
    names: &[&str],
    shares: &str,
    redis_port: Option<u16>,
) -> (AppState, String) {
    let opts = Opts {
        rate: Rate {
            calls: RATE,
            period: Duration::from_secs(1),
        },
        concurrency: 16,
        max_wait: Duration::from_secs(120),
        ..Opts::default()
    };
    let mut settings = settings_for(&sim.0, sim.1, &opts);
    for n in names {
        settings.api_keys.push(ApiKey {
            name: (*n).into(),
            key: SecretString::from(key_of(n)),
        });
    }
    settings.key_shares = KeyShares::parse(shares, &settings.api_keys).expect("shares parse");
    if let Some(p) = redis_port {
        settings.redis_url = Some(SecretString::from(format!("redis://127.0.0.1:{p}/")));
        settings.replicas = 2;
    }
    let state = kore_gateway::build(settings).expect("gateway builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = kore_gateway::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, base)
}

/// `key` asks for fresh 4-week ranges over `loops` concurrent loops until aborted: always
/// calls waiting, never a cache hit, never a fetch shared with another key (each key reads
/// its own years).
fn flood(base: &str, key: &str, slot: usize, loops: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..loops)
        .map(|l| {
            let (base, key) = (base.to_owned(), key_of(key));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let start = jiff::civil::date(1990 + 3 * slot as i16, 1, 1);
                for n in 0.. {
                    let from = start
                        .checked_add(jiff::Span::new().days(28 * (n * loops as i64 + l as i64)))
                        .unwrap();
                    let to = from.checked_add(jiff::Span::new().days(27)).unwrap();
                    let _ = http
                        .get(format!(
                            "{base}/v1/interactions?from={from}&to={to}&limit=1"
                        ))
                        .bearer_auth(&key)
                        .send()
                        .await;
                }
            })
        })
        .collect()
}

/// Upstream calls granted per key by one gateway's budget so far.
fn granted(state: &AppState) -> HashMap<String, f64> {
    state.accounts.all()[0]
        .fetcher
        .budget()
        .granted_by_caller()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n as f64))
        .collect()
}

fn delta(after: &HashMap<String, f64>, before: &HashMap<String, f64>, k: &str) -> f64 {
    after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0)
}

/// Calls granted per key over `span`, from `warmup` after now, summed over `states`.
async fn measure(states: &[&AppState], warmup: Duration, span: Duration) -> HashMap<String, f64> {
    tokio::time::sleep(warmup).await;
    let before: Vec<_> = states.iter().map(|s| granted(s)).collect();
    tokio::time::sleep(span).await;
    let mut out = HashMap::new();
    for (s, b) in states.iter().zip(&before) {
        let after = granted(s);
        for k in after.keys() {
            *out.entry(k.clone()).or_insert(0.0) += delta(&after, b, k);
        }
    }
    out
}

/// How full the budget's sliding period is on average over `span` (calls in the period
/// and in flight, over its N), sampled every 10 ms: grants come in bursts as the period
/// slides, so a count over a few seconds would measure where the bursts fall.
async fn busy(state: &AppState, span: Duration) -> f64 {
    let budget = state.accounts.all()[0].fetcher.budget();
    let started = Instant::now();
    let (mut sum, mut n) = (0.0, 0.0);
    while started.elapsed() < span {
        sum += budget.stats().used_in_window as f64 / f64::from(RATE);
        n += 1.0;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sum / n
}

fn stop(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.abort();
    }
}

/// No 429 and no breach of the vendor's rules.
fn clean(sim: &Simulator) {
    assert_eq!(sim.count_status(429), 0, "the simulator answered 429");
    let v = sim.violations();
    assert!(v.is_empty(), "violations: {:#?}", &v[..v.len().min(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_split_the_budget_three_to_one() {
    let sim = sim().await;
    let (state, base) = gateway(
        &sim,
        &["analysts", "batch"],
        "analysts:weight=3,batch:weight=1",
        None,
    )
    .await;
    let mut tasks = flood(&base, "analysts", 0, 4);
    tasks.extend(flood(&base, "batch", 1, 4));
    let got = measure(
        &[&state],
        Duration::from_millis(1500),
        Duration::from_secs(5),
    )
    .await;
    stop(tasks);
    let ratio = got["analysts"] / got["batch"];
    eprintln!("weights 3:1 -> {got:?}, ratio {ratio:.2}");
    assert!((ratio - 3.0).abs() <= 0.45, "3:1 ± 15 %: {got:?}");
    clean(&sim.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_alone_uses_the_whole_budget() {
    let sim = sim().await;
    let (state, base) = gateway(
        &sim,
        &["wallboard", "batch"],
        "wallboard:min=10/s,batch:weight=1",
        None,
    )
    .await;
    let tasks = flood(&base, "batch", 0, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = busy(&state, Duration::from_secs(5)).await;
    let got = granted(&state);
    stop(tasks);
    let mine = state.accounts.all()[0].fetcher.budget().granted_by_caller();
    assert!(mine.iter().all(|(k, _)| &**k == "batch"), "{mine:?}");
    eprintln!("alone -> {got:?}, the budget {:.0} % used", used * 100.0);
    assert!(
        used >= 0.9,
        "a key alone used {:.0} % of the budget",
        used * 100.0
    );
    clean(&sim.0);
}

const SIX: [&str; 6] = ["an-1", "an-2", "an-3", "an-4", "an-5", "an-6"];

/// Six analysts flood; the wall-board's cold query (two busy weeks) is timed with and without a
/// reservation of half the budget, and with it the wall-board gets at least 90 % of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_holds_against_six_flooding_keys() {
    let mut names = SIX.to_vec();
    names.push("wallboard");
    let mut waits = Vec::new();
    for shares in ["", "wallboard:min=10/s"] {
        let sim = sim().await;
        let (state, base) = gateway(&sim, &names, shares, None).await;
        let mut tasks = Vec::new();
        for (i, k) in SIX.iter().enumerate() {
            tasks.extend(flood(&base, k, i + 1, 3));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The wall-board's cold query: two weeks it never read.
        let started = Instant::now();
        let resp = reqwest::Client::new()
            .get(format!(
                "{base}/v1/interactions?from=2024-01-01&to=2024-01-14&limit=1"
            ))
            .bearer_auth(key_of("wallboard"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let took = started.elapsed();
        let calls = granted(&state).get("wallboard").copied().unwrap_or(0.0);
        eprintln!(
            "six exports, wall-board shares `{shares}`: its cold query took {took:?} ({calls} calls)"
        );
        waits.push(took);
        if !shares.is_empty() {
            // Flooding too, it gets its reservation.
            tasks.extend(flood(&base, "wallboard", 0, 3));
            let got = measure(
                &[&state],
                Duration::from_millis(1500),
                Duration::from_secs(5),
            )
            .await;
            let all: f64 = got.values().sum();
            let share = got["wallboard"] / all;
            eprintln!("seven flooding, wall-board min=10/s -> {got:?}, its share {share:.2}");
            // Its reservation is half of what the budget grants; 90 % of that at least.
            assert!(share >= 0.9 * 0.5, "{got:?}");
        }
        stop(tasks);
        clean(&sim.0);
    }
    // Its calls go at 20/7 a second without the reservation and at 10 + 10/7 with it.
    assert!(
        waits[1] * 2 < waits[0],
        "with {:?}, without {:?}",
        waits[1],
        waits[0]
    );
}

/// Replica A serves only the weight-3 key, replica B only the weight-1 key: per replica
/// each would get half; across the deployment they get 3:1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_across_two_replicas_on_redis() {
    let Some(redis) = common::redis_server::redis_or_skip() else {
        return;
    };
    let sim = sim().await;
    let shares = "analysts:weight=3,batch:weight=1";
    let names = ["analysts", "batch"];
    let (a, base_a) = gateway(&sim, &names, shares, Some(redis.port)).await;
    let (b, base_b) = gateway(&sim, &names, shares, Some(redis.port)).await;
    let mut tasks = flood(&base_a, "analysts", 0, 4);
    tasks.extend(flood(&base_b, "batch", 1, 4));
    let got = measure(
        &[&a, &b],
        Duration::from_millis(2500),
        Duration::from_secs(5),
    )
    .await;
    stop(tasks);
    let ratio = got["analysts"] / got["batch"];
    eprintln!("two replicas, weights 3:1 -> {got:?}, ratio {ratio:.2}");
    assert!(
        (ratio - 3.0).abs() <= 0.45,
        "3:1 ± 15 % across replicas: {got:?}"
    );
    clean(&sim.0);
}

//! The shares on paused time: reservations plus weights when everyone waits, idle shares
//! lent, a key alone served in full, caps, and the budget's sliding-window promise under
//! any shares (a property test).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use proptest::prelude::*;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::{
    budget::Budget,
    config::{ApiKey, BudgetSettings, KeyShares, Rate},
};

const NAMES: [&str; 7] = ["wallboard", "analysts", "batch", "k4", "k5", "k6", "k7"];

fn table(raw: &str) -> Arc<KeyShares> {
    let keys: Vec<ApiKey> = NAMES
        .iter()
        .map(|n| ApiKey {
            name: (*n).into(),
            key: SecretString::from(format!("{n}-0000000")),
        })
        .collect();
    Arc::new(KeyShares::parse(raw, &keys).expect("test shares parse"))
}

use std::sync::Arc;

fn budget(calls: u32, shares: &str) -> Arc<Budget> {
    let s = BudgetSettings {
        rate: Rate {
            calls,
            period: Duration::from_secs(1),
        },
        max_wait: Duration::from_secs(3600),
        concurrency: 1000,
        max_calls_per_request: 1000,
    };
    Arc::new(Budget::with_shares(
        &s,
        "default".into(),
        None,
        Duration::from_secs(30),
        table(shares),
    ))
}

type Log = Arc<Mutex<Vec<(Arc<str>, Instant)>>>;

/// `n` calls of `key` queued now; each records its grant and completes at once.
fn flood(b: &Arc<Budget>, log: &Log, key: &str, n: usize) {
    let key: Arc<str> = key.into();
    for _ in 0..n {
        let (b, log, key) = (Arc::clone(b), Arc::clone(log), Arc::clone(&key));
        tokio::spawn(async move {
            if let Ok(p) = b.acquire(&key).await {
                log.lock().unwrap().push((key, Instant::now()));
                drop(p);
            }
        });
    }
}

/// Grants per key within `[from, to)`.
fn counts(log: &Log, from: Instant, to: Instant) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (k, t) in log.lock().unwrap().iter() {
        if *t >= from && *t < to {
            *out.entry(k.to_string()).or_insert(0.0) += 1.0;
        }
    }
    out
}

fn within(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= want * tolerance,
        "{what}: got {got}, want {want} ± {:.0} %",
        tolerance * 100.0
    );
}

/// With demand from everyone, each key gets its reservation plus its weight's share of
/// the rest: wallboard min=5 of 20, analysts weight 3, batch and k4 weight 1 (wallboard's
/// own weight is 1): 5 + 15/6, 15·3/6, 15/6, 15/6 per period.
#[tokio::test(start_paused = true)]
async fn everyone_waiting_gets_min_plus_weight_share() {
    let b = budget(20, "wallboard:min=5/s,analysts:weight=3,batch:weight=1");
    let log: Log = Arc::default();
    for k in ["wallboard", "analysts", "batch", "k4"] {
        flood(&b, &log, k, 1000);
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(32)).await;
    // From the third period: the first went to whoever arrived first, alone.
    let c = counts(
        &log,
        start + Duration::from_secs(2),
        start + Duration::from_secs(32),
    );
    let total: f64 = c.values().sum();
    assert!(
        total > 0.95 * 20.0 * 30.0 / 1.01,
        "the budget was used: {total}"
    );
    let rest = total - 5.0 * total / 20.0;
    within(
        c["wallboard"],
        5.0 * total / 20.0 + rest / 6.0,
        0.05,
        "wallboard",
    );
    within(c["analysts"], rest * 3.0 / 6.0, 0.05, "analysts");
    within(c["batch"], rest / 6.0, 0.05, "batch");
    within(c["k4"], rest / 6.0, 0.05, "k4");
}

/// An unused reservation goes to the keys waiting; once its key waits, it gets it back.
#[tokio::test(start_paused = true)]
async fn idle_reservations_are_lent_and_come_back() {
    let b = budget(20, "wallboard:min=10/s");
    let log: Log = Arc::default();
    flood(&b, &log, "analysts", 2000);
    flood(&b, &log, "batch", 2000);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = counts(
        &log,
        start + Duration::from_secs(2),
        start + Duration::from_secs(12),
    );
    let lent = c["analysts"] + c["batch"];
    assert!(
        lent >= 0.95 * 200.0 / 1.01,
        "the idle reservation was lent: {c:?}"
    );
    within(c["analysts"], c["batch"], 0.05, "equal weights");
    // Now the wall-board waits too: its reservation and a third of the rest.
    flood(&b, &log, "wallboard", 2000);
    let mid = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = counts(
        &log,
        mid + Duration::from_secs(1),
        mid + Duration::from_secs(20),
    );
    let total: f64 = c.values().sum();
    within(
        c["wallboard"],
        total / 2.0 + total / 6.0,
        0.05,
        "reservation back",
    );
}

/// A key alone gets every slot, whatever the others' reservations and weights.
#[tokio::test(start_paused = true)]
async fn a_key_alone_gets_the_whole_budget() {
    let b = budget(20, "wallboard:min=10/s,analysts:weight=3,batch:weight=1");
    let log: Log = Arc::default();
    flood(&b, &log, "batch", 1000);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = counts(&log, start, start + Duration::from_secs(20));
    assert!(c["batch"] >= 0.95 * 400.0 / 1.01, "{c:?}");
}

/// A cap holds in any period, and what the capped key cannot use goes to the others.
#[tokio::test(start_paused = true)]
async fn a_cap_holds_and_the_rest_is_used() {
    let b = budget(20, "batch:max=3/s,batch:weight=10");
    let log: Log = Arc::default();
    flood(&b, &log, "batch", 500);
    flood(&b, &log, "analysts", 500);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let all = log.lock().unwrap().clone();
    let batch: Vec<Instant> = all
        .iter()
        .filter(|(k, _)| &**k == "batch")
        .map(|(_, t)| *t)
        .collect();
    assert!(most_in_a_period(&batch, Duration::from_secs(1)) <= 3);
    assert!(all.len() as f64 >= 0.95 * 200.0 / 1.01, "{}", all.len());
    // A capped key alone: the budget waits for its cap, without spinning.
    let b = budget(20, "batch:max=3/s");
    let log: Log = Arc::default();
    flood(&b, &log, "batch", 30);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got: Vec<Instant> = log.lock().unwrap().iter().map(|(_, t)| *t).collect();
    assert!(most_in_a_period(&got, Duration::from_secs(1)) <= 3);
    assert!(got.len() >= 15, "{}", got.len());
}

/// The played-forward schedule gives a reserved key its reservation: its ETA is much
/// shorter than with the round robin.
#[tokio::test(start_paused = true)]
async fn time_to_serve_as_follows_the_shares() {
    let others: Vec<(Arc<str>, u64)> = ["k4", "k5", "k6", "k7", "analysts", "batch"]
        .iter()
        .map(|k| (Arc::from(*k), 1000))
        .collect();
    let me: Arc<str> = "wallboard".into();
    let plain = budget(20, "").time_to_serve_as(&me, 100, &others);
    let reserved = budget(20, "wallboard:min=10/s").time_to_serve_as(&me, 100, &others);
    // 100 calls at 20/7 a second, or at 10 + 10/7 a second.
    within(
        plain.as_secs_f64(),
        100.0 / (20.0 / 7.0),
        0.1,
        "round robin ETA",
    );
    within(
        reserved.as_secs_f64(),
        100.0 / (10.0 + 10.0 / 7.0),
        0.1,
        "reserved ETA",
    );
}

fn most_in_a_period(times: &[Instant], period: Duration) -> usize {
    let mut v = times.to_vec();
    v.sort();
    (0..v.len())
        .map(|i| {
            v[i..]
                .iter()
                .take_while(|u| u.duration_since(v[i]) < period)
                .count()
        })
        .max()
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the shares and the arrivals, no period ever holds more than N grants, no
    /// key more than its cap, and everything asked for is granted.
    #[test]
    fn the_sliding_window_promise_holds_whatever_the_shares(
        calls in 1u32..12,
        mins in proptest::collection::vec(0u32..4, 3),
        weights in proptest::collection::vec(1u32..5, 3),
        maxes in proptest::collection::vec(0u32..6, 3),
        arrivals in proptest::collection::vec((0usize..3, 0u64..3000, 1usize..8), 1..12),
    ) {
        let mut raw = Vec::new();
        let mut reserved = 0;
        for i in 0..3 {
            let name = NAMES[i];
            if mins[i] > 0 && reserved + mins[i] <= calls && (maxes[i] == 0 || mins[i] <= maxes[i]) {
                reserved += mins[i];
                raw.push(format!("{name}:min={}/s", mins[i]));
            }
            raw.push(format!("{name}:weight={}", weights[i]));
            if maxes[i] > 0 {
                raw.push(format!("{name}:max={}/s", maxes[i]));
            }
        }
        let raw = raw.join(",");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (all, asked) = rt.block_on(async {
            let b = budget(calls, &raw);
            let log: Log = Arc::default();
            let mut asked = 0;
            let mut sorted = arrivals.clone();
            sorted.sort_by_key(|a| a.1);
            let start = Instant::now();
            for (k, at, n) in sorted {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                flood(&b, &log, NAMES[k], n);
                asked += n;
            }
            tokio::time::sleep(Duration::from_secs(200)).await;
            let all = log.lock().unwrap().clone();
            (all, asked)
        });
        let times: Vec<Instant> = all.iter().map(|(_, t)| *t).collect();
        prop_assert!(most_in_a_period(&times, Duration::from_secs(1)) <= calls as usize, "{raw}");
        for (i, name) in NAMES.iter().take(3).enumerate() {
            if maxes[i] > 0 {
                let mine: Vec<Instant> = all.iter().filter(|(k, _)| &**k == *name).map(|(_, t)| *t).collect();
                prop_assert!(most_in_a_period(&mine, Duration::from_secs(1)) <= maxes[i] as usize, "{raw}");
            }
        }
        prop_assert_eq!(all.len(), asked, "every call was granted: {}", raw);
    }
}

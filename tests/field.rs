//! The data path in the field: a vendor whose `numResults` lies, filter values full of
//! separator characters, data that changes between pages, expired and incomplete windows in
//! streams, runaway bodies. Real HTTP on loopback against the simulator; truth comes from
//! the simulator's own records, never from the gateway's planner.

mod common;

use std::{collections::HashMap, time::Instant};

use common::*;
use kore_sim::{CountLie, FaultKind, Faults};
use serde_json::Value;

/// A Monday-to-Sunday UTC week with no campaign day (~300 records).
const QUIET_WEEK: (&str, &str) = ("2024-11-11", "2024-11-17");
/// A Monday-to-Sunday UTC week holding a campaign day (2024-11-21, ~2,000 records).
const DENSE_WEEK: (&str, &str) = ("2024-11-18", "2024-11-24");

fn week_truth(h: &Harness, (from, to): (&str, &str)) -> Vec<Value> {
    h.sim.truth(
        at(&format!("{from}T00:00:00"), "UTC"),
        at(&format!("{to}T23:59:59"), "UTC"),
        0,
        &all_fields(),
    )
}

fn data(body: &Value) -> Vec<Value> {
    body["data"].as_array().cloned().unwrap_or_default()
}

/// Peak resident memory of this test process, in MiB (Linux), for the printed figures.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

async fn lying(lie: CountLie) -> Harness {
    Harness::start(Opts {
        faults: Faults {
            count: lie,
            ..Faults::default()
        },
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn a_lying_count_costs_a_handful_of_calls_and_is_reported() {
    let lies = [
        CountLie::Fixed(2_000_000_000),
        CountLie::Fixed(0),
        CountLie::OffBy(1),
        CountLie::OffBy(-1),
        CountLie::Growing { step: 400 },
    ];
    for lie in lies {
        let h = lying(lie.clone()).await;
        let truth = week_truth(&h, QUIET_WEEK);
        assert!(
            truth.len() > 100,
            "the week spans several pages ({} records)",
            truth.len()
        );
        let started = Instant::now();
        let body = h
            .json(&format!(
                "/v1/interactions?from={}&to={}&limit=10000",
                QUIET_WEEK.0, QUIET_WEEK.1
            ))
            .await;
        let took = started.elapsed();
        // The pages are the evidence: every record is there, and the disagreement is said.
        assert_same_records(&data(&body), &truth);
        assert_eq!(body["meta"]["complete"], false, "{lie:?}");
        let warnings = body["meta"]["warnings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("reported"))),
            "{lie:?}: {warnings:?}"
        );
        let pages_needed = truth.len().div_ceil(100);
        println!(
            "lying count {lie:?}: {} records, {} upstream calls ({} pages of data), {:.2} s, peak RSS {:?} MiB",
            truth.len(),
            h.calls(),
            pages_needed,
            took.as_secs_f64(),
            peak_rss_mib()
        );
        // A handful: a count within one query's reach is trusted for the pages to ask at
        // once (at most the 11 one query has); one beyond it is checked against the last
        // page first, then pages go on one batch at a time until a short one.
        let bound = match lie {
            CountLie::Fixed(n) if n > 1100 => pages_needed + 2,
            _ => 11,
        };
        assert!(
            h.calls() <= bound,
            "{lie:?}: {} calls for {pages_needed} pages",
            h.calls()
        );
        h.finish();
    }
}

#[tokio::test]
async fn a_huge_count_on_a_week_that_does_overflow_is_refused_before_the_calls_are_spent() {
    let h = lying(CountLie::Fixed(2_000_000_000)).await;
    let resp = h
        .get(&format!(
            "/v1/interactions?from={}&to={}",
            DENSE_WEEK.0, DENSE_WEEK.1
        ))
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "a problem body"
    );
    let p: Value = resp.json().await.unwrap();
    let detail = p["detail"].as_str().unwrap_or_default();
    // The estimate is at least one call per page the vendor claims.
    let estimate: u64 = detail
        .split("estimated ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        estimate >= 2_000_000_000 / 100 && detail.contains("1000 one request"),
        "the detail names the estimate and the allowance: {detail}"
    );
    // The first page, and the last reachable page that confirmed the overflow.
    assert_eq!(h.calls(), 2);
    h.finish();
}

#[tokio::test]
async fn a_zero_count_on_a_crowded_week_still_brings_every_record() {
    let h = lying(CountLie::Fixed(0)).await;
    let truth = week_truth(&h, DENSE_WEEK);
    assert!(truth.len() > 1100, "{} records", truth.len());
    let body = h
        .json(&format!(
            "/v1/interactions?from={}&to={}&limit=10000",
            DENSE_WEEK.0, DENSE_WEEK.1
        ))
        .await;
    assert_same_records(&data(&body), &truth);
    assert_eq!(body["meta"]["complete"], false);
    println!(
        "zero count, crowded week: {} records, {} calls",
        truth.len(),
        h.calls()
    );
    // Cut by what the pages showed, never below a minute: bounded by the records.
    assert!(
        h.calls() <= 2 * truth.len().div_ceil(100) + 20,
        "{}",
        h.calls()
    );
    h.finish();
}

#[tokio::test]
async fn a_crowded_week_costs_what_it_did_before() {
    let h = Harness::start(Opts::default()).await;
    let truth = week_truth(&h, DENSE_WEEK);
    let body = h
        .json(&format!(
            "/v1/interactions?from={}&to={}&limit=10000",
            DENSE_WEEK.0, DENSE_WEEK.1
        ))
        .await;
    assert_same_records(&data(&body), &truth);
    assert_eq!(body["meta"]["complete"], true);
    println!("crowded week: {} records, {} calls", truth.len(), h.calls());
    // Measured with the gateway before counts became hints (5047cc5): 27 calls.
    assert!(h.calls() <= 27, "{} calls", h.calls());
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_50000_records_answers_whole_within_the_call_budget() {
    let h = Harness::start(Opts {
        sim_volume: 180,
        ..Opts::default()
    })
    .await;
    let truth = week_truth(&h, QUIET_WEEK);
    assert!(truth.len() > 45_000, "{} records", truth.len());
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!(
            "/v1/interactions?from={}&to={}&limit=10000",
            QUIET_WEEK.0, QUIET_WEEK.1
        );
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let body = h.json(&path).await;
        assert_eq!(body["meta"]["complete"], true);
        got.extend(data(&body));
        pages += 1;
        match body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 20, "paging ends");
    }
    assert_same_records(&got, &truth);
    println!(
        "50,000-record week: {} records in {pages} pages, {} upstream calls",
        truth.len(),
        h.calls()
    );
    assert!(h.calls() <= 1000, "{} calls", h.calls());
    h.finish();
}

#[tokio::test]
async fn a_request_over_its_call_allowance_gets_an_honest_503() {
    let h = Harness::start(Opts {
        sim_volume: 180,
        max_calls_per_request: 100,
        ..Opts::default()
    })
    .await;
    let resp = h
        .get(&format!(
            "/v1/interactions?from={}&to={}",
            QUIET_WEEK.0, QUIET_WEEK.1
        ))
        .await;
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let p: Value = resp.json().await.unwrap();
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("estimated") && detail.contains("100 one request"),
        "{detail}"
    );
    assert!(
        h.calls() <= 2,
        "stopped before spending: {} calls",
        h.calls()
    );
    h.finish();
}

/// Two queries that a `|`/`=`-joined key could not tell apart.
#[tokio::test]
async fn filter_values_with_separators_never_share_an_answer() {
    let h = Harness::start(Opts::default()).await;
    let (from, to) = ("2024-09-02", "2024-09-04");
    let queue = "qu-support";
    let pairs = [
        // The pair: channels `voice,x|q=<queue>` vs channels `voice,x` + queues `<queue>|q=`.
        (
            vec![("channels", format!("voice,x|q={queue}"))],
            vec![
                ("channels", "voice,x".to_owned()),
                ("queues", format!("{queue}|q=")),
            ],
        ),
        (
            vec![
                ("channels", "voice".to_owned()),
                ("queues", format!("a,{queue}")),
            ],
            vec![
                ("channels", "voice,a".to_owned()),
                ("queues", queue.to_owned()),
            ],
        ),
        (
            vec![("bots", "st-1|b=".to_owned())],
            vec![("bots", "st-1".to_owned()), ("queues", "|b=".to_owned())],
        ),
    ];
    let split = |v: &str| -> Vec<String> {
        let mut l: Vec<String> = v.split(',').map(str::to_owned).collect();
        l.sort();
        l.dedup();
        l
    };
    for (a, b) in pairs {
        for params in [&a, &b, &a] {
            let mut path = format!("/v1/interactions?from={from}&to={to}&limit=10000");
            let mut f = all_fields();
            for (name, value) in params.iter() {
                path.push_str(&format!(
                    "&{name}={}",
                    form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                ));
                match *name {
                    "channels" => f.channels = split(value),
                    "queues" => f.queues = split(value),
                    _ => f.bots = split(value),
                }
            }
            let truth = h.sim.truth(
                at(&format!("{from}T00:00:00"), "UTC"),
                at(&format!("{to}T23:59:59"), "UTC"),
                0,
                &f,
            );
            let body = h.json(&path).await;
            assert_same_records(&data(&body), &truth);
        }
    }
    h.finish();
}

#[tokio::test]
async fn cursor_paging_over_data_refreshed_between_pages_yields_each_record_once() {
    let h = Harness::start(Opts::default()).await;
    let (from, to) = QUIET_WEEK;
    let truth = week_truth(&h, QUIET_WEEK);
    // The vendor has not yet published a few sessions that started early in the week.
    let mut by_start = truth.clone();
    by_start.sort_by(|a, b| {
        (a["sessionStartTime"].as_str(), a["sessionId"].as_str())
            .cmp(&(b["sessionStartTime"].as_str(), b["sessionId"].as_str()))
    });
    let late: Vec<String> = by_start[5..15]
        .iter()
        .filter_map(|v| v["sessionId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(late.len(), 10);
    h.sim.set_hidden(late.clone());
    let first = h
        .json(&format!("/v1/interactions?from={from}&to={to}&limit=50"))
        .await;
    let mut got = data(&first);
    assert_eq!(got.len(), 50);
    // They are published now; every later page is fetched afresh (an admin's no-cache, as
    // a window touching "now" would be refreshed between two pages).
    h.sim.set_hidden(Vec::new());
    let mut cursor = first["meta"]["next_cursor"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(c) = cursor {
        let resp = h
            .http
            .get(format!(
                "{}/v1/interactions?from={from}&to={to}&limit=50&cursor={c}",
                h.base
            ))
            .bearer_auth(ADMIN_KEY)
            .header("cache-control", "no-cache")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["meta"]["cache"], "MISS", "the page was fetched afresh");
        got.extend(data(&body));
        cursor = body["meta"]["next_cursor"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages < 100);
    }
    // Each record of what was published when paging began, exactly once; the sessions
    // published meanwhile sort before the first page's end and are not mixed in.
    let mut seen: HashMap<(String, Option<String>), usize> = HashMap::new();
    for v in &got {
        *seen.entry(id(v)).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "records repeated: {repeated:?}");
    let published: Vec<Value> = truth
        .iter()
        .filter(|v| !late.iter().any(|l| v["sessionId"].as_str() == Some(l)))
        .cloned()
        .collect();
    assert_same_records(&got, &published);
    h.finish();
}

#[tokio::test]
async fn streams_say_in_their_headers_when_a_window_is_stale_or_incomplete() {
    let mut cache = Opts::default().cache;
    cache.ttl_past = std::time::Duration::from_secs(1);
    let h = Harness::start(Opts {
        cache,
        retries: 0,
        ..Opts::default()
    })
    .await;
    let (from, to) = QUIET_WEEK;
    let truth = week_truth(&h, QUIET_WEEK);
    let path = format!("/v1/interactions?from={from}&to={to}&format=ndjson");
    let lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let fresh = h.get(&path).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["x-complete"], "true");
    assert_eq!(fresh.headers()["x-stale"], "false");
    assert_same_records(&lines(&fresh.text().await.unwrap()), &truth);

    // The copy expires (1 s) and the upstream now fails: the stream stands in with it
    // and says so before the first byte.
    h.sim.set_faults(Faults {
        error_rate: 1.0,
        kinds: vec![FaultKind::Status500],
        ..Faults::default()
    });
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let stale = h
        .get(&format!("/v1/interactions?from={from}&to={to}&format=csv"))
        .await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-stale"], "true");
    assert!(
        stale.headers().get_all("x-warning").iter().any(|w| w
            .to_str()
            .is_ok_and(|w| w.contains("could not be refreshed"))),
        "{:?}",
        stale.headers()
    );
    let csv_text = stale.text().await.unwrap();
    let rows = csv::Reader::from_reader(csv_text.as_bytes())
        .records()
        .count();
    assert_eq!(rows, truth.len());

    // A count that does not check out: the stream carries everything and says it is not
    // known to be whole.
    h.sim.set_faults(Faults {
        count: CountLie::OffBy(1),
        ..Faults::default()
    });
    let other = format!("/v1/interactions?from={from}&to={to}&format=ndjson&channels=voice");
    let resp = h.get(&other).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-complete"], "false");
    let voice = h.sim.truth(
        at(&format!("{from}T00:00:00"), "UTC"),
        at(&format!("{to}T23:59:59"), "UTC"),
        0,
        &filter(&["voice"], &[], &[], &ALL_FIELDS),
    );
    assert_same_records(&lines(&resp.text().await.unwrap()), &voice);
    h.finish();
}

#[tokio::test]
async fn an_upstream_body_over_the_cap_is_a_transient_failure_not_memory() {
    let h = Harness::start(Opts {
        max_body_bytes: 4096,
        retries: 1,
        ..Opts::default()
    })
    .await;
    let resp = h
        .get("/v1/interactions?from=2024-09-02&to=2024-09-02")
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Retried once, as a transient failure is.
    assert_eq!(h.calls(), 2);
    h.finish();
}

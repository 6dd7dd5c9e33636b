//! Upstream faults, one kind at a time and mixed: every answer is whole and equal to the
//! simulator's truth, or says it is not (`meta.complete: false`, or a 502/503/504 problem).
//! The figure that matters is the count of silently wrong answers, which must be zero.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use kore_sim::{FaultKind, Faults};
use serde_json::Value;

#[derive(Default, Debug)]
struct Tally {
    whole: usize,
    said_incomplete: usize,
    explicit_error: usize,
    silently_wrong: usize,
}

const RANGES: [(&str, &str, &str); 5] = [
    ("2024-03-01", "2024-03-14", "UTC"),
    ("2024-03-05", "2024-03-20", "America/New_York"),
    ("2024-02-10", "2024-02-25", "Asia/Kolkata"),
    ("2024-01-15", "2024-01-31", "Europe/London"),
    ("2024-03-25", "2024-04-02", "Australia/Sydney"),
];

async fn run(h: &Harness, tally: &mut Tally) {
    for (from, to, tz) in RANGES {
        let resp = h
            .get(&format!(
                "/v1/interactions?from={from}&to={to}&tz={tz}&limit=10000"
            ))
            .await;
        let status = resp.status().as_u16();
        if [502, 503, 504].contains(&status) {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            tally.explicit_error += 1;
            continue;
        }
        assert_eq!(status, 200, "only 200 or an explicit upstream error");
        let body: Value = resp.json().await.unwrap();
        if body["meta"]["complete"] != true {
            assert!(
                !body["meta"]["warnings"].as_array().unwrap().is_empty(),
                "incomplete says why"
            );
            tally.said_incomplete += 1;
            continue;
        }
        // The truth is the simulator's, cut only where the zone's offset changes: nothing
        // of the gateway's planning goes into it.
        let (f, t) = (
            at(&format!("{from}T00:00:00"), tz),
            at(&format!("{to}T23:59:59"), tz),
        );
        let truth = truth_in_zone(&h.sim, f, t, tz, &all_fields());
        assert!(!truth.is_empty(), "{from}..{to} {tz} holds records");
        let got = body["data"].as_array().unwrap();
        let same = got.len() == truth.len()
            && got.iter().map(id).collect::<HashSet<_>>()
                == truth.iter().map(id).collect::<HashSet<_>>()
            && truth.iter().all(|t| got.iter().any(|g| g == t));
        if same {
            tally.whole += 1;
        } else {
            tally.silently_wrong += 1;
        }
    }
}

async fn with_fault(kind: FaultKind, rate: f64, timeout: Duration) -> Tally {
    let h = Harness::start(Opts {
        faults: Faults {
            error_rate: rate,
            kinds: vec![kind],
            ..Faults::default()
        },
        timeout,
        retries: 3,
        ..Opts::default()
    })
    .await;
    let mut tally = Tally::default();
    run(&h, &mut tally).await;
    h.finish();
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_kind_produces_a_silently_wrong_answer() {
    let mut total = Tally::default();
    let kinds = [
        (FaultKind::Status500, 0.2),
        (FaultKind::Status503, 0.2),
        (
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
            },
            0.1,
        ),
        (FaultKind::DropConnection, 0.2),
        (FaultKind::TruncatedBody, 0.2),
        // Slower than the gateway's per-call timeout below, so these calls time out.
        (FaultKind::Slow(Duration::from_millis(4000)), 0.2),
        (FaultKind::WrongNumResults, 0.3),
        // Every call fails: nothing can be whole, everything must say so.
        (FaultKind::Status502, 1.0),
    ];
    // Each kind has its own simulator and gateway, so they run side by side.
    let runs = kinds.map(|(kind, rate)| async move {
        let label = format!("{kind:?} at {rate}");
        (
            label,
            // Eight gateways and simulators share the machine (debug builds, often beside
            // other builds): a per-call timeout of 500 ms timed out healthy calls too, and
            // the test then measured the machine's load rather than the faults.
            with_fault(kind, rate, Duration::from_millis(2500)).await,
        )
    });
    for (label, t) in futures_util::future::join_all(runs).await {
        println!("faults: {label}: {t:?}");
        assert_eq!(t.silently_wrong, 0, "{label}: {t:?}");
        total.whole += t.whole;
        total.said_incomplete += t.said_incomplete;
        total.explicit_error += t.explicit_error;
        total.silently_wrong += t.silently_wrong;
    }
    let answered = total.whole + total.said_incomplete + total.explicit_error;
    println!(
        "faults total: {} answers, {} whole and true ({:.0}%), {} said incomplete, {} explicit errors, {} silently wrong",
        answered,
        total.whole,
        100.0 * total.whole as f64 / answered as f64,
        total.said_incomplete,
        total.explicit_error,
        total.silently_wrong
    );
    assert_eq!(total.silently_wrong, 0);
    assert!(
        total.whole >= RANGES.len() * 4,
        "retries make most answers whole under transient faults: {total:?}"
    );
    assert!(
        total.said_incomplete > 0,
        "wrong numResults was noticed and reported: {total:?}"
    );
}

//! The change feed over real loopback HTTP against the simulator, with the interval scaled
//! down: backlog, new and changed records, resuming by `Last-Event-ID`, one poll for many
//! subscribers, a failing upstream, the limits, tickets and the drain.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, Harness, KEY, KEY_B, Opts, all_fields, sse::Sse};
use jiff::{SignedDuration, Timestamp};
use kore_gateway::feed::FeedSettings;
use kore_sim::{FaultKind, Faults, Live};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(300);
/// Long enough for a few polls, whatever the machine's load.
const WITHIN: Duration = Duration::from_secs(20);

fn opts(lookback: Duration) -> Opts {
    Opts {
        sim_volume: common::last_day_volume(8),
        // Records are published when they start (never before): nothing "from the future".
        sim_live: Some(Live {
            publish_delay: Duration::ZERO,
            revise_share: 0.0,
            revise_every: Duration::from_secs(3600),
            max_revisions: 0,
        }),
        feed: FeedSettings {
            interval: INTERVAL,
            lookback,
            keep_alive: Duration::from_millis(500),
            ..FeedSettings::default()
        },
        ..Opts::default()
    }
}

/// A gateway whose simulator's clock stands at `t0` (one second ago): no record starts
/// during the test, so the truth does not move under it.
async fn start(lookback: Duration) -> (Harness, Timestamp) {
    let h = Harness::start(opts(lookback)).await;
    let t0 = Timestamp::now() - SignedDuration::from_secs(1);
    h.sim.pin_clock(Some(t0));
    (h, t0)
}

/// The simulator's records of `[from, t0]` in UTC, minus `hidden`, in the feed's backlog
/// order (start, then sessionId).
fn truth(h: &Harness, from: Timestamp, t0: Timestamp, hidden: &[String]) -> Vec<Value> {
    let mut t: Vec<Value> = h
        .sim
        .truth(from, t0, 0, &all_fields())
        .into_iter()
        .filter(|r| !hidden.iter().any(|id| r["sessionId"] == *id.as_str()))
        .collect();
    t.sort_by(|a, b| {
        let k = |r: &Value| {
            (
                r["sessionStartTime"].as_str().unwrap_or("").to_owned(),
                r["sessionId"].as_str().unwrap_or("").to_owned(),
            )
        };
        k(a).cmp(&k(b))
    });
    t
}

fn session(v: &Value) -> String {
    v["sessionId"].as_str().unwrap_or_default().to_owned()
}

fn url(h: &Harness, since: Timestamp) -> String {
    format!("{}/v1/interactions/changes?since={since}", h.base)
}

/// Asserts `events` are the backlog `expected`: `created`, record for record, in order.
fn assert_backlog(events: &[common::sse::SseEvent], expected: &[Value]) {
    assert_eq!(events.len(), expected.len());
    for (e, want) in events.iter().zip(expected) {
        assert_eq!(e.event, "created", "{e:?}");
        assert!(e.id.is_some(), "a backlog event has an id");
        assert_eq!(&e.json(), want);
    }
}

fn no_rate_limit_hit(h: &Harness) {
    assert_eq!(h.sim.count_status(429), 0, "the simulator answered 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_then_new_records_then_one_update_and_never_a_repeat() {
    let (h, t0) = start(Duration::from_secs(86_400)).await;
    // Six hours: even at night (the simulator's quiet hours) they hold records enough.
    let since = t0 - SignedDuration::from_hours(6);
    let recent = truth(&h, since, t0, &[]);
    assert!(recent.len() >= 4, "the test needs a few recent records");
    let hidden = vec![session(&recent[1]), session(&recent[recent.len() - 1])];
    h.sim.set_hidden(hidden.clone());

    let mut s = Sse::open(&url(&h, since), Some(KEY), None).await;
    let expected = truth(&h, since, t0, &hidden);
    let backlog = s.take(expected.len(), WITHIN).await;
    assert_backlog(&backlog, &expected);

    // The vendor publishes the two records: each arrives once, as `created`.
    h.sim.set_hidden(Vec::<String>::new());
    let created = s.take(2, WITHIN).await;
    let mut got: Vec<Value> = created.iter().map(|e| e.json()).collect();
    got.sort_by_key(session);
    let mut want: Vec<Value> = truth(&h, since, t0, &[])
        .into_iter()
        .filter(|r| hidden.contains(&session(r)))
        .collect();
    want.sort_by_key(session);
    assert!(created.iter().all(|e| e.event == "created"), "{created:?}");
    assert_eq!(got, want);

    // A record's final status and dispositions change after the session: one `updated`,
    // with the new values.
    let changed = session(&expected[0]);
    h.sim.revise(&changed);
    let updated = s.take(1, WITHIN).await;
    assert_eq!(updated[0].event, "updated");
    let now_truth = truth(&h, since, t0, &[]);
    let want = now_truth
        .iter()
        .find(|r| session(r) == changed)
        .expect("still there");
    assert_eq!(&updated[0].json(), want);
    assert_ne!(
        updated[0].json()["finalStatus"],
        expected[0]["finalStatus"],
        "the change is visible"
    );

    // Unchanged records are never sent again, poll after poll.
    let calls = h.calls();
    common::until("five more polls", || h.calls() >= calls + 5).await;
    let quiet = s.during(Duration::from_millis(500)).await;
    assert!(quiet.is_empty(), "repeats: {quiet:?}");
    assert!(
        s.keepalives > 0,
        "keep-alive comments while nothing changes"
    );
    no_rate_limit_hit(&h);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_right_after_its_last_event() {
    // A short lookback: the backlog's older records come from a range fetch, the newer
    // ones from the feed's own picture.
    // The shortest lookback (3 h, else 6 h, 9 h: the simulator has quiet hours) whose
    // watched part holds a few records, and a `since` three hours before it.
    let t0 = Timestamp::now() - SignedDuration::from_secs(1);
    let mut o = opts(Duration::ZERO);
    o.sim_volume = common::last_day_volume(16);
    let plain = kore_sim::Simulator::new(kore_sim::SimConfig {
        volume: o.sim_volume,
        ..kore_sim::SimConfig::demo()
    });
    let hours = [3, 6, 9]
        .into_iter()
        .find(|h| {
            let from = t0 - SignedDuration::from_hours(*h) + SignedDuration::from_mins(10);
            plain.truth(from, t0, 0, &all_fields()).len() >= 4
        })
        .unwrap_or(9);
    o.feed.lookback = Duration::from_secs(hours as u64 * 3600);
    let h = Harness::start(o).await;
    h.sim.pin_clock(Some(t0));
    let since = t0 - SignedDuration::from_hours(hours + 3);
    let recent = truth(
        &h,
        t0 - SignedDuration::from_hours(hours) + SignedDuration::from_mins(10),
        t0,
        &[],
    );
    assert!(recent.len() >= 4, "the test needs a few recent records");
    let held: Vec<String> = recent.iter().take(3).map(session).collect();
    h.sim.set_hidden(held.clone());
    let expected = truth(&h, since, t0, &held);

    // Half the backlog, then the connection drops.
    let mut s = Sse::open(&url(&h, since), Some(KEY), None).await;
    let half = expected.len() / 2;
    let first = s.take(half, WITHIN).await;
    assert_backlog(&first, &expected[..half]);
    let backlog_id = s.last_id.clone().expect("an id");
    drop(s);

    // Resumed from a backlog id: the rest of the backlog, nothing twice.
    let mut s = Sse::open(&url(&h, since), Some(KEY), Some(&backlog_id)).await;
    let rest = s.take(expected.len() - half, WITHIN).await;
    assert_backlog(&rest, &expected[half..]);

    // One record is published and seen; then the client drops.
    h.sim.set_hidden(held[1..].to_vec());
    let one = s.take(1, WITHIN).await;
    assert_eq!(
        (one[0].event.as_str(), session(&one[0].json())),
        ("created", held[0].clone())
    );
    let live_id = s.last_id.clone().expect("an id");
    drop(s);

    // While it is away the other two are published and a recent record changes.
    h.sim.set_hidden(Vec::<String>::new());
    let changed = session(&recent[3]);
    h.sim.revise(&changed);
    // This time as a page whose ticket expired does it: the id as a parameter, no header.
    let resumed = format!("{}&last_event_id={live_id}", url(&h, since));
    let mut s = Sse::open(&resumed, Some(KEY), None).await;
    let missed = s.take(3, WITHIN).await;
    let mut kinds: Vec<(String, String)> = missed
        .iter()
        .map(|e| (e.event.clone(), session(&e.json())))
        .collect();
    kinds.sort();
    let mut want = vec![
        ("created".to_owned(), held[1].clone()),
        ("created".to_owned(), held[2].clone()),
        ("updated".to_owned(), changed.clone()),
    ];
    want.sort();
    assert_eq!(kinds, want);
    let calls = h.calls();
    common::until("three more polls", || h.calls() >= calls + 3).await;
    assert!(
        s.during(Duration::from_millis(400)).await.is_empty(),
        "nothing twice"
    );
    drop(s);

    // An id this gateway never issued: `reset` first, then the backlog afresh.
    let mut s = Sse::open(&url(&h, since), Some(KEY), Some("0123456789abcdef-999999")).await;
    let reset = s.take(1, WITHIN).await;
    assert_eq!(reset[0].event, "reset");
    let all = truth(&h, since, t0, &[]);
    let again = s.take(all.len(), WITHIN).await;
    assert_backlog(&again, &all);

    // A record that started before the lookback and changes now is no longer followed:
    // it is not announced (what the README says of such records).
    h.sim.revise(&session(&expected[0]));
    let calls = h.calls();
    common::until("three more polls", || h.calls() >= calls + 3).await;
    assert!(s.during(Duration::from_millis(400)).await.is_empty());
    no_rate_limit_hit(&h);
    h.finish();
}

/// Upstream calls made while `n` subscribers listen for `span`, on a fresh gateway.
async fn calls_with_subscribers(n: usize, span: Duration) -> usize {
    let (h, _t0) = start(Duration::from_secs(86_400)).await;
    let mut streams = Vec::new();
    for i in 0..n {
        let key = [KEY, KEY_B, ADMIN_KEY][i % 3];
        let mut s = Sse::open(
            &format!("{}/v1/interactions/changes", h.base),
            Some(key),
            None,
        )
        .await;
        // Open once the topic made its first complete poll (a keep-alive comes after).
        s.during(Duration::from_millis(50)).await;
        streams.push(s);
    }
    let before = h.calls();
    tokio::time::sleep(span).await;
    let calls = h.calls() - before;
    for s in &streams {
        assert!(!s.ended, "a stream ended");
    }
    no_rate_limit_hit(&h);
    h.finish();
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_subscribers_cost_the_upstream_what_one_costs() {
    let span = Duration::from_secs(3);
    let one = calls_with_subscribers(1, span).await;
    let ten = calls_with_subscribers(10, span).await;
    assert!(one >= 3, "the feed polls: {one} calls in {span:?}");
    assert!(
        (ten as f64) <= 1.5 * one as f64,
        "ten subscribers made {ten} calls, one made {one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_gives_warnings_and_no_false_events() {
    let mut o = opts(Duration::from_secs(86_400));
    o.retries = 0;
    let h = Harness::start(o).await;
    let t0 = Timestamp::now() - SignedDuration::from_secs(1);
    h.sim.pin_clock(Some(t0));
    let since = t0 - SignedDuration::from_hours(6);
    let expected = truth(&h, since, t0, &[]);
    assert!(!expected.is_empty(), "the test needs a record to change");
    let mut s = Sse::open(&url(&h, since), Some(KEY), None).await;
    assert_backlog(&s.take(expected.len(), WITHIN).await, &expected);

    h.sim.set_faults(Faults {
        error_rate: 1.0,
        kinds: vec![FaultKind::Status503, FaultKind::TruncatedBody],
        ..Faults::default()
    });
    // Meanwhile a record changes: nothing can vouch for it while the upstream fails.
    let changed = session(&expected[0]);
    h.sim.revise(&changed);
    let failing = s.during(Duration::from_secs(3)).await;
    assert!(!failing.is_empty(), "a warning while the upstream fails");
    for e in &failing {
        assert_eq!(e.event, "warning", "only warnings while failing: {e:?}");
        assert!(e.id.is_none(), "a warning does not move Last-Event-ID");
        assert!(e.json()["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }

    // Recovered: the change that happened meanwhile arrives, once.
    h.sim.set_faults(Faults::default());
    let mut after = Vec::new();
    while after
        .iter()
        .all(|e: &common::sse::SseEvent| e.event == "warning")
    {
        after.extend(s.take(1, WITHIN).await);
    }
    let e = after.last().expect("an event");
    assert_eq!((e.event.as_str(), session(&e.json())), ("updated", changed));
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_limits_tickets_and_the_drain() {
    let mut o = opts(Duration::from_secs(86_400));
    o.feed.max_subscribers_per_key = 2;
    let h = Harness::start(o).await;
    let base = format!("{}/v1/interactions/changes", h.base);
    let http = reqwest::Client::new();

    // No key: 401; a key in the URL is not a key.
    let r = http.get(&base).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}?api_key={KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a key in a URL is never read");
    // Bad input: 400 problems, never a stream.
    for q in [
        "since=yesterday",
        "tz=Mars/Base",
        "fields=nope",
        "account=nope",
        "limit=5",
    ] {
        let r = http
            .get(format!("{base}?{q}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
    }

    // Two streams per key here; the third is 429, and another key still gets one.
    let a1 = Sse::open(&base, Some(KEY), None).await;
    let a2 = Sse::open(&base, Some(KEY), None).await;
    let r = http.get(&base).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["type"],
        "/problems/too-many-streams"
    );
    let mut b = Sse::open(&base, Some(KEY_B), None).await;
    drop(a1);
    // A closed stream frees its place.
    common::until("the closed stream is let go", || {
        h.state
            .feed
            .subscribers_by_key()
            .iter()
            .any(|(k, n)| &**k == "team-a" && *n == 1)
    })
    .await;
    let a3 = Sse::open(&base, Some(KEY), None).await;

    // A ticket opens exactly its query, without a header, and counts for its key.
    let q = "tz=Asia/Kolkata&channels=voice";
    let t: Value = http
        .post(format!("{}/v1/interactions/changes/tickets?{q}", h.base))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = t["ticket"].as_str().expect("a ticket").to_owned();
    assert!(
        t["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("&ticket={ticket}"))
    );
    let mut via_ticket = Sse::open(
        &format!("{}{}", h.base, t["url"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    let other = http
        .get(format!("{base}?tz=UTC&ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400, "a ticket opens only its own query");
    let forged = http
        .get(format!(
            "{base}?{q}&ticket={}x",
            &ticket[..ticket.len() - 1]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    // SIGTERM's drain ends every stream cleanly.
    h.state.drain.start(Duration::from_secs(5));
    b.during(Duration::from_secs(3)).await;
    via_ticket.during(Duration::from_secs(1)).await;
    assert!(b.ended && via_ticket.ended, "streams end at the drain");
    drop((a2, a3));
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_left_behind_gets_a_final_reset_and_resumes_by_its_id() {
    let mut o = opts(Duration::from_secs(86_400));
    // A backlog of many megabytes the client does not read: the stream's writer waits on
    // the socket while changes pile up beyond a buffer of four.
    o.sim_volume = common::last_day_volume(150);
    o.feed.buffer = 4;
    o.feed.interval = Duration::from_secs(1);
    let h = Harness::start(o).await;
    let t0 = Timestamp::now() - SignedDuration::from_secs(1);
    h.sim.pin_clock(Some(t0));
    let since = t0 - SignedDuration::from_hours(23);
    let expected = truth(&h, since, t0, &[]);
    let mut s = Sse::open(&url(&h, since), Some(KEY), None).await;
    common::until("the backlog is being written", || {
        h.state
            .feed
            .counters
            .sent
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    let changed: Vec<String> = expected.iter().rev().take(20).map(session).collect();
    for id in &changed {
        h.sim.revise(id);
    }
    common::until("the poller found the twenty changes", || {
        h.state
            .feed
            .counters
            .updated
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 20
    })
    .await;

    // Now the client reads: the backlog it was sent, then a final reset, then the end.
    let mut got = Vec::new();
    while let Some(e) = s.next(WITHIN).await {
        got.push(e);
    }
    assert!(s.ended, "the stream is closed");
    let last = got.last().expect("events");
    assert_eq!(
        last.event,
        "reset",
        "{:?}",
        &got[got.len().saturating_sub(3)..]
    );
    let before: Vec<_> = got[..got.len() - 1].to_vec();
    assert!(before.iter().all(|e| e.event == "created"));
    assert!(
        before.len() < expected.len() + changed.len(),
        "it was cut short"
    );

    // Resuming from its last id gives what it missed: the rest of the backlog (with the
    // current content) — every record once — and nothing it already had.
    let mut r = Sse::open(&url(&h, since), Some(KEY), s.last_id.as_deref()).await;
    let rest = r
        .take(expected.len() - before.len(), Duration::from_secs(60))
        .await;
    let mut seen: Vec<String> = before
        .iter()
        .chain(&rest)
        .map(|e| session(&e.json()))
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "no record twice");
    let mut want: Vec<String> = expected.iter().map(session).collect();
    want.sort();
    assert_eq!(seen, want);
    h.finish();
}

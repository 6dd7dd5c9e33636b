//! The change feed on two replicas sharing one Redis, in front of one simulator, over real
//! loopback HTTP with the interval scaled down: one replica polls (a lease), both stream the
//! same events under the same ids, a client resumes on the other replica with its
//! `Last-Event-ID`, and the other replica takes over polling when the first one's
//! subscribers leave.
//!
//! A real redis-server is started on a free loopback port and stopped by its pid
//! (`common::redis_server`). Without one the test is skipped locally and fails under CI.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{
    KEY, KEY_B, Opts, all_fields,
    redis_server::{Redis, redis_or_skip},
    settings_for,
    sse::{Sse, SseEvent},
};
use jiff::{SignedDuration, Timestamp};
use kore_gateway::{AppState, feed::FeedSettings};
use kore_sim::{Live, SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(300);
/// Long enough for a few polls, whatever the machine's load.
const WITHIN: Duration = Duration::from_secs(20);

fn opts() -> Opts {
    Opts {
        sim_volume: common::last_day_volume(4),
        feed: FeedSettings {
            interval: INTERVAL,
            lookback: Duration::from_secs(86_400),
            keep_alive: Duration::from_millis(500),
            ..FeedSettings::default()
        },
        ..Opts::default()
    }
}

/// The simulator, live with records published when they start (nothing "from the
/// future"), its clock pinned at `t0` (one second ago) so the truth does not move.
async fn simulator() -> (Simulator, SocketAddr, Timestamp) {
    let mut cfg = SimConfig::demo();
    cfg.volume = opts().sim_volume;
    cfg.live = Some(Live {
        publish_delay: Duration::ZERO,
        revise_share: 0.0,
        revise_every: Duration::from_secs(3600),
        max_revisions: 0,
    });
    let (sim, addr) = Simulator::spawn(cfg).await.expect("simulator starts");
    let t0 = Timestamp::now() - SignedDuration::from_secs(1);
    sim.pin_clock(Some(t0));
    (sim, addr, t0)
}

/// A replica in this process on `redis`, in front of the simulator.
async fn replica(sim: &Simulator, sim_addr: SocketAddr, redis: &Redis) -> (AppState, String) {
    let mut settings = settings_for(sim, sim_addr, &opts());
    settings.redis_url = Some(SecretString::from(format!(
        "redis://127.0.0.1:{}/",
        redis.port
    )));
    settings.replicas = 2;
    let state = kore_gateway::build(settings).expect("gateway builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = kore_gateway::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, base)
}

/// Whether this replica polls the (one) topic, as `state.feed.topics()` reports it.
fn polling(state: &AppState) -> bool {
    state.feed.topics().iter().any(|t| t.polling)
}

fn session(v: &Value) -> String {
    v["sessionId"].as_str().unwrap_or_default().to_owned()
}

/// The simulator's records of `[from, t0]` in UTC, minus `hidden`, in the feed's backlog
/// order (start, then sessionId).
fn truth(sim: &Simulator, from: Timestamp, t0: Timestamp, hidden: &[String]) -> Vec<Value> {
    let mut t: Vec<Value> = sim
        .truth(from, t0, 0, &all_fields())
        .into_iter()
        .filter(|r| !hidden.contains(&session(r)))
        .collect();
    t.sort_by_key(|r| {
        (
            r["sessionStartTime"].as_str().unwrap_or("").to_owned(),
            session(r),
        )
    });
    t
}

/// `(event, sessionId)` of each event, sorted.
fn kinds(events: &[SseEvent]) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event.clone(), session(&e.json())))
        .collect();
    k.sort();
    k
}

/// Asserts `events` are the backlog `expected`: `created`, record for record, in order.
fn assert_backlog(events: &[SseEvent], expected: &[Value]) {
    assert_eq!(events.len(), expected.len());
    for (e, want) in events.iter().zip(expected) {
        assert_eq!(e.event, "created", "{e:?}");
        assert!(e.id.as_deref().is_some_and(|i| !i.is_empty()), "{e:?}");
        assert_eq!(&e.json(), want);
    }
}

/// The next `n` events but warnings, within [`WITHIN`]. A warning is the feed's right
/// answer when the test publishes records between two pages of one window (the vendor's
/// count and its pages then disagree for that poll, which is retried): it is skipped.
async fn take(s: &mut Sse, n: usize) -> Vec<SseEvent> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = s
            .next(left)
            .await
            .unwrap_or_else(|| panic!("{} of {n} events within {WITHIN:?}: {out:?}", out.len()));
        if e.event != "warning" {
            out.push(e);
        }
    }
    out
}

/// The events but warnings of the next `span`.
async fn quiet(s: &mut Sse, span: Duration) -> Vec<SseEvent> {
    let mut v = s.during(span).await;
    v.retain(|e| e.event != "warning");
    v
}

/// Upstream calls the simulator saw during `span`.
async fn calls_during(sim: &Simulator, span: Duration) -> usize {
    let before = sim.call_count();
    tokio::time::sleep(span).await;
    sim.call_count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_poll_once_and_stream_the_same_events_under_the_same_ids() {
    let Some(redis) = redis_or_skip() else { return };
    let (sim, sim_addr, t0) = simulator().await;
    let since = t0 - SignedDuration::from_hours(6);
    // Twelve hours (inside the 24 h watched): records enough even in the simulator's quiet
    // hours.
    let recent = truth(&sim, t0 - SignedDuration::from_hours(12), t0, &[]);
    assert!(recent.len() >= 8, "the test needs a few recent records");
    // Seven recent records the vendor has not published yet.
    let held: Vec<String> = recent.iter().rev().take(7).map(session).collect();
    sim.set_hidden(held.clone());
    let url = |base: &str| format!("{base}/v1/interactions/changes?since={since}");

    // One replica alone: what a topic costs the upstream. Two subscribers there: one stays
    // (A keeps polling), one will leave and come back on B.
    let (a, base_a) = replica(&sim, sim_addr, &redis).await;
    let mut sa = Sse::open(&url(&base_a), Some(KEY), None).await;
    let mut away = Sse::open(&url(&base_a), Some(KEY), None).await;
    let expected = truth(&sim, since, t0, &held);
    assert_backlog(&take(&mut sa, expected.len()).await, &expected);
    assert_backlog(&take(&mut away, expected.len()).await, &expected);
    let span = Duration::from_secs(3);
    let one = calls_during(&sim, span).await;
    assert!(one >= 3, "the feed polls: {one} calls in {span:?}");
    assert!(polling(&a), "alone, A polls");

    // A second replica, with a subscriber of its own to the same query: it follows the
    // shared log, it does not poll.
    let (b, base_b) = replica(&sim, sim_addr, &redis).await;
    let mut sb = Sse::open(&url(&base_b), Some(KEY_B), None).await;
    assert_backlog(&take(&mut sb, expected.len()).await, &expected);
    let two = calls_during(&sim, span).await;
    println!("upstream calls in {span:?}: one replica {one}, two replicas {two}");
    assert!(
        (two as f64) <= 1.5 * one as f64,
        "two replicas made {two} calls, one made {one}: both poll"
    );
    assert_eq!(
        (polling(&a), polling(&b)),
        (true, false),
        "exactly one replica polls"
    );
    assert!(
        quiet(&mut sa, Duration::from_millis(300)).await.is_empty(),
        "no event while nothing changes"
    );

    // Two records are published: each arrives once on both replicas, as `created`, under
    // the same id.
    sim.set_hidden(held[2..].to_vec());
    let on_a = take(&mut sa, 2).await;
    let on_b = take(&mut sb, 2).await;
    let mut want = vec![
        ("created".to_owned(), held[0].clone()),
        ("created".to_owned(), held[1].clone()),
    ];
    want.sort();
    assert_eq!(kinds(&on_a), want);
    assert_eq!(on_a, on_b, "the same events under the same ids on both");
    assert_eq!(take(&mut away, 2).await, on_a);
    let away_id = away.last_id.clone().expect("an id");
    drop(away);

    // While that client is away two more are published and a record changes. It comes
    // back to B with its id: exactly those three, under the ids A and B gave them.
    sim.set_hidden(held[4..].to_vec());
    let changed = session(&expected[expected.len() / 2]);
    sim.revise(&changed);
    let missed = take(&mut sa, 3).await;
    let mut want = vec![
        ("created".to_owned(), held[2].clone()),
        ("created".to_owned(), held[3].clone()),
        ("updated".to_owned(), changed.clone()),
    ];
    want.sort();
    assert_eq!(kinds(&missed), want);
    assert_eq!(take(&mut sb, 3).await, missed);
    let mut resumed = Sse::open(&url(&base_b), Some(KEY), Some(&away_id)).await;
    assert_eq!(
        take(&mut resumed, 3).await,
        missed,
        "exactly the missed events, same ids"
    );
    let calls = sim.call_count();
    common::until("three more polls", || sim.call_count() >= calls + 3).await;
    assert!(
        quiet(&mut resumed, Duration::from_millis(400))
            .await
            .is_empty(),
        "nothing twice"
    );

    // A client that switches replica right after an event (a load balancer's choice)
    // resumes on the other one, even before that replica's mirror has read the event:
    // nothing to send, and no reset.
    assert!(
        polling(&a),
        "A still polls (its mirror reads the event first)"
    );
    sim.set_hidden(held[5..].to_vec());
    let fresh = take(&mut sa, 1).await;
    assert_eq!(kinds(&fresh), vec![("created".to_owned(), held[4].clone())]);
    let just_read = sa.last_id.clone().expect("an id");
    let mut switched = Sse::open(&url(&base_b), Some(KEY), Some(&just_read)).await;
    let after_switch = quiet(&mut switched, Duration::from_secs(1)).await;
    assert!(
        after_switch.is_empty(),
        "a resume right after the event: {after_switch:?}"
    );
    assert_eq!(take(&mut sb, 1).await, fresh, "B streamed it too");
    assert_eq!(take(&mut resumed, 1).await, fresh);

    // Every subscriber of the polling replica leaves: B takes the lease over, and events
    // keep coming.
    drop(sa);
    common::until("A has no subscriber left", || {
        a.feed.topics().iter().all(|t| t.subscribers == 0)
    })
    .await;
    let left = std::time::Instant::now();
    common::until("B polls", || polling(&b)).await;
    println!(
        "B polls {:?} after A's last subscriber left",
        left.elapsed()
    );
    common::until("A no longer says it polls", || !polling(&a)).await;
    let after = calls_during(&sim, span).await;
    println!("upstream calls in {span:?} after the takeover: {after}");
    assert!(after >= 3, "B polls: {after} calls in {span:?}");
    assert!(
        (after as f64) <= 1.5 * one as f64,
        "{after} calls after the takeover, one replica made {one}"
    );
    sim.set_hidden(held[6..].to_vec());
    let last = take(&mut sb, 1).await;
    assert_eq!(kinds(&last), vec![("created".to_owned(), held[5].clone())]);
    assert_eq!(take(&mut switched, 1).await, last);
    assert_eq!(take(&mut resumed, 1).await, last);

    assert_eq!(sim.count_status(429), 0, "the simulator answered 429");
    let v = sim.violations();
    assert!(v.is_empty(), "the simulator recorded violations: {v:#?}");
}

//! The scheduler on paused time: the sliding-window promise, fairness, priorities and
//! the played-forward schedule.

use super::*;

fn settings(calls: u32, period_ms: u64, concurrency: u32, max_wait_ms: u64) -> BudgetSettings {
    BudgetSettings {
        rate: Rate {
            calls,
            period: Duration::from_millis(period_ms),
        },
        max_wait: Duration::from_millis(max_wait_ms),
        concurrency,
        max_calls_per_request: 1000,
    }
}

/// Grants never put more than N calls in any interval of the period's length.
#[tokio::test(start_paused = true)]
async fn sliding_window_never_exceeds_n_in_any_period() {
    let budget = Arc::new(Budget::new_local(&settings(5, 1000, 100, 60_000)));
    let caller: Arc<str> = "t".into();
    let mut tasks = Vec::new();
    for _ in 0..23 {
        let b = Arc::clone(&budget);
        let c = Arc::clone(&caller);
        tasks.push(tokio::spawn(async move {
            let p = b.acquire(&c).await.unwrap();
            let t = Instant::now();
            drop(p);
            t
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_millis(1000))
            .count();
        assert!(
            in_window <= 5,
            "{in_window} grants within one period starting at #{i}"
        );
    }
    // And it is not needlessly slow: 23 calls at 5/s need a bit over 4 periods.
    let total = times[times.len() - 1].duration_since(times[0]);
    assert!(total < Duration::from_millis(4 * 1050 + 200), "{total:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrency_slots_are_released_on_drop() {
    let budget = Budget::new_local(&settings(1000, 1000, 2, 60_000));
    let c: Arc<str> = "t".into();
    let a = budget.acquire(&c).await.unwrap();
    let _b = budget.acquire(&c).await.unwrap();
    assert_eq!(budget.stats().in_flight, 2);
    let pending = tokio::time::timeout(Duration::from_millis(50), budget.acquire(&c)).await;
    assert!(pending.is_err(), "a third call must wait for a slot");
    drop(a);
    let third = tokio::time::timeout(Duration::from_millis(50), budget.acquire(&c)).await;
    assert!(third.is_ok(), "a freed slot is granted");
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_answers_with_retry_after() {
    let budget = Budget::new_local(&settings(1, 60_000, 10, 500));
    let c: Arc<str> = "t".into();
    let _first = budget.acquire(&c).await.unwrap();
    let err = budget.acquire(&c).await.unwrap_err();
    assert!(err.retry_after >= Duration::from_secs(60), "{err:?}");
}

/// One caller's long queue does not starve another caller's single call.
#[tokio::test(start_paused = true)]
async fn callers_are_served_round_robin() {
    let budget = Arc::new(Budget::new_local(&settings(2, 1000, 100, 600_000)));
    let big: Arc<str> = "big".into();
    let small: Arc<str> = "small".into();
    let start = Instant::now();
    let mut bigs = Vec::new();
    for _ in 0..40 {
        let b = Arc::clone(&budget);
        let c = Arc::clone(&big);
        bigs.push(tokio::spawn(async move { b.acquire(&c).await.map(drop) }));
    }
    tokio::task::yield_now().await;
    let got = budget.acquire(&small).await;
    assert!(got.is_ok());
    // 40 big calls at 2/s would take 20 s if served first; round-robin serves the small
    // call within the first couple of periods.
    assert!(
        start.elapsed() < Duration::from_millis(2200),
        "small waited {:?}",
        start.elapsed()
    );
    for t in bigs {
        t.abort();
    }
}

/// Callers first, then revalidations, then refresh-ahead, which never fills more than
/// three quarters of a period; the sliding-window promise holds for all of them.
#[tokio::test(start_paused = true)]
async fn callers_go_before_revalidations_and_refresh_ahead() {
    let budget = Arc::new(Budget::new_local(&settings(4, 1000, 100, 600_000)));
    let order = Arc::new(Mutex::new(Vec::<(Priority, Instant)>::new()));
    let mut tasks = Vec::new();
    // Background work queues first: 12 refresh-ahead and 12 revalidation calls.
    for (p, n) in [(Priority::RefreshAhead, 12), (Priority::Revalidate, 12)] {
        for _ in 0..n {
            let (b, o) = (Arc::clone(&budget), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let name: Arc<str> = p.label().into();
                let permit = b.acquire_as(&name, p).await;
                lock(&o).push((p, Instant::now()));
                drop(permit);
            }));
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Then a caller with 6 calls arrives (what was granted before stays before).
    let arrived = lock(&order).len();
    for _ in 0..6 {
        let (b, o) = (Arc::clone(&budget), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let name: Arc<str> = "team-a".into();
            let permit = b.acquire(&name).await;
            lock(&o).push((Priority::Caller, Instant::now()));
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = lock(&order).clone();
    // Grants made after the caller arrived: every caller call before any background one.
    let after: Vec<Priority> = order[arrived..].iter().map(|(p, _)| *p).collect();
    let last_caller = after.iter().rposition(|p| *p == Priority::Caller).unwrap();
    assert!(
        after[..last_caller].iter().all(|p| *p == Priority::Caller),
        "a caller waited behind background work: {after:?}"
    );
    // Of what had to queue, revalidations before refresh-ahead.
    let first_ahead = after
        .iter()
        .position(|p| *p == Priority::RefreshAhead)
        .unwrap();
    let last_reval = after
        .iter()
        .rposition(|p| *p == Priority::Revalidate)
        .unwrap();
    assert!(last_reval < first_ahead, "{after:?}");
    // No interval of the period ever held more than 4 grants.
    for (i, (_, t)) in order.iter().enumerate() {
        let in_period = order[i..]
            .iter()
            .filter(|(_, u)| u.duration_since(*t) < Duration::from_millis(1000))
            .count();
        assert!(in_period <= 4, "{in_period} grants within a period");
    }
    // Refresh-ahead alone uses at most three of the four calls of a period.
    let aheads: Vec<Instant> = order
        .iter()
        .filter(|(p, _)| *p == Priority::RefreshAhead)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(aheads.len(), 12);
    for (i, t) in aheads.iter().enumerate() {
        let in_period = aheads[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_millis(1000))
            .count();
        assert!(in_period <= 3, "refresh-ahead took {in_period} of a period");
    }
}

/// The played-forward schedule matches when grants really happen.
#[tokio::test(start_paused = true)]
async fn time_to_serve_follows_the_sliding_log() {
    let budget = Arc::new(Budget::new_local(&settings(4, 1000, 100, 600_000)));
    let c: Arc<str> = "t".into();
    // An idle budget serves N at once; the next N a period later, and so on.
    assert!(budget.time_to_serve(4) < Duration::from_millis(10));
    let predicted = budget.time_to_serve(10);
    let start = Instant::now();
    for _ in 0..10 {
        drop(budget.acquire(&c).await.unwrap());
    }
    let real = start.elapsed();
    let diff = predicted.as_secs_f64() - real.as_secs_f64();
    assert!(diff.abs() < 0.05, "predicted {predicted:?}, real {real:?}");
    assert!(real >= Duration::from_secs(2), "{real:?}");
}

#[tokio::test(start_paused = true)]
async fn key_limiter_refuses_over_the_limit_and_recovers() {
    let l = KeyLimiter::new(Rate {
        calls: 2,
        period: Duration::from_secs(1),
    });
    let k: Arc<str> = "k".into();
    assert!(l.check(&k).is_ok());
    assert!(l.check(&k).is_ok());
    let wait = l.check(&k).unwrap_err();
    assert!(wait >= Duration::from_secs(1));
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert!(l.check(&k).is_ok());
    let other: Arc<str> = "other".into();
    assert!(l.check(&other).is_ok(), "limits are per key");
}

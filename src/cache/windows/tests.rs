//! The window cache on paused time: freshness, coalescing, stale copies, refresh-ahead,
//! containment and the keys.

use std::{sync::atomic::AtomicU32, time::Duration};

use futures_util::FutureExt;
use jiff::Timestamp;

use super::*;
use crate::{cache::*, merge::Record, plan::Window, upstream::Filters};

fn policy() -> CacheSettings {
    CacheSettings {
        max_bytes: 64 << 20,
        ttl_past: Duration::from_secs(86_400),
        ttl_recent: Duration::from_secs(30),
        settle: Duration::from_secs(3600),
        stale_grace: Duration::from_secs(86_400),
        swr: Duration::ZERO,
        refresh_ahead_idle: None,
    }
}

fn window_ending(end: Timestamp) -> Window {
    Window {
        start: Timestamp::from_second(end.as_second() - 3600).unwrap(),
        end,
        offset_seconds: 0,
    }
}

fn ns() -> Namespace {
    Namespace::new("http://127.0.0.1:1", "acct-a", "/p")
}

fn key(w: &Window) -> WindowKey {
    WindowKey::new(&ns(), w, &Arc::new(Filters::default()))
}

/// A fetch that counts its calls and fails when `fail` is set.
fn fetcher(w: Window, count: Arc<AtomicU32>, fail: bool) -> Refetch {
    Arc::new(move |_purpose| {
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fail {
                Err(UpstreamError::Transient("down".into()))
            } else {
                Ok(WindowData::new(w, Vec::new(), Vec::new(), 1))
            }
        }
        .boxed()
    })
}

/// A fetch that records the purpose of every call it makes.
fn recording(w: Window, log: Arc<Mutex<Vec<Purpose>>>) -> Refetch {
    Arc::new(move |purpose| {
        let log = Arc::clone(&log);
        async move {
            lock(&log).push(purpose);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(WindowData::new(w, Vec::new(), Vec::new(), 1))
        }
        .boxed()
    })
}

#[tokio::test(start_paused = true)]
async fn a_window_expired_within_swr_is_answered_at_once_and_refreshed_once_behind() {
    let cache = WindowCache::new(
        CacheSettings {
            swr: Duration::from_secs(600),
            ..policy()
        },
        Arc::default(),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = window_ending(Timestamp::now());
    let o = cache
        .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
    tokio::time::advance(Duration::from_secs(40)).await;
    // Expired 10 s ago: five callers at once all get the stale copy without waiting,
    // and one refresh starts, at the revalidation priority.
    let started = Instant::now();
    for _ in 0..5 {
        let o = cache
            .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
            .await
            .unwrap();
        assert_eq!(o.source, Source::Revalidating);
        assert!(o.data.ttl_seconds() < 0);
    }
    assert_eq!(Instant::now(), started, "no caller waited (paused clock)");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        *lock(&log),
        vec![Purpose::Caller, Purpose::Revalidate],
        "one refresh behind"
    );
    let o = cache
        .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Hit, "then served fresh");
    assert_eq!(cache.counters.revalidations.load(Ordering::Relaxed), 1);
    // Expired longer than CACHE_SWR ago: the caller waits for the upstream again.
    tokio::time::advance(Duration::from_secs(30 + 601)).await;
    let o = cache
        .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_keeps_a_polled_recent_window_fresh_without_waiting() {
    let cache = Arc::new(WindowCache::new(
        CacheSettings {
            refresh_ahead_idle: Some(Duration::from_secs(600)),
            ..policy()
        },
        Arc::default(),
    ));
    cache.spawn_refresh_ahead();
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = window_ending(Timestamp::now());
    cache
        .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
        .await
        .unwrap();
    // A dashboard polls every 5 s for ten minutes: twenty TTLs of 30 s.
    let mut waited = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let o = cache
            .get_or_fetch(key(&w), false, recording(w, Arc::clone(&log)))
            .await
            .unwrap();
        if o.source != Source::Hit {
            waited += 1;
        }
    }
    assert_eq!(waited, 0, "every poll was a fresh hit");
    let calls = lock(&log).clone();
    assert!(
        calls[1..].iter().all(|p| *p == Purpose::RefreshAhead),
        "{calls:?}"
    );
    // About one refresh per TTL, not one per poll.
    assert!(
        (18..=25).contains(&(calls.len() - 1)),
        "{} refreshes",
        calls.len() - 1
    );
    // Nobody polls any more: after REFRESH_AHEAD_IDLE the window is left to expire.
    let before = lock(&log).len();
    tokio::time::sleep(Duration::from_secs(1200)).await;
    let after = lock(&log).len();
    // Still read within REFRESH_AHEAD_IDLE (600 s): refreshed about once per TTL less
    // the lead (24 s), then no more.
    assert!(
        after - before <= 26,
        "{} refreshes while idle",
        after - before
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(lock(&log).len(), after, "no refresh once idle");
}

#[tokio::test(start_paused = true)]
async fn recent_windows_expire_after_the_short_ttl_and_past_ones_do_not() {
    let cache = WindowCache::new(policy(), Arc::default());
    let count = Arc::new(AtomicU32::new(0));
    let recent = window_ending(Timestamp::now());
    let past =
        window_ending(Timestamp::from_second(Timestamp::now().as_second() - 10 * 86_400).unwrap());
    for w in [recent, past] {
        let o = cache
            .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
            .await
            .unwrap();
        assert_eq!(o.source, Source::Miss);
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    for w in [recent, past] {
        let o = cache
            .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
            .await
            .unwrap();
        assert_eq!(o.source, Source::Hit);
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let o = cache
        .get_or_fetch(
            key(&recent),
            false,
            fetcher(recent, Arc::clone(&count), false),
        )
        .await
        .unwrap();
    assert_eq!(
        o.source,
        Source::Miss,
        "the recent window expired after 30 s"
    );
    let o = cache
        .get_or_fetch(key(&past), false, fetcher(past, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Hit, "the settled window lives 24 h");
    assert_eq!(count.load(Ordering::SeqCst), 3);
    tokio::time::advance(Duration::from_secs(86_400)).await;
    let o = cache
        .get_or_fetch(key(&past), false, fetcher(past, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_make_one_fetch() {
    let cache = Arc::new(WindowCache::new(policy(), Arc::default()));
    let count = Arc::new(AtomicU32::new(0));
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, count) = (Arc::clone(&cache), Arc::clone(&count));
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(key(&w), false, fetcher(w, count, false))
                .await
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap().unwrap().calls;
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(calls, 1, "only the leader reports the upstream calls");
    assert_eq!(cache.counters.coalesced.load(Ordering::SeqCst), 19);
}

/// Two caches sharing one tier, as two replicas share Redis (and one restarted process
/// its disk): what one fetched, the other answers without a call, as a hit of shared
/// data; a tier local to one of them fills on its fetch and answers after a restart.
#[tokio::test]
async fn caches_share_windows_through_a_tier() {
    let shared = Arc::new(MemoryTier::default());
    let disk = Arc::new(MemoryTier::default());
    let replica = |local: Option<Arc<dyn Tier>>| {
        WindowCache::with_tiers(
            policy(),
            Arc::default(),
            local,
            Some(Arc::clone(&shared) as Arc<dyn Tier>),
        )
    };
    let a = replica(Some(Arc::clone(&disk) as Arc<dyn Tier>));
    let b = replica(None);
    let count = Arc::new(AtomicU32::new(0));
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let first = a
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!((first.source, first.calls), (Source::Miss, 1));
    assert_eq!(
        (shared.len(), disk.len()),
        (1, 1),
        "both tiers got the fetch"
    );
    let second = b
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!((second.source, second.calls), (Source::Hit, 0));
    assert!(second.data.shared, "taken from the shared tier");
    assert_eq!(count.load(Ordering::SeqCst), 1, "one upstream fetch in all");
    // A restart of `a` (empty memory, the same disk, no shared tier): a hit, no call.
    let restarted = WindowCache::with_tiers(
        policy(),
        Arc::default(),
        Some(Arc::clone(&disk) as Arc<dyn Tier>),
        None,
    );
    let third = restarted
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!((third.source, third.calls), (Source::Hit, 0));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_copy_stands_in_when_the_upstream_fails() {
    let cache = WindowCache::new(policy(), Arc::default());
    let count = Arc::new(AtomicU32::new(0));
    let w = window_ending(Timestamp::now());
    cache
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    let o = cache
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), true))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Stale);
    let other = window_ending(Timestamp::from_second(1_600_000_000).unwrap());
    let err = cache
        .get_or_fetch(key(&other), false, fetcher(other, Arc::clone(&count), true))
        .await;
    assert!(err.is_err(), "without a copy the failure is reported");
    // A failure is not cached: the next request tries again.
    let o = cache
        .get_or_fetch(
            key(&other),
            false,
            fetcher(other, Arc::clone(&count), false),
        )
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
}

/// What the old `|`/`=`-joined fingerprint made of a query: the encoding this replaces.
fn joined(k: &QueryKey<'_>) -> String {
    let f = k.filters;
    format!(
        "{}|{}|{}|c={}|q={}|b={}|f={}",
        k.from,
        k.to,
        k.tz,
        f.channels.join(","),
        f.queues.join(","),
        f.bots.join(","),
        f.fields.join(",")
    )
}

#[test]
fn the_issues_separator_pair_gets_two_keys() {
    let a = Filters {
        channels: vec!["voice".into(), "x|q=qu-1".into()],
        ..Default::default()
    };
    let b = Filters {
        channels: vec!["voice".into(), "x".into()],
        queues: vec!["qu-1|q=".into()],
        ..Default::default()
    };
    let key = |f| QueryKey {
        route: "interactions",
        ns: &[0; 32],
        from: 0,
        to: 1,
        tz: "UTC",
        filters: f,
        select: Default::default(),
    };
    assert_eq!(joined(&key(&a)), joined(&key(&b)), "the old key collided");
    assert_ne!(key(&a).digest(), key(&b).digest());
}

/// Values drawn from the separators a naive key would use, so that different queries
/// often join to the same text.
fn value() -> impl proptest::strategy::Strategy<Value = String> {
    proptest::string::string_regex("[|=,:;a\\\x00]{0,4}").expect("regex")
}

fn lists() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    proptest::collection::vec(value(), 0..3)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    /// Distinct queries get distinct digests, equal ones equal digests; the window key
    /// likewise.
    #[test]
    fn distinct_queries_get_distinct_keys(
        a in (lists(), lists(), lists(), lists(), value()),
        b in (lists(), lists(), lists(), lists(), value()),
        bounds in (0i64..3, 0i64..3),
    ) {
        let fa = Filters { channels: a.0, queues: a.1, bots: a.2, fields: a.3 };
        let fb = Filters { channels: b.0, queues: b.1, bots: b.2, fields: b.3 };
        let ka = QueryKey { route: "interactions", ns: &[0; 32], from: bounds.0, to: 5, tz: &a.4, filters: &fa, select: Default::default() };
        let kb = QueryKey { route: "interactions", ns: &[0; 32], from: bounds.1, to: 5, tz: &b.4, filters: &fb, select: Default::default() };
        let same = fa == fb && a.4 == b.4 && bounds.0 == bounds.1;
        proptest::prop_assert_eq!(ka.digest() == kb.digest(), same);
        let w = Window {
            start: Timestamp::from_second(bounds.0).unwrap(),
            end: Timestamp::from_second(5).unwrap(),
            offset_seconds: 0,
        };
        let wa = WindowKey::new(&ns(), &w, &Arc::new(fa.clone()));
        let wb = WindowKey::new(&ns(), &w, &Arc::new(fb.clone()));
        proptest::prop_assert_eq!(wa.digest() == wb.digest(), fa == fb);
    }
}

#[test]
fn keys_differ_by_everything_that_changes_the_answer() {
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let voice = Arc::new(Filters {
        channels: vec!["voice".into()],
        ..Default::default()
    });
    let other_offset = Window {
        offset_seconds: 3600,
        ..w
    };
    assert_ne!(key(&w), WindowKey::new(&ns(), &w, &voice));
    assert_ne!(key(&w), key(&other_offset));
    assert_eq!(
        key(&w),
        WindowKey::new(&ns(), &w, &Arc::new(Filters::default()))
    );
}

fn record(local: &str, id: &str, w: &Window) -> Record {
    let raw = format!(r#"{{"sessionId":"{id}","sessionStartTime":"{local}"}}"#);
    Record::new(serde_json::value::RawValue::from_string(raw).unwrap(), w)
}

/// Local wall-clock text of `t` in the window's offset, as the vendor writes it.
fn local_text(t: i64, offset_seconds: i32) -> String {
    let off = jiff::tz::Offset::from_seconds(offset_seconds).unwrap();
    off.to_datetime(Timestamp::from_second(t).unwrap())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

proptest::proptest! {
    /// Selecting from a container gives what a fetch of the inner span would: the
    /// records whose local `sessionStartTime` text lies between the inner window's local
    /// bounds (string compare, the vendor's rule), and never one outside them.
    #[test]
    fn containment_selects_exactly_what_a_fetch_would(
        offset_q in -56i32..=56,
        start in 1_600_000_000i64..1_800_000_000,
        len in 0i64..7 * 86_400,
        cut in (0.0f64..=1.0, 0.0f64..=1.0),
        times in proptest::collection::vec(0.0f64..=1.0, 0..60),
    ) {
        let offset_seconds = offset_q * 900;
        let outer = Window {
            start: Timestamp::from_second(start).unwrap(),
            end: Timestamp::from_second(start + len).unwrap(),
            offset_seconds,
        };
        let at = |f: f64| start + (f * len as f64) as i64;
        let (a, b) = (at(cut.0.min(cut.1)), at(cut.0.max(cut.1)));
        // Records exactly on the inner bounds and a second either side of them, too.
        let secs = times
            .iter()
            .map(|f| at(*f))
            .chain([a - 1, a, b, b + 1].into_iter().filter(|t| (start..=start + len).contains(t)));
        let mut records: Vec<Record> = secs
            .enumerate()
            .map(|(i, t)| record(&local_text(t, offset_seconds), &format!("s{i}"), &outer))
            .collect();
        crate::merge::dedupe_and_sort(&mut records);
        let got = select_within(&records, a, b).unwrap();
        let (lo, hi) = (local_text(a, offset_seconds), local_text(b, offset_seconds));
        let truth: Vec<String> = records
            .iter()
            .filter(|r| {
                let v: serde_json::Value = serde_json::from_str(r.raw.get()).unwrap();
                let t = v["sessionStartTime"].as_str().unwrap().to_owned();
                lo <= t && t <= hi
            })
            .map(|r| r.raw.get().to_owned())
            .collect();
        let got: Vec<String> = got.iter().map(|r| r.raw.get().to_owned()).collect();
        proptest::prop_assert_eq!(got, truth);
    }
}

#[test]
fn a_record_without_a_readable_start_refuses_containment() {
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let good = record(&local_text(1_699_999_000, 0), "a", &w);
    let bad = record("not a time", "b", &w);
    assert!(select_within(std::slice::from_ref(&good), 0, i64::MAX).is_some());
    assert!(select_within(&[good, bad], 0, i64::MAX).is_none());
}

#[test]
fn containment_needs_the_same_family_and_a_covering_span() {
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let inner = Window {
        start: Timestamp::from_second(w.start.as_second() + 10).unwrap(),
        ..w
    };
    assert!(key(&w).contains(&key(&inner)));
    assert!(!key(&inner).contains(&key(&w)));
    let voice = Arc::new(Filters {
        channels: vec!["voice".into()],
        ..Default::default()
    });
    assert!(!key(&w).contains(&WindowKey::new(&ns(), &inner, &voice)));
    let shifted = Window {
        offset_seconds: 3600,
        ..inner
    };
    assert!(!key(&w).contains(&key(&shifted)));
}

/// A fetch of the whole window, then one of a part: the part comes from the cache,
/// expires with its container, and an incomplete container is never used.
#[tokio::test(start_paused = true)]
async fn a_contained_window_is_answered_locally_and_no_fresher_than_its_container() {
    let cache = WindowCache::new(policy(), Arc::default());
    let count = Arc::new(AtomicU32::new(0));
    let now = Timestamp::now().as_second();
    let outer = Window {
        start: Timestamp::from_second(now - 7200).unwrap(),
        end: Timestamp::from_second(now - 60).unwrap(),
        offset_seconds: 0,
    };
    let inner = Window {
        start: Timestamp::from_second(now - 3600).unwrap(),
        ..outer
    };
    let recs: Vec<Record> = [now - 7000, now - 3000, now - 100]
        .iter()
        .enumerate()
        .map(|(i, t)| record(&local_text(*t, 0), &format!("s{i}"), &outer))
        .collect();
    let c2 = Arc::clone(&count);
    let outer_fetch: Refetch = Arc::new(move |_| {
        let (c2, recs) = (Arc::clone(&c2), recs.clone());
        async move {
            c2.fetch_add(1, Ordering::SeqCst);
            Ok(WindowData::new(outer, recs, Vec::new(), 1))
        }
        .boxed()
    });
    let o = cache
        .get_or_fetch(key(&outer), false, outer_fetch)
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
    tokio::time::advance(Duration::from_secs(10)).await;
    let o = cache
        .get_or_fetch(key(&inner), false, fetcher(inner, Arc::clone(&count), true))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Hit);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "no fetch for the inner window"
    );
    assert_eq!(o.data.records.len(), 2);
    assert_eq!(cache.counters.contained.load(Ordering::SeqCst), 1);
    // Recent window (ends a minute ago): 30 s fresh from the container's fetch.
    tokio::time::advance(Duration::from_secs(21)).await;
    let o = cache
        .get_or_fetch(
            key(&inner),
            false,
            fetcher(inner, Arc::clone(&count), false),
        )
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss, "expired with its container");
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // An incomplete container is not used.
    let past = Window {
        start: Timestamp::from_second(now - 90 * 86_400).unwrap(),
        end: Timestamp::from_second(now - 89 * 86_400).unwrap(),
        offset_seconds: 0,
    };
    let part = Window {
        start: Timestamp::from_second(past.start.as_second() + 60).unwrap(),
        ..past
    };
    let short: Refetch = Arc::new(move |_| {
        async move { Ok(WindowData::new(past, Vec::new(), vec!["short".into()], 1)) }.boxed()
    });
    cache.get_or_fetch(key(&past), false, short).await.unwrap();
    let o = cache
        .get_or_fetch(key(&part), false, fetcher(part, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
}

/// A window assembled from its parts (here: fetched after them) replaces them: they are
/// no longer held under their own keys, asking for one again is answered from the whole
/// window with no fetch, and the answer shares the whole window's records. An
/// incomplete window replaces nothing.
#[tokio::test]
async fn a_complete_window_replaces_the_windows_it_contains() {
    let cache = WindowCache::new(policy(), Arc::default());
    let count = Arc::new(AtomicU32::new(0));
    let day = 86_400;
    let start = Timestamp::now().as_second() / day * day - 30 * day;
    let span = |a: i64, b: i64| Window {
        start: Timestamp::from_second(start + a).unwrap(),
        end: Timestamp::from_second(start + b - 1).unwrap(),
        offset_seconds: 0,
    };
    let (whole, first, second) = (span(0, 2 * day), span(0, day), span(day, 2 * day));
    let recs: Vec<Record> = [100, day + 100, day + 200]
        .iter()
        .enumerate()
        .map(|(i, t)| record(&local_text(start + t, 0), &format!("s{i}"), &whole))
        .collect();
    let serve = |w: Window, recs: Vec<Record>, warnings: Vec<String>| -> Refetch {
        let count = Arc::clone(&count);
        Arc::new(move |_| {
            let (count, recs, warnings) = (Arc::clone(&count), recs.clone(), warnings.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let inside = select_within(&recs, w.start.as_second(), w.end.as_second())
                    .unwrap_or_default();
                Ok(WindowData::new(w, inside, warnings, 1))
            }
            .boxed()
        })
    };
    for part in [first, second] {
        cache
            .get_or_fetch(key(&part), false, serve(part, recs.clone(), Vec::new()))
            .await
            .unwrap();
    }
    let o = cache
        .get_or_fetch(key(&whole), false, serve(whole, recs.clone(), Vec::new()))
        .await
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    for part in [first, second] {
        assert!(
            cache.store.get(&key(&part)).await.is_none(),
            "{part:?} is no longer held on its own"
        );
    }
    let again = cache
        .get_or_fetch(key(&second), false, serve(second, recs.clone(), Vec::new()))
        .await
        .unwrap();
    assert_eq!(again.source, Source::Hit);
    assert_eq!(count.load(Ordering::SeqCst), 3, "no fetch for the part");
    assert_eq!(again.data.records.len(), 2);
    assert!(Arc::ptr_eq(
        &again.data.records[0].raw,
        &o.data.records[1].raw
    ));

    // The same with a whole window that is not known to be whole: the parts stay.
    let later = |w: Window| Window {
        start: Timestamp::from_second(w.start.as_second() + 7 * day).unwrap(),
        end: Timestamp::from_second(w.end.as_second() + 7 * day).unwrap(),
        ..w
    };
    let (whole, first) = (later(whole), later(first));
    cache
        .get_or_fetch(key(&first), false, serve(first, Vec::new(), Vec::new()))
        .await
        .unwrap();
    cache
        .get_or_fetch(
            key(&whole),
            false,
            serve(whole, Vec::new(), vec!["short".into()]),
        )
        .await
        .unwrap();
    assert!(cache.store.get(&key(&first)).await.is_some());
}

/// Whose data a window is belongs to its key: another base URL, account id or vendor
/// endpoint is another namespace — another key, another digest (disk, Redis), never a
/// container — while a base URL's trailing slash is the same upstream.
#[test]
fn keys_and_containment_are_per_namespace() {
    let w = window_ending(Timestamp::from_second(1_700_000_000).unwrap());
    let inner = Window {
        start: Timestamp::from_second(w.start.as_second() + 10).unwrap(),
        ..w
    };
    let others = [
        Namespace::new("http://127.0.0.1:2", "acct-a", "/p"),
        Namespace::new("http://127.0.0.1:1", "acct-b", "/p"),
        Namespace::new("http://127.0.0.1:1", "acct-a", "/q"),
    ];
    for o in &others {
        let k = WindowKey::new(o, &w, &Arc::new(Filters::default()));
        assert_ne!(key(&w), k);
        assert_ne!(key(&w).digest(), k.digest());
        assert!(!k.contains(&key(&inner)));
        assert_ne!(o, &ns());
    }
    assert_ne!(others[0].label(), ns().label(), "Redis prefixes differ");
    assert_eq!(Namespace::new("http://127.0.0.1:1/", "acct-a", "/p"), ns());
}

/// A window cached for one account is fetched again for another, and both stay.
#[tokio::test(start_paused = true)]
async fn a_window_of_one_namespace_is_never_a_hit_for_another() {
    let cache = WindowCache::new(policy(), Arc::default());
    let count = Arc::new(AtomicU32::new(0));
    let w = window_ending(Timestamp::now() - jiff::SignedDuration::from_hours(48));
    let other = Namespace::new("http://127.0.0.1:2", "acct-b", "/p");
    let k_other = WindowKey::new(&other, &w, &Arc::new(Filters::default()));
    let o = cache
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Miss);
    let o = cache
        .get_or_fetch(
            k_other.clone(),
            false,
            fetcher(w, Arc::clone(&count), false),
        )
        .await
        .unwrap();
    assert_eq!(
        o.source,
        Source::Miss,
        "another account's copy is not a hit"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    for k in [key(&w), k_other] {
        let o = cache
            .get_or_fetch(k, false, fetcher(w, Arc::clone(&count), true))
            .await
            .unwrap();
        assert_eq!(o.source, Source::Hit);
    }
}

#[tokio::test(start_paused = true)]
async fn a_feed_poll_fetches_a_fresh_window_again_and_is_not_refreshed_ahead() {
    let cache = WindowCache::new(
        CacheSettings {
            refresh_ahead_idle: Some(Duration::from_secs(600)),
            ..policy()
        },
        Arc::default(),
    );
    let count = Arc::new(AtomicU32::new(0));
    let w = window_ending(Timestamp::now());
    for _ in 0..2 {
        let o = cache
            .poll(key(&w), fetcher(w, Arc::clone(&count), false))
            .await
            .unwrap();
        assert_eq!(o.source, Source::Miss, "a poll always asks the upstream");
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // What it fetched answers a caller...
    let o = cache
        .get_or_fetch(key(&w), false, fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert_eq!(o.source, Source::Hit);
    // ...but only the caller's read marks it for refresh-ahead: one window watched.
    assert_eq!(lock(&cache.watched).len(), 1);
    cache.purge();
    cache
        .poll(key(&w), fetcher(w, Arc::clone(&count), false))
        .await
        .unwrap();
    assert!(
        lock(&cache.watched).is_empty(),
        "a poll alone is not a read"
    );
}

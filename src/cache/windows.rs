//! The window cache: memory (moka), then the tiers below it, with one fetch per cold key.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use jiff::Timestamp;
use moka::Expiry;
use tokio::time::Instant;

use super::{
    Family, FetchLock, Purpose, Source, Tier, WindowData, WindowKey, WindowOutcome, select_within,
};
use crate::{config::CacheSettings, plan::Window, upstream::UpstreamError};

/// The spans of the cached windows, by family, to find a container without scanning the
/// cache. Kept in step with the store by its insertions and its eviction listener.
type SpanIndex = Arc<Mutex<HashMap<Family, std::collections::BTreeSet<(i64, i64)>>>>;

/// Makes one upstream fetch of a window for a [`Purpose`]. The cache keeps it to
/// revalidate or refresh the window later, behind the caller's back.
pub type Refetch =
    Arc<dyn Fn(Purpose) -> BoxFuture<'static, Result<WindowData, UpstreamError>> + Send + Sync>;

type FetchResult = Result<Arc<WindowData>, UpstreamError>;
type InFlight = Shared<BoxFuture<'static, FetchResult>>;

struct WindowExpiry {
    grace: Duration,
}

impl Expiry<WindowKey, Arc<WindowData>> for WindowExpiry {
    fn expire_after_create(
        &self,
        _key: &WindowKey,
        value: &Arc<WindowData>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for + self.grace)
    }
}

/// Counters for `/v1/cache` and `/metrics`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub coalesced: AtomicU64,
    pub response_hits: AtomicU64,
    /// Stale windows refreshed in the background (stale-while-revalidate).
    pub revalidations: AtomicU64,
    /// Windows refreshed ahead of expiry because they are being polled.
    pub refresh_ahead: AtomicU64,
    /// Windows answered from a cached window that contains them (no upstream call).
    pub contained: AtomicU64,
    /// Answers compressed on the way out (misses, streams: never a stored answer).
    pub compressed_on_the_way_out: AtomicU64,
}

/// The window cache with request coalescing.
pub struct WindowCache {
    store: moka::future::Cache<WindowKey, Arc<WindowData>>,
    /// The tier below memory on this machine (the disk, when CACHE_DIR is set): read on
    /// every memory miss, expired copies included.
    local: Option<Arc<dyn Tier>>,
    /// The tier replicas share (Redis, when REDIS_URL is set): read, and locked, only by
    /// the one task that fills a cold window.
    shared: Option<Arc<dyn Tier>>,
    inflight: Arc<Mutex<HashMap<WindowKey, InFlight>>>,
    /// Recent windows being read, for refresh-ahead: when last read, and how to refetch.
    watched: Mutex<HashMap<WindowKey, (Instant, Refetch)>>,
    spans: SpanIndex,
    /// Containment reuse on (the default); off only to measure what it saves.
    containment: std::sync::atomic::AtomicBool,
    policy: CacheSettings,
    pub counters: Arc<CacheCounters>,
}

impl std::fmt::Debug for WindowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCache")
            .field("entries", &self.store.entry_count())
            .finish_non_exhaustive()
    }
}

/// Removes the in-flight entry however the fetch task ends (even by panic).
struct InflightGuard {
    map: Arc<Mutex<HashMap<WindowKey, InFlight>>>,
    key: WindowKey,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WindowCache {
    /// A cache in memory only.
    pub fn new(policy: CacheSettings, counters: Arc<CacheCounters>) -> Self {
        Self::with_tiers(policy, counters, None, None)
    }

    /// A cache with a `local` tier below memory (the disk) and a `shared` one between
    /// replicas (Redis).
    pub fn with_tiers(
        policy: CacheSettings,
        counters: Arc<CacheCounters>,
        local: Option<Arc<dyn Tier>>,
        shared: Option<Arc<dyn Tier>>,
    ) -> Self {
        let spans: SpanIndex = Arc::default();
        let forget = Arc::clone(&spans);
        let store = moka::future::Cache::builder()
            .max_capacity(policy.max_bytes / 4 * 3)
            .weigher(|_k: &WindowKey, v: &Arc<WindowData>| v.weight)
            .expire_after(WindowExpiry {
                grace: policy.stale_grace.max(policy.swr),
            })
            .eviction_listener(move |k: Arc<WindowKey>, _v, cause| {
                if cause != moka::notification::RemovalCause::Replaced {
                    let mut spans = lock(&forget);
                    let family = k.family();
                    if let Some(set) = spans.get_mut(&family) {
                        set.remove(&(k.start, k.end));
                        if set.is_empty() {
                            spans.remove(&family);
                        }
                    }
                }
            })
            .build();
        WindowCache {
            store,
            local,
            shared,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            watched: Mutex::new(HashMap::new()),
            spans,
            containment: std::sync::atomic::AtomicBool::new(true),
            policy,
            counters,
        }
    }

    /// Turns containment reuse on or off (benchmarks compare the two).
    pub fn set_containment(&self, on: bool) {
        self.containment.store(on, Ordering::Relaxed);
    }

    /// A window answered from a fresh, complete cached window that contains it, by
    /// selecting its records locally: no upstream call. The answer is fresh exactly as long
    /// as its container (same fetch time, same freshness), and is kept under its own key.
    pub async fn contained(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        if !self.containment.load(Ordering::Relaxed) {
            return None;
        }
        // Spans starting at or before this one's start; those that also end at or after its
        // end contain it.
        let candidates = indexed(&self.spans, key, ..=(key.start, i64::MAX), |s, e| {
            s <= key.start && key.end <= e
        });
        for outer in candidates {
            debug_assert!(outer.contains(key));
            let Some(c) = self.store.get(&outer).await else {
                continue;
            };
            if !c.is_fresh() || !c.complete() {
                continue;
            }
            let Some(records) = select_within(&c.records, key.start, key.end) else {
                continue;
            };
            let window = Window {
                start: Timestamp::from_second(key.start).ok()?,
                end: Timestamp::from_second(key.end).ok()?,
                offset_seconds: key.offset_seconds,
            };
            let mut data = WindowData::new(window, records, Vec::new(), 0);
            data.fetched_at = c.fetched_at;
            data.fetched_unix_ms = c.fetched_unix_ms;
            data.fresh_for = c.fresh_for;
            let data = Arc::new(data);
            self.store.insert(key.clone(), Arc::clone(&data)).await;
            index(&self.spans, key);
            return Some(data);
        }
        None
    }

    /// How long a window's data stays fresh (the TTL policy).
    pub fn freshness(&self, w: &Window, complete: bool, now: Timestamp) -> Duration {
        freshness(&self.policy, w, complete, now)
    }

    /// The fresh cached data of `key`, if any.
    pub async fn get_fresh(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        self.store.get(key).await.filter(|d| d.is_fresh())
    }

    /// The copy in memory, or else the local tier's (which then fills memory).
    async fn cached(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        if let Some(d) = self.store.get(key).await {
            return Some(d);
        }
        let local = self.local.as_ref()?;
        let d = Arc::new(local.get(key).await?);
        if d.is_fresh() || d.expired_for() < self.policy.stale_grace.max(self.policy.swr) {
            self.store.insert(key.clone(), Arc::clone(&d)).await;
            index(&self.spans, key);
            Some(d)
        } else {
            None
        }
    }

    /// Returns the window from cache, or fetches it once for all concurrent callers.
    /// `refresh` skips the fresh copy (an admin's `Cache-Control: no-cache`). A copy expired
    /// less than CACHE_SWR ago is answered at once and refreshed in the background.
    ///
    /// # Errors
    /// The fetch's error, when no stale copy can stand in.
    pub async fn get_or_fetch(
        &self,
        key: WindowKey,
        refresh: bool,
        refetch: Refetch,
    ) -> Result<WindowOutcome, UpstreamError> {
        if !refresh {
            let cached = self.cached(&key).await;
            if let Some(d) = &cached
                && d.is_fresh()
            {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.watch(&key, d, &refetch);
                return Ok(WindowOutcome {
                    data: Arc::clone(d),
                    source: Source::Hit,
                    calls: 0,
                    collapsed: false,
                });
            }
            // Inside a fresh, complete cached window: selected locally, no call.
            if let Some(d) = self.contained(&key).await {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.counters.contained.fetch_add(1, Ordering::Relaxed);
                self.watch(&key, &d, &refetch);
                return Ok(WindowOutcome {
                    data: d,
                    source: Source::Hit,
                    calls: 0,
                    collapsed: false,
                });
            }
            if let Some(d) = cached
                && !self.policy.swr.is_zero()
                && d.expired_for() < self.policy.swr
            {
                // Stale-while-revalidate: this caller gets the copy now; one refresh runs
                // behind (joined with any fetch of the window already under way).
                let (_, started) = self.flight(
                    &key,
                    true,
                    refetch(Purpose::Revalidate),
                    Purpose::Revalidate,
                );
                if started {
                    self.counters.revalidations.fetch_add(1, Ordering::Relaxed);
                }
                self.watch(&key, &d, &refetch);
                return Ok(WindowOutcome {
                    data: d,
                    source: Source::Revalidating,
                    calls: 0,
                    collapsed: false,
                });
            }
        }
        let (flight, leader) =
            self.flight(&key, refresh, refetch(Purpose::Caller), Purpose::Caller);
        let out = match flight.await {
            Ok(data) => {
                if data.shared {
                    // Another replica fetched it: a hit as far as the upstream is concerned.
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    Ok(WindowOutcome {
                        data,
                        source: Source::Hit,
                        calls: 0,
                        collapsed: false,
                    })
                } else {
                    if leader {
                        self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    }
                    let calls = if leader { data.calls } else { 0 };
                    Ok(WindowOutcome {
                        data,
                        source: Source::Miss,
                        calls,
                        collapsed: !leader,
                    })
                }
            }
            Err(e) => match self.store.get(&key).await {
                Some(old) => {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, window_start = key.start, "serving a stale window after an upstream failure");
                    Ok(WindowOutcome {
                        data: old,
                        source: Source::Stale,
                        calls: 0,
                        collapsed: false,
                    })
                }
                None => Err(e),
            },
        };
        if let Ok(o) = &out {
            self.watch(&key, &o.data, &refetch);
        }
        out
    }

    /// The fetch of `key` under way, or a new one started (in its own task, so a caller
    /// that goes away does not cancel it for the others). Returns it and whether it is new.
    fn flight<Fut>(
        &self,
        key: &WindowKey,
        refresh: bool,
        fetch: Fut,
        purpose: Purpose,
    ) -> (InFlight, bool)
    where
        Fut: Future<Output = Result<WindowData, UpstreamError>> + Send + 'static,
    {
        let mut map = lock(&self.inflight);
        if let Some(f) = map.get(key) {
            return (f.clone(), false);
        }
        let lead = Leader {
            store: self.store.clone(),
            spans: Arc::clone(&self.spans),
            local: self.local.clone(),
            shared: self.shared.clone(),
            policy: self.policy,
            key: key.clone(),
            // A background refresh must not stop at the copy it is replacing.
            refresh: refresh || purpose != Purpose::Caller,
            replaces_contained: self.containment.load(Ordering::Relaxed),
        };
        let guard = InflightGuard {
            map: Arc::clone(&self.inflight),
            key: key.clone(),
        };
        let task = tokio::spawn(async move {
            let _guard = guard;
            lead.run(fetch).await
        });
        let shared = async move {
            match task.await {
                Ok(Ok(d)) => Ok(d),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(UpstreamError::Unexpected("window fetch task failed".into())),
            }
        }
        .boxed()
        .shared();
        map.insert(key.clone(), shared.clone());
        (shared, true)
    }

    /// Remembers a window touching "now" that was just read, for refresh-ahead.
    fn watch(&self, key: &WindowKey, data: &WindowData, refetch: &Refetch) {
        if self.policy.refresh_ahead_idle.is_none()
            || freshness(&self.policy, &data.window, true, Timestamp::now())
                != self.policy.ttl_recent
        {
            return;
        }
        lock(&self.watched).insert(key.clone(), (Instant::now(), Arc::clone(refetch)));
    }

    /// One round of refresh-ahead: every watched window read within REFRESH_AHEAD_IDLE
    /// whose copy expires within the lead time is refreshed now, at the lowest priority;
    /// windows not read for longer are forgotten. Returns how many refreshes it started.
    pub async fn refresh_ahead_round(&self) -> usize {
        let Some(idle) = self.policy.refresh_ahead_idle else {
            return 0;
        };
        let now = Instant::now();
        let lead = refresh_lead(&self.policy);
        let due: Vec<(WindowKey, Refetch)> = {
            let mut w = lock(&self.watched);
            w.retain(|_, (read, _)| now.duration_since(*read) < idle);
            w.iter()
                .map(|(k, (_, f))| (k.clone(), Arc::clone(f)))
                .collect()
        };
        let mut started = 0;
        for (key, refetch) in due {
            let expiring = match self.store.get(&key).await {
                Some(d) => d.fresh_until() <= now + lead,
                None => true,
            };
            if !expiring || lock(&self.inflight).contains_key(&key) {
                continue;
            }
            let (_, new) = self.flight(
                &key,
                true,
                refetch(Purpose::RefreshAhead),
                Purpose::RefreshAhead,
            );
            if new {
                started += 1;
                self.counters.refresh_ahead.fetch_add(1, Ordering::Relaxed);
            }
        }
        started
    }

    /// Runs refresh-ahead rounds until the cache is dropped (when REFRESH_AHEAD is on).
    pub fn spawn_refresh_ahead(self: &Arc<Self>) {
        if self.policy.refresh_ahead_idle.is_none() {
            return;
        }
        let every = (refresh_lead(&self.policy) / 2).max(Duration::from_millis(250));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = weak.upgrade() else {
                    return;
                };
                cache.refresh_ahead_round().await;
            }
        });
    }

    /// Drops every window held in memory (the tiers below are purged by their owners).
    pub fn purge(&self) {
        self.store.invalidate_all();
        lock(&self.watched).clear();
    }

    /// (entries, bytes), after pending maintenance.
    pub async fn usage(&self) -> (u64, u64) {
        self.store.run_pending_tasks().await;
        (self.store.entry_count(), self.store.weighted_size())
    }
}

/// How long before expiry refresh-ahead refreshes a polled window: a fifth of the recent
/// TTL, at least a second.
fn refresh_lead(policy: &CacheSettings) -> Duration {
    (policy.ttl_recent / 5).max(Duration::from_secs(1))
}

/// The work of the one task that fills a cold window: memory again (a leader may just have
/// finished), then the shared tier, then — holding its lock so no other replica fetches it
/// too — the upstream; the result goes to every tier.
struct Leader {
    store: moka::future::Cache<WindowKey, Arc<WindowData>>,
    local: Option<Arc<dyn Tier>>,
    spans: SpanIndex,
    shared: Option<Arc<dyn Tier>>,
    policy: CacheSettings,
    key: WindowKey,
    refresh: bool,
    /// Containment reuse is on: a complete window may replace the windows it contains.
    replaces_contained: bool,
}

impl Leader {
    async fn run<Fut>(self, fetch: Fut) -> FetchResult
    where
        Fut: Future<Output = Result<WindowData, UpstreamError>>,
    {
        if !self.refresh
            && let Some(d) = self.store.get(&self.key).await.filter(|d| d.is_fresh())
        {
            return Ok(d);
        }
        let mut locked = false;
        if let Some(t) = &self.shared {
            if !self.refresh
                && let Some(d) = t.get(&self.key).await
            {
                return Ok(self.keep(d).await);
            }
            // Become the one replica that fetches, or take the result of the one that did.
            match t.lock_for_fetch(&self.key, LOCK_WAIT).await {
                FetchLock::Held => {
                    locked = true;
                    // The previous holder may have published between our look and our lock.
                    if !self.refresh
                        && let Some(d) = t.get(&self.key).await
                    {
                        t.unlock(&self.key).await;
                        return Ok(self.keep(d).await);
                    }
                }
                FetchLock::Filled(d) => return Ok(self.keep(d).await),
                FetchLock::Unlocked => {}
            }
        }
        let result = fetch.await;
        let out = match result {
            Ok(mut data) => {
                data.fresh_for = freshness(
                    &self.policy,
                    &data.window,
                    data.complete(),
                    Timestamp::now(),
                );
                data.fetched_at = Instant::now();
                data.fetched_unix_ms = Timestamp::now().as_millisecond();
                let data = Arc::new(data);
                for t in [&self.local, &self.shared].into_iter().flatten() {
                    t.put(&self.key, &data).await;
                }
                Ok(self.keep_in_memory(data).await)
            }
            Err(e) => Err(e),
        };
        if locked && let Some(t) = &self.shared {
            t.unlock(&self.key).await;
        }
        out
    }

    /// Keeps a copy another replica fetched (no upstream call was made for it here), in
    /// memory and in the local tier.
    async fn keep(&self, mut data: WindowData) -> Arc<WindowData> {
        data.shared = true;
        let data = Arc::new(data);
        if let Some(t) = &self.local {
            t.put(&self.key, &data).await;
        }
        self.keep_in_memory(data).await
    }

    async fn keep_in_memory(&self, data: Arc<WindowData>) -> Arc<WindowData> {
        self.store.insert(self.key.clone(), Arc::clone(&data)).await;
        index(&self.spans, &self.key);
        if self.replaces_contained && data.complete() && data.is_fresh() {
            self.drop_contained().await;
        }
        data
    }

    /// Removes the windows this fresh, complete one contains (the parts it was assembled
    /// from, above all): containment answers them from it, sharing its records, so keeping
    /// them would only weigh the same records twice against the bound. (With containment
    /// off, a benchmark's knob, they stay: nothing else would answer them.)
    async fn drop_contained(&self) {
        let key = &self.key;
        // Spans starting within this one; those that also end within it are contained.
        let inner = indexed(
            &self.spans,
            key,
            (key.start, i64::MIN)..=(key.end, key.end),
            |s, e| key.start <= s && e <= key.end,
        );
        for k in inner {
            self.store.invalidate(&k).await;
        }
    }
}

/// The keys of `key`'s family indexed with a span in `range` that `keep(start, end)`
/// accepts, `key`'s own span excepted: the containers or the contents of `key`.
fn indexed(
    spans: &SpanIndex,
    key: &WindowKey,
    range: impl std::ops::RangeBounds<(i64, i64)>,
    keep: impl Fn(i64, i64) -> bool,
) -> Vec<WindowKey> {
    let spans = lock(spans);
    let Some(set) = spans.get(&key.family()) else {
        return Vec::new();
    };
    set.range(range)
        .filter(|&&(s, e)| (s, e) != (key.start, key.end) && keep(s, e))
        .map(|&(start, end)| WindowKey {
            start,
            end,
            ..key.clone()
        })
        .collect()
}

/// Records that `key` is in the store, for [`WindowCache::contained`].
fn index(spans: &SpanIndex, key: &WindowKey) {
    lock(spans)
        .entry(key.family())
        .or_default()
        .insert((key.start, key.end));
}

/// How long a replica waits for another replica's fetch of the same window.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The TTL policy: settled windows live long, recent or incomplete ones briefly.
fn freshness(policy: &CacheSettings, w: &Window, complete: bool, now: Timestamp) -> Duration {
    if !complete {
        return policy.ttl_recent;
    }
    let settled_at = w
        .end
        .as_second()
        .saturating_add(policy.settle.as_secs() as i64);
    if settled_at < now.as_second() {
        policy.ttl_past
    } else {
        policy.ttl_recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cache::*, merge::Record, upstream::Filters};
    use std::sync::atomic::AtomicU32;

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

    fn key(w: &Window) -> WindowKey {
        WindowKey::new(w, &Arc::new(Filters::default()))
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
        let past = window_ending(
            Timestamp::from_second(Timestamp::now().as_second() - 10 * 86_400).unwrap(),
        );
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
            let ka = QueryKey { route: "interactions", from: bounds.0, to: 5, tz: &a.4, filters: &fa, select: Default::default() };
            let kb = QueryKey { route: "interactions", from: bounds.1, to: 5, tz: &b.4, filters: &fb, select: Default::default() };
            let same = fa == fb && a.4 == b.4 && bounds.0 == bounds.1;
            proptest::prop_assert_eq!(ka.digest() == kb.digest(), same);
            let w = Window {
                start: Timestamp::from_second(bounds.0).unwrap(),
                end: Timestamp::from_second(5).unwrap(),
                offset_seconds: 0,
            };
            let wa = WindowKey::new(&w, &Arc::new(fa.clone()));
            let wb = WindowKey::new(&w, &Arc::new(fb.clone()));
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
        assert_ne!(key(&w), WindowKey::new(&w, &voice));
        assert_ne!(key(&w), key(&other_offset));
        assert_eq!(key(&w), WindowKey::new(&w, &Arc::new(Filters::default())));
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
        assert!(!key(&w).contains(&WindowKey::new(&inner, &voice)));
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
}

//! The window cache: memory (moka), then the tiers below it, with one fetch per cold key.
//!
//! One concern a file, as pingora-cache keeps its storage, lock and eviction apart:
//! * here, the cache itself: what it holds and the read path ([`WindowCache::get_or_fetch`]:
//!   fresh copy, contained copy, stale-while-revalidate, else a fetch);
//! * `flight`: the one fetch of a cold key (coalescing in this process, the fill lock of the
//!   shared tier across replicas) and what it stores where;
//! * `containment`: answering a window from a cached one that contains it, and the span
//!   index that finds it;
//! * `freshness`: the TTL policy;
//! * `refresh`: refresh-ahead of polled recent windows.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::{Epoch, Purpose, Source, Tier, WindowData, WindowKey, WindowOutcome};
use crate::{config::CacheSettings, upstream::UpstreamError};

/// Longest a read of the disk tier waits for the replicas' purge epoch at start-up.
const EPOCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

mod containment;
mod flight;
mod freshness;
mod refresh;
#[cfg(test)]
mod tests;

use self::{
    containment::{SpanIndex, index},
    freshness::WindowExpiry,
};

/// Makes one upstream fetch of a window for a [`Purpose`]. The cache keeps it to
/// revalidate or refresh the window later, behind the caller's back.
pub type Refetch =
    Arc<dyn Fn(Purpose) -> BoxFuture<'static, Result<WindowData, UpstreamError>> + Send + Sync>;

type FetchResult = Result<Arc<WindowData>, UpstreamError>;
type InFlight = Shared<BoxFuture<'static, FetchResult>>;

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
    /// The purge epoch: a copy of an older one is not served from any tier.
    epoch: Epoch,
}

impl std::fmt::Debug for WindowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCache")
            .field("entries", &self.store.entry_count())
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            epoch: Epoch::default(),
        }
    }

    /// Turns containment reuse on or off (benchmarks compare the two).
    pub fn set_containment(&self, on: bool) {
        self.containment.store(on, Ordering::Relaxed);
    }

    /// Shares `epoch` with the other caches of the process (the purges of `DELETE
    /// /v1/cache`, on this replica or another).
    pub fn with_epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = epoch;
        self
    }

    /// The purge epoch this cache serves.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The copy in memory, unless a purge came after its fetch.
    async fn live(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        self.store
            .get(key)
            .await
            .filter(|d| self.epoch.is_live(d.epoch))
    }

    /// The fresh cached data of `key`, if any.
    pub async fn get_fresh(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        self.live(key).await.filter(|d| d.is_fresh())
    }

    /// Whether `key` is held fresh in some tier: memory (itself or a window containing
    /// it), the local tier, or the tier replicas share. A copy found below memory is
    /// brought up into memory (and a shared one into the local tier too), so the answer
    /// that usually follows reads memory and asks no tier again.
    pub async fn fresh_anywhere(&self, key: &WindowKey) -> bool {
        if self.cached(key).await.is_some_and(|d| d.is_fresh())
            || self.contained(key).await.is_some()
        {
            return true;
        }
        let Some(shared) = &self.shared else {
            return false;
        };
        // The shared tier answers only fresh copies; one fetched before a purge is none.
        let Some(mut d) = shared
            .get(key)
            .await
            .filter(|d| self.epoch.is_live(d.epoch))
        else {
            return false;
        };
        d.shared = true;
        let d = Arc::new(d);
        if let Some(local) = &self.local {
            local.put(key, &d).await;
        }
        self.store.insert(key.clone(), d).await;
        index(&self.spans, key);
        true
    }

    /// The copy in memory, or else the local tier's (which then fills memory).
    async fn cached(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        if let Some(d) = self.live(key).await {
            return Some(d);
        }
        let local = self.local.as_ref()?;
        // What outlives the process is read only once this replica knows the purges of the
        // others (or knows it cannot learn them).
        self.epoch.known(EPOCH_WAIT).await;
        let d = Arc::new(
            local
                .get(key)
                .await
                .filter(|d| self.epoch.is_live(d.epoch))?,
        );
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
        let out = self.fetch_once(&key, refresh, &refetch).await;
        if let Ok(o) = &out {
            self.watch(&key, &o.data, &refetch);
        }
        out
    }

    /// The change feed's poll of a window: fetched now whatever the cache holds (joined with
    /// a fetch of it already under way), stored for `/v1/interactions`, and *not* marked as
    /// read — refresh-ahead keeps warm what callers read, not what the feed polls anyway.
    ///
    /// # Errors
    /// The fetch's error, when no stale copy can stand in.
    pub async fn poll(
        &self,
        key: WindowKey,
        refetch: Refetch,
    ) -> Result<WindowOutcome, UpstreamError> {
        self.fetch_once(&key, true, &refetch).await
    }

    /// Fetches the window once for all concurrent callers (`refresh`: even if a fresh copy
    /// is held); on failure, the copy held stands in (stale) if there is one.
    async fn fetch_once(
        &self,
        key: &WindowKey,
        refresh: bool,
        refetch: &Refetch,
    ) -> Result<WindowOutcome, UpstreamError> {
        let (flight, leader) = self.flight(key, refresh, refetch(Purpose::Caller), Purpose::Caller);
        match flight.await {
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
            Err(e) => match self.live(key).await {
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
        }
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

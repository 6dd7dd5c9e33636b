//! The one fetch of a cold window: coalesced in this process (concurrent misses of one key
//! share a single fetch, run as its own task so a caller that goes away does not cancel it
//! for the others), locked in the shared tier across replicas, and stored in every tier.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use futures_util::FutureExt;
use jiff::Timestamp;
use tokio::time::Instant;

use super::{
    super::{FetchLock, Purpose, Tier, WindowData, WindowKey},
    FetchResult, InFlight, SpanIndex, WindowCache,
    freshness::freshness,
    index, lock,
};
use crate::{config::CacheSettings, upstream::UpstreamError};

/// Removes the in-flight entry however the fetch task ends (even by panic).
pub(super) struct InflightGuard {
    map: Arc<Mutex<HashMap<WindowKey, InFlight>>>,
    key: WindowKey,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
    }
}

impl WindowCache {
    /// The fetch of `key` under way, or a new one started (in its own task, so a caller
    /// that goes away does not cancel it for the others). Returns it and whether it is new.
    pub(super) fn flight<Fut>(
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
            epoch: self.epoch.clone(),
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
}

/// The work of the one task that fills a cold window: memory again (a leader may just have
/// finished), then the shared tier, then — holding its lock so no other replica fetches it
/// too — the upstream; the result goes to every tier.
pub(super) struct Leader {
    pub(super) store: moka::future::Cache<WindowKey, Arc<WindowData>>,
    pub(super) local: Option<Arc<dyn Tier>>,
    pub(super) spans: SpanIndex,
    pub(super) shared: Option<Arc<dyn Tier>>,
    pub(super) policy: CacheSettings,
    pub(super) key: WindowKey,
    pub(super) refresh: bool,
    /// Containment reuse is on: a complete window may replace the windows it contains.
    pub(super) replaces_contained: bool,
    pub(super) epoch: super::Epoch,
}

impl Leader {
    async fn run<Fut>(self, fetch: Fut) -> FetchResult
    where
        Fut: Future<Output = Result<WindowData, UpstreamError>>,
    {
        // A fetch that began before a purge is of the purged epoch.
        let epoch = self.epoch.current();
        let live = |d: &WindowData| self.epoch.is_live(d.epoch);
        if !self.refresh
            && let Some(d) = self
                .store
                .get(&self.key)
                .await
                .filter(|d| d.is_fresh() && live(d))
        {
            return Ok(d);
        }
        let mut locked = false;
        if let Some(t) = &self.shared {
            if !self.refresh
                && let Some(d) = t.get(&self.key).await.filter(live)
            {
                return Ok(self.keep(d).await);
            }
            // Become the one replica that fetches, or take the result of the one that did.
            match t.lock_for_fetch(&self.key, LOCK_WAIT).await {
                FetchLock::Held => {
                    locked = true;
                    // The previous holder may have published between our look and our lock.
                    if !self.refresh
                        && let Some(d) = t.get(&self.key).await.filter(live)
                    {
                        t.unlock(&self.key).await;
                        return Ok(self.keep(d).await);
                    }
                }
                FetchLock::Filled(d) if live(&d) => return Ok(self.keep(d).await),
                // Filled before a purge: this one fetches again.
                FetchLock::Filled(_) => {}
                FetchLock::Unlocked => {}
            }
        }
        let result = match (&self.shared, locked) {
            (Some(t), true) => {
                // The lock is a lease: kept while the fetch runs, lost if this process dies.
                let renew = async {
                    let Some(every) = t.renew_every() else {
                        return std::future::pending().await;
                    };
                    loop {
                        tokio::time::sleep(every).await;
                        t.renew(&self.key).await;
                    }
                };
                tokio::select! {
                    r = fetch => r,
                    // Never: renewing goes on until the fetch ends.
                    () = renew => Err(UpstreamError::Unexpected("lock renewal ended".into())),
                }
            }
            _ => fetch.await,
        };
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
                data.epoch = epoch;
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
}

/// How long a replica waits for another replica's fetch of the same window.
const LOCK_WAIT: Duration = Duration::from_secs(60);

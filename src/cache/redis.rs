//! The tier replicas share (`REDIS_URL`): a window's records, lz4-compressed, under
//! `kore-gateway:<namespace label>:w:<start>:<end>:<offset>:<digest of the whole key>`, with
//! its fetch time and freshness so every replica applies the same TTL policy; Redis expires
//! it after freshness + stale grace. The label and the digest both come from the key's
//! [`Namespace`](super::Namespace), so a window of one upstream account is never read for
//! another.
//!
//! **Coalescing across replicas**: `SET … NX PX` on a `lock:` key per window; the holder
//! fetches, writes the window, then deletes the lock (only if still its own); the others
//! poll for the window meanwhile.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use redis::Script;
use tokio::time::Instant;

use super::{
    FetchLock, Tier, WindowData, WindowKey,
    tier::{decode_stored, encode_stored},
};
use crate::cluster::{Cluster, PREFIX};

/// Lifetime of a window lock (a holder that dies frees it by expiry).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How often waiters look for the holder's result.
const POLL: Duration = Duration::from_millis(50);
/// Keys asked of one `SCAN` step (and so at most about this many per `UNLINK`) when purging.
const PURGE_BATCH: u32 = 500;

/// Deletes a lock only if it is still ours.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Stored bytes back into a window, if still fresh.
fn decode(bytes: &[u8]) -> Option<WindowData> {
    decode_stored(bytes).filter(WindowData::is_fresh)
}

/// `text` matched literally inside a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The windows replicas share through Redis, as the cache's shared tier: a copy is read
/// only while fresh, stored for its freshness plus the stale grace, and a cold window is
/// fetched by the one replica holding its lock.
#[derive(Debug)]
pub struct RedisTier {
    cluster: Arc<Cluster>,
    grace: Duration,
    unlock: Script,
}

impl RedisTier {
    pub fn new(cluster: Arc<Cluster>, grace: Duration) -> Self {
        RedisTier {
            cluster,
            grace,
            unlock: Script::new(UNLOCK_LUA),
        }
    }
    /// The Redis key of a window: its bounds for people reading Redis, and the digest of
    /// the whole typed key (bounds, offset, every filter list) for uniqueness.
    fn window_key(key: &WindowKey, kind: &str) -> String {
        format!(
            "{PREFIX}{}:{kind}:{}:{}:{}:{}",
            key.ns.label(),
            key.start,
            key.end,
            key.offset_seconds,
            crate::cache::hex(&key.digest())
        )
    }

    /// Deletes every window the replicas of the account labelled `label` stored in Redis:
    /// `SCAN` for the window keys under its prefix and `UNLINK` each batch (never `KEYS`,
    /// which blocks Redis for the whole keyspace). Locks and the budget log are left alone.
    /// Returns how many keys went, and whether the scan finished (false when Redis failed
    /// part-way; what was unlinked by then stays unlinked).
    pub async fn purge(&self, label: &str) -> (u64, bool) {
        let pattern = format!("{}w:*", glob_escape(&Cluster::key(label, "")));
        let mut cursor: u64 = 0;
        let mut unlinked: u64 = 0;
        loop {
            let mut conn = self.cluster.conn();
            let page: Option<(u64, Vec<String>)> = self
                .cluster
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(PURGE_BATCH)
                        .query_async(&mut conn),
                )
                .await;
            let Some((next, keys)) = page else {
                return (unlinked, false);
            };
            if !keys.is_empty() {
                let n: Option<u64> = self
                    .cluster
                    .run(redis::cmd("UNLINK").arg(&keys).query_async(&mut conn))
                    .await;
                match n {
                    Some(n) => unlinked += n,
                    None => return (unlinked, false),
                }
            }
            if next == 0 {
                return (unlinked, true);
            }
            cursor = next;
        }
    }

    /// The fresh L2 copy of a window, if any.
    async fn get_window(&self, key: &WindowKey) -> Option<WindowData> {
        let k = Self::window_key(key, "w");
        let mut conn = self.cluster.conn();
        let bytes: Option<Vec<u8>> = self
            .cluster
            .run(redis::cmd("GET").arg(&k).query_async(&mut conn))
            .await?;
        let bytes = bytes?;
        // Decompressing and reading thousands of records is CPU work: off the async threads.
        let data = tokio::task::spawn_blocking(move || decode(&bytes))
            .await
            .ok()??;
        self.cluster.stats.l2_hits.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// Stores a window for every replica, for its freshness plus the stale grace.
    async fn put_window(&self, key: &WindowKey, data: &Arc<WindowData>, grace: Duration) {
        let ttl_ms = (data.fresh_for + grace).as_millis().max(1) as u64;
        let fetched_at_ms =
            jiff::Timestamp::now().as_millisecond() - data.fetched_at.elapsed().as_millis() as i64;
        let owned = Arc::clone(data);
        let Ok(Some(packed)) =
            tokio::task::spawn_blocking(move || encode_stored(&owned, fetched_at_ms)).await
        else {
            return;
        };
        let k = Self::window_key(key, "w");
        // Waiting replicas depend on this write: one retry before giving up on it.
        for _ in 0..2 {
            let mut conn = self.cluster.conn();
            let done: Option<()> = self
                .cluster
                .run(
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(&packed)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn),
                )
                .await;
            if done.is_some() {
                self.cluster.stats.l2_writes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Tries to become the one replica fetching this window. `Some(true)`: ours;
    /// `Some(false)`: another replica holds it; `None`: Redis unavailable.
    async fn try_lock(&self, key: &WindowKey) -> Option<bool> {
        let k = Self::window_key(key, "lock");
        let mut conn = self.cluster.conn();
        let set: Option<Option<String>> = self
            .cluster
            .run(
                redis::cmd("SET")
                    .arg(&k)
                    .arg(self.cluster.replica())
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
        set.map(|r| r.is_some())
    }

    /// Frees our lock on a window.
    async fn unlock_window(&self, key: &WindowKey) {
        let k = Self::window_key(key, "lock");
        let mut conn = self.cluster.conn();
        let _: Option<i64> = self
            .cluster
            .run(
                self.unlock
                    .key(&k)
                    .arg(self.cluster.replica())
                    .invoke_async(&mut conn),
            )
            .await;
    }

    /// Waits for the lock holder's result; `None` when the lock went away without one (the
    /// holder failed or died) or Redis became unavailable — the caller then fetches itself.
    async fn wait_for_window(&self, key: &WindowKey, deadline: Duration) -> Option<WindowData> {
        self.cluster
            .stats
            .lock_waits
            .fetch_add(1, Ordering::Relaxed);
        let lock = Self::window_key(key, "lock");
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            tokio::time::sleep(POLL).await;
            if let Some(d) = self.get_window(key).await {
                return Some(d);
            }
            let mut conn = self.cluster.conn();
            let held: i64 = self
                .cluster
                .run(redis::cmd("EXISTS").arg(&lock).query_async(&mut conn))
                .await?;
            if held == 0 {
                // Freed: either the result is there now, or the holder gave up.
                return self.get_window(key).await;
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl Tier for RedisTier {
    async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        self.get_window(key).await
    }

    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>) {
        self.put_window(key, data, self.grace).await;
    }

    /// If a holder gives up without publishing, the waiters compete for the lock again, so
    /// a failure costs one more fetch, not one per waiting replica.
    async fn lock_for_fetch(&self, key: &WindowKey, wait: Duration) -> FetchLock {
        for _ in 0..5 {
            match self.try_lock(key).await {
                Some(true) => return FetchLock::Held,
                Some(false) => {
                    if let Some(d) = self.wait_for_window(key, wait).await {
                        return FetchLock::Filled(d);
                    }
                    tracing::debug!(start = key.start, "lock holder gave up without publishing");
                }
                None => {
                    tracing::debug!(
                        start = key.start,
                        "redis unavailable for the lock: fetching locally"
                    );
                    return FetchLock::Unlocked;
                }
            }
        }
        FetchLock::Unlocked
    }

    async fn unlock(&self, key: &WindowKey) {
        self.unlock_window(key).await;
    }
}

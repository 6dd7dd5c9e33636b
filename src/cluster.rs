//! What replicas share through Redis (optional, `REDIS_URL`): the L2 window cache, the
//! upstream budget, and a short per-window lock so one replica fetches a cold window while
//! the others wait for its result.
//!
//! * **L2 cache**: a window's records, lz4-compressed, under a key derived from the same
//!   [`WindowKey`] as the L1 (moka) cache, carrying its fetch time and freshness so every
//!   replica applies the same TTL policy; Redis expires it after freshness + stale grace.
//! * **Budget**: the same sliding-window log as the local budget (`budget.rs`), kept in one
//!   sorted set and changed only by Lua scripts, so the check and the insert are atomic
//!   across replicas. Redis's own `TIME` is the clock. A call in flight holds a lease
//!   entry (scored in the future, so it counts until it completes, or until the lease ends
//!   if its replica died); its completion rewrites the score to the completion time.
//! * **Coalescing**: `SET … NX PX` on a lock key per window; the holder fetches, writes L2,
//!   then deletes the lock (only if still its own); others poll L2 meanwhile.
//!
//! Redis being down or slow never fails a request: every operation has a short timeout, a
//! failure opens a brief circuit (no Redis calls for a moment), and callers fall back to
//! their local cache and a local share of the budget (N divided by the replicas last seen).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::cache::{
    FetchLock, Tier, WindowData, WindowKey,
    tier::{decode_stored, encode_stored},
};

/// How long one Redis operation may take before it counts as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Failures in a row that make Redis count as lost (fewer are blips).
const LOST_AFTER: u32 = 3;
/// After a failure, Redis is left alone this long (requests go local meanwhile).
const BREAKER: Duration = Duration::from_secs(1);
/// Lifetime of a window lock (a holder that dies frees it by expiry).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How often waiters look for the holder's result.
const POLL: Duration = Duration::from_millis(50);
/// Keys asked of one `SCAN` step (and so at most about this many per `UNLINK`) when purging.
const PURGE_BATCH: u32 = 500;

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

/// Counters for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub up: AtomicBool,
    pub errors: AtomicU64,
    pub l2_hits: AtomicU64,
    pub l2_writes: AtomicU64,
    pub lock_waits: AtomicU64,
    pub replicas: AtomicU32,
}

/// The Redis side of a replica.
pub struct Cluster {
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    broken_until: Mutex<Option<Instant>>,
    /// When Redis was last lost and last regained (for the budget's hand-over periods).
    changed: Mutex<Transitions>,
    /// GATEWAY_REPLICAS: the replica count assumed at least, even before any heartbeat.
    expected_replicas: u32,
    /// Failed operations in a row.
    failures: AtomicU32,
    acquire: Script,
    release: Script,
    unlock: Script,
    heartbeat: Script,
    pub stats: ClusterStats,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// When the shared state was last lost and regained.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transitions {
    pub lost_at: Option<Instant>,
    pub regained_at: Option<Instant>,
}

/// Sliding-window log with leases: prune, count, admit or say how long to wait (ms).
const ACQUIRE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], period + lease)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + period - now
if wait < 1 then wait = 1 end
return wait
";

/// A call completed: its entry now counts from the completion time.
const RELEASE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
return 1
";

/// Deletes a lock only if it is still ours.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Marks this replica alive and counts the live ones.
const HEARTBEAT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// L2 bytes back into a window, if still fresh.
fn decode(bytes: &[u8]) -> Option<WindowData> {
    decode_stored(bytes).filter(WindowData::is_fresh)
}

impl Cluster {
    /// Prepares the (lazy) connection; nothing is contacted yet, so a Redis that is down at
    /// start-up does not stop the gateway.
    ///
    /// # Errors
    /// A URL the client cannot parse (the message never repeats the URL).
    pub fn new(
        url: &SecretString,
        account_id: &str,
        expected_replicas: u32,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|_| "REDIS_URL is not a valid Redis URL".to_owned())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot prepare the Redis connection ({:?})", e.kind()))?;
        let replica = format!("{:016x}", fastrand::u64(..));
        Ok(Arc::new(Cluster {
            conn,
            prefix: format!("kore-gateway:{account_id}:"),
            replica,
            broken_until: Mutex::new(None),
            changed: Mutex::new(Transitions::default()),
            acquire: Script::new(ACQUIRE_LUA),
            release: Script::new(RELEASE_LUA),
            unlock: Script::new(UNLOCK_LUA),
            heartbeat: Script::new(HEARTBEAT_LUA),
            expected_replicas: expected_replicas.max(1),
            failures: AtomicU32::new(0),
            stats: ClusterStats {
                replicas: AtomicU32::new(1),
                ..ClusterStats::default()
            },
        }))
    }

    /// Whether the last operation reached Redis.
    pub fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Relaxed)
    }

    /// When Redis was last lost and regained.
    pub fn transitions(&self) -> Transitions {
        *self.changed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live replicas at the last heartbeat, at least GATEWAY_REPLICAS.
    pub fn replicas(&self) -> u32 {
        self.stats
            .replicas
            .load(Ordering::Relaxed)
            .max(self.expected_replicas)
    }

    /// Runs one Redis operation with the timeout and the circuit breaker; `None` when Redis
    /// is unavailable (the caller then goes local).
    async fn run<T, F>(&self, op: F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if self
            .broken_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
        {
            return None;
        }
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                self.failures.store(0, Ordering::Relaxed);
                if !self.stats.up.swap(true, Ordering::Relaxed) {
                    self.changed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .regained_at = Some(Instant::now());
                    tracing::info!("redis reachable: sharing cache and budget with other replicas");
                }
                Some(v)
            }
            failure => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("gateway_redis_errors_total").increment(1);
                tracing::debug!(
                    reason = %match &failure { Ok(Err(e)) => format!("{:?}", e.kind()), _ => "timeout".to_owned() },
                    "redis operation failed"
                );
                // One slow answer is a blip (this caller goes local once); several in a row
                // are an outage: open the circuit and tell the budget it is on its own.
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < LOST_AFTER {
                    return None;
                }
                *self.broken_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + BREAKER);
                if self.stats.up.swap(false, Ordering::Relaxed) {
                    self.changed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .lost_at = Some(Instant::now());
                    let why = match failure {
                        Ok(Err(e)) => format!("{:?}", e.kind()),
                        _ => "timeout".to_owned(),
                    };
                    tracing::warn!(reason = %why, "redis unavailable: using the local cache and a local share of the budget");
                }
                None
            }
        }
    }

    /// The Redis key of a window: its bounds for people reading Redis, and the digest of
    /// the whole typed key (bounds, offset, every filter list) for uniqueness.
    fn window_key(&self, key: &WindowKey, kind: &str) -> String {
        format!(
            "{}{kind}:{}:{}:{}:{}",
            self.prefix,
            key.start,
            key.end,
            key.offset_seconds,
            crate::cache::hex(&key.digest())
        )
    }

    /// Deletes every window this account's replicas stored in Redis (the L2 tier): `SCAN`
    /// for the window keys under the cluster prefix and `UNLINK` each batch (never `KEYS`,
    /// which blocks Redis for the whole keyspace). Locks and the budget log are left alone.
    /// Returns how many keys went, and whether the scan finished (false when Redis failed
    /// part-way; what was unlinked by then stays unlinked).
    pub async fn purge_windows(&self) -> (u64, bool) {
        let pattern = format!("{}w:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut unlinked: u64 = 0;
        loop {
            let mut conn = self.conn.clone();
            let page: Option<(u64, Vec<String>)> = self
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
    pub async fn get_window(&self, key: &WindowKey) -> Option<WindowData> {
        let k = self.window_key(key, "w");
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(&k).query_async(&mut conn))
            .await?;
        let bytes = bytes?;
        // Decompressing and reading thousands of records is CPU work: off the async threads.
        let data = tokio::task::spawn_blocking(move || decode(&bytes))
            .await
            .ok()??;
        self.stats.l2_hits.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// Stores a window for every replica, for its freshness plus the stale grace.
    pub async fn put_window(&self, key: &WindowKey, data: &Arc<WindowData>, grace: Duration) {
        let ttl_ms = (data.fresh_for + grace).as_millis().max(1) as u64;
        let fetched_at_ms =
            jiff::Timestamp::now().as_millisecond() - data.fetched_at.elapsed().as_millis() as i64;
        let owned = Arc::clone(data);
        let Ok(Some(packed)) =
            tokio::task::spawn_blocking(move || encode_stored(&owned, fetched_at_ms)).await
        else {
            return;
        };
        let k = self.window_key(key, "w");
        // Waiting replicas depend on this write: one retry before giving up on it.
        for _ in 0..2 {
            let mut conn = self.conn.clone();
            let done: Option<()> = self
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
                self.stats.l2_writes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Tries to become the one replica fetching this window. `Some(true)`: ours;
    /// `Some(false)`: another replica holds it; `None`: Redis unavailable.
    pub async fn try_lock(&self, key: &WindowKey) -> Option<bool> {
        let k = self.window_key(key, "lock");
        let mut conn = self.conn.clone();
        let set: Option<Option<String>> = self
            .run(
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&self.replica)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
        set.map(|r| r.is_some())
    }

    /// Frees our lock on a window.
    pub async fn unlock(&self, key: &WindowKey) {
        let k = self.window_key(key, "lock");
        let mut conn = self.conn.clone();
        let _: Option<i64> = self
            .run(
                self.unlock
                    .key(&k)
                    .arg(&self.replica)
                    .invoke_async(&mut conn),
            )
            .await;
    }

    /// Waits for the lock holder's result; `None` when the lock went away without one (the
    /// holder failed or died) or Redis became unavailable — the caller then fetches itself.
    pub async fn wait_for_window(&self, key: &WindowKey, deadline: Duration) -> Option<WindowData> {
        self.stats.lock_waits.fetch_add(1, Ordering::Relaxed);
        let lock = self.window_key(key, "lock");
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            tokio::time::sleep(POLL).await;
            if let Some(d) = self.get_window(key).await {
                return Some(d);
            }
            let mut conn = self.conn.clone();
            let held: i64 = self
                .run(redis::cmd("EXISTS").arg(&lock).query_async(&mut conn))
                .await?;
            if held == 0 {
                // Freed: either the result is there now, or the holder gave up.
                return self.get_window(key).await;
            }
        }
        None
    }

    /// Takes a slot of the shared budget. `Some(Ok(member))`: granted (release it with
    /// [`Cluster::release_slot`] when the call completes); `Some(Err(wait))`: full;
    /// `None`: Redis unavailable.
    pub async fn acquire_slot(
        &self,
        calls: u32,
        period: Duration,
        lease: Duration,
    ) -> Option<Result<String, Duration>> {
        let member = format!("{}:{:016x}", self.replica, fastrand::u64(..));
        let k = format!("{}budget", self.prefix);
        let mut conn = self.conn.clone();
        let wait: i64 = self
            .run(
                self.acquire
                    .key(&k)
                    .arg(calls)
                    .arg(period.as_millis() as u64)
                    .arg(lease.as_millis() as u64)
                    .arg(&member)
                    .invoke_async(&mut conn),
            )
            .await?;
        Some(if wait == 0 {
            Ok(member)
        } else {
            Err(Duration::from_millis(wait.max(1) as u64))
        })
    }

    /// Records a call's completion in the shared log.
    pub async fn release_slot(&self, member: &str) {
        let k = format!("{}budget", self.prefix);
        let mut conn = self.conn.clone();
        let _: Option<i64> = self
            .run(self.release.key(&k).arg(member).invoke_async(&mut conn))
            .await;
    }

    /// Announces this replica and learns how many are alive (for the local budget share
    /// used while Redis is down).
    pub async fn heartbeat(&self) {
        let k = format!("{}replicas", self.prefix);
        let mut conn = self.conn.clone();
        let n: Option<i64> = self
            .run(
                self.heartbeat
                    .key(&k)
                    .arg(&self.replica)
                    .arg(15_000u64)
                    .invoke_async(&mut conn),
            )
            .await;
        if let Some(n) = n {
            self.stats
                .replicas
                .store(u32::try_from(n).unwrap_or(1).max(1), Ordering::Relaxed);
        }
    }

    /// Heartbeats every few seconds for as long as the cluster handle lives.
    pub fn spawn_heartbeat(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { return };
                c.heartbeat().await;
                drop(c);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
    }
}

/// The windows replicas share through Redis, as the cache's shared tier: a copy is read
/// only while fresh, stored for its freshness plus the stale grace, and a cold window is
/// fetched by the one replica holding its lock.
#[derive(Debug)]
pub struct RedisTier {
    cluster: Arc<Cluster>,
    grace: Duration,
}

impl RedisTier {
    pub fn new(cluster: Arc<Cluster>, grace: Duration) -> Self {
        RedisTier { cluster, grace }
    }
}

#[async_trait::async_trait]
impl Tier for RedisTier {
    async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        self.cluster.get_window(key).await
    }

    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>) {
        self.cluster.put_window(key, data, self.grace).await;
    }

    /// If a holder gives up without publishing, the waiters compete for the lock again, so
    /// a failure costs one more fetch, not one per waiting replica.
    async fn lock_for_fetch(&self, key: &WindowKey, wait: Duration) -> FetchLock {
        for _ in 0..5 {
            match self.cluster.try_lock(key).await {
                Some(true) => return FetchLock::Held,
                Some(false) => {
                    if let Some(d) = self.cluster.wait_for_window(key, wait).await {
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
        self.cluster.unlock(key).await;
    }
}

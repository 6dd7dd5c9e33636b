//! The replica's connection to Redis (optional, `REDIS_URL`), shared by every account: the
//! upstream budget of each account, the replica heartbeat, and the guarded operation every
//! Redis user goes through ([`Cluster::run`]). The windows replicas share are the cache's
//! Redis tier (`cache::redis`), on this same connection.
//!
//! * **Key layout**: everything of one vendor account lives under
//!   `kore-gateway:<account id>:<upstream digest>:` (the label of its cache namespace, so
//!   two gateways on one Redis share exactly what belongs to the same upstream account):
//!   `budget` (its log), `replicas` (the heartbeats of the replicas serving it), the
//!   cache tier's `w:` windows and `lock:` fetch locks, and the jobs (`job:<id>`,
//!   `job:<id>:lease`, `job-for:<digest>`, `jobs`: see [`crate::jobs::redis`]).
//! * **Budget**: the same sliding-window log as the local budget (`budget`), kept in one
//!   sorted set per account and changed only by Lua scripts, so the check and the insert
//!   are atomic across replicas. Redis's own `TIME` is the clock. A call in flight holds a
//!   lease entry (scored in the future, so it counts until it completes, or until the lease
//!   ends if its replica died); its completion rewrites the score to the completion time.
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

use crate::{
    budget::{SharedCounter, SharedLog, Transitions},
    config::KeyShares,
};

/// The prefix of every key the gateway writes to Redis.
pub const PREFIX: &str = "kore-gateway:";

/// The purge epoch every replica reads (`DELETE /v1/cache` raises it): one counter for
/// the whole Redis, since a purge drops every account's copies.
const PURGE_EPOCH: &str = "kore-gateway:purge-epoch";

/// How long one Redis operation may take before it counts as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Failures in a row that make Redis count as lost (fewer are blips).
const LOST_AFTER: u32 = 3;
/// After a failure, Redis is left alone this long (requests go local meanwhile).
const BREAKER: Duration = Duration::from_secs(1);

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
    replica: String,
    /// The account labels this replica serves (heartbeats go to each).
    accounts: Mutex<Vec<String>>,
    broken_until: Mutex<Option<Instant>>,
    /// When Redis was last lost and last regained (for the budget's hand-over periods).
    changed: Mutex<Transitions>,
    /// GATEWAY_REPLICAS: the replica count assumed at least, even before any heartbeat.
    expected_replicas: u32,
    /// Failed operations in a row.
    failures: AtomicU32,
    acquire: Script,
    acquire_keyed: Script,
    release: Script,
    heartbeat: Script,
    count: Script,
    pub stats: ClusterStats,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("Cluster")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Sliding-window log with leases: prune, count, admit or say how long to wait (ms). The
/// priority order across replicas: a replica asking at priority p (0 callers, 1
/// revalidations, 2 refresh-ahead) announces itself in `urgent:p` for a second; a call of
/// priority p is refused (wait 50 ms) while another replica is announced at a more urgent
/// priority (the feed's polls, 3, yield like refresh-ahead: to callers and revalidations,
/// which are the ones announced). KEYS: the log, `urgent:0`, `urgent:1`; ARGV: limit, period, lease, member,
/// priority, replica.
const ACQUIRE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local priority, replica = tonumber(ARGV[5]), ARGV[6]
if priority < 2 then
  redis.call('ZADD', KEYS[2 + priority], now + 1000, replica)
  redis.call('PEXPIRE', KEYS[2 + priority], 2000)
end
for p = 0, math.min(priority, 2) - 1 do
  local k = KEYS[2 + p]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local others = redis.call('ZCARD', k)
  if redis.call('ZSCORE', k, replica) then others = others - 1 end
  if others > 0 then return 50 end
end
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

/// [`ACQUIRE_LUA`] for a call at the caller priority that also chooses *whose* call it is
/// (GATEWAY_KEY_SHARES), with the rules of `budget::shares` over every replica's callers:
///
/// * demand: each replica announces the callers it has waiting as `replica|key` members of
///   `demand`, scored by when the announcement lapses ([`DEMAND_TTL_MS`]; a replica asks at
///   least that often while its callers wait), replacing its previous announcement;
/// * grants: every caller grant of the last `horizon` (the longest reservation or cap
///   period) is in `grants` as `phase|key|member` scored by its time, so each key's
///   reservation and cap are counted over the whole deployment;
/// * virtual time: `vt` holds `V`, each key's last finish tag `f|key` and the tag of the
///   next call of each key waiting somewhere, `p|key`.
///
/// The key chosen is the one the rules pick among all announced keys; if it is this
/// replica's, the slot is taken for it and the script answers `{0, key}`; if it is another
/// replica's, `{20, ''}` (that replica takes it when it asks, within a poll). Ties go to this
/// replica's keys, so two replicas with the same key never wait for each other.
/// KEYS: the log, `urgent:0`, `urgent:1`, `demand`, `grants`, `vt`; ARGV: limit, period,
/// lease, member, replica, horizon, shares (JSON `{key: [min, min_ms, weight, max,
/// max_ms]}`), waiting (JSON array), scale, demand ttl.
const ACQUIRE_KEYED_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, replica, horizon = ARGV[4], ARGV[5], tonumber(ARGV[6])
local shares, mine = cjson.decode(ARGV[7]), cjson.decode(ARGV[8])
local scale, ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
redis.call('ZADD', KEYS[2], now + 1000, replica)
redis.call('PEXPIRE', KEYS[2], 2000)
-- This replica's demand replaces what it announced before.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local prefix = replica .. '|'
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if string.sub(m, 1, #prefix) == prefix then redis.call('ZREM', KEYS[4], m) end
end
local is_mine = {}
for _, k in ipairs(mine) do
  is_mine[k] = true
  redis.call('ZADD', KEYS[4], now + ttl, prefix .. k)
end
redis.call('PEXPIRE', KEYS[4], ttl * 4)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + period - now
  if wait < 1 then wait = 1 end
  return {wait, ''}
end
-- Every key with calls waiting somewhere, this replica's first (ties go to them).
local keys, seen = {}, {}
for _, k in ipairs(mine) do
  if not seen[k] then seen[k] = true; table.insert(keys, k) end
end
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local k = string.match(m, '^[^|]*|(.*)$')
  if k and not seen[k] then seen[k] = true; table.insert(keys, k) end
end
-- Each key's reservation grants and all grants within their periods.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - horizon)
local reserved, recent, oldest_recent = {}, {}, {}
local entries = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local phase, k = string.match(entries[i], '^(%a)|(.*)|[^|]*$')
  local at = tonumber(entries[i + 1])
  local s = k and shares[k]
  if s then
    if phase == 'r' and s[1] > 0 and at > now - s[2] then reserved[k] = (reserved[k] or 0) + 1 end
    if s[4] > 0 and at > now - s[5] then
      recent[k] = (recent[k] or 0) + 1
      if not oldest_recent[k] or at < oldest_recent[k] then oldest_recent[k] = at end
    end
  end
end
local vt, raw = {}, redis.call('HGETALL', KEYS[6])
for i = 1, #raw, 2 do vt[raw[i]] = tonumber(raw[i + 1]) end
local v = vt['V'] or 0
-- A key waiting nowhere loses the tag of its next call.
for f, _ in pairs(vt) do
  local k = string.match(f, '^p|(.*)$')
  if k and not seen[k] then redis.call('HDEL', KEYS[6], f) end
end
local below, below_used, best, best_tag, capped = nil, nil, nil, nil, nil
for _, k in ipairs(keys) do
  local s = shares[k] or {0, 0, 1, 0, 0}
  if s[4] > 0 and (recent[k] or 0) >= s[4] then
    local free = oldest_recent[k] + s[5] - now
    if not capped or free < capped then capped = free end
  else
    if s[1] > 0 and (reserved[k] or 0) < s[1] then
      local used = (reserved[k] or 0) * 1000000 / s[1]
      if not below_used or used < below_used then below, below_used = k, used end
    end
    local tag = vt['p|' .. k]
    if not tag then
      tag = math.max(v, vt['f|' .. k] or 0) + math.floor(scale / s[3])
      redis.call('HSET', KEYS[6], 'p|' .. k, tag)
    end
    if not best_tag or tag < best_tag then best, best_tag = k, tag end
  end
end
local chosen, phase = best, 'w'
if below then chosen, phase = below, 'r' end
if not chosen then
  if not capped or capped < 1 then capped = 1 end
  return {capped, ''}
end
if not is_mine[chosen] then return {20, ''} end
redis.call('ZADD', KEYS[1], now + lease, member)
redis.call('PEXPIRE', KEYS[1], period + lease)
redis.call('ZADD', KEYS[5], now, phase .. '|' .. chosen .. '|' .. member)
redis.call('PEXPIRE', KEYS[5], horizon + 1000)
if phase == 'w' then
  redis.call('HSET', KEYS[6], 'f|' .. chosen, best_tag, 'V', math.max(v, best_tag))
  redis.call('HDEL', KEYS[6], 'p|' .. chosen)
end
redis.call('PEXPIRE', KEYS[6], 86400000)
return {0, chosen}
";

/// How long a replica's announcement of its waiting callers lasts (ms): several of the
/// budget's polls, so a replica that still waits never lapses, and one that stopped
/// holds the others back for no longer than this.
const DEMAND_TTL_MS: u64 = 200;

/// A sliding-window log of events: prune, count, admit (returning what is left and when the
/// oldest leaves) or say how long to wait (ms).
const COUNT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], period)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, limit - n - 1, tonumber(oldest[2]) + period - now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + period - now
if wait < 1 then wait = 1 end
return {0, 0, wait}
";

/// A call completed: its entry now counts from the completion time.
const RELEASE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
return 1
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

impl Cluster {
    /// Prepares the (lazy) connection; nothing is contacted yet, so a Redis that is down at
    /// start-up does not stop the gateway.
    ///
    /// # Errors
    /// A URL the client cannot parse (the message never repeats the URL).
    pub fn new(url: &SecretString, expected_replicas: u32) -> Result<Arc<Self>, String> {
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
            replica,
            accounts: Mutex::new(Vec::new()),
            broken_until: Mutex::new(None),
            changed: Mutex::new(Transitions::default()),
            acquire: Script::new(ACQUIRE_LUA),
            acquire_keyed: Script::new(ACQUIRE_KEYED_LUA),
            release: Script::new(RELEASE_LUA),
            count: Script::new(COUNT_LUA),
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

    /// This replica's id (the value of the locks it holds).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A handle on the connection (cheap: it multiplexes).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key of `name` under the account labelled `label`.
    pub fn key(label: &str, name: &str) -> String {
        format!("{PREFIX}{label}:{name}")
    }

    /// The shared budget log of the account labelled `label` (the label of its cache
    /// namespace), and this replica's heartbeats for it.
    pub fn account_log(self: &Arc<Self>, label: &str) -> Arc<dyn SharedLog> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if !accounts.iter().any(|a| a == label) {
            accounts.push(label.to_owned());
        }
        Arc::new(AccountLog {
            cluster: Arc::clone(self),
            budget: Self::key(label, "budget"),
            urgent: [Self::key(label, "urgent:0"), Self::key(label, "urgent:1")],
            demand: Self::key(label, "shares:demand"),
            grants: Self::key(label, "shares:grants"),
            vt: Self::key(label, "shares:vt"),
        })
    }

    /// Runs one Redis operation with the timeout and the circuit breaker; `None` when Redis
    /// is unavailable (the caller then goes local).
    pub async fn run<T, F>(&self, op: F) -> Option<T>
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

    /// Takes a slot of the shared budget. `Some(Ok(member))`: granted (release it with
    /// [`Cluster::release_slot`] when the call completes); `Some(Err(wait))`: full;
    /// `None`: Redis unavailable.
    async fn acquire_slot(
        &self,
        log: &AccountLog,
        limit: u32,
        period: Duration,
        lease: Duration,
        priority: u8,
    ) -> Option<Result<String, Duration>> {
        let member = format!("{}:{:016x}", self.replica, fastrand::u64(..));
        let mut conn = self.conn.clone();
        let wait: i64 = self
            .run(
                self.acquire
                    .key(&log.budget)
                    .key(&log.urgent[0])
                    .key(&log.urgent[1])
                    .arg(limit)
                    .arg(period.as_millis() as u64)
                    .arg(lease.as_millis() as u64)
                    .arg(&member)
                    .arg(priority)
                    .arg(&self.replica)
                    .invoke_async(&mut conn),
            )
            .await?;
        Some(if wait == 0 {
            Ok(member)
        } else {
            Err(Duration::from_millis(wait.max(1) as u64))
        })
    }

    /// [`Cluster::acquire_slot`] for a caller, choosing whose call it is (see
    /// [`ACQUIRE_KEYED_LUA`]): `Some(Ok((member, key)))` when granted to `key`.
    async fn acquire_keyed_slot(
        &self,
        log: &AccountLog,
        limit: u32,
        period: Duration,
        lease: Duration,
        shares: &KeyShares,
        waiting: &[Arc<str>],
    ) -> Option<Result<(String, Arc<str>), Duration>> {
        let member = format!("{}:{:016x}", self.replica, fastrand::u64(..));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let table: serde_json::Map<String, serde_json::Value> = shares
            .iter()
            .map(|(k, s)| {
                let (min, min_ms) = s.min.map_or((0, 0), |r| (r.calls, ms(r.period)));
                let (max, max_ms) = s.max.map_or((0, 0), |r| (r.calls, ms(r.period)));
                (
                    k.to_string(),
                    serde_json::json!([min, min_ms, s.weight.max(1), max, max_ms]),
                )
            })
            .collect();
        let horizon = shares
            .iter()
            .flat_map(|(_, s)| [s.min, s.max])
            .flatten()
            .map(|r| ms(r.period))
            .max()
            .unwrap_or(0)
            .max(1);
        let waiting: Vec<&str> = waiting.iter().map(|k| &**k).collect();
        let mut conn = self.conn.clone();
        let (wait, key): (i64, String) = self
            .run(
                self.acquire_keyed
                    .key(&log.budget)
                    .key(&log.urgent[0])
                    .key(&log.urgent[1])
                    .key(&log.demand)
                    .key(&log.grants)
                    .key(&log.vt)
                    .arg(limit)
                    .arg(ms(period))
                    .arg(ms(lease))
                    .arg(&member)
                    .arg(&self.replica)
                    .arg(horizon)
                    .arg(serde_json::Value::Object(table).to_string())
                    .arg(serde_json::to_string(&waiting).unwrap_or_else(|_| "[]".into()))
                    .arg(crate::budget::SHARE_SCALE)
                    .arg(DEMAND_TTL_MS)
                    .invoke_async(&mut conn),
            )
            .await?;
        Some(if wait == 0 && !key.is_empty() {
            Ok((member, Arc::from(key)))
        } else {
            Err(Duration::from_millis(wait.max(1) as u64))
        })
    }

    /// Records a call's completion in the shared log.
    async fn release_slot(&self, k: &str, member: &str) {
        let mut conn = self.conn.clone();
        let _: Option<i64> = self
            .run(self.release.key(k).arg(member).invoke_async(&mut conn))
            .await;
    }

    /// Raises the shared purge epoch; the new epoch, or `None` when Redis is unavailable.
    pub async fn raise_purge_epoch(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        self.run(redis::cmd("INCR").arg(PURGE_EPOCH).query_async(&mut conn))
            .await
    }

    /// The shared purge epoch (0 before the first purge), or `None` when Redis is
    /// unavailable.
    pub async fn purge_epoch(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        let v: Option<Option<u64>> = self
            .run(redis::cmd("GET").arg(PURGE_EPOCH).query_async(&mut conn))
            .await;
        v.map(|e| e.unwrap_or(0))
    }

    /// Announces this replica for every account it serves and learns how many replicas
    /// serve them (the most of any account: for the local budget share used while Redis is
    /// down, a larger count is the safe side).
    pub async fn heartbeat(&self) {
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut most: Option<i64> = None;
        for label in accounts {
            let k = Self::key(&label, "replicas");
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
            most = most.max(n);
        }
        if let Some(n) = most {
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

/// One account's budget log in Redis: what the account's [`Budget`](crate::budget::Budget)
/// asks before every grant.
#[derive(Debug)]
struct AccountLog {
    cluster: Arc<Cluster>,
    /// `kore-gateway:<label>:budget`.
    budget: String,
    /// `kore-gateway:<label>:urgent:0` and `:1`: the replicas with callers (revalidations)
    /// waiting, each announced for a second.
    urgent: [String; 2],
    /// `…:shares:demand`, `…:shares:grants`, `…:shares:vt`: the shares' state (see
    /// [`ACQUIRE_KEYED_LUA`]).
    demand: String,
    grants: String,
    vt: String,
}

#[async_trait::async_trait]
impl SharedLog for AccountLog {
    async fn acquire(
        &self,
        limit: u32,
        period: Duration,
        lease: Duration,
        priority: crate::budget::Priority,
    ) -> Option<Result<String, Duration>> {
        self.cluster
            .acquire_slot(self, limit, period, lease, priority as u8)
            .await
    }

    async fn acquire_keyed(
        &self,
        limit: u32,
        period: Duration,
        lease: Duration,
        shares: &KeyShares,
        waiting: &[Arc<str>],
    ) -> Option<Result<(String, Arc<str>), Duration>> {
        self.cluster
            .acquire_keyed_slot(self, limit, period, lease, shares, waiting)
            .await
    }

    async fn release(&self, member: &str) {
        self.cluster.release_slot(&self.budget, member).await;
    }

    fn replicas(&self) -> u32 {
        self.cluster.replicas()
    }

    fn is_up(&self) -> bool {
        self.cluster.is_up()
    }

    fn transitions(&self) -> Transitions {
        self.cluster.transitions()
    }
}

/// The API keys' request limit shared by every replica (`GATEWAY_KEY_RATE_LIMIT`): one
/// sliding log per key name under `kore-gateway:keys:<name>`.
#[async_trait::async_trait]
impl SharedCounter for Cluster {
    async fn admit(
        &self,
        name: &str,
        limit: u32,
        period: Duration,
    ) -> Option<Result<(u32, Duration), Duration>> {
        let k = format!("{PREFIX}keys:{name}");
        let member = format!("{}:{:016x}", self.replica, fastrand::u64(..));
        let mut conn = self.conn.clone();
        let (admitted, left, ms): (i64, i64, i64) = self
            .run(
                self.count
                    .key(&k)
                    .arg(limit)
                    .arg(period.as_millis() as u64)
                    .arg(&member)
                    .invoke_async(&mut conn),
            )
            .await?;
        let ms = Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0));
        Some(if admitted == 1 {
            Ok((u32::try_from(left.max(0)).unwrap_or(0), ms))
        } else {
            Err(ms)
        })
    }

    fn replicas(&self) -> u32 {
        Cluster::replicas(self)
    }
}

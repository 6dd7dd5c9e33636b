//! Jobs in Redis (`REDIS_URL`): every replica answers for every job, identical requests on
//! any replicas share one, and a job whose replica died is taken over by another.
//!
//! Keys, under the account's namespace label like everything of that account
//! (`kore-gateway:<account id>:<upstream digest>:`, see [`crate::cluster`]):
//! * `job:<id>` — a hash: `rec` (the [`JobRecord`], JSON), `state`, `owner`. Kept while the
//!   job is active (at most [`ACTIVE_KEEP`]), then `JOB_TTL` after it ends.
//! * `job:<id>:lease` — the replica running it (its id), for [`LEASE`]; the runner renews it
//!   with every progress write (every second). A replica that dies stops renewing: when the
//!   lease has run out, the first replica to sweep claims the job and resumes it, its
//!   finished windows answered by the shared cache tier.
//! * `job-for:<digest of owner and identity>` — the id of the active job an identical
//!   request joins.
//! * `jobs` — a sorted set of the account's job ids by creation time (listing, sweeping).
//!
//! Every change that must not race is one Lua script. The scripts build the `job:<id>` keys
//! from the account's prefix, so they assume one Redis (not a Redis Cluster), as the rest of
//! the gateway does.

use std::{sync::Arc, time::Duration};

use redis::Script;

use super::{
    record::{JobRecord, RECORD_VERSION, valid_id},
    store::{Created, Saved, Store},
};
use crate::{cache::KeyEncoder, cluster::Cluster};

/// How long a job is its runner's without a renewal: a replica killed mid-job is replaced
/// this long after its last progress write (plus one sweep).
pub const LEASE: Duration = Duration::from_secs(10);
/// Longest an active job's record is kept without ending (a safety net: a job that no
/// replica can finish is forgotten).
pub const ACTIVE_KEEP: Duration = Duration::from_secs(7 * 86_400);

/// Joins the active job of the same owner and identity, or records a new one claimed by
/// this replica. Returns the existing record, or nil for a new one.
const CREATE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local st = redis.call('HGET', ARGV[1] .. cur, 'state')
  if st == 'queued' or st == 'running' then
    return redis.call('HGET', ARGV[1] .. cur, 'rec')
  end
end
redis.call('HSET', KEYS[2], 'rec', ARGV[3], 'state', ARGV[9], 'owner', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[8])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[8])
return false
";

/// Progress of a job this replica runs, renewing its lease: 1 saved, 0 the lease is
/// another's, -1 the job is gone (cancelled).
const SAVE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'state', ARGV[2])
return 1
";

/// An ended job (kept for JOB_TTL) or a suspended one (kept active): the record saved, this
/// replica's lease dropped, and for an ended job its identity freed.
const SETTLE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'state', ARGV[2])
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
return 1
";

/// Forgets a job (cancelled): 1 when it existed.
const REMOVE_LUA: &str = r"
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return existed
";

/// Every record of the account, pruning ids whose record is gone.
const LIST_LUA: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', ARGV[1] .. id, 'rec')
  if r then table.insert(out, r) else redis.call('ZREM', KEYS[1], id) end
end
return out
";

/// Claims every active job of the account whose lease ran out; returns their records.
const CLAIM_LUA: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  local st = redis.call('HGET', k, 'state')
  if not st then
    redis.call('ZREM', KEYS[1], id)
  elseif st == 'queued' or st == 'running' then
    if redis.call('SET', k .. ':lease', ARGV[2], 'NX', 'PX', ARGV[3]) then
      table.insert(out, redis.call('HGET', k, 'rec'))
    end
  end
end
return out
";

/// The jobs of the accounts this replica serves, in Redis.
#[derive(Debug)]
pub struct RedisStore {
    cluster: Arc<Cluster>,
    /// The namespace labels of the accounts (each has its own keys).
    labels: Vec<String>,
    create: Script,
    save: Script,
    settle: Script,
    remove: Script,
    list: Script,
    claim: Script,
}

fn state_name(rec: &JobRecord) -> &'static str {
    match rec.state {
        super::JobState::Queued => "queued",
        super::JobState::Running => "running",
        super::JobState::Done => "done",
        super::JobState::Failed => "failed",
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn decode(text: &str) -> Option<JobRecord> {
    serde_json::from_str::<JobRecord>(text)
        .ok()
        .filter(|r| r.v == RECORD_VERSION && valid_id(&r.id))
}

impl RedisStore {
    pub fn new(cluster: Arc<Cluster>, labels: Vec<String>) -> Self {
        RedisStore {
            cluster,
            labels,
            create: Script::new(CREATE_LUA),
            save: Script::new(SAVE_LUA),
            settle: Script::new(SETTLE_LUA),
            remove: Script::new(REMOVE_LUA),
            list: Script::new(LIST_LUA),
            claim: Script::new(CLAIM_LUA),
        }
    }

    /// `kore-gateway:<label>:job:` — the prefix of the account's job keys.
    fn prefix(label: &str) -> String {
        Cluster::key(label, "job:")
    }

    fn job_key(rec: &JobRecord) -> String {
        format!("{}{}", Self::prefix(&rec.account), rec.id)
    }

    /// `job-for:<digest>`: owner and identity, length-prefixed, so no identity can pass for
    /// another owner's.
    fn identity_key(rec: &JobRecord) -> String {
        let mut e = KeyEncoder::default();
        e.text("job-for");
        e.text(&rec.owner);
        e.text(&rec.identity);
        Cluster::key(
            &rec.account,
            &format!("job-for:{}", crate::cache::hex(&e.finish())),
        )
    }

    fn serving(&self, rec: &JobRecord) -> bool {
        self.labels.contains(&rec.account)
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn create(&self, rec: &JobRecord) -> Option<Created> {
        let text = serde_json::to_string(rec).ok()?;
        let prefix = Self::prefix(&rec.account);
        let mut conn = self.cluster.conn();
        let found: Option<Option<String>> = self
            .cluster
            .run(
                self.create
                    .key(Self::identity_key(rec))
                    .key(Self::job_key(rec))
                    .key(format!("{}:lease", Self::job_key(rec)))
                    .key(Cluster::key(&rec.account, "jobs"))
                    .arg(&prefix)
                    .arg(&rec.id)
                    .arg(&text)
                    .arg(&rec.owner)
                    .arg(rec.created_ms)
                    .arg(self.cluster.replica())
                    .arg(ms(LEASE))
                    .arg(ms(ACTIVE_KEEP))
                    .arg(state_name(rec))
                    .invoke_async(&mut conn),
            )
            .await;
        match found? {
            None => Some(Created::New),
            // Unreadable (another version): leave it alone and run this one unrecorded.
            Some(existing) => decode(&existing).map(|r| Created::Existing(Box::new(r))),
        }
    }

    async fn get(&self, id: &str) -> Option<JobRecord> {
        if !valid_id(id) {
            return None;
        }
        for label in &self.labels {
            let mut conn = self.cluster.conn();
            let text: Option<Option<String>> = self
                .cluster
                .run(
                    redis::cmd("HGET")
                        .arg(format!("{}{id}", Self::prefix(label)))
                        .arg("rec")
                        .query_async(&mut conn),
                )
                .await;
            if let Some(r) = text.flatten().as_deref().and_then(decode) {
                return Some(r);
            }
        }
        None
    }

    async fn list(&self) -> Vec<JobRecord> {
        let mut out = Vec::new();
        for label in &self.labels {
            let mut conn = self.cluster.conn();
            let texts: Option<Vec<String>> = self
                .cluster
                .run(
                    self.list
                        .key(Cluster::key(label, "jobs"))
                        .arg(Self::prefix(label))
                        .invoke_async(&mut conn),
                )
                .await;
            out.extend(texts.unwrap_or_default().iter().filter_map(|t| decode(t)));
        }
        out
    }

    async fn save(&self, rec: &JobRecord) -> Saved {
        let Ok(text) = serde_json::to_string(rec) else {
            return Saved::Kept;
        };
        let mut conn = self.cluster.conn();
        let said: Option<i64> = self
            .cluster
            .run(
                self.save
                    .key(Self::job_key(rec))
                    .key(format!("{}:lease", Self::job_key(rec)))
                    .arg(&text)
                    .arg(state_name(rec))
                    .arg(self.cluster.replica())
                    .arg(ms(LEASE))
                    .invoke_async(&mut conn),
            )
            .await;
        match said {
            Some(-1) => Saved::Cancelled,
            Some(0) => Saved::Lost,
            // Saved, or Redis unavailable: go on (nobody else can claim it meanwhile, and the
            // next save tells).
            _ => Saved::Kept,
        }
    }

    async fn finish(&self, rec: &JobRecord, ttl: Duration) {
        self.settle_job(rec, Some(ttl)).await;
    }

    async fn release(&self, rec: &JobRecord) {
        self.settle_job(rec, None).await;
    }

    async fn remove(&self, rec: &JobRecord) -> bool {
        if !self.serving(rec) {
            return false;
        }
        let mut conn = self.cluster.conn();
        let n: Option<i64> = self
            .cluster
            .run(
                self.remove
                    .key(Self::job_key(rec))
                    .key(format!("{}:lease", Self::job_key(rec)))
                    .key(Cluster::key(&rec.account, "jobs"))
                    .key(Self::identity_key(rec))
                    .arg(&rec.id)
                    .invoke_async(&mut conn),
            )
            .await;
        n.unwrap_or(0) > 0
    }

    async fn is_gone(&self, rec: &JobRecord) -> bool {
        let mut conn = self.cluster.conn();
        let n: Option<i64> = self
            .cluster
            .run(
                redis::cmd("EXISTS")
                    .arg(Self::job_key(rec))
                    .query_async(&mut conn),
            )
            .await;
        n == Some(0)
    }

    async fn orphans(&self) -> Vec<JobRecord> {
        let mut out = Vec::new();
        for label in &self.labels {
            let mut conn = self.cluster.conn();
            let texts: Option<Vec<String>> = self
                .cluster
                .run(
                    self.claim
                        .key(Cluster::key(label, "jobs"))
                        .arg(Self::prefix(label))
                        .arg(self.cluster.replica())
                        .arg(ms(LEASE))
                        .invoke_async(&mut conn),
                )
                .await;
            out.extend(texts.unwrap_or_default().iter().filter_map(|t| decode(t)));
        }
        out
    }
}

impl RedisStore {
    /// Saves `rec` and drops this replica's lease; with a `ttl` (an ended job) the record
    /// expires after it and the identity is freed.
    async fn settle_job(&self, rec: &JobRecord, ttl: Option<Duration>) {
        let Ok(text) = serde_json::to_string(rec) else {
            return;
        };
        let ttl = ttl.map(|t| ms(t).to_string()).unwrap_or_default();
        let mut conn = self.cluster.conn();
        let _: Option<i64> = self
            .cluster
            .run(
                self.settle
                    .key(Self::job_key(rec))
                    .key(format!("{}:lease", Self::job_key(rec)))
                    .key(Self::identity_key(rec))
                    .arg(&text)
                    .arg(state_name(rec))
                    .arg(ttl)
                    .arg(self.cluster.replica())
                    .arg(&rec.id)
                    .invoke_async(&mut conn),
            )
            .await;
    }
}

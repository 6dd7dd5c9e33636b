//! Long ranges as jobs: the work of a `Prefer: respond-async` request (RFC 7240), run in
//! its own task, with progress a caller can poll and an ETA read off the account's budget.
//!
//! A job runs the very [`RangeFetch`] the synchronous path runs, window by window, so every
//! window it finishes lands in the window cache (and its tiers): the job's `result` is the
//! original URL, answered from that cache at no upstream cost. One concern a file:
//! * here, [`Jobs`]: starting (identical requests of a key share one job), finding, listing
//!   and cancelling jobs, and keeping the records of the jobs this process runs up to date;
//! * `job`: one job this process runs (its windows, each with its own ledger of calls);
//! * `run`: the task (windows a few at a time; a drain leaves it resumable);
//! * `eta`: progress and ETA, window by window, from the account's known volume;
//! * `record`: what is kept of a job outside this process, and how any replica shows it;
//! * `store`: where records live — a folder in `CACHE_DIR` (jobs outlive a restart), or
//!   `redis` (every replica answers for every job, and a job whose replica died is taken
//!   over within its lease).
//!
//! Without a store, jobs live in this process only. Jobs belong to the key that made them
//! (another key gets 404, admin keys see all); their ids are 128 bits of OS randomness; they
//! are bounded per key and forgotten `JOB_TTL` after they end.

mod eta;
mod job;
pub mod record;
pub mod redis;
mod run;
pub mod store;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

pub use self::{
    eta::{eta_seconds, serve_time},
    job::Job,
};
use self::{
    job::{End, Slot, SlotState},
    record::{JobRecord, now_ms, valid_id},
    run::Stopped,
    store::{Created, Saved, Store},
};
use crate::{
    account::Account, budget::Budget, cache::WindowCache, drain::Drain, fetch::RangeFetch,
    plan::Window,
};

/// Windows one job fetches at once: enough to keep its share of the budget busy, few
/// enough that a cancelled job leaves most of a long range unfetched.
pub const WINDOWS_IN_FLIGHT: usize = 4;
/// Jobs one key may have queued or running at once (one more is a 429).
pub const MAX_ACTIVE_PER_KEY: usize = 8;
/// Jobs one key keeps (ended ones beyond this are forgotten oldest first, before JOB_TTL).
pub const MAX_KEPT_PER_KEY: usize = 100;
/// Longest a 202 waits for a job's probe (the first pages of the windows it starts) when
/// nothing is known of the account's volume yet: the first ETA is then an estimate, not a
/// floor.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);
/// How often the records of running jobs are saved (progress, ETA, and their claim).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a replica looks for jobs nobody runs (their runner stopped or died).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its first upstream answer.
    Queued,
    /// At least one call or window is done.
    Running,
    /// Every window is in the cache: `result` answers the range.
    Done,
    /// Stopped on an error: `error` says which.
    Failed,
}

/// Counts of a job's work; they never go down.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Progress {
    pub windows_done: u32,
    pub windows_total: u32,
    /// Upstream calls this job has completed.
    pub calls_done: u64,
    /// Upstream calls this job is expected to make in all (at least `calls_done`).
    pub calls_estimated: u64,
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub progress: Progress,
    /// Seconds until the job should be done, from the account budget's schedule and its
    /// known volume (0 when done; null when failed).
    pub eta_seconds: Option<u64>,
    /// When done: the URL (relative) that answers the range from the cache.
    pub result: Option<String>,
    /// When failed: the problem (RFC 9457) the request would have answered.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

/// Refusals of [`Jobs::start`].
#[derive(Debug, Clone, Copy)]
pub struct TooManyJobs {
    pub limit: usize,
}

/// A job to start (or to join, when an identical one is under way).
pub struct NewJob {
    /// The API key name asking.
    pub owner: Arc<str>,
    /// What identical requests share (account, refresh, URL).
    pub identity: String,
    /// The URL that answers the range once done.
    pub result: String,
    pub windows: Vec<Window>,
    /// The request's windows through the cache (it becomes the job's).
    pub range: RangeFetch,
    pub account: Arc<Account>,
}

/// The job a request started or joined, as its 202 shows it.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub view: JobView,
}

/// What [`Jobs`] needs beyond its settings: the accounts (to resume a job of any of them),
/// the window cache, and the shutdown signal.
pub struct JobsConfig {
    /// JOB_TTL.
    pub ttl: Duration,
    /// Where records live beyond this process, if anywhere.
    pub store: Option<Arc<dyn Store>>,
    pub accounts: Vec<Arc<Account>>,
    pub windows: Arc<WindowCache>,
    /// MAX_CALLS_PER_REQUEST (a resumed job's allowance).
    pub max_calls_per_request: u32,
    pub drain: Drain,
}

/// Every job this process knows: the ones it runs, and (through the store) everyone's.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    by_id: Mutex<HashMap<Arc<str>, Arc<Job>>>,
    store: Option<Arc<dyn Store>>,
    accounts: Vec<Arc<Account>>,
    windows: Arc<WindowCache>,
    max_calls_per_request: u32,
    drain: Drain,
    /// One start at a time in this process: the lookup of an identical job and the start of
    /// a new one are one step (the store makes them one across replicas).
    starting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("running", &lock(&self.by_id).len())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Chooses where job records live: Redis when the replicas share one (every replica sees
/// every job), else the `jobs` folder of `CACHE_DIR` (jobs outlive a restart), else nowhere.
pub fn store_for(
    cluster: Option<&Arc<crate::cluster::Cluster>>,
    cache_dir: Option<&std::path::Path>,
    labels: Vec<String>,
    ttl: Duration,
) -> Option<Arc<dyn Store>> {
    if let Some(c) = cluster {
        return Some(Arc::new(redis::RedisStore::new(Arc::clone(c), labels)));
    }
    let dir = cache_dir?.join("jobs");
    match store::FileStore::open(&dir, ttl) {
        Ok(s) => Some(Arc::new(store::Files(Arc::new(s)))),
        Err(e) => {
            tracing::warn!(error = %e, "jobs cannot be recorded in CACHE_DIR; they will not outlive a restart");
            None
        }
    }
}

impl Jobs {
    /// Jobs forgotten `ttl` after they end, recorded in `store` when there is one. With a
    /// store, call [`Jobs::spawn_background`] to keep records up to date and resume orphans.
    pub fn new(config: JobsConfig) -> Self {
        Jobs {
            inner: Arc::new(Inner {
                ttl: config.ttl,
                by_id: Mutex::new(HashMap::new()),
                store: config.store,
                accounts: config.accounts,
                windows: config.windows,
                max_calls_per_request: config.max_calls_per_request,
                drain: config.drain,
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The job of `new.owner` for `new.identity`: the one queued or running (here or on any
    /// replica), which identical requests share, or a new one fetching its windows. When
    /// nothing is known of the account's volume yet, waits up to [`PROBE_WAIT`] for the new
    /// job's first page, so that its first ETA is an estimate.
    ///
    /// # Errors
    /// [`TooManyJobs`] when the owner already has [`MAX_ACTIVE_PER_KEY`] jobs under way.
    pub async fn start(&self, new: NewJob) -> Result<Started, TooManyJobs> {
        let inner = &self.inner;
        let starting = inner.starting.lock().await;
        let local: Vec<Arc<Job>> = {
            let mut map = lock(&inner.by_id);
            inner.prune(&mut map);
            map.values().cloned().collect()
        };
        if let Some(same) = local
            .iter()
            .find(|j| j.owner == new.owner && j.identity == new.identity && j.is_active())
        {
            return Ok(Started {
                id: same.id.to_string(),
                view: self.view(same, same.budget()),
            });
        }
        let mut active = local
            .iter()
            .filter(|j| j.owner == new.owner && j.is_active())
            .count();
        if let Some(store) = &inner.store {
            let now = now_ms();
            for rec in store.list().await.iter().filter(|r| {
                r.is_active()
                    && *r.owner == *new.owner
                    && !local.iter().any(|j| *j.id == *r.id)
                    && !r.expired(inner.ttl, now)
            }) {
                if rec.identity == new.identity {
                    return Ok(Started {
                        id: rec.id.clone(),
                        view: rec.view(now),
                    });
                }
                active += 1;
            }
        }
        if active >= MAX_ACTIVE_PER_KEY {
            return Err(TooManyJobs {
                limit: MAX_ACTIVE_PER_KEY,
            });
        }
        let job = Arc::new(Job::fresh(new));
        // Windows held fresh in some tier cost nothing: the estimate leaves them out.
        for (slot, w) in job.slots.iter().zip(&job.windows) {
            if !job.range.refresh() && job.range.all_fresh(std::slice::from_ref(w)).await {
                slot.cached.store(true, Ordering::Relaxed);
            }
        }
        if let Some(store) = &inner.store
            && let Some(Created::Existing(rec)) = store.create(&job.record(None)).await
        {
            return Ok(Started {
                id: rec.id.clone(),
                view: rec.view(now_ms()),
            });
        }
        self.launch(Arc::clone(&job));
        drop(starting);
        metrics::counter!("gateway_jobs_started_total").increment(1);
        let unknown = job
            .range
            .fetcher()
            .volume()
            .per_second(job.range.filters())
            .is_none();
        if unknown && job.slots.iter().any(|s| !s.cached.load(Ordering::Relaxed)) {
            let _ = tokio::time::timeout(PROBE_WAIT, job.probed()).await;
        }
        Ok(Started {
            id: job.id.to_string(),
            view: self.view(&job, job.budget()),
        })
    }

    /// Runs `job` in its own task, and keeps it.
    fn launch(&self, job: Arc<Job>) {
        let inner = Arc::clone(&self.inner);
        let j = Arc::clone(&job);
        // Registered before the task can end, so a job that ends at once is still found.
        let mut map = lock(&self.inner.by_id);
        map.insert(Arc::clone(&job.id), Arc::clone(&job));
        let task = tokio::spawn(async move {
            let stopped = run::run(Arc::clone(&j)).await;
            inner.settle(&j, stopped).await;
        });
        *lock(&job.abort) = Some(task.abort_handle());
    }

    /// The job `id` as `caller` may see it (its owner, or an admin key): live when this
    /// process runs it, else as its runner last recorded it.
    pub async fn get(&self, id: &str, caller: &str, admin: bool) -> Option<JobView> {
        if !valid_id(id) {
            return None;
        }
        let local = {
            let mut map = lock(&self.inner.by_id);
            self.inner.prune(&mut map);
            map.get(id).cloned()
        };
        if let Some(job) = local {
            if !(admin || &*job.owner == caller) {
                return None;
            }
            // Cancelled on another replica: gone here too, at once (its runner would notice
            // at its next save).
            if job.is_active()
                && let Some(store) = &self.inner.store
                && store.is_gone(&job.record(None)).await
            {
                let _writing = job.writing.lock().await;
                lock(&self.inner.by_id).remove(id);
                self.inner.stop(&job, "cancelled");
                return None;
            }
            return Some(self.view(&job, job.budget()));
        }
        let rec = self.inner.store.as_ref()?.get(id).await?;
        (admin || rec.owner == caller).then(|| rec.view(now_ms()))
    }

    /// Every job `caller` may see, on every replica sharing the store, oldest first.
    pub async fn list_views(&self, caller: &str, admin: bool) -> Vec<JobView> {
        let local = self.list(caller, admin);
        let mut out: Vec<(i64, JobView)> = local
            .iter()
            .map(|j| (j.created_ms, self.view(j, j.budget())))
            .collect();
        if let Some(store) = &self.inner.store {
            let now = now_ms();
            let running_here: Vec<Arc<str>> = lock(&self.inner.by_id).keys().cloned().collect();
            out.extend(
                store
                    .list()
                    .await
                    .into_iter()
                    .filter(|r| {
                        (admin || r.owner == caller)
                            && !r.expired(self.inner.ttl, now)
                            && !running_here.iter().any(|id| **id == *r.id)
                    })
                    .map(|r| (r.created_ms, r.view(now))),
            );
        }
        out.sort_by_key(|(created, _)| *created);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The jobs of this process `caller` may see, oldest first.
    pub fn list(&self, caller: &str, admin: bool) -> Vec<Arc<Job>> {
        let mut map = lock(&self.inner.by_id);
        self.inner.prune(&mut map);
        let mut jobs: Vec<Arc<Job>> = map
            .values()
            .filter(|j| admin || &*j.owner == caller)
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.created_ms);
        jobs
    }

    /// Cancels and forgets the job `id` if `caller` may see it, wherever it runs (its runner
    /// stops at its next save). Windows already under way finish in their own tasks and stay
    /// cached; windows not started are not fetched.
    pub async fn cancel(&self, id: &str, caller: &str, admin: bool) -> bool {
        if !valid_id(id) {
            return false;
        }
        let local = lock(&self.inner.by_id).get(id).cloned();
        if let Some(job) = local {
            if !(admin || &*job.owner == caller) {
                return false;
            }
            let _writing = job.writing.lock().await;
            lock(&self.inner.by_id).remove(id);
            self.inner.stop(&job, "cancelled");
            if let Some(store) = &self.inner.store {
                store.remove(&job.record(None)).await;
            }
            return true;
        }
        let Some(store) = &self.inner.store else {
            return false;
        };
        match store.get(id).await {
            Some(rec) if admin || rec.owner == caller => {
                if rec.is_active() {
                    metrics::counter!("gateway_jobs_finished_total", "state" => "cancelled")
                        .increment(1);
                }
                store.remove(&rec).await
            }
            _ => false,
        }
    }

    /// Jobs this process runs that are queued or running.
    pub fn active(&self) -> usize {
        lock(&self.inner.by_id)
            .values()
            .filter(|j| j.is_active())
            .count()
    }

    /// What `job` looks like now, with its ETA read off `budget`.
    pub fn view(&self, job: &Job, budget: &Budget) -> JobView {
        let progress = job.progress();
        let (eta_seconds, result, error) = match job.ended() {
            Some((_, _, End::Done)) => (Some(0), Some(job.result.clone()), None),
            Some((_, _, End::Failed(p))) => (None, None, Some(p)),
            None => (Some(self.inner.eta(job, budget)), None, None),
        };
        JobView {
            id: job.id.to_string(),
            state: job.state(),
            progress,
            eta_seconds,
            result,
            error,
        }
    }

    /// Starts what keeps records true when there is a store: the runner's saves (progress,
    /// ETA, its claim; a cancel from another replica is noticed there) and the sweep that
    /// resumes jobs nobody runs — at once (jobs left by the previous run of this process)
    /// and then every few seconds (a replica that died). Needs a Tokio runtime.
    pub fn spawn_background(&self) {
        if self.inner.store.is_none() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut next_sweep = Instant::now();
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.drain.is_draining() {
                    return;
                }
                inner.save_all().await;
                if Instant::now() >= next_sweep {
                    inner.sweep().await;
                    next_sweep = Instant::now() + SWEEP_EVERY;
                }
                drop(inner);
                tokio::time::sleep(SAVE_EVERY).await;
            }
        });
    }

    /// Resolves once no job of this process is running (at shutdown, after the drain
    /// started: each stops at its next window and is recorded resumable).
    pub async fn settled(&self) {
        while self.active() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every job still running here and records it resumable (the end of a
    /// shutdown's grace).
    pub async fn release_all(&self) {
        let running: Vec<Arc<Job>> = lock(&self.inner.by_id)
            .values()
            .filter(|j| j.is_active())
            .cloned()
            .collect();
        for job in running {
            lock(&self.inner.by_id).remove(&job.id);
            if let Some(h) = lock(&job.abort).take() {
                h.abort();
            }
            if let Some(store) = &self.inner.store {
                store.release(&job.record(None)).await;
            }
        }
    }
}

impl Inner {
    /// Records how the task stopped: an ended job is kept (and recorded) until JOB_TTL; a
    /// suspended one is recorded resumable and left to whichever process resumes it.
    async fn settle(&self, job: &Arc<Job>, stopped: Stopped) {
        let _writing = job.writing.lock().await;
        match stopped {
            Stopped::Ended(end) => {
                let label = match end {
                    End::Done => "done",
                    End::Failed(_) => "failed",
                };
                *lock(&job.end) = Some((Instant::now(), now_ms(), end));
                job.changed.notify_waiters();
                metrics::counter!("gateway_jobs_finished_total", "state" => label).increment(1);
                if let Some(store) = &self.store {
                    store.finish(&job.record(Some(0)), self.ttl).await;
                }
            }
            Stopped::Suspended => {
                metrics::counter!("gateway_jobs_finished_total", "state" => "suspended")
                    .increment(1);
                let eta = self.eta(job, job.budget());
                if let Some(store) = &self.store {
                    store.release(&job.record(Some(eta))).await;
                }
                // Only now: a shutdown waits for this record to be written.
                lock(&self.by_id).remove(&job.id);
            }
        }
    }

    /// Stops a job's task (cancelled, or taken over elsewhere): its windows not yet paid
    /// for stop waiting; the ones under way finish in their own tasks and stay cached.
    fn stop(&self, job: &Job, why: &'static str) {
        job.stop.fire();
        if let Some(h) = lock(&job.abort).take() {
            h.abort();
        }
        if job.is_active() {
            metrics::counter!("gateway_jobs_finished_total", "state" => why).increment(1);
        }
    }

    fn eta(&self, job: &Job, budget: &Budget) -> u64 {
        let others: Vec<Arc<Job>> = lock(&self.by_id).values().cloned().collect();
        eta::eta(job, &others, budget)
    }

    /// Saves the record of every job running here; stops those cancelled elsewhere or
    /// claimed by another process.
    async fn save_all(&self) {
        let Some(store) = &self.store else { return };
        let running: Vec<Arc<Job>> = lock(&self.by_id)
            .values()
            .filter(|j| j.is_active())
            .cloned()
            .collect();
        for job in running {
            let _writing = job.writing.lock().await;
            if !job.is_active() || !lock(&self.by_id).contains_key(&job.id) {
                continue;
            }
            let eta = self.eta(&job, job.budget());
            match store.save(&job.record(Some(eta))).await {
                Saved::Kept => {}
                saved => {
                    lock(&self.by_id).remove(&job.id);
                    self.stop(
                        &job,
                        if saved == Saved::Cancelled {
                            "cancelled"
                        } else {
                            "taken_over"
                        },
                    );
                }
            }
        }
    }

    /// Resumes the jobs nobody runs (claimed for this process by the store).
    async fn sweep(self: &Arc<Self>) {
        let Some(store) = &self.store else { return };
        for rec in store.orphans().await {
            if lock(&self.by_id).contains_key(rec.id.as_str()) {
                continue;
            }
            match self.resume(&rec) {
                Ok(()) => {
                    tracing::info!(job = %rec.id, windows_done = rec.done.iter().filter(|d| **d).count(), "job resumed");
                    metrics::counter!("gateway_jobs_resumed_total").increment(1);
                }
                Err(why) => {
                    tracing::warn!(job = %rec.id, reason = %why, "a job cannot be resumed; it is failed");
                    let mut failed = rec.clone();
                    failed.state = JobState::Failed;
                    failed.ended_ms = Some(now_ms());
                    failed.error = Some(serde_json::json!({
                        "type": "/problems/internal",
                        "title": "Internal error",
                        "status": 500,
                        "detail": "the job could not be resumed after a restart; ask again",
                    }));
                    store.finish(&failed, self.ttl).await;
                }
            }
        }
    }

    /// A job from its record, running here again: windows done are not run again (they are
    /// cached: its result reads them), its counts go on from where they were.
    fn resume(self: &Arc<Self>, rec: &JobRecord) -> Result<(), String> {
        let account = self
            .accounts
            .iter()
            .find(|a| a.ns.label() == rec.account)
            .ok_or("its account is not served here")?;
        let windows = rec.windows().ok_or("its windows cannot be read")?;
        if windows.is_empty() || rec.done.len() != windows.len() {
            return Err("its record is inconsistent".into());
        }
        let range = RangeFetch::new(
            Arc::clone(&account.fetcher),
            Arc::clone(&self.windows),
            account.ns.clone(),
            rec.filters.to_filters(),
            Arc::from(rec.owner.as_str()),
            crate::telemetry::new_request_id().into(),
            account.allowance(self.max_calls_per_request),
            rec.refresh,
        );
        let job = Arc::new(Job::from_parts(
            Arc::from(rec.id.as_str()),
            NewJob {
                owner: Arc::from(rec.owner.as_str()),
                identity: rec.identity.clone(),
                result: rec.result.clone(),
                windows,
                range,
                account: Arc::clone(account),
            },
            rec.calls_done,
            rec.calls_estimated,
            rec.created_ms,
        ));
        for (slot, done) in job.slots.iter().zip(&rec.done) {
            if *done {
                slot.state.store(SlotState::Done as u8, Ordering::Relaxed);
            }
        }
        Jobs {
            inner: Arc::clone(self),
        }
        .launch(job);
        Ok(())
    }

    /// Forgets jobs that ended more than the TTL ago, and a key's oldest ended jobs beyond
    /// [`MAX_KEPT_PER_KEY`].
    fn prune(&self, map: &mut HashMap<Arc<str>, Arc<Job>>) {
        let now = Instant::now();
        map.retain(|_, j| {
            j.ended()
                .is_none_or(|(at, _, _)| now.saturating_duration_since(at) < self.ttl)
        });
        let mut per_key: HashMap<Arc<str>, Vec<(Instant, Arc<str>)>> = HashMap::new();
        for j in map.values() {
            if let Some((at, _, _)) = j.ended() {
                per_key
                    .entry(Arc::clone(&j.owner))
                    .or_default()
                    .push((at, Arc::clone(&j.id)));
            }
        }
        for (_, mut ended) in per_key {
            if ended.len() > MAX_KEPT_PER_KEY {
                ended.sort();
                for (_, id) in &ended[..ended.len() - MAX_KEPT_PER_KEY] {
                    map.remove(id);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

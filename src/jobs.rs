//! Long ranges as jobs: the work of a `Prefer: respond-async` request (RFC 7240), run in
//! its own task, with progress a caller can poll and an ETA read off the shared budget.
//!
//! A job runs the very [`RangeFetch`] the synchronous path runs, window by window, so every
//! window it finishes lands in the window cache: the job's `result` is the original URL,
//! answered from that cache at no upstream cost. It starts a few windows at a time
//! ([`WINDOWS_IN_FLIGHT`]) so that cancelling it (aborting the task) leaves the windows it
//! never started unfetched, while the windows under way finish in their own cache tasks
//! and stay cached.
//!
//! Progress counts only ever grow: windows done, calls completed (from the request's
//! [`Allowance`] ledger), and calls estimated — one per window to begin with, then what
//! each first page announced (more pages, or the parts of a cut), extrapolated over the
//! windows not yet started. The ETA plays the budget's sliding log forward
//! ([`Budget::time_to_serve_as`]) for the calls left to this job while the other callers'
//! calls are served by the budget's shares (round robin without GATEWAY_KEY_SHARES).
//!
//! Jobs belong to the key that made them; they are bounded per key and forgotten
//! `JOB_TTL` after they end.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::{task::AbortHandle, time::Instant};
use utoipa::ToSchema;

use crate::{
    budget::Budget,
    fetch::{Allowance, RangeFetch},
    plan::Window,
    upstream::UpstreamError,
};

/// Windows one job fetches at once: enough to keep its share of the budget busy, few
/// enough that a cancelled job leaves most of a long range unfetched.
pub const WINDOWS_IN_FLIGHT: usize = 4;
/// Jobs one key may have queued or running at once (one more is a 429).
pub const MAX_ACTIVE_PER_KEY: usize = 8;
/// Jobs one key keeps (ended ones beyond this are forgotten oldest first, before JOB_TTL).
pub const MAX_KEPT_PER_KEY: usize = 100;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// How a job ended.
#[derive(Debug, Clone)]
enum End {
    Done,
    Failed(serde_json::Value),
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub id: Arc<str>,
    /// The API key name that made it.
    pub owner: Arc<str>,
    /// The URL that answers the range once the job is done.
    pub result: String,
    /// What identical requests share: the account, and the owner's request URL.
    identity: String,
    /// The account it reads, whose budget its calls wait for (and its ETA reads).
    fetcher: Arc<crate::fetch::Fetcher>,
    created: Instant,
    windows_total: u32,
    windows_started: AtomicU32,
    windows_done: AtomicU32,
    /// Windows that cost this job no call (cache hits, or fetched by another request).
    windows_free: AtomicU32,
    ledger: Arc<Allowance>,
    /// The largest estimate reported so far (estimates never go down).
    estimate: AtomicU64,
    end: Mutex<Option<(Instant, End)>>,
    abort: Mutex<Option<AbortHandle>>,
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
    /// Seconds until the job should be done, from the shared budget's schedule (0 when
    /// done; null when failed).
    pub eta_seconds: Option<u64>,
    /// When done: the URL (relative) that answers the range from the cache.
    pub result: Option<String>,
    /// When failed: the problem (RFC 9457) the request would have answered.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

impl Job {
    /// The budget of the account it reads.
    pub fn budget(&self) -> &Budget {
        self.fetcher.budget()
    }

    fn ended(&self) -> Option<(Instant, End)> {
        lock(&self.end).clone()
    }

    fn is_active(&self) -> bool {
        lock(&self.end).is_none()
    }

    fn state(&self) -> JobState {
        match self.ended() {
            Some((_, End::Done)) => JobState::Done,
            Some((_, End::Failed(_))) => JobState::Failed,
            None if self.ledger.completed() > 0
                || self.windows_done.load(Ordering::Relaxed) > 0 =>
            {
                JobState::Running
            }
            None => JobState::Queued,
        }
    }

    /// Current progress; the estimate is raised, never lowered.
    pub fn progress(&self) -> Progress {
        let total = u64::from(self.windows_total);
        let started = u64::from(self.windows_started.load(Ordering::Relaxed));
        let free = u64::from(self.windows_free.load(Ordering::Relaxed));
        let done = u64::from(self.ledger.completed());
        // Windows under way or finished that cost calls: one first page each, plus what
        // their first pages announced; the windows not started yet are assumed alike.
        let paying = started.saturating_sub(free);
        let known = paying + self.ledger.announced();
        let unstarted = total.saturating_sub(started);
        let per_window = if paying > 0 {
            known.div_ceil(paying).max(1)
        } else {
            1
        };
        let fresh = (known + unstarted * per_window).max(done);
        let estimate = self.estimate.fetch_max(fresh, Ordering::Relaxed).max(fresh);
        Progress {
            windows_done: self.windows_done.load(Ordering::Relaxed),
            windows_total: self.windows_total,
            calls_done: done,
            calls_estimated: estimate,
        }
    }
}

/// Refusals of [`Jobs::start`].
#[derive(Debug, Clone, Copy)]
pub struct TooManyJobs {
    pub limit: usize,
}

/// Every job of this process.
#[derive(Debug)]
pub struct Jobs {
    ttl: Duration,
    by_id: Mutex<HashMap<Arc<str>, Arc<Job>>>,
}

impl Jobs {
    /// Jobs forgotten `ttl` after they end.
    pub fn new(ttl: Duration) -> Self {
        Jobs {
            ttl,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// The job of `owner` for `identity`: the one queued or running, which identical
    /// requests share, or a new one fetching `windows` through `range`, whose `result` is
    /// `result`. One lock covers the lookup and the start, so two identical requests at
    /// once still make one job.
    ///
    /// # Errors
    /// [`TooManyJobs`] when the owner already has [`MAX_ACTIVE_PER_KEY`] jobs under way.
    pub fn start(
        &self,
        owner: Arc<str>,
        identity: String,
        result: String,
        windows: Vec<Window>,
        range: RangeFetch,
    ) -> Result<Arc<Job>, TooManyJobs> {
        let mut map = lock(&self.by_id);
        self.prune(&mut map);
        if let Some(same) = map
            .values()
            .find(|j| j.owner == owner && j.identity == identity && j.is_active())
        {
            return Ok(Arc::clone(same));
        }
        let active = map
            .values()
            .filter(|j| j.owner == owner && j.is_active())
            .count();
        if active >= MAX_ACTIVE_PER_KEY {
            return Err(TooManyJobs {
                limit: MAX_ACTIVE_PER_KEY,
            });
        }
        let job = Arc::new(Job {
            id: new_job_id().into(),
            owner,
            result,
            identity,
            fetcher: Arc::clone(range.fetcher()),
            created: Instant::now(),
            windows_total: u32::try_from(windows.len()).unwrap_or(u32::MAX),
            windows_started: AtomicU32::new(0),
            windows_done: AtomicU32::new(0),
            windows_free: AtomicU32::new(0),
            ledger: Arc::clone(range.allowance()),
            estimate: AtomicU64::new(windows.len() as u64),
            end: Mutex::new(None),
            abort: Mutex::new(None),
        });
        let task = tokio::spawn(run(Arc::clone(&job), range, windows));
        *lock(&job.abort) = Some(task.abort_handle());
        map.insert(Arc::clone(&job.id), Arc::clone(&job));
        metrics::counter!("gateway_jobs_started_total").increment(1);
        Ok(job)
    }

    /// The job `id` if `caller` may see it (its owner, or an admin key).
    pub fn get(&self, id: &str, caller: &str, admin: bool) -> Option<Arc<Job>> {
        let mut map = lock(&self.by_id);
        self.prune(&mut map);
        map.get(id)
            .filter(|j| admin || &*j.owner == caller)
            .cloned()
    }

    /// Every job `caller` may see, oldest first.
    pub fn list(&self, caller: &str, admin: bool) -> Vec<Arc<Job>> {
        let mut map = lock(&self.by_id);
        self.prune(&mut map);
        let mut jobs: Vec<Arc<Job>> = map
            .values()
            .filter(|j| admin || &*j.owner == caller)
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.created);
        jobs
    }

    /// Cancels and forgets the job `id` if `caller` may see it. Windows already under way
    /// finish in their own tasks and stay cached; windows not started are not fetched.
    pub fn cancel(&self, id: &str, caller: &str, admin: bool) -> bool {
        let mut map = lock(&self.by_id);
        let Some(job) = map
            .get(id)
            .filter(|j| admin || &*j.owner == caller)
            .cloned()
        else {
            return false;
        };
        map.remove(id);
        if let Some(h) = lock(&job.abort).take() {
            h.abort();
        }
        if job.is_active() {
            metrics::counter!("gateway_jobs_finished_total", "state" => "cancelled").increment(1);
        }
        true
    }

    /// Jobs queued or running.
    pub fn active(&self) -> usize {
        lock(&self.by_id).values().filter(|j| j.is_active()).count()
    }

    /// What `job` looks like now, with its ETA read off `budget`.
    pub fn view(&self, job: &Job, budget: &Budget) -> JobView {
        let progress = job.progress();
        let state = job.state();
        let (eta_seconds, result, error) = match job.ended() {
            Some((_, End::Done)) => (Some(0), Some(job.result.clone()), None),
            Some((_, End::Failed(p))) => (None, None, Some(p)),
            None => (Some(self.eta(job, &progress, budget)), None, None),
        };
        JobView {
            id: job.id.to_string(),
            state,
            progress,
            eta_seconds,
            result,
            error,
        }
    }

    /// Seconds until `job` should be done: its calls left, plus — because the budget
    /// serves waiting callers round robin — up to as many calls of each other caller, and
    /// all calls left of the same key's older jobs, played through the budget's schedule.
    fn eta(&self, job: &Job, progress: &Progress, budget: &Budget) -> u64 {
        let left = |p: &Progress| p.calls_estimated.saturating_sub(p.calls_done);
        let mine = left(progress);
        let mut ahead_same_key = 0u64;
        let mut others: HashMap<Arc<str>, u64> = HashMap::new();
        let jobs: Vec<Arc<Job>> = lock(&self.by_id).values().cloned().collect();
        for j in jobs.iter().filter(|j| j.id != job.id && j.is_active()) {
            let l = left(&j.progress());
            if j.owner == job.owner {
                if j.created <= job.created {
                    ahead_same_key += l;
                }
            } else {
                *others.entry(Arc::clone(&j.owner)).or_default() += l;
            }
        }
        for (caller, waiting) in budget.waiting_by_caller() {
            if caller != job.owner {
                let d = others.entry(caller).or_default();
                *d = (*d).max(waiting as u64);
            }
        }
        let own = mine + ahead_same_key;
        // The budget plays its schedule forward with its shares (GATEWAY_KEY_SHARES):
        // round robin without them, reservations and weights with them.
        let others: Vec<(Arc<str>, u64)> = others.into_iter().collect();
        eta_seconds(budget.time_to_serve_as(&job.owner, own, &others))
    }

    /// Forgets jobs that ended more than the TTL ago, and a key's oldest ended jobs beyond
    /// [`MAX_KEPT_PER_KEY`].
    fn prune(&self, map: &mut HashMap<Arc<str>, Arc<Job>>) {
        let now = Instant::now();
        map.retain(|_, j| {
            j.ended()
                .is_none_or(|(at, _)| now.saturating_duration_since(at) < self.ttl)
        });
        let mut per_key: HashMap<Arc<str>, Vec<(Instant, Arc<str>)>> = HashMap::new();
        for j in map.values() {
            if let Some((at, _)) = j.ended() {
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

/// Whole seconds, rounded up.
pub fn eta_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The job's task: its windows, a few at a time, through the cache.
async fn run(job: Arc<Job>, range: RangeFetch, windows: Vec<Window>) {
    let outcome = {
        let job = &job;
        let range = &range;
        let mut each = stream::iter(windows)
            .map(|w| async move {
                job.windows_started.fetch_add(1, Ordering::Relaxed);
                let o = range.window(w).await?;
                if o.calls == 0 {
                    job.windows_free.fetch_add(1, Ordering::Relaxed);
                }
                job.windows_done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, UpstreamError>(())
            })
            .buffer_unordered(WINDOWS_IN_FLIGHT);
        let mut outcome = Ok(());
        while let Some(r) = each.next().await {
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
        }
        outcome
    };
    let end = match outcome {
        Ok(()) => End::Done,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "job failed");
            End::Failed(problem_of(e).await)
        }
    };
    let label = match end {
        End::Done => "done",
        End::Failed(_) => "failed",
    };
    metrics::counter!("gateway_jobs_finished_total", "state" => label).increment(1);
    *lock(&job.end) = Some((Instant::now(), end));
}

/// The problem object the synchronous request would have answered with, so a job's error
/// reads exactly like the error of the same request made without `Prefer`.
async fn problem_of(e: UpstreamError) -> serde_json::Value {
    use axum::response::IntoResponse;
    let resp = crate::error::AppError::from(e).into_response();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// 128 bits of OS randomness as hex: not guessable from any other id, and not a secret
/// either (jobs are owner-checked).
fn new_job_id() -> String {
    crate::cache::hex(&crate::telemetry::random_bytes::<16>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

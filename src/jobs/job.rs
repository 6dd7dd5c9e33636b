//! One job this process runs: its windows (each with its own ledger of calls), its end,
//! what is kept of it outside the process, and the probe a first ETA waits for.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
};

use tokio::{sync::Notify, task::AbortHandle, time::Instant};

use super::{
    JobState, NewJob, lock,
    record::{JobRecord, RECORD_VERSION, StoredFilters, now_ms, stored_window},
};
use crate::{
    account::Account,
    budget::Budget,
    drain::Stop,
    fetch::{Allowance, RangeFetch},
    plan::Window,
};

/// How a job ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    Done,
    Failed(serde_json::Value),
}

/// Where one window of a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum SlotState {
    Waiting = 0,
    Started = 1,
    Done = 2,
}

/// One window of a job: its state, and its own ledger of calls.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: AtomicU8,
    /// Held fresh in a tier when the job began, or done without a call: it costs nothing.
    pub(super) cached: AtomicBool,
    pub(super) ledger: Arc<Allowance>,
}

impl Slot {
    pub(super) fn state(&self) -> SlotState {
        match self.state.load(Ordering::Relaxed) {
            0 => SlotState::Waiting,
            1 => SlotState::Started,
            _ => SlotState::Done,
        }
    }
}

/// A job this process runs (or ran, until it is forgotten).
pub struct Job {
    pub id: Arc<str>,
    /// The API key name that made it.
    pub owner: Arc<str>,
    /// The URL that answers the range once the job is done.
    pub result: String,
    /// What identical requests share: the account, and the owner's request URL.
    pub(super) identity: String,
    /// The account it reads, whose budget its calls wait for (and its ETA reads).
    pub(super) account: Arc<Account>,
    /// Its windows through the cache, as a job (no deadline), on the request's allowance.
    pub(super) range: RangeFetch,
    pub(super) windows: Vec<Window>,
    pub(super) slots: Vec<Slot>,
    /// The request's allowance: every window's calls are counted in it.
    pub(super) ledger: Arc<Allowance>,
    /// Calls made by earlier runs of a resumed job.
    pub(super) base_calls: u64,
    pub(super) created_ms: i64,
    /// The largest estimate reported so far (estimates never go down).
    pub(super) estimate: AtomicU64,
    /// When and how it ended (monotonic, wall-clock ms, how).
    pub(super) end: Mutex<Option<(Instant, i64, End)>>,
    pub(super) abort: Mutex<Option<AbortHandle>>,
    /// A window finished or the job ended (the 202's probe wait).
    pub(super) changed: Notify,
    /// Fired when it is cancelled or taken over: its windows not yet paid for stop waiting.
    pub(super) stop: Stop,
    /// Held while its record is written, so a late progress save never overwrites the
    /// record of its end, or brings back a cancelled job.
    pub(super) writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("account", &self.account.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// The budget of the account it reads.
    pub fn budget(&self) -> &Budget {
        self.account.fetcher.budget()
    }

    pub(super) fn ended(&self) -> Option<(Instant, i64, End)> {
        lock(&self.end).clone()
    }

    pub(super) fn is_active(&self) -> bool {
        lock(&self.end).is_none()
    }

    pub(super) fn windows_done(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.state() == SlotState::Done)
            .count() as u32
    }

    pub(super) fn state(&self) -> JobState {
        match self.ended() {
            Some((_, _, End::Done)) => JobState::Done,
            Some((_, _, End::Failed(_))) => JobState::Failed,
            None if self.calls_done() > 0 || self.windows_done() > 0 => JobState::Running,
            None => JobState::Queued,
        }
    }

    /// What is kept of it outside this process, with `eta_seconds` as just computed.
    pub(super) fn record(&self, eta_seconds: Option<u64>) -> JobRecord {
        let progress = self.progress();
        let ended = self.ended();
        JobRecord {
            v: RECORD_VERSION,
            id: self.id.to_string(),
            owner: self.owner.to_string(),
            account: self.account.ns.label().to_owned(),
            identity: self.identity.clone(),
            result: self.result.clone(),
            refresh: self.range.refresh(),
            filters: StoredFilters::from(self.range.filters()),
            windows: self.windows.iter().map(stored_window).collect(),
            done: self
                .slots
                .iter()
                .map(|s| s.state() == SlotState::Done)
                .collect(),
            created_ms: self.created_ms,
            state: self.state(),
            calls_done: progress.calls_done,
            calls_estimated: progress.calls_estimated,
            eta_seconds,
            updated_ms: now_ms(),
            ended_ms: ended.as_ref().map(|(_, ms, _)| *ms),
            error: match ended {
                Some((_, _, End::Failed(p))) => Some(p),
                _ => None,
            },
        }
    }

    /// Waits until every window it has started has its first page in or is done (or it
    /// ended): the probe of a first ETA, when nothing was known of the account's volume.
    /// Several windows, not one: a single window may hold a campaign day and be many times
    /// the others.
    pub(super) async fn probed(&self) {
        let mut observed = self.range.fetcher().volume().watch();
        loop {
            let changed = self.changed.notified();
            let opened = {
                let mut started = self
                    .slots
                    .iter()
                    .filter(|s| s.state() == SlotState::Started)
                    .peekable();
                started.peek().is_some() && started.all(|s| s.ledger.completed() > 0)
            };
            if opened || !self.is_active() || self.windows_done() as usize == self.slots.len() {
                return;
            }
            tokio::select! {
                () = changed => {}
                r = observed.changed() => if r.is_err() { return },
            }
        }
    }
}

impl Job {
    /// A new job for `new`, with a new id.
    pub(super) fn fresh(new: NewJob) -> Self {
        Job::from_parts(new_job_id().into(), new, 0, 0, now_ms())
    }

    pub(super) fn from_parts(
        id: Arc<str>,
        new: NewJob,
        base_calls: u64,
        estimate: u64,
        created_ms: i64,
    ) -> Self {
        let stop = Stop::default();
        let range = new.range.for_job(stop.clone());
        let ledger = Arc::clone(range.allowance());
        let slots = new
            .windows
            .iter()
            .map(|_| Slot {
                state: AtomicU8::new(SlotState::Waiting as u8),
                cached: AtomicBool::new(false),
                ledger: Arc::new(Allowance::child(&ledger)),
            })
            .collect();
        Job {
            id,
            owner: new.owner,
            result: new.result,
            identity: new.identity,
            account: new.account,
            range,
            windows: new.windows,
            slots,
            ledger,
            base_calls,
            created_ms,
            estimate: AtomicU64::new(estimate),
            end: Mutex::new(None),
            abort: Mutex::new(None),
            changed: Notify::new(),
            stop,
            writing: tokio::sync::Mutex::new(()),
        }
    }
}

/// 128 bits of OS randomness as hex: not guessable from any other id, and not a secret
/// either (jobs are owner-checked).
fn new_job_id() -> String {
    crate::cache::hex(&crate::telemetry::random_bytes::<16>())
}

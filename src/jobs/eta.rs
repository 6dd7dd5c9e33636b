//! A job's progress and ETA.
//!
//! The calls a job still needs are counted window by window: a window done needs none; a
//! window whose first page is in needs what that page announced (more pages, or the parts of
//! a cut) less what it has made; any other window needs what the account's volume predicts
//! for its span and filters ([`crate::fetch::Volume`]: records per second already seen, or
//! the probe of the job's first window) — one first page while nothing is known. So the
//! 202 and the first polls already estimate the whole job, and each window's own first
//! page replaces the prediction as it comes.
//!
//! `calls_estimated` never goes down (what a progress bar shows); the ETA reads the freshest
//! estimate, so a first prediction that was too high does not hold it up. The ETA plays the
//! budget's sliding log forward ([`Budget::time_to_serve_as`]) for the calls left to this job
//! and the same key's older jobs, while the other callers' calls (their jobs' and what they
//! have waiting) are served by the budget's shares (round robin without
//! GATEWAY_KEY_SHARES).

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering, time::Duration};

use super::{Job, Progress, job::SlotState};
use crate::budget::Budget;

impl Job {
    /// Calls still needed by each window (none once done).
    fn remaining_by_window(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().zip(&self.windows).map(|(slot, w)| {
            match slot.state() {
                SlotState::Done => 0,
                SlotState::Started if slot.ledger.completed() > 0 => {
                    // Its first page is in: what it announced, less what it made.
                    (1 + slot.ledger.announced()).saturating_sub(u64::from(slot.ledger.completed()))
                }
                SlotState::Waiting | SlotState::Started => {
                    if slot.cached.load(Ordering::Relaxed) {
                        0
                    } else {
                        self.range.expected_calls(w).unwrap_or(1)
                    }
                }
            }
        })
    }

    /// Calls this job still needs, by the freshest knowledge.
    pub(super) fn remaining(&self) -> u64 {
        self.remaining_by_window().sum()
    }

    /// Upstream calls this job has made (earlier runs included, for a resumed job).
    pub(super) fn calls_done(&self) -> u64 {
        self.base_calls + u64::from(self.ledger.completed())
    }

    /// Current progress; the estimate is raised, never lowered.
    pub fn progress(&self) -> Progress {
        let done = self.calls_done();
        let fresh = done + self.remaining();
        let estimate = self.estimate.fetch_max(fresh, Ordering::Relaxed).max(fresh);
        Progress {
            windows_done: self.windows_done(),
            windows_total: self.windows.len() as u32,
            calls_done: done,
            calls_estimated: estimate,
        }
    }
}

/// Seconds until `job` should be done, given the other jobs of this process `others`: its
/// calls left and all calls left of the same key's older jobs, played through `budget`'s
/// schedule while the other callers are served by its shares.
pub(super) fn eta(job: &Job, others: &[Arc<Job>], budget: &Budget) -> u64 {
    let mine = job.remaining();
    let mut ahead_same_key = 0u64;
    let mut by_caller: HashMap<Arc<str>, u64> = HashMap::new();
    for j in others
        .iter()
        .filter(|j| j.id != job.id && j.is_active() && j.account.index == job.account.index)
    {
        let l = j.remaining();
        if j.owner == job.owner {
            if j.created_ms <= job.created_ms {
                ahead_same_key += l;
            }
        } else {
            *by_caller.entry(Arc::clone(&j.owner)).or_default() += l;
        }
    }
    eta_seconds(serve_time(
        budget,
        &job.owner,
        mine + ahead_same_key,
        by_caller,
    ))
}

/// How long `budget` takes to serve `calls` of `caller` while the other callers are served
/// by its shares (round robin without GATEWAY_KEY_SHARES): each other caller wanting its
/// waiting calls, or the `known` calls it has left, whichever is more.
pub fn serve_time(
    budget: &Budget,
    caller: &Arc<str>,
    calls: u64,
    mut known: HashMap<Arc<str>, u64>,
) -> Duration {
    for (other, waiting) in budget.waiting_by_caller() {
        if other != *caller {
            let d = known.entry(other).or_default();
            *d = (*d).max(waiting as u64);
        }
    }
    let others: Vec<(Arc<str>, u64)> = known.into_iter().collect();
    budget.time_to_serve_as(caller, calls, &others)
}

/// Whole seconds, rounded up.
pub fn eta_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

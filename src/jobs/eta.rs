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
//! budget's sliding log forward ([`Budget::time_to_serve`]) for the calls left to this job,
//! plus — because the budget serves waiting callers round robin — up to as many calls of
//! each other caller, and all calls left of the same key's older jobs.

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

/// Seconds until `job` should be done, given the other jobs of this process `others`:
/// its calls left, plus up to as many calls of each other caller (round robin), and all
/// calls left of the same key's older jobs, played through `budget`'s schedule.
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

/// How long `budget` takes to serve `calls` of `caller` when others are served round robin
/// meanwhile: each other caller's waiting calls (or `known` calls left, whichever is more)
/// count up to `calls`.
pub fn serve_time(
    budget: &Budget,
    caller: &str,
    calls: u64,
    mut known: HashMap<Arc<str>, u64>,
) -> Duration {
    for (other, waiting) in budget.waiting_by_caller() {
        if &*other != caller {
            let d = known.entry(other).or_default();
            *d = (*d).max(waiting as u64);
        }
    }
    let total = calls + known.values().map(|d| (*d).min(calls)).sum::<u64>();
    budget.time_to_serve(total)
}

/// Whole seconds, rounded up.
pub fn eta_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

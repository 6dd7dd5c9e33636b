//! A request's call allowance and ledger: what it may still spend (`MAX_CALLS_PER_REQUEST`)
//! and what it has spent and been told is to come — the counts a job's progress reads.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::upstream::{PAGE_LIMIT, UpstreamError};

/// The upstream calls one request may still cause (`MAX_CALLS_PER_REQUEST`); every call,
/// retries included, takes one before it waits for the shared budget. It is also the
/// request's ledger, read by the progress of a job: calls completed, and calls its windows'
/// first pages said are still to come.
#[derive(Debug)]
pub struct Allowance {
    limit: u32,
    used: AtomicU32,
    /// Calls answered (or failed) so far.
    completed: AtomicU32,
    /// Calls beyond each part's first page that first pages announced (more pages, or the
    /// first pages of the parts of a cut).
    announced: AtomicU64,
    /// Pages a cut counted in `announced` that its parts' first pages will announce again.
    credit: AtomicU64,
    /// How long the shared budget takes to serve `limit` calls: when a retry of a request
    /// that ran out can expect to go on (what it fetched stays cached).
    refill: Duration,
    /// The request's allowance, when this is one window's share of it (a job keeps a ledger
    /// per window): calls are taken from it, and counted in it too.
    parent: Option<Arc<Allowance>>,
}

impl Allowance {
    /// `limit` calls for a request; the shared budget's `rate` says how soon a retry helps.
    pub fn new(limit: u32, rate: crate::config::Rate) -> Self {
        let periods = limit.div_ceil(rate.calls.max(1));
        Allowance::again(limit, rate.period.saturating_mul(periods.max(1)))
    }

    /// A new allowance of `limit` calls.
    pub(super) fn again(limit: u32, refill: Duration) -> Self {
        Allowance {
            limit,
            used: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            announced: AtomicU64::new(0),
            credit: AtomicU64::new(0),
            refill,
            parent: None,
        }
    }

    /// One window's share of `parent`: its own ledger (calls completed and announced for
    /// that window alone), calls taken from and counted in `parent` too.
    pub fn child(parent: &Arc<Allowance>) -> Self {
        Allowance {
            parent: Some(Arc::clone(parent)),
            ..Allowance::again(u32::MAX, parent.refill)
        }
    }

    /// No limit (the readiness probe).
    pub fn unlimited() -> Self {
        Allowance {
            limit: u32::MAX,
            used: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            announced: AtomicU64::new(0),
            credit: AtomicU64::new(0),
            refill: Duration::ZERO,
            parent: None,
        }
    }

    /// When a retry of a request that ran out of calls can expect to go on.
    pub fn refill(&self) -> Duration {
        self.refill
    }

    pub fn limit(&self) -> u32 {
        self.parent.as_ref().map_or(self.limit, |p| p.limit())
    }

    /// Counts one call completed (answered or failed), here and in the parent.
    pub(super) fn complete_one(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.complete_one();
        }
    }

    /// Upstream calls of this request that have completed (answered or failed).
    pub fn completed(&self) -> u32 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Calls first pages announced beyond themselves (see [`Allowance`]).
    pub fn announced(&self) -> u64 {
        self.announced.load(Ordering::Relaxed)
    }

    /// A first page announced `pages` more pages of its window or part.
    pub(super) fn expect_pages(&self, pages: u64) {
        self.announce(pages, 0);
    }

    /// A window reported to hold `records` is cut into `parts`: each part's first page, and
    /// the pages beyond them that the records fill, are to come.
    pub(super) fn expect_cut(&self, parts: u64, records: u64) {
        let pages = records.div_ceil(u64::from(PAGE_LIMIT));
        let beyond = pages.saturating_sub(parts);
        self.announce(parts + beyond, beyond);
    }

    /// Counts `calls` more to come, less what an earlier cut already counted for the parts
    /// (its `credit`), so a part's pages are not counted twice; `credit` is what this
    /// announcement counts on behalf of parts that will announce it again.
    fn announce(&self, calls: u64, credit: u64) {
        let mut covered = 0;
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                covered = c.min(calls);
                Some(c - covered)
            });
        self.announced.fetch_add(calls - covered, Ordering::Relaxed);
        self.credit.fetch_add(credit, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            // The parent's count is the sum of its windows' (their credits stay their own).
            p.announced.fetch_add(calls - covered, Ordering::Relaxed);
        }
    }

    /// Calls still allowed.
    pub fn left(&self) -> u32 {
        let own = self.limit.saturating_sub(self.used.load(Ordering::Relaxed));
        self.parent.as_ref().map_or(own, |p| own.min(p.left()))
    }

    /// Takes one call, or says the request has spent its allowance.
    pub(super) fn take(&self) -> Result<(), UpstreamError> {
        if let Some(p) = &self.parent {
            p.take()?;
        }
        let before = self.used.fetch_add(1, Ordering::Relaxed);
        if before < self.limit {
            Ok(())
        } else {
            self.used.fetch_sub(1, Ordering::Relaxed);
            Err(UpstreamError::OverCallBudget {
                estimate: u64::from(self.limit) + 1,
                limit: self.limit,
                retry_after: self.refill,
            })
        }
    }
}

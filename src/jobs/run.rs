//! A job's task: its windows through the cache, up to [`WINDOWS_IN_FLIGHT`] at once, so
//! that cancelling the job leaves the windows it never started unfetched, while the windows
//! under way finish in their own cache tasks and stay cached. (The first windows' first
//! pages are also the probe a 202 waits for when nothing is known of the account's volume.)
//!
//! A window can fail with a budget refusal that is not the job's: it joined a fetch another
//! request led, and that request's deadline passed. The job then asks again (leading its
//! own fetch). When the process drains, the job stops starting windows, lets the ones under
//! way end, and is left resumable: not failed, its record saved with the windows done.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use futures_util::{StreamExt, stream::FuturesUnordered};

use super::{
    Job, WINDOWS_IN_FLIGHT,
    job::{End, SlotState},
};
use crate::upstream::UpstreamError;

/// Times a window refused by someone else's deadline is asked again before the job fails.
const BUDGET_RETRIES: u32 = 5;

/// How the task stopped.
pub(super) enum Stopped {
    Ended(End),
    /// Drained: resumable.
    Suspended,
}

/// Runs `job`'s windows not done yet; says how it stopped.
pub(super) async fn run(job: Arc<Job>) -> Stopped {
    let drain = job.account.fetcher.drain().clone();
    let mut pending: std::collections::VecDeque<(usize, u32)> = (0..job.windows.len())
        .filter(|i| job.slots[*i].state() != SlotState::Done)
        .map(|i| (i, 0))
        .collect();
    let mut under_way = FuturesUnordered::new();
    let start = |i: usize, tries: u32| {
        let job = Arc::clone(&job);
        async move {
            job.slots[i].start();
            let range = job.range.with_allowance(Arc::clone(&job.slots[i].ledger));
            (i, tries, range.window(job.windows[i]).await)
        }
    };
    loop {
        while under_way.len() < WINDOWS_IN_FLIGHT && !drain.is_draining() {
            let Some((i, tries)) = pending.pop_front() else {
                break;
            };
            under_way.push(start(i, tries));
        }
        if under_way.is_empty() {
            return if pending.is_empty() {
                Stopped::Ended(End::Done)
            } else {
                Stopped::Suspended
            };
        }
        let Some((i, tries, outcome)) = under_way.next().await else {
            continue;
        };
        match outcome {
            Ok(o) => {
                job.slots[i].finish(o.calls == 0);
                job.changed.notify_waiters();
            }
            Err(_) if drain.is_draining() => {
                // Left as it is: the job resumes it.
                job.slots[i].unstart();
                pending.push_back((i, tries));
            }
            Err(UpstreamError::Budget { .. }) if tries < BUDGET_RETRIES => {
                job.slots[i].unstart();
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tries + 1))).await;
                pending.push_front((i, tries + 1));
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "job failed");
                return Stopped::Ended(End::Failed(problem_of(e).await));
            }
        }
    }
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

impl super::Slot {
    pub(super) fn start(&self) {
        let _ = self.state.compare_exchange(
            SlotState::Waiting as u8,
            SlotState::Started as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn unstart(&self) {
        let _ = self.state.compare_exchange(
            SlotState::Started as u8,
            SlotState::Waiting as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn finish(&self, free: bool) {
        if free {
            self.cached.store(true, Ordering::Relaxed);
        }
        self.state.store(SlotState::Done as u8, Ordering::Relaxed);
    }
}

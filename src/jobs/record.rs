//! What is kept of a job outside the process that runs it: enough to show it to its owner
//! from any replica (state, progress, ETA, result or error) and to resume it anywhere
//! (account, filters, windows, which windows are done). The same record goes to every store
//! (a file in `CACHE_DIR/jobs`, a hash in Redis), as JSON.

use serde::{Deserialize, Serialize};

use super::{JobState, JobView, Progress};
use crate::{plan::Window, upstream::Filters};

/// Version of the record's layout: a record of another version is not resumed (it is
/// shown, as far as it reads).
pub const RECORD_VERSION: u32 = 1;

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub v: u32,
    pub id: String,
    /// The API key name that made it: the only key (besides admin keys) that sees it.
    pub owner: String,
    /// The label of the account's namespace: whose data, and the account that runs it.
    pub account: String,
    /// What identical requests share (account, refresh, URL).
    pub identity: String,
    /// The URL that answers the range once done.
    pub result: String,
    /// An admin's refresh: fresh cached copies are skipped.
    pub refresh: bool,
    pub filters: StoredFilters,
    /// `[start, end, offset seconds]` of every window, in order.
    pub windows: Vec<[i64; 3]>,
    /// Which windows are done (cached): a resumed job does not run them again.
    pub done: Vec<bool>,
    pub created_ms: i64,
    pub state: JobState,
    pub calls_done: u64,
    pub calls_estimated: u64,
    /// Seconds left when written (`updated_ms`); a reader takes off the time since.
    pub eta_seconds: Option<u64>,
    pub updated_ms: i64,
    pub ended_ms: Option<i64>,
    /// The problem a failed job's request would have answered.
    pub error: Option<serde_json::Value>,
}

/// The upstream filters of a job's windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredFilters {
    pub channels: Vec<String>,
    pub queues: Vec<String>,
    pub bots: Vec<String>,
    pub fields: Vec<String>,
}

impl From<&Filters> for StoredFilters {
    fn from(f: &Filters) -> Self {
        StoredFilters {
            channels: f.channels.clone(),
            queues: f.queues.clone(),
            bots: f.bots.clone(),
            fields: f.fields.clone(),
        }
    }
}

impl StoredFilters {
    pub fn to_filters(&self) -> Filters {
        Filters {
            channels: self.channels.clone(),
            queues: self.queues.clone(),
            bots: self.bots.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// A window as stored.
pub fn stored_window(w: &Window) -> [i64; 3] {
    [
        w.start.as_second(),
        w.end.as_second(),
        i64::from(w.offset_seconds),
    ]
}

/// A stored window back, if its values are ones a window can hold.
pub fn window_of(w: &[i64; 3]) -> Option<Window> {
    Some(Window {
        start: jiff::Timestamp::from_second(w[0]).ok()?,
        end: jiff::Timestamp::from_second(w[1]).ok()?,
        offset_seconds: i32::try_from(w[2]).ok()?,
    })
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl JobRecord {
    /// Whether it is queued or running (not ended).
    pub fn is_active(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }

    /// Whether it ended more than `ttl` ago (then it is forgotten).
    pub fn expired(&self, ttl: std::time::Duration, now_ms: i64) -> bool {
        self.ended_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= ttl.as_millis() as i64)
    }

    /// Its windows, or `None` when one cannot be read back (then it cannot be resumed).
    pub fn windows(&self) -> Option<Vec<Window>> {
        self.windows.iter().map(window_of).collect()
    }

    /// The job as its owner sees it, from any replica: the ETA aged by the time since the
    /// runner wrote it.
    pub fn view(&self, now_ms: i64) -> JobView {
        let progress = Progress {
            windows_done: self.done.iter().filter(|d| **d).count() as u32,
            windows_total: self.windows.len() as u32,
            calls_done: self.calls_done,
            calls_estimated: self.calls_estimated.max(self.calls_done),
        };
        let (eta_seconds, result, error) = match self.state {
            JobState::Done => (Some(0), Some(self.result.clone()), None),
            JobState::Failed => (None, None, self.error.clone()),
            JobState::Queued | JobState::Running => {
                let since =
                    u64::try_from(now_ms.saturating_sub(self.updated_ms) / 1000).unwrap_or(0);
                (
                    Some(self.eta_seconds.unwrap_or(1).saturating_sub(since).max(1)),
                    None,
                    None,
                )
            }
        };
        JobView {
            id: self.id.clone(),
            state: self.state,
            progress,
            eta_seconds,
            result,
            error,
        }
    }
}

/// Whether `id` has the shape of a job id (32 lower-case hex digits): anything else is no
/// job, and never reaches a store (no path or key is made of it).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

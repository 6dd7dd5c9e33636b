//! The budget's recent calls carried across a restart of the process (`CACHE_DIR`).
//!
//! The vendor counts an account's calls whoever makes them: a gateway restarted within a
//! period of its last calls, with an empty log, could make N more at once and break the
//! sliding-window promise. So a graceful shutdown writes each account's calls of the last
//! period (wall-clock milliseconds) to `CACHE_DIR/budget-carry.json`, and the next start
//! reads them back into the logs (and removes the file, so it is read once). A process that
//! dies without a shutdown leaves nothing: its successor starts with an empty log, as before.
//! Replicas sharing the account use the shared log in Redis instead.

use std::{collections::HashMap, path::Path, time::Duration};

use tokio::time::Instant;

use super::{Budget, lock};

/// The file, in CACHE_DIR.
pub const FILE: &str = "budget-carry.json";

impl Budget {
    /// The completion times of the calls in the current period, as Unix milliseconds; a
    /// call still in flight (the process is about to exit and cut it off: the vendor may
    /// have counted it) counts as completing one mean call from now.
    pub fn recent_calls(&self) -> Vec<i64> {
        let now = Instant::now();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let in_flight = self
            .shared
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire);
        let mut q = lock(&self.shared.queues);
        q.log.prune(now, self.shared.span);
        let mut out: Vec<i64> = q
            .log
            .times
            .iter()
            .map(|t| now_ms - now.saturating_duration_since(*t).as_millis() as i64)
            .collect();
        let cut_off = now_ms + self.mean_call().as_millis() as i64 + 1;
        out.extend(std::iter::repeat_n(cut_off, in_flight as usize));
        out
    }

    /// Counts calls made at `unix_ms` (by this account's previous process) in the log, those
    /// still within the period.
    pub fn seed_calls(&self, unix_ms: &[i64]) {
        let now = Instant::now();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let mut times: Vec<Instant> = unix_ms
            .iter()
            .filter_map(|ms| {
                let ago = Duration::from_millis(u64::try_from(now_ms - ms).ok()?);
                (ago < self.shared.span)
                    .then(|| now.checked_sub(ago))
                    .flatten()
            })
            .collect();
        times.sort();
        let mut q = lock(&self.shared.queues);
        let mut merged: Vec<Instant> = q.log.times.drain(..).chain(times).collect();
        merged.sort();
        q.log.times = merged.into();
    }
}

/// Writes each account's recent calls (by the label of its namespace) into `dir`.
///
/// # Errors
/// The file cannot be written (the next start then begins with empty logs).
pub fn save<'a>(
    dir: &Path,
    budgets: impl IntoIterator<Item = (&'a str, &'a Budget)>,
) -> std::io::Result<()> {
    let calls: HashMap<&str, Vec<i64>> = budgets
        .into_iter()
        .map(|(label, b)| (label, b.recent_calls()))
        .collect();
    let bytes = serde_json::to_vec(&calls).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, dir.join(FILE))
}

/// Reads (and removes) what the previous process wrote: recent calls by account label.
pub fn load(dir: &Path) -> HashMap<String, Vec<i64>> {
    let path = dir.join(FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return HashMap::new();
    };
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BudgetSettings, Rate};

    fn settings() -> BudgetSettings {
        BudgetSettings {
            rate: Rate {
                calls: 3,
                period: Duration::from_secs(60),
            },
            max_wait: Duration::from_secs(1),
            concurrency: 4,
            max_calls_per_request: 100,
        }
    }

    #[tokio::test]
    async fn a_restarted_budget_counts_the_calls_of_the_last_period() {
        let before = Budget::new_local(&settings());
        for _ in 0..3 {
            drop(before.acquire(&"a".into()).await.unwrap());
        }
        let dir = std::env::temp_dir().join(format!(
            "kore-carry-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        save(&dir, [("acct:1", &before)]).unwrap();
        let carried = load(&dir);
        assert!(!dir.join(FILE).exists(), "read once");
        let after = Budget::new_local(&settings());
        after.seed_calls(&carried["acct:1"]);
        // The period is full: no call now.
        assert_eq!(after.remaining().0, 0);
        assert!(after.acquire(&"a".into()).await.is_err());
        // Calls older than the period are not carried.
        let fresh = Budget::new_local(&settings());
        fresh.seed_calls(&[jiff::Timestamp::now().as_millisecond() - 120_000]);
        assert_eq!(fresh.remaining().0, 3);
        std::fs::remove_dir_all(&dir).ok();
    }
}

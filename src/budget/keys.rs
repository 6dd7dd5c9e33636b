//! The per-API-key request limit (`GATEWAY_KEY_RATE_LIMIT`): a sliding-window log per key,
//! the same any-interval promise as the upstream budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{SlidingLog, lock};
use crate::config::Rate;

/// Per-API-key request limit (GATEWAY_KEY_RATE_LIMIT), also a sliding-window log.
#[derive(Debug)]
pub struct KeyLimiter {
    rate: Rate,
    logs: Mutex<HashMap<Arc<str>, SlidingLog>>,
}

impl KeyLimiter {
    pub fn new(rate: Rate) -> Self {
        KeyLimiter {
            rate,
            logs: Mutex::new(HashMap::new()),
        }
    }

    /// The key's limit.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Requests `caller` may still make in the current window, and how long until the
    /// oldest of its counted requests leaves the window (zero when none is counted).
    pub fn remaining(&self, caller: &Arc<str>) -> (u32, Duration) {
        let now = Instant::now();
        let mut logs = lock(&self.logs);
        let Some(log) = logs.get_mut(caller) else {
            return (self.rate.calls, Duration::ZERO);
        };
        log.prune(now, self.rate.period);
        let left = (self.rate.calls as usize).saturating_sub(log.times.len()) as u32;
        let reset = log
            .next_free(self.rate.period)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        (left, reset)
    }

    /// Counts one request of `caller`.
    ///
    /// # Errors
    /// The wait until the caller may ask again, when over its limit.
    pub fn check(&self, caller: &Arc<str>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut logs = lock(&self.logs);
        let log = logs.entry(Arc::clone(caller)).or_default();
        log.prune(now, self.rate.period);
        if log.times.len() >= self.rate.calls as usize {
            let free = log.next_free(self.rate.period).unwrap_or(now);
            return Err(free
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)));
        }
        log.times.push_back(now);
        Ok(())
    }
}

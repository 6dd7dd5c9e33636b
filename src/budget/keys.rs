//! The per-API-key request limit (`GATEWAY_KEY_RATE_LIMIT`): a sliding-window log per key,
//! the same any-interval promise as the upstream budget. With replicas it is one log per
//! key in Redis ([`SharedCounter`]), so N replicas give a key its limit once, not N times;
//! while Redis is unreachable each replica keeps to its share of the limit (the limit
//! divided by the larger of `GATEWAY_REPLICAS` and the replicas last seen).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{SharedCounter, SlidingLog, lock};
use crate::config::Rate;

/// Per-API-key request limit (GATEWAY_KEY_RATE_LIMIT), also a sliding-window log.
pub struct KeyLimiter {
    rate: Rate,
    logs: Mutex<HashMap<Arc<str>, SlidingLog>>,
    /// The replicas' shared log, when there is one.
    shared: Option<Arc<dyn SharedCounter>>,
    /// What the shared log last said of each key: requests left and when the oldest leaves
    /// (for the `RateLimit` header, which must not ask Redis again).
    last: Mutex<HashMap<Arc<str>, (u32, Instant)>>,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimiter")
            .field("rate", &self.rate)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyLimiter {
    pub fn new(rate: Rate) -> Self {
        KeyLimiter {
            rate,
            logs: Mutex::new(HashMap::new()),
            shared: None,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// One limit per key for every replica: counted in `shared`.
    pub fn with_shared(mut self, shared: Arc<dyn SharedCounter>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether the count is shared between replicas (checking then awaits Redis).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Counts one request of `caller` in the replicas' shared log; while that is
    /// unreachable, in this replica's log against its share of the limit.
    ///
    /// # Errors
    /// The wait until the caller may ask again, when over its limit.
    pub async fn check_shared(&self, caller: &Arc<str>) -> Result<(), Duration> {
        let Some(shared) = &self.shared else {
            return self.check(caller);
        };
        let now = Instant::now();
        match shared
            .admit(caller, self.rate.calls, self.rate.period)
            .await
        {
            Some(Ok((left, reset))) => {
                lock(&self.last).insert(Arc::clone(caller), (left, now + reset));
                Ok(())
            }
            Some(Err(wait)) => {
                lock(&self.last).insert(Arc::clone(caller), (0, now + wait));
                Err(wait.max(Duration::from_secs(1)))
            }
            None => {
                let share = (self.rate.calls / shared.replicas().max(1)).max(1);
                lock(&self.last).remove(caller);
                self.check_within(caller, share)
            }
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
        if let Some((left, until)) = lock(&self.last).get(caller).copied() {
            return (left, until.saturating_duration_since(now));
        }
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
        self.check_within(caller, self.rate.calls)
    }

    /// [`KeyLimiter::check`] against `limit` requests per period.
    fn check_within(&self, caller: &Arc<str>, limit: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut logs = lock(&self.logs);
        let log = logs.entry(Arc::clone(caller)).or_default();
        log.prune(now, self.rate.period);
        if log.times.len() >= limit as usize {
            let free = log.next_free(self.rate.period).unwrap_or(now);
            return Err(free
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)));
        }
        log.times.push_back(now);
        Ok(())
    }
}

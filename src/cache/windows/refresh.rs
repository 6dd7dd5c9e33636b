//! Refresh-ahead: a recent window being read is refreshed shortly before it expires, at the
//! lowest priority of the budget, for as long as someone reads it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use jiff::Timestamp;
use tokio::time::Instant;

use super::{
    super::{Purpose, WindowData, WindowKey},
    Refetch, WindowCache,
    freshness::{freshness, refresh_lead},
    lock,
};

impl WindowCache {
    /// Remembers a window touching "now" that was just read, for refresh-ahead.
    pub(super) fn watch(&self, key: &WindowKey, data: &WindowData, refetch: &Refetch) {
        if self.policy.refresh_ahead_idle.is_none()
            || freshness(&self.policy, &data.window, true, Timestamp::now())
                != self.policy.ttl_recent
        {
            return;
        }
        lock(&self.watched).insert(key.clone(), (Instant::now(), Arc::clone(refetch)));
    }

    /// One round of refresh-ahead: every watched window read within REFRESH_AHEAD_IDLE
    /// whose copy expires within the lead time is refreshed now, at the lowest priority;
    /// windows not read for longer are forgotten. Returns how many refreshes it started.
    pub async fn refresh_ahead_round(&self) -> usize {
        let Some(idle) = self.policy.refresh_ahead_idle else {
            return 0;
        };
        let now = Instant::now();
        let lead = refresh_lead(&self.policy);
        let due: Vec<(WindowKey, Refetch)> = {
            let mut w = lock(&self.watched);
            w.retain(|_, (read, _)| now.duration_since(*read) < idle);
            w.iter()
                .map(|(k, (_, f))| (k.clone(), Arc::clone(f)))
                .collect()
        };
        let mut started = 0;
        for (key, refetch) in due {
            let expiring = match self.live(&key).await {
                Some(d) => d.fresh_until() <= now + lead,
                None => true,
            };
            if !expiring || lock(&self.inflight).contains_key(&key) {
                continue;
            }
            let (_, new) = self.flight(
                &key,
                true,
                refetch(Purpose::RefreshAhead),
                Purpose::RefreshAhead,
            );
            if new {
                started += 1;
                self.counters.refresh_ahead.fetch_add(1, Ordering::Relaxed);
            }
        }
        started
    }

    /// Runs refresh-ahead rounds until the cache is dropped (when REFRESH_AHEAD is on).
    pub fn spawn_refresh_ahead(self: &Arc<Self>) {
        if self.policy.refresh_ahead_idle.is_none() {
            return;
        }
        let every = (refresh_lead(&self.policy) / 2).max(Duration::from_millis(250));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = weak.upgrade() else {
                    return;
                };
                cache.refresh_ahead_round().await;
            }
        });
    }
}

//! How long a window stays fresh: settled windows long, recent or incomplete ones briefly;
//! moka's own expiry only reclaims memory after the stale grace.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use moka::Expiry;

use super::{
    super::{WindowData, WindowKey},
    WindowCache,
};
use crate::{config::CacheSettings, plan::Window};

pub(super) struct WindowExpiry {
    pub(super) grace: Duration,
}

impl Expiry<WindowKey, Arc<WindowData>> for WindowExpiry {
    fn expire_after_create(
        &self,
        _key: &WindowKey,
        value: &Arc<WindowData>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for + self.grace)
    }
}

impl WindowCache {
    /// How long a window's data stays fresh (the TTL policy).
    pub fn freshness(&self, w: &Window, complete: bool, now: Timestamp) -> Duration {
        freshness(&self.policy, w, complete, now)
    }
}

/// The TTL policy: settled windows live long, recent or incomplete ones briefly.
pub(super) fn freshness(
    policy: &CacheSettings,
    w: &Window,
    complete: bool,
    now: Timestamp,
) -> Duration {
    if !complete {
        return policy.ttl_recent;
    }
    let settled_at = w
        .end
        .as_second()
        .saturating_add(policy.settle.as_secs() as i64);
    if settled_at < now.as_second() {
        policy.ttl_past
    } else {
        policy.ttl_recent
    }
}

/// How long before expiry refresh-ahead refreshes a polled window: a fifth of the recent
/// TTL, at least a second.
pub(super) fn refresh_lead(policy: &CacheSettings) -> Duration {
    (policy.ttl_recent / 5).max(Duration::from_secs(1))
}

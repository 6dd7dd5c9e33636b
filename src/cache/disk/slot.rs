//! The disk tier as the cache holds it: a slot that is open from start-up, or — while
//! another process holds the store, as during an overlapping (rolling) deploy on one
//! `CACHE_DIR` — filled as soon as that process lets the store go.
//!
//! redb lets one process at a time open a store. The second process of a rolling deploy
//! therefore starts in memory, says so in the log and in `/readyz`, and tries again every
//! [`RETRY_EVERY`]; once the first process exits it opens the store and serves from disk
//! like any other replica, instead of running cold for its whole life.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use super::{DiskTier, OpenError};
use crate::cache::{Tier, WindowData, WindowKey};

/// How often a store held by another process is asked for again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Where the slot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// The store is open.
    Open,
    /// Another process holds the store; asked again every [`RETRY_EVERY`].
    Waiting,
    /// It cannot be used (the reason); the gateway runs in memory.
    Failed(String),
}

/// The disk tier, open or on its way.
pub struct DiskSlot {
    tier: OnceLock<Arc<DiskTier>>,
    state: Mutex<SlotState>,
    dir: PathBuf,
    max_bytes: u64,
}

impl std::fmt::Debug for DiskSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSlot")
            .field("dir", &self.dir)
            .field("state", &self.state())
            .finish()
    }
}

impl DiskSlot {
    /// Opens the store in `dir` now, or — when another process holds it — starts asking
    /// again in the background (needs a Tokio runtime then).
    pub fn open(dir: PathBuf, max_bytes: u64) -> Arc<Self> {
        let slot = Arc::new(DiskSlot {
            tier: OnceLock::new(),
            state: Mutex::new(SlotState::Waiting),
            dir,
            max_bytes,
        });
        match DiskTier::open(&slot.dir, max_bytes) {
            Ok(t) => slot.fill(t),
            Err(OpenError::InUse) => {
                tracing::warn!(dir = %slot.dir.display(), "the disk cache store is open in another process (an overlapping deploy?): running in memory and opening it as soon as that process lets it go");
                slot.retry_in_background();
            }
            Err(OpenError::Failed(e)) => {
                tracing::warn!(error = %e, "the disk cache tier is unavailable; running in memory");
                slot.set(SlotState::Failed(e));
            }
        }
        slot
    }

    /// The open tier, if it is.
    pub fn tier(&self) -> Option<&Arc<DiskTier>> {
        self.tier.get()
    }

    /// Where it stands.
    pub fn state(&self) -> SlotState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, s: SlotState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn fill(&self, t: DiskTier) {
        let _ = self.tier.set(Arc::new(t));
        self.set(SlotState::Open);
    }

    fn retry_in_background(self: &Arc<Self>) {
        let weak: Weak<DiskSlot> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_EVERY).await;
                let Some(slot) = weak.upgrade() else {
                    return;
                };
                let (dir, max) = (slot.dir.clone(), slot.max_bytes);
                let opened = tokio::task::spawn_blocking(move || DiskTier::open(&dir, max))
                    .await
                    .unwrap_or_else(|_| Err(OpenError::Failed("the open task failed".into())));
                match opened {
                    Ok(t) => {
                        tracing::info!(dir = %slot.dir.display(), "the disk cache store was let go by the other process: the disk tier is open");
                        slot.fill(t);
                        return;
                    }
                    Err(OpenError::InUse) => {}
                    Err(OpenError::Failed(e)) => {
                        tracing::warn!(error = %e, "the disk cache tier is unavailable; running in memory");
                        slot.set(SlotState::Failed(e));
                        return;
                    }
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl Tier for DiskSlot {
    async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        self.tier()?.get(key).await
    }

    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>) {
        if let Some(t) = self.tier() {
            t.put(key, data).await;
        }
    }
}

//! The purge epoch: what `DELETE /v1/cache` on any replica leaves behind so that no replica
//! answers a purged copy again.
//!
//! Every cached thing records the epoch it was fetched in ([`WindowData::epoch`](super::WindowData),
//! the rendered answers, the bytes a tier stores); a copy of an older epoch than the current
//! one is not served from any tier. A purge raises the epoch: locally, and — with Redis — in
//! one counter every replica reads every [`POLL`], so the epoch check reaches them all
//! without a message that could be missed (a replica that was down during a purge learns it
//! at start-up, before its disk is read). Why not pub/sub: a subscriber reconnecting at the
//! moment of the purge misses the message for good; a counter read on a clock cannot be
//! missed, and its bound is the poll interval.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

/// How often a replica reads the shared epoch.
pub const POLL: Duration = Duration::from_millis(200);

/// The current purge epoch, shared by every cache of the process.
#[derive(Debug, Clone)]
pub struct Epoch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    value: AtomicU64,
    /// False until the shared epoch was read once (or could not be): tiers that outlive
    /// the process are not read before.
    known: AtomicBool,
    learnt: Notify,
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch::new(true)
    }
}

impl Epoch {
    /// Epoch 0; `known` is false when it must first be learnt from the replicas.
    pub fn new(known: bool) -> Self {
        Epoch(Arc::new(Inner {
            value: AtomicU64::new(0),
            known: AtomicBool::new(known),
            learnt: Notify::new(),
        }))
    }

    /// The current epoch.
    pub fn current(&self) -> u64 {
        self.0.value.load(Ordering::Acquire)
    }

    /// Whether a copy of epoch `e` may be served.
    pub fn is_live(&self, e: u64) -> bool {
        e >= self.current()
    }

    /// Raises the epoch to at least `e`; true when it rose.
    pub fn raise_to(&self, e: u64) -> bool {
        self.0.value.fetch_max(e, Ordering::AcqRel) < e
    }

    /// Raises the epoch by one (a purge without replicas); returns the new epoch.
    pub fn bump(&self) -> u64 {
        self.0.value.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Marks the epoch as learnt (or as not learnable: Redis is down), letting readers of
    /// lasting tiers on.
    pub fn mark_known(&self) {
        self.0.known.store(true, Ordering::Release);
        self.0.learnt.notify_waiters();
    }

    /// Waits until the epoch is known, at most `bound`.
    pub async fn known(&self, bound: Duration) {
        if self.0.known.load(Ordering::Acquire) {
            return;
        }
        let wait = self.0.learnt.notified();
        if self.0.known.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_an_older_epoch_are_not_live() {
        let e = Epoch::default();
        assert!(e.is_live(0));
        assert_eq!(e.bump(), 1);
        assert!(!e.is_live(0));
        assert!(e.raise_to(5));
        assert!(!e.raise_to(3), "an epoch never goes down");
        assert_eq!(e.current(), 5);
        assert!(e.is_live(5) && e.is_live(6) && !e.is_live(4));
    }

    #[tokio::test(start_paused = true)]
    async fn readers_wait_until_the_epoch_is_known_but_not_longer_than_the_bound() {
        let e = Epoch::new(false);
        let waited =
            tokio::time::timeout(Duration::from_secs(5), e.known(Duration::from_secs(1))).await;
        assert!(waited.is_ok(), "bounded");
        let e2 = e.clone();
        let waiter = tokio::spawn(async move { e2.known(Duration::from_secs(3600)).await });
        tokio::task::yield_now().await;
        e.mark_known();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken when known")
            .unwrap();
    }
}

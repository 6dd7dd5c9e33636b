//! Purges that reach every replica: `DELETE /v1/cache` raises the purge [`Epoch`] (in Redis
//! when replicas share one), and every replica reads it every [`POLL`](super::epoch::POLL).
//! A copy of an older epoch is not served by any replica from any tier from the moment it
//! has read the new epoch, and its memory is freed.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::{WindowCache, disk::DiskSlot, epoch::POLL};
use crate::cluster::Cluster;

/// How long after raising the epoch every replica has read it (two polls and a margin for
/// a slow read): what `DELETE /v1/cache` waits before it answers.
pub const REACH: Duration = Duration::from_millis(2 * POLL.as_millis() as u64 + 100);

/// Reads the shared epoch every [`POLL`] for as long as the window cache lives: a purge on
/// another replica makes this one's copies unservable at once, then frees its memory and
/// empties its disk tier. The first read only learns the epoch: what the disk holds from
/// before is unservable by the epoch check, and a restart must not empty it.
pub fn watch(cluster: Arc<Cluster>, windows: Weak<WindowCache>, disk: Option<Arc<DiskSlot>>) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Some(cache) = windows.upgrade() else {
                return;
            };
            let epoch = cache.epoch().clone();
            match cluster.purge_epoch().await {
                Some(e) => {
                    if epoch.raise_to(e) && !first {
                        tracing::info!(
                            epoch = e,
                            "another replica purged the cache: dropping this replica's copies"
                        );
                        cache.purge();
                        if let Some(d) = disk.as_ref().and_then(|d| d.tier()) {
                            d.purge().await;
                        }
                    }
                    first = false;
                    epoch.mark_known();
                }
                // Unreachable: nothing to learn from; the tiers are read as they are.
                None => epoch.mark_known(),
            }
            drop(cache);
            tokio::time::sleep(POLL).await;
        }
    });
}

/// Raises the purge epoch for every replica (or this one alone without Redis). Returns the
/// epoch now in force and whether the other replicas were told. With Redis configured but
/// unreachable the epoch stays (a local number would collide with the shared one later):
/// this replica's purge still drops its own copies, and the answer says the others were
/// not told.
pub async fn raise(cluster: Option<&Arc<Cluster>>, windows: &WindowCache) -> (u64, bool) {
    let epoch = windows.epoch();
    match cluster {
        Some(c) => match c.raise_purge_epoch().await {
            Some(e) => {
                epoch.raise_to(e);
                (epoch.current(), true)
            }
            None => (epoch.current(), false),
        },
        None => (epoch.bump(), false),
    }
}

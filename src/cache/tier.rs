//! The tiers below memory, behind one small trait: where windows outlive this process
//! (the disk tier, `CACHE_DIR`) and where replicas share them (Redis, `REDIS_URL`).
//!
//! A tier keeps a window's bytes ([`encode_stored`]: JSON, lz4-compressed, with the
//! wall-clock fetch time, so freshness survives a restart), and may coordinate fetches:
//! [`Tier::lock_for_fetch`] makes one holder of the tier fetch a cold window while the
//! others wait for its result. A tier local to this process has nobody to coordinate with.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{WindowData, WindowKey};
use crate::{merge::Record, plan::Window};

/// Who fetches a cold window, among everyone sharing a tier.
#[derive(Debug)]
pub enum FetchLock {
    /// This process: it fetches, [`Tier::put`]s the result, then [`Tier::unlock`]s.
    Held,
    /// Another holder fetched it meanwhile: its copy.
    Filled(WindowData),
    /// Nobody to coordinate with (a local tier, or the shared store is unreachable, or the
    /// holder gave up): fetch without a lock.
    Unlocked,
}

/// A cache tier below memory.
#[async_trait::async_trait]
pub trait Tier: Send + Sync + std::fmt::Debug {
    /// The copy of `key` this tier holds, if any. A local tier returns it expired too
    /// (within the grace the cache allows); a shared one only while it is fresh.
    async fn get(&self, key: &WindowKey) -> Option<WindowData>;

    /// Keeps `data` under `key` (best effort: a failure is a miss later, never an error).
    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>);

    /// Claims the fetch of `key` among everyone sharing this tier, waiting up to `wait`
    /// for another holder's result.
    async fn lock_for_fetch(&self, _key: &WindowKey, _wait: Duration) -> FetchLock {
        FetchLock::Unlocked
    }

    /// Frees a [`FetchLock::Held`] claim.
    async fn unlock(&self, _key: &WindowKey) {}

    /// Extends a [`FetchLock::Held`] claim whose fetch is still under way.
    async fn renew(&self, _key: &WindowKey) {}

    /// How often a held claim must be renewed while its fetch runs (`None`: it never
    /// expires by itself).
    fn renew_every(&self) -> Option<Duration> {
        None
    }
}

/// A tier in this process's memory: the stand-in for disk or Redis in tests.
#[derive(Debug, Default)]
pub struct MemoryTier {
    windows: Mutex<HashMap<[u8; 32], Vec<u8>>>,
}

impl MemoryTier {
    /// How many windows it holds.
    pub fn len(&self) -> usize {
        self.windows.lock().map_or(0, |w| w.len())
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl Tier for MemoryTier {
    async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        let bytes = self.windows.lock().ok()?.get(&key.digest())?.clone();
        decode_stored(&bytes)
    }

    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>) {
        if let (Some(bytes), Ok(mut w)) = (
            encode_stored(data, data.fetched_unix_ms),
            self.windows.lock(),
        ) {
            w.insert(key.digest(), bytes);
        }
    }
}

/// A window as stored outside the process.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    start: i64,
    end: i64,
    offset: i32,
    warnings: Vec<String>,
    /// Unix milliseconds of the fetch, and how long it stays fresh.
    fetched_at_ms: i64,
    fresh_for_ms: u64,
    /// The purge epoch of its fetch (absent in what older versions wrote: epoch 0).
    #[serde(default)]
    epoch: u64,
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
}

fn unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A window as stored outside the process (Redis, disk): JSON, lz4-compressed.
pub fn encode_stored(data: &WindowData, fetched_at_ms: i64) -> Option<Vec<u8>> {
    let stored = Stored {
        start: data.window.start.as_second(),
        end: data.window.end.as_second(),
        offset: data.window.offset_seconds,
        warnings: data.warnings.clone(),
        fetched_at_ms,
        fresh_for_ms: data.fresh_for.as_millis() as u64,
        epoch: data.epoch,
        records: data.records.iter().map(|r| &*r.raw).collect(),
    };
    let json = serde_json::to_vec(&stored).ok()?;
    Some(lz4_flex::compress_prepend_size(&json))
}

/// Stored bytes back into a window, fresh or expired: its freshness is rebuilt from the
/// wall-clock fetch time, so it survives a restart.
pub fn decode_stored(bytes: &[u8]) -> Option<WindowData> {
    let bytes = lz4_flex::decompress_size_prepended(bytes).ok()?;
    let stored: Stored<'_> = serde_json::from_slice(&bytes).ok()?;
    let window = Window {
        start: jiff::Timestamp::from_second(stored.start).ok()?,
        end: jiff::Timestamp::from_second(stored.end).ok()?,
        offset_seconds: stored.offset,
    };
    let records = stored
        .records
        .into_iter()
        .map(|r| Record::new(r.to_owned(), &window))
        .collect();
    let mut data = WindowData::new(window, records, stored.warnings, 0);
    data.fetched_unix_ms = stored.fetched_at_ms;
    data.epoch = stored.epoch;
    let left = stored.fetched_at_ms + stored.fresh_for_ms as i64 - unix_ms();
    if left > 0 {
        // Fresh: it expires `left` from now.
        data.fresh_for = Duration::from_millis(left as u64);
    } else {
        // Expired `-left` ago (as far as this process's clock reaches back).
        let expired_for = Duration::from_millis(left.unsigned_abs());
        data.fresh_for = Duration::ZERO;
        data.fetched_at = tokio::time::Instant::now()
            .checked_sub(expired_for)
            .unwrap_or_else(tokio::time::Instant::now);
    }
    Some(data)
}

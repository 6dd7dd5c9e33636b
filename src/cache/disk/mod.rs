//! The on-disk cache tier (`CACHE_DIR`): windows survive restarts, deploys and crashes.
//!
//! One [redb](https://docs.rs/redb) file, `windows-v2.redb`, holds each window under the digest
//! of its typed key ([`WindowKey::digest`], which names the account), encoded as the Redis tier encodes it (JSON,
//! lz4-compressed) with its wall-clock fetch time, so freshness survives a restart. redb is
//! transactional and copy-on-write: a write a killed process did not commit is simply not
//! there, so a half-written window is never served.
//!
//! * Size is bounded by `CACHE_DISK_MAX_BYTES`: the least recently used windows are removed
//!   (recency is kept in memory; after a restart it starts from the fetch times).
//! * Every failure degrades, never fails a request: a read that fails is a miss; a write
//!   that fails (disk full, read-only) turns the tier off with a warning in the log and in
//!   `/readyz`, and the gateway goes on in memory.
//! * A file that cannot be opened as a store (corrupt, truncated, another format) is set
//!   aside as `windows-v2.redb.corrupt-<unix seconds>` and a new one is started.
//!
//! All file work runs on Tokio's blocking pool.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

mod slot;

pub use slot::{DiskSlot, RETRY_EVERY, SlotState};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    Tier, WindowData, WindowKey,
    tier::{decode_stored, encode_stored},
};

const WINDOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("windows");
/// Per window: fetch time (Unix ms) and stored size, so that opening the store reads a few
/// bytes per window, not every window.
const META: TableDefinition<&[u8], (i64, u64)> = TableDefinition::new("meta");
const FILE: &str = "windows-v2.redb";
/// The store of the version before keys named their account ([`super::Namespace`]): its
/// windows cannot say whose data they are, so it is never read; [`DiskTier::open`] sets it
/// aside (renamed, not deleted) for an operator to remove.
const UNKEYED_FILE: &str = "windows.redb";

/// Counters for `/metrics` and `/v1/cache`.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub writes: AtomicU64,
    pub evictions: AtomicU64,
    pub errors: AtomicU64,
}

/// Recency and size of every stored window, kept in memory.
#[derive(Default)]
struct Lru {
    /// key digest → (tick of last use, stored bytes)
    entries: HashMap<[u8; 32], (u64, u64)>,
    /// tick → key digest, oldest first
    order: BTreeMap<u64, [u8; 32]>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, key: [u8; 32], size: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((old_tick, old_size)) = self.entries.insert(key, (tick, size)) {
            self.order.remove(&old_tick);
            self.bytes -= old_size;
        }
        self.order.insert(tick, key);
        self.bytes += size;
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some((tick, size)) = self.entries.remove(key) {
            self.order.remove(&tick);
            self.bytes -= size;
        }
    }

    /// Keys to remove, oldest first, until `bytes` fits `max`.
    fn victims(&self, max: u64) -> Vec<[u8; 32]> {
        let mut over = self.bytes.saturating_sub(max);
        let mut out = Vec::new();
        for (_, key) in self.order.iter() {
            if over == 0 {
                break;
            }
            let size = self.entries.get(key).map_or(0, |e| e.1);
            over = over.saturating_sub(size);
            out.push(*key);
        }
        out
    }
}

/// The on-disk tier.
pub struct DiskTier {
    db: Arc<Database>,
    path: PathBuf,
    max_bytes: u64,
    lru: Arc<Mutex<Lru>>,
    /// False once a write failed: the tier is off, the gateway runs in memory.
    healthy: Arc<AtomicBool>,
    pub counters: Arc<DiskCounters>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Why a store file could not be opened.
enum Unusable {
    /// Not a readable store (corrupt, truncated, another format): set it aside.
    Corrupt(String),
    /// Another process holds it (an overlapping deploy): wait for it.
    InUse,
    /// Anything else (permissions, no space): leave it alone.
    Other(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Corrupt(e) | Unusable::Other(e) => f.write_str(e),
            Unusable::InUse => f.write_str("the store is open in another process"),
        }
    }
}

impl From<String> for Unusable {
    fn from(e: String) -> Self {
        Unusable::Other(e)
    }
}

/// Why [`DiskTier::open`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Another process holds the store: it can be opened once that process lets it go.
    InUse,
    /// The folder or the store cannot be used (the message says why).
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InUse => f.write_str("the store is open in another process"),
            OpenError::Failed(e) => f.write_str(e),
        }
    }
}

/// Opens or creates the store at `path`, telling a corrupt file from a file in use.
fn create(path: &Path) -> Result<Database, Unusable> {
    use redb::{DatabaseError, StorageError};
    // A file redb did not write may trip its internal checks: whatever happens in there is
    // a store we cannot use, not a reason to stop the gateway.
    let opened = std::panic::catch_unwind(|| Database::create(path))
        .map_err(|_| Unusable::Corrupt("the store's checks failed".into()))?;
    opened.map_err(|e| match e {
        DatabaseError::Storage(StorageError::Corrupted(m)) => Unusable::Corrupt(m),
        DatabaseError::Storage(StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Unusable::Corrupt(io.to_string())
        }
        DatabaseError::UpgradeRequired(_) | DatabaseError::RepairAborted => {
            Unusable::Corrupt(e.to_string())
        }
        DatabaseError::DatabaseAlreadyOpen => Unusable::InUse,
        other => Unusable::Other(other.to_string()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskTier {
    /// Opens (or creates) the store in `dir`. A file that is not a readable store is set
    /// aside and replaced by a new one.
    ///
    /// # Errors
    /// [`OpenError::InUse`] while another process holds the store; otherwise the folder or
    /// the store cannot be created (the caller runs in memory and says so).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, OpenError> {
        Self::open_inner(dir, max_bytes).map_err(|e| match e {
            Unusable::InUse => OpenError::InUse,
            other => OpenError::Failed(other.to_string()),
        })
    }

    fn open_inner(dir: &Path, max_bytes: u64) -> Result<Self, Unusable> {
        let failed = |e: String| Unusable::Other(e);
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create {}: {}", dir.display(), e.kind())))?;
        let unkeyed = dir.join(UNKEYED_FILE);
        if unkeyed.exists() {
            let aside = dir.join(format!(
                "{UNKEYED_FILE}.unkeyed-{}",
                jiff::Timestamp::now().as_second()
            ));
            tracing::warn!(path = %unkeyed.display(), aside = %aside.display(), "a cache store of the previous version (its keys do not name the account) was set aside and will not be read; delete it when no longer wanted");
            std::fs::rename(&unkeyed, &aside).map_err(|e| {
                failed(format!(
                    "cannot set aside {}: {}",
                    unkeyed.display(),
                    e.kind()
                ))
            })?;
        }
        let path = dir.join(FILE);
        let db = match create(&path) {
            Ok(db) => db,
            Err(Unusable::InUse) => return Err(Unusable::InUse),
            Err(Unusable::Other(e)) => {
                return Err(failed(format!("cannot open {}: {e}", path.display())));
            }
            Err(Unusable::Corrupt(e)) => {
                let aside = dir.join(format!(
                    "{FILE}.corrupt-{}",
                    jiff::Timestamp::now().as_second()
                ));
                tracing::warn!(error = %e, path = %path.display(), aside = %aside.display(), "the cache store cannot be opened; setting it aside and starting a new one");
                std::fs::rename(&path, &aside).map_err(|e| {
                    failed(format!("cannot set aside {}: {}", path.display(), e.kind()))
                })?;
                create(&path)
                    .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?
            }
        };
        // Create the tables so reads of an empty store are not errors, and learn what is
        // stored (size and fetch time give the starting recency order).
        let mut lru = Lru::default();
        let mut stored: Vec<(i64, [u8; 32], u64)> = Vec::new();
        {
            let tx = db
                .begin_write()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            {
                tx.open_table(WINDOWS)
                    .map_err(|e| format!("cannot open the windows table: {e}"))?;
                let meta = tx
                    .open_table(META)
                    .map_err(|e| format!("cannot open the meta table: {e}"))?;
                let iter = meta
                    .iter()
                    .map_err(|e| format!("cannot read the meta table: {e}"))?;
                for (k, v) in iter.flatten() {
                    let Ok(key) = <[u8; 32]>::try_from(k.value()) else {
                        continue;
                    };
                    let (fetched, size) = v.value();
                    stored.push((fetched, key, size));
                }
            }
            tx.commit()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        stored.sort_unstable();
        for (_, key, size) in stored {
            lru.touch(key, size);
        }
        tracing::info!(path = %path.display(), windows = lru.entries.len(), bytes = lru.bytes, "disk cache tier open");
        Ok(DiskTier {
            db: Arc::new(db),
            path,
            max_bytes,
            lru: Arc::new(Mutex::new(lru)),
            healthy: Arc::new(AtomicBool::new(true)),
            counters: Arc::new(DiskCounters::default()),
        })
    }

    /// Whether the tier still works (false after a write failed).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// (windows, bytes) stored.
    pub fn usage(&self) -> (u64, u64) {
        let l = lock(&self.lru);
        (l.entries.len() as u64, l.bytes)
    }

    /// The stored copy of `key`, fresh or not (the caller judges), if any. Any failure is a
    /// miss.
    pub async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        if !self.is_healthy() {
            return None;
        }
        let digest = key.digest();
        let db = Arc::clone(&self.db);
        let read = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
            let tx = db.begin_read().map_err(|e| e.to_string())?;
            let table = tx.open_table(WINDOWS).map_err(|e| e.to_string())?;
            let value = table.get(digest.as_slice()).map_err(|e| e.to_string())?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await;
        let bytes = match read {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "disk cache read failed; treated as a miss");
                return None;
            }
            Err(_) => return None,
        };
        match decode_stored(&bytes) {
            Some(d) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                lock(&self.lru).touch(digest, bytes.len() as u64);
                Some(d)
            }
            None => {
                // Unreadable bytes (a format from another version): a miss.
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores `data` under `key` (durably: one committed transaction), then removes the
    /// least recently used windows beyond `CACHE_DISK_MAX_BYTES`. A failure turns the tier
    /// off with a warning.
    pub async fn put(&self, key: &WindowKey, data: &WindowData) {
        if !self.is_healthy() {
            return;
        }
        let Some(bytes) = encode_stored(data, data.fetched_unix_ms) else {
            return;
        };
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return;
        }
        let digest = key.digest();
        let victims = {
            let mut l = lock(&self.lru);
            l.touch(digest, size);
            let v = l.victims(self.max_bytes);
            for k in &v {
                l.remove(k);
            }
            v
        };
        let evicted_count = victims.len() as u64;
        let fetched_unix_ms = data.fetched_unix_ms;
        let db = Arc::clone(&self.db);
        let write = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = tx.open_table(WINDOWS).map_err(|e| e.to_string())?;
                let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
                for k in &victims {
                    table.remove(k.as_slice()).map_err(|e| e.to_string())?;
                    meta.remove(k.as_slice()).map_err(|e| e.to_string())?;
                }
                table
                    .insert(digest.as_slice(), bytes.as_slice())
                    .map_err(|e| e.to_string())?;
                meta.insert(digest.as_slice(), (fetched_unix_ms, size))
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())?;
            Ok(())
        })
        .await;
        let evicted = match &write {
            Ok(Ok(())) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .evictions
                    .fetch_add(evicted_count, Ordering::Relaxed);
                true
            }
            _ => false,
        };
        if !evicted {
            let why = match write {
                Ok(Err(e)) => e,
                _ => "the write task failed".into(),
            };
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            self.healthy.store(false, Ordering::Relaxed);
            lock(&self.lru).remove(&digest);
            tracing::warn!(error = %why, path = %self.path.display(), "disk cache write failed (disk full or read-only?); the disk tier is off, running in memory");
        }
    }

    /// Removes every stored window; returns how many there were.
    pub async fn purge(&self) -> u64 {
        let db = Arc::clone(&self.db);
        let n = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            let n = {
                let table = tx.open_table(WINDOWS).map_err(|e| e.to_string())?;
                table.len().map_err(|e| e.to_string())?
            };
            tx.delete_table(WINDOWS).map_err(|e| e.to_string())?;
            tx.delete_table(META).map_err(|e| e.to_string())?;
            tx.open_table(WINDOWS).map_err(|e| e.to_string())?;
            tx.open_table(META).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            Ok(n)
        })
        .await;
        *lock(&self.lru) = Lru::default();
        match n {
            Ok(Ok(n)) => n,
            _ => 0,
        }
    }
}

/// The disk as the cache's local tier (its own methods do the work).
#[async_trait::async_trait]
impl Tier for DiskTier {
    async fn get(&self, key: &WindowKey) -> Option<WindowData> {
        DiskTier::get(self, key).await
    }

    async fn put(&self, key: &WindowKey, data: &Arc<WindowData>) {
        DiskTier::put(self, key, data).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{merge::Record, plan::Window, upstream::Filters};
    use jiff::Timestamp;
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kore-disk-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn window(i: i64) -> Window {
        Window {
            start: Timestamp::from_second(1_700_000_000 + i * 3600).unwrap(),
            end: Timestamp::from_second(1_700_000_000 + i * 3600 + 3599).unwrap(),
            offset_seconds: 0,
        }
    }

    fn data(w: Window, n: usize) -> WindowData {
        let records = (0..n)
            .map(|i| {
                let raw = format!(r#"{{"sessionId":"s{i}","pad":"{}"}}"#, "x".repeat(200));
                Record::new(RawValue::from_string(raw).unwrap(), &w)
            })
            .collect();
        let mut d = WindowData::new(w, records, vec![], 1);
        d.fresh_for = Duration::from_secs(3600);
        d
    }

    fn key(w: &Window) -> WindowKey {
        WindowKey::new(&ns(), w, &Arc::new(Filters::default()))
    }

    fn ns() -> crate::cache::Namespace {
        crate::cache::Namespace::new("http://127.0.0.1:1", "acct-a", "/p")
    }

    fn raws(d: &WindowData) -> Vec<String> {
        d.records.iter().map(|r| r.raw.get().to_owned()).collect()
    }

    #[tokio::test]
    async fn windows_survive_a_reopen_with_their_freshness() {
        let d = dir("reopen");
        let w = window(0);
        let original = data(w, 5);
        {
            let tier = DiskTier::open(&d, 1 << 20).unwrap();
            tier.put(&key(&w), &original).await;
        }
        let tier = DiskTier::open(&d, 1 << 20).unwrap();
        let back = tier.get(&key(&w)).await.expect("stored");
        assert_eq!(raws(&back), raws(&original));
        assert!(back.is_fresh());
        assert_eq!(back.fetched_unix_ms, original.fetched_unix_ms);
        assert!(tier.get(&key(&window(1))).await.is_none());
        std::fs::remove_dir_all(&d).ok();
    }

    #[tokio::test]
    async fn a_corrupt_store_is_set_aside_and_a_new_one_started() {
        let d = dir("corrupt");
        std::fs::write(
            d.join(FILE),
            b"not a database at all, just bytes".repeat(100),
        )
        .unwrap();
        let tier = DiskTier::open(&d, 1 << 20).expect("a corrupt file is not fatal");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("windows-v2.redb.corrupt-")),
            "{names:?}"
        );
        let w = window(0);
        tier.put(&key(&w), &data(w, 2)).await;
        assert_eq!(tier.get(&key(&w)).await.map(|d| d.records.len()), Some(2));
        std::fs::remove_dir_all(&d).ok();
    }

    #[tokio::test]
    async fn a_truncated_store_never_serves_a_half_written_window() {
        let d = dir("truncated");
        let windows: Vec<Window> = (0..20).map(window).collect();
        let originals: Vec<WindowData> = windows.iter().map(|w| data(*w, 20)).collect();
        {
            let tier = DiskTier::open(&d, 64 << 20).unwrap();
            for (w, o) in windows.iter().zip(&originals) {
                tier.put(&key(w), o).await;
            }
        }
        let len = std::fs::metadata(d.join(FILE)).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(FILE))
            .unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        // Either redb repairs it or it is set aside; in both cases what is served is whole.
        let tier = DiskTier::open(&d, 64 << 20).expect("a truncated file is not fatal");
        for (w, o) in windows.iter().zip(&originals) {
            if let Some(back) = tier.get(&key(w)).await {
                assert_eq!(raws(&back), raws(o));
            }
        }
        std::fs::remove_dir_all(&d).ok();
    }

    #[tokio::test]
    async fn the_least_recently_used_windows_go_first_past_the_bound() {
        let d = dir("lru");
        let one = encode_stored(&data(window(0), 20), 0).unwrap().len() as u64;
        let tier = DiskTier::open(&d, one * 3 + one / 2).unwrap();
        for i in 0..3 {
            let w = window(i);
            tier.put(&key(&w), &data(w, 20)).await;
        }
        // Window 0 is read, so window 1 is now the least recently used.
        assert!(tier.get(&key(&window(0))).await.is_some());
        let w = window(3);
        tier.put(&key(&w), &data(w, 20)).await;
        assert!(tier.get(&key(&window(1))).await.is_none(), "evicted");
        for i in [0, 2, 3] {
            assert!(
                tier.get(&key(&window(i))).await.is_some(),
                "window {i} kept"
            );
        }
        assert!(tier.usage().1 <= one * 3 + one / 2);
        assert_eq!(tier.counters.evictions.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&d).ok();
    }

    #[tokio::test]
    async fn a_full_disk_turns_the_tier_off_instead_of_failing() {
        // /dev/full accepts an open and refuses every write with ENOSPC.
        if !Path::new("/dev/full").exists() {
            panic!("this test needs /dev/full (Linux)");
        }
        let d = dir("full");
        std::os::unix::fs::symlink("/dev/full", d.join(FILE)).unwrap();
        match DiskTier::open(&d, 1 << 20) {
            // Refused at start: the gateway runs in memory (lib::build logs it).
            Err(e) => assert!(
                matches!(e, OpenError::Failed(ref m) if !m.is_empty()),
                "{e}"
            ),
            Ok(tier) => {
                let w = window(0);
                tier.put(&key(&w), &data(w, 2)).await;
                assert!(!tier.is_healthy(), "a failed write turns the tier off");
                assert!(tier.get(&key(&w)).await.is_none());
            }
        }
        // Nothing was set aside: /dev/full is not a corrupt store.
        assert!(std::fs::symlink_metadata(d.join(FILE)).is_ok());
        std::fs::remove_dir_all(&d).ok();
    }
}

//! Rendered answers, kept with their compressed forms.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::HeaderValue;
use jiff::Timestamp;
use moka::Expiry;
use tokio::time::Instant;

use crate::{config::CacheSettings, encoding::Coding};

/// A stored answer, ready to send again: the complete body of a hit, and its compressed
/// forms, each made once, on the first request that asks for it (see [`crate::encoding`]).
#[derive(Debug)]
pub struct Rendered {
    /// The whole identity body of a hit (for JSON pages: `meta.cache` "HIT", 0 calls).
    pub body: Bytes,
    pub content_type: HeaderValue,
    /// `Content-Disposition` of exports.
    pub disposition: Option<HeaderValue>,
    /// The ETag of JSON pages (computed over the head, so hit and miss share it).
    pub etag: Option<HeaderValue>,
    pub fresh_until: Instant,
    /// Wall-clock fetch time of its oldest window (Unix ms), for `Age`.
    pub fetched_unix_ms: i64,
    /// The oldest purge epoch of its windows: not served once a purge raised the epoch.
    pub epoch: u64,
    /// br, zstd, gzip, deflate, in the order of [`Coding::STORED`].
    forms: [tokio::sync::OnceCell<Bytes>; 4],
}

impl Rendered {
    pub fn new(
        body: Bytes,
        content_type: HeaderValue,
        etag: Option<HeaderValue>,
        fresh_until: Instant,
    ) -> Self {
        Rendered {
            body,
            content_type,
            disposition: None,
            etag,
            fresh_until,
            fetched_unix_ms: Timestamp::now().as_millisecond(),
            epoch: 0,
            forms: Default::default(),
        }
    }

    /// The stored bytes in `coding`, if that form was made already.
    pub fn form(&self, coding: Coding) -> Option<&Bytes> {
        match coding.stored_index() {
            None => Some(&self.body),
            Some(i) => self.forms[i].get(),
        }
    }

    /// Bytes held, for the weigher: the body and every form made so far.
    fn weight(&self) -> usize {
        self.body.len()
            + self
                .forms
                .iter()
                .filter_map(|f| f.get())
                .map(Bytes::len)
                .sum::<usize>()
            + self.etag.as_ref().map_or(0, HeaderValue::len)
            + self.disposition.as_ref().map_or(0, HeaderValue::len)
            + std::mem::size_of::<Self>()
    }
}

/// Stored answers of complete requests (JSON pages, exports, summaries).
pub struct ResponseCache {
    store: moka::sync::Cache<String, Arc<Rendered>>,
    /// The purge epoch shared with the window cache.
    epoch: super::Epoch,
    /// Compressor runs, for `/metrics` and for tests that prove a hit makes none.
    compressions: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.store.entry_count())
            .finish()
    }
}

struct ResponseExpiry;

impl Expiry<String, Arc<Rendered>> for ResponseExpiry {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Arc<Rendered>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.fresh_until.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
    }
}

impl ResponseCache {
    pub fn new(policy: &CacheSettings) -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(policy.max_bytes / 4)
            .weigher(|k: &String, v: &Arc<Rendered>| {
                u32::try_from(k.len() + v.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(ResponseExpiry)
            .build();
        ResponseCache {
            store,
            epoch: super::Epoch::default(),
            compressions: AtomicU64::new(0),
        }
    }

    /// Shares `epoch` with the window cache (see [`super::Epoch`]).
    pub fn with_epoch(mut self, epoch: super::Epoch) -> Self {
        self.epoch = epoch;
        self
    }

    /// Largest export worth storing whole: an eighth of the responses' share, so one export
    /// cannot flush every page.
    pub fn max_entry_bytes(&self) -> usize {
        usize::try_from(self.store.policy().max_capacity().unwrap_or(0) / 8).unwrap_or(usize::MAX)
    }

    /// The fresh rendering of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<Rendered>> {
        self.store
            .get(key)
            .filter(|r| Instant::now() < r.fresh_until && self.epoch.is_live(r.epoch))
    }

    pub fn insert(&self, key: String, r: Arc<Rendered>) {
        if r.fresh_until > Instant::now() {
            self.store.insert(key, r);
        }
    }

    /// The bytes of `r` (stored under `key`) in `coding`, and the coding they are in. The
    /// first request for a form compresses it, off the runtime, once for all concurrent
    /// askers, and re-weighs the entry; every later one gets the stored bytes (a reference
    /// count, no copy). Should a compressor fail, the identity body is sent.
    pub async fn encoded(&self, key: &str, r: &Arc<Rendered>, coding: Coding) -> (Bytes, Coding) {
        let Some(i) = coding.stored_index() else {
            return (r.body.clone(), Coding::Identity);
        };
        if let Some(b) = r.forms[i].get() {
            return (b.clone(), coding);
        }
        let mut made_here = false;
        let made = r.forms[i]
            .get_or_try_init(|| async {
                made_here = true;
                self.compressions.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("gateway_compressions_total", "coding" => coding.token())
                    .increment(1);
                let body = r.body.clone();
                match tokio::task::spawn_blocking(move || crate::encoding::compress(coding, &body))
                    .await
                {
                    Ok(Ok(b)) => Ok(b),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        match made {
            Ok(b) => {
                let b = b.clone();
                if made_here && self.store.get(key).is_some_and(|cur| Arc::ptr_eq(&cur, r)) {
                    // Same entry, new weight: the form now counts in CACHE_MAX_BYTES.
                    self.store.insert(key.to_owned(), Arc::clone(r));
                }
                (b, coding)
            }
            Err(e) => {
                tracing::warn!(error = %e, coding = coding.token(), "compressing a stored answer failed; sending it plain");
                (r.body.clone(), Coding::Identity)
            }
        }
    }

    /// How many times a stored form was compressed since start.
    pub fn compressions(&self) -> u64 {
        self.compressions.load(Ordering::Relaxed)
    }

    pub fn purge(&self) {
        self.store.invalidate_all();
    }

    /// (entries, bytes), after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.store.run_pending_tasks();
        (self.store.entry_count(), self.store.weighted_size())
    }
}

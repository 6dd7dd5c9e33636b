//! What is cached, under which key, and for how long — all in this one file.
//!
//! * **Windows** ([`WindowCache`]): the merged records of one upstream window, keyed by
//!   everything that changes the vendor's answer ([`WindowKey`]: bounds, offset, normalised
//!   filters and fields). Freshness follows recency: a window that ended more than
//!   `CACHE_SETTLE` ago cannot change and stays fresh for `CACHE_TTL_PAST`; one touching the
//!   recent past or now stays fresh for `CACHE_TTL_RECENT`; an incomplete one never longer
//!   than that. An expired window is kept `CACHE_STALE_GRACE` longer, to be served — flagged
//!   stale — only when the upstream cannot give a fresh one.
//! * **Coalescing**: concurrent misses of one key share a single fetch, run as its own task,
//!   so a caller that disconnects does not cancel it for the others.
//! * **Rendered responses** ([`ResponseCache`]): the bytes of a complete answer (a JSON
//!   page, a CSV or NDJSON export, a summary), keyed by the normalised request, fresh as
//!   long as its freshest-expiring window, with its compressed forms made once each; a
//!   repeat is served without merging, rendering or compressing anything.
//!
//! Both are moka caches bounded in bytes by `CACHE_MAX_BYTES` (windows 3/4, responses 1/4).
//! Freshness is checked against Tokio's clock (so tests can pause time); moka's own expiry
//! only reclaims memory after the stale grace.

pub mod disk;
pub mod epoch;
pub mod purge;
pub mod redis;
mod responses;
pub mod tier;
mod windows;

pub use self::{
    epoch::Epoch,
    responses::{Rendered, ResponseCache},
    tier::{FetchLock, MemoryTier, Tier},
    windows::{CacheCounters, Refetch, WindowCache},
};

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use tokio::time::Instant;

use crate::{merge::Record, plan::Window, upstream::Filters};

/// Why the cache starts a window fetch: for a caller waiting on it, to revalidate a copy
/// it served stale, or to refresh a polled window ahead of expiry. The fetcher gives each
/// its place in the budget's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Caller,
    Revalidate,
    RefreshAhead,
}

/// Version of what the tiers store under a key (the encoding of a window, the key layout).
/// It is part of every [`Namespace`], so a gateway that changes it never reads what an
/// older one wrote: a change of format is a change of name.
pub const STORED_FORMAT: i64 = 2;

/// Whose data a cached thing is: the upstream identity (base URL, account id, vendor
/// endpoint path) and the [`STORED_FORMAT`]. Every key of every tier carries one — the
/// namespace of pingora-cache's `CacheKey`, nginx's host in `proxy_cache_key` — so no
/// configuration change can make the gateway answer one account's records for another.
///
/// Equal exactly when the digest is: the label is only a readable prefix for Redis keys.
#[derive(Clone)]
pub struct Namespace {
    digest: [u8; 32],
    /// `<account id>:<12 hex digits of the upstream digest>`: readable in Redis, and one
    /// per upstream account whatever the stored format (the budget log lives under it).
    label: Arc<str>,
}

impl Namespace {
    /// The namespace of the account `account_id` reached at `base_url` through the vendor
    /// endpoint `endpoint_path`.
    pub fn new(base_url: &str, account_id: &str, endpoint_path: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        let upstream = {
            let mut e = KeyEncoder::default();
            e.text("upstream");
            e.text(base);
            e.text(account_id);
            e.text(endpoint_path);
            e.finish()
        };
        let mut e = KeyEncoder::default();
        e.text("namespace");
        e.int(STORED_FORMAT);
        e.bytes(&upstream);
        let label = format!("{account_id}:{}", &hex(&upstream)[..12]);
        Namespace {
            digest: e.finish(),
            label: label.into(),
        }
    }

    /// The digest every key built in this namespace includes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Readable, stable name of the upstream account (Redis key prefix).
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl PartialEq for Namespace {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Namespace {}

impl std::hash::Hash for Namespace {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// Everything that changes an upstream answer for a window, and whose answer it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowKey {
    pub ns: Namespace,
    pub start: i64,
    pub end: i64,
    pub offset_seconds: i32,
    pub filters: Arc<Filters>,
}

impl WindowKey {
    pub fn new(ns: &Namespace, w: &Window, filters: &Arc<Filters>) -> Self {
        WindowKey {
            ns: ns.clone(),
            start: w.start.as_second(),
            end: w.end.as_second(),
            offset_seconds: w.offset_seconds,
            filters: Arc::clone(filters),
        }
    }

    /// Digest of the whole key in the unambiguous [`KeyEncoder`] encoding, namespace
    /// included: the name of this window in every tier outside this process (disk, Redis).
    pub fn digest(&self) -> [u8; 32] {
        let mut e = KeyEncoder::default();
        e.text("window");
        e.bytes(self.ns.digest());
        e.int(self.start);
        e.int(self.end);
        e.int(i64::from(self.offset_seconds));
        e.filters(&self.filters);
        e.finish()
    }

    /// Everything but the bounds: windows of one family differ only in their span, so the
    /// records of one are a subset of another's exactly when its span is (see
    /// [`WindowKey::contains`]).
    pub(crate) fn family(&self) -> Family {
        (
            self.ns.clone(),
            self.offset_seconds,
            Arc::clone(&self.filters),
        )
    }

    /// Whether `self`'s answer holds every record of `inner`'s: same filters, fields and
    /// offset (so record times are written the same way and the vendor filters the same
    /// way), and a span that covers `inner`'s, to the second. Equal keys contain each other.
    pub fn contains(&self, inner: &WindowKey) -> bool {
        self.ns == inner.ns
            && self.offset_seconds == inner.offset_seconds
            && self.filters == inner.filters
            && self.start <= inner.start
            && inner.end <= self.end
    }
}

/// Namespace, offset and filters: what [`WindowKey`]s that may contain one another share.
pub(crate) type Family = (Namespace, i32, Arc<Filters>);

/// The records of a container that fall in `[start, end]` (Unix seconds, inclusive, as the
/// vendor's range is), in the container's order. `None` when a record's start time could
/// not be read: where the vendor would put it is then unknown, so only a fetch can tell.
///
/// Exact because every record of one window family carries its local time in the same
/// offset, which [`Record::start`] turns into the instant the vendor's filter compares.
pub fn select_within(records: &[Record], start: i64, end: i64) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    for r in records {
        let t = r.start?;
        if start <= t && t <= end {
            out.push(r.clone());
        }
    }
    Some(out)
}

/// Everything that selects the records of a request (whose, range, zone as asked, filters,
/// fields, and the record filters applied to the merged windows), as a typed value. Its
/// [`QueryKey::digest`] — SHA-256 over a length-prefixed
/// encoding, so no choice of filter value can make two different queries equal — keys the
/// rendered-response cache and binds cursors.
#[derive(Debug, Clone, Copy)]
pub struct QueryKey<'a> {
    /// Which answer this is (`interactions`, `summary`, …): equal ranges of different routes
    /// never share a key.
    pub route: &'static str,
    /// Whose records: the digest of the account's [`Namespace`] (of the list of them, for a
    /// summary over several accounts).
    pub ns: &'a [u8; 32],
    pub from: i64,
    pub to: i64,
    /// The zone as the caller wrote it (it is echoed in `meta.tz`).
    pub tz: &'a str,
    pub filters: &'a Filters,
    /// The lists of the record filters applied to the merged records (`agent`,
    /// `direction`, `finalStatus`, `smartStatus`, `disposition`, in that order): never sent
    /// upstream, so never in a [`WindowKey`], but they select what the answer holds.
    pub select: [&'a [String]; 5],
}

impl QueryKey<'_> {
    /// The key's digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut e = KeyEncoder::default();
        e.text(self.route);
        e.bytes(self.ns);
        e.int(self.from);
        e.int(self.to);
        e.text(self.tz);
        e.filters(self.filters);
        for list in self.select {
            e.list(list);
        }
        e.finish()
    }
}

/// Unambiguous key encoding: every value carries its length, every list its count, so
/// two different sequences of values never encode alike (then hashed with SHA-256).
#[derive(Default)]
pub struct KeyEncoder {
    hash: sha2::Sha256,
}

impl KeyEncoder {
    pub fn bytes(&mut self, b: &[u8]) {
        use sha2::Digest;
        self.hash.update((b.len() as u64).to_be_bytes());
        self.hash.update(b);
    }

    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn int(&mut self, v: i64) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn list(&mut self, items: &[String]) {
        self.int(items.len() as i64);
        for i in items {
            self.text(i);
        }
    }

    /// Every filter list, in one fixed order.
    pub fn filters(&mut self, f: &Filters) {
        for list in [&f.channels, &f.queues, &f.bots, &f.fields] {
            self.list(list);
        }
    }

    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.hash.finalize().into()
    }
}

/// Hex text of a digest (response-cache keys).
pub fn hex(d: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(d.len() * 2);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The records of one window, as fetched, merged and cross-checked.
#[derive(Debug)]
pub struct WindowData {
    pub window: Window,
    /// De-duplicated and in output order.
    pub records: Vec<Record>,
    /// Why this window is not known to be whole (empty when it is).
    pub warnings: Vec<String>,
    /// Upstream calls it took.
    pub calls: u32,
    /// Set by the cache on insert.
    pub fresh_for: Duration,
    pub fetched_at: Instant,
    /// Wall-clock time of the fetch (Unix ms): for `Age`, and freshness across restarts.
    pub fetched_unix_ms: i64,
    pub weight: u32,
    /// Fetched by another replica and taken from the shared L2 cache.
    pub shared: bool,
    /// The purge [`Epoch`] its fetch began in: not served once a purge raised the epoch.
    pub epoch: u64,
}

impl WindowData {
    pub fn new(window: Window, records: Vec<Record>, warnings: Vec<String>, calls: u32) -> Self {
        let weight = records.iter().map(Record::weight).sum::<usize>() + 256;
        WindowData {
            window,
            records,
            warnings,
            calls,
            fresh_for: Duration::ZERO,
            fetched_at: Instant::now(),
            fetched_unix_ms: Timestamp::now().as_millisecond(),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            shared: false,
            epoch: 0,
        }
    }

    pub fn complete(&self) -> bool {
        self.warnings.is_empty()
    }

    /// The same window's facts (span, warnings, calls, freshness, age) without its records:
    /// what judging an answer needs once the records were rendered and let go.
    pub fn without_records(&self) -> WindowData {
        WindowData {
            window: self.window,
            records: Vec::new(),
            warnings: self.warnings.clone(),
            calls: self.calls,
            fresh_for: self.fresh_for,
            fetched_at: self.fetched_at,
            fetched_unix_ms: self.fetched_unix_ms,
            weight: 0,
            shared: self.shared,
            epoch: self.epoch,
        }
    }

    pub fn fresh_until(&self) -> Instant {
        self.fetched_at + self.fresh_for
    }

    /// How long ago it expired (zero while fresh).
    pub fn expired_for(&self) -> Duration {
        Instant::now().saturating_duration_since(self.fresh_until())
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.fresh_until()
    }

    /// Seconds of freshness left: negative once expired (`Cache-Status` `ttl`).
    pub fn ttl_seconds(&self) -> i64 {
        let now = Instant::now();
        let until = self.fresh_until();
        if now < until {
            until.duration_since(now).as_secs() as i64
        } else {
            // Expired is never `ttl=0`: at least one second past.
            let over = now.duration_since(until);
            -((over.as_secs() + u64::from(over.subsec_nanos() > 0)).max(1) as i64)
        }
    }

    /// How long ago it was fetched, by the wall clock (`Age`).
    pub fn age_seconds(&self) -> u64 {
        let ms = Timestamp::now().as_millisecond() - self.fetched_unix_ms;
        u64::try_from(ms / 1000).unwrap_or(0)
    }
}

/// Where a window's data came from for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fresh from the cache.
    Hit,
    /// Fetched for this request (or a concurrent identical one).
    Miss,
    /// Expired copy served because the upstream failed.
    Stale,
    /// Expired less than CACHE_SWR ago: served at once while it is refreshed behind.
    Revalidating,
}

impl Source {
    /// Served from an expired copy.
    pub fn is_stale(self) -> bool {
        matches!(self, Source::Stale | Source::Revalidating)
    }
}

/// One window's answer for a request.
#[derive(Debug, Clone)]
pub struct WindowOutcome {
    pub data: Arc<WindowData>,
    pub source: Source,
    /// Upstream calls this request made for it (0 when it waited on another's fetch).
    pub calls: u32,
    /// It joined another caller's fetch of the same window.
    pub collapsed: bool,
}

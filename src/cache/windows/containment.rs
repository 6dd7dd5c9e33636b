//! Answering a window from a cached one that contains it: same namespace, filters, fields
//! and offset, a span that covers it. The span index finds the containers without scanning
//! the cache; a complete window replaces the parts it contains.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
};

use jiff::Timestamp;

use super::{
    super::{Family, WindowData, WindowKey, select_within},
    WindowCache,
    flight::Leader,
    lock,
};
use crate::plan::Window;

/// The spans of the cached windows, by family, to find a container without scanning the
/// cache. Kept in step with the store by its insertions and its eviction listener.
pub(super) type SpanIndex = Arc<Mutex<HashMap<Family, std::collections::BTreeSet<(i64, i64)>>>>;

impl WindowCache {
    /// A window answered from a fresh, complete cached window that contains it, by
    /// selecting its records locally: no upstream call. The answer is fresh exactly as long
    /// as its container (same fetch time, same freshness), and is kept under its own key.
    pub async fn contained(&self, key: &WindowKey) -> Option<Arc<WindowData>> {
        if !self.containment.load(Ordering::Relaxed) {
            return None;
        }
        // Spans starting at or before this one's start; those that also end at or after its
        // end contain it.
        let candidates = indexed(&self.spans, key, ..=(key.start, i64::MAX), |s, e| {
            s <= key.start && key.end <= e
        });
        for outer in candidates {
            debug_assert!(outer.contains(key));
            let Some(c) = self.live(&outer).await else {
                continue;
            };
            if !c.is_fresh() || !c.complete() {
                continue;
            }
            let Some(records) = select_within(&c.records, key.start, key.end) else {
                continue;
            };
            let window = Window {
                start: Timestamp::from_second(key.start).ok()?,
                end: Timestamp::from_second(key.end).ok()?,
                offset_seconds: key.offset_seconds,
            };
            let mut data = WindowData::new(window, records, Vec::new(), 0);
            data.fetched_at = c.fetched_at;
            data.fetched_unix_ms = c.fetched_unix_ms;
            data.fresh_for = c.fresh_for;
            data.epoch = c.epoch;
            let data = Arc::new(data);
            self.store.insert(key.clone(), Arc::clone(&data)).await;
            index(&self.spans, key);
            return Some(data);
        }
        None
    }
}

impl Leader {
    /// Removes the windows this fresh, complete one contains (the parts it was assembled
    /// from, above all): containment answers them from it, sharing its records, so keeping
    /// them would only weigh the same records twice against the bound. (With containment
    /// off, a benchmark's knob, they stay: nothing else would answer them.)
    pub(super) async fn drop_contained(&self) {
        let key = &self.key;
        // Spans starting within this one; those that also end within it are contained.
        let inner = indexed(
            &self.spans,
            key,
            (key.start, i64::MIN)..=(key.end, key.end),
            |s, e| key.start <= s && e <= key.end,
        );
        for k in inner {
            self.store.invalidate(&k).await;
        }
    }
}

/// The keys of `key`'s family indexed with a span in `range` that `keep(start, end)`
/// accepts, `key`'s own span excepted: the containers or the contents of `key`.
pub(super) fn indexed(
    spans: &SpanIndex,
    key: &WindowKey,
    range: impl std::ops::RangeBounds<(i64, i64)>,
    keep: impl Fn(i64, i64) -> bool,
) -> Vec<WindowKey> {
    let spans = lock(spans);
    let Some(set) = spans.get(&key.family()) else {
        return Vec::new();
    };
    set.range(range)
        .filter(|&&(s, e)| (s, e) != (key.start, key.end) && keep(s, e))
        .map(|&(start, end)| WindowKey {
            start,
            end,
            ..key.clone()
        })
        .collect()
}

/// Records that `key` is in the store, for [`WindowCache::contained`].
pub(super) fn index(spans: &SpanIndex, key: &WindowKey) {
    lock(spans)
        .entry(key.family())
        .or_default()
        .insert((key.start, key.end));
}

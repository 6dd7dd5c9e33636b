//! What an account's traffic looks like: records per second seen, per set of upstream
//! filters, learnt from every first page the account answers. It turns a range not yet
//! fetched into an estimate of the calls it needs — before a request spends any (is the
//! range servable within KORE_MAX_WAIT?) and for a job's first ETA.
//!
//! A window's first page says how many records the window holds (`numResults`, or the page
//! itself when it is short), so one call teaches the volume of up to seven days. Filters
//! change the volume (one channel is a fraction of all), so each filter set learns its own;
//! the fields asked for do not, and are left out of the key. Recent observations weigh more
//! (an exponential decay), so the estimate follows the account as it changes.

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::watch;

use super::estimated_calls;
use crate::{plan::Window, upstream::Filters};

/// Weight kept by older observations at each new one (about the last 20 windows count).
const DECAY: f64 = 0.95;
/// Filter sets remembered per account (the oldest is forgotten beyond).
const MAX_FAMILIES: usize = 256;
/// Span of observations (decayed seconds) before the volume may refuse a request: two
/// weeks. Days differ a lot (a campaign day can hold forty times an ordinary one), and a
/// refusal on the strength of one such day would turn away a range that fits.
const CONFIDENT_SECONDS: f64 = 14.0 * 86_400.0;

/// Records and seconds observed for one filter set, decayed.
#[derive(Debug, Clone, Copy, Default)]
struct Density {
    records: f64,
    seconds: f64,
    /// Observation counter when last updated (to forget the least recent set).
    last: u64,
}

/// One account's learnt volume.
#[derive(Debug)]
pub struct Volume {
    by_family: Mutex<HashMap<Family, Density>>,
    /// Bumped on every observation: a waiter for a first estimate (a job's probe) wakes.
    seen: watch::Sender<u64>,
}

/// The filters that change how many records match (channels, queues, bots).
type Family = (Vec<String>, Vec<String>, Vec<String>);

fn family(f: &Filters) -> Family {
    (f.channels.clone(), f.queues.clone(), f.bots.clone())
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            by_family: Mutex::new(HashMap::new()),
            seen: watch::channel(0).0,
        }
    }
}

impl Volume {
    /// A window of `seconds` matched `records` under `filters`.
    pub fn observe(&self, filters: &Filters, seconds: i64, records: u64) {
        if seconds <= 0 {
            return;
        }
        let mut map = self.by_family.lock().unwrap_or_else(|p| p.into_inner());
        let tick = *self.seen.borrow() + 1;
        if map.len() >= MAX_FAMILIES && !map.contains_key(&family(filters)) {
            let oldest = map
                .iter()
                .min_by_key(|(_, d)| d.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let d = map.entry(family(filters)).or_default();
        d.records = d.records * DECAY + records as f64;
        d.seconds = d.seconds * DECAY + seconds as f64;
        d.last = tick;
        drop(map);
        self.seen.send_replace(tick);
    }

    /// Records per second matching `filters`, when any window with them was seen.
    pub fn per_second(&self, filters: &Filters) -> Option<f64> {
        let map = self.by_family.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&family(filters))
            .filter(|d| d.seconds > 0.0)
            .map(|d| d.records / d.seconds)
    }

    /// [`Volume::per_second`] once enough has been seen to refuse a request on its
    /// strength (two weeks of windows).
    pub fn per_second_confident(&self, filters: &Filters) -> Option<f64> {
        let map = self.by_family.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&family(filters))
            .filter(|d| d.seconds >= CONFIDENT_SECONDS)
            .map(|d| d.records / d.seconds)
    }

    /// Upstream calls `window` is expected to need under `filters`: its expected records
    /// (none for the part of it still in the future) through [`estimated_calls`]. `None` when
    /// nothing is known of these filters yet.
    pub fn expected_calls(&self, filters: &Filters, window: &Window, now: i64) -> Option<u64> {
        Self::calls_at(self.per_second(filters)?, window, now)
    }

    /// [`Volume::expected_calls`] from the confident volume only.
    pub fn expected_calls_confident(
        &self,
        filters: &Filters,
        window: &Window,
        now: i64,
    ) -> Option<u64> {
        Self::calls_at(self.per_second_confident(filters)?, window, now)
    }

    fn calls_at(rate: f64, window: &Window, now: i64) -> Option<u64> {
        if window.start.as_second() > now {
            return Some(0);
        }
        let seconds = window.end.as_second().min(now) - window.start.as_second() + 1;
        let records = (rate * seconds as f64).round() as u64;
        Some(estimated_calls(records))
    }

    /// A receiver that changes at every observation (subscribe, then check, then wait).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.seen.subscribe()
    }

    /// Resolves once something is known of `filters` (at once if it already is).
    pub async fn known(&self, filters: &Filters) {
        let mut rx = self.seen.subscribe();
        loop {
            if self.per_second(filters).is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn week(from: i64) -> Window {
        Window {
            start: Timestamp::from_second(from).unwrap(),
            end: Timestamp::from_second(from + 7 * 86_400 - 1).unwrap(),
            offset_seconds: 0,
        }
    }

    #[test]
    fn learns_per_filter_set_and_estimates_calls() {
        let v = Volume::default();
        let all = Filters::default();
        let voice = Filters {
            channels: vec!["voice".into()],
            ..Filters::default()
        };
        let w = week(1_700_000_000);
        assert_eq!(v.expected_calls(&all, &w, i64::MAX), None);
        // 385 records a week: four pages.
        v.observe(&all, 7 * 86_400, 385);
        assert_eq!(v.expected_calls(&all, &w, i64::MAX), Some(4));
        assert_eq!(
            v.expected_calls(&voice, &w, i64::MAX),
            None,
            "its own volume"
        );
        // Fields do not change the count.
        let skills = Filters {
            fields: vec!["skills".into()],
            ..Filters::default()
        };
        assert_eq!(v.expected_calls(&skills, &w, i64::MAX), Some(4));
        // A window in the future costs nothing; one half in the future, half as much.
        let start = w.start.as_second();
        assert_eq!(v.expected_calls(&all, &w, start - 1), Some(0));
        assert_eq!(v.expected_calls(&all, &w, start + 7 * 86_400 / 2), Some(2));
    }

    #[test]
    fn recent_observations_weigh_more() {
        let v = Volume::default();
        let f = Filters::default();
        for _ in 0..50 {
            v.observe(&f, 86_400, 100);
        }
        for _ in 0..50 {
            v.observe(&f, 86_400, 1_000);
        }
        let per_day = v.per_second(&f).unwrap() * 86_400.0;
        assert!(per_day > 900.0, "{per_day}");
    }
}

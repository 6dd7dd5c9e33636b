//! Judging an answer (pure): what the outcomes of a range's windows say about the whole
//! response — complete or not, fresh or stale, hit or miss, how old — and how that is said
//! on the wire (`meta.cache`, `X-Cache`, `Cache-Status`). One judgement for every route
//! that answers from windows; `fetch` produces the outcomes, `api` and `render` read this.

use crate::cache::{Source, WindowOutcome};

/// How this response was produced, for `meta.cache` and `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Partial,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Partial => "PARTIAL",
        }
    }
}

/// What the outcomes of a range's windows say about the whole answer; one judgement for
/// every route that answers from windows.
#[derive(Debug)]
pub struct Assessment {
    /// Every window's count checked out.
    pub complete: bool,
    /// Some window is an expired copy (stale-while-revalidate, or the upstream failed).
    pub stale: bool,
    /// Why not complete, and which windows are stale.
    pub warnings: Vec<String>,
    /// HIT when no window needed the upstream, MISS when all did, PARTIAL otherwise.
    pub cache: CacheStatus,
    /// Upstream calls this request made.
    pub calls: u32,
    /// Freshness left of the window that expires first, in seconds (negative once expired).
    pub ttl: i64,
    /// Age of the oldest data in the answer, in seconds.
    pub age: u64,
    /// Some window joined another caller's fetch.
    pub collapsed: bool,
    /// Some window was served expired because the upstream failed.
    pub stale_if_error: bool,
}

impl Assessment {
    /// The `Cache-Status` field (RFC 9211) of an answer built from these windows: `hit`
    /// with the freshness left (negative when stale) when no window needed the upstream;
    /// otherwise `fwd=miss` (`fwd=request` when an admin asked to bypass the cache), with
    /// `stored` when the answer is kept for repeats and `collapsed` when it joined another
    /// caller's fetch; a `detail` says why an answer is partial or stale.
    pub fn cache_status(&self, forced: bool, stored: bool) -> String {
        let mut v = String::from("kore-gateway");
        if self.cache == CacheStatus::Hit && !forced {
            v.push_str(&format!("; hit; ttl={}", self.ttl));
        } else {
            v.push_str(if forced {
                "; fwd=request"
            } else {
                "; fwd=miss"
            });
            if stored {
                v.push_str("; stored");
            }
            if self.collapsed {
                v.push_str("; collapsed");
            }
            if self.stale {
                v.push_str(&format!("; ttl={}", self.ttl));
            }
        }
        let detail = if !self.complete {
            Some("incomplete")
        } else if self.stale_if_error {
            Some("stale-if-error")
        } else if self.stale {
            Some("revalidating")
        } else {
            None
        };
        if let Some(d) = detail {
            v.push_str(&format!("; detail={d}"));
        }
        v
    }
}

/// Judges a range's window outcomes.
pub fn assess(outcomes: &[WindowOutcome]) -> Assessment {
    let mut warnings: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.data.warnings.iter().cloned())
        .collect();
    let complete = warnings.is_empty();
    let mut stale = false;
    let mut stale_if_error = false;
    for o in outcomes.iter().filter(|o| o.source.is_stale()) {
        stale = true;
        let (start, end) = (o.data.window.vendor_start(), o.data.window.vendor_end());
        if o.source == Source::Stale {
            stale_if_error = true;
            warnings.push(format!(
                "window {start} .. {end} could not be refreshed from the upstream; served from a copy fetched {} s ago",
                o.data.age_seconds()
            ));
        } else {
            warnings.push(format!(
                "window {start} .. {end} expired {} s ago; served from the copy fetched {} s ago while it is refreshed",
                o.data.expired_for().as_secs(),
                o.data.age_seconds()
            ));
        }
    }
    let hits = outcomes.iter().filter(|o| o.source != Source::Miss).count();
    let cache = if hits == outcomes.len() {
        CacheStatus::Hit
    } else if hits == 0 {
        CacheStatus::Miss
    } else {
        CacheStatus::Partial
    };
    Assessment {
        complete,
        stale,
        warnings,
        cache,
        calls: outcomes.iter().map(|o| o.calls).sum(),
        ttl: outcomes
            .iter()
            .map(|o| o.data.ttl_seconds())
            .min()
            .unwrap_or(0),
        age: outcomes
            .iter()
            .map(|o| o.data.age_seconds())
            .max()
            .unwrap_or(0),
        collapsed: outcomes.iter().any(|o| o.collapsed),
        stale_if_error,
    }
}

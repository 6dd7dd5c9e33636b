//! Fan-out: every window of a range, every page of every window, in parallel.
//!
//! Each window asks for its first page; `numResults` then says how many more pages to ask
//! for, all at once. A window holding more than the 1,100 records its 11 pages can reach is
//! cut into enough parts on its local grid (days, then 6 h, hours, …) that each should fit,
//! fetched at once, and cut again if one still does not — so no record is left behind, in
//! few round trips. Each part goes through the window cache under its own key, and parts of
//! overlapping windows line up on the grid, so they share what they have in common. A page that comes back
//! full past what `numResults` promised means it understated, so paging goes on. Each part's
//! unique count is cross-checked against its `numResults`; a mismatch becomes a warning that
//! makes the response say `complete: false`.
//!
//! Every call (retries included) first takes a permit from the shared [`Budget`], which
//! bounds both the rate and the concurrency, fairly across callers. Transient failures are
//! retried with exponential backoff and jitter, honouring `Retry-After`; a refused token is
//! re-minted once; a bad request is not retried.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU32, Ordering},
    },
    time::Duration,
};

use futures_util::{
    FutureExt, StreamExt,
    future::{BoxFuture, try_join_all},
    stream::BoxStream,
};

use crate::{
    budget::Budget,
    cache::{Source, WindowCache, WindowData, WindowKey, WindowOutcome},
    merge::{Record, cross_check, dedupe_and_sort},
    plan::Window,
    render::CacheStatus,
    upstream::{Filters, MAX_PAGE, MAX_REACH, PAGE_LIMIT, Page, UpstreamClient, UpstreamError},
};

/// The records of one window or part of one, with the warnings of any part whose count did
/// not check out.
struct Part {
    records: Vec<Record>,
    warnings: Vec<String>,
}

/// What fetching one window gave.
enum Fetched {
    /// Its records (de-duplicated, ordered) and warnings.
    Part(Part),
    /// It holds more than one query reaches: fetch these parts instead.
    Cut(Vec<Window>),
}

/// Who is asking, for fairness and tracing.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub caller: Arc<str>,
    pub request_id: Arc<str>,
}

/// Upstream client, budget and retry policy, shared by every fetch task.
#[derive(Debug)]
pub struct Fetcher {
    client: UpstreamClient,
    budget: Budget,
    retries: u32,
    max_wait: Duration,
    /// Unix seconds of the last successful upstream answer (0: none yet), for `/readyz`.
    last_ok: AtomicI64,
}

impl Fetcher {
    pub fn new(client: UpstreamClient, budget: Budget, retries: u32, max_wait: Duration) -> Self {
        Fetcher {
            client,
            budget,
            retries,
            max_wait,
            last_ok: AtomicI64::new(0),
        }
    }

    /// Unix seconds of the last successful upstream answer, 0 when there was none.
    pub fn last_ok(&self) -> i64 {
        self.last_ok.load(Ordering::Relaxed)
    }

    /// Records a successful upstream answer.
    pub fn mark_ok(&self) {
        self.last_ok
            .store(jiff::Timestamp::now().as_second(), Ordering::Relaxed);
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Takes a budget permit for one call of `ctx`'s caller.
    ///
    /// # Errors
    /// [`UpstreamError::Budget`] when none is granted within KORE_MAX_WAIT.
    pub async fn permit(
        &self,
        ctx: &CallContext,
    ) -> Result<crate::budget::CallPermit, UpstreamError> {
        self.budget.acquire(&ctx.caller).await.map_err(|e| {
            metrics::counter!("gateway_budget_exhausted_total").increment(1);
            UpstreamError::Budget {
                retry_after: e.retry_after,
            }
        })
    }

    /// One page, with budget, retries and token re-minting.
    async fn call(
        &self,
        window: &Window,
        filters: &Filters,
        page: u32,
        ctx: &CallContext,
        calls: &AtomicU32,
    ) -> Result<Page, UpstreamError> {
        let mut attempt = 0;
        let mut reminted = false;
        loop {
            let permit = self.permit(ctx).await?;
            let started = std::time::Instant::now();
            let result = self
                .client
                .fetch_page(window, filters, page, &ctx.request_id)
                .await;
            drop(permit);
            calls.fetch_add(1, Ordering::Relaxed);
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            metrics::counter!("gateway_upstream_calls_total", "outcome" => outcome).increment(1);
            metrics::histogram!("gateway_upstream_call_seconds")
                .record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(p) => {
                    self.mark_ok();
                    return Ok(p);
                }
                Err(e) => e,
            };
            match &err {
                UpstreamError::Unauthorized(_) if !reminted => {
                    reminted = true;
                    self.client.invalidate_token();
                    tracing::warn!(request_id = %ctx.request_id, "upstream refused the token; re-minting once");
                    continue;
                }
                e if e.is_retryable() && attempt < self.retries => {
                    let hinted = match e {
                        UpstreamError::RateLimited { retry_after } => *retry_after,
                        _ => None,
                    };
                    if hinted.is_some_and(|h| h > self.max_wait) {
                        // Waiting that long would break the promise of KORE_MAX_WAIT.
                        return Err(UpstreamError::Budget {
                            retry_after: hinted.unwrap_or(self.max_wait),
                        });
                    }
                    let pause = backoff(attempt).max(hinted.unwrap_or(Duration::ZERO));
                    attempt += 1;
                    metrics::counter!("gateway_upstream_retries_total").increment(1);
                    tracing::info!(request_id = %ctx.request_id, error = %e, attempt, pause_ms = pause.as_millis() as u64, "retrying upstream call");
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(err),
            }
        }
    }

    /// One tiny call (a one-second window in 2001, first page) to see that the upstream
    /// answers and accepts our token; for `/readyz`.
    ///
    /// # Errors
    /// Whatever the upstream call failed with.
    pub async fn probe(&self) -> Result<(), UpstreamError> {
        let at = jiff::Timestamp::from_second(978_307_200).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let window = Window {
            start: at,
            end: at,
            offset_seconds: 0,
        };
        let ctx = CallContext {
            caller: "readyz".into(),
            request_id: crate::api::new_request_id().into(),
        };
        let calls = AtomicU32::new(0);
        self.call(&window, &Filters::default(), 0, &ctx, &calls)
            .await
            .map(drop)
    }

    /// The records of `window`, or — when it holds more than its pages can reach — the
    /// parts to fetch instead (each goes through the cache on its own: see [`RangeFetch`]).
    async fn fetch_part(
        &self,
        window: Window,
        filters: &Filters,
        ctx: &CallContext,
        calls: &AtomicU32,
    ) -> Result<Fetched, UpstreamError> {
        {
            let first = self.call(&window, filters, 0, ctx, calls).await?;
            let reported = first.num_results;
            if let Some(n) = reported.filter(|n| *n > MAX_REACH) {
                let parts = window.cut_on_grid((2 * n).div_ceil(MAX_REACH).max(2));
                if parts.len() > 1 {
                    return Ok(Fetched::Cut(parts));
                }
            }
            let limit = u64::from(PAGE_LIMIT);
            let promised_pages =
                reported.map_or(1, |n| n.div_ceil(limit).clamp(1, u64::from(MAX_PAGE) + 1)) as u32;
            let mut pages = vec![first];
            if promised_pages > 1 {
                let rest = try_join_all(
                    (1..promised_pages).map(|p| self.call(&window, filters, p, ctx, calls)),
                )
                .await?;
                pages.extend(rest);
            }
            // A full last page means numResults understated: keep paging until a short page.
            let mut next = promised_pages;
            while pages.last().is_some_and(|p| p.data.len() as u64 >= limit) && next <= MAX_PAGE {
                pages.push(self.call(&window, filters, next, ctx, calls).await?);
                next += 1;
            }
            let mut warnings = Vec::new();
            if pages.last().is_some_and(|p| p.data.len() as u64 >= limit) && next > MAX_PAGE {
                // Every reachable page is full: more records exist than one query can reach.
                let parts = window.cut_on_grid(2);
                if parts.len() > 1 {
                    return Ok(Fetched::Cut(parts));
                }
                warnings.push(format!(
                    "window {} .. {} holds more records than the upstream lets one query reach",
                    window.vendor_start(),
                    window.vendor_end()
                ));
            }
            let mut records: Vec<Record> = pages
                .into_iter()
                .flat_map(|p| p.data)
                .map(|raw| Record::new(raw, &window))
                .collect();
            dedupe_and_sort(&mut records);
            warnings.extend(cross_check(&window, records.len(), reported));
            Ok(Fetched::Part(Part { records, warnings }))
        }
    }
}

/// Exponential backoff with jitter: ~250 ms, 500 ms, 1 s … capped at 8 s, each drawn
/// uniformly from its upper half so that synchronized retries spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(8));
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

/// A range request: its windows, through the cache.
#[derive(Clone)]
pub struct RangeFetch {
    pub fetcher: Arc<Fetcher>,
    pub cache: Arc<WindowCache>,
    pub filters: Arc<Filters>,
    pub ctx: CallContext,
    /// Skip fresh cached copies (admin `Cache-Control: no-cache`).
    pub refresh: bool,
}

impl RangeFetch {
    /// One window through the cache.
    ///
    /// # Errors
    /// Upstream failure with no stale copy to stand in.
    pub async fn window(&self, window: Window) -> Result<WindowOutcome, UpstreamError> {
        let key = WindowKey::new(&window, &self.filters);
        let this = self.clone();
        self.cache
            .get_or_fetch(key, self.refresh, move || this.fetch_uncached(window))
            .await
    }

    /// Fetches one window from the upstream. A window too full for one query is cut into
    /// parts on its local grid, and each part goes through the cache under its own key, so
    /// overlapping windows share the parts they have in common and concurrent requests
    /// fetch each part once.
    fn fetch_uncached(
        self,
        window: Window,
    ) -> BoxFuture<'static, Result<WindowData, UpstreamError>> {
        async move {
            let calls = AtomicU32::new(0);
            let fetched = self
                .fetcher
                .fetch_part(window, &self.filters, &self.ctx, &calls)
                .await?;
            let mut calls = calls.load(Ordering::Relaxed);
            let (mut records, warnings) = match fetched {
                Fetched::Part(p) => (p.records, p.warnings),
                Fetched::Cut(parts) => {
                    let outcomes = try_join_all(parts.into_iter().map(|p| self.window(p))).await?;
                    let mut records = Vec::new();
                    let mut warnings = Vec::new();
                    for o in outcomes {
                        calls += o.calls;
                        records.extend(o.data.records.iter().cloned());
                        warnings.extend(o.data.warnings.iter().cloned());
                    }
                    (records, warnings)
                }
            };
            // Parts are disjoint, but a record seen twice across them is still one record.
            dedupe_and_sort(&mut records);
            Ok(WindowData::new(window, records, warnings, calls))
        }
        .boxed()
    }

    /// All windows at once, in order; fails fast on the first error (fetches already under
    /// way go on in their own tasks and fill the cache for the retry).
    ///
    /// # Errors
    /// The first window that failed.
    pub async fn all(&self, windows: &[Window]) -> Result<Vec<WindowOutcome>, UpstreamError> {
        try_join_all(windows.iter().map(|w| self.window(*w))).await
    }

    /// Windows in order with a bounded look-ahead, for streaming without holding the range.
    pub fn stream(
        self,
        windows: Vec<Window>,
        lookahead: usize,
    ) -> BoxStream<'static, Result<WindowOutcome, UpstreamError>> {
        futures_util::stream::iter(windows)
            .map(move |w| {
                let this = self.clone();
                async move { this.window(w).await }
            })
            .buffered(lookahead.max(1))
            .boxed()
    }
}

/// What the outcomes of a range's windows say about the whole answer; one judgement for
/// every route that answers from windows.
#[derive(Debug)]
pub struct Assessment {
    /// Every window's count checked out.
    pub complete: bool,
    /// Some window is an expired copy served because the upstream failed.
    pub stale: bool,
    /// Why not complete, and which windows are stale.
    pub warnings: Vec<String>,
    /// HIT when no window needed the upstream, MISS when all did, PARTIAL otherwise.
    pub cache: CacheStatus,
    /// Upstream calls this request made.
    pub calls: u32,
}

/// Judges a range's window outcomes.
pub fn assess(outcomes: &[WindowOutcome]) -> Assessment {
    let mut warnings: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.data.warnings.iter().cloned())
        .collect();
    let complete = warnings.is_empty();
    let mut stale = false;
    for o in outcomes.iter().filter(|o| o.source == Source::Stale) {
        stale = true;
        warnings.push(format!(
            "window {} .. {} could not be refreshed from the upstream; served from a copy fetched {} s ago",
            o.data.window.vendor_start(),
            o.data.window.vendor_end(),
            o.data.fetched_at.elapsed().as_secs()
        ));
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..10 {
            let d = backoff(attempt);
            let ceiling = Duration::from_millis(250)
                .saturating_mul(1 << attempt.min(5))
                .min(Duration::from_secs(8));
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
    }
}

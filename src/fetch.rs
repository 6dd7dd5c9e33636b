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
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{
    FutureExt, StreamExt,
    future::{BoxFuture, try_join_all},
};
use tracing::Instrument;

use crate::{
    budget::{Budget, Priority},
    cache::{
        Namespace, Purpose, Refetch, Source, WindowCache, WindowData, WindowKey, WindowOutcome,
    },
    merge::{Record, cross_check, dedupe_and_sort},
    plan::Window,
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
    /// What this request may still spend (shared by all its windows).
    pub allowance: Arc<Allowance>,
    /// Where its calls stand in the shared budget's queue.
    pub priority: Priority,
}

/// One account's upstream client, budget and retry policy, shared by every fetch task.
#[derive(Debug)]
pub struct Fetcher {
    client: UpstreamClient,
    budget: Budget,
    retries: u32,
    max_wait: Duration,
    /// The account's name: the `account` label of its metrics.
    account: Arc<str>,
    /// Unix seconds of the last successful upstream answer (0: none yet), for `/readyz`.
    last_ok: AtomicI64,
}

impl Fetcher {
    pub fn new(
        client: UpstreamClient,
        budget: Budget,
        retries: u32,
        max_wait: Duration,
        account: Arc<str>,
    ) -> Self {
        Fetcher {
            client,
            budget,
            retries,
            max_wait,
            account,
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

    /// The account's name as a metrics label value (shared, not copied).
    fn account_label(&self) -> metrics::SharedString {
        metrics::SharedString::from_shared(Arc::clone(&self.account))
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
        self.budget
            .acquire_as(&ctx.caller, ctx.priority)
            .await
            .map_err(|e| {
                metrics::counter!("gateway_budget_exhausted_total", "account" => self.account_label())
                    .increment(1);
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
            ctx.allowance.take()?;
            let asked = std::time::Instant::now();
            let permit = self.permit(ctx).await?;
            let started = std::time::Instant::now();
            let span = tracing::info_span!(
                "upstream.call",
                request_id = %ctx.request_id,
                caller = %ctx.caller,
                page,
                attempt,
                budget_wait_seconds = started.duration_since(asked).as_secs_f64(),
                outcome = tracing::field::Empty,
            );
            let result = self
                .client
                .fetch_page(window, filters, page, &ctx.request_id)
                .instrument(span.clone())
                .await;
            drop(permit);
            calls.fetch_add(1, Ordering::Relaxed);
            ctx.allowance.completed.fetch_add(1, Ordering::Relaxed);
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            span.record("outcome", outcome);
            metrics::counter!("gateway_upstream_calls_total", "outcome" => outcome, "account" => self.account_label(), "key" => self.budget.key_label(&ctx.caller))
                .increment(1);
            metrics::histogram!("gateway_upstream_call_seconds", "account" => self.account_label())
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
                    metrics::counter!("gateway_upstream_retries_total", "account" => self.account_label())
                        .increment(1);
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
            request_id: crate::telemetry::new_request_id().into(),
            allowance: Arc::new(Allowance::unlimited()),
            priority: Priority::Caller,
        };
        let calls = AtomicU32::new(0);
        self.call(&window, &Filters::default(), 0, &ctx, &calls)
            .await
            .map(drop)
    }

    /// The records of `window`, or — when it holds more than its pages can reach — the
    /// parts to fetch instead (each goes through the cache on its own: see [`RangeFetch`]).
    ///
    /// `numResults` is a hint and the pages are the evidence: a page shorter than the limit
    /// ends the window whatever the count says; a window is cut only when its first page came
    /// back full *and* either the count (when believable within the request's allowance) or
    /// the eleventh page says it overflows; a cut makes at most [`MAX_PARTS_PER_CUT`] parts,
    /// and a part of [`MIN_PART_SECONDS`] or less is never cut again. Any disagreement
    /// between count and pages is a warning (so `complete: false`), never another call.
    async fn fetch_part(
        &self,
        window: Window,
        filters: &Filters,
        ctx: &CallContext,
        calls: &AtomicU32,
    ) -> Result<Fetched, UpstreamError> {
        let limit = PAGE_LIMIT as usize;
        let first = self.call(&window, filters, 0, ctx, calls).await?;
        let reported = first.num_results;
        let hint = reported.unwrap_or(0);
        let cuttable = window.len_seconds() > MIN_PART_SECONDS;
        // Pages by index, as far as fetched.
        let mut pages: Vec<Option<Page>> = (0..=MAX_PAGE).map(|_| None).collect();
        let first_full = first.data.len() >= limit;
        pages[0] = Some(first);
        // How many pages to ask for at once next: what the count promises when it is
        // believable, one otherwise (then doubling), so a wrong count costs few calls.
        let mut batch = 1;
        if first_full {
            let estimate = estimated_calls(hint);
            let believable = estimate <= u64::from(ctx.allowance.left());
            if hint > MAX_REACH && cuttable && believable {
                let parts =
                    window.cut_bounded(parts_for(hint), MAX_PARTS_PER_CUT, MIN_PART_SECONDS);
                ctx.allowance.expect_cut(parts.len() as u64, hint);
                return Ok(Fetched::Cut(parts));
            }
            if hint > MAX_REACH {
                // Not believable within this request's allowance (or too short to cut):
                // ask the last reachable page whether the window really overflows.
                let last = self.call(&window, filters, MAX_PAGE, ctx, calls).await?;
                let overflows = last.data.len() >= limit;
                pages[MAX_PAGE as usize] = Some(last);
                if overflows && cuttable {
                    return Err(UpstreamError::OverCallBudget {
                        estimate,
                        limit: ctx.allowance.limit(),
                        retry_after: ctx.allowance.refill(),
                    });
                }
            } else {
                batch = (hint.div_ceil(PAGE_LIMIT as u64) as usize)
                    .saturating_sub(1)
                    .max(1);
                ctx.allowance.expect_pages(batch as u64);
            }
        }
        // Page on while the last page seen is full.
        let mut next = 1usize;
        while next <= MAX_PAGE as usize
            && pages[next - 1]
                .as_ref()
                .is_some_and(|p| p.data.len() >= limit)
        {
            let upto = (next + batch - 1).min(MAX_PAGE as usize);
            let wanted: Vec<usize> = (next..=upto).filter(|i| pages[*i].is_none()).collect();
            let got = try_join_all(
                wanted
                    .iter()
                    .map(|i| self.call(&window, filters, *i as u32, ctx, calls)),
            )
            .await?;
            for (i, p) in wanted.into_iter().zip(got) {
                pages[i] = Some(p);
            }
            // The first short page ends the window; pages after it are not asked for.
            match (next..=upto).find(|i| pages[*i].as_ref().is_some_and(|p| p.data.len() < limit)) {
                Some(short) => next = short + 1,
                None => next = upto + 1,
            }
            batch = batch.saturating_mul(2);
        }
        let mut warnings = Vec::new();
        let reached_end = next > MAX_PAGE as usize
            && pages[MAX_PAGE as usize]
                .as_ref()
                .is_some_and(|p| p.data.len() >= limit);
        if reached_end {
            // Eleven full pages: the pages themselves say more records exist than one query
            // reaches.
            if cuttable {
                let hinted = if estimated_calls(hint) <= u64::from(ctx.allowance.left()) {
                    parts_for(hint)
                } else {
                    2
                };
                let parts = window.cut_bounded(hinted, MAX_PARTS_PER_CUT, MIN_PART_SECONDS);
                ctx.allowance.expect_cut(parts.len() as u64, hint);
                return Ok(Fetched::Cut(parts));
            }
            warnings.push(format!(
                "window {} .. {} holds more records than the upstream lets one query reach, even cut to {MIN_PART_SECONDS} s",
                window.vendor_start(),
                window.vendor_end()
            ));
        }
        // Only pages up to the one that ended the window count; a page after a short one
        // (fetched in the same batch) should be empty, and its records still are records.
        let mut records: Vec<Record> = pages
            .into_iter()
            .flatten()
            .flat_map(|p| p.data)
            .map(|raw| Record::new(raw, &window))
            .collect();
        dedupe_and_sort(&mut records);
        warnings.extend(cross_check(&window, records.len(), reported));
        Ok(Fetched::Part(Part { records, warnings }))
    }
}

/// Most parts one cut of a window makes (a week on its hourly grid). A cut that the count
/// asks for is made only when the count is believable within the request's allowance, so
/// this bounds a step, and the allowance bounds the whole.
pub const MAX_PARTS_PER_CUT: u64 = 168;
/// A part this short (seconds) is never cut again: if it still overflows, it is reported
/// incomplete.
pub const MIN_PART_SECONDS: i64 = 60;

/// Parts a window reported to hold `n` records is cut into, so each should hold about half
/// of what one query reaches.
fn parts_for(n: u64) -> u64 {
    (2 * n).div_ceil(MAX_REACH).max(2)
}

/// Upstream calls a window of `n` records costs at least: every page, plus one first page
/// per part when it must be cut.
pub fn estimated_calls(n: u64) -> u64 {
    let pages = n.div_ceil(u64::from(PAGE_LIMIT)).max(1);
    if n > MAX_REACH {
        pages + parts_for(n)
    } else {
        pages
    }
}

/// The upstream calls one request may still cause (`MAX_CALLS_PER_REQUEST`); every call,
/// retries included, takes one before it waits for the shared budget. It is also the
/// request's ledger, read by the progress of a job: calls completed, and calls its windows'
/// first pages said are still to come.
#[derive(Debug)]
pub struct Allowance {
    limit: u32,
    used: AtomicU32,
    /// Calls answered (or failed) so far.
    completed: AtomicU32,
    /// Calls beyond each part's first page that first pages announced (more pages, or the
    /// first pages of the parts of a cut).
    announced: AtomicU64,
    /// Pages a cut counted in `announced` that its parts' first pages will announce again.
    credit: AtomicU64,
    /// How long the shared budget takes to serve `limit` calls: when a retry of a request
    /// that ran out can expect to go on (what it fetched stays cached).
    refill: Duration,
}

impl Allowance {
    /// `limit` calls for a request; the shared budget's `rate` says how soon a retry helps.
    pub fn new(limit: u32, rate: crate::config::Rate) -> Self {
        let periods = limit.div_ceil(rate.calls.max(1));
        Allowance::again(limit, rate.period.saturating_mul(periods.max(1)))
    }

    /// A new allowance of `limit` calls.
    fn again(limit: u32, refill: Duration) -> Self {
        Allowance {
            limit,
            used: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            announced: AtomicU64::new(0),
            credit: AtomicU64::new(0),
            refill,
        }
    }

    /// No limit (the readiness probe).
    pub fn unlimited() -> Self {
        Allowance {
            limit: u32::MAX,
            used: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            announced: AtomicU64::new(0),
            credit: AtomicU64::new(0),
            refill: Duration::ZERO,
        }
    }

    /// When a retry of a request that ran out of calls can expect to go on.
    pub fn refill(&self) -> Duration {
        self.refill
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Upstream calls of this request that have completed (answered or failed).
    pub fn completed(&self) -> u32 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Calls first pages announced beyond themselves (see [`Allowance`]).
    pub fn announced(&self) -> u64 {
        self.announced.load(Ordering::Relaxed)
    }

    /// A first page announced `pages` more pages of its window or part.
    fn expect_pages(&self, pages: u64) {
        self.announce(pages, 0);
    }

    /// A window reported to hold `records` is cut into `parts`: each part's first page, and
    /// the pages beyond them that the records fill, are to come.
    fn expect_cut(&self, parts: u64, records: u64) {
        let pages = records.div_ceil(u64::from(PAGE_LIMIT));
        let beyond = pages.saturating_sub(parts);
        self.announce(parts + beyond, beyond);
    }

    /// Counts `calls` more to come, less what an earlier cut already counted for the parts
    /// (its `credit`), so a part's pages are not counted twice; `credit` is what this
    /// announcement counts on behalf of parts that will announce it again.
    fn announce(&self, calls: u64, credit: u64) {
        let mut covered = 0;
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                covered = c.min(calls);
                Some(c - covered)
            });
        self.announced.fetch_add(calls - covered, Ordering::Relaxed);
        self.credit.fetch_add(credit, Ordering::Relaxed);
    }

    /// Calls still allowed.
    pub fn left(&self) -> u32 {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Takes one call, or says the request has spent its allowance.
    fn take(&self) -> Result<(), UpstreamError> {
        let before = self.used.fetch_add(1, Ordering::Relaxed);
        if before < self.limit {
            Ok(())
        } else {
            self.used.fetch_sub(1, Ordering::Relaxed);
            Err(UpstreamError::OverCallBudget {
                estimate: u64::from(self.limit) + 1,
                limit: self.limit,
                retry_after: self.refill,
            })
        }
    }
}

/// A window that starts after `now` holds no record — no session starts in the future — so
/// its answer is empty and whole without an upstream call, and stays so until it starts
/// (then it is fetched like any other: `None` for a window that has started, one that
/// straddles `now` included).
fn not_started(window: Window, now: jiff::Timestamp) -> Option<WindowData> {
    if window.start <= now {
        return None;
    }
    let mut empty = WindowData::new(window, Vec::new(), Vec::new(), 0);
    empty.fresh_for = now.duration_until(window.start).unsigned_abs();
    Some(empty)
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
    fetcher: Arc<Fetcher>,
    cache: Arc<WindowCache>,
    /// Whose windows: every key this request makes is in its account's namespace.
    ns: Namespace,
    filters: Arc<Filters>,
    ctx: CallContext,
    /// Skip fresh cached copies (admin `Cache-Control: no-cache`).
    refresh: bool,
}

impl RangeFetch {
    /// The windows of one request with `filters` on the account whose namespace is `ns`:
    /// through `cache`, fetched by that account's `fetcher` on behalf of `caller` (fairness)
    /// under `request_id` (tracing), spending at most what `allowance` grants; `refresh`
    /// skips fresh cached copies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fetcher: Arc<Fetcher>,
        cache: Arc<WindowCache>,
        ns: Namespace,
        filters: Filters,
        caller: Arc<str>,
        request_id: Arc<str>,
        allowance: Allowance,
        refresh: bool,
    ) -> Self {
        RangeFetch {
            fetcher,
            cache,
            ns,
            filters: Arc::new(filters),
            ctx: CallContext {
                caller,
                request_id,
                allowance: Arc::new(allowance),
                priority: Priority::Caller,
            },
            refresh,
        }
    }

    /// Every one of `windows` has a fresh copy in the cache (or needs none: it has not
    /// started yet).
    pub async fn all_fresh(&self, windows: &[Window]) -> bool {
        let now = jiff::Timestamp::now();
        for w in windows.iter().filter(|w| w.start <= now) {
            let key = WindowKey::new(&self.ns, w, &self.filters);
            if self.cache.get_fresh(&key).await.is_none() {
                return false;
            }
        }
        true
    }

    /// The account's fetcher (its budget, for a job's ETA).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Whether fresh cached copies are skipped.
    pub fn refresh(&self) -> bool {
        self.refresh
    }

    /// What this request may still spend (shared by all its windows).
    pub fn allowance(&self) -> &Arc<Allowance> {
        &self.ctx.allowance
    }

    /// One window through the cache.
    ///
    /// # Errors
    /// Upstream failure with no stale copy to stand in.
    pub async fn window(&self, window: Window) -> Result<WindowOutcome, UpstreamError> {
        // Not through the cache: nothing to fetch, and nothing to refresh ahead.
        if let Some(empty) = not_started(window, jiff::Timestamp::now()) {
            return Ok(WindowOutcome {
                data: Arc::new(empty),
                source: Source::Hit,
                calls: 0,
                collapsed: false,
            });
        }
        let key = WindowKey::new(&self.ns, &window, &self.filters);
        let this = self.clone();
        let refetch: Refetch =
            Arc::new(move |purpose| this.for_purpose(purpose).fetch_uncached(window));
        let span = tracing::info_span!(
            "window",
            request_id = %self.ctx.request_id,
            start = window.start.as_second(),
            end = window.end.as_second(),
            offset_seconds = window.offset_seconds,
            cache = tracing::field::Empty,
            calls = tracing::field::Empty,
        );
        let outcome = self
            .cache
            .get_or_fetch(key, self.refresh, refetch)
            .instrument(span.clone())
            .await;
        if let Ok(o) = &outcome {
            let tier = match o.source {
                Source::Hit if o.data.shared => "redis",
                Source::Hit => "memory",
                Source::Miss => "miss",
                Source::Stale => "stale",
                Source::Revalidating => "revalidating",
            };
            span.record("cache", tier);
            span.record("calls", o.calls);
        }
        outcome
    }

    /// This fetch on behalf of the cache itself (a revalidation or refresh-ahead): its own
    /// place in the budget's queue and its own call allowance, not the request's.
    fn for_purpose(&self, purpose: Purpose) -> RangeFetch {
        let priority = match purpose {
            Purpose::Caller => return self.clone(),
            Purpose::Revalidate => Priority::Revalidate,
            Purpose::RefreshAhead => Priority::RefreshAhead,
        };
        let mut this = self.clone();
        let limit = self.ctx.allowance.limit();
        this.ctx = CallContext {
            caller: Arc::from(priority.label()),
            request_id: Arc::clone(&self.ctx.request_id),
            allowance: Arc::new(Allowance::again(limit, self.ctx.allowance.refill())),
            priority,
        };
        this.refresh = true;
        this
    }

    /// Fetches one window from the upstream. A window too full for one query is cut into
    /// parts on its local grid, and each part goes through the cache under its own key, so
    /// overlapping windows share the parts they have in common and concurrent requests
    /// fetch each part once.
    fn fetch_uncached(
        self,
        window: Window,
    ) -> BoxFuture<'static, Result<WindowData, UpstreamError>> {
        // Created inside the `window` span, run in the cache's own task: its child.
        let span = tracing::info_span!("window.fetch", request_id = %self.ctx.request_id);
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
        .instrument(span)
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

    /// The windows in order, at most `ahead` of them resolving at once: what a consumer
    /// that handles one window at a time holds is bounded by `ahead` windows, whatever the
    /// range. (A window's fetch, once started, goes on in the cache's own task.)
    pub fn in_order(
        &self,
        windows: Vec<Window>,
        ahead: usize,
    ) -> impl futures_util::Stream<Item = Result<WindowOutcome, UpstreamError>> + Send + 'static
    {
        let this = self.clone();
        futures_util::stream::iter(windows)
            .map(move |w| {
                let this = this.clone();
                async move { this.window(w).await }
            })
            .buffered(ahead.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_windows_wholly_after_now_are_empty_without_a_call() {
        let now = jiff::Timestamp::from_second(1_900_000_000).unwrap();
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let window = |start: i64, end: i64| Window {
            start: at(start),
            end: at(end),
            offset_seconds: 0,
        };
        let future = not_started(window(1_900_000_060, 1_900_086_399), now).expect("empty");
        assert!(future.records.is_empty() && future.complete() && future.calls == 0);
        assert_eq!(future.fresh_for, Duration::from_secs(60), "until it starts");
        for (start, end) in [
            (1_899_999_000, 1_900_086_399), // straddles now
            (1_900_000_000, 1_900_086_399), // starts now
            (1_800_000_000, 1_800_086_399), // past
        ] {
            assert!(not_started(window(start, end), now).is_none(), "{start}");
        }
    }

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

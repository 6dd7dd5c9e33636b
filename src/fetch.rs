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
//!
//! How long a call may wait for its permit is the work's [`Patience`]: a request's waits all
//! end `KORE_MAX_WAIT` after it started (its whole wait, not each call's); once a window's
//! first page is in, the rest of it is paid-for work that goes on however long the budget
//! takes, even if the request that started it has answered, so what it fetched is cached
//! whole; a job waits as long as the budget needs; background revalidations wait up to
//! `KORE_MAX_WAIT` per call. The [`Drain`] shortens them all at shutdown. Every first page
//! also teaches the account's [`Volume`], from which [`RangeFetch::estimate`] tells what a
//! range will cost before it is fetched.

mod allowance;
mod volume;

pub use self::{allowance::Allowance, volume::Volume};

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
};
use tracing::Instrument;

use crate::{
    budget::{Budget, Priority},
    cache::{
        Namespace, Purpose, Refetch, Source, WindowCache, WindowData, WindowKey, WindowOutcome,
    },
    drain::{Drain, Patience, Stop},
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
    /// How long its calls may wait for budget.
    pub patience: Patience,
    /// A job's stop (cancelled, or taken over elsewhere): its waits end.
    pub stop: Option<Stop>,
}

impl CallContext {
    /// The same work once a window's first page is in: a request's deadline no longer
    /// applies — the rest of the window is paid-for work, finished however long the budget
    /// takes (cut only by the drain), so that no call made for it is wasted and the retry
    /// finds it cached.
    fn paid_for(&self) -> CallContext {
        let mut c = self.clone();
        if matches!(c.patience, Patience::Request { .. }) {
            c.patience = Patience::PaidFor;
        }
        c.stop = None;
        c
    }
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
    /// What the account's traffic looks like (records per second by filters).
    volume: Volume,
    /// The process's shutdown signal: it cuts every wait short.
    drain: Drain,
}

impl Fetcher {
    pub fn new(
        client: UpstreamClient,
        budget: Budget,
        retries: u32,
        max_wait: Duration,
        account: Arc<str>,
        drain: Drain,
    ) -> Self {
        Fetcher {
            client,
            budget,
            retries,
            max_wait,
            account,
            last_ok: AtomicI64::new(0),
            volume: Volume::default(),
            drain,
        }
    }

    /// KORE_MAX_WAIT: a request's whole wait for budget.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The account's learnt volume.
    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// The shutdown signal this account's waits watch.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// When asking again makes sense after a wait was cut short: soon during a drain (the
    /// retry lands on another replica, or this one restarted), else when the budget's queue
    /// should have drained.
    fn retry_after(&self) -> Duration {
        if self.drain.is_draining() {
            Duration::from_secs(2)
        } else {
            self.budget.queue_drain_time()
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

    /// Takes a budget permit for one call of `ctx`'s caller, waiting no longer than its
    /// patience allows (see [`Patience`]; the drain may cut it shorter).
    ///
    /// # Errors
    /// [`UpstreamError::Budget`] when none is granted in time.
    pub async fn permit(
        &self,
        ctx: &CallContext,
    ) -> Result<crate::budget::CallPermit, UpstreamError> {
        let stopped = async {
            match &ctx.stop {
                Some(s) => s.fired().await,
                None => std::future::pending().await,
            }
        };
        let granted = tokio::select! {
            biased;
            p = self.budget.acquire_until(&ctx.caller, ctx.priority, None) => p.ok(),
            () = self.drain.expired(ctx.patience, self.max_wait) => None,
            () = stopped => None,
        };
        granted.ok_or_else(|| {
            metrics::counter!("gateway_budget_exhausted_total", "account" => self.account_label())
                .increment(1);
            UpstreamError::Budget {
                retry_after: self.retry_after(),
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
            ctx.allowance.complete_one();
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
                    if self
                        .drain
                        .deadline(ctx.patience, self.max_wait)
                        .is_some_and(|d| tokio::time::Instant::now() + pause > d)
                    {
                        // The pause would outlast this work's patience.
                        return Err(UpstreamError::Budget {
                            retry_after: pause.max(self.retry_after()),
                        });
                    }
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
            patience: Patience::PerCall,
            stop: None,
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
    ///
    /// The first page of a whole window (not of a part: its window was counted) teaches the
    /// account's [`Volume`]; the calls after it are paid-for work (see [`CallContext`]).
    async fn fetch_part(
        &self,
        window: Window,
        filters: &Filters,
        ctx: &CallContext,
        calls: &AtomicU32,
        whole: bool,
    ) -> Result<Fetched, UpstreamError> {
        let limit = PAGE_LIMIT as usize;
        let first = self.call(&window, filters, 0, ctx, calls).await?;
        let ctx = &ctx.paid_for();
        let reported = first.num_results;
        let hint = reported.unwrap_or(0);
        let cuttable = window.len_seconds() > MIN_PART_SECONDS;
        // Pages by index, as far as fetched.
        let mut pages: Vec<Option<Page>> = (0..=MAX_PAGE).map(|_| None).collect();
        let first_full = first.data.len() >= limit;
        if whole {
            // A short page is the exact count; a full one leaves the count as the hint.
            let seen = if first_full {
                hint.max(first.data.len() as u64)
            } else {
                first.data.len() as u64
            };
            self.volume.observe(filters, window.len_seconds(), seen);
        }
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
    /// Fetching the parts of a cut window (whose own first page already taught the volume).
    part: bool,
}

/// What a range is expected to cost before any of it is fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeEstimate {
    /// Windows not held fresh in any tier.
    pub cold_windows: u32,
    /// Upstream calls they are expected to need (at least one each).
    pub calls: u64,
    /// Whether the account's volume for these filters is known well enough (else `calls`
    /// counts one first page per cold window: a floor, not an estimate).
    pub informed: bool,
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
        // A request's whole wait for budget is bounded from the moment it starts.
        let until = tokio::time::Instant::now() + fetcher.max_wait;
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
                patience: Patience::Request { until },
                stop: None,
            },
            refresh,
            part: false,
        }
    }

    /// This range as a job's: its calls wait as long as the budget needs (no request is
    /// held open), until `stop` fires (cancelled) or the drain.
    pub fn for_job(mut self, stop: Stop) -> Self {
        self.ctx.patience = Patience::Unbounded;
        self.ctx.stop = Some(stop);
        self
    }

    /// This range as the change feed's poll: at the lowest priority of the budget, its calls
    /// waiting as long as the budget needs, until `stop` fires or the drain.
    pub fn for_feed(mut self, stop: Stop) -> Self {
        self.ctx.priority = Priority::Feed;
        self.for_job(stop)
    }

    /// This range spending through `allowance` (one window's share of the request's: see
    /// [`Allowance::child`]).
    pub fn with_allowance(&self, allowance: Arc<Allowance>) -> Self {
        let mut this = self.clone();
        this.ctx.allowance = allowance;
        this
    }

    /// How long its calls may wait for budget.
    pub fn patience(&self) -> Patience {
        self.ctx.patience
    }

    /// The filters its windows are fetched with.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    /// The namespace of its windows (whose data).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Every one of `windows` is held fresh in some tier (memory, disk or Redis; a copy
    /// found below memory is brought up, so the answer that follows reads memory), or needs
    /// none: it has not started yet.
    pub async fn all_fresh(&self, windows: &[Window]) -> bool {
        let now = jiff::Timestamp::now();
        for w in windows.iter().filter(|w| w.start <= now) {
            let key = WindowKey::new(&self.ns, w, &self.filters);
            if !self.cache.fresh_anywhere(&key).await {
                return false;
            }
        }
        true
    }

    /// Upstream calls `window` is expected to need if it is not cached: from the account's
    /// volume for these filters, or `None` when nothing is known of it yet.
    pub fn expected_calls(&self, window: &Window) -> Option<u64> {
        let now = jiff::Timestamp::now();
        if window.start > now {
            // Not started: answered empty without a call.
            return Some(0);
        }
        self.fetcher
            .volume
            .expected_calls(&self.filters, window, now.as_second())
    }

    /// What `windows` are expected to cost: nothing for the ones held fresh in any tier, the
    /// account's volume for the others once it is known well enough to refuse on (one first
    /// page each until then: a floor). With `look` false the tiers are not asked (every
    /// window counts as cold: the most it can cost).
    pub async fn estimate(&self, windows: &[Window], look: bool) -> RangeEstimate {
        let volume = &self.fetcher.volume;
        let now = jiff::Timestamp::now().as_second();
        let mut e = RangeEstimate {
            informed: volume.per_second_confident(&self.filters).is_some(),
            ..RangeEstimate::default()
        };
        for w in windows.iter().filter(|w| w.start.as_second() <= now) {
            if look && !self.refresh {
                let key = WindowKey::new(&self.ns, w, &self.filters);
                if self.cache.fresh_anywhere(&key).await {
                    continue;
                }
            }
            e.cold_windows += 1;
            e.calls += volume
                .expected_calls_confident(&self.filters, w, now)
                .unwrap_or(1)
                .max(1);
        }
        e
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

    /// One window through the cache. A request stops waiting for it at its deadline (the
    /// fetch goes on in the cache's own task: a window whose first page is in is finished
    /// and cached for the retry).
    ///
    /// # Errors
    /// Upstream failure with no stale copy to stand in; [`UpstreamError::Budget`] when a
    /// request's deadline passed first.
    pub async fn window(&self, window: Window) -> Result<WindowOutcome, UpstreamError> {
        match self.ctx.patience {
            Patience::Request { .. } => {
                tokio::select! {
                    biased;
                    o = self.window_through_cache(window) => o,
                    () = self.fetcher.drain.expired(self.ctx.patience, self.fetcher.max_wait) => {
                        Err(UpstreamError::Budget { retry_after: self.fetcher.retry_after() })
                    }
                }
            }
            Patience::PaidFor | Patience::PerCall | Patience::Unbounded => {
                self.window_through_cache(window).await
            }
        }
    }

    async fn window_through_cache(&self, window: Window) -> Result<WindowOutcome, UpstreamError> {
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
        let outcome = if self.ctx.priority == Priority::Feed {
            // The feed's poll: fetched now, not marked as read (no refresh-ahead for it).
            self.cache.poll(key, refetch).instrument(span.clone()).await
        } else {
            self.cache
                .get_or_fetch(key, self.refresh, refetch)
                .instrument(span.clone())
                .await
        };
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
            patience: Patience::PerCall,
            stop: None,
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
                .fetch_part(window, &self.filters, &self.ctx, &calls, !self.part)
                .await?;
            let mut calls = calls.load(Ordering::Relaxed);
            let (mut records, warnings) = match fetched {
                Fetched::Part(p) => (p.records, p.warnings),
                Fetched::Cut(parts) => {
                    // The window's first page is in: its parts are paid-for work.
                    let parts_fetch = RangeFetch {
                        ctx: self.ctx.paid_for(),
                        part: true,
                        ..self.clone()
                    };
                    let outcomes =
                        try_join_all(parts.into_iter().map(|p| parts_fetch.window(p))).await?;
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

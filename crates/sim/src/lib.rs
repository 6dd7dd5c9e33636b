//! The built-in upstream simulator: a stand-in for the Kore.ai SmartAssist
//! "interaction details" endpoint, used by `--demo`, the tests and the benchmarks.
//!
//! It enforces the vendor's rules strictly (JWT, account header, paging, body, 7-day range,
//! rate limit) and records every breach as a [`Violation`], so a test can prove the gateway
//! never broke one. Its data is synthetic but deterministic (see `data`): [`Simulator::truth`]
//! gives the exact records any query should yield. Latency and faults (5xx, 429, broken
//! connections, truncated bodies, wrong counts) can be injected and changed at runtime to
//! exercise the gateway's retries and cross-checks. Records can change after the fact
//! ([`Simulator::revise`]), and in live mode ([`Live`]) they appear and change as the clock
//! runs, like the vendor's (see `live`).

mod data;
mod live;
mod render;
mod rules;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::{StreamExt, stream};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use self::live::Live;
use self::{
    data::Filter,
    render::{FieldMask, Renderer},
    rules::{Breach, JtiLog, JwtPolicy},
};

/// The vendor's route, in axum path syntax.
pub const VENDOR_PATH: &str =
    "/agentassist/api/public/analytics/account/{accountId}/v2/interactionDetails";
/// The same route as spelled in the vendor's own `curl` sample (all lower case).
const VENDOR_PATH_LOWER: &str =
    "/agentassist/api/public/analytics/account/{accountId}/v2/interactiondetails";

/// Keep at most this many [`CallLog`] entries (the newest); counters stay exact.
const CALL_LOG_CAP: usize = 100_000;

/// How the simulator behaves. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct SimConfig {
    /// The account id the path and the `accountId` header must carry.
    pub account_id: String,
    /// The JWT's `appId`.
    pub client_id: String,
    /// The HS256 key the JWT must be signed with.
    pub client_secret: String,
    /// Added before every answer.
    pub latency: Duration,
    /// At most `N` calls in any `period` (a sliding window), like the vendor's per-account
    /// limit; `None` = unlimited. Every call counts whatever its outcome, except the ones
    /// the limit itself refuses.
    pub rate_limit: Option<(u32, Duration)>,
    /// Injected faults at start (see [`Simulator::set_faults`]).
    pub faults: Faults,
    /// Enforce `jti`: required, never reused, token lifetime ≤ 1 h.
    pub require_jti: bool,
    /// Seeds the data and the fault draws.
    pub seed: u64,
    /// Multiplies every hour's record count (1 = the demo's volume; 180 ≈ 50,000 a week).
    pub volume: u32,
    /// How `offset` is read: a page index (current vendor docs) or a record skip (older).
    pub offset_mode: OffsetMode,
    /// Live mode: records published some time after they start and revised as time
    /// passes (see [`Live`]); `None` = every record there and unchanged from the start.
    pub live: Option<Live>,
}

/// How the simulated vendor reads the `offset` query parameter (SPEC §1 leaves both
/// readings open). Either way one query reaches at most 1,100 records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetMode {
    /// `offset` is a page index, 0..=10.
    #[default]
    Page,
    /// `offset` is a number of records to skip, 0..=1000.
    Record,
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("account_id", &self.account_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("latency", &self.latency)
            .field("rate_limit", &self.rate_limit)
            .field("faults", &self.faults)
            .field("require_jti", &self.require_jti)
            .field("seed", &self.seed)
            .field("volume", &self.volume)
            .field("offset_mode", &self.offset_mode)
            .field("live", &self.live)
            .finish()
    }
}

impl SimConfig {
    /// Fixed demo credentials, 50 ms latency, no faults, no rate limit, seed 1, not live.
    pub fn demo() -> Self {
        SimConfig {
            account_id: "66bc4a29bdaafdb08461de30".into(),
            client_id: "cs-173508e1-29f2-5e90-9532-122ec6b9de30".into(),
            client_secret: "demo-secret-not-for-production-0123456789".into(),
            latency: Duration::from_millis(50),
            rate_limit: None,
            faults: Faults::default(),
            require_jti: false,
            seed: 1,
            volume: 1,
            offset_mode: OffsetMode::Page,
            live: None,
        }
    }
}

/// Injected faults: each call draws a fault with probability `error_rate`, then one of
/// `kinds` uniformly. Draws come from a generator seeded by [`SimConfig::seed`], so a
/// sequential run is reproducible.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability (0..=1) that a valid call gets a fault.
    pub error_rate: f64,
    /// The faults to draw from; empty = none.
    pub kinds: Vec<FaultKind>,
    /// How `numResults` relates to the truth on every answered page (not drawn).
    pub count: CountLie,
}

/// A vendor whose `numResults` is wrong on every page, the way a real one can be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CountLie {
    /// The true count.
    #[default]
    Truthful,
    /// Always this number, whatever the query holds.
    Fixed(u64),
    /// The true count plus this (never below zero).
    OffBy(i64),
    /// The true count plus `step` times the number of calls answered so far: a count that
    /// grows with every call.
    Growing { step: u64 },
}

/// One kind of injected fault. Injected faults are never [`Violation`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `500 Internal Server Error`.
    Status500,
    /// `502 Bad Gateway`, with an HTML body as a proxy would send.
    Status502,
    /// `503 Service Unavailable`.
    Status503,
    /// `429` with `Retry-After`, as if another user of the credentials spent the budget.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// `200` headers and part of the body, then the connection breaks.
    DropConnection,
    /// `200` with only the first half of the JSON.
    TruncatedBody,
    /// The normal answer, after this extra delay.
    Slow(Duration),
    /// The normal page, with `numResults` off by 1–3 either way.
    WrongNumResults,
}

impl FaultKind {
    fn name(&self) -> String {
        match self {
            FaultKind::Slow(d) => format!("Slow({}ms)", d.as_millis()),
            FaultKind::TooManyRequests { retry_after_secs } => {
                format!("TooManyRequests({retry_after_secs}s)")
            }
            other => format!("{other:?}"),
        }
    }
}

/// One call as the simulator saw it.
#[derive(Clone, Debug)]
pub struct CallLog {
    /// Arrival time.
    pub at: std::time::Instant,
    /// Status sent (200 also for `DropConnection` / `TruncatedBody`).
    pub status: u16,
    /// The injected fault, if any, by name: `Status503`, `TooManyRequests(7s)`,
    /// `Slow(200ms)`, `DropConnection`, …
    pub fault: Option<String>,
    /// Range start, if the body was valid.
    pub start_utc: Option<Timestamp>,
    /// Range end (inclusive), if the body was valid.
    pub end_utc: Option<Timestamp>,
    /// `timeZoneOffset`, if the body was valid.
    pub offset_minutes: Option<i32>,
    /// `offset` as sent (a page index, or a record skip in [`OffsetMode::Record`]), if the
    /// query was valid.
    pub page: Option<u32>,
    /// Page size, if the query was valid.
    pub limit: Option<u32>,
    /// `numResults` as sent (wrong under `WrongNumResults`).
    pub num_results: Option<u64>,
    /// Records in `data`.
    pub returned: usize,
    /// The `x-request-id` header.
    pub request_id: Option<String>,
    /// The W3C `traceparent` header, when the caller sent one.
    pub traceparent: Option<String>,
    /// `channels` as given.
    pub channels: Vec<String>,
    /// `queues` as given.
    pub queues: Vec<String>,
    /// `bots` as given.
    pub bots: Vec<String>,
    /// `selectedFields` as given.
    pub selected_fields: Option<Vec<String>>,
}

/// A broken vendor rule: the gateway must never cause one.
#[derive(Clone, Debug)]
pub struct Violation {
    /// When it happened.
    pub at: std::time::Instant,
    /// Short rule name, e.g. `rate_limit`, `date_range`, `jwt_expired`.
    pub rule: String,
    /// What exactly was wrong (never a token or the secret).
    pub detail: String,
    /// The call's `x-request-id`.
    pub request_id: Option<String>,
}

/// Ground-truth query filter, mirroring the request body's filters.
#[derive(Clone, Debug, Default)]
pub struct SimFilter {
    /// `channels` (empty = all).
    pub channels: Vec<String>,
    /// `queues` (empty = all).
    pub queues: Vec<String>,
    /// `bots` (empty = all).
    pub bots: Vec<String>,
    /// `selectedFields`; `None` behaves like an absent `selectedFields` (none of the four
    /// optional blocks). Unknown names are ignored.
    pub selected_fields: Option<Vec<String>>,
}

/// The simulated vendor endpoint. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    key: DecodingKey,
    records: Renderer,
    started: Instant,
    runtime: Mutex<Runtime>,
    log: Mutex<Log>,
}

/// What changes per call or at runtime.
struct Runtime {
    faults: Faults,
    latency: Duration,
    rng: fastrand::Rng,
    jtis: JtiLog,
    /// Arrival times of the calls inside the current rate-limit period.
    window: VecDeque<Instant>,
    /// `sessionId`s left out of every answer (not of [`Simulator::truth`]): records the
    /// vendor has not published yet.
    hidden: std::collections::HashSet<String>,
    /// Pages answered with data so far (for [`CountLie::Growing`]).
    answered: u64,
    /// Test-controlled revisions by `sessionId` (see [`Simulator::revise`]).
    revisions: live::Revisions,
    /// The `now` live mode reads instead of the wall clock (see [`Simulator::pin_clock`]).
    pinned_now: Option<i64>,
}

#[derive(Default)]
struct Log {
    calls: VecDeque<CallLog>,
    total: usize,
    by_status: HashMap<u16, usize>,
    violations: Vec<Violation>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the simulator down with it; the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a call was about, filled in as far as validation got.
#[derive(Default)]
struct CallFacts {
    request_id: Option<String>,
    traceparent: Option<String>,
    paging: Option<rules::Paging>,
    query: Option<rules::Query>,
}

impl Simulator {
    /// A simulator with `cfg`; serve it with [`Simulator::router`] or [`Simulator::spawn`].
    pub fn new(cfg: SimConfig) -> Self {
        let runtime = Runtime {
            faults: cfg.faults.clone(),
            latency: cfg.latency,
            rng: fastrand::Rng::with_seed(cfg.seed ^ 0xFA17_FA17),
            jtis: JtiLog::default(),
            window: VecDeque::new(),
            hidden: std::collections::HashSet::new(),
            answered: 0,
            revisions: live::Revisions::default(),
            pinned_now: None,
        };
        let inner = Inner {
            key: DecodingKey::from_secret(cfg.client_secret.as_bytes()),
            records: Renderer::new(cfg.seed),
            cfg,
            started: Instant::now(),
            runtime: Mutex::new(runtime),
            log: Mutex::new(Log::default()),
        };
        Simulator {
            inner: Arc::new(inner),
        }
    }

    /// Leaves the records with these `sessionId`s out of every answer from now on (an empty
    /// set publishes everything again), as a vendor does with sessions it has not finished
    /// processing: a window fetched before and after differs. Unlike live mode's
    /// publication delay, hidden records stay in [`Simulator::truth`].
    pub fn set_hidden(&self, session_ids: impl IntoIterator<Item = String>) {
        lock(&self.inner.runtime).hidden = session_ids.into_iter().collect();
    }

    /// The configuration given at start (later `set_faults` / `set_latency` not included).
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The vendor route (both spellings), plus `GET /__sim/violations` and
    /// `GET /__sim/calls` (JSON) for humans.
    pub fn router(&self) -> Router {
        Router::new()
            .route(VENDOR_PATH, post(interaction_details))
            .route(VENDOR_PATH_LOWER, post(interaction_details))
            .route("/__sim/violations", get(violations_json))
            .route("/__sim/calls", get(calls_json))
            .with_state(self.clone())
    }

    /// Starts a simulator on `127.0.0.1:0` in a background task.
    ///
    /// # Errors
    /// If the loopback socket cannot be bound.
    pub async fn spawn(cfg: SimConfig) -> std::io::Result<(Simulator, SocketAddr)> {
        let sim = Simulator::new(cfg);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = sim.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "simulator stopped");
            }
        });
        Ok((sim, addr))
    }

    /// Replaces the injected faults from the next call on.
    pub fn set_faults(&self, f: Faults) {
        lock(&self.inner.runtime).faults = f;
    }

    /// Replaces the latency added before each answer.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.inner.runtime).latency = d;
    }

    /// Every rule breach so far.
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.inner.log).violations.clone()
    }

    /// The logged calls, oldest first (the newest 100,000 at most).
    pub fn calls(&self) -> Vec<CallLog> {
        lock(&self.inner.log).calls.iter().cloned().collect()
    }

    /// Calls since start or the last [`Simulator::reset_log`].
    pub fn call_count(&self) -> usize {
        lock(&self.inner.log).total
    }

    /// Calls answered with `status` since start or the last reset.
    pub fn count_status(&self, status: u16) -> usize {
        lock(&self.inner.log)
            .by_status
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Clears the call log and its counters (not the violations).
    pub fn reset_log(&self) {
        let mut log = lock(&self.inner.log);
        log.calls.clear();
        log.total = 0;
        log.by_status.clear();
    }

    /// Ground truth: every record matching the range (inclusive, to the second) and
    /// filter, in `sessionId` order, rendered for `offset_minutes` — what all pages of the
    /// endpoint together return (as far as 11 pages reach), revisions applied.
    ///
    /// In live mode the truth is "as of now": it reads the clock once, as each answer
    /// does, so it agrees with an answer given in the same second (or at a pinned clock).
    /// Records hidden with [`Simulator::set_hidden`] are included.
    pub fn truth(
        &self,
        start: Timestamp,
        end_inclusive: Timestamp,
        offset_minutes: i32,
        filter: &SimFilter,
    ) -> Vec<Value> {
        let f = Filter {
            channels: filter.channels.clone(),
            queues: filter.queues.clone(),
            bots: filter.bots.clone(),
        };
        let fields = filter
            .selected_fields
            .as_deref()
            .map(FieldMask::from_names)
            .unwrap_or_default();
        let view = self.view_of(&lock(&self.inner.runtime));
        let mut all = data::matching_at_volume(
            self.inner.cfg.seed,
            self.inner.cfg.volume,
            start.as_second(),
            end_inclusive.as_second(),
            &f,
        );
        view.retain_published(&mut all);
        self.inner
            .records
            .values(&all, offset_minutes, fields, &view)
    }

    fn violation(&self, at: Instant, b: &Breach, request_id: Option<String>) {
        tracing::warn!(rule = b.rule, detail = %b.detail, request_id = ?request_id, "vendor rule broken");
        lock(&self.inner.log).violations.push(Violation {
            at: at.into_std(),
            rule: b.rule.to_owned(),
            detail: b.detail.clone(),
            request_id,
        });
    }

    fn record(
        &self,
        at: Instant,
        status: u16,
        fault: Option<&FaultKind>,
        facts: &CallFacts,
        num_results: Option<u64>,
        returned: usize,
    ) {
        let q = facts.query.as_ref();
        let ts = |s: i64| Timestamp::from_second(s).ok();
        let entry = CallLog {
            at: at.into_std(),
            status,
            fault: fault.map(FaultKind::name),
            start_utc: q.and_then(|q| ts(q.start)),
            end_utc: q.and_then(|q| ts(q.end)),
            offset_minutes: q.map(|q| q.offset_minutes),
            page: facts.paging.map(|p| p.offset),
            limit: facts.paging.map(|p| p.limit),
            num_results,
            returned,
            request_id: facts.request_id.clone(),
            traceparent: facts.traceparent.clone(),
            channels: q.map(|q| q.filter.channels.clone()).unwrap_or_default(),
            queues: q.map(|q| q.filter.queues.clone()).unwrap_or_default(),
            bots: q.map(|q| q.filter.bots.clone()).unwrap_or_default(),
            selected_fields: q.and_then(|q| q.selected_fields.clone()),
        };
        tracing::debug!(status, fault = ?entry.fault, request_id = ?entry.request_id, returned, "simulator call");
        let mut log = lock(&self.inner.log);
        if log.calls.len() >= CALL_LOG_CAP {
            log.calls.pop_front();
        }
        log.calls.push_back(entry);
        log.total += 1;
        *log.by_status.entry(status).or_default() += 1;
    }

    /// Counts the call against the sliding window; `Err(retry_after_secs)` when the last
    /// `period` already holds the allowed number of calls.
    fn admit(&self, rt: &mut Runtime, now: Instant) -> Result<(), u64> {
        let Some((max, period)) = self.inner.cfg.rate_limit else {
            return Ok(());
        };
        while rt
            .window
            .front()
            .is_some_and(|t| t.checked_add(period).is_some_and(|end| end <= now))
        {
            rt.window.pop_front();
        }
        if rt.window.len() >= max as usize {
            let free_at = rt
                .window
                .front()
                .and_then(|t| t.checked_add(period))
                .unwrap_or(now);
            let wait = free_at.saturating_duration_since(now);
            return Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1));
        }
        rt.window.push_back(now);
        Ok(())
    }
}

/// A vendor-like error body (the real shape is undocumented; gateways must not rely on it).
fn error_response(status: u16, msg: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(json!({ "errors": [{ "msg": msg, "code": status }] })),
    )
        .into_response()
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn json_response(body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// The page body, written by hand so `numResults` comes first as in the vendor's sample.
fn page_body(
    records: &Renderer,
    num_results: u64,
    page: &[data::Skel],
    q: &rules::Query,
    view: &live::View<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + page.len() * 2048);
    out.extend_from_slice(format!("{{\"numResults\":{num_results},\"data\":[").as_bytes());
    records.write_records(page, q.offset_minutes, q.fields, view, &mut out);
    out.extend_from_slice(b"]}");
    out
}

/// A call that passed every rule.
struct Accepted {
    paging: rules::Paging,
    query: rules::Query,
    fault: Option<FaultKind>,
    /// How far off `numResults` is under [`FaultKind::WrongNumResults`].
    skew: i64,
}

/// A call that broke a rule, with `Retry-After` for the rate limit.
type Refused = (Breach, Option<u64>);

impl Simulator {
    /// Applies the vendor's rules in the vendor's order of concern: budget, token, account,
    /// paging, body. Rate limit, `jti` set and fault draw share one lock, so concurrent
    /// calls see one consistent window, set and fault sequence.
    fn check(
        &self,
        arrived: Instant,
        path_id: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Accepted, Refused> {
        let cfg = &self.inner.cfg;
        let mut rt = lock(&self.inner.runtime);
        self.admit(&mut rt, arrived).map_err(|retry_after| {
            let (max, period) = cfg.rate_limit.unwrap_or_default();
            let detail = format!("more than {max} calls in {period:?}");
            (
                Breach {
                    status: 429,
                    rule: "rate_limit",
                    detail,
                },
                Some(retry_after),
            )
        })?;
        let policy = JwtPolicy {
            key: &self.inner.key,
            client_id: &cfg.client_id,
            require_jti: cfg.require_jti,
        };
        let refused = |b: Breach| (b, None);
        rules::check_jwt(headers, &policy, &mut rt.jtis, unix_now()).map_err(refused)?;
        rules::check_account(headers, path_id, &cfg.account_id).map_err(refused)?;
        let paging = rules::parse_paging(uri.query(), cfg.offset_mode).map_err(refused)?;
        let query = rules::parse_body(headers, body).map_err(refused)?;
        let (fault, skew) = draw_fault(&mut rt);
        Ok(Accepted {
            paging,
            query,
            fault,
            skew,
        })
    }
}

async fn interaction_details(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // An undecodable path id is simply not the account: refused like any other.
    let path_id = path.map(|Path(p)| p).unwrap_or_default();
    let latency = lock(&sim.inner.runtime).latency;

    let accepted = match sim.check(arrived, &path_id, &uri, &headers, &body) {
        Ok(a) => a,
        Err((breach, retry_after)) => {
            sim.violation(arrived, &breach, request_id.clone());
            let facts = CallFacts {
                request_id,
                traceparent,
                ..CallFacts::default()
            };
            sim.record(arrived, breach.status, None, &facts, None, 0);
            tokio::time::sleep(latency).await;
            let r = error_response(breach.status, &breach.detail);
            return match retry_after {
                Some(secs) => with_retry_after(r, secs),
                None => r,
            };
        }
    };
    let Accepted {
        paging,
        query,
        fault,
        skew,
    } = accepted;
    let facts = CallFacts {
        request_id,
        traceparent,
        paging: Some(paging),
        query: Some(query),
    };
    let Some(query) = facts.query.as_ref() else {
        return error_response(500, "internal error");
    };
    let delay = match &fault {
        Some(FaultKind::Slow(extra)) => latency.saturating_add(*extra),
        _ => latency,
    };

    if let Some((status, r)) = fault.as_ref().and_then(fault_status) {
        sim.record(arrived, status, fault.as_ref(), &facts, None, 0);
        tokio::time::sleep(delay).await;
        return r;
    }

    let mut all = data::matching_at_volume(
        sim.inner.cfg.seed,
        sim.inner.cfg.volume,
        query.start,
        query.end,
        &query.filter,
    );
    let (lie, answered, view) = {
        let mut rt = lock(&sim.inner.runtime);
        if !rt.hidden.is_empty() {
            all.retain(|s| std::str::from_utf8(s.id()).map_or(true, |id| !rt.hidden.contains(id)));
        }
        rt.answered += 1;
        (rt.faults.count.clone(), rt.answered, sim.view_of(&rt))
    };
    view.retain_published(&mut all);
    let from = (paging.skip as usize).min(all.len());
    let to = from.saturating_add(paging.limit as usize).min(all.len());
    let page = &all[from..to];
    let total = all.len() as u64;
    // A skew below zero flips sign rather than clamp to the true count.
    let num_results = if total < skew.unsigned_abs() {
        total + skew.unsigned_abs()
    } else {
        total.saturating_add_signed(skew)
    };
    let num_results = match lie {
        CountLie::Truthful => num_results,
        CountLie::Fixed(n) => n,
        CountLie::OffBy(d) => num_results.saturating_add_signed(d),
        CountLie::Growing { step } => num_results.saturating_add(step.saturating_mul(answered)),
    };
    let answer = page_body(&sim.inner.records, num_results, page, query, &view);
    sim.record(
        arrived,
        200,
        fault.as_ref(),
        &facts,
        Some(num_results),
        page.len(),
    );
    tokio::time::sleep(delay).await;

    match fault {
        Some(FaultKind::TruncatedBody) => json_response(answer[..answer.len() / 2].to_vec()),
        Some(FaultKind::DropConnection) => {
            let half = Bytes::copy_from_slice(&answer[..answer.len() / 2]);
            // The pause lets the server flush the headers and the first half, so the
            // client sees a real 200 whose body then breaks, not a refused request.
            let chunks = stream::iter([Ok(half)]).chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection drop",
                ))
            }));
            let mut r = Response::new(Body::from_stream(chunks));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        }
        _ => json_response(answer),
    }
}

/// The answer of a fault that replaces the page with an error status.
fn fault_status(kind: &FaultKind) -> Option<(u16, Response)> {
    let r = match kind {
        FaultKind::Status500 => (500, error_response(500, "Internal Server Error")),
        FaultKind::Status502 => {
            // What a proxy in front of the vendor sends: not even JSON.
            let mut r = (
                StatusCode::BAD_GATEWAY,
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            (502, r)
        }
        FaultKind::Status503 => (503, error_response(503, "Service Unavailable")),
        FaultKind::TooManyRequests { retry_after_secs } => (
            429,
            with_retry_after(error_response(429, "Too Many Requests"), *retry_after_secs),
        ),
        FaultKind::DropConnection
        | FaultKind::TruncatedBody
        | FaultKind::Slow(_)
        | FaultKind::WrongNumResults => return None,
    };
    Some(r)
}

/// Draws this call's fault, and for [`FaultKind::WrongNumResults`] how far off
/// `numResults` is (1–3 either way, never below zero once applied).
fn draw_fault(rt: &mut Runtime) -> (Option<FaultKind>, i64) {
    let Faults {
        error_rate, kinds, ..
    } = &rt.faults;
    // Written so a NaN rate draws nothing.
    let hit = rt.rng.f64() < *error_rate;
    if kinds.is_empty() || !hit {
        return (None, 0);
    }
    let kind = kinds[rt.rng.usize(..kinds.len())].clone();
    let skew = if kind == FaultKind::WrongNumResults {
        let size = rt.rng.i64(1..=3);
        if rt.rng.bool() { size } else { -size }
    } else {
        0
    };
    (Some(kind), skew)
}

async fn violations_json(State(sim): State<Simulator>) -> Json<Value> {
    let started = sim.inner.started.into_std();
    let list: Vec<Value> = sim
        .violations()
        .into_iter()
        .map(|v| {
            json!({
                "ms_since_start": v.at.saturating_duration_since(started).as_millis() as u64,
                "rule": v.rule,
                "detail": v.detail,
                "request_id": v.request_id,
            })
        })
        .collect();
    Json(json!({ "count": list.len(), "violations": list }))
}

async fn calls_json(State(sim): State<Simulator>) -> Json<Value> {
    let started = sim.inner.started.into_std();
    let list: Vec<Value> = sim
        .calls()
        .into_iter()
        .map(|c| {
            json!({
                "ms_since_start": c.at.saturating_duration_since(started).as_millis() as u64,
                "status": c.status,
                "fault": c.fault,
                "start_utc": c.start_utc.map(|t| t.to_string()),
                "end_utc": c.end_utc.map(|t| t.to_string()),
                "offset_minutes": c.offset_minutes,
                "page": c.page,
                "limit": c.limit,
                "num_results": c.num_results,
                "returned": c.returned,
                "request_id": c.request_id,
                "channels": c.channels,
                "queues": c.queues,
                "bots": c.bots,
                "selected_fields": c.selected_fields,
            })
        })
        .collect();
    Json(json!({ "total": sim.call_count(), "calls": list }))
}

/// Serves a simulator on `addr` until Ctrl-C, for running it on its own.
///
/// # Errors
/// If `addr` cannot be bound or serving fails.
pub async fn serve_standalone(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<()> {
    let sim = Simulator::new(cfg);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, account = %sim.config().account_id, "upstream simulator listening");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// Whether a UTC date is a "campaign" day: ~2,000 records instead of ~55, so any 7-day
/// query containing it holds more than the 1,100 records one query can page through.
pub fn is_dense_day(date: jiff::civil::Date) -> bool {
    let day = data::days_from_civil(
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    data::is_dense_day_index(day)
}

/// The vendor's five sample records, exactly as published (times IST, offset -330).
pub fn sample_records() -> Vec<Value> {
    data::sample_values()
}

/// A valid token for the simulator: HS256, `appId`, `iat`, `exp` = now + 60 s, and `jti`
/// when given.
pub fn mint_test_jwt(client_id: &str, secret: &str, jti: Option<&str>) -> String {
    let now = unix_now() as u64;
    let mut claims = json!({ "appId": client_id, "iat": now, "exp": now + 60 });
    if let (Some(j), Value::Object(map)) = (jti, &mut claims) {
        map.insert("jti".into(), json!(j));
    }
    // HS256 signing cannot fail for any key; an empty string would only fail verification.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

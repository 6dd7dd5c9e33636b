//! `GET /status`: the operators' page — the shared budget over the last minutes, calls by
//! team, jobs with their progress, the cache tiers, upstream health — and
//! `GET /status.json`, the numbers it draws, refreshed every few seconds.
//!
//! The page is a shell served from the binary (inline SVG and script, no CDN) and holds no
//! data, so anyone may load it; its numbers come from `/status.json`, which needs an API
//! key (any key; none when anonymous access is on). What `/status.json` names is scoped
//! like `/v1/jobs` (OWASP API3): a team key sees its own jobs and calls beside the shared
//! totals; only an admin key sees every team's. The page asks for the key once and
//! keeps it in the tab's session storage, or reads it from the URL fragment
//! (`/status#key=…`), which browsers never send to a server.

use std::sync::atomic::Ordering;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    AppState,
    api::auth::Caller,
    error::problems,
    jobs::{JobState, Progress},
};

const PAGE: &str = include_str!("status.html");

/// Seconds of budget history the page draws.
const HISTORY_SHOWN: i64 = 300;

/// The operators' status page.
///
/// HTML with no data of its own: it draws `/status.json` every few seconds with the key it is
/// given (from the URL fragment `#key=…` or its input field).
#[utoipa::path(get, path = "/status", tag = "operations", security(()),
    responses((status = 200, description = "The operators' status page (HTML, self-contained); it draws `/status.json` with the key it is given", body = String, content_type = "text/html")))]
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                ),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// What the status page draws.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// Unix seconds when this was read.
    pub now: i64,
    /// The default account's budget (the first account's when none is the default).
    pub budget: BudgetStatus,
    /// The block of every account this key may read: its budget and upstream health.
    pub accounts: Vec<AccountStatus>,
    /// The caller's own jobs for a team key; every key's for an admin key.
    pub jobs: Vec<JobStatus>,
    pub cache: CacheStatus,
    pub upstream: UpstreamStatus,
    /// The change feed on this replica.
    pub feed: FeedStatus,
}

/// The change feed (`/v1/interactions/changes`) on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedStatus {
    /// Streams open on this replica (every key's).
    pub subscribers: usize,
    /// Streams by key: the caller's own for a team key, every key's for an admin key.
    pub by_key: Vec<FeedKeyStatus>,
    /// Events found since start (each counted once, however many subscribers).
    pub created: u64,
    pub updated: u64,
    pub warnings: u64,
    /// Streams told to start over (an id that could not resume, a reader left behind).
    pub resets: u64,
    /// Events written to streams (each subscriber's copy counted).
    pub sent: u64,
    /// Polls made by this replica, and the upstream calls they cost.
    pub polls: u64,
    pub upstream_calls: u64,
    /// The topics of the accounts this key may read.
    pub topics: Vec<crate::feed::TopicStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedKeyStatus {
    pub key: String,
    pub streams: usize,
}

/// The shared upstream budget (`KORE_RATE_LIMIT`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetStatus {
    pub quota: u32,
    pub window_seconds: f64,
    /// Calls free in the window now (less those waiting).
    pub remaining: u32,
    pub reset_seconds: f64,
    pub in_flight: u32,
    pub waiting: usize,
    /// Calls granted since start.
    pub granted: u64,
    /// Calls granted per second over the last five minutes: `[unix second, calls]`,
    /// seconds without a call omitted.
    #[schema(value_type = Vec<Vec<i64>>)]
    pub history: Vec<(i64, u32)>,
    /// Calls granted since start and calls waiting now, per API key name: the caller's own
    /// row for a team key, every key's for an admin key (the totals above count everyone).
    pub by_caller: Vec<CallerStatus>,
}

/// One account's block of the status page.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountStatus {
    /// The account's name (the `account` parameter).
    pub name: String,
    /// The vendor's account id.
    pub account_id: String,
    pub default: bool,
    pub budget: BudgetStatus,
    /// Seconds since this account's upstream last answered well; null before its first.
    pub last_ok_seconds_ago: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallerStatus {
    pub caller: String,
    /// Upstream calls granted to this key since start (on this replica).
    pub calls: u64,
    /// Its calls waiting for budget now (on this replica).
    pub waiting: usize,
    /// Its reservation (GATEWAY_KEY_SHARES `min`), e.g. `20/min`; null when none.
    pub reservation: Option<String>,
    /// Its weight: its share of what reservations leave, among the keys waiting.
    pub weight: u32,
    /// Its cap (`max`), e.g. `40/min`; null when none.
    pub max: Option<String>,
}

/// A job as the status page shows it (no result URL: that is its owner's).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStatus {
    pub id: String,
    pub owner: String,
    pub state: JobState,
    pub progress: Progress,
    pub eta_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CacheStatus {
    pub max_bytes: u64,
    /// Hits (windows and rendered responses) over all lookups since start.
    pub hit_ratio: Option<f64>,
    pub tiers: Vec<TierStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierStatus {
    pub name: String,
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamStatus {
    /// Seconds since the upstream last answered well; null before its first answer.
    pub last_ok_seconds_ago: Option<i64>,
    /// Redis (the shared tier and budget) reachable; null when not configured.
    pub redis_up: Option<bool>,
}

/// The numbers of the status page.
///
/// The shared budget (now and per second over five minutes), calls by key, jobs, cache tiers
/// and upstream health; any API key. A team key sees its own jobs and calls and the shared
/// totals; an admin key sees every key's.
#[utoipa::path(get, path = "/status.json", tag = "operations",
    responses((status = 200, description = "Budget, calls by key, jobs, cache tiers and upstream health; jobs and calls by key are the caller's own unless the key is an admin key", body = Status),
              problems::Unauthorized),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn status_json(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    // Another team's key names and job ids are theirs to see (as `/v1/jobs/{id}` answers 404
    // to anyone else); the totals say how busy the shared budget is without naming anyone.
    let visible = |name: &str| caller.admin || name == &*caller.name;
    let now = jiff::Timestamp::now().as_second();
    let default = state
        .accounts
        .default_account()
        .or_else(|| state.accounts.all().first());
    // Only the accounts this key may read (GATEWAY_KEY_ACCOUNTS): another account's id and
    // traffic are not this team's to see.
    let accounts: Vec<AccountStatus> = state
        .accounts
        .all()
        .iter()
        .filter(|a| state.accounts.may_read(&caller.name, caller.admin, a.index))
        .map(|a| {
            let last_ok = a.fetcher.last_ok();
            AccountStatus {
                name: a.name.to_string(),
                account_id: a.account_id.clone(),
                default: default.is_some_and(|d| d.index == a.index),
                budget: budget_status(a.fetcher.budget(), now, &visible),
                last_ok_seconds_ago: (last_ok > 0).then(|| (now - last_ok).max(0)),
            }
        })
        .collect();
    let main = default.map(|a| a.fetcher.budget());
    let jobs = state
        .jobs
        .list(&caller.name, caller.admin)
        .iter()
        .map(|j| {
            let v = state.jobs.view(j, j.budget());
            JobStatus {
                id: v.id,
                owner: j.owner.to_string(),
                state: v.state,
                progress: v.progress,
                eta_seconds: v.eta_seconds,
            }
        })
        .collect();
    let (w_entries, w_bytes) = state.windows.usage().await;
    let (r_entries, r_bytes) = state.responses.usage();
    let c = &state.counters;
    let hits = c.hits.load(Ordering::Relaxed);
    let misses = c.misses.load(Ordering::Relaxed);
    let response_hits = c.response_hits.load(Ordering::Relaxed);
    let lookups = hits + misses + response_hits;
    let mut tiers = vec![
        TierStatus {
            name: "windows (memory)".into(),
            entries: w_entries,
            bytes: w_bytes,
            hits,
            misses: Some(misses),
        },
        TierStatus {
            name: "responses (memory)".into(),
            entries: r_entries,
            bytes: r_bytes,
            hits: response_hits,
            misses: None,
        },
    ];
    if let Some(cl) = &state.cluster {
        tiers.push(TierStatus {
            name: "redis (shared)".into(),
            entries: 0,
            bytes: 0,
            hits: cl.stats.l2_hits.load(Ordering::Relaxed),
            misses: None,
        });
    }
    let last_ok = state
        .accounts
        .all()
        .iter()
        .map(|a| a.fetcher.last_ok())
        .max()
        .unwrap_or(0);
    let Some(main) = main else {
        return crate::error::AppError::Internal("no account".into()).into_response();
    };
    let body = Status {
        now,
        budget: budget_status(main, now, &visible),
        accounts,
        jobs,
        cache: CacheStatus {
            max_bytes: state.settings.cache.max_bytes,
            hit_ratio: (lookups > 0).then(|| (hits + response_hits) as f64 / lookups as f64),
            tiers,
        },
        upstream: UpstreamStatus {
            last_ok_seconds_ago: (last_ok > 0).then(|| (now - last_ok).max(0)),
            redis_up: state.cluster.as_ref().map(|c| c.is_up()),
        },
        feed: feed_status(&state, &caller, &visible),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The feed's block: totals, the caller's streams (everyone's for an admin), the topics
/// of the accounts it may read.
fn feed_status(state: &AppState, caller: &Caller, visible: &dyn Fn(&str) -> bool) -> FeedStatus {
    let by_key_all = state.feed.subscribers_by_key();
    let c = &state.feed.counters;
    FeedStatus {
        subscribers: by_key_all.iter().map(|(_, n)| n).sum(),
        by_key: by_key_all
            .into_iter()
            .filter(|(k, _)| visible(k))
            .map(|(k, n)| FeedKeyStatus {
                key: k.to_string(),
                streams: n,
            })
            .collect(),
        created: c.created.load(Ordering::Relaxed),
        updated: c.updated.load(Ordering::Relaxed),
        warnings: c.warnings.load(Ordering::Relaxed),
        resets: c.resets.load(Ordering::Relaxed),
        sent: c.sent.load(Ordering::Relaxed),
        polls: c.polls.load(Ordering::Relaxed),
        upstream_calls: c.upstream_calls.load(Ordering::Relaxed),
        topics: state
            .feed
            .topics()
            .into_iter()
            .filter(|t| {
                state
                    .accounts
                    .may_read(&caller.name, caller.admin, t.account_index)
            })
            .collect(),
    }
}

/// A budget as the status page shows it: now, per second over [`HISTORY_SHOWN`], and per key
/// for the keys `visible` lets the caller see.
fn budget_status(
    budget: &crate::budget::Budget,
    now: i64,
    visible: &dyn Fn(&str) -> bool,
) -> BudgetStatus {
    let stats = budget.stats();
    let (remaining, reset) = budget.remaining();
    let waiting = budget.waiting_by_caller();
    let granted = budget.granted_by_caller();
    let row = |c: &str| {
        let share = budget.share_of(c);
        CallerStatus {
            caller: c.to_owned(),
            calls: granted
                .iter()
                .find(|(k, _)| **k == *c)
                .map_or(0, |(_, n)| *n),
            waiting: waiting.get(c).copied().unwrap_or(0),
            reservation: share.min.map(|r| r.to_string()),
            weight: share.weight,
            max: share.max.map(|r| r.to_string()),
        }
    };
    // Every configured key (with its share, even before its first call), then whoever
    // else called (the gateway's own work, anonymous callers).
    let mut names: Vec<std::sync::Arc<str>> = budget
        .shares()
        .iter()
        .map(|(k, _)| std::sync::Arc::clone(k))
        .collect();
    for c in granted.iter().map(|(c, _)| c).chain(waiting.keys()) {
        if !names.contains(c) {
            names.push(std::sync::Arc::clone(c));
        }
    }
    let by_caller: Vec<CallerStatus> = names
        .iter()
        .filter(|c| visible(c))
        .map(|c| row(c))
        .collect();
    BudgetStatus {
        quota: budget.rate().calls,
        window_seconds: budget.rate().period.as_secs_f64(),
        remaining,
        reset_seconds: reset.as_secs_f64(),
        in_flight: stats.in_flight,
        waiting: stats.waiting,
        granted: stats.granted,
        history: budget
            .history()
            .into_iter()
            .filter(|(sec, _)| now - sec < HISTORY_SHOWN)
            .collect(),
        by_caller,
    }
}

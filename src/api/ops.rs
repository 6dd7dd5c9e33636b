//! Operations: liveness, readiness and Prometheus metrics. None of them needs a key, and
//! none of them says anything about the credentials.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::{AppState, cache::disk::SlotState};

/// An upstream answer younger than this makes the gateway ready without asking again.
const RECENT: i64 = 300;
/// At most one readiness probe per this interval; in between, the last verdict stands.
const PROBE_EVERY: Duration = Duration::from_secs(60);

/// When an account was last probed, and the verdict.
type Probe = (Instant, Result<(), String>);

/// Readiness probe bookkeeping: each account's last probe.
#[derive(Debug, Default)]
pub struct Health {
    last_probe: Mutex<HashMap<usize, Probe>>,
}

/// Liveness / readiness.
#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthBody {
    #[schema(example = "ok")]
    pub status: String,
    pub detail: Option<String>,
    /// Readiness: each account's own verdict (the gateway is ready when every account is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountHealth>,
}

/// One account's readiness.
#[derive(Serialize, ToSchema)]
pub struct AccountHealth {
    /// The account's name (the `account` parameter).
    #[schema(example = "default")]
    pub name: String,
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Liveness: the process serves requests.
///
/// Needs no key and makes no upstream call; for an orchestrator's liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        detail: None,
        accounts: Vec::new(),
    })
}

/// Readiness: the configuration is valid and the upstream answers.
///
/// Ready when the upstream answered within the last five minutes; otherwise one small probe
/// call is made (at most once a minute, through the shared budget).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "Ready", body = HealthBody),
              (status = 503, description = "Upstream not answering", body = HealthBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // Redis is an optimisation: its absence is reported, never a reason to be unready.
    let redis = state.cluster.as_ref().map(|c| {
        if c.is_up() {
            format!(
                "redis: up, {} replica(s) sharing cache and budget",
                c.replicas()
            )
        } else {
            "redis: unavailable, using the local cache and a local share of the budget".to_owned()
        }
    });
    // So is the disk tier: a lost one is reported, and the gateway goes on in memory.
    let disk = state.disk.as_ref().map(|slot| match (slot.state(), slot.tier()) {
        (SlotState::Open, Some(d)) if d.is_healthy() => "disk cache: up".to_owned(),
        (SlotState::Open, _) => {
            "disk cache: writes failed (disk full or read-only?), running in memory".to_owned()
        }
        (SlotState::Waiting, _) => format!(
            "disk cache: the store is open in another process (an overlapping deploy?); running in memory, asking again every {} s",
            crate::cache::disk::RETRY_EVERY.as_secs()
        ),
        (SlotState::Failed(_), _) => {
            "disk cache: could not be opened, running in memory".to_owned()
        }
    });
    let redis = match (redis, disk) {
        (Some(r), Some(d)) => Some(format!("{r}; {d}")),
        (r, d) => r.or(d),
    };
    // Every account is asked at once: a slow one does not hold up the others' verdicts.
    let verdicts = futures_util::future::join_all(
        state
            .accounts
            .all()
            .iter()
            .map(|a| account_ready(&state, a)),
    )
    .await;
    let accounts: Vec<AccountHealth> = state
        .accounts
        .all()
        .iter()
        .zip(verdicts)
        .map(|(a, v)| AccountHealth {
            name: a.name.to_string(),
            status: if v.is_ok() { "ready" } else { "not ready" },
            detail: v.err(),
        })
        .collect();
    ready(accounts, redis)
}

/// One account's verdict: ready when its upstream answered within [`RECENT`] seconds;
/// otherwise one small probe call (at most once per [`PROBE_EVERY`], through its budget).
async fn account_ready(state: &AppState, a: &crate::account::Account) -> Result<(), String> {
    let now = jiff::Timestamp::now().as_second();
    if now - a.fetcher.last_ok() < RECENT {
        return Ok(());
    }
    let cached = state
        .health
        .last_probe
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&a.index)
        .filter(|(at, _)| at.elapsed() < PROBE_EVERY)
        .map(|(_, r)| r.clone());
    if let Some(v) = cached {
        return v;
    }
    let v = match tokio::time::timeout(Duration::from_secs(10), a.fetcher.probe()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("upstream probe failed: {}", e.label())),
        Err(_) => Err("upstream probe timed out".to_owned()),
    };
    state
        .health
        .last_probe
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(a.index, (Instant::now(), v.clone()));
    v
}

fn ready(accounts: Vec<AccountHealth>, redis: Option<String>) -> Response {
    let unready: Vec<String> = accounts
        .iter()
        .filter_map(|a| {
            a.detail
                .as_ref()
                .map(|d| format!("account `{}`: {d}", a.name))
        })
        .collect();
    let (status, word, detail) = if unready.is_empty() {
        (StatusCode::OK, "ready", redis)
    } else {
        let d = unready.join("; ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            Some(match redis {
                Some(r) => format!("{d}; {r}"),
                None => d,
            }),
        )
    };
    (
        status,
        Json(HealthBody {
            status: word.into(),
            detail,
            accounts,
        }),
    )
        .into_response()
}

/// Every metric family `/metrics` exposes, with its help text: registered with the
/// recorder once at start-up, so each family carries `# HELP` (and `promtool check
/// metrics` is clean). Monotonic counts are counters named `_total`; levels are gauges.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gateway_requests_total",
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        "gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (to the response head for streams), by route"
    );
    describe_counter!(
        "gateway_upstream_calls_total",
        "Upstream calls made (retries included), by outcome"
    );
    describe_histogram!(
        "gateway_upstream_call_seconds",
        metrics::Unit::Seconds,
        "Duration of one upstream call"
    );
    describe_counter!(
        "gateway_upstream_retries_total",
        "Upstream calls retried after a transient failure"
    );
    describe_counter!(
        "gateway_budget_exhausted_total",
        "Upstream calls refused because the budget would not free up within KORE_MAX_WAIT"
    );
    describe_counter!(
        "gateway_export_spilled_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of NDJSON/CSV exports buffered in a temporary file (CACHE_DIR, else TMPDIR) because they outgrew their memory share"
    );
    describe_gauge!("gateway_upstream_in_flight", "Upstream calls in flight now");
    describe_gauge!(
        "gateway_feed_subscribers",
        "Change-feed streams open on this replica"
    );
    describe_counter!(
        "gateway_feed_events_total",
        "Change-feed events found (each once, however many subscribers), by event (created, updated, warning)"
    );
    describe_counter!(
        "gateway_feed_events_sent_total",
        "Change-feed events written to streams (each subscriber's copy), by event"
    );
    describe_counter!(
        "gateway_feed_upstream_calls_total",
        "Upstream calls made by the change feed's polls, by account"
    );
    describe_gauge!(
        "gateway_budget_waiting_calls",
        "Upstream calls waiting for budget now"
    );
    describe_gauge!(
        "gateway_budget_calls_in_window",
        "Upstream calls in the current sliding budget period"
    );
    describe_gauge!(
        "gateway_cache_entries",
        "Entries held, by cache (windows, responses)"
    );
    describe_gauge!(
        "gateway_cache_bytes",
        metrics::Unit::Bytes,
        "Bytes held, by cache (windows, responses)"
    );
    describe_counter!(
        "gateway_cache_hits_total",
        "Lookups answered from a fresh cached copy, by kind (window, response)"
    );
    describe_counter!(
        "gateway_cache_misses_total",
        "Window lookups that fetched from the upstream"
    );
    describe_counter!(
        "gateway_cache_coalesced_total",
        "Window lookups that waited on an identical fetch in flight instead of calling"
    );
    describe_counter!(
        "gateway_compressed_on_the_way_out_total",
        "Answers compressed as they were sent (misses, streams); stored answers are sent in forms made once"
    );
    describe_counter!(
        "gateway_cache_stale_served_total",
        "Expired windows served because the upstream failed"
    );
    describe_gauge!(
        "gateway_redis_up",
        "1 when the last Redis operation succeeded, 0 when Redis is unavailable"
    );
    describe_gauge!(
        "gateway_redis_replicas",
        "Replicas sharing the account, as last seen through Redis (at least GATEWAY_REPLICAS)"
    );
    describe_counter!(
        "gateway_redis_errors_total",
        "Redis operations that failed or timed out"
    );
    describe_counter!(
        "gateway_redis_l2_hits_total",
        "Windows read from the shared Redis tier"
    );
    describe_counter!(
        "gateway_redis_l2_writes_total",
        "Windows written to the shared Redis tier"
    );
    describe_counter!(
        "gateway_redis_lock_waits_total",
        "Cold windows this replica waited for while another replica fetched them"
    );
    describe_counter!(
        "gateway_cache_tier_hits_total",
        "Windows found in a cache tier, by tier (memory, disk, redis)"
    );
    describe_counter!(
        "gateway_cache_tier_misses_total",
        "Windows looked for and not found in a tier, by tier"
    );
    describe_counter!(
        "gateway_cache_tier_writes_total",
        "Windows written to a tier, by tier"
    );
    describe_counter!(
        "gateway_cache_tier_evictions_total",
        "Windows removed from a tier to keep it within its bound, by tier"
    );
    describe_counter!(
        "gateway_cache_tier_errors_total",
        "Failed reads and writes of a tier, by tier"
    );
    describe_gauge!(
        "gateway_cache_tier_bytes",
        metrics::Unit::Bytes,
        "Bytes held by a tier (memory: windows in moka; disk: stored, compressed)"
    );
    describe_gauge!("gateway_cache_tier_entries", "Windows held by a tier");
    describe_gauge!(
        "gateway_cache_disk_up",
        "1 while the disk tier (CACHE_DIR) works, 0 once a write failed and it is off"
    );
    describe_counter!(
        "gateway_cache_revalidations_total",
        "Stale windows refreshed in the background (stale-while-revalidate)"
    );
    describe_counter!(
        "gateway_cache_refresh_ahead_total",
        "Windows refreshed before they expired because they are being read"
    );
    describe_counter!(
        "gateway_compressions_total",
        "Stored answers compressed (once each), by coding"
    );
    describe_counter!(
        "gateway_jobs_started_total",
        "Jobs started for Prefer: respond-async requests"
    );
    describe_counter!(
        "gateway_jobs_finished_total",
        "Jobs that stopped running here, by state (done, failed, cancelled; suspended: left resumable at shutdown; taken_over: another process runs it)"
    );
    describe_counter!(
        "gateway_jobs_resumed_total",
        "Jobs resumed here after their process stopped or died (CACHE_DIR or Redis)"
    );
    describe_counter!(
        "gateway_requests_refused_before_spending_total",
        "Requests answered 503 before any upstream call: the budget could not serve them within KORE_MAX_WAIT"
    );
    describe_histogram!(
        "gateway_budget_wait_by_priority_seconds",
        metrics::Unit::Seconds,
        "Time an upstream call waited for the shared budget, by priority (caller, revalidate, refresh_ahead)"
    );
}

/// A counter family the `metrics` facade cannot hold (its counters are whole numbers):
/// written by hand in the same text format.
/// A counter family with one float sample per account (names are `[a-z0-9-]`: nothing to
/// escape in the label value).
fn float_counter(out: &mut String, name: &str, help: &str, by_account: &[(&str, f64)]) {
    use std::fmt::Write as _;
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
    for (account, value) in by_account {
        let _ = writeln!(out, "{name}{{account=\"{account}\"}} {value}");
    }
    out.push('\n');
}

/// Prometheus text exposition.
///
/// Requests, latency, cache hits, misses and bytes, upstream calls by outcome, budget waits,
/// jobs; no key needed.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let (entries, bytes) = state.windows.usage().await;
    let (r_entries, r_bytes) = state.responses.usage();
    let c = &state.counters;
    metrics::gauge!("gateway_cache_entries", "cache" => "windows").set(entries as f64);
    metrics::gauge!("gateway_cache_bytes", "cache" => "windows").set(bytes as f64);
    metrics::gauge!("gateway_cache_entries", "cache" => "responses").set(r_entries as f64);
    metrics::gauge!("gateway_cache_bytes", "cache" => "responses").set(r_bytes as f64);
    // Counts kept in the cache's own atomics, exported as the counters they are.
    metrics::counter!("gateway_cache_hits_total", "kind" => "window")
        .absolute(c.hits.load(Ordering::Relaxed));
    metrics::counter!("gateway_cache_hits_total", "kind" => "response")
        .absolute(c.response_hits.load(Ordering::Relaxed));
    metrics::counter!("gateway_cache_misses_total").absolute(c.misses.load(Ordering::Relaxed));
    metrics::counter!("gateway_cache_coalesced_total")
        .absolute(c.coalesced.load(Ordering::Relaxed));
    metrics::counter!("gateway_compressed_on_the_way_out_total")
        .absolute(c.compressed_on_the_way_out.load(Ordering::Relaxed));
    metrics::counter!("gateway_cache_stale_served_total")
        .absolute(c.stale_served.load(Ordering::Relaxed));
    let mut waited: Vec<(&str, f64)> = Vec::with_capacity(state.accounts.all().len());
    for a in state.accounts.all() {
        let b = a.fetcher.budget().stats();
        let account = metrics::SharedString::from_shared(std::sync::Arc::clone(&a.name));
        metrics::gauge!("gateway_budget_waiting_calls", "account" => account.clone())
            .set(b.waiting as f64);
        metrics::gauge!("gateway_budget_calls_in_window", "account" => account.clone())
            .set(b.used_in_window as f64);
        metrics::gauge!("gateway_upstream_in_flight", "account" => account)
            .set(f64::from(b.in_flight));
        waited.push((&a.name, b.waited_seconds));
    }
    // Per tier: memory (moka), disk (CACHE_DIR), redis (REDIS_URL).
    metrics::counter!("gateway_cache_tier_hits_total", "tier" => "memory")
        .absolute(c.hits.load(Ordering::Relaxed));
    metrics::gauge!("gateway_cache_tier_bytes", "tier" => "memory").set(bytes as f64);
    metrics::counter!("gateway_cache_revalidations_total")
        .absolute(c.revalidations.load(Ordering::Relaxed));
    metrics::counter!("gateway_cache_refresh_ahead_total")
        .absolute(c.refresh_ahead.load(Ordering::Relaxed));
    if let Some(d) = state.disk.as_ref().and_then(|d| d.tier()) {
        let (d_entries, d_bytes) = d.usage();
        let dc = &d.counters;
        metrics::gauge!("gateway_cache_disk_up").set(if d.is_healthy() { 1.0 } else { 0.0 });
        metrics::gauge!("gateway_cache_tier_entries", "tier" => "disk").set(d_entries as f64);
        metrics::gauge!("gateway_cache_tier_bytes", "tier" => "disk").set(d_bytes as f64);
        for (name, v) in [
            ("gateway_cache_tier_hits_total", &dc.hits),
            ("gateway_cache_tier_misses_total", &dc.misses),
            ("gateway_cache_tier_writes_total", &dc.writes),
            ("gateway_cache_tier_evictions_total", &dc.evictions),
            ("gateway_cache_tier_errors_total", &dc.errors),
        ] {
            metrics::counter!(name, "tier" => "disk").absolute(v.load(Ordering::Relaxed));
        }
    }
    if let Some(c) = &state.cluster {
        let st = &c.stats;
        metrics::counter!("gateway_cache_tier_hits_total", "tier" => "redis")
            .absolute(st.l2_hits.load(Ordering::Relaxed));
        metrics::gauge!("gateway_redis_up").set(if c.is_up() { 1.0 } else { 0.0 });
        metrics::gauge!("gateway_redis_replicas").set(f64::from(c.replicas()));
        metrics::counter!("gateway_redis_l2_hits_total")
            .absolute(st.l2_hits.load(Ordering::Relaxed));
        metrics::counter!("gateway_redis_l2_writes_total")
            .absolute(st.l2_writes.load(Ordering::Relaxed));
        metrics::counter!("gateway_redis_lock_waits_total")
            .absolute(st.lock_waits.load(Ordering::Relaxed));
    }
    let mut text = state.metrics.render();
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    float_counter(
        &mut text,
        "gateway_budget_wait_seconds_total",
        "Seconds upstream calls spent waiting for the shared budget, summed, by account",
        &waited,
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

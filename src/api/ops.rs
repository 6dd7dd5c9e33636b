//! Operations: liveness, readiness and Prometheus metrics. None of them needs a key, and
//! none of them says anything about the credentials.

use std::{
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use crate::{AppState, api::docs};

/// An upstream answer younger than this makes the gateway ready without asking again.
const RECENT: i64 = 300;
/// At most one readiness probe per this interval; in between, the last verdict stands.
const PROBE_EVERY: Duration = Duration::from_secs(60);

/// Readiness probe bookkeeping.
#[derive(Debug, Default)]
pub struct Health {
    last_probe: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Liveness: the process serves requests.
///
/// Needs no key and makes no upstream call; for an orchestrator's liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = docs::Health)))]
pub async fn healthz() -> Json<docs::Health> {
    Json(docs::Health {
        status: "ok".into(),
        detail: None,
    })
}

/// Readiness: the configuration is valid and the upstream answers.
///
/// Ready when the upstream answered within the last five minutes; otherwise one small probe
/// call is made (at most once a minute, through the shared budget).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "Ready", body = docs::Health),
              (status = 503, description = "Upstream not answering", body = docs::Health)))]
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
    let now = jiff::Timestamp::now().as_second();
    if now - state.fetcher.last_ok() < RECENT {
        return ready(Ok(()), redis);
    }
    let cached = state
        .health
        .last_probe
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(at, _)| at.elapsed() < PROBE_EVERY)
        .map(|(_, r)| r.clone());
    let verdict = match cached {
        Some(v) => v,
        None => {
            let v = match tokio::time::timeout(Duration::from_secs(10), state.fetcher.probe()).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("upstream probe failed: {}", e.label())),
                Err(_) => Err("upstream probe timed out".to_owned()),
            };
            *state
                .health
                .last_probe
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v.clone()));
            v
        }
    };
    ready(verdict, redis)
}

fn ready(v: Result<(), String>, redis: Option<String>) -> Response {
    let (status, word, detail) = match v {
        Ok(()) => (StatusCode::OK, "ready", redis),
        Err(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            Some(match redis {
                Some(r) => format!("{d}; {r}"),
                None => d,
            }),
        ),
    };
    (
        status,
        Json(docs::Health {
            status: word.into(),
            detail,
        }),
    )
        .into_response()
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
    metrics::gauge!("gateway_cache_hits", "kind" => "window")
        .set(c.hits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_cache_hits", "kind" => "response")
        .set(c.response_hits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_cache_misses").set(c.misses.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_cache_coalesced").set(c.coalesced.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_cache_stale_served")
        .set(c.stale_served.load(Ordering::Relaxed) as f64);
    let b = state.fetcher.budget().stats();
    metrics::gauge!("gateway_budget_wait_seconds_sum").set(b.waited_seconds);
    metrics::gauge!("gateway_budget_waiting_calls").set(b.waiting as f64);
    metrics::gauge!("gateway_budget_calls_in_window").set(b.used_in_window as f64);
    metrics::gauge!("gateway_upstream_in_flight").set(f64::from(b.in_flight));
    if let Some(c) = &state.cluster {
        let st = &c.stats;
        metrics::gauge!("gateway_redis_up").set(if c.is_up() { 1.0 } else { 0.0 });
        metrics::gauge!("gateway_redis_replicas").set(f64::from(c.replicas()));
        metrics::gauge!("gateway_redis_l2_hits").set(st.l2_hits.load(Ordering::Relaxed) as f64);
        metrics::gauge!("gateway_redis_l2_writes").set(st.l2_writes.load(Ordering::Relaxed) as f64);
        metrics::gauge!("gateway_redis_lock_waits")
            .set(st.lock_waits.load(Ordering::Relaxed) as f64);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

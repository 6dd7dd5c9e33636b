//! Cache administration, for admin keys only.

use std::sync::atomic::Ordering;

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, error::problems};

/// Entries, bytes and hit ratio of the caches, and the state of the upstream budget.
///
/// Admin keys only.
#[utoipa::path(get, path = "/v1/cache", tag = "admin",
    responses((status = 200, description = "Cache statistics", body = CacheStats),
              problems::Unauthorized, problems::Forbidden),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cache_stats(State(state): State<AppState>) -> Json<CacheStats> {
    let (window_entries, window_bytes) = state.windows.usage().await;
    let (response_entries, response_bytes) = state.responses.usage();
    let c = &state.counters;
    let hits = c.hits.load(Ordering::Relaxed);
    let response_hits = c.response_hits.load(Ordering::Relaxed);
    let misses = c.misses.load(Ordering::Relaxed);
    let coalesced = c.coalesced.load(Ordering::Relaxed);
    let lookups = hits + response_hits + misses;
    // Every account's budget, added up (each account's own is on /status.json).
    let (mut granted, mut waiting, mut in_window) = (0u64, 0u64, 0u64);
    for a in state.accounts.all() {
        let b = a.fetcher.budget().stats();
        granted += b.granted;
        waiting += b.waiting as u64;
        in_window += b.used_in_window as u64;
    }
    Json(CacheStats {
        window_entries,
        window_bytes,
        response_entries,
        response_bytes,
        max_bytes: state.settings.cache.max_bytes,
        hits,
        misses,
        coalesced,
        stale_served: c.stale_served.load(Ordering::Relaxed),
        response_hits,
        hit_ratio: (lookups > 0).then(|| (hits + response_hits) as f64 / lookups as f64),
        upstream_calls_granted: granted,
        upstream_calls_waiting: waiting,
        upstream_calls_in_window: in_window,
    })
}

/// Drops every cached window and response, of every account.
///
/// This replica's memory and disk tier (`CACHE_DIR`), and the windows shared through Redis
/// when `REDIS_URL` is set; the answer says what went, per tier. Other replicas stop serving
/// what they hold (memory and disk) once they read the raised purge epoch from Redis, and
/// free their memory then; with other replicas alive the answer comes once all have read
/// it (`replicas.reach_ms`). Admin
/// keys only; the next requests refetch from the upstream, within the shared budget.
#[utoipa::path(delete, path = "/v1/cache", tag = "admin",
    responses((status = 200, description = "Purged; what went, per tier", body = CachePurge),
              problems::Unauthorized, problems::Forbidden),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cache_purge(State(state): State<AppState>) -> Json<CachePurge> {
    let (windows, _) = state.windows.usage().await;
    let (responses, _) = state.responses.usage();
    // First the epoch, so that from now on no replica serves a copy fetched before.
    let (epoch, told) = crate::cache::purge::raise(state.cluster.as_ref(), &state.windows).await;
    state.windows.purge();
    let disk = match state.disk.as_ref().and_then(|d| d.tier()) {
        Some(d) => Some(d.purge().await),
        None => None,
    };
    state.responses.purge();
    let redis = match &state.redis {
        None => None,
        Some(r) => {
            // Every account's windows (each account's namespace has its own prefix).
            let (mut windows, mut complete) = (0, true);
            for a in state.accounts.all() {
                let (n, finished) = r.purge(a.ns.label()).await;
                windows += n;
                complete &= finished;
            }
            Some(PurgedRedis { windows, complete })
        }
    };
    // The other replicas read the epoch on a clock: answer once every one has.
    let others = told && state.cluster.as_ref().is_some_and(|c| c.replicas() > 1);
    if others {
        tokio::time::sleep(crate::cache::purge::REACH).await;
    }
    tracing::info!(
        epoch,
        replicas_told = told,
        memory_windows = windows,
        memory_responses = responses,
        disk_windows = disk,
        redis_windows = redis.as_ref().map(|r| r.windows),
        redis_complete = redis.as_ref().map(|r| r.complete),
        "cache purged by an admin key"
    );
    Json(CachePurge {
        memory: PurgedMemory { windows, responses },
        disk,
        redis,
        replicas: PurgedReplicas {
            epoch,
            told,
            reach_ms: if told {
                crate::cache::purge::REACH.as_millis() as u64
            } else {
                0
            },
        },
    })
}

/// Cache statistics.
#[derive(Serialize, ToSchema)]
pub struct CacheStats {
    pub window_entries: u64,
    pub window_bytes: u64,
    pub response_entries: u64,
    pub response_bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub stale_served: u64,
    pub response_hits: u64,
    /// (hits + response hits) / (hits + response hits + misses); null before any lookup.
    pub hit_ratio: Option<f64>,
    /// Upstream calls granted since start, every account together.
    pub upstream_calls_granted: u64,
    pub upstream_calls_waiting: u64,
    pub upstream_calls_in_window: u64,
}

/// What `DELETE /v1/cache` dropped, per tier.
#[derive(Serialize, ToSchema)]
pub struct CachePurge {
    /// This replica's memory (moka).
    pub memory: PurgedMemory,
    /// Windows removed from this replica's disk tier; null when `CACHE_DIR` is not set.
    pub disk: Option<u64>,
    /// The windows shared through Redis; null when `REDIS_URL` is not set.
    pub redis: Option<PurgedRedis>,
    /// The other replicas: they stop serving what they hold once they read the new epoch.
    pub replicas: PurgedReplicas,
}

/// How the purge reaches the other replicas.
#[derive(Serialize, ToSchema)]
pub struct PurgedReplicas {
    /// The purge epoch now in force: copies fetched before it are served by no replica.
    pub epoch: u64,
    /// The epoch went to Redis, where every replica reads it; false without Redis (or with
    /// Redis unreachable: then only this replica's copies went).
    pub told: bool,
    /// Within how long every replica has read it (the answer waited that long when other
    /// replicas are alive); 0 when not told.
    pub reach_ms: u64,
}

/// Entries dropped from this replica's memory.
#[derive(Serialize, ToSchema)]
pub struct PurgedMemory {
    /// Cached windows of upstream records.
    pub windows: u64,
    /// Rendered JSON answers.
    pub responses: u64,
}

/// Window keys unlinked from Redis.
#[derive(Serialize, ToSchema)]
pub struct PurgedRedis {
    pub windows: u64,
    /// False when Redis failed part-way: some shared windows may remain.
    pub complete: bool,
}

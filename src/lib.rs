//! kore-gateway: one pleasant, fast and safe door to the Kore.ai SmartAssist
//! "interaction details" API.
//!
//! A request flows through one pipeline, one module per step:
//!
//! ```text
//! request ─► api (parse + validate GET) ─► plan (windows: grid, 7 days, DST) ─►
//!   fetch (budget ► cache ► upstream client, retries) ─► merge (dedupe, sort, cross-check)
//!   ─► render (json / ndjson / csv)
//! ```
//!
//! * [`api`] authenticates the caller by API key, parses the query into typed values and
//!   turns every failure into problem+json through [`error::AppError`]; it chooses the
//!   request's [`account`] once (its client, budget, cache namespace and cursor key) and
//!   passes it down.
//! * [`plan`] splits the range into windows of at most 7 days on a grid that depends only on
//!   the time zone, never crossing a DST change.
//! * [`fetch`] fans out over windows and pages, splitting windows that hold more than the
//!   vendor lets one query reach (the vendor's counts are hints, the pages the evidence),
//!   within the shared [`budget`] (callers, then revalidations, then refresh-ahead) and the
//!   request's own call allowance; [`upstream`] is the vendor client (JWT, body, statuses).
//! * [`cache`] holds the typed keys — every one names whose data it is
//!   ([`cache::Namespace`]: the account's base URL, account id, vendor endpoint) — and
//!   answers repeats: windows in memory, then the tiers below it behind one trait
//!   ([`cache::Tier`]: get / put / lock-for-fetch) — [`cache::disk`] (`CACHE_DIR`) on this
//!   machine, [`cache::redis`] between replicas; it
//!   coalesces identical misses, serves stale while it revalidates, refreshes polled
//!   windows ahead, and keeps stored answers with the forms [`encoding`] compressed once.
//! * [`outcome`] judges an answer from its windows' outcomes (complete, stale, hit or miss,
//!   age) for every route; [`merge`] de-duplicates and orders records, which stay raw JSON
//!   byte for byte; [`render`] writes the envelope, signed keyset cursors and ETags;
//!   [`spool`] keeps an export's rendered bytes until its status line can go (memory, then
//!   an unnamed temporary file); [`summary`] aggregates records into groups.
//! * [`jobs`] runs long ranges asked with `Prefer: respond-async`; [`ratelimit_headers`] and
//!   [`telemetry`] make the budget and the work visible (traces, request ids); [`tls`]
//!   installs the crypto provider of the HTTPS clients.
//! * [`cluster`] is the replica's Redis connection, when `REDIS_URL` is set: each account's
//!   shared budget log (behind [`budget::SharedLog`]) and the heartbeats; the cache's Redis
//!   tier uses the same connection.
//!
//! Modules depend downwards only (`tests/structure.rs` fails on a cycle): `api` → `account`,
//! `jobs` → `fetch` → `cache` → `plan`/`merge`/`upstream`; `cache` → `cluster` →
//! `budget` (the budget knows only its trait); `outcome`, `render` and `summary` read what
//! `fetch` and `merge` produce.
//!
//! Beside this crate, in the same workspace: `crates/sim` (`kore-sim`), the upstream
//! simulator the tests, the benchmarks and `--demo` run against — in the binary only with
//! the default `demo` feature, never imported by a module of this library — and
//! `crates/tools` (`kore-tools`): `kore-load` and the benchmarks' `ceiling` server.
//!
//! [`build`] makes the shared [`AppState`]; [`app`] turns it into the `Router`.

pub mod account;
pub mod api;
pub mod budget;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod encoding;
pub mod error;
pub mod feed;
pub mod fetch;
pub mod jobs;
pub mod merge;
pub mod outcome;
pub mod plan;
pub mod ratelimit_headers;
pub mod render;
pub mod spool;
pub mod summary;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::sync::{Arc, OnceLock};

use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{
    account::{Account, Accounts},
    api::auth::KeyRing,
    budget::{Budget, KeyLimiter},
    cache::{CacheCounters, Namespace, ResponseCache, Tier, WindowCache, disk::DiskSlot},
    cluster::Cluster,
    config::{BudgetSettings, Settings},
    fetch::Fetcher,
    upstream::UpstreamClient,
};

/// Everything a request needs, built once at start-up.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    /// The vendor accounts, each its own upstream (client, budget, namespace, cursor key).
    pub accounts: Accounts,
    pub windows: Arc<WindowCache>,
    pub responses: ResponseCache,
    pub counters: Arc<CacheCounters>,
    pub keys: KeyRing,
    pub key_limiter: Option<KeyLimiter>,
    pub metrics: PrometheusHandle,
    pub health: api::ops::Health,
    /// What replicas share through Redis, when REDIS_URL is set.
    pub cluster: Option<Arc<Cluster>>,
    /// The disk tier below the window cache, when CACHE_DIR is set (open, or waiting for
    /// another process to let the store go).
    pub disk: Option<Arc<DiskSlot>>,
    /// The Redis tier between replicas, when REDIS_URL is set.
    pub redis: Option<Arc<cache::redis::RedisTier>>,
    /// `Prefer: respond-async` jobs.
    pub jobs: jobs::Jobs,
    /// The shutdown signal (SHUTDOWN_GRACE): every wait for budget and every job watch it.
    pub drain: drain::Drain,
    /// Response-cache keys of data query strings already parsed.
    pub query_keys: api::query::KeyMemo,
    /// `RateLimit-Policy` values (fixed by the configuration).
    pub ratelimit_policy: ratelimit_headers::PolicyValues,
    /// The change feed (`/v1/interactions/changes`).
    pub feed: Arc<feed::Feed>,
}

/// Cheap-to-clone handle on the [`App`].
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder, so
/// every `App` in a process, as in the tests, shares it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => {
                    api::ops::describe_metrics();
                    h
                }
                // Another recorder is installed already: keep a private one so /metrics still works.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Builds the application state from validated settings. Needs a Tokio runtime (the budget
/// starts its dispatcher task).
///
/// # Errors
/// The upstream client cannot be built from the settings.
pub fn build(settings: Settings) -> Result<AppState, String> {
    let cluster = match &settings.redis_url {
        Some(url) => Some(Cluster::new(url, settings.replicas)?),
        None => None,
    };
    // One shutdown signal for every wait of every account, and for the jobs.
    let drain = drain::Drain::default();
    // Every key is listed, so the budget knows which callers are keys (its `key` label).
    let shares = Arc::new(
        settings
            .key_shares
            .clone()
            .including(settings.api_keys.iter().map(|k| &k.name)),
    );
    let mut built: Vec<Arc<Account>> = Vec::with_capacity(settings.accounts.len());
    for (index, a) in settings.accounts.iter().enumerate() {
        let client =
            UpstreamClient::new(&a.upstream).map_err(|e| format!("account `{}`: {e}", a.name))?;
        let ns = Namespace::new(
            a.upstream.base_url.as_str(),
            &a.upstream.account_id,
            upstream::VENDOR_PATH,
        );
        // A shared-budget slot of a call whose replica died counts until the call must be over.
        let lease = a.upstream.timeout + std::time::Duration::from_secs(5);
        let budget = Budget::with_shares(
            &BudgetSettings {
                rate: a.rate,
                ..settings.budget
            },
            Arc::clone(&a.name),
            cluster.as_ref().map(|c| c.account_log(ns.label())),
            lease,
            Arc::clone(&shares),
        );
        let fetcher = Arc::new(Fetcher::new(
            client,
            budget,
            a.upstream.retries,
            settings.budget.max_wait,
            Arc::clone(&a.name),
            drain.clone(),
        ));
        let cursor_key = {
            use secrecy::ExposeSecret;
            render::CursorKey::derive(a.upstream.client_secret.expose_secret().as_bytes())
        };
        built.push(Arc::new(Account {
            name: Arc::clone(&a.name),
            account_id: a.upstream.account_id.clone(),
            base_url: a.upstream.base_url.to_string(),
            ns,
            fetcher,
            cursor_key,
            offset_mode: a.upstream.offset_mode,
            rate: a.rate,
            index,
        }));
    }
    if built.is_empty() {
        return Err("no account configured".into());
    }
    if let Some(d) = &settings.disk {
        // The calls the previous process made in the last period still count.
        let carried = budget::carry::load(&d.dir);
        for a in &built {
            if let Some(calls) = carried.get(a.ns.label()) {
                a.fetcher.budget().seed_calls(calls);
            }
        }
    }
    if let Some(c) = &cluster {
        c.spawn_heartbeat();
    }
    let accounts = Accounts::new(built, &settings.accounts, settings.key_accounts.as_ref());
    let counters = Arc::new(CacheCounters::default());
    let disk = settings
        .disk
        .as_ref()
        .map(|d| DiskSlot::open(d.dir.clone(), d.max_bytes));
    let redis = cluster.as_ref().map(|c| {
        Arc::new(cache::redis::RedisTier::new(
            Arc::clone(c),
            settings.cache.stale_grace,
        ))
    });
    // With replicas, the purge epoch is learnt from Redis before the disk is read.
    let epoch = cache::Epoch::new(cluster.is_none());
    let windows = Arc::new(
        WindowCache::with_tiers(
            settings.cache,
            Arc::clone(&counters),
            disk.clone().map(|d| d as Arc<dyn Tier>),
            redis.clone().map(|r| r as Arc<dyn Tier>),
        )
        .with_epoch(epoch.clone()),
    );
    windows.spawn_refresh_ahead();
    if let Some(c) = &cluster {
        cache::purge::watch(Arc::clone(c), Arc::downgrade(&windows), disk.clone());
    }
    let responses = ResponseCache::new(&settings.cache).with_epoch(epoch);
    let keys = KeyRing::new(&settings.api_keys, settings.allow_anonymous);
    let key_limiter = settings.key_rate_limit.map(|rate| {
        let limiter = KeyLimiter::new(rate);
        match &cluster {
            Some(c) => limiter.with_shared(Arc::clone(c) as Arc<dyn budget::SharedCounter>),
            None => limiter,
        }
    });
    let ratelimit_policy = ratelimit_headers::PolicyValues::new(
        key_limiter.as_ref().map(KeyLimiter::rate),
        accounts.all().iter().map(|a| a.rate),
    );
    let jobs = jobs::Jobs::new(jobs::JobsConfig {
        ttl: settings.job_ttl,
        store: jobs::store_for(
            cluster.as_ref(),
            settings.disk.as_ref().map(|d| d.dir.as_path()),
            accounts
                .all()
                .iter()
                .map(|a| a.ns.label().to_owned())
                .collect(),
            settings.job_ttl,
        ),
        accounts: accounts.all().to_vec(),
        windows: Arc::clone(&windows),
        max_calls_per_request: settings.budget.max_calls_per_request,
        drain: drain.clone(),
    });
    jobs.spawn_background();
    let tickets = {
        use secrecy::ExposeSecret;
        let secrets: Vec<&[u8]> = settings
            .accounts
            .iter()
            .map(|a| a.upstream.client_secret.expose_secret().as_bytes())
            .chain(
                settings
                    .api_keys
                    .iter()
                    .map(|k| k.key.expose_secret().as_bytes()),
            )
            .collect();
        feed::ticket::TicketKey::derive(secrets)
    };
    let feed = feed::Feed::new(
        settings.feed,
        Arc::clone(&windows),
        cluster.clone(),
        drain.clone(),
        settings.budget.max_calls_per_request,
        tickets,
    );
    Ok(AppState(Arc::new(App {
        settings,
        accounts,
        windows,
        responses,
        counters,
        keys,
        key_limiter,
        metrics: metrics_handle(),
        health: api::ops::Health::default(),
        cluster,
        disk,
        redis,
        jobs,
        drain,
        query_keys: api::query::KeyMemo::default(),
        ratelimit_policy,
        feed,
    })))
}

impl App {
    /// Resolves once no upstream call of any account is in flight (at shutdown, before
    /// [`App::hand_over`]: a call that completes later would not be counted in it).
    pub async fn calls_done(&self) {
        while self
            .accounts
            .all()
            .iter()
            .any(|a| a.fetcher.budget().stats().in_flight > 0)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// At the end of a shutdown: what the next process needs to go on — each account's
    /// calls of the last period (CACHE_DIR), so a quick restart keeps the vendor's limit.
    pub fn hand_over(&self) {
        let Some(d) = &self.settings.disk else { return };
        let budgets = self
            .accounts
            .all()
            .iter()
            .map(|a| (a.ns.label(), a.fetcher.budget()));
        if let Err(e) = budget::carry::save(&d.dir, budgets) {
            tracing::warn!(error = %e, "cannot write the budget's recent calls for the next start");
        }
    }
}

/// The whole HTTP service.
pub fn app(state: AppState) -> Router {
    api::router(state)
}

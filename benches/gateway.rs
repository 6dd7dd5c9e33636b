//! End-to-end benchmarks of the gateway against the built-in upstream simulator, all on
//! loopback, all in this one process: measurements 1 (cold fan-out), 2 (upstream calls of a
//! dashboard mix) and 4 (latency added on a miss) of `BENCHMARKS.md`.
//!
//! `cargo bench --bench gateway` runs them at full scale (about a minute);
//! `cargo test --all-targets` runs this target without `--bench`, which does a seconds-long
//! smoke run of the same code at tiny scale so it cannot rot. A name after `--` (`cold`, `mix`, `miss`,
//! `rolling`) runs only
//! that scenario. With `BENCH_OUT=<file>` the figures are also written there as JSON.
//!
//! Every figure is measured, never assumed: wall times with `Instant`, upstream calls from
//! the simulator's own call log, the "ideal" from the simulator's ground truth (how many
//! records each window really holds, hence how many sequential round trips any client that
//! pages through the vendor's 11 × 100 reach must make).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use futures_util::future::join_all;
use jiff::{Timestamp, civil::Date, tz::TimeZone};
use kore_gateway::{
    config::{Cli, Settings},
    plan::{Window, plan},
    upstream::{MAX_PAGE, MAX_REACH, PAGE_LIMIT},
};
use kore_sim as sim;
use kore_sim::{SimConfig, SimFilter, Simulator};
use serde_json::{Value, json};

const KEY: &str = "bench-key-0001";
const ADMIN_KEY: &str = "admin-bench-key-0001";
/// `selectedFields` as the gateway sends them by default (all four, sorted).
const ALL_FIELDS: [&str; 4] = [
    "customerinfo",
    "sessionleveltags",
    "skills",
    "userleveltags",
];

/// How big each scenario is: full for `cargo bench`, tiny for the `cargo test` smoke run.
#[derive(Clone, Copy)]
struct Scale {
    cold_days: i64,
    cold_latency: Duration,
    cold_repeats: usize,
    mix_days: i64,
    mix_users: usize,
    mix_latency: Duration,
    miss_samples: usize,
}

impl Scale {
    fn full() -> Self {
        Scale {
            cold_days: 56,
            cold_latency: Duration::from_millis(100),
            cold_repeats: 5,
            mix_days: 7,
            mix_users: 16,
            mix_latency: Duration::from_millis(20),
            miss_samples: 300,
        }
    }

    fn smoke() -> Self {
        Scale {
            cold_days: 7,
            cold_latency: Duration::from_millis(1),
            cold_repeats: 1,
            mix_days: 1,
            mix_users: 2,
            mix_latency: Duration::ZERO,
            miss_samples: 5,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = args.iter().any(|a| a == "--bench");
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| only.is_empty() || only.contains(&name);
    let scale = if full { Scale::full() } else { Scale::smoke() };
    // reqwest is built without a crypto provider of its own; the gateway installs ring, and
    // the benchmark's own client may be built first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = serde_json::Map::new();
    rt.block_on(async {
        if wants("cold") {
            report.insert("cold_fanout".into(), cold_fanout(scale).await);
        }
        if wants("mix") {
            report.insert("dashboard_mix".into(), dashboard_mix(scale).await);
        }
        if wants("miss") {
            report.insert("miss_latency".into(), miss_latency(scale).await);
        }
        if wants("rolling") {
            report.insert("rolling_dashboard".into(), rolling_dashboard(scale).await);
        }
    });
    let report = Value::Object(report);
    if let Ok(path) = std::env::var("BENCH_OUT") {
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        println!("figures written to {path}");
    }
    if !full {
        println!("gateway bench: smoke run ok (run `cargo bench --bench gateway` for figures)");
    }
}

// ---------------------------------------------------------------------------------------
// Harness: simulator + gateway on loopback port 0, like tests/common, with bench settings.

struct Rig {
    sim: Simulator,
    state: kore_gateway::AppState,
    base: String,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Gateway settings for the benchmarks, through the same flags an operator uses (so the
/// benchmark keeps up with new settings and their defaults).
fn settings(sim_cfg: &SimConfig, sim_addr: SocketAddr, concurrency: u32) -> Settings {
    let base = format!("http://{sim_addr}");
    let keys = format!("bench:{KEY},admin-bench:{ADMIN_KEY}");
    let concurrency = concurrency.to_string();
    Cli::try_parse_from([
        "kore-gateway",
        "--gateway-listen",
        "127.0.0.1:0",
        "--kore-base-url",
        &base,
        "--kore-account-id",
        &sim_cfg.account_id,
        "--kore-client-id",
        &sim_cfg.client_id,
        "--kore-client-secret",
        &sim_cfg.client_secret,
        "--gateway-api-keys",
        &keys,
        // High enough never to be the bottleneck: these scenarios measure the fan-out.
        "--kore-rate-limit",
        "100000/s",
        "--kore-concurrency",
        &concurrency,
        "--kore-max-wait",
        "60s",
        "--gateway-request-timeout",
        "120s",
    ])
    .expect("bench flags parse")
    .into_settings()
    .expect("bench settings are valid")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

async fn start_sim(latency: Duration) -> (Simulator, SocketAddr) {
    let mut cfg = SimConfig::demo();
    cfg.latency = latency;
    Simulator::spawn(cfg).await.expect("simulator starts")
}

/// A fresh gateway (empty cache) in front of `sim`.
async fn start_gateway(sim: &Simulator, sim_addr: SocketAddr, concurrency: u32) -> Rig {
    let state =
        kore_gateway::build(settings(sim.config(), sim_addr, concurrency)).expect("gateway builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback port");
    let addr = listener.local_addr().expect("local address");
    let app = kore_gateway::app(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Rig {
        sim: sim.clone(),
        state,
        base: format!("http://{addr}"),
        http: http_client(),
        server,
    }
}

impl Rig {
    /// GET a gateway path; returns status and body, timed to the last byte.
    async fn get(&self, path_and_query: &str) -> (u16, bytes::Bytes, Duration) {
        let started = Instant::now();
        let resp = self
            .http
            .get(format!("{}{}", self.base, path_and_query))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("gateway answers");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("gateway body");
        (status, body, started.elapsed())
    }

    async fn json(&self, path_and_query: &str) -> (Value, Duration) {
        let (status, body, took) = self.get(path_and_query).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{path_and_query}: {text}");
        (serde_json::from_slice(&body).expect("JSON body"), took)
    }

    async fn cache_stats(&self) -> Value {
        self.http
            .get(format!("{}/v1/cache", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("cache stats")
            .json()
            .await
            .expect("cache stats JSON")
    }

    fn assert_no_violations(&self) {
        let v = self.sim.violations();
        assert!(
            v.is_empty(),
            "vendor rules broken: {:?}",
            &v[..v.len().min(3)]
        );
    }
}

#[path = "gateway/yardsticks.rs"]
mod yardsticks;
use yardsticks::*;

// ---------------------------------------------------------------------------------------
// 1. Cold fan-out.

async fn cold_fanout(scale: Scale) -> Value {
    let first = Date::new(2024, 9, 2).expect("date");
    let last = first
        .checked_add(jiff::Span::new().days(scale.cold_days - 1))
        .expect("date");
    let from = utc_day(first);
    let to = Timestamp::from_second(utc_day(last).as_second() + 86_399).expect("instant");
    let windows = plan(from, to, &TimeZone::UTC).expect("plan");
    let latency = scale.cold_latency;
    let concurrency = 32;
    println!(
        "\n== 1. cold fan-out: {first} .. {last} (UTC, {} days, {} windows), simulator {} ms/call, KORE_CONCURRENCY={concurrency}",
        scale.cold_days,
        windows.len(),
        latency.as_millis()
    );
    let (sim, sim_addr) = start_sim(latency).await;
    let path = format!("/v1/interactions?from={first}&to={last}&tz=UTC&limit=10000");

    let mut walls = Vec::new();
    let mut calls = Vec::new();
    let mut total = 0;
    let mut timeline: Vec<std::time::Instant> = Vec::new();
    for _ in 0..scale.cold_repeats {
        sim.reset_log();
        let rig = start_gateway(&sim, sim_addr, concurrency).await;
        let (v, took) = rig.json(&path).await;
        assert_eq!(v["meta"]["complete"], true, "{}", v["meta"]);
        assert_eq!(v["meta"]["cache"], "MISS");
        total = v["meta"]["total"].as_u64().expect("meta.total");
        walls.push(took);
        calls.push(sim.call_count());
        timeline = sim.calls().iter().map(|c| c.at).collect();
        rig.assert_no_violations();
    }
    let wall = median(&walls);
    let gw_calls = calls[calls.len() / 2];

    // The structure of this range in the simulator's data.
    let mut truth = Truth::new(&sim);
    let need = truth.need_all(&windows, &SimFilter::default());
    assert_eq!(
        need.records, total,
        "truth and gateway disagree on the total"
    );
    let dense: Vec<String> = (0..scale.cold_days)
        .filter_map(|i| first.checked_add(jiff::Span::new().days(i)).ok())
        .filter(|d| sim::is_dense_day(*d))
        .map(|d| d.to_string())
        .collect();
    // What-if: cut an over-full window into enough parts at once that each would fit if
    // its records were spread evenly (twice the bare minimum, as they are not).
    let kway = truth.need_all_with(&windows, &SimFilter::default(), &|w, n| {
        cut_even(w, (2 * n).div_ceil(MAX_REACH).clamp(2, 64))
    });
    let grid = truth.need_all_with(&windows, &SimFilter::default(), &|w, n| {
        cut_grid(w, (2 * n).div_ceil(MAX_REACH).max(2))
    });
    let ideal_two = latency * 2;
    let ideal_levels = latency * need.levels;
    let ideal_slots = latency * need.calls.div_ceil(concurrency);
    let ideal_structural = ideal_levels.max(ideal_slots);

    // The hand-written sequential client, same range, same records.
    sim.reset_log();
    let vendor = Vendor::new(&sim, sim_addr);
    let started = Instant::now();
    let mut seq_records = Vec::new();
    let mut seq_calls = 0;
    let mut seq_sum = Duration::ZERO;
    for w in &windows {
        let (r, c, s) = vendor.window_sequential(*w).await;
        seq_records.extend(r);
        seq_calls += c;
        seq_sum += s;
    }
    let seq_wall = started.elapsed();
    assert_eq!(
        ids(&seq_records).len() as u64,
        total,
        "the sequential client got other records"
    );

    // Where the wall time goes: upstream calls by arrival time (last run), in waves.
    let t0 = timeline.iter().min().copied();
    let mut waves: Vec<(u128, u32)> = Vec::new();
    if let Some(t0) = t0 {
        let mut offsets: Vec<u128> = timeline
            .iter()
            .map(|t| t.duration_since(t0).as_millis())
            .collect();
        offsets.sort_unstable();
        for ms in offsets {
            match waves.last_mut() {
                Some((start, n)) if ms - *start < latency.as_millis().max(1) / 2 => *n += 1,
                _ => waves.push((ms, 1)),
            }
        }
    }
    let ratio_two = wall.as_secs_f64() / ideal_two.as_secs_f64();
    let ratio_structural = wall.as_secs_f64() / ideal_structural.as_secs_f64();
    println!("records {total}, dense days {dense:?}");
    println!(
        "gateway cold wall (median of {}): {:.1} ms  [runs: {:?} ms]  upstream calls {gw_calls} (model {})",
        walls.len(),
        ms(wall),
        walls.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        need.calls
    );
    println!(
        "sequential vendor loop: {:.1} ms wall, {:.1} ms sum of call times, {seq_calls} calls  → gateway {:.1}× faster",
        ms(seq_wall),
        ms(seq_sum),
        seq_sum.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "ideal: two round trips {:.0} ms (ratio {ratio_two:.2}); the range's split tree needs {} sequential round trips = {:.0} ms, {} calls / {concurrency} slots = {:.0} ms → structural ideal {:.0} ms (ratio {ratio_structural:.2}); target ≤ 1.5×",
        ms(ideal_two),
        need.levels,
        ms(ideal_levels),
        need.calls,
        ms(ideal_slots),
        ms(ideal_structural),
    );
    println!(
        "upstream calls by arrival (ms after the first: calls): {}",
        waves
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "what-if, cutting an over-full window into ceil(2·numResults/1100) parts at once: {} round trips = {:.0} ms, {} calls (halving: {} round trips, {} calls)",
        kway.levels,
        ms(latency * kway.levels),
        kway.calls,
        need.levels,
        need.calls
    );
    println!(
        "what-if, cutting it on a local grid (days, 6 h, hours …) into at least that many parts: {} round trips = {:.0} ms, {} calls",
        grid.levels,
        ms(latency * grid.levels),
        grid.calls
    );
    println!(
        "RESULT 1 gateway_ms={:.1} ideal_two_rtt_ms={:.0} ratio={ratio_two:.2} structural_ideal_ms={:.0} ratio_structural={ratio_structural:.2} sequential_sum_ms={:.0} speedup={:.1}",
        ms(wall),
        ms(ideal_two),
        ms(ideal_structural),
        ms(seq_sum),
        seq_sum.as_secs_f64() / wall.as_secs_f64()
    );
    json!({
        "range": format!("{first}..{last} UTC"),
        "days": scale.cold_days,
        "windows": windows.len(),
        "dense_days": dense,
        "records": total,
        "sim_latency_ms": latency.as_millis() as u64,
        "concurrency": concurrency,
        "gateway_wall_ms_median": ms(wall),
        "gateway_wall_ms_runs": walls.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "gateway_upstream_calls": gw_calls,
        "model_calls": need.calls,
        "sequential_wall_ms": ms(seq_wall),
        "sequential_sum_of_calls_ms": ms(seq_sum),
        "sequential_calls": seq_calls,
        "speedup_vs_sequential": seq_sum.as_secs_f64() / wall.as_secs_f64(),
        "ideal_two_round_trips_ms": ms(ideal_two),
        "split_tree_round_trips": need.levels,
        "ideal_structural_ms": ms(ideal_structural),
        "ratio_vs_two_round_trips": ratio_two,
        "ratio_vs_structural_ideal": ratio_structural,
        "call_waves_ms": waves.iter().map(|(t, n)| json!([t, n])).collect::<Vec<_>>(),
        "what_if_kway_round_trips": kway.levels,
        "what_if_kway_calls": kway.calls,
        "what_if_grid_round_trips": grid.levels,
        "what_if_grid_calls": grid.calls,
        "target": "≤ 1.5× ideal",
    })
}

// ---------------------------------------------------------------------------------------
// 2. Upstream calls of a dashboard mix.

/// The dashboard's filter combinations, as query-string parts and as the simulator sees them.
fn mix_filters() -> Vec<(&'static str, SimFilter)> {
    let f = |channels: &[&str], queues: &[&str], bots: &[&str]| SimFilter {
        channels: channels.iter().map(|s| (*s).to_owned()).collect(),
        queues: queues.iter().map(|s| (*s).to_owned()).collect(),
        bots: bots.iter().map(|s| (*s).to_owned()).collect(),
        selected_fields: None,
    };
    vec![
        ("", f(&[], &[], &[])),
        ("&channels=voice", f(&["voice"], &[], &[])),
        (
            "&channels=chat&queues=qu-04e6978-6011-49d6-929d-cd715080a1b2",
            f(&["chat"], &["qu-04e6978-6011-49d6-929d-cd715080a1b2"], &[]),
        ),
        (
            "&bots=st-4b6a22d1-b8e5-533d-8020-93f847a9c0de",
            f(&[], &[], &["st-4b6a22d1-b8e5-533d-8020-93f847a9c0de"]),
        ),
    ]
}

async fn dashboard_mix(scale: Scale) -> Value {
    const TZ: &str = "Asia/Kolkata";
    let tz = TimeZone::get(TZ).expect("tz");
    let presets: [(&str, i64, i64); 4] = [
        ("yesterday", 1, 1),
        ("last-7", 7, 1),
        ("last-30", 30, 1),
        ("last-90", 90, 1),
    ];
    let filters = mix_filters();
    let first_today = Date::new(2024, 10, 1).expect("date");
    println!(
        "\n== 2. dashboard mix: {} users × {} presets, {} simulated days from {first_today} ({TZ}), {} filter combinations, simulator {} ms/call",
        scale.mix_users,
        presets.len(),
        scale.mix_days,
        filters.len(),
        scale.mix_latency.as_millis()
    );
    let (sim, sim_addr) = start_sim(scale.mix_latency).await;
    let rig = start_gateway(&sim, sim_addr, 32).await;

    // Every request of the mix, as (query string, filter index, from, to).
    let mut requests = 0usize;
    let mut asked = Vec::new();
    let mut union: HashMap<usize, (Date, Date)> = HashMap::new();
    let started = Instant::now();
    for day in 0..scale.mix_days {
        let today = first_today
            .checked_add(jiff::Span::new().days(day))
            .expect("date");
        let mut batch = Vec::new();
        for user in 0..scale.mix_users {
            let fi = user % filters.len();
            for (_, back, upto) in presets {
                let from = today.checked_sub(jiff::Span::new().days(back)).expect("d");
                let to = today.checked_sub(jiff::Span::new().days(upto)).expect("d");
                let e = union.entry(fi).or_insert((from, to));
                e.0 = e.0.min(from);
                e.1 = e.1.max(to);
                let path = format!(
                    "/v1/interactions?from={from}&to={to}&tz={TZ}&limit=1000{}",
                    filters[fi].0
                );
                asked.push((fi, from, to));
                batch.push(path);
            }
        }
        requests += batch.len();
        // Users arrive in two waves a day: the first shares misses (coalescing), the
        // second finds the cache warm.
        let half = batch.len() / 2;
        for wave in [&batch[..half], &batch[half..]] {
            let answers = join_all(wave.iter().map(|p| rig.json(p))).await;
            for (v, _) in &answers {
                assert_eq!(v["meta"]["complete"], true, "{}", v["meta"]);
            }
        }
    }
    let took = started.elapsed();
    rig.assert_no_violations();

    // Without the gateway each tile runs its own vendor loop.
    let mut truth = Truth::new(&sim);
    let naive_calls: u64 = asked
        .iter()
        .map(|(fi, from, to)| {
            let ws = plan_local(*from, *to, &tz);
            u64::from(truth.need_all(&ws, &filters[*fi].1).calls)
        })
        .sum();
    let log = sim.calls();
    let made = sim.call_count();
    let mut seen: HashMap<String, (u32, i64)> = HashMap::new();
    for c in &log {
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            c.start_utc,
            c.end_utc,
            c.offset_minutes,
            c.page,
            c.limit,
            c.channels,
            c.queues,
            c.bots,
            c.selected_fields
        );
        let span = match (c.start_utc, c.end_utc) {
            (Some(a), Some(b)) => b.as_second() - a.as_second() + 1,
            _ => 0,
        };
        seen.entry(key).or_insert((0, span)).0 += 1;
    }
    let distinct = seen.len();
    // Where the repeats are: by the length of the window they asked for. A length that is
    // not whole days is a part of a split window (the planner only cuts at local midnight).
    let mut repeats: HashMap<String, u32> = HashMap::new();
    for (n, span) in seen.values().filter(|(n, _)| *n > 1) {
        let class = if span % 86_400 == 0 {
            format!("{} day(s), planned window", span / 86_400)
        } else {
            format!(
                "{:.2} days, part of a split window",
                *span as f64 / 86_400.0
            )
        };
        *repeats.entry(class).or_default() += n - 1;
    }
    let mut repeats: Vec<(String, u32)> = repeats.into_iter().collect();
    repeats.sort_by_key(|r| std::cmp::Reverse(r.1));
    // What-ifs: the same requests if the parts of split windows were cached too.
    let planned: Vec<(Vec<Window>, usize)> = asked
        .iter()
        .map(|(fi, from, to)| (plan_local(*from, *to, &tz), *fi))
        .collect();
    let halves_cached = calls_with_cached_parts(&mut truth, &planned, &filters, &|w, _| {
        w.split().map(|(a, b)| vec![a, b]).unwrap_or_default()
    });
    let grid_cached = calls_with_cached_parts(&mut truth, &planned, &filters, &|w, n| {
        cut_grid(w, (2 * n).div_ceil(MAX_REACH).max(2))
    });
    // A stricter floor: every grid cell of the union of all ranges, per filter, fetched
    // once whole (the gateway clips cells to each query's range instead).
    let mut union_calls = 0u64;
    for (fi, (from, to)) in &union {
        let ws = plan_local(*from, *to, &tz);
        union_calls += u64::from(truth.need_all(&ws, &filters[*fi].1).calls);
    }
    let stats = rig.cache_stats().await;
    let hit_ratio = stats["hit_ratio"].as_f64().unwrap_or(0.0);
    println!(
        "{requests} requests in {:.0} ms; upstream calls made {made}, distinct window-pages {} (target: equal), {:.1}% redundant",
        ms(took),
        distinct,
        100.0 * (made as f64 - distinct as f64) / made.max(1) as f64
    );
    for (class, n) in repeats.iter().take(8) {
        println!("  repeated calls: {n:>4} for windows of {class}");
    }
    println!(
        "without the gateway (each tile its own vendor loop): {naive_calls} calls → gateway makes {:.1}% of them; whole-cell floor {union_calls}",
        100.0 * made as f64 / naive_calls.max(1) as f64
    );
    println!(
        "what-if, parts of split windows cached and coalesced too: {halves_cached} calls (halves), {grid_cached} calls (parts cut on a local grid)"
    );
    println!(
        "cache: hit ratio {:.3} (window hits {}, response hits {}, misses {}, coalesced {})",
        hit_ratio, stats["hits"], stats["response_hits"], stats["misses"], stats["coalesced"]
    );
    println!(
        "RESULT 2 requests={requests} calls={made} distinct_window_pages={distinct} naive_calls={naive_calls} whole_cell_floor={union_calls} hit_ratio={hit_ratio:.3}"
    );
    json!({
        "requests": requests,
        "users": scale.mix_users,
        "days": scale.mix_days,
        "tz": TZ,
        "sim_latency_ms": scale.mix_latency.as_millis() as u64,
        "upstream_calls": made,
        "distinct_window_pages": distinct,
        "repeated_calls_by_window": repeats
            .iter()
            .map(|(c, n)| json!({"window": c, "repeats": n}))
            .collect::<Vec<_>>(),
        "naive_calls_without_gateway": naive_calls,
        "whole_cell_floor": union_calls,
        "what_if_parts_cached_halves": halves_cached,
        "what_if_parts_cached_grid": grid_cached,
        "hit_ratio": hit_ratio,
        "cache_stats": stats,
        "wall_ms": ms(took),
        "target": "calls == distinct window-pages",
    })
}

/// Windows of whole local days `[from, to]` in `tz`.
fn plan_local(from: Date, to: Date, tz: &TimeZone) -> Vec<Window> {
    let start = local_midnight(from, tz);
    let end_day = local_midnight(to.tomorrow().expect("date"), tz);
    let end = Timestamp::from_second(end_day.as_second() - 1).expect("instant");
    plan(start, end, tz).expect("plan")
}

// ---------------------------------------------------------------------------------------
// 4. Latency added on a miss.

async fn miss_latency(scale: Scale) -> Value {
    println!(
        "\n== 4. added latency on a miss: {} one-day queries (distinct ordinary days, UTC), gateway vs the same POSTs straight to the simulator (0 ms latency)",
        scale.miss_samples
    );
    let (sim, sim_addr) = start_sim(Duration::ZERO).await;
    let rig = start_gateway(&sim, sim_addr, 32).await;
    let vendor = Vendor::new(&sim, sim_addr);
    let mut days = Vec::new();
    let mut d = Date::new(2022, 1, 1).expect("date");
    while days.len() < scale.miss_samples + 10 {
        if !sim::is_dense_day(d) {
            days.push(d);
        }
        d = d.tomorrow().expect("date");
    }
    let (warmup, days) = days.split_at(10);
    // Warm both paths' connections (and the gateway's JWT) on days not measured.
    for d in warmup {
        let w = one_day(*d);
        let _ = vendor.page(&w, 0).await;
        let _ = rig
            .get(&format!("/v1/interactions?from={d}&to={d}&tz=UTC"))
            .await;
    }
    sim.reset_log();
    let mut direct = Vec::new();
    let mut gateway = Vec::new();
    let mut hits = Vec::new();
    let mut paired = Vec::new();
    let mut calls_direct = 0u32;
    for (i, d) in days.iter().enumerate() {
        let w = one_day(*d);
        let path = format!("/v1/interactions?from={d}&to={d}&tz=UTC");
        // The same vendor loop the gateway runs for this window: pages until a short one.
        let direct_run = async {
            let mut took = Duration::ZERO;
            let mut page = 0;
            loop {
                let (p, t) = vendor.page(&w, page).await;
                took += t;
                calls_direct += 1;
                if (p.data.len() as u32) < PAGE_LIMIT || page == MAX_PAGE {
                    break;
                }
                page += 1;
            }
            took
        };
        // Alternate the order so neither side always runs on a warmer CPU.
        let (dt, (status, body, gt)) = if i % 2 == 0 {
            let dt = direct_run.await;
            (dt, rig.get(&path).await)
        } else {
            let g = rig.get(&path).await;
            (direct_run.await, g)
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let (_, _, ht) = rig.get(&path).await;
        direct.push(dt);
        gateway.push(gt);
        hits.push(ht);
        paired.push(gt.as_secs_f64() - dt.as_secs_f64());
    }
    rig.assert_no_violations();
    let gw_calls = sim.call_count() as u32 - calls_direct;
    for v in [&mut direct, &mut gateway, &mut hits] {
        v.sort();
    }
    paired.sort_by(f64::total_cmp);
    let paired_p50 = paired[paired.len() / 2] * 1e3;
    let row = |name: &str, v: &[Duration]| {
        println!(
            "{name:<28} p50 {:>7.3} ms   p90 {:>7.3} ms   p99 {:>7.3} ms",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 90.0)),
            ms(percentile(v, 99.0))
        );
    };
    row("direct POST(s) to simulator", &direct);
    row("gateway GET, miss", &gateway);
    row("gateway GET, hit (repeat)", &hits);
    let added = ms(percentile(&gateway, 50.0)) - ms(percentile(&direct, 50.0));
    println!(
        "added at p50: {added:.3} ms (median of paired differences {paired_p50:.3} ms); target ≤ 1 ms. Upstream calls: direct {calls_direct}, gateway {gw_calls}"
    );
    println!(
        "RESULT 4 direct_p50_ms={:.3} gateway_miss_p50_ms={:.3} added_p50_ms={added:.3} paired_p50_ms={paired_p50:.3} gateway_hit_p50_ms={:.3}",
        ms(percentile(&direct, 50.0)),
        ms(percentile(&gateway, 50.0)),
        ms(percentile(&hits, 50.0))
    );
    let stats = |v: &[Duration]| {
        json!({
            "p50_ms": ms(percentile(v, 50.0)),
            "p90_ms": ms(percentile(v, 90.0)),
            "p99_ms": ms(percentile(v, 99.0)),
        })
    };
    json!({
        "samples": days.len(),
        "direct": stats(&direct),
        "gateway_miss": stats(&gateway),
        "gateway_hit": stats(&hits),
        "added_p50_ms": added,
        "paired_difference_p50_ms": paired_p50,
        "calls_direct": calls_direct,
        "calls_gateway": gw_calls,
        "target": "≤ 1 ms added at p50",
    })
}

fn one_day(d: Date) -> Window {
    let start = utc_day(d);
    Window {
        start,
        end: Timestamp::from_second(start.as_second() + 86_399).expect("instant"),
        offset_seconds: 0,
    }
}

// ---------------------------------------------------------------------------------------
// 7. A rolling 30-day dashboard: upstream calls with and without containment reuse.

/// One dashboard that asks, once a simulated day for ten days, for the last 30 days
/// (Asia/Kolkata), against a fresh gateway with containment reuse off, then on. Each day
/// the range's first window shrinks by a day: without containment that is a new key and a
/// new fetch, with it the cached window of the day before answers it.
async fn rolling_dashboard(scale: Scale) -> Value {
    const TZ: &str = "Asia/Kolkata";
    let days: i64 = if scale.mix_users > 2 { 10 } else { 3 };
    let first_today = Date::new(2024, 10, 1).expect("date");
    println!("\n== 7. rolling 30-day dashboard: {days} simulated days from {first_today} ({TZ})");
    let (sim, sim_addr) = start_sim(Duration::ZERO).await;
    let mut out = serde_json::Map::new();
    let mut totals = Vec::new();
    for containment in [false, true] {
        let rig = start_gateway(&sim, sim_addr, 32).await;
        rig.state.windows.set_containment(containment);
        let before = sim.call_count();
        let mut per_day = Vec::new();
        for d in 0..days {
            let today = first_today
                .checked_add(jiff::Span::new().days(d))
                .expect("date");
            let from = today.checked_sub(jiff::Span::new().days(29)).expect("date");
            let at = sim.call_count();
            let (body, _) = rig
                .json(&format!(
                    "/v1/interactions?from={from}&to={today}&tz={TZ}&limit=1"
                ))
                .await;
            assert_eq!(body["meta"]["complete"], true);
            per_day.push(sim.call_count() - at);
        }
        let total = sim.call_count() - before;
        rig.assert_no_violations();
        let label = if containment { "after" } else { "before" };
        println!(
            "RESULT 7 rolling-30d {label} (containment {}): upstream_calls={total} per_day={per_day:?}",
            if containment { "on" } else { "off" }
        );
        out.insert(
            label.into(),
            json!({"upstream_calls": total, "per_day": per_day}),
        );
        totals.push(total);
    }
    println!(
        "RESULT 7 rolling-30d saved={} of {} calls",
        totals[0] - totals[1],
        totals[0]
    );
    Value::Object(out)
}

//! Criterion benchmarks of the pure functions on the hot path (measurement 6 of
//! `BENCHMARKS.md`): window planning, merging, and rendering a page.
//!
//! Records are the simulator's own synthetic records (real shapes and sizes, ~1–2 KB each),
//! so the figures reflect what the gateway handles. `cargo bench --bench hot` measures;
//! `cargo test --all-targets` runs each benchmark once as a smoke test.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jiff::{Timestamp, civil::DateTime, tz::TimeZone};
use kore_gateway::{
    merge::{Record, dedupe_and_sort, merge_runs},
    outcome::CacheStatus,
    plan::{Window, plan},
    render::{MetaHead, etag, json_head, json_tail},
};
use kore_sim::{SimConfig, SimFilter, Simulator};
use serde_json::value::RawValue;

const RECORDS: usize = 10_000;

fn instant(local: &str, tz: &TimeZone) -> Timestamp {
    let dt: DateTime = local.parse().expect("datetime");
    tz.to_ambiguous_timestamp(dt).compatible().expect("instant")
}

/// 92 days, 2024-09-01 .. 2024-12-01 inclusive, in three kinds of zone (New York's range
/// holds a DST change, Kolkata's grid is not UTC's).
fn bench_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan/92-day range");
    for name in ["UTC", "America/New_York", "Asia/Kolkata"] {
        let tz = TimeZone::get(name).expect("tz");
        let from = instant("2024-09-01T00:00:00", &tz);
        let to = instant("2024-12-01T23:59:59", &tz);
        g.bench_function(name, |b| {
            b.iter(|| plan(black_box(from), black_box(to), black_box(&tz)).expect("plan"))
        });
    }
    g.finish();
}

/// 10,000 simulator records, in the order the simulator returns them, with all four
/// optional field blocks.
fn records() -> Vec<Record> {
    let sim = Simulator::new(SimConfig::demo());
    let window = Window {
        start: Timestamp::from_second(1_719_792_000).expect("2024-07-01"),
        end: Timestamp::from_second(1_719_792_000 + 92 * 86_400 - 1).expect("+92 days"),
        offset_seconds: 0,
    };
    let fields = SimFilter {
        selected_fields: Some(
            [
                "customerinfo",
                "sessionleveltags",
                "skills",
                "userleveltags",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ..SimFilter::default()
    };
    let values = sim.truth(window.start, window.end, 0, &fields);
    assert!(values.len() >= RECORDS, "only {} records", values.len());
    values
        .into_iter()
        .take(RECORDS)
        .map(|v| {
            let raw = RawValue::from_string(v.to_string()).expect("raw JSON");
            Record::new(raw, &window)
        })
        .collect()
}

fn bench_merge(c: &mut Criterion) {
    let base = records();
    let mut g = c.benchmark_group("merge/10000 records");

    // What one window's pages look like before merging: the vendor's order, plus 5% of the
    // records seen twice (a record on a page boundary while data shifts), shuffled.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut input: Vec<Record> = base.clone();
    for i in 0..RECORDS / 20 {
        input.push(base[i * 20].clone());
    }
    rng.shuffle(&mut input);
    g.bench_function("dedupe_and_sort (shuffled, 5% duplicates)", |b| {
        b.iter_batched(
            || input.clone(),
            |mut v| {
                dedupe_and_sort(&mut v);
                v
            },
            BatchSize::LargeInput,
        )
    });

    // What a range request merges: sorted windows (here 8 runs) with nothing repeated.
    let mut sorted = base.clone();
    dedupe_and_sort(&mut sorted);
    let runs: Vec<&[Record]> = sorted.chunks(RECORDS / 8).collect();
    g.bench_function("merge_runs (8 sorted windows)", |b| {
        b.iter(|| merge_runs(black_box(runs.iter().copied())))
    });
    g.finish();
}

fn meta<'a>(total: usize, returned: usize, warnings: &'a [String]) -> MetaHead<'a> {
    MetaHead {
        from: "2024-07-01T00:00:00+00:00".into(),
        to: "2024-07-07T23:59:59+00:00".into(),
        tz: "UTC",
        total,
        returned,
        next_cursor: Some("eyJvIjoxMDAsImYiOiJhYmMifQ".into()),
        complete: true,
        stale: false,
        warnings,
        windows: 1,
    }
}

fn bench_render(c: &mut Criterion) {
    let mut base = records();
    dedupe_and_sort(&mut base);
    let refs: Vec<&Record> = base.iter().collect();
    let warnings: Vec<String> = Vec::new();
    let mut g = c.benchmark_group("render");
    for n in [100, 1000] {
        let page = &refs[..n];
        // A miss: the page's head (data + meta) and its ETag, done once and cached.
        g.bench_function(format!("miss: json_head + etag, {n} records"), |b| {
            b.iter(|| {
                let head = json_head(black_box(page), &meta(RECORDS, n, &warnings));
                let tag = etag(&[7; 32], &head);
                (head, tag)
            })
        });
        // A hit: the cached head is sent again with a fresh tail, as the handler does.
        let head = json_head(page, &meta(RECORDS, n, &warnings));
        g.bench_function(format!("hit: cached head + json_tail, {n} records"), |b| {
            b.iter(|| {
                let tail = json_tail(0, CacheStatus::Hit);
                let mut body = BytesMut::with_capacity(head.len() + tail.len());
                body.extend_from_slice(black_box(&head));
                body.extend_from_slice(&tail);
                body.freeze()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plan, bench_merge, bench_render);
criterion_main!(benches);

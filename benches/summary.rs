//! Criterion benchmark of the summary core: 100,000 records → groups and statistics, the
//! work `GET /v1/interactions/summary` adds on top of a cached range.
//!
//! Records are the simulator's own synthetic records (real shapes and sizes: bot sessions
//! and agent conversations with destinations, ~1–2 KB each, all four optional blocks), built
//! with `Record::new` exactly as the fetch step builds them. They are summarised in
//! America/New_York, so every day/hour bucket pays for a real time-zone conversion.
//! `cargo bench --bench summary` measures.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{Timestamp, tz::TimeZone};
use kore_gateway::{
    merge::Record,
    plan::Window,
    summary::{Dimension, Metric, summarise},
};
use kore_sim::{SimConfig, SimFilter, Simulator};
use serde_json::value::RawValue;

const RECORDS: usize = 100_000;

/// 100,000 simulator records from consecutive 92-day stretches starting 2023-01-01 UTC
/// (campaign days included, so stretches hold ~15,000 records each).
fn records() -> Vec<Record> {
    let sim = Simulator::new(SimConfig::demo());
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
    let mut out = Vec::with_capacity(RECORDS);
    let mut start = 1_672_531_200; // 2023-01-01T00:00:00Z
    while out.len() < RECORDS {
        let window = Window {
            start: Timestamp::from_second(start).expect("start"),
            end: Timestamp::from_second(start + 92 * 86_400 - 1).expect("end"),
            offset_seconds: 0,
        };
        for v in sim.truth(window.start, window.end, 0, &fields) {
            let raw = RawValue::from_string(v.to_string()).expect("raw JSON");
            out.push(Record::new(raw, &window));
        }
        start += 92 * 86_400;
    }
    out.truncate(RECORDS);
    out
}

fn bench_summary(c: &mut Criterion) {
    let records = records();
    let refs: Vec<&Record> = records.iter().collect();
    let tz = TimeZone::get("America/New_York").expect("tz");
    let all_metrics = Metric::ALL;
    let cases: [(&str, &[Dimension], &[Metric]); 4] = [
        // Time alone: only the instant the merge step read, no JSON parsed.
        ("day; count", &[Dimension::Day], &[Metric::Count]),
        (
            "day,channel; count",
            &[Dimension::Day, Dimension::Channel],
            &[Metric::Count],
        ),
        (
            "day,channel; all metrics",
            &[Dimension::Day, Dimension::Channel],
            &all_metrics,
        ),
        (
            "hour,queue,agent; all metrics",
            &[Dimension::Hour, Dimension::Queue, Dimension::Agent],
            &all_metrics,
        ),
    ];
    let mut g = c.benchmark_group("summary/100000 records");
    // One iteration takes tens of milliseconds: ten samples are plenty.
    g.sample_size(10);
    for (name, group_by, metrics) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                summarise(
                    black_box(&refs),
                    black_box(&tz),
                    black_box(group_by),
                    black_box(metrics),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_summary);
criterion_main!(benches);

//! Aggregation: records into groups, counted and measured ([`summarise`]), and the
//! statistics of a duration metric ([`Stats`]).

use std::collections::HashMap;

use jiff::tz::TimeZone;
use utoipa::ToSchema;

use super::{
    dimensions::{Dimension, KeyPart, Metric, time_parts},
    fields::{Fields, Segment, array, record_parts},
};
use crate::merge::Record;

/// Statistics of one duration metric over a group, in seconds. Missing values are skipped,
/// never counted as 0; `count` is the number of values (agent segments), and the others are
/// null when it is 0.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(as = DurationStats, example = json!({"count": 7, "sum": 3907, "mean": 558.1428571428571, "p50": 540, "p90": 1023, "max": 1107}))]
pub struct Stats {
    pub count: u64,
    pub sum: f64,
    #[schema(required = true)]
    pub mean: Option<f64>,
    /// Nearest rank: the ⌈0.5·n⌉-th smallest value.
    #[schema(required = true)]
    pub p50: Option<f64>,
    /// Nearest rank: the ⌈0.9·n⌉-th smallest value.
    #[schema(required = true)]
    pub p90: Option<f64>,
    #[schema(required = true)]
    pub max: Option<f64>,
}

impl Stats {
    /// Exact statistics of `values` (sorted here); percentiles by nearest rank.
    pub fn of(mut values: Vec<f64>) -> Stats {
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len();
        // A fold from +0.0: `Sum` starts from -0.0, which would print as "-0" for no values.
        let sum = values.iter().fold(0.0, |a, b| a + b);
        // Nearest rank: the ⌈p·n⌉-th smallest (1-based), in integer arithmetic.
        let rank = |pct: usize| {
            let r = (pct * n).div_ceil(100).max(1);
            values.get(r - 1).copied()
        };
        Stats {
            count: n as u64,
            sum,
            mean: (n > 0).then(|| sum / n as f64),
            p50: rank(50),
            p90: rank(90),
            max: values.last().copied(),
        }
    }
}

/// One group: its key (one part per `group_by` dimension, in that order) and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<'a> {
    pub key: Vec<KeyPart<'a>>,
    /// Records in the group (each once, however many of its segments fall in it).
    pub count: u64,
    /// One entry per duration metric requested, in request order.
    pub durations: Vec<(Metric, Stats)>,
}

/// A whole summary, groups sorted by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary<'a> {
    pub group_by: Vec<Dimension>,
    pub metrics: Vec<Metric>,
    pub groups: Vec<Group<'a>>,
    /// Records summarised.
    pub records: usize,
}

#[derive(Default)]
struct Acc {
    count: u64,
    /// One list per requested duration metric.
    values: Vec<Vec<f64>>,
}

/// Summarises `records` (as [`merge_runs`](crate::merge::merge_runs) returns them) in
/// `tz`, grouped by `group_by` (in that order), measuring `metrics`.
///
/// With no `group_by` there is exactly one group, with an empty key, even for no records;
/// otherwise only groups holding at least one record appear.
pub fn summarise<'a>(
    records: &[&'a Record],
    tz: &TimeZone,
    group_by: &[Dimension],
    metrics: &[Metric],
) -> Summary<'a> {
    summarise_from(records.iter().map(|r| (*r, None)), tz, group_by, metrics)
}

/// [`summarise`] over the records of several accounts, each tagged with its account's name
/// (the `account` dimension's value). Records of different accounts are different records,
/// whatever their ids.
pub fn summarise_accounts<'a>(
    by_account: &[(&'a str, Vec<&'a Record>)],
    tz: &TimeZone,
    group_by: &[Dimension],
    metrics: &[Metric],
) -> Summary<'a> {
    summarise_from(
        by_account
            .iter()
            .flat_map(|(name, records)| records.iter().map(move |r| (*r, Some(*name)))),
        tz,
        group_by,
        metrics,
    )
}

fn summarise_from<'a>(
    records: impl Iterator<Item = (&'a Record, Option<&'a str>)>,
    tz: &TimeZone,
    group_by: &[Dimension],
    metrics: &[Metric],
) -> Summary<'a> {
    let duration_metrics: Vec<(Metric, usize)> = metrics
        .iter()
        .filter_map(|m| m.duration_slot().map(|s| (*m, s)))
        .collect();
    let mut wanted = [false; 4];
    for (_, slot) in &duration_metrics {
        wanted[*slot] = true;
    }
    let segment_dims: Vec<Dimension> = group_by
        .iter()
        .copied()
        .filter(|d| d.per_segment())
        .collect();
    let needs_segments = !duration_metrics.is_empty() || !segment_dims.is_empty();
    let needs_time = group_by
        .iter()
        .any(|d| matches!(d, Dimension::Day | Dimension::Hour));

    let record_dims: Vec<Dimension> = group_by
        .iter()
        .copied()
        .filter(|d| !d.per_segment())
        .collect();
    // Counting by time alone needs only the instant the merge step already read: the JSON
    // is not touched at all.
    let needs_fields = needs_segments
        || record_dims
            .iter()
            .any(|d| !matches!(d, Dimension::Day | Dimension::Hour | Dimension::Account));

    let mut groups: HashMap<Vec<KeyPart<'a>>, Acc> = HashMap::new();
    // Buffers reused from record to record: most records add to a group that exists.
    let mut record_sets: Vec<Vec<KeyPart<'a>>> = vec![Vec::new(); record_dims.len()];
    let mut pick = vec![0usize; record_dims.len()];
    let mut key: Vec<KeyPart<'a>> = Vec::with_capacity(group_by.len());
    let mut total = 0usize;
    for (record, account) in records {
        total += 1;
        let raw = record.raw.get();
        let fields: Fields<'a> = if needs_fields && raw.trim_start().starts_with('{') {
            serde_json::from_str(raw).unwrap_or_default()
        } else {
            Fields::default()
        };
        let (day, hour) = if needs_time {
            time_parts(record.start, tz)
        } else {
            (KeyPart::Missing, KeyPart::Missing)
        };
        let segments: Vec<Segment<'a>> = if needs_segments {
            array(fields.destinations)
                .into_iter()
                .map(|r| Segment::read(r, &wanted))
                .collect()
        } else {
            Vec::new()
        };

        // The segment-scoped part of the key: distinct tuples, segment by segment, each with
        // the segments that carry it (`None`: all of them — the one empty tuple there is
        // without segment dimensions).
        let mut tuples: Vec<(Vec<KeyPart<'a>>, Option<Vec<usize>>)> = Vec::new();
        if segment_dims.is_empty() {
            tuples.push((Vec::new(), None));
        } else if segments.is_empty() {
            tuples.push((vec![KeyPart::Missing; segment_dims.len()], Some(Vec::new())));
        } else {
            for (i, s) in segments.iter().enumerate() {
                let t: Vec<KeyPart<'a>> = segment_dims.iter().map(|d| s.part(*d).clone()).collect();
                match tuples.iter_mut().find(|(k, _)| *k == t) {
                    Some((_, Some(idx))) => idx.push(i),
                    _ => tuples.push((t, Some(vec![i]))),
                }
            }
        }

        for (dim, set) in record_dims.iter().zip(record_sets.iter_mut()) {
            record_parts(*dim, &fields, &day, &hour, set);
            if *dim == Dimension::Account {
                set.clear();
                set.push(account.map_or(KeyPart::Missing, |a| KeyPart::Text(a.into())));
            }
        }

        for (tuple, members) in &tuples {
            // Every combination of the record-level values (an odometer over the sets).
            pick.fill(0);
            loop {
                let (mut r, mut s) = (0, 0);
                key.clear();
                key.extend(group_by.iter().map(|d| {
                    if d.per_segment() {
                        s += 1;
                        tuple[s - 1].clone()
                    } else {
                        r += 1;
                        record_sets[r - 1][pick[r - 1]].clone()
                    }
                }));
                let acc = match groups.get_mut(key.as_slice()) {
                    Some(acc) => acc,
                    None => groups.entry(key.clone()).or_insert_with(|| Acc {
                        count: 0,
                        values: vec![Vec::new(); duration_metrics.len()],
                    }),
                };
                acc.count += 1;
                for (list, (_, slot)) in acc.values.iter_mut().zip(&duration_metrics) {
                    let value = |i: usize| segments[i].durations[*slot];
                    match members {
                        None => list.extend((0..segments.len()).filter_map(value)),
                        Some(idx) => list.extend(idx.iter().filter_map(|i| value(*i))),
                    }
                }
                // Advance the odometer; done when it wraps back to all zeros.
                let mut pos = pick.len();
                while pos > 0 {
                    pos -= 1;
                    pick[pos] += 1;
                    if pick[pos] < record_sets[pos].len() {
                        break;
                    }
                    pick[pos] = 0;
                }
                if pick.iter().all(|p| *p == 0) {
                    break;
                }
            }
        }
    }

    if group_by.is_empty() && groups.is_empty() {
        groups.insert(
            Vec::new(),
            Acc {
                count: 0,
                values: vec![Vec::new(); duration_metrics.len()],
            },
        );
    }
    let mut out: Vec<Group<'a>> = groups
        .into_iter()
        .map(|(key, acc)| Group {
            key,
            count: acc.count,
            durations: duration_metrics
                .iter()
                .map(|(m, _)| *m)
                .zip(acc.values.into_iter().map(Stats::of))
                .collect(),
        })
        .collect();
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Summary {
        group_by: group_by.to_vec(),
        metrics: metrics.to_vec(),
        groups: out,
        records: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::testing::*;

    #[test]
    fn segments_count_once_per_bucket_and_carry_their_own_durations() {
        let records = [rec(CONVERSATION, 0), rec(BOT, 0)];
        let all = [
            Metric::Count,
            Metric::InteractionDuration,
            Metric::FirstResponseDuration,
            Metric::AfterCallWorkDuration,
            Metric::QueueWait,
        ];
        let s = summarise(&refs(&records), &TimeZone::UTC, &[Dimension::Queue], &all);
        assert_eq!(labels(&s), ["qu-a", "qu-b", "null"]);
        let qa = &s.groups[0];
        assert_eq!(qa.count, 1, "two segments in qu-a, one record");
        let get =
            |g: &Group<'_>, m: Metric| g.durations.iter().find(|(x, _)| *x == m).unwrap().1.clone();
        assert_eq!(get(qa, Metric::InteractionDuration).sum, 100.0);
        assert_eq!(
            get(qa, Metric::QueueWait).count,
            1,
            "the unanswered segment has no wait"
        );
        assert_eq!(get(qa, Metric::QueueWait).max, Some(60.0));
        let qb = &s.groups[1];
        assert_eq!(get(qb, Metric::InteractionDuration).sum, 300.0);
        assert_eq!(
            get(qb, Metric::FirstResponseDuration).count,
            0,
            "a string is not a number"
        );
        assert_eq!(get(qb, Metric::FirstResponseDuration).mean, None);
        assert_eq!(
            get(qb, Metric::AfterCallWorkDuration).count,
            0,
            "negative is skipped"
        );
        assert_eq!(get(qb, Metric::QueueWait).sum, 30.0);
        let none = &s.groups[2];
        assert_eq!(none.count, 1, "the bot session has no segments");
        assert_eq!(get(none, Metric::InteractionDuration).count, 0);

        // Queue and agent together pair segment by segment: never (qu-a, u-y).
        let s = summarise(
            &refs(&records),
            &TimeZone::UTC,
            &[Dimension::Queue, Dimension::Agent],
            &[Metric::Count],
        );
        assert_eq!(
            labels(&s),
            ["qu-a|u-x", "qu-a|null", "qu-b|u-y", "null|null"]
        );

        // Ungrouped: every segment's value, one record each.
        let s = summarise(&refs(&records), &TimeZone::UTC, &[], &all);
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].count, 2);
        let d = get(&s.groups[0], Metric::InteractionDuration);
        assert_eq!((d.count, d.sum, d.max), (2, 400.0, Some(300.0)));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Stats::of(vec![5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]);
        assert_eq!((s.count, s.sum, s.mean), (10, 55.0, Some(5.5)));
        assert_eq!((s.p50, s.p90, s.max), (Some(5.0), Some(9.0), Some(10.0)));
        let one = Stats::of(vec![42.0]);
        assert_eq!(
            (one.p50, one.p90, one.max),
            (Some(42.0), Some(42.0), Some(42.0))
        );
        let two = Stats::of(vec![2.0, 1.0]);
        assert_eq!((two.p50, two.p90), (Some(1.0), Some(2.0)));
        let none = Stats::of(Vec::new());
        assert_eq!(
            (none.count, none.sum, none.mean, none.p50),
            (0, 0.0, None, None)
        );
    }

    #[test]
    fn no_grouping_is_one_group_even_when_empty() {
        let s = summarise(
            &[],
            &TimeZone::UTC,
            &[],
            &[Metric::Count, Metric::QueueWait],
        );
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].count, 0);
        let s = summarise(&[], &TimeZone::UTC, &[Dimension::Day], &[Metric::Count]);
        assert!(s.groups.is_empty());
    }
}

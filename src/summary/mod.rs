//! Summarising (pure, no I/O): the merged records of a range → counts and duration
//! statistics per group, for `GET /v1/interactions/summary`.
//!
//! It sits after [`merge`](crate::merge) in the pipeline, in place of the record renderer:
//! the same cached windows, the same de-duplicated records, but only numbers leave. Each
//! record's raw JSON is read once, into borrowed slices; nothing is copied that does not
//! have to be.
//!
//! The vendor documents the fields but not how to count them, so the meaning is fixed here:
//!
//! * **Time** (`day`, `hour`) comes from [`Record::start`], the instant of
//!   `sessionStartTime` (already placed with the offset of the window that fetched it),
//!   converted into the requested zone. A day is a civil date there. An hour is a civil
//!   hour *and* the offset in force, so a 25-hour fall-back day has 25 buckets
//!   (`2024-11-03T01:00-04:00` then `2024-11-03T01:00-05:00`) and a 23-hour spring-forward
//!   day has 23. Time buckets sort by instant, not by label.
//! * **Record fields**: `channel`, `bot` (`botId`), `finalStatus`, `smartStatus` are the
//!   top-level strings, kept byte for byte (an empty string is a value of its own);
//!   `direction` is the top-level `Direction`, or `customerinfo.Direction` when that is
//!   absent or empty; `disposition` is each entry of `dispositions`, so a record with two
//!   codes counts under both.
//! * **Segment fields**: a record's segments are its `destinations`. `queue` is a
//!   segment's `queueId`, `agent` its `respondingAgent.agentId`. A record counts once in
//!   every bucket one of its segments falls in (a transfer through two queues counts in
//!   both; a segment without a queue or agent falls in the `null` bucket), and a record
//!   without segments falls in the `null` bucket. With `queue` and `agent` both grouped,
//!   the pairs are taken segment by segment, never crossed.
//! * **Durations** (seconds) are per segment, from `respondingAgent`:
//!   `interactionDuration`, `firstResponseDuration`, `afterCallWorkDuration`; `queueWait`
//!   is `EnterTime` → `respondingAgent.assignedAt` (both local to the same offset, so the
//!   civil difference is the real one). A transferred conversation gives one value per
//!   answering segment; when grouped by `queue` or `agent`, a bucket takes only the values
//!   of its own segments. A value that is absent, not a JSON number, negative or not finite
//!   is skipped — never counted as 0 — so `count` in the statistics is the number of values.
//! * **Percentiles** are exact, by nearest rank: `pN` is the ⌈N/100 · n⌉-th smallest value,
//!   always one that occurred.
//! * **Missing values** of any grouping (no such field, not a string) form the `null`
//!   bucket, which sorts after every value. A record that is not a JSON object still counts,
//!   with every field missing, so `meta.total` matches `/v1/interactions`.

use std::{borrow::Cow, collections::HashMap, fmt::Write as _};

use jiff::{
    Timestamp,
    civil::{Date, DateTime},
    tz::TimeZone,
};
use serde::{
    Deserialize, Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq},
};
use serde_json::value::RawValue;

use crate::merge::Record;

/// Most dimensions one summary may group by.
pub const MAX_GROUP_BY: usize = 3;

/// What a summary can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Day,
    Hour,
    Channel,
    Queue,
    Bot,
    Agent,
    FinalStatus,
    SmartStatus,
    Direction,
    Disposition,
}

impl Dimension {
    /// Every dimension, in documentation order.
    pub const ALL: [Dimension; 10] = [
        Dimension::Day,
        Dimension::Hour,
        Dimension::Channel,
        Dimension::Queue,
        Dimension::Bot,
        Dimension::Agent,
        Dimension::FinalStatus,
        Dimension::SmartStatus,
        Dimension::Direction,
        Dimension::Disposition,
    ];

    /// The name used in `group_by`, in JSON keys and in CSV headers.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Hour => "hour",
            Dimension::Channel => "channel",
            Dimension::Queue => "queue",
            Dimension::Bot => "bot",
            Dimension::Agent => "agent",
            Dimension::FinalStatus => "finalStatus",
            Dimension::SmartStatus => "smartStatus",
            Dimension::Direction => "direction",
            Dimension::Disposition => "disposition",
        }
    }

    /// Case-insensitive, so `finalstatus` is as good as `finalStatus`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// Whether the value belongs to a segment (`destinations[]`) rather than the record.
    fn per_segment(self) -> bool {
        matches!(self, Dimension::Queue | Dimension::Agent)
    }

    /// Parses `group_by` items: known, each once, at most [`MAX_GROUP_BY`].
    ///
    /// # Errors
    /// A message naming the offending item.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Self>, String> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let item = item.as_ref();
            let d = Self::parse(item).ok_or_else(|| {
                format!(
                    "unknown grouping `{}`; allowed: {}",
                    item.chars().take(40).collect::<String>(),
                    names(&Self::ALL.map(Self::name))
                )
            })?;
            if out.contains(&d) {
                return Err(format!("`{}` is given more than once", d.name()));
            }
            out.push(d);
        }
        if out.len() > MAX_GROUP_BY {
            return Err(format!(
                "at most {MAX_GROUP_BY} groupings, {} given",
                out.len()
            ));
        }
        Ok(out)
    }
}

/// What a summary can measure per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Records in the group.
    Count,
    InteractionDuration,
    FirstResponseDuration,
    AfterCallWorkDuration,
    QueueWait,
}

impl Metric {
    /// Every metric, in documentation order.
    pub const ALL: [Metric; 5] = [
        Metric::Count,
        Metric::InteractionDuration,
        Metric::FirstResponseDuration,
        Metric::AfterCallWorkDuration,
        Metric::QueueWait,
    ];

    /// The name used in `metrics`, in JSON keys and in CSV headers.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Count => "count",
            Metric::InteractionDuration => "interactionDuration",
            Metric::FirstResponseDuration => "firstResponseDuration",
            Metric::AfterCallWorkDuration => "afterCallWorkDuration",
            Metric::QueueWait => "queueWait",
        }
    }

    /// Case-insensitive.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Parses `metrics` items: known, each once; none means `count`.
    ///
    /// # Errors
    /// A message naming the offending item.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Self>, String> {
        let mut out = Vec::with_capacity(items.len().max(1));
        for item in items {
            let item = item.as_ref();
            let m = Self::parse(item).ok_or_else(|| {
                format!(
                    "unknown metric `{}`; allowed: {}",
                    item.chars().take(40).collect::<String>(),
                    names(&Self::ALL.map(Self::name))
                )
            })?;
            if out.contains(&m) {
                return Err(format!("`{}` is given more than once", m.name()));
            }
            out.push(m);
        }
        if out.is_empty() {
            out.push(Metric::Count);
        }
        Ok(out)
    }

    /// Index into a segment's duration values; `None` for `count`.
    fn duration_slot(self) -> Option<usize> {
        match self {
            Metric::Count => None,
            Metric::InteractionDuration => Some(0),
            Metric::FirstResponseDuration => Some(1),
            Metric::AfterCallWorkDuration => Some(2),
            Metric::QueueWait => Some(3),
        }
    }
}

fn names(all: &[&str]) -> String {
    all.join(", ")
}

/// One part of a group's key. Parts of one position are always the same variant, and the
/// derived order is the output order: time by instant, text by bytes, missing last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart<'a> {
    /// A civil date in the requested zone.
    Day(Date),
    /// A civil hour in the requested zone, with the offset in force (which tells the two
    /// 01:00 hours of a fall-back night apart). `start` is its first instant, for ordering.
    Hour {
        start: i64,
        civil: DateTime,
        offset_seconds: i32,
    },
    /// A field's string value, borrowed from the record when it holds no escapes.
    Text(Cow<'a, str>),
    /// The record has no such value.
    Missing,
}

impl KeyPart<'_> {
    /// The label shown to clients; `None` for [`KeyPart::Missing`].
    pub fn label(&self) -> Option<Cow<'_, str>> {
        match self {
            KeyPart::Day(d) => Some(Cow::Owned(d.to_string())),
            KeyPart::Hour {
                civil,
                offset_seconds,
                ..
            } => {
                let mut s = format!("{}T{:02}:{:02}", civil.date(), civil.hour(), civil.minute());
                push_offset(&mut s, *offset_seconds);
                Some(Cow::Owned(s))
            }
            KeyPart::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            KeyPart::Missing => None,
        }
    }
}

/// Appends `±HH:MM`.
fn push_offset(s: &mut String, seconds: i32) {
    let sign = if seconds < 0 { '-' } else { '+' };
    let abs = seconds.unsigned_abs();
    let _ = write!(s, "{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60);
}

/// Statistics of one duration metric over one group, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Values seen (segments that carried one), not records.
    pub count: u64,
    pub sum: f64,
    /// `None` when there are no values.
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
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

// ---------------------------------------------------------------------------------------
// Reading a record: only the fields a summary needs, borrowed, and never failing on a
// field of an unexpected type (the upstream is not ours to trust).

#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(rename = "botId", borrow, default)]
    bot_id: Option<&'a RawValue>,
    #[serde(rename = "finalStatus", borrow, default)]
    final_status: Option<&'a RawValue>,
    #[serde(rename = "smartStatus", borrow, default)]
    smart_status: Option<&'a RawValue>,
    #[serde(rename = "Direction", borrow, default)]
    direction: Option<&'a RawValue>,
    #[serde(borrow, default)]
    customerinfo: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dispositions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    destinations: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct CustomerFields<'a> {
    #[serde(rename = "Direction", borrow, default)]
    direction: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct DestinationFields<'a> {
    #[serde(rename = "queueId", borrow, default)]
    queue_id: Option<&'a RawValue>,
    #[serde(rename = "EnterTime", borrow, default)]
    enter_time: Option<&'a RawValue>,
    #[serde(rename = "respondingAgent", borrow, default)]
    responding_agent: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct AgentFields<'a> {
    #[serde(rename = "agentId", borrow, default)]
    agent_id: Option<&'a RawValue>,
    #[serde(rename = "interactionDuration", borrow, default)]
    interaction_duration: Option<&'a RawValue>,
    #[serde(rename = "firstResponseDuration", borrow, default)]
    first_response_duration: Option<&'a RawValue>,
    #[serde(rename = "afterCallWorkDuration", borrow, default)]
    after_call_work_duration: Option<&'a RawValue>,
    #[serde(rename = "assignedAt", borrow, default)]
    assigned_at: Option<&'a RawValue>,
}

/// The fields of a JSON object; all absent when `raw` is not an object (serde would
/// otherwise read an array positionally) or does not parse (duplicate keys).
fn object<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>) -> T {
    match raw {
        Some(r) if r.get().trim_start().starts_with('{') => {
            serde_json::from_str(r.get()).unwrap_or_default()
        }
        _ => T::default(),
    }
}

/// The elements of a JSON array; none when `raw` is anything else.
fn array(raw: Option<&RawValue>) -> Vec<&RawValue> {
    match raw {
        Some(r) if r.get().trim_start().starts_with('[') => {
            serde_json::from_str(r.get()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The value of a JSON string, borrowed when it holds no escapes; `None` for other types.
fn text<'a>(raw: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let s = raw?.get().trim();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A duration in seconds: a finite, non-negative JSON number; `None` otherwise.
fn seconds(raw: Option<&RawValue>) -> Option<f64> {
    let s = raw?.get().trim();
    if !s.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// Seconds between two record times written at the same offset.
fn civil_gap(from: Option<&RawValue>, to: Option<&RawValue>) -> Option<f64> {
    let from: DateTime = text(from)?.trim().parse().ok()?;
    let to: DateTime = text(to)?.trim().parse().ok()?;
    let secs = from.duration_until(to).as_secs_f64();
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// One segment (`destinations[]` entry) as the summary sees it.
struct Segment<'a> {
    queue: KeyPart<'a>,
    agent: KeyPart<'a>,
    /// Indexed by [`Metric::duration_slot`].
    durations: [Option<f64>; 4],
}

impl<'a> Segment<'a> {
    fn read(raw: &'a RawValue, wanted: &[bool; 4]) -> Self {
        let d: DestinationFields<'a> = object(Some(raw));
        let a: AgentFields<'a> = object(d.responding_agent);
        let want = |slot: usize, f: &dyn Fn() -> Option<f64>| if wanted[slot] { f() } else { None };
        Segment {
            queue: text(d.queue_id).map_or(KeyPart::Missing, KeyPart::Text),
            agent: text(a.agent_id).map_or(KeyPart::Missing, KeyPart::Text),
            durations: [
                want(0, &|| seconds(a.interaction_duration)),
                want(1, &|| seconds(a.first_response_duration)),
                want(2, &|| seconds(a.after_call_work_duration)),
                want(3, &|| civil_gap(d.enter_time, a.assigned_at)),
            ],
        }
    }

    fn part(&self, dim: Dimension) -> &KeyPart<'a> {
        match dim {
            Dimension::Queue => &self.queue,
            _ => &self.agent,
        }
    }
}

fn text_part(raw: Option<&RawValue>) -> KeyPart<'_> {
    text(raw).map_or(KeyPart::Missing, KeyPart::Text)
}

/// Day and hour buckets of an instant in `tz`.
fn time_parts(start: Option<i64>, tz: &TimeZone) -> (KeyPart<'static>, KeyPart<'static>) {
    let Some(ts) = start.and_then(|s| Timestamp::from_second(s).ok()) else {
        return (KeyPart::Missing, KeyPart::Missing);
    };
    let offset = tz.to_offset(ts);
    let local = offset.to_datetime(ts);
    let civil = local.date().at(local.hour(), 0, 0, 0);
    let into_hour = i64::from(local.minute()) * 60 + i64::from(local.second());
    (
        KeyPart::Day(local.date()),
        KeyPart::Hour {
            start: ts.as_second() - into_hour,
            civil,
            offset_seconds: offset.seconds(),
        },
    )
}

/// Fills `out` with the distinct values of a record-level dimension (one or more;
/// [`KeyPart::Missing`] when there are none).
fn record_parts<'a>(
    dim: Dimension,
    f: &Fields<'a>,
    day: &KeyPart<'a>,
    hour: &KeyPart<'a>,
    out: &mut Vec<KeyPart<'a>>,
) {
    out.clear();
    let one = match dim {
        Dimension::Day => day.clone(),
        Dimension::Hour => hour.clone(),
        Dimension::Channel => text_part(f.channel),
        Dimension::Bot => text_part(f.bot_id),
        Dimension::FinalStatus => text_part(f.final_status),
        Dimension::SmartStatus => text_part(f.smart_status),
        Dimension::Direction => match text(f.direction).filter(|d| !d.is_empty()) {
            Some(d) => KeyPart::Text(d),
            None => {
                let c: CustomerFields<'a> = object(f.customerinfo);
                text(c.direction)
                    .filter(|d| !d.is_empty())
                    .map_or(KeyPart::Missing, KeyPart::Text)
            }
        },
        Dimension::Disposition => {
            for code in array(f.dispositions)
                .into_iter()
                .filter_map(|r| text(Some(r)))
            {
                let part = KeyPart::Text(code);
                if !out.contains(&part) {
                    out.push(part);
                }
            }
            if out.is_empty() {
                out.push(KeyPart::Missing);
            }
            return;
        }
        // Segment dimensions are expanded with the segments.
        Dimension::Queue | Dimension::Agent => KeyPart::Missing,
    };
    out.push(one);
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
            .any(|d| !matches!(d, Dimension::Day | Dimension::Hour));

    let mut groups: HashMap<Vec<KeyPart<'a>>, Acc> = HashMap::new();
    // Buffers reused from record to record: most records add to a group that exists.
    let mut record_sets: Vec<Vec<KeyPart<'a>>> = vec![Vec::new(); record_dims.len()];
    let mut pick = vec![0usize; record_dims.len()];
    let mut key: Vec<KeyPart<'a>> = Vec::with_capacity(group_by.len());
    for record in records {
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
        records: records.len(),
    }
}

// ---------------------------------------------------------------------------------------
// Output: JSON (serde, keys in request order) and CSV (one row per group).

/// A number as JSON: whole values without a fraction, so counts of seconds read as such.
fn serialize_number<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        s.serialize_i64(v as i64)
    } else {
        s.serialize_f64(v)
    }
}

struct Number(Option<f64>);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => serialize_number(v, s),
            None => s.serialize_none(),
        }
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("count", &self.count)?;
        m.serialize_entry("sum", &Number(Some(self.sum)))?;
        m.serialize_entry("mean", &Number(self.mean))?;
        m.serialize_entry("p50", &Number(self.p50))?;
        m.serialize_entry("p90", &Number(self.p90))?;
        m.serialize_entry("max", &Number(self.max))?;
        m.end()
    }
}

struct KeyJson<'s, 'a>(&'s [Dimension], &'s [KeyPart<'a>]);

impl Serialize for KeyJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (d, part) in self.0.iter().zip(self.1) {
            m.serialize_entry(d.name(), &part.label())?;
        }
        m.end()
    }
}

struct GroupJson<'s, 'a>(&'s Summary<'a>, &'s Group<'a>);

impl Serialize for GroupJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (summary, group) = (self.0, self.1);
        let mut m = s.serialize_map(Some(1 + summary.metrics.len()))?;
        m.serialize_entry("key", &KeyJson(&summary.group_by, &group.key))?;
        for metric in &summary.metrics {
            match metric {
                Metric::Count => m.serialize_entry("count", &group.count)?,
                other => {
                    if let Some((_, stats)) = group.durations.iter().find(|(x, _)| x == other) {
                        m.serialize_entry(other.name(), stats)?;
                    }
                }
            }
        }
        m.end()
    }
}

/// The `groups` array of the JSON answer: `[{"key":{…},"count":…,"<metric>":{…}}, …]`,
/// key members in `group_by` order, metrics in request order, a missing value as `null`.
pub struct GroupsJson<'s, 'a>(pub &'s Summary<'a>);

impl Serialize for GroupsJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.groups.len()))?;
        for g in &self.0.groups {
            seq.serialize_element(&GroupJson(self.0, g))?;
        }
        seq.end()
    }
}

/// How CSV writes a missing key value (CSV has no null, and `""` is a value of its own).
pub const CSV_MISSING: &str = "(none)";

/// Statistic columns of each duration metric, in CSV order.
const STAT_COLUMNS: [&str; 6] = ["count", "sum", "mean", "p50", "p90", "max"];

/// The CSV header: the `group_by` names, then `count` and `<metric>.<statistic>` columns
/// in request order. It depends only on the request, never on the data.
pub fn csv_header(group_by: &[Dimension], metrics: &[Metric]) -> Vec<String> {
    let mut cols: Vec<String> = group_by.iter().map(|d| d.name().to_owned()).collect();
    for m in metrics {
        match m {
            Metric::Count => cols.push("count".to_owned()),
            other => cols.extend(STAT_COLUMNS.iter().map(|c| format!("{}.{c}", other.name()))),
        }
    }
    cols
}

fn csv_number(v: Option<f64>) -> String {
    // Rust prints whole floats without a fraction (61.0 → "61").
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The whole CSV: header, then one row per group (RFC 4180 quoting by the `csv` crate).
/// `formula_escape` (CSV_FORMULA_ESCAPE) defuses the group labels, which come from the
/// upstream's text, with [`crate::render::defuse_formula`]; the numbers are the gateway's.
pub fn to_csv(summary: &Summary<'_>, formula_escape: bool) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(csv_header(&summary.group_by, &summary.metrics));
    for g in &summary.groups {
        let mut row: Vec<String> = g
            .key
            .iter()
            .map(|p| match p.label() {
                None => CSV_MISSING.to_owned(),
                Some(l) if formula_escape => crate::render::defuse_formula(&l).into_owned(),
                Some(l) => l.into_owned(),
            })
            .collect();
        for m in &summary.metrics {
            match m {
                Metric::Count => row.push(g.count.to_string()),
                other => {
                    let stats = g.durations.iter().find(|(x, _)| x == other).map(|(_, s)| s);
                    match stats {
                        Some(s) => row.extend([
                            s.count.to_string(),
                            csv_number(Some(s.sum)),
                            csv_number(s.mean),
                            csv_number(s.p50),
                            csv_number(s.p90),
                            csv_number(s.max),
                        ]),
                        None => row.extend(std::iter::repeat_n(String::new(), 6)),
                    }
                }
            }
        }
        let _ = w.write_record(&row);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Window;
    use jiff::tz::Offset;

    fn window(offset_seconds: i32) -> Window {
        Window {
            start: Timestamp::from_second(0).unwrap(),
            end: Timestamp::from_second(4_000_000_000).unwrap(),
            offset_seconds,
        }
    }

    fn rec(json: &str, offset_seconds: i32) -> Record {
        Record::new(
            RawValue::from_string(json.to_owned()).unwrap(),
            &window(offset_seconds),
        )
    }

    fn ny() -> TimeZone {
        TimeZone::get("America/New_York").unwrap()
    }

    /// One bot session per `step` seconds over the local day `date` in New York, each
    /// written the way the vendor would: local to the offset in force at its instant.
    fn day_of_sessions(date: &str, step: i64) -> Vec<Record> {
        let tz = ny();
        let d: Date = date.parse().unwrap();
        let midnight = |d: Date| {
            tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                .unwrap()
                .as_second()
        };
        let end = midnight(d.tomorrow().unwrap());
        let mut out = Vec::new();
        let mut t = midnight(d);
        while t < end {
            let ts = Timestamp::from_second(t).unwrap();
            let off = tz.to_offset(ts);
            let local = off.to_datetime(ts);
            out.push(rec(
                &format!(
                    r#"{{"sessionId":"s{t}","channel":"voice","sessionStartTime":"{}"}}"#,
                    local.strftime("%Y-%m-%dT%H:%M:%S")
                ),
                off.seconds(),
            ));
            t += step;
        }
        out
    }

    fn refs(v: &[Record]) -> Vec<&Record> {
        v.iter().collect()
    }

    fn labels(s: &Summary<'_>) -> Vec<String> {
        s.groups
            .iter()
            .map(|g| {
                g.key
                    .iter()
                    .map(|p| p.label().map_or("null".to_owned(), Cow::into_owned))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }

    #[test]
    fn spring_forward_day_has_23_hours_and_fall_back_day_25() {
        let tz = ny();
        // Every 20 minutes: three records in each real hour of the day.
        let spring = day_of_sessions("2024-03-10", 1200);
        let s = summarise(&refs(&spring), &tz, &[Dimension::Hour], &[Metric::Count]);
        assert_eq!(s.groups.len(), 23);
        assert!(s.groups.iter().all(|g| g.count == 3));
        let l = labels(&s);
        assert_eq!(l[0], "2024-03-10T00:00-05:00");
        assert_eq!(l[1], "2024-03-10T01:00-05:00");
        assert_eq!(l[2], "2024-03-10T03:00-04:00", "02:00 does not exist");
        assert_eq!(l[22], "2024-03-10T23:00-04:00");

        let fall = day_of_sessions("2024-11-03", 1200);
        let s = summarise(&refs(&fall), &tz, &[Dimension::Hour], &[Metric::Count]);
        assert_eq!(s.groups.len(), 25);
        assert!(s.groups.iter().all(|g| g.count == 3));
        let l = labels(&s);
        assert_eq!(
            l[..4],
            [
                "2024-11-03T00:00-04:00",
                "2024-11-03T01:00-04:00",
                "2024-11-03T01:00-05:00",
                "2024-11-03T02:00-05:00"
            ],
            "the repeated hour is told apart by its offset, in instant order"
        );

        // One local day each, however long.
        for (records, n) in [(&spring, 69), (&fall, 75)] {
            let s = summarise(&refs(records), &tz, &[Dimension::Day], &[Metric::Count]);
            assert_eq!(s.groups.len(), 1);
            assert_eq!(s.groups[0].count, n);
        }
    }

    #[test]
    fn time_buckets_sort_by_instant_not_label() {
        // Europe/London falls back from +01:00 to +00:00: "+00:00" sorts before "+01:00" as
        // text, but the +01:00 hour comes first.
        let tz = TimeZone::get("Europe/London").unwrap();
        let records = [
            rec(r#"{"sessionStartTime":"2024-10-27T01:30:00"}"#, 0),
            rec(r#"{"sessionStartTime":"2024-10-27T01:30:00"}"#, 3600),
        ];
        let s = summarise(&refs(&records), &tz, &[Dimension::Hour], &[Metric::Count]);
        assert_eq!(
            labels(&s),
            ["2024-10-27T01:00+01:00", "2024-10-27T01:00+00:00"]
        );
        // A fixed offset with minutes, and a record without a readable start.
        let tz = TimeZone::fixed(Offset::from_seconds(19_800).unwrap());
        let records = [
            rec(r#"{"sessionStartTime":"2024-09-26T23:45:00"}"#, 19_800),
            rec(r#"{"sessionStartTime":"soon"}"#, 19_800),
        ];
        let s = summarise(
            &refs(&records),
            &tz,
            &[Dimension::Day, Dimension::Hour],
            &[Metric::Count],
        );
        assert_eq!(
            labels(&s),
            ["2024-09-26|2024-09-26T23:00+05:30", "null|null"]
        );
    }

    const CONVERSATION: &str = r#"{
        "sessionId":"c1","conversationId":"c-1","channel":"voice","botId":"st-1",
        "finalStatus":"CLOSED","smartStatus":"RESOLVED","Direction":"Inbound",
        "sessionStartTime":"2024-09-26T10:00:00","dispositions":["SALE","ESCALATED","SALE"],
        "destinations":[
          {"queueId":"qu-a","EnterTime":"2024-09-26T10:00:10",
           "respondingAgent":{"agentId":"u-x","assignedAt":"2024-09-26T10:01:10",
             "interactionDuration":100,"firstResponseDuration":5,"afterCallWorkDuration":20}},
          {"queueId":"qu-b","EnterTime":"2024-09-26T10:05:00",
           "respondingAgent":{"agentId":"u-y","assignedAt":"2024-09-26T10:05:30",
             "interactionDuration":300,"firstResponseDuration":"7","afterCallWorkDuration":-1}},
          {"queueId":"qu-a","EnterTime":"2024-09-26T10:20:00"}
        ]}"#;
    const BOT: &str = r#"{"sessionId":"b1","channel":"rtm","botId":"st-1","smartStatus":"",
        "sessionStartTime":"2024-09-26T11:00:00","customerinfo":{"Direction":"Outbound"}}"#;

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
    fn record_fields_and_their_fallbacks() {
        let records = [
            rec(CONVERSATION, 0),
            rec(BOT, 0),
            rec("[1,2]", 0),
            rec("null", 0),
        ];
        let tz = TimeZone::UTC;
        let by = |d: Dimension| labels(&summarise(&refs(&records), &tz, &[d], &[Metric::Count]));
        assert_eq!(by(Dimension::Direction), ["Inbound", "Outbound", "null"]);
        assert_eq!(by(Dimension::Disposition), ["ESCALATED", "SALE", "null"]);
        assert_eq!(
            by(Dimension::SmartStatus),
            ["", "RESOLVED", "null"],
            "\"\" is a value"
        );
        assert_eq!(by(Dimension::Channel), ["rtm", "voice", "null"]);
        assert_eq!(by(Dimension::Bot), ["st-1", "null"]);
        assert_eq!(by(Dimension::FinalStatus), ["CLOSED", "null"]);
        let s = summarise(
            &refs(&records),
            &tz,
            &[Dimension::Channel],
            &[Metric::Count],
        );
        assert_eq!(s.records, 4);
        assert_eq!(s.groups.iter().map(|g| g.count).sum::<u64>(), 4);
        // Disposition duplicates within a record count once; with channel the codes multiply.
        let s = summarise(
            &refs(&records),
            &tz,
            &[Dimension::Channel, Dimension::Disposition],
            &[Metric::Count],
        );
        assert_eq!(
            labels(&s),
            ["rtm|null", "voice|ESCALATED", "voice|SALE", "null|null"]
        );
        let counts: Vec<u64> = s.groups.iter().map(|g| g.count).collect();
        assert_eq!(counts, [1, 1, 1, 2]);
    }

    #[test]
    fn escaped_strings_and_odd_types_are_read_safely() {
        let records = [
            rec(
                r#"{"channel":"say \"hi\"","botId":42,"dispositions":"SALE","destinations":{"queueId":"q"}}"#,
                0,
            ),
            rec(
                r#"{"channel":"Jones ","destinations":[1,"x",{"queueId":7}],"customerinfo":[]}"#,
                0,
            ),
        ];
        let s = summarise(
            &refs(&records),
            &TimeZone::UTC,
            &[Dimension::Channel, Dimension::Queue, Dimension::Bot],
            &[Metric::Count, Metric::QueueWait],
        );
        assert_eq!(labels(&s), ["Jones |null|null", "say \"hi\"|null|null"]);
        let s = summarise(
            &refs(&records),
            &TimeZone::UTC,
            &[Dimension::Direction, Dimension::Disposition],
            &[],
        );
        assert_eq!(labels(&s), ["null|null"]);
        assert_eq!(s.groups[0].count, 2);
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

    #[test]
    fn parameters_parse_strictly() {
        assert_eq!(
            Dimension::parse_list(&["day", "FINALSTATUS"]).unwrap(),
            [Dimension::Day, Dimension::FinalStatus]
        );
        assert!(
            Dimension::parse_list(&["day", "Day"])
                .unwrap_err()
                .contains("more than once")
        );
        assert!(
            Dimension::parse_list(&["week"])
                .unwrap_err()
                .contains("week")
        );
        assert!(
            Dimension::parse_list(&["day", "channel", "queue", "agent"])
                .unwrap_err()
                .contains("at most 3")
        );
        assert_eq!(Metric::parse_list::<&str>(&[]).unwrap(), [Metric::Count]);
        assert_eq!(
            Metric::parse_list(&["queueWait", "count"]).unwrap(),
            [Metric::QueueWait, Metric::Count]
        );
        assert!(Metric::parse_list(&["count", "count"]).is_err());
        assert!(Metric::parse_list(&["avg"]).is_err());
    }

    #[test]
    fn json_and_csv_follow_the_request_order() {
        let records = [rec(CONVERSATION, 0), rec(BOT, 0)];
        let s = summarise(
            &refs(&records),
            &TimeZone::UTC,
            &[Dimension::Queue, Dimension::Day],
            &[Metric::InteractionDuration, Metric::Count],
        );
        let json = serde_json::to_string(&GroupsJson(&s)).unwrap();
        assert!(
            json.starts_with(r#"[{"key":{"queue":"qu-a","day":"2024-09-26"},"interactionDuration":{"count":1,"sum":100,"mean":100,"p50":100,"p90":100,"max":100},"count":1}"#),
            "{json}"
        );
        assert!(json.contains(r#"{"key":{"queue":null,"day":"2024-09-26"},"interactionDuration":{"count":0,"sum":0,"mean":null,"p50":null,"p90":null,"max":null},"count":1}"#), "{json}");
        let csv = String::from_utf8(to_csv(&s, true)).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "queue,day,interactionDuration.count,interactionDuration.sum,interactionDuration.mean,interactionDuration.p50,interactionDuration.p90,interactionDuration.max,count"
        );
        assert_eq!(lines[1], "qu-a,2024-09-26,1,100,100,100,100,100,1");
        assert_eq!(lines[3], "(none),2024-09-26,0,0,,,,,1");
        assert_eq!(lines.len(), 1 + s.groups.len());
    }

    #[test]
    fn csv_defuses_formula_labels_but_not_the_numbers() {
        assert!(CONVERSATION.contains("\"qu-a\""));
        let records = [rec(&CONVERSATION.replace("\"qu-a\"", "\"=qu-a\""), 0)];
        let s = summarise(
            &refs(&records),
            &TimeZone::UTC,
            &[Dimension::Queue],
            &[Metric::Count],
        );
        let on = String::from_utf8(to_csv(&s, true)).unwrap();
        assert_eq!(on.lines().nth(1), Some("'=qu-a,1"), "{on}");
        let off = String::from_utf8(to_csv(&s, false)).unwrap();
        assert_eq!(off.lines().nth(1), Some("=qu-a,1"), "{off}");
    }
}

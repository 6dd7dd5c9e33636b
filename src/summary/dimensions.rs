//! The vocabulary of a summary: what it can group by ([`Dimension`]) and measure
//! ([`Metric`]), how `group_by` and `metrics` are parsed, and the parts a group's key is made
//! of ([`KeyPart`]), time buckets included.

use std::borrow::Cow;

use jiff::{
    Timestamp,
    civil::{Date, DateTime},
    fmt::strtime::BrokenDownTime,
    tz::{Offset, TimeZone},
};

/// Most dimensions one summary may group by.
pub const MAX_GROUP_BY: usize = 3;

/// What a summary can group by.
// Serialised as its `name`, for the OpenAPI document's enum (a test holds them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
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
    /// The gateway account the record came from (a summary over several accounts).
    Account,
}

impl Dimension {
    /// Every dimension, in documentation order.
    pub const ALL: [Dimension; 11] = [
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
        Dimension::Account,
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
            Dimension::Account => "account",
        }
    }

    /// Case-insensitive, so `finalstatus` is as good as `finalStatus`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// Whether the value belongs to a segment (`destinations[]`) rather than the record.
    pub(super) fn per_segment(self) -> bool {
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
// Serialised as its `name`, for the OpenAPI document's enum (a test holds them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
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
    pub(super) fn duration_slot(self) -> Option<usize> {
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
                // `2024-11-03T01:00-04:00`: the civil hour and the offset in force.
                let mut tm = BrokenDownTime::from(*civil);
                tm.set_offset(Offset::from_seconds(*offset_seconds).ok());
                tm.to_string("%Y-%m-%dT%H:%M%:z").ok().map(Cow::Owned)
            }
            KeyPart::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            KeyPart::Missing => None,
        }
    }
}

/// Day and hour buckets of an instant in `tz`.
pub(super) fn time_parts(
    start: Option<i64>,
    tz: &TimeZone,
) -> (KeyPart<'static>, KeyPart<'static>) {
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

#[cfg(test)]
mod tests {
    use jiff::tz::Offset;

    use super::*;
    use crate::{
        merge::Record,
        summary::{summarise, testing::*},
    };

    fn ny() -> TimeZone {
        TimeZone::get("America/New_York").unwrap()
    }

    #[test]
    fn the_documented_names_are_the_parsed_ones() {
        // The OpenAPI document's enums come from serde; `group_by` and `metrics` are read
        // by `name`: a rename on one side only would document a name the gateway refuses.
        for d in Dimension::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
            assert_eq!(Dimension::parse(d.name()), Some(d));
        }
        for m in Metric::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
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
}

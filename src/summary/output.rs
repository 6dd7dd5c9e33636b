//! Output: JSON (serde, keys in request order) and CSV (one row per group).

use std::borrow::Cow;

use serde::{
    Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq},
};
use serde_json::json;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ArrayBuilder, KnownFormat, Object, ObjectBuilder, OneOfBuilder, Ref, RefOr, Schema,
        SchemaFormat, Type, schema::SchemaType,
    },
};

use super::{
    aggregate::{Group, Stats, Summary},
    dimensions::{Dimension, KeyPart, Metric},
};

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

// The schema follows the serialiser: `key`, then a member per metric, named as it is.
impl PartialSchema for GroupJson<'_, '_> {
    fn schema() -> RefOr<Schema> {
        let mut group = ObjectBuilder::new()
            .description(Some(concat!(
                "One group. `key` has one member per `group_by` dimension (in that order; null for\n",
                "records without the value); then each requested metric."
            )))
            .property("key", Object::with_type(Type::Object))
            .required("key");
        for metric in Metric::ALL {
            group = match metric {
                Metric::Count => group.property(
                    "count",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                        .description(Some(
                            "Records in the group (present when `count` is requested).",
                        ))
                        .minimum(Some(0)),
                ),
                other => group.property(
                    other.name(),
                    OneOfBuilder::new()
                        .item(Object::with_type(Type::Null))
                        .item(Ref::from_schema_name(Stats::name())),
                ),
            };
        }
        let mut group = group.build();
        group.example = Some(
            json!({"key": {"day": "2024-09-26", "channel": "voice"}, "count": 12,
            "interactionDuration": {"count": 7, "sum": 3907, "mean": 558.1428571428571, "p50": 540, "p90": 1023, "max": 1107}}),
        );
        group.into()
    }
}

impl ToSchema for GroupJson<'_, '_> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SummaryGroup")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Stats::name().into_owned(), Stats::schema()));
        Stats::schemas(schemas);
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

impl PartialSchema for GroupsJson<'_, '_> {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(GroupJson::name()))
            .into()
    }
}

impl ToSchema for GroupsJson<'_, '_> {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((GroupJson::name().into_owned(), GroupJson::schema()));
        GroupJson::schemas(schemas);
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
    use jiff::tz::TimeZone;

    use super::*;
    use crate::summary::{summarise, testing::*};

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

//! Reading a record: only the fields a summary needs, borrowed, and never failing on a
//! field of an unexpected type (the upstream is not ours to trust).

use std::borrow::Cow;

use jiff::civil::DateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::dimensions::{Dimension, KeyPart};

#[derive(Deserialize, Default)]
pub(super) struct Fields<'a> {
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
    pub(super) destinations: Option<&'a RawValue>,
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
    /// Read only by the `agent` filter, which takes an e-mail as well as an id.
    #[serde(borrow, default)]
    email: Option<&'a RawValue>,
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
pub(super) fn array(raw: Option<&RawValue>) -> Vec<&RawValue> {
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
pub(super) struct Segment<'a> {
    queue: KeyPart<'a>,
    agent: KeyPart<'a>,
    /// Indexed by [`Metric::duration_slot`].
    pub(super) durations: [Option<f64>; 4],
}

impl<'a> Segment<'a> {
    pub(super) fn read(raw: &'a RawValue, wanted: &[bool; 4]) -> Self {
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

    pub(super) fn part(&self, dim: Dimension) -> &KeyPart<'a> {
        match dim {
            Dimension::Queue => &self.queue,
            _ => &self.agent,
        }
    }
}

/// The responding agent of each of a record's segments, as `(agentId, email)`: the agent
/// the `agent` grouping counts a segment under, with the e-mail the `agent` filter also
/// takes. A segment without a responding agent gives nothing.
pub(super) fn responding_agents<'a>(
    f: &Fields<'a>,
) -> impl Iterator<Item = (Option<Cow<'a, str>>, Option<Cow<'a, str>>)> {
    array(f.destinations).into_iter().filter_map(|raw| {
        let d: DestinationFields<'a> = object(Some(raw));
        let a: AgentFields<'a> = object(Some(d.responding_agent?));
        Some((text(a.agent_id), text(a.email)))
    })
}

fn text_part(raw: Option<&RawValue>) -> KeyPart<'_> {
    text(raw).map_or(KeyPart::Missing, KeyPart::Text)
}

/// Fills `out` with the distinct values of a record-level dimension (one or more;
/// [`KeyPart::Missing`] when there are none).
pub(super) fn record_parts<'a>(
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
        // Not a field of the record: the aggregation fills it in from where it came.
        Dimension::Account => KeyPart::Missing,
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

#[cfg(test)]
mod tests {
    use jiff::tz::TimeZone;

    use crate::summary::{Dimension, Metric, summarise, testing::*};

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
}

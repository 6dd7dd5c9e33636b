//! Record filters (pure): `agent`, `direction`, `finalStatus`, `smartStatus` and
//! `disposition` on `/v1/interactions` and the summary, with exactly the meaning of the
//! summary's dimensions of those names — read by the same code ([`super::fields`]).
//!
//! The vendor cannot filter on these, so they are applied to the merged records of the
//! cached windows: they never reach the upstream query or the window key (a filtered query
//! costs no call beyond the unfiltered one, and a second filter over the same range costs
//! none), while they are part of the response-cache key and of the cursor binding
//! ([`RecordFilter::lists`]).
//!
//! Each filter is a list of values, any of which selects a record (several filters must all
//! select it). A value is compared byte for byte with the value the summary would group the
//! record under (`direction` falling back to `customerinfo.Direction`, a record with two
//! dispositions matching either), except that `agent` also takes a responding agent's
//! e-mail, compared without regard to ASCII case. A record whose value is missing (the
//! summary's `null` group) matches no filter on it.

use super::{
    dimensions::{Dimension, KeyPart},
    fields::{Fields, record_parts, responding_agents},
};
use crate::merge::Record;

/// The record filters of a request, each list sorted and de-duplicated (so equal meanings
/// give equal cache keys); all empty selects every record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RecordFilter {
    agent: Vec<String>,
    direction: Vec<String>,
    final_status: Vec<String>,
    smart_status: Vec<String>,
    disposition: Vec<String>,
}

impl RecordFilter {
    /// The query parameters, in the order [`RecordFilter::lists`] gives their values.
    pub const PARAMS: [&'static str; 5] = [
        "agent",
        "direction",
        "finalStatus",
        "smartStatus",
        "disposition",
    ];

    /// A filter of these lists, in the order of [`RecordFilter::PARAMS`].
    pub fn new(lists: [Vec<String>; 5]) -> Self {
        let [
            mut agent,
            mut direction,
            mut final_status,
            mut smart_status,
            mut disposition,
        ] = lists;
        for l in [
            &mut agent,
            &mut direction,
            &mut final_status,
            &mut smart_status,
            &mut disposition,
        ] {
            l.sort_unstable();
            l.dedup();
        }
        RecordFilter {
            agent,
            direction,
            final_status,
            smart_status,
            disposition,
        }
    }

    /// Every list, in the order of [`RecordFilter::PARAMS`]: what keys and cursors encode.
    pub fn lists(&self) -> [&[String]; 5] {
        [
            &self.agent,
            &self.direction,
            &self.final_status,
            &self.smart_status,
            &self.disposition,
        ]
    }

    /// Selects every record.
    pub fn is_empty(&self) -> bool {
        self.lists().iter().all(|l| l.is_empty())
    }

    /// Whether `record` passes every filter.
    pub fn matches(&self, record: &Record) -> bool {
        if self.is_empty() {
            return true;
        }
        let raw = record.raw.get();
        // Not an object: every field is missing, so no filter can select it (as the
        // summary counts it only in `null` groups).
        if !raw.trim_start().starts_with('{') {
            return false;
        }
        let fields: Fields<'_> = serde_json::from_str(raw).unwrap_or_default();
        let mut parts = Vec::new();
        for (dim, wanted) in [
            (Dimension::Direction, &self.direction),
            (Dimension::FinalStatus, &self.final_status),
            (Dimension::SmartStatus, &self.smart_status),
            (Dimension::Disposition, &self.disposition),
        ] {
            if wanted.is_empty() {
                continue;
            }
            record_parts(
                dim,
                &fields,
                &KeyPart::Missing,
                &KeyPart::Missing,
                &mut parts,
            );
            let hit = parts.iter().any(|p| match p {
                KeyPart::Text(t) => wanted.binary_search_by(|w| w.as_str().cmp(t)).is_ok(),
                _ => false,
            });
            if !hit {
                return false;
            }
        }
        self.agent.is_empty()
            || responding_agents(&fields).any(|(id, email)| {
                id.is_some_and(|id| self.agent.binary_search_by(|w| w.as_str().cmp(&id)).is_ok())
                    || email.is_some_and(|e| self.agent.iter().any(|w| w.eq_ignore_ascii_case(&e)))
            })
    }
}

#[cfg(test)]
mod tests {
    use jiff::tz::TimeZone;

    use super::*;
    use crate::summary::{Metric, summarise, testing::*};

    fn filter(param: &str, values: &[&str]) -> RecordFilter {
        let mut lists: [Vec<String>; 5] = Default::default();
        let i = RecordFilter::PARAMS
            .iter()
            .position(|p| *p == param)
            .unwrap();
        lists[i] = values.iter().map(|v| (*v).to_owned()).collect();
        RecordFilter::new(lists)
    }

    fn records() -> Vec<Record> {
        vec![
            rec(CONVERSATION, 0),
            rec(BOT, 0),
            rec("[1,2]", 0),
            rec("null", 0),
            rec(
                r#"{"sessionId":"e1","Direction":"","customerinfo":{"Direction":"Inbound"},
                    "destinations":[{"respondingAgent":{"agentId":"u-z","email":"Zed@Example.com"}}]}"#,
                0,
            ),
        ]
    }

    fn selected(f: &RecordFilter) -> Vec<String> {
        records()
            .iter()
            .filter(|r| f.matches(r))
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r.raw.get()).unwrap()["sessionId"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    }

    /// A filter on one value selects exactly the records the summary counts in that
    /// value's group.
    #[test]
    fn a_filter_selects_what_the_summary_groups_under_its_value() {
        let rs = records();
        let tz = TimeZone::UTC;
        for (param, dim) in [
            ("direction", Dimension::Direction),
            ("finalStatus", Dimension::FinalStatus),
            ("smartStatus", Dimension::SmartStatus),
            ("disposition", Dimension::Disposition),
            ("agent", Dimension::Agent),
        ] {
            let s = summarise(&refs(&rs), &tz, &[dim], &[Metric::Count]);
            for g in &s.groups {
                let Some(value) = g.key[0].label() else {
                    continue;
                };
                let f = filter(param, &[&value]);
                let n = rs.iter().filter(|r| f.matches(r)).count() as u64;
                assert_eq!(n, g.count, "{param}={value}");
            }
        }
    }

    #[test]
    fn values_are_any_of_and_filters_all_of() {
        assert_eq!(selected(&filter("direction", &["Inbound"])), ["c1", "e1"]);
        assert_eq!(selected(&filter("direction", &["Outbound"])), ["b1"]);
        assert_eq!(
            selected(&filter("direction", &["Outbound", "Inbound"])),
            ["c1", "b1", "e1"]
        );
        assert!(
            selected(&filter("direction", &["inbound"])).is_empty(),
            "values are exact"
        );
        assert_eq!(selected(&filter("disposition", &["ESCALATED"])), ["c1"]);
        assert_eq!(selected(&filter("smartStatus", &["RESOLVED"])), ["c1"]);
        assert_eq!(
            selected(&filter("agent", &["u-y"])),
            ["c1"],
            "any segment's agent"
        );
        assert_eq!(
            selected(&filter("agent", &["zed@example.COM"])),
            ["e1"],
            "e-mail, any case"
        );
        assert!(
            selected(&filter("agent", &["U-Y"])).is_empty(),
            "ids are exact"
        );
        let both = RecordFilter::new([
            vec!["u-x".into(), "u-z".into()],
            vec!["Inbound".into()],
            vec![],
            vec!["RESOLVED".into()],
            vec![],
        ]);
        assert_eq!(selected(&both), ["c1"]);
        assert_eq!(selected(&RecordFilter::default()).len(), 5);
    }

    #[test]
    fn equal_meanings_are_equal_filters() {
        let a = RecordFilter::new([
            vec!["b".into(), "a".into(), "a".into()],
            vec![],
            vec![],
            vec![],
            vec![],
        ]);
        let b = RecordFilter::new([vec!["a".into(), "b".into()], vec![], vec![], vec![], vec![]]);
        assert_eq!(a, b);
        assert!(!a.is_empty());
        assert!(RecordFilter::default().is_empty());
    }
}

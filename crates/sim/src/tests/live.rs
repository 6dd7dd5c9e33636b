//! Records that change after the fact ([`Simulator::revise`]) and live mode ([`Live`]):
//! through the router, against the truth and against a simulator left alone.

use std::collections::HashMap;

use serde_json::Value;

use super::*;

/// The fields a revision changes.
const REVISED: [&str; 3] = ["finalStatus", "dispositions", "dispositionRemarks"];

fn everything() -> SimFilter {
    SimFilter {
        selected_fields: all_fields(),
        ..SimFilter::default()
    }
}

/// `t` (Unix seconds) as a body date at `timeZoneOffset` 0.
fn utc_text(t: i64) -> String {
    Timestamp::from_second(t)
        .expect("test time")
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn at(t: i64) -> Timestamp {
    Timestamp::from_second(t).expect("test time")
}

fn id(r: &Value) -> &str {
    r["sessionId"].as_str().expect("sessionId")
}

fn start_of(r: &Value) -> i64 {
    let text = r["sessionStartTime"].as_str().expect("sessionStartTime");
    crate::data::parse_datetime(text).expect("datetime")
}

/// The record without the fields a revision changes.
fn unrevised_part(r: &Value) -> Value {
    let mut r = r.clone();
    if let Value::Object(m) = &mut r {
        for k in REVISED {
            m.remove(k);
        }
    }
    r
}

fn by_id(records: &[Value]) -> HashMap<&str, &Value> {
    records.iter().map(|r| (id(r), r)).collect()
}

/// The revision a record's `dispositions` name (`["Follow-up", "rev <n>"]`), 0 if none.
fn named_revision(r: &Value) -> u32 {
    r["dispositions"][1]
        .as_str()
        .and_then(|s| s.strip_prefix("rev "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn assert_revised(revised: &Value, before: &Value) {
    for k in REVISED {
        assert_ne!(revised.get(k), before.get(k), "{k} of {}", id(before));
    }
    assert_eq!(unrevised_part(revised), unrevised_part(before));
    // The vendor's types: two lists of strings.
    for k in ["dispositions", "dispositionRemarks"] {
        assert!(
            revised[k]
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            "{k} is a list of strings: {}",
            revised[k]
        );
    }
    assert_eq!(revised["sessionId"], before["sessionId"]);
    assert_eq!(revised["sessionStartTime"], before["sessionStartTime"]);
}

#[tokio::test]
async fn revise_changes_three_fields_in_answers_and_truth() {
    let sim = Simulator::new(cfg());
    let plain = Simulator::new(cfg());
    let (from, to) = (ts("2024-09-02T00:00:00Z"), ts("2024-09-04T23:59:59Z"));
    let b = body("2024-09-02 00:00:00", "2024-09-04 23:59:59", 0);
    let before = plain.truth(from, to, 0, &everything());
    // One agent conversation (it has dispositions) and one bot session without finalStatus.
    let agent = before
        .iter()
        .find(|r| r.get("dispositions").is_some())
        .expect("an agent conversation");
    let bot = before
        .iter()
        .find(|r| r.get("finalStatus").is_none())
        .expect("a session without finalStatus");
    assert_eq!(sim.revision(id(agent)), 0);
    assert_eq!(sim.revise(id(agent)), 1);
    assert_eq!(sim.revise(id(bot)), 1);
    assert_eq!(sim.revision(id(agent)), 1);

    let (total, answer) = all_pages(&sim, &b, 100).await;
    let truth = sim.truth(from, to, 0, &everything());
    assert_eq!(answer, truth);
    assert_eq!(total, before.len() as u64);
    let (now, was) = (by_id(&answer), by_id(&before));
    for r in [agent, bot] {
        assert_revised(now[id(r)], r);
    }
    // Every other record is as it was.
    for (k, r) in &now {
        if *k != id(agent) && *k != id(bot) {
            assert_eq!(*r, was[k]);
        }
    }

    // A second revision differs from the first in all three fields.
    assert_eq!(sim.revise(id(agent)), 2);
    let second = sim.truth(from, to, 0, &everything());
    let second = by_id(&second)[id(agent)].clone();
    assert_revised(&second, now[id(agent)]);
    assert_eq!(named_revision(&second), 2);
    let (_, answer) = all_pages(&sim, &b, 100).await;
    assert_eq!(by_id(&answer)[id(agent)], &second);
    assert!(sim.violations().is_empty());
}

#[tokio::test]
async fn records_not_revised_render_byte_for_byte_as_before() {
    let sim = Simulator::new(cfg());
    let plain = Simulator::new(cfg());
    // Revised records on another day, and one that does not exist.
    let other = plain.truth(
        ts("2024-09-10T00:00:00Z"),
        ts("2024-09-10T23:59:59Z"),
        0,
        &everything(),
    );
    for r in other.iter().take(5) {
        sim.revise(id(r));
    }
    sim.revise("no-such-session");
    for offset in [0, -330, 240] {
        let b = body("2024-09-02 00:00:00", "2024-09-04 23:59:59", offset);
        for page in 0..2 {
            let q = format!("offset={page}&limit=100");
            let (a, p) = (post(&sim, &q, &b).await, post(&plain, &q, &b).await);
            assert_eq!(a.status, 200);
            let (a, p) = (a.body.expect("body"), p.body.expect("body"));
            assert!(a.len() > 1000, "{} bytes", a.len());
            assert_eq!(a, p, "offset {offset}, page {page}");
        }
    }
}

#[tokio::test]
async fn revised_records_are_retimed_and_trimmed_like_the_others() {
    let sim = Simulator::new(cfg());
    let plain = Simulator::new(cfg());
    let filter = SimFilter {
        selected_fields: Some(vec!["skills".into()]),
        ..SimFilter::default()
    };
    // 2024-09-26 IST holds sample records as well as generated ones.
    let (from, to) = (ts("2024-09-25T18:30:00Z"), ts("2024-09-26T18:29:59Z"));
    let b = json!({ "startDate": "2024-09-26 00:00:00", "endDate": "2024-09-26 23:59:59",
                    "timeZoneOffset": -330, "selectedFields": ["skills"] });
    let before = plain.truth(from, to, -330, &filter);
    let samples: Vec<Value> = sample_records();
    let sample = samples
        .iter()
        .find(|s| s.get("finalStatus").is_none())
        .expect("a sample without finalStatus");
    let generated = before
        .iter()
        .find(|r| {
            r.get("dispositions").is_some()
                && samples.iter().all(|s| s["sessionId"] != r["sessionId"])
        })
        .expect("a generated agent conversation");
    for r in [sample, generated] {
        assert_eq!(sim.revise(id(r)), 1);
    }

    let (_, answer) = all_pages(&sim, &b, 100).await;
    assert_eq!(answer, sim.truth(from, to, -330, &filter));
    let (now, was) = (by_id(&answer), by_id(&before));
    let utc = plain.truth(from, to, 0, &filter);
    let utc = by_id(&utc);
    for r in [sample, generated] {
        let (revised, unrevised) = (now[id(r)], was[id(r)]);
        assert_revised(revised, unrevised);
        // Same blocks: the optional ones trimmed alike, finalStatus added where absent.
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.retain(|k| k != "finalStatus" && k != "dispositions" && k != "dispositionRemarks");
            k.sort();
            k
        };
        assert_eq!(keys(revised), keys(unrevised));
        assert!(revised.get("skills").is_some());
        assert!(revised.get("customerinfo").is_none());
        // Re-timed to IST, like the unrevised rendering and unlike UTC.
        assert_eq!(revised["sessionStartTime"], unrevised["sessionStartTime"]);
        assert_eq!(revised["sessionEndTime"], unrevised["sessionEndTime"]);
        assert_ne!(revised["sessionStartTime"], utc[id(r)]["sessionStartTime"]);
    }
    // The sample record, revised, is the published one but for the three fields.
    let mut published = sample.clone();
    if let Value::Object(m) = &mut published {
        m.retain(|k, _| {
            !["userleveltags", "sessionleveltags", "customerinfo"].contains(&k.as_str())
        });
    }
    assert_eq!(unrevised_part(now[id(sample)]), unrevised_part(&published));
    assert_eq!(now[id(sample)]["finalStatus"], "Completed");
    assert_eq!(named_revision(now[id(sample)]), 1);
}

/// A live simulator with enough records per minute to see publication happen (on a day
/// that is not dense: a few hours then fit in the 1,100 records one query reaches).
fn live_cfg(live: Live) -> SimConfig {
    assert!(!is_dense_day(jiff::civil::date(2024, 9, 10)));
    SimConfig {
        volume: 20,
        live: Some(live),
        ..cfg()
    }
}

#[tokio::test]
async fn live_mode_publishes_records_only_after_the_delay() {
    let delay = 600;
    let sim = Simulator::new(live_cfg(Live {
        publish_delay: Duration::from_secs(delay),
        revise_share: 0.0,
        ..Live::demo()
    }));
    let plain = Simulator::new(SimConfig {
        live: None,
        ..live_cfg(Live::demo())
    });
    let now = ts("2024-09-10T12:00:00Z").as_second();
    // Two hours before now to one hour after it.
    let (from, to) = (now - 7200, now + 3600);
    let b = body(&utc_text(from), &utc_text(to), 0);
    let all = plain.truth(at(from), at(to), 0, &everything());

    for t in [now, now + 700, now + 3600 + 600] {
        sim.pin_clock(Some(at(t)));
        let expected: Vec<Value> = all
            .iter()
            .filter(|r| start_of(r) <= t - delay as i64)
            .cloned()
            .collect();
        let (total, answer) = all_pages(&sim, &b, 100).await;
        assert_eq!(total, expected.len() as u64, "at {t}");
        // Ids first, for a readable failure.
        let ids = |rs: &[Value]| rs.iter().map(|r| id(r).to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(&answer), ids(&expected), "at {t}");
        assert_eq!(answer, expected, "at {t}");
        assert_eq!(sim.truth(at(from), at(to), 0, &everything()), expected);
    }
    // At `now`, records of the last ten minutes and of the future are out; both exist.
    let recent = all
        .iter()
        .filter(|r| (now - delay as i64 + 1..=now).contains(&start_of(r)))
        .count();
    let future = all.iter().filter(|r| start_of(r) > now).count();
    assert!(
        recent >= 2 && future >= 10,
        "{recent} recent, {future} future"
    );
    // 700 s later, more are out: publication moved on.
    sim.pin_clock(Some(at(now)));
    let early = sim.truth(at(from), at(to), 0, &everything()).len();
    sim.pin_clock(Some(at(now + 700)));
    let later = sim.truth(at(from), at(to), 0, &everything()).len();
    assert!(later > early, "{early} then {later}");
    assert!(sim.violations().is_empty());
}

#[tokio::test]
async fn live_mode_revises_about_the_share_of_old_records() {
    let live = Live {
        publish_delay: Duration::from_secs(60),
        revise_share: 0.5,
        revise_every: Duration::from_secs(300),
        max_revisions: 3,
    };
    let sim = Simulator::new(live_cfg(live.clone()));
    let plain = Simulator::new(SimConfig {
        live: None,
        ..live_cfg(live)
    });
    let now = ts("2024-09-10T12:00:00Z").as_second();
    sim.pin_clock(Some(at(now)));
    // Six hours before now: every age from unpublished to long past the last revision.
    let (from, to) = (now - 6 * 3600, now);
    let b = body(&utc_text(from), &utc_text(to), 0);
    let (_, answer) = all_pages(&sim, &b, 100).await;
    assert_eq!(answer, sim.truth(at(from), at(to), 0, &everything()));
    let before = plain.truth(at(from), at(to), 0, &everything());
    let was = by_id(&before);

    let (mut old, mut revised) = (0, 0);
    for r in &answer {
        let age = now - start_of(r) - 60;
        assert!(age >= 0, "{} published too early", id(r));
        let expected = u32::try_from(age / 300).expect("age").min(3);
        let n = named_revision(r);
        if n == 0 {
            assert_eq!(r, was[id(r)]);
        } else {
            // A picked record has exactly the revisions its age gives.
            assert_eq!(n, expected, "{} at age {age}", id(r));
            assert_revised(r, was[id(r)]);
        }
        if expected > 0 {
            old += 1;
            revised += usize::from(n > 0);
        }
    }
    assert!(old >= 100, "{old} old enough");
    let share = revised as f64 / old as f64;
    assert!((0.35..=0.65).contains(&share), "{revised} of {old} revised");

    // A test revision comes on top of the automatic ones.
    let picked = answer
        .iter()
        .find(|r| named_revision(r) == 3)
        .expect("a record at its last automatic revision");
    assert_eq!(sim.revise(id(picked)), 1);
    let truth = sim.truth(at(from), at(to), 0, &everything());
    let again = by_id(&truth)[id(picked)];
    assert_eq!(named_revision(again), 4);
    assert_revised(again, picked);
    let (_, answer) = all_pages(&sim, &b, 100).await;
    assert_eq!(answer, truth);
}

#[tokio::test]
async fn live_mode_follows_the_wall_clock() {
    // The demo's volume: even a dense day's three hours fit in the 1,100 one query reaches.
    let sim = Simulator::new(SimConfig {
        live: Some(Live::demo()),
        ..cfg()
    });
    let plain = Simulator::new(cfg());
    // An answer and the truth read the clock separately: retry if a second ticked between.
    for _ in 0..5 {
        let now = unix_now().floor() as i64;
        let (from, to) = (now - 3 * 3600, now + 600);
        let b = body(&utc_text(from), &utc_text(to), 0);
        let (_, answer) = all_pages(&sim, &b, 100).await;
        let truth = sim.truth(at(from), at(to), 0, &everything());
        if unix_now().floor() as i64 != now {
            continue;
        }
        assert_eq!(answer, truth);
        let ids: Vec<&str> = answer.iter().map(id).collect();
        let all = plain.truth(at(from), at(to), 0, &everything());
        let expected: Vec<&str> = all
            .iter()
            .filter(|r| start_of(r) <= now - 60)
            .map(id)
            .collect();
        assert_eq!(ids, expected);
        return;
    }
    panic!("the clock ticked during every attempt");
}

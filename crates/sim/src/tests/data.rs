//! The records the simulator serves: the seed records byte for byte, filters and selected
//! fields, dense days, determinism.

use jiff::{Timestamp, civil::Date};
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn seed_records_render_byte_for_byte_at_ist_and_shift_elsewhere() {
    let sim = Simulator::new(cfg());
    let seeds = sample_records();
    assert_eq!(seeds.len(), 5);
    let seed_ids: Vec<&str> = seeds
        .iter()
        .filter_map(|s| s["sessionId"].as_str())
        .collect();

    let a = post(
        &sim,
        "",
        &body("2024-09-26 00:00:00", "2024-09-26 23:59:59", -330),
    )
    .await;
    let raw = a.body.as_ref().expect("body").clone();
    let page = a.json();
    let data = page["data"].as_array().expect("data");
    for seed in &seeds {
        let got = data
            .iter()
            .find(|r| r["sessionId"] == seed["sessionId"])
            .expect("seed record served");
        assert_eq!(got, seed);
        assert_eq!(
            serde_json::to_string(got).ok(),
            serde_json::to_string(seed).ok()
        );
    }
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains(r#""sessionStartTime":"2024-09-26T11:09:54""#));
    assert!(raw.contains(r#""EnterTime":"2024-09-26T20:35:24""#));

    // Offset 0 (UTC) and 300 (UTC-5): every datetime moves, nothing else does.
    let find = |records: &[Value], id: &str| -> Value {
        records
            .iter()
            .find(|r| r["sessionId"] == id)
            .cloned()
            .expect("seed present")
    };
    let day = |offset: i32| {
        sim.truth(
            ts("2024-09-25T00:00:00Z"),
            ts("2024-09-27T23:59:59Z"),
            offset,
            &SimFilter {
                selected_fields: all_fields(),
                ..SimFilter::default()
            },
        )
    };
    let (utc, ny) = (day(0), day(300));
    let first = find(&utc, seed_ids[0]);
    assert_eq!(first["sessionStartTime"], "2024-09-26T05:39:54");
    assert_eq!(first["sessionEndTime"], "2024-09-26T05:39:55");
    assert_eq!(
        find(&ny, seed_ids[0])["sessionStartTime"],
        "2024-09-26T00:39:54"
    );
    let conv = find(&utc, seed_ids[4]);
    assert_eq!(conv["destinations"][0]["EnterTime"], "2024-09-26T15:05:24");
    assert_eq!(
        conv["destinations"][0]["respondingAgent"]["assignedAt"],
        "2024-09-26T15:05:51"
    );
    assert_eq!(conv["metaInfo"], seeds[4]["metaInfo"]);
    let late = find(&ny, seed_ids[1]);
    assert_eq!(late["sessionEndTime"], "2024-09-26T13:49:14");

    // Range bounds are inclusive to the second, in the request's local time.
    let only = |s: &str, e: &str| body(s, e, -330);
    let a = post(
        &sim,
        "",
        &only("2024-09-26 11:09:54", "2024-09-26 11:09:54"),
    )
    .await;
    assert!(
        a.json()["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|r| r["sessionId"] == seed_ids[0]))
    );
    let a = post(
        &sim,
        "",
        &only("2024-09-26 11:09:55", "2024-09-26 12:00:00"),
    )
    .await;
    assert!(
        a.json()["data"]
            .as_array()
            .is_some_and(|d| !d.iter().any(|r| r["sessionId"] == seed_ids[0]))
    );
    let a = post(
        &sim,
        "",
        &only("2024-09-26 10:00:00", "2024-09-26 11:09:53"),
    )
    .await;
    assert!(
        a.json()["data"]
            .as_array()
            .is_some_and(|d| !d.iter().any(|r| r["sessionId"] == seed_ids[0]))
    );
    // Every served record starts inside the local range.
    let a = post(
        &sim,
        "",
        &only("2024-09-26 10:00:00", "2024-09-26 14:00:00"),
    )
    .await;
    for r in a.json()["data"].as_array().into_iter().flatten() {
        let s = r["sessionStartTime"].as_str().unwrap_or_default();
        assert!(
            ("2024-09-26T10:00:00"..="2024-09-26T14:00:00").contains(&s),
            "{s}"
        );
    }
}

#[tokio::test]
async fn filters_and_selected_fields() {
    let sim = Simulator::new(cfg());
    let (s, e) = (ts("2024-09-02T00:00:00Z"), ts("2024-09-08T23:59:59Z"));
    let all = sim.truth(s, e, 0, &SimFilter::default());
    // Without selectedFields none of the four optional blocks is sent.
    for r in &all {
        for f in ALL_FIELDS {
            assert!(r.get(f).is_none(), "{f} leaked");
        }
    }
    let voice = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            channels: vec!["voice".into()],
            ..SimFilter::default()
        },
    );
    assert!(!voice.is_empty() && voice.len() < all.len());
    assert!(voice.iter().all(|r| r["channel"] == "voice"));
    let queue = "qu-5a7f0c2-88d1-4e3a-b9c4-2f6e1d0a9b87";
    let queued = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            queues: vec![queue.into()],
            ..SimFilter::default()
        },
    );
    assert!(!queued.is_empty() && queued.len() < all.len());
    assert!(queued.iter().all(|r| {
        r["destinations"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["queueId"] == queue))
    }));
    let bot = "st-bdc0f473-406d-59bd-bd15-0d1b80af5e11";
    let bots = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            bots: vec![bot.into()],
            ..SimFilter::default()
        },
    );
    assert!(!bots.is_empty() && bots.len() < all.len());
    assert!(bots.iter().all(|r| r["botId"] == bot));
    let both = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            channels: vec!["voice".into(), "chat".into()],
            bots: vec![bot.into()],
            ..SimFilter::default()
        },
    );
    assert!(!both.is_empty());
    assert!(
        both.iter()
            .all(|r| (r["channel"] == "voice" || r["channel"] == "chat") && r["botId"] == bot)
    );

    let skills = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            selected_fields: Some(vec!["skills".into()]),
            ..SimFilter::default()
        },
    );
    assert!(!skills.is_empty());
    assert!(
        skills
            .iter()
            .all(|r| r.get("skills").is_some() && r.get("customerinfo").is_none())
    );

    // The router applies the same filters.
    let mut b = body("2024-09-02 00:00:00", "2024-09-08 23:59:59", 0);
    b["queues"] = json!([queue]);
    b["selectedFields"] = json!(["customerinfo"]);
    let (total, records) = all_pages(&sim, &b, 100).await;
    let expect = sim.truth(
        s,
        e,
        0,
        &SimFilter {
            queues: vec![queue.into()],
            selected_fields: Some(vec!["customerinfo".into()]),
            ..SimFilter::default()
        },
    );
    assert_eq!((total as usize, &records), (expect.len(), &expect));
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r.get("customerinfo").is_some() && r.get("skills").is_none())
    );
    assert_eq!(sim.calls()[0].queues, vec![queue.to_owned()]);
}

#[tokio::test]
async fn dense_days_overflow_one_query_and_normal_days_look_real() {
    let sim = Simulator::new(cfg());
    let dense = (0..40)
        .filter_map(|i| {
            Date::constant(2024, 9, 1)
                .checked_add(jiff::SignedDuration::from_hours(24 * i))
                .ok()
        })
        .find(|d| is_dense_day(*d))
        .expect("a dense day every 17 days");
    let start = jiff::tz::Offset::UTC
        .to_timestamp(dense.to_datetime(jiff::civil::Time::midnight()))
        .expect("utc");
    let day_count = |from: Timestamp| {
        let to = from
            .checked_add(jiff::SignedDuration::from_secs(86_399))
            .expect("in range");
        sim.truth(from, to, 0, &SimFilter::default()).len()
    };
    let n = day_count(start);
    assert!((1_500..=2_500).contains(&n), "dense day has {n}");

    // One query holding the dense day matches more than 11 pages of 100 can reach.
    let d = dense.to_string();
    let a = post(
        &sim,
        "offset=10&limit=100",
        &body(&format!("{d} 00:00:00"), &format!("{d} 23:59:59"), 0),
    )
    .await;
    let v = a.json();
    assert!(v["numResults"].as_u64().is_some_and(|n| n > 1_100));
    assert_eq!(v["data"].as_array().map(Vec::len), Some(100));

    // Ordinary days: 30–80 records, busier in business hours; ~40 % conversations.
    let mut convs = 0;
    let mut total = 0;
    for i in 1..=16 {
        let from = start
            .checked_add(jiff::SignedDuration::from_hours(24 * i))
            .expect("in range");
        let to = from
            .checked_add(jiff::SignedDuration::from_secs(86_399))
            .expect("in range");
        let recs = sim.truth(from, to, 0, &SimFilter::default());
        assert!((25..=85).contains(&recs.len()), "day {i}: {}", recs.len());
        convs += recs
            .iter()
            .filter(|r| r.get("conversationId").is_some())
            .count();
        total += recs.len();
    }
    let share = convs as f64 / total as f64;
    assert!((0.3..=0.5).contains(&share), "{share}");
}

#[test]
fn data_is_deterministic_unique_and_exercises_pass_through() {
    let a = Simulator::new(cfg());
    let b = Simulator::new(cfg());
    let other = Simulator::new(SimConfig { seed: 2, ..cfg() });
    let (s, e) = (ts("2024-10-08T00:00:00Z"), ts("2024-10-14T23:59:59Z"));
    let f = SimFilter {
        selected_fields: all_fields(),
        ..SimFilter::default()
    };
    let week = a.truth(s, e, -330, &f);
    assert_eq!(week, b.truth(s, e, -330, &f));
    assert_ne!(week, other.truth(s, e, -330, &f));

    let mut ids: Vec<&str> = week
        .iter()
        .filter_map(|r| r["sessionId"].as_str())
        .collect();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| {
        id.len() == 24
            && id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }));
    ids.dedup();
    assert_eq!(ids.len(), week.len());

    let text = serde_json::to_string(&week).expect("serializable");
    for needle in [
        "Zoë Ñúñez",
        "山田",
        "x_customField",
        r#"\"KJ\""#,
        r"\\",
        "csatScore",
        "nonRespondingAgents",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from a week of data"
        );
    }
    // Both shapes are present, and bot sessions carry no conversation fields.
    assert!(week.iter().any(|r| r.get("conversationId").is_none()));
    assert!(
        week.iter()
            .filter(|r| r.get("conversationId").is_none())
            .all(|r| r.get("destinations").is_none())
    );
}

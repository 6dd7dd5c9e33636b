//! The dataset is deterministic, shaped like the vendor's, and dense where the tests need it.

use super::*;

#[test]
fn calendar_round_trips_and_matches_jiff() {
    for day in [-800_000, -1, 0, 1, 19_992, 20_000, 2_932_896] {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
        let j = jiff::civil::Date::new(y as i16, m as i8, d as i8).expect("valid date");
        let epoch = jiff::civil::Date::constant(1970, 1, 1);
        assert_eq!(j.duration_since(epoch).as_secs() / 86_400, day);
    }
    assert_eq!(format_datetime(0), "1970-01-01T00:00:00");
    assert_eq!(format_datetime(-1), "1969-12-31T23:59:59");
    assert_eq!(datetime_bytes(days_from_civil(10_000, 1, 1) * 86_400), None);
    assert_eq!(
        format_datetime(days_from_civil(10_000, 1, 1) * 86_400),
        "10000-01-01T00:00:00"
    );
    assert_eq!(parse_datetime("2024-09-26T11:09:54"), Some(1_727_348_994));
    assert_eq!(format_datetime(1_727_348_994), "2024-09-26T11:09:54");
    assert_eq!(parse_datetime("2024-09-26 11:09:54"), None);
    assert_eq!(parse_datetime("2024-13-26T11:09:54"), None);
    assert_eq!(parse_datetime("2024-09-26T11:09:5x"), None);
}

#[test]
fn seeds_convert_to_utc() {
    let s = seeds();
    assert_eq!(s.len(), 5);
    // 2024-09-26T11:09:54 IST = 05:39:54 UTC
    assert_eq!(
        s[0].start,
        parse_datetime("2024-09-26T05:39:54").unwrap_or_default()
    );
    assert_eq!(
        s[4].queues,
        vec!["qu-04e6978-6011-49d6-929d-cd715080xxxx".to_owned()]
    );
}

#[test]
fn skeleton_matches_full_record() {
    let filter = Filter::default();
    let day = days_from_civil(2024, 9, 10) * 86_400;
    for s in matching(7, day, day + 86_399, &filter) {
        let v = build_utc(7, &s);
        assert_eq!(v["sessionId"].as_str().map(str::as_bytes), Some(s.id()));
        assert_eq!(v["channel"].as_str(), Some(s.channel()));
        assert_eq!(v["botId"].as_str(), Some(s.bot()));
        assert_eq!(
            v["sessionStartTime"].as_str().and_then(parse_datetime),
            Some(s.start())
        );
        let queues: Vec<&str> = v["destinations"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x["queueId"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(queues, s.queue_ids().collect::<Vec<_>>());
        // Every time inside the record is after the session started.
        let mut times = Vec::new();
        collect_times(&v, &mut times);
        assert!(times.iter().all(|t| *t >= s.start()), "{v}");
    }
}

fn collect_times(v: &Value, out: &mut Vec<i64>) {
    match v {
        Value::String(s) => out.extend(parse_datetime(s)),
        Value::Array(a) => a.iter().for_each(|x| collect_times(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_times(x, out)),
        _ => {}
    }
}

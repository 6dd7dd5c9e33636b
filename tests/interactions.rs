//! `GET /v1/interactions` end to end against the simulator: every record, once, unchanged.

mod common;

use common::*;
use jiff::{civil::Date, tz::TimeZone};
use serde_json::Value;

fn data(body: &Value) -> Vec<Value> {
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn thirty_days_in_utc_return_exactly_the_simulators_records() {
    let h = Harness::start(Opts::default()).await;
    let body = h
        .json("/v1/interactions?from=2024-09-01&to=2024-09-30&limit=10000")
        .await;
    let truth = h.sim.truth(
        at("2024-09-01T00:00:00", "UTC"),
        at("2024-09-30T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert!(truth.len() > 1000, "a realistic month: {}", truth.len());
    let got = data(&body);
    assert_same_records(&got, &truth);
    assert_sorted_by_start(&got);
    let meta = &body["meta"];
    assert_eq!(meta["total"], truth.len());
    assert_eq!(meta["returned"], truth.len());
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["next_cursor"], Value::Null);
    assert_eq!(meta["from"], "2024-09-01T00:00:00+00:00");
    assert_eq!(meta["to"], "2024-09-30T23:59:59+00:00");
    assert_eq!(meta["windows"], 6);
    assert_eq!(meta["cache"], "MISS");
    assert_eq!(meta["upstream_calls"].as_u64().unwrap() as usize, h.calls());
    h.finish();
}

#[tokio::test]
async fn new_york_across_the_fall_back_keeps_wall_clock_times_and_never_straddles() {
    let h = Harness::start(Opts::default()).await;
    let body = h
        .json("/v1/interactions?from=2024-10-30&to=2024-11-06&tz=America/New_York&limit=10000")
        .await;
    let change = at("2024-11-03T01:00:00", "America/New_York") // 01:00 EDT, the first of the two
        .checked_add(jiff::SignedDuration::from_hours(1))
        .unwrap();
    let before_end = change
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    let mut truth = h.sim.truth(
        at("2024-10-30T00:00:00", "America/New_York"),
        before_end,
        240,
        &all_fields(),
    );
    truth.extend(h.sim.truth(
        change,
        at("2024-11-06T23:59:59", "America/New_York"),
        300,
        &all_fields(),
    ));
    assert_same_records(&data(&body), &truth);
    // Order is by instant, not wall-clock text: every record of the EDT side comes before
    // every record of the EST side, although the 01:xx hour reads the same on both.
    let edt_side: std::collections::HashSet<_> = h
        .sim
        .truth(
            at("2024-10-30T00:00:00", "America/New_York"),
            before_end,
            240,
            &all_fields(),
        )
        .iter()
        .map(id)
        .collect();
    let got = data(&body);
    let last_edt = got.iter().rposition(|r| edt_side.contains(&id(r))).unwrap();
    let first_est = got.iter().position(|r| !edt_side.contains(&id(r))).unwrap();
    assert_eq!(
        first_est,
        last_edt + 1,
        "EDT records all precede EST records"
    );
    let ny = TimeZone::get("America/New_York").unwrap();
    let mut checked = 0;
    for call in h.sim.calls() {
        let (Some(s), Some(e), Some(off)) = (call.start_utc, call.end_utc, call.offset_minutes)
        else {
            continue;
        };
        checked += 1;
        let (os, oe) = (ny.to_offset(s).seconds(), ny.to_offset(e).seconds());
        assert_eq!(
            os, oe,
            "an upstream call straddles the DST change: {s} .. {e}"
        );
        assert_eq!(
            -off * 60,
            os,
            "the call's timeZoneOffset matches New York at that time"
        );
    }
    assert!(
        checked >= 3,
        "both sides of the change were fetched ({checked} calls checked)"
    );
    h.finish();
}

#[tokio::test]
async fn a_to_inside_the_repeated_hour_keeps_the_repeated_hour() {
    let h = Harness::start(Opts::default()).await;
    // 01:30 happens twice in New York on 2024-11-03: at 05:30Z (EDT) and at 06:30Z (EST).
    // An inclusive `to` of 01:30 (01:30:59) reaches the second one.
    let body = h
        .json("/v1/interactions?from=2024-11-03T00:00&to=2024-11-03T01:30&tz=America/New_York&limit=10000")
        .await;
    assert_eq!(body["meta"]["from"], "2024-11-03T00:00:00-04:00");
    assert_eq!(body["meta"]["to"], "2024-11-03T01:30:59-05:00");
    // The simulator's data has a record in the repeated hour at 01:55 EST (06:55Z): a `to`
    // of 01:59 must return it, with every record of the first 01:xx hour (EDT).
    let body = h
        .json("/v1/interactions?from=2024-11-03T00:00&to=2024-11-03T01:59&tz=America/New_York&limit=10000")
        .await;
    assert_eq!(body["meta"]["to"], "2024-11-03T01:59:59-05:00");
    let ts = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let mut truth = h.sim.truth(
        ts("2024-11-03T04:00:00Z"),
        ts("2024-11-03T05:59:59Z"),
        240,
        &all_fields(),
    );
    let repeated = h.sim.truth(
        ts("2024-11-03T06:00:00Z"),
        ts("2024-11-03T06:59:59Z"),
        300,
        &all_fields(),
    );
    assert!(
        !repeated.is_empty(),
        "the simulator has records in the repeated hour"
    );
    truth.extend(repeated);
    assert_same_records(&data(&body), &truth);
    h.finish();
}

#[tokio::test]
async fn a_week_with_more_than_1100_records_comes_back_whole() {
    let h = Harness::start(Opts::default()).await;
    let mut day = Date::constant(2024, 9, 1);
    while !kore_sim::is_dense_day(day) {
        day = day.tomorrow().unwrap();
    }
    let from = day.yesterday().unwrap();
    let to = day.checked_add(jiff::Span::new().days(4)).unwrap();
    let body = h
        .json(&format!("/v1/interactions?from={from}&to={to}&limit=10000"))
        .await;
    let truth = h.sim.truth(
        at(&format!("{from}T00:00:00"), "UTC"),
        at(&format!("{to}T23:59:59"), "UTC"),
        0,
        &all_fields(),
    );
    assert!(
        truth.len() > 1100,
        "the dense stretch holds {} records",
        truth.len()
    );
    assert_same_records(&data(&body), &truth);
    assert_eq!(body["meta"]["complete"], true);
    let calls = h.sim.calls();
    assert!(!calls.is_empty());
    assert!(
        calls
            .iter()
            .all(|c| c.page.is_some_and(|p| p <= 10) && c.limit.is_some_and(|l| l <= 100))
    );
    // Whole only because the window was split: one query reaches at most 11 pages.
    let ranges: std::collections::HashSet<_> =
        calls.iter().map(|c| (c.start_utc, c.end_utc)).collect();
    assert!(
        ranges.len() > body["meta"]["windows"].as_u64().unwrap() as usize,
        "the dense window was split"
    );
    h.finish();
}

#[tokio::test]
async fn filters_and_fields_reach_the_upstream() {
    let h = Harness::start(Opts::default()).await;
    let (from, to) = (
        at("2024-09-02T00:00:00", "UTC"),
        at("2024-09-15T23:59:59", "UTC"),
    );
    let body = h.json("/v1/interactions?from=2024-09-02&to=2024-09-15&channels=voice&fields=skills&limit=10000").await;
    let truth = h
        .sim
        .truth(from, to, 0, &filter(&["voice"], &[], &[], &["skills"]));
    assert!(!truth.is_empty());
    assert_same_records(&data(&body), &truth);
    for r in data(&body) {
        assert_eq!(r["channel"], "voice");
        assert!(
            r.get("customerinfo").is_none() && r.get("userleveltags").is_none(),
            "unselected blocks are absent"
        );
    }
    // A queue and a bot taken from the data, repeated-parameter form.
    let everything = h.sim.truth(from, to, 0, &all_fields());
    let queue = everything
        .iter()
        .find_map(|r| {
            r["destinations"]
                .as_array()
                .and_then(|d| d.first())
                .and_then(|d| d["queueId"].as_str())
        })
        .expect("some conversation has a queue")
        .to_owned();
    let bot = everything[0]["botId"].as_str().unwrap().to_owned();
    let body = h.json(&format!("/v1/interactions?from=2024-09-02&to=2024-09-15&queues={queue}&bots={bot}&bots={bot}&limit=10000")).await;
    let truth = h
        .sim
        .truth(from, to, 0, &filter(&[], &[&queue], &[&bot], &ALL_FIELDS));
    assert!(!truth.is_empty());
    assert_same_records(&data(&body), &truth);
    h.finish();
}

#[tokio::test]
async fn the_seed_sample_records_come_back_value_for_value() {
    let h = Harness::start(Opts::default()).await;
    let body = h
        .json("/v1/interactions?from=2024-09-26&to=2024-09-27&tz=Asia/Kolkata&limit=10000")
        .await;
    let got = data(&body);
    let seed: Vec<Value> =
        serde_json::from_str(include_str!("../crates/sim/src/sample-records.json"))
            .expect("seed file is JSON");
    assert_eq!(seed.len(), 5);
    for s in &seed {
        let found = got
            .iter()
            .find(|g| id(g) == id(s))
            .unwrap_or_else(|| panic!("seed record {:?} missing", id(s)));
        assert_eq!(found, s, "seed record {:?} changed on the way", id(s));
    }
    h.finish();
}

#[tokio::test]
async fn malformed_requests_get_a_problem_json_4xx() {
    let h = Harness::start(Opts::default()).await;
    let bad = [
        "/v1/interactions",
        "/v1/interactions?from=2024-09-01",
        "/v1/interactions?to=2024-09-01",
        "/v1/interactions?from=2024-09-02&to=2024-09-01",
        "/v1/interactions?from=2024-13-01&to=2024-13-02",
        "/v1/interactions?from=2024-02-30&to=2024-03-01",
        "/v1/interactions?from=01/09/2024&to=2024-09-02",
        "/v1/interactions?from=2024-09-01T24:00&to=2024-09-02",
        "/v1/interactions?from=2024-09-01&to=2024-09-02T10:00:00%2B05:30",
        "/v1/interactions?from=2024-01-01&to=2024-12-31",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&tz=Nowhere/Land",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&tz=%2B25:00",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&fields=skills,secrets",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&format=xml",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&limit=-5",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&limit=99999999999999999999999",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&cursor=not-a-cursor",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&from=2024-09-01",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&host=evil.example",
        "/v1/interactions?from=%FF%FE&to=2024-09-02",
        "/v1/interactions?from=2024-09-01&to=2024-09-02&channels=%00",
    ];
    for path in bad {
        let resp = h.get(path).await;
        let status = resp.status().as_u16();
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        assert!((400..500).contains(&status), "{path}: {status}");
        assert_eq!(ctype, "application/problem+json", "{path}");
        assert_eq!(body["status"], status, "{path}");
        for f in ["type", "title", "detail"] {
            assert!(
                body[f].as_str().is_some_and(|s| !s.is_empty()),
                "{path}: no {f} in {body}"
            );
        }
    }
    assert_eq!(h.calls(), 0, "no malformed request reached the upstream");
    h.finish();
}

#[tokio::test]
async fn keys_are_required_and_checked() {
    let h = Harness::start(Opts::default()).await;
    let path = "/v1/interactions?from=2024-09-01&to=2024-09-01";
    assert_eq!(h.get_with(path, None).await.status(), 401);
    assert_eq!(h.get_with(path, Some("wrong-key-123")).await.status(), 401);
    let via_header = h
        .http
        .get(format!("{}{path}", h.base))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 200);
    assert_eq!(
        h.get_with("/v1/cache", Some(KEY)).await.status(),
        403,
        "a team key is not an admin key"
    );
    assert_eq!(h.get_with("/v1/cache", Some(ADMIN_KEY)).await.status(), 200);
    assert_eq!(h.get_with("/healthz", None).await.status(), 200);
    let nf = h.get_with("/nope", None).await;
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.headers()["content-type"], "application/problem+json");
    h.finish();
}

#[tokio::test]
async fn cursor_pages_concatenate_to_the_full_list() {
    let h = Harness::start(Opts::default()).await;
    let base = "/v1/interactions?from=2024-09-01&to=2024-09-20&tz=Europe/London";
    let full = data(&h.json(&format!("{base}&limit=10000")).await);
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}&limit=137&cursor={c}"),
            None => format!("{base}&limit=137"),
        };
        let body = h.json(&url).await;
        paged.extend(data(&body));
        pages += 1;
        match body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 1000);
    }
    assert_eq!(paged, full, "pages concatenate to the same list, in order");
    assert_eq!(pages, full.len().div_ceil(137));
    // A cursor from another query is refused.
    let other = h
        .json("/v1/interactions?from=2024-09-01&to=2024-09-21&limit=10")
        .await;
    let foreign = other["meta"]["next_cursor"].as_str().unwrap();
    let resp = h.get(&format!("{base}&limit=10&cursor={foreign}")).await;
    assert_eq!(resp.status(), 400);
    h.finish();
}

/// The `fields` values the published OpenAPI document allows (an array of its enum, at least
/// one item, comma-separated) are exactly the ones both data routes accept.
#[tokio::test]
async fn fields_accepts_whatever_the_schema_allows_on_both_routes() {
    let doc: Value = serde_json::from_str(kore_gateway::api::docs::OPENAPI_JSON).unwrap();
    let h = Harness::start(Opts::default()).await;
    for route in ["/v1/interactions", "/v1/interactions/summary"] {
        let param = doc["paths"][route]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "fields")
            .unwrap()
            .clone();
        let schema = &param["schema"];
        assert_eq!(schema["type"], "array", "{route}: {param}");
        assert_eq!(schema["minItems"], 1, "{route}: {param}");
        assert_eq!(
            (&param["style"], &param["explode"]),
            (&Value::from("form"), &Value::from(false)),
            "{route}: comma-separated"
        );
        let names: Vec<&str> = schema["items"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{route}: {names:?}");
        // Every non-empty subset, in schema order, plus a repeat (the schema allows one).
        let mut values: Vec<String> = (1u32..16)
            .map(|mask| {
                (0..4)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| names[i])
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        values.push(format!("{0},{0}", names[0]));
        for v in &values {
            let r = h
                .get(&format!("{route}?from=2024-09-26&to=2024-09-26&fields={v}"))
                .await;
            let status = r.status();
            assert_eq!(
                status,
                200,
                "{route}?fields={v}: {}",
                r.text().await.unwrap()
            );
        }
        // What the schema forbids (no items, a name not in the enum) is a 400 naming `fields`.
        for bad in ["", "0", "bogus", "skills,0"] {
            let r = h
                .get(&format!(
                    "{route}?from=2024-09-26&to=2024-09-26&fields={bad}"
                ))
                .await;
            assert_eq!(r.status(), 400, "{route}?fields={bad}");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["param"], "fields", "{route}?fields={bad}: {p}");
        }
    }
    h.finish();
}

/// `gateway_export_spilled_bytes_total` as `/metrics` reports it now (0 before the first).
async fn spilled_bytes(h: &Harness) -> f64 {
    let text = h.get_with("/metrics", None).await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("gateway_export_spilled_bytes_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// An export far larger than the memory one request may hold (a small cache: 256 KiB) goes
/// out exact — every record once, in order, across a DST change — with the part over that
/// share buffered in an unnamed temporary file in CACHE_DIR that leaves nothing behind.
#[tokio::test]
async fn an_export_larger_than_its_memory_share_is_exact_and_leaves_no_file() {
    let dir = std::env::temp_dir().join(format!("kore-export-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cache = Opts::default().cache;
    cache.max_bytes = 1 << 20;
    let h = Harness::start(Opts {
        cache,
        cache_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before_files = listing();
    let tz = "America/New_York";
    let truth = truth_in_zone(
        &h.sim,
        at("2024-10-01T00:00:00", tz),
        at("2024-11-30T23:59:59", tz),
        tz,
        &all_fields(),
    );
    assert!(truth.len() > 5000, "two busy months: {}", truth.len());
    let path = format!("/v1/interactions?from=2024-10-01&to=2024-11-30&tz={tz}");

    for round in 0..2 {
        let before = spilled_bytes(&h).await;
        let resp = h.get(&format!("{path}&format=ndjson")).await;
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.headers()["x-complete"], "true");
        let body = resp.text().await.unwrap();
        let got: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_same_records(&got, &truth);
        assert_sorted_by_start(&got);
        let spilled = spilled_bytes(&h).await - before;
        assert!(
            spilled >= (body.len() - (256 << 10)) as f64,
            "round {round}: {spilled} of {} bytes went to the file",
            body.len()
        );
    }

    let csv = h.get(&format!("{path}&format=csv")).await;
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let ids: Vec<String> = rows
        .records()
        .map(|r| r.unwrap().get(0).unwrap().to_owned())
        .collect();
    let header = rows.headers().unwrap().clone();
    assert_eq!(header.get(0), Some("sessionId"), "{header:?}");
    let truth_ids: Vec<String> = truth
        .iter()
        .map(|r| r["sessionId"].as_str().unwrap().to_owned())
        .collect();
    let (mut a, mut b) = (ids.clone(), truth_ids);
    a.sort();
    b.sort();
    assert_eq!(a, b, "the CSV rows are the records, once each");

    assert_eq!(
        listing(),
        before_files,
        "no spool file is left in CACHE_DIR"
    );
    h.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

//! `GET /v1/interactions/summary` end to end against the simulator: every figure is
//! checked against one computed here, independently, from the raw records (as
//! `/v1/interactions` returns them, or as the simulator says they are).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use jiff::{Timestamp, civil::Date, tz::TimeZone};
use serde_json::Value;

/// A group's key as label strings in `group_by` order (`None` for a missing value).
type Key = Vec<Option<String>>;

fn data(body: &Value) -> Vec<Value> {
    body["data"].as_array().unwrap().clone()
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// `group key → group` of a summary answer, checking each key has the dimensions asked for
/// (`Value` sorts object members, so their order is checked on the text instead).
fn groups_by_key(body: &Value, dims: &[&str]) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    for g in body["groups"].as_array().unwrap() {
        let key_obj = g["key"].as_object().unwrap();
        assert_eq!(key_obj.len(), dims.len(), "one key member per dimension");
        let key: Key = dims.iter().map(|d| str_of(&key_obj[*d])).collect();
        assert!(out.insert(key, g.clone()).is_none(), "a key appears twice");
    }
    out
}

fn counts(groups: &BTreeMap<Key, Value>) -> BTreeMap<Key, u64> {
    groups
        .iter()
        .map(|(k, g)| (k.clone(), g["count"].as_u64().unwrap()))
        .collect()
}

/// The segments (`destinations[]`) of a raw record.
fn segments(r: &Value) -> Vec<&Value> {
    r["destinations"]
        .as_array()
        .map(|d| d.iter().collect())
        .unwrap_or_default()
}

/// The values of one grouping for one raw record, by the documented meaning, written
/// here from scratch. Time dimensions are read off the record's local text, which is right
/// for a fixed-offset zone (the one the tests below use them with).
fn values_of(r: &Value, dim: &str) -> BTreeSet<Option<String>> {
    let one = |v: Option<String>| BTreeSet::from([v]);
    let start = r["sessionStartTime"].as_str();
    match dim {
        "day" => one(start.map(|s| s[..10].to_owned())),
        "channel" => one(str_of(&r["channel"])),
        "bot" => one(str_of(&r["botId"])),
        "finalStatus" => one(str_of(&r["finalStatus"])),
        "smartStatus" => one(str_of(&r["smartStatus"])),
        "direction" => one(r["Direction"]
            .as_str()
            .filter(|d| !d.is_empty())
            .or_else(|| r["customerinfo"]["Direction"].as_str())
            .filter(|d| !d.is_empty())
            .map(str::to_owned)),
        "disposition" => {
            let set: BTreeSet<_> = r["dispositions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(|s| Some(s.to_owned())))
                .collect();
            if set.is_empty() { one(None) } else { set }
        }
        "queue" | "agent" => {
            let segs = segments(r);
            if segs.is_empty() {
                return one(None);
            }
            segs.iter()
                .map(|s| {
                    if dim == "queue" {
                        str_of(&s["queueId"])
                    } else {
                        str_of(&s["respondingAgent"]["agentId"])
                    }
                })
                .collect()
        }
        other => panic!("no independent reading of {other}"),
    }
}

/// Independent counts: each record once in every combination of its values. (Queue and
/// agent are never grouped together below, so their cross product is exact.)
fn expected_counts(records: &[Value], dims: &[&str]) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for r in records {
        let mut keys: Vec<Key> = vec![Vec::new()];
        for d in dims {
            let vals = values_of(r, d);
            keys = keys
                .into_iter()
                .flat_map(|k| {
                    vals.iter().map(move |v| {
                        let mut k = k.clone();
                        k.push(v.clone());
                        k
                    })
                })
                .collect();
        }
        for k in keys {
            *out.entry(k).or_insert(0) += 1;
        }
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[f64], pct: usize) -> f64 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn civil_secs(s: &str) -> i64 {
    let dt: jiff::civil::DateTime = s.parse().unwrap();
    jiff::tz::Offset::UTC.to_timestamp(dt).unwrap().as_second()
}

#[tokio::test]
async fn summaries_match_counts_computed_from_the_raw_records() {
    let h = Harness::start(Opts::default()).await;
    let range = "from=2024-09-02&to=2024-09-15&tz=Asia/Kolkata";
    let raw = data(
        &h.json(&format!("/v1/interactions?{range}&limit=10000"))
            .await,
    );
    assert!(raw.len() > 500, "two weeks of records: {}", raw.len());

    let groupings: [&[&str]; 7] = [
        &["day", "channel"],
        &["queue"],
        &["agent", "finalStatus"],
        &["direction", "disposition", "bot"],
        &["smartStatus"],
        &["channel", "queue", "day"],
        &[],
    ];
    for dims in groupings {
        let url = format!(
            "/v1/interactions/summary?{range}&group_by={}",
            dims.join(",")
        );
        let resp = h.get(&url).await;
        assert_eq!(resp.status(), 200, "{url}");
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        if let Some(first) = dims.first() {
            let members: Vec<String> = dims.iter().map(|d| format!("\"{d}\":")).collect();
            let at: Vec<usize> = members
                .iter()
                .map(|m| text.find(m.as_str()).unwrap())
                .collect();
            assert!(at.is_sorted(), "key members in group_by order: {text:.200}");
            assert!(text.starts_with(&format!("{{\"groups\":[{{\"key\":{{\"{first}\":")));
        }
        let got = groups_by_key(&body, dims);
        let want = expected_counts(&raw, dims);
        assert_eq!(counts(&got), want, "group_by={dims:?}");
        assert_eq!(body["meta"]["total"], raw.len(), "group_by={dims:?}");
        assert_eq!(body["meta"]["groups"], want.len(), "group_by={dims:?}");
        assert_eq!(body["meta"]["complete"], true);
        // Sorted by key, a missing value after every value.
        let order: Vec<Key> = body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| dims.iter().map(|d| str_of(&g["key"][*d])).collect())
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        assert_eq!(order, sorted, "group_by={dims:?} is sorted by key");
    }
    // Partitioning dimensions add up to the total; multi-valued ones at least reach it.
    let by_channel = h
        .json(&format!(
            "/v1/interactions/summary?{range}&group_by=channel"
        ))
        .await;
    let sum: u64 = by_channel["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["count"].as_u64().unwrap())
        .sum();
    assert_eq!(sum as usize, raw.len());

    // Durations per queue: every segment's own values, statistics done here by hand.
    let body = h
        .json(&format!(
            "/v1/interactions/summary?{range}&group_by=queue&metrics=count,interactionDuration,afterCallWorkDuration,queueWait"
        ))
        .await;
    let got = groups_by_key(&body, &["queue"]);
    let mut want: BTreeMap<Option<String>, [Vec<f64>; 3]> = BTreeMap::new();
    for r in &raw {
        for s in segments(r) {
            let e = want.entry(str_of(&s["queueId"])).or_default();
            let agent = &s["respondingAgent"];
            if let Some(d) = agent["interactionDuration"].as_f64() {
                e[0].push(d);
            }
            if let Some(d) = agent["afterCallWorkDuration"].as_f64() {
                e[1].push(d);
            }
            if let (Some(a), Some(b)) = (s["EnterTime"].as_str(), agent["assignedAt"].as_str()) {
                e[2].push((civil_secs(b) - civil_secs(a)) as f64);
            }
        }
    }
    let mut checked = 0;
    for (queue, lists) in want {
        let g = &got[&vec![queue.clone()]];
        for (name, mut values) in ["interactionDuration", "afterCallWorkDuration", "queueWait"]
            .into_iter()
            .zip(lists)
        {
            values.sort_by(f64::total_cmp);
            let stats = &g[name];
            assert_eq!(stats["count"], values.len(), "{queue:?} {name}");
            if values.is_empty() {
                assert_eq!(stats["mean"], Value::Null);
                continue;
            }
            let sum: f64 = values.iter().sum();
            assert_eq!(stats["sum"].as_f64().unwrap(), sum, "{queue:?} {name}");
            let mean = stats["mean"].as_f64().unwrap();
            assert!((mean - sum / values.len() as f64).abs() < 1e-9);
            assert_eq!(stats["p50"].as_f64().unwrap(), nearest_rank(&values, 50));
            assert_eq!(stats["p90"].as_f64().unwrap(), nearest_rank(&values, 90));
            assert_eq!(stats["max"].as_f64().unwrap(), *values.last().unwrap());
            checked += 1;
        }
    }
    assert!(
        checked >= 12,
        "every queue has answered segments ({checked})"
    );
    h.finish();
}

/// The real hours of the local day `date` in New York: (label, first instant, offset in
/// seconds), computed with jiff alone.
fn local_hours(date: &str) -> Vec<(String, Timestamp, i32)> {
    let tz = TimeZone::get("America/New_York").unwrap();
    let d: Date = date.parse().unwrap();
    let midnight = |d: Date| {
        tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .unwrap()
    };
    let (start, end) = (midnight(d), midnight(d.tomorrow().unwrap()));
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        let off = tz.to_offset(t).seconds();
        let local = tz.to_datetime(t);
        let sign = if off < 0 { '-' } else { '+' };
        let abs = off.unsigned_abs();
        out.push((
            format!(
                "{}T{:02}:00{sign}{:02}:{:02}",
                local.date(),
                local.hour(),
                abs / 3600,
                (abs % 3600) / 60
            ),
            t,
            off,
        ));
        t = t.checked_add(jiff::SignedDuration::from_hours(1)).unwrap();
    }
    out
}

#[tokio::test]
async fn hour_buckets_follow_new_yorks_23_and_25_hour_days() {
    let h = Harness::start(Opts::default()).await;
    // The two days of the issue, and two more from the same simulator: 2012-03-11 holds
    // records in every one of its 23 hours, 2025-11-02 in both of its 01:00 hours. (No
    // fall-back day of the simulated data has records in all 25: its evenings are quiet.)
    for (date, hours) in [
        ("2024-03-10", 23),
        ("2024-11-03", 25),
        ("2012-03-11", 23),
        ("2025-11-02", 25),
    ] {
        let real = local_hours(date);
        assert_eq!(real.len(), hours, "{date} has {hours} hours");
        // Ground truth per real hour, straight from the simulator at that hour's offset,
        // in the order the hours happen.
        let want: Vec<(String, u64)> = real
            .iter()
            .map(|(label, start, off)| {
                let end = start
                    .checked_add(jiff::SignedDuration::from_secs(3599))
                    .unwrap();
                let n = h.sim.truth(*start, end, -off / 60, &all_fields()).len() as u64;
                (label.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let body = h
            .json(&format!(
                "/v1/interactions/summary?from={date}&to={date}&tz=America/New_York&group_by=hour"
            ))
            .await;
        let got: Vec<(String, u64)> = body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["key"]["hour"].as_str().unwrap().to_owned(),
                    g["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{date}: buckets, counts and their order");
        let distinct: BTreeSet<&String> = got.iter().map(|(l, _)| l).collect();
        assert_eq!(distinct.len(), got.len());
        match date {
            "2012-03-11" => assert_eq!(got.len(), 23, "every hour of the short day"),
            "2025-11-02" => {
                let i = got
                    .iter()
                    .position(|(l, _)| l == "2025-11-02T01:00-04:00")
                    .expect("the first 01:00");
                assert_eq!(got[i + 1].0, "2025-11-02T01:00-05:00", "then the second");
            }
            _ => {}
        }
        // One day bucket holds them all.
        let day = h
            .json(&format!(
                "/v1/interactions/summary?from={date}&to={date}&tz=America/New_York&group_by=day"
            ))
            .await;
        assert_eq!(day["groups"].as_array().unwrap().len(), 1);
        assert_eq!(day["groups"][0]["key"]["day"], date);
        assert_eq!(
            day["groups"][0]["count"],
            want.iter().map(|(_, n)| n).sum::<u64>()
        );
    }
    h.finish();
}

#[tokio::test]
async fn a_summary_of_cached_windows_makes_no_upstream_calls() {
    let h = Harness::start(Opts::default()).await;
    let range = "from=2024-09-01&to=2024-09-30&tz=America/New_York";
    let raw = h
        .json(&format!("/v1/interactions?{range}&limit=10000"))
        .await;
    let fetched = h.calls();
    assert!(fetched > 0);

    let resp = h
        .get(&format!(
            "/v1/interactions/summary?{range}&group_by=day&metrics=count,interactionDuration,firstResponseDuration,afterCallWorkDuration,queueWait"
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(h.calls(), fetched, "the summary made no upstream call");
    let meta = &body["meta"];
    assert_eq!(meta["upstream_calls"], 0);
    assert_eq!(meta["cache"], "HIT");
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["stale"], false);
    assert_eq!(meta["warnings"], serde_json::json!([]));
    assert_eq!(meta["windows"], raw["meta"]["windows"]);
    assert_eq!(meta["total"], raw["meta"]["total"]);
    assert_eq!(meta["from"], "2024-09-01T00:00:00-04:00");
    assert_eq!(meta["tz"], "America/New_York");
    let groups = body["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 30, "one bucket per day of September");
    let sum: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, raw["meta"]["total"].as_u64().unwrap());
    for g in groups {
        for m in [
            "interactionDuration",
            "firstResponseDuration",
            "afterCallWorkDuration",
            "queueWait",
        ] {
            assert!(g[m]["count"].as_u64().is_some(), "{m} in {g}");
        }
    }

    // A range nobody asked for yet: a miss, whose calls are all accounted for, and then
    // a hit for the records too.
    let other = "from=2024-10-01&to=2024-10-03&tz=America/New_York";
    let before = h.calls();
    let miss = h
        .json(&format!(
            "/v1/interactions/summary?{other}&group_by=channel"
        ))
        .await;
    assert_eq!(miss["meta"]["cache"], "MISS");
    assert_eq!(
        miss["meta"]["upstream_calls"].as_u64().unwrap() as usize,
        h.calls() - before
    );
    let after = h.calls();
    let records = h
        .json(&format!("/v1/interactions?{other}&limit=10000"))
        .await;
    assert_eq!(
        h.calls(),
        after,
        "the records come from the summary's windows"
    );
    assert_eq!(records["meta"]["total"], miss["meta"]["total"]);
    h.finish();
}

#[tokio::test]
async fn csv_has_a_stable_header_and_one_row_per_group() {
    let h = Harness::start(Opts::default()).await;
    let q = "from=2024-09-02&to=2024-09-08&group_by=day,queue&metrics=count,interactionDuration";
    let json = h.json(&format!("/v1/interactions/summary?{q}")).await;
    let resp = h
        .get(&format!("/v1/interactions/summary?{q}&format=csv"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(resp.headers()["x-cache"], "HIT");
    let text = resp.text().await.unwrap();
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        [
            "day",
            "queue",
            "count",
            "interactionDuration.count",
            "interactionDuration.sum",
            "interactionDuration.mean",
            "interactionDuration.p50",
            "interactionDuration.p90",
            "interactionDuration.max"
        ]
    );
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(rows.len(), groups.len(), "one row per group");
    for (row, g) in rows.iter().zip(groups) {
        assert_eq!(&row[0], g["key"]["day"].as_str().unwrap());
        assert_eq!(&row[1], g["key"]["queue"].as_str().unwrap_or("(none)"));
        assert_eq!(row[2].parse::<u64>().unwrap(), g["count"].as_u64().unwrap());
        assert_eq!(
            row[3].parse::<u64>().unwrap(),
            g["interactionDuration"]["count"].as_u64().unwrap()
        );
    }
    // Accept works too, and the header does not depend on the data: an empty range still
    // has it.
    let via_accept = h
        .http
        .get(format!("{}/v1/interactions/summary?{q}", h.base))
        .bearer_auth(KEY)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(via_accept.status(), 200);
    assert_eq!(via_accept.text().await.unwrap(), text);
    let empty = h
        .get("/v1/interactions/summary?from=2024-09-02T10:00:00&to=2024-09-02T10:00:00&group_by=day,queue&metrics=count,interactionDuration&format=csv")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(empty.lines().next().unwrap(), header.join(","));
    h.finish();
}

#[tokio::test]
async fn bad_summary_parameters_are_problems_naming_the_parameter() {
    let h = Harness::start(Opts::default()).await;
    let base = "/v1/interactions/summary?from=2024-09-01&to=2024-09-02";
    let cases = [
        ("&group_by=week", "group_by"),
        ("&group_by=day,day", "group_by"),
        ("&group_by=day&group_by=channel,DAY", "group_by"),
        ("&group_by=day,hour,channel,queue", "group_by"),
        ("&group_by=%00", "group_by"),
        ("&metrics=average", "metrics"),
        ("&metrics=count,count", "metrics"),
        ("&format=ndjson", "format"),
        ("&cursor=abc", "query"),
        ("&tz=Nowhere/Land", "tz"),
    ];
    for (extra, param) in cases {
        let resp = h.get(&format!("{base}{extra}")).await;
        assert_eq!(resp.status(), 400, "{extra}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["param"], param, "{extra}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let resp = h.get("/v1/interactions/summary?to=2024-09-02").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        h.get_with(&format!("{base}&group_by=day"), None)
            .await
            .status(),
        401
    );
    assert_eq!(h.calls(), 0, "no refused request reached the upstream");
    h.finish();
}

/// The `group_by` and `metrics` values the published OpenAPI document allows (arrays of its
/// enums, comma-separated; `group_by` at most three) are accepted by both summary paths, and
/// each JSON operation's one `format` too; what the enums forbid is a 400 naming the
/// parameter.
#[tokio::test]
async fn group_by_and_metrics_accept_whatever_the_schema_allows() {
    let doc: Value = serde_json::from_str(kore_gateway::api::docs::OPENAPI_JSON).unwrap();
    let h = Harness::start(Opts::default()).await;
    let param = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} documents {name}"))
            .clone()
    };
    let names = |p: &Value| -> Vec<String> {
        p["schema"]["items"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("an enum: {p}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let status = |path: String| {
        let h = &h;
        async move {
            let r = h.get(&path).await;
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let range = "from=2024-09-26&to=2024-09-26";
    for path in ["/v1/interactions/summary", "/v1/interactions/summary.csv"] {
        let (group_by, metrics) = (param(path, "group_by"), param(path, "metrics"));
        assert_eq!(group_by["schema"]["maxItems"], 3, "{group_by}");
        for p in [&group_by, &metrics] {
            assert_eq!(
                (&p["style"], &p["explode"]),
                (&"form".into(), &false.into()),
                "{p}"
            );
        }
        let (dims, mets) = (names(&group_by), names(&metrics));
        assert_eq!((dims.len(), mets.len()), (11, 5), "{dims:?} {mets:?}");
        // Every dimension alone and in threes (each once), every metric alone and all of
        // them together.
        let mut values: Vec<String> = dims.iter().map(|d| format!("group_by={d}")).collect();
        values.extend(dims.chunks(3).map(|c| format!("group_by={}", c.join(","))));
        values.extend(mets.iter().map(|m| format!("metrics={m}")));
        values.push(format!("metrics={}", mets.join(",")));
        for v in &values {
            let (s, body) = status(format!("{path}?{range}&{v}")).await;
            assert_eq!(s, 200, "{path}?{v}: {body}");
        }
        for (bad, name) in [
            (format!("group_by={}", dims[..4].join(",")), "group_by"),
            ("group_by=week".to_owned(), "group_by"),
            ("metrics=avg".to_owned(), "metrics"),
        ] {
            let (s, body) = status(format!("{path}?{range}&{bad}")).await;
            assert_eq!(
                (s, &body["param"]),
                (400, &name.into()),
                "{path}?{bad}: {body}"
            );
        }
    }
    for path in ["/v1/interactions", "/v1/interactions/summary"] {
        let format = param(path, "format");
        for f in format["schema"]["enum"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            let (s, body) = status(format!("{path}?{range}&format={f}")).await;
            assert_eq!(s, 200, "{path}?format={f}: {body}");
            assert!(body.is_object(), "{path}?format={f} is JSON: {body}");
        }
    }
    h.finish();
}

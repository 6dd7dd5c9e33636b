//! The record filters `agent`, `direction`, `finalStatus`, `smartStatus` and `disposition`
//! on `/v1/interactions` (JSON pages, NDJSON, CSV) and the summary, against the simulator's
//! truth filtered here, independently of the gateway's code: each equals it record for
//! record, and none costs an upstream call beyond the unfiltered range's.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use serde_json::Value;

const RANGE: &str = "from=2024-09-01&to=2024-09-14";

/// Whether `record` passes `param=values`, read from the record as the issue defines it.
fn passes(record: &Value, param: &str, values: &[&str]) -> bool {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    match param {
        "agent" => record["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| {
                let a = &d["respondingAgent"];
                let id = text(&a["agentId"]);
                let email = text(&a["email"]).map(|e| e.to_lowercase());
                values.iter().any(|v| {
                    id.as_deref() == Some(*v) || email.as_deref() == Some(&v.to_lowercase())
                })
            }),
        "direction" => {
            let own = text(&record["Direction"]).filter(|d| !d.is_empty());
            let direction = own
                .or_else(|| text(&record["customerinfo"]["Direction"]).filter(|d| !d.is_empty()));
            direction.is_some_and(|d| values.contains(&d.as_str()))
        }
        "disposition" => record["dispositions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d.as_str().is_some_and(|d| values.contains(&d))),
        field => text(&record[field]).is_some_and(|v| values.contains(&v.as_str())),
    }
}

/// The query string of `filters`, each list comma-separated, or repeated when `repeat`.
fn query(filters: &[(&str, &[&str])], repeat: bool) -> String {
    let mut q = String::new();
    for (param, values) in filters {
        if repeat {
            for v in *values {
                q.push_str(&format!("&{param}={}", enc(v)));
            }
        } else {
            let joined: Vec<String> = values.iter().map(|v| enc(v)).collect();
            q.push_str(&format!("&{param}={}", joined.join(",")));
        }
    }
    q
}

fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Every record of a JSON answer, following `next_cursor` through pages of `limit`.
async fn all_pages(h: &Harness, path: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            None => format!("{path}&limit={limit}"),
            Some(c) => format!("{path}&limit={limit}&cursor={c}"),
        };
        let body = h.json(&page_path).await;
        let data = body["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        out.extend(data.iter().cloned());
        match body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert_eq!(body["meta"]["total"], out.len(), "{path}");
                return out;
            }
        }
    }
}

/// The most frequent values of `param` over `truth`, as `passes` reads them.
fn common_values(truth: &[Value], read: impl Fn(&Value) -> Vec<String>) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in truth {
        for v in read(r) {
            *counts.entry(v).or_default() += 1;
        }
    }
    let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_count.into_iter().map(|(v, _)| v).collect()
}

#[tokio::test]
async fn each_filter_equals_the_truth_filtered_with_no_extra_upstream_call() {
    let h = Harness::start(Opts::default()).await;
    let truth = h.sim.truth(
        at("2024-09-01T00:00:00", "UTC"),
        at("2024-09-14T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    // The unfiltered range: what every filtered query below shares.
    let everything = all_pages(&h, &format!("/v1/interactions?{RANGE}"), 10_000).await;
    assert_same_records(&everything, &truth);
    let calls = h.calls();

    let strings = |r: &Value, f: &dyn Fn(&Value) -> Vec<Value>| -> Vec<String> {
        f(r).iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let agents = common_values(&truth, |r| {
        strings(r, &|r| {
            r["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["respondingAgent"]["agentId"].clone())
                .collect()
        })
    });
    let emails = common_values(&truth, |r| {
        strings(r, &|r| {
            r["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["respondingAgent"]["email"].clone())
                .collect()
        })
    });
    let field = |name: &'static str| {
        common_values(&truth, move |r| {
            r[name].as_str().map(str::to_owned).into_iter().collect()
        })
    };
    let dispositions = common_values(&truth, |r| {
        strings(r, &|r| {
            r["dispositions"].as_array().cloned().unwrap_or_default()
        })
    });
    let (final_status, smart_status) = (field("finalStatus"), field("smartStatus"));
    assert!(agents.len() >= 3 && emails.len() >= 2 && dispositions.len() >= 2);
    assert!(final_status.len() >= 2 && smart_status.len() >= 2);
    let email_upper = emails[1].to_uppercase();

    let cases: Vec<Vec<(&str, Vec<&str>)>> = vec![
        vec![("agent", vec![agents[0].as_str()])],
        vec![("agent", vec![agents[1].as_str(), email_upper.as_str()])],
        vec![("direction", vec!["Inbound"])],
        vec![("direction", vec!["Outbound", "Inbound"])],
        vec![("finalStatus", vec![final_status[1].as_str()])],
        vec![(
            "smartStatus",
            vec![smart_status[0].as_str(), smart_status[1].as_str()],
        )],
        vec![("disposition", vec![dispositions[0].as_str()])],
        vec![
            ("direction", vec!["Inbound"]),
            (
                "disposition",
                vec![dispositions[0].as_str(), dispositions[1].as_str()],
            ),
            (
                "agent",
                vec![agents[0].as_str(), agents[1].as_str(), agents[2].as_str()],
            ),
        ],
        vec![("agent", vec!["nobody@example.com"])],
    ];
    let mut sizes = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let filters: Vec<(&str, &[&str])> = case.iter().map(|(p, v)| (*p, v.as_slice())).collect();
        let want: Vec<Value> = truth
            .iter()
            .filter(|r| filters.iter().all(|(p, v)| passes(r, p, v)))
            .cloned()
            .collect();
        sizes.push(want.len());
        let path = format!("/v1/interactions?{RANGE}{}", query(&filters, n % 2 == 1));
        // JSON, through cursor pages.
        let got = all_pages(&h, &path, 97).await;
        assert_same_records(&got, &want);
        assert_sorted_by_start(&got);
        // NDJSON and CSV, whole.
        let nd = h.get(&format!("{path}&format=ndjson")).await;
        assert_eq!(nd.headers()["x-complete"], "true");
        let lines: Vec<Value> = nd
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_same_records(&lines, &want);
        let csv = h
            .get(&format!("{path}&format=csv"))
            .await
            .text()
            .await
            .unwrap();
        let mut rd = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<(String, String)> = rd
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_owned(), r[1].to_owned())
            })
            .collect();
        let want_ids: Vec<(String, String)> = got
            .iter()
            .map(|r| {
                (
                    r["sessionId"].as_str().unwrap().to_owned(),
                    r["conversationId"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        assert_eq!(rows, want_ids, "CSV rows, in order: {path}");
        // The summary counts the same records, in the groups of their own values.
        let s = h
            .json(&format!(
                "/v1/interactions/summary?{RANGE}{}&group_by=finalStatus",
                query(&filters, n % 2 == 0)
            ))
            .await;
        assert_eq!(s["meta"]["total"], want.len(), "{path}");
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for r in &want {
            let key = r["finalStatus"].as_str().unwrap_or("null").to_owned();
            *by_status.entry(key).or_default() += 1;
        }
        let groups: BTreeMap<String, u64> = s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["key"]["finalStatus"]
                        .as_str()
                        .unwrap_or("null")
                        .to_owned(),
                    g["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(groups, by_status, "{path}");
    }
    // The filters selected something (the last: an unknown agent, nothing), and all but
    // both directions together less than everything.
    assert!(
        sizes[..sizes.len() - 1].iter().all(|n| *n > 0)
            && sizes.iter().filter(|n| **n < truth.len()).count() == sizes.len() - 1,
        "{sizes:?} of {}",
        truth.len()
    );
    assert_eq!(sizes.last(), Some(&0));
    assert_eq!(h.calls(), calls, "filters cost no upstream call");
    h.finish();
}

#[tokio::test]
async fn filters_bind_cursors_and_never_share_a_stored_answer() {
    let h = Harness::start(Opts::default()).await;
    let base = format!("/v1/interactions?{RANGE}&limit=5");
    let inbound = h.json(&format!("{base}&direction=Inbound")).await;
    let outbound = h.json(&format!("{base}&direction=Outbound")).await;
    assert_ne!(inbound["data"], outbound["data"]);
    // A cursor of one filter is refused by another (and by no filter).
    let cursor = inbound["meta"]["next_cursor"].as_str().unwrap();
    for other in ["&direction=Outbound", "", "&direction=Inbound,Outbound"] {
        let r = h.get(&format!("{base}{other}&cursor={cursor}")).await;
        assert_eq!(r.status(), 400, "{other}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["param"], "cursor");
    }
    // A value holding separators is a value, not more parameters; repeats and order do
    // not change the meaning (the same stored answer).
    let odd = h
        .json(&format!(
            "{base}&direction={}",
            enc("Inbound&direction=Outbound")
        ))
        .await;
    assert_eq!(odd["meta"]["total"], 0);
    let a = h
        .get(&format!("{base}&direction=Outbound,Inbound"))
        .await
        .text()
        .await
        .unwrap();
    let b = h
        .get(&format!("{base}&direction=Inbound&direction=Outbound"))
        .await;
    assert!(
        b.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("; hit"),
        "the same meaning, the same stored answer"
    );
    let (a, b): (Value, Value) = (serde_json::from_str(&a).unwrap(), b.json().await.unwrap());
    assert_eq!(a["data"], b["data"]);
    h.finish();
}

//! The API surface: OpenAPI and Swagger UI, streaming formats, the drop-in route, metrics,
//! request ids, CORS, compression and graceful shutdown.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use kore_sim::{SimConfig, mint_test_jwt};
use serde_json::Value;

#[test]
fn the_committed_openapi_document_is_fresh() {
    let generated = kore_gateway::api::docs::generate();
    let committed = kore_gateway::api::docs::OPENAPI_JSON;
    assert!(
        generated == committed,
        "openapi/openapi.json is stale: run `cargo run -q -- --print-openapi > openapi/openapi.json`"
    );
    let doc: Value = serde_json::from_str(committed).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/interactions",
        "/v1/cache",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(
        doc["components"]["securitySchemes"]
            .get("api_key")
            .is_some()
    );
}

#[tokio::test]
async fn openapi_json_is_served_byte_for_byte_and_docs_load_from_the_gateway() {
    let h = Harness::start(Opts::default()).await;
    let spec = h.get_with("/openapi.json", None).await;
    assert_eq!(spec.status(), 200);
    assert_eq!(
        spec.text().await.unwrap(),
        kore_gateway::api::docs::OPENAPI_JSON
    );

    let html = h.get_with("/docs/", None).await;
    assert_eq!(html.status(), 200);
    let html = html.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no CDN or remote asset in the page"
    );
    // Every script and stylesheet the page names is served by the gateway itself.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            if url.ends_with(".js") || url.ends_with(".css") {
                assets.push(url.trim_start_matches("./").to_owned());
            }
        }
    }
    assert!(assets.len() >= 3, "{assets:?}");
    for a in &assets {
        let r = h.get_with(&format!("/docs/{a}"), None).await;
        assert_eq!(r.status(), 200, "{a}");
        assert!(!r.bytes().await.unwrap().is_empty(), "{a}");
    }
    let init = h
        .get_with("/docs/swagger-initializer.js", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        init.contains("/openapi.json"),
        "the UI points at our own document: {init}"
    );
    h.finish();
}

#[tokio::test]
async fn ndjson_and_csv_hold_exactly_the_json_total() {
    let h = Harness::start(Opts::default()).await;
    let range = "/v1/interactions?from=2024-08-20&to=2024-09-25&tz=Asia/Kolkata";
    let json = h.json(&format!("{range}&limit=10000")).await;
    let total = json["meta"]["total"].as_u64().unwrap() as usize;
    assert!(total > 1000);

    let nd = h.get(&format!("{range}&format=ndjson")).await;
    assert_eq!(nd.status(), 200);
    assert_eq!(nd.headers()["content-type"], "application/x-ndjson");
    let nd = nd.text().await.unwrap();
    let lines: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), total);
    assert_eq!(
        &lines,
        json["data"].as_array().unwrap(),
        "same records, same order"
    );

    let csv_resp = h
        .http
        .get(format!("{}{range}", h.base))
        .bearer_auth(KEY)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv_resp.status(), 200);
    assert!(
        csv_resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv_resp.text().await.unwrap();
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let headers = rd.headers().unwrap().clone();
    assert_eq!(&headers[0], "sessionId");
    assert!(headers.iter().any(|h| h == "customerinfo.CustomerEmail"));
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), total, "one row per record, quoting intact");
    let ids: HashSet<&str> = rows.iter().map(|r| r.get(0).unwrap()).collect();
    let json_ids: HashSet<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, json_ids);
    h.finish();
}

/// Each representation is an operation of its own, so a client generated from the document
/// parses each answer by the one media type its operation lists (openapi-python-client
/// parses an operation that lists JSON first as JSON, whatever came back).
#[test]
fn every_data_operation_documents_one_representation() {
    let doc: Value = serde_json::from_str(kore_gateway::api::docs::OPENAPI_JSON).unwrap();
    for (path, media) in [
        ("/v1/interactions", &["application/json"][..]),
        (
            "/v1/interactions.ndjson",
            // octet-stream: the same bytes, for generators that know no NDJSON.
            &["application/x-ndjson", "application/octet-stream"],
        ),
        ("/v1/interactions.csv", &["text/csv"]),
        ("/v1/interactions/summary", &["application/json"]),
        ("/v1/interactions/summary.csv", &["text/csv"]),
    ] {
        let op = &doc["paths"][path]["get"];
        let listed: HashSet<&str> = op["responses"]["200"]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{path} is documented"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(listed, media.iter().copied().collect(), "{path}");
        let format = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "format");
        match media[0] {
            "application/json" => assert_eq!(
                format.unwrap()["schema"]["enum"],
                serde_json::json!(["json"]),
                "{path}: the JSON operation's format"
            ),
            _ => assert!(format.is_none(), "{path}: the path names the format"),
        }
    }
}

/// `/v1/interactions.ndjson`, `.csv` and `/v1/interactions/summary.csv` answer exactly what
/// the plain paths answer with `format` set — the same records as the simulator's truth —
/// and refuse a second `format`.
#[tokio::test]
async fn the_representation_paths_answer_what_format_selects() {
    let h = Harness::start(Opts::default()).await;
    let tz = "Asia/Kolkata";
    let q = "from=2024-09-24&to=2024-09-26&tz=Asia/Kolkata&channels=voice,chat";
    let truth = truth_in_zone(
        &h.sim,
        at("2024-09-24T00:00:00", tz),
        at("2024-09-26T23:59:59", tz),
        tz,
        &filter(&["voice", "chat"], &[], &[], &ALL_FIELDS),
    );
    assert!(truth.len() > 100, "{} records", truth.len());
    let body = |path: String| {
        let h = &h;
        async move {
            let r = h.get(&path).await;
            assert_eq!(r.status(), 200, "{path}");
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.text().await.unwrap())
        }
    };

    let (ct, nd) = body(format!("/v1/interactions.ndjson?{q}")).await;
    assert_eq!(ct, "application/x-ndjson");
    let records: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_same_records(&records, &truth);
    assert_eq!(
        (ct, nd),
        body(format!("/v1/interactions?{q}&format=ndjson")).await
    );

    let (ct, csv_text) = body(format!("/v1/interactions.csv?{q}")).await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let ids: HashSet<String> = rd.records().map(|r| r.unwrap()[0].to_owned()).collect();
    let truth_ids: HashSet<String> = truth.iter().map(|r| id(r).0).collect();
    assert_eq!(ids, truth_ids);
    assert_eq!(
        (ct, csv_text),
        body(format!("/v1/interactions?{q}&format=csv")).await
    );

    let sq = format!("{q}&group_by=day,channel&metrics=count,interactionDuration");
    let (ct, summary_csv) = body(format!("/v1/interactions/summary.csv?{sq}")).await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    let counted: u64 = csv::Reader::from_reader(summary_csv.as_bytes())
        .records()
        .map(|r| r.unwrap()[2].parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted as usize, truth.len(), "{summary_csv}");
    assert_eq!(
        (ct, summary_csv),
        body(format!("/v1/interactions/summary?{sq}&format=csv")).await
    );

    // The path names the format: a `format` as well is a 400 naming it, whatever its value.
    for path in [
        "/v1/interactions.ndjson",
        "/v1/interactions.csv",
        "/v1/interactions/summary.csv",
    ] {
        for f in ["csv", "ndjson", "json"] {
            let r = h.get(&format!("{path}?{q}&format={f}")).await;
            assert_eq!(r.status(), 400, "{path}?format={f}");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["param"], "format", "{path}: {p}");
        }
    }
    h.finish();
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    auth: (&str, &str),
    body: &Value,
) -> (u16, Value) {
    let r = http
        .post(url)
        .header(auth.0, auth.1)
        .header("accountId", SimConfig::demo().account_id)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_drop_in_route_answers_like_the_vendor() {
    let h = Harness::start(Opts::default()).await;
    let cfg = SimConfig::demo();
    let path = format!(
        "/agentassist/api/public/analytics/account/{}/v2/interactionDetails",
        cfg.account_id
    );
    let body = serde_json::json!({
        "startDate": "2024-09-20 00:00:00", "endDate": "2024-09-26 23:59:59", "timeZoneOffset": -330,
        "selectedFields": ["userleveltags", "sessionleveltags", "customerinfo", "skills"], "channels": ["voice", "rtm"]
    });
    let jwt = mint_test_jwt(&cfg.client_id, &cfg.client_secret, None);
    let mut vendor = Vec::new();
    let mut gateway = Vec::new();
    let mut totals = (0, 0);
    for page in 0..=10 {
        let (s1, v) = post_json(
            &h.http,
            &format!("http://{}{path}?offset={page}&limit=100", h.sim_addr),
            ("auth", &jwt),
            &body,
        )
        .await;
        let (s2, g) = post_json(
            &h.http,
            &format!("{}{path}?offset={page}&limit=100", h.base),
            ("authorization", &format!("Bearer {KEY}")),
            &body,
        )
        .await;
        assert_eq!((s1, s2), (200, 200), "{g}");
        totals = (
            v["numResults"].as_u64().unwrap(),
            g["numResults"].as_u64().unwrap(),
        );
        let (vd, gd) = (
            v["data"].as_array().unwrap().clone(),
            g["data"].as_array().unwrap().clone(),
        );
        assert_eq!(vd.len(), gd.len(), "page {page} has as many records");
        let done = vd.len() < 100;
        vendor.extend(vd);
        gateway.extend(gd);
        if done {
            break;
        }
    }
    assert_eq!(totals.0, totals.1);
    assert!(totals.0 > 100, "more than one page");
    assert_same_records(&gateway, &vendor);
    // The vendor's rules apply: more than 7 days is refused before any upstream call.
    h.sim.reset_log();
    let long = serde_json::json!({"startDate": "2024-09-01", "endDate": "2024-09-30", "timeZoneOffset": 0});
    let (s, p) = post_json(
        &h.http,
        &format!("{}{path}", h.base),
        ("x-api-key", KEY),
        &long,
    )
    .await;
    assert_eq!(s, 400, "{p}");
    assert_eq!(h.calls(), 0);
    let (s, _) = post_json(&h.http, &format!("{}{path}", h.base), ("auth", &jwt), &body).await;
    assert_eq!(s, 401, "a vendor JWT is not a gateway key");
    h.finish();
}

fn drop_in_path() -> String {
    format!(
        "/agentassist/api/public/analytics/account/{}/v2/interactionDetails",
        SimConfig::demo().account_id
    )
}

/// The records of a vendor range in the gateway's order (start time, then `sessionId`,
/// then `conversationId`), computed from the simulator's ground truth. Within one
/// `timeZoneOffset` the local time text sorts like the instant.
fn truth_in_gateway_order(h: &Harness, start: &str, end: &str, offset_minutes: i32) -> Vec<Value> {
    let mut truth = h.sim.truth(
        start.parse().unwrap(),
        end.parse().unwrap(),
        offset_minutes,
        &all_fields(),
    );
    let key = |v: &Value| {
        (
            v["sessionStartTime"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            v["sessionId"].as_str().unwrap_or_default().to_owned(),
            v["conversationId"].as_str().unwrap_or_default().to_owned(),
        )
    };
    truth.sort_by_key(key);
    truth
}

#[tokio::test]
async fn the_drop_in_route_reads_a_record_offset_as_a_record_skip() {
    // Gateway and simulator both read `offset` as a record skip (the older vendor docs).
    let h = Harness::start(Opts {
        offset_mode: kore_gateway::config::OffsetMode::Record,
        ..Opts::default()
    })
    .await;
    let url = format!("{}{}", h.base, drop_in_path());
    let body = serde_json::json!({
        "startDate": "2024-09-20 00:00:00", "endDate": "2024-09-26 23:59:59", "timeZoneOffset": -330,
        "selectedFields": ["userleveltags", "sessionleveltags", "customerinfo", "skills"]
    });
    // 2024-09-20 00:00 .. 2024-09-26 23:59:59 IST in UTC.
    let truth = truth_in_gateway_order(&h, "2024-09-19T18:30:00Z", "2024-09-26T18:29:59Z", -330);
    assert!(
        truth.len() >= 260,
        "the range holds {} records",
        truth.len()
    );
    let auth = ("x-api-key", KEY);
    for (offset, limit) in [(150, 100), (0, 100), (7, 13), (truth.len() - 5, 100)] {
        let (s, g) = post_json(
            &h.http,
            &format!("{url}?offset={offset}&limit={limit}"),
            auth,
            &body,
        )
        .await;
        assert_eq!(s, 200, "{g}");
        assert_eq!(g["numResults"].as_u64(), Some(truth.len() as u64));
        let want = &truth[offset..(offset + limit).min(truth.len())];
        let got = g["data"].as_array().unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "offset={offset}&limit={limit}: records {offset}.. of the range"
        );
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "offset={offset}&limit={limit}: record {}", offset + i);
        }
    }
    // The gateway paged the upstream by record skips too: offsets like 100 are record
    // skips (a page index stops at 10), and the simulator enforced record-mode rules.
    let offsets: HashSet<u32> = h.sim.calls().iter().filter_map(|c| c.page).collect();
    assert!(offsets.contains(&100), "upstream offsets: {offsets:?}");
    // A record skip past what one vendor query reaches is refused like the vendor would.
    let (s, p) = post_json(&h.http, &format!("{url}?offset=1001"), auth, &body).await;
    assert_eq!(s, 400, "{p}");
    assert_eq!(p["param"], "offset", "{p}");
    h.finish();
}

#[tokio::test]
async fn the_drop_in_route_says_stale_when_an_expired_copy_stands_in() {
    // Nothing stays fresh, and one failed upstream call is final.
    let mut opts = Opts {
        retries: 0,
        ..Opts::default()
    };
    opts.cache.ttl_past = Duration::ZERO;
    opts.cache.ttl_recent = Duration::ZERO;
    let h = Harness::start(opts).await;
    let url = format!("{}{}?limit=100", h.base, drop_in_path());
    let body = serde_json::json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": -330});
    let post = || {
        h.http
            .post(&url)
            .header("x-api-key", KEY)
            .json(&body)
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(first.headers()["x-gateway-stale"], "false");
    let first: Value = first.json().await.unwrap();

    h.sim.set_faults(kore_sim::Faults {
        error_rate: 1.0,
        kinds: vec![kore_sim::FaultKind::Status503],
        ..kore_sim::Faults::default()
    });
    let calls = h.calls();
    let second = post().await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(
        h.calls() > calls,
        "the expired copy was not served without trying the upstream"
    );
    assert_eq!(second.headers()["x-cache"], "STALE");
    assert_eq!(second.headers()["x-gateway-stale"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second, first, "the expired copy, unchanged");
    h.finish();
}

#[tokio::test]
async fn the_drop_in_route_takes_null_lists_as_absent() {
    let h = Harness::start(Opts::default()).await;
    let url = format!("{}{}?limit=100", h.base, drop_in_path());
    let absent = serde_json::json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": -330});
    let nulls = serde_json::json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": -330,
        "selectedFields": null, "channels": null, "queues": null, "bots": null});
    let (s1, a) = post_json(&h.http, &url, ("x-api-key", KEY), &absent).await;
    let (s2, n) = post_json(&h.http, &url, ("x-api-key", KEY), &nulls).await;
    assert_eq!((s1, s2), (200, 200), "{n}");
    // Truth: the whole day, no filter, none of the optional blocks (no selectedFields).
    let truth = h.sim.truth(
        "2024-09-25T18:30:00Z".parse().unwrap(),
        "2024-09-26T18:29:59Z".parse().unwrap(),
        -330,
        &kore_sim::SimFilter::default(),
    );
    assert!(!truth.is_empty());
    assert_eq!(n["numResults"].as_u64(), Some(truth.len() as u64));
    assert_eq!(n, a, "null lists mean the same as absent ones");
    assert!(truth.len() <= 100, "the day fits one page");
    assert_same_records(n["data"].as_array().unwrap(), &truth);
    h.finish();
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests() {
    let h = Harness::start(Opts::default()).await;
    let count = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("gateway_requests_total{")
                    && l.contains("route=\"/v1/interactions\"")
                    && l.contains("status=\"200\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = h.get_with("/metrics", None).await;
    assert_eq!(before.status(), 200);
    let before = before.text().await.unwrap();
    h.json("/v1/interactions?from=2024-09-01&to=2024-09-01")
        .await;
    let resp = h.get_with("/metrics", None).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let after = resp.text().await.unwrap();
    for line in after
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let name = name_labels.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in: {line}"
        );
        if let Some(labels) = name_labels.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
    }
    assert!(
        count(&after) >= count(&before) + 1.0,
        "the request was counted"
    );
    for name in [
        "gateway_request_duration_seconds_bucket",
        "gateway_upstream_calls_total",
        "gateway_cache_bytes",
        "gateway_budget_wait_seconds_total",
        "gateway_cache_misses_total",
    ] {
        assert!(after.contains(name), "{name} exposed");
    }
    // Every family says what it is (`# HELP`, `# TYPE`), and names say how to read them:
    // counters end `_total`, nothing else does, and `_sum`/`_count`/`_bucket` belong to
    // histograms only (the rules `promtool check metrics` applies).
    let mut helped = HashSet::new();
    let mut types = Vec::new();
    for line in after.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty help: {line}");
            helped.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.push((name.to_owned(), kind.to_owned()));
        }
    }
    assert!(types.len() >= 10, "{types:?}");
    for (name, kind) in &types {
        assert!(helped.contains(name), "{name} has no # HELP");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
        if kind != "histogram" {
            assert!(
                !["_sum", "_count", "_bucket"]
                    .iter()
                    .any(|s| name.ends_with(s)),
                "{name} is a {kind}"
            );
        }
    }
    for line in after
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.iter().any(|(n, k)| n == f && k == "histogram"))
            .unwrap_or(name);
        assert!(
            types.iter().any(|(n, _)| n == family),
            "{name} has no # TYPE"
        );
    }
    assert!(
        !after.contains(&SimConfig::demo().client_secret),
        "no secret in metrics"
    );
    h.finish();
}

#[tokio::test]
async fn request_ids_are_echoed_and_forwarded_upstream() {
    let h = Harness::start(Opts::default()).await;
    let r = h
        .http
        .get(format!(
            "{}/v1/interactions?from=2024-09-03&to=2024-09-03",
            h.base
        ))
        .bearer_auth(KEY)
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    let calls = h.sim.calls();
    assert!(!calls.is_empty(), "the request reached the upstream");
    assert!(
        calls
            .iter()
            .all(|c| c.request_id.as_deref() == Some("trace-abc-123"))
    );
    let r = h.get_with("/healthz", None).await;
    let generated = r.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a generated UUID-like id: {generated}");
    let bad = h.get_with("/v1/interactions", None).await;
    assert!(
        bad.headers().contains_key("x-request-id"),
        "errors carry the id too"
    );
    h.finish();
}

#[tokio::test]
async fn cors_preflight_and_compression() {
    let h = Harness::start(Opts::default()).await;
    let pre = h
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/interactions", h.base),
        )
        .header("Origin", "https://dash.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let other = h
        .http
        .get(format!("{}/healthz", h.base))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "origins outside the allow-list get no CORS grant"
    );

    let gz = h
        .http
        .get(format!(
            "{}/v1/interactions?from=2024-09-01&to=2024-09-07",
            h.base
        ))
        .bearer_auth(KEY)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    h.finish();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut cfg = SimConfig::demo();
    cfg.latency = Duration::from_millis(600);
    let (sim, sim_addr) = kore_sim::Simulator::spawn(cfg).await.unwrap();
    let state = kore_gateway::build(settings_for(&sim, sim_addr, &Opts::default())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, kore_gateway::app(state))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    let http = reqwest::Client::new();
    let in_flight = tokio::spawn(async move {
        http.get(format!(
            "http://{addr}/v1/interactions?from=2024-09-03&to=2024-09-03"
        ))
        .bearer_auth(KEY)
        .send()
        .await
    });
    // Shut down once the request is in flight: the simulator has its upstream call (logged
    // on arrival, answered 600 ms later).
    until("the upstream has the request's call", || {
        sim.call_count() > 0
    })
    .await;
    stop_tx.send(()).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap()["meta"]["complete"] == true);
    server.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    assert!(sim.violations().is_empty());
}

#[test]
fn durations_too_long_for_the_clock_stop_start_up_with_one_line_naming_the_setting() {
    let settings = [
        "KORE_MAX_WAIT",
        "KORE_TIMEOUT",
        "KORE_JWT_TTL",
        "GATEWAY_REQUEST_TIMEOUT",
        "CACHE_TTL_PAST",
        "CACHE_TTL_RECENT",
        "CACHE_SETTLE",
        "CACHE_STALE_GRACE",
        "SIM_LATENCY",
    ];
    for setting in settings {
        for value in ["10000000000000d", "99999999999999999999999s"] {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kore-gateway"))
                .arg("--demo")
                .env("GATEWAY_LISTEN", "127.0.0.1:0")
                .env(setting, value)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the binary starts");
            // It must refuse at once; a gateway that starts anyway is stopped and fails the test.
            let started = std::time::Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            let status = status.unwrap_or_else(|| panic!("{setting}={value}: the gateway started"));
            assert!(!status.success(), "{setting}={value}: {status}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{setting}={value}: one line, got {err:?}");
            assert!(
                lines[0].contains(setting) && lines[0].contains("longer than 3650d"),
                "{setting}={value}: {err:?}"
            );
        }
    }
}

/// The CSV cells of `csatFeedback`, by (sessionId, conversationId).
async fn csv_feedback(
    h: &Harness,
    range: &str,
) -> std::collections::HashMap<(String, String), String> {
    let resp = h.get(&format!("{range}&format=csv")).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let headers = rd.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (sid, cid, fb) = (col("sessionId"), col("conversationId"), col("csatFeedback"));
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            ((r[sid].to_owned(), r[cid].to_owned()), r[fb].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn csv_defuses_formula_cells_unless_turned_off() {
    let range = "/v1/interactions?from=2024-09-01&to=2024-09-30";
    let on = Harness::start(Opts::default()).await;
    let truth = on.sim.truth(
        "2024-09-01T00:00:00Z".parse().unwrap(),
        "2024-09-30T23:59:59Z".parse().unwrap(),
        0,
        &all_fields(),
    );
    // OWASP: a text cell starting with = + - @ tab or CR gets a leading apostrophe.
    let owasp = |s: &str| {
        if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}")
        } else {
            s.to_owned()
        }
    };
    let feedback: Vec<((String, String), String)> = truth
        .iter()
        .filter_map(|r| {
            let key = (
                r["sessionId"].as_str()?.to_owned(),
                r["conversationId"].as_str().unwrap_or("").to_owned(),
            );
            Some((key, r["csatFeedback"].as_str()?.to_owned()))
        })
        .collect();
    let risky = feedback.iter().filter(|(_, f)| owasp(f) != *f).count();
    assert!(
        risky >= 3 && risky < feedback.len(),
        "the month has formula-looking feedback ({risky} of {})",
        feedback.len()
    );

    let cells = csv_feedback(&on, range).await;
    assert_eq!(cells.len(), truth.len(), "one row per record");
    for (key, text) in &feedback {
        assert_eq!(cells[key], owasp(text), "{key:?}");
    }
    on.finish();

    let off = Harness::start(Opts {
        csv_formula_escape: false,
        ..Opts::default()
    })
    .await;
    let cells = csv_feedback(&off, range).await;
    for (key, text) in &feedback {
        assert_eq!(
            &cells[key], text,
            "CSV_FORMULA_ESCAPE=false writes {key:?} as is"
        );
    }
    off.finish();
}

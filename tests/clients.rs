//! What real clients tripped on (issue 21), end to end over loopback HTTP against the
//! simulator: a quarter in a zone with DST, the headers a cross-origin page may read,
//! `Accept` by RFC 9110, CSV escaping that keeps phone numbers, no upstream calls for the
//! future, a 414 problem for a 100 KB URL and jQuery's cache-buster.

mod common;

use std::collections::{BTreeSet, HashMap};

use axum::body::Body;
use common::*;
use serde_json::Value;
use tower::ServiceExt;

async fn get_h(h: &Harness, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = h.http.get(format!("{}{path}", h.base)).bearer_auth(KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("gateway answers")
}

/// A problem+json answer's status and body.
async fn problem(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "status {status}"
    );
    let body: Value = resp.json().await.expect("a problem body");
    assert_eq!(body["status"], status);
    (status, body)
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_quarter_is_92_calendar_days_in_every_zone_and_q4_in_new_york_is_whole() {
    let h = Harness::start(Opts::default()).await;
    let ny = "America/New_York";
    let q4 = "from=2024-10-01&to=2024-12-31&tz=America/New_York";
    let resp = h.get(&format!("/v1/interactions?{q4}&format=ndjson")).await;
    assert_eq!(resp.status(), 200, "Q4 in New York (a fall-back inside)");
    assert_eq!(resp.headers()["x-complete"], "true");
    let got = ndjson(&resp.text().await.unwrap());
    let truth = truth_in_zone(
        &h.sim,
        at("2024-10-01T00:00:00", ny),
        at("2024-12-31T23:59:59", ny),
        ny,
        &all_fields(),
    );
    assert!(truth.len() > 5000, "a realistic quarter: {}", truth.len());
    assert_same_records(&got, &truth);
    let summary = h.json(&format!("/v1/interactions/summary?{q4}")).await;
    assert_eq!(summary["meta"]["total"], truth.len());
    assert_eq!(summary["meta"]["complete"], true);
    // Every route that takes a range refuses a 93rd calendar day, in any zone.
    for tz in [ny, "UTC", "Europe/London", "Australia/Sydney"] {
        for route in ["/v1/interactions", "/v1/interactions/summary"] {
            let resp = h
                .get(&format!("{route}?from=2024-10-01&to=2025-01-01&tz={tz}"))
                .await;
            let (status, body) = problem(resp).await;
            assert_eq!((status, body["param"].as_str()), (400, Some("to")), "{tz}");
        }
    }
    h.finish();
}

#[tokio::test]
async fn cors_exposes_every_header_the_api_documents() {
    let h = Harness::start(Opts::default()).await;
    let resp = get_h(
        &h,
        "/v1/interactions?from=2024-09-03&to=2024-09-03&format=csv",
        &[("Origin", "https://dash.example")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let exposed: BTreeSet<String> = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in ["x-complete", "x-stale", "x-warning", "content-disposition"] {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
    }
    // Every response header the committed OpenAPI document names.
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let mut documented = BTreeSet::new();
    for ops in doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            for r in op["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.values())
            {
                for name in r["headers"].as_object().into_iter().flat_map(|h| h.keys()) {
                    documented.insert(name.to_ascii_lowercase());
                }
            }
        }
    }
    assert!(documented.len() >= 10, "{documented:?}");
    let missing: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}"
    );
    h.finish();
}

#[tokio::test]
async fn accept_is_negotiated_by_rfc_9110() {
    let h = Harness::start(Opts::default()).await;
    let range = "from=2024-09-03&to=2024-09-03";
    // Warm: every answer below comes from the cache, and the 406s from nothing at all.
    let _ = h.json(&format!("/v1/interactions?{range}")).await;
    let _ = h.json(&format!("/v1/interactions/summary?{range}")).await;
    let calls = h.calls();
    let content_type = |r: &reqwest::Response| {
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    for (route, accept, want) in [
        ("/v1/interactions", "text/csv;q=0, */*", "application/json"),
        (
            "/v1/interactions",
            "application/json;q=0, text/csv",
            "text/csv",
        ),
        (
            "/v1/interactions",
            "text/csv;q=0.5, application/x-ndjson",
            "application/x-ndjson",
        ),
        (
            "/v1/interactions",
            "text/csv, application/json",
            "application/json",
        ),
        (
            "/v1/interactions",
            "application/*;q=0.2, text/*;q=0.1",
            "application/json",
        ),
        (
            "/v1/interactions",
            "application/json;q=0, */*",
            "application/x-ndjson",
        ),
        (
            "/v1/interactions/summary",
            "application/json;q=0.9, text/csv",
            "text/csv",
        ),
        (
            "/v1/interactions/summary",
            "application/x-ndjson, */*;q=0.1",
            "application/json",
        ),
    ] {
        let r = get_h(&h, &format!("{route}?{range}"), &[("Accept", accept)]).await;
        assert_eq!(r.status(), 200, "{route} Accept: {accept}");
        assert_eq!(content_type(&r), want, "{route} Accept: {accept}");
    }
    for (route, accept) in [
        ("/v1/interactions", "text/csv;q=0"),
        ("/v1/interactions", "text/html"),
        (
            "/v1/interactions",
            "application/json;q=0, application/x-ndjson;q=0, text/csv;q=0",
        ),
        ("/v1/interactions/summary", "application/x-ndjson"),
        ("/v1/interactions/summary", "*/*;q=0"),
    ] {
        // The query parsed and its answer is stored: still a 406, never that answer.
        let r = get_h(&h, &format!("{route}?{range}"), &[("Accept", accept)]).await;
        let (status, body) = problem(r).await;
        assert_eq!(status, 406, "{route} Accept: {accept}");
        assert_eq!(body["type"], "/problems/not-acceptable");
    }
    // An explicit format wins over any Accept.
    let r = get_h(
        &h,
        &format!("/v1/interactions?{range}&format=csv"),
        &[("Accept", "text/html")],
    )
    .await;
    assert_eq!(
        (r.status().as_u16(), content_type(&r)),
        (200, "text/csv".into())
    );
    assert_eq!(h.calls(), calls, "no upstream call for any of it");
    h.finish();
}

/// Whether a spreadsheet would run `cell` as a formula, written for this test from the
/// issue's rule: `=`, `@`, tab, CR always; `+`/`-` unless digits (and at most one point)
/// follow.
fn runs_as_formula(cell: &str) -> bool {
    let mut chars = cell.chars();
    match chars.next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => {
            let rest = chars.as_str();
            let points = rest.matches('.').count();
            !(points <= 1
                && rest.chars().any(|c| c.is_ascii_digit())
                && rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
        }
        _ => false,
    }
}

/// The CSV cells of `columns`, by record identity.
fn csv_cells(text: &str, columns: &[&str]) -> HashMap<(String, String), Vec<String>> {
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let headers = rd.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (sid, cid) = (col("sessionId"), col("conversationId"));
    let cols: Vec<usize> = columns.iter().map(|c| col(c)).collect();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            (
                (r[sid].to_owned(), r[cid].to_owned()),
                cols.iter().map(|c| r[*c].to_owned()).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn csv_keeps_phone_numbers_defuses_formulas_and_csv_escape_none_keeps_all() {
    let h = Harness::start(Opts::default()).await;
    let range = "/v1/interactions?from=2024-09-01&to=2024-09-14&format=csv";
    let truth = h.sim.truth(
        at("2024-09-01T00:00:00", "UTC"),
        at("2024-09-14T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    let columns = [
        "customerinfo.CenterPhone",
        "customerinfo.CustomerPhone",
        "csatFeedback",
    ];
    let raw = |r: &Value, c: &str| -> String {
        let v = match c.strip_prefix("customerinfo.") {
            Some(inner) => &r["customerinfo"][inner],
            None => &r[c],
        };
        v.as_str().unwrap_or_default().to_owned()
    };
    let key = |r: &Value| {
        (
            r["sessionId"].as_str().unwrap().to_owned(),
            r["conversationId"].as_str().unwrap_or("").to_owned(),
        )
    };
    let (mut phones, mut formulas) = (0, 0);
    for round in 0..2 {
        let escaped = h.get(range).await.text().await.unwrap();
        let raw_cells = h
            .get(&format!("{range}&csv_escape=none"))
            .await
            .text()
            .await
            .unwrap();
        let (escaped, raw_cells) = (
            csv_cells(&escaped, &columns),
            csv_cells(&raw_cells, &columns),
        );
        assert_eq!(escaped.len(), truth.len(), "round {round}");
        assert_eq!(raw_cells.len(), truth.len(), "round {round}");
        for r in &truth {
            for (i, c) in columns.iter().enumerate() {
                let text = raw(r, c);
                let want = if runs_as_formula(&text) {
                    formulas += 1;
                    format!("'{text}")
                } else {
                    if text.starts_with('+') {
                        phones += 1;
                    }
                    text.clone()
                };
                assert_eq!(escaped[&key(r)][i], want, "{c} of {:?}", key(r));
                assert_eq!(raw_cells[&key(r)][i], text, "csv_escape=none: {c}");
            }
        }
    }
    assert!(phones > 1000, "E.164 numbers checked: {phones}");
    assert!(formulas > 10, "formula cells checked: {formulas}");
    let bad = h.get(&format!("{range}&csv_escape=raw")).await;
    let (status, body) = problem(bad).await;
    assert_eq!((status, body["param"].as_str()), (400, Some("csv_escape")));
    let summary =
        "/v1/interactions/summary?from=2024-09-01&to=2024-09-14&format=csv&group_by=disposition";
    for escape in ["formula", "none"] {
        let r = h.get(&format!("{summary}&csv_escape={escape}")).await;
        assert_eq!(r.status(), 200, "{escape}");
    }
    let bad = h.get(&format!("{summary}&csv_escape=yes")).await;
    assert_eq!(problem(bad).await.1["param"], "csv_escape");
    h.finish();
}

#[tokio::test]
async fn a_range_in_the_future_is_empty_whole_and_costs_no_call() {
    let h = Harness::start(Opts::default()).await;
    let range = "from=2030-01-01&to=2030-01-02";
    assert!(
        !h.sim
            .truth(
                at("2030-01-01T00:00:00", "UTC"),
                at("2030-01-02T23:59:59", "UTC"),
                0,
                &all_fields()
            )
            .is_empty(),
        "the simulator would answer records, were it asked"
    );
    let body = h.json(&format!("/v1/interactions?{range}")).await;
    assert_eq!(body["data"], Value::Array(vec![]));
    assert_eq!(body["meta"]["total"], 0);
    assert_eq!(body["meta"]["complete"], true);
    assert_eq!(body["meta"]["upstream_calls"], 0);
    for format in ["csv", "ndjson"] {
        let r = h
            .get(&format!("/v1/interactions?{range}&format={format}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-complete"], "true");
        let text = r.text().await.unwrap();
        assert!(
            text.lines().count() <= 1,
            "{format}: only a header line: {text}"
        );
    }
    let summary = h.json(&format!("/v1/interactions/summary?{range}")).await;
    assert_eq!(summary["meta"]["total"], 0);
    assert_eq!(summary["meta"]["complete"], true);
    // Nothing to fetch, so nothing to do later either: no job.
    let r = get_h(
        &h,
        &format!("/v1/interactions?{range}&limit=5"),
        &[("Prefer", "respond-async")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.calls(), 0);

    // A range from yesterday to three days ahead: what has started is fetched (the window
    // holding now included), and no call asks for a time after now.
    let now = jiff::Timestamp::now();
    let day = |d: i64| {
        now.checked_add(jiff::SignedDuration::from_hours(24 * d))
            .unwrap()
            .strftime("%Y-%m-%d")
            .to_string()
    };
    let body = h
        .json(&format!(
            "/v1/interactions?from={}&to={}&limit=10000",
            day(-1),
            day(3)
        ))
        .await;
    assert_eq!(body["meta"]["complete"], true);
    let calls = h.sim.calls();
    assert!(!calls.is_empty(), "the started windows were fetched");
    let asked_now = calls
        .iter()
        .filter_map(|c| Some((c.start_utc?, c.end_utc?)))
        .inspect(|(start, _)| assert!(*start <= now, "a call for the future: {start}"))
        .filter(|(start, end)| *start <= now && now <= *end)
        .count();
    assert!(asked_now > 0, "the window holding now is fetched");
    h.finish();
}

/// A minute of polling a future range, with refresh-ahead on: no upstream call, ever.
/// In-process (no socket: nothing here does I/O), on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn polling_a_future_range_for_a_minute_makes_no_call() {
    let mut opts = Opts::default();
    opts.cache.refresh_ahead_idle = Some(std::time::Duration::from_secs(600));
    let h = Harness::start(opts).await;
    let app = kore_gateway::app(h.state.clone());
    for poll in 0..12 {
        for path in [
            "/v1/interactions?from=2030-01-01&to=2030-01-02",
            "/v1/interactions/summary?from=2030-01-01&to=2030-01-02&group_by=day",
        ] {
            let req = axum::http::Request::get(path)
                .header("authorization", format!("Bearer {KEY}"))
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200, "poll {poll}");
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["meta"]["upstream_calls"], 0, "poll {poll}");
            assert_eq!(body["meta"]["complete"], true);
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
    let refreshed = h
        .state
        .counters
        .refresh_ahead
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((h.calls(), refreshed), (0, 0));
    h.finish();
}

/// One HTTP/1.1 answer read off a raw connection: status, headers (lowercase names) and
/// body (every answer here carries a `Content-Length`).
async fn read_answer(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.unwrap();
    (status, headers, body)
}

/// A URL longer than any HTTP client library here will build (and than hyper reads by
/// itself), so sent as raw HTTP/1.1, followed by an ordinary request on the same connection.
#[tokio::test]
async fn a_100_kb_url_is_a_414_problem_and_the_connection_goes_on() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Opts::default()).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nOrigin: https://dash.example\r\n\r\n"
        )
    };
    for len in [100_000, 20_000, 1_000_000] {
        let long = format!(
            "/v1/interactions?from=2024-09-01&to=2024-09-01&channels={}",
            "a".repeat(len)
        );
        let mut conn =
            tokio::io::BufReader::new(tokio::net::TcpStream::connect(&addr).await.unwrap());
        // Both requests at once: the second must be read as a request of its own.
        let both = format!(
            "{}{}",
            request(&long),
            request("/v1/interactions?from=2024-09-01&to=2024-09-01")
        );
        conn.get_mut().write_all(both.as_bytes()).await.unwrap();
        let (status, headers, body) = read_answer(&mut conn).await;
        assert_eq!(status, 414, "{len}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(headers.contains_key("x-request-id"), "{len}");
        assert_eq!(
            headers["access-control-allow-origin"], "https://dash.example",
            "a browser may read why"
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], 414);
        assert_eq!(body["type"], "/problems/uri-too-long");
        let (status, _, body) = read_answer(&mut conn).await;
        assert_eq!(
            status, 200,
            "the next request on the connection, after {len}"
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["meta"]["complete"], true);
    }
    // A long URL within the bound is read as usual (here: a 400 for too many items).
    let path = format!(
        "/v1/interactions?from=2024-09-01&to=2024-09-01&channels={}",
        "a,".repeat(5000)
    );
    assert_eq!(problem(h.get(&path).await).await.0, 400);
    h.finish();
}

#[tokio::test]
async fn jquerys_cache_buster_is_ignored_and_keys_nothing() {
    let h = Harness::start(Opts::default()).await;
    for path in [
        "/v1/interactions?from=2024-09-03&to=2024-09-03",
        "/v1/interactions?from=2024-09-03&to=2024-09-03&format=csv",
        "/v1/interactions/summary?from=2024-09-03&to=2024-09-03&group_by=channel",
    ] {
        let first = h.get(path).await;
        assert_eq!(first.status(), 200);
        let first = first.text().await.unwrap();
        let calls = h.calls();
        for buster in ["1700000000000", "1700000000001", ""] {
            let r = h.get(&format!("{path}&_={buster}")).await;
            assert_eq!(r.status(), 200, "{path} _={buster}");
            let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
            assert!(status.contains("; hit"), "the stored answer: {status}");
            let text = r.text().await.unwrap();
            if !path.contains("format=csv") {
                let (a, b): (Value, Value) = (
                    serde_json::from_str(&first).unwrap(),
                    serde_json::from_str(&text).unwrap(),
                );
                assert_eq!(a["data"], b["data"]);
                assert_eq!(a["groups"], b["groups"]);
            } else {
                assert_eq!(first, text);
            }
        }
        assert_eq!(h.calls(), calls, "{path}");
    }
    for path in ["/v1/jobs?_=1", "/status.json?_=1"] {
        assert_eq!(h.get(path).await.status(), 200, "{path}");
    }
    h.finish();
}

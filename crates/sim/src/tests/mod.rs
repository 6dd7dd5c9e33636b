//! Tests of the simulator, driven through its router (and once over a real socket).

use std::time::Duration;

use axum::body::{Body, to_bytes};
use http::{HeaderMap, Request};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

const ALL_FIELDS: [&str; 4] = [
    "userleveltags",
    "sessionleveltags",
    "customerinfo",
    "skills",
];

fn cfg() -> SimConfig {
    SimConfig {
        latency: Duration::ZERO,
        ..SimConfig::demo()
    }
}

fn path(account: &str) -> String {
    VENDOR_PATH.replace("{accountId}", account)
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn now() -> u64 {
    unix_now() as u64
}

fn sign(claims: &Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign test token")
}

fn body(start: &str, end: &str, offset: i32) -> Value {
    json!({ "startDate": start, "endDate": end, "timeZoneOffset": offset, "selectedFields": ALL_FIELDS })
}

/// A request that passes every rule unless the test changes it.
fn request(sim: &Simulator, query: &str, body: &Value) -> Request<Body> {
    let c = sim.config();
    Request::post(format!("{}?{query}", path(&c.account_id)))
        .header("auth", mint_test_jwt(&c.client_id, &c.client_secret, None))
        .header("accountId", &c.account_id)
        .header("content-type", "application/json;charset=UTF-8")
        .header("x-request-id", "test-req")
        .body(Body::from(body.to_string()))
        .expect("test request")
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, axum::Error>,
}

impl Answer {
    fn json(&self) -> Value {
        let bytes = self.body.as_ref().expect("complete body");
        serde_json::from_slice(bytes).expect("JSON body")
    }
}

async fn send(sim: &Simulator, req: Request<Body>) -> Answer {
    let resp = sim
        .router()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Answer {
        status,
        headers,
        body: to_bytes(resp.into_body(), usize::MAX).await,
    }
}

async fn post(sim: &Simulator, query: &str, b: &Value) -> Answer {
    send(sim, request(sim, query, b)).await
}

fn rules_broken(sim: &Simulator) -> Vec<String> {
    sim.violations().into_iter().map(|v| v.rule).collect()
}

/// Fetches every page of a query through the router.
async fn all_pages(sim: &Simulator, b: &Value, limit: u32) -> (u64, Vec<Value>) {
    let mut out = Vec::new();
    let mut total = 0;
    for page in 0..=10u32 {
        let a = post(sim, &format!("offset={page}&limit={limit}"), b).await;
        assert_eq!(a.status, 200);
        let v = a.json();
        total = v["numResults"].as_u64().expect("numResults");
        let data = v["data"].as_array().expect("data").clone();
        let short = data.len() < limit as usize;
        out.extend(data);
        if short {
            break;
        }
    }
    (total, out)
}

fn all_fields() -> Option<Vec<String>> {
    Some(ALL_FIELDS.iter().map(|s| s.to_string()).collect())
}

#[tokio::test]
async fn valid_request_answers_page_and_logs_without_violation() {
    let sim = Simulator::new(cfg());
    let b = body("2024-09-26 00:00:00", "2024-09-26 23:59:59", -330);
    let a = post(&sim, "offset=0&limit=10", &b).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let truth = sim.truth(
        ts("2024-09-25T18:30:00Z"),
        ts("2024-09-26T18:29:59Z"),
        -330,
        &SimFilter {
            selected_fields: all_fields(),
            ..SimFilter::default()
        },
    );
    assert_eq!(v["numResults"].as_u64(), Some(truth.len() as u64));
    assert_eq!(v["data"].as_array().map(Vec::as_slice), Some(&truth[..10]));
    assert!(
        a.body
            .as_ref()
            .is_ok_and(|b| b.starts_with(b"{\"numResults\":"))
    );
    assert!(sim.violations().is_empty());

    let calls = sim.calls();
    assert_eq!((sim.call_count(), sim.count_status(200)), (1, 1));
    let c = &calls[0];
    assert_eq!(
        (c.status, c.page, c.limit, c.offset_minutes),
        (200, Some(0), Some(10), Some(-330))
    );
    assert_eq!(c.start_utc, Some(ts("2024-09-25T18:30:00Z")));
    assert_eq!(c.end_utc, Some(ts("2024-09-26T18:29:59Z")));
    assert_eq!((c.returned, c.num_results), (10, Some(truth.len() as u64)));
    assert_eq!(c.request_id.as_deref(), Some("test-req"));
    assert_eq!(c.selected_fields, all_fields());

    sim.reset_log();
    assert_eq!(
        (sim.call_count(), sim.calls().len(), sim.count_status(200)),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn jwt_rules() {
    let sim = Simulator::new(cfg());
    let c = sim.config().clone();
    let t = now();
    let good = json!({ "appId": c.client_id, "iat": t, "exp": t + 60 });
    let cases: Vec<(Option<String>, Option<&str>)> = vec![
        (None, Some("jwt_missing")),
        (Some("not-a-jwt".into()), Some("jwt_invalid")),
        (
            Some(format!(
                "Bearer {}",
                sign(&good, &c.client_secret, Algorithm::HS256)
            )),
            Some("jwt_invalid"),
        ),
        (
            Some(sign(&good, "wrong-secret", Algorithm::HS256)),
            Some("jwt_invalid"),
        ),
        (
            Some(sign(&good, &c.client_secret, Algorithm::HS512)),
            Some("jwt_invalid"),
        ),
        (
            Some(sign(
                &json!({ "appid": c.client_id }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            Some("jwt_app_id"),
        ),
        (
            Some(sign(
                &json!({ "appId": "cs-other" }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            Some("jwt_app_id"),
        ),
        (
            Some(sign(
                &json!({ "appId": c.client_id, "exp": t - 60 }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            Some("jwt_expired"),
        ),
        (
            Some(sign(
                &json!({ "appId": c.client_id, "exp": "soon" }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            Some("jwt_invalid"),
        ),
        // Within the 5 s leeway, and the vendor's own samples carry no `exp` at all.
        (
            Some(sign(
                &json!({ "appId": c.client_id, "exp": t - 2 }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            None,
        ),
        (
            Some(sign(
                &json!({ "appId": c.client_id }),
                &c.client_secret,
                Algorithm::HS256,
            )),
            None,
        ),
        (Some(sign(&good, &c.client_secret, Algorithm::HS256)), None),
    ];
    let b = body("2024-09-26", "2024-09-26", -330);
    for (token, rule) in cases {
        let mut req = request(&sim, "", &b);
        req.headers_mut().remove("auth");
        if let Some(t) = &token {
            req.headers_mut()
                .insert("auth", t.parse().expect("header value"));
        }
        let before = sim.violations().len();
        let a = send(&sim, req).await;
        match rule {
            Some(rule) => {
                assert_eq!(a.status, 401, "{rule}");
                assert_eq!(rules_broken(&sim)[before..], [rule.to_owned()]);
            }
            None => {
                assert_eq!(a.status, 200);
                assert_eq!(sim.violations().len(), before);
            }
        }
    }
    // The secret never shows in Debug output.
    assert!(!format!("{c:?}").contains(&c.client_secret));
}

#[tokio::test]
async fn jti_rules() {
    let sim = Simulator::new(SimConfig {
        require_jti: true,
        ..cfg()
    });
    let c = sim.config().clone();
    let t = now();
    let b = body("2024-09-26", "2024-09-26", -330);
    let with = |claims: Value| {
        let mut req = request(&sim, "", &b);
        let token = sign(&claims, &c.client_secret, Algorithm::HS256);
        req.headers_mut()
            .insert("auth", token.parse().expect("header value"));
        req
    };
    let cases = [
        (
            json!({ "appId": c.client_id, "iat": t, "exp": t + 60 }),
            401,
            Some("jwt_jti_missing"),
        ),
        (
            json!({ "appId": c.client_id, "iat": t, "exp": t + 60, "jti": "j-1" }),
            200,
            None,
        ),
        (
            json!({ "appId": c.client_id, "iat": t, "exp": t + 60, "jti": "j-1" }),
            401,
            Some("jwt_jti_reused"),
        ),
        (
            json!({ "appId": c.client_id, "iat": t, "exp": t + 3601, "jti": "j-2" }),
            401,
            Some("jwt_lifetime"),
        ),
        (
            json!({ "appId": c.client_id, "jti": "j-3" }),
            401,
            Some("jwt_lifetime"),
        ),
        (
            json!({ "appId": c.client_id, "iat": t, "exp": t + 3600, "jti": "j-2" }),
            200,
            None,
        ),
    ];
    for (claims, status, rule) in cases {
        let before = sim.violations().len();
        let a = send(&sim, with(claims.clone())).await;
        assert_eq!(a.status, status, "{claims}");
        let new: Vec<String> = rules_broken(&sim)[before..].to_vec();
        assert_eq!(new, rule.map(str::to_owned).into_iter().collect::<Vec<_>>());
    }
    // mint_test_jwt's tokens satisfy a jti account.
    let a = post(&sim, "", &b).await;
    assert_eq!(a.status, 401, "a token without jti is refused");
    let mut req = request(&sim, "", &b);
    let token = mint_test_jwt(&c.client_id, &c.client_secret, Some("j-4"));
    req.headers_mut()
        .insert("auth", token.parse().expect("header value"));
    assert_eq!(send(&sim, req).await.status, 200);
}

#[tokio::test]
async fn account_rules() {
    let sim = Simulator::new(cfg());
    let b = body("2024-09-26", "2024-09-26", -330);
    let account = sim.config().account_id.clone();

    let mut req = request(&sim, "", &b);
    req.headers_mut().remove("accountId");
    assert_eq!(send(&sim, req).await.status, 400);

    let mut req = request(&sim, "", &b);
    req.headers_mut()
        .insert("accountId", "someone-else".parse().expect("header value"));
    assert_eq!(send(&sim, req).await.status, 401);

    let mut req = request(&sim, "", &b);
    *req.uri_mut() = path("someone-else").parse().expect("uri");
    req.headers_mut()
        .insert("accountId", "someone-else".parse().expect("header value"));
    assert_eq!(send(&sim, req).await.status, 401);

    assert_eq!(
        rules_broken(&sim),
        [
            "account_header_missing",
            "account_mismatch",
            "account_unknown"
        ]
    );

    // The vendor's curl sample spells the route in lower case: both are served.
    let mut req = request(&sim, "", &b);
    *req.uri_mut() =
        format!("/agentassist/api/public/analytics/account/{account}/v2/interactiondetails")
            .parse()
            .expect("uri");
    assert_eq!(send(&sim, req).await.status, 200);
}

#[tokio::test]
async fn paging_parameter_rules() {
    let sim = Simulator::new(cfg());
    let b = body("2024-09-26", "2024-09-26", -330);
    for (q, rule) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("offset=11", "offset"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
    ] {
        let before = sim.violations().len();
        assert_eq!(post(&sim, q, &b).await.status, 400, "{q}");
        assert_eq!(rules_broken(&sim)[before..], [rule.to_owned()], "{q}");
    }
    for q in ["", "offset=10&limit=100", "limit=1", "offset=0"] {
        assert_eq!(post(&sim, q, &b).await.status, 200, "{q}");
    }
    assert_eq!(sim.violations().len(), 6);
}

#[tokio::test]
async fn body_rules() {
    let sim = Simulator::new(cfg());
    let ok = body("2024-09-20 00:00:00", "2024-09-26 23:59:59", -330);
    let with = |key: &str, v: Value| {
        let mut b = ok.clone();
        b[key] = v;
        b.to_string()
    };
    let without = |key: &str| {
        let mut b = ok.clone();
        b.as_object_mut().map(|m| m.remove(key));
        b.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "body_json"),
        ("[1,2]".into(), "body_json"),
        (String::new(), "body_json"),
        (without("startDate"), "startDate"),
        (without("endDate"), "endDate"),
        (with("startDate", json!("2024-09-20T00:00:00")), "startDate"),
        (with("startDate", json!("2024-02-30")), "startDate"),
        (with("startDate", json!("2024-09-20 25:00:00")), "startDate"),
        (with("startDate", json!(20240920)), "startDate"),
        (with("endDate", json!("2024-09-26 23:59")), "endDate"),
        (with("endDate", json!("2024-09-19 23:59:59")), "date_order"),
        (with("endDate", json!("2024-09-27 00:00:01")), "date_range"),
        (with("endDate", json!("2024-09-27")), "date_range"),
        (without("timeZoneOffset"), "timeZoneOffset"),
        (with("timeZoneOffset", json!(900)), "timeZoneOffset"),
        (with("timeZoneOffset", json!(-330.5)), "timeZoneOffset"),
        (with("timeZoneOffset", json!("-330")), "timeZoneOffset"),
        (
            with("selectedFields", json!(["skills", "agents"])),
            "selectedFields",
        ),
        (with("selectedFields", json!("skills")), "selectedFields"),
        (with("channels", json!("voice")), "channels"),
        (with("queues", json!([1])), "queues"),
        (with("bots", json!({})), "bots"),
    ];
    for (text, rule) in &cases {
        let before = sim.violations().len();
        let mut req = request(&sim, "", &json!(null));
        *req.body_mut() = Body::from(text.clone());
        let a = send(&sim, req).await;
        assert_eq!(a.status, 400, "{rule}: {text}");
        assert_eq!(rules_broken(&sim)[before..], [rule.to_string()], "{text}");
        assert!(a.json()["errors"].is_array());
    }
    let mut req = request(&sim, "", &ok);
    req.headers_mut()
        .insert("content-type", "text/plain".parse().expect("header value"));
    assert_eq!(send(&sim, req).await.status, 400);
    assert_eq!(
        rules_broken(&sim).last().map(String::as_str),
        Some("content_type")
    );

    // Exactly 7 days is allowed; so are date-only bounds, null filters and an extreme offset.
    let before = sim.violations().len();
    for b in [
        body("2024-09-20 00:00:00", "2024-09-27 00:00:00", -330),
        body("2024-09-20", "2024-09-26", 300),
        json!({ "startDate": "2024-09-20", "endDate": "2024-09-20", "timeZoneOffset": 840,
                "channels": null, "selectedFields": [] }),
        json!({ "startDate": "2024-09-20", "endDate": "2024-09-20", "timeZoneOffset": -840, "extra": 1 }),
    ] {
        assert_eq!(post(&sim, "", &b).await.status, 200, "{b}");
    }
    assert_eq!(sim.violations().len(), before);
}

#[tokio::test]
async fn date_only_bounds_cover_whole_days_in_local_time() {
    let sim = Simulator::new(cfg());
    post(&sim, "", &body("2024-09-20", "2024-09-26", 300)).await;
    let c = &sim.calls()[0];
    // New York winter offset 300: local midnight is 05:00 UTC.
    assert_eq!(c.start_utc, Some(ts("2024-09-20T05:00:00Z")));
    assert_eq!(c.end_utc, Some(ts("2024-09-27T04:59:59Z")));
}

#[tokio::test]
async fn pages_cover_every_record_once_and_equal_truth() {
    let sim = Simulator::new(cfg());
    let b = body("2024-09-02 00:00:00", "2024-09-05 12:00:00", -330);
    let (total, records) = all_pages(&sim, &b, 37).await;
    let truth = sim.truth(
        ts("2024-09-01T18:30:00Z"),
        ts("2024-09-05T06:30:00Z"),
        -330,
        &SimFilter {
            selected_fields: all_fields(),
            ..SimFilter::default()
        },
    );
    assert!((100..=400).contains(&truth.len()), "{}", truth.len());
    assert_eq!(total, truth.len() as u64);
    assert_eq!(records, truth);

    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["sessionId"].as_str())
        .collect();
    assert_eq!(ids.len(), records.len());
    assert!(ids.len() >= 2, "{} records", ids.len());
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "sorted by sessionId, no duplicates"
    );
    // ... and not by time: the gateway has to sort.
    let starts: Vec<&str> = records
        .iter()
        .filter_map(|r| r["sessionStartTime"].as_str())
        .collect();
    assert!(starts.windows(2).any(|w| w[0] > w[1]));
    // A page past the end is empty but still carries the total.
    let a = post(&sim, "offset=10&limit=100", &b).await;
    assert_eq!(a.json()["numResults"].as_u64(), Some(total));
    assert_eq!(a.json()["data"].as_array().map(Vec::len), Some(0));
    assert!(sim.violations().is_empty());
}

mod data;
mod faults;
mod live;

//! Tests of the simulator, driven through its router (and once over a real socket).

use std::time::Duration;

use axum::body::{Body, to_bytes};
use http::{HeaderMap, Request};
use jiff::{Timestamp, civil::Date};
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

#[tokio::test(start_paused = true)]
async fn rate_limit_is_a_sliding_window_over_every_call() {
    let sim = Simulator::new(SimConfig {
        rate_limit: Some((3, Duration::from_secs(60))),
        ..cfg()
    });
    let b = body("2024-09-26", "2024-09-26", -330);
    // A call that fails another rule still counts.
    let mut req = request(&sim, "", &b);
    req.headers_mut().remove("auth");
    assert_eq!(send(&sim, req).await.status, 401);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(post(&sim, "", &b).await.status, 200);
    assert_eq!(post(&sim, "", &b).await.status, 200);
    let a = post(&sim, "", &b).await;
    assert_eq!(a.status, 429);
    let retry: u64 = a.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert_eq!(retry, 30, "the first call leaves the window in 30 s");
    assert_eq!(rules_broken(&sim), ["jwt_missing", "rate_limit"]);

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        post(&sim, "", &b).await.status,
        200,
        "the first call has left the window"
    );
    assert_eq!(post(&sim, "", &b).await.status, 429);
    assert_eq!(sim.count_status(429), 2);
}

async fn with_fault(kind: FaultKind) -> (Simulator, Answer, Vec<Value>) {
    let sim = Simulator::new(cfg());
    sim.set_faults(Faults {
        error_rate: 1.0,
        kinds: vec![kind],
        ..Faults::default()
    });
    let b = body("2024-09-26", "2024-09-26", -330);
    let a = post(&sim, "limit=5", &b).await;
    let truth = sim.truth(
        ts("2024-09-25T18:30:00Z"),
        ts("2024-09-26T18:29:59Z"),
        -330,
        &SimFilter {
            selected_fields: all_fields(),
            ..SimFilter::default()
        },
    );
    assert!(
        sim.violations().is_empty(),
        "an injected fault is not a violation"
    );
    (sim, a, truth)
}

#[tokio::test(start_paused = true)]
async fn injected_faults() {
    for (kind, status) in [
        (FaultKind::Status500, 500),
        (FaultKind::Status502, 502),
        (FaultKind::Status503, 503),
    ] {
        let (sim, a, _) = with_fault(kind.clone()).await;
        assert_eq!(a.status, status);
        assert_eq!(sim.calls()[0].fault, Some(format!("{kind:?}")));
    }
    let (_, a, _) = with_fault(FaultKind::TooManyRequests {
        retry_after_secs: 7,
    })
    .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["retry-after"], "7");

    let (_, a, truth) = with_fault(FaultKind::TruncatedBody).await;
    assert_eq!(a.status, 200);
    let bytes = a.body.expect("complete (but short) body");
    assert!(serde_json::from_slice::<Value>(&bytes).is_err());
    let clean = post(
        &Simulator::new(cfg()),
        "limit=5",
        &body("2024-09-26", "2024-09-26", -330),
    )
    .await;
    let full = clean.body.expect("complete body");
    assert_eq!(&bytes[..], &full[..full.len() / 2]);
    assert_eq!(
        serde_json::from_slice::<Value>(&full)
            .ok()
            .map(|v| v["numResults"].clone()),
        Some(json!(truth.len()))
    );

    let (sim, a, _) = with_fault(FaultKind::DropConnection).await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_err(), "the body stream breaks");
    assert_eq!(sim.calls()[0].fault.as_deref(), Some("DropConnection"));

    let (sim, a, truth) = with_fault(FaultKind::WrongNumResults).await;
    let v = a.json();
    let n = v["numResults"].as_u64().expect("numResults");
    assert!(n != truth.len() as u64 && n.abs_diff(truth.len() as u64) <= 3);
    assert_eq!(v["data"].as_array().map(Vec::as_slice), Some(&truth[..5]));
    assert_eq!(sim.calls()[0].num_results, Some(n));

    let started = tokio::time::Instant::now();
    let (_, a, _) = with_fault(FaultKind::Slow(Duration::from_secs(3))).await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_secs(3));

    // Latency applies to every answer, faults or not.
    let sim = Simulator::new(cfg());
    sim.set_latency(Duration::from_millis(250));
    let started = tokio::time::Instant::now();
    post(&sim, "", &body("2024-09-26", "2024-09-26", -330)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn fault_draws_are_reproducible_and_respect_the_rate() {
    let kinds = vec![
        FaultKind::Status500,
        FaultKind::Status503,
        FaultKind::WrongNumResults,
    ];
    let run = |error_rate: f64| {
        let kinds = kinds.clone();
        async move {
            let sim = Simulator::new(cfg());
            sim.set_faults(Faults {
                error_rate,
                kinds,
                ..Faults::default()
            });
            let b = body("2024-09-26", "2024-09-26", -330);
            for _ in 0..40 {
                post(&sim, "limit=1", &b).await;
            }
            sim.calls().into_iter().map(|c| c.fault).collect::<Vec<_>>()
        }
    };
    let first = run(0.5).await;
    assert_eq!(first, run(0.5).await);
    let faulted = first.iter().flatten().count();
    assert!((8..=32).contains(&faulted), "{faulted} of 40");
    let clean = run(0.0).await;
    assert_eq!(clean.len(), first.len());
    assert!(clean.iter().all(Option::is_none));
}

#[tokio::test]
async fn serves_over_a_real_socket_and_breaks_connections_for_real() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sim, addr) = Simulator::spawn(cfg()).await.expect("bind loopback");
    let raw_call = |body: String| {
        let c = sim.config().clone();
        async move {
            let token = mint_test_jwt(&c.client_id, &c.client_secret, None);
            let req = format!(
                "POST {}?offset=0&limit=3 HTTP/1.1\r\nhost: sim\r\nauth: {token}\r\naccountId: {}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                path(&c.account_id),
                c.account_id,
                body.len()
            );
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let b = body("2024-09-26", "2024-09-26", -330).to_string();
    let ok = raw_call(b.clone()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"numResults\":"));

    sim.set_faults(Faults {
        error_rate: 1.0,
        kinds: vec![FaultKind::DropConnection],
        ..Faults::default()
    });
    let broken = raw_call(b).await;
    assert!(broken.starts_with("HTTP/1.1 200"), "{broken}");
    assert!(
        !broken.ends_with("0\r\n\r\n"),
        "the chunked body never terminates"
    );

    // The human views answer JSON.
    let calls = send(
        &sim,
        Request::get("/__sim/calls")
            .body(Body::empty())
            .expect("req"),
    )
    .await
    .json();
    assert_eq!(calls["total"], 2);
    assert_eq!(calls["calls"][1]["fault"], "DropConnection");
    let v = send(
        &sim,
        Request::get("/__sim/violations")
            .body(Body::empty())
            .expect("req"),
    )
    .await
    .json();
    assert_eq!(v["count"], 0);
}

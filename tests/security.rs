//! Security properties a reviewer would check: the client secret, minted tokens and API keys
//! never leave the process (logs at every level, error bodies, metrics, the OpenAPI document,
//! `Debug`), limits hold, and no caller can point the gateway at another host.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use common::*;
use kore_sim::{SimConfig, Simulator};
use tracing_subscriber::fmt::MakeWriter;

/// Every log line of this test binary, at TRACE level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(c.clone())
            .with_ansi(false)
            .init();
        c
    })
}

#[tokio::test]
async fn secrets_never_leave_the_process() {
    let logs = logs();
    // A gateway whose secret is wrong: the upstream refuses its tokens (401), it re-mints,
    // fails again and answers 502 — the path most likely to log too much.
    let (sim, sim_addr) = Simulator::spawn(SimConfig::demo()).await.unwrap();
    let mut settings = settings_for(&sim, sim_addr, &Opts::default());
    let wrong_secret = "wrong-but-still-secret-value-42";
    settings.accounts[0].upstream.client_secret =
        secrecy::SecretString::from(wrong_secret.to_owned());
    let bad = kore_gateway::build(settings).unwrap();
    let bad_dbg = format!("{bad:?}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, kore_gateway::app(bad)).await });

    let h = Harness::start(Opts::default()).await;
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    let r = http
        .get(format!(
            "http://{bad_addr}/v1/interactions?from=2024-09-01&to=2024-09-02"
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "refused credentials are an upstream failure"
    );
    bodies.push_str(&r.text().await.unwrap());
    // Each route under a team key, an admin key, a guessed key and none: the expected status
    // of each, so every path that writes a body (errors included) is really exercised.
    for (path, statuses) in [
        (
            "/v1/interactions?from=2024-09-01&to=2024-09-02",
            [200, 200, 401, 401],
        ),
        (
            "/v1/interactions?from=2024-09-01&to=2024-09-02&format=csv",
            [200, 200, 401, 401],
        ),
        ("/v1/interactions?from=bad", [400, 400, 401, 401]),
        ("/v1/cache", [403, 200, 401, 401]),
        ("/metrics", [200, 200, 200, 200]),
        ("/openapi.json", [200, 200, 200, 200]),
        ("/readyz", [200, 200, 200, 200]),
    ] {
        let keys = [Some(KEY), Some(ADMIN_KEY), Some("guess-key-000"), None];
        for (key, status) in keys.into_iter().zip(statuses) {
            let r = h.get_with(path, key).await;
            assert_eq!(r.status(), status, "{path} with {key:?}");
            bodies.push_str(&r.text().await.unwrap());
        }
    }
    assert!(
        h.calls() > 0,
        "the good gateway called the upstream, minting tokens"
    );
    let state_dbg = format!("{:?}", h.state);
    let cfg = SimConfig::demo();
    // Every HS256 token the gateway mints starts with the same encoded header segment.
    let token_header = kore_sim::mint_test_jwt(&cfg.client_id, &cfg.client_secret, None);
    let token_header = format!("{}.", token_header.split('.').next().unwrap());
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log_text.len() > 1000,
        "TRACE logs were captured ({} bytes)",
        log_text.len()
    );
    for (what, text) in [
        ("logs", &log_text),
        ("bodies", &bodies),
        ("Debug of the app", &state_dbg),
        ("Debug of the bad app", &bad_dbg),
    ] {
        for secret in [
            cfg.client_secret.as_str(),
            wrong_secret,
            KEY,
            KEY_B,
            ADMIN_KEY,
            "guess-key-000",
        ] {
            assert!(
                !text.contains(secret),
                "{what} contain a secret or key ({secret})"
            );
        }
        assert!(
            !text.contains(&token_header),
            "{what} contain a minted token"
        );
    }
    h.finish();
    let violations = sim.violations();
    assert!(
        !violations.is_empty(),
        "the wrong-secret gateway's calls were refused"
    );
    assert!(
        violations.iter().all(|v| v.rule.starts_with("jwt")),
        "only the wrong-secret gateway broke rules"
    );
}

#[tokio::test]
async fn body_and_header_limits_hold() {
    let h = Harness::start(Opts::default()).await;
    let path = format!(
        "{}/agentassist/api/public/analytics/account/{}/v2/interactionDetails",
        h.base,
        SimConfig::demo().account_id
    );
    let big = format!(
        "{{\"startDate\":\"2024-09-01\",\"endDate\":\"2024-09-01\",\"timeZoneOffset\":0,\"channels\":[\"{}\"]}}",
        "x".repeat(100_000)
    );
    let r = h
        .http
        .post(&path)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let mut req = h
        .http
        .get(format!(
            "{}/v1/interactions?from=2024-09-01&to=2024-09-01",
            h.base
        ))
        .bearer_auth(KEY);
    for i in 0..200 {
        req = req.header(format!("x-filler-{i}"), "y".repeat(200));
    }
    let r = req
        .send()
        .await
        .expect("the gateway answers oversized headers");
    assert_eq!(r.status(), 431, "oversized headers are refused");
    let long_query = format!(
        "/v1/interactions?from=2024-09-01&to=2024-09-01&channels={}",
        "a,".repeat(5000)
    );
    assert_eq!(
        h.get(&long_query).await.status(),
        400,
        "too many list items"
    );
    assert_eq!(h.calls(), 0);
    h.finish();
}

#[tokio::test]
async fn no_caller_can_choose_the_upstream_host() {
    let h = Harness::start(Opts::default()).await;
    let (evil, evil_addr) = Simulator::spawn(SimConfig::demo()).await.unwrap();
    let evil_host = evil_addr.to_string();
    let q = "/v1/interactions?from=2024-09-01&to=2024-09-01";
    let tries = [
        h.http
            .get(format!("{}{q}", h.base))
            .bearer_auth(KEY)
            .header("Host", &evil_host),
        h.http
            .get(format!("{}{q}", h.base))
            .bearer_auth(KEY)
            .header("X-Forwarded-Host", &evil_host),
        h.http
            .get(format!("{}{q}&base_url=http://{evil_host}", h.base))
            .bearer_auth(KEY),
        h.http
            .get(format!(
                "{}/v1/interactions/../../http://{evil_host}/x",
                h.base
            ))
            .bearer_auth(KEY),
    ];
    // A foreign Host or X-Forwarded-Host changes nothing (served from the configured
    // upstream); a `base_url` parameter is unknown (400); a path that tries to smuggle a URL
    // is no route (404).
    for (t, status) in tries.into_iter().zip([200, 200, 400, 404]) {
        let r = t.send().await.unwrap();
        assert_eq!(r.status(), status, "{}", r.url());
    }
    let path = format!(
        "{}/agentassist/api/public/analytics/account/{}/v2/interactionDetails",
        h.base,
        SimConfig::demo().account_id
    );
    let r = h
        .http
        .post(&path)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"startDate\":\"2024-09-02\",\"endDate\":\"2024-09-02\",\"timeZoneOffset\":0,\"host\":\"{evil_host}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "unknown body fields are refused, not ignored"
    );
    let other_account = format!(
        "{}/agentassist/api/public/analytics/account/someone-else/v2/interactionDetails",
        h.base
    );
    let r = h
        .http
        .post(&other_account)
        .bearer_auth(KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Every request above was answered, and an answer comes after its upstream calls.
    assert_eq!(evil.call_count(), 0, "nothing reached another host");
    assert!(
        h.calls() > 0,
        "the legitimate requests went to the configured upstream"
    );
    h.finish();
}

#[test]
fn key_comparison_is_by_digest_over_every_key() {
    // Behavioural half of the constant-time claim: a key that shares a long prefix with a real
    // one is as unknown as any other; the timing half is by construction (a randomly keyed
    // SipHash picks the bucket, then an XOR-fold compare of every key in it) in src/api/auth.rs.
    let keys = kore_gateway::config::parse_api_keys(&format!("team-a:{KEY},admin-ops:{ADMIN_KEY}"))
        .unwrap();
    let ring = kore_gateway::api::auth::KeyRing::new(&keys, false);
    assert!(ring.identify(KEY).is_some());
    assert!(ring.identify(&KEY[..KEY.len() - 1]).is_none());
    assert!(ring.identify(&format!("{KEY}0")).is_none());
    assert!(ring.identify(&KEY.to_uppercase()).is_none());
}

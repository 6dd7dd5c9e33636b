//! The rate rule, injected faults and a real socket.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use serde_json::{Value, json};

use super::*;

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

//! Traces over OTLP/HTTP: an OTLP receiver on loopback in the test, the gateway's spans
//! decoded with the OpenTelemetry protobuf definitions (`opentelemetry-proto`), checked for
//! the caller's trace, the parent/child structure request → window → window.fetch →
//! upstream.call, their attributes, and the `traceparent` the upstream received.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use common::*;
use kore_gateway::telemetry::{OtelConfig, Telemetry};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
};
use prost::Message;
use tracing_subscriber::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode(bodies: &[Bytes]) -> Vec<Span> {
    let mut out = Vec::new();
    for body in bodies {
        let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(AnyValue::StringValue(s)) => s.clone(),
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                                Some(AnyValue::BoolValue(b)) => b.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    out.push(Span {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs,
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_callers_trace_and_their_structure() {
    // The receiver: collects every POST /v1/traces body.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(r): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes| async move {
                    r.lock().unwrap().push(body);
                    ""
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cfg = OtelConfig::from_vars(|k| {
        (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| format!("http://{addr}"))
    })
    .expect("tracing is on");
    let telemetry = Telemetry::start(&cfg).expect("exporter");
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(telemetry.layer())
        .init();

    let h = Harness::start(Opts::default()).await;
    // Two windows (the range crosses a Monday); the second request is another page size,
    // so it is not a rendered-response hit but takes both windows from the window cache.
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    for limit in [5, 6] {
        let path = format!("/v1/interactions?from=2024-09-20&to=2024-09-26&limit={limit}");
        let resp = h
            .http
            .get(format!("{}{}", h.base, path))
            .bearer_auth(KEY)
            .header("traceparent", &traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let upstream_calls = h.sim.calls();
    assert!(!upstream_calls.is_empty());

    // Flush (blocking: the exporter's requests run on this runtime's other worker).
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let provider = telemetry.provider.clone();
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .unwrap()
            .expect("flush");
        let bodies = received.lock().unwrap().clone();
        let spans = decode(&bodies);
        if spans.iter().filter(|s| s.name == "request").count() >= 2 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_str()).copied();

    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "request").collect();
    for r in &requests {
        assert_eq!(r.trace_id, TRACE_ID, "the caller's trace is kept");
        assert_eq!(r.parent, CALLER_SPAN, "the caller's span is the parent");
        assert_eq!(
            r.attrs.get("path").map(String::as_str),
            Some("/v1/interactions")
        );
        assert!(r.attrs.contains_key("request_id"));
    }
    let windows: Vec<&Span> = spans.iter().filter(|s| s.name == "window").collect();
    assert_eq!(windows.len(), 4, "a window span per window and request");
    for w in &windows {
        assert_eq!(
            parent_of(w).map(|p| p.name.as_str()),
            Some("request"),
            "{w:?}"
        );
    }
    let tiers: Vec<&str> = windows
        .iter()
        .filter_map(|w| w.attrs.get("cache").map(String::as_str))
        .collect();
    assert!(tiers.contains(&"miss"), "first request misses: {tiers:?}");
    assert!(tiers.contains(&"memory"), "second request hits: {tiers:?}");
    let calls: Vec<&Span> = spans.iter().filter(|s| s.name == "upstream.call").collect();
    assert_eq!(
        calls.len(),
        upstream_calls.len(),
        "a span per upstream call"
    );
    for c in &calls {
        let fetch = parent_of(c).expect("upstream.call has a parent");
        assert_eq!(fetch.name, "window.fetch");
        let window = parent_of(fetch).expect("window.fetch has a parent");
        assert_eq!(window.name, "window");
        assert_eq!(c.trace_id, TRACE_ID);
        assert_eq!(c.attrs.get("outcome").map(String::as_str), Some("ok"));
        for key in ["budget_wait_seconds", "attempt", "page", "request_id"] {
            assert!(c.attrs.contains_key(key), "{key} missing on {c:?}");
        }
    }
    // The upstream got the trace context of the call's own span.
    let call_ids: Vec<&str> = calls.iter().map(|c| c.span_id.as_str()).collect();
    for logged in &upstream_calls {
        let tp = logged
            .traceparent
            .as_deref()
            .expect("traceparent sent upstream");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], TRACE_ID, "{tp}");
        assert!(
            call_ids.contains(&parts[2]),
            "{tp} names an upstream.call span"
        );
    }
    h.finish();
}

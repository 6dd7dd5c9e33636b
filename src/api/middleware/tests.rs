//! The hand-written layers, driven without a socket: request ids, spans, metrics, panics,
//! compression and the deadline.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use http_body::Frame;

use crate::api::stored::Precompressed;
use crate::{
    cache::CacheCounters,
    encoding::{Coding, Streaming},
};

use std::io::Read;

use axum::{Router, routing::get};
use tower::{Layer, ServiceExt};

use super::{compress::*, edge::*};

/// A router behind the edge layer alone.
fn edged(router: Router) -> Router {
    router.layer(EdgeLayer::default())
}

async fn send(app: Router, req: Request) -> (Response, Bytes) {
    let resp = app.oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    (Response::from_parts(parts, Body::empty()), bytes)
}

fn get_req(path: &str, headers: &[(&str, &str)]) -> Request {
    let mut b = axum::http::Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).expect("request")
}

fn is_uuid_v4(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[tokio::test]
async fn a_panic_in_a_handler_or_in_a_call_is_a_500_problem_with_the_request_id() {
    let app = edged(Router::new().route(
        "/boom",
        get(|| async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            "unreachable"
        }),
    ));
    let (resp, body) = send(app, get_req("/boom", &[("x-request-id", "abc-1")])).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(resp.headers()["x-request-id"], "abc-1");
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(problem["status"], 500);
    assert!(
        !String::from_utf8_lossy(&body).contains("a bug"),
        "the panic's message stays in the log"
    );

    // A service whose call itself panics, before it has a future.
    let svc = EdgeLayer::default().layer(tower::service_fn(|_: Request| {
        if std::hint::black_box(true) {
            panic!("in call");
        }
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    }));
    let resp = svc.oneshot(get_req("/", &[])).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = resp.headers()["x-request-id"].to_str().expect("ascii");
    assert!(is_uuid_v4(id), "{id}");
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_made_otherwise() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = {
        let seen = Arc::clone(&seen);
        edged(Router::new().route(
            "/id",
            get(move |id: super::super::RequestId| {
                seen.lock().expect("lock").push(id.0.to_string());
                async { "ok" }
            }),
        ))
    };
    let long = "x".repeat(129);
    let cases: [(Option<&str>, bool); 7] = [
        (Some("trace-abc-123"), true),
        (Some(""), false),
        (Some(&long[..128]), true),
        (Some(&long), false),
        (Some("has space"), false),
        (Some("caf\u{e9}"), false),
        (None, false),
    ];
    for (sent, kept) in cases {
        let headers: Vec<(&str, &str)> = sent.map(|v| ("x-request-id", v)).into_iter().collect();
        let (resp, _) = send(app.clone(), get_req("/id", &headers)).await;
        let back = resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let handler_saw = seen.lock().expect("lock").pop().expect("handler ran");
        assert_eq!(
            back, handler_saw,
            "{sent:?}: the handler and the caller see one id"
        );
        if kept {
            assert_eq!(Some(back.as_str()), sent);
        } else {
            assert!(
                is_uuid_v4(&back),
                "{sent:?} replaced by a new id, got {back}"
            );
        }
    }
    // A response that sets its own id keeps it.
    let app = edged(Router::new().route(
        "/own",
        get(|| async { ([("x-request-id", "from-the-handler")], "ok") }),
    ));
    let (resp, _) = send(app, get_req("/own", &[("x-request-id", "from-the-caller")])).await;
    assert_eq!(resp.headers()["x-request-id"], "from-the-handler");
}

#[test]
fn new_request_ids_are_uuid_v4_and_distinct() {
    let ids: std::collections::HashSet<String> = (0..10_000)
        .map(|_| crate::telemetry::new_request_id())
        .collect();
    assert_eq!(ids.len(), 10_000);
    for id in ids.iter().take(100) {
        assert!(is_uuid_v4(id), "{id}");
    }
}

/// Decoders that are not the code under test's encoders' own writers.
fn decode(coding: Option<&str>, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        None => out.extend_from_slice(bytes),
        Some("br") => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .expect("br");
        }
        Some("gzip") => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("deflate");
        }
        Some("zstd") => out = zstd::stream::decode_all(bytes).expect("zstd"),
        Some(other) => panic!("unexpected coding {other}"),
    }
    out
}

/// A router whose one route answers with `make()`, behind the compression layer.
fn compressed(
    make: impl Fn() -> Response + Clone + Send + Sync + 'static,
) -> (Router, Arc<CacheCounters>) {
    let counters = Arc::new(CacheCounters::default());
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let make = make.clone();
                async move { make() }
            }),
        )
        .layer(CompressLayer(Arc::clone(&counters)));
    (app, counters)
}

/// A streamed body in uneven chunks (an empty one among them), and their concatenation.
fn chunks() -> (Vec<Bytes>, Vec<u8>) {
    let mut parts = Vec::new();
    for i in 0..200u32 {
        let line = format!(
            "{{\"id\":\"{i}\",\"channel\":\"chat\",\"n\":{}}}\n",
            i * 7919 % 1000
        );
        parts.push(Bytes::from(line.repeat(1 + (i % 5) as usize)));
        if i == 50 {
            parts.push(Bytes::new());
        }
    }
    let whole = parts.concat();
    (parts, whole)
}

#[tokio::test]
async fn answers_made_for_a_request_are_compressed_in_the_coding_asked_for() {
    let (parts, whole) = chunks();
    let (app, counters) = compressed(move || {
        let stream = futures_util::stream::iter(parts.clone().into_iter().map(Ok::<_, Infallible>));
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        r
    });
    let cases = [
        (None, None),
        (Some("identity"), None),
        (Some("gzip"), Some("gzip")),
        (Some("deflate"), Some("deflate")),
        (Some("br"), Some("br")),
        (Some("zstd"), Some("zstd")),
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip;q=0.5, br"), Some("br")),
        (Some("zstd;q=0, *"), Some("br")),
        (Some("gzip;q=0, br;q=0, zstd;q=0, deflate;q=0"), None),
    ];
    let mut compressed_answers = 0;
    for (ae, want) in cases {
        let headers: Vec<(&str, &str)> = ae.map(|v| ("accept-encoding", v)).into_iter().collect();
        let (resp, raw) = send(app.clone(), get_req("/", &headers)).await;
        let got = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().expect("ascii"));
        assert_eq!(got, want, "{ae:?}");
        assert_eq!(decode(got, &raw), whole, "{ae:?} decodes to the body");
        if want.is_some() {
            compressed_answers += 1;
            assert!(raw.len() * 4 < whole.len(), "{ae:?} compresses");
            assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
            assert_eq!(resp.headers()[header::VARY], "accept-encoding");
        }
        assert_eq!(
            counters
                .compressed_on_the_way_out
                .load(std::sync::atomic::Ordering::Relaxed),
            compressed_answers,
            "{ae:?}"
        );
    }
}

#[tokio::test]
async fn stored_coded_small_and_excluded_answers_are_left_alone() {
    let body = "x".repeat(4096);
    let answer = |content_type: &'static str,
                  extra: Option<(header::HeaderName, &'static str)>,
                  stored: bool,
                  body: String| {
        move || {
            let mut r = Response::new(Body::from(body.clone()));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some((k, v)) = extra.clone() {
                r.headers_mut().insert(k, HeaderValue::from_static(v));
            }
            if stored {
                r.extensions_mut().insert(Precompressed);
            }
            r
        }
    };
    let ae = [("accept-encoding", "gzip, deflate, br, zstd")];
    let left_alone = [
        (
            "stored",
            compressed(answer("application/json", None, true, body.clone())),
        ),
        (
            "coded",
            compressed(answer(
                "application/json",
                Some((header::CONTENT_ENCODING, "gzip")),
                false,
                body.clone(),
            )),
        ),
        (
            "partial",
            compressed(answer(
                "application/json",
                Some((header::CONTENT_RANGE, "bytes 0-4095/9000")),
                false,
                body.clone(),
            )),
        ),
        (
            "png",
            compressed(answer("image/png", None, false, body.clone())),
        ),
        (
            "sse",
            compressed(answer("text/event-stream", None, false, body.clone())),
        ),
        (
            "grpc",
            compressed(answer("application/grpc", None, false, body.clone())),
        ),
        (
            "31 bytes",
            compressed(answer("application/json", None, false, "y".repeat(31))),
        ),
    ];
    for (what, (app, counters)) in left_alone {
        let (resp, raw) = send(app, get_req("/", &ae)).await;
        let coding = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let kept = (what == "coded").then(|| "gzip".to_owned());
        assert_eq!(coding, kept, "{what}: its coding as it was");
        assert_eq!(
            counters
                .compressed_on_the_way_out
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{what}"
        );
        let sent = if what == "31 bytes" {
            "y".repeat(31)
        } else {
            body.clone()
        };
        assert_eq!(raw, sent.as_bytes(), "{what}: the body as it was");
    }
    // SVG is an image worth compressing; 32 bytes is enough; a Vary already naming
    // Accept-Encoding is not repeated.
    for (what, sent, (app, counters)) in [
        (
            "svg",
            body.clone(),
            compressed(answer("image/svg+xml", None, false, body.clone())),
        ),
        (
            "32 bytes",
            "y".repeat(32),
            compressed(answer("application/json", None, false, "y".repeat(32))),
        ),
        (
            "varies",
            body.clone(),
            compressed(answer(
                "application/json",
                Some((header::VARY, "Accept-Encoding")),
                false,
                body.clone(),
            )),
        ),
    ] {
        let (resp, raw) = send(app, get_req("/", &ae)).await;
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "zstd", "{what}");
        assert_eq!(
            resp.headers().get_all(header::VARY).iter().count(),
            1,
            "{what}"
        );
        assert_eq!(decode(Some("zstd"), &raw), sent.as_bytes(), "{what}");
        assert_eq!(
            counters
                .compressed_on_the_way_out
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{what}"
        );
    }
}

/// Write-side decoders fed a prefix of a stream: what they give back is what the prefix
/// holds (none of them needs the end to emit what a flush made whole).
fn decode_prefix(coding: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "br" => {
            let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
            d.write_all(bytes).expect("br");
            d.flush().expect("br");
            d.get_ref().clone()
        }
        "gzip" => {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            d.write_all(bytes).expect("gzip");
            d.flush().expect("gzip");
            d.get_ref().clone()
        }
        "deflate" => {
            let mut d = flate2::write::ZlibDecoder::new(Vec::new());
            d.write_all(bytes).expect("deflate");
            d.flush().expect("deflate");
            d.get_ref().clone()
        }
        "zstd" => {
            let mut d = zstd::stream::write::Decoder::new(Vec::new()).expect("zstd");
            d.write_all(bytes).expect("zstd");
            d.flush().expect("zstd");
            d.get_ref().clone()
        }
        other => panic!("unexpected coding {other}"),
    }
}

/// A body fed chunk by chunk through a channel: it is Pending while the channel is empty.
fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, Body::from_stream(stream))
}

async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, axum::Error>> {
    tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
    )
    .await
    .expect("a frame or the end within 10 s")
}

#[tokio::test]
async fn what_has_arrived_goes_out_while_the_next_chunk_is_awaited() {
    let first = Bytes::from("{\"id\":\"1\",\"channel\":\"chat\"}\n".repeat(40));
    let rest = Bytes::from("{\"id\":\"2\",\"channel\":\"voice\"}\n".repeat(300));
    for coding in [Coding::Br, Coding::Zstd, Coding::Gzip, Coding::Deflate] {
        let (tx, inner) = channel_body();
        let encoder = Streaming::new(coding)
            .expect("encoder")
            .expect("not identity");
        let mut body = Body::new(Compressing::new(inner, encoder));
        tx.send(Ok(first.clone())).await.expect("send");
        // The second chunk has not come: what the first made must go out now, whole.
        // Polled by hand until the body waits (a frame may carry only a header first).
        let mut sent = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(&mut cx) {
            let frame = frame.expect("not the end yet").expect("no error");
            sent.extend_from_slice(frame.data_ref().expect("data"));
        }
        assert_eq!(
            decode_prefix(coding.token(), &sent),
            first.as_ref(),
            "{coding:?}: the first chunk, readable before the second is sent"
        );
        tx.send(Ok(rest.clone())).await.expect("send");
        drop(tx);
        while let Some(frame) = next_frame(&mut body).await {
            sent.extend_from_slice(frame.expect("no error").data_ref().expect("data"));
        }
        assert!(body.is_end_stream());
        assert_eq!(
            decode(Some(coding.token()), &sent),
            [first.as_ref(), rest.as_ref()].concat(),
            "{coding:?}: the whole stream"
        );
    }
}

#[tokio::test]
async fn a_body_that_fails_ends_with_its_error() {
    let (tx, inner) = channel_body();
    let encoder = Streaming::new(Coding::Gzip)
        .expect("encoder")
        .expect("gzip");
    let mut body = Body::new(Compressing::new(inner, encoder));
    tx.send(Ok(Bytes::from("x".repeat(1000))))
        .await
        .expect("send");
    tx.send(Err(std::io::Error::other("the spool could not be read")))
        .await
        .expect("send");
    tx.send(Ok(Bytes::from("never sent"))).await.expect("send");
    let mut got_error = false;
    while let Some(frame) = next_frame(&mut body).await {
        if frame.is_err() {
            got_error = true;
            break;
        }
    }
    assert!(
        got_error,
        "the error reaches the server, which cuts the response"
    );
    assert!(
        next_frame(&mut body).await.is_none(),
        "nothing after the error"
    );
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn a_head_gets_the_headers_of_its_get_and_no_encoder() {
    let (app, counters) = compressed(|| {
        let mut r = Response::new(Body::from("z".repeat(4096)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    });
    let ae = [("accept-encoding", "br")];
    let head = axum::http::Request::head("/")
        .header("accept-encoding", "br")
        .body(Body::empty())
        .expect("request");
    let (h, raw) = send(app.clone(), head).await;
    let (g, _) = send(app, get_req("/", &ae)).await;
    for name in [header::CONTENT_ENCODING, header::VARY] {
        assert_eq!(h.headers().get(&name), g.headers().get(&name), "{name}");
    }
    assert!(raw.is_empty());
    assert_eq!(
        counters
            .compressed_on_the_way_out
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the GET was compressed"
    );
}

//! Stored answers and their compressed forms (issue #15), end to end over loopback HTTP:
//! every coding decodes to the identity body, q-values choose as RFC 9110 says, a hit never
//! runs the compressor, warm exports and summaries are stored bytes, and a window already
//! held inside a cached one costs no upstream call.

mod common;

use std::io::Read;

use common::*;
use serde_json::Value;

const PAGE: &str = "/v1/interactions?from=2024-09-02&to=2024-09-08&limit=300";

async fn get_ae(h: &Harness, path: &str, ae: Option<&str>) -> reqwest::Response {
    let mut req = h.http.get(format!("{}{}", h.base, path)).bearer_auth(KEY);
    if let Some(ae) = ae {
        req = req.header("Accept-Encoding", ae);
    }
    req.send().await.unwrap()
}

/// Decodes a body by its `Content-Encoding`; the decoders are not the code that encoded
/// (brotli-decompressor for br, miniz_oxide's inflate for gzip/deflate, libzstd's decoder).
fn decode(encoding: Option<&str>, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(bytes),
        Some("br") => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("gzip") => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zstd") => out = zstd::stream::decode_all(bytes).unwrap(),
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

struct Got {
    status: u16,
    encoding: Option<String>,
    vary: Option<String>,
    length: Option<usize>,
    x_cache: Option<String>,
    etag: Option<String>,
    raw: Vec<u8>,
    body: Vec<u8>,
}

async fn fetch(h: &Harness, path: &str, ae: Option<&str>) -> Got {
    let r = get_ae(h, path, ae).await;
    let hv = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (status, encoding, vary, x_cache, etag) = (
        r.status().as_u16(),
        hv("content-encoding"),
        hv("vary"),
        hv("x-cache"),
        hv("etag"),
    );
    let length = hv("content-length").map(|l| l.parse().unwrap());
    let raw = r.bytes().await.unwrap().to_vec();
    let body = decode(encoding.as_deref(), &raw);
    Got {
        status,
        encoding,
        vary,
        length,
        x_cache,
        etag,
        raw,
        body,
    }
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test]
async fn every_coding_of_a_hit_decodes_to_the_identity_body_and_is_made_once() {
    let h = Harness::start(Opts::default()).await;
    let miss = fetch(&h, PAGE, None).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.x_cache.as_deref(), Some("MISS"));
    assert!(miss.vary.is_some_and(|v| v.contains("accept-encoding")));
    let calls = h.calls();
    let identity = fetch(&h, PAGE, None).await;
    assert_eq!(identity.x_cache.as_deref(), Some("HIT"));
    assert_eq!(identity.encoding, None);
    assert_eq!(identity.length, Some(identity.raw.len()));
    assert_eq!(identity.etag, miss.etag, "hit and miss share the ETag");
    // The hit says what a hit is, and carries the same records and data meta as the miss.
    let (m, i) = (json(&miss.body), json(&identity.body));
    assert_eq!(i["meta"]["cache"], "HIT");
    assert_eq!(i["meta"]["upstream_calls"], 0);
    assert_eq!(m["data"], i["data"]);
    for f in ["from", "to", "total", "returned", "next_cursor", "complete"] {
        assert_eq!(m["meta"][f], i["meta"][f], "{f}");
    }
    // Independent truth: the simulator's own records for the page's range.
    let truth = h.sim.truth(
        at("2024-09-02T00:00:00", "UTC"),
        at("2024-09-08T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    let total = i["meta"]["total"].as_u64().unwrap() as usize;
    assert_eq!(total, truth.len());
    assert!(total > 300, "the page is a real slice: {total}");

    let before = h.state.responses.compressions();
    for (n, coding) in ["br", "gzip", "zstd", "deflate"].into_iter().enumerate() {
        for round in 0..3 {
            let g = fetch(&h, PAGE, Some(coding)).await;
            assert_eq!(g.status, 200);
            assert_eq!(g.encoding.as_deref(), Some(coding));
            assert_eq!(g.x_cache.as_deref(), Some("HIT"));
            assert!(
                g.vary
                    .as_deref()
                    .is_some_and(|v| v.contains("accept-encoding")),
                "{coding}: Vary"
            );
            assert_eq!(g.length, Some(g.raw.len()), "{coding}: Content-Length");
            assert!(g.raw.len() * 3 < identity.raw.len(), "{coding} compresses");
            assert_eq!(
                g.body, identity.body,
                "{coding} decodes to the identity body"
            );
            assert_eq!(
                h.state.responses.compressions(),
                before + n as u64 + 1,
                "{coding} round {round}: made once, on first demand"
            );
        }
    }
    assert_eq!(h.calls(), calls, "hits make no upstream call");
    h.finish();
}

#[tokio::test]
async fn q_values_choose_as_rfc_9110_says() {
    let h = Harness::start(Opts::default()).await;
    fetch(&h, PAGE, None).await;
    let identity = fetch(&h, PAGE, None).await.body;
    for (ae, want) in [
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip, deflate, br;q=0, zstd", Some("zstd")),
        ("br;q=0, *", Some("zstd")),
        ("*;q=0.5, gzip;q=0.9", Some("gzip")),
        ("gzip;q=0.4, br;q=0.6", Some("br")),
        ("identity;q=1, gzip;q=0.5", None),
        ("identity;q=0, deflate", Some("deflate")),
        // Nothing acceptable, identity excluded: RFC 9110 lets us disregard the header.
        ("identity;q=0", None),
        ("*;q=0", None),
        ("compress", None),
        ("", None),
    ] {
        let g = fetch(&h, PAGE, Some(ae)).await;
        assert_eq!(g.status, 200, "{ae}");
        assert_eq!(g.encoding.as_deref(), want, "Accept-Encoding: {ae}");
        assert_eq!(g.body, identity, "{ae}");
    }
    h.finish();
}

#[tokio::test]
async fn answers_made_for_one_request_are_compressed_on_the_way_out_and_hits_never_are() {
    let h = Harness::start(Opts::default()).await;
    let on_the_way_out = || {
        h.state
            .counters
            .compressed_on_the_way_out
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // A document no cache holds: the committed file is the truth.
    let doc = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap();
    for (ae, want) in [
        (None, None),
        (Some("gzip"), Some("gzip")),
        (Some("deflate"), Some("deflate")),
        (Some("br"), Some("br")),
        (Some("zstd"), Some("zstd")),
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("br;q=1, zstd;q=0.5"), Some("br")),
    ] {
        let before = on_the_way_out();
        let r = get_ae(&h, "/openapi.json", ae).await;
        let vary = r
            .headers()
            .get("vary")
            .map(|v| v.to_str().unwrap().to_owned());
        let coding = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        let raw = r.bytes().await.unwrap();
        assert_eq!(coding.as_deref(), want, "{ae:?}");
        assert!(
            vary.is_some_and(|v| v.contains("accept-encoding")),
            "{ae:?}"
        );
        assert_eq!(decode(want, &raw), doc, "{ae:?} decodes to the document");
        assert_eq!(
            on_the_way_out(),
            before + u64::from(want.is_some()),
            "{ae:?}"
        );
    }
    // A miss, as a browser asks for it: compressed once, and it holds the simulator's records.
    let page = "/v1/interactions?from=2024-10-08&to=2024-10-08&limit=10000";
    let before = on_the_way_out();
    let miss = fetch(&h, page, Some("gzip, deflate, br, zstd")).await;
    assert_eq!(miss.x_cache.as_deref(), Some("MISS"));
    assert_eq!(miss.encoding.as_deref(), Some("zstd"));
    assert_eq!(on_the_way_out(), before + 1);
    let truth = h.sim.truth(
        at("2024-10-08T00:00:00", "UTC"),
        at("2024-10-08T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert!(!truth.is_empty());
    let data = json(&miss.body)["data"].as_array().unwrap().clone();
    assert_same_records(&data, &truth);
    // Its repeats, in every coding, are stored bytes: nothing compressed on the way out.
    let before = on_the_way_out();
    for ae in [
        None,
        Some("br"),
        Some("gzip"),
        Some("zstd"),
        Some("deflate"),
        Some("gzip, deflate, br, zstd"),
    ] {
        let hit = fetch(&h, page, ae).await;
        assert_eq!(hit.x_cache.as_deref(), Some("HIT"), "{ae:?}");
        let want = match ae {
            None => None,
            Some("gzip, deflate, br, zstd") => Some("br"),
            Some(one) => Some(one),
        };
        assert_eq!(hit.encoding.as_deref(), want, "{ae:?}");
        assert_eq!(json(&hit.body)["data"], json(&miss.body)["data"], "{ae:?}");
    }
    assert_eq!(on_the_way_out(), before, "hits are sent as stored");
    h.finish();
}

#[tokio::test]
async fn a_304_carries_vary_and_the_etag() {
    let h = Harness::start(Opts::default()).await;
    let first = fetch(&h, PAGE, Some("gzip")).await;
    let etag = first.etag.unwrap();
    for _ in 0..2 {
        let r = h
            .http
            .get(format!("{}{}", h.base, PAGE))
            .bearer_auth(KEY)
            .header("If-None-Match", &etag)
            .header("Accept-Encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert!(
            r.headers()["vary"]
                .to_str()
                .unwrap()
                .contains("accept-encoding")
        );
    }
    h.finish();
}

#[tokio::test]
async fn warm_exports_and_summaries_are_stored_bytes() {
    let h = Harness::start(Opts::default()).await;
    for path in [
        "/v1/interactions?from=2024-09-02&to=2024-09-04&format=csv",
        "/v1/interactions?from=2024-09-02&to=2024-09-04&format=ndjson",
        "/v1/interactions/summary?from=2024-09-02&to=2024-09-04&group_by=day,channel",
        "/v1/interactions/summary?from=2024-09-02&to=2024-09-04&group_by=day&format=csv",
    ] {
        let stored_hits = || {
            h.state
                .counters
                .response_hits
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = stored_hits();
        let cold = fetch(&h, path, None).await;
        assert_eq!(cold.status, 200, "{path}");
        assert_eq!(stored_hits(), before, "{path}: the first one is rendered");
        let calls = h.calls();
        let warm = fetch(&h, path, None).await;
        assert_eq!(
            stored_hits(),
            before + 1,
            "{path}: the repeat is stored bytes"
        );
        assert_eq!(warm.x_cache.as_deref(), Some("HIT"), "{path}");
        assert_eq!(warm.length, Some(warm.raw.len()), "{path}");
        if path.contains("summary") && !path.contains("csv") {
            let (c, w) = (json(&cold.body), json(&warm.body));
            assert_eq!(c["groups"], w["groups"], "{path}");
            assert_eq!(w["meta"]["cache"], "HIT");
            assert_eq!(w["meta"]["upstream_calls"], 0);
        } else {
            assert_eq!(warm.body, cold.body, "{path}: the same bytes");
        }
        let made = h.state.responses.compressions();
        for _ in 0..3 {
            let g = fetch(&h, path, Some("gzip, br")).await;
            assert_eq!(g.encoding.as_deref(), Some("br"), "{path}");
            assert_eq!(g.body, warm.body, "{path}");
        }
        assert_eq!(h.state.responses.compressions(), made + 1, "{path}");
        assert_eq!(h.calls(), calls, "{path}: warm answers make no call");
    }
    // The stored NDJSON export holds exactly the simulator's records.
    let nd = fetch(
        &h,
        "/v1/interactions?from=2024-09-02&to=2024-09-04&format=ndjson",
        Some("zstd"),
    )
    .await;
    let lines: Vec<Value> = nd
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(json)
        .collect();
    let truth = h.sim.truth(
        at("2024-09-02T00:00:00", "UTC"),
        at("2024-09-04T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert_same_records(&lines, &truth);
    h.finish();
}

#[tokio::test]
async fn a_window_inside_a_cached_one_costs_no_upstream_call() {
    let h = Harness::start(Opts::default()).await;
    h.json("/v1/interactions?from=2024-11-05&to=2024-11-24&limit=10000")
        .await;
    let before = h.sim.calls().len();
    let body = h
        .json("/v1/interactions?from=2024-11-06&to=2024-11-25&limit=10000")
        .await;
    let new_calls = &h.sim.calls()[before..];
    let edge_end = at("2024-11-10T23:59:59", "UTC");
    assert!(
        new_calls
            .iter()
            .all(|c| c.start_utc.is_some_and(|s| s > edge_end)),
        "only the new day is fetched: {:?}",
        new_calls
            .iter()
            .map(|c| (c.start_utc, c.end_utc))
            .collect::<Vec<_>>()
    );
    assert!(!new_calls.is_empty(), "11-25 is new");
    assert!(
        h.state
            .counters
            .contained
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let truth = h.sim.truth(
        at("2024-11-06T00:00:00", "UTC"),
        at("2024-11-25T23:59:59", "UTC"),
        0,
        &all_fields(),
    );
    assert_same_records(body["data"].as_array().unwrap(), &truth);
    assert_eq!(body["meta"]["complete"], true);
    h.finish();
}

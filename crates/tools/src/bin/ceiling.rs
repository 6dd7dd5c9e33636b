//! The ceiling of the hit benchmarks (bench/encoding.sh): a minimal axum server that answers
//! every GET with bytes held in memory — the identity body, or its br / gzip / zstd form
//! when the request's `Accept-Encoding` names that coding — and nothing else: no key, no
//! cache lookup, no negotiation beyond a substring test. What the gateway does on a hit
//! cannot be cheaper than this on the same machine.
//!
//! `cargo run --release -p kore-tools --bin ceiling -- PORT DIR` serves, for a path `/N…`, the files
//! `DIR/N/body`, `body.br`, `body.gz` and `body.zst` (N = 0, 1, …; a compressed form may be
//! missing); any other path gets N = 0. Loopback only.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, Response, Uri, header},
    routing::get,
};
use bytes::Bytes;

struct Forms {
    identity: Bytes,
    br: Option<Bytes>,
    gzip: Option<Bytes>,
    zstd: Option<Bytes>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args.first().and_then(|p| p.parse().ok()).unwrap_or(0);
    let dir = std::path::PathBuf::from(args.get(1).map_or(".", String::as_str));
    let mut all = Vec::new();
    loop {
        let d = dir.join(all.len().to_string());
        let read = |name: &str| std::fs::read(d.join(name)).ok().map(Bytes::from);
        let Some(identity) = read("body") else { break };
        all.push(Forms {
            identity,
            br: read("body.br"),
            gzip: read("body.gz"),
            zstd: read("body.zst"),
        });
    }
    assert!(!all.is_empty(), "no DIR/0/body");
    let all = Arc::new(all);
    let app = Router::new().fallback(get(move |uri: Uri, headers: HeaderMap| {
        let all = Arc::clone(&all);
        async move {
            let n: usize = uri
                .path()
                .trim_start_matches('/')
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n < all.len())
                .unwrap_or(0);
            answer(&all[n], &headers)
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        println!("listening on {}", listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

fn answer(forms: &Forms, headers: &HeaderMap) -> Response<Body> {
    let ae = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (body, coding) = match (&forms.br, &forms.zstd, &forms.gzip) {
        (Some(b), _, _) if ae.contains("br") => (b.clone(), Some("br")),
        (_, Some(z), _) if ae.contains("zstd") => (z.clone(), Some("zstd")),
        (_, _, Some(g)) if ae.contains("gzip") => (g.clone(), Some("gzip")),
        _ => (forms.identity.clone(), None),
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
    }
    resp
}

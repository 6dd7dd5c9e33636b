//! The middleware of every route, one file per layer, assembled in [`with_middleware`] with
//! the order explained (crates.io's `middleware.rs` and `middleware/*.rs`).
//!
//! The hand-written layers run on every request: the edge (request id, span, metrics, a
//! panic turned into a 500), the URI bound, compression on the way out, and the request
//! deadline. They replace tower-http's request-id, trace, catch-panic and compression layers
//! and two `axum::middleware::from_fn` closures, each of which moved the request and its
//! future once more, cloned or boxed per request, and boxed the response body again — on a
//! stored hit more than the hit itself cost (issue #15; the figures are in BENCHMARKS.md).
//! These own no box but the one a compressed body needs, and their futures wrap the inner
//! future in place.

pub mod compress;
pub mod deadline;
pub mod edge;
#[cfg(test)]
mod tests;
pub mod uri_limit;

use std::time::Duration;

use axum::{
    Router,
    http::{HeaderName, HeaderValue, Method, header},
};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::X_REQUEST_ID;
use crate::AppState;

/// The middleware, outermost first. Each layer says why it is there and why in that place.
pub(super) fn with_middleware(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes.layer(
        ServiceBuilder::new()
            // 1. The edge (edge::EdgeLayer), in one layer: the request id first, so every
            //    later layer, log line and upstream call can use it, and every response
            //    (errors included) carries it back; the request's span, so every log line
            //    carries the id; the metrics, with the final status of everything below
            //    (auth refusals included); and a panic below becomes a 500 problem+json, so
            //    a bug never drops the connection.
            .layer(edge::EdgeLayer::default())
            // 2. CORS before auth: a browser's preflight carries no key and must still pass
            //    (only with an allow-list: without one no CORS header is due).
            .layer(tower::util::option_layer(cors(
                &state.settings.cors_origins,
            )))
            // 2b. A target over MAX_URI_BYTES is a 414 problem+json (uri_limit; the server's
            //     listener cuts lines hyper would refuse bare): inside CORS, so a browser can
            //     read why, and before anything reads the query.
            .layer(uri_limit::UriLimitLayer)
            // 3. Compression of answers made for this request (misses, streams), once, on the
            //    way out, at the fastest level (compress::CompressLayer). Stored answers come
            //    with their forms made once at a level chosen for ratio (api::stored), and
            //    this layer leaves them alone.
            .layer(compress::CompressLayer(std::sync::Arc::clone(
                &state.counters,
            )))
            // 4. One deadline for the whole request: a 504 problem, never a hung socket.
            .layer(deadline::DeadlineLayer(state.settings.request_timeout)),
    )
}

/// Every response header the API documents that a script may need to read (a browser shows
/// a cross-origin script only the CORS-safelisted ones, and these): whether an export is
/// whole and fresh, and why not; its file name; cache and budget state; a job's place.
pub const EXPOSED_HEADERS: [&str; 16] = [
    "etag",
    "age",
    "cache-status",
    "x-cache",
    "x-request-id",
    "x-complete",
    "x-stale",
    "x-warning",
    "x-gateway-complete",
    "x-gateway-stale",
    "content-disposition",
    "retry-after",
    "location",
    "preference-applied",
    "ratelimit-policy",
    "ratelimit",
];

/// The CORS layer for the allow-list, or none without one (same-origin only): then no CORS
/// header is due, and a hit does not pay for the layer (it clones its policy per request).
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("prefer"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-api-key"),
            X_REQUEST_ID.clone(),
        ])
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600));
    if origins.is_empty() {
        None
    } else if origins.iter().any(|o| o == "*") {
        Some(base.allow_origin(Any))
    } else {
        Some(base.allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )))
    }
}

//! The OpenAPI 3.1 document and Swagger UI, both served from the binary (no CDN).
//!
//! The document is generated from the handlers' `#[utoipa::path]`, the schemas derived on
//! the types they serialise, and the error answers of [`crate::error::problems`]; nothing
//! is defined here. The committed `openapi/openapi.json` is what `/openapi.json` serves byte
//! for byte (SPEC §6), embedded at build time. `kore-gateway --print-openapi >
//! openapi/openapi.json` regenerates it, and a test fails when the committed copy is stale.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::AppState;

/// The committed document, exactly as served.
pub const OPENAPI_JSON: &str = include_str!("../../openapi/openapi.json");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kore-gateway",
        description = "One simple, cached, budgeted GET in front of the Kore.ai SmartAssist interaction-details API. \
Any date range (split into vendor windows, DST-correct), every record (all pages, windows split when they hold more than 1,100), \
answers from cache, one shared upstream quota. Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        license(name = "MIT", identifier = "MIT"),
        contact(name = "kore-gateway operators")
    ),
    servers((url = "/", description = "This gateway")),
    paths(
        crate::api::interactions::get_interactions,
        crate::api::interactions::get_interactions_ndjson,
        crate::api::interactions::get_interactions_csv,
        crate::api::summary::get_summary,
        crate::api::summary::get_summary_csv,
        crate::api::changes::subscribe,
        crate::api::changes::issue_ticket,
        crate::api::dropin::interaction_details,
        crate::api::admin::cache_stats,
        crate::api::admin::cache_purge,
        crate::api::ops::healthz,
        crate::api::ops::readyz,
        crate::api::ops::metrics,
        crate::api::jobs::list_jobs,
        crate::api::jobs::get_job,
        crate::api::jobs::delete_job,
        crate::api::status::page,
        crate::api::status::status_json,
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&Security),
    tags(
        (name = "interactions", description = "Interaction records"),
        (name = "vendor-compatible", description = "The vendor's own request, authenticated by API key"),
        (name = "jobs", description = "Long ranges fetched in the background (`Prefer: respond-async`)"),
        (name = "admin", description = "Cache administration (admin keys)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Your API key as a bearer token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "Your API key",
            ))),
        );
    }
}

/// The generated document, pretty-printed, as committed to `openapi/openapi.json`.
pub fn generate() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// `/openapi.json` and `/docs`.
pub fn routes() -> Router<AppState> {
    let ui = SwaggerUi::new("/docs").config(
        Config::new(["/openapi.json"])
            .persist_authorization(true)
            .try_it_out_enabled(true)
            .display_request_duration(true),
    );
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(ui)
}

async fn openapi_json() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
}

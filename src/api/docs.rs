//! The OpenAPI 3.1 document and Swagger UI, both served from the binary (no CDN).
//!
//! The document is generated from the handlers' `#[utoipa::path]` and the schemas below;
//! the committed `openapi/openapi.json` is what `/openapi.json` serves byte for byte
//! (SPEC §6), embedded at build time. `kore-gateway --print-openapi > openapi/openapi.json`
//! regenerates it, and a test fails when the committed copy is stale.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use utoipa::{
    IntoParams, Modify, OpenApi, ToSchema,
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
        crate::api::summary::get_summary,
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
    components(schemas(crate::error::Problem, InteractionsResponse, Meta, Record, VendorRequest, VendorResponse,
        crate::api::summary::SummaryResponse, crate::api::summary::SummaryGroup, crate::api::summary::SummaryMeta, crate::api::summary::DurationStats)),
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

/// Query parameters of `GET /v1/interactions`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct InteractionsParams {
    /// Start, local to `tz`: `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]`.
    #[param(example = "2024-09-26")]
    from: String,
    /// End, inclusive, local to `tz`; a coarser value means the end of its unit (a date alone is 23:59:59, `HH:MM` is `HH:MM:59`).
    #[param(example = "2024-09-26")]
    to: String,
    /// IANA time zone (`Asia/Kolkata`) or fixed offset (`+05:30`, `-04:00`, `Z`). Default `UTC`.
    #[param(example = "Asia/Kolkata")]
    tz: Option<String>,
    /// Channels, comma-separated (the parameter may also repeat).
    channels: Option<String>,
    /// Queue ids, comma-separated.
    queues: Option<String>,
    /// Bot ids, comma-separated.
    bots: Option<String>,
    /// Subset of `skills,userleveltags,sessionleveltags,customerinfo`, comma-separated (the
    /// parameter may also repeat). Default: all four.
    #[param(style = Form, explode = false, min_items = 1, inline)]
    fields: Option<Vec<SelectedField>>,
    /// Records in this response (JSON), 1..10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// `meta.next_cursor` of the previous page. The next page starts right after the last
    /// record of that page, so records that appear or vanish meanwhile never make a page
    /// skip or repeat one. Signed and bound to the query: a cursor of another query is a 400.
    cursor: Option<String>,
    /// `json` (default), `ndjson` or `csv`; `Accept` works too. ndjson and csv stream the whole range.
    #[param(pattern = "^(json|ndjson|csv)$")]
    format: Option<String>,
}

/// One of the optional blocks the vendor returns only when asked (`selectedFields`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SelectedField {
    Skills,
    Userleveltags,
    Sessionleveltags,
    Customerinfo,
}

/// One upstream record, passed through unchanged. Only the documented fields are listed;
/// the object is open (JSON Schema's default): unknown fields appear and are kept.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "sessionId": "66f4f3aa205c5afb97d3xxxx", "channel": "Jones ", "sessionStartTime": "2024-09-26T11:09:54",
    "sessionEndTime": "2024-09-26T11:09:55", "botId": "st-4b6a22d1-b8e5-533d-8020-93f847a9xxxx",
    "userId": "u-390b0c73-6b06-5656-a3b1-58746515xxxx", "smartStatus": "CLOSED AT BOT", "finalStatus": "Dropped",
    "customerinfo": {"CustomerFirstName": "John", "CustomerLastName": "Doe", "Direction": "Inbound"},
    "skills": [], "userleveltags": [], "sessionleveltags": []
}))]
#[allow(non_snake_case)]
pub struct Record {
    /// Bot-generated session id.
    sessionId: Option<String>,
    /// SmartAssist conversation id (agent conversations only).
    conversationId: Option<String>,
    channel: Option<String>,
    /// Local to the request's time zone, no zone suffix (`YYYY-MM-DDTHH:MM:SS`).
    sessionStartTime: Option<String>,
    sessionEndTime: Option<String>,
    finalStatus: Option<String>,
    smartStatus: Option<String>,
    statusDetail: Option<String>,
    botId: Option<String>,
    Direction: Option<String>,
    userId: Option<String>,
    channelSpecificUserId: Option<String>,
    dispositions: Option<Vec<String>>,
    dispositionRemarks: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    customerinfo: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    metaInfo: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    destinations: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    skills: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    userleveltags: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    sessionleveltags: Option<serde_json::Value>,
    csatScore: Option<i64>,
    csatFeedback: Option<String>,
}

/// About this answer.
#[derive(Serialize, ToSchema)]
pub struct Meta {
    /// Start of the range, RFC 3339 with the offset in force then.
    #[schema(example = "2024-09-26T00:00:00+05:30")]
    from: String,
    #[schema(example = "2024-09-26T23:59:59+05:30")]
    to: String,
    #[schema(example = "Asia/Kolkata")]
    tz: String,
    /// Records in the whole range.
    total: u64,
    /// Records in this response.
    returned: u64,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
    /// False whenever any part of the range could not be fetched and cross-checked (see `warnings`).
    complete: bool,
    /// True when part of the answer is an expired copy served because the upstream failed.
    stale: bool,
    warnings: Vec<String>,
    /// Upstream windows the range was split into.
    windows: u64,
    /// Upstream calls this request made.
    upstream_calls: u64,
    #[schema(example = "MISS", pattern = "^(HIT|MISS|PARTIAL)$")]
    cache: String,
}

/// `GET /v1/interactions` answer.
#[derive(Serialize, ToSchema)]
pub struct InteractionsResponse {
    data: Vec<Record>,
    meta: Meta,
}

/// The vendor's request body (drop-in route).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": -330,
    "selectedFields": ["userleveltags", "sessionleveltags", "customerinfo", "skills"]}))]
#[allow(non_snake_case)]
pub struct VendorRequest {
    /// `yyyy-mm-dd` or `yyyy-mm-dd HH:mm:ss`, local to the offset.
    startDate: String,
    endDate: String,
    /// Minutes, JavaScript sign: IST is -330.
    timeZoneOffset: i32,
    /// Optional blocks to include; `null` or absent: none of them.
    selectedFields: Option<Vec<SelectedField>>,
    channels: Option<Vec<String>>,
    queues: Option<Vec<String>>,
    bots: Option<Vec<String>>,
}

/// The vendor's answer shape.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct VendorResponse {
    numResults: u64,
    data: Vec<Record>,
}

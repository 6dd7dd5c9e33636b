//! Traces: OpenTelemetry over OTLP/HTTP (protobuf), when the standard variables ask for it.
//!
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (with
//! `/v1/traces` appended) switches it on; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! keeps it off; `OTEL_SERVICE_NAME` names the service (default `kore-gateway`). Unset, no
//! exporter exists and the spans below cost what any disabled `tracing` span costs.
//!
//! The spans are the gateway's `tracing` spans, bridged by `tracing-opentelemetry`:
//! `request` (method, path, request id) → `window` (bounds, cache tier) → `window.fetch`
//! (its upstream work, in the cache's own task) → `upstream.call` (page, attempt, budget wait,
//! outcome). A caller's W3C `traceparent` becomes the parent of `request`, and every
//! upstream call carries the `traceparent` of its own span.
//!
//! The exporter posts with the gateway's own `reqwest` client, spawned on the runtime it was
//! built in, so the SDK's batch thread needs no runtime of its own.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where traces go, from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    pub service_name: String,
}

impl OtelConfig {
    /// Reads the standard variables through `var`; `None` when tracing is off.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = match set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => e,
            None => format!(
                "{}/v1/traces",
                set("OTEL_EXPORTER_OTLP_ENDPOINT")?.trim_end_matches('/')
            ),
        };
        Some(OtelConfig {
            endpoint,
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| "kore-gateway".into()),
        })
    }

    /// From the process environment.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// The exporting tracer provider; flush it (or drop it) before the process ends.
pub struct Telemetry {
    pub provider: SdkTracerProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the OTLP/HTTP exporter and provider, and installs the W3C propagator. Needs a
    /// Tokio runtime (the exporter's requests run on it).
    ///
    /// # Errors
    /// The exporter cannot be built (a malformed endpoint).
    pub fn start(cfg: &OtelConfig) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let client = RuntimeClient {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("OTLP client: {e}"))?,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| "OTLP exporter needs a Tokio runtime".to_owned())?,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_http_client(client)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Telemetry { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("kore-gateway"))
    }

    /// Sends what is buffered.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// Makes `span`'s parent the caller's W3C trace context, when it sent one.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    // A static name: `get("traceparent")` would parse the name on every request.
    static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if headers.get(&TRACEPARENT).is_none() {
        return;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderRead(headers)));
    let _ = span.set_parent(cx);
}

/// Adds the current span's `traceparent` (and `tracestate`) to an upstream request; nothing
/// when tracing is off.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderWrite(headers)));
}

struct HeaderRead<'a>(&'a HeaderMap);

impl Extractor for HeaderRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderWrite<'a>(&'a mut HeaderMap);

impl Injector for HeaderWrite<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The OTLP client: the gateway's reqwest, each request spawned on the runtime.
#[derive(Debug, Clone)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let resp = client
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        });
        let (status, headers, bytes) = task.await??;
        let mut out = Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        Ok(out.body(bytes)?)
    }
}

/// A new request id: random, in UUID v4 form. Requests the gateway starts itself
/// (refreshes) get one too.
pub fn new_request_id() -> String {
    // Hex digits and dashes only: always UTF-8.
    String::from_utf8_lossy(&new_request_id_bytes()).into_owned()
}

/// [`new_request_id`] as bytes, written digit by digit on the stack: one is made for most
/// requests, and the edge layer copies it into the header value directly.
pub fn new_request_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r = random_bytes::<16>();
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&r[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let (a, b) = (word(0), word(8));
    // 32 random-ish nibbles: a's 16, then b's with the version and variant bits set.
    let b = (b & !(0xc000u64 << 48)) | (0x8000u64 << 48);
    let mut out = [b'-'; 36];
    let mut at = 0;
    let mut nibble = 0;
    for word in [a, b] {
        for k in (0..16).rev() {
            if matches!(nibble, 8 | 12 | 16 | 20) {
                at += 1; // the dash already there
            }
            let v = if nibble == 12 {
                4 // version 4
            } else {
                ((word >> (k * 4)) & 0xf) as usize
            };
            out[at] = HEX[v];
            at += 1;
            nibble += 1;
        }
    }
    out
}

/// Bytes of the operating system's CSPRNG (`getrandom`), for ids nobody may guess from
/// another (request ids, job ids). Drawn from a per-thread buffer refilled 4 KiB at a
/// time, so a request id costs a copy, not a system call.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static BUF: RefCell<(Box<[u8; POOL]>, usize)> = RefCell::new((Box::new([0; POOL]), POOL));
    }
    let mut out = [0u8; N];
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        let (pool, used) = &mut *b;
        if *used + N > POOL {
            if getrandom::fill(&mut pool[..]).is_err() {
                // The OS refused (never seen on Linux): ids stay unique, if not secret.
                tracing::warn!("the OS random source failed; ids fall back to a fast PRNG");
                pool.iter_mut().for_each(|x| *x = fastrand::u8(..));
            }
            *used = 0;
        }
        out.copy_from_slice(&pool[*used..*used + N]);
        // Never hand out the same bytes twice.
        pool[*used..*used + N].fill(0);
        *used += N;
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_standard_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(OtelConfig::from_vars(env(&[])), None);
        let c = OtelConfig::from_vars(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.service_name, "kore-gateway");
        let c = OtelConfig::from_vars(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/x"),
            ("OTEL_SERVICE_NAME", "gw-eu"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint, "http://t:4318/x");
        assert_eq!(c.service_name, "gw-eu");
        assert_eq!(
            OtelConfig::from_vars(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            None
        );
    }
}

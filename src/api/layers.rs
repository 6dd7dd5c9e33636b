//! The hand-written layers of the stack in [`super::router`] that run on every request: the
//! edge (request id, span, metrics, a panic turned into a 500), compression on the way out,
//! and the request deadline. They replace tower-http's request-id, trace, catch-panic and
//! compression layers and two `axum::middleware::from_fn` closures: each of those moved the
//! request and its future once more, cloned or boxed per request, and boxed the response
//! body again (three boxes on the way out, around a compression body of several KiB moved
//! at each level even when it compressed nothing), which on a stored hit cost more than the
//! hit itself (issue #15: 48.6k instructions per identity hit, 21.8k for a bare handler
//! serving the same bytes). These own no box but the one a compressed body needs, and
//! their futures wrap the inner future in place.

use std::{
    convert::Infallible,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{MatchedPath, Request},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body::Frame;
use metrics::{Counter, Histogram, SharedString};

use super::{X_REQUEST_ID, stored::Precompressed};
use crate::{
    cache::CacheCounters,
    encoding::{Coding, Streaming, negotiate_in},
    error::AppError,
};

/// `gateway_requests_total{route, method, status}` and
/// `gateway_request_duration_seconds{route}` for every request, with the final status of
/// everything below (auth refusals included). Label sets are registered once: the handles
/// are kept here, so a request makes no label and no registry lookup. A list scanned by
/// name rather than a map: the routes are a fixed handful (and "unmatched"), and comparing
/// a few short names costs less than hashing one with SipHash.
#[derive(Clone, Default)]
struct RouteMetrics {
    handles: Arc<RwLock<Vec<(String, RouteHandles)>>>,
}

/// The handles of one route: its histogram and one counter per (method, status) seen.
#[derive(Clone)]
struct RouteHandles {
    duration: Histogram,
    requests: Vec<(&'static str, u16, Counter)>,
}

impl RouteMetrics {
    fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let Some(method) = static_method(method) else {
            // A method this service has no route for: one label for all of them, so a client
            // inventing methods cannot grow the label set.
            metrics::counter!("gateway_requests_total", "route" => route.to_owned(),
                "method" => "OTHER", "status" => status_label(status))
            .increment(1);
            metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_owned())
                .record(elapsed.as_secs_f64());
            return;
        };
        let code = status.as_u16();
        {
            let routes = self.handles.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, h)) = routes.iter().find(|(r, _)| r == route)
                && let Some((_, _, c)) = h
                    .requests
                    .iter()
                    .find(|(m, s, _)| *m == method && *s == code)
            {
                c.increment(1);
                h.duration.record(elapsed.as_secs_f64());
                return;
            }
        }
        let mut routes = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        let at = match routes.iter().position(|(r, _)| r == route) {
            Some(at) => at,
            None => {
                routes.push((
                    route.to_owned(),
                    RouteHandles {
                        duration: metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_owned()),
                        requests: Vec::new(),
                    },
                ));
                routes.len() - 1
            }
        };
        let h = &mut routes[at].1;
        let counter = match h
            .requests
            .iter()
            .find(|(m, s, _)| *m == method && *s == code)
        {
            Some((_, _, c)) => c.clone(),
            None => {
                let c = metrics::counter!("gateway_requests_total", "route" => route.to_owned(),
                    "method" => method, "status" => status_label(status));
                h.requests.push((method, code, c.clone()));
                c
            }
        };
        counter.increment(1);
        h.duration.record(elapsed.as_secs_f64());
    }
}

/// The edge of every request, outermost in the stack:
/// - its id: a sane `X-Request-Id` the caller sent (at most 128 visible ASCII characters),
///   else a new one; kept in the request's extensions for every later layer, log line and
///   upstream call, and sent back on every response that does not set its own;
/// - its span (`request`, with method, path and id; a caller's W3C `traceparent` makes it
///   part of the caller's trace), entered whenever the request's future runs, and the
///   `tower_http::trace::*` events that tower-http's trace layer wrote (same targets, so
///   `RUST_LOG=tower_http=debug` still shows them);
/// - `gateway_requests_total{route, method, status}` and
///   `gateway_request_duration_seconds{route}` with the final status of everything below
///   (auth refusals and panics included);
/// - a panic below, in the call or in its future, becomes a 500 problem+json: a bug never
///   drops the connection.
#[derive(Clone, Default)]
pub struct EdgeLayer {
    metrics: RouteMetrics,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Clone)]
pub struct Edge<S> {
    metrics: RouteMetrics,
    inner: S,
}

/// The id a request keeps, left in its `X-Request-Id` header for everything after the edge
/// ([`super::RequestId`]): the caller's when it is sane, else a new one.
fn request_id(req: &mut Request) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        let t = v.as_bytes();
        if !t.is_empty() && t.len() <= 128 && t.iter().all(u8::is_ascii_graphic) {
            return v.clone();
        }
    }
    let id = crate::telemetry::new_request_id_bytes();
    let id = HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    id
}

impl<S, B> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>, Error = Infallible>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = request_id(&mut req);
        let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(),
            request_id = %String::from_utf8_lossy(id.as_bytes()));
        crate::telemetry::adopt_parent(&span, req.headers());
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let started = Instant::now();
        let inner = {
            let _entered = span.enter();
            tracing::debug!(target: "tower_http::trace::on_request", "started processing request");
            catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).ok()
        };
        EdgeFuture {
            inner,
            ctx: Some(EdgeCtx {
                metrics: self.metrics.clone(),
                span,
                id,
                route,
                method,
                started,
            }),
        }
    }
}

/// What [`Edge`] keeps of a request until its answer: all it needs to finish it.
struct EdgeCtx {
    metrics: RouteMetrics,
    span: tracing::Span,
    id: HeaderValue,
    route: Option<MatchedPath>,
    method: Method,
    started: Instant,
}

impl EdgeCtx {
    /// Counts, logs and stamps the answer.
    fn finish(self, mut resp: Response) -> Response {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let elapsed = self.started.elapsed();
        let status = resp.status();
        self.metrics.record(route, &self.method, status, elapsed);
        {
            let _entered = self.span.enter();
            let latency = format_args!("{} ms", elapsed.as_millis());
            if status.is_server_error() {
                let classification = format_args!("Status code: {status}");
                tracing::error!(target: "tower_http::trace::on_failure",
                    classification = %classification, latency = %latency, "response failed");
            }
            tracing::debug!(target: "tower_http::trace::on_response",
                latency = %latency, status = status.as_u16(), "finished processing request");
        }
        if !resp.headers().contains_key(&X_REQUEST_ID) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), self.id);
        }
        // A body of unknown length (an export, one compressed on the way out) is sent inside
        // the request's span, and an error while sending it is logged there, as tower-http's
        // trace layer did; a body of known length (a stored hit) goes as it is.
        if resp.body().size_hint().exact().is_none() {
            let (span, started) = (self.span, self.started);
            resp = resp.map(|inner| {
                Body::new(Traced {
                    inner,
                    span,
                    started,
                })
            });
        }
        resp
    }
}

/// A streamed answer's body, polled inside its request's span (see [`EdgeCtx::finish`]).
struct Traced {
    inner: Body,
    span: tracing::Span,
    started: Instant,
}

impl HttpBody for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ms = || this.started.elapsed().as_millis();
        match &polled {
            Poll::Ready(Some(Err(e))) => {
                tracing::error!(target: "tower_http::trace::on_failure",
                    classification = %e, latency = %format_args!("{} ms", ms()), "response failed");
            }
            Poll::Ready(None) => {
                tracing::debug!(target: "tower_http::trace::on_eos",
                    stream_duration = %format_args!("{} ms", ms()), "end of stream");
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Edge`]: the inner one (or a 500 if it panicked), finished once.
    pub struct EdgeFuture<F> {
        // None when the call itself panicked, or once the future has.
        #[pin]
        inner: Option<F>,
        // Taken when the answer is out.
        ctx: Option<EdgeCtx>,
    }
}

impl<F, B> Future for EdgeFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, Infallible>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(ctx) = this.ctx.as_ref() else {
            return Poll::Ready(Ok(
                AppError::Internal("polled after completion".into()).into_response()
            ));
        };
        let answer = match this.inner.as_mut().as_pin_mut() {
            Some(inner) => {
                let _entered = ctx.span.enter();
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    // The body boxed here, once: the compression layer's body type is large,
                    // and the router would otherwise box it again.
                    Ok(Poll::Ready(Ok(resp))) => Some(resp.map(Body::new)),
                    Err(_panic) => None,
                }
            }
            None => None,
        };
        let resp = match answer {
            Some(resp) => resp,
            None => {
                // A panic, in the call or in this future: the future is not polled again,
                // and the 500's log line carries the request's id.
                this.inner.set(None);
                let _entered = ctx.span.enter();
                AppError::Internal("a handler panicked".into()).into_response()
            }
        };
        let ctx = this.ctx.take();
        Poll::Ready(Ok(match ctx {
            Some(ctx) => ctx.finish(resp),
            None => resp,
        }))
    }
}

/// The label of a method this service routes, without allocating.
fn static_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => return None,
    })
}

/// The label of a status, without allocating for the ones this service answers.
fn status_label(s: StatusCode) -> SharedString {
    match s.as_u16() {
        200 => "200".into(),
        204 => "204".into(),
        304 => "304".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        405 => "405".into(),
        429 => "429".into(),
        500 => "500".into(),
        502 => "502".into(),
        503 => "503".into(),
        504 => "504".into(),
        other => other.to_string().into(),
    }
}

/// Compression of answers made for this request (misses, streams, errors, documents), once,
/// on the way out, at the fastest level of the coding the client prefers
/// ([`negotiate_in`] with [`Coding::STREAMED`]: RFC 9110 q-values, ties to the fastest).
/// Left alone: stored answers (their forms are made once, for ratio: [`Precompressed`]),
/// answers already coded or partial, gRPC, images but SVG, server-sent events, and bodies
/// under 32 bytes — tower-http's `DefaultPredicate`. An answer left alone keeps its body
/// as it is: the request's `Accept-Encoding` is not even read.
/// Each answer it compresses is counted in `compressed_on_the_way_out`.
#[derive(Clone)]
pub struct CompressLayer(pub Arc<CacheCounters>);

impl<S> tower::Layer<S> for CompressLayer {
    type Service = Compress<S>;
    fn layer(&self, inner: S) -> Compress<S> {
        Compress {
            counters: Arc::clone(&self.0),
            inner,
        }
    }
}

/// The service of [`CompressLayer`].
#[derive(Clone)]
pub struct Compress<S> {
    counters: Arc<CacheCounters>,
    inner: S,
}

impl<S> tower::Service<Request> for Compress<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CompressFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The fields are kept (reference-counted), and read only if the answer is compressed.
        let mut fields = req.headers().get_all(header::ACCEPT_ENCODING).iter();
        let first = fields.next().cloned();
        let rest = fields.cloned().collect();
        let head = req.method() == Method::HEAD;
        CompressFuture {
            inner: self.inner.call(req),
            accept: (first, rest),
            head,
            counters: Arc::clone(&self.counters),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Compress`].
    pub struct CompressFuture<F> {
        #[pin]
        inner: F,
        accept: (Option<HeaderValue>, Vec<HeaderValue>),
        head: bool,
        counters: Arc<CacheCounters>,
    }
}

impl<F> Future for CompressFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = ready!(this.inner.poll(cx));
        if !should_compress(&resp) {
            return Poll::Ready(Ok(resp));
        }
        let (mut parts, body) = resp.into_parts();
        let varies = parts
            .headers
            .get_all(header::VARY)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| names(v, "accept-encoding")));
        if !varies {
            parts
                .headers
                .append(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        let (first, rest) = &*this.accept;
        let fields = first.iter().chain(rest).map(HeaderValue::as_bytes);
        let coding = negotiate_in(fields, &Coding::STREAMED);
        let encoder = if coding == Coding::Identity {
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        } else if *this.head {
            // A HEAD gets the headers its GET would (the router drops the body after this).
            None
        } else {
            match Streaming::new(coding) {
                Ok(e) => e,
                // No encoder to be had (zstd out of memory): the answer as it is.
                Err(_) => return Poll::Ready(Ok(Response::from_parts(parts, body))),
            }
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ACCEPT_RANGES);
        parts.headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.token()),
        );
        let Some(encoder) = encoder else {
            return Poll::Ready(Ok(Response::from_parts(parts, Body::empty())));
        };
        this.counters
            .compressed_on_the_way_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(Response::from_parts(
            parts,
            Body::new(Compressing::new(body, encoder)),
        )))
    }
}

/// Whether a comma-separated header value lists `name` (case-insensitive).
fn names(value: &str, name: &str) -> bool {
    value
        .split(',')
        .any(|v| v.trim().eq_ignore_ascii_case(name))
}

/// Whether an answer is compressed on the way out (see [`CompressLayer`]).
fn should_compress(resp: &Response) -> bool {
    const MIN_SIZE: u64 = 32;
    if resp.extensions().get::<Precompressed>().is_some() {
        return false;
    }
    let h = resp.headers();
    if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
        return false;
    }
    if let Some(ct) = h.get(header::CONTENT_TYPE) {
        let ct = ct.as_bytes().trim_ascii_start();
        let is = |prefix: &str| {
            ct.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        if is("application/grpc")
            || (is("image/") && !is("image/svg+xml"))
            || is("text/event-stream")
        {
            return false;
        }
    }
    let size = resp.body().size_hint().exact().or_else(|| {
        h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    size.is_none_or(|n| n >= MIN_SIZE)
}

/// A body compressed as it goes out: each chunk through the encoder, what the encoder holds
/// flushed whenever the next chunk is not there yet, the encoder's last bytes at the end,
/// then the trailers (if any).
struct Compressing {
    inner: Body,
    /// `None` once the encoder has been finished, or after an error.
    encoder: Option<Streaming>,
    /// Input went into the encoder since it last emitted everything.
    unflushed: bool,
    trailers: Option<HeaderMap>,
}

impl Compressing {
    fn new(inner: Body, encoder: Streaming) -> Self {
        Compressing {
            inner,
            encoder: Some(encoder),
            unflushed: false,
            trailers: None,
        }
    }
}

impl HttpBody for Compressing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let out = match polled {
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    encoder.flush()
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.unflushed |= !data.is_empty();
                        encoder.write(&data)
                    }
                    Err(frame) => {
                        // Trailers come last: kept until the encoder has finished.
                        this.trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    // A body that failed ends here: nothing more is read or sent.
                    this.encoder = None;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => match this.encoder.take() {
                    Some(encoder) => encoder.finish(),
                    None => continue,
                },
            };
            match out {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(e) => {
                    this.encoder = None;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

/// One deadline for the whole request: a 504 problem, never a hung socket.
#[derive(Clone, Copy)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            limit: self.0,
            inner,
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone)]
pub struct Deadline<S> {
    limit: Duration,
    inner: S,
}

impl<S> tower::Service<Request> for Deadline<S>
where
    S: tower::Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        DeadlineFuture {
            inner: tokio::time::timeout(self.limit, self.inner.call(req)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Deadline`]: the inner one, or a 504 when the time is up.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
    }
}

impl<F, R> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(Ok(resp)) => resp.into_response(),
            Err(_elapsed) => AppError::RequestTimeout.into_response(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use axum::{Router, routing::get};
    use tower::{Layer, ServiceExt};

    use super::*;

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
            let headers: Vec<(&str, &str)> =
                sent.map(|v| ("x-request-id", v)).into_iter().collect();
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
            let stream =
                futures_util::stream::iter(parts.clone().into_iter().map(Ok::<_, Infallible>));
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
            let headers: Vec<(&str, &str)> =
                ae.map(|v| ("accept-encoding", v)).into_iter().collect();
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
}

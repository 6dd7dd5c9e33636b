//! The edge layer, outermost: the request id (taken from a sane caller's `X-Request-Id` or
//! made from OS randomness), the request's span (with the caller's W3C parent), the route
//! metrics with the final status of everything below, and a panic below turned into a 500
//! problem+json, in one future that wraps the inner one in place.

use std::{
    convert::Infallible,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{MatchedPath, Request},
    http::{HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use http_body::Frame;
use metrics::{Counter, Histogram, SharedString};

use crate::api::X_REQUEST_ID;
use crate::error::AppError;

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

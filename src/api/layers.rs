//! The two hand-written layers of the stack in [`super::router`] that run on every request:
//! request metrics and the request deadline. They were `axum::middleware::from_fn`
//! closures; each of those clones its boxed inner service and boxes two futures per request,
//! which on a stored hit cost more than the hit itself. These own no box: their futures
//! wrap the inner future in place.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{MatchedPath, Request},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use metrics::{Counter, Histogram, SharedString};

use crate::error::AppError;

/// `gateway_requests_total{route, method, status}` and
/// `gateway_request_duration_seconds{route}` for every request, with the final status of
/// everything below (auth refusals included). Label sets are registered once: the handles
/// are kept here, so a request makes no label and no registry lookup.
#[derive(Clone, Default)]
pub struct MetricsLayer {
    handles: Arc<RwLock<HashMap<String, RouteHandles>>>,
}

/// The handles of one route: its histogram and one counter per (method, status) seen.
#[derive(Clone)]
struct RouteHandles {
    duration: Histogram,
    requests: Vec<(&'static str, u16, Counter)>,
}

impl MetricsLayer {
    fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let Some(method) = static_method(method) else {
            // A method this service has no route for: labelled the slow way.
            metrics::counter!("gateway_requests_total", "route" => route.to_owned(),
                "method" => method.to_string(), "status" => status_label(status))
            .increment(1);
            metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_owned())
                .record(elapsed.as_secs_f64());
            return;
        };
        let code = status.as_u16();
        {
            let map = self.handles.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(h) = map.get(route)
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
        let mut map = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        let h = map.entry(route.to_owned()).or_insert_with(|| RouteHandles {
            duration: metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_owned()),
            requests: Vec::new(),
        });
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

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    layer: MetricsLayer,
    inner: S,
}

impl<S, B> tower::Service<Request> for Metrics<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        MetricsFuture {
            inner: self.inner.call(req),
            layer: self.layer.clone(),
            route,
            method,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Metrics`], counted when it is ready.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        layer: MetricsLayer,
        route: Option<MatchedPath>,
        method: Method,
        started: Instant,
    }
}

impl<F, B, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        this.layer
            .record(route, this.method, resp.status(), this.started.elapsed());
        // The body boxed here, once: the compression layer's body type is large (its
        // encoders' states), and every layer above would otherwise move it on the way out.
        Poll::Ready(Ok(resp.map(Body::new)))
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

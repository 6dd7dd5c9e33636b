//! Compression on the way out, once, at the fastest level, of answers made for one request
//! (misses, streams); stored answers come with their forms made once and are left alone.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, header},
    response::Response,
};
use http_body::Frame;

use crate::api::stored::Precompressed;
use crate::{
    cache::CacheCounters,
    encoding::{Coding, Streaming, negotiate_in},
};

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
pub(super) struct Compressing {
    inner: Body,
    /// `None` once the encoder has been finished, or after an error.
    encoder: Option<Streaming>,
    /// Input went into the encoder since it last emitted everything.
    unflushed: bool,
    trailers: Option<HeaderMap>,
}

impl Compressing {
    pub(super) fn new(inner: Body, encoder: Streaming) -> Self {
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

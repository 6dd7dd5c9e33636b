//! The bound on a request's target: one longer than [`MAX_URI_BYTES`] is answered
//! `414 URI Too Long` as problem+json, like every other error, with the request id and the
//! CORS headers a browser needs to read it.
//!
//! Two parts, because hyper refuses a request line longer than 64 KiB itself — before any
//! service sees it — with a bare 414 and an empty body:
//!
//! * [`Guarded`], the listener the server accepts connections from, watches the bytes of
//!   every request line as hyper reads them and cuts a line longer than
//!   [`GUARD_LINE_BYTES`] down to that length (keeping its protocol version), so hyper
//!   always parses it and the request reaches the stack;
//! * [`UriLimitLayer`], in the stack, answers the 414 for any target over
//!   [`MAX_URI_BYTES`] — a cut one always is.
//!
//! To know where a request line starts, [`Guarded`] follows HTTP/1.1 framing: the header
//! section, then a body of `Content-Length` bytes. A request it cannot follow exactly (a
//! chunked body, `Expect`, `Upgrade`, a `Content-Length` it cannot read) ends the watch for
//! the rest of that connection, which then has hyper's own bound; it never guesses. A line
//! within the bound passes untouched and uncopied.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{extract::Request, http::Uri, response::IntoResponse, response::Response};
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::AppError;

/// Longest request target (scheme, authority, path and query) answered: far beyond any
/// real query (a hundred 40-character ids in each filter fit), and within what proxies and
/// browsers carry.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// A request line is cut to this many bytes before hyper reads it: more than a target of
/// [`MAX_URI_BYTES`] with its method and version (so a cut target is always refused), less
/// than the 64 KiB hyper refuses on its own.
pub const GUARD_LINE_BYTES: usize = 32 * 1024;

/// Answers 414 problem+json for a target longer than [`MAX_URI_BYTES`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UriLimitLayer;

impl<S> tower::Layer<S> for UriLimitLayer {
    type Service = UriLimit<S>;
    fn layer(&self, inner: S) -> UriLimit<S> {
        UriLimit { inner }
    }
}

/// The service of [`UriLimitLayer`].
#[derive(Debug, Clone)]
pub struct UriLimit<S> {
    inner: S,
}

/// Bytes of a request target as the client wrote it.
fn target_len(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

impl<S> tower::Service<Request> for UriLimit<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<std::future::Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if target_len(req.uri()) > MAX_URI_BYTES {
            let refused = AppError::UriTooLong {
                limit: MAX_URI_BYTES,
            };
            return Either::Left(std::future::ready(Ok(refused.into_response())));
        }
        Either::Right(self.inner.call(req))
    }
}

/// A listener whose connections cut over-long request lines (see the module docs).
#[derive(Debug)]
pub struct Guarded<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for Guarded<L> {
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (GuardedIo::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose request lines are cut to [`GUARD_LINE_BYTES`] on the way in;
/// everything else passes as it is.
#[derive(Debug)]
pub struct GuardedIo<T> {
    io: T,
    scanner: Scanner,
    /// Bytes to hand out before reading again: what a read turned into once a line was cut.
    pending: Vec<u8>,
    served: usize,
}

impl<T> GuardedIo<T> {
    pub fn new(io: T) -> Self {
        GuardedIo {
            io,
            scanner: Scanner::new(GUARD_LINE_BYTES),
            pending: Vec::new(),
            served: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.served < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.served);
                buf.put_slice(&this.pending[this.served..this.served + n]);
                this.served += n;
                if this.served == this.pending.len() {
                    this.pending.clear();
                    this.served = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.scanner.is_off() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start
                || this
                    .scanner
                    .scan(&buf.filled()[start..end], &mut this.pending)
            {
                // The end of the stream, or bytes that pass as they are (nearly always).
                return Poll::Ready(Ok(()));
            }
            // A line was cut: what the read turned into replaces what it read (and when the
            // read held only bytes that were dropped, read again).
            buf.set_filled(start);
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Bytes of a cut line's end that are kept to be put back: its protocol version and line
/// end, or all that was cut when that little was.
const TAIL: usize = 32;

/// Bytes of a header line looked at: enough for `Content-Length` and its value.
const HEADER_HEAD: usize = 48;

/// Where the watch of a connection stands (pure: bytes in, bytes out).
#[derive(Debug, Clone)]
struct Scanner {
    cut: usize,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    /// Before or in a request line: `len` bytes of it seen (line end excluded).
    Line { len: usize },
    /// In a request line past its cut: its bytes are dropped; `tail` keeps the last ones.
    Cutting { tail: [u8; TAIL], dropped: usize },
    /// In the header section: the start of the current line, its length, and the framing
    /// seen so far.
    Head {
        line: [u8; HEADER_HEAD],
        len: usize,
        length: Option<u64>,
        unsure: bool,
    },
    /// In a body: this many bytes still to come.
    Body { left: u64 },
    /// Not watched any more.
    Off,
}

impl State {
    fn head() -> State {
        State::Head {
            line: [0; HEADER_HEAD],
            len: 0,
            length: None,
            unsure: false,
        }
    }
}

/// What a read turns into: nothing copied until something changes.
struct Output<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    /// Input bytes before this are in `out` (or dropped); `None` while nothing changed.
    copied: Option<usize>,
}

impl Output<'_> {
    /// Drops `input[from..to]`.
    fn drop_range(&mut self, from: usize, to: usize) {
        self.keep_until(from);
        self.copied = Some(to);
    }

    /// Adds `bytes` at input position `at`.
    fn insert(&mut self, at: usize, bytes: &[u8]) {
        self.keep_until(at);
        self.out.extend_from_slice(bytes);
    }

    fn keep_until(&mut self, at: usize) {
        let from = match self.copied {
            Some(c) => c,
            None => {
                self.out.clear();
                0
            }
        };
        self.out.extend_from_slice(&self.input[from..at]);
        self.copied = Some(at);
    }

    /// Whether nothing changed; else `out` holds the whole result.
    fn finish(mut self) -> bool {
        match self.copied {
            None => true,
            Some(_) => {
                self.keep_until(self.input.len());
                false
            }
        }
    }
}

impl Scanner {
    fn new(cut: usize) -> Self {
        Scanner {
            cut,
            state: State::Line { len: 0 },
        }
    }

    fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Follows `input`, the next bytes of the connection. Returns `true` when they pass as
    /// they are; otherwise `out` holds what hyper should read instead.
    fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let mut o = Output {
            input,
            out,
            copied: None,
        };
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            // memchr: the whole request head passes here, byte by byte otherwise.
            let newline = memchr::memchr(b'\n', rest);
            match &mut self.state {
                State::Off => break,
                State::Line { len } => {
                    let room = self.cut - *len;
                    match newline {
                        Some(j) if j <= room => {
                            // Blank lines before a request line are allowed (RFC 9112 §2.2).
                            let blank = *len + j <= 1;
                            i += j + 1;
                            if !blank {
                                self.state = State::head();
                            } else {
                                *len = 0;
                            }
                        }
                        _ if rest.len() <= room => {
                            *len += rest.len();
                            i = input.len();
                        }
                        _ => {
                            i += room;
                            self.state = State::Cutting {
                                tail: [0; TAIL],
                                dropped: 0,
                            };
                        }
                    }
                }
                State::Cutting { tail, dropped } => {
                    let end = newline.map_or(rest.len(), |j| j + 1);
                    push_tail(tail, &rest[..end]);
                    *dropped += end;
                    o.drop_range(i, i + end);
                    i += end;
                    if newline.is_some() {
                        let kept = &tail[TAIL - (*dropped).min(TAIL)..];
                        let back = if *dropped <= TAIL {
                            // So little was over that it all goes back: the line is whole.
                            kept
                        } else {
                            version_of(kept).unwrap_or(b" HTTP/1.1\r\n")
                        };
                        o.insert(i, back);
                        self.state = State::head();
                    }
                }
                State::Head {
                    line,
                    len,
                    length,
                    unsure,
                } => {
                    let end = newline.unwrap_or(rest.len());
                    let seen = (*len).min(HEADER_HEAD);
                    let take = (HEADER_HEAD - seen).min(end);
                    line[seen..seen + take].copy_from_slice(&rest[..take]);
                    *len += end;
                    i += end;
                    if newline.is_none() {
                        continue;
                    }
                    i += 1;
                    let text = &line[..(*len).min(HEADER_HEAD)];
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    if text.is_empty() && *len <= 1 {
                        self.state = match (*unsure, *length) {
                            (true, _) => State::Off,
                            (false, Some(left)) if left > 0 => State::Body { left },
                            _ => State::Line { len: 0 },
                        };
                        continue;
                    }
                    let long = *len > HEADER_HEAD;
                    *len = 0;
                    let Some(colon) = text.iter().position(|b| *b == b':') else {
                        continue;
                    };
                    let (name, value) = (&text[..colon], &text[colon + 1..]);
                    if name.eq_ignore_ascii_case(b"content-length") {
                        match content_length(value) {
                            Some(n) if !long && length.is_none_or(|l| l == n) => {
                                *length = Some(n);
                            }
                            _ => *unsure = true,
                        }
                    } else if [&b"transfer-encoding"[..], b"expect", b"upgrade"]
                        .iter()
                        .any(|n| name.eq_ignore_ascii_case(n))
                    {
                        *unsure = true;
                    }
                }
                State::Body { left } => {
                    let n = u64::try_from(rest.len()).unwrap_or(u64::MAX).min(*left);
                    *left -= n;
                    i += usize::try_from(n).unwrap_or(rest.len());
                    if *left == 0 {
                        self.state = State::Line { len: 0 };
                    }
                }
            }
        }
        o.finish()
    }
}

/// Keeps the last [`TAIL`] bytes of what `tail` held followed by `bytes`.
fn push_tail(tail: &mut [u8; TAIL], bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL)..];
    tail.copy_within(bytes.len().., 0);
    tail[TAIL - bytes.len()..].copy_from_slice(bytes);
}

/// ` HTTP/x.y` and the line end at the end of a request line's last bytes.
fn version_of(tail: &[u8]) -> Option<&[u8]> {
    let space = tail.iter().rposition(|b| *b == b' ')?;
    let version = &tail[space..];
    (version.starts_with(b" HTTP/") && version.ends_with(b"\n")).then_some(version)
}

/// A `Content-Length` value: digits, optionally surrounded by blanks.
fn content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests;

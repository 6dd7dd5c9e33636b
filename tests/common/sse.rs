//! A server-sent-events reader for the change-feed tests: real HTTP, the stream parsed as
//! the SSE specification reads it (fields per line, events ended by a blank line, comments
//! counted apart).

use std::time::Duration;

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

pub struct Sse {
    resp: reqwest::Response,
    buf: String,
    /// Bytes of a character split between two chunks, until the rest arrives.
    partial: Vec<u8>,
    /// `: keep-alive` comments seen.
    pub keepalives: usize,
    /// The server ended the stream.
    pub ended: bool,
    /// The last id seen (what EventSource would send back as `Last-Event-ID`).
    pub last_id: Option<String>,
    /// `warning` events [`Sse::take`] passed over.
    pub warnings: usize,
}

impl Sse {
    /// Opens `url` (asserting a 200 `text/event-stream`), with `key` as a bearer token and
    /// `last_id` as `Last-Event-ID` when given.
    pub async fn open(url: &str, key: Option<&str>, last_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("the gateway answers");
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            panic!("{url}: {status}: {text}");
        }
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Sse {
            resp,
            buf: String::new(),
            partial: Vec::new(),
            keepalives: 0,
            ended: false,
            last_id: last_id.map(str::to_owned),
            warnings: 0,
        }
    }

    /// The next event within `within` (comments skipped, counted); `None` at the end of the
    /// stream or when the time is up.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(e) = self.take_event() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(c))) => self.push(&c),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// Exactly `n` events other than `warning`, failing the test if they do not all come
    /// within `within`. A warning is what the feed says when a poll raced the vendor (a
    /// record published between two pages of one window): it is counted, not taken.
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) if e.event == "warning" => self.warnings += 1,
                Some(e) => out.push(e),
                None => panic!(
                    "{} of {n} events within {within:?} (ended: {}): {:?}",
                    out.len(),
                    self.ended,
                    out.iter().map(|e| &e.event).collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// The events of the next `span` (until the stream ends).
    pub async fn during(&mut self, span: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + span;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next(left).await {
                Some(e) => out.push(e),
                None => return out,
            }
        }
    }

    /// Appends a chunk as text. A chunk may end inside a multi-byte character (the stream is
    /// bytes; TCP cuts it anywhere): its first bytes wait for the next chunk.
    fn push(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(_) => self.partial.len(),
            // An incomplete character at the end: keep it for later.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Not UTF-8 at all: shown as such, so the test sees it.
            Err(_) => self.partial.len(),
        };
        let rest = self.partial.split_off(valid);
        self.buf.push_str(&String::from_utf8_lossy(&self.partial));
        self.partial = rest;
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let mut id = None;
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            let mut fields = 0;
            for line in block.lines().filter(|l| !l.is_empty()) {
                if let Some(comment) = line.strip_prefix(':') {
                    if comment.trim() == "keep-alive" {
                        self.keepalives += 1;
                    }
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match name {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
                if name != "retry" {
                    fields += 1;
                }
            }
            if fields == 0 {
                continue;
            }
            if id.is_some() {
                self.last_id.clone_from(&id);
            }
            return Some(SseEvent {
                id,
                event,
                data: data.join("\n"),
            });
        }
    }
}

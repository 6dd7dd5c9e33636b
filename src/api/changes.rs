//! `GET /v1/interactions/changes`: the change feed as server-sent events, and
//! `POST /v1/interactions/changes/tickets`: the ticket a browser's `EventSource` subscribes
//! with (see [`crate::feed`] for what is polled and how changes are found).
//!
//! A stream opens at once (200, `text/event-stream`); once its topic has made a complete
//! poll it sends, in order: `reset` if its `Last-Event-ID` cannot resume here; the changes
//! it missed; the backlog (every record starting at or after `since`, as `created`); then
//! live `created` / `updated` events, `warning`s, and a `: keep-alive` comment every
//! FEED_KEEP_ALIVE. A reader that falls a whole buffer behind gets a final `reset` and is
//! closed (it resumes with its `Last-Event-ID`); SIGTERM ends every stream.

use std::{convert::Infallible, sync::Arc, sync::atomic::Ordering};

use axum::{
    Extension, Json,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use jiff::{Timestamp, tz::TimeZone};
use serde::Serialize;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    account::Account,
    api::{
        RequestId,
        auth::{self, Caller},
        query::{Params, pairs, parse_accounts, parse_filters, parse_instant, parse_zone},
        range_fetch,
    },
    cache::KeyEncoder,
    error::{AppError, PROBLEM_JSON, Problem, problems},
    feed::{
        Msg, Subscription, TopicRequest,
        id::{self, RecordKey},
        ticket::Holder,
        topic::Opening,
    },
    merge::dedupe_and_sort,
    plan::plan,
    upstream::Filters,
};

/// The parameters of the feed (and of its tickets, `ticket` aside).
const PARAMS: [&str; 9] = [
    "tz",
    "channels",
    "queues",
    "bots",
    "fields",
    "account",
    "since",
    "ticket",
    "last_event_id",
];

/// Frames a stream may hold unread before its writer waits (then the topic's buffer takes
/// the slack, and a reader behind all of it is reset).
const STREAM_FRAMES: usize = 32;

/// The feed's query, as the OpenAPI document describes it (read by [`parse`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChangesParams {
    /// Record times are rendered local to it (IANA name or fixed offset), and `since` is
    /// read in it. Default `UTC`.
    #[param(example = "Asia/Kolkata")]
    tz: Option<String>,
    /// Channels, comma-separated (the parameter may also repeat).
    channels: Option<String>,
    /// Queue ids, comma-separated.
    queues: Option<String>,
    /// Bot ids, comma-separated.
    bots: Option<String>,
    /// Subset of `skills,userleveltags,sessionleveltags,customerinfo`, comma-separated.
    /// Default: all four.
    fields: Option<String>,
    /// The vendor account to follow; default: the gateway's default account.
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    account: Option<String>,
    /// The backlog: every record starting at or after it is sent first, as `created`.
    /// `YYYY-MM-DDTHH:MM[:SS]` local to `tz`, or RFC 3339. Default: now (no backlog).
    since: Option<String>,
    /// Resume right after this event, when no `Last-Event-ID` header is sent: a page whose
    /// ticket expired opens a new `EventSource` (which starts without the header) with a
    /// new ticket and its last event's id here.
    last_event_id: Option<String>,
}

/// The stream's own credential, for `EventSource` (which cannot send a header).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TicketParam {
    /// A ticket from `POST /v1/interactions/changes/tickets` for exactly this query (instead
    /// of a key header; a key is never accepted in a URL).
    ticket: Option<String>,
}

/// A parsed feed query.
struct ChangesQuery {
    tz: TimeZone,
    tz_name: String,
    filters: Filters,
    accounts: Vec<String>,
    since: Timestamp,
    ticket: Option<String>,
    last_event_id: Option<String>,
}

fn parse(state: &AppState, raw: Option<&str>) -> Result<(ChangesQuery, [u8; 32]), AppError> {
    let all = pairs(raw);
    let binding = binding(&all);
    let p = Params::new(all, &PARAMS)?;
    let (tz, tz_name) = parse_zone(&p)?;
    let now = Timestamp::now();
    let since = match p.one("since")? {
        Some(text) => parse_instant(text, &tz).map_err(|d| AppError::param("since", d))?,
        None => now,
    };
    let oldest = now.as_second() - i64::from(state.settings.max_range_days) * 86_400;
    if since.as_second() < oldest {
        return Err(AppError::param(
            "since",
            format!(
                "`since` is more than the {} days one request may ask for in the past",
                state.settings.max_range_days
            ),
        ));
    }
    Ok((
        ChangesQuery {
            tz,
            tz_name,
            filters: parse_filters(&p)?,
            accounts: parse_accounts(&p)?,
            since,
            ticket: p.one("ticket")?.map(str::to_owned),
            last_event_id: p.one("last_event_id")?.map(str::to_owned),
        },
        binding,
    ))
}

/// The digest a ticket is bound to: the query's pairs but `ticket` and `_`, in any order.
fn binding(all: &[(String, String)]) -> [u8; 32] {
    let mut kept: Vec<&(String, String)> = all
        .iter()
        .filter(|(k, _)| k != "ticket" && k != crate::api::query::CACHE_BUSTER)
        .collect();
    kept.sort();
    let mut e = KeyEncoder::default();
    e.text("feed-ticket");
    for (k, v) in kept {
        e.text(k);
        e.text(v);
    }
    e.finish()
}

/// Who is asking: the key in a header, or else the ticket in the URL.
async fn caller_of(
    state: &AppState,
    headers: &HeaderMap,
    q: &ChangesQuery,
    binding: &[u8; 32],
) -> Result<Caller, Response> {
    match &q.ticket {
        Some(t) if !auth::presents_key(headers) => {
            let holder = state
                .feed
                .tickets
                .check(t, binding, Timestamp::now().as_second())
                .map_err(|why| AppError::param("ticket", why).into_response())?;
            // A ticket outlives nothing: its key must still be one of the gateway's.
            let known = state
                .settings
                .api_keys
                .iter()
                .any(|k| *k.name == *holder.caller)
                || (state.settings.allow_anonymous && holder.caller == "anonymous");
            if !known {
                return Err(AppError::Unauthorized.into_response());
            }
            let name: Arc<str> = Arc::from(holder.caller.as_str());
            // The key's request rate counts for what its tickets open too.
            if let Some(limiter) = &state.key_limiter {
                let checked = if limiter.is_shared() {
                    limiter.check_shared(&name).await
                } else {
                    limiter.check(&name)
                };
                if let Err(retry_after) = checked {
                    return Err(AppError::KeyRateLimited { retry_after }.into_response());
                }
            }
            Ok(Caller {
                name,
                admin: holder.admin,
            })
        }
        _ => auth::admit_headers(state, headers).await,
    }
}

/// New and changed interactions, pushed as they appear.
///
/// Server-sent events (`text/event-stream`): `created` and `updated` carry one record as
/// `/v1/interactions` renders it for `tz` and `fields`; `warning` says a poll could not be
/// vouched for (nothing is announced for what it did not see); `reset` says the stream's
/// `Last-Event-ID` could not be resumed (reload, then follow). Every event but `warning`
/// has an `id`: reconnecting with it as `Last-Event-ID` (what `EventSource` does) resumes
/// right after it, with no event lost or repeated, within FEED_RETENTION. The watched part
/// is FEED_LOOKBACK back from now; it is polled every FEED_INTERVAL, once for every
/// subscriber of the same account, filters, fields and zone.
#[utoipa::path(get, path = "/v1/interactions/changes", tag = "interactions",
    params(ChangesParams, TicketParam,
        ("Last-Event-ID" = Option<String>, Header, description = "The last event's id, to resume right after it")),
    responses(
        (status = 200, description = "The stream. Events: `created`, `updated` (data: one record), `warning` (data: `{\"reason\"}`), `reset` (data: `{\"reason\"}`); comments `: keep-alive`.",
            content_type = "text/event-stream", body = String),
        problems::BadParam, problems::Unauthorized, problems::AccountForbidden,
        (status = 429, description = "This key holds FEED_MAX_SUBSCRIBERS_PER_KEY streams already", body = Problem, content_type = PROBLEM_JSON)),
    security(("bearer" = []), ("api_key" = []), ()))]
pub async fn subscribe(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    match open(&state, &headers, &uri).await {
        Ok(r) | Err(r) => r,
    }
}

async fn open(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Response, Response> {
    let parsed = parse(state, uri.query());
    // Who asks comes first: a stranger learns nothing from how its query is refused.
    let (q, binding) = match parsed {
        Ok(p) => p,
        Err(e) => {
            auth::admit_headers(state, headers).await?;
            return Err(e.into_response());
        }
    };
    let caller = caller_of(state, headers, &q, &binding).await?;
    let account = state
        .accounts
        .resolve_one(&q.accounts, &caller.name, caller.admin)
        .map_err(IntoResponse::into_response)?;
    // The header EventSource sends on a reconnect; else the parameter.
    let resume = id::parse(
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .or(q.last_event_id.as_deref()),
    );
    let sub = state
        .feed
        .subscribe(
            &caller.name,
            TopicRequest {
                account: Arc::clone(&account),
                filters: q.filters.clone(),
                tz: q.tz.clone(),
                tz_name: q.tz_name.clone(),
            },
        )
        .map_err(|limit| AppError::TooManyStreams { limit }.into_response())?;
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_FRAMES);
    let pump = Pump {
        state: state.clone(),
        tx,
        caller,
        account,
        request_id: RequestId::of(headers).into(),
        headers: headers.clone(),
        q,
        stalled: std::sync::atomic::AtomicBool::new(false),
    };
    tokio::spawn(pump.run(sub, resume));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and its kin would otherwise hold events back in their buffers.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One SSE frame: an optional id, an event name, and `data` split into lines (a record's
/// JSON may hold line breaks between its tokens; the client joins them back).
pub fn frame(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn reason(text: &str) -> String {
    serde_json::json!({ "reason": text }).to_string()
}

/// Writes one subscriber's stream.
struct Pump {
    state: AppState,
    tx: mpsc::Sender<Bytes>,
    caller: Caller,
    account: Arc<Account>,
    request_id: Arc<str>,
    headers: HeaderMap,
    q: ChangesQuery,
    /// The reader stopped reading: no frame could be queued for [`Pump::stall`].
    stalled: std::sync::atomic::AtomicBool,
}

impl Pump {
    /// How long a frame may wait for room before the reader counts as gone: two
    /// keep-alive periods (a reader that takes in less than its buffer in that time is not
    /// following the stream).
    fn stall(&self) -> std::time::Duration {
        (self.state.feed.settings.keep_alive * 2).max(std::time::Duration::from_secs(1))
    }

    /// Sends one frame; false once the reader is gone, has stopped reading, or the process
    /// drains.
    async fn put(&self, b: Bytes) -> bool {
        tokio::select! {
            r = tokio::time::timeout(self.stall(), self.tx.send(b)) => match r {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    self.stalled.store(true, Ordering::Relaxed);
                    false
                }
            },
            () = self.state.drain.started() => false,
        }
    }

    async fn event(&self, id: &str, kind: &'static str, data: &str) -> bool {
        self.state
            .feed
            .counters
            .sent
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_feed_events_sent_total", "event" => kind).increment(1);
        self.put(frame(Some(id), kind, data)).await
    }

    /// Writes the stream until it ends; a reader that stopped reading, or fell a whole
    /// buffer behind, gets a last `reset` in the slot kept for it.
    async fn run(self, sub: Subscription, resume: id::Resume) {
        // One slot is kept from the start for the last frame: a full buffer still takes it.
        let last = self.tx.clone().reserve_owned().await.ok();
        let why = match self.stream(&sub, resume).await {
            Some(why) => why,
            None if self.stalled.load(Ordering::Relaxed) => {
                "this stream was not read; reconnect with its Last-Event-ID"
            }
            None => return,
        };
        self.state
            .feed
            .counters
            .resets
            .fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = last {
            slot.send(frame(None, "reset", &reason(why)));
        }
    }

    /// The stream itself; `Some(why)` when it ends with a reset.
    async fn stream(&self, sub: &Subscription, resume: id::Resume) -> Option<&'static str> {
        let topic = Arc::clone(&sub.topic);
        let keep_alive = self.state.feed.settings.keep_alive;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        // EventSource reconnects after `retry` ms; the comment opens the stream at once.
        if !self
            .put(Bytes::from_static(
                b": kore-gateway change feed\nretry: 3000\n\n",
            ))
            .await
        {
            return None;
        }
        // Until the topic's picture is complete (its first complete poll, or again after the
        // shared log was replaced), only warnings and keep-alives.
        let opening = loop {
            let mut early = topic.tx.subscribe();
            loop {
                tokio::select! {
                    () = topic.until_ready() => break,
                    m = early.recv() => {
                        if let Ok(Msg::Warning(w)) = m
                            && !self.put(frame(None, "warning", &reason(&w))).await
                        {
                            return None;
                        }
                    }
                    _ = tick.tick() => {
                        if !self.put(Bytes::from_static(b": keep-alive\n\n")).await { return None; }
                    }
                    () = self.state.drain.started() => return None,
                    () = self.tx.closed() => return None,
                }
            }
            drop(early);
            topic.catch_up(&resume).await;
            if let Some(o) = topic.open(&resume, self.q.since.as_second(), Timestamp::now()) {
                break o;
            }
        };
        let (epoch, at_seq) = (opening.epoch.clone(), opening.at_seq);
        let mut rx = self.opening(opening).await?;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(Msg::Event(e)) if e.seq <= at_seq => {}
                    Ok(Msg::Event(e)) => {
                        if !self.event(&id::live(&epoch, e.seq), e.kind.as_str(), e.raw.get()).await {
                            return None;
                        }
                    }
                    Ok(Msg::Warning(w)) => {
                        if !self.put(frame(None, "warning", &reason(&w))).await { return None; }
                    }
                    Ok(Msg::Reset) => {
                        return Some("the change log was lost; reload, then follow again");
                    }
                    Err(RecvError::Lagged(_)) => {
                        return Some("this stream fell too far behind; reconnect with its Last-Event-ID");
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = tick.tick() => {
                    if !self.put(Bytes::from_static(b": keep-alive\n\n")).await { return None; }
                }
                () = self.state.drain.started() => return None,
                () = self.tx.closed() => return None,
            }
        }
    }

    /// What a subscriber is sent before live events: a reset if its id could not resume,
    /// the changes it missed, the records before the watched part (fetched now), the
    /// backlog. `None` once the reader is gone.
    async fn opening(&self, o: Opening) -> Option<tokio::sync::broadcast::Receiver<Msg>> {
        let Opening {
            reset,
            replay,
            backlog,
            at_seq,
            epoch,
            older,
            rx,
        } = o;
        if reset {
            self.state
                .feed
                .counters
                .resets
                .fetch_add(1, Ordering::Relaxed);
            let why = "this Last-Event-ID cannot be resumed here (unknown, or older than FEED_RETENTION): reload, then follow";
            if !self.put(frame(None, "reset", &reason(why))).await {
                return None;
            }
        }
        for (e, after) in replay {
            let id = match &after {
                Some(a) => id::backlog(&epoch, e.seq, a),
                None => id::live(&epoch, e.seq),
            };
            if !self.event(&id, e.kind.as_str(), e.raw.get()).await {
                return None;
            }
        }
        if let Some((since, horizon, after)) = older {
            for (key, raw) in self.older(since, horizon, after.as_ref()).await? {
                if !self
                    .event(&id::backlog(&epoch, at_seq, &key), "created", raw.get())
                    .await
                {
                    return None;
                }
            }
        }
        for (key, raw) in backlog {
            if !self
                .event(&id::backlog(&epoch, at_seq, &key), "created", raw.get())
                .await
            {
                return None;
            }
        }
        Some(rx)
    }

    /// The backlog's records that start before the watched part (`[since, horizon)`,
    /// after `after`), fetched like `/v1/interactions` (same cache, the caller's budget
    /// turn); a warning, sent here, for what could not be fetched whole. `None` once the
    /// reader is gone.
    async fn older(
        &self,
        since: i64,
        horizon: i64,
        after: Option<&RecordKey>,
    ) -> Option<Vec<(RecordKey, Arc<serde_json::value::RawValue>)>> {
        let span = Timestamp::from_second(since)
            .ok()
            .zip(Timestamp::from_second(horizon - 1).ok());
        let windows = span.and_then(|(from, to)| plan(from, to, &self.q.tz).ok());
        let Some(windows) = windows else {
            let warned = self
                .put(frame(
                    None,
                    "warning",
                    &reason("the backlog before the watched part cannot be planned"),
                ))
                .await;
            return warned.then(Vec::new);
        };
        let fetch = range_fetch(
            &self.state,
            &self.account,
            &self.caller,
            Arc::clone(&self.request_id),
            self.q.filters.clone(),
            &self.headers,
        );
        let outcomes = match fetch.all(&windows).await {
            Ok(o) => o,
            Err(e) => {
                let why = format!(
                    "the backlog before the watched part could not be fetched ({e}); it is not sent"
                );
                return self
                    .put(frame(None, "warning", &reason(&why)))
                    .await
                    .then(Vec::new);
            }
        };
        let mut records = Vec::new();
        for o in &outcomes {
            if !o.data.complete() {
                let why = format!(
                    "the backlog before the watched part is incomplete: {}",
                    o.data.warnings.join("; ")
                );
                if !self.put(frame(None, "warning", &reason(&why))).await {
                    return None;
                }
            }
            records.extend(o.data.records.iter().cloned());
        }
        dedupe_and_sort(&mut records);
        let mut out: Vec<(RecordKey, Arc<serde_json::value::RawValue>)> = records
            .iter()
            .filter_map(|r| {
                // A record whose start cannot be read goes first (it is in the range).
                let key = RecordKey {
                    start: r.start.unwrap_or(since),
                    id: crate::feed::topic::identity(r),
                };
                (key.start >= since && key.start < horizon && after.is_none_or(|a| key > *a))
                    .then(|| (key, Arc::clone(&r.raw)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }
}

/// A ticket for `EventSource`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass it as `?ticket=` with exactly the query it was issued for.
    pub ticket: String,
    /// RFC 3339; a stream opened before keeps going after.
    pub expires_at: String,
    /// The stream's path and query, ticket included: what to give `new EventSource(…)`.
    #[schema(example = "/v1/interactions/changes?tz=Asia/Kolkata&ticket=AQA…")]
    pub url: String,
}

/// A ticket to open the change feed with `EventSource`.
///
/// `EventSource` cannot send a key header, and a key is never accepted in a URL: this
/// returns a short-lived signed ticket, bound to this key and to exactly this query (the
/// same parameters as the stream), valid for at most five minutes, and the stream's URL with
/// it. A stream opened with it keeps going after the ticket expires; a reconnect needs a
/// new one.
#[utoipa::path(post, path = "/v1/interactions/changes/tickets", tag = "interactions",
    params(ChangesParams),
    responses((status = 201, description = "The ticket, and the stream's URL with it", body = Ticket),
              problems::BadParam, problems::Unauthorized, problems::AccountForbidden),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn issue_ticket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, AppError> {
    let (q, binding) = parse(&state, uri.query())?;
    if q.ticket.is_some() {
        return Err(AppError::param(
            "ticket",
            "a ticket is asked for with a key, not with another ticket",
        ));
    }
    // The key may read the account: checked now, not when the ticket is used.
    state
        .accounts
        .resolve_one(&q.accounts, &caller.name, caller.admin)?;
    let ttl = state
        .feed
        .settings
        .ticket_ttl
        .min(std::time::Duration::from_secs(300));
    let expires = Timestamp::now().as_second() + ttl.as_secs() as i64;
    let ticket = state.feed.tickets.issue(
        &Holder {
            caller: caller.name.to_string(),
            admin: caller.admin,
        },
        &binding,
        expires,
    );
    let url = match uri.query().filter(|q| !q.is_empty()) {
        Some(query) => format!("/v1/interactions/changes?{query}&ticket={ticket}"),
        None => format!("/v1/interactions/changes?ticket={ticket}"),
    };
    let expires_at = Timestamp::from_second(expires)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut resp = (
        StatusCode::CREATED,
        Json(Ticket {
            ticket,
            expires_at,
            url,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_keeps_every_line_of_its_data() {
        let f = frame(Some("e-1"), "created", "{\"a\":\n1,\r\n\"b\":\r2}");
        assert_eq!(
            f,
            "id: e-1\nevent: created\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        assert_eq!(frame(None, "warning", "x"), "event: warning\ndata: x\n\n");
    }

    #[test]
    fn a_ticket_binds_the_query_in_any_order_but_not_its_ticket() {
        let q = |s: &str| binding(&pairs(Some(s)));
        assert_eq!(q("tz=UTC&channels=voice"), q("channels=voice&tz=UTC"));
        assert_eq!(q("tz=UTC"), q("tz=UTC&ticket=abc&_=17"));
        assert_ne!(q("tz=UTC"), q("tz=UTC&channels=voice"));
        assert_ne!(q("channels=a,b"), q("channels=a&channels=b"));
    }
}

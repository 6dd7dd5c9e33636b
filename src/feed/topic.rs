//! One topic of the change feed: one account, one set of filters and fields, one time zone
//! (the vendor writes record times in the query's offset, so the zone is part of what is
//! polled). One poller per topic, however many subscribers: it polls the lookback, compares
//! every record's bytes with the last ones seen, and appends what appeared or changed to the
//! topic's log, which every subscriber reads.
//!
//! The topic keeps a *mirror*: the records of the lookback as last seen (identity → start,
//! digest, bytes) and the log of events within FEED_RETENTION. Alone, the poller writes the
//! mirror; with replicas (see `shared`), the poller writes Redis and every replica's mirror
//! follows Redis's log, so each replica answers subscribers from its own memory.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jiff::{Timestamp, civil::Time, tz::TimeZone};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};

use super::{
    FeedCounters, FeedSettings,
    id::{RecordKey, Resume},
};
use crate::{
    account::Account,
    cache::{Source, WindowCache},
    drain::{Drain, Stop},
    fetch::RangeFetch,
    merge::Record,
    plan::{Window, plan},
    upstream::Filters,
};

/// Bytes of records a topic's log keeps at most, whatever FEED_RETENTION says (memory is
/// bounded; an id older than what is kept resumes with a reset).
const MAX_LOG_BYTES: usize = 64 << 20;

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Updated,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Updated => "updated",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "created" => Some(Kind::Created),
            "updated" => Some(Kind::Updated),
            _ => None,
        }
    }
}

/// One entry of a topic's log.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    /// When it was appended (Unix ms): retention counts from it.
    pub at_ms: i64,
    pub kind: Kind,
    pub key: RecordKey,
    /// The record exactly as the vendor sent it.
    pub raw: Arc<RawValue>,
}

/// What subscribers are sent as it happens.
#[derive(Debug, Clone)]
pub enum Msg {
    Event(Arc<Event>),
    /// A poll failed or came back incomplete: nothing is said about the records it did not
    /// vouch for, and it is retried.
    Warning(Arc<str>),
    /// The log was lost (the shared one expired or was flushed): every subscriber starts
    /// over.
    Reset,
}

/// A record as last seen.
#[derive(Debug, Clone)]
pub struct Known {
    pub start: i64,
    pub digest: [u8; 16],
    pub raw: Arc<RawValue>,
}

/// The digest a change is detected by: the record's bytes as the vendor sent them.
pub fn digest(raw: &RawValue) -> [u8; 16] {
    let full = Sha256::digest(raw.get().as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// The identity a record is followed by — the one `/v1/interactions` de-duplicates by:
/// `sessionId` and `conversationId` (two records of one session with two conversations are
/// two records); a record with neither is known by its bytes.
pub fn identity(r: &Record) -> Arc<str> {
    match (&r.session_id, &r.conversation_id) {
        (Some(s), None) => Arc::clone(s),
        (Some(s), Some(c)) => Arc::from(format!("{s}\u{1f}{c}").as_str()),
        (None, Some(c)) => Arc::from(format!("\u{1f}{c}").as_str()),
        (None, None) => Arc::from(format!("#{}", crate::cache::hex(&digest(&r.raw))).as_str()),
    }
}

/// The topic's records and log, as this replica knows them.
#[derive(Debug)]
pub struct Mirror {
    /// One life of the log (16 hex digits): ids of another are foreign.
    pub epoch: String,
    pub state: HashMap<Arc<str>, Known>,
    pub log: VecDeque<Arc<Event>>,
    /// Bytes of the records in `log`.
    pub log_bytes: usize,
    pub last_seq: u64,
    /// Every event up to this one is gone (retention): an id before it cannot resume.
    pub trimmed_through: u64,
    /// A complete poll has been made: the records are known, the backlog can be told.
    pub ready: bool,
}

impl Mirror {
    pub fn new(epoch: String) -> Self {
        Mirror {
            epoch,
            state: HashMap::new(),
            log: VecDeque::new(),
            log_bytes: 0,
            last_seq: 0,
            trimmed_through: 0,
            ready: false,
        }
    }

    /// Drops the events older than `retention` (and beyond the cap).
    pub fn trim(&mut self, now_ms: i64, retention: Duration) {
        let oldest = now_ms - retention.as_millis() as i64;
        while self
            .log
            .front()
            .is_some_and(|e| e.at_ms < oldest || self.log_bytes > MAX_LOG_BYTES)
        {
            if let Some(e) = self.log.pop_front() {
                self.trimmed_through = e.seq;
                self.log_bytes = self.log_bytes.saturating_sub(e.raw.get().len());
            }
        }
    }

    /// The events after `seq`, oldest first (seqs only grow).
    fn after(&self, seq: u64) -> impl Iterator<Item = &Arc<Event>> {
        let from = self.log.partition_point(|e| e.seq <= seq);
        self.log.range(from..)
    }
}

/// What a subscriber is sent first, and where its live events start.
pub struct Opening {
    /// Its id was foreign or too old: tell it to reload first.
    pub reset: bool,
    /// Changes to replay, oldest first, each with the id to send it under.
    pub replay: Vec<(Arc<Event>, Option<RecordKey>)>,
    /// Backlog records from the mirror, in record order.
    pub backlog: Vec<(RecordKey, Arc<RawValue>)>,
    /// Where the log stood: live events follow it.
    pub at_seq: u64,
    pub epoch: String,
    /// Records before the mirror's horizon to fetch and send first (`since`, the horizon,
    /// and the key they must come after).
    pub older: Option<(i64, i64, Option<RecordKey>)>,
    pub rx: broadcast::Receiver<Msg>,
}

/// The watched part of the day: from the hour `lookback` before `now` to the end of `now`'s
/// local day (so every poll of a day asks the same windows, and "today" as asked on
/// `/v1/interactions` is inside them).
pub fn watched(now: Timestamp, lookback: Duration, tz: &TimeZone) -> (Timestamp, Timestamp) {
    let from = now.as_second() - lookback.as_secs() as i64;
    let horizon = Timestamp::from_second(from.div_euclid(3600) * 3600).unwrap_or(now);
    let today = tz.to_datetime(now).date();
    let end = tz
        .to_ambiguous_timestamp(today.to_datetime(Time::constant(23, 59, 59, 0)))
        .later()
        .unwrap_or(now);
    (horizon, end.max(now))
}

/// Who the topic is.
pub struct Spec {
    pub account: Arc<Account>,
    pub filters: Filters,
    pub tz: TimeZone,
    pub tz_name: String,
}

pub struct Topic {
    /// 16 hex digits naming account, filters, fields and zone (Redis keys, logs).
    pub id: String,
    pub spec: Spec,
    pub mirror: Mutex<Mirror>,
    pub tx: broadcast::Sender<Msg>,
    ready: watch::Sender<bool>,
    pub subscribers: AtomicUsize,
    /// The running poller's stop (none while nobody listens).
    poller: Mutex<Option<Stop>>,
    /// Unix seconds of the last subscriber's departure (0 while someone listens).
    pub idle_since: Mutex<i64>,
    pub settings: FeedSettings,
    windows: Arc<WindowCache>,
    counters: Arc<FeedCounters>,
    drain: Drain,
    max_calls: u32,
    /// Polls made, and the last one's outcome (for `/status`).
    pub polls: Mutex<PollReport>,
    /// With replicas: the shared log this topic's mirror follows.
    pub shared: Option<Arc<super::shared::SharedTopic>>,
}

/// The last poll, as the status page shows it.
#[derive(Debug, Clone, Default)]
pub struct PollReport {
    pub polls: u64,
    pub last_unix: i64,
    pub last_calls: u32,
    pub last_warning: Option<String>,
    /// This replica holds the topic's poller lease (always, alone).
    pub polling: bool,
}

pub struct TopicParts {
    pub id: String,
    pub spec: Spec,
    pub settings: FeedSettings,
    pub windows: Arc<WindowCache>,
    pub counters: Arc<FeedCounters>,
    pub drain: Drain,
    pub max_calls: u32,
    pub shared: Option<Arc<super::shared::SharedTopic>>,
}

impl Topic {
    pub fn new(p: TopicParts) -> Arc<Self> {
        let epoch = crate::telemetry::random_bytes::<8>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Arc::new(Topic {
            id: p.id,
            spec: p.spec,
            mirror: Mutex::new(Mirror::new(epoch)),
            tx: broadcast::channel(p.settings.buffer.max(1)).0,
            ready: watch::channel(false).0,
            subscribers: AtomicUsize::new(0),
            poller: Mutex::new(None),
            idle_since: Mutex::new(0),
            settings: p.settings,
            windows: p.windows,
            counters: p.counters,
            drain: p.drain,
            max_calls: p.max_calls,
            polls: Mutex::new(PollReport::default()),
            shared: p.shared,
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the mirror as holding a complete picture (subscribers waiting may open).
    pub fn set_ready(&self, m: &mut Mirror) {
        if !m.ready {
            m.ready = true;
            self.ready.send_replace(true);
        }
    }

    /// Replaces the mirror (a load from the shared log); subscribers that open next wait
    /// until it is complete again.
    pub fn replace(&self, m: &mut Mirror, with: Mirror) {
        *m = with;
        self.ready.send_replace(m.ready);
    }

    /// Resolves once the mirror holds a complete picture.
    pub async fn until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// With replicas, an id given out by another replica may name an event this mirror has
    /// not read yet (it follows the shared log every `FOLLOW_EVERY`): waits, a few rounds
    /// at most, until it has, so the id resumes here instead of being taken for unknown.
    pub async fn catch_up(&self, resume: &Resume) {
        let (Resume::Live { epoch, seq } | Resume::Backlog { epoch, seq, .. }) = resume else {
            return;
        };
        if self.shared.is_none() {
            return;
        }
        let behind = || {
            let m = self.lock();
            *epoch == m.epoch && *seq > m.last_seq
        };
        let mut rx = self.tx.subscribe();
        if !behind() {
            return;
        }
        let wait = async {
            while behind() {
                if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(super::shared::FOLLOW_EVERY * 4, wait).await;
    }

    /// A subscriber arrives: the poller runs (or the shared log is followed) while anyone
    /// listens.
    pub fn join(self: &Arc<Self>) {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        let mut poller = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        if poller.is_none() {
            let stop = Stop::default();
            *poller = Some(stop.clone());
            let this = Arc::clone(self);
            tokio::spawn(async move { this.run(stop).await });
        }
    }

    /// A subscriber leaves.
    pub fn leave(&self) {
        if self.subscribers.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) =
                Timestamp::now().as_second();
        }
    }

    /// Polls (or follows the shared log) every FEED_INTERVAL while anyone listens; stops
    /// one interval after the last subscriber left, or at the drain.
    async fn run(self: Arc<Self>, stop: Stop) {
        let interval = self.settings.interval;
        loop {
            let started = tokio::time::Instant::now();
            match &self.shared {
                None => {
                    self.poll(&stop).await;
                }
                Some(shared) => shared.round(&self, &stop).await,
            }
            let next = match &self.shared {
                // The shared log is read often (events reach subscribers within that
                // period); the round itself polls once per interval.
                Some(_) => started + super::shared::FOLLOW_EVERY,
                None => started + interval,
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = stop.fired() => return,
                () = self.drain.started() => return,
            }
            if self.subscribers.load(Ordering::SeqCst) == 0 {
                let idle = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                if idle > 0 && Timestamp::now().as_second() - idle >= interval.as_secs() as i64 {
                    let mut poller = self.poller.lock().unwrap_or_else(|p| p.into_inner());
                    // Nobody came back meanwhile (a join holds this lock to start one).
                    if self.subscribers.load(Ordering::SeqCst) == 0 {
                        *poller = None;
                        if let Some(shared) = &self.shared {
                            shared.give_up(&self.id);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// One poll of the watched part of the day, at the budget's lowest priority, refreshing
    /// the window cache `/v1/interactions` reads. Returns the changes it can vouch for
    /// (records of windows fetched complete and fresh) and whether every window was;
    /// sends a warning for each window it could not vouch for.
    pub async fn fetch_changes(&self, stop: &Stop, state: &HashMap<Arc<str>, Known>) -> Polled {
        let now = Timestamp::now();
        let (horizon, end) = watched(now, self.settings.lookback, &self.spec.tz);
        let windows = match plan(horizon, end, &self.spec.tz) {
            Ok(w) => w,
            Err(e) => {
                return Polled::failed(format!("the watched range cannot be planned: {e}"));
            }
        };
        let account = &self.spec.account;
        let fetch = RangeFetch::new(
            Arc::clone(&account.fetcher),
            Arc::clone(&self.windows),
            account.ns.clone(),
            self.spec.filters.clone(),
            Arc::from("feed"),
            Arc::from(format!("feed-{}", self.id).as_str()),
            account.allowance(self.max_calls),
            true,
        )
        .for_feed(stop.clone());
        let outcomes =
            futures_util::future::join_all(windows.iter().map(|w| fetch.window(*w))).await;
        let mut polled = Polled {
            horizon: horizon.as_second(),
            ..Polled::default()
        };
        for (w, o) in windows.iter().zip(outcomes) {
            match o {
                Ok(o) if matches!(o.source, Source::Hit | Source::Miss) && o.data.complete() => {
                    polled.calls += o.calls;
                    for r in &o.data.records {
                        let id = identity(r);
                        let start = r.start.unwrap_or(w.start.as_second());
                        let d = digest(&r.raw);
                        let kind = match state.get(&id) {
                            None => Kind::Created,
                            Some(k) if k.digest != d => Kind::Updated,
                            Some(_) => continue,
                        };
                        polled.changes.push((
                            kind,
                            Known {
                                start,
                                digest: d,
                                raw: Arc::clone(&r.raw),
                            },
                            id,
                        ));
                    }
                }
                Ok(o) => {
                    polled.calls += o.calls;
                    let why = if o.data.complete() {
                        "the upstream failed; only an older copy is at hand".to_owned()
                    } else {
                        o.data.warnings.join("; ")
                    };
                    polled.warnings.push(window_warning(w, &why));
                }
                Err(e) => polled.warnings.push(window_warning(w, &e.to_string())),
            }
        }
        polled
    }

    /// One poll with the mirror as the record of what was seen (alone, without replicas).
    async fn poll(&self, stop: &Stop) {
        let state = self.lock().state.clone();
        let polled = self.fetch_changes(stop, &state).await;
        let now_ms = Timestamp::now().as_millisecond();
        {
            let mut m = self.lock();
            self.apply(&mut m, &polled, now_ms);
        }
        self.report(&polled, true);
    }

    /// Applies a poll's changes to the mirror (events only once it is ready: the first
    /// complete poll learns the records, it does not announce them) and tells subscribers.
    fn apply(&self, m: &mut Mirror, polled: &Polled, now_ms: i64) {
        let announce = m.ready;
        for (kind, known, id) in &polled.changes {
            if announce {
                let e = Event {
                    seq: m.last_seq + 1,
                    at_ms: now_ms,
                    kind: *kind,
                    key: RecordKey {
                        start: known.start,
                        id: Arc::clone(id),
                    },
                    raw: Arc::clone(&known.raw),
                };
                self.record_event(m, e, known.digest);
            } else {
                m.state.insert(Arc::clone(id), known.clone());
            }
        }
        if polled.warnings.is_empty() {
            m.state.retain(|_, k| k.start >= polled.horizon);
            self.set_ready(m);
        }
        for w in &polled.warnings {
            self.warn(w);
        }
        m.trim(now_ms, self.settings.retention);
    }

    /// One event into the mirror: the log, the record's last-seen state, the subscribers.
    pub fn record_event(&self, m: &mut Mirror, e: Event, digest: [u8; 16]) {
        let e = Arc::new(e);
        m.last_seq = m.last_seq.max(e.seq);
        m.state.insert(
            Arc::clone(&e.key.id),
            Known {
                start: e.key.start,
                digest,
                raw: Arc::clone(&e.raw),
            },
        );
        self.counters.count_event(e.kind);
        m.log_bytes += e.raw.get().len();
        m.log.push_back(Arc::clone(&e));
        let _ = self.tx.send(Msg::Event(e));
    }

    /// Tells every subscriber a poll could not be vouched for.
    pub fn warn(&self, w: &str) {
        let _ = self.tx.send(Msg::Warning(Arc::from(w)));
        self.counters.warnings.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_feed_events_total", "event" => "warning").increment(1);
    }

    /// Notes a poll for `/status` and `/metrics`.
    pub fn report(&self, polled: &Polled, polling: bool) {
        self.counters
            .upstream_calls
            .fetch_add(u64::from(polled.calls), Ordering::Relaxed);
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_feed_upstream_calls_total", "account" => self.spec.account.name.to_string())
            .increment(u64::from(polled.calls));
        let mut r = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        r.polls += 1;
        r.last_unix = Timestamp::now().as_second();
        r.last_calls = polled.calls;
        r.last_warning = polled.warnings.first().cloned();
        r.polling = polling;
    }

    /// What a subscriber is sent first: a reset if its id cannot resume here, then the
    /// changes it missed and the backlog from `since`, then live events from `at_seq`.
    /// Taken under the mirror's lock, with the live receiver subscribed inside it: no event
    /// falls between the two.
    pub fn open(&self, resume: &Resume, since: i64, now: Timestamp) -> Option<Opening> {
        let (horizon, _) = watched(now, self.settings.lookback, &self.spec.tz);
        let horizon = horizon.as_second();
        let m = self.lock();
        if !m.ready {
            // Replaced by a load since the wait ended: wait again.
            return None;
        }
        let resumable = |epoch: &str, seq: u64| {
            epoch == m.epoch && seq <= m.last_seq && seq >= m.trimmed_through
        };
        let (reset, replay, after) = match resume {
            Resume::Fresh => (false, Vec::new(), None),
            Resume::Live { epoch, seq } if resumable(epoch, *seq) => {
                let replay = m.after(*seq).map(|e| (Arc::clone(e), None)).collect();
                return Some(Opening {
                    reset: false,
                    replay,
                    backlog: Vec::new(),
                    at_seq: m.last_seq,
                    epoch: m.epoch.clone(),
                    older: None,
                    rx: self.tx.subscribe(),
                });
            }
            Resume::Backlog { epoch, seq, after } if resumable(epoch, *seq) => {
                // Changes since `seq` to records already sent; later records go out with
                // their current content in the backlog below.
                let replay = m
                    .after(*seq)
                    .filter(|e| e.key <= *after)
                    .map(|e| (Arc::clone(e), Some(after.clone())))
                    .collect();
                (false, replay, Some(after.clone()))
            }
            _ => (true, Vec::new(), None),
        };
        let mut backlog: Vec<(RecordKey, Arc<RawValue>)> = m
            .state
            .iter()
            .filter(|(_, k)| k.start >= since.max(horizon))
            .map(|(id, k)| {
                (
                    RecordKey {
                        start: k.start,
                        id: Arc::clone(id),
                    },
                    Arc::clone(&k.raw),
                )
            })
            .filter(|(key, _)| after.as_ref().is_none_or(|a| key > a))
            .collect();
        backlog.sort_by(|a, b| a.0.cmp(&b.0));
        let older = (since < horizon && after.as_ref().is_none_or(|a| a.start < horizon))
            .then(|| (since, horizon, after.clone()));
        Some(Opening {
            reset,
            replay,
            backlog,
            at_seq: m.last_seq,
            epoch: m.epoch.clone(),
            older,
            rx: self.tx.subscribe(),
        })
    }

    /// Stops the poller (the topic is being forgotten).
    pub fn stop(&self) {
        if let Some(s) = self.poller.lock().unwrap_or_else(|p| p.into_inner()).take() {
            s.fire();
        }
    }
}

fn window_warning(w: &Window, why: &str) -> String {
    format!(
        "the poll of {} .. {} could not be vouched for ({why}); its records are not compared until a poll succeeds, and it is retried",
        w.start, w.end
    )
}

/// One poll's result.
#[derive(Debug, Default)]
pub struct Polled {
    /// The changes it vouches for, against the state it was given.
    pub changes: Vec<(Kind, Known, Arc<str>)>,
    pub warnings: Vec<String>,
    pub calls: u32,
    /// The start of the watched part: records before it are no longer followed.
    pub horizon: i64,
}

impl Polled {
    fn failed(why: String) -> Self {
        Polled {
            warnings: vec![why],
            ..Polled::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        let w = Window {
            start: Timestamp::from_second(0).unwrap_or(Timestamp::UNIX_EPOCH),
            end: Timestamp::from_second(86_399).unwrap_or(Timestamp::UNIX_EPOCH),
            offset_seconds: 0,
        };
        Record::new(RawValue::from_string(json.to_owned()).expect("json"), &w)
    }

    #[test]
    fn records_are_followed_by_the_identity_the_answers_dedupe_by() {
        let a = record(r#"{"sessionId":"s1","conversationId":"c1","finalStatus":"x"}"#);
        let b = record(r#"{"sessionId":"s1","conversationId":"c2"}"#);
        let c = record(r#"{"sessionId":"s1"}"#);
        let d = record(r#"{"conversationId":"c1"}"#);
        let e = record(r#"{"channel":"voice"}"#);
        let f = record(r#"{"channel":"sms"}"#);
        let ids: Vec<Arc<str>> = [&a, &b, &c, &d, &e, &f]
            .iter()
            .map(|r| identity(r))
            .collect();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "six records, six identities: {ids:?}"
        );
        // The same record fetched again (changed or not) keeps its identity.
        let a2 = record(r#"{"sessionId":"s1","conversationId":"c1","finalStatus":"y"}"#);
        assert_eq!(identity(&a), identity(&a2));
        assert_eq!(&*identity(&c), "s1");
        assert_ne!(digest(&a.raw), digest(&a2.raw), "its change is seen");
    }
}

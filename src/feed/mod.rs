//! The change feed (`GET /v1/interactions/changes`): new and changed interactions pushed to
//! live screens as server-sent events, from one poll per topic however many listen.
//!
//! The vendor has no push and no `updatedAt`, so a change is found the only way there is:
//! the watched part of the day (FEED_LOOKBACK back from now, to the end of the local day) is
//! polled every FEED_INTERVAL at the budget's lowest priority, through the window cache
//! `/v1/interactions` reads (a dashboard that mixes both pays once), and every record's
//! bytes are compared with the last ones seen ([`topic`]). What appeared is `created`, what
//! changed is `updated`, in one log per topic that subscribers resume from by event id
//! ([`id`]) within FEED_RETENTION. A poll that fails or comes back incomplete says so
//! (`warning`) and announces nothing for the windows it cannot vouch for.
//!
//! With REDIS_URL one replica polls each topic (a lease) and the log lives in Redis
//! ([`shared`]): a client that reconnects to another replica resumes from its id. Browsers
//! whose `EventSource` cannot send a key header use a short-lived signed [`ticket`].

pub mod id;
pub mod shared;
pub mod ticket;
pub mod topic;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use jiff::tz::TimeZone;

use crate::{
    account::Account, cache::WindowCache, cluster::Cluster, drain::Drain, upstream::Filters,
};

pub use self::topic::{Kind, Msg, Topic};

/// Topics kept without a subscriber (for a resume) at most; the longest idle go first.
pub const MAX_IDLE_TOPICS: usize = 256;

// Defined with the rest of the configuration (config must not import the feed).
pub use crate::config::FeedSettings;

/// What the feed did, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct FeedCounters {
    pub created: AtomicU64,
    pub updated: AtomicU64,
    pub warnings: AtomicU64,
    pub resets: AtomicU64,
    pub polls: AtomicU64,
    pub upstream_calls: AtomicU64,
    /// Events written to subscribers (each subscriber's copy counts).
    pub sent: AtomicU64,
}

impl FeedCounters {
    fn count_event(&self, kind: Kind) {
        match kind {
            Kind::Created => self.created.fetch_add(1, Ordering::Relaxed),
            Kind::Updated => self.updated.fetch_add(1, Ordering::Relaxed),
        };
        metrics::counter!("gateway_feed_events_total", "event" => kind.as_str()).increment(1);
    }
}

/// The topics, the subscribers per key, and what the feed needs to poll.
pub struct Feed {
    pub settings: FeedSettings,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    per_key: Mutex<HashMap<Arc<str>, usize>>,
    pub counters: Arc<FeedCounters>,
    windows: Arc<WindowCache>,
    cluster: Option<Arc<Cluster>>,
    drain: Drain,
    max_calls: u32,
    pub tickets: ticket::TicketKey,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One open stream of a key: counted until dropped.
pub struct Subscription {
    feed: Arc<Feed>,
    key: Arc<str>,
    pub topic: Arc<Topic>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topic.leave();
        let mut per_key = self.feed.per_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.key);
            }
        }
        metrics::gauge!("gateway_feed_subscribers").decrement(1.0);
    }
}

/// What a topic is made of, before it is looked up.
pub struct TopicRequest {
    pub account: Arc<Account>,
    pub filters: Filters,
    pub tz: TimeZone,
    pub tz_name: String,
}

impl TopicRequest {
    /// The topic's id: the account's namespace, the filters and fields, the zone.
    pub fn id(&self) -> String {
        let mut e = crate::cache::KeyEncoder::default();
        e.text("feed-topic");
        e.bytes(self.account.ns.digest());
        e.filters(&self.filters);
        e.text(&self.tz_name);
        crate::cache::hex(&e.finish()[..8])
    }
}

impl Feed {
    pub fn new(
        settings: FeedSettings,
        windows: Arc<WindowCache>,
        cluster: Option<Arc<Cluster>>,
        drain: Drain,
        max_calls: u32,
        tickets: ticket::TicketKey,
    ) -> Arc<Self> {
        Arc::new(Feed {
            settings,
            topics: Mutex::new(HashMap::new()),
            per_key: Mutex::new(HashMap::new()),
            counters: Arc::new(FeedCounters::default()),
            windows,
            cluster,
            drain,
            max_calls,
            tickets,
        })
    }

    /// A stream for `key` on the topic `req` names (created on first use).
    ///
    /// # Errors
    /// The key already holds FEED_MAX_SUBSCRIBERS_PER_KEY streams.
    pub fn subscribe(
        self: &Arc<Self>,
        key: &Arc<str>,
        req: TopicRequest,
    ) -> Result<Subscription, usize> {
        {
            let mut per_key = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_key.entry(Arc::clone(key)).or_default();
            if *n >= self.settings.max_subscribers_per_key {
                return Err(self.settings.max_subscribers_per_key);
            }
            *n += 1;
        }
        let id = req.id();
        let topic = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            self.forget_idle(&mut topics);
            let topic = Arc::clone(topics.entry(id.clone()).or_insert_with(|| {
                let shared = self.cluster.as_ref().map(|c| {
                    Arc::new(shared::SharedTopic::new(
                        Arc::clone(c),
                        req.account.ns.label(),
                        &id,
                    ))
                });
                Topic::new(topic::TopicParts {
                    id: id.clone(),
                    spec: topic::Spec {
                        account: Arc::clone(&req.account),
                        filters: req.filters,
                        tz: req.tz,
                        tz_name: req.tz_name,
                    },
                    settings: self.settings,
                    windows: Arc::clone(&self.windows),
                    counters: Arc::clone(&self.counters),
                    drain: self.drain.clone(),
                    max_calls: self.max_calls,
                    shared,
                })
            }));
            // Joined under the topics' lock: no concurrent subscribe forgets it in between.
            topic.join();
            topic
        };
        metrics::gauge!("gateway_feed_subscribers").increment(1.0);
        Ok(Subscription {
            feed: Arc::clone(self),
            key: Arc::clone(key),
            topic,
        })
    }

    /// Forgets topics nobody has listened to for FEED_RETENTION (their ids could no longer
    /// resume anything anyway), and beyond [`MAX_IDLE_TOPICS`] the longest idle first: what
    /// idle topics hold stays bounded however many filter combinations are tried.
    fn forget_idle(&self, topics: &mut HashMap<String, Arc<Topic>>) {
        let now = jiff::Timestamp::now().as_second();
        let retention = self.settings.retention.as_secs() as i64;
        // (idle since, id) of every topic nobody listens to, the longest idle first.
        let mut idle: Vec<(i64, String)> = topics
            .iter()
            .filter(|(_, t)| t.subscribers.load(Ordering::SeqCst) == 0)
            .map(|(id, t)| {
                (
                    *t.idle_since.lock().unwrap_or_else(|p| p.into_inner()),
                    id.clone(),
                )
            })
            .filter(|(since, _)| *since > 0)
            .collect();
        idle.sort();
        let over = idle.len().saturating_sub(MAX_IDLE_TOPICS);
        for (i, (since, id)) in idle.iter().enumerate() {
            if (i < over || now - since >= retention)
                && let Some(t) = topics.remove(id)
            {
                t.stop();
            }
        }
    }

    /// Streams open, by key (the status page).
    pub fn subscribers_by_key(&self) -> Vec<(Arc<str>, usize)> {
        let per_key = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = per_key.iter().map(|(k, n)| (Arc::clone(k), *n)).collect();
        v.sort();
        v
    }

    /// The topics with their account, subscribers and last poll (the status page).
    pub fn topics(&self) -> Vec<TopicStatus> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<TopicStatus> = topics
            .values()
            .map(|t| {
                let m = t.lock();
                let r = t.polls.lock().unwrap_or_else(|p| p.into_inner()).clone();
                TopicStatus {
                    id: t.id.clone(),
                    account: t.spec.account.name.to_string(),
                    account_index: t.spec.account.index,
                    tz: t.spec.tz_name.clone(),
                    subscribers: t.subscribers.load(Ordering::SeqCst),
                    records: m.state.len(),
                    events: m.log.len(),
                    ready: m.ready,
                    polls: r.polls,
                    // With replicas the lease says it (it is let go or lost between
                    // polls); alone, the last poll does.
                    polling: t.shared.as_ref().map_or(r.polling, |s| s.is_poller()),
                    last_poll_unix: r.last_unix,
                    last_poll_calls: r.last_calls,
                    last_warning: r.last_warning,
                }
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// One topic, as `/status.json` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TopicStatus {
    pub id: String,
    pub account: String,
    #[serde(skip)]
    pub account_index: usize,
    pub tz: String,
    pub subscribers: usize,
    /// Records of the watched part this replica knows.
    pub records: usize,
    /// Events in the log (within FEED_RETENTION).
    pub events: usize,
    /// A complete poll has been made.
    pub ready: bool,
    /// Polls this replica made (or rounds it followed the shared log).
    pub polls: u64,
    /// This replica polls the topic (with replicas, one does).
    pub polling: bool,
    pub last_poll_unix: i64,
    pub last_poll_calls: u32,
    pub last_warning: Option<String>,
}

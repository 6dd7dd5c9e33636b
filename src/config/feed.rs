//! FEED_*: the change feed's settings (what [`crate::feed`] polls, keeps and allows),
//! typed and validated with the rest of the configuration.

use std::time::Duration;

/// FEED_* settings.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// FEED_INTERVAL: how often a topic's watched part is polled.
    pub interval: Duration,
    /// FEED_LOOKBACK: records starting this far back are followed for changes.
    pub lookback: Duration,
    /// FEED_RETENTION: how long an event can be resumed from.
    pub retention: Duration,
    /// FEED_MAX_SUBSCRIBERS_PER_KEY: streams one key may hold open.
    pub max_subscribers_per_key: usize,
    /// The longest silence on a stream: a `: keep-alive` comment goes out after it.
    pub keep_alive: Duration,
    /// How long a ticket is valid (at most 5 minutes).
    pub ticket_ttl: Duration,
    /// Events a subscriber may fall behind by before it is told to reset and closed.
    pub buffer: usize,
}

/// How far a stream may fall behind by default (events).
pub const SUBSCRIBER_BUFFER: usize = 1024;

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            interval: Duration::from_secs(60),
            lookback: Duration::from_secs(86_400),
            retention: Duration::from_secs(86_400),
            max_subscribers_per_key: 16,
            keep_alive: Duration::from_secs(15),
            ticket_ttl: Duration::from_secs(300),
            buffer: SUBSCRIBER_BUFFER,
        }
    }
}

//! The replicas' side of the budget, as the budget sees it: a sliding-window log every
//! replica of one account writes to (Redis, in `cluster`), behind a small trait so the
//! scheduler neither knows nor imports where it lives.

use std::time::Duration;

use tokio::time::Instant;

/// When the shared log was last lost and regained (the budget's hand-over periods).
#[derive(Debug, Default, Clone, Copy)]
pub struct Transitions {
    pub lost_at: Option<Instant>,
    pub regained_at: Option<Instant>,
}

/// One account's budget shared by every replica.
#[async_trait::async_trait]
pub trait SharedLog: Send + Sync + std::fmt::Debug {
    /// Takes a slot for a call at `priority` while fewer than `limit` calls (the room of
    /// that priority: all of the period's calls, or refresh-ahead's three quarters) are in
    /// the log of the sliding `period`, held as in flight for at most `lease`. The order of
    /// priorities holds across replicas: a call is refused while another replica has calls
    /// of a more urgent priority waiting. `Some(Ok(member))`: granted (give it to
    /// [`SharedLog::release`] when the call completes); `Some(Err(wait))`: not now, for
    /// about `wait`; `None`: unreachable.
    async fn acquire(
        &self,
        limit: u32,
        period: Duration,
        lease: Duration,
        priority: super::Priority,
    ) -> Option<Result<String, Duration>>;

    /// [`SharedLog::acquire`] for a call at the caller priority, choosing *whose* call it
    /// is by `shares` over the callers waiting on every replica (this replica's are
    /// `waiting`, in arrival order): `Some(Ok((member, key)))`, a slot granted to the caller
    /// `key`, one of `waiting`; `Some(Err(wait))` when the log is full or the next call
    /// belongs to a caller waiting on another replica. A log that keeps no shares grants
    /// to the first of `waiting`.
    async fn acquire_keyed(
        &self,
        limit: u32,
        period: Duration,
        lease: Duration,
        shares: &crate::config::KeyShares,
        waiting: &[std::sync::Arc<str>],
    ) -> Option<Result<(String, std::sync::Arc<str>), Duration>> {
        let _ = shares;
        let Some(first) = waiting.first().cloned() else {
            return Some(Err(Duration::from_millis(50)));
        };
        self.acquire(limit, period, lease, super::Priority::Caller)
            .await
            .map(|r| r.map(|member| (member, first)))
    }

    /// Records the completion of the call that took `member`.
    async fn release(&self, member: &str);

    /// Replicas sharing the log (at least the number expected): while the log is
    /// unreachable each replica keeps to its share of the rate.
    fn replicas(&self) -> u32;

    /// Whether the last operation reached the log.
    fn is_up(&self) -> bool;

    /// When the log was last lost and regained.
    fn transitions(&self) -> Transitions;
}

/// A sliding-window counter every replica writes to (Redis): one limit shared by all.
#[async_trait::async_trait]
pub trait SharedCounter: Send + Sync + std::fmt::Debug {
    /// Counts one event of `name` if fewer than `limit` were counted within the last
    /// `period`. `Some(Ok((left, reset)))`: counted, `left` more may follow now and the
    /// oldest counted leaves the window in `reset`; `Some(Err(wait))`: over the limit for
    /// about `wait`; `None`: unreachable.
    async fn admit(
        &self,
        name: &str,
        limit: u32,
        period: Duration,
    ) -> Option<Result<(u32, Duration), Duration>>;

    /// Replicas sharing the counter (at least the number expected): while it is
    /// unreachable each keeps to its share.
    fn replicas(&self) -> u32;
}

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
    /// Takes a slot of `calls` per sliding `period`, held as in flight for at most `lease`.
    /// `Some(Ok(member))`: granted (give it to [`SharedLog::release`] when the call
    /// completes); `Some(Err(wait))`: full for about `wait`; `None`: unreachable.
    async fn acquire(
        &self,
        calls: u32,
        period: Duration,
        lease: Duration,
    ) -> Option<Result<String, Duration>>;

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

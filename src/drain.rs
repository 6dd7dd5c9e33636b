//! Shutting down within `SHUTDOWN_GRACE`: the one signal every wait for upstream budget
//! watches, and the deadlines it imposes.
//!
//! When the process is told to stop, nothing may keep it past the grace. Work falls in three
//! kinds, each with its own patience ([`Patience`]):
//! * a **request** still waiting for budget stops waiting halfway through the grace and is
//!   answered 503 with `Retry-After` (its status still goes out, and a retry lands on another
//!   replica or on this one restarted); a call already in flight completes;
//! * a **job** stops waiting at once: it is left resumable (its windows done are cached, its
//!   record saved) and another replica, or this one restarted, carries on;
//! * **paid-for work** (the pages after a window's first, a cut's parts) stops waiting when
//!   requests do (a request may be waiting on it), or at once for a job's; background
//!   revalidations stop at once; what completed is cached.
//!
//! Before the drain, a request's waits end `KORE_MAX_WAIT` after it started (its whole wait,
//! not each call's), a job and paid-for work wait as long as the budget needs, and
//! background revalidations wait up to `KORE_MAX_WAIT` per call.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

/// How long one piece of work may wait for upstream budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// A request: every wait ends by `until` (KORE_MAX_WAIT after it started).
    Request { until: Instant },
    /// Background work (a revalidation, a refresh ahead): each call waits up to
    /// KORE_MAX_WAIT.
    PerCall,
    /// The rest of a window whose first page is in, for a request (paid for: finished so
    /// that no call is wasted, even after the request answered): as long as the budget
    /// needs, until half the grace once the drain starts (what a request waits on).
    PaidFor,
    /// A job (it can be cancelled, and it is visible): as long as the budget needs.
    Unbounded,
}

/// The shutdown signal (cheap to clone; clones share it).
#[derive(Debug, Clone)]
pub struct Drain {
    tx: std::sync::Arc<watch::Sender<Option<Draining>>>,
}

/// When the drain began and when requests must stop waiting.
#[derive(Debug, Clone, Copy)]
struct Draining {
    at: Instant,
    requests_until: Instant,
}

impl Draining {
    /// When a wait of this `patience` must end, the drain having begun.
    fn until(&self, patience: Patience) -> Instant {
        match patience {
            Patience::Request { .. } | Patience::PaidFor => self.requests_until,
            Patience::PerCall | Patience::Unbounded => self.at,
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tx: std::sync::Arc::new(watch::channel(None).0),
        }
    }
}

impl Drain {
    /// Starts the drain: jobs and paid-for work stop waiting now, requests at half the
    /// `grace` (so their answer, and the call they may have in flight, fit inside it).
    /// Starting it again changes nothing.
    pub fn start(&self, grace: Duration) {
        let now = Instant::now();
        self.tx.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(Draining {
                at: now,
                requests_until: now + grace / 2,
            });
            true
        });
    }

    /// Whether the process is shutting down.
    pub fn is_draining(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// When a wait of this `patience` must end now, if ever; `per_call` is what a
    /// [`Patience::PerCall`] wait may take from now.
    pub fn deadline(&self, patience: Patience, per_call: Duration) -> Option<Instant> {
        let own = match patience {
            Patience::Request { until } => Some(until),
            Patience::PerCall => Some(Instant::now() + per_call),
            Patience::PaidFor | Patience::Unbounded => None,
        };
        let drained = (*self.tx.borrow()).map(|d| d.until(patience));
        match (own, drained) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Resolves when a wait of this `patience` that starts now must end: at its deadline,
    /// moved earlier if the drain starts meanwhile. Never resolves for a job outside a drain.
    pub async fn expired(&self, patience: Patience, per_call: Duration) {
        let own = self.deadline(patience, per_call);
        let mut rx = self.tx.subscribe();
        loop {
            let until = match (*rx.borrow_and_update()).map(|d| d.until(patience)) {
                Some(d) => Some(own.map_or(d, |o| o.min(d))),
                None => own,
            };
            let sleep = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The sender is gone with the app: nothing will shorten the wait.
                        match until {
                            Some(t) => return tokio::time::sleep_until(t).await,
                            None => return std::future::pending().await,
                        }
                    }
                }
            }
        }
    }

    /// Resolves once the drain has started.
    pub async fn started(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

/// The stop of one piece of work (a cancelled job, or one another replica took over): the
/// waits of its windows that have not spent a call yet end at once. (Paid-for work — the
/// rest of a window whose first page is in — does not watch it: it finishes and is cached.)
#[derive(Debug, Clone)]
pub struct Stop(std::sync::Arc<watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(std::sync::Arc::new(watch::channel(false).0))
    }
}

impl Stop {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once fired.
    pub async fn fired(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_shortens_every_wait_to_its_kind() {
        let drain = Drain::default();
        let per_call = Duration::from_secs(120);
        let request = Patience::Request {
            until: Instant::now() + Duration::from_secs(60),
        };
        assert!(drain.deadline(Patience::Unbounded, per_call).is_none());
        let job = tokio::spawn({
            let d = drain.clone();
            async move { d.expired(Patience::Unbounded, per_call).await }
        });
        let req = tokio::spawn({
            let d = drain.clone();
            async move { d.expired(request, per_call).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!job.is_finished() && !req.is_finished());
        drain.start(Duration::from_secs(20));
        // Paid-for work of a request stops when requests do; before the drain it had no end.
        let far = Patience::Request {
            until: Instant::now() + Duration::from_secs(3600),
        };
        assert_eq!(
            drain.deadline(Patience::PaidFor, per_call),
            drain.deadline(far, per_call)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(job.is_finished(), "a job stops waiting at once");
        assert!(!req.is_finished(), "a request waits up to half the grace");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(req.is_finished());
        // A request whose own deadline comes first keeps it.
        let drain = Drain::default();
        drain.start(Duration::from_secs(20));
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            drain.deadline(Patience::Request { until: soon }, per_call),
            Some(soon)
        );
    }
}

//! The shared upstream budget: one scheduler for every upstream call of the process.
//!
//! The vendor allows N calls per minute per account, shared by everyone holding the
//! credentials. SPEC §6 makes `KORE_RATE_LIMIT` a *sliding-window* promise: no interval of
//! the period's length may hold more than N calls, retries included. So the budget keeps a
//! log of grant times (a sliding-window log), not a token bucket, which would burst N and
//! then allow one more a moment later.
//!
//! The same scheduler also enforces `KORE_CONCURRENCY`, because fairness must cover both:
//! a FIFO semaphore in front of the budget would let one team's 90-day cold query queue
//! hundreds of calls ahead of another team's one-day query. Waiting calls are kept in one
//! queue per caller (API key name) and granted round-robin across callers.
//!
//! What the log records is each call's *completion* time, and a call in flight occupies a
//! slot until it completes. The vendor counts a call when it arrives, and arrival always
//! lies between our send and the answer we receive, whatever the network's jitter. So if a
//! new call is only sent once the last N completions plus the calls still in flight number
//! fewer than N within the period, no interval of the period's length can hold more than N
//! arrivals. Recording send times instead would need a guessed safety margin.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};

pub mod carry;
mod keys;
mod shared;
mod shares;

pub use self::{
    keys::KeyLimiter,
    shared::{SharedCounter, SharedLog, Transitions},
    shares::{Phase, SCALE as SHARE_SCALE, Scheduler},
};

use crate::config::{BudgetSettings, KeyShare, KeyShares, Rate};

/// A sliding-window log of event times.
#[derive(Debug, Default, Clone)]
struct SlidingLog {
    times: VecDeque<Instant>,
}

impl SlidingLog {
    fn prune(&mut self, now: Instant, span: Duration) {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= span)
        {
            self.times.pop_front();
        }
    }

    /// When the oldest entry leaves the window (only meaningful when full).
    fn next_free(&self, span: Duration) -> Option<Instant> {
        self.times.front().map(|t| *t + span)
    }
}

/// Who a call is for, in the order the budget serves them: a caller waiting for its
/// answer first, then the background refresh of a stale window someone was just served,
/// then refresh-ahead, which only uses budget nobody is waiting for and leaves a quarter of
/// the period's calls free for callers who may come, then the change feed's polls, which
/// leave half of them free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Caller = 0,
    Revalidate = 1,
    RefreshAhead = 2,
    Feed = 3,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Caller,
        Priority::Revalidate,
        Priority::RefreshAhead,
        Priority::Feed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Priority::Caller => "caller",
            Priority::Revalidate => "revalidate",
            Priority::RefreshAhead => "refresh_ahead",
            Priority::Feed => "feed",
        }
    }
}

/// Refusal to grant a call in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExhausted {
    /// A fair estimate of when asking again makes sense.
    pub retry_after: Duration,
}

/// The right to make one upstream call now. Hold it until the answer is in: dropping it
/// records the call's completion in the log and frees its concurrency slot.
#[derive(Debug)]
pub struct CallPermit {
    shared: Arc<Shared>,
    /// False for a permit that was never handed to a caller (so no call was made).
    used: bool,
    /// The slot in the replicas' shared budget, when there is one.
    global: Option<(Arc<dyn SharedLog>, String)>,
    /// When it was granted: how long calls take feeds [`Budget::time_to_serve`].
    granted_at: Instant,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if let Some((cluster, member)) = self.global.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { cluster.release(&member).await });
        }
        if self.used {
            let took = self
                .granted_at
                .elapsed()
                .as_micros()
                .min(u128::from(u64::MAX)) as u64;
            // A moving average over about the last eight calls.
            let _ =
                self.shared
                    .call_micros
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                        Some(if old == 0 { took } else { (old * 7 + took) / 8 })
                    });
            let mut q = lock(&self.shared.queues);
            q.log.times.push_back(Instant::now());
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        } else {
            // Only the dispatcher makes unused permits, while it holds the lock.
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.wake.notify_one();
    }
}

struct Waiter {
    tx: oneshot::Sender<CallPermit>,
}

struct Queues {
    log: SlidingLog,
    /// Whose call goes next among the callers waiting (GATEWAY_KEY_SHARES).
    sched: Scheduler,
    /// When a caller passed over for its cap may have a call again (the dispatcher's wake).
    capped_until: Option<Instant>,
    by_caller: HashMap<(Priority, Arc<str>), VecDeque<Waiter>>,
    /// Per priority, the callers with waiting calls, in round-robin order.
    rings: [VecDeque<Arc<str>>; 4],
    waiting: usize,
    /// Grants per caller since start (the status page's "calls by team").
    granted_by_caller: HashMap<Arc<str>, u64>,
    /// Grants per wall-clock second, the last [`HISTORY_SECONDS`] (the status page's chart).
    history: VecDeque<(i64, u32)>,
}

impl Queues {
    fn new(table: Arc<KeyShares>) -> Self {
        Queues {
            log: SlidingLog::default(),
            sched: Scheduler::new(table),
            capped_until: None,
            by_caller: HashMap::new(),
            rings: Default::default(),
            waiting: 0,
            granted_by_caller: HashMap::new(),
            history: VecDeque::new(),
        }
    }
}

/// Seconds of grant history kept for the status page.
pub const HISTORY_SECONDS: i64 = 600;

impl Queues {
    /// Counts one grant to `caller`.
    fn record_grant(&mut self, caller: &Arc<str>) {
        *self
            .granted_by_caller
            .entry(Arc::clone(caller))
            .or_default() += 1;
        let now = jiff::Timestamp::now().as_second();
        match self.history.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => self.history.push_back((now, 1)),
        }
        while self
            .history
            .front()
            .is_some_and(|(sec, _)| now - sec >= HISTORY_SECONDS)
        {
            self.history.pop_front();
        }
    }
}

impl Queues {
    /// The most urgent priority with a waiting call that may be granted now (callers
    /// passed over for their caps do not count).
    fn best_priority(&mut self, now: Instant) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| {
            let ring = &self.rings[*p as usize];
            match p {
                Priority::Caller => ring
                    .iter()
                    .any(|c| self.sched.capped_until(c, now).is_none()),
                _ => !ring.is_empty(),
            }
        })
    }

    /// The next live waiter: the most urgent priority first; among callers, the one the
    /// shares choose (round robin without shares), among background work round robin.
    /// Also says in which phase a caller's grant is made.
    fn next_waiter(&mut self, now: Instant) -> Option<(Arc<str>, Waiter, Priority, Phase)> {
        self.capped_until = None;
        for p in Priority::ALL {
            loop {
                let at = if p == Priority::Caller {
                    match self.sched.choose(now, &self.rings[0]) {
                        Ok(chosen) => Some(chosen),
                        Err(until) => {
                            self.capped_until = until;
                            None
                        }
                    }
                } else {
                    (!self.rings[p as usize].is_empty()).then_some((0, Phase::Weighted))
                };
                let Some((at, phase)) = at else { break };
                let Some(caller) = self.rings[p as usize].remove(at) else {
                    break;
                };
                if let Some(w) = self.pop_live(p, &caller) {
                    return Some((caller, w, p, phase));
                }
            }
        }
        None
    }

    /// The next live waiter of `caller` at `p`; the caller goes to the back of its ring
    /// while it has more (the caller is out of the ring when this is called).
    fn pop_live(&mut self, p: Priority, caller: &Arc<str>) -> Option<Waiter> {
        let key = (p, Arc::clone(caller));
        let q = self.by_caller.get_mut(&key)?;
        let mut found = None;
        while let Some(w) = q.pop_front() {
            self.waiting -= 1;
            if !w.tx.is_closed() {
                found = Some(w);
                break;
            }
        }
        if q.is_empty() {
            self.by_caller.remove(&key);
        } else {
            self.rings[p as usize].push_back(Arc::clone(caller));
        }
        found
    }

    /// The next live waiter of the caller `key` (the replicas' scheduler chose it), else
    /// whoever is next.
    fn waiter_of(
        &mut self,
        key: &Arc<str>,
        now: Instant,
    ) -> Option<(Arc<str>, Waiter, Priority, Phase)> {
        let ring = &mut self.rings[Priority::Caller as usize];
        if let Some(at) = ring.iter().position(|c| c == key) {
            ring.remove(at);
            let phase = self.sched.phase_for(key, now).unwrap_or(Phase::Weighted);
            if let Some(w) = self.pop_live(Priority::Caller, key) {
                return Some((Arc::clone(key), w, Priority::Caller, phase));
            }
        }
        self.next_waiter(now)
    }
}

struct Shared {
    queues: Mutex<Queues>,
    in_flight: AtomicU32,
    wake: Notify,
    shutdown: AtomicBool,
    rate: Rate,
    span: Duration,
    concurrency: u32,
    max_wait: Duration,
    granted: AtomicU64,
    waited_micros: AtomicU64,
    /// Moving average of how long a granted call holds its permit (microseconds).
    call_micros: AtomicU64,
    /// The replicas' shared budget (REDIS_URL), asked before every grant when present.
    global: Option<Arc<dyn SharedLog>>,
    /// How long a shared-budget slot of a call in flight counts if its replica dies.
    lease: Duration,
    /// The account it budgets (the `account` label of its metrics).
    account: Arc<str>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("rate", &self.rate)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Snapshot for `/metrics` and `/v1/cache`.
#[derive(Debug, Clone, Copy)]
pub struct BudgetStats {
    pub granted: u64,
    pub waited_seconds: f64,
    pub waiting: usize,
    pub in_flight: u32,
    pub used_in_window: usize,
}

/// The process-wide upstream budget and concurrency limit.
#[derive(Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

impl Budget {
    /// Creates the budget and starts its dispatcher task (needs a Tokio runtime). With a
    /// `global` cluster, every grant also takes a slot of the replicas' shared budget;
    /// `lease` bounds how long a slot of a dead replica's call keeps counting.
    pub fn new(
        s: &BudgetSettings,
        account: Arc<str>,
        global: Option<Arc<dyn SharedLog>>,
        lease: Duration,
    ) -> Self {
        Self::with_shares(s, account, global, lease, Arc::new(KeyShares::default()))
    }

    /// [`Budget::new`] whose callers share it by `shares` (GATEWAY_KEY_SHARES): with a
    /// `global` log, for the whole deployment.
    pub fn with_shares(
        s: &BudgetSettings,
        account: Arc<str>,
        global: Option<Arc<dyn SharedLog>>,
        lease: Duration,
        shares: Arc<KeyShares>,
    ) -> Self {
        // Completion times already bound arrivals; the small margin only absorbs clock
        // granularity between the two hosts.
        let margin =
            (s.rate.period / 100).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::new(shares)),
            in_flight: AtomicU32::new(0),
            wake: Notify::new(),
            shutdown: AtomicBool::new(false),
            rate: s.rate,
            span: s.rate.period + margin,
            concurrency: s.concurrency.max(1),
            max_wait: s.max_wait,
            granted: AtomicU64::new(0),
            waited_micros: AtomicU64::new(0),
            call_micros: AtomicU64::new(0),
            global,
            lease,
            account,
        });
        tokio::spawn(dispatch(Arc::clone(&shared)));
        Budget { shared }
    }

    /// Waits (fairly, per `caller`) for the right to make one upstream call.
    ///
    /// # Errors
    /// [`BudgetExhausted`] when no slot is granted within KORE_MAX_WAIT.
    pub async fn acquire(&self, caller: &Arc<str>) -> Result<CallPermit, BudgetExhausted> {
        self.acquire_as(caller, Priority::Caller).await
    }

    /// [`Budget::acquire`] at a given priority.
    ///
    /// # Errors
    /// [`BudgetExhausted`] when no slot is granted within KORE_MAX_WAIT.
    pub async fn acquire_as(
        &self,
        caller: &Arc<str>,
        priority: Priority,
    ) -> Result<CallPermit, BudgetExhausted> {
        let until = Instant::now() + self.shared.max_wait;
        self.acquire_until(caller, priority, Some(until)).await
    }

    /// [`Budget::acquire_as`], waiting until `deadline` (`None`: as long as it takes — the
    /// caller bounds the wait itself, as a request's whole wait or a job's drain does).
    ///
    /// # Errors
    /// [`BudgetExhausted`] when no slot is granted by the deadline.
    pub async fn acquire_until(
        &self,
        caller: &Arc<str>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<CallPermit, BudgetExhausted> {
        let started = Instant::now();
        let rx = {
            let mut q = lock(&self.shared.queues);
            q.log.prune(started, self.shared.span);
            // Fast path: nobody queued and room now (only without a shared budget, which
            // the dispatcher must ask, and for a caller within its cap).
            let in_flight = self.shared.in_flight.load(Ordering::Acquire);
            let phase = match priority {
                Priority::Caller => q.sched.phase_for(caller, started),
                _ => Some(Phase::Weighted),
            };
            if self.shared.global.is_none()
                && q.waiting == 0
                && let Some(phase) = phase
                && in_flight < self.shared.concurrency
                && q.log.times.len() + (in_flight as usize)
                    < room_for(priority, self.shared.rate.calls)
            {
                self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
                self.shared.granted.fetch_add(1, Ordering::Relaxed);
                q.record_grant(caller);
                if priority == Priority::Caller {
                    q.sched.record(caller, phase, started);
                }
                return Ok(CallPermit {
                    shared: Arc::clone(&self.shared),
                    used: true,
                    global: None,
                    granted_at: Instant::now(),
                });
            }
            let (tx, rx) = oneshot::channel();
            let queue = q
                .by_caller
                .entry((priority, Arc::clone(caller)))
                .or_default();
            let first_of_caller = queue.is_empty();
            queue.push_back(Waiter { tx });
            if first_of_caller {
                q.rings[priority as usize].push_back(Arc::clone(caller));
            }
            q.waiting += 1;
            rx
        };
        self.shared.wake.notify_one();
        let granted = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx).await,
            None => Ok(rx.await),
        };
        match granted {
            Ok(Ok(permit)) => {
                metrics::histogram!("gateway_budget_wait_by_priority_seconds", "priority" => priority.label(), "account" => self.shared.account.to_string(), "key" => self.key_label(caller))
                    .record(started.elapsed().as_secs_f64());
                let waited = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
                self.shared
                    .waited_micros
                    .fetch_add(waited, Ordering::Relaxed);
                Ok(permit)
            }
            // The dispatcher is gone (shutdown) or we ran out of patience.
            Ok(Err(_)) | Err(_) => Err(BudgetExhausted {
                retry_after: self.estimate_wait(),
            }),
        }
    }

    /// Roughly how long the current queue takes to drain (a `Retry-After`).
    pub fn queue_drain_time(&self) -> Duration {
        self.estimate_wait()
    }

    /// Roughly how long the current queue takes to drain.
    fn estimate_wait(&self) -> Duration {
        let waiting = lock(&self.shared.queues).waiting as u32;
        let periods = waiting / self.shared.rate.calls + 1;
        self.shared.span * periods
    }

    pub fn stats(&self) -> BudgetStats {
        let mut q = lock(&self.shared.queues);
        q.log.prune(Instant::now(), self.shared.span);
        BudgetStats {
            granted: self.shared.granted.load(Ordering::Relaxed),
            waited_seconds: self.shared.waited_micros.load(Ordering::Relaxed) as f64 / 1e6,
            waiting: q.waiting,
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            used_in_window: q.log.times.len()
                + self.shared.in_flight.load(Ordering::Relaxed) as usize,
        }
    }
}

/// Most future calls [`Budget::time_to_serve`] plays through (bounds its work).
const MAX_SCHEDULED: u64 = 200_000;

impl Budget {
    /// The budget's rate (`KORE_RATE_LIMIT`).
    pub fn rate(&self) -> Rate {
        self.shared.rate
    }

    /// Calls waiting for a grant, per caller (all priorities together).
    pub fn waiting_by_caller(&self) -> HashMap<Arc<str>, usize> {
        let mut out: HashMap<Arc<str>, usize> = HashMap::new();
        for ((_, caller), q) in &lock(&self.shared.queues).by_caller {
            *out.entry(Arc::clone(caller)).or_default() += q.len();
        }
        out
    }

    /// The budget as the RateLimit header reports it: calls still free in the current
    /// window (less the calls already waiting for one), and how long until the oldest
    /// call leaves the window (zero when the window holds none).
    pub fn remaining(&self) -> (u32, Duration) {
        let now = Instant::now();
        let mut q = lock(&self.shared.queues);
        q.log.prune(now, self.shared.span);
        let used =
            q.log.times.len() + self.shared.in_flight.load(Ordering::Relaxed) as usize + q.waiting;
        let left = (self.shared.rate.calls as usize).saturating_sub(used) as u32;
        let reset = q
            .log
            .next_free(self.shared.span)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        (left, reset)
    }

    /// Upstream calls granted per caller since start.
    pub fn granted_by_caller(&self) -> Vec<(Arc<str>, u64)> {
        let mut v: Vec<(Arc<str>, u64)> = lock(&self.shared.queues)
            .granted_by_caller
            .iter()
            .map(|(k, n)| (Arc::clone(k), *n))
            .collect();
        v.sort();
        v
    }

    /// Calls granted per wall-clock second (unix seconds), oldest first; seconds without a
    /// grant are absent.
    pub fn history(&self) -> Vec<(i64, u32)> {
        lock(&self.shared.queues).history.iter().copied().collect()
    }

    /// Moving average of how long one upstream call takes.
    pub fn mean_call(&self) -> Duration {
        Duration::from_micros(self.shared.call_micros.load(Ordering::Relaxed))
    }

    /// When the `calls`-th call granted from now would complete, if calls kept coming: the
    /// sliding log played forward. Each of the N slots of the period is busy from a grant
    /// until its call completes plus one period (the log's rule); completions in the log
    /// and calls in flight occupy their slots first, and a call takes the mean duration.
    /// This is the schedule the dispatcher follows, so an ETA built on it is not a guess
    /// about the rate but a reading of it.
    pub fn time_to_serve(&self, calls: u64) -> Duration {
        self.schedule(calls, false)
    }

    /// [`Budget::time_to_serve`] from an idle budget (nothing in its log, nothing in
    /// flight): the least time `calls` can ever take — whether waiting can help at all.
    pub fn time_to_serve_idle(&self, calls: u64) -> Duration {
        self.schedule(calls, true)
    }

    fn schedule(&self, calls: u64, idle: bool) -> Duration {
        if calls == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let call = self.mean_call();
        let span = self.shared.span;
        let mut slots: BinaryHeap<Reverse<Instant>> = if idle {
            BinaryHeap::new()
        } else {
            let mut q = lock(&self.shared.queues);
            q.log.prune(now, span);
            q.log.times.iter().map(|t| Reverse(*t + span)).collect()
        };
        let in_flight = if idle {
            0
        } else {
            self.shared.in_flight.load(Ordering::Relaxed)
        };
        for _ in 0..in_flight {
            slots.push(Reverse(now + call + span));
        }
        while slots.len() < self.shared.rate.calls.max(1) as usize {
            slots.push(Reverse(now));
        }
        let mut last = now;
        for _ in 0..calls.min(MAX_SCHEDULED) {
            let Some(Reverse(free)) = slots.pop() else {
                break;
            };
            let granted = free.max(now);
            slots.push(Reverse(granted + call + span));
            last = granted;
        }
        (last + call).saturating_duration_since(now)
    }
}

impl Budget {
    /// When the `own` calls of the caller `key` would be served (the last one completed),
    /// while the callers of `others` (name, calls) want theirs too: the sliding log played
    /// forward as in [`Budget::time_to_serve`], each slot given by the shares' own rules
    /// (reservations, weights, caps) from their current state. Without shares that is the
    /// round robin.
    pub fn time_to_serve_as(
        &self,
        key: &Arc<str>,
        own: u64,
        others: &[(Arc<str>, u64)],
    ) -> Duration {
        if own == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let call = self.mean_call();
        let span = self.shared.span;
        let (mut slots, mut sched) = {
            let mut q = lock(&self.shared.queues);
            q.log.prune(now, span);
            let slots: BinaryHeap<Reverse<Instant>> =
                q.log.times.iter().map(|t| Reverse(*t + span)).collect();
            (slots, q.sched.clone())
        };
        let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        for _ in 0..in_flight {
            slots.push(Reverse(now + call + span));
        }
        while slots.len() < self.shared.rate.calls.max(1) as usize {
            slots.push(Reverse(now));
        }
        // Everyone else first on ties: an ETA errs on the late side.
        let mut demand: Vec<(Arc<str>, u64)> = others
            .iter()
            .filter(|(k, n)| k != key && *n > 0)
            .cloned()
            .collect();
        demand.push((Arc::clone(key), own));
        let mut last = now;
        for _ in 0..MAX_SCHEDULED {
            let Some(Reverse(free)) = slots.pop() else {
                break;
            };
            let granted = free.max(now);
            let keys: Vec<Arc<str>> = demand.iter().map(|(k, _)| Arc::clone(k)).collect();
            let (at, phase) = match sched.choose(granted, &keys) {
                Ok(c) => c,
                // Everyone left is capped: the slot waits for the first cap to free.
                Err(Some(until)) => {
                    slots.push(Reverse(until.max(granted)));
                    continue;
                }
                Err(None) => break,
            };
            sched.record(&keys[at], phase, granted);
            slots.push(Reverse(granted + call + span));
            last = granted;
            demand[at].1 -= 1;
            if demand[at].1 == 0 {
                if keys[at] == *key {
                    break;
                }
                demand.remove(at);
            }
        }
        (last + call).saturating_duration_since(now)
    }

    /// The shares its callers are served by (GATEWAY_KEY_SHARES; every key listed).
    pub fn shares(&self) -> Arc<KeyShares> {
        Arc::clone(lock(&self.shared.queues).sched.table())
    }

    /// The share of the caller `key`.
    pub fn share_of(&self, key: &str) -> KeyShare {
        lock(&self.shared.queues).sched.table().get(key)
    }

    /// `caller` as a metrics label: a configured key's name, the fixed names of the
    /// gateway's own work, or `other` — so the label's values stay few and known.
    pub fn key_label(&self, caller: &Arc<str>) -> metrics::SharedString {
        let known = lock(&self.shared.queues).sched.table().contains(caller)
            || FIXED_CALLERS.contains(&&**caller);
        if known {
            metrics::SharedString::from_shared(Arc::clone(caller))
        } else {
            metrics::SharedString::const_str("other")
        }
    }
}

/// Callers that are the gateway itself, not a key: the fixed values of the `key` label.
pub const FIXED_CALLERS: [&str; 4] = ["anonymous", "revalidate", "refresh_ahead", "readyz"];

#[cfg(test)]
impl Budget {
    fn new_local(s: &BudgetSettings) -> Self {
        Budget::new(s, "default".into(), None, Duration::from_secs(30))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Grants queued calls whenever both a budget slot and a concurrency slot are free.
async fn dispatch(shared: Arc<Shared>) {
    loop {
        if shared.shutdown.load(Ordering::Acquire) {
            // Dropping the queues wakes every waiter with an error.
            let table = Arc::clone(lock(&shared.queues).sched.table());
            *lock(&shared.queues) = Queues::new(table);
            return;
        }
        let wake_at = match next_step(&shared) {
            Step::Wait(t) => t,
            Step::AskGlobal(cluster) => {
                let calls = shared.rate.calls;
                // The slot is asked for at the priority the next grant goes to, so the
                // replicas keep the order and refresh-ahead's headroom together.
                let (best, keyed) = {
                    let mut q = lock(&shared.queues);
                    let best = q.best_priority(Instant::now()).unwrap_or(Priority::Caller);
                    // With shares, the replicas' log chooses among the callers waiting on
                    // every replica, so it is told this replica's.
                    let keyed =
                        (best == Priority::Caller && !q.sched.table().is_empty()).then(|| {
                            (
                                Arc::clone(q.sched.table()),
                                q.rings[0].iter().cloned().collect::<Vec<_>>(),
                            )
                        });
                    (best, keyed)
                };
                let share = calls / cluster.replicas();
                let now = Instant::now();
                let changed = cluster.transitions();
                // Just regained: calls made on local shares during the outage are not in the
                // shared log, so for one period a grant needs room in the local share too.
                let recovering = changed.regained_at.is_some_and(|t| now < t + shared.span);
                match recovering.then(|| local_room(&shared, share)).flatten() {
                    Some(wait) => wait,
                    None => match ask_global(&shared, &cluster, best, keyed).await {
                        Some(Ok((member, key))) => {
                            grant(&shared, Some((Arc::clone(&cluster), member)), key.as_ref());
                            continue;
                        }
                        // Full across the replicas: look again soon (other replicas'
                        // completions do not notify us), or when one of ours completes.
                        Some(Err(wait)) => Some(Instant::now() + wait.min(GLOBAL_POLL)),
                        // A blip (Redis not yet counted as lost): ask again shortly.
                        None if cluster.is_up() => Some(Instant::now() + GLOBAL_POLL),
                        // Redis lost. The other replicas' recent calls are unknown, so one
                        // quiet period first; then this replica's share, kept locally.
                        None => match cluster.transitions().lost_at.map(|t| t + shared.span) {
                            Some(quiet_until) if Instant::now() < quiet_until => Some(quiet_until),
                            _ => match local_step(&shared, share) {
                                Step::Wait(t) => t,
                                Step::AskGlobal(_) => None,
                            },
                        },
                    },
                }
            }
        };
        match wake_at {
            Some(t) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(t) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

/// Asks the replicas' log for a slot at `best`; with shares (`keyed`: the table and this
/// replica's callers waiting), the log also says whose call it is.
async fn ask_global(
    shared: &Arc<Shared>,
    cluster: &Arc<dyn SharedLog>,
    best: Priority,
    keyed: Option<(Arc<KeyShares>, Vec<Arc<str>>)>,
) -> Option<Result<(String, Option<Arc<str>>), Duration>> {
    let (calls, period) = (shared.rate.calls, shared.rate.period);
    let limit = room_for(best, calls) as u32;
    match keyed {
        Some((table, waiting)) => cluster
            .acquire_keyed(limit, period, shared.lease, &table, &waiting)
            .await
            .map(|r| r.map(|(member, key)| (member, Some(key)))),
        None => cluster
            .acquire(limit, period, shared.lease, best)
            .await
            .map(|r| r.map(|member| (member, None))),
    }
}

/// How often a replica asks the shared budget again while it is full.
const GLOBAL_POLL: Duration = Duration::from_millis(50);

enum Step {
    /// Nothing to grant now: wait for a notify, or until this instant.
    Wait(Option<Instant>),
    /// Calls are waiting and a concurrency slot is free: ask the shared budget.
    AskGlobal(Arc<dyn SharedLog>),
}

/// Grants what the local state allows; returns what to do next.
fn next_step(shared: &Arc<Shared>) -> Step {
    {
        let q = lock(&shared.queues);
        if q.waiting == 0 || shared.in_flight.load(Ordering::Acquire) >= shared.concurrency {
            return Step::Wait(None);
        }
    }
    match &shared.global {
        Some(c) => Step::AskGlobal(Arc::clone(c)),
        None => local_step(shared, shared.rate.calls),
    }
}

/// `None` when the local log has room under `limit`; otherwise what to wait for.
fn local_room(shared: &Arc<Shared>, limit: u32) -> Option<Option<Instant>> {
    let mut q = lock(&shared.queues);
    q.log.prune(Instant::now(), shared.span);
    let in_flight = shared.in_flight.load(Ordering::Acquire) as usize;
    (q.log.times.len() + in_flight >= limit.max(1) as usize).then(|| q.log.next_free(shared.span))
}

/// Grants queued calls against the local log while fewer than `limit` calls completed
/// within the period or are in flight.
fn local_step(shared: &Arc<Shared>, limit: u32) -> Step {
    let limit = limit.max(1) as usize;
    loop {
        let next_free = {
            let mut q = lock(&shared.queues);
            q.log.prune(Instant::now(), shared.span);
            let in_flight = shared.in_flight.load(Ordering::Acquire);
            if q.waiting == 0 || in_flight >= shared.concurrency {
                return Step::Wait(None);
            }
            let Some(best) = q.best_priority(Instant::now()) else {
                // Only callers over their caps are waiting: until the first cap frees.
                let q = &mut *q;
                let until = q.sched.choose(Instant::now(), &q.rings[0]).err().flatten();
                return Step::Wait(until);
            };
            let room = room_for(best, limit as u32);
            if q.log.times.len() + in_flight as usize >= room {
                // Full: a slot frees when the oldest completion leaves the window, or when a
                // call in flight completes (a notify) — whichever comes first.
                Some(q.log.next_free(shared.span))
            } else {
                None
            }
        };
        match next_free {
            Some(t) => return Step::Wait(t),
            None => {
                if !grant(shared, None, None) {
                    return Step::Wait(lock(&shared.queues).capped_until);
                }
            }
        }
    }
}

/// Calls of the period a grant at `priority` may fill: all of them for callers and
/// revalidations, three quarters for refresh-ahead.
fn room_for(priority: Priority, limit: u32) -> usize {
    let limit = limit.max(1) as usize;
    match priority {
        Priority::RefreshAhead => (limit * 3 / 4).max(1),
        Priority::Feed => (limit / 2).max(1),
        _ => limit,
    }
}

/// Hands one permit to the next live waiter (the caller `chosen` by the replicas' log when
/// it still waits; else by priority, then shares or round robin). A shared-budget slot that
/// finds nobody waiting is given back. Returns whether a waiter got it.
fn grant(
    shared: &Arc<Shared>,
    global: Option<(Arc<dyn SharedLog>, String)>,
    chosen: Option<&Arc<str>>,
) -> bool {
    let mut q = lock(&shared.queues);
    let now = Instant::now();
    let next = match chosen {
        Some(key) => q.waiter_of(key, now),
        None => q.next_waiter(now),
    };
    let Some((caller, w, priority, phase)) = next else {
        drop(q);
        if let Some((c, member)) = global {
            tokio::spawn(async move { c.release(&member).await });
        }
        return false;
    };
    shared.in_flight.fetch_add(1, Ordering::AcqRel);
    let permit = CallPermit {
        shared: Arc::clone(shared),
        used: true,
        global,
        granted_at: Instant::now(),
    };
    match w.tx.send(permit) {
        Ok(()) => {
            shared.granted.fetch_add(1, Ordering::Relaxed);
            q.record_grant(&caller);
            if priority == Priority::Caller {
                q.sched.record(&caller, phase, now);
            }
            true
        }
        Err(mut unused) => {
            // The waiter gave up between the check and the send: no call is made, so
            // nothing is logged locally (and we hold the lock Drop would take); a shared slot
            // is released by Drop.
            unused.used = false;
            true
        }
    }
}

#[cfg(test)]
mod tests;

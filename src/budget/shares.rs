//! Who among the keys waiting gets the budget's next free slot (`GATEWAY_KEY_SHARES`).
//!
//! The budget decides *when* a call may go (the sliding-window log); this decides *whose*
//! call it is, among the callers with calls waiting at the caller priority. It is dmClock's
//! three controls (reservation, weight, limit) with the reservation and the limit measured
//! the way the budget itself is measured — a sliding log of grants per key — and the
//! weights served by self-clocked fair queueing (SCFQ, a virtual-time WFQ):
//!
//! 1. **Limit** (`max=N/period`): a key with N grants within its last period is passed
//!    over until the oldest leaves.
//! 2. **Reservation** (`min=N/period`): a waiting key with fewer than N *reservation* grants
//!    within its last period goes first (the one furthest below its reservation first).
//!    Only grants made in this phase count against it, so a key gets its reservation *plus*
//!    its weight's share of the rest.
//! 3. **Weight** (`weight=W`): otherwise the key whose next call has the smallest virtual
//!    finish tag goes. A key's next call is tagged when the key is first seen waiting or
//!    was just served, `max(V, F_k) + 1/W_k`, and keeps that tag while it waits; serving it
//!    moves `F_k` and the virtual time `V` to that tag (self-clocked fair queueing). A key
//!    that was idle is tagged from `V`, so it banks no credit while away.
//!
//! Why not mClock's time tags for the reservation: they space a key's calls `period/N`
//! apart, while the budget serves bursts (N at once, then what frees a period later); a
//! count over the same sliding period promises exactly what the setting says and frees
//! exactly when the budget's slots do. Why not deficit round robin for the weights: SCFQ
//! gives the same shares one call at a time (DRR's quantum would be whole calls anyway),
//! and its tags are plain integers that the replicas can keep in Redis for one
//! deployment-wide order (`cluster.rs` runs the same rules in Lua).
//!
//! It is work-conserving: only keys with calls waiting are candidates, so a reservation
//! or a weight that is not used goes to whoever waits, and a key alone gets every slot the
//! budget has (up to its own cap). With every weight 1 and nothing else set it serves the
//! waiting keys in turn, which is the round robin the budget had before shares.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::SlidingLog;
use crate::config::{KeyShare, KeyShares};

/// Virtual time one call of weight 1 advances a key's tag; `SCALE / W` for weight W. A
/// multiple of every weight up to 16 and large enough that rounding larger ones is noise.
pub const SCALE: u64 = 720_720_000;

/// Why a key got a slot: its reservation, or its weight's share of the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Reserved,
    Weighted,
}

/// What the scheduler keeps of one key.
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// Grants made in the reservation phase within the reservation's period.
    reserved: SlidingLog,
    /// Every grant within the cap's period.
    recent: SlidingLog,
    /// Virtual finish tag of its last weighted grant.
    finish: u64,
    /// The tag of its next call, from when it was first seen waiting (or last served)
    /// for as long as it waits.
    next: Option<u64>,
}

/// The per-key shares of one account's budget and the state to apply them.
#[derive(Debug, Clone)]
pub struct Scheduler {
    table: Arc<KeyShares>,
    keys: HashMap<Arc<str>, KeyState>,
    /// Virtual time: the finish tag of the last weighted grant.
    vtime: u64,
}

impl Scheduler {
    pub fn new(table: Arc<KeyShares>) -> Self {
        Scheduler {
            table,
            keys: HashMap::new(),
            vtime: 0,
        }
    }

    /// The configured shares.
    pub fn table(&self) -> &Arc<KeyShares> {
        &self.table
    }

    fn share(&self, key: &str) -> KeyShare {
        self.table.get(key)
    }

    /// Prunes `key`'s logs to `now`; its grants within the reservation's period and
    /// within the cap's period.
    fn counts(&mut self, key: &Arc<str>, share: KeyShare, now: Instant) -> (usize, usize) {
        let Some(st) = self.keys.get_mut(key) else {
            return (0, 0);
        };
        let reserved = share.min.map_or(0, |m| {
            st.reserved.prune(now, m.period);
            st.reserved.times.len()
        });
        let recent = share.max.map_or(0, |m| {
            st.recent.prune(now, m.period);
            st.recent.times.len()
        });
        (reserved, recent)
    }

    /// When `key` may have another call: `None` now, else when its oldest capped grant
    /// leaves its cap's period.
    pub fn capped_until(&mut self, key: &Arc<str>, now: Instant) -> Option<Instant> {
        let share = self.share(key);
        let max = share.max?;
        let (_, recent) = self.counts(key, share, now);
        if recent < max.calls as usize {
            return None;
        }
        self.keys
            .get(key)
            .and_then(|st| st.recent.next_free(max.period))
    }

    /// The phase a grant to `key` now would be made in (`None`: it is capped).
    pub fn phase_for(&mut self, key: &Arc<str>, now: Instant) -> Option<Phase> {
        if self.capped_until(key, now).is_some() {
            return None;
        }
        let share = self.share(key);
        let (reserved, _) = self.counts(key, share, now);
        Some(match share.min {
            Some(m) if reserved < m.calls as usize => Phase::Reserved,
            _ => Phase::Weighted,
        })
    }

    /// Which of `waiting` (keys with calls waiting, in arrival order, which breaks ties)
    /// gets the next slot, and in which phase. `Err(when)`: every one is capped, until
    /// `when`.
    pub fn choose<'a>(
        &mut self,
        now: Instant,
        waiting: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Result<(usize, Phase), Option<Instant>> {
        // (index, how far into its reservation: reserved grants over the reservation, in
        // millionths) of the key furthest below its reservation.
        let mut below: Option<(usize, u64)> = None;
        let mut weighted: Option<(usize, u64)> = None;
        let mut capped: Option<Instant> = None;
        let waiting: Vec<&Arc<str>> = waiting.into_iter().collect();
        // A key no longer waiting loses its tag: back, it is tagged from the virtual time.
        for (k, st) in &mut self.keys {
            if st.next.is_some() && !waiting.contains(&k) {
                st.next = None;
            }
        }
        for (i, key) in waiting.into_iter().enumerate() {
            if let Some(t) = self.capped_until(key, now) {
                capped = Some(capped.map_or(t, |c| c.min(t)));
                continue;
            }
            let share = self.share(key);
            let (reserved, _) = self.counts(key, share, now);
            if let Some(m) = share.min
                && reserved < m.calls as usize
            {
                let used = reserved as u64 * 1_000_000 / u64::from(m.calls);
                if below.is_none_or(|(_, u)| used < u) {
                    below = Some((i, used));
                }
            }
            let tag = self.tag(key, share);
            self.keys.entry(Arc::clone(key)).or_default().next = Some(tag);
            if weighted.is_none_or(|(_, t)| tag < t) {
                weighted = Some((i, tag));
            }
        }
        match (below, weighted) {
            (Some((i, _)), _) => Ok((i, Phase::Reserved)),
            (None, Some((i, _))) => Ok((i, Phase::Weighted)),
            (None, None) => Err(capped),
        }
    }

    /// The finish tag of `key`'s next weighted grant.
    fn tag(&self, key: &str, share: KeyShare) -> u64 {
        let st = self.keys.get(key);
        if let Some(next) = st.and_then(|st| st.next) {
            return next;
        }
        let finish = st.map_or(0, |st| st.finish);
        self.vtime.max(finish) + SCALE / u64::from(share.weight.max(1))
    }

    /// Counts a grant to `key` made at `now` in `phase`.
    pub fn record(&mut self, key: &Arc<str>, phase: Phase, now: Instant) {
        let share = self.share(key);
        let tag = self.tag(key, share);
        let st = self.keys.entry(Arc::clone(key)).or_default();
        if share.max.is_some() {
            st.recent.times.push_back(now);
        }
        match phase {
            Phase::Reserved => st.reserved.times.push_back(now),
            Phase::Weighted => {
                st.finish = tag;
                st.next = None;
                self.vtime = self.vtime.max(tag);
            }
        }
    }

    /// The longest period any reservation or cap is measured over (what a shared log of
    /// grants must keep).
    pub fn horizon(&self) -> Duration {
        self.table
            .iter()
            .flat_map(|(_, s)| [s.min, s.max])
            .flatten()
            .map(|r| r.period)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
#[path = "shares_tests.rs"]
mod tests;

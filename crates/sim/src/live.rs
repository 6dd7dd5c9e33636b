//! Records that appear and change after their session, as the vendor's do.
//!
//! The vendor has no push and no `updatedAt`: a record shows up minutes after its session
//! starts, and `finalStatus`, `dispositions` and `dispositionRemarks` change after the
//! session ends. Two things model that here:
//!
//! - **Revisions under test control** ([`Simulator::revise`]): each one changes those three
//!   fields of one record, in every answer and in [`Simulator::truth`].
//! - **Live mode** ([`SimConfig::live`], [`Live`]): records are published only some time
//!   after they start, and a share of them is revised as time passes. Everything is a pure
//!   function of one reading of the clock (`now`, Unix seconds), so an answer and the truth
//!   read in the same second agree.
//!
//! Both act when a record is rendered: a record at revision 0 takes the renderer's cached
//! template, byte for byte as before; a revised one gets a template of its own, built from
//! the cached one (UTC, every block) with the change applied, so re-timing to
//! `timeZoneOffset` and trimming to `selectedFields` work exactly as for any record.
//!
//! [`SimConfig::live`]: crate::SimConfig::live

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{
    Runtime, Simulator,
    data::Skel,
    lock,
    render::{FieldMask, OPTIONAL_FIELDS, Template},
    unix_now,
};

/// How a live simulator publishes and revises its records (see [`crate::SimConfig::live`]).
///
/// With `now` the current time in whole Unix seconds and `start` a record's
/// `sessionStartTime`:
/// - the record is published once `start <= now - publish_delay`;
/// - a record picked by a hash of its `sessionId` (a share `revise_share` of all) then has
///   `min(max_revisions, floor((now - start - publish_delay) / revise_every))` automatic
///   revisions, added to those of [`Simulator::revise`].
///
/// Durations count in whole seconds; a `revise_every` under one second gives a picked
/// record all `max_revisions` as soon as it is published.
#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    /// How long after its start a record becomes visible.
    pub publish_delay: Duration,
    /// Share (0..=1) of records that get automatic revisions.
    pub revise_share: f64,
    /// Time between two automatic revisions of a picked record, counted from publication.
    pub revise_every: Duration,
    /// At most this many automatic revisions per record.
    pub max_revisions: u32,
}

impl Live {
    /// The demo's pace: published after 60 s; half the records revised every 30 min for a
    /// day (at the demo's volume, about one change a minute somewhere in the last 24 h: the
    /// change feed has news to show).
    pub fn demo() -> Self {
        Live {
            publish_delay: Duration::from_secs(60),
            revise_share: 0.5,
            revise_every: Duration::from_secs(30 * 60),
            max_revisions: 48,
        }
    }

    /// Whether a record that started at `start` is published at `now`.
    fn published(&self, start: i64, now: i64) -> bool {
        start <= now.saturating_sub(secs(self.publish_delay))
    }

    /// The automatic revision of a published record at `now`.
    fn revision(&self, id: &[u8], start: i64, now: i64) -> u32 {
        if !picked(id, self.revise_share) {
            return 0;
        }
        let age = now
            .saturating_sub(start)
            .saturating_sub(secs(self.publish_delay));
        if age < 0 {
            return 0;
        }
        let every = secs(self.revise_every);
        if every == 0 {
            return self.max_revisions;
        }
        u32::try_from(age / every).map_or(self.max_revisions, |n| n.min(self.max_revisions))
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Whether a record is among the `share` picked for automatic revisions: FNV-1a of its
/// `sessionId`, finished with splitmix64's mixer so nearby ids spread evenly.
fn picked(id: &[u8], share: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // 53 bits make an exact f64 in [0, 1); written so a NaN share picks nothing.
    ((h >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// Test-controlled revisions by `sessionId`, copied on write so a call takes a snapshot by
/// cloning an `Arc`.
pub(crate) type Revisions = Arc<HashMap<String, u32>>;

/// What one answer (or one call of [`Simulator::truth`]) sees: the clock read once and the
/// revisions at that moment.
pub(crate) struct View<'a> {
    live: Option<&'a Live>,
    now: i64,
    revisions: Revisions,
}

impl View<'_> {
    /// Whether the record is published (always, outside live mode).
    pub(crate) fn published(&self, s: &Skel) -> bool {
        self.live.is_none_or(|l| l.published(s.start(), self.now))
    }

    /// Keeps the published records only.
    pub(crate) fn retain_published(&self, skels: &mut Vec<Skel>) {
        if self.live.is_some() {
            skels.retain(|s| self.published(s));
        }
    }

    /// The record's effective revision: automatic (live mode) plus test-controlled.
    pub(crate) fn revision(&self, s: &Skel) -> u32 {
        let manual = if self.revisions.is_empty() {
            0
        } else {
            std::str::from_utf8(s.id())
                .ok()
                .and_then(|id| self.revisions.get(id))
                .copied()
                .unwrap_or(0)
        };
        let auto = self
            .live
            .map_or(0, |l| l.revision(s.id(), s.start(), self.now));
        auto.saturating_add(manual)
    }
}

/// The statuses a revision cycles through.
const STATUSES: [&str; 4] = ["Completed", "Dropped", "Abandoned", "Transferred"];

/// Changes `record` (a JSON object) to its revision `rev` (≥ 1): `finalStatus` steps
/// through [`STATUSES`] from the original one (from the start of the list when the
/// original is absent or another value), so each revision's differs from the previous
/// one's; `dispositions` and `dispositionRemarks` name the revision. Nothing else changes.
pub(crate) fn apply_revision(record: &mut Value, rev: u32) {
    let Value::Object(map) = record else {
        return;
    };
    let from = map
        .get("finalStatus")
        .and_then(Value::as_str)
        .and_then(|s| STATUSES.iter().position(|x| *x == s))
        .unwrap_or(STATUSES.len() - 1);
    let status = STATUSES[(from + rev as usize % STATUSES.len()) % STATUSES.len()];
    map.insert("finalStatus".into(), json!(status));
    map.insert(
        "dispositions".into(),
        json!(["Follow-up", format!("rev {rev}")]),
    );
    map.insert(
        "dispositionRemarks".into(),
        json!([format!("Reviewed after the session ended (revision {rev})")]),
    );
}

/// The template of `base`'s record at revision `rev` (≥ 1). Built from the base template's
/// UTC rendering with every block, so it works alike for generated and sample records.
pub(crate) fn revised(base: &Template, rev: u32) -> Template {
    let mut utc = Vec::with_capacity(2048);
    base.write(0, FieldMask::from_names(&OPTIONAL_FIELDS), &mut utc);
    // The bytes are serde_json's own output; a failure would leave the record unchanged
    // rather than break the answer.
    let Ok(mut record) = serde_json::from_slice::<Value>(&utc) else {
        return Template::new(&Value::Null);
    };
    apply_revision(&mut record, rev);
    Template::new(&record)
}

impl Simulator {
    /// Revises the record with this `sessionId`: from now on every answer and
    /// [`Simulator::truth`] show it with another `finalStatus`, `dispositions` and
    /// `dispositionRemarks` (everything else, `sessionId` and `sessionStartTime` included,
    /// stays). Returns its new test-controlled revision, 1 after the first call. An id no
    /// record has is counted all the same and changes nothing.
    pub fn revise(&self, session_id: &str) -> u32 {
        let mut rt = lock(&self.inner.runtime);
        let n = Arc::make_mut(&mut rt.revisions)
            .entry(session_id.to_owned())
            .or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// The record's test-controlled revision (0 = original). In live mode the automatic
    /// revisions come on top of it.
    pub fn revision(&self, session_id: &str) -> u32 {
        lock(&self.inner.runtime)
            .revisions
            .get(session_id)
            .copied()
            .unwrap_or(0)
    }

    /// Fixes the `now` that live mode (publication, automatic revisions) reads, for answers
    /// and truth alike; `None` goes back to the wall clock. Tokens are always checked
    /// against the wall clock.
    pub fn pin_clock(&self, now: Option<Timestamp>) {
        lock(&self.inner.runtime).pinned_now = now.map(|t| t.as_second());
    }

    /// Reads the clock once and snapshots the revisions, with the runtime locked.
    pub(crate) fn view_of(&self, rt: &Runtime) -> View<'_> {
        View {
            live: self.inner.cfg.live.as_ref(),
            now: rt.pinned_now.unwrap_or_else(|| unix_now().floor() as i64),
            revisions: Arc::clone(&rt.revisions),
        }
    }
}

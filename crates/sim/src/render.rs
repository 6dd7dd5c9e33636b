//! Rendering records for a request: re-timed to its `timeZoneOffset`, trimmed to its
//! `selectedFields`, written straight into the response body.
//!
//! Building a record's JSON costs microseconds; a page needs a hundred of them, and the
//! benchmarks ask for pages in a loop. So each record is serialized once, in UTC, into a
//! [`Template`] that remembers where its datetimes sit. Rendering copies the bytes and
//! patches those 19-byte spots in place (a local time has the same width as UTC), then
//! leaves out the optional blocks the request did not select. Templates are kept in a
//! bounded two-generation cache per simulator.

use std::{
    collections::HashMap,
    mem,
    ops::Range,
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::Value;

use super::{
    data::{self, Skel},
    live::{self, View},
};

/// The four optional blocks a request opts into with `selectedFields`, in bit order.
pub(crate) const OPTIONAL_FIELDS: [&str; 4] = [
    "skills",
    "userleveltags",
    "sessionleveltags",
    "customerinfo",
];

/// Which of [`OPTIONAL_FIELDS`] a rendering keeps (bit `i` = `OPTIONAL_FIELDS[i]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldMask(u8);

impl FieldMask {
    /// The mask for a list of names; unknown names are ignored (the request validator
    /// rejects them before this is reached).
    pub(crate) fn from_names<S: AsRef<str>>(names: &[S]) -> FieldMask {
        let mut bits = 0;
        for name in names {
            if let Some(i) = OPTIONAL_FIELDS.iter().position(|f| *f == name.as_ref()) {
                bits |= 1 << i;
            }
        }
        FieldMask(bits)
    }

    fn has(self, bit: u8) -> bool {
        self.0 & (1 << bit) != 0
    }
}

/// One top-level `"key":value` of a record.
#[derive(Debug)]
struct Piece {
    bytes: Range<usize>,
    /// Indices into [`Template::times`] of the datetimes inside this piece.
    times: Range<usize>,
    /// Bit in [`FieldMask`] when the piece is one of the optional blocks.
    optional: Option<u8>,
}

/// A record serialized once in UTC, with the positions of its datetime strings.
#[derive(Debug)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
    /// (byte offset of the first digit, UTC Unix seconds) of every datetime string value.
    times: Vec<(usize, i64)>,
}

impl Template {
    /// Serializes `record` (a JSON object whose times are UTC).
    pub(crate) fn new(record: &Value) -> Template {
        let mut t = Template {
            bytes: Vec::with_capacity(2048),
            pieces: Vec::new(),
            times: Vec::new(),
        };
        let Value::Object(map) = record else {
            // Not produced by the generator; kept whole so nothing is lost.
            t.push_piece(None, |out| serde_json::to_writer(out, record));
            return t;
        };
        for (key, value) in map {
            let optional = OPTIONAL_FIELDS
                .iter()
                .position(|f| f == key)
                .map(|i| i as u8);
            t.push_piece(optional, |out| {
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                serde_json::to_writer(out, value)
            });
        }
        t
    }

    fn push_piece(
        &mut self,
        optional: Option<u8>,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) {
        let start = self.bytes.len();
        if write(&mut self.bytes).is_err() {
            // Serializing a `Value` into memory cannot fail; if it somehow did, drop the
            // partial piece rather than emit broken JSON.
            self.bytes.truncate(start);
            return;
        }
        let first_time = self.times.len();
        scan_datetimes(&self.bytes, start, &mut self.times);
        self.pieces.push(Piece {
            bytes: start..self.bytes.len(),
            times: first_time..self.times.len(),
            optional,
        });
    }

    /// Appends the record as seen by a request with `offset_minutes` and `fields`.
    pub(crate) fn write(&self, offset_minutes: i32, fields: FieldMask, out: &mut Vec<u8>) {
        // local = UTC - offset minutes
        let delta = -i64::from(offset_minutes) * 60;
        out.push(b'{');
        let mut first = true;
        for piece in &self.pieces {
            if piece.optional.is_some_and(|bit| !fields.has(bit)) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let base = out.len();
            out.extend_from_slice(&self.bytes[piece.bytes.clone()]);
            if delta == 0 {
                continue;
            }
            for &(pos, utc) in &self.times[piece.times.clone()] {
                // Outside years 0000–9999 the width would change: such a time stays UTC.
                if let Some(local) = data::datetime_bytes(utc + delta) {
                    let at = base + pos - piece.bytes.start;
                    out[at..at + 19].copy_from_slice(&local);
                }
            }
        }
        out.push(b'}');
    }
}

/// Records the datetime string values in compact JSON `bytes[from..]` (keys excluded).
fn scan_datetimes(bytes: &[u8], from: usize, out: &mut Vec<(usize, i64)>) {
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < bytes.len() && bytes[j] != b'"' {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(bytes.len());
        let is_key = bytes.get(end + 1) == Some(&b':');
        if end - start == 19
            && !is_key
            && let Some(t) = std::str::from_utf8(&bytes[start..end])
                .ok()
                .and_then(data::parse_datetime)
        {
            out.push((start, t));
        }
        i = end + 1;
    }
}

/// Records kept per cache generation; two generations bound the cache to about twice
/// this many templates (~1.5 KB each), enough for a dense week with room to spare.
const GENERATION: usize = 4096;

/// A two-generation cache: a hit in the old generation is promoted, and when the young
/// generation fills up it becomes the old one. Cheap, bounded, and close to LRU.
#[derive(Default)]
struct Generations {
    young: HashMap<(i64, u16), Arc<Template>>,
    old: HashMap<(i64, u16), Arc<Template>>,
}

impl Generations {
    fn get(&mut self, key: (i64, u16)) -> Option<Arc<Template>> {
        if let Some(t) = self.young.get(&key) {
            return Some(Arc::clone(t));
        }
        let t = self.old.remove(&key)?;
        self.insert(key, Arc::clone(&t));
        Some(t)
    }

    fn insert(&mut self, key: (i64, u16), t: Arc<Template>) {
        if self.young.len() >= GENERATION {
            self.old = mem::take(&mut self.young);
        }
        self.young.insert(key, t);
    }
}

/// Renders a simulator's records, caching their templates.
pub(crate) struct Renderer {
    seed: u64,
    cache: Mutex<Generations>,
}

impl Renderer {
    pub(crate) fn new(seed: u64) -> Renderer {
        Renderer {
            seed,
            cache: Mutex::default(),
        }
    }

    fn template(&self, skel: &Skel) -> Arc<Template> {
        let Some(key) = skel.cache_key() else {
            return skel
                .seed_template()
                .unwrap_or_else(|| Arc::new(Template::new(&Value::Null)));
        };
        let lock = || self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = lock().get(key) {
            return t;
        }
        // Built outside the lock: concurrent pages do not wait on each other's records.
        let t = Arc::new(Template::new(&data::build_utc(self.seed, skel)));
        lock().insert(key, Arc::clone(&t));
        t
    }

    /// The record's template at the revision `view` gives it: the cached one at revision
    /// 0, else one of its own, built for this rendering (revised records are few).
    fn template_in(&self, skel: &Skel, view: &View<'_>) -> Arc<Template> {
        let base = self.template(skel);
        match view.revision(skel) {
            0 => base,
            rev => Arc::new(live::revised(&base, rev)),
        }
    }

    /// Appends the records, comma-separated, as a request with `offset_minutes` and
    /// `fields` sees them in `view`.
    pub(crate) fn write_records(
        &self,
        skels: &[Skel],
        offset_minutes: i32,
        fields: FieldMask,
        view: &View<'_>,
        out: &mut Vec<u8>,
    ) {
        for (i, s) in skels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.template_in(s, view).write(offset_minutes, fields, out);
        }
    }

    /// The records as JSON values, rendered exactly as [`Renderer::write_records`] does.
    pub(crate) fn values(
        &self,
        skels: &[Skel],
        offset_minutes: i32,
        fields: FieldMask,
        view: &View<'_>,
    ) -> Vec<Value> {
        let mut buf = Vec::with_capacity(4096);
        skels
            .iter()
            .map(|s| {
                buf.clear();
                self.template_in(s, view)
                    .write(offset_minutes, fields, &mut buf);
                // The bytes are serde_json's own output, re-timed in place.
                serde_json::from_slice(&buf).unwrap_or(Value::Null)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn template_retimes_values_not_keys_and_trims_optional_blocks() {
        let record = json!({
            "sessionStartTime": "2024-09-26T05:39:54",
            "2024-09-26T05:39:54": "a key is not a value",
            "nested": [{ "t": "2024-09-26T23:59:59" }, "2024-09-26T05:39:54x", "say \"2024-09-26T05:39:54\""],
            "skills": [{ "at": "2024-01-01T00:00:00" }],
            "customerinfo": {},
        });
        let t = Template::new(&record);
        let render = |offset, fields| {
            let mut out = Vec::new();
            t.write(offset, fields, &mut out);
            serde_json::from_slice::<Value>(&out).expect("valid JSON")
        };
        let ist = render(-330, FieldMask::from_names(&["skills"]));
        assert_eq!(ist["sessionStartTime"], "2024-09-26T11:09:54");
        assert_eq!(ist["nested"][0]["t"], "2024-09-27T05:29:59");
        assert_eq!(ist["nested"][1], "2024-09-26T05:39:54x");
        assert_eq!(ist["nested"][2], "say \"2024-09-26T05:39:54\"");
        assert_eq!(ist["2024-09-26T05:39:54"], "a key is not a value");
        assert_eq!(ist["skills"][0]["at"], "2024-01-01T05:30:00");
        assert!(ist.get("customerinfo").is_none());
        let mut utc = record.clone();
        utc.as_object_mut().map(|m| m.remove("skills"));
        assert_eq!(render(0, FieldMask::from_names(&["customerinfo"])), utc);
    }

    #[test]
    fn generations_stay_bounded() {
        let mut g = Generations::default();
        let t = Arc::new(Template::new(&json!({})));
        for i in 0..(3 * GENERATION as i64) {
            g.insert((i, 0), Arc::clone(&t));
        }
        assert!(g.young.len() + g.old.len() <= 2 * GENERATION);
        assert!(g.get((3 * GENERATION as i64 - 1, 0)).is_some());
        assert!(g.get((0, 0)).is_none());
    }
}

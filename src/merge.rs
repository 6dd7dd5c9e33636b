//! Merging (pure): records stay raw JSON, byte for byte, and only the three values the
//! gateway needs are read out of them: `sessionId` and `conversationId` (the identity used
//! to de-duplicate) and `sessionStartTime` (the order). Record times carry no zone, they are
//! local to the offset of the window that fetched them, so the order uses the instant, not
//! the text: across a DST fall-back the wall clock repeats an hour but instants do not.

use std::{borrow::Cow, cmp::Ordering, collections::HashSet, sync::Arc};

use sha2::Digest;

use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{RefOr, Schema},
};

use crate::plan::Window;

/// One upstream record plus the keys read from it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record exactly as the vendor sent it.
    pub raw: Arc<RawValue>,
    pub session_id: Option<Arc<str>>,
    pub conversation_id: Option<Arc<str>>,
    /// `sessionStartTime` as Unix seconds, when present and readable.
    pub start: Option<i64>,
    /// The vendor offset (inverted minutes) the record's times are written in.
    pub vendor_offset: i32,
}

// On the wire a record is `raw`, byte for byte, so its schema is the vendor's object as far
// as the vendor documents it: described by `VendorRecord`, which is never built.
impl PartialSchema for Record {
    fn schema() -> RefOr<Schema> {
        VendorRecord::schema()
    }
}

impl ToSchema for Record {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Record")
    }
}

/// One upstream record, passed through unchanged. Only the documented fields are listed;
/// the object is open (JSON Schema's default): unknown fields appear and are kept.
#[derive(ToSchema)]
#[schema(example = json!({
    "sessionId": "66f4f3aa205c5afb97d3xxxx", "channel": "Jones ", "sessionStartTime": "2024-09-26T11:09:54",
    "sessionEndTime": "2024-09-26T11:09:55", "botId": "st-4b6a22d1-b8e5-533d-8020-93f847a9xxxx",
    "userId": "u-390b0c73-6b06-5656-a3b1-58746515xxxx", "smartStatus": "CLOSED AT BOT", "finalStatus": "Dropped",
    "customerinfo": {"CustomerFirstName": "John", "CustomerLastName": "Doe", "Direction": "Inbound"},
    "skills": [], "userleveltags": [], "sessionleveltags": []
}))]
#[allow(dead_code, non_snake_case)]
struct VendorRecord {
    /// Bot-generated session id.
    sessionId: Option<String>,
    /// SmartAssist conversation id (agent conversations only).
    conversationId: Option<String>,
    channel: Option<String>,
    /// Local to the request's time zone, no zone suffix (`YYYY-MM-DDTHH:MM:SS`).
    sessionStartTime: Option<String>,
    sessionEndTime: Option<String>,
    finalStatus: Option<String>,
    smartStatus: Option<String>,
    statusDetail: Option<String>,
    botId: Option<String>,
    Direction: Option<String>,
    userId: Option<String>,
    channelSpecificUserId: Option<String>,
    dispositions: Option<Vec<String>>,
    dispositionRemarks: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    customerinfo: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    metaInfo: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    destinations: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    skills: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    userleveltags: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    sessionleveltags: Option<serde_json::Value>,
    csatScore: Option<i64>,
    csatFeedback: Option<String>,
}

#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(rename = "sessionId", borrow, default)]
    session_id: Option<&'a RawValue>,
    #[serde(rename = "conversationId", borrow, default)]
    conversation_id: Option<&'a RawValue>,
    #[serde(rename = "sessionStartTime", borrow, default)]
    session_start_time: Option<&'a RawValue>,
}

/// The text of a JSON string value; `None` for any other JSON type.
fn as_str(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    if raw.get().starts_with('"') {
        serde_json::from_str::<String>(raw.get()).ok()
    } else {
        None
    }
}

impl Record {
    /// Reads the keys of `raw`, fetched in `window`. A record that is not a JSON object
    /// keeps no keys but is still passed through.
    pub fn new(raw: Box<RawValue>, window: &Window) -> Self {
        let (session_id, conversation_id, start) = match serde_json::from_str::<Keys<'_>>(raw.get())
        {
            Ok(k) => (
                as_str(k.session_id).map(Arc::from),
                as_str(k.conversation_id).map(Arc::from),
                as_str(k.session_start_time).and_then(|t| window.record_time_to_unix(&t)),
            ),
            Err(_) => (None, None, None),
        };
        Record {
            raw: Arc::from(raw),
            session_id,
            conversation_id,
            start,
            vendor_offset: window.vendor_offset(),
        }
    }

    /// Bytes this record holds on the heap (for the cache weigher), its reference counts
    /// included. A clone shares them: a window assembled from its parts holds the parts'
    /// records, not copies, and is weighed as if it held its own (the bound stays an upper
    /// bound).
    pub fn weight(&self) -> usize {
        const COUNTS: usize = 2 * std::mem::size_of::<usize>();
        self.raw.get().len()
            + COUNTS
            + self.session_id.as_ref().map_or(0, |s| s.len() + COUNTS)
            + self
                .conversation_id
                .as_ref()
                .map_or(0, |s| s.len() + COUNTS)
            + std::mem::size_of::<Self>()
    }

    fn order_key(&self) -> (i64, &str, &str) {
        (
            self.start.unwrap_or(i64::MAX),
            order_prefix(self.session_id.as_deref().unwrap_or("")),
            order_prefix(self.conversation_id.as_deref().unwrap_or("")),
        )
    }

    /// Breaks ties of [`Record::order_key`], which only records without a `sessionId`, or
    /// with an id longer than [`ORDER_ID_BYTES`], can have (identities are unique after
    /// de-duplication, and two records with different ids differ in text): the digest of
    /// their text.
    fn tie_break(&self) -> [u8; 32] {
        let long = |id: &Option<Arc<str>>| id.as_ref().is_some_and(|s| s.len() > ORDER_ID_BYTES);
        if self.session_id.is_none() || long(&self.session_id) || long(&self.conversation_id) {
            sha2::Sha256::digest(self.raw.get().as_bytes()).into()
        } else {
            [0; 32]
        }
    }

    /// Where this record stands in the output order; a cursor resumes after it.
    pub fn position(&self) -> Position {
        let (start, session, conversation) = self.order_key();
        Position::new(start, session, conversation, self.tie_break())
    }
}

/// How much of an id the output order (and so a cursor) reads. Vendor ids are short; a
/// longer one is ordered by this prefix and then by the digest of its record, which keeps
/// the order total and every cursor small enough for a URL behind a proxy.
pub const ORDER_ID_BYTES: usize = 256;

/// The longest prefix of `id` of at most [`ORDER_ID_BYTES`] that ends on a character.
fn order_prefix(id: &str) -> &str {
    let mut end = id.len().min(ORDER_ID_BYTES);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// The output order, total: start instant, `sessionId`, `conversationId` (each read up to
/// [`ORDER_ID_BYTES`]), then (only for records without ids, or with longer ones) the digest
/// of the text.
pub fn output_order(a: &Record, b: &Record) -> Ordering {
    a.order_key()
        .cmp(&b.order_key())
        .then_with(|| a.tie_break().cmp(&b.tie_break()))
}

/// A place in the output order (the keyset of a cursor): every record compares strictly
/// before or after it, except the record it was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub(crate) start: i64,
    pub(crate) session: Box<str>,
    pub(crate) conversation: Box<str>,
    pub(crate) tie: [u8; 32],
}

impl Position {
    /// The place (`start`, `session`, `conversation`, `tie`); each id is read up to
    /// [`ORDER_ID_BYTES`], as the output order reads it, so a cursor for any place the
    /// gateway can reach stays small.
    pub fn new(start: i64, session: &str, conversation: &str, tie: [u8; 32]) -> Self {
        Position {
            start,
            session: order_prefix(session).into(),
            conversation: order_prefix(conversation).into(),
            tie,
        }
    }

    /// How `r` stands relative to this place.
    pub fn cmp_record(&self, r: &Record) -> Ordering {
        (self.start, &*self.session, &*self.conversation)
            .cmp(&r.order_key())
            .then_with(|| self.tie.cmp(&r.tie_break()))
    }
}

/// The index of the first record of `sorted` (in [`output_order`]) that comes after `pos`.
pub fn resume_after(sorted: &[&Record], pos: &Position) -> usize {
    sorted.partition_point(|r| pos.cmp_record(r) != Ordering::Less)
}

/// Identity for de-duplication: (`sessionId`, `conversationId`); a record without a
/// `sessionId` is identified by its whole text, so it is never merged with a different one.
#[derive(Hash, PartialEq, Eq)]
enum Identity<'a> {
    Ids(&'a str, Option<&'a str>),
    Text(&'a str),
}

fn identity(r: &Record) -> Identity<'_> {
    match &r.session_id {
        Some(s) => Identity::Ids(s, r.conversation_id.as_deref()),
        None => Identity::Text(r.raw.get()),
    }
}

/// Drops repeated records (first one wins) and sorts by start instant, then `sessionId`,
/// then `conversationId`. Returns how many duplicates were dropped.
pub fn dedupe_and_sort(records: &mut Vec<Record>) -> usize {
    let before = records.len();
    {
        let mut seen: HashSet<Identity<'_>> = HashSet::with_capacity(records.len());
        let keep: Vec<bool> = records.iter().map(|r| seen.insert(identity(r))).collect();
        let mut it = keep.into_iter();
        records.retain(|_| it.next().unwrap_or(true));
    }
    records.sort_unstable_by(output_order);
    before - records.len()
}

/// Merges the (already sorted) records of several windows into one de-duplicated list in
/// output order, without copying a record. Windows are disjoint in time, so the runs are
/// mostly in order already and the stable sort only merges them.
pub fn merge_runs<'a>(runs: impl IntoIterator<Item = &'a [Record]>) -> Vec<&'a Record> {
    let mut all: Vec<&Record> = runs.into_iter().flatten().collect();
    let mut seen: HashSet<Identity<'_>> = HashSet::with_capacity(all.len());
    all.retain(|r| seen.insert(identity(r)));
    all.sort_by(|a, b| output_order(a, b));
    all
}

/// Compares a window's unique record count with what the vendor said it holds.
/// Returns a warning naming the window when they differ.
pub fn cross_check(window: &Window, got: usize, num_results: Option<u64>) -> Option<String> {
    match num_results {
        Some(n) if n == got as u64 => None,
        Some(n) => Some(format!(
            "window {} .. {} (offset {}): upstream reported {n} records, {got} were retrieved",
            window.vendor_start(),
            window.vendor_end(),
            window.vendor_offset()
        )),
        None => Some(format!(
            "window {} .. {}: upstream gave no numResults, the count could not be checked",
            window.vendor_start(),
            window.vendor_end()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn window(offset_minutes_east: i32) -> Window {
        Window {
            start: Timestamp::from_second(0).unwrap(),
            end: Timestamp::from_second(4_000_000_000).unwrap(),
            offset_seconds: offset_minutes_east * 60,
        }
    }

    fn rec(json: &str, w: &Window) -> Record {
        Record::new(RawValue::from_string(json.to_owned()).unwrap(), w)
    }

    #[test]
    fn keeps_raw_bytes_and_reads_keys() {
        let w = window(330);
        let text =
            r#"{"sessionId":"s1","x":1.50,"name":"Zoë","sessionStartTime":"2024-09-26T05:30:00"}"#;
        let r = rec(text, &w);
        assert_eq!(r.raw.get(), text);
        assert_eq!(r.session_id.as_deref(), Some("s1"));
        assert_eq!(r.conversation_id, None);
        assert_eq!(
            r.start,
            Some(Timestamp::from_second(1_727_308_800).unwrap().as_second())
        );
        assert_eq!(r.vendor_offset, -330);
    }

    #[test]
    fn odd_records_pass_through_without_keys() {
        let w = window(0);
        for text in [
            r#"[1,2]"#,
            r#"{"sessionId":42}"#,
            r#"{"sessionStartTime":"yesterday"}"#,
            "null",
        ] {
            let r = rec(text, &w);
            assert_eq!(r.raw.get(), text);
            assert!(r.session_id.is_none() && r.start.is_none());
        }
    }

    #[test]
    fn dedupes_on_both_ids_and_sorts_by_instant() {
        let w = window(0);
        let mut v = vec![
            rec(
                r#"{"sessionId":"b","sessionStartTime":"2024-01-01T10:00:00"}"#,
                &w,
            ),
            rec(
                r#"{"sessionId":"a","sessionStartTime":"2024-01-01T10:00:00"}"#,
                &w,
            ),
            rec(
                r#"{"sessionId":"a","conversationId":"c1","sessionStartTime":"2024-01-01T09:00:00"}"#,
                &w,
            ),
            rec(
                r#"{"sessionId":"a","sessionStartTime":"2024-01-01T10:00:00"}"#,
                &w,
            ),
            rec(r#"{"noIds":true}"#, &w),
            rec(r#"{"noIds":true}"#, &w),
            rec(r#"{"noIds":false}"#, &w),
        ];
        let dropped = dedupe_and_sort(&mut v);
        assert_eq!(dropped, 2);
        let ids: Vec<_> = v
            .iter()
            .map(|r| (r.session_id.as_deref(), r.conversation_id.as_deref()))
            .collect();
        assert_eq!(
            ids[..3],
            [
                (Some("a"), Some("c1")),
                (Some("a"), None),
                (Some("b"), None)
            ]
        );
        assert_eq!(v.len(), 5, "records without ids are kept unless identical");
    }

    #[test]
    fn order_follows_instants_across_offsets() {
        // 01:30 EDT (offset 240) is before 01:10 EST (offset 300) on the fall-back night.
        let edt = window(-240);
        let est = window(-300);
        let mut v = vec![
            rec(
                r#"{"sessionId":"late","sessionStartTime":"2024-11-03T01:10:00"}"#,
                &est,
            ),
            rec(
                r#"{"sessionId":"early","sessionStartTime":"2024-11-03T01:30:00"}"#,
                &edt,
            ),
        ];
        dedupe_and_sort(&mut v);
        assert_eq!(v[0].session_id.as_deref(), Some("early"));
    }

    #[test]
    fn merge_runs_dedupes_across_windows() {
        let w = window(0);
        let a = vec![
            rec(
                r#"{"sessionId":"a","sessionStartTime":"2024-01-01T10:00:00"}"#,
                &w,
            ),
            rec(
                r#"{"sessionId":"c","sessionStartTime":"2024-01-03T10:00:00"}"#,
                &w,
            ),
        ];
        let b = vec![
            rec(
                r#"{"sessionId":"b","sessionStartTime":"2024-01-02T10:00:00"}"#,
                &w,
            ),
            rec(
                r#"{"sessionId":"a","sessionStartTime":"2024-01-01T10:00:00"}"#,
                &w,
            ),
        ];
        let merged = merge_runs([a.as_slice(), b.as_slice()]);
        let ids: Vec<_> = merged
            .iter()
            .map(|r| r.session_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn cross_check_names_the_window() {
        let w = window(0);
        assert!(cross_check(&w, 3, Some(3)).is_none());
        let warn = cross_check(&w, 2, Some(3)).unwrap();
        assert!(
            warn.contains("reported 3") && warn.contains("2 were retrieved"),
            "{warn}"
        );
        assert!(cross_check(&w, 2, None).is_some());
    }
}

//! Rendering (pure): the JSON envelope, cursors and ETags; NDJSON and CSV lines.
//!
//! The JSON body is built as two byte strings: a *head* holding `data` and every `meta`
//! field that depends only on the data, and a small *tail* with the per-request fields
//! (`upstream_calls`, `cache`). A repeat request re-sends the cached head untouched and
//! only writes a new tail, and the ETag is computed over the head, so a hit and the miss
//! that produced it carry the same ETag.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{Object, RefOr, Schema},
};

use hmac::{Hmac, Mac};

use crate::{
    merge::{ORDER_ID_BYTES, Position, Record},
    outcome::CacheStatus,
};

/// The data-dependent part of `meta`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetaHead<'a> {
    /// Start of the range, RFC 3339 with the offset in force then.
    #[schema(example = "2024-09-26T00:00:00+05:30")]
    pub from: String,
    #[schema(example = "2024-09-26T23:59:59+05:30")]
    pub to: String,
    #[schema(example = "Asia/Kolkata")]
    pub tz: &'a str,
    /// Records in the whole range.
    #[schema(value_type = u64)]
    pub total: usize,
    /// Records in this response.
    #[schema(value_type = u64)]
    pub returned: usize,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
    /// False whenever any part of the range could not be fetched and cross-checked (see `warnings`).
    pub complete: bool,
    /// True when part of the answer is an expired copy: served because the upstream failed, or
    /// while it is refreshed (see `warnings`).
    pub stale: bool,
    pub warnings: &'a [String],
    /// Upstream windows the range was split into.
    #[schema(value_type = u64)]
    pub windows: usize,
}

/// The per-request end of `meta` that [`json_tail`] writes, for the OpenAPI document.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MetaTail {
    /// Upstream calls this request made.
    #[schema(value_type = u64)]
    upstream_calls: u32,
    #[schema(value_type = String, example = "MISS", pattern = "^(HIT|MISS|PARTIAL)$")]
    cache: CacheStatus,
}

/// `meta` as a client reads it: [`MetaHead`], then [`MetaTail`]. Only the OpenAPI document
/// needs it whole.
pub struct Meta;

impl PartialSchema for Meta {
    fn schema() -> RefOr<Schema> {
        let object = |schema| match schema {
            RefOr::T(Schema::Object(o)) => o,
            _ => Object::new(),
        };
        let mut meta = object(MetaHead::schema());
        let tail = object(MetaTail::schema());
        meta.description = Some("About this answer.".to_owned());
        meta.properties.extend(tail.properties);
        meta.required.extend(tail.required);
        meta.into()
    }
}

impl ToSchema for Meta {}

// What `json_head` and `json_tail` write, as the OpenAPI document describes it.
/// `GET /v1/interactions` answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InteractionsResponse {
    data: Vec<Record>,
    meta: Meta,
}

/// `{"data":[…],"meta":{…,` — everything but the per-request tail.
pub fn json_head(records: &[&Record], meta: &MetaHead<'_>) -> Bytes {
    let data_len: usize = records.iter().map(|r| r.raw.get().len() + 1).sum();
    let mut buf = BytesMut::with_capacity(data_len + 512);
    buf.put_slice(b"{\"data\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(r.raw.get().as_bytes());
    }
    buf.put_slice(b"],\"meta\":");
    // MetaHead serialises to an object; drop its closing brace so the tail can follow.
    let meta = serde_json::to_vec(meta).unwrap_or_else(|_| b"{}".to_vec());
    buf.put_slice(&meta[..meta.len() - 1]);
    buf.put_u8(b',');
    buf.freeze()
}

/// `"upstream_calls":N,"cache":"…"}}`.
pub fn json_tail(upstream_calls: u32, cache: CacheStatus) -> Bytes {
    Bytes::from(format!(
        "\"upstream_calls\":{upstream_calls},\"cache\":\"{}\"}}}}",
        cache.as_str()
    ))
}

/// A weak ETag over the query's binding (whose records, which query) and the head (the body
/// differs only in the per-request tail): the same bytes of two accounts never share one.
pub fn etag(binding: &[u8; 32], head: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(binding);
    h.update(head);
    let digest = h.finalize();
    let mut s = String::with_capacity(40);
    s.push_str("W/\"");
    for b in &digest[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

/// Whether `If-None-Match` matches `etag` (weak comparison, lists and `*` allowed).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let mine = bare(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == mine)
}

/// One record per line, verbatim.
pub fn ndjson_lines<'a>(records: impl Iterator<Item = &'a Record>) -> Bytes {
    let mut buf = BytesMut::new();
    for r in records {
        buf.put_slice(r.raw.get().as_bytes());
        buf.put_u8(b'\n');
    }
    buf.freeze()
}

/// Documented top-level fields, in CSV column order.
pub const CSV_SCALARS: [&str; 16] = [
    "sessionId",
    "conversationId",
    "channel",
    "sessionStartTime",
    "sessionEndTime",
    "finalStatus",
    "smartStatus",
    "statusDetail",
    "botId",
    "Direction",
    "userId",
    "channelSpecificUserId",
    "orgId",
    "isVoicemail",
    "csatScore",
    "csatFeedback",
];
/// `customerinfo` members, flattened as `customerinfo.<name>`.
pub const CSV_CUSTOMER: [&str; 6] = [
    "CustomerPhone",
    "CenterPhone",
    "Direction",
    "CustomerFirstName",
    "CustomerLastName",
    "CustomerEmail",
];
/// Nested values, written as compact JSON text.
pub const CSV_NESTED: [&str; 7] = [
    "skills",
    "dispositions",
    "dispositionRemarks",
    "destinations",
    "userleveltags",
    "sessionleveltags",
    "metaInfo",
];

/// The CSV header line (stable: it does not depend on the data).
pub fn csv_header() -> Bytes {
    let mut w = csv::Writer::from_writer(Vec::new());
    let cols = CSV_SCALARS
        .iter()
        .map(|c| (*c).to_owned())
        .chain(CSV_CUSTOMER.iter().map(|c| format!("customerinfo.{c}")))
        .chain(CSV_NESTED.iter().map(|c| (*c).to_owned()));
    let _ = w.write_record(cols.collect::<Vec<_>>());
    Bytes::from(w.into_inner().unwrap_or_default())
}

/// Defuses a text cell a spreadsheet would run as a formula (OWASP "CSV injection") by a
/// leading `'`, which spreadsheets show as text and do not evaluate — and only such a cell,
/// so that data stays data:
///
/// * a leading `=`, `@`, tab or carriage return always;
/// * a leading `+` or `-` unless the rest is a plain number: digits with at most one
///   decimal point (`+13413813633`, an E.164 phone number, `-5`, `-0.5`, `+.5`), which a
///   spreadsheet reads as a number, never as a formula. Anything else after the sign is
///   defused — `+cmd|…`, `-2+3+cmd|…`, `+33 1 23` (spaces), `-1,000` (separators) — and so
///   is an exponent (`+1.5e3`): harmless as a number, but no phone number or id needs one,
///   and keeping the rule to digits keeps it easy to trust.
///
/// Applies to text only: a cell the gateway writes from a JSON *number* (`-5`, `-0.5`) is
/// a number, not a formula, and stays as it is.
pub fn defuse_formula(text: &str) -> std::borrow::Cow<'_, str> {
    let runs = match text.as_bytes().first() {
        Some(b'=' | b'@' | b'\t' | b'\r') => true,
        Some(b'+' | b'-') => !plain_number(&text[1..]),
        _ => false,
    };
    if runs {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Digits with at most one decimal point, and at least one digit.
fn plain_number(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty()) && digits(whole) && digits(fraction)
}

fn cell(v: Option<&serde_json::Value>, escape: bool) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) if escape => defuse_formula(s).into_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        // Numbers and booleans print as themselves; arrays and objects as compact JSON,
        // which starts with `[` or `{`.
        Some(other) => other.to_string(),
    }
}

/// CSV rows (RFC 4180 quoting by the `csv` crate). A record that is not a JSON object
/// becomes a row of empty cells rather than being dropped, so row counts still add up.
/// `formula_escape` (CSV_FORMULA_ESCAPE) defuses text cells with [`defuse_formula`].
pub fn csv_rows<'a>(records: impl Iterator<Item = &'a Record>, formula_escape: bool) -> Bytes {
    let mut w = csv::Writer::from_writer(Vec::new());
    let empty = serde_json::Map::new();
    for r in records {
        let value: serde_json::Value =
            serde_json::from_str(r.raw.get()).unwrap_or(serde_json::Value::Null);
        let obj = value.as_object().unwrap_or(&empty);
        let customer = obj
            .get("customerinfo")
            .and_then(|c| c.as_object())
            .unwrap_or(&empty);
        let row = CSV_SCALARS
            .iter()
            .map(|c| cell(obj.get(*c), formula_escape))
            .chain(
                CSV_CUSTOMER
                    .iter()
                    .map(|c| cell(customer.get(*c), formula_escape)),
            )
            .chain(CSV_NESTED.iter().map(|c| cell(obj.get(*c), formula_escape)));
        let _ = w.write_record(row.collect::<Vec<_>>());
    }
    Bytes::from(w.into_inner().unwrap_or_default())
}

/// The key cursors are signed with (HMAC-SHA256). It is derived from the client secret, so
/// every replica and every restart accepts the cursors of the others, and nobody without the
/// secret can forge one. `Debug` never shows it.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey([REDACTED])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl CursorKey {
    /// Derives the cursor key from `secret` (HMAC of a fixed label, keyed by the secret).
    pub fn derive(secret: &[u8]) -> Self {
        let mut m = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| {
            <HmacSha256 as Mac>::new_from_slice(&[0]).expect("HMAC takes any key")
        });
        m.update(b"kore-gateway cursor key v2");
        CursorKey(m.finalize().into_bytes().into())
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| {
            <HmacSha256 as Mac>::new_from_slice(&[0]).expect("HMAC takes any key")
        });
        m.update(data);
        m
    }
}

const CURSOR_VERSION: u8 = 2;
/// Bytes of the query digest a cursor carries.
const BINDING: usize = 16;
/// Bytes of the (truncated) HMAC tag.
const TAG: usize = 16;
/// Longest cursor text accepted: the longest one [`encode_cursor`] issues (ids are read up
/// to [`ORDER_ID_BYTES`]), well under the URL limits of proxies and load balancers.
const MAX_CURSOR_CHARS: usize = (1 + BINDING + 8 + 2 * (4 + ORDER_ID_BYTES) + 32 + TAG) * 4 / 3 + 4;

/// An opaque cursor: the place of the last record returned (see [`Position`]), bound to the
/// query it belongs to (`binding`, the query key's digest) and signed, so a changed or
/// foreign cursor is refused rather than silently misread. Paging resumes *after* that
/// record, so records that appear or vanish between pages never shift the rest.
pub fn encode_cursor(pos: &Position, binding: &[u8; 32], key: &CursorKey) -> String {
    let mut buf = Vec::with_capacity(96 + pos.session.len() + pos.conversation.len());
    buf.push(CURSOR_VERSION);
    buf.extend_from_slice(&binding[..BINDING]);
    buf.extend_from_slice(&pos.start.to_be_bytes());
    for text in [&pos.session, &pos.conversation] {
        buf.extend_from_slice(&(text.len() as u32).to_be_bytes());
        buf.extend_from_slice(text.as_bytes());
    }
    buf.extend_from_slice(&pos.tie);
    let tag = key.mac(&buf).finalize().into_bytes();
    buf.extend_from_slice(&tag[..TAG]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    Malformed,
    OtherQuery,
}

/// The place a cursor stands for, if it is intact, signed by this gateway, and belongs to
/// this query.
///
/// # Errors
/// A cursor that does not decode, fails its signature, or was made for another query.
pub fn decode_cursor(
    cursor: &str,
    binding: &[u8; 32],
    key: &CursorKey,
) -> Result<Position, CursorError> {
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(CursorError::Malformed);
    }
    let buf = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| CursorError::Malformed)?;
    if buf.len() < 1 + BINDING + 8 + 4 + 4 + 32 + TAG || buf[0] != CURSOR_VERSION {
        return Err(CursorError::Malformed);
    }
    let (body, tag) = buf.split_at(buf.len() - TAG);
    key.mac(body)
        .verify_truncated_left(tag)
        .map_err(|_| CursorError::Malformed)?;
    if body[1..1 + BINDING] != binding[..BINDING] {
        return Err(CursorError::OtherQuery);
    }
    let mut rest = &body[1 + BINDING..];
    let start = i64::from_be_bytes(take::<8>(&mut rest)?);
    let mut texts = Vec::with_capacity(2);
    for _ in 0..2 {
        let len = u32::from_be_bytes(take::<4>(&mut rest)?) as usize;
        if len > rest.len() || len > ORDER_ID_BYTES {
            return Err(CursorError::Malformed);
        }
        let (text, after) = rest.split_at(len);
        texts.push(
            std::str::from_utf8(text)
                .map_err(|_| CursorError::Malformed)?
                .into(),
        );
        rest = after;
    }
    let tie = take::<32>(&mut rest)?;
    if !rest.is_empty() {
        return Err(CursorError::Malformed);
    }
    let conversation = texts.pop().ok_or(CursorError::Malformed)?;
    let session = texts.pop().ok_or(CursorError::Malformed)?;
    Ok(Position {
        start,
        session,
        conversation,
        tie,
    })
}

fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], CursorError> {
    if rest.len() < N {
        return Err(CursorError::Malformed);
    }
    let (head, tail) = rest.split_at(N);
    *rest = tail;
    head.try_into().map_err(|_| CursorError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Window;
    use jiff::Timestamp;
    use serde_json::value::RawValue;

    #[test]
    fn envelope_is_valid_json_and_keeps_records_verbatim() {
        let w = Window {
            start: Timestamp::UNIX_EPOCH,
            end: Timestamp::UNIX_EPOCH,
            offset_seconds: 0,
        };
        let raw = r#"{"sessionId":"a","n":1.50,"s":"Zoë \"q\""}"#;
        let r = Record::new(RawValue::from_string(raw.into()).unwrap(), &w);
        let warnings = vec!["w1".to_owned()];
        let meta = MetaHead {
            from: "f".into(),
            to: "t".into(),
            tz: "UTC",
            total: 1,
            returned: 1,
            next_cursor: None,
            complete: false,
            stale: false,
            warnings: &warnings,
            windows: 1,
        };
        let head = json_head(&[&r], &meta);
        let mut body = head.to_vec();
        body.extend_from_slice(&json_tail(3, CacheStatus::Partial));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(raw), "record bytes unchanged");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["meta"]["upstream_calls"], 3);
        assert_eq!(v["meta"]["cache"], "PARTIAL");
        assert_eq!(v["meta"]["complete"], false);
        assert_eq!(v["data"][0]["s"], "Zoë \"q\"");
    }

    #[test]
    fn cursor_round_trips_and_refuses_tampering() {
        let key = CursorKey::derive(b"secret");
        let (q1, q2) = ([1u8; 32], [2u8; 32]);
        let pos = Position {
            start: 1_700_000_000,
            session: "s-1".into(),
            conversation: "".into(),
            tie: [0; 32],
        };
        let c = encode_cursor(&pos, &q1, &key);
        assert_eq!(decode_cursor(&c, &q1, &key), Ok(pos.clone()));
        assert_eq!(decode_cursor(&c, &q2, &key), Err(CursorError::OtherQuery));
        // Any flipped bit is refused.
        let bytes = URL_SAFE_NO_PAD.decode(&c).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(
                decode_cursor(&URL_SAFE_NO_PAD.encode(&b), &q1, &key).is_err(),
                "byte {i}"
            );
        }
        // Another gateway's key (another secret) is refused: the tag is a real MAC.
        let other = CursorKey::derive(b"other secret");
        assert_eq!(decode_cursor(&c, &q1, &other), Err(CursorError::Malformed));
        assert!(!format!("{key:?}").contains("secret"));
        for junk in ["", "abc", "!!!!", &"A".repeat(200), &"A".repeat(10_000)] {
            assert!(decode_cursor(junk, &q1, &key).is_err(), "{junk}");
        }
    }

    /// A vendor id far longer than any real one (a misbehaving upstream) must not make a
    /// cursor the gateway then refuses, or one too long for a proxy's URL limit: paging
    /// through records whose long ids share a prefix visits each record exactly once.
    #[test]
    fn long_ids_page_through_with_short_cursors() {
        let key = CursorKey::derive(b"secret");
        let binding = [7u8; 32];
        let w = Window {
            start: Timestamp::UNIX_EPOCH,
            end: Timestamp::from_second(4_000_000_000).unwrap(),
            offset_seconds: 0,
        };
        let prefix = "é".repeat(200); // 400 bytes, two per character
        let mut records: Vec<Record> = Vec::new();
        for (i, tail) in ["a", "b", "", "c"].iter().enumerate() {
            for conv in ["x", &"ü".repeat(300)] {
                let json = serde_json::json!({
                    "sessionId": format!("{prefix}{tail}"),
                    "conversationId": conv,
                    "sessionStartTime": "2024-01-01T00:00:00",
                    "n": i,
                });
                let raw = serde_json::value::RawValue::from_string(json.to_string()).unwrap();
                records.push(Record::new(raw, &w));
            }
        }
        let short = serde_json::value::RawValue::from_string(
            r#"{"sessionId":"s","sessionStartTime":"2024-01-01T00:00:00"}"#.into(),
        )
        .unwrap();
        records.push(Record::new(short, &w));
        records.sort_by(crate::merge::output_order);
        let sorted: Vec<&Record> = records.iter().collect();
        for (i, r) in sorted.iter().enumerate() {
            let c = encode_cursor(&r.position(), &binding, &key);
            assert!(
                c.len() <= MAX_CURSOR_CHARS && c.len() < 1024,
                "{} chars",
                c.len()
            );
            let pos = decode_cursor(&c, &binding, &key).expect("an issued cursor is accepted");
            assert_eq!(
                crate::merge::resume_after(&sorted, &pos),
                i + 1,
                "record {i}"
            );
        }
    }

    #[test]
    fn csv_quotes_and_flattens() {
        let w = Window {
            start: Timestamp::UNIX_EPOCH,
            end: Timestamp::UNIX_EPOCH,
            offset_seconds: 0,
        };
        let raw = r#"{"sessionId":"a,b","channel":"say \"hi\"\nthere","customerinfo":{"CustomerFirstName":"Zoë"},"skills":[{"id":"1"}],"csatScore":4}"#;
        let r = Record::new(RawValue::from_string(raw.into()).unwrap(), &w);
        let mut text = String::from_utf8(csv_header().to_vec()).unwrap();
        text.push_str(std::str::from_utf8(&csv_rows([&r].into_iter(), true)).unwrap());
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let headers = rd.headers().unwrap().clone();
        let row = rd.records().next().unwrap().unwrap();
        let get = |name: &str| {
            row.get(headers.iter().position(|h| h == name).unwrap())
                .unwrap()
                .to_owned()
        };
        assert_eq!(get("sessionId"), "a,b");
        assert_eq!(get("channel"), "say \"hi\"\nthere");
        assert_eq!(get("customerinfo.CustomerFirstName"), "Zoë");
        assert_eq!(get("skills"), r#"[{"id":"1"}]"#);
        assert_eq!(get("csatScore"), "4");
        assert_eq!(get("conversationId"), "");
        assert_eq!(headers.len(), 29);
    }

    #[test]
    fn csv_defuses_formula_text_but_not_numbers() {
        let w = Window {
            start: Timestamp::UNIX_EPOCH,
            end: Timestamp::UNIX_EPOCH,
            offset_seconds: 0,
        };
        let raw = r#"{"sessionId":"=1+1","conversationId":"+33 1 23","channel":"-5","finalStatus":"@SUM(A1)","smartStatus":"\tx","statusDetail":"\rx","botId":"a=b","csatScore":-5,"customerinfo":{"CustomerFirstName":"=cmd|' /C calc'!A0"}}"#;
        let r = Record::new(RawValue::from_string(raw.into()).unwrap(), &w);
        let row = |escape: bool| {
            let mut text = String::from_utf8(csv_header().to_vec()).unwrap();
            text.push_str(std::str::from_utf8(&csv_rows([&r].into_iter(), escape)).unwrap());
            let mut rd = csv::Reader::from_reader(text.as_bytes());
            let headers = rd.headers().unwrap().clone();
            let row = rd.records().next().unwrap().unwrap();
            move |name: &str| row[headers.iter().position(|h| h == name).unwrap()].to_owned()
        };
        let on = row(true);
        assert_eq!(on("sessionId"), "'=1+1");
        assert_eq!(on("conversationId"), "'+33 1 23");
        assert_eq!(on("channel"), "-5", "a plain number after the sign is data");
        assert_eq!(on("finalStatus"), "'@SUM(A1)");
        assert_eq!(on("smartStatus"), "'\tx");
        assert_eq!(on("statusDetail"), "'\rx");
        assert_eq!(on("botId"), "a=b", "only a leading character counts");
        assert_eq!(on("csatScore"), "-5", "a JSON number stays a number");
        assert_eq!(on("customerinfo.CustomerFirstName"), "'=cmd|' /C calc'!A0");
        let off = row(false);
        assert_eq!(off("sessionId"), "=1+1");
        assert_eq!(off("channel"), "-5");
        assert_eq!(off("customerinfo.CustomerFirstName"), "=cmd|' /C calc'!A0");
    }

    /// Only what a spreadsheet would run is defused: numbers after a sign (phone numbers
    /// above all) stay as they are, every formula shape stays defused.
    #[test]
    fn formula_escaping_keeps_numbers_and_defuses_formulas() {
        for kept in [
            "+13413813633",
            "+1987654321",
            "-5",
            "-0.5",
            "+1.5",
            "+.5",
            "-5.",
            "plain",
            "a=b",
            "",
            "0",
            " =1",
        ] {
            assert_eq!(defuse_formula(kept), kept, "{kept:?}");
        }
        for defused in [
            "=cmd|'/C calc'!A0",
            "+cmd|'/C calc'!A0",
            "-cmd|'/C calc'!A0",
            "-2+3+cmd|'/C calc'!A0",
            "@SUM(1)",
            "=1+1",
            "\tx",
            "\rx",
            "+33 1 23",
            "-1,000",
            "+1.5e3",
            "+1.2.3",
            "+",
            "-",
            "+-5",
            "--5",
            "+5%",
            "+5)",
            "-.",
            "+١٢٣",
        ] {
            assert_eq!(
                defuse_formula(defused),
                format!("'{defused}"),
                "{defused:?}"
            );
        }
    }

    #[test]
    fn etags_match_weakly() {
        let e = etag(&[0; 32], b"abc");
        assert!(e.starts_with("W/\""));
        assert!(if_none_match(&e, &e));
        assert!(if_none_match(
            &format!("\"x\", {}", e.trim_start_matches("W/")),
            &e
        ));
        assert!(if_none_match("*", &e));
        assert!(!if_none_match("W/\"other\"", &e));
        assert_ne!(etag(&[0; 32], b"abc"), etag(&[0; 32], b"abd"));
        // The same bytes of two accounts (two bindings) never share an ETag.
        assert_ne!(etag(&[0; 32], b"abc"), etag(&[1; 32], b"abc"));
    }
}

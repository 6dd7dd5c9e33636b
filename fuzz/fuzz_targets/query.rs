//! `GET /v1/interactions` query parsing, end to end through the pure steps a request takes:
//! `parse_interactions` (dates, tz, lists, limit, cursor, format, `Accept`), then window
//! planning, the cursor of the query and the RFC 3339 rendering of its bounds.
//!
//! Input: `<query string>[\n<Accept header>]`.

#![no_main]

use kore_gateway::{
    api::{
        accept::Acceptable,
        interactions::plan_windows,
        query::{FIELDS, MAX_LIMIT, parse_interactions},
    },
    merge::Position,
    render::{CursorKey, decode_cursor, encode_cursor},
};
use kore_gateway_fuzz::assert_tiling;
use libfuzzer_sys::fuzz_target;

const MAX_RANGE_DAYS: u32 = 92;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (raw, accept) = match text.split_once('\n') {
        Some((q, a)) => (q, Some(a)),
        None => (&*text, None),
    };
    let Ok(q) = parse_interactions(Some(raw), Acceptable::parse(accept), MAX_RANGE_DAYS) else {
        return;
    };
    let r = &q.range;
    assert!(r.from <= r.to, "accepted an inverted range: {raw}");
    // Calendar days in the zone: the instants may lie further apart by what the clocks
    // were turned back in between (never a day).
    assert!(
        r.to.as_second() - r.from.as_second() < i64::from(MAX_RANGE_DAYS + 1) * 86_400,
        "accepted a range over {MAX_RANGE_DAYS} days: {raw}"
    );
    assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
    assert!(!r.filters.fields.is_empty());
    assert!(
        r.filters
            .fields
            .iter()
            .all(|f| FIELDS.contains(&f.as_str()))
    );
    let _ = (r.local_rfc3339(r.from), r.local_rfc3339(r.to));
    if let Ok(windows) = plan_windows(&q.range) {
        assert_tiling(r.from, r.to, &r.tz, &windows);
    }
    let key = CursorKey::derive(b"fuzz secret");
    let binding = r.key("interactions", &[7; 32]).digest();
    if let Some(c) = &q.cursor {
        let _ = decode_cursor(c, &binding, &key);
    }
    let pos = Position::new(r.from.as_second(), raw, r.tz_name.as_str(), [0; 32]);
    assert_eq!(
        decode_cursor(&encode_cursor(&pos, &binding, &key), &binding, &key),
        Ok(pos)
    );
});

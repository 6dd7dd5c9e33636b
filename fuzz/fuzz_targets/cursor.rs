//! Cursors: `decode_cursor` never panics on any text; a cursor it accepts is exactly the one
//! `encode_cursor` issues for that place and query; every issued cursor round-trips, and is
//! refused for any other query.
//!
//! Input: 32 bytes query binding, 8 bytes start, 1 byte `sessionId` length, the `sessionId`,
//! then the cursor text.

#![no_main]

use kore_gateway::{
    merge::Position,
    render::{CursorError, CursorKey, decode_cursor, encode_cursor},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = CursorKey::derive(b"fuzz secret");
    let mut binding = [0u8; 32];
    let n = data.len().min(32);
    binding[..n].copy_from_slice(&data[..n]);
    let rest = data.get(32..).unwrap_or_default();
    let mut start = [0u8; 8];
    let m = rest.len().min(8);
    start[..m].copy_from_slice(&rest[..m]);
    let rest = rest.get(8..).unwrap_or_default();
    let sid_len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
    let sid = String::from_utf8_lossy(rest.get(1..1 + sid_len).unwrap_or_default());
    let cursor = String::from_utf8_lossy(rest.get(1 + sid_len..).unwrap_or_default());

    if let Ok(decoded) = decode_cursor(&cursor, &binding, &key) {
        assert_eq!(
            encode_cursor(&decoded, &binding, &key),
            cursor.trim(),
            "accepted a cursor the gateway would not issue"
        );
    }

    let pos = Position::new(i64::from_le_bytes(start), &sid, "", binding);
    let issued = encode_cursor(&pos, &binding, &key);
    assert_eq!(decode_cursor(&issued, &binding, &key), Ok(pos));
    let mut other = binding;
    other[0] ^= 1;
    assert_eq!(
        decode_cursor(&issued, &other, &key),
        Err(CursorError::OtherQuery)
    );
});

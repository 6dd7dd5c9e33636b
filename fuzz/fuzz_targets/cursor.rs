//! Cursors: `decode_cursor` never panics on any text; a cursor it accepts is exactly the one
//! `encode_cursor` issues for that offset and query; and every issued cursor round-trips,
//! and is refused for any other query.
//!
//! Input: 8 bytes offset, 1 byte fingerprint length, the fingerprint, then the cursor text.

#![no_main]

use kore_gateway::render::{CursorError, decode_cursor, encode_cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut off = [0u8; 8];
    let n = data.len().min(8);
    off[..n].copy_from_slice(&data[..n]);
    let offset = u64::from_le_bytes(off) as usize;
    let rest = data.get(8..).unwrap_or_default();
    let fp_len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
    let fp = String::from_utf8_lossy(&rest.get(1..1 + fp_len).unwrap_or_default());
    let cursor = String::from_utf8_lossy(rest.get(1 + fp_len..).unwrap_or_default());

    if let Ok(decoded) = decode_cursor(&cursor, &fp) {
        assert_eq!(
            encode_cursor(decoded, &fp),
            cursor.trim(),
            "accepted a cursor the gateway would not issue"
        );
    }

    let issued = encode_cursor(offset, &fp);
    assert!(
        issued.len() <= 64,
        "an issued cursor is longer than decode accepts"
    );
    assert_eq!(decode_cursor(&issued, &fp), Ok(offset));
    let other = format!("{fp}|other");
    assert_eq!(decode_cursor(&issued, &other), Err(CursorError::OtherQuery));
});

//! Window planning: any range of up to 400 days between 1971 and 2100, in a zone from a
//! list chosen for awkward rules (half-hour and 45-minute offsets, 30-minute DST, negative
//! DST, skipped days, sub-minute historical offsets) or a fixed offset, must be tiled by
//! windows of at most 7 days with one offset each — or refused with a reason, never a panic.
//!
//! Input: 8 bytes start, 4 bytes length, 1 byte zone (little-endian; short input is padded).

#![no_main]

use jiff::{
    Timestamp,
    tz::{Offset, TimeZone},
};
use kore_gateway::plan::{PlanError, plan};
use kore_gateway_fuzz::assert_tiling;
use libfuzzer_sys::fuzz_target;

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Dublin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Asia/Tehran",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Pacific/Tongatapu",
    "Europe/Moscow",
    "Africa/Casablanca",
    "Africa/Monrovia",
    "Antarctica/Troll",
    "America/Caracas",
    "Asia/Pyongyang",
];

/// 1971-01-01T00:00:00Z and 2100-01-01T00:00:00Z: the years the query parser accepts.
const FIRST: i64 = 31_536_000;
const LAST: i64 = 4_102_444_800;
const MAX_LEN: i64 = 400 * 86_400;

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; 13];
    let n = data.len().min(13);
    buf[..n].copy_from_slice(&data[..n]);
    let raw_start = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
    let raw_len = u32::from_le_bytes(buf[8..12].try_into().unwrap_or_default());
    let start = FIRST + (raw_start % (LAST - FIRST) as u64) as i64;
    let len = i64::from(raw_len) % MAX_LEN;
    let end = (start + len).min(LAST);
    let zone = usize::from(buf[12]);
    let tz = match ZONES.get(zone) {
        Some(name) => TimeZone::get(name).expect("bundled zone"),
        // Past the list: a fixed offset of whole minutes within ±14:00.
        None => {
            let minutes = (i32::from(buf[12]) * 7 + raw_len as i32 % 60) % (14 * 60);
            let sign = if raw_start % 2 == 0 { 1 } else { -1 };
            TimeZone::fixed(Offset::from_seconds(sign * minutes * 60).expect("within ±14h"))
        }
    };
    let from = Timestamp::from_second(start).expect("in range");
    let to = Timestamp::from_second(end).expect("in range");
    match plan(from, to, &tz) {
        Ok(ws) => assert_tiling(from, to, &tz, &ws),
        Err(PlanError::OffsetNotMinutes { at }) => {
            assert_ne!(
                tz.to_offset(at).seconds() % 60,
                0,
                "refused a whole-minute offset at {at}"
            );
        }
        Err(e) => panic!(
            "plan({from}, {to}, {}) refused: {e}",
            ZONES.get(zone).unwrap_or(&"fixed")
        ),
    }
});

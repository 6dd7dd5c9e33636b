//! Window planning (pure, no I/O): `[from, to]` in a time zone → the upstream windows.
//!
//! The vendor takes at most 7 days per query and one `timeZoneOffset` per query, so a DST
//! change must never fall inside a window. Windows sit on a grid that depends only on the
//! time zone — local weeks starting Monday 00:00, cut at every change of UTC offset — and a
//! query's windows are the grid cells clipped to its range. Two overlapping queries therefore
//! share every window except the clipped edges, which is what makes the window cache work.
//!
//! Bounds are inclusive and whole seconds, like the vendor's: consecutive windows meet with
//! no gap and no overlap (`next.start == prev.end + 1 s`).

use jiff::{
    SignedDuration, Timestamp, ToSpan,
    civil::{Date, DateTime, Weekday},
    tz::{Offset, TimeZone},
};

/// The vendor's limit on one query's span (`endDate - startDate`).
pub const MAX_WINDOW_SECONDS: i64 = 7 * 86_400;

/// One upstream query range: inclusive bounds, one UTC offset throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First second included.
    pub start: Timestamp,
    /// Last second included.
    pub end: Timestamp,
    /// The UTC offset in force over the whole window, in seconds east of UTC.
    pub offset_seconds: i32,
}

impl Window {
    /// The offset in the vendor's inverted-minutes form (`getTimezoneOffset()`: IST → -330).
    pub fn vendor_offset(&self) -> i32 {
        -(self.offset_seconds / 60)
    }

    fn offset(&self) -> Offset {
        Offset::from_seconds(self.offset_seconds).unwrap_or(Offset::UTC)
    }

    /// Local wall-clock time of `ts` in this window's offset.
    pub fn local(&self, ts: Timestamp) -> DateTime {
        self.offset().to_datetime(ts)
    }

    /// `startDate` as the vendor wants it: `yyyy-mm-dd HH:mm:ss`, local to the offset.
    pub fn vendor_start(&self) -> String {
        vendor_datetime(self.local(self.start))
    }

    /// `endDate` as the vendor wants it (inclusive).
    pub fn vendor_end(&self) -> String {
        vendor_datetime(self.local(self.end))
    }

    /// Seconds covered, counting both ends.
    pub fn len_seconds(&self) -> i64 {
        self.end.as_second() - self.start.as_second() + 1
    }

    /// Two halves covering exactly this window, or `None` for a single second.
    pub fn split(&self) -> Option<(Window, Window)> {
        let len = self.len_seconds();
        if len < 2 {
            return None;
        }
        let first_end = Timestamp::from_second(self.start.as_second() + len / 2 - 1).ok()?;
        let second_start = Timestamp::from_second(first_end.as_second() + 1).ok()?;
        Some((
            Window {
                end: first_end,
                ..*self
            },
            Window {
                start: second_start,
                ..*self
            },
        ))
    }

    /// This window cut on its local grid (days, 6 h, hours, 15 min, minutes, seconds), at the
    /// coarsest step that gives at least `k` parts.
    pub fn cut_on_grid(&self, k: u64) -> Vec<Window> {
        let off = i64::from(self.offset_seconds);
        let (a, b) = (self.start.as_second(), self.end.as_second());
        for step in [86_400, 21_600, 3_600, 900, 60, 1] {
            let mut parts = Vec::new();
            let mut start = a;
            while start <= b {
                let next = (start + off).div_euclid(step) * step + step - off;
                let end = (next - 1).min(b);
                let (Ok(s), Ok(e)) = (Timestamp::from_second(start), Timestamp::from_second(end))
                else {
                    return vec![*self];
                };
                parts.push(Window {
                    start: s,
                    end: e,
                    offset_seconds: self.offset_seconds,
                });
                start = end + 1;
            }
            if parts.len() as u64 >= k || step == 1 {
                return parts;
            }
        }
        vec![*self]
    }

    /// This window cut on its local grid into at least `k` parts where the grid allows, but
    /// never more than `max_parts` (neighbouring cells are joined) and never on a step finer
    /// than `min_seconds`. A window no longer than `min_seconds` comes back whole.
    pub fn cut_bounded(&self, k: u64, max_parts: u64, min_seconds: i64) -> Vec<Window> {
        if self.len_seconds() <= min_seconds || max_parts < 2 {
            return vec![*self];
        }
        let off = i64::from(self.offset_seconds);
        let (a, b) = (self.start.as_second(), self.end.as_second());
        let want = k.clamp(2, max_parts);
        let mut cells: Vec<(i64, i64)> = Vec::new();
        for step in [86_400, 21_600, 3_600, 900, 60] {
            if step < min_seconds && !cells.is_empty() {
                break;
            }
            cells.clear();
            let mut start = a;
            while start <= b {
                let next = (start + off).div_euclid(step) * step + step - off;
                let end = (next - 1).min(b);
                cells.push((start, end));
                start = end + 1;
            }
            if cells.len() as u64 >= want {
                break;
            }
        }
        if cells.len() < 2 {
            return vec![*self];
        }
        // Join neighbouring cells so that at most `max_parts` remain.
        let per = cells
            .len()
            .div_ceil(usize::try_from(max_parts).unwrap_or(usize::MAX));
        let mut parts = Vec::with_capacity(cells.len().div_ceil(per));
        for group in cells.chunks(per) {
            let (Some(first), Some(last)) = (group.first(), group.last()) else {
                continue;
            };
            let (Ok(s), Ok(e)) = (
                Timestamp::from_second(first.0),
                Timestamp::from_second(last.1),
            ) else {
                return vec![*self];
            };
            parts.push(Window {
                start: s,
                end: e,
                offset_seconds: self.offset_seconds,
            });
        }
        parts
    }

    /// Converts a vendor record time (`YYYY-MM-DDTHH:MM:SS`, local to this window's offset,
    /// no zone suffix) to Unix seconds. `None` when the text is not such a time.
    pub fn record_time_to_unix(&self, text: &str) -> Option<i64> {
        let dt: DateTime = text.trim().parse().ok()?;
        let ts = self.offset().to_timestamp(dt).ok()?;
        Some(ts.as_second())
    }
}

fn vendor_datetime(dt: DateTime) -> String {
    dt.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Why a range cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("`from` is after `to`")]
    Inverted,
    #[error(
        "the time zone's offset at {at} is not a whole number of minutes, which the upstream cannot express"
    )]
    OffsetNotMinutes { at: Timestamp },
    #[error("the range is outside the supported years")]
    OutOfRange,
}

/// Splits `[from, to]` (inclusive) into windows on the time zone's grid.
///
/// # Errors
/// `from > to`, or an offset the vendor cannot express (sub-minute historical offsets).
pub fn plan(from: Timestamp, to: Timestamp, tz: &TimeZone) -> Result<Vec<Window>, PlanError> {
    if from > to {
        return Err(PlanError::Inverted);
    }
    let mut windows = Vec::new();
    let mut cur = from;
    loop {
        let offset = tz.to_offset(cur);
        if offset.seconds() % 60 != 0 {
            return Err(PlanError::OffsetNotMinutes { at: cur });
        }
        let mut cell_end = next_week_start(cur, tz)?;
        if let Some(change) = next_offset_change(cur, offset, tz)
            && change < cell_end
        {
            cell_end = change;
        }
        let last = cell_end
            .checked_sub(SignedDuration::from_secs(1))
            .map_err(|_| PlanError::OutOfRange)?;
        let end = if last < to { last } else { to };
        windows.push(Window {
            start: cur,
            end,
            offset_seconds: offset.seconds(),
        });
        if end == to {
            return Ok(windows);
        }
        cur = cell_end;
    }
}

/// The first instant of the next local week (Monday 00:00, or the first instant after it
/// when midnight does not exist that day) strictly after `ts`.
fn next_week_start(ts: Timestamp, tz: &TimeZone) -> Result<Timestamp, PlanError> {
    let date: Date = tz.to_datetime(ts).date();
    let days = 7 - i64::from(date.weekday().to_monday_zero_offset());
    let monday = date
        .checked_add(days.days())
        .map_err(|_| PlanError::OutOfRange)?;
    debug_assert_eq!(monday.weekday(), Weekday::Monday);
    tz.to_ambiguous_timestamp(monday.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .map_err(|_| PlanError::OutOfRange)
}

/// The next instant after `ts` at which the UTC offset differs from `offset`. Transitions
/// that only rename the zone (same offset) are skipped: they do not bother the vendor.
fn next_offset_change(ts: Timestamp, offset: Offset, tz: &TimeZone) -> Option<Timestamp> {
    tz.following(ts)
        .take(64)
        .find(|t| t.offset() != offset)
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str, tz: &TimeZone) -> Timestamp {
        let dt: DateTime = s.parse().unwrap();
        tz.to_ambiguous_timestamp(dt).compatible().unwrap()
    }

    fn check_invariants(from: Timestamp, to: Timestamp, tz: &TimeZone, ws: &[Window]) {
        assert!(!ws.is_empty());
        assert_eq!(ws[0].start, from);
        assert_eq!(ws[ws.len() - 1].end, to);
        for pair in ws.windows(2) {
            assert_eq!(
                pair[1].start.as_second(),
                pair[0].end.as_second() + 1,
                "gap or overlap: {pair:?}"
            );
        }
        for w in ws {
            assert!(w.start <= w.end, "{w:?}");
            assert!(
                w.end.as_second() - w.start.as_second() <= MAX_WINDOW_SECONDS,
                "{w:?} longer than 7 days"
            );
            assert_eq!(tz.to_offset(w.start).seconds(), w.offset_seconds, "{w:?}");
            assert_eq!(
                tz.to_offset(w.end).seconds(),
                w.offset_seconds,
                "{w:?} ends in another offset"
            );
            // No offset change strictly inside the window.
            if let Some(t) = tz
                .following(w.start)
                .find(|t| t.offset().seconds() != w.offset_seconds)
            {
                assert!(
                    t.timestamp() > w.end,
                    "{w:?} straddles a change at {}",
                    t.timestamp()
                );
            }
        }
    }

    #[test]
    fn utc_month_uses_monday_grid() {
        let tz = TimeZone::UTC;
        let from = ts("2024-09-01T00:00:00", &tz); // a Sunday
        let to = ts("2024-09-30T23:59:59", &tz);
        let ws = plan(from, to, &tz).unwrap();
        let starts: Vec<String> = ws.iter().map(|w| w.vendor_start()).collect();
        assert_eq!(
            starts,
            [
                "2024-09-01 00:00:00",
                "2024-09-02 00:00:00",
                "2024-09-09 00:00:00",
                "2024-09-16 00:00:00",
                "2024-09-23 00:00:00",
                "2024-09-30 00:00:00"
            ]
        );
        assert_eq!(ws[1].vendor_end(), "2024-09-08 23:59:59");
        check_invariants(from, to, &tz, &ws);
    }

    #[test]
    fn new_york_fall_back_splits_at_the_change_with_each_offset() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let from = ts("2024-11-01T00:00:00", &tz);
        let to = ts("2024-11-05T23:59:59", &tz);
        let ws = plan(from, to, &tz).unwrap();
        let got: Vec<(String, String, i32)> = ws
            .iter()
            .map(|w| (w.vendor_start(), w.vendor_end(), w.vendor_offset()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "2024-11-01 00:00:00".into(),
                    "2024-11-03 01:59:59".into(),
                    240
                ),
                (
                    "2024-11-03 01:00:00".into(),
                    "2024-11-03 23:59:59".into(),
                    300
                ),
                (
                    "2024-11-04 00:00:00".into(),
                    "2024-11-05 23:59:59".into(),
                    300
                ),
            ]
        );
        check_invariants(from, to, &tz, &ws);
    }

    #[test]
    fn kolkata_offset_is_inverted_minutes() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let from = ts("2024-09-26T00:00:00", &tz);
        let ws = plan(from, ts("2024-09-26T23:59:59", &tz), &tz).unwrap();
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].vendor_offset(), -330);
        assert_eq!(ws[0].vendor_start(), "2024-09-26 00:00:00");
        assert_eq!(
            ws[0].record_time_to_unix("2024-09-26T05:30:00"),
            Some(from.as_second() + 5 * 3600 + 1800)
        );
    }

    #[test]
    fn overlapping_queries_share_interior_windows() {
        let tz = TimeZone::get("Europe/London").unwrap();
        let a = plan(
            ts("2024-03-01T00:00:00", &tz),
            ts("2024-04-15T23:59:59", &tz),
            &tz,
        )
        .unwrap();
        let b = plan(
            ts("2024-03-02T00:00:00", &tz),
            ts("2024-04-16T23:59:59", &tz),
            &tz,
        )
        .unwrap();
        let shared = a.iter().filter(|w| b.contains(w)).count();
        assert_eq!(
            shared,
            a.len() - 2,
            "all but the two edges are shared: {a:?} / {b:?}"
        );
    }

    #[test]
    fn split_halves_cover_exactly() {
        let tz = TimeZone::UTC;
        let w = plan(
            ts("2024-09-02T00:00:00", &tz),
            ts("2024-09-08T23:59:59", &tz),
            &tz,
        )
        .unwrap()[0];
        let (a, b) = w.split().unwrap();
        assert_eq!(a.start, w.start);
        assert_eq!(b.end, w.end);
        assert_eq!(b.start.as_second(), a.end.as_second() + 1);
        assert_eq!(a.len_seconds() + b.len_seconds(), w.len_seconds());
        let one = Window {
            start: w.start,
            end: w.start,
            offset_seconds: 0,
        };
        assert!(one.split().is_none());
        let two = Window {
            end: Timestamp::from_second(w.start.as_second() + 1).unwrap(),
            ..one
        };
        let (x, y) = two.split().unwrap();
        assert_eq!((x.len_seconds(), y.len_seconds()), (1, 1));
    }

    #[test]
    fn cut_on_grid_uses_the_coarsest_local_step_that_gives_enough_parts() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let week = plan(
            ts("2024-09-02T00:00:00", &tz),
            ts("2024-09-08T23:59:59", &tz),
            &tz,
        )
        .unwrap()[0];
        let days = week.cut_on_grid(4);
        assert_eq!(days.len(), 7, "local days of the week");
        assert_eq!(days[1].vendor_start(), "2024-09-03 00:00:00");
        assert_eq!(days[1].vendor_end(), "2024-09-03 23:59:59");
        let day = days[1];
        let quarters = day.cut_on_grid(3);
        assert_eq!(quarters.len(), 4, "6-hour parts");
        assert_eq!(quarters[1].vendor_start(), "2024-09-03 06:00:00");
        // A part that starts mid-grid is cut on the same grid as the whole, so parts of
        // overlapping windows line up.
        let partial = Window {
            start: ts("2024-09-03T10:30:00", &tz),
            ..day
        };
        let p = partial.cut_on_grid(2);
        assert_eq!(p[0].vendor_start(), "2024-09-03 10:30:00");
        assert_eq!(p[0].vendor_end(), "2024-09-03 11:59:59");
        assert_eq!(p[1], quarters[2]);
        let one = Window {
            start: week.start,
            end: week.start,
            offset_seconds: week.offset_seconds,
        };
        assert_eq!(
            one.cut_on_grid(2),
            vec![one],
            "a single second cannot be cut"
        );
    }
    #[test]
    fn inverted_and_sub_minute_offsets_are_refused() {
        let tz = TimeZone::UTC;
        assert_eq!(
            plan(
                ts("2024-09-02T00:00:00", &tz),
                ts("2024-09-01T00:00:00", &tz),
                &tz
            ),
            Err(PlanError::Inverted)
        );
        // Liberia kept -0:44:30 until 1972.
        let monrovia = TimeZone::get("Africa/Monrovia").unwrap();
        let r = plan(
            ts("1970-01-01T00:00:00", &monrovia),
            ts("1970-01-02T00:00:00", &monrovia),
            &monrovia,
        );
        assert!(matches!(r, Err(PlanError::OffsetNotMinutes { .. })));
    }

    const ZONES: &[&str] = &[
        "UTC",
        "America/New_York",
        "Europe/London",
        "Asia/Kolkata",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Asia/Tehran",
        "Pacific/Chatham",
        "America/Sao_Paulo",
        "Europe/Moscow",
        "Africa/Casablanca",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn grid_cuts_tile_the_window(
            zone in proptest::sample::select(ZONES),
            start in 946_684_800i64..2_208_988_800i64,
            len in 0i64..(7 * 86_400),
            k in 2u64..40,
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let ws = plan(Timestamp::from_second(start).unwrap(), Timestamp::from_second(start + len).unwrap(), &tz).unwrap();
            for w in ws {
                let parts = w.cut_on_grid(k);
                prop_assert_eq!(parts[0].start, w.start);
                prop_assert_eq!(parts[parts.len() - 1].end, w.end);
                for pair in parts.windows(2) {
                    prop_assert_eq!(pair[1].start.as_second(), pair[0].end.as_second() + 1);
                }
                for p in &parts {
                    prop_assert!(p.start <= p.end);
                    prop_assert_eq!(p.offset_seconds, w.offset_seconds);
                }
                prop_assert!(parts.len() as u64 >= k.min(w.len_seconds() as u64) || parts.len() as i64 == w.len_seconds());
            }
        }

        #[test]
        fn bounded_cuts_tile_the_window_within_their_bounds(
            zone in proptest::sample::select(ZONES),
            start in 946_684_800i64..2_208_988_800i64,
            len in 0i64..(7 * 86_400),
            k in 0u64..100_000_000,
            max_parts in 2u64..200,
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let ws = plan(Timestamp::from_second(start).unwrap(), Timestamp::from_second(start + len).unwrap(), &tz).unwrap();
            for w in ws {
                let parts = w.cut_bounded(k, max_parts, 60);
                prop_assert_eq!(parts[0].start, w.start);
                prop_assert_eq!(parts[parts.len() - 1].end, w.end);
                for pair in parts.windows(2) {
                    prop_assert_eq!(pair[1].start.as_second(), pair[0].end.as_second() + 1);
                    // Every cut falls on the local minute grid at least.
                    let local = pair[1].start.as_second() + i64::from(w.offset_seconds);
                    prop_assert_eq!(local.rem_euclid(60), 0);
                }
                prop_assert!(parts.len() as u64 <= max_parts, "{} parts", parts.len());
                if w.len_seconds() <= 60 {
                    prop_assert_eq!(parts.len(), 1, "a minute is never cut");
                } else {
                    prop_assert!(parts.len() >= 2 || w.len_seconds() <= 120, "{:?} -> {:?}", w, parts);
                }
                for p in &parts {
                    prop_assert!(p.start <= p.end);
                    prop_assert_eq!(p.offset_seconds, w.offset_seconds);
                }
            }
        }

        #[test]
        fn windows_tile_the_range(
            zone in proptest::sample::select(ZONES),
            start in 946_684_800i64..2_208_988_800i64, // 2000..2040
            len in 0i64..(120 * 86_400),
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let from = Timestamp::from_second(start).unwrap();
            let to = Timestamp::from_second(start + len).unwrap();
            let ws = plan(from, to, &tz).unwrap();
            check_invariants(from, to, &tz, &ws);
            // Grid independence: planning a wider range contains every interior window.
            let wider = plan(Timestamp::from_second(start - 86_400 * 9).unwrap(), Timestamp::from_second(start + len + 86_400 * 9).unwrap(), &tz).unwrap();
            for w in ws.iter().skip(1).take(ws.len().saturating_sub(2)) {
                prop_assert!(wider.contains(w), "{:?} not on the grid", w);
            }
        }
    }
}

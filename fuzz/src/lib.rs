//! Invariants shared by the fuzz targets. Each one panics (and so makes libFuzzer report a
//! crash) when the gateway's pure cores break a promise the rest of the pipeline relies on.

use jiff::{Timestamp, tz::TimeZone};
use kore_gateway::plan::{MAX_WINDOW_SECONDS, Window};

/// The windows of `[from, to]` in `tz` tile the range exactly: the first starts at `from`,
/// the last ends at `to`, each starts one second after the previous ends, none spans more
/// than the vendor's 7 days, and each has one UTC offset throughout (no change inside it).
pub fn assert_tiling(from: Timestamp, to: Timestamp, tz: &TimeZone, ws: &[Window]) {
    assert!(!ws.is_empty(), "no windows for {from} .. {to}");
    assert_eq!(ws[0].start, from, "first window does not start at `from`");
    assert_eq!(ws[ws.len() - 1].end, to, "last window does not end at `to`");
    for pair in ws.windows(2) {
        assert_eq!(
            pair[1].start.as_second(),
            pair[0].end.as_second() + 1,
            "gap or overlap between {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    for w in ws {
        assert!(w.start <= w.end, "inverted window {w:?}");
        assert!(
            w.end.as_second() - w.start.as_second() <= MAX_WINDOW_SECONDS,
            "{w:?} is longer than 7 days"
        );
        assert_eq!(w.offset_seconds % 60, 0, "{w:?}: offset not whole minutes");
        assert_eq!(
            tz.to_offset(w.start).seconds(),
            w.offset_seconds,
            "{w:?} starts in another offset"
        );
        assert_eq!(
            tz.to_offset(w.end).seconds(),
            w.offset_seconds,
            "{w:?} ends in another offset"
        );
        if let Some(t) = tz
            .following(w.start)
            .take(8)
            .find(|t| t.offset().seconds() != w.offset_seconds)
        {
            assert!(
                t.timestamp() > w.end,
                "{w:?} straddles an offset change at {}",
                t.timestamp()
            );
        }
        // What the vendor is sent reads back as the same instants.
        let back = |text: String| w.record_time_to_unix(&text.replacen(' ', "T", 1));
        assert_eq!(back(w.vendor_start()), Some(w.start.as_second()), "{w:?}");
        assert_eq!(back(w.vendor_end()), Some(w.end.as_second()), "{w:?}");
    }
}

//! The drop-in route's body (`parse_body`): any bytes are refused with a 400 or become one
//! window the vendor would take — start ≤ end, at most 7 days, an offset of whole minutes
//! within ±14 h — with known `selectedFields` only and normalised lists.

#![no_main]

use kore_gateway::{
    api::{dropin::parse_body, query::FIELDS},
    plan::MAX_WINDOW_SECONDS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((w, f)) = parse_body(data) else {
        return;
    };
    assert!(w.start <= w.end, "{w:?}");
    assert!(
        w.end.as_second() - w.start.as_second() <= MAX_WINDOW_SECONDS,
        "{w:?}"
    );
    assert_eq!(w.offset_seconds % 60, 0, "{w:?}");
    assert!(w.offset_seconds.abs() <= 14 * 3600, "{w:?}");
    assert_eq!(w.vendor_offset() * -60, w.offset_seconds, "{w:?}");
    let _ = (w.vendor_start(), w.vendor_end());
    assert!(
        f.fields.iter().all(|x| FIELDS.contains(&x.as_str())),
        "{f:?}"
    );
    for list in [&f.channels, &f.queues, &f.bots, &f.fields] {
        assert!(
            list.windows(2).all(|p| p[0] < p[1]),
            "not normalised: {list:?}"
        );
    }
});

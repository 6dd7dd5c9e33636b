//! The change feed's client-controlled texts: a `Last-Event-ID` and a `ticket`. Parsing an id
//! never panics, and the position it reads is the one the id the gateway issues for it reads
//! back as; a ticket it accepts is exactly one the gateway issued for that query and holder;
//! every issued ticket is accepted until it expires and refused for any other query.
//!
//! Input: 32 bytes query binding, 1 byte holder name length, the name, then the text tried
//! both as an event id and as a ticket.

#![no_main]

use kore_gateway::feed::{
    id::{self, Resume},
    ticket::{Holder, TicketKey},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut binding = [0u8; 32];
    let n = data.len().min(32);
    binding[..n].copy_from_slice(&data[..n]);
    let rest = data.get(32..).unwrap_or_default();
    let len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
    let name = String::from_utf8_lossy(rest.get(1..1 + len).unwrap_or_default()).into_owned();
    let text = String::from_utf8_lossy(rest.get(1 + len..).unwrap_or_default()).into_owned();

    match id::parse(Some(&text)) {
        Resume::Live { epoch, seq } => {
            assert_eq!(id::parse(Some(&id::live(&epoch, seq))), Resume::Live { epoch, seq });
        }
        Resume::Backlog { epoch, seq, after } => {
            assert_eq!(id::parse(Some(&id::backlog(&epoch, seq, &after))), Resume::Backlog {
                epoch,
                seq,
                after
            });
        }
        Resume::Fresh | Resume::Unknown => {}
    }

    let key = TicketKey::derive([b"fuzz secret".as_slice()]);
    let now = 1_800_000_000;
    if let Ok(h) = key.check(&text, &binding, now) {
        assert_eq!(
            key.issue(&h, &binding, i64::MAX).len(),
            text.trim().len(),
            "accepted a ticket of a shape the gateway does not issue"
        );
    }
    let holder = Holder {
        caller: name,
        admin: binding[0] & 1 == 1,
    };
    let issued = key.issue(&holder, &binding, now + 300);
    assert_eq!(key.check(&issued, &binding, now), Ok(holder.clone()));
    assert!(key.check(&issued, &binding, now + 301).is_err(), "expired");
    let mut other = binding;
    other[0] ^= 1;
    assert!(key.check(&issued, &other, now).is_err(), "another query");
});

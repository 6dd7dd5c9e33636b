//! Event ids: where a subscriber stands, opaque to it, enough to resume right after.
//!
//! * `<epoch>-<seq>`: every event of the topic's log up to `seq` was sent (a live event).
//! * `<epoch>-<seq>-<start>-<id hex>`: the backlog was sent up to the record
//!   `(start, id)`, in `(start, id)` order, as the log stood at `seq` (a backlog event, or a
//!   change replayed while a backlog was resumed).
//!
//! `epoch` names one life of the topic's log: an id of another topic, another account, or
//! a log that was lost is recognised as foreign and answered with a reset.

use std::fmt::Write;

/// Where the record order of the backlog stands: start (Unix seconds), then identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub start: i64,
    pub id: std::sync::Arc<str>,
}

/// A parsed `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No id: a new subscription.
    Fresh,
    /// Every event up to `seq` was sent.
    Live { epoch: String, seq: u64 },
    /// The backlog up to `after`, as the log stood at `seq`.
    Backlog {
        epoch: String,
        seq: u64,
        after: RecordKey,
    },
    /// An id this gateway never issued (or cannot read): start over with a reset.
    Unknown,
}

/// Longest id accepted (a record id is hex-encoded, so twice its length plus the rest).
const MAX_ID_CHARS: usize = 2048;

/// The id of a live event.
pub fn live(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// The id of a backlog event (or a change replayed inside a resumed backlog).
pub fn backlog(epoch: &str, seq: u64, key: &RecordKey) -> String {
    let mut out = String::with_capacity(epoch.len() + 24 + key.id.len() * 2);
    let _ = write!(out, "{epoch}-{seq}-{}-", key.start);
    for b in key.id.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Reads a `Last-Event-ID` (absent or blank: a fresh subscription).
pub fn parse(text: Option<&str>) -> Resume {
    let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Resume::Fresh;
    };
    if t.len() > MAX_ID_CHARS || !t.is_ascii() {
        return Resume::Unknown;
    }
    let parts: Vec<&str> = t.split('-').collect();
    let epoch_ok = |e: &str| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [epoch, seq] if epoch_ok(epoch) => match seq.parse() {
            Ok(seq) => Resume::Live {
                epoch: (*epoch).to_owned(),
                seq,
            },
            Err(_) => Resume::Unknown,
        },
        [epoch, seq, start, hex] if epoch_ok(epoch) => {
            let (Ok(seq), Ok(start), Some(id)) = (seq.parse(), start.parse(), unhex(hex)) else {
                return Resume::Unknown;
            };
            Resume::Backlog {
                epoch: (*epoch).to_owned(),
                seq,
                after: RecordKey {
                    start,
                    id: id.into(),
                },
            }
        }
        // A negative start: `<epoch>-<seq>--<digits>-<hex>`.
        [epoch, seq, "", start, hex] if epoch_ok(epoch) => {
            let (Ok(seq), Ok(start), Some(id)) = (seq.parse(), start.parse::<i64>(), unhex(hex))
            else {
                return Resume::Unknown;
            };
            Resume::Backlog {
                epoch: (*epoch).to_owned(),
                seq,
                after: RecordKey {
                    start: -start,
                    id: id.into(),
                },
            }
        }
        _ => Resume::Unknown,
    }
}

fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: &str = "0123456789abcdef";

    #[test]
    fn ids_read_back_as_written() {
        assert_eq!(
            parse(Some(&live(EPOCH, 42))),
            Resume::Live {
                epoch: EPOCH.into(),
                seq: 42
            }
        );
        for (start, id) in [(1_727_000_000, "66f4-a,b\n\"c"), (-5, "x"), (0, "")] {
            let key = RecordKey {
                start,
                id: id.into(),
            };
            assert_eq!(
                parse(Some(&backlog(EPOCH, 7, &key))),
                Resume::Backlog {
                    epoch: EPOCH.into(),
                    seq: 7,
                    after: key
                }
            );
        }
    }

    #[test]
    fn anything_else_is_unknown_or_fresh() {
        assert_eq!(parse(None), Resume::Fresh);
        assert_eq!(parse(Some("  ")), Resume::Fresh);
        for bad in [
            "abc",
            "0123456789abcdef",
            "0123456789abcdeg-1",
            "0123456789abcdef-x",
            "0123456789abcdef-1-2-zz",
            "0123456789abcdef-1-2-abc",
            "0123456789abcdef-18446744073709551616",
            "é",
        ] {
            assert_eq!(parse(Some(bad)), Resume::Unknown, "{bad}");
        }
        assert_eq!(parse(Some(&"a".repeat(2100))), Resume::Unknown);
    }
}

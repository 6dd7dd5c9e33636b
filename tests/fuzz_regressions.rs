//! Regression tests from fuzzing (`fuzz/`, `ci/fuzz.sh`): every input a fuzz target ever
//! crashed on is kept here as a plain test calling the same function, and the committed seed
//! corpora are replayed so the targets' starting points stay valid inputs for the code.

use std::{fs, path::Path};

use kore_gateway::{
    api::{
        accept::Acceptable, dropin::parse_body, interactions::plan_windows,
        query::parse_interactions,
    },
    merge::Position,
    render::{CursorKey, decode_cursor, encode_cursor},
};

/// The `query` target: `<query string>[\n<Accept>]` through parsing, planning and cursors.
fn query_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (raw, accept) = match text.split_once('\n') {
        Some((q, a)) => (q, Some(a)),
        None => (&*text, None),
    };
    if let Ok(q) = parse_interactions(Some(raw), Acceptable::parse(accept), 92) {
        assert!(q.range.from <= q.range.to, "{raw}");
        let _ = plan_windows(&q.range);
        let key = CursorKey::derive(b"fuzz secret");
        let binding = q.range.key("interactions", &[7; 32]).digest();
        if let Some(c) = &q.cursor {
            let _ = decode_cursor(c, &binding, &key);
        }
        let pos = Position::new(
            q.range.from.as_second(),
            raw,
            q.range.tz_name.as_str(),
            [0; 32],
        );
        assert_eq!(
            decode_cursor(&encode_cursor(&pos, &binding, &key), &binding, &key),
            Ok(pos)
        );
    }
}

/// Found by the `query` target: a `tz` of a sign and four bytes that are not all ASCII
/// (`+aéb`) was split at byte 2, inside `é`, and the slice panicked, so the request got an
/// empty reply instead of a 400 (`parse_fixed_offset` in src/api/query.rs).
#[test]
fn fixed_offset_with_multibyte_characters_is_a_400_not_a_panic() {
    for tz in [
        "%2Ba%C3%A9b",
        "-%E2%82%AC5",
        "%2B%C3%A905",
        "%2B%F0%9F%98%80",
        "%2BF%CC%BE0",
    ] {
        let raw = format!("from=2024-09-01&to=2024-09-01&tz={tz}");
        match parse_interactions(Some(&raw), Acceptable::default(), 92) {
            Err(kore_gateway::error::AppError::BadParam { param, .. }) => assert_eq!(param, "tz"),
            other => panic!("{raw}: {other:?}"),
        }
    }
    // The fuzzer's own inputs, as it found them.
    query_target(
        b"from=2024-09-01+10:15:07&to=2024-09-01T10:20:08&tz=%2Bt\xef\xbf\xbd&cursor=AA0AAAA8",
    );
    query_target(b"from=2099-12-31&to=209\x0e\x00\x00\x00-:1&tz=%2BF\xcc\xbe0 &limit=1=0");
}

/// Found by the `query` target: a query string of a few thousand characters, used as the
/// `sessionId` of a place, made a cursor longer than `decode_cursor` accepts, so the gateway
/// would refuse a cursor it issued (a vendor with very long ids would stop paging). Places
/// read ids up to `ORDER_ID_BYTES` now, and every issued cursor is accepted.
#[test]
fn a_place_with_a_very_long_id_round_trips() {
    let mut data = b"from=2024-09-01&to=2024-09-02&tz=UTC&cursor=".to_vec();
    data.extend(std::iter::repeat_n(0xffu8, 4000)); // each byte becomes U+FFFD, three bytes
    let text = String::from_utf8_lossy(&data);
    assert!(
        parse_interactions(Some(&text), Acceptable::default(), 92).is_ok(),
        "reaches the cursor step"
    );
    query_target(&data);
    data.truncate(44);
    data.extend("ü".repeat(3000).bytes());
    query_target(&data);
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn query_seed_corpus_replays() {
    let seeds = corpus("query");
    for (name, data) in &seeds {
        query_target(data);
        let _ = name;
    }
    // The seeds reach past parsing: at least one is a valid query.
    assert!(seeds.iter().any(|(_, d)| {
        let t = String::from_utf8_lossy(d);
        parse_interactions(
            Some(t.split('\n').next().unwrap_or("")),
            Acceptable::default(),
            92,
        )
        .is_ok()
    }));
}

#[test]
fn dropin_body_seed_corpus_replays() {
    let seeds = corpus("dropin_body");
    let accepted = seeds.iter().filter(|(_, d)| parse_body(d).is_ok()).count();
    assert!(
        accepted > 0 && accepted < seeds.len(),
        "{accepted} of {}",
        seeds.len()
    );
}

#[test]
fn cursor_seed_corpus_replays() {
    for (_, data) in corpus("cursor") {
        let cursor = String::from_utf8_lossy(data.get(41..).unwrap_or_default());
        let _ = decode_cursor(&cursor, &[0; 32], &CursorKey::derive(b"fuzz secret"));
    }
}

/// The `feed_ids` target's checks on one input (see fuzz/fuzz_targets/feed_ids.rs).
fn feed_ids_target(data: &[u8]) {
    use kore_gateway::feed::{
        id::{self, Resume},
        ticket::{Holder, TicketKey},
    };
    let mut binding = [0u8; 32];
    let n = data.len().min(32);
    binding[..n].copy_from_slice(&data[..n]);
    let rest = data.get(32..).unwrap_or_default();
    let len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
    let name = String::from_utf8_lossy(rest.get(1..1 + len).unwrap_or_default()).into_owned();
    let text = String::from_utf8_lossy(rest.get(1 + len..).unwrap_or_default()).into_owned();
    if let Resume::Live { epoch, seq } = id::parse(Some(&text)) {
        assert_eq!(
            id::parse(Some(&id::live(&epoch, seq))),
            Resume::Live { epoch, seq }
        );
    }
    let key = TicketKey::derive([b"fuzz secret".as_slice()]);
    let holder = Holder {
        caller: name,
        admin: binding[0] & 1 == 1,
    };
    let issued = key.issue(&holder, &binding, 1_800_000_300);
    assert_eq!(key.check(&issued, &binding, 1_800_000_000), Ok(holder));
}

/// Every committed `feed_ids` seed, the crash that found a ticket too long for a long key
/// name (`long-holder-name`: 765 bytes of name) included.
#[test]
fn feed_ids_seed_corpus_replays() {
    let seeds = corpus("feed_ids");
    assert!(
        seeds
            .iter()
            .any(|(path, _)| path.ends_with("/long-holder-name"))
    );
    for (_, data) in seeds {
        feed_ids_target(&data);
    }
}

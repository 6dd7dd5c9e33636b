//! Unit tests of query parsing.

use super::*;

fn q(s: &str) -> Result<InteractionsQuery, AppError> {
    parse_interactions(Some(s), Acceptable::default(), 92)
}

fn param_of(e: AppError) -> &'static str {
    match e {
        AppError::BadParam { param, .. } => param,
        other => panic!("not a parameter error: {other:?}"),
    }
}

#[test]
fn coarse_to_means_end_of_unit() {
    let r = q("from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata")
        .unwrap()
        .range;
    assert_eq!(r.local_rfc3339(r.from), "2024-09-01T00:00:00+05:30");
    assert_eq!(r.local_rfc3339(r.to), "2024-09-30T23:59:59+05:30");
    let r = q("from=2024-09-01T10:15&to=2024-09-01T10:20")
        .unwrap()
        .range;
    assert_eq!(r.local_rfc3339(r.from), "2024-09-01T10:15:00+00:00");
    assert_eq!(r.local_rfc3339(r.to), "2024-09-01T10:20:59+00:00");
    let r = q("from=2024-09-01 10:15:07&to=2024-09-01T10:20:08&tz=-04:00")
        .unwrap()
        .range;
    assert_eq!(r.local_rfc3339(r.to), "2024-09-01T10:20:08-04:00");
}

#[test]
fn defaults() {
    let x = q("from=2024-09-01&to=2024-09-02").unwrap();
    assert_eq!(x.range.tz_name, "UTC");
    assert_eq!(x.limit, DEFAULT_LIMIT);
    assert_eq!(x.format, Format::Json);
    assert_eq!(
        x.range.filters.fields,
        [
            "customerinfo",
            "sessionleveltags",
            "skills",
            "userleveltags"
        ]
    );
}

#[test]
fn lists_split_repeat_and_normalize() {
    let x = q("from=2024-09-01&to=2024-09-02&channels=voice,chat&channels=voice&queues=%20qu-1%20,&fields=skills").unwrap();
    assert_eq!(x.range.filters.channels, ["chat", "voice"]);
    assert_eq!(x.range.filters.queues, ["qu-1"]);
    assert_eq!(x.range.filters.fields, ["skills"]);
}

#[test]
fn malformed_requests_name_the_parameter() {
    let cases = [
        ("to=2024-09-02", "from"),
        ("from=2024-09-02", "to"),
        ("from=2024-09-03&to=2024-09-02", "from"),
        ("from=2024-02-30&to=2024-03-02", "from"),
        ("from=2024-9-1&to=2024-09-02", "from"),
        ("from=2024-09-01T25:00&to=2024-09-02", "from"),
        ("from=2024-09-01&to=2024-09-02T10", "to"),
        ("from=2024-09-01&to=2024-09-02T10:00:00Z", "to"),
        ("from=1900-01-01&to=1900-01-02", "from"),
        ("from=2024-01-01&to=2024-12-31", "to"),
        ("from=2024-09-01&to=2024-09-02&tz=Mars/Olympus", "tz"),
        ("from=2024-09-01&to=2024-09-02&tz=+15:00", "tz"),
        ("from=2024-09-01&to=2024-09-02&tz=../../etc/passwd", "tz"),
        (
            "from=2024-09-01&to=2024-09-02&fields=skills,bogus",
            "fields",
        ),
        ("from=2024-09-01&to=2024-09-02&fields=", "fields"),
        ("from=2024-09-01&to=2024-09-02&format=xml", "format"),
        ("from=2024-09-01&to=2024-09-02&limit=0", "limit"),
        ("from=2024-09-01&to=2024-09-02&limit=10001", "limit"),
        ("from=2024-09-01&to=2024-09-02&limit=ten", "limit"),
        ("from=2024-09-01&from=2024-09-01&to=2024-09-02", "from"),
        ("from=2024-09-01&to=2024-09-02&colour=red", "query"),
        ("from=2024-09-01&to=2024-09-02&channels=%01", "channels"),
        ("from=２０２４-09-01&to=2024-09-02", "from"),
    ];
    for (query, param) in cases {
        let err = q(query).expect_err(query);
        assert_eq!(param_of(err), param, "{query}");
    }
}

#[test]
fn fixed_offsets_and_accept() {
    for (s, secs) in [
        ("+05:30", 19_800),
        ("-04:00", -14_400),
        ("+0530", 19_800),
        ("-03", -10_800),
    ] {
        assert_eq!(parse_fixed_offset(s).unwrap().seconds(), secs, "{s}");
    }
    assert!(parse_tz("Z").is_ok());
    let format = |accept: &str| {
        parse_interactions(
            Some("from=2024-09-01&to=2024-09-01"),
            Acceptable::parse([accept]),
            92,
        )
        .map(|x| x.format)
    };
    assert_eq!(format("text/csv").unwrap(), Format::Csv);
    assert_eq!(format("application/x-ndjson").unwrap(), Format::Ndjson);
    assert_eq!(format("text/html,*/*;q=0.8").unwrap(), Format::Json);
    assert_eq!(format("text/csv;q=0, */*").unwrap(), Format::Json);
    assert!(matches!(
        format("text/csv;q=0"),
        Err(AppError::NotAcceptable { .. })
    ));
    assert!(matches!(
        format("text/html"),
        Err(AppError::NotAcceptable { .. })
    ));
    for (accept, want) in [("text/csv", Format::Ndjson), ("text/html", Format::Ndjson)] {
        let x = parse_interactions(
            Some("from=2024-09-01&to=2024-09-01&format=ndjson"),
            Acceptable::parse([accept]),
            92,
        )
        .unwrap();
        assert_eq!(
            x.format, want,
            "an explicit format wins over Accept: {accept}"
        );
    }
}

/// A quarter is 92 calendar days in every zone, whatever DST does in it; one more day is
/// refused, on the wall clock too.
#[test]
fn max_range_days_counts_calendar_days_in_the_zone() {
    for tz in [
        "UTC",
        "America/New_York",
        "Europe/London",
        "Australia/Sydney",
        "Asia/Kolkata",
        "-04:00",
    ] {
        for (from, to) in [
            ("2024-10-01", "2024-12-31"),
            ("2025-01-01", "2025-04-02"),
            ("2024-03-01", "2024-05-31"),
            ("2024-09-15T12:00", "2024-12-16T11:59:59"),
        ] {
            let query = format!("from={from}&to={to}&tz={tz}");
            assert!(q(&query).is_ok(), "{query}: 92 days");
        }
        for (from, to) in [
            ("2024-10-01", "2025-01-01"),
            ("2024-03-01", "2024-06-01"),
            ("2024-09-15T12:00", "2024-12-16T12:00"),
        ] {
            let query = format!("from={from}&to={to}&tz={tz}");
            assert_eq!(param_of(q(&query).expect_err(&query)), "to", "{query}");
        }
    }
    assert!(
        parse_interactions(
            Some("from=2024-01-01&to=2024-01-01"),
            Acceptable::default(),
            1,
        )
        .is_ok()
    );
    let two = parse_interactions(
        Some("from=2024-01-01&to=2024-01-02"),
        Acceptable::default(),
        1,
    );
    assert_eq!(param_of(two.unwrap_err()), "to");
}

#[test]
fn the_cache_buster_is_ignored_and_keys_nothing() {
    let plain = q("from=2024-09-01&to=2024-09-02").unwrap();
    for extra in ["_=1700000000000", "_=", "_", "_=a&_=b", "_=%00%FF"] {
        let busted = q(&format!("from=2024-09-01&{extra}&to=2024-09-02"))
            .unwrap_or_else(|e| panic!("{extra}: {e:?}"));
        assert_eq!(
            busted.range.key("interactions", &[0; 32]).digest(),
            plain.range.key("interactions", &[0; 32]).digest(),
            "{extra}"
        );
    }
    assert!(has_cache_buster("a=1&_=2"));
    assert!(has_cache_buster("_"));
    assert!(!has_cache_buster("a_=1&b=_"));
}

#[test]
fn record_filters_parse_and_key_but_stay_out_of_the_upstream_query() {
    let plain = q("from=2024-09-01&to=2024-09-02").unwrap().range;
    let f = q("from=2024-09-01&to=2024-09-02&agent=u-2,u-1&agent=u-1&direction=Inbound&finalStatus=CLOSED&smartStatus=RESOLVED&disposition=SALE")
        .unwrap()
        .range;
    assert_eq!(f.filters, plain.filters, "nothing of them goes upstream");
    assert_eq!(
        f.select.lists(),
        [
            &["u-1".to_owned(), "u-2".to_owned()][..],
            &["Inbound".to_owned()][..],
            &["CLOSED".to_owned()][..],
            &["RESOLVED".to_owned()][..],
            &["SALE".to_owned()][..],
        ]
    );
    let reordered = q("from=2024-09-01&to=2024-09-02&disposition=SALE&smartStatus=RESOLVED&finalStatus=CLOSED&direction=Inbound&agent=u-1,u-2")
        .unwrap()
        .range;
    assert_eq!(
        f.key("interactions", &[0; 32]).digest(),
        reordered.key("interactions", &[0; 32]).digest()
    );
    assert_ne!(
        f.key("interactions", &[0; 32]).digest(),
        plain.key("interactions", &[0; 32]).digest()
    );
    for param in RecordFilter::PARAMS {
        let e = q(&format!("from=2024-09-01&to=2024-09-02&{param}=%01")).unwrap_err();
        assert_eq!(param_of(e), param);
    }
    let e = q("from=2024-09-01&to=2024-09-02&finalstatus=CLOSED").unwrap_err();
    assert_eq!(param_of(e), "query", "names are exact");
}

#[test]
fn csv_escape_is_formula_or_none() {
    assert_eq!(q("from=2024-09-01&to=2024-09-02").unwrap().csv_escape, None);
    for (v, want) in [
        ("none", CsvEscape::None),
        ("formula", CsvEscape::Formula),
        ("NONE", CsvEscape::None),
    ] {
        let x = q(&format!(
            "from=2024-09-01&to=2024-09-02&format=csv&csv_escape={v}"
        ))
        .unwrap();
        assert_eq!(x.csv_escape, Some(want));
    }
    for bad in ["raw", "", "formula,none"] {
        let e = q(&format!("from=2024-09-01&to=2024-09-02&csv_escape={bad}")).unwrap_err();
        assert_eq!(param_of(e), "csv_escape", "{bad}");
    }
    assert_eq!(CsvEscape::resolve(None, true), CsvEscape::Formula);
    assert_eq!(CsvEscape::resolve(None, false), CsvEscape::None);
    assert_eq!(
        CsvEscape::resolve(Some(CsvEscape::Formula), false),
        CsvEscape::Formula
    );
}

#[test]
fn dst_gap_resolves_compatibly_and_a_fold_widens_the_range() {
    let ny = TimeZone::get("America/New_York").unwrap();
    let utc = |s: &str| s.parse::<Timestamp>().unwrap();
    for bound in [Bound::Start, Bound::End] {
        // 02:30 does not exist on 2024-03-10: the later side (03:30 EDT) for both ends.
        let gap = to_instant(parse_local("2024-03-10T02:30", bound).unwrap(), &ny, bound).unwrap();
        assert_eq!(ny.to_offset(gap).seconds(), -4 * 3600, "{bound:?}");
    }
    // 01:30 happens twice on 2024-11-03 (05:30Z in EDT, 06:30Z in EST): `from` is the
    // earlier, `to` the later, to the second (`HH:MM` means `HH:MM:59` as an end).
    let from = to_instant(
        parse_local("2024-11-03T01:30", Bound::Start).unwrap(),
        &ny,
        Bound::Start,
    )
    .unwrap();
    assert_eq!(from, utc("2024-11-03T05:30:00Z"));
    let to = to_instant(
        parse_local("2024-11-03T01:30", Bound::End).unwrap(),
        &ny,
        Bound::End,
    )
    .unwrap();
    assert_eq!(to, utc("2024-11-03T06:30:59Z"));
    // Through the whole parser: the range keeps the repeated hour.
    let r = q("from=2024-11-03T00:00&to=2024-11-03T01:30&tz=America/New_York")
        .unwrap()
        .range;
    assert_eq!(r.local_rfc3339(r.to), "2024-11-03T01:30:59-05:00");
    assert_eq!(
        r.to.as_second() - r.from.as_second(),
        2 * 3600 + 30 * 60 + 59
    );
}

#[test]
fn the_documented_fields_are_the_accepted_ones() {
    let documented = [
        SelectedField::Skills,
        SelectedField::Userleveltags,
        SelectedField::Sessionleveltags,
        SelectedField::Customerinfo,
    ]
    .map(|f| serde_json::to_value(f).unwrap());
    assert_eq!(documented, FIELDS.map(serde_json::Value::from));
}

/// Values drawn from separators a naive key would join with, so that different
/// filters often join to the same text.
fn lists() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::string::string_regex("[|=,:;&a\\\x00]{0,3}").expect("regex"),
        0..3,
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
    /// No record filter value, whatever its characters, makes two different queries
    /// share a response-cache key or a cursor binding (SPEC §6, 2026-12-01).
    #[test]
    fn distinct_record_filters_get_distinct_query_keys(
        a in (lists(), lists(), lists(), lists(), lists()),
        b in (lists(), lists(), lists(), lists(), lists()),
    ) {
        let fa = RecordFilter::new([a.0, a.1, a.2, a.3, a.4]);
        let fb = RecordFilter::new([b.0, b.1, b.2, b.3, b.4]);
        let upstream = Filters::default();
        let key = |select: &RecordFilter| crate::cache::QueryKey {
            route: "interactions",
            ns: &[0; 32],
            from: 0,
            to: 1,
            tz: "UTC",
            filters: &upstream,
            select: select.lists(),
        }
        .digest();
        proptest::prop_assert_eq!(key(&fa) == key(&fb), fa == fb);
    }
}

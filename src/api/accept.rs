//! Content negotiation of the data routes (pure): which of the formats a route offers the
//! request's `Accept` prefers, by RFC 9110 §12.5.1.
//!
//! Each offered format takes the quality of the *most specific* media range that matches
//! it (`text/csv;charset=utf-8` over `text/csv` over `text/*` over `*/*`); `q=0` makes it
//! unacceptable; the highest quality wins and a tie goes to the server's order (JSON, then
//! NDJSON, then CSV). A format no range matches is unacceptable, so when nothing a route
//! offers remains the answer is a 406 — but only when no `format` parameter was given: an
//! explicit `format` wins over the header.
//!
//! Leniencies, where the RFC leaves the server a choice: no `Accept` (or one holding no
//! well-formed media range at all) accepts everything; a media range with a malformed `q`
//! is ignored; media-type parameters other than `q` raise a range's precedence but do not
//! stop it matching (every offered type is UTF-8 text, and a client naming a `charset`
//! still wants the data). NDJSON answers to `application/x-ndjson` (the type it is sent
//! with), `application/ndjson` and `application/jsonl`.
//!
//! `Accept` is read on every data request, stored hits too: nothing here allocates.

use super::query::Format;

/// The media types that name each format (the first is the one an answer carries).
const NAMES: [(Format, &[&str]); 3] = [
    (Format::Json, &["application/json"]),
    (
        Format::Ndjson,
        &[
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ],
    ),
    (Format::Csv, &["text/csv"]),
];

/// Every format in the server's order of preference: what breaks a tie.
pub const SERVER_ORDER: [Format; 3] = [Format::Json, Format::Ndjson, Format::Csv];

/// How much a request's `Accept` wants each format: the RFC 9110 quality of each, in
/// thousandths (0: not acceptable). Small and `Copy`: computed once per request, then
/// asked per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Acceptable {
    /// Indexed like [`NAMES`].
    quality: [u16; 3],
}

impl Default for Acceptable {
    /// No `Accept`: everything is acceptable.
    fn default() -> Self {
        Acceptable { quality: [1000; 3] }
    }
}

/// How specific a matching media range is: `*/*` < `type/*` < `type/subtype` < the same
/// with parameters.
type Precedence = u8;

impl Acceptable {
    /// The qualities the values of every `Accept` field of a request give (a field may be
    /// repeated: the values are one list, RFC 9110 §5.3).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values = values.into_iter().peekable();
        // The values most clients send, answered without the full parse (this runs on every
        // data request, hits too): one field holding `*/*` (everything, as no header), a
        // list without q-values that holds `*/*`, or one bare media type of ours.
        if let Some(first) = values.next() {
            if values.peek().is_none() {
                let v = first.trim();
                if v == "*/*" {
                    return Acceptable::default();
                }
                // A list without parameters (no q-values) that holds `*/*`: everything at
                // q=1, whatever else it names — axios's `application/json, text/plain, */*`.
                if !v.contains(';') && v.split(',').any(|r| r.trim() == "*/*") {
                    return Acceptable::default();
                }
                if let Some(i) = NAMES
                    .iter()
                    .position(|(_, names)| names.iter().any(|n| v.eq_ignore_ascii_case(n)))
                {
                    let mut quality = [0; 3];
                    quality[i] = 1000;
                    return Acceptable { quality };
                }
            }
            return Self::parse_ranges(std::iter::once(first).chain(values));
        }
        Acceptable::default()
    }

    /// [`Acceptable::parse`] range by range.
    fn parse_ranges<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        // Per format: the precedence and quality of the most specific range seen so far.
        let mut best: [Option<(Precedence, u16)>; 3] = [None; 3];
        let mut any_range = false;
        for value in values {
            for range in value.split(',') {
                let Some((media, precedence, quality)) = media_range(range) else {
                    continue;
                };
                any_range = true;
                for (i, (_, names)) in NAMES.iter().enumerate() {
                    if !names.iter().any(|name| matches(media, name)) {
                        continue;
                    }
                    best[i] = match best[i] {
                        // A more specific range decides; an equally specific one (an alias,
                        // or a repeat) can only raise the quality.
                        Some((p, q)) if p > precedence => Some((p, q)),
                        Some((p, q)) if p == precedence => Some((p, q.max(quality))),
                        _ => Some((precedence, quality)),
                    };
                }
            }
        }
        if !any_range {
            return Acceptable::default();
        }
        Acceptable {
            quality: best.map(|b| b.map_or(0, |(_, q)| q)),
        }
    }

    /// The format of `offered` (in the server's order) the request prefers, or `None` when
    /// none is acceptable (a 406, unless `format` was given).
    pub fn choose(self, offered: &[Format]) -> Option<Format> {
        let mut chosen: Option<(Format, u16)> = None;
        for &f in offered {
            let q = self.quality(f);
            // Strictly greater: a tie keeps the earlier, the server's preference.
            if q > 0 && chosen.is_none_or(|(_, best)| q > best) {
                chosen = Some((f, q));
            }
        }
        chosen.map(|(f, _)| f)
    }

    /// The quality of `format`, in thousandths.
    pub fn quality(self, format: Format) -> u16 {
        NAMES
            .iter()
            .position(|(f, _)| *f == format)
            .map_or(0, |i| self.quality[i])
    }
}

/// The media types `offered` are sent as, for a 406's detail.
pub fn offered_types(offered: &[Format]) -> &'static str {
    match offered {
        [Format::Json, Format::Csv] => "application/json, text/csv",
        _ => "application/json, application/x-ndjson, text/csv",
    }
}

/// One media range of `Accept`: its `type/subtype` (trimmed), its precedence and its
/// quality; `None` for a malformed one (no `/`, or a `q` that is not a qvalue).
fn media_range(text: &str) -> Option<(&str, Precedence, u16)> {
    let mut parts = text.split(';');
    let media = parts.next()?.trim();
    let (kind, sub) = media.split_once('/')?;
    let (kind, sub) = (kind.trim(), sub.trim());
    if kind.is_empty() || sub.is_empty() || (kind == "*" && sub != "*") {
        return None;
    }
    let mut precedence = match (kind, sub) {
        ("*", "*") => 0,
        (_, "*") => 1,
        _ => 2,
    };
    let mut quality = 1000;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("q") {
            quality = qvalue(value.trim())?;
            // What follows `q` are accept extensions, not media-type parameters.
            break;
        }
        if precedence == 2 && !name.trim().is_empty() {
            precedence = 3;
        }
    }
    Some((media, precedence, quality))
}

/// RFC 9110 `qvalue` (`0`, `0.5`, `1.000`) in thousandths; digits past the third decimal
/// are tolerated and cut. `None` when it is not one.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().take(3).enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    if whole == 1000 && thousandths > 0 {
        return None;
    }
    Some(whole + thousandths)
}

/// Whether the media range `range` (`*/*`, `type/*` or `type/subtype`) covers `name`.
fn matches(range: &str, name: &str) -> bool {
    let (Some((rk, rs)), Some((nk, ns))) = (range.split_once('/'), name.split_once('/')) else {
        return false;
    };
    let (rk, rs) = (rk.trim(), rs.trim());
    (rk == "*" || rk.eq_ignore_ascii_case(nk)) && (rs == "*" || rs.eq_ignore_ascii_case(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Format; 3] = SERVER_ORDER;
    const SUMMARY: [Format; 2] = [Format::Json, Format::Csv];

    fn pick(accept: &str) -> Option<Format> {
        Acceptable::parse([accept]).choose(&ALL)
    }

    #[test]
    fn rfc_9110_examples_and_the_issues_cases() {
        let cases: &[(&str, Option<Format>)] = &[
            // The two the issue reported: CSV refused, and with nothing else listed nothing
            // is acceptable; JSON refused, CSV accepted.
            ("text/csv;q=0", None),
            ("text/csv;q=0, */*", Some(Format::Json)),
            ("application/json;q=0, text/csv", Some(Format::Csv)),
            // Plain choices.
            ("text/csv", Some(Format::Csv)),
            ("application/x-ndjson", Some(Format::Ndjson)),
            ("application/jsonl", Some(Format::Ndjson)),
            ("APPLICATION/JSON", Some(Format::Json)),
            // Highest quality wins, in any order.
            ("application/json;q=0.5, text/csv;q=0.9", Some(Format::Csv)),
            ("text/csv;q=0.9, application/x-ndjson", Some(Format::Ndjson)),
            // Ties go to the server's order: JSON, then NDJSON, then CSV.
            ("text/csv, application/json", Some(Format::Json)),
            ("text/csv, application/x-ndjson", Some(Format::Ndjson)),
            ("*/*", Some(Format::Json)),
            ("application/*", Some(Format::Json)),
            // Specificity: the most specific range decides, whatever its quality.
            ("*/*;q=0.1, text/csv", Some(Format::Csv)),
            ("text/*;q=0, text/csv", Some(Format::Csv)),
            ("text/csv;q=0, text/*", None),
            ("application/json;q=0, */*", Some(Format::Ndjson)),
            (
                "application/json;q=0, application/x-ndjson;q=0, */*",
                Some(Format::Csv),
            ),
            (
                "text/csv;charset=utf-8;q=0.2, text/csv;q=0, application/json;q=0.1",
                Some(Format::Csv),
            ),
            // A browser's navigation, jQuery's getJSON.
            (
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                Some(Format::Json),
            ),
            (
                "application/json, text/javascript, */*; q=0.01",
                Some(Format::Json),
            ),
            // Nothing acceptable remains.
            ("text/html", None),
            (
                "application/json;q=0, application/x-ndjson;q=0, text/csv;q=0",
                None,
            ),
            ("*/*;q=0", None),
            ("text/html;q=0.5, application/json;q=0", None),
            ("text/*;q=0.5, application/json;q=0", Some(Format::Csv)),
            ("application/problem+json", None),
            // Lenient: no well-formed range at all is no preference; a bad q drops its range.
            ("", Some(Format::Json)),
            ("garbage", Some(Format::Json)),
            ("text/csv;q=2, application/x-ndjson", Some(Format::Ndjson)),
            ("text/csv;q=abc", Some(Format::Json)),
            (
                "text/csv;q=0.9999, application/json;q=0.999",
                Some(Format::Json),
            ),
            ("text/csv;q=1.000", Some(Format::Csv)),
            ("text/csv;q=0.001", Some(Format::Csv)),
            ("*/csv", Some(Format::Json)),
        ];
        for (accept, want) in cases {
            assert_eq!(pick(accept), *want, "Accept: {accept}");
        }
    }

    #[test]
    fn a_route_chooses_among_what_it_offers() {
        let nd = Acceptable::parse(["application/x-ndjson"]);
        assert_eq!(nd.choose(&ALL), Some(Format::Ndjson));
        assert_eq!(nd.choose(&SUMMARY), None, "the summary has no NDJSON");
        let pref = Acceptable::parse(["application/x-ndjson, text/csv;q=0.5"]);
        assert_eq!(pref.choose(&SUMMARY), Some(Format::Csv));
    }

    #[test]
    fn repeated_fields_are_one_list_and_no_header_accepts_all() {
        let a = Acceptable::parse(["application/json;q=0", "text/csv"]);
        assert_eq!(a.choose(&ALL), Some(Format::Csv));
        assert_eq!(Acceptable::parse([]).choose(&ALL), Some(Format::Json));
        assert_eq!(Acceptable::parse([]), Acceptable::default());
        assert_eq!(
            Acceptable::parse(["text/csv;q=0.5"]).quality(Format::Csv),
            500
        );
    }

    #[test]
    fn qvalues_follow_the_grammar() {
        for (text, want) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("0.25", Some(250)),
            ("0.125", Some(125)),
            ("1.0", Some(1000)),
            ("0.", Some(0)),
            ("1.5", None),
            ("2", None),
            (".5", None),
            ("-0", None),
            ("0.x", None),
            ("", None),
        ] {
            assert_eq!(qvalue(text), want, "{text:?}");
        }
    }

    /// The fast path for the common values gives what the full parse gives.
    #[test]
    fn the_common_values_parse_as_the_full_parse_does() {
        for v in [
            "*/*",
            " */* ",
            "application/json",
            "Application/JSON",
            "text/csv",
            "application/x-ndjson",
            "application/jsonl",
            "",
            "text/html",
            "application/json, text/plain, */*",
            "text/plain,*/*",
            "text/csv, */*",
            "text/csv, */*;q=0.1",
            "text/*/*, text/csv",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ] {
            assert_eq!(
                Acceptable::parse([v]),
                Acceptable::parse_ranges(std::iter::once(v)),
                "{v:?}"
            );
        }
        assert_eq!(Acceptable::parse([]), Acceptable::default());
    }
}

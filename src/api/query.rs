//! Parsing and validating the `GET /v1/interactions` query (pure): dates local to a time
//! zone, lists that may be comma-separated or repeated, record filters, paging, format and
//! CSV escaping. Every problem is a 400 that names the parameter (a 406 when `Accept` leaves
//! no format and none was named); nothing here can panic on input. jQuery's cache-buster
//! `_` is accepted on every route that reads its query here, and ignored.

use jiff::{
    Timestamp,
    civil::{Date, DateTime, Time},
    tz::{Offset, TimeZone},
};

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::accept::{Acceptable, SERVER_ORDER, offered_types};
use crate::{error::AppError, summary::RecordFilter, upstream::Filters};

/// The optional blocks the vendor returns only when asked (`selectedFields`).
pub const FIELDS: [&str; 4] = [
    "skills",
    "userleveltags",
    "sessionleveltags",
    "customerinfo",
];

/// One of the optional blocks the vendor returns only when asked (`selectedFields`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SelectedField {
    Skills,
    Userleveltags,
    Sessionleveltags,
    Customerinfo,
}

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;
const MAX_LIST_ITEMS: usize = 100;
const MAX_ITEM_LEN: usize = 200;

/// Response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// How the text cells of a CSV answer are written (`csv_escape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsvEscape {
    /// Cells a spreadsheet would run as a formula are defused
    /// ([`crate::render::defuse_formula`]).
    Formula,
    /// Every cell exactly as the record holds it, for pipelines that are not spreadsheets.
    None,
}

impl CsvEscape {
    pub fn as_str(self) -> &'static str {
        match self {
            CsvEscape::Formula => "formula",
            CsvEscape::None => "none",
        }
    }

    /// The escaping asked for, or the gateway's default (CSV_FORMULA_ESCAPE) when none was.
    pub fn resolve(asked: Option<CsvEscape>, formula_by_default: bool) -> CsvEscape {
        asked.unwrap_or(if formula_by_default {
            CsvEscape::Formula
        } else {
            CsvEscape::None
        })
    }

    /// Whether formula-looking cells are defused.
    pub fn formula(self) -> bool {
        self == CsvEscape::Formula
    }
}

/// `csv_escape`: `formula` or `none`, `None` when not given.
///
/// # Errors
/// 400 naming `csv_escape` for any other value.
pub fn parse_csv_escape(p: &Params) -> Result<Option<CsvEscape>, AppError> {
    match p.one("csv_escape")?.map(str::trim) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("formula") => Ok(Some(CsvEscape::Formula)),
        Some(v) if v.eq_ignore_ascii_case("none") => Ok(Some(CsvEscape::None)),
        Some(_) => Err(AppError::param(
            "csv_escape",
            "`csv_escape` must be formula (the default) or none",
        )),
    }
}

/// The common range part of the data routes.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub tz: TimeZone,
    /// As given (`Asia/Kolkata`, `+05:30`, `UTC`).
    pub tz_name: String,
    /// What the upstream is asked for (and the window cache keyed by).
    pub filters: Filters,
    /// What is kept of the merged records (never sent upstream).
    pub select: RecordFilter,
    /// The accounts named by `account` (empty: the default one), as written; which exist and
    /// who may read them is the account registry's to say.
    pub accounts: Vec<String>,
}

impl RangeQuery {
    /// RFC 3339 text of `ts` at the offset in force there.
    pub fn local_rfc3339(&self, ts: Timestamp) -> String {
        ts.display_with_offset(self.tz.to_offset(ts)).to_string()
    }

    /// The typed key of everything that selects this query's records (not paging or
    /// format) on the account(s) whose namespace digest is `ns`.
    pub fn key<'a>(&'a self, route: &'static str, ns: &'a [u8; 32]) -> crate::cache::QueryKey<'a> {
        crate::cache::QueryKey {
            route,
            ns,
            from: self.from.as_second(),
            to: self.to.as_second(),
            tz: &self.tz_name,
            filters: &self.filters,
            select: self.select.lists(),
        }
    }
}

/// A parsed `GET /v1/interactions`.
#[derive(Debug, Clone)]
pub struct InteractionsQuery {
    pub range: RangeQuery,
    pub limit: usize,
    pub cursor: Option<String>,
    pub format: Format,
    /// `csv_escape` as given (the default is the gateway's: [`CsvEscape::resolve`]).
    pub csv_escape: Option<CsvEscape>,
}

/// The range and filter parameters of every data operation (`/v1/interactions` in each
/// representation and the summary), as the OpenAPI document describes them; the query is
/// read by [`parse_range`], which holds the rules.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeParams {
    /// Start, local to `tz`: `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]`.
    #[param(example = "2024-09-26")]
    from: String,
    /// End, inclusive, local to `tz`; a coarser value means the end of its unit (a date alone is 23:59:59, `HH:MM` is `HH:MM:59`).
    #[param(example = "2024-09-26")]
    to: String,
    /// IANA time zone (`Asia/Kolkata`) or fixed offset (`+05:30`, `-04:00`, `Z`). Default
    /// `UTC`. A summary's `day` and `hour` buckets are in it.
    #[param(example = "Asia/Kolkata")]
    tz: Option<String>,
    /// Channels, comma-separated (the parameter may also repeat).
    channels: Option<String>,
    /// Queue ids, comma-separated.
    queues: Option<String>,
    /// Bot ids, comma-separated.
    bots: Option<String>,
    /// Subset of `skills,userleveltags,sessionleveltags,customerinfo`, comma-separated (the
    /// parameter may also repeat). Default: all four (a summary's `direction` falls back to
    /// `customerinfo.Direction`).
    #[param(style = Form, explode = false, min_items = 1, inline)]
    fields: Option<Vec<SelectedField>>,
    // The record filters carry no example: Swagger UI's "Try it out" fills examples in,
    // and an example value would filter the demo's records away.
    /// Only records with a segment answered by one of these agents: agent ids
    /// (`respondingAgent.agentId`, exact) or e-mails (`respondingAgent.email`, any ASCII
    /// case), comma-separated (the parameter may also repeat). Like the other record
    /// filters it is applied by the gateway to the cached records: it costs no upstream call.
    agent: Option<String>,
    /// Only records of these directions (`Direction`, else `customerinfo.Direction`, as the
    /// summary groups them), comma-separated, exact.
    direction: Option<String>,
    /// Only records of these `finalStatus` values, comma-separated, exact.
    #[param(rename = "finalStatus")]
    final_status: Option<String>,
    /// Only records of these `smartStatus` values, comma-separated, exact.
    #[param(rename = "smartStatus")]
    smart_status: Option<String>,
    /// Only records with one of these codes among their `dispositions`, comma-separated, exact.
    disposition: Option<String>,
}

/// The `account` of the `/v1/interactions` operations, as the OpenAPI document describes it
/// (the summary takes several: its own `account` in `SummaryParams`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AccountParam {
    /// The vendor account to read (a name of the gateway's accounts, `[a-z0-9-]{1,32}`);
    /// default: the gateway's default account.
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    account: Option<String>,
}

/// Paging of `GET /v1/interactions` as JSON, as the OpenAPI document describes it (read by
/// [`parse_interactions`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Records in this response (JSON), 1..10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// `meta.next_cursor` of the previous page. The next page starts right after the last
    /// record of that page, so records that appear or vanish meanwhile never make a page
    /// skip or repeat one. Signed and bound to the query: a cursor of another query is a 400.
    cursor: Option<String>,
}

/// The representation of a JSON operation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    Json,
}

/// `format` of the JSON operations, as the OpenAPI document describes it.
///
/// One operation per representation: a generated client parses an operation's answer by
/// the media types its document lists, so an operation that could answer JSON, NDJSON or
/// CSV gets every answer parsed as JSON (openapi-python-client does). NDJSON and CSV are
/// therefore operations of their own (`/v1/interactions.ndjson`, `/v1/interactions.csv`,
/// `/v1/interactions/summary.csv`), and the JSON operations document `format=json` only;
/// the server still takes `format=ndjson|csv` and `Accept` on them (SPEC §3).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct JsonFormatParam {
    /// `json` (the default). The other representations are operations of their own —
    /// `/v1/interactions.ndjson`, `/v1/interactions.csv`, `/v1/interactions/summary.csv` — so
    /// a generated client parses each answer right; `format=ndjson|csv` and `Accept` still
    /// select them here for scripts that use them.
    #[param(inline)]
    format: Option<JsonFormat>,
}

/// `Prefer: respond-async` on the data operations, as the OpenAPI document describes it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct PreferParam {
    /// `respond-async` (RFC 7240): a range not already cached answers 202 at once with a job
    /// to poll, instead of holding the connection while the budget serves it; a cached range
    /// answers 200 as usual.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
}

/// `csv_escape` of the CSV operations, as the OpenAPI document describes it (read by
/// [`parse_csv_escape`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CsvEscapeParam {
    /// `formula` (default, unless the gateway runs with CSV_FORMULA_ESCAPE=false) writes a
    /// text cell a spreadsheet would run as a formula with a leading `'` (a leading `=`,
    /// `@`, tab or CR; `+` or `-` unless a plain number follows, so `+13413813633` stays as
    /// it is); `none` writes every cell as the record holds it.
    #[param(pattern = "^(formula|none)$")]
    csv_escape: Option<String>,
}

/// Raw `(name, value)` pairs of a query string.
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Collects parameters, refusing unknown names and repeats of single-valued ones.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// jQuery's cache-buster `_` (`_=1700000000000`) is dropped here, whatever its value:
    /// it never fails a request and never reaches a key.
    ///
    /// # Errors
    /// A parameter not in `allowed`.
    pub fn new(
        mut pairs: Vec<(String, String)>,
        allowed: &[&'static str],
    ) -> Result<Self, AppError> {
        pairs.retain(|(k, _)| k != CACHE_BUSTER);
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            let shown: String = k.chars().take(40).collect();
            return Err(AppError::BadParam {
                param: "query",
                detail: format!(
                    "unknown parameter `{shown}`; allowed: {}",
                    allowed.join(", ")
                ),
            });
        }
        Ok(Params { pairs })
    }

    /// A single-valued parameter.
    ///
    /// # Errors
    /// Given more than once.
    pub fn one(&self, name: &'static str) -> Result<Option<&str>, AppError> {
        let mut it = self.pairs.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(AppError::param(
                name,
                format!("`{name}` given more than once"),
            ));
        }
        Ok(first)
    }

    /// A list parameter: comma-separated and/or repeated; blanks dropped.
    ///
    /// # Errors
    /// Too many items, an item too long or holding control characters.
    pub fn list(&self, name: &'static str) -> Result<Vec<String>, AppError> {
        let mut out = Vec::new();
        for (_, v) in self.pairs.iter().filter(|(k, _)| k == name) {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if item.len() > MAX_ITEM_LEN || item.chars().any(char::is_control) {
                    return Err(AppError::param(
                        name,
                        format!("an item of `{name}` is too long or holds control characters"),
                    ));
                }
                out.push(item.to_owned());
            }
        }
        if out.len() > MAX_LIST_ITEMS {
            return Err(AppError::param(
                name,
                format!("`{name}` holds more than {MAX_LIST_ITEMS} items"),
            ));
        }
        Ok(out)
    }
}

/// Parameters shared by every data route.
pub const RANGE_PARAMS: [&str; 13] = [
    "from",
    "to",
    "tz",
    "channels",
    "queues",
    "bots",
    "fields",
    "account",
    RecordFilter::PARAMS[0],
    RecordFilter::PARAMS[1],
    RecordFilter::PARAMS[2],
    RecordFilter::PARAMS[3],
    RecordFilter::PARAMS[4],
];

/// jQuery's cache-buster parameter (`$.ajax({cache: false})`), ignored.
pub const CACHE_BUSTER: &str = "_";

/// Whether a raw query string carries the cache-buster `_` (then it is unique per request,
/// and not worth remembering).
fn has_cache_buster(raw: &str) -> bool {
    raw.split('&')
        .any(|pair| pair == CACHE_BUSTER || pair.starts_with("_="))
}

/// Parses the range, time zone and filters.
///
/// The range's length is counted in calendar days of `tz` — on its wall clock, so a DST
/// change neither adds nor removes an hour: a quarter is 92 days in every zone.
///
/// # Errors
/// 400 for anything missing, malformed, inverted or longer than `max_range_days`.
pub fn parse_range(p: &Params, max_range_days: u32) -> Result<RangeQuery, AppError> {
    let (tz, tz_name) = parse_zone(p)?;
    let from_text = p.one("from")?.ok_or_else(|| {
        AppError::param(
            "from",
            "`from` is required (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])",
        )
    })?;
    let to_text = p.one("to")?.ok_or_else(|| {
        AppError::param(
            "to",
            "`to` is required (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])",
        )
    })?;
    let from_local =
        parse_local(from_text, Bound::Start).map_err(|d| AppError::param("from", d))?;
    let to_local = parse_local(to_text, Bound::End).map_err(|d| AppError::param("to", d))?;
    let from = to_instant(from_local, &tz, Bound::Start).map_err(|d| AppError::param("from", d))?;
    let to = to_instant(to_local, &tz, Bound::End).map_err(|d| AppError::param("to", d))?;
    if from > to {
        return Err(AppError::param("from", "`from` is after `to`"));
    }
    if calendar_seconds(from_local, to_local) > i64::from(max_range_days) * 86_400 {
        return Err(AppError::param(
            "to",
            format!(
                "the range is longer than the {max_range_days} days one request may ask for (calendar days in `tz`)"
            ),
        ));
    }
    let filters = parse_filters(p)?;
    let select = RecordFilter::new([
        p.list(RecordFilter::PARAMS[0])?,
        p.list(RecordFilter::PARAMS[1])?,
        p.list(RecordFilter::PARAMS[2])?,
        p.list(RecordFilter::PARAMS[3])?,
        p.list(RecordFilter::PARAMS[4])?,
    ]);
    let accounts = parse_accounts(p)?;
    Ok(RangeQuery {
        from,
        to,
        tz,
        tz_name,
        filters,
        select,
        accounts,
    })
}

/// `tz` (default `UTC`), and its name as given.
///
/// # Errors
/// 400 for an unknown zone or a repeated `tz`.
pub fn parse_zone(p: &Params) -> Result<(TimeZone, String), AppError> {
    let tz_name = p
        .one("tz")?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("UTC")
        .to_owned();
    Ok((parse_tz(&tz_name)?, tz_name))
}

/// `channels`, `queues`, `bots` and `fields` (default: all four), normalized.
///
/// # Errors
/// 400 for an unknown field, an empty `fields`, or a list too long.
pub fn parse_filters(p: &Params) -> Result<Filters, AppError> {
    let fields = p.list("fields")?;
    if let Some(bad) = fields.iter().find(|f| !FIELDS.contains(&f.as_str())) {
        let shown: String = bad.chars().take(40).collect();
        return Err(AppError::param(
            "fields",
            format!("unknown field `{shown}`; allowed: {}", FIELDS.join(", ")),
        ));
    }
    if p.one("fields").is_ok_and(|v| v.is_some()) && fields.is_empty() {
        return Err(AppError::param(
            "fields",
            "`fields` is empty; leave it out for all four",
        ));
    }
    let fields = if fields.is_empty() {
        FIELDS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        fields
    };
    Ok(Filters {
        channels: p.list("channels")?,
        queues: p.list("queues")?,
        bots: p.list("bots")?,
        fields,
    }
    .normalized())
}

/// `account` (names checked for their form; whether they exist is the accounts' business).
///
/// # Errors
/// 400 for a value that is not an account name.
pub fn parse_accounts(p: &Params) -> Result<Vec<String>, AppError> {
    let accounts = p.list("account")?;
    if accounts.is_empty() && p.one("account").is_ok_and(|v| v.is_some()) {
        return Err(AppError::param(
            "account",
            "`account` is empty; leave it out for the default account",
        ));
    }
    if let Some(bad) = accounts
        .iter()
        .find(|a| !crate::config::valid_account_name(a))
    {
        let shown: String = bad.chars().take(40).collect();
        return Err(AppError::param(
            "account",
            format!(
                "`{shown}` is not an account name ({})",
                crate::config::ACCOUNT_NAME_RULE
            ),
        ));
    }
    Ok(accounts)
}

/// An instant: `YYYY-MM-DD[THH:MM[:SS]]` local to `tz` (as `from` reads it), or RFC 3339
/// with its own offset.
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_instant(text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let t = text.trim();
    if t.len() > 19 {
        return t.parse::<Timestamp>().map_err(|_| {
            format!(
                "`{}` is not YYYY-MM-DDTHH:MM[:SS] (local to `tz`) or RFC 3339",
                t.chars().take(40).collect::<String>()
            )
        });
    }
    let local = parse_local(t, Bound::Start)?;
    to_instant(local, tz, Bound::Start)
}

/// Seconds from `from` to `to` inclusive, read on the wall clock (civil time): the span a
/// calendar shows, whatever DST did in between.
fn calendar_seconds(from: DateTime, to: DateTime) -> i64 {
    from.duration_until(to).as_secs() + 1
}

/// The formats `/v1/interactions` offers, in the server's order.
pub const INTERACTIONS_FORMATS: [Format; 3] = SERVER_ORDER;

/// The format `Accept` leaves a route offering `offered`, when no `format` was given.
///
/// # Errors
/// 406 when `Accept` accepts none of them.
pub fn negotiated(accept: Acceptable, offered: &[Format]) -> Result<Format, AppError> {
    accept.choose(offered).ok_or(AppError::NotAcceptable {
        offered: offered_types(offered),
    })
}

/// Parses the whole `GET /v1/interactions` query; `accept` is what the request's `Accept`
/// accepts.
///
/// # Errors
/// 400 naming the parameter at fault; 406 when there is no `format` and `Accept` accepts
/// none of the formats.
pub fn parse_interactions(
    raw: Option<&str>,
    accept: Acceptable,
    max_range_days: u32,
) -> Result<InteractionsQuery, AppError> {
    let mut allowed: Vec<&'static str> = RANGE_PARAMS.to_vec();
    allowed.extend(["limit", "cursor", "format", "csv_escape"]);
    let p = Params::new(pairs(raw), &allowed)?;
    let range = parse_range(&p, max_range_days)?;
    let limit = match p.one("limit")? {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AppError::param(
                    "limit",
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let cursor = p
        .one("cursor")?
        .map(str::to_owned)
        .filter(|c| !c.is_empty());
    let format = match p.one("format")? {
        Some(f) => match f.trim().to_ascii_lowercase().as_str() {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            _ => {
                return Err(AppError::param(
                    "format",
                    "`format` must be json, ndjson or csv",
                ));
            }
        },
        None => negotiated(accept, &INTERACTIONS_FORMATS)?,
    };
    let csv_escape = parse_csv_escape(&p)?;
    Ok(InteractionsQuery {
        range,
        limit,
        cursor,
        format,
        csv_escape,
    })
}

/// Response-cache keys of query strings that parsed, per route and per format `Accept`
/// chose for it (`None`: none, so the query must name one), so that a repeat finds its stored answer without parsing and hashing the query
/// again: the key is a pure function of these. Bounded: it forgets everything when full (a
/// forgotten query is parsed again, nothing else).
#[derive(Debug, Default)]
pub struct KeyMemo {
    map: RwLock<HashMap<String, Vec<Remembered>>>,
}

/// One remembered parse: route, the format `Accept` chose for it (`None`: none), the key,
/// the format answered, and the accounts it reads (a stored hit is served only to a key
/// that may read them all).
type Remembered = (&'static str, Option<Format>, Arc<str>, Format, Accounts);

/// Indexes of the accounts a query reads (see `Account::index`).
pub type Accounts = Arc<[usize]>;

impl KeyMemo {
    /// Query strings remembered at most.
    const MAX_ENTRIES: usize = 4096;
    /// Longest query string remembered.
    const MAX_QUERY_LEN: usize = 512;

    /// The response-cache key, the format and the accounts that `raw` on `route`, with an
    /// `Accept` that chose `accept`, parsed to.
    pub fn get(
        &self,
        route: &str,
        raw: Option<&str>,
        accept: Option<Format>,
    ) -> Option<(Arc<str>, Format, Accounts)> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(raw.unwrap_or(""))?
            .iter()
            .find(|(r, a, ..)| *r == route && *a == accept)
            .map(|(_, _, key, format, accounts)| (Arc::clone(key), *format, Arc::clone(accounts)))
    }

    /// Remembers what [`KeyMemo::get`] answers, once `raw` parsed. A query with the
    /// cache-buster `_` is not remembered: it is never asked again, and a stream of them
    /// would only push out the queries that are.
    pub fn remember(
        &self,
        route: &'static str,
        raw: Option<&str>,
        accept: Option<Format>,
        key: &str,
        format: Format,
        accounts: Accounts,
    ) {
        let raw = raw.unwrap_or("");
        if raw.len() > Self::MAX_QUERY_LEN
            || has_cache_buster(raw)
            || self.get(route, Some(raw), accept).is_some()
        {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= Self::MAX_ENTRIES {
            map.clear();
        }
        let entry = map.entry(raw.to_owned()).or_default();
        if !entry.iter().any(|(r, a, ..)| *r == route && *a == accept) {
            entry.push((route, accept, key.into(), format, accounts));
        }
    }
}

/// IANA name, fixed offset (`+05:30`, `-04:00`, `+0530`, `Z`) or `UTC`.
///
/// # Errors
/// 400 for an unknown zone.
pub fn parse_tz(name: &str) -> Result<TimeZone, AppError> {
    if name.eq_ignore_ascii_case("Z") || name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    if name.starts_with(['+', '-']) {
        return parse_fixed_offset(name)
            .map(TimeZone::fixed)
            .ok_or_else(|| {
                AppError::param(
                    "tz",
                    "a fixed offset looks like +05:30 or -04:00 (at most ±14:00)",
                )
            });
    }
    if name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
    {
        return Err(AppError::param(
            "tz",
            "`tz` must be an IANA name like Asia/Kolkata or an offset like +05:30",
        ));
    }
    TimeZone::get(name).map_err(|_| {
        let shown: String = name.chars().take(64).collect();
        AppError::param("tz", format!("unknown time zone `{shown}`"))
    })
}

fn parse_fixed_offset(s: &str) -> Option<Offset> {
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let body = &s[1..];
    // Byte positions below assume ASCII; anything else is not an offset (and slicing
    // inside a multi-byte character would panic).
    if !body.is_ascii() {
        return None;
    }
    let (h, m) = match (body.len(), body.split_once(':')) {
        (_, Some((h, m))) => (h, m),
        (4, None) => body.split_at(2),
        (2, None) => (body, "00"),
        _ => return None,
    };
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h * 60 + m > 14 * 60 {
        return None;
    }
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

/// Which end of the range a value is: a coarse `to` means the end of its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Start,
    End,
}

/// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (a space may stand for `T`).
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_local(text: &str, bound: Bound) -> Result<DateTime, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{}` is not YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]",
            t.chars().take(40).collect::<String>()
        )
    };
    if !t.is_ascii() {
        return Err(bad());
    }
    let (date, time) = match t.len() {
        10 => (t, None),
        16 | 19 if matches!(t.as_bytes()[10], b'T' | b' ') => (&t[..10], Some(&t[11..])),
        _ => return Err(bad()),
    };
    let db = date.as_bytes();
    if db[4] != b'-' || db[7] != b'-' {
        return Err(bad());
    }
    let num = |s: &str| -> Result<i32, String> {
        if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<i32>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d) = (num(&date[..4])?, num(&date[5..7])?, num(&date[8..10])?);
    if !(1971..=2099).contains(&y) {
        return Err(format!("year {y} is outside 1971..2099"));
    }
    let date = Date::new(y as i16, mo as i8, d as i8)
        .map_err(|_| format!("{} is not a calendar date", &t[..10]))?;
    let time = match time {
        None => match bound {
            Bound::Start => Time::midnight(),
            Bound::End => Time::constant(23, 59, 59, 0),
        },
        Some(tm) => {
            let tb = tm.as_bytes();
            if tb[2] != b':' || (tm.len() == 8 && tb[5] != b':') {
                return Err(bad());
            }
            let (h, mi) = (num(&tm[..2])?, num(&tm[3..5])?);
            let s = if tm.len() == 8 {
                num(&tm[6..8])?
            } else if bound == Bound::End {
                59
            } else {
                0
            };
            Time::new(h as i8, mi as i8, s as i8, 0)
                .map_err(|_| format!("{tm} is not a time of day"))?
        }
    };
    Ok(date.to_datetime(time))
}

/// The instant of a local time. In a DST gap (a time that does not exist) both ends take
/// the later side (jiff's "compatible" rule, the one RFC 5545 and JavaScript use). In a
/// repeated hour (a fall-back fold) the range is as wide as the text allows: `from` takes
/// the earlier instant and `to` the later one, so `to=01:30` on a fall-back night keeps
/// the repeated hour's records up to its second 01:30 instead of dropping them.
fn to_instant(dt: DateTime, tz: &TimeZone, bound: Bound) -> Result<Timestamp, String> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match bound {
        Bound::Start => ambiguous.compatible(),
        // `later` equals `compatible` in a gap, and differs only in a fold.
        Bound::End => ambiguous.later(),
    }
    .map_err(|_| "the time cannot be placed in this time zone".to_owned())
}

#[cfg(test)]
mod tests;

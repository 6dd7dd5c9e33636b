//! The vendor's request rules, as pure checks.
//!
//! Each check either yields the parsed value or a [`Breach`]: the status the vendor would
//! answer plus a named rule, which the simulator records as a violation. The gateway is
//! expected never to trip any of them, so every rule the vendor documents (or that public
//! client code relies on) is enforced strictly here, including the ones a lenient server
//! might let slide, like a `T` between date and time.

use std::collections::HashMap;

use http::HeaderMap;
use jiff::{civil, tz::Offset};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{
    OffsetMode,
    data::Filter,
    render::{FieldMask, OPTIONAL_FIELDS},
};

/// The longest range one request may cover, both ends inclusive.
pub(crate) const MAX_RANGE_SECS: i64 = 7 * 86_400;
/// Largest page size.
pub(crate) const MAX_LIMIT: u32 = 100;
/// Largest page index.
pub(crate) const MAX_PAGE: u32 = 10;
/// Leeway on `exp`, for clock skew between gateway and vendor.
pub(crate) const EXP_LEEWAY_SECS: f64 = 5.0;
/// Longest token lifetime (`exp - iat`) on accounts that enforce `jti`.
pub(crate) const MAX_JTI_LIFETIME_SECS: f64 = 3600.0;

/// A broken rule: what the vendor answers and what the simulator records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Breach {
    pub(crate) status: u16,
    pub(crate) rule: &'static str,
    pub(crate) detail: String,
}

fn breach(status: u16, rule: &'static str, detail: impl Into<String>) -> Breach {
    Breach {
        status,
        rule,
        detail: detail.into(),
    }
}

/// `offset` and `limit` from the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    /// `offset` as sent: a page index, or in [`OffsetMode::Record`] a record skip.
    pub(crate) offset: u32,
    pub(crate) limit: u32,
    /// Records skipped before this page.
    pub(crate) skip: u32,
}

/// Parses `?offset=&limit=`: both optional, decimal digits only, in range. Either way one
/// query reaches at most `(MAX_PAGE + 1) × MAX_LIMIT` records: a page index is at most
/// `MAX_PAGE`, a record skip at most `MAX_PAGE × MAX_LIMIT`.
pub(crate) fn parse_paging(query: Option<&str>, mode: OffsetMode) -> Result<Paging, Breach> {
    let mut offset = None;
    let mut limit = None;
    let max_offset = match mode {
        OffsetMode::Page => MAX_PAGE,
        OffsetMode::Record => MAX_PAGE * MAX_LIMIT,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let (slot, rule, max, min) = match key.as_ref() {
            "offset" => (&mut offset, "offset", max_offset, 0),
            "limit" => (&mut limit, "limit", MAX_LIMIT, 1),
            _ => continue,
        };
        if slot.is_some() {
            return Err(breach(400, rule, format!("`{rule}` given more than once")));
        }
        let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u32>().ok())
            .flatten()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                breach(
                    400,
                    rule,
                    format!("`{rule}` must be an integer in {min}..={max}"),
                )
            })?;
        *slot = Some(n);
    }
    let offset = offset.unwrap_or(0);
    let limit = limit.unwrap_or(MAX_LIMIT);
    let skip = match mode {
        OffsetMode::Page => offset * limit,
        OffsetMode::Record => offset,
    };
    Ok(Paging {
        offset,
        limit,
        skip,
    })
}

/// Remembers accepted `jti`s until their token expires (after which a replay fails on
/// `exp` anyway), so the set stays bounded.
#[derive(Debug, Default)]
pub(crate) struct JtiLog {
    seen: HashMap<String, f64>,
}

impl JtiLog {
    fn prune(&mut self, now: f64) {
        if self.seen.len() > 1024 {
            self.seen.retain(|_, exp| *exp + EXP_LEEWAY_SECS >= now);
        }
    }
}

/// What the JWT check needs to know about the account.
pub(crate) struct JwtPolicy<'a> {
    pub(crate) key: &'a DecodingKey,
    pub(crate) client_id: &'a str,
    pub(crate) require_jti: bool,
}

/// Verifies the `auth` header: HS256 with the client secret, `appId` equal to the client
/// id, `exp` (if any) not past, and on `jti` accounts a fresh `jti` and a lifetime ≤ 1 h.
/// `now` is Unix seconds. Details never contain the token.
pub(crate) fn check_jwt(
    headers: &HeaderMap,
    policy: &JwtPolicy<'_>,
    jtis: &mut JtiLog,
    now: f64,
) -> Result<(), Breach> {
    let token = headers
        .get("auth")
        .ok_or_else(|| breach(401, "jwt_missing", "no `auth` header"))?
        .to_str()
        .map_err(|_| breach(401, "jwt_invalid", "`auth` header is not visible ASCII"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    // The vendor's own samples carry no `exp`: it is checked below only when present.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, policy.key, &validation)
        .map_err(|e| {
            breach(
                401,
                "jwt_invalid",
                format!("token rejected: {:?}", e.kind()),
            )
        })?
        .claims;

    match claims.get("appId") {
        Some(Value::String(app)) if app == policy.client_id => {}
        Some(_) => {
            return Err(breach(
                401,
                "jwt_app_id",
                "`appId` does not match the client id",
            ));
        }
        None => {
            return Err(breach(
                401,
                "jwt_app_id",
                "no `appId` claim (exact spelling required)",
            ));
        }
    }
    let number = |name: &str| -> Result<Option<f64>, Breach> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| breach(401, "jwt_invalid", format!("`{name}` is not a number"))),
        }
    };
    let exp = number("exp")?;
    let iat = number("iat")?;
    if let Some(exp) = exp
        && exp + EXP_LEEWAY_SECS < now
    {
        return Err(breach(
            401,
            "jwt_expired",
            format!("token expired {:.0} s ago", now - exp),
        ));
    }
    if policy.require_jti {
        let jti = match claims.get("jti") {
            Some(Value::String(j)) if !j.is_empty() => j,
            _ => {
                return Err(breach(
                    401,
                    "jwt_jti_missing",
                    "this account requires a `jti` claim",
                ));
            }
        };
        let (Some(iat), Some(exp)) = (iat, exp) else {
            return Err(breach(
                401,
                "jwt_lifetime",
                "a `jti` token needs `iat` and `exp`",
            ));
        };
        if exp - iat > MAX_JTI_LIFETIME_SECS {
            return Err(breach(
                401,
                "jwt_lifetime",
                format!("token lives {:.0} s (> 3600)", exp - iat),
            ));
        }
        jtis.prune(now);
        if jtis.seen.contains_key(jti) {
            return Err(breach(401, "jwt_jti_reused", "`jti` already used"));
        }
        jtis.seen.insert(jti.clone(), exp);
    }
    Ok(())
}

/// The `accountId` header must be present and equal the path id, which must be the
/// configured account.
pub(crate) fn check_account(
    headers: &HeaderMap,
    path_id: &str,
    configured: &str,
) -> Result<(), Breach> {
    let header = headers
        .get("accountid")
        .ok_or_else(|| breach(400, "account_header_missing", "no `accountId` header"))?;
    if header.as_bytes() != path_id.as_bytes() {
        return Err(breach(
            401,
            "account_mismatch",
            "`accountId` header differs from the path",
        ));
    }
    if path_id != configured {
        return Err(breach(
            401,
            "account_unknown",
            "account id is not this app's account",
        ));
    }
    Ok(())
}

/// A valid request body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    /// Range start, Unix seconds (UTC), inclusive.
    pub(crate) start: i64,
    /// Range end, Unix seconds (UTC), inclusive.
    pub(crate) end: i64,
    pub(crate) offset_minutes: i32,
    pub(crate) selected_fields: Option<Vec<String>>,
    pub(crate) fields: FieldMask,
    pub(crate) filter: Filter,
}

/// A vendor date: `yyyy-mm-dd` or `yyyy-mm-dd HH:mm:ss`, a real calendar date. A date
/// alone means the start of the day, or its last second when `end_of_day`.
fn parse_local(s: &str, end_of_day: bool) -> Option<civil::DateTime> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    if !(b.len() == 10 || b.len() == 19) || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, sec) = if b.len() == 19 {
        if b[10] != b' ' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        (digits(11..13)?, digits(14..16)?, digits(17..19)?)
    } else if end_of_day {
        (23, 59, 59)
    } else {
        (0, 0, 0)
    };
    // All parts are at most 4 digits, so the narrowing casts cannot wrap.
    civil::DateTime::new(y as i16, m as i8, d as i8, h as i8, mi as i8, sec as i8, 0).ok()
}

fn string_list(
    body: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<String>>, Breach> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| breach(400, key, format!("`{key}` must be an array of strings"))),
        Some(_) => Err(breach(
            400,
            key,
            format!("`{key}` must be an array of strings"),
        )),
    }
}

/// Parses and checks the request body (and its content type).
pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Query, Breach> {
    let json_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(breach(
            400,
            "content_type",
            "content-type must be application/json",
        ));
    }
    let body: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| breach(400, "body_json", format!("body is not a JSON object: {e}")))?;

    let tz = body
        .get("timeZoneOffset")
        .ok_or_else(|| breach(400, "timeZoneOffset", "`timeZoneOffset` is required"))?
        .as_i64()
        .filter(|m| (-840..=840).contains(m))
        .ok_or_else(|| {
            breach(
                400,
                "timeZoneOffset",
                "`timeZoneOffset` must be an integer in -840..=840",
            )
        })?;
    // In range, so it fits an i32 and a jiff offset (local = UTC - minutes).
    let offset_minutes = tz as i32;
    let offset = Offset::from_seconds(-offset_minutes * 60)
        .map_err(|_| breach(400, "timeZoneOffset", "offset out of range"))?;

    let date = |key: &'static str, end_of_day: bool| -> Result<i64, Breach> {
        let text = body
            .get(key)
            .ok_or_else(|| breach(400, key, format!("`{key}` is required")))?
            .as_str()
            .ok_or_else(|| breach(400, key, format!("`{key}` must be a string")))?;
        let local = parse_local(text, end_of_day).ok_or_else(|| {
            breach(
                400,
                key,
                format!("`{key}` must be yyyy-mm-dd or yyyy-mm-dd HH:mm:ss"),
            )
        })?;
        offset
            .to_timestamp(local)
            .map(|t| t.as_second())
            .map_err(|_| breach(400, key, format!("`{key}` is out of range")))
    };
    let start = date("startDate", false)?;
    let end = date("endDate", true)?;
    if end < start {
        return Err(breach(400, "date_order", "`endDate` is before `startDate`"));
    }
    if end - start > MAX_RANGE_SECS {
        return Err(breach(
            400,
            "date_range",
            format!("range is {} s, over 7 days", end - start),
        ));
    }

    let selected_fields = string_list(&body, "selectedFields")?;
    if let Some(unknown) = selected_fields
        .iter()
        .flatten()
        .find(|f| !OPTIONAL_FIELDS.contains(&f.as_str()))
    {
        return Err(breach(
            400,
            "selectedFields",
            format!("unknown selected field {unknown:?}"),
        ));
    }
    let fields = selected_fields
        .as_deref()
        .map(FieldMask::from_names)
        .unwrap_or_default();
    let filter = Filter {
        channels: string_list(&body, "channels")?.unwrap_or_default(),
        queues: string_list(&body, "queues")?.unwrap_or_default(),
        bots: string_list(&body, "bots")?.unwrap_or_default(),
    };
    Ok(Query {
        start,
        end,
        offset_minutes,
        selected_fields,
        fields,
        filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging() {
        let page = OffsetMode::Page;
        assert_eq!(
            parse_paging(None, page),
            Ok(Paging {
                offset: 0,
                limit: 100,
                skip: 0
            })
        );
        assert_eq!(
            parse_paging(Some("offset=10&limit=1"), page),
            Ok(Paging {
                offset: 10,
                limit: 1,
                skip: 10
            })
        );
        assert_eq!(
            parse_paging(Some("offset=3&limit=50"), page).map(|p| p.skip),
            Ok(150)
        );
        for bad in [
            "offset=11",
            "offset=-1",
            "limit=0",
            "limit=101",
            "limit=abc",
            "limit=",
            "limit=+5",
            "offset=1&offset=2",
            "limit=99999999999999",
        ] {
            assert!(parse_paging(Some(bad), page).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_paging_skips_records_and_reaches_as_far_as_pages() {
        let record = OffsetMode::Record;
        assert_eq!(
            parse_paging(Some("offset=150&limit=100"), record),
            Ok(Paging {
                offset: 150,
                limit: 100,
                skip: 150
            })
        );
        assert_eq!(
            parse_paging(Some("offset=1000"), record).map(|p| p.skip),
            Ok(1000)
        );
        for bad in ["offset=1001", "offset=-1", "offset=1&offset=2", "limit=101"] {
            assert!(parse_paging(Some(bad), record).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert!(parse_local("2024-02-29", false).is_some());
        assert!(parse_local("2024-02-30", false).is_none());
        assert!(parse_local("2024-09-26T10:00:00", false).is_none());
        assert!(parse_local("2024-09-26 24:00:00", false).is_none());
        assert!(parse_local("2024-9-26", false).is_none());
        assert!(parse_local("２０２４-09-26", false).is_none());
        assert_eq!(
            parse_local("2024-09-26", true),
            civil::DateTime::new(2024, 9, 26, 23, 59, 59, 0).ok()
        );
    }
}

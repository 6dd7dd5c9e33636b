//! The vendor accounts behind the gateway: one from the `KORE_*` settings, or several from
//! the TOML file `KORE_ACCOUNTS_FILE` names; and `GATEWAY_KEY_ACCOUNTS`, which says which
//! keys may read which accounts.
//!
//! Every problem stops start-up with one line naming the account and the field. A secret
//! never reaches that line: a TOML syntax error is reported by line and column only (the
//! parser's own message would quote the line), and `client_secret` is read as a plain
//! value and checked here, so serde never echoes it.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{AccountSettings, ApiKey, ConfigError, OffsetMode, Rate, UpstreamSettings};

/// What an account name may be (the `account` parameter's value).
pub const ACCOUNT_NAME_RULE: &str = "1 to 32 of a-z, 0-9 and -";

/// Whether `name` is a valid account name (`[a-z0-9-]{1,32}`).
pub fn valid_account_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The upstream knobs every account shares (KORE_TIMEOUT, KORE_JWT_TTL, …).
pub(super) struct Knobs {
    pub timeout: Duration,
    pub jwt_ttl: Duration,
    pub jwt_jti: bool,
    pub retries: u32,
    pub offset_mode: OffsetMode,
    pub max_body_bytes: usize,
}

impl Knobs {
    /// One account's upstream settings with these knobs.
    pub fn upstream(
        &self,
        base_url: Url,
        account_id: String,
        client_id: String,
        client_secret: SecretString,
        iid: Option<String>,
    ) -> UpstreamSettings {
        UpstreamSettings {
            base_url,
            account_id,
            client_id,
            client_secret,
            iid,
            timeout: self.timeout,
            jwt_ttl: self.jwt_ttl,
            jwt_jti: self.jwt_jti,
            retries: self.retries,
            offset_mode: self.offset_mode,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// An http(s) URL with a host.
///
/// # Errors
/// What is wrong with it.
pub(super) fn base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    Ok(url)
}

/// An account id the vendor path and header can carry.
///
/// # Errors
/// What is wrong with it.
pub(super) fn account_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may hold only letters, digits, `-` and `_`".into());
    }
    Ok(())
}

/// The secret in a file (trailing newline ignored).
///
/// # Errors
/// The file cannot be read (the message names the path and the kind of failure only).
pub(super) fn read_secret(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {} ({})", path.display(), e.kind()))?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// One `[accounts.NAME]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    base_url: String,
    account_id: String,
    client_id: String,
    /// Read as any value, so a wrong type is reported without quoting it.
    client_secret: Option<toml::Value>,
    client_secret_file: Option<std::path::PathBuf>,
    iid: Option<String>,
    rate_limit: Option<String>,
    default: Option<bool>,
}

/// The error of `account`'s `field`, as one start-up line.
fn bad(account: &str, field: &str, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        setting: "KORE_ACCOUNTS_FILE",
        problem: format!("account `{account}`, {field}: {problem}"),
    }
}

/// Line and column (1-based) of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Reads the accounts file at `path`; `rate` is the default `rate_limit` (KORE_RATE_LIMIT).
///
/// # Errors
/// The first problem, naming the account and the field.
pub(super) fn load(
    path: &Path,
    knobs: &Knobs,
    rate: Rate,
) -> Result<Vec<AccountSettings>, ConfigError> {
    let file_error = |problem: String| ConfigError {
        setting: "KORE_ACCOUNTS_FILE",
        problem,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(format!("cannot read {} ({})", path.display(), e.kind())))?;
    parse(&text, knobs, rate)
}

/// [`load`] on the file's text.
fn parse(text: &str, knobs: &Knobs, rate: Rate) -> Result<Vec<AccountSettings>, ConfigError> {
    let file_error = |problem: String| ConfigError {
        setting: "KORE_ACCOUNTS_FILE",
        problem,
    };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // By position only: the parser's own rendering quotes the line, which may hold a
        // secret.
        match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                file_error(format!("not valid TOML at line {line}, column {col}"))
            }
            None => file_error("not valid TOML".into()),
        }
    })?;
    if let Some(other) = doc.keys().find(|k| k.as_str() != "accounts") {
        let shown: String = other.chars().take(40).collect();
        return Err(file_error(format!(
            "unknown top-level key `{shown}`; accounts go in [accounts.NAME] tables"
        )));
    }
    let Some(tables) = doc.get("accounts").and_then(toml::Value::as_table) else {
        return Err(file_error(
            "no [accounts.NAME] table: describe at least one account".into(),
        ));
    };
    if tables.is_empty() {
        return Err(file_error(
            "no [accounts.NAME] table: describe at least one account".into(),
        ));
    }
    let mut out: Vec<AccountSettings> = Vec::with_capacity(tables.len());
    let mut upstreams: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, value) in tables {
        let shown: String = name.chars().take(40).collect();
        if !valid_account_name(name) {
            return Err(file_error(format!(
                "account name `{shown}` must be {ACCOUNT_NAME_RULE}"
            )));
        }
        let entry: Entry = value.clone().try_into().map_err(|e: toml::de::Error| {
            // serde's messages name the field (`missing field`, `unknown field`); with the
            // secret read as a plain value above they never quote it.
            bad(name, "table", e.message().trim())
        })?;
        let base_url = base_url(&entry.base_url).map_err(|p| bad(name, "base_url", p))?;
        let account = entry.account_id.trim().to_owned();
        account_id(&account).map_err(|p| bad(name, "account_id", p))?;
        let client_id = entry.client_id.trim().to_owned();
        if client_id.is_empty() {
            return Err(bad(name, "client_id", "is empty"));
        }
        let secret = match (entry.client_secret, entry.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    name,
                    "client_secret",
                    "set either client_secret or client_secret_file, not both",
                ));
            }
            (Some(toml::Value::String(s)), None) => SecretString::from(s),
            (Some(_), None) => return Err(bad(name, "client_secret", "must be a string")),
            (None, Some(path)) => {
                read_secret(&path).map_err(|p| bad(name, "client_secret_file", p))?
            }
            (None, None) => {
                return Err(bad(
                    name,
                    "client_secret",
                    "missing: set client_secret or client_secret_file",
                ));
            }
        };
        if secret.expose_secret().is_empty() {
            return Err(bad(name, "client_secret", "is empty"));
        }
        let rate = match entry.rate_limit.as_deref() {
            Some(r) => r.parse::<Rate>().map_err(|p| bad(name, "rate_limit", p))?,
            None => rate,
        };
        let identity = (
            base_url.as_str().trim_end_matches('/').to_owned(),
            account.clone(),
        );
        if !upstreams.insert(identity) {
            return Err(bad(
                name,
                "account_id",
                "another account has the same account_id on the same base_url",
            ));
        }
        out.push(AccountSettings {
            name: name.as_str().into(),
            upstream: knobs.upstream(
                base_url,
                account,
                client_id,
                secret,
                entry.iid.filter(|s| !s.trim().is_empty()),
            ),
            rate,
            default: entry.default.unwrap_or(false),
        });
    }
    let defaults: Vec<&str> = out.iter().filter(|a| a.default).map(|a| &*a.name).collect();
    if defaults.len() > 1 {
        return Err(bad(
            defaults[1],
            "default",
            format!("`{}` is the default already", defaults[0]),
        ));
    }
    if out.len() == 1 {
        out[0].default = true;
    }
    Ok(out)
}

/// Parses `key-name:acc1+acc2,…` against the configured keys and accounts.
///
/// # Errors
/// An entry that is malformed or names an unknown key or account.
pub(super) fn parse_key_accounts(
    raw: &str,
    keys: &[ApiKey],
    accounts: &[AccountSettings],
) -> Result<super::KeyAccounts, String> {
    let mut out: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
    for entry in super::named_entries(raw, "key-name:account+account") {
        let (key, list) = entry?;
        let shown: String = key.chars().take(40).collect();
        let Some(known) = keys.iter().find(|k| &*k.name == key) else {
            return Err(format!("`{shown}` is not a key name of GATEWAY_API_KEYS"));
        };
        if out.iter().any(|(k, _)| **k == *key) {
            return Err(format!("the key name `{shown}` appears twice"));
        }
        let mut names: Vec<Arc<str>> = Vec::new();
        for a in list.split('+').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(acc) = accounts.iter().find(|acc| &*acc.name == a) else {
                let a: String = a.chars().take(40).collect();
                return Err(format!("`{shown}` names an unknown account `{a}`"));
            };
            if !names.contains(&acc.name) {
                names.push(Arc::clone(&acc.name));
            }
        }
        if names.is_empty() {
            return Err(format!("`{shown}` names no account"));
        }
        out.push((Arc::clone(&known.name), names));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs {
            timeout: Duration::from_secs(30),
            jwt_ttl: Duration::from_secs(300),
            jwt_jti: false,
            retries: 3,
            offset_mode: OffsetMode::Page,
            max_body_bytes: 1 << 20,
        }
    }

    fn rate() -> Rate {
        "60/min".parse().unwrap()
    }

    const TWO: &str = r#"
[accounts.us]
base_url = "https://smartassist.kore.ai"
account_id = "66bc4a29bdaafdb08461abcd"
client_id = "cs-us"
client_secret = "us-secret-value-1234"
default = true

[accounts.eu]
base_url = "https://eu-platform.kore.ai/"
account_id = "66bc4a29bdaafdb08461ef01"
client_id = "cs-eu"
client_secret = "eu-secret-value-5678"
iid = "st-eu"
rate_limit = "30/min"
"#;

    #[test]
    fn a_file_of_two_accounts_reads_whole() {
        let accounts = parse(TWO, &knobs(), rate()).unwrap();
        let names: Vec<&str> = accounts.iter().map(|a| &*a.name).collect();
        assert_eq!(names, ["eu", "us"]);
        let eu = &accounts[0];
        assert_eq!(eu.rate, "30/min".parse().unwrap());
        assert!(!eu.default);
        assert_eq!(eu.upstream.iid.as_deref(), Some("st-eu"));
        let us = &accounts[1];
        assert!(us.default);
        assert_eq!(us.rate, rate(), "the default rate is KORE_RATE_LIMIT");
        let dbg = format!("{accounts:?}");
        assert!(
            !dbg.contains("us-secret-value") && !dbg.contains("eu-secret-value"),
            "{dbg}"
        );
    }

    /// Each broken file stops start-up with one line naming the account and the field, and
    /// never quoting a secret.
    #[test]
    fn a_bad_file_names_the_account_and_the_field() {
        let cases: [(&str, &str); 10] = [
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\nbse_url = \"x\"\n",
                "account `us`, table: unknown field `bse_url`",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\n",
                "account `us`, table: missing field `account_id`",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret_file = \"/nonexistent/kore-us\"\n",
                "account `us`, client_secret_file: cannot read /nonexistent/kore-us",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\n[accounts.us2]\nbase_url = \"https://x.kore.ai/\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\n",
                "account `us2`, account_id: another account has the same account_id",
            ),
            (
                "[accounts.US]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\n",
                "account name `US` must be",
            ),
            (
                "[accounts.us]\nbase_url = \"ftp://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\n",
                "account `us`, base_url: must be an http(s) URL",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\"\nrate_limit = \"60/week\"\n",
                "account `us`, rate_limit: unknown rate period",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = 12345678\n",
                "account `us`, client_secret: must be a string",
            ),
            (
                "[accounts.us]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s3cret-quoted\n",
                "not valid TOML at line 5",
            ),
            ("title = \"x\"\n", "unknown top-level key `title`"),
        ];
        for (text, want) in cases {
            let err = parse(text, &knobs(), rate()).expect_err(want).to_string();
            assert!(err.starts_with("KORE_ACCOUNTS_FILE: "), "{err}");
            assert!(err.contains(want), "{err} should contain {want}");
            assert!(
                !err.contains("s3cret-quoted") && !err.contains("12345678"),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn two_defaults_are_refused_and_a_single_account_is_the_default() {
        let text = TWO.replace("iid = \"st-eu\"", "iid = \"st-eu\"\ndefault = true");
        let err = parse(&text, &knobs(), rate()).unwrap_err().to_string();
        assert!(err.contains("default"), "{err}");
        let one = "[accounts.solo]\nbase_url = \"https://x.kore.ai\"\naccount_id = \"a1\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
        assert!(parse(one, &knobs(), rate()).unwrap()[0].default);
    }

    #[test]
    fn key_accounts_are_checked_against_keys_and_accounts() {
        let accounts = parse(TWO, &knobs(), rate()).unwrap();
        let keys = super::super::parse_api_keys("team:aaaaaaaa1,ops:bbbbbbbb2").unwrap();
        let ok = parse_key_accounts("team:us+eu, ops:us", &keys, &accounts).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].1.len(), 2);
        for (bad_value, want) in [
            ("nobody:us", "not a key name"),
            ("team:us+mars", "unknown account `mars`"),
            ("team", "not `key-name:account+account`"),
            ("team:us,team:eu", "appears twice"),
            ("team:", "names no account"),
        ] {
            let err = parse_key_accounts(bad_value, &keys, &accounts).unwrap_err();
            assert!(err.contains(want), "{bad_value}: {err}");
        }
    }

    #[test]
    fn account_names_follow_the_rule() {
        for ok in ["us", "eu-2", "a", &"x".repeat(32)] {
            assert!(valid_account_name(ok), "{ok}");
        }
        for bad in ["", "US", "eu_2", "e u", &"x".repeat(33), "é"] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }
}

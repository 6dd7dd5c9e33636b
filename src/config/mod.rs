//! Configuration: every setting is an environment variable and the same-named CLI flag
//! (SPEC §4). Raw text is parsed into typed values ([`Rate`], [`Duration`], [`Url`],
//! [`SecretString`]) once, at start-up, so a bad value stops the process with one line that
//! names the setting instead of failing at the first request.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

mod accounts;
mod feed;
mod shares;

pub use accounts::{ACCOUNT_NAME_RULE, valid_account_name};
pub use feed::FeedSettings;
pub use shares::{KeyShare, KeyShares, MAX_WEIGHT};

use clap::{ArgAction, Parser};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

/// Command line and environment of the `kore-gateway` binary.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kore-gateway",
    version,
    about = "Caching, budgeted gateway for the Kore.ai interaction-details API"
)]
pub struct Cli {
    /// Start the built-in upstream simulator on a loopback port and point the gateway at it;
    /// no other setting is needed.
    #[arg(long)]
    pub demo: bool,

    /// Run only the upstream simulator (demo credentials) on GATEWAY_LISTEN.
    #[arg(long, conflicts_with = "demo")]
    pub simulator: bool,

    /// Simulator latency per call, for --demo and --simulator.
    #[arg(long, env = "SIM_LATENCY", default_value = "50ms", value_parser = parse_duration)]
    pub sim_latency: Duration,

    /// Simulator's own rate limit (`N/s`, `N/min`), for --demo and --simulator; unset = none.
    #[arg(long, env = "SIM_RATE_LIMIT")]
    pub sim_rate_limit: Option<Rate>,

    /// Simulator data volume, for --demo and --simulator: records per hour multiplied by it
    /// (1 ≈ 55 a day; 180 ≈ 50,000 a week, a busy contact centre).
    #[arg(long, env = "SIM_VOLUME", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sim_volume: u32,

    /// Bind address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,

    /// Vendor base URL, e.g. https://smartassist.kore.ai
    #[arg(long, env = "KORE_BASE_URL")]
    pub kore_base_url: Option<String>,

    /// Account id used in the path and the `accountId` header.
    #[arg(long, env = "KORE_ACCOUNT_ID")]
    pub kore_account_id: Option<String>,

    /// Client id, sent as the JWT `appId` claim.
    #[arg(long, env = "KORE_CLIENT_ID")]
    pub kore_client_id: Option<String>,

    /// HS256 signing secret (prefer KORE_CLIENT_SECRET_FILE). Never logged or returned.
    #[arg(long, env = "KORE_CLIENT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub kore_client_secret: Option<SecretString>,

    /// File holding the HS256 signing secret (trailing newline ignored).
    #[arg(long, env = "KORE_CLIENT_SECRET_FILE")]
    pub kore_client_secret_file: Option<PathBuf>,

    /// Sent as the `iId` header when set.
    #[arg(long, env = "KORE_IID")]
    pub kore_iid: Option<String>,

    /// TOML file of several vendor accounts (`[accounts.NAME]`: `base_url`, `account_id`,
    /// `client_id`, `client_secret` or `client_secret_file`, `iid`, `rate_limit`, `default`);
    /// instead of the KORE_BASE_URL … KORE_IID settings, which define one account `default`.
    #[arg(long, env = "KORE_ACCOUNTS_FILE")]
    pub kore_accounts_file: Option<PathBuf>,

    /// Which accounts a key may read: `key-name:acc1+acc2,…`; unset = every key reads every
    /// account (admin keys always read all).
    #[arg(long, env = "GATEWAY_KEY_ACCOUNTS")]
    pub gateway_key_accounts: Option<String>,

    /// Upstream calls allowed per sliding period, per account (`N/s`, `N/min`, `N/h`); the
    /// default of an accounts file's `rate_limit`.
    #[arg(long, env = "KORE_RATE_LIMIT", default_value = "60/min")]
    pub kore_rate_limit: Rate,

    /// Longest one upstream call waits for budget before the request is answered 503.
    #[arg(long, env = "KORE_MAX_WAIT", default_value = "120s", value_parser = parse_duration)]
    pub kore_max_wait: Duration,

    /// Upstream calls in flight at once.
    #[arg(long, env = "KORE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub kore_concurrency: u32,

    /// Most upstream calls one request may cause (its planned and discovered calls together);
    /// past it the request stops fetching and answers 503 or `complete: false`.
    #[arg(long, env = "MAX_CALLS_PER_REQUEST", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_calls_per_request: u32,

    /// Largest upstream body accepted, in bytes; a larger one is a transient upstream error.
    #[arg(long, env = "KORE_MAX_BODY_BYTES", default_value_t = 33_554_432, value_parser = clap::value_parser!(u64).range(1024..=1_073_741_824))]
    pub kore_max_body_bytes: u64,

    /// Timeout of one upstream call.
    #[arg(long, env = "KORE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub kore_timeout: Duration,

    /// Lifetime of a minted JWT (re-minted before it ends).
    #[arg(long, env = "KORE_JWT_TTL", default_value = "300s", value_parser = parse_duration)]
    pub kore_jwt_ttl: Duration,

    /// Mint a fresh token with a unique `jti` for every call (accounts that enforce `jti`).
    #[arg(long, env = "KORE_JWT_JTI", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub kore_jwt_jti: bool,

    /// Retries of a transient upstream failure (5xx, 429, reset, timeout, truncated body).
    #[arg(long, env = "KORE_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub kore_retries: u32,

    /// How the vendor reads `offset`: `page` (page index, current docs) or `record` (record skip, older docs).
    #[arg(long, env = "KORE_OFFSET_MODE", default_value = "page")]
    pub kore_offset_mode: OffsetMode,

    /// API keys: `name:key,name2:key2`; a name starting `admin` may use the admin routes.
    #[arg(long, env = "GATEWAY_API_KEYS", hide_env_values = true, value_parser = parse_secret)]
    pub gateway_api_keys: Option<SecretString>,

    /// Requests per API key per period (`N/s`, `N/min`); unset = no limit.
    #[arg(long, env = "GATEWAY_KEY_RATE_LIMIT")]
    pub gateway_key_rate_limit: Option<Rate>,

    /// Each key's share of every account's upstream budget, comma-separated
    /// `name:property=value` (a name may repeat): `min=N/period` (a reservation while it
    /// waits), `weight=W` (default 1: its share of the rest), `max=N/period` (a cap).
    /// Unset = round robin among the keys waiting.
    #[arg(long, env = "GATEWAY_KEY_SHARES")]
    pub gateway_key_shares: Option<String>,

    /// Allow `/v1/*` without a key (otherwise no keys = refuse to start).
    #[arg(long, env = "GATEWAY_ALLOW_ANONYMOUS", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub gateway_allow_anonymous: bool,

    /// Origins allowed by CORS, comma-separated (`*` for any); unset = no CORS headers.
    #[arg(long, env = "GATEWAY_CORS_ORIGINS")]
    pub gateway_cors_origins: Option<String>,

    /// Longest a whole request may take before it is answered 504.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub gateway_request_timeout: Duration,

    /// Redis shared by replicas (L2 cache, shared budget, cross-replica coalescing), e.g.
    /// redis://127.0.0.1:6379; unset = this replica alone. May carry a password: never shown.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = parse_secret)]
    pub redis_url: Option<SecretString>,

    /// Replicas expected to share the account; while Redis is unreachable each takes
    /// KORE_RATE_LIMIT / max(this, replicas last seen) of the budget.
    #[arg(long, env = "GATEWAY_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub gateway_replicas: u32,

    /// Bound on cached data, in bytes (window records and rendered responses together).
    #[arg(long, env = "CACHE_MAX_BYTES", default_value_t = 268_435_456)]
    pub cache_max_bytes: u64,

    /// Freshness of a window that ended more than CACHE_SETTLE ago.
    #[arg(long, env = "CACHE_TTL_PAST", default_value = "24h", value_parser = parse_duration)]
    pub cache_ttl_past: Duration,

    /// Freshness of a window that touches the recent past or now.
    #[arg(long, env = "CACHE_TTL_RECENT", default_value = "30s", value_parser = parse_duration)]
    pub cache_ttl_recent: Duration,

    /// How long after its end a window is still treated as changing.
    #[arg(long, env = "CACHE_SETTLE", default_value = "1h", value_parser = parse_duration)]
    pub cache_settle: Duration,

    /// How long an expired window is kept to be served (flagged stale) when upstream fails.
    #[arg(long, env = "CACHE_STALE_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub cache_stale_grace: Duration,

    /// Folder of the on-disk cache tier (windows survive restarts); unset = memory only.
    #[arg(long, env = "CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound on the on-disk tier, in bytes (least recently used windows go first).
    #[arg(long, env = "CACHE_DISK_MAX_BYTES", default_value_t = 2_147_483_648)]
    pub cache_disk_max_bytes: u64,

    /// Stale-while-revalidate: a window expired for less than this is answered at once from
    /// its stale copy and refreshed in the background; `0s` turns it off.
    #[arg(long, env = "CACHE_SWR", default_value = "10m", value_parser = parse_duration)]
    pub cache_swr: Duration,

    /// Refresh windows touching "now" shortly before they expire while they are being read.
    #[arg(long, env = "REFRESH_AHEAD", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub refresh_ahead: bool,

    /// A window not read for this long is no longer refreshed ahead.
    #[arg(long, env = "REFRESH_AHEAD_IDLE", default_value = "10m", value_parser = parse_duration)]
    pub refresh_ahead_idle: Duration,

    /// Longest range one request may ask for, in days.
    #[arg(long, env = "MAX_RANGE_DAYS", default_value_t = 92, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub max_range_days: u32,

    /// Defuse spreadsheet formulas in CSV text cells (OWASP): a cell starting with `=`, `@`,
    /// tab or CR, or with `+`/`-` not followed by a plain number, gets a leading `'`. Cells
    /// written from JSON numbers are exempt. The default of the `csv_escape` parameter.
    #[arg(long, env = "CSV_FORMULA_ESCAPE", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub csv_formula_escape: bool,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// How long a finished `Prefer: respond-async` job is kept (then GET /v1/jobs/{id} is 404).
    #[arg(long, env = "JOB_TTL", default_value = "1h", value_parser = parse_duration)]
    pub job_ttl: Duration,

    /// After SIGTERM, the longest the process takes to exit: requests waiting for budget are
    /// answered 503 by half of it, jobs are left resumable, and what still runs at its end is
    /// cut off.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// The change feed: how often a followed topic's watched part is polled.
    #[arg(long, env = "FEED_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub feed_interval: Duration,

    /// The change feed: records starting this far back are followed for changes.
    #[arg(long, env = "FEED_LOOKBACK", default_value = "24h", value_parser = parse_duration)]
    pub feed_lookback: Duration,

    /// The change feed: how long an event can be resumed from (`Last-Event-ID`).
    #[arg(long, env = "FEED_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub feed_retention: Duration,

    /// The change feed: streams one API key may hold open (429 beyond).
    #[arg(long, env = "FEED_MAX_SUBSCRIBERS_PER_KEY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub feed_max_subscribers_per_key: u32,
}

/// Fully validated settings the application runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The vendor accounts behind the gateway (at least one, names unique).
    pub accounts: Vec<AccountSettings>,
    /// Budget knobs every account's budget shares; `rate` is KORE_RATE_LIMIT, the default of
    /// an account's own `rate`.
    pub budget: BudgetSettings,
    /// GATEWAY_KEY_ACCOUNTS: key name → the account names it may read (a key not listed
    /// reads every account; `None` = no restriction at all).
    pub key_accounts: Option<KeyAccounts>,
    pub api_keys: Vec<ApiKey>,
    pub key_rate_limit: Option<Rate>,
    /// GATEWAY_KEY_SHARES: reservations, weights and caps per key (empty = round robin).
    pub key_shares: KeyShares,
    pub allow_anonymous: bool,
    pub cors_origins: Vec<String>,
    pub request_timeout: Duration,
    pub cache: CacheSettings,
    pub max_range_days: u32,
    pub redis_url: Option<SecretString>,
    /// CACHE_DIR and CACHE_DISK_MAX_BYTES: the on-disk tier, when set.
    pub disk: Option<DiskSettings>,
    /// Floor of the replica count used for the local budget share while Redis is down.
    pub replicas: u32,
    /// Defuse formula-looking text cells in CSV answers (CSV_FORMULA_ESCAPE).
    pub csv_formula_escape: bool,
    /// JOB_TTL: how long an ended job is kept.
    pub job_ttl: Duration,
    /// SHUTDOWN_GRACE: the bound on the drain after SIGTERM.
    pub shutdown_grace: Duration,
    /// FEED_*: the change feed.
    pub feed: FeedSettings,
}

/// GATEWAY_KEY_ACCOUNTS, parsed: key name → the account names it may read.
pub type KeyAccounts = Vec<(Arc<str>, Vec<Arc<str>>)>;

/// One vendor account: its own credentials, endpoint and budget.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// `[a-z0-9-]{1,32}`: the `account` parameter's value.
    pub name: Arc<str>,
    pub upstream: UpstreamSettings,
    /// Its own calls per sliding period (the vendor's limit is per account).
    pub rate: Rate,
    /// The account a request that names none reads.
    pub default: bool,
}

impl AccountSettings {
    /// The one account the KORE_* settings (or a test) define: named `default`, the default.
    pub fn single(upstream: UpstreamSettings, rate: Rate) -> Self {
        AccountSettings {
            name: "default".into(),
            upstream,
            rate,
            default: true,
        }
    }
}

/// Where and how to call the vendor.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub base_url: Url,
    pub account_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub iid: Option<String>,
    pub timeout: Duration,
    pub jwt_ttl: Duration,
    pub jwt_jti: bool,
    pub retries: u32,
    pub offset_mode: OffsetMode,
    /// KORE_MAX_BODY_BYTES: a larger answer is a transient failure.
    pub max_body_bytes: usize,
}

/// The shared upstream budget.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSettings {
    pub rate: Rate,
    pub max_wait: Duration,
    pub concurrency: u32,
    /// MAX_CALLS_PER_REQUEST: upstream calls one request may cause.
    pub max_calls_per_request: u32,
}

/// The on-disk cache tier.
#[derive(Debug, Clone)]
pub struct DiskSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Cache bounds and freshness policy.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub ttl_past: Duration,
    pub ttl_recent: Duration,
    pub settle: Duration,
    pub stale_grace: Duration,
    /// CACHE_SWR: how long after expiry a window is served stale while it is refreshed.
    pub swr: Duration,
    /// REFRESH_AHEAD and REFRESH_AHEAD_IDLE (`None` = off).
    pub refresh_ahead_idle: Option<Duration>,
}

/// One caller identity. The key itself is a secret.
#[derive(Clone)]
pub struct ApiKey {
    pub name: Arc<str>,
    pub key: SecretString,
}

impl ApiKey {
    /// Names starting `admin` may use the admin routes.
    pub fn is_admin(&self) -> bool {
        self.name.starts_with("admin")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// `N` calls per sliding `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub calls: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a rate like `60/min` or `10/s`"))?;
        let calls: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{n}` is not a positive whole number of calls"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => {
                return Err(format!("unknown rate period `{other}` (use s, min or h)"));
            }
        };
        Ok(Rate { calls, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{}", self.calls, unit)
    }
}

/// How the vendor's `offset` query parameter is read; one place to switch it (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OffsetMode {
    /// `offset` is a page index 0..=10.
    Page,
    /// `offset` is a number of records to skip.
    Record,
}

impl OffsetMode {
    /// The `offset` value that asks for page `page` of size `limit`.
    pub fn offset_param(self, page: u32, limit: u32) -> u32 {
        match self {
            OffsetMode::Page => page,
            OffsetMode::Record => page * limit,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A start-up configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn missing(setting: &'static str) -> ConfigError {
    ConfigError {
        setting,
        problem: "required but not set".into(),
    }
}

/// The longest duration a setting may hold: 3650 days. Every duration setting ends up
/// added to a clock (`Instant + d`, a Redis `PX` in milliseconds, a moka expiry, a jiff
/// timestamp), and a value beyond what those clocks can hold would overflow or be clamped
/// silently; ten years is far beyond any sensible timeout or TTL and safe for all of them.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `120s`, `500ms`, `2m`, `1h`, `1d` or a bare number of seconds.
///
/// # Errors
/// Not a duration, or longer than [`MAX_SETTING_DURATION`] (refused, never saturated).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let shown: String = s.chars().take(40).collect();
    let too_long =
        || format!("`{shown}` is longer than 3650d, the longest duration a setting may hold");
    if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) && num.parse::<u64>().is_err() {
        return Err(too_long());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{shown}` is not a duration like `30s` or `500ms`"))?;
    let seconds = |per: u64| n.checked_mul(per).map(Duration::from_secs);
    let d = match unit {
        "" | "s" => seconds(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        other => {
            let other: String = other.chars().take(20).collect();
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ));
        }
    };
    d.filter(|d| *d <= MAX_SETTING_DURATION)
        .ok_or_else(too_long)
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

/// The `name:value` entries of a comma-separated setting, trimmed; an entry without `:` is
/// an error naming its place and the `form` expected.
fn named_entries<'a>(
    raw: &'a str,
    form: &'a str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), String>> + 'a {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(move |(i, item)| {
            item.split_once(':')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| format!("entry {} is not `{form}`", i + 1))
        })
}

/// Parses `name:key,name2:key2`.
pub fn parse_api_keys(raw: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, entry) in named_entries(raw, "name:key").enumerate() {
        let (name, key) = entry?;
        if name.is_empty() || key.is_empty() {
            return Err(format!("entry {} has an empty name or key", i + 1));
        }
        if key.len() < 8 {
            return Err(format!("the key of `{name}` is shorter than 8 characters"));
        }
        if keys.iter().any(|k| &*k.name == name) {
            return Err(format!("the name `{name}` appears twice"));
        }
        if keys.iter().any(|k| k.key.expose_secret() == key) {
            return Err(format!("the key of `{name}` is also used by another name"));
        }
        keys.push(ApiKey {
            name: name.into(),
            key: SecretString::from(key.to_owned()),
        });
    }
    Ok(keys)
}

impl Cli {
    /// Validates the raw settings into [`Settings`].
    ///
    /// # Errors
    /// The first missing or invalid setting, by name.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        if self.kore_jwt_ttl < Duration::from_secs(10)
            || self.kore_jwt_ttl > Duration::from_secs(3600)
        {
            return Err(ConfigError {
                setting: "KORE_JWT_TTL",
                problem: "must be between 10s and 3600s".into(),
            });
        }
        if self.kore_timeout.is_zero() {
            return Err(ConfigError {
                setting: "KORE_TIMEOUT",
                problem: "must be positive".into(),
            });
        }
        let knobs = accounts::Knobs {
            timeout: self.kore_timeout,
            jwt_ttl: self.kore_jwt_ttl,
            jwt_jti: self.kore_jwt_jti,
            retries: self.kore_retries,
            offset_mode: self.kore_offset_mode,
            max_body_bytes: usize::try_from(self.kore_max_body_bytes).unwrap_or(usize::MAX),
        };
        let accounts = match &self.kore_accounts_file {
            Some(path) => {
                let single = [
                    ("KORE_BASE_URL", self.kore_base_url.is_some()),
                    ("KORE_ACCOUNT_ID", self.kore_account_id.is_some()),
                    ("KORE_CLIENT_ID", self.kore_client_id.is_some()),
                    ("KORE_CLIENT_SECRET", self.kore_client_secret.is_some()),
                    (
                        "KORE_CLIENT_SECRET_FILE",
                        self.kore_client_secret_file.is_some(),
                    ),
                    ("KORE_IID", self.kore_iid.is_some()),
                ];
                if let Some((name, _)) = single.iter().find(|(_, set)| *set) {
                    return Err(ConfigError {
                        setting: "KORE_ACCOUNTS_FILE",
                        problem: format!(
                            "{name} is set too; with an accounts file every account is described in the file"
                        ),
                    });
                }
                accounts::load(path, &knobs, self.kore_rate_limit)?
            }
            None => {
                let base_url = accounts::base_url(
                    &self.kore_base_url.ok_or_else(|| missing("KORE_BASE_URL"))?,
                )
                .map_err(|problem| ConfigError {
                    setting: "KORE_BASE_URL",
                    problem,
                })?;
                let account_id = non_empty(self.kore_account_id, "KORE_ACCOUNT_ID")?;
                accounts::account_id(&account_id).map_err(|problem| ConfigError {
                    setting: "KORE_ACCOUNT_ID",
                    problem,
                })?;
                let client_id = non_empty(self.kore_client_id, "KORE_CLIENT_ID")?;
                let client_secret = match (self.kore_client_secret, self.kore_client_secret_file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError {
                            setting: "KORE_CLIENT_SECRET",
                            problem:
                                "set either KORE_CLIENT_SECRET or KORE_CLIENT_SECRET_FILE, not both"
                                    .into(),
                        });
                    }
                    (Some(s), None) => s,
                    (None, Some(path)) => {
                        accounts::read_secret(&path).map_err(|problem| ConfigError {
                            setting: "KORE_CLIENT_SECRET_FILE",
                            problem,
                        })?
                    }
                    (None, None) => return Err(missing("KORE_CLIENT_SECRET")),
                };
                if client_secret.expose_secret().is_empty() {
                    return Err(ConfigError {
                        setting: "KORE_CLIENT_SECRET",
                        problem: "is empty".into(),
                    });
                }
                vec![AccountSettings::single(
                    knobs.upstream(
                        base_url,
                        account_id,
                        client_id,
                        client_secret,
                        self.kore_iid.filter(|s| !s.trim().is_empty()),
                    ),
                    self.kore_rate_limit,
                )]
            }
        };
        let api_keys = match &self.gateway_api_keys {
            Some(raw) => parse_api_keys(raw.expose_secret()).map_err(|problem| ConfigError {
                setting: "GATEWAY_API_KEYS",
                problem,
            })?,
            None => Vec::new(),
        };
        if api_keys.is_empty() && !self.gateway_allow_anonymous {
            return Err(ConfigError {
                setting: "GATEWAY_API_KEYS",
                problem:
                    "no API keys configured (set GATEWAY_API_KEYS, or GATEWAY_ALLOW_ANONYMOUS=true)"
                        .into(),
            });
        }
        let key_accounts = match &self.gateway_key_accounts {
            Some(raw) => Some(
                accounts::parse_key_accounts(raw, &api_keys, &accounts).map_err(|problem| {
                    ConfigError {
                        setting: "GATEWAY_KEY_ACCOUNTS",
                        problem,
                    }
                })?,
            ),
            None => None,
        };
        let key_shares = match &self.gateway_key_shares {
            Some(raw) => {
                let shares = KeyShares::parse(raw, &api_keys).map_err(|problem| ConfigError {
                    setting: "GATEWAY_KEY_SHARES",
                    problem,
                })?;
                for a in &accounts {
                    shares
                        .check_fits(&a.name, a.rate)
                        .map_err(|problem| ConfigError {
                            setting: "GATEWAY_KEY_SHARES",
                            problem,
                        })?;
                }
                shares
            }
            None => KeyShares::default(),
        };
        let cors_origins = self
            .gateway_cors_origins
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>();
        for o in &cors_origins {
            if o != "*" && http::HeaderValue::from_str(o).is_err() {
                return Err(ConfigError {
                    setting: "GATEWAY_CORS_ORIGINS",
                    problem: format!("`{o}` is not a valid origin"),
                });
            }
        }
        Ok(Settings {
            listen: self.gateway_listen,
            accounts,
            key_accounts,
            budget: BudgetSettings {
                rate: self.kore_rate_limit,
                max_wait: self.kore_max_wait,
                concurrency: self.kore_concurrency,
                max_calls_per_request: self.max_calls_per_request,
            },
            api_keys,
            key_rate_limit: self.gateway_key_rate_limit,
            key_shares,
            allow_anonymous: self.gateway_allow_anonymous,
            cors_origins,
            request_timeout: self.gateway_request_timeout,
            cache: CacheSettings {
                max_bytes: self.cache_max_bytes,
                ttl_past: self.cache_ttl_past,
                ttl_recent: self.cache_ttl_recent,
                settle: self.cache_settle,
                stale_grace: self.cache_stale_grace,
                swr: self.cache_swr,
                refresh_ahead_idle: self.refresh_ahead.then_some(self.refresh_ahead_idle),
            },
            max_range_days: self.max_range_days,
            redis_url: self
                .redis_url
                .filter(|u| !u.expose_secret().trim().is_empty()),
            replicas: self.gateway_replicas,
            disk: self
                .cache_dir
                .filter(|d| !d.as_os_str().is_empty())
                .map(|dir| DiskSettings {
                    dir,
                    max_bytes: self.cache_disk_max_bytes,
                }),
            csv_formula_escape: self.csv_formula_escape,
            job_ttl: self.job_ttl,
            shutdown_grace: self.shutdown_grace,
            feed: FeedSettings {
                interval: self.feed_interval.max(Duration::from_secs(1)),
                lookback: self.feed_lookback.max(Duration::from_secs(60)),
                retention: self.feed_retention.max(Duration::from_secs(60)),
                max_subscribers_per_key: self.feed_max_subscribers_per_key as usize,
                ..FeedSettings::default()
            },
        })
    }
}

fn non_empty(v: Option<String>, setting: &'static str) -> Result<String, ConfigError> {
    match v.map(|s| s.trim().to_owned()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(missing(setting)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_reject() {
        assert_eq!(
            "60/min".parse::<Rate>().unwrap(),
            Rate {
                calls: 60,
                period: Duration::from_secs(60)
            }
        );
        assert_eq!(
            "5/s".parse::<Rate>().unwrap(),
            Rate {
                calls: 5,
                period: Duration::from_secs(1)
            }
        );
        for bad in ["60", "0/min", "x/min", "60/week", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "s", "1.5s", "10y"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse_duration("3650d").unwrap(), MAX_SETTING_DURATION);
        // Too long for the clock: refused, never saturated.
        for too_long in [
            "3651d",
            "87601h",
            "10000000000000d",
            "300000000000000000d",
            "99999999999999999999999",
            "18446744073709551615ms",
        ] {
            let err = parse_duration(too_long).expect_err(too_long);
            assert!(err.contains("longer than 3650d"), "{too_long}: {err}");
        }
    }

    #[test]
    fn api_keys_parse_and_never_debug_print_the_key() {
        let keys = parse_api_keys("team-a:aaaaaaaa1, admin-ops:bbbbbbbb2").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(!keys[0].is_admin());
        assert!(keys[1].is_admin());
        let dbg = format!("{keys:?}");
        assert!(
            !dbg.contains("aaaaaaaa1") && !dbg.contains("bbbbbbbb2"),
            "{dbg}"
        );
        assert!(parse_api_keys("a:short").is_err());
        assert!(parse_api_keys("a:aaaaaaaa1,a:bbbbbbbb2").is_err());
        assert!(parse_api_keys("a:aaaaaaaa1,b:aaaaaaaa1").is_err());
        assert!(parse_api_keys("nokey").is_err());
    }

    #[test]
    fn missing_setting_is_named_and_secret_stays_out_of_debug() {
        let cli =
            Cli::try_parse_from(["kore-gateway", "--kore-client-secret", "s3cr3t-value"]).unwrap();
        assert!(!format!("{cli:?}").contains("s3cr3t-value"));
        let err = cli.into_settings().unwrap_err();
        assert_eq!(err.setting, "KORE_BASE_URL");
    }
}

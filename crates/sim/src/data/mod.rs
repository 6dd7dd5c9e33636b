//! The simulator's dataset: a deterministic, synthetic contact-centre history.
//!
//! The data is a pure function of `(seed, UTC hour)`: each hour's record count and every
//! record in it are derived from a hash of the hour index, so any range can be answered by
//! generating only the hours it touches, and tests can recompute the truth at will.
//! Each record exists first as a small [`Skel`] (id, start, and the fields the vendor
//! filters on); the full JSON is only built for the records a page actually returns.
//!
//! Times are stored in UTC. Rendering for a request rewrites every string that is exactly a
//! `YYYY-MM-DDTHH:MM:SS` datetime into the request's local time, which is how the vendor
//! reports record times (local to `timeZoneOffset`, without a zone suffix).

use std::{
    fmt::Write as _,
    sync::{Arc, OnceLock},
};

use fastrand::Rng;
use serde_json::{Map, Value, json};

use super::render::Template;

/// The record filters of a request; an empty list means "no filter".
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) channels: Vec<String>,
    pub(crate) queues: Vec<String>,
    pub(crate) bots: Vec<String>,
}

impl Filter {
    fn matches(&self, s: &Skel) -> bool {
        (self.channels.is_empty() || self.channels.iter().any(|c| c == s.channel()))
            && (self.bots.is_empty() || self.bots.iter().any(|b| b == s.bot()))
            && (self.queues.is_empty() || s.queue_ids().any(|q| self.queues.iter().any(|f| f == q)))
    }
}

// ---------------------------------------------------------------------------------------
// Static vocabulary. Ids are shaped like the vendor's (type-prefixed GUIDs); names include
// non-ASCII and quote/backslash characters so the gateway's pass-through is really tested.

const CHANNELS: [&str; 5] = ["voice", "chat", "rtm", "email", "sms"];
const FEEDBACK: [&str; 6] = [
    "Très bien 👍",
    "slow \"hold\" music",
    "ok",
    "=HYPERLINK(\"https://example.com/refund\",\"refund\")",
    "-- nothing to add",
    "@agent was great",
];

const BOTS: [&str; 3] = [
    "st-4b6a22d1-b8e5-533d-8020-93f847a9c0de",
    "st-bdc0f473-406d-59bd-bd15-0d1b80af5e11",
    "st-7e2c9a10-3f4b-5c6d-8e9f-a1b2c3d4e5f6",
];

const QUEUES: [(&str, &str); 4] = [
    ("qu-04e6978-6011-49d6-929d-cd715080a1b2", "Default Queue"),
    (
        "qu-123dbe9-c752-464d-a9be-1d0e43b6c3d4",
        "Residential – Sales",
    ),
    (
        "qu-5a7f0c2-88d1-4e3a-b9c4-2f6e1d0a9b87",
        "Billing & Payments",
    ),
    ("qu-9c3e4b1-1a2b-4c5d-8e7f-6a5b4c3d2e1f", "Soporte Técnico"),
];

/// (agentId, name, email)
const AGENTS: [(&str, &str, &str); 8] = [
    (
        "u-0b7f0d22-4311-5555-9ed6-861c9231a001",
        "John Doe",
        "john.doe@domain.com",
    ),
    (
        "u-1c8e1e33-5422-4666-8fe7-972d0342b002",
        "Zoë Ñúñez",
        "zoe.nunez@domain.com",
    ),
    (
        "u-2d9f2f44-6533-4777-90f8-a83e1453c003",
        "山田 太郎",
        "taro.yamada@domain.com",
    ),
    (
        "u-3ea03055-7644-4888-a109-b94f2564d004",
        "Diarmuid O’Scannlain",
        "di.oscannlain@domain.com",
    ),
    (
        "u-4fb14166-8755-4999-b21a-ca503675e005",
        "Priya Raghunathan",
        "priya.r@domain.com",
    ),
    (
        "u-50c25277-9866-4aaa-c32b-db614786f006",
        "Kwame \"KJ\" Mensah",
        "kwame.mensah@domain.com",
    ),
    (
        "u-61d36388-a977-4bbb-d43c-ec725897a007",
        "Ana-María Łukasiewicz",
        "ana.lukasiewicz@domain.com",
    ),
    (
        "u-72e47499-ba88-4ccc-e54d-fd8369a8b008",
        "Jared Smith",
        "jared.smith@domain.com",
    ),
];

/// (first, last) customer names, a few awkward on purpose.
const CUSTOMERS: [(&str, &str); 10] = [
    ("John", "Doe"),
    ("Jane", "Doe"),
    ("John", "Smith"),
    ("Zoë", "Ñúñez"),
    ("花子", "山田"),
    ("Seán", "O'Brien \"Jr.\""),
    ("Back\\slash", "Tester"),
    ("Amélie", "Dubois"),
    ("", ""),
    ("Олег", "Петров"),
];

const SKILLS: [(&str, &str); 4] = [
    ("64c0d4eb3642d2755604a1b2", "Reporting"),
    ("64c0d5353642d2755604c3d4", "Platinum Customer"),
    ("64c0d5a83642d2755604e5f6", "Billing"),
    ("64c0d6113642d27556040718", "Español"),
];

const ORG_ID: &str = "o-2b41857b-a1cb-5862-8faf-e3d99c3a7d10";
const ACCOUNT_PREFIX: &str = "66bc4a29bdaafdb08461c0de";
const CENTER_PHONE: &str = "+1987654321";

/// Mean records per UTC hour of an ordinary weekday (sums to ~55 a day), busiest in
/// business hours.
const HOURLY_MEAN: [f32; 24] = [
    0.6, 0.5, 0.4, 0.4, 0.5, 0.8, 1.2, 2.0, 3.2, 4.2, 4.6, 4.6, 4.2, 4.4, 4.6, 4.4, 3.8, 3.0, 2.2,
    1.6, 1.2, 1.0, 0.8, 0.7,
];
/// A campaign day carries this many times an ordinary weekday (~2,000 records).
const DENSE_FACTOR: f32 = 36.0;
const WEEKEND_FACTOR: f32 = 0.75;
/// Share of agent conversations among all records.
const CONVERSATION_SHARE: f32 = 0.4;

// Stream tags keep the different random draws of one hour/record independent.
const TAG_DAY: u64 = 0xD1;
const TAG_HOUR: u64 = 0xB0;
const TAG_SKEL: u64 = 0x5E;
const TAG_BODY: u64 = 0xF0;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn mix(seed: u64, a: i64, tag: u64) -> u64 {
    splitmix(splitmix(seed ^ tag.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) ^ a as u64)
}

// ---------------------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, H. Hinnant's algorithms). Hand-rolled because it
// sits on the per-record rendering path, where it must cost nanoseconds.

/// Days since 1970-01-01 of a civil date.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DDTHH:MM:SS` for Unix seconds read as a wall clock, as fixed-width bytes;
/// `None` outside years 0000–9999, where the width would change.
pub(crate) fn datetime_bytes(secs: i64) -> Option<[u8; 19]> {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&y) {
        return None;
    }
    let s = secs.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: i64| {
        for k in (at..at + width).rev() {
            out[k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, s / 3600);
    put(14, 2, s / 60 % 60);
    put(17, 2, s % 60);
    Some(out)
}

/// `YYYY-MM-DDTHH:MM:SS` for Unix seconds, read as a wall clock.
pub(crate) fn format_datetime(secs: i64) -> String {
    match datetime_bytes(secs) {
        Some(b) => b.iter().map(|&c| char::from(c)).collect(),
        None => {
            // Years beyond four digits: still readable, just not fixed-width.
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let s = secs.rem_euclid(86_400);
            let mut out = String::new();
            let _ = write!(
                out,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            out
        }
    }
}

/// Unix seconds of a string that is exactly `YYYY-MM-DDTHH:MM:SS` with plausible fields.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        b[range].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Shifts every datetime string anywhere in `v` by `delta` seconds.
pub(crate) fn shift_datetimes(v: &mut Value, delta: i64) {
    match v {
        Value::String(s) => {
            if let Some(t) = parse_datetime(s) {
                *s = format_datetime(t + delta);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| shift_datetimes(x, delta)),
        Value::Object(map) => map.values_mut().for_each(|x| shift_datetimes(x, delta)),
        _ => {}
    }
}

/// Whether a UTC day is a "campaign" day carrying ~2,000 records instead of ~55.
pub(crate) fn is_dense_day_index(day: i64) -> bool {
    day.rem_euclid(17) == 5
}

// ---------------------------------------------------------------------------------------
// Seed records: the vendor's five sample records, at their real instants.

pub(crate) const SAMPLE_JSON: &str = include_str!("../sample-records.json");
/// The sample's times are IST (UTC+05:30), i.e. `timeZoneOffset` -330.
const SAMPLE_OFFSET_MINUTES: i64 = -330;

/// A sample record stored in UTC with its filterable fields extracted once.
#[derive(Debug)]
pub(crate) struct SeedRec {
    id: String,
    start: i64,
    channel: String,
    bot: String,
    queues: Vec<String>,
    template: Arc<Template>,
}

fn seeds() -> &'static [SeedRec] {
    static SEEDS: OnceLock<Vec<SeedRec>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        // The file is embedded at compile time and checked by the tests; it is not input.
        let records: Vec<Value> =
            serde_json::from_str(SAMPLE_JSON).expect("embedded sample-records.json is valid JSON");
        records
            .into_iter()
            .filter_map(|mut utc| {
                // local + offset minutes = UTC
                shift_datetimes(&mut utc, SAMPLE_OFFSET_MINUTES * 60);
                let text = |k: &str| {
                    utc.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let start = parse_datetime(utc.get("sessionStartTime")?.as_str()?)?;
                let queues = utc
                    .get("destinations")
                    .and_then(Value::as_array)
                    .map(|ds| {
                        ds.iter()
                            .filter_map(|d| {
                                d.get("queueId").and_then(Value::as_str).map(str::to_owned)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(SeedRec {
                    id: text("sessionId"),
                    start,
                    channel: text("channel"),
                    bot: text("botId"),
                    queues,
                    template: Arc::new(Template::new(&utc)),
                })
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------
// Skeletons.

/// How an agent conversation ended; decided with the skeleton because it fixes how many
/// queues the record visits (and so whether a `queues` filter matches it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not a conversation: a session that stayed with the bot.
    Bot,
    Answered,
    AbandonedInQueue,
    NoAgents,
    Voicemail,
}

/// A generated record, reduced to what sorting and filtering need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenSkel {
    hour: i64,
    idx: u16,
    start: i64,
    id: [u8; 24],
    outcome: Outcome,
    channel: u8,
    bot: u8,
    queues: [u8; 2],
    n_queues: u8,
}

/// One record of the dataset, cheap to generate, sort and filter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Skel {
    Gen(GenSkel),
    Seed(&'static SeedRec),
}

impl Skel {
    /// The `sessionId` as bytes (the simulator's page order).
    pub(crate) fn id(&self) -> &[u8] {
        match self {
            Skel::Gen(g) => &g.id,
            Skel::Seed(s) => s.id.as_bytes(),
        }
    }

    /// `sessionStartTime` as Unix seconds (UTC).
    pub(crate) fn start(&self) -> i64 {
        match self {
            Skel::Gen(g) => g.start,
            Skel::Seed(s) => s.start,
        }
    }

    /// Identifies a generated record in the template cache; `None` for a sample record.
    pub(crate) fn cache_key(&self) -> Option<(i64, u16)> {
        match self {
            Skel::Gen(g) => Some((g.hour, g.idx)),
            Skel::Seed(_) => None,
        }
    }

    /// A sample record's template (built once, at first use).
    pub(crate) fn seed_template(&self) -> Option<Arc<Template>> {
        match self {
            Skel::Gen(_) => None,
            Skel::Seed(s) => Some(Arc::clone(&s.template)),
        }
    }

    fn channel(&self) -> &str {
        match self {
            Skel::Gen(g) => CHANNELS[usize::from(g.channel)],
            Skel::Seed(s) => &s.channel,
        }
    }

    fn bot(&self) -> &str {
        match self {
            Skel::Gen(g) => BOTS[usize::from(g.bot)],
            Skel::Seed(s) => &s.bot,
        }
    }

    fn queue_ids(&self) -> impl Iterator<Item = &str> {
        let (generated, seeded): (&[u8], &[String]) = match self {
            Skel::Gen(g) => (&g.queues[..usize::from(g.n_queues)], &[]),
            Skel::Seed(s) => (&[], &s.queues),
        };
        generated
            .iter()
            .map(|&q| QUEUES[usize::from(q)].0)
            .chain(seeded.iter().map(String::as_str))
    }
}

/// Weighted pick: `weights` need not sum to 1.
fn pick(rng: &mut Rng, weights: &[f32]) -> usize {
    let total: f32 = weights.iter().sum();
    let mut x = rng.f32() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// How many generated records start in UTC hour `hour` (hours since the Unix epoch).
pub(crate) fn hour_count(seed: u64, hour: i64) -> u32 {
    let day = hour.div_euclid(24);
    let hod = hour.rem_euclid(24) as usize;
    let day_factor = 0.85 + 0.3 * Rng::with_seed(mix(seed, day, TAG_DAY)).f32();
    // 1970-01-01 was a Thursday; 0 = Sunday.
    let weekday = (day + 4).rem_euclid(7);
    let dense = is_dense_day_index(day);
    let factor = if dense {
        DENSE_FACTOR
    } else if weekday == 0 || weekday == 6 {
        WEEKEND_FACTOR
    } else {
        1.0
    };
    let mut rng = Rng::with_seed(mix(seed, hour, TAG_HOUR));
    // Campaign hours vary less, so every campaign day reliably overflows one query.
    let jitter = if dense {
        0.8 + 0.4 * rng.f32()
    } else {
        0.5 + rng.f32()
    };
    let mean = HOURLY_MEAN[hod] * day_factor * factor * jitter;
    mean.floor() as u32 + u32::from(rng.f32() < mean.fract())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn gen_skel(seed: u64, hour: i64, idx: u16) -> GenSkel {
    let mut rng = Rng::with_seed(mix(seed, (hour << 16) | i64::from(idx), TAG_SKEL));
    // Unique by construction: the low 64 bits are a bijection of (hour, idx) for a given
    // seed. The high 32 bits are noise so the id order is unrelated to time.
    let unique = splitmix((((hour as u64) << 16) | u64::from(idx)) ^ splitmix(seed));
    let id_bits = (u128::from(rng.u32(..)) << 64) | u128::from(unique);
    let mut id = [0u8; 24];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((id_bits >> (4 * (23 - i))) & 0xF) as usize];
    }
    let start = hour * 3600 + i64::from(rng.u32(0..3600));
    let conversation = rng.f32() < CONVERSATION_SHARE;
    let (outcome, channel) = if conversation {
        let outcome = match pick(&mut rng, &[0.70, 0.15, 0.10, 0.05]) {
            0 => Outcome::Answered,
            1 => Outcome::AbandonedInQueue,
            2 => Outcome::NoAgents,
            _ => Outcome::Voicemail,
        };
        let channel = if outcome == Outcome::Voicemail {
            0
        } else {
            pick(&mut rng, &[0.50, 0.25, 0.05, 0.10, 0.10])
        };
        (outcome, channel)
    } else {
        (Outcome::Bot, pick(&mut rng, &[0.45, 0.15, 0.30, 0.0, 0.10]))
    };
    let bot = pick(&mut rng, &[0.6, 0.3, 0.1]) as u8;
    let mut queues = [0u8; 2];
    let n_queues = match outcome {
        Outcome::Bot | Outcome::NoAgents => 0,
        // A transfer: the customer visits a second queue after the first agent.
        Outcome::Answered if rng.f32() < 0.1 => 2,
        _ => 1,
    };
    for q in queues.iter_mut().take(usize::from(n_queues)) {
        *q = pick(&mut rng, &[0.4, 0.25, 0.25, 0.1]) as u8;
    }
    if n_queues == 2 && queues[0] == queues[1] {
        queues[1] = (queues[0] + 1) % QUEUES.len() as u8;
    }
    GenSkel {
        hour,
        idx,
        start,
        id,
        outcome,
        channel: channel as u8,
        bot,
        queues,
        n_queues,
    }
}

/// Every record whose `sessionStartTime` lies in `[start, end]` (Unix seconds, inclusive)
/// and passes `filter`, sorted by `sessionId`.
#[cfg(test)]
pub(crate) fn matching(seed: u64, start: i64, end: i64, filter: &Filter) -> Vec<Skel> {
    matching_at_volume(seed, 1, start, end, filter)
}

/// [`matching`] with every hour's count multiplied by `volume` (a busier account).
pub(crate) fn matching_at_volume(
    seed: u64,
    volume: u32,
    start: i64,
    end: i64,
    filter: &Filter,
) -> Vec<Skel> {
    let mut out = Vec::new();
    if end < start {
        return out;
    }
    for hour in start.div_euclid(3600)..=end.div_euclid(3600) {
        // Hour counts stay far below u16::MAX (~250 at the busiest) unless `volume` is large.
        let count = hour_count(seed, hour)
            .saturating_mul(volume.max(1))
            .min(u32::from(u16::MAX)) as u16;
        for idx in 0..count {
            let s = Skel::Gen(gen_skel(seed, hour, idx));
            if (start..=end).contains(&s.start()) && filter.matches(&s) {
                out.push(s);
            }
        }
    }
    for seed_rec in seeds() {
        let s = Skel::Seed(seed_rec);
        if (start..=end).contains(&s.start()) && filter.matches(&s) {
            out.push(s);
        }
    }
    out.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    out
}

/// The five vendor sample records, as published (IST).
pub(crate) fn sample_values() -> Vec<Value> {
    serde_json::from_str(SAMPLE_JSON).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Full records.

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| char::from(HEX[rng.usize(..16)])).collect()
}

/// A type-prefixed GUID like the vendor's (`c-` ids have a 7-digit first group).
fn guid(rng: &mut Rng, prefix: &str, first: usize) -> String {
    format!(
        "{prefix}{}-{}-{}-{}-{}",
        hex(rng, first),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
}

fn phone(rng: &mut Rng) -> String {
    format!("+1{}", rng.u64(2_000_000_000..9_999_999_999))
}

fn customer_info(rng: &mut Rng, direction: Option<&str>) -> (Value, &'static str, &'static str) {
    let (first, last) = CUSTOMERS[rng.usize(..CUSTOMERS.len())];
    let email = if first.is_empty() {
        String::new()
    } else {
        format!("customer{}@example.com", rng.u32(1000..99_999))
    };
    let mut info = Map::new();
    info.insert(
        "CustomerPhone".into(),
        json!(if rng.bool() {
            phone(rng)
        } else {
            String::new()
        }),
    );
    info.insert("CenterPhone".into(), json!(CENTER_PHONE));
    if let Some(d) = direction {
        info.insert("Direction".into(), json!(d));
    }
    info.insert("CustomerFirstName".into(), json!(first));
    info.insert("CustomerLastName".into(), json!(last));
    info.insert("CustomerEmail".into(), json!(email));
    (Value::Object(info), first, last)
}

fn session_tags(rng: &mut Rng, channel: &str) -> Value {
    if channel == "voice" {
        json!([
            { "name": "audioCodesCallDisconnect", "value": "1" },
            { "name": "callerNumber", "value": phone(rng) },
            { "name": "welcomeMessageTwilio", "value": "1" }
        ])
    } else if rng.f32() < 0.3 {
        let entry = if rng.bool() {
            "web-widget"
        } else {
            "mobile-app"
        };
        json!([{ "name": "entryPoint", "value": entry }])
    } else {
        json!([])
    }
}

fn user_tags(rng: &mut Rng) -> Value {
    if rng.f32() < 0.35 {
        let tier = ["gold", "silver", "bronze"][rng.usize(..3)];
        json!([
            { "name": "accountnum", "value": format!("{}", rng.u64(100_000_000_000..999_999_999_999)) },
            { "name": "tier", "value": tier }
        ])
    } else {
        json!([])
    }
}

fn custom_field(rng: &mut Rng) -> Option<Value> {
    // An occasional field the vendor documentation does not know: must pass through.
    (rng.f32() < 0.03).then(|| {
        json!({
            "source": "crm-sync",
            "weights": [1, -2, 3],
            "note": "line one\nline two\t\"quoted\" \\ done",
            "nested": { "empty": {}, "null": null, "flag": false, "ratio": 0.25 }
        })
    })
}

/// The full record behind a skeleton, times in UTC (`Null` for a sample record, whose
/// template is prebuilt).
pub(crate) fn build_utc(seed: u64, skel: &Skel) -> Value {
    match skel {
        Skel::Gen(g) => build(seed, g),
        Skel::Seed(_) => Value::Null,
    }
}

fn build(seed: u64, g: &GenSkel) -> Value {
    let mut rng = Rng::with_seed(mix(seed, (g.hour << 16) | i64::from(g.idx), TAG_BODY));
    let id = String::from_utf8_lossy(&g.id).into_owned();
    let channel = CHANNELS[usize::from(g.channel)];
    let bot = BOTS[usize::from(g.bot)];
    let user_id = guid(&mut rng, "u-", 8);
    let mut r = Map::new();
    if g.outcome == Outcome::Bot {
        let end = g.start + i64::from(rng.u32(1..if channel == "voice" { 900 } else { 400 }));
        let (info, _, _) = customer_info(&mut rng, Some("Inbound"));
        r.insert("sessionId".into(), json!(id));
        r.insert("channel".into(), json!(channel));
        r.insert("sessionStartTime".into(), json!(format_datetime(g.start)));
        r.insert("sessionEndTime".into(), json!(format_datetime(end)));
        r.insert("botId".into(), json!(bot));
        r.insert("userId".into(), json!(user_id));
        r.insert(
            "channelSpecificUserId".into(),
            json!(format!("{ACCOUNT_PREFIX}/{}", guid(&mut rng, "", 8))),
        );
        r.insert("orgId".into(), json!(ORG_ID));
        let smart = [
            "CLOSED AT BOT",
            "CLOSED AT BOT",
            "CLOSED AT BOT",
            "TERMINATED",
        ][rng.usize(..4)];
        r.insert("smartStatus".into(), json!(smart));
        // The vendor's sample omits finalStatus on some bot sessions.
        if rng.f32() < 0.8 {
            r.insert(
                "finalStatus".into(),
                json!(["Dropped", "Completed", "Completed"][rng.usize(..3)]),
            );
        }
        r.insert("customerinfo".into(), info);
        r.insert("skills".into(), json!([]));
        r.insert("userleveltags".into(), user_tags(&mut rng));
        r.insert("sessionleveltags".into(), session_tags(&mut rng, channel));
        if let Some(x) = custom_field(&mut rng) {
            r.insert("x_customField".into(), x);
        }
        return Value::Object(r);
    }

    let direction = if rng.f32() < 0.85 {
        "Inbound"
    } else {
        "Outbound"
    };
    let (info, first, last) = customer_info(&mut rng, None);
    let conv_id = guid(&mut rng, "c-", 7);
    let n_skills = rng.usize(0..3);
    let skills: Vec<Value> = (0..n_skills)
        .map(|i| {
            let (sid, name) = SKILLS[(i + rng.usize(..SKILLS.len())) % SKILLS.len()];
            json!({ "id": sid, "name": name })
        })
        .collect();

    // Walk the conversation's timeline: bot triage, queue wait, agent(s), wrap-up.
    let mut t = g.start + i64::from(rng.u32(5..90));
    let mut destinations = Vec::new();
    let mut answered_by = None;
    for q in 0..usize::from(g.n_queues) {
        let (queue_id, queue_name) = QUEUES[usize::from(g.queues[q])];
        let enter = t;
        let mut d = Map::new();
        d.insert("destinationType".into(), json!("QueueEntry"));
        d.insert("queueId".into(), json!(queue_id));
        d.insert("queueName".into(), json!(queue_name));
        d.insert("EnterTime".into(), json!(format_datetime(enter)));
        let agent_i = rng.usize(..AGENTS.len());
        let wait = i64::from(rng.u32(5..300));
        if rng.f32() < 0.2 {
            let (aid, name, email) = AGENTS[(agent_i + 1) % AGENTS.len()];
            d.insert(
                "nonRespondingAgents".into(),
                json!([{ "agentId": aid, "name": name, "email": email,
                         "assignedAt": format_datetime(enter + wait / 2) }]),
            );
        }
        if g.outcome == Outcome::Answered {
            let (aid, name, email) = AGENTS[agent_i];
            let assigned = enter + wait;
            let accepted = assigned + i64::from(rng.u32(2..20));
            let first_resp = i64::from(rng.u32(0..30));
            let duration = i64::from(rng.u32(30..1200));
            let interaction_end = accepted + duration;
            let acw = i64::from(rng.u32(0..120));
            let notes: Vec<&str> = if rng.f32() < 0.3 {
                vec!["CUSTOMER asked about \"late fee\" on invoice \\ INV-2291."]
            } else {
                vec![]
            };
            d.insert(
                "respondingAgent".into(),
                json!({
                    "agentId": aid,
                    "agentNotes": notes,
                    "destinationType": "AgentSegment",
                    "status": "Answered",
                    "firstResponseTime": format_datetime(accepted + first_resp),
                    "firstResponseDuration": first_resp,
                    "interactionEndTime": format_datetime(interaction_end),
                    "interactionDuration": duration,
                    "afterCallWorkDuration": acw,
                    "afterCallWorkEndTime": format_datetime(interaction_end + acw),
                    "ConsultingAgents": [],
                    "JoinedUsers": [],
                    "email": email,
                    "name": name,
                    "acceptedTime": format_datetime(accepted),
                    "assignedAt": format_datetime(assigned),
                }),
            );
            answered_by = Some(name);
            t = interaction_end;
        } else {
            t = enter + wait;
        }
        destinations.push(Value::Object(d));
    }
    let end = t + i64::from(rng.u32(1..30));

    let (final_status, smart, detail, dispositions): (&str, &str, &str, Vec<&str>) = match g.outcome
    {
        Outcome::Answered => {
            if rng.f32() < 0.03 {
                ("ACTIVE", "", "", vec![])
            } else {
                let disp = ["RESOLVED", "ESCALATED", "CALLBACK REQUESTED", "SALE"][rng.usize(..4)];
                ("CLOSED", "RESOLVED", "", vec![disp])
            }
        }
        Outcome::AbandonedInQueue => (
            "CLOSED",
            "ABANDONED",
            "CUSTOMER ABANDONED",
            vec!["DROP-OFF"],
        ),
        Outcome::NoAgents => (
            "CLOSED",
            "TERMINATED",
            "NO AGENTS AVAILABLE",
            vec!["DROP-OFF"],
        ),
        Outcome::Voicemail | Outcome::Bot => {
            ("CLOSED", "VOICEMAIL", "VOICEMAIL LEFT", vec!["VOICEMAIL"])
        }
    };
    let remarks: Vec<String> = match answered_by {
        Some(agent) if rng.f32() < 0.4 => {
            vec![format!(
                "CUSTOMER needs help with \"{}\"; {agent} followed up \\ closed.",
                first
            )]
        }
        _ => vec![],
    };
    let csu = if channel == "voice" {
        format!("{ACCOUNT_PREFIX}/korevg/{}", guid(&mut rng, "", 8))
    } else {
        format!("{ACCOUNT_PREFIX}/agentassist/{}", conv_id)
    };
    let mut meta = Map::new();
    if channel == "voice" {
        let caller = phone(&mut rng);
        meta.insert("caller".into(), json!(caller));
        meta.insert("callee".into(), json!(CENTER_PHONE));
        meta.insert(
            "callerHost".into(),
            json!(format!("50.19.{}.{}", rng.u8(..), rng.u8(..))),
        );
        meta.insert("dialedNumber".into(), json!(CENTER_PHONE));
    }
    meta.insert("userId".into(), json!(user_id));
    meta.insert(
        "workinghours".into(),
        json!({ "workdays": "mon,tue,wed,thu,fri", "workstart": "8:00 AM", "workend": "5:00 PM" }),
    );
    meta.insert("profImage".into(), json!("no-avatar"));
    meta.insert(
        "profColour".into(),
        json!(["#ff0000", "#add8e6", "#90ee90"][rng.usize(..3)]),
    );
    meta.insert("jTitle".into(), json!(""));
    meta.insert("dept".into(), json!(""));
    meta.insert("activationStatus".into(), json!("active"));
    meta.insert("firstName".into(), json!(first));
    meta.insert("lastName".into(), json!(last));
    meta.insert("orgId".into(), json!(ORG_ID));
    meta.insert("_id".into(), json!(user_id));
    meta.insert(
        "identities".into(),
        json!([{ "val": csu, "type": "mapped" }]),
    );
    meta.insert(
        "agentTransferConfig".into(),
        json!({
            "skillsIds": [],
            "overrideAgents": false,
            "overrideValues": [],
            "assistEvents": { "startEvent": { "isEnabled": false } },
            "lastIntentName": "ConnectToAgent",
            "automationBotId": bot,
        }),
    );

    r.insert("conversationId".into(), json!(conv_id));
    r.insert("sessionId".into(), json!(id));
    r.insert("channel".into(), json!(channel));
    r.insert(
        "isVoicemail".into(),
        json!(if g.outcome == Outcome::Voicemail {
            "YES"
        } else {
            "NO"
        }),
    );
    r.insert("Direction".into(), json!(direction));
    r.insert("skills".into(), Value::Array(skills));
    r.insert("finalStatus".into(), json!(final_status));
    r.insert("smartStatus".into(), json!(smart));
    r.insert("statusDetail".into(), json!(detail));
    r.insert("botId".into(), json!(bot));
    r.insert("dispositions".into(), json!(dispositions));
    r.insert("dispositionRemarks".into(), json!(remarks));
    r.insert("metaInfo".into(), Value::Object(meta));
    r.insert("customerinfo".into(), info);
    r.insert("sessionStartTime".into(), json!(format_datetime(g.start)));
    r.insert("sessionEndTime".into(), json!(format_datetime(end)));
    r.insert("channelSpecificUserId".into(), json!(csu));
    r.insert("userId".into(), json!(user_id));
    r.insert("destinations".into(), Value::Array(destinations));
    r.insert("userleveltags".into(), user_tags(&mut rng));
    r.insert("sessionleveltags".into(), session_tags(&mut rng, channel));
    if g.outcome == Outcome::Answered && rng.f32() < 0.3 {
        r.insert("csatScore".into(), json!(rng.u8(1..=5)));
        if rng.bool() {
            r.insert(
                "csatFeedback".into(),
                // Free text typed by customers, including what a spreadsheet would run as a
                // formula (the CSV output must defuse it) and a plain leading dash.
                json!(FEEDBACK[rng.usize(..FEEDBACK.len())]),
            );
        }
    }
    if let Some(x) = custom_field(&mut rng) {
        r.insert("x_customField".into(), x);
    }
    Value::Object(r)
}

#[cfg(test)]
mod tests;

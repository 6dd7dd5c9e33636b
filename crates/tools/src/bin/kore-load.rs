//! `kore-load`: a bounded load and soak driver for a running gateway, on loopback.
//!
//! `--clients` tasks each send requests back to back for `--seconds`, drawn from a fixed mix:
//!
//! * **hits** — a handful of repeated queries (answered from the response cache after the
//!   first), some with `If-None-Match` so the 304 path is exercised too;
//! * **misses** — varied ranges, zones, filters, page sizes and formats (JSON, NDJSON, CSV),
//!   plus the drop-in vendor route, so windows are planned, fetched and merged;
//! * **bad** — malformed or unauthenticated requests that must be refused with a 4xx.
//!
//! Each request kind has the statuses it may get; anything else — a 5xx (bar 503 with
//! `--allow-503`, for runs against a deliberately small upstream budget), a 2xx where a 4xx
//! was due or the reverse, a JSON answer not marked complete, a body cut short, a transport
//! error — is *unexpected*, counted and shown. The exit status is non-zero when any was seen.
//!
//! The closing line is one `key=value` summary for scripts (`ci/load.sh` parses it).

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;

/// Load the gateway with a mix of cache hits, misses and bad requests.
#[derive(Debug, Parser)]
#[command(name = "kore-load")]
struct Args {
    /// Base URL of the gateway (loopback only), e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    url: String,
    /// API key to send as `Authorization: Bearer`.
    #[arg(long)]
    key: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Account id for the drop-in vendor route (the demo simulator's by default).
    #[arg(long, default_value = "66bc4a29bdaafdb08461de30")]
    account: String,
    /// Treat 503 (upstream budget exhausted) as expected: for runs against a small budget.
    #[arg(long)]
    allow_503: bool,
    /// Hard cap on requests across all clients, whatever the time left.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Seed of the request mix (each client derives its own from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Which part of the mix a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Hit,
    Miss,
    Bad,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Bad => "bad",
        }
    }
}

/// One request to send, and what it may get back.
struct Planned {
    kind: Kind,
    method: reqwest::Method,
    path: String,
    key: Option<String>,
    body: Option<&'static str>,
    if_none_match: Option<String>,
    expect: &'static [u16],
    /// A JSON 200 must carry `"complete":true`.
    check_complete: bool,
}

/// The repeated queries: each is asked by every client, so all but the first are hits.
const HITS: [&str; 5] = [
    "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=Asia/Kolkata&limit=20",
    "/v1/interactions?from=2024-09-01&to=2024-09-07&tz=Asia/Kolkata&limit=50",
    "/v1/interactions?from=2024-11-01&to=2024-11-05&tz=America/New_York&channels=voice&limit=10",
    "/v1/interactions?from=2024-06-10&to=2024-06-12&tz=UTC&fields=skills&limit=100",
    "/v1/interactions?from=2024-03-28T06:00&to=2024-03-31T18:30&tz=Europe/London&limit=25",
];

const ZONES: [&str; 10] = [
    "UTC",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "%2B05:30",
    "-04:00",
    "Z",
];
const CHANNELS: [&str; 4] = ["voice", "chat", "email", "sms"];
const FIELDS: [&str; 4] = [
    "skills",
    "userleveltags",
    "sessionleveltags",
    "customerinfo",
];

/// Requests that must be refused, with the status each must get.
const BAD: [(&str, u16); 14] = [
    ("/v1/interactions?to=2024-09-02", 400),
    ("/v1/interactions?from=2024-09-03&to=2024-09-02", 400),
    ("/v1/interactions?from=2024-02-30&to=2024-03-02", 400),
    ("/v1/interactions?from=2024-01-01&to=2024-12-31", 400),
    ("/v1/interactions?from=1900-01-01&to=1900-01-02", 400),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&tz=Mars/Olympus",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&tz=%2B15:00",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&limit=0",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&limit=99999999999999999999",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&fields=bogus",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&format=xml",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&cursor=AAAA",
        400,
    ),
    (
        "/v1/interactions?from=2024-09-01&to=2024-09-02&colour=red",
        400,
    ),
    ("/v1/no-such-route", 404),
];

const OK: &[u16] = &[200];
const OK_OR_304: &[u16] = &[200, 304];

/// What all clients saw, merged at the end.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<(Kind, String), u64>,
    latencies_us: Vec<u32>,
    by_kind_us: BTreeMap<Kind, Vec<u32>>,
    unexpected: u64,
    examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, kind: Kind, outcome: &str, elapsed: Duration) {
        *self
            .by_status
            .entry((kind, outcome.to_owned()))
            .or_default() += 1;
        let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(us);
        self.by_kind_us.entry(kind).or_default().push(us);
    }

    fn flag(&mut self, what: String) {
        self.unexpected += 1;
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.by_kind_us {
            self.by_kind_us.entry(k).or_default().extend(v);
        }
        self.unexpected += other.unexpected;
        for e in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
    }
}

/// The next request of one client.
fn next_request(rng: &mut fastrand::Rng, args: &Args, etags: &[Option<String>]) -> Planned {
    let roll = rng.u32(0..100);
    let key = Some(args.key.clone());
    if roll < 40 {
        let i = rng.usize(0..HITS.len());
        let inm = etags[i].clone().filter(|_| rng.u32(0..4) == 0);
        let expect = if inm.is_some() { OK_OR_304 } else { OK };
        return Planned {
            kind: Kind::Hit,
            method: reqwest::Method::GET,
            path: HITS[i].to_owned(),
            key,
            body: None,
            if_none_match: inm,
            expect,
            check_complete: true,
        };
    }
    if roll < 75 {
        if rng.u32(0..10) == 0 {
            return Planned {
                kind: Kind::Miss,
                method: reqwest::Method::POST,
                path: format!(
                    "/agentassist/api/public/analytics/account/{}/v2/interactionDetails?offset={}&limit={}",
                    args.account,
                    rng.u32(0..3),
                    rng.u32(1..=100)
                ),
                key,
                body: Some(
                    [
                        r#"{"startDate":"2024-09-20 00:00:00","endDate":"2024-09-26 23:59:59","timeZoneOffset":-330}"#,
                        r#"{"startDate":"2024-10-01","endDate":"2024-10-02","timeZoneOffset":240,"channels":["voice"]}"#,
                        r#"{"startDate":"2024-05-05","endDate":"2024-05-05","timeZoneOffset":0,"selectedFields":["skills"]}"#,
                    ][rng.usize(0..3)],
                ),
                if_none_match: None,
                expect: OK,
                check_complete: false,
            };
        }
        return Planned {
            kind: Kind::Miss,
            method: reqwest::Method::GET,
            path: miss_path(rng),
            key,
            body: None,
            if_none_match: None,
            expect: OK,
            check_complete: true,
        };
    }
    let (path, key, status): (String, Option<String>, u16) = match rng.u32(0..10) {
        0 => (HITS[0].to_owned(), None, 401),
        1 => (HITS[0].to_owned(), Some("not-a-key".into()), 401),
        2 => {
            return Planned {
                kind: Kind::Bad,
                method: reqwest::Method::POST,
                path: format!(
                    "/agentassist/api/public/analytics/account/{}/v2/interactionDetails",
                    args.account
                ),
                key,
                body: Some(
                    r#"{"startDate":"2024-09-20","endDate":"2024-09-30","timeZoneOffset":0}"#,
                ),
                if_none_match: None,
                expect: &[400],
                check_complete: false,
            };
        }
        _ => {
            let (p, s) = BAD[rng.usize(0..BAD.len())];
            (p.to_owned(), key, s)
        }
    };
    Planned {
        kind: Kind::Bad,
        method: reqwest::Method::GET,
        path,
        key,
        body: None,
        if_none_match: None,
        expect: match status {
            401 => &[401],
            404 => &[404],
            _ => &[400],
        },
        check_complete: false,
    }
}

/// A query unlikely to have been asked before: a random range of 1–7 days within
/// 2023–2025, a random zone, filters, page size and format.
fn miss_path(rng: &mut fastrand::Rng) -> String {
    let year = rng.i32(2023..=2025);
    let month = rng.u32(1..=12);
    let day = rng.u32(1..=28);
    let from = format!("{year:04}-{month:02}-{day:02}");
    let to = jiff::civil::date(year as i16, month as i8, day as i8)
        .checked_add(jiff::Span::new().days(i64::from(rng.u32(0..7))))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| from.clone());
    let mut path = format!(
        "/v1/interactions?from={from}&to={to}&tz={}&limit={}",
        ZONES[rng.usize(0..ZONES.len())],
        rng.u32(1..=200)
    );
    if rng.bool() {
        path.push_str("&channels=");
        path.push_str(CHANNELS[rng.usize(0..CHANNELS.len())]);
    }
    if rng.u32(0..3) == 0 {
        path.push_str("&fields=");
        path.push_str(FIELDS[rng.usize(0..FIELDS.len())]);
    }
    match rng.u32(0..10) {
        0 => path.push_str("&format=ndjson"),
        1 => path.push_str("&format=csv"),
        _ => {}
    }
    path
}

/// One client: requests back to back until the deadline or the shared cap.
async fn client(
    id: u32,
    http: reqwest::Client,
    args: Arc<Args>,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_mul(1_000_003) + u64::from(id));
    let mut etags: Vec<Option<String>> = vec![None; HITS.len()];
    let mut tally = Tally::default();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if sent.fetch_add(1, Ordering::Relaxed) >= args.max_requests {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        let p = next_request(&mut rng, &args, &etags);
        let mut req = http.request(p.method.clone(), format!("{}{}", args.url, p.path));
        if let Some(k) = &p.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = p.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        if let Some(e) = &p.if_none_match {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let started = Instant::now();
        let result = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let etag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read the whole body: a stream cut short is an error, not a success.
                resp.bytes().await.map(|body| (status, etag, body))
            }
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        match result {
            Ok((status, etag, body)) => {
                tally.record(p.kind, &status.to_string(), elapsed);
                let allowed = p.expect.contains(&status) || (status == 503 && args.allow_503);
                if !allowed {
                    let snippet: String =
                        String::from_utf8_lossy(&body).chars().take(200).collect();
                    tally.flag(format!(
                        "{} {} {} -> {status} (expected {:?}): {snippet}",
                        p.kind.as_str(),
                        p.method,
                        p.path,
                        p.expect
                    ));
                } else if status == 200 && p.check_complete && !p.path.contains("format=") {
                    if !complete(&body) {
                        let snippet: String =
                            String::from_utf8_lossy(&body).chars().take(200).collect();
                        tally.flag(format!(
                            "{} GET {} -> 200 but not a complete JSON answer: {snippet}",
                            p.kind.as_str(),
                            p.path
                        ));
                    } else if p.kind == Kind::Hit
                        && let Some(i) = HITS.iter().position(|h| *h == p.path)
                    {
                        etags[i] = etag;
                    }
                }
            }
            Err(e) => {
                tally.record(p.kind, "transport", elapsed);
                tally.flag(format!(
                    "{} {} {} -> transport error: {e}",
                    p.kind.as_str(),
                    p.method,
                    p.path
                ));
            }
        }
    }
    tally
}

/// Whether a JSON body is an envelope whose `meta.complete` is true.
fn complete(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        meta: Meta,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        complete: bool,
    }
    serde_json::from_slice::<Envelope>(body).is_ok_and(|e| e.meta.complete)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| match u.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !is_loopback(&args.url) {
        eprintln!(
            "kore-load: refusing {}: only loopback targets are allowed",
            args.url
        );
        return ExitCode::from(2);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kore-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .pool_max_idle_per_host(args.clients as usize)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kore-load: cannot build the HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let args = Arc::new(args);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for id in 0..args.clients {
        let (http, args, sent, stop, total) = (
            http.clone(),
            Arc::clone(&args),
            Arc::clone(&sent),
            Arc::clone(&stop),
            Arc::clone(&total),
        );
        tasks.push(tokio::spawn(async move {
            let t = client(id, http, args, deadline, sent, stop).await;
            total.lock().unwrap_or_else(|p| p.into_inner()).merge(t);
        }));
    }
    let mut panicked = 0;
    for t in tasks {
        if t.await.is_err() {
            panicked += 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    drop(http);
    let mut tally = std::mem::take(&mut *total.lock().unwrap_or_else(|p| p.into_inner()));
    tally.latencies_us.sort_unstable();
    let requests = tally.latencies_us.len() as u64;

    let mut by_kind: BTreeMap<Kind, BTreeMap<String, u64>> = BTreeMap::new();
    for ((kind, outcome), n) in &tally.by_status {
        by_kind
            .entry(*kind)
            .or_default()
            .insert(outcome.clone(), *n);
    }
    for (kind, outcomes) in &by_kind {
        let parts: Vec<String> = outcomes.iter().map(|(s, n)| format!("{s}:{n}")).collect();
        let mut lat = tally.by_kind_us.get(kind).cloned().unwrap_or_default();
        lat.sort_unstable();
        println!(
            "  {:<5} {:<40} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            kind.as_str(),
            parts.join(" "),
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            percentile(&lat, 100.0)
        );
    }
    for e in &tally.examples {
        println!("  UNEXPECTED {e}");
    }
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 {
        tally
            .by_status
            .iter()
            .filter(|((_, s), _)| pred(s))
            .map(|(_, n)| n)
            .sum()
    };
    let server_errors = count(&|s| s.starts_with('5'));
    let transport = count(&|s| s == "transport");
    println!(
        "kore-load: clients={} seconds={:.1} requests={requests} rps={:.0} unexpected={} server_errors={server_errors} transport_errors={transport} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.clients,
        wall,
        requests as f64 / wall.max(0.001),
        tally.unexpected + panicked,
        percentile(&tally.latencies_us, 50.0),
        percentile(&tally.latencies_us, 90.0),
        percentile(&tally.latencies_us, 99.0),
        percentile(&tally.latencies_us, 100.0),
    );
    if tally.unexpected + panicked > 0 || requests == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! The benchmarks' yardsticks: the vendor loop a user without the gateway writes, the
//! ground truth of what each window holds (hence the ideal number of round trips), and
//! small statistics helpers.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use jiff::{Timestamp, civil::Date, tz::TimeZone};
use kore_gateway::{
    plan::Window,
    upstream::{MAX_PAGE, MAX_REACH, PAGE_LIMIT},
};
use kore_sim as sim;

use super::{ALL_FIELDS, http_client};
use kore_sim::{SimConfig, SimFilter, Simulator};
use serde::Deserialize;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// The vendor loop by hand: what a user without the gateway writes.

#[derive(Deserialize)]
pub(crate) struct VendorPage {
    #[serde(rename = "numResults")]
    pub(crate) num_results: u64,
    pub(crate) data: Vec<Value>,
}

pub(crate) struct Vendor {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) cfg: SimConfig,
}

impl Vendor {
    pub(crate) fn new(sim: &Simulator, sim_addr: SocketAddr) -> Self {
        let cfg = sim.config().clone();
        let path = sim::VENDOR_PATH.replace("{accountId}", &cfg.account_id);
        Vendor {
            http: http_client(),
            url: format!("http://{sim_addr}{path}"),
            cfg,
        }
    }

    /// One POST, timed to the last byte (decoding is not timed).
    pub(crate) async fn page(&self, w: &Window, page: u32) -> (VendorPage, Duration) {
        let body = json!({
            "startDate": w.vendor_start(),
            "endDate": w.vendor_end(),
            "timeZoneOffset": w.vendor_offset(),
            "selectedFields": ALL_FIELDS,
        });
        let jwt = sim::mint_test_jwt(&self.cfg.client_id, &self.cfg.client_secret, None);
        let started = Instant::now();
        let resp = self
            .http
            .post(format!("{}?offset={page}&limit={PAGE_LIMIT}", self.url))
            .header("auth", jwt)
            .header("accountId", &self.cfg.account_id)
            .json(&body)
            .send()
            .await
            .expect("simulator answers");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("simulator body");
        let took = started.elapsed();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        (serde_json::from_slice(&bytes).expect("vendor page"), took)
    }

    /// Every page of `w`, one after the other, halving a window the vendor cannot page
    /// through (so the hand-written client gets the same records as the gateway).
    /// Returns (records, calls, summed call time).
    pub(crate) async fn window_sequential(&self, w: Window) -> (Vec<Value>, u32, Duration) {
        let mut out = Vec::new();
        let mut calls = 0;
        let mut spent = Duration::ZERO;
        let mut todo = vec![w];
        while let Some(w) = todo.pop() {
            let mut page = 0;
            loop {
                let (p, took) = self.page(&w, page).await;
                calls += 1;
                spent += took;
                if page == 0
                    && p.num_results > MAX_REACH
                    && let Some((a, b)) = w.split()
                {
                    todo.push(b);
                    todo.push(a);
                    break;
                }
                let short = (p.data.len() as u32) < PAGE_LIMIT;
                out.extend(p.data);
                if short || page == MAX_PAGE {
                    break;
                }
                page += 1;
            }
        }
        (out, calls, spent)
    }
}

pub(crate) fn ids(records: &[Value]) -> HashSet<(String, Option<String>)> {
    records
        .iter()
        .map(|v| {
            (
                v["sessionId"].as_str().unwrap_or_default().to_owned(),
                v.get("conversationId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Ground truth: how many round trips and calls a window needs, whoever asks.

/// What fetching one window takes: sequential round trips (levels), calls, records.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Need {
    pub(crate) levels: u32,
    pub(crate) calls: u32,
    pub(crate) records: u64,
}

/// Counts from the simulator's truth, memoised per (window, filter).
pub(crate) struct Truth<'a> {
    pub(crate) sim: &'a Simulator,
    pub(crate) counts: HashMap<(i64, i64, i32, String), u64>,
}

impl<'a> Truth<'a> {
    pub(crate) fn new(sim: &'a Simulator) -> Self {
        Truth {
            sim,
            counts: HashMap::new(),
        }
    }

    pub(crate) fn count(&mut self, w: &Window, f: &SimFilter) -> u64 {
        let key = (
            w.start.as_second(),
            w.end.as_second(),
            w.vendor_offset(),
            format!("{:?}|{:?}|{:?}", f.channels, f.queues, f.bots),
        );
        if let Some(n) = self.counts.get(&key) {
            return *n;
        }
        // Counting does not depend on selectedFields: leave them out, render less.
        let bare = SimFilter {
            selected_fields: None,
            ..f.clone()
        };
        let n = self
            .sim
            .truth(w.start, w.end, w.vendor_offset(), &bare)
            .len() as u64;
        self.counts.insert(key, n);
        n
    }

    /// The paging a window needs when every size is learnt from `numResults`: one round
    /// trip for the first page; the other pages all at once in a second; a window holding
    /// more than 11 × 100 records halved (one more round trip per halving). This is the
    /// gateway's plan, and no client that pages through the vendor can do with fewer calls.
    pub(crate) fn need(&mut self, w: Window, f: &SimFilter) -> Need {
        let n = self.count(&w, f);
        let limit = u64::from(PAGE_LIMIT);
        if n >= MAX_REACH
            && let Some((a, b)) = w.split()
        {
            let (x, y) = (self.need(a, f), self.need(b, f));
            // Over the reach: the first page tells so. At exactly the reach, all 11 pages
            // come back full before the split is known.
            let (levels, calls) = if n > MAX_REACH { (1, 1) } else { (2, 11) };
            return Need {
                levels: levels + x.levels.max(y.levels),
                calls: calls + x.calls + y.calls,
                records: x.records + y.records,
            };
        }
        let pages = n.div_ceil(limit).clamp(1, u64::from(MAX_PAGE) + 1) as u32;
        // A full last page is followed by one more (numResults may understate).
        let extra = u32::from(n > 0 && n.is_multiple_of(limit) && pages <= MAX_PAGE);
        Need {
            levels: 1 + u32::from(pages > 1) + extra,
            calls: pages + extra,
            records: n,
        }
    }

    /// Like [`Truth::need`], for another way of cutting an over-full window (a what-if).
    pub(crate) fn need_with(
        &mut self,
        w: Window,
        f: &SimFilter,
        cut: &dyn Fn(&Window, u64) -> Vec<Window>,
    ) -> Need {
        let n = self.count(&w, f);
        if n > MAX_REACH {
            let parts = cut(&w, n);
            if parts.len() > 1 {
                let mut levels = 0;
                let mut calls = 1;
                let mut records = 0;
                for p in parts {
                    let x = self.need_with(p, f, cut);
                    levels = levels.max(x.levels);
                    calls += x.calls;
                    records += x.records;
                }
                return Need {
                    levels: 1 + levels,
                    calls,
                    records,
                };
            }
        }
        self.need(w, f)
    }

    pub(crate) fn need_all_with(
        &mut self,
        ws: &[Window],
        f: &SimFilter,
        cut: &dyn Fn(&Window, u64) -> Vec<Window>,
    ) -> Need {
        ws.iter().fold(Need::default(), |acc, w| {
            let n = self.need_with(*w, f, cut);
            Need {
                levels: acc.levels.max(n.levels),
                calls: acc.calls + n.calls,
                records: acc.records + n.records,
            }
        })
    }

    pub(crate) fn need_all(&mut self, ws: &[Window], f: &SimFilter) -> Need {
        ws.iter().fold(Need::default(), |acc, w| {
            let n = self.need(*w, f);
            Need {
                levels: acc.levels.max(n.levels),
                calls: acc.calls + n.calls,
                records: acc.records + n.records,
            }
        })
    }
}

/// The first instant of local day `d` in `tz`.
pub(crate) fn local_midnight(d: Date, tz: &TimeZone) -> Timestamp {
    tz.to_ambiguous_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .expect("date in range")
}

/// `w` cut the way the gateway cuts a crowded window (`Window::cut_on_grid`): parts on a
/// local grid are the same whatever window they were cut from, so they are cached and shared.
pub(crate) fn cut_grid(w: &Window, k: u64) -> Vec<Window> {
    w.cut_on_grid(k)
}

/// Upstream calls a gateway would make for all of `requests` if every window *and every part
/// of a split window* were cached and coalesced: each distinct node of the split trees is
/// fetched once (its first page, or all its pages when it fits).
pub(crate) fn calls_with_cached_parts(
    truth: &mut Truth<'_>,
    requests: &[(Vec<Window>, usize)],
    filters: &[(&str, SimFilter)],
    cut: &dyn Fn(&Window, u64) -> Vec<Window>,
) -> u64 {
    let mut nodes: HashSet<(i64, i64, i32, usize)> = HashSet::new();
    let mut calls = 0u64;
    let mut todo: Vec<(Window, usize)> = requests
        .iter()
        .flat_map(|(ws, fi)| ws.iter().map(move |w| (*w, *fi)))
        .collect();
    while let Some((w, fi)) = todo.pop() {
        if !nodes.insert((w.start.as_second(), w.end.as_second(), w.offset_seconds, fi)) {
            continue;
        }
        let n = truth.count(&w, &filters[fi].1);
        let parts = if n > MAX_REACH {
            cut(&w, n)
        } else {
            Vec::new()
        };
        if parts.len() > 1 {
            calls += 1;
            todo.extend(parts.into_iter().map(|p| (p, fi)));
        } else {
            calls += u64::from(truth.need(w, &filters[fi].1).calls);
        }
    }
    calls
}

/// `w` cut into `k` parts of (nearly) equal length.
pub(crate) fn cut_even(w: &Window, k: u64) -> Vec<Window> {
    let len = w.len_seconds();
    let k = (k as i64).clamp(1, len);
    (0..k)
        .map(|i| Window {
            start: Timestamp::from_second(w.start.as_second() + len * i / k).expect("instant"),
            end: Timestamp::from_second(w.start.as_second() + len * (i + 1) / k - 1)
                .expect("instant"),
            offset_seconds: w.offset_seconds,
        })
        .collect()
}

pub(crate) fn utc_day(d: Date) -> Timestamp {
    local_midnight(d, &TimeZone::UTC)
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    percentile(&s, 50.0)
}

//! Swagger UI in a real browser: the built binary runs `--demo`, headless Chromium (Debian's
//! package, driven by playwright-core from tests/browser) opens /docs, authorises with the
//! demo key, runs "Try it out" on GET /v1/interactions and must see a 200 with records.
//! The screenshot is kept at artifacts/docs.png.
//!
//! `.ci/run` installs Chromium, Node, npm and the npm package; without them this test is
//! skipped locally (with a message) and fails under `CI=true`.

use std::{path::Path, process::Command};

mod common;

#[test]
fn swagger_ui_try_it_out_works_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(chromium) = common::browser_tools("the browser test") else {
        return;
    };
    let (mut gateway, base) = common::spawn_demo(&[]);

    std::fs::create_dir_all(root.join("artifacts")).expect("artifacts dir");
    let shot = root.join("artifacts/docs.png");
    let out = Command::new("timeout")
        .args(["120", "node"])
        .arg(root.join("tests/browser/docs.mjs"))
        .args([base.as_str(), "demo-key-0001"])
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let _ = gateway.kill();
    let _ = gateway.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{text}");
    assert!(text.contains("status 200"), "{text}");
    assert!(shot.exists(), "screenshot kept");
    println!("{text}");
}

/// The other origin: a blank page served on a loopback port of its own, for as long as the
/// test runs. Returns the page's URL and its origin.
fn another_origin() -> (String, String) {
    let page = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let page_url = format!("http://{}/", page.local_addr().expect("bound"));
    let origin = page_url.trim_end_matches('/').to_owned();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in page.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = "<!doctype html><title>dashboard</title>";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (page_url, origin)
}

/// Runs a page script (tests/browser/NAME.mjs) with `args` in Chromium, after which the
/// gateway is stopped; its JSON report (the first line starting with `{`) and all it said.
fn run_page(
    gateway: &mut std::process::Child,
    chromium: &str,
    script: &str,
    args: &[&str],
) -> (serde_json::Value, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args(["150", "node"])
        .arg(root.join("tests/browser").join(script))
        .args(args)
        .env("CHROMIUM", chromium)
        .output()
        .expect("node runs");
    let _ = gateway.kill();
    let _ = gateway.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{text}");
    let seen: serde_json::Value = serde_json::from_str(
        text.lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no report: {text}")),
    )
    .expect("a JSON report");
    (seen, text)
}

/// A frontend on another origin reads whether an export is whole: the page (served here, on
/// a port of its own, so another origin) fetches a CSV export from a `--demo` gateway that
/// allows that origin, with an API key (so Chromium preflights), and its script must read
/// `X-Complete`, `X-Stale` and `Content-Disposition` — headers a browser hides from a
/// cross-origin script unless `Access-Control-Expose-Headers` names them.
#[test]
fn a_page_on_another_origin_reads_whether_an_export_is_whole() {
    let Some(chromium) = common::browser_tools("the cross-origin browser test") else {
        return;
    };
    let (page_url, origin) = another_origin();
    let (mut gateway, base) = common::spawn_demo(&[("GATEWAY_CORS_ORIGINS", origin.as_str())]);
    assert_ne!(base, origin, "two origins");
    let (seen, text) = run_page(
        &mut gateway,
        &chromium,
        "cors.mjs",
        &[page_url.as_str(), base.as_str(), "demo-key-0001"],
    );
    assert_eq!(seen["origin"], origin.as_str());
    let csv = &seen["csv"];
    assert_eq!(csv["status"], 200, "{text}");
    assert!(
        csv["body"].as_str().unwrap_or("").lines().count() > 1,
        "records: {text}"
    );
    assert_eq!(
        csv["x_complete"], "true",
        "the script reads X-Complete: {text}"
    );
    assert_eq!(csv["x_stale"], "false", "and X-Stale: {text}");
    assert!(
        csv["content_disposition"]
            .as_str()
            .is_some_and(|d| d.starts_with("attachment; filename=")),
        "and Content-Disposition: {text}"
    );
    for name in ["x_cache", "x_request_id", "cache_status"] {
        assert!(csv[name].is_string(), "{name}: {text}");
    }
    assert!(seen["json"]["etag"].is_string(), "{text}");
    println!("{text}");
}

/// A live screen on another origin follows the change feed both ways a browser can: with
/// `EventSource` (no header: a ticket asked for with the key, never the key in the URL), and
/// with `fetch` and the key header, its body read as a stream (what
/// @microsoft/fetch-event-source does). `since` a day back (records even in the quiet hours): the backlog arrives at
/// once, as `created` events carrying one record each and an id to resume from.
#[test]
fn a_page_on_another_origin_follows_the_change_feed() {
    let Some(chromium) = common::browser_tools("the change-feed browser test") else {
        return;
    };
    let (page_url, origin) = another_origin();
    // The demo allows any origin (`*`); its simulators are live.
    let (mut gateway, base) = common::spawn_demo(&[]);
    let since = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 24 * 3600)
        .expect("a time")
        .to_string();
    let (seen, text) = run_page(
        &mut gateway,
        &chromium,
        "feed.mjs",
        &[page_url.as_str(), base.as_str(), "demo-key-0001", &since],
    );
    assert_eq!(seen["origin"], origin.as_str());
    assert_ne!(base, origin, "two origins");

    let ticket = &seen["ticket"];
    assert_eq!(ticket["status"], 201, "{text}");
    let url = ticket["url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("/v1/interactions/changes?since=") && url.contains("&ticket="),
        "{text}"
    );
    assert!(!url.contains("demo-key"), "never the key in a URL: {url}");

    let es = &seen["eventsource"];
    assert!(es["error"].is_null(), "EventSource: {text}");
    assert_eq!(es["opened"], true, "{text}");
    assert!(
        es["sessionId"].as_str().is_some_and(|s| !s.is_empty()),
        "a created event's data is a record: {text}"
    );
    assert!(
        es["lastEventId"].as_str().is_some_and(|s| !s.is_empty()),
        "a created event has an id to resume from: {text}"
    );

    let stream = &seen["stream"];
    assert_eq!(stream["status"], 200, "{text}");
    assert!(
        stream["content_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{text}"
    );
    assert!(
        stream["frame"].is_string(),
        "an `event: created` frame: {text}"
    );
    assert!(
        stream["sessionId"].as_str().is_some_and(|s| !s.is_empty()),
        "{text}"
    );
    assert!(
        stream["id"].as_str().is_some_and(|s| !s.is_empty()),
        "{text}"
    );
    println!("{text}");
}

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

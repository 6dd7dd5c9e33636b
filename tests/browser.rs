//! Swagger UI in a real browser: the built binary runs `--demo`, headless Chromium (Debian's
//! package, driven by playwright-core from tests/browser) opens /docs, authorises with the
//! demo key, runs "Try it out" on GET /v1/interactions and must see a 200 with records.
//! The screenshot is kept at artifacts/docs.png.
//!
//! `.ci/run` installs Chromium, Node, npm and the npm package; without them this test is
//! skipped locally (with a message) and fails under `CI=true`.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn swagger_ui_try_it_out_works_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let have_pkg = root
        .join("tests/browser/node_modules/playwright-core")
        .exists();
    if !(Path::new(&chromium).exists() && have_node && have_pkg) {
        let msg = "browser test needs chromium, node and `npm ci --prefix tests/browser` (.ci/run installs them)";
        // Under CI (`CI` set to anything but `false`/`0`; .ci/run sets CI=true) a missing
        // tool fails the test: it is a broken setup there, not a reason to pass.
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"));
        assert!(!ci, "{msg}");
        eprintln!("SKIPPED: {msg} (fails under CI=true)");
        return;
    }

    let mut gateway = Command::new(env!("CARGO_BIN_EXE_kore-gateway"))
        .arg("--demo")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SIM_LATENCY", "5ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    // Keep draining stdout for the whole run: a closed pipe would kill the gateway's next print.
    let stdout = gateway.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("gateway on ").nth(1) {
                let _ = tx.send(rest.split(',').next().unwrap_or_default().to_owned());
            }
        }
    });
    let started = Instant::now();
    let base = rx.recv_timeout(Duration::from_secs(30)).ok();
    let Some(base) = base else {
        let _ = gateway.kill();
        panic!(
            "the demo did not print its address within {:?}",
            started.elapsed()
        );
    };

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

//! A real redis-server for the tests that need one (replicas, shares): started on a free
//! loopback port, stopped by its pid when dropped. `.ci/run` installs it; without it a
//! test is skipped locally and fails under CI.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis { child, port })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh redis-server, or `None` when there is none to start on a developer's machine.
/// Under CI (`CI` set to anything but `false`/`0`) a missing redis-server fails the test:
/// `.ci/run` installs it, so its absence there is a broken setup, not a reason to pass.
pub fn redis_or_skip() -> Option<Redis> {
    let redis = Redis::start();
    if redis.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"));
        assert!(!ci, "redis-server is needed under CI (.ci/run installs it)");
        eprintln!("SKIPPED: redis-server not found (the test fails under CI=true)");
    }
    redis
}

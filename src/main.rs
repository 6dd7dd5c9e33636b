//! The binary: read the configuration, start logging, build the app, serve until SIGTERM,
//! then drain within SHUTDOWN_GRACE.

use std::process::ExitCode;

use clap::Parser;
use kore_gateway::{
    api::docs,
    config::{Cli, LogFormat},
    telemetry::{OtelConfig, Telemetry},
};
use tracing_subscriber::{EnvFilter, fmt};

/// Every allocation this large or larger is its own mapping, given back to the system when
/// it is freed. glibc's default raises this threshold (up to 32 MiB) each time such a block
/// is freed, after which large buffers — a rendered page, a stored answer's compressed form,
/// an upstream page — come from the heap arenas instead and stay in the resident set after
/// they are freed: measured on bench/memory.sh run B, 254 MiB peak RSS with the default,
/// 143–155 MiB with this (two runs). An operator's own `MALLOC_MMAP_THRESHOLD_` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called once, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Keys the demo uses when none are configured.
#[cfg(feature = "demo")]
const DEMO_KEY: &str = "demo-key-0001";
#[cfg(feature = "demo")]
const DEMO_ADMIN_KEY: &str = "admin-demo-key-0001";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--print-openapi") {
        print!("{}", docs::generate());
        return ExitCode::SUCCESS;
    }
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return refuse(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kore-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only when the standard OTEL_* variables ask for them.
    let telemetry = match OtelConfig::from_env() {
        Some(cfg) => {
            let _in_runtime = runtime.enter();
            match Telemetry::start(&cfg) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("kore-gateway: OTEL_EXPORTER_OTLP_ENDPOINT: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    init_tracing(cli.log_format, telemetry.as_ref());
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kore-gateway: {e}");
            ExitCode::FAILURE
        }
    };
    // Whatever is still running (a blocking write, a cut-off connection) gets a moment,
    // not the power to hold the process past its grace.
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    if let Some(t) = &telemetry {
        t.flush();
    }
    code
}

/// `--help` and `--version` print as clap prints them; a bad setting stops start-up with one
/// line that names it (clap's first line: the flag and its variable, the value, the reason).
fn refuse(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    eprintln!(
        "kore-gateway: configuration: {}",
        line.trim_start_matches("error: ")
    );
    ExitCode::from(2)
}

fn init_tracing(format: LogFormat, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(telemetry.map(Telemetry::layer));
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_target(false))
            .init(),
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    #[cfg(feature = "demo")]
    let (cli, sim_addr) = match demo::start(cli).await? {
        Some(started) => started,
        None => return Ok(()),
    };
    #[cfg(not(feature = "demo"))]
    if cli.demo || cli.simulator {
        return Err(
            "this build has no simulator (built without the `demo` feature); \
                    set KORE_* to a real upstream"
                .into(),
        );
    }
    #[allow(unused_mut)]
    let mut settings = cli
        .into_settings()
        .map_err(|e| format!("configuration: {e}"))?;
    #[cfg(feature = "demo")]
    let demo_keys = match &sim_addr {
        Some(demo) => demo::second_account(&mut settings, demo),
        None => Vec::new(),
    };
    let listen = settings.listen;
    let grace = settings.shutdown_grace;
    let state = kore_gateway::build(settings)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    #[cfg(feature = "demo")]
    if let Some(demo) = &sim_addr {
        demo::print_banner(local, demo, &demo_keys, &state);
    }
    tracing::info!(%local, "kore-gateway listening");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Guarded: an over-long request line still reaches the stack (a 414 problem+json).
    let serve = axum::serve(
        kore_gateway::api::middleware::uri_limit::Guarded(listener),
        kore_gateway::app(state.clone()),
    )
    .with_graceful_shutdown(stopped(stopping.clone()))
    .into_future();
    tokio::pin!(serve);
    tokio::select! {
        // The signal first: the server stops at the same signal, and must not be taken for
        // a server that ended by itself (that would skip the drain).
        biased;
        () = stopped(stopping) => {}
        r = &mut serve => return r.map_err(|e| e.to_string()),
    }
    drain(&state, grace, serve).await
}

/// The drain after SIGTERM, bounded by `grace`: no new connection is accepted; requests
/// waiting for budget are answered 503 (`Retry-After`) by half the grace, calls in flight
/// complete, streams whose status went out go on; jobs stop waiting at once and are recorded
/// resumable (CACHE_DIR or Redis: another replica, or this one restarted, goes on). Whatever
/// still runs when the grace is nearly over is cut off, and the process exits within it.
async fn drain(
    state: &kore_gateway::AppState,
    grace: std::time::Duration,
    serve: std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    // Kept for the last steps: recording the jobs still running, the runtime's teardown.
    let margin = (grace / 10).min(std::time::Duration::from_secs(2));
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        jobs = state.jobs.active(),
        "shutting down: draining requests and jobs"
    );
    state.drain.start(grace);
    let settled = async {
        let (served, ()) = tokio::join!(serve, state.jobs.settled());
        served
    };
    let outcome = tokio::time::timeout_at(started + grace.saturating_sub(margin), settled).await;
    let left = state.jobs.active();
    let _ = tokio::time::timeout(margin / 2, state.jobs.release_all()).await;
    // Work still finishing in the cache's own tasks (parts of a window) may have a call in
    // flight: let it complete, briefly, so the next start counts it.
    let left_of_grace = (started + grace).saturating_duration_since(tokio::time::Instant::now());
    let _ = tokio::time::timeout(left_of_grace / 2, state.calls_done()).await;
    state.hand_over();
    match outcome {
        Ok(served) => {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "drained; exiting"
            );
            served.map_err(|e| e.to_string())
        }
        Err(_) => {
            tracing::warn!(
                jobs_released = left,
                "SHUTDOWN_GRACE is over: connections still open are closed, jobs left resumable"
            );
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `--demo` and `--simulator`: the built-in upstream simulator (crates/sim).
#[cfg(feature = "demo")]
mod demo {
    use std::{net::SocketAddr, sync::Arc};

    use kore_gateway::config::{AccountSettings, Cli, Settings};
    use kore_sim::{SimConfig, Simulator, serve_standalone};
    use secrecy::{ExposeSecret, SecretString};

    use super::{DEMO_ADMIN_KEY, DEMO_KEY};

    /// The demo's two simulated vendor accounts, each on its own simulator.
    pub(super) struct Demo {
        /// `demo`: the simulator every README example reads (seed 1).
        pub first: SocketAddr,
        pub first_account_id: String,
        /// `demo-eu`: another account, other data, on another base URL.
        pub second: SocketAddr,
        pub second_cfg: SimConfig,
    }

    /// The second demo account: other credentials, other data (another seed).
    fn second_config(
        latency: std::time::Duration,
        rate: Option<(u32, std::time::Duration)>,
    ) -> SimConfig {
        let mut cfg = SimConfig::demo();
        cfg.account_id = "66bc4a29bdaafdb08461e0e1".into();
        cfg.client_id = "cs-5f1d2c3b-eu00-4d8e-9a51-7c0f2e9be001".into();
        cfg.client_secret = "demo-eu-secret-not-for-production-987654".into();
        cfg.seed = 2;
        cfg.latency = latency;
        cfg.rate_limit = rate;
        cfg
    }

    /// `--simulator` serves the simulator alone until it stops (`None`); `--demo` starts two
    /// simulated accounts on loopback ports and points the gateway at the first through the
    /// KORE_* settings (the second is added by [`second_account`]), with demo keys unless
    /// GATEWAY_API_KEYS is set. Returns the settings to run the gateway with, and under
    /// `--demo` where the simulators are.
    pub(super) async fn start(mut cli: Cli) -> Result<Option<(Cli, Option<Demo>)>, String> {
        let mut cfg = SimConfig::demo();
        cfg.latency = cli.sim_latency;
        cfg.rate_limit = cli.sim_rate_limit.map(|r| (r.calls, r.period));
        cfg.volume = cli.sim_volume;
        if cli.simulator {
            println!(
                "upstream simulator on http://{} (account {}, client {})",
                cli.gateway_listen, cfg.account_id, cfg.client_id
            );
            serve_standalone(cfg, cli.gateway_listen)
                .await
                .map_err(|e| format!("simulator: {e}"))?;
            return Ok(None);
        }
        if !cli.demo {
            return Ok(Some((cli, None)));
        }
        if cli.kore_accounts_file.is_some() {
            return Err("--demo runs its own simulated accounts: unset KORE_ACCOUNTS_FILE".into());
        }
        // The demo's accounts are live: a session is published a minute after it starts,
        // and some recent ones are revised as time passes (the change feed has news).
        cfg.live = Some(kore_sim::Live::demo());
        let (_sim, first) = Simulator::spawn(cfg.clone())
            .await
            .map_err(|e| format!("cannot start the simulator: {e}"))?;
        let mut second_cfg = second_config(cfg.latency, cfg.rate_limit);
        second_cfg.live = cfg.live.clone();
        second_cfg.volume = cfg.volume;
        let (_sim2, second) = Simulator::spawn(second_cfg.clone())
            .await
            .map_err(|e| format!("cannot start the second simulator: {e}"))?;
        cli.kore_base_url = Some(format!("http://{first}"));
        cli.kore_account_id = Some(cfg.account_id.clone());
        cli.kore_client_id = Some(cfg.client_id.clone());
        cli.kore_client_secret = Some(SecretString::from(cfg.client_secret.clone()));
        cli.kore_client_secret_file = None;
        if cli.gateway_api_keys.is_none() {
            cli.gateway_api_keys = Some(SecretString::from(format!(
                "demo:{DEMO_KEY},admin:{DEMO_ADMIN_KEY}"
            )));
        }
        if cli.gateway_cors_origins.is_none() {
            cli.gateway_cors_origins = Some("*".into());
        }
        Ok(Some((
            cli,
            Some(Demo {
                first,
                first_account_id: cfg.account_id,
                second,
                second_cfg,
            }),
        )))
    }

    /// Names the KORE_* account `demo` (the default) and adds `demo-eu`, the second
    /// simulated account, with the same knobs. Returns the demo keys in force (none when
    /// GATEWAY_API_KEYS chose the keys).
    pub(super) fn second_account(settings: &mut Settings, demo: &Demo) -> Vec<(String, String)> {
        let Some(first) = settings.accounts.first_mut() else {
            return Vec::new();
        };
        first.name = "demo".into();
        let mut upstream = first.upstream.clone();
        let rate = first.rate;
        if let Ok(url) = format!("http://{}", demo.second).parse() {
            upstream.base_url = url;
        }
        upstream.account_id = demo.second_cfg.account_id.clone();
        upstream.client_id = demo.second_cfg.client_id.clone();
        upstream.client_secret = SecretString::from(demo.second_cfg.client_secret.clone());
        settings.accounts.push(AccountSettings {
            name: Arc::from("demo-eu"),
            upstream,
            rate,
            default: false,
        });
        // Only the keys the demo made up are printed; keys an operator set stay unprinted.
        let demo_keys = [("demo", DEMO_KEY), ("admin", DEMO_ADMIN_KEY)];
        settings
            .api_keys
            .iter()
            .filter(|k| {
                demo_keys
                    .iter()
                    .any(|(n, v)| *k.name == **n && k.key.expose_secret() == *v)
            })
            .map(|k| (k.name.to_string(), k.key.expose_secret().to_owned()))
            .collect()
    }

    /// The demo's banner. CI scripts read the gateway's address from the `gateway on` line
    /// and ask the simulator's `/__sim/violations` whether the gateway ever broke a vendor
    /// rule.
    pub(super) fn print_banner(
        addr: SocketAddr,
        demo: &Demo,
        demo_keys: &[(String, String)],
        state: &kore_gateway::AppState,
    ) {
        let key = demo_keys
            .iter()
            .find(|(n, _)| n == "demo")
            .map_or("<your key>", |(_, k)| k.as_str());
        let keys = if demo_keys.is_empty() {
            let mut names: Vec<&str> = state.settings.api_keys.iter().map(|k| &*k.name).collect();
            names.sort_unstable();
            format!(
                "from GATEWAY_API_KEYS (names: {}; their keys are not printed)",
                names.join(", ")
            )
        } else {
            demo_keys
                .iter()
                .map(|(n, k)| format!("{n} = {k}"))
                .collect::<Vec<_>>()
                .join("   ")
        };
        println!(
            "\nkore-gateway demo: gateway on http://{addr}, in front of two built-in upstream simulators.\n\
             \n  Swagger UI:  http://{addr}/docs   (Authorize with: {key})\n  OpenAPI:     http://{addr}/openapi.json\n\
             \n  Accounts:    demo    (default)  vendor account {a1}  simulator http://{s1}\n               demo-eu             vendor account {a2}  simulator http://{s2}\n\
             \n  Simulator:   http://{s1}/__sim/violations   (every vendor rule the gateway broke; CI requires none)\n\
             \n  Try it:\n    curl -s -H 'Authorization: Bearer {key}' 'http://{addr}/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=2'\n    curl -s -H 'Authorization: Bearer {key}' 'http://{addr}/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=2&account=demo-eu'\n\
             \n  Drop-in:     POST http://{addr}/agentassist/api/public/analytics/account/{a1}/v2/interactionDetails\n\
             \n  Keys: {keys}\n",
            s1 = demo.first,
            s2 = demo.second,
            a1 = demo.first_account_id,
            a2 = demo.second_cfg.account_id,
        );
    }
}

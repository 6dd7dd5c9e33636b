//! The binary: read the configuration, start logging, build the app, serve until SIGTERM.

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
    let settings = cli
        .into_settings()
        .map_err(|e| format!("configuration: {e}"))?;
    let listen = settings.listen;
    let state = kore_gateway::build(settings)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    #[cfg(feature = "demo")]
    if let Some(sim) = sim_addr {
        demo::print_banner(local, sim);
    }
    tracing::info!(%local, "kore-gateway listening");
    // Guarded: an over-long request line still reaches the stack (a 414 problem+json).
    axum::serve(
        kore_gateway::api::uri_limit::Guarded(listener),
        kore_gateway::app(state),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| e.to_string())
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish before the process exits.
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
    tracing::info!("shutting down: finishing in-flight requests");
}

/// `--demo` and `--simulator`: the built-in upstream simulator (crates/sim).
#[cfg(feature = "demo")]
mod demo {
    use std::net::SocketAddr;

    use kore_gateway::config::Cli;
    use kore_sim::{SimConfig, Simulator, serve_standalone};
    use secrecy::SecretString;

    use super::{DEMO_ADMIN_KEY, DEMO_KEY};

    /// `--simulator` serves the simulator alone until it stops (`None`); `--demo` starts it
    /// on a loopback port and points the gateway at it with demo keys. Returns the settings
    /// to run the gateway with, and the simulator's address under `--demo`.
    pub(super) async fn start(mut cli: Cli) -> Result<Option<(Cli, Option<SocketAddr>)>, String> {
        let mut cfg = SimConfig::demo();
        cfg.latency = cli.sim_latency;
        cfg.rate_limit = cli.sim_rate_limit.map(|r| (r.calls, r.period));
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
        let (_sim, addr) = Simulator::spawn(cfg.clone())
            .await
            .map_err(|e| format!("cannot start the simulator: {e}"))?;
        cli.kore_base_url = Some(format!("http://{addr}"));
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
        Ok(Some((cli, Some(addr))))
    }

    /// The demo's banner. CI scripts read the gateway's address from the `gateway on` line
    /// and ask the simulator's `/__sim/violations` whether the gateway ever broke a vendor
    /// rule.
    pub(super) fn print_banner(addr: SocketAddr, sim: SocketAddr) {
        println!(
            "\nkore-gateway demo: gateway on http://{addr}, in front of the built-in upstream simulator.\n\
             \n  Swagger UI:  http://{addr}/docs   (Authorize with: {DEMO_KEY})\n  OpenAPI:     http://{addr}/openapi.json\n\
             \n  Simulator:   http://{sim}/__sim/violations   (every vendor rule the gateway broke; CI requires none)\n\
             \n  Try it:\n    curl -s -H 'Authorization: Bearer {DEMO_KEY}' 'http://{addr}/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=2'\n\
             \n  Keys: demo = {DEMO_KEY}   admin = {DEMO_ADMIN_KEY}\n"
        );
    }
}

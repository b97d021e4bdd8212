//! The process plumbing every command shares: logs, a database it can reach
//! (waiting for one that is down), the key that seals secrets at rest, a
//! clean stop on SIGTERM or Ctrl-C, and an exit code with advice; and for a
//! worker process (`respirate`, the one inside `skein up`) its flags, its
//! metrics endpoint and the engine's dispatcher around its progs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use skein_engine::{Config, DispatchConfig, Dispatcher, LivenessConfig, Registry, Resources, Runner};
use skein_progs::ssh::keys::SecretKey;
use skein_progs::ssh::SshPool;
use sqlx::PgPool;

#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Steps in flight in this process. Most hold no database connection
    /// (their writes are group-committed), so this can exceed the pool size.
    /// A strand waiting only for its last, group-committed write frees its
    /// slot (as many again may wait so).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Independent claim loops sharing those slots.
    #[arg(long, default_value_t = 2)]
    pub lanes: usize,
    /// Database connections.
    #[arg(long, default_value_t = 16)]
    pub pool_size: u32,
    /// The most strands leased by one claim statement (a claim asks for
    /// at most the free slots of its lane).
    #[arg(long, default_value_t = 256)]
    pub batch: i64,
    /// Fallback poll interval in milliseconds (NOTIFY wakes workers at once).
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
    /// Lease length in seconds: the backstop. A dead or hung worker's strands
    /// move on as soon as a peer notices (see --hung-after-secs); they wait out
    /// the lease only when no live worker is left to notice. A step is cut
    /// short a quarter of a lease before it ends.
    #[arg(long, default_value_t = 120)]
    pub lease_secs: u64,
    /// On SIGTERM, seconds running steps get to finish.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// A peer that has not shown a sign of life for this long is declared
    /// hung: its claims are broken and its sessions ended. (A dead peer, its
    /// database session gone, is noticed within about 250 ms.)
    #[arg(long, default_value_t = 5.0)]
    pub hung_after_secs: f64,
    /// Cap of the retry backoff after failures, in seconds.
    #[arg(long, default_value_t = 600)]
    pub backoff_cap_secs: u64,
    /// Keep exited strands in the archive for this many months (whole
    /// months: older monthly partitions are dropped). 0 keeps them all.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(0..=1200))]
    pub archive_keep_months: u32,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9187).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

impl WorkerArgs {
    pub fn pool_size(&self) -> u32 {
        self.pool_size.max(2)
    }

    pub fn engine_config(&self) -> Config {
        let lease = Duration::from_secs(self.lease_secs.max(4));
        Config {
            lease,
            step_budget: lease / 2,
            continue_budget: (lease / 12).max(Duration::from_secs(1)),
            backoff_cap: Duration::from_secs(self.backoff_cap_secs.max(1)),
            ..Config::default()
        }
    }

    pub fn dispatch_config(&self) -> DispatchConfig {
        DispatchConfig {
            concurrency: self.concurrency.max(1),
            batch: self.batch.max(1),
            poll: Duration::from_millis(self.poll_ms.max(10)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            lanes: self.lanes.max(1),
            liveness: Some(LivenessConfig {
                hung_after: Duration::from_secs_f64(self.hung_after_secs.max(1.0)),
                archive_keep_months: (self.archive_keep_months > 0).then_some(self.archive_keep_months),
                ..LivenessConfig::default()
            }),
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `json` for machines.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

/// Connect and migrate, waiting (with a message) while the database is down.
pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let mut wait = Duration::from_millis(200);
    loop {
        // Every connection carries this process's name, so that a peer that
        // finds it hung can end them all.
        match skein_models::db::connect_as(url, pool_size, &skein_engine::liveness::application_name()).await {
            Ok(pool) => {
                skein_models::db::migrate(&pool).await.context("applying migrations")?;
                return Ok(pool);
            }
            Err(e @ sqlx::Error::Configuration(_)) => return Err(e).context("bad database URL"),
            Err(e) if permanent(&e).is_some() => {
                let advice = permanent(&e).unwrap_or_default();
                return Err(e).context(format!("the database refused us, and waiting will not change that: {advice}"));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "database not reachable yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What to do about an error no retry will fix (Postgres's SQLSTATE says
/// which): a database or role that does not exist, a password refused.
/// Anything else (refused connection, server starting or shutting down) may
/// pass, and is waited out.
fn permanent(e: &sqlx::Error) -> Option<&'static str> {
    let code = e.as_database_error()?.code()?;
    match code.as_ref() {
        "3D000" => Some("create that database, or point --database-url (or DATABASE_URL) at the right one; without either, the embedded cluster is used"),
        "28000" | "28P01" => Some("check the user and password in --database-url (or DATABASE_URL) and the server's pg_hba.conf"),
        _ => None,
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Serve Prometheus metrics, and sample the database's view (due strands,
/// the oldest one's lag, open pages) and the pool every few seconds.
pub fn serve_metrics(addr: SocketAddr, pool: PgPool) -> anyhow::Result<()> {
    crate::metrics::serve(addr, pool)
}

/// Run a dispatcher over `pool` until `shutdown`, then stop cleanly.
pub async fn run_dispatcher(
    pool: PgPool,
    registry: Registry,
    args: &WorkerArgs,
    configure: impl FnOnce(Dispatcher) -> Dispatcher,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr, pool.clone())?;
    }
    let runner = Runner::new(pool, registry).with_config(args.engine_config()).with_resources(resources());
    // Step metrics; a `configure` that sets its own on_step calls
    // `crate::metrics::record_step` itself.
    let dispatcher = configure(Dispatcher::new(runner, args.dispatch_config()).on_step(crate::metrics::record_step));
    let summary = dispatcher.run(shutdown).await;
    tracing::info!(steps = summary.steps, failed = summary.failed, abandoned = summary.abandoned_on_shutdown, "stopped");
    Ok(())
}

/// What progs reach hosts with: one SSH session pool per process, and the
/// key that unseals stored private keys (without it, host progs fail with
/// a message saying how to set it).
pub fn resources() -> Resources {
    let resources = Resources::default().with(skein_progs::ssh::shell(SshPool::new()));
    match secret_key() {
        Ok(key) => resources.with(key),
        Err(e) => {
            tracing::warn!("{e:#}; progs that use SSH will fail until it is set");
            resources
        }
    }
}

/// `SKEIN_SECRET_KEY`, or for the embedded default, a key generated once and
/// kept (mode 0600) in `$SKEIN_HOME/secret.key`.
pub fn secret_key() -> anyhow::Result<SecretKey> {
    if std::env::var_os(skein_progs::ssh::keys::SECRET_KEY_ENV).is_some() {
        return SecretKey::from_env();
    }
    let home = crate::embedded::Embedded::from_env()?.home;
    let path = home.join("secret.key");
    if let Ok(hex) = std::fs::read_to_string(&path) {
        return SecretKey::from_hex(&hex);
    }
    std::fs::create_dir_all(&home)?;
    let key = SecretKey::random();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(key.to_hex().as_bytes())?;
    Ok(key)
}

/// End the process: on error, print the error and its causes on one line
/// each (no backtrace: this is for people) and exit 1.
pub fn exit_with(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote what a person typed: escape control characters.
            let clean = |t: String| crate::render::clean(&t);
            eprintln!("error: {}", clean(e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", clean(cause.to_string()));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

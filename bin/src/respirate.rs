//! The `respirate` process: flags, then a dispatcher over a registry of progs
//! until SIGTERM. `src/bin/respirate.rs` runs it with every shipped prog; the
//! spec crate runs it with its test progs added.

use clap::Parser;
use skein_engine::Registry;

use crate::process::{self, WorkerArgs};

#[derive(Parser, Debug)]
#[command(name = "respirate", version, about = "Run due strands from a skein database until SIGTERM")]
struct Args {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:5432/skein; default: the
    /// embedded cluster `skein` uses (see `skein db`), started if need be.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[command(flatten)]
    worker: WorkerArgs,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// Parse the command line and serve `registry` until SIGTERM or Ctrl-C.
pub fn main(registry: impl FnOnce() -> Registry) -> std::process::ExitCode {
    process::exit_with(serve(registry))
}

#[tokio::main]
async fn serve(registry: impl FnOnce() -> Registry) -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging(args.log_json);
    let (url, embedded) = crate::embedded::given_or_embedded(args.database_url.clone()).await?;
    if embedded {
        tracing::info!(%url, "database: the embedded cluster");
    }
    let pool = tokio::select! {
        pool = process::connect(&url, args.worker.pool_size()) => pool?,
        _ = process::shutdown_signal() => return Ok(()),
    };
    tracing::info!(concurrency = args.worker.concurrency, "respirate running");
    process::run_dispatcher(pool, registry(), &args.worker, |d| d, process::shutdown_signal()).await
}

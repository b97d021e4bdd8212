//! respirate: the worker daemon. Leases due strands and runs their steps
//! until SIGTERM. Run as many as you like against one database.

use clap::Parser;
use skein_bin::worker::{self, WorkerArgs};

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

fn main() -> std::process::ExitCode {
    skein_bin::worker::exit_with(tokio_main())
}

#[tokio::main]
async fn tokio_main() -> anyhow::Result<()> {
    let args = Args::parse();
    worker::init_logging(args.log_json);
    let (url, embedded) = skein_bin::embedded::given_or_embedded(args.database_url.clone()).await?;
    if embedded {
        tracing::info!(%url, "database: the embedded cluster");
    }
    let pool = tokio::select! {
        pool = worker::connect(&url, args.worker.pool_size()) => pool?,
        _ = worker::shutdown_signal() => return Ok(()),
    };
    tracing::info!(concurrency = args.worker.concurrency, "respirate running");
    worker::run_dispatcher(pool, skein_progs::registry(), &args.worker, |d| d, worker::shutdown_signal()).await
}

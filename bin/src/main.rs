//! skein: the control plane's command line.
//!
//! `skein up` runs the control plane (and a demo) on its defaults; `skein
//! console` (and `skein strand|page|host|vm|ubid|audit`) inspect and steer it;
//! `skein bench` measures the engine; `skein db` manages the embedded Postgres cluster it uses.

use clap::{Parser, Subcommand};
use skein_bin::cmd::session::OpsOptions;
use skein_bin::console::{self, Ops};
use skein_bin::cmd::host::HostCli;
use skein_bin::cmd::vm::VmCli;
use skein_bin::cmd::{self, bench, up};
use skein_bin::{embedded::Embedded, process};

#[derive(Parser, Debug)]
#[command(name = "skein", version, about = "A Postgres-backed workflow engine and the VM control plane built on it")]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane: a worker pool (and a demo) on the given or embedded database.
    Up(up::UpArgs),
    /// Measure the engine against a raw-Postgres baseline (one JSON line per run).
    Bench(bench::BenchArgs),
    /// The operator console: inspect and steer strands, pages, hosts and VMs.
    Console(console::ConsoleArgs),
    /// Strands: list, count, show, steer (the console's `strand` commands).
    Strand {
        #[command(subcommand)]
        cmd: console::command::StrandCmd,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Pages: problems waiting for an operator.
    Page {
        #[command(subcommand)]
        cmd: console::command::PageCmd,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Hosts that run VMs: add, list, show, drain, destroy.
    Host {
        #[command(subcommand)]
        cmd: HostCli,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// VMs: create (and follow), list, show, stop, start, restart, destroy.
    Vm {
        #[command(subcommand)]
        cmd: VmCli,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Decode a UBID (its type and time) and look up what it names.
    Ubid {
        id: String,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// What operators changed by hand, newest first.
    Audit {
        /// Only changes to this strand or page.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Live worker processes (respirate, skein up) and the claims each holds.
    Workers {
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Serve the HTTP API (also served inside `skein up`).
    Api(cmd::api::ApiArgs),
    /// Projects (tenants): they own VMs and API tokens.
    Project {
        #[command(subcommand)]
        cmd: cmd::project::ProjectCmd,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// Private subnets of a project: create, list, show (its VMs, hosts and tunnels), delete, rekey.
    Subnet {
        #[command(subcommand)]
        cmd: cmd::subnet::SubnetCmd,
        #[command(flatten)]
        opts: OpsOptions,
    },
    /// API bearer tokens, for a project or an operator.
    Token {
        #[command(subcommand)]
        cmd: cmd::token::TokenCmd,
        #[command(flatten)]
        opts: cmd::token::TokenOpts,
    },
    /// Manage the embedded Postgres cluster (used when no --database-url is given).
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
}

#[derive(Subcommand, Debug)]
enum DbAction {
    /// Create (first time) and start the cluster, and print its URL.
    Start,
    /// Stop the cluster.
    Stop,
    /// Say whether it runs, and where.
    Status,
}

/// mimalloc, not glibc's malloc: a step allocates and frees many small
/// objects across threads, and glibc's arenas spent a fifth of a worker's CPU
/// consolidating and unlinking chunks (measured with perf on `skein bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    end_quietly_when_stdout_closes();
    skein_bin::process::exit_with(tokio_main())
}

/// `skein ... | head -1`: once the reader has gone, `println!` panics with
/// "failed printing to stdout: Broken pipe". That is the end of the output,
/// not a bug: stop quietly, as `cat` would. (Restoring SIGPIPE's default
/// instead would also kill the process on a write to a closed socket or
/// child's pipe.)
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if text.is_some_and(|t| t.starts_with("failed printing to stdout") && t.contains("Broken pipe")) {
            std::process::exit(0);
        }
        default(info)
    }));
}

#[tokio::main]
async fn tokio_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    process::init_logging(cli.log_json);
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Strand { cmd, opts } => console::run_one(Ops::Strand(cmd), opts).await,
        Command::Page { cmd, opts } => console::run_one(Ops::Page(cmd), opts).await,
        Command::Host { cmd: HostCli::Ops(ops), opts } => console::run_one(Ops::Host(ops), opts).await,
        Command::Host { cmd: HostCli::Retire(retire), opts } => cmd::host::run(retire, opts).await,
        Command::Vm { cmd: VmCli::Ops(ops), opts } => console::run_one(Ops::Vm(ops), opts).await,
        Command::Vm { cmd: VmCli::Request(request), opts } => cmd::vm::run(request, opts).await,
        Command::Ubid { id, opts } => console::run_one(Ops::Ubid { id }, opts).await,
        Command::Audit { target, limit, opts } => console::run_one(Ops::Audit { target, limit }, opts).await,
        Command::Workers { opts } => console::run_one(Ops::Workers, opts).await,
        Command::Api(args) => cmd::api::run(args).await,
        Command::Project { cmd, opts } => cmd::project::run(cmd, opts).await,
        Command::Subnet { cmd, opts } => cmd::subnet::run(cmd, opts).await,
        Command::Token { cmd, opts } => cmd::token::run(cmd, opts).await,
        Command::Db { action } => {
            let db = Embedded::from_env()?;
            tokio::task::spawn_blocking(move || match action {
                DbAction::Start => db.ensure_running().map(|url| println!("{url}")),
                DbAction::Stop => db.stop(),
                DbAction::Status => {
                    let state = if db.is_running() { "running" } else { "stopped" };
                    println!("{state}: {} (data in {}, log {})", db.url(), db.home.display(), db.log_file().display());
                    Ok(())
                }
            })
            .await?
        }
    }
}

//! `skein host add`: register a host and start the strand that prepares it.

use anyhow::Context;
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::rules::{self, Refusal};

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// A name for the host (lowercase letters, digits, dots, dashes).
    #[arg(long)]
    pub name: String,
    /// Its address (IP or DNS name) as this control plane reaches it.
    #[arg(long)]
    pub address: String,
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    #[arg(long, default_value = "root")]
    pub user: String,
    /// A private key the host already authorizes for --user; skein then
    /// installs its own generated key and uses only that.
    #[arg(long)]
    pub key_file: std::path::PathBuf,
    /// Where skein keeps everything on the host.
    #[arg(long, default_value = "/var/lib/skein")]
    pub root_dir: String,
    /// Seconds between health checkups.
    #[arg(long, default_value_t = 60)]
    pub checkup_secs: u64,
    /// Postgres URL; default: the embedded cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn add(args: AddArgs) -> anyhow::Result<()> {
    let key = std::fs::read_to_string(&args.key_file).with_context(|| format!("reading {}", args.key_file.display()))?;
    let url = crate::up::database_url(args.database_url.clone()).await?;
    let pool = crate::worker::connect(&url, 2).await?;
    let secret = crate::worker::secret_key()?;
    let mut tx = pool.begin().await?;
    let new = NewHost {
        name: &args.name,
        address: &args.address,
        port: args.port,
        user: &args.user,
        bootstrap_private_key: &key,
        root_dir: &args.root_dir,
    };
    rules::new_host(&new).map_err(|e| anyhow::anyhow!(e.cli_message()))?;
    let frame = nexus::Frame { checkup_secs: args.checkup_secs, ..Default::default() };
    let id = host::add(&mut tx, &secret, &new, frame).await.map_err(explain)?;
    tx.commit().await?;
    if args.json {
        println!("{}", serde_json::json!({"id": id, "name": args.name, "state": "new"}));
    } else {
        println!("host {} added as {id}; its strand prepares it (follow it with `skein up` or respirate logs)", args.name);
    }
    Ok(())
}

/// Turn constraint violations that got past the checks into what the
/// operator should change (the same words as the API's, see `rules`).
fn explain(e: anyhow::Error) -> anyhow::Error {
    match rules::refusal(&format!("{e:#}")) {
        Some(Refusal::Conflict(why)) => anyhow::anyhow!(why),
        Some(Refusal::Invalid(i)) => anyhow::anyhow!(i.cli_message()),
        None => e,
    }
}

//! `skein host add`: register a host and start the strand that prepares it
//! (and with `--wait`, follow that strand until the host accepts VMs).

use anyhow::Context;
use serde_json::json;
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::rules;

use crate::console::{OpsOptions, Reply, Session};
use crate::follow::Subject;

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
    #[command(flatten)]
    pub wait: crate::follow::WaitArgs,
}

pub async fn add(s: &Session, args: AddArgs, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let key = std::fs::read_to_string(&args.key_file).with_context(|| format!("reading {}", args.key_file.display()))?;
    let secret = crate::worker::secret_key()?;
    let mut tx = s.pool.begin().await?;
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
    let id = host::add(&mut tx, &secret, &new, frame).await.map_err(rules::explain)?;
    tx.commit().await?;
    let added = format!("host {} added as {id}", args.name);
    if !args.wait.wait {
        let text = format!("{added}; its strand prepares it (`skein host show {id}`, or add --wait)");
        return Ok(Reply::new(text, json!({"id": id, "name": args.name, "state": "new"})));
    }
    if !opts.json {
        println!("{added}; following its strand until it accepts VMs");
    }
    let end = crate::follow::follow(&s.pool, id, Subject::Host, &args.wait, opts.json).await?;
    Ok(Reply::new(end.summary(), json!({"id": id, "name": args.name, "state": end.state})))
}

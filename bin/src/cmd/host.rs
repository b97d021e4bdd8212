//! `skein host add|drain|destroy` (and the console's `list` and `show`):
//! register a host and start the strand that prepares it (with `--wait`,
//! follow that strand until the host accepts VMs), or retire one. Each
//! change is confirmed and audited in the transaction that makes it.

use anyhow::anyhow;
use serde_json::json;
use skein_models::{Ubid, UbidType};
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::rules;

use crate::cmd::change::{self, Change};
use crate::cmd::follow::Subject;
use crate::cmd::session::{OpsOptions, Reply, Session};
use crate::signals::{self, HostAction};

/// `skein host ...`: the console's host commands and the ones that retire a host.
#[derive(clap::Subcommand, Debug)]
pub enum HostCli {
    #[command(flatten)]
    Ops(HostCmd),
    #[command(flatten)]
    Retire(Retire),
}

/// The host commands the console has too (it runs them: `console::fleet`).
#[derive(clap::Subcommand, Debug)]
pub enum HostCmd {
    /// Register a host reachable over SSH; a strand takes it over and prepares it.
    Add(AddArgs),
    /// Hosts with their state, capacity and strand (not destroyed ones, unless --all).
    List {
        /// Include destroyed hosts.
        #[arg(long)]
        all: bool,
    },
    /// One host: facts, capacity, its strand, its VMs and recent events.
    Show { id: String },
}

/// The commands that retire a host, the CLI's alone.
#[derive(clap::Subcommand, Debug)]
pub enum Retire {
    /// Take a host out of placement: no new VMs; those on it keep running.
    Drain {
        /// The host's id (vh...).
        id: String,
    },
    /// Retire a host (refused while VMs that are not destroyed are on it).
    Destroy {
        /// The host's id (vh...).
        id: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// A name for the host (lowercase letters, digits, dots, dashes).
    #[arg(long)]
    pub name: String,
    /// Its address (IP or DNS name) as this control plane reaches it.
    #[arg(long)]
    pub address: String,
    #[arg(long, default_value_t = 22, allow_negative_numbers = true)]
    pub port: i64,
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
    #[arg(long, default_value_t = 60, allow_negative_numbers = true)]
    pub checkup_secs: i64,
    /// Where its private-network tunnels listen for other hosts (IPv4) [default: --address].
    #[arg(long)]
    pub underlay: Option<String>,
    #[command(flatten)]
    pub wait: crate::cmd::follow::WaitArgs,
}

/// `skein host drain|destroy`, printed.
pub async fn run(cmd: Retire, opts: OpsOptions) -> anyhow::Result<()> {
    let (id, action) = match cmd {
        Retire::Drain { id } => (id, HostAction::Drain),
        Retire::Destroy { id } => (id, HostAction::Destroy),
    };
    let s = Session::open(&opts).await?;
    signal(&s, &id, action, &opts).await?.print(opts.json);
    Ok(())
}

async fn signal(s: &Session, id: &str, action: HostAction, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let host = Ubid::parse_as(id, UbidType::VmHost).map_err(|e| anyhow!("{e}"))?;
    let row = skein_models::vm_host::get(&mut *s.pool.acquire().await?, host.uuid()).await?.ok_or_else(|| anyhow!("no host {id}"))?;
    let (verb, audited) = match action {
        HostAction::Drain => ("drain", "host-drain"),
        HostAction::Destroy => ("destroy", "host-destroy"),
    };
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("{verb} host {} ({id})", row.name)).await?;
    let now = signals::host(change.conn(), host.uuid(), action, "operator", &json!({"operator": s.operator})).await?;
    change.commit(audited, Some(host.uuid()), &json!({"name": now.name})).await?;
    let text = match action {
        HostAction::Drain => format!("host {} draining: no new VMs are placed on it; its VMs keep running", now.name),
        HostAction::Destroy => format!("host {} is being destroyed by its strand (`skein host show {id}`)", now.name),
    };
    Ok(Reply::new(text, json!({"id": host, "name": now.name, "state": now.state})))
}

pub async fn add(s: &Session, args: AddArgs, opts: &OpsOptions) -> anyhow::Result<Reply> {
    // Everything that can be checked without the key first, then the key
    // file (bounded), then the key itself: the API's rules, in its order.
    let cli_error = |e: rules::Invalid| anyhow!(e.cli_message());
    rules::host_name(&args.name).map_err(cli_error)?;
    rules::host_address(&args.address).map_err(cli_error)?;
    rules::root_dir(&args.root_dir).map_err(cli_error)?;
    rules::in_range("port", args.port, rules::HOST_PORT).map_err(cli_error)?;
    rules::host_checkup_secs(args.checkup_secs).map_err(cli_error)?;
    if let Some(u) = &args.underlay {
        rules::underlay(u).map_err(cli_error)?;
    }
    let key = change::read_small_file(&args.key_file, change::KEY_FILE_MAX, "--key-file")?;
    let secret = crate::process::secret_key()?;
    let new = NewHost {
        name: &args.name,
        address: &args.address,
        port: args.port as u16, // in range: checked above
        user: &args.user,
        bootstrap_private_key: &key,
        root_dir: &args.root_dir,
    };
    rules::new_host(&new).map_err(cli_error)?;
    let what = format!("add host {} at {}@{}:{} (root {})", args.name, args.user, args.address, args.port, args.root_dir);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &what).await?;
    let frame = nexus::Frame { checkup_secs: args.checkup_secs as u64, ..Default::default() };
    let id = host::add(change.conn(), &secret, &new, frame).await.map_err(rules::explain)?;
    skein_models::vm_host::set_underlay(change.conn(), id.uuid(), args.underlay.as_deref()).await?;
    skein_models::event::record(change.conn(), id.uuid(), "added", "operator", &json!({"operator": s.operator})).await?;
    let detail = json!({"name": args.name, "address": args.address, "port": args.port, "user": args.user, "root_dir": args.root_dir, "underlay": args.underlay});
    change.commit("host-add", Some(id.uuid()), &detail).await?;
    let added = format!("host {} added as {id}", args.name);
    if !args.wait.wait {
        let text = format!("{added}; its strand prepares it (`skein host show {id}`, or add --wait)");
        return Ok(Reply::new(text, json!({"id": id, "name": args.name, "state": skein_models::vm_host::HostState::New})));
    }
    if !opts.json {
        println!("{added}; following its strand until it accepts VMs");
    }
    let end = crate::cmd::follow::follow(&s.pool, id, Subject::Host, &args.wait, opts.json).await?;
    Ok(Reply::new(end.summary(), json!({"id": id, "name": args.name, "state": end.state})))
}

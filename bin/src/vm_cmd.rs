//! `skein vm create`: a VM for a project, written with its strand in one
//! transaction (and with `--wait`, followed until it runs).

use anyhow::{anyhow, Context};
use serde_json::json;
use skein_models::{project, Ubid, UbidType};
use skein_progs::rules;
use skein_progs::vm::{self as vms, nexus, Spec};

use crate::console::{OpsOptions, Reply, Session};
use crate::follow::{self, Subject, WaitArgs};

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The project (tenant) it belongs to, by name.
    #[arg(long)]
    pub project: String,
    /// Its name, unique in the project (lowercase letters, digits, dashes).
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub cores: i32,
    #[arg(long, default_value_t = 512)]
    pub memory_mib: i32,
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: i32,
    /// The owner's SSH public key (`ssh-ed25519 AAAA... comment`), or `@path` to read it from a file.
    #[arg(long)]
    pub public_key: String,
    /// A private subnet of the project to join.
    #[arg(long)]
    pub subnet: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn create(s: &Session, args: CreateArgs, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let key = match args.public_key.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the public key from {path}"))?,
        None => args.public_key.clone(),
    };
    let subnet = args.subnet.as_deref().map(|id| Ubid::parse_as(id, UbidType::Subnet)).transpose().map_err(|e| anyhow!("--subnet: {e}"))?;
    let spec = Spec {
        name: &args.name,
        cores: args.cores,
        memory_mib: args.memory_mib,
        disk_mib: args.disk_mib,
        public_key: key.trim(),
        subnet,
    };
    rules::vm_spec(&spec).map_err(|e| anyhow!(e.cli_message()))?;
    let mut tx = s.pool.begin().await?;
    let owner = project::by_name(&mut tx, &args.project)
        .await?
        .ok_or_else(|| anyhow!("no project {:?} (`skein project list` shows them)", args.project))?;
    let id = vms::create(&mut tx, Ubid::from_uuid(owner.id), &spec, nexus::Frame::default()).await.map_err(|e| rules::explain(e.into()))?;
    tx.commit().await?;
    let made = format!("vm {} created as {id} in project {}", args.name, args.project);
    if !args.wait.wait {
        let text = format!("{made}; its strand places and starts it (`skein vm show {id}`, or add --wait)");
        return Ok(Reply::new(text, json!({"id": id, "name": args.name, "state": "creating"})));
    }
    if !opts.json {
        println!("{made}; following its strand until it runs");
    }
    let end = follow::follow(&s.pool, id, Subject::Vm, &args.wait, opts.json).await?;
    Ok(Reply::new(end.summary(), json!({"id": id, "name": args.name, "state": end.state})))
}

//! `skein subnet create|list|show|delete|rekey`: a project's private
//! subnets, as the API has them (the same rules, the same refusals); also
//! the console's `subnet` commands. `show` adds the hosts its VMs run on,
//! the tunnels between them and their last rekey. Create, delete and rekey
//! are changes: confirmed, and audited in the transaction that makes them.
//! A subnet is named by its id (`ps...`) or by its name with `--project`.

use anyhow::{anyhow, bail};
use serde_json::json;
use skein_models::subnet::{self, Subnet};
use skein_models::{project, Ubid, UbidType};
use skein_progs::rules;
use skein_progs::vnet::{rekey, view};

use crate::cmd::change::Change;
use crate::cmd::session::{OpsOptions, Reply, Session};

#[derive(clap::Subcommand, Debug)]
pub enum SubnetCmd {
    /// Make a private subnet: its VMs get addresses from CIDR and reach each other on whichever hosts they run.
    Create {
        /// Its name, unique among the project's live subnets (lowercase letters, digits, dashes).
        name: String,
        /// The project it belongs to, by name.
        #[arg(long)]
        project: String,
        /// Its IPv4 range: inside 10/8, 172.16/12 or 192.168/16, /16 to /29, e.g. 10.0.0.0/24.
        #[arg(long)]
        cidr: String,
    },
    /// List a project's live subnets.
    List {
        #[arg(long)]
        project: String,
    },
    /// A subnet, its VMs and their addresses, its hosts, the tunnels between them and their last rekey.
    Show {
        /// Its id (ps...), or its name with --project.
        subnet: String,
        #[arg(long)]
        project: Option<String>,
    },
    /// Delete a subnet (refused while it has VMs that are not destroyed); its name is free again.
    Delete {
        /// Its id (ps...), or its name with --project.
        subnet: String,
        #[arg(long)]
        project: Option<String>,
    },
    /// Replace the tunnel keys of every host the subnet spans, make-before-break (traffic keeps flowing).
    Rekey {
        /// Its id (ps...), or its name with --project.
        subnet: String,
        #[arg(long)]
        project: Option<String>,
    },
}

pub async fn run(cmd: SubnetCmd, opts: OpsOptions) -> anyhow::Result<()> {
    let s = Session::open(&opts).await?;
    execute(&s, cmd, &opts).await?.print(opts.json);
    Ok(())
}

/// One subnet command, for the CLI and the console.
pub async fn execute(s: &Session, cmd: SubnetCmd, opts: &OpsOptions) -> anyhow::Result<Reply> {
    match cmd {
        SubnetCmd::Create { name, project, cidr } => create(s, &name, &project, &cidr, opts).await,
        SubnetCmd::List { project } => list(s, &project).await,
        SubnetCmd::Show { subnet, project } => show(s, &subnet, project.as_deref()).await,
        SubnetCmd::Delete { subnet, project } => delete(s, &subnet, project.as_deref(), opts).await,
        SubnetCmd::Rekey { subnet, project } => rekey(s, &subnet, project.as_deref(), opts).await,
    }
}

async fn project_id(s: &Session, name: &str) -> anyhow::Result<uuid::Uuid> {
    let p = project::by_name(&mut *s.pool.acquire().await?, name).await?;
    Ok(p.ok_or_else(|| anyhow!("no project {name:?} (`skein project list` shows them)"))?.id)
}

/// The live subnet `reference` names: an id, or a name in `project`.
async fn find(s: &Session, reference: &str, project: Option<&str>) -> anyhow::Result<Subnet> {
    let found = match (Ubid::parse_as(reference, UbidType::Subnet), project) {
        (Ok(id), _) => subnet::by_id(&mut *s.pool.acquire().await?, id.uuid()).await?,
        (Err(_), Some(p)) => {
            let p = project_id(s, p).await?;
            subnet::by_name(&mut *s.pool.acquire().await?, p, reference).await?
        }
        (Err(_), None) => bail!("{reference:?} is not a subnet id (ps...); to name a subnet by its name, add --project"),
    };
    found.ok_or_else(|| anyhow!("no live subnet {reference}"))
}

fn line(sub: &Subnet) -> String {
    format!("{}  {:<24} {}", Ubid::from_uuid(sub.id), sub.name, sub.cidr)
}

async fn create(s: &Session, name: &str, project: &str, cidr: &str, opts: &OpsOptions) -> anyhow::Result<Reply> {
    rules::vm_name("name", name).map_err(|e| anyhow!("the subnet {}", e.rule))?;
    rules::cidr(cidr).map_err(|e| anyhow!(e.cli_message()))?;
    let owner = project_id(s, project).await?;
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("create subnet {name} ({cidr}) in project {project}")).await?;
    let id = subnet::create(change.conn(), owner, name, cidr).await.map_err(|e| rules::explain(e.into()))?;
    let detail = json!({"name": name, "project": project, "cidr": cidr});
    change.commit("subnet-create", Some(id.uuid()), &detail).await?;
    let answer = json!({"id": id, "name": name, "project": project, "cidr": cidr});
    Ok(Reply::new(format!("subnet {name} ({cidr}) created as {id} in project {project}"), answer))
}

/// "1 VM", "2 VMs".
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

async fn list(s: &Session, project: &str) -> anyhow::Result<Reply> {
    let owner = project_id(s, project).await?;
    // A project has few subnets; one large page holds them all.
    let subnets = subnet::page(&mut *s.pool.acquire().await?, owner, None, 10_000).await?;
    let mut text: String = subnets.iter().map(|sub| line(sub) + "\n").collect();
    text.push_str(&format!("{} in project {project}", plural(subnets.len(), "subnet")));
    Ok(Reply::new(text, json!({"subnets": subnets})))
}

async fn show(s: &Session, reference: &str, project: Option<&str>) -> anyhow::Result<Reply> {
    let sub = find(s, reference, project).await?;
    let mut conn = s.pool.acquire().await?;
    let vms = subnet::members(&mut conn, sub.id).await?;
    let mesh = view::mesh(&mut conn, sub.id).await?;
    let mut text = line(&sub) + &format!("  vni {}\n", sub.vni);
    text.extend(vms.iter().map(|m| format!("  {:<18} {}  {:<24} {}\n", m.private_ip, Ubid::from_uuid(m.id), m.name, m.state)));
    text.push_str(&plural(vms.len(), "VM"));
    text.push('\n');
    for h in &mesh.hosts {
        let sending = h.keys.iter().find(|k| k.state == "sending").map(|k| format!("gen {}", k.gen)).unwrap_or_else(|| "no key".into());
        let rekey = match (&h.rekey_phase, h.last_rekey_at) {
            (Some(phase), _) => format!("rekeying ({phase})"),
            (None, Some(at)) => format!("last rekey {}", at.format("%Y-%m-%d %H:%M:%S")),
            (None, None) => "never rekeyed".into(),
        };
        text.push_str(&format!("  host {}  {:<16} {:<10} {}  {}, {}\n", h.id, h.name, h.state, plural(h.vms as usize, "VM"), sending, rekey));
    }
    for t in &mesh.tunnels {
        let seen = t.last_handshake_secs.map(|s| format!("handshake {s}s ago")).unwrap_or_else(|| "no handshake yet".into());
        text.push_str(&format!("  tunnel {} <-> {}  {}  {}\n", t.hosts[0], t.hosts[1], if t.up { "up" } else { "DOWN" }, seen));
    }
    text.push_str(&format!("{} on {}", plural(mesh.tunnels.len(), "tunnel"), plural(mesh.hosts.len(), "host")));
    let mut answer = serde_json::to_value(&sub)?;
    answer["vms"] = serde_json::to_value(&vms)?;
    answer["hosts"] = serde_json::to_value(&mesh.hosts)?;
    answer["tunnels"] = serde_json::to_value(&mesh.tunnels)?;
    Ok(Reply::new(text, answer))
}

async fn rekey(s: &Session, reference: &str, project: Option<&str>, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let sub = find(s, reference, project).await?;
    let id = Ubid::from_uuid(sub.id);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("rekey the tunnels of subnet {} ({id})", sub.name)).await?;
    let started = rekey::start_for_subnet(change.conn(), sub.id, "operator").await?;
    change.commit("subnet-rekey", Some(sub.id), &json!({"name": sub.name, "rekeys": started})).await?;
    let mut text: String = started
        .iter()
        .map(|r| match r.strand {
            Some(strand) => format!("  host {}: rekey {strand}\n", r.host),
            None => format!("  host {}: no tunnel to rekey\n", r.host),
        })
        .collect();
    text.push_str(&format!("subnet {}: {} (follow with `skein strand show ID`)", sub.name, plural(started.len(), "rekey")));
    Ok(Reply::new(text, json!({"subnet": id, "rekeys": started})))
}

async fn delete(s: &Session, reference: &str, project: Option<&str>, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let sub = find(s, reference, project).await?;
    let id = Ubid::from_uuid(sub.id);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("delete subnet {} ({id}, {})", sub.name, sub.cidr)).await?;
    // Locked: no VM joins it between counting and deleting.
    if subnet::lock_live(change.conn(), sub.project_id, Some(sub.id), "").await?.is_none() {
        bail!("subnet {} was deleted meanwhile; nothing changed", sub.name);
    }
    let live = subnet::live_vms(change.conn(), sub.id).await?;
    if live > 0 {
        bail!("subnet {} has {live} VMs that are not destroyed; destroy them first (`skein subnet show {id}`)", sub.name);
    }
    subnet::delete(change.conn(), sub.id).await?;
    change.commit("subnet-delete", Some(sub.id), &json!({"name": sub.name, "cidr": sub.cidr})).await?;
    Ok(Reply::new(format!("subnet {} ({id}) deleted; its name is free again", sub.name), json!({"id": id, "name": sub.name, "deleted": true})))
}

//! `skein project create|list|set-quota|delete`: the tenants that own VMs
//! and API tokens. Each change is confirmed and audited in the transaction
//! that makes it. A deleted project keeps its row (its VMs' history) and
//! frees its name; its tokens are revoked with it.

use anyhow::anyhow;
use serde_json::json;
use skein_models::{project, Ubid, UbidType};
use skein_progs::rules;

use crate::cmd::change::Change;
use crate::cmd::session::{OpsOptions, Reply, Session};

#[derive(clap::Subcommand, Debug)]
pub enum ProjectCmd {
    /// Make a project.
    Create {
        /// The project's name (lowercase letters, digits, dashes).
        name: String,
        /// How many VMs it may have at once.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
        vm_quota: i64,
    },
    /// List projects and their VM counts.
    List,
    /// Change how many VMs a project may have (fewer than it has stops only new ones).
    SetQuota {
        name: String,
        #[arg(allow_negative_numbers = true)]
        vm_quota: i64,
    },
    /// Delete a project and revoke its tokens (refused while it has VMs that are not destroyed).
    Delete { name: String },
}

pub async fn run(cmd: ProjectCmd, opts: OpsOptions) -> anyhow::Result<()> {
    let s = Session::open(&opts).await?;
    let reply = match cmd {
        ProjectCmd::Create { name, vm_quota } => create(&s, &name, vm_quota, &opts).await?,
        ProjectCmd::List => list(&s).await?,
        ProjectCmd::SetQuota { name, vm_quota } => set_quota(&s, &name, vm_quota, &opts).await?,
        ProjectCmd::Delete { name } => delete(&s, &name, &opts).await?,
    };
    reply.print(opts.json);
    Ok(())
}

fn quota(vm_quota: i64) -> anyhow::Result<i32> {
    rules::in_range("vm_quota", vm_quota, (0, i32::MAX.into())).map_err(|e| anyhow!(e.cli_message()))?;
    Ok(vm_quota as i32)
}

async fn by_name(s: &Session, name: &str) -> anyhow::Result<project::Project> {
    project::by_name(&mut *s.pool.acquire().await?, name).await?.ok_or_else(|| anyhow!("no project {name:?} (`skein project list` shows them)"))
}

async fn create(s: &Session, name: &str, vm_quota: i64, opts: &OpsOptions) -> anyhow::Result<Reply> {
    rules::vm_name("name", name).map_err(|e| anyhow!("the project {}", e.rule))?;
    let vm_quota = quota(vm_quota)?;
    let id = Ubid::generate(UbidType::Project);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("create project {name} (VM quota {vm_quota})")).await?;
    project::insert(change.conn(), id.uuid(), name, vm_quota).await.map_err(|e| rules::explain(e.into()))?;
    change.commit("project-create", Some(id.uuid()), &json!({"name": name, "vm_quota": vm_quota})).await?;
    Ok(Reply::new(format!("project {name} created as {id} (VM quota {vm_quota})"), json!({"id": id, "name": name, "vm_quota": vm_quota})))
}

async fn list(s: &Session) -> anyhow::Result<Reply> {
    let projects = project::list(&mut *s.pool.acquire().await?).await?;
    let mut text: String = projects.iter().map(|p| format!("{}  {:<24} {}/{} VMs\n", Ubid::from_uuid(p.id), p.name, p.vm_count, p.vm_quota)).collect();
    text.push_str(&format!("{} projects", projects.len()));
    Ok(Reply::new(text, json!({"projects": projects})))
}

async fn set_quota(s: &Session, name: &str, vm_quota: i64, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let vm_quota = quota(vm_quota)?;
    let p = by_name(s, name).await?;
    let what = format!("set project {name}'s VM quota to {vm_quota} (now {}, {} in use)", p.vm_quota, p.vm_count);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &what).await?;
    if !project::set_quota(change.conn(), p.id, vm_quota).await? {
        anyhow::bail!("project {name} was deleted meanwhile; nothing changed");
    }
    change.commit("project-set-quota", Some(p.id), &json!({"name": name, "from": p.vm_quota, "to": vm_quota})).await?;
    let id = Ubid::from_uuid(p.id);
    Ok(Reply::new(format!("project {name}: VM quota {vm_quota} ({} in use)", p.vm_count), json!({"id": id, "name": name, "vm_quota": vm_quota})))
}

async fn delete(s: &Session, name: &str, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let p = by_name(s, name).await?;
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("delete project {name} and revoke its tokens")).await?;
    // Locked: no VM can be created in it between counting and deleting.
    project::get_for_update(change.conn(), p.id).await?.ok_or_else(|| anyhow!("project {name} was deleted meanwhile; nothing changed"))?;
    let live = project::live_vms(change.conn(), p.id).await?;
    if live > 0 {
        anyhow::bail!("project {name} has {live} VMs that are not destroyed; destroy them first (`skein vm list --project {name}`)");
    }
    project::delete(change.conn(), p.id).await?;
    change.commit("project-delete", Some(p.id), &json!({"name": name})).await?;
    let id = Ubid::from_uuid(p.id);
    Ok(Reply::new(format!("project {name} ({id}) deleted; its tokens are revoked"), json!({"id": id, "name": name, "deleted": true})))
}

//! Hosts that run VMs: what they are (learned facts) and how they are doing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

crate::text_enum! {
    /// Where a host is in its life (`vm_host.state`); only an accepting host
    /// gets new VMs.
    pub enum HostState {
        New = "new",
        Preparing = "preparing",
        Accepting = "accepting",
        Unreachable = "unreachable",
        /// No new VMs (an operator drained it); those on it keep running.
        Draining = "draining",
        Destroyed = "destroyed",
    }
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct VmHost {
    pub id: Uuid,
    pub sshable_id: Uuid,
    pub name: String,
    pub root_dir: String,
    pub state: HostState,
    /// What the host's learn children found (None until they did).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub facts: Facts,
    pub agent_version: Option<String>,
    pub image_version: Option<String>,
    pub boot_id: Option<String>,
    /// Where its tunnels listen for other hosts (None: its SSH address).
    pub underlay: Option<String>,
    pub missed_checks: i32,
    pub used_cores: i32,
    pub used_memory_mib: i64,
    pub used_disk_mib: i64,
    pub last_checkup_at: Option<DateTime<Utc>>,
    pub learned_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut PgConnection, id: Uuid, sshable_id: Uuid, name: &str, root_dir: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO vm_host (id, sshable_id, name, root_dir) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(sshable_id)
        .bind(name)
        .bind(root_dir)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<VmHost>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM vm_host WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// The host, locked until the caller's transaction ends: a capacity
/// reservation on it (an UPDATE of this row) waits until then, so what the
/// caller decides from the host's VMs cannot be overtaken by a placement.
pub async fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<VmHost>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM vm_host WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(conn).await
}

pub async fn set_state(conn: &mut PgConnection, id: Uuid, state: HostState) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm_host SET state = $2 WHERE id = $1").bind(id).bind(state).execute(conn).await?;
    Ok(())
}

/// Where the host's tunnels listen for other hosts ("a.b.c.d"; None: its
/// SSH address). Refused by the database unless a dotted IPv4 address.
pub async fn set_underlay(conn: &mut PgConnection, id: Uuid, underlay: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm_host SET underlay = $2 WHERE id = $1").bind(id).bind(underlay).execute(conn).await?;
    Ok(())
}

pub async fn set_image_version(conn: &mut PgConnection, id: Uuid, version: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm_host SET image_version = $2 WHERE id = $1").bind(id).bind(version).execute(conn).await?;
    Ok(())
}

pub async fn set_agent_version(conn: &mut PgConnection, id: Uuid, version: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm_host SET agent_version = $2 WHERE id = $1").bind(id).bind(version).execute(conn).await?;
    Ok(())
}

/// What the host's learn children found.
#[derive(Clone, Debug, Default, FromRow, Serialize)]
pub struct Facts {
    pub cpus: Option<i32>,
    pub cores: Option<i32>,
    pub sockets: Option<i32>,
    pub cpu_model: Option<String>,
    pub memory_mib: Option<i64>,
    pub storage_total_mib: Option<i64>,
    pub storage_free_mib: Option<i64>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub kvm_usable: Option<bool>,
    pub kvm_reason: Option<String>,
}

pub async fn record_facts(conn: &mut PgConnection, id: Uuid, f: &Facts) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vm_host SET cpus = coalesce($2, cpus), cores = coalesce($3, cores), sockets = coalesce($4, sockets), \
             cpu_model = coalesce($5, cpu_model), memory_mib = coalesce($6, memory_mib), \
             storage_total_mib = coalesce($7, storage_total_mib), storage_free_mib = coalesce($8, storage_free_mib), \
             os = coalesce($9, os), kernel = coalesce($10, kernel), arch = coalesce($11, arch), \
             kvm_usable = coalesce($12, kvm_usable), kvm_reason = coalesce($13, kvm_reason), learned_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(f.cpus)
    .bind(f.cores)
    .bind(f.sockets)
    .bind(&f.cpu_model)
    .bind(f.memory_mib)
    .bind(f.storage_total_mib)
    .bind(f.storage_free_mib)
    .bind(&f.os)
    .bind(&f.kernel)
    .bind(&f.arch)
    .bind(f.kvm_usable)
    .bind(&f.kvm_reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// A checkup answered: the host is reachable; note its boot id.
pub async fn checkup_ok(conn: &mut PgConnection, id: Uuid, boot_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm_host SET missed_checks = 0, last_checkup_at = now(), boot_id = $2 WHERE id = $1")
        .bind(id)
        .bind(boot_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A checkup went unanswered; returns the count of consecutive misses.
pub async fn checkup_missed(conn: &mut PgConnection, id: Uuid) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("UPDATE vm_host SET missed_checks = missed_checks + 1, last_checkup_at = now() WHERE id = $1 RETURNING missed_checks")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// One page of hosts in id order after the cursor `after` (keyset paging).
pub async fn page(conn: &mut PgConnection, after: Option<Uuid>, limit: i64) -> Result<Vec<VmHost>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM vm_host WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await
}

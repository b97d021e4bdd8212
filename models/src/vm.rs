//! VMs: what each one is (owner, size, key, host, desired state). What is
//! true on the host right now (qemu's pid, the SSH port) is not here: it is
//! rediscovered from the host.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::capacity::Size;

crate::text_enum! {
    /// What a VM is now, for people (`vm.state`).
    pub enum VmState {
        /// Its row exists; its strand has not placed it yet.
        Creating = "creating",
        /// No host has room for it yet.
        Waiting = "waiting",
        Starting = "starting",
        Running = "running",
        Stopped = "stopped",
        /// Its host stopped answering; it may well still run.
        Unavailable = "unavailable",
        Destroying = "destroying",
        Destroyed = "destroyed",
    }
}

crate::text_enum! {
    /// What its owner wants it to be (`vm.desired_state`).
    pub enum DesiredState { Running = "running", Stopped = "stopped", Destroyed = "destroyed" }
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Vm {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub cores: i32,
    pub memory_mib: i32,
    pub disk_mib: i32,
    pub public_key: String,
    pub host_id: Option<Uuid>,
    pub desired_state: DesiredState,
    pub state: VmState,
    pub waiting_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub subnet_id: Option<Uuid>,
    /// "a.b.c.d/len" on its subnet.
    pub private_ip: Option<String>,
    /// Where its SSH answers, while it runs (see [`set_ssh`]).
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    pub ssh_seen_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, project_id, name, cores, memory_mib, disk_mib, public_key, host_id, desired_state, state, \
                       waiting_since, created_at, subnet_id, private_ip::text AS private_ip, \
                       ssh_host, ssh_port, ssh_user, ssh_seen_at";

impl Vm {
    pub fn size(&self) -> Size {
        Size { cores: self.cores, memory_mib: self.memory_mib as i64, disk_mib: self.disk_mib as i64 }
    }

    /// Where its SSH answers, if it was seen while the VM runs (the row
    /// holds all four columns or none).
    pub fn ssh(&self) -> Option<Ssh> {
        match (&self.ssh_host, self.ssh_port, &self.ssh_user, self.ssh_seen_at) {
            (Some(host), Some(port), Some(user), Some(seen_at)) => Some(Ssh { host: host.clone(), port, user: user.clone(), seen_at }),
            _ => None,
        }
    }
}

/// Where a VM's owner connects: `ssh -p port user@host`, as seen at `seen_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ssh {
    pub host: String,
    pub port: i32,
    pub user: String,
    pub seen_at: DateTime<Utc>,
}

pub struct NewVm<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: &'a str,
    pub cores: i32,
    pub memory_mib: i32,
    pub disk_mib: i32,
    pub public_key: &'a str,
}

pub async fn insert(conn: &mut PgConnection, v: &NewVm<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vm (id, project_id, name, cores, memory_mib, disk_mib, public_key) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(v.id)
    .bind(v.project_id)
    .bind(v.name)
    .bind(v.cores)
    .bind(v.memory_mib)
    .bind(v.disk_mib)
    .bind(v.public_key)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Vm>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM vm WHERE id = $1")).bind(id).fetch_optional(conn).await
}

/// Its state for people. Leaving 'running' (and 'unavailable', which keeps
/// the last endpoint seen, with its time) forgets where its SSH answered:
/// a VM that is not running has no endpoint to show.
pub async fn set_state(conn: &mut PgConnection, id: Uuid, state: VmState) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vm SET state = $2, waiting_since = CASE WHEN $2 = 'waiting' THEN coalesce(waiting_since, now()) END, \
             ssh_host = CASE WHEN $2 IN ('running', 'unavailable') THEN ssh_host END, \
             ssh_port = CASE WHEN $2 IN ('running', 'unavailable') THEN ssh_port END, \
             ssh_user = CASE WHEN $2 IN ('running', 'unavailable') THEN ssh_user END, \
             ssh_seen_at = CASE WHEN $2 IN ('running', 'unavailable') THEN ssh_seen_at END \
         WHERE id = $1",
    )
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Its host just said the guest's SSH answers on `port` of `host` (the
/// host's own SSH address), for `user`: what its owner connects to, seen now.
pub async fn set_ssh(conn: &mut PgConnection, id: Uuid, host: &str, port: i32, user: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm SET ssh_host = $2, ssh_port = $3, ssh_user = $4, ssh_seen_at = now() WHERE id = $1")
        .bind(id)
        .bind(host)
        .bind(port)
        .bind(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// The VM lives on `host` from now on.
pub async fn place(conn: &mut PgConnection, id: Uuid, host: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm SET host_id = $2, state = 'starting', waiting_since = NULL WHERE id = $1")
        .bind(id)
        .bind(host)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_desired(conn: &mut PgConnection, id: Uuid, desired: DesiredState) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm SET desired_state = $2 WHERE id = $1").bind(id).bind(desired).execute(conn).await?;
    Ok(())
}

/// A host stopped answering: its VMs that were (becoming) available are not
/// known to run any more. Returns them.
pub async fn mark_unavailable_on(conn: &mut PgConnection, host: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("UPDATE vm SET state = 'unavailable' WHERE host_id = $1 AND state IN ('running', 'starting') RETURNING id")
        .bind(host)
        .fetch_all(conn)
        .await
}

/// The VMs placed on a host and not destroyed.
pub async fn on_host(conn: &mut PgConnection, host: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM vm WHERE host_id = $1 AND state <> 'destroyed' ORDER BY id").bind(host).fetch_all(conn).await
}

/// One page of VMs in id order (ids are time-ordered UBIDs), after the
/// cursor `after`, of `project` or of every project. A keyset page: stable
/// while rows are added, and as cheap for the last page as for the first.
pub async fn page(conn: &mut PgConnection, project: Option<Uuid>, after: Option<Uuid>, limit: i64) -> Result<Vec<Vm>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM vm WHERE ($1::uuid IS NULL OR project_id = $1) AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    ))
    .bind(project)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The VM, locked until the caller's transaction ends, so two requests to
/// change it (stop, start, destroy) are decided one after the other.
pub async fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<Vm>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM vm WHERE id = $1 FOR UPDATE")).bind(id).fetch_optional(conn).await
}

//! Projects (tenants): a name and a VM quota. VMs, subnets and API tokens
//! belong to one. A deleted project keeps its row (its destroyed VMs refer
//! to it) with `deleted_at` set, and frees its name.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub vm_quota: i32,
    pub vm_count: i32,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, vm_quota, vm_count, created_at, deleted_at";

pub async fn insert(conn: &mut PgConnection, id: Uuid, name: &str, vm_quota: i32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO project (id, name, vm_quota) VALUES ($1, $2, $3)").bind(id).bind(name).bind(vm_quota).execute(conn).await?;
    Ok(())
}

/// By id, deleted or not (ids name history too).
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM project WHERE id = $1")).bind(id).fetch_optional(conn).await
}

/// The live project of that name.
pub async fn by_name(conn: &mut PgConnection, name: &str) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM project WHERE name = $1 AND deleted_at IS NULL")).bind(name).fetch_optional(conn).await
}

/// The live projects, by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Project>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM project WHERE deleted_at IS NULL ORDER BY name")).fetch_all(conn).await
}

/// A new quota for a live project; false if there is none. A quota below
/// the VMs it has is allowed: it only stops new ones.
pub async fn set_quota(conn: &mut PgConnection, id: Uuid, vm_quota: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE project SET vm_quota = $2 WHERE id = $1 AND deleted_at IS NULL").bind(id).bind(vm_quota).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The live project, locked until the caller's transaction ends: a VM
/// create (which takes quota with an UPDATE of this row) waits until then,
/// so what the caller decides from its VMs cannot be overtaken by a create.
pub async fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM project WHERE id = $1 AND deleted_at IS NULL FOR UPDATE")).bind(id).fetch_optional(conn).await
}

/// How many of the project's VMs are not destroyed yet.
pub async fn live_vms(conn: &mut PgConnection, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM vm WHERE project_id = $1 AND state <> 'destroyed'").bind(id).fetch_one(conn).await
}

/// Mark the project deleted and revoke its tokens (one transaction: the
/// caller's). Call with the row locked and no live VMs.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE project SET deleted_at = now() WHERE id = $1").bind(id).execute(&mut *conn).await?;
    sqlx::query("UPDATE api_token SET revoked_at = now() WHERE project_id = $1 AND revoked_at IS NULL").bind(id).execute(conn).await?;
    Ok(())
}

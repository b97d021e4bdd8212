//! Projects (tenants): a name and a VM quota. VMs, subnets and API tokens
//! belong to one.

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
}

pub async fn insert(conn: &mut PgConnection, id: Uuid, name: &str, vm_quota: i32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO project (id, name, vm_quota) VALUES ($1, $2, $3)").bind(id).bind(name).bind(vm_quota).execute(conn).await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, vm_quota, vm_count, created_at FROM project WHERE id = $1").bind(id).fetch_optional(conn).await
}

pub async fn by_name(conn: &mut PgConnection, name: &str) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, vm_quota, vm_count, created_at FROM project WHERE name = $1").bind(name).fetch_optional(conn).await
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Project>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, vm_quota, vm_count, created_at FROM project ORDER BY name").fetch_all(conn).await
}

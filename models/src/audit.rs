//! The operator audit trail: every change an operator makes by hand (a
//! semaphore, a wake, a reschedule, an inline step, a resolved page) is a row
//! here, written in the same transaction as the change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{Ubid, UbidType};

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Entry {
    pub id: Uuid,
    pub operator: String,
    pub action: String,
    pub target_id: Option<Uuid>,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

pub async fn record(conn: &mut PgConnection, operator: &str, action: &str, target: Option<Uuid>, detail: &Value) -> Result<Uuid, sqlx::Error> {
    let id = Ubid::generate(UbidType::Audit).uuid();
    sqlx::query("INSERT INTO operator_audit (id, operator, action, target_id, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(operator)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(id)
}

/// The newest entries first, optionally only those about one target.
pub async fn recent(conn: &mut PgConnection, target: Option<Uuid>, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM operator_audit WHERE $1::uuid IS NULL OR target_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(conn)
    .await
}

//! Lifecycle events of VMs and hosts: what happened, to what, caused by
//! whom (`system`: a strand; `user`: a project's request; `operator`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{Ubid, UbidType};

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Event {
    pub id: Uuid,
    pub subject_id: Uuid,
    pub kind: String,
    pub actor: String,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

pub async fn record(conn: &mut PgConnection, subject: Uuid, kind: &str, actor: &str, detail: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO event (id, subject_id, kind, actor, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(Ubid::generate(UbidType::Event).uuid())
        .bind(subject)
        .bind(kind)
        .bind(actor)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

/// A subject's events, oldest first.
pub async fn of(conn: &mut PgConnection, subject: Uuid) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM event WHERE subject_id = $1 ORDER BY created_at, id").bind(subject).fetch_all(conn).await
}

/// A subject's latest `limit` events, oldest first.
pub async fn recent(conn: &mut PgConnection, subject: Uuid, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM (SELECT * FROM event WHERE subject_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) e ORDER BY created_at, id")
        .bind(subject)
        .bind(limit)
        .fetch_all(conn)
        .await
}

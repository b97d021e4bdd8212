//! Pages: problems an operator must look at. A tag names one problem and is
//! open at most once, so raising the same page twice is a no-op.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{Ubid, UbidType};

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Page {
    pub id: Uuid,
    pub summary: String,
    pub tag: String,
    pub severity: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Raise a page unless one with this tag is already open. True if it is new.
pub async fn raise(
    conn: &mut PgConnection,
    tag: &str,
    summary: &str,
    severity: &str,
    details: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO page (id, tag, summary, severity, details) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tag) WHERE resolved_at IS NULL DO NOTHING",
    )
    .bind(Ubid::generate(UbidType::Page).uuid())
    .bind(tag)
    .bind(summary)
    .bind(severity)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Resolve the open page with this tag, if any. True if one was open.
pub async fn resolve(conn: &mut PgConnection, tag: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE page SET resolved_at = now() WHERE tag = $1 AND resolved_at IS NULL")
        .bind(tag)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn open(conn: &mut PgConnection) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM page WHERE resolved_at IS NULL ORDER BY created_at").fetch_all(conn).await
}

pub async fn by_tag(conn: &mut PgConnection, tag: &str) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM page WHERE tag = $1 ORDER BY created_at").bind(tag).fetch_all(conn).await
}

/// Open pages (first), and with `include_resolved` those resolved in the last week; newest first.
pub async fn recent(conn: &mut PgConnection, include_resolved: bool, limit: i64) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM page WHERE resolved_at IS NULL OR ($1 AND resolved_at > now() - interval '7 days') \
         ORDER BY resolved_at IS NULL DESC, created_at DESC LIMIT $2",
    )
    .bind(include_resolved)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Page>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM page WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// Resolve a page by id. False if it was not open.
pub async fn resolve_id(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE page SET resolved_at = now() WHERE id = $1 AND resolved_at IS NULL").bind(id).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// How many pages are open, per severity (those with none are absent).
pub async fn open_by_severity(pool: &sqlx::PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT severity, count(*) FROM page WHERE resolved_at IS NULL GROUP BY severity").fetch_all(pool).await
}

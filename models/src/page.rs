//! Pages: problems an operator must look at. A tag names one problem and is
//! open at most once, so raising the same page twice is a no-op.
//!
//! Pages can be forwarded: while a hook (a webhook URL or a command) is set,
//! raising a new page and resolving an open one each start a strand of
//! [`FORWARD_PROG`] in the same transaction. That strand delivers the change
//! (retried with backoff like any failing step), so the step that raised
//! the page never waits on the network, and a change that did not commit
//! is never delivered.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::strand::{self, NewStrand};
use crate::{Ubid, UbidType};

/// The prog that delivers a page change (`progs::pages::Forward`), and its label.
pub const FORWARD_PROG: &str = "Pages::Forward";
pub const FORWARD_LABEL: &str = "Deliver";

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
    let new: Option<Page> = sqlx::query_as(
        "INSERT INTO page (id, tag, summary, severity, details) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tag) WHERE resolved_at IS NULL DO NOTHING RETURNING *",
    )
    .bind(Ubid::generate(UbidType::Page).uuid())
    .bind(tag)
    .bind(summary)
    .bind(severity)
    .bind(details)
    .fetch_optional(&mut *conn)
    .await?;
    match new {
        Some(page) => forward(conn, &page, "raised").await.map(|()| true),
        None => Ok(false),
    }
}

/// Resolve the open page with this tag, if any. True if one was open.
pub async fn resolve(conn: &mut PgConnection, tag: &str) -> Result<bool, sqlx::Error> {
    let done: Option<Page> = sqlx::query_as("UPDATE page SET resolved_at = now() WHERE tag = $1 AND resolved_at IS NULL RETURNING *")
        .bind(tag)
        .fetch_optional(&mut *conn)
        .await?;
    resolved(conn, done).await
}

async fn resolved(conn: &mut PgConnection, done: Option<Page>) -> Result<bool, sqlx::Error> {
    match done {
        Some(page) => forward(conn, &page, "resolved").await.map(|()| true),
        None => Ok(false),
    }
}

/// The open page with this tag, if any.
pub async fn open_with_tag(conn: &mut PgConnection, tag: &str) -> Result<Option<Page>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM page WHERE tag = $1 AND resolved_at IS NULL").bind(tag).fetch_optional(conn).await
}

/// When a page with this tag was last resolved, if ever.
pub async fn last_resolved(conn: &mut PgConnection, tag: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(resolved_at) FROM page WHERE tag = $1").bind(tag).fetch_one(conn).await
}

/// Say what the open page with this tag is about now (a cause that grew or
/// shrank), without raising it again: not forwarded. False if none is open.
pub async fn refresh(conn: &mut PgConnection, tag: &str, summary: &str, details: &Value) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE page SET summary = $2, details = $3 WHERE tag = $1 AND resolved_at IS NULL")
        .bind(tag)
        .bind(summary)
        .bind(details)
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
    let done: Option<Page> = sqlx::query_as("UPDATE page SET resolved_at = now() WHERE id = $1 AND resolved_at IS NULL RETURNING *")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    resolved(conn, done).await
}

/// Where pages go: a webhook URL (`http://`) or a shell command.
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Hook {
    pub url: Option<String>,
    pub command: Option<String>,
    pub updated_at: DateTime<Utc>,
}

pub async fn hook(conn: &mut PgConnection) -> Result<Option<Hook>, sqlx::Error> {
    sqlx::query_as("SELECT url, command, updated_at FROM page_hook").fetch_optional(conn).await
}

/// Set the hook (exactly one of `url` and `command`), replacing any.
pub async fn set_hook(conn: &mut PgConnection, url: Option<&str>, command: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO page_hook (url, command) VALUES ($1, $2) \
         ON CONFLICT (singleton) DO UPDATE SET url = $1, command = $2, updated_at = now()",
    )
    .bind(url)
    .bind(command)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stop forwarding. False if no hook was set.
pub async fn clear_hook(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM page_hook").execute(conn).await?.rows_affected() == 1)
}

/// If a hook is set, start the strand that delivers this change of this
/// page, with the hook as it is now. A page about a forwarding strand
/// itself (it keeps failing) is not forwarded: with the hook down, that
/// would start another failing forwarder, and so on for ever.
async fn forward(conn: &mut PgConnection, page: &Page, change: &str) -> Result<(), sqlx::Error> {
    if page.details.get("prog").and_then(Value::as_str) == Some(FORWARD_PROG) {
        return Ok(());
    }
    let Some(hook) = hook(conn).await? else {
        return Ok(());
    };
    let stack = serde_json::json!([{"page": page, "change": change, "url": hook.url, "command": hook.command}]);
    let id = Ubid::generate(UbidType::Strand).uuid();
    strand::insert(conn, &NewStrand { id, parent_id: None, prog: FORWARD_PROG, label: FORWARD_LABEL, stack: &stack }).await?;
    strand::notify_due(conn).await
}

/// How many pages are open, per severity (those with none are absent).
pub async fn open_by_severity(pool: &sqlx::PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT severity, count(*) FROM page WHERE resolved_at IS NULL GROUP BY severity").fetch_all(pool).await
}

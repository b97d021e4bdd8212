//! API bearer tokens: only the sha256 of each secret is stored, so a leaked
//! table does not leak a usable token. A token with no project is an
//! operator's. Names are unique per project among live tokens.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub project_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a request last used it, to the minute (see [`by_hash`]).
    pub last_used_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut PgConnection, id: Uuid, name: &str, project: Option<Uuid>, hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO api_token (id, name, project_id, hash) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(project)
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// The live (not revoked) token whose secret hashes to `hash`: one index
/// probe, and in the same statement its `last_used_at` is moved on, but at
/// most once a minute, so a busy token does not write on every request.
pub async fn by_hash(conn: &mut PgConnection, hash: &[u8]) -> Result<Option<ApiToken>, sqlx::Error> {
    sqlx::query_as(
        "WITH t AS (SELECT id, name, project_id, created_at, revoked_at, last_used_at FROM api_token \
                     WHERE hash = $1 AND revoked_at IS NULL), \
              used AS (UPDATE api_token a SET last_used_at = now() FROM t \
                        WHERE a.id = t.id AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute')) \
         SELECT * FROM t",
    )
    .bind(hash)
    .fetch_optional(conn)
    .await
}

/// The tokens of a project (None: operators' tokens), live ones first, newest first.
pub async fn list(conn: &mut PgConnection, project: Option<Uuid>, include_revoked: bool) -> Result<Vec<ApiToken>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, project_id, created_at, revoked_at, last_used_at FROM api_token \
          WHERE project_id IS NOT DISTINCT FROM $1 AND ($2 OR revoked_at IS NULL) \
          ORDER BY revoked_at IS NOT NULL, created_at DESC",
    )
    .bind(project)
    .bind(include_revoked)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<ApiToken>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, project_id, created_at, revoked_at, last_used_at FROM api_token WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Revoke a token; false if there is no such live token.
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL").bind(id).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

//! SSH endpoints: address, user, sealed private key, pinned host key.
//! Sealing and opening the key is the caller's (progs' ssh::keys); this
//! module only stores bytes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

#[derive(Clone, FromRow)]
pub struct Sshable {
    pub id: Uuid,
    pub host: String,
    pub port: i32,
    pub unix_user: String,
    pub private_key: Vec<u8>,
    pub next_private_key: Option<Vec<u8>>,
    pub host_key: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Sshable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sshable {{ {}@{}:{}, host_key: {:?} }}", self.unix_user, self.host, self.port, self.host_key)
    }
}

pub async fn insert(conn: &mut PgConnection, id: Uuid, host: &str, port: i32, user: &str, sealed_key: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO sshable (id, host, port, unix_user, private_key) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(host)
        .bind(port)
        .bind(user)
        .bind(sealed_key)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Sshable>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM sshable WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// Pin the host key seen on first contact (only if none is pinned yet).
pub async fn pin_host_key(conn: &mut PgConnection, id: Uuid, key: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE sshable SET host_key = $2 WHERE id = $1 AND host_key IS NULL")
        .bind(id)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Remember a key being rolled out (before the host has it authorized).
pub async fn set_next_key(conn: &mut PgConnection, id: Uuid, sealed: Option<&[u8]>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sshable SET next_private_key = $2 WHERE id = $1").bind(id).bind(sealed).execute(conn).await?;
    Ok(())
}

/// Switch to the rolled-out key.
pub async fn promote_next_key(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sshable SET private_key = next_private_key, next_private_key = NULL WHERE id = $1 AND next_private_key IS NOT NULL")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

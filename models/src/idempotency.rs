//! Idempotency keys of API creates. The key row is inserted first, in the
//! create's transaction: a concurrent create with the same key blocks on the
//! primary key until this one commits (and then sees the finished row) or
//! rolls back (and then goes ahead itself). So one key makes one resource.
//!
//! A key is remembered for [`RETAIN_HOURS`]: after that the same key is new
//! again, and each claim deletes a few expired keys, so the table holds
//! about a day of keys however long the API runs.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// What a create finds when it presents its key.
#[derive(Debug)]
pub enum Claim {
    /// The key is new: it is held by this transaction; finish with [`complete`].
    New,
    /// The key was used before, for a request hashing to `request_hash`,
    /// which answered `status` with `response`.
    Used { request_hash: Vec<u8>, status: i16, response: Value },
}

/// How long a key is remembered.
pub const RETAIN_HOURS: i32 = 24;

/// Expired keys each claim deletes (more than one, so pruning outpaces creating).
const PRUNE_PER_CLAIM: i64 = 16;

pub async fn claim(conn: &mut PgConnection, scope: Uuid, key: &str, request_hash: &[u8]) -> Result<Claim, sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_key WHERE (scope, key) IN (SELECT scope, key FROM idempotency_key \
         WHERE created_at < now() - make_interval(hours => $1) ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(RETAIN_HOURS)
    .bind(PRUNE_PER_CLAIM)
    .execute(&mut *conn)
    .await?;
    // An expired row of this very key is taken over as if it were new.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_key (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, resource_id = NULL, \
             status = NULL, response = NULL, created_at = now() \
         WHERE idempotency_key.created_at < now() - make_interval(hours => $4)",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(RETAIN_HOURS)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    // The conflicting row is committed (ON CONFLICT waited for its writer), so
    // this statement, taking a fresh snapshot, sees it complete.
    let (request_hash, status, response): (Vec<u8>, Option<i16>, Option<Value>) =
        sqlx::query_as("SELECT request_hash, status, response FROM idempotency_key WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_one(conn)
            .await?;
    Ok(Claim::Used { request_hash, status: status.unwrap_or(200), response: response.unwrap_or(Value::Null) })
}

/// Record what the create made, in the same transaction as the claim.
pub async fn complete(conn: &mut PgConnection, scope: Uuid, key: &str, resource: Uuid, status: i16, response: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_key SET resource_id = $3, status = $4, response = $5 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .bind(resource)
        .bind(status)
        .bind(response)
        .execute(conn)
        .await?;
    Ok(())
}

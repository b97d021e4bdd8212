//! Semaphores: one row per increment, so concurrent increments never merge.
//!
//! An increment also wakes its strand (schedule moved to just before now), in
//! the same statement, so a sleeping strand notices it at once.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Ubid, UbidType};

/// Increment `name` on `strand` and wake it. Does nothing (returns false) if
/// the strand is gone or has exited.
pub async fn incr(conn: &mut PgConnection, strand: Uuid, name: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "WITH woken AS ( \
             UPDATE strand SET schedule = least(schedule, now()) - interval '1 microsecond' \
             WHERE id = $1 AND exitval IS NULL RETURNING id) \
         INSERT INTO semaphore (id, strand_id, name) SELECT $2, id, $3 FROM woken RETURNING strand_id",
    )
    .bind(strand)
    .bind(Ubid::generate(UbidType::Semaphore).uuid())
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    if row.is_some() {
        crate::strand::notify_due(conn).await?;
    }
    Ok(row.is_some())
}

/// Delete exactly these increments (a step's snapshot), leaving any that
/// arrived after the snapshot was taken.
pub async fn delete(conn: &mut PgConnection, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query("DELETE FROM semaphore WHERE id = ANY($1)").bind(ids).execute(conn).await?;
    Ok(done.rows_affected())
}

/// Names currently set on a strand, one entry per increment.
pub async fn names(conn: &mut PgConnection, strand: Uuid) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM semaphore WHERE strand_id = $1 ORDER BY id")
        .bind(strand)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// Take back one increment of `name` (the oldest), as an operator's `decr`.
/// False if none was set.
pub async fn decr_one(conn: &mut PgConnection, strand: Uuid, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM semaphore WHERE id = (SELECT id FROM semaphore WHERE strand_id = $1 AND name = $2 ORDER BY id LIMIT 1)",
    )
    .bind(strand)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Delete increments whose strand is gone. Exits and reaps delete their
/// strands' semaphores themselves; this catches the one they cannot see: an
/// increment committed while the exit waited on the strand's row lock.
/// Returns how many were deleted.
pub async fn sweep_orphans(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM semaphore m WHERE NOT EXISTS (SELECT 1 FROM strand s WHERE s.id = m.strand_id)")
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

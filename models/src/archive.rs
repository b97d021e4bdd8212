//! The archive of exited top-level strands: what they were, for operators,
//! for a retention period. Partitioned by month; pruning drops partitions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Archived {
    pub id: Uuid,
    pub prog: String,
    pub label: String,
    pub stack: Value,
    pub exitval: Value,
    pub created_at: DateTime<Utc>,
    pub exited_at: DateTime<Utc>,
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Archived>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM strand_archive WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// Make sure this month's and the next two months' partitions exist, and drop
/// monthly partitions that ended more than `keep_months` months ago.
pub async fn maintain(conn: &mut PgConnection, keep_months: i32) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query("SELECT skein_archive_partitions(now()::date, 3)").execute(&mut *conn).await?;
    let old: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'strand_archive'::regclass AND c.relname ~ '^strand_archive_[0-9]{6}$' \
           AND to_date(substring(c.relname from '[0-9]{6}$'), 'YYYYMM') \
               < date_trunc('month', now()) - make_interval(months => $1)",
    )
    .bind(keep_months)
    .fetch_all(&mut *conn)
    .await?;
    for (name,) in &old {
        sqlx::query(&format!("DROP TABLE {name}")).execute(&mut *conn).await?;
    }
    Ok(old.into_iter().map(|(n,)| n).collect())
}

//! The archive of exited top-level strands: what they were, for operators,
//! for a retention period. Partitioned by month; pruning drops partitions.
//! An exit's time is when it was written (`clock_timestamp()`, migration
//! 20261204000030), not when its step's transaction began.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, FromRow, PgConnection, Postgres, QueryBuilder};
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

/// Which exited strands to list. Every field narrows.
#[derive(Clone, Debug, Default)]
pub struct ExitedFilter {
    pub prog: Option<String>,
    pub label: Option<String>,
    pub parent: Option<Uuid>,
    /// Exited at or after / before this time.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Text the exit value contains (as JSON text, case-insensitive).
    pub exitval_contains: Option<String>,
    /// Created at least this many seconds ago.
    pub older_than_secs: Option<f64>,
    pub limit: i64,
    pub offset: i64,
}

/// An exited strand in a list. `exited_at` is None for a child that has
/// exited but whose parent has not reaped it yet (it is still in the hot
/// table, where no exit time is kept).
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct ExitedSummary {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub prog: String,
    pub label: String,
    pub exitval: Value,
    pub created_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
}

/// Top-level strands from the archive and children awaiting their parent
/// from the hot table: every strand that has exited and is still kept.
const EXITED: &str = "(SELECT id, NULL::uuid AS parent_id, prog, label, exitval, created_at, exited_at FROM strand_archive \
                      UNION ALL \
                      SELECT id, parent_id, prog, label, exitval, created_at, NULL FROM strand WHERE exitval IS NOT NULL) exited";

fn push_exited_filter(q: &mut QueryBuilder<'_, Postgres>, f: &ExitedFilter) {
    q.push(" WHERE true");
    if let Some(prog) = &f.prog {
        q.push(" AND prog = ").push_bind(prog.clone());
    }
    if let Some(label) = &f.label {
        q.push(" AND label = ").push_bind(label.clone());
    }
    if let Some(parent) = f.parent {
        q.push(" AND parent_id = ").push_bind(parent);
    }
    if let Some(t) = f.since {
        q.push(" AND exited_at >= ").push_bind(t);
    }
    if let Some(t) = f.until {
        q.push(" AND exited_at < ").push_bind(t);
    }
    if let Some(text) = &f.exitval_contains {
        // strpos, not LIKE: the operator's text is matched as typed, `%` and `_` included.
        q.push(" AND strpos(lower(exitval::text), lower(").push_bind(text.clone()).push(")) > 0");
    }
    if let Some(secs) = f.older_than_secs {
        q.push(" AND created_at <= now() - make_interval(secs => ").push_bind(secs).push(")");
    }
}

/// One page of exited strands matching `f`, latest exit first (unreaped
/// children before all), and how many match in all.
pub async fn list_exited(conn: &mut PgConnection, f: &ExitedFilter) -> Result<(Vec<ExitedSummary>, i64), sqlx::Error> {
    let mut q = QueryBuilder::new(format!("SELECT * FROM {EXITED}"));
    push_exited_filter(&mut q, f);
    q.push(" ORDER BY exited_at DESC NULLS FIRST, id LIMIT ").push_bind(f.limit).push(" OFFSET ").push_bind(f.offset);
    let rows = q.build_query_as().fetch_all(&mut *conn).await?;
    let mut c = QueryBuilder::new(format!("SELECT count(*) FROM {EXITED}"));
    push_exited_filter(&mut c, f);
    let total: i64 = c.build_query_scalar().fetch_one(conn).await?;
    Ok((rows, total))
}

/// Make sure this month's and the next two months' partitions exist.
/// Workers call it as housekeeping: made only when the database was created,
/// partitions ran out after three months, and exits went to the default
/// partition (from which a month's partition can no longer be made).
/// Making one locks the archive briefly; a worker gives up after 2 s rather
/// than queue every exit behind it, and tries again later.
pub async fn make_partitions_ahead(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await?;
    sqlx::query("SELECT skein_archive_partitions(now()::date, 3)").execute(&mut *tx).await?;
    tx.commit().await
}

/// Make the partitions ahead, and drop monthly partitions that ended more
/// than `keep_months` months ago: dropping one is how exited strands leave
/// the archive, whole months at a time. Dropping locks the archive, and
/// every exit inserts there: like making one, it gives up after 2 s (the
/// next round of housekeeping tries again) rather than queue exits behind it.
pub async fn maintain(conn: &mut PgConnection, keep_months: i32) -> Result<Vec<String>, sqlx::Error> {
    make_partitions_ahead(&mut *conn).await?;
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
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await?;
        sqlx::query(&format!("DROP TABLE {name}")).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(old.into_iter().map(|(n,)| n).collect())
}

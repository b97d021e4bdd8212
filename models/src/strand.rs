//! Strand rows and the queries that move them: lease, step, fail, exit, reap.
//!
//! Every write that ends a step is fenced on the lease it was taken under
//! (`where id = $id and lease = $lease`): a worker whose lease expired and was
//! taken over touches no row, and its caller rolls the whole step back.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// The far-past lease of a free strand (the column is never null).
pub const FREE: &str = "1970-01-01 00:00:00+00";

/// The channel dispatchers LISTEN on to hear that work is due.
pub const DUE_CHANNEL: &str = "skein_due";

/// Tell listening dispatchers that something became due, when the caller's
/// transaction commits. Postgres folds repeats within one transaction into
/// one notification, so calling this once per row is cheap.
pub async fn notify_due(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')").bind(DUE_CHANNEL).execute(conn).await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Strand {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub prog: String,
    pub label: String,
    pub stack: Value,
    pub schedule: DateTime<Utc>,
    pub lease: DateTime<Utc>,
    pub lease_holder: Option<String>,
    pub try_: i32,
    pub exitval: Option<Value>,
    pub retval: Option<Value>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, parent_id, prog, label, stack, schedule, lease, lease_holder, try AS try_, \
                       exitval, retval, last_error, last_error_at, created_at";

/// A strand as leased for a step: its row, the lease value that fences the
/// step's writes, the schedule it was leased with (the compare-and-set value
/// for the step's nap) and the semaphores it had at that moment.
#[derive(Clone, Debug)]
pub struct Leased {
    pub strand: Strand,
    pub sems: Vec<(Uuid, String)>,
    /// Set when the previous holder's lease expired without being released:
    /// this lease is a takeover of a crashed or stuck worker's strand.
    pub taken_over_from: Option<String>,
}

#[derive(FromRow)]
struct LeasedRow {
    #[sqlx(flatten)]
    strand: Strand,
    sem_ids: Vec<Uuid>,
    sem_names: Vec<String>,
    prev_holder: Option<String>,
}

impl From<LeasedRow> for Leased {
    fn from(r: LeasedRow) -> Leased {
        Leased { strand: r.strand, sems: r.sem_ids.into_iter().zip(r.sem_names).collect(), taken_over_from: r.prev_holder }
    }
}

/// How long a lease lasts and how far failures push a strand out.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTerms {
    pub lease_secs: f64,
    /// Backoff after the n-th consecutive failure is `random() * min(2^n, cap)` seconds.
    pub backoff_cap_secs: f64,
}

// Taking a lease assumes the step will fail: try + 1 and schedule pushed out
// by the backoff. A successful step undoes both; a crashed worker leaves them.
const TAKE: &str = "lease = now() + make_interval(secs => $2), lease_holder = $3, try = s.try + 1, \
                    schedule = now() + random() * least(power(2, s.try + 1), $4) * interval '1 second'";
const RETURNING_LEASED: &str = "s.id, s.parent_id, s.prog, s.label, s.stack, s.schedule, s.lease, s.lease_holder, \
     s.try AS try_, s.exitval, s.retval, s.last_error, s.last_error_at, s.created_at, \
     ARRAY(SELECT m.id FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) AS sem_ids, \
     ARRAY(SELECT m.name FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) AS sem_names, \
     due.lease_holder AS prev_holder";

/// Lease up to `limit` due strands in one statement, oldest schedule first,
/// skipping rows other claimers hold and the ids in `exclude`.
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    terms: LeaseTerms,
    holder: &str,
    exclude: &[Uuid],
) -> Result<Vec<Leased>, sqlx::Error> {
    let sql = format!(
        "UPDATE strand s SET {TAKE} FROM ( \
             SELECT id, lease_holder FROM strand \
             WHERE exitval IS NULL AND lease < now() AND schedule <= now() AND id <> ALL($5) \
             ORDER BY schedule LIMIT $1 FOR UPDATE SKIP LOCKED) due \
         WHERE s.id = due.id RETURNING {RETURNING_LEASED}"
    );
    let rows: Vec<LeasedRow> = sqlx::query_as(&sql)
        .bind(limit)
        .bind(terms.lease_secs)
        .bind(holder)
        .bind(terms.backoff_cap_secs)
        .bind(exclude)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(Leased::from).collect())
}

/// Lease one strand by id if it is free and live; `due_only` also requires its
/// schedule to have come (an operator's "run now" does not).
pub async fn claim_one(
    conn: &mut PgConnection,
    id: Uuid,
    terms: LeaseTerms,
    holder: &str,
    due_only: bool,
) -> Result<Option<Leased>, sqlx::Error> {
    let sql = format!(
        "UPDATE strand s SET {TAKE} FROM ( \
             SELECT id, lease_holder FROM strand \
             WHERE id = $1 AND exitval IS NULL AND lease < now() AND (NOT $5 OR schedule <= now()) \
             FOR UPDATE) due \
         WHERE s.id = due.id RETURNING {RETURNING_LEASED}"
    );
    let row: Option<LeasedRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(terms.lease_secs)
        .bind(holder)
        .bind(terms.backoff_cap_secs)
        .bind(due_only)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Leased::from))
}

/// What a successful step writes back to its strand row.
pub struct StepWrite<'a> {
    pub id: Uuid,
    pub lease: DateTime<Utc>,
    pub prog: &'a str,
    pub label: &'a str,
    pub stack: &'a Value,
    pub retval: Option<&'a Value>,
    /// The schedule the strand was leased with: a nap only moves the schedule
    /// if it still holds this value, so a wake-up during the step wins.
    pub leased_schedule: DateTime<Utc>,
    /// `Some(secs)`: release the lease, due again in `secs`. `None`: keep the
    /// lease and the schedule, the worker runs the next step at once.
    pub release_after: Option<f64>,
}

/// The state a continuing worker needs for its next step under the same lease.
#[derive(Debug, FromRow)]
pub struct Continued {
    pub schedule: DateTime<Utc>,
    pub sem_ids: Vec<Uuid>,
    pub sem_names: Vec<String>,
}

/// Write a successful step. `None` means the lease was lost: roll back.
pub async fn write_step(conn: &mut PgConnection, w: &StepWrite<'_>) -> Result<Option<Continued>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE strand s SET prog = $3, label = $4, stack = $5, retval = $6, try = 0, \
             last_error = NULL, last_error_at = NULL, \
             schedule = CASE WHEN $8::float8 IS NULL OR s.schedule <> $7 THEN s.schedule \
                             ELSE clock_timestamp() + make_interval(secs => $8) END, \
             lease = CASE WHEN $8::float8 IS NULL THEN s.lease ELSE $9::timestamptz END, \
             lease_holder = CASE WHEN $8::float8 IS NULL THEN s.lease_holder END \
         WHERE s.id = $1 AND s.lease = $2 \
         RETURNING s.schedule, \
             ARRAY(SELECT m.id FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) AS sem_ids, \
             ARRAY(SELECT m.name FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) AS sem_names",
    )
    .bind(w.id)
    .bind(w.lease)
    .bind(w.prog)
    .bind(w.label)
    .bind(w.stack)
    .bind(w.retval)
    .bind(w.leased_schedule)
    .bind(w.release_after)
    .bind(FREE)
    .fetch_optional(conn)
    .await
}

/// A child strand exits: it keeps its row, with its exit value, until its
/// parent reaps it. Returns false if the lease was lost.
pub async fn exit_child(
    conn: &mut PgConnection,
    id: Uuid,
    lease: DateTime<Utc>,
    label: &str,
    stack: &Value,
    exitval: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE strand SET label = $3, stack = $4, exitval = $5, retval = NULL, try = 0, \
             last_error = NULL, last_error_at = NULL, lease = $6::timestamptz, lease_holder = NULL \
         WHERE id = $1 AND lease = $2",
    )
    .bind(id)
    .bind(lease)
    .bind(label)
    .bind(stack)
    .bind(exitval)
    .bind(FREE)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A top-level strand exits: it leaves the hot table for the archive, with its
/// semaphores (cascade), in the caller's transaction. False if the lease was lost.
pub async fn exit_top_level(
    conn: &mut PgConnection,
    id: Uuid,
    lease: DateTime<Utc>,
    label: &str,
    stack: &Value,
    exitval: &Value,
) -> Result<bool, sqlx::Error> {
    let archived: Option<(Uuid,)> = sqlx::query_as(
        "WITH gone AS (DELETE FROM strand WHERE id = $1 AND lease = $2 RETURNING id, prog, created_at) \
         INSERT INTO strand_archive (id, prog, label, stack, exitval, created_at) \
         SELECT id, prog, $3, $4, $5, created_at FROM gone RETURNING id",
    )
    .bind(id)
    .bind(lease)
    .bind(label)
    .bind(stack)
    .bind(exitval)
    .fetch_optional(conn)
    .await?;
    Ok(archived.is_some())
}

/// Wake `parent` if no child other than `me` is still running. The parent row
/// is locked first so that two last siblings exiting at once cannot each see
/// the other as running (each statement after the lock sees the other's commit).
pub async fn wake_parent_if_last(conn: &mut PgConnection, parent: Uuid, me: Uuid) -> Result<bool, sqlx::Error> {
    let locked: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM strand WHERE id = $1 FOR UPDATE")
        .bind(parent)
        .fetch_optional(&mut *conn)
        .await?;
    if locked.is_none() {
        return Ok(false);
    }
    let woke = sqlx::query(
        "UPDATE strand SET schedule = least(schedule, now()) - interval '1 microsecond' \
         WHERE id = $1 AND NOT EXISTS ( \
             SELECT 1 FROM strand WHERE parent_id = $1 AND id <> $2 AND exitval IS NULL)",
    )
    .bind(parent)
    .bind(me)
    .execute(&mut *conn)
    .await?;
    if woke.rows_affected() == 1 {
        notify_due(conn).await?;
    }
    Ok(woke.rows_affected() == 1)
}

/// Record a failed step: release the lease, count the failure, back off.
/// `bump` is true when the failing step ran after a successful one under the
/// same lease (which had reset `try`); false when the lease already counted it.
/// Returns the new `try`, or None if the lease was lost.
pub async fn record_failure(
    conn: &mut PgConnection,
    id: Uuid,
    lease: DateTime<Utc>,
    bump: bool,
    error: &str,
    backoff_cap_secs: f64,
) -> Result<Option<i32>, sqlx::Error> {
    let row: Option<(i32,)> = sqlx::query_as(
        "UPDATE strand SET try = try + $3::int, \
             schedule = clock_timestamp() + random() * least(power(2, try + $3::int), $4) * interval '1 second', \
             lease = $6::timestamptz, lease_holder = NULL, last_error = $5, last_error_at = now() \
         WHERE id = $1 AND lease = $2 RETURNING try",
    )
    .bind(id)
    .bind(lease)
    .bind(bump as i32)
    .bind(backoff_cap_secs)
    .bind(error)
    .bind(FREE)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(t,)| t))
}

/// Release a lease without running a step (shutdown, or a claim that could not run).
pub async fn release(conn: &mut PgConnection, id: Uuid, lease: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE strand SET lease = $3::timestamptz, lease_holder = NULL WHERE id = $1 AND lease = $2")
        .bind(id)
        .bind(lease)
        .bind(FREE)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub struct NewStrand<'a> {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub prog: &'a str,
    pub label: &'a str,
    pub stack: &'a Value,
}

pub async fn insert(conn: &mut PgConnection, s: &NewStrand<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO strand (id, parent_id, prog, label, stack) VALUES ($1, $2, $3, $4, $5)")
        .bind(s.id)
        .bind(s.parent_id)
        .bind(s.prog)
        .bind(s.label)
        .bind(s.stack)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Strand>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM strand WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn children(conn: &mut PgConnection, parent: Uuid) -> Result<Vec<Strand>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM strand WHERE parent_id = $1 ORDER BY id"))
        .bind(parent)
        .fetch_all(conn)
        .await
}

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Exited {
    pub id: Uuid,
    pub prog: String,
    pub exitval: Value,
}

/// Delete the exited children of `parent` and return them, with how many
/// children remain (still running, or exited but somehow still leased: those
/// are never deleted under a worker that holds them).
pub async fn reap(conn: &mut PgConnection, parent: Uuid) -> Result<(Vec<Exited>, i64), sqlx::Error> {
    let exited: Vec<Exited> = sqlx::query_as(
        "DELETE FROM strand WHERE parent_id = $1 AND exitval IS NOT NULL AND lease < now() \
         RETURNING id, prog, exitval",
    )
    .bind(parent)
    .fetch_all(&mut *conn)
    .await?;
    let (remaining,): (i64,) = sqlx::query_as("SELECT count(*) FROM strand WHERE parent_id = $1")
        .bind(parent)
        .fetch_one(conn)
        .await?;
    Ok((exited, remaining))
}

/// Seconds until the next free, live strand is due (negative if one is due
/// now), or None if there is none. Walks the dispatcher's partial index.
pub async fn next_due_in(conn: &mut PgConnection) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM schedule - now())::float8 FROM strand \
         WHERE exitval IS NULL AND lease < now() ORDER BY schedule LIMIT 1",
    )
    .fetch_optional(conn)
    .await
}

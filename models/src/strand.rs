//! Strand rows and the queries that move them: lease, step, fail, exit, reap.
//!
//! Every write that ends a step is fenced on the lease it was taken under
//! (`where id = $id and lease = $lease`): a worker whose lease expired and was
//! taken over touches no row, and its caller rolls the whole step back.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Column, FromRow, PgConnection, Row};
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

struct LeasedRow {
    strand: Strand,
    sem_ids: Vec<Uuid>,
    sem_names: Vec<String>,
    prev_holder: Option<String>,
}

/// The columns of a claim's rows, in the order `claim` selects them: the
/// strand's (`RETURNING_LEASED`), then the previous holder and the semaphores.
const LEASED_COLUMNS: [&str; 17] = [
    "id", "parent_id", "prog", "label", "stack", "schedule", "lease", "lease_holder", "try_", "exitval", "retval",
    "last_error", "last_error_at", "created_at", "prev_holder", "sem_ids", "sem_names",
];

/// Read by position, not by name: a claim decodes hundreds of rows at once,
/// and sqlx finds a column by name by hashing the name, for every column of
/// every row (a third of what decoding a claim cost the worker). Unchecked:
/// the statement above fixes each column's type, so checking it against the
/// Rust type for every value of every row tells nothing new (debug builds
/// still check the columns' order, in every test that claims).
impl<'r> FromRow<'r, PgRow> for LeasedRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        debug_assert!(
            row.columns().iter().map(|c| c.name()).eq(LEASED_COLUMNS),
            "a claim's columns are not in LEASED_COLUMNS order"
        );
        Ok(LeasedRow {
            strand: Strand {
                id: row.try_get_unchecked(0)?,
                parent_id: row.try_get_unchecked(1)?,
                prog: row.try_get_unchecked(2)?,
                label: row.try_get_unchecked(3)?,
                stack: row.try_get_unchecked(4)?,
                schedule: row.try_get_unchecked(5)?,
                lease: row.try_get_unchecked(6)?,
                lease_holder: row.try_get_unchecked(7)?,
                try_: row.try_get_unchecked(8)?,
                exitval: row.try_get_unchecked(9)?,
                retval: row.try_get_unchecked(10)?,
                last_error: row.try_get_unchecked(11)?,
                last_error_at: row.try_get_unchecked(12)?,
                created_at: row.try_get_unchecked(13)?,
            },
            prev_holder: row.try_get_unchecked(14)?,
            sem_ids: row.try_get_unchecked(15)?,
            sem_names: row.try_get_unchecked(16)?,
        })
    }
}

impl From<LeasedRow> for Leased {
    fn from(r: LeasedRow) -> Leased {
        Leased { strand: r.strand, sems: r.sem_ids.into_iter().zip(r.sem_names).collect(), taken_over_from: r.prev_holder }
    }
}

/// How long a lease lasts.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTerms {
    pub lease_secs: f64,
}

// Taking a lease assumes the step will fail: try + 1, durably recorded before
// the label runs. A successful step resets it; a crashed worker leaves it, and
// whoever frees the strand (a peer breaking a dead worker's claims, see
// worker.rs, or the lease running out) makes it wait a backoff that grows
// with it. The claim leaves `schedule` alone on purpose: it then changes no
// indexed column, so it is a HOT update (no index entry written, none left
// dead for the next claim to walk), on pages kept half empty for it (a batch
// updates whole pages at once: migration 20261206000010).
//
// A claim commits without waiting for its WAL flush (synchronous_commit off):
// a claim lost in a database crash only means the lease was never taken, and
// every step write is fenced on the lease, so nothing can commit under it.
// WAL is written in order, so a durable step write makes its claim durable too.
// Not waiting for an fsync per claim is what lets claims keep up with steps.
// The setting is made inside the claim statement itself, as a one-time
// filter evaluated once (`set_config(.., true)` lasts until the end of the
// statement's own implicit transaction, whose commit reads it), so a claim
// is one round trip, not four (BEGIN, SET LOCAL, the claim, COMMIT).
const TAKE: &str = "lease = now() + make_interval(secs => $2), lease_holder = $3, try = s.try + 1";
// In `LEASED_COLUMNS` order: claimed rows are read by position.
const RETURNING_LEASED: &str = "s.id, s.parent_id, s.prog, s.label, s.stack, s.schedule, s.lease, s.lease_holder, \
     s.try AS try_, s.exitval, s.retval, s.last_error, s.last_error_at, s.created_at";

/// A claim: lock the strands `due` selects (`ctid, id, lease_holder`), lease
/// them, and return each with its semaphores and the holder whose lease ran
/// out on it, if any (a takeover).
///
/// The locked rows are updated by `ctid`, their physical address (stable
/// while this statement holds their row locks), collected once into an
/// array: the locking runs exactly once and the update is a TID scan,
/// whatever plan the statement has. As a join (`FROM due WHERE s.ctid =
/// due.ctid`) the plan was the planner's to choose, and a plan made while
/// the table was empty (the generic plan a worker caches while it idles)
/// rescanned the locking subquery once per row of the table after a burst:
/// 720 ms a claim at 10,000 due strands. Joined back by id, a large batch
/// made the planner hash-join the whole table.
///
/// The semaphores are looked up once for the whole batch (one grouped
/// semi-join), not by two subqueries per row: most strands have none, and
/// the per-row subqueries cost a claim more than the row updates did.
fn claim(due: &str) -> String {
    format!(
        "WITH due AS MATERIALIZED ({due}), \
              claimed AS (UPDATE strand s SET {TAKE} WHERE s.ctid = ANY(ARRAY(SELECT ctid FROM due)) \
                          RETURNING {RETURNING_LEASED}), \
              taken_over AS MATERIALIZED (SELECT id, lease_holder FROM due WHERE lease_holder IS NOT NULL), \
              sems AS (SELECT m.strand_id, array_agg(m.id ORDER BY m.id) AS sem_ids, \
                              array_agg(m.name ORDER BY m.id) AS sem_names \
                       FROM semaphore m WHERE m.strand_id IN (SELECT id FROM claimed) GROUP BY m.strand_id) \
         SELECT claimed.*, (SELECT t.lease_holder FROM taken_over t WHERE t.id = claimed.id) AS prev_holder, \
                coalesce(sems.sem_ids, '{{}}') AS sem_ids, coalesce(sems.sem_names, '{{}}') AS sem_names \
         FROM claimed LEFT JOIN sems ON sems.strand_id = claimed.id"
    )
}

/// The claim statement `claim_due` runs, with its parameters: $1 the batch
/// size (int8), $2 the lease in seconds (float8), $3 the holder (text), $4
/// the ids to skip (uuid[]), $5 the schedule to start from (timestamptz,
/// null for the oldest). Public so that `skein bench` explains the very
/// statement the engine runs (`bench::claim_plan`), and a rule test the
/// plan a worker caches, not a copy that drifts.
pub fn claim_due_statement() -> &'static str {
    // Built once: the claim runs many times a second, and the text is fixed.
    static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        claim(
            "SELECT ctid, id, lease_holder FROM strand \
             WHERE exitval IS NULL AND lease < now() AND schedule <= now() AND id <> ALL($4) \
               AND schedule >= coalesce($5, '-infinity') \
               AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off' \
             ORDER BY schedule LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
    });
    &STATEMENT
}

/// Lease up to `limit` due strands in one statement, oldest schedule first,
/// skipping rows other claimers hold and the ids in `exclude`.
///
/// `from`: only strands scheduled at or after it (None: from the oldest). A
/// claim changes no indexed column, so the strands a worker is running stay
/// at the head of the index it scans, and a claim from the oldest walks
/// every one of them, row by row, to find the free ones behind them. A
/// worker passes the schedule of the last strand it leased instead, and
/// starts from the oldest again now and then for those it left behind.
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    terms: LeaseTerms,
    holder: &str,
    exclude: &[Uuid],
    from: Option<DateTime<Utc>>,
) -> Result<Vec<Leased>, sqlx::Error> {
    let rows: Vec<LeasedRow> = sqlx::query_as(claim_due_statement())
        .bind(limit)
        .bind(terms.lease_secs)
        .bind(holder)
        .bind(exclude)
        .bind(from)
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
    let sql = claim(
        "SELECT ctid, id, lease_holder FROM strand \
         WHERE id = $1 AND exitval IS NULL AND lease < now() AND (NOT $4 OR schedule <= now()) \
         FOR UPDATE",
    );
    let row: Option<LeasedRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(terms.lease_secs)
        .bind(holder)
        .bind(due_only)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Leased::from))
}

/// What a successful step writes back to its strand row.
#[derive(Clone, Debug)]
pub struct StepWrite {
    pub id: Uuid,
    pub lease: DateTime<Utc>,
    pub prog: String,
    pub label: String,
    /// None: the stack is as the row holds it, so it is not sent again (a
    /// strand polling a host naps with the same frame step after step).
    pub stack: Option<Value>,
    pub retval: Option<Value>,
    /// The schedule the strand was leased with: a nap only moves the schedule
    /// if it still holds this value, so a wake-up during the step wins.
    pub leased_schedule: DateTime<Utc>,
    /// `Some(secs)`: release the lease, due again in `secs`. `None`: keep the
    /// lease and the schedule, the worker runs the next step at once.
    pub release_after: Option<f64>,
}

/// The state a continuing worker needs for its next step under the same lease.
#[derive(Clone, Debug, PartialEq, FromRow)]
pub struct Continued {
    pub id: Uuid,
    pub schedule: DateTime<Utc>,
    pub sem_ids: Option<Vec<Uuid>>,
    pub sem_names: Option<Vec<String>>,
}

/// Write many successful steps in one statement (rows in id order, so
/// concurrent writers lock in one order). Returns a row for each strand whose
/// lease still held; a strand missing from the result lost its lease.
/// Semaphores are returned only for strands that keep their lease.
pub async fn write_steps(conn: &mut PgConnection, writes: &[StepWrite]) -> Result<Vec<Continued>, sqlx::Error> {
    let mut sorted: Vec<&StepWrite> = writes.iter().collect();
    sorted.sort_by_key(|w| w.id);
    sqlx::query_as(
        "UPDATE strand s SET prog = v.prog, label = v.label, stack = coalesce(v.stack, s.stack), retval = v.retval, try = 0, \
             last_error = NULL, last_error_at = NULL, \
             schedule = CASE WHEN v.release_after IS NULL OR s.schedule <> v.leased_schedule THEN s.schedule \
                             ELSE clock_timestamp() + make_interval(secs => v.release_after) END, \
             lease = CASE WHEN v.release_after IS NULL THEN s.lease ELSE $9::timestamptz END, \
             lease_holder = CASE WHEN v.release_after IS NULL THEN s.lease_holder END \
         FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
                     $7::timestamptz[], $8::float8[]) \
              AS v(id, lease, prog, label, stack, retval, leased_schedule, release_after) \
         WHERE s.id = v.id AND s.lease = v.lease \
         RETURNING s.id, s.schedule, \
             CASE WHEN v.release_after IS NULL THEN \
                  ARRAY(SELECT m.id FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) END AS sem_ids, \
             CASE WHEN v.release_after IS NULL THEN \
                  ARRAY(SELECT m.name FROM semaphore m WHERE m.strand_id = s.id ORDER BY m.id) END AS sem_names",
    )
    .bind(sorted.iter().map(|w| w.id).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.lease).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.prog.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.label.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.stack.as_ref()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.retval.as_ref()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.leased_schedule).collect::<Vec<_>>())
    .bind(sorted.iter().map(|w| w.release_after).collect::<Vec<_>>())
    .bind(FREE)
    .fetch_all(conn)
    .await
}

/// A strand's last step: it exits with `exitval`.
#[derive(Clone, Debug)]
pub struct ExitWrite {
    pub id: Uuid,
    pub lease: DateTime<Utc>,
    pub label: String,
    /// None: the stack is as the row holds it (see [`StepWrite::stack`]).
    pub stack: Option<Value>,
    pub exitval: Value,
}

/// `delete_their_semaphores!()`: the CTE that deletes the semaphores of the strands a statement deletes
/// (its `gone` CTE, which must return their `id`). Every statement that
/// deletes strands includes it: no foreign key cascades for them (migration
/// 20261205000020), and `semaphore::sweep_orphans` catches only the race.
/// A macro, not a const, so that statements stay `&'static str` (`concat!`).
macro_rules! delete_their_semaphores {
    () => {
        "their_sems AS (DELETE FROM semaphore m WHERE m.strand_id IN (SELECT id FROM gone))"
    };
}
pub(crate) use delete_their_semaphores;

/// Top-level strands exit: they leave the hot table for the archive, with
/// their semaphores, in one statement. Returns the ids whose lease
/// still held (the others lost it and were left alone).
///
/// Each distinct exit value is sent once, as text, and made jsonb once: the
/// exits of a batch mostly carry the same few values (a prog ends the same
/// way each time), and parsing one value per row was a third of what an exit
/// cost Postgres (2.3 of 6.4 µs a row without the archive insert).
pub async fn exit_top_level(conn: &mut PgConnection, exits: &[ExitWrite]) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut sorted: Vec<&ExitWrite> = exits.iter().collect();
    sorted.sort_by_key(|e| e.id);
    let (exitvals, exitval_at) = distinct_values(sorted.iter().map(|e| &e.exitval));
    sqlx::query_scalar(concat!(
        "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::int4[]) \
                    AS v(id, lease, label, stack, exitval_at)), \
              exitvals AS MATERIALIZED (SELECT $6::text[]::jsonb[] AS vals), \
              gone AS (DELETE FROM strand s USING v WHERE s.id = v.id AND s.lease = v.lease \
                       RETURNING s.id, s.prog, v.label, coalesce(v.stack, s.stack) AS stack, v.exitval_at, s.created_at), ",
        delete_their_semaphores!(),
        " INSERT INTO strand_archive (id, prog, label, stack, exitval, created_at) \
         SELECT g.id, g.prog, g.label, g.stack, e.vals[g.exitval_at], g.created_at FROM gone g, exitvals e \
         RETURNING id",
    ))
    .bind(sorted.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.lease).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.label.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.stack.as_ref()).collect::<Vec<_>>())
    .bind(exitval_at)
    .bind(exitvals)
    .fetch_all(conn)
    .await
}

/// The distinct values among `values`, as JSON text, and for each value the
/// (1-based, as Postgres arrays are) position of its text among them.
fn distinct_values<'a>(values: impl Iterator<Item = &'a Value>) -> (Vec<String>, Vec<i32>) {
    let mut distinct: Vec<String> = Vec::new();
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let at = values
        .map(|value| {
            let text = value.to_string();
            *seen.entry(text).or_insert_with_key(|text| {
                distinct.push(text.clone());
                distinct.len() as i32
            })
        })
        .collect();
    (distinct, at)
}

/// Child strands exit: each keeps its row, with its exit value, until its
/// parent reaps it. Then the last child wakes its parent, in two halves:
///
/// - here, in the caller's transaction, a parent none of whose children is
///   running any more is woken at once (durably, with the exits);
/// - a parent that still had running children is returned: the caller must
///   call [`wake_parent_if_idle`] for it after committing. A sibling exiting
///   at the same moment may have seen this one as running; of the two, the
///   one that commits later sees the other's exit, so no wake-up is lost,
///   and no exit ever waits on a lock of the parent row.
///
/// Returns the ids whose lease held (the others were left alone), and the
/// parents to check again after commit.
pub async fn exit_children(conn: &mut PgConnection, exits: &[ExitWrite]) -> Result<(Vec<Uuid>, Vec<Uuid>), sqlx::Error> {
    let mut sorted: Vec<&ExitWrite> = exits.iter().collect();
    sorted.sort_by_key(|e| e.id);
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE strand s SET label = v.label, stack = coalesce(v.stack, s.stack), exitval = v.exitval, retval = NULL, try = 0, \
             last_error = NULL, last_error_at = NULL, lease = $6::timestamptz, lease_holder = NULL \
         FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::jsonb[]) \
              AS v(id, lease, label, stack, exitval) \
         WHERE s.id = v.id AND s.lease = v.lease AND s.parent_id IS NOT NULL \
         RETURNING s.id, s.parent_id",
    )
    .bind(sorted.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.lease).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.label.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| e.stack.as_ref()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|e| &e.exitval).collect::<Vec<_>>())
    .bind(FREE)
    .fetch_all(&mut *conn)
    .await?;
    let mut parents: Vec<Uuid> = rows.iter().map(|(_, p)| *p).collect();
    parents.sort();
    parents.dedup();
    let mut recheck = Vec::new();
    for parent in parents {
        if !wake_parent_if_idle(conn, parent).await? {
            recheck.push(parent);
        }
    }
    Ok((rows.into_iter().map(|(id, _)| id).collect(), recheck))
}

/// Wake `parent` if none of its children is running any more. When some
/// child still runs, the statement matches no row, so it takes no lock and
/// writes nothing: thousands of exiting siblings do not queue on the parent.
pub async fn wake_parent_if_idle(conn: &mut PgConnection, parent: Uuid) -> Result<bool, sqlx::Error> {
    let woke = sqlx::query(
        "UPDATE strand SET schedule = least(schedule, now()) - interval '1 microsecond' \
         WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM strand WHERE parent_id = $1 AND exitval IS NULL)",
    )
    .bind(parent)
    .execute(&mut *conn)
    .await?;
    if woke.rows_affected() == 1 {
        notify_due(conn).await?;
    }
    Ok(woke.rows_affected() == 1)
}

/// Record a failed step: release the lease, count the failure, back off.
/// `try_` is the new failure count, or None to keep the one the lease set.
/// `progress` saves steps that succeeded under this lease before the
/// failure but were not written yet. Returns the new `try`, or None if the
/// lease was lost.
pub async fn record_failure(
    conn: &mut PgConnection,
    id: Uuid,
    lease: DateTime<Utc>,
    try_: Option<i32>,
    progress: Option<&StepWrite>,
    error: &str,
    backoff_cap_secs: f64,
) -> Result<Option<i32>, sqlx::Error> {
    let row: Option<(i32,)> = sqlx::query_as(
        "UPDATE strand SET try = coalesce($3, try), \
             schedule = clock_timestamp() + random() * least(power(2, coalesce($3, try)), $4) * interval '1 second', \
             lease = $6::timestamptz, lease_holder = NULL, last_error = $5, last_error_at = now(), \
             prog = coalesce($7, prog), label = coalesce($8, label), stack = coalesce($9, stack), \
             retval = CASE WHEN $7 IS NULL THEN retval ELSE $10 END \
         WHERE id = $1 AND lease = $2 RETURNING try",
    )
    .bind(id)
    .bind(lease)
    .bind(try_)
    .bind(backoff_cap_secs)
    .bind(error)
    .bind(FREE)
    .bind(progress.map(|p| p.prog.as_str()))
    .bind(progress.map(|p| p.label.as_str()))
    .bind(progress.and_then(|p| p.stack.as_ref()))
    .bind(progress.and_then(|p| p.retval.as_ref()))
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

/// Insert many strands of one prog and label in one statement.
pub async fn insert_many(
    conn: &mut PgConnection,
    parent_id: Option<Uuid>,
    prog: &str,
    label: &str,
    ids: &[Uuid],
    stacks: &[Value],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO strand (id, parent_id, prog, label, stack) \
         SELECT id, $1, $2, $3, stack FROM unnest($4::uuid[], $5::jsonb[]) AS t(id, stack)",
    )
    .bind(parent_id)
    .bind(prog)
    .bind(label)
    .bind(ids)
    .bind(stacks)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
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

/// Delete the exited children of `parent`, with their semaphores, and return them, with how many
/// children remain (still running, or exited but somehow still leased: those
/// are never deleted under a worker that holds them).
pub async fn reap(conn: &mut PgConnection, parent: Uuid) -> Result<(Vec<Exited>, i64), sqlx::Error> {
    let exited: Vec<Exited> = sqlx::query_as(
        concat!(
            "WITH gone AS (DELETE FROM strand WHERE parent_id = $1 AND exitval IS NOT NULL AND lease < now() \
                           RETURNING id, prog, exitval), ",
            delete_their_semaphores!(),
            " SELECT id, prog, exitval FROM gone"
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn distinct_values_are_sent_once_and_each_row_points_at_its_own() {
        let values = [json!({"a": 1}), json!("done"), json!({"a": 1}), json!(null), json!("done")];
        let (distinct, at) = distinct_values(values.iter());
        assert_eq!(distinct, vec![r#"{"a":1}"#, r#""done""#, "null"]);
        assert_eq!(at, vec![1, 2, 1, 3, 2]);
    }
}

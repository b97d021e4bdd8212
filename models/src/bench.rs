//! The queries of `skein bench` and of the `Bench::*` progs it runs.
//!
//! The bench keeps two tables of its own, made on first use rather than by a
//! migration (a database that never ran the bench never has them):
//! `bench_count`, where each counted step adds one to its strand's row in the
//! step's own transaction (how `--verify` proves every step committed exactly
//! once), and `bench_baseline`, the rows of the raw-Postgres baseline. The
//! rest reads and clears the strands of the bench's progs, named by the
//! caller (`Bench::Step`, ...).

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::strand::{self, delete_their_semaphores};

/// Rows in `bench_baseline`: the baseline's clients update them in turn.
pub const BASELINE_ROWS: i32 = 10_000;

/// Make the bench's tables if they are missing.
pub async fn prepare_tables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS bench_count (strand_id uuid PRIMARY KEY, steps integer NOT NULL); \
         CREATE TABLE IF NOT EXISTS bench_baseline (id integer PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO bench_baseline SELECT g, 0 FROM generate_series(1, {BASELINE_ROWS}) g ON CONFLICT DO NOTHING;"
    );
    sqlx::raw_sql(&sql).execute(conn).await?;
    Ok(())
}

/// One baseline transaction: a single-row UPDATE (`id` in 1..=BASELINE_ROWS).
pub async fn baseline_update(conn: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bench_baseline SET n = n + 1 WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// Count one step of `strand` (called in the step's transaction).
pub async fn count_step(conn: &mut PgConnection, strand: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bench_count (strand_id, steps) VALUES ($1, 1) \
         ON CONFLICT (strand_id) DO UPDATE SET steps = bench_count.steps + 1",
    )
    .bind(strand)
    .execute(conn)
    .await?;
    Ok(())
}

/// The cheapest statement that still uses the connection: a step that must
/// hold one (or read on one) without doing any work on it.
pub async fn round_trip(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await?;
    Ok(())
}

/// Live (not exited) strands of these progs.
pub async fn live(conn: &mut PgConnection, progs: &[&str]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = ANY($1)").bind(progs).fetch_one(conn).await
}

/// Archived (exited top-level) strands of these progs.
pub async fn archived(conn: &mut PgConnection, progs: &[&str]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM strand_archive WHERE prog = ANY($1)").bind(progs).fetch_one(conn).await
}

/// The ids of the live strands of `prog`.
pub async fn ids_of(conn: &mut PgConnection, prog: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM strand WHERE prog = $1").bind(prog).fetch_all(conn).await
}

/// Remove what earlier runs of `progs` left: their strands, live and
/// archived, and all step counts, in one transaction; then vacuum their tables.
pub async fn forget_runs(conn: &mut PgConnection, progs: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(concat!("WITH gone AS (DELETE FROM strand WHERE prog = ANY($1) RETURNING id), ", delete_their_semaphores!(), " SELECT 1"))
    .bind(progs)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM strand_archive WHERE prog = ANY($1)").bind(progs).execute(&mut *tx).await?;
    sqlx::query("TRUNCATE bench_count").execute(&mut *tx).await?;
    tx.commit().await?;
    // Every run starts from tables without an earlier run's dead rows, as the
    // peer's bench starts from a fresh schema. Autovacuum would do this in
    // time where it is on; it is off on some servers (this machine's CI one),
    // and there a table that earlier runs churned makes every claim walk
    // their dead tuples: runs got slower one after another.
    sqlx::query("VACUUM (ANALYZE) strand, semaphore, strand_archive").execute(conn).await?;
    Ok(())
}

/// Add `n` strands of `prog` napping a day at label `label`, written
/// straight into the table (a million through `enqueue` would take minutes,
/// and they never run), then refresh the planner's statistics so the claim
/// is planned for a table that holds them.
pub async fn add_sleepers(conn: &mut PgConnection, prog: &str, label: &str, n: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO strand (id, prog, label, stack, schedule) \
         SELECT gen_random_uuid(), $1, $2, '[{}]', now() + interval '1 day' \
         FROM generate_series(1, $3)",
    )
    .bind(prog)
    .bind(label)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    sqlx::query("ANALYZE strand").execute(conn).await?;
    Ok(())
}

/// The plan (EXPLAIN, JSON) of the engine's own claim statement,
/// `strand::claim_due_statement`, as the engine's connections plan it.
pub async fn claim_plan(conn: &mut PgConnection, limit: i64) -> Result<Value, sqlx::Error> {
    sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {}", strand::claim_due_statement()))
        .bind(limit)
        .bind(120.0_f64)
        .bind("bench")
        .bind(Vec::<Uuid>::new())
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .fetch_one(conn)
        .await
}

/// Step counts against the expected `per` strand: (strands counted, strands
/// whose count differs). A fanout parent's own count is left out: it is not
/// part of the workload's steps.
pub async fn step_counts(conn: &mut PgConnection, per: i32, parent_prog: &str) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE steps <> $1) FROM bench_count c \
         WHERE NOT EXISTS (SELECT 1 FROM strand_archive a WHERE a.id = c.strand_id AND a.prog = $2)",
    )
    .bind(per)
    .bind(parent_prog)
    .fetch_one(conn)
    .await
}

/// A few strands whose step count is not `per`, with their count.
pub async fn wrong_counts(conn: &mut PgConnection, per: i32) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as("SELECT strand_id, steps FROM bench_count WHERE steps <> $1 LIMIT 5").bind(per).fetch_all(conn).await
}

/// Every step counted, over all strands.
pub async fn steps_counted(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(sum(steps), 0)::int8 FROM bench_count").fetch_one(conn).await
}

/// Steps counted by the live strands of `prog`.
pub async fn steps_counted_by(conn: &mut PgConnection, prog: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(c.steps), 0)::int8 FROM bench_count c JOIN strand s ON s.id = c.strand_id WHERE s.prog = $1",
    )
    .bind(prog)
    .fetch_one(conn)
    .await
}

// A worker's claims carry its name, `host:pid#id` (see worker.rs), so a
// process id is matched between ':' and '#'.

/// The strands worker process `pid` holds claims on right now.
pub async fn held_by_process(conn: &mut PgConnection, pid: u32) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM strand WHERE lease > now() AND lease_holder LIKE '%:' || $1 || '#%'")
        .bind(pid.to_string())
        .fetch_all(conn)
        .await
}

/// For each of `ids`: whether it moved on to process `pid` (claimed by it,
/// or already exited and gone).
pub async fn moved_to_process(conn: &mut PgConnection, ids: &[Uuid], pid: u32) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id, s.id IS NULL OR coalesce(s.lease_holder LIKE '%:' || $2 || '#%', false) \
         FROM unnest($1::uuid[]) AS h(id) LEFT JOIN strand s ON s.id = h.id",
    )
    .bind(ids)
    .bind(pid.to_string())
    .fetch_all(conn)
    .await
}

/// Remove a bench project and all it made (its VMs never ran), in one
/// transaction.
pub async fn remove_project(conn: &mut PgConnection, project: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for q in [
        concat!("WITH gone AS (DELETE FROM strand WHERE id IN (SELECT id FROM vm WHERE project_id = $1) RETURNING id), ", delete_their_semaphores!(), " SELECT 1"),
        "DELETE FROM event WHERE subject_id IN (SELECT id FROM vm WHERE project_id = $1)",
        "DELETE FROM vm WHERE project_id = $1",
        "DELETE FROM idempotency_key WHERE scope = $1",
        "DELETE FROM api_token WHERE project_id = $1",
        "DELETE FROM project WHERE id = $1",
    ] {
        sqlx::query(q).bind(project).execute(&mut *tx).await?;
    }
    tx.commit().await
}

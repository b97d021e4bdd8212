//! Workers and their liveness: who may hold claims, and what happens to the
//! claims of a worker that died or hung.
//!
//! A worker registers on a connection of its own and takes a session-level
//! advisory lock keyed by its id before its row exists, so a peer that sees
//! the row also sees the lock. The lock lives exactly as long as the session:
//! Postgres drops it when the process is killed, runs out of memory or loses
//! its network (TCP keepalives), with no clock involved. A hung process keeps
//! its session, so it also beats (`seen_at`); one silent for too long is dead
//! too, and its sessions are ended so it can neither hold locks nor commit.
//!
//! Any live worker reaps the dead: one statement deletes their rows and frees
//! their claims, so exactly one peer breaks each dead worker's claims.

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::strand::FREE;

/// The first key of every liveness lock (`pg_advisory_lock(LOCK_SPACE, id)`):
/// "skn", so skein's locks do not collide with an application's own.
pub const LOCK_SPACE: i32 = 0x736b6e;

/// A worker as registered: its id (the lock's second key) and the holder
/// name its claims carry.
#[derive(Clone, Debug)]
pub struct Registered {
    pub id: i32,
    pub holder: String,
}

/// Register on `conn`, which must stay open for as long as the worker lives:
/// lock first, then the row. `holder_prefix` is e.g. `host:pid`, `process`
/// the application_name of all of this process's connections.
pub async fn register(conn: &mut PgConnection, holder_prefix: &str, process: &str) -> Result<Registered, sqlx::Error> {
    loop {
        let id: i32 = sqlx::query_scalar("SELECT nextval('worker_id_seq')::integer").fetch_one(&mut *conn).await?;
        // The sequence cycles; an id whose lock is still held is skipped.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(LOCK_SPACE)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            continue;
        }
        let holder = format!("{holder_prefix}#{id}");
        sqlx::query(
            "INSERT INTO worker (id, holder, process, backend_pid) VALUES ($1, $2, $3, pg_backend_pid()) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, process = excluded.process, \
                 backend_pid = excluded.backend_pid, started_at = now(), seen_at = now()",
        )
        .bind(id)
        .bind(&holder)
        .bind(process)
        .execute(&mut *conn)
        .await?;
        return Ok(Registered { id, holder });
    }
}

/// Short TCP keepalives on the liveness session, so that Postgres ends it
/// (and drops the lock) within seconds when the worker's machine or network
/// is gone, not after the kernel's default two hours.
pub async fn keepalives(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('tcp_keepalives_idle', '2', false), set_config('tcp_keepalives_interval', '1', false), \
                        set_config('tcp_keepalives_count', '3', false)")
        .execute(conn)
        .await?;
    Ok(())
}

/// Say this worker is still here. False if peers have declared it dead (its
/// row is gone): it must abandon its steps and register again.
pub async fn beat(conn: &mut PgConnection, id: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE worker SET seen_at = now() WHERE id = $1").bind(id).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Leave cleanly (graceful shutdown): the row goes; the lock goes with the session.
pub async fn deregister(conn: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM worker WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// A worker found dead.
#[derive(Clone, Debug, Deserialize)]
pub struct Dead {
    pub holder: String,
    pub process: String,
    /// True if its session ended (killed, crashed, cut off); false if it
    /// still has one but stopped beating (hung).
    pub session_ended: bool,
}

/// A claim broken because its worker died.
#[derive(Clone, Debug, Deserialize)]
pub struct Broken {
    pub id: Uuid,
    pub prog: String,
    pub label: String,
    /// Attempts in a row that did not end in a committed step, this one included.
    #[serde(rename = "try")]
    pub try_: i32,
    pub holder: String,
}

/// Find the workers other than `me` whose lock is gone (advisory locks are
/// per database: another skein database on the same server has its own ids) or who have not beaten
/// for `hung_after_secs`; delete them and free their claims, in one
/// statement. The claims are found by scanning the hot table (no index on
/// the holder: that would cost every claim a write), so that scan is gated
/// by a one-time `EXISTS (SELECT 1 FROM dead)`: with nobody dead, as on
/// nearly every call (four a second per worker), it never runs. A freed
/// strand keeps its attempt count (the claim's `try + 1`),
/// so a label that kills its worker every time backs off: its first retry is
/// at once, then `random() * min(2^(try-1) - 1, cap)` seconds later.
pub async fn reap_dead(
    conn: &mut PgConnection,
    me: i32,
    hung_after_secs: f64,
    backoff_cap_secs: f64,
) -> Result<(Vec<Dead>, Vec<Broken>), sqlx::Error> {
    let (dead, broken): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "WITH dead AS ( \
             DELETE FROM worker w \
             WHERE w.id <> $1 \
               AND (w.seen_at < now() - make_interval(secs => $2) \
                    OR NOT EXISTS (SELECT 1 FROM pg_locks l \
                                   WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $3::oid \
                                     AND l.objid = w.id::oid AND l.objsubid = 2 \
                                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))) \
             RETURNING w.holder, w.process, w.seen_at >= now() - make_interval(secs => $2) AS session_ended), \
         broken AS ( \
             UPDATE strand s SET lease = $5::timestamptz, lease_holder = NULL, \
                 schedule = now() + random() * least(power(2, s.try - 1) - 1, $4) * interval '1 second', \
                 last_error = 'its worker ' || d.holder || CASE WHEN d.session_ended THEN ' died' ELSE ' hung' END \
                              || ' during this step', \
                 last_error_at = now() \
             FROM dead d \
             WHERE EXISTS (SELECT 1 FROM dead) \
               AND s.lease_holder = d.holder AND s.lease > now() AND s.exitval IS NULL \
             RETURNING s.id, s.prog, s.label, s.try, d.holder) \
         SELECT (SELECT coalesce(json_agg(dead), '[]') FROM dead), \
                (SELECT coalesce(json_agg(broken), '[]') FROM broken)",
    )
    .bind(me)
    .bind(hung_after_secs)
    .bind(LOCK_SPACE)
    .bind(backoff_cap_secs)
    .bind(FREE)
    .fetch_one(conn)
    .await?;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    Ok((serde_json::from_value(dead).map_err(decode)?, serde_json::from_value(broken).map_err(decode)?))
}

/// End every session of a hung worker's process (`application_name = process`),
/// so it holds no row lock and can commit nothing when it wakes. Returns how
/// many were ended; fails if this role may not end them (the fence still holds).
pub async fn end_sessions(conn: &mut PgConnection, process: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(process)
    .fetch_one(conn)
    .await
}

/// A live worker, for operators.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Worker {
    pub id: i32,
    pub holder: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seen_at: chrono::DateTime<chrono::Utc>,
    /// Strands it holds a claim on right now.
    pub claims: i64,
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Worker>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.id, w.holder, w.started_at, w.seen_at, \
                (SELECT count(*) FROM strand s WHERE s.lease_holder = w.holder AND s.lease > now()) AS claims \
         FROM worker w ORDER BY w.id",
    )
    .fetch_all(conn)
    .await
}

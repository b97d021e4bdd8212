//! Quotas and capacity: taking and returning them atomically.
//!
//! Both are one conditional UPDATE: the row lock serializes concurrent
//! takers and Postgres re-checks the condition against the row as the
//! previous taker left it, so no interleaving can overcommit a host or
//! exceed a quota. CHECK constraints on the tables back this up.

use sqlx::PgConnection;
use uuid::Uuid;

/// What a VM needs from a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_mib: i64,
}

/// Count one more VM against the project's quota. False if it is used up.
pub async fn take_quota(conn: &mut PgConnection, project: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE project SET vm_count = vm_count + 1 WHERE id = $1 AND vm_count < vm_quota AND deleted_at IS NULL")
        .bind(project)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn return_quota(conn: &mut PgConnection, project: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE project SET vm_count = vm_count - 1 WHERE id = $1 AND vm_count > 0").bind(project).execute(conn).await?;
    Ok(())
}

/// Reserve `size` on an accepting host with room, preferring the emptiest.
/// Returns the host, or None if no host has room now. A VM of a private
/// subnet goes anywhere too: its subnet spans hosts (`network`).
pub async fn reserve(conn: &mut PgConnection, size: Size) -> Result<Option<Uuid>, sqlx::Error> {
    let candidates: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM vm_host WHERE state = 'accepting' \
             AND cpus - used_cores >= $1 AND memory_mib - used_memory_mib >= $2 AND storage_free_mib - used_disk_mib >= $3 \
         ORDER BY cpus - used_cores DESC, memory_mib - used_memory_mib DESC, id LIMIT 8",
    )
    .bind(size.cores)
    .bind(size.memory_mib)
    .bind(size.disk_mib)
    .fetch_all(&mut *conn)
    .await?;
    for (host,) in candidates {
        let taken: Option<(Uuid,)> = sqlx::query_as(
            "UPDATE vm_host SET used_cores = used_cores + $2, used_memory_mib = used_memory_mib + $3, \
                 used_disk_mib = used_disk_mib + $4 \
             WHERE id = $1 AND state = 'accepting' AND cpus - used_cores >= $2 \
               AND memory_mib - used_memory_mib >= $3 AND storage_free_mib - used_disk_mib >= $4 \
             RETURNING id",
        )
        .bind(host)
        .bind(size.cores)
        .bind(size.memory_mib)
        .bind(size.disk_mib)
        .fetch_optional(&mut *conn)
        .await?;
        if taken.is_some() {
            return Ok(Some(host));
        }
    }
    Ok(None)
}

/// Give a VM's share back to its host.
pub async fn release(conn: &mut PgConnection, host: Uuid, size: Size) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vm_host SET used_cores = greatest(used_cores - $2, 0), \
             used_memory_mib = greatest(used_memory_mib - $3, 0), used_disk_mib = greatest(used_disk_mib - $4, 0) \
         WHERE id = $1",
    )
    .bind(host)
    .bind(size.cores)
    .bind(size.memory_mib)
    .bind(size.disk_mib)
    .execute(conn)
    .await?;
    Ok(())
}

/// The prog and label of a VM that waits for a host with room.
pub const WAITING_PROG: &str = "Vm::Nexus";
pub const WAITING_LABEL: &str = "Start";

/// Capacity appeared (a host became accepting, a VM gave its share back):
/// wake every VM strand still at Start, in the caller's transaction, so
/// they try to be placed once it commits rather than at their long
/// fallback nap. Each is woken like a semaphore increment wakes its strand
/// (`models::semaphore::incr`); one still mid-step keeps the wake, as the
/// step's nap only moves a schedule it leased with. All of Start is woken,
/// not only rows already marked 'waiting': a VM whose first try is
/// running now and finds no room has not committed 'waiting' yet, and
/// must not sleep through this. Rows are locked in id order, as batched
/// step writes lock them. Returns how many were woken.
pub async fn wake_waiting(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let woken = sqlx::query(
        "WITH due AS (SELECT id FROM strand WHERE prog = $1 AND label = $2 AND exitval IS NULL ORDER BY id FOR UPDATE) \
         UPDATE strand s SET schedule = least(s.schedule, now()) - interval '1 microsecond' FROM due WHERE s.id = due.id",
    )
    .bind(WAITING_PROG)
    .bind(WAITING_LABEL)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if woken > 0 {
        crate::strand::notify_due(conn).await?;
    }
    Ok(woken)
}

/// The VMs waiting for a host with room, as one cause for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub count: i64,
    /// The biggest need among them (most cores, then memory, then disk).
    pub largest: Size,
    /// When the longest-waiting one began to wait.
    pub since: chrono::DateTime<chrono::Utc>,
    /// When the longest-waiting one that began after `after` began (see [`waiting`]).
    pub oldest_after: Option<chrono::DateTime<chrono::Utc>>,
}

/// Serializes the decisions about the single "VMs wait" page: each is made
/// on what committed before it, so two VMs placed at once cannot each see
/// the other still waiting and both leave the page open.
pub async fn lock_waiting(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('skein:vms-waiting-for-capacity'))").execute(conn).await?;
    Ok(())
}

/// The VMs waiting now, or None if none waits. `oldest_after` considers
/// only those that began to wait after `after` (all of them if None).
pub async fn waiting(
    conn: &mut PgConnection,
    after: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Option<Waiting>, sqlx::Error> {
    type Row = (i64, Option<i32>, Option<i64>, Option<i64>, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>);
    let (count, cores, memory, disk, since, oldest_after): Row = sqlx::query_as(
        "SELECT count(*), \
             (array_agg(cores ORDER BY cores DESC, memory_mib DESC, disk_mib DESC))[1], \
             (array_agg(memory_mib::int8 ORDER BY cores DESC, memory_mib DESC, disk_mib DESC))[1], \
             (array_agg(disk_mib::int8 ORDER BY cores DESC, memory_mib DESC, disk_mib DESC))[1], \
             min(waiting_since), min(waiting_since) FILTER (WHERE $1::timestamptz IS NULL OR waiting_since > $1) \
         FROM vm WHERE state = 'waiting'",
    )
    .bind(after)
    .fetch_one(conn)
    .await?;
    Ok(match (cores, memory, disk, since) {
        (Some(cores), Some(memory_mib), Some(disk_mib), Some(since)) if count > 0 => {
            Some(Waiting { count, largest: Size { cores, memory_mib, disk_mib }, since, oldest_after })
        }
        _ => None,
    })
}

//! The connection pool as the engine uses it: every wait for a connection is
//! counted while it lasts, so operators can see steps queueing for the
//! database (`skein_db_pool_connections{state="waiting"}`). sqlx does not
//! export its waiters, so the engine counts its own.
//!
//! The engine's hot statements (claims, group-commit flushes) run on a few
//! connections kept warm between them ([`Warm`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

static WAITING: AtomicI64 = AtomicI64::new(0);

/// Tasks of this process waiting for a pooled connection right now.
pub fn waiting() -> i64 {
    WAITING.load(Ordering::Relaxed)
}

/// Counts one waiter for as long as it lives (a cancelled wait is uncounted too).
struct Waiter;

impl Waiter {
    fn enter() -> Waiter {
        WAITING.fetch_add(1, Ordering::Relaxed);
        Waiter
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pooled connection, counted while waited for.
pub(crate) async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let _waiting = Waiter::enter();
    pool.acquire().await
}

/// A transaction on a pooled connection, counted while the connection is waited for.
pub(crate) async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let conn = acquire(pool).await?;
    Transaction::begin(conn, None).await
}

/// Connections kept for the engine's hot statements: claims and group-commit
/// flushes. A pool hands out its idle connections oldest first (and sqlx
/// pings each connection it is given back), so hot statements that each took
/// a pooled connection went round every backend of the pool in turn, and each
/// backend met its statement with cold caches. Kept warm, one-step cost
/// Postgres 13% less CPU per step and ran 13% faster (`skein bench --scenario
/// one-step --strands 200000`, a pool of 24; ARCHITECTURE.md).
///
/// A connection is kept only while the hot path is busy: when no hot
/// statement is in flight and the group commit waits for work, every kept
/// connection goes back to the pool, and all go back as soon as a hot
/// statement ends while a task of this process waits for a pooled
/// connection. At most half the pool (and five) is kept at once.
pub(crate) struct Warm {
    pool: PgPool,
    keep_at_most: usize,
    state: Mutex<WarmState>,
}

struct WarmState {
    kept: Vec<PoolConnection<Postgres>>,
    in_flight: usize,
    /// The group commit has work in hand (it flushes again soon).
    busy: bool,
}

impl Warm {
    pub fn new(pool: PgPool) -> Arc<Warm> {
        let keep_at_most = (pool.options().get_max_connections() as usize / 2).clamp(1, 5);
        Arc::new(Warm { pool, keep_at_most, state: Mutex::new(WarmState { kept: Vec::new(), in_flight: 0, busy: false }) })
    }

    /// A hot statement is in flight from now until the returned handle drops;
    /// it takes its connection (a kept one if any) when it first needs one.
    /// Counted at once, not at the first poll, so that a flush just handed
    /// out keeps the connections warm for itself.
    pub fn reserve(self: &Arc<Self>) -> WarmConn {
        self.state.lock().unwrap().in_flight += 1;
        WarmConn { warm: self.clone(), conn: None, fit: true, unchecked: false }
    }

    /// The group commit has work in hand (`true`), or waits for some.
    pub fn busy(&self, busy: bool) {
        let mut state = self.state.lock().unwrap();
        state.busy = busy;
        state.give_back_if_quiet();
    }

    fn end(&self, conn: Option<PoolConnection<Postgres>>) {
        let mut state = self.state.lock().unwrap();
        state.in_flight -= 1;
        if waiting() > 0 {
            // A task waits for a pooled connection: it gets every kept one
            // back, not only this one (one parked beside a busy hot path
            // would otherwise stay out of its reach).
            state.kept.clear();
        } else if state.kept.len() < self.keep_at_most {
            state.kept.extend(conn);
        }
        state.give_back_if_quiet();
    }
}

impl WarmState {
    fn give_back_if_quiet(&mut self) {
        if !self.busy && self.in_flight == 0 {
            self.kept.clear();
        }
    }
}

/// One hot statement's hold on a connection (see [`Warm::reserve`]).
pub(crate) struct WarmConn {
    warm: Arc<Warm>,
    conn: Option<PoolConnection<Postgres>>,
    fit: bool,
    /// Handed out by `get` and no result checked since: a statement may have
    /// been cut off mid-way (its future dropped), so it is not kept.
    unchecked: bool,
}

impl WarmConn {
    /// The connection, taken on first use: a kept one, or a pooled one.
    pub async fn get(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            let kept = self.warm.state.lock().unwrap().kept.pop();
            self.conn = Some(match kept {
                Some(conn) => conn,
                None => acquire(&self.warm.pool).await?,
            });
        }
        self.unchecked = true;
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Pass a statement's result through; an error spoils the connection for
    /// keeping (it goes back to the pool, which checks it).
    pub fn check<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.fit &= result.is_ok();
        self.unchecked = false;
        result
    }
}

impl Drop for WarmConn {
    fn drop(&mut self) {
        let conn = self.conn.take().filter(|_| self.fit && !self.unchecked);
        self.warm.end(conn);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;

    use crate::testing::TestDb;

    #[tokio::test]
    async fn a_wait_for_a_connection_is_counted_while_it_lasts() {
        let db = TestDb::new().await;
        let pool = PgPoolOptions::new().max_connections(1).connect(&db.url()).await.unwrap();
        let held = super::acquire(&pool).await.unwrap();
        let before = super::waiting();
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { super::acquire(&pool).await.map(drop) }
        });
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while super::waiting() == before {
            assert!(std::time::Instant::now() < until, "the waiter was never counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        waiter.await.unwrap().unwrap();
        // Other tests in this binary may wait at the same moment: no exact count.
        assert!(super::waiting() <= before, "the wait is uncounted once it is over");
    }

    /// Wait until the pool holds `n` idle connections (a connection goes back
    /// to the pool on a task of its own, a moment after it is dropped).
    async fn idle(pool: &sqlx::PgPool, n: usize) {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while pool.num_idle() != n {
            assert!(std::time::Instant::now() < until, "the pool holds {} idle connections, not {n}", pool.num_idle());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn backend(conn: &mut super::WarmConn) -> i32 {
        let c = conn.get().await.unwrap();
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(c).await;
        conn.check(pid).unwrap()
    }

    #[tokio::test]
    async fn hot_statements_run_on_the_connection_kept_warm_until_the_hot_path_goes_quiet() {
        let db = TestDb::new().await;
        let pool = PgPoolOptions::new().max_connections(4).connect(&db.url()).await.unwrap();
        // Four idle connections: the pool hands out the oldest first.
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(pool.acquire().await.unwrap());
        }
        drop(open);
        idle(&pool, 4).await;
        let warm = super::Warm::new(pool.clone());
        warm.busy(true);

        let mut first = warm.reserve();
        let pid = backend(&mut first).await;
        drop(first);
        let mut second = warm.reserve();
        assert_eq!(backend(&mut second).await, pid, "the next hot statement ran on the kept connection");
        drop(second);
        idle(&pool, 3).await; // one connection is kept while the hot path is busy

        // A statement that failed does not leave its connection kept.
        let mut failing = warm.reserve();
        let c = failing.get().await.unwrap();
        let failed = sqlx::query("SELECT 1/0").execute(c).await.map(drop);
        assert!(failing.check(failed).is_err());
        drop(failing);
        idle(&pool, 4).await; // the failed statement's connection went back to the pool

        // Nor does one whose statement was cut off (its result never checked).
        let mut cut_off = warm.reserve();
        cut_off.get().await.unwrap();
        drop(cut_off);
        idle(&pool, 4).await;

        let mut again = warm.reserve();
        backend(&mut again).await;
        drop(again);
        idle(&pool, 3).await;
        warm.busy(false);
        idle(&pool, 4).await; // quiet: every kept connection is back in the pool
    }

    #[tokio::test]
    async fn tasks_waiting_for_a_connection_get_every_kept_one_when_a_hot_statement_ends() {
        let db = TestDb::new().await;
        let pool = PgPoolOptions::new().max_connections(3).connect(&db.url()).await.unwrap();
        let warm = super::Warm::new(pool.clone());
        warm.busy(true);
        // Two hot statements at once; the first ends and leaves its connection kept.
        let (mut first, mut second) = (warm.reserve(), warm.reserve());
        backend(&mut first).await;
        backend(&mut second).await;
        drop(first);
        let _third = pool.acquire().await.unwrap();
        // The pool is empty now: two tasks wait for a connection.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                // Each holds what it gets, as a task that waited would.
                tokio::spawn(async move { super::acquire(&pool).await })
            })
            .collect();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while super::waiting() < 2 {
            assert!(std::time::Instant::now() < until, "the waiters were never counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The hot path stays busy; the second statement ending frees both.
        drop(second);
        let mut got = Vec::new();
        for waiter in waiters {
            let conn = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("a waiter got no connection while one sat kept");
            got.push(conn.unwrap().unwrap());
        }
    }
}

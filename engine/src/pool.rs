//! The connection pool as the engine uses it: every wait for a connection is
//! counted while it lasts, so operators can see steps queueing for the
//! database (`skein_db_pool_connections{state="waiting"}`). sqlx does not
//! export its waiters, so the engine counts its own.

use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Transaction};

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
}

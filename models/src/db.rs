//! Connecting and migrating. Migrations are embedded in every binary, so a
//! `respirate` or `skein` started against an empty database brings it up to date.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connection settings every skein connection uses.
///
/// `plan_cache_mode = force_generic_plan`: the engine's statements have a
/// fixed shape, but Postgres's default keeps re-planning them on every run
/// (custom plans), and planning the claim's join probes the schedule index
/// through dead entries each time: a fifth of all CPU under load, measured.
pub fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("skein")
        .options([("plan_cache_mode", "force_generic_plan")]))
}

/// A pool of at most `max` connections.
pub async fn connect(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    connect_as(url, max, "skein").await
}

/// A pool whose connections carry `application_name`: a worker names its
/// process, so a peer that finds it hung can end all of its sessions.
pub async fn connect_as(url: &str, max: u32, application_name: &str) -> Result<PgPool, sqlx::Error> {
    let opts = options(url)?.application_name(application_name);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        // A connection handed out again within a second of its last use is
        // not pinged first: under load the pool's default ping on every
        // acquire was a round trip per statement. One idle longer (across a
        // database restart, say) is still checked and replaced if dead.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < Duration::from_secs(1) {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
        .connect_with(opts)
        .await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

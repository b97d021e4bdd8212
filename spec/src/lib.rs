//! Shared pieces of the integration tests: small progs that each exercise
//! one engine rule, and a side door for doing things "from outside" in the
//! middle of a step (as another worker or an operator would).

pub mod api;
pub mod cli;
pub mod guest_image;
/// Test hosts: real sshd in network namespaces (shared with `skein up`'s demo).
pub use skein_bin::local_host;
pub mod procs;
pub mod rule_progs;
pub mod ssh;
pub mod world;
pub mod worker_progs;

pub use rule_progs::registry;

use skein_engine::Runner;
use sqlx::PgPool;

/// Lets a label act outside its own transaction, mid-step: increment a
/// semaphore as an operator would, run another strand as another worker
/// would, or note that it ran (a note that survives a rollback).
#[derive(Clone)]
pub struct SideDoor {
    pub pool: PgPool,
    pub runner: Runner,
}

impl SideDoor {
    pub async fn note(&self, text: &str) {
        sqlx::query("INSERT INTO spec_note (text) VALUES ($1)").bind(text).execute(&self.pool).await.expect("note");
    }
}

/// Notes the side door wrote, oldest first.
pub async fn notes(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT text FROM spec_note ORDER BY id").fetch_all(pool).await.expect("notes")
}

/// Tables the rule progs write to, created per test database.
pub async fn create_spec_tables(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS spec_note (id bigserial PRIMARY KEY, text text NOT NULL); \
         CREATE TABLE IF NOT EXISTS spec_write (id bigserial PRIMARY KEY, text text NOT NULL); \
         CREATE TABLE IF NOT EXISTS spec_journal (strand_id uuid NOT NULL, step integer NOT NULL, pid integer NOT NULL, \
                                                  at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .execute(pool)
    .await
    .expect("spec tables");
}

/// A binary of this workspace (`skein`, `respirate`), built by `scripts/test`
/// before the tests run.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins` (scripts/test does)", path.display());
    path
}

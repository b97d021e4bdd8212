//! Test helpers that make the right test the easy one.
//!
//! Every test gets its own real Postgres database, cloned from a template
//! that already has the migrations (a clone is a file copy, so it is quick):
//!
//! ```ignore
//! let h = Harness::new(Registry::new().with::<Census>()).await;
//! let id = h.start(census::Frame::default(), census::Label::Start).await;
//! h.step(id).await.assert_hop(census::Label::Count);
//! ```
//!
//! The server is `SKEIN_TEST_DATABASE_URL`, else `DATABASE_URL`, else the
//! local one on 127.0.0.1:5432 (`scripts/test` makes sure one is running).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde_json::Value;
use skein_models::strand::Strand;
use skein_models::{db, semaphore, Ubid};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::prog::{Label, Prog, Signal};
use crate::runner::{Config, Outcome, Runner, StepReport};
use crate::{enqueue, Registry};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server tests run against.
pub fn server_url() -> String {
    std::env::var("SKEIN_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// A fresh, migrated database, dropped when this value is.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    server: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::try_new().await.unwrap_or_else(|e| {
            panic!("could not make a test database on {}: {e:#}\n(run the tests with scripts/test, which starts Postgres)", server_url())
        })
    }

    async fn try_new() -> anyhow::Result<TestDb> {
        let server = db::options(&server_url())?.application_name("skein-test");
        let mut admin = server.connect().await?;
        let template = template_name();
        // One process at a time makes the template and clones it.
        sqlx::query("SELECT pg_advisory_lock(7340033)").execute(&mut admin).await?;
        let made = async {
            drop_abandoned(&mut admin).await?;
            let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&template)
                .fetch_optional(&mut admin)
                .await?;
            if exists.is_none() {
                sqlx::query(&format!("CREATE DATABASE {template}")).execute(&mut admin).await?;
                let mut conn = server.clone().database(&template).connect().await?;
                db::MIGRATOR.run(&mut conn).await?;
                conn.close().await?;
            }
            let name = format!("skein_t_{}_{:08x}", std::process::id(), rand_u32());
            sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}")).execute(&mut admin).await?;
            Ok::<_, anyhow::Error>(name)
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock(7340033)").execute(&mut admin).await?;
        let name = made?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(server.clone().database(&name))
            .await?;
        Ok(TestDb { pool, name, server })
    }

    /// The URL of this database, for processes the test starts.
    pub fn url(&self) -> String {
        self.server.clone().database(&self.name).to_url_lossy().to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime we may block; use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut admin = server.connect().await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.ok()
            })
        })
        .join();
    }
}

fn rand_u32() -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::time::SystemTime::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    h.finish() as u32
}

/// Named after the migrations, so changing one makes a new template.
fn template_name() -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in db::MIGRATOR.iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    format!("skein_tpl_{:016x}", h.finish())
}

/// Databases left by test processes that died before dropping them.
async fn drop_abandoned(admin: &mut PgConnection) -> anyhow::Result<()> {
    let names: Vec<(String,)> = sqlx::query_as("SELECT datname::text FROM pg_database WHERE datname LIKE 'skein\\_t\\_%'")
        .fetch_all(&mut *admin)
        .await?;
    for (name,) in names {
        let pid: Option<u32> = name.split('_').nth(2).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut *admin).await?;
        }
    }
    Ok(())
}

/// Timings for tests: short leases and backoff, so retries happen in seconds.
pub fn test_config() -> Config {
    Config {
        lease: Duration::from_secs(20),
        step_budget: Duration::from_secs(10),
        continue_budget: Duration::from_secs(5),
        backoff_cap: Duration::from_secs(2),
        page_after_failures: 3,
        children_nap: Duration::from_secs(3600),
        holder: format!("test:{}", std::process::id()),
        shared_writes: true,
    }
}

/// A test database with a runner over it, and one-line helpers.
pub struct Harness {
    pub db: TestDb,
    pub runner: Runner,
}

impl Harness {
    pub async fn new(registry: Registry) -> Harness {
        Self::with_config(registry, test_config()).await
    }

    pub async fn with_config(registry: Registry, config: Config) -> Harness {
        let db = TestDb::new().await;
        let runner = Runner::new(db.pool.clone(), registry).with_config(config);
        Harness { db, runner }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Start a top-level strand at `label`, due now.
    pub async fn start<L: Label>(&self, frame: <L::Prog as Prog>::Frame, label: L) -> Ubid {
        let mut conn = self.pool().acquire().await.expect("connection");
        enqueue::start(&mut conn, frame, label).await.expect("start strand")
    }

    /// Set a prog's semaphore (`census::Sem::Finish`) or `Signal::DESTROY` on `id`.
    pub async fn incr(&self, id: Ubid, signal: impl Into<Signal>) -> bool {
        let mut conn = self.pool().acquire().await.expect("connection");
        enqueue::incr(&mut conn, id, signal).await.expect("incr")
    }

    /// Set a semaphore by its stored name, as an operator's console can,
    /// even one no prog declares: for tests of what the engine does with it.
    pub async fn incr_name(&self, id: Ubid, name: &str) -> bool {
        let mut conn = self.pool().acquire().await.expect("connection");
        semaphore::incr(&mut conn, id.uuid(), name).await.expect("incr")
    }

    /// Run exactly one step of `id`, whatever its schedule.
    pub async fn step(&self, id: Ubid) -> StepReport {
        self.runner
            .step_now(id.uuid())
            .await
            .expect("database")
            .unwrap_or_else(|| panic!("strand {id} could not be leased: gone, exited or leased elsewhere"))
    }

    /// Run `id` now, step after step, until it naps, exits or fails.
    pub async fn run(&self, id: Ubid) -> Vec<StepReport> {
        match self.runner.claim_id(id.uuid(), false).await.expect("database") {
            Some(claim) => self.runner.run(claim, usize::MAX).await,
            None => panic!("strand {id} could not be leased: gone, exited or leased elsewhere"),
        }
    }

    /// Run every due strand until none is due.
    pub async fn drain(&self) -> Vec<StepReport> {
        self.runner.drain().await.expect("database")
    }

    /// The strand's row; panics if it is gone.
    pub async fn strand(&self, id: Ubid) -> Strand {
        self.try_strand(id).await.unwrap_or_else(|| panic!("strand {id} is gone"))
    }

    pub async fn try_strand(&self, id: Ubid) -> Option<Strand> {
        let mut conn = self.pool().acquire().await.expect("connection");
        skein_models::strand::get(&mut conn, id.uuid()).await.expect("database")
    }

    /// Semaphore names set on the strand, one per increment.
    pub async fn sems(&self, id: Ubid) -> Vec<String> {
        let mut conn = self.pool().acquire().await.expect("connection");
        semaphore::names(&mut conn, id.uuid()).await.expect("database")
    }

    /// The typed top frame of a strand running `P`.
    pub async fn frame<P: Prog>(&self, id: Ubid) -> P::Frame {
        let stack = self.strand(id).await.stack;
        serde_json::from_value(stack[0].clone()).expect("top frame fits the prog's frame type")
    }

    /// Start a strand at `label` and run that one label: the rivertest way to
    /// test one state of a prog.
    pub async fn run_label<L: Label>(&self, frame: <L::Prog as Prog>::Frame, label: L) -> StepReport {
        let id = self.start(frame, label).await;
        self.step(id).await
    }
}

/// Assertions on what a step did, each one line in a test.
impl StepReport {
    #[track_caller]
    pub fn assert_hop<L: Label>(&self, to: L) -> &Self {
        assert_eq!(self.outcome, Outcome::Hop { to: to.name().into() }, "{} at {}", self.prog, self.label);
        self
    }

    #[track_caller]
    pub fn assert_nap(&self, secs: impl Into<f64>) -> &Self {
        assert_eq!(self.outcome, Outcome::Nap { secs: secs.into() }, "{} at {}", self.prog, self.label);
        self
    }

    #[track_caller]
    pub fn assert_push<L: Label>(&self, label: L) -> &Self {
        let want = Outcome::Push { prog: <L::Prog as Prog>::NAME.into(), label: label.name().into() };
        assert_eq!(self.outcome, want, "{} at {}", self.prog, self.label);
        self
    }

    /// Popped `value` (the prog's output) back to a caller.
    #[track_caller]
    pub fn assert_pop(&self, value: impl serde::Serialize) -> &Self {
        let value = serde_json::to_value(value).expect("the expected output serializes");
        match &self.outcome {
            Outcome::Pop { retval, .. } => assert_eq!(retval, &value, "{} at {}", self.prog, self.label),
            other => panic!("{} at {}: expected a pop of {value}, got {other:?}", self.prog, self.label),
        }
        self
    }

    /// Popped the last frame: the strand exited with `value` (the prog's output).
    #[track_caller]
    pub fn assert_exit(&self, value: impl serde::Serialize) -> &Self {
        let exitval = serde_json::to_value(value).expect("the expected output serializes");
        assert_eq!(self.outcome, Outcome::Exit { exitval }, "{} at {}", self.prog, self.label);
        self
    }

    #[track_caller]
    pub fn assert_buds(&self, n: usize) -> &Self {
        assert_eq!(self.budded.len(), n, "{} at {} budded {:?}", self.prog, self.label, self.budded);
        self
    }

    /// Failed with an error whose message contains `needle`.
    #[track_caller]
    pub fn assert_failed(&self, needle: &str) -> &Self {
        match &self.outcome {
            Outcome::Failed { error, .. } => assert!(error.contains(needle), "error {error:?} lacks {needle:?}"),
            other => panic!("{} at {}: expected a failure containing {needle:?}, got {other:?}", self.prog, self.label),
        }
        self
    }

    /// The exit value, if this step exited.
    pub fn exitval(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Exit { exitval } => Some(exitval),
            _ => None,
        }
    }
}

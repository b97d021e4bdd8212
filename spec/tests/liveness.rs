//! Rules R20-R23 of `docs/engine.md`: a dead, hung or cut-off worker's strands move on in
//! seconds, not a lease, and a label that kills its worker backs off. Real
//! `spec-respirate` processes, SIGKILLed, SIGSTOPped and cut off from the
//! database; leases are two minutes long, so anything taken over in seconds
//! was taken over by liveness. Every step journals which process committed
//! it, in its own transaction, so "exactly once" and "nothing after waking"
//! are read from the database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skein_engine::testing::TestDb;
use skein_spec::procs::{skein_ok, Proc};
use skein_spec::worker_progs::{JournalFrame, JournalLabel, PoisonFrame, PoisonLabel};
use sqlx::PgPool;
use uuid::Uuid;

async fn setup() -> TestDb {
    let db = TestDb::new().await;
    skein_spec::create_spec_tables(&db.pool).await;
    db
}

/// `n` journaled strands of `steps` steps, each step working `work_ms` first.
async fn enqueue_journals(pool: &PgPool, n: usize, steps: u32, work_ms: u64) -> Vec<Uuid> {
    let mut conn = pool.acquire().await.unwrap();
    let frames = (0..n).map(|_| JournalFrame { steps, work_ms, at: 0 });
    skein_engine::enqueue::start_many(&mut conn, frames, JournalLabel::Step)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|u| u.uuid())
        .collect()
}

async fn live_strands(pool: &PgPool, prog: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = $1").bind(prog).fetch_one(pool).await.unwrap()
}

async fn wait_until_done(pool: &PgPool, prog: &str, limit: Duration, procs: &[&Proc]) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if live_strands(pool, prog).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: Vec<String> = procs.iter().map(|p| format!("--- {}:\n{}", p.log.display(), p.log_text())).collect();
    panic!("{} {prog} strands still live after {limit:?}\n{}", live_strands(pool, prog).await, logs.join("\n"));
}

/// Wait until `pid`'s worker holds at least `n` claims; returns the strands it holds.
async fn claims_of(pool: &PgPool, pid: u32, n: usize, worker: &Proc) -> Vec<Uuid> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let held: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM strand WHERE lease > now() AND lease_holder LIKE '%:' || $1 || '#%'")
                .bind(pid.to_string())
                .fetch_all(pool)
                .await
                .unwrap();
        if held.len() >= n {
            return held;
        }
        assert!(Instant::now() < until, "worker {pid} never held {n} claims:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await.unwrap()
}

/// Every step of every strand committed exactly once.
async fn assert_each_step_once(pool: &PgPool, strands: usize, steps: u32) {
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (strand_id, step)) FROM spec_journal").fetch_one(pool).await.unwrap();
    assert_eq!(distinct, (strands as i64) * steps as i64, "every step committed");
    assert_eq!(rows, distinct, "no step committed twice");
}

/// For each of `strands`, when its first step committed after `after`.
async fn first_step_after(pool: &PgPool, strands: &[Uuid], after: DateTime<Utc>) -> HashMap<Uuid, DateTime<Utc>> {
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT strand_id, min(at) FROM spec_journal WHERE strand_id = ANY($1) AND at > $2 GROUP BY strand_id",
    )
    .bind(strands)
    .bind(after)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

// R20 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_a_sigkilled_workers_strands_run_again_within_seconds() {
    let db = setup().await;
    let url = db.url();
    let ids = enqueue_journals(&db.pool, 120, 4, 200).await;
    let args = ["--concurrency", "32", "--pool-size", "4"];
    let victim = Proc::spec_respirate(&url, &args);
    let survivor = Proc::spec_respirate(&url, &args);
    let held = claims_of(&db.pool, victim.pid(), 8, &victim).await;

    let killed_at = db_now(&db.pool).await;
    victim.signal("KILL");
    wait_until_done(&db.pool, "Spec::Journal", Duration::from_secs(60), &[&survivor]).await;

    assert_each_step_once(&db.pool, ids.len(), 4).await;
    let resumed = first_step_after(&db.pool, &held, killed_at).await;
    let mut delays: Vec<f64> = resumed.values().map(|t| (*t - killed_at).num_milliseconds() as f64 / 1000.0).collect();
    delays.sort_by(f64::total_cmp);
    assert!(!delays.is_empty(), "the killed worker's strands ran again");
    // A lease is 120 s here; liveness hands the strands on in about a second
    // (plus the step's own 200 ms). Generous: tests are not benchmarks.
    let worst = delays[delays.len() - 1];
    assert!(worst < 10.0, "the killed worker's strands waited {worst:.1} s (all: {delays:?})\n{}", survivor.log_text());
    assert!(survivor.log_text().contains("a worker died"), "{}", survivor.log_text());
}

// R21 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r21_a_hung_worker_is_taken_over_and_commits_nothing_when_it_wakes() {
    let db = setup().await;
    let url = db.url();
    // Steps that work a while, so the stopped worker is stopped mid-step.
    let ids = enqueue_journals(&db.pool, 60, 3, 600).await;
    let args = ["--concurrency", "16", "--pool-size", "4", "--hung-after-secs", "2"];
    let hung = Proc::spec_respirate(&url, &args);
    let other = Proc::spec_respirate(&url, &args);
    let held = claims_of(&db.pool, hung.pid(), 4, &hung).await;

    let stopped_at = db_now(&db.pool).await;
    hung.signal("STOP");
    // Taken over while it sleeps: its strands move on without it.
    let until = Instant::now() + Duration::from_secs(20);
    while first_step_after(&db.pool, &held, stopped_at).await.len() < held.len() {
        assert!(Instant::now() < until, "the hung worker's strands were not taken over:\n{}", other.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(other.log_text().contains("a worker hung"), "{}", other.log_text());

    let woke_at = db_now(&db.pool).await;
    hung.signal("CONT");
    wait_until_done(&db.pool, "Spec::Journal", Duration::from_secs(60), &[&hung, &other]).await;
    // Give the woken worker time to try committing what it was doing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_each_step_once(&db.pool, ids.len(), 3).await;
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM spec_journal WHERE pid = $1 AND strand_id = ANY($2) AND at > $3 AND at < $4",
    )
    .bind(hung.pid() as i32)
    .bind(&held)
    .bind(stopped_at)
    .bind(woke_at + chrono::Duration::seconds(2))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stale, 0, "the woken worker committed nothing of the steps it had been running");
    let log = hung.log_text();
    assert!(log.contains("lost liveness"), "the woken worker knew it had lost its identity:\n{log}");
}

// R22 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r22_a_worker_that_loses_its_database_session_stops_committing() {
    let db = setup().await;
    let url = db.url();
    let ids = enqueue_journals(&db.pool, 40, 3, 800).await;
    let worker = Proc::spec_respirate(&url, &["--concurrency", "16", "--pool-size", "4"]);
    let held = claims_of(&db.pool, worker.pid(), 4, &worker).await;

    // End its liveness session, as a lost network or a restarted pooler would.
    let cut_at = db_now(&db.pool).await;
    let ended: bool = sqlx::query_scalar(
        "SELECT pg_terminate_backend(backend_pid) FROM worker WHERE holder LIKE '%:' || $1 || '#%'",
    )
    .bind(worker.pid().to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(ended);
    wait_until_done(&db.pool, "Spec::Journal", Duration::from_secs(60), &[&worker]).await;

    assert_each_step_once(&db.pool, ids.len(), 3).await;
    let log = worker.log_text();
    assert!(log.contains("lost liveness"), "{log}");
    assert!(log.contains("abandoned steps claimed under a lost worker identity"), "{log}");
    // The steps it was in (each works 800 ms) were abandoned, not committed:
    // their strands' next commits came from its new identity, soon.
    let resumed = first_step_after(&db.pool, &held, cut_at).await;
    assert_eq!(resumed.len(), held.len(), "every strand it held ran again");
    let worst = resumed.values().map(|t| (*t - cut_at).num_milliseconds()).max().unwrap_or(0);
    assert!(worst < 10_000, "its strands waited {worst} ms\n{log}");
    // It registered again under a new identity and went on working.
    // Operators see the same: one live worker, its new identity.
    let shown: serde_json::Value =
        serde_json::from_str(&skein_ok(&["workers", "--json", "--database-url", &url])).expect("workers --json");
    let live = shown["workers"].as_array().expect("a list of workers");
    assert_eq!(live.len(), 1, "the old identity is gone, the new one lives: {shown}");
    assert!(live[0]["holder"].as_str().is_some_and(|h| h.contains(&format!(":{}#", worker.pid()))), "{shown}");
}

// R23 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r23_a_poison_pill_backs_off_and_pages() {
    let db = setup().await;
    let url = db.url();
    let pill = {
        let mut conn = db.pool.acquire().await.unwrap();
        skein_engine::enqueue::start(&mut conn, PoisonFrame {}, PoisonLabel::Swallow).await.unwrap()
    };
    let ids = enqueue_journals(&db.pool, 30, 2, 0).await;
    // Three workers, restarted whenever one dies (as systemd would).
    let args = ["--concurrency", "8", "--pool-size", "3"];
    let mut workers: Vec<Proc> = (0..3).map(|_| Proc::spec_respirate(&url, &args)).collect();
    let mut deaths = 0;
    let began = Instant::now();
    let paged = loop {
        for w in workers.iter_mut() {
            if w.exited() {
                deaths += 1;
                *w = Proc::spec_respirate(&url, &args);
            }
        }
        let page: Option<String> =
            sqlx::query_scalar("SELECT summary FROM page WHERE tag = $1 AND resolved_at IS NULL")
                .bind(format!("strand-failing:{pill}"))
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        if let Some(summary) = page {
            break summary;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "no page after {deaths} deaths in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let paged_after = began.elapsed();
    assert!(paged.contains("lost its worker") && paged.contains("Spec::Poison"), "{paged}");

    // It backs off: once paged, the next tries are seconds apart, not a loop.
    let strand = skein_models::strand::get(&mut db.pool.acquire().await.unwrap(), pill.uuid()).await.unwrap().unwrap();
    assert!(strand.try_ >= 5, "tries counted across workers: {}", strand.try_);
    assert!(strand.last_error.as_deref().is_some_and(|e| e.contains("died during this step")), "{:?}", strand.last_error);
    let watch_from = Instant::now();
    let deaths_before = deaths;
    while watch_from.elapsed() < Duration::from_secs(6) {
        for w in workers.iter_mut() {
            if w.exited() {
                deaths += 1;
                *w = Proc::spec_respirate(&url, &args);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deaths - deaths_before <= 2, "{} deaths in 6 s after {} tries: not backing off", deaths - deaths_before, strand.try_);
    // Meanwhile the fleet did its other work.
    wait_until_done(&db.pool, "Spec::Journal", Duration::from_secs(30), &workers.iter().collect::<Vec<_>>()).await;
    assert_each_step_once(&db.pool, ids.len(), 2).await;
    eprintln!("poison pill: paged after {deaths_before} deaths in {paged_after:?}");
}

//! Slow hosts cost the rest of the fleet nothing (R19, real processes).
//!
//! 24 hosts whose SSH hangs before its banner (a listener that accepts and
//! never answers) beside 2,000 strands that each write to the database, run
//! by one respirate with a pool of 8 connections. Each host label waits up to
//! 30 s on its host holding no connection, so the writers finish exactly
//! once, none fails on a pool timeout, and their steps' database time stays
//! close to a run without the slow hosts.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skein_engine::testing::TestDb;
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::ssh::keys::{self, SecretKey};
use skein_spec::procs::{skein, skein_ok, Proc};

const WRITERS: u32 = 2000;
const HOSTS: usize = 24;

/// A TCP listener that accepts and never says a word (sshd hung before its
/// banner), counting the connections it took.
struct Hanging {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        Hanging { port, accepted }
    }
}

/// What one run of the writers showed.
struct Run {
    seconds: f64,
    /// The 99th percentile over steps of the time a step waited for and
    /// used its database connection (in the label, so a starved pool shows).
    p99_write_ms: f64,
}

async fn live_writers(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = 'Bench::Step'").fetch_one(pool).await.unwrap()
}

/// Enqueue the writers (one step each, counted), wait for all of them, and
/// check every one committed its step exactly once.
async fn run_writers(db: &TestDb, worker: &Proc) -> Run {
    let url = db.url();
    let n = WRITERS.to_string();
    skein_ok(&["bench", "--scenario", "one-step", "--strands", &n, "--enqueue-only", "--database-url", &url]);
    let began = Instant::now();
    while live_writers(&db.pool).await > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(40),
            "{} of {WRITERS} writers still live after 40 s\n{}",
            live_writers(&db.pool).await,
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let out = skein(&["bench", "--scenario", "one-step", "--strands", &n, "--verify", "--database-url", &url]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify prints JSON");
    assert_eq!(line["ok"], true, "every writer finished exactly once: {line}");

    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT (exitval->>'write_us')::float8 / 1000 FROM strand_archive WHERE prog = 'Bench::Step' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ms.len(), WRITERS as usize);
    ms.sort_by(f64::total_cmp);
    Run { seconds, p99_write_ms: ms[(ms.len() - 1) * 99 / 100] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_beside_hosts_that_never_answer_finish_once_without_pool_timeouts() {
    let db = TestDb::new().await;
    let secret = SecretKey::random();
    let hex = secret.to_hex();
    // The production lease (120 s): each host label waits its full 30 s SSH limit.
    let worker = Proc::respirate_env(&db.url(), &["--pool-size", "8", "--lease-secs", "120"], &[("SKEIN_SECRET_KEY", &hex)]);

    let quiet = run_writers(&db, &worker).await;

    let hang = Hanging::start();
    let key = keys::generate().unwrap();
    for i in 0..HOSTS {
        let mut tx = db.pool.begin().await.unwrap();
        let name = format!("hung-{i}");
        let new = NewHost { name: &name, address: "127.0.0.1", port: hang.port, user: "root", bootstrap_private_key: &key.private, root_dir: "/nonexistent" };
        host::add(&mut tx, &secret, &new, nexus::Frame::default()).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Hosts are being asked (were each holding a connection, half the
    // pool would be gone already).
    let until = Instant::now() + Duration::from_secs(20);
    while hang.accepted.load(Ordering::Relaxed) < 4 {
        assert!(Instant::now() < until, "only {} hosts were asked\n{}", hang.accepted.load(Ordering::Relaxed), worker.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let slow = run_writers(&db, &worker).await;

    // Every host was asked, and hung all along: none got past its first label.
    assert!(hang.accepted.load(Ordering::Relaxed) >= HOSTS, "only {} hosts were asked", hang.accepted.load(Ordering::Relaxed));
    let past_start: i64 = sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = 'Vm::HostNexus' AND label <> 'Start'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(past_start, 0);
    let log = worker.log_text();
    assert!(!log.contains("pool timed out"), "a step waited out the pool:\n{log}");
    assert!(!log.lines().any(|l| l.contains("step failed") && l.contains("Bench::Step")), "a writer's step failed:\n{log}");
    assert!(!log.contains("while holding"), "a host label asked its host holding the database:\n{log}");
    eprintln!(
        "writers: {:.2} s, p99 database time {:.1} ms without slow hosts; {:.2} s, {:.1} ms beside them",
        quiet.seconds, quiet.p99_write_ms, slow.seconds, slow.p99_write_ms
    );
    // Generous bounds: tests are not benchmarks.
    assert!(
        slow.p99_write_ms <= quiet.p99_write_ms * 3.0 + 1000.0,
        "p99 of the writers' database time: {:.1} ms beside slow hosts, {:.1} ms without",
        slow.p99_write_ms,
        quiet.p99_write_ms
    );
    assert!(
        slow.seconds <= quiet.seconds * 3.0 + 5.0,
        "the writers took {:.1} s beside slow hosts, {:.1} s without",
        slow.seconds,
        quiet.seconds
    );
}

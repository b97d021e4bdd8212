//! respirate as real processes: several at once, killed, stopped, and with
//! the database restarted under them. The workload is the benchmark's, in
//! counting mode: each step counts itself in the same transaction, so
//! `skein bench --verify` proves every step committed exactly once.

use std::time::{Duration, Instant};

use skein_engine::testing::TestDb;
use skein_spec::procs::{free_port, skein, skein_ok, Proc};

/// Enqueue `strands` strands that hop `hops` times each, counting every step.
fn enqueue(url: &str, strands: u32, hops: u32) {
    skein_ok(&["bench", "--scenario", "hops", "--strands", &strands.to_string(), "--hops", &hops.to_string(), "--enqueue-only", "--database-url", url]);
}

fn verify(url: &str, strands: u32, hops: u32) -> serde_json::Value {
    let out = skein(&["bench", "--scenario", "hops", "--strands", &strands.to_string(), "--hops", &hops.to_string(), "--verify", "--database-url", url]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("verify printed no JSON:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(out.status.success(), line["ok"] == true, "exit status agrees with ok: {line}");
    line
}

async fn live_bench_strands(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog IN ('Bench::Step', 'Bench::Fanout')")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Wait until every bench strand has finished, or fail with the workers' logs.
async fn wait_until_done(pool: &sqlx::PgPool, limit: Duration, procs: &[&Proc]) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if live_bench_strands(pool).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = procs.iter().map(|p| format!("--- {}:\n{}", p.log.display(), p.log_text())).collect();
    panic!("{} strands still live after {limit:?}\n{}", live_bench_strands(pool).await, logs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_respirate_processes_commit_every_step_exactly_once() {
    let db = TestDb::new().await;
    let url = db.url();
    enqueue(&url, 600, 4);
    let workers: Vec<Proc> = (0..3).map(|_| Proc::respirate(&url, &["--concurrency", "16", "--pool-size", "4"])).collect();
    wait_until_done(&db.pool, Duration::from_secs(90), &workers.iter().collect::<Vec<_>>()).await;

    let line = verify(&url, 600, 4);
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["steps_committed"], 600 * 5);
    // Every process did some of the work: no leader, the load is shared.
    for mut w in workers {
        w.signal("TERM");
        assert!(w.wait_for(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", w.log_text());
        let log = w.log_text();
        let steps: u64 = log
            .split("steps=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no step count in the log:\n{log}"));
        assert!(steps > 0, "a worker did nothing:\n{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// Run the workload with two workers, SIGKILLing one (and starting a fresh
/// one) every `kill_every` if set; returns how long it took.
async fn run_with_kills(strands: u32, hops: u32, kill_every: Option<Duration>) -> (Duration, String) {
    let db = TestDb::new().await;
    let url = db.url();
    enqueue(&url, strands, hops);
    // Two-minute leases: a takeover in seconds is liveness, not lease expiry.
    let args = ["--concurrency", "16", "--pool-size", "4", "--lease-secs", "120"];
    let began = Instant::now();
    let mut workers = vec![Proc::respirate(&url, &args), Proc::respirate(&url, &args)];
    // Every worker's log, the killed ones' too: whoever noticed a death said so.
    let mut logs = String::new();
    let mut round = 0;
    while live_bench_strands(&db.pool).await > 0 {
        assert!(began.elapsed() < Duration::from_secs(120), "not done after 120 s");
        // The victim must have started working: on a loaded machine a fresh
        // worker may take longer than `kill_every` to start, and killing
        // workers that never ran a step would test nothing and finish nothing.
        let victim_works = || workers[round as usize % workers.len()].log_text().contains("registered as a live worker");
        match kill_every {
            Some(every) if began.elapsed() > every * (round + 1) && victim_works() => {
                // Kill one worker in the middle of its steps and start a fresh one.
                let victim = workers.remove(round as usize % workers.len());
                victim.signal("KILL");
                logs.push_str(&victim.log_text());
                drop(victim);
                workers.push(Proc::respirate(&url, &args));
                round += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let took = began.elapsed();
    let line = verify(&url, strands, hops);
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["steps_committed"], strands as u64 * (hops as u64 + 1));
    logs.extend(workers.iter().map(|w| w.log_text()));
    (took, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_commits_nothing_twice() {
    let (calm, _) = run_with_kills(1500, 10, None).await;
    let (chaos, logs) = run_with_kills(1500, 10, Some(Duration::from_millis(400))).await;
    assert!(logs.contains("a worker died"), "the killed workers' strands were taken over at once:\n{logs}");
    // Each kill costs about a second, not a two-minute lease.
    assert!(chaos < calm * 4 + Duration::from_secs(15), "with kills {chaos:?}, without {calm:?}");
    eprintln!("1500 strands x 11 steps: {calm:?} calm, {chaos:?} with a SIGKILL every 400 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_the_grace_period_and_leaves_no_lease_held() {
    let db = TestDb::new().await;
    let url = db.url();
    enqueue(&url, 2000, 8);
    let mut worker = Proc::respirate(&url, &["--concurrency", "32", "--shutdown-grace-secs", "5"]);
    // Let it get going, then stop it mid-run.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_count").fetch_one(&db.pool).await.unwrap_or(0);
        if counted > 100 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.signal("TERM");
    let status = worker.wait_for(Duration::from_secs(5 + 5)).unwrap_or_else(|| panic!("still running:\n{}", worker.log_text()));
    assert!(status.success(), "exit status {status:?}\n{}", worker.log_text());
    assert!(worker.log_text().contains("stopped"), "{}", worker.log_text());

    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM strand WHERE lease > now()").fetch_one(&db.pool).await.unwrap();
    assert_eq!(held, 0, "a stopped worker holds no lease");
    assert!(live_bench_strands(&db.pool).await > 0, "it was stopped mid-run (the workload was not done)");

    // Another worker finishes the job, and still every step committed once.
    let finisher = Proc::respirate(&url, &["--concurrency", "32"]);
    wait_until_done(&db.pool, Duration::from_secs(120), &[&finisher]).await;
    assert_eq!(verify(&url, 2000, 8)["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_respirate_reconnects_and_completes() {
    // A private cluster of our own, so restarting it disturbs no other test.
    let home = std::env::temp_dir().join(format!("skein-spec-pg-{}", std::process::id()));
    let port = free_port().to_string();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("SKEIN_HOME", &home).env("SKEIN_PG_PORT", &port);
    };
    let db_cmd = |action: &str| {
        let mut cmd = std::process::Command::new(skein_spec::binary("skein"));
        cmd.args(["db", action]);
        env(&mut cmd);
        let out = cmd.output().expect("skein db");
        assert!(out.status.success(), "skein db {action}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    struct Cleanup<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Cleanup<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let url = db_cmd("start");
    let _cleanup = Cleanup(|| {
        let _ = std::process::Command::new(skein_spec::binary("skein"))
            .args(["db", "stop"])
            .env("SKEIN_HOME", &home)
            .env("SKEIN_PG_PORT", &port)
            .status();
        let _ = std::fs::remove_dir_all(&home);
    });

    enqueue(&url, 1500, 6);
    let pool = skein_models::db::connect(&url, 2).await.unwrap();
    let worker = Proc::respirate(&url, &["--concurrency", "16", "--pool-size", "4"]);
    let until = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM bench_count").fetch_one(&pool).await.unwrap_or(0) < 50 {
        assert!(Instant::now() < until, "no progress before the restart:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;

    db_cmd("stop");
    tokio::time::sleep(Duration::from_secs(1)).await;
    db_cmd("start");

    let pool = skein_models::db::connect(&url, 2).await.unwrap();
    wait_until_done(&pool, Duration::from_secs(120), &[&worker]).await;
    assert_eq!(verify(&url, 1500, 6)["ok"], true);
    let log = worker.log_text();
    assert!(log.contains("database"), "the outage was noticed and logged:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strand_that_always_fails_does_not_slow_the_others() {
    use skein_engine::testing::Harness;
    use skein_engine::{DispatchConfig, Dispatcher, Outcome};
    use skein_spec::rule_progs::{MeddlerFrame, MeddlerLabel, NapperFrame, NapperLabel};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let h = Harness::new(skein_spec::registry()).await;
    skein_spec::create_spec_tables(h.pool()).await;
    let door = skein_spec::SideDoor { pool: h.pool().clone(), runner: h.runner.clone() };
    let runner = h.runner.clone().with_resources(skein_engine::Resources::default().with(door));
    let bad = h.start(MeddlerFrame { mode: "fail".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    let mut conn = h.pool().acquire().await.unwrap();
    skein_engine::enqueue::start_many(&mut conn, (0..2000).map(|_| NapperFrame { naps: vec![0.0, 0.0] }), NapperLabel::Next)
        .await
        .unwrap();

    let (good, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let done = Arc::new(tokio::sync::Notify::new());
    let dispatcher = {
        let (good, failures, done) = (good.clone(), failures.clone(), done.clone());
        Dispatcher::new(runner, DispatchConfig { concurrency: 32, ..Default::default() }).on_step(move |r| match &r.outcome {
            Outcome::Exit { .. } if good.fetch_add(1, Ordering::Relaxed) + 1 == 2000 => done.notify_one(),
            Outcome::Failed { .. } => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        })
    };
    let run = tokio::spawn(dispatcher.run(async move { done.notified().await }));
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("the good strands finished").unwrap();

    assert_eq!(good.load(Ordering::Relaxed), 2000, "every good strand exited");
    let row = h.strand(bad).await;
    assert!(row.last_error.unwrap_or_default().contains("disk on fire"));
    let failed = failures.load(Ordering::Relaxed);
    assert!((1..=6).contains(&failed), "the failing strand backed off instead of hogging the workers: {failed} failures");
    assert!(row.schedule > chrono::Utc::now() - chrono::Duration::seconds(1), "and is scheduled for a later retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_worker_at_once_without_waiting_for_its_poll() {
    let db = TestDb::new().await;
    let url = db.url();
    // Polling once a minute: only a NOTIFY can make it pick the strand up in time.
    let worker = Proc::respirate(&url, &["--poll-ms", "60000"]);
    tokio::time::sleep(Duration::from_secs(2)).await; // connected, migrated, idle
    enqueue(&url, 1, 0);
    let until = Instant::now() + Duration::from_secs(20);
    while live_bench_strands(&db.pool).await != 0 {
        assert!(Instant::now() < until, "not woken by NOTIFY:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_steps_and_due_strands() {
    use std::io::{Read, Write};
    let db = TestDb::new().await;
    let url = db.url();
    enqueue(&url, 50, 1);
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = Proc::respirate(&url, &["--metrics-addr", &addr]);
    wait_until_done(&db.pool, Duration::from_secs(60), &[&worker]).await;
    let mut body = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        body.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        // Counters are updated as the worker tallies finished strands, just
        // after their rows commit: poll until the final count shows.
        let all_counted = body.contains("skein_steps_total{prog=\"Bench::Step\"} 100");
        if all_counted && body.contains("skein_due_strands") || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(body.contains("skein_steps_total{prog=\"Bench::Step\"} 100"), "two counted steps per strand:\n{body}");
    assert!(body.contains("skein_due_strands"), "{body}");
    assert!(body.contains("skein_open_pages"), "{body}");
}

#[tokio::test]
async fn a_worker_makes_the_archive_partitions_ahead_and_sweeps_orphaned_semaphores_at_start() {
    let db = TestDb::new().await;
    let url = db.url();
    // As if the database had been made months ago: next month's partition is
    // missing, and an increment outlived its strand (it raced the exit).
    let next: String = sqlx::query_scalar("SELECT 'strand_archive_' || to_char(date_trunc('month', now()) + interval '1 month', 'YYYYMM')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP TABLE {next}")).execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO semaphore (id, strand_id, name) VALUES (gen_random_uuid(), gen_random_uuid(), 'destroy')")
        .execute(&db.pool)
        .await
        .unwrap();
    let exists = || async {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(&next).fetch_one(&db.pool).await.unwrap()
    };
    let orphans = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM semaphore").fetch_one(&db.pool).await.unwrap() };
    assert!(!exists().await);

    let worker = Proc::respirate(&url, &[]);
    let until = Instant::now() + Duration::from_secs(30);
    while (!exists().await || orphans().await > 0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exists().await, "{next} was not made; the worker's log:\n{}", worker.log_text());
    assert_eq!(orphans().await, 0, "the orphaned increment was not swept; the worker's log:\n{}", worker.log_text());
}

/// The archive keeps exited strands for `--archive-keep-months` (12 by
/// default) whole months: workers drop older monthly partitions. 0 keeps all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_drop_the_archive_partitions_past_its_retention() {
    let db = TestDb::new().await;
    let url = db.url();
    let partition = |month: &str| format!("strand_archive_{month}");
    let make = |month: &str, from: &str, to: &str| {
        format!("CREATE TABLE {} PARTITION OF strand_archive FOR VALUES FROM ('{from}') TO ('{to}')", partition(month))
    };
    // One ended long ago; one ended within the year (kept by default).
    let recent: (String, String, String) = sqlx::query_as(
        "SELECT to_char(m, 'YYYYMM'), m::date::text, (m + interval '1 month')::date::text \
         FROM (SELECT date_trunc('month', now()) - interval '6 months' AS m) six_months_ago",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for sql in [make("200001", "2000-01-01", "2000-02-01"), make(&recent.0, &recent.1, &recent.2)] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let exists = |name: String| {
        let pool = db.pool.clone();
        async move { sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(name).fetch_one(&pool).await.unwrap() }
    };
    // Housekeeping sweeps orphaned increments after it has kept the archive:
    // once an orphan planted before the worker started is gone, the archive's
    // round (making and dropping) is over.
    let plant_orphan = || async {
        sqlx::query("INSERT INTO semaphore (id, strand_id, name) VALUES (gen_random_uuid(), gen_random_uuid(), 'destroy')")
            .execute(&db.pool)
            .await
            .unwrap();
    };
    let round_done = || async {
        let until = Instant::now() + Duration::from_secs(30);
        let orphans = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM semaphore").fetch_one(&db.pool).await.unwrap() };
        while orphans().await > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        orphans().await == 0
    };

    plant_orphan().await;
    let keep_all = Proc::respirate(&url, &["--archive-keep-months", "0"]);
    assert!(round_done().await, "no round of housekeeping:\n{}", keep_all.log_text());
    assert!(exists(partition("200001")).await, "--archive-keep-months 0 dropped a partition:\n{}", keep_all.log_text());
    drop(keep_all);

    plant_orphan().await;
    let worker = Proc::respirate(&url, &[]);
    assert!(round_done().await, "no round of housekeeping:\n{}", worker.log_text());
    assert!(!exists(partition("200001")).await, "a partition 26 years old was kept:\n{}", worker.log_text());
    assert!(exists(partition(&recent.0)).await, "a partition 6 months old was dropped:\n{}", worker.log_text());
    assert!(worker.log_text().contains("past its retention"), "the drop was not logged:\n{}", worker.log_text());
}

/// A dispatcher slot bounds labels that may still run. A strand whose last
/// write is group-committed has no label left to run: it frees its slot
/// while the write waits (here, behind a lock on the archive), and the lane
/// claims the next strand. A step that writes in a transaction of its own
/// keeps its slot until that commits (its label may have to run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strand_waiting_only_for_its_group_commit_frees_its_slot() {
    use skein_engine::testing::Harness;
    use skein_engine::{DispatchConfig, Dispatcher};
    use skein_progs::bench::{StepFrame, StepLabel};
    use skein_spec::worker_progs::{JournalFrame, JournalLabel};

    let h = Harness::new(skein_spec::registry()).await;
    skein_spec::create_spec_tables(h.pool()).await;
    let leased = |prog: &'static str| {
        let pool = h.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM strand WHERE prog = $1 AND lease > now()")
                .bind(prog)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let wait_for = |prog: &'static str, n: i64| {
        let leased = &leased;
        async move {
            let until = Instant::now() + Duration::from_secs(5);
            while leased(prog).await != n {
                assert!(Instant::now() < until, "{prog}: {} leased, expected {n}", leased(prog).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Every top-level exit inserts into the archive: this holds them all.
    let block_exits = || async {
        let mut tx = h.pool().begin().await.unwrap();
        sqlx::query("LOCK TABLE strand_archive IN EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
        tx
    };

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dispatcher = Dispatcher::new(h.runner.clone(), DispatchConfig { concurrency: 1, lanes: 1, ..Default::default() });
    let run = tokio::spawn(dispatcher.run(async move {
        let _ = stopped.await;
    }));

    // Writing steps: the first holds the only slot while its exit waits.
    let exits = block_exits().await;
    for _ in 0..2 {
        h.start(JournalFrame { steps: 1, ..Default::default() }, JournalLabel::Step).await;
    }
    wait_for("Spec::Journal", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leased("Spec::Journal").await, 1, "a step writing in its transaction kept its slot");
    exits.rollback().await.unwrap();
    // Both gone, not just none leased: between the first one's exit and the
    // second one's claim neither is leased, and the second must not meet the
    // lock the pure steps below are held by.
    let until = Instant::now() + Duration::from_secs(5);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM strand WHERE prog = 'Spec::Journal'").fetch_one(h.pool()).await.unwrap() != 0 {
        assert!(Instant::now() < until, "the writing steps did not finish once their exits could commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pure steps: each frees its slot once only its exit is left.
    let exits = block_exits().await;
    for _ in 0..2 {
        h.start(StepFrame { hops: 0, ..Default::default() }, StepLabel::Run).await;
    }
    wait_for("Bench::Step", 2).await;
    exits.rollback().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM strand").fetch_one(h.pool()).await.unwrap() != 0 {
        assert!(Instant::now() < until, "every strand exited once the archive was free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    let summary = run.await.unwrap();
    assert_eq!((summary.steps, summary.failed), (4, 0));
}

/// A lane claims from where its last claim ended, not from the oldest due
/// strand (it would walk every strand it is running), and from the oldest
/// again at least once a second: a strand left behind it (here a lease that
/// ran out on an old schedule, its holder long gone) runs even while the
/// work ahead of it never runs dry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strand_left_behind_a_lanes_claims_runs_while_the_work_ahead_never_runs_dry() {
    use skein_engine::testing::Harness;
    use skein_engine::{enqueue, DispatchConfig, Dispatcher};
    use skein_spec::rule_progs::{NapperFrame, NapperLabel, TickerFrame, TickerLabel};

    let h = Harness::new(skein_spec::registry()).await;
    let behind = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    sqlx::query(
        "UPDATE strand SET schedule = now() - interval '1 hour', lease = now() + interval '1 second', \
         lease_holder = 'a worker long gone' WHERE id = $1",
    )
    .bind(behind.uuid())
    .execute(h.pool())
    .await
    .unwrap();
    let mut conn = h.pool().acquire().await.unwrap();
    enqueue::start_many(&mut conn, (0..64).map(|_| TickerFrame { every: 0.001 }), TickerLabel::Tick).await.unwrap();
    drop(conn);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dispatcher = Dispatcher::new(h.runner.clone(), DispatchConfig { concurrency: 8, lanes: 1, ..Default::default() });
    let run = tokio::spawn(dispatcher.run(async move {
        let _ = stopped.await;
    }));
    let until = Instant::now() + Duration::from_secs(15);
    let archived = loop {
        let mut conn = h.pool().acquire().await.unwrap();
        if let Some(a) = skein_models::archive::get(&mut conn, behind.uuid()).await.unwrap() {
            break a;
        }
        assert!(Instant::now() < until, "the strand left behind never ran while the tickers kept the lane busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ticks: i64 = sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = 'Spec::Ticker'").fetch_one(h.pool()).await.unwrap();
    let _ = stop.send(());
    run.await.unwrap();
    assert_eq!(archived.exitval, serde_json::json!({"msg": "rested"}));
    assert_eq!(ticks, 64, "the tickers were still running when it did");
}

//! `skein bench`: the project's benchmark, against a real Postgres.
//!
//! Each scenario prints one JSON line on stdout (progress goes to stderr),
//! with a raw-Postgres baseline measured in the same run on the same
//! database: single-row UPDATE transactions at the same concurrency. The
//! ratio `steps_per_s / baseline_tx_per_s` is the figure to compare across
//! machines; absolute numbers mostly measure the machine.
//!
//! `--enqueue-only` and `--verify` run the same workload through separately
//! started `respirate` processes: enqueue, let them run, then check that
//! every strand finished and every step committed exactly once.

pub mod api;
pub mod remote;
pub mod takeover;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use skein_engine::{enqueue, DispatchConfig, Dispatcher, Label, Outcome, Prog, Runner};
use skein_models::bench as db;
use skein_progs::bench::{Fanout, FanoutFrame, FanoutLabel, FanoutOutput, Sleeper, SleeperLabel, StepFrame, StepLabel, StepOutput, Stepper};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::process;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Scenario {
    /// N strands whose only label exits.
    OneStep,
    /// N strands that hop --hops times, then exit.
    Hops,
    /// One parent buds N children that exit, and reaps them.
    Fanout,
    /// Strands enqueued one at a time at --rate; time from enqueue to first step.
    Latency,
    /// one-step with --sleepers napping strands in the table.
    Sleepers,
    /// --strands VM creates through the API's router vs straight through vm::create.
    ApiCreate,
    /// Time from a respirate's SIGKILL to its strands' next step elsewhere (--rounds).
    Takeover,
    /// --strands writing strands alone, then beside --slow strands waiting on a slow remote peer.
    Remote,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Strands (children for fanout). Default: 20000; 5000 for hops; 10000 for fanout and remote; 1000 for latency; 2000 for api-create.
    #[arg(long)]
    pub strands: Option<u64>,
    /// Hops per strand in the hops scenario.
    #[arg(long, default_value_t = 10)]
    pub hops: u32,
    /// Postgres URL; default: the embedded cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Database connections: the engine's pool, and the baseline's clients.
    #[arg(long, default_value_t = 24)]
    pub connections: usize,
    /// Steps in flight in the worker pool (most hold no connection: their
    /// writes are group-committed). 512 is graphile-worker's running jobs
    /// plus its local queue in the peer bench (24 + 500). Like a
    /// graphile-worker job, a step waiting only for its batched completion
    /// frees its slot.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Claim loops in the worker pool.
    #[arg(long, default_value_t = 2)]
    pub lanes: usize,
    /// The most strands one claim statement leases.
    #[arg(long, default_value_t = DispatchConfig::default().batch)]
    pub batch: i64,
    /// Also count every step in a table, in the step's transaction (always on with --enqueue-only).
    #[arg(long)]
    pub count: bool,
    /// Each step that writes commits its own transaction, as before writing
    /// steps shared transactions (to compare the two in one sitting).
    #[arg(long)]
    pub private_writes: bool,
    /// Only enqueue the workload, for separately started respirate processes.
    #[arg(long, conflicts_with = "verify")]
    pub enqueue_only: bool,
    /// Check a workload enqueued with --enqueue-only: all finished, each step exactly once.
    #[arg(long)]
    pub verify: bool,
    /// Napping strands for the sleepers scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub sleepers: u64,
    /// Strands per second enqueued in the latency scenario.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Projects the api-create scenario spreads its creates over.
    #[arg(long, default_value_t = 24)]
    pub projects: usize,
    /// Kill-and-watch rounds of the takeover scenario.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds the baseline runs.
    #[arg(long, default_value_t = 3.0)]
    pub baseline_secs: f64,
    /// Strands waiting on a slow remote peer in the remote scenario.
    #[arg(long, default_value_t = 24)]
    pub slow: u64,
    /// How long each remote call of the remote scenario waits, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub remote_ms: u64,
    /// Print only the JSON line (no progress on stderr).
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub(crate) fn strands(&self) -> u64 {
        self.strands.unwrap_or(match self.scenario {
            Scenario::OneStep | Scenario::Sleepers => 20_000,
            Scenario::Hops => 5_000,
            Scenario::Fanout => 10_000,
            Scenario::Latency => 1_000,
            Scenario::ApiCreate => 2_000,
            Scenario::Takeover => 200,
            Scenario::Remote => 10_000,
        })
    }

    fn hops(&self) -> u32 {
        if self.scenario == Scenario::Hops {
            self.hops
        } else {
            0
        }
    }

    fn steps_per_strand(&self) -> u64 {
        self.hops() as u64 + 1
    }

    pub(crate) fn say(&self, msg: impl AsRef<str>) {
        if !self.json {
            eprintln!("bench: {}", msg.as_ref());
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let url = crate::embedded::database_url(args.database_url.clone()).await?;
    let pool = process::connect(&url, args.connections as u32).await?;
    db::prepare_tables(&mut *pool.acquire().await?).await?;
    if matches!(args.scenario, Scenario::ApiCreate | Scenario::Takeover | Scenario::Remote) && (args.verify || args.enqueue_only) {
        bail!("{} has no --enqueue-only or --verify", scenario_name(args.scenario));
    }
    if args.scenario == Scenario::Takeover {
        clean(&pool, &args).await?;
        let line = self::takeover::measure(&pool, &url, args.rounds.max(1), args.strands(), |m| args.say(m)).await?;
        println!("{line}");
        return Ok(());
    }
    let line = if args.verify {
        let line = verify(&pool, &args).await?;
        println!("{line}");
        if line["ok"] != json!(true) {
            std::process::exit(1);
        }
        return Ok(());
    } else if args.enqueue_only {
        clean(&pool, &args).await?;
        let n = enqueue_workload(&pool, &args, true).await?;
        json!({"scenario": scenario_name(args.scenario), "enqueued": n, "count": true})
    } else {
        measure(&pool, &args).await?
    };
    println!("{line}");
    Ok(())
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::OneStep => "one-step",
        Scenario::Hops => "hops",
        Scenario::Fanout => "fanout",
        Scenario::Latency => "latency",
        Scenario::Sleepers => "sleepers",
        Scenario::ApiCreate => "api-create",
        Scenario::Takeover => "takeover",
        Scenario::Remote => "remote",
    }
}

/// The progs of the workload `--enqueue-only` and `--verify` share.
const WORKLOAD: [&str; 2] = [Stepper::NAME, Fanout::NAME];

/// Remove what an earlier run left (but keep sleepers: they are slow to make).
async fn clean(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let n = db::live(&mut conn, &WORKLOAD).await?;
    if n > 0 {
        args.say(format!("removing {n} strands left by an earlier run"));
    }
    Ok(db::forget_runs(&mut conn, &WORKLOAD).await?)
}

async fn enqueue_workload(pool: &PgPool, args: &BenchArgs, count: bool) -> anyhow::Result<u64> {
    let mut conn = pool.acquire().await?;
    let n = args.strands();
    match args.scenario {
        Scenario::Fanout => {
            enqueue::start(&mut conn, FanoutFrame { children: n as u32, count, ..Default::default() }, FanoutLabel::Start).await?;
        }
        _ => {
            let hops = args.hops();
            for chunk_start in (0..n).step_by(10_000) {
                let size = (n - chunk_start).min(10_000);
                let frames = (0..size).map(|_| StepFrame { hops, count, ..Default::default() });
                enqueue::start_many(&mut conn, frames, StepLabel::Run).await?;
            }
        }
    }
    Ok(n)
}

/// Single-row UPDATE transactions from `clients` connections for `secs`.
async fn baseline(pool: &PgPool, clients: usize, secs: f64) -> anyhow::Result<f64> {
    let stop_at = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (pool, done) = (pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut id = (c as i32 * 397) % db::BASELINE_ROWS + 1;
            while Instant::now() < stop_at {
                db::baseline_update(&mut conn, id).await?;
                done.fetch_add(1, Ordering::Relaxed);
                id = id % db::BASELINE_ROWS + 1;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    let began = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64())
}

async fn ensure_sleepers(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let have = db::live(&mut conn, &[Sleeper::NAME]).await?;
    let want = args.sleepers as i64;
    if have < want {
        args.say(format!("adding {} napping strands (kept for later runs)", want - have));
        db::add_sleepers(&mut conn, Sleeper::NAME, SleeperLabel::Sleep.name(), want - have).await?;
    }
    Ok(())
}

/// Whether the engine's claim statement walks the partial index on schedule
/// (planned for a batch as large as the dispatcher's).
async fn claim_uses_partial_index(pool: &PgPool) -> anyhow::Result<bool> {
    let plan = db::claim_plan(&mut *pool.acquire().await?, DispatchConfig::default().batch).await?;
    Ok(plan.to_string().contains("strand_due"))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Run a scenario in this process and measure it.
async fn measure(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<Value> {
    clean(pool, args).await?;
    if args.scenario == Scenario::Sleepers {
        ensure_sleepers(pool, args).await?;
    }
    args.say(format!("baseline: single-row UPDATE transactions, {} clients, {}s", args.connections, args.baseline_secs));
    let baseline_tx_per_s = baseline(pool, args.connections, args.baseline_secs).await?;
    args.say(format!("baseline: {baseline_tx_per_s:.0} tx/s"));
    if args.scenario == Scenario::ApiCreate {
        return self::api::measure(pool, args.strands(), args.connections, args.projects, baseline_tx_per_s, |m| args.say(m)).await;
    }
    if args.scenario == Scenario::Remote {
        return self::remote::measure(pool, args, baseline_tx_per_s).await;
    }

    let n = args.strands();
    let expect_exits = if args.scenario == Scenario::Fanout { 1 } else { n };
    if args.scenario != Scenario::Latency {
        args.say(format!("enqueueing {n} strands"));
        enqueue_workload(pool, args, args.count).await?;
    }

    // Count exits and collect step times as the dispatcher reports them.
    let exits = Arc::new(AtomicU64::new(0));
    let steps = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let step_ms = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n as usize * 2)));
    // Only these scenarios read the exit values; keeping 200,000 of them
    // would cost the measured run their copies and the memory they grow.
    let keep_exit_vals = matches!(args.scenario, Scenario::Latency | Scenario::Fanout);
    let exit_vals = Arc::new(Mutex::new(Vec::<Value>::new()));
    let config = skein_engine::Config { shared_writes: !args.private_writes, ..Default::default() };
    let runner = Runner::new(pool.clone(), skein_progs::registry()).with_config(config);
    let dispatcher = {
        let (exits, steps, all_done, step_ms, exit_vals) =
            (exits.clone(), steps.clone(), all_done.clone(), step_ms.clone(), exit_vals.clone());
        let top_prog = if args.scenario == Scenario::Fanout { Fanout::NAME } else { Stepper::NAME };
        Dispatcher::new(runner, DispatchConfig { concurrency: args.concurrency, lanes: args.lanes, batch: args.batch.max(1), ..Default::default() }).on_step(move |r| {
            steps.fetch_add(1, Ordering::Relaxed);
            step_ms.lock().unwrap().push(r.micros as f64 / 1000.0);
            if let Outcome::Failed { error, .. } = &r.outcome {
                eprintln!("bench: a step failed: {error}");
            }
            if let Outcome::Exit { exitval } = &r.outcome {
                if r.prog == top_prog {
                    if keep_exit_vals {
                        exit_vals.lock().unwrap().push(exitval.clone());
                    }
                    if exits.fetch_add(1, Ordering::Relaxed) + 1 == expect_exits {
                        all_done.notify_one();
                    }
                }
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let began = Instant::now();
    let dispatch = tokio::spawn(dispatcher.run(async {
        let _ = stop_rx.await;
    }));

    if args.scenario == Scenario::Latency {
        args.say(format!("enqueueing {n} strands one at a time at {}/s", args.rate));
        let mut conn = pool.acquire().await?;
        let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
        let mut next = Instant::now();
        for _ in 0..n {
            let frame = StepFrame { enqueued_us: Some(chrono::Utc::now().timestamp_micros()), ..Default::default() };
            enqueue::start(&mut conn, frame, StepLabel::Run).await?;
            next += gap;
            tokio::time::sleep_until(next.into()).await;
        }
    } else {
        args.say("running");
    }
    let timeout = Duration::from_secs(600);
    if tokio::time::timeout(timeout, all_done.notified()).await.is_err() {
        bail!("the workload did not finish within {timeout:?}: {} of {expect_exits} exits", exits.load(Ordering::Relaxed));
    }
    let seconds = began.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    dispatch.await.context("dispatcher")?;

    let steps = steps.load(Ordering::Relaxed);
    let mut times = std::mem::take(&mut *step_ms.lock().unwrap());
    let exit_vals = std::mem::take(&mut *exit_vals.lock().unwrap());
    let mut line = json!({
        "scenario": scenario_name(args.scenario),
        "strands": n,
        "steps": steps,
        "seconds": round3(seconds),
        "steps_per_s": round1(steps as f64 / seconds),
        "baseline_tx_per_s": round1(baseline_tx_per_s),
        "ratio": round3(steps as f64 / seconds / baseline_tx_per_s),
        "connections": args.connections,
        "steps_in_flight": args.concurrency,
        "lanes": args.lanes,
        "batch": args.batch,
        "counted": args.count,
        "shared_writes": !args.private_writes,
    });
    if args.scenario == Scenario::Latency {
        let outputs = exit_vals.iter().map(|v| serde_json::from_value::<StepOutput>(v.clone()));
        let outputs = outputs.collect::<Result<Vec<_>, _>>().context("a Bench::Step exited with something other than its output")?;
        times = outputs.iter().filter_map(|o| o.latency_us).map(|us| us as f64 / 1000.0).collect();
        line["latency_of"] = json!("enqueue to first step");
    }
    times.sort_by(f64::total_cmp);
    line["p50_ms"] = json!(round3(percentile(&times, 0.50)));
    line["p99_ms"] = json!(round3(percentile(&times, 0.99)));
    match args.scenario {
        Scenario::Fanout => {
            let out: FanoutOutput =
                serde_json::from_value(exit_vals[0].clone()).context("the Bench::Fanout exited with something other than its output")?;
            let budded_us = out.budded_us.context("the Bench::Fanout exited without recording when it budded")?;
            line["done_after_bud_ms"] = json!(round1((out.done_us - budded_us) as f64 / 1000.0));
            line["reaped"] = json!(out.reaped);
        }
        Scenario::Sleepers => {
            line["sleepers"] = json!(args.sleepers);
            line["claim_uses_partial_index"] = json!(claim_uses_partial_index(pool).await?);
        }
        Scenario::Hops => line["hops"] = json!(args.hops),
        _ => {}
    }
    if args.scenario != Scenario::Fanout && steps != n * args.steps_per_strand() {
        line["warning"] = json!("step count differs from the workload's: some steps failed or were retried");
    }
    Ok(line)
}

/// Check an --enqueue-only workload after external workers ran it.
async fn verify(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.strands() as i64;
    let per = args.steps_per_strand() as i32;
    let mut problems: Vec<String> = Vec::new();
    let mut conn = pool.acquire().await?;
    let live = db::live(&mut conn, &WORKLOAD).await?;
    if live > 0 {
        problems.push(format!("{live} strands have not finished"));
    }
    let (counted, wrong) = db::step_counts(&mut conn, per, Fanout::NAME).await?;
    if counted != n {
        problems.push(format!("{counted} strands counted steps, expected {n}"));
    }
    if wrong > 0 {
        let sample = db::wrong_counts(&mut conn, per).await?;
        problems.push(format!("{wrong} strands committed a step count other than {per}: e.g. {sample:?}"));
    }
    let archived = db::archived(&mut conn, &WORKLOAD).await?;
    let want_archived = if args.scenario == Scenario::Fanout { 1 } else { n };
    if archived != want_archived {
        problems.push(format!("{archived} archive records, expected {want_archived}"));
    }
    let total = db::steps_counted(&mut conn).await?;
    Ok(json!({
        "scenario": scenario_name(args.scenario),
        "ok": problems.is_empty(),
        "strands": n,
        "steps_committed": total,
        "problems": problems,
    }))
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

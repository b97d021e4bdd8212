//! `skein bench --scenario takeover`: how long a SIGKILLed worker's strands
//! wait before another worker runs their next step.
//!
//! Each round starts a `respirate` (the binary beside this one) that claims
//! strands whose steps each work for a while, starts a second one, SIGKILLs
//! the first in the middle of its steps, and watches, from the database, when
//! each strand the victim held is claimed by the survivor (its next step
//! begins at its claim). Leases are two minutes, so what is measured is
//! liveness, not a lease running out.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use skein_engine::{enqueue, Prog};
use skein_models::bench as db;
use skein_progs::bench::{StepFrame, StepLabel, Stepper};
use sqlx::PgPool;
use uuid::Uuid;

use super::percentile;

/// A respirate process of ours, killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(url: &str) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe()?.with_file_name("respirate");
        let child = Command::new(&exe)
            .args(["--database-url", url, "--concurrency", "256", "--lease-secs", "120", "--pool-size", "8"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Worker(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The strands a worker process holds claims on right now.
async fn held_by(pool: &PgPool, pid: u32) -> anyhow::Result<Vec<Uuid>> {
    Ok(db::held_by_process(&mut *pool.acquire().await?, pid).await?)
}

/// Rounds of kill-and-watch; `strands` per round, each step working `work_ms`.
pub async fn measure(pool: &PgPool, url: &str, rounds: u32, strands: u64, say: impl Fn(String)) -> anyhow::Result<Value> {
    let mut delays_ms: Vec<f64> = Vec::new();
    for round in 1..=rounds {
        db::forget_runs(&mut *pool.acquire().await?, &[Stepper::NAME]).await?;
        let frames = (0..strands).map(|_| StepFrame { hops: 3, work_ms: 400, ..Default::default() });
        enqueue::start_many(&mut *pool.acquire().await?, frames, StepLabel::Run).await?;
        let victim = Worker::start(url)?;
        let until = Instant::now() + Duration::from_secs(30);
        while held_by(pool, victim.pid()).await?.len() < (strands as usize / 2).max(1) {
            if Instant::now() > until {
                bail!("the first respirate never claimed its strands; is the database reachable?");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let survivor = Worker::start(url)?;
        // Let the survivor register and start claiming what is left. Then
        // kill at a random moment of its beat: a fixed wait killed at the
        // same phase every round (just before its next beat, as it was), and
        // measured that phase, not how long a death goes unnoticed.
        let beat = skein_engine::LivenessConfig::default().interval;
        tokio::time::sleep(Duration::from_millis(500) + beat.mul_f64(rand::random::<f64>())).await;
        let held = held_by(pool, victim.pid()).await?;
        let killed = Instant::now();
        sigkill(victim.pid());
        let mut moved: HashMap<Uuid, f64> = HashMap::new();
        while moved.len() < held.len() && killed.elapsed() < Duration::from_secs(150) {
            let rows = db::moved_to_process(&mut *pool.acquire().await?, &held, survivor.pid()).await?;
            let now_ms = killed.elapsed().as_secs_f64() * 1000.0;
            for (id, on) in rows {
                if on {
                    moved.entry(id).or_insert(now_ms);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut round_ms: Vec<f64> = moved.values().copied().collect();
        round_ms.sort_by(f64::total_cmp);
        say(format!(
            "round {round}: {} strands held by the killed worker; moved on after p50 {:.0} ms, max {:.0} ms",
            held.len(),
            percentile(&round_ms, 0.5),
            round_ms.last().copied().unwrap_or(0.0)
        ));
        if moved.len() < held.len() {
            bail!("{} of {} strands never moved on", held.len() - moved.len(), held.len());
        }
        delays_ms.extend(round_ms);
        drop(victim);
        drop(survivor);
    }
    db::forget_runs(&mut *pool.acquire().await?, &[Stepper::NAME]).await?;
    delays_ms.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "scenario": "takeover",
        "rounds": rounds,
        "strands_taken_over": delays_ms.len(),
        "p50_ms": round(percentile(&delays_ms, 0.5)),
        "p99_ms": round(percentile(&delays_ms, 0.99)),
        "max_ms": round(delays_ms.last().copied().unwrap_or(0.0)),
    }))
}

/// SIGKILL, as the OOM killer would.
fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

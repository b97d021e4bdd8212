//! `skein bench --scenario remote`: what slow remote calls cost the strands
//! beside them. Fast strands (one step that writes, counted) run three times
//! in one worker pool: alone; beside `--slow` strands whose label waits up to
//! `--remote-ms` on a peer that never answers, shaped read -> remote -> write
//! (R19); and beside the same slow strands holding their transaction across
//! the wait (the shape R19 forbids; a debug build refuses it, so measure a
//! release build). Each run reports the fast strands' throughput and step
//! latency, and the engine pool's connections in use, sampled every 5 ms:
//! while the slow strands wait alone (what they hold), and during the run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_engine::{enqueue, DispatchConfig, Dispatcher, Outcome, Prog, Runner};
use skein_models::bench as db;
use skein_progs::bench::{Remote, RemoteFrame, RemoteLabel, StepFrame, StepLabel, Stepper};
use sqlx::PgPool;
use tokio::sync::Notify;

use super::{percentile, round1, round3, BenchArgs};

/// A peer that accepts and never answers (a host hung before its banner).
struct SlowPeer {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl SlowPeer {
    async fn start() -> anyhow::Result<SlowPeer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.retain(|s: &tokio::net::TcpStream| s.peer_addr().is_ok());
                held.push(stream);
            }
        });
        Ok(SlowPeer { port, accepted })
    }
}

/// How the slow strands of one run are shaped, if there are any.
#[derive(Clone, Copy, PartialEq)]
enum Slow {
    None,
    ReadRemoteWrite,
    HoldingTx,
}

/// Steps the slow strands have committed (each counts itself).
async fn slow_steps(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(db::steps_counted_by(&mut *pool.acquire().await?, Remote::NAME).await?)
}

async fn clean(pool: &PgPool) -> anyhow::Result<()> {
    Ok(db::forget_runs(&mut *pool.acquire().await?, &[Stepper::NAME, Remote::NAME]).await?)
}

/// The engine pool's connections in use, sampled until `stop`: (max, mean).
fn sample_connections(pool: PgPool, stop: Arc<Notify>) -> tokio::task::JoinHandle<(u32, f64)> {
    tokio::spawn(async move {
        let (mut max, mut sum, mut n) = (0u32, 0u64, 0u64);
        loop {
            let in_use = pool.size().saturating_sub(pool.num_idle() as u32);
            max = max.max(in_use);
            sum += in_use as u64;
            n += 1;
            tokio::select! {
                _ = stop.notified() => return (max, sum as f64 / n as f64),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    })
}

/// One run: start the slow strands, wait until they are all waiting on the
/// peer, then run the fast ones to their end.
async fn run(pool: &PgPool, args: &BenchArgs, peer: &SlowPeer, slow: Slow) -> anyhow::Result<Value> {
    clean(pool).await?;
    let n = args.strands();
    let slow_n = if slow == Slow::None { 0 } else { args.slow };
    if slow_n > 0 {
        let hold = slow == Slow::HoldingTx;
        let frames = (0..slow_n).map(|_| RemoteFrame { port: peer.port, wait_ms: args.remote_ms, hold, asked: 0 });
        enqueue::start_many(&mut *pool.acquire().await?, frames, RemoteLabel::Ask).await?;
    }

    let exits = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let step_ms = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n as usize)));
    let dispatcher = {
        let (exits, failed, all_done, step_ms) = (exits.clone(), failed.clone(), all_done.clone(), step_ms.clone());
        let config = DispatchConfig { concurrency: args.concurrency, lanes: args.lanes, ..Default::default() };
        Dispatcher::new(Runner::new(pool.clone(), skein_progs::registry()), config).on_step(move |r| {
            if matches!(r.outcome, Outcome::Failed { .. }) {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            if r.prog == Remote::NAME {
                return;
            }
            step_ms.lock().unwrap_or_else(|p| p.into_inner()).push(r.micros as f64 / 1000.0);
            if matches!(r.outcome, Outcome::Exit { .. }) && exits.fetch_add(1, Ordering::Relaxed) + 1 == n {
                all_done.notify_one();
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dispatch = tokio::spawn(dispatcher.run(async {
        let _ = stop_rx.await;
    }));

    // The slow strands are all waiting on the peer before the fast ones come.
    let asked_before = peer.accepted.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(30);
    while peer.accepted.load(Ordering::Relaxed) < asked_before + slow_n as usize && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What they hold while they wait, before the fast strands come (in the
    // solo run there is nothing to measure).
    let slow_alone = match slow_n {
        0 => None,
        _ => {
            let stop_alone = Arc::new(Notify::new());
            let alone = sample_connections(pool.clone(), stop_alone.clone());
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop_alone.notify_one();
            Some(alone.await?)
        }
    };

    let stop_sampling = Arc::new(Notify::new());
    let sampler = sample_connections(pool.clone(), stop_sampling.clone());
    let slow_before = slow_steps(pool).await?;
    let began = Instant::now();
    let frames = (0..n).map(|_| StepFrame { count: true, ..Default::default() });
    enqueue::start_many(&mut *pool.acquire().await?, frames, StepLabel::Run).await?;
    let limit = Duration::from_secs(300);
    let finished = tokio::time::timeout(limit, all_done.notified()).await.is_ok();
    let seconds = began.elapsed().as_secs_f64();
    let slow_steps = slow_steps(pool).await? - slow_before;
    stop_sampling.notify_one();
    let (conns_max, conns_mean) = sampler.await?;
    // Told to stop, the slow strands exit after their current wait, so the
    // dispatcher stops without waiting out their continue budget.
    let slow_ids = db::ids_of(&mut *pool.acquire().await?, Remote::NAME).await?;
    for id in slow_ids {
        enqueue::incr(&mut *pool.acquire().await?, skein_engine::Ubid::from_uuid(id), skein_progs::bench::RemoteSem::Stop).await?;
    }
    let _ = stop_tx.send(());
    dispatch.await?;
    clean(pool).await?;

    let done = exits.load(Ordering::Relaxed);
    let mut times = std::mem::take(&mut *step_ms.lock().unwrap_or_else(|p| p.into_inner()));
    times.sort_by(f64::total_cmp);
    let mut line = json!({
        "seconds": round3(seconds),
        "fast_steps_per_s": round1(done as f64 / seconds),
        "fast_p50_ms": round3(percentile(&times, 0.50)),
        "fast_p99_ms": round3(percentile(&times, 0.99)),
        "connections_in_use_max": conns_max,
        "connections_in_use_mean": round1(conns_mean),
        "slow_steps_committed": slow_steps,
        "failed_steps": failed.load(Ordering::Relaxed),
    });
    if let Some((max, mean)) = slow_alone {
        line["connections_held_by_slow_alone_max"] = json!(max);
        line["connections_held_by_slow_alone_mean"] = json!(round1(mean));
    }
    if !finished {
        line["warning"] = json!(format!("only {done} of {n} fast strands finished within {limit:?}"));
    }
    Ok(line)
}

/// The three runs, and how the fast strands fared beside the slow ones.
pub async fn measure(pool: &PgPool, args: &BenchArgs, baseline_tx_per_s: f64) -> anyhow::Result<Value> {
    let peer = SlowPeer::start().await?;
    let (n, slow, ms) = (args.strands(), args.slow, args.remote_ms);
    args.say(format!("{n} fast strands alone"));
    let solo = run(pool, args, &peer, Slow::None).await?;
    args.say(format!("{n} fast strands beside {slow} strands waiting {ms} ms on a remote peer (read -> remote -> write)"));
    let beside = run(pool, args, &peer, Slow::ReadRemoteWrite).await?;
    args.say(format!("{n} fast strands beside {slow} strands holding their transaction while they wait (the forbidden shape)"));
    let holding = run(pool, args, &peer, Slow::HoldingTx).await?;
    let ratio = |a: &Value, b: &Value, k: &str| round3(a[k].as_f64().unwrap_or(0.0) / b[k].as_f64().unwrap_or(1.0).max(1e-9));
    Ok(json!({
        "scenario": "remote",
        "fast_strands": n,
        "slow_strands": slow,
        "remote_ms": ms,
        "connections": args.connections,
        "steps_in_flight": args.concurrency,
        "baseline_tx_per_s": round1(baseline_tx_per_s),
        "debug_build": cfg!(debug_assertions),
        "solo": solo,
        "beside_slow": beside,
        "beside_slow_holding_tx": holding,
        "beside_over_solo_steps_per_s": ratio(&beside, &solo, "fast_steps_per_s"),
        "beside_over_solo_p99": ratio(&beside, &solo, "fast_p99_ms"),
        "holding_over_solo_steps_per_s": ratio(&holding, &solo, "fast_steps_per_s"),
    }))
}

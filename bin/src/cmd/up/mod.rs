//! `skein up`: the control plane on its defaults. It finds or makes a
//! database, runs a worker pool in this process, and (unless told not to)
//! runs a demo census whose every step is printed as it happens.

pub mod vm_demo;

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use skein_engine::{enqueue, StepReport, Ubid};
use skein_progs::demo::census;
use sqlx::PgPool;

use crate::embedded;
use crate::process::{self, WorkerArgs};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Postgres URL; without one, skein runs its own private cluster (see `skein db`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Do not run the demo.
    #[arg(long)]
    pub no_demo: bool,
    /// Run the census demo only, not the VM demo (two local hosts, a VM of one subnet on each).
    #[arg(long)]
    pub no_vm_demo: bool,
    /// Stop once the demo has finished (for scripts and CI); exit non-zero if it failed.
    #[arg(long)]
    pub exit_after_demo: bool,
    /// Where the HTTP API listens (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_addr: String,
    /// Do not serve the HTTP API.
    #[arg(long)]
    pub no_api: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let url = embedded::database_url(args.database_url.clone()).await?;
    let pool = process::connect(&url, args.worker.pool_size()).await?;
    println!("control plane: {} concurrent steps; Ctrl-C stops it", args.worker.concurrency);
    if !args.no_api {
        let listener = crate::api::bind(&args.api_addr).await.context("pass another --api-addr, or --no-api")?;
        println!("api: listening on http://{} (tokens: `skein token create`)", listener.local_addr()?);
        let (pool, secret) = (pool.clone(), process::secret_key()?);
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(listener, pool, secret, std::future::pending()).await {
                eprintln!("api: stopped: {e:#}");
            }
        });
    }
    println!();

    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<Value>>();
    // A signal while the demo runs first asks it to stop and remove what
    // it made (which needs the workers), then stops; `finished` says when.
    let (interrupt_tx, interrupt_rx) = tokio::sync::watch::channel(false);
    let (finished_tx, mut finished_rx) = tokio::sync::watch::channel(args.no_demo);
    if !args.no_demo {
        let pool = pool.clone();
        let with_vm = !args.no_vm_demo;
        tokio::spawn(async move {
            let census = demo(&pool).await;
            let mut interrupt_rx = interrupt_rx;
            let interrupted = async move {
                let _ = interrupt_rx.wait_for(|asked| *asked).await;
            };
            let result = match census {
                Ok(v) if with_vm => match vm_demo::unavailable() {
                    Some(why) => {
                        println!("\nvm demo: skipped: {why}\n");
                        Ok(v)
                    }
                    None => vm_demo::run(&pool, interrupted).await.map(|()| v),
                },
                other => other,
            };
            let _ = finished_tx.send(true);
            let _ = done_tx.send(result);
        });
    }
    let (exit_after_demo, no_demo) = (args.exit_after_demo && !args.no_demo, args.no_demo);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let demo_watch = tokio::spawn(async move {
        let result = done_rx.await.unwrap_or_else(|_| Ok(Value::Null));
        match &result {
            Ok(v) if !v.is_null() => println!("\ndemo: done (the census exited with {v})\n"),
            Ok(_) => {}
            Err(e) => eprintln!("\ndemo: failed: {e:#}\n"),
        }
        if exit_after_demo {
            let _ = stop_tx.send(());
        } else if !no_demo {
            println!("control plane: still serving (the API, the workers); Ctrl-C stops it\n");
        }
        result
    });

    // Only a sent stop ends the run: the demo's end drops the sender
    // unsent (unless --exit-after-demo), and then this waits for a signal.
    let shutdown = async move {
        let stopped_by_demo = async {
            if stop_rx.await.is_err() {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            _ = process::shutdown_signal() => {
                if !*finished_rx.borrow() {
                    println!("\nstopping: the demo first removes what it made (a second Ctrl-C stops at once)\n");
                    let _ = interrupt_tx.send(true);
                    tokio::select! {
                        _ = finished_rx.wait_for(|done| *done) => {}
                        _ = process::shutdown_signal() => {}
                    }
                }
            }
            _ = stopped_by_demo => {}
        }
    };
    process::run_dispatcher(pool, skein_progs::registry(), &args.worker, |d| d.on_step(print_step), shutdown).await?;
    if exit_after_demo {
        demo_watch.await?.context("the demo did not finish")?;
    }
    Ok(())
}

fn print_step(r: &StepReport) {
    crate::metrics::record_step(r);
    let at = chrono::Local::now().format("%H:%M:%S%.3f");
    println!("{at}  {}  {:<14} {:<7} {}", r.strand, r.prog, r.label, r.flow());
}

/// Start a census, let it count and double, tell it to finish, and return
/// what it exited with.
async fn demo(pool: &PgPool) -> anyhow::Result<Value> {
    let frame = census::Frame { districts: vec![3, 5, 8], ..Default::default() };
    let id = enqueue::start(&mut *pool.acquire().await?, frame, census::Label::Start).await?;
    println!("demo: started census {id}: it buds 3 counters, reaps them, calls the doubler, then waits\n");
    wait_for(pool, id, |label| label == Some("Wait")).await?;
    println!("\ndemo: the census is waiting; incrementing its `finish` semaphore\n");
    enqueue::incr(&mut *pool.acquire().await?, id, census::Sem::Finish).await?;
    wait_for(pool, id, |label| label.is_none()).await?;
    let archived = skein_models::archive::get(&mut *pool.acquire().await?, id.uuid()).await?;
    Ok(archived.context("the census left no archive record")?.exitval)
}

async fn wait_for(pool: &PgPool, id: Ubid, done: impl Fn(Option<&str>) -> bool) -> anyhow::Result<()> {
    for _ in 0..600 {
        let row = skein_models::strand::get(&mut *pool.acquire().await?, id.uuid()).await?;
        if done(row.as_ref().map(|r| r.label.as_str())) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("strand {id} did not get there within 60 s")
}

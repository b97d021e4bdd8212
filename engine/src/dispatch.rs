//! The dispatcher: the loop inside every `respirate` process.
//!
//! It claims due strands in batches (one statement leases many), runs each on
//! its own task, at most `concurrency` at once, and sleeps only when nothing
//! is due: until a NOTIFY says work arrived, a running strand finishes, the
//! next known schedule comes, or the fallback poll. Any number of processes
//! can run it against one database: `for update skip locked` and the lease
//! fence keep them from ever running one step twice. No leader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use skein_models::strand;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::runner::{Outcome, Runner, StepReport};

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Strands stepped at once by this process.
    pub concurrency: usize,
    /// The most strands one claim statement leases.
    pub batch: i64,
    /// Fallback poll when no notification arrives (NOTIFY is the fast path).
    pub poll: Duration,
    /// On shutdown, how long running steps get to finish before they are abandoned.
    pub shutdown_grace: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig { concurrency: 32, batch: 64, poll: Duration::from_secs(2), shutdown_grace: Duration::from_secs(20) }
    }
}

/// What a dispatcher did, when it stopped.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub failed: u64,
    pub abandoned_on_shutdown: usize,
}

/// Called with every step's report (for progress displays and metrics).
pub type OnStep = Arc<dyn Fn(&StepReport) + Send + Sync>;

pub struct Dispatcher {
    runner: Runner,
    config: DispatchConfig,
    on_step: Option<OnStep>,
}

impl Dispatcher {
    pub fn new(runner: Runner, config: DispatchConfig) -> Self {
        Dispatcher { runner, config, on_step: None }
    }

    pub fn on_step(mut self, f: impl Fn(&StepReport) + Send + Sync + 'static) -> Self {
        self.on_step = Some(Arc::new(f));
        self
    }

    /// Run until `shutdown` completes, then stop claiming, give running steps
    /// `shutdown_grace` to finish, abandon the rest and release their leases.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Summary {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.runner.pool().clone(), wake.clone()));
        let held: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>> = Default::default();
        let mut tasks: JoinSet<Vec<StepReport>> = JoinSet::new();
        let mut summary = Summary::default();
        let mut db_backoff = Duration::from_millis(100);
        tokio::pin!(shutdown);

        loop {
            while let Some(done) = tasks.try_join_next() {
                self.tally(&mut summary, done);
            }
            let free = self.config.concurrency.saturating_sub(tasks.len());
            let mut more_due = false;
            if free > 0 {
                let asked = (free as i64).min(self.config.batch);
                let exclude: Vec<Uuid> = held.lock().unwrap().keys().copied().collect();
                match self.runner.claim(asked, &exclude).await {
                    Ok(claims) => {
                        db_backoff = Duration::from_millis(100);
                        more_due = claims.len() as i64 == asked;
                        for claim in claims {
                            let (id, lease) = (claim.leased.strand.id, claim.leased.strand.lease);
                            if let Some(from) = &claim.leased.taken_over_from {
                                tracing::warn!(strand = %skein_models::Ubid::from_uuid(id), from = %from, "took over a strand whose lease expired");
                                metrics::counter!("skein_lease_takeovers_total").increment(1);
                            }
                            held.lock().unwrap().insert(id, lease);
                            let (runner, held) = (self.runner.clone(), held.clone());
                            tasks.spawn(async move {
                                let reports = runner.run(claim, usize::MAX).await;
                                held.lock().unwrap().remove(&id);
                                reports
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?db_backoff, "could not claim strands; is the database up?");
                        tokio::select! {
                            _ = tokio::time::sleep(db_backoff) => {}
                            _ = &mut shutdown => break,
                        }
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if more_due && tasks.len() < self.config.concurrency {
                continue;
            }
            let idle_for = if tasks.len() >= self.config.concurrency { self.config.poll } else { self.next_due_in().await };
            tokio::select! {
                _ = wake.notified() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => self.tally(&mut summary, done),
                _ = tokio::time::sleep(idle_for) => {}
                _ = &mut shutdown => break,
            }
        }

        tracing::info!(running = tasks.len(), "stopping: no new claims; letting running steps finish");
        let deadline = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next() => self.tally(&mut summary, done),
                _ = &mut deadline => break,
            }
        }
        summary.abandoned_on_shutdown = tasks.len();
        tasks.shutdown().await;
        listener.abort();
        // Abandoned steps rolled back when their tasks were dropped; free their strands now
        // instead of making them wait out the lease.
        let leftover: Vec<(Uuid, DateTime<Utc>)> = held.lock().unwrap().drain().collect();
        if let Ok(mut conn) = self.runner.pool().acquire().await {
            for (id, lease) in leftover {
                let _ = strand::release(&mut conn, id, lease).await;
            }
        }
        summary
    }

    fn tally(&self, summary: &mut Summary, done: Result<Vec<StepReport>, tokio::task::JoinError>) {
        let reports = match done {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "a strand task panicked; its lease will expire and it will be retried");
                return;
            }
        };
        for r in &reports {
            summary.steps += 1;
            if matches!(r.outcome, Outcome::Failed { .. }) {
                summary.failed += 1;
            }
            metrics::counter!("skein_steps_total", "prog" => r.prog.clone()).increment(1);
            if let Outcome::Failed { .. } = r.outcome {
                metrics::counter!("skein_steps_failed_total", "prog" => r.prog.clone()).increment(1);
            }
            if let Some(f) = &self.on_step {
                f(r);
            }
        }
    }

    /// How long until the next free strand is due, capped by the poll interval.
    async fn next_due_in(&self) -> Duration {
        let mut conn = match self.runner.pool().acquire().await {
            Ok(c) => c,
            Err(_) => return self.config.poll,
        };
        match strand::next_due_in(&mut conn).await {
            Ok(Some(secs)) => Duration::from_secs_f64(secs.clamp(0.0, self.config.poll.as_secs_f64())),
            _ => self.config.poll,
        }
    }
}

/// Hold a LISTEN connection and turn notifications into wake-ups, reconnecting
/// (and waking once, in case work arrived meanwhile) when it drops.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listened = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(strand::DUE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listened {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        Ok(None) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            wake.notify_one();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "could not LISTEN for work");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

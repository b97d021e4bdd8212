//! Liveness: a worker process knows it is alive, and notices at once when a
//! peer is not.
//!
//! A dispatcher registers as a worker on a connection of its own and holds a
//! session-level advisory lock there (`models::worker`). Every `interval` it
//! beats and reaps: workers whose lock is gone (the process died, so its
//! session ended) or who stopped beating (hung) are deleted, their claims
//! broken, their strands due again at once. A hung worker's sessions are ended
//! too, so it holds no row lock and, when it wakes, commits nothing: every
//! step write is fenced on its claim, which is gone.
//!
//! The other half is this process's own liveness: when its session ends or
//! peers declared it dead, [`Liveness::holder`] turns to `None` and the
//! dispatcher abandons every step it runs under the old identity, then
//! registers again as a new worker. A label that kills its worker every time
//! keeps the attempt count its claim wrote, so it backs off across the fleet
//! and pages once it has done so `page_after_failures` times.

use std::time::Duration;

use serde_json::json;
use skein_models::{page, worker, Ubid};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

/// How often a worker beats and looks for dead peers, and when silence means hung.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    pub interval: Duration,
    /// A worker that has not beaten for this long is declared dead (hung).
    pub hung_after: Duration,
    /// Housekeeping drops the archive's monthly partitions that ended more
    /// than this many months ago; None keeps them all.
    pub archive_keep_months: Option<u32>,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig { interval: Duration::from_millis(250), hung_after: Duration::from_secs(5), archive_keep_months: Some(12) }
    }
}

/// The `application_name` of every connection of this process: what a peer
/// ends when it finds this process hung.
pub fn application_name() -> String {
    format!("skein {}", crate::runner::this_process())
}

/// This process's current worker identity: `Some(holder)` while registered
/// and beating, `None` while it has none (it must run no step then).
#[derive(Clone)]
pub struct Liveness {
    holder: watch::Receiver<Option<String>>,
}

impl Liveness {
    /// The holder name claims must carry now, if this process is alive.
    pub fn holder(&self) -> Option<String> {
        self.holder.borrow().clone()
    }

    /// Wait until the identity changes (lost, or registered anew).
    pub async fn changed(&mut self) {
        if self.holder.changed().await.is_err() {
            // The liveness task is gone: there will never be an identity again.
            std::future::pending::<()>().await
        }
    }
}

/// What the reaper needs to treat a broken claim like a failed step.
#[derive(Clone, Debug)]
pub(crate) struct ReapTerms {
    pub backoff_cap: Duration,
    pub page_after_failures: i32,
}

/// Start keeping this process alive. Stops (deregistering cleanly) when `stop` fires.
pub(crate) fn start(pool: PgPool, config: LivenessConfig, terms: ReapTerms, stop: watch::Receiver<bool>) -> (Liveness, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(live(pool, config, terms, stop, tx));
    (Liveness { holder: rx }, task)
}

/// Register, keep alive, and register again after losing liveness, until `stop`.
async fn live(
    pool: PgPool,
    config: LivenessConfig,
    terms: ReapTerms,
    mut stop: watch::Receiver<bool>,
    tx: watch::Sender<Option<String>>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        match register(&pool).await {
            Ok((mut conn, me)) => {
                backoff = Duration::from_millis(100);
                tracing::info!(worker = %me.holder, "registered as a live worker");
                let _ = tx.send(Some(me.holder.clone()));
                let lost = keep_alive(&pool, &mut conn, &me, &config, &terms, &mut stop).await;
                let _ = tx.send(None);
                match lost {
                    None => {
                        let _ = worker::deregister(&mut conn, me.id).await;
                        let _ = conn.close().await;
                        return;
                    }
                    Some(why) => {
                        tracing::error!(worker = %me.holder, reason = %why, "lost liveness: abandoning every running step");
                        metrics::counter!("skein_liveness_lost_total").increment(1);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "could not register as a worker; is the database up?");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A connection of its own (never the pool's: it must outlive any step), with
/// keepalives short enough that a peer cut off from the network is noticed.
async fn register(pool: &PgPool) -> Result<(PgConnection, worker::Registered), sqlx::Error> {
    let options = pool.connect_options().as_ref().clone().application_name(&application_name());
    let mut conn = PgConnection::connect_with(&options).await?;
    worker::keepalives(&mut conn).await?;
    let me = worker::register(&mut conn, &crate::runner::this_process(), &application_name()).await?;
    Ok((conn, me))
}

/// Beat and reap until `stop` (returns None) or until this worker is no
/// longer alive (returns why).
async fn keep_alive(
    pool: &PgPool,
    conn: &mut PgConnection,
    me: &worker::Registered,
    config: &LivenessConfig,
    terms: &ReapTerms,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    // A beat that cannot finish within this bound means the database is out
    // of reach; peers will not wait longer than hung_after either.
    let bound = config.hung_after / 2;
    // The first round of housekeeping runs at once: a worker started on an
    // old database must not wait a minute for this month's archive partition.
    let mut housekept: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => return None,
        }
        match tokio::time::timeout(bound, worker::beat(conn, me.id)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Some("peers declared this worker dead (it did not beat in time)".into()),
            Ok(Err(e)) => return Some(format!("its liveness session failed: {e}")),
            Err(_) => return Some(format!("a heartbeat took longer than {bound:?}")),
        }
        match tokio::time::timeout(bound, reap(conn, me, config, terms)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(format!("its liveness session failed: {e}")),
            Err(_) => return Some(format!("looking for dead workers took longer than {bound:?}")),
        }
        if housekept.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
            // On a pool connection, off this loop: a slow round of
            // housekeeping must not delay a beat.
            housekept = Some(tokio::time::Instant::now());
            tokio::spawn(housekeeping(pool.clone(), config.archive_keep_months));
        }
    }
}

/// What any worker may do now and then; each part is idempotent, so many
/// workers doing it at once is harmless:
/// - make the archive's partitions ahead, and drop those past the retention
///   (`archive::maintain`);
/// - sweep semaphores left by an increment that raced an exit (rare: see
///   migration 20261205000020).
async fn housekeeping(pool: PgPool, archive_keep_months: Option<u32>) {
    let archive = async {
        let mut conn = crate::pool::acquire(&pool).await?;
        match archive_keep_months {
            Some(months) => skein_models::archive::maintain(&mut conn, months as i32).await,
            None => skein_models::archive::make_partitions_ahead(&mut conn).await.map(|()| vec![]),
        }
    };
    match archive.await {
        Ok(dropped) if dropped.is_empty() => {}
        Ok(dropped) => tracing::info!(partitions = ?dropped, months = archive_keep_months, "dropped the archive's partitions past its retention"),
        Err(e) => tracing::warn!(error = %e, "could not maintain the archive's partitions; trying again later"),
    }
    let swept = async { skein_models::semaphore::sweep_orphans(&mut *crate::pool::acquire(&pool).await?).await }.await;
    match swept {
        Ok(0) => {}
        Ok(n) => tracing::info!(semaphores = n, "swept semaphores whose strand had exited"),
        Err(e) => tracing::warn!(error = %e, "could not sweep orphaned semaphores; trying again later"),
    }
}

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Break the claims of dead peers; end a hung peer's sessions; page a strand
/// whose step keeps taking its worker down.
async fn reap(conn: &mut PgConnection, me: &worker::Registered, config: &LivenessConfig, terms: &ReapTerms) -> Result<(), sqlx::Error> {
    let (dead, broken) =
        worker::reap_dead(conn, me.id, config.hung_after.as_secs_f64(), terms.backoff_cap.as_secs_f64()).await?;
    for d in &dead {
        let how = if d.session_ended { "died" } else { "hung" };
        let claims = broken.iter().filter(|b| b.holder == d.holder).count();
        tracing::warn!(worker = %d.holder, claims, "a worker {how}; its strands run again now");
        metrics::counter!("skein_dead_workers_total", "how" => how).increment(1);
        if !d.session_ended {
            // Best effort: the fence already keeps it from committing.
            if let Err(e) = worker::end_sessions(conn, &d.process).await {
                tracing::warn!(worker = %d.holder, error = %e, "could not end the hung worker's sessions");
            }
        }
    }
    metrics::counter!("skein_takeovers_total").increment(broken.len() as u64);
    if !broken.is_empty() {
        // Idle workers sleep until told: tell them these strands are due.
        skein_models::strand::notify_due(conn).await?;
    }
    for b in broken.iter().filter(|b| b.try_ >= terms.page_after_failures) {
        let ubid = Ubid::from_uuid(b.id);
        let summary = format!(
            "strand {ubid} ({}) lost its worker {} times in a row at {}: does this label crash the process?",
            b.prog, b.try_, b.label
        );
        let details = json!({"strand": ubid, "prog": b.prog, "label": b.label, "tries": b.try_, "last_worker": b.holder});
        page::raise(conn, &crate::runner::failing_tag(ubid), &summary, "error", &details).await?;
    }
    Ok(())
}

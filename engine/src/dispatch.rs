//! The dispatcher: the loop inside every `respirate` process.
//!
//! It runs a few claim loops (lanes). Each claims due strands in batches (one statement leases many), runs each on
//! its own task, at most `concurrency` at once, and sleeps only when nothing
//! is due: until a NOTIFY says work arrived, a running strand finishes, the
//! next known schedule comes, or the fallback poll. Any number of processes
//! can run it against one database: `for update skip locked` and the lease
//! fence keep them from ever running one step twice. No leader.
//!
//! Claims are taken under this process's worker identity (`liveness.rs`):
//! when a peer dies its claims are broken at once, and when this process
//! loses its identity every lane abandons the steps it runs under it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skein_models::strand;
use sqlx::postgres::PgListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::liveness::{self, Liveness, LivenessConfig, ReapTerms};
use crate::runner::{Outcome, Runner, StepReport};

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Strands stepped at once by this process. A strand whose last write
    /// is group-committed gives its slot back while the write waits (as
    /// many again may wait so).
    pub concurrency: usize,
    /// The most strands one claim statement leases.
    pub batch: i64,
    /// Fallback poll when no notification arrives (NOTIFY is the fast path).
    pub poll: Duration,
    /// On shutdown, how long running steps get to finish before they are abandoned.
    pub shutdown_grace: Duration,
    /// Independent claim loops sharing the slots, so claims overlap with steps.
    pub lanes: usize,
    /// Register as a live worker (so a death is noticed at once), or, with
    /// None, claim under the runner's plain holder and rely on lease expiry.
    pub liveness: Option<LivenessConfig>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            concurrency: 64,
            batch: 256,
            poll: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(20),
            lanes: 2,
            liveness: Some(LivenessConfig::default()),
        }
    }
}

/// The strands this process holds leases on.
type Held = Arc<Mutex<HashMap<Uuid, HeldLease>>>;

struct HeldLease {
    /// The lease value its writes are fenced on.
    lease: DateTime<Utc>,
    /// The worker identity it was claimed under.
    holder: String,
    /// When the lease runs out, by this process's clock (conservatively early).
    ends: Instant,
}

/// A held lease this close to its end is named in the claim's skip list. One
/// further from it cannot be claimed anyway (the claim takes only expired
/// leases), so in steady state the list is empty: naming every held strand
/// made each claim compare every row it walked against a thousand ids.
const SKIP_WHEN_ENDING_WITHIN: Duration = Duration::from_secs(10);

/// The held strands whose leases are ending: a claim must skip them, so that
/// a worker never claims a strand it already holds (R01).
fn ending_leases(held: &Held) -> Vec<Uuid> {
    let soon = Instant::now() + SKIP_WHEN_ENDING_WITHIN;
    held.lock().unwrap().iter().filter(|(_, h)| h.ends <= soon).map(|(id, _)| *id).collect()
}

/// How often a lane claims from the oldest due strand rather than from where
/// its last claim ended (see [`ClaimCursor`]): the longest a strand left
/// behind it waits while the backlog ahead never runs dry.
const CLAIM_FROM_OLDEST_EVERY: Duration = Duration::from_secs(1);

/// Where a lane's next claim starts. A claim changes no indexed column (it
/// stays a HOT update), so the strands a lane is running stay at the head of
/// the index it scans, and a claim from the oldest due strand walks every
/// one of them, row by row, before it reaches a free one (a thousand in
/// one-step: a claim took 4.1 ms with that walk, 3.0 ms without, in
/// `skein bench --scenario one-step --strands 200000`). So a lane claims from the schedule of the last strand it leased,
/// and from the oldest again when a claim from there comes up short (the
/// strands ahead ran out) and at least every [`CLAIM_FROM_OLDEST_EVERY`],
/// for those it left behind: a claim a peer rolled back, a lease that ran
/// out, rows another claimer had locked.
struct ClaimCursor {
    resume_from: Option<DateTime<Utc>>,
    from_oldest_at: Instant,
    from_oldest_every: Duration,
}

impl ClaimCursor {
    fn new(from_oldest_every: Duration) -> Self {
        ClaimCursor { resume_from: None, from_oldest_at: Instant::now(), from_oldest_every }
    }

    /// Where the next claim starts (None: at the oldest).
    fn start(&mut self) -> Option<DateTime<Utc>> {
        if self.from_oldest_at.elapsed() >= self.from_oldest_every {
            self.resume_from = None;
        }
        if self.resume_from.is_none() {
            self.from_oldest_at = Instant::now();
        }
        self.resume_from
    }

    /// A claim from `started` asked for `asked` strands and leased these
    /// schedules. Returns whether more may be due (claim again at once).
    fn claimed(&mut self, started: Option<DateTime<Utc>>, asked: usize, schedules: impl Iterator<Item = DateTime<Utc>>) -> bool {
        let (mut got, mut last) = (0, None);
        for schedule in schedules {
            got += 1;
            last = last.max(Some(schedule));
        }
        let full = got == asked;
        self.resume_from = if full { last } else { None };
        // Short from the middle: the oldest may still hold some.
        full || started.is_some()
    }
}

/// What a dispatcher did, when it stopped.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub failed: u64,
    pub abandoned_on_shutdown: usize,
    /// Steps dropped unfinished because this process lost its liveness.
    pub abandoned_on_lost_liveness: usize,
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
        let held: Held = Default::default();
        let (stop, stopping) = watch::channel(false);
        // Liveness stops after the lanes, so running steps keep their identity
        // through the shutdown grace.
        let (stop_liveness, liveness_stopping) = watch::channel(false);
        let liveness = self.config.liveness.clone().map(|config| {
            let terms = ReapTerms {
                backoff_cap: self.runner.config().backoff_cap,
                page_after_failures: self.runner.config().page_after_failures,
            };
            liveness::start(self.runner.pool().clone(), config, terms, liveness_stopping)
        });
        let lanes = self.config.lanes.max(1);
        let per_lane = self.config.concurrency.div_ceil(lanes).max(1);
        let this = Arc::new(self);
        let running: Vec<_> = (0..lanes)
            .map(|_| {
                let live = liveness.as_ref().map(|(l, _)| l.clone());
                tokio::spawn(this.clone().lane(per_lane, wake.clone(), held.clone(), live, stopping.clone()))
            })
            .collect();
        shutdown.await;
        let _ = stop.send(true);
        let mut summary = Summary::default();
        for lane in running {
            if let Ok(s) = lane.await {
                summary.steps += s.steps;
                summary.failed += s.failed;
                summary.abandoned_on_shutdown += s.abandoned_on_shutdown;
                summary.abandoned_on_lost_liveness += s.abandoned_on_lost_liveness;
            }
        }
        listener.abort();
        // Abandoned steps rolled back when their tasks were dropped; free their strands now
        // instead of making them wait out the lease.
        let leftover: Vec<(Uuid, DateTime<Utc>)> = held.lock().unwrap().drain().map(|(id, h)| (id, h.lease)).collect();
        if let Ok(mut conn) = crate::pool::acquire(this.runner.pool()).await {
            for (id, lease) in leftover {
                let _ = strand::release(&mut conn, id, lease).await;
            }
        }
        if let Some((_, task)) = liveness {
            let _ = stop_liveness.send(true);
            let _ = task.await;
        }
        summary
    }

    /// One claim loop with `concurrency` slots. A process runs a few, so that
    /// one lane's claim statement overlaps another's steps and writes.
    ///
    /// A slot is a strand whose label may still run: a strand left waiting
    /// only for its group-committed last write gives its slot back (see
    /// `Runner::run_in_slot`), so a WAL flush does not hold a lane's claims
    /// back. Those waiting tasks are bounded too, by as many again.
    async fn lane(
        self: Arc<Self>,
        concurrency: usize,
        wake: Arc<Notify>,
        held: Held,
        mut live: Option<Liveness>,
        mut stopping: watch::Receiver<bool>,
    ) -> Summary {
        let mut tasks: JoinSet<Vec<StepReport>> = JoinSet::new();
        let slots = Arc::new(Semaphore::new(concurrency));
        let quarter = (concurrency / 4).max(1);
        let mut summary = Summary::default();
        let mut db_backoff = Duration::from_millis(100);
        let stopped = |rx: &watch::Receiver<bool>| *rx.borrow();
        // The identity the running tasks were claimed under.
        let mut running_as: Option<String> = None;
        let mut cursor = ClaimCursor::new(CLAIM_FROM_OLDEST_EVERY);

        while !stopped(&stopping) {
            let holder = match &live {
                None => self.runner.config().holder.clone(),
                Some(l) => match l.holder() {
                    Some(h) => h,
                    None => {
                        summary.abandoned_on_lost_liveness += abandon(&mut tasks, &held, running_as.take()).await;
                        tokio::select! {
                            _ = identity_changed(&mut live) => {}
                            _ = stopping.changed() => {}
                        }
                        continue;
                    }
                },
            };
            if running_as.as_ref().is_some_and(|was| *was != holder) {
                summary.abandoned_on_lost_liveness += abandon(&mut tasks, &held, running_as.take()).await;
            }
            running_as = Some(holder.clone());
            while let Some(done) = tasks.try_join_next() {
                self.tally(&mut summary, done);
            }
            let free = slots.available_permits().min((2 * concurrency).saturating_sub(tasks.len()));
            let mut more_due = false;
            // While strands run, refill in batches (a quarter of the lane at a
            // time) rather than one slot at a time: one claim statement per
            // strand would cost more than the steps themselves.
            let worth_claiming = tasks.is_empty() || free >= quarter;
            if free > 0 && worth_claiming {
                let asked = (free as i64).min(self.config.batch);
                let exclude = ending_leases(&held);
                let claim_began = std::time::Instant::now();
                let from = cursor.start();
                match self.runner.claim_from(asked, &exclude, &holder, from).await {
                    Ok(claims) => {
                        let micros = claim_began.elapsed().as_micros() as u64;
                        tracing::trace!(asked, got = claims.len(), micros, ?from, "claim");
                        metrics::histogram!("skein_claim_seconds").record(micros as f64 / 1e6);
                        metrics::counter!("skein_claimed_total").increment(claims.len() as u64);
                        db_backoff = Duration::from_millis(100);
                        more_due = cursor.claimed(from, asked as usize, claims.iter().map(|c| c.leased.strand.schedule));
                        for claim in claims {
                            let (id, lease) = (claim.leased.strand.id, claim.leased.strand.lease);
                            if let Some(from) = &claim.leased.taken_over_from {
                                tracing::warn!(strand = %skein_models::Ubid::from_uuid(id), from = %from, "took over a strand whose lease expired");
                                metrics::counter!("skein_lease_takeovers_total").increment(1);
                            }
                            held.lock().unwrap().insert(id, HeldLease { lease, holder: holder.clone(), ends: claim.lease_ends });
                            let (runner, held) = (self.runner.clone(), held.clone());
                            // The claim asked for at most the free slots, and only this lane takes them.
                            let slot = slots.clone().try_acquire_owned().ok();
                            let task = async move {
                                let reports = runner.run_in_slot(claim, usize::MAX, slot).await;
                                // Only this claim's entry: once its step released the
                                // strand, a new claim of it may already be held.
                                let mut held = held.lock().unwrap();
                                if held.get(&id).is_some_and(|h| h.lease == lease) {
                                    held.remove(&id);
                                }
                                reports
                            };
                            // Boxed: the task's cell then holds a pointer, not the
                            // future, and tokio copies its stage on every change.
                            tasks.spawn(Box::pin(task));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?db_backoff, "could not claim strands; is the database up?");
                        tokio::select! {
                            _ = tokio::time::sleep(db_backoff) => {}
                            _ = stopping.changed() => {}
                        }
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if more_due && free > 0 && worth_claiming {
                continue;
            }
            let idle_for = if !worth_claiming || more_due { self.config.poll } else { self.next_due_in().await };
            // Enough slots coming free (labels done, their writes still in
            // flight) is worth a claim too. Not awaited while they are free
            // already (the bound on waiting tasks is what holds the claim
            // back then: it would only spin).
            let slots_free = async {
                let _ = slots.acquire_many(quarter as u32).await;
            };
            tokio::select! {
                _ = wake.notified() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => self.tally(&mut summary, done),
                _ = slots_free, if slots.available_permits() < quarter => {}
                _ = tokio::time::sleep(idle_for) => {}
                _ = stopping.changed() => {}
                _ = identity_changed(&mut live) => {}
            }
        }

        tracing::debug!(running = tasks.len(), "lane stopping: no new claims; letting running steps finish");
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
        let mut conn = match crate::pool::acquire(self.runner.pool()).await {
            Ok(c) => c,
            Err(_) => return self.config.poll,
        };
        match strand::next_due_in(&mut conn).await {
            Ok(Some(secs)) => Duration::from_secs_f64(secs.clamp(0.0, self.config.poll.as_secs_f64())),
            _ => self.config.poll,
        }
    }
}

/// Drop every running step (an open transaction rolls back with it) and
/// forget the claims taken under `identity`: peers break them, or have.
/// Returns how many steps were dropped.
async fn abandon(tasks: &mut JoinSet<Vec<StepReport>>, held: &Held, identity: Option<String>) -> usize {
    let dropped = tasks.len();
    tasks.shutdown().await;
    if let Some(identity) = identity {
        held.lock().unwrap().retain(|_, h| h.holder != identity);
    }
    if dropped > 0 {
        tracing::warn!(dropped, "abandoned steps claimed under a lost worker identity");
    }
    dropped
}

/// Resolves when this process's worker identity changes; never without one.
async fn identity_changed(live: &mut Option<Liveness>) {
    match live {
        Some(l) => l.changed().await,
        None => std::future::pending().await,
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
                wake_all(&wake);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake_all(&wake),
                        Ok(None) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            wake_all(&wake);
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

/// Wake every waiting lane, and leave a permit for one that is busy right now.
fn wake_all(wake: &Notify) {
    wake.notify_waiters();
    wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(held: &Held, ends_in: Duration) -> Uuid {
        let id = Uuid::new_v4();
        let lease = HeldLease { lease: Utc::now(), holder: "w".into(), ends: Instant::now() + ends_in };
        held.lock().unwrap().insert(id, lease);
        id
    }

    #[test]
    fn a_claim_skips_only_the_held_strands_whose_leases_are_ending() {
        let held: Held = Default::default();
        for _ in 0..100 {
            hold(&held, Duration::from_secs(90));
        }
        assert!(ending_leases(&held).is_empty(), "unexpired leases cannot be claimed anyway");
        let ending = hold(&held, Duration::from_secs(2));
        let ended = hold(&held, Duration::ZERO);
        let mut skipped = ending_leases(&held);
        skipped.sort();
        let mut want = vec![ending, ended];
        want.sort();
        assert_eq!(skipped, want);
    }

    #[test]
    fn a_lane_claims_from_where_it_left_off_and_from_the_oldest_when_that_comes_up_short_or_is_due() {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let mut cursor = ClaimCursor::new(Duration::from_millis(200));
        assert_eq!(cursor.start(), None, "the first claim starts at the oldest");
        assert!(cursor.claimed(None, 3, [t(5), t(9), t(7)].into_iter()), "a full claim: more may be due");
        assert_eq!(cursor.start(), Some(t(9)), "the next starts from the last strand leased");
        assert!(cursor.claimed(Some(t(9)), 3, [t(10)].into_iter()), "short from the middle: the oldest may hold more");
        assert_eq!(cursor.start(), None, "so the next starts at the oldest");
        assert!(!cursor.claimed(None, 3, [t(2)].into_iter()), "short from the oldest: nothing more is due");
        assert_eq!(cursor.start(), None);
        assert!(cursor.claimed(None, 1, [t(4)].into_iter()));
        assert_eq!(cursor.start(), Some(t(4)));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cursor.start(), None, "at least once a period, from the oldest");
    }
}

//! The step runner: lease a strand, run its labels, write the result.
//!
//! One step is one transaction: the label's own writes, the semaphores it
//! consumed, the children it budded and the strand's new label/stack/schedule
//! commit together or not at all. The strand write is fenced on the lease, so
//! a worker that lost its lease commits nothing. Under one lease the runner
//! keeps stepping while labels hop (or `nap(0)`), within a time budget.
//!
//! How a step is written depends on what it touched:
//! - a step that used the database (its own rows, `bud`, `reap`, `decr`, a
//!   page, a child's exit) writes its strand row in its transaction: one it
//!   shares with other writing steps (`shared_tx.rs`), or, run again after
//!   its shared one was aborted, one of its own;
//! - a pure step (the label only computed) has nothing but the strand row to
//!   write, so its write is group-committed with other tasks' (`commit.rs`);
//! - a pure step that hops quickly is not written at all: the runner carries
//!   on in memory and the next write (a nap, an exit, a failure record, or
//!   the end of the time budget) saves the whole chain, still fenced.
//!
//! This is the whole engine in one place, on purpose: read it top to bottom.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use skein_models::strand::{self, Continued, ExitWrite, LeaseTerms, Leased, StepWrite};
use skein_models::{page, semaphore, Ubid};
use sqlx::PgPool;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use uuid::Uuid;

use crate::commit::GroupCommit;
use crate::ctx::{DeadlineChange, Resources, StepState, StepTx, Tx};
use crate::error::StepError;
use crate::registry::{RawFlow, Registry};
use crate::remote;
use crate::pool::Warm;
use crate::shared_tx::{Lanes, Left, StrandWrite};
use crate::stack::{self, Deadline, Stack, DESTROYING, LINK, SUBJECT_ID};

/// Timings and thresholds. The defaults suit production; tests shrink them.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a lease lasts: the backstop. A dead worker's strands move on
    /// when a live peer notices (liveness.rs); only with none left do they
    /// wait this long.
    pub lease: Duration,
    /// The most one step may take; it is also cut short to end a quarter of a
    /// lease before the lease expires (apoptosis, well before a takeover).
    pub step_budget: Duration,
    /// How long a worker keeps stepping one strand that hops under one lease.
    pub continue_budget: Duration,
    /// Backoff after the n-th consecutive failure: `random() * min(2^n, cap)`.
    pub backoff_cap: Duration,
    /// Raise a page once a strand has failed this many times in a row.
    pub page_after_failures: i32,
    /// The fallback nap of a parent waiting on children (the last child wakes it).
    pub children_nap: Duration,
    /// Who holds the leases this runner takes (shown to operators).
    pub holder: String,
    /// Steps that write share transactions (`shared_tx.rs`); off, each
    /// writing step commits alone.
    pub shared_writes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: Duration::from_secs(120),
            step_budget: Duration::from_secs(60),
            continue_budget: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(600),
            page_after_failures: 5,
            children_nap: Duration::from_secs(3600),
            holder: this_process(),
            shared_writes: true,
        }
    }
}

/// `host:pid`: this process, as operators see it in a claim's holder.
pub fn this_process() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// A strand this runner holds the lease of.
#[derive(Debug)]
pub struct Claim {
    pub leased: Leased,
    /// When the lease runs out, by this process's clock (conservatively early).
    pub lease_ends: Instant,
}

/// What one step did, for logs, tests and the console.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub strand: Ubid,
    pub prog: String,
    pub label: String,
    pub outcome: Outcome,
    pub budded: Vec<Ubid>,
    /// How long the step took, from its start to its commit (or failure).
    pub micros: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "flow", rename_all = "snake_case")]
pub enum Outcome {
    Hop { to: String },
    Nap { secs: f64 },
    Push { prog: String, label: String },
    Pop { to_prog: String, to_label: String, retval: Value },
    Exit { exitval: Value },
    Failed { error: String, tries: i32 },
    LeaseLost,
}

/// The flow as people read it: `hop -> Tally`, `nap 30s`, `pop {..} -> Census at Double`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Hop { to } => write!(f, "hop -> {to}"),
            Outcome::Nap { secs } => write!(f, "nap {secs}s"),
            Outcome::Push { prog, label } => write!(f, "push -> {prog} at {label}"),
            Outcome::Pop { to_prog, to_label, retval } => write!(f, "pop {retval} -> {to_prog} at {to_label}"),
            Outcome::Exit { exitval } => write!(f, "exit {exitval}"),
            Outcome::Failed { error, tries } => write!(f, "FAILED (try {tries}): {error}"),
            Outcome::LeaseLost => write!(f, "lease lost; nothing written"),
        }
    }
}

impl StepReport {
    /// The outcome and, if the step budded children, how many.
    pub fn flow(&self) -> String {
        match self.budded.len() {
            0 => self.outcome.to_string(),
            n => format!("{}  (budded {n})", self.outcome),
        }
    }
}

/// A pure hop quicker than this is carried on in memory, unwritten: a label
/// this quick made no remote call worth protecting from a replay.
const COALESCE_UNDER: Duration = Duration::from_millis(10);

/// The strand as the runner carries it from one step to the next under one lease.
struct Current {
    id: Uuid,
    parent_id: Option<Uuid>,
    prog: String,
    label: String,
    stack: Value,
    retval: Option<Value>,
    lease: DateTime<Utc>,
    leased_schedule: DateTime<Utc>,
    sems: Vec<(Uuid, String)>,
    /// Failures before this lease's first step.
    prior_failures: i32,
    /// No step has succeeded under this lease yet (the lease's try + 1 counts this one).
    fresh: bool,
    /// Steps succeeded in memory that are not written yet.
    dirty: bool,
}

impl Current {
    /// Carry on under the same lease from where the step left the strand;
    /// `written` is the row as written, or None if the step is not written yet.
    fn advance(&mut self, at: Position, stack: Value, written: Option<Continued>) {
        self.prog = at.prog;
        self.label = at.label;
        self.stack = stack;
        self.retval = at.retval;
        self.prior_failures = 0;
        self.fresh = false;
        self.dirty = written.is_none();
        if let Some(next) = written {
            self.leased_schedule = next.schedule;
            self.sems = next.sem_ids.unwrap_or_default().into_iter().zip(next.sem_names.unwrap_or_default()).collect();
        }
    }

    /// The strand's current state as a write that keeps the lease.
    fn progress(&self) -> StepWrite {
        StepWrite {
            id: self.id,
            lease: self.lease,
            prog: self.prog.clone(),
            label: self.label.clone(),
            stack: Some(self.stack.clone()),
            retval: self.retval.clone(),
            leased_schedule: self.leased_schedule,
            release_after: None,
        }
    }
}

/// Where a step leaves the strand: its prog, label, stack and the value
/// handed back by the last pop.
struct Position {
    prog: String,
    label: String,
    stack: Stack,
    retval: Option<Value>,
}

/// What a destroy did before the label runs: the frames it unwound, and
/// the flow to take instead of a label when the prog has no destroy label.
struct Destroy {
    forced: Option<RawFlow>,
    unwound: Vec<stack::Frame>,
}

/// What the label returned and asked for besides its flow.
struct LabelRun {
    flow: RawFlow,
    budded: Vec<Uuid>,
    decrs: Vec<String>,
    deadline: Option<DeadlineChange>,
}

/// The flow as applied: what to report, how long to nap, and the exit value
/// if the bottom frame popped.
struct Applied {
    outcome: Outcome,
    nap_secs: f64,
    exitval: Option<Value>,
}

#[derive(Clone)]
pub struct Runner {
    pool: PgPool,
    registry: Arc<Registry>,
    config: Arc<Config>,
    resources: Arc<Resources>,
    committer: Arc<std::sync::OnceLock<GroupCommit>>,
    lanes: Arc<std::sync::OnceLock<Arc<Lanes>>>,
    /// The connections claims and group-commit flushes run on.
    warm: Arc<Warm>,
}

impl Runner {
    pub fn new(pool: PgPool, registry: Registry) -> Self {
        Runner {
            warm: Warm::new(pool.clone()),
            pool,
            registry: Arc::new(registry),
            config: Arc::new(Config::default()),
            resources: Default::default(),
            committer: Default::default(),
            lanes: Default::default(),
        }
    }

    fn committer(&self) -> &GroupCommit {
        self.committer.get_or_init(|| GroupCommit::start(self.warm.clone()))
    }

    /// Where a step's first write goes: a shared transaction, or (`private`,
    /// or shared writes off) one of its own.
    fn step_tx(&self, private: bool) -> StepTx {
        let shared = self.config.shared_writes && !private;
        StepTx::None(shared.then(|| self.lanes.get_or_init(|| Arc::new(Lanes::new(&self.pool))).clone()))
    }

    pub fn with_config(mut self, config: Config) -> Self {
        self.config = Arc::new(config);
        self
    }

    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = Arc::new(resources);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn terms(&self) -> LeaseTerms {
        LeaseTerms { lease_secs: self.config.lease.as_secs_f64() }
    }

    /// Lease up to `limit` due strands in one round trip, skipping `exclude`.
    pub async fn claim(&self, limit: i64, exclude: &[Uuid]) -> Result<Vec<Claim>, sqlx::Error> {
        self.claim_as(limit, exclude, &self.config.holder).await
    }

    /// [`Runner::claim`] under a registered worker's name, so that peers
    /// break these claims the moment that worker dies.
    pub async fn claim_as(&self, limit: i64, exclude: &[Uuid], holder: &str) -> Result<Vec<Claim>, sqlx::Error> {
        self.claim_from(limit, exclude, holder, None).await
    }

    /// [`Runner::claim_as`], only strands scheduled at or after `from` (see
    /// [`strand::claim_due`]).
    pub async fn claim_from(
        &self,
        limit: i64,
        exclude: &[Uuid],
        holder: &str,
        from: Option<DateTime<Utc>>,
    ) -> Result<Vec<Claim>, sqlx::Error> {
        let asked = Instant::now();
        let mut conn = self.warm.reserve();
        let claimed = strand::claim_due(conn.get().await?, limit, self.terms(), holder, exclude, from).await;
        let leased = conn.check(claimed)?;
        Ok(leased.into_iter().map(|leased| Claim { leased, lease_ends: asked + self.config.lease }).collect())
    }

    /// Lease one strand by id: only when due, or (`due_only = false`) whenever it is free.
    pub async fn claim_id(&self, id: Uuid, due_only: bool) -> Result<Option<Claim>, sqlx::Error> {
        let asked = Instant::now();
        let mut conn = crate::pool::acquire(&self.pool).await?;
        let leased = strand::claim_one(&mut conn, id, self.terms(), &self.config.holder, due_only).await?;
        Ok(leased.map(|leased| Claim { leased, lease_ends: asked + self.config.lease }))
    }

    /// Run one step of `id` now, whatever its schedule (an operator's "step").
    /// None if the strand is gone, exited, or leased by someone else.
    pub async fn step_now(&self, id: Uuid) -> Result<Option<StepReport>, sqlx::Error> {
        Ok(match self.claim_id(id, false).await? {
            Some(claim) => self.run(claim, 1).await.pop(),
            None => None,
        })
    }

    /// Lease every due strand, in rounds, and run each until it naps or exits,
    /// until nothing is due. For tests and single-process tools; `respirate`
    /// runs strands concurrently instead.
    pub async fn drain(&self) -> Result<Vec<StepReport>, sqlx::Error> {
        let mut reports = Vec::new();
        loop {
            let claims = self.claim(64, &[]).await?;
            if claims.is_empty() {
                return Ok(reports);
            }
            for claim in claims {
                reports.extend(self.run(claim, usize::MAX).await);
            }
        }
    }

    /// Run a claimed strand: step after step while it hops, at most `max_steps`,
    /// then release the lease (folded into the last step's write).
    pub async fn run(&self, claim: Claim, max_steps: usize) -> Vec<StepReport> {
        self.run_in_slot(claim, max_steps, None).await
    }

    /// [`Runner::run`] in one of the dispatcher's slots, given back as soon as
    /// only the strand's last write is left and that write is group-committed:
    /// its label is done, and waiting for a WAL flush is no work to bound.
    /// A step in a transaction of its own keeps its slot to the end (if a
    /// shared transaction is spoiled, its label runs again).
    pub(crate) async fn run_in_slot(&self, claim: Claim, max_steps: usize, mut slot: Option<OwnedSemaphorePermit>) -> Vec<StepReport> {
        let leased = claim.leased;
        let mut cur = Current {
            id: leased.strand.id,
            parent_id: leased.strand.parent_id,
            prog: leased.strand.prog,
            label: leased.strand.label,
            stack: leased.strand.stack,
            retval: leased.strand.retval,
            lease: leased.strand.lease,
            leased_schedule: leased.strand.schedule,
            sems: leased.sems,
            prior_failures: leased.strand.try_ - 1,
            fresh: true,
            dirty: false,
        };
        let started = Instant::now();
        let lease_margin = self.config.lease / 4;
        let mut reports = Vec::new();
        let mut private = false;
        loop {
            let ends_at = (Instant::now() + self.config.step_budget).min(claim.lease_ends - lease_margin);
            let budget = ends_at.saturating_duration_since(Instant::now());
            let keep_going = reports.len() + 1 < max_steps && started.elapsed() < self.config.continue_budget;
            // A debug span, not an info one: at info, a span per step (a
            // registry slot, its fields formatted into a string, entered and
            // left at every poll) cost a worker 5% of its CPU on pure
            // steps (`skein bench --scenario one-step`). The runner's own
            // warnings name the strand, prog and label themselves, and progs'
            // events name their subject; with RUST_LOG=debug (or
            // skein_engine=debug) every event of a step is under its span.
            let span = tracing::debug_span!("step", strand = %Ubid::from_uuid(cur.id), prog = %cur.prog, label = %cur.label);
            let began = Instant::now();
            // Boxed: the step's future is large (every phase's state), and a
            // strand's task would otherwise carry it inline, copied whole
            // each time the task is spawned and moved. Boxed in a statement
            // of its own: a temporary of the awaiting statement would keep
            // its room in this future all the same.
            let step = Box::pin(self.step(&mut cur, ends_at, keep_going, private, &mut slot));
            let result = tokio::time::timeout(budget, step)
                .instrument(span.clone())
                .await
                .unwrap_or(Err(StepError::Overran(budget)));
            // Logged under the step's span, which is never entered across an
            // await: a guard held there would leak the span into whatever
            // other task the thread polls next (their logs named this strand).
            let micros = began.elapsed().as_micros() as u64;
            match result {
                Err(StepError::GroupAborted(why)) if !private => {
                    // Another step spoiled the shared transaction: nothing of
                    // this one committed, so run it again, alone.
                    span.in_scope(|| tracing::debug!(%why, "shared transaction aborted; running the step again in its own"));
                    private = true;
                }
                Ok((mut report, again)) => {
                    private = false;
                    report.micros = micros;
                    span.in_scope(|| tracing::debug!(outcome = ?report.outcome, "step done"));
                    reports.push(report);
                    if !again {
                        return reports;
                    }
                }
                Err(StepError::LeaseLost) => {
                    tracing::warn!(strand = %Ubid::from_uuid(cur.id), prog = %cur.prog, label = %cur.label, "lease lost mid-step; rolled back");
                    reports.push(self.report(&cur, Outcome::LeaseLost, micros));
                    return reports;
                }
                Err(error) => {
                    let failing = Box::pin(self.fail(&cur, &error)); // boxed as the step is, above
                    let outcome = failing.instrument(span.clone()).await;
                    reports.push(self.report(&cur, outcome, micros));
                    return reports;
                }
            }
        }
    }

    fn report(&self, cur: &Current, outcome: Outcome, micros: u64) -> StepReport {
        StepReport {
            strand: Ubid::from_uuid(cur.id),
            prog: cur.prog.clone(),
            label: cur.label.clone(),
            outcome,
            budded: vec![],
            micros,
        }
    }

    /// One step in one transaction. On success `cur` becomes the strand as
    /// written (or as carried in memory); on any error nothing of this step
    /// was committed and `cur` is untouched.
    ///
    /// The phases, in order: a destroy unwinds the stack; a passed deadline
    /// pages; the label runs (holding nothing while it calls hosts); its
    /// deadline change and flow are applied to the strand's position; the
    /// semaphores it consumed are deleted; the position is written.
    async fn step(
        &self,
        cur: &mut Current,
        ends_at: Instant,
        keep_going: bool,
        private: bool,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(StepReport, bool), StepError> {
        let began = Instant::now();
        let ubid = Ubid::from_uuid(cur.id);
        let mut open = self.step_tx(private);
        let mut at = Position {
            prog: cur.prog.clone(),
            label: cur.label.clone(),
            stack: Stack::parse(&cur.stack).map_err(StepError::CorruptStack)?,
            retval: cur.retval.clone(),
        };

        let destroy = self.enter_destroy(cur, &mut at)?;
        self.page_passed_deadline(ubid, &mut at).await?;
        // What ran, as the report names it: a destroy runs its prog's destroy
        // label, not the label the strand was at.
        let (ran_prog, ran_label) = (at.prog.clone(), at.label.clone());
        let ran = match destroy.forced {
            Some(flow) => LabelRun { flow, budded: vec![], decrs: vec![], deadline: None },
            None => self.run_label(cur, &mut at, ends_at, &mut open).await?,
        };
        // Pages of the unwound frames' deadlines are resolved only now: nothing
        // opens the step's transaction before the label's remote calls.
        for popped in &destroy.unwound {
            self.resolve_deadline_page(&mut open, ubid, popped).await?;
        }
        self.change_deadline(&mut open, ubid, &mut at, ran.deadline).await?;
        let applied = self.apply_flow(&mut open, ubid, &mut at, ran.flow).await?;
        let nap_secs = self.settle_deadline(&mut open, ubid, &mut at, &applied).await?;
        self.consume_semaphores(cur, &ran.decrs, ubid, &mut open).await?;

        // Moved out, not copied: `at` goes on without its stack (`advance` takes it from here).
        let mut stack_value = std::mem::replace(&mut at.stack, Stack { frames: vec![] }).into_value();
        let again = applied.exitval.is_none() && keep_going && nap_secs == 0.0;
        if !again && !open.is_open() {
            // Only the group-committed last write is left: free the slot.
            slot.take();
        }
        // Sent only if it differs from the row's (most steps leave it alone),
        // and copied only if the strand also carries on with it in memory.
        let stack_write = match (cur.dirty || stack_value != cur.stack, again) {
            (false, _) => None,
            (true, true) => Some(stack_value.clone()),
            (true, false) => Some(std::mem::take(&mut stack_value)),
        };
        let next = match applied.exitval {
            Some(exitval) => {
                self.write_exit(cur, &at.label, stack_write, exitval, open).await?;
                None
            }
            None => {
                let write = StepWrite {
                    id: cur.id,
                    lease: cur.lease,
                    prog: at.prog.clone(),
                    label: at.label.clone(),
                    stack: stack_write,
                    retval: at.retval.clone(),
                    leased_schedule: cur.leased_schedule,
                    release_after: if again { None } else { Some(nap_secs) },
                };
                // A quick pure hop that carries on is not written yet.
                let carry_on = again && !open.is_open() && began.elapsed() < COALESCE_UNDER;
                if carry_on { None } else { Some(self.write_step(write, open).await?) }
            }
        };

        let report = StepReport {
            strand: ubid,
            prog: ran_prog,
            label: ran_label,
            outcome: applied.outcome,
            budded: ran.budded.into_iter().map(Ubid::from_uuid).collect(),
            micros: 0,
        };
        if again {
            cur.advance(at, stack_value, next);
        }
        Ok((report, again))
    }

    /// Destroy: unwind to the bottom frame once, then run its prog's destroy
    /// label, or just exit if it has none.
    fn enter_destroy(&self, cur: &Current, at: &mut Position) -> Result<Destroy, StepError> {
        let mut destroy = Destroy { forced: None, unwound: vec![] };
        let stack = &mut at.stack;
        if !cur.sems.iter().any(|(_, n)| n == "destroy") || stack.bottom().contains_key(DESTROYING) {
            return Ok(destroy);
        }
        if stack.frames.len() > 1 {
            at.prog = stack::link(&stack.frames[stack.frames.len() - 2]).expect("checked by Stack::parse").0;
        }
        while stack.frames.len() > 1 {
            destroy.unwound.push(stack.frames.remove(0));
        }
        stack.bottom_mut().insert(DESTROYING.into(), Value::Bool(true));
        match self.registry.get(&at.prog)?.destroy_label() {
            Some(l) => at.label = l.to_string(),
            None => destroy.forced = Some(RawFlow::Pop(json!({"msg": "destroyed"}))),
        }
        Ok(destroy)
    }

    /// A passed deadline pages once, and the frame remembers it did. The page
    /// is raised on a short connection of its own (it stands even if this step
    /// fails; raising an open tag again does nothing).
    async fn page_passed_deadline(&self, ubid: Ubid, at: &mut Position) -> Result<(), StepError> {
        let Some(mut d) = Deadline::read(at.stack.top()) else { return Ok(()) };
        if d.notified || d.at > Utc::now() {
            return Ok(());
        }
        let summary = format!("strand {ubid} ({}) did not reach {} by {}", at.prog, d.target, d.at.to_rfc3339());
        let details = json!({"strand": ubid, "prog": at.prog, "label": at.label, "target": d.target});
        let mut conn = crate::pool::acquire(&self.pool).await?;
        page::raise(&mut conn, &deadline_tag(ubid, &d.target), &summary, "warning", &details).await?;
        d.notified = true;
        d.write(at.stack.top_mut());
        Ok(())
    }

    /// Run the label under the remote-work probe: it fails the step if the
    /// label called a host while holding the step's database.
    async fn run_label(
        &self,
        cur: &Current,
        at: &mut Position,
        ends_at: Instant,
        open: &mut StepTx,
    ) -> Result<LabelRun, StepError> {
        let top = at.stack.top();
        let subject_id = top.get(SUBJECT_ID).and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(cur.id);
        let mut st = StepState {
            id: cur.id,
            subject_id,
            retval: cur.retval.clone(),
            sems: cur.sems.clone(),
            decrs: vec![],
            deadline: None,
            budded: vec![],
            ends_at,
            children_nap: self.config.children_nap.as_secs_f64(),
            resources: self.resources.clone(),
        };
        let runs = self.registry.get(&at.prog)?.clone();
        let tx_open = open.is_open();
        let run = runs.run(Tx::new(&self.pool, open), &mut st, &at.label, top);
        let (ran, held) = remote::watch(&at.prog, &at.label, tx_open, run).await;
        if let Some(held) = held {
            return Err(StepError::Label(held.into()));
        }
        let (flow, changed) = ran?;
        if let Some(data) = changed {
            stack::replace_prog_data(at.stack.top_mut(), data).map_err(|error| StepError::BadFrame { prog: at.prog.clone(), error })?;
        }
        Ok(LabelRun { flow, budded: st.budded, decrs: st.decrs, deadline: st.deadline })
    }

    /// The label registered or dropped a deadline for its frame.
    async fn change_deadline(
        &self,
        open: &mut StepTx,
        ubid: Ubid,
        at: &mut Position,
        change: Option<DeadlineChange>,
    ) -> Result<(), StepError> {
        let Some(change) = change else { return Ok(()) };
        self.resolve_deadline_page(open, ubid, at.stack.top()).await?;
        match change {
            DeadlineChange::Register { target, within } => {
                let at_time = Utc::now() + chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
                Deadline { target: target.to_string(), at: at_time, notified: false }.write(at.stack.top_mut());
            }
            DeadlineChange::Unregister => Deadline::clear(at.stack.top_mut()),
        }
        Ok(())
    }

    /// Apply the label's flow to the strand's position.
    async fn apply_flow(
        &self,
        open: &mut StepTx,
        ubid: Ubid,
        at: &mut Position,
        flow: RawFlow,
    ) -> Result<Applied, StepError> {
        let mut applied = Applied { outcome: Outcome::Nap { secs: 0.0 }, nap_secs: 0.0, exitval: None };
        applied.outcome = match flow {
            RawFlow::Hop(to) => {
                at.label = to.to_string();
                at.retval = None;
                Outcome::Hop { to: at.label.clone() }
            }
            RawFlow::Nap(secs) => {
                applied.nap_secs = secs;
                Outcome::Nap { secs }
            }
            RawFlow::Push(p) => {
                let callee = self.registry.get(p.prog)?;
                if !callee.has_label(p.label) {
                    return Err(StepError::UnknownLabel {
                        prog: p.prog.into(),
                        label: p.label.into(),
                        known: callee.labels().join(", "),
                    });
                }
                let mut frame = stack::Frame::new();
                stack::replace_prog_data(&mut frame, p.frame).map_err(|error| StepError::BadFrame { prog: p.prog.into(), error })?;
                frame.insert(LINK.into(), json!([at.prog, at.label]));
                if let Some(s) = at.stack.top().get(SUBJECT_ID) {
                    frame.insert(SUBJECT_ID.into(), s.clone());
                }
                at.stack.frames.insert(0, frame);
                at.prog = p.prog.to_string();
                at.label = p.label.to_string();
                at.retval = None;
                Outcome::Push { prog: at.prog.clone(), label: at.label.clone() }
            }
            RawFlow::Pop(value) => match stack::link(at.stack.top()) {
                Some((to_prog, to_label)) => {
                    let popped = at.stack.frames.remove(0);
                    self.resolve_deadline_page(open, ubid, &popped).await?;
                    at.prog = to_prog;
                    at.label = to_label;
                    at.retval = Some(value.clone());
                    Outcome::Pop { to_prog: at.prog.clone(), to_label: at.label.clone(), retval: value }
                }
                None => {
                    applied.exitval = Some(value.clone());
                    Outcome::Exit { exitval: value }
                }
            },
        };
        Ok(applied)
    }

    /// Reaching the deadline's target label resolves it; a nap is shortened
    /// to wake in time to notice it passing. Returns the nap to write.
    async fn settle_deadline(
        &self,
        open: &mut StepTx,
        ubid: Ubid,
        at: &mut Position,
        applied: &Applied,
    ) -> Result<f64, StepError> {
        let Some(d) = Deadline::read(at.stack.top()) else { return Ok(applied.nap_secs) };
        if d.target == at.label && applied.exitval.is_none() {
            self.resolve_deadline_page(open, ubid, at.stack.top()).await?;
            Deadline::clear(at.stack.top_mut());
        } else if !d.notified && applied.nap_secs > 0.0 {
            let until = (d.at - Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
            return Ok(applied.nap_secs.min(until));
        }
        Ok(applied.nap_secs)
    }

    /// Delete the semaphores the label consumed, and resolve the strand's
    /// "failing" page on its first success after failures.
    async fn consume_semaphores(
        &self,
        cur: &Current,
        decrs: &[String],
        ubid: Ubid,
        open: &mut StepTx,
    ) -> Result<(), StepError> {
        let consumed: Vec<Uuid> = cur.sems.iter().filter(|(_, n)| decrs.contains(n)).map(|(id, _)| *id).collect();
        if !consumed.is_empty() {
            semaphore::delete(open.conn(&self.pool).await?, &consumed).await?;
        }
        if cur.fresh && cur.prior_failures >= self.config.page_after_failures {
            page::resolve(open.conn(&self.pool).await?, &failing_tag(ubid)).await?;
        }
        Ok(())
    }

    /// Write an exit: in the step's transaction if it has one, else
    /// group-committed. A child's exit may wake its parent.
    async fn write_exit(&self, cur: &Current, label: &str, stack: Option<Value>, exitval: Value, open: StepTx) -> Result<(), StepError> {
        let exit = ExitWrite { id: cur.id, lease: cur.lease, label: label.to_string(), stack, exitval };
        let exits = std::slice::from_ref(&exit);
        let (written, recheck) = match (cur.parent_id, open) {
            (Some(_), StepTx::None(_)) => (self.committer().exit_child(exit).await?, vec![]),
            (None, StepTx::None(_)) => (self.committer().exit(exit).await?, vec![]),
            (Some(_), StepTx::Private(mut tx)) => {
                let (written, recheck) = strand::exit_children(&mut tx, exits).await?;
                if !written.is_empty() {
                    tx.commit().await?;
                }
                (!written.is_empty(), recheck)
            }
            (None, StepTx::Private(mut tx)) => {
                let written = !strand::exit_top_level(&mut tx, exits).await?.is_empty();
                if written {
                    tx.commit().await?;
                }
                (written, vec![])
            }
            (parent, StepTx::Shared(member)) => {
                let write = if parent.is_some() { StrandWrite::ChildExit(exit) } else { StrandWrite::Exit(exit) };
                // A lost lease is an error here; the group wakes the parents
                // of children that exited last.
                shared_left(member.commit(write).await)?;
                (true, vec![])
            }
        };
        if !written {
            return Err(StepError::LeaseLost);
        }
        for parent in recheck {
            strand::wake_parent_if_idle(&mut *crate::pool::acquire(&self.pool).await?, parent).await?;
        }
        Ok(())
    }

    /// Write a step that goes on living: in its transaction if it has one,
    /// else group-committed. Fenced: a lost lease writes nothing.
    async fn write_step(&self, write: StepWrite, open: StepTx) -> Result<Continued, StepError> {
        let writes = std::slice::from_ref(&write);
        match open {
            StepTx::None(_) => self.committer().write(write).await?.ok_or(StepError::LeaseLost),
            StepTx::Private(mut tx) => {
                let row = strand::write_steps(&mut tx, writes).await?.pop().ok_or(StepError::LeaseLost)?;
                tx.commit().await?;
                Ok(row)
            }
            StepTx::Shared(member) => shared_left(member.commit(StrandWrite::Step(write)).await)?.ok_or(StepError::LeaseLost),
        }
    }

    /// Record a failed step on the row (releasing the lease, backing off, and
    /// saving any steps that succeeded in memory before it), and page once
    /// the strand has failed `page_after_failures` times in a row.
    async fn fail(&self, cur: &Current, error: &StepError) -> Outcome {
        let ubid = Ubid::from_uuid(cur.id);
        let message = error.to_string();
        tracing::warn!(strand = %ubid, prog = %cur.prog, label = %cur.label, error = %message, "step failed");
        let recorded = async {
            let mut tx = crate::pool::begin(&self.pool).await?;
            let cap = self.config.backoff_cap.as_secs_f64();
            // The lease's try + 1 counts the first step's failure; after a
            // success under this lease, this is the first failure again.
            let try_ = if cur.fresh { None } else { Some(1) };
            let progress = cur.dirty.then(|| cur.progress());
            let tries = strand::record_failure(&mut tx, cur.id, cur.lease, try_, progress.as_ref(), &message, cap).await?;
            if let Some(tries) = tries.filter(|t| *t >= self.config.page_after_failures) {
                let summary = format!("strand {ubid} ({}) failed {tries} times in a row at {}", cur.prog, cur.label);
                let details = json!({"strand": ubid, "prog": cur.prog, "label": cur.label, "error": message});
                page::raise(&mut tx, &failing_tag(ubid), &summary, "error", &details).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(tries)
        }
        .await;
        match recorded {
            Ok(Some(tries)) => Outcome::Failed { error: message, tries },
            Ok(None) => Outcome::LeaseLost,
            Err(db) => {
                // The lease will expire and the strand be retried; nothing to undo.
                tracing::error!(strand = %ubid, error = %db, "could not record the failure");
                Outcome::Failed { error: message, tries: -1 }
            }
        }
    }

    /// Resolve the page of a deadline this frame had raised, if any.
    async fn resolve_deadline_page(
        &self,
        open: &mut StepTx,
        strand: Ubid,
        frame: &stack::Frame,
    ) -> Result<(), StepError> {
        if let Some(d) = Deadline::read(frame).filter(|d| d.notified) {
            page::resolve(open.conn(&self.pool).await?, &deadline_tag(strand, &d.target)).await?;
        }
        Ok(())
    }
}

/// A shared transaction's answer as the step's result: the row as written
/// (None for an exit), or why nothing was.
fn shared_left(left: Left) -> Result<Option<Continued>, StepError> {
    match left {
        Left::Committed(row) => Ok(row),
        Left::LeaseLost => Err(StepError::LeaseLost),
        Left::Aborted(why) => Err(StepError::GroupAborted(why)),
    }
}

pub(crate) fn failing_tag(strand: Ubid) -> String {
    format!("strand-failing:{strand}")
}

fn deadline_tag(strand: Ubid, target: &str) -> String {
    format!("deadline:{strand}:{target}")
}

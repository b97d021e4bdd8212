//! Shared transactions: the steps that write, from every task of a runner,
//! commit together.
//!
//! A step that writes used to cost four round trips and a WAL flush of its
//! own: BEGIN, its statements, its fenced strand write, COMMIT. Here it
//! joins the transaction already open on one of a few *lanes* (a connection
//! each), runs its statements there, and leaves its strand write with the
//! group; the last step to leave a lane while nobody waits for it (or the
//! one that fills the group) writes every member's strand row in one fenced
//! statement and commits. A step reports success only after that COMMIT, so
//! a step's writes still commit with its strand update, or not at all.
//!
//! One member that fails after writing (its label errs, its future is
//! dropped by a timeout, its lease turns out lost at the group's strand
//! write) poisons the group: the transaction
//! rolls back and every other member is told its group was aborted. The
//! runner then runs those steps again at once, each in a private
//! transaction, so one bad step costs its neighbours a replay, never a
//! failure. Savepoints would spare the replay, but cost a round trip per
//! step and, past 64 per transaction, slow every snapshot in the database.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use skein_models::strand::{self, Continued, ExitWrite, StepWrite};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, PgPool, Postgres};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};
use uuid::Uuid;

/// The most steps one group carries (bounds how long a row lock is held).
const MAX_GROUP: usize = 64;

/// How long a member that left its group waits for someone else to commit
/// it before it commits the group itself (covers a waiter that gave up).
const COMMIT_STALLED_AFTER: Duration = Duration::from_millis(5);

/// How a group ended: committed, with what its strand writes returned, or
/// why not.
type Outcome = Result<Arc<Written>, NotCommitted>;

/// What a committed group's strand writes returned.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Strands that go on living: their rows as written.
    rows: HashMap<Uuid, Continued>,
    /// Strands that exited.
    exited: HashSet<Uuid>,
}

/// Why a group did not commit, as its members are told.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NotCommitted {
    /// These members' leases were lost: they took the group down.
    LeasesLost(Arc<HashSet<Uuid>>),
    /// Something else: a member failed, or the database did.
    Aborted(String),
}

/// A member's strand write, left with its group.
pub(crate) enum StrandWrite {
    Step(StepWrite),
    Exit(ExitWrite),
    /// A child's exit: its parent is woken after the commit if it was the last.
    ChildExit(ExitWrite),
}

/// How a member's step ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Left {
    /// Committed; the strand's row as written, if it goes on living.
    Committed(Option<Continued>),
    /// Its own lease was lost: nothing of it was written.
    LeaseLost,
    /// Its group did not commit, through no fault of its own.
    Aborted(String),
}

/// The lanes of one runner.
pub(crate) struct Lanes {
    lanes: Vec<Arc<Lane>>,
    next: AtomicUsize,
}

impl Lanes {
    /// A lane per four connections of the pool, at least one, at most eight.
    pub fn new(pool: &PgPool) -> Lanes {
        let count = (pool.options().get_max_connections() as usize / 4).clamp(1, 8);
        let lanes = (0..count)
            .map(|_| {
                Arc::new(Lane {
                    pool: pool.clone(),
                    state: Arc::new(Mutex::new(LaneState::default())),
                    wanting: AtomicUsize::new(0),
                })
            })
            .collect();
        Lanes { lanes, next: AtomicUsize::new(0) }
    }

    /// Join the open group of a lane (a free one if there is one), beginning
    /// a transaction there if none is open.
    pub async fn join(&self) -> Result<Member, sqlx::Error> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.lanes.len();
        let free = (0..n).map(|i| &self.lanes[(start + i) % n]).find(|l| l.wanting.load(Ordering::Relaxed) == 0);
        free.unwrap_or(&self.lanes[start % n]).clone().join().await
    }
}

struct Lane {
    pool: PgPool,
    state: Arc<Mutex<LaneState>>,
    /// Tasks waiting for the lane right now: while any do, a leaving member
    /// leaves the commit to them.
    wanting: AtomicUsize,
}

#[derive(Default)]
struct LaneState {
    conn: Option<PoolConnection<Postgres>>,
    /// The group whose transaction is open on `conn`, if any.
    group: Option<Arc<Group>>,
    members: usize,
    /// A member failed after writing: the group must roll back.
    poisoned: bool,
    /// The members' strand writes, made together when the group ends.
    writes: Vec<StepWrite>,
    exits: Vec<ExitWrite>,
    child_exits: Vec<ExitWrite>,
}

struct Group {
    done: watch::Sender<Option<Outcome>>,
}

/// Counts a task waiting for a lane, for as long as it waits.
struct Wanting<'a>(&'a AtomicUsize);

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lane {
    async fn join(self: Arc<Lane>) -> Result<Member, sqlx::Error> {
        self.wanting.fetch_add(1, Ordering::Relaxed);
        let wanting = Wanting(&self.wanting);
        let mut state = self.state.clone().lock_owned().await;
        drop(wanting);
        if state.poisoned {
            state.end_group().await;
        }
        if state.group.is_none() {
            if state.conn.is_none() {
                state.conn = Some(crate::pool::acquire(&self.pool).await?);
            }
            if let Err(e) = state.conn.as_mut().expect("just set").execute("BEGIN").await {
                state.conn = None;
                return Err(e);
            }
            state.group = Some(Arc::new(Group { done: watch::channel(None).0 }));
        }
        state.members += 1;
        let group = state.group.clone().expect("just set");
        Ok(Member { lane: self, state: Some(state), group })
    }
}

impl LaneState {
    /// End the open group: write its members' strand rows (fenced) and
    /// commit, or roll it back if poisoned or a lease was lost; tell its
    /// members either way.
    async fn end_group(&mut self) {
        let Some(group) = self.group.take() else { return };
        let (writes, exits, child_exits) =
            (std::mem::take(&mut self.writes), std::mem::take(&mut self.exits), std::mem::take(&mut self.child_exits));
        let conn = self.conn.as_mut().expect("a group has a connection");
        let outcome = match self.poisoned {
            true => Err(NotCommitted::Aborted("another step of its shared transaction failed".into())),
            false => write_and_commit(conn, &writes, &exits, &child_exits).await,
        };
        if outcome.is_err() {
            let rolled_back = conn.execute("ROLLBACK").await.is_ok();
            if !rolled_back {
                // The connection's state is unknown: never reuse it.
                if let Some(mut conn) = self.conn.take() {
                    conn.close_on_drop();
                }
            }
        }
        self.members = 0;
        self.poisoned = false;
        group.done.send_replace(Some(outcome));
    }
}

/// The group's strand writes, fenced on each member's lease, then COMMIT.
/// A lease found lost means that member's label writes are in this
/// transaction too: nothing may commit.
async fn write_and_commit(
    conn: &mut PgConnection,
    writes: &[StepWrite],
    exits: &[ExitWrite],
    child_exits: &[ExitWrite],
) -> Outcome {
    let db = |e: sqlx::Error| NotCommitted::Aborted(format!("the shared transaction's strand writes: {e}"));
    let mut written = Written::default();
    if !writes.is_empty() {
        written.rows = strand::write_steps(conn, writes).await.map_err(db)?.into_iter().map(|r| (r.id, r)).collect();
    }
    if !exits.is_empty() {
        written.exited.extend(strand::exit_top_level(conn, exits).await.map_err(db)?);
    }
    let mut recheck = Vec::new();
    if !child_exits.is_empty() {
        let (exited, parents) = strand::exit_children(conn, child_exits).await.map_err(db)?;
        written.exited.extend(exited);
        recheck = parents;
    }
    let lost: HashSet<Uuid> = writes
        .iter()
        .filter(|w| !written.rows.contains_key(&w.id))
        .map(|w| w.id)
        .chain(exits.iter().chain(child_exits).filter(|e| !written.exited.contains(&e.id)).map(|e| e.id))
        .collect();
    if !lost.is_empty() {
        return Err(NotCommitted::LeasesLost(Arc::new(lost)));
    }
    conn.execute("COMMIT").await.map_err(|e| NotCommitted::Aborted(format!("committing the shared transaction: {e}")))?;
    // Children that exited last wake their parents (after the commit, so the
    // parent's step sees them exited).
    for parent in recheck {
        if let Err(e) = strand::wake_parent_if_idle(conn, parent).await {
            tracing::warn!(error = %e, "could not wake a parent; its children nap will");
        }
    }
    Ok(Arc::new(written))
}

/// A step's place in a lane's group. While it holds the lane, it is the only
/// user of the lane's connection; dropping it before [`Member::commit`]
/// poisons the group, so a step cut short never commits half its writes.
pub(crate) struct Member {
    lane: Arc<Lane>,
    state: Option<OwnedMutexGuard<LaneState>>,
    group: Arc<Group>,
}

impl Member {
    /// The shared transaction's connection.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.state.as_mut().and_then(|s| s.conn.as_deref_mut()).expect("a member holds its lane until it commits")
    }

    /// Every write of the step but its strand row is in: leave that with the
    /// group, leave the lane, and return once the group ended.
    pub async fn commit(mut self, write: StrandWrite) -> Left {
        let mut state = self.state.take().expect("a member commits once");
        let id = match write {
            StrandWrite::Step(w) => {
                let id = w.id;
                state.writes.push(w);
                id
            }
            StrandWrite::Exit(e) => {
                let id = e.id;
                state.exits.push(e);
                id
            }
            StrandWrite::ChildExit(e) => {
                let id = e.id;
                state.child_exits.push(e);
                id
            }
        };
        let mut done = self.group.done.subscribe();
        if self.lane.wanting.load(Ordering::Relaxed) == 0 || state.members >= MAX_GROUP {
            state.end_group().await;
        }
        drop(state);
        let outcome = loop {
            let waited = tokio::time::timeout(COMMIT_STALLED_AFTER, done.wait_for(Option::is_some)).await;
            match waited.map(|r| r.map(|outcome| outcome.clone())) {
                Ok(Ok(outcome)) => break outcome.expect("waited for Some"),
                Ok(Err(_)) => break Err(NotCommitted::Aborted("the shared transaction's lane was dropped".into())),
                Err(_) => {
                    let mut state = self.lane.state.clone().lock_owned().await;
                    if state.group.as_ref().is_some_and(|g| Arc::ptr_eq(g, &self.group)) {
                        state.end_group().await;
                    }
                }
            }
        };
        match outcome {
            Ok(written) => Left::Committed(written.rows.get(&id).cloned()),
            Err(NotCommitted::LeasesLost(ids)) if ids.contains(&id) => Left::LeaseLost,
            Err(NotCommitted::LeasesLost(ids)) => Left::Aborted(format!("{} other step(s) of its shared transaction lost their lease", ids.len())),
            Err(NotCommitted::Aborted(why)) => Left::Aborted(why),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            state.poisoned = true;
            // Roll back now rather than at the lane's next use: the group's
            // row locks must not outlive the step that failed.
            tokio::spawn(async move { state.end_group().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::postgres::PgPoolOptions;

    use super::*;
    use crate::testing::TestDb;

    struct Setup {
        _db: TestDb,
        pool: PgPool,
        lanes: Lanes,
    }

    async fn setup() -> Setup {
        let db = TestDb::new().await;
        sqlx::query("CREATE TABLE shared_tx_test (who text PRIMARY KEY)").execute(&db.pool).await.unwrap();
        // Four connections: one lane.
        let pool = PgPoolOptions::new().max_connections(4).connect(&db.url()).await.unwrap();
        let lanes = Lanes::new(&pool);
        assert_eq!(lanes.lanes.len(), 1);
        Setup { _db: db, pool, lanes }
    }

    /// A strand leased by this test, and the write of a step of it that hops.
    async fn leased_step(pool: &PgPool) -> StepWrite {
        let id = Uuid::new_v4();
        let mut conn = pool.acquire().await.unwrap();
        strand::insert_many(&mut conn, None, "Test::P", "A", &[id], &[json!([{}])]).await.unwrap();
        let terms = strand::LeaseTerms { lease_secs: 60.0 };
        let leased = strand::claim_one(&mut conn, id, terms, "test", false).await.unwrap().expect("leased");
        StepWrite {
            id,
            lease: leased.strand.lease,
            prog: "Test::P".into(),
            label: "B".into(),
            stack: Some(json!([{}])),
            retval: None,
            leased_schedule: leased.strand.schedule,
            release_after: Some(60.0),
        }
    }

    async fn write(member: &mut Member, who: &str) {
        sqlx::query("INSERT INTO shared_tx_test VALUES ($1)").bind(who).execute(member.conn()).await.unwrap();
    }

    async fn written(pool: &PgPool) -> Vec<String> {
        sqlx::query_scalar("SELECT who FROM shared_tx_test ORDER BY who").fetch_all(pool).await.unwrap()
    }

    async fn label_of(pool: &PgPool, id: Uuid) -> String {
        sqlx::query_scalar("SELECT label FROM strand WHERE id = $1").bind(id).fetch_one(pool).await.unwrap()
    }

    /// `first` has written "a" and is about to leave while `second` waits
    /// for the lane, so `first` leaves the commit to `second`'s group.
    async fn two_in_one_group(lanes: &Lanes) -> (Member, tokio::task::JoinHandle<Member>) {
        let mut first = lanes.join().await.unwrap();
        write(&mut first, "a").await;
        let lane = lanes.lanes[0].clone();
        let second = tokio::spawn(async move { lane.join().await.unwrap() });
        while lanes.lanes[0].wanting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        (first, second)
    }

    #[tokio::test]
    async fn steps_in_one_group_commit_together_with_their_strand_rows_when_the_last_leaves() {
        let t = setup().await;
        let (a, b) = (leased_step(&t.pool).await, leased_step(&t.pool).await);
        let (first, second) = two_in_one_group(&t.lanes).await;
        let first = tokio::spawn(first.commit(StrandWrite::Step(a.clone())));
        let mut second = second.await.unwrap();
        write(&mut second, "b").await;
        assert!(written(&t.pool).await.is_empty(), "nothing is visible before the group commits");
        assert_eq!(label_of(&t.pool, a.id).await, "A", "nor the first step's strand write");
        assert!(!first.is_finished(), "the first step waits for its group's commit");
        assert!(matches!(second.commit(StrandWrite::Step(b.clone())).await, Left::Committed(Some(row)) if row.id == b.id));
        assert!(matches!(first.await.unwrap(), Left::Committed(Some(row)) if row.id == a.id));
        assert_eq!(written(&t.pool).await, vec!["a", "b"]);
        assert_eq!((label_of(&t.pool, a.id).await, label_of(&t.pool, b.id).await), ("B".into(), "B".into()));
    }

    #[tokio::test]
    async fn a_member_dropped_after_writing_rolls_back_its_group_and_tells_the_others() {
        let t = setup().await;
        let a = leased_step(&t.pool).await;
        let (first, second) = two_in_one_group(&t.lanes).await;
        let first = tokio::spawn(first.commit(StrandWrite::Step(a.clone())));
        let mut second = second.await.unwrap();
        write(&mut second, "b").await;
        drop(second); // its label failed, or a timeout dropped its step
        assert!(matches!(first.await.unwrap(), Left::Aborted(why) if why.contains("another step")));
        assert!(written(&t.pool).await.is_empty(), "neither write committed");
        assert_eq!(label_of(&t.pool, a.id).await, "A", "nor the innocent step's strand write");

        // The lane is usable again, in a fresh transaction.
        let c = leased_step(&t.pool).await;
        let mut third = t.lanes.join().await.unwrap();
        write(&mut third, "c").await;
        assert!(matches!(third.commit(StrandWrite::Step(c)).await, Left::Committed(Some(_))));
        assert_eq!(written(&t.pool).await, vec!["c"]);
    }

    #[tokio::test]
    async fn a_lost_lease_in_a_group_commits_nothing_and_only_its_owner_is_told_lease_lost() {
        let t = setup().await;
        let (a, mut b) = (leased_step(&t.pool).await, leased_step(&t.pool).await);
        b.lease -= chrono::Duration::seconds(1); // as if another worker had taken b over
        let (first, second) = two_in_one_group(&t.lanes).await;
        let first = tokio::spawn(first.commit(StrandWrite::Step(a.clone())));
        let mut second = second.await.unwrap();
        write(&mut second, "b").await;
        assert_eq!(second.commit(StrandWrite::Step(b.clone())).await, Left::LeaseLost);
        assert!(matches!(first.await.unwrap(), Left::Aborted(why) if why.contains("lost their lease")));
        assert!(written(&t.pool).await.is_empty(), "the lost step's write did not commit, nor its neighbour's");
        assert_eq!((label_of(&t.pool, a.id).await, label_of(&t.pool, b.id).await), ("A".into(), "A".into()));
    }

    #[tokio::test]
    async fn a_statement_error_poisons_the_group_even_if_the_label_swallows_it() {
        let t = setup().await;
        let a = leased_step(&t.pool).await;
        let mut member = t.lanes.join().await.unwrap();
        write(&mut member, "a").await;
        let duplicate = sqlx::query("INSERT INTO shared_tx_test VALUES ('a')").execute(member.conn()).await;
        assert!(duplicate.is_err());
        assert!(matches!(member.commit(StrandWrite::Step(a.clone())).await, Left::Aborted(_)));
        assert!(written(&t.pool).await.is_empty());
        assert_eq!(label_of(&t.pool, a.id).await, "A");
    }
}

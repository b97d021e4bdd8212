//! The step context: everything a label may touch during its one step.
//!
//! A label gets its typed frame (`cx.frame`), a read connection given back
//! at once (`cx.read()`), the step's transaction (`cx.tx`, for the prog's own
//! writes: they commit or roll back with the step), the semaphores as they
//! were when the step began, and the verbs that act on other strands: `bud`,
//! `reap`, `incr`. Nothing here reaches the strand table directly; the
//! runner writes the strand row at the end.
//!
//! A label that talks to a host reads first, asks the host holding nothing,
//! then writes (see [`crate::remote`]): the transaction begins on first use
//! and stays open until the step ends, so remote calls come before it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_models::strand;
use skein_models::{semaphore, Ubid, UbidType};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::prog::{hop, nap, output_of, Label, Prog, Semaphore, Signal, Step};
use crate::shared_tx::{Lanes, Member};
use crate::stack::SUBJECT_ID;

/// Shared resources a runner hands to every step (an SSH pool, a secrets
/// key...), looked up by type with `cx.resource::<T>()`.
#[derive(Default, Clone)]
pub struct Resources(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Resources {
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// A deadline change a label asked for, applied to its frame when the step ends.
#[derive(Clone, Debug)]
pub(crate) enum DeadlineChange {
    Register { target: &'static str, within: Duration },
    Unregister,
}

/// The untyped state of one step, owned by the runner.
pub(crate) struct StepState {
    pub id: Uuid,
    pub subject_id: Uuid,
    pub retval: Option<Value>,
    pub sems: Vec<(Uuid, String)>,
    pub decrs: Vec<String>,
    pub deadline: Option<DeadlineChange>,
    pub budded: Vec<Uuid>,
    pub ends_at: Instant,
    pub children_nap: f64,
    pub resources: Arc<Resources>,
}

/// The step's transaction, begun on first use. A label that never touches
/// the database costs no transaction of its own: its strand write is
/// group-committed with other steps'. One that writes joins a transaction
/// shared with other writing steps (see [`crate::shared_tx`]), or, when
/// retried after its group was aborted, a private one.
pub struct Tx<'a> {
    pool: &'a PgPool,
    open: &'a mut StepTx,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(pool: &'a PgPool, open: &'a mut StepTx) -> Self {
        Tx { pool, open }
    }

    /// The connection of the step's transaction: `.execute(cx.tx.conn().await?)`.
    /// It stays open until the step ends: make remote calls before this.
    pub async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let conn = self.open.conn(self.pool).await?;
        crate::remote::tx_begun();
        Ok(conn)
    }
}

/// Where a step's writes go, once it has any.
pub(crate) enum StepTx {
    /// Nothing written yet; the first write joins these lanes, or (None)
    /// begins a private transaction.
    None(Option<Arc<Lanes>>),
    /// A transaction of its own.
    Private(Transaction<'static, Postgres>),
    /// A place in a shared transaction.
    Shared(Member),
}

impl StepTx {
    pub fn is_open(&self) -> bool {
        !matches!(self, StepTx::None(_))
    }

    /// The open transaction's connection, begun (or joined) if there is none yet.
    pub async fn conn(&mut self, pool: &PgPool) -> Result<&mut PgConnection, sqlx::Error> {
        if let StepTx::None(lanes) = self {
            *self = match lanes {
                Some(lanes) => StepTx::Shared(lanes.join().await?),
                None => StepTx::Private(crate::pool::begin(pool).await?),
            };
        }
        Ok(match self {
            StepTx::Private(tx) => tx,
            StepTx::Shared(member) => member.conn(),
            StepTx::None(_) => unreachable!("just begun"),
        })
    }
}

/// A pooled connection for a label's reads, given back to the pool when
/// dropped. Reads here are not in the step's transaction: they see what is
/// committed now, not this step's own writes.
pub struct Read {
    conn: PoolConnection<Postgres>,
}

impl std::ops::Deref for Read {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Read {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for Read {
    fn drop(&mut self) {
        crate::remote::reads_held(-1);
    }
}

/// What a label sees. `P` is the prog running, so `cx.frame` is its frame type.
pub struct Ctx<'a, P: Prog> {
    /// This prog's data in the top stack frame; written back when the step succeeds.
    pub frame: P::Frame,
    /// The step's transaction, for the prog's own rows: `.execute(cx.tx.conn().await?)`.
    /// It commits with the step, or rolls back if the label fails.
    pub tx: Tx<'a>,
    st: &'a mut StepState,
    _prog: PhantomData<fn() -> P>,
}

impl<'a, P: Prog> Ctx<'a, P> {
    pub(crate) fn new(frame: P::Frame, tx: Tx<'a>, st: &'a mut StepState) -> Self {
        Ctx { frame, tx, st, _prog: PhantomData }
    }

    /// A connection for reads, given back when the guard is dropped: load
    /// what the label needs, drop it, then ask the host.
    /// `let vm = vm::get(&mut *cx.read().await?, id).await?;`
    pub async fn read(&self) -> Result<Read, sqlx::Error> {
        let conn = crate::pool::acquire(self.tx.pool).await?;
        crate::remote::reads_held(1);
        Ok(Read { conn })
    }

    /// This strand's id.
    pub fn id(&self) -> Ubid {
        Ubid::from_uuid(self.st.id)
    }

    /// The resource this strand drives: the strand's own id for a top-level
    /// strand, or the `subject_id` its frame carries (children inherit it).
    pub fn subject_id(&self) -> Ubid {
        Ubid::from_uuid(self.st.subject_id)
    }

    /// What the sub-prog `Q` this label pushed returned, until the next hop:
    /// `None` before it has popped. A value that is not a `Q::Output` fails
    /// the step, saying what came back.
    pub fn retval<Q: Prog>(&self) -> anyhow::Result<Option<Q::Output>> {
        let Some(value) = &self.st.retval else { return Ok(None) };
        let output = output_of::<Q>(value, || format!("the sub-prog {} pushed", P::NAME))?;
        Ok(Some(output))
    }

    /// Time left before this step is abandoned. Bound every remote call by it.
    pub fn time_left(&self) -> Duration {
        self.st.ends_at.saturating_duration_since(Instant::now())
    }

    /// A shared resource the runner was started with.
    pub fn resource<T: Any + Send + Sync>(&self) -> anyhow::Result<&T> {
        self.st
            .resources
            .get::<T>()
            .ok_or_else(|| anyhow::anyhow!("this runner has no {} resource", std::any::type_name::<T>()))
    }

    /// Whether `sem` was incremented when this step began.
    pub fn is_set(&self, sem: P::Sem) -> bool {
        self.st.sems.iter().any(|(_, n)| n == sem.name())
    }

    /// Forget `sem`: the increments this step saw are deleted when it commits;
    /// one that arrives meanwhile survives for the next step.
    pub fn decr(&mut self, sem: P::Sem) {
        if !self.st.decrs.iter().any(|d| d == sem.name()) {
            self.st.decrs.push(sem.name().to_string());
        }
    }

    /// `is_set` and `decr` in one: true if `sem` was set, and it is now consumed.
    pub fn take(&mut self, sem: P::Sem) -> bool {
        let set = self.is_set(sem);
        if set {
            self.decr(sem);
        }
        set
    }

    /// Set `signal` on another strand (`vm::Sem::Checkup`, `Signal::DESTROY`)
    /// and wake it, when this step commits. False if that strand is gone.
    pub async fn incr(&mut self, strand: Ubid, signal: impl Into<Signal>) -> anyhow::Result<bool> {
        Ok(semaphore::incr(self.tx.conn().await?, strand.uuid(), signal.into().name()).await?)
    }

    /// Start a child strand running the prog that owns `label`, runnable as
    /// soon as this step commits. It drives the same subject as this strand.
    pub async fn bud<L: Label>(&mut self, frame: <L::Prog as Prog>::Frame, label: L) -> anyhow::Result<Ubid> {
        Ok(self.bud_many(std::iter::once(frame), label).await?[0])
    }

    /// Start many children at `label` in one statement (a fan-out of thousands).
    pub async fn bud_many<L: Label>(
        &mut self,
        frames: impl IntoIterator<Item = <L::Prog as Prog>::Frame>,
        label: L,
    ) -> anyhow::Result<Vec<Ubid>> {
        let subject = Value::String(self.subject_id().uuid().to_string());
        let mut ids = Vec::new();
        let mut stacks = Vec::new();
        for frame in frames {
            let mut data = crate::enqueue::frame_object::<L::Prog>(frame)?;
            data.insert(SUBJECT_ID.into(), subject.clone());
            ids.push(Ubid::generate(UbidType::Strand).uuid());
            stacks.push(Value::Array(vec![Value::Object(data)]));
        }
        let tx = self.tx.conn().await?;
        strand::insert_many(&mut *tx, Some(self.st.id), <L::Prog as Prog>::NAME, label.name(), &ids, &stacks).await?;
        if self.st.budded.is_empty() && !ids.is_empty() {
            strand::notify_due(tx).await?;
        }
        self.st.budded.extend(&ids);
        Ok(ids.into_iter().map(Ubid::from_uuid).collect())
    }

    /// Collect exited children, all running `Q`: each one's output, with the
    /// child deleted (and its semaphores). Children still running, or still
    /// holding a lease, are left alone and counted in `running`. A child of
    /// another prog, or whose exit value is not a `Q::Output`, fails the step
    /// (and so deletes nothing), naming the child and what it returned.
    pub async fn reap<Q: Prog>(&mut self) -> anyhow::Result<Reaped<Q>> {
        let (exited, running) = strand::reap(self.tx.conn().await?, self.st.id).await?;
        let mut children = Vec::with_capacity(exited.len());
        for child in exited {
            let id = Ubid::from_uuid(child.id);
            anyhow::ensure!(
                child.prog == Q::NAME,
                "{} reaped child strand {id}, which runs {}, not {}: reap it as cx.reap::<{}>()",
                P::NAME,
                child.prog,
                Q::NAME,
                child.prog
            );
            let output = output_of::<Q>(&child.exitval, || format!("child strand {id} of {}", P::NAME))?;
            children.push(Child { id, output });
        }
        Ok(Reaped { exited: children, running, children_nap: self.st.children_nap })
    }

    /// Raise a page for operators now, on its own connection: it stands even
    /// if this step then fails. A tag names one problem; raising an open tag
    /// again does nothing. True if the page is new.
    pub async fn raise_page(&mut self, tag: &str, summary: &str, details: &Value) -> anyhow::Result<bool> {
        let mut conn = crate::pool::acquire(self.tx.pool).await?;
        Ok(skein_models::page::raise(&mut conn, tag, summary, "error", details).await?)
    }

    /// Resolve the open page with this tag, if any (on its own connection).
    pub async fn resolve_page(&mut self, tag: &str) -> anyhow::Result<bool> {
        let mut conn = crate::pool::acquire(self.tx.pool).await?;
        Ok(skein_models::page::resolve(&mut conn, tag).await?)
    }

    /// Raise a page if this frame has not reached `target` within `within`.
    /// Reaching the label, popping the frame, or `unregister_deadline` clears it.
    pub fn register_deadline(&mut self, target: P::Label, within: Duration) {
        self.st.deadline = Some(DeadlineChange::Register { target: target.name(), within });
    }

    pub fn unregister_deadline(&mut self) {
        self.st.deadline = Some(DeadlineChange::Unregister);
    }
}

/// A child that exited, and its output.
#[derive(Debug)]
pub struct Child<O> {
    pub id: Ubid,
    pub output: O,
}

/// What `cx.reap::<Q>()` found.
#[derive(Debug)]
pub struct Reaped<Q: Prog> {
    /// Children that exited, now deleted, with their outputs.
    pub exited: Vec<Child<Q::Output>>,
    /// Children still running.
    pub running: i64,
    children_nap: f64,
}

impl<Q: Prog> Reaped<Q> {
    /// Hop to `next` once no child is left; until then sleep. The last child to
    /// exit wakes this strand, so the nap is only a fallback and can be long.
    pub fn hop_when_done<P: Prog>(&self, next: P::Label) -> Step<P> {
        if self.running == 0 {
            hop(next)
        } else {
            nap(self.children_nap)
        }
    }
}

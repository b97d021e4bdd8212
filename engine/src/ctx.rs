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
use skein_models::strand::{self, Exited};
use skein_models::{semaphore, Ubid, UbidType};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::prog::{hop, nap, Label, Prog, Step};
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

    /// The value the last popped sub-prog returned, until the next hop.
    pub fn retval(&self) -> Option<&Value> {
        self.st.retval.as_ref()
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

    /// Whether `name` was incremented when this step began.
    pub fn is_set(&self, name: &str) -> bool {
        debug_assert!(
            name == "destroy" || P::SEMAPHORES.contains(&name),
            "{} reads semaphore {name:?} but does not declare it in Prog::SEMAPHORES",
            P::NAME
        );
        self.st.sems.iter().any(|(_, n)| n == name)
    }

    /// Forget `name`: the increments this step saw are deleted when it commits;
    /// one that arrives meanwhile survives for the next step.
    pub fn decr(&mut self, name: &str) {
        if !self.st.decrs.iter().any(|d| d == name) {
            self.st.decrs.push(name.to_string());
        }
    }

    /// `is_set` and `decr` in one: true if `name` was set, and it is now consumed.
    pub fn take(&mut self, name: &str) -> bool {
        let set = self.is_set(name);
        if set {
            self.decr(name);
        }
        set
    }

    /// Increment `name` on another strand and wake it, when this step commits.
    /// False if that strand is gone.
    pub async fn incr(&mut self, strand: Ubid, name: &str) -> anyhow::Result<bool> {
        Ok(semaphore::incr(self.tx.conn().await?, strand.uuid(), name).await?)
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

    /// Collect exited children: each one's exit value, with the child deleted
    /// (and its semaphores). Children still running, or still holding a
    /// lease, are left alone and counted in `running`.
    pub async fn reap(&mut self) -> anyhow::Result<Reaped> {
        let (exited, running) = strand::reap(self.tx.conn().await?, self.st.id).await?;
        Ok(Reaped { exited, running, children_nap: self.st.children_nap })
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

/// What `cx.reap()` found.
#[derive(Debug)]
pub struct Reaped {
    /// Children that exited, now deleted, with their exit values.
    pub exited: Vec<Exited>,
    /// Children still running.
    pub running: i64,
    children_nap: f64,
}

impl Reaped {
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

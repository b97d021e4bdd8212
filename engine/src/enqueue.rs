//! Starting strands and signalling them from outside a step: the API, the
//! console and tests use these. Each takes a connection, so a caller can make
//! its own rows and the strand that drives them in one transaction.

use serde_json::Value;
use skein_models::strand::{self, NewStrand};
use skein_models::{semaphore, Ubid, UbidType};
use sqlx::PgConnection;

use crate::prog::{Label, Prog, Signal};

/// Start a top-level strand at `label` with a fresh strand id.
pub async fn start<L: Label>(conn: &mut PgConnection, frame: <L::Prog as Prog>::Frame, label: L) -> anyhow::Result<Ubid> {
    let id = Ubid::generate(UbidType::Strand);
    start_for(conn, id, frame, label).await?;
    Ok(id)
}

/// Start the strand that drives `subject`: it takes the subject's id, so
/// `vm.id` finds its strand and the strand finds its VM in one lookup.
pub async fn start_for<L: Label>(
    conn: &mut PgConnection,
    subject: Ubid,
    frame: <L::Prog as Prog>::Frame,
    label: L,
) -> anyhow::Result<()> {
    let stack = Value::Array(vec![Value::Object(frame_object::<L::Prog>(frame)?)]);
    let prog = <L::Prog as Prog>::NAME;
    strand::insert(conn, &NewStrand { id: subject.uuid(), parent_id: None, prog, label: label.name(), stack: &stack }).await?;
    strand::notify_due(conn).await?;
    Ok(())
}

/// Start many top-level strands at `label` in one statement.
pub async fn start_many<L: Label>(
    conn: &mut PgConnection,
    frames: impl IntoIterator<Item = <L::Prog as Prog>::Frame>,
    label: L,
) -> anyhow::Result<Vec<Ubid>> {
    let mut ids = Vec::new();
    let mut stacks = Vec::new();
    for frame in frames {
        ids.push(Ubid::generate(UbidType::Strand).uuid());
        stacks.push(Value::Array(vec![Value::Object(frame_object::<L::Prog>(frame)?)]));
    }
    strand::insert_many(conn, None, <L::Prog as Prog>::NAME, label.name(), &ids, &stacks).await?;
    strand::notify_due(conn).await?;
    Ok(ids.into_iter().map(Ubid::from_uuid).collect())
}

/// A prog's frame as the json object stored in the stack.
pub(crate) fn frame_object<P: Prog>(frame: P::Frame) -> anyhow::Result<serde_json::Map<String, Value>> {
    match serde_json::to_value(frame)? {
        Value::Null => Ok(Default::default()),
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("the frame of {} must serialize to a json object", P::NAME),
    }
}

/// Set `signal` on `strand` (a prog's semaphore such as `host::Sem::Drain`,
/// or `Signal::DESTROY`) and wake it. False if the strand is gone.
pub async fn incr(conn: &mut PgConnection, strand: Ubid, signal: impl Into<Signal>) -> anyhow::Result<bool> {
    Ok(semaphore::incr(conn, strand.uuid(), signal.into().name()).await?)
}

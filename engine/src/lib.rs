//! skein-engine: the prog API and the step runner.
//!
//! - [`prog`]: what a prog author writes: `Prog`, `labels!`, `semaphores!`, `hop`/`nap`/`push`/`pop`.
//! - [`ctx`]: what a label sees during its step: frame, reads, transaction, typed semaphores, `bud`, typed `reap` and `retval`.
//! - [`remote`]: remote work holds no database; the check remote clients call.
//! - [`dispatch`]: the claim loop of `respirate`: batches, wake-ups, shutdown.
//! - [`liveness`]: who is alive; a dead or hung worker's claims are broken at once.
//! - [`pool`]: the connection pool, with its waiters counted.
//! - [`runner`]: leases strands and runs their steps exactly as `docs/engine.md` says.
//! - [`registry`]: stored prog names back to Rust types.
//! - [`stack`]: the jsonb stack and the engine's keys in it.
//! - [`enqueue`]: starting and signalling strands from outside.
//! - [`testing`]: a fresh database per test and one-line step assertions.
//! - [`error`]: how a step fails (`StepError`); `commit` (private): the group
//!   committer that writes the strand rows of pure steps together.

mod commit;
pub mod ctx;
pub mod dispatch;
pub mod enqueue;
pub mod error;
pub mod liveness;
pub mod pool;
pub mod prog;
pub mod registry;
pub mod remote;
pub mod runner;
mod shared_tx;
pub mod stack;
pub mod testing;

pub use ctx::{Child, Ctx, Read, Reaped, Resources};
pub use error::StepError;
pub use prog::{hop, nap, pop, push, Flow, Label, Msg, NoFrame, NoSems, Prog, Semaphore, Signal, Step};
pub use dispatch::{DispatchConfig, Dispatcher};
pub use liveness::LivenessConfig;
pub use registry::Registry;
pub use runner::{Claim, Config, Outcome, Runner, StepReport};
pub use skein_models::{Ubid, UbidType};

/// Everything a prog file needs: `use skein_engine::prelude::*;`
pub mod prelude {
    pub use crate::ctx::{Ctx, Reaped};
    pub use crate::prog::{hop, nap, pop, push, Label, Msg, NoFrame, NoSems, Prog, Semaphore, Signal, Step};
    pub use crate::{labels, semaphores};
    pub use serde::{Deserialize, Serialize};
    pub use async_trait::async_trait;
    pub use serde_json::{json, Value};
    pub use skein_models::Ubid;
}

//! Why a step failed. Every variant fails only its own strand: the runner
//! records the message on the row, backs off, and goes on serving others.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("unknown prog {prog:?}: no prog of that name is registered in this worker (registered: {known})")]
    UnknownProg { prog: String, known: String },
    #[error("unknown label {label:?} for prog {prog} (its labels: {known})")]
    UnknownLabel { prog: String, label: String, known: String },
    #[error("corrupt stack: {0}")]
    CorruptStack(String),
    #[error("the top frame does not fit {prog}'s frame type: {error}")]
    BadFrame { prog: String, error: String },
    #[error("{0:#}")]
    Label(anyhow::Error),
    #[error("step abandoned after its time budget of {0:?}")]
    Overran(Duration),
    #[error("the lease was lost (it expired and another worker took the strand): nothing was committed")]
    LeaseLost,
    #[error("database (group commit): {0}")]
    GroupCommit(String),
    #[error("its shared transaction did not commit ({0}); run again in a transaction of its own")]
    GroupAborted(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

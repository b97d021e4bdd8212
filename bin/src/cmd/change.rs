//! What every change made from the command line shares: it is confirmed
//! first (the console's rule: `--yes`; a y/N prompt on a terminal; refused
//! from a script without `--yes`), then made and audited in one
//! transaction; and any file it reads is bounded in size before a byte is
//! read.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;
use skein_models::audit;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The most a key file (`--key-file`, `--public-key @file`) may hold.
pub const KEY_FILE_MAX: u64 = 64 * 1024;

pub use crate::cmd::session::confirm;

/// A change that has been confirmed: its transaction, to which the audit
/// row is added by [`Change::commit`]. Dropped without a commit, nothing
/// of it (change or audit) is written.
pub struct Change {
    pub tx: Transaction<'static, Postgres>,
    operator: String,
}

impl Change {
    /// Confirm `what`, then begin the change's transaction.
    pub async fn begin(pool: &PgPool, operator: &str, yes: bool, what: &str) -> anyhow::Result<Change> {
        confirm(yes, what)?;
        Ok(Change { tx: pool.begin().await?, operator: operator.to_string() })
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Write the audit row (`action` on `target`) and commit it with the change.
    pub async fn commit(mut self, action: &str, target: Option<Uuid>, detail: &Value) -> anyhow::Result<()> {
        audit::record(&mut self.tx, &self.operator, action, target, detail).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Read a small text file, refusing (before reading it) anything that is
/// not a regular file of at most `max` bytes: `/dev/zero`, a FIFO, a
/// 200 MB file are refused at once. The read itself is bounded too, in case
/// the file grows meanwhile.
pub fn read_small_file(path: &Path, max: u64, flag: &str) -> anyhow::Result<String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("{flag}: reading {shown}"))?;
    if !meta.is_file() {
        bail!("{flag}: {shown} is not a regular file");
    }
    if meta.len() > max {
        bail!("{flag}: {shown} is {} bytes; a key file is at most {max} bytes", meta.len());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .with_context(|| format!("{flag}: reading {shown}"))?;
    if text.len() as u64 > max {
        bail!("{flag}: {shown} is larger than {max} bytes");
    }
    Ok(text)
}

//! The one page for VMs that wait for a host with room (issue 11, item 10).
//!
//! One cause, one page: however many VMs wait, an operator sees a single
//! page (`vms-waiting-for-capacity`) saying in words how many wait, the
//! largest need and since when. It is raised once a VM has waited
//! `wait_page_secs`; while open it is kept up to date; it is resolved when
//! no VM waits any more. An operator who resolves it while VMs still wait
//! is not paged again for those VMs: only a VM that began to wait after
//! that resolve (and has waited `wait_page_secs`) raises it again.
//!
//! Everything here runs in the calling step's transaction, under one lock
//! (`capacity::lock_waiting`), so the page changes commit with the
//! placements and waits they describe.

use chrono::{DateTime, Utc};
use serde_json::json;
use skein_models::capacity::{self, Size, Waiting};
use skein_models::page;
use sqlx::PgConnection;

pub const TAG: &str = "vms-waiting-for-capacity";

/// What the page says: "3 VMs wait for a host with room; the largest
/// needs 2 vCPU, 4096 MiB memory, 10240 MiB disk; waiting since ...".
pub fn summary(w: &Waiting) -> String {
    let vms = if w.count == 1 { "1 VM waits".to_string() } else { format!("{} VMs wait", w.count) };
    let largest = if w.count == 1 { "it needs" } else { "the largest needs" };
    format!(
        "{vms} for a host with room; {largest} {}; waiting since {}",
        need(w.largest),
        w.since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// A size in words: "2 vCPU, 4096 MiB memory, 10240 MiB disk".
pub fn need(s: Size) -> String {
    format!("{} vCPU, {} MiB memory, {} MiB disk", s.cores, s.memory_mib, s.disk_mib)
}

/// Bring the page in line with the VMs waiting now (call after this step's
/// own change of VM state). Returns when the caller should look again to
/// raise it (a VM will have waited long enough then), if that is ahead.
pub async fn update(conn: &mut PgConnection, wait_page_secs: u64) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    capacity::lock_waiting(conn).await?;
    let open = page::open_with_tag(conn, TAG).await?;
    let after = match open {
        Some(_) => None,
        None => page::last_resolved(conn, TAG).await?,
    };
    let Some(now) = capacity::waiting(conn, after).await? else {
        page::resolve(conn, TAG).await?;
        return Ok(None);
    };
    let details = json!({
        "waiting": now.count,
        "largest": {"cores": now.largest.cores, "memory_mib": now.largest.memory_mib, "disk_mib": now.largest.disk_mib},
        "since": now.since,
    });
    if open.is_some() {
        page::refresh(conn, TAG, &summary(&now), &details).await?;
        return Ok(None);
    }
    // Resolved (or never raised): only VMs that began to wait since count.
    let Some(oldest) = now.oldest_after else {
        return Ok(None);
    };
    let due = oldest + chrono::Duration::seconds(wait_page_secs as i64);
    if due > Utc::now() {
        return Ok(Some(due));
    }
    page::raise(conn, TAG, &summary(&now), "error", &details).await?;
    Ok(None)
}

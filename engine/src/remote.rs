//! Remote work holds no database (R19 in `docs/engine.md`).
//!
//! A label is shaped read, then ask the host, then write: it reads on a
//! pooled connection it gives back at once (`cx.read()`), makes its remote
//! calls holding nothing, and writes through `cx.tx` at the end, where the
//! writes commit with the strand update. A host that hangs for 30 s then
//! costs the rest of the fleet nothing.
//!
//! The wrong shape fails loudly in debug and test builds: the runner runs
//! each label under a step probe (a task-local), every remote client calls
//! [`check`] before it sends anything, and a call made while the step holds
//! its transaction or a read connection fails the step, naming the prog and
//! the label. Release builds compile all of this away.

/// A remote call was made while the step held the database.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HeldDatabase(pub String);

/// Call before every remote call (SSH, HTTP to a host...). In a step of a
/// debug build, an error if the step holds its transaction or a read
/// connection; it also fails the step even if the label ignores the error.
/// Outside a step, and in release builds, it does nothing. `what` names the
/// call, and is only built when there is something to report.
#[inline]
pub fn check(what: impl FnOnce() -> String) -> Result<(), HeldDatabase> {
    #[cfg(debug_assertions)]
    {
        probe::check(what)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = what;
        Ok(())
    }
}

/// Run a label under a step probe (`tx_open`: the runner began the step's
/// transaction before it); the second value is the first remote call it
/// made while holding the database, if any (always None in release).
pub(crate) async fn watch<F: std::future::Future>(
    prog: &str,
    label: &str,
    tx_open: bool,
    label_run: F,
) -> (F::Output, Option<HeldDatabase>) {
    #[cfg(debug_assertions)]
    {
        probe::watch(prog, label, tx_open, label_run).await
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = (prog, label, tx_open);
        (label_run.await, None)
    }
}

/// The step's transaction was begun (it stays open until the step ends).
#[inline]
pub(crate) fn tx_begun() {
    #[cfg(debug_assertions)]
    probe::with(|p| p.tx_open.store(true, std::sync::atomic::Ordering::Relaxed));
}

/// A read connection was taken (`+1`) or given back (`-1`).
#[inline]
pub(crate) fn reads_held(delta: isize) {
    #[cfg(debug_assertions)]
    probe::with(|p| {
        p.reads.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    });
    #[cfg(not(debug_assertions))]
    let _ = delta;
}

#[cfg(debug_assertions)]
mod probe {
    use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::HeldDatabase;

    /// What the runner knows of the label running now.
    pub(super) struct Probe {
        prog: String,
        label: String,
        pub tx_open: AtomicBool,
        pub reads: AtomicIsize,
        first: Mutex<Option<HeldDatabase>>,
    }

    tokio::task_local! {
        static PROBE: Arc<Probe>;
    }

    pub(super) fn with(f: impl FnOnce(&Probe)) {
        let _ = PROBE.try_with(|p| f(p));
    }

    pub(super) fn check(what: impl FnOnce() -> String) -> Result<(), HeldDatabase> {
        let Ok(found) = PROBE.try_with(|p| {
            let holding = match (p.tx_open.load(Ordering::Relaxed), p.reads.load(Ordering::Relaxed)) {
                (true, _) => "the step's database transaction (cx.tx)",
                (false, n) if n > 0 => "a database read connection (cx.read())",
                _ => return None,
            };
            let held = HeldDatabase(format!(
                "{} at {} made a remote call ({}) while holding {holding}: read first, ask the host, then write",
                p.prog,
                p.label,
                what()
            ));
            p.first.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| held.clone());
            Some(held)
        }) else {
            return Ok(());
        };
        found.map_or(Ok(()), Err)
    }

    pub(super) async fn watch<F: std::future::Future>(
        prog: &str,
        label: &str,
        tx_open: bool,
        label_run: F,
    ) -> (F::Output, Option<HeldDatabase>) {
        let probe = Arc::new(Probe {
            prog: prog.to_string(),
            label: label.to_string(),
            tx_open: AtomicBool::new(tx_open),
            reads: AtomicIsize::new(0),
            first: Mutex::new(None),
        });
        let out = PROBE.scope(probe.clone(), label_run).await;
        let first = probe.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        (out, first)
    }
}

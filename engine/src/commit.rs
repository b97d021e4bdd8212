//! Group commit: the strand writes of pure steps (labels that did not touch
//! the database), from every task of a runner, written together.
//!
//! A pure step's whole transaction is its strand row update, so many of them
//! can share one statement: each row is still fenced on its own lease and
//! written atomically. Writes queue while flushes are in flight and go out in
//! the next one, so under load one statement carries many steps, and when
//! idle a write goes out at once (no timer, no added latency). A few flushes
//! run at once, so one flush's wait for its WAL flush overlaps the next
//! one's work; each strand is in exactly one flush, so they never conflict.
//! A flush first yields once, so that it also carries what the tasks ready
//! to run beside it write (no timer: it waits for nothing but runnable work).
//! Flushes run on the engine's warm connections (`pool::Warm`).

use std::sync::Arc;

use skein_models::strand::{self, Continued, ExitWrite, StepWrite};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::StepError;
use crate::pool::{Warm, WarmConn};

/// Where a flush answers one job: its result, or the database's error.
type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Job {
    Write(StepWrite, Reply<Option<Continued>>),
    Exit(ExitWrite, Reply<bool>),
    ChildExit(ExitWrite, Reply<bool>),
}

/// The most writes one flush carries.
const MAX_FLUSH: usize = 1024;

/// Flushes in flight at once.
const FLUSHES: usize = 3;

#[derive(Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    pub fn start(warm: Arc<Warm>) -> GroupCommit {
        let (jobs, rx) = mpsc::unbounded_channel();
        let flushing = warm.clone();
        tokio::spawn(flush_loop(
            rx,
            move |busy| warm.busy(busy),
            move |jobs| {
                let conn = flushing.reserve();
                async move { flush(conn, jobs).await }
            },
        ));
        GroupCommit { jobs }
    }

    /// Write a step; None if its lease was lost.
    pub async fn write(&self, w: StepWrite) -> Result<Option<Continued>, StepError> {
        self.ask(|reply| Job::Write(w, reply)).await
    }

    /// Exit a top-level strand; false if its lease was lost.
    pub async fn exit(&self, e: ExitWrite) -> Result<bool, StepError> {
        self.ask(|reply| Job::Exit(e, reply)).await
    }

    /// Exit a child strand (waking its parent if it was the last); false if its lease was lost.
    pub async fn exit_child(&self, e: ExitWrite) -> Result<bool, StepError> {
        self.ask(|reply| Job::ChildExit(e, reply)).await
    }

    /// Queue a job and wait for the flush that carries it.
    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StepError> {
        let stopped = || StepError::GroupCommit("committer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(StepError::GroupCommit)
    }
}

/// Take queued jobs in batches and hand each batch to `flush`, at most
/// `FLUSHES` at once. `busy(false)` is called before waiting for work, and
/// `busy(true)` once some came. `flush` is called as each batch is taken.
async fn flush_loop<B, F, Fut>(mut rx: mpsc::UnboundedReceiver<Job>, busy: B, flush: F)
where
    B: Fn(bool),
    F: Fn(Vec<Job>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(FLUSHES));
    loop {
        let first = match rx.try_recv() {
            Ok(job) => job,
            Err(_) => {
                busy(false);
                let Some(job) = rx.recv().await else { return };
                busy(true);
                job
            }
        };
        // Wait for a free slot first: jobs keep queueing meanwhile, so the
        // next flush carries everything that arrived while all were busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        // Let the tasks that are ready to run first (the rest of a claim's
        // batch, finishing their steps) queue their writes: without this, a
        // free slot flushed the first write alone, and half the flushes
        // carried one step, each paying a whole statement and commit.
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while jobs.len() < MAX_FLUSH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let flushed = flush(jobs);
        tokio::spawn(async move {
            flushed.await;
            drop(slot);
        });
    }
}

/// Write one batch of jobs and answer each.
async fn flush(mut conn: WarmConn, jobs: Vec<Job>) {
    let flush_began = std::time::Instant::now();
    let flushed = jobs.len();
    let mut writes = Vec::new();
    let mut write_replies = Vec::new();
    let mut exits = Vec::new();
    let mut exit_replies = Vec::new();
    let mut child_exits = Vec::new();
    let mut child_replies = Vec::new();
    for job in jobs {
        match job {
            Job::Write(w, reply) => {
                write_replies.push((w.id, reply));
                writes.push(w);
            }
            Job::Exit(e, reply) => {
                exit_replies.push((e.id, reply));
                exits.push(e);
            }
            Job::ChildExit(e, reply) => {
                child_replies.push((e.id, reply));
                child_exits.push(e);
            }
        }
    }
    // One connection for the whole flush, kept warm after it if nothing failed on it.
    if !child_exits.is_empty() {
        let result = async {
            let conn = conn.get().await?;
            let mut tx = conn.begin().await?;
            let (written, recheck) = strand::exit_children(&mut tx, &child_exits).await?;
            tx.commit().await?;
            for parent in recheck {
                strand::wake_parent_if_idle(conn, parent).await?;
            }
            Ok::<_, sqlx::Error>(written)
        }
        .await;
        let result = conn.check(result);
        reply_exits(child_replies, result);
    }
    if !writes.is_empty() {
        let result = async { strand::write_steps(conn.get().await?, &writes).await }.await;
        let result = conn.check(result);
        match result {
            Ok(rows) => {
                let mut rows: std::collections::HashMap<Uuid, Continued> = rows.into_iter().map(|r| (r.id, r)).collect();
                for (id, reply) in write_replies {
                    let _ = reply.send(Ok(rows.remove(&id)));
                }
            }
            Err(e) => {
                for (_, reply) in write_replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
    if !exits.is_empty() {
        let result = async { strand::exit_top_level(conn.get().await?, &exits).await }.await;
        let result = conn.check(result);
        reply_exits(exit_replies, result);
    }
    tracing::trace!(steps = flushed, micros = flush_began.elapsed().as_micros() as u64, "group commit");
}

fn reply_exits(replies: Vec<(Uuid, Reply<bool>)>, result: Result<Vec<Uuid>, sqlx::Error>) {
    match result {
        Ok(ids) => {
            let ids: std::collections::HashSet<Uuid> = ids.into_iter().collect();
            for (id, reply) in replies {
                let _ = reply.send(Ok(ids.contains(&id)));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    fn exit(n: u128) -> (Job, oneshot::Receiver<Result<bool, String>>) {
        let (reply, answer) = oneshot::channel();
        let e = ExitWrite { id: Uuid::from_u128(n), lease: chrono::Utc::now(), label: "L".into(), stack: None, exitval: Value::Null };
        (Job::Exit(e, reply), answer)
    }

    // One worker thread, as under load: a task that queues a write wakes the
    // flush loop straight after itself (tokio's LIFO slot), ahead of the
    // other tasks of the same claim that are ready to queue theirs. Every
    // task is spawned from one task on that worker, as dispatch spawns a
    // claim's steps, so all 50 are queued before the first one runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_flush_carries_the_writes_of_every_task_ready_beside_it() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let claim = async move {
            let (jobs, rx) = mpsc::unbounded_channel();
            tokio::spawn(flush_loop(rx, |_| {}, move |batch: Vec<Job>| {
                seen.lock().unwrap().push(batch.len());
                async move {
                    for job in batch {
                        if let Job::Exit(_, reply) = job {
                            let _ = reply.send(Ok(true));
                        }
                    }
                }
            }));
            let tasks: Vec<_> = (0..50)
                .map(|n| {
                    let jobs = jobs.clone();
                    tokio::spawn(async move {
                        let (job, answer) = exit(n);
                        jobs.send(job).map_err(|_| "flush loop gone").unwrap();
                        answer.await.unwrap().unwrap()
                    })
                })
                .collect();
            for t in tasks {
                assert!(t.await.unwrap());
            }
        };
        tokio::spawn(claim).await.unwrap();
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50, "every write flushed once: {sizes:?}");
        assert_eq!(sizes, vec![50], "the first flush waited for the writes of the tasks ready beside it");
    }
}

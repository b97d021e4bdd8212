//! Following a subject's strand live (`skein vm create --wait`, `skein host
//! add --wait`): one line each time its label changes, an event is recorded
//! or a step fails, until the subject gets where it was going, or clearly
//! will not.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use skein_models::inspect::{self, StrandSummary};
use skein_models::{event, vm, vm_host, Ubid};
use sqlx::{PgConnection, PgPool};

#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Follow the strand, printing each step it reaches, until done or failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (the work goes on).
    #[arg(long, default_value_t = 900)]
    pub wait_secs: u64,
    /// Stop waiting once the strand has failed this many times in a row.
    #[arg(long, default_value_t = 5)]
    pub give_up_after: i32,
}

#[derive(Clone, Copy, Debug)]
pub enum Subject {
    Vm,
    Host,
}

impl Subject {
    /// The state that means done, and the states that mean it never will be.
    fn goal(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Subject::Vm => ("running", &["destroying", "destroyed"]),
            Subject::Host => ("accepting", &["destroyed"]),
        }
    }

    async fn state(self, conn: &mut PgConnection, id: Ubid) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Subject::Vm => vm::get(conn, id.uuid()).await?.map(|v| v.state.to_string()),
            Subject::Host => vm_host::get(conn, id.uuid()).await?.map(|h| h.state.to_string()),
        })
    }
}

/// Where following ended.
pub struct Ended {
    pub id: Ubid,
    pub state: String,
    pub secs: f64,
}

impl Ended {
    pub fn summary(&self) -> String {
        format!("{} is {} after {:.1}s", self.id, self.state, self.secs)
    }
}

/// Print progress until the subject reaches its goal (Ok), or its strand
/// fails `give_up_after` times in a row, exits, or the wait runs out (Err,
/// saying what to look at). With `quiet` (JSON output), prints nothing.
pub async fn follow(pool: &PgPool, id: Ubid, subject: Subject, args: &WaitArgs, quiet: bool) -> anyhow::Result<Ended> {
    let began = Instant::now();
    let say = |line: String| {
        if !quiet {
            // An error from a host can hold anything: one line, escaped.
            println!("  {:>6.1}s  {}", began.elapsed().as_secs_f64(), crate::render::clean(&line));
        }
    };
    let (goal, never) = subject.goal();
    let mut last_label = String::new();
    let mut last_error: Option<String> = None;
    let mut seen_events = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let strand: Option<StrandSummary> = inspect::summary(&mut conn, id.uuid()).await?;
        if let Some(st) = &strand {
            let at = format!("{} at {}", st.prog, st.label);
            if at != last_label {
                say(at.clone());
                last_label = at;
            }
            if st.last_error.is_some() && st.last_error != last_error {
                say(format!("step failed (try {}): {}", st.try_, st.last_error.as_deref().unwrap_or_default()));
            }
            last_error = st.last_error.clone();
        }
        let events = event::of(&mut conn, id.uuid()).await?;
        for e in events.iter().skip(seen_events) {
            let detail = if e.detail == json!({}) { String::new() } else { format!(" {}", e.detail) };
            say(format!("event: {}{detail}", e.kind));
        }
        seen_events = events.len();
        let state = subject.state(&mut conn, id).await?.unwrap_or_else(|| "gone".into());
        drop(conn);
        let ended = || Ended { id, state: state.clone(), secs: began.elapsed().as_secs_f64() };
        if state == goal {
            say(state.clone());
            return Ok(ended());
        }
        if never.contains(&state.as_str()) {
            bail!("{id} is {state}; it will not become {goal}");
        }
        match &strand {
            None => bail!("{id}'s strand has exited while it is {state}: `skein ubid {id}` shows how it ended"),
            Some(st) if st.try_ >= args.give_up_after && st.last_error.is_some() => bail!(
                "{id}'s strand failed {} times in a row at {}: {}\nit goes on retrying; `skein strand show {id}` follows it",
                st.try_,
                st.label,
                st.last_error.as_deref().unwrap_or_default()
            ),
            _ => {}
        }
        if began.elapsed() > Duration::from_secs(args.wait_secs) {
            bail!("{id} is still {state} after {}s; the work goes on: `skein strand show {id}`", args.wait_secs);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

//! Strand commands: look (list, counts, show) and steer (incr, decr, wake,
//! reschedule, step, retry, destroy). Every change is confirmed first and
//! written to the audit trail in the same transaction as the change itself.

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skein_engine::Outcome;
use skein_models::inspect::{self, StrandFilter, StrandState, StrandSummary};
use skein_models::{archive, audit, semaphore, strand, Ubid};
use uuid::Uuid;

use super::command::{parse_duration, ListArgs, StrandCmd};
use crate::cmd::session::{confirm, Reply, Session};
use crate::render;

pub async fn run(s: &Session, cmd: StrandCmd, yes: bool) -> anyhow::Result<Reply> {
    match cmd {
        StrandCmd::List(args) => list(s, args).await,
        StrandCmd::Counts => counts(s).await,
        StrandCmd::Show { id } => show(s, &id).await,
        StrandCmd::Incr { id, semaphore } => change(s, &id, Change::Incr(semaphore), yes).await,
        StrandCmd::Decr { id, semaphore } => change(s, &id, Change::Decr(semaphore), yes).await,
        StrandCmd::Wake { id } => change(s, &id, Change::Wake, yes).await,
        StrandCmd::Reschedule { id, when } => change(s, &id, Change::Reschedule(parse_when(&when)?), yes).await,
        StrandCmd::Retry { id } => change(s, &id, Change::Retry, yes).await,
        StrandCmd::Destroy { id } => change(s, &id, Change::Incr("destroy".into()), yes).await,
        StrandCmd::Step { id } => step(s, &id, yes).await,
    }
}

/// Any UBID can name a strand: a VM's strand has the VM's id.
pub fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    Ok(id.parse::<Ubid>().map_err(|e| anyhow!("{e}"))?.uuid())
}

/// The live strand `id`, or an error that says where it went.
async fn live(s: &Session, id: &str) -> anyhow::Result<StrandSummary> {
    let uuid = parse_id(id)?;
    let mut conn = s.pool.acquire().await?;
    if let Some(found) = inspect::summary(&mut conn, uuid).await? {
        return Ok(found);
    }
    if archive::get(&mut conn, uuid).await?.is_some() {
        bail!("strand {id} has exited (it is in the archive: `strand show {id}` shows how it ended)");
    }
    bail!("no strand {id}: `strand list` shows the live ones")
}

async fn list(s: &Session, a: ListArgs) -> anyhow::Result<Reply> {
    if let Some(prog) = &a.prog {
        let labels = s.registry.labels(prog).ok_or_else(|| {
            anyhow!("unknown prog {prog:?}: one of {}", s.registry.names().collect::<Vec<_>>().join(", "))
        })?;
        if let Some(label) = a.label.as_ref().filter(|l| !labels.contains(&l.as_str())) {
            bail!("{prog} has no label {label:?}: one of {}", labels.join(", "));
        }
    } else if let Some(label) = &a.label {
        if !s.registry.names().any(|p| s.registry.labels(p).unwrap_or_default().contains(&label.as_str())) {
            bail!("no prog has a label {label:?}");
        }
    }
    if a.state == Some(StrandState::Exited) {
        return list_exited(s, a).await;
    }
    if a.since.is_some() || a.until.is_some() || a.exitval.is_some() {
        bail!("--since, --until and --exitval filter exited strands by their exit: add --state exited");
    }
    let filter = StrandFilter {
        prog: a.prog.clone(),
        label: a.label.clone(),
        state: a.state,
        min_try: a.min_try,
        parent: a.parent.as_deref().map(parse_id).transpose().context("--parent")?,
        older_than_secs: a.older_than,
        sort: a.sort,
        limit: a.limit,
        offset: (a.page - 1) * a.limit,
    };
    let (rows, total) = inspect::list(&mut *s.pool.acquire().await?, &filter).await?;
    let mut text = render::table(
        &["id", "prog", "label", "state", "schedule", "try", "last error"],
        &rows.iter().map(summary_row).collect::<Vec<_>>(),
    );
    text.push_str(&footer(rows.len(), total, &a));
    let pages = (total + a.limit - 1) / a.limit;
    Ok(Reply::new(text, json!({"strands": rows, "total": total, "page": a.page, "limit": a.limit, "pages": pages})))
}

/// "21-40 of 57; next: --page 3"
fn footer(shown: usize, total: i64, a: &ListArgs) -> String {
    let first = (a.page - 1) * a.limit + 1;
    let last = first - 1 + shown as i64;
    let pages = (total + a.limit - 1) / a.limit;
    match (shown == 0, a.page < pages) {
        (true, _) => format!("no strands on page {} ({total} match)", a.page),
        (false, true) => format!("{first}-{last} of {total}; next: --page {}", a.page + 1),
        (false, false) => format!("{first}-{last} of {total}"),
    }
}

/// Exited strands: top-level ones from the archive, children still waiting
/// for their parent from the hot table; latest exit first.
async fn list_exited(s: &Session, a: ListArgs) -> anyhow::Result<Reply> {
    if a.min_try.is_some() {
        bail!("--min-try counts failures of live strands; an exited strand has none left");
    }
    let filter = archive::ExitedFilter {
        prog: a.prog.clone(),
        label: a.label.clone(),
        parent: a.parent.as_deref().map(parse_id).transpose().context("--parent")?,
        since: a.since,
        until: a.until,
        exitval_contains: a.exitval.clone(),
        older_than_secs: a.older_than,
        limit: a.limit,
        offset: (a.page - 1) * a.limit,
    };
    let (rows, total) = archive::list_exited(&mut *s.pool.acquire().await?, &filter).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let exited = r.exited_at.map(render::relative).unwrap_or("waiting for its parent".into());
            vec![render::id(r.id), r.prog.clone(), r.label.clone(), exited, render::line(&r.exitval.to_string(), 60)]
        })
        .collect();
    let mut text = render::table(&["id", "prog", "label", "exited", "exitval"], &cells);
    text.push_str(&footer(rows.len(), total, &a));
    let pages = (total + a.limit - 1) / a.limit;
    Ok(Reply::new(text, json!({"strands": rows, "total": total, "page": a.page, "limit": a.limit, "pages": pages})))
}

fn summary_row(r: &StrandSummary) -> Vec<String> {
    vec![
        render::id(r.id),
        r.prog.clone(),
        r.label.clone(),
        r.state.clone(),
        render::relative(r.schedule),
        r.try_.to_string(),
        r.last_error.as_deref().map(|e| render::line(e, 60)).unwrap_or_default(),
    ]
}

async fn counts(s: &Session) -> anyhow::Result<Reply> {
    let rows = inspect::counts(&mut *s.pool.acquire().await?).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            let n = [c.total, c.due, c.napping, c.leased, c.failing, c.exited];
            [c.prog.clone(), c.label.clone()].into_iter().chain(n.map(|n| n.to_string())).collect()
        })
        .collect();
    let total: i64 = rows.iter().map(|c| c.total).sum();
    let mut text = render::table(&["prog", "label", "total", "due", "napping", "leased", "failing", "exited"], &cells);
    text.push_str(&format!("{total} strands"));
    Ok(Reply::new(text, json!({"counts": rows, "total": total})))
}

async fn show(s: &Session, id: &str) -> anyhow::Result<Reply> {
    let uuid = parse_id(id)?;
    let mut conn = s.pool.acquire().await?;
    let Some(st) = strand::get(&mut conn, uuid).await? else {
        return match archive::get(&mut conn, uuid).await? {
            Some(a) => {
                let text = format!(
                    "strand {id} exited {} as {} at {}\nexitval:\n{}",
                    render::when(a.exited_at),
                    a.prog,
                    a.label,
                    render::indented_json(&a.exitval, 2)
                );
                Ok(Reply::new(text, json!({"archived": a})))
            }
            None => bail!("no strand {id}: `strand list` shows the live ones"),
        };
    };
    let summary = inspect::summary(&mut conn, uuid).await?.context("strand vanished while being read")?;
    let sems = inspect::semaphore_counts(&mut conn, uuid).await?;
    let family = inspect::descendants(&mut conn, uuid, 200).await?;
    let parent = match st.parent_id {
        Some(p) => inspect::summary(&mut conn, p).await?,
        None => None,
    };
    let leased = st.lease > Utc::now();

    let mut pairs = vec![
        ("state", summary.state.clone()),
        ("schedule", render::when(st.schedule)),
        (
            "lease",
            if leased {
                format!("held by {} until {}", st.lease_holder.as_deref().unwrap_or("?"), render::when(st.lease))
            } else {
                "free".into()
            },
        ),
        ("try", st.try_.to_string()),
    ];
    if let Some(err) = &st.last_error {
        let at = st.last_error_at.map(|t| format!(" ({})", render::when(t))).unwrap_or_default();
        pairs.push(("last error", format!("{}{at}", render::line(err, 200))));
    }
    let sem_text = sems.iter().map(|(n, c)| if *c > 1 { format!("{n}×{c}") } else { n.clone() }).collect::<Vec<_>>();
    pairs.push(("semaphores", if sem_text.is_empty() { "none".into() } else { sem_text.join(", ") }));
    if let Some(v) = &st.retval {
        pairs.push(("retval", v.to_string()));
    }
    if let Some(v) = &st.exitval {
        pairs.push(("exitval", v.to_string()));
    }
    if let Some(p) = st.parent_id {
        let about = parent.as_ref().map(|p| format!(" ({} at {}, {})", p.prog, p.label, p.state)).unwrap_or_default();
        pairs.push(("parent", format!("{}{about}", render::id(p))));
    }
    pairs.push(("created", render::when(st.created_at)));
    if let Some(known) = s.registry.semaphores(&st.prog) {
        pairs.push(("answers", known.join(", ")));
    }

    let mut text = format!("strand {} {} at {}\n", render::id(st.id), st.prog, st.label);
    text.push_str(&render::fields(&pairs));
    text.push_str("stack (top first):\n");
    let frames = st.stack.as_array().cloned().unwrap_or_default();
    for (i, frame) in frames.iter().enumerate() {
        let (prog, label) = frame_name(&st.prog, &st.label, &frames, i);
        text.push_str(&format!("  #{i} {prog} at {label}\n"));
        text.push_str(&render::indented_json(frame, 6));
    }
    if family.is_empty() {
        text.push_str("children: none\n");
    } else {
        text.push_str("children:\n");
        for d in &family {
            let pad = "  ".repeat(d.depth as usize);
            let r = &d.strand;
            text.push_str(&format!("{pad}└ {} {} at {} ({})\n", render::id(r.id), r.prog, r.label, r.state));
        }
    }
    let json = json!({
        "strand": st, "state": summary.state, "leased": leased, "semaphores": sems.iter().map(|(n, c)| json!({"name": n, "count": c})).collect::<Vec<_>>(),
        "parent": parent, "descendants": family,
    });
    Ok(Reply::new(text, json))
}

/// Frame `i`'s prog and label: the strand's own for the top frame, and for
/// each frame below, the caller its upper neighbour links back to.
fn frame_name(prog: &str, label: &str, frames: &[Value], i: usize) -> (String, String) {
    if i == 0 {
        return (prog.into(), label.into());
    }
    let link = frames[i - 1].get(skein_engine::stack::LINK).and_then(Value::as_array);
    let part = |k: usize| link.and_then(|l| l.get(k)).and_then(Value::as_str).unwrap_or("?").to_string();
    (part(0), part(1))
}

/// A hand-made change to one strand.
enum Change {
    Incr(String),
    Decr(String),
    Wake,
    Reschedule(DateTime<Utc>),
    Retry,
}

impl Change {
    fn action(&self) -> &'static str {
        match self {
            Change::Incr(name) if name == "destroy" => "destroy",
            Change::Incr(_) => "incr",
            Change::Decr(_) => "decr",
            Change::Wake => "wake",
            Change::Reschedule(_) => "reschedule",
            Change::Retry => "retry",
        }
    }

    fn describe(&self, r: &StrandSummary) -> String {
        let who = format!("strand {} ({} at {})", render::id(r.id), r.prog, r.label);
        match self {
            Change::Incr(name) => format!("set {name} on {who}"),
            Change::Decr(name) => format!("take back one {name} from {who}"),
            Change::Wake => format!("wake {who} now"),
            Change::Reschedule(at) => format!("reschedule {who} to {}", render::when(*at)),
            Change::Retry => format!("retry {who} now (it failed {} times in a row)", r.try_),
        }
    }

    fn detail(&self, r: &StrandSummary) -> Value {
        match self {
            Change::Incr(name) | Change::Decr(name) => json!({"semaphore": name}),
            Change::Wake => json!({"was": r.schedule}),
            Change::Reschedule(at) => json!({"was": r.schedule, "to": at}),
            Change::Retry => json!({"try": r.try_, "last_error": r.last_error}),
        }
    }

    /// Make the change; the text says what happened, an error that nothing did.
    async fn apply(&self, c: &mut sqlx::PgConnection, id: Uuid) -> anyhow::Result<String> {
        let gone = || anyhow!("the strand exited meanwhile; nothing changed");
        Ok(match self {
            Change::Incr(name) => {
                semaphore::incr(c, id, name).await?.then_some(()).ok_or_else(gone)?;
                format!("{name} set; the strand is woken")
            }
            Change::Decr(name) => {
                semaphore::decr_one(c, id, name).await?.then_some(()).ok_or_else(|| anyhow!("{name} is not set; nothing changed"))?;
                format!("one {name} taken back")
            }
            Change::Wake => scheduled(inspect::wake(c, id).await?.ok_or_else(gone)?),
            Change::Reschedule(at) => scheduled(inspect::reschedule(c, id, *at).await?.ok_or_else(gone)?),
            Change::Retry => scheduled(inspect::retry(c, id).await?.ok_or_else(gone)?),
        })
    }
}

fn scheduled(at: DateTime<Utc>) -> String {
    format!("scheduled {}", render::when(at))
}

/// Confirm, then change and audit in one transaction: both or neither.
async fn change(s: &Session, id: &str, change: Change, yes: bool) -> anyhow::Result<Reply> {
    let r = live(s, id).await?;
    if let Change::Incr(name) | Change::Decr(name) = &change {
        check_semaphore(s, &r, name)?;
    }
    if matches!(change, Change::Retry) && r.last_error.is_none() {
        bail!("strand {id} is not failing (its last step succeeded); `strand wake` runs it now anyway");
    }
    let what = change.describe(&r);
    confirm(yes, &what)?;
    let mut tx = s.pool.begin().await?;
    let result = change.apply(&mut tx, r.id).await?;
    let detail = json!({"change": change.detail(&r), "result": result});
    audit::record(&mut tx, &s.operator, change.action(), Some(r.id), &detail).await?;
    tx.commit().await?;
    Ok(Reply::new(format!("{what}: {result}"), json!({"strand": render::id(r.id), "action": change.action(), "result": result})))
}

fn check_semaphore(s: &Session, r: &StrandSummary, name: &str) -> anyhow::Result<()> {
    match s.registry.semaphores(&r.prog) {
        Some(known) if !known.contains(&name) => {
            bail!("{} does not answer semaphore {name:?}: it answers {}", r.prog, known.join(", "))
        }
        _ => Ok(()),
    }
}

/// `+10m`, `90s`, or an absolute RFC 3339 time, not in the past: a strand
/// wanted now is woken (`strand wake`), and a past time is most likely a typo.
fn parse_when(when: &str) -> anyhow::Result<DateTime<Utc>> {
    let formats = "a time from now (+90s, +10m, +2h, +1d) or an RFC 3339 time (2026-11-22T10:00:00Z)";
    let at = match DateTime::parse_from_rfc3339(when) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => match parse_duration(when) {
            Ok(secs) => Utc::now() + chrono::Duration::milliseconds((secs * 1000.0) as i64),
            Err(_) => bail!("{when:?} is not a time: give {formats}"),
        },
    };
    if at < Utc::now() - chrono::Duration::seconds(1) {
        bail!("{when:?} is in the past; nothing changed: `strand wake` runs a strand now, or give {formats}");
    }
    Ok(at)
}

/// Run one step here, under a lease like any worker's, and say what it did.
async fn step(s: &Session, id: &str, yes: bool) -> anyhow::Result<Reply> {
    let r = live(s, id).await?;
    if s.registry.labels(&r.prog).is_none() {
        bail!("strand {id} runs {:?}, which this build does not know; stepping it would only record a failure", r.prog);
    }
    confirm(yes, &format!("run one step of strand {id} ({} at {}) here", r.prog, r.label))?;
    let report = s
        .runner()
        .step_now(r.id)
        .await?
        .ok_or_else(|| anyhow!("strand {id} is leased by a worker (or exited just now); try again when its step is done"))?;
    let mut conn = s.pool.acquire().await?;
    audit::record(&mut conn, &s.operator, "step", Some(r.id), &json!({"label": report.label, "outcome": report.outcome})).await?;
    let flow = match &report.outcome {
        // An error can be long and many lines; `strand show` has all of it.
        // A failed step is the command failing: its exit code says so.
        Outcome::Failed { error, tries } => {
            bail!("{} at {}: step FAILED (try {tries}): {}", report.prog, report.label, render::line(error, 200))
        }
        _ => report.flow(),
    };
    let text = format!("{} at {}: {flow} ({} ms)", report.prog, report.label, report.micros / 1000);
    Ok(Reply::new(text, json!({"strand": report.strand, "prog": report.prog, "label": report.label, "outcome": report.outcome, "budded": report.budded, "micros": report.micros})))
}

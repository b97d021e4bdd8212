//! Everything around the strands that an operator looks at: pages, hosts,
//! VMs (each with its strand's state and recent events), UBIDs, and the
//! audit trail.

use std::collections::HashMap;

use anyhow::{anyhow, bail};
use serde_json::json;
use skein_models::inspect::{self, StrandSummary};
use skein_models::vm::VmState;
use skein_models::vm_host::HostState;
use skein_models::{archive, audit, event, page, vm, vm_host, Ubid, UbidType};
use uuid::Uuid;

use super::command::{HostCmd, PageCmd, VmCmd};
use crate::cmd::session::{confirm, OpsOptions, Reply, Session};
use crate::render;

fn parse_as(id: &str, ty: UbidType) -> anyhow::Result<Uuid> {
    Ok(Ubid::parse_as(id, ty).map_err(|e| anyhow!("{e}"))?.uuid())
}

pub async fn pages(s: &Session, cmd: PageCmd, yes: bool) -> anyhow::Result<Reply> {
    let mut conn = s.pool.acquire().await?;
    match cmd {
        PageCmd::List { all } => {
            let rows = page::recent(&mut conn, all, 200).await?;
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|p| {
                    let state = p.resolved_at.map(|t| format!("resolved {}", render::relative(t))).unwrap_or("OPEN".into());
                    vec![render::id(p.id), p.severity.clone(), state, render::relative(p.created_at), render::line(&p.summary, 80)]
                })
                .collect();
            let open = rows.iter().filter(|p| p.resolved_at.is_none()).count();
            let mut text = render::table(&["id", "severity", "state", "raised", "summary"], &cells);
            text.push_str(&format!("{open} open"));
            Ok(Reply::new(text, json!({"pages": rows, "open": open})))
        }
        PageCmd::Show { id } => {
            let p = page::get(&mut conn, parse_as(&id, UbidType::Page)?).await?.ok_or_else(|| anyhow!("no page {id}"))?;
            let state = p.resolved_at.map(|t| format!("resolved {}", render::when(t))).unwrap_or("open".into());
            let mut text = format!("page {id}: {}\n", render::clean(&p.summary));
            text.push_str(&render::fields(&[
                ("severity", p.severity.clone()),
                ("state", state),
                ("raised", render::when(p.created_at)),
                ("tag", p.tag.clone()),
            ]));
            text.push_str("details:\n");
            text.push_str(&render::indented_json(&p.details, 2));
            Ok(Reply::new(text, json!({"page": p})))
        }
        PageCmd::Resolve { id } => {
            let uuid = parse_as(&id, UbidType::Page)?;
            let p = page::get(&mut conn, uuid).await?.ok_or_else(|| anyhow!("no page {id}"))?;
            if p.resolved_at.is_some() {
                bail!("page {id} is resolved already; nothing changed");
            }
            drop(conn);
            confirm(yes, &format!("resolve page {id} ({})", p.summary))?;
            let mut tx = s.pool.begin().await?;
            if !page::resolve_id(&mut tx, uuid).await? {
                bail!("page {id} was resolved meanwhile; nothing changed");
            }
            audit::record(&mut tx, &s.operator, "resolve-page", Some(uuid), &json!({"tag": p.tag, "summary": p.summary})).await?;
            tx.commit().await?;
            Ok(Reply::new(format!("page {id} resolved"), json!({"page": id, "resolved": true})))
        }
        PageCmd::Hook { url, command, clear } => page_hook(s, url, command, clear, yes).await,
    }
}

/// `page hook`: where pages are forwarded; a change is confirmed and audited.
async fn page_hook(s: &Session, url: Option<String>, command: Option<String>, clear: bool, yes: bool) -> anyhow::Result<Reply> {
    let was = page::hook(&mut *s.pool.acquire().await?).await?;
    let describe = |h: &Option<page::Hook>| match h {
        Some(page::Hook { url: Some(u), .. }) => format!("POST to {u}"),
        Some(page::Hook { command: Some(c), .. }) => format!("run `{c}`"),
        _ => "not forwarded".into(),
    };
    if url.is_none() && command.is_none() && !clear {
        let text = format!("new and resolved pages: {}", describe(&was));
        return Ok(Reply::new(text, json!({"hook": was})));
    }
    if let Some(u) = url.as_deref().filter(|u| !u.starts_with("http://") || u.len() <= "http://".len()) {
        bail!("{u:?} is not an http:// URL; for https, use --command (e.g. `curl -fsS -d @- https://...`)");
    }
    if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bail!("--command is empty");
    }
    let to = if clear { "stop forwarding pages".to_string() } else if let Some(u) = &url { format!("forward pages: POST to {u}") } else { format!("forward pages: run `{}`", command.clone().unwrap_or_default()) };
    confirm(yes, &format!("{to} (now: {})", describe(&was)))?;
    let mut tx = s.pool.begin().await?;
    if clear {
        if !page::clear_hook(&mut tx).await? {
            bail!("no hook is set; nothing changed");
        }
    } else {
        page::set_hook(&mut tx, url.as_deref(), command.as_deref()).await?;
    }
    audit::record(&mut tx, &s.operator, "page-hook", None, &json!({"url": url, "command": command, "clear": clear, "was": was})).await?;
    tx.commit().await?;
    Ok(Reply::new(format!("{to}: done"), json!({"hook": if clear { None } else { Some(json!({"url": url, "command": command})) }})))
}

/// The strands that drive these subjects (a subject's strand has its id), by id.
async fn strands_of(conn: &mut sqlx::PgConnection, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, StrandSummary>> {
    Ok(inspect::summaries(conn, ids).await?.into_iter().map(|st| (st.id, st)).collect())
}

fn label_cell(st: Option<&StrandSummary>) -> String {
    st.map(|st| format!("{} ({})", st.label, st.state)).unwrap_or("-".into())
}

fn strand_text(st: &Option<StrandSummary>) -> String {
    match st {
        Some(st) => {
            let err = st.last_error.as_deref().map(|e| format!("; last error: {}", render::line(e, 120))).unwrap_or_default();
            format!("{} at {} ({}, {}){err}", st.prog, st.label, st.state, render::relative(st.schedule))
        }
        None => "none (exited)".into(),
    }
}

fn events_text(events: &[event::Event]) -> String {
    if events.is_empty() {
        return "events: none\n".into();
    }
    let mut text = "recent events:\n".to_string();
    for e in events {
        text.push_str(&format!("  {}  {:<18} {:<8} {}\n", e.created_at.format("%H:%M:%S"), e.kind, e.actor, e.detail));
    }
    text
}

pub async fn hosts(s: &Session, cmd: HostCmd, opts: &OpsOptions) -> anyhow::Result<Reply> {
    match cmd {
        HostCmd::Add(args) => crate::cmd::host::add(s, args, opts).await,
        HostCmd::List { all } => {
            let mut conn = s.pool.acquire().await?;
            let hosts: Vec<vm_host::VmHost> =
                vm_host::page(&mut conn, None, 1000).await?.into_iter().filter(|h| all || h.state != HostState::Destroyed).collect();
            let strands = strands_of(&mut conn, &hosts.iter().map(|h| h.id).collect::<Vec<_>>()).await?;
            let mut cells = Vec::new();
            let mut rows = Vec::new();
            for h in hosts {
                let st = strands.get(&h.id);
                let used = format!("{}/{} cores, {}/{} MiB", h.used_cores, h.facts.cpus.unwrap_or(0), h.used_memory_mib, h.facts.memory_mib.unwrap_or(0));
                cells.push(vec![render::id(h.id), h.name.clone(), h.state.to_string(), used, label_cell(st)]);
                rows.push(json!({"host": h, "strand": st}));
            }
            let n = rows.len();
            let mut text = render::table(&["id", "name", "state", "used", "strand"], &cells);
            text.push_str(&format!("{n} hosts"));
            Ok(Reply::new(text, json!({"hosts": rows})))
        }
        HostCmd::Show { id } => {
            let uuid = parse_as(&id, UbidType::VmHost)?;
            let mut conn = s.pool.acquire().await?;
            let h = vm_host::get(&mut conn, uuid).await?.ok_or_else(|| anyhow!("no host {id}"))?;
            let vms = vm::on_host(&mut conn, uuid).await?;
            let events = event::recent(&mut conn, uuid, 10).await?;
            let st = inspect::summary(&mut conn, uuid).await?;
            let mut text = format!("host {id} {} ({})\n", h.name, h.state);
            text.push_str(&render::fields(&[
                ("strand", strand_text(&st)),
                ("cpus", h.facts.cpus.map(|c| c.to_string()).unwrap_or("?".into())),
                ("memory", format!("{} MiB ({} used)", h.facts.memory_mib.unwrap_or(0), h.used_memory_mib)),
                ("cores used", h.used_cores.to_string()),
                ("kvm", h.facts.kvm_usable.map(|k| if k { "usable" } else { "not usable (TCG)" }.to_string()).unwrap_or("?".into())),
                ("os", format!("{} {}", h.facts.os.clone().unwrap_or_default(), h.facts.kernel.clone().unwrap_or_default())),
                ("vms", if vms.is_empty() { "none".into() } else { vms.iter().map(|v| render::id(*v)).collect::<Vec<_>>().join(", ") }),
            ]));
            text.push_str(&events_text(&events));
            let vm_ids: Vec<String> = vms.iter().map(|v| render::id(*v)).collect();
            Ok(Reply::new(text, json!({"host": h, "strand": st, "vms": vm_ids, "events": events})))
        }
    }
}

pub async fn vms(s: &Session, cmd: VmCmd, opts: &OpsOptions) -> anyhow::Result<Reply> {
    match cmd {
        VmCmd::Create(args) => crate::cmd::vm::create(s, args, opts).await,
        VmCmd::List { project, all } => {
            let mut conn = s.pool.acquire().await?;
            let project_id = match &project {
                Some(name) => Some(
                    skein_models::project::by_name(&mut conn, name).await?.ok_or_else(|| anyhow!("no project {name:?}"))?.id,
                ),
                None => None,
            };
            let rows: Vec<vm::Vm> =
                vm::page(&mut conn, project_id, None, 1000).await?.into_iter().filter(|v| all || v.state != VmState::Destroyed).collect();
            let strands = strands_of(&mut conn, &rows.iter().map(|v| v.id).collect::<Vec<_>>()).await?;
            let mut cells = Vec::new();
            let mut out = Vec::new();
            for v in rows {
                let st = strands.get(&v.id);
                let host = v.host_id.map(render::id).unwrap_or("-".into());
                let size = format!("{}c/{}M", v.cores, v.memory_mib);
                cells.push(vec![render::id(v.id), v.name.clone(), v.state.to_string(), size, host, label_cell(st)]);
                out.push(json!({"vm": v, "strand": st}));
            }
            let n = out.len();
            let mut text = render::table(&["id", "name", "state", "size", "host", "strand"], &cells);
            text.push_str(&format!("{n} vms"));
            Ok(Reply::new(text, json!({"vms": out})))
        }
        VmCmd::Show { id } => {
            let uuid = parse_as(&id, UbidType::Vm)?;
            let mut conn = s.pool.acquire().await?;
            let v = vm::get(&mut conn, uuid).await?.ok_or_else(|| anyhow!("no vm {id}"))?;
            let events = event::recent(&mut conn, uuid, 10).await?;
            let st = inspect::summary(&mut conn, uuid).await?;
            let project = skein_models::project::get(&mut conn, v.project_id).await?;
            let project_name = project.as_ref().map(|p| p.name.clone());
            let mut text = format!("vm {id} {} ({}, wants {})\n", v.name, v.state, v.desired_state);
            text.push_str(&render::fields(&[
                ("strand", strand_text(&st)),
                ("project", format!("{} ({})", project_name.as_deref().unwrap_or("?"), render::id(v.project_id))),
                ("size", format!("{} cores, {} MiB memory, {} MiB disk", v.cores, v.memory_mib, v.disk_mib)),
                ("host", v.host_id.map(render::id).unwrap_or("not placed".into())),
                ("private ip", v.private_ip.clone().unwrap_or("-".into())),
                ("ssh", ssh_text(&v)),
                ("created", render::when(v.created_at)),
            ]));
            text.push_str(&events_text(&events));
            let ssh = v.ssh();
            Ok(Reply::new(text, json!({"vm": v, "ssh": ssh, "project": project_name, "strand": st, "events": events})))
        }
    }
}

/// Where its owner connects, as last seen; or why there is nowhere yet.
fn ssh_text(v: &vm::Vm) -> String {
    match v.ssh() {
        Some(ssh) => format!("ssh -p {} {}@{} (seen {}; `skein vm ssh {}`)", ssh.port, ssh.user, ssh.host, render::relative(ssh.seen_at), render::id(v.id)),
        None => "- (not running)".into(),
    }
}

/// What a UBID is (type and time) and what it names, wherever that lives.
pub async fn ubid(s: &Session, id: &str) -> anyhow::Result<Reply> {
    let u: Ubid = id.parse().map_err(|e| anyhow!("{e}"))?;
    let kind = u.kind().map(|k| k.describe()).unwrap_or("plain uuid");
    let made = u.created_at();
    let mut conn = s.pool.acquire().await?;
    let strand = inspect::summary(&mut conn, u.uuid()).await?;
    let archived = if strand.is_none() { archive::get(&mut conn, u.uuid()).await? } else { None };
    // The kinds of row this console can show; for those, say whether the row exists.
    let (row, show) = match u.kind() {
        Some(UbidType::Vm) => (vm::get(&mut conn, u.uuid()).await?.map(|v| json!(v)), Some("vm show")),
        Some(UbidType::VmHost) => (vm_host::get(&mut conn, u.uuid()).await?.map(|h| json!(h)), Some("host show")),
        Some(UbidType::Page) => (page::get(&mut conn, u.uuid()).await?.map(|p| json!(p)), Some("page show")),
        Some(UbidType::Project) => (skein_models::project::get(&mut conn, u.uuid()).await?.map(|p| json!(p)), None),
        _ => (None, None),
    };
    let looked_up = matches!(u.kind(), Some(UbidType::Vm | UbidType::VmHost | UbidType::Page | UbidType::Project));
    let mut pairs = vec![("type", format!("{kind} ({})", u.kind().map(|k| k.prefix()).unwrap_or("-"))), ("uuid", u.uuid().to_string())];
    if let Some(t) = made {
        pairs.push(("made", render::when(t)));
    }
    match (&row, show) {
        (Some(_), Some(cmd)) => pairs.push(("names", format!("a {kind}: `{cmd} {u}`"))),
        (Some(_), None) => pairs.push(("names", format!("a {kind}"))),
        (None, _) if looked_up => pairs.push(("names", format!("no {kind} with this id"))),
        (None, _) => {}
    }
    pairs.push((
        "strand",
        match (&strand, &archived) {
            (Some(st), _) => format!("{} at {} ({}): `strand show {u}`", st.prog, st.label, st.state),
            (None, Some(a)) => format!("exited {} as {} at {}", render::relative(a.exited_at), a.prog, a.label),
            (None, None) => "none".into(),
        },
    ));
    let text = format!("{u}\n{}", render::fields(&pairs));
    Ok(Reply::new(
        text,
        json!({"id": u.to_string(), "uuid": u.uuid(), "type": u.kind().map(|k| k.describe()), "made_at": made, "row": row, "strand": strand, "archived": archived}),
    ))
}

/// Who is alive: each registered worker, when it last beat, and what it holds.
pub async fn workers(s: &Session) -> anyhow::Result<Reply> {
    let rows = skein_models::worker::list(&mut *s.pool.acquire().await?).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|w| vec![w.holder.clone(), render::relative(w.started_at), render::relative(w.seen_at), w.claims.to_string()])
        .collect();
    let mut text = render::table(&["worker", "started", "last beat", "claims"], &cells);
    text.push_str(&match rows.len() {
        1 => "1 live worker".to_string(),
        n => format!("{n} live workers"),
    });
    Ok(Reply::new(text, json!({"workers": rows})))
}

pub async fn audit_list(s: &Session, target: Option<String>, limit: i64) -> anyhow::Result<Reply> {
    let target = target.as_deref().map(super::strands::parse_id).transpose()?;
    let rows = audit::recent(&mut *s.pool.acquire().await?, target, limit).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|a| {
            vec![
                a.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                a.operator.clone(),
                a.action.clone(),
                a.target_id.map(render::id).unwrap_or("-".into()),
                render::line(&a.detail.to_string(), 80),
            ]
        })
        .collect();
    let mut text = render::table(&["when (utc)", "operator", "action", "target", "detail"], &cells);
    text.push_str(&format!("{} entries", rows.len()));
    Ok(Reply::new(text, json!({"audit": rows})))
}

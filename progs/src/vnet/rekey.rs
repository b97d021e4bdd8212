//! `Vnet::Rekey`: replace one host's tunnel key, make-before-break.
//!
//! Start makes the host's next key ('new') -> phase 1: the host brings the
//! new gen up beside the old one and its peers learn its key -> Switch:
//! the host sends on the new gen and its peers' segments reach it there
//! (the old gen still accepts) -> Drop: the old gen goes. Each phase is a
//! change of rows, then a `want_seq` bump of the host ([`super::changed`])
//! and, once it applied it, of every host it shares a subnet with (the
//! host goes first in each phase: the agent contract's order); Confirm
//! waits until each has applied it (or is gone) before going on. A rekey
//! that has not finished after `stall_secs` pages, and keeps waiting.
//!
//! One rekey per host at a time (`host_network.rekey_strand_id`); the
//! host's network strand starts one daily, operators on demand for a
//! subnet's hosts ([`start_for_subnet`]: API, CLI, console).

use chrono::{DateTime, Utc};
use skein_engine::prelude::*;
use skein_models::network::{self, Bumped};
use skein_models::{event, Ubid, UbidType};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ssh::keys::SecretKey;

pub struct Rekey;

labels! {
    pub enum Label for Rekey { Start, Confirm, Switch, Drop, Done }
}

/// Which change the hosts are confirming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The new gen is up on the host, its peers know its key.
    New,
    /// The host sends on the new gen; its peers reach it there.
    Switch,
    /// The old gen is gone.
    Drop,
}

/// Who is applying the phase now: the rekeyed host first, then its peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Host,
    Peers,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::Switch => "switch",
            Phase::Drop => "drop",
        }
    }

    /// What comes once the hosts confirmed this phase.
    pub fn next(self) -> Label {
        match self {
            Phase::New => Label::Switch,
            Phase::Switch => Label::Drop,
            Phase::Drop => Label::Done,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub host: Ubid,
    /// Who asked, as an event actor: "system" (the daily schedule), "operator" or "user".
    #[serde(default)]
    pub by: String,
    /// Page if the rekey has not finished after this long.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The gen being brought in.
    #[serde(default)]
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen: Option<i32>,
    /// The seq each host must reach to confirm the phase.
    #[serde(default)]
    pub waiting_for: Vec<Bumped>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

fn default_stall_secs() -> u64 {
    600
}

#[async_trait]
impl Prog for Rekey {
    const NAME: &'static str = "Vnet::Rekey";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Msg;

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Start => begin(cx).await,
            Label::Confirm => confirm(cx).await,
            Label::Switch => switch(cx).await,
            Label::Drop => drop_old(cx).await,
            Label::Done => done(cx).await,
        }
    }
}

/// Start a rekey of `host`, unless one runs or it has no network; in the
/// caller's transaction. Returns its strand.
pub async fn start(conn: &mut PgConnection, host: Uuid, by: &str) -> anyhow::Result<Option<Ubid>> {
    let strand = Ubid::generate(UbidType::Strand);
    if !network::claim_rekey(conn, host, strand.uuid()).await? {
        return Ok(None);
    }
    let frame = Frame {
        host: Ubid::from_uuid(host),
        by: by.to_string(),
        stall_secs: default_stall_secs(),
        phase: None,
        stage: Stage::Host,
        gen: None,
        waiting_for: vec![],
        started_at: None,
    };
    skein_engine::enqueue::start_for(conn, strand, frame, Label::Start).await?;
    Ok(Some(strand))
}

/// A rekey asked for one of a subnet's hosts.
#[derive(Clone, Debug, Serialize)]
pub struct Started {
    pub host: Ubid,
    /// The rekey strand, or None if one was already running there.
    pub strand: Option<Ubid>,
}

/// Rekey every host of the subnet's mesh (on demand), in the caller's transaction.
pub async fn start_for_subnet(conn: &mut PgConnection, subnet: Uuid, by: &str) -> anyhow::Result<Vec<Started>> {
    let mut started = Vec::new();
    for host in network::subnet_hosts(conn, subnet).await? {
        let strand = start(conn, host, by).await?;
        let strand = match strand {
            Some(s) => Some(s),
            None => network::get(conn, host).await?.and_then(|n| n.rekey_strand_id).map(Ubid::from_uuid),
        };
        started.push(Started { host: Ubid::from_uuid(host), strand });
    }
    Ok(started)
}

fn stall_tag(host: Ubid) -> String {
    format!("vnet-rekey-stalled:{host}")
}

/// Record the phase and have the host apply it first.
async fn enter(cx: &mut Ctx<'_, Rekey>, phase: Phase) -> Step<Rekey> {
    let host = cx.frame.host.uuid();
    network::set_rekey_phase(cx.tx.conn().await?, host, phase.name()).await?;
    cx.frame.waiting_for = super::changed(cx, &[host]).await?;
    cx.frame.phase = Some(phase);
    cx.frame.stage = Stage::Host;
    hop(Label::Confirm)
}

/// Phase 1: the host's next key, beside the one it sends on.
async fn begin(cx: &mut Ctx<'_, Rekey>) -> Step<Rekey> {
    let host = cx.frame.host;
    let secret = cx.resource::<SecretKey>()?.clone();
    cx.frame.started_at.get_or_insert_with(Utc::now);
    let (me, by) = (cx.id().uuid(), cx.frame.by.clone());
    let conn = cx.tx.conn().await?;
    let mine = network::get(conn, host.uuid()).await?.and_then(|n| n.rekey_strand_id) == Some(me);
    if !mine {
        return pop("another rekey of this host runs");
    }
    let keys = network::key_infos(conn, &[host.uuid()]).await?;
    if !keys.iter().any(|k| k.state == "sending") {
        network::end_rekey(conn, host.uuid(), me, false).await?;
        return pop("the host has no tunnel to rekey");
    }
    // A 'new' key left by an earlier rekey that ended early is brought in now.
    let gen = match keys.iter().find(|k| k.state == "new") {
        Some(k) => k.gen,
        None => super::keys::make(conn, &secret, host.uuid(), "new").await?,
    };
    cx.frame.gen = Some(gen);
    event::record(conn, host.uuid(), "rekey-started", &by, &json!({"gen": gen})).await?;
    enter(cx, Phase::New).await
}

/// Whether every host waited for has applied its seq (or is gone).
fn all_confirmed(waiting_for: &[Bumped], now: &[network::HostNetwork]) -> bool {
    waiting_for.iter().all(|w| now.iter().find(|n| n.host_id == w.host_id).is_none_or(|n| n.applied_seq >= w.want_seq))
}

/// Wait until every host confirmed the phase; page if the rekey stalls.
async fn confirm(cx: &mut Ctx<'_, Rekey>) -> Step<Rekey> {
    let hosts: Vec<Uuid> = cx.frame.waiting_for.iter().map(|b| b.host_id).collect();
    let now = network::get_many(&mut *cx.read().await?, &hosts).await?;
    let phase = cx.frame.phase.ok_or_else(|| anyhow::anyhow!("a rekey confirms a phase it never entered"))?;
    if all_confirmed(&cx.frame.waiting_for, &now) {
        if cx.frame.stage == Stage::Peers {
            return hop(phase.next());
        }
        // The host has it: now every host it shares a subnet with.
        let peers = network::mesh_peers(cx.tx.conn().await?, cx.frame.host.uuid()).await?;
        cx.frame.waiting_for = super::changed(cx, &peers).await?;
        cx.frame.stage = Stage::Peers;
        return hop(Label::Confirm);
    }
    let started = *cx.frame.started_at.get_or_insert_with(Utc::now);
    if (Utc::now() - started).num_seconds() >= cx.frame.stall_secs as i64 {
        let behind: Vec<Ubid> = cx
            .frame
            .waiting_for
            .iter()
            .filter(|w| now.iter().any(|n| n.host_id == w.host_id && n.applied_seq < w.want_seq))
            .map(|w| Ubid::from_uuid(w.host_id))
            .collect();
        let summary = format!("the rekey of host {} is stalled in phase {} (waiting for {} hosts)", cx.frame.host, phase.name(), behind.len());
        cx.raise_page(&stall_tag(cx.frame.host), &summary, &json!({"host": cx.frame.host, "phase": phase.name(), "waiting_for": behind})).await?;
    }
    nap(1)
}

/// Phase 2: send on the new gen; the old one still accepts.
async fn switch(cx: &mut Ctx<'_, Rekey>) -> Step<Rekey> {
    let gen = cx.frame.gen.ok_or_else(|| anyhow::anyhow!("a rekey switches before it made a key"))?;
    network::switch_to(cx.tx.conn().await?, cx.frame.host.uuid(), gen).await?;
    enter(cx, Phase::Switch).await
}

/// Phase 3: the old gen goes.
async fn drop_old(cx: &mut Ctx<'_, Rekey>) -> Step<Rekey> {
    network::drop_retiring(cx.tx.conn().await?, cx.frame.host.uuid()).await?;
    enter(cx, Phase::Drop).await
}

async fn done(cx: &mut Ctx<'_, Rekey>) -> Step<Rekey> {
    let host = cx.frame.host;
    let took = cx.frame.started_at.map(|s| (Utc::now() - s).num_milliseconds()).unwrap_or_default();
    let (me, by, gen) = (cx.id().uuid(), cx.frame.by.clone(), cx.frame.gen);
    let conn = cx.tx.conn().await?;
    network::end_rekey(conn, host.uuid(), me, true).await?;
    event::record(conn, host.uuid(), "rekeyed", &by, &json!({"gen": gen, "ms": took})).await?;
    cx.resolve_page(&stall_tag(host)).await?;
    pop(format!("rekeyed to gen {} in {took} ms", gen.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: Uuid, applied: i64) -> network::HostNetwork {
        network::HostNetwork {
            host_id: host,
            strand_id: Uuid::new_v4(),
            want_seq: applied,
            applied_seq: applied,
            applied_at: None,
            applied: None,
            status: None,
            status_at: None,
            last_rekey_at: None,
            rekey_strand_id: None,
            rekey_phase: None,
            rekey_started_at: None,
        }
    }

    #[test]
    fn a_phase_is_confirmed_when_every_host_applied_it_or_is_gone() {
        let (a, b, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let w = |host, want_seq| Bumped { host_id: host, strand_id: Uuid::new_v4(), want_seq };
        let waiting = [w(a, 5), w(b, 9), w(gone, 3)];
        assert!(!all_confirmed(&waiting, &[row(a, 5), row(b, 8)]), "b is behind");
        assert!(all_confirmed(&waiting, &[row(a, 6), row(b, 9)]), "a host with no network row left is not waited for");
    }
}

//! `Vnet::HostNet`: a host's private networking, kept true.
//!
//! One strand per host that ever had a VM of a subnet (started by
//! [`super::ensure_strand`]). Converge reads the host's `want_seq`, then the
//! facts, computes the whole desired state ([`super::desired`]), and with no
//! database held either pushes it (`net-apply`, JSON on stdin: the keys
//! travel only there) when something was wanted since it last applied, or
//! asks `net-status` and pushes it anyway if the host drifted (a reboot, a
//! device removed). Then it records what it applied (without keys) and what
//! the host said, pages when a tunnel's peer has been silent for
//! `tunnel_down_secs`, starts the host's rekey once a day, and sleeps until
//! woken (`apply`) or the next checkup. `destroy` (the host is destroyed)
//! forgets the host's keys and tells its peers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use skein_engine::prelude::*;
use skein_models::network::{self, HostNetwork};
use skein_models::vm_host::HostState;
use skein_models::{event, Ubid};

use super::desired::{self, Desired, Facts, NicFact, OwnKey, PeerFact, PeerKey};
use crate::host::conn::Host;
use crate::ssh::keys::SecretKey;
use crate::ssh::SshError;

pub struct HostNet;

labels! {
    pub enum Label for HostNet { Converge, Destroy }
}

semaphores! {
    /// `apply`: something this host should have changed (its `want_seq` was
    /// raised), or look now.
    pub enum Sem { Apply = "apply" }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// The host whose network this strand keeps.
    pub host: Ubid,
    /// Seconds between checkups when nothing wakes it.
    #[serde(default = "default_checkup_secs")]
    pub checkup_secs: u64,
    /// A peer with no handshake for this long is silent.
    #[serde(default = "default_fresh_secs")]
    pub handshake_fresh_secs: u64,
    /// A peer silent for this long is paged.
    #[serde(default = "default_tunnel_down_secs")]
    pub tunnel_down_secs: u64,
    /// The host's keys are replaced this often (make-before-break).
    #[serde(default = "default_rekey_every_secs")]
    pub rekey_every_secs: u64,
    /// Since when each silent peer host has been seen silent.
    #[serde(default)]
    pub silent_since: BTreeMap<Ubid, DateTime<Utc>>,
}

fn default_checkup_secs() -> u64 {
    60
}

fn default_fresh_secs() -> u64 {
    super::view::FRESH_SECS
}

fn default_tunnel_down_secs() -> u64 {
    300
}

fn default_rekey_every_secs() -> u64 {
    86_400
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            host: Ubid::from_uuid(uuid::Uuid::nil()),
            checkup_secs: default_checkup_secs(),
            handshake_fresh_secs: default_fresh_secs(),
            tunnel_down_secs: default_tunnel_down_secs(),
            rekey_every_secs: default_rekey_every_secs(),
            silent_since: BTreeMap::new(),
        }
    }
}

#[async_trait]
impl Prog for HostNet {
    const NAME: &'static str = "Vnet::HostNet";
    type Label = Label;
    type Frame = Frame;
    type Sem = Sem;
    type Output = Msg;
    const DESTROY: Option<Label> = Some(Label::Destroy);

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Converge => converge(cx).await,
            Label::Destroy => destroy(cx).await,
        }
    }
}

/// The address the host's tunnels listen on.
pub fn underlay_of(host: &Host) -> String {
    host.row.underlay.clone().unwrap_or_else(|| host.sshable.host.clone())
}

/// Push the whole desired state (keys only on stdin); the host's answer
/// (status JSON). Bounded by the host handle's deadline.
pub async fn net_apply(host: &Host, want: &Desired) -> Result<Value, SshError> {
    host.net_apply(&serde_json::to_value(want).expect("the desired state serializes")).await
}

/// The facts the host's desired state is computed from, read on one
/// connection given back before this returns.
pub async fn load_facts<P: Prog>(cx: &Ctx<'_, P>, host: &Host) -> anyhow::Result<Facts> {
    let secret = cx.resource::<SecretKey>()?.clone();
    read_facts(&mut *cx.read().await?, &secret, host.row.id).await
}

/// The facts of host `id`. Its private keys are opened here.
pub async fn read_facts(db: &mut sqlx::PgConnection, secret: &SecretKey, id: uuid::Uuid) -> anyhow::Result<Facts> {
    let nics = network::nics_on(db, id).await?;
    let pairs = network::peer_subnets(db, id).await?;
    let mut peer_ids: Vec<uuid::Uuid> = pairs.iter().map(|(h, _)| *h).collect();
    peer_ids.dedup();
    let endpoints = network::endpoints(db, &peer_ids).await?;
    let mut all = peer_ids.clone();
    all.push(id);
    let keys = network::keys_of(db, &all).await?;

    let mut own = Vec::new();
    for k in keys.iter().filter(|k| k.host_id == id) {
        own.push(OwnKey {
            gen: k.gen,
            private_key: super::keys::open(secret, k)?,
            public_key: k.public_key.clone(),
            state: k.state.clone(),
        });
    }
    let peers = endpoints
        .into_iter()
        .map(|e| PeerFact {
            host: e.host_id,
            underlay: e.underlay,
            subnets: pairs.iter().filter(|(h, _)| *h == e.host_id).map(|(_, s)| *s).collect(),
            keys: keys
                .iter()
                .filter(|k| k.host_id == e.host_id)
                .map(|k| PeerKey { gen: k.gen, public_key: k.public_key.clone(), state: k.state.clone() })
                .collect(),
        })
        .collect();
    let nics = nics.into_iter().map(|n| NicFact { vm: n.vm_id, subnet: n.subnet_id, vni: n.vni }).collect();
    Ok(Facts { keys: own, nics, peers })
}

fn down_tag(host: Ubid, peer: Ubid) -> String {
    format!("vnet-tunnel-down:{host}:{peer}")
}

fn apply_tag(host: Ubid) -> String {
    format!("vnet-apply-failing:{host}")
}

/// Make the host have its desired state; record what it has.
async fn converge(cx: &mut Ctx<'_, HostNet>) -> Step<HostNet> {
    cx.take(Sem::Apply);
    let id = cx.frame.host;
    // Read: the seq first, then the facts, so what is applied is at least as new as the seq.
    let Some(net) = network::get(&mut *cx.read().await?, id.uuid()).await? else {
        return pop("the host has no network any more");
    };
    let host = Host::load_id(cx, id).await?;
    if host.row.state == HostState::Destroyed {
        return hop(Label::Destroy);
    }
    let facts = load_facts(cx, &host).await?;
    let want = desired::compute(&facts);
    let due = net.want_seq > net.applied_seq;

    // Ask the host, holding nothing.
    let mut drifted = None;
    let answer: Result<(bool, Value), anyhow::Error> = async {
        if !due {
            let status = host.net_status().await?;
            drifted = desired::drift(&want, &status);
            if drifted.is_none() {
                return Ok((false, status));
            }
            tracing::info!(host = %id, drift = drifted.as_deref().unwrap_or(""), "host network drifted; applying it again");
        }
        Ok((true, net_apply(&host, &want).await?))
    }
    .await;

    let (applied, status) = match answer {
        Ok(a) => a,
        Err(e) if e.downcast_ref::<SshError>().is_some_and(SshError::is_unreachable) => {
            // The host's own strand pages an unreachable host; try again soon.
            tracing::warn!(host = %id, error = %e, "cannot reach the host to apply its network");
            return nap(5);
        }
        Err(e) => {
            cx.raise_page(&apply_tag(id), &format!("host {} cannot apply its private networks", host.row.name), &json!({"error": e.to_string()}))
                .await?;
            return Err(e);
        }
    };

    // Write, at the end.
    let silent = desired::silent_peers(&want, &status, cx.frame.handshake_fresh_secs);
    let conn = cx.tx.conn().await?;
    if applied {
        network::record_applied(conn, id.uuid(), net.want_seq, &want.summary(), &status).await?;
        if want.tunnels.is_empty() {
            // Nothing here needs a tunnel: its keys go (unless wanted again meanwhile).
            network::drop_keys_if_unwanted(conn, id.uuid(), net.want_seq).await?;
        }
        if let Some(why) = &drifted {
            event::record(conn, id.uuid(), "network-reapplied", "system", &json!({"drift": why})).await?;
        }
    } else {
        network::record_status(conn, id.uuid(), &status).await?;
    }
    cx.resolve_page(&apply_tag(id)).await?;
    watch_tunnels(cx, &host, &silent).await?;
    maybe_rekey(cx, &net, &facts).await?;
    nap(cx.frame.checkup_secs as f64)
}

/// Page for each peer host silent for `tunnel_down_secs`; resolve the
/// pages of those answering again.
async fn watch_tunnels(cx: &mut Ctx<'_, HostNet>, host: &Host, silent: &[String]) -> anyhow::Result<()> {
    let id = cx.frame.host;
    let now = Utc::now();
    let silent: Vec<Ubid> = silent.iter().filter_map(|h| h.parse().ok()).collect();
    let answering: Vec<Ubid> = cx.frame.silent_since.keys().filter(|h| !silent.contains(h)).copied().collect();
    for peer in answering {
        cx.frame.silent_since.remove(&peer);
        cx.resolve_page(&down_tag(id, peer)).await?;
    }
    for peer in silent {
        let since = *cx.frame.silent_since.entry(peer).or_insert(now);
        if (now - since).num_seconds() >= cx.frame.tunnel_down_secs as i64 {
            let summary = format!("the tunnel from host {} to host {peer} is down: no handshake for {} s", host.row.name, (now - since).num_seconds());
            cx.raise_page(&down_tag(id, peer), &summary, &json!({"host": id, "peer": peer, "silent_since": since})).await?;
        }
    }
    Ok(())
}

/// Start the host's daily rekey when its sending key is older than
/// `rekey_every_secs` (and none runs).
async fn maybe_rekey(cx: &mut Ctx<'_, HostNet>, net: &HostNetwork, facts: &Facts) -> anyhow::Result<()> {
    if net.rekey_strand_id.is_some() || facts.nics.is_empty() {
        return Ok(());
    }
    let conn = cx.tx.conn().await?;
    let keys = network::key_infos(conn, &[net.host_id]).await?;
    let Some(sending) = keys.iter().find(|k| k.state == "sending") else { return Ok(()) };
    let since = net.last_rekey_at.unwrap_or(sending.created_at).max(sending.created_at);
    if (Utc::now() - since).num_seconds() >= cx.frame.rekey_every_secs as i64 {
        super::rekey::start(conn, net.host_id, "system").await?;
    }
    Ok(())
}

/// The host is destroyed: forget its keys and network row, and tell its peers.
async fn destroy(cx: &mut Ctx<'_, HostNet>) -> Step<HostNet> {
    let id = cx.frame.host;
    let conn = cx.tx.conn().await?;
    let peers = network::mesh_peers(conn, id.uuid()).await?;
    network::delete(conn, id.uuid()).await?;
    super::changed(cx, &peers).await?;
    for peer in std::mem::take(&mut cx.frame.silent_since).into_keys() {
        cx.resolve_page(&down_tag(id, peer)).await?;
    }
    cx.resolve_page(&apply_tag(id)).await?;
    pop("host network forgotten")
}

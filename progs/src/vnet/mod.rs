//! The vnet family: the progs that keep private networks true across hosts.
//!
//! - [`host_net`]: `Vnet::HostNet`, one per host with private networking:
//!   computes the host's whole desired state from the database
//!   ([`desired`]), pushes it with `net-apply`, records what was applied and
//!   what the tunnels say, pages when a tunnel's peer stops answering, and
//!   starts the host's daily rekey;
//! - [`rekey`]: `Vnet::Rekey`, make-before-break in three phases;
//! - [`keys`]: WireGuard keys, made here and sealed at rest;
//! - [`view`]: a subnet's mesh as the API, CLI and console show it.
//!
//! Everyone else changes a host's network through the helpers below, in
//! their own transaction: they raise the `want_seq` of every host the
//! change touches and wake those hosts' strands (`models::network`).

pub mod desired;
pub mod host_net;
pub mod keys;
pub mod rekey;
pub mod view;

use skein_engine::{Ctx, Prog};
use skein_models::network::{self, Bumped};
use skein_models::vm::Vm;
use skein_models::{Ubid, UbidType};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ssh::keys::SecretKey;

pub fn registry() -> skein_engine::Registry {
    skein_engine::Registry::new().with::<host_net::HostNet>().with::<rekey::Rekey>()
}

/// The host's network strand, started now (in the caller's transaction) if
/// it had none.
pub async fn ensure_strand(conn: &mut PgConnection, host: Uuid) -> anyhow::Result<Ubid> {
    let fresh = Ubid::generate(UbidType::Strand);
    let (strand, made) = network::ensure(conn, host, fresh.uuid()).await?;
    let strand = Ubid::from_uuid(strand);
    if made {
        let frame = host_net::Frame { host: Ubid::from_uuid(host), ..Default::default() };
        skein_engine::enqueue::start_for(conn, strand, frame, host_net::Label::Converge).await?;
    }
    Ok(strand)
}

/// These hosts should change: raise their `want_seq` and wake their strands
/// when the caller's transaction commits.
pub async fn changed<P: Prog>(cx: &mut Ctx<'_, P>, hosts: &[Uuid]) -> anyhow::Result<Vec<Bumped>> {
    let bumped = network::bump(cx.tx.conn().await?, hosts).await?;
    for b in &bumped {
        cx.incr(Ubid::from_uuid(b.strand_id), host_net::Sem::Apply).await?;
    }
    Ok(bumped)
}

/// The VM's private NIC is wanted on its host now (its unix user exists
/// there): the host gets a network strand and a tunnel key if it had none,
/// and it and every other host of the subnet apply again. Returns the seq
/// the VM's host must have applied before its qemu may start.
pub async fn want_nic<P: Prog>(cx: &mut Ctx<'_, P>, vm: &Vm) -> anyhow::Result<i64> {
    let (Some(host), Some(subnet)) = (vm.host_id, vm.subnet_id) else {
        anyhow::bail!("vm {} has no host or no subnet: it needs no private NIC", vm.name);
    };
    let secret = cx.resource::<SecretKey>()?.clone();
    let conn = cx.tx.conn().await?;
    ensure_strand(conn, host).await?;
    let mut hosts = network::subnet_hosts(conn, subnet).await?;
    hosts.push(host);
    let bumped = changed(cx, &hosts).await?;
    let conn = cx.tx.conn().await?;
    // Its host's row is locked now (bumped), so the key the strand may be
    // dropping (no NIC left) and this one are decided one after the other.
    if network::keys_of(conn, &[host]).await?.is_empty() {
        keys::make(conn, &secret, host, "sending").await?;
    }
    network::want_nic(conn, vm.id).await?;
    seq_of(&bumped, host)
}

/// The VM left its host (it is destroyed): its host and the others of its
/// subnet apply again. Returns the seq its host must reach for its NIC to
/// be gone, or None if it never had one.
pub async fn nic_gone<P: Prog>(cx: &mut Ctx<'_, P>, vm: &Vm) -> anyhow::Result<Option<i64>> {
    let (Some(host), Some(subnet)) = (vm.host_id, vm.subnet_id) else { return Ok(None) };
    let conn = cx.tx.conn().await?;
    let mut hosts = network::subnet_hosts(conn, subnet).await?;
    hosts.push(host);
    let bumped = changed(cx, &hosts).await?;
    Ok(bumped.iter().find(|b| b.host_id == host).map(|b| b.want_seq))
}

fn seq_of(bumped: &[Bumped], host: Uuid) -> anyhow::Result<i64> {
    bumped.iter().find(|b| b.host_id == host).map(|b| b.want_seq).ok_or_else(|| anyhow::anyhow!("host {} has no network row", Ubid::from_uuid(host)))
}

/// Whether the host has applied what was wanted at `seq` (or has no
/// network to apply any more: it is destroyed or never had one).
pub async fn applied(conn: &mut PgConnection, host: Uuid, seq: i64) -> anyhow::Result<bool> {
    Ok(network::get(conn, host).await?.is_none_or(|n| n.applied_seq >= seq))
}

/// The host rebooted: whatever it had is gone, apply it again now.
pub async fn host_rebooted<P: Prog>(cx: &mut Ctx<'_, P>, host: Uuid) -> anyhow::Result<()> {
    changed(cx, &[host]).await?;
    Ok(())
}

/// The host is being destroyed: end its network strand (which forgets its
/// keys and tells its peers).
pub async fn host_destroyed<P: Prog>(cx: &mut Ctx<'_, P>, host: Uuid) -> anyhow::Result<()> {
    if let Some(n) = network::get(cx.tx.conn().await?, host).await? {
        cx.incr(Ubid::from_uuid(n.strand_id), skein_engine::Signal::DESTROY).await?;
    }
    Ok(())
}

/// Tear down everything skein made on the host for private networks (an
/// empty desired state), while its agent is still there, if it ever had
/// any. Called by the host's own destroy: reads, then asks the host holding
/// no database. Returns whether there was anything to tear down.
pub async fn teardown<P: Prog>(cx: &Ctx<'_, P>, host: &crate::host::Host) -> anyhow::Result<bool> {
    if network::get(&mut *cx.read().await?, host.row.id).await?.is_none() {
        return Ok(false);
    }
    host_net::net_apply(host, &desired::empty()).await?;
    Ok(true)
}

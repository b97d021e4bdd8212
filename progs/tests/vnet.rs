//! Private networks across hosts, on the control side only (no host): the
//! desired state each host is given as VMs of subnets come and go on two
//! hosts, and a rekey's three phases, each entered only once every host
//! involved has applied the one before (issue 13). Hosts "apply" here by
//! having their `applied_seq` moved up, as their network strand does after
//! `net-apply` answered.

use skein_engine::prelude::*;
use skein_engine::testing::Harness;
use skein_engine::{Registry, Resources};
use skein_models::network;
use skein_models::{page, sshable, vm, vm_host, UbidType};
use skein_progs::ssh::keys::SecretKey;
use skein_progs::vm::{self as vms, nexus, Spec};
use skein_progs::vnet::{self, desired, host_net, rekey};
use uuid::Uuid;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakeKeyForDatabaseRowsOnly t@x";

/// What Vm::Nexus does around a VM's qemu, as a prog of its own: its NIC
/// wanted (before qemu starts) or gone (after it is destroyed).
struct NicChange;

labels! {
    enum NicLabel for NicChange { Go }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct NicFrame {
    vm: Ubid,
    gone: bool,
}

/// The seq the VM's host must reach (None: it had no NIC there).
#[derive(Debug, Serialize, Deserialize)]
struct NicSeq {
    seq: Option<i64>,
}

#[async_trait]
impl Prog for NicChange {
    const NAME: &'static str = "Test::NicChange";
    type Label = NicLabel;
    type Frame = NicFrame;
    type Sem = NoSems;
    type Output = NicSeq;

    async fn run(cx: &mut Ctx<'_, Self>, _: NicLabel) -> Step<Self> {
        let row = vm::get(&mut *cx.read().await?, cx.frame.vm.uuid()).await?.unwrap();
        let seq = match cx.frame.gone {
            false => Some(vnet::want_nic(cx, &row).await?),
            true => vnet::nic_gone(cx, &row).await?,
        };
        pop(NicSeq { seq })
    }
}

struct World {
    h: Harness,
    secret: SecretKey,
}

impl World {
    async fn new() -> World {
        let secret = SecretKey::random();
        let registry = Registry::new().merge(&skein_progs::registry()).with::<NicChange>();
        let mut h = Harness::new(registry).await;
        h.runner = h.runner.clone().with_resources(Resources::default().with(secret.clone()));
        World { h, secret }
    }

    async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        self.h.pool().acquire().await.unwrap()
    }

    /// An accepting host whose tunnels listen on `underlay`.
    async fn host(&self, name: &str, underlay: &str) -> Uuid {
        let mut conn = self.conn().await;
        let sh = Ubid::generate(UbidType::Sshable).uuid();
        sshable::insert(&mut conn, sh, "192.0.2.1", 22, "root", b"sealed").await.unwrap();
        let id = Ubid::generate(UbidType::VmHost).uuid();
        vm_host::insert(&mut conn, id, sh, name, "/var/lib/skein").await.unwrap();
        let facts = vm_host::Facts { cpus: Some(8), memory_mib: Some(16_384), storage_free_mib: Some(100_000), ..Default::default() };
        vm_host::record_facts(&mut conn, id, &facts).await.unwrap();
        vm_host::set_state(&mut conn, id, vm_host::HostState::Accepting).await.unwrap();
        vm_host::set_underlay(&mut conn, id, Some(underlay)).await.unwrap();
        id
    }

    async fn project(&self, name: &str) -> Ubid {
        let id = Ubid::generate(UbidType::Project);
        sqlx::query("INSERT INTO project (id, name, vm_quota) VALUES ($1, $2, 20)").bind(id.uuid()).bind(name).execute(self.h.pool()).await.unwrap();
        id
    }

    async fn subnet(&self, project: Ubid, cidr: &str) -> Uuid {
        skein_models::subnet::create(&mut *self.conn().await, project.uuid(), "net", cidr).await.unwrap().uuid()
    }

    /// A VM of `subnet` placed on `host` (its strand is not run: nothing here talks to a host).
    async fn vm(&self, project: Ubid, name: &str, subnet: Uuid, host: Uuid) -> Uuid {
        let spec = Spec { name, cores: 1, memory_mib: 512, disk_mib: 1024, public_key: KEY, subnet: Some(&Ubid::from_uuid(subnet).to_string()) };
        let mut tx = self.h.pool().begin().await.unwrap();
        let id = vms::create(&mut tx, project, &spec, nexus::Frame::default()).await.unwrap().uuid();
        vm::place(&mut tx, id, host).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Its NIC wanted (or gone): returns the seq its host must reach.
    async fn nic(&self, vm: Uuid, gone: bool) -> Option<i64> {
        let id = self.h.start(NicFrame { vm: Ubid::from_uuid(vm), gone }, NicLabel::Go).await;
        let report = self.h.step(id).await;
        report.exitval().unwrap_or_else(|| panic!("{report:?}"))["seq"].as_i64()
    }

    async fn destroyed(&self, vm: Uuid) -> Option<i64> {
        let mut conn = self.conn().await;
        vm::set_desired(&mut conn, vm, vm::DesiredState::Destroyed).await.unwrap();
        vm::set_state(&mut conn, vm, vm::VmState::Destroyed).await.unwrap();
        drop(conn);
        self.nic(vm, true).await
    }

    async fn desired(&self, host: Uuid) -> desired::Desired {
        let facts = host_net::read_facts(&mut *self.conn().await, &self.secret, host).await.unwrap();
        desired::compute(&facts)
    }

    async fn net(&self, host: Uuid) -> Option<network::HostNetwork> {
        network::get(&mut *self.conn().await, host).await.unwrap()
    }

    /// Every host applies what is wanted of it now.
    async fn all_apply(&self) {
        sqlx::query("UPDATE host_network SET applied_seq = want_seq").execute(self.h.pool()).await.unwrap();
    }

    async fn keys(&self, host: Uuid) -> Vec<(i32, String)> {
        network::key_infos(&mut *self.conn().await, &[host]).await.unwrap().into_iter().map(|k| (k.gen, k.state)).collect()
    }

    async fn vni(&self, subnet: Uuid) -> i32 {
        skein_models::subnet::by_id(&mut *self.conn().await, subnet).await.unwrap().unwrap().vni
    }

    async fn public_key(&self, host: Uuid, gen: i32) -> String {
        let keys = network::keys_of(&mut *self.conn().await, &[host]).await.unwrap();
        keys.into_iter().find(|k| k.gen == gen).unwrap().public_key
    }
}

fn name(id: Uuid) -> String {
    Ubid::from_uuid(id).to_string()
}

/// The keys `d` gives the peer `host`, as (public key, send).
fn keys_for(d: &desired::Desired, host: Uuid) -> Vec<(String, bool)> {
    d.peers.iter().filter(|p| p.host == name(host)).flat_map(|p| p.keys.iter().map(|k| (k.public_key.clone(), k.send))).collect()
}

#[tokio::test]
async fn a_subnet_on_two_hosts_is_a_mesh_each_project_its_own_segment_and_nothing_is_left_when_it_goes() {
    let w = World::new().await;
    let (a, b) = (w.host("a", "10.252.0.2").await, w.host("b", "10.252.0.3").await);
    let (p1, p2) = (w.project("one").await, w.project("two").await);
    // Two projects, the same range, on the same two hosts.
    let (s1, s2) = (w.subnet(p1, "10.9.0.0/24").await, w.subnet(p2, "10.9.0.0/24").await);
    let va = w.vm(p1, "va", s1, a).await;
    let vb = w.vm(p1, "vb", s1, b).await;
    let vc = w.vm(p2, "vc", s2, a).await;
    let vd = w.vm(p2, "vd", s2, b).await;

    // The first NIC on a host gives it a network strand and a key.
    let seq = w.nic(va, false).await.unwrap();
    let net_a = w.net(a).await.unwrap();
    assert!(net_a.want_seq >= seq && net_a.applied_seq < seq, "a must apply before va's qemu starts: {net_a:?}");
    assert_eq!(w.h.strand(Ubid::from_uuid(net_a.strand_id)).await.prog, "Vnet::HostNet");
    assert_eq!(w.keys(a).await, [(1, "sending".to_string())]);
    let alone = w.desired(a).await;
    assert_eq!((alone.nics.len(), alone.segments.len(), alone.tunnels.len()), (1, 1, 1));
    assert!(alone.segments[0].peers.is_empty() && alone.peers.is_empty(), "no other host has the subnet yet");

    // vb on b: b joins the mesh, and a is asked to apply again (its segment gains a peer).
    let before = w.net(a).await.unwrap().want_seq;
    w.nic(vb, false).await.unwrap();
    assert!(w.net(a).await.unwrap().want_seq > before, "a peer joining changes a");
    for v in [vc, vd] {
        w.nic(v, false).await.unwrap();
    }
    let (da, db) = (w.desired(a).await, w.desired(b).await);
    // One tunnel between the hosts, whatever number of subnets they share, to b's underlay.
    assert_eq!(da.tunnels.len(), 1);
    assert_eq!(da.peers.len(), 1);
    assert_eq!(da.peers[0].endpoint, "10.252.0.3");
    assert_eq!(keys_for(&da, b), [(w.public_key(b, 1).await, true)]);
    assert_eq!(keys_for(&db, a), [(w.public_key(a, 1).await, true)]);
    // A segment per subnet: same range, different VNIs, each reaching only the other host.
    let (vni1, vni2) = (w.vni(s1).await, w.vni(s2).await);
    assert_ne!(vni1, vni2);
    assert_eq!(da.segments.iter().map(|s| (s.vni, s.peers.clone())).collect::<Vec<_>>(), [(vni1, vec![name(b)]), (vni2, vec![name(b)])]);
    assert_eq!(db.segments.iter().map(|s| (s.vni, s.peers.clone())).collect::<Vec<_>>(), [(vni1, vec![name(a)]), (vni2, vec![name(a)])]);
    let mut nics: Vec<(String, i32)> = da.nics.iter().map(|n| (n.vm.clone(), n.vni)).collect();
    nics.sort_by_key(|n| n.1);
    assert_eq!(nics, [(name(va), vni1), (name(vc), vni2)]);

    // Project two leaves b: a's segment of s2 loses its peer, s1 keeps it.
    let gone = w.destroyed(vd).await.unwrap();
    assert!(w.net(b).await.unwrap().applied_seq < gone, "vd's strand waits for b to drop its tap");
    let da = w.desired(a).await;
    assert!(da.segments.iter().find(|s| s.vni == vni2).unwrap().peers.is_empty());
    assert!(!w.desired(b).await.nics.iter().any(|n| n.vm == name(vd)));

    // Everything on b goes: b wants nothing at all, and once it applied that, its keys go.
    w.destroyed(vb).await.unwrap();
    assert!(w.desired(b).await == desired::empty(), "{:?}", w.desired(b).await);
    assert!(w.desired(a).await.peers.is_empty(), "a forgets b");
    let mut conn = w.conn().await;
    let seq_b = w.net(b).await.unwrap().want_seq;
    assert_eq!(network::drop_keys_if_unwanted(&mut conn, b, seq_b - 1).await.unwrap(), 0, "not if something was wanted since");
    assert_eq!(network::drop_keys_if_unwanted(&mut conn, b, seq_b).await.unwrap(), 1);
    assert!(w.keys(b).await.is_empty());
}

#[tokio::test]
async fn a_rekey_brings_the_new_key_up_then_switches_then_drops_the_old_each_once_the_hosts_applied() {
    let w = World::new().await;
    let (a, b) = (w.host("a", "10.252.0.2").await, w.host("b", "10.252.0.3").await);
    let p = w.project("one").await;
    let s = w.subnet(p, "10.9.0.0/24").await;
    for (name, host) in [("va", a), ("vb", b)] {
        let v = w.vm(p, name, s, host).await;
        w.nic(v, false).await;
    }
    w.all_apply().await;
    let old_a = w.public_key(a, 1).await;
    assert_eq!(keys_for(&w.desired(b).await, a), [(old_a.clone(), true)]);

    // On demand, for the subnet: each of its hosts gets one rekey (asking again starts no second).
    let mut tx = w.h.pool().begin().await.unwrap();
    let started = rekey::start_for_subnet(&mut tx, s, "operator").await.unwrap();
    let again = rekey::start_for_subnet(&mut tx, s, "operator").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(started.len(), 2);
    assert_eq!(started.iter().map(|s| s.strand).collect::<Vec<_>>(), again.iter().map(|s| s.strand).collect::<Vec<_>>());
    let strand_a = started.iter().find(|s| s.host.uuid() == a).unwrap().strand.unwrap();
    let strand_b = started.iter().find(|s| s.host.uuid() == b).unwrap().strand.unwrap();
    // b's rekey is left for later: this follows a's alone, so a page shows what stalls.
    sqlx::query("UPDATE strand SET stack = jsonb_set(stack, '{0,stall_secs}', '0') WHERE id = $1").bind(strand_a.uuid()).execute(w.h.pool()).await.unwrap();

    // Phase 1: a's new key is up beside the old one; b learns it; nobody sends on it yet.
    // a applies it first, and only then is b asked to.
    let b_seq = w.net(b).await.unwrap().want_seq;
    w.h.run(strand_a).await;
    assert_eq!(w.net(b).await.unwrap().want_seq, b_seq, "b waits for a");
    sqlx::query("UPDATE host_network SET applied_seq = want_seq WHERE host_id = $1").bind(a).execute(w.h.pool()).await.unwrap();
    w.h.run(strand_a).await;
    assert!(w.net(b).await.unwrap().want_seq > b_seq, "then b is asked");
    assert_eq!(w.keys(a).await, [(1, "sending".to_string()), (2, "new".to_string())]);
    let new_a = w.public_key(a, 2).await;
    let da = w.desired(a).await;
    assert_eq!(da.tunnels.iter().map(|t| (t.gen, t.send)).collect::<Vec<_>>(), [(1, true), (2, false)]);
    assert_eq!(keys_for(&w.desired(b).await, a), [(old_a.clone(), true), (new_a.clone(), false)], "b still sends to a's old gen");
    assert_eq!(w.net(a).await.unwrap().rekey_phase.as_deref(), Some("new"));

    // Not one step further until both hosts applied it; meanwhile the stall is paged.
    let report = w.h.step(strand_a).await;
    report.assert_nap(1);
    assert_eq!(w.keys(a).await.len(), 2);
    let tag = format!("vnet-rekey-stalled:{}", Ubid::from_uuid(a));
    assert_eq!(page::by_tag(&mut *w.conn().await, &tag).await.unwrap().iter().filter(|p| p.resolved_at.is_none()).count(), 1);

    // Phase 2: a sends on the new gen, b reaches a there; the old gen still accepts.
    w.all_apply().await;
    w.h.run(strand_a).await;
    w.all_apply().await;
    w.h.run(strand_a).await;
    assert_eq!(w.keys(a).await, [(1, "retiring".to_string()), (2, "sending".to_string())]);
    assert_eq!(w.desired(a).await.tunnels.iter().map(|t| (t.gen, t.send)).collect::<Vec<_>>(), [(1, false), (2, true)]);
    assert_eq!(keys_for(&w.desired(b).await, a), [(old_a.clone(), false), (new_a.clone(), true)], "b sends to the new, still knows the old");

    // Phase 3: the old gen goes everywhere.
    w.all_apply().await;
    w.h.run(strand_a).await;
    w.all_apply().await;
    w.h.run(strand_a).await;
    assert_eq!(w.keys(a).await, [(2, "sending".to_string())]);
    assert_eq!(w.desired(a).await.tunnels.len(), 1);
    assert_eq!(keys_for(&w.desired(b).await, a), [(new_a.clone(), true)]);
    assert!(w.h.try_strand(strand_a).await.is_some_and(|s| s.exitval.is_none()), "not done before the drop is applied");

    w.all_apply().await;
    w.h.run(strand_a).await;
    let net = w.net(a).await.unwrap();
    assert!(net.last_rekey_at.is_some() && net.rekey_strand_id.is_none() && net.rekey_phase.is_none(), "{net:?}");
    assert!(page::by_tag(&mut *w.conn().await, &tag).await.unwrap().iter().all(|p| p.resolved_at.is_some()), "the stall page is resolved");
    // b's own rekey was untouched meanwhile.
    assert_eq!(w.keys(b).await, [(1, "sending".to_string())]);
    assert_eq!(w.net(b).await.unwrap().rekey_strand_id, Some(strand_b.uuid()));
}

#[tokio::test]
async fn a_subnets_vm_goes_to_any_host_with_room_not_to_its_subnets_host() {
    let w = World::new().await;
    let (busy, roomy) = (w.host("busy", "10.252.0.2").await, w.host("roomy", "10.252.0.3").await);
    sqlx::query("UPDATE vm_host SET used_cores = 6 WHERE id = $1").bind(busy).execute(w.h.pool()).await.unwrap();
    let p = w.project("one").await;
    let s = w.subnet(p, "10.9.0.0/24").await;
    w.vm(p, "first", s, busy).await;

    let spec = Spec { name: "second", cores: 1, memory_mib: 512, disk_mib: 1024, public_key: KEY, subnet: Some("net") };
    let mut tx = w.h.pool().begin().await.unwrap();
    let second = vms::create(&mut tx, p, &spec, nexus::Frame::default()).await.unwrap();
    tx.commit().await.unwrap();
    w.h.step(second).await.assert_hop(nexus::Label::Setup);
    assert_eq!(vm::get(&mut *w.conn().await, second.uuid()).await.unwrap().unwrap().host_id, Some(roomy));
}

//! Rows the prog tests stand on, made directly in the database, and the
//! scripted host their labels talk to (no machine, no root, no network).
#![allow(dead_code)] // each test file uses some of these

use skein_engine::testing::Harness;
use skein_engine::Resources;
use skein_models::{sshable, vm_host, Ubid, UbidType};
use skein_progs::ssh::keys::SecretKey;
use skein_progs::ssh::scripted::{Scripted, HOST_KEY};

/// The key host rows' private keys are sealed with in tests.
pub fn secret() -> SecretKey {
    SecretKey::from_hex(&"5e".repeat(32)).unwrap()
}

/// The private key a test host row logs in with (sealed in its row).
pub const PRIVATE_KEY: &str = "test private key";

/// A host row in `state` with room for a few VMs (8 cores, 16 GiB), its
/// host key pinned, and no strand.
pub async fn host_row(h: &Harness, state: vm_host::HostState) -> Ubid {
    let mut conn = h.pool().acquire().await.unwrap();
    let sh = Ubid::generate(UbidType::Sshable).uuid();
    sshable::insert(&mut conn, sh, "192.0.2.1", 22, "root", &secret().seal(sh.as_bytes(), PRIVATE_KEY.as_bytes())).await.unwrap();
    sshable::pin_host_key(&mut conn, sh, HOST_KEY).await.unwrap();
    let id = Ubid::generate(UbidType::VmHost);
    vm_host::insert(&mut conn, id.uuid(), sh, "h1", "/var/lib/skein").await.unwrap();
    let facts = vm_host::Facts { cpus: Some(8), memory_mib: Some(16_384), storage_free_mib: Some(100_000), ..Default::default() };
    vm_host::record_facts(&mut conn, id.uuid(), &facts).await.unwrap();
    vm_host::set_state(&mut conn, id.uuid(), state).await.unwrap();
    id
}

/// From now on the harness's runner reaches hosts only through the
/// returned script (and opens their keys with [`secret`]).
pub fn script_hosts(h: &mut Harness) -> Scripted {
    let host = Scripted::new();
    h.runner = h.runner.clone().with_resources(Resources::default().with(skein_progs::ssh::shell(host.clone())).with(secret()));
    host
}

/// A healthy host: it answers a checkup with boot id `boot-1` and this build's agent.
pub fn healthy(host: &Scripted) -> &Scripted {
    host.answer("agent/bin/boot-id", "boot-1\n").answer("agent/bin/agent-version", format!("{}\n", skein_progs::host::agent::version()))
}

/// Open pages with `tag`.
pub async fn open_page(h: &Harness, tag: &str) -> Option<skein_models::page::Page> {
    skein_models::page::open_with_tag(&mut h.pool().acquire().await.unwrap(), tag).await.unwrap()
}

pub async fn host(h: &Harness, id: Ubid) -> vm_host::VmHost {
    vm_host::get(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap()
}

/// The kinds of the events recorded for `id`, oldest first.
pub async fn event_kinds(h: &Harness, id: Ubid) -> Vec<String> {
    skein_models::event::of(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().into_iter().map(|e| e.kind).collect()
}

/// A project with room for 20 VMs.
pub async fn project(h: &Harness) -> Ubid {
    let id = Ubid::generate(UbidType::Project);
    skein_models::project::insert(&mut h.pool().acquire().await.unwrap(), id.uuid(), "tenant", 20).await.unwrap();
    id
}

/// The owner key of test VMs (rows only: no guest boots).
pub const VM_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakeKeyForDatabaseRowsOnly t@x";

/// A VM of 1 core and 512 MiB on `host` (its quota and the host's capacity
/// taken, as placing does), in `state`, its strand at `label`.
pub async fn vm_at(h: &Harness, host: Ubid, state: skein_models::vm::VmState, frame: skein_progs::vm::nexus::Frame, label: skein_progs::vm::nexus::Label) -> Ubid {
    use skein_models::{capacity, vm};
    let project = project(h).await;
    let id = Ubid::generate(UbidType::Vm);
    let mut tx = h.pool().begin().await.unwrap();
    assert!(capacity::take_quota(&mut tx, project.uuid()).await.unwrap());
    let new = vm::NewVm { id: id.uuid(), project_id: project.uuid(), name: "vm1", cores: 1, memory_mib: 512, disk_mib: 1024, public_key: VM_KEY };
    vm::insert(&mut tx, &new).await.unwrap();
    // Reserved as placing does, whatever state the host is in now.
    let host_state = vm_host::get(&mut tx, host.uuid()).await.unwrap().unwrap().state;
    vm_host::set_state(&mut tx, host.uuid(), vm_host::HostState::Accepting).await.unwrap();
    let size = capacity::Size { cores: 1, memory_mib: 512, disk_mib: 1024 };
    assert_eq!(capacity::reserve(&mut tx, size).await.unwrap(), Some(host.uuid()), "the test's only host has room");
    vm_host::set_state(&mut tx, host.uuid(), host_state).await.unwrap();
    vm::place(&mut tx, id.uuid(), host.uuid()).await.unwrap();
    vm::set_state(&mut tx, id.uuid(), state).await.unwrap();
    skein_engine::enqueue::start_for(&mut tx, id, frame, label).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// A running VM on `host` whose strand watches it (Running).
pub async fn vm_on(h: &Harness, host: Ubid, state: skein_models::vm::VmState) -> Ubid {
    vm_at(h, host, state, Default::default(), skein_progs::vm::nexus::Label::Running).await
}

pub async fn vm(h: &Harness, id: Ubid) -> skein_models::vm::Vm {
    skein_models::vm::get(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap()
}

pub async fn vm_state(h: &Harness, id: Ubid) -> skein_models::vm::VmState {
    skein_models::vm::get(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap().state
}

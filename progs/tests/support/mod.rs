//! Rows the prog tests stand on, made directly in the database (no SSH).

use skein_engine::testing::Harness;
use skein_models::{sshable, vm_host, Ubid, UbidType};

/// A host row in `state` with room for a few VMs (8 cores, 16 GiB), and no
/// strand: nothing here talks to it.
pub async fn host_row(h: &Harness, state: vm_host::HostState) -> Ubid {
    let mut conn = h.pool().acquire().await.unwrap();
    let sh = Ubid::generate(UbidType::Sshable).uuid();
    sshable::insert(&mut conn, sh, "192.0.2.1", 22, "root", b"sealed").await.unwrap();
    let id = Ubid::generate(UbidType::VmHost);
    vm_host::insert(&mut conn, id.uuid(), sh, "h1", "/var/lib/skein").await.unwrap();
    let facts = vm_host::Facts { cpus: Some(8), memory_mib: Some(16_384), storage_free_mib: Some(100_000), ..Default::default() };
    vm_host::record_facts(&mut conn, id.uuid(), &facts).await.unwrap();
    vm_host::set_state(&mut conn, id.uuid(), state).await.unwrap();
    id
}

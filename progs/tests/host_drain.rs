//! `drain` on `Vm::HostNexus`, label by label (no SSH: draining is a
//! database change in the Wait label). Returning from unreachable and
//! re-preparing keep a drained host draining: those paths talk to a real
//! host and are tested end to end in spec/tests/api_e2e.rs.

use skein_engine::enqueue;
use skein_engine::testing::Harness;
use skein_models::capacity::{self, Size};
use skein_models::vm_host::HostState;
use skein_models::{event, vm_host, Ubid};
use skein_progs::host::nexus::{self, HostNexus};

mod support;

/// A host row in `state` with room for VMs, and its strand waiting in Wait.
async fn host_in(h: &Harness, state: HostState) -> Ubid {
    let id = support::host_row(h, state).await;
    enqueue::start_for(&mut h.pool().acquire().await.unwrap(), id, nexus::Frame::default(), nexus::Label::Wait).await.unwrap();
    id
}

async fn state(h: &Harness, id: Ubid) -> HostState {
    vm_host::get(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap().state
}

async fn events(h: &Harness, id: Ubid) -> Vec<(String, serde_json::Value)> {
    event::of(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().into_iter().map(|e| (e.kind, e.detail)).collect()
}

const SMALL: Size = Size { cores: 1, memory_mib: 512, disk_mib: 1000 };

#[tokio::test]
async fn drain_makes_an_accepting_host_draining_and_placement_passes_it_by() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = host_in(&h, HostState::Accepting).await;
    assert!(h.incr(id, nexus::Sem::Drain).await);
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(state(&h, id).await, HostState::Draining);
    assert!(h.frame::<HostNexus>(id).await.draining, "remembered for later checkups and re-preparation");
    assert_eq!(events(&h, id).await, [("draining".to_string(), serde_json::json!({"was": "accepting"}))]);
    assert!(h.sems(id).await.is_empty(), "the semaphore is consumed");
    let placed = capacity::reserve(&mut h.pool().acquire().await.unwrap(), SMALL).await.unwrap();
    assert_eq!(placed, None, "no VM is placed on a draining host");

    // Draining again changes nothing and records nothing new.
    assert!(h.incr(id, nexus::Sem::Drain).await);
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(events(&h, id).await.len(), 1);
    assert_eq!(state(&h, id).await, HostState::Draining);
}

#[tokio::test]
async fn an_unreachable_host_stays_unreachable_when_drained_but_will_come_back_draining() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = host_in(&h, HostState::Unreachable).await;
    assert!(h.incr(id, nexus::Sem::Drain).await);
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(state(&h, id).await, HostState::Unreachable, "what is true now");
    assert!(h.frame::<HostNexus>(id).await.draining);
    assert_eq!(events(&h, id).await, [("draining".to_string(), serde_json::json!({"was": "unreachable"}))]);
}

#[tokio::test]
async fn a_frame_written_before_drain_existed_reads_as_not_draining() {
    let frame: nexus::Frame = serde_json::from_value(serde_json::json!({"checkup_secs": 60})).unwrap();
    assert!(!frame.draining);
}

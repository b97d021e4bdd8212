//! `Vm::Nexus`, label by label, against a scripted host: set up, launch
//! (and a failed launch, paged at the third), boot, watch (qemu died, an
//! unreachable host, unavailable and back), stop, start, restart, destroy.
//! No machine; `vm_waiting.rs` has placing, spec/ the end-to-end tests.

use serde_json::json;
use skein_engine::testing::Harness;
use skein_engine::Signal;
use skein_models::vm::{DesiredState, VmState};
use skein_models::vm_host::HostState;
use skein_models::Ubid;
use skein_progs::host::VmStatus;
use skein_progs::ssh::scripted::Scripted;
use skein_progs::vm::nexus::{self, Nexus};

mod support;
use support::{event_kinds, host, open_page, script_hosts};

/// A harness with scripted hosts, an accepting host, and a VM on it in
/// `state` whose strand is at `label`.
async fn vm_at(state: VmState, frame: nexus::Frame, label: nexus::Label) -> (Harness, Scripted, Ubid) {
    let mut h = Harness::new(skein_progs::registry()).await;
    let script = script_hosts(&mut h);
    let host = support::host_row(&h, HostState::Accepting).await;
    let vm = support::vm_at(&h, host, state, frame, label).await;
    (h, script, vm)
}

/// The host says this about the VM (`vm-status`).
fn says(script: &Scripted, status: VmStatus) {
    script.answer("agent/bin/vm-status", serde_json::to_string(&status).unwrap());
}

fn booted(port: u16) -> VmStatus {
    VmStatus { exists: true, running: true, pid: Some(4242), ssh_port: Some(port), ssh_ready: true }
}

fn booting() -> VmStatus {
    VmStatus { ssh_ready: false, ..booted(10022) }
}

fn gone() -> VmStatus {
    VmStatus { exists: true, ..VmStatus::default() }
}

fn run_of(vm: Ubid) -> String {
    format!("vm-{vm}")
}

// --- setting up and launching ------------------------------------------------------

#[tokio::test]
async fn start_goes_on_to_set_up_a_vm_already_placed() {
    let (h, script, vm) = vm_at(VmState::Creating, nexus::Frame::default(), nexus::Label::Start).await;
    h.step(vm).await.assert_hop(nexus::Label::Setup);
    assert!(script.sent().is_empty());
}

#[tokio::test]
async fn setup_makes_the_vm_on_its_host_then_launches() {
    let (h, script, vm) = vm_at(VmState::Creating, nexus::Frame::default(), nexus::Label::Setup).await;
    script.answer("agent/bin/vm-setup", "");
    h.step(vm).await.assert_hop(nexus::Label::Launch);
    let setup = script.sent().into_iter().find(|c| c.contains("vm-setup")).unwrap();
    assert!(setup.starts_with(&format!("SKEIN_ROOT=/var/lib/skein /var/lib/skein/agent/bin/vm-setup {vm} 1 512 ")), "{setup}");
}

#[tokio::test]
async fn a_setup_the_host_refuses_fails_the_step_with_what_it_said() {
    let (h, script, vm) = vm_at(VmState::Creating, nexus::Frame::default(), nexus::Label::Setup).await;
    script.fail("agent/bin/vm-setup", 1, "vm-setup: no space left for the disk");
    h.step(vm).await.assert_failed("no space left for the disk");
}

#[tokio::test]
async fn launch_starts_qemu_detached_and_waits_a_moment() {
    let (h, script, vm) = vm_at(VmState::Creating, nexus::Frame::default(), nexus::Label::Launch).await;
    script.answer("daemonizer check", "NotStarted\n").answer("daemonizer run", "");
    h.step(vm).await.assert_nap(1);
    let run = format!("daemonizer run {} /var/lib/skein/agent/bin/vm-run {vm}", run_of(vm));
    assert!(script.was_sent(&run), "{:?}", script.sent());
    assert!(!script.was_sent("daemonizer clean"), "nothing to forget");
    assert_eq!(support::vm(&h, vm).await.state, VmState::Starting);
    assert_eq!(event_kinds(&h, vm).await, ["launched"]);
}

#[tokio::test]
async fn launch_leaves_a_running_qemu_alone() {
    let (h, script, vm) = vm_at(VmState::Starting, nexus::Frame::default(), nexus::Label::Launch).await;
    script.answer("daemonizer check", "InProgress\n");
    h.step(vm).await.assert_hop(nexus::Label::WaitBoot);
    assert!(!script.was_sent("daemonizer run"));
}

#[tokio::test]
async fn a_failed_launch_is_recorded_with_its_log_retried_and_paged_at_the_third() {
    let (h, script, vm) = vm_at(VmState::Starting, nexus::Frame::default(), nexus::Label::Launch).await;
    script.answer("daemonizer check", "Failed\n").answer("daemonizer logs", "qemu: could not open disk").answer("daemonizer clean", "");
    script.answer("daemonizer run", "");
    let tag = format!("vm-launch:{vm}");
    for failures in 1..=3 {
        h.step(vm).await.assert_nap(1);
        assert_eq!(h.frame::<Nexus>(vm).await.launch_failures, failures);
        assert_eq!(open_page(&h, &tag).await.is_some(), failures == 3, "paged at the third failure");
    }
    assert!(script.was_sent(&format!("daemonizer clean {}", run_of(vm))), "the failed run is forgotten before the next");
    let kinds = event_kinds(&h, vm).await;
    assert_eq!(kinds.iter().filter(|k| *k == "launch-failed").count(), 3, "{kinds:?}");
    assert_eq!(open_page(&h, &tag).await.unwrap().details["log"], "qemu: could not open disk");
}

// --- booting -------------------------------------------------------------------------

#[tokio::test]
async fn wait_boot_waits_for_the_guests_ssh_and_records_where_it_answers() {
    let (h, script, vm) = vm_at(VmState::Starting, nexus::Frame { launch_failures: 2, ..Default::default() }, nexus::Label::WaitBoot).await;
    says(&script, booting());
    h.step(vm).await.assert_nap(1);
    says(&script, booted(10022));
    h.step(vm).await.assert_hop(nexus::Label::Running);
    let row = support::vm(&h, vm).await;
    assert_eq!((row.state, row.ssh_host.as_deref(), row.ssh_port), (VmState::Running, Some("192.0.2.1"), Some(10022)));
    assert_eq!(h.frame::<Nexus>(vm).await.launch_failures, 0, "a boot ends the run of failures");
    assert_eq!(event_kinds(&h, vm).await, ["running"]);
}

#[tokio::test]
async fn a_qemu_that_died_while_booting_is_launched_again() {
    let (h, script, vm) = vm_at(VmState::Starting, nexus::Frame::default(), nexus::Label::WaitBoot).await;
    says(&script, gone());
    h.step(vm).await.assert_hop(nexus::Label::Launch);
}

// --- running -------------------------------------------------------------------------

#[tokio::test]
async fn running_checks_the_vm_at_every_wake_up() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame { checkup_secs: 20, ..Default::default() }, nexus::Label::Running).await;
    says(&script, booted(10022));
    h.incr(vm, nexus::Sem::Checkup).await;
    h.step(vm).await.assert_nap(20);
    assert!(script.was_sent("vm-status"));
    assert!(h.sems(vm).await.is_empty(), "the checkup semaphore is consumed");
    assert_eq!(support::vm(&h, vm).await.ssh_port, Some(10022), "where its SSH answers, as seen now");
}

#[tokio::test]
async fn a_vm_whose_qemu_died_is_started_again() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame::default(), nexus::Label::Running).await;
    says(&script, gone());
    script.answer("daemonizer clean", "");
    h.step(vm).await.assert_hop(nexus::Label::Launch);
    assert!(script.was_sent(&format!("daemonizer clean {}", run_of(vm))), "its ended run is not taken for a failed launch");
    assert_eq!(h.frame::<Nexus>(vm).await.restarts, 1);
    assert_eq!((support::vm(&h, vm).await.state, event_kinds(&h, vm).await), (VmState::Starting, vec!["qemu-died".to_string()]));
}

#[tokio::test]
async fn a_vm_on_an_unreachable_host_is_not_asked() {
    let (h, script, vm) = vm_at(VmState::Unavailable, nexus::Frame { checkup_secs: 20, ..Default::default() }, nexus::Label::Running).await;
    let host_id = Ubid::from_uuid(support::vm(&h, vm).await.host_id.unwrap());
    skein_models::vm_host::set_state(&mut h.pool().acquire().await.unwrap(), host_id.uuid(), HostState::Unreachable).await.unwrap();
    h.step(vm).await.assert_nap(20);
    assert!(script.sent().is_empty(), "its host's checkups will wake it");
    assert_eq!(host(&h, host_id).await.state, HostState::Unreachable);
}

#[tokio::test]
async fn an_unavailable_vm_found_running_is_available_again() {
    let (h, script, vm) = vm_at(VmState::Unavailable, nexus::Frame::default(), nexus::Label::Running).await;
    says(&script, booted(10022));
    h.step(vm).await.assert_nap(30);
    assert_eq!(support::vm(&h, vm).await.state, VmState::Running);
    assert_eq!(event_kinds(&h, vm).await, ["available-again"]);
}

#[tokio::test]
async fn a_host_that_drops_the_checkup_fails_the_step_to_be_retried() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame::default(), nexus::Label::Running).await;
    script.drop_on("vm-status");
    h.step(vm).await.assert_failed("connection dropped");
    assert_eq!(support::vm(&h, vm).await.state, VmState::Running);
}

#[tokio::test]
async fn stop_stops_qemu_and_keeps_the_vm() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame::default(), nexus::Label::Running).await;
    script.answer("agent/bin/vm-stop", "").answer("daemonizer clean", "");
    h.incr(vm, nexus::Sem::Stop).await;
    h.step(vm).await.assert_hop(nexus::Label::Stopped);
    assert!(script.was_sent(&format!("agent/bin/vm-stop {vm}")));
    let row = support::vm(&h, vm).await;
    assert_eq!((row.state, row.desired_state), (VmState::Stopped, DesiredState::Stopped));
    h.step(vm).await.assert_nap(3600);
    h.incr(vm, nexus::Sem::Start).await;
    h.step(vm).await.assert_hop(nexus::Label::Launch);
    assert_eq!(support::vm(&h, vm).await.desired_state, DesiredState::Running);
    assert_eq!(event_kinds(&h, vm).await, ["stopped", "starting"]);
}

#[tokio::test]
async fn restart_stops_qemu_and_launches_it_again() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame::default(), nexus::Label::Running).await;
    script.answer("agent/bin/vm-stop", "").answer("daemonizer clean", "");
    h.incr(vm, nexus::Sem::Restart).await;
    h.step(vm).await.assert_hop(nexus::Label::Launch);
    assert_eq!(support::vm(&h, vm).await.state, VmState::Starting);
    assert!(!script.was_sent("vm-status"), "no checkup on the way");
}

// --- destroying ----------------------------------------------------------------------

#[tokio::test]
async fn destroy_says_so_then_removes_the_vm_and_gives_back_what_it_held() {
    let (h, script, vm) = vm_at(VmState::Running, nexus::Frame::default(), nexus::Label::Running).await;
    let host_id = Ubid::from_uuid(support::vm(&h, vm).await.host_id.unwrap());
    script.answer("agent/bin/vm-remove", "").answer("daemonizer clean", "");
    h.incr(vm, Signal::DESTROY).await;
    h.step(vm).await.assert_hop(nexus::Label::Remove);
    assert_eq!(support::vm(&h, vm).await.state, VmState::Destroying);
    assert!(script.sent().is_empty(), "said before the host is asked");
    h.step(vm).await.assert_exit(json!({"msg": "vm destroyed"}));
    assert!(script.was_sent(&format!("agent/bin/vm-remove {vm}")));
    assert_eq!(support::vm(&h, vm).await.state, VmState::Destroyed);
    assert_eq!(host(&h, host_id).await.used_cores, 0, "its capacity is free again");
}

#[tokio::test]
async fn remove_is_retried_while_the_host_does_not_answer() {
    let (h, script, vm) = vm_at(VmState::Destroying, nexus::Frame::default(), nexus::Label::Remove).await;
    script.go_down();
    h.step(vm).await.assert_failed("does not answer");
    assert_eq!(support::vm(&h, vm).await.state, VmState::Destroying, "nothing given back yet");
}

//! `Vm::HostNexus`, label by label, against a scripted host: every branch
//! of a host's life (first contact, take-over, agent, facts, image, KVM,
//! checkups, unreachable and back, a changed host key, agent drift, reboot,
//! destroy) in a fast test with no machine. `host_drain.rs` has drain; the
//! end-to-end tests with real hosts are in spec/.

use serde_json::json;
use skein_engine::{enqueue, Signal};
use skein_engine::testing::Harness;
use skein_models::vm::VmState;
use skein_models::vm_host::HostState;
use skein_models::{sshable, Ubid};
use skein_progs::host::nexus::{self, HostNexus};
use skein_progs::host::{agent, install, learn, tunnel};
use skein_progs::ssh::scripted::{Scripted, HOST_KEY, HOST_KEY_ASKED};

mod support;
use support::{event_kinds, healthy, host, open_page, script_hosts};

/// A harness whose hosts are scripted, and a host in `state` whose strand is at `label`.
async fn host_at(state: HostState, frame: nexus::Frame, label: nexus::Label) -> (Harness, Scripted, Ubid) {
    let mut h = Harness::new(skein_progs::registry()).await;
    let script = script_hosts(&mut h);
    let id = support::host_row(&h, state).await;
    enqueue::start_for(&mut h.pool().acquire().await.unwrap(), id, frame, label).await.unwrap();
    (h, script, id)
}

fn unreachable_tag(id: Ubid) -> String {
    format!("host-unreachable:{id}")
}

// --- preparing a host ----------------------------------------------------------

#[tokio::test]
async fn start_pins_the_key_the_host_presents_on_first_contact() {
    let (h, script, id) = host_at(HostState::New, nexus::Frame::default(), nexus::Label::Start).await;
    let sh = host(&h, id).await.sshable_id;
    sqlx::query("UPDATE sshable SET host_key = NULL WHERE id = $1").bind(sh).execute(h.pool()).await.unwrap();
    script.present_key("ssh-ed25519 AAAAfirstContact");
    h.step(id).await.assert_hop(nexus::Label::TakeOver);
    let pinned = sshable::get(&mut h.pool().acquire().await.unwrap(), sh).await.unwrap().unwrap().host_key;
    assert_eq!(pinned.as_deref(), Some("ssh-ed25519 AAAAfirstContact"));
    assert_eq!(host(&h, id).await.state, HostState::Preparing);
}

#[tokio::test]
async fn start_keeps_a_pinned_key_and_does_not_ask_again() {
    let (h, script, id) = host_at(HostState::New, nexus::Frame::default(), nexus::Label::Start).await;
    h.step(id).await.assert_hop(nexus::Label::TakeOver);
    assert!(!script.was_sent(HOST_KEY_ASKED));
}

#[tokio::test]
async fn start_fails_and_is_retried_while_the_new_host_does_not_answer() {
    let (h, script, id) = host_at(HostState::New, nexus::Frame::default(), nexus::Label::Start).await;
    sqlx::query("UPDATE sshable SET host_key = NULL").execute(h.pool()).await.unwrap();
    script.go_down();
    h.step(id).await.assert_failed("does not answer");
    assert_eq!(host(&h, id).await.state, HostState::New, "nothing written");
}

#[tokio::test]
async fn take_over_authorizes_a_new_key_proves_it_and_switches_to_it() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::TakeOver).await;
    script.answer("authorized_keys", "").answer("true", "");
    h.step(id).await.assert_hop(nexus::Label::InstallAgent);
    let authorize = script.sent().into_iter().find(|c| c.contains("authorized_keys")).expect("authorized");
    assert!(authorize.contains("grep -qxF ssh-ed25519 "), "the new public key, quoted once per use: {authorize}");
    let row = sshable::get(&mut h.pool().acquire().await.unwrap(), host(&h, id).await.sshable_id).await.unwrap().unwrap();
    let key = support::secret().open(row.id.as_bytes(), &row.private_key).unwrap();
    assert_ne!(key, support::PRIVATE_KEY.as_bytes(), "the bootstrap key is no longer used");
}

#[tokio::test]
async fn take_over_keeps_the_old_key_when_the_new_one_does_not_work() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::TakeOver).await;
    script.answer("authorized_keys", "").fail("true", 255, "Permission denied");
    h.step(id).await.assert_failed("Permission denied");
    let row = sshable::get(&mut h.pool().acquire().await.unwrap(), host(&h, id).await.sshable_id).await.unwrap().unwrap();
    assert_eq!(support::secret().open(row.id.as_bytes(), &row.private_key).unwrap(), support::PRIVATE_KEY.as_bytes());
}

/// What the installer returns when the host ends with this build's agent and tunnel.
fn installed() -> install::Output {
    install::Output { agent_version: agent::version(), tunnel_sha256: tunnel::local().unwrap().1.clone() }
}

#[tokio::test]
async fn install_agent_calls_the_installer_and_learns_once_it_returns() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::InstallAgent).await;
    let step = h.step(id).await;
    h.assert_pushed(&step, install::Label::Install, install::Frame {}).await;
    // The agent and tunnel there are this build's: nothing is shipped.
    script.answer("agent/VERSION", format!("{}\n", agent::version()));
    script.answer("tunnel/SHA256", format!("{}\n", installed().tunnel_sha256));
    h.step(id).await.assert_pop(installed());
    assert!(!script.was_sent("sha256sum"), "nothing sent: {:?}", script.sent());
    h.step(id).await.assert_hop(nexus::Label::Learn);
    assert_eq!(host(&h, id).await.agent_version, Some(agent::version()));
}

#[tokio::test]
async fn the_installer_ships_the_agent_and_tunnel_when_the_host_has_others() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::InstallAgent).await;
    h.step(id).await;
    script.answer("agent/VERSION", "0ld\n").answer("tunnel/SHA256", "").answer("sha256sum -c", "");
    h.step(id).await.assert_pop(installed());
    assert!(script.was_sent("mv agent.new agent"));
    let digest = installed().tunnel_sha256;
    assert!(script.was_sent(&format!("printf %s\\n {digest} > SHA256")), "{:?}", script.sent());
}

#[tokio::test]
async fn learn_buds_one_child_per_fact() {
    let (h, _, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::Learn).await;
    let step = h.step(id).await;
    step.assert_hop(nexus::Label::WaitLearn);
    let asks: Vec<_> = learn::FACTS.iter().map(|what| (learn::Label::Ask, learn::Frame { what: what.to_string() })).collect();
    h.assert_budded(&step, &asks).await;
}

/// What the agent's `learn` prints for each fact, as a healthy host would.
fn learns_everything(script: &Scripted) {
    script.answer("agent/bin/learn cpu", r#"{"cpus": 8, "cores": 4, "sockets": 1, "threads_per_core": 2, "model": "Test CPU"}"#);
    script.answer("agent/bin/learn memory", r#"{"total_mib": 2048, "available_mib": 1024}"#);
    script.answer("agent/bin/learn storage", r#"{"total_mib": 9000, "free_mib": 8000, "path": "/var/lib/skein"}"#);
    script.answer("agent/bin/learn os", r#"{"id": "debian", "version_id": "12", "pretty_name": "Debian 12", "kernel": "6.1", "arch": "x86_64"}"#);
    script.answer("agent/bin/learn kvm", r#"{"device": true, "usable": true, "reason": ""}"#);
}

#[tokio::test]
async fn a_learn_child_returns_what_the_agent_printed_and_fails_on_what_is_not_json() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::Learn).await;
    let kids = h.step(id).await.budded.clone();
    learns_everything(&script);
    script.answer("agent/bin/learn memory", "Segmentation fault");
    let cpu = h.step(kids[0]).await;
    cpu.assert_exit(json!({"what": "cpu", "facts": {"cpus": 8, "cores": 4, "sockets": 1, "threads_per_core": 2, "model": "Test CPU"}}));
    h.step(kids[1]).await.assert_failed("cannot be read");
}

#[tokio::test]
async fn wait_learn_records_facts_as_children_exit_and_builds_the_image_when_all_have() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::Learn).await;
    let kids = h.step(id).await.budded.clone();
    learns_everything(&script);
    h.step(kids[0]).await; // cpu
    h.step(id).await.assert_nap(3600); // four still asking; the last to exit wakes it
    assert_eq!(host(&h, id).await.facts.cpus, Some(8));
    for kid in &kids[1..] {
        assert!(h.step(*kid).await.exitval().is_some(), "each fact is learned");
    }
    h.step(id).await.assert_hop(nexus::Label::PrepImage);
    assert_eq!(host(&h, id).await.facts.memory_mib, Some(2048));
}

#[tokio::test]
async fn prep_image_starts_the_build_detached_and_naps_while_it_runs() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::PrepImage).await;
    script.answer("daemonizer check guest-image", "NotStarted\n").answer("daemonizer run guest-image", "");
    h.step(id).await.assert_nap(5);
    assert!(script.was_sent("daemonizer run guest-image /var/lib/skein/agent/bin/build-guest-image"), "{:?}", script.sent());
    script.answer("daemonizer check guest-image", "InProgress\n");
    script.clear_sent();
    h.step(id).await.assert_nap(5);
    assert!(!script.was_sent("daemonizer run"), "a running build is left alone");
}

#[tokio::test]
async fn a_failing_image_build_is_retried_and_paged_at_the_third_failure() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::PrepImage).await;
    script.answer("daemonizer check guest-image", "Failed\n").answer("daemonizer run", "").answer("daemonizer logs", "no space left");
    let tag = format!("host-image:{id}");
    for _ in 0..2 {
        h.step(id).await.assert_nap(10);
        assert!(open_page(&h, &tag).await.is_none());
    }
    h.step(id).await.assert_nap(10);
    assert_eq!(open_page(&h, &tag).await.expect("paged").details["log"], "no space left");
    assert_eq!(h.frame::<HostNexus>(id).await.image_failures, 3);
}

#[tokio::test]
async fn a_built_image_is_recorded_and_then_kvm_is_probed() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::PrepImage).await;
    script.answer("daemonizer check guest-image", "Succeeded\n").answer("daemonizer clean guest-image", "");
    script.answer("images/guest/VERSION", "img-7\n");
    h.step(id).await.assert_hop(nexus::Label::ProbeKvm);
    assert_eq!(host(&h, id).await.image_version.as_deref(), Some("img-7"));
    assert!(script.was_sent("daemonizer clean guest-image"), "forgotten, so it can be rebuilt later");
}

#[tokio::test]
async fn probe_kvm_records_the_answer_and_opens_the_host() {
    let (h, script, id) = host_at(HostState::Preparing, nexus::Frame::default(), nexus::Label::ProbeKvm).await;
    script.answer("daemonizer check kvm-probe", "Succeeded\n").answer("daemonizer clean kvm-probe", "");
    script.answer("kvm-probe.json", r#"{"usable": false, "reason": "no /dev/kvm"}"#);
    h.step(id).await.assert_hop(nexus::Label::Wait);
    let row = host(&h, id).await;
    assert_eq!((row.state, row.facts.kvm_usable, row.facts.kvm_reason.as_deref()), (HostState::Accepting, Some(false), Some("no /dev/kvm")));
    assert_eq!(event_kinds(&h, id).await, ["accepting"]);
}

#[tokio::test]
async fn a_drained_host_prepared_again_opens_draining() {
    let frame = nexus::Frame { draining: true, ..Default::default() };
    let (h, script, id) = host_at(HostState::Preparing, frame, nexus::Label::ProbeKvm).await;
    script.answer("daemonizer check kvm-probe", "Succeeded\n").answer("daemonizer clean kvm-probe", "");
    script.answer("kvm-probe.json", r#"{"usable": true, "reason": null}"#);
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(host(&h, id).await.state, HostState::Draining);
}

// --- checkups ------------------------------------------------------------------

#[tokio::test]
async fn wait_checks_up_on_every_wake_up_and_naps_until_the_next() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame { checkup_secs: 45, ..Default::default() }, nexus::Label::Wait).await;
    healthy(&script);
    assert!(h.incr(id, nexus::Sem::Checkup).await);
    h.step(id).await.assert_nap(45);
    let row = host(&h, id).await;
    assert_eq!((row.boot_id.as_deref(), row.missed_checks), (Some("boot-1"), 0));
    assert!(h.sems(id).await.is_empty(), "the checkup semaphore is consumed");
}

#[tokio::test]
async fn agent_drift_found_at_a_checkup_reinstalls_the_agent() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    healthy(&script).answer("agent/bin/agent-version", "someone-else\n");
    h.step(id).await.assert_hop(nexus::Label::InstallAgent);
}

#[tokio::test]
async fn missed_checkups_are_counted_and_the_host_is_unreachable_after_the_third() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame { checkup_secs: 45, ..Default::default() }, nexus::Label::Wait).await;
    let vm = support::vm_on(&h, id, VmState::Running).await;
    script.go_down();
    for misses in 1..=2 {
        h.step(id).await.assert_nap(45);
        assert_eq!((host(&h, id).await.missed_checks, host(&h, id).await.state), (misses, HostState::Accepting));
    }
    h.step(id).await.assert_hop(nexus::Label::Unreachable);
    assert_eq!(host(&h, id).await.state, HostState::Unreachable);
    assert_eq!(support::vm_state(&h, vm).await, VmState::Unavailable, "its VMs are no longer known to run");
    assert_eq!(event_kinds(&h, id).await, ["unreachable"]);
    assert!(open_page(&h, &unreachable_tag(id)).await.is_some());
}

#[tokio::test]
async fn a_connection_dropped_mid_checkup_is_a_missed_checkup() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame { checkup_secs: 45, ..Default::default() }, nexus::Label::Wait).await;
    healthy(&script).drop_on("agent-version");
    h.step(id).await.assert_nap(45);
    assert_eq!(host(&h, id).await.missed_checks, 1);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_paged_and_counted_as_missed() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    healthy(&script).change_key();
    h.step(id).await.assert_nap(60);
    assert_eq!(host(&h, id).await.missed_checks, 1);
    let page = open_page(&h, &format!("host-key-mismatch:{id}")).await.expect("paged");
    assert!(page.details["error"].as_str().unwrap().contains(HOST_KEY), "{page:?}");
    assert!(script.sent().is_empty(), "nothing is sent to a host that is not the one pinned");
}

#[tokio::test]
async fn a_checkup_the_agent_answers_wrongly_fails_the_step_rather_than_count_as_missed() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    healthy(&script).fail("agent-version", 2, "agent-version: SKEIN_ROOT must name the agent's root");
    h.step(id).await.assert_failed("SKEIN_ROOT must name");
    assert_eq!(host(&h, id).await.missed_checks, 0);
}

#[tokio::test]
async fn wait_answers_reboot_and_drain_before_checking_up() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    h.incr(id, nexus::Sem::Reboot).await;
    h.step(id).await.assert_hop(nexus::Label::Reboot);
    let (h2, _, id2) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    h2.incr(id2, nexus::Sem::Drain).await;
    h2.step(id2).await.assert_hop(nexus::Label::Drain);
    assert!(script.sent().is_empty(), "no checkup on the way");
}

#[tokio::test]
async fn a_host_marked_unreachable_while_in_wait_goes_to_unreachable() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame::default(), nexus::Label::Wait).await;
    h.step(id).await.assert_hop(nexus::Label::Unreachable);
    assert!(script.sent().is_empty());
}

// --- unreachable and back ------------------------------------------------------

#[tokio::test]
async fn an_unreachable_host_is_asked_at_every_wake_up() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame { checkup_secs: 45, ..Default::default() }, nexus::Label::Unreachable).await;
    script.go_down();
    h.step(id).await.assert_nap(45);
    assert_eq!(host(&h, id).await.state, HostState::Unreachable);
}

#[tokio::test]
async fn a_host_that_answers_again_accepts_vms_reconciles_its_own_and_reports_strangers() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame::default(), nexus::Label::Unreachable).await;
    let vm = support::vm_on(&h, id, VmState::Unavailable).await;
    page_unreachable(&h, id).await;
    healthy(&script).answer("/vms", format!("{vm}\nstranger\n"));
    h.step(id).await.assert_hop(nexus::Label::Wait);
    let row = host(&h, id).await;
    assert_eq!((row.state, row.missed_checks), (HostState::Accepting, 0));
    assert_eq!(h.sems(vm).await, ["checkup"], "its VM checks what runs");
    assert!(open_page(&h, &unreachable_tag(id)).await.is_none(), "resolved");
    assert!(open_page(&h, &format!("host-unknown-vm:{id}:stranger")).await.is_some());
    assert_eq!(event_kinds(&h, id).await, ["reachable-again", "unknown-vm"]);
}

#[tokio::test]
async fn a_host_back_with_another_agent_gets_this_one() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame::default(), nexus::Label::Unreachable).await;
    healthy(&script).answer("agent-version", "older\n").answer("/vms", "");
    h.step(id).await.assert_hop(nexus::Label::InstallAgent);
    assert_eq!(host(&h, id).await.state, HostState::Accepting);
}

#[tokio::test]
async fn a_drained_host_comes_back_draining() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame { draining: true, ..Default::default() }, nexus::Label::Unreachable).await;
    healthy(&script).answer("/vms", "");
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(host(&h, id).await.state, HostState::Draining);
}

async fn page_unreachable(h: &Harness, id: Ubid) {
    let mut conn = h.pool().acquire().await.unwrap();
    skein_models::page::raise(&mut conn, &unreachable_tag(id), "down", "error", &json!({})).await.unwrap();
}

// --- reboot and destroy --------------------------------------------------------

#[tokio::test]
async fn reboot_remembers_the_boot_id_and_waits_for_a_new_one() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Reboot).await;
    healthy(&script).answer("reboot-host", "rebooting\n");
    h.step(id).await.assert_hop(nexus::Label::WaitReboot);
    assert_eq!(h.frame::<HostNexus>(id).await.boot_id_before_reboot.as_deref(), Some("boot-1"));

    h.step(id).await.assert_nap(2); // same boot: not down yet
    script.go_down();
    h.step(id).await.assert_nap(2); // down: rebooting
    script.come_back().answer("boot-id", "boot-2\n");
    h.step(id).await.assert_hop(nexus::Label::Wait);
    assert_eq!(host(&h, id).await.boot_id.as_deref(), Some("boot-2"));
    assert_eq!(event_kinds(&h, id).await, ["rebooted"]);
    assert_eq!(h.frame::<HostNexus>(id).await.boot_id_before_reboot, None);
}

#[tokio::test]
async fn destroy_cleans_the_host_when_it_answers() {
    let (h, script, id) = host_at(HostState::Accepting, nexus::Frame::default(), nexus::Label::Wait).await;
    script.answer("rm -rf", "");
    h.incr(id, Signal::DESTROY).await;
    h.step(id).await.assert_exit(json!({"msg": "host destroyed", "cleaned": true}));
    assert!(script.was_sent("rm -rf /var/lib/skein/agent /var/lib/skein/ssh"), "{:?}", script.sent());
    assert_eq!(host(&h, id).await.state, HostState::Destroyed);
}

#[tokio::test]
async fn destroy_retires_a_host_that_does_not_answer() {
    let (h, script, id) = host_at(HostState::Unreachable, nexus::Frame::default(), nexus::Label::Unreachable).await;
    page_unreachable(&h, id).await;
    script.go_down();
    h.incr(id, Signal::DESTROY).await;
    h.step(id).await.assert_exit(json!({"msg": "host destroyed", "cleaned": false}));
    assert_eq!(host(&h, id).await.state, HostState::Destroyed);
    assert!(open_page(&h, &unreachable_tag(id)).await.is_none());
}

//! VMs that wait for a host with room (issue 11, items 10 and 11), label by
//! label at `Vm::Nexus` Start (no SSH: placing is a database change): a
//! waiting VM sleeps long and is woken when capacity appears, and however
//! many wait, an operator has one page, in words, that stays resolved
//! until its cause changes.

use chrono::Utc;
use skein_engine::testing::Harness;
use skein_engine::Outcome;
use skein_models::{capacity, page, vm, Ubid, UbidType};
use skein_progs::vm::{self as vms, nexus, waiting, Spec};

mod support;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakeKeyForDatabaseRowsOnly t@x";

async fn project(h: &Harness) -> Ubid {
    let id = Ubid::generate(UbidType::Project);
    skein_models::project::insert(&mut h.pool().acquire().await.unwrap(), id.uuid(), "tenant", 20).await.unwrap();
    id
}

async fn create(h: &Harness, project: Ubid, name: &str, cores: i32, memory_mib: i32, wait_page_secs: u64) -> Ubid {
    let spec = Spec { name, cores, memory_mib, disk_mib: 1024, public_key: KEY, subnet: None };
    let mut tx = h.pool().begin().await.unwrap();
    let id = vms::create(&mut tx, project, &spec, nexus::Frame { wait_page_secs, ..Default::default() }).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// An accepting host with room for a few VMs (no strand: nothing here talks to it).
async fn accepting_host(h: &Harness) -> Ubid {
    support::host_row(h, skein_models::vm_host::HostState::Accepting).await
}

/// What capacity appearing does, in the transaction that makes it appear.
async fn wake(h: &Harness) -> u64 {
    let mut tx = h.pool().begin().await.unwrap();
    let woken = capacity::wake_waiting(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    woken
}

fn napped(outcome: &Outcome) -> f64 {
    match outcome {
        Outcome::Nap { secs } => *secs,
        other => panic!("expected a nap, got {other}"),
    }
}

async fn state(h: &Harness, id: Ubid) -> vm::Vm {
    vm::get(&mut h.pool().acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap()
}

async fn pages(h: &Harness) -> Vec<page::Page> {
    page::by_tag(&mut h.pool().acquire().await.unwrap(), waiting::TAG).await.unwrap()
}

#[tokio::test]
async fn a_waiting_vm_sleeps_long_and_is_woken_when_capacity_appears() {
    let h = Harness::new(skein_progs::registry()).await;
    let p = project(&h).await;
    let id = create(&h, p, "a", 1, 512, 3600).await;
    let report = h.step(id).await;
    assert_eq!(napped(&report.outcome), nexus::WAIT_NAP_SECS as f64, "a long fallback nap, not a 5 s poll");
    assert_eq!(state(&h, id).await.state, vm::VmState::Waiting);
    assert!(h.strand(id).await.schedule > Utc::now() + chrono::Duration::seconds(500));

    // Capacity appears: the transaction that makes it wakes the waiting VM.
    let host = accepting_host(&h).await;
    assert_eq!(wake(&h).await, 1);
    assert!(h.strand(id).await.schedule <= Utc::now(), "due at once");
    h.step(id).await.assert_hop(nexus::Label::Setup);
    assert_eq!(state(&h, id).await.host_id, Some(host.uuid()));

    // Only VMs at Start are woken: a placed one is left alone.
    assert_eq!(wake(&h).await, 0);
}

#[tokio::test]
async fn a_waiting_vm_wakes_itself_in_time_to_page() {
    let h = Harness::new(skein_progs::registry()).await;
    let p = project(&h).await;
    let id = create(&h, p, "a", 1, 512, 120).await;
    let secs = napped(&h.step(id).await.outcome);
    assert!(secs > 100.0 && secs <= 120.0, "naps until the page is due, not 600 s: {secs}");
    assert!(pages(&h).await.is_empty(), "not yet");
}

#[tokio::test]
async fn one_page_in_words_for_all_waiting_vms_that_stays_resolved_until_its_cause_changes() {
    let h = Harness::new(skein_progs::registry()).await;
    let p = project(&h).await;
    let mut ids = Vec::new();
    for (name, cores, memory) in [("a", 1, 512), ("b", 2, 4096), ("c", 1, 1024)] {
        let id = create(&h, p, name, cores, memory, 0).await;
        h.step(id).await;
        ids.push(id);
    }
    let open = pages(&h).await;
    assert_eq!(open.len(), 1, "one page for one cause, not one per VM");
    let summary = &open[0].summary;
    assert!(summary.starts_with("3 VMs wait for a host with room; the largest needs 2 vCPU, 4096 MiB memory, 1024 MiB disk; waiting since "), "{summary}");
    assert!(!summary.contains('{') && !summary.contains("Size"), "words, not debug output: {summary}");
    assert_eq!(open[0].details["waiting"], 3);
    assert_eq!(open[0].details["largest"]["cores"], 2);

    // An operator resolves it while the same VMs still wait: it stays resolved.
    assert!(page::resolve_id(&mut h.pool().acquire().await.unwrap(), open[0].id).await.unwrap());
    for id in &ids {
        h.step(*id).await;
    }
    let after = pages(&h).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].resolved_at.is_some(), "the same waiting VMs do not reopen it");

    // The cause changes: another VM begins to wait. Paged again, once.
    let d = create(&h, p, "d", 1, 256, 0).await;
    h.step(d).await;
    ids.push(d);
    let again = pages(&h).await;
    assert_eq!(again.len(), 2);
    assert!(again[1].resolved_at.is_none());
    assert!(again[1].summary.starts_with("4 VMs wait"), "{}", again[1].summary);

    // Room for all of them: as they are placed the page follows, and once
    // none waits it is resolved.
    accepting_host(&h).await;
    assert_eq!(wake(&h).await, 4);
    for id in &ids[..3] {
        h.step(*id).await.assert_hop(nexus::Label::Setup);
    }
    let one_left = pages(&h).await;
    assert!(one_left[1].resolved_at.is_none());
    assert!(one_left[1].summary.starts_with("1 VM waits for a host with room; it needs 1 vCPU, 256 MiB memory"), "{}", one_left[1].summary);
    h.step(d).await.assert_hop(nexus::Label::Setup);
    assert!(pages(&h).await.iter().all(|p| p.resolved_at.is_some()), "no VM waits: resolved");
}

#[tokio::test]
async fn destroying_the_last_waiting_vm_resolves_the_page() {
    let h = Harness::new(skein_progs::registry()).await;
    let p = project(&h).await;
    let id = create(&h, p, "a", 1, 512, 0).await;
    h.step(id).await;
    assert_eq!(pages(&h).await.len(), 1);
    assert!(h.incr(id, skein_engine::Signal::DESTROY).await);
    let reports = h.run(id).await;
    assert!(matches!(reports.last().unwrap().outcome, Outcome::Exit { .. }), "{:?}", reports.iter().map(|r| r.outcome.to_string()).collect::<Vec<_>>());
    assert_eq!(state(&h, id).await.state, vm::VmState::Destroyed);
    assert!(pages(&h).await[0].resolved_at.is_some());
}

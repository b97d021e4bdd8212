//! Hosts end to end: real sshd test hosts (each in its own network
//! namespace), prepared and watched by `Vm::HostNexus` running in real
//! respirate processes.

use std::time::{Duration, Instant};

use skein_models::vm_host::HostState;
use skein_progs::host::{agent, nexus};
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::world::World;

fn quick_checkups() -> nexus::Frame {
    nexus::Frame { checkup_secs: 1, unreachable_after: 3, ..Default::default() }
}

fn local_nproc() -> i32 {
    String::from_utf8(std::process::Command::new("nproc").output().unwrap().stdout).unwrap().trim().parse().unwrap()
}

fn local_mem_mib() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: i64 = meminfo.lines().find(|l| l.starts_with("MemTotal:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_host_goes_from_add_to_accepting_through_respirate() {
    let w = World::new().await;
    let (private, public) = generate_keypair();
    let h = LocalHost::start(&public);
    let id = w.add("host-one", &h, &private, nexus::Frame::default()).await;
    let worker = w.worker();

    let row = w.wait_for(id, "accepting", Duration::from_secs(180), &worker, |r| r.state == HostState::Accepting).await;
    assert_eq!(row.facts.cpus, Some(local_nproc()), "cpus match nproc on the host");
    assert_eq!(row.facts.memory_mib, Some(local_mem_mib()), "memory matches /proc/meminfo");
    assert!(row.facts.storage_free_mib.unwrap_or(0) > 0);
    assert!(row.facts.os.as_deref().unwrap_or("").contains("Debian"), "{:?}", row.facts.os);
    assert!(row.facts.kvm_usable.is_some(), "the KVM probe answered");
    assert_eq!(row.agent_version.as_deref(), Some(agent::version().as_str()));
    assert!(h.root_dir().join("agent/bin/daemonizer").exists(), "the agent is installed under the host's root");
    assert_eq!(std::fs::read_to_string(h.root_dir().join("agent/VERSION")).unwrap().trim(), agent::version());
    let image = std::fs::read_to_string(h.root_dir().join("images/guest/VERSION")).unwrap();
    assert_eq!(row.image_version.as_deref(), Some(image.trim()), "the guest image is prepared and recorded");

    // The host key was pinned on first contact, and skein now uses its own key.
    let sshable = skein_models::sshable::get(&mut w.db.pool.acquire().await.unwrap(), row.sshable_id).await.unwrap().unwrap();
    assert_eq!(sshable.host_key.map(|k| skein_progs::ssh::client::key_identity(&k)), Some(skein_progs::ssh::client::key_identity(&h.host_public_key())));
    let stored = w.secret.open(sshable.id.as_bytes(), &sshable.private_key).unwrap();
    assert_ne!(String::from_utf8(stored).unwrap().trim(), private.trim(), "taken over with a generated key");
    let authorized = std::fs::read_to_string(h.root_dir().join("ssh/authorized_keys")).unwrap();
    assert_eq!(authorized.lines().count(), 1, "{authorized}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_during_preparation_is_retried_until_it_is_back() {
    let w = World::new().await;
    let (private, public) = generate_keypair();
    let mut h = LocalHost::start(&public);
    let id = w.add("host-flaky", &h, &private, nexus::Frame::default()).await;
    let worker = w.worker();

    // Let preparation begin (the host key is pinned, the take-over is next), then pull the plug.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let label: String = sqlx::query_scalar("SELECT label FROM strand WHERE id = $1").bind(id.uuid()).fetch_one(&w.db.pool).await.unwrap();
        if label != "Start" {
            break;
        }
        assert!(Instant::now() < until, "preparation never began:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.kill_sshd();

    // The next steps fail (nothing answers) and are retried with backoff.
    let until = Instant::now() + Duration::from_secs(30);
    while !w.strand_error(id).await.contains("cannot connect") {
        assert!(Instant::now() < until, "no connect failure recorded: {}", w.strand_error(id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(w.host(id).await.state, HostState::Accepting, "nothing was skipped while the host was away");
    h.start_sshd();
    let row = w.wait_for(id, "accepting", Duration::from_secs(180), &worker, |r| r.state == HostState::Accepting).await;
    assert_eq!(row.facts.cpus, Some(local_nproc()));
    let authorized = std::fs::read_to_string(h.root_dir().join("ssh/authorized_keys")).unwrap();
    assert_eq!(authorized.lines().count(), 1, "the key was authorized once, not once per retry: {authorized}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_fails_authentication_with_a_clear_error() {
    let w = World::new().await;
    let (_, public) = generate_keypair();
    let (other_private, _) = generate_keypair();
    let h = LocalHost::start(&public);
    let id = w.add("host-wrong-key", &h, &other_private, nexus::Frame::default()).await;
    let _worker = w.worker();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let error = w.strand_error(id).await;
        if error.contains("authentication as root@") {
            assert!(error.contains(&h.addr().to_string()), "names the host: {error}");
            break;
        }
        assert!(Instant::now() < until, "no auth error recorded: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.host(id).await.state, HostState::Preparing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_becomes_unreachable_after_the_threshold_and_recovers() {
    let w = World::new().await;
    let (private, public) = generate_keypair();
    let mut h = LocalHost::start(&public);
    let id = w.add("host-sick", &h, &private, quick_checkups()).await;
    let worker = w.worker();
    w.wait_for(id, "accepting", Duration::from_secs(180), &worker, |r| r.state == HostState::Accepting).await;

    h.kill_sshd();
    let tag = format!("host-unreachable:{id}");
    // Missed checkups count up while the host still counts as accepting...
    let row = w.wait_for(id, "a missed checkup", Duration::from_secs(30), &worker, |r| r.missed_checks >= 1).await;
    if row.missed_checks < 3 {
        assert_eq!(row.state, HostState::Accepting, "not unreachable after one or two misses");
        assert_eq!(w.open_pages(&tag).await, 0);
    }
    // ...and at the threshold it is unreachable, paged once.
    let row = w.wait_for(id, "unreachable", Duration::from_secs(30), &worker, |r| r.state == HostState::Unreachable).await;
    assert!(row.missed_checks >= 3, "{row:?}");
    assert_eq!(w.open_pages(&tag).await, 1);
    // The transition itself records how many misses caused it: exactly the threshold.
    let events = skein_models::event::of(&mut w.db.pool.acquire().await.unwrap(), id.uuid()).await.unwrap();
    let unreachable: Vec<_> = events.iter().filter(|e| e.kind == "unreachable").collect();
    assert_eq!(unreachable.len(), 1, "{events:?}");
    assert_eq!(unreachable[0].detail["misses"], 3, "unreachable at the third miss, not before");

    h.start_sshd();
    let row = w.wait_for(id, "accepting again", Duration::from_secs(30), &worker, |r| r.state == HostState::Accepting).await;
    assert_eq!(row.missed_checks, 0);
    assert_eq!(w.open_pages(&tag).await, 0, "recovery resolves the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_and_paged() {
    let w = World::new().await;
    let (private, public) = generate_keypair();
    let mut h = LocalHost::start(&public);
    let id = w.add("host-rekeyed", &h, &private, quick_checkups()).await;
    let worker = w.worker();
    w.wait_for(id, "accepting", Duration::from_secs(180), &worker, |r| r.state == HostState::Accepting).await;

    h.rotate_host_key();
    let tag = format!("host-key-mismatch:{id}");
    let until = Instant::now() + Duration::from_secs(30);
    while w.open_pages(&tag).await == 0 {
        assert!(Instant::now() < until, "no page for the changed host key:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = w.wait_for(id, "unreachable", Duration::from_secs(30), &worker, |r| r.state == HostState::Unreachable).await;
    assert!(row.missed_checks >= 3);
    assert_eq!(w.open_pages(&tag).await, 1, "paged once, not once per checkup");
}

/// A test host cannot reboot the machine it shares; with `simulated-host`
/// in its root, the agent simulates a reboot (documented in reboot-host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_is_requested_and_the_host_comes_back_with_a_new_boot_id() {
    let w = World::new().await;
    let (private, public) = generate_keypair();
    let h = LocalHost::start(&public);
    std::fs::write(h.root_dir().join("simulated-host"), "").unwrap();
    let id = w.add("host-reboot", &h, &private, quick_checkups()).await;
    let worker = w.worker();
    let before = w.wait_for(id, "accepting", Duration::from_secs(180), &worker, |r| r.state == HostState::Accepting && r.boot_id.is_some()).await;

    // Something long-running on the host, which a reboot must end.
    let root = h.root_dir().display().to_string();
    let daemonizer = format!("{root}/agent/bin/daemonizer");
    let started = std::process::Command::new(&daemonizer).args(["run", "long-job", "sleep", "300"]).env("SKEIN_ROOT", &root).status().unwrap();
    assert!(started.success());

    let mut conn = w.db.pool.acquire().await.unwrap();
    assert!(skein_engine::enqueue::incr(&mut conn, id, nexus::Sem::Reboot).await.unwrap());
    let after = w.wait_for(id, "a new boot id", Duration::from_secs(30), &worker, |r| r.boot_id.is_some() && r.boot_id != before.boot_id).await;
    assert_eq!(after.state, HostState::Accepting);
    let label: String = sqlx::query_scalar("SELECT label FROM strand WHERE id = $1").bind(id.uuid()).fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(label, "Wait", "back to waiting after the reboot");
    let state = std::process::Command::new(&daemonizer).args(["check", "long-job"]).env("SKEIN_ROOT", &root).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "Failed", "the reboot ended what ran on the host");
}

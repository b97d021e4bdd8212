//! `skein host add --wait` and `skein vm create --wait` against a real test
//! host and real respirate workers: the client follows each strand live,
//! label by label (as often as it looks) and event by event (every one), until the host accepts VMs and the VM
//! runs; a VM that cannot be placed makes it give up with a clear message.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skein_models::{vm, Ubid, UbidType};
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::world::World;

fn skein(w: &World, args: &[&str]) -> Output {
    Command::new(skein_spec::binary("skein"))
        .args(args)
        .args(["--database-url", &w.db.url(), "--yes"])
        .env("SKEIN_SECRET_KEY", w.secret.to_hex())
        .output()
        .expect("run skein")
}

fn stdout_of(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn assert_lines_in_order(text: &str, needles: &[&str]) {
    let mut rest = text;
    for needle in needles {
        let at = rest.find(needle).unwrap_or_else(|| panic!("{needle:?} missing (or out of order) in:\n{text}"));
        rest = &rest[at + needle.len()..];
    }
}

async fn wait_destroyed(w: &World, id: &str) {
    let id: Ubid = id.parse().unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let row = vm::get(&mut w.db.pool.acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap();
        if row.state == vm::VmState::Destroyed {
            assert_eq!(row.desired_state, vm::DesiredState::Destroyed, "a destroy by semaphore alone is what the VM wants now");
            return;
        }
        assert!(Instant::now() < until, "vm {id} never got destroyed: {row:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_add_and_vm_create_wait_follow_their_strands_to_the_end() {
    let w = World::new().await;
    let (host_private, host_public) = generate_keypair();
    let h = LocalHost::start(&host_public);
    skein_spec::guest_image::seed(h.root_dir());
    let key_file = h.root_dir().join("bootstrap.key");
    std::fs::write(&key_file, &host_private).unwrap();
    let _worker = w.worker();

    let (addr, port, root) = (h.addr().to_string(), h.port().to_string(), h.root_dir().display().to_string());
    let key = key_file.display().to_string();
    let args = ["host", "add", "--name", "follow-host", "--address", &addr, "--port", &port, "--key-file", &key, "--root-dir", &root];
    let out = stdout_of(&skein(&w, &[&args[..], &["--checkup-secs", "5", "--wait", "--wait-secs", "240"]].concat()), "host add --wait");
    assert_lines_in_order(&out, &["following its strand", "Vm::HostNexus at ", "event: accepting", "is accepting after"]);

    let project = Ubid::generate(UbidType::Project);
    skein_models::project::insert(&mut w.db.pool.acquire().await.unwrap(), project.uuid(), "acme", 5).await.unwrap();
    let (_, owner_public) = generate_keypair();
    let create = |name: &'static str, cores: &'static str, wait: &'static str| {
        let args = ["vm", "create", "--project", "acme", "--name", name, "--cores", cores, "--memory-mib", "256", "--disk-mib", "64"];
        // The test workers' 4 s leases give a step 2 s, which a guest's boot
        // check under TCG sometimes overruns; those failures are retried.
        let wait = ["--wait", "--wait-secs", wait, "--give-up-after", "100"];
        skein(&w, &[&args[..], &["--public-key", owner_public.trim()], &wait[..]].concat())
    };
    let out = stdout_of(&create("web", "1", "300"), "vm create --wait");
    assert_lines_in_order(&out, &["vm web created as vm", "Vm::Nexus at ", "event: placed", "event: launched", "event: running", "is running after"]);
    let vm_id = out.split_whitespace().skip_while(|w| *w != "as").nth(1).unwrap().to_string();

    // No host has 64 cores: the VM waits, and so does the client, until it gives up.
    let out = create("huge", "64", "3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("is still waiting after 3s; the work goes on"), "{stderr}");
    let huge = String::from_utf8_lossy(&out.stdout).split_whitespace().skip_while(|w| *w != "as").nth(1).unwrap().to_string();

    for id in [&vm_id, &huge] {
        stdout_of(&skein(&w, &["strand", "destroy", id]), "strand destroy");
    }
    for id in [&vm_id, &huge] {
        wait_destroyed(&w, id).await;
    }
    std::fs::remove_file(key_file).unwrap();
}

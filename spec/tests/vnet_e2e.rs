//! Private networks across hosts, driven the way owners and the control
//! plane drive them (issue 13): subnets and VMs made through the API, the
//! VMs placed, set up and launched by `Vm::Nexus`, their NICs, segments and
//! tunnels made by each host's `Vnet::HostNet`, a rekey on demand run by
//! `Vnet::Rekey`, all in a real respirate process, on two test hosts (each
//! its own namespace, joined by an underlay of their own) with real qemu
//! guests (TCG).
//!
//! One test, because every host costs a guest boot to be accepted and every
//! VM another: VMs of a subnet on two hosts ping both ways and SSH over the
//! private address; two projects with the same CIDR on the same two hosts
//! never reach each other; stop/start and restart keep the private address;
//! a rekey on demand while a ping runs keeps it answering (the loss is
//! printed); a simulated host reboot restores the mesh; destroying every VM
//! leaves nothing on either host and no key in the database.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_models::vm::VmState;
use skein_models::vm_host::HostState;
use skein_models::{network, vm, vm_host, Ubid};
use skein_progs::host::nexus as host_nexus;
use skein_spec::api::Api;
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::procs::Proc;
use skein_spec::ssh::{ssh_base, text, KeyFile};
use skein_spec::world::World;

/// A VM as its owner reaches it: where its row says its SSH answers.
struct Guest {
    id: Ubid,
    name: String,
    /// Its address on the subnet, without the length.
    ip: String,
    key: PathBuf,
    pool: sqlx::PgPool,
}

impl Guest {
    async fn row(&self) -> vm::Vm {
        vm::get(&mut self.pool.acquire().await.unwrap(), self.id.uuid()).await.unwrap().unwrap()
    }

    async fn try_sh(&self, line: &str) -> Output {
        let at = self.row().await.ssh().unwrap_or_else(|| panic!("{} says nowhere to reach it", self.name));
        let mut c = ssh_base(&self.key, at.port as u16);
        c.arg(format!("{}@{}", at.user, at.host)).arg(line);
        tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
    }

    /// Whether it runs and its SSH answers now.
    async fn answers(&self) -> bool {
        let row = self.row().await;
        row.state == VmState::Running && row.ssh().is_some() && self.try_sh("true").await.status.success()
    }

    async fn sh(&self, line: &str) -> String {
        let out = self.try_sh(line).await;
        assert!(out.status.success(), "in {}: {line}\n{}{}", self.name, text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// `count` pings to `ip`: how many answered.
    async fn ping(&self, ip: &str, count: u32) -> u32 {
        parse_ping(&text(&self.try_sh(&format!("ping -q -c {count} -i 0.2 -W 2 {ip}")).await.stdout)).0
    }

    async fn reaches(&self, ip: &str) -> bool {
        self.ping(ip, 3).await > 0
    }

    /// The hostname (the VM's id) of whatever answers SSH at `ip` on this guest's subnet.
    async fn who_is(&self, ip: &str) -> String {
        let at = self.row().await.ssh().unwrap();
        let proxy = format!(
            "ProxyCommand=ssh -F /dev/null -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR {}@{} nc %h %p",
            self.key.display(),
            at.port,
            at.user,
            at.host
        );
        let mut c = ssh_base(&self.key, 22);
        c.args(["-o", &proxy]).arg(format!("root@{ip}")).arg("hostname");
        let out = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
        assert!(out.status.success(), "ssh {} -> {ip} over the subnet: {}", self.name, text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }
}

fn parse_ping(out: &str) -> (u32, u32) {
    let sent = out.lines().find(|l| l.contains("transmitted")).and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    let received = out
        .lines()
        .find(|l| l.contains("received"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (received, sent)
}

/// Poll `check` every half second until it holds, or fail with `what` and the worker's log.
async fn until<F, Fut>(what: &str, limit: Duration, worker: &Proc, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < end, "never: {what}\nworker log:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Run `line` in the host's namespace (root, like its agent).
fn on_host(h: &LocalHost, line: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", h.netns(), "sh", "-c", line]).env("SKEIN_ROOT", h.root_dir()).output().unwrap();
    text(&out.stdout)
}

/// What of the private networks is left on a host: its sk* devices, its
/// tunnel processes, its routes and firewall table, files under net/.
fn leftovers(h: &LocalHost) -> String {
    on_host(
        h,
        "ls /sys/class/net | grep -E '^sk(wg|br|vx|t)' || true; \
         pgrep -af \"skein-tunnel run .* $SKEIN_ROOT/\" || true; \
         ip -6 route show proto 77; nft list table inet skein_net 2>/dev/null | head -3 || true; \
         find $SKEIN_ROOT/net 2>/dev/null || true",
    )
}

/// Each host's network as recorded (what it applied, what it said), for a failure's message.
async fn networks(pool: &sqlx::PgPool) -> String {
    type Row = (uuid::Uuid, i64, i64, Option<Value>, Option<Value>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT host_id, want_seq, applied_seq, applied, status FROM host_network").fetch_all(pool).await.unwrap();
    rows.iter().map(|(h, w, a, applied, status)| format!("host {}: want {w} applied {a}\n  applied: {}\n  status: {}\n", Ubid::from_uuid(*h), applied.clone().unwrap_or_default(), status.clone().unwrap_or_default())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnets_span_two_hosts_through_the_control_plane() {
    let w = World::new().await;
    let (host_private, host_public) = generate_keypair();
    let (ha, hb) = (LocalHost::start(&host_public), LocalHost::start(&host_public));
    let mut hosts = vec![];
    for (name, h) in [("net-a", &ha), ("net-b", &hb)] {
        let id = w.add(name, h, &host_private, host_nexus::Frame::default()).await;
        let underlay = h.underlay_addr().to_string();
        vm_host::set_underlay(&mut w.db.pool.acquire().await.unwrap(), id.uuid(), Some(&underlay)).await.unwrap();
        hosts.push(id);
    }
    // net-apply is synchronous and takes seconds when it starts tunnels on a
    // busy machine: leases long enough for that, as in production (whose
    // default is longer still), rather than the 4 s of the quick-takeover tests.
    let hex = w.secret.to_hex();
    let worker = Proc::respirate_env(&w.db.url(), &["--concurrency", "16", "--lease-secs", "30"], &[("SKEIN_SECRET_KEY", &hex)]);
    for id in &hosts {
        w.wait_for(*id, "accepting", Duration::from_secs(300), &worker, |r| r.state == HostState::Accepting).await;
    }
    let host_of_ns = |id: Option<uuid::Uuid>| if id == Some(hosts[0].uuid()) { &ha } else { &hb };

    // Two projects, one range each: the same range.
    let api = Api::with_secret(w.db.pool.clone(), w.secret.clone());
    let (owner_private, owner_public) = generate_keypair();
    let key = KeyFile::new("vnet-e2e", &owner_private);
    let (_, t1) = api.project("one", 5).await;
    let (_, t2) = api.project("two", 5).await;
    let s1 = api.post("/v1/subnets", &t1, &json!({"name": "net", "cidr": "10.0.0.0/24"})).await;
    s1.assert(201, "");
    api.post("/v1/subnets", &t2, &json!({"name": "net", "cidr": "10.0.0.0/24"})).await.assert(201, "");
    // One at a time, so each goes where there is most room: the two hosts take turns.
    let mut guests = vec![];
    for (token, name) in [(&t1, "a1"), (&t1, "b1"), (&t2, "c1"), (&t2, "e1")] {
        let body = json!({"name": name, "cores": 1, "memory_mib": 256, "disk_mib": 64, "public_key": owner_public, "subnet": "net"});
        let made = api.post("/v1/vms", token, &body).await;
        made.assert(201, "");
        let id: Ubid = made.id().parse().unwrap();
        let pool = w.db.pool.clone();
        until(&format!("{name} placed"), Duration::from_secs(60), &worker, || async {
            vm::get(&mut pool.acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap().host_id.is_some()
        })
        .await;
        let ip = made.body["private_ip"].as_str().unwrap().split('/').next().unwrap().to_string();
        guests.push(Guest { id, name: name.into(), ip, key: key.0.clone(), pool: w.db.pool.clone() });
    }
    let [a1, b1, c1, e1] = &guests[..] else { unreachable!() };
    assert_eq!([&a1.ip, &b1.ip, &c1.ip, &e1.ip], ["10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.3"], "the same addresses in both projects");
    let (ha1, hb1) = (a1.row().await.host_id, b1.row().await.host_id);
    let (hc1, he1) = (c1.row().await.host_id, e1.row().await.host_id);
    assert_ne!(ha1, hb1, "a subnet's VMs go to any host with room, here both");
    assert_ne!(hc1, he1);
    for g in [a1, b1, c1, e1] {
        let pool = w.db.pool.clone();
        until(&format!("{} running", g.name), Duration::from_secs(400), &worker, || async {
            vm::get(&mut pool.acquire().await.unwrap(), g.id.uuid()).await.unwrap().unwrap().state == VmState::Running
        })
        .await;
    }
    assert!(a1.sh("ip -o -4 addr show dev eth1").await.contains("10.0.0.2/24"), "the guest has its private address");

    // Across hosts, both ways, and SSH over the private address lands in the right VM.
    // A VM starts once its own host has its NIC; the other hosts of its
    // subnet learn of it from their own strands, moments later.
    let end = Instant::now() + Duration::from_secs(60);
    while !a1.reaches(&b1.ip).await {
        if Instant::now() > end {
            let live: String = [&ha, &hb]
                .iter()
                .map(|h| on_host(h, "$SKEIN_ROOT/agent/bin/net-status; ip -br link; for d in $(ls /sys/class/net | grep skvx); do bridge fdb show dev $d; done; nft list ruleset | head -40"))
                .collect::<Vec<_>>()
                .join("\n----\n");
            let guest = a1.sh("ip -br link; ip -br addr; ip neigh").await;
            panic!("a1 never reached b1 across hosts\n{}\nlive:\n{live}\nguest a1:\n{guest}", networks(&w.db.pool).await);
        }
    }
    let got = a1.ping(&b1.ip, 5).await;
    assert!(got >= 4, "a1 -> b1 across hosts: {got}/5\n{}", networks(&w.db.pool).await);
    assert!(b1.ping(&a1.ip, 5).await >= 4, "b1 -> a1 across hosts");
    assert_eq!(a1.who_is(&b1.ip).await, b1.id.to_string());
    assert_eq!(c1.who_is(&e1.ip).await, e1.id.to_string(), "the other project has its own 10.0.0.3");
    assert_eq!(e1.who_is(&c1.ip).await, c1.id.to_string());

    // Stop b1: its address answers no more in project one, even though e1
    // (project two, the same address, on the same host) runs on.
    let s1_id = s1.id();
    api.call("POST", &format!("/v1/vms/{}/stop", b1.id), Some(&t1), None).await.assert(202, "");
    let pool = w.db.pool.clone();
    until("b1 stopped", Duration::from_secs(60), &worker, || async {
        vm::get(&mut pool.acquire().await.unwrap(), b1.id.uuid()).await.unwrap().unwrap().state == VmState::Stopped
    })
    .await;
    assert!(!a1.reaches("10.0.0.3").await, "project one must not reach project two's 10.0.0.3");
    assert!(c1.reaches("10.0.0.3").await, "project two still reaches its own");
    api.call("POST", &format!("/v1/vms/{}/start", b1.id), Some(&t1), None).await.assert(202, "");
    until("b1 running again", Duration::from_secs(300), &worker, || async {
        let v = vm::get(&mut pool.acquire().await.unwrap(), b1.id.uuid()).await.unwrap().unwrap();
        v.state == VmState::Running && v.ssh().is_some()
    })
    .await;
    assert!(b1.sh("ip -o -4 addr show dev eth1").await.contains("10.0.0.3/24"), "b1 keeps its address through stop/start");
    assert_eq!(a1.who_is("10.0.0.3").await, b1.id.to_string());

    // Restart a1: same address, the mesh still answers.
    api.call("POST", &format!("/v1/vms/{}/restart", a1.id), Some(&t1), None).await.assert(202, "");
    tokio::time::sleep(Duration::from_secs(2)).await;
    until("a1 back after restart", Duration::from_secs(300), &worker, || async {
        a1.answers().await
    })
    .await;
    assert!(a1.sh("ip -o -4 addr show dev eth1").await.contains("10.0.0.2/24"), "a1 keeps its address through restart");
    assert!(a1.ping(&b1.ip, 5).await >= 4, "a1 -> b1 after the restart");

    // A rekey on demand while a1 pings b1 every 100 ms.
    a1.sh(&format!("rm -f /tmp/ping.out; setsid sh -c 'ping -i 0.1 -c 100000 {} > /tmp/ping.out 2>&1' </dev/null >/dev/null 2>&1 &", b1.ip)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let began = Instant::now();
    let asked = api.call("POST", &format!("/v1/subnets/{s1_id}/rekey"), Some(&t1), None).await;
    asked.assert(202, "");
    assert_eq!(asked.body["rekeys"].as_array().unwrap().len(), 2, "one rekey per host: {}", asked.body);
    until("both hosts rekeyed", Duration::from_secs(180), &worker, || async {
        let nets = network::get_many(&mut pool.acquire().await.unwrap(), &[hosts[0].uuid(), hosts[1].uuid()]).await.unwrap();
        nets.len() == 2 && nets.iter().all(|n| n.rekey_strand_id.is_none() && n.last_rekey_at.is_some())
    })
    .await;
    let rekey_took = began.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a1.sh("pkill -INT ping || killall -INT ping").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ping_out = a1.sh("cat /tmp/ping.out").await;
    let (received, sent) = parse_ping(&ping_out);
    assert!(sent > 20 && received > 0, "the ping ran through the rekey: {ping_out}");
    let keys = network::key_infos(&mut pool.acquire().await.unwrap(), &[hosts[0].uuid(), hosts[1].uuid()]).await.unwrap();
    assert_eq!(keys.iter().map(|k| (k.gen, k.state.as_str())).collect::<Vec<_>>(), [(2, "sending"), (2, "sending")], "gen 2 only, on both");
    assert!(a1.ping(&b1.ip, 5).await >= 4, "the subnet works on the new keys");
    eprintln!("rekey of 2 hosts on demand: {rekey_took:?}; ping every 100 ms meanwhile: {} lost of {sent}", sent - received);

    // What an owner sees: the hosts, the tunnel between them (up), the last rekeys.
    let view = || async {
        // Ask the hosts now rather than wait for their next checkup.
        for n in network::get_many(&mut pool.acquire().await.unwrap(), &[hosts[0].uuid(), hosts[1].uuid()]).await.unwrap() {
            skein_engine::enqueue::incr(&mut pool.acquire().await.unwrap(), Ubid::from_uuid(n.strand_id), skein_progs::vnet::host_net::Sem::Apply).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        api.get(&format!("/v1/subnets/{s1_id}"), &t1).await.body
    };
    let end = Instant::now() + Duration::from_secs(60);
    let shown: Value = loop {
        let v = view().await;
        if v["tunnels"][0]["up"] == json!(true) || Instant::now() > end {
            break v;
        }
    };
    assert_eq!(shown["hosts"].as_array().unwrap().len(), 2, "{shown}");
    assert!(shown["hosts"].as_array().unwrap().iter().all(|h| h["last_rekey_at"].is_string() && h["keys"][0]["gen"] == json!(2)), "{shown}");
    assert_eq!(shown["tunnels"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["tunnels"][0]["up"], json!(true), "{shown}");
    assert!(shown["vms"].as_array().unwrap().iter().all(|v| v["host"].is_string()), "{shown}");

    // Host b1's "reboots": its VMs and tunnels die, its devices and rules go.
    let hb_ns = host_of_ns(hb1);
    on_host(
        hb_ns,
        "for u in $(ls $SKEIN_ROOT/vms); do pkill -KILL -u $u || true; done; \
         pkill -KILL -f \"skein-tunnel run .* $SKEIN_ROOT/\" || true; sleep 0.5; \
         for d in $(ls /sys/class/net | grep -E '^sk(wg|br|vx|t)'); do ip link del $d 2>/dev/null || true; done; \
         nft delete table inet skein_net 2>/dev/null || true",
    );
    assert!(!a1.reaches(&b1.ip).await, "b1 is gone with its host");
    // Its VMs' strands notice at their checkup (asked now, as the host's own strand does when a host is back).
    for g in [a1, b1, c1, e1] {
        skein_engine::enqueue::incr(&mut pool.acquire().await.unwrap(), g.id, skein_progs::vm::nexus::Sem::Checkup).await.unwrap();
    }
    until("the mesh back after the reboot", Duration::from_secs(300), &worker, || async {
        b1.answers().await && e1.answers().await && a1.ping(&b1.ip, 2).await > 0
    })
    .await;
    assert!(b1.sh("ip -o -4 addr show dev eth1").await.contains("10.0.0.3/24"), "b1 keeps its address through the reboot");
    assert!(b1.ping(&a1.ip, 5).await >= 4, "b1 -> a1 after the reboot");
    assert!(c1.reaches(&e1.ip).await, "project two too");

    // Destroy everything: nothing is left on either host, no key in the database.
    for (g, token) in [(a1, &t1), (b1, &t1), (c1, &t2), (e1, &t2)] {
        api.delete(&format!("/v1/vms/{}", g.id), token).await.assert(202, "");
    }
    for g in [a1, b1, c1, e1] {
        let id = g.id;
        until(&format!("{} destroyed and its NIC gone", g.name), Duration::from_secs(120), &worker, || async {
            skein_models::strand::get(&mut pool.acquire().await.unwrap(), id.uuid()).await.unwrap().is_none_or(|s| s.exitval.is_some())
        })
        .await;
    }
    for h in [&ha, &hb] {
        assert_eq!(leftovers(h).trim(), "", "nothing of the private networks is left on {}", h.netns());
    }
    // A host forgets its keys once it applied a state without tunnels (the
    // last bump of a host may come from a VM leaving the other one).
    until("no tunnel key kept for hosts without VMs", Duration::from_secs(60), &worker, || async {
        network::key_infos(&mut pool.acquire().await.unwrap(), &[hosts[0].uuid(), hosts[1].uuid()]).await.unwrap().is_empty()
    })
    .await;
}

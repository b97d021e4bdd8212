//! The private network's data path on real hosts: two test hosts (each its
//! own namespace, joined by an underlay of their own), set up by the
//! control plane's host prog (which ships the agent and the tunnel program
//! over SSH), then driven here directly through the agent programs over
//! SSH: `net-apply` with the whole desired state, `vm-setup`, and the
//! daemonizer running `vm-run`, booting real qemu guests (TCG).
//!
//! One test, because every host costs a guest boot to be accepted and every
//! VM another: subnet traffic both ways and SSH over the private address,
//! nothing in plaintext on the underlay, two projects with one CIDR that
//! never meet, a make-before-break rekey under a running ping, a simulated
//! host reboot, and the empty state leaving nothing behind. The figures
//! (ping RTT, TCP throughput, rekey loss) are printed, not asserted.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_progs::host::nexus as host_nexus;
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::ssh::{ssh_base, text, KeyFile};
use skein_spec::world::World;

const CIDR_LEN: u8 = 24;
const P1_VNI: u32 = 101;
const P2_VNI: u32 = 102;

fn run(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn ssh");
    if let Some(text) = stdin {
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("wait for ssh")
}

/// A test host as the agent sees it: root over SSH with the test's key.
struct Agent<'a> {
    h: &'a LocalHost,
    key: &'a Path,
}

impl Agent<'_> {
    fn root(&self) -> String {
        self.h.root_dir().display().to_string()
    }

    /// Run a shell line on the host (SKEIN_ROOT set); fail the test if it fails.
    fn sh(&self, line: &str) -> String {
        let out = self.try_sh(line, None);
        assert!(out.status.success(), "on {}: {line}\n{}{}", self.h.netns(), text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn try_sh(&self, line: &str, stdin: Option<&str>) -> Output {
        let mut c = ssh_base(self.key, 22);
        c.arg(format!("root@{}", self.h.addr())).arg(format!("export SKEIN_ROOT={}; {line}", self.root()));
        run(c, stdin)
    }

    /// net-apply with `desired`; the status it prints.
    fn apply(&self, desired: &Value) -> Value {
        let out = self.try_sh("$SKEIN_ROOT/agent/bin/net-apply", Some(&desired.to_string()));
        assert!(out.status.success(), "net-apply on {} failed:\n{}", self.h.netns(), text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("net-apply printed no JSON ({e}): {}", text(&out.stdout)))
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.sh("$SKEIN_ROOT/agent/bin/net-status")).unwrap()
    }

    /// Set a VM up (its private NIC with `ip`), to be launched after net-apply.
    fn setup_vm(&self, name: &str, key_b64: &str, ip: &str) {
        self.sh(&format!("$SKEIN_ROOT/agent/bin/vm-setup {name} 1 256 {key_b64} {ip}/{CIDR_LEN}"));
    }

    fn launch_vm(&self, name: &str) {
        self.sh(&format!(
            "d=$SKEIN_ROOT/agent/bin/daemonizer; $d clean vm-{name} >/dev/null 2>&1 || true; \
             rm -f $SKEIN_ROOT/vms/{name}/ssh.port; $d run vm-{name} $SKEIN_ROOT/agent/bin/vm-run {name}"
        ));
    }
}

/// A guest, reached over its host's forwarded SSH port.
struct Guest<'a> {
    name: String,
    ip: String,
    host: &'a LocalHost,
    key: &'a Path,
}

impl Guest<'_> {
    fn port(&self) -> u16 {
        let path = self.host.root_dir().join("vms").join(&self.name).join("ssh.port");
        std::fs::read_to_string(&path).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0)
    }

    fn try_sh(&self, line: &str) -> Output {
        let mut c = ssh_base(self.key, self.port());
        c.arg(format!("root@{}", self.host.addr())).arg(line);
        run(c, None)
    }

    fn sh(&self, line: &str) -> String {
        let out = self.try_sh(line);
        assert!(out.status.success(), "in {}: {line}\n{}{}\n--- console tail\n{}", self.name, text(&out.stdout), text(&out.stderr), self.console());
        text(&out.stdout)
    }

    fn console(&self) -> String {
        let log = std::fs::read_to_string(self.host.root_dir().join("vms").join(&self.name).join("console.log")).unwrap_or_default();
        log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn wait_ssh(&self) {
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            if self.port() != 0 && self.try_sh("true").status.success() {
                return;
            }
            assert!(Instant::now() < until, "guest {} never answered SSH\n{}", self.name, self.console());
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// `count` pings to `ip`: (received, average RTT in ms).
    fn ping(&self, ip: &str, count: u32) -> (u32, Option<f64>) {
        let out = self.try_sh(&format!("ping -q -c {count} -i 0.2 -W 2 {ip}"));
        parse_ping(&text(&out.stdout))
    }

    fn reaches(&self, ip: &str) -> bool {
        self.ping(ip, 3).0 > 0
    }

    /// Bytes per second from `from` (which serves zeros once) to this guest.
    fn throughput_from(&self, from: &Guest, port: u16) -> f64 {
        let count = 256; // 16 MiB
        from.sh(&format!("setsid nc -l -p {port} -e dd if=/dev/zero bs=65536 count={count} </dev/null >/dev/null 2>&1 &"));
        std::thread::sleep(Duration::from_millis(500));
        let out = self.sh(&format!("time sh -c 'nc {} {port} | wc -c' 2>&1", from.ip));
        let bytes: f64 = out.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0.0);
        assert_eq!(bytes, (count * 65536) as f64, "all bytes arrive: {out}");
        let secs = out
            .lines()
            .find_map(|l| l.strip_prefix("real"))
            .and_then(|r| {
                let r = r.trim();
                let (m, s) = r.split_once('m')?;
                Some(m.trim().parse::<f64>().ok()? * 60.0 + s.trim().trim_end_matches('s').parse::<f64>().ok()?)
            })
            .unwrap_or_else(|| panic!("no time in {out:?}"));
        bytes / secs.max(0.01)
    }
}

fn parse_ping(out: &str) -> (u32, Option<f64>) {
    let received = out
        .lines()
        .find(|l| l.contains("packets received"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let avg = out.lines().find_map(|l| l.strip_prefix("round-trip min/avg/max = ")).and_then(|r| r.split('/').nth(1)).and_then(|a| a.parse().ok());
    (received, avg)
}

fn tunnel_key() -> (String, String) {
    let bin = skein_spec::binary("skein-tunnel");
    let private = text(&Command::new(&bin).arg("genkey").output().unwrap().stdout).trim().to_string();
    let out = run(
        {
            let mut c = Command::new(&bin);
            c.arg("pubkey");
            c
        },
        Some(&private),
    );
    (private, text(&out.stdout).trim().to_string())
}

fn b64(s: &str) -> String {
    let out = run(
        {
            let mut c = Command::new("base64");
            c.arg("-w0");
            c
        },
        Some(s),
    );
    text(&out.stdout)
}

/// One host's key generations: (gen, private, public, send).
type Gens = Vec<(u32, String, String, bool)>;

/// The whole desired state of `me` (gens `mine`), given the other host (`peer`, gens `theirs`).
fn desired(mine: &Gens, peer: &LocalHost, theirs: &Gens, nics: &[(&str, u32)]) -> Value {
    let vnis: Vec<u32> = {
        let mut v: Vec<u32> = nics.iter().map(|(_, vni)| *vni).collect();
        v.sort();
        v.dedup();
        v
    };
    json!({
        "tunnels": mine.iter().map(|(g, private, _, send)| json!({"gen": g, "private_key": private, "send": send})).collect::<Vec<_>>(),
        "peers": [{"host": peer.netns(), "endpoint": peer.underlay_addr().to_string(),
                   "keys": theirs.iter().map(|(g, _, public, send)| json!({"gen": g, "public_key": public, "send": send})).collect::<Vec<_>>()}],
        "segments": vnis.iter().map(|v| json!({"vni": v, "peers": [peer.netns()]})).collect::<Vec<_>>(),
        "nics": nics.iter().map(|(vm, vni)| json!({"vm": vm, "vni": vni})).collect::<Vec<_>>(),
    })
}

/// What of the data path is left on a host: sk* devices, tunnel processes of
/// this host, our routes and firewall table, files under net/.
fn leftovers(a: &Agent) -> String {
    a.sh(
        "ls /sys/class/net | grep -E '^sk(wg|br|vx|t)' || true; \
         pgrep -af \"skein-tunnel run .* $SKEIN_ROOT/\" || true; \
         ip -6 route show proto 77; nft list table inet skein_net 2>/dev/null | head -3 || true; \
         find $SKEIN_ROOT/net 2>/dev/null || true",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_spans_two_hosts_encrypted_isolated_rekeyed_and_torn_down() {
    let w = World::new().await;
    let (host_private, host_public) = generate_keypair();
    let ha = LocalHost::start(&host_public);
    let hb = LocalHost::start(&host_public);
    assert!(std::sync::Arc::ptr_eq(ha.underlay(), hb.underlay()), "one process's hosts share an underlay");
    let ida = w.add("host-a", &ha, &host_private, host_nexus::Frame::default()).await;
    let idb = w.add("host-b", &hb, &host_private, host_nexus::Frame::default()).await;
    let worker = w.worker();
    for id in [ida, idb] {
        w.wait_for(id, "accepting", Duration::from_secs(300), &worker, |r| r.state == skein_models::vm_host::HostState::Accepting).await;
    }
    drop(worker); // from here on the test drives the agent itself

    let host_key = KeyFile::new("host", &host_private);
    let (a, b) = (Agent { h: &ha, key: &host_key.0 }, Agent { h: &hb, key: &host_key.0 });
    // The tunnel program came over SSH with the agent, checked by digest.
    for x in [&a, &b] {
        let sha = x.sh("cd $SKEIN_ROOT/tunnel && sha256sum skein-tunnel | cut -d' ' -f1 && cat SHA256");
        let lines: Vec<&str> = sha.lines().collect();
        assert_eq!(lines.len(), 2, "{sha}");
        assert_eq!(lines[0], lines[1], "the shipped tunnel matches its digest");
    }

    // Two projects, one CIDR. P1: a1, a2 on host A, b1 on host B.
    // P2: c1 on host A with a1's very address, e1 on host B.
    let (owner_private, owner_public) = generate_keypair();
    let owner_key = KeyFile::new("owner", &owner_private);
    let key_b64 = b64(&format!("{owner_public}\n"));
    let pid = std::process::id();
    let vm = |tag: &str| format!("nd{pid}{tag}");
    let (a1, a2, b1, c1, e1) = (vm("a1"), vm("a2"), vm("b1"), vm("c1"), vm("e1"));
    let on_a = [(a1.as_str(), "10.0.0.2", P1_VNI), (a2.as_str(), "10.0.0.4", P1_VNI), (c1.as_str(), "10.0.0.2", P2_VNI)];
    let on_b = [(b1.as_str(), "10.0.0.3", P1_VNI), (e1.as_str(), "10.0.0.9", P2_VNI)];
    for (name, ip, _) in on_a {
        a.setup_vm(name, &key_b64, ip);
    }
    for (name, ip, _) in on_b {
        b.setup_vm(name, &key_b64, ip);
    }
    let nics_a: Vec<(&str, u32)> = on_a.iter().map(|(n, _, v)| (*n, *v)).collect();
    let nics_b: Vec<(&str, u32)> = on_b.iter().map(|(n, _, v)| (*n, *v)).collect();

    let (ka1, pa1) = tunnel_key();
    let (kb1, pb1) = tunnel_key();
    let gens_a: Gens = vec![(1, ka1.clone(), pa1.clone(), true)];
    let gens_b: Gens = vec![(1, kb1.clone(), pb1.clone(), true)];
    let sa = a.apply(&desired(&gens_a, &hb, &gens_b, &nics_a));
    let sb = b.apply(&desired(&gens_b, &ha, &gens_a, &nics_b));
    assert_eq!(sa["tunnels"][0]["public_key"], json!(pa1), "the tunnel runs with the key it was given: {sa}");
    assert_eq!(sa["nics"].as_array().unwrap().len(), 3, "{sa}");
    assert_eq!(sb["segments"].as_array().unwrap().len(), 2, "{sb}");
    // Idempotent: the same state again changes nothing.
    assert_eq!(a.apply(&desired(&gens_a, &hb, &gens_b, &nics_a))["tunnels"][0]["public_key"], json!(pa1));
    // Taps belong to the VMs' users (qemu stays unprivileged).
    let tap = sa["nics"].as_array().unwrap().iter().find(|n| n["vm"] == json!(a1)).map(|n| n["tap"].as_str().unwrap().to_string()).expect("a1's nic");
    let owner = a.sh(&format!("cat /sys/class/net/{tap}/owner"));
    assert_eq!(owner.trim(), text(&Command::new("id").args(["-u", &a1]).output().unwrap().stdout).trim(), "a1's tap is a1's");
    // No private key at rest anywhere under the agent's roots.
    for (x, k) in [(&a, &ka1), (&b, &kb1)] {
        let found = x.try_sh(&format!("grep -rlF -- '{k}' $SKEIN_ROOT"), None);
        assert!(text(&found.stdout).trim().is_empty(), "a private key in a file: {}", text(&found.stdout));
    }

    for (name, _, _) in on_a {
        a.launch_vm(name);
    }
    for (name, _, _) in on_b {
        b.launch_vm(name);
    }
    let guest = |name: &str, ip: &str, h| Guest { name: name.to_string(), ip: ip.to_string(), host: h, key: &owner_key.0 };
    let (g_a1, g_a2, g_b1, g_c1, g_e1) =
        (guest(&a1, "10.0.0.2", &ha), guest(&a2, "10.0.0.4", &ha), guest(&b1, "10.0.0.3", &hb), guest(&c1, "10.0.0.2", &ha), guest(&e1, "10.0.0.9", &hb));
    for g in [&g_a1, &g_a2, &g_b1, &g_c1, &g_e1] {
        g.wait_ssh();
    }
    assert!(g_a1.sh("ip -o -4 addr show dev eth1").contains("10.0.0.2/24"), "the guest has its private address");
    assert!(g_a1.sh("cat /sys/class/net/eth1/mtu").trim() == "1350", "the guest is told the segment's MTU");

    // 1. Across hosts, both ways, and SSH from one into the other over the private address.
    let (got, rtt_across) = g_a1.ping(&g_b1.ip, 5);
    assert!(got >= 4, "a1 -> b1 across hosts: {got}/5");
    let (got, _) = g_b1.ping(&g_a1.ip, 5);
    assert!(got >= 4, "b1 -> a1 across hosts: {got}/5");
    let (got, rtt_same) = g_a1.ping(&g_a2.ip, 5);
    assert!(got >= 4, "a1 -> a2 on one host: {got}/5");
    let mut via = ssh_base(&owner_key.0, 22);
    via.args(["-o", &format!("ProxyCommand=ssh -F /dev/null -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@{} nc %h %p", owner_key.0.display(), g_a1.port(), ha.addr())]);
    via.arg(format!("root@{}", g_b1.ip)).arg("hostname");
    let out = run(via, None);
    assert!(
        out.status.success(),
        "ssh a1 -> b1 over 10.0.0.3: {}\na1: {}\nb1: {}",
        text(&out.stderr),
        text(&g_a1.try_sh("echo | nc -w 3 10.0.0.3 22 | head -c 80; ip -o addr; ip neigh").stdout),
        text(&g_b1.try_sh("netstat -ltn; ip -o addr; ip neigh").stdout)
    );
    assert_eq!(text(&out.stdout).trim(), b1, "the SSH over the private address lands in b1");

    // 2. On the wire: tunnel traffic only, never the guests' bytes.
    let marker = format!("skein-plaintext-marker-{pid}-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let capture = ha.underlay().capture();
    g_b1.sh("rm -f /tmp/marker; setsid sh -c 'nc -l -p 5002 > /tmp/marker' </dev/null >/dev/null 2>&1 &");
    std::thread::sleep(Duration::from_millis(500));
    g_a1.sh(&format!("for i in 1 2 3 4 5; do echo {marker}; done | nc {} 5002", g_b1.ip));
    g_a1.ping(&g_b1.ip, 3);
    std::thread::sleep(Duration::from_millis(500));
    let pcap = capture.stop();
    assert!(g_b1.sh("cat /tmp/marker").contains(&marker), "the marker went from a1 to b1");
    let b_underlay = hb.underlay_addr().octets();
    assert!(pcap.len() > 2000 && pcap.windows(4).any(|w| w == b_underlay), "the capture saw the hosts' traffic ({} bytes)", pcap.len());
    assert!(!pcap.windows(marker.len()).any(|w| w == marker.as_bytes()), "the marker crossed the underlay in plaintext");

    // 3. Two projects with one CIDR never meet; each reaches its own.
    assert!(g_c1.reaches(&g_e1.ip), "P2 reaches its own VM across hosts");
    assert!(!g_a1.reaches(&g_e1.ip), "P1 must not reach P2's 10.0.0.9");
    assert!(!g_c1.reaches(&g_b1.ip), "P2 must not reach P1's 10.0.0.3");
    assert!(!g_e1.reaches(&g_a2.ip), "P2 must not reach P1's 10.0.0.4");

    // Figures (printed; perf is not asserted).
    let tput_same = g_a1.throughput_from(&g_a2, 5003);
    let tput_across = g_a1.throughput_from(&g_b1, 5004);

    // 4. Rekey host A (gen 1 -> 2), make-before-break, while a1 pings b1.
    g_a1.sh(&format!("rm -f /tmp/ping.out; setsid sh -c 'ping -i 0.1 -c 100000 {} > /tmp/ping.out 2>&1' </dev/null >/dev/null 2>&1 &", g_b1.ip));
    std::thread::sleep(Duration::from_secs(2));
    let (ka2, pa2) = tunnel_key();
    let phase1: Gens = vec![(1, ka1.clone(), pa1.clone(), true), (2, ka2.clone(), pa2.clone(), false)];
    a.apply(&desired(&phase1, &hb, &gens_b, &nics_a));
    b.apply(&desired(&gens_b, &ha, &phase1, &nics_b));
    let phase2: Gens = vec![(1, ka1.clone(), pa1.clone(), false), (2, ka2.clone(), pa2.clone(), true)];
    a.apply(&desired(&phase2, &hb, &gens_b, &nics_a));
    b.apply(&desired(&gens_b, &ha, &phase2, &nics_b));
    let gens_a: Gens = vec![(2, ka2.clone(), pa2.clone(), true)];
    let sa = a.apply(&desired(&gens_a, &hb, &gens_b, &nics_a));
    let sb = b.apply(&desired(&gens_b, &ha, &gens_a, &nics_b));
    std::thread::sleep(Duration::from_secs(2));
    g_a1.sh("pkill -INT ping || killall -INT ping");
    std::thread::sleep(Duration::from_millis(500));
    let ping_out = g_a1.sh("cat /tmp/ping.out");
    let sent: u32 = ping_out.lines().find(|l| l.contains("transmitted")).and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    let (received, _) = parse_ping(&ping_out);
    assert!(sent > 20 && received > 0, "the ping ran through the rekey: {ping_out}");
    let lost = sent - received;
    assert_eq!(sa["tunnels"].as_array().unwrap().len(), 1, "only gen 2 is left on A: {sa}");
    assert_eq!(sa["tunnels"][0]["gen"], json!(2));
    assert_eq!(sb["tunnels"][0]["peers"].as_array().unwrap().len(), 1, "B holds only A's new key: {sb}");
    assert_eq!(sb["tunnels"][0]["peers"][0]["public_key"], json!(pa2));
    assert!(g_a1.ping(&g_b1.ip, 3).0 >= 2, "after the rekey the subnet still works");

    // 5. Host B "reboots": its VMs and tunnels die, its devices and rules are gone.
    //    net-apply of the same state and a relaunch bring it back.
    for name in [&b1, &e1] {
        b.sh(&format!("$SKEIN_ROOT/agent/bin/vm-stop {name}"));
    }
    b.sh("pkill -KILL -f \"skein-tunnel run .* $SKEIN_ROOT/\" || true; sleep 0.5; \
          for d in $(ls /sys/class/net | grep -E '^sk(wg|br|vx|t)'); do ip link del $d 2>/dev/null || true; done; \
          nft delete table inet skein_net 2>/dev/null || true");
    assert_eq!(b.status()["tunnels"][0]["running"], json!(false), "B's tunnel is down after the reboot");
    assert!(!g_a1.reaches(&g_b1.ip), "b1 is gone with its host");
    let sb = b.apply(&desired(&gens_b, &ha, &gens_a, &nics_b));
    assert_eq!(sb["tunnels"][0]["running"], json!(true), "{sb}");
    for name in [&b1, &e1] {
        b.launch_vm(name);
    }
    g_b1.wait_ssh();
    g_e1.wait_ssh();
    assert!(g_b1.sh("ip -o -4 addr show dev eth1").contains("10.0.0.3/24"), "b1 keeps its private address");
    assert!(g_a1.ping(&g_b1.ip, 5).0 >= 4, "the mesh is back after B's reboot");
    assert!(g_b1.ping(&g_a1.ip, 5).0 >= 4, "both ways");
    assert!(g_c1.reaches(&g_e1.ip), "P2 too");

    // 6. Everything destroyed: the empty state leaves nothing on either host.
    for (x, names) in [(&a, vec![&a1, &a2, &c1]), (&b, vec![&b1, &e1])] {
        for name in names {
            x.sh(&format!("$SKEIN_ROOT/agent/bin/vm-remove {name}; $SKEIN_ROOT/agent/bin/daemonizer clean vm-{name}"));
        }
        let s = x.apply(&json!({}));
        assert_eq!(s, json!({"tunnels": [], "segments": [], "nics": []}));
        assert_eq!(leftovers(x).trim(), "", "nothing of the data path is left on {}", x.h.netns());
        assert!(text(&x.try_sh("ls $SKEIN_ROOT/daemonizer | grep tunnel", None).stdout).trim().is_empty(), "no tunnel run is remembered");
    }

    eprintln!("net figures (TCG guests, debug build of the tunnel's host tools, boringtun optimized):");
    eprintln!("  ping RTT avg: same host {rtt_same:?} ms, across hosts {rtt_across:?} ms");
    eprintln!("  TCP throughput: same host {:.1} Mbit/s, across hosts {:.1} Mbit/s", tput_same * 8.0 / 1e6, tput_across * 8.0 / 1e6);
    eprintln!("  rekey under ping every 100 ms: {lost} lost of {sent}");
}

/// net-apply run in a fresh host's namespace (no SSH needed for input checks).
fn local_apply(h: &LocalHost, stdin: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../progs/host-agent/bin/net-apply");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", h.netns(), "bash"]).arg(script).env("SKEIN_ROOT", h.root_dir());
    run(c, Some(stdin))
}

#[test]
fn bad_desired_states_are_refused_naming_the_field_and_never_the_key() {
    let (_, public) = generate_keypair();
    let h = LocalHost::start(&public);
    let (private, peer) = tunnel_key();
    let tunnel = |gen: i64, send: bool| json!({"gen": gen, "private_key": private, "send": send});
    let peer_of = |keys: Value| json!({"host": "b", "endpoint": "10.252.0.9", "keys": keys});
    let cases = [
        (json!({"tunnels": [tunnel(0, true)]}), "tunnels[0].gen"),
        (json!({"tunnels": [tunnel(1, false)]}), "exactly one tunnel must have send: true"),
        (json!({"tunnels": [tunnel(1, true), tunnel(1001, false)]}), "modulo 1000"),
        (json!({"tunnels": [{"gen": 1, "private_key": "not a key", "send": true}]}), "tunnels[0].private_key"),
        (json!({"peers": [peer_of(json!([{"gen": 1, "public_key": peer, "send": true}]))]}), "peers need a tunnel"),
        (json!({"tunnels": [tunnel(1, true)], "peers": [peer_of(json!([{"gen": 1, "public_key": peer, "send": false}]))]}), "exactly one key with send"),
        (json!({"tunnels": [tunnel(1, true)], "segments": [{"vni": 7, "peers": ["nobody"]}]}), "not in peers"),
        (json!({"segments": [{"vni": 0, "peers": []}]}), "segments[0].vni"),
        (json!({"segments": [], "nics": [{"vm": "vm1", "vni": 7}]}), "nics[0].vni is not in segments"),
        (json!([1, 2]), "one JSON object"),
    ];
    for (state, says) in cases {
        let out = local_apply(&h, &state.to_string());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{state} must be refused as bad input: {err}");
        assert!(err.contains(says), "{state}: the error should say {says:?}, said: {err}");
        assert!(!err.contains(&private) && !text(&out.stdout).contains(&private), "a key was printed: {err}");
    }
    // Nothing was made by any of them.
    let links = Command::new("ip").args(["-n", h.netns(), "-o", "link"]).output().unwrap();
    let made = ["skwg", "skbr", "skvx", "skt"].iter().any(|p| text(&links.stdout).contains(&format!(": {p}")));
    assert!(!made, "{}", text(&links.stdout));
    // A nic of a VM that was never set up is refused too (exit 1: set it up first).
    let out = local_apply(&h, &json!({"segments": [{"vni": 7, "peers": []}], "nics": [{"vm": "nosuchvm42", "vni": 7}]}).to_string());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("run vm-setup"), "{}", text(&out.stderr));
}

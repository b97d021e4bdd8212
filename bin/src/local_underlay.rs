//! The wire between local hosts: an "underlay" network that test hosts
//! ([`crate::local_host::LocalHost`]) reach each other's tunnels over, and
//! that a test can capture on, without touching this machine's own network.
//!
//! An [`Underlay`] is a Linux bridge `wire` inside a network namespace of its
//! own, `skein-wire-{m}`; each host joins it with a veth pair (`sku{n}a` on
//! the bridge, `sku{n}b` in the host's namespace, address
//! `10.252.{(n+1)/256}.{(n+1)%256}/16`). All hosts started by one process
//! share one underlay (created with the first, removed with the last), so
//! tests running in parallel (nextest: one process each) never see each
//! other's packets. `m` is claimed across processes like a host's `n`: an
//! exclusive `flock` on `/run/skein-test-hosts/wire-{m}.lock` for the
//! underlay's life, and leftovers of dead processes are reaped on the next
//! claim.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::local_host::{ip, kill_all_in_netns, try_ip, try_lock, STATE_DIR};

const MAX_WIRES: u32 = 4096;
/// The bridge's name inside the underlay's namespace.
const BRIDGE: &str = "wire";

/// A bridge in a namespace of its own that hosts attach to. Dropping the
/// last reference kills what runs in the namespace and removes it.
pub struct Underlay {
    m: u32,
    netns: String,
    claim: Option<File>,
}

impl Underlay {
    /// A new underlay of its own (hosts attach with `LocalHost::start_on`).
    pub fn new() -> Arc<Underlay> {
        let (m, claim) = claim_wire();
        let underlay = Underlay { m, netns: format!("skein-wire-{m}"), claim: Some(claim) };
        ip(&["netns", "add", &underlay.netns]);
        ip(&["-n", &underlay.netns, "link", "set", "lo", "up"]);
        ip(&["-n", &underlay.netns, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &underlay.netns, "link", "set", BRIDGE, "up"]);
        Arc::new(underlay)
    }

    /// This process's underlay: the one its other live hosts are on, or a new one.
    pub fn shared() -> Arc<Underlay> {
        static SHARED: Mutex<Weak<Underlay>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(underlay) = shared.upgrade() {
            return underlay;
        }
        let underlay = Underlay::new();
        *shared = Arc::downgrade(&underlay);
        underlay
    }

    /// The namespace holding the bridge, `skein-wire-{m}`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The underlay address of host `n` (what its peers reach its tunnels at).
    pub fn addr_of(n: u32) -> Ipv4Addr {
        let k = n + 1;
        Ipv4Addr::new(10, 252, (k / 256) as u8, (k % 256) as u8)
    }

    /// Attach host `n` (in namespace `host_netns`): a veth pair, one end on the
    /// bridge, the other in the host with its underlay address.
    pub(crate) fn attach(&self, n: u32, host_netns: &str) {
        let (outer, inner) = (format!("sku{n}a"), format!("sku{n}b"));
        ip(&["-n", &self.netns, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", host_netns]);
        ip(&["-n", &self.netns, "link", "set", &outer, "master", BRIDGE, "up"]);
        ip(&["-n", host_netns, "addr", "add", &format!("{}/16", Underlay::addr_of(n)), "dev", &inner]);
        ip(&["-n", host_netns, "link", "set", &inner, "up"]);
    }

    /// Start capturing every frame on the underlay (every port of the
    /// bridge); returns once tcpdump listens.
    pub fn capture(&self) -> Capture {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("skein-wire-{}-{}-{k}.pcap", self.m, std::process::id()));
        let log = file.with_extension("log");
        let stderr = File::create(&log).expect("capture log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "tcpdump", "-i", "any", "--immediate-mode", "-U", "-n", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tcpdump (scripts/install-deps installs it)");
        let capture = Capture { child: Some(child), file, log };
        let until = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&capture.log).unwrap_or_default().contains("listening on") {
            assert!(Instant::now() < until, "tcpdump never listened: {}", fs::read_to_string(&capture.log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        capture
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        kill_all_in_netns(&self.netns);
        remove_wire(self.m);
        let _ = fs::remove_file(claim_path(self.m));
        drop(self.claim.take());
    }
}

/// A running tcpdump on an underlay. `stop` gives the pcap; dropping it
/// unstopped kills tcpdump and removes its files.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Stop capturing (tcpdump flushes on SIGINT) and return the pcap bytes.
    pub fn stop(mut self) -> Vec<u8> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let until = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_file(&self.log);
    }
}

fn claim_path(m: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("wire-{m}.lock"))
}

fn wire_exists(m: u32) -> bool {
    Path::new(&format!("/run/netns/skein-wire-{m}")).exists()
}

fn remove_wire(m: u32) {
    if wire_exists(m) {
        let out = try_ip(&["netns", "del", &format!("skein-wire-{m}")]);
        if !out.status.success() {
            eprintln!("skein test hosts: ip netns del skein-wire-{m}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Claim the first free underlay number, under the machine-wide lock (the
/// caller's: `local_host::with_global_lock`).
fn claim_wire() -> (u32, File) {
    crate::local_host::with_global_lock(|| {
        for m in 0..MAX_WIRES {
            if claim_path(m).exists() || wire_exists(m) {
                continue;
            }
            let mut file = OpenOptions::new().create_new(true).write(true).open(claim_path(m)).expect("create wire claim file");
            assert!(try_lock(&file, false), "wire claim {m} locked by someone else while we hold the global lock");
            write!(file, "{}", std::process::id()).expect("write wire claim file");
            return (m, file);
        }
        panic!("all {MAX_WIRES} underlay numbers are in use");
    })
}

/// Remove underlays whose process is gone (claim file unlocked, or none).
/// Called under the machine-wide lock by `local_host::reap_stale`.
pub(crate) fn reap_stale() {
    let mut numbers = BTreeSet::new();
    for dir in [STATE_DIR, "/run/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let m = name.strip_prefix("wire-").and_then(|s| s.strip_suffix(".lock")).or_else(|| name.strip_prefix("skein-wire-"));
                if let Some(m) = m.and_then(|s| s.parse::<u32>().ok()) {
                    numbers.insert(m);
                }
            }
        }
    }
    for m in numbers {
        let claim = OpenOptions::new().read(true).write(true).open(claim_path(m)).ok();
        if claim.as_ref().is_some_and(|f| !try_lock(f, false)) {
            continue; // its owner is alive
        }
        eprintln!("skein test hosts: removing leftovers of underlay {m} (its process is gone)");
        kill_all_in_netns(&format!("skein-wire-{m}"));
        remove_wire(m);
        if claim.is_some() {
            let _ = fs::remove_file(claim_path(m));
        }
    }
}

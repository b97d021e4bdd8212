//! Local hosts: real sshd "hosts" on this machine, for integration tests and
//! for `skein up`'s VM demo.
//!
//! skein drives remote hosts over SSH, and the only honest way to test that
//! (host keys, authorized keys, SFTP uploads, a host vanishing mid-session,
//! a host key changing under us) is against a real sshd. A [`LocalHost`] is
//! one: a fresh network namespace joined to the root namespace by a veth
//! pair, its own private IPv4 address, an sshd on port 22 at that address
//! with its own host key, sshd_config and authorized_keys, and its own agent
//! root directory. Traffic goes only to these namespaces (and loopback); the
//! machine's own sshd, `/root/.ssh` and routes are never touched.
//!
//! Host `n` gets the /30 `10.251.(n/64).(4*(n%64))`: `.1` on the root-side
//! veth `skh{n}a`, `.2` on `skh{n}b` inside namespace `skein-host-{n}`.
//! Tests run as separate processes in parallel (nextest), so `n` is claimed
//! across processes: under a machine-wide `flock` on
//! `/run/skein-test-hosts/lock`, a host takes the first `n` with no claim
//! file, namespace or veth, and holds an exclusive `flock` on its claim file
//! `/run/skein-test-hosts/{n}.lock` (which also records its pid) for its
//! whole life. The kernel drops that lock when the process dies, however it
//! dies, so a claim file that can be locked belongs to nobody: every `start`
//! first reaps such leftovers of crashed runs (processes in the namespace,
//! the namespace, the veth, stray sshds and directories), and never touches
//! a host whose owner is alive.
//!
//! Every host also has a second link, onto an underlay shared by the hosts
//! of its process (`local_underlay.rs`): the network their private-subnet
//! tunnels run over, which a test can capture on.
//!
//! Requires root, `ip` (iproute2), `/usr/sbin/sshd` and `ssh-keygen`
//! (and tcpdump to capture).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::local_underlay::{Capture, Underlay};

/// Where claim files live (tmpfs, so a reboot clears them along with the namespaces).
pub(crate) const STATE_DIR: &str = "/run/skein-test-hosts";
/// /30 blocks in 10.251.0.0/16.
const MAX_HOSTS: u32 = 16384;
const SSHD: &str = "/usr/sbin/sshd";
const HOST_KEY: &str = "ssh_host_ed25519_key";

// std links libc on Linux; these two calls are all we need, without a libc dependency.
extern "C" {
    fn flock(fd: std::os::raw::c_int, operation: std::os::raw::c_int) -> std::os::raw::c_int;
    fn kill(pid: std::os::raw::c_int, sig: std::os::raw::c_int) -> std::os::raw::c_int;
    fn geteuid() -> u32;
}
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;
const SIGKILL: i32 = 9;

/// A real sshd in its own network namespace. Dropping it kills everything in
/// the namespace and removes the namespace, the veth pair and its directory.
pub struct LocalHost {
    n: u32,
    netns: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    root_dir: PathBuf,
    sshd: Option<Child>,
    /// Exclusive flock on `/run/skein-test-hosts/{n}.lock`, held while the host lives.
    claim: Option<File>,
    /// The wire to the other hosts (dropped after the host's own namespace).
    underlay: Arc<Underlay>,
}

impl LocalHost {
    /// Start a host: a fresh network namespace joined to the root namespace by a veth pair,
    /// with its own IPv4 address, an sshd listening on port 22 at that address, its own
    /// host key, and a per-host agent root directory. Authorizes `authorized_key` (an OpenSSH
    /// public key line) for root.
    pub fn start(authorized_key: &str) -> LocalHost {
        LocalHost::start_on(authorized_key, Underlay::shared())
    }

    /// Like [`LocalHost::start`], on a given underlay (e.g. a fresh [`Underlay::new`]
    /// for hosts that must not see this process's other hosts).
    pub fn start_on(authorized_key: &str, underlay: Arc<Underlay>) -> LocalHost {
        assert_eq!(unsafe { geteuid() }, 0, "test hosts need root (network namespaces, sshd)");
        let (n, claim) = claim_number();
        let dir = std::env::temp_dir().join(format!("skein-host-{n}-{}", std::process::id()));
        let mut host = LocalHost {
            n,
            netns: format!("skein-host-{n}"),
            addr: Ipv4Addr::new(10, 251, (n / 64) as u8, (4 * (n % 64) + 2) as u8),
            root_dir: dir.join("root"),
            dir,
            sshd: None,
            claim: Some(claim),
            underlay,
        };
        // From here on a panic drops `host`, which undoes whatever was set up.
        let _ = fs::remove_dir_all(&host.dir);
        fs::create_dir_all(&host.root_dir).unwrap_or_else(|e| panic!("create {}: {e}", host.root_dir.display()));
        host.setup_network();
        keygen(&host.dir.join(HOST_KEY), "");
        fs::write(host.dir.join("authorized_keys"), "").expect("authorized_keys");
        host.authorize(authorized_key);
        host.write_config();
        host.start_sshd();
        host
    }

    /// The host's address, reachable from the root namespace.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.addr)
    }

    /// The host's address on its underlay: where its peers reach its tunnels.
    pub fn underlay_addr(&self) -> Ipv4Addr {
        Underlay::addr_of(self.n)
    }

    /// The underlay the host is on (to capture on it, or put more hosts on it).
    pub fn underlay(&self) -> &Arc<Underlay> {
        &self.underlay
    }

    /// sshd's port: always 22.
    pub fn port(&self) -> u16 {
        22
    }

    /// This host's agent root (`SKEIN_ROOT` for host-side programs); exists, owned by root.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The network namespace's name, `skein-host-{n}` (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The sshd host key's public line without comment, e.g. `ssh-ed25519 AAAA...`.
    pub fn host_public_key(&self) -> String {
        let path = self.dir.join(format!("{HOST_KEY}.pub"));
        let line = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// Append another OpenSSH public key line to root's authorized keys for this host
    /// (this host's own file; takes effect for the next connection).
    pub fn authorize(&self, public_key: &str) {
        let key = public_key.trim();
        assert!(!key.is_empty() && !key.contains('\n'), "authorize takes one public key line, got {public_key:?}");
        let mut file = OpenOptions::new().append(true).open(self.dir.join("authorized_keys")).expect("open authorized_keys");
        writeln!(file, "{key}").expect("write authorized_keys");
    }

    /// The host vanishes: SIGKILL sshd and every other process in the namespace
    /// (established sessions and whatever they started die too). Returns once they are gone.
    pub fn kill_sshd(&mut self) {
        kill_all_in_netns(&self.netns);
        kill_sshds_of(&self.dir);
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start sshd (again) with the same config and host key; returns when it accepts TCP
    /// connections on addr:22. Does nothing if it is already running.
    pub fn start_sshd(&mut self) {
        if let Some(child) = self.sshd.as_mut() {
            if child.try_wait().expect("try_wait sshd").is_none() {
                return;
            }
            self.sshd = None;
        }
        // sshd's privilege separation directory; it refuses to start without it.
        if !Path::new("/run/sshd").is_dir() {
            fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let log = self.dir.join("sshd.log");
        let stderr = OpenOptions::new().create(true).append(true).open(&log).expect("sshd log");
        // Stays in the test's process group, so a test killed by nextest takes sshd with it.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, SSHD, "-D", "-f"])
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ip netns exec sshd");
        self.sshd = Some(child);

        let target = SocketAddr::new(self.addr(), 22);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                return;
            }
            let exited = self.sshd.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > until {
                let log_text = fs::read_to_string(&log).unwrap_or_default();
                panic!("sshd of {} never accepted connections on {target} (exit: {exited:?}); log {}:\n{log_text}", self.netns, log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replace the host key with a new one and restart sshd (if it was running), so
    /// clients that remember the old key must refuse the host.
    pub fn rotate_host_key(&mut self) {
        let running = self.sshd.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        self.kill_sshd();
        let key = self.dir.join(HOST_KEY);
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        keygen(&key, "");
        if running {
            self.start_sshd();
        }
    }

    fn setup_network(&self) {
        let (ns, n) = (self.netns.as_str(), self.n);
        let (outer, inner) = (format!("skh{n}a"), format!("skh{n}b"));
        let outer_addr = format!("{}/30", Ipv4Addr::from(u32::from(self.addr) - 1));
        let inner_addr = format!("{}/30", self.addr);
        ip(&["netns", "add", ns]);
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns]);
        ip(&["addr", "add", &outer_addr, "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&["-n", ns, "addr", "add", &inner_addr, "dev", &inner]);
        ip(&["-n", ns, "link", "set", &inner, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        self.underlay.attach(n, ns);
    }

    fn write_config(&self) {
        let d = self.dir.display();
        // A few things differ from a stock host, all because test hosts
        // share this machine's filesystem and its root account:
        // - skein authorizes its own generated key in `<agent root>/ssh/authorized_keys`
        //   (as a real skein host's sshd is configured to read), beside the test's key;
        // - `SHLVL=1` stops bash from sourcing this machine's /root/.bashrc for
        //   every SSH command (bash does so for sshd sessions when SHLVL is unset);
        //   the dev image's .bashrc runs pyenv, whose rehash can wait on a lock forever
        //   (sshd honours only the first `SetEnv` line: add variables to that one);
        // - `PermitUserRC no`: nor the machine's /root/.ssh/rc.
        let config = format!(
            "# sshd of skein test host {ns}, written by skein-spec's hosts.rs\n\
             ListenAddress {addr}\n\
             Port 22\n\
             HostKey \"{d}/{HOST_KEY}\"\n\
             PidFile \"{d}/sshd.pid\"\n\
             AuthorizedKeysFile \"{d}/authorized_keys\" \"{d}/root/ssh/authorized_keys\"\n\
             SetEnv SHLVL=1\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UseDNS no\n\
             PrintMotd no\n\
             Subsystem sftp internal-sftp\n\
             PermitUserRC no\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             LogLevel VERBOSE\n",
            ns = self.netns,
            addr = self.addr,
        );
        fs::write(self.dir.join("sshd_config"), config).expect("write sshd_config");
    }
}

impl Drop for LocalHost {
    fn drop(&mut self) {
        // Everything in the namespace (sshd, sessions, whatever they started), then
        // the namespace, the veth pair, the directory, and last the claim.
        kill_all_in_netns(&self.netns);
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_sshds_of(&self.dir);
        remove_users_of(&self.dir);
        remove_network(self.n);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(claim_path(self.n));
        drop(self.claim.take());
    }
}

/// Unix users made for VMs on this host (their home is under its directory):
/// a test that fails before destroying its VMs must not leave them behind
/// on the machine the test hosts share.
fn remove_users_of(dir: &Path) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [user, _, _, _, _, home, ..] = fields.as_slice() {
            if home.starts_with(&prefix) {
                let _ = Command::new("pkill").args(["-KILL", "-u", user]).status();
                let _ = Command::new("userdel").arg(user).status();
            }
        }
    }
}

/// Generate an ed25519 keypair with ssh-keygen into a temp dir: returns (private key in
/// OpenSSH PEM text, public key line).
pub fn generate_keypair() -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("skein-keygen-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("keygen dir");
    let key = dir.join("key");
    keygen(&key, "skein-test");
    let private = fs::read_to_string(&key).expect("read private key");
    let public = fs::read_to_string(dir.join("key.pub")).expect("read public key").trim().to_string();
    let _ = fs::remove_dir_all(&dir);
    (private, public)
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen -f {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

/// Run `ip args`, panicking with its stderr if it fails.
pub(crate) fn ip(args: &[&str]) -> Output {
    let out = try_ip(args);
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

pub(crate) fn try_ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).stdin(Stdio::null()).output().expect("run ip (iproute2)")
}

fn claim_path(n: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{n}.lock"))
}

fn netns_exists(n: u32) -> bool {
    Path::new(&format!("/run/netns/skein-host-{n}")).exists()
}

fn link_exists(n: u32) -> bool {
    Path::new(&format!("/sys/class/net/skh{n}a")).exists()
}

pub(crate) fn try_lock(file: &File, blocking: bool) -> bool {
    let op = if blocking { LOCK_EX } else { LOCK_EX | LOCK_NB };
    loop {
        if unsafe { flock(file.as_raw_fd(), op) } == 0 {
            return true;
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return false,
            _ => panic!("flock: {err}"),
        }
    }
}

/// Run `f` under the machine-wide lock of test hosts, after reaping the
/// leftovers of dead processes.
pub(crate) fn with_global_lock<T>(f: impl FnOnce() -> T) -> T {
    fs::create_dir_all(STATE_DIR).unwrap_or_else(|e| panic!("create {STATE_DIR}: {e}"));
    let global = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(STATE_DIR).join("lock"))
        .expect("open global lock");
    try_lock(&global, true);
    reap_stale();
    let result = f();
    drop(global);
    result
}

/// Claim the first free host number: under the machine-wide lock, reap leftovers of dead processes,
/// then take the first `n` with no claim file, namespace or veth.
fn claim_number() -> (u32, File) {
    with_global_lock(claim_free_number)
}

fn claim_free_number() -> (u32, File) {
    for n in 0..MAX_HOSTS {
        if claim_path(n).exists() || netns_exists(n) || link_exists(n) {
            continue;
        }
        let mut file = OpenOptions::new().create_new(true).write(true).open(claim_path(n)).expect("create claim file");
        assert!(try_lock(&file, false), "claim file {n}.lock locked by someone else while we hold the global lock");
        write!(file, "{}", std::process::id()).expect("write claim file");
        return (n, file);
    }
    panic!("all {MAX_HOSTS} test host numbers are in use");
}

/// Who holds host `n`: `Some(pid)` for a live owner, `None` (holding the claim file locked,
/// if there is one) when nobody does. Only called under the global lock.
fn holder(n: u32) -> Result<u32, Option<File>> {
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(claim_path(n)) else {
        return Err(None);
    };
    if try_lock(&file, false) {
        return Err(Some(file));
    }
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    Ok(text.trim().parse().unwrap_or(0))
}

/// Remove what dead processes left behind: for every host number that shows up anywhere
/// (claim files, namespaces, veths, directories, sshd processes) and has no live owner,
/// kill its processes and remove its namespace, veth, directories and claim file. For a
/// live owner, only directories and sshds from other (dead) processes with the same `n`.
fn reap_stale() {
    crate::local_underlay::reap_stale();
    let mut numbers = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(STATE_DIR) {
        for entry in entries.flatten() {
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.strip_suffix(".lock")).and_then(|s| s.parse::<u32>().ok()) {
                numbers.insert(n);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.strip_prefix("skein-host-")).and_then(|s| s.parse::<u32>().ok()) {
                numbers.insert(n);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(n) = name.strip_prefix("skh").and_then(|s| s.strip_suffix('a')).and_then(|s| s.parse::<u32>().ok()) {
                numbers.insert(n);
            }
        }
    }
    let mut dirs: BTreeMap<u32, Vec<(u32, PathBuf)>> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if let Some((n, pid)) = parse_host_dir(&entry.path()) {
                dirs.entry(n).or_default().push((pid, entry.path()));
                numbers.insert(n);
            }
        }
    }
    let mut sshds: BTreeMap<u32, Vec<(u32, i32)>> = BTreeMap::new();
    for (proc_pid, config) in sshd_processes() {
        if let Some((n, owner)) = config.parent().and_then(parse_host_dir) {
            sshds.entry(n).or_default().push((owner, proc_pid));
            numbers.insert(n);
        }
    }

    for n in numbers {
        let owner = holder(n);
        let stale = |pid: u32| match &owner {
            Ok(live) => pid != *live,
            Err(_) => true,
        };
        for &(_, proc_pid) in sshds.get(&n).into_iter().flatten().filter(|(owner, _)| stale(*owner)) {
            unsafe { kill(proc_pid, SIGKILL) };
        }
        for (_, path) in dirs.get(&n).into_iter().flatten().filter(|(pid, _)| stale(*pid)) {
            let _ = fs::remove_dir_all(path);
        }
        if let Err(claim) = owner {
            eprintln!("skein test hosts: removing leftovers of host {n} (its process is gone)");
            kill_all_in_netns(&format!("skein-host-{n}"));
            remove_network(n);
            if claim.is_some() {
                let _ = fs::remove_file(claim_path(n));
            }
        }
    }
}

/// `<temp>/skein-host-{n}-{pid}` -> `(n, pid)`.
fn parse_host_dir(path: &Path) -> Option<(u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let (n, pid) = name.strip_prefix("skein-host-")?.split_once('-')?;
    Some((n.parse().ok()?, pid.parse().ok()?))
}

/// Every running `sshd ... -f <config>` on the machine: `(pid, config path)`. The
/// listener rewrites its command line into one string ("sshd: /usr/sbin/sshd -D -f
/// <config> ... [listener] ..."), so this splits on NULs and spaces alike.
fn sshd_processes() -> Vec<(i32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        if !words.first().is_some_and(|w| w.starts_with("sshd") || w.ends_with("/sshd")) {
            continue;
        }
        if let Some(i) = words.iter().position(|w| *w == "-f") {
            if let Some(config) = words.get(i + 1) {
                found.push((pid, PathBuf::from(config)));
            }
        }
    }
    found
}

/// SIGKILL any sshd still running with a config in `dir` (e.g. one whose namespace is gone).
fn kill_sshds_of(dir: &Path) {
    for (pid, config) in sshd_processes() {
        if config.parent() == Some(dir) {
            unsafe { kill(pid, SIGKILL) };
        }
    }
}

/// SIGKILL every process in namespace `ns` until none is left (at most ~5 s).
pub(crate) fn kill_all_in_netns(ns: &str) {
    if !Path::new("/run/netns").join(ns).exists() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let out = try_ip(&["netns", "pids", ns]);
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > until {
            eprintln!("skein test hosts: processes {pids:?} in {ns} survive SIGKILL");
            return;
        }
        for pid in pids {
            unsafe { kill(pid, SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Delete namespace `skein-host-{n}` and the veth pair `skh{n}a`/`skh{n}b`.
fn remove_network(n: u32) {
    if netns_exists(n) {
        let out = try_ip(&["netns", "del", &format!("skein-host-{n}")]);
        if !out.status.success() {
            eprintln!("skein test hosts: ip netns del skein-host-{n}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // The pair goes with the namespace, but asynchronously: delete it now so nobody sees it.
    if link_exists(n) {
        let _ = try_ip(&["link", "del", &format!("skh{n}a")]);
    }
}

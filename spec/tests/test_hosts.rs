//! The test-host harness itself: real sshd processes in their own network
//! namespaces, reachable only by their own address and key, killed,
//! restarted, re-keyed and removed without leftovers. Needs root.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skein_spec::local_host::{generate_keypair, LocalHost};

/// A private key on disk for the `ssh` client, removed when dropped.
struct KeyFile {
    dir: PathBuf,
    public: String,
}

impl KeyFile {
    fn new(name: &str) -> KeyFile {
        let (private, public) = generate_keypair();
        let dir = std::env::temp_dir().join(format!("skein-test-hosts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id_ed25519");
        std::fs::write(&path, private).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        KeyFile { dir, public }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// A known_hosts file that trusts exactly `host_key` for `host`.
    fn known_hosts(&self, host: &LocalHost, host_key: &str) -> PathBuf {
        let path = self.dir.join("known_hosts");
        std::fs::write(&path, format!("{} {host_key}\n", host.addr())).unwrap();
        path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ssh_command(host: &LocalHost, key: &Path, known_hosts: Option<&Path>, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-i").arg(key).args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-p"]);
    cmd.arg(host.port().to_string());
    match known_hosts {
        Some(file) => {
            cmd.args(["-o", "StrictHostKeyChecking=yes", "-o"]).arg(format!("UserKnownHostsFile={}", file.display()));
        }
        None => {
            cmd.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]);
        }
    }
    cmd.arg(format!("root@{}", host.addr())).arg(command).stdin(Stdio::null());
    cmd
}

fn ssh(host: &LocalHost, key: &Path, known_hosts: Option<&Path>, command: &str) -> Output {
    ssh_command(host, key, known_hosts, command).output().expect("run ssh")
}

fn assert_ssh_ok(host: &LocalHost, key: &Path, known_hosts: Option<&Path>) -> String {
    let out = ssh(host, key, known_hosts, "cat /proc/self/net/dev; echo ok");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "ssh to {} ({}) failed: {}\nstdout: {stdout}\nstderr: {}",
        host.addr(),
        host.netns(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `skh{n}b`, the interface inside the host's namespace.
fn inner_interface(host: &LocalHost) -> String {
    format!("skh{}b", host.netns().strip_prefix("skein-host-").unwrap())
}

fn netns_pids(host: &LocalHost) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", host.netns()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|status| !status.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
        .unwrap_or(false)
}

/// Wait until `ssh` has a remote `sleep` running on the host.
fn wait_for_remote_sleep(host: &LocalHost, client: &mut Child) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let sleeping = netns_pids(host).iter().any(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"));
        if sleeping {
            return;
        }
        assert!(client.try_wait().unwrap().is_none(), "ssh session ended early");
        assert!(Instant::now() < until, "remote sleep never started on {}", host.netns());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn netns_list() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).to_string()
}

#[test]
fn test_hosts_have_their_own_addresses_and_accept_the_key() {
    let key = KeyFile::new("addresses");
    let a = LocalHost::start(&key.public);
    let b = LocalHost::start(&key.public);
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.netns(), b.netns());
    assert_eq!((a.port(), b.port()), (22, 22));

    for (host, other) in [(&a, &b), (&b, &a)] {
        // ssh lands inside the host's namespace: it sees that host's interface, not the other's.
        let out = assert_ssh_ok(host, &key.path(), None);
        assert!(out.contains(&format!("{}:", inner_interface(host))), "{} sees its interface:\n{out}", host.netns());
        assert!(!out.contains(&format!("{}:", inner_interface(other))), "{} does not see {}'s:\n{out}", host.netns(), other.netns());

        let addrs = Command::new("ip").args(["netns", "exec", host.netns(), "ip", "-4", "addr"]).output().unwrap();
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(addrs.contains(&format!("inet {}/30", host.addr())), "{} has its address:\n{addrs}", host.netns());
        assert!(!addrs.contains(&format!("inet {}/", other.addr())), "{} lacks {}'s address:\n{addrs}", host.netns(), other.netns());
        assert!(addrs.contains("inet 127.0.0.1/8"), "lo is up in {}:\n{addrs}", host.netns());

        let root = host.root_dir();
        let meta = std::fs::metadata(root).unwrap();
        assert!(meta.is_dir());
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "{} is owned by root", root.display());
        assert!(host.host_public_key().starts_with("ssh-ed25519 AAAA"), "{}", host.host_public_key());
    }
    assert_ne!(a.host_public_key(), b.host_public_key(), "each host has its own host key");

    // A key that is not authorized is refused until it is.
    let other_key = KeyFile::new("addresses-other");
    let out = ssh(&a, &other_key.path(), None, "echo ok");
    assert!(!out.status.success(), "an unknown key is refused");
    a.authorize(&other_key.public);
    assert_ssh_ok(&a, &other_key.path(), None);
    assert!(!ssh(&b, &other_key.path(), None, "echo ok").status.success(), "authorizing on a does not authorize on b");
}

#[test]
fn a_killed_host_refuses_connections_until_restarted() {
    let key = KeyFile::new("killed");
    let mut host = LocalHost::start(&key.public);
    let host_key = host.host_public_key();
    let known = key.known_hosts(&host, &host_key);
    assert_ssh_ok(&host, &key.path(), Some(&known));

    let mut session = ssh_command(&host, &key.path(), Some(&known), "sleep 300").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_remote_sleep(&host, &mut session);

    host.kill_sshd();
    let target = SocketAddr::new(host.addr(), host.port());
    assert!(TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_err(), "nothing listens on {target} after kill_sshd");
    assert!(netns_pids(&host).is_empty(), "nothing runs in {} after kill_sshd", host.netns());
    let status = wait_exit(&mut session, Duration::from_secs(10));
    assert!(status.is_some_and(|s| !s.success()), "the established session died with the host: {status:?}");

    host.start_sshd();
    assert_eq!(host.host_public_key(), host_key, "same host key after a restart");
    assert_ssh_ok(&host, &key.path(), Some(&known));
}

#[test]
fn rotating_the_host_key_changes_it() {
    let key = KeyFile::new("rotate");
    let mut host = LocalHost::start(&key.public);
    let old = host.host_public_key();
    let known = key.known_hosts(&host, &old);
    assert_ssh_ok(&host, &key.path(), Some(&known));

    host.rotate_host_key();
    let new = host.host_public_key();
    assert_ne!(new, old);
    assert!(new.starts_with("ssh-ed25519 "), "{new}");

    let out = ssh(&host, &key.path(), Some(&known), "echo ok");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a client that knows the old key refuses the host");
    assert!(stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || stderr.contains("Host key verification failed"), "{stderr}");

    let known = key.known_hosts(&host, &new);
    assert_ssh_ok(&host, &key.path(), Some(&known));
}

#[test]
fn dropping_a_host_removes_its_namespace_processes_and_files() {
    let key = KeyFile::new("drop");
    let host = LocalHost::start(&key.public);
    let netns = host.netns().to_string();
    let dir = host.root_dir().parent().unwrap().to_path_buf();
    let config = dir.join("sshd_config");
    let outer = format!("skh{}a", netns.strip_prefix("skein-host-").unwrap());
    assert!(Path::new("/sys/class/net").join(&outer).exists(), "{outer} exists while the host lives");

    // A unix user a VM on this host would have (home under the host's root).
    let vm_user = format!("vmtest{}", std::process::id());
    let made = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir"])
        .arg(host.root_dir().join("vms").join(&vm_user))
        .arg(&vm_user)
        .status()
        .unwrap();
    assert!(made.success());

    let mut session = ssh_command(&host, &key.path(), None, "sleep 300").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_remote_sleep(&host, &mut session);
    let pids = netns_pids(&host);
    assert!(pids.len() >= 2, "sshd and the session run in the namespace: {pids:?}");
    let with_config = sshd_pids_with_config(&config);
    assert!(!with_config.is_empty(), "sshd runs with {}", config.display());

    drop(host);
    assert!(!Command::new("id").arg(&vm_user).output().unwrap().status.success(), "the VM user {vm_user} was removed with the host");

    assert!(!netns_list().lines().any(|l| l.split_whitespace().next() == Some(&netns)), "{netns} is gone:\n{}", netns_list());
    assert!(!Path::new("/run/netns").join(&netns).exists());
    assert!(!Path::new("/sys/class/net").join(&outer).exists(), "{outer} is gone");
    assert!(sshd_pids_with_config(&config).is_empty(), "no sshd with {} remains", config.display());
    let survivors: Vec<u32> = pids.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(survivors.is_empty(), "processes of {netns} survived: {survivors:?}");
    assert!(!dir.exists(), "{} is gone", dir.display());
    assert!(wait_exit(&mut session, Duration::from_secs(10)).is_some(), "the session died with the host");
}

/// Live processes whose command line mentions `config` (sshd -f <config>; the sshd
/// listener rewrites its command line into one string, so this is a substring match).
fn sshd_pids_with_config(config: &Path) -> Vec<u32> {
    let needle = config.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(&needle) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// From inside host `from`'s namespace, open TCP to `addr` port 9 (nothing
/// listens there): "refused" means the packet got there and back.
fn tcp_answer(from: &LocalHost, addr: std::net::Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", from.netns(), "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/9"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hosts_of_a_process_share_an_underlay_others_do_not_and_it_can_be_captured() {
    let (_, public) = generate_keypair();
    let a = LocalHost::start(&public);
    let b = LocalHost::start(&public);
    assert!(std::sync::Arc::ptr_eq(a.underlay(), b.underlay()), "one process, one underlay");
    assert_ne!(a.underlay_addr(), b.underlay_addr());
    let wire = a.underlay().netns().to_string();

    let capture = a.underlay().capture();
    assert!(tcp_answer(&a, b.underlay_addr()).contains("refused"), "a reaches b over the underlay");
    let pcap = capture.stop();
    assert!(pcap.windows(4).any(|w| w == b.underlay_addr().octets()), "the capture saw it ({} bytes)", pcap.len());

    // A host on an underlay of its own cannot reach them, nor they it.
    let alone = LocalHost::start_on(&public, skein_spec::local_host::Underlay::new());
    assert_ne!(alone.underlay().netns(), wire);
    assert!(!tcp_answer(&alone, a.underlay_addr()).contains("refused"), "another underlay is another wire");
    assert!(!tcp_answer(&a, alone.underlay_addr()).contains("refused"));
    let alone_wire = alone.underlay().netns().to_string();
    drop(alone);
    assert!(!Path::new("/run/netns").join(&alone_wire).exists(), "its underlay went with its last host");

    drop(a);
    assert!(Path::new("/run/netns").join(&wire).exists(), "b still uses the shared underlay");
    drop(b);
    assert!(!Path::new("/run/netns").join(&wire).exists(), "the last host takes the underlay with it");
}

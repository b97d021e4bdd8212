//! The host agent's `build-guest-image`: it builds the guest from Debian's
//! packages, the guest boots under qemu (TCG: KVM is not usable on the
//! development machines) and answers on SSH with the hostname and key given on
//! the kernel command line.
//!
//! The image is built into the shared cache under `target/guest-image-cache` (its SKEIN_ROOT), so it
//! is built once per machine: the builder exits at once when the image there
//! is complete, and serializes concurrent builds with a lock. Each boot runs
//! from a fresh temporary directory holding a copy-on-write overlay of the
//! base disk, the test's SSH key and the console log; qemu is killed and the
//! directory removed even if the test fails.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest wait for the console to say `skein-guest: ready` (TCG is slow,
/// and CI runs other tests alongside).
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Longest wait, after that, for a first successful SSH command.
const SSH_LIMIT: Duration = Duration::from_secs(60);

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("spec/ has a parent: the workspace")
}

fn script() -> PathBuf {
    workspace().join("progs/host-agent/bin/build-guest-image")
}

/// The SKEIN_ROOT the image is built (and cached) under: the one the host tests share.
fn cache_root() -> PathBuf {
    skein_spec::guest_image::cache_root()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Run build-guest-image with SKEIN_ROOT=`root`; fail the test if it fails.
fn build(root: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script())
        .env("SKEIN_ROOT", root)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run build-guest-image");
    let took = started.elapsed();
    assert!(out.status.success(), "build-guest-image failed:\n{}", show(&out));
    (out, took)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("skein-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// qemu, run under `timeout` so that it cannot outlive a test process that is
/// itself killed; stopped (TERM, which timeout passes on, then KILL) when
/// dropped, also when the test panics.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll qemu")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

fn ssh(key: &Path, port: u16, extra: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
        .args(extra)
        .arg("root@127.0.0.1")
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

#[test]
fn build_guest_image_produces_a_bootable_guest_reachable_over_ssh() {
    let root = cache_root();
    let (out, took) = build(&root);
    println!("build-guest-image took {took:.1?}:\n{}", text(&out.stdout));
    let image = root.join("images/guest");
    for file in ["vmlinuz", "initrd.img", "base.qcow2", "VERSION"] {
        assert!(image.join(file).is_file(), "{file} missing from {}", image.display());
    }

    let dir = TempDir::new("guest-boot");
    let key = dir.0.join("id_ed25519");
    run_ok(Command::new("ssh-keygen").args(["-t", "ed25519", "-N", "", "-q", "-C", "skein-test", "-f"]).arg(&key));
    let pubkey = fs::read_to_string(dir.0.join("id_ed25519.pub")).expect("read the public key");
    let b64 = run_ok(Command::new("base64").args(["-w0"]).arg(dir.0.join("id_ed25519.pub")));
    let b64 = text(&b64.stdout);
    let overlay = dir.0.join("overlay.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.join("base.qcow2"))
            .arg(&overlay),
    );
    let console = dir.0.join("console.log");
    let qemu_log = dir.0.join("qemu.log");
    let port = free_port();

    let started = Instant::now();
    let mut qemu = Qemu {
        child: Command::new("timeout")
            .args(["-k", "5", "600", "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-nographic", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 skein.hostname=guest-one skein.key={b64} skein.ip1=10.9.0.5/24"))
            .arg("-drive")
            .arg(format!("file={},if=virtio", overlay.display()))
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22")])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            // A second NIC, for skein.ip1 (a private subnet's; here isolated).
            .args(["-netdev", "user,id=n1,restrict=on", "-device", "virtio-net-pci,netdev=n1"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&qemu_log).expect("create qemu.log"))
            .stderr(Stdio::from(fs::File::create(dir.0.join("qemu.err")).expect("create qemu.err")))
            .spawn()
            .expect("start qemu-system-x86_64"),
    };
    let logs = |what: &str| {
        format!(
            "{what}\n--- console\n{}\n--- qemu stderr\n{}",
            fs::read_to_string(&console).unwrap_or_default(),
            fs::read_to_string(dir.0.join("qemu.err")).unwrap_or_default()
        )
    };

    // The console says ready once dropbear listens.
    loop {
        if fs::read_to_string(&console).unwrap_or_default().contains("skein-guest: ready") {
            break;
        }
        if let Some(status) = qemu.exited() {
            panic!("{}", logs(&format!("qemu exited ({status}) before the guest was ready")));
        }
        if started.elapsed() > READY_LIMIT {
            panic!("{}", logs(&format!("the guest was not ready after {READY_LIMIT:?}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = started.elapsed();

    // Then SSH, trusting the host key on first use...
    let insecure = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"];
    let command = "uname -a; hostname; ls /dev/vda; ip -o -4 addr show dev eth1";
    let out = loop {
        let out = ssh(&key, port, &insecure, command);
        if out.status.success() {
            break out;
        }
        if let Some(status) = qemu.exited() {
            panic!("{}", logs(&format!("qemu exited ({status}); last ssh attempt:\n{}", show(&out))));
        }
        if started.elapsed() > ready + SSH_LIMIT {
            panic!("{}", logs(&format!("no ssh {SSH_LIMIT:?} after ready; last attempt:\n{}", show(&out))));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let first_ssh = started.elapsed();
    println!("qemu start -> `skein-guest: ready` {ready:.1?}; -> first successful ssh {first_ssh:.1?}");
    let stdout = text(&out.stdout);
    println!("ssh said:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("Linux guest-one ")), "uname -a: {stdout}");
    assert!(lines.contains(&"guest-one"), "hostname: {stdout}");
    assert!(lines.contains(&"/dev/vda"), "/dev/vda: {stdout}");
    assert!(stdout.contains("eth1") && stdout.contains("inet 10.9.0.5/24"), "eth1 from skein.ip1: {stdout}");

    // ...and again with the host key the console printed, pinned: a host can
    // learn the guest's key from the console rather than trust on first use.
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    let host_key = console_text
        .lines()
        .find_map(|l| l.strip_prefix("skein-guest: host-key "))
        .unwrap_or_else(|| panic!("{}", logs("no `skein-guest: host-key` line on the console")))
        .trim()
        .to_owned();
    let known_hosts = dir.0.join("known_hosts");
    fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).expect("write known_hosts");
    let known = format!("UserKnownHostsFile={}", known_hosts.display());
    let pinned = ["-o", "StrictHostKeyChecking=yes", "-o", known.as_str()];
    let out = ssh(&key, port, &pinned, "cat /root/.ssh/authorized_keys");
    assert!(out.status.success(), "ssh with the console's host key pinned:\n{}", show(&out));
    assert_eq!(text(&out.stdout).trim(), pubkey.trim(), "authorized_keys holds the key from skein.key");

    // The base image is never written: the guest writes the overlay only.
    drop(qemu);
    let (out, _) = build(&root);
    assert!(text(&out.stdout).contains("nothing to do"), "the image still matches its VERSION:\n{}", show(&out));
}

#[test]
fn build_guest_image_is_idempotent() {
    let root = cache_root();
    build(&root);
    let image = root.join("images/guest");
    let version = fs::read_to_string(image.join("VERSION")).expect("read VERSION");
    let mtimes = |dir: &Path| -> Vec<SystemTime> {
        ["vmlinuz", "initrd.img", "base.qcow2", "VERSION"]
            .iter()
            .map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).expect("image file"))
            .collect()
    };
    let before = mtimes(&image);

    let (out, took) = build(&root);
    let stdout = text(&out.stdout);
    println!("second run took {took:.1?}: {stdout}");
    assert!(stdout.contains("is complete") && stdout.contains("nothing to do"), "{}", show(&out));
    assert!(!stdout.contains("building"), "a complete image must not be rebuilt:\n{}", show(&out));
    assert!(took < Duration::from_secs(10), "a complete image is recognized at once (took {took:?})");
    assert_eq!(fs::read_to_string(image.join("VERSION")).expect("read VERSION"), version, "VERSION unchanged");
    assert_eq!(mtimes(&image), before, "no image file was rewritten");
    // A build another test started may still be finishing: a run that finds
    // the image complete does not wait for it. Look once no build holds the lock.
    run_ok(Command::new("flock").arg(root.join("images/.build.lock")).arg("true"));
    let leftovers: Vec<String> = fs::read_dir(root.join("images"))
        .expect("read images/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("build.") || n.starts_with("guest.old."))
        .collect();
    assert!(leftovers.is_empty(), "build leftovers in images/: {leftovers:?}");

    // Usage errors: SKEIN_ROOT must be an absolute path.
    let out = Command::new("bash").arg(script()).env("SKEIN_ROOT", "relative/path").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "relative SKEIN_ROOT:\n{}", show(&out));
    assert!(text(&out.stderr).contains("absolute"), "{}", show(&out));
    let out = Command::new("bash").arg(script()).env_remove("SKEIN_ROOT").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "no SKEIN_ROOT:\n{}", show(&out));
}

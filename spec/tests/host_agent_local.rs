//! The host agent's programs (`progs/host-agent/bin`) run as local processes,
//! each test with its own fresh `SKEIN_ROOT`, as a host would run them for a
//! prog over SSH. No Postgres, no sshd: this is the agent's own contract.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("spec/ has a parent: the workspace")
}

fn script(name: &str) -> PathBuf {
    workspace().join("progs/host-agent/bin").join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Start time (field 22 of /proc/PID/stat) of a live process.
fn starttime(pid: &str) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(") ")? + 2..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

fn kill9(pid: &str) {
    let status = Command::new("kill").args(["-KILL", pid]).status().expect("run kill");
    assert!(status.success(), "kill -KILL {pid}");
}

/// A fresh agent root directory, removed (after killing whatever the
/// daemonizer still runs in it) when dropped.
struct Root {
    path: PathBuf,
}

impl Root {
    fn new(test: &str) -> Root {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("skein-host-agent-{test}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).expect("create the agent root");
        Root { path }
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script(program)).args(args).env("SKEIN_ROOT", &self.path).current_dir(&self.path);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).stdin(Stdio::null()).output().expect("run a host-agent program")
    }

    fn run_with_stdin(&self, program: &str, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a host-agent program");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait for a host-agent program");
        writer.join().expect("writer thread").expect("write stdin");
        out
    }

    fn daemonizer(&self, args: &[&str]) -> Output {
        self.run("daemonizer", args)
    }

    fn daemonizer_ok(&self, args: &[&str]) -> Output {
        let out = self.daemonizer(args);
        assert!(out.status.success(), "daemonizer {args:?} failed:\n{}", show(&out));
        out
    }

    fn check(&self, name: &str) -> String {
        let out = self.daemonizer(&["check", name]);
        assert!(out.status.success(), "check {name}:\n{}", show(&out));
        let stdout = text(&out.stdout);
        assert!(
            ["NotStarted\n", "InProgress\n", "Succeeded\n", "Failed\n"].contains(&stdout.as_str()),
            "check {name} must print exactly one state and a newline:\n{}",
            show(&out)
        );
        stdout.trim_end().to_owned()
    }

    fn logs(&self, name: &str) -> String {
        let out = self.daemonizer(&["logs", name]);
        text(&out.stdout) + &text(&out.stderr)
    }

    /// Poll until `name` is in state `want`; fail at once on any other
    /// finished state, and after `limit`.
    fn wait_for(&self, name: &str, want: &str, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let state = self.check(name);
            if state == want {
                return;
            }
            if state != "InProgress" {
                panic!("{name}: wanted {want}, got {state}\n{}", self.logs(name));
            }
            if Instant::now() > until {
                panic!("{name}: still InProgress after {limit:?}, wanted {want}\n{}", self.logs(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.path.join("daemonizer").join(name)
    }

    fn read(&self, name: &str, file: &str) -> String {
        let path = self.run_dir(name).join(file);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Names of the entries directly in `dir` under the root.
    fn entries(&self, dir: &str) -> BTreeSet<String> {
        match fs::read_dir(self.path.join(dir)) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => BTreeSet::new(),
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Kill what is still running (only if pid AND start time still match).
        if let Ok(runs) = fs::read_dir(self.path.join("daemonizer")) {
            for run in runs.flatten() {
                for (pid_file, start_file) in [("supervisor.pid", "supervisor.starttime"), ("pid", "pid.starttime")] {
                    let pid = fs::read_to_string(run.path().join(pid_file));
                    let start = fs::read_to_string(run.path().join(start_file));
                    if let (Ok(pid), Ok(start)) = (pid, start) {
                        let pid = pid.trim();
                        if starttime(pid).as_deref() == Some(start.trim()) {
                            let _ = Command::new("kill").args(["-KILL", pid]).status();
                        }
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

const STATE_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn daemonizer_reports_all_four_states() {
    let root = Root::new("four-states");
    assert_eq!(root.check("slow"), "NotStarted");

    let started = Instant::now();
    root.daemonizer_ok(&["run", "slow", "sleep", "2"]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "run must return without waiting for the command (took {:?})",
        started.elapsed()
    );
    assert_eq!(root.check("slow"), "InProgress");
    // Detached: the supervisor leads its own session (field 6 of its stat),
    // so the end of the caller's (SSH) session does not reach it.
    let supervisor = root.read("slow", "supervisor.pid").trim().to_owned();
    let stat = fs::read_to_string(format!("/proc/{supervisor}/stat")).expect("the supervisor is alive");
    let session = stat[stat.rfind(") ").unwrap() + 2..].split_whitespace().nth(3).unwrap().to_owned();
    assert_eq!(session, supervisor, "the supervisor runs in a session of its own");

    root.daemonizer_ok(&["run", "ok", "true"]);
    root.daemonizer_ok(&["run", "bad", "false"]);
    root.daemonizer_ok(&["run", "bad3", "sh", "-c", "exit 3"]);
    root.daemonizer_ok(&["run", "missing", "no-such-command-anywhere"]);
    root.wait_for("ok", "Succeeded", STATE_LIMIT);
    root.wait_for("bad", "Failed", STATE_LIMIT);
    root.wait_for("bad3", "Failed", STATE_LIMIT);
    root.wait_for("missing", "Failed", STATE_LIMIT);
    assert_eq!(root.read("ok", "exitcode"), "0\n");
    assert_eq!(root.read("bad", "exitcode"), "1\n");
    assert_eq!(root.read("bad3", "exitcode"), "3\n");
    assert_eq!(root.read("missing", "exitcode"), "127\n");

    root.wait_for("slow", "Succeeded", STATE_LIMIT);
    assert_eq!(root.check("slow"), "Succeeded", "a finished state is stable");
    // The exit code was written atomically: no temp files left behind.
    for name in ["slow", "ok", "bad"] {
        let leftovers: Vec<_> = root.entries(&format!("daemonizer/{name}")).into_iter().filter(|e| e.contains(".tmp")).collect();
        assert!(leftovers.is_empty(), "{name}: temp files left: {leftovers:?}");
    }
}

#[test]
fn daemonizer_run_is_idempotent() {
    let root = Root::new("idempotent");
    let lines = root.path.join("lines");
    let lines_arg = lines.to_str().unwrap();
    let cmd = ["sh", "-c", "echo ran >> \"$1\"; sleep 1", "sh", lines_arg];
    let run = |name: &str| {
        let mut args = vec!["run", name];
        args.extend_from_slice(&cmd);
        root.daemonizer_ok(&args);
    };
    let count = |path: &Path| fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0);

    run("once");
    run("once");
    root.wait_for("once", "Succeeded", STATE_LIMIT);
    assert_eq!(count(&lines), 1, "a second run while InProgress must not start it again");

    run("once");
    assert_eq!(root.check("once"), "Succeeded");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&lines), 1, "a run after Succeeded must not start it again");

    // Several runs racing each other start it once (the per-NAME lock).
    let raced = root.path.join("raced");
    let raced_arg = raced.to_str().unwrap();
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                root.daemonizer_ok(&["run", "raced", "sh", "-c", "echo ran >> \"$1\"; sleep 1", "sh", raced_arg]);
            });
        }
    });
    root.wait_for("raced", "Succeeded", STATE_LIMIT);
    assert_eq!(count(&raced), 1, "concurrent runs must start the command exactly once");
}

#[test]
fn daemonizer_clean_is_refused_while_in_progress_and_forgets_a_finished_run() {
    let root = Root::new("clean");
    root.daemonizer_ok(&["run", "c", "sh", "-c", "echo first; sleep 1"]);
    assert_eq!(root.check("c"), "InProgress");

    let refused = root.daemonizer(&["clean", "c"]);
    assert_eq!(refused.status.code(), Some(1), "clean while InProgress:\n{}", show(&refused));
    assert!(text(&refused.stderr).contains("InProgress"), "the refusal says why:\n{}", show(&refused));
    assert_eq!(root.check("c"), "InProgress", "a refused clean changes nothing");

    root.wait_for("c", "Succeeded", STATE_LIMIT);
    assert!(root.read("c", "stdout").contains("first"));
    root.daemonizer_ok(&["clean", "c"]);
    assert_eq!(root.check("c"), "NotStarted");
    assert!(!root.run_dir("c").exists(), "clean removes the run's directory");
    assert_eq!(root.entries("daemonizer/.locks"), BTreeSet::new(), "clean leaves no lock file behind");

    // Cleaning what is not there is a no-op.
    root.daemonizer_ok(&["clean", "c"]);
    root.daemonizer_ok(&["clean", "never-ran"]);
    assert_eq!(root.check("never-ran"), "NotStarted");

    // After a clean, the next run starts afresh.
    root.daemonizer_ok(&["run", "c", "sh", "-c", "echo second"]);
    root.wait_for("c", "Succeeded", STATE_LIMIT);
    let stdout = root.read("c", "stdout");
    assert!(stdout.contains("second") && !stdout.contains("first"), "a fresh run after clean: {stdout:?}");

    // A Failed run is finished too: it can be cleaned.
    root.daemonizer_ok(&["run", "f", "false"]);
    root.wait_for("f", "Failed", STATE_LIMIT);
    root.daemonizer_ok(&["clean", "f"]);
    assert_eq!(root.check("f"), "NotStarted");
}

#[test]
fn daemonizer_reports_a_killed_command_as_failed() {
    let root = Root::new("killed");

    // The command is killed: its supervisor records the signal's status.
    root.daemonizer_ok(&["run", "k", "sleep", "30"]);
    let pid = root.read("k", "pid").trim().to_owned();
    assert!(starttime(&pid).is_some(), "the pid file names a live process: {pid}");
    assert_eq!(root.check("k"), "InProgress");
    kill9(&pid);
    root.wait_for("k", "Failed", STATE_LIMIT);
    assert_eq!(root.read("k", "exitcode"), "137\n", "128 + SIGKILL");

    // Supervisor and command both die (a crash, a reboot): no exit code is
    // ever written, and that is Failed too, not InProgress forever.
    root.daemonizer_ok(&["run", "crash", "sleep", "30"]);
    let supervisor = root.read("crash", "supervisor.pid").trim().to_owned();
    let pid = root.read("crash", "pid").trim().to_owned();
    assert_eq!(root.check("crash"), "InProgress");
    kill9(&supervisor);
    assert_eq!(root.check("crash"), "InProgress", "the command still runs without its supervisor");
    kill9(&pid);
    root.wait_for("crash", "Failed", STATE_LIMIT);
    assert!(!root.run_dir("crash").join("exitcode").exists());

    // A pid reused by another process (here: this test) does not make it
    // look alive: the recorded start time does not match.
    let me = std::process::id().to_string();
    fs::write(root.run_dir("crash").join("pid"), format!("{me}\n")).unwrap();
    fs::write(root.run_dir("crash").join("supervisor.pid"), format!("{me}\n")).unwrap();
    assert_eq!(root.check("crash"), "Failed");

    // A zombie (exited, never reaped: a host whose init does not reap) is
    // not alive either, though its pid and start time still match.
    let mut child = Command::new("true").spawn().unwrap();
    let zombie = child.id().to_string();
    let until = Instant::now() + STATE_LIMIT;
    while !fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap().contains(") Z ") {
        assert!(Instant::now() < until, "the child never became a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    let zombie_start = starttime(&zombie).expect("a zombie has a stat");
    for (pid_file, start_file) in [("pid", "pid.starttime"), ("supervisor.pid", "supervisor.starttime")] {
        fs::write(root.run_dir("crash").join(pid_file), format!("{zombie}\n")).unwrap();
        fs::write(root.run_dir("crash").join(start_file), format!("{zombie_start}\n")).unwrap();
    }
    assert_eq!(root.check("crash"), "Failed", "a zombie counts as gone");
    child.wait().unwrap();

    // Failed runs again (a retry), keeping the failed attempt's output.
    root.daemonizer_ok(&["run", "crash", "sh", "-c", "echo retried"]);
    root.wait_for("crash", "Succeeded", STATE_LIMIT);
    assert!(root.read("crash", "stdout").contains("retried"));
    assert!(root.run_dir("crash").join("previous").is_dir(), "the failed attempt is kept in previous/");
}

#[test]
fn daemonizer_passes_stdin_to_the_command() {
    let root = Root::new("stdin");
    let out = root.run_with_stdin("daemonizer", &["run", "n", "cat"], b"hello\n");
    assert!(out.status.success(), "{}", show(&out));
    root.wait_for("n", "Succeeded", STATE_LIMIT);
    assert!(root.read("n", "stdout").contains("hello"));
    assert_eq!(root.read("n", "stdin"), "hello\n");

    let logs = root.daemonizer_ok(&["logs", "n"]);
    let logs = text(&logs.stdout);
    assert!(logs.contains("stdout") && logs.contains("stderr") && logs.contains("hello"), "logs:\n{logs}");

    // Bytes pass through unchanged, and more than a pipe buffer of them.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = root.run_with_stdin("daemonizer", &["run", "big", "cat"], &input);
    assert!(out.status.success(), "{}", show(&out));
    root.wait_for("big", "Succeeded", STATE_LIMIT);
    assert!(fs::read(root.run_dir("big").join("stdout")).unwrap() == input, "stdout differs from stdin");

    // Without input, the command reads an empty stdin (it does not hang).
    root.daemonizer_ok(&["run", "empty", "cat"]);
    root.wait_for("empty", "Succeeded", STATE_LIMIT);
    assert_eq!(root.read("empty", "stdout"), "");
}

#[test]
fn daemonizer_rejects_hostile_names() {
    let root = Root::new("hostile");
    let marker = root.path.join("marker");
    let marker_arg = marker.to_str().unwrap();
    let long = "a".repeat(101);
    let hostile = [
        "../x", "a b", "x;rm -rf /", "$(id)", "`id`", "", ".", "..", ".hidden", "a/b", "-rf", "x\n", "\nx", "x'y", "é",
        "a\u{0}b", &long,
    ];
    for name in hostile {
        if name.contains('\0') {
            continue; // cannot even be passed as an argument
        }
        let out = root.daemonizer(&["run", name, "sh", "-c", "touch \"$1\"", "sh", marker_arg]);
        assert_eq!(out.status.code(), Some(2), "run {name:?}:\n{}", show(&out));
        assert!(text(&out.stderr).contains("invalid NAME"), "run {name:?} says why:\n{}", show(&out));
        for sub in ["check", "clean", "logs"] {
            let out = root.daemonizer(&[sub, name]);
            assert_eq!(out.status.code(), Some(2), "{sub} {name:?}:\n{}", show(&out));
            assert!(out.stdout.is_empty(), "{sub} {name:?} prints nothing on stdout:\n{}", show(&out));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "no command ran");
    let entries = root.entries("");
    assert!(entries.iter().all(|e| e == "daemonizer"), "nothing created in the root but daemonizer/: {entries:?}");
    let runs: Vec<_> = root.entries("daemonizer").into_iter().filter(|e| !e.starts_with('.')).collect();
    assert!(runs.is_empty(), "no run directories: {runs:?}");

    // The longest and the oddest valid names are accepted.
    for name in ["a".repeat(100), "vm-1.boot_2".to_owned(), "9".to_owned()] {
        assert_eq!(root.check(&name), "NotStarted");
    }
}

fn learn(root: &Root, what: &str) -> Value {
    let out = root.run("learn", &[what]);
    assert!(out.status.success(), "learn {what}:\n{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with('\n') && stdout.lines().count() == 1, "learn {what} prints one line:\n{}", show(&out));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("learn {what} printed no JSON ({e}):\n{}", show(&out)))
}

fn machine(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("run a machine tool");
    assert!(out.status.success(), "{program}:\n{}", show(&out));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn learn_reports_what_the_machine_reports() {
    let root = Root::new("learn");

    let cpu = learn(&root, "cpu");
    let nproc: u64 = machine("nproc", &[]).parse().unwrap();
    assert_eq!(cpu["cpus"].as_u64(), Some(nproc), "{cpu}");
    for key in ["cores", "sockets", "threads_per_core"] {
        assert!(cpu[key].as_u64().is_some_and(|n| n >= 1), "{key}: {cpu}");
    }
    assert!(cpu["cores"].as_u64() >= cpu["sockets"].as_u64(), "{cpu}");
    assert!(cpu["model"].as_str().is_some_and(|m| !m.is_empty()), "{cpu}");

    let memory = learn(&root, "memory");
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    let total = memory["total_mib"].as_u64().expect("total_mib");
    assert!(total.abs_diff(mem_total_kib / 1024) <= 1, "{memory} vs MemTotal {mem_total_kib} KiB");
    assert!(memory["available_mib"].as_u64().is_some_and(|a| a <= total), "{memory}");

    let storage = learn(&root, "storage");
    assert!(storage["free_mib"].as_u64().is_some_and(|f| f > 0), "{storage}");
    assert!(storage["total_mib"].as_u64() >= storage["free_mib"].as_u64(), "{storage}");
    assert_eq!(storage["path"].as_str(), root.path.to_str(), "{storage}");

    let os = learn(&root, "os");
    let release = fs::read_to_string("/etc/os-release").unwrap();
    let id = release.lines().find_map(|l| l.strip_prefix("ID=")).expect("ID in /etc/os-release").trim_matches('"');
    assert_eq!(os["id"].as_str(), Some(id), "{os}");
    assert_eq!(os["kernel"].as_str(), Some(machine("uname", &["-r"]).as_str()), "{os}");
    assert_eq!(os["arch"].as_str(), Some(machine("uname", &["-m"]).as_str()), "{os}");
    assert!(os["pretty_name"].is_string() && os["version_id"].is_string(), "{os}");

    let kvm = learn(&root, "kvm");
    assert!(kvm["usable"].is_boolean() && kvm["device"].is_boolean(), "{kvm}");
    assert!(kvm["reason"].is_string(), "{kvm}");
    if kvm["device"] == false {
        assert_eq!(kvm["usable"], false, "no device, not usable: {kvm}");
    }

    // learn wrote nothing but (at most) its scratch directory in the root.
    let entries = root.entries("");
    assert!(entries.iter().all(|e| e == "learn"), "{entries:?}");
}

/// The KVM probe believes only a guest that ran: qemu is faked here (the
/// machine may not have it, and a real probe may take seconds).
#[test]
fn learn_kvm_believes_only_a_probe_guest_that_ran() {
    let root = Root::new("kvm-probe");
    let kvm_open = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let fake = |dir: &str, body: &str| -> Value {
        let bin = root.path.join(dir);
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("qemu-system-x86_64"), format!("#!/bin/sh\n{body}\n")).unwrap();
        let status = Command::new("chmod").arg("+x").arg(bin.join("qemu-system-x86_64")).status().unwrap();
        assert!(status.success());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = root.command("learn", &["kvm"]).env("PATH", path).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{}", show(&out)))
    };

    // The probe guest writes to isa-debug-exit, so qemu exits with 85.
    let ran = fake("ran", "exit 85");
    let broken = fake("broken", "echo 'Could not access KVM kernel module: \"odd\"' >&2; exit 1");
    if !Path::new("/dev/kvm").exists() {
        assert_eq!(ran["device"], false, "{ran}");
        assert_eq!(ran["usable"], false, "{ran}");
        return;
    }
    if kvm_open {
        assert_eq!(ran["usable"], true, "{ran}");
        assert_eq!(broken["usable"], false, "{broken}");
        let reason = broken["reason"].as_str().unwrap();
        assert!(reason.contains("Could not access KVM kernel module: \"odd\""), "qemu's complaint is the reason: {broken}");
    } else {
        assert_eq!(ran["usable"], false, "{ran}");
    }
    assert!(!root.path.join("learn").exists() || root.entries("learn").is_empty(), "the probe image is removed");
}

#[test]
fn boot_id_and_agent_version_report_the_host() {
    let root = Root::new("ids");
    let out = root.run("boot-id", &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout), fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap());

    let out = root.run("agent-version", &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout), "none\n");
    fs::create_dir(root.path.join("agent")).unwrap();
    fs::write(root.path.join("agent/VERSION"), "0.1.0-abc123\n").unwrap();
    let out = root.run("agent-version", &[]);
    assert_eq!(text(&out.stdout), "0.1.0-abc123\n", "{}", show(&out));
}

#[test]
fn scripts_refuse_to_run_without_a_root() {
    let cwd = Root::new("no-root");
    let marker = cwd.path.join("marker");
    let marker_arg = marker.to_str().unwrap();
    let calls: [(&str, Vec<&str>); 8] = [
        ("daemonizer", vec!["run", "x", "sh", "-c", "touch \"$1\"", "sh", marker_arg]),
        ("daemonizer", vec!["check", "x"]),
        ("daemonizer", vec!["clean", "x"]),
        ("daemonizer", vec!["logs", "x"]),
        ("learn", vec!["cpu"]),
        ("learn", vec!["storage"]),
        ("boot-id", vec![]),
        ("agent-version", vec![]),
    ];
    for (program, args) in &calls {
        for root in [None, Some(""), Some("relative/root"), Some("/no/such/skein/root")] {
            let mut cmd = Command::new("bash");
            cmd.arg(script(program)).args(args).current_dir(&cwd.path).stdin(Stdio::null());
            match root {
                None => cmd.env_remove("SKEIN_ROOT"),
                Some(root) => cmd.env("SKEIN_ROOT", root),
            };
            let out = cmd.output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{program} {args:?} with SKEIN_ROOT={root:?}:\n{}", show(&out));
            assert!(text(&out.stderr).contains("SKEIN_ROOT"), "{program} says why:\n{}", show(&out));
            assert!(out.stdout.is_empty(), "{program} prints nothing on stdout:\n{}", show(&out));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(cwd.entries("").is_empty(), "nothing written anywhere: {:?}", cwd.entries(""));
}

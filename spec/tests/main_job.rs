//! The README's main command: `skein up` runs the control plane and its demo.

use std::process::Command;

use skein_engine::testing::TestDb;

#[tokio::test]
async fn skein_up_runs_the_demo_census_to_its_end() {
    let db = TestDb::new().await;
    let out = Command::new(skein_spec::binary("skein"))
        .args(["up", "--exit-after-demo", "--database-url", &db.url(), "--api-addr", "127.0.0.1:0"])
        .output()
        .expect("run skein up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "skein up failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "api: listening on http://127.0.0.1:",
        "Demo::Census   Start   hop -> Tally  (budded 3)",
        "Demo::Doubler  Start   pop {\"value\":32} -> Demo::Census at Double",
        "demo: done (the census exited with {\"doubled\":32,\"total\":16})",
        // The VM part: two local hosts prepared by their strands, a private
        // subnet, a VM on each host, traffic between them through the tunnel.
        "vm demo: private subnet net-",
        // Reached where the VM says its SSH answers, as its owner would.
        "(or: skein vm ssh vm",
        ", 0% packet loss",
        "vm demo: ssh into 10.77.0.3 through the first vm lands in: vm",
        "vm demo: done: nothing of the vms, their subnet or the local hosts is left on this machine",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches(" accepting VMs: ").count(), 2, "two hosts were prepared:\n{stdout}");
    let placed = stdout.split("both vms running after ").nth(1).expect("both vms ran").lines().next().unwrap().to_string();
    let hosts: Vec<&str> = placed.split(" on host ").skip(1).map(|rest| rest.split([' ', ';']).next().unwrap()).collect();
    assert!(hosts.len() == 2 && hosts[0] != hosts[1], "the two vms were placed on two hosts: {placed}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM strand").fetch_one(&db.pool).await.unwrap();
    assert_eq!(left, 0, "every demo strand finished and left the hot table");
}

#[test]
fn skein_help_is_true_to_its_commands() {
    let out = Command::new(skein_spec::binary("skein")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["up", "db", "console", "strand", "page", "host", "vm", "ubid", "audit"] {
        assert!(help.contains(&format!("  {cmd} ")), "--help lacks {cmd}:\n{help}");
        let sub = Command::new(skein_spec::binary("skein")).args([cmd, "--help"]).output().unwrap();
        assert!(sub.status.success() && !sub.stdout.is_empty(), "skein {cmd} --help: {}", String::from_utf8_lossy(&sub.stderr));
    }
    for (cmd, verbs) in [("strand", &["list", "counts", "show", "incr", "decr", "wake", "reschedule", "step", "retry", "destroy"][..]), ("page", &["list", "show", "resolve"]), ("host", &["add", "list", "show", "drain", "destroy"]), ("vm", &["create", "list", "show", "stop", "start", "restart", "destroy", "console"]), ("project", &["create", "list", "set-quota", "delete"]), ("token", &["create", "list", "revoke"])] {
        let help = Command::new(skein_spec::binary("skein")).args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for verb in verbs {
            assert!(help.contains(&format!("  {verb} ")), "skein {cmd} --help lacks {verb}:\n{help}");
        }
    }
    let out = Command::new(skein_spec::binary("respirate")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--database-url") && help.contains("--concurrency"), "{help}");
}

#[tokio::test]
async fn skein_host_add_refuses_bad_input_clearly_and_writes_nothing() {
    let db = TestDb::new().await;
    let key = std::env::temp_dir().join(format!("skein-cli-key-{}", std::process::id()));
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nnot really a key, never used\n-----END OPENSSH PRIVATE KEY-----\n").unwrap();
    let not_a_key = std::env::temp_dir().join(format!("skein-cli-not-a-key-{}", std::process::id()));
    std::fs::write(&not_a_key, "hello").unwrap();
    let not_a_key_arg = not_a_key.display().to_string();
    let key_arg = key.display().to_string();
    let secret = "11".repeat(32);
    let run = |args: &[&str]| {
        Command::new(skein_spec::binary("skein"))
            .args(["host", "add", "--database-url", &db.url(), "--yes"])
            .args(args)
            .env("SKEIN_SECRET_KEY", &secret)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    for (args, message) in [
        (vec!["--name", "Bad Name;rm -rf /", "--address", "192.0.2.1", "--key-file", &key_arg], "--name must be 1-63 lowercase letters"),
        (vec!["--name", "ok", "--address", "192.0.2.1", "--key-file", "/nonexistent/key"], "reading /nonexistent/key"),
        (vec!["--name", "ok", "--address", "192.0.2.1", "--key-file", &key_arg, "--root-dir", "relative/dir"], "--root-dir must be an absolute path"),
        (vec!["--name", "ok", "--address", "192.0.2.1", "--key-file", &key_arg, "--user", "root;id"], "--user must be a plain unix user name"),
        (vec!["--name", "ok", "--address", "192.0.2.1", "--key-file", &not_a_key_arg], "--key-file must be a PEM or OpenSSH private key"),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace") && !stderr.contains("at ./"), "no stack trace for people: {stderr}");
    }
    let written: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM sshable) + (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM strand)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(written, 0, "a refused add leaves no half-written rows");

    let out = run(&["--name", "good-host", "--address", "192.0.2.1", "--key-file", &key_arg, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["name"], "good-host");
    assert!(line["id"].as_str().unwrap().starts_with("vh"));
    std::fs::remove_file(key).unwrap();
    std::fs::remove_file(not_a_key).unwrap();
}

/// `skein api` on its own: it serves over real HTTP, answers the document
/// without a token and anything else only with one, and stops on SIGTERM.
#[tokio::test]
async fn skein_api_serves_over_http_and_stops_on_sigterm() {
    use std::io::{Read, Write};
    let db = TestDb::new().await;
    let port = skein_spec::procs::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut api = skein_spec::procs::Proc::start("skein", &["api", "--listen", &listen, "--database-url", &db.url()]);
    let get = |path: &str| -> Option<String> {
        let mut conn = std::net::TcpStream::connect(&listen).ok()?;
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let doc = loop {
        if let Some(reply) = get("/openapi.json") {
            break reply;
        }
        assert!(std::time::Instant::now() < until, "skein api never listened:\n{}", api.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(doc.starts_with("HTTP/1.1 200") && doc.contains("\"openapi\""), "{doc}");
    let anonymous = get("/v1/vms").unwrap();
    assert!(anonymous.starts_with("HTTP/1.1 401") && anonymous.contains("\"code\":\"unauthenticated\""), "{anonymous}");
    api.signal("TERM");
    let status = api.wait_for(std::time::Duration::from_secs(10)).expect("skein api stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", api.log_text());
}

/// The API scenario of `skein bench` creates through the router and
/// straight through `vm::create`, reports both, and leaves nothing behind.
#[tokio::test]
async fn bench_api_create_reports_both_paths_and_cleans_up() {
    let db = TestDb::new().await;
    let out = Command::new(skein_spec::binary("skein"))
        .args(["bench", "--scenario", "api-create", "--strands", "60", "--connections", "4", "--baseline-secs", "0.2", "--json"])
        .args(["--database-url", &db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["creates"], 60);
    for key in ["api_creates_per_s", "direct_creates_per_s", "api_over_direct", "ratio", "p50_ms"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {line}");
    }
    let left: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM vm) + (SELECT count(*) FROM strand) + (SELECT count(*) FROM project) + (SELECT count(*) FROM api_token) + (SELECT count(*) FROM event)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the bench removes what it made");
}

/// `skein up` started as a test would a daemon: stdout to a file, read as it grows.
struct Up {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Up {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Up {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = std::env::temp_dir().join(format!("skein-spec-up-{}-{n}.out", std::process::id()));
        let child = Command::new(skein_spec::binary("skein"))
            .arg("up")
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .spawn()
            .expect("start skein up");
        Up { child, out }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_for_line(&mut self, line: &str, limit: std::time::Duration) -> String {
        let until = std::time::Instant::now() + limit;
        loop {
            let text = self.stdout();
            if text.contains(line) {
                return text;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(exited.is_none() && std::time::Instant::now() < until, "no {line:?} (exit {exited:?}) in:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(self.out.with_extension("err"));
    }
}

/// The README's main command keeps serving after its demo, until SIGTERM.
#[tokio::test]
async fn skein_up_keeps_serving_after_its_demo_until_sigterm() {
    use std::io::{Read, Write};
    let db = TestDb::new().await;
    let listen = format!("127.0.0.1:{}", skein_spec::procs::free_port());
    let mut up = Up::start(&["--no-vm-demo", "--database-url", &db.url(), "--api-addr", &listen], &[]);
    let text = up.wait_for_line("control plane: still serving", std::time::Duration::from_secs(60));
    assert!(text.contains("demo: done"), "{text}");
    // Well after the demo: still running, and the API still answers.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(up.child.try_wait().unwrap().is_none(), "skein up exited after its demo:\n{}", up.stdout());
    let mut conn = std::net::TcpStream::connect(&listen).expect("the API still listens");
    write!(conn, "GET /openapi.json HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A census started now is still run by its workers.
    let id = skein_engine::enqueue::start(
        &mut db.pool.acquire().await.unwrap(),
        skein_progs::demo::census::Frame { districts: vec![2], ..Default::default() },
        skein_progs::demo::census::Label::Start,
    )
    .await
    .unwrap();
    up.wait_for_line(&format!("{id}  Demo::Census   Start"), std::time::Duration::from_secs(30));
    let status = Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < until, "skein up did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

/// The VM demo runs again and again on one cluster (fresh names each run),
/// and a demo that fails removes what it made: the host row is destroyed,
/// the local sshd, its namespace and files and the key file are gone.
#[tokio::test]
async fn skein_up_vm_demo_runs_twice_on_one_cluster_and_a_failed_one_cleans_up() {
    let db = TestDb::new().await;
    // A home of its own (the key files land there), sharing the guest image cache.
    let home = std::env::temp_dir().join(format!("skein-spec-up-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let shared = std::path::PathBuf::from(std::env::var("SKEIN_HOME").unwrap_or_else(|_| "/var/tmp/skein-0".into())).join("guest-image");
    std::fs::create_dir_all(&shared).unwrap();
    let _ = std::os::unix::fs::symlink(&shared, home.join("guest-image"));
    let home_env = home.display().to_string();
    let run = |extra: &[&str]| {
        Command::new(skein_spec::binary("skein"))
            .args(["up", "--exit-after-demo", "--no-api", "--database-url", &db.url()])
            .args(extra)
            .env("SKEIN_HOME", &home_env)
            .output()
            .expect("run skein up")
    };
    for round in 1..=2 {
        let out = run(&[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "round {round}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("vm demo: ssh into 10.77.0.3 through the first vm lands in: vm"), "round {round}:\n{stdout}");
    }
    let vms: Vec<(String, String)> = sqlx::query_as("SELECT name, state FROM vm ORDER BY created_at").fetch_all(&db.pool).await.unwrap();
    assert_eq!(vms.len(), 4, "two runs of two vms");
    let names: std::collections::HashSet<&str> = vms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 4, "each run names its VMs afresh: {vms:?}");
    assert!(vms.iter().all(|(_, s)| s == "destroyed"), "{vms:?}");

    // Now make it fail after its host is ready: the demo project has no room.
    sqlx::query("UPDATE project SET vm_quota = 0 WHERE name = 'demo'").execute(&db.pool).await.unwrap();
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "a failed demo exits non-zero:\n{stdout}");
    assert!(stdout.contains(" accepting VMs: ") && stdout.contains("vm demo: failed:") && stdout.contains("removing what it made"), "{stdout}");
    let hosts: Vec<(String, String)> = sqlx::query_as("SELECT name, state FROM vm_host").fetch_all(&db.pool).await.unwrap();
    assert_eq!(hosts.len(), 6, "three runs of two hosts");
    assert!(hosts.iter().all(|(_, s)| s == "destroyed"), "no host left accepting: {hosts:?}");
    let all_files: Vec<&str> = stdout.split("its files under ").skip(1).filter_map(|rest| rest.split(')').next()).collect();
    assert_eq!(all_files.len(), 2, "the third run's two host directories: {stdout}");
    for files in all_files {
        assert!(!std::path::Path::new(files).exists(), "{files} is removed");
        let dir = std::path::Path::new(files).parent().unwrap().display().to_string();
        let procs = Command::new("pgrep").args(["-f", &dir]).output().unwrap();
        assert!(procs.stdout.is_empty(), "no sshd of {dir} is left: {}", String::from_utf8_lossy(&procs.stdout));
    }
    let keys: Vec<_> = std::fs::read_dir(&home).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("demo-vm-key")).collect();
    assert!(keys.is_empty(), "no key file is left: {keys:?}");
    let _ = std::fs::remove_dir_all(&home);
}

/// Ctrl-C (here SIGTERM) while the VM demo runs: the demo stops and
/// removes what it made (its host destroyed by its strand, the local sshd
/// and its files gone) before `skein up` exits.
#[tokio::test]
async fn a_signal_during_the_vm_demo_removes_what_it_made_before_stopping() {
    let db = TestDb::new().await;
    let mut up = Up::start(&["--no-api", "--database-url", &db.url()], &[]);
    let text = up.wait_for_line("learns the machine", std::time::Duration::from_secs(120));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let all_files: Vec<String> = text.split("its files under ").skip(1).filter_map(|rest| rest.split(')').next()).map(String::from).collect();
    assert_eq!(all_files.len(), 2, "two local hosts: {text}");
    assert!(all_files.iter().all(|f| std::path::Path::new(f).exists()));
    assert!(Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap().success());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let exit = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < until, "skein up never stopped:\n{}", up.stdout());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = up.stdout();
    assert!(exit.success(), "{exit:?}\n{out}");
    for line in ["stopping: the demo first removes what it made", "vm demo: failed: interrupted", "removing what it made"] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let hosts: Vec<String> = sqlx::query_scalar("SELECT state FROM vm_host").fetch_all(&db.pool).await.unwrap();
    assert!(!hosts.is_empty() && hosts.iter().all(|s| s == "destroyed"), "no host is left looking usable: {hosts:?}");
    for files in &all_files {
        assert!(!std::path::Path::new(files).exists(), "{files} is removed");
    }
}

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
        // The VM part: a local host prepared by its strand, a VM on it, a command inside the guest.
        "vm demo: host accepting VMs",
        "vm demo: inside the guest, `uname -a` says: Linux vm",
        "vm demo: done: nothing of the vm or the local host is left on this machine",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
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
    for (cmd, verbs) in [("strand", &["list", "counts", "show", "incr", "decr", "wake", "reschedule", "step", "retry", "destroy"][..]), ("page", &["list", "show", "resolve"]), ("host", &["add", "list", "show"]), ("vm", &["create", "list", "show"])] {
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

//! Where a VM's SSH answers, as its owner is told (issue 11, item 3): the
//! API (`GET /v1/vms/{id}`, the list, `/progress`), `skein vm show` and
//! `skein vm ssh`. The endpoint is written by `Vm::Nexus` through the model
//! functions used here (`vm::set_state`, `vm::set_ssh`); that a real boot
//! writes it is tested in spec/tests/vms.rs.

use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use skein_engine::testing::TestDb;
use skein_models::{vm, Ubid};
use skein_spec::api::{vm_body, Api};

async fn setup() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

fn uuid(id: &str) -> uuid::Uuid {
    id.parse::<Ubid>().unwrap().uuid()
}

/// What `Vm::Nexus` writes when the VM's host says its SSH answers.
async fn boots(api: &Api, id: &str, host: &str, port: i32) {
    let mut conn = api.pool.acquire().await.unwrap();
    vm::set_state(&mut conn, uuid(id), vm::VmState::Running).await.unwrap();
    vm::set_ssh(&mut conn, uuid(id), host, port, "root").await.unwrap();
}

async fn becomes(api: &Api, id: &str, state: &str) {
    vm::set_state(&mut api.pool.acquire().await.unwrap(), uuid(id), state.parse().unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_vm_says_where_its_ssh_answers_only_while_it_runs() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let id = api.post("/v1/vms", &token, &vm_body("web-1")).await.id();
    let created = api.get(&format!("/v1/vms/{id}"), &token).await;
    assert_eq!(created.body["ssh"], Value::Null, "null until it runs: {}", created.body);
    assert_eq!(api.get(&format!("/v1/vms/{id}/progress"), &token).await.body["ssh"], Value::Null);

    boots(&api, &id, "10.251.0.2", 38728).await;
    let shown = api.get(&format!("/v1/vms/{id}"), &token).await;
    shown.assert(200, "");
    let ssh = &shown.body["ssh"];
    assert_eq!((&ssh["host"], &ssh["port"], &ssh["user"]), (&json!("10.251.0.2"), &json!(38728), &json!("root")), "{}", shown.body);
    let seen: chrono::DateTime<chrono::Utc> = ssh["seen_at"].as_str().unwrap().parse().unwrap();
    assert!((chrono::Utc::now() - seen).num_seconds().abs() < 300, "seen just now: {seen}");
    assert_eq!(api.get(&format!("/v1/vms/{id}/progress"), &token).await.body["ssh"], *ssh);
    assert_eq!(api.get("/v1/vms", &token).await.body["items"][0]["ssh"], *ssh, "in the list too");

    // Its host stops answering: the last endpoint seen stays, with its time.
    becomes(&api, &id, "unavailable").await;
    assert_eq!(api.get(&format!("/v1/vms/{id}"), &token).await.body["ssh"], *ssh);

    // Stopped (or restarting, or destroyed): nowhere to connect, so nothing shown.
    for state in ["stopped", "starting", "destroyed"] {
        boots(&api, &id, "10.251.0.2", 38728).await;
        becomes(&api, &id, state).await;
        assert_eq!(api.get(&format!("/v1/vms/{id}"), &token).await.body["ssh"], Value::Null, "{state}");
    }
}

#[tokio::test]
async fn another_projects_vm_endpoint_is_not_shown() {
    let (_db, api) = setup().await;
    let (_, alpha) = api.project("alpha", 5).await;
    let (_, beta) = api.project("beta", 5).await;
    let id = api.post("/v1/vms", &alpha, &vm_body("web-1")).await.id();
    boots(&api, &id, "10.251.0.2", 38728).await;
    api.get(&format!("/v1/vms/{id}"), &beta).await.assert(404, "not_found");
    api.get(&format!("/v1/vms/{id}/progress"), &beta).await.assert(404, "not_found");
}

struct Cli {
    db: TestDb,
    dir: std::path::PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str], path: Option<&str>) -> Output {
        let mut cmd = Command::new(skein_spec::binary("skein"));
        cmd.args(args).env("SKEIN_OPERATOR", "alice").env("SKEIN_SECRET_KEY", "33".repeat(32)).stdin(Stdio::null());
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        cmd.output().expect("run skein")
    }
}

#[tokio::test]
async fn vm_show_prints_the_endpoint_and_vm_ssh_runs_ssh_with_it() {
    let (db, api) = setup().await;
    let dir = std::env::temp_dir().join(format!("skein-api-ssh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cli = Cli { db, dir };
    let url = cli.db.url();
    let (_, token) = api.project("alpha", 5).await;
    let id = api.post("/v1/vms", &token, &vm_body("web-1")).await.id();

    // Not running yet: vm show says so, and vm ssh refuses, saying why.
    let out = cli.run(&["vm", "show", &id, "--database-url", &url], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.trim_start().starts_with("ssh") && l.ends_with("- (not running)")), "{text}");
    let out = cli.run(&["vm", "ssh", &id, "--database-url", &url], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no SSH endpoint until it runs"), "{stderr}");

    boots(&api, &id, "10.251.0.2", 38728).await;
    let out = cli.run(&["vm", "show", &id, "--database-url", &url, "--json"], None);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&shown["ssh"]["host"], &shown["ssh"]["port"], &shown["ssh"]["user"]), (&json!("10.251.0.2"), &json!(38728), &json!("root")));
    let out = cli.run(&["vm", "show", &id, "--database-url", &url], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ssh -p 38728 root@10.251.0.2 (seen "), "{text}");

    // `vm ssh` becomes ssh with the endpoint; an ssh on PATH that records
    // its arguments stands in for the real one.
    let fake = cli.dir.join("ssh");
    let said = cli.dir.join("ssh-args");
    std::fs::write(&fake, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexit 7\n", said.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", cli.dir.display(), std::env::var("PATH").unwrap());
    let out = cli.run(&["vm", "ssh", &id, "-i", "/keys/owner", "--database-url", &url, "--", "-o", "BatchMode=yes", "uname", "-a"], Some(&path));
    assert_eq!(out.status.code(), Some(7), "ssh's own exit status: {}", String::from_utf8_lossy(&out.stderr));
    let args = std::fs::read_to_string(&said).unwrap();
    assert_eq!(args.lines().collect::<Vec<_>>(), ["-i", "/keys/owner", "-p", "38728", "root@10.251.0.2", "-o", "BatchMode=yes", "uname", "-a"]);
    std::fs::remove_dir_all(&cli.dir).ok();
}

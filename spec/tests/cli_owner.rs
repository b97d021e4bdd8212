//! The `skein` binary as a VM owner and an operator use it: every change
//! is refused from a script without `--yes` and audited with it; the
//! everyday commands (vm stop|start|restart|destroy, host drain|destroy,
//! token list, project set-quota|delete); the API's rules for hosts; and
//! key files bounded before they are read.

use std::time::{Duration, Instant};

use serde_json::Value;
use skein_spec::cli::Cli;
use skein_spec::api::{Api, PUBLIC_KEY};

const HOST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot used: the host is never reached\n-----END OPENSSH PRIVATE KEY-----\n";


#[tokio::test]
async fn every_change_is_refused_from_a_script_without_yes_and_audited_with_it() {
    let c = Cli::new("audit").await;
    let key = c.file("host.key", HOST_KEY);
    let public = c.file("id.pub", &format!("{PUBLIC_KEY}\n"));
    let host_add = ["host", "add", "--name", "rack-1", "--address", "192.0.2.7", "--key-file", &key];
    let vm_create = ["vm", "create", "--project", "acme", "--name", "web-1", "--public-key", &format!("@{public}")];
    // Without --yes, from a script: nothing happens, and it says how to confirm.
    for args in [&["project", "create", "acme"][..], &host_add, &["token", "create", "--operator", "--name", "me"]] {
        assert!(c.refused(args).contains("pass --yes to confirm"), "{args:?}");
    }
    let written = "SELECT (SELECT count(*) FROM project) + (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM api_token) + (SELECT count(*) FROM operator_audit)";
    assert_eq!(c.i64(written).await, 0, "an unconfirmed change writes nothing");

    let project = c.ok(&["project", "create", "acme", "--vm-quota", "3"]);
    let host = c.ok(&host_add)["id"].as_str().unwrap().to_string();
    let vm = c.ok(&vm_create)["id"].as_str().unwrap().to_string();
    let token = c.ok(&["token", "create", "--project", "acme", "--name", "ci"]);
    let token_id = token["id"].as_str().unwrap().to_string();
    c.ok(&["project", "set-quota", "acme", "5"]);
    // The VM waits for a host (no worker runs): a stop cannot be honoured yet.
    assert!(c.refused(&["vm", "stop", &vm, "--yes"]).contains("still waiting for a host"));
    assert!(c.refused(&["vm", "destroy", &vm]).contains("pass --yes"));
    c.ok(&["vm", "destroy", &vm]);
    c.ok(&["host", "drain", &host]);
    c.ok(&["host", "destroy", &host]);
    c.ok(&["token", "revoke", &token_id]);
    let actions: Vec<(String, String)> = c.audit().await;
    let expected = ["project-create", "host-add", "vm-create", "token-create", "project-set-quota", "vm-destroy", "host-drain", "host-destroy", "token-revoke"];
    assert_eq!(actions, expected.map(|a| ("alice".to_string(), a.to_string())));
    let detail: Value = sqlx::query_scalar("SELECT detail FROM operator_audit WHERE action = 'token-create'").fetch_one(&c.db.pool).await.unwrap();
    assert!(!detail.to_string().contains(token["token"].as_str().unwrap()), "a token's secret is never audited: {detail}");
    assert_eq!(c.i64("SELECT vm_quota::int8 FROM project").await, 5);
    assert_eq!(project["name"], "acme");
}

#[tokio::test]
async fn projects_are_deleted_only_without_live_vms_and_free_their_name() {
    let c = Cli::new("projects").await;
    c.ok(&["project", "create", "acme"]);
    let vm = c.ok(&["vm", "create", "--project", "acme", "--name", "web", "--public-key", PUBLIC_KEY])["id"].as_str().unwrap().to_string();
    let secret = c.ok(&["token", "create", "--project", "acme", "--name", "ci"])["token"].as_str().unwrap().to_string();
    let said = c.refused(&["project", "delete", "acme", "--yes"]);
    assert!(said.contains("has 1 VMs that are not destroyed"), "{said}");
    c.ok(&["vm", "destroy", &vm]);
    // Its strand (no worker here) would finish the destroy; do what it does.
    sqlx::query("UPDATE vm SET state = 'destroyed'").execute(&c.db.pool).await.unwrap();
    c.ok(&["project", "delete", "acme"]);
    let api = Api::new(c.db.pool.clone());
    api.get("/v1/vms", &secret).await.assert(401, "unauthenticated");
    assert!(c.refused(&["vm", "create", "--project", "acme", "--name", "x", "--public-key", PUBLIC_KEY, "--yes"]).contains("no project \"acme\""));
    let again = c.ok(&["project", "create", "acme"]);
    assert!(c.ok(&["project", "list"])["projects"].as_array().unwrap().iter().all(|p| p["id"] == again["id"]), "only the live acme is listed");
    assert_eq!(c.i64("SELECT count(*) FROM project WHERE name = 'acme'").await, 2, "the deleted one's row stays");
    assert!(c.refused(&["project", "set-quota", "acme", "-1", "--yes"]).contains("--vm-quota must be between 0 and"));
}

#[tokio::test]
async fn token_names_are_unique_per_project_and_the_list_says_when_each_was_used() {
    let c = Cli::new("tokens").await;
    c.ok(&["project", "create", "acme"]);
    c.ok(&["project", "create", "beta"]);
    let ci = c.ok(&["token", "create", "--project", "acme", "--name", "ci"]);
    assert!(c.refused(&["token", "create", "--project", "acme", "--name", "ci", "--yes"]).contains("a live token with that name exists"));
    c.ok(&["token", "create", "--project", "beta", "--name", "ci"]);
    let listed = c.ok(&["token", "list", "--project", "acme"]);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(listed["tokens"][0]["last_used_at"], Value::Null);
    let api = Api::new(c.db.pool.clone());
    api.get("/v1/vms", ci["token"].as_str().unwrap()).await.assert(200, "");
    let listed = c.ok(&["token", "list", "--project", "acme"]);
    assert!(listed["tokens"][0]["last_used_at"].is_string(), "{listed}");
    assert!(listed["tokens"][0]["created_at"].is_string());
    let text = String::from_utf8_lossy(&c.run(&["token", "list", "--project", "acme"]).stdout).to_string();
    assert!(text.contains("ci") && text.contains("last used 20"), "{text}");
    // Revoked, its name is free again; --all shows the history.
    c.ok(&["token", "revoke", ci["id"].as_str().unwrap()]);
    c.ok(&["token", "create", "--project", "acme", "--name", "ci"]);
    assert_eq!(c.ok(&["token", "list", "--project", "acme", "--all"])["tokens"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_cli_refuses_the_host_input_the_api_refuses_in_the_same_words() {
    let c = Cli::new("rules").await;
    let key = c.file("host.key", HOST_KEY);
    let api = Api::new(c.db.pool.clone());
    let operator = api.token(None).await;
    for (flag, value, field) in [
        ("--checkup-secs", "0", "checkup_secs"),
        ("--root-dir", "/", "root_dir"),
        ("--root-dir", "/var/lib/sk'ein", "root_dir"),
        ("--root-dir", "/tmp/$(reboot)", "root_dir"),
        ("--address", "256.1.1.1", "address"),
        ("--port", "0", "port"),
    ] {
        let address = if flag == "--address" { value } else { "192.0.2.7" };
        let mut args = vec!["host", "add", "--name", "h1", "--address", address, "--key-file", &key, "--yes"];
        if flag != "--address" {
            args.extend([flag, value]);
        }
        let cli = c.refused(&args);
        let mut body = serde_json::json!({"name": "h1", "address": "192.0.2.7", "bootstrap_private_key": HOST_KEY});
        body[field] = value.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(value));
        let r = api.post("/v1/hosts", &operator, &body).await;
        r.assert(422, "invalid_field");
        let api_says = r.body["error"]["message"].as_str().unwrap();
        let rule = api_says.strip_prefix(field).unwrap().trim();
        assert!(cli.contains(&format!("{flag} {rule}")), "{flag} {value}: the CLI said {cli:?}, the API {api_says:?}");
    }
    assert_eq!(c.i64("SELECT (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM sshable)").await, 0);
}

#[tokio::test]
async fn key_files_are_refused_by_size_before_they_are_read() {
    let c = Cli::new("files").await;
    c.ok(&["project", "create", "acme"]);
    // Sparse: 200 MB long, nothing on disk.
    let big = c.dir.join("big");
    std::fs::File::create(&big).unwrap().set_len(200 * 1024 * 1024).unwrap();
    let big = big.display().to_string();
    for (args, words) in [
        (vec!["host", "add", "--name", "h1", "--address", "192.0.2.7", "--key-file", "/dev/zero", "--yes"], "--key-file: /dev/zero is not a regular file"),
        (vec!["host", "add", "--name", "h1", "--address", "192.0.2.7", "--key-file", &big, "--yes"], "is 209715200 bytes; a key file is at most 65536 bytes"),
        (vec!["vm", "create", "--project", "acme", "--name", "w", "--public-key", "@/dev/zero", "--yes"], "--public-key: /dev/zero is not a regular file"),
        (vec!["vm", "create", "--project", "acme", "--name", "w", "--public-key", &format!("@{big}"), "--yes"], "is 209715200 bytes"),
    ] {
        let began = Instant::now();
        let said = c.refused(&args);
        assert!(said.contains(words), "{args:?}: {said}");
        assert!(began.elapsed() < Duration::from_secs(20), "refused at once, not after reading: {:?}", began.elapsed());
    }
    assert_eq!(c.i64("SELECT (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM vm)").await, 0);
}

/// The case: a host added with a typo in its address never gets
/// ready; destroying it (its strand runs, under a real worker) frees its
/// name for the corrected add, and its row stays as history.
#[tokio::test]
async fn a_host_added_with_a_typo_is_destroyed_and_its_name_used_again() {
    let c = Cli::new("typo").await;
    let key = c.file("host.key", HOST_KEY);
    let nothing_there = skein_spec::procs::free_port().to_string();
    let add = |port: &str| c.ok(&["host", "add", "--name", "rack-1", "--address", "127.0.0.1", "--port", port, "--key-file", &key]);
    let typo = add(&nothing_there)["id"].as_str().unwrap().to_string();
    let worker = skein_spec::procs::Proc::respirate_env(&c.db.url(), &[], &[("SKEIN_SECRET_KEY", &"33".repeat(32))]);
    assert!(c.refused(&["host", "add", "--name", "rack-1", "--address", "127.0.0.1", "--key-file", &key, "--yes"]).contains("a host with that name exists already"));
    c.ok(&["host", "destroy", &typo]);
    let until = Instant::now() + Duration::from_secs(60);
    while c.i64(&format!("SELECT count(*) FROM vm_host WHERE state = 'destroyed' AND id = '{}'", typo.parse::<skein_models::Ubid>().unwrap().uuid())).await == 0 {
        assert!(Instant::now() < until, "the typo host was never destroyed:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fixed = add("22")["id"].as_str().unwrap().to_string();
    assert_ne!(fixed, typo);
    assert_eq!(c.i64("SELECT count(*) FROM vm_host WHERE name = 'rack-1'").await, 2, "the destroyed one stays, as history");
}

//! API writes name their actor: every event a request causes carries the
//! token's id and name (never its secret), and `/progress` and the
//! operator's `vm show` / `host show` show it.

use std::process::Command;

use serde_json::{json, Value};
use skein_bin::api::auth;
use skein_engine::testing::TestDb;
use skein_models::{api_token, project, Ubid, UbidType};
use skein_spec::api::{vm_body, Api};

/// A token named `name` (of `project`, or an operator's): its id and secret.
async fn named_token(api: &Api, name: &str, project: Option<Ubid>) -> (Ubid, String) {
    let secret = auth::new_secret();
    let id = Ubid::generate(UbidType::Token);
    api_token::insert(&mut api.pool.acquire().await.unwrap(), id.uuid(), name, project.map(|p| p.uuid()), &auth::hash(&secret)).await.unwrap();
    (id, secret)
}

/// Each event of `subject`: (kind, actor, detail), oldest first.
async fn events(api: &Api, subject: &str) -> Vec<(String, String, Value)> {
    let id: Ubid = subject.parse().unwrap();
    sqlx::query_as("SELECT kind, actor, detail FROM event WHERE subject_id = $1 ORDER BY created_at, id")
        .bind(id.uuid())
        .fetch_all(&api.pool)
        .await
        .unwrap()
}

/// `skein <args>` against the test database; its stdout.
fn skein(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(skein_spec::binary("skein"))
        .args(args)
        .args(["--database-url", &db.url(), "--operator", "alice"])
        .env("SKEIN_HOME", std::env::temp_dir().join("skein-api-actor-test-home"))
        .output()
        .expect("run skein");
    assert!(out.status.success(), "skein {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn a_create_and_a_stop_name_the_token_but_never_its_secret() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let project = Ubid::generate(UbidType::Project);
    project::insert(&mut api.pool.acquire().await.unwrap(), project.uuid(), "acme", 5).await.unwrap();
    let (token, secret) = named_token(&api, "ci-deploy", Some(project)).await;

    let vm = api.post("/v1/vms", &secret, &vm_body("web")).await;
    vm.assert(201, "");
    let vm = vm.id();
    // Stopping needs a placed VM; the strand that would place it is not run here.
    sqlx::query("UPDATE vm SET state = 'running' WHERE id = $1").bind(vm.parse::<Ubid>().unwrap().uuid()).execute(&api.pool).await.unwrap();
    api.call("POST", &format!("/v1/vms/{vm}/stop"), Some(&secret), None).await.assert(202, "");

    let by = json!({"id": token.to_string(), "name": "ci-deploy"});
    let rows = events(&api, &vm).await;
    let kinds: Vec<&str> = rows.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["created", "stop-requested"]);
    for (kind, actor, detail) in &rows {
        assert_eq!(actor, "user", "{kind}");
        assert_eq!(detail["token"], by, "{kind}: {detail}");
        assert!(!detail.to_string().contains(&secret), "{kind} holds the secret: {detail}");
    }
    assert_eq!(rows[0].2["name"], "web", "the create's own detail is kept");

    let progress = api.get(&format!("/v1/vms/{vm}/progress"), &secret).await;
    progress.assert(200, "");
    let shown = &progress.body["events"];
    assert_eq!((shown[0]["detail"]["token"].clone(), shown[1]["detail"]["token"].clone()), (by.clone(), by.clone()), "{shown}");
    assert!(!progress.body.to_string().contains(&secret));

    let text = skein(&db, &["vm", "show", &vm]);
    assert!(text.contains(&token.to_string()) && text.contains("ci-deploy"), "vm show names the token: {text}");
    assert!(!text.contains(&secret));
}

#[tokio::test]
async fn host_writes_name_the_operator_token() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let (token, secret) = named_token(&api, "ops-laptop", None).await;
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot used: the host is never reached\n-----END OPENSSH PRIVATE KEY-----\n";
    let added = api.post("/v1/hosts", &secret, &json!({"name": "h1", "address": "192.0.2.10", "bootstrap_private_key": key})).await;
    added.assert(201, "");
    let host = added.id();
    api.call("POST", &format!("/v1/hosts/{host}/drain"), Some(&secret), None).await.assert(202, "");

    let by = json!({"id": token.to_string(), "name": "ops-laptop"});
    let rows = events(&api, &host).await;
    let ours: Vec<&(String, String, Value)> = rows.iter().filter(|(_, actor, _)| actor == "operator").collect();
    let kinds: Vec<&str> = ours.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["added", "drain-requested"], "{rows:?}");
    for (kind, _, detail) in ours {
        assert_eq!(detail["token"], by, "{kind}: {detail}");
        assert!(!detail.to_string().contains(&secret));
    }

    let text = skein(&db, &["host", "show", &host]);
    assert!(text.contains(&token.to_string()) && text.contains("ops-laptop"), "host show names the token: {text}");
    assert!(!text.contains(&secret));
}

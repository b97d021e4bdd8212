//! The HTTP API in-process against a real database: who may see and touch
//! what, strict input that writes nothing when refused, idempotent creates,
//! pagination, one-transaction enqueues, hosts and strands, and the OpenAPI
//! document matching the routes.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use skein_bin::api::{self, openapi};
use skein_engine::testing::TestDb;
use skein_models::{vm_host, Ubid, UbidType};
use skein_spec::api::{vm_body, Api, PUBLIC_KEY};

async fn count(api: &Api, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&api.pool).await.unwrap()
}

/// Everything a create writes: VMs, strands, events, idempotency keys and
/// quota taken, summed.
async fn written(api: &Api) -> i64 {
    count(
        api,
        "SELECT (SELECT count(*) FROM vm) + (SELECT count(*) FROM strand) + (SELECT count(*) FROM event) \
              + (SELECT count(*) FROM idempotency_key) + (SELECT coalesce(sum(vm_count), 0) FROM project) \
              + (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM sshable)",
    )
    .await
}

async fn setup() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_and_the_document_needs_none() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    api.call("GET", "/v1/vms", None, None).await.assert(401, "unauthenticated");
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer nope", "Bearer skein_zz", &format!("Token {token}")] {
        let r = api.call_with("GET", "/v1/vms", None, None, &[("authorization", bad)]).await;
        r.assert(401, "unauthenticated");
    }
    // Well-formed but unknown: the same answer.
    let unknown = skein_bin::api::auth::new_secret();
    api.get("/v1/vms", &unknown).await.assert(401, "unauthenticated");
    // A revoked token stops working at once.
    api.get("/v1/vms", &token).await.assert(200, "");
    let hash = skein_bin::api::auth::hash(&token);
    sqlx::query("UPDATE api_token SET revoked_at = now() WHERE hash = $1").bind(&hash[..]).execute(&api.pool).await.unwrap();
    api.get("/v1/vms", &token).await.assert(401, "unauthenticated");
    // A write without a token writes nothing.
    api.call("POST", "/v1/vms", None, Some(&vm_body("web"))).await.assert(401, "unauthenticated");
    assert_eq!(written(&api).await, 0);
    let doc = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn another_projects_vm_is_invisible_and_untouchable() {
    let (_db, api) = setup().await;
    let (_, alpha) = api.project("alpha", 5).await;
    let (_, beta) = api.project("beta", 5).await;
    let created = api.post("/v1/vms", &alpha, &vm_body("web")).await;
    created.assert(201, "");
    let id = created.id();
    let before = written(&api).await;

    // To beta, alpha's VM answers exactly like a VM that does not exist.
    let absent = format!("/v1/vms/{}", Ubid::generate(UbidType::Vm));
    let not_there = api.get(&absent, &beta).await;
    not_there.assert(404, "not_found");
    for path in [format!("/v1/vms/{id}"), format!("/v1/vms/{id}/progress")] {
        let r = api.get(&path, &beta).await;
        r.assert(404, "not_found");
        assert_eq!(r.body, not_there.body, "no leak in the message either");
    }
    api.delete(&format!("/v1/vms/{id}"), &beta).await.assert(404, "not_found");
    let list = api.get("/v1/vms", &beta).await;
    assert_eq!(list.body["items"], json!([]), "{}", list.body);
    assert_eq!(written(&api).await, before, "beta's DELETE wrote nothing");
    assert_eq!(count(&api, "SELECT count(*) FROM semaphore").await, 0, "and signalled nothing");
    let row = api.get(&format!("/v1/vms/{id}"), &alpha).await;
    assert_eq!(row.body["desired_state"], "running");

    // Its owner and operators see it.
    let listed = api.get("/v1/vms", &alpha).await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    let operator = api.token(None).await;
    api.get(&format!("/v1/vms/{id}"), &operator).await.assert(200, "");
}

#[tokio::test]
async fn project_tokens_cannot_reach_operator_routes_and_operators_cannot_create_vms() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let host = Ubid::generate(UbidType::VmHost);
    for (method, path) in [
        ("GET", "/v1/hosts".to_string()),
        ("GET", format!("/v1/hosts/{host}")),
        ("DELETE", format!("/v1/hosts/{host}")),
        ("POST", format!("/v1/hosts/{host}/drain")),
        ("GET", format!("/v1/strands/{}", Ubid::generate(UbidType::Strand))),
    ] {
        api.call(method, &path, Some(&token), None).await.assert(403, "forbidden");
    }
    let add = json!({"name": "h1", "address": "192.0.2.1", "bootstrap_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"});
    api.post("/v1/hosts", &token, &add).await.assert(403, "forbidden");
    let operator = api.token(None).await;
    api.post("/v1/vms", &operator, &vm_body("web")).await.assert(403, "forbidden");
    api.get("/v1/vms?project=pj", &token).await.assert(403, "forbidden");
    assert_eq!(written(&api).await, 0);
}

#[tokio::test]
async fn invalid_creates_are_refused_with_a_clear_code_and_write_nothing() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let with = |k: &str, v: Value| {
        let mut b = vm_body("web");
        b[k] = v;
        b
    };
    let mut missing = vm_body("web");
    missing.as_object_mut().unwrap().remove("cores");
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (with("extra", json!(1)), 400, "invalid_body", "unknown field `extra`"),
        (missing, 400, "invalid_body", "missing field `cores`"),
        (with("cores", json!("two")), 400, "invalid_body", "invalid type"),
        (with("cores", json!(1.5)), 400, "invalid_body", "invalid type"),
        (with("cores", json!(0)), 422, "invalid_field", "cores must be between 1 and 64"),
        (with("cores", json!(65)), 422, "invalid_field", "cores must be between 1 and 64"),
        (with("cores", json!(1u64 << 40)), 422, "invalid_field", "cores must be between"),
        (with("memory_mib", json!(63)), 422, "invalid_field", "memory_mib must be between 64 and 262144"),
        (with("disk_mib", json!(2_000_000)), 422, "invalid_field", "disk_mib must be between 16 and 1048576"),
        (with("name", json!("Web_1")), 422, "invalid_field", "name must be 1-63 lowercase"),
        (with("name", json!("")), 422, "invalid_field", "name must be"),
        (with("name", json!("a".repeat(64))), 422, "invalid_field", "name must be"),
        (with("public_key", json!("ssh-dss AAAA")), 422, "invalid_field", "public_key must start with"),
        (with("public_key", json!(format!("{PUBLIC_KEY}\nssh-ed25519 AAAA evil"))), 422, "invalid_field", "public_key must be one line"),
        (with("subnet", json!("Not A_Name")), 422, "invalid_field", "subnet must be a private subnet's id (ps...) or name"),
        (with("subnet", json!(Ubid::generate(UbidType::Subnet).to_string())), 422, "invalid_field", "is not a private subnet of this project"),
        (json!([1, 2]), 400, "invalid_body", "must be a JSON object"),
        (json!(null), 400, "invalid_body", "must be a JSON object"),
    ];
    for (body, status, code, words) in cases {
        let r = api.post("/v1/vms", &token, &body).await;
        r.assert(status, code);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }
    // Not JSON, not declared JSON, too large.
    let raw = |body: &'static str, content_type: &'static str| {
        axum::http::Request::post("/v1/vms")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    api.send(raw("{\"name\": ", "application/json")).await.assert(400, "invalid_json");
    api.send(raw("{}", "text/plain")).await.assert(415, "unsupported_media_type");
    let mut huge = vm_body("web");
    huge["public_key"] = json!(format!("ssh-ed25519 {}", "A".repeat(70 * 1024)));
    api.post("/v1/vms", &token, &huge).await.assert(413, "body_too_large");
    // A bad Idempotency-Key is refused before anything is written.
    let r = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("web")), &[("idempotency-key", "")]).await;
    r.assert(400, "invalid_header");
    assert_eq!(written(&api).await, 0, "no refused create wrote anything");
}

#[tokio::test]
async fn a_taken_name_is_409_conflict_and_a_full_quota_409_quota_exceeded() {
    let (_db, api) = setup().await;
    let (project, token) = api.project("alpha", 2).await;
    api.post("/v1/vms", &token, &vm_body("web")).await.assert(201, "");
    let before = written(&api).await;
    let r = api.post("/v1/vms", &token, &vm_body("web")).await;
    r.assert(409, "conflict");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("exists in this project"), "{}", r.body);
    assert_eq!(written(&api).await, before, "the quota taken for it was given back with the rest");
    // Another project may use the name.
    let (_, beta) = api.project("beta", 1).await;
    api.post("/v1/vms", &beta, &vm_body("web")).await.assert(201, "");

    api.post("/v1/vms", &token, &vm_body("db")).await.assert(201, "");
    let before = written(&api).await;
    api.post("/v1/vms", &token, &vm_body("third")).await.assert(409, "quota_exceeded");
    assert_eq!(written(&api).await, before);
    let used: i32 = sqlx::query_scalar("SELECT vm_count FROM project WHERE id = $1").bind(project.uuid()).fetch_one(&api.pool).await.unwrap();
    assert_eq!(used, 2);
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_vm_and_another_body_is_refused() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let key = [("idempotency-key", "create-web-1")];
    let first = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("web")), &key).await;
    first.assert(201, "");
    assert!(first.headers.get("idempotent-replayed").is_none());
    // The same fields in another order are the same request.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"public_key": "{PUBLIC_KEY}", "disk_mib": 64, "memory_mib": 256, "cores": 1, "name": "web"}}"#
    ))
    .unwrap();
    let again = api.call_with("POST", "/v1/vms", Some(&token), Some(&reordered), &key).await;
    again.assert(201, "");
    assert_eq!(again.id(), first.id());
    assert_eq!(again.body, first.body, "the first answer, replayed");
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 1);

    let other = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("other")), &key).await;
    other.assert(422, "idempotency_key_reused");
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 1);

    // Keys are the project's: another project's same key is its own.
    let (_, beta) = api.project("beta", 5).await;
    let theirs = api.call_with("POST", "/v1/vms", Some(&beta), Some(&vm_body("web")), &key).await;
    theirs.assert(201, "");
    assert_ne!(theirs.id(), first.id());
    // Without a key, a retry is a new request (here: the name is taken).
    api.post("/v1/vms", &token, &vm_body("web")).await.assert(409, "conflict");

    // A day later the key is forgotten: new again, and old keys are pruned.
    sqlx::query("INSERT INTO idempotency_key (scope, key, request_hash, created_at) VALUES (gen_random_uuid(), 'stale', '\\x00', now() - interval '3 days')")
        .execute(&api.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE idempotency_key SET created_at = now() - interval '25 hours' WHERE key = 'create-web-1'").execute(&api.pool).await.unwrap();
    let later = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("other")), &key).await;
    later.assert(201, "");
    assert_ne!(later.id(), first.id());
    assert_eq!(count(&api, "SELECT count(*) FROM idempotency_key WHERE key = 'stale'").await, 0, "expired keys are pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_key_make_one_vm() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 50).await;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (api, token) = (api.clone(), token.clone());
            tokio::spawn(async move {
                api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("web")), &[("idempotency-key", "race")]).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        r.assert(201, "");
        ids.insert(r.id());
    }
    assert_eq!(ids.len(), 1, "every racer got the same VM: {ids:?}");
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 1);
    assert_eq!(count(&api, "SELECT count(*) FROM strand").await, 1);
    assert_eq!(count(&api, "SELECT sum(vm_count) FROM project").await, 1);
}

#[tokio::test]
async fn lists_are_paged_in_id_order_with_a_next_cursor() {
    let (_db, api) = setup().await;
    let (alpha_id, alpha) = api.project("alpha", 10).await;
    let (_, beta) = api.project("beta", 10).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(api.post("/v1/vms", &alpha, &vm_body(&format!("vm-{i}"))).await.id());
    }
    api.post("/v1/vms", &beta, &vm_body("theirs")).await.assert(201, "");
    made.sort_by_key(|id| id.parse::<Ubid>().unwrap().uuid());

    let mut seen = Vec::new();
    let mut path = "/v1/vms?limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = api.get(&path, &alpha).await;
        page.assert(200, "");
        pages += 1;
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|v| v["id"].as_str().unwrap().to_string()));
        match page.body["next"].as_str() {
            Some(next) => path = format!("/v1/vms?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made, "every VM of the project once, in id order, none of another's");
    let all = api.get("/v1/vms", &alpha).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(all.body["next"], Value::Null);

    // Operators: every project's, or one's.
    let operator = api.token(None).await;
    assert_eq!(api.get("/v1/vms?limit=100", &operator).await.body["items"].as_array().unwrap().len(), 6);
    let one = api.get(&format!("/v1/vms?project={alpha_id}"), &operator).await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 5);

    for bad in ["limit=0", "limit=101", "limit=abc", "after=nope", "after=pj0000000000000000000000000", "colour=blue"] {
        api.get(&format!("/v1/vms?{bad}"), &alpha).await.assert(400, "invalid_query");
    }
    api.get(&format!("/v1/vms?after={}", Ubid::generate(UbidType::Project)), &alpha).await.assert(400, "invalid_query");
    api.get("/v1/vms?project=nope", &operator).await.assert(400, "invalid_query");
}

#[tokio::test]
async fn a_failure_mid_enqueue_leaves_no_vm_no_quota_and_no_key() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    // A test-only trigger in this test's own database: the strand insert fails,
    // after the quota, the VM row and its event were written in the same transaction.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_strand() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN RAISE EXCEPTION 'strand insert refused by the test (secret detail)'; END $$; \
         CREATE TRIGGER refuse_strand BEFORE INSERT ON strand FOR EACH ROW EXECUTE FUNCTION refuse_strand();",
    )
    .execute(&api.pool)
    .await
    .unwrap();
    let key = [("idempotency-key", "k1")];
    let r = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("web")), &key).await;
    r.assert(500, "internal");
    assert!(!r.body.to_string().contains("secret detail"), "nothing internal leaks: {}", r.body);
    assert_eq!(written(&api).await, 0, "no vm, event, strand, key or quota left behind");

    sqlx::raw_sql("DROP TRIGGER refuse_strand ON strand").execute(&api.pool).await.unwrap();
    let r = api.call_with("POST", "/v1/vms", Some(&token), Some(&vm_body("web")), &key).await;
    r.assert(201, "");
    assert!(r.headers.get("idempotent-replayed").is_none(), "the failed attempt kept no key");
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 1);
}

#[tokio::test]
async fn create_returns_at_once_and_progress_shows_the_strand_and_its_events() {
    let (_db, api) = setup().await;
    let (project, token) = api.project("alpha", 5).await;
    let r = api.post("/v1/vms", &token, &vm_body("web")).await;
    r.assert(201, "");
    let id = r.id();
    assert!(id.starts_with("vm"), "{id}");
    assert_eq!(r.body["state"], "creating");
    assert_eq!(r.body["project"], project.to_string());
    assert!(r.body.get("host").is_none(), "project tokens are not shown hosts");

    let p = api.get(&format!("/v1/vms/{id}/progress"), &token).await;
    p.assert(200, "");
    assert_eq!(p.body["strand"]["label"], "Start", "{}", p.body);
    assert_eq!(p.body["strand"]["prog"], "Vm::Nexus");
    assert_eq!(p.body["strand"]["try"], 0);
    assert_eq!(p.body["strand"]["last_error"], Value::Null);
    assert_eq!(p.body["events"][0]["kind"], "created");
    assert_eq!(p.body["events"][0]["actor"], "user");

    let operator = api.token(None).await;
    let s = api.get(&format!("/v1/strands/{id}"), &operator).await;
    s.assert(200, "");
    assert_eq!((s.body["prog"].as_str(), s.body["label"].as_str(), s.body["exited"].as_bool()), (Some("Vm::Nexus"), Some("Start"), Some(false)));
    api.get(&format!("/v1/strands/{}", Ubid::generate(UbidType::Strand)), &operator).await.assert(404, "not_found");
    api.get("/v1/strands/not-an-id", &operator).await.assert(404, "not_found");

    // A failing step's error names hosts and addresses: operators read it, the project does not.
    let failure = "ssh to 192.0.2.10:22 (host rack-7) refused";
    sqlx::query("UPDATE strand SET try = 2, last_error = $2 WHERE id = $1").bind(id.parse::<Ubid>().unwrap().uuid()).bind(failure).execute(&api.pool).await.unwrap();
    let seen_by_project = api.get(&format!("/v1/vms/{id}/progress"), &token).await;
    assert_eq!(seen_by_project.body["strand"]["try"], 2);
    let told = seen_by_project.body["strand"]["last_error"].as_str().unwrap();
    assert!(told.contains("failed") && !told.contains("192.0.2.10") && !told.contains("rack-7"), "{told}");
    let seen_by_operator = api.get(&format!("/v1/vms/{id}/progress"), &operator).await;
    assert_eq!(seen_by_operator.body["strand"]["last_error"], failure);
}

#[tokio::test]
async fn destroy_signals_the_strand_once_and_repeating_it_is_harmless() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let id = api.post("/v1/vms", &token, &vm_body("web")).await.id();
    for _ in 0..2 {
        let r = api.delete(&format!("/v1/vms/{id}"), &token).await;
        r.assert(202, "");
        assert_eq!(r.body["desired_state"], "destroyed");
    }
    let sems: Vec<String> = sqlx::query_scalar("SELECT name FROM semaphore").fetch_all(&api.pool).await.unwrap();
    assert_eq!(sems, ["destroy"], "one destroy, however often asked");
    let p = api.get(&format!("/v1/vms/{id}/progress"), &token).await;
    let kinds: Vec<&str> = p.body["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "destroy-requested"]);
    assert_eq!(p.body["events"][1]["actor"], "user");
    // Ids of nothing, of another type, or mistyped, are all 404.
    let mut mistyped = id.clone();
    mistyped.replace_range(5..6, if &id[5..6] == "a" { "b" } else { "a" });
    for bad in [Ubid::generate(UbidType::Vm).to_string(), Ubid::generate(UbidType::VmHost).to_string(), mistyped, "x".into(), "%ff".into()] {
        api.delete(&format!("/v1/vms/{bad}"), &token).await.assert(404, "not_found");
    }
}

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot used: the host is never reached\n-----END OPENSSH PRIVATE KEY-----\n";

fn host_body(name: &str) -> Value {
    json!({"name": name, "address": "192.0.2.10", "bootstrap_private_key": KEY, "checkup_secs": 30})
}

#[tokio::test]
async fn operators_add_list_get_drain_and_destroy_hosts() {
    let (_db, api) = setup().await;
    let operator = api.token(None).await;

    // Refused input writes nothing.
    let with = |k: &str, v: Value| {
        let mut b = host_body("h1");
        b[k] = v;
        b
    };
    for (body, status, code) in [
        (with("name", json!("Bad Name")), 422, "invalid_field"),
        (with("address", json!("192.0.2.1; rm -rf /")), 422, "invalid_field"),
        (with("port", json!(0)), 422, "invalid_field"),
        (with("port", json!(70000)), 422, "invalid_field"),
        (with("user", json!("root;id")), 422, "invalid_field"),
        (with("root_dir", json!("relative")), 422, "invalid_field"),
        (with("bootstrap_private_key", json!("hello")), 422, "invalid_field"),
        (with("checkup_secs", json!(0)), 422, "invalid_field"),
        (with("surprise", json!(true)), 400, "invalid_body"),
    ] {
        api.post("/v1/hosts", &operator, &body).await.assert(status, code);
    }
    assert_eq!(written(&api).await, 0);

    let added = api.post("/v1/hosts", &operator, &host_body("h1")).await;
    added.assert(201, "");
    let id = added.id();
    assert!(id.starts_with("vh"));
    assert_eq!((added.body["state"].as_str(), added.body["address"].as_str(), added.body["port"].as_i64()), (Some("new"), Some("192.0.2.10"), Some(22)));
    assert!(!added.body.to_string().contains("PRIVATE KEY"), "keys are never shown");
    let strand = api.get(&format!("/v1/strands/{id}"), &operator).await;
    assert_eq!(strand.body["prog"], "Vm::HostNexus");
    assert_eq!(strand.body["stack"][0]["checkup_secs"], 30);
    api.post("/v1/hosts", &operator, &host_body("h1")).await.assert(409, "conflict");
    let second = api.post("/v1/hosts", &operator, &host_body("h2")).await.id();

    let page = api.get("/v1/hosts?limit=1", &operator).await;
    assert_eq!(page.body["items"][0]["id"], id.as_str());
    let next = page.body["next"].as_str().unwrap();
    let page = api.get(&format!("/v1/hosts?limit=1&after={next}"), &operator).await;
    assert_eq!(page.body["items"][0]["id"], second.as_str());
    assert_eq!(page.body["next"], Value::Null);
    api.get(&format!("/v1/hosts/{id}"), &operator).await.assert(200, "");
    api.get(&format!("/v1/hosts/{}", Ubid::generate(UbidType::VmHost)), &operator).await.assert(404, "not_found");

    api.call("POST", &format!("/v1/hosts/{id}/drain"), Some(&operator), None).await.assert(202, "");
    let sems: Vec<String> = sqlx::query_scalar("SELECT name FROM semaphore WHERE strand_id = $1")
        .bind(id.parse::<Ubid>().unwrap().uuid())
        .fetch_all(&api.pool)
        .await
        .unwrap();
    assert_eq!(sems, ["drain"]);

    // A host with a VM on it is not destroyed.
    let (_, token) = api.project("alpha", 5).await;
    let vm = api.post("/v1/vms", &token, &vm_body("web")).await.id();
    let host_uuid = id.parse::<Ubid>().unwrap().uuid();
    sqlx::query("UPDATE vm SET host_id = $1").bind(host_uuid).execute(&api.pool).await.unwrap();
    api.delete(&format!("/v1/hosts/{id}"), &operator).await.assert(409, "host_has_vms");
    sqlx::query("UPDATE vm SET state = 'destroyed'").execute(&api.pool).await.unwrap();
    api.delete(&format!("/v1/hosts/{id}"), &operator).await.assert(202, "");
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM event WHERE subject_id = $1 ORDER BY created_at, id")
        .bind(host_uuid)
        .fetch_all(&api.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["added", "drain-requested", "destroy-requested"]);
    vm_host::set_state(&mut api.pool.acquire().await.unwrap(), host_uuid, vm_host::HostState::Destroyed).await.unwrap();
    api.call("POST", &format!("/v1/hosts/{id}/drain"), Some(&operator), None).await.assert(409, "host_destroyed");
    let _ = vm;
}

#[tokio::test]
async fn a_host_add_with_an_idempotency_key_adds_one_host() {
    let (_db, api) = setup().await;
    let operator = api.token(None).await;
    let key = [("idempotency-key", "add-h1")];
    let a = api.call_with("POST", "/v1/hosts", Some(&operator), Some(&host_body("h1")), &key).await;
    let b = api.call_with("POST", "/v1/hosts", Some(&operator), Some(&host_body("h1")), &key).await;
    a.assert(201, "");
    b.assert(201, "");
    assert_eq!(a.id(), b.id());
    assert_eq!(count(&api, "SELECT count(*) FROM vm_host").await, 1);
    // The same key for another host is refused.
    api.call_with("POST", "/v1/hosts", Some(&operator), Some(&host_body("h2")), &key).await.assert(422, "idempotency_key_reused");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    api.get("/nope", &token).await.assert(404, "route_not_found");
    api.get("/v1/vms/a/b/c", &token).await.assert(404, "route_not_found");
    api.call("PUT", "/v1/vms", Some(&token), None).await.assert(405, "method_not_allowed");
    api.call("PATCH", "/v1/hosts/vh1", Some(&token), None).await.assert(405, "method_not_allowed");
    api.call("DELETE", "/openapi.json", None, None).await.assert(405, "method_not_allowed");
}

/// (METHOD, path) of every operation in the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(openapi::DOCUMENT).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes_both_ways() {
    let (_db, api) = setup().await;
    let served: BTreeSet<(String, String)> = api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let doc = documented();
    assert_eq!(served.difference(&doc).collect::<Vec<_>>(), Vec::<&(String, String)>::new(), "served but not documented");
    assert_eq!(doc.difference(&served).collect::<Vec<_>>(), Vec::<&(String, String)>::new(), "documented but not served");
    // And the router really answers them (ROUTES is what builds it), and
    // nothing else on those paths.
    let operator = api.token(None).await;
    let paths: BTreeSet<&String> = doc.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", &Ubid::generate(UbidType::Vm).to_string());
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let r = api.call(method, &concrete, Some(&operator), Some(&json!({}))).await;
            if doc.contains(&(method.to_string(), path.clone())) {
                assert!(!["route_not_found", "method_not_allowed"].contains(&r.code()), "{method} {path}: {}", r.body);
            } else {
                r.assert(405, "method_not_allowed");
            }
        }
    }
    let served_doc = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(served_doc.raw, openapi::DOCUMENT.as_bytes());
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../bin/openapi.json")).unwrap();
    assert_eq!(on_disk, openapi::DOCUMENT, "the served document is the one in the repo");
}

/// A destroy and a placement on the same host, in both orders: the destroy
/// either sees the VM (409) or takes the host out of placement first.
#[tokio::test]
async fn a_host_destroy_and_a_placement_never_interleave() {
    use skein_models::capacity::{self, Size};
    let (_db, api) = setup().await;
    let operator = api.token(None).await;
    let id: Ubid = api.post("/v1/hosts", &operator, &host_body("h1")).await.id().parse().unwrap();
    let accepting = || async {
        sqlx::query("UPDATE vm_host SET state = 'accepting', cpus = 8, memory_mib = 8192, storage_free_mib = 100000 WHERE id = $1")
            .bind(id.uuid())
            .execute(&api.pool)
            .await
            .unwrap();
    };
    accepting().await;
    let (_, token) = api.project("alpha", 5).await;
    let vm: Ubid = api.post("/v1/vms", &token, &vm_body("web")).await.id().parse().unwrap();
    let size = Size { cores: 1, memory_mib: 256, disk_mib: 64 };

    // A placement in flight (capacity reserved, VM placed, not committed yet)...
    let mut placing = api.pool.begin().await.unwrap();
    assert_eq!(capacity::reserve(&mut placing, size).await.unwrap(), Some(id.uuid()));
    skein_models::vm::place(&mut placing, vm.uuid(), id.uuid()).await.unwrap();
    // ...holds the destroy until it commits, which then sees the VM.
    let destroy = {
        let (api, operator) = (api.clone(), operator.clone());
        tokio::spawn(async move { api.delete(&format!("/v1/hosts/{id}"), &operator).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!destroy.is_finished(), "the destroy waits for the placement's lock");
    placing.commit().await.unwrap();
    destroy.await.unwrap().assert(409, "host_has_vms");

    // The other order: once a destroy is accepted, nothing is placed there.
    sqlx::query("UPDATE vm SET host_id = NULL, state = 'destroyed'").execute(&api.pool).await.unwrap();
    accepting().await;
    api.delete(&format!("/v1/hosts/{id}"), &operator).await.assert(202, "");
    let mut conn = api.pool.acquire().await.unwrap();
    assert_eq!(capacity::reserve(&mut conn, size).await.unwrap(), None, "a host being destroyed takes no VM");
    assert_eq!(vm_host::get(&mut conn, id.uuid()).await.unwrap().unwrap().state, vm_host::HostState::Draining);
}

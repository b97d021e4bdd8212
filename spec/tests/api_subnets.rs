//! Private subnets through the API (issue 11, item 6): create, list, get
//! with the VMs' addresses, delete; ranges refused with a reason; a subnet
//! with live VMs cannot be deleted; another project's subnet is a 404; VMs
//! join a subnet by id or by name; a deleted subnet's name is free again.

use serde_json::{json, Value};
use skein_engine::testing::TestDb;
use skein_spec::api::{vm_body, Api};

async fn setup() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

fn subnet(name: &str, cidr: &str) -> Value {
    json!({"name": name, "cidr": cidr})
}

fn vm_in(name: &str, subnet: &str) -> Value {
    let mut b = vm_body(name);
    b["subnet"] = json!(subnet);
    b
}

#[tokio::test]
async fn subnets_are_created_listed_shown_with_their_vms_and_deleted() {
    let (_db, api) = setup().await;
    let (project, token) = api.project("alpha", 10).await;
    let made = api.post("/v1/subnets", &token, &subnet("backend", "10.9.0.0/24")).await;
    made.assert(201, "");
    assert_eq!((made.body["name"].as_str(), made.body["cidr"].as_str()), (Some("backend"), Some("10.9.0.0/24")));
    assert_eq!(made.body["project"], json!(project.to_string()));
    let id = made.id();
    assert!(id.starts_with("ps"), "{id}");
    api.post("/v1/subnets", &token, &subnet("backend", "10.8.0.0/24")).await.assert(409, "conflict");
    api.post("/v1/subnets", &token, &subnet("frontend", "10.9.0.0/24")).await.assert(201, "");

    // By id and by name, each VM gets the next free address of the range.
    let db_vm = api.post("/v1/vms", &token, &vm_in("db", &id)).await;
    db_vm.assert(201, "");
    assert_eq!((db_vm.body["subnet"].as_str(), db_vm.body["private_ip"].as_str()), (Some(id.as_str()), Some("10.9.0.2/24")));
    let app = api.post("/v1/vms", &token, &vm_in("app", "backend")).await;
    app.assert(201, "");
    assert_eq!((app.body["subnet"].as_str(), app.body["private_ip"].as_str()), (Some(id.as_str()), Some("10.9.0.3/24")));
    let r = api.post("/v1/vms", &token, &vm_in("lost", "nowhere")).await;
    r.assert(422, "invalid_field");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("nowhere is not a private subnet of this project"), "{}", r.body);

    let shown = api.get(&format!("/v1/subnets/{id}"), &token).await;
    shown.assert(200, "");
    let vms: Vec<(&str, &str)> =
        shown.body["vms"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["private_ip"].as_str().unwrap())).collect();
    assert_eq!(vms, [("db", "10.9.0.2/24"), ("app", "10.9.0.3/24")]);

    let list = api.get("/v1/subnets?limit=1", &token).await;
    list.assert(200, "");
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let next = list.body["next"].as_str().unwrap().to_string();
    let rest = api.get(&format!("/v1/subnets?after={next}"), &token).await;
    assert_eq!(rest.body["items"][0]["name"], "frontend");
    assert!(rest.body["next"].is_null());

    // Deleting waits for its VMs to be destroyed; then the name is free.
    let r = api.delete(&format!("/v1/subnets/{id}"), &token).await;
    r.assert(409, "subnet_has_vms");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("has 2 VMs"), "{}", r.body);
    api.delete(&format!("/v1/vms/{}", db_vm.id()), &token).await.assert(202, "");
    api.delete(&format!("/v1/subnets/{id}"), &token).await.assert(409, "subnet_has_vms");
    api.delete(&format!("/v1/vms/{}", app.id()), &token).await.assert(202, "");
    api.delete(&format!("/v1/subnets/{id}"), &token).await.assert(200, "");
    api.get(&format!("/v1/subnets/{id}"), &token).await.assert(404, "not_found");
    api.delete(&format!("/v1/subnets/{id}"), &token).await.assert(404, "not_found");
    api.post("/v1/vms", &token, &vm_in("late", &id)).await.assert(422, "invalid_field");
    let list = api.get("/v1/subnets", &token).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "a deleted subnet is not listed: {}", list.body);

    let again = api.post("/v1/subnets", &token, &subnet("backend", "10.9.0.0/24")).await;
    again.assert(201, "");
    assert_ne!(again.id(), id);
    let joined = api.post("/v1/vms", &token, &vm_in("db2", "backend")).await;
    assert_eq!(joined.body["subnet"].as_str(), Some(again.id().as_str()), "the name now means the new subnet");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM private_subnet WHERE name = 'backend'").fetch_one(&api.pool).await.unwrap();
    assert_eq!(rows, 2, "the deleted subnet's row stays, for its VMs' history");
}

#[tokio::test]
async fn a_destroyed_vms_address_is_given_again() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 10).await;
    let id = api.post("/v1/subnets", &token, &subnet("tiny", "192.168.5.0/29")).await.id();
    let mut ips = Vec::new();
    for i in 0..5 {
        let r = api.post("/v1/vms", &token, &vm_in(&format!("v{i}"), &id)).await;
        r.assert(201, "");
        ips.push(r.body["private_ip"].as_str().unwrap().to_string());
    }
    assert_eq!(ips, ["192.168.5.2/29", "192.168.5.3/29", "192.168.5.4/29", "192.168.5.5/29", "192.168.5.6/29"]);
    api.post("/v1/vms", &token, &vm_in("v5", &id)).await.assert(409, "subnet_full");
    let first: String = sqlx::query_scalar("SELECT name FROM vm WHERE host(private_ip) = '192.168.5.3'").fetch_one(&api.pool).await.unwrap();
    sqlx::query("UPDATE vm SET state = 'destroyed', desired_state = 'destroyed' WHERE name = $1").bind(&first).execute(&api.pool).await.unwrap();
    let r = api.post("/v1/vms", &token, &vm_in("v5", &id)).await;
    r.assert(201, "");
    assert_eq!(r.body["private_ip"], "192.168.5.3/29");
}

#[tokio::test]
async fn ranges_and_names_are_checked_with_a_reason() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 10).await;
    for (body, words) in [
        (subnet("a", "10.0.0.5/24"), "cidr must start at its network address: 10.0.0.0/24"),
        (subnet("a", "8.8.8.0/24"), "cidr must be inside a private range"),
        (subnet("a", "172.32.0.0/16"), "cidr must be inside a private range"),
        (subnet("a", "10.0.0.0/8"), "cidr must have a prefix length between /16 and /29"),
        (subnet("a", "10.0.0.0/30"), "cidr must have a prefix length between /16 and /29"),
        (subnet("a", "fd00::/64"), "cidr must be an IPv4 range"),
        (subnet("a", "10.0.0.0"), "cidr must be an IPv4 range"),
        (subnet("Bad_Name", "10.0.0.0/24"), "name must be 1-63 lowercase"),
    ] {
        let r = api.post("/v1/subnets", &token, &body).await;
        r.assert(422, "invalid_field");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(words), "{body}: {message}");
    }
    api.post("/v1/subnets", &token, &json!({"name": "a", "cidr": "10.0.0.0/24", "extra": 1})).await.assert(400, "invalid_body");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM private_subnet").fetch_one(&api.pool).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn another_projects_subnet_answers_like_a_missing_one() {
    let (_db, api) = setup().await;
    let (_, alpha) = api.project("alpha", 10).await;
    let (_, beta) = api.project("beta", 10).await;
    let id = api.post("/v1/subnets", &alpha, &subnet("backend", "10.9.0.0/24")).await.id();
    // The same name and range in another project are its own.
    let theirs = api.post("/v1/subnets", &beta, &subnet("backend", "10.9.0.0/24")).await;
    theirs.assert(201, "");
    let missing = skein_models::Ubid::generate(skein_models::UbidType::Subnet).to_string();
    for path in [format!("/v1/subnets/{id}"), format!("/v1/subnets/{missing}")] {
        let seen = api.get(&path, &beta).await;
        seen.assert(404, "not_found");
        let deleted = api.delete(&path, &beta).await;
        assert_eq!((deleted.status, &deleted.body), (seen.status, &seen.body), "{path}");
    }
    let listed = api.get("/v1/subnets", &beta).await;
    let ids: Vec<&str> = listed.body["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [theirs.id()]);
    // Joining another project's subnet, by id or by name, finds only one's own.
    let r = api.post("/v1/vms", &beta, &vm_in("x", &id)).await;
    r.assert(422, "invalid_field");
    let ours = api.post("/v1/vms", &beta, &vm_in("y", "backend")).await;
    assert_eq!(ours.body["subnet"].as_str(), Some(theirs.id().as_str()));
    // Subnets belong to projects: an operator token is refused.
    let operator = api.token(None).await;
    api.post("/v1/subnets", &operator, &subnet("ops", "10.1.0.0/24")).await.assert(403, "forbidden");
    api.get(&format!("/v1/subnets/{id}"), &alpha).await.assert(200, "");
}

#[tokio::test]
async fn a_vm_joining_and_the_subnets_delete_are_decided_one_after_the_other() {
    let (_db, api) = setup().await;
    let (project, token) = api.project("alpha", 10).await;
    let id = api.post("/v1/subnets", &token, &subnet("backend", "10.9.0.0/24")).await.id();
    // A VM joining, not committed yet, holds the delete until it commits...
    let mut joining = api.pool.begin().await.unwrap();
    let spec = skein_progs::vm::Spec {
        name: "db",
        cores: 1,
        memory_mib: 256,
        disk_mib: 64,
        public_key: skein_spec::api::PUBLIC_KEY,
        subnet: Some("backend"),
    };
    skein_progs::vm::create(&mut joining, project, &spec, Default::default()).await.unwrap();
    let delete = {
        let (api, token, id) = (api.clone(), token.clone(), id.clone());
        tokio::spawn(async move { api.delete(&format!("/v1/subnets/{id}"), &token).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!delete.is_finished(), "the delete waits for the join's lock");
    joining.commit().await.unwrap();
    // ...and then sees the VM.
    delete.await.unwrap().assert(409, "subnet_has_vms");

    // The other order: a delete in flight holds the join, which then finds no subnet.
    let other = api.post("/v1/subnets", &token, &subnet("scratch", "10.7.0.0/24")).await.id();
    let other = other.parse::<skein_models::Ubid>().unwrap().uuid();
    let mut deleting = api.pool.begin().await.unwrap();
    skein_models::subnet::lock_live(&mut deleting, project.uuid(), Some(other), "").await.unwrap().unwrap();
    skein_models::subnet::delete(&mut deleting, other).await.unwrap();
    let join = {
        let (api, token) = (api.clone(), token.clone());
        tokio::spawn(async move { api.post("/v1/vms", &token, &vm_in("late", "scratch")).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!join.is_finished(), "the join waits for the delete's lock");
    deleting.commit().await.unwrap();
    join.await.unwrap().assert(422, "invalid_field");
    let late: i64 = sqlx::query_scalar("SELECT count(*) FROM vm WHERE name = 'late'").fetch_one(&api.pool).await.unwrap();
    assert_eq!(late, 0, "no VM joined a deleted subnet");
}

#[tokio::test]
async fn the_same_idempotency_key_makes_one_subnet() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 10).await;
    let body = subnet("backend", "10.9.0.0/24");
    let key = [("Idempotency-Key", "subnet-1")];
    let first = api.call_with("POST", "/v1/subnets", Some(&token), Some(&body), &key).await;
    first.assert(201, "");
    let again = api.call_with("POST", "/v1/subnets", Some(&token), Some(&body), &key).await;
    again.assert(201, "");
    assert_eq!(again.id(), first.id());
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    api.call_with("POST", "/v1/subnets", Some(&token), Some(&subnet("other", "10.8.0.0/24")), &key).await.assert(422, "idempotency_key_reused");
}

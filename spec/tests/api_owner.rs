//! The API for a VM's owner (issue 11): names free again once their
//! resource is destroyed, public keys parsed for real, bodies that are one
//! JSON object with each key once, host input held to the CLI's rules, and
//! stop/start/restart honoured or refused by the VM's state.

use serde_json::{json, Value};
use skein_engine::testing::TestDb;
use skein_models::{Ubid, UbidType};
use skein_spec::api::{vm_body, Api, PUBLIC_KEY};

const ECDSA_384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBPrHHi1RcWGA+EpdF8ik5dgxxVTPh1WJsDLxwxWFfLk3TBfmo4O5rpnjVWV798LwW/rpAfntq5B3u3O/uCEI4T8ptqvTIKyCMGXL/caBDYQ+XkslqEBkyNNt1bPd1FKjkQ== t@x";
const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCciyz9AZgbNOg2fIPZejKOb367HzbykkItfhiCxz5OiIx5msG6o195zcsE4D/Er5gLKWdUc+oQnSX3gZhn1+sptDz9Qq8NFkvYAh2lWM0SyMfpxTnhY75mFRWhfjM5ykPGMIfwhWFJ3PpSrT1DkaqEJfs1YavtijNwkCHBxbZTZofbFRd/VvJ1GRTVZvzWZqut063ymCnTpojPxKmosGyux9ynpouC+K0RzFkBFruKCuoAbfm2DunxO/CimQAf90oMWyr9msLsnU0wh0j0RBhzktpIdLuHFQjbo2ON3WFVHV11tS/SEglKaLdsHmSurR8da5niqVmLtvFUWhy81Waf t@x";
const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDV/JC+i6rvNxZMHj1S73iC3knBsujXbOY7FCQPDDB10e3Q0z/tHiHxAa3wBXmQ31pu9kqh2+ja3suMKZ9gDVlwvpIhjkuozvCFEq1l6eu3HKeRIhoy5TrZXYGWV3+4uHKYqcpFXsInfrM3J1v8CS4qdxOsfe/9l2XE8u0zTjZxbw== t@x";
const HOST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot used: the host is never reached\n-----END OPENSSH PRIVATE KEY-----\n";

async fn setup() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

async fn count(api: &Api, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&api.pool).await.unwrap()
}

fn host_body(name: &str) -> Value {
    json!({"name": name, "address": "192.0.2.10", "bootstrap_private_key": HOST_KEY, "checkup_secs": 30})
}

fn uuid(id: &str) -> uuid::Uuid {
    id.parse::<Ubid>().unwrap().uuid()
}

#[tokio::test]
async fn a_destroyed_vms_name_and_a_destroyed_hosts_name_are_free_again_and_their_history_stays() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let first = api.post("/v1/vms", &token, &vm_body("web-1")).await.id();
    api.post("/v1/vms", &token, &vm_body("web-1")).await.assert(409, "conflict");
    api.delete(&format!("/v1/vms/{first}"), &token).await.assert(202, "");
    // Meant to be destroyed is enough: its strand may still be at it.
    let second = api.post("/v1/vms", &token, &vm_body("web-1")).await;
    second.assert(201, "");
    assert_ne!(second.id(), first);
    api.post("/v1/vms", &token, &vm_body("web-1")).await.assert(409, "conflict");
    assert_eq!(count(&api, "SELECT count(*) FROM vm WHERE name = 'web-1'").await, 2, "the destroyed one's row stays");
    api.get(&format!("/v1/vms/{first}"), &token).await.assert(200, "");

    let operator = api.token(None).await;
    let host = api.post("/v1/hosts", &operator, &host_body("rack-1")).await.id();
    api.post("/v1/hosts", &operator, &host_body("rack-1")).await.assert(409, "conflict");
    api.delete(&format!("/v1/hosts/{host}"), &operator).await.assert(202, "");
    // Asked to go, it still holds its name until its strand has destroyed it.
    api.post("/v1/hosts", &operator, &host_body("rack-1")).await.assert(409, "conflict");
    sqlx::query("UPDATE vm_host SET state = 'destroyed' WHERE id = $1").bind(uuid(&host)).execute(&api.pool).await.unwrap();
    api.post("/v1/hosts", &operator, &host_body("rack-1")).await.assert(201, "");
    assert_eq!(count(&api, "SELECT count(*) FROM vm_host WHERE name = 'rack-1'").await, 2);
}

#[tokio::test]
async fn public_keys_are_parsed_and_a_bad_one_is_422_saying_what_is_wrong() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 10).await;
    let with_key = |name: &str, key: &str| {
        let mut b = vm_body(name);
        b["public_key"] = json!(key);
        b
    };
    for (key, words) in [
        ("ssh-ed25519 AAAA", "public_key is not a valid ssh-ed25519 key"),
        ("ssh-ed25519 ////", "public_key is not a valid ssh-ed25519 key"),
        (RSA_1024, "public_key is a 1024-bit RSA key; RSA keys must have at least 2048 bits"),
        (&PUBLIC_KEY.replacen("ssh-ed25519", "ssh-rsa", 1), "public_key is not a valid ssh-rsa key"),
    ] {
        let r = api.post("/v1/vms", &token, &with_key("web", key)).await;
        r.assert(422, "invalid_field");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(words), "{key}: {message}");
    }
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 0);
    for (name, key) in [("ed", PUBLIC_KEY), ("ecdsa", ECDSA_384), ("rsa", RSA_2048)] {
        api.post("/v1/vms", &token, &with_key(name, key)).await.assert(201, "");
    }
}

#[tokio::test]
async fn an_array_body_and_a_key_given_twice_are_400_and_write_nothing() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 10).await;
    let raw = |body: String| {
        axum::http::Request::post("/v1/vms")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let array = format!(r#"["arr1",1,256,64,"{PUBLIC_KEY}"]"#);
    let r = api.send(raw(array)).await;
    r.assert(400, "invalid_body");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("must be a JSON object"), "{}", r.body);
    let twice = format!(r#"{{"name":"a","name":"b","cores":1,"memory_mib":256,"disk_mib":64,"public_key":"{PUBLIC_KEY}"}}"#);
    let r = api.send(raw(twice)).await;
    r.assert(400, "invalid_body");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("duplicate key \"name\""), "{}", r.body);
    // Nested too: an operator's host body with a key twice inside a value is as ambiguous.
    let nested = format!(r#"{{"name":"a","cores":1,"memory_mib":256,"disk_mib":64,"public_key":"{PUBLIC_KEY}","subnet":null,"x":{{"k":1,"k":2}}}}"#);
    api.send(raw(nested)).await.assert(400, "invalid_body");
    assert_eq!(count(&api, "SELECT count(*) FROM vm").await, 0);
    // The same body with each key once is fine.
    let once = format!(r#"{{"name":"a","cores":1,"memory_mib":256,"disk_mib":64,"public_key":"{PUBLIC_KEY}"}}"#);
    api.send(raw(once)).await.assert(201, "");
}

#[tokio::test]
async fn host_input_is_held_to_the_rules_the_cli_uses() {
    let (_db, api) = setup().await;
    let operator = api.token(None).await;
    for (field, value, words) in [
        ("checkup_secs", json!(0), "checkup_secs must be between 1 and 86400"),
        ("root_dir", json!("/"), "root_dir must not be / itself"),
        ("root_dir", json!("/var/lib/sk'ein"), "root_dir must be a plain absolute path"),
        ("root_dir", json!("/tmp/$(reboot)"), "root_dir must be a plain absolute path"),
        ("root_dir", json!("/var/lib/../../etc"), "root_dir must not contain . or .. components"),
        ("address", json!("256.1.1.1"), "address is not an IPv4 address"),
        ("address", json!("host_1.example"), "address must be an IP address or a DNS name"),
    ] {
        let mut body = host_body("h1");
        body[field] = value;
        let r = api.post("/v1/hosts", &operator, &body).await;
        r.assert(422, "invalid_field");
        assert!(r.body["error"]["message"].as_str().unwrap().starts_with(words), "{body}: {}", r.body);
    }
    assert_eq!(count(&api, "SELECT (SELECT count(*) FROM vm_host) + (SELECT count(*) FROM sshable)").await, 0);
}

async fn semaphores(api: &Api, id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM semaphore WHERE strand_id = $1 ORDER BY name").bind(uuid(id)).fetch_all(&api.pool).await.unwrap()
}

async fn set_state(api: &Api, id: &str, state: &str) {
    sqlx::query("UPDATE vm SET state = $2 WHERE id = $1").bind(uuid(id)).bind(state).execute(&api.pool).await.unwrap();
}

#[tokio::test]
async fn stop_start_and_restart_are_honoured_or_refused_by_the_vms_state() {
    let (_db, api) = setup().await;
    let (_, token) = api.project("alpha", 5).await;
    let (_, beta) = api.project("beta", 5).await;
    let id = api.post("/v1/vms", &token, &vm_body("web")).await.id();
    let act = |verb: &'static str| {
        let (api, token, id) = (api.clone(), token.clone(), id.clone());
        async move { api.call("POST", &format!("/v1/vms/{id}/{verb}"), Some(&token), None).await }
    };

    // Still waiting for a host: a stop or restart cannot be honoured; say so.
    for verb in ["stop", "restart"] {
        let r = act(verb).await;
        r.assert(409, "vm_not_placed");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("still waiting for a host"), "{}", r.body);
    }
    // A start is what it is doing already: nothing to send.
    act("start").await.assert(202, "");
    assert!(semaphores(&api, &id).await.is_empty(), "nothing left pending");

    // Running (as its strand would have set it): stop is taken, once.
    set_state(&api, &id, "running").await;
    for _ in 0..2 {
        let r = act("stop").await;
        r.assert(202, "");
        assert_eq!((r.body["state"].as_str(), r.body["desired_state"].as_str()), (Some("running"), Some("stopped")));
    }
    assert_eq!(semaphores(&api, &id).await, ["stop"]);
    let r = act("restart").await;
    r.assert(409, "vm_not_running");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("start it instead"), "{}", r.body);

    // Stopped: start it again.
    sqlx::query("DELETE FROM semaphore").execute(&api.pool).await.unwrap();
    set_state(&api, &id, "stopped").await;
    let r = act("start").await;
    r.assert(202, "");
    assert_eq!(r.body["desired_state"], "running");
    assert_eq!(semaphores(&api, &id).await, ["start"]);

    // Running again: restart is taken.
    sqlx::query("DELETE FROM semaphore").execute(&api.pool).await.unwrap();
    set_state(&api, &id, "running").await;
    act("restart").await.assert(202, "");
    assert_eq!(semaphores(&api, &id).await, ["restart"]);

    // Another project's token cannot touch it; nobody can once it is destroyed.
    api.call("POST", &format!("/v1/vms/{id}/stop"), Some(&beta), None).await.assert(404, "not_found");
    api.delete(&format!("/v1/vms/{id}"), &token).await.assert(202, "");
    for verb in ["stop", "start", "restart"] {
        act(verb).await.assert(409, "vm_destroyed");
    }
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM event WHERE subject_id = $1 ORDER BY created_at, id")
        .bind(uuid(&id))
        .fetch_all(&api.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["created", "stop-requested", "start-requested", "restart-requested", "destroy-requested"]);
    let unknown = Ubid::generate(UbidType::Vm);
    api.call("POST", &format!("/v1/vms/{unknown}/stop"), Some(&token), None).await.assert(404, "not_found");
}

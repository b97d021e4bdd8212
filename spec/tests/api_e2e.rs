//! The API end to end: an operator adds a real sshd test host through it,
//! a project creates a VM that boots under real respirate workers, follows
//! it, destroys it, while another project never sees it; the host is then
//! drained (and stays drained through an outage) and destroyed. And the
//! `skein` binary's token and project commands with the API served inside
//! `skein up`, over real HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_spec::api::{vm_body, Api, Reply};
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::procs::Proc;
use skein_spec::world::World;

/// Poll `path` until `done` holds for its body; meanwhile `also` runs each round.
async fn poll(api: &Api, path: &str, token: &str, what: &str, limit: Duration, worker: &Proc, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + limit;
    loop {
        let r = api.get(path, token).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        if done(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < until, "{path} never got {what}: {}\nworker log:\n{}", r.body, worker.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |b: &Value| b["state"] == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_is_created_followed_and_destroyed_through_the_api_and_the_host_drained_and_destroyed() {
    let w = World::new().await;
    let api = Api::with_secret(w.db.pool.clone(), w.secret.clone());
    let operator = api.token(None).await;
    let (_, alpha) = api.project("alpha", 3).await;
    let (_, beta) = api.project("beta", 3).await;

    let (host_private, host_public) = generate_keypair();
    let mut h = LocalHost::start(&host_public);
    skein_spec::guest_image::seed(h.root_dir());
    let add = json!({
        "name": "api-host", "address": h.addr().to_string(), "port": h.port(), "user": "root",
        "bootstrap_private_key": host_private, "root_dir": h.root_dir().display().to_string(), "checkup_secs": 1,
    });
    let added = api.post("/v1/hosts", &operator, &add).await;
    added.assert(201, "");
    let host = format!("/v1/hosts/{}", added.id());
    let worker = w.worker();
    poll(&api, &host, &operator, "accepting", Duration::from_secs(180), &worker, state_is("accepting")).await;

    let created = api.post("/v1/vms", &alpha, &vm_body("web-1")).await;
    created.assert(201, "");
    assert_eq!(created.body["state"], "creating", "create answers at once; the strand does the work");
    let vm = format!("/v1/vms/{}", created.id());
    let progress = format!("{vm}/progress");
    let invisible = |r: Reply| r.assert(404, "not_found").status;

    let until = Instant::now() + Duration::from_secs(240);
    let mut labels = Vec::new();
    loop {
        invisible(api.get(&vm, &beta).await);
        invisible(api.get(&progress, &beta).await);
        let p = api.get(&progress, &alpha).await;
        if let Some(label) = p.body["strand"]["label"].as_str() {
            if labels.last().map(String::as_str) != Some(label) {
                labels.push(label.to_string());
            }
        }
        if p.body["state"] == "running" {
            break;
        }
        assert!(Instant::now() < until, "never running: {}\nworker log:\n{}", p.body, worker.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(labels.last().map(String::as_str), Some("Running"), "progress follows the strand: {labels:?}");
    let got = api.get(&vm, &alpha).await;
    assert_eq!(got.body["state"], "running");
    // Where its owner connects, as its host reported it at boot.
    let ssh = &got.body["ssh"];
    assert_eq!((&ssh["host"], &ssh["user"]), (&json!(h.addr().to_string()), &json!("root")), "{}", got.body);
    let port = std::fs::read_to_string(h.root_dir().join("vms").join(created.id()).join("ssh.port")).unwrap();
    assert_eq!(ssh["port"].to_string(), port.trim(), "the port its host forwards");
    let as_operator = api.get(&vm, &operator).await;
    assert_eq!(as_operator.body["host"], added.id().as_str(), "operators see where it runs");

    // Its console: what the guest printed while it booted, to its owner only.
    let console = api.get(&format!("{vm}/console"), &alpha).await;
    console.assert(200, "");
    assert!(console.body["text"].as_str().unwrap().contains("skein-guest: ready"), "{}", console.body);
    assert!(console.body["size"].as_u64().unwrap() > 0);
    let short = api.get(&format!("{vm}/console?bytes=10"), &alpha).await;
    assert_eq!((short.body["text"].as_str().unwrap().len(), short.body["truncated"].as_bool()), (10, Some(true)), "{}", short.body);
    invisible(api.get(&format!("{vm}/console"), &beta).await);
    let out = Command::new(skein_spec::binary("skein"))
        .args(["vm", "console", &created.id(), "--bytes", "65536", "--database-url", &w.db.url()])
        .env("SKEIN_SECRET_KEY", w.secret.to_hex())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("skein-guest: ready"), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains('\u{1b}'), "terminal escapes are shown escaped");

    // Restart, stop, start: each done by its strand; what cannot be done now is refused.
    let action = |verb: &str| format!("{vm}/{verb}");
    let has_event = |b: &Value, kind: &str| b["events"].as_array().unwrap().iter().any(|e| e["kind"] == kind);
    api.call("POST", &action("restart"), Some(&alpha), None).await.assert(202, "");
    poll(&api, &progress, &alpha, "restarted", Duration::from_secs(180), &worker, |b| b["state"] == "running" && has_event(b, "restarting")).await;
    api.call("POST", &action("stop"), Some(&alpha), None).await.assert(202, "");
    poll(&api, &progress, &alpha, "stopped", Duration::from_secs(60), &worker, state_is("stopped")).await;
    api.call("POST", &action("restart"), Some(&alpha), None).await.assert(409, "vm_not_running");
    api.call("POST", &action("start"), Some(&alpha), None).await.assert(202, "");
    poll(&api, &progress, &alpha, "running again", Duration::from_secs(180), &worker, |b| b["state"] == "running" && has_event(b, "starting")).await;

    invisible(api.delete(&vm, &beta).await);
    assert_eq!(api.get(&vm, &alpha).await.body["state"], "running", "beta's DELETE did nothing");
    api.delete(&vm, &alpha).await.assert(202, "");
    let done = poll(&api, &progress, &alpha, "destroyed", Duration::from_secs(60), &worker, state_is("destroyed")).await;
    invisible(api.get(&vm, &beta).await);
    let kinds: Vec<&str> = done["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[..4], ["created", "placed", "launched", "running"]);
    assert_eq!(kinds[kinds.len() - 2..], ["destroy-requested", "destroyed"]);
    for kind in ["restart-requested", "restarting", "stop-requested", "stopped", "start-requested", "starting"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    assert!(!done.to_string().contains(&added.id()), "a project is not told which host ran its VM: {done}");
    let seen_by_operator = api.get(&progress, &operator).await;
    assert!(seen_by_operator.body.to_string().contains(&added.id()), "operators are");
    let host_row = api.get(&host, &operator).await;
    assert_eq!((host_row.body["used_cores"].as_i64(), host_row.body["used_memory_mib"].as_i64()), (Some(0), Some(0)), "capacity returned");

    // Drained: no new placements; through an outage it comes back draining, not accepting.
    api.call("POST", &format!("{host}/drain"), Some(&operator), None).await.assert(202, "");
    poll(&api, &host, &operator, "draining", Duration::from_secs(30), &worker, state_is("draining")).await;
    let waiting = api.post("/v1/vms", &alpha, &vm_body("web-2")).await.id();
    h.kill_sshd();
    poll(&api, &host, &operator, "unreachable", Duration::from_secs(60), &worker, state_is("unreachable")).await;
    h.start_sshd();
    let back = poll(&api, &host, &operator, "reachable", Duration::from_secs(60), &worker, |b| b["missed_checks"] == 0).await;
    assert_eq!(back["state"], "draining", "a drained host stays drained after an outage");
    let p = api.get(&format!("/v1/vms/{waiting}/progress"), &alpha).await;
    assert_eq!(p.body["state"], "waiting", "nothing is placed on a draining host: {}", p.body);
    // A VM waiting for a host cannot be stopped yet, nor show a console: said at once.
    api.call("POST", &format!("/v1/vms/{waiting}/stop"), Some(&alpha), None).await.assert(409, "vm_not_placed");
    api.get(&format!("/v1/vms/{waiting}/console"), &alpha).await.assert(409, "vm_not_placed");

    // Destroyed once nothing runs there.
    api.delete(&format!("/v1/vms/{waiting}"), &alpha).await.assert(202, "");
    poll(&api, &format!("/v1/vms/{waiting}"), &alpha, "destroyed", Duration::from_secs(60), &worker, state_is("destroyed")).await;
    api.delete(&host, &operator).await.assert(202, "");
    poll(&api, &host, &operator, "destroyed", Duration::from_secs(60), &worker, state_is("destroyed")).await;
}

/// Run the `skein` binary to completion; its stdout, or a failure with stderr.
fn skein(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(skein_spec::binary("skein")).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "skein {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/1.1 request over a socket: (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn skein_up_serves_the_api_and_skein_token_makes_and_revokes_tokens() {
    let db = skein_engine::testing::TestDb::new().await;
    let url = db.url();
    let env = [("SKEIN_SECRET_KEY", "22".repeat(32))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let made: Value = serde_json::from_str(&skein(&["project", "create", "acme", "--vm-quota", "2", "--json", "--yes", "--database-url", &url], &env)).unwrap();
    assert!(made["id"].as_str().unwrap().starts_with("pj"));
    assert!(skein(&["project", "list", "--database-url", &url], &env).contains("acme"));
    let token: Value =
        serde_json::from_str(&skein(&["token", "create", "--project", "acme", "--name", "ci", "--json", "--yes", "--database-url", &url], &env)).unwrap();
    let secret = token["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("skein_"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_token WHERE hash = sha256($1::text::bytea)")
        .bind(&secret)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the hash is stored, and it is the secret's");

    let mut up = Command::new(skein_spec::binary("skein"))
        .args(["up", "--no-demo", "--api-addr", "127.0.0.1:0", "--database-url", &url])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("skein up ended before saying where the api listens").unwrap();
        if let Some(rest) = line.strip_prefix("api: listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let (status, doc) = http(&addr, "GET", "/openapi.json", None);
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
    let (status, list) = http(&addr, "GET", "/v1/vms", Some(&secret));
    assert_eq!((status, &list), (200, &json!({"items": [], "next": null})));

    let revoked = skein(&["token", "revoke", token["id"].as_str().unwrap(), "--yes", "--database-url", &url], &env);
    assert!(revoked.contains("revoked"), "{revoked}");
    let (status, err) = http(&addr, "GET", "/v1/vms", Some(&secret));
    assert_eq!((status, err["error"]["code"].as_str()), (401, Some("unauthenticated")));
    up.kill().unwrap();
    up.wait().unwrap();
}

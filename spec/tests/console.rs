//! The operator console's commands, run as operators run them (the real
//! `skein` binary, one-shot) against a real database: what they show, what
//! they change (and audit), and how they refuse bad input.

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use skein_engine::testing::Harness;
use skein_engine::enqueue;
use skein_models::{page, Ubid, UbidType};
use skein_progs::demo::{census, counter};

struct Console {
    h: Harness,
}

impl Console {
    async fn new() -> Console {
        Console { h: Harness::new(skein_progs::registry()).await }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(skein_spec::binary("skein"))
            .args(args)
            .args(["--database-url", &self.h.db.url(), "--operator", "alice"])
            .env("SKEIN_HOME", std::env::temp_dir().join("skein-console-test-home"))
            .stdin(Stdio::null())
            .output()
            .expect("run skein")
    }

    /// Run a command that must succeed and print JSON; return the JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert!(out.status.success(), "skein {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Run a command that must succeed; return its text.
    fn text(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "skein {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Run a command that must fail; return its error text.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "skein {args:?} should have failed, printed: {}", String::from_utf8_lossy(&out.stdout));
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        stderr
    }

    async fn sql_i64(&self, q: &str) -> i64 {
        sqlx::query_scalar(q).fetch_one(self.h.pool()).await.unwrap()
    }

    async fn counters(&self, n: u32) -> Vec<Ubid> {
        let mut conn = self.h.pool().acquire().await.unwrap();
        enqueue::start_many(&mut conn, (0..n).map(|i| counter::Frame { upto: i, at: 0 }), counter::Label::Count).await.unwrap()
    }

    async fn set(&self, id: Ubid, assignments: &str) {
        sqlx::query(&format!("UPDATE strand SET {assignments} WHERE id = $1")).bind(id.uuid()).execute(self.h.pool()).await.unwrap();
    }
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn strand_list_filters_sorts_pages_and_counts() {
    let c = Console::new().await;
    let all = c.counters(25).await;
    let (failing, leased, napping, old) = (all[0], all[1], all[2], all[3]);
    c.set(failing, "try = 4, last_error = 'disk on fire', last_error_at = now()").await;
    c.set(leased, "lease = now() + interval '1 hour', lease_holder = 'worker-7'").await;
    c.set(napping, "schedule = now() + interval '1 hour'").await;
    c.set(old, "created_at = now() - interval '3 days'").await;
    let doubler = {
        let mut conn = c.h.pool().acquire().await.unwrap();
        enqueue::start(&mut conn, skein_progs::demo::doubler::Frame { n: 1 }, skein_progs::demo::doubler::Label::Start).await.unwrap()
    };

    let by = |args: &[&str]| ids(&c.json(&[&["strand", "list"], args].concat()), "strands");
    assert_eq!(by(&["--state", "failing"]), [failing.to_string()]);
    assert_eq!(by(&["--state", "leased"]), [leased.to_string()]);
    assert_eq!(by(&["--state", "napping"]), [napping.to_string()]);
    assert_eq!(by(&["--min-try", "3"]), [failing.to_string()]);
    assert_eq!(by(&["--older-than", "2d"]), [old.to_string()]);
    assert_eq!(by(&["--prog", "Demo::Doubler"]), [doubler.to_string()]);
    assert_eq!(by(&["--prog", "Demo::Counter", "--label", "Count", "--sort", "try", "--limit", "1"]), [failing.to_string()]);
    let due = c.json(&["strand", "list", "--state", "due", "--limit", "1000"]);
    assert_eq!(due["total"], 23, "25 counters and a doubler, less the failing, leased and napping ones");

    // Pages: 26 strands, 10 a page, in schedule order with no overlap.
    let p1 = c.json(&["strand", "list", "--limit", "10"]);
    let p3 = c.json(&["strand", "list", "--limit", "10", "--page", "3"]);
    assert_eq!((p1["total"].as_i64(), p1["pages"].as_i64()), (Some(26), Some(3)));
    assert_eq!(ids(&p3, "strands").len(), 6);
    let mut seen: Vec<String> = (1..=3).flat_map(|p| ids(&c.json(&["strand", "list", "--limit", "10", "--page", &p.to_string()]), "strands")).collect();
    assert_eq!(seen.len(), 26);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 26, "pages do not overlap");
    let text = c.text(&["strand", "list", "--limit", "10"]);
    assert!(text.contains("1-10 of 26; next: --page 2"), "{text}");
    let text = c.text(&["strand", "list", "--state", "failing"]);
    assert!(text.contains(&failing.to_string()) && text.contains("disk on fire"), "the failing strand's error is on its line: {text}");

    let counts = c.json(&["strand", "counts"]);
    let row = counts["counts"].as_array().unwrap().iter().find(|r| r["prog"] == "Demo::Counter").unwrap().clone();
    assert_eq!((row["total"].as_i64(), row["failing"].as_i64(), row["leased"].as_i64(), row["napping"].as_i64()), (Some(25), Some(1), Some(1), Some(1)));
    assert_eq!(counts["total"], 26);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = Console::new().await;
    let [id] = c.counters(1).await[..] else { unreachable!() };
    let vm_id = Ubid::generate(UbidType::Vm);
    let mut typo = id.to_string();
    typo.replace_range(5..6, if &typo[5..6] == "a" { "b" } else { "a" });

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["strand".into(), "show".into(), vm_id.to_string()], "no strand"),
        (vec!["strand".into(), "show".into(), typo.clone()], "checksum"),
        (vec!["strand".into(), "show".into(), "not-an-id".into()], "26 characters"),
        (vec!["page".into(), "show".into(), vm_id.to_string()], "expected a page id"),
        (vec!["host".into(), "show".into(), id.to_string()], "vm host"),
        (vec!["strand".into(), "list".into(), "--state".into(), "sleepy".into()], "due, napping, leased, failing, exited"),
        (vec!["strand".into(), "list".into(), "--older-than".into(), "5parsecs".into()], "unknown unit"),
        (vec!["strand".into(), "list".into(), "--limit".into(), "0".into()], "1..=1000"),
        (vec!["strand".into(), "list".into(), "--prog".into(), "Vm::Nexxus".into()], "unknown prog \"Vm::Nexxus\": one of"),
        (vec!["strand".into(), "list".into(), "--prog".into(), "Vm::Nexus".into(), "--label".into(), "Sleep".into()], "Vm::Nexus has no label \"Sleep\""),
        (vec!["strand".into(), "incr".into(), id.to_string(), "stop".into(), "--yes".into()], "Demo::Counter does not answer semaphore \"stop\""),
        (vec!["strand".into(), "reschedule".into(), id.to_string(), "tomorrowish".into(), "--yes".into()], "RFC 3339"),
        (vec!["strand".into(), "retry".into(), id.to_string(), "--yes".into()], "is not failing"),
        (vec!["strand".into(), "wake".into(), id.to_string()], "pass --yes to confirm"),
        (vec!["strand".into(), "frobnicate".into()], "unrecognized subcommand"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = c.refused(&args);
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in: {err}");
    }
    let changed = c.sql_i64("SELECT (SELECT count(*) FROM operator_audit) + (SELECT count(*) FROM semaphore)").await;
    assert_eq!(changed, 0, "no refused command changed or audited anything");
}

#[tokio::test]
async fn strand_show_has_schedule_lease_error_stack_semaphores_and_family() {
    let c = Console::new().await;
    let census = c.h.start(census::Frame { districts: vec![2, 3], ..Default::default() }, census::Label::Start).await;
    c.h.step(census).await; // buds two counters, hops to Tally
    c.h.incr(census, "finish").await;
    c.set(census, "lease = now() + interval '5 minutes', lease_holder = 'worker-9', try = 2, last_error = 'flaky\nsecond line'").await;

    let shown = c.json(&["strand", "show", &census.to_string()]);
    assert_eq!(shown["strand"]["id"], census.to_string());
    assert_eq!(shown["strand"]["label"], "Tally");
    assert_eq!(shown["state"], "leased");
    assert_eq!(shown["strand"]["lease_holder"], "worker-9");
    assert_eq!(shown["semaphores"][0]["name"], "finish");
    let children = shown["descendants"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|d| d["prog"] == "Demo::Counter" && d["depth"] == 1 && d["parent_id"] == census.to_string()));
    assert_eq!(shown["strand"]["stack"][0]["districts"], serde_json::json!([2, 3]));

    let text = c.text(&["strand", "show", &census.to_string()]);
    for needle in ["Demo::Census at Tally", "held by worker-9 until in ", "last error: flaky…", "semaphores: finish", "#0 Demo::Census at Tally", "\"districts\"", "children:", "└ "] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let child = children[0]["id"].as_str().unwrap();
    let child_text = c.text(&["strand", "show", child]);
    assert!(child_text.contains(&format!("parent: {census} (Demo::Census at Tally, leased)")), "{child_text}");
}

#[tokio::test]
async fn steering_commands_change_the_strand_and_are_audited() {
    let c = Console::new().await;
    let census = c.h.start(census::Frame { districts: vec![], ..Default::default() }, census::Label::Wait).await;
    c.set(census, "schedule = now() + interval '1 hour'").await;
    let sched = || async { c.sql_i64(&format!("SELECT extract(epoch FROM schedule - now())::int8 FROM strand WHERE id = '{}'", census.uuid())).await };

    c.json(&["strand", "wake", &census.to_string(), "--yes"]);
    assert!(sched().await <= 0, "woken: due now");
    c.json(&["strand", "reschedule", &census.to_string(), "+2h", "--yes"]);
    assert!((7100..=7200).contains(&sched().await), "rescheduled two hours out");
    c.json(&["strand", "reschedule", &census.to_string(), "2020-01-01T00:00:00Z", "--yes"]);
    assert!(sched().await < -1_000_000, "an absolute time is taken as given");

    c.json(&["strand", "incr", &census.to_string(), "finish", "--yes"]);
    c.json(&["strand", "incr", &census.to_string(), "finish", "--yes"]);
    assert_eq!(c.h.sems(census).await, ["finish", "finish"]);
    c.json(&["strand", "decr", &census.to_string(), "finish", "--yes"]);
    assert_eq!(c.h.sems(census).await, ["finish"], "decr takes back one increment");

    c.set(census, "try = 3, last_error = 'boom', schedule = now() + interval '1 hour'").await;
    c.json(&["strand", "retry", &census.to_string(), "--yes"]);
    assert!(sched().await <= 0, "retried: due now");
    assert_eq!(c.sql_i64(&format!("SELECT try::int8 FROM strand WHERE id = '{}'", census.uuid())).await, 3, "the failure count stays");
    c.set(census, "last_error = NULL, try = 0").await;

    // One step here: the census sees `finish` and exits.
    let stepped = c.json(&["strand", "step", &census.to_string(), "--yes"]);
    assert_eq!(stepped["outcome"]["flow"], "exit", "{stepped}");
    assert_eq!(stepped["label"], "Wait");
    assert!(c.h.try_strand(census).await.is_none(), "it exited and left the hot table");
    let archived = c.text(&["strand", "show", &census.to_string()]);
    assert!(archived.contains("exited") && archived.contains("Demo::Census at Wait"), "{archived}");

    let other = c.h.start(census::Frame { districts: vec![], ..Default::default() }, census::Label::Wait).await;
    let text = c.text(&["strand", "destroy", &other.to_string(), "--yes"]);
    assert!(text.contains("set destroy on strand"), "{text}");
    assert_eq!(c.h.sems(other).await, ["destroy"]);

    let audit = c.json(&["audit", "--limit", "100"]);
    let entries = audit["audit"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["wake", "reschedule", "reschedule", "incr", "incr", "decr", "retry", "step", "destroy"]);
    assert!(entries.iter().all(|e| e["operator"] == "alice"));
    assert!(entries.iter().take(8).skip(1).all(|e| e["target_id"] == census.to_string()));
    assert_eq!(entries[0]["target_id"], other.to_string());
    let only = c.json(&["audit", "--target", &other.to_string()]);
    assert_eq!(only["audit"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn pages_are_listed_shown_and_resolved_once() {
    let c = Console::new().await;
    let mut conn = c.h.pool().acquire().await.unwrap();
    page::raise(&mut conn, "host-x-down", "host x is unreachable", "critical", &serde_json::json!({"misses": 3})).await.unwrap();
    page::raise(&mut conn, "old", "an old problem", "warning", &serde_json::json!({})).await.unwrap();
    page::resolve(&mut conn, "old").await.unwrap();
    drop(conn);

    let open = c.json(&["page", "list"]);
    assert_eq!(open["open"], 1);
    assert_eq!(open["pages"].as_array().unwrap().len(), 1);
    let all = c.json(&["page", "list", "--all"]);
    assert_eq!(all["pages"].as_array().unwrap().len(), 2);
    let id = open["pages"][0]["id"].as_str().unwrap().to_string();
    let shown = c.text(&["page", "show", &id]);
    assert!(shown.contains("host x is unreachable") && shown.contains("\"misses\": 3") && shown.contains("state: open"), "{shown}");

    c.text(&["page", "resolve", &id, "--yes"]);
    assert_eq!(c.json(&["page", "list"])["open"], 0);
    assert!(c.refused(&["page", "resolve", &id, "--yes"]).contains("resolved already"));
    let audit = c.json(&["audit"]);
    assert_eq!(audit["audit"][0]["action"], "resolve-page");
    assert_eq!(audit["audit"][0]["target_id"], id);
}

#[tokio::test]
async fn hosts_vms_and_ubids_show_their_strands_and_events() {
    let c = Console::new().await;
    let secret = skein_progs::ssh::keys::SecretKey::random();
    let project = Ubid::generate(UbidType::Project);
    let mut tx = c.h.pool().begin().await.unwrap();
    skein_models::project::insert(&mut tx, project.uuid(), "acme", 5).await.unwrap();
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot used\n-----END OPENSSH PRIVATE KEY-----\n";
    let new = skein_progs::host::NewHost { name: "rack-1", address: "192.0.2.7", port: 22, user: "root", bootstrap_private_key: key, root_dir: "/var/lib/skein" };
    let host = skein_progs::host::add(&mut tx, &secret, &new, Default::default()).await.unwrap();
    tx.commit().await.unwrap();

    let hosts = c.json(&["host", "list"]);
    assert_eq!(hosts["hosts"][0]["host"]["name"], "rack-1");
    assert_eq!(hosts["hosts"][0]["strand"]["label"], "Start");
    let shown = c.text(&["host", "show", &host.to_string()]);
    assert!(shown.contains("rack-1 (new)") && shown.contains("Vm::HostNexus at Start (due"), "{shown}");

    let key = skein_spec::api::PUBLIC_KEY;
    let out = c.text(&["vm", "create", "--project", "acme", "--name", "web-1", "--public-key", key, "--yes"]);
    assert!(out.contains("vm web-1 created as vm"), "{out}");
    let vms = c.json(&["vm", "list", "--project", "acme"]);
    let vm_id = vms["vms"][0]["vm"]["id"].as_str().unwrap().to_string();
    assert_eq!(vms["vms"][0]["strand"]["prog"], "Vm::Nexus");
    let vm = c.json(&["vm", "show", &vm_id]);
    assert_eq!(vm["vm"]["state"], "creating");
    assert_eq!(vm["events"][0]["kind"], "created");
    assert!(c.text(&["vm", "show", &vm_id]).contains("Vm::Nexus at Start"));

    // Refused creates write nothing.
    assert!(c.refused(&["vm", "create", "--project", "acme", "--name", "web-2", "--cores", "0", "--public-key", key, "--yes"]).contains("--cores must be between 1 and 64"));
    assert!(c.refused(&["vm", "create", "--project", "nope", "--name", "web-2", "--public-key", key, "--yes"]).contains("no project \"nope\""));
    assert!(c.refused(&["vm", "create", "--project", "acme", "--name", "web-1", "--public-key", key, "--yes"]).contains("exists"));
    assert_eq!(c.sql_i64("SELECT count(*) FROM vm").await, 1);
    assert_eq!(c.sql_i64("SELECT vm_count::int8 FROM project").await, 1, "refused creates took no quota");

    let decoded = c.json(&["ubid", &vm_id]);
    assert_eq!(decoded["type"], "vm");
    assert_eq!(decoded["row"]["name"], "web-1");
    assert_eq!(decoded["strand"]["label"], "Start");
    let made = chrono::DateTime::parse_from_rfc3339(decoded["made_at"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - made.with_timezone(&chrono::Utc)).num_seconds().abs() < 60, "the time part is when it was made");
    let text = c.text(&["ubid", &host.to_string()]);
    assert!(text.contains("type: vm host (vh)") && text.contains("`host show"), "{text}");

    // The console's one-shot form runs several commands in order.
    let out = c.text(&["console", "-c", &format!("ubid {vm_id}; strand counts")]);
    assert!(out.contains("type: vm (vm)") && out.contains("Vm::Nexus"), "{out}");
}

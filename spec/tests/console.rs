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
    c.h.incr(census, census::Sem::Finish).await;
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
    c.json(&["strand", "reschedule", &census.to_string(), "2099-01-01T00:00:00Z", "--yes"]);
    assert!(sched().await > 1_000_000, "an absolute time is taken as given");

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
    assert_eq!(vm["project"], "acme", "vm show names the project");
    assert!(c.text(&["vm", "show", &vm_id]).contains("project: acme (pj"), "the text too");
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

    // A destroyed host is history: listed only when asked for.
    sqlx::query("UPDATE vm_host SET state = 'destroyed'").execute(c.h.pool()).await.unwrap();
    assert_eq!(c.json(&["host", "list"])["hosts"].as_array().unwrap().len(), 0);
    assert_eq!(c.json(&["host", "list", "--all"])["hosts"][0]["host"]["name"], "rack-1");

    // The console's one-shot form runs several commands in order.
    let out = c.text(&["console", "-c", &format!("ubid {vm_id}; strand counts")]);
    assert!(out.contains("type: vm (vm)") && out.contains("Vm::Nexus"), "{out}");
}

/// Help is an answer (stdout, exit 0); a mistake is one message on stderr
/// (no doubled `error:`, no usage line naming the prompt); a closed stdout
/// ends a command quietly; exit codes and times say what happened.
#[tokio::test]
async fn the_console_answers_help_mistakes_closed_pipes_and_exit_codes_truthfully() {
    let c = Console::new().await;
    for help in ["help", "strand list --help", "help strand"] {
        let out = c.text(&["console", "-c", help]);
        assert!(out.contains("Usage:") && (out.contains("strand") || out.contains("--older-than")), "{help}: {out}");
    }
    let err = c.refused(&["console", "-c", "frobnicate now"]);
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("unrecognized subcommand 'frobnicate'") && !err.contains("Usage:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one message: {err}");

    // Every printing command, its reader gone before it prints: no panic, exit 0.
    let [id] = c.counters(1).await[..] else { unreachable!() };

    // Commands run in order, and the first that fails stops the rest.
    let err = c.refused(&["console", "--yes", "-c", &format!("strand wake {id}; frobnicate; strand wake {id}")]);
    assert!(err.contains("unrecognized subcommand 'frobnicate'"), "{err}");
    assert_eq!(c.sql_i64("SELECT count(*) FROM operator_audit WHERE action = 'wake'").await, 1, "only the wake before the mistake ran");
    for args in [
        vec!["console", "-c", "page list; strand counts; page list"],
        vec!["strand", "list"],
        vec!["strand", "show", &id.to_string()],
        vec!["audit"],
        vec!["project", "list"],
        vec!["strand", "list", "--json"],
    ] {
        let mut child = Command::new(skein_spec::binary("skein"))
            .args(&args)
            .args(["--database-url", &c.h.db.url()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader leaves, like `| head -0`
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{args:?}: {:?} {stderr}", out.status);
    }

    // A time in the past or not a time at all: refused, with the formats named.
    for bad in ["1970-01-01T00:00:00Z", "-13-45T99:00:00Z", "soonish"] {
        let err = c.refused(&["strand", "reschedule", &id.to_string(), bad, "--yes"]);
        assert!(err.contains("+10m") && err.contains("RFC 3339"), "{bad}: {err}");
    }
    assert!(c.refused(&["strand", "reschedule", &id.to_string(), "1970-01-01T00:00:00Z", "--yes"]).contains("in the past"));

    // A step that fails is a command that fails (and is audited all the same).
    c.set(id, "stack = '[{\"not\": \"a counter frame\"}]'").await;
    let err = c.refused(&["strand", "step", &id.to_string(), "--yes"]);
    assert!(err.contains("FAILED"), "{err}");
    assert_eq!(c.sql_i64("SELECT count(*) FROM operator_audit WHERE action = 'step'").await, 1);
    assert_eq!(c.sql_i64("SELECT count(*) FROM operator_audit WHERE action = 'reschedule'").await, 0);

    // --json is one document, project list's too.
    let out = Command::new(skein_spec::binary("skein")).args(["project", "list", "--json", "--database-url", &c.h.db.url()]).output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(doc["projects"].is_array(), "{doc}");
}

/// A name that would colour the terminal or forge an audit row is refused;
/// and whatever the database holds (old rows, page summaries, errors) is
/// printed with its control characters escaped.
#[tokio::test]
async fn operator_names_are_checked_and_printed_text_cannot_forge_lines() {
    let c = Console::new().await;
    let evil = "evil\u{1b}[31mRED\u{1b}[0m\nfake line";
    let [id] = c.counters(1).await[..] else { unreachable!() };
    let out = Command::new(skein_spec::binary("skein"))
        .args(["strand", "wake", &id.to_string(), "--yes", "--database-url", &c.h.db.url(), "--operator", evil])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("operator name") && stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && stderr.trim_end().lines().count() == 1, "the refusal itself is escaped: {stderr}");
    assert_eq!(c.sql_i64("SELECT count(*) FROM operator_audit").await, 0);

    // Rows written before names were checked, and text from elsewhere.
    skein_models::audit::record(&mut c.h.pool().acquire().await.unwrap(), evil, "wake", Some(id.uuid()), &serde_json::json!({}))
        .await
        .unwrap();
    page::raise(&mut c.h.pool().acquire().await.unwrap(), "evil", evil, "error", &serde_json::json!({"why": evil})).await.unwrap();
    c.set(id, &format!("last_error = E'{}'", evil.replace('\u{1b}', "\\x1b").replace('\n', "\\n"))).await;
    for args in [vec!["audit"], vec!["page", "list"], vec!["strand", "list"], vec!["strand", "show", &id.to_string()]] {
        let text = c.text(&args);
        assert!(!text.contains('\u{1b}'), "{args:?} printed an escape sequence: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with("fake line")), "{args:?} printed a forged line: {text}");
    }
    let page_id = c.json(&["page", "list"])["pages"][0]["id"].as_str().unwrap().to_string();
    let shown = c.text(&["page", "show", &page_id]);
    assert!(!shown.contains('\u{1b}') && shown.contains("evil\\u{1b}[31mRED"), "{shown}");
    assert!(!shown.lines().any(|l| l.starts_with("fake line")), "{shown}");
}

/// Exited strands are history an operator can browse: from the archive,
/// filtered by prog, label, exit time and exit value, latest first; and an
/// exit's time is when it was written, not when its step began.
#[tokio::test]
async fn exited_strands_are_listed_from_the_archive_with_filters() {
    let c = Console::new().await;
    let exited = c.counters(3).await;
    for id in &exited {
        c.h.run(*id).await;
    }
    assert_eq!(c.sql_i64("SELECT count(*) FROM strand").await, 0, "all exited into the archive");
    sqlx::query("UPDATE strand_archive SET exited_at = now() - interval '3 hours' WHERE id = $1").bind(exited[0].uuid()).execute(c.h.pool()).await.unwrap();

    let all = c.json(&["strand", "list", "--state", "exited"]);
    assert_eq!(all["total"], 3, "{all}");
    assert_eq!(ids(&all, "strands").last().unwrap(), &exited[0].to_string(), "latest exit first");
    let text = c.text(&["strand", "list", "--state", "exited", "--prog", "Demo::Counter"]);
    assert!(text.contains("Demo::Counter") && text.contains("1-3 of 3"), "{text}");

    let recent = c.json(&["strand", "list", "--state", "exited", "--since", "1h"]);
    assert_eq!(recent["total"], 2);
    let old = c.json(&["strand", "list", "--state", "exited", "--until", "2h"]);
    assert_eq!(ids(&old, "strands"), [exited[0].to_string()]);
    let exitval = c.h.db.pool.clone();
    // The text as `strand show` prints it (Postgres writes jsonb the same way).
    let (needle,): (String,) =
        sqlx::query_as("SELECT exitval::text FROM strand_archive WHERE id = $1").bind(exited[2].uuid()).fetch_one(&exitval).await.unwrap();
    let by_value = c.json(&["strand", "list", "--state", "exited", "--exitval", &needle]);
    assert!(ids(&by_value, "strands").contains(&exited[2].to_string()), "{needle}: {by_value}");
    assert_eq!(c.json(&["strand", "list", "--state", "exited", "--exitval", "no such text"])["total"], 0);
    assert!(c.refused(&["strand", "list", "--since", "1h"]).contains("add --state exited"));

    // The exit time is the write's, not the transaction's start.
    let [late] = c.counters(1).await[..] else { unreachable!() };
    let lease: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("UPDATE strand SET lease = now() + interval '1 minute' WHERE id = $1 RETURNING lease")
        .bind(late.uuid())
        .fetch_one(c.h.pool())
        .await
        .unwrap();
    let mut tx = c.h.pool().begin().await.unwrap();
    let began: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await.unwrap();
    sqlx::query("SELECT pg_sleep(1.5)").execute(&mut *tx).await.unwrap();
    let exit = skein_models::strand::ExitWrite { id: late.uuid(), lease, label: "Count".into(), stack: Some(serde_json::json!([{}])), exitval: serde_json::json!({"done": true}) };
    skein_models::strand::exit_top_level(&mut tx, &[exit]).await.unwrap();
    tx.commit().await.unwrap();
    let shown = c.json(&["strand", "show", &late.to_string()]);
    let at = chrono::DateTime::parse_from_rfc3339(shown["archived"]["exited_at"].as_str().unwrap()).unwrap();
    assert!((at.with_timezone(&chrono::Utc) - began).num_milliseconds() >= 1400, "exited {at}, step began {began}");
}

//! The interactive console driven through a real pseudo-terminal, as an
//! operator's keyboard drives it: Tab completes commands, flag values and
//! ids, arrow-up recalls history (also in the next session), a change asks
//! y/N, and a bad line is an error, not the end of the session.

use std::process::Command;
use std::time::Duration;

use expectrl::{Eof, Session};
use skein_engine::enqueue;
use skein_engine::testing::TestDb;
use skein_progs::demo::counter;

const UP: &str = "\x1b[A";

fn console(db: &TestDb, history: &std::path::Path) -> Session {
    let mut cmd = Command::new(skein_spec::binary("skein"));
    cmd.args(["console", "--database-url", &db.url(), "--operator", "bob", "--history"]).arg(history);
    cmd.env("TERM", "xterm").env("RUST_LOG", "warn");
    let mut s = Session::spawn(cmd).expect("spawn the console in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(20)));
    s.expect("skein> ").expect("the prompt");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_console_completes_recalls_history_and_confirms() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let ids = enqueue::start_many(&mut conn, [counter::Frame { upto: 1, at: 0 }], counter::Label::Count).await.unwrap();
    let id = ids[0];
    sqlx::query("UPDATE strand SET try = 2, last_error = 'disk on fire', schedule = now() + interval '1 hour' WHERE id = $1")
        .bind(id.uuid())
        .execute(&mut *conn)
        .await
        .unwrap();
    let dir = tempdir();
    let history = dir.join("history");

    let mut s = console(&db, &history);
    // Tab completes the command, then the subcommand.
    s.send("stra\t").unwrap();
    s.expect("strand ").unwrap();
    s.send("cou\t").unwrap();
    s.expect("counts ").unwrap();
    s.send("\r").unwrap();
    s.expect("1 strands").unwrap();

    // Tab completes a flag's value from what the database holds.
    s.send("strand list --state fai\t").unwrap();
    s.expect("failing ").unwrap();
    s.send("\r").unwrap();
    s.expect("disk on fire").unwrap();

    // ...and a strand id from its first characters, and its prog's semaphores.
    let prefix = &id.to_string()[..8];
    s.send(format!("strand incr {prefix}\t")).unwrap();
    s.expect(id.to_string().as_str()).unwrap();
    s.send("des\t").unwrap();
    s.expect("destroy ").unwrap();
    // A change asks first; "n" leaves everything as it was.
    s.send("\r").unwrap();
    s.expect("[y/N]").unwrap();
    s.send("n\r").unwrap();
    s.expect("cancelled: nothing changed").unwrap();

    // Arrow-up recalls the last line; this time say yes.
    s.send(UP).unwrap();
    s.expect("destroy").unwrap();
    s.send("\r").unwrap();
    s.expect("[y/N]").unwrap();
    s.send("y\r").unwrap();
    s.expect("destroy set").unwrap();

    // Bad input is an error and the session goes on; help works.
    s.send("strand show nope\r").unwrap();
    s.expect("error: a UBID is 26 characters").unwrap();
    s.send("help strand\r").unwrap();
    s.expect("reschedule").unwrap();
    s.send("exit\r").unwrap();
    s.expect(Eof).unwrap();

    let sems: Vec<String> = sqlx::query_scalar("SELECT name FROM semaphore WHERE strand_id = $1").bind(id.uuid()).fetch_all(&db.pool).await.unwrap();
    assert_eq!(sems, ["destroy"], "the declined change did nothing, the confirmed one happened once");
    let audited: Vec<(String, String)> = sqlx::query_as("SELECT operator, action FROM operator_audit").fetch_all(&db.pool).await.unwrap();
    assert_eq!(audited, [("bob".to_string(), "destroy".to_string())]);

    // History survives into the next session.
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("strand counts") && saved.contains("strand list --state failing"), "{saved}");
    let mut s = console(&db, &history);
    s.send(UP).unwrap();
    s.send(UP).unwrap();
    s.expect("help strand").unwrap();
    s.send("\x15\x04").unwrap(); // clear the line, then Ctrl-D on an empty line leaves
    s.expect(Eof).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Tab shows every candidate when there are several, offers only what can
/// still be acted on (an open page, not a resolved one), knows project
/// names; and Ctrl-C at a y/N question cancels the change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tab_lists_live_candidates_and_ctrl_c_cancels_a_question() {
    use skein_models::{page, project, Ubid, UbidType};
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    for name in ["acme", "apex"] {
        project::insert(&mut conn, Ubid::generate(UbidType::Project).uuid(), name, 5).await.unwrap();
    }
    page::raise(&mut conn, "old", "an old problem", "error", &serde_json::json!({})).await.unwrap();
    page::resolve(&mut conn, "old").await.unwrap();
    page::raise(&mut conn, "new", "a new problem", "error", &serde_json::json!({})).await.unwrap();
    let open: uuid::Uuid = sqlx::query_scalar("SELECT id FROM page WHERE resolved_at IS NULL").fetch_one(&mut *conn).await.unwrap();
    let open = Ubid::from_uuid(open).to_string();
    let ids = enqueue::start_many(&mut conn, [counter::Frame { upto: 1, at: 0 }], counter::Label::Count).await.unwrap();
    let dir = tempdir();
    let mut s = console(&db, &dir.join("history"));

    // Two projects start with "a": Tab lists both, then one more letter picks one.
    s.send("vm list --project a\t\t").unwrap();
    s.expect("acme").unwrap();
    s.expect("apex").unwrap();
    s.send("c\t").unwrap();
    s.expect("acme ").unwrap();
    s.send("\x15").unwrap(); // clear the line

    // Both pages' ids start with "pa"; only the open one is offered, so Tab completes it whole.
    s.send("page resolve pa\t").unwrap();
    s.expect(open.as_str()).unwrap();
    // Ctrl-C at the question cancels, and the prompt comes back.
    s.send("\r").unwrap();
    s.expect("[y/N]").unwrap();
    s.send("\x03").unwrap();
    s.expect("cancelled: nothing changed").unwrap();
    s.expect("skein> ").unwrap();
    s.send(format!("strand wake {}\r", ids[0])).unwrap();
    s.expect("[y/N]").unwrap();
    s.send("\x03").unwrap();
    s.expect("cancelled: nothing changed").unwrap();
    s.send("exit\r").unwrap();
    s.expect(Eof).unwrap();

    let open_now: i64 = sqlx::query_scalar("SELECT count(*) FROM page WHERE resolved_at IS NULL").fetch_one(&db.pool).await.unwrap();
    assert_eq!(open_now, 1, "the cancelled resolve changed nothing");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM operator_audit").fetch_one(&db.pool).await.unwrap();
    assert_eq!(audited, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("skein-pty-{}", skein_models::Ubid::generate(skein_models::UbidType::Test)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

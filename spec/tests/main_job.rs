//! The README's main command: `skein up` runs the control plane and its demo.

use std::process::Command;

use skein_engine::testing::TestDb;

#[tokio::test]
async fn skein_up_runs_the_demo_census_to_its_end() {
    let db = TestDb::new().await;
    let out = Command::new(skein_spec::binary("skein"))
        .args(["up", "--exit-after-demo", "--database-url", &db.url()])
        .output()
        .expect("run skein up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "skein up failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "Demo::Census   Start   hop -> Tally  (budded 3)",
        "Demo::Doubler  Start   pop {\"value\":32} -> Demo::Census at Double",
        "demo: done, the census exited with {\"doubled\":32,\"total\":16}",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM strand").fetch_one(&db.pool).await.unwrap();
    assert_eq!(left, 0, "every demo strand finished and left the hot table");
}

#[test]
fn skein_help_is_true_to_its_commands() {
    let out = Command::new(skein_spec::binary("skein")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["up", "db"] {
        assert!(help.contains(&format!("  {cmd} ")), "--help lacks {cmd}:\n{help}");
    }
    let out = Command::new(skein_spec::binary("respirate")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--database-url") && help.contains("--concurrency"), "{help}");
}

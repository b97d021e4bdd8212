//! respirate and its database: what no retry will fix (no such database, no
//! such role) stops it at once with what to do; what may pass (nobody
//! listening yet) is waited out.

use std::time::Duration;

use skein_engine::testing::TestDb;
use skein_spec::procs::{free_port, Proc};

/// `url` with its path (the database name) replaced.
fn with_database(url: &str, name: &str) -> String {
    let (server, _) = url.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_database_errors_stop_respirate_with_advice() {
    let db = TestDb::new().await;
    let missing = with_database(&db.url(), "skein_no_such_database");
    let (scheme, rest) = db.url().split_once("://").map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    let host = rest.split_once('@').map(|(_, h)| h.to_string()).unwrap_or(rest);
    let no_role = format!("{scheme}://skein_no_such_role@{host}");
    for (url, says) in [(missing, "does not exist"), (no_role, "skein_no_such_role")] {
        let mut worker = Proc::respirate(&url, &[]);
        let status = worker.wait_for(Duration::from_secs(15)).unwrap_or_else(|| panic!("respirate kept retrying {url}:\n{}", worker.log_text()));
        let log = worker.log_text();
        assert!(!status.success(), "{log}");
        assert!(log.contains(says) && log.contains("waiting will not change that"), "{url}: {log}");
        assert!(!log.contains("database not reachable yet"), "no retry was logged as if it might pass: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_up_yet_is_waited_for() {
    let url = format!("postgres://postgres@127.0.0.1:{}/skein", free_port());
    let mut worker = Proc::respirate(&url, &[]);
    assert!(worker.wait_for(Duration::from_secs(3)).is_none(), "respirate gave up on a server that may come up:\n{}", worker.log_text());
}

//! The metrics the README lists, read from the real `/metrics` endpoints of
//! `respirate` and `skein api`: if a series is renamed or dropped, the
//! README's alert rules would silently stop firing, and this fails instead.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use skein_engine::testing::TestDb;
use skein_progs::host::{self, nexus, NewHost};
use skein_spec::local_host::{generate_keypair, LocalHost};
use skein_spec::procs::{free_port, skein_ok, Proc};
use skein_spec::world::World;

fn scrape(addr: &str) -> String {
    let mut body = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let _ = s.read_to_string(&mut body);
    }
    body
}

/// Scrape until every one of `wanted` is there (samples come every few seconds).
fn scrape_until(addr: &str, wanted: &[&str], proc: &Proc) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(addr);
        let missing: Vec<&&str> = wanted.iter().filter(|w| !body.contains(**w)).collect();
        if missing.is_empty() {
            return body;
        }
        assert!(Instant::now() < until, "missing {missing:?} in:\n{body}\n--- log:\n{}", proc.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_worker_series_are_served() {
    let db = TestDb::new().await;
    let url = db.url();
    skein_ok(&["bench", "--scenario", "hops", "--strands", "5", "--hops", "1", "--enqueue-only", "--database-url", &url]);
    // A strand of a prog no worker knows fails at once, every time.
    sqlx::query("INSERT INTO strand (id, prog, label) VALUES (gen_random_uuid(), 'No::Such', 'Start')").execute(&db.pool).await.unwrap();
    skein_models::page::raise(&mut db.pool.acquire().await.unwrap(), "m", "a test page", "critical", &serde_json::json!({})).await.unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = Proc::respirate(&url, &["--metrics-addr", &addr, "--backoff-cap-secs", "1"]);
    scrape_until(
        &addr,
        &[
            "skein_step_duration_seconds_bucket{prog=\"Bench::Step\",label=\"Run\"",
            "skein_step_duration_seconds_count{prog=\"Bench::Step\"",
            "skein_step_failures_total{prog=\"No::Such\",label=\"Start\",kind=\"unknown_prog\"}",
            "skein_steps_total{prog=\"Bench::Step\"}",
            "skein_db_pool_connections{state=\"in_use\"}",
            "skein_db_pool_connections{state=\"idle\"}",
            "skein_db_pool_connections{state=\"waiting\"}",
            "skein_db_pool_max_connections",
            "skein_open_pages{severity=\"critical\"} 1",
            "skein_open_pages{severity=\"error\"}",
            "skein_due_strands",
            "skein_oldest_due_lag_seconds",
            "skein_claim_seconds_count",
            "skein_claimed_total",
            "skein_takeovers_total",
        ],
        &worker,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_api_series_are_served() {
    let db = TestDb::new().await;
    let (listen, metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let home = std::env::temp_dir().join("skein-metrics-test-home");
    let api = Proc::start_env(
        "skein",
        &["api", "--listen", &listen, "--metrics-addr", &metrics, "--database-url", &db.url()],
        &[("SKEIN_HOME", home.to_str().unwrap())],
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(&listen).and_then(|mut c| {
            write!(c, "GET /v1/vms/vm0000000000000000000000ab HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            c.read_to_string(&mut reply).map(|_| reply)
        });
        if answered.is_ok_and(|r| r.starts_with("HTTP/1.1 401")) {
            break;
        }
        assert!(Instant::now() < until, "skein api never answered:\n{}", api.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    scrape_until(
        &metrics,
        &[
            "skein_api_requests_total{method=\"GET\",route=\"/v1/vms/{id}\",status=\"401\"}",
            "skein_api_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/vms/{id}\"",
            "skein_db_pool_connections{state=\"in_use\"}",
        ],
        &api,
    );
}

/// SSH calls by host: a real sshd host answers (a duration series), and a
/// port nobody listens on refuses (a `connect` failure), each labelled by
/// its `address:port`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_ssh_series_are_served() {
    let world = World::new().await;
    let (private, public) = generate_keypair();
    let sshd = LocalHost::start(&public);
    world.add("answers", &sshd, &private, nexus::Frame::default()).await;
    let refused = free_port();
    let mut tx = world.db.pool.begin().await.unwrap();
    let new = NewHost { name: "refuses", address: "127.0.0.1", port: refused, user: "root", bootstrap_private_key: &private, root_dir: "/var/lib/skein" };
    host::add(&mut tx, &world.secret, &new, nexus::Frame::default()).await.unwrap();
    tx.commit().await.unwrap();

    let addr = format!("127.0.0.1:{}", free_port());
    let hex = world.secret.to_hex();
    let worker = Proc::respirate_env(&world.db.url(), &["--metrics-addr", &addr, "--backoff-cap-secs", "1"], &[("SKEIN_SECRET_KEY", &hex)]);
    let answers = format!("{}:{}", sshd.addr(), sshd.port());
    scrape_until(
        &addr,
        &[
            &format!("skein_ssh_call_duration_seconds_count{{host=\"{answers}\"}}"),
            &format!("skein_ssh_call_duration_seconds_bucket{{host=\"127.0.0.1:{refused}\""),
            &format!("skein_ssh_call_failures_total{{host=\"127.0.0.1:{refused}\",kind=\"connect\"}}"),
        ],
        &worker,
    );
    let body = scrape(&addr);
    assert!(!body.contains(&format!("skein_ssh_call_failures_total{{host=\"{answers}\",kind=\"connect\"")), "the answering host never refused:\n{body}");
}

//! The HTTP API's server as a client on the network meets it (`skein api`,
//! real sockets): a slow or idle client cannot hold it, a request that takes
//! too long is answered 503, every request is one access log line (with
//! the token's id, never its secret), and its metrics are served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use skein_engine::testing::TestDb;
use skein_spec::procs::{free_port, Proc};

struct Server {
    proc: Proc,
    addr: String,
}

impl Server {
    /// `skein api` with these extra flags, once it answers.
    fn start(db: &TestDb, extra: &[&str]) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let home = std::env::temp_dir().join("skein-api-server-test-home");
        let url = db.url();
        let mut args = vec!["api", "--listen", &addr, "--database-url", &url];
        args.extend_from_slice(extra);
        let proc = Proc::start_env("skein", &args, &[("SKEIN_HOME", home.to_str().unwrap())]);
        let server = Server { proc, addr };
        let until = Instant::now() + Duration::from_secs(30);
        while server.get("/openapi.json", None).is_none() {
            assert!(Instant::now() < until, "skein api never answered:\n{}", server.proc.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn connect(&self) -> TcpStream {
        let conn = TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        conn
    }

    /// One whole request; its whole reply, or None if there was none.
    fn get(&self, path: &str, token: Option<&str>) -> Option<String> {
        let mut conn = TcpStream::connect(&self.addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        Some(reply).filter(|r| !r.is_empty())
    }
}

/// Read until the server closes; how long that took.
fn closed_within(mut conn: TcpStream) -> Duration {
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink); // Ok(EOF), or a reset: either way, closed
    let took = start.elapsed();
    assert!(took < Duration::from_secs(19), "still open after {took:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_idle_client_is_dropped_and_cannot_starve_a_real_request() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &["--header-timeout-secs", "1", "--max-connections", "4"]);

    // Half a request's headers, then nothing: closed in seconds, not held.
    let mut partial = server.connect();
    partial.write_all(b"GET /v1/vms HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    assert!(closed_within(partial) < Duration::from_secs(8));

    // Three times the connection limit, all idle; a real request still gets its answer.
    let idle: Vec<TcpStream> = (0..12).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let reply = server.get("/openapi.json", None).expect("an answer");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(start.elapsed() < Duration::from_secs(10), "the real request waited {:?}", start.elapsed());
    for conn in idle {
        closed_within(conn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_is_answered_503_and_every_request_is_logged() {
    let db = TestDb::new().await;
    let api = skein_spec::api::Api::new(db.pool.clone());
    let (_, token) = api.project("acme", 5).await;
    let token_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_token").fetch_one(&db.pool).await.unwrap();
    let token_id = skein_models::Ubid::from_uuid(token_id).to_string();
    let server = Server::start(&db, &["--request-timeout-secs", "2", "--header-timeout-secs", "30"]);

    // Headers promise a body that never comes: the request, not the connection, times out.
    let mut slow = server.connect();
    write!(
        slow,
        "POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let mut reply = vec![0; 4096];
    let start = Instant::now();
    let n = slow.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("\"code\":\"timeout\""), "{reply}");
    assert!(start.elapsed() < Duration::from_secs(10));

    let listed = server.get("/v1/vms", Some(&token)).unwrap();
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    server.get("/v1/nowhere", None).unwrap();

    let until = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = server.proc.log_text();
        if log.matches("skein::api::access").count() >= 4 || Instant::now() > until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = |route: &str, status: &str| {
        log.lines()
            .find(|l| l.contains("skein::api::access") && l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("status={status}")))
            .unwrap_or_else(|| panic!("no access line for {route} {status}:\n{log}"))
            .to_string()
    };
    let listed = line("/v1/vms", "200");
    assert!(listed.contains(&format!("token=\"{token_id}\"")) && listed.contains("method=\"GET\"") && listed.contains("latency_ms="), "{listed}");
    assert!(line("/v1/vms", "503").contains("method=\"POST\""));
    assert!(line("unmatched", "404").contains("token=\"-\""));
    assert!(!log.contains(&token[6..]), "the secret never reaches the log");
}

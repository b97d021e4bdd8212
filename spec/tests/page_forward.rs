//! Pages forwarded to a webhook (`skein page hook`), delivered by strands
//! that real `respirate` workers run: each new and each resolved page
//! reaches a local HTTP receiver once, after retries while it refuses; a
//! failed delivery never holds up the step that raised the page.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_engine::testing::TestDb;
use skein_models::page;
use skein_spec::procs::{skein_ok, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver: refuses the first `refuse` requests with a 500,
/// then takes each with a 200 and keeps its body.
async fn receiver(refuse: usize) -> (String, Arc<Mutex<Vec<Value>>>, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (taken, refused) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let (t, r) = (taken.clone(), refused.clone());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            let text = String::from_utf8_lossy(&request).to_string();
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            let refuse_this = {
                let mut n = r.lock().unwrap();
                let refuse_this = *n < refuse;
                *n += refuse_this as usize;
                refuse_this
            };
            let status = if refuse_this { "500 Internal Server Error" } else { "200 OK" };
            if !refuse_this {
                t.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::String(body)));
            }
            let _ = conn.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await;
        }
    });
    (url, taken, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_resolved_pages_reach_the_webhook_once_each_after_retries() {
    let db = TestDb::new().await;
    let url = db.url();
    let (hook, taken, refused) = receiver(2).await;
    let set = skein_ok(&["page", "hook", "--url", &hook, "--yes", "--database-url", &url, "--operator", "alice"]);
    assert!(set.contains(&hook), "{set}");
    assert!(skein_ok(&["page", "hook", "--database-url", &url]).contains(&format!("POST to {hook}")));

    // Raised inside a transaction that also does other work: it commits at
    // once, whatever the receiver does.
    let mut tx = db.pool.begin().await.unwrap();
    let start = Instant::now();
    assert!(page::raise(&mut tx, "disk-full", "disk full on rack-1", "critical", &serde_json::json!({"host": "rack-1"})).await.unwrap());
    assert!(!page::raise(&mut tx, "disk-full", "disk full on rack-1", "critical", &serde_json::json!({})).await.unwrap(), "raised twice: once");
    tx.commit().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "raising a page does not wait for its delivery");

    let worker = Proc::respirate(&url, &["--backoff-cap-secs", "1"]);
    let wait_for = |n: usize| {
        let until = Instant::now() + Duration::from_secs(40);
        while taken.lock().unwrap().len() < n {
            assert!(Instant::now() < until, "{} delivered, {} refused:\n{}", taken.lock().unwrap().len(), refused.lock().unwrap(), worker.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(1);
    assert_eq!(*refused.lock().unwrap(), 2, "delivered after two refusals");
    let page_id = taken.lock().unwrap()[0]["page"]["id"].as_str().unwrap().to_string();
    let page_id = skein_models::Ubid::from_uuid(page_id.parse().unwrap()).to_string();
    skein_ok(&["page", "resolve", &page_id, "--yes", "--database-url", &url, "--operator", "alice"]);
    wait_for(2);
    // Nothing more comes: each change once.
    std::thread::sleep(Duration::from_secs(2));
    let got = taken.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0]["change"].as_str(), got[0]["page"]["summary"].as_str()), (Some("raised"), Some("disk full on rack-1")));
    assert_eq!(got[0]["page"]["severity"], "critical");
    assert_eq!(got[1]["change"], "resolved");
    assert!(got[1]["page"]["resolved_at"].is_string());
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = 'Pages::Forward'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(live, 0, "every delivery strand exited");

    // Cleared: pages are no longer forwarded.
    skein_ok(&["page", "hook", "--clear", "--yes", "--database-url", &url, "--operator", "alice"]);
    let mut conn = db.pool.acquire().await.unwrap();
    page::raise(&mut conn, "quiet", "not forwarded", "error", &serde_json::json!({})).await.unwrap();
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM strand WHERE prog = 'Pages::Forward'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(started, 0);
    let audited: Vec<String> = sqlx::query_scalar("SELECT action FROM operator_audit ORDER BY created_at").fetch_all(&db.pool).await.unwrap();
    assert_eq!(audited, ["page-hook", "resolve-page", "page-hook"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_hook_gets_the_page_on_stdin() {
    let db = TestDb::new().await;
    let url = db.url();
    let out = std::env::temp_dir().join(format!("skein-page-hook-{}", skein_models::Ubid::generate(skein_models::UbidType::Test)));
    let command = format!("cat >> {}; echo >> {}", out.display(), out.display());
    skein_ok(&["page", "hook", "--command", &command, "--yes", "--database-url", &url, "--operator", "alice"]);
    let https = skein_spec::procs::skein(&["page", "hook", "--url", "https://example.com", "--yes", "--database-url", &url]);
    assert!(!https.status.success() && String::from_utf8_lossy(&https.stderr).contains("use --command"), "{https:?}");
    page::raise(&mut db.pool.acquire().await.unwrap(), "t", "by command", "warning", &serde_json::json!({})).await.unwrap();
    let worker = Proc::respirate(&url, &[]);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("by command") {
            let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert_eq!(v["change"], "raised");
            break;
        }
        assert!(Instant::now() < until, "the command never ran:\n{}", worker.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(out);
}

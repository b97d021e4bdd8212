//! Quotas and host capacity under concurrent creates: many takers at once,
//! never more than there is.

use skein_engine::testing::TestDb;
use skein_models::capacity::{self, Size};
use skein_models::{sshable, vm_host, Ubid, UbidType};
use uuid::Uuid;

async fn host(db: &TestDb, name: &str, cpus: i32, memory_mib: i64) -> Uuid {
    let mut conn = db.pool.acquire().await.unwrap();
    let sh = Ubid::generate(UbidType::Sshable).uuid();
    sshable::insert(&mut conn, sh, "192.0.2.1", 22, "root", b"sealed").await.unwrap();
    let id = Ubid::generate(UbidType::VmHost).uuid();
    vm_host::insert(&mut conn, id, sh, name, "/var/lib/skein").await.unwrap();
    let facts = vm_host::Facts { cpus: Some(cpus), memory_mib: Some(memory_mib), storage_free_mib: Some(100_000), ..Default::default() };
    vm_host::record_facts(&mut conn, id, &facts).await.unwrap();
    vm_host::set_state(&mut conn, id, vm_host::HostState::Accepting).await.unwrap();
    id
}

async fn race<F, Fut>(db: &TestDb, n: usize, f: F) -> Vec<Option<Uuid>>
where
    F: Fn(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Option<Uuid>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f(db.pool.clone()))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

const SMALL: Size = Size { cores: 1, memory_mib: 512, disk_mib: 1000 };

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_overcommit_a_host() {
    let db = TestDb::new().await;
    let nearly_full = host(&db, "nearly-full", 4, 16_384).await;
    let got = race(&db, 30, |pool| async move {
        let mut conn = pool.acquire().await.unwrap();
        capacity::reserve(&mut conn, SMALL).await.unwrap()
    })
    .await;
    assert_eq!(got.iter().filter(|h| h.is_some()).count(), 4, "four one-core VMs fit on four cores");
    let row = vm_host::get(&mut db.pool.acquire().await.unwrap(), nearly_full).await.unwrap().unwrap();
    assert_eq!((row.used_cores, row.used_memory_mib), (4, 4 * 512));

    // Memory can be the tighter limit too.
    let tight = host(&db, "tight-memory", 64, 1024).await;
    let got = race(&db, 30, |pool| async move {
        let mut conn = pool.acquire().await.unwrap();
        capacity::reserve(&mut conn, SMALL).await.unwrap()
    })
    .await;
    assert_eq!(got.iter().filter(|h| **h == Some(tight)).count(), 2, "two 512 MiB VMs fit in 1 GiB");

    // Returning capacity makes room again.
    let mut conn = db.pool.acquire().await.unwrap();
    capacity::release(&mut conn, nearly_full, SMALL).await.unwrap();
    assert_eq!(capacity::reserve(&mut conn, SMALL).await.unwrap(), Some(nearly_full));
    assert_eq!(capacity::reserve(&mut conn, SMALL).await.unwrap(), None, "and then it is full again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_spread_over_hosts_and_skip_hosts_not_accepting() {
    let db = TestDb::new().await;
    let a = host(&db, "a", 3, 16_384).await;
    let b = host(&db, "b", 3, 16_384).await;
    let down = host(&db, "down", 64, 65_536).await;
    vm_host::set_state(&mut db.pool.acquire().await.unwrap(), down, vm_host::HostState::Unreachable).await.unwrap();
    let got = race(&db, 20, |pool| async move {
        let mut conn = pool.acquire().await.unwrap();
        capacity::reserve(&mut conn, SMALL).await.unwrap()
    })
    .await;
    assert_eq!(got.iter().filter(|h| **h == Some(a)).count(), 3);
    assert_eq!(got.iter().filter(|h| **h == Some(b)).count(), 3);
    assert!(!got.contains(&Some(down)), "an unreachable host takes no VMs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_exceed_a_quota() {
    let db = TestDb::new().await;
    let project = Ubid::generate(UbidType::Project).uuid();
    sqlx::query("INSERT INTO project (id, name, vm_quota) VALUES ($1, 'tenant', 5)").bind(project).execute(&db.pool).await.unwrap();
    let got = race(&db, 30, move |pool| async move {
        let mut conn = pool.acquire().await.unwrap();
        capacity::take_quota(&mut conn, project).await.unwrap().then_some(project)
    })
    .await;
    assert_eq!(got.iter().filter(|p| p.is_some()).count(), 5);
    let count: i32 = sqlx::query_scalar("SELECT vm_count FROM project WHERE id = $1").bind(project).fetch_one(&db.pool).await.unwrap();
    assert_eq!(count, 5);
}

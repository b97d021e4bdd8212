//! A control plane for tests: a fresh database, a sealing key, respirate
//! workers that can open it, and helpers to add test hosts and wait on them.

use std::time::{Duration, Instant};

use skein_engine::testing::TestDb;
use skein_models::vm_host::{self, VmHost};
use skein_models::Ubid;
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::ssh::keys::SecretKey;

use crate::local_host::LocalHost;
use crate::procs::Proc;

/// A test database, a sealing key, and helpers to add hosts and watch them.
pub struct World {
    pub db: TestDb,
    pub secret: SecretKey,
}

impl World {
    pub async fn new() -> World {
        World { db: TestDb::new().await, secret: SecretKey::random() }
    }

    pub fn worker(&self) -> Proc {
        let hex = self.secret.to_hex();
        Proc::respirate_env(&self.db.url(), &["--concurrency", "16"], &[("SKEIN_SECRET_KEY", &hex)])
    }

    pub async fn add(&self, name: &str, h: &LocalHost, bootstrap_private: &str, frame: nexus::Frame) -> Ubid {
        // The host's own image build then finds a complete image and returns at once.
        crate::guest_image::seed(h.root_dir());
        let mut tx = self.db.pool.begin().await.unwrap();
        let addr = h.addr().to_string();
        let root = h.root_dir().display().to_string();
        let new = NewHost { name, address: &addr, port: h.port(), user: "root", bootstrap_private_key: bootstrap_private, root_dir: &root };
        let id = host::add(&mut tx, &self.secret, &new, frame).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    pub async fn host(&self, id: Ubid) -> VmHost {
        vm_host::get(&mut self.db.pool.acquire().await.unwrap(), id.uuid()).await.unwrap().unwrap()
    }

    pub async fn strand_error(&self, id: Ubid) -> String {
        sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM strand WHERE id = $1")
            .bind(id.uuid())
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
            .flatten()
            .unwrap_or_default()
    }

    /// Wait until `done` holds for the host row, or fail with what is known.
    pub async fn wait_for(&self, id: Ubid, what: &str, limit: Duration, worker: &Proc, done: impl Fn(&VmHost) -> bool) -> VmHost {
        let until = Instant::now() + limit;
        loop {
            let row = self.host(id).await;
            if done(&row) {
                return row;
            }
            if Instant::now() > until {
                panic!(
                    "host never got {what}: {row:?}\nstrand error: {}\nworker log:\n{}",
                    self.strand_error(id).await,
                    worker.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn open_pages(&self, tag: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM page WHERE tag = $1 AND resolved_at IS NULL").bind(tag).fetch_one(&self.db.pool).await.unwrap()
    }
}


//! The `skein` binary run as a script would run it (no terminal), against a
//! test database, for the CLI tests: a command that must answer with JSON,
//! one that must be refused, and the audit trail it left.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use skein_engine::testing::TestDb;

pub struct Cli {
    pub db: TestDb,
    /// A scratch directory for files the commands read, removed on drop.
    pub dir: PathBuf,
}

impl Cli {
    pub async fn new(tag: &str) -> Cli {
        let dir = std::env::temp_dir().join(format!("skein-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Cli { db: TestDb::new().await, dir }
    }

    /// Run `skein args` as operator `alice`, stdin closed.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(crate::binary("skein"))
            .args(args)
            .args(["--database-url", &self.db.url()])
            .env("SKEIN_OPERATOR", "alice")
            .env("SKEIN_SECRET_KEY", "33".repeat(32))
            .stdin(Stdio::null())
            .output()
            .expect("run skein")
    }

    /// A command that must succeed with `--yes --json`: its JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--yes", "--json"]].concat());
        assert!(out.status.success(), "skein {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A command that must fail (exit 1, no panic): its stderr.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "skein {args:?} should fail; printed {}{stderr}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{args:?}: {stderr}");
        stderr
    }

    pub async fn i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db.pool).await.unwrap()
    }

    /// The audit trail, oldest first: (operator, action).
    pub async fn audit(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT operator, action FROM operator_audit ORDER BY created_at, id").fetch_all(&self.db.pool).await.unwrap()
    }

    /// Write `text` to `name` in the scratch directory; its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Real processes of the built binaries, for tests that kill, restart and
//! signal them. A `Proc` is SIGKILLed when dropped, so a failing test leaves
//! nothing running; its stderr goes to a log file named in failure messages.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::binary;

pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `respirate` against `url` with short leases (takeovers in seconds)
    /// and a quick fallback poll, unless `extra` sets them.
    pub fn respirate(url: &str, extra: &[&str]) -> Proc {
        Proc::start("respirate", &worker_args(url, &[("--lease-secs", "4"), ("--poll-ms", "200")], extra))
    }

    /// `spec-respirate` (respirate serving the spec's test progs too) with
    /// long leases, so that anything taken over in seconds was taken over by
    /// liveness, never by a lease running out.
    pub fn spec_respirate(url: &str, extra: &[&str]) -> Proc {
        Proc::start("spec-respirate", &worker_args(url, &[("--lease-secs", "120"), ("--poll-ms", "200")], extra))
    }

    /// `respirate` as above, with extra environment (e.g. SKEIN_SECRET_KEY).
    pub fn respirate_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let defaults = [("--lease-secs", "4"), ("--poll-ms", "200"), ("--backoff-cap-secs", "2")];
        Proc::start_env("respirate", &worker_args(url, &defaults, extra), env)
    }

    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_env(name, args, &[])
    }

    pub fn start_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("skein-spec-{}-{name}-{n}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(name))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        Proc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([format!("-{sig}"), self.pid().to_string()]).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "could not send SIG{sig} to {}", self.pid());
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker's arguments: the database, each default flag `extra` does not
/// set itself, then `extra`.
fn worker_args<'a>(url: &'a str, defaults: &[(&'a str, &'a str)], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--database-url", url];
    for (flag, value) in defaults {
        if !extra.contains(flag) {
            args.extend([*flag, *value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// Run `skein` to completion.
pub fn skein(args: &[&str]) -> Output {
    Command::new(binary("skein")).args(args).output().expect("run skein")
}

/// Run `skein` and return its stdout, failing the test with its output if it failed.
pub fn skein_ok(args: &[&str]) -> String {
    let out = skein(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "skein {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A port nobody listens on right now, for a private Postgres.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

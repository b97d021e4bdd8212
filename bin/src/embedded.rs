//! The embedded database: a private Postgres cluster made with this machine's
//! own Postgres binaries, used when no database URL is given.
//!
//! It lives in `$SKEIN_HOME/pg` (default `/var/tmp/skein-<uid>`), listens on
//! 127.0.0.1 at `$SKEIN_PG_PORT` (default 54329), and trusts local
//! connections. `initdb` refuses to run as root, so as root the cluster is
//! made and run by the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The database URL given, or the embedded cluster's (made and started if
/// need be), and whether it is the embedded one. Says nothing: the caller
/// says which database where that helps a person (a prompt's banner, a
/// server's start), never on a script's every command.
pub async fn given_or_embedded(given: Option<String>) -> anyhow::Result<(String, bool)> {
    if let Some(url) = given {
        return Ok((url, false));
    }
    let embedded = Embedded::from_env()?;
    Ok((tokio::task::spawn_blocking(move || embedded.ensure_running()).await??, true))
}

/// [`given_or_embedded`] for a command that runs a while (`skein up`,
/// `api`, `bench`): says on stderr when it is the embedded one (stdout is for
/// what a command answers, `--json`).
pub async fn database_url(given: Option<String>) -> anyhow::Result<String> {
    let (url, embedded) = given_or_embedded(given).await?;
    if embedded {
        eprintln!("database: embedded Postgres at {url}");
    }
    Ok(url)
}

pub struct Embedded {
    pub home: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl Embedded {
    pub fn from_env() -> anyhow::Result<Embedded> {
        let home = match std::env::var_os("SKEIN_HOME") {
            Some(h) => PathBuf::from(h),
            None => PathBuf::from(format!("/var/tmp/skein-{}", uid())),
        };
        let port = match std::env::var("SKEIN_PG_PORT") {
            Ok(p) => p.parse().with_context(|| format!("SKEIN_PG_PORT={p:?} is not a port number"))?,
            Err(_) => 54329,
        };
        Ok(Embedded { home, port, bin: postgres_bin_dir()? })
    }

    fn data(&self) -> PathBuf {
        self.home.join("pg")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/skein", self.port)
    }

    pub fn log_file(&self) -> PathBuf {
        self.home.join("pg.log")
    }

    /// Make the cluster if there is none, start it if it is stopped, and make
    /// sure the `skein` database exists. Returns its URL.
    pub fn ensure_running(&self) -> anyhow::Result<String> {
        if !self.data().join("PG_VERSION").exists() {
            self.init()?;
        }
        if !self.is_running() {
            self.start()?;
        }
        self.create_database()?;
        Ok(self.url())
    }

    fn init(&self) -> anyhow::Result<()> {
        eprintln!("skein: creating a private Postgres cluster in {} (first run only)", self.data().display());
        std::fs::create_dir_all(&self.home).with_context(|| format!("creating {}", self.home.display()))?;
        if is_root() {
            chown_to_postgres(&self.home)?;
        }
        let data = self.data();
        let initdb = self.bin.join("initdb");
        let data_arg = data.display().to_string();
        let args = ["-D", &data_arg, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"];
        run(&mut self.as_owner(&initdb, &args), "initdb")?;
        // Tuned for a development machine: a step is a short transaction.
        let conf = format!(
            "\n# skein embedded cluster\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 200\nshared_buffers = '256MB'\n",
            self.port,
            self.home.display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).context("writing postgresql.conf")?;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data().display().to_string();
        self.as_owner(&pg_ctl, &["-D", &data, "status"]).output().map(|o| o.status.success()).unwrap_or(false)
    }

    pub fn start(&self) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data().display().to_string();
        let log = self.log_file().display().to_string();
        run(&mut self.as_owner(&pg_ctl, &["-D", &data, "-l", &log, "-w", "-t", "60", "start"]), "pg_ctl start")
            .with_context(|| format!("see {log}; is port {} taken? (set SKEIN_PG_PORT)", self.port))
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data().display().to_string();
        run(&mut self.as_owner(&pg_ctl, &["-D", &data, "-m", "fast", "-w", "stop"]), "pg_ctl stop")
    }

    fn create_database(&self) -> anyhow::Result<()> {
        let psql = self.bin.join("psql");
        let port = self.port.to_string();
        let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-tAc"];
        let out = Command::new(&psql)
            .args(base)
            .arg("SELECT 1 FROM pg_database WHERE datname = 'skein'")
            .output()
            .context("running psql")?;
        if String::from_utf8_lossy(&out.stdout).trim() != "1" {
            run(Command::new(&psql).args(base).arg("CREATE DATABASE skein"), "create database")?;
        }
        Ok(())
    }

    /// A command run as the cluster's owner: `postgres` when we are root.
    fn as_owner(&self, program: &Path, args: &[&str]) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program).args(args);
            c
        } else {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("could not run {what} ({cmd:?})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The newest installed Postgres's binaries (Debian keeps them per version).
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no Postgres server binaries found under /usr/lib/postgresql: run scripts/install-deps (or apt-get install postgresql), or pass --database-url"),
    }
}

fn is_root() -> bool {
    uid() == 0
}

/// The real uid of this process, from /proc (no libc binding needed).
fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(u32::MAX)
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    run(Command::new("chown").arg("postgres:postgres").arg(path), "chown")
}

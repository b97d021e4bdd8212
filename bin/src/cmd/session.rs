//! What every operator command (the console's and `cmd`'s) runs against: the database, the prog
//! registry, who the operator is, and how a change gets confirmed. Also the
//! `Reply` every command returns, printed as text or as JSON.

use std::io::IsTerminal;

use anyhow::{bail, Context};
use rustyline::error::ReadlineError;
use serde_json::Value;
use skein_engine::{Registry, Runner};
use sqlx::PgPool;

/// Options every operator command takes, wherever it is typed.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OpsOptions {
    /// Postgres URL; default: the embedded cluster (see `skein db`).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Print JSON (one document per command) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not ask before changing anything.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
    /// Who is acting, for the audit trail; default: $SKEIN_OPERATOR, else the login name.
    #[arg(long, env = "SKEIN_OPERATOR", global = true)]
    pub operator: Option<String>,
}

pub struct Session {
    pub pool: PgPool,
    pub registry: Registry,
    pub operator: String,
    /// Which database, for people: "embedded Postgres at ..." or the URL (password hidden).
    pub database: String,
    runner: std::sync::OnceLock<Runner>,
}

impl Session {
    /// Connect (once: a console is for a database that is up) and migrate.
    pub async fn open(opts: &OpsOptions) -> anyhow::Result<Session> {
        let operator = operator_name(opts)?;
        let (url, embedded) = crate::embedded::given_or_embedded(opts.database_url.clone()).await?;
        let database = if embedded { format!("embedded Postgres at {url}") } else { redact(&url) };
        // A person is waiting: say so after a few seconds rather than thirty.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(skein_models::db::options(&url).with_context(|| format!("bad database URL {:?}", redact(&url)))?)
            .await
            .with_context(|| format!("cannot reach the database at {}: start it, or pass --database-url", redact(&url)))?;
        skein_models::db::migrate(&pool).await.context("applying migrations")?;
        Ok(Session { pool, registry: skein_progs::registry(), operator, database, runner: Default::default() })
    }

    /// A runner for inline steps, with what progs need to reach hosts.
    pub fn runner(&self) -> &Runner {
        self.runner.get_or_init(|| Runner::new(self.pool.clone(), self.registry.clone()).with_resources(crate::process::resources()))
    }
}

/// `--operator`, else the login name: $USER, $LOGNAME, or this process's
/// uid looked up in /etc/passwd (containers often set neither variable).
/// It is written to the audit trail and printed, so it must be a plain name.
fn operator_name(opts: &OpsOptions) -> anyhow::Result<String> {
    let given = [opts.operator.clone(), std::env::var("USER").ok(), std::env::var("LOGNAME").ok()];
    let name = given.into_iter().flatten().map(|n| n.trim().to_string()).find(|n| !n.is_empty()).unwrap_or_else(login_from_uid);
    check_operator(&name)?;
    Ok(name)
}

/// At most 64 letters, digits, spaces and `. _ @ + -`: nothing that could
/// colour a terminal or start a new line when an audit row is printed.
pub fn check_operator(name: &str) -> anyhow::Result<()> {
    let plain = |c: char| c.is_alphanumeric() || " ._@+-".contains(c);
    if name.is_empty() || name.chars().count() > 64 || !name.chars().all(plain) {
        bail!(
            "operator name {} refused: use at most 64 letters, digits, spaces and . _ @ + - (--operator or $SKEIN_OPERATOR)",
            crate::render::clean(&format!("{name:?}"))
        );
    }
    Ok(())
}

fn login_from_uid() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid.to_string())
        .map(|f| f[0].to_string())
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// Ask before a change: `--yes` says yes; a terminal is asked; anything else
/// (a script without `--yes`) is refused, so nothing changes by accident.
pub fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what}: not confirmed (stdin is not a terminal); pass --yes to confirm");
    }
    // Read the answer as the prompt reads lines, so Ctrl-C (and Ctrl-D)
    // cancel at once instead of being echoed as `^C` while it waits; on the
    // terminal itself, so the question stays out of a piped stdout.
    let config = rustyline::Config::builder().behavior(rustyline::Behavior::PreferTerm).build();
    let mut editor = rustyline::DefaultEditor::with_config(config)?;
    match editor.readline(&format!("{}? [y/N] ", crate::render::clean(what))) {
        Ok(answer) if matches!(answer.trim(), "y" | "Y" | "yes") => Ok(()),
        Ok(_) | Err(ReadlineError::Interrupted | ReadlineError::Eof) => bail!("cancelled: nothing changed"),
        Err(e) => Err(e.into()),
    }
}

/// What a command says: the same facts as text for people and JSON for scripts.
pub struct Reply {
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn new(text: impl Into<String>, mut json: Value) -> Reply {
        ubids(&mut json);
        Reply { text: text.into(), json }
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json).unwrap_or_default());
        } else if !self.text.is_empty() {
            // JSON escapes control characters itself; text must too.
            println!("{}", crate::render::clean_lines(self.text.trim_end()));
        }
    }
}

/// Ids print as UBIDs everywhere an operator reads them, JSON included: any
/// `id` or `*_id` field holding a uuid is rewritten.
fn ubids(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if k == "id" || k.ends_with("_id") {
                    if let Some(u) = item.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()) {
                        *item = Value::String(skein_models::Ubid::from_uuid(u).to_string());
                        continue;
                    }
                }
                ubids(item);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(ubids),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use skein_models::{Ubid, UbidType};

    #[test]
    fn ids_in_json_replies_are_ubids() {
        let vm = Ubid::generate(UbidType::Vm);
        let reply = super::Reply::new("", json!({"vms": [{"id": vm.uuid(), "host_id": null, "name": vm.uuid()}]}));
        assert_eq!(reply.json["vms"][0]["id"], vm.to_string());
        assert_eq!(reply.json["vms"][0]["name"], vm.uuid().to_string(), "only id fields are rewritten");
    }

    #[test]
    fn operator_names_are_plain() {
        for good in ["alice", "Bob Smith", "ops@example.com", "j.doe-2", "zoë"] {
            super::check_operator(good).unwrap();
        }
        for bad in ["", "evil\u{1b}[31mRED\u{1b}[0m\nfake line", "a\tb", "x".repeat(65).as_str(), "rtl\u{202e}"] {
            let e = super::check_operator(bad).unwrap_err().to_string();
            assert!(e.contains("refused") && !e.chars().any(|c| c.is_control()), "{e}");
        }
    }
}

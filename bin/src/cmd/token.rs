//! `skein token create|list|revoke`: API bearer tokens. The secret is
//! printed once, at creation; only its hash is stored. Names are unique per
//! project among live tokens. Each change is confirmed and audited in the
//! transaction that makes it.

use anyhow::{anyhow, Context};
use serde_json::json;
use skein_models::{api_token, project, Ubid, UbidType};
use skein_progs::rules;

use crate::api::auth;
use crate::cmd::change::Change;
use crate::cmd::session::{OpsOptions, Reply, Session};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token and print its secret (once).
    Create(CreateArgs),
    /// A project's tokens (or operators'), with when each was made and last used.
    List {
        #[command(flatten)]
        owner: Owner,
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (tk...).
        id: String,
    },
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Owner {
    /// The project (by name) whose resources the token sees and touches.
    #[arg(long)]
    pub project: Option<String>,
    /// An operator token: every project's VMs, hosts and strands.
    #[arg(long)]
    pub operator: bool,
}

/// The options of the console's commands but `--operator`, which here
/// says whose token it is; the audit names $SKEIN_OPERATOR or the login.
#[derive(clap::Args, Debug)]
pub struct TokenOpts {
    /// Postgres URL; default: the embedded cluster (see `skein db`).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not ask before changing anything.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub owner: Owner,
    /// What the token is for (lowercase letters, digits, dots, dashes, underscores).
    #[arg(long)]
    pub name: String,
}

pub async fn run(cmd: TokenCmd, opts: TokenOpts) -> anyhow::Result<()> {
    let operator = std::env::var("SKEIN_OPERATOR").ok();
    let opts = OpsOptions { database_url: opts.database_url, json: opts.json, yes: opts.yes, operator };
    if let TokenCmd::Create(args) = &cmd {
        rules::token_name(&args.name).map_err(|e| anyhow!(e.cli_message()))?;
    }
    let s = Session::open(&opts).await?;
    let reply = match cmd {
        TokenCmd::Create(args) => create(&s, args, &opts).await?,
        TokenCmd::List { owner, all } => list(&s, owner, all).await?,
        TokenCmd::Revoke { id } => revoke(&s, &id, &opts).await?,
    };
    reply.print(opts.json);
    Ok(())
}

/// The project named, or None for operators.
async fn owner(s: &Session, owner: &Owner) -> anyhow::Result<Option<project::Project>> {
    match &owner.project {
        Some(name) => {
            let p = project::by_name(&mut *s.pool.acquire().await?, name).await?;
            Ok(Some(p.with_context(|| format!("no project named {name:?} (see `skein project list`)"))?))
        }
        None => Ok(None),
    }
}

fn owner_text(p: &Option<project::Project>) -> String {
    p.as_ref().map(|p| format!("project {}", p.name)).unwrap_or_else(|| "operator".into())
}

async fn create(s: &Session, args: CreateArgs, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let project = owner(s, &args.owner).await?;
    let whose = owner_text(&project);
    let id = Ubid::generate(UbidType::Token);
    let secret = auth::new_secret();
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("create {whose} token {}", args.name)).await?;
    api_token::insert(change.conn(), id.uuid(), &args.name, project.as_ref().map(|p| p.id), &auth::hash(&secret))
        .await
        .map_err(|e| rules::explain(e.into()))?;
    // The secret is never audited: only what the token is.
    change.commit("token-create", Some(id.uuid()), &json!({"name": args.name, "owner": whose})).await?;
    let project_id = project.as_ref().map(|p| Ubid::from_uuid(p.id));
    let text = format!("token {id} ({whose}) created. Its secret, shown only now:\n{secret}");
    Ok(Reply::new(text, json!({"id": id, "name": args.name, "project": project_id, "token": secret})))
}

async fn list(s: &Session, owner_args: Owner, all: bool) -> anyhow::Result<Reply> {
    let project = owner(s, &owner_args).await?;
    let tokens = api_token::list(&mut *s.pool.acquire().await?, project.as_ref().map(|p| p.id), all).await?;
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or("never".into());
    let mut text = format!("tokens of {} ({}):\n", owner_text(&project), tokens.len());
    for t in &tokens {
        let revoked = t.revoked_at.map(|r| format!("  revoked {}", r.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default();
        let line = format!("{}  {:<20} created {}  last used {}{revoked}\n", Ubid::from_uuid(t.id), t.name, when(Some(t.created_at)), when(t.last_used_at));
        text.push_str(&line);
    }
    Ok(Reply::new(text, json!({"tokens": tokens})))
}

async fn revoke(s: &Session, id: &str, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let id = Ubid::parse_as(id, UbidType::Token)?;
    let token = api_token::get(&mut *s.pool.acquire().await?, id.uuid()).await?.filter(|t| t.revoked_at.is_none());
    let token = token.ok_or_else(|| anyhow!("no live token {id}"))?;
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("revoke token {id} ({})", token.name)).await?;
    if !api_token::revoke(change.conn(), id.uuid()).await? {
        anyhow::bail!("token {id} was revoked meanwhile; nothing changed");
    }
    change.commit("token-revoke", Some(id.uuid()), &json!({"name": token.name})).await?;
    Ok(Reply::new(format!("token {id} revoked"), json!({"id": id, "revoked": true})))
}

//! `skein token create|revoke`: API bearer tokens. The secret is printed
//! once, at creation; only its hash is stored.

use anyhow::Context;
use skein_models::{api_token, project, Ubid, UbidType};

use crate::api::auth;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("owner").required(true).args(["project", "operator"])))]
pub struct CreateArgs {
    /// The project (by name) whose resources the token sees and touches.
    #[arg(long)]
    pub project: Option<String>,
    /// An operator token: every project's VMs, hosts and strands.
    #[arg(long)]
    pub operator: bool,
    /// What the token is for (lowercase letters, digits, dots, dashes, underscores).
    #[arg(long)]
    pub name: String,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// The token's id (tk...).
    pub id: String,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    if !name_ok(&args.name) {
        anyhow::bail!("--name must be 1-63 lowercase letters, digits, dots, dashes and underscores, starting with a letter or digit");
    }
    let url = crate::up::database_url(args.database_url.clone()).await?;
    let pool = crate::worker::connect(&url, 2).await?;
    let mut conn = pool.acquire().await?;
    let project = match &args.project {
        Some(name) => Some(project::by_name(&mut conn, name).await?.with_context(|| format!("no project named {name:?} (see `skein project list`)"))?),
        None => None,
    };
    let id = Ubid::generate(UbidType::Token);
    let secret = auth::new_secret();
    api_token::insert(&mut conn, id.uuid(), &args.name, project.as_ref().map(|p| p.id), &auth::hash(&secret)).await?;
    let owner = match &project {
        Some(p) => format!("project {}", p.name),
        None => "operator".to_string(),
    };
    if args.json {
        let project_id = project.as_ref().map(|p| Ubid::from_uuid(p.id));
        println!("{}", serde_json::json!({"id": id, "name": args.name, "project": project_id, "token": secret}));
    } else {
        println!("token {id} ({owner}) created. Its secret, shown only now:\n{secret}");
    }
    Ok(())
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let id = Ubid::parse_as(&args.id, UbidType::Token)?;
    let url = crate::up::database_url(args.database_url.clone()).await?;
    let pool = crate::worker::connect(&url, 2).await?;
    if !api_token::revoke(&mut *pool.acquire().await?, id.uuid()).await? {
        anyhow::bail!("no live token {id}");
    }
    println!("token {id} revoked");
    Ok(())
}

//! `skein project create|list`: the tenants that own VMs and API tokens.

use skein_models::{project, Ubid, UbidType};
use skein_progs::rules;

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The project's name (lowercase letters, digits, dashes).
    pub name: String,
    /// How many VMs it may have at once.
    #[arg(long, default_value_t = 10)]
    pub vm_quota: i32,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    rules::vm_name("name", &args.name).map_err(|e| anyhow::anyhow!("the project {}", e.rule))?;
    rules::in_range("vm_quota", args.vm_quota.into(), (0, i32::MAX.into())).map_err(|e| anyhow::anyhow!(e.cli_message()))?;
    let url = crate::up::database_url(args.database_url.clone()).await?;
    let pool = crate::worker::connect(&url, 2).await?;
    let id = Ubid::generate(UbidType::Project);
    project::insert(&mut *pool.acquire().await?, id.uuid(), &args.name, args.vm_quota).await.map_err(|e| rules::explain(e.into()))?;
    if args.json {
        println!("{}", serde_json::json!({"id": id, "name": args.name, "vm_quota": args.vm_quota}));
    } else {
        println!("project {} created as {id} (VM quota {})", args.name, args.vm_quota);
    }
    Ok(())
}

/// One JSON document with `--json`, like every other command.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let (url, _) = crate::embedded::given_or_embedded(args.database_url.clone()).await?;
    let pool = crate::worker::connect(&url, 2).await?;
    let projects = project::list(&mut *pool.acquire().await?).await?;
    if args.json {
        let rows: Vec<_> = projects
            .iter()
            .map(|p| serde_json::json!({"id": Ubid::from_uuid(p.id), "name": p.name, "vm_quota": p.vm_quota, "vm_count": p.vm_count}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"projects": rows}))?);
        return Ok(());
    }
    for p in &projects {
        println!("{}  {:<24} {}/{} VMs", Ubid::from_uuid(p.id), p.name, p.vm_count, p.vm_quota);
    }
    println!("{} projects", projects.len());
    Ok(())
}

//! `skein api`: serve the HTTP API alone (no workers) until Ctrl-C or SIGTERM.

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Postgres URL; default: the embedded cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Database connections to keep.
    #[arg(long, default_value_t = 8)]
    pub pool_size: u32,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9188).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub limits: crate::api::Limits,
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let url = crate::embedded::database_url(args.database_url.clone()).await?;
    let pool = crate::process::connect(&url, args.pool_size).await?;
    let secret = crate::process::secret_key()?;
    if let Some(addr) = args.metrics_addr {
        crate::process::serve_metrics(addr, pool.clone())?;
    }
    let listener = crate::api::bind(&args.listen).await?;
    println!("api: listening on http://{}", listener.local_addr()?);
    crate::api::serve_with(listener, pool, secret, args.limits, crate::process::shutdown_signal()).await
}

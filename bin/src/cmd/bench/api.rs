//! `skein bench --scenario api-create`: what enqueueing costs through the
//! HTTP API. The same VM creates run twice at `--connections` concurrent
//! clients: straight through `vm::create` in a transaction (the floor), and
//! as `POST /v1/vms` requests through the API's router (token lookup,
//! strict parsing, validation, the same one transaction). Both in one run, so
//! `api_over_direct` says what the API layer costs on this machine. The
//! router is called in process: this measures the API, not the kernel's
//! loopback. No worker runs, and everything made is removed afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use skein_models::{api_token, project, Ubid, UbidType};
use skein_progs::ssh::keys::SecretKey;
use skein_progs::vm::{self as vms, nexus, Spec};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::api::{self, auth, ApiState};
use super::{percentile, round1, round3};

const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench";

/// Creates per second and their latencies (ms, sorted), `n` creates from `clients` tasks.
async fn run_clients<F, Fut>(n: u64, clients: usize, create: F) -> anyhow::Result<(f64, Vec<f64>)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, times, create) = (next.clone(), times.clone(), create.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let t = Instant::now();
                create(i).await?;
                times.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let per_s = n as f64 / began.elapsed().as_secs_f64();
    let mut times = std::mem::take(&mut *times.lock().unwrap_or_else(|p| p.into_inner()));
    times.sort_by(f64::total_cmp);
    Ok((per_s, times))
}

/// A project with room for `n` VMs, and a token for it.
async fn tenant(pool: &PgPool, n: u64) -> anyhow::Result<(Ubid, String)> {
    let id = Ubid::generate(UbidType::Project);
    let mut conn = pool.acquire().await?;
    let name = format!("bench-{}", id.to_string().get(14..).unwrap_or("x"));
    project::insert(&mut conn, id.uuid(), &name, n.min(i32::MAX as u64) as i32).await?;
    let secret = auth::new_secret();
    api_token::insert(&mut conn, Ubid::generate(UbidType::Token).uuid(), "bench", Some(id.uuid()), &auth::hash(&secret)).await?;
    Ok((id, secret))
}

/// Remove a bench project and all it made (its VMs never ran).
async fn remove(pool: &PgPool, project: Ubid) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    skein_models::bench::remove_project(&mut conn, project.uuid()).await.with_context(|| format!("removing bench project {project}"))
}

/// `projects` tenants, each with room for `n` VMs and a token.
async fn tenants(pool: &PgPool, projects: usize, n: u64) -> anyhow::Result<Vec<(Ubid, String)>> {
    let mut all = Vec::with_capacity(projects);
    for _ in 0..projects {
        all.push(tenant(pool, n).await?);
    }
    Ok(all)
}

async fn remove_all(pool: &PgPool, tenants: &[(Ubid, String)]) -> anyhow::Result<()> {
    for (project, _) in tenants {
        remove(pool, *project).await?;
    }
    Ok(())
}

/// Creates are spread over `projects` tenants: each create takes its
/// project's quota under that project's row lock, so one project's creates
/// queue behind each other's commits (run with `--projects 1` to see it).
pub async fn measure(pool: &PgPool, n: u64, clients: usize, projects: usize, baseline_tx_per_s: f64, say: impl Fn(String)) -> anyhow::Result<Value> {
    let projects = projects.max(1);
    let direct_tenants = Arc::new(tenants(pool, projects, n).await?);
    say(format!("{n} creates straight through vm::create, {clients} clients, {projects} projects"));
    let direct = run_clients(n, clients, {
        let (pool, tenants) = (pool.clone(), direct_tenants.clone());
        move |i| {
            let (pool, project) = (pool.clone(), tenants[i as usize % tenants.len()].0);
            async move {
                let spec = Spec { name: &format!("d{i}"), cores: 1, memory_mib: 256, disk_mib: 64, public_key: PUBLIC_KEY, subnet: None };
                let mut tx = pool.begin().await?;
                vms::create(&mut tx, project, &spec, nexus::Frame::default()).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    })
    .await;
    remove_all(pool, &direct_tenants).await?;
    let (direct_per_s, _) = direct?;

    let api_tenants = Arc::new(tenants(pool, projects, n).await?);
    let router = api::router(ApiState { pool: pool.clone(), secret: SecretKey::random() });
    say(format!("{n} creates as POST /v1/vms through the API's router, {clients} clients, {projects} projects"));
    let through_api = run_clients(n, clients, {
        let tenants = api_tenants.clone();
        move |i| {
            let (router, token) = (router.clone(), tenants[i as usize % tenants.len()].1.clone());
            async move {
                let body = json!({"name": format!("a{i}"), "cores": 1, "memory_mib": 256, "disk_mib": 64, "public_key": PUBLIC_KEY});
                let req = Request::post("/v1/vms")
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))?;
                let status = router.oneshot(req).await?.status();
                if status != 201 {
                    bail!("POST /v1/vms answered {status}");
                }
                Ok(())
            }
        }
    })
    .await;
    remove_all(pool, &api_tenants).await?;
    let (api_per_s, times) = through_api?;

    Ok(json!({
        "scenario": "api-create",
        "creates": n,
        "clients": clients,
        "projects": projects,
        "api_creates_per_s": round1(api_per_s),
        "direct_creates_per_s": round1(direct_per_s),
        "api_over_direct": round3(api_per_s / direct_per_s),
        "baseline_tx_per_s": round1(baseline_tx_per_s),
        "ratio": round3(api_per_s / baseline_tx_per_s),
        "p50_ms": round3(percentile(&times, 0.50)),
        "p99_ms": round3(percentile(&times, 0.99)),
    }))
}

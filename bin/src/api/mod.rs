//! The HTTP API (`skein api`, and inside `skein up`): VMs for project
//! tokens; hosts, strands and every project's VMs for operator tokens.
//!
//! - [`auth`]: bearer tokens -> who is calling;
//! - [`error`]: the one error shape and its stable codes;
//! - [`extract`]: strict bodies, path ids, queries and pagination;
//! - [`idempotency`]: `Idempotency-Key` on creates;
//! - [`vms`], [`subnets`], [`hosts`], [`strands`]: the resources; [`vm_console`]: a VM's console;
//! - [`openapi`]: the document served at `/openapi.json`;
//! - [`serve`] (here): the HTTP/1 server, with [`Limits`] so that a slow
//!   or idle client cannot hold it, and one access log line and metrics
//!   per request.
//!
//! Every write a request makes (rows, events, strands, its idempotency key)
//! is one transaction: all of it or none of it.

pub mod auth;
pub mod error;
pub mod extract;
pub mod hosts;
pub mod idempotency;
pub mod openapi;
pub mod strands;
pub mod subnets;
pub mod vm_console;
pub mod vms;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use skein_progs::ssh::keys::SecretKey;
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};

/// The largest request body taken; more is refused with 413 `body_too_large`.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    /// Seals the SSH keys of hosts added through the API.
    pub secret: SecretKey,
}

/// One list makes both the router and [`ROUTES`], so the OpenAPI test
/// compares the document with the routes actually served.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every (method, path) the API serves.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn routes() -> Router<ApiState> {
            Router::new()$(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

routes! {
    GET "/openapi.json" => openapi::serve,
    GET "/v1/vms" => vms::list,
    POST "/v1/vms" => vms::create,
    GET "/v1/vms/{id}" => vms::get,
    DELETE "/v1/vms/{id}" => vms::destroy,
    GET "/v1/vms/{id}/progress" => vms::progress,
    POST "/v1/vms/{id}/stop" => vms::stop,
    POST "/v1/vms/{id}/start" => vms::start,
    POST "/v1/vms/{id}/restart" => vms::restart,
    GET "/v1/vms/{id}/console" => vm_console::get,
    GET "/v1/subnets" => subnets::list,
    POST "/v1/subnets" => subnets::create,
    GET "/v1/subnets/{id}" => subnets::get,
    DELETE "/v1/subnets/{id}" => subnets::delete,
    POST "/v1/subnets/{id}/rekey" => subnets::rekey,
    GET "/v1/hosts" => hosts::list,
    POST "/v1/hosts" => hosts::add,
    GET "/v1/hosts/{id}" => hosts::get,
    DELETE "/v1/hosts/{id}" => hosts::destroy,
    POST "/v1/hosts/{id}/drain" => hosts::drain,
    GET "/v1/strands/{id}" => strands::get,
}

/// The API as a service: the routes, JSON 404/405 fallbacks, the body limit.
pub fn router(state: ApiState) -> Router {
    routed(state, Duration::from_secs(Limits::default().request_timeout_secs))
}

/// [`router`], each request bounded by `timeout`, logged and counted.
fn routed(state: ApiState, timeout: Duration) -> Router {
    routes()
        .route_layer(middleware::from_fn(note_route))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(timeout, observe))
        .with_state(state)
}

/// What a request's handling learns for its access log line: the route it
/// matched and the token that called. Put in the request by [`observe`],
/// filled in by [`note_route`] and [`auth::Auth`].
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<(Option<String>, Option<skein_models::Ubid>)>>);

impl Notes {
    pub fn token(&self, id: skein_models::Ubid) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(id);
    }
}

async fn note_route(path: MatchedPath, req: Request, next: Next) -> Response {
    if let Some(notes) = req.extensions().get::<Notes>() {
        notes.0.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(path.as_str().to_string());
    }
    next.run(req).await
}

/// Every request: answered within `timeout` (else 503 `timeout`, and the
/// handler, with its transaction, is dropped: nothing of it commits), then
/// one access log line and its metrics. The route is the pattern
/// (`/v1/vms/{id}`), so neither log nor metrics grow with ids; the token is
/// its id, never its secret.
async fn observe(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let notes = Notes::default();
    req.extensions_mut().insert(notes.clone());
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request was not answered within {} s; nothing of it was committed", timeout.as_secs_f64()),
        )
        .into_response(),
    };
    let secs = start.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let (route, token) = notes.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let route = route.unwrap_or_else(|| "unmatched".into());
    let token = token.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
    tracing::info!(target: "skein::api::access", token, method, route, status, latency_ms = (secs * 1000.0).round() as u64, "request");
    metrics::counter!("skein_api_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("skein_api_request_duration_seconds", "method" => method, "route" => route).record(secs);
    response
}

/// How the server keeps slow, idle and many clients from holding it.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Seconds a client has to send a request's headers; an idle connection is closed after as long.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request may take, its body and answer included; then 503 `timeout`.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted until one ends.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { header_timeout_secs: 10, request_timeout_secs: 30, max_connections: 512 }
    }
}

/// Bind `addr` (port 0: any free port), for [`serve`].
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("api: cannot listen on {addr}"))
}

/// Serve the API on `listener` until `shutdown` completes, with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    secret: SecretKey,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, pool, secret, Limits::default(), shutdown).await
}

/// Serve the API on `listener` until `shutdown` completes. At most
/// `max_connections` are served at once; the rest wait in the listen queue,
/// and since every connection that sends nothing is closed after
/// `header_timeout_secs`, idle ones cannot keep a real request waiting
/// longer than that for each `max_connections` of them queued before it.
/// On shutdown, requests in progress get `request_timeout_secs` to finish.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    secret: SecretKey,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let request_timeout = Duration::from_secs(limits.request_timeout_secs.max(1));
    let app = routed(ApiState { pool, secret }, request_timeout);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(limits.header_timeout_secs.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, a connection reset before accept: wait a little, go on.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(request_timeout, slots.acquire_many(all)).await;
    Ok(())
}

//! The HTTP API (`skein api`, and inside `skein up`): VMs for project
//! tokens; hosts, strands and every project's VMs for operator tokens.
//!
//! - [`auth`]: bearer tokens -> who is calling;
//! - [`error`]: the one error shape and its stable codes;
//! - [`extract`]: strict bodies, path ids, queries and pagination;
//! - [`idempotency`]: `Idempotency-Key` on creates;
//! - [`vms`], [`hosts`], [`strands`]: the resources; [`vm_console`]: a VM's console;
//! - [`openapi`]: the document served at `/openapi.json`.
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
pub mod vm_console;
pub mod vms;

use axum::extract::DefaultBodyLimit;
use axum::routing::{on, MethodFilter};
use axum::Router;
use skein_progs::ssh::keys::SecretKey;
use sqlx::PgPool;

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
    GET "/v1/hosts" => hosts::list,
    POST "/v1/hosts" => hosts::add,
    GET "/v1/hosts/{id}" => hosts::get,
    DELETE "/v1/hosts/{id}" => hosts::destroy,
    POST "/v1/hosts/{id}/drain" => hosts::drain,
    GET "/v1/strands/{id}" => strands::get,
}

/// The API as a service: the routes, JSON 404/405 fallbacks, the body limit.
pub fn router(state: ApiState) -> Router {
    routes()
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Bind `addr` (port 0: any free port), for [`serve`].
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("api: cannot listen on {addr}"))
}

/// Serve the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    secret: SecretKey,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(ApiState { pool, secret })).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

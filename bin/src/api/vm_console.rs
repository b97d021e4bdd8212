//! `GET /v1/vms/{id}/console`: the tail of a VM's serial console (what the
//! guest printed while booting, or why it did not), read from its host over
//! SSH for its owner. Bounded: at most `progs::vm::console::CONSOLE_MAX`
//! bytes, `?bytes=` fewer.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skein_models::Ubid;
use skein_progs::ssh::SshPool;
use skein_progs::vm::console::{self, ConsoleError, CONSOLE_MAX};

use super::auth::{Auth, Caller};
use super::error::ApiError;
use super::extract::{ApiQuery, PathId};
use super::ApiState;

/// How long a host may take to answer.
const SSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One SSH pool (sessions reused per host) for every console request.
fn ssh() -> &'static SshPool {
    static POOL: OnceLock<SshPool> = OnceLock::new();
    POOL.get_or_init(SshPool::new)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// How many bytes of the end (1..=65536, default all of that).
    pub bytes: Option<u64>,
}

/// `GET /v1/vms/{id}/console`.
pub async fn get(State(st): State<ApiState>, auth: Auth, id: PathId, ApiQuery(q): ApiQuery<ConsoleQuery>) -> Result<Json<Value>, ApiError> {
    let bytes = q.bytes.unwrap_or(CONSOLE_MAX);
    if !(1..=CONSOLE_MAX).contains(&bytes) {
        return Err(ApiError::invalid_query(format!("bytes must be between 1 and {CONSOLE_MAX}")));
    }
    let (vm, located) = {
        let mut conn = st.pool.acquire().await?;
        let vm = super::vms::visible(&mut conn, &auth, &id).await?;
        let located = console::locate(&mut conn, &st.secret, &vm).await;
        (vm, located)
    };
    let tail = match located {
        Ok(at) => console::read(ssh(), &at, bytes, SSH_TIMEOUT).await,
        Err(e) => Err(e),
    };
    match tail {
        Ok(t) => Ok(Json(json!({
            "id": Ubid::from_uuid(vm.id), "state": vm.state, "size": t.size, "truncated": t.truncated, "text": t.text,
        }))),
        Err(ConsoleError::NotPlaced) => Err(ApiError::conflict("vm_not_placed", "the VM still waits for a host; it has no console yet")),
        Err(ConsoleError::Unreachable(why)) => {
            // Which host and why is operators' business.
            let message = match auth.caller {
                Caller::Operator => format!("the VM's host does not answer: {why}"),
                Caller::Project(_) => "the VM's host does not answer; try again later".to_string(),
            };
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "host_unreachable", message))
        }
        Err(ConsoleError::Failed(e)) => Err(ApiError::internal(format!("{e:#}"))),
    }
}

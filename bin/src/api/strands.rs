//! Strand status, for operator tokens: a live strand's row and semaphores,
//! or, once it has exited and been archived, what it exited with. Any UBID
//! is a strand id (a VM's or host's strand has the VM's or host's id).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use skein_models::{archive, semaphore, strand, Ubid};

use super::auth::Auth;
use super::error::ApiError;
use super::extract::PathId;
use super::ApiState;

/// `GET /v1/strands/{id}`.
pub async fn get(State(st): State<ApiState>, auth: Auth, PathId(raw): PathId) -> Result<Json<Value>, ApiError> {
    auth.operator()?;
    let id: Ubid = raw.parse().map_err(|_| ApiError::not_found("strand"))?;
    let mut conn = st.pool.acquire().await?;
    if let Some(s) = strand::get(&mut conn, id.uuid()).await? {
        let semaphores = semaphore::names(&mut conn, s.id).await?;
        return Ok(Json(json!({
            "id": id, "prog": s.prog, "label": s.label, "parent": s.parent_id.map(Ubid::from_uuid),
            "try": s.try_, "schedule": s.schedule, "leased": s.lease > chrono::Utc::now(), "lease_holder": s.lease_holder,
            "last_error": s.last_error, "last_error_at": s.last_error_at, "semaphores": semaphores,
            "stack": s.stack, "exited": s.exitval.is_some(), "exitval": s.exitval, "created_at": s.created_at,
        })));
    }
    match archive::get(&mut conn, id.uuid()).await? {
        Some(a) => Ok(Json(json!({
            "id": id, "prog": a.prog, "label": a.label, "stack": a.stack, "exited": true, "exitval": a.exitval,
            "created_at": a.created_at, "exited_at": a.exited_at,
        }))),
        None => Err(ApiError::not_found("strand")),
    }
}

//! VMs: create (returns at once; the VM's strand does the work), list, get,
//! destroy, and follow one's progress. A project token sees only its own
//! project's VMs; another project's VM is answered exactly like a VM that
//! does not exist (404), so ids leak nothing.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skein_models::vm::{self, DesiredState, Vm, VmState};
use skein_models::{archive, event, strand, Ubid, UbidType};
use skein_progs::rules::{self, Invalid};
use skein_progs::vm::{self as vms, nexus, CreateError, Spec};
use sqlx::PgConnection;

use super::auth::{Auth, Caller};
use super::error::ApiError;
use super::extract::{ApiQuery, JsonBody, Page, PageReq, PathId};
use super::{idempotency, ApiState};
use crate::signals::{self, VmAction};

/// How many recent events `/progress` shows.
pub const PROGRESS_EVENTS: i64 = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub name: String,
    pub cores: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub public_key: String,
    /// A private subnet of the project to join, by id (`ps...`) or name.
    #[serde(default)]
    pub subnet: Option<String>,
}

/// A VM as the API shows it. `host` only to operators.
#[derive(Debug, Serialize)]
pub struct VmView {
    pub id: Ubid,
    pub project: Ubid,
    pub name: String,
    pub state: VmState,
    pub desired_state: DesiredState,
    pub cores: i32,
    pub memory_mib: i32,
    pub disk_mib: i32,
    pub public_key: String,
    pub subnet: Option<Ubid>,
    pub private_ip: Option<String>,
    /// Where its SSH answers; null until it runs.
    pub ssh: Option<vm::Ssh>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Ubid>,
    pub created_at: DateTime<Utc>,
}

fn view(v: Vm, auth: &Auth) -> VmView {
    let ssh = v.ssh();
    VmView {
        id: Ubid::from_uuid(v.id),
        project: Ubid::from_uuid(v.project_id),
        name: v.name,
        state: v.state,
        desired_state: v.desired_state,
        cores: v.cores,
        memory_mib: v.memory_mib,
        disk_mib: v.disk_mib,
        public_key: v.public_key,
        subnet: v.subnet_id.map(Ubid::from_uuid),
        private_ip: v.private_ip,
        ssh,
        host: v.host_id.filter(|_| auth.caller == Caller::Operator).map(Ubid::from_uuid),
        created_at: v.created_at,
    }
}

/// The VM `id` if this caller may see it; 404 otherwise, whichever the reason.
pub(super) async fn visible(conn: &mut PgConnection, auth: &Auth, id: &PathId) -> Result<Vm, ApiError> {
    let id = id.parse(UbidType::Vm)?;
    match vm::get(conn, id.uuid()).await? {
        Some(v) if auth.sees(v.project_id) => Ok(v),
        _ => Err(ApiError::not_found("vm")),
    }
}

/// Check a request before anything is written, in the words of `rules`.
fn spec_of(req: &CreateVm) -> Result<Spec<'_>, ApiError> {
    rules::in_range("cores", req.cores, rules::VM_CORES)?;
    rules::in_range("memory_mib", req.memory_mib, rules::VM_MEMORY_MIB)?;
    rules::in_range("disk_mib", req.disk_mib, rules::VM_DISK_MIB)?;
    // In range, so these fit an i32.
    let spec = Spec {
        name: &req.name,
        cores: req.cores as i32,
        memory_mib: req.memory_mib as i32,
        disk_mib: req.disk_mib as i32,
        public_key: &req.public_key,
        subnet: req.subnet.as_deref(),
    };
    rules::vm_spec(&spec)?;
    Ok(spec)
}

fn create_error(e: CreateError) -> ApiError {
    match e {
        CreateError::QuotaExceeded(p) => ApiError::conflict("quota_exceeded", format!("project {p} has used up its VM quota")),
        CreateError::NoSuchSubnet(s) => Invalid::new("subnet", format!("{s} is not a private subnet of this project")).into(),
        CreateError::SubnetFull(s) => ApiError::conflict("subnet_full", format!("subnet {s} has no free address left")),
        CreateError::Database(e) => ApiError::from_db(e),
        CreateError::Other(e) => ApiError::from_anyhow(e),
    }
}

/// `POST /v1/vms`: quota, row, event and strand in one transaction (with
/// the idempotency key, if any); 201 with the VM in state `creating`.
pub async fn create(State(st): State<ApiState>, auth: Auth, headers: HeaderMap, body: JsonBody<CreateVm>) -> Result<Response, ApiError> {
    let project = auth.project()?;
    let spec = spec_of(&body.value)?;
    let key = idempotency::from_headers(&headers, &auth, "POST /v1/vms", &body.json)?;
    let mut tx = st.pool.begin().await?;
    if let Some(replay) = idempotency::claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let id = vms::create_by(&mut tx, project, &spec, nexus::Frame::default(), auth.actor(), &auth.by()).await.map_err(create_error)?;
    let row = vm::get(&mut tx, id.uuid()).await?.ok_or_else(|| ApiError::internal("the VM just created is not there"))?;
    let response = serde_json::to_value(view(row, &auth)).map_err(ApiError::internal)?;
    idempotency::finish(&mut tx, key.as_ref(), id.uuid(), StatusCode::CREATED, &response).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListVms {
    pub limit: Option<i64>,
    pub after: Option<String>,
    /// Operators only: one project's VMs.
    pub project: Option<String>,
}

/// `GET /v1/vms`: the caller's project's VMs (operators: all, or `?project=`), in id order.
pub async fn list(State(st): State<ApiState>, auth: Auth, ApiQuery(q): ApiQuery<ListVms>) -> Result<Json<Page<VmView>>, ApiError> {
    let req = PageReq::new(q.limit, q.after.as_deref(), UbidType::Vm)?;
    let project = match (auth.caller, &q.project) {
        (Caller::Project(p), None) => Some(p.uuid()),
        (Caller::Project(_), Some(_)) => return Err(ApiError::forbidden("only operator tokens choose a project")),
        (Caller::Operator, Some(p)) => {
            Some(Ubid::parse_as(p, UbidType::Project).map_err(|e| ApiError::invalid_query(format!("project must be a project id: {e}")))?.uuid())
        }
        (Caller::Operator, None) => None,
    };
    let rows = vm::page(&mut *st.pool.acquire().await?, project, req.after, req.fetch()).await?;
    Ok(Json(Page::of(rows, req, |v| v.id, |v| view(v, &auth))))
}

/// `GET /v1/vms/{id}`.
pub async fn get(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<Json<VmView>, ApiError> {
    let row = visible(&mut *st.pool.acquire().await?, &auth, &id).await?;
    Ok(Json(view(row, &auth)))
}

/// `DELETE /v1/vms/{id}`: ask its strand to destroy it; 202 at once. The row
/// stays, in state `destroyed` once the strand is done. Repeating is harmless.
pub async fn destroy(st: State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<VmView>), ApiError> {
    signal(st, auth, id, VmAction::Destroy).await
}

/// `POST /v1/vms/{id}/stop`: 202; the VM keeps its disk and its place.
/// 409 `vm_not_placed` while it still waits for a host.
pub async fn stop(st: State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<VmView>), ApiError> {
    signal(st, auth, id, VmAction::Stop).await
}

/// `POST /v1/vms/{id}/start`: 202; a stopped VM boots again.
pub async fn start(st: State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<VmView>), ApiError> {
    signal(st, auth, id, VmAction::Start).await
}

/// `POST /v1/vms/{id}/restart`: 202; only a running VM (409 `vm_not_running` otherwise).
pub async fn restart(st: State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<VmView>), ApiError> {
    signal(st, auth, id, VmAction::Restart).await
}

async fn signal(State(st): State<ApiState>, auth: Auth, id: PathId, action: VmAction) -> Result<(StatusCode, Json<VmView>), ApiError> {
    let mut tx = st.pool.begin().await?;
    let row = visible(&mut tx, &auth, &id).await?;
    let (row, _) = signals::vm(&mut tx, row.id, action, auth.actor(), &auth.by()).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(view(row, &auth))))
}

/// A step's error names hosts, addresses and paths: operators' business. A
/// project hears that its VM's work is failing and being retried, not why.
fn shown_error(error: Option<String>, auth: &Auth) -> Option<String> {
    match auth.caller {
        Caller::Operator => error,
        Caller::Project(_) => error.map(|_| "the last step failed; it is retried (operators see why)".to_string()),
    }
}

/// `GET /v1/vms/{id}/progress`: where its strand is (label, tries, last
/// error, next run) and its latest events, oldest first.
pub async fn progress(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<Json<Value>, ApiError> {
    let mut conn = st.pool.acquire().await?;
    let row = visible(&mut conn, &auth, &id).await?;
    let strand = match strand::get(&mut conn, row.id).await? {
        Some(s) => json!({
            "prog": s.prog, "label": s.label, "try": s.try_, "last_error": shown_error(s.last_error, &auth),
            "last_error_at": s.last_error_at, "schedule": s.schedule, "exited": s.exitval.is_some(),
        }),
        None => match archive::get(&mut conn, row.id).await? {
            Some(a) => json!({"prog": a.prog, "label": a.label, "try": 0, "last_error": null, "last_error_at": null,
                              "schedule": null, "exited": true}),
            None => Value::Null,
        },
    };
    let events: Vec<Value> = event::recent(&mut conn, row.id, PROGRESS_EVENTS)
        .await?
        .into_iter()
        .map(|mut e| {
            // Which host runs a VM is operators' business.
            if auth.caller != Caller::Operator {
                if let Some(d) = e.detail.as_object_mut() {
                    d.remove("host");
                }
            }
            json!({"kind": e.kind, "actor": e.actor, "detail": e.detail, "at": e.created_at})
        })
        .collect();
    Ok(Json(json!({
        "id": Ubid::from_uuid(row.id), "state": row.state, "desired_state": row.desired_state,
        "ssh": row.ssh(), "strand": strand, "events": events,
    })))
}

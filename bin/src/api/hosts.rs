//! Hosts, for operator tokens: add (its strand prepares it), list, get,
//! drain (no new VMs; its VMs keep running) and destroy (refused while VMs
//! are on it). Input is checked by the same rules as `skein host add`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skein_models::vm_host::{self, HostState, VmHost};
use skein_models::{event, sshable, Ubid, UbidType};
use skein_progs::host::{self, nexus, NewHost};
use skein_progs::rules;
use sqlx::PgConnection;

use super::auth::Auth;
use super::error::ApiError;
use super::extract::{ApiQuery, JsonBody, Page, PageReq, PathId};
use super::{idempotency, ApiState};
use crate::signals::{self, HostAction};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddHost {
    pub name: String,
    pub address: String,
    #[serde(default = "default_port")]
    pub port: i64,
    #[serde(default = "default_user")]
    pub user: String,
    /// A private key the host already authorizes for `user`; skein then
    /// installs a key of its own and uses only that.
    pub bootstrap_private_key: String,
    #[serde(default = "default_root_dir")]
    pub root_dir: String,
    #[serde(default = "default_checkup_secs")]
    pub checkup_secs: i64,
    /// Where its private-network tunnels listen for other hosts (IPv4);
    /// its SSH address if not given.
    #[serde(default)]
    pub underlay: Option<String>,
}

fn default_port() -> i64 {
    22
}
fn default_user() -> String {
    "root".into()
}
fn default_root_dir() -> String {
    "/var/lib/skein".into()
}
fn default_checkup_secs() -> i64 {
    60
}

#[derive(Debug, Serialize)]
pub struct HostView {
    pub id: Ubid,
    pub name: String,
    pub state: HostState,
    pub address: Option<String>,
    pub port: Option<i32>,
    pub user: Option<String>,
    pub root_dir: String,
    /// Where its private-network tunnels listen (null: its SSH address).
    pub underlay: Option<String>,
    pub cpus: Option<i32>,
    pub memory_mib: Option<i64>,
    pub storage_free_mib: Option<i64>,
    pub used_cores: i32,
    pub used_memory_mib: i64,
    pub used_disk_mib: i64,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub kvm_usable: Option<bool>,
    pub agent_version: Option<String>,
    pub image_version: Option<String>,
    pub missed_checks: i32,
    pub last_checkup_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

async fn view(conn: &mut PgConnection, h: VmHost) -> Result<HostView, ApiError> {
    let ssh = sshable::get(conn, h.sshable_id).await?;
    Ok(HostView {
        id: Ubid::from_uuid(h.id),
        name: h.name,
        state: h.state,
        address: ssh.as_ref().map(|s| s.host.clone()),
        port: ssh.as_ref().map(|s| s.port),
        user: ssh.map(|s| s.unix_user),
        root_dir: h.root_dir,
        underlay: h.underlay,
        cpus: h.facts.cpus,
        memory_mib: h.facts.memory_mib,
        storage_free_mib: h.facts.storage_free_mib,
        used_cores: h.used_cores,
        used_memory_mib: h.used_memory_mib,
        used_disk_mib: h.used_disk_mib,
        os: h.facts.os,
        arch: h.facts.arch,
        kvm_usable: h.facts.kvm_usable,
        agent_version: h.agent_version,
        image_version: h.image_version,
        missed_checks: h.missed_checks,
        last_checkup_at: h.last_checkup_at,
        created_at: h.created_at,
    })
}

async fn find(conn: &mut PgConnection, id: &PathId) -> Result<VmHost, ApiError> {
    let id = id.parse(UbidType::VmHost)?;
    vm_host::get(conn, id.uuid()).await?.ok_or_else(|| ApiError::not_found("host"))
}

/// `POST /v1/hosts`: sshable, host row and strand in one transaction; 201, state `new`.
pub async fn add(State(st): State<ApiState>, auth: Auth, headers: HeaderMap, body: JsonBody<AddHost>) -> Result<Response, ApiError> {
    auth.operator()?;
    let req = &body.value;
    rules::in_range("port", req.port, rules::HOST_PORT)?;
    rules::host_checkup_secs(req.checkup_secs)?;
    if let Some(u) = &req.underlay {
        rules::underlay(u)?;
    }
    let new = NewHost {
        name: &req.name,
        address: &req.address,
        port: req.port as u16,
        user: &req.user,
        bootstrap_private_key: &req.bootstrap_private_key,
        root_dir: &req.root_dir,
    };
    rules::new_host(&new)?;
    let key = idempotency::from_headers(&headers, &auth, "POST /v1/hosts", &body.json)?;
    let mut tx = st.pool.begin().await?;
    if let Some(replay) = idempotency::claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let frame = nexus::Frame { checkup_secs: req.checkup_secs as u64, ..Default::default() };
    let id = host::add(&mut tx, &st.secret, &new, frame).await.map_err(ApiError::from_anyhow)?;
    vm_host::set_underlay(&mut tx, id.uuid(), req.underlay.as_deref()).await?;
    event::record(&mut tx, id.uuid(), "added", auth.actor(), &auth.by()).await?;
    let row = vm_host::get(&mut tx, id.uuid()).await?.ok_or_else(|| ApiError::internal("the host just added is not there"))?;
    let response = serde_json::to_value(view(&mut tx, row).await?).map_err(ApiError::internal)?;
    idempotency::finish(&mut tx, key.as_ref(), id.uuid(), StatusCode::CREATED, &response).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListHosts {
    pub limit: Option<i64>,
    pub after: Option<String>,
}

/// `GET /v1/hosts`, in id order.
pub async fn list(State(st): State<ApiState>, auth: Auth, ApiQuery(q): ApiQuery<ListHosts>) -> Result<Json<Page<HostView>>, ApiError> {
    auth.operator()?;
    let req = PageReq::new(q.limit, q.after.as_deref(), UbidType::VmHost)?;
    let mut conn = st.pool.acquire().await?;
    let rows = vm_host::page(&mut conn, req.after, req.fetch()).await?;
    let page = Page::of(rows, req, |h| h.id, |h| h);
    let mut items = Vec::with_capacity(page.items.len());
    for h in page.items {
        items.push(view(&mut conn, h).await?);
    }
    Ok(Json(Page { items, next: page.next }))
}

/// `GET /v1/hosts/{id}`.
pub async fn get(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<Json<HostView>, ApiError> {
    auth.operator()?;
    let mut conn = st.pool.acquire().await?;
    let row = find(&mut conn, &id).await?;
    Ok(Json(view(&mut conn, row).await?))
}

/// `POST /v1/hosts/{id}/drain`: its strand stops placements on it; 202.
pub async fn drain(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<HostView>), ApiError> {
    signal(&st, &auth, &id, HostAction::Drain).await
}

/// `DELETE /v1/hosts/{id}`: its strand retires it; 202. Refused while VMs
/// that are not destroyed are placed on it: destroy those first.
pub async fn destroy(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<HostView>), ApiError> {
    signal(&st, &auth, &id, HostAction::Destroy).await
}

async fn signal(st: &ApiState, auth: &Auth, id: &PathId, action: HostAction) -> Result<(StatusCode, Json<HostView>), ApiError> {
    auth.operator()?;
    let host = id.parse(UbidType::VmHost)?;
    let mut tx = st.pool.begin().await?;
    let row = signals::host(&mut tx, host.uuid(), action, auth.actor(), &auth.by()).await?;
    let view = view(&mut tx, row).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

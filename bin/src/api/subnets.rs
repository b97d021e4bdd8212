//! Private subnets, a project's own IPv4 ranges: create, list, get (with its
//! VMs and their addresses, and the hosts, tunnels and rekeys that carry
//! it across hosts), delete, rekey on demand. Project tokens only; another project's
//! subnet is answered exactly like one that does not exist (404). A deleted
//! subnet frees its name; deleting one that still has live VMs is a 409.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skein_models::subnet::{self, Member, Subnet};
use skein_models::{Ubid, UbidType};
use skein_progs::rules;
use skein_progs::vnet::{rekey, view};
use sqlx::PgConnection;

use super::auth::Auth;
use super::error::ApiError;
use super::extract::{ApiQuery, JsonBody, Page, PageReq, PathId};
use super::{idempotency, ApiState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    pub name: String,
    /// "10.0.0.0/24": see `rules::cidr`.
    pub cidr: String,
}

/// A subnet as the API shows it; `vms` only on `GET /v1/subnets/{id}`.
#[derive(Debug, Serialize)]
pub struct SubnetView {
    pub id: Ubid,
    pub project: Ubid,
    pub name: String,
    pub cidr: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vms: Option<Vec<MemberView>>,
    /// The hosts its VMs run on and the tunnels between them (GET by id only).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub mesh: Option<view::MeshView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: Ubid,
    pub name: String,
    pub state: String,
    pub private_ip: String,
    /// The host it runs on (null until placed).
    pub host: Option<Ubid>,
}

fn view(s: Subnet, vms: Option<Vec<Member>>, mesh: Option<view::MeshView>) -> SubnetView {
    SubnetView {
        id: Ubid::from_uuid(s.id),
        project: Ubid::from_uuid(s.project_id),
        name: s.name,
        cidr: s.cidr,
        created_at: s.created_at,
        vms: vms.map(|m| {
            m.into_iter()
                .map(|m| MemberView {
                    id: Ubid::from_uuid(m.id),
                    name: m.name,
                    state: m.state,
                    private_ip: m.private_ip,
                    host: m.host_id.map(Ubid::from_uuid),
                })
                .collect()
        }),
        mesh,
    }
}

/// The caller's live subnet `id`; 404 for anything else, whichever the reason.
async fn visible(conn: &mut PgConnection, auth: &Auth, id: &PathId) -> Result<Subnet, ApiError> {
    let project = auth.project()?;
    let id = id.parse(UbidType::Subnet)?;
    subnet::get(conn, project.uuid(), id.uuid()).await?.ok_or_else(|| ApiError::not_found("private subnet"))
}

/// `POST /v1/subnets`: 201 with the subnet; 409 if a live subnet of the
/// project has the name; 422 for a name or range the rules refuse. Takes
/// an `Idempotency-Key`, as VM creates do.
pub async fn create(State(st): State<ApiState>, auth: Auth, headers: HeaderMap, body: JsonBody<CreateSubnet>) -> Result<Response, ApiError> {
    let project = auth.project()?;
    let req = &body.value;
    rules::vm_name("name", &req.name)?;
    rules::cidr(&req.cidr)?;
    let key = idempotency::from_headers(&headers, &auth, "POST /v1/subnets", &body.json)?;
    let mut tx = st.pool.begin().await?;
    if let Some(replay) = idempotency::claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let id = subnet::create(&mut tx, project.uuid(), &req.name, &req.cidr).await?;
    let row = subnet::get(&mut tx, project.uuid(), id.uuid()).await?.ok_or_else(|| ApiError::internal("the subnet just created is not there"))?;
    let response = serde_json::to_value(view(row, None, None)).map_err(ApiError::internal)?;
    idempotency::finish(&mut tx, key.as_ref(), id.uuid(), StatusCode::CREATED, &response).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSubnets {
    pub limit: Option<i64>,
    pub after: Option<String>,
}

/// `GET /v1/subnets`: the project's live subnets, in id order.
pub async fn list(State(st): State<ApiState>, auth: Auth, ApiQuery(q): ApiQuery<ListSubnets>) -> Result<Json<Page<SubnetView>>, ApiError> {
    let project = auth.project()?;
    let req = PageReq::new(q.limit, q.after.as_deref(), UbidType::Subnet)?;
    let rows = subnet::page(&mut *st.pool.acquire().await?, project.uuid(), req.after, req.fetch()).await?;
    Ok(Json(Page::of(rows, req, |s| s.id, |s| view(s, None, None))))
}

/// `GET /v1/subnets/{id}`: the subnet, its VMs that are not destroyed and
/// their addresses, its hosts (keys, last rekey) and the tunnels between them.
pub async fn get(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<Json<SubnetView>, ApiError> {
    let mut conn = st.pool.acquire().await?;
    let row = visible(&mut conn, &auth, &id).await?;
    let members = subnet::members(&mut conn, row.id).await?;
    let mesh = view::mesh(&mut conn, row.id).await?;
    Ok(Json(view(row, Some(members), Some(mesh))))
}

/// What `POST /v1/subnets/{id}/rekey` started.
#[derive(Debug, Serialize)]
pub struct Rekeys {
    pub subnet: Ubid,
    /// One per host of the subnet: the rekey strand (`GET /v1/strands/{id}`),
    /// one that was running there already.
    pub rekeys: Vec<rekey::Started>,
}

/// `POST /v1/subnets/{id}/rekey`: 202; replace the tunnel keys of every
/// host the subnet spans now, make-before-break (traffic keeps flowing).
/// A host already rekeying is not rekeyed twice: its running rekey is named.
pub async fn rekey(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<(StatusCode, Json<Rekeys>), ApiError> {
    let mut tx = st.pool.begin().await?;
    let row = visible(&mut tx, &auth, &id).await?;
    let rekeys = rekey::start_for_subnet(&mut tx, row.id, "user").await.map_err(ApiError::internal)?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(Rekeys { subnet: Ubid::from_uuid(row.id), rekeys })))
}

/// `DELETE /v1/subnets/{id}`: 200 with the subnet as it was; 409
/// `subnet_has_vms` while VMs not meant to be destroyed are in it.
pub async fn delete(State(st): State<ApiState>, auth: Auth, id: PathId) -> Result<Json<SubnetView>, ApiError> {
    let mut tx = st.pool.begin().await?;
    let row = visible(&mut tx, &auth, &id).await?;
    // Locked: no VM joins it between counting and deleting.
    subnet::lock_live(&mut tx, row.project_id, Some(row.id), "").await?.ok_or_else(|| ApiError::not_found("private subnet"))?;
    let live = subnet::live_vms(&mut tx, row.id).await?;
    if live > 0 {
        return Err(ApiError::conflict("subnet_has_vms", format!("subnet {} has {live} VMs that are not destroyed; destroy them first", row.name)));
    }
    subnet::delete(&mut tx, row.id).await?;
    tx.commit().await?;
    Ok(Json(view(row, None, None)))
}

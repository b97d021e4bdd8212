//! Private subnets (a project's own IPv4 ranges) and the addresses VMs get
//! from them. A deleted subnet keeps its row, for its VMs' history, and
//! frees its name; only live subnets are listed, looked up or joined.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{Ubid, UbidType};

/// Create a subnet of `project` on `cidr` (e.g. "10.9.0.0/24"). Its VNI
/// (the id of its segment between hosts) comes from a sequence: unique,
/// never reused.
pub async fn create(conn: &mut PgConnection, project: Uuid, name: &str, cidr: &str) -> Result<Ubid, sqlx::Error> {
    let id = Ubid::generate(UbidType::Subnet);
    sqlx::query("INSERT INTO private_subnet (id, project_id, name, cidr) VALUES ($1, $2, $3, $4::cidr)")
        .bind(id.uuid())
        .bind(project)
        .bind(name)
        .bind(cidr)
        .execute(conn)
        .await?;
    Ok(id)
}

/// A subnet as its owner sees it.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Subnet {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    /// "a.b.c.d/len".
    pub cidr: String,
    /// Its segment's VXLAN id between hosts.
    pub vni: i32,
    pub created_at: DateTime<Utc>,
}

/// A VM of a subnet and its address there.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Member {
    pub id: Uuid,
    pub name: String,
    pub state: String,
    pub host_id: Option<Uuid>,
    /// "a.b.c.d/len".
    pub private_ip: String,
}

const COLUMNS: &str = "id, project_id, name, cidr::text AS cidr, vni, created_at";

/// The live subnet `id` of `project`.
pub async fn get(conn: &mut PgConnection, project: Uuid, id: Uuid) -> Result<Option<Subnet>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM private_subnet WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL"))
        .bind(id)
        .bind(project)
        .fetch_optional(conn)
        .await
}

/// The live subnet `id`, of whichever project (for operators).
pub async fn by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Subnet>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM private_subnet WHERE id = $1 AND deleted_at IS NULL")).bind(id).fetch_optional(conn).await
}

/// The live subnet of `project` named `name`.
pub async fn by_name(conn: &mut PgConnection, project: Uuid, name: &str) -> Result<Option<Subnet>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM private_subnet WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL"))
        .bind(project)
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// The live subnet of `project` with id `id` (if the reference is an id) or
/// named `name`, locked until the caller's transaction ends: a VM joining it
/// and its deletion are decided one after the other, so no VM joins a
/// deleted subnet.
pub async fn lock_live(conn: &mut PgConnection, project: Uuid, id: Option<Uuid>, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM private_subnet WHERE project_id = $1 AND deleted_at IS NULL AND (id = $2 OR ($2 IS NULL AND name = $3)) FOR UPDATE",
    )
    .bind(project)
    .bind(id)
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// One page of `project`'s live subnets in id order, after the cursor `after`.
pub async fn page(conn: &mut PgConnection, project: Uuid, after: Option<Uuid>, limit: i64) -> Result<Vec<Subnet>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM private_subnet WHERE project_id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id > $2) \
         ORDER BY id LIMIT $3"
    ))
    .bind(project)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The subnet's VMs that are not destroyed, with their addresses, by address.
pub async fn members(conn: &mut PgConnection, subnet: Uuid) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, state, host_id, private_ip::text AS private_ip FROM vm \
         WHERE subnet_id = $1 AND state <> 'destroyed' ORDER BY private_ip",
    )
    .bind(subnet)
    .fetch_all(conn)
    .await
}

/// How many of the subnet's VMs are live (not meant to be destroyed).
pub async fn live_vms(conn: &mut PgConnection, subnet: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM vm WHERE subnet_id = $1 AND desired_state <> 'destroyed'").bind(subnet).fetch_one(conn).await
}

/// Mark the subnet deleted (its name is free again). The caller holds its
/// lock ([`lock_live`]) and has seen no live VM in it.
pub async fn delete(conn: &mut PgConnection, subnet: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE private_subnet SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL").bind(subnet).execute(conn).await?;
    Ok(())
}

/// The lowest free address of the subnet (".1" is left for a gateway; a
/// destroyed VM's address is free again),
/// as "a.b.c.d/len". The subnet row is locked for the rest of the caller's
/// transaction, so concurrent creates in one subnet take turns.
pub async fn allocate_ip(conn: &mut PgConnection, subnet: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT 1 FROM private_subnet WHERE id = $1 FOR UPDATE").bind(subnet).execute(&mut *conn).await?;
    sqlx::query_scalar(
        "SELECT set_masklen(network(s.cidr) + g, masklen(s.cidr))::text FROM private_subnet s, \
             generate_series(2, (2 ^ (32 - masklen(s.cidr)))::bigint - 2) g \
         WHERE s.id = $1 AND NOT EXISTS ( \
             SELECT 1 FROM vm WHERE vm.subnet_id = $1 AND vm.state <> 'destroyed' AND host(vm.private_ip) = host(network(s.cidr) + g)) \
         ORDER BY g LIMIT 1",
    )
    .bind(subnet)
    .fetch_optional(conn)
    .await
}

/// Put a VM on a subnet with an address.
pub async fn assign(conn: &mut PgConnection, vm: Uuid, subnet: Uuid, ip: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm SET subnet_id = $2, private_ip = $3::inet WHERE id = $1").bind(vm).bind(subnet).bind(ip).execute(conn).await?;
    Ok(())
}

//! Private subnets and the addresses VMs get from them.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Ubid, UbidType};

/// Create a subnet of `project` on `cidr` (e.g. "10.9.0.0/24"). Its
/// multicast group is derived from its id (unique; a clash is refused).
pub async fn create(conn: &mut PgConnection, project: Uuid, name: &str, cidr: &str) -> Result<Ubid, sqlx::Error> {
    let id = Ubid::generate(UbidType::Subnet);
    let b = id.uuid().as_bytes().to_owned();
    let mcast = format!("239.192.{}.{}:{}", b[14], b[15], 7000 + (u16::from(b[13]) % 2000));
    sqlx::query("INSERT INTO private_subnet (id, project_id, name, cidr, mcast) VALUES ($1, $2, $3, $4::cidr, $5)")
        .bind(id.uuid())
        .bind(project)
        .bind(name)
        .bind(cidr)
        .bind(mcast)
        .execute(conn)
        .await?;
    Ok(id)
}

/// The subnet's multicast group, if it belongs to `project`.
pub async fn mcast_of(conn: &mut PgConnection, subnet: Uuid, project: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT mcast FROM private_subnet WHERE id = $1 AND project_id = $2")
        .bind(subnet)
        .bind(project)
        .fetch_optional(conn)
        .await
}

/// The lowest free address of the subnet (".1" is left for a gateway),
/// as "a.b.c.d/len". The subnet row is locked for the rest of the caller's
/// transaction, so concurrent creates in one subnet take turns.
pub async fn allocate_ip(conn: &mut PgConnection, subnet: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT 1 FROM private_subnet WHERE id = $1 FOR UPDATE").bind(subnet).execute(&mut *conn).await?;
    sqlx::query_scalar(
        "SELECT set_masklen(network(s.cidr) + g, masklen(s.cidr))::text FROM private_subnet s, \
             generate_series(2, (2 ^ (32 - masklen(s.cidr)))::bigint - 2) g \
         WHERE s.id = $1 AND NOT EXISTS ( \
             SELECT 1 FROM vm WHERE vm.subnet_id = $1 AND host(vm.private_ip) = host(network(s.cidr) + g)) \
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

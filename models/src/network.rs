//! Private networks across hosts: each host's network strand and what it
//! applied (`host_network`), its tunnel keys by generation (`tunnel_key`),
//! and the facts its desired state is computed from (`progs::vnet`).
//!
//! Whoever changes what a host should have raises its `want_seq` ([`bump`])
//! in the change's own transaction and wakes its strand; the strand reads
//! `want_seq` before the facts, applies, and records that seq as applied.
//! So `applied_seq >= n` means the host has what was wanted at `n` or later,
//! which is how a VM waits for its NIC and a rekey for each phase.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// A host's network strand and what it applied.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct HostNetwork {
    pub host_id: Uuid,
    pub strand_id: Uuid,
    pub want_seq: i64,
    pub applied_seq: i64,
    pub applied_at: Option<DateTime<Utc>>,
    pub applied: Option<Value>,
    pub status: Option<Value>,
    pub status_at: Option<DateTime<Utc>>,
    pub last_rekey_at: Option<DateTime<Utc>>,
    pub rekey_strand_id: Option<Uuid>,
    pub rekey_phase: Option<String>,
    pub rekey_started_at: Option<DateTime<Utc>>,
}

/// The host's network row, made (with `strand` as its strand id) if it had
/// none. Returns its strand id and whether it was made now (then the caller
/// starts that strand in the same transaction). Two callers at once: the
/// second waits for the first's commit and gets its strand.
pub async fn ensure(conn: &mut PgConnection, host: Uuid, strand: Uuid) -> Result<(Uuid, bool), sqlx::Error> {
    let made: Option<Uuid> =
        sqlx::query_scalar("INSERT INTO host_network (host_id, strand_id) VALUES ($1, $2) ON CONFLICT (host_id) DO NOTHING RETURNING strand_id")
            .bind(host)
            .bind(strand)
            .fetch_optional(&mut *conn)
            .await?;
    match made {
        Some(s) => Ok((s, true)),
        None => Ok((sqlx::query_scalar("SELECT strand_id FROM host_network WHERE host_id = $1").bind(host).fetch_one(conn).await?, false)),
    }
}

pub async fn get(conn: &mut PgConnection, host: Uuid) -> Result<Option<HostNetwork>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM host_network WHERE host_id = $1").bind(host).fetch_optional(conn).await
}

/// The network rows of these hosts.
pub async fn get_many(conn: &mut PgConnection, hosts: &[Uuid]) -> Result<Vec<HostNetwork>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM host_network WHERE host_id = ANY($1) ORDER BY host_id").bind(hosts).fetch_all(conn).await
}

/// A host whose state must be applied again, and the seq that will say so.
#[derive(Clone, Copy, Debug, FromRow, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Bumped {
    pub host_id: Uuid,
    pub strand_id: Uuid,
    pub want_seq: i64,
}

/// Something these hosts should have changed: raise each one's `want_seq`.
/// Rows are locked in id order (as every bump locks them), so two bumps of
/// overlapping hosts cannot deadlock. Hosts without a network row are
/// skipped (they have nothing to change yet).
pub async fn bump(conn: &mut PgConnection, hosts: &[Uuid]) -> Result<Vec<Bumped>, sqlx::Error> {
    sqlx::query_as(
        "WITH locked AS (SELECT host_id FROM host_network WHERE host_id = ANY($1) ORDER BY host_id FOR UPDATE) \
         UPDATE host_network n SET want_seq = n.want_seq + 1 FROM locked WHERE n.host_id = locked.host_id \
         RETURNING n.host_id, n.strand_id, n.want_seq",
    )
    .bind(hosts)
    .fetch_all(conn)
    .await
}

/// The host applied the state computed after reading `seq`.
pub async fn record_applied(conn: &mut PgConnection, host: Uuid, seq: i64, applied: &Value, status: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE host_network SET applied_seq = greatest(applied_seq, $2), applied_at = now(), applied = $3, \
             status = $4, status_at = now() WHERE host_id = $1",
    )
    .bind(host)
    .bind(seq)
    .bind(applied)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the host said at a checkup.
pub async fn record_status(conn: &mut PgConnection, host: Uuid, status: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE host_network SET status = $2, status_at = now() WHERE host_id = $1").bind(host).bind(status).execute(conn).await?;
    Ok(())
}

/// Forget the host's network: its row and its keys (its strand ends with it).
pub async fn delete(conn: &mut PgConnection, host: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tunnel_key WHERE host_id = $1").bind(host).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM host_network WHERE host_id = $1").bind(host).execute(conn).await?;
    Ok(())
}

/// Drop the host's keys once it applied a state without tunnels, unless
/// something was wanted since (`seq` is still the latest: a VM that needs
/// a tunnel here again raised it, and keeps the key it found) or a rekey
/// runs. The network row is locked first, as [`bump`] locks it.
pub async fn drop_keys_if_unwanted(conn: &mut PgConnection, host: Uuid, seq: i64) -> Result<u64, sqlx::Error> {
    let still: Option<i64> =
        sqlx::query_scalar("SELECT want_seq FROM host_network WHERE host_id = $1 AND want_seq = $2 AND rekey_strand_id IS NULL FOR UPDATE")
            .bind(host)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
    if still.is_none() {
        return Ok(0);
    }
    Ok(sqlx::query("DELETE FROM tunnel_key WHERE host_id = $1").bind(host).execute(conn).await?.rows_affected())
}

/// The hosts (not destroyed) that share a subnet with `host` through VMs
/// that have a NIC there, `host` excluded.
pub async fn mesh_peers(conn: &mut PgConnection, host: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT o.host_id FROM vm m JOIN vm o ON o.subnet_id = m.subnet_id JOIN vm_host h ON h.id = o.host_id \
         WHERE m.host_id = $1 AND m.nic_since IS NOT NULL AND m.state <> 'destroyed' AND m.desired_state <> 'destroyed' \
           AND o.nic_since IS NOT NULL AND o.state <> 'destroyed' AND o.desired_state <> 'destroyed' \
           AND o.host_id <> $1 AND h.state <> 'destroyed' ORDER BY 1",
    )
    .bind(host)
    .fetch_all(conn)
    .await
}

/// The hosts (not destroyed) where the subnet's VMs have a NIC.
pub async fn subnet_hosts(conn: &mut PgConnection, subnet: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT v.host_id FROM vm v JOIN vm_host h ON h.id = v.host_id \
         WHERE v.subnet_id = $1 AND v.nic_since IS NOT NULL AND v.state <> 'destroyed' AND h.state <> 'destroyed' ORDER BY 1",
    )
    .bind(subnet)
    .fetch_all(conn)
    .await
}

/// The VM's NIC is wanted on its host from now on (its unix user exists there).
pub async fn want_nic(conn: &mut PgConnection, vm: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vm SET nic_since = coalesce(nic_since, now()) WHERE id = $1 AND subnet_id IS NOT NULL").bind(vm).execute(conn).await?;
    Ok(())
}

// ---- Rekeys ----------------------------------------------------------------

/// Make `strand` the host's one rekey, unless one runs. True if it is.
pub async fn claim_rekey(conn: &mut PgConnection, host: Uuid, strand: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE host_network SET rekey_strand_id = $2, rekey_phase = NULL, rekey_started_at = now() \
         WHERE host_id = $1 AND rekey_strand_id IS NULL",
    )
    .bind(host)
    .bind(strand)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_rekey_phase(conn: &mut PgConnection, host: Uuid, phase: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE host_network SET rekey_phase = $2 WHERE host_id = $1").bind(host).bind(phase).execute(conn).await?;
    Ok(())
}

/// The rekey of `strand` is over; `done` says whether it completed.
pub async fn end_rekey(conn: &mut PgConnection, host: Uuid, strand: Uuid, done: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE host_network SET rekey_strand_id = NULL, rekey_phase = NULL, rekey_started_at = NULL, \
             last_rekey_at = CASE WHEN $3 THEN now() ELSE last_rekey_at END \
         WHERE host_id = $1 AND rekey_strand_id = $2",
    )
    .bind(host)
    .bind(strand)
    .bind(done)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- Tunnel keys -------------------------------------------------------------

/// One of a host's WireGuard keys.
#[derive(Clone, FromRow)]
pub struct TunnelKey {
    pub host_id: Uuid,
    pub gen: i32,
    /// Sealed; opened only to be sent to the host.
    pub private_key: Vec<u8>,
    pub public_key: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelKey {{ gen: {}, public: {}, state: {} }}", self.gen, self.public_key, self.state)
    }
}

const KEY_COLUMNS: &str = "host_id, gen, private_key, public_key, state, created_at";

/// The keys of these hosts, by host and gen.
pub async fn keys_of(conn: &mut PgConnection, hosts: &[Uuid]) -> Result<Vec<TunnelKey>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM tunnel_key WHERE host_id = ANY($1) ORDER BY host_id, gen"))
        .bind(hosts)
        .fetch_all(conn)
        .await
}

/// The next gen of the host's keys (1 for its first).
pub async fn next_gen(conn: &mut PgConnection, host: Uuid) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(gen), 0) + 1 FROM tunnel_key WHERE host_id = $1").bind(host).fetch_one(conn).await
}

/// Store a new key (`sealed` is bound to host and gen by the caller).
pub async fn insert_key(conn: &mut PgConnection, host: Uuid, gen: i32, sealed: &[u8], public: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO tunnel_key (host_id, gen, private_key, public_key, state) VALUES ($1, $2, $3, $4, $5)")
        .bind(host)
        .bind(gen)
        .bind(sealed)
        .bind(public)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Traffic goes out on `gen` from now on; the gen that sent so far retires.
pub async fn switch_to(conn: &mut PgConnection, host: Uuid, gen: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tunnel_key SET state = 'retiring' WHERE host_id = $1 AND state = 'sending' AND gen <> $2")
        .bind(host)
        .bind(gen)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE tunnel_key SET state = 'sending' WHERE host_id = $1 AND gen = $2").bind(host).bind(gen).execute(conn).await?;
    Ok(())
}

/// Forget the retired gens of the host.
pub async fn drop_retiring(conn: &mut PgConnection, host: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM tunnel_key WHERE host_id = $1 AND state = 'retiring'").bind(host).execute(conn).await?.rows_affected())
}

/// Forget a gen that a rekey made but never switched to (the rekey ended early).
pub async fn drop_new(conn: &mut PgConnection, host: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM tunnel_key WHERE host_id = $1 AND state = 'new'").bind(host).execute(conn).await?.rows_affected())
}

// ---- What a host's desired state is computed from -------------------------

/// A host as a tunnel endpoint.
#[derive(Clone, Debug, FromRow)]
pub struct Endpoint {
    pub host_id: Uuid,
    pub state: String,
    /// Its underlay address, or its SSH address if none was set.
    pub underlay: String,
}

pub async fn endpoints(conn: &mut PgConnection, hosts: &[Uuid]) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id AS host_id, h.state, coalesce(h.underlay, s.host) AS underlay \
         FROM vm_host h JOIN sshable s ON s.id = h.sshable_id WHERE h.id = ANY($1) ORDER BY h.id",
    )
    .bind(hosts)
    .fetch_all(conn)
    .await
}

/// A VM's NIC wanted on a host.
#[derive(Clone, Debug, FromRow)]
pub struct NicRow {
    pub vm_id: Uuid,
    pub subnet_id: Uuid,
    pub vni: i32,
}

/// The NICs wanted on `host`: VMs placed there, set up, not being destroyed.
pub async fn nics_on(conn: &mut PgConnection, host: Uuid) -> Result<Vec<NicRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id AS vm_id, v.subnet_id, s.vni FROM vm v JOIN private_subnet s ON s.id = v.subnet_id \
         WHERE v.host_id = $1 AND v.nic_since IS NOT NULL AND v.state <> 'destroyed' AND v.desired_state <> 'destroyed' \
         ORDER BY v.id",
    )
    .bind(host)
    .fetch_all(conn)
    .await
}

/// Which other hosts (not destroyed) have NICs of which of `host`'s subnets.
pub async fn peer_subnets(conn: &mut PgConnection, host: Uuid) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT o.host_id, o.subnet_id FROM vm m JOIN vm o ON o.subnet_id = m.subnet_id JOIN vm_host h ON h.id = o.host_id \
         WHERE m.host_id = $1 AND m.nic_since IS NOT NULL AND m.state <> 'destroyed' AND m.desired_state <> 'destroyed' \
           AND o.nic_since IS NOT NULL AND o.state <> 'destroyed' AND o.desired_state <> 'destroyed' \
           AND o.host_id <> $1 AND h.state <> 'destroyed' ORDER BY 1, 2",
    )
    .bind(host)
    .fetch_all(conn)
    .await
}

// ---- What operators and owners see -----------------------------------------

/// A host of a subnet's mesh, for the API and console.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct MeshHost {
    pub host_id: Uuid,
    pub name: String,
    pub state: String,
    pub underlay: String,
    pub vms: i64,
    pub applied_at: Option<DateTime<Utc>>,
    pub status: Option<Value>,
    pub status_at: Option<DateTime<Utc>>,
    pub last_rekey_at: Option<DateTime<Utc>>,
    pub rekey_phase: Option<String>,
}

/// The hosts where the subnet's VMs have a NIC, with their network's state.
pub async fn subnet_mesh(conn: &mut PgConnection, subnet: Uuid) -> Result<Vec<MeshHost>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id AS host_id, h.name, h.state, coalesce(h.underlay, s.host) AS underlay, count(v.id) AS vms, \
             n.applied_at, n.status, n.status_at, n.last_rekey_at, n.rekey_phase \
         FROM vm v JOIN vm_host h ON h.id = v.host_id JOIN sshable s ON s.id = h.sshable_id \
             LEFT JOIN host_network n ON n.host_id = h.id \
         WHERE v.subnet_id = $1 AND v.nic_since IS NOT NULL AND v.state <> 'destroyed' AND h.state <> 'destroyed' \
         GROUP BY h.id, h.name, h.state, s.host, n.host_id ORDER BY h.name",
    )
    .bind(subnet)
    .fetch_all(conn)
    .await
}

/// Public facts of the keys of these hosts (no key material), for display.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct KeyInfo {
    pub host_id: Uuid,
    pub gen: i32,
    pub public_key: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
}

pub async fn key_infos(conn: &mut PgConnection, hosts: &[Uuid]) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as("SELECT host_id, gen, public_key, state, created_at FROM tunnel_key WHERE host_id = ANY($1) ORDER BY host_id, gen")
        .bind(hosts)
        .fetch_all(conn)
        .await
}

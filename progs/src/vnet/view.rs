//! A subnet's mesh as people see it (API, CLI, console): the hosts its VMs
//! run on, each one's keys (public half) and last rekey, and the tunnel
//! between each pair of them, up if either end saw a recent handshake in
//! what its host last said (`net-status`, recorded by `Vnet::HostNet`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use skein_models::network;
use skein_models::Ubid;
use sqlx::PgConnection;
use uuid::Uuid;

/// A handshake at most this old means the tunnel is up (WireGuard redoes
/// it every two minutes on a tunnel in use; the agent keeps them in use).
pub const FRESH_SECS: u64 = 180;

#[derive(Clone, Debug, Serialize)]
pub struct MeshView {
    pub hosts: Vec<HostView>,
    pub tunnels: Vec<TunnelView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    pub id: Ubid,
    pub name: String,
    pub state: String,
    /// The subnet's VMs with a NIC there.
    pub vms: i64,
    /// When it last applied its desired state.
    pub applied_at: Option<DateTime<Utc>>,
    pub last_rekey_at: Option<DateTime<Utc>>,
    /// The phase of the rekey running there, if one is.
    pub rekey_phase: Option<String>,
    pub keys: Vec<KeyView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyView {
    pub gen: i32,
    pub public_key: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TunnelView {
    pub hosts: [Ubid; 2],
    pub up: bool,
    /// The most recent handshake either end reported, in seconds before it reported it.
    pub last_handshake_secs: Option<u64>,
}

/// The freshest handshake `status` reports with any of `keys`.
fn handshake_with(status: Option<&Value>, keys: &[&str]) -> Option<u64> {
    let tunnels = status?["tunnels"].as_array()?;
    tunnels
        .iter()
        .flat_map(|t| t["peers"].as_array().into_iter().flatten())
        .filter(|p| p["public_key"].as_str().is_some_and(|k| keys.contains(&k)))
        .filter_map(|p| p["last_handshake_secs"].as_u64())
        .min()
}

pub async fn mesh(conn: &mut PgConnection, subnet: Uuid) -> Result<MeshView, sqlx::Error> {
    let rows = network::subnet_mesh(conn, subnet).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.host_id).collect();
    let mut keys: BTreeMap<Uuid, Vec<KeyView>> = BTreeMap::new();
    for k in network::key_infos(conn, &ids).await? {
        keys.entry(k.host_id).or_default().push(KeyView { gen: k.gen, public_key: k.public_key, state: k.state, created_at: k.created_at });
    }
    let mut tunnels = Vec::new();
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            let pubs = |h: Uuid| keys.get(&h).map(|ks| ks.iter().map(|k| k.public_key.as_str()).collect::<Vec<_>>()).unwrap_or_default();
            let seen = [handshake_with(a.status.as_ref(), &pubs(b.host_id)), handshake_with(b.status.as_ref(), &pubs(a.host_id))];
            let last = seen.into_iter().flatten().min();
            tunnels.push(TunnelView {
                hosts: [Ubid::from_uuid(a.host_id), Ubid::from_uuid(b.host_id)],
                up: last.is_some_and(|s| s <= FRESH_SECS),
                last_handshake_secs: last,
            });
        }
    }
    let hosts = rows
        .into_iter()
        .map(|r| HostView {
            id: Ubid::from_uuid(r.host_id),
            keys: keys.remove(&r.host_id).unwrap_or_default(),
            name: r.name,
            state: r.state,
            vms: r.vms,
            applied_at: r.applied_at,
            last_rekey_at: r.last_rekey_at,
            rekey_phase: r.rekey_phase,
        })
        .collect();
    Ok(MeshView { hosts, tunnels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_freshest_handshake_with_any_of_the_peers_keys_counts() {
        let status = json!({"tunnels": [
            {"gen": 1, "peers": [{"public_key": "old", "last_handshake_secs": 90}, {"public_key": "other", "last_handshake_secs": 1}]},
            {"gen": 2, "peers": [{"public_key": "new", "last_handshake_secs": 4}, {"public_key": "never", "last_handshake_secs": null}]},
        ]});
        assert_eq!(handshake_with(Some(&status), &["old", "new"]), Some(4));
        assert_eq!(handshake_with(Some(&status), &["old"]), Some(90));
        assert_eq!(handshake_with(Some(&status), &["never"]), None);
        assert_eq!(handshake_with(None, &["old"]), None);
    }
}

//! A host's whole desired private networking, computed from facts read from
//! the database (no I/O here): the JSON `net-apply` takes on stdin (the
//! agent side's contract, "FINAL v1"), a summary of it without key
//! material (recorded as applied), and how to compare it with what
//! `net-status` says (drift, and peers whose tunnels stopped answering).
//!
//! The rules, in short:
//! - a NIC for each VM of a subnet placed and set up here;
//! - a segment for each subnet with a NIC here (its VNI), whose peers are
//!   the other hosts with a NIC of that subnet;
//! - while it has a NIC at all: its own keys as tunnels (one, two during
//!   its rekey; `send` on the gen it sends on), and as peers every host it
//!   shares a subnet with, each with its live keys (`send` on the one that
//!   host's traffic is sent to: how peers switch to a host's new gen in a
//!   rekey's second phase).
//!
//! Ports, overlay addresses and device names are derived on the host from
//! gens, keys and VNIs, so they are not sent.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};
use skein_models::Ubid;
use uuid::Uuid;

/// One of this host's keys, opened.
#[derive(Clone)]
pub struct OwnKey {
    pub gen: i32,
    pub private_key: String,
    pub public_key: String,
    /// 'sending', 'new' or 'retiring'.
    pub state: String,
}

/// One of a peer host's keys (public facts only).
#[derive(Clone, Debug)]
pub struct PeerKey {
    pub gen: i32,
    pub public_key: String,
    pub state: String,
}

/// Another host sharing at least one subnet with this one.
#[derive(Clone, Debug)]
pub struct PeerFact {
    pub host: Uuid,
    /// Its underlay IPv4 address.
    pub underlay: String,
    /// The subnets both have NICs of.
    pub subnets: BTreeSet<Uuid>,
    pub keys: Vec<PeerKey>,
}

/// A VM's NIC wanted here.
#[derive(Clone, Debug)]
pub struct NicFact {
    pub vm: Uuid,
    pub subnet: Uuid,
    pub vni: i32,
}

/// Everything the desired state of a host is computed from.
#[derive(Clone)]
pub struct Facts {
    pub keys: Vec<OwnKey>,
    pub nics: Vec<NicFact>,
    pub peers: Vec<PeerFact>,
}

#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct Desired {
    pub tunnels: Vec<Tunnel>,
    pub peers: Vec<Peer>,
    pub segments: Vec<Segment>,
    pub nics: Vec<Nic>,
}

#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct Tunnel {
    pub gen: i32,
    /// Never log it (`Debug` and the summary leave it out).
    pub private_key: String,
    pub send: bool,
    /// Not sent: the host derives it from the private key.
    #[serde(skip)]
    pub public_key: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Peer {
    /// The peer host's UBID.
    pub host: String,
    /// Its underlay IPv4 address (the port comes from each key's gen).
    pub endpoint: String,
    pub keys: Vec<PeerKeyOut>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerKeyOut {
    pub gen: i32,
    pub public_key: String,
    pub send: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Segment {
    pub vni: i32,
    /// Peer host UBIDs (each one in `peers`).
    pub peers: Vec<String>,
    /// Not sent: which subnet it is, for people.
    #[serde(skip)]
    pub subnet: Uuid,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Nic {
    /// The VM's unix name on the host (its UBID).
    pub vm: String,
    pub vni: i32,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("gen", &self.gen).field("public_key", &self.public_key).field("send", &self.send).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Desired {}", self.summary())
    }
}

/// The empty state: everything skein made on the host for private networks goes.
pub fn empty() -> Desired {
    Desired { tunnels: vec![], peers: vec![], segments: vec![], nics: vec![] }
}

/// The host's whole desired state.
pub fn compute(f: &Facts) -> Desired {
    if f.nics.is_empty() {
        return empty();
    }
    // Peers need at least one key to send to (a host with a NIC always has one).
    let mut peer_facts: Vec<&PeerFact> = f.peers.iter().filter(|p| p.keys.iter().any(|k| k.state == "sending")).collect();
    peer_facts.sort_by_key(|p| p.host);

    let mut subnets: BTreeMap<i32, Uuid> = BTreeMap::new();
    for n in &f.nics {
        subnets.insert(n.vni, n.subnet);
    }
    let segments = subnets
        .iter()
        .map(|(vni, subnet)| Segment {
            vni: *vni,
            peers: peer_facts.iter().filter(|p| p.subnets.contains(subnet)).map(|p| Ubid::from_uuid(p.host).to_string()).collect(),
            subnet: *subnet,
        })
        .collect();

    let mut own = f.keys.clone();
    own.sort_by_key(|k| k.gen);
    let tunnels: Vec<Tunnel> =
        own.into_iter().map(|k| Tunnel { gen: k.gen, send: k.state == "sending", private_key: k.private_key, public_key: k.public_key }).collect();
    let peers = if tunnels.is_empty() {
        vec![]
    } else {
        peer_facts
            .iter()
            .map(|p| {
                let mut keys: Vec<PeerKeyOut> =
                    p.keys.iter().map(|k| PeerKeyOut { gen: k.gen, public_key: k.public_key.clone(), send: k.state == "sending" }).collect();
                keys.sort_by_key(|k| k.gen);
                Peer { host: Ubid::from_uuid(p.host).to_string(), endpoint: p.underlay.clone(), keys }
            })
            .collect()
    };

    let mut nics: Vec<Nic> = f.nics.iter().map(|n| Nic { vm: Ubid::from_uuid(n.vm).to_string(), vni: n.vni }).collect();
    nics.sort_by(|a, b| a.vm.cmp(&b.vm));
    Desired { tunnels, peers, segments, nics }
}

impl Desired {
    /// The JSON net-apply reads on stdin (with the private keys).
    pub fn to_stdin(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the desired state serializes")
    }

    /// What was applied, without key material: recorded, shown, logged.
    pub fn summary(&self) -> Value {
        json!({
            "tunnels": self.tunnels.iter().map(|t| json!({"gen": t.gen, "public_key": t.public_key, "send": t.send})).collect::<Vec<_>>(),
            "peers": self.peers,
            "segments": self.segments.iter().map(|s| json!({"vni": s.vni, "subnet": Ubid::from_uuid(s.subnet), "peers": s.peers})).collect::<Vec<_>>(),
            "nics": self.nics,
        })
    }
}

/// How what the host says (`net-status`) differs from what it should have,
/// in words, or None if it has it all (a host rebooted, someone removed a
/// device, or something is left over: then it is applied again).
pub fn drift(want: &Desired, status: &Value) -> Option<String> {
    let list = |k: &str| status[k].as_array().cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();

    let want_tunnels: BTreeSet<(i64, String)> = want.tunnels.iter().map(|t| (t.gen as i64, t.public_key.clone())).collect();
    let running: BTreeSet<(i64, String)> =
        list("tunnels").iter().filter(|t| t["running"] == json!(true)).map(|t| (t["gen"].as_i64().unwrap_or(-1), text(t, "public_key"))).collect();
    if want_tunnels != running {
        let gens = |s: &BTreeSet<(i64, String)>| s.iter().map(|(g, _)| g.to_string()).collect::<Vec<_>>().join(",");
        return Some(format!("tunnels running: [{}], wanted: [{}]", gens(&running), gens(&want_tunnels)));
    }
    let want_peer_keys: BTreeSet<String> = want.peers.iter().flat_map(|p| p.keys.iter().map(|k| k.public_key.clone())).collect();
    for t in list("tunnels") {
        let known: BTreeSet<String> = t["peers"].as_array().into_iter().flatten().map(|p| text(p, "public_key")).collect();
        if known != want_peer_keys {
            return Some(format!("tunnel gen {} has {} peer keys, wants {}", t["gen"], known.len(), want_peer_keys.len()));
        }
    }
    let segments: BTreeSet<i64> = list("segments").iter().filter_map(|s| s["vni"].as_i64()).collect();
    let want_segments: BTreeSet<i64> = want.segments.iter().map(|s| s.vni as i64).collect();
    if segments != want_segments {
        return Some(format!("segments: {} there, {} wanted", segments.len(), want_segments.len()));
    }
    // A tap is there whether or not qemu holds it open (`up`): a stopped VM keeps it.
    let nics: BTreeSet<(String, i64)> = list("nics").iter().map(|n| (text(n, "vm"), n["vni"].as_i64().unwrap_or(-1))).collect();
    let want_nics: BTreeSet<(String, i64)> = want.nics.iter().map(|n| (n.vm.clone(), n.vni as i64)).collect();
    if nics != want_nics {
        return Some(format!("NICs: {} there, {} wanted", nics.len(), want_nics.len()));
    }
    None
}

/// The peer hosts this host has had no recent handshake with on any of its
/// tunnels (any gen, any key of the peer): none at all, or older than
/// `fresh_secs`.
pub fn silent_peers(want: &Desired, status: &Value, fresh_secs: u64) -> Vec<String> {
    let mut fresh: BTreeSet<&str> = BTreeSet::new();
    for t in status["tunnels"].as_array().into_iter().flatten() {
        for p in t["peers"].as_array().into_iter().flatten() {
            if p["last_handshake_secs"].as_u64().is_some_and(|s| s <= fresh_secs) {
                fresh.insert(p["public_key"].as_str().unwrap_or_default());
            }
        }
    }
    want.peers.iter().filter(|p| !p.keys.iter().any(|k| fresh.contains(k.public_key.as_str()))).map(|p| p.host.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(gen: i32, state: &str) -> OwnKey {
        OwnKey { gen, private_key: format!("PRIVATE{gen}"), public_key: format!("PUB{gen}"), state: state.into() }
    }

    fn peer(host: Uuid, underlay: &str, subnets: &[Uuid], keys: &[(i32, &str)]) -> PeerFact {
        PeerFact {
            host,
            underlay: underlay.into(),
            subnets: subnets.iter().copied().collect(),
            keys: keys.iter().map(|(gen, state)| PeerKey { gen: *gen, public_key: format!("{host}-{gen}"), state: (*state).into() }).collect(),
        }
    }

    fn ids<const N: usize>() -> [Uuid; N] {
        let mut v: Vec<Uuid> = (0..N).map(|_| Uuid::new_v4()).collect();
        v.sort();
        v.try_into().unwrap()
    }

    fn name(id: Uuid) -> String {
        Ubid::from_uuid(id).to_string()
    }

    #[test]
    fn a_host_with_no_nic_wants_nothing_at_all() {
        let [s, b] = ids();
        let f = Facts { keys: vec![key(1, "sending")], nics: vec![], peers: vec![peer(b, "10.252.0.3", &[s], &[(1, "sending")])] };
        let stdin: Value = serde_json::from_slice(&compute(&f).to_stdin()).unwrap();
        assert_eq!(stdin, json!({"tunnels": [], "peers": [], "segments": [], "nics": []}));
    }

    #[test]
    fn each_subnet_is_a_segment_reaching_only_the_hosts_that_share_it() {
        let [s1, s2] = ids();
        let [b, c] = ids();
        let [v1, v2] = ids();
        let f = Facts {
            keys: vec![key(1, "sending")],
            nics: vec![NicFact { vm: v1, subnet: s1, vni: 101 }, NicFact { vm: v2, subnet: s2, vni: 102 }],
            peers: vec![peer(b, "10.252.0.3", &[s1], &[(4, "sending")]), peer(c, "10.252.0.4", &[s2], &[(1, "sending")])],
        };
        let stdin: Value = serde_json::from_slice(&compute(&f).to_stdin()).unwrap();
        assert_eq!(
            stdin,
            json!({
                "tunnels": [{"gen": 1, "private_key": "PRIVATE1", "send": true}],
                "peers": [
                    {"host": name(b), "endpoint": "10.252.0.3", "keys": [{"gen": 4, "public_key": format!("{b}-4"), "send": true}]},
                    {"host": name(c), "endpoint": "10.252.0.4", "keys": [{"gen": 1, "public_key": format!("{c}-1"), "send": true}]},
                ],
                "segments": [{"vni": 101, "peers": [name(b)]}, {"vni": 102, "peers": [name(c)]}],
                "nics": [{"vm": name(v1), "vni": 101}, {"vm": name(v2), "vni": 102}],
            })
        );
    }

    #[test]
    fn a_host_mid_rekey_has_two_tunnels_and_its_peers_send_to_one_of_its_keys() {
        let [s] = ids();
        let [a, b] = ids();
        let nic = |vm| NicFact { vm, subnet: s, vni: 7 };
        // a, mid-rekey, phase 1: the new gen is up, not sending.
        let a_phase1 = Facts { keys: vec![key(2, "new"), key(1, "sending")], nics: vec![nic(Uuid::new_v4())], peers: vec![peer(b, "10.252.0.3", &[s], &[(1, "sending")])] };
        let sends: Vec<(i32, bool)> = compute(&a_phase1).tunnels.iter().map(|t| (t.gen, t.send)).collect();
        assert_eq!(sends, [(1, true), (2, false)]);
        // b, meanwhile: a's two keys, sending to the old until the switch, to the new after it.
        let b_of = |states: &[(i32, &str)]| Facts { keys: vec![key(1, "sending")], nics: vec![nic(Uuid::new_v4())], peers: vec![peer(a, "10.252.0.2", &[s], states)] };
        let keys = |f: &Facts| compute(f).peers[0].keys.iter().map(|k| (k.gen, k.send)).collect::<Vec<_>>();
        assert_eq!(keys(&b_of(&[(1, "sending"), (2, "new")])), [(1, true), (2, false)]);
        assert_eq!(keys(&b_of(&[(1, "retiring"), (2, "sending")])), [(1, false), (2, true)]);
        assert_eq!(keys(&b_of(&[(2, "sending")])), [(2, true)]);
    }

    #[test]
    fn no_key_material_in_the_summary_or_debug() {
        let [s] = ids();
        let f = Facts { keys: vec![key(1, "sending")], nics: vec![NicFact { vm: Uuid::new_v4(), subnet: s, vni: 7 }], peers: vec![] };
        let d = compute(&f);
        assert!(String::from_utf8(d.to_stdin()).unwrap().contains("PRIVATE1"), "the host gets its key");
        assert!(!d.summary().to_string().contains("PRIVATE"));
        assert!(!format!("{d:?}").contains("PRIVATE"));
    }

    fn two_host_state() -> (Desired, Uuid) {
        let [s, b] = ids();
        let f = Facts {
            keys: vec![key(1, "sending")],
            nics: vec![NicFact { vm: Uuid::new_v4(), subnet: s, vni: 7 }],
            peers: vec![peer(b, "10.252.0.3", &[s], &[(1, "sending")])],
        };
        (compute(&f), b)
    }

    /// What net-status says of a host that has `d`, handshakes `handshake` seconds ago.
    fn status_of(d: &Desired, handshake: Option<u64>) -> Value {
        let peer_keys: Vec<Value> = d.peers.iter().flat_map(|p| p.keys.iter()).map(|k| json!({"public_key": k.public_key, "last_handshake_secs": handshake})).collect();
        json!({
            "tunnels": d.tunnels.iter().map(|t| json!({"gen": t.gen, "public_key": t.public_key, "running": true, "peers": peer_keys})).collect::<Vec<_>>(),
            "segments": d.segments.iter().map(|s| json!({"vni": s.vni, "bridge": format!("skbr{}", s.vni)})).collect::<Vec<_>>(),
            "nics": d.nics.iter().map(|n| json!({"vm": n.vm, "vni": n.vni, "tap": "skt0", "up": false})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn drift_is_what_a_reboot_a_lost_device_or_a_leftover_leaves() {
        let (d, _) = two_host_state();
        assert_eq!(drift(&d, &status_of(&d, Some(3))), None, "a stopped VM's tap (not up) is no drift");
        assert!(drift(&d, &json!({"tunnels": [], "segments": [], "nics": []})).unwrap().contains("tunnels"), "after a reboot");
        let mut no_tap = status_of(&d, Some(3));
        no_tap["nics"] = json!([]);
        assert!(drift(&d, &no_tap).unwrap().contains("NICs"));
        let mut leftover = status_of(&d, Some(3));
        leftover["segments"].as_array_mut().unwrap().push(json!({"vni": 99}));
        assert!(drift(&d, &leftover).unwrap().contains("segments"));
        let mut old_peer = status_of(&d, Some(3));
        old_peer["tunnels"][0]["peers"][0]["public_key"] = json!("someone-else");
        assert!(drift(&d, &old_peer).unwrap().contains("peer keys"));
        assert!(drift(&empty(), &json!({"tunnels": [], "segments": [], "nics": []})).is_none());
    }

    #[test]
    fn a_peer_is_silent_without_a_recent_handshake() {
        let (d, b) = two_host_state();
        assert!(silent_peers(&d, &status_of(&d, Some(30)), 180).is_empty());
        assert_eq!(silent_peers(&d, &status_of(&d, Some(600)), 180), [name(b)]);
        assert_eq!(silent_peers(&d, &status_of(&d, None), 180), [name(b)], "never handshaked");
    }
}

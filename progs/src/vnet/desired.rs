//! A host's whole desired private networking, computed from facts read from
//! the database (no I/O here): the JSON `net-apply` takes on stdin (see
//! /work/notes/net-contract.md, the agent side's contract), a summary of it
//! without key material (recorded as applied), and how to compare it with
//! what `net-status` says (drift, and tunnels whose peers stopped answering).
//!
//! The rules, in short:
//! - a NIC for each VM of a subnet placed and set up here;
//! - a segment for each subnet with a NIC here (its VNI), whose peers are
//!   the overlay addresses of the *sending* gen of every other host with a
//!   NIC of that subnet (so peers switch to a host's new gen in a rekey's
//!   second phase);
//! - a tunnel for each of this host's key gens (one, two during a rekey),
//!   only while it has a NIC at all; `send` on the sending gen; each one
//!   peers with every live gen of every host it shares a subnet with.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use skein_models::Ubid;
use uuid::Uuid;

/// One of this host's keys, opened.
#[derive(Clone)]
pub struct OwnKey {
    pub gen: i32,
    pub private_key: String,
    pub public_key: String,
    pub port: i32,
    /// "a.b.c.d" (a /32).
    pub addr: String,
    /// 'sending', 'new' or 'retiring'.
    pub state: String,
}

/// One of a peer host's keys (public facts only).
#[derive(Clone, Debug)]
pub struct PeerKey {
    pub gen: i32,
    pub public_key: String,
    pub port: i32,
    pub addr: String,
    pub state: String,
}

/// Another host sharing at least one subnet with this one.
#[derive(Clone, Debug)]
pub struct Peer {
    pub host: Uuid,
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
    pub underlay: String,
    pub keys: Vec<OwnKey>,
    pub nics: Vec<NicFact>,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct Desired {
    pub underlay: String,
    pub tunnels: Vec<Tunnel>,
    pub segments: Vec<Segment>,
    pub nics: Vec<Nic>,
}

#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct Tunnel {
    pub gen: i32,
    /// Never log it (`Debug` leaves it out).
    pub private_key: String,
    #[serde(skip)]
    pub public_key: String,
    pub port: i32,
    pub addr: String,
    pub send: bool,
    pub peers: Vec<TunnelPeer>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TunnelPeer {
    pub public_key: String,
    pub endpoint: String,
    pub addr: String,
    /// Which host this key is (not sent: the agent needs no host ids).
    #[serde(skip)]
    pub host: Uuid,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Segment {
    pub subnet: String,
    pub vni: i32,
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Nic {
    pub vm: String,
    pub subnet: String,
    pub mac: String,
    pub tap: String,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("gen", &self.gen)
            .field("public_key", &self.public_key)
            .field("port", &self.port)
            .field("addr", &self.addr)
            .field("send", &self.send)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Desired {}", self.summary())
    }
}

/// The VM's NIC names on its host, from its id: stable across restarts
/// and host reboots. The MAC is the one qemu had on the multicast segment.
pub fn nic_names(vm: Uuid) -> (String, String) {
    let name = Ubid::from_uuid(vm).to_string();
    let h = hex::encode(Sha256::digest(name.as_bytes()));
    let mac = format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6]);
    let tap = format!("skt{}", &h[6..18]);
    (tap, mac)
}

/// The host's whole desired state.
pub fn compute(f: &Facts) -> Desired {
    let mut subnets: BTreeMap<Uuid, i32> = BTreeMap::new();
    for n in &f.nics {
        subnets.insert(n.subnet, n.vni);
    }
    let mut segments: Vec<Segment> = subnets
        .iter()
        .map(|(subnet, vni)| {
            let mut peers: Vec<String> = f
                .peers
                .iter()
                .filter(|p| p.subnets.contains(subnet))
                .filter_map(|p| p.keys.iter().find(|k| k.state == "sending").map(|k| k.addr.clone()))
                .collect();
            peers.sort();
            Segment { subnet: Ubid::from_uuid(*subnet).to_string(), vni: *vni, peers }
        })
        .collect();
    segments.sort_by_key(|s| s.vni);

    let mut tunnels = Vec::new();
    if !f.nics.is_empty() {
        let mut peers: Vec<&Peer> = f.peers.iter().collect();
        peers.sort_by_key(|p| p.host);
        let tunnel_peers: Vec<TunnelPeer> = peers
            .iter()
            .flat_map(|p| {
                let mut keys = p.keys.clone();
                keys.sort_by_key(|k| k.gen);
                keys.into_iter().map(|k| TunnelPeer {
                    public_key: k.public_key,
                    endpoint: format!("{}:{}", p.underlay, k.port),
                    addr: k.addr,
                    host: p.host,
                })
            })
            .collect();
        let mut own = f.keys.clone();
        own.sort_by_key(|k| k.gen);
        for k in own {
            tunnels.push(Tunnel {
                gen: k.gen,
                private_key: k.private_key,
                public_key: k.public_key,
                port: k.port,
                addr: k.addr,
                send: k.state == "sending",
                peers: tunnel_peers.clone(),
            });
        }
    }

    let mut nics: Vec<Nic> = f
        .nics
        .iter()
        .map(|n| {
            let (tap, mac) = nic_names(n.vm);
            Nic { vm: Ubid::from_uuid(n.vm).to_string(), subnet: Ubid::from_uuid(n.subnet).to_string(), mac, tap }
        })
        .collect();
    nics.sort_by(|a, b| a.vm.cmp(&b.vm));
    Desired { underlay: f.underlay.clone(), tunnels, segments, nics }
}

impl Desired {
    /// The JSON net-apply reads on stdin (with the private keys).
    pub fn to_stdin(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the desired state serializes")
    }

    /// What was applied, without key material: recorded, shown, logged.
    pub fn summary(&self) -> Value {
        json!({
            "underlay": self.underlay,
            "tunnels": self.tunnels.iter().map(|t| json!({
                "gen": t.gen, "public_key": t.public_key, "port": t.port, "addr": t.addr, "send": t.send,
                "peers": t.peers.iter().map(|p| json!({"host": Ubid::from_uuid(p.host), "public_key": p.public_key, "endpoint": p.endpoint, "addr": p.addr})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "segments": self.segments,
            "nics": self.nics,
        })
    }

    /// The peer hosts of this host's tunnels, each with its public keys.
    pub fn peer_hosts(&self) -> BTreeMap<Uuid, BTreeSet<String>> {
        let mut hosts: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
        for t in &self.tunnels {
            for p in &t.peers {
                hosts.entry(p.host).or_default().insert(p.public_key.clone());
            }
        }
        hosts
    }
}

/// How what the host says (`net-status`) differs from what it should have,
/// in words, or None if it has it all (a host rebooted, or someone removed
/// a device: then it is applied again).
pub fn drift(want: &Desired, status: &Value) -> Option<String> {
    let strs = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| status[k].as_array().cloned().unwrap_or_default();

    let want_tunnels: BTreeSet<(i64, String)> = want.tunnels.iter().map(|t| (t.gen as i64, t.public_key.clone())).collect();
    let running: BTreeSet<(i64, String)> =
        list("tunnels").iter().filter(|t| t["running"] == json!(true)).map(|t| (t["gen"].as_i64().unwrap_or(-1), strs(t, "public_key"))).collect();
    if want_tunnels != running {
        let gens = |s: &BTreeSet<(i64, String)>| s.iter().map(|(g, _)| g.to_string()).collect::<Vec<_>>().join(",");
        return Some(format!("tunnels running: [{}], wanted: [{}]", gens(&running), gens(&want_tunnels)));
    }
    for t in &want.tunnels {
        let said = list("tunnels").into_iter().find(|s| s["gen"].as_i64() == Some(t.gen as i64)).unwrap_or_default();
        let known: BTreeSet<String> = said["peers"].as_array().into_iter().flatten().map(|p| strs(p, "public_key")).collect();
        let wanted: BTreeSet<String> = t.peers.iter().map(|p| p.public_key.clone()).collect();
        if known != wanted {
            return Some(format!("tunnel gen {} has {} peers, wants {}", t.gen, known.len(), wanted.len()));
        }
    }
    let segments: BTreeSet<String> = list("segments").iter().map(|s| strs(s, "subnet")).collect();
    let want_segments: BTreeSet<String> = want.segments.iter().map(|s| s.subnet.clone()).collect();
    if segments != want_segments {
        return Some(format!("segments: {} there, {} wanted", segments.len(), want_segments.len()));
    }
    let nics: BTreeSet<(String, String)> =
        list("nics").iter().filter(|n| n["up"] == json!(true)).map(|n| (strs(n, "vm"), strs(n, "tap"))).collect();
    let want_nics: BTreeSet<(String, String)> = want.nics.iter().map(|n| (n.vm.clone(), n.tap.clone())).collect();
    if nics != want_nics {
        return Some(format!("NICs up: {}, wanted: {}", nics.len(), want_nics.len()));
    }
    None
}

/// The peer hosts this host has had no recent handshake with on any of its
/// tunnels (any gen, either key of the peer): a handshake older than
/// `fresh_secs`, or none at all.
pub fn silent_peers(want: &Desired, status: &Value, fresh_secs: u64) -> Vec<Uuid> {
    let mut fresh: BTreeSet<String> = BTreeSet::new();
    for t in status["tunnels"].as_array().into_iter().flatten() {
        for p in t["peers"].as_array().into_iter().flatten() {
            if p["last_handshake_secs"].as_u64().is_some_and(|s| s <= fresh_secs) {
                fresh.insert(p["public_key"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    want.peer_hosts().into_iter().filter(|(_, keys)| keys.is_disjoint(&fresh)).map(|(host, _)| host).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(gen: i32, state: &str, addr: &str) -> OwnKey {
        OwnKey { gen, private_key: format!("PRIVATE{gen}"), public_key: format!("PUB{gen}"), port: 51820 + gen % 2, addr: addr.into(), state: state.into() }
    }

    fn peer(host: Uuid, underlay: &str, subnets: &[Uuid], keys: &[(i32, &str, &str)]) -> Peer {
        Peer {
            host,
            underlay: underlay.into(),
            subnets: subnets.iter().copied().collect(),
            keys: keys
                .iter()
                .map(|(gen, state, addr)| PeerKey { gen: *gen, public_key: format!("{host}-{gen}"), port: 51820 + gen % 2, addr: (*addr).into(), state: (*state).into() })
                .collect(),
        }
    }

    fn ids(n: usize) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_host_with_no_nic_wants_nothing_at_all() {
        let f = Facts { underlay: "10.252.0.2".into(), keys: vec![key(1, "sending", "100.64.0.1")], nics: vec![], peers: vec![] };
        let d = compute(&f);
        assert!(d.tunnels.is_empty() && d.segments.is_empty() && d.nics.is_empty(), "{d:?}");
        let stdin: Value = serde_json::from_slice(&d.to_stdin()).unwrap();
        assert_eq!(stdin, json!({"underlay": "10.252.0.2", "tunnels": [], "segments": [], "nics": []}));
    }

    #[test]
    fn segments_reach_the_sending_gen_of_the_hosts_sharing_each_subnet_only() {
        let [s1, s2] = ids(2)[..] else { unreachable!() };
        let [b, c] = ids(2)[..] else { unreachable!() };
        let [v1, v2] = ids(2)[..] else { unreachable!() };
        let f = Facts {
            underlay: "10.252.0.2".into(),
            keys: vec![key(1, "sending", "100.64.0.1")],
            nics: vec![NicFact { vm: v1, subnet: s1, vni: 101 }, NicFact { vm: v2, subnet: s2, vni: 102 }],
            peers: vec![
                // b shares s1 and is mid-rekey: both gens are peers, only its sending one carries the segment.
                peer(b, "10.252.0.3", &[s1], &[(3, "retiring", "100.64.0.2"), (4, "sending", "100.64.0.5")]),
                peer(c, "10.252.0.4", &[s2], &[(1, "sending", "100.64.0.3")]),
            ],
        };
        let d = compute(&f);
        assert_eq!(d.segments.len(), 2);
        assert_eq!((d.segments[0].vni, d.segments[0].peers.clone()), (101, vec!["100.64.0.5".to_string()]));
        assert_eq!((d.segments[1].vni, d.segments[1].peers.clone()), (102, vec!["100.64.0.3".to_string()]));
        assert_eq!(d.tunnels.len(), 1);
        let t = &d.tunnels[0];
        assert!(t.send);
        let endpoints: Vec<&str> = t.peers.iter().map(|p| p.endpoint.as_str()).collect();
        assert_eq!(endpoints.len(), 3, "every live gen of every peer host");
        assert!(endpoints.contains(&"10.252.0.3:51821") && endpoints.contains(&"10.252.0.3:51820") && endpoints.contains(&"10.252.0.4:51821"));
        assert_eq!(d.nics.len(), 2);
        assert!(d.nics.iter().all(|n| n.tap.len() <= 15 && n.tap.starts_with("skt") && n.mac.starts_with("52:54:00:")));
    }

    #[test]
    fn during_a_rekey_the_host_has_two_tunnels_and_sends_on_exactly_one() {
        let [s] = ids(1)[..] else { unreachable!() };
        let [b] = ids(1)[..] else { unreachable!() };
        let f = Facts {
            underlay: "10.252.0.2".into(),
            keys: vec![key(2, "new", "100.64.0.9"), key(1, "sending", "100.64.0.1")],
            nics: vec![NicFact { vm: Uuid::new_v4(), subnet: s, vni: 7 }],
            peers: vec![peer(b, "10.252.0.3", &[s], &[(1, "sending", "100.64.0.2")])],
        };
        let d = compute(&f);
        let gens: Vec<(i32, bool, i32)> = d.tunnels.iter().map(|t| (t.gen, t.send, t.port)).collect();
        assert_eq!(gens, [(1, true, 51821), (2, false, 51820)], "distinct ports; the old gen sends until the switch");
        let mut switched = f.clone();
        switched.keys = vec![key(1, "retiring", "100.64.0.1"), key(2, "sending", "100.64.0.9")];
        let gens: Vec<(i32, bool)> = compute(&switched).tunnels.iter().map(|t| (t.gen, t.send)).collect();
        assert_eq!(gens, [(1, false), (2, true)]);
    }

    #[test]
    fn no_key_material_in_the_summary_or_debug() {
        let [s] = ids(1)[..] else { unreachable!() };
        let f = Facts {
            underlay: "10.252.0.2".into(),
            keys: vec![key(1, "sending", "100.64.0.1")],
            nics: vec![NicFact { vm: Uuid::new_v4(), subnet: s, vni: 7 }],
            peers: vec![],
        };
        let d = compute(&f);
        assert!(String::from_utf8(d.to_stdin()).unwrap().contains("PRIVATE1"), "the host gets its key");
        assert!(!d.summary().to_string().contains("PRIVATE"));
        assert!(!format!("{d:?}").contains("PRIVATE"));
    }

    fn two_host_state() -> (Desired, Uuid) {
        let [s] = ids(1)[..] else { unreachable!() };
        let [b] = ids(1)[..] else { unreachable!() };
        let f = Facts {
            underlay: "10.252.0.2".into(),
            keys: vec![key(1, "sending", "100.64.0.1")],
            nics: vec![NicFact { vm: Uuid::new_v4(), subnet: s, vni: 7 }],
            peers: vec![peer(b, "10.252.0.3", &[s], &[(1, "sending", "100.64.0.2")])],
        };
        (compute(&f), b)
    }

    fn status_of(d: &Desired, handshake: Option<u64>) -> Value {
        json!({
            "tunnels": d.tunnels.iter().map(|t| json!({"gen": t.gen, "public_key": t.public_key, "running": true,
                "peers": t.peers.iter().map(|p| json!({"public_key": p.public_key, "last_handshake_secs": handshake})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "segments": d.segments.iter().map(|s| json!({"subnet": s.subnet, "bridge": "b", "vxlan": "v"})).collect::<Vec<_>>(),
            "nics": d.nics.iter().map(|n| json!({"vm": n.vm, "tap": n.tap, "up": true})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn drift_is_what_a_reboot_or_a_lost_device_leaves() {
        let (d, _) = two_host_state();
        assert_eq!(drift(&d, &status_of(&d, Some(3))), None);
        assert!(drift(&d, &json!({"tunnels": [], "segments": [], "nics": []})).unwrap().contains("tunnels"), "after a reboot");
        let mut no_tap = status_of(&d, Some(3));
        no_tap["nics"][0]["up"] = json!(false);
        assert!(drift(&d, &no_tap).unwrap().contains("NICs"));
        let mut old_peer = status_of(&d, Some(3));
        old_peer["tunnels"][0]["peers"][0]["public_key"] = json!("someone-else");
        assert!(drift(&d, &old_peer).unwrap().contains("peers"));
    }

    #[test]
    fn a_peer_is_silent_without_a_recent_handshake() {
        let (d, b) = two_host_state();
        assert!(silent_peers(&d, &status_of(&d, Some(30)), 180).is_empty());
        assert_eq!(silent_peers(&d, &status_of(&d, Some(600)), 180), [b]);
        assert_eq!(silent_peers(&d, &status_of(&d, None), 180), [b], "never handshaked");
    }
}

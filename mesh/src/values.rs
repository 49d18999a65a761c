//! What a node publishes about itself in chitchat, and the signed envelope every value travels in
//! (DESIGN.md decision 1: chitchat has no authentication, so receivers verify each value).
//!
//! A value is stored under its key as `base64url(CBOR(Envelope))`. The envelope signs, with the
//! node's own ed25519 key (the one its PeerId names), the fleet id, the node id, the key, a sequence
//! number, a timestamp and the CBOR payload; binding the key and node id means a valid signature
//! cannot be replayed under another key or for another node. Receivers recover the public key from
//! the PeerId, so no key is published.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::admission::public_key_of;

const DOMAIN: &[u8] = b"augur/chitchat-value/v1\0";

/// Prefix of every key augur publishes in chitchat.
pub const KEY_PREFIX: &str = "augur.";

/// The typed values, one per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// The node's join token (fleet-signed), so peers can admit it.
    Admission,
    Health,
    Capacity,
    Placement,
    Services,
    Endpoints,
    Models,
    /// Set when the node leaves on purpose.
    Leaving,
    /// The chitchat generation and gossip address this node runs under: chitchat's own node id
    /// is not signed, so a member is believed only at the generation and address it signed.
    Gossip,
    /// The service instances this node runs, with their addresses and health.
    Instances,
}

impl ValueKind {
    pub const ALL: [ValueKind; 10] = [
        ValueKind::Admission,
        ValueKind::Health,
        ValueKind::Capacity,
        ValueKind::Placement,
        ValueKind::Services,
        ValueKind::Endpoints,
        ValueKind::Models,
        ValueKind::Leaving,
        ValueKind::Gossip,
        ValueKind::Instances,
    ];

    pub fn key(self) -> &'static str {
        match self {
            ValueKind::Admission => "augur.admission",
            ValueKind::Health => "augur.health",
            ValueKind::Capacity => "augur.capacity",
            ValueKind::Placement => "augur.placement",
            ValueKind::Services => "augur.services",
            ValueKind::Endpoints => "augur.endpoints",
            ValueKind::Models => "augur.models",
            ValueKind::Leaving => "augur.leaving",
            ValueKind::Gossip => "augur.gossip",
            ValueKind::Instances => "augur.instances",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.key() == key)
    }
}

/// The node's health summary: its riskiest resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub max_failure_probability: f64,
    pub resource_id: Option<String>,
    pub anomaly_score: f64,
    pub above_threshold: bool,
    /// The resources it predicts to fail (at or above their type's threshold), riskiest first,
    /// at most [`MAX_ALARMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<augur_orchestrate::autonomy::Alarm>,
    /// Starved of CPU or memory, or its own loop running late: its predictions need a peer's
    /// independent evidence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starved: bool,
}

/// Alarms one health value carries at most (more are cut, riskiest kept).
pub const MAX_ALARMS: usize = 16;

/// Free capacity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Idle share of all cores, 0 to 1.
    pub cpu_free: f64,
    pub mem_free_bytes: u64,
    pub disk_free_bytes: u64,
}

/// Where the node is and what it is called.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub node_name: String,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Addresses of the node's API and libp2p listeners.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub http: Option<String>,
    pub grpc: Option<String>,
    /// libp2p multiaddrs, with the PeerId.
    pub p2p: Vec<String>,
}

/// One service instance a node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceValue {
    pub id: String,
    pub service: String,
    /// The catalog version of the spec it runs.
    pub version: u64,
    /// Where it is reached (the node's advertised address and the instance's port).
    pub addr: String,
    /// `unknown`, `healthy`, `unhealthy` (by the node's own checks) or `down` (its process is
    /// not running: exited, or restarting after a backoff).
    pub health: String,
    /// Which run of the instance this is: when it was started here (Unix milliseconds). Of two
    /// claims on one instance id, the higher epoch is the current one; the migrations' leases
    /// replace it with the fencing epoch of the lease the instance was started under.
    #[serde(default)]
    pub epoch: u64,
    /// The slot it serves or stands by for (none: its id names it, as before assignments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// What it does for its slot (none: serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<augur_orchestrate::migration::Role>,
    /// The fencing epoch of the assignment that made it serve (0: placed without one). Of two
    /// serving instances of one slot, the higher is routed to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_epoch: u64,
    /// ... and the change (within that epoch) that made it serve: of two made to serve under one
    /// epoch, the later (a rollback's old instance over the new one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_seq: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where and as what a node gossips (see [`ValueKind::Gossip`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipIdentity {
    pub generation: u64,
    pub addr: String,
}

/// One published value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeValue {
    Admission(String),
    Health(Health),
    Capacity(Capacity),
    Placement(Placement),
    Services(Vec<String>),
    Endpoints(Endpoints),
    /// Model version per resource type.
    Models(BTreeMap<String, String>),
    Leaving(bool),
    Gossip(GossipIdentity),
    Instances(Vec<InstanceValue>),
}

impl NodeValue {
    pub fn kind(&self) -> ValueKind {
        match self {
            NodeValue::Admission(_) => ValueKind::Admission,
            NodeValue::Health(_) => ValueKind::Health,
            NodeValue::Capacity(_) => ValueKind::Capacity,
            NodeValue::Placement(_) => ValueKind::Placement,
            NodeValue::Services(_) => ValueKind::Services,
            NodeValue::Endpoints(_) => ValueKind::Endpoints,
            NodeValue::Models(_) => ValueKind::Models,
            NodeValue::Leaving(_) => ValueKind::Leaving,
            NodeValue::Gossip(_) => ValueKind::Gossip,
            NodeValue::Instances(_) => ValueKind::Instances,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    seq: u64,
    ts_ms: u64,
    #[serde(with = "crate::cbor_bytes")]
    payload: Vec<u8>,
    #[serde(with = "crate::cbor_bytes")]
    sig: Vec<u8>,
}

/// Why a value was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejected {
    #[error("not a signed augur envelope")]
    Unsigned,
    #[error("the signature does not verify for the node that claims it")]
    BadSignature,
    #[error("the payload does not match its key")]
    Malformed,
    #[error("older than the newest value accepted, or past its maximum age")]
    Stale,
    #[error("the node has no valid join token")]
    Unadmitted,
    #[error("chitchat lists the node at a generation or address it did not sign")]
    WrongIdentity,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::BadSignature => "bad_signature",
            Rejected::Malformed => "malformed",
            Rejected::Stale => "stale",
            Rejected::Unadmitted => "unadmitted",
            Rejected::WrongIdentity => "wrong_identity",
        }
    }
}

fn message(fleet_id: &str, node: &str, key: &str, seq: u64, ts_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [fleet_id.as_bytes(), node.as_bytes(), key.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ts_ms.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Signs `value` for chitchat: returns the key and the string to store.
pub fn seal(
    keypair: &Keypair,
    fleet_id: &str,
    value: &NodeValue,
    seq: u64,
    ts_ms: u64,
) -> (&'static str, String) {
    let key = value.kind().key();
    let mut payload = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut payload);
    let node = keypair.public().to_peer_id().to_string();
    let sig = keypair
        .sign(&message(fleet_id, &node, key, seq, ts_ms, &payload))
        .unwrap_or_default();
    let mut out = Vec::new();
    let _ = ciborium::into_writer(
        &Envelope {
            seq,
            ts_ms,
            payload,
            sig,
        },
        &mut out,
    );
    (key, B64.encode(out))
}

/// Characters of a PeerId kept in chitchat node ids (see [`short_id`]).
pub const SHORT_ID_LEN: usize = 10;

/// The chitchat node id of a peer: the last 10 characters of its PeerId (base58, about 58 bits of
/// its public key). chitchat compresses its gossip with zstd, so what a digest costs is the entropy
/// of its node ids: measured at 100 nodes, each random id character costs about 1.5 KB/s per node,
/// and full PeerIds (44 random characters) cost 6 times the bandwidth of compressible names. The id
/// needs only to be unique by accident, not against an attacker: a node is admitted only with a
/// join token that names its full PeerId (travelling once, in its admission value, and checked
/// against this id), so grinding a key whose id collides with another node's is useless without the
/// fleet key. Two of 10,000 nodes share an id by chance with probability about 10^-10.
pub fn short_id(peer: &PeerId) -> String {
    let s = peer.to_string();
    s[s.len().saturating_sub(SHORT_ID_LEN)..].to_owned()
}

/// The PeerId an admission value claims (its join token's), before any verification.
pub fn claimed_peer(stored: &str) -> Option<PeerId> {
    let bytes = B64.decode(stored).ok()?;
    let env: Envelope = ciborium::from_reader(bytes.as_slice()).ok()?;
    match ciborium::from_reader::<NodeValue, _>(env.payload.as_slice()).ok()? {
        NodeValue::Admission(t) => t
            .parse::<crate::admission::JoinToken>()
            .ok()
            .map(|t| t.peer),
        _ => None,
    }
}

/// A verified value.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub value: NodeValue,
    pub seq: u64,
    pub ts_ms: u64,
}

/// Verifies a stored value of `node` under `key`.
pub fn open(fleet_id: &str, node: &PeerId, key: &str, stored: &str) -> Result<Opened, Rejected> {
    let bytes = B64.decode(stored).map_err(|_| Rejected::Unsigned)?;
    let env: Envelope = ciborium::from_reader(bytes.as_slice()).map_err(|_| Rejected::Unsigned)?;
    let public = public_key_of(node).ok_or(Rejected::BadSignature)?;
    let node_s = node.to_string();
    if !public.verify(
        &message(fleet_id, &node_s, key, env.seq, env.ts_ms, &env.payload),
        &env.sig,
    ) {
        return Err(Rejected::BadSignature);
    }
    let value: NodeValue =
        ciborium::from_reader(env.payload.as_slice()).map_err(|_| Rejected::Malformed)?;
    if value.kind().key() != key {
        return Err(Rejected::Malformed);
    }
    Ok(Opened {
        value,
        seq: env.seq,
        ts_ms: env.ts_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_node_key_and_fleet() {
        let kp = Keypair::generate_ed25519();
        let node = kp.public().to_peer_id();
        let v = NodeValue::Health(Health {
            max_failure_probability: 0.8,
            resource_id: Some("db-1".into()),
            anomaly_score: 0.2,
            above_threshold: true,
            ..Default::default()
        });
        let (key, stored) = seal(&kp, "fleet", &v, 3, 1_000);
        let opened = open("fleet", &node, key, &stored).expect("opens");
        assert_eq!((opened.value, opened.seq, opened.ts_ms), (v, 3, 1_000));
        // Another node claiming it, another key, another fleet: all refused.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(
            open("fleet", &other, key, &stored),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            open("fleet", &node, ValueKind::Capacity.key(), &stored),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            open("other-fleet", &node, key, &stored),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            open("fleet", &node, key, "plain text"),
            Err(Rejected::Unsigned)
        );
    }
}

//! Admission to a fleet (DESIGN.md decision 2).
//!
//! A fleet is named by its fleet key, an ed25519 key pair that `augur fleet init` creates and the
//! operator keeps off the hosts (or on one trusted host). A node is admitted by a **join token**:
//! the fleet key's signature over the node's PeerId and an expiry. Nodes carry only their own token
//! and the fleet's *public* key. Peers check a token before they accept anything from a node: its
//! libp2p connection, and its chitchat values.
//!
//! Rotation: a node trusts a list of fleet public keys. To rotate, create a new fleet key, add its
//! public key to every node's trusted list, issue new tokens under it, then drop the old key from the
//! list; tokens also expire (default 365 days), so a leaked token stops working on its own.
//!
//! Text forms: a fleet public key is `augur-fleet-pub:<base64url>`, a token `augur-join:<base64url>`
//! (CBOR inside), so both fit in a TOML file or an environment variable.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use serde::{Deserialize, Serialize};

const PUB_PREFIX: &str = "augur-fleet-pub:";
const TOKEN_PREFIX: &str = "augur-join:";
/// Domain separation: a token signature can never be mistaken for any other signature.
const TOKEN_DOMAIN: &[u8] = b"augur/join-token/v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("not a fleet public key (expected {PUB_PREFIX}...): {0}")]
    BadFleetKey(String),
    #[error("not a join token (expected {TOKEN_PREFIX}...): {0}")]
    BadToken(String),
    #[error("the join token was issued to {issued_to}, not to {peer}")]
    WrongPeer { issued_to: String, peer: String },
    #[error(
        "the join token expired at {expired_at} (unix seconds); issue a new one with `augur fleet token`"
    )]
    Expired { expired_at: u64 },
    #[error("the join token is signed by a fleet key this node does not trust (fleet {0})")]
    UntrustedFleet(String),
    #[error("the join token's signature does not verify")]
    BadSignature,
}

/// A fleet's public key: what every node trusts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FleetPublicKey(ed25519::PublicKey);

impl FleetPublicKey {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        ed25519::PublicKey::try_from_bytes(bytes).ok().map(Self)
    }

    /// Whether `sig` is this key's signature over `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.0.verify(msg, sig)
    }

    /// A short id of the fleet (first 8 bytes of the key, hex), used to keep fleets' gossip apart.
    pub fn fleet_id(&self) -> String {
        self.0.to_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Display for FleetPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUB_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for FleetPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for FleetPublicKey {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| AdmissionError::BadFleetKey(why.to_owned());
        let b64 = s
            .trim()
            .strip_prefix(PUB_PREFIX)
            .ok_or_else(|| bad("wrong prefix"))?;
        let bytes = B64.decode(b64).map_err(|e| bad(&e.to_string()))?;
        ed25519::PublicKey::try_from_bytes(&bytes)
            .map(Self)
            .map_err(|e| bad(&e.to_string()))
    }
}

impl Serialize for FleetPublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FleetPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The fleet key pair (secret): it signs join tokens.
#[derive(Clone)]
pub struct FleetKey(ed25519::Keypair);

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetKey({})", self.public())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetKeyError {
    #[error("cannot read fleet key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write fleet key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} already exists; refusing to overwrite a fleet key (every token it issued would stop working)"
    )]
    Exists { path: PathBuf },
    #[error("{path} is not an augur fleet key: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl FleetKey {
    pub fn generate() -> Self {
        Self(ed25519::Keypair::generate())
    }

    /// A fleet key from 32 secret bytes (deterministic tests and simulations).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut seed = seed;
        let secret = ed25519::SecretKey::try_from_bytes(&mut seed)
            .unwrap_or_else(|_| ed25519::SecretKey::generate());
        Self(ed25519::Keypair::from(secret))
    }

    pub fn public(&self) -> FleetPublicKey {
        FleetPublicKey(self.0.public())
    }

    /// Writes a new fleet key to `path` (mode 0600); refuses to overwrite one.
    pub fn create(path: &Path) -> Result<Self, FleetKeyError> {
        if path.exists() {
            return Err(FleetKeyError::Exists {
                path: path.to_owned(),
            });
        }
        let key = Self::generate();
        let bytes = Keypair::from(key.0.clone())
            .to_protobuf_encoding()
            .map_err(|e| FleetKeyError::Write {
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        crate::identity::write_secret(path, &bytes).map_err(|source| FleetKeyError::Write {
            path: path.to_owned(),
            source,
        })?;
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<Self, FleetKeyError> {
        let bytes = std::fs::read(path).map_err(|source| FleetKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |reason: String| FleetKeyError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let kp = Keypair::from_protobuf_encoding(&bytes).map_err(|e| corrupt(e.to_string()))?;
        kp.try_into_ed25519()
            .map(Self)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Signs `msg` (other credentials of the fleet, see `crate::operator`).
    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg)
    }

    /// Issues a join token for `peer` valid until `expires_unix_s`.
    pub fn issue(&self, peer: PeerId, expires_unix_s: u64) -> JoinToken {
        let fleet = self.public();
        let sig = self.0.sign(&token_message(&fleet, &peer, expires_unix_s));
        JoinToken {
            peer,
            fleet,
            expires_unix_s,
            sig,
        }
    }
}

fn token_message(fleet: &FleetPublicKey, peer: &PeerId, expires: u64) -> Vec<u8> {
    let mut m = TOKEN_DOMAIN.to_vec();
    m.extend_from_slice(&fleet.to_bytes());
    m.extend_from_slice(&peer.to_bytes());
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

/// A node's credential: the fleet key's signature over its PeerId and an expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub peer: PeerId,
    pub fleet: FleetPublicKey,
    pub expires_unix_s: u64,
    sig: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct TokenWire {
    peer: Vec<u8>,
    fleet: [u8; 32],
    expires: u64,
    #[serde(with = "crate::cbor_bytes")]
    sig: Vec<u8>,
}

impl JoinToken {
    /// Checks the token for `peer` at `now_unix_s` against the trusted fleet keys.
    pub fn verify(
        &self,
        peer: &PeerId,
        trusted: &[FleetPublicKey],
        now_unix_s: u64,
    ) -> Result<(), AdmissionError> {
        if self.peer != *peer {
            return Err(AdmissionError::WrongPeer {
                issued_to: self.peer.to_string(),
                peer: peer.to_string(),
            });
        }
        if !trusted.contains(&self.fleet) {
            return Err(AdmissionError::UntrustedFleet(self.fleet.fleet_id()));
        }
        if !self.fleet.0.verify(
            &token_message(&self.fleet, &self.peer, self.expires_unix_s),
            &self.sig,
        ) {
            return Err(AdmissionError::BadSignature);
        }
        if now_unix_s >= self.expires_unix_s {
            return Err(AdmissionError::Expired {
                expired_at: self.expires_unix_s,
            });
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let wire = TokenWire {
            peer: self.peer.to_bytes(),
            fleet: self.fleet.to_bytes(),
            expires: self.expires_unix_s,
            sig: self.sig.clone(),
        };
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(&wire, &mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let bad = |e: String| AdmissionError::BadToken(e);
        let w: TokenWire = ciborium::from_reader(bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            peer: PeerId::from_bytes(&w.peer).map_err(|e| bad(e.to_string()))?,
            fleet: FleetPublicKey(
                ed25519::PublicKey::try_from_bytes(&w.fleet).map_err(|e| bad(e.to_string()))?,
            ),
            expires_unix_s: w.expires,
            sig: w.sig,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}", B64.encode(self.to_bytes()))
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken(peer {}, fleet {}, expires {})",
            self.peer,
            self.fleet.fleet_id(),
            self.expires_unix_s
        )
    }
}

impl FromStr for JoinToken {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| AdmissionError::BadToken("wrong prefix".to_owned()))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| AdmissionError::BadToken(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

/// The fleet public keys this node trusts, shared by every part of the mesh (gossip sessions,
/// the member view, the libp2p swarm) and replaceable while it runs: once a key is removed, every
/// part stops admitting its tokens at its next check (see docs/ARCHITECTURE.md for the bounds).
#[derive(Clone, Debug)]
pub struct Trust(std::sync::Arc<parking_lot::RwLock<std::sync::Arc<Vec<FleetPublicKey>>>>);

impl Trust {
    pub fn new(keys: Vec<FleetPublicKey>) -> Self {
        Self(std::sync::Arc::new(parking_lot::RwLock::new(
            std::sync::Arc::new(keys),
        )))
    }

    /// Replaces the trusted keys.
    pub fn set(&self, keys: Vec<FleetPublicKey>) {
        *self.0.write() = std::sync::Arc::new(keys);
    }

    pub fn keys(&self) -> std::sync::Arc<Vec<FleetPublicKey>> {
        self.0.read().clone()
    }

    pub fn trusts(&self, key: &FleetPublicKey) -> bool {
        self.0.read().contains(key)
    }

    /// [`JoinToken::verify`] against the keys trusted now.
    pub fn verify(
        &self,
        token: &JoinToken,
        peer: &PeerId,
        now_unix_s: u64,
    ) -> Result<(), AdmissionError> {
        token.verify(peer, &self.keys(), now_unix_s)
    }
}

/// The public key a PeerId encodes (ed25519 PeerIds inline their key).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = libp2p::multihash::Multihash::<64>::from_bytes(&peer.to_bytes()).ok()?;
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_its_peer_only_until_it_expires() {
        let fleet = FleetKey::generate();
        let node = Keypair::generate_ed25519().public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let token = fleet.issue(node, 1_000);
        let trusted = [fleet.public()];
        assert_eq!(token.verify(&node, &trusted, 999), Ok(()));
        assert_eq!(
            token.verify(&node, &trusted, 1_000),
            Err(AdmissionError::Expired { expired_at: 1_000 })
        );
        assert!(matches!(
            token.verify(&other, &trusted, 0),
            Err(AdmissionError::WrongPeer { .. })
        ));
        let stranger = FleetKey::generate();
        assert!(matches!(
            token.verify(&node, &[stranger.public()], 0),
            Err(AdmissionError::UntrustedFleet(_))
        ));
        // Text round trip.
        let text = token.to_string();
        let back: JoinToken = text.parse().expect("parses");
        assert_eq!(back, token);
        let fleet_text = fleet.public().to_string();
        assert_eq!(
            fleet_text.parse::<FleetPublicKey>().expect("parses"),
            fleet.public()
        );
    }

    #[test]
    fn a_forged_token_does_not_verify() {
        let fleet = FleetKey::generate();
        let forger = FleetKey::generate();
        let node = Keypair::generate_ed25519().public().to_peer_id();
        // The forger signs, but claims the real fleet's key.
        let mut forged = forger.issue(node, u64::MAX);
        forged.fleet = fleet.public();
        assert_eq!(
            forged.verify(&node, &[fleet.public()], 0),
            Err(AdmissionError::BadSignature)
        );
        // A token whose expiry was edited after signing fails too.
        let mut edited = fleet.issue(node, 10);
        edited.expires_unix_s = u64::MAX;
        assert_eq!(
            edited.verify(&node, &[fleet.public()], 100),
            Err(AdmissionError::BadSignature)
        );
        assert!("augur-join:!!".parse::<JoinToken>().is_err());
    }

    #[test]
    fn rotation_trusts_both_keys_until_the_old_is_dropped() {
        let old = FleetKey::generate();
        let new = FleetKey::generate();
        let node = Keypair::generate_ed25519().public().to_peer_id();
        let old_token = old.issue(node, u64::MAX);
        let new_token = new.issue(node, u64::MAX);
        let during = [old.public(), new.public()];
        assert!(old_token.verify(&node, &during, 0).is_ok());
        assert!(new_token.verify(&node, &during, 0).is_ok());
        let after = [new.public()];
        assert!(old_token.verify(&node, &after, 0).is_err());
        assert!(new_token.verify(&node, &after, 0).is_ok());
    }

    #[test]
    fn fleet_keys_are_saved_once_and_load_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.key");
        let key = FleetKey::create(&path).expect("creates");
        assert!(matches!(
            FleetKey::create(&path),
            Err(FleetKeyError::Exists { .. })
        ));
        assert_eq!(FleetKey::load(&path).expect("loads").public(), key.public());
    }

    #[test]
    fn peer_ids_give_back_their_public_key() {
        let kp = Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        assert_eq!(public_key_of(&peer), Some(kp.public()));
    }
}

//! Model updates on the wire (federated learning, DESIGN decision 7): the author signs the update's
//! bytes with its node key, the update travels on a gossipsub topic between admitted peers, and a
//! receiver opens it only if the signature verifies for the author it names and the author is an
//! admitted member of the fleet. What the bytes hold (`augur_models::federated::ModelUpdate`) is
//! the receiver's to check next; this layer knows nothing of models.
//!
//! gossipsub signs every message too, but by whoever published it: a peer handing on another's
//! update (a cold start answers with the models it holds) publishes it under its own name. The
//! author's own signature, inside, is what says who trained it.

use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::admission::public_key_of;

/// The gossipsub topic of model updates.
pub const MODELS_TOPIC: &str = "augur/models/1";
/// The largest update accepted, in bytes (a default MLP with its calibration is about 20 KB).
pub const MAX_UPDATE_BYTES: usize = 192 * 1024;
const DOMAIN: &[u8] = b"augur-model-update-v1\0";

/// An update as it travels: the author, the update's bytes, the author's signature over both (and
/// the fleet's name, so an update cannot be replayed into another fleet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUpdate {
    pub author: String,
    #[serde(with = "crate::cbor_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "crate::cbor_bytes")]
    pub sig: Vec<u8>,
}

/// Why an update was refused before anything read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRejected {
    #[error("larger than {MAX_UPDATE_BYTES} bytes")]
    Oversized,
    #[error("not a signed model update")]
    Malformed,
    #[error("carries no signature")]
    Unsigned,
    #[error("the signature does not verify for the author it names")]
    BadSignature,
    #[error("its author is not an admitted member of this fleet")]
    NotAdmitted,
}

impl UpdateRejected {
    pub const ALL: [UpdateRejected; 5] = [
        UpdateRejected::Oversized,
        UpdateRejected::Malformed,
        UpdateRejected::Unsigned,
        UpdateRejected::BadSignature,
        UpdateRejected::NotAdmitted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::NotAdmitted => "not_admitted",
        }
    }
}

/// Refused updates by reason, and those opened.
#[derive(Debug, Default)]
pub struct UpdateStats {
    refused: [AtomicU64; 5],
    pub opened: AtomicU64,
}

impl UpdateStats {
    pub fn refuse(&self, why: UpdateRejected) {
        let i = UpdateRejected::ALL
            .iter()
            .position(|r| *r == why)
            .unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by reason.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        UpdateRejected::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

fn message(fleet_id: &str, author: &str, body: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [fleet_id.as_bytes(), author.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(body);
    m
}

/// Signs `body` as this node's update, encoded for the wire.
pub fn seal(keypair: &Keypair, fleet_id: &str, body: Vec<u8>) -> Vec<u8> {
    let author = keypair.public().to_peer_id().to_string();
    let sig = keypair
        .sign(&message(fleet_id, &author, &body))
        .unwrap_or_default();
    let mut out = Vec::new();
    let _ = ciborium::into_writer(&SignedUpdate { author, body, sig }, &mut out);
    out
}

/// Opens an update from the wire: its author and body, if it is small enough, signed by the
/// author it names for this fleet, and the author is admitted (`admitted`).
pub fn open(
    bytes: &[u8],
    fleet_id: &str,
    admitted: impl Fn(&PeerId) -> bool,
) -> Result<(PeerId, Vec<u8>), UpdateRejected> {
    if bytes.len() > MAX_UPDATE_BYTES {
        return Err(UpdateRejected::Oversized);
    }
    let u: SignedUpdate = ciborium::from_reader(bytes).map_err(|_| UpdateRejected::Malformed)?;
    let author: PeerId = u.author.parse().map_err(|_| UpdateRejected::Malformed)?;
    if u.sig.is_empty() {
        return Err(UpdateRejected::Unsigned);
    }
    let key = public_key_of(&author).ok_or(UpdateRejected::Malformed)?;
    if !key.verify(&message(fleet_id, &u.author, &u.body), &u.sig) {
        return Err(UpdateRejected::BadSignature);
    }
    if !admitted(&author) {
        return Err(UpdateRejected::NotAdmitted);
    }
    Ok((author, u.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_opens_only_as_signed_by_its_admitted_author_for_this_fleet() {
        let author = Keypair::generate_ed25519();
        let me = author.public().to_peer_id();
        let stranger = Keypair::generate_ed25519();
        let member = |p: &PeerId| *p == me;
        let wire = seal(&author, "prod", b"weights".to_vec());
        assert_eq!(open(&wire, "prod", member), Ok((me, b"weights".to_vec())));

        let decode = |w: &[u8]| -> SignedUpdate { ciborium::from_reader(w).expect("cbor") };
        let encode = |u: &SignedUpdate| {
            let mut out = Vec::new();
            ciborium::into_writer(u, &mut out).expect("cbor");
            out
        };
        // Another fleet's update does not open here.
        assert_eq!(
            open(&wire, "staging", member),
            Err(UpdateRejected::BadSignature)
        );
        // A changed body, or a body claimed by another author.
        let mut u = decode(&wire);
        u.body = b"poison".to_vec();
        assert_eq!(
            open(&encode(&u), "prod", member),
            Err(UpdateRejected::BadSignature)
        );
        let mut u = decode(&wire);
        u.author = stranger.public().to_peer_id().to_string();
        assert_eq!(
            open(&encode(&u), "prod", |_| true),
            Err(UpdateRejected::BadSignature)
        );
        let mut u = decode(&wire);
        u.sig.clear();
        assert_eq!(
            open(&encode(&u), "prod", member),
            Err(UpdateRejected::Unsigned)
        );
        // Well signed by a node that is not admitted.
        let theirs = seal(&stranger, "prod", b"weights".to_vec());
        assert_eq!(
            open(&theirs, "prod", member),
            Err(UpdateRejected::NotAdmitted)
        );
        assert_eq!(
            open(b"\xff\x00garbage", "prod", member),
            Err(UpdateRejected::Malformed)
        );
        let big = seal(&author, "prod", vec![0u8; MAX_UPDATE_BYTES]);
        assert_eq!(open(&big, "prod", member), Err(UpdateRejected::Oversized));

        let stats = UpdateStats::default();
        stats.refuse(UpdateRejected::NotAdmitted);
        stats.refuse(UpdateRejected::NotAdmitted);
        assert!(stats.refused().contains(&("not_admitted", 2)));
    }
}

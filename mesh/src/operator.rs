//! Operator credentials and what they sign: the fleet's desired state (the service catalog)
//! carries authority, so it is accepted only when an operator signed it (DESIGN.md decisions 1, 2).
//!
//! An operator holds an ed25519 key pair of its own and an **operator token**: the fleet key's
//! signature over the operator's public key, its role and an expiry (like a join token, which
//! admits a node, but granting the right to change the catalog). Nodes check a signed document
//! against the fleet keys they trust: the token must be signed by one of them, unexpired and of
//! the operator role, and the document signed by the token's key. The credential file
//! (`augur fleet operator`) holds the operator's secret key and its token; keep it off the hosts.
//!
//! Text form of a credential: `augur-operator:<base64url CBOR>`.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};

use crate::admission::{FleetKey, FleetPublicKey, Trust};

const CREDENTIAL_PREFIX: &str = "augur-operator:";
/// Domain separation of the two signatures.
const TOKEN_DOMAIN: &[u8] = b"augur/operator-token/v1\0";
const DOCUMENT_DOMAIN: &[u8] = b"augur/signed-document/v1\0";

/// What an operator token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Change the fleet's desired state (apply and delete services).
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
        }
    }
}

/// Why a credential or a signed document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("not an operator credential: {0}")]
    Malformed(String),
    #[error("the operator token is signed by a fleet key this node does not trust (fleet {0})")]
    UntrustedFleet(String),
    #[error("the operator token's signature does not verify")]
    BadToken,
    #[error(
        "the operator token expired at {0} (unix seconds); issue a new one with `augur fleet operator`"
    )]
    Expired(u64),
    #[error("the operator token grants {0}, not the operator role")]
    WrongRole(&'static str),
    #[error("the document's signature does not verify for the operator that claims it")]
    BadSignature,
    #[error(
        "the document was signed at {signed} (unix seconds), more than {MAX_SKEW_S} s from this node's clock ({now}); sign it again (check the clocks)"
    )]
    NotFresh { signed: u64, now: u64 },
}

/// How far a document's signing time may be from the verifying node's clock when it is new.
pub const MAX_SKEW_S: u64 = 300;

/// When a document's grant must have held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Offered by a client now (the API): the grant must hold now, and the document have been
    /// signed within [`MAX_SKEW_S`] of now.
    New,
    /// Replicated from a peer, or reloaded from disk: the grant must have held when the
    /// document was signed (a late joiner accepts what was decided under a grant that has
    /// expired since), and the signing time may not lie in the future.
    Held,
}

/// The fleet key's grant of a role to an operator key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    operator: [u8; 32],
    fleet: [u8; 32],
    pub role: Role,
    pub expires_unix_s: u64,
    #[serde(with = "crate::cbor_bytes")]
    sig: Vec<u8>,
}

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OperatorToken({}, expires {})",
            self.role.as_str(),
            self.expires_unix_s
        )
    }
}

fn token_message(operator: &[u8; 32], fleet: &[u8; 32], role: Role, expires: u64) -> Vec<u8> {
    let mut m = TOKEN_DOMAIN.to_vec();
    m.extend_from_slice(operator);
    m.extend_from_slice(fleet);
    m.extend_from_slice(role.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

impl OperatorToken {
    /// Checks the token at `now_unix_s` against the trusted fleet keys; returns the operator's key.
    pub fn verify(
        &self,
        trusted: &Trust,
        now_unix_s: u64,
    ) -> Result<ed25519::PublicKey, OperatorError> {
        let fleet = FleetPublicKey::from_bytes(&self.fleet)
            .ok_or_else(|| OperatorError::Malformed("fleet key".to_owned()))?;
        if !trusted.trusts(&fleet) {
            return Err(OperatorError::UntrustedFleet(fleet.fleet_id()));
        }
        let msg = token_message(&self.operator, &self.fleet, self.role, self.expires_unix_s);
        if !fleet.verifies(&msg, &self.sig) {
            return Err(OperatorError::BadToken);
        }
        if now_unix_s >= self.expires_unix_s {
            return Err(OperatorError::Expired(self.expires_unix_s));
        }
        if self.role != Role::Operator {
            return Err(OperatorError::WrongRole(self.role.as_str()));
        }
        ed25519::PublicKey::try_from_bytes(&self.operator)
            .map_err(|e| OperatorError::Malformed(e.to_string()))
    }
}

impl FleetKey {
    /// Grants `role` to the operator key `operator` until `expires_unix_s`.
    pub fn issue_operator(
        &self,
        operator: &ed25519::PublicKey,
        role: Role,
        expires_unix_s: u64,
    ) -> OperatorToken {
        let fleet = self.public().to_bytes();
        let operator = operator.to_bytes();
        OperatorToken {
            sig: self.sign(&token_message(&operator, &fleet, role, expires_unix_s)),
            operator,
            fleet,
            role,
            expires_unix_s,
        }
    }
}

/// An operator's credential: its secret key and its token.
#[derive(Clone)]
pub struct OperatorCredential {
    key: ed25519::Keypair,
    pub token: OperatorToken,
}

impl fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorCredential({:?})", self.token)
    }
}

#[derive(Serialize, Deserialize)]
struct CredentialWire {
    #[serde(with = "crate::cbor_bytes")]
    secret: Vec<u8>,
    token: OperatorToken,
}

impl OperatorCredential {
    /// A new operator key with the fleet's grant of `role` until `expires_unix_s`.
    pub fn create(fleet: &FleetKey, role: Role, expires_unix_s: u64) -> Self {
        let key = ed25519::Keypair::generate();
        let token = fleet.issue_operator(&key.public(), role, expires_unix_s);
        Self { key, token }
    }

    /// Signs a document: `kind` and `name` say what it is, `version` orders its versions.
    /// Signs a document at `signed_unix_s` (the signature covers the time).
    pub fn sign(
        &self,
        kind: &str,
        name: &str,
        version: u64,
        body: Vec<u8>,
        signed_unix_s: u64,
    ) -> SignedDocument {
        let sig = self.key.sign(&document_message(
            kind,
            name,
            version,
            &body,
            Some(signed_unix_s),
        ));
        SignedDocument {
            kind: kind.to_owned(),
            name: name.to_owned(),
            version,
            body,
            token: self.token.clone(),
            signed_unix_s: Some(signed_unix_s),
            sig,
        }
    }

    /// Writes the credential to `path` (mode 0600); refuses to overwrite a file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists; refusing to overwrite a credential",
                    path.display()
                ),
            ));
        }
        crate::identity::write_secret(path, self.to_string().as_bytes())
    }

    pub fn load(path: &Path) -> Result<Self, OperatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| OperatorError::Malformed(format!("{}: {e}", path.display())))?;
        text.parse()
    }
}

impl fmt::Display for OperatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = CredentialWire {
            secret: self.key.secret().as_ref().to_vec(),
            token: self.token.clone(),
        };
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(&wire, &mut out);
        write!(f, "{CREDENTIAL_PREFIX}{}", B64.encode(out))
    }
}

impl std::str::FromStr for OperatorCredential {
    type Err = OperatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |e: String| OperatorError::Malformed(e);
        let b64 = s
            .trim()
            .strip_prefix(CREDENTIAL_PREFIX)
            .ok_or_else(|| bad(format!("expected {CREDENTIAL_PREFIX}...")))?;
        let bytes = B64.decode(b64).map_err(|e| bad(e.to_string()))?;
        let mut w: CredentialWire =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| bad(e.to_string()))?;
        let secret =
            ed25519::SecretKey::try_from_bytes(&mut w.secret).map_err(|e| bad(e.to_string()))?;
        let key = ed25519::Keypair::from(secret);
        if key.public().to_bytes() != w.token.operator {
            return Err(bad(
                "the secret key is not the token's operator key".to_owned()
            ));
        }
        Ok(Self {
            key,
            token: w.token,
        })
    }
}

fn document_message(
    kind: &str,
    name: &str,
    version: u64,
    body: &[u8],
    signed_unix_s: Option<u64>,
) -> Vec<u8> {
    let mut m = DOCUMENT_DOMAIN.to_vec();
    for part in [kind.as_bytes(), name.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(body);
    // Documents signed before the time was signed too have none (and are checked at now).
    if let Some(t) = signed_unix_s {
        m.extend_from_slice(b"signed-at");
        m.extend_from_slice(&t.to_be_bytes());
    }
    m
}

/// A document an operator signed (a service spec, or its deletion), as it travels and is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDocument {
    pub kind: String,
    pub name: String,
    pub version: u64,
    #[serde(with = "crate::cbor_bytes")]
    pub body: Vec<u8>,
    pub token: OperatorToken,
    /// When the operator signed it (Unix seconds; covered by the signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_unix_s: Option<u64>,
    #[serde(with = "crate::cbor_bytes")]
    sig: Vec<u8>,
}

const DOCUMENT_PREFIX: &str = "augur-doc:";

impl fmt::Display for SignedDocument {
    /// The text form (`augur-doc:<base64url CBOR>`), for APIs and files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        write!(f, "{DOCUMENT_PREFIX}{}", B64.encode(out))
    }
}

impl std::str::FromStr for SignedDocument {
    type Err = OperatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |e: String| OperatorError::Malformed(e);
        let b64 = s
            .trim()
            .strip_prefix(DOCUMENT_PREFIX)
            .ok_or_else(|| bad(format!("expected {DOCUMENT_PREFIX}...")))?;
        let bytes = B64.decode(b64).map_err(|e| bad(e.to_string()))?;
        ciborium::from_reader(bytes.as_slice()).map_err(|e| bad(e.to_string()))
    }
}

impl SignedDocument {
    /// Checks the operator's token against the trusted fleet keys (at now or at the signing
    /// time, see [`Freshness`]) and the signature over kind, name, version, body and time.
    pub fn verify(
        &self,
        trusted: &Trust,
        now_unix_s: u64,
        freshness: Freshness,
    ) -> Result<(), OperatorError> {
        let at = match (freshness, self.signed_unix_s) {
            (_, None) => now_unix_s,
            (Freshness::New, Some(t)) => {
                // An expired grant is the more useful thing to say.
                self.token.verify(trusted, now_unix_s)?;
                if t.abs_diff(now_unix_s) > MAX_SKEW_S {
                    return Err(OperatorError::NotFresh {
                        signed: t,
                        now: now_unix_s,
                    });
                }
                now_unix_s
            }
            (Freshness::Held, Some(t)) => {
                if t > now_unix_s + MAX_SKEW_S {
                    return Err(OperatorError::NotFresh {
                        signed: t,
                        now: now_unix_s,
                    });
                }
                t
            }
        };
        let operator = self.token.verify(trusted, at)?;
        let msg = document_message(
            &self.kind,
            &self.name,
            self.version,
            &self.body,
            self.signed_unix_s,
        );
        if operator.verify(&msg, &self.sig) {
            Ok(())
        } else {
            Err(OperatorError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signed_document_verifies_only_as_signed_by_a_trusted_operator() {
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let op = OperatorCredential::create(&fleet, Role::Operator, NOW + 3600);
        let doc = op.sign("service", "web", 3, b"spec".to_vec(), NOW);
        assert_eq!(doc.verify(&trust, NOW, Freshness::New), Ok(()));
        // The credential survives its text form.
        let again: OperatorCredential = op.to_string().parse().expect("parses");
        let text: SignedDocument = doc.to_string().parse().expect("the document's text form");
        assert_eq!(text, doc);
        assert_eq!(
            again
                .sign("service", "web", 3, b"spec".to_vec(), NOW)
                .verify(&trust, NOW, Freshness::New),
            Ok(())
        );

        // Any change to what was signed breaks the signature.
        for tamper in [
            |d: &mut SignedDocument| d.version += 1,
            |d: &mut SignedDocument| d.name = "api".into(),
            |d: &mut SignedDocument| d.kind = "model".into(),
            |d: &mut SignedDocument| d.body.push(b'!'),
            |d: &mut SignedDocument| d.signed_unix_s = Some(NOW - 1),
        ] {
            let mut d = doc.clone();
            tamper(&mut d);
            assert_eq!(
                d.verify(&trust, NOW, Freshness::New),
                Err(OperatorError::BadSignature)
            );
        }
        // Expired: a new offer is refused; a replicated document signed while the grant held is
        // still good (a late joiner takes what was decided then).
        assert_eq!(
            doc.verify(&trust, NOW + 3600, Freshness::New),
            Err(OperatorError::Expired(NOW + 3600))
        );
        assert_eq!(doc.verify(&trust, NOW + 86_400, Freshness::Held), Ok(()));
        // ... but not one signed after it expired, nor one dated in the future.
        let late = op.sign("service", "web", 4, b"spec".to_vec(), NOW + 3600);
        assert_eq!(
            late.verify(&trust, NOW + 7200, Freshness::Held),
            Err(OperatorError::Expired(NOW + 3600))
        );
        let ahead = op.sign("service", "web", 4, b"spec".to_vec(), NOW + 1000);
        assert!(matches!(
            ahead.verify(&trust, NOW, Freshness::Held),
            Err(OperatorError::NotFresh { .. })
        ));
        // A new offer must have been signed just now.
        let stale = op.sign("service", "web", 4, b"spec".to_vec(), NOW - 1000);
        assert!(matches!(
            stale.verify(&trust, NOW, Freshness::New),
            Err(OperatorError::NotFresh { .. })
        ));
        // Under a fleet key no longer trusted.
        let other = Trust::new(vec![FleetKey::from_seed([2; 32]).public()]);
        assert!(matches!(
            doc.verify(&other, NOW, Freshness::Held),
            Err(OperatorError::UntrustedFleet(_))
        ));
        // A token stretched by its holder no longer verifies.
        let mut stretched = doc.clone();
        stretched.token.expires_unix_s += 10_000;
        assert_eq!(
            stretched.verify(&trust, NOW, Freshness::New),
            Err(OperatorError::BadToken)
        );
        // Someone else's key cannot sign under this operator's token.
        let mallory =
            OperatorCredential::create(&FleetKey::from_seed([3; 32]), Role::Operator, NOW + 3600);
        let mut forged = mallory.sign("service", "web", 4, b"evil".to_vec(), NOW);
        forged.token = op.token.clone();
        assert_eq!(
            forged.verify(&trust, NOW, Freshness::New),
            Err(OperatorError::BadSignature)
        );
    }

    #[test]
    fn credentials_are_saved_secret_and_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("operator.cred");
        let op =
            OperatorCredential::create(&FleetKey::from_seed([1; 32]), Role::Operator, NOW + 60);
        op.save(&path).expect("saves");
        assert!(op.save(&path).is_err(), "no overwrite");
        let back = OperatorCredential::load(&path).expect("loads");
        assert_eq!(back.token, op.token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "not readable by others");
        }
        assert!("augur-operator:!!".parse::<OperatorCredential>().is_err());
    }
}

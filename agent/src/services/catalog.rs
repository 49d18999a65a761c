//! This node's copy of the fleet's service catalog: operator-signed documents (a spec, or a
//! deletion), verified against the trusted fleet keys, ordered by `augur_orchestrate::catalog`,
//! and kept durably in `catalog.cbor` in the data directory (written atomically; reloaded and
//! checked again at start). Replication to the other nodes comes with the rest of issue 12.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use augur_mesh::admission::Trust;
use augur_mesh::operator::{Freshness, OperatorError, SignedDocument};
use augur_orchestrate::catalog::{Catalog, Entry, Outcome};
use augur_orchestrate::fleet::FleetDoc;
use augur_orchestrate::spec::{ServiceSpec, SpecError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A document that sets a service's spec (its body: the spec file's TOML).
pub const KIND_SPEC: &str = "service";
/// A document that deletes a service (empty body).
pub const KIND_DELETE: &str = "service.delete";
/// The fleet document (lease voters and the disruption budget; its body: `FleetDoc`'s TOML).
pub const KIND_FLEET: &str = "fleet";
/// The name the fleet document is signed under.
pub const FLEET_NAME: &str = "fleet";
/// The file of the catalog, in the data directory.
pub const CATALOG_FILE: &str = "catalog.cbor";

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not signed by an operator this node trusts: {0}")]
    Unauthorized(#[from] OperatorError),
    #[error("the spec is not valid: {0}")]
    Invalid(#[from] SpecError),
    #[error("{0}")]
    Malformed(String),
    #[error(
        "version {offered} of {name} is not newer than version {held}, which this node has; \
         sign the change with version {next}"
    )]
    Stale {
        name: String,
        offered: u64,
        held: u64,
        next: u64,
    },
    #[error("cannot save the catalog to {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
}

impl CatalogError {
    /// The label of `augur_catalog_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            CatalogError::Unauthorized(_) => "unauthorized",
            CatalogError::Invalid(_) => "invalid",
            CatalogError::Malformed(_) => "malformed",
            CatalogError::Stale { .. } => "stale",
            CatalogError::Storage { .. } => "storage",
        }
    }
}

/// One service as the API lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub version: u64,
    pub spec: ServiceSpec,
}

#[derive(Debug, Default)]
struct Inner {
    catalog: Catalog,
    /// The document behind each service's entry (what is saved, and later replicated).
    docs: BTreeMap<String, SignedDocument>,
    /// The fleet document held, if any.
    fleet: Option<(SignedDocument, FleetDoc)>,
}

fn fleet_of(doc: &SignedDocument) -> Result<FleetDoc, CatalogError> {
    if doc.name != FLEET_NAME {
        return Err(CatalogError::Malformed(format!(
            "a fleet document is named {FLEET_NAME:?}, not {:?}",
            doc.name
        )));
    }
    let text = std::str::from_utf8(&doc.body)
        .map_err(|_| CatalogError::Malformed("the fleet document is not UTF-8".to_owned()))?;
    Ok(FleetDoc::from_toml(text)?)
}

impl Inner {
    /// Offers a verified fleet document: the higher version wins; of two different documents
    /// under one version, every node keeps the one whose text orders higher.
    fn offer_fleet(&mut self, doc: SignedDocument, fleet: FleetDoc) -> Outcome {
        match &self.fleet {
            Some((held, _)) if held.version > doc.version => Outcome::Stale { held: held.version },
            Some((held, _)) if held.version == doc.version => {
                if *held == doc {
                    Outcome::Duplicate
                } else if doc.to_string() > held.to_string() {
                    self.fleet = Some((doc, fleet));
                    Outcome::Accepted
                } else {
                    Outcome::Stale { held: held.version }
                }
            }
            _ => {
                self.fleet = Some((doc, fleet));
                Outcome::Accepted
            }
        }
    }

    /// Every document held, to save and to send.
    fn all_documents(&self) -> Vec<String> {
        self.docs
            .values()
            .chain(self.fleet.as_ref().map(|(d, _)| d))
            .map(ToString::to_string)
            .collect()
    }
}

/// The catalog of this node. Cloneable handle.
#[derive(Clone, Debug)]
pub struct CatalogStore {
    path: PathBuf,
    trust: Trust,
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every accepted change (the sync task sends the catalog to peers).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    pub accepted: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
}

fn entry_of(doc: &SignedDocument) -> Result<Entry, CatalogError> {
    match doc.kind.as_str() {
        KIND_SPEC => {
            let text = std::str::from_utf8(&doc.body)
                .map_err(|_| CatalogError::Malformed("the spec is not UTF-8".to_owned()))?;
            let spec = ServiceSpec::from_toml(text)?;
            if spec.name != doc.name {
                return Err(CatalogError::Malformed(format!(
                    "the document names {}, its spec {}",
                    doc.name, spec.name
                )));
            }
            Ok(Entry {
                version: doc.version,
                spec: Some(spec),
            })
        }
        KIND_DELETE => Ok(Entry {
            version: doc.version,
            spec: None,
        }),
        other => Err(CatalogError::Malformed(format!(
            "a {other:?} document is not a catalog change"
        ))),
    }
}

impl CatalogStore {
    /// Opens the catalog in `data_dir`: every saved document is checked again (a document that no
    /// longer verifies, say under a fleet key since removed, is dropped and counted).
    pub fn open(data_dir: &Path, trust: Trust, now_unix_s: u64) -> Self {
        let store = Self {
            path: data_dir.join(CATALOG_FILE),
            trust,
            inner: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            accepted: Arc::default(),
            refused: Arc::default(),
        };
        let saved: Vec<String> = std::fs::read(&store.path)
            .ok()
            .and_then(|b| ciborium::from_reader(b.as_slice()).ok())
            .unwrap_or_default();
        let mut inner = store.inner.lock();
        for text in saved {
            let checked = text
                .parse::<SignedDocument>()
                .map_err(CatalogError::from)
                .and_then(|d| {
                    // Saved: the grant must have held when it was signed.
                    d.verify(&store.trust, now_unix_s, Freshness::Held)?;
                    if d.kind == KIND_FLEET {
                        return Ok((Err(fleet_of(&d)?), d));
                    }
                    Ok((Ok(entry_of(&d)?), d))
                });
            match checked {
                Ok((Ok(entry), doc)) => {
                    if inner.catalog.offer(&doc.name, entry) == Outcome::Accepted {
                        inner.docs.insert(doc.name.clone(), doc);
                    }
                }
                Ok((Err(fleet), doc)) => {
                    inner.offer_fleet(doc, fleet);
                }
                Err(e) => {
                    store.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a saved catalog document no longer verifies; dropped");
                }
            }
        }
        drop(inner);
        store
    }

    /// Offers a change in its text form (`augur-doc:...`, as the API and peers send it): an
    /// unreadable one is refused and counted like any other. Returns the service, the version
    /// and what became of it.
    pub fn offer_text(
        &self,
        text: &str,
        now_unix_s: u64,
        freshness: Freshness,
    ) -> Result<(String, u64, Outcome), CatalogError> {
        let doc: SignedDocument = text.parse().map_err(|e: OperatorError| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            CatalogError::Malformed(e.to_string())
        })?;
        let (name, version) = (doc.name.clone(), doc.version);
        self.offer(doc, now_unix_s, freshness)
            .map(|o| (name, version, o))
    }

    /// Offers a signed change (`New` from a client, `Held` from a peer: see [`Freshness`]); on
    /// acceptance it is saved before this returns.
    pub fn offer(
        &self,
        doc: SignedDocument,
        now_unix_s: u64,
        freshness: Freshness,
    ) -> Result<Outcome, CatalogError> {
        let result = self.try_offer(doc, now_unix_s, freshness);
        match &result {
            Ok(Outcome::Accepted) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.changes.send_modify(|g| *g += 1);
            }
            Ok(_) => {}
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, reason = e.reason(), "catalog change refused");
            }
        }
        result
    }

    fn try_offer(
        &self,
        doc: SignedDocument,
        now_unix_s: u64,
        freshness: Freshness,
    ) -> Result<Outcome, CatalogError> {
        doc.verify(&self.trust, now_unix_s, freshness)?;
        if doc.kind == KIND_FLEET {
            return self.try_offer_fleet(doc);
        }
        let entry = entry_of(&doc)?;
        let mut inner = self.inner.lock();
        let before = inner.catalog.clone();
        match inner.catalog.offer(&doc.name, entry) {
            Outcome::Accepted => {
                let previous = inner.docs.insert(doc.name.clone(), doc.clone());
                if let Err(e) = self.save(&inner) {
                    // Not durable: not accepted.
                    inner.catalog = before;
                    match previous {
                        Some(p) => inner.docs.insert(doc.name.clone(), p),
                        None => inner.docs.remove(&doc.name),
                    };
                    return Err(e);
                }
                tracing::info!(service = %doc.name, version = doc.version, kind = %doc.kind, "catalog changed");
                Ok(Outcome::Accepted)
            }
            Outcome::Duplicate => Ok(Outcome::Duplicate),
            Outcome::Stale { held } => Err(CatalogError::Stale {
                name: doc.name.clone(),
                offered: doc.version,
                held,
                next: held + 1,
            }),
        }
    }

    fn try_offer_fleet(&self, doc: SignedDocument) -> Result<Outcome, CatalogError> {
        let fleet = fleet_of(&doc)?;
        let mut inner = self.inner.lock();
        let before = inner.fleet.clone();
        let version = doc.version;
        match inner.offer_fleet(doc, fleet) {
            Outcome::Accepted => {
                if let Err(e) = self.save(&inner) {
                    inner.fleet = before;
                    return Err(e);
                }
                tracing::info!(version, "fleet document changed");
                Ok(Outcome::Accepted)
            }
            Outcome::Duplicate => Ok(Outcome::Duplicate),
            Outcome::Stale { held } => Err(CatalogError::Stale {
                name: FLEET_NAME.to_owned(),
                offered: version,
                held,
                next: held + 1,
            }),
        }
    }

    /// Checks that a trusted operator signed `doc` just now (for requests that act, such as a
    /// migration, rather than change the catalog).
    pub fn verify(&self, doc: &SignedDocument, now_unix_s: u64) -> Result<(), CatalogError> {
        doc.verify(&self.trust, now_unix_s, Freshness::New)
            .map_err(CatalogError::from)
    }

    /// The fleet document held, with its version.
    pub fn fleet(&self) -> Option<(u64, FleetDoc)> {
        self.inner
            .lock()
            .fleet
            .as_ref()
            .map(|(d, f)| (d.version, f.clone()))
    }

    fn save(&self, inner: &Inner) -> Result<(), CatalogError> {
        let texts = inner.all_documents();
        crate::files::write_atomic(&self.path, |w| {
            ciborium::into_writer(&texts, w).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|e| CatalogError::Storage {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The services to run, by name.
    pub fn services(&self) -> Vec<ServiceEntry> {
        self.inner
            .lock()
            .catalog
            .services()
            .map(|(name, version, spec)| ServiceEntry {
                name: name.to_owned(),
                version,
                spec: spec.clone(),
            })
            .collect()
    }

    /// Notified on every accepted change.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every document held (a service's spec or deletion, the fleet document), in text form, to
    /// send to peers.
    pub fn documents(&self) -> Vec<String> {
        self.inner.lock().all_documents()
    }

    /// Every service's version held, deletions included (a change must carry a higher one).
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .catalog
            .versions()
            .map(|(n, v)| (n.to_owned(), v))
            .collect()
    }

    /// The version a change to `name` should carry next.
    pub fn next_version(&self, name: &str) -> u64 {
        self.inner.lock().catalog.next_version(name)
    }
}

#[cfg(test)]
mod tests {
    use augur_mesh::admission::FleetKey;
    use augur_mesh::operator::{OperatorCredential, Role};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn spec(port: u16) -> Vec<u8> {
        format!(
            "[service]\nname = \"web\"\nport = {port}\n[service.driver]\nkind = \"process\"\ncommand = \"/bin/web\"\n[service.health]\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_fleet_document_is_versioned_checked_and_kept_beside_the_services() {
        const PEER: &str = "12D3KooWGzbnqJ4YQ2fVkqpAbbGQ3s8bMZaB3L1NvsBPXKaT4NmF";
        let dir = tempfile::tempdir().expect("tempdir");
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let op = OperatorCredential::create(&fleet, Role::Operator, NOW + 3600);
        let store = CatalogStore::open(dir.path(), trust.clone(), NOW);
        assert!(store.fleet().is_none());
        let body = |n: u32| format!("[leases]\nvoters = [\"{PEER}\"]\nmax_migrations = {n}\n");
        let v2 = op.sign(KIND_FLEET, FLEET_NAME, 2, body(2).into_bytes(), NOW);
        assert_eq!(
            store.offer(v2, NOW, Freshness::New).expect("v2"),
            Outcome::Accepted
        );
        store
            .offer(
                op.sign(KIND_SPEC, "web", 1, spec(8080), NOW),
                NOW,
                Freshness::New,
            )
            .expect("a service beside it");
        let e = store
            .offer(
                op.sign(KIND_FLEET, FLEET_NAME, 1, body(3).into_bytes(), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("older");
        assert_eq!(e.reason(), "stale");
        let e = store
            .offer(
                op.sign(KIND_FLEET, FLEET_NAME, 3, body(0).into_bytes(), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("no budget");
        assert_eq!(e.reason(), "invalid");
        assert!(e.to_string().contains("leases.max_migrations"), "{e}");
        let e = store
            .offer(
                op.sign(KIND_FLEET, "other", 3, body(1).into_bytes(), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("misnamed");
        assert_eq!(e.reason(), "malformed");
        let (version, doc) = store.fleet().expect("held");
        assert_eq!((version, doc.leases.max_migrations), (2, 2));
        assert_eq!(store.documents().len(), 2, "replicated with the services");
        let again = CatalogStore::open(dir.path(), trust, NOW);
        assert_eq!(again.fleet(), store.fleet(), "survives a restart");
        assert_eq!(again.services().len(), 1);
    }

    #[test]
    fn signed_changes_are_kept_durably_and_everything_else_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let op = OperatorCredential::create(&fleet, Role::Operator, NOW + 3600);
        let store = CatalogStore::open(dir.path(), trust.clone(), NOW);
        assert!(store.services().is_empty());
        let v1 = op.sign(KIND_SPEC, "web", 1, spec(8080), NOW);
        assert_eq!(
            store.offer(v1.clone(), NOW, Freshness::New).expect("v1"),
            Outcome::Accepted
        );
        assert_eq!(
            store.offer(v1, NOW, Freshness::New).expect("again"),
            Outcome::Duplicate
        );
        // Stale, invalid, unsigned by a trusted operator, or mislabelled: refused, counted.
        let stale = store.offer(
            op.sign(KIND_SPEC, "web", 1, spec(9090), NOW),
            NOW,
            Freshness::New,
        );
        assert!(matches!(
            stale,
            Err(CatalogError::Stale { .. }) | Ok(Outcome::Accepted)
        ));
        let before = store.services();
        let e = store
            .offer(
                op.sign(KIND_SPEC, "web", 0, spec(7070), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("older");
        assert!(
            matches!(e, CatalogError::Stale { next, .. } if next == before[0].version + 1),
            "{e}"
        );
        let e = store
            .offer(
                op.sign(KIND_SPEC, "web", 5, spec(0), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("port 0");
        assert_eq!(e.reason(), "invalid");
        let e = store
            .offer(
                op.sign(KIND_SPEC, "api", 5, spec(8080), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("name");
        assert_eq!(e.reason(), "malformed");
        let stranger =
            OperatorCredential::create(&FleetKey::from_seed([2; 32]), Role::Operator, NOW + 3600);
        let e = store
            .offer(
                stranger.sign(KIND_SPEC, "web", 9, spec(8080), NOW),
                NOW,
                Freshness::New,
            )
            .expect_err("untrusted");
        assert_eq!(e.reason(), "unauthorized");
        assert_eq!(store.refused.load(Ordering::Relaxed), 4);
        // A newer version replaces it; the catalog survives a restart.
        assert_eq!(
            store
                .offer(
                    op.sign(KIND_SPEC, "web", 7, spec(9191), NOW),
                    NOW,
                    Freshness::New
                )
                .expect("v7"),
            Outcome::Accepted
        );
        let reopened = CatalogStore::open(dir.path(), trust.clone(), NOW);
        assert_eq!(reopened.services(), store.services());
        assert_eq!(reopened.services()[0].spec.port, 9191);
        assert_eq!(reopened.next_version("web"), 8);
        // A deletion is kept too, and an older spec cannot bring the service back.
        assert_eq!(
            reopened
                .offer(
                    op.sign(KIND_DELETE, "web", 8, Vec::new(), NOW),
                    NOW,
                    Freshness::New
                )
                .expect("delete"),
            Outcome::Accepted
        );
        assert!(
            reopened
                .offer(
                    op.sign(KIND_SPEC, "web", 7, spec(9191), NOW),
                    NOW,
                    Freshness::New
                )
                .is_err()
        );
        assert!(
            CatalogStore::open(dir.path(), trust, NOW)
                .services()
                .is_empty()
        );
        // Under a fleet key no longer trusted, saved documents are dropped at start.
        let distrust = Trust::new(Vec::new());
        let s = CatalogStore::open(dir.path(), distrust, NOW);
        assert_eq!(s.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn what_was_decided_under_a_grant_outlives_the_grant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        // A grant of one hour; a spec applied while it held.
        let op = OperatorCredential::create(&fleet, Role::Operator, NOW + 3600);
        let store = CatalogStore::open(&dir.path().join("a"), trust.clone(), NOW);
        let doc = op.sign(KIND_SPEC, "web", 1, spec(8080), NOW);
        assert_eq!(
            store.offer(doc.clone(), NOW, Freshness::New).expect("v1"),
            Outcome::Accepted
        );
        let later = NOW + 86_400;
        // A day later the node restarts: the spec is still there.
        let reopened = CatalogStore::open(&dir.path().join("a"), trust.clone(), later);
        assert_eq!(reopened.services().len(), 1);
        // A node that joins then gets it from a peer and takes it.
        let joiner = CatalogStore::open(&dir.path().join("b"), trust.clone(), later);
        assert_eq!(
            joiner
                .offer_text(&doc.to_string(), later, Freshness::Held)
                .expect("replicated")
                .2,
            Outcome::Accepted
        );
        // But the expired grant signs nothing new: not through the API, and not by dating a
        // document inside the grant and offering it as new.
        let e = joiner
            .offer(
                op.sign(KIND_SPEC, "web", 2, spec(9090), later),
                later,
                Freshness::New,
            )
            .expect_err("expired");
        assert!(e.to_string().contains("expired"), "{e}");
        let e = joiner
            .offer(
                op.sign(KIND_SPEC, "web", 2, spec(9090), NOW),
                later,
                Freshness::New,
            )
            .expect_err("backdated");
        assert_eq!(e.reason(), "unauthorized");
    }
}

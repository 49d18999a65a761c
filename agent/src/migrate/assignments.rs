//! This node's copy of the services' assignments (which instance runs where, in which role),
//! taken from lease holders over the mesh: fenced by the service's epoch, ordered by (epoch, seq),
//! persisted in `acting.redb` before they are acknowledged, and followed by the runtime. Sent again
//! to every peer now and then and to each newly admitted one, so a node that was away catches up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use augur_mesh::PeerId;
use augur_mesh::act::Assignment;
use augur_mesh::leases::{AssignStore, Leases};
use augur_mesh::swarm::SwarmEvent;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::ActStore;

/// How often every assignment is sent to every admitted peer.
pub const RESEND_EVERY: Duration = Duration::from_secs(20);

/// Cloneable handle.
#[derive(Clone, Debug)]
pub struct Assignments {
    store: ActStore,
    held: Arc<RwLock<BTreeMap<String, Assignment>>>,
    changes: Arc<watch::Sender<u64>>,
    pub accepted: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
}

impl Assignments {
    pub fn open(store: ActStore) -> Self {
        let held = store
            .assignments()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "stored assignments cannot be read; starting without");
                Vec::new()
            })
            .into_iter()
            .map(|a| (a.service.clone(), a))
            .collect();
        Self {
            store,
            held: Arc::new(RwLock::new(held)),
            changes: Arc::new(watch::channel(0).0),
            accepted: Arc::default(),
            refused: Arc::default(),
        }
    }

    pub fn get(&self, service: &str) -> Option<Assignment> {
        self.held.read().get(service).cloned()
    }

    pub fn all(&self) -> Vec<Assignment> {
        self.held.read().values().cloned().collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes an assignment (from a peer, or this node's own migration).
    pub fn take(&self, a: Assignment) -> Result<(), String> {
        let r = self.try_take(a);
        match &r {
            Ok(true) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.changes.send_modify(|g| *g += 1);
            }
            Ok(false) => {}
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, "assignment refused");
            }
        }
        r.map(|_| ())
    }

    /// Whether it changed anything.
    fn try_take(&self, a: Assignment) -> Result<bool, String> {
        a.validate()?;
        let mut held = self.held.write();
        if let Some(h) = held.get(&a.service) {
            if *h == a {
                return Ok(false);
            }
            if !a.is_newer_than(h) {
                return Err(format!(
                    "assignment {}.{} of {} is not newer than {}.{}, held",
                    a.epoch, a.seq, a.service, h.epoch, h.seq
                ));
            }
        }
        match self.store.put_assignment(&a) {
            Ok(Ok(())) => {}
            Ok(Err(stale)) => return Err(stale.to_string()),
            Err(e) => return Err(format!("not stored: {e}")),
        }
        tracing::info!(service = %a.service, epoch = a.epoch, seq = a.seq, entries = a.entries.len(), "assignment taken");
        held.insert(a.service.clone(), a);
        Ok(true)
    }
}

impl AssignStore for Assignments {
    fn offer(&self, _from: &PeerId, a: Assignment) -> Result<(), String> {
        self.take(a)
    }

    fn latest(&self, service: &str) -> Option<Assignment> {
        self.get(service)
    }
}

/// Sends every assignment to every admitted peer now and then, and to each peer once admitted.
pub async fn sync(
    leases: Leases,
    mesh: augur_mesh::Mesh,
    held: Assignments,
    stop: CancellationToken,
) {
    let mut swarm = mesh.swarm.subscribe();
    let mut resend = tokio::time::interval(RESEND_EVERY);
    loop {
        let peers: Vec<PeerId> = tokio::select! {
            () = stop.cancelled() => return,
            _ = resend.tick() => mesh.swarm.admitted(),
            ev = swarm.recv() => match ev {
                Ok(SwarmEvent::Admitted(p)) => vec![p],
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        if peers.is_empty() {
            continue;
        }
        for a in held.all() {
            for (peer, r) in leases.assign(&peers, &a).await {
                if let Err(e) = r {
                    tracing::debug!(%peer, service = %a.service, error = %e, "assignment not taken by a peer");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use augur_orchestrate::migration::{Entry, Role};

    use super::*;

    fn assignment(epoch: u64, seq: u64, node: &str) -> Assignment {
        Assignment {
            service: "web".into(),
            epoch,
            seq,
            entries: vec![Entry {
                instance: "web-0".into(),
                node: node.into(),
                slot: "0".into(),
                role: Role::Serving,
                version: None,
            }],
            journal: None,
        }
    }

    #[test]
    fn newer_assignments_replace_older_ones_and_lower_epochs_are_fenced_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ActStore::open(dir.path()).expect("store");
        let held = Assignments::open(store.clone());
        held.take(assignment(5, 1, "a")).expect("first");
        held.take(assignment(5, 1, "a")).expect("the same again");
        held.take(assignment(5, 2, "b")).expect("the next change");
        assert!(
            held.take(assignment(5, 1, "c")).is_err(),
            "older within the epoch"
        );
        let e = held.take(assignment(4, 9, "c")).expect_err("a lower epoch");
        assert!(e.contains("not newer"), "{e}");
        // A fence raised by a step under a newer lease refuses an older epoch outright.
        store.fence("api", 9).expect("fence").expect("raised");
        let mut api = assignment(8, 1, "c");
        api.service = "api".into();
        let e = held.take(api).expect_err("fenced");
        assert!(e.contains("stale"), "{e}");
        assert_eq!(held.refused.load(Ordering::Relaxed), 3);
        held.take(assignment(6, 1, "c")).expect("a newer lease");
        let mut bad = assignment(7, 1, "d");
        bad.entries.push(bad.entries[0].clone());
        assert!(held.take(bad).is_err(), "an instance twice");
        // Kept across a restart, with the fence.
        drop((held, store));
        let store = ActStore::open(dir.path()).expect("store");
        assert_eq!(store.fence_of("web").expect("fence"), 6);
        let again = Assignments::open(store);
        assert_eq!(again.get("web").map(|a| (a.epoch, a.seq)), Some((6, 1)));
        assert!(again.take(assignment(5, 3, "z")).is_err());
    }
}

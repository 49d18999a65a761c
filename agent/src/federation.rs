//! The fleet side of federated models (DESIGN decision 7; the merging and adoption are the
//! trainer's, `crate::models::consider`). This node's updates are signed and published after each
//! local training and at start for the models it loaded, and handed to any peer that asks. A node
//! with history of a type but no model of it (new to the fleet, or to the type) asks its peers for
//! theirs (`ActRequest::Models`): its cold start. Peers' updates, opened by the mesh (signed by an
//! admitted author), are decoded here and handed to the trainer, which checks and merges them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::Mesh;
use augur_mesh::leases::{Leases, ModelSource};
use augur_mesh::membership::MemberStatus;
use augur_models::federated::ModelUpdate;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::history::History;
use crate::models::{ModelStore, Trainer};
use crate::stats::Stats;

/// How often updates that found no peer to take them are sent again, and types without a model
/// are looked for.
pub const TICK: Duration = Duration::from_secs(5);
/// How long a cold start waits before asking the peers again for a type they had no model of.
pub const ASK_AGAIN: Duration = Duration::from_secs(60);
/// How long a peer has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

fn encode(u: &ModelUpdate) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(u, &mut out);
    out
}

/// This node's latest signed update per type: what a peer that asks is handed.
#[derive(Clone, Default)]
struct Latest(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl ModelSource for Latest {
    fn model(&self, resource_type: &str) -> Option<Vec<u8>> {
        self.0.lock().get(resource_type).cloned()
    }
}

/// What the federation task works with.
#[derive(Debug)]
pub struct Federation {
    pub mesh: Mesh,
    pub leases: Option<Leases>,
    pub trainer: Trainer,
    pub history: History,
    pub models: ModelStore,
    pub stats: Arc<Stats>,
    /// Reports each merge decision as a `model.decision` fleet event.
    pub emitter: crate::fleet::events::Emitter,
}

impl Federation {
    /// Decodes opened updates and hands them to the trainer together (merged at once).
    fn offer(&self, opened: Vec<(String, Vec<u8>)>) {
        let mut decoded = Vec::with_capacity(opened.len());
        for (author, body) in opened {
            match ciborium::from_reader::<ModelUpdate, _>(body.as_slice()) {
                Ok(u) => decoded.push((author, u)),
                Err(e) => {
                    self.stats.model_update_refused("undecodable");
                    tracing::info!(%author, error = %e, "undecodable model update");
                }
            }
        }
        if !decoded.is_empty() && !self.trainer.offer(decoded) {
            self.stats.model_update_refused("queue_full");
        }
    }

    /// Types this node has history of and no model for.
    fn missing(&self) -> BTreeSet<String> {
        self.history
            .resources()
            .into_iter()
            .map(|r| r.meta.resource_type.to_string())
            .filter(|t| self.models.get(t).is_none())
            .collect()
    }

    /// Asks every live peer for its model of `resource_type`; false if there was no live peer to
    /// ask.
    async fn ask(&self, leases: &Leases, resource_type: &str) -> bool {
        let peers: Vec<augur_mesh::PeerId> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| !m.is_self && m.status == MemberStatus::Alive)
            .filter_map(|m| m.peer_id.parse().ok())
            .collect();
        if peers.is_empty() {
            return false;
        }
        let asks = peers.into_iter().map(|p| async move {
            tokio::time::timeout(ASK_TIMEOUT, leases.model(p, resource_type)).await
        });
        let mut opened = Vec::new();
        for answer in futures::future::join_all(asks).await {
            if let Ok(Ok(Some(wire))) = answer
                && let Ok((author, body)) = self.mesh.open_model_update(&wire)
            {
                opened.push((author.to_string(), body));
            }
        }
        self.offer(opened);
        true
    }
}

/// Runs until `stop`.
pub async fn run(f: Federation, mut own: mpsc::Receiver<ModelUpdate>, stop: CancellationToken) {
    let me = f.mesh.peer_id();
    let mut updates = f.mesh.subscribe_model_updates();
    let latest = Latest::default();
    if let Some(l) = &f.leases {
        l.set_models(Arc::new(latest.clone()));
    }
    let mut unsent: BTreeSet<String> = BTreeSet::new();
    let mut asked: HashMap<String, Instant> = HashMap::new();
    let mut decisions_seen = 0usize;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            u = own.recv() => {
                let Some(u) = u else { return };
                let t = u.resource_type.clone();
                let wire = f.mesh.seal_model_update(encode(&u));
                latest.0.lock().insert(t.clone(), wire.clone());
                match f.mesh.forward_model_update(wire).await {
                    Ok(()) => {
                        unsent.remove(&t);
                        tracing::info!(resource_type = %t, round = u.round, "model update shared with the fleet");
                    }
                    Err(e) => {
                        unsent.insert(t);
                        tracing::debug!(error = %e, "model update not shared yet (no peer); retried");
                    }
                }
            }
            r = updates.recv() => match r {
                Ok((author, body)) if author != me => f.offer(vec![(author.to_string(), body)]),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    for _ in 0..n {
                        f.stats.model_update_refused("queue_full");
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                // The trainer's merge decisions, as fleet events.
                let (new, seen) = f.models.decisions_since(decisions_seen);
                decisions_seen = seen;
                for d in new {
                    let change = augur_mesh::ModelChange {
                        resource_type: d.resource_type.clone(),
                        outcome: d.outcome.clone(),
                        version: d.version,
                        contributors: d.lineage.contributors.len(),
                        mse_local: d.lineage.mse_local,
                        mse_candidate: d.lineage.mse_candidate,
                    };
                    f.emitter.emit(augur_mesh::EventKind::Model(change), None).await;
                }
                for t in std::mem::take(&mut unsent) {
                    let wire = latest.0.lock().get(&t).cloned();
                    if let Some(wire) = wire
                        && f.mesh.forward_model_update(wire).await.is_err()
                    {
                        unsent.insert(t);
                    }
                }
                // A cold start: types with history here and no model yet, asked of the peers.
                if let Some(leases) = &f.leases {
                    let now = Instant::now();
                    for t in f.missing() {
                        if asked.get(&t).is_some_and(|at| now < *at + ASK_AGAIN) {
                            continue;
                        }
                        // With no live peer yet (a node just started), the next tick asks again.
                        if f.ask(leases, &t).await {
                            asked.insert(t.clone(), now);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

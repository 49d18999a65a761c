//! Keeps this node's catalog and its peers' in step over libp2p (gossipsub, `augur/catalog/1`):
//! every accepted change is sent to the peers at once, each peer admitted gets the whole catalog
//! shortly after (catch-up on join), and the whole catalog is sent again now and then (so a
//! message lost while the mesh was forming is made up for). What arrives is checked like a local
//! change: an operator's signature under a trusted fleet key, a valid spec, a newer version.

use std::time::Duration;

use augur_mesh::Mesh;
use augur_mesh::swarm::SwarmEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::catalog::CatalogStore;
use crate::sample::UnixMicros;

/// How often the whole catalog is sent again.
pub const RESEND_EVERY: Duration = Duration::from_secs(30);
/// How long after a peer's admission the catalog is sent (gossipsub learns its subscriptions).
pub const AFTER_ADMISSION: Duration = Duration::from_secs(2);

async fn send(mesh: &Mesh, catalog: &CatalogStore) {
    let documents = catalog.documents();
    if documents.is_empty() {
        return;
    }
    if let Err(e) = mesh.publish_catalog(documents).await {
        // Alone in the fleet, or the mesh still forming: the next sending makes up for it.
        tracing::debug!(error = %e, "catalog not sent");
    }
}

/// Runs until `stop`.
pub async fn run(mesh: Mesh, catalog: CatalogStore, stop: CancellationToken) {
    let mut from_peers = mesh.subscribe_catalog();
    let mut swarm = mesh.swarm.subscribe();
    let mut changes = catalog.subscribe_changes();
    let mut resend = tokio::time::interval(RESEND_EVERY);
    let mut after_admission: Option<tokio::time::Instant> = None;
    loop {
        let due = after_admission;
        tokio::select! {
            () = stop.cancelled() => return,
            docs = from_peers.recv() => match docs {
                Ok(docs) => {
                    let c = catalog.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for text in docs {
                            let _ = c.offer_text(&text, UnixMicros::now().as_unix_s(), augur_mesh::operator::Freshness::Held);
                        }
                    })
                    .await;
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            ev = swarm.recv() => match ev {
                Ok(SwarmEvent::Admitted(_)) => {
                    after_admission.get_or_insert(tokio::time::Instant::now() + AFTER_ADMISSION);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                send(&mesh, &catalog).await;
            }
            _ = resend.tick() => send(&mesh, &catalog).await,
            () = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                after_admission = None;
                send(&mesh, &catalog).await;
            }
        }
    }
}

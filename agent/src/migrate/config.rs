//! The lease settings of the signed fleet document, as a `watch` the leases follow: set from the
//! catalog at start and after every accepted change (only a change of the fleet document itself
//! is sent on).

use augur_mesh::leases::LeaseConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::services::catalog::CatalogStore;

fn current(catalog: &CatalogStore) -> LeaseConfig {
    catalog.fleet().map(|(v, doc)| (v, doc.leases))
}

/// The watch, set to what the catalog holds now.
pub fn channel(
    catalog: &CatalogStore,
) -> (watch::Sender<LeaseConfig>, watch::Receiver<LeaseConfig>) {
    watch::channel(current(catalog))
}

/// Follows the catalog until `stop`.
pub async fn follow(
    catalog: CatalogStore,
    tx: watch::Sender<LeaseConfig>,
    stop: CancellationToken,
) {
    let mut changes = catalog.subscribe_changes();
    // A change between `channel` and the subscription above is taken here.
    let update = |tx: &watch::Sender<LeaseConfig>| {
        let next = current(&catalog);
        tx.send_if_modified(|held| {
            if *held == next {
                false
            } else {
                *held = next;
                true
            }
        });
    };
    update(&tx);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                update(&tx);
            }
        }
    }
}

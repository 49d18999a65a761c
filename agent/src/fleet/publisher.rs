//! Every few seconds: this node's signed values (health, capacity, placement, services, model
//! versions) to the mesh, and predictions crossing their threshold as fleet events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::values::{Capacity, Health, NodeValue, Placement};
use augur_mesh::{FleetEvent, Mesh};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::EventLog;
use crate::collect::host::{CPU_UTIL, DISK_FREE_BYTES_MIN, MEM_AVAILABLE_BYTES};
use crate::config::Config;
use crate::history::History;
use crate::models::ModelStore;
use crate::predict::Predictions;

/// Every few seconds: publishes this node's health, capacity, placement and model versions, and
/// turns predictions crossing their threshold (either way) into fleet events. Without a mesh the
/// events still reach the local log.
#[allow(clippy::too_many_arguments)]
pub fn spawn_publisher(
    mesh: Option<Mesh>,
    log: EventLog,
    predictions: Predictions,
    history: History,
    models: ModelStore,
    config: watch::Receiver<Arc<Config>>,
    node_name: String,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut above: HashMap<String, bool> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let self_id = mesh
            .as_ref()
            .map(|m| m.peer_id().to_string())
            .unwrap_or_default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let all = predictions.all();
            for p in &all {
                let id = p.resource_id.to_string();
                let was = above.insert(id.clone(), p.above_threshold).unwrap_or(false);
                if was != p.above_threshold {
                    let event = FleetEvent {
                        topic: if p.above_threshold {
                            "prediction.above_threshold".to_owned()
                        } else {
                            "prediction.below_threshold".to_owned()
                        },
                        ts_ms: (p.ts.0 / 1000).max(0) as u64,
                        peer_id: self_id.clone(),
                        node_name: Some(node_name.clone()),
                        resource_id: Some(id),
                        origin: self_id.clone(),
                        detail: serde_json::json!({
                            "failure_probability": p.prediction.failure_probability,
                            "threshold": p.threshold,
                            "eta_s": p.prediction.eta_s,
                            "drivers": p.prediction.drivers,
                            "model_version": p.prediction.model_version,
                        }),
                    };
                    tracing::info!(topic = %event.topic, resource_id = ?event.resource_id, "fleet event");
                    match &mesh {
                        Some(m) => m.publish_event(event).await,
                        None => {
                            log.push(event);
                        }
                    }
                }
            }
            let Some(mesh) = &mesh else { continue };
            let riskiest = all.first();
            mesh.publish_value(NodeValue::Health(Health {
                max_failure_probability: riskiest.map_or(0.0, |p| p.prediction.failure_probability),
                resource_id: riskiest.map(|p| p.resource_id.to_string()),
                anomaly_score: all
                    .iter()
                    .map(|p| p.prediction.anomaly_score)
                    .fold(0.0, f64::max),
                above_threshold: all.iter().any(|p| p.above_threshold),
            }));
            if let Some(host) = history
                .resources()
                .into_iter()
                .find(|r| r.resource_id.as_str() == node_name)
                .and_then(|r| r.latest)
            {
                let m = &host.metrics;
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                mesh.publish_value(NodeValue::Capacity(Capacity {
                    cpu_free: (1.0 - get(CPU_UTIL)).clamp(0.0, 1.0),
                    mem_free_bytes: get(MEM_AVAILABLE_BYTES).max(0.0) as u64,
                    disk_free_bytes: get(DISK_FREE_BYTES_MIN).max(0.0) as u64,
                }));
            }
            // The workloads this node hosts: every resource it tracks that is not the host itself.
            let mut services: Vec<String> = history
                .resources()
                .into_iter()
                .filter(|r| r.meta.resource_type.as_str() != augur_proto::HOST_RESOURCE_TYPE)
                .map(|r| r.resource_id.to_string())
                .collect();
            services.sort();
            services.truncate(256);
            mesh.publish_value(NodeValue::Services(services));
            let cfg = config.borrow().clone();
            mesh.publish_value(NodeValue::Placement(Placement {
                node_name: node_name.clone(),
                zone: cfg.mesh.zone.clone(),
                labels: cfg.mesh.labels.clone(),
            }));
            let versions: BTreeMap<String, String> = models
                .all()
                .into_iter()
                .map(|m| (m.resource_type.clone(), format!("v{}", m.version)))
                .collect();
            mesh.publish_value(NodeValue::Models(versions));
        }
    });
}

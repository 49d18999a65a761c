//! Every few seconds: this node's signed values (health, capacity, placement, services, model
//! versions) to the mesh, and predictions crossing their threshold as fleet events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::values::{Capacity, Health, MAX_ALARMS, NodeValue, Placement};
use augur_mesh::{Crossing, EventKind, FleetEvent, Mesh};
use augur_orchestrate::autonomy::Alarm;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::events::EventLog;
use crate::collect::host::{CPU_UTIL, DISK_FREE_BYTES_MIN, MEM_AVAILABLE_BYTES};
use crate::config::Config;
use crate::history::History;
use crate::models::ModelStore;
use crate::predict::{PredictionView, Predictions};

/// What the publisher reads and where it publishes.
#[derive(Debug)]
pub struct Publisher {
    /// The mesh, when this node is in a fleet; without one, events reach the local log only.
    pub mesh: Option<Mesh>,
    pub log: EventLog,
    /// The latest prediction of each resource (for the health value).
    pub predictions: Predictions,
    pub history: History,
    pub models: ModelStore,
    pub config: watch::Receiver<Arc<Config>>,
    pub node_name: String,
}

/// How often this node's values are signed and published again (when they changed).
const VALUES_EVERY: Duration = Duration::from_secs(2);

/// Turns each threshold crossing the prediction stage sends (`rx_crossings`) into a fleet event at
/// once, and every few seconds publishes this node's health, capacity, placement, services and
/// model versions, until `stop`.
pub async fn run(
    p: Publisher,
    mut rx_crossings: mpsc::Receiver<PredictionView>,
    stop: CancellationToken,
) {
    let Publisher {
        mesh,
        log,
        predictions,
        history,
        models,
        config,
        node_name,
    } = p;
    let mut tick = tokio::time::interval(VALUES_EVERY);
    let self_id = mesh
        .as_ref()
        .map(|m| m.peer_id().to_string())
        .unwrap_or_default();
    let mut crossings_open = true;
    loop {
        // How late this tick ran (a starved node's loops run late).
        let late = tokio::select! {
            () = stop.cancelled() => return,
            c = rx_crossings.recv(), if crossings_open => {
                let Some(p) = c else {
                    crossings_open = false;
                    continue;
                };
                let event = crossing_event(&p, &self_id, &node_name);
                tracing::info!(topic = event.topic(), resource_id = ?event.resource_id, "fleet event");
                match &mesh {
                    Some(m) => m.publish_event(event).await,
                    None => {
                        log.push(event);
                    }
                }
                // The alarms in the health value change now, not at the next tick.
                Duration::ZERO
            }
            at = tick.tick() => tokio::time::Instant::now().saturating_duration_since(at),
        };
        {
            let all = predictions.all();
            let Some(mesh) = &mesh else { continue };
            let riskiest = all.first();
            let host = history
                .resources()
                .into_iter()
                .find(|r| r.resource_id.as_str() == node_name)
                .and_then(|r| r.latest);
            let alarms: Vec<Alarm> = all
                .iter()
                .filter(|p| p.above_threshold)
                .take(MAX_ALARMS)
                .map(|p| Alarm {
                    resource_id: p.resource_id.to_string(),
                    probability: p.prediction.failure_probability,
                    threshold: p.threshold,
                    eta_s: p.prediction.eta_s,
                })
                .collect();
            mesh.publish_value(NodeValue::Health(Health {
                max_failure_probability: riskiest.map_or(0.0, |p| p.prediction.failure_probability),
                resource_id: riskiest.map(|p| p.resource_id.to_string()),
                anomaly_score: all
                    .iter()
                    .map(|p| p.prediction.anomaly_score)
                    .fold(0.0, f64::max),
                above_threshold: all.iter().any(|p| p.above_threshold),
                alarms,
                starved: starved(host.as_ref().map(|h| &h.metrics), late),
            }));
            if let Some(host) = host {
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
    }
}

/// A starved node: its CPU or memory nearly all used, or its own loop running more than
/// [`STARVED_LATE`] late. Its predictions then need a peer's independent evidence (the same lesson
/// as the membership's self-doubt: a starved node is the one most likely to misjudge).
fn starved(host: Option<&BTreeMap<String, f64>>, late: Duration) -> bool {
    let high = |k: &str| {
        host.and_then(|m| m.get(k))
            .is_some_and(|v| v.is_finite() && *v >= STARVED_USE)
    };
    late > STARVED_LATE || high(CPU_UTIL) || high("mem_used_ratio")
}

/// CPU or memory use (a share) at which a node counts as starved.
const STARVED_USE: f64 = 0.95;
/// How late its loop may run before a node counts as starved.
const STARVED_LATE: Duration = Duration::from_secs(1);

/// The fleet event of a crossing.
fn crossing_event(p: &PredictionView, self_id: &str, node_name: &str) -> FleetEvent {
    let crossing = Crossing {
        failure_probability: p.prediction.failure_probability,
        threshold: p.threshold,
        eta_s: p.prediction.eta_s,
        drivers: p.prediction.drivers.clone(),
        model_version: p.prediction.model_version.clone(),
    };
    FleetEvent {
        ts_ms: p.ts.as_unix_ms(),
        peer_id: self_id.to_owned(),
        node_name: Some(node_name.to_owned()),
        resource_id: Some(p.resource_id.to_string()),
        origin: self_id.to_owned(),
        kind: if p.above_threshold {
            EventKind::PredictionAbove(crossing)
        } else {
            EventKind::PredictionBelow(crossing)
        },
    }
}

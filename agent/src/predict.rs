//! The live prediction stage: every committed sample goes through its resource's engine (the same
//! `ResourceEngine` that `augur replay` runs), and the latest prediction per resource is kept for the
//! API. Engines run on one blocking thread; on start they are warmed up from the history's windows.

use std::collections::HashMap;
use std::sync::Arc;

use augur_models::engine::{EngineConfig, Prediction, ResourceEngine};
use augur_proto::{ResourceId, ResourceType};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::history::History;
use crate::sample::{Sample, UnixMicros};

/// The latest prediction of one resource, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PredictionView {
    #[serde(serialize_with = "rfc3339")]
    pub ts: UnixMicros,
    pub resource_id: ResourceId,
    pub resource_type: ResourceType,
    #[serde(flatten)]
    pub prediction: Prediction,
    pub threshold: f64,
    pub above_threshold: bool,
}

fn rfc3339<S: serde::Serializer>(ts: &UnixMicros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339())
}

impl PredictionView {
    pub fn to_proto(&self) -> augur_proto::v1::Prediction {
        augur_proto::v1::Prediction {
            ts: Some(self.ts.to_timestamp()),
            resource_id: self.resource_id.to_string(),
            resource_type: self.resource_type.to_string(),
            failure_probability: self.prediction.failure_probability,
            anomaly_score: self.prediction.anomaly_score,
            horizon_s: self.prediction.horizon_s,
            eta_s: self.prediction.eta_s,
            drivers: self.prediction.drivers.clone(),
            model_version: self.prediction.model_version.clone(),
            threshold: self.threshold,
            above_threshold: self.above_threshold,
        }
    }
}

/// Read handle on the latest predictions; only the prediction stage writes.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    latest: Arc<RwLock<HashMap<ResourceId, PredictionView>>>,
}

impl Predictions {
    pub fn get(&self, id: &ResourceId) -> Option<PredictionView> {
        self.latest.read().get(id).cloned()
    }

    /// Every resource's latest prediction, riskiest first.
    pub fn all(&self) -> Vec<PredictionView> {
        let mut v: Vec<PredictionView> = self.latest.read().values().cloned().collect();
        v.sort_by(|a, b| {
            b.prediction
                .failure_probability
                .total_cmp(&a.prediction.failure_probability)
                .then_with(|| a.resource_id.cmp(&b.resource_id))
        });
        v
    }
}

fn engine_config(cfg: &Config, resource_type: &str) -> (EngineConfig, f64) {
    let rt = cfg.type_config(resource_type);
    (
        EngineConfig {
            horizon_s: rt.horizon.as_secs_f64(),
            limits: rt.limits,
            ..EngineConfig::default()
        },
        rt.threshold,
    )
}

struct Stage {
    engines: HashMap<ResourceId, ResourceEngine>,
    config: watch::Receiver<Arc<Config>>,
    predictions: Predictions,
}

impl Stage {
    fn observe(&mut self, samples: &[Arc<Sample>]) {
        if self.config.has_changed().unwrap_or(false) {
            let cfg = self.config.borrow_and_update().clone();
            let latest = self.predictions.latest.read();
            for (id, engine) in &mut self.engines {
                if let Some(view) = latest.get(id) {
                    engine.reconfigure(engine_config(&cfg, view.resource_type.as_str()).0);
                }
            }
        }
        let cfg = self.config.borrow().clone();
        let mut updates = Vec::with_capacity(samples.len());
        for s in samples {
            if s.metrics.is_empty() {
                continue;
            }
            let (engine_cfg, threshold) = engine_config(&cfg, s.resource_type.as_str());
            let engine = self
                .engines
                .entry(s.resource_id.clone())
                .or_insert_with(|| ResourceEngine::new(engine_cfg));
            let prediction = engine.observe(s.ts.0 as f64 / 1e6, &s.metrics);
            updates.push(PredictionView {
                ts: s.ts,
                resource_id: s.resource_id.clone(),
                resource_type: s.resource_type.clone(),
                above_threshold: prediction.failure_probability >= threshold,
                prediction,
                threshold,
            });
        }
        let mut latest = self.predictions.latest.write();
        for u in updates {
            latest.insert(u.resource_id.clone(), u);
        }
    }
}

/// Runs the stage on a blocking thread until the writer drops its sender. Warms every engine from
/// the history's in-memory windows first, so a restart does not start cold.
pub fn spawn(
    history: History,
    rx_committed: mpsc::Receiver<Vec<Arc<Sample>>>,
    config: watch::Receiver<Arc<Config>>,
    predictions: Predictions,
) -> tokio::task::JoinHandle<()> {
    let mut rx = rx_committed;
    tokio::task::spawn_blocking(move || {
        let mut stage = Stage {
            engines: HashMap::new(),
            config,
            predictions,
        };
        for r in history.resources() {
            let window = history.window(&r.resource_id);
            stage.observe(&window);
        }
        while let Some(batch) = rx.blocking_recv() {
            stage.observe(&batch);
        }
        tracing::debug!("prediction stage stopped");
    })
}

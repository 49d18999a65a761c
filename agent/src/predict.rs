//! The live prediction stage: every committed sample goes through its resource's engine (the same
//! `ResourceEngine` that `augur replay` runs), and the latest prediction per resource is kept for the
//! API. Engines run on one blocking thread; on start they are warmed up from the history's windows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_models::engine::{Prediction, ResourceEngine};
use augur_proto::{ResourceId, ResourceType};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::history::History;
use crate::models::{ModelStore, engine_config, uses_trained};
use crate::sample::{Sample, UnixMicros};

/// The latest prediction of one resource, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionView {
    #[serde(with = "crate::sample::rfc3339")]
    pub ts: UnixMicros,
    pub resource_id: ResourceId,
    pub resource_type: ResourceType,
    #[serde(flatten)]
    pub prediction: Prediction,
    pub threshold: f64,
    pub above_threshold: bool,
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

/// Read handle on the latest predictions, each resource's recent scores, and its engine's
/// forecasts on request; only the prediction stage writes.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    latest: Arc<RwLock<HashMap<ResourceId, PredictionView>>>,
    scores: Arc<RwLock<HashMap<ResourceId, crate::scores::ScoreRing>>>,
    /// Where forecast requests go (the running stage answers them between batches).
    asks: Arc<parking_lot::Mutex<Option<mpsc::Sender<ForecastAsk>>>>,
}

/// A request for one resource's forecasts, answered by the stage.
type ForecastAsk = (
    ResourceId,
    tokio::sync::oneshot::Sender<Option<Vec<augur_models::engine::MetricForecast>>>,
);

/// How many forecast requests may wait for the stage; more are refused (busy).
const FORECAST_ASKS: usize = 32;

/// Why a forecast could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum ForecastError {
    /// No engine for this resource (unknown, or refused by the memory budget).
    NoEngine,
    /// The prediction stage is not running or has too many requests waiting.
    Busy,
}

/// A resource's forecasts with its latest prediction (`GET /v1/resources/{id}/forecast`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastView {
    pub prediction: PredictionView,
    /// Each metric's forecast over the horizon, metrics with a limit first.
    pub metrics: Vec<augur_models::engine::MetricForecast>,
}

/// A resource's recent scores (`GET /v1/resources/{id}/scores`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoresView {
    pub resource_id: ResourceId,
    /// The coarsest resolution among the points, seconds (1, or 60 for older ones).
    pub resolution_s: u32,
    /// The anomaly score at and above which the engine reports an anomaly.
    pub report_score: f64,
    /// The failure probability at and above which the resource is predicted to fail.
    pub threshold: Option<f64>,
    pub points: Vec<crate::scores::ScorePoint>,
}

impl Predictions {
    pub fn get(&self, id: &ResourceId) -> Option<PredictionView> {
        self.latest.read().get(id).cloned()
    }

    /// The resource's scores at or after `since`; None for a resource without predictions.
    pub fn scores(&self, id: &ResourceId, since: UnixMicros) -> Option<ScoresView> {
        let threshold = self.latest.read().get(id).map(|p| p.threshold);
        let (points, resolution_s) = self.scores.read().get(id)?.since(since.0 / 1000);
        Some(ScoresView {
            resource_id: id.clone(),
            resolution_s,
            report_score: augur_models::anomaly::novelty::ALARM_SCORE,
            threshold,
            points,
        })
    }

    /// The resource's forecasts, from its engine as it is now.
    pub async fn forecast(&self, id: &ResourceId) -> Result<ForecastView, ForecastError> {
        let prediction = self.get(id).ok_or(ForecastError::NoEngine)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = self.asks.lock().clone().ok_or(ForecastError::Busy)?;
        sender
            .try_send((id.clone(), tx))
            .map_err(|_| ForecastError::Busy)?;
        let metrics = rx
            .await
            .map_err(|_| ForecastError::Busy)?
            .ok_or(ForecastError::NoEngine)?;
        Ok(ForecastView {
            prediction,
            metrics,
        })
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

/// An engine's memory is estimated again after this many of its samples (and when created).
const ESTIMATE_EVERY: u64 = 64;
/// How often engines of resources the history no longer holds are dropped.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// The engines' memory, estimated per engine and in total, against `models.max_engine_memory`.
#[derive(Debug, Default)]
struct Budget {
    /// Per engine: its last estimate, samples since, and how many metrics it tracked then.
    per_engine: HashMap<ResourceId, (usize, u64, usize)>,
    total: usize,
    warned: Option<Instant>,
}

impl Budget {
    /// Estimates the engine again when it tracks a different number of metrics (so the budget
    /// overshoots by at most one sample's new metrics), and every `ESTIMATE_EVERY` samples.
    fn update(&mut self, id: &ResourceId, engine: &ResourceEngine) {
        let e = self
            .per_engine
            .entry(id.clone())
            .or_insert((0, ESTIMATE_EVERY, usize::MAX));
        e.1 += 1;
        if e.1 >= ESTIMATE_EVERY || e.2 != engine.metric_count() {
            // The engine, and the resource's recent scores kept beside it.
            let bytes = engine.approx_bytes() + crate::scores::ScoreRing::MAX_BYTES;
            self.total = self.total.saturating_sub(e.0) + bytes;
            *e = (bytes, 0, engine.metric_count());
        }
    }

    /// Estimates every engine afresh (after a restore).
    fn recount(&mut self, engines: &HashMap<ResourceId, ResourceEngine>) {
        self.per_engine = engines
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    (
                        e.approx_bytes() + crate::scores::ScoreRing::MAX_BYTES,
                        0,
                        e.metric_count(),
                    ),
                )
            })
            .collect();
        self.total = self.per_engine.values().map(|e| e.0).sum();
    }

    fn remove(&mut self, id: &ResourceId) {
        if let Some((bytes, _, _)) = self.per_engine.remove(id) {
            self.total -= bytes.min(self.total);
        }
    }
}

/// Where the prediction stage saves its engines, what it counts, and whose engine it never refuses.
#[derive(Debug, Default)]
pub struct StageSetup {
    /// The engines' saved state (inside the data directory), if any.
    pub snapshot: Option<PathBuf>,
    pub stats: PredictStats,
    /// This node's own host resource.
    pub own: Option<ResourceId>,
    /// Where predictions crossing their threshold (either way) go: the fleet publisher.
    pub tx_crossings: Option<mpsc::Sender<PredictionView>>,
}

/// Crossings waiting for the publisher (a burst beyond this is dropped and counted).
pub const CROSSINGS_QUEUE: usize = 256;

/// Counters of the prediction stage the API reports.
#[derive(Clone, Debug, Default)]
pub struct PredictStats {
    /// Samples stored but not predicted: their resource was refused an engine because the
    /// engines' memory budget was spent.
    pub refused_samples: Arc<std::sync::atomic::AtomicU64>,
    /// The engines' estimated memory, bytes.
    pub engine_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Engines dropped because their resource left the history (retention).
    pub evicted: Arc<std::sync::atomic::AtomicU64>,
    /// Threshold crossings not delivered to the publisher (its queue was full).
    pub crossings_dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// The horizon of `resource_type`'s engines under `cfg` (seconds).
fn engine_cfg_horizon(cfg: &Config, resource_type: &str) -> f64 {
    crate::models::engine_config(cfg, resource_type).0.horizon_s
}

/// The trained models an engine of `resource_type` uses under `cfg`.
fn trained(
    models: &ModelStore,
    cfg: &Config,
    resource_type: &ResourceType,
) -> Option<Arc<augur_models::trained::TrainedModels>> {
    uses_trained(cfg, resource_type)
        .then(|| models.get(resource_type.as_str()))
        .flatten()
}

struct Stage {
    engines: HashMap<ResourceId, ResourceEngine>,
    /// Each resource's alarm: raised at its threshold, kept raised for `keep_firing` below it.
    alarms: HashMap<ResourceId, augur_models::alarm::AlarmLatch>,
    config: watch::Receiver<Arc<Config>>,
    predictions: Predictions,
    models: ModelStore,
    /// The store generation the engines' models were last set from.
    models_seen: u64,
    budget: Budget,
    stats: PredictStats,
    /// This node's own host resource: always given an engine, so pushed resources that spend
    /// the budget cannot take the host's predictions away.
    own: Option<ResourceId>,
    tx_crossings: Option<mpsc::Sender<PredictionView>>,
    /// How each model version does in production (its false alarms), and the versions each type
    /// was served by, in order: a version worse than its predecessor is rolled back.
    live: augur_models::live::LiveAlarms,
    served: HashMap<String, Vec<u64>>,
}

/// File of the saved engine state, inside the data directory.
pub const SNAPSHOT_FILE: &str = "models/engines.cbor";
/// How often the engines' state is saved while running (and always on shutdown).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(300);

/// The engines' learned state and the latest predictions, as saved.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    model_version: String,
    saved_at_us: i64,
    resources: Vec<SavedResource>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedResource {
    resource_id: ResourceId,
    resource_type: ResourceType,
    engine: ResourceEngine,
    latest_ts_us: i64,
    latest: Prediction,
    threshold: f64,
}

impl Stage {
    fn snapshot(&self) -> Snapshot {
        let latest = self.predictions.latest.read();
        let resources = self
            .engines
            .iter()
            .filter_map(|(id, engine)| {
                let view = latest.get(id)?;
                Some(SavedResource {
                    resource_id: id.clone(),
                    resource_type: view.resource_type.clone(),
                    engine: engine.clone(),
                    latest_ts_us: view.ts.0,
                    latest: view.prediction.clone(),
                    threshold: view.threshold,
                })
            })
            .collect();
        Snapshot {
            model_version: augur_models::engine::MODEL_VERSION.to_owned(),
            saved_at_us: UnixMicros::now().0,
            resources,
        }
    }

    /// Writes the snapshot atomically (temporary file, fsync, rename, fsync of the folder).
    fn save(&self, path: &Path) -> std::io::Result<usize> {
        let snap = self.snapshot();
        crate::files::write_atomic(path, |w| {
            ciborium::into_writer(&snap, w).map_err(std::io::Error::other)
        })?;
        Ok(snap.resources.len())
    }

    /// Restores engines and latest predictions saved by the same model version. A missing file is
    /// a fresh start; an unreadable one, or one from another version, is set aside and logged.
    fn restore(&mut self, path: &Path) -> usize {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read saved models; starting from history");
                return 0;
            }
        };
        let snap: Snapshot = match ciborium::from_reader(std::io::BufReader::new(file)) {
            Ok(s) => s,
            Err(e) => {
                let aside = path.with_extension("cbor.unreadable");
                let _ = std::fs::rename(path, &aside);
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "saved models unreadable; starting from history");
                return 0;
            }
        };
        if snap.model_version != augur_models::engine::MODEL_VERSION {
            tracing::info!(saved = %snap.model_version, running = augur_models::engine::MODEL_VERSION, "saved models are from another model version; starting from history");
            return 0;
        }
        let n = snap.resources.len();
        let mut latest = self.predictions.latest.write();
        for r in snap.resources {
            if r.latest.failure_probability >= r.threshold {
                self.alarms.insert(
                    r.resource_id.clone(),
                    augur_models::alarm::AlarmLatch::raised(),
                );
            }
            latest.insert(
                r.resource_id.clone(),
                PredictionView {
                    ts: UnixMicros(r.latest_ts_us),
                    resource_id: r.resource_id.clone(),
                    resource_type: r.resource_type,
                    above_threshold: r.latest.failure_probability >= r.threshold,
                    prediction: r.latest,
                    threshold: r.threshold,
                },
            );
            self.engines.insert(r.resource_id, r.engine);
        }
        n
    }
}

impl Stage {
    fn observe(&mut self, samples: &[Arc<Sample>]) {
        let config_changed = self.config.has_changed().unwrap_or(false);
        let generation = self.models.generation();
        if config_changed || generation != self.models_seen {
            let cfg = self.config.borrow_and_update().clone();
            let latest = self.predictions.latest.read();
            for (id, engine) in &mut self.engines {
                if let Some(view) = latest.get(id) {
                    engine.reconfigure(engine_config(&cfg, view.resource_type.as_str()).0);
                    engine.set_models(trained(&self.models, &cfg, &view.resource_type));
                }
            }
            self.models_seen = generation;
        }
        let cfg = self.config.borrow().clone();
        let budget_bytes =
            usize::try_from(cfg.models.max_engine_memory.as_u64()).unwrap_or(usize::MAX);
        let mut updates = Vec::with_capacity(samples.len());
        for s in samples {
            if s.metrics.is_empty() {
                continue;
            }
            let (engine_cfg, threshold) = engine_config(&cfg, s.resource_type.as_str());
            let over = self.budget.total >= budget_bytes;
            if over
                && !self.engines.contains_key(&s.resource_id)
                && self.own.as_ref() != Some(&s.resource_id)
            {
                // The engines' memory budget is spent: this resource is stored, not predicted.
                self.stats
                    .refused_samples
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self
                    .budget
                    .warned
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    self.budget.warned = Some(Instant::now());
                    tracing::warn!(resource_id = %s.resource_id, budget = budget_bytes, "prediction engines' memory budget (models.max_engine_memory) spent; new resources are not predicted");
                }
                continue;
            }
            let trained = trained(&self.models, &cfg, &s.resource_type);
            let version = trained.as_ref().map_or(0, |m| m.meta.version);
            let engine = self
                .engines
                .entry(s.resource_id.clone())
                .or_insert_with(|| {
                    let mut e = ResourceEngine::new(engine_cfg);
                    e.set_models(trained);
                    e
                });
            // Over budget, engines keep the metrics they have and learn no new ones.
            engine.set_frozen(over);
            let ts_s = s.ts.0 as f64 / 1e6;
            let prediction = engine.observe(ts_s, &s.metrics);
            self.budget.update(&s.resource_id, engine);
            let above_threshold = self
                .alarms
                .entry(s.resource_id.clone())
                .or_default()
                .update(
                    ts_s,
                    prediction.failure_probability,
                    threshold,
                    cfg.keep_firing_s(s.resource_type.as_str()),
                );
            self.judge_live(
                s,
                version,
                ts_s,
                above_threshold,
                engine_cfg_horizon(&cfg, s.resource_type.as_str()),
            );
            updates.push(PredictionView {
                ts: s.ts,
                resource_id: s.resource_id.clone(),
                resource_type: s.resource_type.clone(),
                above_threshold,
                prediction,
                threshold,
            });
        }
        let mut crossings = Vec::new();
        {
            let mut latest = self.predictions.latest.write();
            let mut scores = self.predictions.scores.write();
            for u in updates {
                scores.entry(u.resource_id.clone()).or_default().record(
                    u.ts.0 / 1000,
                    u.prediction.failure_probability,
                    u.prediction.anomaly_score,
                );
                // A first prediction counts as coming from below.
                let was = latest
                    .get(&u.resource_id)
                    .is_some_and(|p| p.above_threshold);
                if was != u.above_threshold {
                    crossings.push(u.clone());
                }
                latest.insert(u.resource_id.clone(), u);
            }
        }
        if let Some(tx) = &self.tx_crossings {
            for c in crossings {
                if tx.try_send(c).is_err() {
                    self.stats
                        .crossings_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        self.stats.engine_bytes.store(
            self.budget.total as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Counts the sample toward its model version's live record, and rolls back a version whose
    /// false-alarm rate rose above its predecessor's (`augur_models::live`).
    fn judge_live(
        &mut self,
        s: &crate::sample::Sample,
        version: u64,
        ts_s: f64,
        alarm_on: bool,
        horizon_s: f64,
    ) {
        let t = s.resource_type.as_str();
        let failure = s.event == Some(augur_proto::Event::Failure);
        self.live.observe(
            s.resource_id.as_str(),
            t,
            version,
            ts_s,
            alarm_on,
            failure,
            horizon_s,
        );
        let served = self.served.entry(t.to_owned()).or_default();
        if served.last() != Some(&version) {
            served.push(version);
            if served.len() > 8 {
                served.remove(0);
            }
        }
        let previous = served.len().checked_sub(2).map(|i| served[i]);
        let Some(previous) = previous.filter(|p| *p > 0 && version > *p) else {
            return;
        };
        if self.models.pinned(t).is_some() || !self.live.worse(t, version, previous) {
            return;
        }
        let (now, before) = (
            self.live.score(t, version).cloned().unwrap_or_default(),
            self.live.score(t, previous).cloned().unwrap_or_default(),
        );
        match self.models.pin(t, Some(previous)) {
            Ok(_) => {
                tracing::warn!(
                    resource_type = t,
                    from = version,
                    to = previous,
                    rate_now = now.rate(),
                    rate_before = before.rate(),
                    "model version reverted: more false alarms per resource-hour than the one before it (pinned; augur models unpin to resume)"
                );
                self.models.decide(crate::models::FederationDecision {
                    resource_type: t.to_owned(),
                    at_unix_ms: (crate::sample::UnixMicros::now().0 / 1000) as u64,
                    outcome: "reverted".to_owned(),
                    version: Some(previous),
                    lineage: augur_models::federated::Lineage {
                        rule: augur_models::federated::Rule::Mean,
                        contributors: Vec::new(),
                        mse_local: None,
                        mse_candidate: None,
                        cold_start: false,
                        forest: None,
                        calibration: None,
                        patterns: None,
                        digest: None,
                    },
                });
            }
            Err(e) => {
                tracing::warn!(resource_type = t, error = %e, "model version worse than the one before it, but it cannot be reverted");
            }
        }
    }

    /// Drops the engines (and latest predictions) of resources the history no longer holds
    /// (retention deleted them); returns how many.
    fn evict_gone(&mut self, history: &History) -> usize {
        let gone: Vec<ResourceId> = self
            .engines
            .keys()
            .filter(|id| history.resource(id).is_none())
            .cloned()
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let mut latest = self.predictions.latest.write();
        let mut scores = self.predictions.scores.write();
        for id in &gone {
            self.engines.remove(id);
            self.alarms.remove(id);
            latest.remove(id);
            scores.remove(id);
            self.budget.remove(id);
        }
        self.stats
            .evicted
            .fetch_add(gone.len() as u64, std::sync::atomic::Ordering::Relaxed);
        gone.len()
    }
}

/// Runs the stage until `stop` (or until the writer's channel closes). On start it restores the
/// engines saved in `snapshot` (if any, and of this model version), then feeds each engine the
/// samples of the history's window it has not seen, so a restart resumes rather than starting cold.
/// The engines run on blocking threads, one batch at a time; they are saved every few minutes and
/// when the stage stops.
pub async fn run(
    history: History,
    mut rx_committed: mpsc::Receiver<Vec<Arc<Sample>>>,
    config: watch::Receiver<Arc<Config>>,
    predictions: Predictions,
    models: ModelStore,
    StageSetup {
        snapshot,
        stats,
        own,
        tx_crossings,
    }: StageSetup,
    stop: CancellationToken,
) {
    let (tx_asks, mut rx_asks) = mpsc::channel::<ForecastAsk>(FORECAST_ASKS);
    *predictions.asks.lock() = Some(tx_asks);
    let asks = predictions.asks.clone();
    let h = history.clone();
    let restore_from = snapshot.clone();
    let start = tokio::task::spawn_blocking(move || {
        let mut stage = Stage {
            engines: HashMap::new(),
            alarms: HashMap::new(),
            config,
            predictions,
            models,
            models_seen: u64::MAX,
            budget: Budget::default(),
            stats,
            own,
            tx_crossings,
            live: Default::default(),
            served: HashMap::new(),
        };
        if let Some(path) = &restore_from {
            let restored = stage.restore(path);
            if restored > 0 {
                tracing::info!(
                    resources = restored,
                    "prediction engines restored from saved models"
                );
            }
        }
        for r in h.resources() {
            let seen = stage
                .engines
                .get(&r.resource_id)
                .and_then(ResourceEngine::last_ts_s);
            let unseen: Vec<Arc<Sample>> = h
                .window(&r.resource_id)
                .into_iter()
                .filter(|s| seen.is_none_or(|t| s.ts.0 as f64 / 1e6 > t))
                .collect();
            stage.observe(&unseen);
        }
        stage.evict_gone(&h);
        stage.budget.recount(&stage.engines);
        stage
    });
    let Ok(mut stage) = start.await else {
        panic!("the prediction stage failed to start");
    };
    let save = move |stage: Stage| {
        let snapshot = snapshot.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                if let Some(path) = &snapshot {
                    match stage.save(path) {
                        Ok(n) => tracing::debug!(resources = n, "prediction engines saved"),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot save prediction engines")
                        }
                    }
                }
                stage
            })
            .await
        }
    };
    let mut last_save = Instant::now();
    let mut last_evict = Instant::now();
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            Some((id, answer)) = rx_asks.recv() => {
                // A few metrics times the horizon's points: microseconds, answered in place.
                let _ = answer.send(stage.engines.get(&id).map(ResourceEngine::forecasts));
                continue;
            }
            b = rx_committed.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        let evict = last_evict.elapsed() >= EVICT_EVERY;
        let h = history.clone();
        let observed = tokio::task::spawn_blocking(move || {
            stage.observe(&batch);
            if evict {
                let n = stage.evict_gone(&h);
                if n > 0 {
                    tracing::debug!(
                        engines = n,
                        "engines of resources no longer in the history dropped"
                    );
                }
            }
            stage
        })
        .await;
        stage = match observed {
            Ok(s) => s,
            Err(e) => panic!("the prediction engines failed: {e}"),
        };
        if evict {
            last_evict = Instant::now();
        }
        if last_save.elapsed() >= SNAPSHOT_EVERY {
            stage = match save(stage).await {
                Ok(s) => s,
                Err(e) => panic!("saving the prediction engines failed: {e}"),
            };
            last_save = Instant::now();
        }
    }
    *asks.lock() = None;
    let _ = save(stage).await;
    tracing::debug!("prediction stage stopped");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sample(t: i64, mem: f64) -> Arc<Sample> {
        Arc::new(Sample {
            ts: UnixMicros(1_700_000_000_000_000 + t * 1_000_000),
            resource_id: ResourceId::parse("db-1").expect("id"),
            resource_type: ResourceType::parse("service").expect("type"),
            metrics: BTreeMap::from([("mem_used_ratio".to_owned(), mem)]),
            event: None,
            labels: BTreeMap::new(),
        })
    }

    fn stage() -> Stage {
        let (_tx, rx) = watch::channel(Arc::new(Config::default()));
        Stage {
            engines: HashMap::new(),
            alarms: HashMap::new(),
            config: rx,
            predictions: Predictions::default(),
            models: ModelStore::in_memory(),
            models_seen: u64::MAX,
            budget: Budget::default(),
            stats: PredictStats::default(),
            own: Some(ResourceId::parse("this-host").expect("id")),
            tx_crossings: None,
            live: Default::default(),
            served: HashMap::new(),
        }
    }

    /// DESIGN.md decision 5: `augur replay` and the live prediction stage run the same engines with
    /// the same per-type configuration. The same samples of a `service` resource with its own
    /// horizon, threshold, anomaly learning and limits go through both; every prediction matches.
    #[test]
    fn replay_predicts_what_the_live_stage_predicts_under_a_type_configuration() {
        let cfg = Config::from_toml(
            r#"
            [resource_types.service]
            horizon = "2m"
            threshold = 0.6
            anomaly_learning = "3m"
            limits = [
                { prefix = "latency_ms", value = 500.0, direction = "above" },
                { prefix = "free_slots", value = 2.0, direction = "below" },
            ]
            "#,
        )
        .expect("config");
        let (default, _) = crate::models::engine_config(&Config::default(), "service");
        let (custom, threshold) = crate::models::engine_config(&cfg, "service");
        assert_ne!(
            custom, default,
            "the type's configuration differs from the defaults"
        );
        assert_eq!(threshold, 0.6);
        let samples: Vec<Arc<Sample>> = (0..900i64)
            .map(|t| {
                let x = t as f64;
                Arc::new(Sample {
                    ts: UnixMicros(1_700_000_000_000_000 + t * 1_000_000),
                    resource_id: ResourceId::parse("api-1").expect("id"),
                    resource_type: ResourceType::parse("service").expect("type"),
                    metrics: BTreeMap::from([
                        (
                            "latency_ms".to_owned(),
                            120.0 + 0.4 * x + 5.0 * (x * 0.3).sin(),
                        ),
                        ("free_slots".to_owned(), 40.0 - 0.04 * x),
                        ("cpu".to_owned(), 0.3 + 0.05 * (x * 0.1).cos()),
                    ]),
                    event: None,
                    labels: BTreeMap::new(),
                })
            })
            .collect();
        // Both read the samples as JSON lines (the live agent gets them so over HTTP), so both see
        // the same numbers.
        let lines: Vec<String> = samples
            .iter()
            .map(|s| serde_json::to_string(&s.to_record()).expect("json"))
            .collect();
        let limits = crate::ingest::Limits::from_config(&cfg);
        let samples: Vec<Arc<Sample>> = lines
            .iter()
            .map(|l| {
                let rec = serde_json::from_str(l).expect("record");
                let now = UnixMicros(1_700_000_000_000_000 + 1_000_000_000);
                Arc::new(crate::ingest::validate_record(rec, &limits, now).expect("valid"))
            })
            .collect();
        // Live: the stage with that configuration, one batch at a time.
        let (_tx, rx) = watch::channel(Arc::new(cfg.clone()));
        let mut live = stage();
        live.config = rx;
        let mut live_predictions = Vec::new();
        for s in &samples {
            live.observe(std::slice::from_ref(s));
            let view = live.predictions.get(&s.resource_id).expect("predicted");
            live_predictions.push(view.prediction);
        }
        // Replay: the same samples from a file, with the same configuration, no training.
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, lines.join("\n")).expect("write");
        let output = dir.path().join("out.jsonl");
        let mut options = crate::replay::ReplayOptions::for_config(cfg);
        options.schedule = None;
        crate::replay::replay_with(&input, &output, false, &options).expect("replays");
        // Compared as the replay's output text (bit-identical numbers print identically).
        let text = std::fs::read_to_string(&output).expect("read");
        let replayed_lines: Vec<&str> = text.lines().collect();
        assert_eq!(replayed_lines.len(), live_predictions.len());
        for (i, (p, s)) in live_predictions.iter().zip(&samples).enumerate() {
            let live_line = serde_json::to_string(&crate::replay::PredictionRecord {
                ts: s.ts.to_rfc3339(),
                resource_id: s.resource_id.as_str(),
                prediction: p,
            })
            .expect("json");
            assert_eq!(live_line, replayed_lines[i], "sample {i}");
        }
        let replayed = &live_predictions;
        // The type's settings took effect: its horizon, and an alarm on its own limit.
        assert_eq!(replayed[0].horizon_s, 120.0);
        assert!(
            replayed.iter().any(|p| p.failure_probability >= threshold),
            "latency climbing to its 500 ms limit is predicted"
        );
    }

    /// The stage reports a resource crossing its threshold, each way, once per crossing, on the
    /// crossings channel (the publisher turns them into fleet events).
    #[test]
    fn crossings_are_sent_once_each_way() {
        let (tx, mut rx) = mpsc::channel(CROSSINGS_QUEUE);
        let mut s = stage();
        s.tx_crossings = Some(tx);
        // Steady, then memory climbing to its limit (0.95), then back down for a long while.
        let steady: Vec<_> = (0..600)
            .map(|t| sample(t, 0.5 + 0.001 * (t % 7) as f64))
            .collect();
        let climb: Vec<_> = (600..900)
            .map(|t| sample(t, 0.5 + 0.0016 * (t - 600) as f64))
            .collect();
        let back: Vec<_> = (900..2400)
            .map(|t| sample(t, 0.5 + 0.001 * (t % 7) as f64))
            .collect();
        s.observe(&steady);
        assert!(rx.try_recv().is_err(), "no crossing while steady");
        s.observe(&climb);
        let up = rx.try_recv().expect("crossed upwards");
        assert!(up.above_threshold && up.prediction.failure_probability >= up.threshold);
        s.observe(&back);
        let down = rx.try_recv().expect("crossed back down");
        assert!(!down.above_threshold && down.ts > up.ts);
        // Every further crossing would alternate: none repeats the previous direction.
        let mut last = false;
        while let Ok(c) = rx.try_recv() {
            assert_ne!(c.above_threshold, last);
            last = c.above_threshold;
        }
    }

    /// A raised alarm is kept for the type's `keep_firing` after the probability falls below the
    /// threshold: the crossing back down comes that long after the last sample above it, and a
    /// probability dipping under the threshold for less than that raises no second alarm.
    /// A model version that raises more false alarms per resource-hour than the one before it is
    /// rolled back (pinned) by itself, and the decision recorded.
    #[test]
    fn a_version_with_more_false_alarms_than_its_predecessor_is_reverted() {
        use augur_models::limits::Direction;
        use augur_models::trained::{FailurePatterns, LearnedLimit, TrainedModels};
        let dir = tempfile::tempdir().expect("temp");
        let mut st = stage();
        st.models = ModelStore::open(dir.path());
        let version = |v: u64, limit: Option<f64>| {
            let mut m = TrainedModels::empty("service");
            m.meta.version = v;
            m.meta.patterns = limit.map(|value| FailurePatterns {
                limits: vec![LearnedLimit {
                    metric: "queue_len".into(),
                    value,
                    direction: Direction::Above,
                    failures: 1,
                    usual_median: 0.0,
                    usual_spread: 1.0,
                    caught_with: 1,
                    caught_without: 0,
                    false_alarms_with: 0,
                    false_alarms_without: 0,
                    held_out: None,
                    used: true,
                }],
            });
            m
        };
        // The queue swings between 10 and 90 every 10 minutes, and nothing ever fails.
        let queue = |t: i64| if (t / 300) % 2 == 0 { 10.0 } else { 90.0 };
        let feed = |st: &mut Stage, from: i64, to: i64| {
            let batch: Vec<Arc<Sample>> = (from..to)
                .map(|t| {
                    Arc::new(Sample {
                        ts: UnixMicros(1_700_000_000_000_000 + t * 1_000_000),
                        resource_id: ResourceId::parse("q-1").expect("id"),
                        resource_type: ResourceType::parse("service").expect("type"),
                        metrics: BTreeMap::from([("queue_len".to_owned(), queue(t))]),
                        event: None,
                        labels: BTreeMap::new(),
                    })
                })
                .collect();
            for chunk in batch.chunks(500) {
                st.observe(chunk);
            }
        };
        // v1 learned a limit at 1,000 (never reached); 75 minutes of it.
        st.models.install(version(1, Some(1000.0)), 3).expect("v1");
        feed(&mut st, 0, 4500);
        assert_eq!(st.models.pinned("service"), None);
        // v2 learned one at 50: every swing up is an alarm, and nothing fails.
        st.models.install(version(2, Some(50.0)), 3).expect("v2");
        feed(&mut st, 4500, 9000);
        assert_eq!(
            st.models.pinned("service"),
            Some(1),
            "v2 is reverted to v1: {:?} vs {:?}",
            st.live.score("service", 2),
            st.live.score("service", 1)
        );
        assert_eq!(st.models.get("service").expect("models").meta.version, 1);
        let d = st.models.decisions();
        assert_eq!(
            d.last().map(|d| (d.outcome.as_str(), d.version)),
            Some(("reverted", Some(1)))
        );
    }

    #[test]
    fn a_raised_alarm_clears_only_after_keep_firing_below_the_threshold() {
        let cfg =
            Config::from_toml("[resource_types.service]\nkeep_firing = \"45s\"\n").expect("config");
        let (_cfg_tx, rx) = watch::channel(Arc::new(cfg));
        let (tx, mut rx_crossings) = mpsc::channel(CROSSINGS_QUEUE);
        let mut s = stage();
        s.config = rx;
        s.tx_crossings = Some(tx);
        let id = ResourceId::parse("db-1").expect("id");
        // Steady, climbing to the limit, then back down for good.
        let mem = |t: i64| match t {
            ..600 => 0.5 + 0.001 * (t % 7) as f64,
            600..900 => 0.5 + 0.0016 * (t - 600) as f64,
            _ => 0.5 + 0.001 * (t % 7) as f64,
        };
        let (mut last_over, mut crossings) = (None, Vec::new());
        for t in 0..2400 {
            s.observe(&[sample(t, mem(t))]);
            let view = s.predictions.get(&id).expect("a prediction");
            if view.prediction.failure_probability >= view.threshold {
                last_over = Some(t);
            }
            while let Ok(c) = rx_crossings.try_recv() {
                crossings.push((
                    c.above_threshold,
                    (c.ts.0 - 1_700_000_000_000_000) / 1_000_000,
                ));
            }
        }
        let last_over = last_over.expect("the climb is predicted");
        assert_eq!(
            crossings.len(),
            2,
            "one alarm, raised and cleared: {crossings:?}"
        );
        assert!(crossings[0].0 && !crossings[1].0);
        // Below from the sample after the last one over; cleared 45 s after that.
        assert_eq!(crossings[1].1, last_over + 1 + 45, "{crossings:?}");
    }

    /// Finding 7: the engines' memory stays within `models.max_engine_memory` (a new resource is
    /// refused an engine, counted, once it is spent; engines learn no new metric), and an engine
    /// leaves with its resource.
    #[test]
    fn engines_stay_within_their_budget_and_leave_with_their_resource() {
        let mut cfg = Config::default();
        cfg.models.max_engine_memory = bytesize::ByteSize::kib(256);
        let (_tx, rx) = watch::channel(Arc::new(cfg));
        let mut st = stage();
        st.config = rx;
        let wide = |id: &str, t: i64, names: std::ops::Range<usize>| {
            Arc::new(Sample {
                resource_id: ResourceId::parse(id).expect("id"),
                metrics: names.map(|k| (format!("m{k}"), t as f64)).collect(),
                ..(*sample(t, 0.5)).clone()
            })
        };
        for t in 0..200 {
            st.observe(&[wide("db-1", t, 0..200)]);
        }
        let spent = st.budget.total;
        assert!(spent >= 256 * 1024, "db-1 alone spends the budget: {spent}");
        st.observe(&[wide("db-2", 200, 0..5)]);
        assert!(
            !st.engines
                .contains_key(&ResourceId::parse("db-2").expect("id"))
        );
        assert!(
            st.predictions
                .get(&ResourceId::parse("db-2").expect("id"))
                .is_none()
        );
        assert_eq!(
            st.stats
                .refused_samples
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let db1 = ResourceId::parse("db-1").expect("id");
        st.observe(&[wide("db-1", 201, 1000..1010)]);
        assert_eq!(
            st.engines[&db1].metric_count(),
            200,
            "no new metric over budget"
        );
        // Retention removed db-1 from the history: its engine and prediction go.
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(dir.path(), 1 << 20, 10).expect("history");
        assert_eq!(st.evict_gone(&history), 1);
        assert!(st.engines.is_empty() && st.predictions.get(&db1).is_none());
        assert_eq!(st.budget.total, 0);
        // The node's own host resource is never refused.
        st.budget.total = usize::MAX / 2;
        st.observe(&[wide("this-host", 250, 0..5)]);
        assert!(
            st.engines
                .contains_key(&ResourceId::parse("this-host").expect("id"))
        );
        st.engines.clear();
        st.budget = Budget::default();
        // With room again, a new resource gets its engine.
        st.observe(&[wide("db-2", 300, 0..5)]);
        assert!(
            st.engines
                .contains_key(&ResourceId::parse("db-2").expect("id"))
        );
    }

    #[test]
    fn a_saved_stage_resumes_exactly_where_it_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SNAPSHOT_FILE);
        let first: Vec<Arc<Sample>> = (0..2_000)
            .map(|t| sample(t, 0.5 + 0.0001 * t as f64))
            .collect();
        let rest: Vec<Arc<Sample>> = (2_000..2_100)
            .map(|t| sample(t, 0.5 + 0.0001 * t as f64))
            .collect();
        let mut continuous = stage();
        continuous.observe(&first);
        continuous.save(&path).expect("saves");
        continuous.observe(&rest);
        let mut resumed = stage();
        assert_eq!(resumed.restore(&path), 1);
        let id = ResourceId::parse("db-1").expect("id");
        assert!(
            resumed.predictions.get(&id).is_some(),
            "latest prediction restored"
        );
        resumed.observe(&rest);
        let (a, b) = (
            continuous.predictions.get(&id).expect("a"),
            resumed.predictions.get(&id).expect("b"),
        );
        assert_eq!(a.prediction, b.prediction);
        let state = |s: &Stage| serde_json::to_string(&s.engines[&id]).expect("serialises");
        assert_eq!(state(&continuous), state(&resumed));
        // A stage warmed from the last 600 samples only does not get the same state.
        let mut cold = stage();
        cold.observe(&first[first.len() - 600..]);
        cold.observe(&rest);
        assert_ne!(state(&cold), state(&continuous));
    }

    #[test]
    fn unreadable_or_foreign_snapshots_are_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engines.cbor");
        std::fs::write(&path, b"not cbor").expect("write");
        assert_eq!(stage().restore(&path), 0);
        assert!(!path.exists() && path.with_extension("cbor.unreadable").exists());
        let foreign = Snapshot {
            model_version: "some-other-version".into(),
            saved_at_us: 0,
            resources: Vec::new(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&foreign, &mut bytes).expect("encodes");
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(stage().restore(&path), 0);
        assert_eq!(stage().restore(&dir.path().join("missing.cbor")), 0);
    }
}

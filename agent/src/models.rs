//! Trained models on disk and their background training.
//!
//! Layout: `<data_dir>/models/<resource_type>/v000042.cbor`, one file per version holding the
//! models and their metadata (written atomically: temporary file, fsync, rename), and beside it
//! `v000042.json` with the metadata alone, for people. On start the newest readable version made
//! for this engine is loaded per type; unreadable files are set aside, never deleted.
//!
//! The trainer runs on its own thread, off the async runtime: every `models.retrain_interval` it
//! reads each type's durable history (at most `models.training_window` back, at most
//! `models.max_training_samples` samples), trains, saves a new version and installs it; the
//! prediction stage picks it up at its next batch. `POST /v1/models/train` asks for a training now.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use augur_models::engine::{EngineConfig, MODEL_VERSION};
use augur_models::trained::{ModelMeta, TrainedModels};
use augur_models::training::{ResourceHistory, TrainConfig, TrainError};
use augur_proto::{Event, ResourceType};
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ModelChoice};
use crate::history::History;
use crate::sample::UnixMicros;
use crate::stats::Stats;

/// Folder of the model files, inside the data directory.
pub const MODELS_DIR: &str = "models";

/// The installed models of every resource type.
#[derive(Clone, Debug, Default)]
pub struct ModelStore {
    dir: Option<PathBuf>,
    current: Arc<RwLock<HashMap<String, Arc<TrainedModels>>>>,
    /// Bumped on every install, so readers notice a change cheaply.
    generation: Arc<AtomicU64>,
    /// The latest decisions on models merged from the fleet, newest last, and how many were made
    /// since start.
    decisions: Arc<parking_lot::Mutex<(std::collections::VecDeque<FederationDecision>, usize)>>,
    /// Types an operator pinned to a version: nothing replaces it until unpinned.
    pinned: Arc<RwLock<HashMap<String, u64>>>,
    /// Each type's newest model this node trained itself (not merged from the fleet): its own
    /// contribution to every merge, whether the model in use is it or a merge.
    own: Arc<RwLock<HashMap<String, Arc<TrainedModels>>>>,
}

/// The file in a type's folder that pins it (its content: the version).
pub const PIN_FILE: &str = "PINNED";

/// Why a pin, unpin or rollback could not be done.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("no models of type {0:?} on this node")]
    UnknownType(String),
    #[error("no version {version} of {resource_type} on disk (kept: {kept:?})")]
    NoSuchVersion {
        resource_type: String,
        version: u64,
        kept: Vec<u64>,
    },
    #[error("no version of {0} older than the one in use is kept on disk")]
    NothingToRollBackTo(String),
    #[error("version {version} of {resource_type} cannot be used: {reason}")]
    Unusable {
        resource_type: String,
        version: u64,
        reason: String,
    },
    #[error("this store keeps no files")]
    NoFiles,
    #[error("cannot write the pin: {0}")]
    Io(#[from] std::io::Error),
}

/// How many federation decisions the store remembers.
const KEEP_DECISIONS: usize = 64;

/// A decision on a model merged from the fleet's updates (`GET /v1/models`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FederationDecision {
    pub resource_type: String,
    pub at_unix_ms: u64,
    /// `adopted`, `rejected`, `cold_start`, `adopted_parts` (the merged network was worse here
    /// and not used, but the forest, the calibration or peers' learned limits were), or
    /// `reverted`.
    pub outcome: String,
    /// The version installed, when adopted.
    pub version: Option<u64>,
    pub lineage: augur_models::federated::Lineage,
}

fn version_of(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    if path.extension()? != "cbor" {
        return None;
    }
    stem.strip_prefix('v')?.parse().ok()
}

/// Model files of one type folder, newest first.
fn versions(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((version_of(&p)?, p)))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v
}

impl ModelStore {
    /// A store without files (tests, replay).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens `<data_dir>/models` and loads the newest usable version of each type.
    pub fn open(data_dir: &Path) -> Self {
        let dir = data_dir.join(MODELS_DIR);
        let store = Self {
            dir: Some(dir.clone()),
            ..Self::default()
        };
        let types = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir());
        for t in types {
            let type_dir = t.path();
            // A pinned version is loaded whatever is newer.
            let pin: Option<u64> = std::fs::read_to_string(type_dir.join(PIN_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(v) = pin {
                let path = type_dir.join(format!("v{v:06}.cbor"));
                match load(&path) {
                    Ok(m) if m.meta.engine == MODEL_VERSION => {
                        tracing::info!(resource_type = %m.meta.resource_type, version = v, "pinned models loaded");
                        store.pinned.write().insert(m.meta.resource_type.clone(), v);
                        store.put(m);
                        continue;
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "the pinned version cannot be loaded; the newest usable one is used, unpinned")
                    }
                }
            }
            let mut in_use = false;
            for (_, path) in versions(&type_dir) {
                match load(&path) {
                    Ok(m) if m.meta.engine == MODEL_VERSION => {
                        let own = m.meta.federation.is_none();
                        if !in_use {
                            tracing::info!(resource_type = %m.meta.resource_type, version = m.meta.version, "trained models loaded");
                            in_use = true;
                            store.put(m.clone());
                        }
                        // Older versions are read only as far as this node's own newest.
                        if own {
                            store
                                .own
                                .write()
                                .insert(m.meta.resource_type.clone(), Arc::new(m));
                            break;
                        }
                    }
                    Ok(m) => {
                        tracing::info!(path = %path.display(), engine = %m.meta.engine, "models of another engine version; not used");
                    }
                    Err(e) => {
                        let aside = path.with_extension("cbor.unreadable");
                        let _ = std::fs::rename(&path, &aside);
                        tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "model file unreadable; set aside");
                    }
                }
            }
        }
        store
    }

    fn put(&self, m: TrainedModels) {
        self.current
            .write()
            .insert(m.meta.resource_type.clone(), Arc::new(m));
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn get(&self, resource_type: &str) -> Option<Arc<TrainedModels>> {
        self.current.read().get(resource_type).cloned()
    }

    /// The newest model of `resource_type` this node trained itself (kept on disk or installed
    /// since start), whether or not a merge replaced it in use.
    pub fn own(&self, resource_type: &str) -> Option<Arc<TrainedModels>> {
        self.own.read().get(resource_type).cloned()
    }

    /// Every type's newest own model.
    pub fn own_all(&self) -> Vec<Arc<TrainedModels>> {
        self.own.read().values().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The version a type is pinned to, if an operator pinned it.
    pub fn pinned(&self, resource_type: &str) -> Option<u64> {
        self.pinned.read().get(resource_type).copied()
    }

    /// Every pin.
    pub fn pins(&self) -> std::collections::BTreeMap<String, u64> {
        self.pinned
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn type_dir(&self, resource_type: &str) -> Result<PathBuf, PinError> {
        let dir = self.dir.as_ref().ok_or(PinError::NoFiles)?;
        Ok(dir.join(crate::files::component(resource_type)))
    }

    /// Installs `version` of `resource_type` (the one in use when None) and pins it: no training
    /// or merge replaces it until [`unpin`](Self::unpin). Survives restarts.
    pub fn pin(&self, resource_type: &str, version: Option<u64>) -> Result<ModelMeta, PinError> {
        let current = self.get(resource_type);
        let version = match (version, &current) {
            (Some(v), _) => v,
            (None, Some(m)) => m.meta.version,
            (None, None) => return Err(PinError::UnknownType(resource_type.to_owned())),
        };
        let type_dir = self.type_dir(resource_type)?;
        let kept: Vec<u64> = versions(&type_dir).into_iter().map(|v| v.0).collect();
        if !kept.contains(&version) {
            if kept.is_empty() && current.is_none() {
                return Err(PinError::UnknownType(resource_type.to_owned()));
            }
            return Err(PinError::NoSuchVersion {
                resource_type: resource_type.to_owned(),
                version,
                kept,
            });
        }
        let m = load(&type_dir.join(format!("v{version:06}.cbor"))).map_err(|reason| {
            PinError::Unusable {
                resource_type: resource_type.to_owned(),
                version,
                reason,
            }
        })?;
        if m.meta.engine != MODEL_VERSION {
            return Err(PinError::Unusable {
                resource_type: resource_type.to_owned(),
                version,
                reason: format!(
                    "trained for engine {}, this agent runs {MODEL_VERSION}",
                    m.meta.engine
                ),
            });
        }
        crate::files::write_atomic(&type_dir.join(PIN_FILE), |w| {
            std::io::Write::write_all(w, version.to_string().as_bytes())
        })?;
        let meta = m.meta.clone();
        self.pinned
            .write()
            .insert(resource_type.to_owned(), version);
        self.put(m);
        Ok(meta)
    }

    /// Pins the newest kept version older than the one in use.
    pub fn rollback(&self, resource_type: &str) -> Result<ModelMeta, PinError> {
        let current = self
            .get(resource_type)
            .ok_or_else(|| PinError::UnknownType(resource_type.to_owned()))?;
        let type_dir = self.type_dir(resource_type)?;
        let previous = versions(&type_dir)
            .into_iter()
            .map(|v| v.0)
            .find(|v| *v < current.meta.version)
            .ok_or_else(|| PinError::NothingToRollBackTo(resource_type.to_owned()))?;
        self.pin(resource_type, Some(previous))
    }

    /// Lets trainings and merges replace the type's models again.
    pub fn unpin(&self, resource_type: &str) -> Result<(), PinError> {
        let type_dir = self.type_dir(resource_type)?;
        match std::fs::remove_file(type_dir.join(PIN_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.pinned.write().remove(resource_type);
        Ok(())
    }

    /// Records a federation decision.
    pub fn decide(&self, d: FederationDecision) {
        let mut g = self.decisions.lock();
        g.0.push_back(d);
        g.1 += 1;
        while g.0.len() > KEEP_DECISIONS {
            g.0.pop_front();
        }
    }

    /// The latest federation decisions, newest last.
    pub fn decisions(&self) -> Vec<FederationDecision> {
        self.decisions.lock().0.iter().cloned().collect()
    }

    /// The decisions made after the first `seen` since start (those still kept), and the count
    /// to pass next time.
    pub fn decisions_since(&self, seen: usize) -> (Vec<FederationDecision>, usize) {
        let g = self.decisions.lock();
        let new = g.1.saturating_sub(seen).min(g.0.len());
        (g.0.iter().skip(g.0.len() - new).cloned().collect(), g.1)
    }

    /// Metadata of every installed type's models, by type.
    pub fn all(&self) -> Vec<ModelMeta> {
        let mut v: Vec<ModelMeta> = self
            .current
            .read()
            .values()
            .map(|m| m.meta.clone())
            .collect();
        v.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
        v
    }

    /// The next version number of a type (one past the newest on disk or installed).
    pub fn next_version(&self, resource_type: &str) -> u64 {
        let installed = self.get(resource_type).map_or(0, |m| m.meta.version);
        let on_disk = self
            .dir
            .as_ref()
            .and_then(|d| {
                versions(&d.join(crate::files::component(resource_type)))
                    .first()
                    .map(|v| v.0)
            })
            .unwrap_or(0);
        installed.max(on_disk) + 1
    }

    /// Saves the models as a new version (keeping the newest `keep`) and installs them; refused
    /// while the type is pinned.
    pub fn install(&self, models: TrainedModels, keep: usize) -> std::io::Result<()> {
        if let Some(v) = self.pinned(&models.meta.resource_type) {
            return Err(std::io::Error::other(format!(
                "{} is pinned at v{v} (augur models unpin {})",
                models.meta.resource_type, models.meta.resource_type
            )));
        }
        if models.meta.federation.is_none() {
            self.own
                .write()
                .insert(models.meta.resource_type.clone(), Arc::new(models.clone()));
        }
        if let Some(dir) = &self.dir {
            // The type is input (any pushed record names one): encoded, it is one folder inside
            // `models/`, whatever it contains.
            let type_dir = dir.join(crate::files::component(&models.meta.resource_type));
            let name = format!("v{:06}", models.meta.version);
            crate::files::write_atomic(&type_dir.join(format!("{name}.cbor")), |w| {
                ciborium::into_writer(&models, w).map_err(std::io::Error::other)
            })?;
            let meta = serde_json::to_vec_pretty(&models.meta).map_err(std::io::Error::other)?;
            crate::files::write_atomic(&type_dir.join(format!("{name}.json")), |w| {
                std::io::Write::write_all(w, &meta)
            })?;
            let mut removed = false;
            for (_, old) in versions(&type_dir).into_iter().skip(keep.max(1)) {
                let _ = std::fs::remove_file(old.with_extension("json"));
                let _ = std::fs::remove_file(&old);
                removed = true;
            }
            if removed {
                crate::files::sync_dir(&type_dir)?;
            }
        }
        self.put(models);
        Ok(())
    }
}

fn load(path: &Path) -> Result<TrainedModels, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    ciborium::from_reader(std::io::BufReader::new(file)).map_err(|e| e.to_string())
}

/// The training settings the agent's configuration implies.
/// The engine settings and alarm threshold of `resource_type` under `cfg`: the one place the live
/// prediction stage, training and `augur replay` take them from (DESIGN.md decision 5).
pub fn engine_config(cfg: &Config, resource_type: &str) -> (EngineConfig, f64) {
    let rt = cfg.type_config(resource_type);
    (
        EngineConfig {
            horizon_s: rt.horizon.as_secs_f64(),
            limits: rt.limits,
            anomaly_learning: cfg.anomaly_learning_samples(resource_type),
            max_metrics: cfg.ingest.max_metric_names,
            ..EngineConfig::default()
        },
        rt.threshold,
    )
}

/// When a resource type's models are trained, in seconds of whatever clock the caller runs on
/// (the agent's, or the data's in `augur replay`): first `first_s` after the type is first seen,
/// then every `every_s` after a training, and `retry_s` after one that could not run (too little
/// history). The agent's trainer and the replay both follow it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub first_s: f64,
    pub every_s: f64,
    pub retry_s: f64,
}

/// The first training attempt after a type appears, and the longest wait to retry one that could
/// not run (the trainer checks at least this often).
pub const FIRST_ATTEMPT: Duration = Duration::from_secs(600);

impl Schedule {
    /// Training every `every`.
    pub fn every(every: Duration) -> Self {
        Self {
            first_s: FIRST_ATTEMPT.as_secs_f64(),
            every_s: every.as_secs_f64(),
            retry_s: every.min(FIRST_ATTEMPT).as_secs_f64(),
        }
    }

    pub fn from_config(cfg: &Config) -> Self {
        Self::every(cfg.models.retrain_interval)
    }

    /// Whether a type whose next training is `next` (None: first seen now) is due at `t`.
    pub fn due(&self, next: &mut Option<f64>, t: f64) -> bool {
        t >= *next.get_or_insert(t + self.first_s)
    }

    /// Records a training at `t` that ran (`trained`) or could not.
    pub fn done(&self, next: &mut Option<f64>, t: f64, trained: bool) {
        *next = Some(t + if trained { self.every_s } else { self.retry_s });
    }
}

pub fn train_config(cfg: &Config) -> TrainConfig {
    TrainConfig {
        max_rows: cfg.models.max_training_samples,
        ..TrainConfig::default()
    }
}

/// Reads the durable history of every resource of `resource_type` since `since`.
/// Reads at most the newest `max_per_resource` samples of each resource of `resource_type` since
/// `since`.
pub fn read_history(
    history: &History,
    resource_type: &str,
    since: UnixMicros,
    max_per_resource: usize,
) -> anyhow::Result<Vec<ResourceHistory>> {
    let mut out = Vec::new();
    for r in history.resources() {
        if r.meta.resource_type.as_str() != resource_type {
            continue;
        }
        let mut h = ResourceHistory::default();
        let known = history.for_each_newest(&r.resource_id, since, max_per_resource, |s| {
            let t = s.ts.0 as f64 / 1e6;
            match s.event {
                Some(Event::Failure) => h.failures.push(t),
                Some(Event::Migration) => h.migrations.push(t),
                None => {}
            }
            if !s.metrics.is_empty() {
                h.push(t, &s.metrics);
            }
        })?;
        h.reverse();
        h.failures.reverse();
        h.migrations.reverse();
        if known && !h.is_empty() {
            out.push(h);
        }
    }
    Ok(out)
}

/// Result of training one type.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainOutcome {
    pub resource_type: String,
    /// The new models' metadata, when a training succeeded.
    pub trained: Option<ModelMeta>,
    /// Why not, otherwise.
    pub skipped: Option<String>,
}

/// Trains and installs the models of one type now.
pub fn train_type(
    history: &History,
    store: &ModelStore,
    cfg: &Config,
    resource_type: &str,
) -> TrainOutcome {
    let outcome = |trained, skipped| TrainOutcome {
        resource_type: resource_type.to_owned(),
        trained,
        skipped,
    };
    let since = UnixMicros(
        UnixMicros::now().0 - cfg.models.training_window.as_micros().min(i64::MAX as u128) as i64,
    );
    // No resource can contribute more than the whole training set.
    let data = match read_history(
        history,
        resource_type,
        since,
        cfg.models.max_training_samples,
    ) {
        Ok(d) => d,
        Err(e) => return outcome(None, Some(format!("cannot read history: {e}"))),
    };
    let (engine, threshold) = engine_config(cfg, resource_type);
    let version = store.next_version(resource_type);
    // A model merged from the fleet is the start of this node's next local round (federated
    // averaging); otherwise the shared seeded start.
    let base = store.get(resource_type).filter(|m| {
        m.mlp.is_some()
            && m.meta
                .federation
                .as_ref()
                .is_some_and(augur_models::lineage::Lineage::network_merged)
    });
    let base_version = base.as_ref().map(|m| m.meta.version);
    let base_mlp = base
        .and_then(|m| m.mlp.clone())
        .map(augur_models::forecast::mlp::MlpWeights::from);
    let train = augur_models::training::TrainConfig {
        threshold,
        keep_firing_s: cfg.keep_firing_s(resource_type),
        base_mlp,
        ..train_config(cfg)
    };
    match augur_models::training::train(resource_type, &data, version, &engine, &train) {
        Ok(mut models) => {
            models.meta.base_version = base_version;
            let meta = models.meta.clone();
            match store.install(models, cfg.models.keep_versions) {
                Ok(()) => outcome(Some(meta), None),
                Err(e) => outcome(None, Some(format!("cannot save models: {e}"))),
            }
        }
        Err(e @ TrainError::TooLittleHistory { .. }) => outcome(None, Some(e.to_string())),
    }
}

/// A request to train every type now; the reply lists what happened.
pub type TrainRequest = oneshot::Sender<Vec<TrainOutcome>>;

/// Handle on the trainer thread.
#[derive(Clone, Debug)]
pub struct Trainer {
    tx: std::sync::mpsc::SyncSender<TrainerMsg>,
}

/// What the trainer thread is asked.
#[derive(Debug)]
enum TrainerMsg {
    /// Train every type now and answer.
    Train(TrainRequest),
    /// Peers' model updates (each signed by its admitted author; not yet checked), taken
    /// together before a merge.
    Peer(Vec<(String, augur_models::federated::ModelUpdate)>),
    /// End after the training under way (if any).
    Stop,
}

impl Trainer {
    /// Asks for a training of every type now and waits for its outcome.
    pub async fn train_now(&self) -> Option<Vec<TrainOutcome>> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(TrainerMsg::Train(tx)).ok()?;
        rx.await.ok()
    }

    /// Hands peers' model updates to the trainer (merged together); false when its queue is full.
    pub fn offer(&self, updates: Vec<(String, augur_models::federated::ModelUpdate)>) -> bool {
        self.tx.try_send(TrainerMsg::Peer(updates)).is_ok()
    }
}

/// The trainer thread, not started yet: [`TrainerTask::run`] runs it until asked to stop.
#[derive(Debug)]
pub struct TrainerTask {
    history: History,
    store: ModelStore,
    config: watch::Receiver<Arc<Config>>,
    stats: Arc<Stats>,
    tx: std::sync::mpsc::SyncSender<TrainerMsg>,
    rx: std::sync::mpsc::Receiver<TrainerMsg>,
    /// Where this node's own updates go after each local training (the federation task), in a
    /// fleet.
    own_updates: Option<tokio::sync::mpsc::Sender<augur_models::federated::ModelUpdate>>,
}

impl TrainerTask {
    /// Shares each local training's models on `tx` (the federation task publishes them).
    pub fn share_on(
        &mut self,
        tx: tokio::sync::mpsc::Sender<augur_models::federated::ModelUpdate>,
    ) {
        self.own_updates = Some(tx);
    }
}

/// Types with history that train under `cfg`.
fn trainable_types(history: &History, cfg: &Config) -> Vec<String> {
    let mut types: Vec<String> = history
        .resources()
        .into_iter()
        .map(|r| r.meta.resource_type.to_string())
        .filter(|t| cfg.type_config(t).model == ModelChoice::Auto)
        .collect();
    types.sort();
    types.dedup();
    types
}

/// The trainer: the API's handle, and the task that runs it.
pub fn trainer(
    history: History,
    store: ModelStore,
    config: watch::Receiver<Arc<Config>>,
    stats: Arc<Stats>,
) -> (Trainer, TrainerTask) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<TrainerMsg>(64);
    (
        Trainer { tx: tx.clone() },
        TrainerTask {
            history,
            store,
            config,
            stats,
            tx,
            rx,
            own_updates: None,
        },
    )
}

impl TrainerTask {
    /// Runs the trainer on its own thread (trainings take seconds of CPU) until `stop`; a training
    /// under way finishes first.
    pub async fn run(self, stop: CancellationToken) {
        let TrainerTask {
            history,
            store,
            config,
            stats,
            tx,
            rx,
            own_updates,
        } = self;
        let (done, finished) = oneshot::channel::<()>();
        let thread_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("augur-trainer".into())
            .spawn(move || {
                train_loop(
                    &history,
                    &store,
                    &config,
                    &stats,
                    &rx,
                    own_updates.as_ref(),
                    &thread_stop,
                );
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the model trainer thread; models are not trained");
            return;
        }
        let mut finished = std::pin::pin!(finished);
        tokio::select! {
            r = &mut finished => {
                if r.is_err() {
                    panic!("the trainer thread panicked");
                }
                return;
            }
            () = stop.cancelled() => {}
        }
        // Wakes the thread if it waits; if its queue is full it sees `stop` after those requests.
        let _ = tx.try_send(TrainerMsg::Stop);
        let _ = finished.await;
    }
}

fn train_loop(
    history: &History,
    store: &ModelStore,
    config: &watch::Receiver<Arc<Config>>,
    stats: &Stats,
    rx: &std::sync::mpsc::Receiver<TrainerMsg>,
    own_updates: Option<&tokio::sync::mpsc::Sender<augur_models::federated::ModelUpdate>>,
    stop: &CancellationToken,
) {
    // What the fleet sent, and the types a new update arrived for since they were last merged.
    let mut peers = augur_models::federated::Peers::default();
    let mut dirty: std::collections::BTreeSet<String> = Default::default();
    // A message read while draining peers' updates, handled next.
    let mut pending: Option<TrainerMsg> = None;
    let started = Instant::now();
    let now_s = || started.elapsed().as_secs_f64();
    // Each type's next training (seconds since the trainer started), on the shared schedule.
    let mut next: HashMap<String, Option<f64>> = HashMap::new();
    // Types whose installed models came from disk count as trained at start.
    let schedule = Schedule::from_config(&config.borrow());
    for m in store.all() {
        schedule.done(next.entry(m.resource_type).or_default(), 0.0, true);
    }
    let mut wait = Duration::ZERO;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let msg = match pending.take() {
            Some(m) => Ok(m),
            None => rx.recv_timeout(wait),
        };
        let request = match msg {
            Ok(TrainerMsg::Train(reply)) => Some(reply),
            Ok(TrainerMsg::Peer(updates)) => {
                for (author, update) in updates {
                    take_update(
                        &author, update, &mut peers, &mut dirty, history, store, stats,
                    );
                }
                // Several updates arrive together: take them all, then merge once.
                while let Ok(m) = rx.try_recv() {
                    match m {
                        TrainerMsg::Peer(updates) => {
                            for (author, update) in updates {
                                take_update(
                                    &author, update, &mut peers, &mut dirty, history, store, stats,
                                );
                            }
                        }
                        other => {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                None
            }
            Ok(TrainerMsg::Stop) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let cfg = config.borrow().clone();
        if cfg.models.federate {
            for t in std::mem::take(&mut dirty) {
                consider(history, store, &cfg, stats, &peers, &t);
            }
        }
        let schedule = Schedule::from_config(&cfg);
        let mut outcomes = Vec::new();
        for t in trainable_types(history, &cfg) {
            let state = next.entry(t.clone()).or_default();
            let due = schedule.due(state, now_s());
            if request.is_none() && (!cfg.models.train || !due) {
                continue;
            }
            if let Some(v) = store.pinned(&t) {
                outcomes.push(TrainOutcome {
                    resource_type: t.clone(),
                    trained: None,
                    skipped: Some(format!("pinned at v{v} (augur models unpin {t})")),
                });
                schedule.done(state, now_s(), false);
                continue;
            }
            let began = Instant::now();
            let o = train_type(history, store, &cfg, &t);
            stats.training(&t, o.trained.is_some(), began.elapsed());
            schedule.done(state, now_s(), o.trained.is_some());
            if o.trained.is_some() && cfg.models.federate {
                if let (Some(tx), Some(m)) = (own_updates, store.get(&t))
                    && let Some(u) = own_update(&m)
                {
                    // The federation task publishes it; if it is busy, the next training shares.
                    let _ = tx.try_send(u);
                }
                // This node's new local model meets the peers' latest (gossip learning's round).
                if !peers.of_type(&t).is_empty() {
                    dirty.insert(t.clone());
                }
            }
            match (&o.trained, &o.skipped) {
                (Some(m), _) => {
                    tracing::info!(resource_type = %t, version = m.version, rows = m.rows, train_ms = m.train_ms,
                        mlp_preferred = m.mlp.as_ref().is_some_and(|r| r.preferred),
                        calibrated = m.calibration.as_ref().is_some_and(|c| c.used), "models trained");
                }
                (None, Some(why)) => {
                    tracing::debug!(resource_type = %t, reason = %why, "models not trained")
                }
                (None, None) => {}
            }
            outcomes.push(o);
        }
        if let Some(reply) = request {
            let _ = reply.send(outcomes);
        }
        // Until the next type falls due; at least every minute, so a new type is seen soon.
        let soonest = next
            .values()
            .flatten()
            .fold(f64::INFINITY, |a, &b| a.min(b));
        wait = if dirty.is_empty() {
            Duration::from_secs_f64((soonest - now_s()).clamp(1.0, 60.0))
        } else {
            Duration::ZERO
        };
    }
}

/// Takes a peer's update into `peers` if it passes the checks (marking its type for a merge), or
/// counts why not.
fn take_update(
    author: &str,
    update: augur_models::federated::ModelUpdate,
    peers: &mut augur_models::federated::Peers,
    dirty: &mut std::collections::BTreeSet<String>,
    history: &History,
    store: &ModelStore,
    stats: &Stats,
) {
    let t = update.resource_type.clone();
    // Only the types this node has resources of: what a peer names is bounded by what this node
    // runs, not by what the peer sends.
    let known = store.get(&t).is_some()
        || history
            .resources()
            .iter()
            .any(|r| r.meta.resource_type.as_str() == t);
    if !known {
        stats.model_update_refused("unknown_type");
        return;
    }
    let shape = store
        .get(&t)
        .and_then(|m| m.mlp.clone())
        .map(augur_models::forecast::mlp::MlpWeights::from);
    match peers.offer(author, update, MODEL_VERSION, shape.as_ref()) {
        Ok(()) => {
            dirty.insert(t);
        }
        Err(why) => {
            stats.model_update_refused(why.reason());
            tracing::info!(%author, resource_type = %t, reason = %why, "model update refused");
        }
    }
}

/// This node's update for its own freshly trained models (its round is the model's version,
/// which only grows).
pub fn own_update(m: &TrainedModels) -> Option<augur_models::federated::ModelUpdate> {
    let mlp = m
        .mlp
        .clone()
        .map(augur_models::forecast::mlp::MlpWeights::from)?;
    Some(augur_models::federated::ModelUpdate {
        resource_type: m.meta.resource_type.clone(),
        engine: m.meta.engine.clone(),
        base_round: m.meta.base_version.unwrap_or(0),
        round: m.meta.version,
        samples: m.meta.rows as u64,
        validation: augur_models::federated::Validation {
            mse_mlp: m.meta.mlp.as_ref().map(|r| r.mse_mlp),
            mse_holt: m.meta.mlp.as_ref().map(|r| r.mse_holt),
            brier: m.meta.calibration.as_ref().map(|c| c.brier_calibrated),
        },
        mlp: Some(mlp),
        calibration: m.calibration_used().cloned(),
        forest: m.forest.as_ref().and_then(|f| {
            augur_models::federated::share_forest(f, augur_models::federated::SHARED_TREES)
        }),
        patterns: m
            .meta
            .patterns
            .as_ref()
            .map(|p| p.limits.iter().filter(|l| l.used).cloned().collect())
            .unwrap_or_default(),
    })
}

/// Merges `resource_type`'s local model with its peers' latest updates and adopts the candidate
/// if it does no worse on this node's own held-out history (or, with no local model, as a cold
/// start); records the decision either way.
pub fn consider(
    history: &History,
    store: &ModelStore,
    cfg: &Config,
    stats: &Stats,
    peers: &augur_models::federated::Peers,
    resource_type: &str,
) {
    use augur_models::federated::{Rule, adopt, candidate};
    let of = peers.of_type(resource_type);
    if of.is_empty() || store.pinned(resource_type).is_some() {
        return;
    }
    let current = store.get(resource_type);
    // This node's own contribution: the newest model it trained itself, whether the model in use
    // is it or an earlier merge (a merge's contributions are its contributors', counted through
    // their latest updates, not again through it).
    let own = store.own(resource_type);
    let own_w = own
        .as_ref()
        .and_then(|m| m.mlp.clone())
        .map(augur_models::forecast::mlp::MlpWeights::from);
    let f = cfg.models.federation_tolerate;
    let n = of.len() + usize::from(own_w.is_some());
    let rule = if n > 2 * f {
        Rule::TrimmedMean { f }
    } else {
        Rule::Median
    };
    let own_part = match (&own, &own_w) {
        (Some(m), Some(w)) => Some((w, m.meta.rows as u64, m.meta.version)),
        _ => None,
    };
    let Some((mlp, calibration, mut lineage)) = candidate(
        own_part,
        own.as_ref().and_then(|m| m.calibration_used()),
        &of,
        rule,
        cfg.models.federation_sample_cap,
    ) else {
        return;
    };
    let Ok(merged) = augur_models::forecast::mlp::MlpForecaster::try_from(mlp) else {
        stats.model_candidate(resource_type, "rejected");
        return;
    };
    let since = UnixMicros(
        UnixMicros::now().0 - cfg.models.training_window.as_micros().min(i64::MAX as u128) as i64,
    );
    let data = read_history(
        history,
        resource_type,
        since,
        cfg.models.max_training_samples,
    )
    .unwrap_or_default();
    let judged = augur_models::training::mlp_report(&merged, &data);
    let decision = |outcome: &str, version: Option<u64>, lineage| FederationDecision {
        resource_type: resource_type.to_owned(),
        at_unix_ms: (UnixMicros::now().0 / 1000) as u64,
        outcome: outcome.to_owned(),
        version,
        lineage,
    };
    // The adoption guard: the candidate against the model in use, on the same held-out windows
    // of this node's history. With no network in use, or too little history to judge either, it
    // is a cold start: the fleet's model until this node's own history is long enough.
    let local = current
        .as_ref()
        .and_then(|m| m.mlp.as_ref())
        .map(|m| augur_models::training::mlp_report(m, &data))
        .filter(|r| r.validation_windows > 0 && judged.validation_windows > 0);
    // The network decides the outcome; the forest, the calibration and the learned limits are
    // each judged on their own below, so a network worse here does not keep out a failure mode
    // a peer learned.
    let mut outcome = match &local {
        Some(local) => {
            lineage.cold_start = false;
            lineage.mse_local = Some(local.mse_mlp);
            lineage.mse_candidate = Some(judged.mse_mlp);
            if adopt(local.mse_mlp, judged.mse_mlp) {
                "adopted"
            } else {
                tracing::info!(
                    resource_type,
                    mse_local = local.mse_mlp,
                    mse_candidate = judged.mse_mlp,
                    contributors = lineage.contributors.len(),
                    "merged network rejected: worse on this node's history"
                );
                "rejected"
            }
        }
        None => {
            lineage.cold_start = true;
            lineage.mse_candidate = (judged.validation_windows > 0).then_some(judged.mse_mlp);
            "cold_start"
        }
    };
    let mut models = current
        .as_deref()
        .cloned()
        .unwrap_or_else(|| TrainedModels::empty(resource_type));
    let version = store.next_version(resource_type);
    let network = outcome != "rejected";
    let mut parts_adopted = false;
    let preferred = if judged.validation_windows >= 50 {
        judged.preferred
    } else {
        // Too little history here to judge: the contributors' own validations decide.
        let said: Vec<bool> = of
            .iter()
            .filter_map(|(_, u)| Some(u.validation.mse_mlp? < u.validation.mse_holt?))
            .collect();
        said.iter().filter(|b| **b).count() * 2 > said.len()
    };
    models.meta.version = version;
    if network {
        models.meta.mlp = Some(augur_models::trained::MlpReport {
            preferred,
            examples: models.meta.mlp.as_ref().map_or(0, |r| r.examples),
            ..judged
        });
        models.mlp = Some(merged);
    }
    // The forest: this node's own (when it trained one itself) and the peers' samples of theirs,
    // a union of trees drawn by weight, kept only if it tells a jump from the usual on this
    // node's held-out history no worse than the forest in use.
    // Weights capped as the network's are: at the configured cap and twice the median claim.
    let claimed: Vec<u64> = own
        .as_ref()
        .filter(|m| m.forest.is_some())
        .map(|m| m.meta.rows as u64)
        .into_iter()
        .chain(
            of.iter()
                .filter(|(_, u)| u.forest.is_some())
                .map(|(_, u)| u.samples),
        )
        .collect();
    let cap = augur_models::federated::relative_cap(&claimed, cfg.models.federation_sample_cap);
    let own_forest = own.as_ref().and_then(|m| {
        let w = augur_models::federated::weight_of(m.meta.rows as u64, cap);
        m.forest.as_ref().map(|f| (f, w))
    });
    let peer_forests: Vec<(&augur_models::federated::SharedForest, f64)> = of
        .iter()
        .filter_map(|(_, u)| {
            let w = augur_models::federated::weight_of(u.samples, cap);
            u.forest.as_ref().map(|f| (f, w))
        })
        .collect();
    let n_trees = own_forest.map_or(train_config(cfg).forest_trees, |(f, _)| f.trees());
    if let Some(forest) = augur_models::federated::merge_forests(own_forest, &peer_forests, n_trees)
    {
        let seed = 0x006f_7265_7374;
        let candidate = augur_models::training::forest_separation(&forest, &data, seed);
        let local = models
            .forest
            .as_ref()
            .and_then(|f| augur_models::training::forest_separation(f, &data, seed));
        let adopted = match (local, candidate) {
            (Some(l), Some(c)) => c >= l - 0.005,
            // Nothing local to lose, or too little history to judge the candidate: a cold start.
            (None, _) => true,
            (Some(_), None) => false,
        };
        lineage.forest = Some(augur_models::federated::PartDecision {
            adopted,
            contributors: peer_forests.len() + usize::from(own_forest.is_some()),
            local,
            candidate,
        });
        stats.model_candidate(
            resource_type,
            if adopted {
                "forest_adopted"
            } else {
                "forest_rejected"
            },
        );
        if adopted {
            models.meta.forest_metrics = forest.metrics.len();
            models.forest = Some(forest);
            parts_adopted = true;
        }
    }
    // The calibration: merged with the same rule, used only if its Brier score on this node's
    // labelled history is no worse than the calibration (or raw probability) in use.
    if let Some(platt) = calibration {
        let (engine, _) = engine_config(cfg, resource_type);
        let judged = augur_models::training::judge_calibration(&data, &engine, &models, &platt);
        let adopted = judged
            .as_ref()
            .is_some_and(|j| j.brier_candidate <= j.brier_current * (1.0 + 1e-9));
        let contributors = of.iter().filter(|(_, u)| u.calibration.is_some()).count()
            + usize::from(own.as_ref().is_some_and(|m| m.calibration_used().is_some()));
        lineage.calibration = Some(augur_models::federated::PartDecision {
            adopted,
            contributors,
            local: judged.as_ref().map(|j| j.brier_current),
            candidate: judged.as_ref().map(|j| j.brier_candidate),
        });
        stats.model_candidate(
            resource_type,
            if adopted {
                "calibration_adopted"
            } else {
                "calibration_rejected"
            },
        );
        if adopted && let Some(j) = judged {
            parts_adopted = true;
            models.calibration = Some(platt);
            models.meta.calibration = Some(augur_models::trained::CalibrationReport {
                examples: j.examples,
                positives: j.positives,
                excluded_by_migration: 0,
                brier_raw: j.brier_current,
                brier_calibrated: j.brier_candidate,
                alarmed_raw: 0,
                alarmed_calibrated: 0,
                used: true,
            });
        }
    }
    // Learned limits: this node's own, joined by those peers learned from failures it never had,
    // each kept only where this node's history says it does no harm (`patterns::adopt_shared`).
    let shared: Vec<augur_models::trained::LearnedLimit> = of
        .iter()
        .flat_map(|(_, u)| u.patterns.iter().cloned())
        .collect();
    if !shared.is_empty() {
        let own_limits: Vec<augur_models::trained::LearnedLimit> = own
            .as_ref()
            .and_then(|m| m.meta.patterns.clone())
            .map(|p| p.limits)
            .unwrap_or_default();
        let (engine, threshold) = engine_config(cfg, resource_type);
        let alarm = augur_models::patterns::Alarm {
            threshold,
            keep_firing_s: cfg.keep_firing_s(resource_type),
        };
        let partial = Arc::new(TrainedModels {
            calibration: None,
            ..models.clone()
        });
        let (limits, o) = augur_models::patterns::adopt_shared(
            &data,
            &engine,
            &partial,
            &alarm,
            &own_limits,
            &shared,
        );
        let before = models.meta.patterns.as_ref().map_or(0, |p| p.used());
        let after = limits.iter().filter(|l| l.used).count();
        lineage.patterns = Some(augur_models::federated::PartDecision {
            adopted: o.adopted > 0,
            contributors: of.iter().filter(|(_, u)| !u.patterns.is_empty()).count(),
            local: Some(before as f64),
            candidate: Some(after as f64),
        });
        if o.adopted > 0 || before != after {
            stats.model_candidate(resource_type, "patterns_adopted");
            models.meta.patterns = Some(augur_models::trained::FailurePatterns { limits });
            parts_adopted = true;
        }
    }
    if !network {
        if !parts_adopted {
            stats.model_candidate(resource_type, "rejected");
            store.decide(decision("rejected", None, lineage));
            return;
        }
        // The network in use stays; what else the fleet offered and this node's history
        // accepted is installed with it.
        outcome = "adopted_parts";
    }
    models.meta.federation = Some(lineage.clone());
    match store.install(models, cfg.models.keep_versions) {
        Ok(()) => {
            stats.model_candidate(resource_type, outcome);
            tracing::info!(resource_type, version, outcome, contributors = lineage.contributors.len(),
                mse_local = ?lineage.mse_local, mse_candidate = ?lineage.mse_candidate, "merged model installed");
            store.decide(decision(outcome, Some(version), lineage));
        }
        Err(e) => tracing::warn!(resource_type, error = %e, "cannot save the merged model"),
    }
}

/// Whether `resource_type` uses trained models under `cfg`.
pub fn uses_trained(cfg: &Config, resource_type: &ResourceType) -> bool {
    cfg.type_config(resource_type.as_str()).model == ModelChoice::Auto
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sample::Sample;
    use augur_proto::ResourceId;

    fn samples(n: i64, start: UnixMicros) -> Vec<Sample> {
        (0..n)
            .map(|t| Sample {
                ts: UnixMicros(start.0 + t * 1_000_000),
                resource_id: ResourceId::parse("db-1").expect("id"),
                resource_type: ResourceType::parse("service").expect("type"),
                metrics: BTreeMap::from([
                    ("cpu".to_owned(), 50.0 + (t as f64 * 0.1).sin() * 10.0),
                    ("mem_used_ratio".to_owned(), 0.5),
                ]),
                event: (t == n - 10).then_some(Event::Migration),
                labels: BTreeMap::new(),
            })
            .collect()
    }

    #[test]
    fn a_resource_type_never_names_a_path_outside_the_models_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("a").join("b").join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let history = History::open(&data, 1 << 20, 100).expect("history");
        let start = UnixMicros(UnixMicros::now().0 - 2_000 * 1_000_000);
        history.write(&samples(1_500, start)).expect("write");
        let store = ModelStore::open(&data);
        let o = train_type(&history, &store, &Config::default(), "service");
        assert!(o.trained.is_some(), "{:?}", o.skipped);
        let trained = store.get("service").expect("installed");
        // Before: `../../escape` wrote data/escape/v000001.cbor (and rotation deleted v*.cbor
        // there); an absolute type wrote wherever it named.
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("v000001.cbor"), b"keep me").expect("write");
        let types = [
            "../../escape".to_owned(),
            format!("{}/", outside.display()),
            "a/b".to_owned(),
            "..".to_owned(),
        ];
        for t in &types {
            let mut m = (*trained).clone();
            m.meta.resource_type = t.clone();
            m.meta.version = 7;
            store.install(m, 1).expect("installs");
        }
        let models = data.join(MODELS_DIR);
        let mut files = Vec::new();
        let mut stack = vec![root.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("ls").flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        for f in &files {
            assert!(
                f.starts_with(&models) || f.starts_with(&outside) || f.parent() == Some(&data),
                "{} is outside the data directory's models folder",
                f.display()
            );
        }
        assert_eq!(
            std::fs::read(outside.join("v000001.cbor")).expect("read"),
            b"keep me"
        );
        // Each type has its own folder and reloads under its own name.
        let reopened = ModelStore::open(&data);
        for t in &types {
            assert_eq!(reopened.get(t).map(|m| m.meta.version), Some(7), "{t}");
        }
    }

    #[test]
    fn trains_saves_versions_and_reloads_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(dir.path(), 1 << 20, 100).expect("history");
        let start = UnixMicros(UnixMicros::now().0 - 2_000 * 1_000_000);
        history.write(&samples(1_500, start)).expect("write");
        let mut cfg = Config::default();
        cfg.models.keep_versions = 2;
        let store = ModelStore::open(dir.path());
        for expected in 1..=3 {
            let o = train_type(&history, &store, &cfg, "service");
            let meta = o
                .trained
                .unwrap_or_else(|| panic!("trained: {:?}", o.skipped));
            assert_eq!(meta.version, expected);
            assert_eq!(meta.rows, 1_500);
        }
        let type_dir = dir.path().join(MODELS_DIR).join("service");
        let kept: Vec<u64> = versions(&type_dir).into_iter().map(|v| v.0).collect();
        assert_eq!(kept, vec![3, 2], "only the newest two versions are kept");
        assert!(type_dir.join("v000003.json").exists());
        // A corrupt newest file is set aside and the previous version is used.
        std::fs::write(type_dir.join("v000004.cbor"), b"garbage").expect("write");
        let reopened = ModelStore::open(dir.path());
        assert_eq!(reopened.get("service").map(|m| m.meta.version), Some(3));
        assert!(type_dir.join("v000004.cbor.unreadable").exists());
        assert_eq!(reopened.next_version("service"), 4);
        // Nothing to train on for a type without history.
        let none = train_type(&history, &store, &cfg, "queue");
        assert!(none.trained.is_none() && none.skipped.is_some());
    }
}

//! The prediction engine for one resource: every sample updates each metric's forecaster and anomaly
//! likelihood, and yields a prediction: the probability that a metric with a critical limit crosses
//! it within the horizon (from the forecast distribution), the anomaly score, the expected time to the
//! crossing and the metrics behind it. The same code serves the live agent and `augur replay`: a
//! prediction at time t uses only samples up to t.
//!
//! Without trained models (a new resource type, or before the first training) the engine runs on its
//! online parts alone: Holt forecasts with their measured errors, and each metric's level
//! likelihood. With the type's [`TrainedModels`] set, it adds the burn MLP's forecast-residual score
//! and the Isolation Forest's score to the anomaly score, the MLP's forecast to the failure
//! probability where it beat Holt, and the calibration where it lowered the Brier score.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::anomaly::scorer::surprise;
use crate::anomaly::{AnomalyLikelihood, MetricScorer, NoveltyConfig, normal_tail};
use crate::forecast::empirical::{CredibilityPrior, CredibilityTally, EmpiricalErrors};
use crate::forecast::{Forecast, Holt};
use crate::trained::TrainedModels;

pub use crate::limits::{Direction, Limit, default_limits};

/// Settings of the engine for one resource type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// How far ahead the failure probability looks.
    pub horizon_s: f64,
    pub limits: Vec<Limit>,
    /// Points of the horizon at which the forecast is evaluated.
    pub horizon_points: u32,
    /// Samples each metric's anomaly detector learns before it reports anything; its pattern window
    /// and its rest after an alarm scale with this (`anomaly::Novelty`).
    #[serde(default = "default_anomaly_learning")]
    pub anomaly_learning: usize,
    /// The forecaster's trend damping per sample ([`HOLT_PHI`] by default).
    #[serde(default = "default_trend_damping")]
    pub trend_damping: f64,
    /// The forecaster's residual clipping, in standard deviations (0: none; [`HOLT_CLIP`] by
    /// default).
    #[serde(default = "default_clip")]
    pub forecast_clip: f64,
    /// How far (in spreads of the forecaster's own errors) a trend must carry a forecast from the
    /// level before the forecast is discounted by how much of such drifts has come true on this
    /// metric (`forecast::empirical`; 0: never, every trend taken at its word). A step or burst
    /// that reverts stops raising the failure probability once the metric has shown it reverts;
    /// a climb that keeps going keeps its full forecast.
    #[serde(default = "default_trend_credibility")]
    pub trend_credibility: f64,
    /// The novelty detectors' settings.
    #[serde(default)]
    pub novelty: NoveltyConfig,
    /// Metrics tracked at most; samples' further metric names are ignored (counted in
    /// [`ResourceEngine::ignored_metrics`]) until stale ones are forgotten.
    #[serde(default = "default_max_metrics")]
    pub max_metrics: usize,
    /// A metric absent from this many consecutive samples is forgotten (its name may be reused by
    /// another).
    #[serde(default = "default_metric_ttl")]
    pub metric_ttl_samples: u64,
}

/// Metrics one engine tracks at most by default (a resource's samples may carry 256 each).
pub const DEFAULT_MAX_METRICS: usize = 512;

fn default_max_metrics() -> usize {
    DEFAULT_MAX_METRICS
}

/// An hour of samples at the default interval of one second.
pub const DEFAULT_METRIC_TTL_SAMPLES: u64 = 3600;

fn default_metric_ttl() -> u64 {
    DEFAULT_METRIC_TTL_SAMPLES
}

/// Ten minutes of samples at the default interval of one second.
pub const DEFAULT_ANOMALY_LEARNING: usize = 600;

fn default_clip() -> f64 {
    HOLT_CLIP
}

/// Chosen on the classic failure family's tuning seed (docs/BENCHMARKS.md, issue 15).
pub const DEFAULT_TREND_CREDIBILITY: f64 = 3.0;

fn default_trend_credibility() -> f64 {
    DEFAULT_TREND_CREDIBILITY
}

fn default_trend_damping() -> f64 {
    HOLT_PHI
}

fn default_anomaly_learning() -> usize {
    DEFAULT_ANOMALY_LEARNING
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            horizon_s: 300.0,
            limits: default_limits(),
            horizon_points: 20,
            anomaly_learning: DEFAULT_ANOMALY_LEARNING,
            novelty: NoveltyConfig::default(),
            trend_damping: HOLT_PHI,
            forecast_clip: HOLT_CLIP,
            trend_credibility: DEFAULT_TREND_CREDIBILITY,
            max_metrics: DEFAULT_MAX_METRICS,
            metric_ttl_samples: DEFAULT_METRIC_TTL_SAMPLES,
        }
    }
}

/// The prediction record (DESIGN.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub failure_probability: f64,
    pub anomaly_score: f64,
    pub horizon_s: f64,
    /// Seconds until the most likely crossing, when one is more likely than not within the horizon.
    pub eta_s: Option<f64>,
    /// Metrics behind the prediction, most important first.
    pub drivers: Vec<String>,
    pub model_version: String,
}

/// Each detector's anomaly likelihood for one sample, in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyParts {
    /// The largest per-metric score (novelty, far values).
    pub level: f64,
    /// The burn MLP's forecast-residual likelihood (0 without trained models).
    pub mlp: f64,
    /// The Isolation Forest's likelihood (0 without trained models).
    pub forest: f64,
}

/// Samples a metric needs before its forecast is trusted for a failure probability.
pub const WARM_UP: u64 = 60;

/// Smoothing of the engine's Holt forecaster (level, trend), per sample: a trend fast enough to
/// react to a ramp, a level slow enough that the trend does not chase noise. Chosen on one seed of
/// the failure replay and judged on another (docs/BENCHMARKS.md, "Failure-injection replay").
pub const HOLT_ALPHA: f64 = 0.15;
pub const HOLT_BETA: f64 = 0.02;
/// The forecaster's trend damping per sample (1: undamped, Holt's line).
pub const HOLT_PHI: f64 = 1.0;
/// The forecaster's residual clipping, in standard deviations (0: none).
pub const HOLT_CLIP: f64 = 2.0;

pub use crate::MODEL_VERSION;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetricState {
    scorer: MetricScorer,
    errors: EmpiricalErrors,
    anomaly: f64,
    /// The last values, as the MLP reads them.
    recent: VecDeque<f64>,
    /// The MLP's forecasts made at each of the last ticks, oldest first; the front one is due now.
    pending: VecDeque<Option<Forecast>>,
    /// The engine tick at which the metric was last seen.
    #[serde(default)]
    last_tick: u64,
    /// When it was last seen (seconds), and its own smoothed interval between samples (0: not
    /// known yet). A resource's metrics may come from several sources at different rates (the
    /// node's sampler of an instance, the workload's own pushes): each forecast steps at its own
    /// metric's rate, so another source's samples do not change how far ahead it looks.
    #[serde(default)]
    last_ts_s: Option<f64>,
    #[serde(default)]
    interval_s: f64,
}

impl MetricState {
    fn approx_bytes(&self, name: &str) -> usize {
        // The map entry, the name, the scorer, the error model's queues and the MLP's windows.
        64 + name.len()
            + self.scorer.max_bytes()
            + std::mem::size_of::<EmpiricalErrors>()
            + EmpiricalErrors::max_heap_bytes()
            + 16 * 64
            + 8 * self.recent.capacity()
            + 40 * self.pending.capacity()
    }
}

/// Walks a metric's Holt forecast over the horizon's `points`: `at(ahead_s, mean, sd)` for each
/// point, nearest first, until the first without a forecast or without a learned spread (the
/// spread this forecaster has actually shown on this metric at that horizon). The metric steps at
/// its own sampling interval, or the resource's (`fallback_interval_s`) before it has one. The
/// trend's drift from the level is discounted by its credibility on this metric (or on the type's
/// history, `prior`, until the metric's own is known).
fn walk_horizon(
    horizon_s: f64,
    points: u32,
    fallback_interval_s: f64,
    st: &MetricState,
    prior: Option<&CredibilityPrior>,
    mut at: impl FnMut(f64, f64, f64),
) {
    let interval_s = if st.interval_s > 0.0 {
        st.interval_s
    } else {
        fallback_interval_s
    };
    let steps_total = (horizon_s / interval_s.max(1e-3)).max(1.0);
    let level = st.scorer.holt.level();
    for k in 1..=points {
        let steps = (steps_total * f64::from(k) / f64::from(points))
            .ceil()
            .max(1.0);
        let Some(f) = st.scorer.holt.forecast(steps as u32) else {
            break;
        };
        let Some(variance) = st.errors.variance(steps) else {
            break;
        };
        let drift = f.mean - level;
        let mean = level + st.errors.credibility(steps, drift, variance, prior) * drift;
        at(steps * interval_s, mean, variance.sqrt().max(1e-9));
    }
}

/// The probability that a value forecast at `mean` with spread `sd` is past `limit`.
fn beyond(limit: f64, direction: Direction, mean: f64, sd: f64) -> f64 {
    match direction {
        Direction::Above => normal_tail((limit - mean) / sd),
        Direction::Below => normal_tail((mean - limit) / sd),
    }
}

/// One metric's forecast over the horizon, as the failure probability reads it (the dashboard's
/// forecast plot and `augur forecast`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricForecast {
    pub metric: String,
    /// The forecaster's smoothed value now (None before it has seen two samples).
    pub level: Option<f64>,
    /// The metric's own anomaly score on its last sample.
    pub anomaly_score: f64,
    /// Its limits: the configured one and one learned from labelled failures, if any.
    pub limits: Vec<LimitView>,
    /// The forecast at each point of the horizon, nearest first; empty while the forecaster warms
    /// up (its spread is not known yet).
    pub points: Vec<ForecastPoint>,
}

/// A limit as [`MetricForecast`] shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitView {
    pub value: f64,
    pub direction: Direction,
    /// Learned from labelled failures (`crate::patterns`) rather than configured.
    pub learned: bool,
}

/// The forecast at one point of the horizon.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    /// Seconds after the metric's last sample.
    pub ahead_s: f64,
    pub mean: f64,
    /// The standard deviation of the forecaster's errors at this distance.
    pub sd: f64,
    /// The probability that the metric is beyond its riskiest limit there (0 without a limit).
    pub failure_probability: f64,
}

/// How often (in samples) an engine forgets metrics not seen for `metric_ttl_samples`.
const SWEEP_EVERY: u64 = 256;

/// Samples a likelihood learns before it flags anything.
const LIKELIHOOD_LEARNING: usize = 60;

fn likelihood() -> AnomalyLikelihood {
    AnomalyLikelihood::new(8640, 2, LIKELIHOOD_LEARNING)
}

/// A metric's forecaster as `config` sets it.
fn forecaster(config: &EngineConfig) -> Holt {
    Holt::new(HOLT_ALPHA, HOLT_BETA)
        .damped(config.trend_damping)
        .clipped(config.forecast_clip)
}

/// The trend's credibility on a resource type's history, per metric: every resource's metrics
/// replayed through the forecaster and its error model as the engine runs them (`config`'s
/// forecaster settings), the far-carried forecasts that came due pooled over resources.
pub fn credibility_tally(
    data: &[crate::history::ResourceHistory],
    config: &EngineConfig,
) -> BTreeMap<String, CredibilityTally> {
    let mut out: BTreeMap<String, CredibilityTally> = BTreeMap::new();
    if config.trend_credibility <= 0.0 {
        return out;
    }
    for r in data {
        for name in r.names() {
            let Some(col) = r.column(name) else { continue };
            let tally = out.entry(name.clone()).or_default();
            let mut holt = forecaster(config);
            let mut errors = EmpiricalErrors::new(config.trend_credibility);
            for &x in col.iter().filter(|x| x.is_finite()) {
                errors.observe_tallied(x, Some(tally));
                holt.update(x);
                if holt.seen() >= WARM_UP {
                    errors.remember(holt.level(), |h| holt.forecast(h).map(|f| f.mean));
                }
            }
        }
    }
    out
}

/// Online engine of one resource. Serialisable, so the agent can save its learned state and resume
/// from it after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceEngine {
    config: EngineConfig,
    metrics: BTreeMap<String, MetricState>,
    last_ts_s: Option<f64>,
    /// Smoothed sampling interval, seconds.
    interval_s: f64,
    /// Likelihood of the MLP's forecast residuals (the burn-based detector).
    mlp_likelihood: AnomalyLikelihood,
    /// This tick's MLP residual likelihood.
    mlp_score: f64,
    /// The previous sample's metrics (the forest reads changes).
    previous: Option<BTreeMap<String, f64>>,
    /// This tick's forest likelihood.
    forest_score: f64,
    /// Likelihood of the Isolation Forest's scores.
    forest_likelihood: AnomalyLikelihood,
    /// The resource type's trained models, set by the owner (not saved with the engine: they are
    /// saved, versioned, on their own).
    #[serde(skip)]
    models: Option<Arc<TrainedModels>>,
    /// Samples seen, and the sample until which the trained detectors' evidence rests after the
    /// resource's last anomaly report (as each metric's novelty detector rests after its own).
    #[serde(default)]
    ticks: u64,
    #[serde(default)]
    trained_rest_until: u64,
    /// Metric values ignored because the engine already tracked `max_metrics` metrics.
    #[serde(default)]
    ignored_metrics: u64,
    /// No new metric is learned while set (see [`ResourceEngine::set_frozen`]).
    #[serde(skip)]
    frozen: bool,
}

impl ResourceEngine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            metrics: BTreeMap::new(),
            last_ts_s: None,
            interval_s: 1.0,
            mlp_likelihood: likelihood(),
            mlp_score: 0.0,
            previous: None,
            forest_score: 0.0,
            forest_likelihood: likelihood(),
            models: None,
            ticks: 0,
            trained_rest_until: 0,
            ignored_metrics: 0,
            frozen: false,
        }
    }

    /// Bytes the engine may come to hold with the metrics it tracks, approximately: each metric's
    /// anomaly memory counted at its cap (about 28 KB; it grows there as the metric is learned), so
    /// a budget on this estimate bounds memory for good, not just for now.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .metrics
                .iter()
                .map(|(n, m)| m.approx_bytes(n))
                .sum::<usize>()
            + self
                .previous
                .as_ref()
                .map_or(0, |p| p.keys().map(|k| 48 + k.len()).sum())
    }

    /// Metrics tracked now.
    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    /// Metric values ignored so far because `max_metrics` were tracked.
    pub fn ignored_metrics(&self) -> u64 {
        self.ignored_metrics
    }

    /// Stops learning metrics this engine does not track yet (the agent's memory budget is spent);
    /// the ones it tracks go on.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Sets (or clears) the trained models this engine uses from the next sample on.
    pub fn set_models(&mut self, models: Option<Arc<TrainedModels>>) {
        self.models = models;
    }

    /// The last sample's anomaly evidence from each detector, before they were combined.
    pub fn anomaly_parts(&self) -> AnomalyParts {
        AnomalyParts {
            level: self.metrics.values().map(|s| s.anomaly).fold(0.0, f64::max),
            mlp: self.mlp_score,
            forest: self.forest_score,
        }
    }

    /// The version of the trained models in use.
    pub fn models_version(&self) -> Option<u64> {
        self.models.as_ref().map(|m| m.meta.version)
    }

    /// Time (seconds) of the last sample seen.
    pub fn last_ts_s(&self) -> Option<f64> {
        self.last_ts_s
    }

    /// Changes the settings; the learned state is kept.
    pub fn reconfigure(&mut self, config: EngineConfig) {
        self.config = config;
    }

    fn limit_of(&self, name: &str) -> Option<&Limit> {
        self.config
            .limits
            .iter()
            .find(|l| name.starts_with(l.prefix.as_str()))
    }

    /// Every tracked metric's forecast over the horizon (the same points, spreads and limits the
    /// failure probability is computed from), metrics with a limit first, then by name.
    pub fn forecasts(&self) -> Vec<MetricForecast> {
        let points = self.config.horizon_points.max(1);
        let mut out: Vec<MetricForecast> = self
            .metrics
            .iter()
            .map(|(name, st)| {
                let mut limits: Vec<LimitView> = Vec::new();
                if let Some(l) = self.limit_of(name) {
                    limits.push(LimitView {
                        value: l.value,
                        direction: l.direction,
                        learned: false,
                    });
                }
                if let Some(l) = self.models.as_ref().and_then(|m| m.learned_limit(name)) {
                    limits.push(LimitView {
                        value: l.value,
                        direction: l.direction,
                        learned: true,
                    });
                }
                let mut path = Vec::with_capacity(points as usize);
                walk_horizon(
                    self.config.horizon_s,
                    points,
                    self.interval_s,
                    st,
                    self.models.as_ref().and_then(|m| m.credibility.get(name)),
                    |ahead_s, mean, sd| {
                        let failure_probability = limits
                            .iter()
                            .map(|l| beyond(l.value, l.direction, mean, sd))
                            .fold(0.0, f64::max);
                        path.push(ForecastPoint {
                            ahead_s,
                            mean,
                            sd,
                            failure_probability,
                        });
                    },
                );
                MetricForecast {
                    metric: name.clone(),
                    level: st.scorer.holt.forecast(1).map(|_| st.scorer.holt.level()),
                    anomaly_score: st.anomaly,
                    limits,
                    points: path,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.limits
                .is_empty()
                .cmp(&b.limits.is_empty())
                .then_with(|| a.metric.cmp(&b.metric))
        });
        out
    }

    /// Takes the sample at `ts_s` (seconds) and returns the prediction made with it.
    pub fn observe(&mut self, ts_s: f64, metrics: &BTreeMap<String, f64>) -> Prediction {
        let mut p = self.step(ts_s, metrics);
        if let Some(platt) = self.models.as_ref().and_then(|m| m.calibration_used()) {
            p.failure_probability = platt.apply(p.failure_probability, p.anomaly_score);
        }
        p
    }

    /// Takes the sample like [`observe`](Self::observe) and returns the uncalibrated failure
    /// probability and the anomaly score (what calibration is fitted on).
    pub fn observe_raw(&mut self, ts_s: f64, metrics: &BTreeMap<String, f64>) -> (f64, f64) {
        let p = self.step(ts_s, metrics);
        (p.failure_probability, p.anomaly_score)
    }

    fn step(&mut self, ts_s: f64, metrics: &BTreeMap<String, f64>) -> Prediction {
        if let Some(prev) = self.last_ts_s {
            let dt = ts_s - prev;
            if dt > 0.0 {
                self.interval_s = if self.metrics.is_empty() {
                    dt
                } else {
                    0.9 * self.interval_s + 0.1 * dt
                };
            }
        }
        self.last_ts_s = Some(ts_s);
        self.ticks += 1;
        let ticks = self.ticks;
        if ticks.is_multiple_of(SWEEP_EVERY) {
            let ttl = self.config.metric_ttl_samples.max(1);
            self.metrics
                .retain(|_, m| m.last_tick + ttl >= ticks || m.last_tick == 0);
        }
        for (name, &x) in metrics {
            if !self.metrics.contains_key(name)
                && (self.frozen || self.metrics.len() >= self.config.max_metrics)
            {
                self.ignored_metrics += 1;
                continue;
            }
            let st = self
                .metrics
                .entry(name.clone())
                .or_insert_with(|| MetricState {
                    scorer: MetricScorer::new(
                        forecaster(&self.config),
                        self.config.anomaly_learning,
                        self.config.novelty,
                    ),
                    errors: EmpiricalErrors::new(self.config.trend_credibility),
                    anomaly: 0.0,
                    recent: VecDeque::new(),
                    pending: VecDeque::new(),
                    last_tick: ticks,
                    last_ts_s: None,
                    interval_s: 0.0,
                });
            st.last_tick = ticks;
            if let Some(prev) = st.last_ts_s {
                let dt = ts_s - prev;
                if dt > 0.0 {
                    st.interval_s = if st.interval_s > 0.0 {
                        0.9 * st.interval_s + 0.1 * dt
                    } else {
                        dt
                    };
                }
            }
            st.last_ts_s = Some(ts_s);
            st.errors.observe(x);
            st.anomaly = st.scorer.update(x);
            // Forecasts made before the smoother has settled would teach the error model spreads
            // that no longer apply (they raised false alarms right after warm-up).
            let holt = &st.scorer.holt;
            if holt.seen() >= WARM_UP {
                st.errors
                    .remember(holt.level(), |h| holt.forecast(h).map(|f| f.mean));
            }
        }
        let models = self.models.clone();
        let mlp_forecasts = self.mlp_step(metrics, models.as_deref());
        let forest_raw = models
            .as_ref()
            .and_then(|m| m.forest.as_ref())
            .map(|f| f.score(metrics, self.previous.as_ref()));
        // Only the forest reads the previous sample; without one, no copy per tick.
        self.previous = forest_raw.is_some().then(|| metrics.clone());
        let forest_score = forest_raw.map_or(0.0, |r| self.forest_likelihood.update(r));
        self.forest_score = forest_score;
        let mlp_horizon = models
            .as_ref()
            .and_then(|m| m.mlp.as_ref())
            .filter(|_| models.as_ref().is_some_and(|m| m.mlp_preferred()))
            .map(|m| m.config().horizon as f64);

        let points = self.config.horizon_points.max(1);
        let mut risks: Vec<(f64, &str, Option<f64>)> = Vec::new();
        for (name, st) in &self.metrics {
            // The configured limit, and one learned from labelled failures (`crate::patterns`);
            // the riskier of the two counts.
            // Per sample and metric: no allocation (an array of the two, either absent).
            let limits: [Option<(f64, Direction)>; 2] = [
                self.limit_of(name).map(|l| (l.value, l.direction)),
                models
                    .as_ref()
                    .and_then(|m| m.learned_limit(name))
                    .map(|l| (l.value, l.direction)),
            ];
            if limits.iter().all(Option::is_none) {
                continue;
            }
            let tail = |mean: f64, sd: f64| {
                limits
                    .iter()
                    .flatten()
                    .map(|&(value, direction)| beyond(value, direction, mean, sd))
                    .fold(0.0, f64::max)
            };
            let mut p_max: f64 = 0.0;
            let mut eta = None;
            walk_horizon(
                self.config.horizon_s,
                points,
                self.interval_s,
                st,
                models.as_ref().and_then(|m| m.credibility.get(name)),
                |ahead_s, mean, sd| {
                    let p = tail(mean, sd);
                    if eta.is_none() && p >= 0.5 {
                        eta = Some(ahead_s);
                    }
                    p_max = p_max.max(p);
                },
            );
            // The MLP's forecast at its own horizon, where it beat Holt on this type's history.
            if let (Some(h), Some(f)) = (mlp_horizon, mlp_forecasts.get(name.as_str()))
                && st.scorer.holt.seen() >= WARM_UP
            {
                let p = tail(f.mean, f.variance.sqrt().max(1e-9));
                if p >= 0.5 {
                    eta =
                        Some(eta.map_or(h * self.interval_s, |e: f64| e.min(h * self.interval_s)));
                }
                p_max = p_max.max(p);
            }
            risks.push((p_max, name.as_str(), eta));
        }
        risks.sort_by(|a, b| b.0.total_cmp(&a.0));
        let level = self.metrics.values().map(|s| s.anomaly).fold(0.0, f64::max);
        let trained = if self.ticks >= self.trained_rest_until {
            self.mlp_score.min(forest_score)
        } else {
            0.0
        };
        let anomaly = combine_anomaly(level, trained);
        if anomaly >= crate::anomaly::novelty::ALARM_SCORE {
            self.trained_rest_until = self.ticks
                + crate::anomaly::novelty::rest_samples(
                    self.config.anomaly_learning,
                    &self.config.novelty,
                );
        }
        let mut drivers: Vec<String> = risks
            .iter()
            .filter(|r| r.0 >= 0.01)
            .take(3)
            .map(|r| r.1.to_owned())
            .collect();
        if drivers.is_empty()
            && let Some((name, _)) = self
                .metrics
                .iter()
                .filter(|(_, s)| s.anomaly >= 0.5)
                .max_by(|a, b| a.1.anomaly.total_cmp(&b.1.anomaly))
        {
            drivers.push(name.clone());
        }
        Prediction {
            // The riskiest metric's probability. Treating metrics as independent risks (1 - prod(1 - p))
            // let several individually small, uncalibrated probabilities add up to an alarm.
            failure_probability: risks.first().map_or(0.0, |r| r.0).clamp(0.0, 1.0),
            anomaly_score: anomaly,
            horizon_s: self.config.horizon_s,
            eta_s: risks.iter().filter_map(|r| r.2).reduce(f64::min),
            drivers,
            model_version: models
                .as_ref()
                .map_or_else(|| MODEL_VERSION.to_owned(), |m| m.version_label()),
        }
    }

    /// Scores the values against the MLP's forecasts that fall due now, then forecasts every metric
    /// with a full window in one batch. Returns this tick's forecasts by metric.
    fn mlp_step<'a>(
        &mut self,
        metrics: &'a BTreeMap<String, f64>,
        models: Option<&TrainedModels>,
    ) -> BTreeMap<&'a str, Forecast> {
        let mlp = models.and_then(|m| m.mlp.as_ref());
        let (window, horizon) = mlp.map_or((0, 0), |m| (m.config().window, m.config().horizon));
        let mut raw: f64 = 0.0;
        let mut names = Vec::new();
        for (name, &x) in metrics {
            let Some(st) = self.metrics.get_mut(name) else {
                continue;
            };
            let Some(_) = mlp else {
                st.recent.clear();
                st.pending.clear();
                continue;
            };
            if st.pending.len() >= horizon
                && let Some(Some(f)) = st.pending.pop_front()
            {
                let z = (x - f.mean).abs() / f.variance.sqrt().max(1e-9);
                raw = raw.max(surprise(2.0 * normal_tail(z)));
            }
            st.recent.push_back(x);
            while st.recent.len() > window {
                st.recent.pop_front();
            }
            names.push(name.as_str());
        }
        self.mlp_score = match mlp {
            Some(_) => self.mlp_likelihood.update(raw),
            None => 0.0,
        };
        let Some(mlp) = mlp else {
            return BTreeMap::new();
        };
        let windows: Vec<Vec<f64>> = names
            .iter()
            .map(|n| {
                self.metrics
                    .get(*n)
                    .map(|st| st.recent.iter().copied().collect())
                    .unwrap_or_default()
            })
            .collect();
        let refs: Vec<&[f64]> = windows.iter().map(Vec::as_slice).collect();
        let forecasts = mlp.forecast_batch(&refs);
        let mut out = BTreeMap::new();
        for (name, f) in names.into_iter().zip(forecasts) {
            if let Some(st) = self.metrics.get_mut(name) {
                st.pending.push_back(f);
            }
            if let Some(f) = f {
                out.insert(name, f);
            }
        }
        out
    }
}

/// The resource's anomaly score from its three detectors, each already a likelihood in [0, 1]:
/// the per-metric level likelihood (largest over metrics) and `trained`, where the burn MLP's
/// residual likelihood and the Isolation Forest's agree (the smaller of the two, taken by the
/// caller). The trained evidence counts only once it reaches an alarm, so either detector's false
/// alarms alone do not raise the score. The alternatives measured on NAB and SMD are in
/// docs/BENCHMARKS.md ("How the trained detectors are combined").
fn combine_anomaly(level: f64, trained: f64) -> f64 {
    if trained >= crate::anomaly::novelty::ALARM_SCORE {
        level.max(trained)
    } else {
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource fed by two sources at different rates (a workload pushing a ramp ten times a
    /// second, the node's sampler once a second with other metrics): the slower source's samples
    /// change neither the ramp's predictions nor, when they come, the probability (it used to
    /// drop on each of them: the forecast stepped at the resource's mixed rate).
    #[test]
    fn a_second_source_at_another_rate_does_not_change_the_prediction() {
        let config = EngineConfig {
            horizon_s: 30.0,
            ..EngineConfig::default()
        };
        let mut alone = ResourceEngine::new(config.clone());
        let mut mixed = ResourceEngine::new(config);
        let mut crossed = false;
        for j in 0..900u32 {
            let ts = f64::from(j) * 0.1;
            // A ramp with a little noise, crossing 0.95 at about j = 900.
            let noise = 0.002 * ((f64::from(j) * 12.9898).sin() * 43758.5453).fract();
            let ramp = BTreeMap::from([(
                "mem_used_ratio".to_owned(),
                0.32 + 0.0007 * f64::from(j) + noise,
            )]);
            let a = alone.observe(ts, &ramp).failure_probability;
            let b = mixed.observe(ts, &ramp).failure_probability;
            assert!((a - b).abs() < 1e-9, "at {j}: {a} alone, {b} mixed");
            if j % 10 == 5 {
                let other = BTreeMap::from([("cpu_util".to_owned(), 0.2)]);
                let c = mixed.observe(ts + 0.05, &other).failure_probability;
                assert!(
                    (c - b).abs() < 1e-9,
                    "at {j}: {c} on the other source's sample, {b} before"
                );
            }
            crossed |= a >= 0.75;
        }
        assert!(crossed, "the ramp is predicted to cross");
    }

    /// An error rate near 0.005 with noise, and from `burst_from` a burst to 3x for 30 s (which
    /// reverts), or from `climb_from` a climb of 0.0001 a second (which keeps going).
    fn errors(seed: u64, len: u32, burst_from: Option<u32>, climb_from: Option<u32>) -> Vec<f64> {
        let mut rng = crate::anomaly::iforest::SplitMix64::new(seed);
        (0..len)
            .map(|t| {
                let burst = burst_from.is_some_and(|b| (b..b + 30).contains(&t));
                let climb = climb_from.map_or(0.0, |c| 0.0001 * f64::from(t.saturating_sub(c)));
                0.005 * (0.75 + 0.5 * rng.next_f64()) * if burst { 3.0 } else { 1.0 } + climb
            })
            .collect()
    }

    fn highest(engine: &mut ResourceEngine, values: &[f64]) -> f64 {
        values
            .iter()
            .enumerate()
            .map(|(t, &v)| {
                engine
                    .observe(t as f64, &sample("error_rate", v))
                    .failure_probability
            })
            .fold(0.0, f64::max)
    }

    /// The trend's credibility learned on a type's history is what a new resource's far-carried
    /// trends are believed by until its own have come due: where the type's bursts reverted, a
    /// new resource's first burst raises no alarm (it does without the history); where the type's
    /// climbs came true, a new resource's climb is still predicted.
    #[test]
    fn a_types_history_tells_a_new_resource_how_far_to_believe_a_trend() {
        let config = EngineConfig::default();
        let history = |shape: &dyn Fn(u64) -> Vec<f64>| -> Vec<crate::history::ResourceHistory> {
            (0..12u64)
                .map(|k| {
                    let mut h = crate::history::ResourceHistory::default();
                    for (t, v) in shape(k).into_iter().enumerate() {
                        h.push(t as f64, [("error_rate", v)]);
                    }
                    h
                })
                .collect()
        };
        let with_prior = |data: &[crate::history::ResourceHistory]| {
            let mut models = TrainedModels::empty("service");
            models.credibility = crate::training::credibility_priors(data, &config);
            let mut e = ResourceEngine::new(config.clone());
            e.set_models(Some(Arc::new(models)));
            e
        };

        // Bursts that revert, one in each resource's history, at different times.
        let bursts = history(&|k| errors(k, 3000, Some(800 + 150 * k as u32), None));
        let prior = crate::training::credibility_priors(&bursts, &config);
        let c300 = prior["error_rate"][6].expect("enough far-carried forecasts came due");
        assert!(c300 < 0.3, "bursts that revert: {c300}");
        let burst = errors(99, 1500, Some(1200), None);
        let alone = highest(&mut ResourceEngine::new(config.clone()), &burst);
        assert!(
            alone >= 0.75,
            "without the history the burst alarms: {alone}"
        );
        let mut e = with_prior(&bursts);
        let told = highest(&mut e, &burst);
        assert!(told < 0.75, "with it, it does not: {told}");

        // Climbs that came true: a new resource's climb is predicted as before.
        let climbs = history(&|k| errors(k, 1200 + 40 * k as u32, None, Some(700)));
        let prior = crate::training::credibility_priors(&climbs, &config);
        let c300 = prior["error_rate"][6].expect("enough far-carried forecasts came due");
        assert!(c300 > 0.7, "climbs that came true: {c300}");
        let climb = errors(98, 1050, None, Some(600));
        let mut e = with_prior(&climbs);
        assert!(highest(&mut e, &climb) >= 0.75, "the climb is predicted");
    }

    fn sample(name: &str, v: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([(name.to_owned(), v), ("queue_len".to_owned(), 3.0)])
    }

    /// A resource that names a new metric in every sample (issue 10, finding 7: 256 new names a
    /// sample grew the agent by ~1.8 KB each, for good) stays within `max_metrics`, and metrics that
    /// stop coming are forgotten.
    #[test]
    fn an_engine_tracks_at_most_max_metrics_and_forgets_stale_ones() {
        let config = EngineConfig {
            max_metrics: 100,
            metric_ttl_samples: 300,
            ..EngineConfig::default()
        };
        let mut e = ResourceEngine::new(config);
        for t in 0..200u32 {
            let metrics: BTreeMap<String, f64> = (0..50)
                .map(|k| (format!("m{t}_{k}"), f64::from(k)))
                .collect();
            e.observe(f64::from(t), &metrics);
            assert!(e.metric_count() <= 100);
        }
        assert_eq!(e.ignored_metrics(), 200 * 50 - 100);
        let full = e.approx_bytes();
        // The 100 tracked metrics (the first two samples') never come again: they are forgotten
        // after the TTL, so new names are learned again.
        for t in 200..700u32 {
            let metrics = BTreeMap::from([(format!("late{}", t % 3), 1.0)]);
            e.observe(f64::from(t), &metrics);
        }
        assert_eq!(e.metric_count(), 3, "only the metrics still coming remain");
        assert!(e.approx_bytes() < full / 10);
        // Frozen (the agent's memory budget is spent), an engine learns no new metric.
        e.set_frozen(true);
        e.observe(701.0, &BTreeMap::from([("brand_new".to_owned(), 1.0)]));
        assert_eq!(e.metric_count(), 3);
    }

    #[test]
    fn a_memory_leak_is_predicted_before_it_hits_the_limit() {
        let mut e = ResourceEngine::new(EngineConfig::default());
        let mut flagged_at = None;
        // 0.50 rising by 0.001 a second: reaches 0.95 at t = 450 s.
        for t in 0..450 {
            let p = e.observe(
                f64::from(t),
                &sample("mem_used_ratio", 0.5 + 0.001 * f64::from(t)),
            );
            if flagged_at.is_none() && p.failure_probability >= 0.75 {
                flagged_at = Some(t);
                assert_eq!(
                    p.drivers.first().map(String::as_str),
                    Some("mem_used_ratio")
                );
                let eta = p.eta_s.expect("an eta");
                assert!(
                    (eta - f64::from(450 - t)).abs() < 60.0,
                    "eta {eta} at t={t}"
                );
            }
        }
        let t = flagged_at.expect("flagged before the limit");
        assert!(t <= 450 - 30, "flagged only {} s ahead", 450 - t);
    }

    #[test]
    fn the_forecast_path_is_what_the_failure_probability_is_read_from() {
        let mut e = ResourceEngine::new(EngineConfig::default());
        let mut last = None;
        for t in 0..300 {
            let mut m = sample("mem_used_ratio", 0.5 + 0.001 * f64::from(t));
            m.insert("cpu".to_owned(), 0.3);
            last = Some(e.observe(f64::from(t), &m));
        }
        let p = last.expect("a prediction");
        let paths = e.forecasts();
        assert_eq!(paths.len(), 3, "cpu, mem_used_ratio, queue_len");
        // Metrics with a limit first.
        let mem = &paths[0];
        assert_eq!(mem.metric, "mem_used_ratio");
        assert_eq!(mem.limits.len(), 1);
        assert!(!mem.limits[0].learned);
        // As far over the horizon as the forecaster's spread has been learned (300 samples: not
        // all of it yet).
        let horizon = EngineConfig::default().horizon_s;
        assert!(!mem.points.is_empty());
        assert!(mem.points.len() <= EngineConfig::default().horizon_points as usize);
        let far = mem.points.last().expect("points");
        assert!(far.ahead_s <= horizon + 1.0, "{far:?}");
        assert!(
            mem.points
                .windows(2)
                .all(|w| w[0].mean < w[1].mean && w[0].ahead_s < w[1].ahead_s)
        );
        let p_max = mem
            .points
            .iter()
            .map(|x| x.failure_probability)
            .fold(0.0, f64::max);
        assert!(
            (p_max - p.failure_probability).abs() < 1e-12,
            "{p_max} vs {p:?}"
        );
        let level = mem.level.expect("a level");
        assert!((level - 0.799).abs() < 0.01, "{level}");
        // Metrics without a limit have a path but no probability, by name.
        assert_eq!(paths[1].metric, "cpu");
        assert_eq!(paths[2].metric, "queue_len");
        for m in &paths[1..] {
            assert!(m.limits.is_empty());
            assert!(!m.points.is_empty());
            assert!(m.points.iter().all(|x| x.failure_probability == 0.0));
        }
    }

    #[test]
    fn a_steady_resource_is_not_at_risk() {
        let mut e = ResourceEngine::new(EngineConfig::default());
        let mut worst: f64 = 0.0;
        for t in 0..600 {
            let wobble = if t % 2 == 0 { 0.01 } else { -0.01 };
            worst = worst.max(
                e.observe(f64::from(t), &sample("mem_used_ratio", 0.6 + wobble))
                    .failure_probability,
            );
        }
        assert!(worst < 0.05, "{worst}");
    }

    #[test]
    fn metrics_without_limits_only_raise_the_anomaly_score() {
        let mut e = ResourceEngine::new(EngineConfig::default());
        let mut last = None;
        for t in 0..300 {
            last = Some(e.observe(
                f64::from(t),
                &BTreeMap::from([("rps".to_owned(), 100.0 + f64::from(t % 3))]),
            ));
        }
        let p = last.expect("predictions");
        assert_eq!(p.failure_probability, 0.0);
        let spike = e.observe(300.0, &BTreeMap::from([("rps".to_owned(), 900.0)]));
        assert!(spike.anomaly_score > p.anomaly_score);
        assert_eq!(spike.failure_probability, 0.0);
    }
}

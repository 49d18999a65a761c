//! The trained models of one resource type: what a training produces and the engine reads.
//!
//! The engine's online parts (Holt, the empirical errors, the level likelihood) learn every sample
//! and need no training. These models are fitted in batches (`crate::training`), on the history of
//! every resource of a type, in the background:
//! - the burn MLP forecaster: scores forecast residuals (the burn-based anomaly detector) and, where
//!   it beat Holt on held-out history, adds its forecast to the failure probability;
//! - an Isolation Forest over the resource's standardised metric vector (multivariate anomalies that
//!   no single metric shows);
//! - Platt calibration of the failure probability on observed failures, used only when it scores a
//!   lower Brier score than the raw probability on the later part of the history it did not see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MODEL_VERSION;
use crate::anomaly::iforest::IsolationForest;
use crate::calibration::Platt;
use crate::forecast::mlp::MlpForecaster;
use crate::limits::{Direction, Limit};

/// An Isolation Forest over a resource's metric vector: each metric's value and its change since
/// the previous sample, standardised per metric (so a jump inside the usual range still isolates).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureForest {
    pub metrics: Vec<String>,
    pub(crate) mean: Vec<f64>,
    pub(crate) sd: Vec<f64>,
    /// Standard deviation of each metric's change between samples.
    pub(crate) dsd: Vec<f64>,
    pub(crate) forest: IsolationForest,
}

impl FeatureForest {
    /// The forest's inputs from each metric's value now and before (aligned with `metrics`).
    pub(crate) fn features(&self, cur: &[Option<f64>], prev: Option<&[Option<f64>]>) -> Vec<f64> {
        let n = self.metrics.len();
        let mut row = vec![0.0; 2 * n];
        for i in 0..n {
            // A missing metric sits at its usual level, unchanged.
            if let Some(v) = cur[i] {
                row[i] = ((v - self.mean[i]) / self.sd[i]).clamp(-1e6, 1e6);
                if let Some(p) = prev.and_then(|p| p[i]) {
                    row[n + i] = ((v - p) / self.dsd[i]).clamp(-1e6, 1e6);
                }
            }
        }
        row
    }

    fn row(&self, m: &BTreeMap<String, f64>, prev: Option<&BTreeMap<String, f64>>) -> Vec<f64> {
        let n = self.metrics.len();
        let mut row = vec![0.0; 2 * n];
        for (i, name) in self.metrics.iter().enumerate() {
            // A missing metric sits at its usual level, unchanged.
            if let Some(v) = m.get(name) {
                row[i] = ((v - self.mean[i]) / self.sd[i]).clamp(-1e6, 1e6);
                if let Some(p) = prev.and_then(|p| p.get(name)) {
                    row[n + i] = ((v - p) / self.dsd[i]).clamp(-1e6, 1e6);
                }
            }
        }
        row
    }

    /// Trees in the forest.
    pub fn trees(&self) -> usize {
        self.forest.len()
    }

    /// Score in (0, 1]: about 0.5 or less for usual samples. `prev` is the sample before.
    pub fn score(&self, m: &BTreeMap<String, f64>, prev: Option<&BTreeMap<String, f64>>) -> f64 {
        self.forest.score(&self.row(m, prev))
    }
}

/// What a training did, saved with the models and shown by `augur models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub resource_type: String,
    pub version: u64,
    /// The engine these models were trained for.
    pub engine: String,
    /// Time of the newest training sample, seconds since the epoch.
    pub data_until_s: f64,
    pub resources: usize,
    pub rows: usize,
    pub train_ms: u64,
    pub mlp: Option<MlpReport>,
    pub forest_metrics: usize,
    pub calibration: Option<CalibrationReport>,
    /// Limits learned from labelled failures, used or not, with their check (`crate::patterns`);
    /// absent from models trained before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patterns: Option<FailurePatterns>,
    /// For a model merged from the fleet's updates (`crate::federated`): who contributed, how it
    /// was merged, and how it did against the local model on this node's held-out history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::lineage::Lineage>,
    /// The merged model's version this one was trained from (federated averaging's next round);
    /// absent when trained from the shared seeded start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// Per metric, the trend's credibility on the history 300 samples ahead (where known): the
    /// share of a far-carried trend a new resource's forecasts believe until their own is known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trend_credibility: BTreeMap<String, f64>,
}

/// The MLP against Holt on the last fifth of each series, at the MLP's horizon (mean squared error
/// in units of each window's spread, so metrics of any scale weigh alike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpReport {
    pub examples: usize,
    pub final_loss: f64,
    pub validation_windows: usize,
    pub mse_mlp: f64,
    pub mse_holt: f64,
    /// Whether the failure probability uses the MLP's forecast (it beat Holt).
    pub preferred: bool,
}

/// The calibration against the raw probability on the later 30 % of labelled predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub examples: usize,
    pub positives: usize,
    /// Predictions left unlabelled because their window reached a migration.
    pub excluded_by_migration: usize,
    pub brier_raw: f64,
    pub brier_calibrated: f64,
    /// Held-out failing examples at or above the alarm threshold, raw and calibrated.
    #[serde(default)]
    pub alarmed_raw: usize,
    #[serde(default)]
    pub alarmed_calibrated: usize,
    /// Whether the engine applies it: only when it lowered the Brier score and left at least as
    /// many held-out failing examples at the alarm threshold.
    pub used: bool,
}

/// The trained models of one resource type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainedModels {
    pub meta: ModelMeta,
    pub mlp: Option<MlpForecaster>,
    pub forest: Option<FeatureForest>,
    pub calibration: Option<Platt>,
    /// Per metric, the trend's credibility on the type's history: what a metric's far-carried
    /// trends are believed by until its own have come due (`forecast::empirical`).
    #[serde(default)]
    pub credibility: BTreeMap<String, crate::forecast::empirical::CredibilityPrior>,
}

impl TrainedModels {
    /// No model at all (a base to add one to, in tests and evaluations).
    pub fn empty(resource_type: &str) -> Self {
        Self {
            meta: ModelMeta {
                resource_type: resource_type.to_owned(),
                version: 0,
                engine: MODEL_VERSION.to_owned(),
                data_until_s: 0.0,
                resources: 0,
                rows: 0,
                train_ms: 0,
                mlp: None,
                forest_metrics: 0,
                calibration: None,
                patterns: None,
                federation: None,
                base_version: None,
                trend_credibility: BTreeMap::new(),
            },
            mlp: None,
            forest: None,
            calibration: None,
            credibility: BTreeMap::new(),
        }
    }

    /// The learned limit the engine uses for `metric`, if any.
    pub fn learned_limit(&self, metric: &str) -> Option<&LearnedLimit> {
        self.meta.patterns.as_ref()?.limit_for(metric)
    }

    /// The version string predictions made with these models carry.
    pub fn version_label(&self) -> String {
        format!(
            "{}+{}.v{}",
            MODEL_VERSION, self.meta.resource_type, self.meta.version
        )
    }

    pub fn mlp_preferred(&self) -> bool {
        self.meta.mlp.as_ref().is_some_and(|r| r.preferred)
    }

    pub fn calibration_used(&self) -> Option<&Platt> {
        let used = self.meta.calibration.as_ref().is_some_and(|c| c.used);
        self.calibration.as_ref().filter(|_| used)
    }
}

/// One learned limit, with what the check on the history found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedLimit {
    pub metric: String,
    pub value: f64,
    pub direction: Direction,
    /// Failures at which the metric was this far out.
    pub failures: usize,
    /// The metric's usual median and spread (1.4826 MAD) on the type's history away from failures.
    pub usual_median: f64,
    pub usual_spread: f64,
    /// Failures caught at least [`crate::patterns::MIN_LEAD_S`] ahead over the history, with it and with the
    /// limits alone; false alarm episodes, likewise.
    pub caught_with: usize,
    pub caught_without: usize,
    pub false_alarms_with: usize,
    pub false_alarms_without: usize,
    /// Leave one failure out (only where it was seen at two or more): each failure predicted by
    /// the limit learned from the others, (caught, tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<(usize, usize)>,
    /// Whether the engine uses it: it caught a failure the limits miss and added no false alarm.
    pub used: bool,
}

impl LearnedLimit {
    /// One line for people: `augur models` and `augur eval failures` show it.
    pub fn describe(&self) -> String {
        let dir = match self.direction {
            Direction::Above => ">=",
            Direction::Below => "<=",
        };
        format!(
            "{} {dir} {:.4} (usual {:.4} +- {:.4}; from {} failure{}; on the history {} vs {} caught, {} vs {} false alarms{}){}",
            self.metric,
            self.value,
            self.usual_median,
            self.usual_spread,
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.caught_with,
            self.caught_without,
            self.false_alarms_with,
            self.false_alarms_without,
            self.held_out
                .map(|(c, n)| format!("; {c} of {n} caught when left out"))
                .unwrap_or_default(),
            if self.used { ", used" } else { ", not used" }
        )
    }

    pub fn limit(&self) -> Limit {
        Limit {
            prefix: self.metric.clone(),
            value: self.value,
            direction: self.direction,
        }
    }
}

/// A type's learned limits (used or not: `augur models` shows the rejected ones too).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailurePatterns {
    pub limits: Vec<LearnedLimit>,
}

impl FailurePatterns {
    /// The learned limit the engine uses for `metric` (exact name), if any.
    pub fn limit_for(&self, metric: &str) -> Option<&LearnedLimit> {
        self.limits.iter().find(|l| l.used && l.metric == metric)
    }

    pub fn used(&self) -> usize {
        self.limits.iter().filter(|l| l.used).count()
    }
}

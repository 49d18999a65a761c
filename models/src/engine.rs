//! The prediction engine for one resource: every sample updates each metric's forecaster and anomaly
//! likelihood, and yields a prediction: the probability that a metric with a critical limit crosses
//! it within the horizon (from the forecast distribution), the anomaly score, the expected time to the
//! crossing and the metrics behind it. The same code serves the live agent and `augur replay`: a
//! prediction at time t uses only samples up to t.
//!
//! Not yet here (issue 3): the burn forecaster, the calibration of the probability on observed
//! failures, and the Isolation Forest in the live path; the probability is the raw forecast-crossing
//! probability, and `model_version` says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::{MetricScorer, normal_tail};
use crate::forecast::Holt;
use crate::forecast::empirical::EmpiricalErrors;

/// Which side of a limit is failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Above,
    Below,
}

/// A critical limit of one metric (or of every metric whose name starts with `prefix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub prefix: String,
    pub value: f64,
    pub direction: Direction,
}

/// The documented default limits: used ratios of memory, swap and disks at 0.95, error rates at 0.05.
pub fn default_limits() -> Vec<Limit> {
    let above = |prefix: &str, value| Limit {
        prefix: prefix.to_owned(),
        value,
        direction: Direction::Above,
    };
    vec![
        above("mem_used_ratio", 0.95),
        above("swap_used_ratio", 0.95),
        above("disk_used_ratio", 0.95),
        above("error_rate", 0.05),
    ]
}

/// Settings of the engine for one resource type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// How far ahead the failure probability looks.
    pub horizon_s: f64,
    pub limits: Vec<Limit>,
    /// Points of the horizon at which the forecast is evaluated.
    pub horizon_points: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            horizon_s: 300.0,
            limits: default_limits(),
            horizon_points: 20,
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

/// Samples a metric needs before its forecast is trusted for a failure probability.
pub const WARM_UP: u64 = 60;

/// The version string of this engine's models.
pub const MODEL_VERSION: &str = "holt-empirical-level-likelihood-v3-uncalibrated";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetricState {
    scorer: MetricScorer,
    errors: EmpiricalErrors,
    anomaly: f64,
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
}

impl ResourceEngine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            metrics: BTreeMap::new(),
            last_ts_s: None,
            interval_s: 1.0,
        }
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

    /// Takes the sample at `ts_s` (seconds) and returns the prediction made with it.
    pub fn observe(&mut self, ts_s: f64, metrics: &BTreeMap<String, f64>) -> Prediction {
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
        for (name, &x) in metrics {
            let st = self
                .metrics
                .entry(name.clone())
                .or_insert_with(|| MetricState {
                    scorer: MetricScorer::new(
                        Holt::new(0.3, 0.01),
                        crate::anomaly::scorer::DEFAULT_RAW,
                        60,
                    ),
                    errors: EmpiricalErrors::default(),
                    anomaly: 0.0,
                });
            st.errors.observe(x);
            st.anomaly = st.scorer.update(x);
            // Forecasts made before the smoother has settled would teach the error model spreads
            // that no longer apply (they raised false alarms right after warm-up).
            let holt = &st.scorer.holt;
            if holt.seen() >= WARM_UP {
                st.errors.remember(|h| holt.forecast(h).map(|f| f.mean));
            }
        }

        let steps_total = (self.config.horizon_s / self.interval_s.max(1e-3)).max(1.0);
        let points = self.config.horizon_points.max(1);
        let mut risks: Vec<(f64, &str, Option<f64>)> = Vec::new();
        for (name, st) in &self.metrics {
            let Some(limit) = self.limit_of(name) else {
                continue;
            };
            let mut p_max: f64 = 0.0;
            let mut eta = None;
            for k in 1..=points {
                let steps = (steps_total * f64::from(k) / f64::from(points))
                    .ceil()
                    .max(1.0);
                let Some(f) = st.scorer.holt.forecast(steps as u32) else {
                    break;
                };
                // The spread this forecaster has actually shown on this metric at this horizon.
                let Some(variance) = st.errors.variance(steps) else {
                    break;
                };
                let sd = variance.sqrt().max(1e-9);
                let p = match limit.direction {
                    Direction::Above => normal_tail((limit.value - f.mean) / sd),
                    Direction::Below => normal_tail((f.mean - limit.value) / sd),
                };
                if eta.is_none() && p >= 0.5 {
                    eta = Some(steps * self.interval_s);
                }
                p_max = p_max.max(p);
            }
            risks.push((p_max, name.as_str(), eta));
        }
        risks.sort_by(|a, b| b.0.total_cmp(&a.0));
        let anomaly = self.metrics.values().map(|s| s.anomaly).fold(0.0, f64::max);
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
            model_version: MODEL_VERSION.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, v: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([(name.to_owned(), v), ("queue_len".to_owned(), 3.0)])
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

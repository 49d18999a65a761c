//! Calibration: turns the engine's raw evidence (the forecast-crossing probability and the anomaly
//! score) into a probability that matches how often resources actually failed. Platt scaling: a
//! logistic regression on (logit of the raw probability, anomaly score), fitted by Newton's method
//! with a small ridge penalty, on predictions labelled by whether a failure followed within the
//! horizon.
//!
//! Labels must not teach the model that a resource augur moved away was healthy (the Uptake lesson:
//! a migration prevents the failure it predicted). Callers drop such windows before fitting; see
//! [`label_windows`].

use serde::{Deserialize, Serialize};

/// A fitted calibration. The identity (raw probability passes through) until fitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    /// Weights of (1, logit(raw), anomaly).
    pub w: [f64; 3],
    /// Labelled examples and failures it was fitted on.
    pub examples: usize,
    pub positives: usize,
}

impl Default for Platt {
    fn default() -> Self {
        Self {
            w: [0.0, 1.0, 0.0],
            examples: 0,
            positives: 0,
        }
    }
}

/// Failures needed before a fit is trusted over the identity.
pub const MIN_POSITIVES: usize = 5;

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn features(raw: f64, anomaly: f64) -> [f64; 3] {
    [1.0, logit(raw), anomaly]
}

impl Platt {
    /// The calibrated probability.
    pub fn apply(&self, raw: f64, anomaly: f64) -> f64 {
        let x = features(raw, anomaly);
        sigmoid(self.w.iter().zip(&x).map(|(w, x)| w * x).sum())
    }

    /// Whether this is a fitted model rather than the identity.
    pub fn is_fitted(&self) -> bool {
        self.positives >= MIN_POSITIVES
    }

    /// Fits on `(raw probability, anomaly score, failed within the horizon)`; returns the identity
    /// when there are fewer than [`MIN_POSITIVES`] failures or no negatives.
    pub fn fit(examples: &[(f64, f64, bool)]) -> Self {
        let positives = examples.iter().filter(|e| e.2).count();
        if positives < MIN_POSITIVES || positives == examples.len() {
            return Self {
                examples: examples.len(),
                positives,
                ..Self::default()
            };
        }
        // Platt's targets soften 0/1 by the class counts, which keeps the fit finite on separable data.
        let negatives = examples.len() - positives;
        let t_pos = (positives as f64 + 1.0) / (positives as f64 + 2.0);
        let t_neg = 1.0 / (negatives as f64 + 2.0);
        // Ridge penalty: with failures this rare, the raw probability can separate the classes
        // almost perfectly and an unpenalised fit runs off to huge weights.
        let lambda = 1.0;
        let mut w = [0.0, 1.0, 0.0];
        for _ in 0..50 {
            let mut g = [0.0; 3];
            let mut h = [[0.0; 3]; 3];
            for &(raw, a, y) in examples {
                let x = features(raw, a);
                let p = sigmoid(w.iter().zip(&x).map(|(w, x)| w * x).sum());
                let t = if y { t_pos } else { t_neg };
                let s = p * (1.0 - p);
                for i in 0..3 {
                    g[i] += (p - t) * x[i];
                    for j in 0..3 {
                        h[i][j] += s * x[i] * x[j];
                    }
                }
            }
            for i in 0..3 {
                g[i] += lambda * w[i];
                h[i][i] += lambda;
            }
            let Some(step) = solve3(h, g) else { break };
            // Damped Newton: never move a weight by more than 2 in one step.
            let biggest = step.iter().fold(0.0f64, |m, s| m.max(s.abs()));
            let scale = if biggest > 2.0 { 2.0 / biggest } else { 1.0 };
            let mut change: f64 = 0.0;
            for i in 0..3 {
                w[i] -= scale * step[i];
                change = change.max((scale * step[i]).abs());
            }
            if change < 1e-9 {
                break;
            }
        }
        Self {
            w,
            examples: examples.len(),
            positives,
        }
    }
}

/// Solves a 3x3 system by Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..3 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (cell, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *cell -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let s: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// Labels predictions made at times `ts` (seconds) for one resource: `Some(true)` when a failure
/// follows within `horizon_s`, `Some(false)` when none does and the whole horizon was observed,
/// `None` (not a label) when the horizon runs past the data, or reaches a time the resource was moved
/// away (a prevented failure is not evidence of health).
pub fn label_windows(
    ts: &[f64],
    failures: &[f64],
    migrations: &[f64],
    horizon_s: f64,
) -> Vec<Option<bool>> {
    let end = ts.last().copied().unwrap_or(0.0);
    ts.iter()
        .map(|&t| {
            if failures.iter().any(|&f| f > t && f <= t + horizon_s) {
                Some(true)
            } else if t + horizon_s > end || migrations.iter().any(|&m| m > t && m <= t + horizon_s)
            {
                None
            } else {
                Some(false)
            }
        })
        .collect()
}

/// Brier score: the mean squared error of probabilities against outcomes (lower is better).
pub fn brier(pairs: &[(f64, bool)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    pairs
        .iter()
        .map(|(p, y)| (p - f64::from(u8::from(*y))).powi(2))
        .sum::<f64>()
        / pairs.len() as f64
}

/// One bin of a reliability table: the predictions in `[lo, hi)` (the last bin includes 1), how
/// many, their mean, and how often the outcome followed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed: f64,
}

/// A reliability table over `bins` equal-width bins of the predicted probability (empty bins are
/// left out): a calibrated predictor's `observed` matches its `mean_predicted` in every bin.
pub fn reliability(pairs: &[(f64, bool)], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(p, y) in pairs {
        if !p.is_finite() {
            continue;
        }
        let i = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[i].0 += 1;
        sums[i].1 += p;
        sums[i].2 += usize::from(y);
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, (n, _, _))| *n > 0)
        .map(|(i, (n, sum, pos))| ReliabilityBin {
            lo: i as f64 / bins as f64,
            hi: (i + 1) as f64 / bins as f64,
            count: n,
            mean_predicted: sum / n as f64,
            observed: pos as f64 / n as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::iforest::SplitMix64;

    #[test]
    fn a_reliability_table_shows_an_overconfident_predictor() {
        // Says 0.9 where failures follow half the time, 0.05 where they never do.
        let pairs: Vec<(f64, bool)> = (0..1000)
            .map(|i| {
                if i < 500 {
                    (0.9, i % 2 == 0)
                } else {
                    (0.05, false)
                }
            })
            .collect();
        let t = reliability(&pairs, 10);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].lo, t[0].count, t[0].observed), (0.0, 500, 0.0));
        assert_eq!((t[1].lo, t[1].count), (0.9, 500));
        assert!((t[1].mean_predicted - 0.9).abs() < 1e-12 && (t[1].observed - 0.5).abs() < 1e-12);
        assert_eq!(
            reliability(&[(1.0, true)], 10)[0].lo,
            0.9,
            "1 falls in the last bin"
        );
        assert!(reliability(&[(f64::NAN, true)], 10).is_empty());
    }

    #[test]
    fn recovers_a_known_miscalibration() {
        // The raw probability overstates: the true failure rate is sigmoid(logit(raw) - 2).
        let mut rng = SplitMix64::new(11);
        let data: Vec<(f64, f64, bool)> = (0..20_000)
            .map(|_| {
                let raw = rng.next_f64();
                let truth = sigmoid(logit(raw) - 2.0);
                (raw, 0.0, rng.next_f64() < truth)
            })
            .collect();
        let platt = Platt::fit(&data);
        assert!(platt.is_fitted());
        assert!((platt.w[0] + 2.0).abs() < 0.15, "{platt:?}");
        assert!((platt.w[1] - 1.0).abs() < 0.1, "{platt:?}");
        let raw_brier = brier(&data.iter().map(|&(r, _, y)| (r, y)).collect::<Vec<_>>());
        let cal_brier = brier(
            &data
                .iter()
                .map(|&(r, a, y)| (platt.apply(r, a), y))
                .collect::<Vec<_>>(),
        );
        assert!(cal_brier < raw_brier, "{cal_brier} vs {raw_brier}");
    }

    #[test]
    fn separable_data_gives_finite_moderate_weights() {
        let data: Vec<(f64, f64, bool)> = (0..5000)
            .map(|i| {
                let raw = f64::from(i) / 5000.0;
                (raw, 0.0, raw > 0.9)
            })
            .collect();
        let platt = Platt::fit(&data);
        assert!(
            platt.w.iter().all(|w| w.is_finite() && w.abs() < 100.0),
            "{platt:?}"
        );
        assert!(
            platt.apply(0.95, 0.0) > 0.5 && platt.apply(0.5, 0.0) < 0.5,
            "{platt:?}"
        );
    }

    #[test]
    fn stays_the_identity_without_enough_failures() {
        let data = vec![(0.9, 0.0, true), (0.1, 0.0, false), (0.2, 0.0, false)];
        let platt = Platt::fit(&data);
        assert!(!platt.is_fitted());
        assert!((platt.apply(0.3, 0.7) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn migrated_windows_are_not_negative_labels() {
        let ts: Vec<f64> = (0..10).map(f64::from).collect();
        let labels = label_windows(&ts, &[], &[5.5], 3.0);
        assert_eq!(labels[0], Some(false));
        assert_eq!(labels[3], None, "the horizon reaches the migration");
        assert_eq!(labels[5], None);
        assert_eq!(labels[6], Some(false));
        assert_eq!(labels[7], None, "horizon past the end of the data");
        let labels = label_windows(&ts, &[8.0], &[], 3.0);
        assert_eq!(labels[5], Some(true));
        assert_eq!(labels[4], Some(false));
    }
}

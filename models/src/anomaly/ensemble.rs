//! augur's univariate anomaly path: two raw scores, a forecast residual (Holt's one-step forecast and
//! its tracked variance) and an Isolation Forest over recent shape features, combined and turned
//! into a likelihood against the series' own history.

use super::{AnomalyLikelihood, StreamingDetector, StreamingIsolationForest, normal_tail};
use crate::forecast::Holt;

/// How the two raw scores are combined before the likelihood step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// The larger of the two.
    Max,
    /// Their mean.
    Mean,
    /// The forecast residual alone.
    ResidualOnly,
    /// The Isolation Forest alone.
    ForestOnly,
}

/// The combined detector.
#[derive(Clone, Debug)]
pub struct Ensemble {
    holt: Holt,
    forest: StreamingIsolationForest,
    likelihood: AnomalyLikelihood,
    combine: Combine,
}

impl Ensemble {
    pub fn new(seed: u64, combine: Combine) -> Self {
        Self {
            holt: Holt::new(0.5, 0.01),
            forest: StreamingIsolationForest::new(seed),
            // A short average of 3: forecast residuals are brief (Holt re-levels within a few
            // samples), so HTM's 10 dilutes them (measured on NAB: 14.8 with 10, 33.1 with 3).
            likelihood: AnomalyLikelihood::new(8640, 3, 300),
            combine,
        }
    }

    /// The raw residual score: the surprise of the one-step standardised residual.
    fn residual_score(&mut self, x: f64) -> f64 {
        let score = match self.holt.one_step() {
            Some(f) => {
                let z = (x - f.mean).abs() / f.variance.sqrt().max(1e-9);
                surprise(2.0 * normal_tail(z))
            }
            None => 0.0,
        };
        self.holt.update(x);
        score
    }
}

/// Surprise of a tail probability on the likelihood's scale: -ln(p) / ln(1e10), in [0, 1]. Usual
/// values stay near 0 and rare ones stand out, which is what the likelihood step needs (a raw score
/// spread evenly over [0, 1] drowns single surprises in its own noise).
pub fn surprise(p: f64) -> f64 {
    (p.max(1e-300).ln() / -23.025_850_929_940_457).clamp(0.0, 1.0)
}

impl StreamingDetector for Ensemble {
    fn score(&mut self, x: f64) -> f64 {
        let r = self.residual_score(x);
        let f = self.forest.score(x);
        let raw = match self.combine {
            Combine::Max => r.max(f),
            Combine::Mean => 0.5 * (r + f),
            Combine::ResidualOnly => r,
            Combine::ForestOnly => f,
        };
        self.likelihood.update(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::iforest::SplitMix64;

    #[test]
    fn a_level_shift_scores_above_everything_before_it() {
        let mut d = Ensemble::new(1, Combine::ResidualOnly);
        let mut rng = SplitMix64::new(4);
        let mut before: f64 = 0.0;
        for _ in 0..2000 {
            before = before.max(d.score(50.0 + rng.next_f64()));
        }
        let mut after: f64 = 0.0;
        for _ in 0..5 {
            after = after.max(d.score(80.0 + rng.next_f64()));
        }
        assert!(after > before, "shift {after} vs usual max {before}");
    }

    #[test]
    fn surprise_is_zero_for_certain_and_grows_for_rare() {
        assert_eq!(surprise(1.0), 0.0);
        assert!(surprise(1e-5) > surprise(1e-2));
        assert_eq!(surprise(0.0), 1.0);
    }
}

//! One metric's anomaly score, as the engine computes it: the metric's novelty detector
//! (`Novelty`: a value or a pattern this metric has not shown before, reported at its onset), and
//! values very far from the metric's long-run level for as long as they stay there. The metric's
//! forecaster, which the failure probability uses, learns here too.
//!
//! The novelty detector replaced the surprise of the value against the metric's long-run level
//! passed through an anomaly likelihood (Ahmad et al. 2017), which scored 45.3 on NAB's standard
//! profile against the novelty detector's 70.7 (docs/BENCHMARKS.md, NAB).

use super::{Novelty, NoveltyConfig};
use crate::forecast::Holt;

/// Exponentially weighted mean and variance.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct EwStats {
    mean: f64,
    var: f64,
    n: u64,
    decay: f64,
}

impl EwStats {
    fn new(window: f64) -> Self {
        Self {
            mean: 0.0,
            var: 0.0,
            n: 0,
            decay: 1.0 / window,
        }
    }

    /// Standardised distance of `x` before learning it (None until a few values were seen).
    fn z_then_learn(&mut self, x: f64) -> Option<f64> {
        let z = (self.n >= 10).then(|| (x - self.mean).abs() / self.var.sqrt().max(1e-9));
        self.n += 1;
        let w = (1.0 / self.n as f64).max(self.decay);
        let d = x - self.mean;
        self.mean += w * d;
        self.var = (1.0 - w) * (self.var + w * d * d);
        z
    }
}

/// Surprise of a tail probability on the likelihood's scale: -ln(p) / ln(1e10), in [0, 1]. Usual
/// values stay near 0 and rare ones stand out, which is what the likelihood step needs (a raw score
/// spread evenly over [0, 1] drowns single surprises in its own noise).
pub fn surprise(p: f64) -> f64 {
    (p.max(1e-300).ln() / -23.025_850_929_940_457).clamp(0.0, 1.0)
}

/// The anomaly state of one metric.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MetricScorer {
    pub holt: Holt,
    novelty: Novelty,
    level: EwStats,
}

/// A value this many standard deviations from its metric's long-run level (an exponentially
/// weighted mean and variance over about `LEVEL_WINDOW` samples) scores `FAR_SCORE` on every sample
/// it stays there, resting or not: novelty reports an onset once, but on many metrics at once (a
/// machine, SMD) a far excursion is worth reporting while it lasts. Measured (SMD composite F1 /
/// NAB standard, `augur eval smd`, `augur eval nab`): without the rule 0.470 / 70.69; at 15 standard
/// deviations 0.691 / 68.94, 20 0.681 / 70.55, 25 0.674 / 70.64, 30 0.635 / 70.74, 40 0.595 / 70.69
/// (with 1,024 remembered shapes per metric; with today's 512, 25 gives 0.672 / 71.46).
const FAR_Z: f64 = 25.0;
const FAR_SCORE: f64 = 0.9999;
const LEVEL_WINDOW: f64 = 2000.0;

impl MetricScorer {
    /// Bytes this scorer may come to hold (see [`Novelty::max_bytes`]).
    pub fn max_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.novelty.max_bytes()
    }

    /// `learning`: samples the novelty detector learns before it reports anything.
    pub fn new(holt: Holt, learning: usize, novelty: NoveltyConfig) -> Self {
        Self {
            holt,
            novelty: Novelty::with_config(learning, novelty),
            level: EwStats::new(LEVEL_WINDOW),
        }
    }

    /// Takes the next value; returns its anomaly score in [0, 1] (the forecaster learns it too).
    /// A value that is not finite scores 0 and is not learned.
    pub fn update(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return 0.0;
        }
        self.holt.update(x);
        let score = self.novelty.update(x);
        if self.level.z_then_learn(x).is_some_and(|z| z > FAR_Z) {
            score.max(FAR_SCORE)
        } else {
            score
        }
    }
}

impl super::StreamingDetector for MetricScorer {
    fn score(&mut self, x: f64) -> f64 {
        self.update(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::iforest::SplitMix64;

    #[test]
    fn a_level_shift_scores_above_everything_before_it() {
        let mut d = MetricScorer::new(Holt::new(0.5, 0.01), 300, NoveltyConfig::default());
        let mut rng = SplitMix64::new(4);
        let mut before: f64 = 0.0;
        for _ in 0..2000 {
            before = before.max(d.update(50.0 + rng.next_f64()));
        }
        let mut after: f64 = 0.0;
        for _ in 0..5 {
            after = after.max(d.update(80.0 + rng.next_f64()));
        }
        assert!(after > before, "shift {after} vs usual max {before}");
        assert!(d.holt.seen() > 2000);
    }

    #[test]
    fn a_far_excursion_scores_on_every_far_sample_though_novelty_rests() {
        let mut d = MetricScorer::new(Holt::new(0.5, 0.01), 300, NoveltyConfig::default());
        let mut rng = SplitMix64::new(5);
        for _ in 0..3000 {
            d.update(50.0 + rng.next_f64());
        }
        let far: Vec<f64> = (0..3).map(|_| d.update(1000.0)).collect();
        assert!(far.iter().all(|s| *s >= FAR_SCORE), "{far:?}");
        // Without the rule the second and third would be 0 (the novelty detector rests).
        let mut n = Novelty::new(300);
        let mut rng = SplitMix64::new(5);
        for _ in 0..3000 {
            n.update(50.0 + rng.next_f64());
        }
        assert!(n.update(1000.0) >= 0.5);
        assert_eq!(n.update(1000.0), 0.0);
        assert_eq!(d.update(f64::NAN), 0.0);
    }

    #[test]
    fn surprise_is_zero_for_certain_and_grows_for_rare() {
        assert_eq!(surprise(1.0), 0.0);
        assert!(surprise(1e-5) > surprise(1e-2));
        assert_eq!(surprise(0.0), 1.0);
    }
}

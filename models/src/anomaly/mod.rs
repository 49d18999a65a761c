//! Anomaly detectors. Each is online: `score(x)` returns the anomaly score of `x` given only what
//! came before it, then learns from `x`.

pub mod gaussian;
pub mod iforest;
pub mod likelihood;
pub mod novelty;
pub mod scorer;

pub use gaussian::WindowedGaussian;
pub use iforest::{IsolationForest, StreamingIsolationForest};
pub use likelihood::AnomalyLikelihood;
pub use novelty::{Novelty, NoveltyConfig};
pub use scorer::MetricScorer;

/// A detector over one univariate series.
pub trait StreamingDetector {
    /// Scores `x` in [0, 1] (higher is more anomalous) using only earlier values, then learns `x`.
    fn score(&mut self, x: f64) -> f64;
}

/// The standard normal upper tail P(Z > z).
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (W. J. Cody's rational approximations via the Numerical Recipes
/// Chebyshev form; absolute error below 1.2e-7, plenty for scores).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_tail(-1.0) - 0.841_344_7).abs() < 1e-6);
    }
}

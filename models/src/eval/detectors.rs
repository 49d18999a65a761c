//! The detectors compared in evaluations, by name, so every evaluation runs the same set in one go.

use crate::anomaly::{
    Combine, Ensemble, StreamingDetector, StreamingIsolationForest, WindowedGaussian,
};

/// A detector evaluated on univariate series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// augur's anomaly path today: Holt forecast-residual surprise, then the likelihood step.
    Augur,
    /// The same with the Isolation Forest's raw score combined by max before the likelihood step.
    AugurWithForest,
    /// NAB's windowed Gaussian baseline (window 6400, step 100).
    WindowedGaussian,
    /// The streaming Isolation Forest alone, raw scores.
    IsolationForest,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 4] = [
        DetectorKind::Augur,
        DetectorKind::AugurWithForest,
        DetectorKind::WindowedGaussian,
        DetectorKind::IsolationForest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Augur => "augur",
            DetectorKind::AugurWithForest => "augur_with_forest",
            DetectorKind::WindowedGaussian => "windowed_gaussian",
            DetectorKind::IsolationForest => "isolation_forest",
        }
    }

    /// A fresh detector (seeded).
    pub fn build(self, seed: u64) -> Box<dyn StreamingDetector + Send> {
        match self {
            DetectorKind::Augur => Box::new(Ensemble::new(seed, Combine::ResidualOnly)),
            DetectorKind::AugurWithForest => Box::new(Ensemble::new(seed, Combine::Max)),
            DetectorKind::WindowedGaussian => Box::new(WindowedGaussian::new(6400, 100)),
            DetectorKind::IsolationForest => Box::new(StreamingIsolationForest::new(seed)),
        }
    }

    /// Scores a whole series online (each score uses only the values before it).
    pub fn run(self, values: &[f64], seed: u64) -> Vec<f64> {
        let mut d = self.build(seed);
        values.iter().map(|&v| d.score(v)).collect()
    }
}

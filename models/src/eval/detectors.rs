//! The detectors compared in evaluations, by name, so every evaluation runs the same set in one go.

use crate::anomaly::{MetricScorer, StreamingDetector, StreamingIsolationForest, WindowedGaussian};
use crate::forecast::Holt;

/// A detector evaluated on univariate series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// augur's per-metric anomaly score (`MetricScorer` with the engine's settings: the surprise of
    /// the value against the metric's long-run level, then the anomaly likelihood).
    Augur,
    /// NAB's windowed Gaussian baseline (window 6400, step 100).
    WindowedGaussian,
    /// The streaming Isolation Forest alone, raw scores.
    IsolationForest,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 3] = [
        DetectorKind::Augur,
        DetectorKind::WindowedGaussian,
        DetectorKind::IsolationForest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Augur => "augur",
            DetectorKind::WindowedGaussian => "windowed_gaussian",
            DetectorKind::IsolationForest => "isolation_forest",
        }
    }

    /// A fresh detector (seeded).
    pub fn build(self, seed: u64) -> Box<dyn StreamingDetector + Send> {
        match self {
            DetectorKind::Augur => Box::new(MetricScorer::new(
                Holt::new(0.5, 0.01),
                crate::anomaly::scorer::DEFAULT_RAW,
                300,
            )),
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

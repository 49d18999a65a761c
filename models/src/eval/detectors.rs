//! The detectors compared in evaluations, by name, so every evaluation runs the same set in one go.

use crate::anomaly::{
    MetricScorer, NoveltyConfig, StreamingDetector, StreamingIsolationForest, WindowedGaussian,
};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{EngineConfig, ResourceEngine};
use crate::forecast::Holt;
use crate::training::{ResourceHistory, TrainConfig, train};

/// A detector evaluated on univariate series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// augur's per-metric anomaly score (`MetricScorer` with the engine's settings: the surprise of
    /// the value against the metric's long-run level, then the anomaly likelihood).
    Augur,
    /// augur's engine on the series (metric "value"), with models trained on the probationary
    /// period (NAB's first 15 %), as the agent's trainer trains them from history.
    AugurTrained,
    /// NAB's windowed Gaussian baseline (window 6400, step 100).
    WindowedGaussian,
    /// The streaming Isolation Forest alone, raw scores.
    IsolationForest,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 4] = [
        DetectorKind::Augur,
        DetectorKind::AugurTrained,
        DetectorKind::WindowedGaussian,
        DetectorKind::IsolationForest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Augur => "augur (told the probationary period)",
            DetectorKind::AugurTrained => "augur (engine, told it, trained on probation)",
            DetectorKind::WindowedGaussian => "windowed_gaussian",
            DetectorKind::IsolationForest => "isolation_forest",
        }
    }

    /// A fresh detector (seeded) that learns for `learning` values before it reports anything
    /// (where it has such a period); `AugurTrained` trains its models after `train_at` values.
    fn build(
        self,
        seed: u64,
        learning: usize,
        train_at: usize,
        novelty: NoveltyConfig,
    ) -> Box<dyn StreamingDetector + Send> {
        match self {
            DetectorKind::AugurTrained => Box::new(EngineDetector {
                engine: ResourceEngine::new(EngineConfig {
                    limits: Vec::new(),
                    anomaly_learning: learning,
                    novelty,
                    ..EngineConfig::default()
                }),
                history: ResourceHistory::default(),
                train_at,
                seed,
                seen: 0,
            }),
            DetectorKind::Augur => {
                Box::new(MetricScorer::new(Holt::new(0.5, 0.01), learning, novelty))
            }
            DetectorKind::WindowedGaussian => Box::new(WindowedGaussian::new(6400, 100)),
            DetectorKind::IsolationForest => Box::new(StreamingIsolationForest::new(seed)),
        }
    }

    /// Scores a whole series online (each score uses only the values before it). As NAB's
    /// protocol allows, augur's detectors learn for the series' probationary period (15 %, at most
    /// 750 rows) before they report, and trained models are trained on the first 15 %.
    pub fn run(self, values: &[f64], seed: u64) -> Vec<f64> {
        self.run_with(values, seed, NoveltyConfig::default())
    }

    /// [`run`](Self::run) with other novelty settings for augur's detectors.
    pub fn run_with(self, values: &[f64], seed: u64, novelty: NoveltyConfig) -> Vec<f64> {
        let learning = super::nab::probationary_period(values.len());
        // Told the probationary period, they learn all of it before they report.
        let novelty = NoveltyConfig {
            min_learning: learning,
            ..novelty
        };
        let mut d = self.build(
            seed,
            learning,
            (values.len() as f64 * 0.15) as usize,
            novelty,
        );
        values.iter().map(|&v| d.score(v)).collect()
    }
}

/// The engine on one univariate series, trained once after `train_at` values.
struct EngineDetector {
    engine: ResourceEngine,
    history: ResourceHistory,
    train_at: usize,
    seed: u64,
    seen: usize,
}

impl StreamingDetector for EngineDetector {
    fn score(&mut self, x: f64) -> f64 {
        let t = self.seen as f64;
        self.seen += 1;
        let m = BTreeMap::from([("value".to_owned(), x)]);
        let s = self.engine.observe(t, &m).anomaly_score;
        if self.history.len() < self.train_at {
            self.history.push(t, m);
            if self.history.len() == self.train_at {
                let cfg = TrainConfig {
                    seed: self.seed,
                    min_rows: 100,
                    ..TrainConfig::default()
                };
                let models = train(
                    "nab",
                    std::slice::from_ref(&self.history),
                    1,
                    &EngineConfig::default(),
                    &cfg,
                );
                self.engine.set_models(models.ok().map(Arc::new));
                self.history = ResourceHistory::default();
                self.train_at = 0;
            }
        }
        s
    }
}

//! The Server Machine Dataset (OmniAnomaly, KDD 2019): 38 metrics per machine, one row a minute,
//! a train half (unlabelled) and a labelled test half. Scored with the composite F1 of Garg et al.
//! (2021): point-wise precision with event-wise recall, and no point adjustment (which would credit a
//! whole event for one lucky point and makes random scores look strong).

use std::collections::BTreeMap;
use std::path::Path;

use crate::anomaly::{IsolationForest, StreamingDetector, WindowedGaussian};
use crate::engine::{EngineConfig, ResourceEngine};

/// SMD's metric names, in column order (per the maintainers).
pub const METRICS: [&str; 38] = [
    "cpu_r",
    "load_1",
    "load_5",
    "load_15",
    "mem_shmem",
    "mem_u",
    "mem_u_e",
    "total_mem",
    "disk_q",
    "disk_r",
    "disk_rb",
    "disk_svc",
    "disk_u",
    "disk_w",
    "disk_wa",
    "disk_wb",
    "si",
    "so",
    "eth1_fi",
    "eth1_fo",
    "eth1_pi",
    "eth1_po",
    "tcp_tw",
    "tcp_use",
    "active_opens",
    "curr_estab",
    "in_errs",
    "in_segs",
    "listen_overflows",
    "out_rsts",
    "out_segs",
    "passive_opens",
    "retransegs",
    "tcp_timeouts",
    "udp_in_dg",
    "udp_out_dg",
    "udp_rcv_buf_errs",
    "udp_snd_buf_errs",
];

/// One machine's data.
#[derive(Clone, Debug)]
pub struct Machine {
    pub name: String,
    pub train: Vec<Vec<f64>>,
    pub test: Vec<Vec<f64>>,
    pub labels: Vec<bool>,
}

/// Why the data could not be read (shared by every evaluation).
pub use super::DataError as SmdError;
use super::read;

fn rows(path: &Path) -> Result<Vec<Vec<f64>>, SmdError> {
    read(path)?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let row: Result<Vec<f64>, _> = l.split(',').map(|v| v.trim().parse::<f64>()).collect();
            match row {
                Ok(r) if r.len() == METRICS.len() => Ok(r),
                Ok(r) => Err(SmdError::Format {
                    path: path.to_owned(),
                    reason: format!(
                        "line {}: {} columns, expected {}",
                        n + 1,
                        r.len(),
                        METRICS.len()
                    ),
                }),
                Err(e) => Err(SmdError::Format {
                    path: path.to_owned(),
                    reason: format!("line {}: {e}", n + 1),
                }),
            }
        })
        .collect()
}

/// Reads every machine that has train, test and label files, sorted by name.
pub fn load(root: &Path) -> Result<Vec<Machine>, SmdError> {
    let dir = root.join("test");
    let entries = std::fs::read_dir(&dir).map_err(|source| SmdError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".csv"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let train = rows(&root.join("train").join(format!("{name}.csv")))?;
        let test = rows(&root.join("test").join(format!("{name}.csv")))?;
        let label_path = root.join("test_label").join(format!("{name}.txt"));
        let labels: Vec<bool> = read(&label_path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim() == "1")
            .collect();
        if labels.len() != test.len() {
            return Err(SmdError::Format {
                path: label_path,
                reason: format!("{} labels for {} test rows", labels.len(), test.len()),
            });
        }
        out.push(Machine {
            name,
            train,
            test,
            labels,
        });
    }
    Ok(out)
}

/// Composite F1 at one threshold, and its parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompositeF1 {
    pub f1: f64,
    pub point_precision: f64,
    pub event_recall: f64,
    pub threshold: f64,
}

/// The best composite F1 over all thresholds, for scores and labels pooled over machines (one
/// threshold for all). Events are maximal runs of anomalous rows, never spanning two machines.
pub fn best_composite_f1(parts: &[(Vec<f64>, Vec<bool>)]) -> CompositeF1 {
    // Each event's best score: detected at threshold t when its max >= t.
    let mut event_max = Vec::new();
    let mut points: Vec<(f64, bool)> = Vec::new();
    for (scores, labels) in parts {
        let mut current: Option<f64> = None;
        for (s, &l) in scores.iter().zip(labels) {
            points.push((*s, l));
            match (l, current) {
                (true, Some(m)) => current = Some(m.max(*s)),
                (true, None) => current = Some(*s),
                (false, Some(m)) => {
                    event_max.push(m);
                    current = None;
                }
                (false, None) => {}
            }
        }
        if let Some(m) = current {
            event_max.push(m);
        }
    }
    points.sort_by(|a, b| b.0.total_cmp(&a.0));
    event_max.sort_by(|a, b| b.total_cmp(a));
    let events = event_max.len().max(1) as f64;
    let mut best = CompositeF1 {
        f1: 0.0,
        point_precision: 0.0,
        event_recall: 0.0,
        threshold: f64::INFINITY,
    };
    let (mut tp, mut predicted, mut detected) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < points.len() {
        let t = points[i].0;
        while i < points.len() && points[i].0 == t {
            predicted += 1;
            tp += usize::from(points[i].1);
            i += 1;
        }
        while detected < event_max.len() && event_max[detected] >= t {
            detected += 1;
        }
        let p = tp as f64 / predicted as f64;
        let r = detected as f64 / events;
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        if f1 > best.f1 {
            best = CompositeF1 {
                f1,
                point_precision: p,
                event_recall: r,
                threshold: t,
            };
        }
    }
    best
}

/// A multivariate detector evaluated on SMD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SmdDetector {
    /// augur's engine (every metric's anomaly likelihood; the resource's anomaly score).
    Augur,
    /// augur's engine with models trained on the train half (burn MLP residuals, Isolation Forest),
    /// as the agent's trainer would train them from history.
    AugurTrained,
    /// NAB's windowed Gaussian per metric, the largest score over metrics.
    WindowedGaussian,
    /// An Isolation Forest fitted on the train half, scoring each test row's 38 metrics.
    IsolationForest,
}

impl SmdDetector {
    pub const ALL: [SmdDetector; 4] = [
        SmdDetector::Augur,
        SmdDetector::AugurTrained,
        SmdDetector::WindowedGaussian,
        SmdDetector::IsolationForest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SmdDetector::Augur => "augur (online models only)",
            SmdDetector::AugurTrained => "augur (with trained models)",
            SmdDetector::WindowedGaussian => "windowed_gaussian (max over metrics)",
            SmdDetector::IsolationForest => "isolation_forest (fit on train)",
        }
    }

    /// Scores the test half, having seen the train half first. Online: each test score uses only
    /// the train half and the test rows up to it.
    pub fn score(self, m: &Machine, seed: u64) -> Vec<f64> {
        match self {
            SmdDetector::Augur | SmdDetector::AugurTrained => {
                let config = EngineConfig {
                    limits: Vec::new(),
                    ..EngineConfig::default()
                };
                let mut e = ResourceEngine::new(config.clone());
                let row_metrics = |row: &Vec<f64>| -> BTreeMap<String, f64> {
                    METRICS
                        .iter()
                        .zip(row)
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect()
                };
                let mut t = 0.0;
                let mut history = crate::training::ResourceHistory::default();
                for row in &m.train {
                    t += 60.0;
                    let metrics = row_metrics(row);
                    e.observe(t, &metrics);
                    history.push(t, metrics);
                }
                if self == SmdDetector::AugurTrained {
                    let cfg = crate::training::TrainConfig {
                        seed,
                        ..Default::default()
                    };
                    let models = crate::training::train("smd", &[history], 1, &config, &cfg).ok();
                    e.set_models(models.map(std::sync::Arc::new));
                }
                m.test
                    .iter()
                    .map(|row| {
                        t += 60.0;
                        e.observe(t, &row_metrics(row)).anomaly_score
                    })
                    .collect()
            }
            SmdDetector::WindowedGaussian => {
                let mut ds: Vec<WindowedGaussian> = (0..METRICS.len())
                    .map(|_| WindowedGaussian::new(6400, 100))
                    .collect();
                let mut step = |row: &Vec<f64>| {
                    ds.iter_mut()
                        .zip(row)
                        .map(|(d, v)| d.score(*v))
                        .fold(0.0, f64::max)
                };
                for row in &m.train {
                    step(row);
                }
                m.test.iter().map(step).collect()
            }
            SmdDetector::IsolationForest => {
                let forest = IsolationForest::fit(&m.train, 100, 256, seed);
                m.test.iter().map(|r| forest.score(r)).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn composite_f1_uses_point_precision_and_event_recall() {
        // Two events; the detector hits one point of the first event and one false point.
        let labels = vec![
            false, true, true, true, false, false, true, true, false, false,
        ];
        let scores = vec![0.0, 0.9, 0.1, 0.1, 0.0, 0.8, 0.2, 0.2, 0.0, 0.0];
        let best = best_composite_f1(&[(scores, labels)]);
        // At 0.9: P = 1, R = 1/2 -> 0.667. At 0.2: P = 3/4, R = 1 -> 0.857. At 0.1: five of the six
        // points flagged are anomalous, P = 5/6, R = 1 -> 10/11, the best.
        assert!((best.f1 - 10.0 / 11.0).abs() < 1e-9, "{best:?}");
        assert_eq!(best.threshold, 0.1);
    }

    #[test]
    fn a_perfect_detector_scores_one() {
        let labels = vec![false, true, true, false, true];
        let scores: Vec<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
        assert_eq!(best_composite_f1(&[(scores, labels)]).f1, 1.0);
    }

    #[test]
    fn reads_the_published_machines() {
        let Some(dir) = std::env::var_os("EVAL_DATA").map(PathBuf::from) else {
            eprintln!("EVAL_DATA not set: SMD loading skipped");
            return;
        };
        let machines = load(&dir.join("smd")).expect("SMD");
        assert_eq!(machines.len(), 8);
        let test_rows: usize = machines.iter().map(|m| m.test.len()).sum();
        assert_eq!(
            test_rows, 189_569,
            "the README's count of staged test points"
        );
        let anomalous = machines
            .iter()
            .flat_map(|m| &m.labels)
            .filter(|l| **l)
            .count();
        assert!((anomalous as f64 / test_rows as f64 - 0.0649).abs() < 0.0005);
    }
}

//! The Numenta Anomaly Benchmark's scoring rules, re-implemented (NAB's own code is Python).
//!
//! Per data file, each row's anomaly score is compared with a threshold; a detection inside a label
//! window earns a reward that shrinks the later it comes (only the earliest detection per window
//! counts), a window without a detection costs `fn_weight`, and a detection outside every window
//! costs up to `fp_weight`, less if it comes just after a window. Detections in the probationary
//! period (the first 15 % of a file, at most 750 rows) are ignored. The corpus score is normalised so
//! that detecting nothing scores 0 and detecting every window at its first row scores 100.

use std::collections::BTreeMap;
use std::path::Path;

/// A profile's costs (NAB `config/profiles.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostMatrix {
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

/// NAB's three application profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    Standard,
    RewardLowFp,
    RewardLowFn,
}

impl Profile {
    pub const ALL: [Profile; 3] = [
        Profile::Standard,
        Profile::RewardLowFp,
        Profile::RewardLowFn,
    ];

    pub fn costs(self) -> CostMatrix {
        match self {
            Profile::Standard => CostMatrix {
                tp_weight: 1.0,
                fp_weight: 0.11,
                fn_weight: 1.0,
            },
            Profile::RewardLowFp => CostMatrix {
                tp_weight: 1.0,
                fp_weight: 0.22,
                fn_weight: 1.0,
            },
            Profile::RewardLowFn => CostMatrix {
                tp_weight: 1.0,
                fp_weight: 0.11,
                fn_weight: 2.0,
            },
        }
    }

    /// NAB's name for the profile.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::RewardLowFp => "reward_low_FP_rate",
            Profile::RewardLowFn => "reward_low_FN_rate",
        }
    }
}

/// NAB's `probationaryPercent`.
pub const PROBATIONARY_PERCENT: f64 = 0.15;

/// Rows at the start of a file whose detections are ignored.
pub fn probationary_period(rows: usize) -> usize {
    let by_share = (PROBATIONARY_PERCENT * rows as f64).floor();
    by_share.min(PROBATIONARY_PERCENT * 5000.0) as usize
}

/// NAB's scaled sigmoid: +0.987 at a window's first row, 0 at its end, -1 well after it.
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * relative_position).exp()) - 1.0
    }
}

/// One file's rows with the label windows as inclusive row ranges.
#[derive(Clone, Debug)]
pub struct LabelledFile {
    /// Path relative to the data folder, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: String,
    pub rows: usize,
    /// Inclusive `(first_row, last_row)` of each window, in time order.
    pub windows: Vec<(usize, usize)>,
}

impl LabelledFile {
    /// 1 inside a window, 0 outside: the "perfect" detector's scores.
    pub fn labels(&self) -> Vec<f64> {
        let mut l = vec![0.0; self.rows];
        for &(a, b) in &self.windows {
            for v in &mut l[a..=b] {
                *v = 1.0;
            }
        }
        l
    }
}

/// A row's contribution if it is a detection: its window (if inside one) and its unweighted score.
#[derive(Clone, Copy, Debug)]
struct Point {
    window: Option<usize>,
    /// Unweighted sigmoid score (positive inside a window, negative outside).
    unweighted: f64,
}

/// Pre-computes every row's contribution (NAB's sweep), independent of the threshold.
fn sweep(file: &LabelledFile) -> Vec<Point> {
    let mut points = Vec::with_capacity(file.rows);
    let mut next = 0;
    let mut current: Option<usize> = None;
    let mut previous: Option<usize> = None;
    for i in 0..file.rows {
        if current.is_none() && next < file.windows.len() && file.windows[next].0 == i {
            current = Some(next);
            next += 1;
        }
        let p = match current {
            Some(w) => {
                let (a, b) = file.windows[w];
                let width = (b - a + 1) as f64;
                let position = -((b as f64) - i as f64 + 1.0) / width;
                Point {
                    window: Some(w),
                    unweighted: scaled_sigmoid(position),
                }
            }
            None => match previous {
                None => Point {
                    window: None,
                    unweighted: -1.0,
                },
                Some(w) => {
                    let (a, b) = file.windows[w];
                    let width = (b - a + 1) as f64;
                    let position = (b as f64 - i as f64).abs() / (width - 1.0);
                    Point {
                        window: None,
                        unweighted: scaled_sigmoid(position),
                    }
                }
            },
        };
        points.push(p);
        if let Some(w) = current
            && file.windows[w].1 == i
        {
            previous = Some(w);
            current = None;
        }
    }
    points
}

/// Counts and raw score of one file at one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileScore {
    pub raw: f64,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

/// Scores one file at one threshold under `costs`.
pub fn score_file(
    file: &LabelledFile,
    scores: &[f64],
    threshold: f64,
    costs: CostMatrix,
) -> FileScore {
    assert_eq!(scores.len(), file.rows, "{}: one score per row", file.name);
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probationary_period(file.rows);
    let mut best = vec![-costs.fn_weight; file.windows.len()];
    let mut detected = vec![false; file.windows.len()];
    let mut out = FileScore::default();
    let mut fp_sum = 0.0;
    for (i, p) in sweep(file).into_iter().enumerate() {
        if i < probation || scores[i] < threshold {
            continue;
        }
        match p.window {
            Some(w) => {
                let weighted = p.unweighted * costs.tp_weight / max_tp;
                best[w] = best[w].max(weighted);
                detected[w] = true;
            }
            None => {
                fp_sum += p.unweighted * costs.fp_weight;
                out.fp += 1;
            }
        }
    }
    out.tp = detected.iter().filter(|d| **d).count();
    out.fn_ = detected.len() - out.tp;
    out.raw = best.iter().sum::<f64>() + fp_sum;
    out
}

/// The corpus result of one detector under one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct CorpusScore {
    pub profile: Profile,
    pub threshold: f64,
    /// Normalised: 0 = detect nothing, 100 = perfect.
    pub score: f64,
    pub raw: f64,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

/// Scores a corpus (one score vector per file, in the same order) at a fixed threshold.
pub fn score_corpus(
    files: &[LabelledFile],
    scores: &[Vec<f64>],
    threshold: f64,
    profile: Profile,
) -> CorpusScore {
    let costs = profile.costs();
    let (mut raw, mut null, mut perfect) = (0.0, 0.0, 0.0);
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (file, s) in files.iter().zip(scores) {
        let r = score_file(file, s, threshold, costs);
        raw += r.raw;
        tp += r.tp;
        fp += r.fp;
        fn_ += r.fn_;
        null += score_file(file, &vec![0.0; file.rows], 0.5, costs).raw;
        perfect += score_file(file, &file.labels(), 0.5, costs).raw;
    }
    CorpusScore {
        profile,
        threshold,
        score: 100.0 * (raw - null) / (perfect - null),
        raw,
        tp,
        fp,
        fn_,
    }
}

/// Finds the threshold that maximises the corpus score (NAB tunes each detector's threshold per
/// profile this way) by sweeping every distinct score, high to low, updating the total incrementally.
pub fn optimise_threshold(
    files: &[LabelledFile],
    scores: &[Vec<f64>],
    profile: Profile,
) -> CorpusScore {
    let costs = profile.costs();
    let max_tp = scaled_sigmoid(-1.0);
    // (score, file, window or usize::MAX for a false positive, weighted contribution)
    let mut events: Vec<(f64, usize, usize, f64)> = Vec::new();
    let mut window_base = Vec::with_capacity(files.len());
    let mut n_windows = 0;
    for (f, (file, s)) in files.iter().zip(scores).enumerate() {
        window_base.push(n_windows);
        let probation = probationary_period(file.rows);
        for (i, p) in sweep(file).into_iter().enumerate() {
            if i < probation {
                continue;
            }
            match p.window {
                Some(w) => events.push((
                    s[i],
                    f,
                    n_windows + w,
                    p.unweighted * costs.tp_weight / max_tp,
                )),
                None => events.push((s[i], f, usize::MAX, p.unweighted * costs.fp_weight)),
            }
        }
        n_windows += file.windows.len();
    }
    events.sort_by(|a, b| b.0.total_cmp(&a.0));
    let null = -costs.fn_weight * n_windows as f64;
    let perfect: f64 = files
        .iter()
        .map(|file| score_file(file, &file.labels(), 0.5, costs).raw)
        .sum();
    let mut best = vec![-costs.fn_weight; n_windows];
    let mut total = null;
    let mut best_total = null;
    let mut best_threshold = f64::INFINITY;
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while i < events.len() && events[i].0 == t {
            let (_, _, w, v) = events[i];
            if w == usize::MAX {
                total += v;
            } else if v > best[w] {
                total += v - best[w];
                best[w] = v;
            }
            i += 1;
        }
        if total > best_total {
            best_total = total;
            best_threshold = t;
        }
    }
    let mut result = score_corpus(files, scores, best_threshold, profile);
    // Keep the exact normalisation of the sweep (equal to score_corpus at that threshold).
    result.score = 100.0 * (best_total - null) / (perfect - null);
    result
}

/// Why the NAB corpus could not be read.
/// Why the data could not be read (shared by every evaluation).
pub use super::DataError as NabError;
use super::read;

/// One NAB data file: its values and labels.
#[derive(Clone, Debug)]
pub struct NabSeries {
    pub file: LabelledFile,
    /// Row timestamps as written (`YYYY-MM-DD HH:MM:SS`).
    pub timestamps: Vec<String>,
    pub values: Vec<f64>,
}

/// Reads every data file under `root/data` with its windows from `root/labels/combined_windows.json`,
/// sorted by name.
pub fn load_corpus(root: &Path) -> Result<Vec<NabSeries>, NabError> {
    let windows_path = root.join("labels/combined_windows.json");
    let windows: BTreeMap<String, Vec<Vec<String>>> = serde_json::from_str(&read(&windows_path)?)
        .map_err(|e| NabError::Format {
        path: windows_path.clone(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(windows.len());
    for (name, wins) in &windows {
        let path = root.join("data").join(name);
        let text = read(&path)?;
        let mut timestamps = Vec::new();
        let mut values = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            let Some((ts, v)) = line.split_once(',') else {
                continue;
            };
            let v: f64 = v.trim().parse().map_err(|_| NabError::Format {
                path: path.clone(),
                reason: format!("line {}: value {v:?} is not a number", n + 1),
            })?;
            timestamps.push(ts.trim().to_owned());
            values.push(v);
        }
        let file = LabelledFile {
            name: name.clone(),
            rows: values.len(),
            windows: window_rows(&timestamps, wins).map_err(|reason| NabError::Format {
                path: path.clone(),
                reason,
            })?,
        };
        out.push(NabSeries {
            file,
            timestamps,
            values,
        });
    }
    Ok(out)
}

/// Maps `[start, end]` timestamps to inclusive row ranges.
fn window_rows(
    timestamps: &[String],
    windows: &[Vec<String>],
) -> Result<Vec<(usize, usize)>, String> {
    let norm = |s: &str| s.get(..19).unwrap_or(s).to_owned();
    let mut out = Vec::new();
    for w in windows {
        let [a, b] = w.as_slice() else {
            return Err(format!("window {w:?} is not a [start, end] pair"));
        };
        let (a, b) = (norm(a), norm(b));
        let first = timestamps
            .iter()
            .position(|t| *t >= a)
            .ok_or(format!("window start {a} after the data"))?;
        let last = timestamps
            .iter()
            .rposition(|t| *t <= b)
            .ok_or(format!("window end {b} before the data"))?;
        out.push((first, last));
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads a detector's published per-row scores (`results/<detector>/<category>/<detector>_<file>`,
/// columns `timestamp,anomaly_score,...`) for every file of the corpus, in corpus order.
pub fn load_published_scores(
    root: &Path,
    detector: &str,
    corpus: &[NabSeries],
) -> Result<Vec<Vec<f64>>, NabError> {
    corpus
        .iter()
        .map(|s| {
            let (category, file) = s.file.name.split_once('/').unwrap_or(("", &s.file.name));
            let path = root
                .join("results")
                .join(detector)
                .join(category)
                .join(format!("{detector}_{file}"));
            let text = read(&path)?;
            let scores: Result<Vec<f64>, NabError> = text
                .lines()
                .skip(1)
                .map(|l| {
                    l.split(',')
                        .nth(1)
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| NabError::Format {
                            path: path.clone(),
                            reason: format!("row {l:?} lacks an anomaly_score"),
                        })
                })
                .collect();
            let scores = scores?;
            if scores.len() != s.file.rows {
                return Err(NabError::Format {
                    path,
                    reason: format!("{} scores for {} rows", scores.len(), s.file.rows),
                });
            }
            Ok(scores)
        })
        .collect()
}

/// A detector's published threshold for a profile (`config/thresholds.json`).
pub fn published_threshold(root: &Path, detector: &str, profile: Profile) -> Result<f64, NabError> {
    let path = root.join("config/thresholds.json");
    let v: serde_json::Value =
        serde_json::from_str(&read(&path)?).map_err(|e| NabError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    v[detector][profile.name()]["threshold"]
        .as_f64()
        .ok_or_else(|| NabError::Format {
            path,
            reason: format!("no threshold for {detector}/{}", profile.name()),
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn file(rows: usize, windows: Vec<(usize, usize)>) -> LabelledFile {
        LabelledFile {
            name: "t.csv".into(),
            rows,
            windows,
        }
    }

    #[test]
    fn sigmoid_shape() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_2).abs() < 1e-9);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn earliest_detection_in_a_window_earns_the_full_reward() {
        let f = file(1000, vec![(500, 599)]);
        let mut s = vec![0.0; 1000];
        s[500] = 1.0;
        s[550] = 1.0;
        let r = score_file(&f, &s, 0.5, Profile::Standard.costs());
        assert!((r.raw - 1.0).abs() < 1e-12, "{r:?}");
        assert_eq!((r.tp, r.fp, r.fn_), (1, 0, 0));
    }

    #[test]
    fn misses_and_false_positives_cost() {
        let f = file(1000, vec![(500, 599)]);
        let r = score_file(&f, &vec![0.0; 1000], 0.5, Profile::Standard.costs());
        assert_eq!(r.raw, -1.0);
        let mut s = vec![0.0; 1000];
        s[300] = 1.0; // before any window: full FP cost
        let r = score_file(&f, &s, 0.5, Profile::Standard.costs());
        assert!((r.raw - (-1.0 - 0.11)).abs() < 1e-12, "{r:?}");
        let mut s = vec![0.0; 1000];
        s[100] = 1.0; // probationary period (150 rows): ignored
        assert_eq!(score_file(&f, &s, 0.5, Profile::Standard.costs()).raw, -1.0);
    }

    #[test]
    fn optimiser_agrees_with_fixed_threshold_scoring() {
        let files = vec![
            file(1000, vec![(500, 599)]),
            file(800, vec![(300, 350), (600, 700)]),
        ];
        let mut rng = 7u64;
        let scores: Vec<Vec<f64>> = files
            .iter()
            .map(|f| {
                (0..f.rows)
                    .map(|_| {
                        rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (rng >> 11) as f64 / (1u64 << 53) as f64
                    })
                    .collect()
            })
            .collect();
        for p in Profile::ALL {
            let best = optimise_threshold(&files, &scores, p);
            let fixed = score_corpus(&files, &scores, best.threshold, p);
            assert!(
                (best.score - fixed.score).abs() < 1e-9,
                "{best:?} vs {fixed:?}"
            );
            for t in [0.1, 0.5, 0.9, 0.99] {
                assert!(score_corpus(&files, &scores, t, p).score <= best.score + 1e-9);
            }
        }
    }

    /// The evaluation data folder (`$EVAL_DATA`, e.g. `../shared/data`), or `None` when unset: the
    /// data sets are not part of augur. `.ci/run` sets it and fails when the folder is missing.
    fn eval_data() -> Option<PathBuf> {
        let dir = PathBuf::from(std::env::var_os("EVAL_DATA")?);
        assert!(
            dir.join("nab").is_dir(),
            "EVAL_DATA={} has no nab/ folder",
            dir.display()
        );
        Some(dir.join("nab"))
    }

    #[test]
    fn reproduces_numenta_htm_published_scores() {
        let Some(root) = eval_data() else {
            eprintln!("EVAL_DATA not set: NAB scorer reproduction skipped");
            return;
        };
        let corpus = load_corpus(&root).expect("NAB corpus");
        assert_eq!(corpus.len(), 58);
        assert_eq!(
            corpus.iter().map(|s| s.file.windows.len()).sum::<usize>(),
            116
        );
        let files: Vec<LabelledFile> = corpus.iter().map(|s| s.file.clone()).collect();
        let scores = load_published_scores(&root, "numenta", &corpus).expect("HTM scores");
        for (profile, published) in [
            (Profile::Standard, 70.10105611943965),
            (Profile::RewardLowFp, 63.11684160219828),
            (Profile::RewardLowFn, 74.3202443095115),
        ] {
            let t = published_threshold(&root, "numenta", profile).expect("threshold");
            let got = score_corpus(&files, &scores, t, profile);
            eprintln!(
                "{}: {:.4} (published {published:.4})",
                profile.name(),
                got.score
            );
            assert!(
                (got.score - published).abs() < 0.005,
                "{}: got {:.4}, published {published:.4} ({got:?})",
                profile.name(),
                got.score
            );
        }
    }

    #[test]
    fn augur_reaches_htm_level_on_the_standard_profile() {
        let Some(root) = eval_data() else {
            eprintln!("EVAL_DATA not set: augur's NAB score not checked");
            return;
        };
        let corpus = load_corpus(&root).expect("NAB corpus");
        let files: Vec<LabelledFile> = corpus.iter().map(|s| s.file.clone()).collect();
        let scores: Vec<Vec<f64>> = corpus
            .iter()
            .map(|s| crate::eval::detectors::DetectorKind::Augur.run(&s.values, 7))
            .collect();
        let got = optimise_threshold(&files, &scores, Profile::Standard);
        eprintln!("augur, standard profile: {:.2}", got.score);
        assert!(got.score >= 70.0, "{got:?}");
    }
}

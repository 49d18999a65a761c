//! `augur eval`: runs augur's detectors and the baselines over public labelled data in one go and
//! scores them with the data set's own rules. The data sets are not part of augur: give their path.

use std::path::Path;

use anyhow::Context as _;
use augur_models::eval::detectors::DetectorKind;
use augur_models::eval::nab::{self, CorpusScore, LabelledFile, Profile};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} files ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Maps `f` over `items` on two threads (this machine's cores), keeping the order and ticking `pb`
/// once per item.
fn par_map<T: Sync, R: Send>(items: &[T], pb: &ProgressBar, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(2).max(1))
            .map(|chunk| {
                let pb = pb.clone();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|item| {
                            let r = f(item);
                            pb.inc(1);
                            r
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("evaluation thread panicked"))
            .collect()
    })
}

/// A detector's row: its score per profile at the profile's best threshold, and its speed.
fn scored_row(
    name: &str,
    files: &[LabelledFile],
    per_file: &[Vec<f64>],
    secs: f64,
    corpus: &[nab::NabSeries],
) -> Value {
    let mut scores = serde_json::Map::new();
    let mut thresholds = serde_json::Map::new();
    for p in Profile::ALL {
        let r: CorpusScore = nab::optimise_threshold(files, per_file, p);
        scores.insert(p.name().to_owned(), json!(r.score));
        thresholds.insert(p.name().to_owned(), json!(r.threshold));
    }
    let rows_scored: usize = corpus.iter().map(|s| s.values.len()).sum();
    json!({
        "detector": name,
        "scores": scores,
        "thresholds": thresholds,
        "seconds": secs,
        "rows_per_sec": rows_scored as f64 / secs,
    })
}

/// A NAB file as telemetry: one resource (named for the file) of type `nab`, its one metric
/// `value`, at the file's own timestamps (UTC), one JSON line per row.
pub fn nab_telemetry(series: &nab::NabSeries) -> anyhow::Result<String> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let resource_id: String = series
        .file
        .name
        .trim_end_matches(".csv")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut out = String::new();
    for (ts, v) in series.timestamps.iter().zip(&series.values) {
        let t = time::PrimitiveDateTime::parse(ts, format)
            .with_context(|| format!("{}: timestamp {ts:?}", series.file.name))?
            .assume_utc();
        let record = augur_proto::TelemetryRecord {
            ts: Some(t),
            resource_id: resource_id.clone(),
            resource_type: "nab".into(),
            metrics: [("value".to_owned(), json!(v))].into_iter().collect(),
            event: None,
            labels: Default::default(),
        };
        out.push_str(&serde_json::to_string(&record)?);
        out.push('\n');
    }
    Ok(out)
}

/// The anomaly scores `augur replay` gives a NAB file converted to telemetry
/// ([`nab_telemetry`]): the product's own path, told nothing about the file (no probationary
/// period, no length), with `options` as `augur replay --config` would set them.
pub fn nab_through_replay(
    series: &nab::NabSeries,
    options: &crate::replay::ReplayOptions,
) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("telemetry.jsonl");
    let output = dir.path().join("predictions.jsonl");
    std::fs::write(&input, nab_telemetry(series)?)?;
    crate::replay::replay_with(&input, &output, false, options)?;
    let text = std::fs::read_to_string(&output)?;
    let scores: Vec<f64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["anomaly_score"].as_f64())
                .unwrap_or(0.0)
        })
        .collect();
    anyhow::ensure!(
        scores.len() == series.values.len(),
        "{}: {} predictions for {} rows",
        series.file.name,
        scores.len(),
        series.values.len()
    );
    Ok(scores)
}

/// Scores every detector on NAB with per-profile optimised thresholds (as NAB tunes its detectors),
/// re-scores Numenta HTM's published per-row scores as a check of the scorer, and lists the published
/// results beside them. The first of augur's rows is the product's path: `augur replay` on each file
/// as telemetry, with `options` (the agent's configuration); the others are told each file's
/// probationary period, as NAB's protocol allows.
pub fn nab(
    root: &Path,
    seed: u64,
    novelty: augur_models::anomaly::NoveltyConfig,
    options: &crate::replay::ReplayOptions,
    as_json: bool,
) -> anyhow::Result<()> {
    let corpus =
        nab::load_corpus(root).with_context(|| format!("reading NAB from {}", root.display()))?;
    let files: Vec<LabelledFile> = corpus.iter().map(|s| s.file.clone()).collect();
    let mut rows: Vec<Value> = Vec::new();

    {
        let what = "augur replay";
        let pb = progress(corpus.len() as u64, what);
        let started = std::time::Instant::now();
        let per_file: Vec<anyhow::Result<Vec<f64>>> =
            par_map(&corpus, &pb, |series| nab_through_replay(series, options));
        pb.finish_and_clear();
        let per_file: Vec<Vec<f64>> = per_file.into_iter().collect::<anyhow::Result<_>>()?;
        rows.push(scored_row(
            "augur (as `augur replay` runs it, told nothing)",
            &files,
            &per_file,
            started.elapsed().as_secs_f64(),
            &corpus,
        ));
    }

    // The scorer, checked against a published result in the same run.
    if let Ok(htm) = nab::load_published_scores(root, "numenta", &corpus) {
        let mut scores = serde_json::Map::new();
        for p in Profile::ALL {
            let t = nab::published_threshold(root, "numenta", p)?;
            scores.insert(
                p.name().to_owned(),
                json!(nab::score_corpus(&files, &htm, t, p).score),
            );
        }
        rows.push(
            json!({"detector": "numenta HTM (published scores, re-scored here)", "scores": scores}),
        );
    }

    for kind in DetectorKind::ALL {
        let pb = progress(corpus.len() as u64, kind.name());
        let started = std::time::Instant::now();
        let per_file: Vec<Vec<f64>> = par_map(&corpus, &pb, |series| {
            kind.run_with(&series.values, seed, novelty)
        });
        pb.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        rows.push(scored_row(kind.name(), &files, &per_file, secs, &corpus));
    }

    let published = std::fs::read_to_string(root.join("results/final_results.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    if let Some(Value::Object(p)) = &published {
        for name in ["ARTime", "numenta", "windowedGaussian", "randomCutForest"] {
            if let Some(v) = p.get(name) {
                rows.push(json!({"detector": format!("{name} (published)"), "scores": v}));
            }
        }
    }

    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"benchmark": "NAB", "seed": seed, "results": rows})
            )?
        );
        return Ok(());
    }
    println!(
        "NAB ({} files, {} windows), normalised scores (0 = detect nothing, 100 = perfect)",
        files.len(),
        files.iter().map(|f| f.windows.len()).sum::<usize>()
    );
    println!(
        "{:<50} {:>9} {:>9} {:>9}",
        "detector", "standard", "low FP", "low FN"
    );
    for r in &rows {
        let s = &r["scores"];
        let get = |k: &str| s[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "{:<50} {:>9} {:>9} {:>9}",
            r["detector"].as_str().unwrap_or(""),
            get("standard"),
            get("reward_low_FP_rate"),
            get("reward_low_FN_rate")
        );
    }
    Ok(())
}

/// What the failure-injection replay runs on.
#[derive(Clone, Debug)]
pub struct FailureRun {
    pub family: augur_models::eval::failures::Family,
    pub seed: u64,
    pub per_scenario: usize,
    pub seconds: usize,
    /// The forecaster's settings for augur's rows.
    pub forecaster: augur_models::eval::failures::Forecaster,
    /// A metric whose limit no detector is told (the failures stay where it crosses it); the
    /// trained models' history then holds one occurrence of its failure mode.
    pub withhold: Option<String>,
    /// How long every detector's raised alarm stays raised once its samples stop alarming.
    pub keep_firing_s: f64,
}

impl FailureRun {
    pub fn new(family: augur_models::eval::failures::Family, seed: u64) -> Self {
        Self {
            family,
            seed,
            per_scenario: 12,
            seconds: 5400,
            forecaster: Default::default(),
            withhold: None,
            keep_firing_s: augur_models::alarm::KEEP_FIRING_S,
        }
    }
}

/// The failure-injection replay: augur's engine, a static threshold and `predict_linear` over the
/// same seeded synthetic telemetry.
pub fn failures(run: &FailureRun, as_json: bool) -> anyhow::Result<()> {
    let r = failure_report(run)?;
    print_failures(&r, as_json)
}

/// What the failure-injection replay found: every detector's outcome on the same traces, each
/// augur row paired with predict_linear, the calibration and the trained models.
#[derive(Debug)]
pub struct FailureReport {
    pub family: augur_models::eval::failures::Family,
    pub keep_firing_s: f64,
    /// The metric whose limit no detector was told, if one.
    pub withhold: Option<String>,
    pub seed: u64,
    pub resources: usize,
    pub samples: usize,
    pub horizon_s: f64,
    /// In the order of the table: the augur rows first, predict_linear last.
    pub outcomes: Vec<augur_models::eval::failures::Outcome>,
    pub pairs: Vec<(String, augur_models::eval::failures::Paired)>,
    pub fit_seed: u64,
    pub platt: augur_models::calibration::Platt,
    pub brier_raw: f64,
    pub brier_cal: f64,
    /// Reliability tables (10 bins) of the raw and the calibrated probability on these traces.
    pub reliability_raw: Vec<augur_models::calibration::ReliabilityBin>,
    pub reliability_cal: Vec<augur_models::calibration::ReliabilityBin>,
    pub judged: usize,
    pub train_s: f64,
    pub trained_meta: augur_models::trained::ModelMeta,
}

/// Runs the failure-injection replay (see [`failures`]).
pub fn failure_report(run: &FailureRun) -> anyhow::Result<FailureReport> {
    let FailureRun {
        family,
        seed,
        per_scenario,
        seconds,
        forecaster,
        ref withhold,
        keep_firing_s,
    } = *run;
    use augur_models::calibration::{Platt, brier};
    use augur_models::eval::failures::{
        self, Alarmer, EngineAlarm, PredictLinear, StaticThreshold,
    };
    let traces = augur_models::eval::wild::generate_family(family, seed, per_scenario, seconds);
    let samples: usize = traces.iter().map(|t| t.samples.len()).sum();
    let horizon_s = 300.0;
    let limits = failures::limits_without(withhold.as_deref());
    if let Some(w) = withhold
        && limits.len() == failures::limits().len()
    {
        anyhow::bail!(
            "--withhold {w}: no limit of the replay is on that metric; the limited metrics are {}",
            failures::limits()
                .iter()
                .map(|l| l.prefix.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Calibration is fitted on other traces (another seed) and judged on these.
    let fit_seed = seed.wrapping_add(1000);
    let platt = Platt::fit(&failures::calibration_examples(
        &augur_models::eval::wild::generate_family(family, fit_seed, per_scenario, seconds),
        horizon_s,
        5,
        forecaster,
        &limits,
    ));
    let judged = failures::calibration_examples(&traces, horizon_s, 5, forecaster, &limits);
    let raw: Vec<(f64, bool)> = judged.iter().map(|&(r, _, y)| (r, y)).collect();
    let cal: Vec<(f64, bool)> = judged
        .iter()
        .map(|&(r, a, y)| (platt.apply(r, a), y))
        .collect();
    let (brier_raw, brier_cal) = (brier(&raw), brier(&cal));
    let reliability_raw = augur_models::calibration::reliability(&raw, 10);
    let reliability_cal = augur_models::calibration::reliability(&cal, 10);
    // The trained models: fitted, as the agent's trainer would, on the history of other resources
    // (the other seed's traces, failures labelled), then used on these. With a limit withheld,
    // that history holds its failure mode once.
    let train_started = std::time::Instant::now();
    let mut fit_traces =
        augur_models::eval::wild::generate_family(family, fit_seed, per_scenario, seconds);
    if let Some(w) = withhold {
        fit_traces = failures::first_occurrence_only(fit_traces, w);
    }
    let trained = augur_models::training::train(
        "host",
        &failures::as_history(&fit_traces),
        1,
        &forecaster.apply(augur_models::engine::EngineConfig {
            horizon_s,
            limits: limits.clone(),
            ..Default::default()
        }),
        &augur_models::training::TrainConfig {
            max_rows: usize::MAX,
            seed,
            ..Default::default()
        },
    )?;
    let train_s = train_started.elapsed().as_secs_f64();
    let trained_meta = trained.meta.clone();
    let trained = std::sync::Arc::new(trained);
    let alarmers: Vec<Box<dyn Alarmer + Sync>> = vec![
        Box::new(EngineAlarm {
            threshold: 0.75,
            horizon_s,
            calibration: None,
            models: Some(trained),
            forecaster,
            limits: limits.clone(),
        }),
        Box::new(EngineAlarm {
            threshold: 0.75,
            horizon_s,
            calibration: Some(platt.clone()),
            models: None,
            forecaster,
            limits: limits.clone(),
        }),
        Box::new(EngineAlarm {
            threshold: 0.75,
            horizon_s,
            calibration: None,
            models: None,
            forecaster,
            limits: limits.clone(),
        }),
        Box::new(EngineAlarm {
            threshold: 0.5,
            horizon_s,
            calibration: None,
            models: None,
            forecaster,
            limits: limits.clone(),
        }),
        Box::new(StaticThreshold {
            fraction: 0.9,
            limits: limits.clone(),
        }),
        Box::new(PredictLinear {
            window: 300,
            horizon_s,
            limits: limits.clone(),
        }),
    ];
    let pb = progress(alarmers.len() as u64, "failure replay");
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = alarmers
            .iter()
            .map(|a| {
                let (traces, pb) = (&traces, pb.clone());
                s.spawn(move || {
                    let o = failures::score(traces, a.as_ref(), horizon_s, 30.0, keep_firing_s);
                    pb.inc(1);
                    o
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scoring thread panicked"))
            .collect()
    });
    pb.finish_and_clear();
    // Every augur row against predict_linear, on the failures both catch.
    let baseline = outcomes
        .last()
        .filter(|o| o.detector.starts_with("predict_linear"));
    let pairs: Vec<(String, failures::Paired)> = baseline
        .map(|b| {
            outcomes
                .iter()
                .filter(|o| o.detector.starts_with("augur"))
                .map(|o| (o.detector.clone(), failures::paired(o, b)))
                .collect()
        })
        .unwrap_or_default();
    Ok(FailureReport {
        family,
        keep_firing_s,
        withhold: withhold.clone(),
        seed,
        resources: traces.len(),
        samples,
        horizon_s,
        outcomes,
        pairs,
        fit_seed,
        platt,
        brier_raw,
        brier_cal,
        reliability_raw,
        reliability_cal,
        judged: judged.len(),
        train_s,
        trained_meta,
    })
}

fn print_failures(r: &FailureReport, as_json: bool) -> anyhow::Result<()> {
    let FailureReport {
        family,
        keep_firing_s,
        withhold,
        seed,
        resources,
        samples,
        horizon_s,
        outcomes,
        pairs,
        fit_seed,
        platt,
        brier_raw,
        brier_cal,
        reliability_raw,
        reliability_cal,
        judged,
        train_s,
        trained_meta,
    } = r;
    if as_json {
        let rows: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "detector": o.detector, "failures": o.failures, "caught_30s_ahead": o.caught,
                    "recall": o.recall, "median_lead_s": o.median_lead_s, "false_alarms": o.false_alarms,
                    "resource_hours": o.resource_hours, "false_alarms_per_resource_hour": o.false_alarms_per_resource_hour,
                    "by_scenario": o.by_scenario.iter().map(|(k, v)| (k.clone(), json!({"caught": v.0, "failures": v.1, "false_alarms": v.2}))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"family": family.name(), "seed": seed, "samples": samples, "horizon_s": horizon_s, "results": rows,
                    "paired_with_predict_linear": pairs.iter().map(|(d, p)| json!({
                        "detector": d, "both_caught": p.both, "median_lead_s": p.median_lead_a_s,
                        "predict_linear_median_lead_s": p.median_lead_b_s,
                        "median_difference_s": p.median_difference_s,
                        "earlier": p.a_earlier, "later": p.b_earlier})).collect::<Vec<_>>(),
                    "calibration": {"fitted_on_seed": fit_seed, "weights": platt.w, "examples": platt.examples,
                        "positives": platt.positives, "brier_raw": brier_raw, "brier_calibrated": brier_cal,
                        "judged_examples": judged, "reliability_raw": reliability_raw,
                        "reliability_calibrated": reliability_cal},
                    "withheld_limit": withhold, "keep_firing_s": keep_firing_s,
                    "trained_models": {"train_seconds": train_s, "meta": trained_meta}})
            )?
        );
        return Ok(());
    }
    println!(
        "failure-injection replay ({} family): {resources} resources, {samples} samples (1 s apart), horizon {horizon_s} s, caught = alarm at least 30 s ahead; every alarm kept raised {keep_firing_s} s after its last alarming sample",
        family.name()
    );
    if let Some(w) = withhold {
        println!(
            "the limit of {w} is withheld from every detector; the trained models' history holds one of its failures"
        );
    }
    println!(
        "{:<34} {:>8} {:>8} {:>12} {:>14}",
        "detector", "caught", "recall", "median lead", "false/res-hour"
    );
    for o in outcomes {
        println!(
            "{:<34} {:>4}/{:<3} {:>8.2} {:>11} {:>14.3}",
            o.detector,
            o.caught,
            o.failures,
            o.recall,
            o.median_lead_s
                .map_or("-".to_owned(), |l| format!("{l:.0} s")),
            o.false_alarms_per_resource_hour
        );
    }
    for (d, p) in pairs {
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |l| format!("{l:.0} s"));
        println!(
            "{d} vs predict_linear on the {} failures both catch: median lead {} vs {}, median difference {}, earlier on {}, later on {}",
            p.both,
            f(p.median_lead_a_s),
            f(p.median_lead_b_s),
            f(p.median_difference_s),
            p.a_earlier,
            p.b_earlier
        );
    }
    println!(
        "calibration fitted on seed {fit_seed} ({} examples, {} failing): Brier score on these traces {brier_raw:.4} raw, {brier_cal:.4} calibrated",
        platt.examples, platt.positives
    );
    println!(
        "reliability on these traces (predicted bin: examples, mean predicted -> observed failure rate):"
    );
    let cell = |t: &[augur_models::calibration::ReliabilityBin], lo: f64| {
        t.iter()
            .find(|b| (b.lo - lo).abs() < 1e-9)
            .map_or("-".to_owned(), |b| {
                format!(
                    "{:>6}, {:.3} -> {:.3}",
                    b.count, b.mean_predicted, b.observed
                )
            })
    };
    println!("{:<12} {:>26} {:>26}", "bin", "raw", "calibrated");
    for i in 0..10 {
        let lo = f64::from(i) / 10.0;
        println!(
            "{:<12} {:>26} {:>26}",
            format!("{lo:.1}-{:.1}", lo + 0.1),
            cell(reliability_raw, lo),
            cell(reliability_cal, lo)
        );
    }
    println!(
        "trained models (seed {fit_seed}'s history, {} samples, {train_s:.1} s): MLP {}, calibration {}",
        trained_meta.rows,
        trained_meta
            .mlp
            .as_ref()
            .map_or("none".to_owned(), |m| format!(
                "MSE {:.3} vs Holt {:.3}{}",
                m.mse_mlp,
                m.mse_holt,
                if m.preferred { ", used" } else { ", not used" }
            )),
        trained_meta
            .calibration
            .as_ref()
            .map_or("none".to_owned(), |c| format!(
                "Brier {:.4} vs raw {:.4} on held-out history, {} vs {} failing examples at the alarm{}",
                c.brier_calibrated,
                c.brier_raw,
                c.alarmed_calibrated,
                c.alarmed_raw,
                if c.used { ", used" } else { ", not used" }
            ))
    );
    for l in trained_meta.patterns.iter().flat_map(|p| &p.limits) {
        println!("  learned limit: {}", l.describe());
    }
    println!();
    println!(
        "{:<26} {}",
        "scenario",
        outcomes
            .iter()
            .map(|o| format!("{:>24}", o.detector.chars().take(22).collect::<String>()))
            .collect::<String>()
    );
    let names: Vec<String> = outcomes[0].by_scenario.keys().cloned().collect();
    for n in names {
        let cells: String = outcomes
            .iter()
            .map(|o| {
                let (c, f, fa) = o.by_scenario.get(&n).copied().unwrap_or_default();
                format!("{:>24}", format!("{c}/{f} caught, {fa} false"))
            })
            .collect();
        println!("{n:<26} {cells}");
    }
    Ok(())
}

/// SMD: every detector over every machine's test half (after its train half), composite F1 at the
/// best single threshold for all machines (the same oracle threshold choice for every detector).
pub fn smd(root: &Path, seed: u64, as_json: bool) -> anyhow::Result<()> {
    use augur_models::eval::smd::{self, SmdDetector};
    let machines =
        smd::load(root).with_context(|| format!("reading SMD from {}", root.display()))?;
    let mut rows = Vec::new();
    for det in SmdDetector::ALL {
        let pb = progress(machines.len() as u64, det.name());
        let started = std::time::Instant::now();
        let parts: Vec<(Vec<f64>, Vec<bool>)> =
            par_map(&machines, &pb, |m| (det.score(m, seed), m.labels.clone()));
        pb.finish_and_clear();
        let best = smd::best_composite_f1(&parts);
        rows.push(json!({
            "detector": det.name(),
            "composite_f1": best.f1,
            "point_precision": best.point_precision,
            "event_recall": best.event_recall,
            "threshold": best.threshold,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"benchmark": "SMD", "machines": machines.len(), "seed": seed, "results": rows})
            )?
        );
        return Ok(());
    }
    let test_rows: usize = machines.iter().map(|m| m.test.len()).sum();
    println!(
        "SMD ({} machines, {test_rows} test rows): composite F1 (point-wise precision, event-wise recall, no point adjustment), best single threshold",
        machines.len()
    );
    println!(
        "{:<40} {:>9} {:>10} {:>9} {:>10}",
        "detector", "F1_c", "precision", "recall", "threshold"
    );
    for r in &rows {
        println!(
            "{:<40} {:>9.3} {:>10.3} {:>9.3} {:>10.4}",
            r["detector"].as_str().unwrap_or(""),
            r["composite_f1"].as_f64().unwrap_or(0.0),
            r["point_precision"].as_f64().unwrap_or(0.0),
            r["event_recall"].as_f64().unwrap_or(0.0),
            r["threshold"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// One file's forecasting result: (name, MLP MSE / variance, Holt MSE / variance, MLP NLL, Holt NLL).
type FileForecast = (String, f64, f64, f64, f64);

/// One file of `augur eval forecast`: the MLP trained on the first half, both models scored on the
/// second half. None when the file is too short.
fn forecast_file(
    series: &nab::NabSeries,
    config: &augur_models::forecast::mlp::MlpConfig,
    horizon: usize,
) -> Option<FileForecast> {
    use augur_models::forecast::Holt;
    use augur_models::forecast::mlp::MlpForecaster;
    let config = config.clone();
    let v = &series.values;
    let split = v.len() / 2;
    let model = MlpForecaster::train(&[&v[..split]], config.clone())?;
    let mut holt = Holt::new(
        augur_models::engine::HOLT_ALPHA,
        augur_models::engine::HOLT_BETA,
    );
    for &x in &v[..split] {
        holt.update(x);
    }
    let ts: Vec<usize> = (split..v.len().saturating_sub(horizon)).collect();
    let windows: Vec<&[f64]> = ts.iter().map(|&t| &v[..t]).collect();
    let mlp = model.forecast_batch(&windows);
    let (mut e_mlp, mut e_holt, mut nll_mlp, mut nll_holt) = (0.0, 0.0, 0.0, 0.0);
    let mut n = 0.0;
    let mut k = 0;
    for t in split..v.len() {
        if t + horizon <= v.len() && k < ts.len() && ts[k] == t {
            let truth = v[t + horizon - 1];
            if let (Some(m), Some(h)) = (mlp[k], holt.forecast(horizon as u32)) {
                e_mlp += (m.mean - truth).powi(2);
                e_holt += (h.mean - truth).powi(2);
                let nll = |f: augur_models::forecast::Forecast| {
                    let var = f.variance.max(1e-12);
                    0.5 * (var.ln() + (truth - f.mean).powi(2) / var)
                };
                nll_mlp += nll(m);
                nll_holt += nll(h);
                n += 1.0;
            }
            k += 1;
        }
        holt.update(v[t]);
    }
    let rest = &v[split..];
    let mean = rest.iter().sum::<f64>() / rest.len() as f64;
    let var = (rest.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rest.len() as f64).max(1e-12);
    (n > 0.0).then(|| {
        (
            series.file.name.clone(),
            e_mlp / n / var,
            e_holt / n / var,
            nll_mlp / n,
            nll_holt / n,
        )
    })
}

/// Forecasting on NAB's series: the burn MLP against Holt, both predicting `horizon` samples ahead
/// on the second half of every file, the MLP trained on the first half.
pub fn forecast(
    root: &Path,
    horizon: usize,
    epochs: usize,
    seed: u64,
    as_json: bool,
) -> anyhow::Result<()> {
    use augur_models::forecast::mlp::MlpConfig;
    let corpus =
        nab::load_corpus(root).with_context(|| format!("reading NAB from {}", root.display()))?;
    let pb = progress(corpus.len() as u64, "forecasting");
    let started = std::time::Instant::now();
    let config = MlpConfig {
        horizon,
        epochs,
        seed,
        ..MlpConfig::default()
    };
    let per_file: Vec<FileForecast> = par_map(&corpus, &pb, |series| {
        forecast_file(series, &config, horizon)
    })
    .into_iter()
    .flatten()
    .collect();
    pb.finish_and_clear();
    let files = per_file.len() as f64;
    let mean = |f: &dyn Fn(&FileForecast) -> f64| per_file.iter().map(f).sum::<f64>() / files;
    let mlp_mse = mean(&|r| r.1);
    let holt_mse = mean(&|r| r.2);
    let mut ratios: Vec<f64> = per_file.iter().map(|r| r.1 / r.2.max(1e-12)).collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let wins = per_file.iter().filter(|r| r.1 < r.2).count();
    let nll_mlp = mean(&|r| r.3);
    let nll_holt = mean(&|r| r.4);
    let secs = started.elapsed().as_secs_f64();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "benchmark": "NAB forecasting", "horizon": horizon, "epochs": epochs, "seed": seed,
                "files": per_file.len(), "mlp_normalised_mse": mlp_mse, "holt_normalised_mse": holt_mse,
                "median_mse_ratio_mlp_over_holt": median_ratio, "files_mlp_better": wins,
                "mlp_mean_nll": nll_mlp, "holt_mean_nll": nll_holt, "seconds": secs,
                "per_file": per_file.iter().map(|r| json!({
                    "file": r.0, "mlp_normalised_mse": r.1, "holt_normalised_mse": r.2,
                    "mlp_nll": r.3, "holt_nll": r.4,
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!(
        "NAB forecasting, {horizon} samples ahead, second half of each of {} files (MLP trained on the first half)",
        per_file.len()
    );
    println!(
        "{:<10} {:>22} {:>14}",
        "model", "MSE / series variance", "Gaussian NLL"
    );
    println!("{:<10} {:>22.4} {:>14.3}", "burn MLP", mlp_mse, nll_mlp);
    println!("{:<10} {:>22.4} {:>14.3}", "Holt", holt_mse, nll_holt);
    println!(
        "MLP better on {wins} of {} files; median MSE ratio MLP/Holt {median_ratio:.3}; {secs:.1} s",
        per_file.len()
    );
    Ok(())
}

/// One machine's columns: each metric's values, train and test.
struct FedNode {
    name: String,
    train: Vec<Vec<f64>>,
    test: Vec<Vec<f64>>,
}

fn columns(rows: &[Vec<f64>], limit: usize) -> Vec<Vec<f64>> {
    let n = rows.first().map_or(0, Vec::len);
    (0..n)
        .map(|j| rows.iter().take(limit).map(|r| r[j]).collect())
        .collect()
}

/// A forecaster's error on `series` at its horizon, every `step`-th window: the mean over the
/// non-constant series of MSE / the series' variance, and Holt's on the same windows.
fn federated_error(
    model: &augur_models::forecast::mlp::MlpForecaster,
    series: &[Vec<f64>],
    step: usize,
) -> (f64, f64) {
    let (w, h) = (model.config().window, model.config().horizon);
    let (mut sum_mlp, mut sum_holt, mut n) = (0.0, 0.0, 0usize);
    for s in series {
        if s.len() < w + h + 1 {
            continue;
        }
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / s.len() as f64;
        if var < 1e-12 {
            continue;
        }
        let ends: Vec<usize> = (w..=s.len() - h).step_by(step).collect();
        let windows: Vec<&[f64]> = ends.iter().map(|&t| &s[t - w..t]).collect();
        let forecasts = model.forecast_batch(&windows);
        let mut holt = augur_models::forecast::Holt::new(
            augur_models::engine::HOLT_ALPHA,
            augur_models::engine::HOLT_BETA,
        );
        let (mut e_mlp, mut e_holt, mut k) = (0.0, 0.0, 0usize);
        let mut fed = 0usize;
        for (i, &t) in ends.iter().enumerate() {
            while fed < t {
                holt.update(s[fed]);
                fed += 1;
            }
            let truth = s[t + h - 1];
            if let (Some(f), Some(hf)) = (&forecasts[i], holt.forecast(h as u32)) {
                e_mlp += (f.mean - truth).powi(2);
                e_holt += (hf.mean - truth).powi(2);
                k += 1;
            }
        }
        if k > 0 {
            sum_mlp += e_mlp / k as f64 / var;
            sum_holt += e_holt / k as f64 / var;
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    (sum_mlp / n, sum_holt / n)
}

/// Federated learning on SMD, each machine a node: the forecaster trained on a node's own data
/// alone, federated over `rounds` rounds (local training from the last merge, a trimmed mean
/// tolerating one bad update), and trained centrally on every node's data; each judged on every
/// node's test data (its own, and the others': what it never saw).
pub fn federation(root: &Path, rounds: usize, seed: u64, as_json: bool) -> anyhow::Result<()> {
    use augur_models::federated::{self, Rule};
    use augur_models::forecast::mlp::{MlpConfig, MlpForecaster, MlpWeights};
    const TRAIN_ROWS: usize = 8_000;
    const TEST_ROWS: usize = 4_000;
    const STEP: usize = 8;
    let machines = augur_models::eval::smd::load(root)
        .with_context(|| format!("reading SMD from {}", root.display()))?;
    let nodes: Vec<FedNode> = machines
        .iter()
        .map(|m| FedNode {
            name: m.name.clone(),
            train: columns(&m.train, TRAIN_ROWS),
            test: columns(&m.test, TEST_ROWS),
        })
        .collect();
    let config = MlpConfig {
        epochs: 4,
        seed,
        ..MlpConfig::default()
    };
    let stride = 4;
    let fit = |series: &[Vec<f64>], base: Option<&MlpWeights>| -> Option<MlpForecaster> {
        let refs: Vec<&[f64]> = series.iter().map(Vec::as_slice).collect();
        match base {
            Some(b) => MlpForecaster::train_from(b, &refs, config.clone(), stride),
            None => MlpForecaster::train_strided(&refs, config.clone(), stride),
        }
    };
    let started = std::time::Instant::now();
    let pb = progress(nodes.len() as u64, "local models");
    let local: Vec<MlpForecaster> = par_map(&nodes, &pb, |n| fit(&n.train, None))
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("a node's history is too short to train on")?;
    pb.finish_and_clear();
    let local_s = started.elapsed().as_secs_f64() / nodes.len() as f64;
    // Central: every node's training data in one model (the upper bound).
    let all: Vec<Vec<f64>> = nodes.iter().flat_map(|n| n.train.clone()).collect();
    let t0 = std::time::Instant::now();
    let central = fit(&all, None).context("central training")?;
    let central_s = t0.elapsed().as_secs_f64();
    // Federated rounds.
    let rows = |n: &FedNode| n.train.first().map_or(0, Vec::len) as u64;
    let mut merged: Option<MlpWeights> = None;
    let mut per_round = Vec::new();
    let (mut update_bytes, mut merge_s, mut round_train_s) = (0usize, 0.0, 0.0);
    // Each node's Isolation Forest, as the agent trains it on the node's history, shared in its
    // updates: the bytes it adds, and the time a merge of all of them takes.
    let forests: Vec<augur_models::trained::FeatureForest> = {
        let pb = progress(nodes.len() as u64, "forests");
        let f = par_map(&nodes, &pb, |n| {
            let mut h = augur_models::training::ResourceHistory::default();
            for j in 0..n.train.first().map_or(0, Vec::len) {
                h.push(
                    j as f64,
                    n.train
                        .iter()
                        .enumerate()
                        .map(|(k, col)| (format!("m{k:02}"), col[j])),
                );
            }
            augur_models::training::train_forest(
                &[h],
                &augur_models::training::TrainConfig {
                    seed,
                    ..Default::default()
                },
            )
        });
        pb.finish_and_clear();
        f.into_iter().flatten().collect()
    };
    let shared: Vec<federated::SharedForest> = forests
        .iter()
        .filter_map(|f| federated::share_forest(f, federated::SHARED_TREES))
        .collect();
    let t0 = std::time::Instant::now();
    let peers: Vec<(&federated::SharedForest, f64)> =
        shared.iter().skip(1).map(|f| (f, 1.0)).collect();
    let forest_merge_s = forests
        .first()
        .and_then(|own| federated::merge_forests(Some((own, 1.0)), &peers, own.trees()))
        .map(|_| t0.elapsed().as_secs_f64());
    let mut update_bytes_without_forest = 0usize;
    for r in 0..rounds {
        let pb = progress(nodes.len() as u64, &format!("federated round {}", r + 1));
        let t0 = std::time::Instant::now();
        let locals: Vec<MlpWeights> = par_map(&nodes, &pb, |n| {
            fit(&n.train, merged.as_ref()).map(MlpWeights::from)
        })
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("federated local training")?;
        pb.finish_and_clear();
        round_train_s = t0.elapsed().as_secs_f64() / nodes.len() as f64;
        let update = federated::ModelUpdate {
            resource_type: "smd".into(),
            engine: augur_models::MODEL_VERSION.into(),
            base_round: r as u64,
            round: r as u64 + 1,
            samples: rows(&nodes[0]),
            validation: federated::Validation::default(),
            mlp: Some(locals[0].clone()),
            calibration: None,
            forest: None,
            patterns: Vec::new(),
        };
        let mut body = Vec::new();
        ciborium::into_writer(&update, &mut body)?;
        update_bytes_without_forest = body.len();
        let update = federated::ModelUpdate {
            forest: shared.first().cloned(),
            ..update
        };
        let mut body = Vec::new();
        ciborium::into_writer(&update, &mut body)?;
        update_bytes = body.len();
        let t0 = std::time::Instant::now();
        let parts: Vec<(&MlpWeights, f64)> = locals
            .iter()
            .zip(&nodes)
            .map(|(m, n)| (m, federated::weight_of(rows(n), 20_000)))
            .collect();
        let next = federated::merge_mlp(&parts, Rule::TrimmedMean { f: 1 }).context("merging")?;
        merge_s = t0.elapsed().as_secs_f64();
        let model = MlpForecaster::try_from(next.clone()).map_err(anyhow::Error::msg)?;
        let own: f64 = nodes
            .iter()
            .map(|n| federated_error(&model, &n.test, STEP).0)
            .sum::<f64>()
            / nodes.len() as f64;
        per_round.push(own);
        merged = Some(next);
    }
    let federated_model =
        MlpForecaster::try_from(merged.context("no round")?).map_err(anyhow::Error::msg)?;
    // Each node's test data, judged by every model.
    let pb = progress(nodes.len() as u64, "judging");
    let judged: Vec<Value> = par_map(
        &nodes.iter().enumerate().collect::<Vec<_>>(),
        &pb,
        |(i, n)| {
            let (own_local, holt) = federated_error(&local[*i], &n.test, STEP);
            let (fed, _) = federated_error(&federated_model, &n.test, STEP);
            let (cen, _) = federated_error(&central, &n.test, STEP);
            // The other nodes' local models on this node's data: models that never saw it.
            let unseen: Vec<f64> = local
                .iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, m)| federated_error(m, &n.test, STEP).0)
                .collect();
            let unseen_local = unseen.iter().sum::<f64>() / unseen.len().max(1) as f64;
            json!({"machine": n.name, "local": own_local, "federated": fed, "central": cen,
               "holt": holt, "others_local_models": unseen_local})
        },
    );
    pb.finish_and_clear();
    // A new node's first 10 minutes (its first 600 test rows, every window): without a model
    // it has Holt only; with a cold start, the fleet's model merged from the other nodes alone
    // (the same rounds, without it: it brings nothing).
    let pb = progress(nodes.len() as u64, "cold starts");
    let cold: Vec<Value> = par_map(&(0..nodes.len()).collect::<Vec<_>>(), &pb, |&k| {
        let others: Vec<&FedNode> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, n)| n)
            .collect();
        let mut m: Option<MlpWeights> = None;
        for _ in 0..rounds {
            let locals: Option<Vec<MlpWeights>> = others
                .iter()
                .map(|n| fit(&n.train, m.as_ref()).map(MlpWeights::from))
                .collect();
            let Some(locals) = locals else {
                return json!({"machine": nodes[k].name});
            };
            let parts: Vec<(&MlpWeights, f64)> = locals
                .iter()
                .zip(&others)
                .map(|(w, n)| (w, federated::weight_of(rows(n), 20_000)))
                .collect();
            m = federated::merge_mlp(&parts, Rule::TrimmedMean { f: 1 });
        }
        let first: Vec<Vec<f64>> = nodes[k]
            .test
            .iter()
            .map(|c| c.iter().take(600).copied().collect())
            .collect();
        match m.and_then(|w| MlpForecaster::try_from(w).ok()) {
            Some(model) => {
                let (fleet, holt) = federated_error(&model, &first, 1);
                json!({"machine": nodes[k].name, "holt": holt, "fleet_model": fleet})
            }
            None => json!({"machine": nodes[k].name}),
        }
    });
    pb.finish_and_clear();
    let mean_of = |rows: &[Value], k: &str| {
        let v: Vec<f64> = rows.iter().filter_map(|r| r[k].as_f64()).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let cold_better = cold
        .iter()
        .filter(|v| v["fleet_model"].as_f64() < v["holt"].as_f64())
        .count();
    let mean =
        |k: &str| judged.iter().filter_map(|v| v[k].as_f64()).sum::<f64>() / judged.len() as f64;
    let fed_better_than_unseen = judged
        .iter()
        .filter(|v| v["federated"].as_f64() < v["others_local_models"].as_f64())
        .count();
    let report = json!({
        "benchmark": "federated forecaster on SMD (each machine a node)",
        "nodes": nodes.len(), "rounds": rounds, "seed": seed,
        "train_rows_per_node": TRAIN_ROWS, "test_rows_per_node": TEST_ROWS,
        "error": "MSE at the MLP's horizon / the test series' variance, mean over non-constant metrics",
        "mean": {"local": mean("local"), "federated": mean("federated"), "central": mean("central"),
                 "holt": mean("holt"), "others_local_models": mean("others_local_models")},
        "federated_over_central": mean("federated") / mean("central"),
        "nodes_where_federated_beats_models_that_never_saw_them": fed_better_than_unseen,
        "federated_error_by_round": per_round,
        "update_bytes": update_bytes,
        "update_bytes_without_forest": update_bytes_without_forest,
        "forest_trees_shared": federated::SHARED_TREES,
        "seconds": {"local_training_per_node": local_s, "central_training": central_s,
                    "round_training_per_node": round_train_s, "merge": merge_s,
                    "forest_merge": forest_merge_s,
                    "total": started.elapsed().as_secs_f64()},
        "machines": judged,
        "cold_start": {
            "what": "a new node's first 600 samples (10 minutes at 1 s): Holt alone (no model yet) against the model merged from the other nodes without it",
            "mean_holt": mean_of(&cold, "holt"), "mean_fleet_model": mean_of(&cold, "fleet_model"),
            "nodes_better_with_the_fleet_model": cold_better, "machines": cold,
        },
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One node of the split failure replay: what it scored with its own models, with the fleet's
/// learned limits adopted, and with models trained centrally on every node's history.
#[derive(Debug, serde::Serialize)]
pub struct SplitNode {
    pub node: String,
    /// The failure modes without a configured limit whose failures this node's history holds.
    pub modes_seen: Vec<String>,
    pub modes_unseen: Vec<String>,
    /// (caught, failures) on the modes it never saw, and false alarms per resource-hour over
    /// every scenario; local, federated, central.
    pub unseen_local: (usize, usize),
    pub unseen_federated: (usize, usize),
    pub unseen_central: (usize, usize),
    pub recall_local: f64,
    pub recall_federated: f64,
    pub recall_central: f64,
    pub fa_per_hour_local: f64,
    pub fa_per_hour_federated: f64,
    pub fa_per_hour_central: f64,
    /// Peers' learned limits offered and adopted by this node's history.
    pub offered: usize,
    pub adopted: usize,
}

/// Federated learned limits on the failure-injection replay: two failure modes have no
/// configured limit (the queue and the CPU: no detector is told theirs), and the training history
/// is split across three nodes so that one holds the queue's failures, one the CPU's and one
/// neither (the other scenarios are dealt round-robin). Each node trains its models as the agent
/// would; then adopts its peers' learned limits where its own history accepts them
/// ([`augur_models::patterns::adopt_shared`]); a central model is trained on every node's history.
/// All three are judged on other traces (`seed`; the training traces are `seed + 1000`).
pub fn federation_failures(
    family: augur_models::eval::failures::Family,
    seed: u64,
    per_scenario: usize,
    seconds: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    use augur_models::eval::failures::{self, EngineAlarm, Forecaster, Scenario, Trace};
    use std::sync::Arc;
    let horizon_s = 300.0;
    let withheld = ["queue_len", "cpu_util"];
    let limits: Vec<augur_models::engine::Limit> = failures::limits()
        .into_iter()
        .filter(|l| !withheld.contains(&l.prefix.as_str()))
        .collect();
    let engine = augur_models::engine::EngineConfig {
        horizon_s,
        limits: limits.clone(),
        ..Default::default()
    };
    // The failing scenario of each withheld metric in this family.
    let modes: [Scenario; 2] = match family {
        failures::Family::Classic => [Scenario::QueueBacklog, Scenario::CpuRunaway],
        failures::Family::Wild => [Scenario::QueueRunaway, Scenario::CpuPegged],
    };
    let fit = augur_models::eval::wild::generate_family(
        family,
        seed.wrapping_add(1000),
        per_scenario,
        seconds,
    );
    let names = ["a", "b", "c"];
    let mut split: Vec<Vec<Trace>> = vec![Vec::new(); names.len()];
    let mut next = 0;
    for t in &fit {
        match modes.iter().position(|m| *m == t.scenario) {
            // Node a holds the first mode's failures, node b the second's, node c neither.
            Some(i) => split[i].push(t.clone()),
            None => {
                split[next % names.len()].push(t.clone());
                next += 1;
            }
        }
    }
    let train_cfg = augur_models::training::TrainConfig {
        max_rows: usize::MAX,
        seed,
        ..Default::default()
    };
    let alarm = augur_models::patterns::Alarm {
        threshold: train_cfg.threshold,
        keep_firing_s: train_cfg.keep_firing_s,
    };
    let pb = progress(names.len() as u64 + 1, "training");
    let train = |traces: &[Trace]| -> anyhow::Result<augur_models::trained::TrainedModels> {
        let m = augur_models::training::train(
            "host",
            &failures::as_history(traces),
            1,
            &engine,
            &train_cfg,
        )?;
        pb.inc(1);
        Ok(m)
    };
    let (locals, central) = std::thread::scope(|s| {
        let central = s.spawn(|| train(&fit));
        let locals: Vec<_> = split.iter().map(|t| train(t)).collect();
        (locals, central.join().expect("central training panicked"))
    });
    pb.finish_and_clear();
    let locals = locals.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let central = Arc::new(central?);
    let used =
        |m: &augur_models::trained::TrainedModels| -> Vec<augur_models::trained::LearnedLimit> {
            m.meta
                .patterns
                .as_ref()
                .map(|p| p.limits.iter().filter(|l| l.used).cloned().collect())
                .unwrap_or_default()
        };
    let test = augur_models::eval::wild::generate_family(family, seed, per_scenario, seconds);
    let score = |m: Arc<augur_models::trained::TrainedModels>| {
        failures::score(
            &test,
            &EngineAlarm {
                threshold: train_cfg.threshold,
                horizon_s,
                calibration: None,
                models: Some(m),
                forecaster: Forecaster::default(),
                limits: limits.clone(),
            },
            horizon_s,
            30.0,
            train_cfg.keep_firing_s,
        )
    };
    let pb = progress(names.len() as u64, "scoring");
    let central_outcome = score(central.clone());
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let own = &locals[i];
        let peers: Vec<augur_models::trained::LearnedLimit> = locals
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, m)| used(m))
            .collect();
        let partial = Arc::new(augur_models::trained::TrainedModels {
            calibration: None,
            ..own.clone()
        });
        let own_limits = own
            .meta
            .patterns
            .as_ref()
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let (limits_after, o) = augur_models::patterns::adopt_shared(
            &failures::as_history(&split[i]),
            &engine,
            &partial,
            &alarm,
            &own_limits,
            &peers,
        );
        let mut federated = own.clone();
        federated.meta.patterns = Some(augur_models::trained::FailurePatterns {
            limits: limits_after,
        });
        let (local, fed) = std::thread::scope(|s| {
            let l = s.spawn(|| score(Arc::new(own.clone())));
            let f = score(Arc::new(federated));
            (l.join().expect("scoring panicked"), f)
        });
        pb.inc(1);
        let seen: Vec<Scenario> = modes
            .iter()
            .copied()
            .filter(|m| split[i].iter().any(|t| t.scenario == *m))
            .collect();
        let unseen: Vec<Scenario> = modes
            .iter()
            .copied()
            .filter(|m| !seen.contains(m))
            .collect();
        let on = |o: &failures::Outcome| -> (usize, usize) {
            unseen
                .iter()
                .filter_map(|m| o.by_scenario.get(m.name()))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        rows.push(SplitNode {
            node: (*name).to_owned(),
            modes_seen: seen.iter().map(|m| m.name().to_owned()).collect(),
            modes_unseen: unseen.iter().map(|m| m.name().to_owned()).collect(),
            unseen_local: on(&local),
            unseen_federated: on(&fed),
            unseen_central: on(&central_outcome),
            recall_local: local.recall,
            recall_federated: fed.recall,
            recall_central: central_outcome.recall,
            fa_per_hour_local: local.false_alarms_per_resource_hour,
            fa_per_hour_federated: fed.false_alarms_per_resource_hour,
            fa_per_hour_central: central_outcome.false_alarms_per_resource_hour,
            offered: o.offered,
            adopted: o.adopted,
        });
    }
    pb.finish_and_clear();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "family": family.name(),
                "seed": seed,
                "training_seed": seed.wrapping_add(1000),
                "per_scenario": per_scenario,
                "seconds": seconds,
                "withheld_limits": withheld,
                "central_limits": used(&central).iter().map(|l| l.describe()).collect::<Vec<_>>(),
                "nodes": rows,
            }))?
        );
        return Ok(());
    }
    println!(
        "Failure replay split across {} nodes ({} family, test seed {seed}, training seed {}); no \
         limit configured for {}",
        names.len(),
        family.name(),
        seed.wrapping_add(1000),
        withheld.join(" or ")
    );
    println!(
        "{:<5} {:<28} {:>18} {:>18} {:>18} {:>22} {:>9}",
        "node", "never saw", "unseen: local", "federated", "central", "recall l / f / c", "adopted"
    );
    for r in &rows {
        let f = |x: (usize, usize)| format!("{} of {}", x.0, x.1);
        println!(
            "{:<5} {:<28} {:>18} {:>18} {:>18} {:>22} {:>9}",
            r.node,
            if r.modes_unseen.is_empty() {
                "-".to_owned()
            } else {
                r.modes_unseen.join(", ")
            },
            f(r.unseen_local),
            f(r.unseen_federated),
            f(r.unseen_central),
            format!(
                "{:.2} / {:.2} / {:.2}",
                r.recall_local, r.recall_federated, r.recall_central
            ),
            format!("{} of {}", r.adopted, r.offered)
        );
        println!(
            "      false alarms per resource-hour: local {:.3}, federated {:.3}, central {:.3}",
            r.fa_per_hour_local, r.fa_per_hour_federated, r.fa_per_hour_central
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-file corpus in NAB's layout, with a level shift inside each labelled window.
    fn tiny_nab(dir: &Path) {
        std::fs::create_dir_all(dir.join("data/demo")).expect("mkdir");
        std::fs::create_dir_all(dir.join("labels")).expect("mkdir");
        let mut windows = serde_json::Map::new();
        for (name, shift_at) in [("a.csv", 700), ("b.csv", 900)] {
            let mut csv = String::from("timestamp,value\n");
            for i in 0..1200 {
                let v = if i >= shift_at { 80.0 } else { 50.0 } + ((i * 7919) % 13) as f64 * 0.1;
                csv.push_str(&format!(
                    "2020-01-{:02} {:02}:{:02}:00,{v}\n",
                    1 + i / 1440,
                    (i / 60) % 24,
                    i % 60
                ));
            }
            std::fs::write(dir.join("data/demo").join(name), csv).expect("write");
            let ts = |i: usize| {
                format!(
                    "2020-01-{:02} {:02}:{:02}:00.000000",
                    1 + i / 1440,
                    (i / 60) % 24,
                    i % 60
                )
            };
            windows.insert(
                format!("demo/{name}"),
                json!([[ts(shift_at - 30), ts(shift_at + 30)]]),
            );
        }
        std::fs::write(
            dir.join("labels/combined_windows.json"),
            Value::Object(windows).to_string(),
        )
        .expect("write");
    }

    #[test]
    fn the_failure_replay_runs_small() {
        let r = failure_report(&crate::eval::FailureRun {
            per_scenario: 1,
            seconds: 900,
            ..crate::eval::FailureRun::new(augur_models::eval::failures::Family::Classic, 3)
        })
        .expect("runs");
        // Every detector judged on the same failures; augur's rows paired with predict_linear.
        assert_eq!(r.outcomes.len(), 6);
        let failures = r.outcomes[0].failures;
        assert!(failures > 0, "the traces hold failures");
        for o in &r.outcomes {
            assert_eq!(o.failures, failures, "{}", o.detector);
            assert!(o.caught <= o.failures && (0.0..=1.0).contains(&o.recall));
            assert!(o.false_alarms_per_resource_hour.is_finite());
        }
        assert!(r.outcomes[5].detector.starts_with("predict_linear"));
        assert_eq!(r.pairs.len(), 4, "each augur row against predict_linear");
        // The augur engine catches failures ahead of time even on this small a run.
        let best = r.outcomes[..4].iter().map(|o| o.caught).max();
        assert!(best > Some(0), "{:?}", r.outcomes);
        assert!(r.brier_raw.is_finite() && r.brier_cal.is_finite() && r.judged > 0);
        let counted: usize = r.reliability_raw.iter().map(|b| b.count).sum();
        assert_eq!(counted, r.judged, "every judged example in one bin");
        assert!(!r.reliability_cal.is_empty());
        assert!(r.trained_meta.rows > 0);
        print_failures(&r, true).expect("prints");
    }

    #[test]
    fn runs_every_detector_on_a_nab_shaped_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_nab(dir.path());
        let options = crate::replay::ReplayOptions::default();
        nab(dir.path(), 7, Default::default(), &options, true).expect("evaluation runs");
        let corpus = nab::load_corpus(dir.path()).expect("loads");
        assert_eq!(corpus[0].file.windows, vec![(670, 730)]);
    }

    /// Issue 15's target, on the product's path: NAB through `augur replay` with default settings
    /// (without trained models, which give the same score and take minutes: see BENCHMARKS.md),
    /// told nothing about the files, scores at least 70 on the standard profile. Runs where
    /// `.ci/run` has the data (`EVAL_DATA`).
    #[test]
    fn nab_through_replay_with_default_settings_scores_70() {
        let Some(dir) = std::env::var_os("EVAL_DATA") else {
            eprintln!("EVAL_DATA not set: NAB through replay not checked");
            return;
        };
        let root = std::path::PathBuf::from(dir).join("nab");
        let corpus = nab::load_corpus(&root).expect("NAB corpus");
        let files: Vec<LabelledFile> = corpus.iter().map(|s| s.file.clone()).collect();
        let options = crate::replay::ReplayOptions {
            schedule: None,
            ..Default::default()
        };
        let pb = ProgressBar::hidden();
        let scores: Vec<Vec<f64>> = par_map(&corpus, &pb, |s| {
            nab_through_replay(s, &options).expect("replays")
        });
        let got = nab::optimise_threshold(&files, &scores, Profile::Standard);
        eprintln!("NAB through replay, standard profile: {:.2}", got.score);
        assert!(got.score >= 70.0, "{got:?}");
    }

    /// The replay row is `augur replay` itself: a NAB file as telemetry gives one prediction per
    /// row, the level shift is reported inside its window, and nothing was told about the file.
    #[test]
    fn a_nab_file_goes_through_augur_replay_as_telemetry() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_nab(dir.path());
        let corpus = nab::load_corpus(dir.path()).expect("loads");
        let text = nab_telemetry(&corpus[0]).expect("converts");
        let first: augur_proto::TelemetryRecord =
            serde_json::from_str(text.lines().next().expect("a line")).expect("a record");
        assert_eq!(
            (first.resource_id.as_str(), first.resource_type.as_str()),
            ("demo-a", "nab")
        );
        assert_eq!(text.lines().count(), 1200);
        let options = crate::replay::ReplayOptions::default();
        let scores = nab_through_replay(&corpus[0], &options).expect("replays");
        assert_eq!(scores.len(), 1200);
        let (a, b) = corpus[0].file.windows[0];
        let reported: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] >= 0.5).collect();
        assert!(
            reported.iter().any(|i| (a..=b).contains(i)),
            "the shift reported in its window: {reported:?}"
        );
    }
}

//! `augur replay`: runs the prediction engine over a telemetry file, offline, with the same code the
//! live agent runs, and writes one prediction record per input sample. No look-ahead: records are
//! processed in file order and each prediction uses only the samples before and at it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use augur_models::engine::ResourceEngine;
use augur_models::trained::TrainedModels;
use augur_models::training::{ResourceHistory, TrainConfig};
use augur_proto::Event;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Config;
use crate::ingest::{Limits, validate_record};
use crate::models::{Schedule, engine_config};
use crate::sample::UnixMicros;

/// One output line (DESIGN.md's prediction record).
#[derive(Debug, Serialize)]
pub struct PredictionRecord<'a> {
    pub ts: String,
    pub resource_id: &'a str,
    #[serde(flatten)]
    pub prediction: &'a augur_models::engine::Prediction,
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub samples: u64,
    pub predictions: u64,
    pub rejected: u64,
    pub resources: usize,
    /// Model trainings run during the replay (at the agent's cadence, in the data's time).
    pub trainings: u64,
}

/// How a replay predicts and trains: each resource type's engine as the agent configures it
/// (`config`, the agent's configuration), and models trained on the agent's schedule in the data's
/// time, from the history seen so far (never from later samples).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub config: Config,
    /// None: no trained models, the online statistical models only.
    pub schedule: Option<Schedule>,
    pub train: TrainConfig,
    /// The novelty detectors' settings (evaluations sweep them; the agent has the defaults).
    pub novelty: augur_models::anomaly::NoveltyConfig,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self::for_config(Config::default())
    }
}

impl ReplayOptions {
    /// As the agent with `config` runs.
    pub fn for_config(config: Config) -> Self {
        Self {
            schedule: Some(Schedule::from_config(&config)),
            train: crate::models::train_config(&config),
            config,
            novelty: augur_models::anomaly::NoveltyConfig::default(),
        }
    }
}

impl ReplayOptions {
    /// A type's engine settings and threshold, as the agent has them, with these options'
    /// novelty settings.
    fn engine_config(&self, resource_type: &str) -> (augur_models::engine::EngineConfig, f64) {
        let (engine, threshold) = engine_config(&self.config, resource_type);
        (
            augur_models::engine::EngineConfig {
                novelty: self.novelty,
                ..engine
            },
            threshold,
        )
    }
}

/// The training state of one resource type during a replay.
#[derive(Default)]
struct TypeTraining {
    histories: HashMap<String, ResourceHistory>,
    models: Option<Arc<TrainedModels>>,
    /// The next training, on the agent's schedule.
    next: Option<f64>,
    version: u64,
}

impl TypeTraining {
    /// Keeps each resource's newest `cap` samples (trimmed in chunks, so pushing stays O(1)).
    fn remember(&mut self, id: &str, sample: &crate::sample::Sample, cap: usize) {
        let h = self.histories.entry(id.to_owned()).or_default();
        let t = sample.ts.0 as f64 / 1e6;
        match sample.event {
            Some(Event::Failure) => h.failures.push(t),
            Some(Event::Migration) => h.migrations.push(t),
            None => {}
        }
        if !sample.metrics.is_empty() {
            h.push(t, &sample.metrics);
        }
        if h.len() > 2 * cap {
            h.drop_oldest(h.len() - cap);
        }
    }
}

/// Replays `input` (telemetry JSON lines) into `output` (prediction JSON lines) with the agent's
/// default training cadence.
pub fn replay(input: &Path, output: &Path, show_progress: bool) -> anyhow::Result<ReplaySummary> {
    replay_with(input, output, show_progress, &ReplayOptions::default())
}

/// Replays with the given training options.
pub fn replay_with(
    input: &Path,
    output: &Path,
    show_progress: bool,
    options: &ReplayOptions,
) -> anyhow::Result<ReplaySummary> {
    let file =
        std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = BufReader::new(file);
    let out = std::fs::File::create(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let mut out = BufWriter::new(out);
    // Offline: no clock-skew or age limits, since the file may come from any time.
    let limits = Limits {
        max_metrics: 4096,
        max_labels: 256,
        max_clock_skew: Duration::from_secs(u64::MAX / 4),
        max_age: Duration::from_secs(u64::MAX / 4),
    };
    let pb = if show_progress {
        let pb = ProgressBar::new(size);
        pb.set_style(
            ProgressStyle::with_template("replay [{bar:40}] {bytes}/{total_bytes} ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut engines: HashMap<String, (String, ResourceEngine)> = HashMap::new();
    let mut types: HashMap<String, TypeTraining> = HashMap::new();
    let mut summary = ReplaySummary::default();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {} line {}", input.display(), n + 1))?;
        pb.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        summary.samples += 1;
        let sample = serde_json::from_str(&line)
            .map_err(|e| e.to_string())
            .and_then(|rec| {
                validate_record(rec, &limits, UnixMicros(i64::MAX / 2)).map_err(|r| r.to_string())
            });
        let sample = match sample {
            Ok(s) => s,
            Err(e) => {
                summary.rejected += 1;
                if summary.rejected <= 10 {
                    eprintln!("{}: line {}: skipped: {e}", input.display(), n + 1);
                }
                continue;
            }
        };
        let t = sample.ts.0 as f64 / 1e6;
        let rtype = sample.resource_type.to_string();
        let trains = options
            .schedule
            .filter(|_| crate::models::uses_trained(&options.config, &sample.resource_type));
        if let Some(schedule) = trains {
            let training = types.entry(rtype.clone()).or_default();
            training.remember(sample.resource_id.as_str(), &sample, options.train.max_rows);
            if schedule.due(&mut training.next, t) {
                let data: Vec<ResourceHistory> = {
                    let mut ids: Vec<&String> = training.histories.keys().collect();
                    ids.sort();
                    ids.into_iter()
                        .map(|id| training.histories[id].clone())
                        .collect()
                };
                let (engine, threshold) = options.engine_config(&rtype);
                let train = TrainConfig {
                    threshold,
                    keep_firing_s: options.config.keep_firing_s(&rtype),
                    ..options.train.clone()
                };
                let trained = augur_models::training::train(
                    &rtype,
                    &data,
                    training.version + 1,
                    &engine,
                    &train,
                );
                schedule.done(&mut training.next, t, trained.is_ok());
                if let Ok(m) = trained {
                    training.version += 1;
                    training.models = Some(Arc::new(m));
                    summary.trainings += 1;
                    for (ty, e) in engines.values_mut() {
                        if *ty == rtype {
                            e.set_models(training.models.clone());
                        }
                    }
                }
            }
        }
        if sample.metrics.is_empty() {
            continue;
        }
        let (_, engine) = engines
            .entry(sample.resource_id.to_string())
            .or_insert_with(|| {
                let mut e = ResourceEngine::new(options.engine_config(&rtype).0);
                e.set_models(types.get(&rtype).and_then(|tt| tt.models.clone()));
                (rtype.clone(), e)
            });
        let prediction = engine.observe(t, &sample.metrics);
        let record = PredictionRecord {
            ts: sample.ts.to_rfc3339(),
            resource_id: sample.resource_id.as_str(),
            prediction: &prediction,
        };
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
        summary.predictions += 1;
    }
    out.flush()?;
    pb.finish_and_clear();
    summary.resources = engines.len();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prediction_per_sample_and_a_leak_is_flagged_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        let mut text = String::new();
        for t in 0..450i64 {
            let ts = UnixMicros(1_700_000_000_000_000 + t * 1_000_000).to_rfc3339();
            text.push_str(&format!(
                "{{\"ts\":\"{ts}\",\"resource_id\":\"db-1\",\"resource_type\":\"host\",\"metrics\":{{\"mem_used_ratio\":{}}}}}\n",
                0.5 + 0.001 * t as f64
            ));
            text.push_str(&format!(
                "{{\"ts\":\"{ts}\",\"resource_id\":\"web-1\",\"resource_type\":\"host\",\"metrics\":{{\"mem_used_ratio\":0.4}}}}\n"
            ));
        }
        text.push_str("{not json}\n");
        std::fs::write(&input, text).expect("write");
        let output = dir.path().join("out.jsonl");
        let s = replay(&input, &output, false).expect("replays");
        assert_eq!(
            s,
            ReplaySummary {
                samples: 901,
                predictions: 900,
                rejected: 1,
                resources: 2,
                trainings: 0,
            }
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 900);
        let first_alarm = lines
            .iter()
            .position(|l| {
                l["resource_id"] == "db-1" && l["failure_probability"].as_f64().expect("p") >= 0.75
            })
            .expect("the leak is flagged");
        // Lines alternate db-1/web-1, so line 2k is db-1 at t = k s; the limit is hit at t = 450 s.
        assert!(first_alarm / 2 <= 420, "flagged at t={} s", first_alarm / 2);
        assert!(
            lines
                .iter()
                .filter(|l| l["resource_id"] == "web-1")
                .all(|l| l["failure_probability"].as_f64() < Some(0.01))
        );
        assert_eq!(
            lines[0]["model_version"],
            augur_models::engine::MODEL_VERSION
        );
        // Deterministic: the same input gives the same output.
        let again = dir.path().join("again.jsonl");
        replay(&input, &again, false).expect("replays");
        assert_eq!(
            std::fs::read(&output).expect("read"),
            std::fs::read(&again).expect("read")
        );
    }

    #[test]
    fn a_long_replay_trains_models_from_the_past_only_and_stays_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        let mut text = String::new();
        for t in 0..1_500i64 {
            let ts = UnixMicros(1_700_000_000_000_000 + t * 1_000_000).to_rfc3339();
            let cpu = 50.0 + 10.0 * (t as f64 * 0.1).sin();
            text.push_str(&format!(
                "{{\"ts\":\"{ts}\",\"resource_id\":\"db-1\",\"resource_type\":\"service\",\"metrics\":{{\"cpu\":{cpu},\"mem_used_ratio\":0.5}}}}\n"
            ));
        }
        std::fs::write(&input, text).expect("write");
        let options = ReplayOptions {
            schedule: Some(Schedule::every(Duration::from_secs(600))),
            config: Config::default(),
            novelty: Default::default(),
            train: TrainConfig {
                mlp: augur_models::forecast::mlp::MlpConfig {
                    epochs: 1,
                    ..Default::default()
                },
                forest_trees: 10,
                max_mlp_examples: 500,
                ..TrainConfig::default()
            },
        };
        let output = dir.path().join("out.jsonl");
        let s = replay_with(&input, &output, false, &options).expect("replays");
        // Trained at t = 600 s and t = 1200 s of the data.
        assert_eq!(s.trainings, 2);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let version = |i: usize| lines[i]["model_version"].as_str().map(str::to_owned);
        let engine = augur_models::engine::MODEL_VERSION;
        assert_eq!(version(599).as_deref(), Some(engine));
        assert_eq!(version(600), Some(format!("{engine}+service.v1")));
        assert_eq!(version(1_499), Some(format!("{engine}+service.v2")));
        let again = dir.path().join("again.jsonl");
        replay_with(&input, &again, false, &options).expect("replays");
        assert_eq!(
            std::fs::read(&output).expect("read"),
            std::fs::read(&again).expect("read")
        );
    }
}

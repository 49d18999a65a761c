//! `augur replay`: runs the prediction engine over a telemetry file, offline, with the same code the
//! live agent runs, and writes one prediction record per input sample. No look-ahead: records are
//! processed in file order and each prediction uses only the samples before and at it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use augur_models::engine::{EngineConfig, ResourceEngine};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::ingest::{Limits, validate_record};
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
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub samples: u64,
    pub predictions: u64,
    pub rejected: u64,
    pub resources: usize,
}

/// Replays `input` (telemetry JSON lines) into `output` (prediction JSON lines).
pub fn replay(input: &Path, output: &Path, show_progress: bool) -> anyhow::Result<ReplaySummary> {
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
    let mut engines: HashMap<String, ResourceEngine> = HashMap::new();
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
            Ok(s) if s.metrics.is_empty() => continue,
            Ok(s) => s,
            Err(e) => {
                summary.rejected += 1;
                if summary.rejected <= 10 {
                    eprintln!("{}: line {}: skipped: {e}", input.display(), n + 1);
                }
                continue;
            }
        };
        let engine = engines
            .entry(sample.resource_id.to_string())
            .or_insert_with(|| ResourceEngine::new(EngineConfig::default()));
        let prediction = engine.observe(sample.ts.0 as f64 / 1e6, &sample.metrics);
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
                resources: 2
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
}

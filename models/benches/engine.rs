//! Cost of one prediction tick: one resource's sample through `ResourceEngine::observe` (every model
//! the engine runs), and the Isolation Forest's scoring of one sample.
//!
//!     cargo bench -p augur-models --bench engine

use std::collections::BTreeMap;
use std::hint::black_box;

use augur_models::anomaly::IsolationForest;
use augur_models::anomaly::iforest::SplitMix64;
use augur_models::engine::{EngineConfig, ResourceEngine};
use augur_models::forecast::mlp::{MlpConfig, MlpForecaster};
use std::sync::Arc;

use augur_models::trained::CalibrationReport;
use augur_models::training::{ResourceHistory, TrainConfig, train};
use criterion::{Criterion, criterion_group, criterion_main};

/// A host-like sample: the host collector's 17 metrics.
fn host_sample(t: usize, rng: &mut SplitMix64) -> BTreeMap<String, f64> {
    let names = [
        "cpu_util",
        "load_1",
        "load_5",
        "load_15",
        "mem_used_ratio",
        "swap_used_ratio",
        "disk_used_ratio:/",
        "disk_used_ratio_max",
        "disk_read_bps",
        "disk_write_bps",
        "net_rx_bps",
        "net_tx_bps",
        "net_rx_errors_ps",
        "net_tx_errors_ps",
        "process_count",
        "agent_cpu_util",
        "agent_rss_bytes",
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (*n).to_owned(),
                0.3 + 0.0001 * t as f64 + 0.05 * rng.next_f64() + 0.01 * i as f64,
            )
        })
        .collect()
}

fn tick(c: &mut Criterion) {
    let mut rng = SplitMix64::new(1);
    let mut engine = ResourceEngine::new(EngineConfig::default());
    let mut t = 0;
    // Warm: every horizon of the error model is in use after 700 samples.
    while t < 1_000 {
        engine.observe(t as f64, &host_sample(t, &mut rng));
        t += 1;
    }
    let samples: Vec<BTreeMap<String, f64>> =
        (0..4096).map(|k| host_sample(t + k, &mut rng)).collect();
    let mut k = 0;
    c.bench_function("engine_observe_host_17_metrics", |b| {
        b.iter(|| {
            let p = engine.observe((t + k) as f64, &samples[k % samples.len()]);
            k += 1;
            black_box(p)
        })
    });

    let data: Vec<Vec<f64>> = (0..2048)
        .map(|_| (0..3).map(|_| rng.next_f64()).collect())
        .collect();
    let forest = IsolationForest::fit(&data, 100, 256, 7);
    let x = vec![0.5, 0.5, 0.5];
    c.bench_function("isolation_forest_score_100_trees", |b| {
        b.iter(|| black_box(forest.score(black_box(&x))))
    });
    c.bench_function("isolation_forest_fit_100x256", |b| {
        b.iter(|| black_box(IsolationForest::fit(&data, 100, 256, 7)))
    });

    let series: Vec<f64> = (0..2_000)
        .map(|t| (t as f64 * 0.1).sin() + 0.1 * rng.next_f64())
        .collect();
    let mlp = MlpForecaster::train(
        &[&series],
        MlpConfig {
            epochs: 2,
            ..MlpConfig::default()
        },
    )
    .expect("trains");
    let window = &series[series.len() - 32..];
    c.bench_function("mlp_forecast_batch_1", |b| {
        b.iter(|| black_box(mlp.forecast(black_box(window))))
    });
    let windows: Vec<&[f64]> = (0..64)
        .map(|k| &series[series.len() - 32 - k..series.len() - k])
        .collect();
    c.bench_function("mlp_forecast_batch_64", |b| {
        b.iter(|| black_box(mlp.forecast_batch(black_box(&windows))))
    });
    c.bench_function("mlp_train_2000_points_1_epoch", |b| {
        b.iter(|| {
            black_box(MlpForecaster::train(
                &[&series],
                MlpConfig {
                    epochs: 1,
                    ..MlpConfig::default()
                },
            ))
        })
    });
}

/// A host's history as the trainer reads it: `n` samples of the 17 host metrics, one failure.
fn host_history(n: usize, rng: &mut SplitMix64) -> ResourceHistory {
    let mut h = ResourceHistory::default();
    for t in 0..n {
        let mut m = host_sample(t % 3_000, rng);
        // Some structure for the MLP to learn.
        if let Some(v) = m.get_mut("cpu_util") {
            *v += 0.2 * (t as f64 * 0.05).sin();
        }
        h.push(t as f64, m);
    }
    h.failures.push(n as f64 * 0.8);
    h
}

fn all_models(c: &mut Criterion) {
    let mut rng = SplitMix64::new(2);
    let config = EngineConfig::default();
    let history = host_history(20_000, &mut rng);
    let mut group = c.benchmark_group("training");
    group.sample_size(10);
    // The default cadence's worst case: every hour, the newest 20,000 samples (max_training_samples)
    // of a host's 17 metrics, a failure among them so calibration runs too.
    group.bench_function("train_host_20000_samples_17_metrics", |b| {
        b.iter(|| {
            black_box(
                train(
                    "host",
                    std::slice::from_ref(&history),
                    1,
                    &config,
                    &TrainConfig::default(),
                )
                .expect("trains"),
            )
        })
    });
    group.finish();

    let mut models =
        train("host", &[history], 1, &config, &TrainConfig::default()).expect("trains");
    // Every model on, whatever this data made of them: the MLP's forecast in the failure
    // probability, and a calibration.
    if let Some(r) = models.meta.mlp.as_mut() {
        r.preferred = true;
    }
    models.calibration = Some(augur_models::calibration::Platt::default());
    models.meta.calibration = Some(CalibrationReport {
        examples: 0,
        positives: 0,
        excluded_by_migration: 0,
        brier_raw: 1.0,
        brier_calibrated: 0.0,
        alarmed_raw: 0,
        alarmed_calibrated: 0,
        used: true,
    });
    let models = Arc::new(models);
    let mut engine = ResourceEngine::new(config);
    engine.set_models(Some(models));
    let mut t = 0;
    while t < 1_000 {
        engine.observe(t as f64, &host_sample(t, &mut rng));
        t += 1;
    }
    let samples: Vec<BTreeMap<String, f64>> =
        (0..4096).map(|k| host_sample(t + k, &mut rng)).collect();
    let mut k = 0;
    c.bench_function("engine_observe_host_17_metrics_all_models", |b| {
        b.iter(|| {
            let p = engine.observe((t + k) as f64, &samples[k % samples.len()]);
            k += 1;
            black_box(p)
        })
    });
}

criterion_group!(benches, tick, all_models);
criterion_main!(benches);

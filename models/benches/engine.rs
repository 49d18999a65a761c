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

criterion_group!(benches, tick);
criterion_main!(benches);

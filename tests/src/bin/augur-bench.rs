//! Benchmark driver for a real `augur agent` process (build both in release first):
//!
//! - `augur-bench idle`: the idle agent's CPU (% of one core) and peak RSS at 1 Hz host collection.
//! - `augur-bench ingest`: samples per second accepted into durable history over HTTP and gRPC.
//!
//! Results print as a table, or as JSON with `--json`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use augur_proto::v1::TelemetrySample;
use augur_proto::v1::telemetry_client::TelemetryClient;
use augur_tests::{AgentOptions, AgentProcess, http, now_us, proc_peak_rss, proc_usage, rfc3339};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Measures a real augur agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// CPU and memory of an idle agent collecting host metrics every second.
    Idle {
        /// Measurement length in seconds (after a 5 s warm-up).
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// Ingestion throughput into durable history.
    Ingest {
        #[arg(long, value_enum, default_value_t = Transport::Both)]
        transport: Transport,
        /// Samples per transport.
        #[arg(long, default_value_t = 1_000_000)]
        samples: usize,
        /// Samples per request (HTTP body or gRPC stream chunk).
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Metrics per sample.
        #[arg(long, default_value_t = 8)]
        metrics: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Http,
    Grpc,
    Both,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Idle { secs } => idle(secs, cli.json).await,
        Cmd::Ingest {
            transport,
            samples,
            batch,
            clients,
            metrics,
        } => {
            let mut results = Vec::new();
            if transport != Transport::Grpc {
                results.push(ingest(false, samples, batch, clients, metrics).await?);
            }
            if transport != Transport::Http {
                results.push(ingest(true, samples, batch, clients, metrics).await?);
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                println!(
                    "{:<6} {:>10} {:>8} {:>8} {:>10} {:>14}",
                    "via", "samples", "batch", "clients", "seconds", "samples/s"
                );
                for r in &results {
                    println!(
                        "{:<6} {:>10} {:>8} {:>8} {:>10.2} {:>14.0}",
                        r["transport"].as_str().unwrap_or(""),
                        r["samples"].as_u64().unwrap_or(0),
                        r["batch"].as_u64().unwrap_or(0),
                        r["clients"].as_u64().unwrap_or(0),
                        r["seconds"].as_f64().unwrap_or(0.0),
                        r["samples_per_sec"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Ok(())
        }
    }
}

async fn idle(secs: u64, as_json: bool) -> anyhow::Result<()> {
    let agent = AgentProcess::start(AgentOptions::default()).await?;
    let warmup = bar(5, "warm-up");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        warmup.inc(1);
    }
    warmup.finish_and_clear();
    let (cpu0, _) = proc_usage(agent.pid)?;
    let t0 = Instant::now();
    let pb = bar(secs, "measuring");
    let mut rss_max = 0u64;
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_usage(agent.pid)?.1);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (cpu1, rss_end) = proc_usage(agent.pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let peak = proc_peak_rss(agent.pid)?;
    let status: serde_json::Value = http()
        .get(agent.url("/v1/status"))
        .send()
        .await?
        .json()
        .await?;
    let cpu_pct = 100.0 * (cpu1 - cpu0) / wall;
    let result = json!({
        "seconds": wall,
        "cpu_percent_of_one_core": cpu_pct,
        "rss_end_bytes": rss_end,
        "rss_max_sampled_bytes": rss_max,
        "peak_rss_bytes": peak,
        "samples_stored": status["samples_stored"],
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("idle agent over {wall:.1} s at 1 Hz host collection");
        println!("  CPU       {cpu_pct:.3} % of one core");
        println!(
            "  RSS       {:.1} MB at end, {:.1} MB peak (VmHWM)",
            rss_end as f64 / 1e6,
            peak as f64 / 1e6
        );
        println!("  samples   {}", status["samples_stored"]);
    }
    Ok(())
}

async fn ingest(
    grpc: bool,
    samples: usize,
    batch: usize,
    clients: usize,
    metrics: usize,
) -> anyhow::Result<serde_json::Value> {
    let via = if grpc { "grpc" } else { "http" };
    let agent = AgentProcess::start(AgentOptions {
        config:
            "[collect]\nhost = false\n[api]\nmax_body = \"64MiB\"\nmax_grpc_message = \"64MiB\"\n"
                .into(),
        ..Default::default()
    })
    .await?;
    let batches = samples.div_ceil(batch);
    let start = now_us() - 86_400_000_000;
    let names: Vec<String> = (0..metrics).map(|i| format!("metric_{i}")).collect();
    // Prepare every request before the clock starts, so the client's formatting is not measured.
    let prep = bar(batches as u64, "preparing");
    let mut http_bodies = Vec::new();
    let mut grpc_batches = Vec::new();
    for b in 0..batches {
        let resource = format!("bench-{}", b % clients);
        let n = batch.min(samples - b * batch);
        if grpc {
            let v: Vec<TelemetrySample> = (0..n)
                .map(|i| {
                    let ts = start + (b * batch + i) as i64;
                    TelemetrySample {
                        ts: Some(prost_types::Timestamp {
                            seconds: ts.div_euclid(1_000_000),
                            nanos: i32::try_from(ts.rem_euclid(1_000_000) * 1000).expect("fits"),
                        }),
                        resource_id: resource.clone(),
                        resource_type: "service".into(),
                        metrics: names
                            .iter()
                            .enumerate()
                            .map(|(k, m)| (m.clone(), (i + k) as f64 * 0.25))
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect();
            grpc_batches.push(v);
        } else {
            let mut body = String::with_capacity(n * (60 + metrics * 20));
            for i in 0..n {
                let ts = rfc3339(start + (b * batch + i) as i64);
                body.push_str(&format!("{{\"ts\":\"{ts}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{"));
                for (k, m) in names.iter().enumerate() {
                    if k > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!("\"{m}\":{}", (i + k) as f64 * 0.25));
                }
                body.push_str("}}\n");
            }
            http_bodies.push(body);
        }
        prep.inc(1);
    }
    prep.finish_and_clear();

    let pb = bar(samples as u64, via);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let pb = pb.clone();
        if grpc {
            let mine: Vec<Vec<TelemetrySample>> = grpc_batches
                .iter()
                .enumerate()
                .filter(|(i, _)| i % clients == c)
                .map(|(_, b)| b.clone())
                .collect();
            let url = agent.grpc_url();
            handles.push(tokio::spawn(async move {
                let mut client = TelemetryClient::connect(url)
                    .await?
                    .max_encoding_message_size(64 << 20);
                let mut acked = 0u64;
                for b in mine {
                    let s = client.push(futures::stream::iter(b)).await?.into_inner();
                    if s.rejected > 0 {
                        bail!("rejected: {:?}", s.errors.first());
                    }
                    acked += s.accepted;
                    pb.inc(s.accepted);
                }
                Ok::<u64, anyhow::Error>(acked)
            }));
        } else {
            let mine: Vec<String> = http_bodies
                .iter()
                .enumerate()
                .filter(|(i, _)| i % clients == c)
                .map(|(_, b)| b.clone())
                .collect();
            let url = agent.url("/v1/telemetry");
            handles.push(tokio::spawn(async move {
                let client = http();
                let mut acked = 0u64;
                for body in mine {
                    let resp = client.post(&url).body(body).send().await?;
                    let status = resp.status();
                    let v: serde_json::Value = resp.json().await?;
                    if !status.is_success() {
                        bail!("{status}: {v}");
                    }
                    let n = v["accepted"].as_u64().context("accepted")?;
                    acked += n;
                    pb.inc(n);
                }
                Ok::<u64, anyhow::Error>(acked)
            }));
        }
    }
    let mut acked = 0;
    for h in handles {
        acked += h.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let status: serde_json::Value = http()
        .get(agent.url("/v1/status"))
        .send()
        .await?
        .json()
        .await?;
    let stored = status["samples_stored"].as_u64().unwrap_or(0);
    if stored != acked || acked != samples as u64 {
        bail!("acknowledged {acked} of {samples}, stored {stored}: ingestion lost samples");
    }
    Ok(json!({
        "transport": via,
        "samples": samples,
        "batch": batch,
        "clients": clients,
        "metrics_per_sample": metrics,
        "seconds": secs,
        "samples_per_sec": samples as f64 / secs,
        "stored": stored,
    }))
}

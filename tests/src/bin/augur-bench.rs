//! Benchmark driver for a real `augur agent` process (build both in release first):
//!
//! - `augur-bench idle`: the idle agent's CPU (% of one core) and peak RSS at 1 Hz host collection.
//! - `augur-bench ingest`: samples per second accepted into durable history over HTTP and gRPC.
//! - `augur-bench mesh`: a fleet of N agents on loopback: join convergence, failure detection after
//!   SIGKILL, gossip bandwidth and CPU per node, and false deaths while one node is starved of CPU.
//! - `augur-bench dashboard`: a fleet of N agents; one node's CPU with no browser, and with
//!   headless Chromium following its dashboard (fleet view, resource view), in alternating turns.
//! - `augur-bench fuzz`: hostile datagrams at one agent's gossip and QUIC ports for minutes, in a
//!   fleet; no task may be lost and no verdict change.
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
    /// A real fleet on loopback.
    Mesh {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Steady-state measurement, seconds.
        #[arg(long, default_value_t = 30)]
        observe: u64,
        /// Seconds to starve one node of CPU and count the deaths declared meanwhile; 0 skips it.
        /// The node is put in a cgroup (v1 cpu controller) limited to --starve-percent of a core
        /// (quota per 200 ms period), or, where cgroups cannot be written, reniced to 19 against two
        /// busy loops.
        #[arg(long, default_value_t = 0)]
        starve: u64,
        /// Share of one core the starved node gets, percent (an agent in a fleet uses about 0.6 %).
        #[arg(long, default_value_t = 0.5)]
        starve_percent: f64,
        /// SIGKILL trials (each kills a node, times its detection, restarts it).
        #[arg(long, default_value_t = 3)]
        kills: usize,
    },
    /// Hostile datagrams at one agent of a three-agent fleet, on its gossip and QUIC ports: random,
    /// frame-shaped, and real frames replayed and mutated. Fails if an agent exits, gossip
    /// restarts, or anyone is declared dead; then times the detection of a killed node.
    Fuzz {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Datagrams per second in all.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
    },
    /// The embedded proxy against a direct connection and HAProxy 2.6 (same backends):
    /// latency, throughput, memory with open connections; then the time from an instance's death
    /// to its removal from every proxy of a three-agent fleet.
    Traffic {
        /// Sequential requests per target for latency.
        #[arg(long, default_value_t = 3000)]
        requests: usize,
        /// Seconds of load per target for throughput.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Concurrent clients for throughput.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Connections held open for the memory figure.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Death-to-removal trials (0 skips them).
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Protocols of the embedded proxy to compare.
        #[arg(long, value_delimiter = ',', default_value = "tcp,http")]
        protocols: Vec<String>,
        /// Throughput rounds: the targets take turns, `secs / rounds` seconds each.
        #[arg(long, default_value_t = 5)]
        rounds: u64,
    },
    /// Migrations under load with real agents: time from request to completion per strategy,
    /// requests failed, lease acquisition latency (3 voters, and more), lease traffic.
    Migrate {
        /// Moves per strategy (and per fleet size).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "live,warm_standby,blue_green"
        )]
        strategies: Vec<String>,
        /// Fleet sizes for the live-only lease pass (every node a voter; 0 skips it).
        #[arg(long, value_delimiter = ',', default_value = "7")]
        voters: Vec<usize>,
    },
    /// What a browser following the dashboard costs the agent serving it (a fleet of real agents;
    /// needs Debian's chromium).
    Dashboard {
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Rounds of the three phases (no browser, fleet view, resource view).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
        Cmd::Fuzz {
            minutes,
            seed,
            rate,
        } => {
            let pb = bar(minutes * 60, "fuzz");
            let report =
                augur_tests::fuzz::run(seed, Duration::from_secs(minutes * 60), rate, |s| {
                    pb.inc(s)
                })
                .await?;
            pb.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&report.json)?);
            Ok(())
        }
        Cmd::Mesh {
            nodes,
            observe,
            starve,
            starve_percent,
            kills,
        } => mesh(nodes, observe, starve, starve_percent, kills, cli.json).await,
        Cmd::Traffic {
            requests,
            secs,
            clients,
            connections,
            kills,
            protocols,
            rounds,
        } => {
            let settings = augur_tests::traffic_bench::Settings {
                requests,
                secs,
                clients,
                connections,
                kills,
                protocols,
                rounds,
            };
            let pb = ProgressBar::new_spinner();
            pb.enable_steady_tick(Duration::from_millis(200));
            let say = |m: &str| pb.set_message(m.to_owned());
            let proxies = augur_tests::traffic_bench::proxies(&settings, say).await?;
            let removal = if kills > 0 {
                augur_tests::traffic_bench::removal(&settings, say).await?
            } else {
                serde_json::Value::Null
            };
            pb.finish_and_clear();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"proxies": proxies, "removal": removal}))?
            );
            Ok(())
        }
        Cmd::Dashboard {
            nodes,
            secs,
            rounds,
        } => {
            let settings = augur_tests::dashboard_bench::Settings {
                nodes,
                secs,
                rounds,
            };
            let pb = bar(secs * rounds as u64 * 3, "dashboard");
            let out = augur_tests::dashboard_bench::run(&settings, |m| {
                if m.starts_with("round") {
                    pb.inc(1);
                }
                pb.set_message(m.to_owned());
            })
            .await?;
            pb.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Cmd::Migrate {
            runs,
            strategies,
            voters,
        } => {
            let settings = augur_tests::migrate_bench::Settings {
                runs,
                strategies,
                voters,
            };
            let pb = ProgressBar::new_spinner();
            pb.enable_steady_tick(Duration::from_millis(200));
            let out = augur_tests::migrate_bench::run(&settings, |m| pb.set_message(m.to_owned()))
                .await?;
            pb.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
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

async fn gossip_bytes(agent: &AgentProcess) -> anyhow::Result<f64> {
    let text = agent.get_text("/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("augur_mesh_gossip_bytes_total{direction=\"sent\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Until every running node but `target` sees it with `status` (polling all nodes every 20 ms).
async fn until_all(
    fleet: &augur_tests::LocalFleet,
    target: &str,
    status: &str,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let checks = fleet
            .agents
            .keys()
            .filter(|n| *n != target)
            .map(|n| fleet.statuses(n));
        let views = futures::future::join_all(checks).await;
        if views.iter().all(|v| {
            v.as_ref()
                .is_ok_and(|m| m.get(target).map(String::as_str) == Some(status))
        }) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{target} not seen {status} by all within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dead_events(fleet: &augur_tests::LocalFleet) -> anyhow::Result<usize> {
    let mut n = 0;
    for a in fleet.agents.values() {
        let v = a.get_json("/v1/events?topic=member.dead").await?;
        n += v["events"].as_array().map_or(0, Vec::len);
    }
    Ok(n)
}

async fn mesh(
    nodes: usize,
    observe: u64,
    starve: u64,
    starve_percent: f64,
    kills: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut fleet = augur_tests::LocalFleet::new()?;
    // Host collection on, as in production.
    fleet.config = String::new();
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i:02}")).collect();
    for n in &names[..nodes - 1] {
        fleet.start(n).await?;
    }
    for n in &names[..nodes - 1] {
        until_all(&fleet, n, "alive", Duration::from_secs(60)).await?;
    }
    // Join convergence: the last node's signed values (admission, placement) seen by all.
    let last = &names[nodes - 1];
    let t0 = Instant::now();
    fleet.start(last).await?;
    let started = t0.elapsed();
    let join = until_all(&fleet, last, "alive", Duration::from_secs(60)).await? + started;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Steady state.
    let pids: Vec<u32> = fleet.agents.values().map(|a| a.pid).collect();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| proc_usage(*p).map_or(0.0, |u| u.0))
        .collect();
    let mut bytes0 = Vec::new();
    for a in fleet.agents.values() {
        bytes0.push(gossip_bytes(a).await?);
    }
    let pb = bar(observe, "steady");
    for _ in 0..observe {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut cpu = Vec::new();
    let mut bw = Vec::new();
    let mut rss = Vec::new();
    for (i, a) in fleet.agents.values().enumerate() {
        let (c, r) = proc_usage(a.pid)?;
        cpu.push((c - cpu0[i]) / observe as f64 * 100.0);
        rss.push(r as f64 / 1e6);
        bw.push((gossip_bytes(a).await? - bytes0[i]) / observe as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    // Starvation: one node at nice 19 against two busy loops; count deaths declared meanwhile.
    let mut false_deaths = None;
    if starve > 0 {
        let victim = &fleet.agents[&names[1]];
        let before = dead_events(&fleet).await?;
        let cg = std::path::Path::new("/sys/fs/cgroup/cpu/augur-bench-starve");
        let in_cgroup = std::fs::create_dir_all(cg).is_ok()
            && std::fs::write(cg.join("cpu.cfs_period_us"), "200000").is_ok()
            // The kernel's smallest quota is 1 ms.
            && std::fs::write(
                cg.join("cpu.cfs_quota_us"),
                ((2_000.0 * starve_percent) as u64).max(1_000).to_string(),
            )
            .is_ok()
            && std::fs::write(cg.join("cgroup.procs"), victim.pid.to_string()).is_ok();
        let mut hogs: Vec<std::process::Child> = Vec::new();
        if !in_cgroup {
            std::process::Command::new("renice")
                .args(["-n", "19", "-p", &victim.pid.to_string()])
                .output()?;
            for _ in 0..2 {
                hogs.push(
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()?,
                );
            }
        }
        let pb = bar(starve, "starved");
        let c0 = proc_usage(victim.pid)?.0;
        for _ in 0..starve {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let starved_cpu = (proc_usage(victim.pid)?.0 - c0) / starve as f64 * 100.0;
        for mut h in hogs {
            let _ = h.kill();
            let _ = h.wait();
        }
        if in_cgroup {
            let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", victim.pid.to_string());
            let _ = std::fs::remove_dir(cg);
        }
        eprintln!(
            "starved {} for {starve} s ({}), it used {starved_cpu:.2} % of a core",
            names[1],
            if in_cgroup {
                format!("cgroup quota {starve_percent} % of a core, 200 ms period")
            } else {
                "nice 19 against two busy loops".to_owned()
            }
        );
        let after = dead_events(&fleet).await?;
        false_deaths = Some((after - before, starved_cpu));
    }

    // SIGKILL detection.
    let mut detections = Vec::new();
    for k in 0..kills {
        let victim = names[(k % (nodes - 1)) + 1].clone();
        fleet.kill(&victim).await?;
        detections.push(until_all(&fleet, &victim, "dead", Duration::from_secs(60)).await?);
        fleet.start(&victim).await?;
        until_all(&fleet, &victim, "alive", Duration::from_secs(60)).await?;
    }
    let det: Vec<f64> = detections.iter().map(Duration::as_secs_f64).collect();
    let det_median = median(&mut det.clone());
    let result = json!({
        "nodes": nodes,
        "join_seen_by_all_s": join.as_secs_f64(),
        "steady_seconds": observe,
        "cpu_percent_of_core_per_node_median": median(&mut cpu.clone()),
        "cpu_percent_per_node": cpu,
        "gossip_sent_bytes_per_s_per_node_median": median(&mut bw.clone()),
        "rss_mb_median": median(&mut rss),
        "kill_detection_s": det,
        "kill_detection_s_median": det_median,
        "starved_seconds": starve,
        "false_deaths_while_starved": false_deaths.map(|f| f.0),
        "starved_node_cpu_percent": false_deaths.map(|f| f.1),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("{nodes} agents on loopback");
        println!("  join seen by all       {:.2} s", join.as_secs_f64());
        println!(
            "  steady, per agent      {:.2} % of a core, {:.0} B/s gossip sent, {:.1} MB RSS (medians over {observe} s)",
            result["cpu_percent_of_core_per_node_median"]
                .as_f64()
                .unwrap_or(0.0),
            result["gossip_sent_bytes_per_s_per_node_median"]
                .as_f64()
                .unwrap_or(0.0),
            result["rss_mb_median"].as_f64().unwrap_or(0.0)
        );
        if let Some((deaths, cpu)) = false_deaths {
            println!(
                "  starved {starve} s         {deaths} deaths declared; the starved node used {cpu:.2} % of a core"
            );
        }
        println!(
            "  SIGKILL detected by all {} (median {det_median:.2} s)",
            det.iter()
                .map(|d| format!("{d:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

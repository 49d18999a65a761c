//! `augur-bench fuzz`: real agents in a fleet on loopback, one of them sent a seeded stream of
//! hostile datagrams on its gossip (UDP) and QUIC ports for minutes: random bytes, datagrams shaped
//! like augur frames and QUIC Initial packets, and real sealed gossip frames (made by an admitted
//! in-process node) replayed, truncated and mutated, from many source ports. Checked throughout: no
//! agent exits, gossip never restarts, nobody is declared dead; at the end a killed node is still
//! detected as usual.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use augur_mesh::Clock;
use augur_mesh::Keypair;
use augur_mesh::admission::{FleetKey, JoinToken, Trust};
use augur_mesh::secure::{SecureConfig, Sessions};
use chitchat::wire;
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use serde_json::{Value, json};

use augur_mesh::sim::FuzzRng as Rng;

use crate::LocalFleet;

/// What the run measured.
#[derive(Debug)]
pub struct FuzzReport {
    pub json: Value,
}

async fn metric_sum(fleet: &LocalFleet, node: &str, prefix: &str) -> f64 {
    let Ok(text) = fleet.agents[node].get_text("/metrics").await else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn all_alive(fleet: &LocalFleet) -> anyhow::Result<()> {
    for n in fleet.agents.keys() {
        let s = fleet.statuses(n).await?;
        for (peer, status) in &s {
            if status != "alive" {
                bail!("{n} sees {peer} {status}");
            }
        }
        if s.len() != fleet.agents.len() {
            bail!("{n} lists {} members: {s:?}", s.len());
        }
    }
    Ok(())
}

/// Runs the fuzz for `duration` with `rate` datagrams per second to each port of the target.
pub async fn run(
    seed: u64,
    duration: Duration,
    rate: u64,
    progress: impl Fn(u64),
) -> anyhow::Result<FuzzReport> {
    let mut fleet = LocalFleet::new()?;
    for n in ["n1", "n2", "n3"] {
        fleet.start(n).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_alive(&fleet).await.is_err() {
        if Instant::now() > deadline {
            all_alive(&fleet).await.context("the fleet did not form")?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (gossip_port, quic_port) = fleet.ports("n1").context("ports")?;
    let gossip: SocketAddr = ([127, 0, 0, 1], gossip_port).into();
    let quic: SocketAddr = ([127, 0, 0, 1], quic_port).into();

    // An admitted node, in process: it seals real frames to n1 (material to replay and mutate).
    let fleet_key = FleetKey::load(&fleet.fleet_key_path())?;
    let kp = Keypair::generate_ed25519();
    let now_s = Clock::system().now_ms() / 1000;
    let token = fleet_key.issue(kp.public().to_peer_id(), now_s + 3600);
    let insider_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let insider_addr = insider_sock.local_addr()?;
    let sessions = Sessions::new(
        &kp,
        &token,
        Trust::new(vec![fleet_key.public()]),
        Clock::system(),
        SecureConfig::new("augur".to_owned(), insider_addr),
    )
    .context("ed25519 key")?;
    let n1_peer: augur_mesh::PeerId = crate::augur_json(&[
        "fleet",
        "peer-id",
        "--data-dir",
        crate::path_str(&fleet.data_dir("n1"))?,
        "--json",
    ])?["peer_id"]
        .as_str()
        .context("peer_id")?
        .parse()?;
    let n1_token: JoinToken = fleet_key.issue(n1_peer, now_s + 3600);
    sessions.learn(&n1_token, gossip);
    let cluster = format!("augur-{}", "augur");
    let mut syn = Vec::new();
    ChitchatEnvelope {
        version: ProtocolVersion::V1,
        message: ChitchatMessage::Syn {
            cluster_id: cluster,
            digest: wire::digest([]),
        },
    }
    .serialize(&mut syn);

    // Outsiders: many source ports.
    let mut senders = Vec::new();
    for _ in 0..16 {
        senders.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    }
    let mut rng = Rng(seed);
    let mut valid: Vec<Vec<u8>> = Vec::new();
    let mut sent = [0u64; 6];
    let names = [
        "gossip random",
        "gossip frame-shaped",
        "gossip replayed or mutated real frames",
        "quic random",
        "quic initial-shaped",
        "quic mutated initial",
    ];
    let started = Instant::now();
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1) as usize;
    let mut next_check = Instant::now() + Duration::from_secs(10);
    let mut last_progress = 0;
    let cpu0 = crate::proc_usage(fleet.agents["n1"].pid)?.0;
    while started.elapsed() < duration {
        let t0 = Instant::now();
        // A fresh real frame from the admitted node (n1 answers it to the insider's socket).
        if let Ok(f) = sessions.seal(gossip, &syn) {
            let _ = insider_sock.send_to(&f, gossip).await;
            valid.push(f);
            if valid.len() > 256 {
                valid.remove(0);
            }
        }
        for _ in 0..per_tick {
            let s = &senders[rng.below(senders.len())];
            let (kind, to, d) = match rng.below(6) {
                0 => {
                    let n = if rng.below(20) == 0 {
                        rng.below(65_000)
                    } else {
                        rng.below(1_500)
                    };
                    (0, gossip, rng.bytes(n))
                }
                1 => {
                    let n = 2 + rng.below(1_500);
                    let mut d = rng.bytes(n);
                    d[0] = augur_mesh::secure::FRAME_VERSION;
                    d[1] = 1 + rng.below(3) as u8;
                    (1, gossip, d)
                }
                2 => {
                    let f = &valid[rng.below(valid.len())];
                    let d = if rng.below(3) == 0 {
                        f.clone()
                    } else {
                        rng.mutate(f)
                    };
                    (2, gossip, d)
                }
                3 => {
                    let n = rng.below(1_500);
                    (3, quic, rng.bytes(n))
                }
                4 => (4, quic, rng.quic_initial()),
                _ => {
                    let p = rng.quic_initial();
                    (5, quic, rng.mutate(&p))
                }
            };
            if s.send_to(&d, to).await.is_ok() {
                sent[kind] += 1;
            }
        }
        if Instant::now() >= next_check {
            next_check += Duration::from_secs(10);
            for (n, a) in &fleet.agents {
                let h = a.get_json("/healthz").await?;
                if h["status"] != "ok" {
                    bail!("{n} is {h}");
                }
            }
            all_alive(&fleet).await?;
            let secs = started.elapsed().as_secs();
            if secs > last_progress {
                progress(secs - last_progress);
                last_progress = secs;
            }
        }
        if let Some(rest) = tick.checked_sub(t0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_n1 = (crate::proc_usage(fleet.agents["n1"].pid)?.0 - cpu0) / secs * 100.0;
    all_alive(&fleet).await?;
    let restarts = metric_sum(&fleet, "n1", "augur_mesh_gossip_restarts_total").await;
    let dropped = metric_sum(&fleet, "n1", "augur_mesh_gossip_dropped_total").await;
    let dead_events = {
        let mut n = 0;
        for a in fleet.agents.values() {
            let v = a.get_json("/v1/events?topic=member.dead").await?;
            n += v["events"].as_array().map_or(0, Vec::len);
        }
        n
    };
    let rss = crate::proc_usage(fleet.agents["n1"].pid)?.1;
    // Verdicts still work: n3 killed, declared dead by n1 and n2.
    fleet.kill("n3").await?;
    let t0 = Instant::now();
    let detected = loop {
        let a = fleet.statuses("n1").await?;
        let b = fleet.statuses("n2").await?;
        if a.get("n3").map(String::as_str) == Some("dead")
            && b.get("n3").map(String::as_str) == Some("dead")
        {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("n3 was not declared dead within 30 s after the fuzz");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if restarts != 0.0 {
        bail!("gossip restarted {restarts} times during the fuzz");
    }
    if dead_events != 0 {
        bail!("{dead_events} deaths were declared during the fuzz");
    }
    let by_kind: serde_json::Map<String, Value> = names
        .iter()
        .zip(sent)
        .map(|(n, c)| ((*n).to_owned(), json!(c)))
        .collect();
    Ok(FuzzReport {
        json: json!({
            "seed": seed,
            "seconds": secs,
            "datagrams": sent.iter().sum::<u64>(),
            "by_kind": by_kind,
            "gossip_dropped_at_target": dropped,
            "gossip_restarts": restarts,
            "deaths_declared_during": dead_events,
            "target_cpu_percent": cpu_n1,
            "target_rss_bytes": rss,
            "kill_detected_after_s": detected.as_secs_f64(),
        }),
    })
}

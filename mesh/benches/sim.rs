//! Gossip at scale, in one process under tokio's paused clock: augur's authenticated, encrypted,
//! signed and admitted membership (every datagram sealed, over an in-memory datagram network)
//! beside plain chitchat 0.13 (on chitchat's in-memory transport) with the same settings. Bytes are
//! what each would put on the wire: augur's frames, plain chitchat's serialized messages.
//!
//!     cargo bench -p augur-mesh --bench sim -- --nodes 100        # [--only augur|plain|plain-random|plain-peerid]
//!         [--window 1000]    heartbeat intervals per peer in each failure detector (both variants)
//!         [--steady 30]      simulated seconds of steady state measured for bytes and CPU
//!         [--republish 60]   seconds between augur's re-signings of every value
//!
//! Reports, for both: convergence of a value published at one node (time and gossip rounds until
//! 99.9 % and 100 % of the others see it), time until every survivor declares a killed node dead,
//! gossip bytes per node per second, and CPU per node (CPU seconds per simulated second: the share
//! of a core each node would use in real time).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use augur_mesh::membership::MemberStatus;
use augur_mesh::sim::{SimConfig, SimFleet};
use augur_mesh::values::{Health, NodeValue};
use chitchat::transport::ChannelTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(300);
const STEP: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
struct Opts {
    n: usize,
    window: usize,
    steady: Duration,
    republish: Duration,
}

/// Peak resident memory of this process so far, MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `len` pseudo-random base58 characters, as incompressible as the tail of a PeerId.
fn random_id(i: usize, prefix: &str, len: usize) -> String {
    const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut s = String::from(prefix);
    for _ in 0..len {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        s.push(B58[(x % 58) as usize] as char);
    }
    s
}

/// How plain chitchat names its nodes.
#[derive(Clone, Copy, Debug)]
enum NodeIds {
    /// `node-0`, `node-1`, ...: compress to almost nothing.
    Names,
    /// Random ids as long as augur's (`values::SHORT_ID_LEN`): what unique ids cost.
    Random,
    /// Whole PeerIds.
    Full,
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

#[derive(Debug)]
struct Result {
    converge_join_s: f64,
    value_999_s: f64,
    value_all_s: f64,
    dead_all_s: f64,
    bytes_per_node_s: f64,
    cpu_per_node: f64,
}

fn fmt(name: &str, n: usize, r: &Result) {
    println!(
        "{name:<28} n={n:<5} join {:>6.2} s | value 99.9% {:>5.2} s ({:.1} rounds), all {:>5.2} s ({:.1} rounds) | dead by all {:>5.2} s | {:>8.0} B/s/node | {:.3} % core/node",
        r.converge_join_s,
        r.value_999_s,
        r.value_999_s / INTERVAL.as_secs_f64(),
        r.value_all_s,
        r.value_all_s / INTERVAL.as_secs_f64(),
        r.dead_all_s,
        r.bytes_per_node_s,
        r.cpu_per_node * 100.0
    );
}

async fn augur(o: Opts) -> Result {
    let n = o.n;
    let mut fleet = SimFleet::new(
        7,
        SimConfig {
            gossip_interval: INTERVAL,
            sampling_window: o.window,
            republish_every: o.republish,
            // Membership and gossip only: this compares against plain chitchat.
            p2p: false,
            ..SimConfig::default()
        },
    );
    let names: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
    let start = Instant::now();
    for name in &names {
        fleet.join(name).await;
    }
    let ids: Vec<String> = names.iter().map(|x| fleet.peer_id(x)).collect();
    // Joined: every node lists every node alive (checked on a sample of observers past 100).
    let observers: Vec<usize> = if n <= 100 {
        (0..n).collect()
    } else {
        (0..n).step_by(n / 50).collect()
    };
    loop {
        let ok = observers.iter().all(|&o| {
            let m = fleet.membership(&names[o]);
            ids.iter().all(|id| {
                m.member(id)
                    .is_some_and(|x| x.status == MemberStatus::Alive)
            })
        });
        if ok {
            break;
        }
        tokio::time::sleep(INTERVAL).await;
    }
    let converge_join_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Steady state: bytes and CPU over 30 simulated seconds.
    // Bytes on the wire: every frame each node sent, authentication and encryption included.
    let sent = |fleet: &SimFleet| -> u64 {
        names
            .iter()
            .map(|x| {
                fleet
                    .membership(x)
                    .traffic
                    .bytes_sent
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    let b0 = sent(&fleet);
    let c0 = cpu_seconds();
    tokio::time::sleep(o.steady).await;
    let secs = o.steady.as_secs_f64();
    let bytes_per_node_s = (sent(&fleet) - b0) as f64 / secs / n as f64;
    let cpu_per_node = (cpu_seconds() - c0) / secs / n as f64;

    // A value published at node 0.
    let health = Health {
        max_failure_probability: 0.42,
        resource_id: Some("db-1".into()),
        anomaly_score: 0.1,
        above_threshold: false,
        ..Default::default()
    };
    fleet
        .membership(&names[0])
        .publish(NodeValue::Health(health.clone()));
    let t0 = Instant::now();
    let (mut v999, mut vall) = (None, None);
    while vall.is_none() && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(STEP).await;
        let seen = (1..n)
            .filter(|&o| {
                fleet
                    .membership(&names[o])
                    .member(&ids[0])
                    .and_then(|m| m.health)
                    .as_ref()
                    == Some(&health)
            })
            .count();
        let frac = seen as f64 / (n - 1) as f64;
        if v999.is_none() && frac >= 0.999 {
            v999 = Some(t0.elapsed().as_secs_f64());
        }
        if seen == n - 1 {
            vall = Some(t0.elapsed().as_secs_f64());
        }
    }
    // A node killed.
    let victim = n - 1;
    fleet.kill(&names[victim]);
    let t0 = Instant::now();
    let mut dead_all = f64::NAN;
    while t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(STEP).await;
        if (0..victim).all(|o| {
            fleet
                .membership(&names[o])
                .member(&ids[victim])
                .is_some_and(|m| m.status == MemberStatus::Dead)
        }) {
            dead_all = t0.elapsed().as_secs_f64();
            break;
        }
    }
    Result {
        converge_join_s,
        value_999_s: v999.unwrap_or(f64::NAN),
        value_all_s: vall.unwrap_or(f64::NAN),
        dead_all_s: dead_all,
        bytes_per_node_s,
        cpu_per_node,
    }
}

async fn plain(o: Opts, style: NodeIds) -> Result {
    let n = o.n;
    let transport = ChannelTransport::default();
    let addr = |i: usize| SocketAddr::from(([10, 1, 0, 1], 20_000 + i as u16));
    let seeds: Vec<String> = (0..3.min(n)).map(|i| addr(i).to_string()).collect();
    let mut nodes: Vec<Option<ChitchatHandle>> = Vec::new();
    let ids: Vec<ChitchatId> = (0..n)
        .map(|i| {
            ChitchatId::new(
                match style {
                    NodeIds::Names => format!("node-{i}"),
                    NodeIds::Random => random_id(i, "", augur_mesh::values::SHORT_ID_LEN),
                    NodeIds::Full => random_id(i, "12D3KooW", 44),
                },
                1,
                addr(i),
            )
        })
        .collect();
    let start = Instant::now();
    for id in &ids {
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: "plain".into(),
            gossip_interval: INTERVAL,
            listen_addr: id.gossip_advertise_addr,
            seed_nodes: seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: o.window,
                max_interval: Duration::from_secs(10),
                initial_interval: INTERVAL * 2,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
            max_nodes: usize::MAX,
        };
        nodes.push(Some(
            spawn_chitchat(config, Vec::new(), &transport)
                .await
                .expect("starts"),
        ));
    }
    let live_count = |h: &ChitchatHandle| {
        let h = h.chitchat();
        async move { h.lock().await.live_nodes().count() }
    };
    loop {
        let mut all = true;
        for h in nodes.iter().flatten() {
            if live_count(h).await < n {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
        tokio::time::sleep(INTERVAL).await;
    }
    let converge_join_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b0 = transport.statistics().num_bytes_total;
    let c0 = cpu_seconds();
    tokio::time::sleep(o.steady).await;
    let secs = o.steady.as_secs_f64();
    let bytes_per_node_s = (transport.statistics().num_bytes_total - b0) as f64 / secs / n as f64;
    let cpu_per_node = (cpu_seconds() - c0) / secs / n as f64;

    if let Some(h) = &nodes[0] {
        h.with_chitchat(|c| c.self_node_state().set("health", "0.42"))
            .await;
    }
    let t0 = Instant::now();
    let (mut v999, mut vall) = (None, None);
    while vall.is_none() && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(STEP).await;
        let mut seen = 0;
        for h in nodes.iter().skip(1).flatten() {
            let c = h.chitchat();
            let g = c.lock().await;
            if g.node_state(&ids[0]).and_then(|s| s.get("health")) == Some("0.42") {
                seen += 1;
            }
        }
        let frac = seen as f64 / (n - 1) as f64;
        if v999.is_none() && frac >= 0.999 {
            v999 = Some(t0.elapsed().as_secs_f64());
        }
        if seen == n - 1 {
            vall = Some(t0.elapsed().as_secs_f64());
        }
    }
    let victim = n - 1;
    if let Some(h) = nodes[victim].take() {
        let _ = h.initiate_shutdown();
    }
    let t0 = Instant::now();
    let mut dead_all = f64::NAN;
    'outer: while t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(STEP).await;
        for h in nodes.iter().flatten() {
            let c = h.chitchat();
            let g = c.lock().await;
            let dead: HashSet<&ChitchatId> = g.dead_nodes().collect();
            if !dead.contains(&ids[victim]) {
                continue 'outer;
            }
        }
        dead_all = t0.elapsed().as_secs_f64();
        break;
    }
    Result {
        converge_join_s,
        value_999_s: v999.unwrap_or(f64::NAN),
        value_all_s: vall.unwrap_or(f64::NAN),
        dead_all_s: dead_all,
        bytes_per_node_s,
        cpu_per_node,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let o = Opts {
        n: arg("--nodes", 100) as usize,
        window: arg("--window", 1000) as usize,
        steady: Duration::from_secs(arg("--steady", 30)),
        republish: Duration::from_secs(arg("--republish", 60)),
    };
    let n = o.n;
    // --only augur | plain | plain-peerid: one variant (a 1,000-node run of each takes a while).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wants = |v: &str| only.as_deref().is_none_or(|o| o == v);
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    };
    println!(
        "gossip interval {} ms, phi threshold 8, seeds 3, {} nodes, one process, paused clock, \
         detector window {}, steady state {} s, augur republish every {} s",
        INTERVAL.as_millis(),
        n,
        o.window,
        o.steady.as_secs(),
        o.republish.as_secs()
    );
    {
        for (style, name, key) in [
            (NodeIds::Names, "plain chitchat, names", "plain"),
            (
                NodeIds::Random,
                "plain chitchat, random ids",
                "plain-random",
            ),
            (NodeIds::Full, "plain chitchat, PeerIds", "plain-peerid"),
        ] {
            if !wants(key) {
                continue;
            }
            let wall = std::time::Instant::now();
            let r = rt().block_on(plain(o, style));
            fmt(name, n, &r);
            eprintln!(
                "  ({:.1} s wall, peak RSS so far {:.0} MB)",
                wall.elapsed().as_secs_f64(),
                peak_rss_mb()
            );
        }
    }
    if wants("augur") {
        let wall = std::time::Instant::now();
        let r = rt().block_on(augur(o));
        fmt("augur (signed, admitted)", n, &r);
        eprintln!(
            "  ({:.1} s wall, peak RSS so far {:.0} MB)",
            wall.elapsed().as_secs_f64(),
            peak_rss_mb()
        );
    }
}

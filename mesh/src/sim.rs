//! A deterministic in-process fleet for tests and simulations: every node runs the real mesh, its
//! membership over an in-memory datagram network (the same authenticated, encrypted frames UDP
//! carries; a script can also inject any bytes from any address) and its libp2p swarm (admission,
//! gossipsub events, ping) over libp2p's in-process memory transport, under tokio's paused clock
//! (so seconds of gossip take microseconds, and no test sleeps on the wall clock), with keys
//! derived from a seed. Partitions cut both networks. Scripts read like the operations they model:
//!
//! ```ignore
//! let mut fleet = SimFleet::new(7, SimConfig::default());
//! fleet.join_all(["a", "b", "c"]).await;
//! fleet.converge().await;
//! fleet.kill("c").await;
//! let took = fleet.until_all_see("c", MemberStatus::Dead).await;
//! ```
//!
//! What is not deterministic: chitchat picks its gossip partners with its own unseeded generator, so
//! the exact round in which something converges varies a little between runs; scripts assert bounds.
//! libp2p's own timers (ping interval, gossipsub heartbeat, idle and request timeouts) run on the
//! wall clock (`futures-timer`), not tokio's: what the harness relies on (connecting, admission,
//! publishing to connected peers, a connection closing when its node dies) needs none of them, and
//! ping round trips arrive at wall-clock pace. Scripts must not wait on those timers.
//!
//! With `SimConfig::p2p` off, nodes run membership alone (for large simulations and for tests of
//! membership rules that set round trips by hand).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use libp2p::identity::Keypair;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::{FleetKey, FleetPublicKey, JoinToken, Trust};
use crate::clock::Clock;
use crate::datagram::MemoryDatagrams;
use crate::membership::{Member, MemberStatus, Membership, MembershipConfig};
use crate::node::{Mesh, MeshConfig};
use crate::swarm::MemoryNet;
use crate::tasks::Tasks;
use crate::values::{self, NodeValue};

/// libp2p's memory transport has one port space per process; fleets in parallel tests must not
/// collide, so ports are handed out process-wide.
static NEXT_MEMORY_PORT: AtomicU64 = AtomicU64::new(40_000);

/// Settings of a simulated fleet.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    pub dead_node_grace: Duration,
    /// Seeds each joining node is given: the first `seeds` nodes to join.
    pub seeds: usize,
    /// Run each node's libp2p swarm too (over the memory transport).
    pub p2p: bool,
    pub admission_timeout: Duration,
    pub ping_interval: Duration,
    /// Heartbeat intervals per peer in each failure detector (memory: 8 bytes each, per pair).
    pub sampling_window: usize,
    /// How often every value is signed again so that none ages out.
    pub republish_every: Duration,
    /// Nodes each member keeps at most.
    pub max_nodes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_millis(300),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
            seeds: 3,
            p2p: true,
            admission_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            sampling_window: 1000,
            republish_every: Duration::from_secs(60),
            max_nodes: 2048,
        }
    }
}

/// One simulated node.
#[allow(missing_debug_implementations)]
pub struct SimNode {
    pub name: String,
    pub keypair: Keypair,
    pub addr: SocketAddr,
    /// Its libp2p memory-transport port.
    pub memory_port: u64,
    pub membership: Option<Membership>,
    /// The whole mesh, when the fleet runs libp2p.
    pub mesh: Option<Mesh>,
    generation: u64,
    /// Holds a token of this fleet (forged nodes do not).
    pub admitted: bool,
    /// The fleet keys it trusts (a script can change them while it runs).
    pub trust: Trust,
}

/// A fleet of simulated nodes sharing one in-memory network.
#[allow(missing_debug_implementations)]
pub struct SimFleet {
    /// The gossip network: datagrams between nodes' addresses.
    pub transport: MemoryDatagrams,
    pub memory: MemoryNet,
    pub fleet: FleetKey,
    pub config: SimConfig,
    pub nodes: BTreeMap<String, SimNode>,
    seed: u64,
    next_port: u16,
    seeds: Vec<String>,
    clock: Clock,
    /// Nodes whose wall clock is off the fleet's, by milliseconds.
    skews: BTreeMap<String, i64>,
}

/// Deterministic 32 bytes from a seed and a label.
fn seeded(seed: u64, label: &str) -> [u8; 32] {
    let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in label.bytes() {
        rng = rng.wrapping_mul(0x100_0000_01B3) ^ u64::from(b);
    }
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        // SplitMix64.
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    out
}

/// Token lifetime in simulations (expiry is tested on its own).
const TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;

impl SimFleet {
    /// A fleet whose keys derive from `seed`. Must run inside a tokio runtime with a paused clock.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        Self {
            transport: MemoryDatagrams::default(),
            memory: MemoryNet::default(),
            fleet: FleetKey::from_seed(seeded(seed, "fleet")),
            config,
            nodes: BTreeMap::new(),
            seed,
            next_port: 10_000,
            seeds: Vec::new(),
            clock: Clock::tokio(1_800_000_000_000),
            skews: BTreeMap::new(),
        }
    }

    /// Sets `name`'s wall clock `ms` off the fleet's (ahead when positive) from its next start.
    pub fn set_skew(&mut self, name: &str, ms: i64) {
        self.skews.insert(name.to_owned(), ms);
    }

    /// `name`'s wall clock.
    pub fn clock_of(&self, name: &str) -> Clock {
        match self.skews.get(name) {
            Some(ms) => self.clock.skewed(*ms),
            None => self.clock.clone(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn keypair(&self, name: &str) -> Keypair {
        Keypair::ed25519_from_bytes(seeded(self.seed, name))
            .unwrap_or_else(|_| Keypair::generate_ed25519())
    }

    fn membership_config(&self, addr: SocketAddr, generation: u64) -> MembershipConfig {
        let mut c = MembershipConfig::new(self.fleet.public().fleet_id(), addr);
        c.seeds = self.seeds.clone();
        c.gossip_interval = self.config.gossip_interval;
        c.phi_threshold = self.config.phi_threshold;
        c.dead_node_grace = self.config.dead_node_grace;
        c.generation = generation;
        c.sampling_window = self.config.sampling_window;
        c.republish_every = self.config.republish_every;
        c.max_nodes = self.config.max_nodes;
        c
    }

    /// Starts `name` with `token`, trusting `trusted`; `admitted` records whether the fleet issued
    /// the token (the harness's own knowledge, for `converge`).
    async fn start(
        &mut self,
        name: &str,
        token: JoinToken,
        trusted: Vec<FleetPublicKey>,
        admitted: bool,
    ) -> harness_result::Result<()> {
        let keypair = self.keypair(name);
        let (addr, memory_port, generation) = match self.nodes.get(name) {
            Some(n) => (n.addr, n.memory_port, n.generation + 1),
            None => {
                self.next_port += 1;
                (
                    SocketAddr::from(([10, 0, 0, 1], self.next_port)),
                    NEXT_MEMORY_PORT.fetch_add(1, Ordering::Relaxed),
                    1,
                )
            }
        };
        let config = self.membership_config(addr, generation);
        let trust = Trust::new(trusted);
        let trusted = trust.clone();
        let clock = self.clock_of(name);
        let (membership, mesh) = if self.config.p2p {
            let listen = format!("/memory/{memory_port}")
                .parse()
                .map_err(|e: libp2p::multiaddr::Error| e.to_string())?;
            let mesh = Mesh::start_on(
                keypair.clone(),
                token,
                trusted,
                MeshConfig {
                    membership: config,
                    p2p_listen: vec![listen],
                    admission_timeout: self.config.admission_timeout,
                    ping_interval: self.config.ping_interval,
                    api_http: None,
                    api_grpc: None,
                    memory: Some(self.memory.clone()),
                },
                clock.clone(),
                Arc::new(self.transport.clone()),
                &Tasks::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            (mesh.membership.clone(), Some(mesh))
        } else {
            let m = Membership::start(
                config,
                keypair.clone(),
                token,
                trusted,
                clock.clone(),
                Arc::new(self.transport.clone()),
                &Tasks::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            (m, None)
        };
        membership.publish(NodeValue::Placement(values::Placement {
            node_name: name.to_owned(),
            ..Default::default()
        }));
        if admitted && self.seeds.len() < self.config.seeds {
            self.seeds.push(addr.to_string());
        }
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                name: name.to_owned(),
                keypair,
                addr,
                memory_port,
                membership: Some(membership),
                mesh,
                generation,
                admitted,
                trust,
            },
        );
        Ok(())
    }

    /// Starts an admitted node.
    pub async fn join(&mut self, name: &str) {
        self.join_expiring(name, Duration::from_secs(TOKEN_TTL_S))
            .await;
    }

    /// Starts an admitted node whose token expires `ttl` from now.
    pub async fn join_expiring(&mut self, name: &str, ttl: Duration) {
        let peer = self.keypair(name).public().to_peer_id();
        let now_s = self.clock.now_ms() / 1000;
        let token = self.fleet.issue(peer, now_s + ttl.as_secs());
        let trusted = vec![self.fleet.public()];
        if let Err(e) = self.start(name, token, trusted, true).await {
            panic!("{name} cannot join: {e}");
        }
    }

    pub async fn join_all<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for n in names {
            self.join(n).await;
        }
    }

    /// Starts a node whose token was signed by another fleet's key: it gossips (in this fleet's
    /// name), but must never be admitted. It trusts its own rogue key, so that it starts at all.
    pub async fn join_forged(&mut self, name: &str) {
        let peer = self.keypair(name).public().to_peer_id();
        let rogue = FleetKey::from_seed(seeded(self.seed, "rogue fleet"));
        let token = rogue.issue(peer, u64::MAX);
        if let Err(e) = self.start(name, token, vec![rogue.public()], false).await {
            panic!("{name} cannot start: {e}");
        }
    }

    /// Replaces the fleet keys `name` trusts (a rotation's last step, run on one node).
    pub fn set_trust(&self, name: &str, keys: Vec<FleetPublicKey>) {
        self.nodes[name].trust.set(keys);
    }

    /// The gossip address of a node.
    pub fn gossip_addr(&self, name: &str) -> SocketAddr {
        self.nodes[name].addr
    }

    /// Stops a node abruptly (no goodbye), as SIGKILL would.
    pub fn kill(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        if let Some(mesh) = node.mesh.take() {
            mesh.shutdown();
        }
        if let Some(m) = node.membership.take() {
            m.shutdown();
        }
    }

    /// Stops a node after announcing its departure.
    pub async fn leave(&mut self, name: &str) {
        let linger = self.config.gossip_interval * 5;
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        let mesh = node.mesh.take();
        if let Some(m) = node.membership.take() {
            m.leave(linger).await;
        }
        if let Some(mesh) = mesh {
            mesh.shutdown();
        }
    }

    /// Restarts a stopped node with the same identity and a new generation.
    pub async fn restart(&mut self, name: &str) {
        self.kill(name);
        // The old socket must be gone before the same address is opened again: chitchat drops it
        // when its server task ends, a little after shutdown.
        tokio::time::sleep(self.config.gossip_interval).await;
        self.join(name).await;
    }

    /// Cuts every link between the two groups, both ways: gossip, and libp2p connections (open
    /// ones are closed, new dials fail).
    pub async fn partition(&self, left: &[&str], right: &[&str]) {
        for a in left {
            for b in right {
                let (na, nb) = (&self.nodes[*a], &self.nodes[*b]);
                self.transport.cut(na.addr, nb.addr);
                self.memory.cut(na.memory_port, nb.memory_port);
                self.memory.cut(nb.memory_port, na.memory_port);
                for (x, y) in [(na, nb), (nb, na)] {
                    if let Some(mesh) = &x.mesh {
                        mesh.swarm.disconnect(y.keypair.public().to_peer_id()).await;
                    }
                }
            }
        }
        let cut = self
            .until(Duration::from_secs(5), |f| {
                !f.config.p2p
                    || left.iter().all(|a| {
                        right
                            .iter()
                            .all(|b| !f.connected(a, b) && !f.connected(b, a))
                    })
            })
            .await;
        assert!(
            cut.is_some(),
            "libp2p connections across the partition closed"
        );
    }

    /// Restores every link between the two groups (libp2p connections are dialled again when the
    /// members see each other).
    pub async fn heal(&self, left: &[&str], right: &[&str]) {
        for a in left {
            for b in right {
                let (na, nb) = (&self.nodes[*a], &self.nodes[*b]);
                self.transport.restore(na.addr, nb.addr);
                self.memory.restore(na.memory_port, nb.memory_port);
                self.memory.restore(nb.memory_port, na.memory_port);
            }
        }
    }

    pub fn membership(&self, name: &str) -> &Membership {
        self.nodes[name]
            .membership
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// The node's whole mesh (fleets with `p2p`).
    pub fn mesh(&self, name: &str) -> &Mesh {
        self.nodes[name]
            .mesh
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is not running a mesh"))
    }

    pub fn peer_id(&self, name: &str) -> String {
        self.nodes[name].keypair.public().to_peer_id().to_string()
    }

    /// What `observer` knows of `target`.
    pub fn view(&self, observer: &str, target: &str) -> Option<Member> {
        let id = self.peer_id(target);
        self.membership(observer)
            .members()
            .into_iter()
            .find(|m| m.peer_id == id)
    }

    pub fn status(&self, observer: &str, target: &str) -> Option<MemberStatus> {
        self.view(observer, target).map(|m| m.status)
    }

    /// Names of the running nodes.
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.membership.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Advances (paused) time by `d`.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Steps gossip intervals until `check` holds; returns the simulated time it took, or None
    /// after `limit`.
    pub async fn until(
        &self,
        limit: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            if check(self) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(self.config.gossip_interval / 3).await;
        }
    }

    /// Until every running node sees `target` with `status`.
    pub async fn until_all_see(&self, target: &str, status: MemberStatus) -> Option<Duration> {
        let observers: Vec<String> = self.running().into_iter().filter(|n| n != target).collect();
        self.until(Duration::from_secs(120), |f| {
            observers
                .iter()
                .all(|o| f.status(o, target) == Some(status))
        })
        .await
    }

    /// Until every running node sees every running admitted node alive and, with `p2p`, holds an
    /// admitted libp2p connection to it.
    pub async fn converge(&self) -> Option<Duration> {
        let admitted: Vec<String> = self
            .running()
            .into_iter()
            .filter(|n| self.admitted(n))
            .collect();
        self.until(Duration::from_secs(120), |f| {
            admitted.iter().all(|o| {
                admitted.iter().all(|t| {
                    f.status(o, t) == Some(MemberStatus::Alive) && (o == t || f.connected(o, t))
                })
            })
        })
        .await
    }

    /// Whether `a` holds an admitted libp2p connection to `b` (always true without `p2p`).
    pub fn connected(&self, a: &str, b: &str) -> bool {
        if !self.config.p2p {
            return true;
        }
        match &self.nodes[a].mesh {
            Some(mesh) => mesh
                .swarm
                .is_admitted(&self.nodes[b].keypair.public().to_peer_id()),
            None => false,
        }
    }

    /// Has `from` dial `to` over libp2p (nodes dial the members they see on their own; this is for
    /// nodes that see nobody, such as a forged one).
    pub async fn dial(&self, from: &str, to: &str) {
        let addr = format!("/memory/{}", self.nodes[to].memory_port)
            .parse()
            .expect("memory address");
        let _ = self.mesh(from).swarm.dial(addr).await;
    }

    fn admitted(&self, name: &str) -> bool {
        self.nodes[name].admitted
    }
}

/// The harness's results: a failed expectation as a plain message (the harness has no error type
/// of its own; a test prints the message).
mod harness_result {
    pub type Result<T> = std::result::Result<T, String>;
}

/// Seeded bytes for fuzzing (SplitMix64): a run is reproducible from its seed. Used by the
/// harness's attack tests and by `augur-bench fuzz`.
#[derive(Debug)]
pub struct FuzzRng(pub u64);

impl FuzzRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Truncates, flips bits in, or extends a datagram.
    pub fn mutate(&mut self, f: &[u8]) -> Vec<u8> {
        let mut g = f.to_vec();
        match self.below(4) {
            0 => g.truncate(self.below(g.len() + 1)),
            1 | 2 => {
                for _ in 0..=self.below(8) {
                    if !g.is_empty() {
                        let i = self.below(g.len());
                        g[i] ^= 1 << self.below(8);
                    }
                }
            }
            _ => {
                let n = self.below(64);
                let extra = self.bytes(n);
                g.extend(extra);
            }
        }
        g
    }

    /// A random IPv4 address and port.
    pub fn addr(&mut self) -> SocketAddr {
        let x = self.next_u64();
        SocketAddr::from((
            [(x >> 8) as u8, (x >> 16) as u8, (x >> 24) as u8, x as u8],
            (x >> 32) as u16,
        ))
    }

    /// A datagram shaped like a QUIC v1 Initial packet (long header, connection ids, padded to
    /// 1,200 bytes) with a payload that does not decrypt.
    pub fn quic_initial(&mut self) -> Vec<u8> {
        let mut p = vec![0xC0 | self.below(4) as u8, 0, 0, 0, 1];
        let dcid = self.bytes(8);
        p.push(8);
        p.extend(&dcid);
        p.push(8);
        p.extend(self.bytes(8));
        p.push(0); // token length
        p.extend([0x44, 0x9A]); // length 1178 (varint)
        let rest = 1200 - p.len();
        p.extend(self.bytes(rest));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MembershipEvent;
    use crate::values::{Health, ValueKind};

    #[tokio::test(start_paused = true)]
    async fn a_fleet_forms_and_a_killed_node_is_declared_dead_by_all() {
        let mut fleet = SimFleet::new(1, SimConfig::default());
        fleet.join_all(["a", "b", "c", "d", "e"]).await;
        let formed = fleet.converge().await.expect("converges");
        assert!(formed < Duration::from_secs(10), "formed in {formed:?}");
        let mut events = fleet.membership("a").subscribe();
        fleet.kill("e");
        let took = fleet
            .until_all_see("e", MemberStatus::Dead)
            .await
            .expect("declared dead");
        assert!(
            took <= Duration::from_secs(5),
            "declared dead after {took:?}"
        );
        let e = fleet.peer_id("e");
        let mut saw_dead = false;
        while let Ok(ev) = events.try_recv() {
            if let MembershipEvent::Dead(m) = ev {
                saw_dead |= m.peer_id == e;
            }
        }
        assert!(saw_dead, "a announced e's death");
        // Nobody else was harmed.
        for o in ["a", "b", "c", "d"] {
            for t in ["a", "b", "c", "d"] {
                assert_eq!(
                    fleet.status(o, t),
                    Some(MemberStatus::Alive),
                    "{o} sees {t}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_node_recovers_and_a_leaving_node_is_left_not_dead() {
        let mut fleet = SimFleet::new(2, SimConfig::default());
        fleet.join_all(["a", "b", "c"]).await;
        fleet.converge().await.expect("converges");
        fleet.kill("c");
        fleet
            .until_all_see("c", MemberStatus::Dead)
            .await
            .expect("dead");
        fleet.restart("c").await;
        fleet
            .until_all_see("c", MemberStatus::Alive)
            .await
            .expect("c is back");
        assert_eq!(fleet.view("a", "c").map(|m| m.generation), Some(2));
        // Its new process is dialled and readmitted over libp2p.
        fleet.converge().await.expect("c is readmitted over libp2p");
        fleet.leave("b").await;
        fleet
            .until(Duration::from_secs(30), |f| {
                f.status("a", "b") == Some(MemberStatus::Left)
            })
            .await
            .expect("b left");
        // And it stays left, never dead, while its state lingers.
        fleet.run_for(Duration::from_secs(20)).await;
        assert_eq!(fleet.status("a", "b"), Some(MemberStatus::Left));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_isolates_and_healing_restores() {
        let mut fleet = SimFleet::new(3, SimConfig::default());
        fleet.join_all(["a", "b", "c", "d"]).await;
        fleet.converge().await.expect("converges");
        fleet.partition(&["a", "b"], &["c", "d"]).await;
        fleet
            .until(Duration::from_secs(30), |f| {
                f.status("a", "c") == Some(MemberStatus::Dead)
                    && f.status("c", "a") == Some(MemberStatus::Dead)
            })
            .await
            .expect("each side sees the other dead");
        assert_eq!(fleet.status("a", "b"), Some(MemberStatus::Alive));
        fleet.heal(&["a", "b"], &["c", "d"]).await;
        fleet.converge().await.expect("healed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_without_a_fleet_token_is_never_admitted() {
        let mut fleet = SimFleet::new(4, SimConfig::default());
        fleet.join_all(["a", "b"]).await;
        fleet.join_forged("forged-x").await;
        fleet.converge().await.expect("converges");
        fleet.run_for(Duration::from_secs(10)).await;
        // It sees nobody (it trusts another fleet's key), so it is made to dial over libp2p.
        fleet.dial("forged-x", "a").await;
        let x = fleet.nodes["forged-x"].keypair.public().to_peer_id();
        let refused = fleet.mesh("a").swarm.stats.clone();
        fleet
            .until(Duration::from_secs(5), |_| {
                refused.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1
            })
            .await
            .expect("a refuses it on libp2p");
        assert!(!fleet.mesh("a").swarm.is_admitted(&x));
        assert!(!fleet.connected("forged-x", "a"));
        for o in ["a", "b"] {
            assert_eq!(fleet.view(o, "forged-x"), None, "{o} must not list it");
            // Its gossip never reaches chitchat: its probes are refused for their token.
            let sessions = &fleet.membership(o).sessions;
            assert!(sessions.stats.count(crate::secure::Dropped::Unadmitted) >= 1);
            assert!(!sessions.peers().contains(&x));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn forged_and_stale_values_are_dropped_and_counted() {
        let mut fleet = SimFleet::new(5, SimConfig::default());
        fleet.join_all(["a", "b"]).await;
        fleet.converge().await.expect("converges");
        let good = Health {
            max_failure_probability: 0.1,
            resource_id: Some("db-1".into()),
            anomaly_score: 0.0,
            above_threshold: false,
            ..Default::default()
        };
        fleet
            .membership("b")
            .publish(NodeValue::Health(good.clone()));
        fleet
            .until(Duration::from_secs(10), |f| {
                f.view("a", "b").and_then(|m| m.health) == Some(good.clone())
            })
            .await
            .expect("b's health reaches a");
        let fleet_id = fleet.fleet.public().fleet_id();
        let now = fleet.clock().now_ms();
        // b's value, replaced in b's chitchat state by one signed with another key.
        let forger = Keypair::generate_ed25519();
        let bad = NodeValue::Health(Health {
            max_failure_probability: 0.99,
            above_threshold: true,
            ..good.clone()
        });
        let (key, forged) = values::seal(&forger, &fleet_id, &bad, u64::MAX / 2, now);
        let set = |k: &'static str, v: String| {
            let m = fleet.membership("b").clone();
            async move {
                m.chitchat()
                    .with_chitchat(|c| c.self_node_state().set(k, v.clone()))
                    .await;
            }
        };
        set(key, forged).await;
        let stats = fleet.membership("a").stats.clone();
        fleet
            .until(Duration::from_secs(10), |_| {
                stats.rejected().contains(&("bad_signature", 1))
            })
            .await
            .expect("counted as a bad signature");
        assert_eq!(
            fleet.view("a", "b").and_then(|m| m.health),
            Some(good.clone())
        );
        // Unsigned text under an augur key.
        set(ValueKind::Health.key(), "0.99".to_owned()).await;
        fleet
            .until(Duration::from_secs(10), |_| {
                stats.rejected().contains(&("unsigned", 1))
            })
            .await
            .expect("counted as unsigned");
        // A correctly signed but old value (a replay of something b said long ago).
        let b_key = fleet.nodes["b"].keypair.clone();
        let (_, old) = values::seal(&b_key, &fleet_id, &bad, 1, now - 3_600_000);
        set(key, old).await;
        fleet
            .until(Duration::from_secs(10), |_| {
                stats.rejected().contains(&("stale", 1))
            })
            .await
            .expect("counted as stale");
        assert_eq!(fleet.view("a", "b").and_then(|m| m.health), Some(good));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_answering_pings_is_suspect_not_dead_when_its_gossip_stalls() {
        // Membership alone: the script plays the pings, which libp2p times on the wall clock.
        let mut fleet = SimFleet::new(
            7,
            SimConfig {
                p2p: false,
                ..SimConfig::default()
            },
        );
        fleet.join_all(["a", "b", "c"]).await;
        fleet.converge().await.expect("converges");
        // c's gossip stops reaching anyone (as when it is starved), but it still answers a's pings.
        fleet.partition(&["c"], &["a", "b"]).await;
        let c = fleet.nodes["c"].keypair.public().to_peer_id();
        for _ in 0..40 {
            fleet.membership("a").set_rtt(&c, Duration::from_millis(2));
            fleet.run_for(Duration::from_millis(500)).await;
        }
        assert_eq!(
            fleet.status("b", "c"),
            Some(MemberStatus::Dead),
            "b has no witness"
        );
        assert_eq!(
            fleet.status("a", "c"),
            Some(MemberStatus::Suspect),
            "a has one"
        );
        assert!(
            fleet
                .membership("a")
                .stats
                .held_verdicts
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        // Once the pings stop too, a declares it dead within the witness window.
        fleet
            .until(Duration::from_secs(5), |f| {
                f.status("a", "c") == Some(MemberStatus::Dead)
            })
            .await
            .expect("dead once unwitnessed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_stalled_doubts_itself_instead_of_declaring_deaths() {
        let mut fleet = SimFleet::new(8, SimConfig::default());
        fleet.join_all(["a", "b", "c"]).await;
        fleet.converge().await.expect("converges");
        let mut events = fleet.membership("a").subscribe();
        // Every node's loop stalls for 4 s at once (a paused VM, a starved host): on waking, every
        // failure detector sees everyone silent for longer than its timeout.
        tokio::time::advance(Duration::from_secs(4)).await;
        fleet.run_for(Duration::from_secs(8)).await;
        while let Ok(e) = events.try_recv() {
            assert!(
                !matches!(e, MembershipEvent::Dead(_)),
                "a declared a death after its own stall: {e:?}"
            );
        }
        assert!(
            fleet
                .membership("a")
                .stats
                .self_doubts
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        fleet.converge().await.expect("all alive again");
    }

    #[tokio::test(start_paused = true)]
    async fn dead_nodes_are_forgotten_after_the_grace_period() {
        let mut fleet = SimFleet::new(
            6,
            SimConfig {
                dead_node_grace: Duration::from_secs(60),
                ..SimConfig::default()
            },
        );
        fleet.join_all(["a", "b", "c"]).await;
        fleet.converge().await.expect("converges");
        fleet.kill("c");
        fleet
            .until_all_see("c", MemberStatus::Dead)
            .await
            .expect("dead");
        fleet
            .until(Duration::from_secs(180), |f| {
                f.view("a", "c").is_none() && f.view("b", "c").is_none()
            })
            .await
            .expect("forgotten");
    }
    fn prediction_event(fleet: &SimFleet, node: &str) -> crate::node::FleetEvent {
        crate::node::FleetEvent {
            ts_ms: fleet.clock().now_ms(),
            peer_id: fleet.peer_id(node),
            node_name: Some(node.to_owned()),
            resource_id: Some("db-1".to_owned()),
            origin: String::new(),
            kind: crate::node::EventKind::PredictionAbove(crate::node::Crossing {
                failure_probability: 0.9,
                threshold: 0.75,
                eta_s: None,
                drivers: Vec::new(),
                model_version: "v".to_owned(),
            }),
        }
    }

    /// The next event on `rx` with `topic`, within `limit` of simulated time.
    async fn next_event(
        rx: &mut tokio::sync::broadcast::Receiver<crate::node::FleetEvent>,
        topic: &str,
        limit: Duration,
    ) -> Option<crate::node::FleetEvent> {
        tokio::time::timeout(limit, async {
            loop {
                match rx.recv().await {
                    Ok(e) if e.topic() == topic => return Some(e),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn fleet_events_travel_over_libp2p_once_each_and_stop_at_a_partition() {
        let mut fleet = SimFleet::new(9, SimConfig::default());
        fleet.join_all(["a", "b", "c", "d"]).await;
        fleet.converge().await.expect("converges");
        for (o, t) in [("a", "b"), ("c", "d"), ("d", "a")] {
            assert!(fleet.connected(o, t), "{o} is connected to {t} over libp2p");
        }
        // An event only b knows (its resource crossed the threshold) reaches everyone, signed by b.
        let mut subs: Vec<_> = ["a", "c", "d"]
            .iter()
            .map(|n| fleet.mesh(n).subscribe())
            .collect();
        fleet
            .mesh("b")
            .publish_event(prediction_event(&fleet, "b"))
            .await;
        for rx in &mut subs {
            let e = next_event(rx, "prediction.above_threshold", Duration::from_secs(5))
                .await
                .expect("delivered");
            assert_eq!(e.origin, fleet.peer_id("b"));
            assert_eq!(e.resource_id.as_deref(), Some("db-1"));
        }
        // A death is one fact, however many nodes report it.
        fleet.kill("d");
        let mut deaths = 0;
        let rx = &mut subs[0];
        while next_event(rx, "member.dead", Duration::from_secs(10))
            .await
            .is_some()
        {
            deaths += 1;
        }
        assert_eq!(deaths, 1, "a delivers d's death once");
        assert!(!fleet.connected("a", "d"), "d's connection closed with it");
        // Across a partition nothing travels: b's next event reaches a but not c.
        fleet.partition(&["a", "b"], &["c"]).await;
        assert!(!fleet.connected("a", "c") && !fleet.connected("c", "b"));
        let (mut at_a, mut at_c) = (fleet.mesh("a").subscribe(), fleet.mesh("c").subscribe());
        fleet
            .mesh("b")
            .publish_event(prediction_event(&fleet, "b"))
            .await;
        assert!(
            next_event(
                &mut at_a,
                "prediction.above_threshold",
                Duration::from_secs(5)
            )
            .await
            .is_some()
        );
        assert!(
            next_event(
                &mut at_c,
                "prediction.above_threshold",
                Duration::from_secs(5)
            )
            .await
            .is_none(),
            "c is cut off"
        );
        // Healed, the nodes dial each other again and are readmitted.
        fleet.heal(&["a", "b"], &["c"]).await;
        fleet.converge().await.expect("healed");
        assert!(fleet.connected("c", "a") && fleet.connected("b", "c"));
    }
}

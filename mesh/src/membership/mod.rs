//! Membership and liveness over chitchat 0.13 (phi-accrual failure detection), with every value
//! signed (see [`crate::values`]) and every node admitted by its join token before anything it
//! publishes is believed.
//!
//! One task owns the view: every gossip interval (and soon after a value arrives) it reads chitchat's
//! state and hands it to [`view::View`], the decisions without I/O (what is believed, who is a
//! member, each member's status, the events); the task carries out what the view returns. Values
//! are verified once per chitchat version, so a steady fleet costs no signature checks. The same
//! task re-signs and republishes this node's values so that they never look stale, and a
//! supervisor starts chitchat again when it ends unexpectedly.

pub mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::admission::{JoinToken, Trust};
use crate::clock::Clock;
use crate::datagram::Datagrams;
use crate::secure::{SecureConfig, SecureTransport, Sessions};
use crate::tasks::Tasks;
use crate::transport::GossipTraffic;
use crate::values::{
    self, Capacity, Endpoints, GossipIdentity, Health, NodeValue, Rejected, ValueKind,
};
use view::{Action, Count, Input, Liveness, Now, ObservedNode, View};

/// Membership settings.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// Separates fleets' gossip and binds signatures to one fleet (the fleet's name).
    pub fleet_id: String,
    pub listen_addr: SocketAddr,
    /// Where peers reach this node's gossip (the listen address unless behind NAT).
    pub advertise_addr: SocketAddr,
    /// `HOST:PORT` of other members' gossip addresses.
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    /// phi above which a node is declared dead.
    pub phi_threshold: f64,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace: Duration,
    /// How often this node re-signs its values even when they did not change.
    pub republish_every: Duration,
    /// Heartbeat intervals each phi-accrual detector keeps per peer (8 bytes each, preallocated:
    /// 8 KB per peer at the default 1,000).
    pub sampling_window: usize,
    /// Values older than this (by their signed timestamp) are stale.
    pub max_value_age: Duration,
    /// Distinguishes restarts of the same node (its start time, for instance).
    pub generation: u64,
    /// A member the failure detector judges dead stays suspect while it answered a libp2p ping
    /// this recently (a second witness: slow gossip from a starved node is not death).
    pub ping_witness: Duration,
    /// When this node's own gossip loop runs this late (it is starved itself), its verdicts are
    /// not trusted: members it would declare dead stay suspect until it has been on time for
    /// `self_doubt` (Lifeguard's local health awareness).
    pub lateness_limit: Duration,
    pub self_doubt: Duration,
    /// At most this many nodes are kept in the gossip state and hold gossip sessions (each costs
    /// about 10 KB on every member); nodes beyond it are ignored.
    pub max_nodes: usize,
}

impl MembershipConfig {
    pub fn new(fleet_id: String, listen_addr: SocketAddr) -> Self {
        Self {
            fleet_id,
            listen_addr,
            advertise_addr: listen_addr,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(300),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
            republish_every: Duration::from_secs(60),
            sampling_window: 1000,
            max_value_age: Duration::from_secs(300),
            generation: 0,
            ping_witness: Duration::from_secs(3),
            lateness_limit: Duration::from_millis(900),
            self_doubt: Duration::from_secs(10),
            max_nodes: 2048,
        }
    }
}

/// A member's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Alive,
    /// Alive by the failure detector, but silent for more than half its timeout.
    Suspect,
    Dead,
    /// Announced its departure.
    Left,
}

impl MemberStatus {
    pub const ALL: [MemberStatus; 4] = [
        MemberStatus::Alive,
        MemberStatus::Suspect,
        MemberStatus::Dead,
        MemberStatus::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Dead => "dead",
            MemberStatus::Left => "left",
        }
    }
}

/// One admitted member, as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub peer_id: String,
    pub node_name: Option<String>,
    pub status: MemberStatus,
    pub is_self: bool,
    pub gossip_addr: String,
    pub generation: u64,
    pub health: Option<Health>,
    pub capacity: Option<Capacity>,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub services: Vec<String>,
    /// The service instances it runs (its signed `augur.instances`).
    #[serde(default)]
    pub instances: Vec<values::InstanceValue>,
    pub endpoints: Option<Endpoints>,
    pub models: BTreeMap<String, String>,
    /// Milliseconds since its heartbeat last advanced (None for this node).
    pub last_heard_ms: Option<u64>,
    /// libp2p ping round trip, when the swarm has one.
    pub rtt_ms: Option<f64>,
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq)]
pub enum MembershipEvent {
    Joined(Member),
    Dead(Member),
    Recovered(Member),
    Left(Member),
    /// Forgotten after the dead-node grace period.
    Removed {
        peer_id: String,
    },
}

/// Counters of what gossip brought.
#[derive(Debug, Default)]
pub struct MembershipStats {
    pub values_accepted: AtomicU64,
    rejected: [AtomicU64; 6],
    /// Nodes present in chitchat without a valid join token (last count).
    pub unadmitted_nodes: AtomicU64,
    pub gossip_rounds: AtomicU64,
    /// Rounds in which this node's own loop ran late enough to doubt its own verdicts.
    pub self_doubts: AtomicU64,
    /// Rounds in which a death verdict was held back (self-doubt or a peer's recent ping).
    pub held_verdicts: AtomicU64,
    /// Times the gossip task (chitchat) ended unexpectedly and was started again with fresh state.
    pub gossip_restarts: AtomicU64,
    /// Why it last ended, and when (unix ms).
    pub last_gossip_failure: parking_lot::Mutex<Option<(String, u64)>>,
}

const REJECTIONS: [Rejected; 6] = [
    Rejected::Unsigned,
    Rejected::BadSignature,
    Rejected::Malformed,
    Rejected::Stale,
    Rejected::Unadmitted,
    Rejected::WrongIdentity,
];

impl MembershipStats {
    fn reject(&self, r: Rejected) {
        if let Some(i) = REJECTIONS.iter().position(|x| *x == r) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Values dropped, by reason.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        REJECTIONS
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// What this node publishes; the membership task seals and republishes it.
#[derive(Clone, Debug, Default)]
struct Own {
    values: BTreeMap<ValueKind, NodeValue>,
    dirty: HashSet<ValueKind>,
}

struct Shared {
    members: RwLock<Vec<Member>>,
    /// Wakes the loop to sign and publish a changed value now rather than at the next round.
    wake: tokio::sync::Notify,
    own: parking_lot::Mutex<Own>,
    rtt: RwLock<HashMap<String, f64>>,
    /// When each peer last answered a libp2p ping: a second witness of its liveness.
    answered: RwLock<HashMap<String, Instant>>,
    /// The running chitchat instance (replaced when the supervisor restarts it).
    chitchat: RwLock<Arc<ChitchatHandle>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// Handle on the membership layer. Cloneable; the task stops when [`Membership::shutdown`] runs.
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    pub stats: Arc<MembershipStats>,
    /// The authenticated gossip sessions (who may send this node gossip, and what was dropped).
    pub sessions: Arc<Sessions>,
    /// Gossip bytes and datagrams through this node's socket (on the wire, framing included).
    pub traffic: Arc<GossipTraffic>,
    events: broadcast::Sender<MembershipEvent>,
    peer_id: PeerId,
    task: Arc<tokio::task::JoinHandle<()>>,
    /// The supervisor's group: stopping it ends the membership task.
    tasks: Tasks,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({})", self.peer_id)
    }
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this node's join token does not admit it: {0}")]
    NotAdmitted(#[from] crate::admission::AdmissionError),
    #[error("cannot start gossip on {addr}: {reason}")]
    Start { addr: SocketAddr, reason: String },
    #[error("the node key is not an ed25519 key")]
    KeyType,
}

/// Everything the supervisor needs to start chitchat again.
struct Starter {
    config: MembershipConfig,
    transport: SecureTransport,
}

impl Starter {
    async fn spawn(
        &self,
        generation: u64,
        initial: Vec<(String, String)>,
    ) -> Result<ChitchatHandle, MembershipError> {
        let config = &self.config;
        let chitchat_id = ChitchatId::new(
            values::short_id(&self.transport.sessions.peer_id()),
            generation,
            config.advertise_addr,
        );
        let cc = ChitchatConfig {
            chitchat_id,
            cluster_id: format!("augur-{}", config.fleet_id),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: config.sampling_window,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval * 2,
                dead_node_grace_period: config.dead_node_grace,
            },
            marked_for_deletion_grace_period: config.dead_node_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V1,
            max_nodes: config.max_nodes,
        };
        chitchat::spawn_chitchat(cc, initial, &self.transport)
            .await
            .map_err(|e| MembershipError::Start {
                addr: config.listen_addr,
                reason: format!("{e:#}"),
            })
    }
}

/// The seeds that are socket addresses already (host names are resolved once, at start).
async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in seeds {
        match s.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => match tokio::net::lookup_host(s.as_str()).await {
                Ok(addrs) => out.extend(addrs),
                Err(e) => tracing::warn!(seed = %s, error = %e, "cannot resolve a gossip seed"),
            },
        }
    }
    out
}

impl Membership {
    /// Starts gossip over `datagrams` (UDP in the agent, an in-memory network in tests), every
    /// datagram authenticated and encrypted (see [`crate::secure`]).
    pub async fn start(
        config: MembershipConfig,
        keypair: Keypair,
        token: JoinToken,
        trust: Trust,
        clock: Clock,
        datagrams: Arc<dyn Datagrams>,
        tasks: &Tasks,
    ) -> Result<Self, MembershipError> {
        let tasks = tasks.child();
        let peer_id = keypair.public().to_peer_id();
        trust.verify(&token, &peer_id, clock.now_ms() / 1000)?;
        let mut secure = SecureConfig::new(config.fleet_id.clone(), config.advertise_addr);
        secure.seeds = resolve_seeds(&config.seeds).await;
        secure.max_peers = config.max_nodes;
        let sessions = Arc::new(
            Sessions::new(&keypair, &token, trust.clone(), clock.clone(), secure)
                .ok_or(MembershipError::KeyType)?,
        );
        let traffic = Arc::new(GossipTraffic::default());
        let starter = Starter {
            config: config.clone(),
            transport: SecureTransport {
                datagrams,
                sessions: sessions.clone(),
                traffic: traffic.clone(),
            },
        };
        let mut own = Own::default();
        own.values.insert(
            ValueKind::Admission,
            NodeValue::Admission(token.to_string()),
        );
        let mut seq = clock.now_ms();
        let initial = seal_all(
            &mut own,
            &keypair,
            &config,
            config.generation,
            &mut seq,
            &clock,
        );
        let handle = starter.spawn(config.generation, initial).await?;
        let shared = Arc::new(Shared {
            members: RwLock::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            own: parking_lot::Mutex::new(own),
            rtt: RwLock::new(HashMap::new()),
            answered: RwLock::new(HashMap::new()),
            chitchat: RwLock::new(Arc::new(handle)),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let stats = Arc::new(MembershipStats::default());
        let (events, _) = broadcast::channel(1024);
        let task = tasks.spawn(
            "mesh.membership",
            supervise(
                starter,
                Loop {
                    shared: shared.clone(),
                    stats: stats.clone(),
                    events: events.clone(),
                    view: View::new(&config, &peer_id, trust),
                    keypair,
                    clock,
                    seq,
                    sessions: sessions.clone(),
                    tasks: tasks.clone(),
                },
            ),
        );
        Ok(Self {
            shared,
            stats,
            sessions,
            traffic,
            events,
            peer_id,
            task: Arc::new(task),
            tasks,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Publishes (or replaces) one of this node's values; it is signed and set in chitchat at once,
    /// and leaves with the next gossip round.
    pub fn publish(&self, value: NodeValue) {
        let mut own = self.shared.own.lock();
        let kind = value.kind();
        if own.values.get(&kind) != Some(&value) {
            own.values.insert(kind, value);
            own.dirty.insert(kind);
            self.shared.wake.notify_one();
        }
    }

    /// Every admitted member, this node included, by peer id.
    pub fn members(&self) -> Vec<Member> {
        let rtt = self.shared.rtt.read();
        self.shared
            .members
            .read()
            .iter()
            .cloned()
            .map(|mut m| {
                m.rtt_ms = rtt.get(&m.peer_id).copied();
                m
            })
            .collect()
    }

    /// One member by peer id (cheaper than [`members`](Self::members) for a large fleet).
    pub fn member(&self, peer_id: &str) -> Option<Member> {
        self.shared
            .members
            .read()
            .iter()
            .find(|m| m.peer_id == peer_id)
            .cloned()
    }

    /// Records a round-trip time to a peer (from the swarm's pings).
    pub fn set_rtt(&self, peer: &PeerId, rtt: Duration) {
        self.shared
            .rtt
            .write()
            .insert(peer.to_string(), rtt.as_secs_f64() * 1000.0);
        self.shared
            .answered
            .write()
            .insert(peer.to_string(), Instant::now());
    }

    /// Forgets a peer's round-trip time (its connection closed).
    pub fn clear_rtt(&self, peer: &PeerId) {
        self.shared.rtt.write().remove(&peer.to_string());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Announces departure (members see "left", not "dead"), waits a few gossip rounds, and stops.
    pub async fn leave(&self, linger: Duration) {
        self.publish(NodeValue::Leaving(true));
        tokio::time::sleep(linger).await;
        self.shutdown();
    }

    /// Stops gossiping at once (as a crash would, for tests).
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.chitchat.read().initiate_shutdown();
        self.tasks.stop();
    }

    /// Whether the supervisor still runs (it ends only on shutdown).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// The running chitchat handle, for measurements (gossip statistics) and tests.
    pub fn chitchat(&self) -> Arc<ChitchatHandle> {
        self.shared.chitchat.read().clone()
    }
}

/// Signs every value of this node (the gossip identity for `generation` included) for a fresh
/// chitchat instance.
fn seal_all(
    own: &mut Own,
    keypair: &Keypair,
    config: &MembershipConfig,
    generation: u64,
    seq: &mut u64,
    clock: &Clock,
) -> Vec<(String, String)> {
    own.values.insert(
        ValueKind::Gossip,
        NodeValue::Gossip(GossipIdentity {
            generation,
            addr: config.advertise_addr.to_string(),
        }),
    );
    own.dirty.clear();
    let now = clock.now_ms();
    own.values
        .values()
        .map(|v| {
            *seq += 1;
            let (k, s) = values::seal(keypair, &config.fleet_id, v, *seq, now);
            (k.to_owned(), s)
        })
        .collect()
}

/// Signs this node's values that changed (all of them when `all`) and sets them in chitchat.
async fn seal_own(
    chitchat: &ChitchatHandle,
    shared: &Shared,
    keypair: &Keypair,
    fleet_id: &str,
    seq: &mut u64,
    now_ms: u64,
    all: bool,
) {
    let to_seal: Vec<NodeValue> = {
        let mut own = shared.own.lock();
        let vals = own
            .values
            .iter()
            .filter(|(k, _)| all || own.dirty.contains(k))
            .map(|(_, v)| v.clone())
            .collect();
        own.dirty.clear();
        vals
    };
    if to_seal.is_empty() {
        return;
    }
    let sealed: Vec<(&'static str, String)> = to_seal
        .iter()
        .map(|v| {
            *seq += 1;
            values::seal(keypair, fleet_id, v, *seq, now_ms)
        })
        .collect();
    let cc_arc = chitchat.chitchat();
    let mut cc = cc_arc.lock().await;
    for (k, v) in sealed {
        cc.self_node_state().set(k, v);
    }
}

/// What the view loop owns, kept across chitchat restarts.
struct Loop {
    shared: Arc<Shared>,
    stats: Arc<MembershipStats>,
    events: broadcast::Sender<MembershipEvent>,
    keypair: Keypair,
    clock: Clock,
    seq: u64,
    sessions: Arc<Sessions>,
    view: View,
    /// Stopping it ends the supervisor (and the round loop).
    tasks: Tasks,
}

/// The least time between two restarts (a task that keeps failing does not spin).
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the view loop, and starts chitchat again, with fresh state and a new generation, whenever
/// it ends without being asked to (a panic on a peer's message, or a broken socket).
async fn supervise(starter: Starter, mut lp: Loop) {
    let mut generation = starter.config.generation;
    loop {
        let handle = lp.shared.chitchat.read().clone();
        let stop = lp.tasks.clone();
        let ended = tokio::select! {
            () = stop.stopped() => return,
            r = handle.termination_watcher() => r,
            () = run(&starter.config, &mut lp, &handle) => return,
        };
        if lp.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let reason = match ended {
            Ok(()) => "the gossip task stopped".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        lp.stats.gossip_restarts.fetch_add(1, Ordering::Relaxed);
        *lp.stats.last_gossip_failure.lock() = Some((reason.clone(), lp.clock.now_ms()));
        tracing::error!(%reason, "gossip (chitchat) ended unexpectedly; starting it again with fresh state");
        loop {
            tokio::select! {
                () = stop.stopped() => return,
                () = tokio::time::sleep(RESTART_BACKOFF) => {}
            }
            // A new generation: peers hold this node's old versions, which a fresh state could not
            // overtake under the old one.
            generation = generation.max(lp.clock.now_ms() * 1000) + 1;
            let initial = {
                let mut own = lp.shared.own.lock();
                seal_all(
                    &mut own,
                    &lp.keypair,
                    &starter.config,
                    generation,
                    &mut lp.seq,
                    &lp.clock,
                )
            };
            match starter.spawn(generation, initial).await {
                Ok(h) => {
                    *lp.shared.chitchat.write() = Arc::new(h);
                    let now = lp.now();
                    lp.view.on_event(Input::Restarted, now);
                    break;
                }
                Err(e) => tracing::error!(error = %e, "cannot start gossip again; retrying"),
            }
        }
    }
}

impl Loop {
    fn now(&self) -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: self.clock.now_ms(),
        }
    }

    /// Carries out what the view decided.
    fn apply(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SetMembers(m) => *self.shared.members.write() = m,
                Action::Emit(e) => {
                    let _ = self.events.send(e);
                }
                Action::Learn { token, addr } => self.sessions.learn(&token, addr),
                Action::Count(Count::ValueAccepted) => {
                    self.stats.values_accepted.fetch_add(1, Ordering::Relaxed);
                }
                Action::Count(Count::Rejected(r)) => self.stats.reject(r),
                Action::Count(Count::SelfDoubt) => {
                    self.stats.self_doubts.fetch_add(1, Ordering::Relaxed);
                }
                Action::Count(Count::HeldVerdict) => {
                    self.stats.held_verdicts.fetch_add(1, Ordering::Relaxed);
                }
                Action::Unadmitted(n) => self.stats.unadmitted_nodes.store(n, Ordering::Relaxed),
            }
        }
    }
}

/// chitchat's nodes as the view reads them: only values whose version the view has not verified
/// are copied out (a steady fleet copies nothing).
async fn observe(chitchat: &ChitchatHandle, view: &View) -> Vec<ObservedNode> {
    let cc_arc = chitchat.chitchat();
    let cc = cc_arc.lock().await;
    let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
    let dead: HashSet<&ChitchatId> = cc.dead_nodes().collect();
    cc.node_states()
        .iter()
        .map(|(id, node)| {
            let values = node
                .key_values_including_deleted()
                .filter(|(k, v)| k.starts_with(values::KEY_PREFIX) && !v.is_deleted())
                .filter(|(k, v)| {
                    let seen =
                        ValueKind::from_key(k).and_then(|kind| view.verified_version(id, kind));
                    seen != Some(v.version)
                })
                .map(|(k, v)| (k.to_owned(), v.value.clone(), v.version))
                .collect();
            let liveness = if live.contains(id) {
                Liveness::Live
            } else if dead.contains(id) {
                Liveness::Dead
            } else {
                Liveness::Unjudged
            };
            ObservedNode {
                id: id.clone(),
                heartbeat: u64::from(node.heartbeat()),
                values,
                liveness,
                timeout: cc.failure_detection_timeout(id),
            }
        })
        .collect()
}

/// The membership task's rounds: on the timer, sign what changed and judge this node's lateness;
/// on every round (and soon after a value arrives), read chitchat and let the view decide.
async fn run(config: &MembershipConfig, lp: &mut Loop, chitchat: &ChitchatHandle) {
    let shared = lp.shared.clone();
    let mut last_republish = Instant::now();
    let mut tick = tokio::time::interval(config.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A value arriving from gossip triggers a pass before the next round (at most one every third
    // of a round), so a change reaches the member view without waiting for the round.
    let changed = Arc::new(tokio::sync::Notify::new());
    let _listener = {
        let changed = changed.clone();
        let cc_arc = chitchat.chitchat();
        let cc = cc_arc.lock().await;
        cc.subscribe_event(values::KEY_PREFIX, move |_| changed.notify_one())
    };
    let min_gap = config.gossip_interval / 3;
    let mut last_pass = Instant::now();
    loop {
        let on_tick = tokio::select! {
            _ = tick.tick() => true,
            () = shared.wake.notified() => {
                // One of ours changed: sign it now, so it leaves with the next gossip round.
                seal_own(chitchat, &shared, &lp.keypair, &config.fleet_id, &mut lp.seq, lp.clock.now_ms(), false).await;
                continue;
            }
            () = changed.notified() => false,
        };
        if !on_tick && last_pass.elapsed() < min_gap {
            tokio::time::sleep_until(last_pass + min_gap).await;
        }
        if on_tick {
            let now = lp.now();
            let actions = lp.view.on_event(Input::Tick, now);
            lp.apply(actions);
            lp.stats.gossip_rounds.fetch_add(1, Ordering::Relaxed);
            // Seal what changed (and everything, now and then, so nothing ages out).
            let all = last_republish.elapsed() >= config.republish_every;
            if all {
                last_republish = Instant::now();
                // Sessions whose token expired or lost its fleet key's trust end here too.
                lp.sessions.sweep();
            }
            seal_own(
                chitchat,
                &shared,
                &lp.keypair,
                &config.fleet_id,
                &mut lp.seq,
                now.unix_ms,
                all,
            )
            .await;
        }
        last_pass = Instant::now();
        let nodes = observe(chitchat, &lp.view).await;
        let answered = shared.answered.read().clone();
        let now = lp.now();
        let actions = lp.view.on_event(Input::Observed { nodes, answered }, now);
        lp.apply(actions);
    }
}

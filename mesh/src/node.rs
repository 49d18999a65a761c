//! One node's mesh: membership (chitchat) and the swarm (libp2p) started together, tied so that
//! members discovered by gossip are dialled over QUIC, ping round trips reach the member view, and
//! fleet events flow to local subscribers.
//!
//! Events: each node publishes on gossipsub the membership changes its own failure detector sees
//! and the events only it knows (its resources crossing their failure threshold; later, the
//! migrations it coordinates). Subscribers get each membership fact (topic, node, generation) once,
//! from whichever report arrives first, their own detector's or a peer's; `origin` is the reporting
//! node (the gossipsub-signed source for gossiped events).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::admission::{JoinToken, Trust};
use crate::clock::Clock;
use crate::datagram::{Datagrams, Udp};
use crate::membership::{
    Member, MemberStatus, Membership, MembershipConfig, MembershipError, MembershipEvent,
};
use crate::swarm::{self, EVENTS_TOPIC, SwarmConfig, SwarmError, SwarmEvent, SwarmHandle};
use crate::values::{Endpoints, NodeValue};

/// A fleet event, as local subscribers receive it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// `member.joined`, `member.left`, `member.dead`, `member.recovered`, `member.removed`,
    /// `prediction.above_threshold`, `prediction.below_threshold`, ...; subscribers filter by prefix.
    pub topic: String,
    /// Unix milliseconds when the event happened (at its origin).
    pub ts_ms: u64,
    /// The node the event is about.
    pub peer_id: String,
    pub node_name: Option<String>,
    pub resource_id: Option<String>,
    /// The node that reported it (this node for membership events).
    pub origin: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// How long a membership fact (topic, node, generation) is remembered, so that the same death
/// reported by several nodes reaches subscribers once.
const REPORT_MEMORY: Duration = Duration::from_secs(600);

/// Whether `e` is the first report of its fact (membership events; every other event is unique).
fn first_report(reported: &mut HashMap<(String, String, u64), Instant>, e: &FleetEvent) -> bool {
    if !e.topic.starts_with("member.") {
        return true;
    }
    let generation = e.detail["generation"].as_u64().unwrap_or(0);
    reported
        .insert(
            (e.topic.clone(), e.peer_id.clone(), generation),
            Instant::now(),
        )
        .is_none()
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Swarm(#[from] SwarmError),
}

/// A running mesh node.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub membership: Membership,
    pub swarm: SwarmHandle,
    events: broadcast::Sender<FleetEvent>,
    clock: Clock,
    rtt: Arc<parking_lot::RwLock<HashMap<PeerId, Duration>>>,
    /// Gossip bytes and messages through this node's chitchat socket.
    pub traffic: Arc<crate::transport::GossipTraffic>,
    /// The fleet keys this node trusts; replacing them takes effect everywhere in the mesh.
    pub trust: Trust,
    /// Gossiped events refused: about another node than their signed origin, or a membership
    /// fact this node's own view contradicts.
    pub events_refused: Arc<std::sync::atomic::AtomicU64>,
    /// The task tying membership and swarm together.
    task: Arc<parking_lot::Mutex<Option<tokio::task::AbortHandle>>>,
}

/// What the mesh needs to start.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub membership: MembershipConfig,
    /// libp2p listen addresses.
    pub p2p_listen: Vec<Multiaddr>,
    pub admission_timeout: Duration,
    pub ping_interval: Duration,
    /// HTTP and gRPC API addresses published to peers.
    pub api_http: Option<String>,
    pub api_grpc: Option<String>,
    /// libp2p's in-process memory transport (the simulation); `None` in the agent.
    pub memory: Option<swarm::MemoryNet>,
}

impl Mesh {
    /// Starts the mesh with gossip over UDP.
    pub async fn start(
        keypair: Keypair,
        token: JoinToken,
        trusted: Trust,
        config: MeshConfig,
        clock: Clock,
    ) -> Result<Self, MeshError> {
        Self::start_on(keypair, token, trusted, config, clock, Arc::new(Udp)).await
    }

    /// Starts the mesh with gossip over `gossip` (UDP in the agent, an in-memory network in the
    /// simulation).
    pub async fn start_on(
        keypair: Keypair,
        token: JoinToken,
        trusted: Trust,
        config: MeshConfig,
        clock: Clock,
        gossip: Arc<dyn Datagrams>,
    ) -> Result<Self, MeshError> {
        let swarm = swarm::start(
            keypair.clone(),
            SwarmConfig {
                listen: config.p2p_listen.clone(),
                token: token.clone(),
                trusted: trusted.clone(),
                clock: clock.clone(),
                admission_timeout: config.admission_timeout,
                ping_interval: config.ping_interval,
                memory: config.memory.clone(),
            },
        )
        .await?;
        let membership = Membership::start(
            config.membership.clone(),
            keypair,
            token,
            trusted.clone(),
            clock.clone(),
            gossip,
        )
        .await;
        let membership = match membership {
            Ok(m) => m,
            Err(e) => {
                swarm.shutdown();
                return Err(e.into());
            }
        };
        let peer = swarm.peer_id;
        let p2p: Vec<String> = swarm
            .listeners()
            .await
            .into_iter()
            .map(|a| format!("{a}/p2p/{peer}"))
            .collect();
        membership.publish(NodeValue::Endpoints(Endpoints {
            http: config.api_http.clone(),
            grpc: config.api_grpc.clone(),
            p2p,
        }));
        let (events, _) = broadcast::channel(4096);
        let traffic = membership.traffic.clone();
        let mesh = Self {
            events_refused: Arc::default(),
            trust: trusted,
            membership,
            swarm,
            events,
            clock,
            rtt: Arc::default(),
            traffic,
            task: Arc::default(),
        };
        let task = tokio::spawn(mesh.clone().run(config.membership.gossip_interval));
        *mesh.task.lock() = Some(task.abort_handle());
        Ok(mesh)
    }

    /// Stops everything at once, as a crash would: gossip stops and QUIC connections close.
    pub fn shutdown(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
        self.membership.shutdown();
        self.swarm.shutdown();
    }

    /// Announces this node's departure, lets it spread for `linger`, then stops.
    pub async fn leave(&self, linger: Duration) {
        self.membership.leave(linger).await;
        self.shutdown();
    }

    pub fn peer_id(&self) -> PeerId {
        self.swarm.peer_id
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.events.subscribe()
    }

    pub fn members(&self) -> Vec<Member> {
        self.membership.members()
    }

    pub fn publish_value(&self, value: NodeValue) {
        self.membership.publish(value);
    }

    /// Delivers an event of this node to local subscribers and publishes it to the fleet.
    pub async fn publish_event(&self, mut event: FleetEvent) {
        event.origin = self.peer_id().to_string();
        let _ = self.events.send(event.clone());
        if let Ok(data) = serde_json::to_vec(&event)
            && let Err(e) = self.swarm.publish(EVENTS_TOPIC, data).await
        {
            // Alone in the fleet, or the mesh still forming: local subscribers have it.
            tracing::debug!(error = %e, topic = %event.topic, "event not gossiped");
        }
    }

    /// Admitted peers with a ping round trip (connected over QUIC).
    pub fn swarm_peers(&self) -> usize {
        self.rtt.read().len()
    }

    /// Median and largest ping round trip to admitted peers, milliseconds.
    pub fn rtt_summary(&self) -> Option<(f64, f64, usize)> {
        let rtt = self.rtt.read();
        if rtt.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = rtt.values().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[v.len() - 1], v.len()))
    }

    /// Whether a peer's event may be delivered. A node speaks only for itself: an event about
    /// another node is a membership report, believed only when this node's own view agrees (the
    /// reporter saw it first, but one admitted node cannot declare another dead, or alive).
    fn believable(&self, e: &FleetEvent) -> Result<(), &'static str> {
        if !e.topic.starts_with("member.") {
            return if e.peer_id == e.origin {
                Ok(())
            } else {
                Err("an event about another node than its origin")
            };
        }
        if e.peer_id == self.peer_id().to_string() {
            return Err("a membership report about this node");
        }
        let local = self.membership.member(&e.peer_id).map(|m| m.status);
        let agrees = match e.topic.as_str() {
            "member.dead" => matches!(local, Some(MemberStatus::Suspect | MemberStatus::Dead)),
            "member.joined" | "member.recovered" => {
                matches!(local, Some(MemberStatus::Alive | MemberStatus::Suspect))
            }
            "member.left" => local == Some(MemberStatus::Left),
            "member.removed" => local.is_none(),
            _ => false,
        };
        if agrees {
            Ok(())
        } else {
            Err("a membership report this node's view contradicts")
        }
    }

    fn member_event(&self, topic: &str, m: &Member) -> FleetEvent {
        FleetEvent {
            topic: topic.to_owned(),
            ts_ms: self.clock.now_ms(),
            peer_id: m.peer_id.clone(),
            node_name: m.node_name.clone(),
            resource_id: None,
            origin: self.peer_id().to_string(),
            detail: serde_json::json!({ "status": m.status, "gossip_addr": m.gossip_addr, "generation": m.generation }),
        }
    }

    async fn run(self, every: Duration) {
        let mut membership_events = self.membership.subscribe();
        let mut swarm_events = self.swarm.subscribe();
        let mut dialled: HashMap<PeerId, Instant> = HashMap::new();
        let mut reported: HashMap<(String, String, u64), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        let redial_after = Duration::from_secs(10);
        loop {
            tokio::select! {
                ev = membership_events.recv() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let event = match &ev {
                        MembershipEvent::Joined(m) => self.member_event("member.joined", m),
                        MembershipEvent::Dead(m) => self.member_event("member.dead", m),
                        MembershipEvent::Recovered(m) => self.member_event("member.recovered", m),
                        MembershipEvent::Left(m) => self.member_event("member.left", m),
                        MembershipEvent::Removed { peer_id } => FleetEvent {
                            topic: "member.removed".to_owned(),
                            ts_ms: self.clock.now_ms(),
                            peer_id: peer_id.clone(),
                            node_name: None,
                            resource_id: None,
                            origin: self.peer_id().to_string(),
                            detail: serde_json::Value::Null,
                        },
                    };
                    tracing::info!(topic = %event.topic, peer_id = %event.peer_id, node_name = ?event.node_name, "fleet event");
                    // Delivered here, and gossiped so that nodes whose detector has not (yet) come
                    // to the same verdict hear it; receivers deliver each fact once.
                    if first_report(&mut reported, &event) {
                        let _ = self.events.send(event.clone());
                    }
                    if let Ok(data) = serde_json::to_vec(&event) {
                        let _ = self.swarm.publish(EVENTS_TOPIC, data).await;
                    }
                }
                ev = swarm_events.recv() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    match ev {
                        SwarmEvent::Rtt { peer, rtt } => {
                            self.rtt.write().insert(peer, rtt);
                            self.membership.set_rtt(&peer, rtt);
                        }
                        SwarmEvent::Disconnected(peer) => {
                            self.rtt.write().remove(&peer);
                            self.membership.clear_rtt(&peer);
                            dialled.remove(&peer);
                        }
                        SwarmEvent::Message { topic, origin, data } if topic == EVENTS_TOPIC => {
                            match serde_json::from_slice::<FleetEvent>(&data) {
                                // The origin is the gossipsub-signed source, whatever the payload says.
                                Ok(mut e) => {
                                    e.origin = origin.to_string();
                                    if let Err(why) = self.believable(&e) {
                                        self.events_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        tracing::info!(%origin, topic = %e.topic, peer_id = %e.peer_id, why, "fleet event refused");
                                    } else if first_report(&mut reported, &e) {
                                        let _ = self.events.send(e);
                                    }
                                }
                                Err(e) => {
                                    self.events_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    tracing::debug!(%origin, error = %e, "undecodable fleet event");
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    // Dial admitted, live members we have no connection to.
                    let connected: std::collections::HashSet<PeerId> =
                        self.swarm.admitted().into_iter().collect();
                    for m in self.membership.members() {
                        if m.is_self || !matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) {
                            continue;
                        }
                        let Ok(peer) = m.peer_id.parse::<PeerId>() else { continue };
                        if connected.contains(&peer)
                            || dialled.get(&peer).is_some_and(|t| t.elapsed() < redial_after)
                        {
                            continue;
                        }
                        let Some(ep) = &m.endpoints else { continue };
                        for a in &ep.p2p {
                            if let Ok(addr) = a.parse::<Multiaddr>() {
                                let _ = self.swarm.dial(addr).await;
                            }
                        }
                        dialled.insert(peer, Instant::now());
                    }
                    reported.retain(|_, at| at.elapsed() < REPORT_MEMORY);
                    // Peers that are gone keep no RTT.
                    self.rtt.write().retain(|p, _| connected.contains(p));
                    for m in self.membership.members() {
                        if let Ok(p) = m.peer_id.parse::<PeerId>()
                            && !connected.contains(&p)
                        {
                            self.membership.clear_rtt(&p);
                        }
                    }
                }
            }
        }
    }
}

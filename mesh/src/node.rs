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
use crate::swarm::{
    self, CATALOG_TOPIC, EVENTS_TOPIC, SwarmConfig, SwarmError, SwarmEvent, SwarmHandle,
};
use crate::tasks::Tasks;
use crate::values::{Endpoints, NodeValue};

/// A fleet event, as local subscribers receive it: who it is about, who reported it, when, and
/// what happened ([`EventKind`], with its typed details). On the wire (gossipsub, the HTTP and gRPC
/// APIs) it is JSON: the envelope's fields, `topic` and `detail`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// Unix milliseconds when the event happened (at its origin).
    pub ts_ms: u64,
    /// The node the event is about.
    pub peer_id: String,
    pub node_name: Option<String>,
    /// The resource the event is about, if any.
    pub resource_id: Option<String>,
    /// The node that reported it (this node for membership events).
    pub origin: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Topics are dotted (`member.dead`); subscribers filter by prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "topic", content = "detail")]
pub enum EventKind {
    #[serde(rename = "member.joined")]
    MemberJoined(MemberChange),
    #[serde(rename = "member.dead")]
    MemberDead(MemberChange),
    #[serde(rename = "member.recovered")]
    MemberRecovered(MemberChange),
    #[serde(rename = "member.left")]
    MemberLeft(MemberChange),
    /// Forgotten after the dead-node grace period.
    #[serde(rename = "member.removed")]
    MemberRemoved,
    /// One of the origin's resources crossed its failure threshold upwards.
    #[serde(rename = "prediction.above_threshold")]
    PredictionAbove(Crossing),
    /// ... or back down.
    #[serde(rename = "prediction.below_threshold")]
    PredictionBelow(Crossing),
    /// A service instance started on the origin (its resource id is the instance's).
    #[serde(rename = "instance.started")]
    InstanceStarted(InstanceChange),
    /// ... exited without being asked to, or could not start (`reason` says which).
    #[serde(rename = "instance.exited")]
    InstanceExited(InstanceChange),
    /// ... passed its health checks (it takes traffic).
    #[serde(rename = "instance.healthy")]
    InstanceHealthy(InstanceChange),
    /// ... failed them (it takes no traffic).
    #[serde(rename = "instance.unhealthy")]
    InstanceUnhealthy(InstanceChange),
    /// ... was stopped by its node (no longer placed there, or its spec changed).
    #[serde(rename = "instance.stopped")]
    InstanceStopped(InstanceChange),
    /// A proxy on the origin could not do what the routes ask (a port in use, HAProxy's socket
    /// missing or answering an error); it keeps serving the rest.
    #[serde(rename = "traffic.error")]
    TrafficError(TrafficProblem),
    /// A migration coordinated by the origin took a step (or rolled one back).
    #[serde(rename = "migration.step")]
    MigrationStep(MigrationChange),
    /// ... ended (`outcome`: completed, refused, rolled_back, abandoned).
    #[serde(rename = "migration.finished")]
    MigrationFinished(MigrationChange),
    /// The origin's autonomy took a decision on a case (elected, witnessed, moving, waiting, in
    /// shadow mode what it would do, done): `augur_orchestrate::autonomy::Report`.
    #[serde(rename = "autonomy.decision")]
    Autonomy(augur_orchestrate::autonomy::Report),
    /// A model merged from the fleet's updates was adopted, rejected, or used as a cold start.
    #[serde(rename = "model.decision")]
    Model(ModelChange),
}

/// A decision on a model merged from the fleet (federated learning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChange {
    pub resource_type: String,
    /// `adopted`, `rejected` or `cold_start`.
    pub outcome: String,
    /// The version installed, when adopted.
    pub version: Option<u64>,
    pub contributors: usize,
    /// The local model's and the candidate's MLP error on the deciding node's held-out history.
    pub mse_local: Option<f64>,
    pub mse_candidate: Option<f64>,
}

/// A migration's progress, as its coordinator reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationChange {
    pub id: String,
    pub service: String,
    pub strategy: String,
    pub from: String,
    pub to: String,
    /// The step (`lease`, `surge`, `soak`, `shift`, `retire`, `stop`, `rollback`, `finished`).
    pub step: String,
    pub note: String,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A service instance's change, as its node reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceChange {
    pub instance: String,
    pub service: String,
    /// The catalog version of the spec it runs.
    pub version: u64,
    pub addr: Option<String>,
    pub reason: Option<String>,
}

/// What a proxy could not do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficProblem {
    pub service: String,
    /// `embedded` or `haproxy`.
    pub proxy: String,
    pub reason: String,
}

/// A member's change as the reporting node saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberChange {
    pub status: MemberStatus,
    pub gossip_addr: String,
    /// The chitchat generation (restart) of the member the change is about.
    pub generation: u64,
}

/// A resource's prediction crossing its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Crossing {
    pub failure_probability: f64,
    pub threshold: f64,
    pub eta_s: Option<f64>,
    pub drivers: Vec<String>,
    pub model_version: String,
}

impl EventKind {
    /// The event's topic.
    pub fn topic(&self) -> &'static str {
        match self {
            EventKind::MemberJoined(_) => "member.joined",
            EventKind::MemberDead(_) => "member.dead",
            EventKind::MemberRecovered(_) => "member.recovered",
            EventKind::MemberLeft(_) => "member.left",
            EventKind::MemberRemoved => "member.removed",
            EventKind::PredictionAbove(_) => "prediction.above_threshold",
            EventKind::PredictionBelow(_) => "prediction.below_threshold",
            EventKind::InstanceStarted(_) => "instance.started",
            EventKind::InstanceExited(_) => "instance.exited",
            EventKind::InstanceHealthy(_) => "instance.healthy",
            EventKind::InstanceUnhealthy(_) => "instance.unhealthy",
            EventKind::InstanceStopped(_) => "instance.stopped",
            EventKind::TrafficError(_) => "traffic.error",
            EventKind::MigrationStep(_) => "migration.step",
            EventKind::MigrationFinished(_) => "migration.finished",
            EventKind::Autonomy(_) => "autonomy.decision",
            EventKind::Model(_) => "model.decision",
        }
    }

    /// The event's details as JSON (`null` for an event without any), as the wire form's `detail`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("detail").map(serde_json::Value::take))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Whether it is a membership report (about another node than its origin, possibly).
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            EventKind::MemberJoined(_)
                | EventKind::MemberDead(_)
                | EventKind::MemberRecovered(_)
                | EventKind::MemberLeft(_)
                | EventKind::MemberRemoved
        )
    }

    /// The generation of the member a membership report is about (0 when it does not say).
    fn generation(&self) -> u64 {
        match self {
            EventKind::MemberJoined(c)
            | EventKind::MemberDead(c)
            | EventKind::MemberRecovered(c)
            | EventKind::MemberLeft(c) => c.generation,
            _ => 0,
        }
    }
}

impl FleetEvent {
    pub fn topic(&self) -> &'static str {
        self.kind.topic()
    }
}

/// Catalog documents as gossiped: the documents are verified by their receivers (operator
/// signatures), the time makes every sending a new gossipsub message.
#[derive(Debug, Serialize, Deserialize)]
struct CatalogMessage {
    sent_ms: u64,
    documents: Vec<String>,
}

/// How long a membership fact (topic, node, generation) is remembered, so that the same death
/// reported by several nodes reaches subscribers once.
const REPORT_MEMORY: Duration = Duration::from_secs(600);

/// Whether `e` is the first report of its fact (membership events; every other event is unique).
fn first_report(
    reported: &mut HashMap<(&'static str, String, u64), Instant>,
    e: &FleetEvent,
) -> bool {
    if !e.kind.is_membership() {
        return true;
    }
    let generation = e.kind.generation();
    reported
        .insert((e.topic(), e.peer_id.clone(), generation), Instant::now())
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
    /// Catalog documents received from peers (their text forms), for the agent to verify.
    catalog: broadcast::Sender<Vec<String>>,
    clock: Clock,
    rtt: Arc<parking_lot::RwLock<HashMap<PeerId, Duration>>>,
    /// Gossip bytes and messages through this node's chitchat socket.
    pub traffic: Arc<crate::transport::GossipTraffic>,
    /// The fleet keys this node trusts; replacing them takes effect everywhere in the mesh.
    pub trust: Trust,
    /// Gossiped events refused: about another node than their signed origin, or a membership
    /// fact this node's own view contradicts.
    pub events_refused: Arc<std::sync::atomic::AtomicU64>,
    /// Catalog messages from peers that could not be decoded (the documents inside are checked,
    /// and counted, by the agent's catalog).
    pub catalog_undecodable: Arc<std::sync::atomic::AtomicU64>,
    /// The mesh's group of tasks (swarm, membership, and the task tying them together).
    tasks: Tasks,
    /// Model updates from admitted authors, opened (author, body), for the agent to check.
    model_updates: broadcast::Sender<(PeerId, Vec<u8>)>,
    /// Model updates refused before anything read them, by reason.
    pub model_update_stats: Arc<crate::model_updates::UpdateStats>,
    /// This node's key (it signs the model updates it authors) and the fleet's name.
    keypair: Keypair,
    fleet_id: String,
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
        tasks: &Tasks,
    ) -> Result<Self, MeshError> {
        Self::start_on(keypair, token, trusted, config, clock, Arc::new(Udp), tasks).await
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
        tasks: &Tasks,
    ) -> Result<Self, MeshError> {
        let tasks = tasks.child();
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
            &tasks,
        )
        .await?;
        let membership = Membership::start(
            config.membership.clone(),
            keypair.clone(),
            token,
            trusted.clone(),
            clock.clone(),
            gossip,
            &tasks,
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
        let (catalog, _) = broadcast::channel(64);
        let traffic = membership.traffic.clone();
        let mesh = Self {
            events_refused: Arc::default(),
            catalog_undecodable: Arc::default(),
            trust: trusted,
            membership,
            swarm,
            events,
            catalog,
            clock,
            rtt: Arc::default(),
            traffic,
            tasks: tasks.clone(),
            model_updates: broadcast::channel(64).0,
            model_update_stats: Arc::default(),
            keypair,
            fleet_id: config.membership.fleet_id.clone(),
        };
        tasks.spawn(
            "mesh.events",
            mesh.clone().run(config.membership.gossip_interval),
        );
        Ok(mesh)
    }

    /// Stops everything at once, as a crash would: gossip stops and QUIC connections close.
    pub fn shutdown(&self) {
        self.membership.shutdown();
        self.tasks.stop();
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
            tracing::debug!(error = %e, topic = event.topic(), "event not gossiped");
        }
    }

    /// Sends catalog documents (their text forms) to every admitted peer. Each sending is a new
    /// message (it carries the time), so a document sent again reaches peers that joined since.
    pub async fn publish_catalog(&self, documents: Vec<String>) -> Result<(), SwarmError> {
        let message = CatalogMessage {
            sent_ms: self.clock.now_ms(),
            documents,
        };
        let data = serde_json::to_vec(&message).unwrap_or_default();
        self.swarm.publish(CATALOG_TOPIC, data).await
    }

    /// Signs `body` (an encoded `augur_models::federated::ModelUpdate`) as this node's and sends it
    /// to every admitted peer.
    pub async fn publish_model_update(&self, body: Vec<u8>) -> Result<(), SwarmError> {
        let wire = self.seal_model_update(body);
        self.swarm
            .publish(crate::model_updates::MODELS_TOPIC, wire)
            .await
    }

    /// `body` signed as this node's update, in its wire form (to publish, or to hand a peer that
    /// asks).
    pub fn seal_model_update(&self, body: Vec<u8>) -> Vec<u8> {
        crate::model_updates::seal(&self.keypair, &self.fleet_id, body)
    }

    /// Opens an update's wire form that came by another way than the topic (a peer's answer to a
    /// cold start's request): its author and body, or why not (counted).
    pub fn open_model_update(
        &self,
        wire: &[u8],
    ) -> Result<(PeerId, Vec<u8>), crate::model_updates::UpdateRejected> {
        let me = self.swarm.peer_id;
        let opened = crate::model_updates::open(wire, &self.fleet_id, |author| {
            *author == me || self.membership.member(&author.to_string()).is_some()
        });
        match &opened {
            Ok(_) => {
                self.model_update_stats
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(why) => self.model_update_stats.refuse(*why),
        }
        opened
    }

    /// Hands on an update another node authored (as it arrived, still under its author's
    /// signature), for a peer catching up.
    pub async fn forward_model_update(&self, wire: Vec<u8>) -> Result<(), SwarmError> {
        self.swarm
            .publish(crate::model_updates::MODELS_TOPIC, wire)
            .await
    }

    /// The fleet's name, which signed values and model updates are bound to.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// This node's key, for tests that forge messages.
    #[cfg(test)]
    pub(crate) fn keypair_for_tests(&self) -> Keypair {
        self.keypair.clone()
    }

    /// Model updates as they arrive, opened: signed by their author for this fleet, the author
    /// an admitted member (the body still to be checked by the receiver).
    pub fn subscribe_model_updates(&self) -> broadcast::Receiver<(PeerId, Vec<u8>)> {
        self.model_updates.subscribe()
    }

    /// Catalog documents from peers, as they arrive (not verified: the receiver checks each).
    pub fn subscribe_catalog(&self) -> broadcast::Receiver<Vec<String>> {
        self.catalog.subscribe()
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
        if !e.kind.is_membership() {
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
        let agrees = match e.kind {
            EventKind::MemberDead(_) => {
                matches!(local, Some(MemberStatus::Suspect | MemberStatus::Dead))
            }
            EventKind::MemberJoined(_) | EventKind::MemberRecovered(_) => {
                matches!(local, Some(MemberStatus::Alive | MemberStatus::Suspect))
            }
            EventKind::MemberLeft(_) => local == Some(MemberStatus::Left),
            EventKind::MemberRemoved => local.is_none(),
            _ => false,
        };
        if agrees {
            Ok(())
        } else {
            Err("a membership report this node's view contradicts")
        }
    }

    fn member_event(&self, kind: fn(MemberChange) -> EventKind, m: &Member) -> FleetEvent {
        FleetEvent {
            ts_ms: self.clock.now_ms(),
            peer_id: m.peer_id.clone(),
            node_name: m.node_name.clone(),
            resource_id: None,
            origin: self.peer_id().to_string(),
            kind: kind(MemberChange {
                status: m.status,
                gossip_addr: m.gossip_addr.clone(),
                generation: m.generation,
            }),
        }
    }

    async fn run(self, every: Duration) {
        let mut membership_events = self.membership.subscribe();
        let mut swarm_events = self.swarm.subscribe();
        let mut dialled: HashMap<PeerId, Instant> = HashMap::new();
        let mut reported: HashMap<(&'static str, String, u64), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        let redial_after = Duration::from_secs(10);
        loop {
            tokio::select! {
                () = self.tasks.stopped() => return,
                ev = membership_events.recv() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let event = match &ev {
                        MembershipEvent::Joined(m) => self.member_event(EventKind::MemberJoined, m),
                        MembershipEvent::Dead(m) => self.member_event(EventKind::MemberDead, m),
                        MembershipEvent::Recovered(m) => self.member_event(EventKind::MemberRecovered, m),
                        MembershipEvent::Left(m) => self.member_event(EventKind::MemberLeft, m),
                        MembershipEvent::Removed { peer_id } => FleetEvent {
                            ts_ms: self.clock.now_ms(),
                            peer_id: peer_id.clone(),
                            node_name: None,
                            resource_id: None,
                            origin: self.peer_id().to_string(),
                            kind: EventKind::MemberRemoved,
                        },
                    };
                    tracing::info!(topic = event.topic(), peer_id = %event.peer_id, node_name = ?event.node_name, "fleet event");
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
                        SwarmEvent::Message { topic, data, .. } if topic == CATALOG_TOPIC => {
                            match serde_json::from_slice::<CatalogMessage>(&data) {
                                Ok(m) => {
                                    let _ = self.catalog.send(m.documents);
                                }
                                Err(e) => {
                                    self.catalog_undecodable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    tracing::debug!(error = %e, "undecodable catalog message");
                                }
                            }
                        }
                        SwarmEvent::Message { topic, data, .. } if topic == crate::model_updates::MODELS_TOPIC => {
                            let me = self.swarm.peer_id;
                            let opened = crate::model_updates::open(&data, &self.fleet_id, |author| {
                                *author == me || self.membership.member(&author.to_string()).is_some()
                            });
                            match opened {
                                Ok(update) => {
                                    self.model_update_stats.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let _ = self.model_updates.send(update);
                                }
                                Err(why) => {
                                    self.model_update_stats.refuse(why);
                                    tracing::info!(reason = why.as_str(), "model update refused");
                                }
                            }
                        }
                        SwarmEvent::Message { topic, origin, data } if topic == EVENTS_TOPIC => {
                            match serde_json::from_slice::<FleetEvent>(&data) {
                                // The origin is the gossipsub-signed source, whatever the payload says.
                                Ok(mut e) => {
                                    e.origin = origin.to_string();
                                    if let Err(why) = self.believable(&e) {
                                        self.events_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        tracing::info!(%origin, topic = e.topic(), peer_id = %e.peer_id, why, "fleet event refused");
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

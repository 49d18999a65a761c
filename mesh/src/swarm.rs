//! The libp2p side of the mesh: QUIC (quinn underneath) with identify, ping, gossipsub and
//! request-response, for everything that carries authority (DESIGN.md decision 1).
//!
//! One task owns the swarm. The agent talks to it through a cloneable [`SwarmHandle`] and receives
//! [`SwarmEvent`]s. Admission happens on every connection: both sides send their join token over the
//! `/augur/admission/1` request-response protocol; a peer whose token does not verify, or that does
//! not present one within the admission timeout, is disconnected. Until a peer is admitted, gossipsub
//! ignores it (blacklisted), and any message it originates or forwards is rejected, so nothing an
//! unadmitted node says reaches the fleet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::transport::{MemoryTransport, OptionalTransport};
use libp2p::core::{ConnectedPoint, Transport as _};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent as LibSwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, noise, ping, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::admission::{JoinToken, Trust};
use crate::clock::Clock;
use crate::gatekeeper::{Gate, Gatekeeper, Input as GateInput};
use crate::tasks::Tasks;

/// The topic of fleet events.
pub const EVENTS_TOPIC: &str = "augur/events/1";
/// The topic of the service catalog's operator-signed documents.
pub const CATALOG_TOPIC: &str = "augur/catalog/1";
const ADMISSION_PROTOCOL: &str = "/augur/admission/1";
/// Lease requests and assignments (`crate::act`), between admitted peers only.
pub const LEASE_PROTOCOL: &str = "/augur/act/1";
/// The largest request or reply read (a lease request names at most 32 short keys; an
/// assignment at most 130 entries of short names).
pub const LEASE_MESSAGE_MAX: u64 = 128 * 1024;
/// Lease requests from peers waiting for this node's voter, at most; more are dropped (counted).
pub const LEASE_INBOX: usize = 256;

/// A lease request from an admitted peer, for this node's voter; answer it with
/// [`SwarmHandle::answer_lease`] and the same `id`.
#[derive(Debug)]
pub struct LeaseInbound {
    pub from: PeerId,
    pub id: u64,
    pub request: LeaseRequest,
}

pub use crate::act::{ActReply as LeaseReply, ActRequest as LeaseRequest};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdmissionRequest {
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdmissionResponse {
    /// The responder's own token when it admitted the requester.
    pub token: Option<String>,
    pub error: Option<String>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    admission: request_response::cbor::Behaviour<AdmissionRequest, AdmissionResponse>,
    lease: request_response::cbor::Behaviour<LeaseRequest, LeaseReply>,
}

/// Swarm settings.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/127.0.0.1/udp/7073/quic-v1`.
    pub listen: Vec<Multiaddr>,
    pub token: JoinToken,
    pub trusted: Trust,
    /// Wall time for token expiry (tests drive it from tokio's paused clock).
    pub clock: Clock,
    /// How long a connected peer has to present a valid token.
    pub admission_timeout: Duration,
    pub ping_interval: Duration,
    /// An in-process network (libp2p's memory transport) besides QUIC, for the deterministic
    /// simulation; `None` in the agent.
    pub memory: Option<MemoryNet>,
}

/// libp2p's in-process memory transport, with links that a simulation can cut: a dial from
/// `/memory/A` to `/memory/B` fails while the link A→B is cut (a partition cuts both ways, and
/// [`SwarmHandle::disconnect`] closes connections that were open before the cut).
#[derive(Clone, Debug, Default)]
pub struct MemoryNet {
    cut: Arc<parking_lot::RwLock<HashSet<(u64, u64)>>>,
}

impl MemoryNet {
    pub fn cut(&self, from: u64, to: u64) {
        self.cut.write().insert((from, to));
    }

    pub fn restore(&self, from: u64, to: u64) {
        self.cut.write().remove(&(from, to));
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.read().contains(&(from, to))
    }
}

/// The memory port of an address such as `/memory/1234`.
pub fn memory_port(addr: &Multiaddr) -> Option<u64> {
    addr.iter().find_map(|p| match p {
        Protocol::Memory(port) => Some(port),
        _ => None,
    })
}

/// What the swarm reports.
#[derive(Clone, Debug)]
pub enum SwarmEvent {
    Listening(Multiaddr),
    Admitted(PeerId),
    Refused {
        peer: PeerId,
        reason: String,
    },
    Disconnected(PeerId),
    Rtt {
        peer: PeerId,
        rtt: Duration,
    },
    /// A validated message on a topic, from an admitted origin.
    Message {
        topic: String,
        origin: PeerId,
        data: Vec<u8>,
    },
}

/// Counters of the swarm.
#[derive(Debug, Default)]
pub struct SwarmStats {
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
    /// Admitted peers disconnected later because their token expired or its fleet key was no
    /// longer trusted (checked every sweep, 250 ms).
    pub revoked: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub published: AtomicU64,
    /// Lease requests handed to this node's voter.
    pub lease_requests: AtomicU64,
    /// Lease requests dropped: from a peer not admitted, with the voter's inbox full, or
    /// unreadable (malformed, oversized, cut short).
    pub lease_dropped: AtomicU64,
    /// Lease requests this node sent that got no reply (timeout, closed connection, no route).
    pub lease_failures: AtomicU64,
}

enum Command {
    Dial(Multiaddr),
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Listeners(oneshot::Sender<Vec<Multiaddr>>),
    Disconnect(PeerId),
    Lease {
        peer: PeerId,
        request: LeaseRequest,
        reply: oneshot::Sender<Result<LeaseReply, String>>,
    },
    LeaseAnswer {
        id: u64,
        reply: LeaseReply,
    },
}

/// Cloneable handle on the swarm task.
#[derive(Clone, Debug)]
pub struct SwarmHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<SwarmEvent>,
    pub peer_id: PeerId,
    pub stats: Arc<SwarmStats>,
    /// Peers admitted on a live connection, as the swarm task last left them.
    admitted: Arc<parking_lot::RwLock<HashSet<PeerId>>>,
    /// The swarm task's group (stopping it closes every connection).
    tasks: Tasks,
    /// Lease requests from peers, for the one task that takes them.
    lease_inbox: Arc<parking_lot::Mutex<Option<mpsc::Receiver<LeaseInbound>>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// Gossipsub refused a message (no peer subscribed to the topic, too large, a duplicate).
    #[error("cannot publish on {topic}: {reason}")]
    Publish { topic: String, reason: String },
    #[error("the mesh has stopped")]
    Stopped,
    #[error("no lease reply from {peer}: {reason}")]
    Lease { peer: PeerId, reason: String },
}

impl SwarmHandle {
    pub fn subscribe(&self) -> broadcast::Receiver<SwarmEvent> {
        self.events.subscribe()
    }

    /// Dials a peer's multiaddr (admission follows on connection).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), SwarmError> {
        self.tx
            .send(Command::Dial(addr))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Publishes on a gossipsub topic. With no admitted peer subscribed, this is an error.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), SwarmError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish {
                topic: topic.to_owned(),
                data,
                reply,
            })
            .await
            .map_err(|_| SwarmError::Stopped)?;
        rx.await
            .map_err(|_| SwarmError::Stopped)?
            .map_err(|reason| SwarmError::Publish {
                topic: topic.to_owned(),
                reason,
            })
    }

    /// Peers admitted on a live connection.
    pub fn admitted(&self) -> Vec<PeerId> {
        self.admitted.read().iter().copied().collect()
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.read().contains(peer)
    }

    /// Closes every connection to `peer` (it may be dialled again).
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.tx.send(Command::Disconnect(peer)).await;
    }

    /// Stops the swarm task; its connections close, as when the process dies.
    pub fn shutdown(&self) {
        self.tasks.stop();
    }

    /// Sends a lease request to an admitted peer and waits for its reply (bounded by the
    /// protocol's request timeout).
    pub async fn lease_request(
        &self,
        peer: PeerId,
        request: LeaseRequest,
    ) -> Result<LeaseReply, SwarmError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Lease {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| SwarmError::Stopped)?;
        rx.await
            .map_err(|_| SwarmError::Stopped)?
            .map_err(|reason| SwarmError::Lease { peer, reason })
    }

    /// Answers the lease request `id` (from [`LeaseInbound`]).
    pub async fn answer_lease(&self, id: u64, reply: LeaseReply) {
        let _ = self.tx.send(Command::LeaseAnswer { id, reply }).await;
    }

    /// The lease requests from peers; the first caller gets them, later ones `None`.
    pub fn take_lease_inbox(&self) -> Option<mpsc::Receiver<LeaseInbound>> {
        self.lease_inbox.lock().take()
    }

    /// The addresses the swarm listens on.
    pub async fn listeners(&self) -> Vec<Multiaddr> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Listeners(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn message_id(m: &gossipsub::Message) -> MessageId {
    // Content-addressed ids: the same event forwarded twice is one message.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.source.hash(&mut h);
    m.sequence_number.hash(&mut h);
    m.data.hash(&mut h);
    MessageId::from(h.finish().to_be_bytes().to_vec())
}

/// Starts the swarm task; returns once it listens on every configured address.
pub async fn start(
    keypair: Keypair,
    config: SwarmConfig,
    tasks: &Tasks,
) -> Result<SwarmHandle, SwarmError> {
    let tasks = tasks.child();
    let peer_id = keypair.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(message_id)
        .max_transmit_size(256 * 1024)
        .build()
        .map_err(|e| SwarmError::Build(e.to_string()))?;
    // The memory transport's own port, for cut links: the first /memory/ listen address.
    let memory = config.memory.clone().map(|net| {
        let port = config.listen.iter().find_map(memory_port).unwrap_or(0);
        (net, port)
    });
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_quic()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let Some((net, port)) = memory else {
                    return Ok(OptionalTransport::none());
                };
                let gated = MemoryTransport::default().and_then(move |channel, endpoint| {
                    let cut = match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => {
                            memory_port(address).is_some_and(|to| net.is_cut(port, to))
                        }
                        ConnectedPoint::Listener { .. } => false,
                    };
                    futures::future::ready(if cut {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "link cut",
                        ))
                    } else {
                        Ok(channel)
                    })
                });
                Ok(OptionalTransport::some(
                    gated
                        .upgrade(Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                ))
            },
        )
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_behaviour(|key| {
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            Ok(Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/augur/1".to_owned(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(config.ping_interval)),
                gossipsub,
                admission: request_response::cbor::Behaviour::new(
                    [(
                        StreamProtocol::new(ADMISSION_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(config.admission_timeout),
                ),
                lease: request_response::Behaviour::with_codec(
                    request_response::cbor::codec::Codec::default()
                        .set_request_size_maximum(LEASE_MESSAGE_MAX)
                        .set_response_size_maximum(LEASE_MESSAGE_MAX),
                    [(StreamProtocol::new(LEASE_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(LEASE_REQUEST_TIMEOUT),
                ),
            })
        })
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    for topic in [
        EVENTS_TOPIC,
        CATALOG_TOPIC,
        crate::model_updates::MODELS_TOPIC,
    ] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| SwarmError::Build(e.to_string()))?;
    }
    let mut listener_ids = Vec::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| SwarmError::Listen {
                addr: addr.clone(),
                reason: match e.to_string() {
                    s if s.is_empty() => format!("{e:?}"),
                    s => s,
                },
            })?;
        listener_ids.push(id);
    }
    // Wait for the listeners, so callers can publish real addresses.
    let mut listening = Vec::new();
    while listening.len() < config.listen.len() {
        match swarm.select_next_some().await {
            LibSwarmEvent::NewListenAddr { address, .. } => listening.push(address),
            LibSwarmEvent::ListenerError { error, .. } => {
                return Err(SwarmError::Listen {
                    addr: config.listen[0].clone(),
                    reason: error.to_string(),
                });
            }
            LibSwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(SwarmError::Listen {
                    addr: config.listen[0].clone(),
                    reason: error.to_string(),
                });
            }
            _ => {}
        }
    }
    let (tx, rx) = mpsc::channel(256);
    let (tx_lease, rx_lease) = mpsc::channel(LEASE_INBOX);
    let (events, _) = broadcast::channel(1024);
    let stats = Arc::new(SwarmStats::default());
    let handle = SwarmHandle {
        tx,
        events: events.clone(),
        peer_id,
        stats: stats.clone(),
        admitted: Arc::default(),
        tasks: tasks.clone(),
        lease_inbox: Arc::new(parking_lot::Mutex::new(Some(rx_lease))),
    };
    let task = run(
        swarm,
        rx,
        tx_lease,
        events,
        stats,
        config,
        Listening {
            addrs: listening,
            ids: listener_ids,
        },
        handle.admitted.clone(),
        tasks.clone(),
    );
    tasks.spawn("mesh.swarm", task);
    Ok(handle)
}

/// How long a lease request waits for its reply.
pub const LEASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How often pending admissions and the admitted peers' credentials are checked.
pub const ADMISSION_SWEEP: Duration = Duration::from_millis(250);

/// Where the swarm task's decisions land: reports, counters and the admitted set the handle reads.
struct Outlet<'a> {
    events: &'a broadcast::Sender<SwarmEvent>,
    stats: &'a SwarmStats,
    admitted: &'a parking_lot::RwLock<HashSet<PeerId>>,
    our_token: &'a str,
}

impl Outlet<'_> {
    /// Carries out the gatekeeper's decisions; an answer goes back on `channel`.
    fn apply(
        &self,
        swarm: &mut libp2p::Swarm<Behaviour>,
        actions: Vec<Gate>,
        mut channel: Option<request_response::ResponseChannel<AdmissionResponse>>,
    ) {
        for a in actions {
            match a {
                Gate::Blacklist(p) => swarm.behaviour_mut().gossipsub.blacklist_peer(&p),
                Gate::SendToken(p) => {
                    swarm.behaviour_mut().admission.send_request(
                        &p,
                        AdmissionRequest {
                            token: self.our_token.to_owned(),
                        },
                    );
                }
                Gate::Answer {
                    admitted: ok,
                    error,
                } => {
                    if let Some(ch) = channel.take() {
                        let response = AdmissionResponse {
                            token: ok.then(|| self.our_token.to_owned()),
                            error,
                        };
                        let _ = swarm.behaviour_mut().admission.send_response(ch, response);
                    }
                }
                Gate::Admit(p) => {
                    self.admitted.write().insert(p);
                    swarm.behaviour_mut().gossipsub.remove_blacklisted_peer(&p);
                    self.stats.admitted.fetch_add(1, Ordering::Relaxed);
                    let _ = self.events.send(SwarmEvent::Admitted(p));
                }
                Gate::Refuse { peer, reason } => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, %reason, "peer refused");
                    let _ = self.events.send(SwarmEvent::Refused { peer, reason });
                    let _ = swarm.disconnect_peer_id(peer);
                }
                Gate::Revoke { peer, reason } => {
                    self.admitted.write().remove(&peer);
                    swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
                    self.stats.revoked.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, %reason, "admission revoked; disconnecting");
                    let _ = self.events.send(SwarmEvent::Refused { peer, reason });
                    let _ = self.events.send(SwarmEvent::Disconnected(peer));
                    let _ = swarm.disconnect_peer_id(peer);
                }
                Gate::Gone(p) => {
                    self.admitted.write().remove(&p);
                    let _ = self.events.send(SwarmEvent::Disconnected(p));
                }
            }
        }
    }
}

/// The swarm's listen addresses and the listeners behind them.
struct Listening {
    addrs: Vec<Multiaddr>,
    ids: Vec<libp2p::core::transport::ListenerId>,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut swarm: libp2p::Swarm<Behaviour>,
    mut rx: mpsc::Receiver<Command>,
    tx_lease: mpsc::Sender<LeaseInbound>,
    events: broadcast::Sender<SwarmEvent>,
    stats: Arc<SwarmStats>,
    config: SwarmConfig,
    Listening {
        addrs: mut listening,
        ids: listener_ids,
    }: Listening,
    // Peers admitted on a live connection; the handle reads the same set.
    admitted: Arc<parking_lot::RwLock<HashSet<PeerId>>>,
    tasks: Tasks,
) {
    // Stopping frees the listen addresses at once (the memory transport keeps a port until its
    // listener is removed, so a restarted simulated node could not bind it again).
    let stop = |swarm: &mut libp2p::Swarm<Behaviour>| {
        admitted.write().clear();
        for id in &listener_ids {
            swarm.remove_listener(*id);
        }
    };
    let our_token = config.token.to_string();
    let mut gate = Gatekeeper::new(config.trusted.clone(), config.admission_timeout);
    for a in &listening {
        let _ = events.send(SwarmEvent::Listening(a.clone()));
    }
    let mut sweep = tokio::time::interval(ADMISSION_SWEEP);
    let clock = config.clock.clone();
    // Lease requests in flight both ways: ours awaiting replies, peers' awaiting our voter.
    let mut lease_out: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<LeaseReply, String>>,
    > = HashMap::new();
    let mut lease_in: HashMap<u64, request_response::ResponseChannel<LeaseReply>> = HashMap::new();
    let mut lease_seq = 0u64;
    let out = Outlet {
        events: &events,
        stats: &stats,
        admitted: &admitted,
        our_token: &our_token,
    };
    let apply =
        |swarm: &mut libp2p::Swarm<Behaviour>,
         actions: Vec<Gate>,
         channel: Option<request_response::ResponseChannel<AdmissionResponse>>| {
            out.apply(swarm, actions, channel)
        };
    loop {
        tokio::select! {
            () = tasks.stopped() => {
                stop(&mut swarm);
                return;
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else {
                    stop(&mut swarm);
                    return;
                };
                match cmd {
                    Command::Dial(addr) => {
                        if let Err(e) = swarm.dial(addr.clone()) {
                            tracing::debug!(%addr, error = %e, "dial failed");
                        }
                    }
                    Command::Publish { topic, data, reply } => {
                        let r = swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(IdentTopic::new(topic), data)
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        if r.is_ok() {
                            stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = reply.send(r);
                    }
                    Command::Listeners(reply) => {
                        let _ = reply.send(listening.clone());
                    }
                    Command::Disconnect(peer) => {
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                    Command::Lease { peer, request, reply } => {
                        if !admitted.read().contains(&peer) {
                            stats.lease_failures.fetch_add(1, Ordering::Relaxed);
                            let _ = reply.send(Err("not connected to it as an admitted peer".into()));
                        } else {
                            let id = swarm.behaviour_mut().lease.send_request(&peer, request);
                            lease_out.insert(id, reply);
                        }
                    }
                    Command::LeaseAnswer { id, reply } => {
                        if let Some(ch) = lease_in.remove(&id) {
                            let _ = swarm.behaviour_mut().lease.send_response(ch, reply);
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                let actions = gate.on_event(GateInput::Sweep, clock.now());
                apply(&mut swarm, actions, None);
            }
            ev = swarm.select_next_some() => match ev {
                LibSwarmEvent::NewListenAddr { address, .. } => {
                    listening.push(address.clone());
                    let _ = events.send(SwarmEvent::Listening(address));
                }
                LibSwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    let actions = gate.on_event(GateInput::Connected(peer_id), clock.now());
                    apply(&mut swarm, actions, None);
                }
                LibSwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    let actions = gate.on_event(GateInput::Closed(peer_id), clock.now());
                    apply(&mut swarm, actions, None);
                }
                LibSwarmEvent::Behaviour(BehaviourEvent::Admission(request_response::Event::Message { peer, message, .. })) => {
                    match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let input = GateInput::Request { peer, token: request.token };
                            let actions = gate.on_event(input, clock.now());
                            apply(&mut swarm, actions, Some(channel));
                        }
                        request_response::Message::Response { response, .. } => {
                            let input = GateInput::Response {
                                peer,
                                token: response.token,
                                error: response.error,
                            };
                            let actions = gate.on_event(input, clock.now());
                            apply(&mut swarm, actions, None);
                        }
                    }
                }
                LibSwarmEvent::Behaviour(BehaviourEvent::Lease(ev)) => match ev {
                    request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                        // Only an admitted peer may ask; a full inbox drops (the proposer's
                        // timeout covers it, as for a lost message).
                        lease_in.retain(|_, ch| ch.is_open());
                        if !admitted.read().contains(&peer) || lease_in.len() >= LEASE_INBOX {
                            stats.lease_dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            lease_seq += 1;
                            match tx_lease.try_send(LeaseInbound { from: peer, id: lease_seq, request }) {
                                Ok(()) => {
                                    stats.lease_requests.fetch_add(1, Ordering::Relaxed);
                                    lease_in.insert(lease_seq, channel);
                                }
                                Err(_) => {
                                    stats.lease_dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. } => {
                        if let Some(tx) = lease_out.remove(&request_id) {
                            let _ = tx.send(Ok(response));
                        }
                    }
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        stats.lease_failures.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = lease_out.remove(&request_id) {
                            let _ = tx.send(Err(error.to_string()));
                        }
                    }
                    // A request that could not be read (malformed, over LEASE_MESSAGE_MAX, cut
                    // short): dropped, counted.
                    request_response::Event::InboundFailure { peer, error, .. } => {
                        stats.lease_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, %error, "unreadable lease request dropped");
                    }
                    _ => {}
                },
                LibSwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) => {
                    let origin = message.source;
                    let ok = {
                        let admitted = admitted.read();
                        admitted.contains(&propagation_source)
                            && origin.is_some_and(|o| o == *swarm.local_peer_id() || admitted.contains(&o) || o == propagation_source)
                    };
                    let acceptance = if ok {
                        stats.messages_accepted.fetch_add(1, Ordering::Relaxed);
                        gossipsub::MessageAcceptance::Accept
                    } else {
                        stats.messages_rejected.fetch_add(1, Ordering::Relaxed);
                        gossipsub::MessageAcceptance::Reject
                    };
                    let _ = swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
                    if let (true, Some(origin)) = (ok, origin) {
                        let _ = events.send(SwarmEvent::Message {
                            topic: message.topic.to_string(),
                            origin,
                            data: message.data,
                        });
                    }
                }
                LibSwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) if admitted.read().contains(&peer) => {
                    let _ = events.send(SwarmEvent::Rtt { peer, rtt });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{FleetKey, FleetPublicKey};

    async fn node(fleet: &FleetKey, trusted: &[FleetPublicKey]) -> (SwarmHandle, Multiaddr) {
        let kp = Keypair::generate_ed25519();
        let token = fleet.issue(kp.public().to_peer_id(), u64::MAX);
        let h = start(
            kp,
            SwarmConfig {
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")],
                token,
                trusted: Trust::new(trusted.to_vec()),
                clock: Clock::system(),
                admission_timeout: Duration::from_secs(2),
                ping_interval: Duration::from_millis(500),
                memory: None,
            },
            &Tasks::default(),
        )
        .await
        .expect("starts");
        let addr = h.listeners().await[0].clone();
        (h, addr)
    }

    async fn wait_for<T>(
        what: &str,
        rx: &mut broadcast::Receiver<SwarmEvent>,
        mut f: impl FnMut(&SwarmEvent) -> Option<T>,
    ) -> T {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(ev) = rx.recv().await
                    && let Some(t) = f(&ev)
                {
                    return t;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} within 20 s"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admitted_peers_exchange_events_and_a_stranger_is_refused() {
        let fleet = FleetKey::generate();
        let trusted = [fleet.public()];
        let (a, _a_addr) = node(&fleet, &trusted).await;
        let (b, b_addr) = node(&fleet, &trusted).await;
        let mut a_events = a.subscribe();
        let mut b_events = b.subscribe();
        a.dial(b_addr.clone()).await.expect("dials");
        let b_id = b.peer_id;
        wait_for("b admitted by a", &mut a_events, |e| {
            matches!(e, SwarmEvent::Admitted(p) if *p == b_id).then_some(())
        })
        .await;
        let rtt = wait_for("a ping round trip", &mut a_events, |e| match e {
            SwarmEvent::Rtt { peer, rtt } if *peer == b_id => Some(*rtt),
            _ => None,
        })
        .await;
        assert!(rtt < Duration::from_secs(1));
        // Gossipsub needs a heartbeat or two to graft the mesh.
        let published = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if a.publish(EVENTS_TOPIC, b"hello".to_vec()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(published.is_ok(), "published");
        let got = wait_for("a's message at b", &mut b_events, |e| match e {
            SwarmEvent::Message { data, origin, .. } => Some((data.clone(), *origin)),
            _ => None,
        })
        .await;
        assert_eq!(got, (b"hello".to_vec(), a.peer_id));

        // A node with a token from another fleet connects, and is refused by b.
        let rogue = FleetKey::generate();
        let (x, _) = node(&rogue, &[rogue.public()]).await;
        x.dial(b_addr).await.expect("dials");
        let x_id = x.peer_id;
        wait_for("x refused by b", &mut b_events, |e| {
            matches!(e, SwarmEvent::Refused { peer, .. } if *peer == x_id).then_some(())
        })
        .await;
        assert!(!b.is_admitted(&x_id));
        assert!(b.stats.refused.load(Ordering::Relaxed) >= 1);
    }
}

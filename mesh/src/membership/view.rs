//! The membership view without I/O: what this node believes about every member, decided from what
//! chitchat holds, and nothing else. The membership task (the shell in `super`) reads chitchat,
//! feeds [`View::on_event`] and carries out the [`Action`]s it returns; the decisions live here:
//!
//! - which values are believed (signature, fleet, age, per-node rollback across generations);
//! - which nodes are members (a valid, trusted, unexpired join token and a signed gossip identity
//!   that matches chitchat's id of the node);
//! - each member's status from the failure detector, its silence, a recent ping answered (a second
//!   witness) and this node's own lateness (self-doubt: a starved node does not declare others dead);
//! - the events on status changes, and removal once a member is gone from chitchat (held back
//!   for a while after chitchat restarted with an empty state).
//!
//! Time comes in with every event ([`Now`]), so tests drive the view with plain values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::ChitchatId;
use libp2p::PeerId;
use tokio::time::Instant;

use super::{Member, MemberStatus, MembershipConfig, MembershipEvent};
use crate::admission::{JoinToken, Trust};
pub use crate::clock::Now;
use crate::values::{self, NodeValue, Rejected, ValueKind};

/// A node learned from gossip that has not shown a heartbeat yet is judged dead by chitchat at
/// once; it is listed as dead only if it stays so this long (or was alive before).
pub const DEAD_ON_ARRIVAL: Duration = Duration::from_secs(10);
/// How long after a restart of chitchat members missing from its (fresh) state are not reported
/// removed: they come back within a few rounds.
pub const RESTART_GRACE: Duration = Duration::from_secs(30);
/// A new member without a name yet is announced after this long (it is named as soon as its
/// placement value arrives, usually in the same round).
pub const UNNAMED_ANNOUNCE: Duration = Duration::from_secs(5);

/// How chitchat's failure detector judges a node this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Dead,
    /// Known, not judged yet (no heartbeat interval yet).
    Unjudged,
}

/// One node as read from chitchat.
#[derive(Clone, Debug)]
pub struct ObservedNode {
    pub id: ChitchatId,
    pub heartbeat: u64,
    /// Its augur values `(key, stored, chitchat version)`; the shell may leave out those whose
    /// version the view has verified already ([`View::verified_version`]).
    pub values: Vec<(String, String, u64)>,
    pub liveness: Liveness,
    /// The failure detector's current timeout for it.
    pub timeout: Option<Duration>,
}

/// What the shell tells the view.
#[derive(Clone, Debug)]
pub enum Input {
    /// A gossip round began on the timer; the view judges this node's own lateness from these.
    Tick,
    /// chitchat's nodes as read now, and when each peer last answered a libp2p ping.
    Observed {
        nodes: Vec<ObservedNode>,
        answered: HashMap<String, Instant>,
    },
    /// chitchat was started again with an empty state.
    Restarted,
}

/// A counter the shell keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    ValueAccepted,
    Rejected(Rejected),
    /// This node's own round ran late enough to doubt its verdicts.
    SelfDoubt,
    /// A member the failure detector judged dead stayed suspect.
    HeldVerdict,
}

/// What the shell carries out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The members readers see from now on (this node included).
    SetMembers(Vec<Member>),
    Emit(MembershipEvent),
    /// An admitted member (new, or with changed values): its gossip session may open.
    Learn {
        token: JoinToken,
        addr: SocketAddr,
    },
    Count(Count),
    /// Nodes in chitchat that are not members (no valid token or identity), this round.
    Unadmitted(u64),
}

/// What the view knows of one chitchat node (one generation of a peer).
#[derive(Debug, Default)]
struct NodeView {
    /// Verified values by kind, with the chitchat version they came from.
    values: HashMap<ValueKind, (u64, Result<values::Opened, Rejected>)>,
    heartbeat: u64,
    last_heard: Option<Instant>,
    first_seen: Option<Instant>,
    peer: Option<PeerId>,
    /// The admission value version whose token was last checked, and the token when valid.
    token_checked: Option<u64>,
    token: Option<JoinToken>,
    /// Whether this node was ever alive in this view.
    was_alive: bool,
    /// The chitchat version of a signed gossip identity refused as not this node's (counted once).
    identity_refused: Option<u64>,
    /// The PeerId as text, encoded once.
    peer_str: String,
    /// The member as its values describe it, rebuilt only when a value changes; each round sets
    /// only its status and silence.
    base: Option<Member>,
}

impl NodeView {
    fn good(&self, kind: ValueKind) -> Option<NodeValue> {
        self.values
            .get(&kind)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|o| o.value.clone())
    }
}

/// The membership view: a state machine over [`Input`]s.
#[derive(Debug)]
pub struct View {
    fleet_id: String,
    /// This node's chitchat id.
    self_id: String,
    trust: Trust,
    gossip_interval: Duration,
    lateness_limit: Duration,
    self_doubt: Duration,
    ping_witness: Duration,
    max_value_age: Duration,
    views: HashMap<ChitchatId, NodeView>,
    /// Highest sequence number accepted per node and kind, across its generations: a value
    /// replayed under another chitchat identity is still older than what was accepted.
    seqs: HashMap<(PeerId, ValueKind), u64>,
    /// Each member's last reported status, and the round it was last seen in.
    known: HashMap<String, (MemberStatus, u64)>,
    /// Each peer's name, across its generations: a restarted node is listed (and its recovery
    /// reported) before its new placement value arrives.
    names: HashMap<String, String>,
    unnamed_since: HashMap<String, Instant>,
    round: u64,
    restarted: Option<Instant>,
    last_tick: Option<Instant>,
    doubt_until: Option<Instant>,
    /// The members as last set.
    members: Vec<Member>,
}

impl View {
    pub fn new(config: &MembershipConfig, me: &PeerId, trust: Trust) -> Self {
        Self {
            fleet_id: config.fleet_id.clone(),
            self_id: values::short_id(me),
            trust,
            gossip_interval: config.gossip_interval,
            lateness_limit: config.lateness_limit,
            self_doubt: config.self_doubt,
            ping_witness: config.ping_witness,
            max_value_age: config.max_value_age,
            views: HashMap::new(),
            seqs: HashMap::new(),
            known: HashMap::new(),
            names: HashMap::new(),
            unnamed_since: HashMap::new(),
            round: 0,
            restarted: None,
            last_tick: None,
            doubt_until: None,
            members: Vec::new(),
        }
    }

    /// The chitchat version of a node's value the view last verified (the shell need not copy a
    /// value of that version again).
    pub fn verified_version(&self, id: &ChitchatId, kind: ValueKind) -> Option<u64> {
        self.views
            .get(id)
            .and_then(|v| v.values.get(&kind))
            .map(|e| e.0)
    }

    /// The members as last set.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn on_event(&mut self, input: Input, now: Now) -> Vec<Action> {
        match input {
            Input::Tick => self.tick(now),
            Input::Observed { nodes, answered } => self.observe(nodes, &answered, now),
            Input::Restarted => {
                self.restarted = Some(now.mono);
                Vec::new()
            }
        }
    }

    fn tick(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(last) = self.last_tick {
            let late = now
                .mono
                .duration_since(last)
                .saturating_sub(self.gossip_interval);
            if late > self.lateness_limit {
                self.doubt_until = Some(now.mono + self.self_doubt);
                out.push(Action::Count(Count::SelfDoubt));
            }
        }
        self.last_tick = Some(now.mono);
        out
    }

    /// Verifies what changed and records it in the node's view.
    fn verify(
        &mut self,
        id: &ChitchatId,
        peer: PeerId,
        kv: Vec<(String, String, u64)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(view) = self.views.get_mut(id) else {
            return;
        };
        for (key, value, version) in kv {
            let Some(kind) = ValueKind::from_key(&key) else {
                continue;
            };
            if view.values.get(&kind).is_some_and(|(v, _)| *v == version) {
                continue;
            }
            let mut opened = values::open(&self.fleet_id, &peer, &key, &value);
            if let Ok(o) = &opened {
                let too_old = o.ts_ms + (self.max_value_age.as_millis() as u64) < now.unix_ms;
                // Rollback is judged per node across its generations, and a value exactly as old
                // as the newest accepted is that value seen again under another identity.
                let newest = self.seqs.get(&(peer, kind)).copied();
                let replayed = newest.is_some_and(|s| o.seq < s);
                if too_old || replayed {
                    opened = Err(Rejected::Stale);
                }
            }
            match &opened {
                Ok(o) => {
                    let e = self.seqs.entry((peer, kind)).or_insert(0);
                    *e = (*e).max(o.seq);
                    out.push(Action::Count(Count::ValueAccepted));
                }
                Err(r) => out.push(Action::Count(Count::Rejected(*r))),
            }
            // A rejected newer value does not erase the last good one.
            if opened.is_ok() || !view.values.get(&kind).is_some_and(|(_, r)| r.is_ok()) {
                view.values.insert(kind, (version, opened));
                view.base = None;
            } else if let Some(entry) = view.values.get_mut(&kind) {
                entry.0 = version;
            }
        }
    }

    /// Whether the node is a member now: a valid token (its signature checked once per admission
    /// value; its expiry and its fleet key's trust every round) and a matching signed identity.
    fn admit(&mut self, id: &ChitchatId, peer: PeerId, now: Now, out: &mut Vec<Action>) -> bool {
        let Some(view) = self.views.get_mut(id) else {
            return false;
        };
        let admission_version = view.values.get(&ValueKind::Admission).map(|e| e.0);
        if view.token_checked != admission_version {
            view.token_checked = admission_version;
            view.token = match view.good(ValueKind::Admission) {
                Some(NodeValue::Admission(t)) => t
                    .parse::<JoinToken>()
                    .ok()
                    .filter(|t| self.trust.verify(t, &peer, now.unix_ms / 1000).is_ok()),
                _ => None,
            };
        }
        let admitted = view
            .token
            .as_ref()
            .is_some_and(|t| now.unix_ms / 1000 < t.expires_unix_s && self.trust.trusts(&t.fleet));
        if !admitted {
            return false;
        }
        // chitchat's id (generation, address) is not signed: the node's own signed statement of
        // them must match, or this is its identity replayed by someone else.
        let identity = match view.good(ValueKind::Gossip) {
            Some(NodeValue::Gossip(g)) => Some(
                g.generation == id.generation_id && g.addr == id.gossip_advertise_addr.to_string(),
            ),
            _ => None,
        };
        if identity != Some(true) {
            // A missing statement is waited for; a different one is counted once per statement.
            let statement = view.values.get(&ValueKind::Gossip).map(|e| e.0);
            if identity == Some(false) && view.identity_refused != statement {
                out.push(Action::Count(Count::Rejected(Rejected::WrongIdentity)));
                view.identity_refused = statement;
            }
            return false;
        }
        view.identity_refused = None;
        true
    }

    fn observe(
        &mut self,
        nodes: Vec<ObservedNode>,
        answered: &HashMap<String, Instant>,
        now: Now,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.round += 1;
        let round = self.round;
        let doubting = self.doubt_until.is_some_and(|t| t > now.mono);
        if self.views.len() > nodes.len() {
            let present: HashSet<&ChitchatId> = nodes.iter().map(|n| &n.id).collect();
            self.views.retain(|id, _| present.contains(id));
        }
        // In chitchat's order: by node id, then generation, so a node's generations are adjacent
        // and its newest comes last.
        let mut members: Vec<Member> = Vec::with_capacity(nodes.len());
        let mut unadmitted = 0;
        for node in nodes {
            let ObservedNode {
                id,
                heartbeat,
                values: kv,
                liveness,
                timeout,
            } = node;
            let view = self.views.entry(id.clone()).or_default();
            let first_seen = *view.first_seen.get_or_insert(now.mono);
            if heartbeat != view.heartbeat || view.last_heard.is_none() {
                view.heartbeat = heartbeat;
                view.last_heard = Some(now.mono);
            }
            // Node ids are short (see `values::short_id`): the PeerId comes from the node's
            // admission value, whose token names it, and must match the id.
            if view.peer.is_none() {
                view.peer = kv
                    .iter()
                    .find(|(k, _, _)| k == ValueKind::Admission.key())
                    .and_then(|(_, v, _)| values::claimed_peer(v))
                    .filter(|p| values::short_id(p) == *id.node_id);
                if let Some(p) = view.peer {
                    view.peer_str = p.to_string();
                }
            }
            let Some(peer) = view.peer else {
                unadmitted += 1;
                continue;
            };
            self.verify(&id, peer, kv, now, &mut out);
            if !self.admit(&id, peer, now, &mut out) {
                unadmitted += 1;
                continue;
            }
            let Some(view) = self.views.get_mut(&id) else {
                continue;
            };
            // A member whose values changed (or that is new) is told to the gossip sessions.
            if view.base.is_none()
                && let Some(t) = &view.token
            {
                out.push(Action::Learn {
                    token: t.clone(),
                    addr: id.gossip_advertise_addr,
                });
            }
            let is_self = id.node_id.as_ref() == self.self_id;
            let leaving = matches!(
                view.good(ValueKind::Leaving),
                Some(NodeValue::Leaving(true))
            );
            let silent = view.last_heard.map(|t| now.mono.duration_since(t));
            let status = if leaving {
                MemberStatus::Left
            } else if is_self || liveness == Liveness::Live {
                match (silent, timeout) {
                    (Some(s), Some(t)) if !is_self && s > t / 2 => MemberStatus::Suspect,
                    _ => MemberStatus::Alive,
                }
            } else if liveness == Liveness::Dead
                && (view.was_alive || now.mono.duration_since(first_seen) > DEAD_ON_ARRIVAL)
            {
                let witnessed = answered
                    .get(&view.peer_str)
                    .is_some_and(|t| now.mono.duration_since(*t) < self.ping_witness);
                if view.was_alive && (doubting || witnessed) {
                    out.push(Action::Count(Count::HeldVerdict));
                    MemberStatus::Suspect
                } else {
                    MemberStatus::Dead
                }
            } else {
                // Known to chitchat but not yet judged (no heartbeat interval yet).
                continue;
            };
            view.was_alive |= status == MemberStatus::Alive;
            let base = view.base.get_or_insert_with(|| {
                describe(view_values(&view.values), &view.peer_str, &id, is_self)
            });
            let mut m = base.clone();
            m.status = status;
            m.last_heard_ms = (!is_self)
                .then(|| silent.map(|s| s.as_millis() as u64))
                .flatten();
            // Several generations of one node (a restart) collapse to the newest, which comes last.
            match members.last_mut() {
                Some(prev) if prev.peer_id == m.peer_id => *prev = m,
                _ => members.push(m),
            }
        }
        out.push(Action::Unadmitted(unadmitted));
        for m in &mut members {
            match &m.node_name {
                Some(n) => {
                    if self.names.get(&m.peer_id) != Some(n) {
                        self.names.insert(m.peer_id.clone(), n.clone());
                    }
                }
                None => m.node_name = self.names.get(&m.peer_id).cloned(),
            }
        }
        self.changes(&members, round, now, &mut out);
        // Shortly after chitchat restarted with an empty state, members still to be heard again
        // are kept as they were rather than reported removed.
        let settling = self
            .restarted
            .is_some_and(|t| now.mono.duration_since(t) < RESTART_GRACE);
        if settling {
            let listed: HashSet<String> = members.iter().map(|m| m.peer_id.clone()).collect();
            members.extend(
                self.members
                    .iter()
                    .filter(|m| !listed.contains(&m.peer_id))
                    .cloned(),
            );
        } else {
            let gone: Vec<String> = self
                .known
                .iter()
                .filter(|(_, (_, r))| *r != round)
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                self.known.remove(&p);
                self.names.remove(&p);
                out.push(Action::Emit(MembershipEvent::Removed { peer_id: p }));
            }
        }
        self.members = members.clone();
        out.push(Action::SetMembers(members));
        out
    }

    /// Events on status changes (a new member is announced once its name is known, or after
    /// [`UNNAMED_ANNOUNCE`] without).
    fn changes(&mut self, members: &[Member], round: u64, now: Now, out: &mut Vec<Action>) {
        for m in members {
            let before = match self.known.get_mut(&m.peer_id) {
                Some((status, seen)) => {
                    *seen = round;
                    // Suspect between down and up is not a change: a member that comes back
                    // through suspect (a restart heard late) has still recovered.
                    let down = matches!(status, MemberStatus::Dead | MemberStatus::Left);
                    if *status == m.status || (down && m.status == MemberStatus::Suspect) {
                        continue;
                    }
                    let before = *status;
                    *status = m.status;
                    Some(before)
                }
                None => {
                    if m.node_name.is_none() && !m.is_self {
                        let since = *self
                            .unnamed_since
                            .entry(m.peer_id.clone())
                            .or_insert(now.mono);
                        if now.mono.duration_since(since) < UNNAMED_ANNOUNCE {
                            continue;
                        }
                    }
                    self.unnamed_since.remove(&m.peer_id);
                    self.known.insert(m.peer_id.clone(), (m.status, round));
                    None
                }
            };
            let event = match (before, m.status) {
                (None, MemberStatus::Alive | MemberStatus::Suspect) if !m.is_self => {
                    Some(MembershipEvent::Joined(m.clone()))
                }
                (Some(MemberStatus::Dead | MemberStatus::Left), MemberStatus::Alive) => {
                    Some(MembershipEvent::Recovered(m.clone()))
                }
                (Some(MemberStatus::Alive | MemberStatus::Suspect), MemberStatus::Dead) => {
                    Some(MembershipEvent::Dead(m.clone()))
                }
                (Some(b), MemberStatus::Left) if b != MemberStatus::Left => {
                    Some(MembershipEvent::Left(m.clone()))
                }
                _ => None,
            };
            if let Some(e) = event {
                out.push(Action::Emit(e));
            }
        }
    }
}

/// The membership view is a [`Machine`](augur_orchestrate::Machine) like the orchestration cores.
impl augur_orchestrate::Machine for View {
    type Event = Input;
    type Action = Action;
    type Now = Now;

    fn on_event(&mut self, event: Input, now: Now) -> Vec<Action> {
        View::on_event(self, event, now)
    }
}

fn view_values(
    values: &HashMap<ValueKind, (u64, Result<values::Opened, Rejected>)>,
) -> impl Iterator<Item = NodeValue> + '_ {
    ValueKind::ALL.into_iter().filter_map(|kind| {
        values
            .get(&kind)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|o| o.value.clone())
    })
}

/// The member as its believed values describe it (status and silence are set each round).
fn describe(
    believed: impl Iterator<Item = NodeValue>,
    peer: &str,
    id: &ChitchatId,
    is_self: bool,
) -> Member {
    let mut m = Member {
        peer_id: peer.to_owned(),
        node_name: None,
        status: MemberStatus::Alive,
        is_self,
        gossip_addr: id.gossip_advertise_addr.to_string(),
        generation: id.generation_id,
        health: None,
        capacity: None,
        zone: None,
        labels: BTreeMap::new(),
        services: Vec::new(),
        instances: Vec::new(),
        endpoints: None,
        models: BTreeMap::new(),
        last_heard_ms: None,
        rtt_ms: None,
    };
    for value in believed {
        match value {
            NodeValue::Health(h) => m.health = Some(h),
            NodeValue::Capacity(c) => m.capacity = Some(c),
            NodeValue::Placement(p) => {
                m.node_name = Some(p.node_name);
                m.zone = p.zone;
                m.labels = p.labels;
            }
            NodeValue::Services(s) => m.services = s,
            NodeValue::Instances(i) => m.instances = i,
            NodeValue::Endpoints(e) => m.endpoints = Some(e),
            NodeValue::Models(v) => m.models = v,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;
    use crate::admission::FleetKey;
    use crate::values::{GossipIdentity, Placement};

    const FLEET: &str = "test";
    /// Wall time at the start of every case (unix ms).
    const T0_MS: u64 = 1_800_000_000_000;

    /// What a node gossips in a case.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Vals {
        /// A valid token, its signed gossip identity, a name.
        Good,
        /// No admission value at all.
        NoToken,
        /// A token that expired before the case began.
        Expired,
        /// A token signed by a fleet key this node does not trust.
        Untrusted,
        /// A signed identity at another generation than chitchat lists (a replayed identity).
        WrongGeneration,
        /// Good, and announcing departure.
        Leaving,
        /// Good values signed longer ago than `max_value_age`.
        Stale,
    }

    /// One step of a case, at a time offset in milliseconds from its start.
    #[derive(Clone, Debug)]
    enum Step {
        Tick(u64),
        /// The listed nodes (by index: 0 is this node) with their liveness and heartbeat.
        Observe(u64, Vec<(usize, Liveness, u64, Vals)>),
        /// A peer answered a ping at this time.
        Ping(u64, usize),
        Restart(u64),
    }

    struct Case {
        name: &'static str,
        steps: Vec<Step>,
        /// Members after the last step: (node, status).
        members: Vec<(usize, MemberStatus)>,
        /// Events over the whole case, in order: (kind, node).
        events: Vec<(&'static str, usize)>,
        /// Counts that must appear (at least once each) over the case.
        counts: Vec<Count>,
        /// Nodes not admitted in the last round.
        unadmitted: u64,
    }

    /// A node's gossiped values: (key, stored, chitchat version).
    type Values = Vec<(String, String, u64)>;

    struct Node {
        keypair: Keypair,
        peer: PeerId,
        id: ChitchatId,
    }

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| {
                let keypair = Keypair::ed25519_from_bytes([i as u8 + 1; 32]).expect("key");
                let peer = keypair.public().to_peer_id();
                let addr: SocketAddr = format!("10.0.0.{}:7946", i + 1).parse().expect("addr");
                Node {
                    id: ChitchatId::new(values::short_id(&peer), 5, addr),
                    keypair,
                    peer,
                }
            })
            .collect()
    }

    fn gossiped(node: &Node, vals: Vals, at_ms: u64) -> Values {
        let trusted = FleetKey::from_seed([1; 32]);
        let other = FleetKey::from_seed([2; 32]);
        let expires = match vals {
            Vals::Expired => T0_MS / 1000 - 1,
            _ => T0_MS / 1000 + 3600,
        };
        let fleet = if vals == Vals::Untrusted {
            &other
        } else {
            &trusted
        };
        let token = fleet.issue(node.peer, expires);
        let generation = if vals == Vals::WrongGeneration { 4 } else { 5 };
        let signed_at = if vals == Vals::Stale {
            at_ms - 600_000
        } else {
            at_ms
        };
        let mut list = vec![
            NodeValue::Gossip(GossipIdentity {
                generation,
                addr: node.id.gossip_advertise_addr.to_string(),
            }),
            NodeValue::Placement(Placement {
                node_name: format!("n{}", node.id.gossip_advertise_addr.ip()),
                zone: None,
                labels: BTreeMap::new(),
            }),
        ];
        if vals != Vals::NoToken {
            list.push(NodeValue::Admission(token.to_string()));
        }
        if vals == Vals::Leaving {
            list.push(NodeValue::Leaving(true));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                // Versions and sequence numbers grow with time: a re-observed value is the same.
                let seq = signed_at * 10 + i as u64;
                let (k, s) = values::seal(&node.keypair, FLEET, v, seq, signed_at);
                (k.to_owned(), s, seq)
            })
            .collect()
    }

    fn run(case: &Case) {
        let ns = nodes(4);
        let mut config =
            MembershipConfig::new(FLEET.to_owned(), "10.0.0.1:7946".parse().expect("addr"));
        config.gossip_interval = Duration::from_secs(1);
        let trust = Trust::new(vec![FleetKey::from_seed([1; 32]).public()]);
        let mut view = View::new(&config, &ns[0].peer, trust);
        let start = Instant::now();
        let mut answered = HashMap::new();
        let mut events = Vec::new();
        let mut counts = Vec::new();
        let mut last_members = Vec::new();
        let mut last_unadmitted = None;
        let at = |ms: u64| Now {
            mono: start + Duration::from_millis(ms),
            unix_ms: T0_MS + ms,
        };
        // The values each node gossips are signed once, when first observed (like chitchat, which
        // keeps a value until its owner changes it).
        let mut signed: HashMap<(usize, &'static str), Values> = HashMap::new();
        for step in &case.steps {
            let actions = match step {
                Step::Tick(ms) => view.on_event(Input::Tick, at(*ms)),
                Step::Restart(ms) => view.on_event(Input::Restarted, at(*ms)),
                Step::Ping(ms, i) => {
                    answered.insert(ns[*i].peer.to_string(), at(*ms).mono);
                    Vec::new()
                }
                Step::Observe(ms, list) => {
                    let observed = list
                        .iter()
                        .map(|&(i, liveness, heartbeat, vals)| ObservedNode {
                            id: ns[i].id.clone(),
                            heartbeat,
                            values: signed
                                .entry((i, vals_name(vals)))
                                .or_insert_with(|| gossiped(&ns[i], vals, T0_MS + ms))
                                .clone(),
                            liveness,
                            timeout: Some(Duration::from_secs(8)),
                        })
                        .collect();
                    view.on_event(
                        Input::Observed {
                            nodes: observed,
                            answered: answered.clone(),
                        },
                        at(*ms),
                    )
                }
            };
            for a in actions {
                match a {
                    Action::SetMembers(m) => last_members = m,
                    Action::Emit(e) => events.push(e),
                    Action::Count(c) => counts.push(c),
                    Action::Unadmitted(n) => last_unadmitted = Some(n),
                    Action::Learn { .. } => {}
                }
            }
        }
        let index = |peer: &str| ns.iter().position(|n| n.peer.to_string() == peer);
        let members: Vec<(usize, MemberStatus)> = last_members
            .iter()
            .filter_map(|m| index(&m.peer_id).map(|i| (i, m.status)))
            .collect();
        let mut want = case.members.clone();
        let mut got = members.clone();
        want.sort_by_key(|m| m.0);
        got.sort_by_key(|m| m.0);
        assert_eq!(got, want, "{}: members", case.name);
        let seen: Vec<(&str, usize)> = events
            .iter()
            .filter_map(|e| {
                let (kind, peer) = match e {
                    MembershipEvent::Joined(m) => ("joined", m.peer_id.as_str()),
                    MembershipEvent::Dead(m) => ("dead", m.peer_id.as_str()),
                    MembershipEvent::Recovered(m) => ("recovered", m.peer_id.as_str()),
                    MembershipEvent::Left(m) => ("left", m.peer_id.as_str()),
                    MembershipEvent::Removed { peer_id } => ("removed", peer_id.as_str()),
                };
                index(peer).map(|i| (kind, i))
            })
            .collect();
        assert_eq!(seen, case.events, "{}: events", case.name);
        for c in &case.counts {
            assert!(counts.contains(c), "{}: no {c:?} in {counts:?}", case.name);
        }
        assert_eq!(
            last_unadmitted,
            Some(case.unadmitted),
            "{}: unadmitted",
            case.name
        );
    }

    fn vals_name(v: Vals) -> &'static str {
        match v {
            Vals::Good => "good",
            Vals::NoToken => "no_token",
            Vals::Expired => "expired",
            Vals::Untrusted => "untrusted",
            Vals::WrongGeneration => "wrong_generation",
            Vals::Leaving => "leaving",
            Vals::Stale => "stale",
        }
    }

    use Liveness::{Dead, Live, Unjudged};
    use MemberStatus::{Alive, Left, Suspect};
    use Step::{Observe, Ping, Restart, Tick};

    fn me() -> (usize, Liveness, u64, Vals) {
        (0, Live, 1, Vals::Good)
    }

    #[test]
    fn the_view_decides_membership_status_and_events() {
        let cases = vec![
            Case {
                name: "an admitted live peer joins",
                steps: vec![Observe(0, vec![me(), (1, Live, 1, Vals::Good)])],
                members: vec![(0, Alive), (1, Alive)],
                events: vec![("joined", 1)],
                counts: vec![Count::ValueAccepted],
                unadmitted: 0,
            },
            Case {
                name: "no token, an expired one, or one of an untrusted fleet: not a member",
                steps: vec![Observe(
                    0,
                    vec![
                        me(),
                        (1, Live, 1, Vals::NoToken),
                        (2, Live, 1, Vals::Expired),
                        (3, Live, 1, Vals::Untrusted),
                    ],
                )],
                members: vec![(0, Alive)],
                events: vec![],
                counts: vec![],
                unadmitted: 3,
            },
            Case {
                name: "an identity signed for another generation is refused, and counted once",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::WrongGeneration)]),
                    Observe(1000, vec![me(), (1, Live, 2, Vals::WrongGeneration)]),
                ],
                members: vec![(0, Alive)],
                events: vec![],
                counts: vec![Count::Rejected(Rejected::WrongIdentity)],
                unadmitted: 1,
            },
            Case {
                name: "values signed longer ago than their maximum age are stale",
                steps: vec![Observe(0, vec![me(), (1, Live, 1, Vals::Stale)])],
                members: vec![(0, Alive)],
                events: vec![],
                counts: vec![Count::Rejected(Rejected::Stale)],
                unadmitted: 1,
            },
            Case {
                name: "a member the detector judges dead is dead",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(5000, vec![me(), (1, Dead, 1, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, MemberStatus::Dead)],
                events: vec![("joined", 1), ("dead", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "silent for more than half the detector's timeout: suspect, no event",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(4500, vec![me(), (1, Live, 1, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, Suspect)],
                events: vec![("joined", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "a peer that answered a ping recently stays suspect when judged dead",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Ping(4000, 1),
                    Observe(5000, vec![me(), (1, Dead, 1, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, Suspect)],
                events: vec![("joined", 1)],
                counts: vec![Count::HeldVerdict],
                unadmitted: 0,
            },
            Case {
                name: "a node whose own rounds run late doubts its verdicts",
                steps: vec![
                    Tick(0),
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    // The next round comes 3 s late (the limit is 0.9 s).
                    Tick(4000),
                    Observe(4000, vec![me(), (1, Dead, 1, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, Suspect)],
                events: vec![("joined", 1)],
                counts: vec![Count::SelfDoubt, Count::HeldVerdict],
                unadmitted: 0,
            },
            Case {
                name: "once its doubt has passed, the verdict stands",
                steps: vec![
                    Tick(0),
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Tick(4000),
                    Tick(5000),
                    Observe(15_000, vec![me(), (1, Dead, 1, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, MemberStatus::Dead)],
                events: vec![("joined", 1), ("dead", 1)],
                counts: vec![Count::SelfDoubt],
                unadmitted: 0,
            },
            Case {
                name: "a node judged dead on arrival is listed only after a while, without events",
                steps: vec![
                    Observe(0, vec![me(), (1, Dead, 0, Vals::Good)]),
                    Observe(5000, vec![me(), (1, Dead, 0, Vals::Good)]),
                    Observe(11_000, vec![me(), (1, Dead, 0, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, MemberStatus::Dead)],
                events: vec![],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "not judged yet: not listed",
                steps: vec![Observe(0, vec![me(), (1, Unjudged, 0, Vals::Good)])],
                members: vec![(0, Alive)],
                events: vec![],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "a member announcing departure has left",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(1000, vec![me(), (1, Live, 2, Vals::Leaving)]),
                ],
                members: vec![(0, Alive), (1, Left)],
                events: vec![("joined", 1), ("left", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "a dead member that beats again has recovered",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(5000, vec![me(), (1, Dead, 1, Vals::Good)]),
                    Observe(6000, vec![me(), (1, Live, 2, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, Alive)],
                events: vec![("joined", 1), ("dead", 1), ("recovered", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "a dead member that comes back through suspect has recovered",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(5000, vec![me(), (1, Dead, 1, Vals::Good)]),
                    // Live again, but not heard for more than half the timeout: suspect.
                    Observe(10_000, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(11_000, vec![me(), (1, Live, 2, Vals::Good)]),
                ],
                members: vec![(0, Alive), (1, Alive)],
                events: vec![("joined", 1), ("dead", 1), ("recovered", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "a member gone from chitchat is removed",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Observe(1000, vec![me()]),
                ],
                members: vec![(0, Alive)],
                events: vec![("joined", 1), ("removed", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "after chitchat restarted, missing members are kept, not removed",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Restart(1000),
                    Observe(2000, vec![me()]),
                ],
                members: vec![(0, Alive), (1, Alive)],
                events: vec![("joined", 1)],
                counts: vec![],
                unadmitted: 0,
            },
            Case {
                name: "the restart's grace ends: still missing members are removed",
                steps: vec![
                    Observe(0, vec![me(), (1, Live, 1, Vals::Good)]),
                    Restart(1000),
                    Observe(2000, vec![me()]),
                    Observe(32_000, vec![me()]),
                ],
                members: vec![(0, Alive)],
                events: vec![("joined", 1), ("removed", 1)],
                counts: vec![],
                unadmitted: 0,
            },
        ];
        for case in &cases {
            run(case);
        }
    }

    /// Seeded random histories (liveness, heartbeats, departures, restarts, pings, late rounds):
    /// whatever happens, a node without valid credentials is never listed, this node is always
    /// alive, no event is about this node or an outsider, every event matches how the member's
    /// status changed since the list before (dead only from another status, recovered only from dead
    /// or left, removed only when no longer listed), and the members set are the view's own list.
    #[test]
    fn random_histories_keep_the_views_invariants() {
        let ns = nodes(4);
        let good: Vec<Values> = (0..4)
            .map(|i| gossiped(&ns[i], Vals::Good, T0_MS))
            .collect();
        let leaving: Vec<Values> = (0..4)
            .map(|i| gossiped(&ns[i], Vals::Leaving, T0_MS + 1))
            .collect();
        let bad: Vec<Values> = [
            Vals::NoToken,
            Vals::Expired,
            Vals::Untrusted,
            Vals::WrongGeneration,
        ]
        .into_iter()
        .map(|v| gossiped(&ns[3], v, T0_MS))
        .collect();
        for seed in 0..100u64 {
            let mut rng = crate::sim::FuzzRng(seed);
            let config =
                MembershipConfig::new(FLEET.to_owned(), "10.0.0.1:7946".parse().expect("addr"));
            let trust = Trust::new(vec![FleetKey::from_seed([1; 32]).public()]);
            let mut view = View::new(&config, &ns[0].peer, trust);
            let start = Instant::now();
            // Node 3 never has valid credentials.
            let mut signed = good.clone();
            signed[3] = bad[rng.below(bad.len())].clone();
            let mut status: HashMap<String, MemberStatus> = HashMap::new();
            let mut down: HashSet<String> = HashSet::new();
            let mut answered = HashMap::new();
            let mut heartbeats = [1u64; 4];
            let mut left = [false; 4];
            let mut ms = 0;
            for _ in 0..60 {
                ms += 200 + rng.below(3000) as u64;
                let now = Now {
                    mono: start + Duration::from_millis(ms),
                    unix_ms: T0_MS + ms,
                };
                let actions = match rng.below(10) {
                    0 => view.on_event(Input::Tick, now),
                    1 => view.on_event(Input::Restarted, now),
                    2 => {
                        answered.insert(ns[1 + rng.below(3)].peer.to_string(), now.mono);
                        Vec::new()
                    }
                    _ => {
                        let mut nodes = vec![ObservedNode {
                            id: ns[0].id.clone(),
                            heartbeat: ms,
                            values: signed[0].clone(),
                            liveness: Live,
                            timeout: Some(Duration::from_secs(8)),
                        }];
                        for i in 1..4 {
                            if rng.below(8) == 0 {
                                continue; // gone from chitchat this round
                            }
                            if i < 3 && rng.below(20) == 0 {
                                left[i] = true;
                            }
                            let liveness = [Live, Live, Dead, Unjudged][rng.below(4)];
                            if liveness == Live {
                                heartbeats[i] += 1;
                            }
                            nodes.push(ObservedNode {
                                id: ns[i].id.clone(),
                                heartbeat: heartbeats[i],
                                values: if left[i] {
                                    leaving[i].clone()
                                } else {
                                    signed[i].clone()
                                },
                                liveness,
                                timeout: Some(Duration::from_secs(8)),
                            });
                        }
                        view.on_event(
                            Input::Observed {
                                nodes,
                                answered: answered.clone(),
                            },
                            now,
                        )
                    }
                };
                let mut events = Vec::new();
                for a in actions {
                    match a {
                        Action::Emit(e) => events.push(e),
                        Action::SetMembers(members) => {
                            for m in &members {
                                assert_ne!(
                                    m.peer_id,
                                    ns[3].peer.to_string(),
                                    "seed {seed}: unadmitted node listed"
                                );
                                if m.is_self {
                                    assert_eq!(m.status, Alive, "seed {seed}");
                                }
                            }
                            assert_eq!(members, view.members(), "seed {seed}");
                            // Every event says how the member's status changed since the last list.
                            for e in events.drain(..) {
                                let (peer, ok) = match &e {
                                    MembershipEvent::Joined(m) => {
                                        (m.peer_id.clone(), matches!(m.status, Alive | Suspect))
                                    }
                                    MembershipEvent::Dead(m) => (
                                        m.peer_id.clone(),
                                        status.get(&m.peer_id) != Some(&MemberStatus::Dead),
                                    ),
                                    MembershipEvent::Left(m) => {
                                        (m.peer_id.clone(), status.get(&m.peer_id) != Some(&Left))
                                    }
                                    // Down (listed dead or left) since it was last listed
                                    // alive, possibly through suspect.
                                    MembershipEvent::Recovered(m) => {
                                        (m.peer_id.clone(), down.contains(&m.peer_id))
                                    }
                                    MembershipEvent::Removed { peer_id } => (
                                        peer_id.clone(),
                                        !members.iter().any(|m| &m.peer_id == peer_id),
                                    ),
                                };
                                assert_ne!(
                                    peer,
                                    ns[0].peer.to_string(),
                                    "seed {seed}: an event about this node"
                                );
                                assert_ne!(
                                    peer,
                                    ns[3].peer.to_string(),
                                    "seed {seed}: an event about an outsider"
                                );
                                assert!(ok, "seed {seed}: {e:?} after {:?}", status.get(&peer));
                            }
                            status = members
                                .iter()
                                .map(|m| (m.peer_id.clone(), m.status))
                                .collect();
                            for m in &members {
                                match m.status {
                                    MemberStatus::Dead | Left => {
                                        down.insert(m.peer_id.clone());
                                    }
                                    Alive => {
                                        down.remove(&m.peer_id);
                                    }
                                    Suspect => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// A value replayed with a lower sequence number than one accepted is stale, and the last good
    /// value stays.
    #[test]
    fn a_rolled_back_value_is_stale_and_the_newer_one_stays() {
        let ns = nodes(2);
        let config =
            MembershipConfig::new(FLEET.to_owned(), "10.0.0.1:7946".parse().expect("addr"));
        let trust = Trust::new(vec![FleetKey::from_seed([1; 32]).public()]);
        let mut view = View::new(&config, &ns[0].peer, trust);
        let start = Instant::now();
        let now = |ms: u64| Now {
            mono: start + Duration::from_millis(ms),
            unix_ms: T0_MS + ms,
        };
        let mut values = gossiped(&ns[1], Vals::Good, T0_MS);
        let name = |n: &str, seq: u64| {
            let v = NodeValue::Placement(Placement {
                node_name: n.to_owned(),
                zone: None,
                labels: BTreeMap::new(),
            });
            let (k, s) = values::seal(&ns[1].keypair, FLEET, &v, seq, T0_MS);
            (k.to_owned(), s)
        };
        let observe = |view: &mut View, values: &[(String, String, u64)], ms| {
            let node = ObservedNode {
                id: ns[1].id.clone(),
                heartbeat: ms,
                values: values.to_vec(),
                liveness: Live,
                timeout: Some(Duration::from_secs(8)),
            };
            view.on_event(
                Input::Observed {
                    nodes: vec![node],
                    answered: HashMap::new(),
                },
                now(ms),
            )
        };
        let (k, s) = name("newer", u64::MAX - 1);
        values.push((k, s, u64::MAX - 1));
        observe(&mut view, &values, 1);
        // The same key at a higher chitchat version, signed with a lower sequence number.
        let (k, s) = name("older", 1);
        values.pop();
        values.push((k, s, u64::MAX));
        let actions = observe(&mut view, &values, 2);
        assert!(actions.contains(&Action::Count(Count::Rejected(Rejected::Stale))));
        assert_eq!(
            view.members()[0].node_name.as_deref(),
            Some("newer"),
            "the good value stays"
        );
    }
}

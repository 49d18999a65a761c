//! A deterministic fleet for the autonomy: five nodes, each running the real machines (its
//! `Autonomy`, its lease `Voter`, a lease `Proposer` per lease it asks for), over a simulated
//! network (a 100 ms tick, messages lost between nodes that are down or partitioned apart), with
//! a small move of its own around the lease (both serve, then the new one alone, then the move's
//! journal marked finished, each an assignment carrying the journal and taken by a majority of the
//! voters before the next). Scenarios (a partition, two predictions for a budget of one, the
//! coordinator killed mid-move, a flapping predictor, forged predictions, clock skew, shadow mode)
//! and seeded random histories run on it; a history checker asserts after every step:
//! - at most one node sends assignments for a (service, epoch);
//! - every assignment has a serving instance, and two consecutive ones of a service share one
//!   (no proxy that learns them in any order is left without a backend);
//! - at most `max_migrations` moves hold their lease at once;
//! - nothing is leased in shadow mode, and a minority partition never wins a lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    Action, Alarm, Autonomy, Case, Event, Member, Mode, MoveOutcome, Observed, ObservedInstance,
    Settings, Trigger, Unfinished, cases,
};
use crate::Machine;
use crate::lease::proposer::{self, Failure, Proposer, Want};
use crate::lease::voter::{self, Voter};
use crate::lease::wire::{Reply, Request};

const TICK: Duration = Duration::from_millis(100);
const LEASE: Duration = Duration::from_secs(6);
const HOLD_DOWN: Duration = Duration::from_secs(30);
/// How long after a node goes silent its peers declare it dead.
const DETECT: Duration = Duration::from_secs(3);
/// How long a new instance takes to be healthy, and each step of a move waits.
const STEP: Duration = Duration::from_secs(1);

fn name(i: usize) -> String {
    format!("n{i}")
}

fn index(name: &str) -> usize {
    name[1..].parse().expect("a node's name")
}

/// A service's assignment, as a node holds it.
#[derive(Clone, Debug, PartialEq)]
struct Assign {
    epoch: u64,
    seq: u64,
    /// The serving instances: (instance, node).
    serving: Vec<(String, usize)>,
    journal: Option<Journal>,
    from: usize,
}

#[derive(Clone, Debug, PartialEq)]
struct Journal {
    id: String,
    coordinator: usize,
    lease_id: u64,
    old: (String, usize),
    new: (String, usize),
    finished: bool,
}

/// A move this node coordinates.
#[derive(Clone, Debug)]
struct Move {
    case: Case,
    lease_id: u64,
    epoch: Option<u64>,
    journal: Journal,
    /// Assignments sent so far (0: leasing), and when the next step may go.
    step: u64,
    next_at: Duration,
    /// A takeover: it reads the journal from a majority once it holds the lease.
    takeover: bool,
}

#[derive(Debug)]
struct Node {
    up: bool,
    group: u8,
    /// Its clock's offset (clock skew: each machine sees its own time).
    skew: Duration,
    auto: Autonomy,
    voter: Voter,
    persisted: voter::VoterState,
    proposers: BTreeMap<u64, Proposer>,
    /// Leases held: lease id -> (service, epoch, until).
    held: BTreeMap<u64, (String, u64, Duration)>,
    moves: BTreeMap<String, Move>,
    assignments: BTreeMap<String, Assign>,
    incarnation: u64,
    next_lease: u64,
    /// When it last changed between up and down (for the others' failure detectors).
    changed_at: Duration,
    /// What the others last saw it run.
    published: Vec<ObservedInstance>,
    witnesses: Vec<Case>,
}

enum Msg {
    Lease {
        from: usize,
        to: usize,
        request: Request,
    },
    Reply {
        from: usize,
        to: usize,
        lease_id: u64,
        reply: Reply,
    },
}

/// What a scenario sets up.
#[derive(Clone, Debug)]
pub struct Setup {
    pub seed: u64,
    pub fleet_mode: Mode,
    pub max_migrations: u32,
    /// Each node's clock offset.
    pub skews: Vec<Duration>,
    /// The services, each with its one replica's node.
    pub services: Vec<(String, usize)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            seed: 1,
            fleet_mode: Mode::Act,
            max_migrations: 1,
            skews: vec![Duration::ZERO; 5],
            services: vec![("web".into(), 0), ("api".into(), 1)],
        }
    }
}

/// What a history did.
#[derive(Debug, Default)]
pub struct Tally {
    pub leases: u64,
    pub completed: BTreeMap<String, u64>,
    pub takeovers: u64,
    pub waiting: BTreeSet<String>,
    pub shadow: u64,
    pub refused: BTreeMap<String, u64>,
}

pub struct World {
    pub now: Duration,
    rng: StdRng,
    nodes: Vec<Node>,
    net: Vec<Msg>,
    timers: Vec<(Duration, usize, u64, u64, u64)>,
    setup: Setup,
    /// Alarms each node publishes (resource ids).
    pub alarms: Vec<BTreeSet<String>>,
    /// Per node: predictions about other nodes' instances (forged: ignored).
    pub forged: Vec<BTreeSet<String>>,
    /// Checker state: who sent each (service, epoch); the last assignment of each service.
    senders: BTreeMap<(String, u64), usize>,
    last: BTreeMap<String, Vec<(String, usize)>>,
    pub tally: Tally,
    /// Nodes that ever won a lease while in a minority partition.
    minority_wins: Vec<(usize, Duration)>,
}

impl World {
    pub fn new(setup: Setup) -> Self {
        let n = setup.skews.len();
        let nodes = (0..n)
            .map(|i| Node {
                up: true,
                group: 0,
                skew: setup.skews[i],
                auto: Autonomy::new(Settings::new(name(i))),
                voter: Voter::new(1, HOLD_DOWN),
                persisted: voter::VoterState::default(),
                proposers: BTreeMap::new(),
                held: BTreeMap::new(),
                moves: BTreeMap::new(),
                assignments: BTreeMap::new(),
                incarnation: 0,
                next_lease: 1,
                changed_at: Duration::ZERO,
                published: Vec::new(),
                witnesses: Vec::new(),
            })
            .collect();
        let mut w = Self {
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(setup.seed),
            nodes,
            net: Vec::new(),
            timers: Vec::new(),
            alarms: vec![BTreeSet::new(); n],
            forged: vec![BTreeSet::new(); n],
            senders: BTreeMap::new(),
            last: BTreeMap::new(),
            tally: Tally::default(),
            minority_wins: Vec::new(),
            setup,
        };
        // The initial placement, as an assignment every node holds (epoch 0).
        for (service, node) in w.setup.services.clone() {
            let a = Assign {
                epoch: 0,
                seq: 0,
                serving: vec![(format!("{service}-0"), node)],
                journal: None,
                from: node,
            };
            w.last.insert(service.clone(), a.serving.clone());
            for n in &mut w.nodes {
                n.assignments.insert(service.clone(), a.clone());
            }
        }
        w.publish_all();
        w
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && self.nodes[a].group == self.nodes[b].group
    }

    fn majority_side(&self, i: usize) -> bool {
        let reach = (0..self.nodes.len())
            .filter(|&j| self.connected(i, j))
            .count();
        reach > self.nodes.len() / 2
    }

    /// Splits the fleet: `minority` in group 1.
    pub fn partition(&mut self, minority: &[usize]) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.group = u8::from(minority.contains(&i));
            n.changed_at = self.now;
        }
    }

    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
            n.changed_at = self.now;
        }
    }

    /// Crashes a node: its machines' memory is lost; its voter keeps what it persisted.
    pub fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.changed_at = self.now;
        n.proposers.clear();
        n.held.clear();
        n.moves.clear();
        n.witnesses.clear();
        n.incarnation += 1;
    }

    pub fn restart(&mut self, i: usize) {
        let now = self.clock(i);
        let changed = self.now;
        let n = &mut self.nodes[i];
        n.up = true;
        n.changed_at = changed;
        n.auto = Autonomy::new(Settings::new(name(i)));
        n.voter = Voter::restore(n.persisted.clone(), 1, HOLD_DOWN, now);
    }

    /// Whether `i` sees `j` alive.
    fn sees_alive(&self, i: usize, j: usize) -> bool {
        i == j
            || self.connected(i, j)
            || self.now < self.nodes[j].changed_at.max(self.nodes[i].changed_at) + DETECT
    }

    fn publish_all(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let mut out: Vec<ObservedInstance> = Vec::new();
            for (service, a) in &self.nodes[i].assignments {
                for (inst, node) in &a.serving {
                    if *node == i {
                        out.push(ObservedInstance {
                            id: inst.clone(),
                            service: service.clone(),
                            slot: "0".into(),
                            serving: true,
                            healthy: true,
                            lease_epoch: a.epoch,
                        });
                    }
                }
            }
            self.nodes[i].published = out;
        }
    }

    /// Node `i`'s observation of the fleet.
    fn observe(&self, i: usize) -> (Vec<Member>, Vec<Case>, BTreeSet<String>) {
        let mut observed = Vec::new();
        for (j, n) in self.nodes.iter().enumerate() {
            let alive = self.sees_alive(i, j);
            let mut alarms: Vec<Alarm> = self.alarms[j]
                .iter()
                .chain(&self.forged[j])
                .map(|r| Alarm {
                    resource_id: r.clone(),
                    probability: 0.9,
                    threshold: 0.75,
                    eta_s: Some(30.0),
                })
                .collect();
            if !alive {
                alarms.clear();
            }
            observed.push(Observed {
                peer_id: name(j),
                node_name: name(j),
                alive,
                dead: !alive,
                starved: false,
                alarms,
                instances: n.published.clone(),
            });
        }
        // A node outside the fleet: it is in nobody's member list, whatever it claims.
        let unfinished: Vec<Unfinished> = self.nodes[i]
            .assignments
            .iter()
            .filter_map(|(service, a)| {
                let j = a.journal.as_ref().filter(|j| !j.finished)?;
                Some(Unfinished {
                    migration: j.id.clone(),
                    service: service.clone(),
                    instance: j.old.0.clone(),
                    from: name(j.old.1),
                    coordinator: name(j.coordinator),
                })
            })
            .collect();
        let cs = cases(
            &observed,
            &unfinished,
            self.setup.fleet_mode,
            &BTreeMap::new(),
        );
        let members = observed
            .iter()
            .map(|m| Member {
                peer_id: m.peer_id.clone(),
                alive: m.alive,
                healthy: m.alarms.is_empty(),
            })
            .collect();
        // A move seen going on: an unfinished journal whose coordinator is alive here.
        let moving = unfinished
            .iter()
            .filter(|u| u.coordinator != name(i) && self.sees_alive(i, index(&u.coordinator)))
            .map(|u| u.service.clone())
            .collect();
        (members, cs, moving)
    }

    fn clock(&self, i: usize) -> Duration {
        self.now + self.nodes[i].skew
    }

    fn run_autonomy(&mut self, i: usize, event: Event) {
        let now = self.clock(i);
        let actions = self.nodes[i].auto.on_event(event, now);
        for a in actions {
            match a {
                Action::Report(r) => {
                    if r.stage == super::Stage::Shadow {
                        self.tally.shadow += 1;
                    }
                    if r.stage == super::Stage::Waiting {
                        self.tally.waiting.insert(r.detail.clone());
                    }
                }
                Action::Witness { case, .. } => self.nodes[i].witnesses.push(case),
                Action::Migrate { case } => self.start_move(i, case, None),
                Action::Resume { case } => {
                    let Trigger::Orphaned { migration, .. } = &case.trigger else {
                        continue;
                    };
                    let journal = self.nodes[i]
                        .assignments
                        .get(&case.service)
                        .and_then(|a| a.journal.clone())
                        .filter(|j| j.id == *migration && !j.finished);
                    match journal {
                        Some(j) => {
                            self.tally.takeovers += 1;
                            self.start_move(i, case, Some(j));
                        }
                        None => self.outcome(
                            i,
                            &case,
                            MoveOutcome::Finished {
                                completed: true,
                                detail: "over already".into(),
                            },
                        ),
                    }
                }
            }
        }
    }

    fn outcome(&mut self, i: usize, case: &Case, outcome: MoveOutcome) {
        self.run_autonomy(
            i,
            Event::Outcome {
                service: case.service.clone(),
                instance: case.instance.clone(),
                outcome,
            },
        );
    }

    fn start_move(&mut self, i: usize, case: Case, takeover: Option<Journal>) {
        assert_ne!(
            self.setup.fleet_mode,
            Mode::Shadow,
            "a move asked for in shadow mode"
        );
        if self.nodes[i].moves.contains_key(&case.service) {
            return;
        }
        let lease_id = match &takeover {
            Some(j) => j.lease_id,
            None => {
                let n = &mut self.nodes[i];
                n.next_lease += 1;
                (u64::from(n.incarnation as u32) << 32 | n.next_lease) ^ ((i as u64) << 48)
            }
        };
        // The new instance goes to the first live node other than the failing one.
        let target = (0..self.nodes.len())
            .find(|&t| t != index(&case.node) && self.sees_alive(i, t) && self.nodes[t].up)
            .unwrap_or(i);
        let id = format!("{}-{}-{}", case.service, name(i), self.nodes[i].next_lease);
        let journal = takeover.clone().unwrap_or(Journal {
            id,
            coordinator: i,
            lease_id,
            old: (case.instance.clone(), index(&case.node)),
            new: (
                format!("{}-m{}", case.service, self.now.as_millis()),
                target,
            ),
            finished: false,
        });
        let want = Want {
            service: case.service.clone(),
            zone: None,
            duration: LEASE,
            lease_id,
            note: String::new(),
        };
        let settings = proposer::Settings {
            me: name(i),
            nonce: u64::from(self.nodes[i].incarnation as u32) + 1000 * i as u64,
            voters: (0..self.nodes.len()).map(name).collect(),
            config: 1,
            fleet_slots: self.setup.max_migrations,
            zone_slots: 1,
            reply_timeout: Duration::from_millis(400),
            attempts: 3,
        };
        let m = Move {
            case,
            lease_id,
            epoch: None,
            journal,
            step: 0,
            next_at: self.now,
            takeover: takeover.is_some(),
        };
        self.nodes[i].moves.insert(m.case.service.clone(), m);
        let p = Proposer::new(settings, want, 0);
        self.nodes[i].proposers.insert(lease_id, p);
        self.run_proposer(i, lease_id, proposer::Event::Start);
    }

    fn run_proposer(&mut self, i: usize, lease_id: u64, event: proposer::Event) {
        let now = self.clock(i);
        let Some(p) = self.nodes[i].proposers.get_mut(&lease_id) else {
            return;
        };
        let actions = p.on_event(event, now);
        let done = p.is_done();
        let service = self.nodes[i]
            .moves
            .values()
            .find(|m| m.lease_id == lease_id)
            .map(|m| m.case.service.clone());
        for a in actions {
            match a {
                proposer::Action::Send { to, request } => self.net.push(Msg::Lease {
                    from: i,
                    to: index(&to),
                    request,
                }),
                proposer::Action::Timer { at, id } => {
                    let inc = self.nodes[i].incarnation;
                    // The machine's time is the node's clock: due at `at - skew` world time.
                    let due = at.saturating_sub(self.nodes[i].skew);
                    self.timers.push((due, i, inc, lease_id, id));
                }
                proposer::Action::Acquired { epoch, until, .. } => {
                    self.tally.leases += 1;
                    if !self.majority_side(i) {
                        self.minority_wins.push((i, self.now));
                    }
                    let s = service.clone().unwrap_or_default();
                    // Held until then on the holder's clock: in world time, minus its skew.
                    let until = until.saturating_sub(self.nodes[i].skew);
                    self.nodes[i]
                        .held
                        .insert(lease_id, (s.clone(), epoch, until));
                    if let Some(m) = self.nodes[i].moves.get_mut(&s) {
                        m.epoch = Some(epoch);
                        m.next_at = self.now;
                    }
                    self.check_budget();
                    let case = self.nodes[i].moves.get(&s).map(|m| m.case.clone());
                    if let Some(c) = case {
                        self.outcome(i, &c, MoveOutcome::Started);
                    }
                }
                proposer::Action::Renewed { epoch, until } => {
                    let until = until.saturating_sub(self.nodes[i].skew);
                    if let Some(h) = self.nodes[i].held.get_mut(&lease_id) {
                        h.1 = epoch;
                        h.2 = until;
                    }
                    if let Some(m) = service
                        .as_ref()
                        .and_then(|s| self.nodes[i].moves.get_mut(s))
                    {
                        m.epoch = Some(epoch);
                    }
                }
                proposer::Action::Refused(f) => {
                    let kind = match &f {
                        Failure::Busy { .. } => "busy",
                        Failure::HoldDown { .. } => "hold_down",
                        Failure::Budget { .. } => "budget",
                        Failure::NoMajority { .. } => "no_majority",
                        other => panic!("refused: {other}"),
                    };
                    *self.tally.refused.entry(kind.into()).or_default() += 1;
                    if let Some(s) = &service
                        && let Some(m) = self.nodes[i].moves.remove(s)
                    {
                        self.outcome(
                            i,
                            &m.case,
                            MoveOutcome::Waiting {
                                reason: f.to_string(),
                            },
                        );
                    }
                }
                proposer::Action::Lost | proposer::Action::Released => {
                    self.nodes[i].held.remove(&lease_id);
                    if let Some(s) = &service
                        && let Some(m) = self.nodes[i].moves.remove(s)
                    {
                        // Lost mid-way: abandoned (the journal stays for a successor).
                        self.outcome(
                            i,
                            &m.case,
                            MoveOutcome::Finished {
                                completed: false,
                                detail: "lease lost".into(),
                            },
                        );
                    }
                }
            }
        }
        if done {
            self.nodes[i].proposers.remove(&lease_id);
            self.nodes[i].held.remove(&lease_id);
        }
    }

    fn check_budget(&self) {
        let holding = self
            .nodes
            .iter()
            .flat_map(|n| n.held.values())
            .filter(|h| h.2 > self.now)
            .count();
        assert!(
            holding <= self.setup.max_migrations as usize,
            "at {:?}: {holding} moves hold a lease, the budget is {}",
            self.now,
            self.setup.max_migrations
        );
    }

    /// Sends an assignment from `i`; returns whether a majority of the voters took it.
    fn assign(&mut self, i: usize, service: &str, a: Assign) -> bool {
        // The checker: one sender per (service, epoch); a serving instance in each; consecutive
        // ones share one.
        let sender = *self
            .senders
            .entry((service.to_owned(), a.epoch))
            .or_insert(i);
        assert_eq!(
            sender,
            i,
            "at {:?}: {} and {} both act on {service} under epoch {}",
            self.now,
            name(sender),
            name(i),
            a.epoch
        );
        assert!(
            !a.serving.is_empty(),
            "an assignment without a serving instance"
        );
        let serving = a.serving.clone();
        let mut took = 0;
        for j in 0..self.nodes.len() {
            if !self.connected(i, j) {
                continue;
            }
            let held = self.nodes[j].assignments.get(service);
            if held.is_none_or(|h| (a.epoch, a.seq) >= (h.epoch, h.seq)) {
                self.nodes[j]
                    .assignments
                    .insert(service.to_owned(), a.clone());
                took += 1;
            }
        }
        let majority = took > self.nodes.len() / 2;
        // The assignments a majority took, in order, always share a serving instance: the
        // service is never left without one, whichever of them a proxy follows.
        if majority {
            let last = self.last.get(service).cloned().unwrap_or_default();
            if serving != last {
                assert!(
                    serving.iter().any(|s| last.contains(s)),
                    "at {:?}: {service} went from {last:?} to {serving:?} with no instance serving in both",
                    self.now
                );
                self.last.insert(service.to_owned(), serving);
            }
        }
        majority
    }

    /// Moves each node's moves along.
    fn step_moves(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let services: Vec<String> = self.nodes[i].moves.keys().cloned().collect();
            for s in services {
                let Some(m) = self.nodes[i].moves.get(&s).cloned() else {
                    continue;
                };
                let Some(epoch) = m.epoch else { continue };
                if self.now < m.next_at {
                    continue;
                }
                let mut j = m.journal.clone();
                if m.takeover && m.step == 0 {
                    // Under the lease: the latest journal a majority holds.
                    let latest = (0..self.nodes.len())
                        .filter(|&v| self.connected(i, v))
                        .filter_map(|v| self.nodes[v].assignments.get(&s))
                        .max_by_key(|a| (a.epoch, a.seq))
                        .and_then(|a| a.journal.clone());
                    match latest.filter(|l| l.id == j.id) {
                        Some(l) if !l.finished => j = l,
                        _ => {
                            self.finish(i, &s, true);
                            continue;
                        }
                    }
                }
                let old_alive = self.nodes[j.old.1].up && self.connected(i, j.old.1);
                let (serving, finished) = match m.step {
                    0 => (vec![j.old.clone(), j.new.clone()], false),
                    1 => {
                        // Finish (the new one serves); a takeover whose new instance's node is
                        // gone rolls back to the old one if it lives.
                        if !self.nodes[j.new.1].up && old_alive {
                            (vec![j.old.clone()], false)
                        } else {
                            (vec![j.new.clone()], false)
                        }
                    }
                    _ => (self.last.get(&s).cloned().unwrap_or_default(), true),
                };
                j.finished = finished;
                j.coordinator = i;
                let a = Assign {
                    epoch,
                    seq: m.step + 1 + 10 * u64::from(m.takeover),
                    serving,
                    journal: Some(j.clone()),
                    from: i,
                };
                let ok = self.assign(i, &s, a);
                if let Some(mm) = self.nodes[i].moves.get_mut(&s) {
                    mm.journal = j;
                    if ok {
                        mm.step += 1;
                        mm.next_at = self.now + STEP;
                    } else {
                        mm.next_at = self.now + STEP;
                    }
                }
                if ok && finished {
                    self.finish(i, &s, true);
                }
            }
        }
    }

    fn finish(&mut self, i: usize, service: &str, completed: bool) {
        let Some(m) = self.nodes[i].moves.remove(service) else {
            return;
        };
        *self.tally.completed.entry(service.to_owned()).or_default() += 1;
        self.outcome(
            i,
            &m.case,
            MoveOutcome::Finished {
                completed,
                detail: "done".into(),
            },
        );
        if self.nodes[i].proposers.contains_key(&m.lease_id) {
            self.run_proposer(i, m.lease_id, proposer::Event::Release { moved: true });
        }
    }

    fn deliver(&mut self) {
        let msgs = std::mem::take(&mut self.net);
        for msg in msgs {
            match msg {
                Msg::Lease { from, to, request } => {
                    if !self.connected(from, to) || self.rng.random_bool(0.02) {
                        continue;
                    }
                    let lease_id = match &request {
                        Request::Prepare { ballot, .. } | Request::Propose { ballot, .. } => {
                            ballot.lease_id
                        }
                        Request::Release { lease_id, .. } => *lease_id,
                    };
                    let now = self.clock(to);
                    let actions = self.nodes[to].voter.on_event(
                        voter::Event::Request {
                            from: name(from),
                            id: 0,
                            request,
                        },
                        now,
                    );
                    for a in actions {
                        match a {
                            voter::Action::Persist(s) => self.nodes[to].persisted = s,
                            voter::Action::Reply { reply, .. } => self.net.push(Msg::Reply {
                                from: to,
                                to: from,
                                lease_id,
                                reply,
                            }),
                        }
                    }
                }
                Msg::Reply {
                    from,
                    to,
                    lease_id,
                    reply,
                } => {
                    if !self.connected(from, to) {
                        continue;
                    }
                    self.run_proposer(
                        to,
                        lease_id,
                        proposer::Event::Reply {
                            from: name(from),
                            reply,
                        },
                    );
                }
            }
        }
    }

    /// One tick of the world.
    pub fn tick(&mut self) {
        self.now += TICK;
        self.deliver();
        self.timers.sort_by_key(|t| t.0);
        while let Some(&(at, i, inc, lease_id, id)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.remove(0);
            if self.nodes[i].up && self.nodes[i].incarnation == inc {
                self.run_proposer(i, lease_id, proposer::Event::Timer(id));
            }
        }
        self.step_moves();
        // Every 2 s, each node sends what it holds to the nodes it reaches (the agent resends
        // assignments to every peer, and to each newly admitted one).
        if (self.now.as_millis() / TICK.as_millis()).is_multiple_of(20) {
            for i in 0..self.nodes.len() {
                for j in 0..self.nodes.len() {
                    if i == j || !self.connected(i, j) {
                        continue;
                    }
                    let held: Vec<(String, Assign)> = self.nodes[i]
                        .assignments
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    for (service, a) in held {
                        let mine = self.nodes[j].assignments.get(&service);
                        if mine.is_none_or(|h| (a.epoch, a.seq) > (h.epoch, h.seq)) {
                            self.nodes[j].assignments.insert(service, a);
                        }
                    }
                }
            }
        }
        self.publish_all();
        // Witnesses answer (they agree: the scenarios' predictions are real ones).
        for i in 0..self.nodes.len() {
            let asked = std::mem::take(&mut self.nodes[i].witnesses);
            for case in asked {
                self.run_autonomy(
                    i,
                    Event::Witnessed {
                        service: case.service,
                        instance: case.instance,
                        agrees: true,
                        evidence: "its trend crosses here too".into(),
                    },
                );
            }
        }
        if (self.now.as_millis() / TICK.as_millis()).is_multiple_of(5) {
            for i in 0..self.nodes.len() {
                if !self.nodes[i].up {
                    continue;
                }
                let (members, cases, moving) = self.observe(i);
                self.run_autonomy(
                    i,
                    Event::Observe {
                        members,
                        cases,
                        moving,
                    },
                );
            }
        }
        assert!(
            self.minority_wins.is_empty(),
            "a minority partition won a lease: {:?}",
            self.minority_wins
        );
        self.check_budget();
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.tick();
        }
    }

    /// Where a service is served now (by the highest assignment any live node holds).
    pub fn serving(&self, service: &str) -> Vec<(String, usize)> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| n.assignments.get(service))
            .max_by_key(|a| (a.epoch, a.seq))
            .map(|a| a.serving.clone())
            .unwrap_or_default()
    }

    /// Which node coordinates a move of `service` now, if any.
    pub fn coordinator(&self, service: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.up && n
                .moves
                .get(service)
                .is_some_and(|m| m.epoch.is_some() && m.step > 0)
        })
    }

    pub fn senders(&self) -> &BTreeMap<(String, u64), usize> {
        &self.senders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn serving_nodes(w: &World, service: &str) -> Vec<usize> {
        w.serving(service).into_iter().map(|s| s.1).collect()
    }

    /// The predicted failure of web-0 on n0 moves it away, once, by one peer under a lease.
    #[test]
    fn a_prediction_moves_the_instance_once() {
        let mut w = World::new(Setup::default());
        w.alarms[0].insert("web-0".into());
        w.run_for(40 * S);
        assert_eq!(w.tally.completed.get("web"), Some(&1), "{:?}", w.tally);
        assert!(!serving_nodes(&w, "web").contains(&0));
        assert_eq!(w.tally.leases, 1);
    }

    /// A partition: n0 and n1 (a minority, web-0's node among them) against n2..n4 (api's
    /// alarm). The minority never wins a lease (checked every tick); the majority moves api, and
    /// moves web too once it declares n0 dead.
    #[test]
    fn a_minority_partition_never_acts_the_majority_does() {
        let mut w = World::new(Setup {
            services: vec![("web".into(), 0), ("api".into(), 2)],
            ..Setup::default()
        });
        w.alarms[0].insert("web-0".into());
        w.alarms[2].insert("api-0".into());
        w.partition(&[0, 1]);
        w.run_for(90 * S);
        assert!(
            w.tally.refused.get("no_majority").copied().unwrap_or(0) > 0,
            "{:?}",
            w.tally
        );
        assert_eq!(w.tally.completed.get("api"), Some(&1), "{:?}", w.tally);
        assert_eq!(w.tally.completed.get("web"), Some(&1), "{:?}", w.tally);
        for ((_, _), sender) in w.senders() {
            assert!(
                *sender >= 2,
                "the minority sent an assignment: {:?}",
                w.senders()
            );
        }
    }

    /// Two predictions, a budget of one: both moves happen, never at once, and the second waits
    /// visibly.
    #[test]
    fn two_predictions_compete_for_a_budget_of_one() {
        let mut w = World::new(Setup::default());
        w.alarms[0].insert("web-0".into());
        w.alarms[1].insert("api-0".into());
        w.run_for(80 * S);
        assert_eq!(w.tally.completed.get("web"), Some(&1), "{:?}", w.tally);
        assert_eq!(w.tally.completed.get("api"), Some(&1), "{:?}", w.tally);
        assert!(
            w.tally
                .waiting
                .iter()
                .any(|r| r.contains("budget") || r.contains("held")),
            "{:?}",
            w.tally
        );
    }

    /// The coordinator is killed mid-move: the move is taken over (from the journal a majority
    /// holds) and finished by another peer; the service is served throughout.
    #[test]
    fn a_killed_coordinator_is_taken_over() {
        let mut w = World::new(Setup::default());
        w.alarms[0].insert("web-0".into());
        let mut killed = None;
        for _ in 0..600 {
            w.tick();
            if killed.is_none()
                && let Some(c) = w.coordinator("web")
            {
                w.kill(c);
                killed = Some(c);
            }
            assert!(!w.serving("web").is_empty());
        }
        let killed = killed.expect("a coordinator started");
        assert!(w.tally.takeovers >= 1, "{:?}", w.tally);
        let sent: BTreeMap<u64, usize> = w
            .senders()
            .iter()
            .filter(|((s, e), _)| s == "web" && *e > 0)
            .map(|((_, e), n)| (*e, *n))
            .collect();
        // The killed coordinator sent first; a successor went on under a higher epoch.
        let first = sent.values().next().copied();
        assert_eq!(first, Some(killed), "{sent:?}");
        assert!(sent.values().any(|n| *n != killed), "{sent:?}");
        assert!(
            !serving_nodes(&w, "web").contains(&0),
            "moved off n0: {:?}",
            w.serving("web")
        );
    }

    /// A flapping predictor (2 s on, 1.5 s off) never moves anything.
    #[test]
    fn a_flapping_predictor_moves_nothing() {
        let mut w = World::new(Setup::default());
        for _ in 0..30 {
            w.alarms[0].insert("web-0".into());
            w.run_for(2 * S);
            w.alarms[0].clear();
            w.run_for(S + S / 2);
        }
        assert_eq!(w.tally.leases, 0, "{:?}", w.tally);
    }

    /// Predictions forged about another node's instance are ignored; so is anything from a node
    /// outside the fleet (it is in nobody's member list).
    #[test]
    fn forged_predictions_are_ignored() {
        let mut w = World::new(Setup::default());
        w.forged[3].insert("web-0".into());
        w.forged[4].insert("api-0".into());
        w.run_for(60 * S);
        assert_eq!(w.tally.leases, 0, "{:?}", w.tally);
    }

    /// Clock skew of hours between nodes changes nothing: the same move happens.
    #[test]
    fn clock_skew_changes_nothing() {
        let mut w = World::new(Setup {
            skews: vec![
                Duration::ZERO,
                Duration::from_secs(3 * 3600),
                Duration::from_secs(17),
                Duration::from_secs(9 * 3600),
                Duration::from_secs(1),
            ],
            ..Setup::default()
        });
        w.alarms[0].insert("web-0".into());
        w.run_for(40 * S);
        assert_eq!(w.tally.completed.get("web"), Some(&1), "{:?}", w.tally);
    }

    /// Shadow mode: decisions published, nothing leased (a lease asked for panics the world).
    #[test]
    fn shadow_mode_moves_nothing() {
        let mut w = World::new(Setup {
            fleet_mode: Mode::Shadow,
            ..Setup::default()
        });
        w.alarms[0].insert("web-0".into());
        w.alarms[1].insert("api-0".into());
        w.run_for(60 * S);
        assert_eq!(w.tally.leases, 0);
        assert_eq!(w.tally.shadow, 2, "{:?}", w.tally);
    }

    /// Seeded random histories: alarms come and go, nodes crash and come back, partitions form
    /// and heal; the checker runs after every tick.
    #[test]
    fn random_histories_keep_the_invariants() {
        let mut moved = 0;
        for seed in 0..24u64 {
            let mut w = World::new(Setup {
                seed,
                max_migrations: 1 + (seed % 2) as u32,
                ..Setup::default()
            });
            let mut rng = StdRng::seed_from_u64(seed ^ 0xa5a5);
            for _ in 0..150 {
                match rng.random_range(0..10) {
                    0 => {
                        let i = rng.random_range(0..5);
                        w.alarms[i].insert(format!("{}-0", ["web", "api"][rng.random_range(0..2)]));
                    }
                    1 => w.alarms[rng.random_range(0..5)].clear(),
                    2 => {
                        let i = rng.random_range(0..5);
                        if w.nodes.iter().filter(|n| n.up).count() > 3 {
                            w.kill(i);
                        }
                    }
                    3 => {
                        for i in 0..5 {
                            if !w.nodes[i].up {
                                w.restart(i);
                            }
                        }
                    }
                    4 => {
                        let a = rng.random_range(0..5);
                        let b = rng.random_range(0..5);
                        w.partition(&[a, b]);
                    }
                    5 => w.heal(),
                    _ => {}
                }
                for _ in 0..rng.random_range(5..30) {
                    w.tick();
                }
            }
            moved += w.tally.completed.values().sum::<u64>();
        }
        assert!(moved > 10, "the histories moved things: {moved}");
    }
}

//! Seeded random histories of voters and proposers over a network that loses, duplicates and
//! reorders messages, with proposers and voters that crash (a voter comes back from what it
//! persisted, a proposer with a new nonce and nothing else). After every step: no two holders of a
//! key at once, and every epoch won on a key above every earlier one.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::proposer::{self, Failure, Proposer, Settings, Want};
use super::voter::{self, Voter, VoterState};
use super::wire::{Reply, Request};
use crate::Machine;

const HOLD_DOWN: Duration = Duration::from_secs(2);
const SERVICES: [&str; 2] = ["web", "api"];
const ZONES: [&str; 2] = ["a", "b"];

enum Msg {
    ToVoter {
        from: usize,
        incarnation: u64,
        to: usize,
        request: Request,
    },
    ToProposer {
        from: usize,
        to: usize,
        incarnation: u64,
        reply: Reply,
    },
}

impl Clone for Msg {
    fn clone(&self) -> Self {
        match self {
            Msg::ToVoter {
                from,
                incarnation,
                to,
                request,
            } => Msg::ToVoter {
                from: *from,
                incarnation: *incarnation,
                to: *to,
                request: request.clone(),
            },
            Msg::ToProposer {
                from,
                to,
                incarnation,
                reply,
            } => Msg::ToProposer {
                from: *from,
                to: *to,
                incarnation: *incarnation,
                reply: reply.clone(),
            },
        }
    }
}

struct Node {
    machine: Option<Proposer>,
    incarnation: u64,
    leases: u64,
    /// The lease this node believes it holds: its keys, until when.
    holding: Option<(Vec<String>, Duration)>,
}

/// What a history did, to check it was not vacuous.
#[derive(Debug, Default)]
pub struct Tally {
    pub acquired: u64,
    pub renewed: u64,
    pub lost: u64,
    pub net: usize,
    pub refused: BTreeMap<String, u64>,
}

pub struct World {
    rng: StdRng,
    now: Duration,
    voters: Vec<Voter>,
    persisted: Vec<VoterState>,
    nodes: Vec<Node>,
    net: Vec<Msg>,
    timers: Vec<(Duration, usize, u64, u64)>,
    /// The highest epoch won on each key so far.
    epochs: BTreeMap<String, u64>,
    fleet_slots: u32,
    pub tally: Tally,
}

fn voter_name(i: usize) -> String {
    format!("v{i}")
}

fn node_name(i: usize) -> String {
    format!("p{i}")
}

impl World {
    pub fn new(seed: u64, voters: usize, nodes: usize, fleet_slots: u32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            now: Duration::ZERO,
            voters: (0..voters).map(|_| Voter::new(1, HOLD_DOWN)).collect(),
            persisted: vec![VoterState::default(); voters],
            nodes: (0..nodes)
                .map(|_| Node {
                    machine: None,
                    incarnation: 0,
                    leases: 0,
                    holding: None,
                })
                .collect(),
            net: Vec::new(),
            timers: Vec::new(),
            epochs: BTreeMap::new(),
            fleet_slots,
            tally: Tally::default(),
        }
    }

    fn settings(&self, node: usize) -> Settings {
        Settings {
            me: node_name(node),
            nonce: self.nodes[node].incarnation,
            voters: (0..self.voters.len()).map(voter_name).collect(),
            config: 1,
            fleet_slots: self.fleet_slots,
            zone_slots: 1,
            reply_timeout: Duration::from_millis(300),
            attempts: 4,
        }
    }

    fn check_acquired(&mut self, node: usize, epoch: u64, keys: &[String], until: Duration) {
        for (other, n) in self.nodes.iter().enumerate() {
            if other == node {
                continue;
            }
            if let Some((theirs, their_until)) = &n.holding
                && *their_until > self.now
            {
                let shared: Vec<&String> = keys.iter().filter(|k| theirs.contains(k)).collect();
                assert!(
                    shared.is_empty(),
                    "at {:?}: {} acquired {shared:?} (epoch {epoch}) while {} holds them until {their_until:?}",
                    self.now,
                    node_name(node),
                    node_name(other)
                );
            }
        }
        for k in keys {
            let last = self.epochs.entry(k.clone()).or_insert(0);
            assert!(
                epoch > *last,
                "at {:?}: epoch {epoch} on {k} is not above the last one won, {last}",
                self.now
            );
            *last = epoch;
        }
        self.nodes[node].holding = Some((keys.to_vec(), until));
    }

    fn run_proposer(&mut self, node: usize, event: proposer::Event) {
        let now = self.now;
        let Some(m) = self.nodes[node].machine.as_mut() else {
            return;
        };
        let actions = m.on_event(event, now);
        let done = m.is_done();
        let incarnation = self.nodes[node].incarnation;
        for a in actions {
            let a_is_lost = a == proposer::Action::Lost;
            match a {
                proposer::Action::Send { to, request } => {
                    let to = to[1..].parse().expect("a voter's name");
                    self.net.push(Msg::ToVoter {
                        from: node,
                        incarnation,
                        to,
                        request,
                    });
                }
                proposer::Action::Timer { at, id } => self.timers.push((at, node, incarnation, id)),
                proposer::Action::Acquired { epoch, until, keys } => {
                    self.tally.acquired += 1;
                    self.check_acquired(node, epoch, &keys, until);
                }
                proposer::Action::Renewed { epoch, until } => {
                    self.tally.renewed += 1;
                    let keys = self.nodes[node]
                        .holding
                        .as_ref()
                        .map(|h| h.0.clone())
                        .expect("renewed what it held");
                    self.check_acquired(node, epoch, &keys, until);
                }
                proposer::Action::Refused(f) => {
                    let name = match f {
                        Failure::Busy { .. } => "busy",
                        Failure::HoldDown { .. } => "hold_down",
                        Failure::Budget { .. } => "budget",
                        Failure::NoMajority { .. } => "no_majority",
                        Failure::Config { .. } => "config",
                        Failure::Unconfigured => "unconfigured",
                        Failure::Invalid(e) => panic!("a valid request refused as invalid: {e}"),
                    };
                    *self.tally.refused.entry(name.into()).or_default() += 1;
                }
                proposer::Action::Lost | proposer::Action::Released => {
                    if a_is_lost {
                        self.tally.lost += 1;
                    }
                    self.nodes[node].holding = None;
                }
            }
        }
        if done {
            self.nodes[node].machine = None;
            self.nodes[node].holding = None;
        }
    }

    fn run_voter(&mut self, v: usize, from: usize, incarnation: u64, request: Request) {
        let actions = self.voters[v].on_event(
            voter::Event::Request {
                from: node_name(from),
                id: 0,
                request,
            },
            self.now,
        );
        for a in actions {
            match a {
                voter::Action::Persist(s) => self.persisted[v] = s,
                voter::Action::Reply { reply, .. } => self.net.push(Msg::ToProposer {
                    from: v,
                    to: from,
                    incarnation,
                    reply,
                }),
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::ToVoter {
                from,
                incarnation,
                to,
                request,
            } => self.run_voter(to, from, incarnation, request),
            Msg::ToProposer {
                from,
                to,
                incarnation,
                reply,
            } => {
                if self.nodes[to].incarnation == incarnation {
                    self.run_proposer(
                        to,
                        proposer::Event::Reply {
                            from: voter_name(from),
                            reply,
                        },
                    );
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            self.timers.sort_by_key(|t| t.0);
            match self.timers.first() {
                Some(&(at, node, incarnation, id)) if at <= end => {
                    self.timers.remove(0);
                    self.now = self.now.max(at);
                    if self.nodes[node].incarnation == incarnation {
                        self.run_proposer(node, proposer::Event::Timer(id));
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn start(&mut self, node: usize) {
        if self.nodes[node].machine.is_some() {
            return;
        }
        let service = SERVICES[self.rng.random_range(0..SERVICES.len())];
        let zone = ZONES[self.rng.random_range(0..ZONES.len())];
        let duration = Duration::from_millis(self.rng.random_range(1000..3000));
        self.nodes[node].leases += 1;
        let want = Want {
            service: service.into(),
            zone: Some(zone.into()),
            duration,
            lease_id: self.nodes[node].leases,
            note: format!("move {service}"),
        };
        self.nodes[node].machine = Some(Proposer::new(self.settings(node), want, 0));
        self.run_proposer(node, proposer::Event::Start);
    }

    /// Delivers every message in the order sent, until none is left.
    pub fn settle(&mut self) {
        while !self.net.is_empty() {
            let m = self.net.remove(0);
            self.deliver(m);
        }
    }

    /// One random step, with faults at the given rate (0 for a perfect network).
    pub fn step(&mut self, faults: bool) {
        let r = self.rng.random_range(0..100);
        let pending = self.net.len();
        match r {
            0..55 if pending > 0 => {
                // One of the oldest few, not always the oldest: reordering.
                let i = if faults {
                    self.rng.random_range(0..pending.min(4))
                } else {
                    0
                };
                let m = self.net.remove(i);
                self.deliver(m);
            }
            55..59 if faults && pending > 0 => {
                let i = self.rng.random_range(0..pending);
                let m = self.net[i].clone();
                self.net.push(m);
            }
            59..64 if faults && pending > 0 => {
                let i = self.rng.random_range(0..pending);
                self.net.remove(i);
            }
            64..84 => {
                let by = Duration::from_millis(self.rng.random_range(1..40));
                self.advance(by);
            }
            84..87 => {
                let node = self.rng.random_range(0..self.nodes.len());
                self.start(node);
            }
            87..88 => {
                let node = self.rng.random_range(0..self.nodes.len());
                let moved = self.rng.random_bool(0.5);
                self.run_proposer(node, proposer::Event::Release { moved });
            }
            88..90 if faults && self.rng.random_bool(0.2) => {
                // A proposer crashes and comes back with nothing: what it held ends with it.
                let node = self.rng.random_range(0..self.nodes.len());
                let n = &mut self.nodes[node];
                n.machine = None;
                n.holding = None;
                n.incarnation += 1;
            }
            90..92 if faults && self.rng.random_bool(0.5) => {
                // A voter crashes and comes back from what it persisted.
                let v = self.rng.random_range(0..self.voters.len());
                self.voters[v] = Voter::restore(self.persisted[v].clone(), 1, HOLD_DOWN, self.now);
            }
            _ => {
                let by = Duration::from_millis(self.rng.random_range(1..5));
                self.advance(by);
            }
        }
    }
}

#[test]
fn no_two_holders_and_rising_epochs_under_loss_duplication_reordering_and_crashes() {
    let mut total = Tally::default();
    for seed in 0..60 {
        for (voters, slots) in [(3, 1), (5, 1), (5, 2)] {
            let mut w = World::new(seed, voters, 3, slots);
            for _ in 0..3_000 {
                w.step(true);
            }
            total.acquired += w.tally.acquired;
            total.renewed += w.tally.renewed;
            total.lost += w.tally.lost;
            total.net = total.net.max(w.net.len());
            for (k, v) in w.tally.refused {
                *total.refused.entry(k).or_default() += v;
            }
        }
    }
    // Not vacuous: leases were won, renewed and refused for each reason a history can give.
    assert!(total.acquired > 300, "{total:?}");
    assert!(total.renewed > 30, "{total:?}");
    for reason in ["busy", "hold_down", "budget", "no_majority"] {
        assert!(
            total.refused.get(reason).copied().unwrap_or(0) > 0,
            "{total:?}"
        );
    }
}

#[test]
fn on_a_perfect_network_every_lease_asked_of_a_free_fleet_is_won() {
    for seed in 0..20 {
        let mut w = World::new(seed, 3, 1, 1);
        w.start(0);
        w.settle();
        assert_eq!(w.tally.acquired, 1, "seed {seed}: {:?}", w.tally);
    }
}

#[test]
fn on_a_perfect_network_a_held_lease_is_renewed_until_released() {
    for seed in 0..20 {
        let mut w = World::new(seed, 3, 1, 1);
        w.start(0);
        for _ in 0..600 {
            w.settle();
            w.advance(Duration::from_millis(10));
        }
        assert_eq!(w.tally.acquired, 1, "seed {seed}: {:?}", w.tally);
        assert!(w.tally.renewed >= 3, "seed {seed}: {:?}", w.tally);
        assert_eq!(w.tally.lost, 0, "seed {seed}: {:?}", w.tally);
        w.run_proposer(0, proposer::Event::Release { moved: true });
        assert!(w.nodes[0].holding.is_none());
    }
}

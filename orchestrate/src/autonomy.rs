//! Autonomy: which resource predicted to fail (or node declared dead) leads to a move, and which
//! peer carries it out, as a state machine every node runs on what it observes.
//!
//! - **Cases.** Each tick the node's observation of the fleet ([`Observation`]) gives the cases
//!   to consider ([`cases`]): a serving instance whose node publishes an alarm for it
//!   ([`Trigger::Predicted`]; the alarm must come from the node that runs the instance), a serving
//!   instance on a node the failure detector declared dead ([`Trigger::NodeDead`]), and a move
//!   whose coordinator died mid-way ([`Trigger::Orphaned`], from the journal replicated to the
//!   voters with each assignment).
//! - **Election.** For each case the coordinator is the top of a rendezvous hash of
//!   `(service, epoch)` over the live, healthy members other than the failing node (and other than
//!   a dead coordinator), `epoch` being the highest fencing epoch any instance of the service
//!   serves under (so every node computes the same order, and it changes with each move). The
//!   member ranked `k` acts only once `k * takeover` has passed since the case appeared and since
//!   a move of the service was last seen going on: if the first has not started, the next takes
//!   over. Nothing here makes two coordinators impossible; the lease does (a move starts only
//!   under a lease from a majority of the voters), so the election only keeps them from racing.
//! - **Second witness.** A predicted failure is acted on only after the elected node agrees with
//!   independent evidence ([`Action::Witness`]: its own engine on the trend the failing node
//!   publishes, its liveness view of the node, or the round trip it measures). A node that is
//!   starved (its own loop running late) discounts its own predictions: its alarms need evidence
//!   that does not come from its own data (liveness or round trip). A node declared dead needs no
//!   other witness: the failure detector's verdict already is one (it needs a peer's view).
//! - **Damping.** An alarm must hold for `dwell` before anyone acts on it (a flapping predictor
//!   does not trigger); the voters' hold-down refuses a second move of a service within its time;
//!   a move refused for the budget waits and says so ([`Action::Report`] with
//!   [`Stage::Waiting`]), and is asked for again every `retry`.
//! - **Modes.** In `shadow` (per fleet or per service) the elected node decides, takes its
//!   witness, and publishes what it would do ([`Stage::Shadow`]); it asks for no lease and moves
//!   nothing.
//!
//! Every timing is on the node's own monotonic clock (when it first saw a case, when it last saw
//! a move): no wall-clock time from another node is compared with this one's, so clock skew
//! between nodes changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Machine;

/// Whether augur acts on its decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide and move.
    #[default]
    Act,
    /// Decide, log and publish what would be done; move nothing.
    Shadow,
}

impl Mode {
    /// The stricter of a fleet's and a service's mode.
    pub fn combine(self, other: Mode) -> Mode {
        if self == Mode::Shadow || other == Mode::Shadow {
            Mode::Shadow
        } else {
            Mode::Act
        }
    }
}

/// The election's and damping's settings (the defaults are what the agent runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// This node (its peer id).
    pub me: String,
    /// An alarm must hold this long before anyone acts on it.
    #[serde(with = "humantime_serde")]
    pub dwell: Duration,
    /// How long each member of the election's order gives those before it.
    #[serde(with = "humantime_serde")]
    pub takeover: Duration,
    /// A move refused (budget, busy, hold-down, no majority) is asked for again after this.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// A witness that disagreed (or did not answer) is asked again after this.
    #[serde(with = "humantime_serde")]
    pub recheck: Duration,
}

impl Settings {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            dwell: Duration::from_secs(3),
            takeover: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            recheck: Duration::from_secs(5),
        }
    }
}

/// Why a case exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "trigger", rename_all = "snake_case")]
pub enum Trigger {
    /// The instance's node predicts it fails within the horizon.
    Predicted {
        /// The resource predicted to fail: the instance, or its node's host resource.
        resource: String,
        probability: f64,
        threshold: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_s: Option<f64>,
        /// The node was starved when it published it: only independent evidence confirms it.
        starved: bool,
    },
    /// The failure detector declared the instance's node dead.
    NodeDead,
    /// A move whose coordinator is dead, unfinished in the journal the voters hold.
    Orphaned {
        migration: String,
        coordinator: String,
    },
}

impl Trigger {
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Predicted { .. } => "predicted",
            Trigger::NodeDead => "node_dead",
            Trigger::Orphaned { .. } => "orphaned",
        }
    }
}

/// One thing that may need a move: the serving `instance` of `service` on `node`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub service: String,
    pub instance: String,
    /// The failing node (its peer id).
    pub node: String,
    pub node_name: String,
    /// The service's epoch: the highest fencing epoch its instances serve under.
    pub epoch: u64,
    pub mode: Mode,
    #[serde(flatten)]
    pub trigger: Trigger,
}

impl Case {
    fn key(&self) -> (String, String) {
        (self.service.clone(), self.instance.clone())
    }
}

/// A member as the election sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub peer_id: String,
    /// Alive by the failure detector (not suspect, dead or gone).
    pub alive: bool,
    /// Not starved and predicting no failure of its own.
    pub healthy: bool,
}

/// Where a move stands, as the executor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Under way (the lease granted).
    Started,
    /// Not started now: the budget is spent, the service is held or in its hold-down, no majority
    /// answered, or no node can take it. Asked for again after `retry`.
    Waiting { reason: String },
    /// Over: `completed`, or rolled back / abandoned (asked for again after `takeover`).
    Finished { completed: bool, detail: String },
}

#[derive(Clone, Debug)]
pub enum Event {
    /// What this node sees now (each tick): the members, the cases, and the services a move of
    /// which was seen going on (a migration step published, or a lease on it open).
    Observe {
        members: Vec<Member>,
        cases: Vec<Case>,
        moving: BTreeSet<String>,
    },
    /// The answer to [`Action::Witness`].
    Witnessed {
        service: String,
        instance: String,
        agrees: bool,
        evidence: String,
    },
    /// What became of [`Action::Migrate`] or [`Action::Resume`].
    Outcome {
        service: String,
        instance: String,
        outcome: MoveOutcome,
    },
}

/// Where a case stands on this node, for events and the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Another member is ahead in the election order (its turn has not passed).
    Standby,
    /// This node is the coordinator (first in the order, or taking over).
    Elected,
    /// The witness was asked.
    Witnessing,
    /// The witness agreed.
    Confirmed,
    /// The witness did not agree: nothing is done, it is asked again later.
    Unconfirmed,
    /// Shadow mode: what would be done was published; nothing moves.
    Shadow,
    /// The move was asked for.
    Moving,
    /// The move cannot start now (budget, busy, hold-down, no majority): waiting.
    Waiting,
    /// The move is over.
    Done,
}

/// A decision or a change of stage, published as a fleet event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub case: Case,
    pub stage: Stage,
    /// This node's rank in the election order (0: first).
    pub rank: usize,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Check the case with evidence of this node's own: `independent` asks for evidence that
    /// does not come from the failing node's data (liveness, round trip).
    Witness { case: Case, independent: bool },
    /// Move the instance off its node, under a lease.
    Migrate { case: Case },
    /// Take over the orphaned move (its lease, as its successor) and finish or undo it.
    Resume { case: Case },
    /// Publish a decision.
    Report(Report),
}

#[derive(Clone, Debug, PartialEq)]
enum Witness {
    None,
    Asked(Duration),
    Agreed,
    Disagreed(Duration),
}

#[derive(Clone, Debug, PartialEq)]
enum Act {
    Idle,
    Asked,
    Running,
    Waiting { until: Duration, reason: String },
    Done,
}

#[derive(Clone, Debug)]
struct State {
    case: Case,
    first_seen: Duration,
    last_moving: Option<Duration>,
    witness: Witness,
    act: Act,
    stage: Stage,
    rank: usize,
    /// The last reason a move had to wait, reported once until it changes.
    last_wait: Option<String>,
}

/// One node's autonomy.
#[derive(Debug)]
pub struct Autonomy {
    settings: Settings,
    states: BTreeMap<(String, String), State>,
}

/// The rendezvous order of `candidates` for `(service, epoch)`: highest weight first, ties (never
/// in practice) by peer id. A stable hash (FNV-1a, then a 64-bit finaliser): nodes of different
/// builds compute the same order.
pub fn rendezvous<'a>(service: &str, epoch: u64, candidates: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<(u64, &str)> = candidates
        .iter()
        .map(|c| (weight(service, epoch, c), *c))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.dedup_by(|a, b| a.1 == b.1);
    v.into_iter().map(|(_, c)| c).collect()
}

fn weight(service: &str, epoch: u64, peer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(service.as_bytes());
    eat(&epoch.to_be_bytes());
    eat(peer.as_bytes());
    // splitmix64's finaliser: FNV's low bits alone are poorly mixed.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Autonomy {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            states: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every case this node considers, with its stage and this node's rank.
    pub fn status(&self) -> Vec<Report> {
        self.states
            .values()
            .map(|s| Report {
                case: s.case.clone(),
                stage: s.stage,
                rank: s.rank,
                detail: match &s.act {
                    Act::Waiting { reason, .. } => reason.clone(),
                    _ => String::new(),
                },
            })
            .collect()
    }

    fn report(s: &mut State, stage: Stage, detail: impl Into<String>, out: &mut Vec<Action>) {
        let detail = detail.into();
        s.stage = stage;
        out.push(Action::Report(Report {
            case: s.case.clone(),
            stage,
            rank: s.rank,
            detail,
        }));
    }

    fn observe(
        &mut self,
        members: &[Member],
        cases: Vec<Case>,
        moving: &BTreeSet<String>,
        now: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let keys: BTreeSet<(String, String)> = cases.iter().map(Case::key).collect();
        // A case that went away while this node's move of it runs (the move itself makes the
        // instance stop serving) is kept until the move's outcome comes.
        self.states
            .retain(|k, s| keys.contains(k) || matches!(s.act, Act::Asked | Act::Running));
        let me = self.settings.me.clone();
        for case in cases {
            let s = self.states.entry(case.key()).or_insert_with(|| State {
                case: case.clone(),
                first_seen: now,
                last_moving: None,
                witness: Witness::None,
                act: Act::Idle,
                stage: Stage::Standby,
                rank: usize::MAX,
                last_wait: None,
            });
            // A new trigger for the same instance (a prediction, then its node's death) is a
            // new case: it needs no dwell or witness it did not need before, but keeps its age.
            if s.case.trigger.name() != case.trigger.name() {
                s.witness = Witness::None;
                if !matches!(s.act, Act::Running | Act::Asked) {
                    s.act = Act::Idle;
                }
            }
            s.case = case;
            let mine = matches!(s.act, Act::Asked | Act::Running);
            if moving.contains(&s.case.service) && !mine {
                s.last_moving = Some(now);
            }
            if s.act == Act::Done {
                continue;
            }
            let excluded = match &s.case.trigger {
                Trigger::Orphaned { coordinator, .. } => Some(coordinator.as_str()),
                _ => None,
            };
            let candidates: Vec<&str> = members
                .iter()
                .filter(|m| m.alive && m.healthy && m.peer_id != s.case.node)
                .filter(|m| Some(m.peer_id.as_str()) != excluded)
                .map(|m| m.peer_id.as_str())
                .collect();
            let order = rendezvous(&s.case.service, s.case.epoch, &candidates);
            let Some(rank) = order.iter().position(|p| *p == me) else {
                s.rank = usize::MAX;
                s.stage = Stage::Standby;
                continue;
            };
            s.rank = rank;
            let t = &self.settings;
            let dwell = match s.case.trigger {
                Trigger::Predicted { .. } => t.dwell,
                _ => Duration::ZERO,
            };
            let by_rank = t.takeover * u32::try_from(rank).unwrap_or(u32::MAX);
            let mut turn = s.first_seen + dwell + by_rank;
            if let Some(m) = s.last_moving {
                turn = turn.max(m + t.takeover + by_rank);
            }
            if now < turn || mine {
                if !mine && s.stage != Stage::Standby {
                    s.stage = Stage::Standby;
                }
                continue;
            }
            if s.stage == Stage::Standby {
                let detail = if rank == 0 {
                    "first in the election order".to_owned()
                } else {
                    format!("taking over: the {rank} before it did not start")
                };
                Self::report(s, Stage::Elected, detail, &mut out);
            }
            // The second witness, for predictions.
            if let Trigger::Predicted { starved, .. } = s.case.trigger {
                let ask = match s.witness {
                    Witness::None => true,
                    Witness::Asked(at) => now >= at + t.recheck * 2,
                    Witness::Disagreed(at) => now >= at + t.recheck,
                    Witness::Agreed => false,
                };
                if ask {
                    s.witness = Witness::Asked(now);
                    s.stage = Stage::Witnessing;
                    out.push(Action::Witness {
                        case: s.case.clone(),
                        independent: starved,
                    });
                }
                if s.witness != Witness::Agreed {
                    continue;
                }
            }
            match &s.act {
                Act::Idle => {}
                Act::Waiting { until, .. } if now >= *until => {}
                _ => continue,
            }
            if s.case.mode == Mode::Shadow {
                // Nothing is expected to start in shadow mode: the first in the order speaks,
                // the others do not take over.
                if rank > 0 {
                    s.stage = Stage::Standby;
                    continue;
                }
                let what = format!(
                    "would move {} off {} ({})",
                    s.case.instance,
                    s.case.node_name,
                    s.case.trigger.name()
                );
                Self::report(s, Stage::Shadow, what, &mut out);
                s.act = Act::Done;
                continue;
            }
            s.act = Act::Asked;
            s.stage = Stage::Moving;
            out.push(match s.case.trigger {
                Trigger::Orphaned { .. } => Action::Resume {
                    case: s.case.clone(),
                },
                _ => Action::Migrate {
                    case: s.case.clone(),
                },
            });
        }
        out
    }
}

impl Machine for Autonomy {
    type Event = Event;
    type Action = Action;
    type Now = Duration;

    fn on_event(&mut self, event: Event, now: Duration) -> Vec<Action> {
        match event {
            Event::Observe {
                members,
                cases,
                moving,
            } => self.observe(&members, cases, &moving, now),
            Event::Witnessed {
                service,
                instance,
                agrees,
                evidence,
            } => {
                let mut out = Vec::new();
                let Some(s) = self.states.get_mut(&(service, instance)) else {
                    return out;
                };
                if !matches!(s.witness, Witness::Asked(_)) {
                    return out;
                }
                if agrees {
                    s.witness = Witness::Agreed;
                    Self::report(s, Stage::Confirmed, evidence, &mut out);
                } else {
                    s.witness = Witness::Disagreed(now);
                    Self::report(s, Stage::Unconfirmed, evidence, &mut out);
                }
                out
            }
            Event::Outcome {
                service,
                instance,
                outcome,
            } => {
                let mut out = Vec::new();
                let retry = self.settings.retry;
                let takeover = self.settings.takeover;
                let Some(s) = self.states.get_mut(&(service, instance)) else {
                    return out;
                };
                match outcome {
                    MoveOutcome::Started => {
                        s.act = Act::Running;
                        s.stage = Stage::Moving;
                        s.last_wait = None;
                    }
                    MoveOutcome::Waiting { reason } => {
                        let changed = s.last_wait.as_ref() != Some(&reason);
                        s.act = Act::Waiting {
                            until: now + retry,
                            reason: reason.clone(),
                        };
                        s.last_wait = Some(reason.clone());
                        if changed {
                            Self::report(s, Stage::Waiting, reason, &mut out);
                        } else {
                            s.stage = Stage::Waiting;
                        }
                    }
                    MoveOutcome::Finished { completed, detail } => {
                        if completed {
                            s.act = Act::Done;
                            Self::report(s, Stage::Done, detail, &mut out);
                        } else {
                            s.last_wait = Some(detail.clone());
                            // Rolled back or abandoned: the instance still serves where it was;
                            // asked for again after a takeover's time, if the case holds.
                            s.act = Act::Waiting {
                                until: now + takeover,
                                reason: detail.clone(),
                            };
                            s.witness = Witness::None;
                            Self::report(s, Stage::Waiting, detail, &mut out);
                        }
                    }
                }
                out
            }
        }
    }
}

/// A member as this node observes it, with what it publishes (the input of [`cases`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub peer_id: String,
    pub node_name: String,
    /// Alive by the failure detector.
    pub alive: bool,
    /// Declared dead by the failure detector, or left the fleet (not merely suspect).
    pub dead: bool,
    /// Starved (its own loop running late) when it last published its health.
    pub starved: bool,
    /// Its alarms: resources it predicts to fail.
    pub alarms: Vec<Alarm>,
    /// The instances it runs, as it published them.
    pub instances: Vec<ObservedInstance>,
}

/// A resource a node predicts to fail, as it publishes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub resource_id: String,
    pub probability: f64,
    pub threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

/// An instance as its node publishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    pub service: String,
    /// The slot it serves or stands by for.
    pub slot: String,
    /// Routed to (not a standby, not retiring).
    pub serving: bool,
    /// Passing its health checks.
    pub healthy: bool,
    pub lease_epoch: u64,
}

/// An unfinished move in the journal this node holds (replicated with each assignment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    pub migration: String,
    pub service: String,
    /// The instance it moves, and the node it moves it off (by name).
    pub instance: String,
    pub from: String,
    /// Its coordinator (peer id).
    pub coordinator: String,
}

/// The cases in `members`' published state, under the fleet's mode and each service's
/// (`modes`; a service not named runs in the fleet's). An alarm counts only for an instance its
/// own node publishes as serving (a node cannot raise an alarm on another node's instance); a
/// host alarm (the resource named as the node) counts for every serving instance on it. A
/// serving instance on a dead node is a case until another live node serves its slot.
pub fn cases(
    members: &[Observed],
    unfinished: &[Unfinished],
    fleet_mode: Mode,
    modes: &BTreeMap<String, Mode>,
) -> Vec<Case> {
    let epoch_of = |service: &str| {
        members
            .iter()
            .flat_map(|m| &m.instances)
            .filter(|i| i.service == service)
            .map(|i| i.lease_epoch)
            .max()
            .unwrap_or(0)
    };
    let mode_of =
        |service: &str| fleet_mode.combine(modes.get(service).copied().unwrap_or_default());
    // Of several claims to serve one slot (a node back from a partition still runs what it was
    // told before), the one under the highest epoch is the slot's (as the proxies route).
    let mut newest: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for i in members
        .iter()
        .filter(|m| m.alive || m.dead)
        .flat_map(|m| &m.instances)
        .filter(|i| i.serving)
    {
        let e = newest.entry((&i.service, &i.slot)).or_insert(0);
        *e = (*e).max(i.lease_epoch);
    }
    let current = |i: &ObservedInstance| {
        newest
            .get(&(i.service.as_str(), i.slot.as_str()))
            .is_none_or(|e| i.lease_epoch >= *e)
    };
    let mut out: BTreeMap<(String, String), Case> = BTreeMap::new();
    for m in members {
        for i in m.instances.iter().filter(|i| i.serving && current(i)) {
            let base = |trigger| Case {
                service: i.service.clone(),
                instance: i.id.clone(),
                node: m.peer_id.clone(),
                node_name: m.node_name.clone(),
                epoch: epoch_of(&i.service),
                mode: mode_of(&i.service),
                trigger,
            };
            if m.dead {
                // Unless another live node already serves its slot (placement replaced it).
                let replaced = members.iter().any(|o| {
                    o.alive
                        && o.instances.iter().any(|j| {
                            j.service == i.service && j.slot == i.slot && j.serving && j.healthy
                        })
                });
                if !replaced {
                    out.insert((i.service.clone(), i.id.clone()), base(Trigger::NodeDead));
                }
                continue;
            }
            if !m.alive {
                continue;
            }
            let alarm = m
                .alarms
                .iter()
                .filter(|a| a.resource_id == i.id || a.resource_id == m.node_name)
                .filter(|a| a.probability.is_finite() && a.probability >= a.threshold)
                .max_by(|a, b| a.probability.total_cmp(&b.probability));
            if let Some(a) = alarm {
                out.insert(
                    (i.service.clone(), i.id.clone()),
                    base(Trigger::Predicted {
                        resource: a.resource_id.clone(),
                        probability: a.probability,
                        threshold: a.threshold,
                        eta_s: a.eta_s,
                        starved: m.starved,
                    }),
                );
            }
        }
    }
    for u in unfinished {
        let coordinator_dead = members
            .iter()
            .find(|m| m.peer_id == u.coordinator)
            .is_none_or(|m| m.dead);
        if !coordinator_dead {
            continue;
        }
        let node = members
            .iter()
            .find(|m| m.node_name == u.from)
            .map_or_else(String::new, |m| m.peer_id.clone());
        out.insert(
            (u.service.clone(), u.instance.clone()),
            Case {
                service: u.service.clone(),
                instance: u.instance.clone(),
                node,
                node_name: u.from.clone(),
                epoch: epoch_of(&u.service),
                mode: mode_of(&u.service),
                trigger: Trigger::Orphaned {
                    migration: u.migration.clone(),
                    coordinator: u.coordinator.clone(),
                },
            },
        );
    }
    out.into_values().collect()
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

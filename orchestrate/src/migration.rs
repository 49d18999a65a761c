//! One migration as a state machine: the move of one slot of a service (the replica a proxy routes
//! to) from the instance that serves it to another, by one of three strategies, each step under the
//! lease's fencing epoch, each journaled before it is taken, each with a timeout, and every failure
//! before the old instance is stopped rolled back. The fleet is told what to run through the
//! service's *assignment* (which instance, on which node, holds which slot in which role); every
//! node's runtime runs its part of it, and every proxy routes each slot to its serving instance.
//!
//! The steps (each one assignment, then a wait):
//!
//! | step    | assignment (old, new)        | then waits for                                      |
//! |---------|------------------------------|-----------------------------------------------------|
//! | lease   | —                            | a majority's lease                                  |
//! | surge   | serving, standby             | the new instance healthy (`live`, `blue_green`: it  |
//! |         |                              | is started; `warm_standby`: it is the standby)      |
//! | soak    | serving, standby             | `blue_green` only: healthy for the whole soak       |
//! | shift   | serving, serving (preferred) | the proxies to learn it (propagation time)          |
//! | retire  | retiring, serving            | the old one's connections to drain (`blue_green`:   |
//! |         |                              | the rollback window, watching the error rate)       |
//! | stop    | —, serving                   | the assignment taken: done, lease released (moved)  |
//!
//! At no step is the slot without a serving instance: the new one serves before the old one
//! stops serving, and a rollback serves the old one again before the new one stops serving.
//! A failure in `surge` or `soak` drops the new instance; in `shift` or `retire` it first makes the
//! new one retire (the proxies go back to the old), waits for its connections, then drops it.
//! A migration whose agent restarts resumes from its journal: before `retire` it rolls back (the
//! new instance's state is unknown), from `retire` on it finishes (the new one was serving).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Machine;
use crate::spec::Strategy;

/// What an instance does for its slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Routed to (of two serving instances of one slot, the one under the higher epoch).
    #[default]
    Serving,
    /// Running, checked, not routed to (a warm standby, or a new instance before the shift).
    Standby,
    /// Running, not routed to, its open connections draining (or kept for a rollback).
    Retiring,
}

/// One instance in a service's assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The instance (unique in the service).
    pub instance: String,
    /// The node (its name) that runs it.
    pub node: String,
    /// The slot it serves or stands by for (`"0"`, `"1"`, ...; standbys `"standby-0"`, ...).
    pub slot: String,
    pub role: Role,
    /// The catalog version of the spec it runs (none: the version in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// How long each step may take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// For an assignment to be taken by the nodes concerned.
    #[serde(with = "humantime_serde")]
    pub assign: Duration,
    /// For the new instance to pass its health checks.
    #[serde(with = "humantime_serde")]
    pub healthy: Duration,
    /// For every proxy to learn an assignment (the mesh's propagation time).
    #[serde(with = "humantime_serde")]
    pub propagate: Duration,
    /// For a retired instance's connections to drain.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// `blue_green`: how long green must stay healthy before traffic moves to it.
    #[serde(with = "humantime_serde")]
    pub soak: Duration,
    /// `blue_green`: how long blue is kept for a rollback after the switch.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            assign: Duration::from_secs(10),
            healthy: Duration::from_secs(60),
            propagate: Duration::from_secs(3),
            drain: Duration::from_secs(5),
            soak: Duration::from_secs(10),
            window: Duration::from_secs(30),
        }
    }
}

/// What to move, decided before the lease is asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub service: String,
    pub strategy: Strategy,
    /// The instance serving the slot now.
    pub old: Entry,
    /// The instance to serve it: a new one on the target (`live`, `blue_green`), or the running
    /// standby (`warm_standby`). Its `slot` is the slot it will serve.
    pub new: Entry,
    /// The rest of the service's assignment, kept as it is.
    pub base: Vec<Entry>,
    /// `warm_standby`: the standby slot the promoted instance leaves (placement fills it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_slot: Option<String>,
    pub timeouts: Timeouts,
}

/// The steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Lease,
    Surge,
    Soak,
    Shift,
    Retire,
    Stop,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Lease => "lease",
            Step::Surge => "surge",
            Step::Soak => "soak",
            Step::Shift => "shift",
            Step::Retire => "retire",
            Step::Stop => "stop",
        }
    }
}

/// Where a migration is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Going forward: at `step`, its assignment sent (`assigned`: taken) or not yet.
    Forward {
        step: Step,
        assigned: bool,
    },
    /// Rolling back from `from` because of `reason`. When the new instance may have served:
    /// first both serve (`both`: the old one serves again before the new one stops, whatever
    /// order the proxies learn it in), then the new one retires, then it is dropped.
    RollingBack {
        from: Step,
        reason: String,
        dropped: bool,
        assigned: bool,
        #[serde(default)]
        both: bool,
    },
    /// Restarted: asking for the lease again before resuming (`resume_at`) or rolling back.
    Resuming {
        at: Step,
    },
    Finished(Outcome),
}

/// How a migration ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    /// Refused a lease (busy, hold-down, budget, no majority): nothing was done.
    Refused {
        reason: String,
    },
    /// A step failed; the old instance serves again and the new one is gone.
    RolledBack {
        step: Step,
        reason: String,
    },
    /// The lease was lost mid-way: this node stopped acting; the assignment is as it last was
    /// (every slot still served), for the next holder to finish or undo.
    Abandoned {
        step: Step,
        reason: String,
    },
}

/// What the migration is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start,
    LeaseGranted {
        epoch: u64,
    },
    LeaseRefused {
        reason: String,
    },
    LeaseLost,
    /// The assignment `seq` was taken (persisted by the nodes concerned), or could not be.
    Assigned {
        seq: u64,
    },
    AssignFailed {
        seq: u64,
        reason: String,
    },
    /// What the fleet says of an instance's health.
    Health {
        instance: String,
        healthy: bool,
    },
    /// `blue_green`'s rollback window: the error rate of requests to the new instance rose
    /// above the threshold (measured by the executor).
    ErrorRate {
        ratio: f64,
    },
    Timer(u64),
    /// The operator cancels: roll back (or, once stopping, finish).
    Cancel {
        reason: String,
    },
}

/// What the migration asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write the record before anything after it is done.
    Journal(Box<Record>),
    AcquireLease,
    ReleaseLease {
        moved: bool,
    },
    /// Make this the service's assignment, under the lease's epoch, as change `seq`.
    Assign {
        seq: u64,
        entries: Vec<Entry>,
    },
    Timer {
        at: Duration,
        id: u64,
    },
    Finished(Outcome),
}

/// Times a rollback's assignment is sent again before the migration gives up (abandoned: the
/// last assignment taken stays in force, every slot served).
pub const MAX_ROLLBACK_TRIES: u32 = 10;

/// Log entries a record keeps at most.
pub const MAX_LOG: usize = 64;

/// A step as it happened, for the journal and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: String,
    /// Since the migration started.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub note: String,
}

/// Everything the journal keeps of a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub plan: Plan,
    pub phase: Phase,
    /// The lease's epoch (0 before it is granted).
    pub epoch: u64,
    /// The last assignment change sent.
    pub seq: u64,
    pub log: Vec<StepLog>,
}

#[derive(Debug)]
pub struct Migration {
    record: Record,
    /// Since the migration started, on this run's clock.
    started: Duration,
    timer: u64,
    next_timer: u64,
    /// The new instance's last known health.
    healthy: bool,
    /// Times the current rollback assignment was sent again.
    rollback_tries: u32,
    /// Why it was resumed (a restart of its node, or a takeover by a peer), for its log.
    resumed: Resumed,
}

/// Why a migration is resumed from its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// Its coordinator's agent restarted.
    Restarted,
    /// Its coordinator died and the named peer took it over.
    TakenOver { by: String },
}

impl Resumed {
    fn at(&self, at: Step) -> String {
        match self {
            Resumed::Restarted => format!("the agent restarted at {}", at.as_str()),
            Resumed::TakenOver { by } => format!(
                "taken over by {by} at {} (its coordinator died)",
                at.as_str()
            ),
        }
    }

    fn mid_way(&self) -> String {
        match self {
            Resumed::Restarted => "the agent restarted mid-way".into(),
            Resumed::TakenOver { by } => {
                format!("its coordinator died mid-way; {by} took it over")
            }
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Resumed::Restarted => "restarted",
            Resumed::TakenOver { .. } => "taken over",
        }
    }
}

impl Migration {
    pub fn new(plan: Plan) -> Self {
        Self {
            record: Record {
                plan,
                phase: Phase::Forward {
                    step: Step::Lease,
                    assigned: false,
                },
                epoch: 0,
                seq: 0,
                log: Vec::new(),
            },
            started: Duration::ZERO,
            timer: 0,
            next_timer: 0,
            healthy: false,
            rollback_tries: 0,
            resumed: Resumed::Restarted,
        }
    }

    /// A migration from its journal, after a restart at `now`: it asks for its lease again, then
    /// rolls back (before `retire`) or finishes (from `retire` on). A finished one stays finished.
    pub fn resume(record: Record, now: Duration) -> (Self, Vec<Action>) {
        Self::resume_as(record, Resumed::Restarted, now)
    }

    /// [`Migration::resume`], saying why (a takeover by a peer reads differently in the log).
    pub fn resume_as(mut record: Record, why: Resumed, now: Duration) -> (Self, Vec<Action>) {
        let at = match &record.phase {
            Phase::Forward { step, .. } => Some(*step),
            Phase::RollingBack { from, .. } => Some((*from).min(Step::Shift)),
            Phase::Resuming { at } => Some(*at),
            Phase::Finished(_) => None,
        };
        let Some(at) = at else {
            let m = Self::with_record(record, now);
            return (m, Vec::new());
        };
        if at == Step::Lease {
            // Nothing was done: give up cleanly.
            let outcome = Outcome::Abandoned {
                step: Step::Lease,
                reason: format!("{} while asking for the lease", why.prefix()),
            };
            record.phase = Phase::Finished(outcome.clone());
            let mut m = Self::with_record(record, now);
            m.resumed = why;
            let journal = Action::Journal(Box::new(m.record.clone()));
            return (m, vec![journal, Action::Finished(outcome)]);
        }
        record.phase = Phase::Resuming { at };
        let mut m = Self::with_record(record, now);
        m.log(now, "resume", why.at(at));
        m.resumed = why;
        let mut out = vec![
            Action::Journal(Box::new(m.record.clone())),
            Action::AcquireLease,
        ];
        // A restarted node needs its mesh back before the voters can answer.
        m.set_timer(now + m.record.plan.timeouts.assign * 6, &mut out);
        (m, out)
    }

    fn with_record(record: Record, now: Duration) -> Self {
        let started = record.log.last().map_or(now, |l| now.saturating_sub(l.at));
        Self {
            record,
            started,
            timer: 0,
            next_timer: 0,
            healthy: false,
            rollback_tries: 0,
            resumed: Resumed::Restarted,
        }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.record.phase, Phase::Finished(_))
    }

    fn log(&mut self, now: Duration, step: &str, note: impl Into<String>) {
        // Bounded (a stop sent again and again must not grow the journal): the first entries and
        // the latest are kept.
        if self.record.log.len() >= MAX_LOG {
            self.record.log.remove(MAX_LOG / 4);
        }
        self.record.log.push(StepLog {
            step: step.to_owned(),
            at: now.saturating_sub(self.started),
            note: note.into(),
        });
    }

    fn set_timer(&mut self, at: Duration, out: &mut Vec<Action>) {
        self.next_timer += 1;
        self.timer = self.next_timer;
        out.push(Action::Timer {
            at,
            id: self.next_timer,
        });
    }

    fn plan(&self) -> &Plan {
        &self.record.plan
    }

    /// The assignment at a forward step (after its change).
    fn entries_at(&self, step: Step) -> Vec<Entry> {
        let p = self.plan();
        let mut out = p.base.clone();
        let with = |e: &Entry, role: Role| Entry { role, ..e.clone() };
        match step {
            Step::Lease => out.push(p.old.clone()),
            Step::Surge | Step::Soak => {
                out.push(with(&p.old, Role::Serving));
                out.push(with(&p.new, Role::Standby));
            }
            Step::Shift => {
                out.push(with(&p.old, Role::Serving));
                out.push(with(&p.new, Role::Serving));
            }
            Step::Retire => {
                out.push(with(&p.old, Role::Retiring));
                out.push(with(&p.new, Role::Serving));
            }
            Step::Stop => out.push(with(&p.new, Role::Serving)),
        }
        out
    }

    /// The assignment while rolling back: the old serves; the new retires, then is dropped
    /// (for `warm_standby` it goes back to standing by).
    fn rollback_entries(&self, dropped: bool) -> Vec<Entry> {
        let p = self.plan();
        let mut out = p.base.clone();
        out.push(Entry {
            role: Role::Serving,
            ..p.old.clone()
        });
        if p.strategy == Strategy::WarmStandby {
            let slot = p.standby_slot.clone().unwrap_or_else(|| p.new.slot.clone());
            out.push(Entry {
                role: if dropped {
                    Role::Standby
                } else {
                    Role::Retiring
                },
                slot: if dropped { slot } else { p.new.slot.clone() },
                ..p.new.clone()
            });
        } else if !dropped {
            out.push(Entry {
                role: Role::Retiring,
                ..p.new.clone()
            });
        }
        out
    }

    fn assign(&mut self, entries: Vec<Entry>, now: Duration, out: &mut Vec<Action>) {
        self.record.seq += 1;
        out.push(Action::Assign {
            seq: self.record.seq,
            entries,
        });
        self.set_timer(now + self.plan().timeouts.assign, out);
    }

    fn journal_then(&self, mut rest: Vec<Action>) -> Vec<Action> {
        rest.insert(0, Action::Journal(Box::new(self.record.clone())));
        rest
    }

    /// Goes to `step`, sending its assignment.
    fn enter(&mut self, step: Step, now: Duration) -> Vec<Action> {
        self.record.phase = Phase::Forward {
            step,
            assigned: false,
        };
        // `healthy` is kept: it is the new instance's last known health (a running standby is
        // healthy before the surge begins).
        self.log(now, step.as_str(), "started");
        let mut out = Vec::new();
        let entries = self.entries_at(step);
        self.assign(entries, now, &mut out);
        self.journal_then(out)
    }

    /// The step after `step` for this strategy.
    fn next(&self, step: Step) -> Step {
        match step {
            Step::Lease => Step::Surge,
            Step::Surge if self.plan().strategy == Strategy::BlueGreen => Step::Soak,
            Step::Surge | Step::Soak => Step::Shift,
            Step::Shift => Step::Retire,
            Step::Retire | Step::Stop => Step::Stop,
        }
    }

    /// The wait after `step`'s assignment was taken.
    fn wait_after_assigned(&mut self, step: Step, now: Duration) -> Vec<Action> {
        let t = self.plan().timeouts.clone();
        let mut out = Vec::new();
        match step {
            Step::Lease => {}
            Step::Surge => self.set_timer(now + t.healthy, &mut out),
            Step::Soak => self.set_timer(now + t.soak, &mut out),
            Step::Shift => self.set_timer(now + t.propagate, &mut out),
            Step::Retire => {
                let wait = if self.plan().strategy == Strategy::BlueGreen {
                    t.window.max(t.drain)
                } else {
                    t.drain
                };
                self.set_timer(now + wait, &mut out);
            }
            Step::Stop => {}
        }
        out
    }

    fn finish(&mut self, outcome: Outcome, release: bool, now: Duration) -> Vec<Action> {
        self.log(now, "finished", format!("{outcome:?}"));
        self.record.phase = Phase::Finished(outcome.clone());
        let mut out = Vec::new();
        if release {
            out.push(Action::ReleaseLease {
                moved: outcome == Outcome::Completed,
            });
        }
        out.push(Action::Finished(outcome));
        self.journal_then(out)
    }

    /// A forward step failed: roll back (or, past the point of no return, keep going).
    fn fail(&mut self, step: Step, reason: String, now: Duration) -> Vec<Action> {
        if step >= Step::Stop {
            // The old instance is being stopped: finishing is the way back to a whole service.
            self.log(now, step.as_str(), format!("{reason}; finishing"));
            return self.enter(Step::Stop, now);
        }
        if step == Step::Lease {
            return self.finish(Outcome::Refused { reason }, false, now);
        }
        self.log(
            now,
            "rollback",
            format!("{} failed: {reason}", step.as_str()),
        );
        // Before the shift, the new instance never served: drop it at once. At the shift the old
        // one still serves: the new one retires. After it, the old one had stopped serving: both
        // serve first (the old one, made to serve by the later change, is preferred), then the
        // new one retires.
        let dropped = step < Step::Shift;
        let both = step > Step::Shift;
        self.record.phase = Phase::RollingBack {
            from: step,
            reason,
            dropped,
            assigned: false,
            both,
        };
        let mut out = Vec::new();
        let entries = if both {
            self.entries_at(Step::Shift)
        } else {
            self.rollback_entries(dropped)
        };
        self.assign(entries, now, &mut out);
        self.journal_then(out)
    }

    fn on_forward(
        &mut self,
        step: Step,
        assigned: bool,
        event: Event,
        now: Duration,
    ) -> Vec<Action> {
        match event {
            Event::LeaseGranted { epoch } if step == Step::Lease => {
                self.record.epoch = epoch;
                self.log(now, "lease", format!("granted, epoch {epoch}"));
                let next = self.next(step);
                self.enter(next, now)
            }
            Event::LeaseRefused { reason } if step == Step::Lease => {
                self.finish(Outcome::Refused { reason }, false, now)
            }
            Event::LeaseLost => {
                let outcome = Outcome::Abandoned {
                    step,
                    reason: "the lease was lost (not renewed in time)".into(),
                };
                self.finish(outcome, false, now)
            }
            Event::Assigned { seq }
                if !assigned && seq == self.record.seq && step != Step::Lease =>
            {
                self.record.phase = Phase::Forward {
                    step,
                    assigned: true,
                };
                self.log(now, step.as_str(), "assignment taken");
                if step == Step::Stop {
                    return self.finish(Outcome::Completed, true, now);
                }
                // Already healthy (a running standby): no need to wait.
                if step == Step::Surge && self.healthy {
                    return self.advance(step, now);
                }
                let out = self.wait_after_assigned(step, now);
                self.journal_then(out)
            }
            // The stop is sent again at its timer (never undone), the others roll back now.
            Event::AssignFailed { seq, reason } if seq == self.record.seq && step != Step::Stop => {
                self.fail(step, format!("assignment not taken: {reason}"), now)
            }
            Event::Health { instance, healthy } if instance == self.plan().new.instance => {
                self.healthy = healthy;
                match step {
                    Step::Surge if healthy && assigned => self.advance(step, now),
                    Step::Soak | Step::Shift | Step::Retire if !healthy => {
                        self.fail(step, "the new instance turned unhealthy".into(), now)
                    }
                    _ => Vec::new(),
                }
            }
            // From the shift on, the new instance takes the traffic: a rise in errors then
            // (the executor watches for one under blue_green) switches back.
            Event::ErrorRate { ratio } if matches!(step, Step::Shift | Step::Retire) => self.fail(
                step,
                format!(
                    "the error rate rose to {:.1} % after the switch",
                    ratio * 100.0
                ),
                now,
            ),
            Event::Timer(id) if id == self.timer => {
                if !assigned && step != Step::Lease {
                    return self.fail(step, "the assignment was not taken in time".into(), now);
                }
                match step {
                    Step::Lease => self.finish(
                        Outcome::Refused {
                            reason: "no answer from the lease voters in time".into(),
                        },
                        true,
                        now,
                    ),
                    Step::Surge => self.fail(
                        step,
                        "the new instance did not become healthy in time".into(),
                        now,
                    ),
                    _ => self.advance(step, now),
                }
            }
            Event::Cancel { reason } => {
                if step == Step::Lease {
                    self.finish(Outcome::Refused { reason }, true, now)
                } else {
                    self.fail(step, format!("cancelled: {reason}"), now)
                }
            }
            _ => Vec::new(),
        }
    }

    fn advance(&mut self, step: Step, now: Duration) -> Vec<Action> {
        self.log(now, step.as_str(), "done");
        let next = self.next(step);
        self.enter(next, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_rollback(
        &mut self,
        from: Step,
        reason: String,
        dropped: bool,
        assigned: bool,
        both: bool,
        event: Event,
        now: Duration,
    ) -> Vec<Action> {
        match event {
            Event::Assigned { seq } if !assigned && seq == self.record.seq => {
                self.record.phase = Phase::RollingBack {
                    from,
                    reason: reason.clone(),
                    dropped,
                    assigned: true,
                    both,
                };
                if both {
                    self.log(
                        now,
                        "rollback",
                        "the old instance serves again beside the new",
                    );
                    let wait = self.plan().timeouts.propagate;
                    let mut out = Vec::new();
                    self.set_timer(now + wait, &mut out);
                    return self.journal_then(out);
                }
                if dropped {
                    self.log(now, "rollback", "the new instance is dropped");
                    return self.finish(Outcome::RolledBack { step: from, reason }, true, now);
                }
                self.log(
                    now,
                    "rollback",
                    "the old instance serves again; draining the new",
                );
                let t = &self.plan().timeouts;
                let wait = t.propagate + t.drain;
                let mut out = Vec::new();
                self.set_timer(now + wait, &mut out);
                self.journal_then(out)
            }
            Event::Timer(id) if id == self.timer => {
                if !assigned {
                    self.rollback_tries += 1;
                    if self.rollback_tries > MAX_ROLLBACK_TRIES {
                        let outcome = Outcome::Abandoned {
                            step: from,
                            reason: format!(
                                "the rollback's assignment was not taken after {MAX_ROLLBACK_TRIES} tries ({reason})"
                            ),
                        };
                        return self.finish(outcome, true, now);
                    }
                    // Not taken: send it again (the old instance serves in every rollback
                    // assignment, so trying again is safe).
                    let mut out = Vec::new();
                    let entries = if both {
                        self.entries_at(Step::Shift)
                    } else {
                        self.rollback_entries(dropped)
                    };
                    self.log(
                        now,
                        "rollback",
                        "assignment not taken in time; sending it again",
                    );
                    self.assign(entries, now, &mut out);
                    return self.journal_then(out);
                }
                // Both served: now the new one retires. It retired: now it is dropped.
                self.rollback_tries = 0;
                let dropped = !both;
                self.record.phase = Phase::RollingBack {
                    from,
                    reason,
                    dropped,
                    assigned: false,
                    both: false,
                };
                let mut out = Vec::new();
                let entries = self.rollback_entries(dropped);
                self.assign(entries, now, &mut out);
                self.journal_then(out)
            }
            Event::AssignFailed { seq, .. } if seq == self.record.seq => {
                // Tried again at the timer.
                Vec::new()
            }
            Event::LeaseLost => {
                let outcome = Outcome::Abandoned {
                    step: from,
                    reason: "the lease was lost while rolling back".into(),
                };
                self.finish(outcome, false, now)
            }
            _ => Vec::new(),
        }
    }

    fn on_resuming(&mut self, at: Step, event: Event, now: Duration) -> Vec<Action> {
        match event {
            Event::LeaseGranted { epoch } => {
                self.record.epoch = epoch;
                self.log(now, "lease", format!("granted again, epoch {epoch}"));
                if at >= Step::Retire {
                    self.enter(Step::Stop, now)
                } else {
                    self.fail(at, self.resumed.mid_way(), now)
                }
            }
            Event::LeaseRefused { reason } => {
                let outcome = Outcome::Abandoned {
                    step: at,
                    reason: format!(
                        "{}, and the lease was refused: {reason}",
                        self.resumed.prefix()
                    ),
                };
                self.finish(outcome, false, now)
            }
            Event::Timer(id) if id == self.timer => {
                let outcome = Outcome::Abandoned {
                    step: at,
                    reason: format!("{}, and no lease in time", self.resumed.prefix()),
                };
                self.finish(outcome, true, now)
            }
            _ => Vec::new(),
        }
    }
}

impl Machine for Migration {
    type Event = Event;
    type Action = Action;
    type Now = Duration;

    fn on_event(&mut self, event: Event, now: Duration) -> Vec<Action> {
        match self.record.phase.clone() {
            Phase::Finished(_) => Vec::new(),
            Phase::Forward { step, assigned } => {
                if event == Event::Start {
                    if step != Step::Lease || self.record.seq > 0 {
                        return Vec::new();
                    }
                    self.started = now;
                    self.log(now, "lease", "asked");
                    let mut out = vec![Action::AcquireLease];
                    self.set_timer(now + self.plan().timeouts.assign * 3, &mut out);
                    return self.journal_then(out);
                }
                self.on_forward(step, assigned, event, now)
            }
            Phase::RollingBack {
                from,
                reason,
                dropped,
                assigned,
                both,
            } => self.on_rollback(from, reason, dropped, assigned, both, event, now),
            Phase::Resuming { at } => self.on_resuming(at, event, now),
        }
    }
}

#[cfg(test)]
mod tests;

//! Tests of the migration machine: each strategy run against an obliging fleet, then with a fault
//! injected at every step (an assignment refused or never taken, the new instance turning
//! unhealthy, the error rate rising, the lease lost, a cancel), then restarted from its journal at
//! every step. Every assignment it sends is checked: the slot always has a serving instance.

use std::collections::VecDeque;

use super::*;

const NEW: &str = "web-0-e7";

fn entry(instance: &str, node: &str, slot: &str, role: Role) -> Entry {
    Entry {
        instance: instance.into(),
        node: node.into(),
        slot: slot.into(),
        role,
        version: None,
    }
}

fn plan(strategy: Strategy) -> Plan {
    let (new, standby_slot) = match strategy {
        Strategy::WarmStandby => (
            entry("web-standby-0", "c", "0", Role::Standby),
            Some("standby-0".to_owned()),
        ),
        _ => (entry(NEW, "b", "0", Role::Standby), None),
    };
    Plan {
        id: "m1".into(),
        service: "web".into(),
        strategy,
        old: entry("web-0", "a", "0", Role::Serving),
        new,
        base: vec![entry("web-1", "d", "1", Role::Serving)],
        standby_slot,
        timeouts: Timeouts::default(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    AssignFails,
    AssignNeverTaken,
    Unhealthy,
    ErrorRate,
    LeaseLost,
    Cancel,
}

struct World {
    m: Migration,
    now: Duration,
    events: VecDeque<Event>,
    timers: Vec<(Duration, u64)>,
    assignments: Vec<Vec<Entry>>,
    journal: Vec<Record>,
    released: Option<bool>,
    outcome: Option<Outcome>,
    fault: Option<(Step, Fault)>,
    /// The steps entered, in order.
    steps: Vec<Step>,
}

impl World {
    fn new(strategy: Strategy, fault: Option<(Step, Fault)>) -> Self {
        Self::from(Migration::new(plan(strategy)), fault)
    }

    fn from(m: Migration, fault: Option<(Step, Fault)>) -> Self {
        Self {
            m,
            now: Duration::ZERO,
            events: VecDeque::new(),
            timers: Vec::new(),
            assignments: Vec::new(),
            journal: Vec::new(),
            released: None,
            outcome: None,
            fault,
            steps: Vec::new(),
        }
    }

    fn step(&self) -> Option<Step> {
        match &self.m.record().phase {
            Phase::Forward { step, .. } => Some(*step),
            _ => None,
        }
    }

    fn faulty(&self, f: Fault) -> bool {
        self.fault
            .is_some_and(|(s, g)| g == f && self.step() == Some(s))
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut journaled = false;
        for a in actions {
            match a {
                Action::Journal(r) => {
                    self.journal.push(*r);
                    journaled = true;
                }
                Action::AcquireLease => self.events.push_back(Event::LeaseGranted { epoch: 7 }),
                Action::ReleaseLease { moved } => self.released = Some(moved),
                Action::Assign { seq, entries } => {
                    assert!(journaled, "journaled before the assignment {seq} is sent");
                    let serving = entries
                        .iter()
                        .filter(|e| e.slot == "0" && e.role == Role::Serving)
                        .count();
                    assert!(
                        serving >= 1,
                        "slot 0 without a serving instance: {entries:?}"
                    );
                    assert!(
                        entries.iter().any(|e| e.instance == "web-1"),
                        "the rest of the service is kept"
                    );
                    // Proxies learn an assignment in any order: one instance serves slot 0 in
                    // both this assignment and the last, so no proxy is ever left without one.
                    if let Some(last) = self.assignments.last() {
                        let serving = |a: &[Entry]| -> Vec<String> {
                            a.iter()
                                .filter(|e| e.slot == "0" && e.role == Role::Serving)
                                .map(|e| e.instance.clone())
                                .collect()
                        };
                        let (before, now) = (serving(last), serving(&entries));
                        assert!(
                            before.iter().any(|i| now.contains(i)),
                            "slot 0 changes hands at once: {before:?} -> {now:?}"
                        );
                    }
                    self.assignments.push(entries);
                    if let Some(s) = self.step()
                        && self.steps.last() != Some(&s)
                    {
                        self.steps.push(s);
                    }
                    if self.faulty(Fault::AssignFails) {
                        self.events.push_back(Event::AssignFailed {
                            seq,
                            reason: "refused".into(),
                        });
                    } else if !self.faulty(Fault::AssignNeverTaken) {
                        self.events.push_back(Event::Assigned { seq });
                        // A fault of the step comes once its assignment is taken, before the
                        // step can end.
                        if self.faulty(Fault::ErrorRate) {
                            self.events.push_back(Event::ErrorRate { ratio: 0.2 });
                        }
                        if self.faulty(Fault::LeaseLost) {
                            self.events.push_back(Event::LeaseLost);
                        }
                        if self.faulty(Fault::Cancel) {
                            self.events.push_back(Event::Cancel {
                                reason: "operator".into(),
                            });
                        }
                        match self.step() {
                            Some(Step::Surge) if !self.faulty(Fault::Unhealthy) => {
                                self.events.push_back(Event::Health {
                                    instance: self.m.record().plan.new.instance.clone(),
                                    healthy: true,
                                })
                            }
                            Some(s) if s > Step::Surge && self.faulty(Fault::Unhealthy) => {
                                self.events.push_back(Event::Health {
                                    instance: self.m.record().plan.new.instance.clone(),
                                    healthy: false,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                Action::Timer { at, id } => self.timers.push((at, id)),
                Action::Finished(o) => {
                    assert!(self.outcome.is_none(), "finished once");
                    self.outcome = Some(o);
                }
            }
        }
    }

    /// Runs until finished (bounded), delivering events first and then the earliest timer.
    fn run(&mut self) -> Outcome {
        if self.journal.is_empty() && self.m.record().seq == 0 {
            let a = self.m.on_event(Event::Start, self.now);
            self.apply(a);
        }
        for _ in 0..1000 {
            if let Some(o) = &self.outcome {
                return o.clone();
            }
            if let Some(e) = self.events.pop_front() {
                let a = self.m.on_event(e, self.now);
                self.apply(a);
                continue;
            }
            self.timers.sort();
            let Some((at, id)) = (!self.timers.is_empty()).then(|| self.timers.remove(0)) else {
                panic!("stuck at {:?}", self.m.record().phase);
            };
            self.now = self.now.max(at);
            let a = self.m.on_event(Event::Timer(id), self.now);
            self.apply(a);
        }
        panic!("no end: {:?}", self.m.record().phase);
    }

    /// Who serves slot 0 in the last assignment.
    fn serving(&self) -> Vec<&str> {
        self.assignments
            .last()
            .expect("assigned")
            .iter()
            .filter(|e| e.slot == "0" && e.role == Role::Serving)
            .map(|e| e.instance.as_str())
            .collect()
    }
}

const STRATEGIES: [Strategy; 3] = [Strategy::Live, Strategy::WarmStandby, Strategy::BlueGreen];

#[test]
fn each_strategy_completes_its_steps_in_order() {
    for strategy in STRATEGIES {
        let mut w = World::new(strategy, None);
        assert_eq!(w.run(), Outcome::Completed, "{strategy:?}");
        let mut want = vec![Step::Surge, Step::Shift, Step::Retire, Step::Stop];
        if strategy == Strategy::BlueGreen {
            want.insert(1, Step::Soak);
        }
        assert_eq!(w.steps, want, "{strategy:?}");
        let new = w.m.record().plan.new.instance.clone();
        assert_eq!(w.serving(), [new.as_str()], "{strategy:?}");
        assert!(
            !w.assignments
                .last()
                .expect("one")
                .iter()
                .any(|e| e.instance == "web-0"),
            "the old instance is gone"
        );
        assert_eq!(w.released, Some(true), "released as moved");
        assert_eq!(w.m.record().epoch, 7);
        // The shift comes after the new one is healthy; the old one retires after the shift
        // has propagated; blue_green waits its soak and its rollback window.
        let t = Timeouts::default();
        let mut least = t.propagate + t.drain;
        if strategy == Strategy::BlueGreen {
            least = t.soak + t.propagate + t.window;
        }
        assert!(w.now >= least, "{strategy:?} took {:?}", w.now);
    }
}

#[test]
fn a_fault_at_every_step_rolls_back_with_the_slot_always_served() {
    let faults = [
        Fault::AssignFails,
        Fault::AssignNeverTaken,
        Fault::Unhealthy,
        Fault::ErrorRate,
        Fault::LeaseLost,
        Fault::Cancel,
    ];
    let mut cases = 0;
    for strategy in STRATEGIES {
        for step in [
            Step::Surge,
            Step::Soak,
            Step::Shift,
            Step::Retire,
            Step::Stop,
        ] {
            if step == Step::Soak && strategy != Strategy::BlueGreen {
                continue;
            }
            for fault in faults {
                // The error rate is watched in blue_green's rollback window only; health from
                // the surge on (at the surge it is "never healthy").
                if fault == Fault::ErrorRate
                    && !(matches!(step, Step::Shift | Step::Retire)
                        && strategy == Strategy::BlueGreen)
                {
                    continue;
                }
                // A stop that is never taken is sent again forever (its own test, below).
                if step == Step::Stop
                    && matches!(fault, Fault::AssignFails | Fault::AssignNeverTaken)
                {
                    continue;
                }
                cases += 1;
                let mut w = World::new(strategy, Some((step, fault)));
                let outcome = w.run();
                let label = format!("{strategy:?}, {fault:?} at {step:?}");
                match (fault, step) {
                    (_, Step::Stop) => assert_eq!(outcome, Outcome::Completed, "{label}"),
                    (Fault::LeaseLost, s) => {
                        assert!(
                            matches!(outcome, Outcome::Abandoned { step, .. } if step == s),
                            "{label}: {outcome:?}"
                        );
                        assert_ne!(w.released, Some(true), "{label}");
                    }
                    // Past the point of no return, a failure is finished, not undone; an
                    // unhealthy new instance at the stop is left to the health checks.
                    (_, s) => {
                        assert!(
                            matches!(&outcome, Outcome::RolledBack { step, .. } if *step == s),
                            "{label}: {outcome:?}"
                        );
                        assert_eq!(w.serving(), ["web-0"], "{label}: the old instance serves");
                        let last = w.assignments.last().expect("assigned");
                        let new = &w.m.record().plan.new;
                        match strategy {
                            Strategy::WarmStandby => assert!(
                                last.iter().any(|e| e.instance == new.instance
                                    && e.role == Role::Standby
                                    && e.slot == "standby-0"),
                                "{label}: the standby stands by again: {last:?}"
                            ),
                            _ => assert!(
                                !last.iter().any(|e| e.instance == new.instance),
                                "{label}: the new instance is dropped"
                            ),
                        }
                        // Once the new one may have served, it retires before it is dropped.
                        if s >= Step::Shift {
                            let retired = w.assignments.iter().any(|a| {
                                a.iter()
                                    .any(|e| e.instance == new.instance && e.role == Role::Retiring)
                                    && a.iter()
                                        .any(|e| e.instance == "web-0" && e.role == Role::Serving)
                            });
                            assert!(retired, "{label}: drained before dropped");
                        }
                        assert_eq!(w.released, Some(false), "{label}: released, not moved");
                    }
                }
            }
        }
    }
    assert!(cases > 40, "{cases} cases");
}

#[test]
fn a_stop_that_is_not_taken_is_sent_again_until_it_is() {
    let mut w = World::new(Strategy::Live, Some((Step::Stop, Fault::AssignFails)));
    let a = w.m.on_event(Event::Start, w.now);
    w.apply(a);
    let stops = |w: &World| w.steps.iter().filter(|s| **s == Step::Stop).count();
    let mut first_stop = None;
    let mut sent = 0;
    for _ in 0..500 {
        if let Some(e) = w.events.pop_front() {
            let a = w.m.on_event(e, w.now);
            let before = w.assignments.len();
            w.apply(a);
            if w.step() == Some(Step::Stop) && w.assignments.len() > before {
                first_stop.get_or_insert(w.now);
                sent += 1;
            }
        } else {
            w.timers.sort();
            let (at, id) = w.timers.remove(0);
            w.now = w.now.max(at);
            let a = w.m.on_event(Event::Timer(id), w.now);
            let before = w.assignments.len();
            w.apply(a);
            if w.step() == Some(Step::Stop) && w.assignments.len() > before {
                first_stop.get_or_insert(w.now);
                sent += 1;
            }
        }
        if sent >= 10 {
            break;
        }
    }
    assert!(stops(&w) >= 1 && sent >= 10, "sent {sent} times");
    assert!(w.outcome.is_none(), "never rolled back past the stop");
    assert!(
        w.m.record().log.len() <= MAX_LOG,
        "the journal stays bounded"
    );
    let first = first_stop.expect("stopped");
    assert!(
        w.now - first >= Timeouts::default().assign * 9,
        "sent again at its timer, not in a loop ({:?})",
        w.now - first
    );
    // The world heals: the next one is taken.
    w.fault = None;
    assert_eq!(w.run(), Outcome::Completed);
}

#[test]
fn a_restart_at_every_step_resumes_from_the_journal() {
    for strategy in STRATEGIES {
        // The journal as it was at each step of a clean run.
        let mut clean = World::new(strategy, None);
        clean.run();
        for record in clean.journal.clone() {
            let at = match &record.phase {
                Phase::Forward { step, .. } => *step,
                _ => continue,
            };
            let (m, actions) = Migration::resume(record, Duration::from_secs(1000));
            let mut w = World::from(m, None);
            w.now = Duration::from_secs(1000);
            w.apply(actions);
            let outcome = w.run();
            let label = format!("{strategy:?} restarted at {at:?}");
            match at {
                Step::Lease => assert!(matches!(outcome, Outcome::Abandoned { .. }), "{label}"),
                s if s >= Step::Retire => {
                    assert_eq!(outcome, Outcome::Completed, "{label}");
                    assert_eq!(w.serving(), [w.m.record().plan.new.instance.as_str()]);
                }
                _ => {
                    assert!(
                        matches!(outcome, Outcome::RolledBack { .. }),
                        "{label}: {outcome:?}"
                    );
                    assert_eq!(w.serving(), ["web-0"], "{label}");
                }
            }
        }
    }
}

#[test]
fn a_standby_already_healthy_before_the_surge_is_not_waited_for() {
    let mut m = Migration::new(plan(Strategy::WarmStandby));
    let t = Duration::ZERO;
    m.on_event(Event::Start, t);
    // The fleet reports the standby healthy while the lease is being asked for.
    m.on_event(
        Event::Health {
            instance: "web-standby-0".into(),
            healthy: true,
        },
        t,
    );
    m.on_event(Event::LeaseGranted { epoch: 3 }, t);
    let a = m.on_event(Event::Assigned { seq: 1 }, t);
    assert!(
        matches!(
            m.record().phase,
            Phase::Forward {
                step: Step::Shift,
                ..
            }
        ),
        "{:?} after {a:?}",
        m.record().phase
    );
}

#[test]
fn a_refused_lease_does_nothing() {
    let mut m = Migration::new(plan(Strategy::Live));
    let a = m.on_event(Event::Start, Duration::ZERO);
    assert!(a.contains(&Action::AcquireLease));
    let a = m.on_event(
        Event::LeaseRefused {
            reason: "web is being moved under a lease held by n2".into(),
        },
        Duration::from_millis(5),
    );
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Assign { .. } | Action::ReleaseLease { .. }))
    );
    assert!(matches!(
        a.last(),
        Some(Action::Finished(Outcome::Refused { reason })) if reason.contains("n2")
    ));
    let record: Record = serde_json::from_str(&serde_json::to_string(m.record()).expect("encodes"))
        .expect("the journal's form decodes");
    assert_eq!(&record, m.record());
}

#[test]
fn a_rollback_whose_assignment_is_never_taken_gives_up_bounded() {
    let mut m = Migration::new(plan(Strategy::Live));
    let mut now = Duration::ZERO;
    m.on_event(Event::Start, now);
    m.on_event(Event::LeaseGranted { epoch: 2 }, now);
    let a = m.on_event(
        Event::AssignFailed {
            seq: 1,
            reason: "an instance is named twice".into(),
        },
        now,
    );
    assert!(
        matches!(m.record().phase, Phase::RollingBack { .. }),
        "{a:?}"
    );
    let mut outcome = None;
    for _ in 0..100 {
        now += Timeouts::default().assign;
        let timer = m.timer;
        for a in m.on_event(Event::Timer(timer), now) {
            if let Action::Finished(o) = a {
                outcome = Some(o);
            }
        }
        if outcome.is_some() {
            break;
        }
    }
    assert!(
        matches!(
            &outcome,
            Some(Outcome::Abandoned {
                step: Step::Surge,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert!(now <= Timeouts::default().assign * (MAX_ROLLBACK_TRIES + 2));
}

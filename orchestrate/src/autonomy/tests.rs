//! Tests of the autonomy machine: the election order, the takeover, the witness, damping, the
//! budget's wait, shadow mode and clock skew, table-driven; then seeded random histories of five
//! nodes observing the same fleet, checked for the machine's own invariants.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const S: Duration = Duration::from_secs(1);

fn member(p: &str) -> Member {
    Member {
        peer_id: p.into(),
        alive: true,
        healthy: true,
    }
}

fn members(ps: &[&str]) -> Vec<Member> {
    ps.iter().map(|p| member(p)).collect()
}

fn predicted(instance: &str, node: &str) -> Case {
    Case {
        service: "web".into(),
        instance: instance.into(),
        node: node.into(),
        node_name: format!("{node}-name"),
        epoch: 3,
        mode: Mode::Act,
        trigger: Trigger::Predicted {
            resource: instance.into(),
            probability: 0.9,
            threshold: 0.75,
            eta_s: Some(60.0),
            starved: false,
        },
    }
}

fn dead(instance: &str, node: &str) -> Case {
    Case {
        trigger: Trigger::NodeDead,
        ..predicted(instance, node)
    }
}

fn observe(ms: &[Member], cases: &[Case]) -> Event {
    Event::Observe {
        members: ms.to_vec(),
        cases: cases.to_vec(),
        moving: BTreeSet::new(),
    }
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Witness { independent, .. } => format!("witness(independent={independent})"),
            Action::Migrate { case } => format!("migrate({})", case.instance),
            Action::Resume { case } => format!("resume({})", case.instance),
            Action::Report(r) => format!("{:?}", r.stage).to_lowercase(),
        })
        .collect()
}

/// The election order of the test's five nodes for the test's case.
fn order() -> Vec<String> {
    let cands = ["a", "b", "c", "d", "e"];
    let others: Vec<&str> = cands.iter().copied().filter(|p| *p != "x").collect();
    rendezvous("web", 3, &others)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn rendezvous_is_stable_spread_and_changes_with_the_epoch() {
    let peers = ["a", "b", "c", "d", "e"];
    // The same input gives the same order, whatever the order of the candidates.
    let mut rev = peers;
    rev.reverse();
    assert_eq!(rendezvous("web", 1, &peers), rendezvous("web", 1, &rev));
    // Removing a member other than the top keeps the top (rendezvous hashing's point).
    let top = rendezvous("web", 1, &peers)[0];
    let fewer: Vec<&str> = peers.iter().copied().filter(|p| *p != top).collect();
    let next = rendezvous("web", 1, &peers)[1];
    assert_eq!(rendezvous("web", 1, &fewer)[0], next);
    // Over many (service, epoch) pairs, every peer is first about a fifth of the time.
    let mut firsts: BTreeMap<&str, u32> = BTreeMap::new();
    for e in 0..5000 {
        *firsts.entry(rendezvous("svc", e, &peers)[0]).or_default() += 1;
    }
    for (p, n) in &firsts {
        assert!((800..1200).contains(n), "{p} first {n} times of 5000");
    }
    // A pinned value: the hash is stable across builds (nodes of two versions agree).
    assert_eq!(weight("web", 7, "a"), weight("web", 7, "a"));
    assert_ne!(weight("ab", 7, "c"), weight("a", 7, "bc"));
}

/// The first in the order acts after the dwell and the witness; the others wait.
#[test]
fn the_first_in_the_order_acts_after_the_dwell_and_a_witness() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = predicted("web-0", "x");
    let mut first = Autonomy::new(Settings::new(o[0].clone()));
    let mut second = Autonomy::new(Settings::new(o[1].clone()));
    let table: Vec<(Duration, Vec<&str>)> = vec![
        (Duration::ZERO, vec![]),
        (2 * S, vec![]),
        (3 * S, vec!["elected", "witness(independent=false)"]),
        (4 * S, vec![]),
    ];
    for (t, want) in table {
        let got = first.on_event(observe(&ms, std::slice::from_ref(&case)), t);
        assert_eq!(kinds(&got), want, "first at {t:?}");
        assert!(
            second
                .on_event(observe(&ms, std::slice::from_ref(&case)), t)
                .is_empty(),
            "the second waits"
        );
    }
    let got = first.on_event(
        Event::Witnessed {
            service: "web".into(),
            instance: "web-0".into(),
            agrees: true,
            evidence: "its trend crosses mem_used_ratio in 40 s here too".into(),
        },
        4 * S,
    );
    assert_eq!(kinds(&got), ["confirmed"]);
    let got = first.on_event(observe(&ms, std::slice::from_ref(&case)), 5 * S);
    assert_eq!(kinds(&got), ["migrate(web-0)"]);
    // Asked once: not again while it runs.
    first.on_event(
        Event::Outcome {
            service: "web".into(),
            instance: "web-0".into(),
            outcome: MoveOutcome::Started,
        },
        5 * S,
    );
    for t in 6..60 {
        assert!(
            first
                .on_event(observe(&ms, std::slice::from_ref(&case)), t * S)
                .is_empty()
        );
    }
}

/// The second takes over when the first has not started within `takeover`; a move seen going on
/// holds everyone back.
#[test]
fn the_next_takes_over_when_the_first_does_not_start() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = dead("web-0", "x");
    let mut second = Autonomy::new(Settings::new(o[1].clone()));
    // No dwell for a dead node; the second's turn is at 10 s.
    assert!(
        second
            .on_event(observe(&ms, std::slice::from_ref(&case)), S)
            .is_empty()
    );
    assert!(
        second
            .on_event(observe(&ms, std::slice::from_ref(&case)), 9 * S)
            .is_empty()
    );
    // A move of the service is seen at 9.5 s: the turn moves to 9.5 + 10 + 10.
    let busy = Event::Observe {
        members: ms.clone(),
        cases: vec![case.clone()],
        moving: BTreeSet::from(["web".to_owned()]),
    };
    assert!(second.on_event(busy, 9 * S + S / 2).is_empty());
    assert!(
        second
            .on_event(observe(&ms, std::slice::from_ref(&case)), 29 * S)
            .is_empty()
    );
    let got = second.on_event(observe(&ms, std::slice::from_ref(&case)), 30 * S);
    assert_eq!(kinds(&got), ["elected", "migrate(web-0)"]);
    match &got[0] {
        Action::Report(r) => assert_eq!(r.rank, 1),
        other => panic!("{other:?}"),
    }
}

/// The failing node, a dead coordinator, suspect and unhealthy members are never elected; a node
/// outside the candidates does nothing.
#[test]
fn only_live_healthy_members_other_than_the_failing_node_are_candidates() {
    let case = dead("web-0", "a");
    let mut ms = members(&["a", "b", "c"]);
    ms[1].alive = false;
    ms[2].healthy = false;
    for me in ["a", "b", "c"] {
        let mut m = Autonomy::new(Settings::new(me));
        for t in 0..100 {
            assert!(
                m.on_event(observe(&ms, std::slice::from_ref(&case)), t * S)
                    .is_empty(),
                "{me} acted"
            );
        }
    }
    // An orphaned move excludes its dead coordinator too.
    let orphan = Case {
        trigger: Trigger::Orphaned {
            migration: "m1".into(),
            coordinator: "b".into(),
        },
        ..case
    };
    let ms = members(&["a", "b", "c"]);
    let mut b = Autonomy::new(Settings::new("b"));
    let mut c = Autonomy::new(Settings::new("c"));
    assert!(
        b.on_event(observe(&ms, std::slice::from_ref(&orphan)), S)
            .is_empty()
    );
    assert_eq!(
        kinds(&c.on_event(observe(&ms, &[orphan]), S)),
        ["elected", "resume(web-0)"]
    );
}

/// A flapping alarm (shorter than the dwell each time) never leads to a witness or a move.
#[test]
fn a_flapping_prediction_is_damped() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = predicted("web-0", "x");
    let mut first = Autonomy::new(Settings::new(o[0].clone()));
    let mut t = Duration::ZERO;
    for _ in 0..200 {
        // 2 s on, 1 s off.
        for _ in 0..4 {
            assert!(
                first
                    .on_event(observe(&ms, std::slice::from_ref(&case)), t)
                    .is_empty()
            );
            t += S / 2;
        }
        assert!(first.on_event(observe(&ms, &[]), t).is_empty());
        t += S;
    }
}

/// A witness that disagrees stops the move; it is asked again after `recheck`, and an agreement
/// then lets it go.
#[test]
fn a_disagreeing_witness_stops_the_move_until_it_agrees() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = predicted("web-0", "x");
    let mut first = Autonomy::new(Settings::new(o[0].clone()));
    first.on_event(observe(&ms, std::slice::from_ref(&case)), Duration::ZERO);
    let got = first.on_event(observe(&ms, std::slice::from_ref(&case)), 3 * S);
    assert_eq!(kinds(&got), ["elected", "witness(independent=false)"]);
    let no = |agrees| Event::Witnessed {
        service: "web".into(),
        instance: "web-0".into(),
        agrees,
        evidence: "here its trend stays below every limit".into(),
    };
    assert_eq!(kinds(&first.on_event(no(false), 3 * S)), ["unconfirmed"]);
    for t in 4..8 {
        assert!(
            first
                .on_event(observe(&ms, std::slice::from_ref(&case)), t * S)
                .is_empty()
        );
    }
    let got = first.on_event(observe(&ms, std::slice::from_ref(&case)), 8 * S);
    assert_eq!(kinds(&got), ["witness(independent=false)"]);
    assert_eq!(kinds(&first.on_event(no(true), 8 * S)), ["confirmed"]);
    assert_eq!(
        kinds(&first.on_event(observe(&ms, &[case]), 9 * S)),
        ["migrate(web-0)"]
    );
    // A witness's answer nobody asked for changes nothing.
    assert!(first.on_event(no(false), 10 * S).is_empty());
}

/// A starved node's alarm asks for independent evidence.
#[test]
fn a_starved_nodes_prediction_needs_independent_evidence() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let mut case = predicted("web-0", "x");
    case.trigger = Trigger::Predicted {
        resource: "x".into(),
        probability: 0.99,
        threshold: 0.75,
        eta_s: None,
        starved: true,
    };
    let mut first = Autonomy::new(Settings::new(o[0].clone()));
    first.on_event(observe(&ms, std::slice::from_ref(&case)), Duration::ZERO);
    assert_eq!(
        kinds(&first.on_event(observe(&ms, &[case]), 3 * S)),
        ["elected", "witness(independent=true)"]
    );
}

/// A move refused for the budget waits, says so once per reason, and is asked for again every
/// `retry`; a rolled-back move is asked for again after `takeover`, with a new witness.
#[test]
fn a_refused_move_waits_visibly_and_is_asked_again() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = dead("web-0", "x");
    let mut first = Autonomy::new(Settings::new(o[0].clone()));
    assert_eq!(
        kinds(&first.on_event(observe(&ms, std::slice::from_ref(&case)), Duration::ZERO)),
        ["elected", "migrate(web-0)"]
    );
    let refused = || Event::Outcome {
        service: "web".into(),
        instance: "web-0".into(),
        outcome: MoveOutcome::Waiting {
            reason: "the disruption budget of the fleet is spent: 1 move(s) at once".into(),
        },
    };
    assert_eq!(kinds(&first.on_event(refused(), S)), ["waiting"]);
    assert!(first.status()[0].detail.contains("budget"));
    assert_eq!(first.status()[0].stage, Stage::Waiting);
    assert!(
        first
            .on_event(observe(&ms, std::slice::from_ref(&case)), 2 * S)
            .is_empty()
    );
    assert_eq!(
        kinds(&first.on_event(observe(&ms, std::slice::from_ref(&case)), 3 * S)),
        ["migrate(web-0)"]
    );
    // The same reason again: not reported again.
    assert!(first.on_event(refused(), 3 * S).is_empty());
    first.on_event(
        Event::Outcome {
            service: "web".into(),
            instance: "web-0".into(),
            outcome: MoveOutcome::Started,
        },
        5 * S,
    );
    let got = first.on_event(
        Event::Outcome {
            service: "web".into(),
            instance: "web-0".into(),
            outcome: MoveOutcome::Finished {
                completed: false,
                detail: "rolled back at surge: the new instance never became healthy".into(),
            },
        },
        20 * S,
    );
    assert_eq!(kinds(&got), ["waiting"]);
    assert!(
        first
            .on_event(observe(&ms, std::slice::from_ref(&case)), 29 * S)
            .is_empty()
    );
    assert_eq!(
        kinds(&first.on_event(observe(&ms, std::slice::from_ref(&case)), 30 * S)),
        ["migrate(web-0)"]
    );
    let got = first.on_event(
        Event::Outcome {
            service: "web".into(),
            instance: "web-0".into(),
            outcome: MoveOutcome::Finished {
                completed: true,
                detail: "completed".into(),
            },
        },
        40 * S,
    );
    assert_eq!(kinds(&got), ["done"]);
    for t in 41..100 {
        assert!(
            first
                .on_event(observe(&ms, std::slice::from_ref(&case)), t * S)
                .is_empty()
        );
    }
}

/// Shadow mode: the decision is taken and published, the witness asked, nothing moved.
#[test]
fn shadow_mode_decides_and_publishes_but_never_moves() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    for mut case in [predicted("web-0", "x"), dead("web-0", "x")] {
        case.mode = Mode::Shadow;
        let mut first = Autonomy::new(Settings::new(o[0].clone()));
        let mut all = Vec::new();
        for t in 0..60 {
            all.extend(first.on_event(observe(&ms, std::slice::from_ref(&case)), t * S));
            if let Some(Action::Witness { .. }) = all.last() {
                all.extend(first.on_event(
                    Event::Witnessed {
                        service: "web".into(),
                        instance: "web-0".into(),
                        agrees: true,
                        evidence: "agrees".into(),
                    },
                    t * S,
                ));
            }
        }
        assert!(
            !all.iter()
                .any(|a| matches!(a, Action::Migrate { .. } | Action::Resume { .. })),
            "{all:?}"
        );
        let shadows: Vec<&Report> = all
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) if r.stage == Stage::Shadow => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(shadows.len(), 1, "published once: {all:?}");
        assert!(shadows[0].detail.contains("would move web-0"));
    }
}

/// Clock skew: the machine only compares times of its own clock, so two nodes whose clocks are
/// hours apart take the same decisions at the same moments of their own runs.
#[test]
fn clock_skew_changes_nothing() {
    let o = order();
    let ms = members(&["a", "b", "c", "d", "e", "x"]);
    let case = predicted("web-0", "x");
    let run = |offset: Duration| {
        let mut m = Autonomy::new(Settings::new(o[0].clone()));
        (0..20)
            .map(|t| kinds(&m.on_event(observe(&ms, std::slice::from_ref(&case)), offset + t * S)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(Duration::ZERO), run(Duration::from_secs(7 * 3600)));
}

#[test]
fn cases_come_from_alarms_on_serving_instances_of_their_own_node_and_from_deaths() {
    let inst = |id: &str, serving, epoch| ObservedInstance {
        id: id.into(),
        service: "web".into(),
        slot: id.trim_start_matches("web-").into(),
        serving,
        healthy: true,
        lease_epoch: epoch,
    };
    let alarm = |r: &str, p| Alarm {
        resource_id: r.into(),
        probability: p,
        threshold: 0.75,
        eta_s: None,
    };
    let a = Observed {
        peer_id: "pa".into(),
        node_name: "a".into(),
        alive: true,
        // An alarm on its own instance, one on b's (forged: ignored), one below the threshold,
        // one NaN.
        alarms: vec![
            alarm("web-0", 0.9),
            alarm("web-1", 0.99),
            alarm("web-9", 0.5),
            alarm("web-0", f64::NAN),
        ],
        instances: vec![inst("web-0", true, 4), inst("web-s", false, 0)],
        ..Default::default()
    };
    let b = Observed {
        peer_id: "pb".into(),
        node_name: "b".into(),
        alive: true,
        instances: vec![inst("web-1", true, 2)],
        ..Default::default()
    };
    // c is dead: its serving web-2 is a case; its web-5 is not (b serves slot 5 again).
    let c = Observed {
        peer_id: "pc".into(),
        node_name: "c".into(),
        dead: true,
        instances: vec![
            inst("web-2", true, 1),
            inst("web-3", false, 1),
            inst("web-5", true, 1),
        ],
        ..Default::default()
    };
    let mut b = b;
    b.instances.push(ObservedInstance {
        id: "web-5-e3".into(),
        slot: "5".into(),
        ..inst("web-5", true, 3)
    });
    // d's host resource is predicted to fail: its serving instance is a case.
    let d = Observed {
        peer_id: "pd".into(),
        node_name: "d".into(),
        alive: true,
        starved: true,
        alarms: vec![alarm("d", 0.8)],
        instances: vec![inst("web-4", true, 1)],
        ..Default::default()
    };
    let unfinished = vec![
        Unfinished {
            migration: "m9".into(),
            service: "web".into(),
            instance: "web-1".into(),
            from: "b".into(),
            // Its coordinator is alive: not an orphan.
            coordinator: "pa".into(),
        },
        Unfinished {
            migration: "m8".into(),
            service: "web".into(),
            instance: "web-7".into(),
            from: "b".into(),
            coordinator: "pz".into(),
        },
    ];
    let modes = BTreeMap::from([("web".to_owned(), Mode::Shadow)]);
    let got = cases(&[a, b, c, d], &unfinished, Mode::Act, &modes);
    let summary: Vec<(String, &str, u64, Mode)> = got
        .iter()
        .map(|c| (c.instance.clone(), c.trigger.name(), c.epoch, c.mode))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("web-0".into(), "predicted", 4, Mode::Shadow),
            ("web-2".into(), "node_dead", 4, Mode::Shadow),
            ("web-4".into(), "predicted", 4, Mode::Shadow),
            ("web-7".into(), "orphaned", 4, Mode::Shadow),
        ]
    );
    assert!(matches!(
        got[2].trigger,
        Trigger::Predicted { starved: true, .. }
    ));
    assert_eq!(got[3].node, "pb");
}

/// Per case key: when first seen, whether a witness agreed, whether a move is asked without an
/// outcome yet.
type Seen = BTreeMap<(String, String), (Duration, bool, bool)>;

/// Seeded random histories: five nodes see the same (randomly changing) fleet; witnesses and the
/// executor answer at random. Checked after every step, on every node: a move is asked for only
/// by a candidate, never by the failing node, never before its turn (dwell and rank), never in
/// shadow mode, for a prediction only after a witness agreed since the case appeared, and never
/// twice without an outcome between.
#[test]
fn random_histories_keep_the_machines_invariants() {
    let peers = ["a", "b", "c", "d", "e"];
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes: Vec<Autonomy> = peers
            .iter()
            .map(|p| Autonomy::new(Settings::new(*p)))
            .collect();
        // Per node, per case key: when first seen, witness agreed, move asked without outcome.
        let mut seen: Vec<Seen> = vec![BTreeMap::new(); peers.len()];
        let mut t = Duration::ZERO;
        let mut cases_now: Vec<Case> = Vec::new();
        let mut ms = members(&peers);
        for _ in 0..1500 {
            t += Duration::from_millis(rng.random_range(100..1500));
            // The fleet changes now and then.
            if rng.random_bool(0.05) {
                let i = rng.random_range(0..peers.len());
                ms[i].alive = rng.random_bool(0.8);
                ms[i].healthy = rng.random_bool(0.9);
            }
            if rng.random_bool(0.1) {
                let n = rng.random_range(0..3);
                cases_now = (0..n)
                    .map(|k| {
                        let node = peers[rng.random_range(0..peers.len())];
                        let mut c = match rng.random_range(0..3) {
                            0 => dead(&format!("web-{k}"), node),
                            1 => predicted(&format!("web-{k}"), node),
                            _ => Case {
                                trigger: Trigger::Orphaned {
                                    migration: format!("m{k}"),
                                    coordinator: peers[rng.random_range(0..peers.len())].into(),
                                },
                                ..dead(&format!("web-{k}"), node)
                            },
                        };
                        c.epoch = rng.random_range(0..3);
                        if rng.random_bool(0.3) {
                            c.mode = Mode::Shadow;
                        }
                        c
                    })
                    .collect();
            }
            let moving: BTreeSet<String> = if rng.random_bool(0.05) {
                BTreeSet::from(["web".to_owned()])
            } else {
                BTreeSet::new()
            };
            for (n, node) in nodes.iter_mut().enumerate() {
                let me = peers[n];
                seen[n].retain(|k, _| cases_now.iter().any(|c| c.key() == *k));
                for c in &cases_now {
                    seen[n].entry(c.key()).or_insert((t, false, false));
                }
                let actions = node.on_event(
                    Event::Observe {
                        members: ms.clone(),
                        cases: cases_now.clone(),
                        moving: moving.clone(),
                    },
                    t,
                );
                for a in actions {
                    let case = match &a {
                        Action::Migrate { case } | Action::Resume { case } => case.clone(),
                        Action::Witness { case, .. } => {
                            // Answer at random, sometimes not at all.
                            if rng.random_bool(0.8) {
                                let agrees = rng.random_bool(0.6);
                                let more = node.on_event(
                                    Event::Witnessed {
                                        service: case.service.clone(),
                                        instance: case.instance.clone(),
                                        agrees,
                                        evidence: String::new(),
                                    },
                                    t,
                                );
                                assert!(more.iter().all(|a| matches!(a, Action::Report(_))));
                                if agrees {
                                    seen[n].get_mut(&case.key()).expect("seen").1 = true;
                                }
                            }
                            continue;
                        }
                        Action::Report(_) => continue,
                    };
                    let (first, witnessed, asked) = seen[n][&case.key()];
                    let ctx = format!("seed {seed}, {me} at {t:?}: {case:?}");
                    assert_ne!(case.mode, Mode::Shadow, "moved in shadow mode: {ctx}");
                    assert_ne!(case.node, me, "the failing node acted: {ctx}");
                    let m = ms.iter().find(|m| m.peer_id == me).expect("member");
                    assert!(m.alive && m.healthy, "not a candidate: {ctx}");
                    if let Trigger::Orphaned { coordinator, .. } = &case.trigger {
                        assert_ne!(coordinator, me, "the dead coordinator resumed: {ctx}");
                    }
                    let candidates: Vec<&str> = ms
                        .iter()
                        .filter(|m| m.alive && m.healthy && m.peer_id != case.node)
                        .filter(|m| match &case.trigger {
                            Trigger::Orphaned { coordinator, .. } => m.peer_id != *coordinator,
                            _ => true,
                        })
                        .map(|m| m.peer_id.as_str())
                        .collect();
                    let rank = rendezvous(&case.service, case.epoch, &candidates)
                        .iter()
                        .position(|p| *p == me)
                        .expect("ranked");
                    let dwell = if case.trigger.name() == "predicted" {
                        3 * S
                    } else {
                        Duration::ZERO
                    };
                    assert!(
                        t >= first + dwell + 10 * S * rank as u32,
                        "before its turn (rank {rank}): {ctx}"
                    );
                    if case.trigger.name() == "predicted" {
                        assert!(witnessed, "no witness agreed: {ctx}");
                    }
                    assert!(!asked, "asked twice without an outcome: {ctx}");
                    seen[n].get_mut(&case.key()).expect("seen").2 = true;
                    // The executor answers at random.
                    let outcome = match rng.random_range(0..4) {
                        0 => MoveOutcome::Started,
                        1 => MoveOutcome::Waiting {
                            reason: "budget".into(),
                        },
                        2 => MoveOutcome::Finished {
                            completed: rng.random_bool(0.5),
                            detail: String::new(),
                        },
                        _ => continue,
                    };
                    let running = outcome == MoveOutcome::Started;
                    let failed = matches!(
                        outcome,
                        MoveOutcome::Finished {
                            completed: false,
                            ..
                        }
                    );
                    node.on_event(
                        Event::Outcome {
                            service: case.service.clone(),
                            instance: case.instance.clone(),
                            outcome,
                        },
                        t,
                    );
                    if !running {
                        let e = seen[n].get_mut(&case.key()).expect("seen");
                        e.2 = false;
                        // A rolled-back move needs a new witness.
                        if failed {
                            e.1 = false;
                        }
                    }
                }
            }
        }
    }
}

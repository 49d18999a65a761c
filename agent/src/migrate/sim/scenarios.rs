//! Issue 14's scenarios in the in-process harness: real meshes, leases, executors, runtimes and
//! autonomous loops, under tokio's paused clock; each ends with the history checker.

use std::time::Duration;

use super::{AgentFleet, FleetSettings, service};

const FOUR: [&str; 4] = ["a", "b", "c", "d"];

/// Runs (checked) until `service` is served by exactly one instance, not on `node`.
async fn moved_off(f: &AgentFleet, service: &str, node: &str, limit: Duration) -> bool {
    f.until_checked(limit, |f| {
        let s = f.serving(service);
        s.len() == 1 && s[0].0 != node
    })
    .await
}

/// The node whose alarm a scenario raises: the one serving `service`, and its instance.
fn serving(f: &AgentFleet, service: &str) -> (String, String) {
    let s = f.serving(service);
    assert_eq!(s.len(), 1, "{service}: {s:?}");
    s[0].clone()
}

#[tokio::test(start_paused = true)]
async fn a_predicted_failure_is_moved_once_by_an_elected_peer() {
    let mut f = AgentFleet::start(1401, &FOUR, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.predict(&node, &instance, "web");
    let moved = moved_off(&f, "web", &node, Duration::from_secs(90)).await;
    assert!(moved, "moved off {node}: {:?}", f.instances("web"));
    // The old instance retires, the fleet settles, nothing else moves.
    f.alarm(&node, &[]);
    f.run_checked(Duration::from_secs(30)).await;
    let journals = f.journals();
    assert_eq!(journals.len(), 1, "one move: {journals:?}");
    let (coordinator, j) = &journals[0];
    assert_ne!(*coordinator, node, "the failing node does not coordinate");
    assert!(
        matches!(
            j.outcome(),
            Some(augur_orchestrate::migration::Outcome::Completed)
        ),
        "{j:?}"
    );
    let witnessed = f
        .reports()
        .iter()
        .any(|(_, r)| r.detail.contains("engine") && r.case.instance == instance);
    assert!(witnessed, "a peer's engine witnessed: {:?}", f.reports());
    assert_eq!(f.assert_history(), 1);
    f.stop().await;
}

const FIVE: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Nodes that sent a step of a move, or held a lease, as the checker saw.
fn actors(f: &AgentFleet) -> std::collections::BTreeSet<String> {
    f.steps().into_iter().map(|(n, _)| n).collect()
}

#[tokio::test(start_paused = true)]
async fn in_a_partition_the_minority_never_acts_and_the_majority_moves_the_work() {
    let mut f = AgentFleet::start(1402, &FIVE, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (x, _) = serving(&f, "web");
    let y = FIVE.iter().find(|n| **n != x).expect("another").to_string();
    let majority: Vec<&str> = FIVE
        .iter()
        .copied()
        .filter(|n| *n != x && *n != y)
        .collect();
    f.fleet.partition(&[&x, &y], &majority).await;
    // The majority sees x die and moves its work (lease-gated: the reactive path); x keeps
    // serving in the minority, which starts nothing and wins no lease.
    let moved = f
        .until_checked(Duration::from_secs(120), |f| {
            f.serving("web")
                .iter()
                .any(|(n, _)| majority.contains(&n.as_str()))
        })
        .await;
    assert!(moved, "the majority serves web: {:?}", f.instances("web"));
    f.run_checked(Duration::from_secs(20)).await;
    let acted = actors(&f);
    assert!(
        !acted.contains(&x) && !acted.contains(&y),
        "the minority acted: {acted:?}"
    );
    for n in [&x, &y] {
        assert!(f.agents[n].migrations.list().is_empty(), "{n} coordinated");
        assert!(
            f.agents[n].leases.view().held.is_empty(),
            "{n} holds a lease"
        );
    }
    // Healed: the minority learns the move, its old instance retires; one instance serves.
    f.fleet.heal(&[&x, &y], &majority).await;
    let one = f
        .until_checked(Duration::from_secs(90), |f| {
            let s = f.serving("web");
            s.len() == 1 && majority.contains(&s[0].0.as_str())
        })
        .await;
    assert!(one, "one instance after the heal: {:?}", f.instances("web"));
    f.assert_history();
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_predictions_for_a_budget_of_one_move_one_at_a_time_and_the_other_waits_visibly() {
    let mut f = AgentFleet::start(1403, &FIVE, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    f.apply("api", service("api", 8081, "live", 0)).await;
    let (wn, wi) = serving(&f, "web");
    let (an, ai) = serving(&f, "api");
    f.predict(&wn, &wi, "web");
    f.predict(&an, &ai, "api");
    let both = f
        .until_checked(Duration::from_secs(180), |f| {
            let w = f.serving("web");
            let a = f.serving("api");
            w.len() == 1 && w[0].0 != wn && a.len() == 1 && a[0].0 != an
        })
        .await;
    assert!(
        both,
        "both moved: web {:?} api {:?}",
        f.instances("web"),
        f.instances("api")
    );
    f.alarm(&wn, &[]);
    f.alarm(&an, &[]);
    f.run_checked(Duration::from_secs(20)).await;
    assert_eq!(f.assert_history(), 1, "never two leases at once");
    let waited = f.reports().iter().any(|(_, r)| {
        r.stage == augur_orchestrate::autonomy::Stage::Waiting
            && (r.detail.contains("budget") || r.detail.contains("migrations"))
    });
    assert!(waited, "one waited for the budget: {:?}", f.reports());
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_coordinator_killed_mid_move_is_taken_over_by_the_next_peer() {
    let settings = FleetSettings {
        takeover: Duration::from_secs(5),
        ..FleetSettings::default()
    };
    let mut f = AgentFleet::start(1404, &FIVE, settings).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.predict(&node, &instance, "web");
    let mid = f
        .until_checked(Duration::from_secs(90), |f| {
            f.steps().iter().any(|(_, c)| c.step == "shift")
        })
        .await;
    assert!(mid, "the move reached its shift: {:?}", f.steps());
    let coordinator = f
        .steps()
        .iter()
        .find(|(_, c)| c.step == "shift")
        .map(|(n, _)| n.clone())
        .expect("a coordinator");
    f.kill(&coordinator);
    let finished = f
        .until_checked(Duration::from_secs(120), |f| {
            f.journals()
                .iter()
                .any(|(n, j)| *n != coordinator && j.outcome().is_some())
        })
        .await;
    assert!(finished, "taken over: {:?} {:?}", f.journals(), f.reports());
    let settled = f
        .until_checked(Duration::from_secs(60), |f| f.serving("web").len() == 1)
        .await;
    assert!(settled, "web serves once: {:?}", f.instances("web"));
    let (taker, j) = f
        .journals()
        .into_iter()
        .find(|(n, _)| *n != coordinator)
        .expect("the taker's journal");
    assert_ne!(taker, node);
    eprintln!(
        "{coordinator} killed at shift; {taker} ended it: {:?}",
        j.outcome()
    );
    // Rolled back or finished, the prediction stands: the work ends up off the failing node.
    let off = moved_off(&f, "web", &node, Duration::from_secs(120)).await;
    assert!(off, "moved off {node} in the end: {:?}", f.instances("web"));
    f.assert_history();
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flapping_predictor_moves_nothing() {
    let mut f = AgentFleet::start(1405, &FOUR, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.predict(&node, &instance, "web");
    // Up for 1.5 s, down for 1.5 s, for a minute: never as long as the 3 s dwell.
    for _ in 0..20 {
        f.alarm(&node, &[&instance]);
        f.run_checked(Duration::from_millis(1500)).await;
        f.alarm(&node, &[]);
        f.run_checked(Duration::from_millis(1500)).await;
    }
    assert!(f.journals().is_empty(), "{:?}", f.journals());
    assert_eq!(f.serving_node("web"), node);
    assert_eq!(f.assert_history(), 0);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_prediction_forged_by_a_node_not_admitted_is_ignored() {
    let mut f = AgentFleet::start(1406, &FOUR, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.fleet.join_forged("x").await;
    // x claims to serve the instance, and predicts its failure; it also raises alarms on the
    // real one's node's name.
    let forged = f.fleet.mesh("x");
    forged.publish_value(augur_mesh::values::NodeValue::Instances(vec![
        augur_mesh::values::InstanceValue {
            id: instance.clone(),
            service: "web".into(),
            version: 1,
            addr: "127.0.0.1:1".into(),
            health: "healthy".into(),
            epoch: 0,
            slot: Some("0".into()),
            role: None,
            lease_epoch: 99,
            lease_seq: 1,
        },
    ]));
    forged.publish_value(augur_mesh::values::NodeValue::Health(
        augur_mesh::values::Health {
            max_failure_probability: 1.0,
            resource_id: Some(instance.clone()),
            anomaly_score: 1.0,
            above_threshold: true,
            alarms: vec![augur_orchestrate::autonomy::Alarm {
                resource_id: instance.clone(),
                probability: 1.0,
                threshold: 0.75,
                eta_s: Some(1.0),
            }],
            starved: false,
        },
    ));
    f.run_checked(Duration::from_secs(60)).await;
    assert!(f.journals().is_empty(), "{:?}", f.journals());
    assert!(f.reports().is_empty(), "{:?}", f.reports());
    for a in f.agents.values() {
        assert!(
            a.autonomy.cases().is_empty(),
            "{}: {:?}",
            a.name,
            a.autonomy.cases()
        );
    }
    assert_eq!(f.serving_node("web"), node);
    f.assert_history();
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn skewed_clocks_change_nothing() {
    // b runs 25 s ahead of the fleet, c 25 s behind: 50 s apart (the gossip layer refuses the
    // handshakes of clocks more than a minute apart, `secure::max_probe_skew_ms`).
    let mut f = AgentFleet::start_skewed(
        1407,
        &FOUR,
        FleetSettings::default(),
        &[("b", 25_000), ("c", -25_000)],
    )
    .await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.predict(&node, &instance, "web");
    let moved = moved_off(&f, "web", &node, Duration::from_secs(90)).await;
    assert!(moved, "moved off {node}: {:?}", f.instances("web"));
    f.alarm(&node, &[]);
    f.run_checked(Duration::from_secs(30)).await;
    assert_eq!(f.journals().len(), 1, "{:?}", f.journals());
    assert_eq!(f.assert_history(), 1);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn in_shadow_mode_the_decision_is_published_and_nothing_moves() {
    let settings = FleetSettings {
        shadow: true,
        ..FleetSettings::default()
    };
    let mut f = AgentFleet::start(1408, &FOUR, settings).await;
    f.apply("web", service("web", 8080, "live", 0)).await;
    let (node, instance) = serving(&f, "web");
    f.predict(&node, &instance, "web");
    f.run_checked(Duration::from_secs(60)).await;
    let shadow: Vec<_> = f
        .reports()
        .into_iter()
        .filter(|(_, r)| r.stage == augur_orchestrate::autonomy::Stage::Shadow)
        .collect();
    assert_eq!(
        shadow.len(),
        1,
        "one node publishes what it would do: {shadow:?}"
    );
    assert!(shadow[0].1.detail.contains("would move"), "{shadow:?}");
    assert_eq!(f.serving_node("web"), node);
    assert_eq!(f.assert_history(), 0);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_node_s_work_is_served_again_by_a_peer() {
    let mut f = AgentFleet::start(1409, &FOUR, FleetSettings::default()).await;
    f.apply("web", service("web", 8080, "warm_standby", 1))
        .await;
    let (node, _) = serving(&f, "web");
    f.expect.write().serving = false;
    f.kill(&node);
    let died = tokio::time::Instant::now();
    let back = f
        .until_checked(Duration::from_secs(60), |f| f.serving("web").len() == 1)
        .await;
    assert!(back, "served again: {:?}", f.instances("web"));
    eprintln!("served again {:?} after the crash", died.elapsed());
    f.expect.write().serving = true;
    f.run_checked(Duration::from_secs(20)).await;
    assert_eq!(f.journals().len(), 1, "{:?}", f.journals());
    f.assert_history();
    f.stop().await;
}

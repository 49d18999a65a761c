//! Migrations with real processes: three agents on loopback, each a lease voter (the signed fleet
//! document names them), run one replica of `augur-echo` behind every node's proxy. Under a
//! continuous load of 500 requests/s through the proxies:
//! - `augur migrate` moves it with each strategy (`live`, `warm_standby`, `blue_green`): no
//!   request fails, and every proxy ends up routing to the new instance only;
//! - a migration cancelled at each step rolls back: the old instance serves again, no request
//!   fails;
//! - the coordinating agent is SIGKILLed in the middle of each strategy and restarted: it resumes
//!   from its journal (rolls back before `retire`, finishes from it), and the service serves.
//!   No request through the other nodes' proxies fails.

use std::time::{Duration, Instant};

use augur_tests::Load;
use augur_tests::migration_fleet::{
    NODES, Setup, at_step, augur, failed, finished, free_node, fronts, healthy_standby, instances,
    migrate, one_serving, owned, setup, setup_with, start_migration, until_journal,
};
use serde_json::Value;

/// Moves `echo` with `strategy` under load through every proxy; checks no request failed and the
/// new instance alone is routed to. Returns (journal, time taken).
async fn move_under_load(s: &mut Setup, strategy: &str, extra: &[&str]) -> (Value, Duration) {
    let (id, from, addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    let mut targets = fronts(s, &NODES);
    if let Some(h) = &s.haproxy {
        let want = addr.clone();
        augur_tests::eventually("echo in HAProxy", || async {
            (h.ready_servers("echo").await.ok()? == [want.clone()]).then_some(())
        })
        .await
        .expect("HAProxy in step");
        targets.push(format!("http://{}/", h.front));
    }
    let load = Load::start(targets, 500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
    args.extend(extra);
    let journal = migrate(s, "n1", &args)
        .await
        .expect("the migration completes");
    let took = started.elapsed();
    let (new_id, to, new_addr) =
        one_serving(&s.fleet, "the new instance alone in every proxy").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "{strategy}: {id} on {from} -> {new_id} on {to} in {took:?}, epoch {}; {} requests, {} failed",
        journal["record"]["epoch"],
        outcomes.len(),
        failures.len()
    );
    assert_eq!(
        journal["record"]["phase"]["outcome"], "completed",
        "{journal}"
    );
    assert_ne!(to, from, "moved to another node");
    assert_ne!(new_addr, addr);
    assert!(
        journal["record"]["epoch"].as_u64().unwrap_or(0) > 0,
        "under a lease"
    );
    assert!(
        outcomes.len() >= 500 * 4,
        "the load ran at 500/s: {}",
        outcomes.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        !instances(&s.fleet)
            .await
            .iter()
            .any(|i| i.0 == id && i.1 == from && i.4 == "serving"),
        "the old instance no longer serves"
    );
    (journal, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_under_load_loses_no_request() {
    // With an HAProxy in step too (n1 drives it), when it is installed.
    let mut s = setup_with("live", 0, 0, true).await;
    move_under_load(&mut s, "live", &[]).await;
    // The old instance is gone from every node.
    let left: Vec<_> = instances(&s.fleet).await;
    assert_eq!(left.len(), 1, "{left:?}");
    // The same over gRPC: the migration listed, an unsigned request refused.
    let mut grpc =
        augur_proto::v1::agent_client::AgentClient::connect(s.fleet.agents["n1"].grpc_url())
            .await
            .expect("gRPC");
    let listed = grpc
        .list_migrations(augur_proto::v1::ListMigrationsRequest { id: String::new() })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.migrations.len(), 1);
    assert_eq!(listed.migrations[0].outcome, "completed");
    assert_eq!(listed.migrations[0].strategy, "live");
    let refused = grpc
        .orchestrate_migration(augur_proto::v1::OrchestrateMigrationRequest {
            document: "not a signed document".into(),
        })
        .await
        .expect_err("unsigned");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_switchover_under_load_loses_no_request_and_a_new_standby_follows() {
    let mut s = setup("warm_standby", 1, 0).await;
    let standby = healthy_standby(&s.fleet).await;
    let (_, _) = move_under_load(&mut s, "warm_standby", &[]).await;
    let (serving_id, serving_node, _) = one_serving(&s.fleet, "the former standby serves").await;
    assert_eq!(
        (serving_id.as_str(), serving_node.as_str()),
        (standby.0.as_str(), standby.1.as_str())
    );
    augur_tests::eventually("a new standby on another node", || async {
        instances(&s.fleet)
            .await
            .into_iter()
            .find(|i| i.4 == "standby" && i.3 == "healthy" && i.1 != serving_node)
    })
    .await
    .expect("a new standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_under_load_loses_no_request() {
    let mut s = setup("blue_green", 0, 0).await;
    let (journal, took) =
        move_under_load(&mut s, "blue_green", &["--soak", "2s", "--window", "3s"]).await;
    assert!(
        took >= Duration::from_secs(5),
        "soaked and kept blue for its window: {took:?}"
    );
    let steps: Vec<&str> = journal["record"]["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["step"].as_str())
        .collect();
    assert!(steps.contains(&"soak"), "{steps:?}");
}

/// Cancels a migration of `strategy` at each of `steps` in turn: each rolls back, the old
/// instance alone serves again, the new one is gone (a standby stands by again), and no request
/// under load fails. New instances take 1.5 s to pass their checks, so a surge can be caught.
async fn cancel_at_each_step(strategy: &str, standbys: u32, steps: &[&str], extra: &[&str]) {
    let mut s = setup(strategy, standbys, 1500).await;
    let (_, from, addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    let count = if standbys > 0 { 2 } else { 1 };
    let targets = fronts(&mut s, &NODES);
    let fleet = &s.fleet;
    // Every instance healthy, and in its role again: one serving, the standby (if any) standing
    // by (a rolled-back standby is retiring until its node applies the last assignment).
    let all_there = || async {
        let v = instances(fleet).await;
        let standing_by = v.iter().filter(|i| i.4 == "standby").count();
        (v.len() == count && v.iter().all(|i| i.3 == "healthy") && standing_by == count - 1)
            .then_some(())
    };
    augur_tests::eventually("every instance healthy", all_there)
        .await
        .expect("healthy");
    let load = Load::start(targets, 500);
    for (k, step) in steps.iter().enumerate() {
        let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
        args.extend(extra);
        let id = start_migration(&s, "n1", &args).await;
        if k == 0 {
            // A second move of the service while this one holds its lease: refused, with whom.
            // Asked as a live move whatever this one's strategy: a warm-standby request can also
            // be refused for want of a standby (this move is promoting it), which is not what is
            // checked here (CI once got that answer from a node whose voter had not accepted
            // this move's lease).
            let e = augur(&s, "n2", owned(&["migrate", "echo", "--strategy", "live"]))
                .await
                .expect_err("a second move at once");
            assert!(
                e.to_string().contains("409") && e.to_string().contains("being moved"),
                "{e}"
            );
        }
        until_journal(&s.fleet, "n1", &id, &format!("{id} at {step}"), |j| {
            at_step(j, step)
        })
        .await;
        augur(&s, "n1", owned(&["migrations", &id, "--cancel"]))
            .await
            .expect("cancelled");
        let j = until_journal(&s.fleet, "n1", &id, "rolled back", finished).await;
        assert_eq!(j["record"]["phase"]["outcome"], "rolled_back", "{j}");
        assert_eq!(
            j["record"]["phase"]["step"], *step,
            "rolled back from {step}: {j}"
        );
        let (_, node, serving) = one_serving(&s.fleet, "the old instance alone serves again").await;
        assert_eq!(
            (node.as_str(), serving.as_str()),
            (from.as_str(), addr.as_str()),
            "{strategy} after {step}"
        );
        augur_tests::eventually("the new instance gone (or standing by again)", all_there)
            .await
            .expect("dropped");
    }
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "{strategy} cancelled at {steps:?}: {} requests, {} failed",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        outcomes.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_cancelled_at_each_step_rolls_back_and_loses_no_request() {
    cancel_at_each_step("live", 0, &["surge", "shift", "retire"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_switchover_cancelled_at_each_step_rolls_back_and_loses_no_request() {
    // The standby is healthy already: the surge passes at once, nothing to catch there.
    cancel_at_each_step("warm_standby", 1, &["shift", "retire"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_cancelled_at_each_step_rolls_back_and_loses_no_request() {
    cancel_at_each_step(
        "blue_green",
        0,
        &["surge", "soak", "shift", "retire"],
        &["--soak", "3s", "--window", "4s"],
    )
    .await;
}

/// SIGKILLs the coordinator (a node running no `echo`) when the migration reaches `step`,
/// restarts it, and checks the migration ends as its journal says it must, with the service
/// serving and no request through the other proxies failing.
async fn kill_coordinator_at(strategy: &str, standbys: u32, step: &str, extra: &[&str]) {
    let mut s = setup(strategy, standbys, 0).await;
    let (_, from, old_addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    if standbys > 0 {
        healthy_standby(&s.fleet).await;
    }
    let coordinator = free_node(&s.fleet).await;
    let others: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| **n != coordinator)
        .collect();
    let load = Load::start(fronts(&mut s, &others), 500);
    // The move goes to the third node: the coordinator's death would take an instance on it
    // along (its host is gone), which is not what this test is about.
    let target = others
        .iter()
        .find(|n| **n != from)
        .expect("a third node")
        .to_string();
    let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
    if standbys == 0 {
        args.extend(["--to", target.as_str()]);
    }
    args.extend(extra);
    let id = start_migration(&s, &coordinator, &args).await;
    until_journal(
        &s.fleet,
        &coordinator,
        &id,
        &format!("{id} at {step}"),
        |j| at_step(j, step),
    )
    .await;
    let t0 = Instant::now();
    s.fleet.kill(&coordinator).await.expect("killed");
    s.fleet.start(&coordinator).await.expect("restarted");
    let restarted = t0.elapsed();
    let j = until_journal(
        &s.fleet,
        &coordinator,
        &id,
        "resumed and finished",
        finished,
    )
    .await;
    let want = if matches!(step, "retire" | "stop") {
        "completed"
    } else {
        "rolled_back"
    };
    assert_eq!(
        j["record"]["phase"]["outcome"], want,
        "{strategy} killed at {step}: {j}"
    );
    let resumed = j["record"]["log"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["step"] == "resume");
    assert!(resumed, "resumed from the journal: {j}");
    let (_, _, addr) = one_serving(&s.fleet, "echo serves after the restart").await;
    if want == "rolled_back" {
        assert_eq!(addr, old_addr, "the old instance serves again");
    } else {
        assert_ne!(addr, old_addr, "the new instance serves");
    }
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    // When the failures were, after the kill (none expected).
    let when: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.started.saturating_duration_since(t0).as_secs_f64())
        .collect();
    eprintln!(
        "{strategy}, coordinator killed at {step}: {want}; {} requests, {} failed (from {:?} to {:?} s after the kill; restarted after {restarted:?})",
        outcomes.len(),
        failures.len(),
        when.first(),
        when.last(),
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_whose_coordinator_is_killed_mid_way_resumes_from_its_journal() {
    kill_coordinator_at("live", 0, "shift", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_killed_at_retire_finishes_after_the_restart() {
    kill_coordinator_at("live", 0, "retire", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_switchover_whose_coordinator_is_killed_resumes() {
    kill_coordinator_at("warm_standby", 1, "shift", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_whose_coordinator_is_killed_in_its_soak_rolls_back() {
    kill_coordinator_at("blue_green", 0, "soak", &["--soak", "5s", "--window", "2s"]).await;
}

/// A bad release under `blue_green`: applying a new version restarts nothing; a migration brings
/// green up on it beside blue; green passes its health checks but answers 500 to everything else;
/// once traffic moves to it the error rate through the coordinator's proxy rises, the switch
/// goes back to blue on its own, and blue serves every request again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_release_that_fails_in_its_window_switches_back_by_itself() {
    let mut s = setup("blue_green", 0, 0).await;
    let (blue_id, from, blue_addr) = one_serving(&s.fleet, "blue served through every proxy").await;
    let load = Load::start(fronts(&mut s, &NODES), 300);
    // Version 2: a bad release.
    let bad = augur_tests::migration_fleet::spec(s.port, "blue_green", 0, 0).replace(
        "env = { AUGUR_ECHO_READY_AFTER_MS = \"0\" }",
        "env = { AUGUR_ECHO_READY_AFTER_MS = \"0\", AUGUR_ECHO_STATUS = \"500\" }",
    );
    let file = s.fleet.dir.path().join("echo-v2.toml");
    std::fs::write(&file, bad).expect("spec");
    augur_tests::apply_service(&s.fleet.agents["n1"].url(""), &file, &s.cred).expect("applied");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (still, _, _) = one_serving(&s.fleet, "blue still serves after the new version").await;
    assert_eq!(
        still, blue_id,
        "a new version restarts nothing under blue_green"
    );
    let e = migrate(
        &s,
        "n1",
        &[
            "--strategy",
            "blue_green",
            "--from",
            &from,
            "--soak",
            "1s",
            "--window",
            "8s",
        ],
    )
    .await
    .expect_err("the release is rolled back");
    assert!(e.to_string().contains("error rate"), "{e}");
    let (_, node, addr) = one_serving(&s.fleet, "blue alone serves again").await;
    assert_eq!(
        (node.as_str(), addr.as_str()),
        (from.as_str(), blue_addr.as_str())
    );
    augur_tests::eventually("green gone", || async {
        (instances(&s.fleet).await.len() == 1).then_some(())
    })
    .await
    .expect("dropped");
    let switched_back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started > switched_back)
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    let during = failed(&outcomes).len();
    eprintln!(
        "blue_green bad release: {} requests, {during} failed while green served, {} after the switch back",
        outcomes.len(),
        after.len()
    );
    assert!(
        during > 0,
        "green's errors were seen by clients before the switch back"
    );
    assert!(after.is_empty(), "{after:?}");
}

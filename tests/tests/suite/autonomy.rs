//! Autonomy with real processes: three agents on loopback (every one a lease voter), one replica
//! of `augur-echo` behind every node's proxy under a continuous load. The instance's own
//! telemetry (pushed to its node's ingest API, as a workload does) drifts towards a limit; nobody
//! asks for anything: the node's engine predicts the failure, a peer elected by rendezvous hash
//! confirms it with its own engine on the trend, wins the lease and moves the instance away, and
//! no request fails.

use std::time::Duration;

use augur_tests::Load;
use augur_tests::migration_fleet::{
    NODES, at_step, failed, free_node, fronts, one_serving, setup, setup_nodes_config,
    start_migration, until_journal,
};
use serde_json::Value;

/// Pushes, every second until `stop`, ten samples of `mem_used_ratio` for `instance` (100 ms
/// apart, stamped with the time they describe), rising by `step` a sample from `from`.
fn push_ramp(
    url: String,
    instance: String,
    from: f64,
    step: f64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = augur_tests::now_us();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for batch in 0i64.. {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut body = String::new();
            for i in 0..10 {
                let j = batch * 10 + i;
                let ts = augur_tests::rfc3339(start + j * 100_000);
                let v = (from + step * j as f64).min(0.99);
                body.push_str(&format!(
                    "{{\"ts\":\"{ts}\",\"resource_id\":\"{instance}\",\"resource_type\":\"echo\",\"metrics\":{{\"mem_used_ratio\":{v}}}}}\n"
                ));
            }
            let _ = augur_tests::http().post(&url).body(body).send().await;
        }
    })
}

/// Every node's `autonomy.decision` events about `instance`.
async fn decisions(s: &augur_tests::migration_fleet::Setup, instance: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for n in NODES {
        let Ok(v) = s.fleet.agents[n].get_json("/v1/events?limit=1000").await else {
            continue;
        };
        for e in v["events"].as_array().into_iter().flatten() {
            if e["topic"] == "autonomy.decision"
                && e["detail"]["case"]["instance"] == instance
                && !out.contains(e)
            {
                out.push(e.clone());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predicted_failure_moves_the_instance_away_by_itself_and_loses_no_request() {
    // Ten samples a second and a 30 s horizon: a 5-minute horizon at one sample a second, ten
    // times faster.
    let mut s = setup_nodes_config(
        &NODES,
        "live",
        0,
        0,
        false,
        "[resource_types.echo]\nhorizon = \"30s\"\n",
    )
    .await;
    let (id, from, _) = one_serving(&s.fleet, "echo served through every proxy").await;
    let load = Load::start(fronts(&mut s, &NODES), 200);
    let url = s.fleet.agents[from.as_str()].url("/v1/telemetry");
    // The instance's memory climbs towards the limit (0.95) from 0.3, ten samples a second: it
    // would reach it after about 65 s.
    let stop = tokio_util::sync::CancellationToken::new();
    let pusher = push_ramp(url, id.clone(), 0.3, 0.001, stop.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let moved = loop {
        let mut found = None;
        for n in NODES {
            let Ok(v) = s.fleet.agents[n].get_json("/v1/migrations").await else {
                continue;
            };
            let done = v.as_array().into_iter().flatten().find(|j| {
                j["id"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("auto-echo-"))
                    && j["record"]["phase"]["outcome"] == "completed"
            });
            if let Some(j) = done {
                found = Some((n.to_owned(), j.clone()));
            }
        }
        if let Some(f) = found {
            break f;
        }
        if tokio::time::Instant::now() >= deadline {
            for n in NODES {
                eprintln!(
                    "{n}: autonomy {:?}\nmembers {:?}",
                    s.fleet.agents[n].get_json("/v1/autonomy").await.ok(),
                    s.fleet.agents[n]
                        .get_json("/v1/members")
                        .await
                        .ok()
                        .map(|v| v.to_string())
                );
            }
            panic!(
                "no autonomous migration of echo completed within 120 s: {:?}",
                decisions(&s, &id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.cancel();
    let _ = pusher.await;
    let (coordinator, journal) = moved;
    let (new_id, to, _) = one_serving(&s.fleet, "the new instance alone in every proxy").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "autonomy: {id} on {from} -> {new_id} on {to}, coordinated by {coordinator}; {} requests, {} failed",
        outcomes.len(),
        failures.len()
    );
    assert_ne!(coordinator, from, "the failing node does not coordinate");
    assert_ne!(to, from, "moved off the failing node");
    assert_eq!(journal["record"]["plan"]["old"]["instance"], id.as_str());
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    // The story, as the fleet's events tell it: elected, witnessed (this node's own engine on
    // the trend agreed), moving, done; all by the coordinator.
    let story = decisions(&s, &id).await;
    let stages: Vec<&str> = story
        .iter()
        .filter_map(|e| e["detail"]["stage"].as_str())
        .collect();
    for want in ["elected", "confirmed", "done"] {
        assert!(stages.contains(&want), "{want} missing: {stages:?}");
    }
    let confirmed = story
        .iter()
        .find(|e| e["detail"]["stage"] == "confirmed")
        .expect("confirmed");
    assert!(
        confirmed["detail"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("engine")),
        "{confirmed}"
    );
    // The failing instance's history says it was moved (training does not take the prevented
    // failure for health).
    let history = s.fleet.agents[from.as_str()]
        .get_json(&format!("/v1/resources/{id}/telemetry?since=10m"))
        .await
        .expect("its telemetry");
    assert!(
        history["records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["event"] == "migration"),
        "a migration event in {id}'s history"
    );
}

/// Shadow mode (the fleet document's `[autonomy] mode = "shadow"`): the same drifting telemetry
/// is decided on and published as what would be done, and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_shadow_mode_the_decision_is_published_and_nothing_moves() {
    let s = setup_nodes_config(
        &NODES,
        "live",
        0,
        0,
        false,
        "[resource_types.echo]\nhorizon = \"30s\"\n",
    )
    .await;
    let (id, from, addr) = one_serving(&s.fleet, "echo served").await;
    // The fleet document again, version 2, in shadow mode.
    let mut voters = Vec::new();
    for n in NODES {
        let st = s.fleet.agents[n]
            .get_json("/v1/status")
            .await
            .expect("status");
        voters.push(format!("\"{}\"", st["peer_id"].as_str().expect("peer id")));
    }
    let doc = s.fleet.dir.path().join("fleet-shadow.toml");
    std::fs::write(
        &doc,
        format!(
            "[leases]\nvoters = [{}]\nhold_down = \"1s\"\nduration = \"6s\"\n[autonomy]\nmode = \"shadow\"\n",
            voters.join(", ")
        ),
    )
    .expect("document");
    augur_tests::augur_json(&[
        "fleet",
        "apply",
        doc.to_str().expect("path"),
        "--credential",
        s.cred.to_str().expect("path"),
        "--api",
        &s.fleet.agents["n1"].url(""),
        "--json",
    ])
    .expect("applied");
    for n in NODES {
        augur_tests::eventually("the shadow document everywhere", || async {
            let v = s.fleet.agents[n].get_json("/v1/autonomy").await.ok()?;
            (v["settings"]["mode"] == "shadow").then_some(())
        })
        .await
        .expect("shadow");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let url = s.fleet.agents[from.as_str()].url("/v1/telemetry");
    let pusher = push_ramp(url, id.clone(), 0.3, 0.001, stop.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let shadow = loop {
        let story = decisions(&s, &id).await;
        if let Some(e) = story.iter().find(|e| e["detail"]["stage"] == "shadow") {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no shadow decision within 120 s: {story:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // A little longer: still nothing moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let _ = pusher.await;
    assert!(
        shadow["detail"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("would move {id}"))),
        "{shadow}"
    );
    for n in NODES {
        let m = s.fleet.agents[n]
            .get_json("/v1/migrations")
            .await
            .expect("migrations");
        assert_eq!(
            m.as_array().map(Vec::len),
            Some(0),
            "{n} moved something: {m}"
        );
    }
    let (still, _, still_addr) = one_serving(&s.fleet, "echo still where it was").await;
    assert_eq!((still, still_addr), (id, addr));
}

/// A coordinator killed mid-move and never restarted: its move's journal is with a majority of
/// the voters; once it is declared dead, the peer elected for the orphaned move takes over its
/// lease (the old one ends on the voters' timers) and finishes or undoes the move from the
/// journal. The service is served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_dies_mid_move_is_taken_over_by_a_peer() {
    let mut s = setup("live", 0, 0).await;
    let (_, from, _) = one_serving(&s.fleet, "echo served through every proxy").await;
    let coordinator = free_node(&s.fleet).await;
    let others: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| **n != coordinator)
        .collect();
    let load = Load::start(fronts(&mut s, &others), 200);
    let target = others
        .iter()
        .find(|n| **n != from)
        .expect("a third node")
        .to_string();
    let id = start_migration(
        &s,
        &coordinator,
        &["--strategy", "live", "--from", &from, "--to", &target],
    )
    .await;
    until_journal(&s.fleet, &coordinator, &id, "at shift", |j| {
        at_step(j, "shift")
    })
    .await;
    s.fleet.kill(&coordinator).await.expect("killed");
    // A peer takes the move over and ends it (before retire: rolled back).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (successor, journal) = loop {
        let mut found = None;
        for n in &others {
            if let Ok(j) = s.fleet.agents[*n]
                .get_json(&format!("/v1/migrations/{id}"))
                .await
                && j["record"]["phase"]["outcome"].is_string()
            {
                found = Some((n.to_string(), j));
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took {id} over within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        journal["record"]["phase"]["outcome"], "rolled_back",
        "{journal}"
    );
    // As a surviving node sees it (the dead coordinator may be the usual observer, n1).
    let observer = &s.fleet.agents[others[0]];
    augur_tests::eventually("the old instance serves again", || async {
        let v = observer.get_json("/v1/services").await.ok()?;
        let serving: Vec<&Value> = v["instances"]
            .as_array()?
            .iter()
            .filter(|i| {
                i["service"] == "echo"
                    && i["health"] == "healthy"
                    && i["role"].as_str().unwrap_or("serving") == "serving"
            })
            .collect();
        (serving.len() == 1 && serving[0]["node"] == from.as_str()).then_some(())
    })
    .await
    .expect("the old instance serves again");
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "takeover: {id} by {successor} after {coordinator} died; {} requests, {} failed",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

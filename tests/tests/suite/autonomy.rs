//! Autonomy with real processes: three agents on loopback (every one a lease voter), one replica
//! of `augur-echo` behind every node's proxy under a continuous load. The instance's own
//! telemetry (pushed to its node's ingest API, as a workload does) drifts towards a limit; nobody
//! asks for anything: the node's engine predicts the failure, a peer elected by rendezvous hash
//! confirms it with its own engine on the trend, wins the lease and moves the instance away, and
//! no request fails.

use std::time::Duration;

use augur_tests::Load;
use augur_tests::migration_fleet::{NODES, failed, fronts, one_serving, setup_nodes_config};
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
}

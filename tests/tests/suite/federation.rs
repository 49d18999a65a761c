//! Federated models between real agents (issue 17): each node trains on its own history and shares
//! its models; its peers merge them with their own and adopt the merge only if it does no worse on
//! their own held-out history; a node that joins later with too little history of its own starts
//! from the fleet's models (cold start).

use augur_tests::{LocalFleet, augur_bin, eventually, http, now_us, rfc3339};
use serde_json::Value;

/// `n` one-second samples of a `service` resource: a sine of the node's own period and phase with
/// a little noise, as each node's workload would differ.
fn service_lines(resource: &str, start_us: i64, n: usize, period: f64, seed: u64) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000) as f64 / 1000.0 - 0.5
    };
    let mut body = String::new();
    for i in 0..n {
        let ts = rfc3339(start_us + i as i64 * 1_000_000);
        let x = 50.0 + 20.0 * (std::f64::consts::TAU * i as f64 / period).sin() + noise();
        body.push_str(&format!(
            "{{\"ts\":\"{ts}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{\"latency_ms\":{x:.3}}}}}\n"
        ));
    }
    body
}

fn train_now(api: &str) {
    let out = std::process::Command::new(augur_bin().expect("binary"))
        .args(["models", "train", "--json", "--api", api])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn push(api: &str, body: String) {
    let resp = http()
        .post(format!("{api}/v1/telemetry"))
        .body(body)
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
}

/// The federation decisions a node lists.
async fn decisions(fleet: &LocalFleet, node: &str) -> Vec<Value> {
    fleet.agents[node]
        .get_json("/v1/models")
        .await
        .ok()
        .and_then(|v| v["federation"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_merge_each_others_models_and_a_new_node_starts_from_the_fleets() {
    let mut fleet = LocalFleet::new().expect("fleet");
    fleet.form(&["n1", "n2", "n3"]).await.expect("fleet forms");
    // Updates travel over libp2p, whose admission comes after gossip's.
    fleet.until_connected().await.expect("libp2p connections");

    // Each node's own history: 900 s of its service, a period of its own.
    let start = now_us() - 1_000 * 1_000_000;
    for (k, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let api = fleet.agents[*n].url("");
        let period = 40.0 + 15.0 * k as f64;
        push(
            &api,
            service_lines(&format!("svc-{n}"), start, 900, period, k as u64 + 1),
        )
        .await;
    }
    for n in ["n1", "n2", "n3"] {
        train_now(&fleet.agents[n].url(""));
    }
    // Every node hears from both peers and decides on a merged model (adopted or, worse on its
    // own history, rejected): either way the decision names all three contributors.
    for n in ["n1", "n2", "n3"] {
        let d = eventually(&format!("{n} decides on a merged model"), || async {
            let all = decisions(&fleet, n).await;
            all.into_iter().rev().find(|d| {
                d["lineage"]["contributors"]
                    .as_array()
                    .is_some_and(|c| c.len() == 3)
            })
        })
        .await
        .expect("a decision with three contributors");
        let outcome = d["outcome"].as_str().expect("outcome");
        // `adopted_parts`: the network was worse here, but the forest (or another part) was
        // kept.
        assert!(
            ["adopted", "rejected", "adopted_parts"].contains(&outcome),
            "{d}"
        );
        let (local, merged) = (
            d["lineage"]["mse_local"].as_f64().expect("judged locally"),
            d["lineage"]["mse_candidate"].as_f64().expect("judged"),
        );
        assert_eq!(
            outcome == "adopted",
            merged <= local * (1.0 + 1e-9),
            "adopted exactly when no worse here: {d}"
        );
        let authors: Vec<&str> = d["lineage"]["contributors"]
            .as_array()
            .expect("contributors")
            .iter()
            .filter_map(|c| c["author"].as_str())
            .collect();
        assert!(authors.contains(&"self"), "{authors:?}");
        // The forest is merged too (this node's trees and both peers'), and kept exactly when it
        // tells a jump from the usual on this node's history no worse than its own.
        if outcome == "adopted" {
            let f = &d["lineage"]["forest"];
            assert_eq!(f["contributors"], 3, "{d}");
            let (l, c) = (
                f["local"].as_f64().expect("judged locally"),
                f["candidate"].as_f64().expect("judged"),
            );
            assert_eq!(f["adopted"] == true, c >= l - 0.005, "{d}");
        }
    }
    // Each decision is a fleet event, seen by the other nodes too.
    eventually("n1 lists the fleet's model decisions as events", || async {
        let v: Value = fleet.agents["n1"]
            .get_json("/v1/events?topic=model")
            .await
            .ok()?;
        let origins: std::collections::BTreeSet<String> = v["events"]
            .as_array()?
            .iter()
            .filter(|e| e["topic"] == "model.decision")
            .filter_map(|e| e["node_name"].as_str().map(str::to_owned))
            .collect();
        (origins.len() == 3).then_some(())
    })
    .await
    .expect("model.decision events from all three nodes");
    let metrics = fleet.agents["n1"]
        .get_text("/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains("augur_mesh_model_updates_opened_total"),
        "{metrics}"
    );

    // n4 joins with two minutes of its service: too little to train on (300 samples).
    fleet.start("n4").await.expect("n4 starts");
    let api = fleet.agents["n4"].url("");
    push(
        &api,
        service_lines("svc-n4", now_us() - 130 * 1_000_000, 120, 50.0, 9),
    )
    .await;
    let d = eventually("n4 starts from the fleet's models", || async {
        decisions(&fleet, "n4")
            .await
            .into_iter()
            .find(|d| d["outcome"] == "cold_start")
    })
    .await
    .expect("a cold start");
    assert_eq!(d["lineage"]["cold_start"], true);
    assert_eq!(d["lineage"]["forest"]["adopted"], true, "{d}");
    assert!(
        d["lineage"]["forest"]["contributors"]
            .as_u64()
            .is_some_and(|c| c >= 2),
        "{d}"
    );
    assert!(
        d["lineage"]["contributors"]
            .as_array()
            .is_some_and(|c| c.len() >= 2 && c.iter().all(|x| x["author"] != "self")),
        "{d}"
    );
    let models = fleet.agents["n4"]
        .get_json("/v1/models")
        .await
        .expect("models");
    let service = models["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["resource_type"] == "service"))
        .cloned()
        .expect("n4 holds a service model");
    assert!(service["federation"]["cold_start"] == true, "{service}");
    // Its predictions are made with the fleet's model from its first samples on.
    let p = eventually("n4 predicts svc-n4 with the merged model", || async {
        let v: Value = fleet.agents["n4"]
            .get_json("/predict_failure?resource_id=svc-n4")
            .await
            .ok()?;
        v["model_version"]
            .as_str()
            .is_some_and(|m| m.contains("+service.v"))
            .then_some(v)
    });
    // A new sample triggers a prediction with the installed model.
    push(
        &api,
        service_lines("svc-n4", now_us() - 5 * 1_000_000, 3, 50.0, 10),
    )
    .await;
    let p = p.await.expect("a prediction with the fleet's model");
    assert!(p["failure_probability"].is_number(), "{p}");
}

fn augur(args: &[&str], api: &str) -> Value {
    let out = std::process::Command::new(augur_bin().expect("binary"))
        .args(args)
        .args(["--json", "--api", api])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "augur {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rolls_back_pins_across_a_restart_and_unpins() {
    use augur_tests::{AgentOptions, AgentProcess};
    let config = "[collect]\nhost = false\n".to_owned();
    let mut agent = AgentProcess::start(AgentOptions {
        config: config.clone(),
        ..Default::default()
    })
    .await
    .expect("starts");
    let api = agent.url("");
    push(
        &api,
        service_lines("svc-1", now_us() - 1_000 * 1_000_000, 900, 45.0, 3),
    )
    .await;
    let version = |v: &Value| -> Option<u64> {
        v["models"]
            .as_array()?
            .iter()
            .find(|m| m["resource_type"] == "service")?["version"]
            .as_u64()
    };
    for want in [1, 2] {
        train_now(&api);
        let v = augur(&["models"], &api);
        assert_eq!(version(&v), Some(want), "{v}");
    }
    // Back to v1, pinned: a training leaves it in place.
    let r = augur(&["models", "rollback", "service"], &api);
    assert_eq!(
        (r["version"].as_u64(), r["pinned"].as_bool()),
        (Some(1), Some(true)),
        "{r}"
    );
    let t = augur(&["models", "train"], &api);
    let skipped = t["outcomes"][0]["skipped"].as_str().unwrap_or_default();
    assert!(skipped.contains("pinned at v1"), "{t}");
    let v = augur(&["models"], &api);
    assert_eq!(
        (version(&v), v["pinned"]["service"].as_u64()),
        (Some(1), Some(1))
    );
    // The pin survives a restart.
    let temp = agent.take_temp();
    let data = agent.data_dir.clone();
    agent.terminate().await.expect("stops");
    let agent = AgentProcess::start(AgentOptions {
        config,
        data_dir: Some(data),
        ..Default::default()
    })
    .await
    .expect("restarts");
    let api = agent.url("");
    let v = augur(&["models"], &api);
    assert_eq!(
        (version(&v), v["pinned"]["service"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // A version that is not kept is refused with what is.
    let out = std::process::Command::new(augur_bin().expect("binary"))
        .args(["models", "pin", "service", "99", "--api", &api])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no version 99"),
        "{err}"
    );
    // Unpinned, trainings replace it again.
    let u = augur(&["models", "unpin", "service"], &api);
    assert_eq!(u["pinned"], false);
    train_now(&api);
    let v = augur(&["models"], &api);
    assert_eq!(version(&v), Some(3), "{v}");
    drop(temp);
}

//! Live failure predictions: what is pushed is predicted on, over HTTP, gRPC and the CLI, and a
//! restarted agent predicts again from its stored history.

use augur_proto::v1::PredictFailureRequest;
use augur_proto::v1::agent_client::AgentClient;
use augur_tests::{AgentOptions, AgentProcess, augur_bin, eventually, http, now_us, rfc3339};
use serde_json::Value;

/// A memory leak on db-1 (0.5 rising 0.001 a second, 0.95 reached at t = 450 s) pushed up to
/// t = 400 s, and a steady web-1, all 1 s apart and ending now.
fn leak_and_steady() -> String {
    let start = now_us() - 401 * 1_000_000;
    let mut body = String::new();
    for t in 0..=400i64 {
        let ts = rfc3339(start + t * 1_000_000);
        body.push_str(&format!(
            "{{\"ts\":\"{ts}\",\"resource_id\":\"db-1\",\"resource_type\":\"service\",\"metrics\":{{\"mem_used_ratio\":{:.4},\"queue_len\":3}}}}\n",
            0.5 + 0.001 * t as f64
        ));
        body.push_str(&format!(
            "{{\"ts\":\"{ts}\",\"resource_id\":\"web-1\",\"resource_type\":\"service\",\"metrics\":{{\"mem_used_ratio\":{},\"queue_len\":3}}}}\n",
            if t % 2 == 0 { 0.41 } else { 0.39 }
        ));
    }
    body
}

/// `augur models train --json` against `agent`: its answer.
fn train_now(agent: &AgentProcess) -> Value {
    let out = std::process::Command::new(augur_bin().expect("binary"))
        .args(["models", "train", "--json", "--api", &agent.url("")])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

async fn prediction(agent: &AgentProcess, id: &str) -> Option<Value> {
    let v = agent
        .get_json(&format!("/predict_failure?resource_id={id}"))
        .await
        .ok()?;
    v.get("failure_probability").is_some().then_some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_leak_is_predicted_and_survives_a_restart() {
    let config = "[collect]\nhost = false\n".to_owned();
    let mut agent = AgentProcess::start(AgentOptions {
        config: config.clone(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let temp = agent.take_temp();
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(leak_and_steady())
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 200);

    let db = eventually("db-1's prediction at t = 400 s", || async {
        let v = prediction(&agent, "db-1").await?;
        (v["ts"].as_str()? >= rfc3339(now_us() - 2_000_000).as_str()).then_some(v)
    })
    .await
    .expect("prediction");
    assert!(
        db["failure_probability"].as_f64().expect("p") >= 0.75,
        "{db}"
    );
    assert_eq!(db["above_threshold"], true);
    assert_eq!(db["drivers"][0], "mem_used_ratio");
    let eta = db["eta_s"].as_f64().expect("an ETA");
    assert!(
        (10.0..=120.0).contains(&eta),
        "eta {eta} for a crossing 50 s away"
    );
    assert_eq!(db["horizon_s"], 300.0);

    let web = prediction(&agent, "web-1").await.expect("web-1 predicted");
    assert!(
        web["failure_probability"].as_f64().expect("p") < 0.05,
        "{web}"
    );
    assert_eq!(web["above_threshold"], false);

    // Unknown resources are 404, not a zero probability; POST works too.
    let resp = http()
        .get(agent.url("/predict_failure?resource_id=nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 404);
    let resp = http()
        .get(agent.url("/predict_failure"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = http()
        .post(agent.url("/predict_failure"))
        .json(&serde_json::json!({"resource_id": "db-1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let all = agent.get_json("/v1/predictions").await.expect("list");
    assert_eq!(
        all["predictions"][0]["resource_id"], "db-1",
        "riskiest first"
    );

    // gRPC.
    let mut client = AgentClient::connect(agent.grpc_url())
        .await
        .expect("connects");
    let p = client
        .predict_failure(PredictFailureRequest {
            resource_id: "db-1".into(),
        })
        .await
        .expect("predicts")
        .into_inner();
    assert!(p.above_threshold && p.failure_probability >= 0.75, "{p:?}");
    assert_eq!(
        p.drivers.first().map(String::as_str),
        Some("mem_used_ratio")
    );
    let missing = client
        .predict_failure(PredictFailureRequest {
            resource_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // CLI.
    let out = std::process::Command::new(augur_bin().expect("binary"))
        .args(["predict", "db-1", "--json", "--api", &agent.url("")])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["resource_id"], "db-1");

    // A restart predicts again from stored history, before any new sample.
    let data_dir = agent.data_dir.clone();
    assert!(agent.terminate().await.expect("stops").success());
    assert!(
        data_dir.join("models/engines.cbor").exists(),
        "engines saved on shutdown"
    );
    let mut again = AgentProcess::start(AgentOptions {
        data_dir: Some(data_dir),
        config,
        ..Default::default()
    })
    .await
    .expect("restarts");
    again
        .wait_log("prediction engines restored")
        .await
        .expect("restored from the saved models");
    let warm = eventually("a prediction after restart", || prediction(&again, "db-1"))
        .await
        .expect("warm start");
    assert!(
        warm["failure_probability"].as_f64().expect("p") >= 0.75,
        "{warm}"
    );
    drop(temp);
}

/// A sine on cpu and a steady memory ratio for `n` seconds ending `end_us`.
fn sine(resource: &str, end_us: i64, n: i64) -> String {
    let start = end_us - n * 1_000_000;
    (0..n)
        .map(|t| {
            format!(
                "{{\"ts\":\"{}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{\"cpu\":{:.3},\"mem_used_ratio\":0.5}}}}\n",
                rfc3339(start + t * 1_000_000),
                50.0 + 10.0 * (t as f64 * 0.1).sin()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_train_on_request_are_used_and_reload_after_a_restart() {
    let config = "[collect]\nhost = false\n".to_owned();
    let mut agent = AgentProcess::start(AgentOptions {
        config: config.clone(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let temp = agent.take_temp();
    let now = now_us();
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(sine("db-1", now - 10_000_000, 900))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 200);
    let listed = agent.get_json("/v1/models").await.expect("models");
    assert_eq!(
        listed["models"],
        serde_json::json!([]),
        "none before training"
    );

    // The CLI asks the agent to train now and reports the outcome.
    let v = train_now(&agent);
    let outcome = &v["outcomes"][0];
    assert_eq!(outcome["resource_type"], "service");
    assert_eq!(outcome["trained"]["version"], 1, "{v}");
    assert_eq!(outcome["trained"]["rows"], 900);
    assert!(outcome["trained"]["mlp"]["validation_windows"].as_u64() > Some(0));
    let listed = agent.get_json("/v1/models").await.expect("models");
    assert_eq!(listed["models"][0]["version"], 1);
    assert!(agent.data_dir.join("models/service/v000001.cbor").exists());
    assert!(agent.data_dir.join("models/service/v000001.json").exists());

    // The next sample is predicted with them.
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(sine("db-1", now_us(), 1))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 200);
    let engine = listed["engine"]
        .as_str()
        .expect("engine version")
        .to_owned();
    let labelled = format!("{engine}+service.v1");
    eventually("a prediction by the trained models", || async {
        let v = prediction(&agent, "db-1").await?;
        (v["model_version"] == labelled.as_str()).then_some(())
    })
    .await
    .expect("trained models in use");

    // A restart loads them from disk.
    let data_dir = agent.data_dir.clone();
    assert!(agent.terminate().await.expect("stops").success());
    let again = AgentProcess::start(AgentOptions {
        data_dir: Some(data_dir),
        config,
        ..Default::default()
    })
    .await
    .expect("restarts");
    let listed = again.get_json("/v1/models").await.expect("models");
    assert_eq!(listed["models"][0]["version"], 1);
    assert_eq!(listed["engine"], engine.as_str());
    drop(temp);
}

/// `n` samples of `resource`'s latency, one a second ending `end_us`: steady about 40 ms, then
/// (from `climb_at` on) climbing 2.5 ms a second; with a failure labelled at the end when `fails`.
fn latency(resource: &str, end_us: i64, n: i64, climb_at: i64, fails: bool) -> String {
    let start = end_us - n * 1_000_000;
    let mut body: String = (0..n)
        .map(|t| {
            let wobble = [0.0, 1.5, -1.0, 0.5, -1.5, 1.0, -0.5][(t % 7) as usize];
            let ms = 40.0 + wobble + 2.5 * (t - climb_at).max(0) as f64;
            format!(
                "{{\"ts\":\"{}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{\"latency_ms\":{ms:.2},\"mem_used_ratio\":0.5}}}}\n",
                rfc3339(start + t * 1_000_000),
            )
        })
        .collect();
    if fails {
        body.push_str(&format!(
            "{{\"ts\":\"{}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{}},\"event\":\"failure\"}}\n",
            rfc3339(end_us - 500_000)
        ));
    }
    body
}

/// Issue 15: a failure mode on a metric nobody gave a limit (latency) is learned by a real agent
/// from its first labelled occurrence, shown by `augur models`, and predicted ahead on another
/// resource of the type, where the same agent without training predicts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mode_without_a_limit_is_learned_from_its_first_occurrence() {
    let agent = AgentProcess::start(AgentOptions {
        config: "[collect]\nhost = false\n".to_owned(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    // api-1 fails once its latency reaches about 790 ms, 300 s into a climb; api-2 stays well.
    let end = now_us() - 1_200_000_000;
    for body in [
        latency("api-1", end, 1500, 1200, true),
        latency("api-2", end, 1500, i64::MAX, false),
    ] {
        let resp = http()
            .post(agent.url("/v1/telemetry"))
            .body(body)
            .send()
            .await
            .expect("push");
        assert_eq!(resp.status().as_u16(), 200);
    }
    train_now(&agent);
    let listed = agent.get_json("/v1/models").await.expect("models");
    let learned = &listed["models"][0]["patterns"]["limits"];
    let latency_limit = learned
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["metric"] == "latency_ms")
        .unwrap_or_else(|| panic!("a learned latency limit: {listed}"));
    assert_eq!(latency_limit["used"], true, "{latency_limit}");
    assert_eq!(latency_limit["direction"], "above");
    let text = std::process::Command::new(augur_bin().expect("binary"))
        .args(["models", "--api", &agent.url("")])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("learned limit: latency_ms >=") && text.contains("used"),
        "{text}"
    );
    // api-3's latency climbs the same way, faster: predicted before it reaches the learned limit.
    let value = latency_limit["value"].as_f64().expect("a value");
    let now = now_us();
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(latency("api-3", now, 900, 700, false))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 200);
    let v = eventually("api-3 predicted to fail", || async {
        let v = prediction(&agent, "api-3").await?;
        (v["ts"].as_str()? >= rfc3339(now - 2_000_000).as_str()).then_some(v)
    })
    .await
    .expect("a prediction");
    // At its last sample api-3 is at 540 ms, below the learned ~790: the alarm is a prediction.
    assert!(540.0 < value, "{value}");
    assert_eq!(v["above_threshold"], true, "{v}");
    assert_eq!(v["drivers"][0], "latency_ms", "{v}");
    assert!(v["eta_s"].as_f64().is_some_and(|e| e > 30.0), "{v}");
}

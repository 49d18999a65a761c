//! Crash safety: after `kill -9` the agent restarts with its history intact (everything it had
//! acknowledged or shown, so at most the last second of collection is lost).

use augur_tests::{AgentOptions, AgentProcess, eventually, http, json_lines, now_us};
use serde_json::Value;

async fn resource(agent: &AgentProcess, id: &str) -> Option<Value> {
    let resp = http()
        .get(agent.url(&format!("/v1/resources/{id}")))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

async fn count(agent: &AgentProcess, id: &str) -> u64 {
    let v: Value = agent
        .get_json(&format!(
            "/v1/resources/{id}/telemetry?since=1h&limit=100000"
        ))
        .await
        .expect("GET");
    v["records"].as_array().map_or(0, |r| r.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let config =
        "node_name = \"crash-host\"\n[resource_types.host]\ninterval = \"100ms\"\n".to_owned();
    let mut agent = AgentProcess::start(AgentOptions {
        config: config.clone(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let temp = agent.take_temp();

    // Acknowledged pushes, while the host collector writes every 100 ms.
    let start = now_us() - 600_000_000;
    for batch in 0..10 {
        let resp = http()
            .post(agent.url("/v1/telemetry"))
            .body(json_lines("svc-1", start + batch * 1_000_000, 500))
            .send()
            .await
            .expect("push");
        assert_eq!(resp.status().as_u16(), 200);
    }
    // A pusher still running when the kill lands: whatever it got 200 for must survive.
    let url = agent.url("/v1/telemetry");
    let pusher = tokio::spawn(async move {
        let mut acked = 0u64;
        for batch in 0..10_000 {
            let body = json_lines("svc-2", start + batch * 100_000, 100);
            match http().post(&url).body(body).send().await {
                Ok(r) if r.status().is_success() => acked += 100,
                _ => break,
            }
        }
        acked
    });
    let host_before = eventually("a few host samples", || async {
        let v = resource(&agent, "crash-host").await?;
        (v["samples"].as_u64()? >= 10).then_some(v)
    })
    .await
    .expect("host samples");
    let data_dir = agent.kill9().await.expect("kill -9");
    let acked = pusher.await.expect("pusher");
    assert!(
        acked > 0,
        "the pusher got nothing acknowledged before the kill"
    );

    let mut again = AgentProcess::start(AgentOptions {
        data_dir: Some(data_dir),
        config,
        args: vec![],
        ..Default::default()
    })
    .await
    .expect("agent restarts on the same data");
    assert_eq!(count(&again, "svc-1").await, 5_000);
    assert!(
        count(&again, "svc-2").await >= acked,
        "acknowledged samples were lost"
    );
    let host_after = resource(&again, "crash-host")
        .await
        .expect("host resource survives");
    let before_last = host_before["last_ts"].as_str().expect("ts");
    let after_samples = host_after["samples"].as_u64().expect("samples");
    assert!(after_samples >= host_before["samples"].as_u64().expect("samples"));
    // The sample shown as latest before the kill is still there.
    let v: Value = again
        .get_json(&format!(
            "/v1/resources/crash-host/telemetry?since={before_last}&limit=1"
        ))
        .await
        .expect("GET");
    assert_eq!(v["records"][0]["ts"].as_str(), Some(before_last), "{v}");
    // And the restarted agent keeps collecting.
    eventually("collection resumes", || async {
        let v = resource(&again, "crash-host").await?;
        (v["samples"].as_u64()? > after_samples).then_some(())
    })
    .await
    .expect("collection resumes");
    assert!(again.terminate().await.expect("stops").success());
    drop(temp);
}

//! HTTP ingestion and queries against a real agent.

use augur_tests::{AgentOptions, AgentProcess, http, json_lines, now_us};
use serde_json::{Value, json};

async fn post(agent: &AgentProcess, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(body)
        .send()
        .await
        .expect("agent answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON answer"))
}

async fn metrics(agent: &AgentProcess) -> String {
    agent.get_text("/metrics").await.expect("GET")
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_bad_telemetry_over_http() {
    let agent = AgentProcess::start(AgentOptions {
        config: "[collect]\nhost = false\n[api]\nmax_body = \"64KiB\"\n[ingest]\nmax_metrics_per_sample = 8\n".into(),
        ..Default::default()
    })
    .await
    .expect("agent starts");

    // JSON lines, all good: 200 and durable.
    let start = now_us() - 60_000_000;
    let (code, v) = post(&agent, json_lines("web-1", start, 50)).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 50);
    assert_eq!(v["rejected"], 0);

    // A JSON array mixing good and bad: the good are kept, each bad one is named.
    let body = json!([
        {"resource_id": "web-2", "resource_type": "service", "metrics": {"rps": 10.5}},
        {"resource_id": "web-2", "resource_type": "service", "metrics": {"mem_used_ratio": 1.7}},
        {"resource_type": "service", "metrics": {"rps": 1}},
        {"resource_id": "web-2", "resource_type": "service", "metrics": {"rps": 1}, "colour": "red"},
        {"resource_id": "web-2", "resource_type": "service", "metrics": {"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1}},
        {"resource_id": "web-2", "resource_type": "host", "metrics": {"rps": 1}},
        {"resource_id": "web-2", "resource_type": "service", "event": "failure"}
    ]);
    let (code, v) = post(&agent, body.to_string()).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"], 5, "{v}");
    let reasons: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(
        reasons,
        [
            "out_of_range",
            "missing_field",
            "unknown_field",
            "too_many_metrics",
            "type_conflict"
        ]
    );

    // Non-finite values, malformed lines.
    let (code, v) = post(
        &agent,
        "{\"resource_id\":\"web-3\",\"resource_type\":\"service\",\"metrics\":{\"x\":\"NaN\"}}\n{not json\n",
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["errors"][0]["reason"], "non_finite");
    assert_eq!(v["errors"][1]["reason"], "malformed_json");
    assert!(
        v["errors"][1]["error"]
            .as_str()
            .expect("message")
            .starts_with("line 2:")
    );

    // Empty and oversized bodies.
    let (code, _) = post(&agent, "   \n").await;
    assert_eq!(code, 400);
    let (code, v) = post(&agent, json_lines("web-4", start, 2_000)).await;
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().expect("error").contains("max_body"));

    // Counters say what happened, by reason.
    let text = metrics(&agent).await;
    assert_eq!(
        counter(&text, r#"augur_samples_accepted_total{source="http"}"#),
        52.0
    );
    for reason in [
        "out_of_range",
        "missing_field",
        "unknown_field",
        "too_many_metrics",
        "type_conflict",
        "non_finite",
        "malformed_json",
        "empty",
        "oversized",
    ] {
        let series = format!(r#"augur_samples_rejected_total{{source="http",reason="{reason}"}}"#);
        assert!(
            counter(&text, &series) >= 1.0,
            "{series} missing in\n{text}"
        );
    }

    // What was accepted can be read back, in order, with the failure event.
    let v: Value = agent
        .get_json("/v1/resources/web-1/telemetry?since=5m&limit=10")
        .await
        .expect("GET");
    assert_eq!(v["records"].as_array().expect("records").len(), 10);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["records"][3]["metrics"]["queue_len"], 3.0);
    let v: Value = agent
        .get_json("/v1/resources/web-2/telemetry")
        .await
        .expect("GET");
    // Both had no ts, so both were stamped with the push's receive time and merged into one sample.
    let records = v["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["event"], "failure");
    assert_eq!(records[0]["metrics"]["rps"], 10.5);

    // Resources and unknown ones.
    let v: Value = agent.get_json("/v1/resources").await.expect("GET");
    let ids: Vec<&str> = v["resources"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["resource_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    let resp = http()
        .get(agent.url("/v1/resources/nope/telemetry"))
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status().as_u16(), 404);
    let resp = http()
        .get(agent.url("/v1/resources/web-1/telemetry?since=yesterday"))
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status().as_u16(), 400);

    // The agent is still healthy after all of that.
    let v: Value = agent.get_json("/healthz").await.expect("GET");
    assert_eq!(v["status"], "ok");
    let schema: Value = agent.get_json("/v1/schema/telemetry").await.expect("GET");
    assert_eq!(schema["title"], "augur telemetry record");
}

//! gRPC ingestion, queries, health and reflection against a real agent.

use augur_proto::v1::agent_client::AgentClient;
use augur_proto::v1::telemetry_client::TelemetryClient;
use augur_proto::v1::{
    ListResourcesRequest, QueryTelemetryRequest, StatusRequest, TelemetrySample,
};
use augur_tests::{AgentOptions, AgentProcess, now_us};

fn sample(id: &str, ts_us: i64, metrics: &[(&str, f64)]) -> TelemetrySample {
    TelemetrySample {
        ts: Some(prost_types::Timestamp {
            seconds: ts_us / 1_000_000,
            nanos: i32::try_from((ts_us % 1_000_000) * 1000).expect("fits"),
        }),
        resource_id: id.into(),
        resource_type: "service".into(),
        metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_query_health_and_reflection_over_grpc() {
    let agent = AgentProcess::start(AgentOptions {
        config: "[collect]\nhost = false\n[api]\nmax_grpc_message = \"8KiB\"\n".into(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let channel = tonic::transport::Endpoint::from_shared(agent.grpc_url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");

    let start = now_us() - 10_000_000;
    let mut stream: Vec<TelemetrySample> = (0..2_500)
        .map(|i| sample("api-1", start + i * 1_000, &[("rps", i as f64)]))
        .collect();
    stream.push(sample("api-1", start, &[("bad", f64::NAN)]));
    stream.push(sample("api 1", start, &[("rps", 1.0)]));
    let mut ev = sample("api-1", start + 5_000_000, &[]);
    ev.event = "failure".into();
    stream.push(ev);
    let mut client = TelemetryClient::new(channel.clone());
    let summary = client
        .push(futures::stream::iter(stream))
        .await
        .expect("push")
        .into_inner();
    assert_eq!(summary.accepted, 2_501, "{summary:?}");
    assert_eq!(summary.rejected, 2);
    assert_eq!(summary.errors[0].index, 2_500);
    assert!(
        summary.errors[0].error.starts_with("non_finite"),
        "{summary:?}"
    );
    assert!(summary.errors[1].error.starts_with("bad_id"), "{summary:?}");

    // An oversized message is refused and counted; the agent stays up.
    let huge = sample("api-1", start, &[("x", 1.0)]);
    let mut huge = huge;
    for i in 0..400 {
        huge.labels.insert(format!("label_{i}"), "v".repeat(30));
    }
    let summary = client.push(futures::stream::iter(vec![huge])).await;
    match summary {
        Ok(s) => {
            let s = s.into_inner();
            assert_eq!(s.accepted, 0);
            assert!(s.errors[0].error.starts_with("oversized"), "{s:?}");
        }
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{status:?}"
        ),
    }

    let mut agent_client = AgentClient::new(channel.clone());
    let status = agent_client
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.samples_stored, 2_501);
    assert!(status.samples_rejected >= 3);
    assert!(status.peer_id.starts_with("12D3KooW"), "{}", status.peer_id);
    let list = agent_client
        .list_resources(ListResourcesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.resources.len(), 1);
    assert_eq!(list.resources[0].samples, 2_501);
    let q = agent_client
        .query_telemetry(QueryTelemetryRequest {
            resource_id: "api-1".into(),
            since: None,
            until: None,
            limit: 100,
        })
        .await
        .expect("query")
        .into_inner();
    assert_eq!(q.samples.len(), 100);
    assert!(q.truncated);
    let missing = agent_client
        .query_telemetry(QueryTelemetryRequest {
            resource_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown resource");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // grpc.health.v1
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "augur.v1.Telemetry".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let first = answers
        .message()
        .await
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "augur.v1.Telemetry",
        "augur.v1.Agent",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_is_durable_before_it_ends() {
    let agent = AgentProcess::start(AgentOptions {
        config: "[collect]\nhost = false\n".into(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let mut client = TelemetryClient::connect(agent.grpc_url())
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let push = tokio::spawn(async move { client.push(tokio_stream_from(rx)).await });
    tx.send(sample("slow-1", now_us(), &[("rps", 1.0)]))
        .await
        .expect("send");
    // The stream stays open; the sample must still become visible.
    augur_tests::eventually("the first sample of an open stream", || async {
        let v: serde_json::Value = agent.get_json("/v1/resources/slow-1").await.ok()?;
        (v["samples"] == 1).then_some(())
    })
    .await
    .expect("flushed while open");
    tx.send(sample("slow-1", now_us() + 1, &[("rps", 2.0)]))
        .await
        .expect("send");
    drop(tx);
    let summary = push.await.expect("task").expect("push").into_inner();
    assert_eq!(summary.accepted, 2);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<TelemetrySample>,
) -> impl futures::Stream<Item = TelemetrySample> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

//! A real fleet on loopback: five `augur agent` processes form a mesh from one seed; a SIGKILLed
//! node is declared dead by every survivor, restarts and rejoins; a sixth node with a token from
//! another fleet key is never admitted; fleet events reach subscribers over HTTP and gRPC.

use std::time::Duration;

use augur_proto::v1::SubscribeRequest;
use augur_proto::v1::agent_client::AgentClient;
use augur_tests::LocalFleet;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_detect_a_kill_readmit_the_restart_and_refuse_a_stranger() {
    let mut fleet = LocalFleet::new().expect("fleet key");
    // Host collection on: peer round trips become host telemetry.
    fleet.config = String::new();
    let names = ["n1", "n2", "n3", "n4", "n5"];
    for n in names {
        fleet.start(n).await.expect("starts");
    }
    for n in names {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(30))
            .await
            .expect("the fleet forms");
    }
    // libp2p ping round trips to peers are part of the host's telemetry.
    augur_tests::eventually("mesh RTT in host telemetry", || async {
        let m = fleet.agents["n1"].get_text("/metrics").await.ok()?;
        m.lines()
            .any(|l| l.starts_with("augur_sample{") && l.contains("metric=\"mesh_rtt_ms_p50\""))
            .then_some(())
    })
    .await
    .expect("mesh_rtt_ms_p50 sampled");
    // A gRPC subscriber on n1, filtered to membership events.
    let mut client = AgentClient::connect(fleet.agents["n1"].grpc_url())
        .await
        .expect("connects");
    let mut stream = client
        .subscribe(SubscribeRequest {
            topics: vec!["member.dead".into(), "member.recovered".into()],
            since: 0,
        })
        .await
        .expect("subscribes")
        .into_inner();

    fleet.kill("n5").await.expect("killed");
    let took = fleet
        .until_all_see("n5", "dead", Duration::from_secs(30))
        .await
        .expect("declared dead");
    assert!(
        took < Duration::from_secs(10),
        "declared dead after {took:?}"
    );
    let dead = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    assert_eq!(dead.topic, "member.dead");
    assert_eq!(dead.node_name, "n5");

    // HTTP: the same event, with its index, resumable.
    let page = fleet.agents["n2"]
        .get_json("/v1/events?topic=member.dead")
        .await
        .expect("events");
    let events = page["events"].as_array().expect("list");
    assert!(events.iter().any(|e| e["node_name"] == "n5"), "{page}");

    // Server-sent events: a follower resuming after index 0 gets the backlog (the death) at once.
    let resp = augur_tests::http()
        .get(fleet.agents["n3"].url("/v1/events?topic=member.dead&follow=true"))
        .send()
        .await
        .expect("sse");
    assert_eq!(
        resp.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("data")
        .expect("open")
        .expect("ok");
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("id: ") && text.contains("\"node_name\":\"n5\""),
        "{text}"
    );
    // The CLI reads the same log.
    let out = std::process::Command::new(augur_tests::augur_bin().expect("binary"))
        .args([
            "events",
            "--json",
            "--topic",
            "member",
            "--api",
            &fleet.agents["n4"].url(""),
        ])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("member.dead") && l.contains("n5")),
        "{lines}"
    );

    fleet.start("n5").await.expect("restarts");
    fleet
        .until_all_see("n5", "alive", Duration::from_secs(30))
        .await
        .expect("rejoined");
    let back = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    assert_eq!(
        (back.topic.as_str(), back.node_name.as_str()),
        ("member.recovered", "n5")
    );

    // A stranger with another fleet's token: never listed, refused on libp2p, counted.
    fleet.start_unadmitted("x6").await.expect("starts");
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in names {
        let s = fleet.statuses(n).await.expect("members");
        assert!(!s.contains_key("x6"), "{n} lists the stranger: {s:?}");
        assert_eq!(s.len(), 5, "{n}: {s:?}");
    }
    let metrics = fleet.agents["n1"]
        .get_text("/metrics")
        .await
        .expect("metrics");
    // Its gossip never reaches chitchat: every datagram it sent the seed was dropped for its
    // token, and nothing it said made it into the seed's gossip state.
    let unadmitted = metrics
        .lines()
        .find(|l| l.starts_with("augur_mesh_unadmitted_nodes "))
        .expect("gauge");
    assert!(unadmitted.ends_with(" 0"), "{unadmitted}");
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("augur_mesh_gossip_dropped_total{reason=\"unadmitted\"}"))
        .expect("counter");
    assert!(!dropped.ends_with(" 0"), "{dropped}");
}

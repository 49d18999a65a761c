//! Slow and idle clients (issue 10, finding 10): they cannot hold the API. Before, 2,000
//! connections sending partial headers stayed open indefinitely and 1,100 made `/healthz` time out.

use std::time::Duration;

use augur_tests::{AgentOptions, AgentProcess, eventually, http, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `s` (EOF or an error), up to `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_the_api_stays_available() {
    let config = "[api]\nmax_connections = 40\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let agent = AgentProcess::start(AgentOptions {
        config: config.to_owned(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let http_addr = agent.url("").trim_start_matches("http://").to_owned();
    let grpc_addr = agent.grpc_url().trim_start_matches("http://").to_owned();

    // 100 slowloris clients on each listener: partial request heads on HTTP, nothing on gRPC.
    let mut http_conns = Vec::new();
    let mut grpc_conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(&http_addr).await.expect("connect");
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        http_conns.push(s);
        grpc_conns.push(TcpStream::connect(&grpc_addr).await.expect("connect"));
    }
    let started = std::time::Instant::now();
    let mut waits = Vec::new();
    for s in http_conns.into_iter().chain(grpc_conns) {
        waits.push(tokio::spawn(closed_within(s, Duration::from_secs(5))));
    }
    for w in waits {
        assert!(w.await.expect("join"), "a slow connection was not closed");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // The API answers again, on both listeners.
    let health = eventually("healthz answers", || async {
        let r = http().get(agent.url("/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(health.is_ok());
    let mut client = augur_proto::v1::agent_client::AgentClient::connect(agent.grpc_url())
        .await
        .expect("gRPC connects");
    client
        .status(augur_proto::v1::StatusRequest {})
        .await
        .expect("gRPC answers");

    // A body that stops halfway gets 408 after the body timeout.
    let mut s = TcpStream::connect(&http_addr).await.expect("connect");
    s.write_all(
        b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"resource_id\"",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    let text = agent.get_text("/metrics").await.expect("metrics");
    for l in ["http", "grpc"] {
        let refused = metric(
            &text,
            &format!("augur_api_connections_refused_total{{listener=\"{l}\"}}"),
        );
        let timed_out = metric(
            &text,
            &format!("augur_api_connections_timed_out_total{{listener=\"{l}\"}}"),
        );
        assert!(refused >= 50.0, "{l}: refused {refused}");
        assert!(timed_out >= 30.0, "{l}: timed out {timed_out}");
    }
}

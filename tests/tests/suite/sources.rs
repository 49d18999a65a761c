//! Collection from the agent's own sources: a Prometheus endpoint served by the test, and a log file.

use std::io::Write;

use augur_tests::{AgentOptions, AgentProcess, eventually};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Serves a fixed Prometheus exposition; each served scrape is reported on the channel.
async fn exporter(body: &'static str) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(resp.as_bytes()).await.is_ok() {
                    let _ = tx.send(());
                }
            });
        }
    });
    (addr, rx)
}

const EXPOSITION: &str = "# TYPE queue_depth gauge\nqueue_depth 42\nhttp_requests_total{code=\"200\"} 1000\nhttp_requests_total{code=\"500\"} 7\nbroken line\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_prometheus_and_counts_log_errors() {
    let (addr, mut scrapes) = exporter(EXPOSITION).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "ERROR from before the agent started\n").expect("write");
    let config = format!(
        "[collect]\nhost = false\n[resource_types.host]\ninterval = \"100ms\"\n\
         [[scrape]]\nurl = \"http://{addr}/metrics\"\nresource_id = \"exporter-1\"\ninterval = \"100ms\"\n\
         [[scrape]]\nurl = \"http://127.0.0.1:9/metrics\"\nresource_id = \"down-1\"\ninterval = \"100ms\"\n\
         [[logs]]\npath = \"{}\"\npatterns = [\"ERROR\", \"(?i)panic\"]\nresource_id = \"app-1\"\nresource_type = \"service\"\n",
        log.display()
    );
    let agent = AgentProcess::start(AgentOptions {
        config,
        ..Default::default()
    })
    .await
    .expect("agent starts");

    // Two scrapes served: the first one's sample has been handed to the writer.
    scrapes.recv().await.expect("scraped");
    scrapes.recv().await.expect("scraped again");
    let latest = eventually("the scraped sample", || async {
        let v: Value = agent.get_json("/v1/resources/exporter-1").await.ok()?;
        v.get("latest").cloned().filter(|l| !l.is_null())
    })
    .await
    .expect("scraped resource");
    assert_eq!(latest["resource_type"], "service");
    assert_eq!(latest["metrics"]["queue_depth"], 42.0);
    assert_eq!(latest["metrics"]["http_requests_total{code=\"500\"}"], 7.0);

    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        f.write_all(b"all fine\nERROR disk full\nthread main PANICKED\nstill fine\nERROR again\n")
            .expect("append");
    }
    let total = eventually("three counted error lines", || async {
        let v: Value = agent
            .get_json("/v1/resources/app-1/telemetry?since=5m")
            .await
            .ok()?;
        let sum: f64 = v["records"]
            .as_array()?
            .iter()
            .filter_map(|r| r["metrics"]["log_errors"].as_f64())
            .sum();
        (sum >= 3.0).then_some(sum)
    })
    .await
    .expect("log errors counted");
    assert_eq!(
        total, 3.0,
        "lines before start are not counted, the three new ones are"
    );

    let metrics = eventually("scrape errors and bad lines counted", || async {
        let text = agent.get_text("/metrics").await.ok()?;
        (text.contains("augur_scrape_errors_total{name=\"http://127.0.0.1:9/metrics\"}")
            && text.contains(
                "augur_samples_rejected_total{source=\"scrape\",reason=\"malformed_json\"}",
            ))
        .then_some(text)
    })
    .await
    .expect("counters");
    assert!(
        metrics.contains("augur_log_lines_matched_total"),
        "{metrics}"
    );
}

//! Checking an instance's health: an HTTP GET of the spec's path answered 2xx, or a TCP connect,
//! within the spec's timeout. The verdict over consecutive checks is
//! `augur_orchestrate::health::HealthTracker`'s.

use std::net::SocketAddr;
use std::time::Instant;

use augur_orchestrate::health::Check;
use augur_orchestrate::spec::HealthCheck;

/// One check of the instance at `addr`.
pub async fn probe(client: &reqwest::Client, addr: SocketAddr, check: &HealthCheck) -> Check {
    let started = Instant::now();
    let result = match &check.http {
        Some(path) => {
            let url = format!("http://{addr}{path}");
            match tokio::time::timeout(check.timeout, client.get(&url).send()).await {
                Err(_) => Err(format!("no answer within {:?}", check.timeout)),
                Ok(Err(e)) => Err(format!("GET {url}: {e}")),
                Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                Ok(Ok(resp)) => Err(format!("GET {url}: {}", resp.status())),
            }
        }
        None => {
            match tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(addr)).await {
                Err(_) => Err(format!("no connection within {:?}", check.timeout)),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Ok(Ok(_)) => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => Check::Passed(started.elapsed()),
        Err(why) => Check::Failed(why),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn check(http: Option<&str>) -> HealthCheck {
        HealthCheck {
            http: http.map(str::to_owned),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            successes: 1,
            failures: 1,
        }
    }

    /// An HTTP server answering every request with `status`, or never (`None`).
    async fn server(status: Option<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio_util::task::TaskTracker::new().spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio_util::task::TaskTracker::new().spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match status {
                        Some(st) => {
                            let _ = s
                                .write_all(format!("HTTP/1.1 {st}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                                .await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_and_tcp_checks() {
        let client = crate::net::http_client(None).expect("client");
        let ok = server(Some("200 OK")).await;
        let sick = server(Some("503 Service Unavailable")).await;
        let stuck = server(None).await;
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(matches!(
            probe(&client, ok, &check(Some("/healthz"))).await,
            Check::Passed(_)
        ));
        assert!(matches!(
            probe(&client, ok, &check(None)).await,
            Check::Passed(_)
        ));
        let failed = |c: Check| match c {
            Check::Failed(why) => why,
            Check::Passed(_) => panic!("passed"),
        };
        assert!(failed(probe(&client, sick, &check(Some("/healthz"))).await).contains("503"));
        assert!(failed(probe(&client, stuck, &check(Some("/healthz"))).await).contains("within"));
        assert!(failed(probe(&client, closed, &check(None)).await).contains("connect"));
        assert!(failed(probe(&client, closed, &check(Some("/"))).await).contains("GET"));
    }
}

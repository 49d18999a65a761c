//! A small HTTP/1.1 service for augur's tests and benchmarks, run as a service instance: listens
//! on $HOST:$PORT (127.0.0.1:8080 by default) and answers every request with its instance id
//! (`$AUGUR_INSTANCE`), `/healthz` included; `/slow/<ms>` answers after that many milliseconds
//! (an in-flight request, for drain tests). Keep-alive as HTTP/1.1 clients expect. With
//! `AUGUR_ECHO_READY_AFTER_MS`, `/healthz` answers 503 for that long after start (a slow start);
//! with `AUGUR_ECHO_STATUS`, every other request is answered with that status (a bad release).

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let host: std::net::IpAddr = std::env::var("HOST")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let id = std::env::var("AUGUR_INSTANCE").unwrap_or_else(|_| "echo".to_owned());
    let body = Bytes::from(format!("{id}\n"));
    let status: u16 = std::env::var("AUGUR_ECHO_STATUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ready_at = std::time::Instant::now()
        + Duration::from_millis(
            std::env::var("AUGUR_ECHO_READY_AFTER_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
    let listener = tokio::net::TcpListener::bind((host, port)).await?;
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        let body = body.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    if req.uri().path() == "/healthz" && std::time::Instant::now() < ready_at {
                        return Ok::<_, Infallible>(
                            Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::from_static(b"starting\n")))
                                .unwrap_or_default(),
                        );
                    }
                    if req.uri().path() != "/healthz" && status != 200 {
                        return Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"bad release\n")))
                                .unwrap_or_default(),
                        );
                    }
                    if let Some(ms) = req
                        .uri()
                        .path()
                        .strip_prefix("/slow/")
                        .and_then(|ms| ms.parse::<u64>().ok())
                    {
                        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain")
                            .body(Full::new(body))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                .await;
        });
    }
}

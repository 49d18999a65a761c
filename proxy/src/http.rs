//! The embedded proxy's HTTP/1.1 mode: each request, not each connection, goes to a backend, so
//! a client's kept-alive connection outlives any one instance. A request goes on a kept-alive
//! connection to the chosen backend, or a new one; when the connect fails it goes to the next
//! backend, and when a kept-alive connection turns out closed before it took the request, on
//! another connection (in both cases the request never reached a backend). Once it has reached a
//! backend it is never sent again: a failure then is answered 502. A draining or removed
//! backend's idle connections are closed at once and no more are kept; its requests in flight
//! finish within the drain's grace. Upgrades (WebSocket, `CONNECT`) are not proxied in this mode:
//! use the L4 mode for them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::embedded::{BackendState, Limits, Proxy, Row, Upstream};

/// The body of an answer: the backend's, streamed, or the proxy's own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Idle kept-alive connections kept per backend, at most.
const MAX_IDLE: usize = 64;

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that describe one hop, not the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

fn answer(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *r.status_mut() = status;
    r
}

/// Why a request could not be given to a backend.
enum Failure {
    /// It never reached one (no backend left to try): 502.
    Unsent,
    /// It reached one, which failed: 502, not retried.
    Sent(hyper::Error),
}

impl Proxy {
    /// Accepts on `listener` until `stop`, forwarding each HTTP/1.1 request to a backend; then
    /// closes what is open and returns.
    pub async fn serve_http(&self, listener: TcpListener, limits: Limits, stop: CancellationToken) {
        self.accept(
            listener,
            limits,
            stop,
            move |proxy, client, peer, stop| async move {
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.forward(req, limits, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(client), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stop.cancelled() => {
                        // Answers in progress finish; nothing new is read.
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            },
        )
        .await;
    }

    /// Forwards one request (see the module's documentation for when it is sent again).
    async fn forward(
        &self,
        req: Request<Incoming>,
        limits: Limits,
        peer: SocketAddr,
    ) -> Response<Body> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if req.method() == hyper::Method::CONNECT
            || req.headers().contains_key(hyper::header::UPGRADE)
        {
            return answer(
                StatusCode::NOT_IMPLEMENTED,
                "upgrades are not proxied in http mode (use protocol = \"tcp\")\n",
            );
        }
        let req = prepare(req, peer);
        match self.send(req, limits).await {
            Ok(resp) => {
                if resp.status().is_server_error() {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
                let (mut parts, body) = resp.into_parts();
                for h in HOP_BY_HOP {
                    parts.headers.remove(h);
                }
                Response::from_parts(parts, Either::Left(body))
            }
            Err(Failure::Unsent) => {
                self.stats.bad_gateway.fetch_add(1, Ordering::Relaxed);
                self.stats.no_backend.fetch_add(1, Ordering::Relaxed);
                answer(
                    StatusCode::BAD_GATEWAY,
                    "no instance of the service could be reached\n",
                )
            }
            Err(Failure::Sent(e)) => {
                tracing::debug!(error = %e, "backend failed a request it had received");
                self.stats.bad_gateway.fetch_add(1, Ordering::Relaxed);
                answer(
                    StatusCode::BAD_GATEWAY,
                    "the instance failed while answering\n",
                )
            }
        }
    }

    /// Gives the request to a backend: the next one when a connect fails, another connection
    /// when a kept-alive one had closed before taking it.
    async fn send(
        &self,
        mut req: Request<Incoming>,
        limits: Limits,
    ) -> Result<Response<Incoming>, Failure> {
        let table = self.table.read().clone();
        let mut tried = vec![false; table.len()];
        let mut connects = 0;
        loop {
            let Some(i) = self.pick(&table, &tried) else {
                return Err(Failure::Unsent);
            };
            let row = &table[i];
            let mut upstream = match take_idle(&row.state) {
                Some(u) => u,
                None => {
                    if connects >= limits.max_attempts.max(1) {
                        return Err(Failure::Unsent);
                    }
                    connects += 1;
                    match self.connect(row, limits).await {
                        Some(u) => u,
                        None => {
                            tried[i] = true;
                            continue;
                        }
                    }
                }
            };
            match upstream.try_send_request(req).await {
                Ok(resp) => {
                    self.keep(row.state.clone(), upstream);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection had closed. Another one takes it.
                    Some(unsent) => {
                        self.stats.resent_unsent.fetch_add(1, Ordering::Relaxed);
                        req = unsent;
                    }
                    None => return Err(Failure::Sent(e.into_error())),
                },
            }
        }
    }

    /// The next usable backend by weight, among those not tried.
    pub(crate) fn pick(&self, table: &[Row], tried: &[bool]) -> Option<usize> {
        self.picker.lock().pick_by(
            table.len(),
            |i| table[i].weight,
            |i| !tried[i] && !table[i].draining,
        )
    }

    /// A new connection to `row`'s backend, driven on the proxy's tasks until it closes or its
    /// backend's drain ends. `None` when the connect failed (counted).
    async fn connect(&self, row: &Row, limits: Limits) -> Option<Upstream> {
        let stream = match tokio::time::timeout(
            limits.connect_timeout,
            TcpStream::connect(row.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(backend = %row.addr, error = %e, "backend refused; trying the next");
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(_) => {
                tracing::debug!(backend = %row.addr, "backend connect timed out; trying the next");
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(backend = %row.addr, error = %e, "HTTP handshake failed");
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let state = row.state.clone();
        state.open.fetch_add(1, Ordering::Relaxed);
        let stats = self.stats.clone();
        self.timers.spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = state.cut.cancelled() => {
                    stats.cut_by_drain.fetch_add(1, Ordering::Relaxed);
                }
            }
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
        Some(sender)
    }

    /// Puts `upstream` back among `state`'s idle connections once its answer has been read,
    /// unless the backend was retired meanwhile (then it closes).
    fn keep(&self, state: Arc<BackendState>, mut upstream: Upstream) {
        self.timers.spawn(async move {
            if upstream.ready().await.is_err() || state.retired.load(Ordering::Relaxed) {
                return;
            }
            let mut idle = state.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(upstream);
            }
        });
    }
}

/// An idle connection that is still open, if the backend has one.
fn take_idle(state: &BackendState) -> Option<Upstream> {
    let mut idle = state.idle.lock();
    while let Some(u) = idle.pop() {
        if !u.is_closed() && u.is_ready() {
            return Some(u);
        }
    }
    None
}

/// The request as the backend gets it: hop-by-hop headers removed, the client's address added
/// to `x-forwarded-for`, `Host` kept (HTTP/1.0 requests without one get the backend's).
fn prepare(mut req: Request<Incoming>, peer: SocketAddr) -> Request<Incoming> {
    let headers = req.headers_mut();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key(HOST) {
        headers.insert(HOST, HeaderValue::from_static("localhost"));
    }
    // The backend gets origin-form (`/path?query`).
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = hyper::Uri::from(pq);
    }
    req
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use http_body_util::BodyExt as _;
    use hyper::client::conn::http1::SendRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::task::TaskTracker;

    use super::*;

    /// An HTTP/1.1 backend answering its name (after `/slow/<ms>` milliseconds for that path),
    /// keeping connections alive; counts the requests it received.
    async fn backend(name: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        TaskTracker::new().spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let count = count.clone();
                TaskTracker::new().spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        count.fetch_add(1, Ordering::Relaxed);
                        async move {
                            if let Some(ms) = req.uri().path().strip_prefix("/slow/") {
                                let ms = ms.parse().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        (addr, received)
    }

    /// A backend that reads a request and closes without answering.
    async fn broken() -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        TaskTracker::new().spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                if s.read(&mut buf).await.unwrap_or(0) > 0 {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (addr, received)
    }

    async fn start(proxy: &Proxy) -> (SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let p = proxy.clone();
        let s = stop.clone();
        TaskTracker::new().spawn(async move { p.serve_http(l, Limits::default(), s).await });
        (addr, stop)
    }

    /// One kept-alive client connection to the proxy.
    async fn client(proxy: SocketAddr) -> SendRequest<Full<Bytes>> {
        let s = TcpStream::connect(proxy).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("handshake");
        TaskTracker::new().spawn(conn);
        sender
    }

    async fn get(c: &mut SendRequest<Full<Bytes>>, path: &str) -> (StatusCode, String) {
        c.ready().await.expect("ready");
        let req = Request::get(path)
            .header(HOST, "svc")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = c.send_request(req).await.expect("answer");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_on_one_connection_are_balanced_and_a_dead_backend_costs_no_request() {
        let (a, _) = backend("a").await;
        let (b, _) = backend("b").await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 256), (b, 256), (dead, 256)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy).await;
        let mut c = client(addr).await;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, body) = get(&mut c, "/").await;
            assert_eq!(status, StatusCode::OK);
            seen.push(body);
        }
        // One client connection, both live backends, in turn; the dead one skipped.
        assert_eq!(seen.iter().filter(|b| *b == "a").count(), 3, "{seen:?}");
        assert_eq!(seen.iter().filter(|b| *b == "b").count(), 3, "{seen:?}");
        assert!(proxy.stats.connect_failures.load(Ordering::Relaxed) >= 1);
        assert_eq!(proxy.stats.bad_gateway.load(Ordering::Relaxed), 0);
        // Kept alive: one upstream connection per live backend.
        assert_eq!(proxy.open_to(a), 1);
        assert_eq!(proxy.open_to(b), 1);
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_reached_a_backend_is_never_sent_again() {
        let (bad, received) = broken().await;
        let (good, good_received) = backend("good").await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(bad, 256)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy).await;
        let mut c = client(addr).await;
        let (status, _) = get(&mut c, "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(received.load(Ordering::Relaxed), 1, "sent once");
        // Nothing to reach at all: 502 too, counted.
        proxy.set_backends(&[], Duration::from_secs(1));
        let (status, _) = get(&mut c, "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(proxy.stats.no_backend.load(Ordering::Relaxed), 1);
        // The client's connection still serves once a backend is back.
        proxy.set_backends(&[(good, 256)], Duration::from_secs(1));
        assert_eq!(get(&mut c, "/").await, (StatusCode::OK, "good".to_owned()));
        assert_eq!(good_received.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.stats.bad_gateway.load(Ordering::Relaxed), 2);
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drained_backend_finishes_in_flight_requests_and_keeps_no_idle_connection() {
        let (a, received) = backend("a").await;
        let (b, _) = backend("b").await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 256)], Duration::from_secs(5));
        let (addr, stop) = start(&proxy).await;
        // A slow request in flight on a, and (on another client connection, after it) a quick
        // one whose upstream connection is then idle: two connections to a.
        let mut c2 = client(addr).await;
        let slow = TaskTracker::new().spawn(async move { get(&mut c2, "/slow/1500").await });
        let wait = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                while !f() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{what}"));
        };
        let r = received.clone();
        wait(
            "the slow request at a",
            Box::new(move || r.load(Ordering::Relaxed) == 1),
        )
        .await;
        let mut c1 = client(addr).await;
        assert_eq!(get(&mut c1, "/").await.1, "a");
        let p = proxy.clone();
        wait("two connections to a", Box::new(move || p.open_to(a) == 2)).await;
        // a leaves the routes: its idle connection closes at once, new requests go to b, and
        // the slow request finishes within the grace.
        let state_a = proxy
            .table
            .read()
            .iter()
            .find(|r| r.addr == a)
            .map(|r| r.state.clone())
            .expect("a's state");
        proxy.set_backends(&[(b, 256)], Duration::from_secs(5));
        let s = state_a.clone();
        wait(
            "the idle connection to a closed",
            Box::new(move || s.open.load(Ordering::Relaxed) == 1),
        )
        .await;
        assert_eq!(
            get(&mut c1, "/").await.1,
            "b",
            "the client's connection moves on"
        );
        assert_eq!(
            slow.await.expect("joined"),
            (StatusCode::OK, "a".to_owned())
        );
        assert_eq!(proxy.stats.cut_by_drain.load(Ordering::Relaxed), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn upgrades_are_refused_with_a_reason() {
        let (a, _) = backend("a").await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 256)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .expect("write");
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 501"), "{text}");
        assert!(text.contains("use protocol = \"tcp\""), "{text}");
        stop.cancel();
    }
}

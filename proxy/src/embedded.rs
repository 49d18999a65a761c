//! The embedded proxy of one service: accepts connections on the service's port and relays each
//! (L4, on an event loop of its own: `l4loop`) or each HTTP/1.1 request (`crate::http`,
//! [`Proxy::serve_http`]) to a backend chosen by smooth weighted round-robin among the usable
//! ones. The backend table is replaced whole (readers see the old table or the new, never a mix);
//! a backend that refuses the connection is skipped for the next one, so a dead instance costs a
//! retry, not a failed request; a draining backend takes no new connections and its open ones are
//! cut after a grace period. Bounded: at most `max_connections` at once, more are closed on
//! arrival (counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Weight;
use crate::pick::SmoothWrr;

mod l4loop;

/// The relay's buffer in each direction of an L4 connection: 2 x 4 KiB per open connection (a
/// full buffer is written out before more is read, so it bounds memory, not throughput, for
/// anything but very fast bulk transfers).
pub const RELAY_BUFFER: usize = 4096;

/// Limits of one service's proxy.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: u64,
    /// How long a connect to a backend may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// Backends tried for one connection, at most.
    pub max_attempts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(2),
            max_attempts: 3,
        }
    }
}

/// Counters of one service's proxy.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Closed on arrival: `max_connections` were open.
    pub over_capacity: AtomicU64,
    /// Accepts that failed for want of a resource (descriptors, memory); tried again shortly.
    pub accept_failures: AtomicU64,
    /// Connects to a backend that failed (the next backend was tried).
    pub connect_failures: AtomicU64,
    /// Connections closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Open connections now.
    pub open: AtomicU64,
    /// Connections cut at the end of their backend's drain.
    pub cut_by_drain: AtomicU64,
    /// HTTP mode: requests forwarded, and those answered 502 (no backend could be reached, or
    /// the backend failed after the request reached it: it is never sent twice).
    pub requests: AtomicU64,
    pub bad_gateway: AtomicU64,
    /// HTTP mode: requests sent again because a kept-alive connection had closed before it took
    /// them (they had not reached the backend).
    pub resent_unsent: AtomicU64,
    /// HTTP mode: answers a backend gave with a 5xx status (passed on as they are).
    pub upstream_errors: AtomicU64,
}

/// A kept-alive HTTP/1.1 connection to a backend (the HTTP mode's).
pub(crate) type Upstream = hyper::client::conn::http1::SendRequest<hyper::body::Incoming>;

/// One backend's live state, kept across table replacements.
#[derive(Debug, Default)]
pub(crate) struct BackendState {
    pub(crate) open: AtomicU64,
    /// Cancelled when the backend's drain grace ends: its connections close.
    pub(crate) cut: CancellationToken,
    /// Drained or removed: its idle kept-alive connections (HTTP mode) are closed and no more are
    /// kept.
    pub(crate) retired: AtomicBool,
    /// HTTP mode: idle kept-alive connections to it.
    pub(crate) idle: Mutex<Vec<Upstream>>,
}

impl BackendState {
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        // Dropping an idle connection's sender closes it.
        self.idle.lock().clear();
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) addr: SocketAddr,
    pub(crate) weight: Weight,
    pub(crate) draining: bool,
    pub(crate) state: Arc<BackendState>,
}

/// A service's proxy: its table of backends and its counters. Cloneable handle.
#[derive(Clone, Debug, Default)]
pub struct Proxy {
    pub(crate) table: Arc<RwLock<Arc<Vec<Row>>>>,
    pub(crate) picker: Arc<Mutex<SmoothWrr>>,
    pub stats: Arc<Stats>,
    /// The drains' timers (each only cancels its backend's token when its grace ends), and in
    /// HTTP mode the upstream connections and their returns to the idle pools.
    pub(crate) timers: TaskTracker,
}

impl Proxy {
    /// Replaces the backends (address and weight; weight 0 takes no new connections). Backends
    /// that stay keep their open connections; a removed one is drained with `grace`.
    pub fn set_backends(&self, backends: &[(SocketAddr, Weight)], grace: Duration) {
        let mut table = self.table.write();
        let old: HashMap<SocketAddr, Row> = table.iter().map(|r| (r.addr, r.clone())).collect();
        let rows: Vec<Row> = backends
            .iter()
            .map(|&(addr, weight)| {
                // A backend that was draining starts afresh (its drain's cut is scheduled).
                let state = old
                    .get(&addr)
                    .filter(|r| !r.draining)
                    .map_or_else(Arc::default, |r| r.state.clone());
                Row {
                    addr,
                    weight,
                    draining: false,
                    state,
                }
            })
            .collect();
        for row in old.into_values() {
            let kept = rows.iter().any(|r| Arc::ptr_eq(&r.state, &row.state));
            // One leaving is drained (one that was draining already has its cut scheduled).
            if !kept && !row.draining {
                row.state.retire();
                self.cut_after(row.state, grace);
            }
        }
        *table = Arc::new(rows);
    }

    /// Stops sending new connections to `addr`; its open ones may finish within `grace`, then are
    /// cut. Returns whether `addr` was a backend.
    pub fn drain(&self, addr: SocketAddr, grace: Duration) -> bool {
        let mut table = self.table.write();
        let mut rows: Vec<Row> = table.as_ref().clone();
        let Some(row) = rows.iter_mut().find(|r| r.addr == addr) else {
            return false;
        };
        if row.draining {
            return true;
        }
        row.draining = true;
        row.state.retire();
        self.cut_after(row.state.clone(), grace);
        *table = Arc::new(rows);
        true
    }

    /// Open connections to `addr`.
    pub fn open_to(&self, addr: SocketAddr) -> u64 {
        self.table
            .read()
            .iter()
            .find(|r| r.addr == addr)
            .map_or(0, |r| r.state.open.load(Ordering::Relaxed))
    }

    /// The accept loop of the HTTP mode: each connection, unless `max_connections` are open, is
    /// handed to `handle` on its own task; on `stop`, waits for them to end.
    pub(crate) async fn accept<F, Fut>(
        &self,
        listener: TcpListener,
        limits: Limits,
        stop: CancellationToken,
        handle: F,
    ) where
        F: Fn(Proxy, TcpStream, SocketAddr, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Accepted sockets inherit TCP_NODELAY from the listener (Linux): one call, not one per
        // connection.
        if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on the listener");
        }
        let connections = TaskTracker::new();
        loop {
            let (client, peer) = tokio::select! {
                () = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, or the peer reset before accept: keep serving.
                        tracing::debug!(error = %e, "accept failed");
                        if e.kind() != std::io::ErrorKind::ConnectionAborted {
                            self.stats.accept_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            if self.stats.open.load(Ordering::Relaxed) >= limits.max_connections {
                self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                drop(client);
                continue;
            }
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            self.stats.open.fetch_add(1, Ordering::Relaxed);
            let work = handle(self.clone(), client, peer, stop.clone());
            let stats = self.stats.clone();
            connections.spawn(async move {
                work.await;
                stats.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // The port is free again at once (a listener for a changed spec may bind it).
        drop(listener);
        connections.close();
        connections.wait().await;
        // Drains still pending finish on their own: each only cancels a token, and the
        // connections it would cut are closed already.
        self.timers.close();
    }
}

/// Binds `shards` listeners on `addr` for [`Proxy::serve_shards`]: descriptors of one socket if
/// `shared` (every shard woken by every arrival, the L4 mode's: see `l4loop`), else
/// sockets sharing the port (`SO_REUSEPORT`: the kernel spreads new connections over them by a
/// hash, the HTTP mode's). An address in use by another program (without `SO_REUSEPORT`) fails
/// here.
pub fn bind_shards(
    addr: SocketAddr,
    shards: usize,
    shared: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if shared {
        let one = bind_shards_reuse(addr, 1)?.remove(0);
        let mut all = (1..shards.max(1))
            .map(|_| one.try_clone())
            .collect::<std::io::Result<Vec<_>>>()?;
        all.push(one);
        return Ok(all);
    }
    bind_shards_reuse(addr, shards)
}

fn bind_shards_reuse(
    addr: SocketAddr,
    shards: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..shards.max(1))
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(s.into())
        })
        .collect()
}

impl Proxy {
    /// Serves each listener on its own thread, so that a connection stays on one thread from
    /// accept to close: in L4 mode on an event loop of its own (`l4loop`), in HTTP mode
    /// (`http`) on a current-thread tokio runtime. Returns once `stop` is cancelled and every
    /// shard has closed its connections.
    pub async fn serve_shards(
        &self,
        listeners: Vec<std::net::TcpListener>,
        http: bool,
        limits: Limits,
        stop: CancellationToken,
    ) {
        let mut done = Vec::new();
        let loads: Arc<[std::sync::atomic::AtomicUsize]> = (0..listeners.len())
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
        for (i, l) in listeners.into_iter().enumerate() {
            // Each shard picks on its own: the table is shared, the round-robin state is not,
            // so no two threads contend for it on every connection (each shard still follows
            // the weights, and so does their sum).
            let proxy = Proxy {
                picker: Arc::default(),
                ..self.clone()
            };
            let stop = stop.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let shard: Box<dyn FnOnce() + Send> = if http {
                Box::new(move || {
                    http_shard(proxy, l, limits, stop);
                    let _ = tx.send(());
                })
            } else {
                let (poll, waker) = match l4loop::poll_and_waker() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "no poll for a proxy shard");
                        continue;
                    }
                };
                // The waker lives as long as the shard: a closed eventfd leaves the poll, and a
                // wake-up still pending with it.
                let waker = Arc::new(waker);
                let (s, w) = (stop.clone(), waker.clone());
                self.timers.spawn(async move {
                    s.cancelled().await;
                    if let Err(e) = w.wake() {
                        tracing::error!(error = %e, "a proxy shard could not be told to stop");
                    }
                });
                let loads = (loads.clone(), i);
                Box::new(move || {
                    let _waker = waker;
                    if let Err(e) = l4loop::serve(proxy, l, poll, limits, loads, &stop) {
                        tracing::error!(error = %e, "proxy shard failed");
                    }
                    let _ = tx.send(());
                })
            };
            match std::thread::Builder::new()
                .name(format!("augur-proxy-{i}"))
                .spawn(shard)
            {
                Ok(_) => done.push(rx),
                Err(e) => tracing::error!(error = %e, "no thread for a proxy shard"),
            }
        }
        for rx in done {
            let _ = rx.await;
        }
        // Drains still pending finish on their own: each only cancels a token, and the
        // connections it would cut are closed already.
        self.timers.close();
    }
}

/// One HTTP-mode shard: a current-thread runtime with sockets and timers only (no signal or
/// process driver to visit on every turn of the loop), serving `l` until `stop`.
fn http_shard(proxy: Proxy, l: std::net::TcpListener, limits: Limits, stop: CancellationToken) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "no runtime for a proxy shard");
            return;
        }
    };
    rt.block_on(async move {
        let serve = async move {
            match TcpListener::from_std(l) {
                Ok(l) => proxy.serve_http(l, limits, stop).await,
                Err(e) => tracing::error!(error = %e, "proxy shard without a listener"),
            }
        };
        tokio::select! {
            () = serve => {}
            () = keep_a_timer_ahead(limits.connect_timeout) => {}
        }
    });
}

/// Keeps a timer pending in the shard's runtime that expires before any connect's deadline
/// (`deadline / 2` ahead, renewed when it fires). Tokio's time driver wakes itself (an eventfd
/// write and one more `epoll_wait`) whenever a timer is armed earlier than its next planned
/// wake-up; with no timer pending, every connect's timeout was such a timer, so every new
/// connection paid for a wake-up. Behind this one, the connects' timers are later and arm
/// silently. Never returns.
async fn keep_a_timer_ahead(deadline: Duration) {
    let period = (deadline / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
    }
}

impl Proxy {
    /// Cuts a backend's connections once `grace` has passed.
    fn cut_after(&self, state: Arc<BackendState>, grace: Duration) {
        self.timers.spawn(async move {
            tokio::time::sleep(grace).await;
            state.cut.cancel();
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A backend that answers every connection with its name, then echoes.
    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        TaskTracker::new().spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                TaskTracker::new().spawn(async move {
                    let _ = s.write_all(name.as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Shards: one listener per thread on one port; every connection is served, by either;
    /// another program on the port is refused at bind; all shards end on stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_share_the_port_and_stop_together() {
        let a = backend("a").await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listeners = bind_shards(addr, 2, true).expect("two shards");
        assert_eq!(listeners.len(), 2);
        assert_eq!(
            std::net::TcpListener::bind(addr)
                .map_err(|e| e.kind())
                .err(),
            Some(std::io::ErrorKind::AddrInUse),
            "another program cannot take the port"
        );
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 256)], Duration::from_secs(1));
        let stop = CancellationToken::new();
        let serving = {
            let p = proxy.clone();
            let s = stop.clone();
            tokio::spawn(
                async move { p.serve_shards(listeners, false, Limits::default(), s).await },
            )
        };
        for _ in 0..20 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 1];
            c.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"a");
        }
        assert_eq!(proxy.stats.accepted.load(Ordering::Relaxed), 20);
        let mut held = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        held.read_exact(&mut buf).await.expect("read");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("every shard ends")
            .expect("joined");
        assert_eq!(held.read(&mut buf).await.ok(), Some(0), "closed on stop");
        assert_eq!(proxy.stats.open.load(Ordering::Relaxed), 0);
        assert_eq!(proxy.open_to(a), 0);
    }

    /// Each direction's end is passed on by itself: the client stops sending and still gets the
    /// backend's answer to the end, and the backend sees the client's end.
    #[tokio::test]
    async fn a_half_close_is_passed_on_and_the_answer_still_arrives() {
        let a = backend("a").await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 1)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy, Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // More than a relay buffer, so that the relay waits for a writable socket on the way.
        let sent: Vec<u8> = (0..3 * RELAY_BUFFER).map(|i| (i % 251) as u8).collect();
        c.write_all(&sent).await.expect("write");
        c.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .expect("the backend ended too")
            .expect("read");
        assert_eq!(got[0], b'a');
        assert_eq!(&got[1..], &sent[..]);
        tokio::time::timeout(Duration::from_secs(5), async {
            while proxy.stats.open.load(Ordering::Relaxed) > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the relay closes both sockets");
        stop.cancel();
    }

    /// A backend that takes the connect but never completes it (its accept queue is full, so
    /// the kernel drops the handshake): after the connect timeout the next backend serves.
    #[tokio::test]
    async fn a_connect_that_hangs_moves_to_the_next_backend_after_the_timeout() {
        let a = backend("a").await;
        let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        stuck
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        stuck.listen(0).expect("listen");
        let hung = stuck.local_addr().expect("addr").as_socket().expect("inet");
        // Fill its queue: these are never accepted.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hung)).await
            {
                fillers.push(s);
            }
        }
        let proxy = Proxy::default();
        // The hung backend first in the rotation (the higher weight goes first).
        proxy.set_backends(&[(hung, 2), (a, 1)], Duration::from_secs(1));
        let limits = Limits {
            connect_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, stop) = start(&proxy, limits).await;
        let t = std::time::Instant::now();
        let (name, _c) = tokio::time::timeout(Duration::from_secs(5), who(addr))
            .await
            .expect("served");
        assert_eq!(name, "a");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(proxy.stats.connect_failures.load(Ordering::Relaxed), 1);
        stop.cancel();
    }

    /// The proxy sets TCP_NODELAY once, on its listener: accepted sockets must inherit it.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        socket2::SockRef::from(&l)
            .set_tcp_nodelay(true)
            .expect("nodelay");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        assert!(s.nodelay().expect("read back"));
    }

    /// The L4 proxy on one shard, on a free port.
    async fn start(proxy: &Proxy, limits: Limits) -> (SocketAddr, CancellationToken) {
        let l = bind_shards(SocketAddr::from(([127, 0, 0, 1], 0)), 1, true).expect("bind");
        let addr = l[0].local_addr().expect("addr");
        let stop = CancellationToken::new();
        let (p, s) = (proxy.clone(), stop.clone());
        TaskTracker::new().spawn(async move { p.serve_shards(l, false, limits, s).await });
        (addr, stop)
    }

    async fn who(addr: SocketAddr) -> (String, TcpStream) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = s.read(&mut buf).await.expect("read");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), s)
    }

    /// A dead address: bound and closed at once, so connects are refused.
    async fn dead() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn weights_are_followed_and_a_refusing_backend_is_skipped() {
        let (a, b) = (backend("a").await, backend("b").await);
        let gone = dead().await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 2), (b, 1), (gone, 1)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy, Limits::default()).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..40 {
            let (name, _) = who(addr).await;
            *counts.entry(name).or_default() += 1;
        }
        // Every connection was served; the dead backend's turns went to the next pick.
        assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
        assert_eq!(counts.get(""), None, "no connection failed");
        assert!(counts["a"] > counts["b"], "{counts:?}");
        assert_eq!(proxy.stats.connect_failures.load(Ordering::Relaxed), 10);
        assert_eq!(proxy.stats.no_backend.load(Ordering::Relaxed), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_drained_backend_takes_nothing_new_and_its_connections_end_after_the_grace() {
        let (a, b) = (backend("a").await, backend("b").await);
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 1), (b, 1)], Duration::from_secs(1));
        let (addr, stop) = start(&proxy, Limits::default()).await;
        // Find a connection on a.
        let mut on_a = None;
        for _ in 0..4 {
            let (name, s) = who(addr).await;
            if name == "a" {
                on_a = Some(s);
                break;
            }
        }
        let mut on_a = on_a.expect("a connection on a");
        assert!(proxy.drain(a, Duration::from_millis(300)));
        for _ in 0..6 {
            assert_eq!(who(addr).await.0, "b", "nothing new to a draining backend");
        }
        // The open connection still works within the grace...
        on_a.write_all(b"x").await.expect("write");
        let mut buf = [0u8; 1];
        assert_eq!(on_a.read(&mut buf).await.expect("echo"), 1);
        // ...and is closed after it.
        let end = tokio::time::timeout(Duration::from_secs(5), on_a.read(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "closed: {end:?}");
        assert_eq!(proxy.stats.cut_by_drain.load(Ordering::Relaxed), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_counted() {
        let a = backend("a").await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(a, 1)], Duration::from_secs(1));
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (addr, stop) = start(&proxy, limits).await;
        let (_n1, _c1) = who(addr).await;
        let (_n2, _c2) = who(addr).await;
        let (third, _c3) = who(addr).await;
        assert_eq!(third, "", "closed on arrival");
        assert_eq!(proxy.stats.over_capacity.load(Ordering::Relaxed), 1);
        // With no backend at all, a connection is closed and counted.
        proxy.set_backends(&[], Duration::from_millis(10));
        drop((_c1, _c2));
        tokio::time::timeout(Duration::from_secs(5), async {
            while proxy.stats.open.load(Ordering::Relaxed) > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first two close");
        assert_eq!(who(addr).await.0, "");
        assert_eq!(proxy.stats.no_backend.load(Ordering::Relaxed), 1);
        stop.cancel();
    }
}

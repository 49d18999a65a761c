//! The L4 relay of one proxy shard on an event loop of its own (mio): one thread, one `epoll`,
//! every connection a pair of sockets and two 4 KiB buffers in a slab, driven inline when either
//! socket reports readiness. No task, waker or timer per connection: the loop reads what is
//! ready, writes it on, and closes both sockets when both directions have ended.
//!
//! The behaviour is that of the tokio relay it replaced (docs/ARCHITECTURE.md says why):
//! smooth weighted round-robin over the usable backends, a refused or timed-out connect tried on
//! the next backend (at most `max_attempts`; nothing has reached a backend until a write to it
//! succeeded), half-close passed on in each direction, at most `max_connections` open (more
//! closed on arrival), a draining backend's connections cut when its grace ends, an accept that
//! fails for want of descriptors tried again shortly, and on stop every connection closed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::{BackendState, Limits, Proxy, RELAY_BUFFER, Row};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// How often open connections are looked over for a drain's end or a connect's deadline.
const TICK: Duration = Duration::from_millis(100);

/// A shard with more than this many connections above another's leaves new ones to the others
/// (not tuned: small against the hundreds a shard holds under load, and at least one).
const SLACK: usize = 2;

/// How long a shard that left a connection to the others waits before it takes what they left.
const LEFTOVERS: Duration = Duration::from_millis(1);

/// How long after a failed accept (out of descriptors) the waiting connections are tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// One direction of a connection.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source has ended (read returned 0).
    eof: bool,
    /// The end was passed on (`shutdown(Write)` on the destination).
    shut: bool,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: vec![0; RELAY_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            shut: false,
        }
    }

    /// Moves bytes from `src` to `dst` until one of them would block. Returns whether anything
    /// came from `src` (bytes or its end) and whether any byte was written to `dst`.
    fn pump(&mut self, src: &mut TcpStream, dst: &mut TcpStream) -> io::Result<(bool, bool)> {
        let (mut read, mut wrote) = (false, false);
        loop {
            if self.start < self.end {
                match dst.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.start += n;
                        wrote = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((read, wrote)),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if self.eof {
                if !self.shut {
                    self.shut = true;
                    // The peer may have gone already; the other direction sees it.
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return Ok((read, wrote));
            }
            match src.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    read = true;
                }
                Ok(n) => {
                    read = true;
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((read, wrote)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// Client to backend, backend to client.
    up: Pipe,
    down: Pipe,
    /// The table the backend was picked from, and the backends tried so far.
    table: Arc<Vec<Row>>,
    tried: Vec<bool>,
    attempts: usize,
    backend: usize,
    /// Something reached the backend, or came from it: it is connected, and the connection is
    /// never moved to another backend.
    connected: bool,
    /// When the current connect began.
    since: Instant,
}

impl Conn {
    fn state(&self) -> &Arc<BackendState> {
        &self.table[self.backend].state
    }
}

/// What driving a connection came to.
enum Drive {
    Open,
    Done,
    /// The connect to the backend failed before anything reached it: try the next.
    Retry,
}

struct Shard {
    proxy: Proxy,
    limits: Limits,
    poll: Poll,
    conns: Slab<Conn>,
    /// Every shard's open connections, this one's at `me`.
    loads: Arc<[AtomicUsize]>,
    me: usize,
    /// Set when this shard left arrivals to the others, or an accept failed: then it accepts
    /// whatever is waiting.
    leftovers_at: Option<Instant>,
}

/// Serves `listener` on this thread until `stop` is set (the caller wakes `poll` through its
/// waker, registered as [`WAKER`]); then closes every connection and returns.
///
/// The shards share one listening socket (each its own descriptor of it), so every arrival wakes
/// every shard and any may accept it: a connection is never queued behind a busy shard while
/// another idles, which `SO_REUSEPORT`'s hash did (the machine idled twice as often as under
/// HAProxy). The first to wake would take most of a burst of long-lived connections, so a shard
/// holding more than [`SLACK`] connections above another's leaves arrivals to the others, and
/// takes what they left [`LEFTOVERS`] later: nothing waits longer than that for a busy shard.
pub(crate) fn serve(
    proxy: Proxy,
    listener: std::net::TcpListener,
    poll: Poll,
    limits: Limits,
    (loads, me): (Arc<[AtomicUsize]>, usize),
    stop: &tokio_util::sync::CancellationToken,
) -> io::Result<()> {
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux).
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set on the listener");
    }
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut shard = Shard {
        proxy,
        limits,
        poll,
        conns: Slab::new(),
        loads,
        me,
        leftovers_at: None,
    };
    let mut events = Events::with_capacity(256);
    let mut next_tick = Instant::now() + TICK;
    loop {
        let now = Instant::now();
        let tick = (!shard.conns.is_empty()).then(|| next_tick.saturating_duration_since(now));
        let leftovers = shard.leftovers_at.map(|t| t.saturating_duration_since(now));
        let timeout = match (tick, leftovers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Err(e) = shard.poll.poll(&mut events, timeout)
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
        if stop.is_cancelled() {
            break;
        }
        for ev in &events {
            match ev.token() {
                LISTENER => shard.accept(&listener, true),
                WAKER => {}
                Token(t) => shard.drive(t / 2),
            }
        }
        let now = Instant::now();
        if shard.leftovers_at.is_some_and(|t| now >= t) {
            shard.leftovers_at = None;
            shard.accept(&listener, false);
        }
        if now >= next_tick {
            shard.tick(now);
            next_tick = now + TICK;
        }
    }
    // Closing a socket removes it from the poll; the stats follow.
    let keys: Vec<usize> = shard.conns.iter().map(|(k, _)| k).collect();
    for k in keys {
        shard.close(k);
    }
    Ok(())
}

impl Shard {
    /// Accepts until none is waiting; when `balanced`, only while this shard is not busier than
    /// the others (see [`serve`]).
    fn accept(&mut self, listener: &TcpListener, balanced: bool) {
        loop {
            if balanced && self.busier_than_another() {
                self.leftovers_at
                    .get_or_insert_with(|| Instant::now() + LEFTOVERS);
                return;
            }
            let client = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // The peer reset before accept: the next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Out of descriptors (or memory): the socket will not report the waiting
                    // connections again until another arrives, so try again a little later.
                    tracing::debug!(error = %e, "accept failed");
                    self.proxy
                        .stats
                        .accept_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.leftovers_at
                        .get_or_insert_with(|| Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            let stats = &self.proxy.stats;
            if stats.open.load(Ordering::Relaxed) >= self.limits.max_connections {
                stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let table = self.proxy.table.read().clone();
            let tried = vec![false; table.len()];
            let mut conn_parts = (table, tried, 0usize);
            let Some((server, backend)) = self.connect(&mut conn_parts) else {
                stats.no_backend.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (table, tried, attempts) = conn_parts;
            stats.open.fetch_add(1, Ordering::Relaxed);
            table[backend].state.open.fetch_add(1, Ordering::Relaxed);
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            entry.insert(Conn {
                client,
                server,
                up: Pipe::new(),
                down: Pipe::new(),
                table,
                tried,
                attempts,
                backend,
                connected: false,
                since: Instant::now(),
            });
            self.publish_load();
            let c = &mut self.conns[k];
            let registry = self.poll.registry();
            let both = Interest::READABLE | Interest::WRITABLE;
            if registry
                .register(&mut c.client, Token(2 * k), both)
                .is_err()
                || registry
                    .register(&mut c.server, Token(2 * k + 1), both)
                    .is_err()
            {
                self.close(k);
                continue;
            }
            // The client's first bytes are usually here already: relay them now.
            self.drive(k);
        }
    }

    fn busier_than_another(&self) -> bool {
        let mine = self.conns.len();
        self.loads
            .iter()
            .enumerate()
            .any(|(i, l)| i != self.me && l.load(Ordering::Relaxed) + SLACK < mine)
    }

    fn publish_load(&self) {
        self.loads[self.me].store(self.conns.len(), Ordering::Relaxed);
    }

    /// Connects to the next usable backend of `table` not tried yet; a connect that fails at
    /// once is counted and the next tried.
    fn connect(
        &self,
        (table, tried, attempts): &mut (Arc<Vec<Row>>, Vec<bool>, usize),
    ) -> Option<(TcpStream, usize)> {
        while *attempts < self.limits.max_attempts.max(1) {
            let i = self.proxy.pick(table, tried)?;
            tried[i] = true;
            *attempts += 1;
            match TcpStream::connect(table[i].addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Some((s, i));
                }
                Err(e) => self.connect_failed(table[i].addr, &e),
            }
        }
        None
    }

    fn connect_failed(&self, addr: SocketAddr, e: &io::Error) {
        tracing::debug!(backend = %addr, error = %e, "backend refused; trying the next");
        self.proxy
            .stats
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    fn drive(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let outcome = (|| -> Drive {
            match c.up.pump(&mut c.client, &mut c.server) {
                Ok((_, wrote)) => c.connected |= wrote,
                Err(e) if !c.connected && is_connect_error(&e) => return Drive::Retry,
                Err(_) => return Drive::Done,
            }
            match c.down.pump(&mut c.server, &mut c.client) {
                Ok((read, _)) => c.connected |= read,
                Err(e) if !c.connected && is_connect_error(&e) => return Drive::Retry,
                Err(_) => return Drive::Done,
            }
            if c.up.shut && c.down.shut {
                Drive::Done
            } else {
                Drive::Open
            }
        })();
        match outcome {
            Drive::Open => {}
            Drive::Done => self.close(k),
            Drive::Retry => {
                let addr = c.table[c.backend].addr;
                self.connect_failed(addr, &ErrorKind::ConnectionRefused.into());
                self.retry(k);
            }
        }
    }

    /// The backend of connection `k` failed before anything reached it: the next one.
    fn retry(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.state().open.fetch_sub(1, Ordering::Relaxed);
        let mut parts = (c.table.clone(), std::mem::take(&mut c.tried), c.attempts);
        let next = self.connect(&mut parts);
        let c = &mut self.conns[k];
        (c.table, c.tried, c.attempts) = parts;
        let Some((server, backend)) = next else {
            self.proxy.stats.no_backend.fetch_add(1, Ordering::Relaxed);
            // Counted here, not again in `close`.
            c.backend = usize::MAX;
            self.close(k);
            return;
        };
        c.state_swap(server, backend);
        c.state().open.fetch_add(1, Ordering::Relaxed);
        // The old socket left the poll when it was closed (dropped above).
        if self
            .poll
            .registry()
            .register(
                &mut c.server,
                Token(2 * k + 1),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.close(k);
            return;
        }
        self.drive(k);
    }

    /// Looks over open connections: a draining backend whose grace has ended cuts its own; a
    /// connect past its deadline moves to the next backend.
    fn tick(&mut self, now: Instant) {
        let mut cut = Vec::new();
        let mut late = Vec::new();
        for (k, c) in &self.conns {
            if c.state().cut.is_cancelled() {
                cut.push(k);
            } else if !c.connected && now.duration_since(c.since) >= self.limits.connect_timeout {
                // Connected but quiet (nothing to send either way) is not late.
                if c.server.peer_addr().is_err() {
                    late.push(k);
                }
            }
        }
        for k in cut {
            self.proxy
                .stats
                .cut_by_drain
                .fetch_add(1, Ordering::Relaxed);
            self.close(k);
        }
        for k in late {
            if let Some(c) = self.conns.get_mut(k) {
                tracing::debug!(backend = %c.table[c.backend].addr, "backend connect timed out; trying the next");
                self.proxy
                    .stats
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.retry(k);
            }
        }
        for (_, c) in &mut self.conns {
            if !c.connected && c.server.peer_addr().is_ok() {
                c.connected = true;
            }
        }
    }

    /// Closes both sockets of `k` (closing removes them from the poll).
    fn close(&mut self, k: usize) {
        if let Some(c) = self.conns.try_remove(k) {
            if c.backend != usize::MAX {
                c.state().open.fetch_sub(1, Ordering::Relaxed);
            }
            self.proxy.stats.open.fetch_sub(1, Ordering::Relaxed);
            self.publish_load();
        }
    }
}

impl Conn {
    /// Replaces the backend connection (the old socket is closed).
    fn state_swap(&mut self, server: TcpStream, backend: usize) {
        self.server = server;
        self.backend = backend;
        self.since = Instant::now();
        self.down = Pipe::new();
        // Bytes of the client not yet written stay in `up` for the next backend.
        self.up.shut = false;
    }
}

/// An error that means the connect never completed.
fn is_connect_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::TimedOut
    )
}

/// A poll for [`serve`] and the waker that interrupts it.
pub(crate) fn poll_and_waker() -> io::Result<(Poll, Waker)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    Ok((poll, waker))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::embedded::bind_shards;

    /// A backend that writes `a` to each connection and holds it open; its address.
    async fn greeting_backend() -> SocketAddr {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let b = backend.local_addr().expect("addr");
        tokio_util::task::TaskTracker::new().spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = backend.accept().await {
                let _ = s.write_all(b"a").await;
                held.push(s);
            }
        });
        b
    }

    /// Two shards on one socket: a burst of long-lived connections is spread over both (the
    /// first shard to wake does not take them all), and each is relayed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_on_one_socket_share_a_burst_of_long_lived_connections() {
        let b = greeting_backend().await;
        let proxy = Proxy::default();
        proxy.set_backends(&[(b, 1)], Duration::from_secs(1));
        let listeners =
            bind_shards(SocketAddr::from(([127, 0, 0, 1], 0)), 2, true).expect("shards");
        let addr = listeners[0].local_addr().expect("addr");
        let loads: Arc<[AtomicUsize]> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        let stop = CancellationToken::new();
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let (poll, waker) = poll_and_waker().expect("poll");
            wakers.push(waker);
            let (p, s, shared) = (proxy.clone(), stop.clone(), (loads.clone(), i));
            threads.push(std::thread::spawn(move || {
                serve(p, l, poll, Limits::default(), shared, &s).expect("served")
            }));
        }
        let mut clients = Vec::new();
        for _ in 0..40 {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.expect("relayed");
            clients.push(c);
        }
        let (l0, l1) = (
            loads[0].load(Ordering::Relaxed),
            loads[1].load(Ordering::Relaxed),
        );
        assert_eq!(l0 + l1, 40);
        // Within the slack, give or take an arrival taken as a leftover.
        assert!(l0.abs_diff(l1) <= 2 * SLACK + 2, "{l0} against {l1}");
        stop.cancel();
        for w in &wakers {
            w.wake().expect("wake");
        }
        for t in threads {
            t.join().expect("joined");
        }
        assert_eq!(proxy.stats.open.load(Ordering::Relaxed), 0);
    }

    /// Out of file descriptors, a shard keeps the connections waiting and takes them once
    /// descriptors are free again, with no new arrival to wake it (`epoll` reports the listening
    /// socket once per arrival). A descriptor limit is the whole process's, so the proxy runs in
    /// a child: this test binary again, under `prlimit`, running only the test below.
    #[tokio::test]
    async fn connections_waiting_while_out_of_descriptors_are_taken_once_some_are_free() {
        use tokio::io::AsyncBufReadExt;
        let b = greeting_backend().await;
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = tokio::process::Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(exe)
            .args([
                "--exact",
                "embedded::l4loop::tests::out_of_descriptors_child",
            ])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_BACKEND, b.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("prlimit (util-linux) runs the child");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = async || -> String {
            let within = Duration::from_secs(30);
            let line = tokio::time::timeout(within, lines.next_line()).await;
            line.expect("the child answers")
                .expect("read")
                .expect("a line")
        };
        let addr = loop {
            // Libtest's "test NAME ... " comes first on the line.
            if let Some((_, a)) = next().await.split_once("listening ") {
                break a.trim().parse::<SocketAddr>().expect("an address");
            }
        };
        assert_eq!(next().await, "full");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert_eq!(next().await, "accept failed");
        stdin.write_all(b"free\n").await.expect("told");
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut one))
            .await
            .expect("the waiting connection is taken without another arrival")
            .expect("relayed");
        assert_eq!(&one, b"a");
        drop(stdin);
        assert_eq!(next().await, "open 1");
        assert!(child.wait().await.expect("exit").success());
    }

    const CHILD_BACKEND: &str = "L4LOOP_TEST_BACKEND";

    /// The child of the test above (does nothing when run otherwise).
    #[test]
    #[ignore = "run by connections_waiting_while_out_of_descriptors_are_taken_once_some_are_free"]
    fn out_of_descriptors_child() {
        use std::io::BufRead;
        let Ok(b) = std::env::var(CHILD_BACKEND) else {
            return;
        };
        let proxy = Proxy::default();
        proxy.set_backends(&[(b.parse().expect("backend"), 1)], Duration::from_secs(1));
        let mut listeners =
            bind_shards(SocketAddr::from(([127, 0, 0, 1], 0)), 1, true).expect("bind");
        let l = listeners.pop().expect("one");
        println!("listening {}", l.local_addr().expect("addr"));
        let (poll, waker) = poll_and_waker().expect("poll");
        let stop = CancellationToken::new();
        let loads: Arc<[AtomicUsize]> = Arc::new([AtomicUsize::new(0)]);
        let (p, s) = (proxy.clone(), stop.clone());
        let shard = std::thread::spawn(move || {
            serve(p, l, poll, Limits::default(), (loads, 0), &s).expect("served")
        });
        let mut fillers = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fillers.push(f);
        }
        println!("full");
        let waited = Instant::now();
        while proxy.stats.accept_failures.load(Ordering::Relaxed) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "no accept failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        println!("accept failed");
        let mut stdin = std::io::stdin().lock();
        let mut line = String::new();
        stdin.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "free");
        drop(fillers);
        while stdin.read_line(&mut line).expect("read") > 0 {}
        println!("open {}", proxy.stats.open.load(Ordering::Relaxed));
        stop.cancel();
        waker.wake().expect("wake");
        shard.join().expect("joined");
    }
}

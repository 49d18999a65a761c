//! Connections to the local API: a cap on how many are open at once, and deadlines, so that slow
//! or idle clients cannot hold the API (or the agent's file descriptors).
//!
//! - HTTP: at most `api.max_connections` at once (more are closed as soon as they are accepted,
//!   and counted); hyper's header read timeout (`api.header_timeout`) closes a connection whose
//!   request head does not arrive in time, which also ends idle keep-alive connections; a request
//!   body must arrive within `api.body_timeout` (408).
//! - gRPC (HTTP/2): the same cap; the HTTP/2 preface must arrive within `api.header_timeout`; a
//!   connection that reads nothing for `api.idle_timeout` is closed (HTTP/2 keepalive pings every
//!   third of it keep a live client reading, so only a silent one is cut).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(api: &crate::config::ApiConfig) -> Self {
        Self {
            max_connections: api.max_connections,
            header_timeout: api.header_timeout,
            body_timeout: api.body_timeout,
            idle_timeout: api.idle_timeout,
        }
    }
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed for missing a deadline (header, preface or idle).
    pub timed_out: AtomicU64,
}

/// Hands out connection slots.
#[derive(Clone, Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    pub stats: Arc<ConnStats>,
}

/// One admitted connection's slot; frees it when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(max_connections: usize, stats: Arc<ConnStats>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            stats,
        }
    }

    /// A slot, or `None` (counted) when every slot is taken.
    pub fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.stats.open.fetch_add(1, Ordering::Relaxed);
                Some(Slot {
                    _permit: permit,
                    stats: self.stats.clone(),
                })
            }
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Whether an accept error concerns one connection (or a momentary lack of descriptors) rather
/// than the listener: the loop goes on after a short pause.
pub fn accept_error_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105))
}

/// A stream with a deadline for its first `preface` bytes and for every read after them: a
/// client that sends too slowly, or nothing at all, gets an error (and the connection closes).
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    slot: Option<Slot>,
    preface: usize,
    read_so_far: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, slot: Slot, preface: usize, limits: &Limits) -> Self {
        Self {
            inner,
            slot: Some(slot),
            preface,
            read_so_far: 0,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                self.read_so_far = self.read_so_far.saturating_add(n);
                // The preface deadline stays until the preface is in; then every read restarts
                // the idle clock.
                if self.read_so_far >= self.preface && n > 0 {
                    let next = tokio::time::Instant::now() + self.idle_timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if let Some(slot) = &self.slot {
                        slot.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    let what = if self.read_so_far < self.preface {
                        format!("no request within {:?}", self.header_timeout)
                    } else {
                        format!("idle for {:?}", self.idle_timeout)
                    };
                    self.slot = None;
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> Limits {
        Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_gate_holds_at_most_its_slots() {
        let gate = Gate::new(2, Arc::default());
        let a = gate.admit().expect("first");
        let _b = gate.admit().expect("second");
        assert!(gate.admit().is_none());
        assert_eq!(gate.stats.refused.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(gate.admit().is_some(), "a closed connection frees its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_idle_stream_is_cut_and_a_talkative_one_is_not() {
        let gate = Gate::new(4, Arc::default());
        // Silent: nothing within the header timeout.
        let (client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, gate.admit().expect("slot"), 24, &limits());
        let mut buf = [0u8; 64];
        let err = g.read(&mut buf).await.expect_err("cut");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
        // A preface dripped one byte every 500 ms misses the deadline too.
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, gate.admit().expect("slot"), 24, &limits());
        let drip = tokio::spawn(async move {
            for _ in 0..24 {
                if client.write_all(b"P").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            client
        });
        let mut got = 0;
        let r = loop {
            match g.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        assert!(r.is_err() && got < 24, "got {got}");
        drop(drip);
        // A client that sends its preface, then talks within the idle timeout, is kept.
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, gate.admit().expect("slot"), 4, &limits());
        client.write_all(b"PRI ").await.expect("write");
        assert_eq!(g.read(&mut buf).await.expect("preface"), 4);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"x").await.expect("write");
            assert_eq!(g.read(&mut buf).await.expect("kept"), 1);
        }
        assert_eq!(gate.stats.timed_out.load(Ordering::Relaxed), 2);
    }
}

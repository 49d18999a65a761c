//! Datagrams under the gossip layer: UDP in the agent, and an in-memory network for the
//! simulation, with links a script can cut and a way to deliver any bytes from any address (what
//! an attacker on the network can do), so that tests exercise the same bytes the wire carries.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Opens datagram sockets.
#[async_trait::async_trait]
pub trait Datagrams: Send + Sync + 'static {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>>;
}

/// One bound socket.
#[async_trait::async_trait]
pub trait DatagramSocket: Send + Sync + 'static {
    fn local_addr(&self) -> io::Result<SocketAddr>;
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Receives one datagram into `buf`; a datagram longer than `buf` is truncated.
    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// The host's UDP sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Udp;

#[async_trait::async_trait]
impl Datagrams for Udp {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        Ok(Box::new(tokio::net::UdpSocket::bind(addr).await?))
    }
}

#[async_trait::async_trait]
impl DatagramSocket for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, to).await
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }
}

/// Datagrams queued per in-memory socket before more are dropped (as a full UDP buffer would).
const MEMORY_QUEUE: usize = 256;

type Inbox = mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// Datagrams a tap keeps (the newest).
const TAP_KEEP: usize = 4096;

#[derive(Default)]
struct MemoryInner {
    sockets: HashMap<SocketAddr, Inbox>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Copies of datagrams delivered to tapped addresses (what an eavesdropper records).
    tapped: HashSet<SocketAddr>,
    recorded: std::collections::VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Sockets whose next receive panics (a stand-in for any bug in the task that reads them).
    poisoned: HashSet<SocketAddr>,
}

/// An in-process datagram network. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryDatagrams {
    inner: Arc<parking_lot::Mutex<MemoryInner>>,
}

impl std::fmt::Debug for MemoryDatagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemoryDatagrams({} sockets)",
            self.inner.lock().sockets.len()
        )
    }
}

impl MemoryDatagrams {
    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut inner = self.inner.lock();
        inner.cut.insert((a, b));
        inner.cut.insert((b, a));
    }

    pub fn restore(&self, a: SocketAddr, b: SocketAddr) {
        let mut inner = self.inner.lock();
        inner.cut.remove(&(a, b));
        inner.cut.remove(&(b, a));
    }

    /// Records every datagram delivered to `addr` from now on (see [`Self::recorded`]).
    pub fn tap(&self, addr: SocketAddr) {
        self.inner.lock().tapped.insert(addr);
    }

    /// The datagrams recorded by taps, as (from, to, bytes), oldest first.
    pub fn recorded(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.inner.lock().recorded.iter().cloned().collect()
    }

    /// Makes the task reading `addr` panic on its next receive: tests of supervision.
    pub fn poison(&self, addr: SocketAddr) {
        self.inner.lock().poisoned.insert(addr);
    }

    /// Delivers `bytes` to `to` as if sent from `from` (any address: spoofing is what an attacker
    /// on the network can do). Returns whether a socket was there to take it.
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) -> bool {
        self.deliver(from, to, bytes)
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) -> bool {
        let mut inner = self.inner.lock();
        if inner.cut.contains(&(from, to)) {
            return false;
        }
        if inner.tapped.contains(&to) {
            if inner.recorded.len() >= TAP_KEEP {
                inner.recorded.pop_front();
            }
            inner.recorded.push_back((from, to, bytes.clone()));
        }
        match inner.sockets.get(&to) {
            Some(tx) => tx.try_send((from, bytes)).is_ok(),
            None => false,
        }
    }
}

struct MemorySocket {
    addr: SocketAddr,
    net: MemoryDatagrams,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        self.net.inner.lock().sockets.remove(&self.addr);
    }
}

#[async_trait::async_trait]
impl Datagrams for MemoryDatagrams {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        let mut inner = self.inner.lock();
        if inner.sockets.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use"),
            ));
        }
        let (tx, rx) = mpsc::channel(MEMORY_QUEUE);
        inner.sockets.insert(addr, tx);
        Ok(Box::new(MemorySocket {
            addr,
            net: self.clone(),
            rx,
        }))
    }
}

#[async_trait::async_trait]
impl DatagramSocket for MemorySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        if buf.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too long",
            ));
        }
        // Like UDP: nobody there, or a full queue, loses the datagram silently.
        self.net.deliver(self.addr, to, buf.to_vec());
        Ok(buf.len())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let got = self.rx.recv().await;
        if self.net.inner.lock().poisoned.remove(&self.addr) {
            panic!("poisoned socket {} (a test of supervision)", self.addr);
        }
        match got {
            Some((from, bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok((n, from))
            }
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "network closed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_datagrams_deliver_cut_and_inject() {
        let net = MemoryDatagrams::default();
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1".parse().expect("addr");
        let sa = net.bind(a).await.expect("bind a");
        let mut sb = net.bind(b).await.expect("bind b");
        assert!(net.bind(a).await.is_err(), "an address binds once");
        let mut buf = [0u8; 16];
        sa.send_to(b"hi", b).await.expect("send");
        assert_eq!(sb.recv_from(&mut buf).await.expect("recv"), (2, a));
        net.cut(a, b);
        sa.send_to(b"lost", b).await.expect("send");
        let spoofed: SocketAddr = "6.6.6.6:6".parse().expect("addr");
        assert!(net.inject(spoofed, b, b"x".to_vec()));
        assert_eq!(sb.recv_from(&mut buf).await.expect("recv"), (1, spoofed));
        drop(sa);
        assert!(
            net.bind(a).await.is_ok(),
            "a dropped socket frees its address"
        );
    }
}

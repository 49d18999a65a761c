//! A chitchat transport wrapper that counts gossip bytes, so the agent can report its gossip
//! bandwidth (`augur_mesh_gossip_bytes_total`) and benchmarks can measure it per node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};

/// Bytes and messages through one node's gossip socket.
#[derive(Debug, Default)]
pub struct GossipTraffic {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
}

/// Wraps a transport; every socket it opens counts into `traffic`.
#[allow(missing_debug_implementations)]
pub struct Counting<T> {
    pub inner: T,
    pub traffic: Arc<GossipTraffic>,
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    traffic: Arc<GossipTraffic>,
}

#[async_trait::async_trait]
impl<T: Transport> Transport for Counting<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(CountingSocket {
            inner,
            traffic: self.traffic.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let out = self.inner.send(to, envelope).await?;
        self.traffic
            .bytes_sent
            .fetch_add(out.num_bytes_sent as u64, Ordering::Relaxed);
        self.traffic.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let out = self.inner.recv().await?;
        self.traffic
            .bytes_received
            .fetch_add(out.num_bytes_received as u64, Ordering::Relaxed);
        self.traffic
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
}

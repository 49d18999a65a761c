//! Gossip traffic counters: bytes and datagrams through one node's gossip socket, on the wire
//! (framing, authentication and encryption included), so the agent can report its gossip bandwidth
//! (`augur_mesh_gossip_bytes_total`) and benchmarks can measure it per node.

use std::sync::atomic::AtomicU64;

/// Bytes and messages through one node's gossip socket.
#[derive(Debug, Default)]
pub struct GossipTraffic {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
}

//! augur's fleet mesh (DESIGN.md decisions 1 and 2): node identity and admission, membership and
//! liveness over chitchat with signed values, and a libp2p swarm over QUIC for what carries authority.
//! Exposes handles and event streams, never sockets. `sim` is the deterministic in-process fleet the
//! tests (and later the orchestration tests) script against.

pub mod act;
pub mod admission;
#[cfg(test)]
mod attacks;
mod cbor_bytes;
pub mod clock;
pub mod datagram;
pub mod gatekeeper;
pub mod identity;
pub mod leases;
pub mod membership;
pub mod model_updates;
pub mod node;
pub mod operator;
pub mod reach;
pub mod secure;
pub mod sim;
pub mod swarm;
pub mod tasks;
pub mod transport;
pub mod values;

pub use clock::Clock;
pub use identity::{IdentityError, NodeIdentity};
pub use node::{
    Crossing, EventKind, FleetEvent, InstanceChange, MemberChange, Mesh, MeshConfig, MeshError,
    MigrationChange, ModelChange, TrafficProblem,
};
pub use tasks::Tasks;

// The few foreign types in the mesh's public API; the crates behind them are the mesh's own
// business (a caller that needs more of chitchat or libp2p depends on it by name).
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};

//! augur's fleet mesh: who this node is and, as the mesh work lands, who its peers are (chitchat for
//! membership and liveness, libp2p over QUIC for everything that carries authority). Exposes handles
//! and events, never sockets. Today it owns the node's identity.

pub mod admission;
pub mod identity;
pub mod membership;
pub mod sim;
pub mod values;

pub use identity::{IdentityError, NodeIdentity};

// The mesh's transports are pinned here so the whole dependency set of the design resolves and builds
// together; the swarm and the membership layer that use them arrive with the mesh work.
pub use chitchat;
pub use libp2p;
pub use quinn;

//! The agent's side of the mesh: starting it from the configuration (`mesh`), the log of fleet
//! events that `/v1/events` and `augur events` read (`events`), and the publisher of this node's
//! signed values and threshold crossings (`publisher`). `augur fleet` (keys and tokens) is a
//! command of `crate::cli`.

pub mod events;
pub mod mesh;
pub mod publisher;

//! Running the fleet's service instances on this node: the drivers that start and stop them
//! (`process`: the agent runs the command itself). The decisions (which spec, where, healthy or
//! not) are `augur_orchestrate`'s; this module does what they say on this host.

pub mod catalog;
pub mod health;
pub mod process;
pub mod runtime;
pub mod sync;

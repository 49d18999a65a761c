//! The right to act and the moves it allows: this node's lease voter and acquisitions (over the
//! mesh, `augur_mesh::leases`), the fencing epochs every executor checks, and the migrations they
//! guard. What is here is I/O and wiring; the rules are `augur_orchestrate`'s.
//!
//! - `store`: what the acting half keeps durably (`acting.redb`): the voter's state, the highest
//!   epoch seen per service (fencing);
//! - `config`: the lease settings of the signed fleet document, followed as the catalog changes;
//! - `assignments`: the services' assignments (and the moves' journals that travel with them);
//! - `executor`: the migrations this node coordinates, and takeovers of orphaned ones;
//! - `autonomy`: the autonomous loop (cases, election, witness, moves) around
//!   `augur_orchestrate::autonomy`.

pub mod assignments;
pub mod autonomy;
pub mod config;
pub mod executor;
#[cfg(test)]
pub mod sim;
pub mod store;

//! Majority leases with fencing, in the style of PaxosLease (Trencseni, Gazso, Reinhardt 2012,
//! arXiv:1209.4187): the right to act on a service is granted by a majority of the lease voters,
//! for a bounded time, and the ballot that won it is the fencing epoch every action carries.
//!
//! - [`wire`]: the messages voters and proposers exchange, the lease keys (a service, or one slot of
//!   the disruption budget) and what a refusal says;
//! - [`voter`]: one voter (an acceptor), whose state is persisted before it answers;
//! - [`proposer`]: one node's acquisition of one lease, its renewal while held, and its release.
//!
//! Why it is safe (the argument in full is in docs/ARCHITECTURE.md, "Leases"):
//! - a voter promises a round of a key to one ballot only, and accepts a proposal only under the
//!   ballot it last promised; so two majorities, which always share a voter, cannot both accept
//!   different ballots of one round, and a later lease's round is above every earlier one's
//!   (the fencing epoch only grows);
//! - a proposer takes a key only if no voter of a majority reports it held by someone else; every
//!   lease still open was accepted by a majority, which shares a voter with that majority;
//! - the proposer starts its timer before it asks, each voter starts its own when it accepts, so
//!   the holder's lease ends before any voter's copy of it does (clocks may drift by
//!   [`proposer::DRIFT_MARGIN`] of the duration); a voter that restarts treats every lease it had
//!   accepted as open for a full duration again;
//! - the disruption budget is made of keys too (`budget/fleet/<i>`, `budget/zone/<z>/<i>`): a move
//!   must hold a service key and one free slot of each budget, so at most as many moves as there
//!   are slots run at once, fleet-wide, exactly.

pub mod proposer;
pub mod voter;
pub mod wire;

#[cfg(test)]
mod sim;

//! What travels on `/augur/act/1` between admitted peers: lease requests and replies, and
//! assignments (which instance of a service runs where, in which role), each sent by the holder of
//! the service's lease under its fencing epoch.

use augur_orchestrate::lease::wire::{Reply, Request};
use augur_orchestrate::migration::Entry;
use serde::{Deserialize, Serialize};

/// Entries one assignment may hold (a service's replicas and standbys, and a move's extra one).
pub const MAX_ENTRIES: usize = 2 * augur_orchestrate::spec::MAX_REPLICAS as usize + 2;
/// The longest name in an assignment.
const MAX_NAME: usize = 200;

/// A service's assignment: every instance named here runs on its node in its role, and no other
/// instance of the service's slots named here runs. Ordered by (epoch, seq): a node keeps the
/// highest it has seen and refuses an epoch below its fence for the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub service: String,
    /// The fencing epoch of the lease it was sent under.
    pub epoch: u64,
    /// The change's number within the lease's migration.
    pub seq: u64,
    pub entries: Vec<Entry>,
}

impl Assignment {
    /// Checks the bounds of what arrived from the network.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control);
        if augur_orchestrate::spec::check_name(&self.service).is_err() {
            return Err(format!("{:?} is not a service name", self.service));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!(
                "{} entries; at most {MAX_ENTRIES}",
                self.entries.len()
            ));
        }
        for e in &self.entries {
            if !(ok(&e.instance) && ok(&e.node) && ok(&e.slot)) {
                return Err("an entry's instance, node or slot is empty, too long or has control characters".into());
            }
        }
        let mut ids: Vec<&str> = self.entries.iter().map(|e| e.instance.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.entries.len() {
            return Err("an instance is named twice".into());
        }
        Ok(())
    }

    /// Whether `self` comes after `other` (same service).
    pub fn is_newer_than(&self, other: &Assignment) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActRequest {
    Lease(Request),
    Assign(Assignment),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActReply {
    Lease(Reply),
    /// Taken (persisted), or why not.
    Assign(Result<(), String>),
}

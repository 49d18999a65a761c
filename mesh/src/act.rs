//! What travels on `/augur/act/1` between admitted peers: lease requests and replies, and
//! assignments (which instance of a service runs where, in which role), each sent by the holder of
//! the service's lease under its fencing epoch.

use augur_orchestrate::lease::wire::{Reply, Request};
use augur_orchestrate::migration::{Entry, Record};
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
    /// The move it is a step of, as its coordinator journaled it before sending it: replicated
    /// with every assignment (a majority of the lease voters must take it before the coordinator
    /// goes on), so if the coordinator dies mid-way the next one finishes or undoes the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<Box<MoveJournal>>,
}

/// A move's journal as it travels with its assignments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJournal {
    /// The migration's id.
    pub id: String,
    /// The node that coordinates it (its peer id).
    pub coordinator: String,
    /// The lease it acts under: a successor takes over this very lease (its hold-down does not
    /// apply to it).
    pub lease_id: u64,
    pub record: Record,
}

impl MoveJournal {
    /// Whether the move is over (completed, refused, rolled back or abandoned).
    pub fn finished(&self) -> bool {
        matches!(
            self.record.phase,
            augur_orchestrate::migration::Phase::Finished(_)
        )
    }
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
        if let Some(j) = &self.journal {
            if !(ok(&j.id) && ok(&j.coordinator)) {
                return Err(
                    "the journal's id or coordinator is empty, too long or has control characters"
                        .into(),
                );
            }
            if j.record.plan.service != self.service {
                return Err(format!(
                    "the journal is of {:?}, the assignment of {:?}",
                    j.record.plan.service, self.service
                ));
            }
            if j.record.log.len() > augur_orchestrate::migration::MAX_LOG {
                return Err("the journal's log is too long".into());
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
    /// The latest assignment of a service the node holds (a successor reads a majority's).
    Latest {
        service: String,
    },
    /// The recent samples of a resource the node predicts to fail, for a peer's second opinion.
    Trend {
        resource_id: String,
    },
    /// The node's wall clock (`augur doctor`'s clock offset against peers).
    Time,
    /// The node's current model update of a resource type, as its author signed it
    /// (`crate::model_updates`): a new node's cold start.
    Models {
        resource_type: String,
    },
}

/// Samples a trend carries at most (twelve minutes at the default interval: enough for a
/// witness's engine to learn its forecast errors as far ahead as the node's did).
pub const MAX_TREND_POINTS: usize = 720;
/// Metrics each sample of a trend carries at most.
pub const MAX_TREND_METRICS: usize = 16;
/// Values (points times metrics) a trend carries at most (about 60 KB on the wire).
pub const MAX_TREND_VALUES: usize = 2_400;

/// One sample of a resource's recent telemetry, as a node hands it to a witness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendPoint {
    pub ts_ms: u64,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The resource's type and samples, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub resource_type: String,
    pub points: Vec<TrendPoint>,
}

impl Trend {
    /// Checks the bounds of what arrived from the network: at most [`MAX_TREND_POINTS`] points of
    /// [`MAX_TREND_METRICS`] finite metrics with sane names, in time order.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok =
            |s: &str| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control);
        if !name_ok(&self.resource_type) {
            return Err("the trend's resource type is not a name".into());
        }
        if self.points.len() > MAX_TREND_POINTS {
            return Err(format!(
                "{} points; at most {MAX_TREND_POINTS}",
                self.points.len()
            ));
        }
        for p in &self.points {
            if p.metrics.len() > MAX_TREND_METRICS {
                return Err(format!(
                    "{} metrics in a point; at most {MAX_TREND_METRICS}",
                    p.metrics.len()
                ));
            }
            if !p.metrics.iter().all(|(k, v)| name_ok(k) && v.is_finite()) {
                return Err("a metric's name is not a name, or its value is not finite".into());
            }
        }
        let values: usize = self.points.iter().map(|p| p.metrics.len()).sum();
        if values > MAX_TREND_VALUES {
            return Err(format!("{values} values; at most {MAX_TREND_VALUES}"));
        }
        if self.points.windows(2).any(|w| w[0].ts_ms > w[1].ts_ms) {
            return Err("the trend's points are not in time order".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActReply {
    Lease(Reply),
    /// Taken (persisted), or why not.
    Assign(Result<(), String>),
    Latest(Option<Assignment>),
    /// The resource's recent samples (none: not tracked here).
    Trend(Option<Trend>),
    /// The answering node's wall clock when it answered (unix milliseconds).
    Time {
        unix_ms: u64,
    },
    /// A signed model update (its wire form), or none for that type.
    Models(Option<WireBytes>),
}

/// Bytes that serialise as one CBOR byte string (not an array of numbers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBytes(#[serde(with = "crate::cbor_bytes")] pub Vec<u8>);

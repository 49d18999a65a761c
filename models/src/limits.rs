//! Critical limits: a metric past its limit is a failure. Configured per resource type, or
//! learned from labelled failures (`crate::patterns`).

use serde::{Deserialize, Serialize};

/// Which side of a limit is failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Above,
    Below,
}

/// A critical limit of one metric (or of every metric whose name starts with `prefix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub prefix: String,
    pub value: f64,
    pub direction: Direction,
}

/// The documented default limits: used ratios of memory, swap and disks at 0.95, error rates at 0.05.
pub fn default_limits() -> Vec<Limit> {
    let above = |prefix: &str, value| Limit {
        prefix: prefix.to_owned(),
        value,
        direction: Direction::Above,
    };
    vec![
        above("mem_used_ratio", 0.95),
        above("swap_used_ratio", 0.95),
        above("disk_used_ratio", 0.95),
        above("error_rate", 0.05),
    ]
}

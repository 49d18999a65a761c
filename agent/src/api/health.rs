//! `/healthz`: whether this agent works as it should, and if not, what is wrong. Degraded when the
//! history cannot be written, when gossip is stopped or restarted recently, or when a task ended
//! unexpectedly (a collector, the predictor, the writer...: it is not restarted, so the agent stays
//! degraded until it is).

use augur_mesh::tasks::Ended;
use serde::{Deserialize, Serialize};

use crate::history::StorageFailure;

/// A restart of the gossip task keeps the node "degraded" this long (recent instability).
pub const GOSSIP_RESTART_DEGRADES_MS: u64 = 10 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Degraded,
}

/// The answer of `/healthz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: Verdict,
    pub node_name: String,
    pub version: String,
    pub storage: StorageHealth,
    /// Absent when the agent is not in a fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshHealth>,
    pub tasks: TaskHealthView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageHealth {
    pub writable: bool,
    pub failure: Option<StorageFailure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshHealth {
    /// "running" or "stopped".
    pub gossip: String,
    pub gossip_restarts: u64,
    pub last_gossip_failure: Option<GossipFailure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipFailure {
    pub reason: String,
    pub at_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskHealthView {
    /// Tasks that ended while the agent was not stopping, since start.
    pub ended_unexpectedly: u64,
    /// The most recent of them, newest last.
    pub recent: Vec<Ended>,
}

/// Gossip's state, as the mesh reports it.
#[derive(Debug)]
pub struct GossipState {
    pub running: bool,
    pub restarts: u64,
    /// Why it last ended, and when (unix ms).
    pub last_failure: Option<(String, u64)>,
}

/// What the health is judged from.
#[derive(Debug)]
pub struct Observed {
    pub node_name: String,
    pub storage_failure: Option<StorageFailure>,
    /// When in a fleet.
    pub gossip: Option<GossipState>,
    pub tasks_ended: u64,
    pub tasks_recent: Vec<Ended>,
    pub now_unix_ms: u64,
}

/// Judges the agent's health.
pub fn assess(o: Observed) -> Health {
    let mut degraded = o.storage_failure.is_some() || o.tasks_ended > 0;
    let mesh = o.gossip.map(|g| {
        let GossipState {
            running,
            restarts,
            last_failure: last,
        } = g;
        let recent = last
            .as_ref()
            .is_some_and(|(_, at)| o.now_unix_ms.saturating_sub(*at) < GOSSIP_RESTART_DEGRADES_MS);
        degraded |= !running || recent;
        MeshHealth {
            gossip: if running { "running" } else { "stopped" }.to_owned(),
            gossip_restarts: restarts,
            last_gossip_failure: last
                .map(|(reason, at_unix_ms)| GossipFailure { reason, at_unix_ms }),
        }
    });
    Health {
        status: if degraded {
            Verdict::Degraded
        } else {
            Verdict::Ok
        },
        node_name: o.node_name,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        storage: StorageHealth {
            writable: o.storage_failure.is_none(),
            failure: o.storage_failure,
        },
        mesh,
        tasks: TaskHealthView {
            ended_unexpectedly: o.tasks_ended,
            recent: o.tasks_recent,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observed {
        Observed {
            node_name: "n1".into(),
            storage_failure: None,
            gossip: Some(GossipState {
                running: true,
                restarts: 0,
                last_failure: None,
            }),
            tasks_ended: 0,
            tasks_recent: Vec::new(),
            now_unix_ms: 1_000_000_000,
        }
    }

    #[test]
    fn each_failure_degrades_the_agent() {
        assert_eq!(assess(healthy()).status, Verdict::Ok);
        type Change = Box<dyn Fn(&mut Observed)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "a task ended",
                Box::new(|o| {
                    o.tasks_ended = 1;
                    o.tasks_recent = vec![Ended {
                        task: "collect.host".into(),
                        reason: "panicked: boom".into(),
                        at_unix_ms: 1,
                    }];
                }),
            ),
            (
                "storage failing",
                Box::new(|o| {
                    o.storage_failure = Some(StorageFailure {
                        error: "disk full".into(),
                        disk_full: true,
                        since_unix_ms: 1,
                        attempts: 0,
                    })
                }),
            ),
            (
                "gossip stopped",
                Box::new(|o| {
                    o.gossip = Some(GossipState {
                        running: false,
                        restarts: 0,
                        last_failure: None,
                    })
                }),
            ),
            (
                "gossip restarted a minute ago",
                Box::new(|o| {
                    o.gossip = Some(GossipState {
                        running: true,
                        restarts: 1,
                        last_failure: Some(("panic".into(), o.now_unix_ms - 60_000)),
                    })
                }),
            ),
        ];
        for (name, change) in cases {
            let mut o = healthy();
            change(&mut o);
            let h = assess(o);
            assert_eq!(h.status, Verdict::Degraded, "{name}");
            // The answer decodes into the same type.
            let back: Health = serde_json::from_str(&serde_json::to_string(&h).expect("encodes"))
                .expect("decodes");
            assert_eq!(back, h, "{name}");
        }
        // A gossip restart long ago no longer degrades.
        let mut o = healthy();
        o.gossip = Some(GossipState {
            running: true,
            restarts: 1,
            last_failure: Some(("panic".into(), o.now_unix_ms - 3_600_000)),
        });
        assert_eq!(assess(o).status, Verdict::Ok);
    }
}

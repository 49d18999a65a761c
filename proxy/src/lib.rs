//! Traffic: which backends serve each service and with what weight, and the drivers that make a
//! proxy do so. The desired routes are plain data ([`Routes`]); a driver turns the difference
//! between what its proxy serves and what is wanted ([`changes`]) into the proxy's own operations
//! (the embedded proxy's tables; HAProxy's runtime API: `add server`, `set weight`, `del server`).
//! Shifting traffic during a migration is a sequence of route sets, decided by the orchestration
//! core (`augur-orchestrate`) and applied here.
//!
//! What does not belong here: deciding when to shift (the orchestration core), health checks and
//! instances (the agent's services), the fleet (the mesh).

use std::collections::BTreeMap;

pub mod embedded;
pub mod haproxy;
pub mod http;
pub mod pick;

use serde::{Deserialize, Serialize};

/// A backend's weight: 0 (drained) to [`MAX_WEIGHT`].
pub type Weight = u16;

/// HAProxy's largest server weight; the embedded proxy uses the same scale.
pub const MAX_WEIGHT: Weight = 256;

/// The backends of every service, by address, with their weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    pub services: BTreeMap<String, BTreeMap<String, Weight>>,
    /// Per service, the fencing epoch of the assignment that wrote its routes (the highest lease
    /// epoch among the instances routed to; absent: placed without a migration).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs: BTreeMap<String, u64>,
}

/// One operation that takes a proxy from one route set to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AddBackend {
        service: String,
        addr: String,
        weight: Weight,
    },
    SetWeight {
        service: String,
        addr: String,
        weight: Weight,
    },
    RemoveBackend {
        service: String,
        addr: String,
    },
}

/// The operations from `from` to `to`, in an order that never leaves a service without a backend
/// that `to` keeps: additions and weight changes first, removals last.
pub fn changes(from: &Routes, to: &Routes) -> Vec<Change> {
    let empty = BTreeMap::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    for (service, want) in &to.services {
        let have = from.services.get(service).unwrap_or(&empty);
        for (addr, &weight) in want {
            match have.get(addr) {
                None => first.push(Change::AddBackend {
                    service: service.clone(),
                    addr: addr.clone(),
                    weight: weight.min(MAX_WEIGHT),
                }),
                Some(&w) if w != weight => first.push(Change::SetWeight {
                    service: service.clone(),
                    addr: addr.clone(),
                    weight: weight.min(MAX_WEIGHT),
                }),
                Some(_) => {}
            }
        }
    }
    for (service, have) in &from.services {
        let want = to.services.get(service).unwrap_or(&empty);
        for addr in have.keys().filter(|a| !want.contains_key(*a)) {
            last.push(Change::RemoveBackend {
                service: service.clone(),
                addr: addr.clone(),
            });
        }
    }
    first.extend(last);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[(&str, &str, Weight)]) -> Routes {
        let mut r = Routes::default();
        for (s, a, w) in list {
            r.services
                .entry((*s).to_owned())
                .or_default()
                .insert((*a).to_owned(), *w);
        }
        r
    }

    #[test]
    fn a_shift_adds_first_and_removes_last() {
        let from = routes(&[("web", "10.0.0.1:80", 256), ("api", "10.0.0.5:80", 256)]);
        let to = routes(&[("web", "10.0.0.1:80", 64), ("web", "10.0.0.2:80", 192)]);
        assert_eq!(
            changes(&from, &to),
            vec![
                Change::SetWeight {
                    service: "web".into(),
                    addr: "10.0.0.1:80".into(),
                    weight: 64
                },
                Change::AddBackend {
                    service: "web".into(),
                    addr: "10.0.0.2:80".into(),
                    weight: 192
                },
                Change::RemoveBackend {
                    service: "api".into(),
                    addr: "10.0.0.5:80".into()
                },
            ]
        );
        assert!(changes(&to, &to).is_empty());
    }
}

//! Running the fleet's service instances on this node: the drivers that start and stop them
//! (`process`: the agent runs the command itself), their health checks (`health`), the runtime
//! that decides what runs here (`runtime`), and the proxies that carry the services' traffic to
//! healthy instances anywhere in the fleet (`traffic`). The decisions (which spec, where, healthy
//! or not, which backends) are `augur_orchestrate`'s and `augur_proxy`'s; this module does what
//! they say on this host.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub mod catalog;
pub mod health;
pub mod hook;
pub mod process;
pub mod runtime;
pub mod sync;
pub mod traffic;

/// Now, in Unix milliseconds (an instance's epoch).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters of one service on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Instances started (restarts included).
    pub starts: u64,
    /// Exits nobody asked for, and commands that could not start.
    pub exits: u64,
    /// Health transitions to healthy, and to unhealthy.
    pub became_healthy: u64,
    pub became_unhealthy: u64,
}

/// What `/metrics` reads of the services: per service counts, traffic errors by proxy and
/// reason, and each service's embedded proxy.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub counts: Mutex<BTreeMap<String, ServiceCounts>>,
    /// (service, proxy, reason) -> errors: `port_in_use` and `bind` for the embedded proxy;
    /// `socket`, `refused`, `static_balancing` and `answer` for HAProxy.
    pub traffic_errors: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    /// Each service's embedded proxy counters, and its backends now.
    pub proxies: Mutex<BTreeMap<String, (Arc<augur_proxy::embedded::Stats>, usize)>>,
}

impl ServiceStats {
    pub fn count(&self, service: &str, f: impl FnOnce(&mut ServiceCounts)) {
        f(self.counts.lock().entry(service.to_owned()).or_default());
    }

    pub fn traffic_error(&self, service: &str, proxy: &'static str, reason: &'static str) {
        *self
            .traffic_errors
            .lock()
            .entry((service.to_owned(), proxy, reason))
            .or_default() += 1;
    }
}

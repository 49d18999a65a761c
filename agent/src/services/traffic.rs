//! The traffic of the fleet's services through this node. Every few hundred milliseconds the
//! routes are computed from what the fleet says runs where ([`routes`]: every healthy instance of
//! every service in the catalog, this node's own from its runtime, the others' from their signed
//! `augur.instances` values); when they change, the embedded proxies' tables are swapped and the
//! HAProxy backends (if configured) are brought in step. The embedded proxy of a service listens
//! on `services.proxy_ip` and the service's port, with one listener (`SO_REUSEPORT`) and thread
//! per core; a port that cannot be bound is an error on the event stream and a counter, retried,
//! and never stops the other services' proxies.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::membership::{Member, MemberStatus};
use augur_mesh::{EventKind, Mesh, TrafficProblem};
use augur_orchestrate::migration::Role;
use augur_orchestrate::spec::Protocol;
use augur_proxy::embedded::{Limits, Proxy};
use augur_proxy::haproxy::{BackendSync, HaproxyError, RuntimeApi};
use augur_proxy::{MAX_WEIGHT, Routes, Weight};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServiceStats;
use super::catalog::CatalogStore;
use super::runtime::InstanceView;
use crate::config::ServicesConfig;
use crate::fleet::events::Emitter;

/// How often the routes are recomputed.
const TICK: Duration = Duration::from_millis(100);
/// How often a port that could not be bound is tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);
/// How often HAProxy is read back even when the routes did not change (it may have restarted).
const HAPROXY_RESYNC: Duration = Duration::from_secs(5);

/// One claim that an instance runs at an address.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim<'a> {
    pub id: &'a str,
    pub service: &'a str,
    pub addr: &'a str,
    pub healthy: bool,
    pub epoch: u64,
    /// The slot it serves (its id, for claims made before slots).
    pub slot: &'a str,
    /// Whether it serves (a standby or a retiring instance takes no traffic).
    pub serving: bool,
    /// The fencing epoch of the assignment that made it serve, and its change number.
    pub lease_epoch: u64,
    pub lease_seq: u64,
}

/// The routes from the claims of the fleet: for each service in `services`, for each slot, the
/// address of its current claim (of the healthy serving ones, the one under the higher lease
/// epoch, then the later started), at full weight. A slot whose preferred instance fails its
/// checks falls back to another healthy one (during a move, the old one). Standby and retiring
/// instances take no traffic. Unparsable addresses are skipped.
pub fn routes<'a>(services: &[String], claims: impl IntoIterator<Item = Claim<'a>>) -> Routes {
    let mut current: HashMap<(&str, &str), Claim<'a>> = HashMap::new();
    for c in claims.into_iter().filter(|c| c.serving && c.healthy) {
        match current.get(&(c.service, c.slot)) {
            Some(have)
                if (have.lease_epoch, have.lease_seq, have.epoch)
                    >= (c.lease_epoch, c.lease_seq, c.epoch) => {}
            _ => {
                current.insert((c.service, c.slot), c);
            }
        }
    }
    let mut out = Routes::default();
    for s in services {
        out.services.insert(s.clone(), BTreeMap::new());
    }
    for c in current.into_values() {
        if !c.healthy {
            continue;
        }
        let (Some(backends), Ok(addr)) = (
            out.services.get_mut(c.service),
            c.addr.parse::<SocketAddr>(),
        ) else {
            continue;
        };
        backends.insert(addr.to_string(), MAX_WEIGHT);
        if c.lease_epoch > 0 {
            let e = out.epochs.entry(c.service.to_owned()).or_default();
            *e = (*e).max(c.lease_epoch);
        }
    }
    out
}

/// The claims of this node (its runtime's view) and of the other live members.
fn claims<'a>(local: &'a [InstanceView], members: &'a [Member]) -> Vec<Claim<'a>> {
    let mut out: Vec<Claim<'a>> = local
        .iter()
        .map(|i| Claim {
            id: &i.id,
            service: &i.service,
            addr: &i.addr,
            healthy: i.health == "healthy",
            epoch: i.epoch,
            slot: if i.slot.is_empty() { &i.id } else { &i.slot },
            serving: i.role == Role::Serving,
            lease_epoch: i.lease_epoch,
            lease_seq: i.lease_seq,
        })
        .collect();
    for m in members {
        if m.is_self || !matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) {
            continue;
        }
        out.extend(m.instances.iter().map(|i| Claim {
            id: &i.id,
            service: &i.service,
            addr: &i.addr,
            healthy: i.health == "healthy",
            epoch: i.epoch,
            slot: i.slot.as_deref().unwrap_or(&i.id),
            serving: i.role.is_none_or(|r| r == Role::Serving),
            lease_epoch: i.lease_epoch,
            lease_seq: i.lease_seq,
        }));
    }
    out
}

/// A service's embedded proxy.
struct Listening {
    port: u16,
    protocol: Protocol,
    proxy: Proxy,
    stop: CancellationToken,
    /// The backends last given to the proxy.
    backends: Option<Vec<(SocketAddr, Weight)>>,
}

/// A port that could not be bound, and when it is tried again.
struct Unbound {
    port: u16,
    reason: String,
    retry: tokio::time::Instant,
}

/// What the traffic task reads, and where it reports.
#[derive(Clone, Debug)]
pub struct Traffic {
    pub catalog: CatalogStore,
    pub mesh: Option<Mesh>,
    /// This node's instances (the runtime's view).
    pub local: Arc<RwLock<Vec<InstanceView>>>,
    pub settings: ServicesConfig,
    pub events: Emitter,
    pub stats: Arc<ServiceStats>,
    /// The routes served now (for the API).
    pub routes: Arc<RwLock<Routes>>,
    /// What the proxies cannot do now (for the API): a port that cannot be bound, an HAProxy
    /// backend out of step.
    pub problems: Arc<RwLock<Vec<TrafficProblem>>>,
}

impl Traffic {
    /// Runs until `stop`; the proxies close their connections on the way out.
    pub async fn run(self, stop: CancellationToken) {
        let proxies = TaskTracker::new();
        let mut listening: BTreeMap<String, Listening> = BTreeMap::new();
        let mut unbound: BTreeMap<String, Unbound> = BTreeMap::new();
        let mut haproxy = self.settings.haproxy.as_ref().map(|h| {
            (
                BackendSync::new(RuntimeApi::new(&h.socket), self.settings.drain_grace),
                h.backend.clone(),
            )
        });
        // HAProxy: what was last applied, whether drains are pending, the last error of each
        // service (reported once until it changes), and when it was last read back.
        let mut applied: Option<Routes> = None;
        let mut pending = false;
        let mut haproxy_errors: BTreeMap<String, String> = BTreeMap::new();
        let mut synced = tokio::time::Instant::now();
        let mut served = Routes::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let services: Vec<(String, u16, Protocol)> = self
                .catalog
                .services()
                .into_iter()
                .map(|s| (s.name, s.spec.port, s.spec.protocol))
                .collect();
            let names: Vec<String> = services.iter().map(|(n, _, _)| n.clone()).collect();
            let members = self.mesh.as_ref().map(Mesh::members).unwrap_or_default();
            let local = self.local.read().clone();
            let want = routes(&names, claims(&local, &members));
            if self.settings.proxy {
                self.listen(&services, &mut listening, &mut unbound, &proxies, &stop)
                    .await;
                for (service, l) in &mut listening {
                    let backends = backends_of(&want, service);
                    if l.backends.as_ref() != Some(&backends) {
                        l.proxy.set_backends(&backends, self.settings.drain_grace);
                        tracing::info!(service, backends = ?backends, "proxy routes");
                        l.backends = Some(backends.clone());
                    }
                    self.stats
                        .proxies
                        .lock()
                        .insert(service.clone(), (l.proxy.stats.clone(), backends.len()));
                }
            }
            if let Some((sync, template)) = &mut haproxy {
                let due = applied.as_ref() != Some(&want)
                    || pending
                    || synced.elapsed() >= HAPROXY_RESYNC;
                if due {
                    synced = tokio::time::Instant::now();
                    let (ok, still) = self
                        .sync_haproxy(sync, template, applied.as_ref(), &want, &mut haproxy_errors)
                        .await;
                    pending = still;
                    applied = ok.then(|| want.clone());
                }
            }
            if served != want {
                *self.routes.write() = want.clone();
                served = want;
            }
            let problems: Vec<TrafficProblem> = unbound
                .iter()
                .map(|(service, u)| TrafficProblem {
                    service: service.clone(),
                    proxy: "embedded".to_owned(),
                    reason: u.reason.clone(),
                })
                .chain(
                    haproxy_errors
                        .iter()
                        .map(|(service, reason)| TrafficProblem {
                            service: service.clone(),
                            proxy: "haproxy".to_owned(),
                            reason: reason.clone(),
                        }),
                )
                .collect();
            if *self.problems.read() != problems {
                *self.problems.write() = problems;
            }
        }
        for (_, l) in listening {
            l.stop.cancel();
        }
        proxies.close();
        proxies.wait().await;
    }

    /// Binds the proxies of new services (and of services whose port changed), stops those of
    /// services gone from the catalog, and retries ports that could not be bound.
    async fn listen(
        &self,
        services: &[(String, u16, Protocol)],
        listening: &mut BTreeMap<String, Listening>,
        unbound: &mut BTreeMap<String, Unbound>,
        proxies: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let wanted: BTreeMap<&str, (u16, Protocol)> = services
            .iter()
            .map(|(n, port, protocol)| (n.as_str(), (*port, *protocol)))
            .collect();
        listening.retain(|name, l| {
            let keep = wanted.get(name.as_str()) == Some(&(l.port, l.protocol));
            if !keep {
                tracing::info!(service = %name, port = l.port, "proxy stopped");
                l.stop.cancel();
                self.stats.proxies.lock().remove(name);
            }
            keep
        });
        unbound.retain(|name, u| wanted.get(name.as_str()).map(|w| w.0) == Some(u.port));
        let now = tokio::time::Instant::now();
        for (&name, &(port, protocol)) in &wanted {
            if listening.contains_key(name) || unbound.get(name).is_some_and(|u| now < u.retry) {
                continue;
            }
            let addr = SocketAddr::new(self.settings.proxy_ip, port);
            // One thread per core: in L4 mode all on one listening socket (the shards balance
            // among themselves), in HTTP mode one socket each (the kernel spreads connections).
            let shards = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
            let shared = protocol != Protocol::Http;
            match augur_proxy::embedded::bind_shards(addr, shards, shared) {
                Ok(listener) => {
                    unbound.remove(name);
                    let proxy = Proxy::default();
                    let token = stop.child_token();
                    let limits = Limits {
                        max_connections: self.settings.max_connections,
                        ..Limits::default()
                    };
                    let p = proxy.clone();
                    let t = token.clone();
                    let http = protocol == Protocol::Http;
                    proxies.spawn(async move { p.serve_shards(listener, http, limits, t).await });
                    tracing::info!(service = name, %addr, ?protocol, "proxy listening");
                    listening.insert(
                        name.to_owned(),
                        Listening {
                            port,
                            protocol,
                            proxy,
                            stop: token,
                            backends: None,
                        },
                    );
                }
                Err(e) => {
                    let (kind, reason) = if e.kind() == std::io::ErrorKind::AddrInUse {
                        (
                            "port_in_use",
                            format!(
                                "port {port} is in use on {}: another program listens there; \
                                 free it or change the service's port",
                                self.settings.proxy_ip
                            ),
                        )
                    } else {
                        (
                            "bind",
                            format!(
                                "cannot listen on {addr}: {e} (check services.proxy_ip and the port)"
                            ),
                        )
                    };
                    self.stats.traffic_error(name, "embedded", kind);
                    let first = unbound.get(name).is_none_or(|u| u.reason != reason);
                    if first {
                        tracing::error!(service = name, %reason, "proxy not listening; retrying every 5 s");
                        self.problem(name, "embedded", reason.clone()).await;
                    }
                    unbound.insert(
                        name.to_owned(),
                        Unbound {
                            port,
                            reason,
                            retry: now + RETRY_BIND,
                        },
                    );
                }
            }
        }
    }

    /// Brings every service's HAProxy backend to `want` (and empties those of services that
    /// left). Returns whether all succeeded, and whether drains are still under way.
    async fn sync_haproxy(
        &self,
        sync: &mut BackendSync,
        template: &str,
        applied: Option<&Routes>,
        want: &Routes,
        errors: &mut BTreeMap<String, String>,
    ) -> (bool, bool) {
        let mut ok = true;
        let mut pending = false;
        let empty = BTreeMap::new();
        let mut services: Vec<&String> = want.services.keys().collect();
        if let Some(a) = applied {
            services.extend(
                a.services
                    .keys()
                    .filter(|s| !want.services.contains_key(*s)),
            );
        }
        for service in services {
            let backend = template.replace("{service}", service);
            let target: BTreeMap<SocketAddr, Weight> = want
                .services
                .get(service)
                .unwrap_or(&empty)
                .iter()
                .filter_map(|(a, w)| a.parse().ok().map(|a| (a, *w)))
                .collect();
            match sync.sync(&backend, &target).await {
                Ok(still) => {
                    pending |= still;
                    if errors.remove(service).is_some() {
                        tracing::info!(service, backend, "HAProxy backend in step again");
                    }
                }
                Err(e) => {
                    ok = false;
                    let kind = match &e {
                        HaproxyError::Socket { .. } | HaproxyError::Timeout(_) => "socket",
                        HaproxyError::StaticBalancing { .. } => "static_balancing",
                        HaproxyError::Refused { .. } => "refused",
                    };
                    self.stats.traffic_error(service, "haproxy", kind);
                    let reason = format!("backend {backend}: {e}");
                    if errors.get(service.as_str()) != Some(&reason) {
                        tracing::error!(service, %reason, "HAProxy backend not in step; retrying");
                        self.problem(service, "haproxy", reason.clone()).await;
                        errors.insert(service.clone(), reason);
                    }
                }
            }
        }
        (ok, pending)
    }

    async fn problem(&self, service: &str, proxy: &str, reason: String) {
        self.events
            .emit(
                EventKind::TrafficError(TrafficProblem {
                    service: service.to_owned(),
                    proxy: proxy.to_owned(),
                    reason,
                }),
                None,
            )
            .await;
    }
}

/// A service's backends as the embedded proxy takes them.
fn backends_of(routes: &Routes, service: &str) -> Vec<(SocketAddr, Weight)> {
    routes
        .services
        .get(service)
        .map(|b| {
            b.iter()
                .filter_map(|(a, w)| a.parse().ok().map(|a| (a, *w)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(id: &'a str, addr: &'a str, healthy: bool, epoch: u64) -> Claim<'a> {
        Claim {
            id,
            service: "web",
            addr,
            healthy,
            epoch,
            slot: id,
            serving: true,
            lease_epoch: 0,
            lease_seq: 0,
        }
    }

    #[test]
    fn routes_carry_the_epoch_of_the_assignment_that_wrote_them() {
        let services = ["web".to_owned()];
        let moved = routes(
            &services,
            [Claim {
                slot: "0",
                lease_epoch: 7,
                ..claim("web-0-m1", "10.0.0.2:4000", true, 1)
            }],
        );
        assert_eq!(moved.epochs.get("web"), Some(&7));
        let placed = routes(&services, [claim("web-0", "10.0.0.1:4000", true, 1)]);
        assert!(
            placed.epochs.is_empty(),
            "placed without a migration: no epoch"
        );
    }

    #[test]
    fn routes_are_the_healthy_current_claims_of_catalogued_services() {
        type Case = (&'static str, Vec<Claim<'static>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "healthy instances are backends; unhealthy ones are not",
                vec![
                    claim("web-0", "10.0.0.1:4000", true, 1),
                    claim("web-1", "10.0.0.2:4000", false, 1),
                ],
                vec!["10.0.0.1:4000"],
            ),
            (
                "of two claims on one instance the higher epoch is current",
                vec![
                    claim("web-0", "10.0.0.1:4000", true, 5),
                    claim("web-0", "10.0.0.2:4000", true, 9),
                ],
                vec!["10.0.0.2:4000"],
            ),
            (
                "... unless it is not healthy: then the other one",
                vec![
                    claim("web-0", "10.0.0.2:4000", false, 9),
                    claim("web-0", "10.0.0.1:4000", true, 5),
                ],
                vec!["10.0.0.1:4000"],
            ),
            (
                "of two serving instances of one slot, the one under the higher lease epoch",
                vec![
                    Claim {
                        slot: "0",
                        lease_epoch: 7,
                        ..claim("web-0-m1", "10.0.0.2:4000", true, 1)
                    },
                    Claim {
                        slot: "0",
                        ..claim("web-0", "10.0.0.1:4000", true, 9)
                    },
                ],
                vec!["10.0.0.2:4000"],
            ),
            (
                "under one epoch, the one made to serve by the later change (a rollback's old one)",
                vec![
                    Claim {
                        slot: "0",
                        lease_epoch: 7,
                        lease_seq: 3,
                        ..claim("web-0-m1", "10.0.0.2:4000", true, 9)
                    },
                    Claim {
                        slot: "0",
                        lease_epoch: 7,
                        lease_seq: 5,
                        ..claim("web-0", "10.0.0.1:4000", true, 1)
                    },
                ],
                vec!["10.0.0.1:4000"],
            ),
            (
                "standby and retiring instances take no traffic",
                vec![
                    Claim {
                        slot: "0",
                        serving: false,
                        lease_epoch: 7,
                        ..claim("web-0-m1", "10.0.0.2:4000", true, 1)
                    },
                    Claim {
                        slot: "0",
                        ..claim("web-0", "10.0.0.1:4000", true, 9)
                    },
                    Claim {
                        slot: "standby-0",
                        serving: false,
                        ..claim("web-standby-0", "10.0.0.3:4000", true, 9)
                    },
                ],
                vec!["10.0.0.1:4000"],
            ),
            (
                "an address that does not parse is skipped",
                vec![claim("web-0", "not an address", true, 1)],
                vec![],
            ),
            (
                "a service outside the catalog is not routed",
                vec![Claim {
                    service: "old",
                    ..claim("old-0", "10.0.0.3:4000", true, 1)
                }],
                vec![],
            ),
        ];
        for (what, claims, expect) in cases {
            let r = routes(&["web".to_owned()], claims);
            let got: Vec<&str> = r.services["web"].keys().map(String::as_str).collect();
            assert_eq!(got, expect, "{what}");
            assert_eq!(r.services.len(), 1, "{what}");
        }
    }
}

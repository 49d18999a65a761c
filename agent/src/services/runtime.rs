//! The services runtime of this node: from the catalog and the member view, which replicas run
//! here (`augur_orchestrate::placement`); starts them on the process driver, stops the ones no
//! longer placed here (or whose spec changed, to start them anew), and checks their health
//! (`augur_orchestrate::health`). Every node computes the same placement from the same catalog and
//! view, so each starts its own share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::Mesh;
use augur_mesh::membership::MemberStatus;
use augur_orchestrate::Machine as _;
use augur_orchestrate::health::{Health, HealthTracker};
use augur_orchestrate::placement::{Candidate, place};
use augur_orchestrate::spec::{Driver, ServiceSpec};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::catalog::CatalogStore;
use super::process::{Backoff, Instance, InstanceStats, ProcessSpec, supervise};
use crate::collect::host::{CPU_UTIL, MEM_AVAILABLE_BYTES};
use crate::history::History;

/// How often placement is recomputed and health checked (each instance is probed at its own
/// interval, on the first tick after it).
const TICK: Duration = Duration::from_millis(250);

/// An instance on this node, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub service: String,
    pub version: u64,
    pub port: u16,
    /// `unknown` (not yet passed its checks), `healthy` or `unhealthy`.
    pub health: String,
}

struct Running {
    service: String,
    version: u64,
    port: u16,
    spec: ServiceSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
    health: HealthTracker,
    next_probe: tokio::time::Instant,
}

/// What the runtime reads, and where it reports.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub catalog: CatalogStore,
    pub mesh: Option<Mesh>,
    pub history: History,
    pub node_name: String,
    /// Where the instances' pid files go.
    pub pid_dir: PathBuf,
    /// This node's instances, for the API.
    pub view: Arc<RwLock<Vec<InstanceView>>>,
}

fn health_str(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

impl Runtime {
    /// The nodes placement may use: the members (alive or suspect, with their capacity, zone,
    /// labels and health), or this node alone outside a fleet.
    fn candidates(&self) -> Vec<Candidate> {
        match &self.mesh {
            Some(mesh) => mesh
                .members()
                .into_iter()
                .map(|m| Candidate {
                    peer_id: m.peer_id.clone(),
                    node_name: m.node_name.clone().unwrap_or(m.peer_id),
                    alive: matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect),
                    zone: m.zone,
                    labels: m.labels,
                    free_memory_bytes: m.capacity.as_ref().map_or(0, |c| c.mem_free_bytes),
                    cpu_free: m.capacity.as_ref().map_or(0.0, |c| c.cpu_free),
                    failure_probability: m
                        .health
                        .as_ref()
                        .map_or(0.0, |h| h.max_failure_probability),
                })
                .collect(),
            None => {
                let latest = self
                    .history
                    .resources()
                    .into_iter()
                    .find(|r| r.resource_id.as_str() == self.node_name)
                    .and_then(|r| r.latest);
                let get = |k: &str| latest.as_ref().and_then(|s| s.metrics.get(k).copied());
                vec![Candidate {
                    peer_id: self.node_name.clone(),
                    node_name: self.node_name.clone(),
                    alive: true,
                    zone: None,
                    labels: BTreeMap::new(),
                    free_memory_bytes: get(MEM_AVAILABLE_BYTES).map_or(u64::MAX, |v| v as u64),
                    cpu_free: get(CPU_UTIL).map_or(1.0, |u| 1.0 - u),
                    failure_probability: 0.0,
                }]
            }
        }
    }

    /// The instances that should run here: id -> (service, version, spec).
    fn wanted(&self) -> BTreeMap<String, (String, u64, ServiceSpec)> {
        let candidates = self.candidates();
        let mut out = BTreeMap::new();
        for s in self.catalog.services() {
            let placement = place(&s.spec, &candidates);
            for (i, node) in placement.nodes.iter().enumerate() {
                if *node == self.node_name {
                    out.insert(
                        format!("{}-{i}", s.name),
                        (s.name.clone(), s.version, s.spec.clone()),
                    );
                }
            }
        }
        out
    }

    /// Runs until `stop`, then stops every instance (SIGTERM, SIGKILL after its grace).
    pub async fn run(self, stop: CancellationToken) {
        let stopped = super::process::stop_leftovers(&self.pid_dir, Duration::from_secs(10)).await;
        if !stopped.is_empty() {
            tracing::info!(instances = ?stopped, "stopped instances a previous run left running");
        }
        let client = match crate::net::http_client(None) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the health checks' HTTP client; services are off");
                return;
            }
        };
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        // The instances' supervisors (each awaited when its instance stops).
        let instances = tokio_util::task::TaskTracker::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let wanted = self.wanted();
            // Stop what is no longer wanted here, or whose spec changed.
            let gone: Vec<String> = running
                .iter()
                .filter(|(id, r)| wanted.get(*id).is_none_or(|(_, v, _)| *v != r.version))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(r) = running.remove(&id) {
                    r.stop.cancel();
                    let _ = r.task.await;
                    tracing::info!(instance = %id, "instance stopped (no longer placed here, or its spec changed)");
                }
            }
            for (id, (service, version, spec)) in wanted {
                if running.contains_key(&id) {
                    continue;
                }
                let Driver::Process {
                    command,
                    args,
                    env,
                    workdir,
                    stop_grace,
                } = &spec.driver
                else {
                    tracing::warn!(service = %service, "the hook driver is not available yet; instance not started");
                    continue;
                };
                let port =
                    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                        Ok(a) => a.port(),
                        Err(e) => {
                            tracing::error!(error = %e, "no free port for an instance");
                            continue;
                        }
                    };
                let instance = Instance {
                    id: id.clone(),
                    port,
                    spec: ProcessSpec {
                        command: command.clone(),
                        args: args.clone(),
                        env: env.clone(),
                        workdir: workdir.as_ref().map(PathBuf::from),
                        stop_grace: *stop_grace,
                    },
                };
                let token = stop.child_token();
                let task = instances.spawn(supervise(
                    instance,
                    self.pid_dir.clone(),
                    Backoff::default(),
                    Arc::new(InstanceStats::default()),
                    token.clone(),
                ));
                running.insert(
                    id,
                    Running {
                        service,
                        version,
                        port,
                        health: HealthTracker::new(&spec.health),
                        spec,
                        stop: token,
                        task,
                        next_probe: tokio::time::Instant::now(),
                    },
                );
            }
            // Health, each at its interval.
            let now = tokio::time::Instant::now();
            for (id, r) in &mut running {
                if now < r.next_probe {
                    continue;
                }
                r.next_probe = now + r.spec.health.interval;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], r.port));
                let check = super::health::probe(&client, addr, &r.spec.health).await;
                for t in r.health.on_event(check, ()) {
                    let augur_orchestrate::health::Transition::Became { health, reason } = t;
                    tracing::info!(instance = %id, health = health_str(health), reason = ?reason, "instance health");
                }
            }
            *self.view.write() = running
                .iter()
                .map(|(id, r)| InstanceView {
                    id: id.clone(),
                    service: r.service.clone(),
                    version: r.version,
                    port: r.port,
                    health: health_str(r.health.health()).to_owned(),
                })
                .collect();
        }
        for (_, r) in running {
            r.stop.cancel();
            let _ = r.task.await;
        }
        self.view.write().clear();
    }
}

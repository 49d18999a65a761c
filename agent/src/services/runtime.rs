//! The services runtime of this node: from the catalog and the member view, which replicas run
//! here (`augur_orchestrate::placement`); starts them on the process driver, stops the ones no
//! longer placed here (or whose spec changed, to start them anew), and checks their health
//! (`augur_orchestrate::health`). Every node computes the same placement from the same catalog and
//! view, so each starts its own share.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::membership::MemberStatus;
use augur_mesh::values::{InstanceValue, NodeValue};
use augur_mesh::{EventKind, InstanceChange, Mesh};
use augur_orchestrate::Machine as _;
use augur_orchestrate::autonomy::Mode;
use augur_orchestrate::health::{Check, Health, HealthTracker, Transition};
use augur_orchestrate::migration::{Entry, Role};
use augur_orchestrate::placement::{Candidate, place_with};
use augur_orchestrate::spec::{Driver, HealthCheck, ServiceSpec};
use augur_proto::{ResourceId, ResourceType};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ServiceStats;
use super::catalog::CatalogStore;
use super::hook;
use super::process::{Backoff, Instance, InstanceStats, ProcessSpec, Report, supervise};
use crate::collect::host::{CPU_UTIL, MEM_AVAILABLE_BYTES};
use crate::fleet::events::Emitter;
use crate::history::History;
use crate::ingest::Ingestor;
use crate::sample::{Sample, UnixMicros};
use crate::stats::Source;

/// How often placement is recomputed and health checked (each instance is probed at its own
/// interval, on the first tick after it).
const TICK: Duration = Duration::from_millis(250);

/// How long a node that sees no other member waits before it places instances alone.
const SETTLE: Duration = Duration::from_secs(5);

/// Instances this node tells the fleet about, at most (bounds its signed value).
const MAX_PUBLISHED: usize = 256;

/// An instance on this node, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub service: String,
    pub version: u64,
    pub port: u16,
    /// Where peers reach it (`services.instance_ip` and its port).
    pub addr: String,
    /// `unknown` (not yet passed its checks), `healthy`, `unhealthy`, or `down` (its process is
    /// not running).
    pub health: String,
    /// When this run of it started (Unix milliseconds; 0 before its first start).
    pub epoch: u64,
    /// Why it is down or unhealthy (its last exit, or its last failed check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The slot it serves or stands by for (`0`, `1`, ...; `standby-0`, ...).
    #[serde(default)]
    pub slot: String,
    /// `serving`, `standby` (running, checked, not routed to) or `retiring`.
    #[serde(default)]
    pub role: Role,
    /// The fencing epoch of the assignment that made it serve (0: placed without one).
    #[serde(default)]
    pub lease_epoch: u64,
    /// That assignment's change number within its epoch.
    #[serde(default)]
    pub lease_seq: u64,
}

/// An instance where it runs in the fleet, as `augur services` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacedInstance {
    /// The node that runs it.
    pub node: String,
    pub id: String,
    pub service: String,
    pub version: u64,
    pub addr: String,
    pub health: String,
    pub epoch: u64,
    /// Why it is down or unhealthy (this node's instances only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub slot: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub lease_epoch: u64,
    #[serde(default)]
    pub lease_seq: u64,
}

impl PlacedInstance {
    /// An instance as its node `node` publishes it.
    pub fn published(node: &str, i: &augur_mesh::values::InstanceValue) -> Self {
        Self {
            node: node.to_owned(),
            id: i.id.clone(),
            service: i.service.clone(),
            version: i.version,
            addr: i.addr.clone(),
            health: i.health.clone(),
            epoch: i.epoch,
            reason: None,
            slot: i.slot.clone().unwrap_or_else(|| i.id.clone()),
            role: i.role.unwrap_or_default(),
            lease_epoch: i.lease_epoch,
            lease_seq: i.lease_seq,
        }
    }
}

/// Every instance in the fleet: this node's (`local`, the freshest) and the live members'.
pub fn fleet_instances(
    node_name: &str,
    local: &[InstanceView],
    members: &[augur_mesh::membership::Member],
) -> Vec<PlacedInstance> {
    let mut out: Vec<PlacedInstance> = local
        .iter()
        .map(|i| PlacedInstance {
            node: node_name.to_owned(),
            id: i.id.clone(),
            service: i.service.clone(),
            version: i.version,
            addr: i.addr.clone(),
            health: i.health.clone(),
            epoch: i.epoch,
            reason: i.reason.clone(),
            slot: i.slot.clone(),
            role: i.role,
            lease_epoch: i.lease_epoch,
            lease_seq: i.lease_seq,
        })
        .collect();
    for m in members {
        if m.is_self || !matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) {
            continue;
        }
        let node = m.node_name.clone().unwrap_or_else(|| m.peer_id.clone());
        out.extend(
            m.instances
                .iter()
                .map(|i| PlacedInstance::published(&node, i)),
        );
    }
    out.sort_by(|a, b| (&a.service, &a.id, &a.node).cmp(&(&b.service, &b.id, &b.node)));
    out
}

struct Running {
    service: String,
    version: u64,
    addr: SocketAddr,
    spec: ServiceSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
    health: HealthTracker,
    /// Whether its process runs (from the supervisor's reports).
    up: bool,
    epoch: u64,
    next_probe: tokio::time::Instant,
    /// Leaving: takes no new traffic (the fleet's proxies drop it) and is stopped at this time.
    draining_until: Option<tokio::time::Instant>,
    /// Its process, when the driver knows it, and its CPU time (seconds) at the last sample.
    pid: Option<u32>,
    cpu: Option<(f64, std::time::Instant)>,
    /// This node's name (a label of its samples).
    node: String,
    /// Why it is down or unhealthy.
    reason: Option<String>,
    slot: String,
    role: Role,
    lease_epoch: u64,
    lease_seq: u64,
}

/// An instance this node should run, and as what.
#[derive(Clone, Debug)]
struct Wanted {
    service: String,
    version: u64,
    spec: ServiceSpec,
    slot: String,
    role: Role,
    /// The assignment's epoch and change number (0: placed without one).
    lease_epoch: u64,
    lease_seq: u64,
}

impl Running {
    fn health(&self) -> &'static str {
        if !self.up {
            "down"
        } else if self.draining_until.is_some() {
            "draining"
        } else {
            health_str(self.health.health())
        }
    }

    /// The instance as a resource (its id, of the service's type): whether it runs, its health
    /// check (passed, latency) when one was made, and its process's CPU (fraction of a core)
    /// and resident memory.
    fn sample(&mut self, id: &str, check: Option<&Check>) -> Option<Sample> {
        let resource_id = ResourceId::parse(id).ok()?;
        let resource_type = ResourceType::parse(&self.service).ok()?;
        let mut metrics = BTreeMap::new();
        metrics.insert("up".to_owned(), if self.up { 1.0 } else { 0.0 });
        match check {
            Some(Check::Passed(latency)) => {
                metrics.insert("health_ok".to_owned(), 1.0);
                metrics.insert(
                    "health_latency_ms".to_owned(),
                    latency.as_secs_f64() * 1000.0,
                );
            }
            Some(Check::Failed(_)) => {
                metrics.insert("health_ok".to_owned(), 0.0);
            }
            None => {}
        }
        if let Some((cpu_s, rss)) = self.pid.and_then(super::process::usage) {
            let now = std::time::Instant::now();
            if let Some((before, at)) = self.cpu {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    metrics.insert("cpu_util".to_owned(), ((cpu_s - before) / wall).max(0.0));
                }
            }
            self.cpu = Some((cpu_s, now));
            metrics.insert("mem_rss_bytes".to_owned(), rss as f64);
        }
        Some(Sample {
            ts: UnixMicros::now(),
            resource_id,
            resource_type,
            metrics,
            event: None,
            labels: BTreeMap::from([("node".to_owned(), self.node.clone())]),
        })
    }

    fn change(&self, id: &str, reason: Option<String>) -> InstanceChange {
        InstanceChange {
            instance: id.to_owned(),
            service: self.service.clone(),
            version: self.version,
            addr: Some(self.addr.to_string()),
            reason,
        }
    }
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
    /// This node's instances, for the API and the proxies.
    pub view: Arc<RwLock<Vec<InstanceView>>>,
    /// The address instances listen on (`HOST`) and peers reach them at.
    pub instance_ip: IpAddr,
    /// Where instance events go.
    pub events: Emitter,
    pub stats: Arc<ServiceStats>,
    /// How long an instance leaving this node drains before it is stopped.
    pub drain: Duration,
    /// Where the instances' telemetry goes (none in tests without a history).
    pub ingestor: Option<Ingestor>,
    /// The services' assignments from migrations (none: placement alone decides).
    pub assignments: Option<crate::migrate::assignments::Assignments>,
    /// This node's HTTP API (instances push their telemetry there: `AUGUR_API`).
    pub api_url: Option<String>,
    /// Runs every instance in memory instead of on its spec's driver (the deterministic
    /// harness's agents; none in the agent).
    pub memory: Option<MemoryDriver>,
}

/// Instances that run in memory, for the deterministic in-process harness (tokio's paused clock,
/// no process, no socket): each is up from its start until stopped or crashed by the script, and
/// passes its health checks unless the script makes it fail them. Everything else about them
/// (placement, roles, assignments, draining, publication) is the runtime's own.
#[derive(Clone, Debug, Default)]
pub struct MemoryDriver {
    failing: Arc<RwLock<std::collections::BTreeSet<String>>>,
    crashes: Arc<RwLock<BTreeMap<String, CancellationToken>>>,
    next_port: Arc<std::sync::atomic::AtomicU16>,
}

impl MemoryDriver {
    /// Makes `instance` fail (or pass again) its health checks.
    pub fn set_failing(&self, instance: &str, failing: bool) {
        let mut f = self.failing.write();
        if failing {
            f.insert(instance.to_owned());
        } else {
            f.remove(instance);
        }
    }

    /// Ends `instance` as a crash would (it is restarted like any instance that exits).
    pub fn crash(&self, instance: &str) {
        if let Some(t) = self.crashes.read().get(instance) {
            t.cancel();
        }
    }

    fn port(&self) -> u16 {
        20_000
            + self
                .next_port
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % 40_000
    }

    fn check(&self, instance: &str) -> Check {
        if self.failing.read().contains(instance) {
            Check::Failed("failing (in memory)".into())
        } else {
            Check::Passed(Duration::from_millis(1))
        }
    }

    /// An instance's life: started, then up until stopped; a crash reports an exit and starts it
    /// again after a second.
    async fn run(self, id: String, reports: UnboundedSender<Report>, stop: CancellationToken) {
        loop {
            let crash = CancellationToken::new();
            self.crashes.write().insert(id.clone(), crash.clone());
            let _ = reports.send(Report::Started {
                id: id.clone(),
                detail: "in memory".into(),
                epoch: 0,
                pid: None,
            });
            tokio::select! {
                () = stop.cancelled() => break,
                () = crash.cancelled() => {
                    let _ = reports.send(Report::Exited {
                        id: id.clone(),
                        reason: "crashed (in memory)".into(),
                    });
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.crashes.write().remove(&id);
    }
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

    /// The instances that should run here, by id: each service's slots as its assignment (from
    /// a migration) holds them, when the node it names is alive, and the other slots as
    /// placement puts them (replicas `0`, `1`, ...; for `warm_standby`, standbys `standby-0`, ...
    /// away from the nodes that serve).
    fn wanted(&self) -> BTreeMap<String, Wanted> {
        let candidates = self.candidates();
        // An entry on a node known to be gone is placed again; one on a node not yet seen (this
        // node just started, its view is forming) is kept.
        let gone: std::collections::BTreeSet<&str> = candidates
            .iter()
            .filter(|c| !c.alive)
            .map(|c| c.node_name.as_str())
            .collect();
        let mut out = BTreeMap::new();
        let fleet_mode = self.catalog.fleet().map(|(_, d)| d.autonomy.mode);
        // Where instances run now, as this node sees the fleet, and what dead nodes ran.
        let members = self.mesh.as_ref().map(Mesh::members).unwrap_or_default();
        let fleet = fleet_instances(&self.node_name, &self.view.read(), &members);
        let dead: Vec<(String, augur_mesh::values::InstanceValue)> = members
            .iter()
            .filter(|m| matches!(m.status, MemberStatus::Dead | MemberStatus::Left))
            .flat_map(|m| {
                let node = m.node_name.clone().unwrap_or_else(|| m.peer_id.clone());
                m.instances.iter().map(move |i| (node.clone(), i.clone()))
            })
            .collect();
        for s in self.catalog.services() {
            let assigned = self.assignments.as_ref().and_then(|a| a.get(&s.name));
            let epoch = assigned.as_ref().map_or(0, |a| a.epoch);
            let seq = assigned.as_ref().map_or(0, |a| a.seq);
            let all: Vec<Entry> = assigned.map(|a| a.entries).unwrap_or_default();
            // A slot placed anew never takes the id of an instance the assignment names (a
            // promoted standby keeps its id while it serves another slot).
            let taken: std::collections::BTreeSet<String> =
                all.iter().map(|e| e.instance.clone()).collect();
            // A renamed instance this node already runs for the name keeps its name (a lease's
            // renewals raise the epoch: each assignment of one move would otherwise rename, so
            // restart, it).
            let local: Vec<String> = self
                .view
                .read()
                .iter()
                .filter(|i| i.service == s.name)
                .map(|i| i.id.clone())
                .collect();
            let fresh = |base: String| {
                if !taken.contains(&base) {
                    return base;
                }
                let renamed = format!("{base}-e");
                local
                    .iter()
                    .find(|id| {
                        id.strip_prefix(&renamed)
                            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
                            && !taken.contains(*id)
                    })
                    .cloned()
                    .unwrap_or_else(|| format!("{base}-e{epoch}"))
            };
            // With a fleet document (lease voters) and autonomy acting for the service, a
            // serving slot on a dead node stays its until a move under a lease takes it away (the
            // autonomy's reactive path): a minority partition that sees the others dead starts
            // nothing in their place. Standbys are placed again at once (they serve nothing).
            let lease_gated = fleet_mode == Some(Mode::Act) && s.spec.autonomy == Mode::Act;
            let entries: Vec<Entry> = all
                .into_iter()
                .filter(|e| {
                    !gone.contains(e.node.as_str()) || (lease_gated && e.role == Role::Serving)
                })
                .collect();
            let covered: std::collections::BTreeSet<&str> =
                entries.iter().map(|e| e.slot.as_str()).collect();
            let numbered = |e: &Entry, prefix: &str| -> Option<(usize, String)> {
                Some((e.slot.strip_prefix(prefix)?.parse().ok()?, e.node.clone()))
            };
            let mut fixed: BTreeMap<usize, String> = entries
                .iter()
                .filter(|e| e.role == Role::Serving)
                .filter_map(|e| numbered(e, ""))
                .collect();
            // A replica stays where it runs (on a live node): placement decides where new ones
            // go, not where running ones move (a move is a migration, under a lease). Of two
            // instances of one slot, the older holds it.
            let mut held: BTreeMap<usize, (u64, String)> = BTreeMap::new();
            for i in fleet
                .iter()
                .filter(|i| i.service == s.name && i.role == Role::Serving && i.health != "down")
                .filter(|i| !gone.contains(i.node.as_str()))
            {
                let Ok(slot) = i.slot.parse::<usize>() else {
                    continue;
                };
                if slot >= s.spec.replicas as usize || covered.contains(i.slot.as_str()) {
                    continue;
                }
                let e = held.entry(slot).or_insert((i.epoch, i.node.clone()));
                if (i.epoch, &i.node) < (e.0, &e.1) {
                    *e = (i.epoch, i.node.clone());
                }
            }
            for (slot, (_, node)) in held {
                fixed.entry(slot).or_insert(node);
            }
            // A serving slot whose instance's node died is not placed again here when moves
            // are lease-gated: the autonomy moves it, under a lease (a minority partition that
            // sees the others dead starts nothing in their place).
            let gated: std::collections::BTreeSet<String> = if lease_gated {
                dead.iter()
                    .filter(|(_, i)| {
                        i.service == s.name && i.role.unwrap_or_default() == Role::Serving
                    })
                    .filter_map(|(_, i)| i.slot.clone())
                    .filter(|slot| {
                        slot.parse::<usize>()
                            .is_ok_and(|n| n < s.spec.replicas as usize && !fixed.contains_key(&n))
                    })
                    .collect()
            } else {
                std::collections::BTreeSet::new()
            };
            let want = |slot: String, role: Role, lease_epoch: u64| Wanted {
                service: s.name.clone(),
                version: s.version,
                spec: s.spec.clone(),
                slot,
                role,
                lease_epoch,
                lease_seq: if lease_epoch > 0 { seq } else { 0 },
            };
            let nodes = place_with(&s.spec, &candidates, &fixed);
            for (i, node) in nodes.iter().enumerate() {
                let slot = i.to_string();
                if !covered.contains(slot.as_str())
                    && !gated.contains(&slot)
                    && node.as_deref() == Some(&self.node_name)
                {
                    out.insert(
                        fresh(format!("{}-{i}", s.name)),
                        want(slot, Role::Serving, 0),
                    );
                }
            }
            if s.spec.standbys > 0 {
                let serving: std::collections::BTreeSet<&str> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !gated.contains(&i.to_string()))
                    .filter_map(|(_, n)| n.as_deref())
                    .chain(
                        entries
                            .iter()
                            .filter(|e| e.role == Role::Serving)
                            .map(|e| e.node.as_str()),
                    )
                    .collect();
                let mut standby = s.spec.clone();
                standby.replicas = s.spec.standbys;
                standby.pin.clear();
                let away: Vec<Candidate> = candidates
                    .iter()
                    .filter(|c| !serving.contains(c.node_name.as_str()))
                    .cloned()
                    .collect();
                let mut fixed: BTreeMap<usize, String> = entries
                    .iter()
                    .filter(|e| e.role == Role::Standby)
                    .filter_map(|e| numbered(e, "standby-"))
                    .collect();
                // Standbys stay where they run too (away from the serving nodes).
                for i in fleet.iter().filter(|i| {
                    i.service == s.name
                        && i.role == Role::Standby
                        && i.health != "down"
                        && !gone.contains(i.node.as_str())
                        && !serving.contains(i.node.as_str())
                }) {
                    if let Some(j) = i
                        .slot
                        .strip_prefix("standby-")
                        .and_then(|j| j.parse::<usize>().ok())
                        .filter(|j| *j < s.spec.standbys as usize)
                        && !covered.contains(i.slot.as_str())
                    {
                        fixed.entry(j).or_insert_with(|| i.node.clone());
                    }
                }
                for (j, node) in place_with(&standby, &away, &fixed).iter().enumerate() {
                    let slot = format!("standby-{j}");
                    if !covered.contains(slot.as_str()) && node.as_deref() == Some(&self.node_name)
                    {
                        out.insert(
                            fresh(format!("{}-standby-{j}", s.name)),
                            want(slot, Role::Standby, 0),
                        );
                    }
                }
            }
            // A new instance runs the spec in force (a blue_green move to a new version is made
            // after the catalog holds it).
            for e in entries.iter().filter(|e| e.node == self.node_name) {
                out.insert(e.instance.clone(), want(e.slot.clone(), e.role, epoch));
            }
        }
        out
    }

    /// Whether this node's view of the fleet can be trusted to place instances: outside a mesh
    /// at once; in one, once it sees another live member, or after [`SETTLE`] alone (a node
    /// that just started and sees nobody yet would place every replica on itself, and start
    /// instances that the fleet already runs).
    fn settled(&self, started: tokio::time::Instant) -> bool {
        let Some(mesh) = &self.mesh else {
            return true;
        };
        started.elapsed() >= SETTLE
            || mesh.members().iter().any(|m| {
                !m.is_self && matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect)
            })
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
        // Hook instances a previous run left (adopted or stopped by the first convergence).
        let mut leftovers = hook::records(&self.pid_dir);
        // The instances' supervisors (each awaited when its instance stops).
        let instances = tokio_util::task::TaskTracker::new();
        let (tx_reports, mut rx_reports) = tokio::sync::mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(report) = rx_reports.recv() => {
                    self.on_report(&mut running, report).await;
                }
                _ = tick.tick() => {
                    if self.settled(started) {
                        self.converge(&mut running, &mut leftovers, &instances, &tx_reports, &stop).await;
                    }
                    self.check(&mut running, &client).await;
                }
            }
            self.publish(&running);
        }
        // Processes stop with the agent (their tokens are children of `stop`); hook instances
        // are left running, recorded, for the next run to adopt.
        for (_, r) in running {
            let _ = r.task.await;
        }
        self.view.write().clear();
        if let Some(m) = &self.mesh {
            m.publish_value(NodeValue::Instances(Vec::new()));
        }
    }

    /// Stops what is no longer placed here (or whose spec changed) and starts what is.
    async fn converge(
        &self,
        running: &mut BTreeMap<String, Running>,
        leftovers: &mut BTreeMap<String, hook::HookInstance>,
        instances: &tokio_util::task::TaskTracker,
        reports: &UnboundedSender<Report>,
        stop: &CancellationToken,
    ) {
        let wanted = self.wanted();
        let now = tokio::time::Instant::now();
        let mut moved = Vec::new();
        for (id, r) in running.iter_mut() {
            match wanted.get(id) {
                // Still here; a newer spec that runs the same thing applies as it is. Under
                // blue_green a changed spec does not restart anything: a migration brings the
                // new version up beside the old, slot by slot.
                Some(w)
                    if r.spec.same_instance(&w.spec)
                        || w.spec.strategy == augur_orchestrate::spec::Strategy::BlueGreen =>
                {
                    if r.spec.same_instance(&w.spec) && w.version != r.version {
                        r.version = w.version;
                        r.spec = w.spec.clone();
                    }
                    if w.role != r.role || w.slot != r.slot {
                        tracing::info!(instance = %id, slot = %w.slot, role = ?w.role, epoch = w.lease_epoch, "instance's role changed by its assignment");
                        // Made to serve: under the assignment's epoch, so the proxies prefer it
                        // to the slot's other serving instance.
                        if w.role == Role::Serving && r.role != Role::Serving {
                            r.lease_epoch = w.lease_epoch;
                            r.lease_seq = w.lease_seq;
                        }
                        // Moved away by a migration: its history says so, so that training
                        // does not take a prevented failure for health.
                        if r.role == Role::Serving
                            && w.role == Role::Retiring
                            && let (Ok(resource_id), Ok(resource_type)) =
                                (ResourceId::parse(id), ResourceType::parse(&r.service))
                        {
                            moved.push(Sample {
                                ts: UnixMicros::now(),
                                resource_id,
                                resource_type,
                                metrics: BTreeMap::from([(
                                    "up".to_owned(),
                                    if r.up { 1.0 } else { 0.0 },
                                )]),
                                event: Some(augur_proto::Event::Migration),
                                labels: BTreeMap::from([("node".to_owned(), r.node.clone())]),
                            });
                        }
                        r.role = w.role;
                        r.slot = w.slot.clone();
                    }
                    if r.draining_until.take().is_some() {
                        tracing::info!(instance = %id, "instance wanted again; drain cancelled");
                    }
                }
                // No longer placed here, or what runs changed: drained, then stopped.
                _ => {
                    if r.draining_until.is_none() {
                        // One that takes no traffic has nothing to drain.
                        let drain = if r.up && r.health.serves() && r.role == Role::Serving {
                            self.drain
                        } else {
                            Duration::ZERO
                        };
                        tracing::info!(instance = %id, ?drain, "instance draining (no longer placed here, or its spec changed)");
                        r.draining_until = Some(now + drain);
                    }
                }
            }
        }
        self.record(moved);
        let gone: Vec<String> = running
            .iter()
            .filter(|(_, r)| r.draining_until.is_some_and(|t| now >= t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(r) = running.remove(&id) {
                let change = r.change(&id, None);
                r.stop.cancel();
                let _ = r.task.await;
                tracing::info!(instance = %id, "instance stopped (no longer placed here, or its spec changed)");
                self.events
                    .emit(EventKind::InstanceStopped(change), Some(id.clone()))
                    .await;
            }
        }
        for (id, w) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let Wanted {
                service,
                version,
                spec,
                slot,
                role,
                lease_epoch,
                lease_seq,
            } = w;
            let free_port = || {
                std::net::TcpListener::bind((self.instance_ip, 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| {
                        tracing::error!(error = %e, ip = %self.instance_ip, "no free port for an instance (check services.instance_ip)");
                    })
            };
            let (port, task, token) = match (&self.memory, &spec.driver) {
                (Some(memory), _) => {
                    let token = stop.child_token();
                    let task = instances.spawn(memory.clone().run(
                        id.clone(),
                        reports.clone(),
                        token.clone(),
                    ));
                    (memory.port(), task, token)
                }
                (
                    None,
                    Driver::Process {
                        command,
                        args,
                        env,
                        workdir,
                        stop_grace,
                    },
                ) => {
                    let Ok(port) = free_port() else { continue };
                    let token = stop.child_token();
                    let instance = Instance {
                        id: id.clone(),
                        host: self.instance_ip,
                        port,
                        spec: ProcessSpec {
                            command: command.clone(),
                            args: args.clone(),
                            env: env.clone(),
                            workdir: workdir.as_ref().map(PathBuf::from),
                            stop_grace: *stop_grace,
                        },
                        service: service.clone(),
                        api: self.api_url.clone(),
                    };
                    let task = instances.spawn(supervise(
                        instance,
                        self.pid_dir.clone(),
                        Backoff::default(),
                        Arc::new(InstanceStats::default()),
                        reports.clone(),
                        token.clone(),
                    ));
                    (port, task, token)
                }
                (
                    None,
                    Driver::Hook {
                        start,
                        stop: stop_script,
                        status,
                        ..
                    },
                ) => {
                    let scripts = hook::Scripts {
                        start: start.clone(),
                        stop: stop_script.clone(),
                        status: status.clone(),
                    };
                    // What a previous run left: adopted when it runs the same thing, else
                    // stopped first.
                    let (port, epoch) = match leftovers.remove(&id) {
                        Some(r) if r.version == version && r.scripts == scripts => {
                            (r.port, r.epoch)
                        }
                        other => {
                            if let Some(r) = other {
                                stop_leftover(&self.pid_dir, &r).await;
                            }
                            let Ok(port) = free_port() else { continue };
                            (port, 0)
                        }
                    };
                    let instance = hook::HookInstance {
                        id: id.clone(),
                        service: service.clone(),
                        version,
                        host: self.instance_ip,
                        port,
                        epoch,
                        scripts,
                    };
                    // Stopped only when the runtime says so: an agent that stops leaves it
                    // running for its next run to adopt.
                    let token = CancellationToken::new();
                    let task = instances.spawn(hook::supervise(
                        instance,
                        self.pid_dir.clone(),
                        Backoff::default(),
                        hook::STATUS_EVERY,
                        reports.clone(),
                        token.clone(),
                        stop.clone(),
                    ));
                    (port, task, token)
                }
            };
            running.insert(
                id,
                Running {
                    service,
                    version,
                    addr: SocketAddr::new(self.instance_ip, port),
                    health: HealthTracker::new(&spec.health),
                    spec,
                    stop: token,
                    task,
                    up: false,
                    epoch: 0,
                    next_probe: tokio::time::Instant::now(),
                    draining_until: None,
                    pid: None,
                    cpu: None,
                    node: self.node_name.clone(),
                    reason: None,
                    slot,
                    role,
                    lease_epoch,
                    lease_seq,
                },
            );
        }
        // Hook instances a previous run left that are not placed here any more.
        for (_, r) in std::mem::take(leftovers) {
            stop_leftover(&self.pid_dir, &r).await;
        }
    }

    /// A start or an exit of an instance's process.
    async fn on_report(&self, running: &mut BTreeMap<String, Running>, report: Report) {
        match report {
            Report::Started {
                id,
                detail,
                epoch,
                pid,
            } => {
                let Some(r) = running.get_mut(&id) else {
                    return;
                };
                r.pid = pid;
                r.cpu = None;
                tracing::info!(instance = %id, %detail, "instance running");
                r.up = true;
                r.epoch = epoch;
                // A new run is unknown until it passes its checks.
                r.health = HealthTracker::new(&r.spec.health);
                r.next_probe = tokio::time::Instant::now();
                self.stats.count(&r.service, |c| c.starts += 1);
                let change = r.change(&id, Some(detail));
                self.events
                    .emit(EventKind::InstanceStarted(change), Some(id))
                    .await;
            }
            Report::Exited { id, reason } => {
                let Some(r) = running.get_mut(&id) else {
                    return;
                };
                r.up = false;
                r.pid = None;
                r.reason = Some(reason.clone());
                self.record(r.sample(&id, None).into_iter().collect());
                self.stats.count(&r.service, |c| c.exits += 1);
                let change = r.change(&id, Some(reason));
                self.events
                    .emit(EventKind::InstanceExited(change), Some(id))
                    .await;
            }
        }
    }

    /// Probes every running instance whose interval has passed, all at once (a check that
    /// hangs holds up no other), and reports health changes.
    async fn check(&self, running: &mut BTreeMap<String, Running>, client: &reqwest::Client) {
        let now = tokio::time::Instant::now();
        let due: Vec<(String, SocketAddr, HealthCheck)> = running
            .iter_mut()
            .filter(|(_, r)| r.up && now >= r.next_probe)
            .map(|(id, r)| {
                r.next_probe = now + r.spec.health.interval;
                (id.clone(), r.addr, r.spec.health.clone())
            })
            .collect();
        let checks = futures::future::join_all(due.iter().map(|(id, addr, check)| async move {
            match &self.memory {
                Some(memory) => memory.check(id),
                None => super::health::probe(client, *addr, check).await,
            }
        }))
        .await;
        let mut samples = Vec::new();
        for ((id, _, _), check) in due.into_iter().zip(checks) {
            let Some(r) = running.get_mut(&id) else {
                continue;
            };
            if !r.up {
                // It exited while being checked: the exit said so already.
                continue;
            }
            samples.extend(r.sample(&id, Some(&check)));
            for t in r.health.on_event(check, ()) {
                let Transition::Became { health, reason } = t;
                tracing::info!(instance = %id, health = health_str(health), reason = ?reason, "instance health");
                r.reason.clone_from(&reason);
                let change = r.change(&id, reason);
                let kind = match health {
                    Health::Healthy => {
                        self.stats.count(&r.service, |c| c.became_healthy += 1);
                        EventKind::InstanceHealthy(change)
                    }
                    Health::Unhealthy => {
                        self.stats.count(&r.service, |c| c.became_unhealthy += 1);
                        EventKind::InstanceUnhealthy(change)
                    }
                    Health::Unknown => continue,
                };
                self.events.emit(kind, Some(id.clone())).await;
            }
        }
        self.record(samples);
    }

    /// Hands instance samples to the history, like any telemetry (dropped and counted when the
    /// queue is full).
    fn record(&self, samples: Vec<Sample>) {
        let Some(ingestor) = &self.ingestor else {
            return;
        };
        let admitted: Vec<Sample> = samples
            .into_iter()
            .filter(|s| ingestor.admit(Source::Instance, s).is_ok())
            .collect();
        if !admitted.is_empty() {
            ingestor.submit_nowait(Source::Instance, admitted);
        }
    }

    /// The instances as the API shows them, and as this node's signed value tells the fleet.
    fn publish(&self, running: &BTreeMap<String, Running>) {
        let view: Vec<InstanceView> = running
            .iter()
            .map(|(id, r)| InstanceView {
                id: id.clone(),
                service: r.service.clone(),
                version: r.version,
                port: r.addr.port(),
                addr: r.addr.to_string(),
                health: r.health().to_owned(),
                epoch: r.epoch,
                reason: (r.health() != "healthy")
                    .then(|| r.reason.clone())
                    .flatten(),
                slot: r.slot.clone(),
                role: r.role,
                lease_epoch: r.lease_epoch,
                lease_seq: r.lease_seq,
            })
            .collect();
        if let Some(m) = &self.mesh {
            let mut values: Vec<InstanceValue> = view
                .iter()
                .map(|i| InstanceValue {
                    id: i.id.clone(),
                    service: i.service.clone(),
                    version: i.version,
                    addr: i.addr.clone(),
                    health: i.health.clone(),
                    epoch: i.epoch,
                    slot: Some(i.slot.clone()),
                    role: (i.role != Role::Serving).then_some(i.role),
                    lease_epoch: i.lease_epoch,
                    lease_seq: i.lease_seq,
                })
                .collect();
            values.truncate(MAX_PUBLISHED);
            // Unchanged values are not gossiped again.
            m.publish_value(NodeValue::Instances(values));
        }
        let mut current = self.view.write();
        if *current != view {
            *current = view;
        }
    }
}

/// Stops a hook instance a previous run left, and forgets it.
async fn stop_leftover(dir: &std::path::Path, r: &hook::HookInstance) {
    match hook::stop(r).await {
        Ok(()) => tracing::info!(instance = %r.id, "stopped a hook instance a previous run left"),
        Err(e) => {
            tracing::error!(instance = %r.id, error = %e, "could not stop a hook instance a previous run left")
        }
    }
    hook::forget(dir, &r.id);
}

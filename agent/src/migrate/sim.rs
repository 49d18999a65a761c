//! The autonomy in the deterministic in-process harness: several agents, each with its real
//! mesh (`augur_mesh::sim`: membership over the in-memory datagram network, libp2p over its
//! memory transport), leases, assignments, migrations executor, services runtime and autonomous
//! loop, as `agent.rs` wires them, under tokio's paused clock. Two things differ from a real
//! agent, and are said where they are: instances run in memory (the runtime's
//! [`MemoryDriver`]: no process, no socket; health set by the script), and a node's predictions
//! are published by the script (its health value with alarms, and the trend its history holds,
//! which peers' witnesses read and judge with their own engine) instead of by its prediction
//! stage. The catalog is offered to every node directly (its replication has its own tests).
//!
//! A checker samples the fleet every 100 ms and records every migration step and autonomy
//! decision; [`AgentFleet::assert_history`] then asserts the invariants: at most one coordinator
//! per (service, epoch); every service always has a serving instance (outside the windows a
//! script declares, such as after a crash); at most `max_migrations` leases held at once; nothing
//! leased, moved or journalled in shadow mode.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::EventKind;
use augur_mesh::admission::Trust;
use augur_mesh::leases::Leases;
use augur_mesh::operator::{Freshness, OperatorCredential, Role as OperatorRole};
use augur_mesh::sim::{SimConfig, SimFleet};
use augur_mesh::values::{Capacity, Health, NodeValue};
use augur_mesh::{Mesh, Tasks};
use augur_orchestrate::autonomy::{Alarm, Report};
use augur_orchestrate::migration::Role;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::assignments::Assignments;
use super::autonomy::{AutonomyView, Trends};
use super::executor::{Journal, Migrations};
use super::store::ActStore;
use crate::config::Config;
use crate::fleet::events::{Emitter, EventLog};
use crate::history::History;
use crate::models::ModelStore;
use crate::sample::{Sample, UnixMicros};
use crate::services::catalog::{CatalogStore, KIND_FLEET, KIND_SPEC};
use crate::services::runtime::{InstanceView, MemoryDriver, Runtime};

/// How often the checker samples the fleet.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One agent of the harness.
#[allow(missing_debug_implementations)]
pub struct SimAgent {
    pub name: String,
    pub peer_id: String,
    _dir: tempfile::TempDir,
    tasks: Tasks,
    pub mesh: Mesh,
    pub catalog: CatalogStore,
    pub leases: Leases,
    pub assignments: Assignments,
    pub migrations: Migrations,
    pub history: History,
    pub memory: MemoryDriver,
    pub local: Arc<RwLock<Vec<InstanceView>>>,
    pub autonomy: AutonomyView,
    clock: augur_mesh::Clock,
    _config: watch::Sender<Arc<Config>>,
}

/// What the checker saw.
#[derive(Debug, Default)]
struct Record {
    /// (service, epoch) -> the nodes that sent a step of a move under it.
    senders: BTreeMap<(String, u64), BTreeSet<String>>,
    /// Migration steps, in the order seen: (origin node, change).
    steps: Vec<(String, augur_mesh::MigrationChange)>,
    /// Autonomy decisions: (origin node, report).
    reports: Vec<(String, Report)>,
    /// Most leases held at once.
    most_held: usize,
    violations: Vec<String>,
    samples: u64,
    /// Nodes killed: what their tasks still emit locally as they wind down never reached the
    /// fleet (their mesh is gone), so it is not recorded.
    killed: BTreeSet<String>,
}

/// Which invariants hold right now (a script turns one off across a window it causes, such as a
/// crash before the fleet moves the work).
#[derive(Clone, Debug)]
pub struct Expect {
    /// Every service has a healthy serving instance on a live node.
    pub serving: bool,
}

/// An in-process fleet of agents.
#[allow(missing_debug_implementations)]
pub struct AgentFleet {
    pub fleet: SimFleet,
    pub agents: BTreeMap<String, SimAgent>,
    operator: OperatorCredential,
    record: Arc<Mutex<Record>>,
    pub expect: Arc<RwLock<Expect>>,
    max_migrations: u32,
    shadow: bool,
    services: Vec<String>,
    checker: Tasks,
    versions: BTreeMap<String, u64>,
}

/// A fleet document's settings.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    pub max_migrations: u32,
    pub hold_down: Duration,
    pub lease: Duration,
    pub shadow: bool,
    pub dwell: Duration,
    pub takeover: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            max_migrations: 1,
            hold_down: Duration::from_secs(5),
            lease: Duration::from_secs(6),
            shadow: false,
            dwell: Duration::from_secs(3),
            takeover: Duration::from_secs(10),
        }
    }
}

/// A service of the harness: `replicas` serving, `standbys` standing by, moved by `strategy`.
pub fn service(name: &str, port: u16, strategy: &str, standbys: u32) -> String {
    format!(
        "[service]\nname = \"{name}\"\nport = {port}\nreplicas = 1\nstrategy = \"{strategy}\"\n\
         standbys = {standbys}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"/nonexistent/in-memory\"\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         successes = 1\nfailures = 2\n"
    )
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl AgentFleet {
    /// Starts `names` (admitted, connected to each other), with a fleet document making all of
    /// them lease voters.
    pub async fn start(seed: u64, names: &[&str], settings: FleetSettings) -> Self {
        Self::start_skewed(seed, names, settings, &[]).await
    }

    /// [`AgentFleet::start`], with some nodes' wall clocks off the fleet's by `(name, ms)`.
    pub async fn start_skewed(
        seed: u64,
        names: &[&str],
        settings: FleetSettings,
        skews: &[(&str, i64)],
    ) -> Self {
        let mut fleet = SimFleet::new(seed, SimConfig::default());
        for (n, ms) in skews {
            fleet.set_skew(n, *ms);
        }
        fleet.join_all(names.iter().copied()).await;
        fleet.converge().await.expect("the fleet converges");
        fleet
            .until(Duration::from_secs(60), |f| {
                names
                    .iter()
                    .all(|x| names.iter().all(|y| x == y || f.connected(x, y)))
            })
            .await
            .expect("every pair connected and admitted");
        let now_s = fleet.clock().now_ms() / 1000;
        let operator =
            OperatorCredential::create(&fleet.fleet, OperatorRole::Operator, now_s + 86_400);
        let mut agents = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let agent = start_agent(&fleet, n, seed.wrapping_mul(31).wrapping_add(i as u64));
            agents.insert((*n).to_owned(), agent);
        }
        let voters: Vec<String> = names
            .iter()
            .map(|n| format!("\"{}\"", fleet.peer_id(n)))
            .collect();
        let doc = format!(
            "[leases]\nvoters = [{}]\nmax_migrations = {}\nmax_migrations_per_zone = {}\n\
             hold_down = \"{}\"\nduration = \"{}\"\n\
             [autonomy]\nmode = \"{}\"\ndwell = \"{}\"\ntakeover = \"{}\"\n",
            voters.join(", "),
            settings.max_migrations,
            settings.max_migrations,
            fmt_duration(settings.hold_down),
            fmt_duration(settings.lease),
            if settings.shadow { "shadow" } else { "act" },
            fmt_duration(settings.dwell),
            fmt_duration(settings.takeover),
        );
        let mut this = Self {
            fleet,
            agents,
            operator,
            record: Arc::default(),
            expect: Arc::new(RwLock::new(Expect { serving: false })),
            max_migrations: settings.max_migrations,
            shadow: settings.shadow,
            services: Vec::new(),
            checker: Tasks::default(),
            versions: BTreeMap::new(),
        };
        this.offer(KIND_FLEET, "fleet", doc);
        for a in this.agents.values() {
            let leases = a.leases.clone();
            this.fleet
                .until(Duration::from_secs(30), |_| {
                    leases.view().config_version.is_some()
                })
                .await
                .expect("the fleet document reaches the leases");
        }
        this.start_checker();
        this
    }

    /// Signs `body` as the operator and offers it to every node's catalog.
    fn offer(&mut self, kind: &str, name: &str, body: String) {
        let version = self.versions.entry(name.to_owned()).or_insert(0);
        *version += 1;
        let now_s = self.fleet.clock().now_ms() / 1000;
        let doc = self
            .operator
            .sign(kind, name, *version, body.into_bytes(), now_s);
        for a in self.agents.values() {
            let now_s = a.clock.now_ms() / 1000;
            a.catalog
                .offer(doc.clone(), now_s, Freshness::Held)
                .unwrap_or_else(|e| panic!("{} refuses {name}: {e}", a.name));
        }
    }

    /// Applies a service (see [`service`]) and waits until it serves, healthy, once; from then
    /// on the checker expects it to serve.
    pub async fn apply(&mut self, name: &str, spec: String) {
        self.offer(KIND_SPEC, name, spec);
        self.services.push(name.to_owned());
        let ok = self
            .until(Duration::from_secs(60), |f| {
                f.serving(name).len() == 1 && f.standing_by_ok(name)
            })
            .await;
        assert!(ok, "{name} serves: {:?}", self.instances(name));
        self.expect.write().serving = true;
    }

    fn standing_by_ok(&self, service: &str) -> bool {
        let Some(a) = self.agents.values().next() else {
            return false;
        };
        let standbys = a
            .catalog
            .services()
            .into_iter()
            .find(|s| s.name == service)
            .map_or(0, |s| s.spec.standbys as usize);
        self.instances(service)
            .iter()
            .filter(|(_, i)| i.role == Role::Standby && i.health == "healthy")
            .count()
            >= standbys
    }

    /// Every instance of `service` on a live node: (node, instance).
    pub fn instances(&self, service: &str) -> Vec<(String, InstanceView)> {
        self.agents
            .values()
            .flat_map(|a| {
                a.local
                    .read()
                    .iter()
                    .filter(|i| i.service == service)
                    .map(|i| (a.name.clone(), i.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The healthy serving instances of `service` on live nodes: (node, instance id).
    pub fn serving(&self, service: &str) -> Vec<(String, String)> {
        self.instances(service)
            .into_iter()
            .filter(|(_, i)| i.role == Role::Serving && i.health == "healthy")
            .map(|(n, i)| (n, i.id))
            .collect()
    }

    /// The one node serving `service` (panics unless exactly one does).
    pub fn serving_node(&self, service: &str) -> String {
        let s = self.serving(service);
        assert_eq!(s.len(), 1, "{service}: {s:?}");
        s[0].0.clone()
    }

    /// Publishes, as `node`'s prediction stage would, that `instance` is predicted to fail; and
    /// writes the trend behind it (a memory leak) into `node`'s history, where peers' witnesses
    /// read it.
    pub fn predict(&self, node: &str, instance: &str, service: &str) {
        let a = &self.agents[node];
        let now_ms = a.clock.now_ms();
        let samples: Vec<Sample> = (0..300u64)
            .map(|k| Sample {
                ts: UnixMicros(((now_ms - (299 - k) * 1000) * 1000) as i64),
                resource_id: augur_proto::ResourceId::parse(instance).expect("an instance id"),
                resource_type: augur_proto::ResourceType::parse(service).expect("a type"),
                metrics: BTreeMap::from([(
                    "mem_used_ratio".to_owned(),
                    0.35 + 0.55 * k as f64 / 299.0,
                )]),
                event: None,
                labels: BTreeMap::new(),
            })
            .collect();
        a.history.write(&samples).expect("the trend is written");
        self.alarm(node, &[instance]);
    }

    /// Publishes `node`'s health with alarms on `instances` (none: healthy again).
    pub fn alarm(&self, node: &str, instances: &[&str]) {
        let alarms: Vec<Alarm> = instances
            .iter()
            .map(|i| Alarm {
                resource_id: (*i).to_owned(),
                probability: 0.97,
                threshold: 0.75,
                eta_s: Some(25.0),
            })
            .collect();
        self.agents[node]
            .mesh
            .publish_value(NodeValue::Health(Health {
                max_failure_probability: if alarms.is_empty() { 0.05 } else { 0.97 },
                resource_id: instances.first().map(|i| (*i).to_owned()),
                anomaly_score: 0.0,
                above_threshold: !alarms.is_empty(),
                alarms,
                starved: false,
            }));
    }

    /// Kills `node` as SIGKILL would: its agent's tasks end and its mesh goes silent.
    pub fn kill(&mut self, node: &str) {
        self.record.lock().killed.insert(node.to_owned());
        if let Some(a) = self.agents.remove(node) {
            a.tasks.stop();
            a.local.write().clear();
        }
        self.fleet.kill(node);
    }

    /// Runs the fleet for `d` of simulated time.
    pub async fn run_for(&self, d: Duration) {
        self.fleet.run_for(d).await;
    }

    /// Runs until `f` holds (checked every 100 ms) or `limit` passes; whether it held.
    pub async fn until(&self, limit: Duration, f: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if f(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Every node's journal of the migrations it coordinated: (node, journal).
    pub fn journals(&self) -> Vec<(String, Journal)> {
        self.agents
            .values()
            .flat_map(|a| {
                a.migrations
                    .list()
                    .into_iter()
                    .map(|j| (a.name.clone(), j))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The autonomy decisions seen so far: (node, report).
    pub fn reports(&self) -> Vec<(String, Report)> {
        self.record.lock().reports.clone()
    }

    /// The migration steps seen so far: (node, change).
    pub fn steps(&self) -> Vec<(String, augur_mesh::MigrationChange)> {
        self.record.lock().steps.clone()
    }

    /// Starts recording events and sampling the invariants.
    fn start_checker(&mut self) {
        let names: BTreeMap<String, String> = self
            .fleet
            .nodes
            .keys()
            .map(|n| (self.fleet.peer_id(n), n.clone()))
            .collect();
        for a in self.agents.values() {
            let mut rx = a.mesh.subscribe();
            let record = self.record.clone();
            let me = a.peer_id.clone();
            let names = names.clone();
            let stop = self.checker.token();
            self.checker.spawn("sim.events", async move {
                loop {
                    let ev = tokio::select! {
                        () = stop.cancelled() => return,
                        ev = rx.recv() => ev,
                    };
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            record
                                .lock()
                                .violations
                                .push(format!("the checker missed {n} events"));
                            continue;
                        }
                        Err(_) => return,
                    };
                    // Each node records its own events (peers' copies are the same events).
                    if ev.origin != me {
                        continue;
                    }
                    let node = names.get(&me).cloned().unwrap_or_else(|| me.clone());
                    let mut r = record.lock();
                    if r.killed.contains(&node) {
                        continue;
                    }
                    match ev.kind {
                        EventKind::MigrationStep(c) => {
                            let senders =
                                r.senders.entry((c.service.clone(), c.epoch)).or_default();
                            senders.insert(node.clone());
                            if senders.len() > 1 && c.epoch > 0 {
                                let v = format!(
                                    "{} coordinators under {} epoch {}: {senders:?}",
                                    senders.len(),
                                    c.service,
                                    c.epoch
                                );
                                r.violations.push(v);
                            }
                            r.steps.push((node, c));
                        }
                        EventKind::Autonomy(report) => r.reports.push((node, report)),
                        _ => {}
                    }
                }
            });
        }
    }

    /// Samples the invariants now (the script calls it through [`AgentFleet::run_checked`]).
    fn sample(&self) {
        let mut r = self.record.lock();
        r.samples += 1;
        // Leases held at once, by live nodes.
        let held: Vec<(String, String, u64)> = self
            .agents
            .values()
            .flat_map(|a| {
                a.leases
                    .view()
                    .held
                    .into_iter()
                    .map(|h| (a.name.clone(), h.service, h.epoch))
                    .collect::<Vec<_>>()
            })
            .collect();
        let services: BTreeSet<&str> = held.iter().map(|h| h.1.as_str()).collect();
        r.most_held = r.most_held.max(services.len());
        if services.len() > self.max_migrations as usize {
            r.violations
                .push(format!("{} leases held at once: {held:?}", services.len()));
        }
        let mut holders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (n, s, _) in &held {
            holders.entry(s).or_default().insert(n);
        }
        for (s, h) in holders {
            if h.len() > 1 {
                r.violations
                    .push(format!("{s}'s lease held by {h:?} at once"));
            }
        }
        if self.shadow {
            if !held.is_empty() {
                r.violations
                    .push(format!("a lease held in shadow: {held:?}"));
            }
            let journals = self.journals();
            if !journals.is_empty() {
                r.violations
                    .push(format!("a migration in shadow: {:?}", journals[0].1.id));
            }
        }
        if self.expect.read().serving {
            for s in &self.services {
                if self.serving(s).is_empty() {
                    let v = format!(
                        "{s} has no healthy serving instance at sample {}: {:?}",
                        r.samples,
                        self.instances(s)
                    );
                    r.violations.push(v);
                }
            }
        }
    }

    /// Runs for `d`, sampling the invariants every 100 ms.
    pub async fn run_checked(&self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            self.sample();
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Runs until `f` holds, sampling the invariants every 100 ms; whether it held.
    pub async fn until_checked(&self, limit: Duration, f: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.sample();
            if f(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Asserts that no invariant was broken, and returns the most leases held at once.
    pub fn assert_history(&self) -> usize {
        let r = self.record.lock();
        assert!(r.samples > 0, "the checker sampled nothing");
        assert!(
            r.violations.is_empty(),
            "{} violations, first: {:?}",
            r.violations.len(),
            &r.violations[..r.violations.len().min(5)]
        );
        r.most_held
    }

    /// Stops every agent (the test's end).
    pub async fn stop(mut self) {
        self.checker.stop();
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
    }
}

/// Wires one agent on `name`'s simulated mesh, as `agent.rs` does.
fn start_agent(fleet: &SimFleet, name: &str, seed: u64) -> SimAgent {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mesh = fleet.mesh(name).clone();
    let clock = fleet.clock_of(name);
    let tasks = Tasks::default();
    let cfg = Config::default();
    let (tx_config, rx_config) = watch::channel(Arc::new(cfg.clone()));
    let history = History::open(dir.path(), 8 << 20, cfg.history.window).expect("history");
    let trust: Trust = mesh.trust.clone();
    let catalog = CatalogStore::open(dir.path(), trust, clock.now_ms() / 1000);
    let acting = ActStore::open(dir.path()).expect("acting store");
    let (tx_lease, rx_lease) = super::config::channel(&catalog);
    let assignments = Assignments::open(acting.clone());
    let leases = Leases::start(
        mesh.swarm.clone(),
        Arc::new(acting.clone()),
        rx_lease,
        seed,
        Some(Arc::new(assignments.clone())),
        &tasks,
    );
    let events = EventLog::new(4096);
    let emitter = Emitter {
        mesh: Some(mesh.clone()),
        log: events,
        node_name: name.to_owned(),
    };
    let local: Arc<RwLock<Vec<InstanceView>>> = Arc::default();
    let stats = Arc::new(crate::services::ServiceStats::default());
    let migrations = Migrations::start(
        super::executor::Setup {
            store: acting.clone(),
            leases: leases.clone(),
            mesh: mesh.clone(),
            assignments: assignments.clone(),
            catalog: catalog.clone(),
            local: local.clone(),
            node_name: name.to_owned(),
            events: emitter.clone(),
            drain: Duration::from_secs(1),
            services: Some(stats.clone()),
        },
        &tasks,
    );
    let models = ModelStore::in_memory();
    leases.set_trends(Arc::new(Trends {
        history: history.clone(),
        config: rx_config.clone(),
    }));
    let memory = MemoryDriver::default();
    // What the agent's publisher gossips about the node's capacity.
    mesh.publish_value(NodeValue::Capacity(Capacity {
        cpu_free: 0.8,
        mem_free_bytes: 8 << 30,
        disk_free_bytes: 100 << 30,
    }));
    tasks.spawn(
        "leases.config",
        super::config::follow(catalog.clone(), tx_lease, tasks.token()),
    );
    tasks.spawn(
        "migrate.assignments_sync",
        super::assignments::sync(
            leases.clone(),
            mesh.clone(),
            assignments.clone(),
            tasks.token(),
        ),
    );
    tasks.spawn(
        "services.runtime",
        Runtime {
            catalog: catalog.clone(),
            mesh: Some(mesh.clone()),
            history: history.clone(),
            node_name: name.to_owned(),
            pid_dir: dir.path().join("instances"),
            view: local.clone(),
            instance_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            events: emitter.clone(),
            stats,
            drain: Duration::from_secs(1),
            ingestor: None,
            assignments: Some(assignments.clone()),
            api_url: None,
            memory: Some(memory.clone()),
        }
        .run(tasks.token()),
    );
    let autonomy = AutonomyView::default();
    tasks.spawn(
        "migrate.autonomy",
        super::autonomy::run(
            super::autonomy::Setup {
                mesh: mesh.clone(),
                leases: leases.clone(),
                migrations: migrations.clone(),
                assignments: assignments.clone(),
                catalog: catalog.clone(),
                models,
                config: rx_config,
                events: emitter,
            },
            autonomy.clone(),
            tasks.token(),
        ),
    );
    SimAgent {
        name: name.to_owned(),
        peer_id: mesh.peer_id().to_string(),
        _dir: dir,
        tasks,
        mesh,
        catalog,
        leases,
        assignments,
        migrations,
        history,
        memory,
        local,
        autonomy,
        clock,
        _config: tx_config,
    }
}

#[cfg(test)]
mod scenarios;

//! Migrations this node coordinates: each a `augur_orchestrate::migration::Migration` in a task
//! that carries out its actions (journal in `acting.redb`, the lease over the mesh, assignments to
//! the fleet) and feeds it what happens (the lease granted or lost, assignments taken, the new
//! instance's health from the fleet's view, timers). At start, every unfinished migration in the
//! journal is resumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::act::{Assignment, MoveJournal};
use augur_mesh::leases::{Lease, Leases};
use augur_mesh::membership::MemberStatus;
use augur_mesh::{EventKind, Mesh, MigrationChange, PeerId, Tasks};
use augur_orchestrate::Machine as _;
use augur_orchestrate::lease::proposer::Failure;
use augur_orchestrate::migration::{
    Action, Entry, Event, Migration, Outcome, Phase, Plan, Record, Role, Timeouts,
};
use augur_orchestrate::placement::{Candidate, place_with};
use augur_orchestrate::spec::Strategy;
use futures::FutureExt as _;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::assignments::Assignments;
use super::store::ActStore;
use crate::fleet::events::Emitter;
use crate::services::catalog::CatalogStore;
use crate::services::runtime::{InstanceView, PlacedInstance, fleet_instances};

/// How long a resumed migration waits for a majority of the voters (its node just restarted).
const RESUME_PATIENCE: Duration = Duration::from_secs(45);

/// `blue_green` switches back when more than this share of the requests through the
/// coordinator's proxy fail in its window ...
const ERROR_RATE: f64 = 0.05;
/// ... over at least this many requests.
const ERROR_RATE_MIN: u64 = 20;

/// How often the new instance's health is read from the fleet's view.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// A request to move a service's instance (`POST /orchestrate_migration`, `augur migrate`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    pub service: String,
    /// The instance to move (default: the serving instance on `from`, or the service's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The node to move it off (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The node to move it to (default: the best placement score, the source excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The strategy (default: the spec's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// `blue_green`: how long green must stay healthy before the switch (default 10s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub soak: Option<Duration>,
    /// `blue_green`: how long blue is kept after the switch (default 30s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub window: Option<Duration>,
    /// Makes two identical requests two migrations (`augur migrate` draws one); the same signed
    /// request sent again is still one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
}

/// Why a migration could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

/// A migration as the journal keeps it and the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub created_unix_ms: u64,
    /// The lease it acts under (kept so a restart takes the same lease back).
    pub lease_id: Option<u64>,
    pub record: Record,
}

impl Journal {
    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.record.phase {
            Phase::Finished(o) => Some(o),
            _ => None,
        }
    }
}

struct Inner {
    store: ActStore,
    leases: Leases,
    mesh: Mesh,
    assignments: Assignments,
    catalog: CatalogStore,
    local: Arc<RwLock<Vec<InstanceView>>>,
    node_name: String,
    events: Emitter,
    drain: Duration,
    services: Option<Arc<crate::services::ServiceStats>>,
    journals: RwLock<BTreeMap<String, Journal>>,
    cancels: RwLock<BTreeMap<String, mpsc::Sender<String>>>,
    /// Why a migration's lease was refused, as the lease layer said it.
    refusals: RwLock<BTreeMap<String, Failure>>,
    /// Takeovers still asking for their lease.
    takeovers: RwLock<std::collections::BTreeSet<String>>,
    tasks: Tasks,
}

/// The migrations this node coordinates. Cloneable handle.
#[derive(Clone)]
pub struct Migrations {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Migrations")
    }
}

fn unix_ms() -> u64 {
    crate::sample::UnixMicros::now().as_unix_ms()
}

/// Everything needed to run migrations on this node.
#[derive(Debug)]
pub struct Setup {
    pub store: ActStore,
    pub leases: Leases,
    pub mesh: Mesh,
    pub assignments: Assignments,
    pub catalog: CatalogStore,
    pub local: Arc<RwLock<Vec<InstanceView>>>,
    pub node_name: String,
    pub events: Emitter,
    pub drain: Duration,
    /// This node's proxies' counters (blue_green watches the error rate in its window).
    pub services: Option<Arc<crate::services::ServiceStats>>,
}

impl Migrations {
    /// Loads the journal and resumes every unfinished migration on `tasks`.
    pub fn start(setup: Setup, tasks: &Tasks) -> Self {
        let journals: BTreeMap<String, Journal> = setup
            .store
            .migrations()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the migrations' journal cannot be read");
                Vec::new()
            })
            .into_iter()
            .filter_map(|(id, bytes)| match serde_json::from_slice::<Journal>(&bytes) {
                Ok(j) => Some((id, j)),
                Err(e) => {
                    tracing::warn!(migration = %id, error = %e, "a journal record does not decode; skipped");
                    None
                }
            })
            .collect();
        let this = Self {
            inner: Arc::new(Inner {
                store: setup.store,
                leases: setup.leases,
                mesh: setup.mesh,
                assignments: setup.assignments,
                catalog: setup.catalog,
                local: setup.local,
                node_name: setup.node_name,
                events: setup.events,
                drain: setup.drain,
                services: setup.services,
                journals: RwLock::new(journals.clone()),
                cancels: RwLock::default(),
                refusals: RwLock::default(),
                takeovers: RwLock::default(),
                tasks: tasks.clone(),
            }),
        };
        let base = Instant::now();
        for (id, j) in journals {
            if j.outcome().is_some() {
                continue;
            }
            tracing::info!(migration = %id, phase = ?j.record.phase, "resuming a migration from the journal");
            let (m, actions) = Migration::resume(j.record.clone(), Duration::ZERO);
            this.spawn(id, j.lease_id, m, actions, base);
        }
        this
    }

    /// Every migration this node coordinated, newest first.
    pub fn list(&self) -> Vec<Journal> {
        let mut v: Vec<Journal> = self.inner.journals.read().values().cloned().collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.created_unix_ms));
        v
    }

    pub fn get(&self, id: &str) -> Option<Journal> {
        self.inner.journals.read().get(id).cloned()
    }

    /// Waits (at most `within`) until the migration is past its lease: its lease granted, or
    /// refused (with the lease layer's reason).
    pub async fn past_lease(&self, id: &str, within: Duration) -> Result<Journal, Failure> {
        let until = Instant::now() + within;
        loop {
            if let Some(f) = self.inner.refusals.read().get(id) {
                return Err(f.clone());
            }
            let j = self.get(id);
            let leasing = j.as_ref().is_none_or(|j| {
                matches!(
                    j.record.phase,
                    Phase::Forward {
                        step: augur_orchestrate::migration::Step::Lease,
                        ..
                    }
                )
            });
            if (!leasing || Instant::now() >= until)
                && let Some(j) = j
            {
                return Ok(j);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `within`) while this node's voter still shows a lease on `service` held by
    /// this node although no move of it runs here: a move that just finished reads finished a
    /// moment before its release has reached the voters, and a request in that moment would be
    /// refused as busy "held by" this very node. A lease left by a crash stays until it expires,
    /// and the request is then refused naming it, as before.
    pub async fn released(&self, service: &str, within: Duration) {
        let key = augur_orchestrate::lease::wire::service_key(service);
        let me = self.inner.mesh.swarm.peer_id.to_string();
        let until = Instant::now() + within;
        loop {
            let ours = self
                .inner
                .leases
                .view()
                .open
                .iter()
                .any(|o| o.key == key && o.holder == me);
            let running = self
                .inner
                .journals
                .read()
                .values()
                .any(|j| j.record.plan.service == service && j.outcome().is_none());
            if !ours || running || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks a running migration to roll back.
    pub async fn cancel(&self, id: &str, reason: &str) -> bool {
        let tx = self.inner.cancels.read().get(id).cloned();
        match tx {
            Some(tx) => tx.send(reason.to_owned()).await.is_ok(),
            None => false,
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.inner
            .mesh
            .members()
            .into_iter()
            .map(|m| Candidate {
                peer_id: m.peer_id.clone(),
                node_name: m.node_name.clone().unwrap_or(m.peer_id),
                alive: matches!(m.status, MemberStatus::Alive),
                zone: m.zone,
                labels: m.labels,
                free_memory_bytes: m.capacity.as_ref().map_or(0, |c| c.mem_free_bytes),
                cpu_free: m.capacity.as_ref().map_or(0.0, |c| c.cpu_free),
                failure_probability: m.health.as_ref().map_or(0.0, |h| h.max_failure_probability),
            })
            .collect()
    }

    /// Takes over the unfinished move `migration` of `service`, whose coordinator died: wins its
    /// very lease as its successor (the lease ends on the voters' timers first; its hold-down does
    /// not apply to it), reads the move's journal from a majority of the voters under it, and
    /// finishes or undoes the move from there (`Migration::resume`: before `retire` it rolls
    /// back, from `retire` on it finishes). Returns at once; [`Migrations::get`] shows it once
    /// the lease is won, [`Migrations::refusal`] why not.
    pub fn take_over(&self, service: &str, migration: &str) -> Result<(), RequestError> {
        if self.inner.journals.read().contains_key(migration)
            || self.inner.takeovers.read().contains(migration)
        {
            return Ok(());
        }
        let Some(j) = self
            .inner
            .assignments
            .get(service)
            .and_then(|a| a.journal)
            .filter(|j| j.id == migration && !j.finished())
        else {
            return Err(RequestError::NotFound(format!(
                "no unfinished move {migration} of {service} in the journal this node holds"
            )));
        };
        self.inner.refusals.write().remove(migration);
        self.inner.takeovers.write().insert(migration.to_owned());
        let this = self.clone();
        let (service, migration) = (service.to_owned(), migration.to_owned());
        self.inner.tasks.spawn("migrate.takeover", async move {
            let r = this.succeed(&service, &migration, &j).await;
            this.inner.takeovers.write().remove(&migration);
            if let Err(f) = r {
                tracing::info!(%migration, error = %f, "taking over the move failed");
                this.inner.refusals.write().insert(migration, f);
            }
        });
        Ok(())
    }

    async fn succeed(
        &self,
        service: &str,
        migration: &str,
        j: &MoveJournal,
    ) -> Result<(), Failure> {
        let inner = &self.inner;
        let plan = &j.record.plan;
        let zone = inner
            .mesh
            .members()
            .into_iter()
            .find(|m| m.node_name.as_deref() == Some(plan.old.node.as_str()))
            .and_then(|m| m.zone);
        let note = format!("take over {migration} from {}", j.coordinator);
        let me = inner.mesh.swarm.peer_id.to_string();
        // The predecessor's lease ends on the voters' timers: wait for it (a lease lasts at most
        // five minutes), and for a majority.
        let started = Instant::now();
        let patience = augur_orchestrate::lease::wire::MAX_DURATION + Duration::from_secs(30);
        let lease = loop {
            match inner
                .leases
                .acquire_as(service, zone.as_deref(), &note, Some(j.lease_id))
                .await
            {
                Ok(l) => break l,
                Err(Failure::Busy { holder, .. })
                    if (holder == j.coordinator || holder == me)
                        && started.elapsed() < patience =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(Failure::NoMajority { .. }) if started.elapsed() < patience => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(f) => return Err(f),
            }
        };
        // Under the lease, nothing newer can be sent by the predecessor: the latest a majority
        // holds is where the move stands.
        let latest = loop {
            match inner.leases.latest(service).await {
                Ok(a) => break a,
                Err((heard, voters)) if started.elapsed() < patience => {
                    tracing::debug!(heard, voters, "no majority for the journal yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((heard, voters)) => return Err(Failure::NoMajority { heard, voters }),
            }
        };
        let record = match latest.and_then(|a| a.journal) {
            Some(found) if found.id == migration && !found.finished() => found.record,
            other => {
                tracing::info!(%migration, latest = ?other.map(|j| j.id), "the move is over already; nothing to take over");
                lease.release(false).await;
                return Ok(());
            }
        };
        tracing::info!(%migration, %service, phase = ?record.phase, predecessor = %j.coordinator, "taking over a move whose coordinator died");
        let (m, actions) = Migration::resume_as(
            record,
            augur_orchestrate::migration::Resumed::TakenOver {
                by: inner.node_name.clone(),
            },
            Duration::ZERO,
        );
        self.spawn_with(
            migration.to_owned(),
            Some(j.lease_id),
            Some(lease),
            m,
            actions,
            Instant::now(),
        );
        Ok(())
    }

    /// Why a migration (or a takeover) could not get its lease, if it could not.
    pub fn refusal(&self, id: &str) -> Option<Failure> {
        self.inner.refusals.read().get(id).cloned()
    }

    /// Whether a takeover of `id` is still asking for its lease.
    pub fn taking_over(&self, id: &str) -> bool {
        self.inner.takeovers.read().contains(id)
    }

    fn fleet(&self) -> Vec<PlacedInstance> {
        let local = self.inner.local.read().clone();
        fleet_instances(&self.inner.node_name, &local, &self.inner.mesh.members())
    }

    /// Checks a request against the catalog and the fleet, and starts the migration; returns its
    /// id at once (`id` given: a request seen before answers with its migration).
    pub fn request(&self, id: &str, req: MigrationRequest) -> Result<String, RequestError> {
        if self.inner.journals.read().contains_key(id) {
            return Ok(id.to_owned());
        }
        let plan = self.plan(id, &req)?;
        tracing::info!(migration = %id, service = %plan.service, from = %plan.old.node, to = %plan.new.node, strategy = ?plan.strategy, "migration requested");
        let m = Migration::new(plan);
        let base = Instant::now();
        self.spawn(id.to_owned(), None, m, Vec::new(), base);
        Ok(id.to_owned())
    }

    fn plan(&self, id: &str, req: &MigrationRequest) -> Result<Plan, RequestError> {
        let Some(entry) = self
            .inner
            .catalog
            .services()
            .into_iter()
            .find(|s| s.name == req.service)
        else {
            return Err(RequestError::NotFound(format!(
                "no service {:?} in the catalog; `augur services` lists them",
                req.service
            )));
        };
        // A move already under way, as this node's voter knows it: refuse with its holder now.
        // Planning against the fleet mid-move would otherwise refuse for a passing reason (the
        // standby already being promoted) and hide the real one.
        let key = augur_orchestrate::lease::wire::service_key(&req.service);
        if let Some(open) = self
            .inner
            .leases
            .view()
            .open
            .into_iter()
            .find(|o| o.key == key)
        {
            let holder = self
                .inner
                .mesh
                .members()
                .into_iter()
                .find(|m| m.peer_id == open.holder)
                .and_then(|m| m.node_name)
                .unwrap_or(open.holder);
            return Err(RequestError::Conflict(
                augur_orchestrate::lease::proposer::Failure::Busy {
                    service: req.service.clone(),
                    holder,
                }
                .to_string(),
            ));
        }
        let spec = entry.spec;
        let strategy = req.strategy.unwrap_or(spec.strategy);
        let fleet: Vec<PlacedInstance> = self
            .fleet()
            .into_iter()
            .filter(|i| i.service == req.service)
            .collect();
        let serving: Vec<&PlacedInstance> = fleet
            .iter()
            .filter(|i| i.role == Role::Serving && i.health != "draining")
            .collect();
        // An instance on a node declared dead is moved from where it was (the reactive path).
        let gone: Vec<PlacedInstance> = self
            .inner
            .mesh
            .members()
            .into_iter()
            .filter(|m| matches!(m.status, MemberStatus::Dead | MemberStatus::Left))
            .flat_map(|m| {
                let node = m.node_name.clone().unwrap_or_else(|| m.peer_id.clone());
                m.instances.into_iter().map(move |i| PlacedInstance {
                    health: "down".into(),
                    ..PlacedInstance::published(&node, &i)
                })
            })
            .filter(|i| i.service == req.service && i.role == Role::Serving)
            .collect();
        let old = match (&req.instance, &req.from) {
            (Some(inst), _) => serving
                .iter()
                .find(|i| i.id == *inst)
                .copied()
                .or_else(|| gone.iter().find(|i| i.id == *inst)),
            (None, Some(from)) => serving.iter().find(|i| i.node == *from).copied(),
            (None, None) => serving.iter().min_by(|a, b| (&a.slot, &a.id).cmp(&(&b.slot, &b.id))).copied(),
        }
        .ok_or_else(|| {
            RequestError::NotFound(format!(
                "no serving instance of {} matches (instance {:?}, from {:?}); `augur services` shows where they run",
                req.service, req.instance, req.from
            ))
        })?;
        let slot = if old.slot.is_empty() {
            old.id.clone()
        } else {
            old.slot.clone()
        };
        let entry_of = |i: &PlacedInstance, role: Role| Entry {
            instance: i.id.clone(),
            node: i.node.clone(),
            slot: if i.slot.is_empty() {
                i.id.clone()
            } else {
                i.slot.clone()
            },
            role,
            version: Some(i.version),
        };
        let old_entry = entry_of(old, Role::Serving);
        let (new_entry, standby_slot) = match strategy {
            Strategy::WarmStandby => {
                let standby = fleet
                    .iter()
                    .filter(|i| i.role == Role::Standby && i.health == "healthy")
                    .find(|i| req.to.as_ref().is_none_or(|to| i.node == *to))
                    .ok_or_else(|| {
                        RequestError::Conflict(format!(
                            "no healthy standby of {} to switch to{}; warm_standby needs `standbys` in the spec",
                            req.service,
                            req.to.as_ref().map(|t| format!(" on {t}")).unwrap_or_default()
                        ))
                    })?;
                let mut e = entry_of(standby, Role::Standby);
                let standby_slot = e.slot.clone();
                e.slot = slot.clone();
                (e, Some(standby_slot))
            }
            Strategy::Live | Strategy::BlueGreen => {
                let busy: std::collections::BTreeSet<&str> = fleet
                    .iter()
                    .filter(|i| i.role != Role::Retiring)
                    .map(|i| i.node.as_str())
                    .collect();
                let candidates = self.candidates();
                let target = match &req.to {
                    Some(to) => {
                        let c =
                            candidates
                                .iter()
                                .find(|c| c.node_name == *to)
                                .ok_or_else(|| {
                                    RequestError::NotFound(format!(
                                        "no member named {to}; `augur members` lists them"
                                    ))
                                })?;
                        if !c.alive {
                            return Err(RequestError::Conflict(format!("{to} is not alive")));
                        }
                        if *to == old.node && strategy == Strategy::Live {
                            return Err(RequestError::Invalid(format!(
                                "{to} already runs {}: a live move needs another node",
                                old.id
                            )));
                        }
                        to.clone()
                    }
                    None => {
                        let away: Vec<Candidate> = candidates
                            .iter()
                            .filter(|c| {
                                c.node_name != old.node
                                    && !(spec.placement.anti_affinity
                                        && busy.contains(c.node_name.as_str()))
                            })
                            .cloned()
                            .collect();
                        let mut one = spec.clone();
                        one.replicas = 1;
                        one.pin.clear();
                        place_with(&one, &away, &BTreeMap::new())
                            .into_iter()
                            .flatten()
                            .next()
                            .ok_or_else(|| {
                                RequestError::Conflict(format!(
                                    "no eligible node to move {} to (the source, nodes already running it and ineligible ones excluded)",
                                    old.id
                                ))
                            })?
                    }
                };
                let short: String = id
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(6)
                    .collect();
                let e = Entry {
                    instance: format!("{}-{slot}-m{}", req.service, short.to_ascii_lowercase()),
                    node: target,
                    slot: slot.clone(),
                    role: Role::Standby,
                    version: Some(entry.version),
                };
                (e, None)
            }
        };
        let base: Vec<Entry> = fleet
            .iter()
            .filter(|i| i.id != old.id && i.id != new_entry.instance && i.role != Role::Retiring)
            .map(|i| entry_of(i, i.role))
            .collect();
        let mut ids: Vec<&str> = base
            .iter()
            .chain([&old_entry, &new_entry])
            .map(|e| e.instance.as_str())
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(RequestError::Conflict(format!(
                "two instances of {} are both named {}; wait for placement to settle and ask again",
                req.service, new_entry.instance
            )));
        }
        let health = &spec.health;
        let checks = health.interval * (health.successes + health.failures + 2);
        let timeouts = Timeouts {
            healthy: Duration::from_secs(30) + checks,
            drain: self.inner.drain,
            soak: req.soak.unwrap_or(Timeouts::default().soak),
            window: req.window.unwrap_or(Timeouts::default().window),
            ..Timeouts::default()
        };
        Ok(Plan {
            id: id.to_owned(),
            service: req.service.clone(),
            strategy,
            old: old_entry,
            new: new_entry,
            base,
            standby_slot,
            timeouts,
        })
    }

    fn spawn(
        &self,
        id: String,
        lease_id: Option<u64>,
        m: Migration,
        first: Vec<Action>,
        base: Instant,
    ) {
        self.spawn_with(id, lease_id, None, m, first, base);
    }

    /// [`Migrations::spawn`], with the lease already held (a successor's).
    fn spawn_with(
        &self,
        id: String,
        lease_id: Option<u64>,
        lease: Option<Lease>,
        m: Migration,
        first: Vec<Action>,
        base: Instant,
    ) {
        let (tx_cancel, rx_cancel) = mpsc::channel(1);
        self.inner.cancels.write().insert(id.clone(), tx_cancel);
        let journal = Journal {
            id: id.clone(),
            created_unix_ms: self
                .inner
                .journals
                .read()
                .get(&id)
                .map_or_else(unix_ms, |j| j.created_unix_ms),
            lease_id,
            record: m.record().clone(),
        };
        self.inner.journals.write().insert(id.clone(), journal);
        let run = Run {
            this: self.clone(),
            id,
            m,
            lease,
            lease_id,
            last_entries: None,
            base,
            timers: BTreeMap::new(),
            last_health: None,
            window_base: None,
        };
        self.inner
            .tasks
            .spawn("migrate.migration", run.run(first, rx_cancel));
    }
}

/// One migration's task.
struct Run {
    this: Migrations,
    id: String,
    m: Migration,
    lease: Option<Lease>,
    lease_id: Option<u64>,
    /// The entries of the last assignment sent (the final one repeats them, marked finished).
    last_entries: Option<Vec<Entry>>,
    base: Instant,
    timers: BTreeMap<(Duration, u64), ()>,
    last_health: Option<bool>,
    /// `blue_green`'s window: this node's proxy counters (errors, requests) when it began.
    window_base: Option<(u64, u64)>,
}

/// What an action in flight comes back with: an event, and the lease when one was won.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (Event, Option<Lease>)> + Send>>;

impl Run {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.base)
    }

    async fn run(mut self, first: Vec<Action>, mut rx_cancel: mpsc::Receiver<String>) {
        let mut pending: futures::stream::FuturesUnordered<Pending> =
            futures::stream::FuturesUnordered::new();
        let mut health = tokio::time::interval(HEALTH_EVERY);
        let tasks = self.this.inner.tasks.clone();
        let mut actions = first;
        if actions.is_empty() {
            actions = self.m.on_event(Event::Start, self.now());
        }
        self.apply(actions, &mut pending).await;
        while !self.m.is_finished() {
            let next = self.timers.keys().next().copied();
            let lease_held = self.lease.is_some();
            let event = tokio::select! {
                () = tasks.stopped() => return,
                Some((ev, lease)) = futures::StreamExt::next(&mut pending), if !pending.is_empty() => {
                    if let Some(l) = lease {
                        self.lease_id = Some(l.lease_id);
                        self.lease = Some(l);
                    }
                    ev
                }
                () = async {
                    match next {
                        Some((at, _)) => tokio::time::sleep_until(self.base + at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let (at, id) = next.expect("a timer was due");
                    self.timers.remove(&(at, id));
                    Event::Timer(id)
                }
                () = async {
                    match self.lease.as_mut() {
                        Some(l) => l.lost().await,
                        None => std::future::pending().await,
                    }
                }, if lease_held => {
                    self.lease = None;
                    Event::LeaseLost
                }
                _ = health.tick() => match self.health().or_else(|| self.error_rate()) {
                    Some(e) => e,
                    None => continue,
                },
                reason = rx_cancel.recv() => match reason {
                    Some(reason) => Event::Cancel { reason },
                    None => continue,
                },
            };
            let actions = self.m.on_event(event, self.now());
            self.apply(actions, &mut pending).await;
        }
        self.this.inner.cancels.write().remove(&self.id);
    }

    /// `blue_green`, from its switch to the end of its window: the share of requests through this node's
    /// proxy that failed (a 5xx from the backend, or no answer), when it rose above
    /// [`ERROR_RATE`] over at least [`ERROR_RATE_MIN`] requests.
    fn error_rate(&mut self) -> Option<Event> {
        let r = self.m.record();
        // From the shift (green takes the traffic) to the end of the window.
        let in_window = r.plan.strategy == Strategy::BlueGreen
            && matches!(
                r.phase,
                Phase::Forward {
                    step: augur_orchestrate::migration::Step::Shift
                        | augur_orchestrate::migration::Step::Retire,
                    assigned: true
                }
            );
        if !in_window {
            self.window_base = None;
            return None;
        }
        let services = self.this.inner.services.as_ref()?;
        let now = {
            let proxies = services.proxies.lock();
            let (stats, _) = proxies.get(&r.plan.service)?;
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            (
                load(&stats.upstream_errors) + load(&stats.bad_gateway),
                load(&stats.requests),
            )
        };
        let base = *self.window_base.get_or_insert(now);
        let (errors, requests) = (now.0 - base.0, now.1 - base.1);
        if requests < ERROR_RATE_MIN {
            return None;
        }
        let ratio = errors as f64 / requests as f64;
        (ratio > ERROR_RATE).then_some(Event::ErrorRate { ratio })
    }

    /// The new instance's health as the fleet reports it, when it changed.
    fn health(&mut self) -> Option<Event> {
        let new = &self.m.record().plan.new;
        let healthy = self
            .this
            .fleet()
            .iter()
            .find(|i| i.id == new.instance && i.node == new.node)
            .map(|i| i.health == "healthy")?;
        if self.last_health == Some(healthy) {
            return None;
        }
        self.last_health = Some(healthy);
        Some(Event::Health {
            instance: new.instance.clone(),
            healthy,
        })
    }

    fn peers_of(&self, nodes: &[&str]) -> (Vec<PeerId>, Vec<PeerId>) {
        let mesh = &self.this.inner.mesh;
        let me = mesh.swarm.peer_id;
        let members = mesh.members();
        let peer = |node: &str| {
            if node == self.this.inner.node_name {
                return Some(me);
            }
            members
                .iter()
                .find(|m| m.node_name.as_deref() == Some(node))
                .and_then(|m| m.peer_id.parse().ok())
        };
        // A node the failure detector declared dead (or that left) cannot take anything: its
        // instances are gone with it, and it takes the newest assignment when it returns.
        let gone = |node: &str| {
            members.iter().any(|m| {
                m.node_name.as_deref() == Some(node)
                    && matches!(m.status, MemberStatus::Dead | MemberStatus::Left)
            })
        };
        let required: Vec<PeerId> = nodes
            .iter()
            .filter(|n| !gone(n))
            .filter_map(|n| peer(n))
            .collect();
        // A dead node is not waited for (its answer would only come as a timeout).
        let dead: Vec<PeerId> = members
            .iter()
            .filter(|m| matches!(m.status, MemberStatus::Dead | MemberStatus::Left))
            .filter_map(|m| m.peer_id.parse().ok())
            .collect();
        let mut all = mesh.swarm.admitted();
        all.retain(|p| !dead.contains(p));
        all.push(me);
        all.sort();
        all.dedup();
        (required, all)
    }

    async fn apply(
        &mut self,
        actions: Vec<Action>,
        pending: &mut futures::stream::FuturesUnordered<Pending>,
    ) {
        let inner = self.this.inner.clone();
        for a in actions {
            match a {
                Action::Journal(record) => {
                    let mut j = inner
                        .journals
                        .read()
                        .get(&self.id)
                        .cloned()
                        .expect("journaled at spawn");
                    let last = record.log.last().cloned();
                    j.record = *record;
                    j.lease_id = self.lease_id;
                    let bytes = serde_json::to_vec(&j).unwrap_or_default();
                    let store = inner.store.clone();
                    let id = self.id.clone();
                    let written =
                        tokio::task::spawn_blocking(move || store.put_migration(&id, &bytes)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::error!(migration = %self.id, "the journal cannot be written; the step goes ahead from memory");
                    }
                    inner.journals.write().insert(self.id.clone(), j.clone());
                    if let Some(l) = last {
                        let change = self.change(&j, &l.step, &l.note, None);
                        inner
                            .events
                            .emit(
                                EventKind::MigrationStep(change),
                                Some(j.record.plan.service.clone()),
                            )
                            .await;
                    }
                }
                Action::AcquireLease if self.lease.as_ref().and_then(Lease::epoch).is_some() => {
                    // A successor: it holds the lease already (it read the journal under it).
                    let epoch = self.lease.as_ref().and_then(Lease::epoch).unwrap_or(0);
                    pending.push(Box::pin(
                        async move { (Event::LeaseGranted { epoch }, None) },
                    ));
                }
                Action::AcquireLease => {
                    let plan = &self.m.record().plan;
                    let service = plan.service.clone();
                    let zone = inner
                        .mesh
                        .members()
                        .into_iter()
                        .find(|m| m.node_name.as_deref() == Some(plan.old.node.as_str()))
                        .and_then(|m| m.zone);
                    let note = format!(
                        "move {} from {} to {} ({})",
                        plan.old.instance, plan.old.node, plan.new.node, self.id
                    );
                    let leases = inner.leases.clone();
                    let this = self.this.clone();
                    let id = self.id.clone();
                    let me = inner.mesh.swarm.peer_id.to_string();
                    let lease_id = self.lease_id;
                    let duration = Duration::from_secs(600);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // Taking back our own lease after a restart: the mesh may still be forming
                    // (no majority yet), or a voter may still hold our old lease under another
                    // name: retry those for a while.
                    let resuming = lease_id.is_some();
                    inner.tasks.spawn("migrate.lease", async move {
                        let started = Instant::now();
                        let r = loop {
                            match leases
                                .acquire_as(&service, zone.as_deref(), &note, lease_id)
                                .await
                            {
                                Err(Failure::Busy { holder, .. })
                                    if holder == me && started.elapsed() < duration =>
                                {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                Err(Failure::NoMajority { .. })
                                    if resuming && started.elapsed() < RESUME_PATIENCE =>
                                {
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                                r => break r,
                            }
                        };
                        if let Err(f) = &r {
                            this.inner.refusals.write().insert(id, f.clone());
                        }
                        let _ = tx.send(r);
                    });
                    pending.push(Box::pin(rx.map(|r| match r {
                        Ok(Ok(lease)) => (
                            Event::LeaseGranted {
                                epoch: lease.epoch().unwrap_or(0),
                            },
                            Some(lease),
                        ),
                        Ok(Err(f)) => (
                            Event::LeaseRefused {
                                reason: f.to_string(),
                            },
                            None,
                        ),
                        Err(_) => (
                            Event::LeaseRefused {
                                reason: "the agent is stopping".into(),
                            },
                            None,
                        ),
                    })));
                }
                Action::ReleaseLease { moved } => {
                    if self.m.is_finished() {
                        self.announce_finished().await;
                    }
                    if let Some(l) = self.lease.take() {
                        l.release(moved).await;
                    }
                }
                Action::Assign { seq, entries } => {
                    let epoch = self
                        .lease
                        .as_ref()
                        .and_then(Lease::epoch)
                        .unwrap_or(self.m.record().epoch);
                    let service = self.m.record().plan.service.clone();
                    let plan = &self.m.record().plan;
                    let (required, all) =
                        self.peers_of(&[plan.old.node.as_str(), plan.new.node.as_str()]);
                    self.last_entries = Some(entries.clone());
                    let a = Assignment {
                        service,
                        epoch,
                        seq,
                        entries,
                        journal: Some(Box::new(self.move_journal())),
                    };
                    let leases = inner.leases.clone();
                    let local = inner.assignments.clone();
                    let voters = inner.leases.voters();
                    pending.push(Box::pin(async move {
                        let ev = async {
                            // Ours first: this node follows its own assignments too.
                            if let Err(e) = local.take(a.clone()) {
                                return Event::AssignFailed {
                                    seq,
                                    reason: format!("this node: {e}"),
                                };
                            }
                            let answers = leases.assign(&all, &a).await;
                            for p in &required {
                                match answers.iter().find(|(q, _)| q == p) {
                                    Some((_, Ok(()))) => {}
                                    Some((_, Err(e))) => {
                                        return Event::AssignFailed {
                                            seq,
                                            reason: format!("{p}: {e}"),
                                        };
                                    }
                                    None => {
                                        return Event::AssignFailed {
                                            seq,
                                            reason: format!("{p} is not reachable"),
                                        };
                                    }
                                }
                            }
                            // The journal travels with the assignment: a majority of the voters
                            // must hold it before the move goes on, so a successor reading any
                            // majority finds it.
                            let held = answers
                                .iter()
                                .filter(|(p, r)| r.is_ok() && voters.contains(&p.to_string()))
                                .count();
                            if !voters.is_empty() && held <= voters.len() / 2 {
                                return Event::AssignFailed {
                                    seq,
                                    reason: format!(
                                        "the journal reached {held} of {} lease voters; a majority must hold it",
                                        voters.len()
                                    ),
                                };
                            }
                            Event::Assigned { seq }
                        }
                        .await;
                        (ev, None)
                    }));
                }
                Action::Timer { at, id } => {
                    self.timers.insert((at, id), ());
                }
                Action::Finished(outcome) => {
                    let j = inner.journals.read().get(&self.id).cloned();
                    if let Some(j) = j {
                        let name = match &outcome {
                            Outcome::Completed => "completed",
                            Outcome::Refused { .. } => "refused",
                            Outcome::RolledBack { .. } => "rolled_back",
                            Outcome::Abandoned { .. } => "abandoned",
                        };
                        tracing::info!(migration = %self.id, outcome = ?outcome, "migration finished");
                        let change =
                            self.change(&j, "finished", &format!("{outcome:?}"), Some(name));
                        inner
                            .events
                            .emit(
                                EventKind::MigrationFinished(change),
                                Some(j.record.plan.service.clone()),
                            )
                            .await;
                    }
                    self.announce_finished().await;
                    if let Some(l) = self.lease.take() {
                        l.release(false).await;
                    }
                }
            }
        }
    }

    /// The journal as it travels with an assignment.
    fn move_journal(&self) -> MoveJournal {
        MoveJournal {
            id: self.id.clone(),
            coordinator: self.this.inner.mesh.swarm.peer_id.to_string(),
            lease_id: self.lease_id.unwrap_or(0),
            record: self.m.record().clone(),
        }
    }

    /// After the last step, the last assignment once more with the finished journal, so no node
    /// takes the move for an orphan to finish (best effort: one that missed it still finds the
    /// move's last assignment in force, and a successor's reading ends at once).
    async fn announce_finished(&mut self) {
        let (Some(entries), Some(epoch)) = (
            self.last_entries.take(),
            self.lease.as_ref().and_then(Lease::epoch),
        ) else {
            return;
        };
        let a = Assignment {
            service: self.m.record().plan.service.clone(),
            epoch,
            seq: self.m.record().seq + 1,
            entries,
            journal: Some(Box::new(self.move_journal())),
        };
        let inner = self.this.inner.clone();
        if let Err(e) = inner.assignments.take(a.clone()) {
            tracing::debug!(error = %e, "the finished move's assignment not taken here");
        }
        let (_, all) = self.peers_of(&[]);
        let _ = inner.leases.assign(&all, &a).await;
    }

    fn change(
        &self,
        j: &Journal,
        step: &str,
        note: &str,
        outcome: Option<&str>,
    ) -> MigrationChange {
        let p = &j.record.plan;
        MigrationChange {
            id: j.id.clone(),
            service: p.service.clone(),
            strategy: format!("{:?}", p.strategy).to_lowercase(),
            from: p.old.node.clone(),
            to: p.new.node.clone(),
            step: step.to_owned(),
            note: note.to_owned(),
            // Resuming, it holds no lease yet: the epoch in its record is its predecessor's.
            epoch: if matches!(j.record.phase, Phase::Resuming { .. }) {
                0
            } else {
                j.record.epoch
            },
            outcome: outcome.map(str::to_owned),
        }
    }
}

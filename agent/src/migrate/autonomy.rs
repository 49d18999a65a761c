//! The autonomous loop: every [`TICK`], this node's view of the fleet (members, their alarms and
//! instances, the unfinished moves in the journal it holds) goes through the
//! `augur_orchestrate::autonomy` machine; what it asks for is carried out here: the second
//! witness (this node's own evidence on a peer's alarm), moves (through [`Migrations`]: under a
//! lease from a majority of the voters), takeovers of orphaned moves, and its decisions published
//! as `autonomy.decision` fleet events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::leases::{Leases, TrendSource};
use augur_mesh::membership::{Member, MemberStatus};
use augur_mesh::{EventKind, Mesh, PeerId};
use augur_orchestrate::Machine as _;
use augur_orchestrate::autonomy::{
    self, Action, Autonomy, Case, Event, Mode, MoveOutcome, Observed, ObservedInstance, Report,
    Trigger, Unfinished,
};
use augur_orchestrate::migration::{Outcome, Phase, Role, Step};
use futures::StreamExt as _;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assignments::Assignments;
use super::executor::{MigrationRequest, Migrations, RequestError};
use crate::config::Config;
use crate::fleet::events::Emitter;
use crate::history::History;
use crate::models::ModelStore;
use crate::services::catalog::CatalogStore;

/// How often the fleet is looked at.
pub const TICK: Duration = Duration::from_millis(500);

/// A move seen going on (a step published by its coordinator) counts for this long.
const MOVING_FOR: Duration = Duration::from_secs(5);

/// What the loop reads and uses.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mesh: Mesh,
    pub leases: Leases,
    pub migrations: Migrations,
    pub assignments: Assignments,
    pub catalog: CatalogStore,
    pub models: ModelStore,
    pub config: watch::Receiver<Arc<Config>>,
    pub events: Emitter,
}

/// The cases this node considers, as the API shows them.
#[derive(Clone, Debug, Default)]
pub struct AutonomyView {
    inner: Arc<RwLock<Vec<Report>>>,
}

impl AutonomyView {
    pub fn cases(&self) -> Vec<Report> {
        self.inner.read().clone()
    }
}

/// The fleet's mode and each service's, from the catalog.
fn modes(catalog: &CatalogStore) -> (Mode, BTreeMap<String, Mode>) {
    let fleet = catalog.fleet().map_or(Mode::Act, |(_, d)| d.autonomy.mode);
    let services = catalog
        .services()
        .into_iter()
        .map(|s| (s.name, s.spec.autonomy))
        .collect();
    (fleet, services)
}

/// A member as the machine observes it.
fn observed(m: &Member) -> Observed {
    let health = m.health.clone().unwrap_or_default();
    Observed {
        peer_id: m.peer_id.clone(),
        node_name: m.node_name.clone().unwrap_or_else(|| m.peer_id.clone()),
        alive: matches!(m.status, MemberStatus::Alive),
        dead: matches!(m.status, MemberStatus::Dead | MemberStatus::Left),
        starved: health.starved,
        alarms: health
            .alarms
            .into_iter()
            .take(augur_mesh::values::MAX_ALARMS)
            .collect(),
        instances: m
            .instances
            .iter()
            .map(|i| ObservedInstance {
                id: i.id.clone(),
                service: i.service.clone(),
                slot: i.slot.clone().unwrap_or_else(|| i.id.clone()),
                serving: i.role.unwrap_or_default() == Role::Serving && i.health != "draining",
                healthy: i.health == "healthy",
                lease_epoch: i.lease_epoch,
            })
            .collect(),
    }
}

/// The moves in the journal this node holds (with the latest assignment of each service) that
/// are not finished.
fn unfinished(assignments: &Assignments) -> Vec<Unfinished> {
    assignments
        .all()
        .into_iter()
        .filter_map(|a| a.journal)
        .filter(|j| !j.finished())
        .map(|j| Unfinished {
            migration: j.id.clone(),
            service: j.record.plan.service.clone(),
            instance: j.record.plan.old.instance.clone(),
            from: j.record.plan.old.node.clone(),
            coordinator: j.coordinator.clone(),
        })
        .collect()
}

/// A move this node asked for, followed until it ends.
struct Asked {
    id: String,
    takeover: bool,
    started: bool,
}

/// Runs the loop until `stop`.
pub async fn run(setup: Setup, view: AutonomyView, stop: CancellationToken) {
    let me = setup.mesh.peer_id().to_string();
    let settings = |catalog: &CatalogStore| {
        let doc = catalog.fleet().map(|(_, d)| d.autonomy).unwrap_or_default();
        autonomy::Settings {
            dwell: doc.dwell,
            takeover: doc.takeover,
            ..autonomy::Settings::new(me.clone())
        }
    };
    let mut current = settings(&setup.catalog);
    let mut machine = Autonomy::new(current.clone());
    let base = Instant::now();
    let now = || Instant::now().saturating_duration_since(base);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = setup.mesh.subscribe();
    let mut steps: BTreeMap<String, Instant> = BTreeMap::new();
    let mut asked: BTreeMap<(String, String), Asked> = BTreeMap::new();
    let mut witnesses = futures::stream::FuturesUnordered::new();
    loop {
        let actions = tokio::select! {
            () = stop.cancelled() => return,
            ev = events.recv() => {
                match ev {
                    Ok(e) => {
                        if let EventKind::MigrationStep(c) = &e.kind
                            && e.origin != me
                        {
                            steps.insert(c.service.clone(), Instant::now());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
                continue;
            }
            Some(ev) = witnesses.next(), if !witnesses.is_empty() => machine.on_event(ev, now()),
            _ = tick.tick() => {
                let wanted = settings(&setup.catalog);
                if wanted != current {
                    // New settings from a new fleet document: the cases start afresh.
                    current = wanted;
                    machine = Autonomy::new(current.clone());
                }
                let mut out = Vec::new();
                // What became of the moves asked for.
                for ((service, instance), a) in &mut asked {
                    if let Some(outcome) = follow(&setup.migrations, a) {
                        out.extend(machine.on_event(
                            Event::Outcome {
                                service: service.clone(),
                                instance: instance.clone(),
                                outcome,
                            },
                            now(),
                        ));
                    }
                }
                asked.retain(|_, a| !a.id.is_empty());
                let members = setup.mesh.members();
                let (fleet_mode, service_modes) = modes(&setup.catalog);
                let observed: Vec<Observed> = members.iter().map(observed).collect();
                let cases = autonomy::cases(
                    &observed,
                    &unfinished(&setup.assignments),
                    fleet_mode,
                    &service_modes,
                );
                steps.retain(|_, t| t.elapsed() < MOVING_FOR);
                let mut moving: BTreeSet<String> = steps.keys().cloned().collect();
                // A move whose coordinator is alive is going on, step or not.
                for u in unfinished(&setup.assignments) {
                    if u.coordinator != me
                        && observed.iter().any(|m| m.peer_id == u.coordinator && m.alive)
                    {
                        moving.insert(u.service);
                    }
                }
                let candidates = observed
                    .iter()
                    .map(|m| autonomy::Member {
                        peer_id: m.peer_id.clone(),
                        alive: m.alive,
                        healthy: !m.starved && m.alarms.is_empty(),
                    })
                    .collect();
                out.extend(machine.on_event(
                    Event::Observe {
                        members: candidates,
                        cases,
                        moving,
                    },
                    now(),
                ));
                *view.inner.write() = machine.status();
                out
            }
        };
        for a in actions {
            match a {
                Action::Report(r) => {
                    tracing::info!(service = %r.case.service, instance = %r.case.instance, stage = ?r.stage, rank = r.rank, detail = %r.detail, "autonomy");
                    let resource = Some(r.case.instance.clone());
                    setup.events.emit(EventKind::Autonomy(r), resource).await;
                }
                Action::Witness { case, independent } => {
                    let s = setup.clone();
                    witnesses.push(async move {
                        let (agrees, evidence) = witness(&s, &case, independent).await;
                        Event::Witnessed {
                            service: case.service,
                            instance: case.instance,
                            agrees,
                            evidence,
                        }
                    });
                }
                Action::Migrate { case } => {
                    let id = format!("auto-{}-{:08x}", case.service, rand::random::<u32>());
                    let req = MigrationRequest {
                        service: case.service.clone(),
                        instance: Some(case.instance.clone()),
                        ..MigrationRequest::default()
                    };
                    let key = (case.service.clone(), case.instance.clone());
                    match setup.migrations.request(&id, req) {
                        Ok(id) => {
                            tracing::info!(migration = %id, service = %case.service, instance = %case.instance, trigger = case.trigger.name(), "autonomy: moving");
                            asked.insert(
                                key,
                                Asked {
                                    id,
                                    takeover: false,
                                    started: false,
                                },
                            );
                        }
                        Err(e) => {
                            let outcome = MoveOutcome::Waiting {
                                reason: request_error(&e),
                            };
                            let more = machine.on_event(
                                Event::Outcome {
                                    service: key.0,
                                    instance: key.1,
                                    outcome,
                                },
                                now(),
                            );
                            report_all(&setup.events, more).await;
                        }
                    }
                }
                Action::Resume { case } => {
                    let Trigger::Orphaned { migration, .. } = &case.trigger else {
                        continue;
                    };
                    let key = (case.service.clone(), case.instance.clone());
                    match setup.migrations.take_over(&case.service, migration) {
                        Ok(()) => {
                            asked.insert(
                                key,
                                Asked {
                                    id: migration.clone(),
                                    takeover: true,
                                    started: false,
                                },
                            );
                        }
                        Err(e) => {
                            let more = machine.on_event(
                                Event::Outcome {
                                    service: key.0,
                                    instance: key.1,
                                    outcome: MoveOutcome::Waiting {
                                        reason: request_error(&e),
                                    },
                                },
                                now(),
                            );
                            report_all(&setup.events, more).await;
                        }
                    }
                }
            }
        }
    }
}

async fn report_all(events: &Emitter, actions: Vec<Action>) {
    for a in actions {
        if let Action::Report(r) = a {
            let resource = Some(r.case.instance.clone());
            events.emit(EventKind::Autonomy(r), resource).await;
        }
    }
}

fn request_error(e: &RequestError) -> String {
    e.to_string()
}

/// What became of a move asked for, when something did (its id is cleared once it ended).
fn follow(migrations: &Migrations, a: &mut Asked) -> Option<MoveOutcome> {
    if let Some(f) = migrations.refusal(&a.id) {
        a.id.clear();
        return Some(MoveOutcome::Waiting {
            reason: f.to_string(),
        });
    }
    let Some(j) = migrations.get(&a.id) else {
        if a.takeover && !migrations.taking_over(&a.id) {
            // The takeover found the move over already.
            a.id.clear();
            return Some(MoveOutcome::Finished {
                completed: true,
                detail: "the move was over already".into(),
            });
        }
        return None;
    };
    match &j.record.phase {
        Phase::Finished(o) => {
            a.id.clear();
            Some(match o {
                Outcome::Completed => MoveOutcome::Finished {
                    completed: true,
                    detail: format!("{} completed", j.id),
                },
                Outcome::Refused { reason } => MoveOutcome::Waiting {
                    reason: reason.clone(),
                },
                Outcome::RolledBack { step, reason } => MoveOutcome::Finished {
                    completed: false,
                    detail: format!("{} rolled back at {}: {reason}", j.id, step.as_str()),
                },
                Outcome::Abandoned { step, reason } => MoveOutcome::Finished {
                    completed: false,
                    detail: format!("{} abandoned at {}: {reason}", j.id, step.as_str()),
                },
            })
        }
        Phase::Forward {
            step: Step::Lease, ..
        } => None,
        _ if !a.started => {
            a.started = true;
            Some(MoveOutcome::Started)
        }
        _ => None,
    }
}

/// This node's own evidence on `case`: the failing node's liveness and round trip in this
/// node's view, and (unless `independent` evidence is asked for) this node's own engine run on
/// the trend the failing node hands over. Agrees when any of them does.
async fn witness(s: &Setup, case: &Case, independent: bool) -> (bool, String) {
    let members = s.mesh.members();
    let Some(node) = members.iter().find(|m| m.peer_id == case.node) else {
        return (
            false,
            format!("{} is not in this node's view", case.node_name),
        );
    };
    let mut notes = Vec::new();
    if node.status == MemberStatus::Suspect {
        return (
            true,
            format!(
                "{} is suspect here (silent for {} ms)",
                case.node_name,
                node.last_heard_ms.unwrap_or(0)
            ),
        );
    }
    // Its round trip against the fleet's: well above the median of the others'.
    let mut others: Vec<f64> = members
        .iter()
        .filter(|m| m.peer_id != case.node && !m.is_self)
        .filter_map(|m| m.rtt_ms)
        .collect();
    others.sort_by(f64::total_cmp);
    if let (Some(rtt), Some(median)) = (node.rtt_ms, others.get(others.len() / 2).copied()) {
        if rtt > (3.0 * median).max(median + 50.0) {
            return (
                true,
                format!(
                    "its round trip here is {rtt:.1} ms against the fleet's median {median:.1} ms"
                ),
            );
        }
        notes.push(format!("round trip {rtt:.1} ms (median {median:.1})"));
    }
    if independent {
        notes.push("starved: its own telemetry is not evidence".into());
        return (false, notes.join("; "));
    }
    let Trigger::Predicted { resource, .. } = &case.trigger else {
        return (false, notes.join("; "));
    };
    let Ok(peer) = case.node.parse::<PeerId>() else {
        return (false, "not a peer id".into());
    };
    let trend =
        match tokio::time::timeout(Duration::from_secs(5), s.leases.trend(peer, resource)).await {
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) => {
                notes.push(format!("{} has no trend of {resource}", case.node_name));
                return (false, notes.join("; "));
            }
            Ok(Err(e)) => {
                notes.push(format!("no trend of {resource}: {e}"));
                return (false, notes.join("; "));
            }
            Err(_) => {
                notes.push(format!("no trend of {resource} within 5 s"));
                return (false, notes.join("; "));
            }
        };
    let cfg = s.config.borrow().clone();
    let models = s.models.clone();
    let points = trend.points.len();
    let judged = tokio::task::spawn_blocking(move || {
        let (engine_cfg, threshold) =
            crate::models::engine_config(&cfg, trend.resource_type.as_str());
        let mut engine = augur_models::engine::ResourceEngine::new(engine_cfg);
        if augur_proto::ResourceType::parse(&trend.resource_type)
            .is_ok_and(|t| crate::models::uses_trained(&cfg, &t))
        {
            engine.set_models(models.get(&trend.resource_type));
        }
        let mut last = None;
        for p in &trend.points {
            last = Some(engine.observe(p.ts_ms as f64 / 1000.0, &p.metrics));
        }
        last.map(|p| (p, threshold))
    })
    .await;
    match judged {
        Ok(Some((p, threshold))) if p.failure_probability >= threshold => (
            true,
            format!(
                "this node's engine on its {points}-sample trend of {resource}: {:.2} >= {threshold:.2} ({})",
                p.failure_probability,
                p.drivers.join(", ")
            ),
        ),
        Ok(Some((p, threshold))) => {
            notes.push(format!(
                "this node's engine on its {points}-sample trend of {resource}: {:.2} < {threshold:.2}",
                p.failure_probability
            ));
            (false, notes.join("; "))
        }
        _ => {
            notes.push(format!("an empty trend of {resource}"));
            (false, notes.join("; "))
        }
    }
}

/// This node's recent telemetry of a resource, for a peer's witness: the last
/// [`augur_mesh::act::MAX_TREND_POINTS`] samples, with at most
/// [`augur_mesh::act::MAX_TREND_METRICS`] metrics (those the engine has limits for first).
#[derive(Debug)]
pub struct Trends {
    pub history: History,
    pub config: watch::Receiver<Arc<Config>>,
}

impl TrendSource for Trends {
    fn trend(&self, resource_id: &str) -> Option<augur_mesh::act::Trend> {
        use augur_mesh::act::{
            MAX_TREND_METRICS, MAX_TREND_POINTS, MAX_TREND_VALUES, Trend, TrendPoint,
        };
        let id = augur_proto::ResourceId::parse(resource_id).ok()?;
        let window = self.history.window(&id);
        let last = window.last()?;
        let resource_type = last.resource_type.to_string();
        let (engine_cfg, _) =
            crate::models::engine_config(&self.config.borrow(), resource_type.as_str());
        let limited = |k: &str| engine_cfg.limits.iter().any(|l| k.starts_with(&l.prefix));
        // Every metric of the window (samples from several sources carry different ones).
        let all: BTreeSet<&String> = window.iter().flat_map(|s| s.metrics.keys()).collect();
        let mut names: Vec<&String> = all.into_iter().collect();
        // The metrics with limits (what a failure probability comes from) and no others when
        // there are some: the longest trend fits the message.
        names.sort_by_key(|k| (!limited(k), k.len(), *k));
        if names.first().is_some_and(|k| limited(k)) {
            names.retain(|k| limited(k));
        }
        names.truncate(MAX_TREND_METRICS);
        let names: BTreeSet<&str> = names.into_iter().map(String::as_str).collect();
        let points: Vec<TrendPoint> = window
            .iter()
            .rev()
            .map(|s| TrendPoint {
                ts_ms: s.ts.as_unix_ms(),
                metrics: s
                    .metrics
                    .iter()
                    .filter(|(k, v)| names.contains(k.as_str()) && v.is_finite())
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            })
            .filter(|p| !p.metrics.is_empty())
            .scan(0usize, |values, p| {
                *values += p.metrics.len();
                (*values <= MAX_TREND_VALUES).then_some(p)
            })
            .take(MAX_TREND_POINTS)
            .collect();
        let mut points = points;
        points.reverse();

        Some(Trend {
            resource_type,
            points,
        })
    }
}

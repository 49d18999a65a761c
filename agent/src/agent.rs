//! The agent's start-up: one task per concern on one tracker, in three groups stopped in order
//! (sources, stages, the writer), joined by named bounded channels; see docs/ARCHITECTURE.md.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use augur_mesh::{Clock, NodeIdentity, Tasks};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::collect;
use crate::config::{Config, Sources};
use crate::fleet::events::EventLog;
use crate::history::{self, History};
use crate::ingest::Ingestor;
use crate::logging::LogReload;
use crate::predict::{self, Predictions};
use crate::stats::Stats;

/// Batches of committed samples waiting for the prediction stage.
const PREDICT_QUEUE: usize = 64;

/// What `run` reports when the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("tasks did not stop within the shutdown grace period ({0:?})")]
    ShutdownTimeout(std::time::Duration),
}

/// Runs the agent until `shutdown` is cancelled (or SIGTERM/SIGINT arrives); SIGHUP reloads the
/// configuration from `sources`.
pub async fn run(
    cfg: Config,
    sources: Sources,
    log_reload: Option<LogReload>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    for name in Config::ignored_env_vars(&sources) {
        tracing::warn!(variable = %name, "ignoring an AUGUR_ environment variable that names no configuration section");
    }
    let node_name = cfg.node_name();
    let data_dir = cfg.data_dir();
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "cannot create data directory {}; set --data-dir (or data_dir) to a writable folder",
            data_dir.display()
        )
    })?;
    let identity = NodeIdentity::load_or_create(&data_dir)?;
    let history = History::open(&data_dir, cfg.history.cache.as_u64(), cfg.history.window)
        .with_context(|| {
            format!(
                "cannot open history in {} (is another augur agent using this data directory?)",
                data_dir.join(history::DB_FILE).display()
            )
        })?;
    let http_listener = tokio::net::TcpListener::bind(cfg.api.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for HTTP; set --http-addr",
                cfg.api.http_addr
            )
        })?;
    let grpc_listener = tokio::net::TcpListener::bind(cfg.api.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for gRPC; set --grpc-addr",
                cfg.api.grpc_addr
            )
        })?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    // One tracker for every task, in three groups stopped in this order: the sources (collectors,
    // APIs, signals, the mesh), then the stages (predictor, trainer, publisher, event pump), then
    // the writer, which writes what was queued before it returns.
    let tracker = TaskTracker::new();
    let writer_group = Tasks::new(tracker.clone(), CancellationToken::new(), Clock::system());
    let stage_group = writer_group.child();
    let source_group = stage_group.child();
    // What systemd's watchdog judges (crate::systemd): tasks that must keep beating.
    let liveness = crate::systemd::Liveness::new();

    // The named channels between them.
    let (tx_config, rx_config) = watch::channel(Arc::new(cfg.clone()));
    // Sources -> writer: batches to make durable.
    let (tx_writes, rx_writes) = mpsc::channel(cfg.ingest.queue_depth);
    // Writer -> predictor: batches now durable.
    let (tx_committed, rx_committed) = mpsc::channel(PREDICT_QUEUE);
    // Predictor -> publisher: predictions crossing their threshold, either way.
    let (tx_crossings, rx_crossings) = mpsc::channel(predict::CROSSINGS_QUEUE);

    let stats = Arc::new(Stats::new());
    let predictions = Predictions::default();
    let models = crate::models::ModelStore::open(&data_dir);
    let (trainer, mut trainer_task) = crate::models::trainer(
        history.clone(),
        models.clone(),
        rx_config.clone(),
        stats.clone(),
    );
    let ingestor = Ingestor::new(tx_writes, history.clone(), stats.clone(), rx_config.clone());
    let mesh =
        crate::fleet::mesh::start(&cfg, &identity, http_addr, grpc_addr, &source_group).await?;
    let events = EventLog::new(cfg.mesh.event_buffer);
    // The catalog checks operator signatures against the fleet keys the mesh trusts (or, without
    // a mesh, the configured ones).
    let trust = match &mesh {
        Some(m) => m.trust.clone(),
        None => augur_mesh::admission::Trust::new(crate::fleet::mesh::parse_fleet_keys(
            &cfg.mesh.fleet_keys,
        )?),
    };
    let catalog = crate::services::catalog::CatalogStore::open(
        &data_dir,
        trust,
        crate::sample::UnixMicros::now().as_unix_s(),
    );
    // The right to act: the voter's state and the fencing epochs, and the lease settings of the
    // fleet document as the catalog holds it.
    let acting = crate::migrate::store::ActStore::open(&data_dir).with_context(|| {
        format!(
            "cannot open {} (is another augur agent using this data directory?)",
            data_dir.join(crate::migrate::store::ACTING_FILE).display()
        )
    })?;
    let (tx_lease_config, rx_lease_config) = crate::migrate::config::channel(&catalog);
    let assignments = crate::migrate::assignments::Assignments::open(acting.clone());
    let leases = mesh.as_ref().map(|m| {
        augur_mesh::leases::Leases::start(
            m.swarm.clone(),
            Arc::new(acting.clone()),
            rx_lease_config.clone(),
            rand::random(),
            Some(Arc::new(assignments.clone())),
            &stage_group,
        )
    });
    let predict_stats = predict::PredictStats::default();
    let service_stats = Arc::new(crate::services::ServiceStats::default());
    let connections = api::Connections::default();
    stats.register_collector(Box::new(api::metrics::Scraped {
        history: history.clone(),
        started,
        predict: predict_stats.clone(),
        connections: connections.clone(),
        tasks: writer_group.health().clone(),
        mesh: mesh.clone(),
        catalog: Some(catalog.clone()),
        services: Some(service_stats.clone()),
        leases: leases.clone(),
    }));
    let emitter = crate::fleet::events::Emitter {
        mesh: mesh.clone(),
        log: events.clone(),
        node_name: node_name.to_string(),
    };
    // This node's instances (the runtime writes them; the API, proxies and migrations read).
    let local_instances: Arc<parking_lot::RwLock<Vec<crate::services::runtime::InstanceView>>> =
        Arc::default();
    let migrations = match (&mesh, &leases) {
        (Some(m), Some(l)) => Some(crate::migrate::executor::Migrations::start(
            crate::migrate::executor::Setup {
                store: acting.clone(),
                leases: l.clone(),
                mesh: m.clone(),
                assignments: assignments.clone(),
                catalog: catalog.clone(),
                local: local_instances.clone(),
                node_name: node_name.to_string(),
                events: emitter.clone(),
                drain: cfg.services.drain_grace,
                services: Some(service_stats.clone()),
            },
            &stage_group,
        )),
        _ => None,
    };
    // The autonomous loop, and the trends this node hands to peers' witnesses.
    let autonomy_view = crate::migrate::autonomy::AutonomyView::default();
    let autonomy = match (&mesh, &leases, &migrations) {
        (Some(m), Some(l), Some(mg)) => {
            l.set_trends(Arc::new(crate::migrate::autonomy::Trends {
                history: history.clone(),
                config: rx_config.clone(),
            }));
            Some(crate::migrate::autonomy::Setup {
                mesh: m.clone(),
                leases: l.clone(),
                migrations: mg.clone(),
                assignments: assignments.clone(),
                catalog: catalog.clone(),
                models: models.clone(),
                config: rx_config.clone(),
                events: emitter.clone(),
            })
        }
        _ => None,
    };
    let api_state = ApiState {
        node: Arc::new(api::NodeInfo {
            node_name: node_name.clone(),
            peer_id: identity.peer_id().to_string(),
            started,
            http_addr,
            grpc_addr,
        }),
        history: history.clone(),
        ingestor: ingestor.clone(),
        stats: stats.clone(),
        config: rx_config.clone(),
        predictions: predictions.clone(),
        models: models.clone(),
        trainer: Some(trainer.clone()),
        fleet: api::Fleet {
            mesh: mesh.clone(),
            events: events.clone(),
        },
        catalog: catalog.clone(),
        instances: local_instances.clone(),
        routes: Arc::default(),
        traffic_problems: Arc::default(),
        tasks: writer_group.health().clone(),
        leases: leases.clone(),
        migrations,
        autonomy: autonomy_view.clone(),
    };

    let mut writer_tasks = vec![writer_group.spawn(
        "history.writer",
        history::writer::run(
            history.clone(),
            rx_writes,
            tx_committed,
            rx_config.clone(),
            stats.clone(),
            liveness.register("history.writer", history::writer::BEAT_EVERY),
            writer_group.token(),
        ),
    )];

    let mut federation = None;
    let mut stage_tasks = vec![
        stage_group.spawn(
            "predict",
            predict::run(
                history.clone(),
                rx_committed,
                rx_config.clone(),
                predictions.clone(),
                models.clone(),
                predict::StageSetup {
                    snapshot: Some(data_dir.join(predict::SNAPSHOT_FILE)),
                    stats: predict_stats,
                    own: augur_proto::ResourceId::parse(node_name.as_str()).ok(),
                    tx_crossings: Some(tx_crossings),
                },
                stage_group.token(),
            ),
        ),
        stage_group.spawn("models.trainer", {
            // In a fleet, the trainer shares its models and merges the peers' (crate::federation).
            if let (Some(m), true) = (&mesh, cfg.models.federate) {
                let (tx_own, rx_own) = mpsc::channel(16);
                // The newest models it trained itself (a merge is its contributors', not its own),
                // whether or not a merge is in use.
                for own in models.own_all() {
                    if let Some(u) = crate::models::own_update(&own) {
                        let _ = tx_own.try_send(u);
                    }
                }
                trainer_task.share_on(tx_own);
                federation = Some(stage_group.spawn(
                    "models.federation",
                    crate::federation::run(
                        crate::federation::Federation {
                            mesh: m.clone(),
                            leases: leases.clone(),
                            trainer: trainer.clone(),
                            history: history.clone(),
                            models: models.clone(),
                            stats: stats.clone(),
                            emitter: emitter.clone(),
                        },
                        rx_own,
                        stage_group.token(),
                    ),
                ));
            }
            trainer_task.run(stage_group.token())
        }),
        stage_group.spawn(
            "fleet.publisher",
            crate::fleet::publisher::run(
                crate::fleet::publisher::Publisher {
                    mesh: mesh.clone(),
                    log: events.clone(),
                    predictions,
                    history: history.clone(),
                    models,
                    config: rx_config.clone(),
                    node_name: node_name.to_string(),
                },
                rx_crossings,
                stage_group.token(),
            ),
        ),
    ];
    stage_tasks.extend(federation);
    // Instances listen on the node's advertised address (loopback unless told otherwise) and
    // peers reach them there.
    let instance_ip = cfg
        .services
        .instance_ip
        .unwrap_or_else(|| cfg.mesh.advertise_addr.unwrap_or(cfg.mesh.gossip_addr).ip());
    stage_tasks.push(
        stage_group.spawn(
            "services.runtime",
            crate::services::runtime::Runtime {
                catalog: catalog.clone(),
                mesh: mesh.clone(),
                history: history.clone(),
                node_name: node_name.to_string(),
                pid_dir: data_dir.join("instances"),
                view: api_state.instances.clone(),
                instance_ip,
                events: emitter.clone(),
                stats: service_stats.clone(),
                drain: cfg.services.drain_grace,
                ingestor: Some(ingestor.clone()),
                assignments: Some(assignments.clone()),
                api_url: Some(format!("http://{http_addr}")),
                memory: None,
            }
            .run(stage_group.token()),
        ),
    );
    stage_tasks.push(
        stage_group.spawn(
            "services.traffic",
            crate::services::traffic::Traffic {
                catalog: catalog.clone(),
                mesh: mesh.clone(),
                local: api_state.instances.clone(),
                settings: cfg.services.clone(),
                events: emitter,
                stats: service_stats,
                routes: api_state.routes.clone(),
                problems: api_state.traffic_problems.clone(),
            }
            .run(stage_group.token()),
        ),
    );
    stage_tasks.push(stage_group.spawn(
        "leases.config",
        crate::migrate::config::follow(catalog.clone(), tx_lease_config, stage_group.token()),
    ));
    if let (Some(m), Some(l)) = (&mesh, &leases) {
        stage_tasks.push(stage_group.spawn(
            "migrate.assignments_sync",
            crate::migrate::assignments::sync(
                l.clone(),
                m.clone(),
                assignments.clone(),
                stage_group.token(),
            ),
        ));
    }
    if let Some(setup) = autonomy {
        stage_tasks.push(stage_group.spawn(
            "migrate.autonomy",
            crate::migrate::autonomy::run(setup, autonomy_view, stage_group.token()),
        ));
    }
    if let Some(m) = &mesh {
        stage_tasks.push(stage_group.spawn(
            "services.catalog_sync",
            crate::services::sync::run(m.clone(), catalog, stage_group.token()),
        ));
        stage_tasks.push(stage_group.spawn(
            "fleet.events",
            crate::fleet::events::pump(m.subscribe(), events.clone(), stage_group.token()),
        ));
    }

    let mut source_tasks = Vec::new();
    if cfg.collect.host {
        let extra: Option<collect::host::ExtraMetrics> = mesh.clone().map(|m| {
            Arc::new(move || {
                let peers = m.swarm_peers();
                let mut v = vec![("mesh_peers".to_owned(), peers as f64)];
                if let Some((p50, max, _)) = m.rtt_summary() {
                    v.push(("mesh_rtt_ms_p50".to_owned(), p50));
                    v.push(("mesh_rtt_ms_max".to_owned(), max));
                }
                v
            }) as collect::host::ExtraMetrics
        });
        source_tasks.push(source_group.spawn(
            "collect.host",
            collect::host::run(
                node_name.clone(),
                ingestor.clone(),
                rx_config.clone(),
                extra,
                liveness.register(
                    "collect.host",
                    cfg.interval_of(augur_proto::HOST_RESOURCE_TYPE),
                ),
                source_group.token(),
            ),
        ));
    }
    source_tasks.push(source_group.spawn(
        "collect.logs",
        collect::logs::run(
            node_name.clone(),
            ingestor.clone(),
            rx_config.clone(),
            source_group.token(),
        ),
    ));
    source_tasks.push(source_group.spawn(
        "collect.scrape",
        collect::scrape::run(ingestor.clone(), rx_config.clone(), source_group.token()),
    ));
    let max_connections = cfg.api.max_connections;
    let http_gate = api::conn::Gate::new(max_connections, connections.http.clone());
    let grpc_gate = api::conn::Gate::new(max_connections, connections.grpc.clone());
    let (http_state, http_token) = (api_state.clone(), source_group.token());
    source_tasks.push(source_group.spawn("api.http", async move {
        if let Err(e) = api::http::serve(http_listener, http_state, http_gate, http_token).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    }));
    let grpc_token = source_group.token();
    source_tasks.push(source_group.spawn("api.grpc", async move {
        if let Err(e) = api::grpc::serve(grpc_listener, api_state, grpc_gate, grpc_token).await {
            tracing::error!(error = %e, "gRPC API stopped");
        }
    }));
    // Handlers are installed before "ready" is logged, so no signal can find the default action.
    let handlers = Signals::install().context("cannot install signal handlers")?;
    source_tasks.push(source_group.spawn(
        "signals",
        signals(
            handlers,
            Reloader {
                sources,
                current: cfg.clone(),
                tx_config,
                log_reload,
                stats: stats.clone(),
                mesh: mesh.clone(),
            },
            shutdown.clone(),
            source_group.token(),
        ),
    ));
    drop(ingestor);

    match &mesh {
        Some(_) => tracing::info!(
            gossip_addr = %cfg.mesh.gossip_addr,
            p2p_addr = %cfg.mesh.p2p_addr,
            seeds = ?cfg.mesh.seeds,
            "mesh started"
        ),
        None => tracing::info!(
            "mesh off: no join token configured (augur fleet init, then augur fleet token)"
        ),
    }
    tracing::info!(
        node_name = %node_name,
        peer_id = %identity.peer_id(),
        data_dir = %data_dir.display(),
        http_addr = %http_addr,
        grpc_addr = %grpc_addr,
        "augur agent ready"
    );
    crate::systemd::ready(&format!("ready: HTTP {http_addr}, gRPC {grpc_addr}"));
    if let Some(timeout) = crate::systemd::watchdog_timeout() {
        tracing::info!(timeout = ?timeout, "systemd watchdog on: pinging every half timeout while the agent's tasks are alive");
        source_tasks.push(source_group.spawn(
            "systemd.watchdog",
            crate::systemd::watchdog(
                liveness.clone(),
                writer_group.health().clone(),
                timeout,
                source_group.token(),
                crate::systemd::ping,
            ),
        ));
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    crate::systemd::stopping();
    if let Some(m) = &mesh {
        // Members see this node leave rather than die.
        m.leave(cfg.mesh.gossip_interval * 4).await;
    }
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    let mut in_time = true;
    for (group, handles) in [
        (&source_group, &mut source_tasks),
        (&stage_group, &mut stage_tasks),
        (&writer_group, &mut writer_tasks),
    ] {
        group.stop();
        in_time &= tokio::time::timeout_at(deadline, futures::future::join_all(handles.drain(..)))
            .await
            .is_ok();
    }
    tracker.close();
    in_time &= tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_ok();
    if !in_time {
        return Err(AgentError::ShutdownTimeout(cfg.shutdown_grace).into());
    }
    tracing::info!("stopped");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM/SIGINT cancel `shutdown`; SIGHUP re-reads the configuration and applies what can change
/// without a restart, naming what cannot.
/// What SIGHUP reloads, and where the new configuration goes.
struct Reloader {
    sources: Sources,
    current: Config,
    tx_config: watch::Sender<Arc<Config>>,
    log_reload: Option<LogReload>,
    stats: Arc<Stats>,
    /// The mesh's trusted fleet keys change on reload.
    mesh: Option<augur_mesh::Mesh>,
}

async fn signals(
    Signals {
        mut term,
        mut int,
        mut hup,
    }: Signals,
    Reloader {
        sources,
        mut current,
        tx_config,
        log_reload,
        stats,
        mesh,
    }: Reloader,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.cancel(); }
            _ = int.recv() => { tracing::info!("SIGINT"); shutdown.cancel(); }
            _ = hup.recv() => {
                // RELOADING=1 now, READY=1 when this arm ends, whether the reload was taken or not.
                let _reloaded = crate::systemd::reloading();
                match Config::load(&sources) {
                    Ok(new) => {
                        // Counted first: whoever reads a log line of this reload finds it counted.
                        stats.reload(true);
                        let fixed = current.restart_only_changes(&new);
                        if !fixed.is_empty() {
                            tracing::warn!(settings = ?fixed, "these settings changed but take effect only after a restart");
                        }
                        if let Some(r) = &log_reload
                            && new.log.level != current.log.level
                        {
                            r.set_level(&new.log.level);
                        }
                        if let Some(m) = &mesh {
                            match crate::fleet::mesh::reload_fleet_keys(m, &new.mesh.fleet_keys) {
                                Ok(true) => tracing::info!(keys = new.mesh.fleet_keys.len(), "trusted fleet keys replaced; peers no key admits are disconnected"),
                                Ok(false) => {}
                                Err(e) => tracing::error!(error = %e, "mesh.fleet_keys not applied"),
                            }
                        }
                        tracing::info!("configuration reloaded");
                        current = new.clone();
                        tx_config.send_replace(Arc::new(new));
                    }
                    Err(e) => {
                        stats.reload(false);
                        tracing::error!(error = %e, "reload refused; the running configuration is unchanged");
                    }
                }
            }
        }
    }
}

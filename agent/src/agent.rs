//! The agent's start-up: one task per concern, one shutdown token, bounded channels between them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use augur_mesh::NodeIdentity;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::collect;
use crate::config::{Config, Sources};
use crate::history::{self, History};
use crate::ingest::Ingestor;
use crate::logging::LogReload;
use crate::predict::{self, Predictions};

/// Batches of committed samples waiting for the prediction stage.
const PREDICT_QUEUE: usize = 64;
use crate::stats::Stats;

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

    let stats = Arc::new(Stats::new());
    let (tx_config, rx_config) = watch::channel(Arc::new(cfg.clone()));
    let (tx_writes, rx_writes) = mpsc::channel(cfg.ingest.queue_depth);
    let (tx_committed, rx_committed) = mpsc::channel(PREDICT_QUEUE);
    let predictions = Predictions::default();
    let models = crate::models::ModelStore::open(&data_dir);
    let (trainer, trainer_thread) = crate::models::spawn_trainer(
        history.clone(),
        models.clone(),
        rx_config.clone(),
        stats.clone(),
    )
    .context("cannot start the model trainer thread")?;
    let ingestor = Ingestor::new(tx_writes, history.clone(), stats.clone(), rx_config.clone());
    let mesh = crate::fleet::mesh::start(&cfg, &identity, http_addr, grpc_addr).await?;
    let events = crate::fleet::events::EventLog::new(cfg.mesh.event_buffer);
    let api_state = ApiState {
        node_name: node_name.clone(),
        peer_id: identity.peer_id().to_string(),
        started,
        history: history.clone(),
        ingestor: ingestor.clone(),
        stats: stats.clone(),
        config: rx_config.clone(),
        http_addr,
        grpc_addr,
        predictions: predictions.clone(),
        models: models.clone(),
        trainer: Some(trainer),
        mesh: mesh.clone(),
        events: events.clone(),
        connections: api::Connections::default(),
        predict_stats: predict::PredictStats::default(),
    };

    // The writer stops last: it drains what the others queued.
    let writer_token = CancellationToken::new();
    let predictor = predict::spawn(
        history.clone(),
        rx_committed,
        rx_config.clone(),
        predictions,
        models,
        predict::StageSetup {
            snapshot: Some(data_dir.join(predict::SNAPSHOT_FILE)),
            stats: api_state.predict_stats.clone(),
            own: augur_proto::ResourceId::parse(node_name.as_str()).ok(),
        },
    );
    let writer = tokio::spawn(history::writer::run(
        history.clone(),
        rx_writes,
        tx_committed,
        rx_config.clone(),
        stats.clone(),
        writer_token.clone(),
    ));

    let tasks = TaskTracker::new();
    if let Some(m) = &mesh {
        crate::fleet::events::spawn_pump(m, events.clone(), shutdown.child_token());
    }
    crate::fleet::publisher::spawn_publisher(
        mesh.clone(),
        events.clone(),
        api_state.predictions.clone(),
        history.clone(),
        api_state.models.clone(),
        rx_config.clone(),
        node_name.to_string(),
        shutdown.child_token(),
    );
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
        tasks.spawn(collect::host::run(
            node_name.clone(),
            ingestor.clone(),
            rx_config.clone(),
            extra,
            shutdown.child_token(),
        ));
    }
    tasks.spawn(collect::logs::run(
        node_name.clone(),
        ingestor.clone(),
        rx_config.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(collect::scrape::run(
        ingestor.clone(),
        rx_config.clone(),
        shutdown.child_token(),
    ));
    let http_token = shutdown.child_token();
    let http_state = api_state.clone();
    let max_connections = cfg.api.max_connections;
    let http_gate = api::conn::Gate::new(max_connections, api_state.connections.http.clone());
    let grpc_gate = api::conn::Gate::new(max_connections, api_state.connections.grpc.clone());
    tasks.spawn(async move {
        if let Err(e) = api::http::serve(http_listener, http_state, http_gate, http_token).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    let grpc_token = shutdown.child_token();
    tasks.spawn(async move {
        if let Err(e) = api::grpc::serve(grpc_listener, api_state, grpc_gate, grpc_token).await {
            tracing::error!(error = %e, "gRPC API stopped");
        }
    });
    // Handlers are installed before "ready" is logged, so no signal can find the default action.
    let handlers = Signals::install().context("cannot install signal handlers")?;
    tasks.spawn(signals(
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
    ));
    tasks.close();
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

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    if let Some(m) = &mesh {
        // Members see this node leave rather than die.
        m.leave(cfg.mesh.gossip_interval * 4).await;
    }
    let grace = cfg.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let stopped = tokio::time::timeout_at(deadline, tasks.wait()).await;
    writer_token.cancel();
    let drained = tokio::time::timeout_at(deadline, writer).await;
    let predicted = tokio::time::timeout_at(deadline, predictor).await;
    if stopped.is_err() || drained.is_err() || predicted.is_err() {
        return Err(AgentError::ShutdownTimeout(grace).into());
    }
    // Every trainer handle was in the API state, dropped with the API tasks: the thread ends after
    // the training it may be running.
    let trained = tokio::time::timeout_at(
        deadline,
        tokio::task::spawn_blocking(move || trainer_thread.join()),
    )
    .await;
    if trained.is_err() {
        return Err(AgentError::ShutdownTimeout(grace).into());
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
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.cancel(); return; }
            _ = int.recv() => { tracing::info!("SIGINT"); shutdown.cancel(); return; }
            _ = hup.recv() => {
                match Config::load(&sources) {
                    Ok(new) => {
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
                        stats.reload(true);
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

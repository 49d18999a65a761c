//! The `augur` command line: the agent itself and the commands that read a running agent's API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

pub mod client;
pub mod doctor;
pub mod events;
pub mod fleet;
pub mod migrate;
pub mod service;

use client::{Agent, TRAIN_TIMEOUT};

use crate::api::Status;
use crate::api::answers::{MemberList, ModelList, ResourceList, TelemetryPage, TrainAnswer};
use crate::predict::PredictionView;
use crate::sample::UnixMicros;

use crate::config::{ApiOverrides, Config, LogFormat, LogOverrides, Overrides, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "augur",
    version,
    about = "Predicts failures on this host and moves work away before they happen"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (works with no configuration file).
    Agent(AgentArgs),
    /// Check a configuration file and print the effective configuration.
    ValidateConfig {
        file: PathBuf,
        /// Print the effective configuration as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this host: configuration, data directory and disk, ports, the agent, its join token
    /// and fleet keys, its seeds (UDP and QUIC) and its clock against its peers; each problem with
    /// what to do. Takes the agent's flags (and reads /etc/augur/augur.toml when no --config is
    /// given and it exists). Exits 1 when a check fails.
    Doctor {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a running agent's status.
    Status(ClientArgs),
    /// List the resources a running agent tracks.
    Resources(ClientArgs),
    /// Run the prediction engine over a telemetry file (JSON lines), writing one prediction per sample.
    Replay {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// The agent's configuration file: each resource type's horizon, limits, anomaly learning
        /// and model choice, and the retraining interval, as the agent with it would run (the
        /// defaults without it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Retrain the models every this much of the data's time (from the samples before that
        /// point only); the configuration's `models.retrain_interval` by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        retrain_every: Option<std::time::Duration>,
        /// Use the online statistical models only (no trained models).
        #[arg(long)]
        no_train: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate augur's detectors and baselines on public labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Show a resource's latest failure prediction.
    Predict {
        /// The resource id.
        resource: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a resource's forecast over the horizon, metric by metric: the path the failure
    /// probability is read from, with its 90 % band and the limits (what the dashboard plots).
    Forecast {
        /// The resource id.
        resource: String,
        /// Also list metrics without a limit.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a fleet key and issue join tokens (admission to the mesh).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// List the fleet's members as this agent sees them.
    Members(ClientArgs),
    /// Change the fleet's service catalog with an operator credential (docs/SERVICES.md).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List the fleet's services (the catalog as this agent holds it).
    Services(ClientArgs),
    /// Show the lease settings in force, the leases open in this node's voter, and those it holds.
    Leases(ClientArgs),
    /// Move a service's instance to another node (live, warm_standby or blue_green), under a
    /// lease from a majority of the lease voters; needs the operator credential.
    Migrate {
        service: String,
        /// The instance to move (default: the serving one on --from, or the service's first).
        #[arg(long)]
        instance: Option<String>,
        /// The node to move it off.
        #[arg(long)]
        from: Option<String>,
        /// The node to move it to (default: the best placement score).
        #[arg(long)]
        to: Option<String>,
        /// live, warm_standby or blue_green (default: the spec's).
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<augur_orchestrate::spec::Strategy>,
        /// blue_green: how long the new instance must stay healthy before the switch.
        #[arg(long, value_parser = humantime::parse_duration)]
        soak: Option<std::time::Duration>,
        /// blue_green: how long the old instance is kept for a rollback after the switch.
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<std::time::Duration>,
        /// Wait until it ends, showing each step; fails unless it completed.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "operator.cred")]
        credential: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what this node's autonomy considers: each case (a resource predicted to fail, a
    /// node declared dead, an orphaned move), this node's rank in its election and its stage.
    Autonomy(ClientArgs),
    /// Start a local fleet on loopback with a sample service under load, inject a fault, and
    /// show augur moving the work away (no set-up; about two minutes)
    Demo {
        /// memory_leak, disk_fill, error_ramp, latency_creep, cpu_hog (predictable),
        /// sudden_crash (not predictable: the node dies), none (a healthy control run).
        #[arg(long, value_enum, default_value = "memory_leak")]
        fault: crate::demo::fault::Fault,
        /// Agents in the fleet (3 to 5).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// live, warm_standby or blue_green (default: warm_standby for sudden_crash, live
        /// otherwise).
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<augur_orchestrate::spec::Strategy>,
        /// Compresses the fault's course (90 s at 1) and the telemetry's clock with it; the
        /// fleet's reactions stay real time (docs/DEMO.md).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Seeds the telemetry's noise and the crash's moment.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// How long a `none` run watches (default: one fault course).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Requests a second through a proxy.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Keep the fleet's folder (logs and data) and print where it is.
        #[arg(long)]
        keep: bool,
        /// Print one JSON object at the end instead of the story.
        #[arg(long)]
        json: bool,
    },
    /// The demo's sample HTTP service (run by the agents as a service instance).
    #[command(hide = true)]
    DemoService,
    /// List the migrations this agent coordinated, or show one with its steps.
    Migrations {
        id: Option<String>,
        /// Cancel it: it rolls back from the step it is at (needs the operator credential).
        #[arg(long, requires = "id")]
        cancel: bool,
        #[arg(long, default_value = "operator.cred")]
        credential: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show fleet events (membership changes, predictions crossing thresholds).
    Events {
        /// Keep the connection open and print events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only topics starting with this (member, prediction, member.dead, ...); repeatable.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Resume after this event index (from an earlier --json output).
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the trained models of each resource type (`models train` trains them now).
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a resource's stored telemetry.
    Telemetry {
        /// The resource id (the host's is the node name).
        resource: String,
        /// Start: an RFC 3339 time or a duration ago (default 10m).
        #[arg(long, default_value = "10m")]
        since: String,
        /// End: an RFC 3339 time or a duration ago (default now).
        #[arg(long)]
        until: Option<String>,
        /// Most samples to show.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Check a spec file, sign it with the next version and send it to the agent.
    Apply {
        file: PathBuf,
        /// The operator credential (`augur fleet operator`).
        #[arg(long, default_value = "operator.cred")]
        credential: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a service from the catalog.
    Delete {
        name: String,
        #[arg(long, default_value = "operator.cred")]
        credential: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create a new fleet key (keep it off the fleet's hosts) and print its public key.
    Init {
        /// Where to write the fleet key.
        #[arg(long, default_value = "fleet.key")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Issue a join token for a node.
    Token {
        /// The fleet key file from `augur fleet init`.
        #[arg(long, default_value = "fleet.key")]
        fleet_key: PathBuf,
        /// The node's PeerId (`augur fleet peer-id` on the node prints it).
        #[arg(long, conflicts_with = "data_dir")]
        peer_id: Option<String>,
        /// Or the node's data directory, to read (or create) its key here.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How long the token is valid.
        #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Create an operator credential: a key of its own and the fleet key's grant of the operator
    /// role (changing the service catalog). Keep it off the fleet's hosts.
    Operator {
        /// The fleet key file from `augur fleet init`.
        #[arg(long, default_value = "fleet.key")]
        fleet_key: PathBuf,
        /// Where to write the credential (mode 0600; never overwritten).
        #[arg(long, default_value = "operator.cred")]
        out: PathBuf,
        /// How long the credential is valid.
        #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Check a fleet document (lease voters, disruption budget; docs/SERVICES.md), sign it with
    /// the next version and send it to the agent, which spreads it to the fleet.
    Apply {
        file: PathBuf,
        /// The operator credential (`augur fleet operator`).
        #[arg(long, default_value = "operator.cred")]
        credential: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print this node's PeerId (creating its key in the data directory if needed).
    PeerId {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Train every resource type's models now, from the durable history.
    Train,
    /// Use a kept version of a type's models (the one in use when none is given) and keep it:
    /// no training or merge from the fleet replaces it until `unpin`.
    Pin {
        resource_type: String,
        version: Option<u64>,
    },
    /// Go back to the newest kept version older than the one in use, pinned.
    Rollback { resource_type: String },
    /// Let trainings and merges replace the type's models again.
    Unpin { resource_type: String },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Federated learning on SMD, each machine a node: a node's forecaster trained alone, merged
    /// over rounds with the others' (trimmed mean), and trained centrally on all nodes' data, each
    /// judged on every node's test data; update bytes and CPU per round
    Federation {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Federated learned limits on the failure-injection replay, its history split across three
    /// nodes so that each sees only some failure modes (the queue's and the CPU's limits are not
    /// configured): each node's models alone, with its peers' learned limits, and trained
    /// centrally, judged on other traces
    FederationFailures {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Resources per scenario (8 scenarios).
        #[arg(long, default_value_t = 12)]
        per_scenario: usize,
        /// Length of each trace in seconds.
        #[arg(long, default_value_t = 5400)]
        seconds: usize,
        /// `classic` or `wild`.
        #[arg(long, default_value = "classic", value_parser = parse_family)]
        family: augur_models::eval::failures::Family,
        #[arg(long)]
        json: bool,
    },
    /// Forecasting on NAB's series: the burn MLP against Holt.
    Forecast {
        /// The NAB folder.
        #[arg(long, env = "NAB_DATA")]
        data: PathBuf,
        /// Samples ahead.
        #[arg(long, default_value_t = 10)]
        horizon: usize,
        /// Training epochs over each file's first half.
        #[arg(long, default_value_t = 8)]
        epochs: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// The Server Machine Dataset: every detector, composite F1 without point adjustment.
    Smd {
        /// The SMD folder (with train/, test/, test_label/).
        #[arg(long, env = "SMD_DATA")]
        data: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// The failure-injection replay: seeded synthetic failures and benign look-alikes, augur against
    /// a static threshold and predict_linear.
    Failures {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Resources per scenario (8 scenarios).
        #[arg(long, default_value_t = 12)]
        per_scenario: usize,
        /// Length of each trace in seconds (failing ones end at the failure).
        #[arg(long, default_value_t = 5400)]
        seconds: usize,
        /// The scenarios: `classic` (the engine's settings were chosen on its seed 1007) or `wild`
        /// (other habits: heavy-tailed noise, cycles, deploys, missing samples, failures that
        /// step, accelerate or peg; nothing was tuned on it).
        #[arg(long, default_value = "classic", value_parser = parse_family)]
        family: augur_models::eval::failures::Family,
        /// The forecaster's trend damping per sample for augur's rows (1: Holt's undamped line).
        #[arg(long, default_value_t = augur_models::engine::HOLT_PHI)]
        damping: f64,
        /// The forecaster's residual clipping for augur's rows, in standard deviations (0: none).
        #[arg(long, default_value_t = augur_models::engine::HOLT_CLIP)]
        clip: f64,
        /// Spreads past which augur's forecasts discount a trend by how much of such trends has
        /// come true on the metric (0: never).
        #[arg(long, default_value_t = augur_models::engine::DEFAULT_TREND_CREDIBILITY)]
        trend_credibility: f64,
        /// A limited metric whose limit no detector is told (`queue_len`, `cpu_util`,
        /// `error_rate`, ...): its failures still happen, and the trained models' history holds
        /// one of them, to show a failure mode learned from its first labelled occurrence.
        #[arg(long)]
        withhold: Option<String>,
        /// How long every detector's raised alarm stays raised after its last alarming sample
        /// (seconds; the agent's default).
        #[arg(long, default_value_t = augur_models::alarm::KEEP_FIRING_S)]
        keep_firing: f64,
        #[arg(long)]
        json: bool,
    },
    /// The Numenta Anomaly Benchmark: every detector, NAB's scoring rules, thresholds tuned per profile.
    Nab {
        /// The NAB folder (with data/, labels/, and optionally results/ and config/).
        #[arg(long, env = "NAB_DATA")]
        data: PathBuf,
        /// Seed of the detectors' randomness.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Other settings for augur's novelty detectors, e.g. "shape_rho=0.04,rest_share=0.1"
        /// (names: value_rho, value_alarm, shape_window_div, shape_rho, shape_rate_weight,
        /// shape_alarm, rest_share, max_shapes, min_learning).
        #[arg(long, default_value = "")]
        novelty: String,
        /// The agent's configuration for the replay row (each file is replayed as a resource of
        /// type `nab`): the defaults without it, as `augur replay` has them.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The replay row without trained models (`augur replay --no-train`).
        #[arg(long)]
        no_train: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (defaults are embedded; see packaging/augur.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    #[arg(long)]
    pub node_name: Option<String>,
    /// human or json.
    #[arg(long, value_parser = parse_format)]
    pub log_format: Option<LogFormat>,
    /// A tracing filter such as info or augur_agent=debug.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Gossip address (HOST:PORT) of a fleet member to join through; repeatable.
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// UDP address of membership gossip.
    #[arg(long)]
    pub gossip_addr: Option<SocketAddr>,
    /// UDP address of the libp2p QUIC endpoint.
    #[arg(long)]
    pub p2p_addr: Option<SocketAddr>,
    /// This node's join token (augur-join:...).
    #[arg(long)]
    pub join_token: Option<String>,
    /// A trusted fleet public key (augur-fleet-pub:...); repeatable.
    #[arg(long = "fleet-key")]
    pub fleet_keys: Vec<String>,
}

fn parse_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?}: expected human or json")),
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The agent's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:7070", global = true)]
    pub api: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl AgentArgs {
    pub fn sources(&self) -> Sources {
        let api = (self.http_addr.is_some() || self.grpc_addr.is_some()).then_some(ApiOverrides {
            http_addr: self.http_addr,
            grpc_addr: self.grpc_addr,
        });
        let log = (self.log_format.is_some() || self.log_level.is_some()).then(|| LogOverrides {
            format: self.log_format,
            level: self.log_level.clone(),
        });
        Sources {
            file: self.config.clone(),
            env: None,
            overrides: Overrides {
                node_name: self.node_name.clone(),
                data_dir: self.data_dir.clone(),
                api,
                log,
                mesh: mesh_overrides(self),
            },
        }
    }
}

fn mesh_overrides(a: &AgentArgs) -> Option<crate::config::MeshOverrides> {
    let o = crate::config::MeshOverrides {
        gossip_addr: a.gossip_addr,
        p2p_addr: a.p2p_addr,
        seeds: (!a.seeds.is_empty()).then(|| a.seeds.clone()),
        join_token: a.join_token.clone(),
        fleet_keys: (!a.fleet_keys.is_empty()).then(|| a.fleet_keys.clone()),
    };
    let any = o.gossip_addr.is_some()
        || o.p2p_addr.is_some()
        || o.seeds.is_some()
        || o.join_token.is_some()
        || o.fleet_keys.is_some();
    any.then_some(o)
}

fn parse_family(s: &str) -> Result<augur_models::eval::failures::Family, String> {
    augur_models::eval::failures::Family::parse(s)
        .ok_or_else(|| format!("{s:?} is not a family of scenarios (classic, wild)"))
}

/// The agent's configuration from `file`, or the defaults.
fn read_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Config::from_toml(&text)
                .with_context(|| format!("{} is not a valid augur configuration", file.display()))
        }
        None => Ok(Config::default()),
    }
}

/// Runs a non-agent command.
pub async fn run_client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Agent(_) => bail!("the agent is started by main"),
        Command::Replay {
            input,
            output,
            config,
            retrain_every,
            no_train,
            json,
        } => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut options =
                crate::replay::ReplayOptions::for_config(read_config(config.as_deref())?);
            if let Some(every) = retrain_every {
                options.schedule = Some(crate::models::Schedule::every(every));
            }
            if no_train {
                options.schedule = None;
            }
            let s = tokio::task::spawn_blocking(move || {
                crate::replay::replay_with(&input, &output, progress, &options)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "{} samples, {} predictions, {} rejected, {} resources, {} trainings",
                    s.samples, s.predictions, s.rejected, s.resources, s.trainings
                );
            }
            Ok(())
        }
        Command::Eval(EvalCommand::Failures {
            seed,
            per_scenario,
            seconds,
            family,
            damping,
            clip,
            trend_credibility,
            withhold,
            keep_firing,
            json,
        }) => {
            let run = crate::eval::FailureRun {
                keep_firing_s: keep_firing,
                forecaster: augur_models::eval::failures::Forecaster {
                    damping,
                    clip,
                    credibility: trend_credibility,
                },
                family,
                seed,
                per_scenario,
                seconds,
                withhold,
            };
            tokio::task::spawn_blocking(move || crate::eval::failures(&run, json)).await?
        }
        Command::Eval(EvalCommand::Forecast {
            data,
            horizon,
            epochs,
            seed,
            json,
        }) => {
            tokio::task::spawn_blocking(move || {
                crate::eval::forecast(&data, horizon, epochs, seed, json)
            })
            .await?
        }
        Command::Eval(EvalCommand::Federation {
            data,
            rounds,
            seed,
            json,
        }) => {
            tokio::task::spawn_blocking(move || crate::eval::federation(&data, rounds, seed, json))
                .await?
        }
        Command::Eval(EvalCommand::FederationFailures {
            seed,
            per_scenario,
            seconds,
            family,
            json,
        }) => {
            tokio::task::spawn_blocking(move || {
                crate::eval::federation_failures(family, seed, per_scenario, seconds, json)
            })
            .await?
        }
        Command::Eval(EvalCommand::Smd { data, seed, json }) => {
            tokio::task::spawn_blocking(move || crate::eval::smd(&data, seed, json)).await?
        }
        Command::Eval(EvalCommand::Nab {
            data,
            seed,
            novelty,
            config,
            no_train,
            json,
        }) => {
            let novelty = augur_models::anomaly::NoveltyConfig::parse(&novelty)
                .map_err(|e| anyhow::anyhow!("--novelty: {e}"))?;
            let mut options =
                crate::replay::ReplayOptions::for_config(read_config(config.as_deref())?);
            if no_train {
                options.schedule = None;
            }
            options.novelty = novelty;
            tokio::task::spawn_blocking(move || {
                crate::eval::nab(&data, seed, novelty, &options, json)
            })
            .await?
        }
        Command::ValidateConfig { file, json } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let cfg = Config::from_toml(&text).with_context(|| {
                format!("{} is not a valid augur configuration", file.display())
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cfg)?);
            } else {
                println!("{}: ok", file.display());
                print!("{}", toml::to_string_pretty(&cfg)?);
            }
            Ok(())
        }
        Command::Status(c) => {
            let v: Status = Agent::new(&c.api)?.get("/v1/status", &[]).await?;
            if c.json {
                return print_json(&v);
            }
            let Status {
                node_name,
                peer_id,
                version,
                uptime_s,
                resources,
                samples_stored,
                samples_accepted,
                samples_rejected,
                history_bytes,
                http_addr,
                grpc_addr,
            } = v;
            for (k, v) in [
                ("node_name", node_name),
                ("peer_id", peer_id),
                ("version", version),
                ("uptime_s", uptime_s.to_string()),
                ("resources", resources.to_string()),
                ("samples_stored", samples_stored.to_string()),
                ("samples_accepted", samples_accepted.to_string()),
                ("samples_rejected", samples_rejected.to_string()),
                ("history_bytes", history_bytes.to_string()),
                ("http_addr", http_addr),
                ("grpc_addr", grpc_addr),
            ] {
                println!("{k:<18} {v}");
            }
            Ok(())
        }
        Command::Predict { resource, client } => {
            let v: PredictionView = Agent::new(&client.api)?
                .get("/predict_failure", &[("resource_id", &resource)])
                .await?;
            if client.json {
                return print_json(&v);
            }
            let p = &v.prediction;
            let verdict = if v.above_threshold {
                "PREDICTED TO FAIL"
            } else {
                "ok"
            };
            println!("{}  {verdict}", v.resource_id);
            println!(
                "  failure probability  {:.3} within {} s (threshold {})",
                p.failure_probability, p.horizon_s, v.threshold
            );
            if let Some(eta) = p.eta_s {
                println!("  expected in          {eta:.0} s");
            }
            println!("  anomaly score        {:.3}", p.anomaly_score);
            if !p.drivers.is_empty() {
                println!("  drivers              {}", p.drivers.join(", "));
            }
            println!("  at {} by {}", v.ts.to_rfc3339(), p.model_version);
            Ok(())
        }
        Command::Forecast {
            resource,
            all,
            client,
        } => {
            let v: crate::predict::ForecastView = Agent::new(&client.api)?
                .get(
                    &format!("/v1/resources/{}/forecast", urlencode(&resource)),
                    &[],
                )
                .await?;
            if client.json {
                return print_json(&v);
            }
            print!("{}", forecast_text(&v, all));
            Ok(())
        }
        Command::Fleet(FleetCommand::Apply {
            file,
            credential,
            client,
        }) => service::apply_fleet(&client.api, &file, &credential, client.json).await,
        Command::Fleet(cmd) => fleet::run(cmd),
        Command::Leases(c) => service::leases(&c.api, c.json).await,
        Command::Autonomy(c) => service::autonomy(&c.api, c.json).await,
        Command::Demo {
            fault,
            nodes,
            strategy,
            speed,
            seed,
            duration,
            rate,
            keep,
            json,
        } => {
            let out = crate::demo::run(crate::demo::Options {
                fault,
                nodes,
                strategy,
                speed,
                seed,
                duration,
                rate,
                story: !json,
                keep,
            })
            .await?;
            if json {
                print_json(&out)?;
            } else if let Some(f) = &out.folder {
                eprintln!(
                    "the fleet's folder (logs n1.log, ...; data n1/, ...): {}",
                    f.display()
                );
            }
            Ok(())
        }
        Command::DemoService => crate::demo::service::run().await,
        Command::Migrate {
            service,
            instance,
            from,
            to,
            strategy,
            soak,
            window,
            wait,
            credential,
            client,
        } => {
            let req = crate::migrate::executor::MigrationRequest {
                service,
                instance,
                from,
                to,
                strategy,
                soak,
                window,
                nonce: Some(rand::random()),
            };
            migrate::migrate(&client.api, req, &credential, wait, client.json).await
        }
        Command::Migrations {
            id,
            cancel,
            credential,
            client,
        } => match (id, cancel) {
            (Some(id), true) => migrate::cancel(&client.api, &id, &credential, client.json).await,
            (id, _) => migrate::list(&client.api, id.as_deref(), client.json).await,
        },
        Command::Service(ServiceCommand::Apply {
            file,
            credential,
            client,
        }) => service::apply(&client.api, &file, &credential, client.json).await,
        Command::Service(ServiceCommand::Delete {
            name,
            credential,
            client,
        }) => service::delete(&client.api, &name, &credential, client.json).await,
        Command::Services(c) => service::list(&c.api, c.json).await,
        Command::Doctor { agent, json } => {
            let pb = spinner("checking this host");
            let report = doctor::run(agent.sources()).await;
            pb.finish_and_clear();
            if json {
                print_json(&report)?;
            } else {
                print!("{}", doctor::render(&report));
            }
            if !report.healthy {
                let failed = report
                    .checks
                    .iter()
                    .filter(|c| c.verdict == doctor::Verdict::Fail)
                    .count();
                anyhow::bail!("{failed} check(s) failed");
            }
            Ok(())
        }
        Command::Members(c) => {
            let v: MemberList = Agent::new(&c.api)?.get("/v1/members", &[]).await?;
            if c.json {
                return print_json(&v);
            }
            if !v.mesh {
                println!("{}", v.message.unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<20} {:<9} {:>7} {:>9} {:>8} {:<24} {:<10}",
                "NODE", "STATUS", "RTT_MS", "HEARD_MS", "MAX_P", "RISKIEST", "PEER"
            );
            for m in &v.members {
                let name = m.node_name.as_deref().unwrap_or("?");
                let me = if m.is_self { "*" } else { "" };
                let peer = &m.peer_id[m.peer_id.len().saturating_sub(8)..];
                println!(
                    "{:<20} {:<9} {:>7} {:>9} {:>8} {:<24} {:<10}",
                    format!("{name}{me}"),
                    m.status.as_str(),
                    m.rtt_ms.map_or("-".to_owned(), |r| format!("{r:.1}")),
                    m.last_heard_ms.map_or("-".to_owned(), |r| r.to_string()),
                    m.health.as_ref().map_or("-".to_owned(), |h| format!(
                        "{:.3}",
                        h.max_failure_probability
                    )),
                    m.health
                        .as_ref()
                        .and_then(|h| h.resource_id.as_deref())
                        .unwrap_or("-"),
                    peer
                );
            }
            Ok(())
        }
        Command::Events {
            follow,
            topics,
            since,
            client,
        } => events::run(&client.api, follow, &topics, since, client.json).await,
        Command::Models { action, client } => {
            let agent = Agent::new(&client.api)?;
            let pinning = match &action {
                Some(ModelsAction::Pin {
                    resource_type,
                    version,
                }) => Some((resource_type.clone(), "pin", *version)),
                Some(ModelsAction::Rollback { resource_type }) => {
                    Some((resource_type.clone(), "rollback", None))
                }
                Some(ModelsAction::Unpin { resource_type }) => {
                    Some((resource_type.clone(), "unpin", None))
                }
                _ => None,
            };
            if let Some((t, verb, version)) = pinning {
                let path = format!("/v1/models/{}/{verb}", url_component(&t));
                let v: crate::api::answers::PinAnswer = agent
                    .post_json(&path, &crate::api::answers::PinRequest { version })
                    .await?;
                if client.json {
                    return print_json(&v);
                }
                match (v.version, v.pinned) {
                    (Some(n), true) => println!("{} pinned at v{n}", v.resource_type),
                    (Some(n), false) => println!("{} unpinned (v{n} in use)", v.resource_type),
                    (None, _) => println!("{} unpinned", v.resource_type),
                }
                return Ok(());
            }
            if let Some(ModelsAction::Train) = action {
                let spinner = spinner("training models");
                let v = agent
                    .post::<TrainAnswer>("/v1/models/train", TRAIN_TIMEOUT)
                    .await;
                spinner.finish_and_clear();
                let v = v?;
                if client.json {
                    return print_json(&v);
                }
                for o in &v.outcomes {
                    match (&o.trained, &o.skipped) {
                        (Some(m), _) => println!(
                            "{:<16} trained v{} on {} samples in {} ms",
                            o.resource_type, m.version, m.rows, m.train_ms
                        ),
                        (None, why) => println!(
                            "{:<16} not trained: {}",
                            o.resource_type,
                            why.as_deref().unwrap_or("-")
                        ),
                    }
                }
                if v.outcomes.is_empty() {
                    println!(
                        "no resource type to train (no history yet, or every type is statistical)"
                    );
                }
                return Ok(());
            }
            let v: ModelList = agent.get("/v1/models", &[]).await?;
            if client.json {
                return print_json(&v);
            }
            println!(
                "{:<16} {:>7} {:>8} {:>9} {:<24} {:<22}",
                "TYPE",
                "VERSION",
                "SAMPLES",
                "TRAIN_MS",
                "MLP (MSE vs HOLT)",
                "CALIBRATION (BRIER)"
            );
            for m in &v.models {
                let mlp = match &m.mlp {
                    Some(r) => format!(
                        "{:.3} vs {:.3}{}",
                        r.mse_mlp,
                        r.mse_holt,
                        if r.preferred { " used" } else { "" }
                    ),
                    None => "none".to_owned(),
                };
                let cal = match &m.calibration {
                    Some(c) => format!(
                        "{:.4} vs {:.4}{}",
                        c.brier_calibrated,
                        c.brier_raw,
                        if c.used { " used" } else { "" }
                    ),
                    None => "no failures seen".to_owned(),
                };
                println!(
                    "{:<16} {:>7} {:>8} {:>9} {:<24} {:<22}",
                    m.resource_type, m.version, m.rows, m.train_ms, mlp, cal
                );
                for l in m.patterns.iter().flat_map(|p| &p.limits) {
                    println!("{:<16} learned limit: {}", "", l.describe());
                }
                if !m.trend_credibility.is_empty() {
                    let each: Vec<String> = m
                        .trend_credibility
                        .iter()
                        .map(|(k, c)| format!("{k} {c:.2}"))
                        .collect();
                    println!(
                        "{:<16} trend credibility 300 samples ahead: {}",
                        "",
                        each.join(", ")
                    );
                }
                if let Some(f) = &m.federation {
                    println!("{:<16} merged from the fleet: {}", "", lineage(f));
                }
            }
            for (t, n) in &v.pinned {
                println!("{t} is pinned at v{n} (augur models unpin {t})");
            }
            if !v.federation.is_empty() {
                println!("\nFLEET MODELS (newest last)");
                for d in &v.federation {
                    println!(
                        "{:<16} {:<10} {} {}",
                        d.resource_type,
                        d.outcome,
                        d.version
                            .map_or_else(|| "-".to_owned(), |v| format!("v{v}")),
                        lineage(&d.lineage)
                    );
                }
            }
            Ok(())
        }
        Command::Resources(c) => {
            let v: ResourceList = Agent::new(&c.api)?.get("/v1/resources", &[]).await?;
            if c.json {
                return print_json(&v);
            }
            println!(
                "{:<32} {:<12} {:>10} {:<28}",
                "RESOURCE", "TYPE", "SAMPLES", "LAST"
            );
            for r in &v.resources {
                println!(
                    "{:<32} {:<12} {:>10} {:<28}",
                    r.resource_id, r.resource_type, r.samples, r.last_ts
                );
            }
            Ok(())
        }
        Command::Telemetry {
            resource,
            since,
            until,
            limit,
            client,
        } => {
            let limit = limit.to_string();
            let mut query = vec![("since", since.as_str()), ("limit", limit.as_str())];
            if let Some(u) = &until {
                query.push(("until", u));
            }
            let v: TelemetryPage = Agent::new(&client.api)?
                .get(&format!("/v1/resources/{resource}/telemetry"), &query)
                .await?;
            if client.json {
                return print_json(&v);
            }
            for r in &v.records {
                let metrics = r
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let event = r
                    .event
                    .map(|e| format!(" event={}", e.as_str()))
                    .unwrap_or_default();
                let ts =
                    r.ts.map(|t| UnixMicros::from_offset(t).to_rfc3339())
                        .unwrap_or_default();
                println!("{ts} {metrics}{event}");
            }
            if v.truncated {
                eprintln!("(more samples matched; raise --limit or narrow --since/--until)");
            }
            Ok(())
        }
    }
}

fn parse_strategy(s: &str) -> Result<augur_orchestrate::spec::Strategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: use live, warm_standby or blue_green"))
}

/// Prints an answer as the JSON the agent sent (`--json`).
/// A path component, percent-encoded (a resource type may hold any id character).
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A merged model's lineage in one line: contributors, rule, and the adoption guard's scores.
fn lineage(l: &augur_models::federated::Lineage) -> String {
    let who: Vec<String> = l
        .contributors
        .iter()
        .map(|c| {
            let short = c
                .author
                .get(c.author.len().saturating_sub(6)..)
                .unwrap_or(&c.author);
            format!("{short}@r{} ({} rows)", c.round, c.samples)
        })
        .collect();
    let judged = match (l.mse_local, l.mse_candidate) {
        (Some(a), Some(b)) => format!("; MSE here {a:.3} local vs {b:.3} merged"),
        (None, Some(b)) => format!("; MSE here {b:.3}"),
        _ => String::new(),
    };
    let part = |name: &str, p: &Option<augur_models::federated::PartDecision>| {
        p.as_ref().map(|p| {
            format!(
                "; {name} {} ({} contributors{})",
                if p.adopted { "kept" } else { "refused" },
                p.contributors,
                match (p.local, p.candidate) {
                    (Some(a), Some(b)) => format!(", {a:.3} here vs {b:.3} merged"),
                    _ => String::new(),
                }
            )
        })
    };
    format!(
        "{:?} of {}{}{}{}{}{}{}",
        l.rule,
        who.join(", "),
        if l.cold_start { "; cold start" } else { "" },
        judged,
        part("forest", &l.forest).unwrap_or_default(),
        part("calibration", &l.calibration).unwrap_or_default(),
        part("learned limits", &l.patterns).unwrap_or_default(),
        l.digest
            .as_ref()
            .map(|d| format!("; network {d}"))
            .unwrap_or_default()
    )
}

/// A resource id as one path segment (ids may hold `/`, `:` and `@`).
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `augur forecast`'s text: per metric its limits, its level now, and the forecast at a few
/// points of the horizon with its 90 % band and the probability of being past the limit there.
fn forecast_text(v: &crate::predict::ForecastView, all: bool) -> String {
    use std::fmt::Write as _;
    let p = &v.prediction;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  failure probability {:.3} within {} s (threshold {}){}",
        p.resource_id,
        p.prediction.failure_probability,
        p.prediction.horizon_s,
        p.threshold,
        p.prediction
            .eta_s
            .map(|e| format!(", expected in {e:.0} s"))
            .unwrap_or_default()
    );
    let shown: Vec<_> = v
        .metrics
        .iter()
        .filter(|m| all || !m.limits.is_empty())
        .collect();
    if shown.is_empty() {
        let _ = writeln!(
            out,
            "  no metric has a limit (configured or learned); --all lists the others"
        );
    }
    for m in shown {
        let limits: Vec<String> = m
            .limits
            .iter()
            .map(|l| {
                format!(
                    "{} {}{}",
                    match l.direction {
                        augur_models::engine::Direction::Above => ">=",
                        augur_models::engine::Direction::Below => "<=",
                    },
                    l.value,
                    if l.learned { " (learned)" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {}  now {}  limit {}  anomaly {:.2}",
            m.metric,
            m.level.map_or("-".to_owned(), |x| format!("{x:.4}")),
            if limits.is_empty() {
                "none".to_owned()
            } else {
                limits.join(", ")
            },
            m.anomaly_score
        );
        if m.points.is_empty() {
            let _ = writeln!(
                out,
                "    no forecast yet: the forecaster is still learning its spread"
            );
            continue;
        }
        // At most five rows: evenly spaced, the last point always.
        let step = m.points.len().div_ceil(5).max(1);
        for (i, pt) in m.points.iter().enumerate() {
            if i % step != step - 1 && i + 1 != m.points.len() {
                continue;
            }
            let _ = writeln!(
                out,
                "    +{:>6.0} s  {:>12.4}  90 % [{:.4}, {:.4}]  p {:.3}",
                pt.ahead_s,
                pt.mean,
                pt.mean - 1.645 * pt.sd,
                pt.mean + 1.645 * pt.sd,
                pt.failure_probability
            );
        }
    }
    out
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A spinner on stderr when it is a terminal (hidden otherwise).
pub fn spinner(msg: &'static str) -> indicatif::ProgressBar {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(msg);
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

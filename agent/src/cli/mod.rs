//! The `augur` command line: the agent itself and the commands that read a running agent's API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

pub mod client;
pub mod events;
pub mod fleet;

use client::{Agent, TRAIN_TIMEOUT};

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
        /// Retrain the models every this much of the data's time, like the agent (from the samples
        /// before that point only).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        retrain_every: std::time::Duration,
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
    /// Create a fleet key and issue join tokens (admission to the mesh).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// List the fleet's members as this agent sees them.
    Members(ClientArgs),
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
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
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
        /// shape_alarm, rest_share, max_shapes).
        #[arg(long, default_value = "")]
        novelty: String,
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

/// Runs a non-agent command.
pub async fn run_client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Agent(_) => bail!("the agent is started by main"),
        Command::Replay {
            input,
            output,
            retrain_every,
            no_train,
            json,
        } => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let options = crate::replay::ReplayOptions {
                retrain_every: (!no_train).then_some(retrain_every),
                ..Default::default()
            };
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
            json,
        }) => {
            tokio::task::spawn_blocking(move || {
                crate::eval::failures(seed, per_scenario, seconds, json)
            })
            .await?
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
        Command::Eval(EvalCommand::Smd { data, seed, json }) => {
            tokio::task::spawn_blocking(move || crate::eval::smd(&data, seed, json)).await?
        }
        Command::Eval(EvalCommand::Nab {
            data,
            seed,
            novelty,
            json,
        }) => {
            let novelty = augur_models::anomaly::NoveltyConfig::parse(&novelty)
                .map_err(|e| anyhow::anyhow!("--novelty: {e}"))?;
            tokio::task::spawn_blocking(move || crate::eval::nab(&data, seed, novelty, json))
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
            let v = Agent::new(&c.api)?.get::<Value>("/v1/status", &[]).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(obj) = v.as_object() {
                for (k, v) in obj {
                    println!("{k:<18} {}", plain(v));
                }
            }
            Ok(())
        }
        Command::Predict { resource, client } => {
            let v: Value = Agent::new(&client.api)?
                .get("/predict_failure", &[("resource_id", &resource)])
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let p = v["failure_probability"].as_f64().unwrap_or(0.0);
            let verdict = if v["above_threshold"].as_bool() == Some(true) {
                "PREDICTED TO FAIL"
            } else {
                "ok"
            };
            println!("{}  {verdict}", plain(&v["resource_id"]));
            println!(
                "  failure probability  {:.3} within {} s (threshold {})",
                p,
                plain(&v["horizon_s"]),
                plain(&v["threshold"])
            );
            if let Some(eta) = v["eta_s"].as_f64() {
                println!("  expected in          {eta:.0} s");
            }
            println!(
                "  anomaly score        {:.3}",
                v["anomaly_score"].as_f64().unwrap_or(0.0)
            );
            let drivers: Vec<String> = v["drivers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(plain)
                .collect();
            if !drivers.is_empty() {
                println!("  drivers              {}", drivers.join(", "));
            }
            println!("  at {} by {}", plain(&v["ts"]), plain(&v["model_version"]));
            Ok(())
        }
        Command::Fleet(cmd) => fleet::run(cmd),
        Command::Members(c) => {
            let v = Agent::new(&c.api)?.get::<Value>("/v1/members", &[]).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if v["mesh"] == false {
                println!("{}", plain(&v["message"]));
                return Ok(());
            }
            println!(
                "{:<20} {:<9} {:>7} {:>9} {:>8} {:<24} {:<10}",
                "NODE", "STATUS", "RTT_MS", "HEARD_MS", "MAX_P", "RISKIEST", "PEER"
            );
            for m in v["members"].as_array().into_iter().flatten() {
                let name = m["node_name"].as_str().unwrap_or("?");
                let me = if m["is_self"] == true { "*" } else { "" };
                println!(
                    "{:<20} {:<9} {:>7} {:>9} {:>8} {:<24} {:<10}",
                    format!("{name}{me}"),
                    plain(&m["status"]),
                    m["rtt_ms"]
                        .as_f64()
                        .map_or("-".to_owned(), |r| format!("{r:.1}")),
                    m["last_heard_ms"]
                        .as_u64()
                        .map_or("-".to_owned(), |r| r.to_string()),
                    m["health"]["max_failure_probability"]
                        .as_f64()
                        .map_or("-".to_owned(), |p| format!("{p:.3}")),
                    m["health"]["resource_id"].as_str().unwrap_or("-"),
                    plain(&m["peer_id"])
                        .chars()
                        .rev()
                        .take(8)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect::<String>()
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
            let v = match action {
                None => {
                    Agent::new(&client.api)?
                        .get::<Value>("/v1/models", &[])
                        .await?
                }
                Some(ModelsAction::Train) => {
                    let spinner = spinner("training models");
                    let v = Agent::new(&client.api)?
                        .post::<Value>("/v1/models/train", TRAIN_TIMEOUT)
                        .await;
                    spinner.finish_and_clear();
                    v?
                }
            };
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if let Some(outcomes) = v["outcomes"].as_array() {
                for o in outcomes {
                    match o["trained"].as_object() {
                        Some(m) => println!(
                            "{:<16} trained v{} on {} samples in {} ms",
                            plain(&o["resource_type"]),
                            plain(&m["version"]),
                            plain(&m["rows"]),
                            plain(&m["train_ms"])
                        ),
                        None => println!(
                            "{:<16} not trained: {}",
                            plain(&o["resource_type"]),
                            plain(&o["skipped"])
                        ),
                    }
                }
                if outcomes.is_empty() {
                    println!(
                        "no resource type to train (no history yet, or every type is statistical)"
                    );
                }
                return Ok(());
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
            for m in v["models"].as_array().into_iter().flatten() {
                let mlp = match m["mlp"].as_object() {
                    Some(r) => format!(
                        "{:.3} vs {:.3}{}",
                        r["mse_mlp"].as_f64().unwrap_or(f64::NAN),
                        r["mse_holt"].as_f64().unwrap_or(f64::NAN),
                        if r["preferred"].as_bool() == Some(true) {
                            " used"
                        } else {
                            ""
                        }
                    ),
                    None => "none".to_owned(),
                };
                let cal = match m["calibration"].as_object() {
                    Some(c) => format!(
                        "{:.4} vs {:.4}{}",
                        c["brier_calibrated"].as_f64().unwrap_or(f64::NAN),
                        c["brier_raw"].as_f64().unwrap_or(f64::NAN),
                        if c["used"].as_bool() == Some(true) {
                            " used"
                        } else {
                            ""
                        }
                    ),
                    None => "no failures seen".to_owned(),
                };
                println!(
                    "{:<16} {:>7} {:>8} {:>9} {:<24} {:<22}",
                    plain(&m["resource_type"]),
                    plain(&m["version"]),
                    plain(&m["rows"]),
                    plain(&m["train_ms"]),
                    mlp,
                    cal
                );
            }
            Ok(())
        }
        Command::Resources(c) => {
            let v = Agent::new(&c.api)?
                .get::<Value>("/v1/resources", &[])
                .await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<32} {:<12} {:>10} {:<28}",
                "RESOURCE", "TYPE", "SAMPLES", "LAST"
            );
            for r in v["resources"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<12} {:>10} {:<28}",
                    plain(&r["resource_id"]),
                    plain(&r["resource_type"]),
                    plain(&r["samples"]),
                    plain(&r["last_ts"])
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
            let v: Value = Agent::new(&client.api)?
                .get(&format!("/v1/resources/{resource}/telemetry"), &query)
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for r in v["records"].as_array().into_iter().flatten() {
                let metrics = r["metrics"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", plain(v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                let event = r
                    .get("event")
                    .map(|e| format!(" event={}", plain(e)))
                    .unwrap_or_default();
                println!("{} {metrics}{event}", plain(&r["ts"]));
            }
            if v["truncated"].as_bool() == Some(true) {
                eprintln!("(more samples matched; raise --limit or narrow --since/--until)");
            }
            Ok(())
        }
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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

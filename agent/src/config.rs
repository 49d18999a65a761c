//! The agent's configuration: one serde tree read from embedded defaults, then a TOML file, then
//! `AUGUR_`-prefixed environment variables, then command-line flags (later wins). Unknown keys are
//! errors. Doc comments on the fields are the user documentation (see packaging/augur.toml).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use augur_proto::{HOST_RESOURCE_TYPE, NodeName, ResourceId, ResourceType};
use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole agent configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name: the host resource's id. Default: the host name.
    pub node_name: Option<NodeName>,
    /// Where history, models and the node key live. Default: /var/lib/augur as root, else
    /// $XDG_STATE_HOME/augur (or ~/.local/state/augur).
    pub data_dir: Option<PathBuf>,
    pub api: ApiConfig,
    pub ingest: IngestConfig,
    pub history: HistoryConfig,
    pub collect: CollectConfig,
    /// Per resource type settings; `host` is always present.
    pub resource_types: BTreeMap<String, ResourceTypeConfig>,
    /// Log files to tail; matching lines are counted per interval as a metric.
    pub logs: Vec<LogConfig>,
    /// Prometheus text endpoints of workloads to scrape.
    pub scrape: Vec<ScrapeConfig>,
    pub log: LogOutputConfig,
    pub models: ModelsConfig,
    pub mesh: MeshSettings,
    pub services: ServicesConfig,
    /// How long shutdown may take before the agent gives up waiting for its tasks.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP/JSON API and Prometheus /metrics.
    pub http_addr: SocketAddr,
    /// gRPC API (augur.v1, grpc.health.v1, reflection).
    pub grpc_addr: SocketAddr,
    /// Largest HTTP request body; larger ones get 413.
    pub max_body: ByteSize,
    /// Largest gRPC message; larger ones get RESOURCE_EXHAUSTED / OUT_OF_RANGE.
    pub max_grpc_message: ByteSize,
    /// Connections open at once, per listener (HTTP, gRPC); more are closed as they arrive.
    pub max_connections: usize,
    /// An HTTP request's head (and the next one on an idle keep-alive connection), or a gRPC
    /// connection's HTTP/2 preface, must arrive within this time.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// An HTTP request body must arrive within this time (408 otherwise).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A gRPC connection that reads nothing for this long is closed (keepalive pings every third
    /// of it keep live clients reading).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// `ingest.max_metric_names` by default.
pub const DEFAULT_MAX_METRIC_NAMES: usize = 512;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most metrics one sample may carry.
    pub max_metrics_per_sample: usize,
    /// Most labels one sample may carry.
    pub max_labels: usize,
    /// How far in the future a sample's ts may be.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Most distinct resources this agent tracks; samples of further resources are refused.
    pub max_resources: usize,
    /// Most distinct metric names one resource may use over time; samples that add more are
    /// refused (each metric costs the prediction engine up to ~30 KB).
    pub max_metric_names: usize,
    /// Depth of the queue of batches waiting to be written.
    pub queue_depth: usize,
    /// How long a push waits for room in a full queue before it gets 503 / UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub enqueue_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Samples per resource kept in memory for the models and `latest` queries.
    pub window: usize,
    /// Samples older than this are deleted from disk.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Logical size of the stored samples above which the oldest are deleted.
    pub max_size: ByteSize,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Page cache of the embedded store.
    pub cache: ByteSize,
}

/// Background training of the per-type models (MLP forecaster, Isolation Forest, calibration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Train models in the background; off, every type runs on its online statistical models.
    pub train: bool,
    /// How often each resource type's models are retrained (the first training runs once a type
    /// has enough history).
    #[serde(with = "humantime_serde")]
    pub retrain_interval: Duration,
    /// How far back a training reads the durable history.
    #[serde(with = "humantime_serde")]
    pub training_window: Duration,
    /// Newest samples (over all resources of a type) one training uses, at most: bounds its CPU.
    pub max_training_samples: usize,
    /// Model versions kept on disk per type.
    pub keep_versions: usize,
    /// Memory the prediction engines may hold together (estimated). Once it is used, engines learn
    /// no new metrics and new resources get no engine (their samples are stored, not predicted,
    /// and counted in `augur_predict_refused_total`).
    pub max_engine_memory: ByteSize,
    /// In a fleet: share each type's trained models with the peers and merge theirs into a
    /// candidate, adopted only if it does no worse on this node's own held-out history.
    pub federate: bool,
    /// Bad updates the merge tolerates among its contributors (a coordinate-wise trimmed mean that
    /// drops this many of the highest and lowest values; with fewer than 2f + 1 contributors, the
    /// median).
    pub federation_tolerate: usize,
    /// The most training rows one contribution's weight counts (no node outweighs the rest by
    /// the sample count it claims).
    pub federation_sample_cap: u64,
}

/// The fleet mesh. It starts when `join_token` is set (see `augur fleet init` and `augur fleet
/// token`); without one the agent runs on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    /// The fleet's name: keeps fleets sharing a network apart (not a secret; admission is the
    /// join token's job).
    pub fleet_name: String,
    /// UDP address of membership gossip (chitchat).
    pub gossip_addr: SocketAddr,
    /// Gossip address peers should use, when it differs from gossip_addr (NAT, 0.0.0.0).
    pub advertise_addr: Option<SocketAddr>,
    /// UDP address of the libp2p QUIC endpoint.
    pub p2p_addr: SocketAddr,
    /// Gossip addresses (HOST:PORT) of members to join through.
    pub seeds: Vec<String>,
    /// Fleet public keys this node trusts (`augur-fleet-pub:...`); more than one during a rotation.
    pub fleet_keys: Vec<String>,
    /// This node's join token (`augur-join:...`), issued by `augur fleet token`.
    pub join_token: Option<String>,
    /// A file holding the join token instead (read at start).
    pub join_token_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Failure detector: phi above which a member is declared dead.
    pub phi_threshold: f64,
    /// How long a dead member stays listed before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub dead_node_grace: Duration,
    /// A connected peer without a valid token within this time is disconnected.
    #[serde(with = "humantime_serde")]
    pub admission_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// This node's zone (for placement and disruption budgets).
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Fleet events kept for subscribers that reconnect.
    pub event_buffer: usize,
    /// At most this many members (this node included) are tracked; gossip naming more is ignored
    /// for the extra nodes. Bounds what a misbehaving member can make every node hold (about
    /// 10 KB per member).
    pub max_members: usize,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            fleet_name: "augur".to_owned(),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7072)),
            advertise_addr: None,
            p2p_addr: SocketAddr::from(([127, 0, 0, 1], 7073)),
            seeds: Vec::new(),
            fleet_keys: Vec::new(),
            join_token: None,
            join_token_file: None,
            gossip_interval: Duration::from_millis(300),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
            admission_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            zone: None,
            labels: BTreeMap::new(),
            event_buffer: 10_000,
            max_members: 2048,
        }
    }
}

/// Which models a resource type uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelChoice {
    /// The online statistical models, plus the type's trained models once there are some.
    Auto,
    /// The online statistical models only (Holt, measured errors, level likelihood); nothing is
    /// trained for the type.
    Statistical,
}

/// The fleet's services on this node: the proxies that carry their traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Run the embedded proxy: one listener per service, on `proxy_ip` and the service's port.
    pub proxy: bool,
    /// The address the embedded proxies listen on (loopback: only this host's clients).
    pub proxy_ip: std::net::IpAddr,
    /// How long a backend leaving the routes keeps its open connections.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Open connections per service's proxy, at most (more are closed on arrival, counted).
    pub max_connections: u64,
    /// The address instances listen on and peers reach them at (handed to them in `HOST`).
    /// Default: the mesh's advertised address, else its gossip address.
    pub instance_ip: Option<std::net::IpAddr>,
    /// An HAProxy to keep in step with the routes, through its Runtime API.
    pub haproxy: Option<HaproxySettings>,
}

/// HAProxy, driven through its admin socket: one backend per service, declared in haproxy.cfg
/// with a dynamic balancing algorithm (`roundrobin`, `leastconn`; not `static-rr`); augur adds,
/// weighs, drains and removes its servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxySettings {
    /// The admin socket (`stats socket ... level admin` in haproxy.cfg).
    pub socket: PathBuf,
    /// The backend of each service: `{service}` is replaced by the service's name.
    #[serde(default = "haproxy_backend")]
    pub backend: String,
}

fn haproxy_backend() -> String {
    "{service}".to_owned()
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            proxy: true,
            proxy_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            drain_grace: Duration::from_secs(10),
            max_connections: 10_000,
            instance_ip: None,
            haproxy: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Collect the host's own metrics (sysinfo).
    pub host: bool,
    /// Count network traffic of loopback interfaces too.
    pub include_loopback: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceTypeConfig {
    /// Models: "auto" (online statistical models, plus trained ones when available) or
    /// "statistical" (online models only).
    pub model: ModelChoice,
    /// Collection interval for resources of this type (host collection, scrapes by default).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How far ahead the failure probability looks.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Failure probability at or above which a resource counts as predicted to fail.
    pub threshold: f64,
    /// A raised alarm stays raised until the probability has stayed below the threshold this
    /// long (a probability hovering about it raises one alarm, not one per sample above).
    #[serde(with = "humantime_serde")]
    pub keep_firing: Duration,
    /// How long each metric's anomaly detector learns before it reports anything; its pattern
    /// window (a thirteenth of this) and its rest after an alarm (a fifth) scale with it.
    #[serde(with = "humantime_serde")]
    pub anomaly_learning: Duration,
    /// Critical limits: a metric (or every metric starting with `prefix`) past `value` in
    /// `direction` ("above" or "below") is a failure.
    pub limits: Vec<augur_models::engine::Limit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The file to follow; rotation (rename or truncate) is handled.
    pub path: PathBuf,
    /// Regular expressions; a line matching any of them is counted.
    pub patterns: Vec<String>,
    /// The resource the count belongs to. Default: this node (the host resource).
    #[serde(default)]
    pub resource_id: Option<ResourceId>,
    /// Its resource type. Default: host.
    #[serde(default)]
    pub resource_type: Option<ResourceType>,
    /// Metric name of the count.
    #[serde(default = "default_log_metric")]
    pub metric: String,
}

fn default_log_metric() -> String {
    "log_errors".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// A Prometheus text-format endpoint (http://).
    pub url: String,
    pub resource_id: ResourceId,
    #[serde(default = "default_scrape_type")]
    pub resource_type: ResourceType,
    /// Default: the resource type's interval.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Default: the interval, at most 5 s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Regular expressions on the series name (`name{labels}`); when set only matching series are kept.
    #[serde(default)]
    pub include: Vec<String>,
}

fn default_scrape_type() -> ResourceType {
    ResourceType::parse("service").expect("'service' is a valid resource type")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogOutputConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "augur_agent=debug,info". RUST_LOG overrides it.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: None,
            data_dir: None,
            api: ApiConfig::default(),
            ingest: IngestConfig::default(),
            history: HistoryConfig::default(),
            collect: CollectConfig::default(),
            resource_types: BTreeMap::from([(
                HOST_RESOURCE_TYPE.to_owned(),
                ResourceTypeConfig::default(),
            )]),
            logs: Vec::new(),
            scrape: Vec::new(),
            log: LogOutputConfig::default(),
            models: ModelsConfig::default(),
            mesh: MeshSettings::default(),
            services: ServicesConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            max_body: ByteSize::mib(4),
            max_grpc_message: ByteSize::mib(4),
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_metrics_per_sample: 256,
            max_labels: 32,
            max_clock_skew: Duration::from_secs(300),
            max_resources: 10_000,
            max_metric_names: DEFAULT_MAX_METRIC_NAMES,
            queue_depth: 1024,
            enqueue_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            window: 600,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_size: ByteSize::gib(1),
            retention_interval: Duration::from_secs(60),
            cache: ByteSize::mib(8),
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            train: true,
            retrain_interval: Duration::from_secs(3600),
            training_window: Duration::from_secs(24 * 3600),
            max_training_samples: 20_000,
            keep_versions: 3,
            max_engine_memory: ByteSize::mib(256),
            federate: true,
            federation_tolerate: 1,
            federation_sample_cap: 20_000,
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            host: true,
            include_loopback: false,
        }
    }
}

impl Default for ResourceTypeConfig {
    fn default() -> Self {
        Self {
            model: ModelChoice::Auto,
            interval: Duration::from_secs(1),
            horizon: Duration::from_secs(300),
            threshold: 0.75,
            keep_firing: Duration::from_secs_f64(augur_models::alarm::KEEP_FIRING_S),
            anomaly_learning: Duration::from_secs(600),
            limits: augur_models::engine::default_limits(),
        }
    }
}

impl Default for LogOutputConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

/// Command-line values that override the file and the environment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshOverrides>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_keys: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LogOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// Where configuration comes from; tests pass their own environment instead of the process's.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// `AUGUR_*` variables; `None` reads the process environment.
    pub env: Option<Vec<(String, String)>>,
    pub overrides: Overrides,
}

impl Config {
    /// Reads defaults, then the file, then the environment, then the overrides, and validates.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist", file.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(file));
        }
        let (vars, _) = env_vars(sources);
        fig = fig.merge(Toml::string(&env_toml(&vars)?));
        fig = fig.merge(Serialized::defaults(&sources.overrides));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `AUGUR_*` variables that name no configuration section (for example `AUGUR_BIN`): the
    /// environment is shared with other tools, so these are ignored (the agent logs a warning)
    /// rather than refused. A variable naming a section with an unknown key is still an error.
    pub fn ignored_env_vars(sources: &Sources) -> Vec<String> {
        env_vars(sources).1
    }

    /// Parses a TOML text alone (over the defaults), as `augur validate-config` does.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, regexes, cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, rt) in &self.resource_types {
            ResourceType::parse(name.as_str())
                .map_err(|e| invalid(format!("resource_types.{name}"), e.to_string()))?;
            if rt.interval < Duration::from_millis(100) {
                return Err(invalid(
                    format!("resource_types.{name}.interval"),
                    "must be at least 100ms",
                ));
            }
            if rt.anomaly_learning < rt.interval * 20 {
                return Err(invalid(
                    format!("resource_types.{name}.anomaly_learning"),
                    "must be at least 20 collection intervals",
                ));
            }
            if rt.horizon < Duration::from_secs(1) {
                return Err(invalid(
                    format!("resource_types.{name}.horizon"),
                    "must be at least 1s",
                ));
            }
            if !(rt.threshold > 0.0 && rt.threshold < 1.0) {
                return Err(invalid(
                    format!("resource_types.{name}.threshold"),
                    "must lie strictly between 0 and 1",
                ));
            }
            for l in &rt.limits {
                if l.prefix.is_empty() || !l.value.is_finite() {
                    return Err(invalid(
                        format!("resource_types.{name}.limits"),
                        format!("{l:?} needs a metric prefix and a finite value"),
                    ));
                }
            }
        }
        if self.api.http_addr == self.api.grpc_addr && self.api.http_addr.port() != 0 {
            return Err(invalid("api.grpc_addr", "must differ from api.http_addr"));
        }
        if self.api.max_body.as_u64() < 1024 {
            return Err(invalid("api.max_body", "must be at least 1KiB"));
        }
        if self.api.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1"));
        }
        for (name, d) in [
            ("api.header_timeout", self.api.header_timeout),
            ("api.body_timeout", self.api.body_timeout),
            ("api.idle_timeout", self.api.idle_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(invalid(name, "must be at least 100ms"));
            }
        }
        if self.api.max_grpc_message.as_u64() < 1024 {
            return Err(invalid("api.max_grpc_message", "must be at least 1KiB"));
        }
        if self.ingest.max_metrics_per_sample == 0 {
            return Err(invalid(
                "ingest.max_metrics_per_sample",
                "must be at least 1",
            ));
        }
        if self.ingest.max_resources == 0 {
            return Err(invalid("ingest.max_resources", "must be at least 1"));
        }
        if self.ingest.queue_depth == 0 {
            return Err(invalid("ingest.queue_depth", "must be at least 1"));
        }
        if self.history.window < 2 {
            return Err(invalid("history.window", "must be at least 2 samples"));
        }
        if self.history.max_age < Duration::from_secs(60) {
            return Err(invalid("history.max_age", "must be at least 1m"));
        }
        if self.history.max_size.as_u64() < 1024 * 1024 {
            return Err(invalid("history.max_size", "must be at least 1MiB"));
        }
        for (i, k) in self.mesh.fleet_keys.iter().enumerate() {
            k.parse::<augur_mesh::admission::FleetPublicKey>()
                .map_err(|e| invalid(format!("mesh.fleet_keys[{i}]"), e.to_string()))?;
        }
        if let Some(t) = &self.mesh.join_token {
            t.parse::<augur_mesh::admission::JoinToken>()
                .map_err(|e| invalid("mesh.join_token", e.to_string()))?;
        }
        if (self.mesh.join_token.is_some() || self.mesh.join_token_file.is_some())
            && self.mesh.fleet_keys.is_empty()
        {
            return Err(invalid(
                "mesh.fleet_keys",
                "a join token needs the fleet public key it was issued under (augur fleet init prints it)",
            ));
        }
        if self.mesh.gossip_interval < Duration::from_millis(50) {
            return Err(invalid("mesh.gossip_interval", "must be at least 50ms"));
        }
        if self.mesh.phi_threshold.is_nan() || self.mesh.phi_threshold <= 1.0 {
            return Err(invalid("mesh.phi_threshold", "must be above 1"));
        }
        if self.mesh.gossip_addr == self.mesh.p2p_addr && self.mesh.p2p_addr.port() != 0 {
            return Err(invalid(
                "mesh.p2p_addr",
                "must differ from mesh.gossip_addr",
            ));
        }
        if self.mesh.max_members < 2 {
            return Err(invalid("mesh.max_members", "must be at least 2"));
        }
        if self.mesh.event_buffer == 0 {
            return Err(invalid("mesh.event_buffer", "must be at least 1"));
        }
        if self.services.max_connections == 0 {
            return Err(invalid("services.max_connections", "must be at least 1"));
        }
        if let Some(h) = &self.services.haproxy {
            if h.socket.as_os_str().is_empty() {
                return Err(invalid(
                    "services.haproxy.socket",
                    "must name HAProxy's admin socket",
                ));
            }
            let probe = h.backend.replace("{service}", "web");
            if !h.backend.contains("{service}")
                || probe.is_empty()
                || !probe
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                return Err(invalid(
                    "services.haproxy.backend",
                    "must contain {service} and otherwise only letters, digits, '-', '_', '.' and ':'",
                ));
            }
        }
        if self.models.retrain_interval < Duration::from_secs(60) {
            return Err(invalid("models.retrain_interval", "must be at least 1m"));
        }
        if self.models.training_window < Duration::from_secs(60) {
            return Err(invalid("models.training_window", "must be at least 1m"));
        }
        if self.models.max_training_samples < 1000 {
            return Err(invalid(
                "models.max_training_samples",
                "must be at least 1000",
            ));
        }
        if self.models.keep_versions == 0 {
            return Err(invalid("models.keep_versions", "must be at least 1"));
        }
        if self.history.retention_interval < Duration::from_secs(1) {
            return Err(invalid("history.retention_interval", "must be at least 1s"));
        }
        for (i, log) in self.logs.iter().enumerate() {
            if log.patterns.is_empty() {
                return Err(invalid(
                    format!("logs[{i}].patterns"),
                    "needs at least one pattern",
                ));
            }
            for p in &log.patterns {
                regex::Regex::new(p)
                    .map_err(|e| invalid(format!("logs[{i}].patterns"), e.to_string()))?;
            }
            crate::accept::check_metric_name(&log.metric)
                .map_err(|e| invalid(format!("logs[{i}].metric"), e))?;
        }
        for (i, s) in self.scrape.iter().enumerate() {
            if !s.url.starts_with("http://") {
                return Err(invalid(
                    format!("scrape[{i}].url"),
                    format!("{:?} must start with http://", s.url),
                ));
            }
            reqwest::Url::parse(&s.url)
                .map_err(|e| invalid(format!("scrape[{i}].url"), e.to_string()))?;
            for p in &s.include {
                regex::Regex::new(p)
                    .map_err(|e| invalid(format!("scrape[{i}].include"), e.to_string()))?;
            }
            if let Some(iv) = s.interval
                && iv < Duration::from_millis(100)
            {
                return Err(invalid(
                    format!("scrape[{i}].interval"),
                    "must be at least 100ms",
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }

    /// The node name, defaulting to the host name.
    pub fn node_name(&self) -> NodeName {
        self.node_name.clone().unwrap_or_else(default_node_name)
    }

    /// The data directory, defaulting by user (see the field's doc).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// Interval of a resource type, falling back to the host's.
    pub fn interval_of(&self, resource_type: &str) -> Duration {
        self.resource_types
            .get(resource_type)
            .or_else(|| self.resource_types.get(HOST_RESOURCE_TYPE))
            .map(|rt| rt.interval)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Settings of a resource type: configured, or the defaults.
    pub fn type_config(&self, resource_type: &str) -> ResourceTypeConfig {
        self.resource_types
            .get(resource_type)
            .cloned()
            .unwrap_or_default()
    }

    /// How long `resource_type`'s raised alarm stays raised below its threshold, seconds.
    pub fn keep_firing_s(&self, resource_type: &str) -> f64 {
        self.resource_types
            .get(resource_type)
            .map_or(augur_models::alarm::KEEP_FIRING_S, |r| {
                r.keep_firing.as_secs_f64()
            })
    }

    /// Samples each metric's anomaly detector of `resource_type` learns from (its
    /// `anomaly_learning` over its interval).
    pub fn anomaly_learning_samples(&self, resource_type: &str) -> usize {
        let rt = self.type_config(resource_type);
        (rt.anomaly_learning.as_secs_f64() / rt.interval.as_secs_f64()).round() as usize
    }

    /// Names of settings that differ between `self` and `new` and only take effect after a restart.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.node_name != new.node_name {
            out.push("node_name");
        }
        if self.data_dir != new.data_dir {
            out.push("data_dir");
        }
        if self.api != new.api {
            out.push("api");
        }
        if self.history.window != new.history.window {
            out.push("history.window");
        }
        if self.history.cache != new.history.cache {
            out.push("history.cache");
        }
        if self.collect != new.collect {
            out.push("collect");
        }
        if self.log.format != new.log.format {
            out.push("log.format");
        }
        if self.shutdown_grace != new.shutdown_grace {
            out.push("shutdown_grace");
        }
        if self.services != new.services {
            out.push("services");
        }
        // The trusted fleet keys apply on reload (a rotation's last step); the rest of the mesh
        // needs a restart.
        let mut mesh = new.mesh.clone();
        mesh.fleet_keys.clone_from(&self.mesh.fleet_keys);
        if self.mesh != mesh {
            out.push("mesh");
        }
        out
    }
}

/// The `AUGUR_*` variables that are configuration (the process environment, or the one tests pass
/// in), and the names of those that are not: their first part names no top-level setting.
fn env_vars(sources: &Sources) -> (Vec<(String, String)>, Vec<String>) {
    let vars: Vec<(String, String)> = match &sources.env {
        Some(vars) => vars.clone(),
        None => std::env::vars()
            .filter(|(k, _)| k.starts_with("AUGUR_"))
            .collect(),
    };
    let top: Vec<String> = match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let (mut keep, mut ignored) = (Vec::new(), Vec::new());
    for (k, v) in vars {
        let first = k
            .strip_prefix("AUGUR_")
            .unwrap_or(&k)
            .split("__")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if top.contains(&first) {
            keep.push((k, v));
        } else {
            ignored.push(k);
        }
    }
    (keep, ignored)
}

/// Turns `AUGUR_*` variables into TOML: `AUGUR_API__HTTP_ADDR=x` becomes `api.http_addr = "x"`.
/// A value that is valid TOML on its own (number, boolean, array, quoted string) is taken as such;
/// anything else is a string.
fn env_toml(vars: &[(String, String)]) -> Result<String, ConfigError> {
    let mut toml = String::new();
    for (k, v) in vars {
        let Some(key) = k.strip_prefix("AUGUR_") else {
            continue;
        };
        let key = key.to_ascii_lowercase().replace("__", ".");
        if key.is_empty()
            || !key.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        {
            return Err(invalid(
                k.clone(),
                "is not a configuration key (AUGUR_SECTION__KEY)",
            ));
        }
        let value = if toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok() {
            v.clone()
        } else {
            toml::Value::String(v.clone()).to_string()
        };
        toml.push_str(&format!("{key} = {value}\n"));
    }
    Ok(toml)
}

fn default_node_name() -> NodeName {
    sysinfo::System::host_name()
        .ok()
        .and_then(|h| NodeName::parse(h).ok())
        .unwrap_or_else(|| NodeName::parse("localhost").expect("'localhost' is a valid node name"))
}

fn default_data_dir() -> PathBuf {
    let is_root = std::env::var_os("USER").is_some_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| Path::new(&h) == Path::new("/root"));
    if is_root {
        return PathBuf::from("/var/lib/augur");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("augur");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/augur");
    }
    PathBuf::from("augur-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: Some(
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            overrides: Overrides::default(),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_ports() {
        let cfg = Config::load(&sources(&[])).expect("defaults load");
        assert_eq!(cfg.api.http_addr.port(), 7070);
        assert_eq!(cfg.api.grpc_addr.port(), 7071);
        assert_eq!(cfg.interval_of("host"), Duration::from_secs(1));
    }

    #[test]
    fn packaged_config_matches_the_embedded_defaults() {
        let text = include_str!("../../packaging/augur.toml");
        let mut cfg = Config::from_toml(text).expect("packaged config is valid");
        assert_eq!(cfg.data_dir.take(), Some(PathBuf::from("/var/lib/augur")));
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[api]\nhttp_adr = \"127.0.0.1:1\"\n").expect_err("typo");
        assert!(err.to_string().contains("http_adr"), "{err}");
    }

    #[test]
    fn env_then_flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("augur.toml");
        std::fs::write(
            &file,
            "node_name = \"from-file\"\n[api]\nhttp_addr = \"127.0.0.1:8000\"\n[history]\nmax_age = \"2d\"\n",
        )
        .expect("write");
        let mut src = sources(&[
            ("AUGUR_NODE_NAME", "from-env"),
            ("AUGUR_HISTORY__MAX_AGE", "3d"),
            ("AUGUR_API__GRPC_ADDR", "127.0.0.1:9001"),
            (
                "AUGUR_SCRAPE",
                r#"[{url = "http://127.0.0.1:1/m", resource_id = "x"}]"#,
            ),
        ]);
        src.file = Some(file);
        src.overrides.node_name = Some("from-flag".to_owned());
        let cfg = Config::load(&src).expect("load");
        assert_eq!(cfg.node_name().as_str(), "from-flag");
        assert_eq!(cfg.history.max_age, Duration::from_secs(3 * 86400));
        assert_eq!(cfg.api.http_addr.port(), 8000);
        assert_eq!(cfg.api.grpc_addr.port(), 9001);
        assert_eq!(cfg.scrape.len(), 1);
    }

    #[test]
    fn unknown_environment_keys_are_errors() {
        let err = Config::load(&sources(&[("AUGUR_HISTORY__MAX_AGEE", "1d")])).expect_err("typo");
        assert!(err.to_string().contains("max_agee"), "{err}");
        let err = Config::load(&sources(&[("AUGUR_API__HTTP-ADDR", "1")])).expect_err("bad key");
        assert!(err.to_string().contains("AUGUR_API__HTTP-ADDR"), "{err}");
    }

    #[test]
    fn environment_variables_that_name_no_section_are_ignored() {
        // AUGUR_BIN is what docs/BENCHMARKS.md tells people to export for the bench driver.
        let src = sources(&[
            ("AUGUR_BIN", "/usr/local/bin/augur"),
            ("AUGUR_A-B", "1"),
            ("AUGUR_NODE_NAME", "from-env"),
        ]);
        let cfg = Config::load(&src).expect("loads");
        assert_eq!(cfg.node_name().as_str(), "from-env");
        assert_eq!(
            Config::ignored_env_vars(&src),
            vec!["AUGUR_BIN".to_owned(), "AUGUR_A-B".to_owned()]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let err = Config::from_toml("[[logs]]\npath = \"/x\"\npatterns = [\"(\"]\n")
            .expect_err("bad regex");
        assert!(err.to_string().contains("logs[0].patterns"), "{err}");
        let err = Config::from_toml("[[scrape]]\nurl = \"ftp://x\"\nresource_id = \"a\"\n")
            .expect_err("bad url");
        assert!(err.to_string().contains("scrape[0].url"), "{err}");
        let err = Config::from_toml("[resource_types.host]\ninterval = \"1ms\"\n")
            .expect_err("tiny interval");
        assert!(
            err.to_string().contains("resource_types.host.interval"),
            "{err}"
        );
        let err = Config::from_toml(
            "[resource_types.svc]\ninterval = \"5s\"\nanomaly_learning = \"1m\"\n",
        )
        .expect_err("learning shorter than 20 intervals");
        assert!(
            err.to_string()
                .contains("resource_types.svc.anomaly_learning"),
            "{err}"
        );
        let cfg = Config::from_toml("[resource_types.svc]\ninterval = \"5s\"\n").expect("valid");
        assert_eq!(cfg.anomaly_learning_samples("svc"), 120);
        assert_eq!(cfg.anomaly_learning_samples("host"), 600);
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.api.http_addr = SocketAddr::from(([127, 0, 0, 1], 1));
        new.history.max_age = Duration::from_secs(3600);
        assert_eq!(old.restart_only_changes(&new), vec!["api"]);
    }
}

//! The local API: HTTP/JSON (axum) and gRPC (tonic) over the same state. Both answer from the
//! history and the ingestor; neither owns anything.

pub mod answers;
pub mod conn;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod migrations;
pub mod series;
pub mod ui;

use std::sync::Arc;
use std::time::Instant;

use augur_proto::NodeName;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::history::History;
use crate::ingest::{Ingestor, SubmitError};
use crate::stats::Stats;

/// What the API handlers can reach: handles, not the tasks' state. A handler takes the part it
/// uses (`State<History>`, `State<Arc<Stats>>`, ...: see the `FromRef` impls below).
#[derive(Clone, Debug)]
pub struct ApiState {
    pub node: Arc<NodeInfo>,
    pub history: History,
    pub ingestor: Ingestor,
    pub stats: Arc<Stats>,
    pub config: watch::Receiver<Arc<Config>>,
    pub predictions: crate::predict::Predictions,
    pub models: crate::models::ModelStore,
    /// The background trainer; None when the agent runs without one.
    pub trainer: Option<crate::models::Trainer>,
    pub fleet: Fleet,
    /// The fleet's service catalog, as this node holds it.
    pub catalog: crate::services::catalog::CatalogStore,
    /// The service instances running on this node.
    pub instances: Arc<parking_lot::RwLock<Vec<crate::services::runtime::InstanceView>>>,
    /// The routes this node's proxies serve.
    pub routes: Arc<parking_lot::RwLock<augur_proxy::Routes>>,
    /// What this node's proxies cannot do now.
    pub traffic_problems: Arc<parking_lot::RwLock<Vec<augur_mesh::TrafficProblem>>>,
    /// Tasks that ended unexpectedly (for `/healthz`).
    pub tasks: Arc<augur_mesh::tasks::TaskHealth>,
    /// This node's leases (voter and holder), when it is in a mesh.
    pub leases: Option<augur_mesh::leases::Leases>,
    /// The migrations this node coordinates, when it is in a mesh.
    pub migrations: Option<crate::migrate::executor::Migrations>,
    /// The cases this node's autonomy considers.
    pub autonomy: crate::migrate::autonomy::AutonomyView,
}

/// Who this agent is and where it listens.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node_name: NodeName,
    pub peer_id: String,
    pub started: Instant,
    /// The addresses actually bound (a configured port 0 becomes a real port).
    pub http_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
}

/// The fleet as the API shows it.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The mesh, when this node is in one.
    pub mesh: Option<augur_mesh::Mesh>,
    pub events: crate::fleet::events::EventLog,
}

macro_rules! state_part {
    ($($field:ident: $t:ty),*) => {$(
        impl axum::extract::FromRef<ApiState> for $t {
            fn from_ref(st: &ApiState) -> Self {
                st.$field.clone()
            }
        }
    )*};
}
state_part!(
    history: History,
    stats: Arc<Stats>,
    predictions: crate::predict::Predictions,
    models: crate::models::ModelStore,
    fleet: Fleet,
    catalog: crate::services::catalog::CatalogStore
);

/// Connection counters of the HTTP and gRPC listeners.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    pub http: Arc<conn::ConnStats>,
    pub grpc: Arc<conn::ConnStats>,
}

/// An API failure; one conversion each to an HTTP response and a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body exceeds {limit} bytes (api.max_body); split it into smaller batches")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The history's storage is failing (a full disk): HTTP 507.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The client sent its request too slowly: HTTP 408.
    #[error("{0}")]
    RequestTimeout(String),
    /// Not signed by a credential this node trusts: HTTP 403.
    #[error("{0}")]
    Forbidden(String),
    /// Older than what this node holds: HTTP 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        if matches!(e, SubmitError::Storage(_)) {
            ApiError::InsufficientStorage(e.to_string())
        } else if e.is_retryable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<augur_orchestrate::lease::proposer::Failure> for ApiError {
    /// A lease refused for the fleet's state (busy, hold-down, budget) is a conflict (409);
    /// voters out of reach or out of step are a 503.
    fn from(f: augur_orchestrate::lease::proposer::Failure) -> Self {
        if f.is_conflict() {
            ApiError::Conflict(f.to_string())
        } else {
            ApiError::Unavailable(f.to_string())
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            ApiError::PayloadTooLarge { .. } => tonic::Status::resource_exhausted(msg),
            ApiError::Unavailable(_) | ApiError::InsufficientStorage(_) => {
                tonic::Status::unavailable(msg)
            }
            ApiError::RequestTimeout(_) => tonic::Status::deadline_exceeded(msg),
            ApiError::Forbidden(_) => tonic::Status::permission_denied(msg),
            ApiError::Conflict(_) => tonic::Status::failed_precondition(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

/// The agent's status, shared by `GET /v1/status`, gRPC `Status` and `augur status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node_name: String,
    pub peer_id: String,
    pub version: String,
    pub uptime_s: u64,
    pub resources: u64,
    pub samples_stored: u64,
    pub samples_accepted: u64,
    pub samples_rejected: u64,
    pub history_bytes: u64,
    pub http_addr: String,
    pub grpc_addr: String,
}

impl ApiState {
    /// The latest prediction of a resource; an unknown resource, or one without any prediction yet,
    /// is NotFound (never a zero probability).
    pub fn prediction(&self, id: &str) -> Result<crate::predict::PredictionView, ApiError> {
        let id =
            augur_proto::ResourceId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.predictions.get(&id).ok_or_else(|| {
            if self.history.resource(&id).is_some() {
                ApiError::NotFound(format!(
                    "no prediction for {id} yet; it comes with its next sample"
                ))
            } else {
                ApiError::NotFound(format!(
                    "unknown resource {id}; GET /v1/resources lists the known ones"
                ))
            }
        })
    }

    pub fn status(&self) -> Status {
        let (resources, samples, bytes) = self.history.totals();
        Status {
            node_name: self.node.node_name.to_string(),
            peer_id: self.node.peer_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.node.started.elapsed().as_secs(),
            resources,
            samples_stored: samples,
            samples_accepted: self.stats.accepted_total(),
            samples_rejected: self.stats.rejected_total(),
            history_bytes: bytes,
            http_addr: self.node.http_addr.to_string(),
            grpc_addr: self.node.grpc_addr.to_string(),
        }
    }
}

impl From<crate::services::catalog::CatalogError> for ApiError {
    fn from(e: crate::services::catalog::CatalogError) -> Self {
        use crate::services::catalog::CatalogError as E;
        let msg = e.to_string();
        match e {
            E::Unauthorized(_) => ApiError::Forbidden(msg),
            E::Invalid(_) | E::Malformed(_) => ApiError::BadRequest(msg),
            E::Stale { .. } => ApiError::Conflict(msg),
            E::Storage { .. } => ApiError::InsufficientStorage(msg),
        }
    }
}

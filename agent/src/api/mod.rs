//! The local API: HTTP/JSON (axum) and gRPC (tonic) over the same state. Both answer from the
//! history and the ingestor; neither owns anything.

pub mod conn;
pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Instant;

use augur_proto::NodeName;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::history::History;
use crate::history::writer::{Ingestor, SubmitError};
use crate::ingest::{Rejection, validate_proto, validate_record};
use crate::sample::{Sample, UnixMicros};
use crate::stats::{Source, Stats};

/// What the API handlers can reach: handles, not the tasks' state.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub node_name: NodeName,
    pub peer_id: String,
    pub started: Instant,
    pub history: History,
    pub ingestor: Ingestor,
    pub stats: Arc<Stats>,
    pub config: watch::Receiver<Arc<Config>>,
    /// The addresses actually bound (a configured port 0 becomes a real port).
    pub http_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    pub predictions: crate::predict::Predictions,
    pub models: crate::models::ModelStore,
    /// The background trainer; None when the agent runs without one.
    pub trainer: Option<crate::models::Trainer>,
    /// The fleet mesh, when this node is in one.
    pub mesh: Option<augur_mesh::Mesh>,
    pub events: crate::fleet::EventLog,
    /// Connection counters of the two listeners.
    pub connections: Connections,
    /// The prediction stage's memory and refusals.
    pub predict_stats: crate::predict::PredictStats,
}

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
            ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

/// One refused sample in a push answer.
#[derive(Clone, Debug, Serialize)]
pub struct RejectedItem {
    pub index: usize,
    pub reason: &'static str,
    pub error: String,
}

/// The answer to a push.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushOutcome {
    pub accepted: usize,
    pub rejected: usize,
    /// The first rejections, at most [`MAX_REPORTED_ERRORS`].
    pub errors: Vec<RejectedItem>,
}

pub const MAX_REPORTED_ERRORS: usize = 100;

impl PushOutcome {
    fn refuse(&mut self, index: usize, r: Rejection) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(RejectedItem {
                index,
                reason: r.reason.as_str(),
                error: r.message,
            });
        }
    }
}

/// Validates, admits and collects samples; the caller submits `samples` afterwards.
#[derive(Debug)]
pub struct PushBatch<'a> {
    ingestor: &'a Ingestor,
    source: Source,
    now: UnixMicros,
    limits: crate::ingest::Limits,
    pub outcome: PushOutcome,
    pub samples: Vec<Sample>,
    /// The request index of each sample in `samples`.
    indices: Vec<usize>,
    /// Types of resources first seen in this batch: a batch cannot give one resource two types.
    types: std::collections::HashMap<augur_proto::ResourceId, augur_proto::ResourceType>,
}

impl<'a> PushBatch<'a> {
    pub fn new(ingestor: &'a Ingestor, source: Source) -> Self {
        Self {
            ingestor,
            source,
            now: UnixMicros::now(),
            limits: ingestor.limits(),
            outcome: PushOutcome::default(),
            samples: Vec::new(),
            indices: Vec::new(),
            types: std::collections::HashMap::new(),
        }
    }

    fn take(&mut self, index: usize, checked: Result<Sample, Rejection>) {
        let checked = checked
            .and_then(|s| match self.types.get(&s.resource_id) {
                Some(t) if *t != s.resource_type => Err(Rejection::new(
                    crate::ingest::RejectReason::TypeConflict,
                    format!(
                        "resource {} is of type {t} earlier in this batch, not {}",
                        s.resource_id, s.resource_type
                    ),
                )),
                _ => Ok(s),
            })
            .inspect_err(|r| self.ingestor.reject(self.source, r));
        match checked.and_then(|s| self.ingestor.admit(self.source, &s).map(|()| s)) {
            Ok(s) => {
                self.types
                    .entry(s.resource_id.clone())
                    .or_insert_with(|| s.resource_type.clone());
                self.samples.push(s);
                self.indices.push(index);
            }
            Err(r) => self.outcome.refuse(index, r),
        }
    }

    pub fn record(&mut self, index: usize, rec: Result<augur_proto::TelemetryRecord, Rejection>) {
        let checked = rec.and_then(|r| validate_record(r, &self.limits, self.now));
        self.take(index, checked);
    }

    pub fn proto(&mut self, index: usize, s: augur_proto::v1::TelemetrySample) {
        let checked = validate_proto(s, &self.limits, self.now);
        self.take(index, checked);
    }

    /// Submits what passed and waits until it is durable.
    pub async fn commit(mut self) -> Result<PushOutcome, ApiError> {
        let samples = std::mem::take(&mut self.samples);
        let written = self.ingestor.submit(self.source, samples).await?;
        self.outcome.accepted += written.accepted;
        // Refused at write time (another push gave the resource a type first, or its metric names
        // ran out): listed like every other refusal, so the answer is 422 and says which and why.
        for (i, rejection) in written.refused {
            self.outcome.refuse(self.indices[i], rejection);
        }
        Ok(self.outcome)
    }
}

/// The agent's status, shared by `GET /v1/status`, gRPC `Status` and `augur status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node_name: String,
    pub peer_id: String,
    pub version: &'static str,
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
            node_name: self.node_name.to_string(),
            peer_id: self.peer_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            resources,
            samples_stored: samples,
            samples_accepted: self.stats.accepted_total(),
            samples_rejected: self.stats.rejected_total(),
            history_bytes: bytes,
            http_addr: self.http_addr.to_string(),
            grpc_addr: self.grpc_addr.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::writer;

    fn record(id: &str, ty: &str) -> augur_proto::TelemetryRecord {
        serde_json::from_value(serde_json::json!({
            "resource_id": id, "resource_type": ty, "metrics": {"x": 1.0}
        }))
        .expect("record")
    }

    /// Two pushes give one new resource two types at once: both pass admission (the registry
    /// does not know the resource yet); the writer keeps the first and refuses the second, and
    /// that push's answer lists the refusal (before: 200 with a lower `accepted` and no error).
    #[tokio::test]
    async fn a_type_conflict_found_at_write_time_is_reported_as_a_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(dir.path(), 1 << 20, 10).expect("history");
        let stats = Arc::new(Stats::new());
        let (_tx_cfg, rx_cfg) = watch::channel(Arc::new(Config::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let ingestor = Ingestor::new(tx, history.clone(), stats.clone(), rx_cfg.clone());
        let mut a = PushBatch::new(&ingestor, Source::Http);
        a.record(0, Ok(record("web-1", "service")));
        let mut b = PushBatch::new(&ingestor, Source::Http);
        b.record(0, Ok(record("other", "service")));
        b.record(1, Ok(record("web-1", "host")));
        assert_eq!((a.samples.len(), b.samples.len()), (1, 2), "both admitted");
        let (tx_committed, _rx_committed) = tokio::sync::mpsc::channel(16);
        let shutdown = tokio_util::sync::CancellationToken::new();
        // Both queued before the writer runs: one transaction, the first push wins.
        let (ra, rb, ()) = tokio::join!(a.commit(), b.commit(), async {
            tokio::task::yield_now().await;
            tokio::spawn(writer::run(
                history.clone(),
                rx,
                tx_committed,
                rx_cfg,
                stats.clone(),
                shutdown.clone(),
            ));
        });
        let (ra, rb) = (ra.expect("a commits"), rb.expect("b commits"));
        assert_eq!((ra.accepted, ra.rejected), (1, 0));
        assert_eq!((rb.accepted, rb.rejected), (1, 1));
        assert_eq!(rb.errors.len(), 1);
        assert_eq!(rb.errors[0].index, 1);
        assert_eq!(rb.errors[0].reason, "type_conflict");
        shutdown.cancel();
    }
}

//! The handle every source submits samples with: counts refusals, checks a sample against the
//! stored resources (`crate::accept`'s rules), queues batches for the history's writer and, for the
//! API, waits until they are durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::Limits;
use crate::accept::{RejectReason, Rejection};
use crate::config::Config;
use crate::history::writer::{WriteRequest, Written};
use crate::history::{History, StoreError};
use crate::sample::Sample;
use crate::stats::{Source, Stats};

/// Why a submission did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the write queue stayed full for {0:?}; the agent is overloaded, retry later")]
    Overloaded(Duration),
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// Writes fail under the history (a full disk): refused until the storage recovers, which
    /// the writer notices by itself.
    #[error(
        "the history cannot be written ({0}); nothing was stored; free space in the data \
         directory and retry: the agent resumes by itself"
    )]
    Storage(String),
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl SubmitError {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SubmitError::Overloaded(_) | SubmitError::ShuttingDown | SubmitError::Storage(_)
        )
    }
}

/// The handle every source uses to validate and submit samples.
#[derive(Clone, Debug)]
pub struct Ingestor {
    tx: mpsc::Sender<WriteRequest>,
    history: History,
    stats: Arc<Stats>,
    config: watch::Receiver<Arc<Config>>,
}

impl Ingestor {
    pub fn new(
        tx: mpsc::Sender<WriteRequest>,
        history: History,
        stats: Arc<Stats>,
        config: watch::Receiver<Arc<Config>>,
    ) -> Self {
        Self {
            tx,
            history,
            stats,
            config,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits::from_config(&self.config.borrow())
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Counts a refusal.
    pub fn reject(&self, source: Source, rejection: &Rejection) {
        self.stats.rejected(source, rejection.reason);
        tracing::debug!(source = source.as_str(), %rejection, "sample refused");
    }

    /// Checks a validated sample against the registry (type, capacity); counts a refusal.
    pub fn admit(&self, source: Source, sample: &Sample) -> Result<(), Rejection> {
        let max = self.config.borrow().ingest.max_resources;
        self.history
            .admit(sample, max)
            .inspect_err(|r| self.reject(source, r))
    }

    /// Queues samples and waits until they are durable.
    pub async fn submit(
        &self,
        source: Source,
        samples: Vec<Sample>,
    ) -> Result<Written, SubmitError> {
        if samples.is_empty() {
            return Ok(Written::default());
        }
        let n = samples.len();
        if let Some(f) = self.history.failure() {
            for _ in 0..n {
                self.stats.rejected(source, RejectReason::StorageFailure);
            }
            return Err(SubmitError::Storage(f.error));
        }
        let (done, rx_done) = oneshot::channel();
        let timeout = self.config.borrow().ingest.enqueue_timeout;
        let req = WriteRequest {
            source,
            samples,
            done: Some(done),
        };
        match self.tx.send_timeout(req, timeout).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                for _ in 0..n {
                    self.stats.rejected(source, RejectReason::Overloaded);
                }
                return Err(SubmitError::Overloaded(timeout));
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(SubmitError::ShuttingDown),
        }
        match rx_done.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) if e.is_storage_failure() => {
                for _ in 0..n {
                    self.stats.rejected(source, RejectReason::StorageFailure);
                }
                Err(SubmitError::Storage(e.to_string()))
            }
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::ShuttingDown),
        }
    }

    /// Queues samples without waiting for them (collectors); a full queue drops them and counts.
    pub fn submit_nowait(&self, source: Source, samples: Vec<Sample>) {
        let n = samples.len();
        if n == 0 {
            return;
        }
        if self.history.failure().is_some() {
            for _ in 0..n {
                self.stats.rejected(source, RejectReason::StorageFailure);
            }
            return;
        }
        let req = WriteRequest {
            source,
            samples,
            done: None,
        };
        if self.tx.try_send(req).is_err() {
            for _ in 0..n {
                self.stats.rejected(source, RejectReason::Overloaded);
            }
            tracing::warn!(
                source = source.as_str(),
                samples = n,
                "write queue full; samples dropped"
            );
        }
    }
}

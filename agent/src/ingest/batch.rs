//! One push (an HTTP body, a gRPC stream): each sample validated (`super`), checked against the
//! samples before it in the push and against the stored resources (`crate::accept`), then
//! submitted together; the answer lists every refusal with its index and reason.

use std::collections::HashMap;

use augur_proto::{ResourceId, ResourceType};
use serde::Serialize;

use super::{Ingestor, Limits, SubmitError, validate_proto, validate_record};
use crate::accept::{Rejection, TypeFrom, same_type};
use crate::sample::{Sample, UnixMicros};
use crate::stats::Source;

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
    limits: Limits,
    pub outcome: PushOutcome,
    pub samples: Vec<Sample>,
    /// The request index of each sample in `samples`.
    indices: Vec<usize>,
    /// Types of resources first seen in this batch: a batch cannot give one resource two types.
    types: HashMap<ResourceId, ResourceType>,
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
            types: HashMap::new(),
        }
    }

    fn take(&mut self, index: usize, checked: Result<Sample, Rejection>) {
        let checked = checked
            .and_then(|s| match self.types.get(&s.resource_id) {
                Some(t) => same_type(
                    &s.resource_id,
                    t,
                    TypeFrom::EarlierInBatch,
                    &s.resource_type,
                )
                .map(|()| s),
                None => Ok(s),
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
    pub async fn commit(mut self) -> Result<PushOutcome, SubmitError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tokio::sync::watch;

    use crate::config::Config;
    use crate::history::{History, writer};
    use crate::stats::Stats;

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
                crate::systemd::Liveness::new().register("history.writer", writer::BEAT_EVERY),
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

//! The one task that writes history: it gathers queued batches into a single transaction (group
//! commit), answers each submitter once its samples are durable, and runs retention on a timer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{History, StoreError};
use crate::accept::{RejectReason, Rejection};
use crate::config::Config;
use crate::sample::{Sample, UnixMicros};
use crate::stats::{Source, Stats};
use crate::systemd::Heartbeat;

/// Most samples gathered into one transaction.
const MAX_GROUP_SAMPLES: usize = 100_000;

/// A batch to make durable. `done` hears how many samples were written, once they are on disk.
#[derive(Debug)]
pub struct WriteRequest {
    pub source: Source,
    pub samples: Vec<Sample>,
    pub done: Option<oneshot::Sender<Result<Written, Arc<StoreError>>>>,
}

/// What became of a submission once committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Samples now durable.
    pub accepted: usize,
    /// Samples refused at write time, by position in the submitted order: their resource had
    /// meanwhile been given another type (by a concurrent submission), or its distinct metric
    /// names would pass `ingest.max_metric_names`.
    pub refused: Vec<(usize, Rejection)>,
}

/// While writes fail, how often the writer tries to reopen the store.
const RECOVERY_EVERY: Duration = Duration::from_secs(2);

/// How often the writer beats while idle (the watchdog's [`Heartbeat`]); a commit or retention
/// pass that never returns stops its beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Runs until `shutdown`, then writes everything still queued and returns.
pub async fn run(
    history: History,
    mut rx_writes: mpsc::Receiver<WriteRequest>,
    tx_committed: mpsc::Sender<Vec<Arc<Sample>>>,
    config: watch::Receiver<Arc<Config>>,
    stats: Arc<Stats>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    let mut beat = tokio::time::interval(BEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention = tokio::time::interval(config.borrow().history.retention_interval);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recovery = tokio::time::interval(RECOVERY_EVERY);
    recovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = beat.tick() => heartbeat.beat(),
            _ = recovery.tick(), if history.failure().is_some() => {
                let h = history.clone();
                match tokio::task::spawn_blocking(move || h.recover(Duration::from_secs(1))).await {
                    Ok(Ok(())) => {
                        stats.storage_recoveries.inc();
                        tracing::warn!("history storage writable again; writes resumed");
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "history storage still failing"),
                    Err(e) => tracing::error!(error = %e, "history recovery panicked"),
                }
            }
            req = rx_writes.recv() => {
                let Some(first) = req else {
                    // Every source has stopped (they stop first): nothing more will come, but
                    // the writer's own group has not been stopped yet, and a task that returns
                    // before its stop is one that ended unexpectedly.
                    shutdown.cancelled().await;
                    break;
                };
                let mut group = vec![first];
                let mut n = group[0].samples.len();
                while n < MAX_GROUP_SAMPLES {
                    match rx_writes.try_recv() {
                        Ok(r) => {
                            n += r.samples.len();
                            group.push(r);
                        }
                        Err(_) => break,
                    }
                }
                history.set_max_metric_names(config.borrow().ingest.max_metric_names);
                commit(&history, group, &tx_committed, &stats).await;
                heartbeat.beat();
            }
            _ = retention.tick(), if history.failure().is_none() => {
                let cfg = config.borrow().clone();
                let h = history.clone();
                let result = tokio::task::spawn_blocking(move || {
                    h.apply_retention(UnixMicros::now(), cfg.history.max_age, cfg.history.max_size.as_u64())
                })
                .await;
                match result {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        stats.retention_deleted.inc_by(n);
                        tracing::debug!(deleted = n, "retention");
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "retention failed; will retry"),
                    Err(e) => tracing::error!(error = %e, "retention task panicked"),
                }
                let want = config.borrow().history.retention_interval;
                if retention.period() != want {
                    retention = tokio::time::interval(want);
                    retention.reset();
                }
            }
        }
    }
    // Drain: everything accepted into the queue is written before the agent exits.
    rx_writes.close();
    let mut rest = Vec::new();
    while let Some(r) = rx_writes.recv().await {
        rest.push(r);
    }
    if !rest.is_empty() {
        commit(&history, rest, &tx_committed, &stats).await;
    }
    tracing::debug!("history writer stopped");
}

async fn commit(
    history: &History,
    group: Vec<WriteRequest>,
    tx_committed: &mpsc::Sender<Vec<Arc<Sample>>>,
    stats: &Stats,
) {
    let mut samples = Vec::with_capacity(group.iter().map(|r| r.samples.len()).sum());
    let mut replies = Vec::with_capacity(group.len());
    for r in group {
        replies.push((r.source, r.samples.len(), r.done));
        samples.extend(r.samples);
    }
    let h = history.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || h.write(&samples))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Corrupt {
                resource: String::new(),
                reason: format!("writer panicked: {e}"),
            })
        });
    stats
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(mut outcome) => {
            // Predictions follow the committed samples; a stage that falls behind loses samples
            // (counted) rather than slowing ingestion.
            let committed = std::mem::take(&mut outcome.committed);
            let n_committed = committed.len() as u64;
            if !committed.is_empty() && tx_committed.try_send(committed).is_err() {
                stats.predict_dropped.inc_by(n_committed);
            }
            let mut refused = outcome.refused.into_iter().peekable();
            let mut offset = 0;
            for (source, n, done) in replies {
                let mut lost = Vec::new();
                while let Some((i, r)) = refused.next_if(|(i, _)| *i < offset + n) {
                    stats.rejected(source, r.reason);
                    if done.is_none() {
                        tracing::debug!(source = source.as_str(), rejection = %r, "collected sample refused");
                    }
                    lost.push((i - offset, r));
                }
                offset += n;
                stats.accepted(source, (n - lost.len()) as u64);
                if let Some(done) = done {
                    let _ = done.send(Ok(Written {
                        accepted: n - lost.len(),
                        refused: lost,
                    }));
                }
            }
        }
        Err(e) => {
            if e.is_storage_failure() {
                if history.failure().is_none() {
                    tracing::error!(error = %e, "history storage failing (disk full?); refusing writes until it recovers");
                }
                history.fail(&e, crate::sample::UnixMicros::now().0 as u64 / 1000);
            } else {
                tracing::error!(error = %e, "history write failed");
            }
            let e = Arc::new(e);
            for (source, n, done) in replies {
                match done {
                    // The submitter hears why; nothing it sent was acknowledged.
                    Some(done) => {
                        let _ = done.send(Err(e.clone()));
                    }
                    // A collector's samples are lost: counted.
                    None => {
                        for _ in 0..n {
                            stats.rejected(source, RejectReason::StorageFailure);
                        }
                    }
                }
            }
        }
    }
}

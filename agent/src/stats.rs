//! The agent's own counters, exposed on `GET /metrics` in OpenMetrics text. Each event is counted
//! where it happens; nothing here decides anything. Values read at scrape time come from a
//! collector registered once (`crate::api::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::accept::RejectReason;

/// Where a sample came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Host,
    Log,
    Scrape,
    Http,
    Grpc,
    /// The services' instances on this node (health checks, process CPU and memory).
    Instance,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Host => "host",
            Source::Log => "log",
            Source::Scrape => "scrape",
            Source::Http => "http",
            Source::Grpc => "grpc",
            Source::Instance => "instance",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    source: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// All counters of one agent.
#[derive(Debug)]
pub struct Stats {
    registry: Mutex<Registry>,
    accepted: Family<SourceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    accepted_total: AtomicU64,
    rejected_total: AtomicU64,
    pub commit_seconds: Histogram,
    pub retention_deleted: Counter,
    pub predict_dropped: Counter,
    /// Times the history store was reopened after a storage failure and writes resumed.
    pub storage_recoveries: Counter,
    collect_errors: Family<NameLabels, Counter>,
    log_lines_matched: Family<NameLabels, Counter>,
    scrape_errors: Family<NameLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    trainings: Family<TrainingLabels, Counter>,
    training_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    model_updates_refused: Family<ReasonLabels, Counter>,
    model_candidates: Family<TrainingLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrainingLabels {
    resource_type: String,
    outcome: &'static str,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("augur");
        let accepted = Family::<SourceLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let retention_deleted = Counter::default();
        let predict_dropped = Counter::default();
        let storage_recoveries = Counter::default();
        let collect_errors = Family::<NameLabels, Counter>::default();
        let log_lines_matched = Family::<NameLabels, Counter>::default();
        let scrape_errors = Family::<NameLabels, Counter>::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let trainings = Family::<TrainingLabels, Counter>::default();
        let training_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let model_updates_refused = Family::<ReasonLabels, Counter>::default();
        let model_candidates = Family::<TrainingLabels, Counter>::default();
        registry.register(
            "model_updates_refused",
            "Peers' model updates refused by the models (engine, shape, non_finite, oversized, replayed, undecodable, queue_full); the mesh counts those refused before (augur_mesh_model_updates_refused)",
            model_updates_refused.clone(),
        );
        registry.register(
            "model_candidates",
            "Models merged from the fleet's updates, by resource type and outcome (adopted, rejected: worse on this node's held-out history, cold_start: adopted with no local model to compare)",
            model_candidates.clone(),
        );
        registry.register(
            "model_trainings",
            "Background model trainings, by resource type and outcome (trained or skipped)",
            trainings.clone(),
        );
        registry.register(
            "model_training_seconds",
            "Wall time spent training models (one thread)",
            training_seconds.clone(),
        );
        registry.register(
            "samples_accepted",
            "Samples written to durable history, by source",
            accepted.clone(),
        );
        registry.register(
            "samples_rejected",
            "Samples refused, by source and reason",
            rejected.clone(),
        );
        registry.register(
            "history_commit_seconds",
            "Time to make one batch durable",
            commit_seconds.clone(),
        );
        registry.register(
            "history_retention_deleted",
            "Samples deleted by retention (age or size)",
            retention_deleted.clone(),
        );
        registry.register(
            "history_storage_recoveries",
            "Times the history store was reopened after a storage failure (a full disk) and writes resumed",
            storage_recoveries.clone(),
        );
        registry.register(
            "predict_dropped",
            "Committed samples the prediction stage could not keep up with",
            predict_dropped.clone(),
        );
        registry.register(
            "collect_errors",
            "Collector errors, by collector",
            collect_errors.clone(),
        );
        registry.register(
            "log_lines_matched",
            "Log lines matching an error pattern, by file",
            log_lines_matched.clone(),
        );
        registry.register(
            "scrape_errors",
            "Failed scrapes, by target URL",
            scrape_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads on SIGHUP, by outcome",
            reloads.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            accepted,
            rejected,
            accepted_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            commit_seconds,
            retention_deleted,
            predict_dropped,
            storage_recoveries,
            collect_errors,
            log_lines_matched,
            scrape_errors,
            reloads,
            trainings,
            training_seconds,
            model_updates_refused,
            model_candidates,
        }
    }

    /// A peer's model update refused by the models, for `reason`.
    pub fn model_update_refused(&self, reason: &'static str) {
        self.model_updates_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Peers' model updates refused for `reason` so far.
    pub fn model_updates_refused(&self, reason: &'static str) -> u64 {
        self.model_updates_refused
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// A merged candidate's fate: `adopted`, `rejected`, `cold_start` or `adopted_parts` (the
    /// network rejected, another part kept), and each part's (`forest_*`, `calibration_*`,
    /// `patterns_adopted`).
    pub fn model_candidate(&self, resource_type: &str, outcome: &'static str) {
        self.model_candidates
            .get_or_create(&TrainingLabels {
                resource_type: resource_type.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn training(&self, resource_type: &str, trained: bool, took: std::time::Duration) {
        self.trainings
            .get_or_create(&TrainingLabels {
                resource_type: resource_type.to_owned(),
                outcome: if trained { "trained" } else { "skipped" },
            })
            .inc();
        self.training_seconds.inc_by(took.as_secs_f64());
    }

    pub fn accepted(&self, source: Source, n: u64) {
        self.accepted
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc_by(n);
        self.accepted_total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn rejected(&self, source: Source, reason: RejectReason) {
        self.rejected
            .get_or_create(&RejectLabels {
                source: source.as_str(),
                reason: reason.as_str(),
            })
            .inc();
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted_total(&self) -> u64 {
        self.accepted_total.load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }

    pub fn collect_error(&self, collector: &str) {
        self.collect_errors
            .get_or_create(&NameLabels {
                name: collector.to_owned(),
            })
            .inc();
    }

    pub fn log_lines_matched(&self, path: &str, n: u64) {
        self.log_lines_matched
            .get_or_create(&NameLabels {
                name: path.to_owned(),
            })
            .inc_by(n);
    }

    pub fn scrape_error(&self, url: &str) {
        self.scrape_errors
            .get_or_create(&NameLabels {
                name: url.to_owned(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Adds the values read at scrape time (once, at start).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.lock().register_collector(collector);
    }

    /// Renders every metric as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_by_source_and_reason() {
        let s = Stats::new();
        s.rejected(Source::Http, RejectReason::NonFinite);
        s.rejected(Source::Http, RejectReason::NonFinite);
        s.accepted(Source::Grpc, 5);
        let text = s.render();
        assert!(
            text.contains(r#"augur_samples_rejected_total{source="http",reason="non_finite"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"augur_samples_accepted_total{source="grpc"} 5"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(s.rejected_total(), 2);
    }
}

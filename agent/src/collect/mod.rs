//! Collectors: the sources the agent pulls from itself (host metrics, log files, Prometheus
//! endpoints). Each runs as its own task and submits validated samples through the [`Ingestor`].
//!
//! [`Ingestor`]: crate::ingest::Ingestor

pub mod host;
pub mod logs;
pub mod scrape;

//! Collectors: the sources the agent pulls from itself (host metrics, log files, Prometheus
//! endpoints). Each runs as its own task and submits validated samples through the [`Ingestor`].
//!
//! [`Ingestor`]: crate::history::writer::Ingestor

pub mod host;
pub mod logs;
pub mod scrape;

//! Log tailing: follows configured files and counts, per interval, the lines that match any of a
//! file's patterns. A count (zero included) becomes one metric of one resource per interval.
//!
//! Rotation: when the path names a new file (rename-and-create) the rest of the old file is read
//! first, then the new one from its start; when the file shrinks (copytruncate) reading restarts at
//! zero. A file that does not exist yet is waited for. On start the file is read from its end:
//! old lines were counted before, or are history this agent did not see live.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use augur_proto::{HOST_RESOURCE_TYPE, NodeName, ResourceId, ResourceType};
use regex::RegexSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogConfig};
use crate::ingest::Ingestor;
use crate::sample::{Sample, UnixMicros};
use crate::stats::Source;

/// Most bytes read from one file per interval; the rest waits for the next interval.
const MAX_READ_PER_TICK: usize = 16 << 20;
/// Longest line kept while waiting for its newline; longer lines are counted in pieces.
const MAX_PARTIAL_LINE: usize = 64 << 10;

/// Follows one file.
#[derive(Debug)]
pub struct Tailer {
    path: PathBuf,
    patterns: RegexSet,
    file: Option<File>,
    identity: Option<(u64, u64)>,
    offset: u64,
    partial: Vec<u8>,
    first_open: bool,
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (
        0,
        meta.created()
            .map(|t| t.elapsed().map(|d| d.as_secs()).unwrap_or(0))
            .unwrap_or(0),
    )
}

impl Tailer {
    pub fn new(path: &Path, patterns: &[String]) -> Result<Self, regex::Error> {
        Ok(Self {
            path: path.to_owned(),
            patterns: RegexSet::new(patterns)?,
            file: None,
            identity: None,
            offset: 0,
            partial: Vec::new(),
            first_open: true,
        })
    }

    /// Reads what was appended since the last poll and returns the number of matching lines.
    pub fn poll(&mut self) -> std::io::Result<u64> {
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A file that appears later is new: it is read from its start.
                self.first_open = false;
                None
            }
            Err(e) => return Err(e),
        };
        self.poll_seen(current)
    }

    /// [`Tailer::poll`] with the path's metadata as seen at the start: the file may have grown
    /// since, and what it holds beyond that length is not a sign of truncation.
    fn poll_seen(&mut self, current: Option<std::fs::Metadata>) -> std::io::Result<u64> {
        let mut matched = 0;
        let rotated = match (&current, self.identity) {
            (Some(meta), Some(id)) => identity(meta) != id,
            _ => false,
        };
        if self.file.is_some() {
            if rotated {
                // Whatever the old file still holds comes first (rename rotation keeps it
                // readable).
                matched += self.read_available()?;
                matched += self.flush_partial();
                self.file = None;
                self.identity = None;
            } else if let Some(meta) = &current
                && meta.len() < self.offset
            {
                // Truncated in place (shorter than what was read before this poll): start over.
                self.offset = 0;
                self.partial.clear();
                if let Some(f) = self.file.as_mut() {
                    f.seek(SeekFrom::Start(0))?;
                }
                matched += self.read_available()?;
            } else {
                matched += self.read_available()?;
            }
        }
        if self.file.is_none()
            && let Some(meta) = current
        {
            let mut f = File::open(&self.path)?;
            self.offset = if self.first_open { meta.len() } else { 0 };
            f.seek(SeekFrom::Start(self.offset))?;
            self.file = Some(f);
            self.identity = Some(identity(&meta));
            self.first_open = false;
            matched += self.read_available()?;
        }
        Ok(matched)
    }

    fn read_available(&mut self) -> std::io::Result<u64> {
        let Some(f) = self.file.as_mut() else {
            return Ok(0);
        };
        let mut buf = Vec::new();
        let n = f.take(MAX_READ_PER_TICK as u64).read_to_end(&mut buf)?;
        self.offset += n as u64;
        let mut matched = 0;
        let mut start = 0;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                if self.partial.is_empty() {
                    matched += self.count_line(&buf[start..i]);
                } else {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&buf[start..i]);
                    matched += self.count_line(&line);
                }
                start = i + 1;
            }
        }
        self.partial.extend_from_slice(&buf[start..]);
        if self.partial.len() > MAX_PARTIAL_LINE {
            matched += self.flush_partial();
        }
        Ok(matched)
    }

    fn flush_partial(&mut self) -> u64 {
        let line = std::mem::take(&mut self.partial);
        if line.is_empty() {
            0
        } else {
            self.count_line(&line)
        }
    }

    fn count_line(&self, line: &[u8]) -> u64 {
        u64::from(self.patterns.is_match(&String::from_utf8_lossy(line)))
    }
}

struct Job {
    config: LogConfig,
    tailer: Tailer,
    resource_id: ResourceId,
    resource_type: ResourceType,
}

fn build_jobs(node: &NodeName, logs: &[LogConfig]) -> Vec<Job> {
    logs.iter()
        .filter_map(|l| {
            let tailer = match Tailer::new(&l.path, &l.patterns) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(path = %l.path.display(), error = %e, "log patterns invalid; file not followed");
                    return None;
                }
            };
            Some(Job {
                config: l.clone(),
                tailer,
                resource_id: l
                    .resource_id
                    .clone()
                    .unwrap_or_else(|| ResourceId::parse(node.as_str()).expect("a node name is a valid resource id")),
                resource_type: l
                    .resource_type
                    .clone()
                    .unwrap_or_else(|| ResourceType::parse(HOST_RESOURCE_TYPE).expect("'host' is valid")),
            })
        })
        .collect()
}

/// Follows the configured files until `shutdown`; a reload rebuilds the set, keeping the position
/// of files whose configuration did not change.
pub async fn run(
    node: NodeName,
    ingestor: Ingestor,
    mut config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    let mut jobs = build_jobs(&node, &config.borrow().logs);
    let mut period = config.borrow().interval_of(HOST_RESOURCE_TYPE);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Ok(()) = config.changed() => {
                let cfg = config.borrow().clone();
                let mut old: Vec<Job> = std::mem::take(&mut jobs);
                for fresh in build_jobs(&node, &cfg.logs) {
                    match old.iter().position(|j| j.config == fresh.config) {
                        Some(i) => jobs.push(old.swap_remove(i)),
                        None => jobs.push(fresh),
                    }
                }
                let want = cfg.interval_of(HOST_RESOURCE_TYPE);
                if want != period {
                    period = want;
                    ticker = tokio::time::interval(period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
            }
            _ = ticker.tick() => {
                if jobs.is_empty() {
                    continue;
                }
                let ts = UnixMicros::now();
                let mut polled = std::mem::take(&mut jobs);
                let results = tokio::task::spawn_blocking(move || {
                    let counts: Vec<std::io::Result<u64>> = polled.iter_mut().map(|j| j.tailer.poll()).collect();
                    (polled, counts)
                })
                .await;
                let Ok((polled, counts)) = results else {
                    ingestor.stats().collect_error("logs");
                    continue;
                };
                jobs = polled;
                let mut samples = Vec::new();
                for (job, count) in jobs.iter().zip(counts) {
                    match count {
                        Ok(n) => {
                            let path = job.config.path.display().to_string();
                            ingestor.stats().log_lines_matched(&path, n);
                            let sample = Sample {
                                ts,
                                resource_id: job.resource_id.clone(),
                                resource_type: job.resource_type.clone(),
                                metrics: BTreeMap::from([(job.config.metric.clone(), n as f64)]),
                                event: None,
                                labels: BTreeMap::new(),
                            };
                            if ingestor.admit(Source::Log, &sample).is_ok() {
                                samples.push(sample);
                            }
                        }
                        Err(e) => {
                            ingestor.stats().collect_error("logs");
                            tracing::warn!(path = %job.config.path.display(), error = %e, "cannot read log file");
                        }
                    }
                }
                ingestor.submit_nowait(Source::Log, samples);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    #[test]
    fn counts_new_matching_lines_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "ERROR before start\n");
        let mut t = Tailer::new(&log, &["ERROR".into(), "(?i)panic".into()]).expect("tailer");
        assert_eq!(
            t.poll().expect("poll"),
            0,
            "history before start is not counted"
        );
        append(&log, "ok\nERROR one\nthread PANICKED\nERROR par");
        assert_eq!(t.poll().expect("poll"), 2);
        append(&log, "tial\n");
        assert_eq!(
            t.poll().expect("poll"),
            1,
            "a line split across polls counts once"
        );
    }

    /// A line appended between the poll's look at the file and its read is counted once: the
    /// file is then longer than the length seen, which is not a truncation (CI once counted the
    /// whole file again: 7 lines for 3).
    #[test]
    fn a_line_appended_while_polling_is_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "ERROR before start\n");
        let mut t = Tailer::new(&log, &["ERROR".into()]).expect("tailer");
        assert_eq!(t.poll().expect("poll"), 0);
        append(&log, "ERROR one\n");
        let seen = std::fs::metadata(&log).expect("metadata");
        append(&log, "ERROR two\n");
        assert_eq!(t.poll_seen(Some(seen)).expect("poll"), 2);
        assert_eq!(t.poll().expect("poll"), 0, "nothing is read twice");
    }

    #[test]
    fn survives_rename_rotation_without_losing_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "");
        let mut t = Tailer::new(&log, &["ERROR".into()]).expect("tailer");
        t.poll().expect("poll");
        append(&log, "ERROR a\n");
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rotate");
        append(
            &dir.path().join("app.log.1"),
            "ERROR late write to old file\n",
        );
        append(&log, "ERROR b\nERROR c\n");
        assert_eq!(t.poll().expect("poll"), 4);
        append(&log, "ERROR d\n");
        assert_eq!(t.poll().expect("poll"), 1);
    }

    #[test]
    fn survives_copytruncate_and_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        let mut t = Tailer::new(&log, &["ERROR".into()]).expect("tailer");
        assert_eq!(t.poll().expect("missing file is fine"), 0);
        append(&log, "ERROR x\nERROR y\n");
        assert_eq!(
            t.poll().expect("poll"),
            2,
            "a file created after start is read whole"
        );
        std::fs::write(&log, "").expect("truncate");
        append(&log, "ERROR z\n");
        assert_eq!(t.poll().expect("poll"), 1);
    }
}

//! History: a bounded in-memory window per resource (what the models read) over a durable on-disk
//! store (redb) with retention by age and size (what training and queries read).
//!
//! Storage is redb: pure Rust (no C toolchain, unlike SQLite), ACID with copy-on-write pages, so a
//! `kill -9` loses nothing that was committed, and MVCC readers that never block the single writer.
//! Samples are keyed by `(resource_id, ts_micros)`; a second sample of the same resource at the
//! same microsecond merges into the first, which makes retried pushes idempotent.

pub mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;

/// Hashes metric names, keyed per process (nobody can pick names that collide on purpose).
type NameHasher = foldhash::quality::RandomState;
/// A set of name hashes (already well mixed: a fast hasher suffices).
type NameSet = std::collections::HashSet<u64, foldhash::fast::RandomState>;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use augur_proto::{Event, ResourceId, ResourceType};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::accept::{self, RejectReason, Rejection, TypeFrom};
use crate::sample::{Sample, UnixMicros};

const SAMPLES: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("samples");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");

/// File name of the store inside the data directory.
pub const DB_FILE: &str = "history.redb";

/// A storage failure. The agent keeps running; the request that hit it gets a 500 / INTERNAL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history store: {0}")]
    Db(#[from] redb::Error),
    #[error("history store holds an undecodable record for {resource}: {reason}")]
    Corrupt { resource: String, reason: String },
    #[error("the history store is being reopened after a storage failure; retry in a few seconds")]
    Reopening,
}

impl StoreError {
    /// A failure of the storage under the database (a full disk, an I/O error): writes cannot
    /// succeed until the database is reopened, which [`History::recover`] does.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo) | StoreError::Reopening
        )
    }

    /// The disk is full (ENOSPC or EDQUOT underneath).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Db(redb::Error::Io(e)) => matches!(e.raw_os_error(), Some(28 | 122)),
            _ => false,
        }
    }
}

/// After a full disk, writes resume once the file system has this much free space.
pub const RESUME_FREE_BYTES: u64 = 8 << 20;

/// Free bytes (for unprivileged users) on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path.parent().unwrap_or(path);
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Writes are failing: why, and since when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageFailure {
    pub error: String,
    pub disk_full: bool,
    pub since_unix_ms: u64,
    /// Reopening attempts since it began.
    pub attempts: u64,
}

macro_rules! store_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
store_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What is kept about each resource, on disk and in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceMeta {
    pub resource_type: ResourceType,
    pub first_ts: UnixMicros,
    pub last_ts: UnixMicros,
    pub samples: u64,
    /// Logical bytes of its stored samples (keys and values), used for size retention.
    pub bytes: u64,
}

/// The value stored per sample (the key holds resource and time).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(rename = "m", default)]
    metrics: BTreeMap<String, f64>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    event: Option<Event>,
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Tracked {
    meta: ResourceMeta,
    window: VecDeque<Arc<Sample>>,
    /// Hashes of the metric names the resource has used (in this run, and in its window when the
    /// agent started), bounded by `ingest.max_metric_names`.
    names: NameSet,
}

impl Tracked {
    fn new(meta: ResourceMeta, window: VecDeque<Arc<Sample>>, hasher: &NameHasher) -> Self {
        let mut names = NameSet::default();
        for s in &window {
            names.extend(s.metrics.keys().map(|k| hasher.hash_one(k)));
        }
        Self {
            meta,
            window,
            names,
        }
    }

    /// Refuses a sample that would take the resource past `max` distinct metric names.
    fn check_names(&self, s: &Sample, max: usize, hasher: &NameHasher) -> Result<(), Rejection> {
        let new = s
            .metrics
            .keys()
            .filter(|k| !self.names.contains(&hasher.hash_one(k)))
            .count();
        accept::metric_names(&s.resource_id, self.names.len(), new, max)
    }
}

/// One resource as listed by the API.
#[derive(Clone, Debug)]
pub struct ResourceSummary {
    pub resource_id: ResourceId,
    pub meta: ResourceMeta,
    pub latest: Option<Arc<Sample>>,
}

/// A range query's answer.
#[derive(Clone, Debug)]
pub struct QueryResult {
    pub samples: Vec<Sample>,
    pub truncated: bool,
}

/// Outcome of one durable write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteOutcome {
    pub written: usize,
    /// Samples refused at write time (by index): two concurrent pushes gave one new resource
    /// different types (admission checks each push on its own), or a resource's distinct metric
    /// names would pass `ingest.max_metric_names` (collected samples are not admitted first).
    pub refused: Vec<(usize, Rejection)>,
    /// The samples as committed (merged with what was already stored at the same time).
    pub committed: Vec<Arc<Sample>>,
}

/// Cloneable handle to the history. Reads may come from any task; writes come only from the
/// writer task ([`writer::run`]), which redb serialises anyway.
#[derive(Clone, Debug)]
pub struct History {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` only while it is being reopened after a storage failure.
    db: RwLock<Option<Arc<Database>>>,
    path: std::path::PathBuf,
    cache_bytes: u64,
    window: usize,
    state: RwLock<HashMap<ResourceId, Tracked>>,
    failure: RwLock<Option<StorageFailure>>,
    hasher: NameHasher,
    /// Distinct metric names a resource may use (`ingest.max_metric_names`).
    max_names: AtomicUsize,
}

fn key_len(id: &str) -> u64 {
    id.len() as u64 + 8
}

fn decode(resource: &str, bytes: &[u8]) -> Result<Stored, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        resource: resource.to_owned(),
        reason: e.to_string(),
    })
}

impl History {
    /// Opens (or creates) the store and reloads each resource's window from disk.
    pub fn open(dir: &Path, cache_bytes: u64, window: usize) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let db = Self::open_db(&path, cache_bytes)?;
        {
            let tx = db.begin_write()?;
            tx.open_table(SAMPLES)?;
            tx.open_table(RESOURCES)?;
            tx.commit()?;
        }
        let mut state = HashMap::new();
        // Keyed per process, so nobody can pick names that collide on purpose.
        let hasher = NameHasher::default();
        {
            let tx = db.begin_read()?;
            let resources = tx.open_table(RESOURCES)?;
            let samples = tx.open_table(SAMPLES)?;
            for entry in resources.iter()? {
                let (k, v) = entry?;
                let id_str = k.value().to_owned();
                let meta: ResourceMeta =
                    serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                        resource: id_str.clone(),
                        reason: e.to_string(),
                    })?;
                let Ok(id) = ResourceId::parse(id_str.as_str()) else {
                    continue;
                };
                let mut win = VecDeque::with_capacity(window);
                for entry in samples
                    .range((id_str.as_str(), i64::MIN)..=(id_str.as_str(), i64::MAX))?
                    .rev()
                    .take(window)
                {
                    let (k, v) = entry?;
                    let stored = decode(&id_str, v.value())?;
                    win.push_front(Arc::new(Sample {
                        ts: UnixMicros(k.value().1),
                        resource_id: id.clone(),
                        resource_type: meta.resource_type.clone(),
                        metrics: stored.metrics,
                        event: stored.event,
                        labels: stored.labels,
                    }));
                }
                state.insert(id, Tracked::new(meta, win, &hasher));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Arc::new(db))),
                path,
                cache_bytes,
                window,
                state: RwLock::new(state),
                failure: RwLock::new(None),
                hasher,
                max_names: AtomicUsize::new(crate::config::DEFAULT_MAX_METRIC_NAMES),
            }),
        })
    }

    fn open_db(path: &Path, cache_bytes: u64) -> Result<Database, StoreError> {
        Ok(Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(path)?)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner.db.read().clone().ok_or(StoreError::Reopening)
    }

    /// Why writes are failing, if they are.
    pub fn failure(&self) -> Option<StorageFailure> {
        self.inner.failure.read().clone()
    }

    /// Sets `ingest.max_metric_names` (the writer does, from the configuration).
    pub fn set_max_metric_names(&self, max: usize) {
        self.inner.max_names.store(max.max(1), Ordering::Relaxed);
    }

    /// Records a storage failure (the first one's time is kept).
    pub fn fail(&self, e: &StoreError, now_unix_ms: u64) {
        let mut f = self.inner.failure.write();
        match f.as_mut() {
            Some(f) => {
                f.error = e.to_string();
                f.disk_full |= e.is_disk_full();
            }
            None => {
                *f = Some(StorageFailure {
                    error: e.to_string(),
                    disk_full: e.is_disk_full(),
                    since_unix_ms: now_unix_ms,
                    attempts: 0,
                });
            }
        }
    }

    /// After a storage failure: closes the database (waiting up to `wait` for readers to finish),
    /// opens it again (redb discards the uncommitted transaction; every committed one is there)
    /// and commits an empty transaction to check that writes go through. On success the failure
    /// is cleared. Blocking: run it off the async runtime.
    pub fn recover(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        if let Some(f) = self.inner.failure.write().as_mut() {
            f.attempts += 1;
        }
        // A full disk is not retried until there is room again: the file's own free pages could
        // take a small probe and a few writes, and writes would fail again at once.
        if self.failure().is_some_and(|f| f.disk_full) {
            let free = free_bytes(&self.inner.path);
            if free.is_some_and(|b| b < RESUME_FREE_BYTES) {
                return Err(StoreError::Reopening);
            }
        }
        let old = self.inner.db.write().take();
        if let Some(old) = old {
            let deadline = std::time::Instant::now() + wait;
            let mut old = Some(old);
            while let Some(db) = old.take() {
                match Arc::try_unwrap(db) {
                    Ok(db) => drop(db),
                    Err(db) if std::time::Instant::now() < deadline => {
                        old = Some(db);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(db) => {
                        // Readers still hold it: put it back and try again later.
                        *self.inner.db.write() = Some(db);
                        return Err(StoreError::Reopening);
                    }
                }
            }
        }
        let db = Self::open_db(&self.inner.path, self.inner.cache_bytes)?;
        let probe = (|| -> Result<(), StoreError> {
            let tx = db.begin_write()?;
            tx.open_table(SAMPLES)?;
            tx.commit()?;
            Ok(())
        })();
        *self.inner.db.write() = Some(Arc::new(db));
        probe?;
        *self.inner.failure.write() = None;
        Ok(())
    }

    /// Checks that a sample fits what is known: a resource keeps its type, and the number of
    /// resources is bounded.
    pub fn admit(&self, sample: &Sample, max_resources: usize) -> Result<(), Rejection> {
        let state = self.inner.state.read();
        let max_names = self.inner.max_names.load(Ordering::Relaxed);
        if sample.metrics.len() > max_names {
            return Err(Rejection::new(
                RejectReason::TooManyMetrics,
                format!(
                    "the sample has {} metrics; a resource may use {max_names} distinct names \
                     (ingest.max_metric_names)",
                    sample.metrics.len()
                ),
            ));
        }
        match state.get(&sample.resource_id) {
            Some(t) => {
                accept::same_type(
                    &sample.resource_id,
                    &t.meta.resource_type,
                    TypeFrom::Stored,
                    &sample.resource_type,
                )?;
                t.check_names(sample, max_names, &self.inner.hasher)
            }
            None => accept::room_for(&sample.resource_id, state.len(), max_resources),
        }
    }

    /// Writes samples durably in one transaction (blocking: call from a blocking thread).
    pub fn write(&self, samples: &[Sample]) -> Result<WriteOutcome, StoreError> {
        let mut outcome = WriteOutcome::default();
        let mut touched: HashMap<ResourceId, ResourceMeta> = HashMap::new();
        let mut merged: Vec<Arc<Sample>> = Vec::with_capacity(samples.len());
        let mut added: HashMap<ResourceId, NameSet> = HashMap::new();
        let tx = self.db()?.begin_write()?;
        {
            let mut table = tx.open_table(SAMPLES)?;
            let mut resources = tx.open_table(RESOURCES)?;
            let state = self.inner.state.read();
            let max_names = self.inner.max_names.load(Ordering::Relaxed);
            for (index, s) in samples.iter().enumerate() {
                // Distinct metric names per resource are bounded over time, whatever the source.
                let known = state.get(&s.resource_id).map(|t| &t.names);
                let batch = added.entry(s.resource_id.clone()).or_default();
                let new: Vec<u64> = s
                    .metrics
                    .keys()
                    .map(|k| self.inner.hasher.hash_one(k))
                    .filter(|h| !known.is_some_and(|k| k.contains(h)) && !batch.contains(h))
                    .collect();
                let have = known.map_or(0, |k| k.len()) + batch.len();
                if let Err(r) = accept::metric_names(&s.resource_id, have, new.len(), max_names) {
                    outcome.refused.push((index, r));
                    continue;
                }
                let meta = match touched.get_mut(&s.resource_id) {
                    Some(m) => m,
                    None => {
                        let m = state
                            .get(&s.resource_id)
                            .map(|t| t.meta.clone())
                            .unwrap_or_else(|| ResourceMeta {
                                resource_type: s.resource_type.clone(),
                                first_ts: s.ts,
                                last_ts: s.ts,
                                samples: 0,
                                bytes: 0,
                            });
                        touched.entry(s.resource_id.clone()).or_insert(m)
                    }
                };
                if let Err(r) = accept::same_type(
                    &s.resource_id,
                    &meta.resource_type,
                    TypeFrom::ConcurrentPush,
                    &s.resource_type,
                ) {
                    outcome.refused.push((index, r));
                    continue;
                }
                batch.extend(new);
                let id = s.resource_id.as_str();
                let mut stored = Stored {
                    metrics: s.metrics.clone(),
                    event: s.event,
                    labels: s.labels.clone(),
                };
                let mut value = serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt {
                    resource: id.to_owned(),
                    reason: e.to_string(),
                })?;
                let old = table
                    .insert((id, s.ts.0), value.as_slice())?
                    .map(|g| g.value().to_vec());
                if let Some(old) = old {
                    // Same resource, same microsecond: merge, the newer values winning.
                    let prev = decode(id, &old)?;
                    let mut metrics = prev.metrics;
                    metrics.append(&mut stored.metrics);
                    let mut labels = prev.labels;
                    labels.append(&mut stored.labels);
                    stored = Stored {
                        metrics,
                        event: stored.event.or(prev.event),
                        labels,
                    };
                    value = serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt {
                        resource: id.to_owned(),
                        reason: e.to_string(),
                    })?;
                    table.insert((id, s.ts.0), value.as_slice())?;
                    meta.bytes = meta.bytes.saturating_sub(old.len() as u64 + key_len(id));
                } else {
                    meta.samples += 1;
                }
                meta.bytes += value.len() as u64 + key_len(id);
                meta.first_ts = meta.first_ts.min(s.ts);
                meta.last_ts = meta.last_ts.max(s.ts);
                outcome.written += 1;
                merged.push(Arc::new(Sample {
                    ts: s.ts,
                    resource_id: s.resource_id.clone(),
                    resource_type: s.resource_type.clone(),
                    metrics: stored.metrics,
                    event: stored.event,
                    labels: stored.labels,
                }));
            }
            drop(state);
            for (id, meta) in &touched {
                let bytes = serde_json::to_vec(meta).map_err(|e| StoreError::Corrupt {
                    resource: id.to_string(),
                    reason: e.to_string(),
                })?;
                resources.insert(id.as_str(), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        let mut state = self.inner.state.write();
        for (id, meta) in touched {
            let names = added.remove(&id).unwrap_or_default();
            let t = state.entry(id).or_insert_with(|| Tracked {
                meta: meta.clone(),
                window: VecDeque::with_capacity(self.inner.window),
                names: NameSet::default(),
            });
            t.meta = meta;
            t.names.extend(names);
        }
        for s in &merged {
            if let Some(t) = state.get_mut(&s.resource_id) {
                insert_window(&mut t.window, s.clone(), self.inner.window);
            }
        }
        outcome.committed = merged;
        Ok(outcome)
    }

    fn type_of(&self, id: &ResourceId) -> Option<ResourceType> {
        self.inner
            .state
            .read()
            .get(id)
            .map(|t| t.meta.resource_type.clone())
    }

    /// Samples of one resource with `since <= ts < until`, oldest first, at most `limit`.
    /// `None` when the resource is unknown.
    pub fn query(
        &self,
        id: &ResourceId,
        since: UnixMicros,
        until: UnixMicros,
        limit: usize,
    ) -> Result<Option<QueryResult>, StoreError> {
        let Some(resource_type) = self.type_of(id) else {
            return Ok(None);
        };
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(SAMPLES)?;
        let mut samples = Vec::new();
        let mut truncated = false;
        if since < until {
            for entry in table.range((id.as_str(), since.0)..(id.as_str(), until.0))? {
                if samples.len() == limit {
                    truncated = true;
                    break;
                }
                let (k, v) = entry?;
                samples.push(stored_sample(id, &resource_type, k.value().1, v.value())?);
            }
        }
        Ok(Some(QueryResult { samples, truncated }))
    }

    /// Visits the newest `limit` samples of one resource with `ts >= since`, newest first, one at a
    /// time (the trainer's read: it keeps columns, never every sample at once). False when the
    /// resource is unknown.
    pub fn for_each_newest(
        &self,
        id: &ResourceId,
        since: UnixMicros,
        limit: usize,
        mut visit: impl FnMut(Sample),
    ) -> Result<bool, StoreError> {
        let Some(resource_type) = self.type_of(id) else {
            return Ok(false);
        };
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(SAMPLES)?;
        for (n, entry) in table
            .range((id.as_str(), since.0)..=(id.as_str(), i64::MAX))?
            .rev()
            .enumerate()
        {
            if n == limit {
                break;
            }
            let (k, v) = entry?;
            visit(stored_sample(id, &resource_type, k.value().1, v.value())?);
        }
        Ok(true)
    }

    /// Deletes samples older than `now - max_age`, then the oldest samples while the stored bytes
    /// exceed `max_bytes`. Returns how many samples were deleted (blocking).
    pub fn apply_retention(
        &self,
        now: UnixMicros,
        max_age: std::time::Duration,
        max_bytes: u64,
    ) -> Result<u64, StoreError> {
        let age_cutoff =
            now.saturating_sub_micros(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
        let mut deleted = self.delete_before(age_cutoff)?;
        // Size: assume each resource's bytes spread evenly over its time span and find the cutoff
        // that frees the excess plus 10 % head-room; repeat in case the estimate was short.
        for _ in 0..4 {
            let (total, spans) = {
                let state = self.inner.state.read();
                let total: u64 = state.values().map(|t| t.meta.bytes).sum();
                let spans: Vec<(i64, i64, u64)> = state
                    .values()
                    .map(|t| (t.meta.first_ts.0, t.meta.last_ts.0, t.meta.bytes))
                    .collect();
                (total, spans)
            };
            if total <= max_bytes {
                break;
            }
            let target = total - max_bytes + max_bytes / 10;
            let freed_by = |cut: i64| -> u64 {
                spans
                    .iter()
                    .map(|&(first, last, bytes)| {
                        if cut <= first {
                            0
                        } else if cut > last {
                            bytes
                        } else {
                            let frac = (cut - first) as f64 / ((last - first).max(1)) as f64;
                            (bytes as f64 * frac) as u64
                        }
                    })
                    .sum()
            };
            let (mut lo, mut hi) = (
                spans.iter().map(|s| s.0).min().unwrap_or(0),
                spans
                    .iter()
                    .map(|s| s.1)
                    .max()
                    .unwrap_or(0)
                    .saturating_add(1),
            );
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if freed_by(mid) >= target {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            deleted += self.delete_before(UnixMicros(lo))?;
        }
        Ok(deleted)
    }

    fn delete_before(&self, cutoff: UnixMicros) -> Result<u64, StoreError> {
        let victims: Vec<(ResourceId, ResourceMeta)> = self
            .inner
            .state
            .read()
            .iter()
            .filter(|(_, t)| t.meta.first_ts < cutoff)
            .map(|(id, t)| (id.clone(), t.meta.clone()))
            .collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let mut updated: Vec<(ResourceId, Option<ResourceMeta>)> = Vec::new();
        let mut deleted = 0u64;
        let tx = self.db()?.begin_write()?;
        {
            let mut table = tx.open_table(SAMPLES)?;
            let mut resources = tx.open_table(RESOURCES)?;
            for (id, mut meta) in victims {
                let key = id.as_str();
                let (mut n, mut bytes) = (0u64, 0u64);
                table.retain_in((key, i64::MIN)..(key, cutoff.0), |_, v| {
                    n += 1;
                    bytes += v.len() as u64 + key_len(key);
                    false
                })?;
                let first = table
                    .range((key, cutoff.0)..=(key, i64::MAX))?
                    .next()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                deleted += n;
                meta.samples = meta.samples.saturating_sub(n);
                meta.bytes = meta.bytes.saturating_sub(bytes);
                match first {
                    Some(first) => {
                        meta.first_ts = UnixMicros(first);
                        let encoded =
                            serde_json::to_vec(&meta).map_err(|e| StoreError::Corrupt {
                                resource: key.to_owned(),
                                reason: e.to_string(),
                            })?;
                        resources.insert(key, encoded.as_slice())?;
                        updated.push((id, Some(meta)));
                    }
                    None => {
                        resources.remove(key)?;
                        updated.push((id, None));
                    }
                }
            }
        }
        tx.commit()?;
        let mut state = self.inner.state.write();
        for (id, meta) in updated {
            match meta {
                Some(meta) => {
                    if let Some(t) = state.get_mut(&id) {
                        t.meta = meta;
                        t.window.retain(|s| s.ts >= cutoff);
                    }
                }
                None => {
                    state.remove(&id);
                }
            }
        }
        Ok(deleted)
    }

    /// Every resource with its metadata and latest sample, sorted by id.
    pub fn resources(&self) -> Vec<ResourceSummary> {
        let state = self.inner.state.read();
        let mut out: Vec<ResourceSummary> = state
            .iter()
            .map(|(id, t)| ResourceSummary {
                resource_id: id.clone(),
                meta: t.meta.clone(),
                latest: t.window.back().cloned(),
            })
            .collect();
        out.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        out
    }

    /// One resource's summary.
    pub fn resource(&self, id: &ResourceId) -> Option<ResourceSummary> {
        self.inner.state.read().get(id).map(|t| ResourceSummary {
            resource_id: id.clone(),
            meta: t.meta.clone(),
            latest: t.window.back().cloned(),
        })
    }

    /// The in-memory window of one resource, oldest first.
    pub fn window(&self, id: &ResourceId) -> Vec<Arc<Sample>> {
        self.inner
            .state
            .read()
            .get(id)
            .map(|t| t.window.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// (resources, samples, logical bytes) stored.
    pub fn totals(&self) -> (u64, u64, u64) {
        let state = self.inner.state.read();
        let samples = state.values().map(|t| t.meta.samples).sum();
        let bytes = state.values().map(|t| t.meta.bytes).sum();
        (state.len() as u64, samples, bytes)
    }

    /// Samples stored on disk, counted from the table itself (for tests and checks).
    pub fn count_on_disk(&self) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read()?;
        Ok(tx.open_table(SAMPLES)?.len()?)
    }
}

/// Inserts in time order (samples usually arrive in order, so this is a push) and bounds the window.
fn insert_window(window: &mut VecDeque<Arc<Sample>>, s: Arc<Sample>, cap: usize) {
    match window.back() {
        Some(last) if last.ts > s.ts => {
            let pos = window.partition_point(|x| x.ts < s.ts);
            if window.get(pos).is_some_and(|x| x.ts == s.ts) {
                window[pos] = s;
            } else {
                window.insert(pos, s);
            }
        }
        Some(last) if last.ts == s.ts => {
            let n = window.len();
            window[n - 1] = s;
        }
        _ => window.push_back(s),
    }
    while window.len() > cap {
        window.pop_front();
    }
}

/// A stored row as a sample.
fn stored_sample(
    id: &ResourceId,
    resource_type: &ResourceType,
    ts_us: i64,
    value: &[u8],
) -> Result<Sample, StoreError> {
    let stored = decode(id.as_str(), value)?;
    Ok(Sample {
        ts: UnixMicros(ts_us),
        resource_id: id.clone(),
        resource_type: resource_type.clone(),
        metrics: stored.metrics,
        event: stored.event,
        labels: stored.labels,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(id: &str, ts: i64, v: f64) -> Sample {
        Sample {
            ts: UnixMicros(ts),
            resource_id: ResourceId::parse(id).expect("id"),
            resource_type: ResourceType::parse("service").expect("type"),
            metrics: BTreeMap::from([("x".to_owned(), v)]),
            event: None,
            labels: BTreeMap::new(),
        }
    }

    /// Finding 7: distinct metric names per resource are bounded over time, at admission (pushes)
    /// and at write time (collected samples), and the bound holds across a restart.
    #[test]
    fn a_resource_cannot_grow_its_metric_names_without_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = |ts: i64, names: std::ops::Range<usize>| Sample {
            metrics: names.map(|k| (format!("n{k}"), 1.0)).collect(),
            ..sample("a", ts, 0.0)
        };
        {
            let h = History::open(dir.path(), 1 << 20, 10).expect("open");
            h.set_max_metric_names(100);
            assert!(h.admit(&named(1, 0..60), 10).is_ok());
            let out = h
                .write(&[named(1, 0..60), named(2, 40..100), named(3, 90..110)])
                .expect("write");
            assert_eq!(out.written, 2);
            assert_eq!(out.refused.len(), 1);
            assert_eq!(out.refused[0].0, 2);
            assert_eq!(out.refused[0].1.reason, RejectReason::TooManyMetrics);
            // Known names go on; a new one is refused with a reason that says what to do.
            assert!(h.admit(&named(4, 0..100), 10).is_ok());
            let r = h.admit(&named(5, 99..101), 10).expect_err("new name");
            assert_eq!(r.reason, RejectReason::TooManyMetrics);
            assert!(r.message.contains("labels"), "{}", r.message);
            // One sample may never carry more than the bound.
            assert!(h.admit(&named(6, 1000..1101), 10).is_err());
        }
        let h = History::open(dir.path(), 1 << 20, 10).expect("reopen");
        h.set_max_metric_names(100);
        assert!(
            h.admit(&named(7, 99..101), 10).is_err(),
            "known from the window"
        );
    }

    #[test]
    fn written_samples_survive_reopen_with_their_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let h = History::open(dir.path(), 1 << 20, 3).expect("open");
            let batch: Vec<Sample> = (0..5)
                .map(|i| sample("a", i * 1_000_000, i as f64))
                .collect();
            assert_eq!(h.write(&batch).expect("write").written, 5);
        }
        let h = History::open(dir.path(), 1 << 20, 3).expect("reopen");
        let id = ResourceId::parse("a").expect("id");
        let win = h.window(&id);
        assert_eq!(
            win.iter().map(|s| s.ts.0).collect::<Vec<_>>(),
            vec![2_000_000, 3_000_000, 4_000_000]
        );
        let q = h
            .query(&id, UnixMicros(1_000_000), UnixMicros(4_000_000), 100)
            .expect("query")
            .expect("known");
        assert_eq!(q.samples.len(), 3);
        assert!(!q.truncated);
        let q = h
            .query(&id, UnixMicros(0), UnixMicros(i64::MAX), 2)
            .expect("query")
            .expect("known");
        assert!(q.truncated);
        assert_eq!(h.totals().1, 5);
        assert_eq!(h.count_on_disk().expect("count"), 5);
        let unknown = ResourceId::parse("nope").expect("id");
        assert!(
            h.query(&unknown, UnixMicros(0), UnixMicros(1), 1)
                .expect("query")
                .is_none()
        );
    }

    #[test]
    fn same_timestamp_merges_instead_of_duplicating() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = History::open(dir.path(), 1 << 20, 10).expect("open");
        let mut a = sample("a", 5, 1.0);
        h.write(std::slice::from_ref(&a)).expect("write");
        a.metrics = BTreeMap::from([("y".to_owned(), 2.0)]);
        h.write(&[a]).expect("write again");
        let id = ResourceId::parse("a").expect("id");
        let r = h.resource(&id).expect("known");
        assert_eq!(r.meta.samples, 1);
        let latest = r.latest.expect("latest");
        assert_eq!(latest.metrics.len(), 2);
        assert_eq!(h.count_on_disk().expect("count"), 1);
    }

    #[test]
    fn admission_keeps_types_and_bounds_resources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = History::open(dir.path(), 1 << 20, 10).expect("open");
        h.write(&[sample("a", 1, 1.0)]).expect("write");
        let mut other = sample("a", 2, 1.0);
        other.resource_type = ResourceType::parse("host").expect("type");
        assert_eq!(
            h.admit(&other, 10).expect_err("conflict").reason,
            RejectReason::TypeConflict
        );
        assert_eq!(
            h.admit(&sample("b", 1, 1.0), 1).expect_err("full").reason,
            RejectReason::TooManyResources
        );
        assert!(h.admit(&sample("a", 3, 1.0), 1).is_ok());
    }

    #[test]
    fn retention_by_age_and_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = History::open(dir.path(), 1 << 20, 10).expect("open");
        let sec = 1_000_000;
        let batch: Vec<Sample> = (0..1000)
            .flat_map(|i| [sample("a", i * sec, 1.0), sample("b", i * sec, 2.0)])
            .collect();
        h.write(&batch).expect("write");
        // Age: keep the last 100 s at now = 999 s.
        let deleted = h
            .apply_retention(UnixMicros(999 * sec), Duration::from_secs(100), u64::MAX)
            .expect("age");
        assert_eq!(deleted, 2 * 899);
        assert_eq!(h.count_on_disk().expect("count"), 2 * 101);
        // Size: squeeze to half of what is left.
        let (_, _, bytes) = h.totals();
        h.apply_retention(
            UnixMicros(999 * sec),
            Duration::from_secs(100_000),
            bytes / 2,
        )
        .expect("size");
        let (_, samples, after) = h.totals();
        assert!(after <= bytes / 2, "{after} > {}", bytes / 2);
        assert_eq!(samples, h.count_on_disk().expect("count"));
        // The newest survive.
        let id = ResourceId::parse("a").expect("id");
        assert_eq!(
            h.resource(&id).expect("a").meta.last_ts,
            UnixMicros(999 * sec)
        );
        // Everything past the age goes, and the resource with it.
        h.apply_retention(UnixMicros(5000 * sec), Duration::from_secs(60), u64::MAX)
            .expect("all");
        assert_eq!(h.totals(), (0, 0, 0));
    }

    #[test]
    fn window_orders_late_samples() {
        let mut w = VecDeque::new();
        for ts in [1, 3, 2, 3, 0] {
            insert_window(&mut w, Arc::new(sample("a", ts, ts as f64)), 3);
        }
        assert_eq!(w.iter().map(|s| s.ts.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}

//! What the acting half keeps durably, in `acting.redb` in the data directory: the lease voter's
//! state (saved before each answer it gives), and the highest fencing epoch this node has seen
//! per service, so a step under a lower epoch (an old holder's, late) is refused even after a
//! restart.

use std::path::Path;
use std::sync::Arc;

use augur_mesh::leases::VoterStore;
use augur_orchestrate::lease::voter::VoterState;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The file, in the data directory.
pub const ACTING_FILE: &str = "acting.redb";

const VOTER: TableDefinition<&str, &[u8]> = TableDefinition::new("lease_voter");
const FENCES: TableDefinition<&str, u64> = TableDefinition::new("fences");
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
const MIGRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("migrations");
const VOTER_KEY: &str = "state";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use {ACTING_FILE}: {0}")]
    Db(#[from] redb::Error),
    #[error("a stored value does not decode: {0}")]
    Decode(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A step refused by fencing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "epoch {offered} of {service} is stale: this node has seen epoch {held}, from a newer lease"
)]
pub struct Stale {
    pub service: String,
    pub offered: u64,
    pub held: u64,
}

/// Cloneable handle.
#[derive(Clone, Debug)]
pub struct ActStore {
    db: Arc<Database>,
}

impl ActStore {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let db = Database::create(data_dir.join(ACTING_FILE))?;
        let tx = db.begin_write()?;
        tx.open_table(VOTER)?;
        tx.open_table(FENCES)?;
        tx.open_table(ASSIGNMENTS)?;
        tx.open_table(MIGRATIONS)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The highest epoch seen for `service` (0: none).
    pub fn fence_of(&self, service: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FENCES)?;
        Ok(t.get(service)?.map_or(0, |v| v.value()))
    }

    /// Checks a step's epoch for `service`: a lower one than seen is refused; an equal or higher
    /// one is recorded (durably) and allowed.
    pub fn fence(&self, service: &str, epoch: u64) -> Result<Result<(), Stale>, StoreError> {
        let tx = self.db.begin_write()?;
        let verdict = {
            let mut t = tx.open_table(FENCES)?;
            let held = t.get(service)?.map_or(0, |v| v.value());
            if epoch < held {
                Err(Stale {
                    service: service.to_owned(),
                    offered: epoch,
                    held,
                })
            } else {
                if epoch > held {
                    t.insert(service, epoch)?;
                }
                Ok(())
            }
        };
        tx.commit()?;
        Ok(verdict)
    }

    /// Stores a service's assignment, after checking its epoch against the service's fence (and
    /// raising the fence to it), in one transaction.
    pub fn put_assignment(
        &self,
        a: &augur_mesh::act::Assignment,
    ) -> Result<Result<(), Stale>, StoreError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(a, &mut bytes).map_err(|e| StoreError::Decode(e.to_string()))?;
        let tx = self.db.begin_write()?;
        {
            let mut fences = tx.open_table(FENCES)?;
            let held = fences.get(a.service.as_str())?.map_or(0, |v| v.value());
            if a.epoch < held {
                return Ok(Err(Stale {
                    service: a.service.clone(),
                    offered: a.epoch,
                    held,
                }));
            }
            if a.epoch > held {
                fences.insert(a.service.as_str(), a.epoch)?;
            }
            tx.open_table(ASSIGNMENTS)?
                .insert(a.service.as_str(), bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Every stored assignment (ones that no longer decode are skipped, logged).
    pub fn assignments(&self) -> Result<Vec<augur_mesh::act::Assignment>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ASSIGNMENTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            match ciborium::from_reader(v.value()) {
                Ok(a) => out.push(a),
                Err(e) => {
                    tracing::warn!(service = k.value(), error = %e, "a stored assignment does not decode; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Writes a migration's journal record (JSON).
    pub fn put_migration(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(MIGRATIONS)?.insert(id, record)?;
        tx.commit()?;
        Ok(())
    }

    /// Every migration's journal record, by id.
    pub fn migrations(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MIGRATIONS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn load_voter(&self) -> Result<Option<VoterState>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(VOTER)?;
        let Some(v) = t.get(VOTER_KEY)? else {
            return Ok(None);
        };
        ciborium::from_reader(v.value())
            .map(Some)
            .map_err(|e| StoreError::Decode(e.to_string()))
    }

    fn save_voter(&self, state: &VoterState) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(state, &mut bytes).map_err(|e| StoreError::Decode(e.to_string()))?;
        let tx = self.db.begin_write()?;
        tx.open_table(VOTER)?.insert(VOTER_KEY, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

impl VoterStore for ActStore {
    fn load(&self) -> std::io::Result<Option<VoterState>> {
        self.load_voter().map_err(std::io::Error::other)
    }

    fn save(&self, state: &VoterState) -> std::io::Result<()> {
        self.save_voter(state).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_refuse_lower_epochs_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ActStore::open(dir.path()).expect("opens");
        assert_eq!(store.fence_of("web").expect("reads"), 0);
        assert_eq!(store.fence("web", 5).expect("writes"), Ok(()));
        assert_eq!(
            store.fence("web", 5).expect("writes"),
            Ok(()),
            "the same lease again"
        );
        assert_eq!(
            store.fence("web", 4).expect("writes"),
            Err(Stale {
                service: "web".into(),
                offered: 4,
                held: 5
            })
        );
        assert_eq!(
            store.fence("api", 1).expect("writes"),
            Ok(()),
            "per service"
        );
        let state = VoterState {
            floor: 9,
            ..Default::default()
        };
        store.save(&state).expect("saves");
        drop(store);
        let again = ActStore::open(dir.path()).expect("reopens");
        assert_eq!(again.fence_of("web").expect("reads"), 5);
        assert_eq!(again.load().expect("loads").map(|s| s.floor), Some(9));
    }
}

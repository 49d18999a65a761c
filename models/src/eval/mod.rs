//! Offline evaluation: the NAB scoring rules and event-level metrics, as pure functions over scores
//! and labels, plus loaders for the public data sets (read from a path the caller gives; the data
//! sets are not part of augur).

pub mod detectors;
pub mod failures;
pub mod nab;
pub mod smd;
pub mod wild;

use std::path::{Path, PathBuf};

/// Why an evaluation data set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Reads a whole data file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })
}

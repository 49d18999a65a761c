//! Offline evaluation: the NAB scoring rules and event-level metrics, as pure functions over scores
//! and labels, plus loaders for the public data sets (read from a path the caller gives; the data
//! sets are not part of augur).

pub mod detectors;
pub mod failures;
pub mod nab;
pub mod smd;

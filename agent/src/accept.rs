//! Whether a sample is accepted: the reasons for refusing one, and the rules a sample must meet
//! against what is known of its resource (its type, its metric names, room for a new resource).
//!
//! The rules are decided here once and applied where the knowledge is: by the API before a push
//! is queued (against the stored resources and the samples earlier in the same push), and by the
//! history's write transaction, which is authoritative (another push may have given a resource its
//! type, or used up its metric names, in between). The shape of one sample on its own (ids, names,
//! values, labels, time) is checked in `crate::ingest`.

use std::fmt;

use augur_proto::{ResourceId, ResourceType};

/// Why a sample (or a whole body) was refused; the label of `augur_samples_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MalformedJson,
    MissingField,
    UnknownField,
    BadId,
    BadMetricName,
    NonFinite,
    OutOfRange,
    TooManyMetrics,
    TooManyLabels,
    BadLabel,
    Empty,
    UnknownEvent,
    ClockSkew,
    TooOld,
    TypeConflict,
    TooManyResources,
    Oversized,
    Overloaded,
    /// The history's storage is failing (a full disk): nothing can be made durable until it
    /// recovers.
    StorageFailure,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::BadId => "bad_id",
            RejectReason::BadMetricName => "bad_metric_name",
            RejectReason::NonFinite => "non_finite",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::TooManyMetrics => "too_many_metrics",
            RejectReason::TooManyLabels => "too_many_labels",
            RejectReason::BadLabel => "bad_label",
            RejectReason::Empty => "empty",
            RejectReason::UnknownEvent => "unknown_event",
            RejectReason::ClockSkew => "clock_skew",
            RejectReason::TooOld => "too_old",
            RejectReason::TypeConflict => "type_conflict",
            RejectReason::TooManyResources => "too_many_resources",
            RejectReason::Oversized => "oversized",
            RejectReason::Overloaded => "overloaded",
            RejectReason::StorageFailure => "storage_failure",
        }
    }
}

/// A refused sample: the reason (for counters) and a message that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

/// Where the type a sample contradicts was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeFrom {
    /// The stored resource.
    Stored,
    /// A sample earlier in the same push.
    EarlierInBatch,
    /// Another push, written after this one was admitted and before it was written.
    ConcurrentPush,
}

/// A resource keeps its type.
pub fn same_type(
    id: &ResourceId,
    known: &ResourceType,
    from: TypeFrom,
    got: &ResourceType,
) -> Result<(), Rejection> {
    if known == got {
        return Ok(());
    }
    let message = match from {
        TypeFrom::Stored => format!(
            "resource {id} is of type {known}, not {got}; use a new resource_id for a different kind"
        ),
        TypeFrom::EarlierInBatch => {
            format!("resource {id} is of type {known} earlier in this batch, not {got}")
        }
        TypeFrom::ConcurrentPush => format!(
            "resource {id} was given type {known} by a concurrent push before this {got} sample \
             was written"
        ),
    };
    Err(Rejection::new(RejectReason::TypeConflict, message))
}

/// A resource uses at most `max` distinct metric names over time: one that has `have` may not add
/// `adding` more past that.
pub fn metric_names(
    id: &ResourceId,
    have: usize,
    adding: usize,
    max: usize,
) -> Result<(), Rejection> {
    if adding == 0 || have + adding <= max {
        return Ok(());
    }
    Err(Rejection::new(
        RejectReason::TooManyMetrics,
        format!(
            "resource {id} already has {have} distinct metric names and this sample adds {adding} \
             (ingest.max_metric_names is {max}); put varying parts in labels, not in metric names"
        ),
    ))
}

/// A new resource needs room: at most `max` resources are tracked.
pub fn room_for(id: &ResourceId, tracked: usize, max: usize) -> Result<(), Rejection> {
    if tracked < max {
        return Ok(());
    }
    Err(Rejection::new(
        RejectReason::TooManyResources,
        format!(
            "this agent already tracks {tracked} resources (ingest.max_resources); {id} is refused"
        ),
    ))
}

/// Checks a metric name: 1..=128 characters, no whitespace or control characters.
pub fn check_metric_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("metric name is empty".to_owned());
    }
    let len = name.chars().count();
    if len > augur_proto::MAX_NAME_LEN {
        return Err(format!(
            "metric name is {len} characters long; the limit is {}",
            augur_proto::MAX_NAME_LEN
        ));
    }
    if let Some(ch) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("metric name {name:?} contains {ch:?}"));
    }
    Ok(())
}

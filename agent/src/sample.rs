//! A validated telemetry sample, the unit that flows from every source into history and the models.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use augur_proto::{Event, ResourceId, ResourceType, TelemetryRecord};
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMicros(pub i64);

/// The agent's one reading of wall-clock time: everything that needs "now" as a Unix time (sample
/// times, token expiry, generations, failure times) asks here.
impl UnixMicros {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Whole milliseconds since the epoch (0 before it).
    pub fn as_unix_ms(self) -> u64 {
        u64::try_from(self.0 / 1_000).unwrap_or(0)
    }

    /// Whole seconds since the epoch (0 before it).
    pub fn as_unix_s(self) -> u64 {
        u64::try_from(self.0 / 1_000_000).unwrap_or(0)
    }

    /// Microseconds since the epoch (0 before it).
    pub fn as_unix_us(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }

    pub fn from_offset(t: time::OffsetDateTime) -> Self {
        let micros = t.unix_timestamp_nanos() / 1_000;
        Self(i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX }))
    }

    pub fn to_offset(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    pub fn from_timestamp(ts: &prost_types::Timestamp) -> Self {
        Self(
            ts.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(ts.nanos / 1_000)),
        )
    }

    pub fn to_timestamp(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(1_000_000),
            nanos: i32::try_from(self.0.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
        }
    }

    pub fn saturating_sub_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_sub(micros))
    }

    /// RFC 3339 with microseconds, e.g. `2026-11-28T02:00:00.123456Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_offset()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.0.to_string())
    }
}

/// One validated sample of one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub ts: UnixMicros,
    pub resource_id: ResourceId,
    pub resource_type: ResourceType,
    pub metrics: BTreeMap<String, f64>,
    pub event: Option<Event>,
    pub labels: BTreeMap<String, String>,
}

impl Sample {
    /// The JSON record form (DESIGN.md's telemetry record).
    pub fn to_record(&self) -> TelemetryRecord {
        TelemetryRecord {
            ts: Some(self.ts.to_offset()),
            resource_id: self.resource_id.to_string(),
            resource_type: self.resource_type.to_string(),
            metrics: self
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), json_number(*v)))
                .collect(),
            event: self.event,
            labels: self.labels.clone(),
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> augur_proto::v1::TelemetrySample {
        augur_proto::v1::TelemetrySample {
            ts: Some(self.ts.to_timestamp()),
            resource_id: self.resource_id.to_string(),
            resource_type: self.resource_type.to_string(),
            metrics: self.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            event: self
                .event
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for micros in [0, 1, 1_764_295_200_123_456, -1_500_000] {
            let t = UnixMicros(micros);
            assert_eq!(UnixMicros::from_offset(t.to_offset()), t);
            assert_eq!(UnixMicros::from_timestamp(&t.to_timestamp()), t);
        }
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(UnixMicros(0).to_rfc3339(), "1970-01-01T00:00:00Z");
    }
}

/// `UnixMicros` as an RFC 3339 string in JSON (`#[serde(with = "crate::sample::rfc3339")]`).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::UnixMicros;

    pub fn serialize<S: Serializer>(ts: &UnixMicros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnixMicros, D::Error> {
        let text = String::deserialize(d)?;
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map(UnixMicros::from_offset)
            .map_err(serde::de::Error::custom)
    }
}

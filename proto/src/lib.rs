//! augur's wire contracts: the gRPC/protobuf API, the telemetry JSON record and its schema, and the
//! identifier newtypes every crate shares. No behaviour lives here beyond checking an identifier's form.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Generated protobuf messages and tonic services of `augur.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("augur.v1");
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("augur_descriptor");

/// JSON Schema (draft 2020-12) of one telemetry record, as accepted by `POST /v1/telemetry`.
pub const TELEMETRY_SCHEMA: &str = include_str!("../proto/telemetry.schema.json");

/// Longest resource id, resource type, metric name or label accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} {value:?} contains {ch:?}; allowed are letters, digits and . _ - : / @")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
    },
}

fn check_id(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = value.chars().count();
    if len > MAX_NAME_LEN {
        return Err(IdError::TooLong { what, len });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@')))
    {
        return Err(IdError::BadChar {
            what,
            value: value.to_owned(),
            ch,
        });
    }
    Ok(())
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks the form (1..=128 characters of `[A-Za-z0-9._:/@-]`) and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_id($what, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_newtype!(
    /// Names one resource whose failure augur predicts: a host (its node name) or a workload.
    ResourceId,
    "resource_id"
);
id_newtype!(
    /// The kind of a resource (`host`, `service`, ...): selects interval, model and thresholds.
    ResourceType,
    "resource_type"
);
id_newtype!(
    /// A node's human name (defaults to the host name); the host resource's id.
    NodeName,
    "node_name"
);

/// The resource type of the host itself.
pub const HOST_RESOURCE_TYPE: &str = "host";

/// An event attached to a telemetry record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The resource failed at `ts`: a label for the failure models.
    Failure,
    /// Work was moved off the resource at `ts` (by augur or an operator). A failure it prevented
    /// is not evidence of health: prediction windows that reach it are not training labels.
    Migration,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Migration => "migration",
        }
    }

    /// Parses the protobuf form, where the empty string means no event.
    pub fn parse_opt(s: &str) -> Result<Option<Self>, String> {
        match s {
            "" => Ok(None),
            "failure" => Ok(Some(Event::Failure)),
            "migration" => Ok(Some(Event::Migration)),
            other => Err(format!(
                "unknown event {other:?}; the known events are \"failure\" and \"migration\""
            )),
        }
    }
}

/// The JSON telemetry record, as written on the wire (one object per line, or inside an array).
///
/// Unknown top-level fields are refused so that a typo (`"metric"`) is an error, not lost data.
/// Metric values stay raw JSON here so that validation can name the offending metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryRecord {
    /// RFC 3339 time of the sample; the receive time when absent.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ts: Option<time::OffsetDateTime>,
    pub resource_id: String,
    pub resource_type: String,
    #[serde(default)]
    pub metrics: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet() {
        for ok in ["web-1", "host", "db.primary:5432", "svc/api@eu-1", "a"] {
            assert!(ResourceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn ids_refuse_empty_long_and_odd_characters() {
        assert_eq!(
            ResourceId::parse(""),
            Err(IdError::Empty {
                what: "resource_id"
            })
        );
        assert!(matches!(
            ResourceId::parse("x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            ResourceType::parse("has space"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
    }

    #[test]
    fn record_refuses_unknown_fields() {
        let err = serde_json::from_str::<TelemetryRecord>(
            r#"{"resource_id":"a","resource_type":"host","metric":{}}"#,
        )
        .expect_err("unknown field must be refused");
        assert!(err.to_string().contains("unknown field `metric`"), "{err}");
    }

    #[test]
    fn record_parses_the_design_example() {
        let rec: TelemetryRecord = serde_json::from_str(
            r#"{"ts": "2026-11-28T02:00:00Z", "resource_id": "web-1", "resource_type": "host",
                "metrics": {"cpu_util": 0.31, "mem_used_ratio": 0.62, "queue_len": 14}}"#,
        )
        .expect("the DESIGN.md example parses");
        assert_eq!(rec.resource_id, "web-1");
        assert_eq!(rec.metrics.len(), 3);
        assert!(rec.ts.is_some());
    }

    #[test]
    fn schema_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(TELEMETRY_SCHEMA).expect("schema parses");
        assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false));
    }

    #[test]
    fn descriptor_set_is_embedded() {
        assert!(!FILE_DESCRIPTOR_SET.is_empty());
    }
}

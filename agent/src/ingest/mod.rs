//! Turning untrusted telemetry (HTTP JSON, gRPC, scrapes) into validated samples, with a reason for
//! every refusal. Nothing here can fail the agent: every bad input becomes a [`Rejection`] and a count.

use std::collections::BTreeMap;
use std::time::Duration;

use augur_proto::{Event, ResourceId, ResourceType, TelemetryRecord, v1};

pub mod batch;
pub mod submit;

pub use batch::{PushBatch, PushOutcome, RejectedItem};
pub use submit::{Ingestor, SubmitError};

use crate::accept::{RejectReason, Rejection, check_metric_name};
use crate::sample::{Sample, UnixMicros};

/// Largest absolute value accepted for a metric.
pub const MAX_ABS_VALUE: f64 = 1e15;
/// Longest label value accepted.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// The per-sample limits in force (from `[ingest]` and `[history]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_metrics: usize,
    pub max_labels: usize,
    pub max_clock_skew: Duration,
    /// Samples older than this are refused: retention would delete them at once.
    pub max_age: Duration,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            max_metrics: cfg.ingest.max_metrics_per_sample,
            max_labels: cfg.ingest.max_labels,
            max_clock_skew: cfg.ingest.max_clock_skew,
            max_age: cfg.history.max_age,
        }
    }
}

/// Validates one metric value; `_ratio` metrics must lie in [0, 1].
fn check_value(name: &str, v: f64) -> Result<(), Rejection> {
    if !v.is_finite() {
        return Err(Rejection::new(
            RejectReason::NonFinite,
            format!("metric {name:?} is {v}; values must be finite numbers"),
        ));
    }
    if v.abs() > MAX_ABS_VALUE {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("metric {name:?} is {v}; the accepted range is ±1e15"),
        ));
    }
    if name.ends_with("_ratio") && !(0.0..=1.0).contains(&v) {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("metric {name:?} is {v}; metrics named *_ratio must lie in [0, 1]"),
        ));
    }
    Ok(())
}

fn parse_ids(
    resource_id: String,
    resource_type: String,
) -> Result<(ResourceId, ResourceType), Rejection> {
    let id = ResourceId::parse(resource_id)
        .map_err(|e| Rejection::new(RejectReason::BadId, e.to_string()))?;
    let ty = ResourceType::parse(resource_type)
        .map_err(|e| Rejection::new(RejectReason::BadId, e.to_string()))?;
    Ok((id, ty))
}

fn check_ts(ts: UnixMicros, limits: &Limits, now: UnixMicros) -> Result<(), Rejection> {
    let skew = i64::try_from(limits.max_clock_skew.as_micros()).unwrap_or(i64::MAX);
    if ts.0 > now.0.saturating_add(skew) {
        return Err(Rejection::new(
            RejectReason::ClockSkew,
            format!(
                "ts {} is more than {} ahead of this agent's clock; check the sender's clock",
                ts.to_rfc3339(),
                humantime::format_duration(limits.max_clock_skew)
            ),
        ));
    }
    let age = i64::try_from(limits.max_age.as_micros()).unwrap_or(i64::MAX);
    if ts.0 < now.0.saturating_sub(age) {
        return Err(Rejection::new(
            RejectReason::TooOld,
            format!(
                "ts {} is older than the history retention ({})",
                ts.to_rfc3339(),
                humantime::format_duration(limits.max_age)
            ),
        ));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>, limits: &Limits) -> Result<(), Rejection> {
    if labels.len() > limits.max_labels {
        return Err(Rejection::new(
            RejectReason::TooManyLabels,
            format!(
                "{} labels; the limit is {}",
                labels.len(),
                limits.max_labels
            ),
        ));
    }
    for (k, v) in labels {
        check_metric_name(k)
            .map_err(|e| Rejection::new(RejectReason::BadLabel, format!("label: {e}")))?;
        if v.chars().count() > MAX_LABEL_VALUE_LEN {
            return Err(Rejection::new(
                RejectReason::BadLabel,
                format!("label {k:?} is longer than {MAX_LABEL_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

fn finish(
    ts: UnixMicros,
    (resource_id, resource_type): (ResourceId, ResourceType),
    metrics: BTreeMap<String, f64>,
    event: Option<Event>,
    labels: BTreeMap<String, String>,
    limits: &Limits,
    now: UnixMicros,
) -> Result<Sample, Rejection> {
    if metrics.len() > limits.max_metrics {
        return Err(Rejection::new(
            RejectReason::TooManyMetrics,
            format!(
                "{} metrics; the limit is {} (ingest.max_metrics_per_sample)",
                metrics.len(),
                limits.max_metrics
            ),
        ));
    }
    if metrics.is_empty() && event.is_none() {
        return Err(Rejection::new(
            RejectReason::Empty,
            "no metrics and no event; a sample needs at least one of them",
        ));
    }
    for (name, v) in &metrics {
        check_metric_name(name).map_err(|e| Rejection::new(RejectReason::BadMetricName, e))?;
        check_value(name, *v)?;
    }
    check_labels(&labels, limits)?;
    check_ts(ts, limits, now)?;
    Ok(Sample {
        ts,
        resource_id,
        resource_type,
        metrics,
        event,
        labels,
    })
}

/// Validates a JSON record.
pub fn validate_record(
    rec: TelemetryRecord,
    limits: &Limits,
    now: UnixMicros,
) -> Result<Sample, Rejection> {
    let ids = parse_ids(rec.resource_id, rec.resource_type)?;
    if rec.metrics.len() > limits.max_metrics {
        return Err(Rejection::new(
            RejectReason::TooManyMetrics,
            format!(
                "{} metrics; the limit is {} (ingest.max_metrics_per_sample)",
                rec.metrics.len(),
                limits.max_metrics
            ),
        ));
    }
    let mut metrics = BTreeMap::new();
    for (name, value) in rec.metrics {
        let v = match &value {
            serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| {
                Rejection::new(
                    RejectReason::OutOfRange,
                    format!("metric {name:?} is not representable"),
                )
            })?,
            other => {
                let reason = match other {
                    serde_json::Value::String(s)
                        if s.eq_ignore_ascii_case("nan") || s.contains("inf") =>
                    {
                        RejectReason::NonFinite
                    }
                    serde_json::Value::Null => RejectReason::NonFinite,
                    _ => RejectReason::MalformedJson,
                };
                return Err(Rejection::new(
                    reason,
                    format!("metric {name:?} is {other}; values must be finite JSON numbers"),
                ));
            }
        };
        metrics.insert(name, v);
    }
    let ts = rec.ts.map(UnixMicros::from_offset).unwrap_or(now);
    finish(ts, ids, metrics, rec.event, rec.labels, limits, now)
}

/// Validates a protobuf sample.
pub fn validate_proto(
    s: v1::TelemetrySample,
    limits: &Limits,
    now: UnixMicros,
) -> Result<Sample, Rejection> {
    let ids = parse_ids(s.resource_id, s.resource_type)?;
    let event =
        Event::parse_opt(&s.event).map_err(|e| Rejection::new(RejectReason::UnknownEvent, e))?;
    let ts = s.ts.as_ref().map(UnixMicros::from_timestamp).unwrap_or(now);
    finish(
        ts,
        ids,
        s.metrics.into_iter().collect(),
        event,
        s.labels.into_iter().collect(),
        limits,
        now,
    )
}

/// Classifies a serde_json error into a reason and a message that says where the problem is.
fn json_rejection(e: &serde_json::Error, what: &str) -> Rejection {
    let msg = e.to_string();
    let reason = match e.classify() {
        serde_json::error::Category::Data if msg.starts_with("missing field") => {
            RejectReason::MissingField
        }
        serde_json::error::Category::Data if msg.starts_with("unknown field") => {
            RejectReason::UnknownField
        }
        serde_json::error::Category::Data if msg.starts_with("unknown variant") => {
            RejectReason::UnknownEvent
        }
        serde_json::error::Category::Data if msg.contains("resource_") => RejectReason::BadId,
        _ => RejectReason::MalformedJson,
    };
    Rejection::new(reason, format!("{what}: {msg}"))
}

/// Splits a request body into records: a JSON array, or JSON lines (blank lines skipped). Each
/// element is parsed on its own, so one bad line does not hide the good ones. A body that starts as
/// an array but is not valid JSON is one rejection.
pub fn parse_body(body: &[u8]) -> Vec<Result<TelemetryRecord, Rejection>> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return vec![Err(Rejection::new(
                RejectReason::MalformedJson,
                format!("body is not UTF-8 ({e})"),
            ))];
        }
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        match serde_json::from_str::<Vec<serde_json::Value>>(trimmed) {
            Ok(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value::<TelemetryRecord>(v)
                        .map_err(|e| json_rejection(&e, &format!("element {i}")))
                })
                .collect(),
            Err(e) => vec![Err(json_rejection(&e, "array body"))],
        }
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str::<TelemetryRecord>(line)
                    .map_err(|e| json_rejection(&e, &format!("line {}", i + 1)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_metrics: 4,
            max_labels: 2,
            max_clock_skew: Duration::from_secs(300),
            max_age: Duration::from_secs(86400),
        }
    }

    const NOW: UnixMicros = UnixMicros(1_764_295_200_000_000); // 2025-11-28T02:00:00Z

    fn one(line: &str) -> Result<Sample, Rejection> {
        let mut recs = parse_body(line.as_bytes());
        assert_eq!(recs.len(), 1);
        recs.remove(0)
            .and_then(|r| validate_record(r, &limits(), NOW))
    }

    fn reason(line: &str) -> RejectReason {
        one(line).expect_err(line).reason
    }

    #[test]
    fn accepts_a_good_record_and_stamps_missing_ts() {
        let s =
            one(r#"{"resource_id":"web-1","resource_type":"service","metrics":{"queue_len":14}}"#)
                .expect("valid");
        assert_eq!(s.ts, NOW);
        assert_eq!(s.metrics["queue_len"], 14.0);
    }

    #[test]
    fn every_bad_shape_has_its_reason() {
        let cases = [
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":1}"#,
                RejectReason::MalformedJson,
            ),
            (
                r#"{"resource_type":"h","metrics":{"x":1}}"#,
                RejectReason::MissingField,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metric":{"x":1}}"#,
                RejectReason::UnknownField,
            ),
            (
                r#"{"resource_id":"a b","resource_type":"h","metrics":{"x":1}}"#,
                RejectReason::BadId,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":"NaN"}}"#,
                RejectReason::NonFinite,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":null}}"#,
                RejectReason::NonFinite,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":1e16}}"#,
                RejectReason::OutOfRange,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"mem_used_ratio":1.5}}"#,
                RejectReason::OutOfRange,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"a":1,"b":1,"c":1,"d":1,"e":1}}"#,
                RejectReason::TooManyMetrics,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"has space":1}}"#,
                RejectReason::BadMetricName,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{}}"#,
                RejectReason::Empty,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":1},"event":"boom"}"#,
                RejectReason::UnknownEvent,
            ),
            (
                r#"{"ts":"2099-01-01T00:00:00Z","resource_id":"a","resource_type":"h","metrics":{"x":1}}"#,
                RejectReason::ClockSkew,
            ),
            (
                r#"{"ts":"2001-01-01T00:00:00Z","resource_id":"a","resource_type":"h","metrics":{"x":1}}"#,
                RejectReason::TooOld,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":1},"labels":{"a":"1","b":"2","c":"3"}}"#,
                RejectReason::TooManyLabels,
            ),
            (
                r#"{"resource_id":"a","resource_type":"h","metrics":{"x":true}}"#,
                RejectReason::MalformedJson,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(reason(line), want, "{line}");
        }
    }

    #[test]
    fn an_event_alone_is_a_sample() {
        let s = one(r#"{"resource_id":"a","resource_type":"h","event":"failure"}"#)
            .expect("event only");
        assert_eq!(s.event, Some(Event::Failure));
    }

    #[test]
    fn json_lines_report_the_line_number() {
        let body =
            b"{\"resource_id\":\"a\",\"resource_type\":\"h\",\"metrics\":{\"x\":1}}\n\nnot json\n";
        let recs = parse_body(body);
        assert_eq!(recs.len(), 2);
        assert!(recs[0].is_ok());
        let err = recs[1].as_ref().expect_err("line 3");
        assert!(err.message.starts_with("line 3:"), "{}", err.message);
    }

    #[test]
    fn arrays_are_split_per_element() {
        let body =
            br#"[{"resource_id":"a","resource_type":"h","metrics":{"x":1}}, {"resource_id":"a"}]"#;
        let recs = parse_body(body);
        assert_eq!(recs.len(), 2);
        assert!(recs[0].is_ok());
        assert_eq!(
            recs[1].as_ref().expect_err("missing type").reason,
            RejectReason::MissingField
        );
        assert_eq!(parse_body(b"[{").len(), 1);
    }

    #[test]
    fn proto_samples_are_checked_the_same_way() {
        let good = v1::TelemetrySample {
            resource_id: "a".into(),
            resource_type: "h".into(),
            metrics: [("x".to_owned(), 1.0)].into_iter().collect(),
            ..Default::default()
        };
        assert!(validate_proto(good.clone(), &limits(), NOW).is_ok());
        let mut nan = good.clone();
        nan.metrics.insert("y".into(), f64::NAN);
        assert_eq!(
            validate_proto(nan, &limits(), NOW).expect_err("nan").reason,
            RejectReason::NonFinite
        );
        let mut ev = good;
        ev.event = "explode".into();
        assert_eq!(
            validate_proto(ev, &limits(), NOW)
                .expect_err("event")
                .reason,
            RejectReason::UnknownEvent
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for r in parse_body(&body).into_iter().flatten() {
                let _ = validate_record(r, &limits(), NOW);
            }
        }

        #[test]
        fn accepted_values_are_finite_and_in_range(v in proptest::num::f64::ANY) {
            let s = v1::TelemetrySample {
                resource_id: "a".into(),
                resource_type: "h".into(),
                metrics: [("x".to_owned(), v)].into_iter().collect(),
                ..Default::default()
            };
            if let Ok(sample) = validate_proto(s, &limits(), NOW) {
                proptest::prop_assert!(sample.metrics["x"].is_finite());
                proptest::prop_assert!(sample.metrics["x"].abs() <= MAX_ABS_VALUE);
            }
        }
    }
}

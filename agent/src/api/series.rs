//! `GET /v1/resources/{id}/series`: a resource's telemetry over a window, in columns (one time
//! axis, one array per metric) and at most `points` buckets, as plots read it. A day of one-second
//! samples is 86,400 records; the dashboard asks for a few hundred points.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sample::{Sample, UnixMicros};

/// Default and largest number of points per metric.
pub const DEFAULT_POINTS: usize = 600;
pub const MAX_POINTS: usize = 5_000;

/// A resource's telemetry in columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub resource_id: String,
    pub since: String,
    pub until: String,
    /// Width of each bucket, seconds (0: one sample per point, nothing was merged).
    pub bucket_s: f64,
    /// Each point's time, Unix seconds (the bucket's last sample).
    pub ts: Vec<f64>,
    /// Each metric's values at those times: the mean of the bucket's samples, null where the
    /// bucket had none of that metric.
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
    /// Samples that carried an event (`failure`, `migration`), each at its own time.
    pub events: Vec<SeriesEvent>,
    /// Samples in the window before bucketing.
    pub samples: usize,
    /// More samples matched than one query reads; the points cover the window's start.
    pub truncated: bool,
}

/// A labelled event in a series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEvent {
    pub ts: f64,
    pub event: String,
}

/// Buckets `samples` (oldest first, all within `since..until`) into at most `points` equal
/// spans of the window and averages each metric within each. With no more samples than points,
/// each sample is its own point.
pub fn bucket(
    samples: &[Sample],
    since: UnixMicros,
    until: UnixMicros,
    points: usize,
) -> (f64, Vec<f64>, BTreeMap<String, Vec<Option<f64>>>) {
    let points = points.clamp(1, MAX_POINTS);
    let span = (until.0 - since.0).max(1);
    let per_sample = samples.len() <= points;
    let width_us = if per_sample {
        0
    } else {
        ((span + points as i64 - 1) / points as i64).max(1)
    };
    // Each output point: its time, and per metric a running sum and count.
    let mut ts: Vec<f64> = Vec::new();
    let mut sums: BTreeMap<String, Vec<(f64, u32)>> = BTreeMap::new();
    let mut current: Option<i64> = None;
    for s in samples {
        let key = if per_sample {
            s.ts.0
        } else {
            (s.ts.0 - since.0) / width_us
        };
        if current != Some(key) || per_sample {
            current = Some(key);
            ts.push(s.ts.0 as f64 / 1e6);
        } else if let Some(last) = ts.last_mut() {
            *last = s.ts.0 as f64 / 1e6;
        }
        let i = ts.len() - 1;
        for (name, &v) in &s.metrics {
            if !v.is_finite() {
                continue;
            }
            let col = sums.entry(name.clone()).or_default();
            col.resize(ts.len(), (0.0, 0));
            col[i].0 += v;
            col[i].1 += 1;
        }
    }
    let metrics = sums
        .into_iter()
        .map(|(name, mut col)| {
            col.resize(ts.len(), (0.0, 0));
            let values = col
                .into_iter()
                .map(|(sum, n)| (n > 0).then(|| sum / f64::from(n)))
                .collect();
            (name, values)
        })
        .collect();
    (width_us as f64 / 1e6, ts, metrics)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use augur_proto::{ResourceId, ResourceType};

    use super::*;

    fn sample(s: i64, metrics: &[(&str, f64)]) -> Sample {
        Sample {
            ts: UnixMicros(s * 1_000_000),
            resource_id: ResourceId::parse("r").expect("id"),
            resource_type: ResourceType::parse("t").expect("type"),
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            event: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn few_samples_are_their_own_points() {
        let s = vec![sample(10, &[("a", 1.0)]), sample(11, &[("b", 2.0)])];
        let (w, ts, m) = bucket(&s, UnixMicros(0), UnixMicros(20_000_000), 10);
        assert_eq!(w, 0.0);
        assert_eq!(ts, vec![10.0, 11.0]);
        assert_eq!(m["a"], vec![Some(1.0), None]);
        assert_eq!(m["b"], vec![None, Some(2.0)]);
    }

    #[test]
    fn many_samples_are_averaged_per_bucket_with_gaps_as_nulls() {
        // 100 s of one-second samples into 10 buckets of 10 s; metric c only in the first 5 s.
        let s: Vec<Sample> = (0..100)
            .map(|t| {
                if t < 5 {
                    sample(t, &[("a", t as f64), ("c", 1.0)])
                } else {
                    sample(t, &[("a", t as f64)])
                }
            })
            .collect();
        let (w, ts, m) = bucket(&s, UnixMicros(0), UnixMicros(100_000_000), 10);
        assert_eq!(w, 10.0);
        assert_eq!(ts.len(), 10);
        assert_eq!(ts[0], 9.0);
        assert_eq!(m["a"][0], Some(4.5));
        assert_eq!(m["a"][9], Some(94.5));
        assert_eq!(m["c"][0], Some(1.0));
        assert!(m["c"][1..].iter().all(Option::is_none));
    }

    #[test]
    fn points_are_bounded() {
        let s: Vec<Sample> = (0..20_000).map(|t| sample(t, &[("a", 1.0)])).collect();
        let (_, ts, _) = bucket(&s, UnixMicros(0), UnixMicros(20_000_000_000), usize::MAX);
        assert!(ts.len() <= MAX_POINTS);
    }
}

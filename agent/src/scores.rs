//! Each resource's recent predictions over time (failure probability and anomaly score), kept in
//! memory for the dashboard's score plot and `GET /v1/resources/{id}/scores`: the last
//! [`FINE_POINTS`] seconds at one point per second, and the last [`COARSE_POINTS`] minutes at one
//! point per minute (each the minute's highest values, so a one-second alarm is not averaged
//! away). About 37 KB per resource at most; nothing is written to disk (the history holds the
//! telemetry the scores were computed from, and `augur replay` recomputes them).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Seconds kept at one point per second.
pub const FINE_POINTS: usize = 900;
/// Minutes kept at one point per minute.
pub const COARSE_POINTS: usize = 1440;

/// One point: the highest failure probability and anomaly score of its second (or minute).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorePoint {
    /// Start of the point's second or minute, Unix milliseconds.
    pub ts_ms: i64,
    pub failure_probability: f32,
    pub anomaly_score: f32,
}

impl ScorePoint {
    fn merge(&mut self, p: f32, a: f32) {
        self.failure_probability = self.failure_probability.max(p);
        self.anomaly_score = self.anomaly_score.max(a);
    }
}

/// One resource's scores over time. Both rings are allocated at their full size once (about
/// 37 KB), so they never grow past it.
#[derive(Clone, Debug)]
pub struct ScoreRing {
    fine: VecDeque<ScorePoint>,
    coarse: VecDeque<ScorePoint>,
}

impl Default for ScoreRing {
    fn default() -> Self {
        Self {
            fine: VecDeque::with_capacity(FINE_POINTS),
            coarse: VecDeque::with_capacity(COARSE_POINTS),
        }
    }
}

fn floor_to(ts_ms: i64, step_ms: i64) -> i64 {
    ts_ms.div_euclid(step_ms) * step_ms
}

impl ScoreRing {
    /// Records a prediction made at `ts_ms`. A sample older than the newest point (a late
    /// push) is merged into the newest point rather than reordering the ring.
    pub fn record(&mut self, ts_ms: i64, failure_probability: f64, anomaly_score: f64) {
        let (p, a) = (failure_probability as f32, anomaly_score as f32);
        for (ring, step, cap) in [
            (&mut self.fine, 1_000, FINE_POINTS),
            (&mut self.coarse, 60_000, COARSE_POINTS),
        ] {
            let at = floor_to(ts_ms, step);
            match ring.back_mut() {
                Some(last) if last.ts_ms >= at => last.merge(p, a),
                _ => {
                    // Room first, so the ring never holds more than `cap` (and never grows).
                    while ring.len() >= cap {
                        ring.pop_front();
                    }
                    ring.push_back(ScorePoint {
                        ts_ms: at,
                        failure_probability: p,
                        anomaly_score: a,
                    });
                }
            }
        }
    }

    /// The points at or after `since_ms`, oldest first: per minute where the per-second ring
    /// no longer reaches, per second after. Returns the points and the coarsest resolution used
    /// (seconds).
    pub fn since(&self, since_ms: i64) -> (Vec<ScorePoint>, u32) {
        let fine_from = self.fine.front().map_or(i64::MAX, |p| p.ts_ms);
        let mut out: Vec<ScorePoint> = Vec::new();
        let mut resolution = 1;
        if since_ms < fine_from {
            // Minutes before the per-second ring begins (the minute it begins in is left to it).
            for p in self
                .coarse
                .iter()
                .filter(|p| p.ts_ms + 60_000 > since_ms && p.ts_ms + 60_000 <= fine_from)
            {
                out.push(*p);
                resolution = 60;
            }
        }
        out.extend(self.fine.iter().filter(|p| p.ts_ms >= since_ms).copied());
        (out, resolution)
    }

    /// Bytes held at most.
    pub const MAX_BYTES: usize = (FINE_POINTS + COARSE_POINTS) * std::mem::size_of::<ScorePoint>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_keeps_its_highest_values_and_the_rings_are_bounded() {
        let mut r = ScoreRing::default();
        r.record(10_100, 0.2, 0.1);
        r.record(10_900, 0.1, 0.7);
        let (pts, res) = r.since(0);
        assert_eq!(res, 1);
        assert_eq!(
            pts,
            vec![ScorePoint {
                ts_ms: 10_000,
                failure_probability: 0.2,
                anomaly_score: 0.7
            }]
        );
        for s in 0..(2 * COARSE_POINTS as i64 * 60) {
            r.record(20_000 + s * 1_000, 0.0, 0.0);
        }
        assert_eq!(r.fine.len(), FINE_POINTS);
        assert_eq!(r.coarse.len(), COARSE_POINTS);
        // Never grown past what it was given.
        assert_eq!(r.fine.capacity(), FINE_POINTS);
        assert_eq!(r.coarse.capacity(), COARSE_POINTS);
    }

    #[test]
    fn an_old_window_is_served_per_minute_then_per_second() {
        let mut r = ScoreRing::default();
        // Two hours at one prediction a second; one alarm second an hour ago.
        let start = 1_000_000_000;
        for s in 0..7_200_i64 {
            let alarm = s == 3_600;
            r.record(start + s * 1_000, if alarm { 0.9 } else { 0.1 }, 0.0);
        }
        let end = start + 7_199_000;
        let (pts, res) = r.since(end - 3_600_000 - 60_000);
        assert_eq!(res, 60);
        assert!(pts.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms), "ordered");
        // The alarm second survives in its minute's point.
        assert!(pts.iter().any(|p| p.failure_probability == 0.9));
        // The last 15 minutes are per second.
        let fine: Vec<_> = pts.iter().filter(|p| p.ts_ms % 60_000 != 0).collect();
        assert!(fine.len() >= FINE_POINTS - 60, "{}", fine.len());
        // A recent window is per second only.
        let (recent, res) = r.since(end - 60_000);
        assert_eq!(res, 1);
        assert_eq!(recent.len(), 61);
    }

    #[test]
    fn a_late_sample_merges_into_the_newest_point() {
        let mut r = ScoreRing::default();
        r.record(5_000, 0.1, 0.1);
        r.record(3_000, 0.5, 0.0);
        let (pts, _) = r.since(0);
        assert_eq!(pts.len(), 1);
        assert_eq!(pts[0].failure_probability, 0.5);
    }
}

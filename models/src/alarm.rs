//! Whether a resource's failure alarm is raised: the probability at or above the type's threshold,
//! kept raised until it has stayed below for a while.
//!
//! A probability hovering about its threshold (a metric cycling near its limit, heavy-tailed noise
//! on a slow climb) would otherwise raise and clear the alarm every few samples: each raise is a
//! page, a gossiped crossing and a trigger the autonomous loop must weigh. Prometheus alerting
//! rules have the same knob (`keep_firing_for`). The failure replay scores every detector through
//! the same latch, so the comparison stays fair.

use serde::{Deserialize, Serialize};

/// How long a raised alarm stays raised after the probability falls below its threshold, by
/// default (seconds). Chosen on the classic failure family (seed 1007) and reported on the other
/// family and seeds (docs/BENCHMARKS.md, "Alarm episodes").
pub const KEEP_FIRING_S: f64 = 30.0;

/// One resource's alarm state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmLatch {
    on: bool,
    /// When the probability last went below the threshold while raised.
    below_since: Option<f64>,
}

impl AlarmLatch {
    /// An alarm raised already (restored from a saved prediction above its threshold).
    pub fn raised() -> Self {
        Self {
            on: true,
            below_since: None,
        }
    }

    /// Takes the sample's probability at `ts_s` (seconds); returns whether the alarm is raised.
    pub fn update(&mut self, ts_s: f64, probability: f64, threshold: f64, keep_s: f64) -> bool {
        self.fire(ts_s, probability >= threshold, keep_s)
    }

    /// Like [`update`](Self::update), from whether the sample alone would alarm.
    pub fn fire(&mut self, ts_s: f64, over: bool, keep_s: f64) -> bool {
        if over {
            self.on = true;
            self.below_since = None;
        } else if self.on {
            let since = *self.below_since.get_or_insert(ts_s);
            if ts_s - since >= keep_s {
                self.on = false;
                self.below_since = None;
            }
        }
        self.on
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// Every sample's alarm (one second apart) through the latch.
pub fn keep_firing(alarms: &[bool], keep_s: f64) -> Vec<bool> {
    let mut latch = AlarmLatch::default();
    alarms
        .iter()
        .enumerate()
        .map(|(t, &on)| latch.fire(t as f64, on, keep_s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_alarm_stays_until_it_has_been_below_for_the_hold() {
        let cases: &[(&[bool], f64, &[bool])] = &[
            // Flicker within the hold: one episode.
            (
                &[false, true, false, true, false, false, false, false],
                2.0,
                &[false, true, true, true, true, true, false, false],
            ),
            // No hold: the alarm follows the samples.
            (
                &[true, false, true, false],
                0.0,
                &[true, false, true, false],
            ),
            // Never over: never raised.
            (&[false; 4], 60.0, &[false; 4]),
        ];
        for (input, keep, want) in cases {
            assert_eq!(keep_firing(input, *keep), *want, "{input:?} keep {keep}");
        }
    }

    #[test]
    fn the_hold_is_measured_in_time_not_samples() {
        let mut l = AlarmLatch::default();
        assert!(l.update(0.0, 0.9, 0.75, 60.0));
        assert!(l.update(10.0, 0.1, 0.75, 60.0));
        // A sample 55 s later (a gap): still within the hold.
        assert!(l.update(65.0, 0.1, 0.75, 60.0));
        assert!(!l.update(70.0, 0.1, 0.75, 60.0));
        assert!(!l.is_on());
    }
}

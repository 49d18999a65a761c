//! Empirical forecast errors: the forecaster's own h-step forecasts are remembered, and when the
//! h-th later sample arrives the squared error is folded into a running mean per horizon. The
//! uncertainty of a forecast then comes from how wrong this forecaster has actually been on this
//! metric, not from the textbook variance of a model the series may not follow (Holt's formula
//! assumes a randomly walking trend and overstates the spread of a stationary noisy metric by an
//! order of magnitude at a 300-step horizon, which raised false alarms).
//!
//! The same bookkeeping measures how much of the trend's extrapolation has come true: for the
//! forecasts whose trend moved them far from the level (more than `credible_after` spreads), the
//! realised change is regressed on the forecast drift, per horizon. A metric whose climbs keep
//! going scores near 1; one whose steps and bursts revert scores near 0, and its forecasts are
//! pulled back towards the level by that much (`credibility`).

use std::collections::VecDeque;

/// Horizons (in samples) at which errors are tracked.
pub const HORIZONS: [u32; 8] = [1, 5, 15, 30, 60, 120, 300, 600];
/// Errors a horizon needs before its estimate is used.
pub const MIN_ERRORS: u64 = 60;
/// Weight of a new squared error once warm (about the last 200 errors).
const DECAY: f64 = 0.005;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EmpiricalErrors {
    /// Per horizon, (due sample index, forecast mean, drift counted for credibility or 0), in due
    /// order (one queue per horizon keeps every push and pop O(1)).
    pending: [VecDeque<(u64, f64, f64)>; HORIZONS.len()],
    mse: [f64; HORIZONS.len()],
    n: [u64; HORIZONS.len()],
    index: u64,
    /// Per horizon, over the forecasts whose drift was counted: their number, and the decayed
    /// means of realised change times drift and of drift squared.
    n_drift: [u64; HORIZONS.len()],
    change_drift: [f64; HORIZONS.len()],
    drift2: [f64; HORIZONS.len()],
    /// A forecast's drift is counted, and discounted, when it exceeds this many spreads of the
    /// horizon's errors (0: never; every trend is taken at its word).
    credible_after: f64,
}

impl EmpiricalErrors {
    /// Errors that also learn the trend's credibility past `credible_after` spreads (0: off).
    pub fn new(credible_after: f64) -> Self {
        Self {
            credible_after: credible_after.max(0.0),
            ..Self::default()
        }
    }

    /// Heap bytes of the pending forecasts at most (one queue per horizon, `h` deep).
    pub fn max_heap_bytes() -> usize {
        HORIZONS
            .iter()
            .map(|h| 24 * (*h as usize + 1).next_power_of_two())
            .sum()
    }

    /// Takes the value observed now, scoring the forecasts that were due.
    pub fn observe(&mut self, x: f64) {
        self.observe_tallied(x, None);
    }

    /// [`observe`](Self::observe), also adding each counted forecast that came due to `tally`.
    pub fn observe_tallied(&mut self, x: f64, mut tally: Option<&mut CredibilityTally>) {
        for h in 0..HORIZONS.len() {
            while let Some(&(due, mean, drift)) = self.pending[h].front() {
                if due > self.index {
                    break;
                }
                self.pending[h].pop_front();
                if due == self.index {
                    let e2 = (x - mean) * (x - mean);
                    self.n[h] += 1;
                    let w = (1.0 / self.n[h] as f64).max(DECAY);
                    self.mse[h] += w * (e2 - self.mse[h]);
                    if drift != 0.0 {
                        // The change from the level the forecast started at, against its drift.
                        let change = x - (mean - drift);
                        self.n_drift[h] += 1;
                        let w = (1.0 / self.n_drift[h] as f64).max(DECAY);
                        self.change_drift[h] += w * (change * drift - self.change_drift[h]);
                        self.drift2[h] += w * (drift * drift - self.drift2[h]);
                        if let Some(t) = tally.as_deref_mut()
                            && self.mse[h] > 0.0
                        {
                            // In units of the horizon's spread, so metrics of any scale pool.
                            t.n[h] += 1;
                            t.change_drift[h] += change * drift / self.mse[h];
                            t.drift2[h] += drift * drift / self.mse[h];
                        }
                    }
                }
            }
        }
    }

    /// Remembers the forecasts made now from `level` (`forecast(h)` gives the mean h samples
    /// ahead), then moves on.
    pub fn remember(&mut self, level: f64, mut forecast: impl FnMut(u32) -> Option<f64>) {
        for (hi, &h) in HORIZONS.iter().enumerate() {
            if let Some(mean) = forecast(h) {
                let drift = mean - level;
                let counted = self.credible_after > 0.0
                    && self.n[hi] >= MIN_ERRORS
                    && drift.abs() > self.credible_after * self.mse[hi].sqrt();
                let drift = if counted { drift } else { 0.0 };
                self.pending[hi].push_back((self.index + u64::from(h), mean, drift));
            }
        }
        self.index += 1;
    }

    /// The share (0 to 1) of a forecast's `drift` from the level `steps` ahead to believe, given
    /// the error `variance` there: 1 while the drift is within `credible_after` spreads;
    /// otherwise what such drifts have come to on this metric, per horizon once 60 have come due
    /// there, else what they came to on the type's history (`prior`, [`CredibilityTally`]), else
    /// 1; interpolated between horizons and held past the longest.
    pub fn credibility(
        &self,
        steps: f64,
        drift: f64,
        variance: f64,
        prior: Option<&CredibilityPrior>,
    ) -> f64 {
        if self.credible_after <= 0.0 || drift.abs() <= self.credible_after * variance.sqrt() {
            return 1.0;
        }
        let warm = HORIZONS.iter().enumerate().filter_map(|(i, h)| {
            known_ratio(self.n_drift[i], self.change_drift[i], self.drift2[i])
                .or_else(|| prior.and_then(|p| p[i]))
                .map(|c| (f64::from(*h), c.clamp(0.0, 1.0)))
        });
        // Held past the longest warm horizon.
        match interpolate(warm, steps) {
            Interpolated::At(c) => c,
            Interpolated::Past(_, c) => c,
            Interpolated::Unknown => 1.0,
        }
    }

    /// The error variance `steps` ahead: interpolated between warm horizons. Past the longest warm
    /// horizon there is no estimate (None), except past the longest tracked one, where it grows
    /// linearly in steps. Guessing the spread far ahead from the spread one step ahead is exactly
    /// the over- or under-statement this type exists to avoid.
    pub fn variance(&self, steps: f64) -> Option<f64> {
        let warm = HORIZONS
            .iter()
            .zip(self.mse.iter().zip(&self.n))
            .filter(|(_, (_, n))| **n >= MIN_ERRORS)
            .map(|(h, (m, _))| (f64::from(*h), *m));
        match interpolate(warm, steps) {
            Interpolated::At(v) => Some(v),
            Interpolated::Past(hl, vl) => {
                let longest = f64::from(HORIZONS[HORIZONS.len() - 1]);
                (hl == longest).then(|| vl * steps / hl)
            }
            Interpolated::Unknown => None,
        }
    }
}

/// Per horizon, the credibility of far-carried trends on a resource type's history (None where
/// too few came due).
pub type CredibilityPrior = [Option<f64>; HORIZONS.len()];

/// The trend's credibility pooled over many series (a resource type's history, in training):
/// per horizon, the counted forecasts that came due, and the sums of realised change times drift
/// and of drift squared, each in units of that series' spread at the horizon.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CredibilityTally {
    pub n: [u64; HORIZONS.len()],
    pub change_drift: [f64; HORIZONS.len()],
    pub drift2: [f64; HORIZONS.len()],
}

impl CredibilityTally {
    /// The pooled credibility per horizon, where at least 60 forecasts came due.
    pub fn prior(&self) -> CredibilityPrior {
        std::array::from_fn(|i| {
            known_ratio(self.n[i], self.change_drift[i], self.drift2[i]).map(|c| c.clamp(0.0, 1.0))
        })
    }
}

/// The regression of change on drift from `n` forecasts' sums: None when fewer than 60 came due,
/// or when values so large that their squares overflowed leave it unknown.
fn known_ratio(n: u64, change_drift: f64, drift2: f64) -> Option<f64> {
    let ratio = change_drift / drift2;
    (n >= MIN_ERRORS && drift2 > 0.0 && ratio.is_finite()).then_some(ratio)
}

/// A per-horizon estimate at `steps`.
enum Interpolated {
    /// Between two warm horizons (linear), or at or before the first.
    At(f64),
    /// Past the last warm horizon: that horizon and its estimate.
    Past(f64, f64),
    /// No horizon is warm.
    Unknown,
}

/// Interpolates `steps` between the `warm` (horizon, estimate) points, in horizon order.
fn interpolate(warm: impl Iterator<Item = (f64, f64)>, steps: f64) -> Interpolated {
    let mut below: Option<(f64, f64)> = None;
    for (h, v) in warm {
        if steps <= h {
            return Interpolated::At(match below {
                Some((a, va)) => va + (v - va) * (steps - a) / (h - a),
                None => v,
            });
        }
        below = Some((h, v));
    }
    below.map_or(Interpolated::Unknown, |(h, v)| Interpolated::Past(h, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_forecast_of_white_noise_has_the_noise_variance_at_every_horizon() {
        let mut e = EmpiricalErrors::default();
        let mut rng = crate::anomaly::iforest::SplitMix64::new(1);
        for _ in 0..5000 {
            let x = rng.next_f64(); // variance 1/12
            e.observe(x);
            e.remember(0.5, |_| Some(0.5));
        }
        for steps in [1.0, 10.0, 100.0, 300.0] {
            let v = e.variance(steps).expect("warm");
            assert!((v - 1.0 / 12.0).abs() < 0.02, "{steps}: {v}");
        }
        let far = e
            .variance(1200.0)
            .expect("extrapolated past the longest horizon");
        assert!(far > 0.12, "grows past the longest horizon: {far}");
    }

    #[test]
    fn nothing_until_warm_and_nothing_beyond_the_warm_horizons() {
        let mut e = EmpiricalErrors::default();
        for _ in 0..10 {
            e.observe(1.0);
            e.remember(1.0, |_| Some(1.0));
        }
        assert_eq!(e.variance(1.0), None);
        for _ in 0..70 {
            e.observe(1.0);
            e.remember(1.0, |_| Some(1.0));
        }
        assert!(e.variance(5.0).is_some());
        assert_eq!(e.variance(300.0), None);
    }

    #[test]
    fn a_trend_that_never_comes_true_loses_its_credibility_and_one_that_does_keeps_it() {
        // Noise around 0.5; one forecast in 20 claims a climb of 2 that never happens.
        let mut e = EmpiricalErrors::new(3.0);
        let mut rng = crate::anomaly::iforest::SplitMix64::new(2);
        for t in 0..20_000u64 {
            let x = rng.next_f64();
            e.observe(x);
            let drift = if t % 20 == 0 { 2.0 } else { 0.0 };
            e.remember(0.5, |_| Some(0.5 + drift));
        }
        for steps in [1.0, 60.0, 300.0, 1200.0] {
            let c = e.credibility(steps, 5.0, e.variance(steps).expect("warm"), None);
            assert!(c < 0.05, "{steps}: {c}");
        }
        // A drift within the spread is believed whatever the history.
        assert_eq!(e.credibility(300.0, 0.01, 0.3, None), 1.0);

        // A ramp whose forecasts come true.
        let mut e = EmpiricalErrors::new(3.0);
        let slope = 0.001;
        for t in 0..20_000u64 {
            let level = slope * t as f64;
            e.observe(level + 0.01 * rng.next_f64());
            e.remember(level, |h| Some(level + slope * f64::from(h)));
        }
        let c = e.credibility(300.0, 0.3, e.variance(300.0).expect("warm"), None);
        assert!((c - 1.0).abs() < 0.05, "{c}");
        // Off: every trend is taken at its word.
        assert_eq!(
            EmpiricalErrors::default().credibility(300.0, 100.0, 1.0, None),
            1.0
        );
    }

    #[test]
    fn values_whose_squares_overflow_leave_the_credibility_a_number() {
        // A climb of 2^560 (about 4e168) per sample, forecast exactly (powers of two: no
        // rounding): the drifts' squares overflow.
        let mut e = EmpiricalErrors::new(3.0);
        let step = 2f64.powi(560);
        for t in 0..2_000u64 {
            let level = step * t as f64;
            e.observe(level);
            e.remember(level, |h| Some(level + step * f64::from(h)));
        }
        for steps in [1.0, 60.0, 300.0] {
            let c = e.credibility(steps, 1e300, 1.0, None);
            assert!((0.0..=1.0).contains(&c), "{steps}: {c}");
        }
    }
}

//! Empirical forecast errors: the forecaster's own h-step forecasts are remembered, and when the
//! h-th later sample arrives the squared error is folded into a running mean per horizon. The
//! uncertainty of a forecast then comes from how wrong this forecaster has actually been on this
//! metric, not from the textbook variance of a model the series may not follow (Holt's formula
//! assumes a randomly walking trend and overstates the spread of a stationary noisy metric by an
//! order of magnitude at a 300-step horizon, which raised false alarms).

use std::collections::VecDeque;

/// Horizons (in samples) at which errors are tracked.
pub const HORIZONS: [u32; 8] = [1, 5, 15, 30, 60, 120, 300, 600];
/// Errors a horizon needs before its estimate is used.
pub const MIN_ERRORS: u64 = 60;
/// Weight of a new squared error once warm (about the last 200 errors).
const DECAY: f64 = 0.005;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EmpiricalErrors {
    /// Per horizon, (due sample index, forecast mean), in due order (one queue per horizon keeps
    /// every push and pop O(1)).
    pending: [VecDeque<(u64, f64)>; HORIZONS.len()],
    mse: [f64; HORIZONS.len()],
    n: [u64; HORIZONS.len()],
    index: u64,
}

impl EmpiricalErrors {
    /// Takes the value observed now, scoring the forecasts that were due.
    pub fn observe(&mut self, x: f64) {
        for h in 0..HORIZONS.len() {
            while let Some(&(due, mean)) = self.pending[h].front() {
                if due > self.index {
                    break;
                }
                self.pending[h].pop_front();
                if due == self.index {
                    let e2 = (x - mean) * (x - mean);
                    self.n[h] += 1;
                    let w = (1.0 / self.n[h] as f64).max(DECAY);
                    self.mse[h] += w * (e2 - self.mse[h]);
                }
            }
        }
    }

    /// Remembers the forecasts made now (`forecast(h)` gives the mean h samples ahead), then moves on.
    pub fn remember(&mut self, mut forecast: impl FnMut(u32) -> Option<f64>) {
        for (hi, &h) in HORIZONS.iter().enumerate() {
            if let Some(mean) = forecast(h) {
                self.pending[hi].push_back((self.index + u64::from(h), mean));
            }
        }
        self.index += 1;
    }

    /// The error variance `steps` ahead: interpolated between warm horizons. Past the longest warm
    /// horizon there is no estimate (None), except past the longest tracked one, where it grows
    /// linearly in steps. Guessing the spread far ahead from the spread one step ahead is exactly
    /// the over- or under-statement this type exists to avoid.
    pub fn variance(&self, steps: f64) -> Option<f64> {
        let warm: Vec<(f64, f64)> = HORIZONS
            .iter()
            .zip(self.mse.iter().zip(&self.n))
            .filter(|(_, (_, n))| **n >= MIN_ERRORS)
            .map(|(h, (m, _))| (f64::from(*h), *m))
            .collect();
        let &(h0, v0) = warm.first()?;
        if steps <= h0 {
            return Some(v0);
        }
        for w in warm.windows(2) {
            let ((a, va), (b, vb)) = (w[0], w[1]);
            if steps <= b {
                return Some(va + (vb - va) * (steps - a) / (b - a));
            }
        }
        let &(hl, vl) = warm.last()?;
        let longest = f64::from(HORIZONS[HORIZONS.len() - 1]);
        (hl == longest).then(|| vl * steps / hl)
    }
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
            e.remember(|_| Some(0.5));
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
            e.remember(|_| Some(1.0));
        }
        assert_eq!(e.variance(1.0), None);
        for _ in 0..70 {
            e.observe(1.0);
            e.remember(|_| Some(1.0));
        }
        assert!(e.variance(5.0).is_some());
        assert_eq!(e.variance(300.0), None);
    }
}

//! Holt's linear exponential smoothing (level + trend), the cheap statistical forecaster: it serves
//! during cold start and is the baseline any learned forecaster must beat. The one-step residual
//! variance is tracked with the same smoothing, and the h-step variance grows as for a local linear
//! trend model.

use super::Forecast;

/// Online Holt smoother for one metric.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    /// Smoothing of the squared one-step error.
    gamma: f64,
    level: f64,
    trend: f64,
    variance: f64,
    seen: u64,
    /// Damping of the trend (Gardner and McKenzie): the forecast `h` steps ahead adds the trend
    /// `phi + phi^2 + ... + phi^h` times; 1 is Holt's undamped line.
    #[serde(default = "undamped")]
    phi: f64,
    /// Residuals beyond this many standard deviations are clipped to it before they move the
    /// level and trend (0: none), as in robust Holt-Winters (Gelper, Fried and Croux, 2010): a
    /// burst of a few samples does not become a trend.
    #[serde(default)]
    clip: f64,
}

fn undamped() -> f64 {
    1.0
}

impl Holt {
    /// `alpha` smooths the level, `beta` the trend (both in (0, 1]).
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self {
            alpha: alpha.clamp(1e-4, 1.0),
            beta: beta.clamp(1e-4, 1.0),
            gamma: 0.02,
            level: 0.0,
            trend: 0.0,
            variance: 0.0,
            seen: 0,
            phi: 1.0,
            clip: 0.0,
        }
    }

    /// The same smoother with residuals clipped at `k` standard deviations (0: not clipped).
    pub fn clipped(mut self, k: f64) -> Self {
        self.clip = if k.is_finite() && k > 0.0 { k } else { 0.0 };
        self
    }

    /// The same smoother with its trend damped by `phi` per step (in (0, 1]; 1: undamped).
    pub fn damped(mut self, phi: f64) -> Self {
        self.phi = if phi.is_finite() {
            phi.clamp(0.5, 1.0)
        } else {
            1.0
        };
        self
    }

    /// `phi + phi^2 + ... + phi^h`.
    fn trend_steps(&self, h: f64) -> f64 {
        if self.phi >= 1.0 {
            h
        } else {
            self.phi * (1.0 - self.phi.powf(h)) / (1.0 - self.phi)
        }
    }

    /// The smoothed level (the forecast of the current sample's value).
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Samples seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The forecast for the next sample, before it is seen (None until two samples were seen).
    pub fn one_step(&self) -> Option<Forecast> {
        self.forecast(1)
    }

    /// The forecast `steps` samples ahead.
    pub fn forecast(&self, steps: u32) -> Option<Forecast> {
        if self.seen < 2 {
            return None;
        }
        let h = f64::from(steps.max(1));
        let mean = self.level + self.trend_steps(h) * self.trend;
        // Var of the h-step error of a local linear trend: sigma^2 (1 + sum_{j<h} (alpha (1 + j beta))^2).
        // Closed form of the sum over j = 1..h-1 of (1 + j beta)^2.
        let n = h - 1.0;
        let sum = n + self.beta * n * h + self.beta * self.beta * n * h * (2.0 * h - 1.0) / 6.0;
        let growth = 1.0 + self.alpha * self.alpha * sum;
        Some(Forecast {
            mean,
            variance: self.variance.max(1e-12) * growth,
        })
    }

    /// Takes a sample; returns the one-step residual it made (None during warm-up).
    pub fn update(&mut self, x: f64) -> Option<f64> {
        self.seen += 1;
        match self.seen {
            1 => {
                self.level = x;
                None
            }
            2 => {
                // The first difference of a noisy series is a poor slope; start flat and let the
                // early, faster trend smoothing below find the slope.
                self.trend = 0.0;
                self.level = self.alpha * x + (1.0 - self.alpha) * self.level;
                None
            }
            _ => {
                let predicted = self.level + self.phi * self.trend;
                let mut residual = x - predicted;
                // Clipped once the residuals' spread has settled; the spread then learns from
                // clipped residuals too, so a lasting change still gets through within tens of
                // samples (each one lets the spread grow by up to a few percent).
                if self.clip > 0.0 && self.seen >= 50 {
                    let bound = self.clip * self.variance.sqrt();
                    if bound > 0.0 {
                        residual = residual.clamp(-bound, bound);
                    }
                }
                let x = predicted + residual;
                let prev_level = self.level;
                self.level = self.alpha * x + (1.0 - self.alpha) * predicted;
                // Early on the trend is the running mean of level changes (weight 1/n), so a small
                // beta does not leave a bad start in place for hundreds of samples.
                let beta = self.beta.max(1.0 / (self.seen as f64 - 1.0));
                self.trend =
                    beta * (self.level - prev_level) + (1.0 - beta) * self.phi * self.trend;
                let g = if self.seen < 50 {
                    1.0 / (self.seen as f64 - 2.0)
                } else {
                    self.gamma
                };
                self.variance = (1.0 - g) * self.variance + g * residual * residual;
                Some(residual)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_linear_trend_exactly() {
        let mut h = Holt::new(0.5, 0.3);
        for t in 0..400 {
            h.update(3.0 + 0.5 * f64::from(t));
        }
        let f = h.forecast(10).expect("warm");
        assert!((f.mean - (3.0 + 0.5 * 409.0)).abs() < 1e-6, "{f:?}");
        assert!(f.variance < 1e-3, "{f:?}");
    }

    /// Clipped, a burst of a few samples moves the trend far less; a lasting shift still gets
    /// through.
    #[test]
    fn clipping_keeps_a_burst_out_of_the_trend_but_follows_a_shift() {
        let run = |k: f64, burst: &dyn Fn(u32) -> f64| {
            let mut h = Holt::new(0.15, 0.02).clipped(k);
            let mut worst: f64 = 0.0;
            for t in 0..600u32 {
                let noise = if t % 2 == 0 { 0.01 } else { -0.01 };
                h.update(1.0 + noise + burst(t));
                if let Some(f) = h.forecast(300) {
                    worst = worst.max(f.mean);
                }
            }
            (worst, h.forecast(1).expect("warm").mean)
        };
        let burst = |t: u32| if (400..420).contains(&t) { 1.0 } else { 0.0 };
        let (plain, _) = run(0.0, &burst);
        let (clipped, _) = run(3.0, &burst);
        assert!(plain > 3.0, "unclipped, the burst is a trend: {plain}");
        assert!(clipped < 0.5 * plain, "clipped {clipped} vs {plain}");
        let shift = |t: u32| if t >= 400 { 1.0 } else { 0.0 };
        let (_, level) = run(3.0, &shift);
        assert!((level - 2.0).abs() < 0.1, "follows the shift: {level}");
    }

    #[test]
    fn closed_form_variance_matches_the_sum() {
        let mut h = Holt::new(0.3, 0.05);
        for t in 0..100 {
            h.update(f64::from(t % 7));
        }
        let sigma2 = h.forecast(1).expect("warm").variance;
        for steps in [1u32, 2, 10, 300] {
            let mut growth = 1.0;
            for j in 1..steps {
                let c = 0.3 * (1.0 + f64::from(j) * 0.05);
                growth += c * c;
            }
            let got = h.forecast(steps).expect("warm").variance;
            assert!(
                (got - sigma2 * growth).abs() <= 1e-9 * got.max(1.0),
                "{steps}: {got} vs {}",
                sigma2 * growth
            );
        }
    }

    #[test]
    fn uncertainty_grows_with_the_horizon_and_the_noise() {
        let mut h = Holt::new(0.3, 0.05);
        let mut rng = 1u64;
        for _ in 0..500 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0;
            h.update(10.0 + noise);
        }
        let f1 = h.forecast(1).expect("warm");
        let f30 = h.forecast(30).expect("warm");
        assert!((f1.mean - 10.0).abs() < 1.0);
        assert!(f1.variance > 0.1 && f1.variance < 1.0, "{f1:?}");
        assert!(f30.variance > f1.variance);
    }
}

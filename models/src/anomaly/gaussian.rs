//! NAB's "windowed Gaussian" baseline: the tail probability of a value under a Gaussian fitted to the
//! last `window` values (the statistics refreshed every `step` values, as NAB's detector does).

use std::collections::VecDeque;

use super::{StreamingDetector, normal_tail};

#[derive(Clone, Debug)]
pub struct WindowedGaussian {
    window: usize,
    step: usize,
    buf: VecDeque<f64>,
    mean: f64,
    std: f64,
    since_refresh: usize,
}

impl WindowedGaussian {
    /// NAB's settings are a window of 6400 and a step of 100.
    pub fn new(window: usize, step: usize) -> Self {
        Self {
            window: window.max(2),
            step: step.max(1),
            buf: VecDeque::new(),
            mean: 0.0,
            std: 1.0,
            since_refresh: 0,
        }
    }

    fn refresh(&mut self) {
        let n = self.buf.len() as f64;
        self.mean = self.buf.iter().sum::<f64>() / n;
        let var = self
            .buf
            .iter()
            .map(|v| (v - self.mean).powi(2))
            .sum::<f64>()
            / n;
        self.std = var.sqrt().max(1e-6);
    }
}

impl StreamingDetector for WindowedGaussian {
    fn score(&mut self, x: f64) -> f64 {
        let score = if self.buf.len() >= 2 {
            // Two-sided: NAB scores 1 - tail of |z|.
            let z = (x - self.mean).abs() / self.std;
            1.0 - 2.0 * normal_tail(z).min(0.5)
        } else {
            0.0
        };
        self.buf.push_back(x);
        if self.buf.len() > self.window {
            self.buf.pop_front();
        }
        self.since_refresh += 1;
        if self.buf.len() <= 2 || self.since_refresh >= self.step {
            self.refresh();
            self.since_refresh = 0;
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_score_high_and_usual_values_low() {
        let mut d = WindowedGaussian::new(1000, 10);
        for i in 0..500 {
            d.score(if i % 2 == 0 { 9.0 } else { 11.0 });
        }
        assert!(d.score(10.0) < 0.5);
        assert!(d.score(30.0) > 0.99);
    }
}

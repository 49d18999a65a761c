//! Anomaly likelihood (after Numenta's HTM post-processing, Ahmad et al. 2017): instead of
//! thresholding a raw score, ask how unusual the recent average raw score is compared with the raw
//! scores of a long history. Bursts of merely high raw scores in a noisy series then stop looking
//! like anomalies, and a sustained change stands out. The output is log-scaled (see `LOG_SCALE`).

use std::collections::VecDeque;

use super::normal_tail;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AnomalyLikelihood {
    history: VecDeque<f64>,
    history_len: usize,
    short: VecDeque<f64>,
    short_len: usize,
    learning: usize,
    refresh_every: usize,
    since_refresh: usize,
    mean: f64,
    std: f64,
    seen: usize,
    last_tail: f64,
    /// Running sums of `history`, so a refresh costs O(1) rather than O(history).
    sum: f64,
    sum_sq: f64,
}

/// Smallest standard deviation of the averaged raw scores (HTM's floor), so a very steady history
/// does not make every small change look impossible.
const MIN_STD: f64 = 0.03;

/// The output is -ln(tail) / LOG_SCALE: 0.5 at a tail of 1e-20 and 1 at 1e-40. HTM divides by
/// ln(1e10) and so saturates at 1e-10; with sparse raw scores many distinct events reach that, and a
/// saturated score cannot rank them (measured on NAB: the best threshold sat at 1.0).
const LOG_SCALE: f64 = 92.103_403_719_761_83;

impl AnomalyLikelihood {
    /// `history_len` raw scores define "usual"; the last `short_len` are averaged; nothing is flagged
    /// during the first `learning` samples.
    pub fn new(history_len: usize, short_len: usize, learning: usize) -> Self {
        Self {
            history: VecDeque::new(),
            history_len: history_len.max(10),
            short: VecDeque::new(),
            short_len: short_len.max(1),
            learning,
            refresh_every: 10,
            since_refresh: 0,
            mean: 0.0,
            std: 1.0,
            seen: 0,
            last_tail: 1.0,
            sum: 0.0,
            sum_sq: 0.0,
        }
    }

    /// Takes a raw score in [0, 1] and returns the log-scaled likelihood in [0, 1].
    pub fn update(&mut self, raw: f64) -> f64 {
        self.seen += 1;
        self.short.push_back(raw);
        if self.short.len() > self.short_len {
            self.short.pop_front();
        }
        let avg = self.short.iter().sum::<f64>() / self.short.len() as f64;
        self.history.push_back(avg);
        self.sum += avg;
        self.sum_sq += avg * avg;
        if self.history.len() > self.history_len
            && let Some(old) = self.history.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        if self.seen.is_multiple_of(self.history_len) {
            // Re-sum now and then so rounding never accumulates.
            self.sum = self.history.iter().sum();
            self.sum_sq = self.history.iter().map(|v| v * v).sum();
        }
        self.since_refresh += 1;
        if self.since_refresh >= self.refresh_every || self.seen <= self.learning {
            let n = self.history.len() as f64;
            self.mean = self.sum / n;
            let var = (self.sum_sq / n - self.mean * self.mean).max(0.0);
            self.std = var.sqrt().max(MIN_STD);
            self.since_refresh = 0;
        }
        if self.seen <= self.learning {
            return 0.0;
        }
        let mut tail = normal_tail((avg - self.mean) / self.std);
        // After a flagged point, a run of equally extreme ones is one event, not many (HTM's filter).
        if self.last_tail <= 1e-5 && tail <= 1e-5 {
            tail = 1e-4;
        }
        self.last_tail = tail;
        (tail.max(1e-300).ln() / -LOG_SCALE).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sustained_rise_of_the_raw_score_is_likely_anomalous() {
        let mut l = AnomalyLikelihood::new(1000, 10, 100);
        let mut rng = super::super::iforest::SplitMix64::new(2);
        let mut max_usual: f64 = 0.0;
        for _ in 0..1000 {
            max_usual = max_usual.max(l.update(0.2 * rng.next_f64()));
        }
        let mut max_burst: f64 = 0.0;
        for _ in 0..10 {
            max_burst = max_burst.max(l.update(0.95));
        }
        assert!(max_usual < 0.5, "{max_usual}");
        assert!(max_burst > 0.5, "{max_burst}");
    }
}

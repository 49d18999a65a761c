//! Choosing a backend: smooth weighted round-robin (nginx's), deterministic and without bursts:
//! over any window of `sum(weights)` picks, each backend is chosen exactly its weight's times, and
//! its picks are spread evenly rather than bunched.

/// The picker's state over a list of weights (index-aligned with the backends).
#[derive(Clone, Debug, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// The next backend among those with `weights[i] > 0` and `usable(i)`; None if there is none.
    pub fn pick(&mut self, weights: &[u16], usable: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_by(weights.len(), |i| weights[i], usable)
    }

    /// [`Self::pick`] over `n` backends whose weights `weight(i)` gives (no list to build on the
    /// path of every connection).
    pub fn pick_by(
        &mut self,
        n: usize,
        weight: impl Fn(usize) -> u16,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.current.len() != n {
            self.current = vec![0; n];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            let w = weight(i);
            if w == 0 || !usable(i) {
                continue;
            }
            let w = i64::from(w);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_gets_its_weight_spread_evenly() {
        let mut p = SmoothWrr::default();
        let weights = [5, 1, 1];
        let picks: Vec<usize> = (0..7)
            .map(|_| p.pick(&weights, |_| true).expect("pick"))
            .collect();
        // nginx's example: a a b a c a a.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[p.pick(&weights, |_| true).expect("pick")] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn drained_and_unusable_backends_are_skipped() {
        let mut p = SmoothWrr::default();
        assert_eq!(p.pick(&[0, 0], |_| true), None);
        for _ in 0..10 {
            assert_eq!(p.pick(&[3, 0, 2], |i| i != 2), Some(0));
        }
        assert_eq!(p.pick(&[1], |_| false), None);
    }
}

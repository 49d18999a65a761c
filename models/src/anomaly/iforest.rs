//! Isolation Forest (Liu, Ting and Zhou, 2008), written here: small, seeded, allocation-light, and
//! with a streaming wrapper that refits on a sliding window. Anomalies are isolated by few random
//! axis-aligned splits, so a short average path means a high score.

use std::collections::VecDeque;

use super::StreamingDetector;

/// SplitMix64: a small seeded generator, so results are identical across platforms and versions.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Average path length of an unsuccessful search in a binary search tree of `n` points.
fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Node {
    Leaf {
        size: u32,
    },
    Split {
        feature: u16,
        threshold: f64,
        left: u32,
        right: u32,
    },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Tree {
    nodes: Vec<Node>,
}

/// In a packed tree, the feature byte of a leaf.
pub const PACKED_LEAF: u8 = u8::MAX;
/// The deepest packed tree read (a fitted tree is at most `ceil(log2(sample))` deep).
pub const PACKED_MAX_DEPTH: usize = 48;

/// The sample size a forest normalised by `norm` was fitted on: the smallest `n` with
/// `c(n) >= norm` (a leaf of a tree fitted on `n` points holds at most `n`).
pub(crate) fn sample_size_for(norm: f64) -> usize {
    let (mut lo, mut hi) = (1usize, 1usize << 24);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if c(mid) >= norm - 1e-9 {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

impl Tree {
    /// The largest leaf.
    pub(crate) fn max_leaf(&self) -> u32 {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Leaf { size } => *size,
                Node::Split { .. } => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// The tree in preorder, 5 bytes a node: the split's feature (or [`PACKED_LEAF`]), then the
    /// split's threshold or the leaf's size as a little-endian f32. No indices travel, so a packed
    /// tree cannot hold a cycle or point outside itself. None if a feature does not fit a byte.
    pub(crate) fn pack(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.nodes.len() * 5);
        let mut stack = vec![0u32];
        while let Some(i) = stack.pop() {
            match self.nodes[i as usize] {
                Node::Leaf { size } => {
                    out.push(PACKED_LEAF);
                    out.extend_from_slice(&(size as f32).to_le_bytes());
                }
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    out.push(u8::try_from(feature).ok().filter(|f| *f != PACKED_LEAF)?);
                    out.extend_from_slice(&(threshold as f32).to_le_bytes());
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        Some(out)
    }

    /// Reads a packed tree, passing each split through `map` (its feature and threshold into the
    /// reader's feature space; None drops the tree). None if the bytes are not exactly one tree
    /// no deeper than [`PACKED_MAX_DEPTH`], or a leaf's size is not a count up to 2^24.
    pub(crate) fn unpack(
        bytes: &[u8],
        map: &dyn Fn(u8, f64) -> Option<(u16, f64)>,
    ) -> Option<Tree> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(5) {
            return None;
        }
        let node_at = |k: usize| -> (u8, f32) {
            let b = &bytes[k * 5..k * 5 + 5];
            (b[0], f32::from_le_bytes([b[1], b[2], b[3], b[4]]))
        };
        let total = bytes.len() / 5;
        let mut tree = Tree {
            nodes: Vec::with_capacity(total),
        };
        // (node index in `tree` waiting for its right child, depth); the left child comes next.
        let mut open: Vec<(usize, usize)> = Vec::new();
        let mut depth = 0usize;
        for k in 0..total {
            let (feature, value) = node_at(k);
            let me = tree.nodes.len();
            if feature == PACKED_LEAF {
                if !(value.is_finite() && (0.0..=16_777_216.0).contains(&value))
                    || value.fract() != 0.0
                {
                    return None;
                }
                tree.nodes.push(Node::Leaf { size: value as u32 });
            } else {
                if depth >= PACKED_MAX_DEPTH || !value.is_finite() {
                    return None;
                }
                let (feature, threshold) = map(feature, f64::from(value))?;
                if !threshold.is_finite() {
                    return None;
                }
                tree.nodes.push(Node::Split {
                    feature,
                    threshold,
                    left: me as u32 + 1,
                    right: 0,
                });
                open.push((me, depth));
                depth += 1;
                continue;
            }
            // A leaf closes subtrees: the next node is the right child of the innermost split
            // still waiting for one.
            match open.pop() {
                Some((parent, d)) => {
                    let next = tree.nodes.len() as u32;
                    if let Node::Split { right, .. } = &mut tree.nodes[parent] {
                        *right = next;
                    }
                    depth = d + 1;
                    if k + 1 == total {
                        return None;
                    }
                }
                None => {
                    // The root's subtree is complete: nothing may follow.
                    return (k + 1 == total).then_some(tree);
                }
            }
        }
        None
    }
}

impl Tree {
    fn build(
        data: &[Vec<f64>],
        idx: &mut [usize],
        depth_limit: usize,
        rng: &mut SplitMix64,
    ) -> Self {
        let mut tree = Tree {
            nodes: Vec::with_capacity(2 * idx.len()),
        };
        tree.grow(data, idx, 0, depth_limit, rng);
        tree
    }

    fn grow(
        &mut self,
        data: &[Vec<f64>],
        idx: &mut [usize],
        depth: usize,
        limit: usize,
        rng: &mut SplitMix64,
    ) -> u32 {
        let me = self.nodes.len() as u32;
        self.nodes.push(Node::Leaf {
            size: idx.len() as u32,
        });
        if idx.len() <= 1 || depth >= limit {
            return me;
        }
        let dims = data[idx[0]].len();
        // Try a few features for one with spread; a constant block stays a leaf.
        for _ in 0..dims.max(1) * 2 {
            let f = rng.below(dims);
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &i in idx.iter() {
                lo = lo.min(data[i][f]);
                hi = hi.max(data[i][f]);
            }
            if hi <= lo {
                continue;
            }
            let threshold = lo + rng.next_f64() * (hi - lo);
            let mut split = 0;
            for k in 0..idx.len() {
                if data[idx[k]][f] < threshold {
                    idx.swap(k, split);
                    split += 1;
                }
            }
            if split == 0 || split == idx.len() {
                continue;
            }
            let (l, r) = idx.split_at_mut(split);
            let left = self.grow(data, l, depth + 1, limit, rng);
            let right = self.grow(data, r, depth + 1, limit, rng);
            self.nodes[me as usize] = Node::Split {
                feature: f as u16,
                threshold,
                left,
                right,
            };
            return me;
        }
        me
    }

    fn path_length(&self, x: &[f64]) -> f64 {
        let mut node = 0usize;
        let mut depth = 0.0;
        loop {
            match self.nodes[node] {
                Node::Leaf { size } => return depth + c(size as usize),
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    node = if x[feature as usize] < threshold {
                        left
                    } else {
                        right
                    } as usize;
                    depth += 1.0;
                }
            }
        }
    }
}

/// A fitted forest.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IsolationForest {
    trees: Vec<Tree>,
    norm: f64,
}

impl IsolationForest {
    /// A forest of `trees` normalised by `norm` (the expected path length of its sample size).
    pub(crate) fn from_trees(trees: Vec<Tree>, norm: f64) -> Self {
        Self { trees, norm }
    }

    pub fn len(&self) -> usize {
        self.trees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
    }

    /// The expected path length the scores are normalised by (`c(sample size)`).
    pub fn norm(&self) -> f64 {
        self.norm
    }

    pub(crate) fn tree(&self, i: usize) -> Option<&Tree> {
        self.trees.get(i)
    }

    /// Fits `n_trees` trees on sub-samples of `sample_size` rows of `data` (rows of equal length).
    pub fn fit(data: &[Vec<f64>], n_trees: usize, sample_size: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let psi = sample_size.min(data.len()).max(1);
        let limit = (psi as f64).log2().ceil() as usize;
        let mut trees = Vec::with_capacity(n_trees);
        let mut idx: Vec<usize> = (0..data.len()).collect();
        for _ in 0..n_trees {
            // Partial Fisher-Yates for a sample without replacement.
            for k in 0..psi {
                let j = k + rng.below(idx.len() - k);
                idx.swap(k, j);
            }
            let mut sample: Vec<usize> = idx[..psi].to_vec();
            trees.push(Tree::build(data, &mut sample, limit, &mut rng));
        }
        Self {
            trees,
            norm: c(psi).max(1e-9),
        }
    }

    /// Anomaly score in (0, 1]: about 0.5 or less for usual points, near 1 for isolated ones.
    pub fn score(&self, x: &[f64]) -> f64 {
        if self.trees.is_empty() {
            return 0.0;
        }
        let mean =
            self.trees.iter().map(|t| t.path_length(x)).sum::<f64>() / self.trees.len() as f64;
        2f64.powf(-mean / self.norm)
    }
}

/// An Isolation Forest over a univariate stream: each value becomes a small feature vector (value,
/// change, distance from a slow average), and the forest is refitted on a sliding window.
#[derive(Clone, Debug)]
pub struct StreamingIsolationForest {
    window: VecDeque<Vec<f64>>,
    capacity: usize,
    refit_every: usize,
    min_fit: usize,
    n_trees: usize,
    sample_size: usize,
    since_fit: usize,
    forest: Option<IsolationForest>,
    prev: Option<f64>,
    slow: Option<f64>,
    seed: u64,
    fits: u64,
}

impl StreamingIsolationForest {
    pub fn new(seed: u64) -> Self {
        Self {
            window: VecDeque::new(),
            capacity: 2048,
            refit_every: 256,
            min_fit: 128,
            n_trees: 100,
            sample_size: 256,
            since_fit: 0,
            forest: None,
            prev: None,
            slow: None,
            seed,
            fits: 0,
        }
    }

    fn features(&mut self, x: f64) -> Vec<f64> {
        let d = self.prev.map_or(0.0, |p| x - p);
        let slow = self.slow.unwrap_or(x);
        let f = vec![x, d, x - slow];
        self.prev = Some(x);
        self.slow = Some(0.98 * slow + 0.02 * x);
        f
    }
}

impl StreamingDetector for StreamingIsolationForest {
    fn score(&mut self, x: f64) -> f64 {
        let f = self.features(x);
        let s = self.forest.as_ref().map_or(0.0, |forest| forest.score(&f));
        self.window.push_back(f);
        if self.window.len() > self.capacity {
            self.window.pop_front();
        }
        self.since_fit += 1;
        if self.window.len() >= self.min_fit
            && (self.forest.is_none() || self.since_fit >= self.refit_every)
        {
            let data: Vec<Vec<f64>> = self.window.iter().cloned().collect();
            self.fits += 1;
            self.forest = Some(IsolationForest::fit(
                &data,
                self.n_trees,
                self.sample_size,
                self.seed ^ self.fits,
            ));
            self.since_fit = 0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_points_score_higher_than_the_crowd() {
        let mut rng = SplitMix64::new(1);
        let mut data: Vec<Vec<f64>> = (0..500)
            .map(|_| vec![rng.next_f64(), rng.next_f64()])
            .collect();
        data.push(vec![5.0, 5.0]);
        let forest = IsolationForest::fit(&data, 100, 256, 42);
        let outlier = forest.score(&[5.0, 5.0]);
        let inlier = forest.score(&[0.5, 0.5]);
        assert!(outlier > 0.7, "{outlier}");
        assert!(inlier < 0.5, "{inlier}");
    }

    #[test]
    fn the_same_seed_gives_the_same_forest() {
        let mut rng = SplitMix64::new(3);
        let data: Vec<Vec<f64>> = (0..300).map(|_| vec![rng.next_f64()]).collect();
        let a = IsolationForest::fit(&data, 20, 64, 9).score(&[0.9]);
        let b = IsolationForest::fit(&data, 20, 64, 9).score(&[0.9]);
        assert_eq!(a, b);
    }

    #[test]
    fn streaming_flags_a_spike() {
        let mut d = StreamingIsolationForest::new(5);
        let mut rng = SplitMix64::new(8);
        let mut usual = 0.0;
        for i in 0..1000 {
            let s = d.score(10.0 + rng.next_f64());
            if i > 900 {
                usual = f64::max(usual, s);
            }
        }
        let spike = d.score(40.0);
        assert!(spike > usual, "spike {spike} vs usual max {usual}");
    }
}

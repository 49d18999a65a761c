//! Federated model updates without I/O (DESIGN decision 7): what a node shares of its trained models
//! of one resource type, the checks an update from the network must pass before anything reads it,
//! and the robust aggregates that merge several into a candidate.
//!
//! Merging weights of networks only means something when they share a starting point: every node
//! initialises the MLP from the same seeded generator (`MlpConfig::seed`), and later rounds train
//! from the last merged model ([`crate::forecast::mlp::MlpForecaster::train_from`]), as federated
//! averaging does. The aggregate is coordinate-wise: for each weight, the contributors' values are
//! sorted and either the `f` lowest and `f` highest are dropped and the rest averaged by sample
//! count (trimmed mean), or the sample-weighted median is taken. Either tolerates `f` arbitrary
//! updates among `n > 2f`: a kept value always lies between two honest ones.
//!
//! The transport (signatures, admission, replay) lives in the mesh; the adoption guard (a candidate
//! replaces the local model only if it does no worse on the node's own held-out history) in
//! training.

use serde::{Deserialize, Serialize};

use crate::anomaly::iforest::{IsolationForest, Tree};
use crate::calibration::Platt;
use crate::forecast::mlp::{LayerWeights, MlpWeights};
pub use crate::lineage::{Contributor, Lineage, PartDecision, Rule};
use crate::trained::FeatureForest;

/// The most weights an MLP update may carry (the default network has about 2,200).
pub const MAX_WEIGHTS: usize = 200_000;
/// The most layers.
pub const MAX_LAYERS: usize = 8;
/// The largest absolute weight accepted (a trained network's are below 10).
pub const MAX_ABS_WEIGHT: f32 = 1e4;

/// What a node shares of one resource type's trained models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    pub resource_type: String,
    /// The engine the models were trained for ([`crate::MODEL_VERSION`]); another is refused.
    pub engine: String,
    /// The merged model this one was trained from (0: the shared seeded start).
    pub base_round: u64,
    /// The author's round: strictly increasing per author and type (an older or equal one is a
    /// replay).
    pub round: u64,
    /// Training rows behind it: its weight in the aggregate (capped by the receiver).
    pub samples: u64,
    /// How it did on the author's held-out history (shown, never trusted).
    pub validation: Validation,
    pub mlp: Option<MlpWeights>,
    pub calibration: Option<Platt>,
    /// A sample of the author's Isolation Forest (absent from updates before forests were
    /// shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forest: Option<SharedForest>,
    /// The limits the author learned from its labelled failures and uses
    /// (`crate::patterns`): a failure mode one node has seen, for nodes that have not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<crate::trained::LearnedLimit>,
}

/// The most learned limits an update may carry.
pub const MAX_SHARED_LIMITS: usize = 64;

/// Trees of its forest an author shares (a forest's trees are drawn alike, so any of them are a
/// fair sample): about 2 KB each packed.
pub const SHARED_TREES: usize = 32;
/// The most trees an update may carry, and the most bytes one packed tree may take.
pub const MAX_SHARED_TREES: usize = 64;
pub const MAX_TREE_BYTES: usize = 5 * 8192;
/// The most metrics a shared forest may read (its features are `2 x metrics`, a byte each).
pub const MAX_FOREST_METRICS: usize = 127;

/// An Isolation Forest as it travels: the metrics it reads with their standardisation (so a
/// receiver can re-express every split in its own), the normalising path length, and trees packed
/// in preorder (`crate::anomaly::iforest`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedForest {
    pub metrics: Vec<String>,
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    pub dsd: Vec<f64>,
    pub norm: f64,
    pub trees: Vec<PackedTree>,
}

/// One packed tree (a CBOR byte string on the wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedTree(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The first `trees` trees of `f`, packed. None if it reads more than [`MAX_FOREST_METRICS`]
/// metrics or has no tree.
pub fn share_forest(f: &FeatureForest, trees: usize) -> Option<SharedForest> {
    if f.metrics.len() > MAX_FOREST_METRICS || f.forest.is_empty() {
        return None;
    }
    let packed: Option<Vec<PackedTree>> = (0..f.forest.len().min(trees))
        .map(|i| f.forest.tree(i)?.pack().map(PackedTree))
        .collect();
    Some(SharedForest {
        metrics: f.metrics.clone(),
        mean: f.mean.clone(),
        sd: f.sd.clone(),
        dsd: f.dsd.clone(),
        norm: f.forest.norm(),
        trees: packed?,
    })
}

fn check_forest(f: &SharedForest) -> Result<(), Refusal> {
    let n = f.metrics.len();
    if n == 0 || n > MAX_FOREST_METRICS {
        return Err(Refusal::Oversized(format!(
            "a forest over {n} metrics (1 to {MAX_FOREST_METRICS})"
        )));
    }
    if f.trees.is_empty() || f.trees.len() > MAX_SHARED_TREES {
        return Err(Refusal::Oversized(format!(
            "{} trees (1 to {MAX_SHARED_TREES})",
            f.trees.len()
        )));
    }
    let names: std::collections::BTreeSet<&str> = f.metrics.iter().map(String::as_str).collect();
    if names.len() != n || f.metrics.iter().any(|m| m.is_empty() || m.len() > 256) {
        return Err(Refusal::Shape(
            "the forest's metric names are empty, too long or repeated".into(),
        ));
    }
    if f.mean.len() != n || f.sd.len() != n || f.dsd.len() != n {
        return Err(Refusal::Shape(format!(
            "the forest reads {n} metrics but standardises {}, {} and {}",
            f.mean.len(),
            f.sd.len(),
            f.dsd.len()
        )));
    }
    let positive = |v: &[f64]| v.iter().all(|x| x.is_finite() && *x > 0.0);
    if !(f.mean.iter().all(|x| x.is_finite())
        && positive(&f.sd)
        && positive(&f.dsd)
        && f.norm.is_finite()
        && f.norm > 0.0
        && f.norm < 100.0)
    {
        return Err(Refusal::NonFinite("the forest's standardisation"));
    }
    let features = 2 * n;
    for t in &f.trees {
        if t.0.len() > MAX_TREE_BYTES {
            return Err(Refusal::Oversized(format!(
                "a packed tree of {} bytes (at most {MAX_TREE_BYTES})",
                t.0.len()
            )));
        }
        let inside = |k: u8, v: f64| (usize::from(k) < features).then_some((u16::from(k), v));
        if Tree::unpack(&t.0, &inside).is_none() {
            return Err(Refusal::Shape(
                "a packed tree that is not one tree over the forest's features".into(),
            ));
        }
    }
    Ok(())
}

/// The author's own validation of an update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub mse_mlp: Option<f64>,
    pub mse_holt: Option<f64>,
    pub brier: Option<f64>,
}

/// Why an update is refused before it is read (each counted by the receiver).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("trained for engine {got}, this node runs {want}")]
    Engine { got: String, want: String },
    #[error("wrong shape: {0}")]
    Shape(String),
    #[error("non-finite or out-of-range value in {0}")]
    NonFinite(&'static str),
    #[error("oversized: {0}")]
    Oversized(String),
    #[error("round {got} is not after round {seen} from this author: a replay or an older update")]
    Replayed { got: u64, seen: u64 },
}

impl Refusal {
    /// A stable name for counters (`augur_model_updates_refused_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Engine { .. } => "engine",
            Self::Shape(_) => "shape",
            Self::NonFinite(_) => "non_finite",
            Self::Oversized(_) => "oversized",
            Self::Replayed { .. } => "replayed",
        }
    }
}

fn finite(x: f64) -> bool {
    x.is_finite()
}

/// Checks an update from the network against this node's engine and, when it has one, its own
/// model's shape. Nothing else reads an update that fails.
pub fn check(u: &ModelUpdate, engine: &str, shape: Option<&MlpWeights>) -> Result<(), Refusal> {
    if u.engine != engine {
        return Err(Refusal::Engine {
            got: u.engine.clone(),
            want: engine.to_owned(),
        });
    }
    if u.resource_type.is_empty() || u.resource_type.len() > 128 {
        return Err(Refusal::Shape(
            "resource type empty or longer than 128".into(),
        ));
    }
    if let Some(m) = &u.mlp {
        if m.layers.is_empty() || m.layers.len() > MAX_LAYERS {
            return Err(Refusal::Oversized(format!(
                "{} layers (1 to {MAX_LAYERS})",
                m.layers.len()
            )));
        }
        let total: usize = m.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum();
        if total > MAX_WEIGHTS {
            return Err(Refusal::Oversized(format!(
                "{total} weights (at most {MAX_WEIGHTS})"
            )));
        }
        for l in &m.layers {
            if l.weight.len() != l.inputs.saturating_mul(l.outputs) || l.bias.len() != l.outputs {
                return Err(Refusal::Shape(format!(
                    "a {}x{} layer with {} weights and {} biases",
                    l.inputs,
                    l.outputs,
                    l.weight.len(),
                    l.bias.len()
                )));
            }
            if l.weight
                .iter()
                .chain(&l.bias)
                .any(|w| !w.is_finite() || w.abs() > MAX_ABS_WEIGHT)
            {
                return Err(Refusal::NonFinite("the MLP's weights"));
            }
        }
        if !(finite(m.floor) && m.floor >= 0.0 && finite(m.var_scale) && m.var_scale > 0.0) {
            return Err(Refusal::NonFinite("the MLP's floor or variance scale"));
        }
        if let Some(own) = shape
            && !same_shape(own, m)
        {
            return Err(Refusal::Shape(
                "the MLP's configuration or layers differ from this node's".into(),
            ));
        }
    }
    if let Some(p) = &u.calibration
        && p.w.iter().any(|w| !w.is_finite() || w.abs() > 1e3)
    {
        return Err(Refusal::NonFinite("the calibration"));
    }
    if let Some(f) = &u.forest {
        check_forest(f)?;
    }
    if u.patterns.len() > MAX_SHARED_LIMITS {
        return Err(Refusal::Oversized(format!(
            "{} learned limits (at most {MAX_SHARED_LIMITS})",
            u.patterns.len()
        )));
    }
    for l in &u.patterns {
        if l.metric.is_empty() || l.metric.len() > 256 {
            return Err(Refusal::Shape(
                "a learned limit's metric is empty or longer than 256".into(),
            ));
        }
        if !(l.value.is_finite() && l.usual_median.is_finite() && l.usual_spread.is_finite()) {
            return Err(Refusal::NonFinite("a learned limit"));
        }
    }
    let v = &u.validation;
    if [v.mse_mlp, v.mse_holt, v.brier]
        .into_iter()
        .flatten()
        .any(|x| !x.is_finite())
    {
        return Err(Refusal::NonFinite("the validation summary"));
    }
    Ok(())
}

/// Whether two networks can be merged: the same configuration and layer shapes.
pub fn same_shape(a: &MlpWeights, b: &MlpWeights) -> bool {
    a.config.window == b.config.window
        && a.config.horizon == b.config.horizon
        && a.config.hidden == b.config.hidden
        && a.layers.len() == b.layers.len()
        && a.layers
            .iter()
            .zip(&b.layers)
            .all(|(x, y)| (x.inputs, x.outputs) == (y.inputs, y.outputs))
}

/// Merges one coordinate's values (`(value, weight)`; weights positive).
pub fn merge_values(values: &mut [(f64, f64)], rule: Rule) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let weighted_mean = |v: &[(f64, f64)]| {
        let w: f64 = v.iter().map(|x| x.1).sum();
        if w > 0.0 {
            v.iter().map(|x| x.0 * x.1).sum::<f64>() / w
        } else {
            v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64
        }
    };
    match rule {
        Rule::Mean => weighted_mean(values),
        Rule::TrimmedMean { f } => {
            values.sort_by(|a, b| a.0.total_cmp(&b.0));
            let f = f.min((values.len() - 1) / 2);
            weighted_mean(&values[f..values.len() - f])
        }
        Rule::Median => {
            values.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total: f64 = values.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            for &(v, w) in values.iter() {
                acc += w;
                if acc >= total / 2.0 {
                    return v;
                }
            }
            values[values.len() - 1].0
        }
    }
}

/// The weight a contribution of `samples` rows gets: its sample count, capped at `cap` so that no
/// one node (honest or lying about its count) outweighs the rest by its claim alone.
pub fn weight_of(samples: u64, cap: u64) -> f64 {
    samples.clamp(1, cap.max(1)) as f64
}

/// The cap for one merge: `cap`, and at most twice the median of the contributors' claimed
/// samples, so that one contributor claiming a billion rows weighs at most twice a typical one
/// (a liar can move the median by one place, not to its claim).
pub fn relative_cap(samples: &[u64], cap: u64) -> u64 {
    let mut s = samples.to_vec();
    s.sort_unstable();
    match s.get(s.len() / 2) {
        Some(&m) => cap.min(m.saturating_mul(2)).max(1),
        None => cap,
    }
}

/// Merges networks of one shape (checked by the caller, [`same_shape`]) with `rule`; each comes
/// with its weight ([`weight_of`]). The first network's configuration is kept.
pub fn merge_mlp(parts: &[(&MlpWeights, f64)], rule: Rule) -> Option<MlpWeights> {
    let (first, _) = parts.first()?;
    if parts.iter().any(|(m, _)| !same_shape(first, m)) {
        return None;
    }
    let mut scratch: Vec<(f64, f64)> = Vec::with_capacity(parts.len());
    let mut merge = |get: &dyn Fn(&MlpWeights) -> f64| -> f64 {
        scratch.clear();
        scratch.extend(parts.iter().map(|(m, w)| (get(m), *w)));
        merge_values(&mut scratch, rule)
    };
    let layers = first
        .layers
        .iter()
        .enumerate()
        .map(|(li, l)| LayerWeights {
            inputs: l.inputs,
            outputs: l.outputs,
            weight: (0..l.weight.len())
                .map(|k| merge(&|m| f64::from(m.layers[li].weight[k])) as f32)
                .collect(),
            bias: (0..l.bias.len())
                .map(|k| merge(&|m| f64::from(m.layers[li].bias[k])) as f32)
                .collect(),
        })
        .collect();
    Some(MlpWeights {
        config: first.config.clone(),
        floor: merge(&|m| m.floor),
        final_loss: merge(&|m| m.final_loss),
        var_scale: merge(&|m| m.var_scale),
        layers,
    })
}

/// Merges calibrations coordinate by coordinate, each weighted by its failures seen (a calibration
/// fitted on more failures knows more).
pub fn merge_platt(parts: &[&Platt], rule: Rule) -> Option<Platt> {
    if parts.is_empty() {
        return None;
    }
    let mut w = [0.0; 3];
    for (i, slot) in w.iter_mut().enumerate() {
        let mut v: Vec<(f64, f64)> = parts
            .iter()
            .map(|p| (p.w[i], p.positives.max(1) as f64))
            .collect();
        *slot = merge_values(&mut v, rule);
    }
    Some(Platt {
        w,
        examples: parts.iter().map(|p| p.examples).sum(),
        positives: parts.iter().map(|p| p.positives).sum(),
    })
}

/// The feature space of a merged forest: `own`'s when this node has a forest; otherwise (a cold
/// start) the metrics more than half of the peers read, each standardised by the sample-weighted
/// median of theirs, and the median normalising length. None without a metric in common.
fn forest_space(
    own: Option<&FeatureForest>,
    peers: &[(&SharedForest, f64)],
) -> Option<FeatureForest> {
    if let Some(o) = own {
        return Some(FeatureForest {
            forest: IsolationForest::from_trees(Vec::new(), o.forest.norm()),
            ..o.clone()
        });
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (p, _) in peers {
        for m in &p.metrics {
            *counts.entry(m.as_str()).or_default() += 1;
        }
    }
    let metrics: Vec<String> = counts
        .into_iter()
        .filter(|(_, c)| 2 * c > peers.len())
        .map(|(m, _)| m.to_owned())
        .take(MAX_FOREST_METRICS)
        .collect();
    if metrics.is_empty() {
        return None;
    }
    let stat = |m: &str, get: &dyn Fn(&SharedForest, usize) -> f64| -> f64 {
        let mut v: Vec<(f64, f64)> = peers
            .iter()
            .filter_map(|(p, w)| Some((get(p, p.metrics.iter().position(|x| x == m)?), *w)))
            .collect();
        merge_values(&mut v, Rule::Median)
    };
    let mean = metrics.iter().map(|m| stat(m, &|p, i| p.mean[i])).collect();
    let sd = metrics.iter().map(|m| stat(m, &|p, i| p.sd[i])).collect();
    let dsd = metrics.iter().map(|m| stat(m, &|p, i| p.dsd[i])).collect();
    let mut norms: Vec<(f64, f64)> = peers.iter().map(|(p, w)| (p.norm, *w)).collect();
    let norm = merge_values(&mut norms, Rule::Median);
    Some(FeatureForest {
        metrics,
        mean,
        sd,
        dsd,
        forest: IsolationForest::from_trees(Vec::new(), norm),
    })
}

/// A peer's packed trees re-expressed in `space`: each split's metric found by name and its
/// threshold carried through the peer's standardisation and back through `space`'s (exact: both
/// are affine). A tree splitting on a metric `space` does not read is dropped, and so is one with
/// a leaf larger than the sample a tree of this forest is fitted on (such a leaf would make every
/// point look usual).
fn remap_trees(p: &SharedForest, space: &FeatureForest) -> Vec<Tree> {
    let max_leaf = crate::anomaly::iforest::sample_size_for(space.forest.norm());
    let (np, ns) = (p.metrics.len(), space.metrics.len());
    let to: Vec<Option<usize>> = p
        .metrics
        .iter()
        .map(|m| space.metrics.iter().position(|x| x == m))
        .collect();
    let map = |k: u8, t: f64| -> Option<(u16, f64)> {
        let k = usize::from(k);
        if k < np {
            let j = to[k]?;
            let value = p.mean[k] + t * p.sd[k];
            Some((j as u16, (value - space.mean[j]) / space.sd[j]))
        } else if k < 2 * np {
            let j = to[k - np]?;
            Some(((ns + j) as u16, t * p.dsd[k - np] / space.dsd[j]))
        } else {
            None
        }
    };
    p.trees
        .iter()
        .filter_map(|t| Tree::unpack(&t.0, &map))
        .filter(|t| t.max_leaf() as usize <= max_leaf)
        .collect()
}

/// Merges forests into one of `n_trees` trees in this node's feature space (see [`forest_space`]):
/// a union of trees sampled by weight. Each contribution (`own` with `own_weight`, every peer with
/// its [`weight_of`]) gets a share of the trees in proportion to its weight (largest remainders),
/// filled from its own trees in order, repeated if it shared fewer. A peer whose normalising
/// length differs from the space's by more than 1 % (another sample size: path lengths that do
/// not compare) is left out. What one bad contributor can do is bounded by its share: its trees
/// are at most `weight / total` of the forest, so the mean path length, and with it the score,
/// moves at most that fraction of the longest path a tree may have. None without a peer's tree to
/// merge.
pub fn merge_forests(
    own: Option<(&FeatureForest, f64)>,
    peers: &[(&SharedForest, f64)],
    n_trees: usize,
) -> Option<FeatureForest> {
    let space = forest_space(own.map(|o| o.0), peers)?;
    let norm = space.forest.norm();
    let mut parts: Vec<(Vec<Tree>, f64)> = Vec::new();
    if let Some((o, w)) = own {
        let trees: Vec<Tree> = (0..o.forest.len())
            .filter_map(|i| o.forest.tree(i).cloned())
            .collect();
        if !trees.is_empty() {
            parts.push((trees, w));
        }
    }
    let own_parts = parts.len();
    for (p, w) in peers {
        if (p.norm - norm).abs() > 0.01 * norm {
            continue;
        }
        let trees = remap_trees(p, &space);
        if !trees.is_empty() {
            parts.push((trees, *w));
        }
    }
    if parts.len() == own_parts || n_trees == 0 {
        return None;
    }
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let exact: Vec<f64> = parts.iter().map(|p| p.1 / total * n_trees as f64).collect();
    let mut shares: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let missing = n_trees - shares.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        shares[i] += 1;
    }
    let mut trees = Vec::with_capacity(n_trees);
    for ((pool, _), share) in parts.iter().zip(shares) {
        trees.extend(pool.iter().cycle().take(share).cloned());
    }
    Some(FeatureForest {
        forest: IsolationForest::from_trees(trees, norm),
        ..space
    })
}

/// The latest update of every author, per resource type, and the rounds seen (replays are
/// refused). What a node has heard from the fleet.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    latest: std::collections::BTreeMap<(String, String), ModelUpdate>,
}

impl Peers {
    /// Takes an update from `author` if it passes [`check`] and is newer than the author's last
    /// one for its type.
    pub fn offer(
        &mut self,
        author: &str,
        u: ModelUpdate,
        engine: &str,
        shape: Option<&MlpWeights>,
    ) -> Result<(), Refusal> {
        check(&u, engine, shape)?;
        let key = (u.resource_type.clone(), author.to_owned());
        if let Some(seen) = self.latest.get(&key)
            && u.round <= seen.round
        {
            return Err(Refusal::Replayed {
                got: u.round,
                seen: seen.round,
            });
        }
        self.latest.insert(key, u);
        Ok(())
    }

    /// The latest update of each author for `resource_type`.
    pub fn of_type(&self, resource_type: &str) -> Vec<(&str, &ModelUpdate)> {
        self.latest
            .iter()
            .filter(|((t, _), _)| t == resource_type)
            .map(|((_, a), u)| (a.as_str(), u))
            .collect()
    }

    /// Types any author sent.
    pub fn types(&self) -> Vec<String> {
        let mut t: Vec<String> = self.latest.keys().map(|(t, _)| t.clone()).collect();
        t.dedup();
        t
    }
}

/// The merged MLP and calibration of `resource_type` from this node's own model (if any, as
/// `own`: weights, samples and round) and its peers' latest updates of the same shape, with the
/// lineage (its `mse_*` left for the adoption guard to fill). None when no network can be merged.
pub fn candidate(
    own: Option<(&MlpWeights, u64, u64)>,
    own_calibration: Option<&Platt>,
    peers: &[(&str, &ModelUpdate)],
    rule: Rule,
    sample_cap: u64,
) -> Option<(MlpWeights, Option<Platt>, Lineage)> {
    let shape = own
        .map(|o| o.0)
        .or_else(|| peers.iter().find_map(|(_, u)| u.mlp.as_ref()))?;
    let claimed: Vec<u64> = own
        .map(|o| o.1)
        .into_iter()
        .chain(
            peers
                .iter()
                .filter(|(_, u)| u.mlp.as_ref().is_some_and(|m| same_shape(shape, m)))
                .map(|(_, u)| u.samples),
        )
        .collect();
    let sample_cap = relative_cap(&claimed, sample_cap);
    let mut parts: Vec<(&MlpWeights, f64)> = Vec::new();
    let mut contributors = Vec::new();
    if let Some((w, samples, round)) = own {
        parts.push((w, weight_of(samples, sample_cap)));
        contributors.push(Contributor {
            author: "self".into(),
            round,
            samples,
        });
    }
    for (author, u) in peers {
        if let Some(m) = u.mlp.as_ref().filter(|m| same_shape(shape, m)) {
            parts.push((m, weight_of(u.samples, sample_cap)));
            contributors.push(Contributor {
                author: (*author).to_owned(),
                round: u.round,
                samples: u.samples,
            });
        }
    }
    if parts.len() < 2 && own.is_some() {
        // Nothing from the fleet to merge with.
        return None;
    }
    let mlp = merge_mlp(&parts, rule)?;
    let platts: Vec<&Platt> = own_calibration
        .into_iter()
        .chain(peers.iter().filter_map(|(_, u)| u.calibration.as_ref()))
        .collect();
    let calibration = merge_platt(&platts, rule);
    let digest = Some(fingerprint(&mlp));
    Some((
        mlp,
        calibration,
        Lineage {
            rule,
            contributors,
            mse_local: None,
            mse_candidate: None,
            cold_start: own.is_none(),
            forest: None,
            calibration: None,
            patterns: None,
            digest,
        },
    ))
}

/// A fingerprint of a network (64-bit FNV-1a over its configuration and every weight's bits, in
/// hex): the same weights give the same one on every node and platform. For display and tests;
/// not a security measure (updates are signed).
pub fn fingerprint(m: &MlpWeights) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for x in [m.config.window, m.config.horizon, m.config.hidden] {
        eat(&(x as u64).to_le_bytes());
    }
    for l in &m.layers {
        for w in l.weight.iter().chain(&l.bias) {
            eat(&w.to_bits().to_le_bytes());
        }
    }
    format!("{h:016x}")
}

/// Whether a candidate is adopted over the local model: no worse on the node's own held-out
/// history (a relative tolerance for float noise only).
pub fn adopt(mse_local: f64, mse_candidate: f64) -> bool {
    mse_candidate.is_finite() && mse_candidate <= mse_local * (1.0 + 1e-9)
}

/// The largest absolute difference between two networks' weights (how far a merge moved).
pub fn distance(a: &MlpWeights, b: &MlpWeights) -> f64 {
    a.layers
        .iter()
        .zip(&b.layers)
        .flat_map(|(x, y)| {
            x.weight
                .iter()
                .zip(&y.weight)
                .chain(x.bias.iter().zip(&y.bias))
        })
        .map(|(p, q)| f64::from((p - q).abs()))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::iforest::SplitMix64;
    use crate::forecast::mlp::MlpConfig;

    /// A small network around `center`, each weight jittered by up to `jitter`.
    fn net(center: f32, jitter: f32, rng: &mut SplitMix64) -> MlpWeights {
        let mut layer = |inputs: usize, outputs: usize| LayerWeights {
            inputs,
            outputs,
            weight: (0..inputs * outputs)
                .map(|_| center + jitter * (2.0 * rng.next_f64() as f32 - 1.0))
                .collect(),
            bias: (0..outputs)
                .map(|_| center + jitter * (2.0 * rng.next_f64() as f32 - 1.0))
                .collect(),
        };
        let config = MlpConfig {
            window: 4,
            hidden: 3,
            ..MlpConfig::default()
        };
        MlpWeights {
            layers: vec![layer(4, 3), layer(3, 3), layer(3, 2)],
            config,
            floor: 0.1,
            final_loss: 0.5,
            var_scale: 1.0,
        }
    }

    fn update(mlp: MlpWeights) -> ModelUpdate {
        ModelUpdate {
            resource_type: "service".into(),
            engine: crate::MODEL_VERSION.into(),
            base_round: 0,
            round: 1,
            samples: 1000,
            validation: Validation::default(),
            mlp: Some(mlp),
            calibration: None,
            forest: None,
            patterns: Vec::new(),
        }
    }

    #[test]
    fn the_rules_on_one_coordinate() {
        type Case<'a> = (&'a [(f64, f64)], Rule, f64);
        let cases: &[Case] = &[
            (&[(1.0, 1.0), (3.0, 1.0)], Rule::Mean, 2.0),
            (&[(1.0, 3.0), (5.0, 1.0)], Rule::Mean, 2.0),
            (&[(1.0, 1.0), (2.0, 1.0), (100.0, 1.0)], Rule::Median, 2.0),
            (
                &[(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (-1e9, 1.0), (1e9, 1.0)],
                Rule::TrimmedMean { f: 1 },
                2.0,
            ),
            // f larger than the values allow trims what it can and keeps one.
            (
                &[(1.0, 1.0), (7.0, 1.0), (4.0, 1.0)],
                Rule::TrimmedMean { f: 5 },
                4.0,
            ),
            // A heavy weight pulls the median to it.
            (&[(1.0, 10.0), (2.0, 1.0), (3.0, 1.0)], Rule::Median, 1.0),
        ];
        for (values, rule, want) in cases {
            let mut v = values.to_vec();
            let got = merge_values(&mut v, *rule);
            assert!((got - want).abs() < 1e-9, "{values:?} {rule:?}: {got}");
        }
    }

    #[test]
    fn checks_refuse_what_must_not_be_read() {
        let mut rng = SplitMix64::new(3);
        let own = net(0.1, 0.05, &mut rng);
        let engine = crate::MODEL_VERSION;
        assert_eq!(check(&update(own.clone()), engine, Some(&own)), Ok(()));
        let refused = |u: ModelUpdate| check(&u, engine, Some(&own)).expect_err("refused").reason();
        let mut u = update(own.clone());
        u.engine = "augur-engine-v1".into();
        assert_eq!(refused(u), "engine");
        let mut m = own.clone();
        m.layers[1].weight[2] = f32::NAN;
        assert_eq!(refused(update(m)), "non_finite");
        let mut m = own.clone();
        m.layers[0].weight[0] = 1e9;
        assert_eq!(refused(update(m)), "non_finite");
        let mut m = own.clone();
        m.var_scale = f64::INFINITY;
        assert_eq!(refused(update(m)), "non_finite");
        let mut m = own.clone();
        m.layers[2].bias.pop();
        assert_eq!(refused(update(m)), "shape");
        let mut m = own.clone();
        m.config.hidden = 5;
        assert_eq!(refused(update(m)), "shape");
        let mut m = own.clone();
        m.layers = vec![m.layers[0].clone(); MAX_LAYERS + 1];
        assert_eq!(refused(update(m)), "oversized");
        let mut m = own.clone();
        m.layers[0] = LayerWeights {
            inputs: 1000,
            outputs: 1000,
            weight: vec![0.0; 1_000_000],
            bias: vec![0.0; 1000],
        };
        assert_eq!(refused(update(m)), "oversized");
        let mut u = update(own.clone());
        u.calibration = Some(Platt {
            w: [0.0, f64::NAN, 0.0],
            examples: 1,
            positives: 1,
        });
        assert_eq!(refused(u), "non_finite");

        // Learned limits: at most MAX_SHARED_LIMITS, each with a sane metric name and finite
        // figures.
        let limit = |metric: &str, value: f64| crate::trained::LearnedLimit {
            metric: metric.to_owned(),
            value,
            direction: crate::limits::Direction::Above,
            failures: 1,
            usual_median: 0.2,
            usual_spread: 0.05,
            caught_with: 1,
            caught_without: 0,
            false_alarms_with: 0,
            false_alarms_without: 0,
            held_out: None,
            used: true,
        };
        let with = |patterns: Vec<crate::trained::LearnedLimit>| {
            let mut u = update(own.clone());
            u.patterns = patterns;
            u
        };
        assert_eq!(
            check(&with(vec![limit("latency_ms", 900.0)]), engine, Some(&own)),
            Ok(())
        );
        assert_eq!(
            check(
                &with(vec![limit("latency_ms", 900.0); MAX_SHARED_LIMITS]),
                engine,
                Some(&own)
            ),
            Ok(())
        );
        assert_eq!(
            refused(with(vec![
                limit("latency_ms", 900.0);
                MAX_SHARED_LIMITS + 1
            ])),
            "oversized"
        );
        assert_eq!(refused(with(vec![limit("", 900.0)])), "shape");
        assert_eq!(refused(with(vec![limit(&"m".repeat(257), 900.0)])), "shape");
        assert_eq!(
            refused(with(vec![limit("latency_ms", f64::NAN)])),
            "non_finite"
        );
        let mut l = limit("latency_ms", 900.0);
        l.usual_spread = f64::INFINITY;
        assert_eq!(refused(with(vec![l])), "non_finite");
        let mut l = limit("latency_ms", 900.0);
        l.usual_median = f64::NEG_INFINITY;
        assert_eq!(refused(with(vec![l])), "non_finite");
    }

    /// `n` honest networks near 0.1, `f` Byzantine ones made by `attack`: how far each rule's merge
    /// lands from the honest networks' own mean.
    fn attacked(
        attack: &dyn Fn(&MlpWeights, &mut SplitMix64) -> MlpWeights,
        seed: u64,
    ) -> (f64, f64, f64) {
        let mut rng = SplitMix64::new(seed);
        let honest: Vec<MlpWeights> = (0..4).map(|_| net(0.1, 0.02, &mut rng)).collect();
        let bad = attack(&honest[0], &mut rng);
        let honest_parts: Vec<(&MlpWeights, f64)> = honest.iter().map(|m| (m, 1.0)).collect();
        let truth = merge_mlp(&honest_parts, Rule::Mean).expect("merges");
        let mut all = honest_parts.clone();
        // The attacker also claims a huge sample count; the cap limits it.
        all.push((&bad, weight_of(u64::MAX, 1)));
        let d = |rule| distance(&merge_mlp(&all, rule).expect("merges"), &truth);
        (
            d(Rule::Mean),
            d(Rule::TrimmedMean { f: 1 }),
            d(Rule::Median),
        )
    }

    #[test]
    fn one_byzantine_update_in_five_moves_the_robust_merges_within_the_honest_spread() {
        // Honest weights lie within 0.1 +- 0.02, so any merge of kept honest values is within 0.04
        // of the honest mean: the bound the robust rules must hold.
        let bound = 0.04;
        type Attack = Box<dyn Fn(&MlpWeights, &mut SplitMix64) -> MlpWeights>;
        let attacks: Vec<(&str, Attack)> = vec![
            (
                "sign flip",
                Box::new(|m: &MlpWeights, _: &mut SplitMix64| scaled(m, -1.0)),
            ),
            (
                "scaled by 100",
                Box::new(|m: &MlpWeights, _: &mut SplitMix64| scaled(m, 100.0)),
            ),
            (
                "random weights",
                Box::new(|_: &MlpWeights, r: &mut SplitMix64| net(0.0, 50.0, r)),
            ),
        ];
        for (name, attack) in &attacks {
            for seed in 0..8 {
                let (mean, trimmed, median) = attacked(attack.as_ref(), seed);
                assert!(
                    trimmed <= bound,
                    "{name} seed {seed}: trimmed mean moved {trimmed}"
                );
                assert!(median <= bound, "{name} seed {seed}: median moved {median}");
                assert!(
                    mean > bound,
                    "{name} seed {seed}: plain averaging should be moved by the attack ({mean})"
                );
            }
        }
    }

    #[test]
    fn nodes_with_different_data_converge_to_one_model_that_serves_them_all() {
        use crate::forecast::mlp::MlpForecaster;
        // Four nodes, each with its own series: a sine of its own period and noise.
        let config = MlpConfig {
            window: 16,
            horizon: 4,
            hidden: 8,
            epochs: 4,
            batch: 32,
            ..MlpConfig::default()
        };
        let data: Vec<Vec<f64>> = (0..4u32)
            .map(|n| {
                let mut rng = SplitMix64::new(u64::from(n) + 11);
                let period = 20.0 + 5.0 * f64::from(n);
                (0..700)
                    .map(|t| {
                        (std::f64::consts::TAU * f64::from(t) / period).sin() * 10.0
                            + 50.0
                            + rng.next_f64()
                            - 0.5
                    })
                    .collect()
            })
            .collect();
        // The shared model's squared error on every node's held-out data, against standing still.
        let score = |m: &MlpWeights| -> (f64, f64) {
            let model = MlpForecaster::try_from(m.clone()).expect("loads");
            let (mut err, mut naive) = (0.0, 0.0);
            for s in &data {
                for t in 620..696 {
                    let f = model.forecast(&s[t - 16..t]).expect("forecast");
                    err += (f.mean - s[t + 3]).powi(2);
                    naive += (s[t - 1] - s[t + 3]).powi(2);
                }
            }
            (err, naive)
        };
        let mut merged: Option<MlpWeights> = None;
        let mut errors = Vec::new();
        for _round in 0..4 {
            let locals: Vec<MlpWeights> = data
                .iter()
                .map(|s| {
                    let train = [&s[..600]];
                    let m = match &merged {
                        None => MlpForecaster::train_strided(&train, config.clone(), 1),
                        Some(b) => MlpForecaster::train_from(b, &train, config.clone(), 1),
                    };
                    MlpWeights::from(m.expect("trains"))
                })
                .collect();
            let parts: Vec<(&MlpWeights, f64)> = locals.iter().map(|m| (m, 600.0)).collect();
            let next = merge_mlp(&parts, Rule::TrimmedMean { f: 1 }).expect("merges");
            errors.push(score(&next));
            merged = Some(next);
        }
        // Round after round the shared model serves every node better, and in the end better than
        // standing still.
        let (first, last) = (errors[0].0, errors[errors.len() - 1].0);
        assert!(
            errors.windows(2).all(|w| w[1].0 < 1.05 * w[0].0) && last < 0.8 * first,
            "{errors:?}"
        );
        assert!(last < errors[0].1, "{errors:?}");
    }

    #[test]
    fn peers_keep_each_authors_newest_update_and_refuse_replays() {
        let mut rng = SplitMix64::new(5);
        let own = net(0.1, 0.02, &mut rng);
        let engine = crate::MODEL_VERSION;
        let mut peers = Peers::default();
        let mut u = update(net(0.1, 0.02, &mut rng));
        u.round = 3;
        assert_eq!(peers.offer("b", u.clone(), engine, Some(&own)), Ok(()));
        // The same round again (a replay), or an older one: refused.
        assert_eq!(
            peers
                .offer("b", u.clone(), engine, Some(&own))
                .map_err(|e| e.reason()),
            Err("replayed")
        );
        u.round = 2;
        assert_eq!(
            peers
                .offer("b", u.clone(), engine, Some(&own))
                .map_err(|e| e.reason()),
            Err("replayed")
        );
        u.round = 4;
        assert_eq!(peers.offer("b", u.clone(), engine, Some(&own)), Ok(()));
        // Another author's round 1 is its own.
        u.round = 1;
        assert_eq!(peers.offer("c", u, engine, Some(&own)), Ok(()));
        let of = peers.of_type("service");
        assert_eq!(
            of.iter().map(|(a, u)| (*a, u.round)).collect::<Vec<_>>(),
            vec![("b", 4), ("c", 1)]
        );
        assert_eq!(peers.types(), vec!["service".to_owned()]);

        // The candidate merges this node's model with both; lineage names all three.
        let (_, _, lineage) =
            candidate(Some((&own, 500, 7)), None, &of, Rule::Median, 10_000).expect("merges");
        assert_eq!(
            lineage
                .contributors
                .iter()
                .map(|c| c.author.as_str())
                .collect::<Vec<_>>(),
            vec!["self", "b", "c"]
        );
        assert!(!lineage.cold_start);
        // With no local model: a cold start from the peers alone.
        let (_, _, lineage) = candidate(None, None, &of, Rule::Median, 10_000).expect("merges");
        assert!(lineage.cold_start && lineage.contributors.len() == 2);
        // Alone: nothing to merge.
        assert!(candidate(Some((&own, 500, 7)), None, &[], Rule::Median, 10_000).is_none());
        assert!(adopt(1.0, 1.0) && adopt(1.0, 0.9) && !adopt(1.0, 1.1) && !adopt(1.0, f64::NAN));
    }

    fn scaled(m: &MlpWeights, k: f32) -> MlpWeights {
        let mut out = m.clone();
        for l in &mut out.layers {
            for w in l.weight.iter_mut().chain(l.bias.iter_mut()) {
                *w *= k;
            }
        }
        out
    }

    #[test]
    fn calibrations_merge_by_failures_seen_and_resist_one_liar() {
        let honest = [
            Platt {
                w: [-2.0, 1.0, 0.5],
                examples: 100,
                positives: 10,
            },
            Platt {
                w: [-2.2, 1.1, 0.4],
                examples: 100,
                positives: 10,
            },
            Platt {
                w: [-1.8, 0.9, 0.6],
                examples: 100,
                positives: 10,
            },
        ];
        let liar = Platt {
            w: [50.0, -50.0, 50.0],
            examples: 100,
            positives: 10,
        };
        let parts: Vec<&Platt> = honest.iter().chain([&liar]).collect();
        let merged = merge_platt(&parts, Rule::TrimmedMean { f: 1 }).expect("merges");
        for (i, want) in [-2.0, 1.0, 0.5].into_iter().enumerate() {
            assert!((merged.w[i] - want).abs() <= 0.2, "{:?}", merged.w);
        }
        assert_eq!(merged.positives, 40);
    }

    /// A node's history of `cpu` and `mem` around `level`, with `jitter` noise.
    fn forest_history(seed: u64, level: f64, n: usize) -> crate::training::ResourceHistory {
        let mut rng = SplitMix64::new(seed);
        let mut h = crate::training::ResourceHistory::default();
        for t in 0..n {
            let x = t as f64;
            h.push(
                x,
                [
                    (
                        "cpu",
                        level + 10.0 * (x * 0.05).sin() + 2.0 * rng.next_f64(),
                    ),
                    ("mem", 0.5 + 0.05 * rng.next_f64()),
                ],
            );
        }
        h
    }

    fn forest_of(data: &[crate::training::ResourceHistory], seed: u64) -> FeatureForest {
        crate::training::train_forest(
            data,
            &crate::training::TrainConfig {
                seed,
                forest_trees: 64,
                ..crate::training::TrainConfig::default()
            },
        )
        .expect("a forest")
    }

    fn sample(cpu: f64, mem: f64) -> std::collections::BTreeMap<String, f64> {
        [("cpu".to_owned(), cpu), ("mem".to_owned(), mem)].into()
    }

    /// Packing is lossless up to f32 thresholds, and a peer's trees re-expressed in another
    /// node's standardisation score raw samples as they did in the peer's.
    #[test]
    fn a_shared_forest_scores_alike_in_the_receivers_space() {
        let peer = forest_of(&[forest_history(1, 50.0, 2_000)], 1);
        let shared = share_forest(&peer, 64).expect("shares");
        assert_eq!(shared.trees.len(), 64);
        let bytes: usize = shared.trees.iter().map(|t| t.0.len()).sum();
        assert!(bytes < 64 * 4 * 1024, "{bytes} bytes");
        // The receiver standardises differently (its cpu runs around 80).
        let own = forest_of(&[forest_history(2, 80.0, 2_000)], 2);
        let space = forest_space(Some(&own), &[]).expect("own space");
        let mapped = FeatureForest {
            forest: IsolationForest::from_trees(remap_trees(&shared, &space), peer.forest.norm()),
            ..space
        };
        assert_eq!(mapped.trees(), 64);
        let mut rng = SplitMix64::new(9);
        let mut prev = sample(50.0, 0.5);
        for _ in 0..200 {
            let cur = sample(20.0 + 80.0 * rng.next_f64(), rng.next_f64());
            let (a, b) = (
                peer.score(&cur, Some(&prev)),
                mapped.score(&cur, Some(&prev)),
            );
            assert!(
                (a - b).abs() < 0.02,
                "{a} in the peer's space, {b} in the receiver's"
            );
            prev = cur;
        }
    }

    /// Bytes that are not exactly one tree over the forest's features are refused, whatever
    /// they claim.
    #[test]
    fn malformed_forests_are_refused() {
        let f = forest_of(&[forest_history(1, 50.0, 600)], 1);
        let good = share_forest(&f, 4).expect("shares");
        let with = |edit: &dyn Fn(&mut SharedForest)| {
            let mut u = update(net(0.0, 0.0, &mut SplitMix64::new(1)));
            let mut g = good.clone();
            edit(&mut g);
            u.forest = Some(g);
            check(&u, crate::MODEL_VERSION, None).map_err(|e| e.reason())
        };
        assert_eq!(with(&|_| {}), Ok(()));
        let leaf = |size: f32| {
            let mut b = vec![crate::anomaly::iforest::PACKED_LEAF];
            b.extend_from_slice(&size.to_le_bytes());
            b
        };
        let split = |feature: u8, t: f32| {
            let mut b = vec![feature];
            b.extend_from_slice(&t.to_le_bytes());
            b
        };
        type Edit = Box<dyn Fn(&mut SharedForest)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "truncated",
                Box::new(|g| {
                    g.trees[0].0.pop();
                }),
                "shape",
            ),
            (
                "a split without children",
                Box::new(move |g| g.trees[0] = PackedTree(split(0, 0.0))),
                "shape",
            ),
            (
                "bytes after the tree",
                Box::new(move |g| g.trees[0] = PackedTree([leaf(1.0), leaf(1.0)].concat())),
                "shape",
            ),
            (
                "a feature beyond the metrics",
                Box::new(move |g| {
                    g.trees[0] = PackedTree([split(4, 0.0), leaf(1.0), leaf(1.0)].concat())
                }),
                "shape",
            ),
            (
                "a NaN threshold",
                Box::new(move |g| {
                    g.trees[0] = PackedTree([split(0, f32::NAN), leaf(1.0), leaf(1.0)].concat())
                }),
                "shape",
            ),
            (
                "a fractional leaf",
                Box::new(move |g| g.trees[0] = PackedTree(leaf(1.5))),
                "shape",
            ),
            (
                "deeper than any fitted tree",
                Box::new(move |g| {
                    let mut b = Vec::new();
                    for _ in 0..60 {
                        b.extend(split(0, 0.0));
                        b.extend(leaf(1.0));
                    }
                    b.extend(leaf(1.0));
                    g.trees[0] = PackedTree(b);
                }),
                "shape",
            ),
            (
                "too many trees",
                Box::new(|g| g.trees = vec![g.trees[0].clone(); MAX_SHARED_TREES + 1]),
                "oversized",
            ),
            (
                "an empty forest",
                Box::new(|g| g.trees.clear()),
                "oversized",
            ),
            (
                "a zero deviation",
                Box::new(|g| g.sd[0] = 0.0),
                "non_finite",
            ),
            (
                "an infinite mean",
                Box::new(|g| g.mean[1] = f64::INFINITY),
                "non_finite",
            ),
            ("a silly norm", Box::new(|g| g.norm = 1e9), "non_finite"),
            (
                "fewer deviations than metrics",
                Box::new(|g| {
                    g.dsd.pop();
                }),
                "shape",
            ),
            (
                "a repeated metric",
                Box::new(|g| g.metrics[1] = g.metrics[0].clone()),
                "shape",
            ),
        ];
        for (what, edit, reason) in &cases {
            assert_eq!(with(edit.as_ref()), Err(*reason), "{what}");
        }
    }

    /// A forest's trees come from each contributor in proportion to its capped weight, so a
    /// liar's trees (leaves that swallow everything, so nothing looks anomalous) are bounded by
    /// its share; weighted by claimed samples instead, the liar takes the forest and a clear
    /// anomaly scores as usual.
    #[test]
    fn one_lying_forest_in_six_is_bounded_by_its_share() {
        let cap = 20_000;
        let own = forest_of(&[forest_history(1, 50.0, 2_000)], 1);
        let honest: Vec<SharedForest> = (2..7)
            .map(|s| {
                share_forest(
                    &forest_of(&[forest_history(s, 50.0, 2_000)], s),
                    SHARED_TREES,
                )
                .expect("shares")
            })
            .collect();
        let mut liar = honest[0].clone();
        // Leaves as large as the sample (larger ones are dropped): the worst a well-formed tree
        // can do to hide anomalies.
        let psi = crate::anomaly::iforest::sample_size_for(liar.norm) as f32;
        let mut swallow = vec![crate::anomaly::iforest::PACKED_LEAF];
        swallow.extend_from_slice(&psi.to_le_bytes());
        let mut huge = vec![crate::anomaly::iforest::PACKED_LEAF];
        huge.extend_from_slice(&16_777_216f32.to_le_bytes());
        liar.trees = vec![PackedTree(swallow); MAX_SHARED_TREES];
        let mut hugest = liar.clone();
        hugest.trees = vec![PackedTree(huge); 4];
        let space = forest_space(Some(&own), &[]).expect("space");
        assert!(
            remap_trees(&hugest, &space).is_empty(),
            "leaves beyond the sample are dropped"
        );
        assert_eq!(remap_trees(&liar, &space).len(), MAX_SHARED_TREES);
        let mut u = update(net(0.0, 0.0, &mut SplitMix64::new(1)));
        u.forest = Some(liar.clone());
        assert_eq!(
            check(&u, crate::MODEL_VERSION, None),
            Ok(()),
            "well-formed, only lying"
        );
        let anomaly = sample(400.0, 0.5);
        let usual = sample(50.0, 0.52);
        let merged = |liar_weight: f64| {
            let mut peers: Vec<(&SharedForest, f64)> =
                honest.iter().map(|h| (h, cap as f64)).collect();
            peers.push((&liar, liar_weight));
            merge_forests(Some((&own, cap as f64)), &peers, 100).expect("merges")
        };
        let honest_only = merge_forests(
            Some((&own, cap as f64)),
            &honest.iter().map(|h| (h, cap as f64)).collect::<Vec<_>>(),
            100,
        )
        .expect("merges");
        let capped = merged(weight_of(1_000_000_000, cap));
        let plain = merged(1_000_000_000.0);
        let score = |f: &FeatureForest, m| f.score(m, Some(&usual));
        // The liar holds 1/7 of the capped forest's trees: the scores move by less than its
        // share of the longest legal path allows, and the anomaly stands out as before.
        let (ha, hu) = (score(&honest_only, &anomaly), score(&honest_only, &usual));
        let (ca, cu) = (score(&capped, &anomaly), score(&capped, &usual));
        assert!(ha > hu + 0.15, "honest: anomaly {ha}, usual {hu}");
        assert!(
            (ca - ha).abs() < 0.05 && (cu - hu).abs() < 0.05,
            "capped: anomaly {ca}, usual {cu}; honest {ha}, {hu}"
        );
        assert!(ca > cu + 0.1, "capped: anomaly {ca}, usual {cu}");
        // By claimed samples, nothing stands out any more.
        assert!((score(&plain, &anomaly) - score(&plain, &usual)).abs() < 0.02);
        // And the unsupervised guard sees it: the capped merge still tells a jump from the usual,
        // the plain one cannot.
        let data = [forest_history(1, 50.0, 2_000)];
        let sep =
            |f: &FeatureForest| crate::training::forest_separation(f, &data, 7).expect("judged");
        assert!(sep(&capped) > 0.8, "{}", sep(&capped));
        assert!(
            sep(&plain) < sep(&capped) - 0.2,
            "{} vs {}",
            sep(&plain),
            sep(&capped)
        );
    }

    /// A new node (no forest of its own) takes the metrics most peers read and the median of
    /// their standardisation; a peer with another sample size (norm) is left out.
    #[test]
    fn a_cold_start_forest_takes_the_peers_median_space() {
        let peers: Vec<SharedForest> = [(2, 40.0), (3, 50.0), (4, 60.0)]
            .into_iter()
            .map(|(s, level)| {
                share_forest(&forest_of(&[forest_history(s, level, 2_000)], s), 8).expect("shares")
            })
            .collect();
        let mut odd = peers[0].clone();
        odd.norm *= 1.5;
        let parts: Vec<(&SharedForest, f64)> =
            peers.iter().chain([&odd]).map(|p| (p, 1.0)).collect();
        let f = merge_forests(None, &parts, 30).expect("merges");
        assert_eq!(f.metrics, vec!["cpu".to_owned(), "mem".to_owned()]);
        let (lo, hi) = (
            peers[0].mean[0].min(peers[2].mean[0]),
            peers[0].mean[0].max(peers[2].mean[0]),
        );
        assert!(
            f.mean[0] >= lo && f.mean[0] <= hi,
            "{} not inside {lo}..{hi}",
            f.mean[0]
        );
        assert_eq!(f.trees(), 30);
        let before = sample(50.0, 0.5);
        let (a, u) = (
            f.score(&sample(400.0, 0.5), Some(&before)),
            f.score(&sample(50.0, 0.52), Some(&before)),
        );
        assert!(a > u + 0.1, "anomaly {a}, usual {u}");
        // Nothing of one's own and nothing from peers: no forest.
        assert!(merge_forests(None, &[], 30).is_none());
    }
}

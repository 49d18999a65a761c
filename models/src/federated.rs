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

use crate::calibration::Platt;
use crate::forecast::mlp::{LayerWeights, MlpWeights};

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

/// How the contributions are merged, coordinate by coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// The sample-weighted mean (federated averaging): one bad update moves it without bound.
    Mean,
    /// Drop the `f` lowest and `f` highest values, then the sample-weighted mean of the rest.
    TrimmedMean { f: usize },
    /// The sample-weighted median.
    Median,
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

/// One contribution to a merged model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    /// The author's peer id ("self" for this node's own model).
    pub author: String,
    pub round: u64,
    pub samples: u64,
}

/// Where a merged model came from and why it was adopted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub rule: Rule,
    pub contributors: Vec<Contributor>,
    /// The local model's and the candidate's MLP error on this node's held-out history (None for
    /// a cold start: no local model, or too little history to judge).
    pub mse_local: Option<f64>,
    pub mse_candidate: Option<f64>,
    /// Adopted without a local model to compare with (a new node).
    pub cold_start: bool,
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
    Some((
        mlp,
        calibration,
        Lineage {
            rule,
            contributors,
            mse_local: None,
            mse_candidate: None,
            cold_start: own.is_none(),
        },
    ))
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
}

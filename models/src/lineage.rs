//! Where a model merged from the fleet came from (`crate::federated`), kept with the model's
//! metadata (`crate::trained::ModelMeta::federation`): the rule that merged it, its contributors,
//! and how each part did against the one in use.

use serde::{Deserialize, Serialize};

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
    /// The merged forest and calibration, each judged on its own (absent: nothing to merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forest: Option<PartDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<PartDecision>,
    /// Peers' learned limits: `local` is how many this node had, `candidate` how many it holds
    /// after adopting those its history accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patterns: Option<PartDecision>,
    /// A fingerprint of the merged network's weights (`crate::federated::fingerprint`): nodes
    /// that merged the same updates show the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Lineage {
    /// Whether the network in use is the merged one (adopted, or a cold start), not the node's
    /// own kept beside merged parts.
    pub fn network_merged(&self) -> bool {
        self.cold_start
            || matches!((self.mse_local, self.mse_candidate),
                (Some(local), Some(merged)) if merged <= local * (1.0 + 1e-9))
    }
}

/// How a merged part (the forest, the calibration) did against the one in use on this node's
/// history: the forest by [`crate::training::forest_separation`] (higher is better), the
/// calibration by its Brier score (lower is better). `adopted` false keeps the local part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartDecision {
    pub adopted: bool,
    pub contributors: usize,
    pub local: Option<f64>,
    pub candidate: Option<f64>,
}

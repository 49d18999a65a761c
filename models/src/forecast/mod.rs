//! Forecasters: each predicts a metric's next values with an uncertainty, online (one update per
//! sample, using only data up to that sample).

pub mod empirical;
pub mod holt;
pub mod mlp;

pub use holt::Holt;

/// A forecast of one metric `steps` samples ahead: a Gaussian mean and variance.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forecast {
    pub mean: f64,
    pub variance: f64,
}

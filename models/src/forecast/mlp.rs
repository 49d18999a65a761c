//! The neural forecaster: a small MLP on burn (flex CPU backend) that reads the last `window` values
//! of a metric and predicts the value `horizon` samples ahead as a Gaussian (mean and log-variance).
//! Inputs and target are scaled per window (relative to the last value, in units of the window's
//! spread), so one model serves every metric of a resource type whatever its units. The mean is
//! trained on squared error in units of each series' spread, the variance on the Gaussian likelihood
//! of the (detached) error, then scaled to fit held-out windows; measured against Holt in
//! docs/BENCHMARKS.md (forecasting).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use super::Forecast;

#[derive(Module, Debug)]
pub struct MlpNet {
    l1: Linear,
    l2: Linear,
    out: Linear,
}

impl MlpNet {
    /// Initialises like burn's default (uniform in +-sqrt(1 / inputs)) but from augur's own seeded
    /// generator: burn's device generator is shared by every thread, so concurrent trainings would
    /// draw from it in an order that changes from run to run.
    fn new(window: usize, hidden: usize, device: &Device, seed: u64) -> Self {
        let mut rng = crate::anomaly::iforest::SplitMix64::new(seed);
        let mut layer = |inputs: usize, outputs: usize| {
            let k = (1.0 / inputs as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| ((2.0 * rng.next_f64() - 1.0) * k) as f32)
                    .collect()
            };
            let w = LayerWeights {
                inputs,
                outputs,
                weight: draw(inputs * outputs),
                bias: draw(outputs),
            };
            linear_from(&w, device)
                .unwrap_or_else(|_| LinearConfig::new(inputs, outputs).init(device))
        };
        Self {
            l1: layer(window, hidden),
            l2: layer(hidden, hidden),
            out: layer(hidden, 2),
        }
    }

    /// `[batch, window]` to `[batch, 2]` (mean, log-variance), both in window units.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = relu(self.l1.forward(x));
        let h = relu(self.l2.forward(h));
        self.out.forward(h)
    }
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    pub window: usize,
    pub horizon: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            window: 32,
            horizon: 10,
            hidden: 32,
            epochs: 8,
            batch: 128,
            learning_rate: 2e-3,
            seed: 7,
        }
    }
}

/// Scales a window: (x - last) / spread, and returns (inputs, last, spread). The spread is the
/// window's standard deviation, floored at `floor` (a fraction of the training series' spread) so a
/// flat window does not turn the next small step into an enormous normalised error.
fn scale(window: &[f64], floor: f64) -> (Vec<f32>, f64, f64) {
    let last = window[window.len() - 1];
    let spread = std_dev(window).max(floor).max(1e-9 * (last.abs() + 1.0));
    (
        window
            .iter()
            .map(|v| ((v - last) / spread) as f32)
            .collect(),
        last,
        spread,
    )
}

/// Population standard deviation (0 for an empty series).
fn std_dev(s: &[f64]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let n = s.len() as f64;
    let m = s.iter().sum::<f64>() / n;
    (s.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
}

/// The spread a window is scaled by (its standard deviation, floored).
pub fn window_spread(window: &[f64], floor: f64) -> f64 {
    scale(window, floor).2
}

/// A trained forecaster (on the plain, non-autodiff device). Saved and loaded as [`MlpWeights`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "MlpWeights", into = "MlpWeights")]
pub struct MlpForecaster {
    net: MlpNet,
    config: MlpConfig,
    device: Device,
    /// Smallest spread a window is scaled by (see `scale`).
    floor: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    /// Factor on the network's variance, fitted on held-out windows (the network alone is
    /// overconfident where it overfits).
    pub var_scale: f64,
}

/// Share of the training series' standard deviation below which a window's spread is not trusted.
const FLOOR_SHARE: f64 = 0.05;

impl MlpForecaster {
    /// Trains on every window of `series` (one or more metrics' histories, each a separate series).
    /// Returns None when the series are too short for a single example.
    pub fn train(series: &[&[f64]], config: MlpConfig) -> Option<Self> {
        Self::train_strided(series, config, 1)
    }

    /// Like [`train`](Self::train) on every `stride`-th window only, which bounds the cost of
    /// training on a long history.
    pub fn train_strided(series: &[&[f64]], config: MlpConfig, stride: usize) -> Option<Self> {
        Self::fit(series, config, stride, None)
    }

    /// Like [`train_strided`](Self::train_strided), starting from `base`'s weights instead of
    /// the seeded initialisation: a federated round trains from the last merged model
    /// (`crate::federated`). `base` must have this configuration's shape; otherwise None.
    pub fn train_from(
        base: &MlpWeights,
        series: &[&[f64]],
        config: MlpConfig,
        stride: usize,
    ) -> Option<Self> {
        let fits = base.config.window == config.window
            && base.config.hidden == config.hidden
            && base.config.horizon == config.horizon;
        if !fits {
            return None;
        }
        Self::fit(series, config, stride, Some(base))
    }

    fn fit(
        series: &[&[f64]],
        config: MlpConfig,
        stride: usize,
        base: Option<&MlpWeights>,
    ) -> Option<Self> {
        let (w, h) = (config.window, config.horizon);
        let series_sd: Vec<f64> = series.iter().map(|s| std_dev(s)).collect();
        let mut sds: Vec<f64> = series
            .iter()
            .zip(&series_sd)
            .filter(|(s, _)| !s.is_empty())
            .map(|(_, sd)| *sd)
            .collect();
        sds.sort_by(f64::total_cmp);
        let floor = FLOOR_SHARE * sds.get(sds.len() / 2).copied().unwrap_or(0.0);
        // The newest fifth of each series' windows is held out to calibrate the variance.
        let (mut xs, mut ys) = (Vec::<f32>::new(), Vec::<f32>::new());
        let (mut held_xs, mut held_ys) = (Vec::<f32>::new(), Vec::<f32>::new());
        // Each example's squared error counts in units of its series' spread, not of its window's:
        // a flat window's small spread would otherwise make its next step weigh thousands of times
        // more than a lively window's (the forecasts are judged, and used, in the metric's units).
        let mut weights = Vec::<f32>::new();
        for (s, sd) in series.iter().zip(&series_sd) {
            if s.len() < w + h {
                continue;
            }
            let sd = sd.max(1e-9);
            let starts: Vec<usize> = (w..=s.len() - h).step_by(stride.max(1)).collect();
            let held_out = if starts.len() >= 50 {
                starts.len() / 5
            } else {
                0
            };
            for (k, &t) in starts.iter().enumerate() {
                let (x, last, spread) = scale(&s[t - w..t], floor);
                let y = ((s[t + h - 1] - last) / spread).clamp(-50.0, 50.0) as f32;
                let x = x.into_iter().map(|v| v.clamp(-50.0, 50.0));
                if k + held_out >= starts.len() {
                    held_xs.extend(x);
                    held_ys.push(y);
                } else {
                    xs.extend(x);
                    ys.push(y);
                    weights.push((spread / sd).powi(2).min(1e4) as f32);
                }
            }
        }
        let n = ys.len();
        if n == 0 {
            return None;
        }
        let plain = crate::cpu_device();
        let device = plain.clone().autodiff();
        let mut net = match base {
            None => MlpNet::new(w, config.hidden, &device, config.seed),
            Some(b) => match b.layers.as_slice() {
                [l1, l2, out] => MlpNet {
                    l1: linear_from(l1, &device).ok()?,
                    l2: linear_from(l2, &device).ok()?,
                    out: linear_from(out, &device).ok()?,
                },
                _ => return None,
            },
        };
        let mut optim = AdamConfig::new().init();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = crate::anomaly::iforest::SplitMix64::new(config.seed);
        let mut final_loss = f64::NAN;
        for _ in 0..config.epochs {
            for k in (1..n).rev() {
                order.swap(k, rng.below(k + 1));
            }
            let (mut sum, mut batches) = (0.0, 0usize);
            for chunk in order.chunks(config.batch) {
                let b = chunk.len();
                let mut bx = Vec::with_capacity(b * w);
                let mut by = Vec::with_capacity(b);
                let mut bw = Vec::with_capacity(b);
                for &i in chunk {
                    bx.extend_from_slice(&xs[i * w..(i + 1) * w]);
                    by.push(ys[i]);
                    bw.push(weights[i]);
                }
                let weight = Tensor::<2>::from_data(TensorData::new(bw, [b, 1]), &device);
                let x = Tensor::<2>::from_data(TensorData::new(bx, [b, w]), &device);
                let y = Tensor::<2>::from_data(TensorData::new(by, [b, 1]), &device);
                let out = net.forward(x);
                let mu = out.clone().slice([0..b, 0..1]);
                let logvar = out.slice([0..b, 1..2]).clamp(-10.0, 10.0);
                let err = y - mu;
                // The mean learns from the weighted squared error and the variance from the
                // Gaussian likelihood of the (fixed) error: trained jointly on the likelihood, the
                // mean neglects the examples the variance calls noisy.
                let fixed = err.clone().detach();
                let loss = (err.clone() * err * weight
                    + logvar.clone()
                    + fixed.clone() * fixed / logvar.exp())
                .mean()
                    * 0.5;
                sum += f64::from(loss.clone().into_scalar::<f32>());
                batches += 1;
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optim.step(config.learning_rate, net, grads);
            }
            final_loss = sum / batches.max(1) as f64;
        }
        let net = net.valid();
        // The variance scale that maximises the held-out errors' Gaussian likelihood: the mean of
        // squared error over predicted variance (1 when nothing was held out).
        let var_scale = if held_ys.is_empty() {
            1.0
        } else {
            let x = Tensor::<2>::from_data(TensorData::new(held_xs, [held_ys.len(), w]), &plain);
            let out: Vec<f32> = net
                .forward(x)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            let ratios: Vec<f64> = held_ys
                .iter()
                .enumerate()
                .filter_map(|(i, &y)| {
                    let mu = f64::from(*out.get(2 * i)?);
                    let logvar = f64::from(*out.get(2 * i + 1)?).clamp(-10.0, 10.0);
                    Some((f64::from(y) - mu).powi(2) / logvar.exp())
                })
                .collect();
            (ratios.iter().sum::<f64>() / ratios.len().max(1) as f64).clamp(0.01, 1e4)
        };
        Some(Self {
            net,
            config,
            device: plain,
            floor,
            final_loss,
            var_scale,
        })
    }

    /// Forecasts `horizon` samples after the end of `recent` (at least `window` values).
    pub fn forecast(&self, recent: &[f64]) -> Option<Forecast> {
        self.forecast_batch(&[recent]).pop().flatten()
    }

    /// Forecasts for many windows in one forward pass (replay and evaluation batch this way).
    pub fn forecast_batch(&self, recents: &[&[f64]]) -> Vec<Option<Forecast>> {
        let w = self.config.window;
        let mut rows = Vec::new();
        let mut meta = Vec::new();
        let mut index = Vec::with_capacity(recents.len());
        for r in recents {
            if r.len() < w {
                index.push(None);
                continue;
            }
            let (x, last, spread) = scale(&r[r.len() - w..], self.floor);
            rows.extend(x.into_iter().map(|v| v.clamp(-50.0, 50.0)));
            index.push(Some(meta.len()));
            meta.push((last, spread));
        }
        if meta.is_empty() {
            return index.into_iter().map(|_| None).collect();
        }
        let x = Tensor::<2>::from_data(TensorData::new(rows, [meta.len(), w]), &self.device);
        let out = self.net.forward(x).into_data();
        let values: Vec<f32> = out.try_to_vec::<f32>().unwrap_or_default();
        index
            .into_iter()
            .map(|i| {
                let i = i?;
                let (last, spread) = meta[i];
                let mu = f64::from(*values.get(2 * i)?).clamp(-50.0, 50.0);
                let logvar = f64::from(*values.get(2 * i + 1)?).clamp(-10.0, 10.0);
                Some(Forecast {
                    mean: last + mu * spread,
                    variance: logvar.exp() * self.var_scale * spread * spread,
                })
            })
            .collect()
    }

    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The smallest spread a window is scaled by.
    pub fn floor(&self) -> f64 {
        self.floor
    }
}

/// One dense layer's parameters: `weight` is `[inputs, outputs]` row-major.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerWeights {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The saved form of an [`MlpForecaster`]: plain numbers, independent of burn's record formats, so
/// a model file outlives a burn upgrade.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpWeights {
    pub config: MlpConfig,
    pub floor: f64,
    pub final_loss: f64,
    /// Absent in models saved before it existed (which are retrained anyway: the engine version
    /// changed).
    #[serde(default = "one")]
    pub var_scale: f64,
    pub layers: Vec<LayerWeights>,
}

fn one() -> f64 {
    1.0
}

fn layer_weights(l: &Linear) -> LayerWeights {
    let w = l.weight.val();
    let [inputs, outputs] = w.dims();
    LayerWeights {
        inputs,
        outputs,
        weight: w.into_data().try_to_vec::<f32>().unwrap_or_default(),
        bias: l
            .bias
            .as_ref()
            .map(|b| b.val().into_data().try_to_vec::<f32>().unwrap_or_default())
            .unwrap_or_default(),
    }
}

fn linear_from(l: &LayerWeights, device: &Device) -> Result<Linear, String> {
    if l.weight.len() != l.inputs * l.outputs || l.bias.len() != l.outputs {
        return Err(format!(
            "a {}x{} layer needs {} weights and {} biases, found {} and {}",
            l.inputs,
            l.outputs,
            l.inputs * l.outputs,
            l.outputs,
            l.weight.len(),
            l.bias.len()
        ));
    }
    let weight = Tensor::<2>::from_data(
        TensorData::new(l.weight.clone(), [l.inputs, l.outputs]),
        device,
    );
    let bias = Tensor::<1>::from_data(TensorData::new(l.bias.clone(), [l.outputs]), device);
    Ok(Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    })
}

impl From<MlpForecaster> for MlpWeights {
    fn from(m: MlpForecaster) -> Self {
        Self {
            layers: vec![
                layer_weights(&m.net.l1),
                layer_weights(&m.net.l2),
                layer_weights(&m.net.out),
            ],
            config: m.config,
            floor: m.floor,
            final_loss: m.final_loss,
            var_scale: m.var_scale,
        }
    }
}

impl TryFrom<MlpWeights> for MlpForecaster {
    type Error = String;

    fn try_from(w: MlpWeights) -> Result<Self, String> {
        let [l1, l2, out] = w.layers.as_slice() else {
            return Err(format!("expected 3 layers, found {}", w.layers.len()));
        };
        let shapes = [
            (l1.inputs, l1.outputs),
            (l2.inputs, l2.outputs),
            (out.inputs, out.outputs),
        ];
        let (win, hid) = (w.config.window, w.config.hidden);
        if shapes != [(win, hid), (hid, hid), (hid, 2)] {
            return Err(format!(
                "layer shapes {shapes:?} do not fit window {win} and hidden {hid}"
            ));
        }
        let device = crate::cpu_device();
        Ok(Self {
            net: MlpNet {
                l1: linear_from(l1, &device)?,
                l2: linear_from(l2, &device)?,
                out: linear_from(out, &device)?,
            },
            config: w.config,
            device,
            floor: w.floor,
            final_loss: w.final_loss,
            var_scale: w.var_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_sine_better_than_standing_still() {
        let series: Vec<f64> = (0..1200)
            .map(|t| (f64::from(t) * 0.2).sin() * 10.0 + 50.0)
            .collect();
        let config = MlpConfig {
            epochs: 6,
            ..MlpConfig::default()
        };
        let model = MlpForecaster::train(&[&series[..1000]], config).expect("trains");
        assert!(model.final_loss.is_finite());
        let (mut model_err, mut naive_err) = (0.0, 0.0);
        for t in 1000..1180 {
            let f = model.forecast(&series[t - 32..t]).expect("forecast");
            let truth = series[t + 9];
            model_err += (f.mean - truth).powi(2);
            naive_err += (series[t - 1] - truth).powi(2);
            assert!(f.variance.is_finite() && f.variance > 0.0);
        }
        assert!(
            model_err < 0.5 * naive_err,
            "model {model_err} vs last value {naive_err}"
        );
    }

    #[test]
    fn beats_holt_on_a_series_of_flat_stretches_and_jumps() {
        // Two levels with small noise, switching every 150 samples: most windows are flat, and
        // their next step (a jump) is unpredictable from them. A loss in each window's own units
        // lets those jumps dominate training; the MLP then forecast worse than Holt.
        let mut rng = crate::anomaly::iforest::SplitMix64::new(11);
        let series: Vec<f64> = (0..4000)
            .map(|t| if (t / 150) % 2 == 0 { 10.0 } else { 20.0 } + 0.1 * rng.next_f64())
            .collect();
        let config = MlpConfig {
            epochs: 4,
            ..MlpConfig::default()
        };
        let model = MlpForecaster::train(&[&series[..3000]], config).expect("trains");
        let mut holt = super::super::Holt::new(crate::engine::HOLT_ALPHA, crate::engine::HOLT_BETA);
        for &v in &series[..3000] {
            holt.update(v);
        }
        let (mut model_err, mut holt_err) = (0.0, 0.0);
        for t in 3000..series.len() - 10 {
            let truth = series[t + 9];
            let f = model.forecast(&series[t - 32..t]).expect("forecast");
            model_err += (f.mean - truth).powi(2);
            holt_err += (holt.forecast(10).expect("warm").mean - truth).powi(2);
            holt.update(series[t]);
        }
        assert!(model_err < holt_err, "MLP {model_err} vs Holt {holt_err}");
    }

    #[test]
    fn a_saved_model_forecasts_exactly_like_the_original() {
        let series: Vec<f64> = (0..200).map(|t| f64::from(t % 17)).collect();
        let config = MlpConfig {
            epochs: 1,
            ..MlpConfig::default()
        };
        let model = MlpForecaster::train(&[&series], config).expect("trains");
        let weights = MlpWeights::from(model.clone());
        let loaded = MlpForecaster::try_from(weights.clone()).expect("loads");
        assert_eq!(
            model.forecast(&series[..40]),
            loaded.forecast(&series[..40])
        );
        let mut broken = weights;
        broken.layers[1].bias.pop();
        assert!(MlpForecaster::try_from(broken).is_err());
    }

    #[test]
    fn short_series_give_no_model() {
        assert!(MlpForecaster::train(&[&[1.0, 2.0]], MlpConfig::default()).is_none());
    }
}

//! augur's local models: forecasting, anomaly scoring and calibration on burn's pure-Rust CPU
//! backend (flex), and their offline evaluation. Knows nothing of the network.

pub mod alarm;
pub mod anomaly;
pub mod calibration;
pub mod engine;
pub mod eval;
pub mod federated;
pub mod forecast;
pub mod history;
pub mod limits;
pub mod lineage;
pub mod live;
pub mod patterns;
pub mod trained;
pub mod training;

/// The version string of the engine and its models (the engine's and the trained models' code together).
pub const MODEL_VERSION: &str = "augur-engine-v8";

use burn::tensor::Device;

/// The device every augur model runs on: burn's flex CPU backend. Models are small and run per
/// resource per tick, so a GPU would cost more in transfers than it saves.
pub fn cpu_device() -> Device {
    Device::flex()
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;

    #[test]
    fn flex_backend_computes() {
        let device = cpu_device();
        let t = Tensor::<1>::from_floats([1.0, 2.0, 3.5], &device);
        let sum: f32 = t.sum().into_scalar();
        assert!((sum - 6.5).abs() < 1e-6);
    }
}

//! RMSNorm (LAYERS.md P1), with the statistic in f32 and a learnable gain initialised to 1.
pub use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;

pub fn rms_norm<B: Backend>(d_model: usize, eps: f64, device: &B::Device) -> RmsNorm<B> {
    RmsNormConfig::new(d_model).with_epsilon(eps).init(device)
}

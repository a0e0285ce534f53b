//! Normalisation layers: RMSNorm with a learnable gain (LAYERS.md P1), TransNormerLLM's
//! SRMSNorm without one (P2), and LayerNorm (Zoology's MQAR models). The RMS norms compute their
//! statistic in f32.
pub use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::precision::{to_dtype, to_f32};
use serde::{Deserialize, Serialize};

/// A recipe's `model.norm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `x / rms(x) ⊙ γ`, `γ` learnable, initialised to 1.
    Rmsnorm,
    /// `x / rms(x)`, no parameters (TransNormerLLM).
    Srmsnorm,
    /// `(x - mean(x)) / std(x) ⊙ γ + β`, `γ = 1`, `β = 0` at init (Zoology, GPT-2).
    Layernorm,
}

pub fn rms_norm<B: Backend>(d_model: usize, eps: f64, device: &B::Device) -> RmsNorm<B> {
    RmsNormConfig::new(d_model).with_epsilon(eps).init(device)
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension, computed in f32, returned in `x`'s dtype.
pub fn srms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let rms = (x.clone().powi_scalar(2).mean_dim(D - 1) + eps).sqrt();
    to_dtype(x / rms, dtype)
}

/// A parameter-free SRMSNorm as a module.
#[derive(Module, Clone, Debug)]
pub struct SimpleRmsNorm {
    pub eps: f64,
}

#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    Rms(RmsNorm<B>),
    Simple(SimpleRmsNorm),
    Layer(LayerNorm<B>),
}

impl NormKind {
    pub fn init<B: Backend>(&self, d_model: usize, eps: f64, device: &B::Device) -> Norm<B> {
        match self {
            NormKind::Rmsnorm => Norm::Rms(rms_norm(d_model, eps, device)),
            NormKind::Srmsnorm => Norm::Simple(SimpleRmsNorm { eps }),
            NormKind::Layernorm => Norm::Layer(LayerNormConfig::new(d_model).with_epsilon(eps).init(device)),
        }
    }
}

impl<B: Backend> Norm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Simple(n) => srms_norm(x, n.eps),
            Norm::Layer(n) => n.forward(x),
        }
    }
}

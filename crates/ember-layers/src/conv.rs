//! BaseConv, BASED's gated short convolution (LAYERS.md §1.3).
use crate::LayerContext;
use crate::init::{linear, INIT_STD};
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear};
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use ember_ops::conv::{causal_conv, next_history};
use serde::{Deserialize, Serialize};

/// `kind = "base_conv"`: `y = (SiLU(conv(u1)) ⊙ u2) W_out + b_out`, `[u1 | u2] = x W_in + b_in`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaseConvConfig {
    pub kernel_size: usize,
    /// `W_in` maps `d_model` to `expand · d_model`; each half is `expand · d_model / 2` wide.
    pub expand: usize,
}

impl Default for BaseConvConfig {
    fn default() -> Self {
        Self { kernel_size: 3, expand: 4 }
    }
}

impl BaseConvConfig {
    fn inner(&self, d_model: usize) -> usize {
        self.expand * d_model / 2
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.kernel_size == 0 || self.expand == 0 || self.expand % 2 != 0 {
            return Err(format!(
                "kernel_size must be positive and expand a positive even number (got {} and {})",
                self.kernel_size, self.expand
            ));
        }
        Ok(())
    }

    pub fn params(&self, d_model: usize) -> usize {
        let inner = self.inner(d_model);
        (d_model + 1) * 2 * inner + inner * self.kernel_size + (inner + 1) * d_model
    }

    pub fn flops_per_token(&self, d_model: usize) -> f64 {
        2.0 * self.params(d_model) as f64
    }

    pub fn state_size(&self, d_model: usize) -> usize {
        (self.kernel_size - 1) * self.inner(d_model)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> BaseConv<B> {
        let d_model = at.d_model;
        let inner = self.inner(d_model);
        // PyTorch's depthwise Conv1d default: U(-1/√K, 1/√K).
        let bound = 1.0 / (self.kernel_size as f64).sqrt();
        BaseConv {
            in_proj: linear(d_model, 2 * inner, true, INIT_STD, device),
            conv: Initializer::Uniform { min: -bound, max: bound }.init([inner, self.kernel_size], device),
            out_proj: linear(inner, d_model, true, out_std, device),
        }
    }
}

#[derive(Module, Debug)]
pub struct BaseConv<B: Backend> {
    pub in_proj: Linear<B>,
    /// Depthwise kernel `[channels, K]`; tap `K-1` multiplies the current token.
    pub conv: Param<Tensor<B, 2>>,
    pub out_proj: Linear<B>,
}

impl<B: Backend> BaseConv<B> {
    fn split(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let h = self.in_proj.forward(x);
        let inner = h.dims()[2] / 2;
        (h.clone().narrow(2, 0, inner), h.narrow(2, inner, inner))
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (u1, u2) = self.split(x);
        self.out_proj.forward(silu(causal_conv(u1, self.conv.val(), None)) * u2)
    }

    /// Consumes `x: [B, T, D]`; the state is the last `K-1` values of `u1`.
    pub fn step(&self, x: Tensor<B, 3>, history: Option<Tensor<B, 3>>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (u1, u2) = self.split(x);
        let [b, _, c] = u1.dims();
        let k = self.conv.val().dims()[1];
        let history = history.unwrap_or_else(|| Tensor::zeros([b, k - 1, c], (&u1.device(), u1.dtype())));
        let y = self.out_proj.forward(silu(causal_conv(u1.clone(), self.conv.val(), Some(history.clone()))) * u2);
        (y, next_history(history, u1))
    }
}

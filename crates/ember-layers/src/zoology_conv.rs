//! Zoology's BaseConv (HazyResearch/zoology, `mixers/base_conv.py`): the short convolution of
//! Zoology's and BASED's MQAR models. Unlike BASED's gated convolution ([`crate::conv`]) it has
//! no SiLU, no inner width and no output projection, and it adds its input back:
//!
//! `y = (conv(u) + b_conv) ⊙ (u W + b) + u`
//!
//! so a mixer in the next layer sees the previous token's features at full strength from the
//! first step (the `+ u` and the unit-scale convolution), which is what MQAR's key-value binding
//! needs.
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear};
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::conv::{causal_conv, next_history};
use serde::{Deserialize, Serialize};

/// `kind = "zoology_conv"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoologyConvConfig {
    pub kernel_size: usize,
}

impl Default for ZoologyConvConfig {
    fn default() -> Self {
        Self { kernel_size: 3 }
    }
}

impl ZoologyConvConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel_size == 0 {
            return Err("kernel_size must be positive".into());
        }
        Ok(())
    }

    /// `W`, `b`, the depthwise kernel and its bias.
    pub fn params(&self, d_model: usize) -> usize {
        d_model * d_model + d_model + d_model * self.kernel_size + d_model
    }

    pub fn flops_per_token(&self, d_model: usize) -> f64 {
        2.0 * self.params(d_model) as f64
    }

    /// The last `K-1` inputs (Zoology counts `K`, the whole window; ember counts what a
    /// generation step must keep).
    pub fn state_size(&self, d_model: usize) -> usize {
        (self.kernel_size - 1) * d_model
    }

    /// Zoology's init: the projection normal(0, 0.02) with zero bias (its `_init_weights`); the
    /// convolution keeps PyTorch's `Conv1d` default, weight and bias `U(-1/√K, 1/√K)` (the fan-in
    /// of a depthwise kernel is `K`). `out_std` is unused: there is no output projection.
    pub fn init<B: Backend>(&self, at: LayerContext, _out_std: f64, device: &B::Device) -> ZoologyConv<B> {
        let d = at.d_model;
        let bound = 1.0 / (self.kernel_size as f64).sqrt();
        let uniform = Initializer::Uniform { min: -bound, max: bound };
        ZoologyConv {
            projection: linear(d, d, true, INIT_STD, device),
            conv: uniform.init([d, self.kernel_size], device),
            conv_bias: uniform.init([d], device),
        }
    }
}

#[derive(Module, Debug)]
pub struct ZoologyConv<B: Backend> {
    pub projection: Linear<B>,
    /// Depthwise kernel `[d_model, K]`; tap `K-1` multiplies the current token.
    pub conv: Param<Tensor<B, 2>>,
    pub conv_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ZoologyConv<B> {
    fn mix(&self, u: Tensor<B, 3>, history: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let d = u.dims()[2];
        let conv = causal_conv(u.clone(), self.conv.val(), history) + self.conv_bias.val().reshape([1, 1, d]);
        conv * self.projection.forward(u.clone()) + u
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.mix(x, None)
    }

    /// Consumes `x: [B, T, D]`; the state is the last `K-1` inputs.
    pub fn step(&self, x: Tensor<B, 3>, history: Option<Tensor<B, 3>>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [b, _, d] = x.dims();
        let k = self.conv.val().dims()[1];
        let history = history.unwrap_or_else(|| Tensor::zeros([b, k - 1, d], (&x.device(), x.dtype())));
        let y = self.mix(x.clone(), Some(history.clone()));
        (y, next_history(history, x))
    }
}

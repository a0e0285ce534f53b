//! Plain (undecayed) linear attention with a positive feature map, Katharopoulos et al. 2020:
//! `o_t = φ(q_t) S_t / (φ(q_t) z_t + ε)`, `S_t = Σ_{s≤t} φ(k_s)ᵀ v_s`, `z_t = Σ_{s≤t} φ(k_s)ᵀ`.
//! The baseline of the Zoology/BASED recall comparisons: its state cannot forget, so recall
//! falls as more pairs share it.
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{elu, relu};
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::linear_attention as op;
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// The feature map `φ` applied to queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearFeatureMap {
    /// `elu(x) + 1` (Katharopoulos et al.), positive everywhere.
    Elu,
    /// `relu(x)`.
    Relu,
    /// `x` (no map; use with `normalize = false`).
    Identity,
}

/// `kind = "linear_attention"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearAttentionConfig {
    pub heads: usize,
    /// Query/key width per head; absent means `d_model / heads`.
    pub feature_dim: Option<usize>,
    pub feature_map: LinearFeatureMap,
    /// Divide by `φ(q)·z + eps` (the attention normaliser).
    pub normalize: bool,
    pub eps: f64,
    /// Training form: "chunked" or "parallel".
    pub form: Form,
    pub chunk_size: usize,
}

impl Default for LinearAttentionConfig {
    fn default() -> Self {
        Self {
            heads: 4,
            feature_dim: None,
            feature_map: LinearFeatureMap::Elu,
            normalize: true,
            eps: 1e-6,
            form: Form::Chunked,
            chunk_size: 64,
        }
    }
}

impl LinearAttentionConfig {
    fn key_dim(&self, d_model: usize) -> usize {
        self.feature_dim.unwrap_or(d_model / self.heads.max(1))
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 || d_model % self.heads != 0 {
            return Err(format!("d_model ({d_model}) must be divisible by heads ({})", self.heads));
        }
        if self.key_dim(d_model) == 0 || self.chunk_size == 0 {
            return Err("feature_dim and chunk_size must be positive".into());
        }
        if !(self.eps > 0.0) {
            return Err(format!("eps must be positive, got {}", self.eps));
        }
        if self.form == Form::Recurrent {
            return Err("form must be \"chunked\" or \"parallel\" (the recurrent form is for generation)".into());
        }
        Ok(())
    }

    pub fn params(&self, d_model: usize) -> usize {
        2 * d_model * self.heads * self.key_dim(d_model) + 2 * d_model * d_model
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let (h, k, v) = (self.heads as f64, self.key_dim(d_model) as f64, (d_model / self.heads) as f64 + 1.0);
        let c = match self.form {
            Form::Parallel => seq_len as f64,
            _ => self.chunk_size.min(seq_len) as f64,
        };
        2.0 * self.params(d_model) as f64 + 2.0 * h * c * (k + v) + 4.0 * h * k * v
    }

    /// `S` and `z` per head: `K × (V + 1)` (the normaliser rides along as an extra value column).
    pub fn state_size(&self, d_model: usize) -> usize {
        self.heads * self.key_dim(d_model) * (d_model / self.heads + self.normalize as usize)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> LinearAttention<B> {
        let d_model = at.d_model;
        let qk = self.heads * self.key_dim(d_model);
        LinearAttention {
            q: linear(d_model, qk, false, INIT_STD, device),
            k: linear(d_model, qk, false, INIT_STD, device),
            v: linear(d_model, d_model, false, INIT_STD, device),
            out: linear(d_model, d_model, false, out_std, device),
            heads: self.heads,
            feature_map: self.feature_map,
            normalize: self.normalize,
            eps: self.eps,
            chunked: self.form == Form::Chunked,
            chunk_size: self.chunk_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct LinearAttention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub out: Linear<B>,
    pub heads: usize,
    #[module(skip)]
    pub feature_map: LinearFeatureMap,
    pub normalize: bool,
    pub eps: f64,
    pub chunked: bool,
    pub chunk_size: usize,
}

impl<B: Backend> LinearAttention<B> {
    fn phi(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.feature_map {
            LinearFeatureMap::Elu => elu(x, 1.0) + 1.0,
            LinearFeatureMap::Relu => relu(x),
            LinearFeatureMap::Identity => x,
        }
    }

    /// `φ(q), φ(k)` and `v`, with a column of ones appended to `v` when normalising: the op's
    /// last output column is then the normaliser `φ(q)·z`.
    fn project(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let q = self.q.forward(x.clone());
        let k = self.k.forward(x.clone());
        let f = q.dims()[2] / h;
        let q = self.phi(q.reshape([b, t, h, f]));
        let k = self.phi(k.reshape([b, t, h, f]));
        let mut v = self.v.forward(x).reshape([b, t, h, d / h]);
        if self.normalize {
            let ones = Tensor::ones([b, t, h, 1], (&v.device(), v.dtype()));
            v = Tensor::cat(vec![v, ones], 3);
        }
        (q, k, v)
    }

    fn merge(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, w] = o.dims();
        let o = match self.normalize {
            true => {
                let dv = w - 1;
                o.clone().narrow(3, 0, dv) / (o.narrow(3, dv, 1) + self.eps)
            }
            false => o,
        };
        let dv = o.dims()[3];
        self.out.forward(o.reshape([b, t, h * dv]))
    }

    /// Training forward with an explicit form (the config's form is `forward`'s default).
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let (q, k, v) = self.project(x);
        let out = match form {
            Form::Parallel => op::parallel(q, k, v, None, 1.0),
            Form::Chunked => op::chunked(q, k, v, None, 1.0, self.chunk_size),
            Form::Recurrent => op::recurrent(q, k, v, None, 1.0),
        };
        self.merge(out.output)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, if self.chunked { Form::Chunked } else { Form::Parallel })
    }

    /// Consumes `x: [B, T, D]` from `state` `[B, H, K, V(+1)]` (a prompt in one chunked pass, or
    /// one token).
    pub fn step(&self, x: Tensor<B, 3>, state: Option<Tensor<B, 4>>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let (q, k, v) = self.project(x);
        let out = match (q.dims()[1], state) {
            (1, Some(s)) => op::step(q, k, v, s, 1.0),
            (1, None) => op::recurrent(q, k, v, None, 1.0),
            (_, s) => op::chunked(q, k, v, s, 1.0, self.chunk_size),
        };
        (self.merge(out.output), out.state)
    }
}

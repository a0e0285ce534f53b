//! BASED's Taylor linear attention mixer (LAYERS.md §1.1).
use crate::LayerContext;
use crate::init::{linear, INIT_STD};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::taylor::{self, FeatureMap, TaylorState};
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// `kind = "based_linear"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaylorAttentionConfig {
    pub heads: usize,
    /// Query/key feature dimension `d'` per head (16 in BASED).
    pub feature_dim: usize,
    /// Feature map of the recurrent state: "compact" (153 features at d'=16) or "full" (273).
    pub feature_map: FeatureMap,
    /// Added to the normaliser (1e-6 as in the reference kernels).
    pub eps: f64,
    /// Training form: "chunked" or "parallel".
    pub form: Form,
    pub chunk_size: usize,
}

impl Default for TaylorAttentionConfig {
    fn default() -> Self {
        Self { heads: 16, feature_dim: 16, feature_map: FeatureMap::Compact, eps: 1e-6, form: Form::Chunked, chunk_size: 64 }
    }
}

impl TaylorAttentionConfig {
    pub fn value_dim(&self, d_model: usize) -> usize {
        d_model / self.heads.max(1)
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 || d_model % self.heads != 0 {
            return Err(format!("d_model ({d_model}) must be divisible by heads ({})", self.heads));
        }
        if self.feature_dim == 0 || self.chunk_size == 0 {
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
        let qk = self.heads * self.feature_dim;
        2 * d_model * qk + 2 * d_model * d_model
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let (h, d, dv) = (self.heads as f64, self.feature_dim as f64, self.value_dim(d_model) as f64);
        let f = self.feature_map.dim(self.feature_dim) as f64;
        let c = match self.form {
            Form::Parallel => seq_len as f64,
            _ => self.chunk_size.min(seq_len) as f64,
        };
        // Intra-chunk scores and mixing, plus reading and updating the feature-space state.
        2.0 * self.params(d_model) as f64 + 2.0 * h * c * (d + dv) + 4.0 * h * f * (dv + 1.0)
    }

    pub fn state_size(&self, d_model: usize) -> usize {
        self.heads * self.feature_map.dim(self.feature_dim) * (self.value_dim(d_model) + 1)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> TaylorAttention<B> {
        let d_model = at.d_model;
        let qk = self.heads * self.feature_dim;
        TaylorAttention {
            q: linear(d_model, qk, false, INIT_STD, device),
            k: linear(d_model, qk, false, INIT_STD, device),
            v: linear(d_model, d_model, false, INIT_STD, device),
            out: linear(d_model, d_model, false, out_std, device),
            heads: self.heads,
            feature_dim: self.feature_dim,
            compact: self.feature_map == FeatureMap::Compact,
            eps: self.eps,
            chunked: self.form == Form::Chunked,
            chunk_size: self.chunk_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct TaylorAttention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub out: Linear<B>,
    pub heads: usize,
    pub feature_dim: usize,
    pub compact: bool,
    pub eps: f64,
    pub chunked: bool,
    pub chunk_size: usize,
}

impl<B: Backend> TaylorAttention<B> {
    pub fn feature_map(&self) -> FeatureMap {
        if self.compact { FeatureMap::Compact } else { FeatureMap::Full }
    }

    fn project(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, d] = x.dims();
        let (h, f) = (self.heads, self.feature_dim);
        let q = self.q.forward(x.clone()).reshape([b, t, h, f]);
        let k = self.k.forward(x.clone()).reshape([b, t, h, f]);
        let v = self.v.forward(x).reshape([b, t, h, d / h]);
        (q, k, v)
    }

    fn merge(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, d] = o.dims();
        self.out.forward(o.reshape([b, t, h * d]))
    }

    /// Training forward with an explicit form (the config's form is `forward`'s default).
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let (q, k, v) = self.project(x);
        let map = self.feature_map();
        let out = match form {
            Form::Parallel => taylor::parallel(q, k, v, None, map, self.eps),
            Form::Chunked => taylor::chunked(q, k, v, None, map, self.eps, self.chunk_size),
            Form::Recurrent => taylor::recurrent(q, k, v, None, map, self.eps),
        };
        self.merge(out.output)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, if self.chunked { Form::Chunked } else { Form::Parallel })
    }

    /// Consumes `x: [B, T, D]` from `state` (a prompt in one chunked pass, or one token).
    pub fn step(&self, x: Tensor<B, 3>, state: Option<TaylorState<B>>) -> (Tensor<B, 3>, TaylorState<B>) {
        let (q, k, v) = self.project(x);
        let map = self.feature_map();
        let out = if q.dims()[1] == 1 {
            let state = state.unwrap_or_else(|| {
                let [b, _, h, d] = q.dims();
                TaylorState::zeros(b, h, map.dim(d), v.dims()[3], &q.device())
            });
            taylor::step(q, k, v, state, map, self.eps)
        } else {
            taylor::chunked(q, k, v, state, map, self.eps, self.chunk_size)
        };
        (self.merge(out.output), out.state)
    }
}

//! Causal softmax attention with RoPE, grouped-query heads and an optional sliding window
//! (the baseline mixer, and BASED's sliding-window layer, LAYERS.md §1.2).
use crate::LayerContext;
use crate::init::{linear, INIT_STD};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use ember_ops::softmax_attention::{self, KvCache, Prefix};
use ember_ops::rope::{self, RopeScaling};
use serde::{Deserialize, Serialize};

/// `kind = "attention"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `heads`.
    pub kv_heads: Option<usize>,
    /// Per-head width; defaults to `d_model / heads`.
    pub head_dim: Option<usize>,
    /// Sliding window `w_left`: each query sees itself and the `window` previous tokens.
    /// Absent means full causal attention.
    pub window: Option<usize>,
    /// Rotary position embeddings on queries and keys. `false` gives position-free attention, as
    /// Zoology's MQAR models use (the short convolution before it carries position).
    pub rope: bool,
    /// RoPE base (rotate-half convention on the full head dimension).
    pub rope_base: f64,
    /// RoPE frequency scaling of long-context checkpoints (`{ type = "llama3", ... }`, `linear`,
    /// `dynamic`, `yarn`); absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Bias on the q/k/v projections (Qwen2 has one).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub out_bias: bool,
    /// Learned key/value pairs every query attends to, whatever its window (Titans' persistent
    /// memory, LAYERS.md §4.3; position-free, no RoPE). 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub persistent: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self { heads: 8, kv_heads: None, head_dim: None, window: None, rope: true, rope_base: 10_000.0, rope_scaling: None, qkv_bias: false, out_bias: false, persistent: 0 }
    }
}

impl AttentionConfig {
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    pub fn head_dim(&self, d_model: usize) -> usize {
        self.head_dim.unwrap_or(d_model / self.heads.max(1))
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads() == 0 {
            return Err("heads and kv_heads must be positive".into());
        }
        if self.heads % self.kv_heads() != 0 {
            return Err(format!("heads ({}) must be a multiple of kv_heads ({})", self.heads, self.kv_heads()));
        }
        if self.head_dim.is_none() && d_model % self.heads != 0 {
            return Err(format!("d_model ({d_model}) is not divisible by heads ({}); set head_dim", self.heads));
        }
        if self.head_dim(d_model) % 2 != 0 {
            return Err(format!("head_dim ({}) must be even for RoPE", self.head_dim(d_model)));
        }
        if self.rope_base <= 1.0 {
            return Err(format!("rope_base must be > 1, got {}", self.rope_base));
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.validate()?;
        }
        Ok(())
    }

    fn widths(&self, d_model: usize) -> (usize, usize) {
        let dh = self.head_dim(d_model);
        (self.heads * dh, self.kv_heads() * dh)
    }

    pub fn params(&self, d_model: usize) -> usize {
        let (q, kv) = self.widths(d_model);
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 } + if self.out_bias { d_model } else { 0 };
        d_model * (q + 2 * kv) + bias + q * d_model + 2 * self.persistent * kv
    }

    /// Forward FLOPs per token at sequence length `seq_len` (projections + scores + mixing).
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let (q, _) = self.widths(d_model);
        let persistent = (2 * self.persistent * self.widths(d_model).1) as f64;
        2.0 * (self.params(d_model) as f64 - persistent) + 4.0 * q as f64 * (self.visible_keys(seq_len) + self.persistent as f64)
    }

    /// Mean number of keys a query sees over a sequence of `seq_len` tokens.
    fn visible_keys(&self, seq_len: usize) -> f64 {
        let full = (seq_len as f64 + 1.0) / 2.0;
        self.window.map_or(full, |w| full.min((w + 1) as f64))
    }

    /// Floats held per sequence for generation after `seq_len` tokens (the KV cache).
    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        let (_, kv) = self.widths(d_model);
        2 * kv * self.window.map_or(seq_len, |w| seq_len.min(w + 1))
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Attention<B> {
        let d_model = at.d_model;
        let (q, kv) = self.widths(d_model);
        let dh = self.head_dim(d_model);
        let persistent = (self.persistent > 0).then(|| {
            let shape = [2, self.persistent, self.kv_heads(), dh];
            Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, INIT_STD), device))
        });
        Attention {
            qkv: linear(d_model, q + 2 * kv, self.qkv_bias, INIT_STD, device),
            persistent,
            out: linear(q, d_model, self.out_bias, out_std, device),
            heads: self.heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_dim(d_model),
            window: self.window,
            rope: self.rope,
            rope_base: self.rope_base,
            rope_scaling: self.rope_scaling.clone(),
        }
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    /// Persistent keys and values `[2, P, Hkv, Dh]` (absent with `persistent = 0`).
    pub persistent: Option<Param<Tensor<B, 4>>>,
    pub out: Linear<B>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub rope: bool,
    pub rope_base: f64,
    #[module(skip)]
    pub rope_scaling: Option<RopeScaling>,
}

impl<B: Backend> Attention<B> {
    /// Projects to `q, k, v: [B, T, H, Dh]` with RoPE (unless `rope = false`) applied from
    /// absolute position `offset`.
    pub fn project(&self, x: Tensor<B, 3>, offset: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (hq, hkv, dh) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x);
        let q = qkv.clone().narrow(2, 0, hq * dh).reshape([b, t, hq, dh]);
        let k = qkv.clone().narrow(2, hq * dh, hkv * dh).reshape([b, t, hkv, dh]);
        let v = qkv.narrow(2, (hq + hkv) * dh, hkv * dh).reshape([b, t, hkv, dh]);
        if !self.rope {
            return (q, k, v);
        }
        let scaling = self.rope_scaling.as_ref();
        (rope::apply_scaled(q, offset, self.rope_base, scaling), rope::apply_scaled(k, offset, self.rope_base, scaling), v)
    }

    pub fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// `W_o` over the heads' outputs `[B, T, H, Dh]`.
    pub fn merge(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, d] = o.dims();
        self.out.forward(o.reshape([b, t, h * d]))
    }

    /// The persistent keys and values, if any.
    pub fn prefix(&self) -> Option<Prefix<B>> {
        self.persistent.as_ref().map(|p| {
            let [_, n, h, d] = p.dims();
            let kv = p.val();
            Prefix { k: kv.clone().narrow(0, 0, 1).reshape([n, h, d]), v: kv.narrow(0, 1, 1).reshape([n, h, d]) }
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (q, k, v) = self.project(x, 0);
        let prefix = self.prefix();
        self.merge(softmax_attention::parallel_with_prefix(q, k, v, prefix.as_ref(), self.scale(), self.window, 0))
    }

    /// Consumes `x: [B, T, D]` after the tokens in `cache`.
    pub fn step(&self, x: Tensor<B, 3>, cache: Option<KvCache<B>>) -> (Tensor<B, 3>, KvCache<B>) {
        let offset = cache.as_ref().map_or(0, |c| c.position);
        let (q, k, v) = self.project(x, offset);
        let prefix = self.prefix();
        let (o, cache) = softmax_attention::step_with_prefix(q, k, v, prefix.as_ref(), cache, self.scale(), self.window);
        (self.merge(o), cache)
    }
}

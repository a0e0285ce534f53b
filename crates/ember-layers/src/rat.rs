//! RAT: recurrence inside chunks, softmax attention across chunks (LAYERS.md §6).
//!
//! The spec's layer owns an input RMSNorm and adds the residual itself (`out + x`). In ember
//! the block already applies the pre-norm before the mixer and adds the residual after it, so
//! this mixer has neither: block(x) = x + Rat(norm(x)) is exactly the spec's layer.
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{activation::sigmoid, backend::Backend, Distribution, Tensor};
use ember_ops::precision::to_f32;
use ember_ops::rat::{self, RatState};
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// `kind = "rat"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RatConfig {
    /// Width of a head `d_head`; heads = d_model / head_dim.
    pub head_dim: usize,
    /// Chunk length `L` (64; the paper's 1.3B models use 16).
    pub chunk_size: usize,
    /// Key/query groups `G`: head j uses group j mod G.
    pub groups: usize,
    /// Base of the inter-chunk RoPE (positions are chunk indices).
    pub rope_base: f64,
}

impl Default for RatConfig {
    fn default() -> Self {
        Self { head_dim: 64, chunk_size: 64, groups: 2, rope_base: 10_000.0 }
    }
}

impl RatConfig {
    pub fn heads(&self, d_model: usize) -> usize {
        d_model / self.head_dim.max(1)
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.head_dim == 0 || d_model % self.head_dim != 0 {
            return Err(format!("head_dim ({}) must be positive and divide d_model ({d_model})", self.head_dim));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        let heads = self.heads(d_model);
        if self.groups == 0 || heads % self.groups != 0 {
            return Err(format!("groups ({}) must be positive and divide the number of heads ({heads})", self.groups));
        }
        if self.chunk_size == 0 {
            return Err("chunk_size must be positive".into());
        }
        if self.rope_base <= 1.0 {
            return Err(format!("rope_base must be > 1, got {}", self.rope_base));
        }
        Ok(())
    }

    /// Width of `W_in`: z, v, g (D each), then q and k (G·d_head each).
    fn input_width(&self, d_model: usize) -> usize {
        3 * d_model + 2 * self.groups * self.head_dim
    }

    pub fn params(&self, d_model: usize) -> usize {
        d_model * self.input_width(d_model) + d_model + d_model * d_model
    }

    /// Projections, the gated recurrence, and attention over the chunk-finals a token sees
    /// (those of earlier chunks plus its own state).
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let d = d_model as f64;
        let matmuls = 2.0 * (d_model * self.input_width(d_model) + d_model * d_model) as f64;
        let recurrence = 2.0 * 3.0 * d; // k̃ and ṽ: g·h + (1−g)·x per channel
        matmuls + recurrence + 4.0 * d * self.mean_keys(seq_len)
    }

    /// Mean over positions t < seq_len of the keys token t attends to: ⌊t/L⌋ + 1.
    fn mean_keys(&self, seq_len: usize) -> f64 {
        if seq_len == 0 {
            return 1.0;
        }
        let (l, n, r) = (self.chunk_size, seq_len / self.chunk_size, seq_len % self.chunk_size);
        let earlier = l * n * n.saturating_sub(1) / 2 + r * n;
        earlier as f64 / seq_len as f64 + 1.0
    }

    /// Floats of generation state after `seq_len` tokens: the intra (k̃, ṽ) of the chunk in
    /// progress (2·D, zero at a chunk start but kept) and the chunk-final (k̃, ṽ) of each
    /// completed chunk (2·D per chunk: the keys are per head, since each head's gate differs).
    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        2 * d_model * (1 + seq_len / self.chunk_size)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Rat<B> {
        let d_model = at.d_model;
        // Forget-gate bias log(u), u ~ U(1, L−1): initial gates σ(b) = u/(1+u) ∈ (1/2, (L−1)/L).
        let gate_bias = if self.chunk_size > 2 {
            Tensor::random([d_model], Distribution::Uniform(1.0, (self.chunk_size - 1) as f64), device).log()
        } else {
            Tensor::zeros([d_model], device)
        };
        Rat {
            input: linear(d_model, self.input_width(d_model), false, INIT_STD, device),
            gate_bias: Param::from_tensor(gate_bias),
            out: linear(d_model, d_model, false, out_std, device),
            heads: self.heads(d_model),
            head_dim: self.head_dim,
            groups: self.groups,
            chunk_size: self.chunk_size,
            rope_base: self.rope_base,
        }
    }
}

#[derive(Module, Debug)]
pub struct Rat<B: Backend> {
    /// `W_in`, columns z | v | g | q | k.
    pub input: Linear<B>,
    /// Forget-gate bias `b_g` `[D]`.
    pub gate_bias: Param<Tensor<B, 1>>,
    /// `W_o`.
    pub out: Linear<B>,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub chunk_size: usize,
    pub rope_base: f64,
}

/// The per-token quantities of §6.2, before any sequence mixing.
pub struct RatInputs<B: Backend> {
    /// Output gate σ(h W_z), `[B, T, D]`.
    pub z: Tensor<B, 3>,
    /// Queries and keys tiled to every head (head j uses group j mod G), `[B, T, H, d_head]`.
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Forget gate σ(h W_g + b_g), in f32.
    pub g: Tensor<B, 4>,
}

impl<B: Backend> Rat<B> {
    pub fn project(&self, x: Tensor<B, 3>) -> RatInputs<B> {
        let [b, t, d] = x.dims();
        let (h, dh, grouped) = (self.heads, self.head_dim, self.groups * self.head_dim);
        let p = self.input.forward(x);
        let column = |start: usize, width: usize| p.clone().narrow(2, start, width);
        let heads = |x: Tensor<B, 3>| x.reshape([b, t, h, dh]);
        // Groups side by side, repeated H/G times: [g0, g1, g0, g1, …].
        let tiled = |x: Tensor<B, 3>| x.reshape([b, t, self.groups, dh]).repeat_dim(2, h / self.groups);
        let gate = to_f32(column(2 * d, d)) + to_f32(self.gate_bias.val()).reshape([1, 1, d]);
        RatInputs {
            z: sigmoid(column(0, d)),
            v: heads(column(d, d)),
            g: heads(sigmoid(gate)),
            q: tiled(column(3 * d, grouped)),
            k: tiled(column(3 * d + grouped, grouped)),
        }
    }

    /// `(z ⊙ y) W_o` for the mixed values `y: [B, T, H, d_head]`.
    fn finish(&self, z: Tensor<B, 3>, y: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, d] = y.dims();
        self.out.forward(z * y.reshape([b, t, h * d]))
    }

    /// Training forward with an explicit form: `Recurrent` steps token by token; `Parallel` (or
    /// `Chunked`: RAT's training form is chunked by construction) is the form of §6.2.
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let RatInputs { z, q, k, v, g } = self.project(x);
        let out = match form {
            Form::Parallel | Form::Chunked => rat::parallel(q, k, v, g, None, self.chunk_size, self.rope_base),
            Form::Recurrent => rat::recurrent(q, k, v, g, None, self.chunk_size, self.rope_base),
        };
        self.finish(z, out.output)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, Form::Parallel)
    }

    /// Consumes `x: [B, T, D]` after `state`: one token by the decoding step, a prompt by the
    /// parallel form started from the state.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<RatState<B>>) -> (Tensor<B, 3>, RatState<B>) {
        let RatInputs { z, q, k, v, g } = self.project(x);
        let out = if q.dims()[1] == 1 {
            let [b, _, h, d] = q.dims();
            let state = state.unwrap_or_else(|| RatState::zeros(b, h, d, &q.device()));
            rat::step(q, k, v, g, state, self.chunk_size, self.rope_base)
        } else {
            rat::parallel(q, k, v, g, state, self.chunk_size, self.rope_base)
        };
        (self.finish(z, out.output), out.state)
    }
}
